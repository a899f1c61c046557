//! Validated records as the domain sees them. Built only by `validate`, so every
//! value here has passed its field rules.

use sha2::{Digest, Sha256};

use super::fees::Figures;
use super::ids::{IdNumber, Mobile, PersonName, Plate};
use super::period::Period;
use super::time::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerStatus {
    Active,
    Left,
}

impl WorkerStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ACTIVE" => Some(Self::Active),
            "LEFT" => Some(Self::Left),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Left => "LEFT",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Completed,
    Cancelled,
}

impl OrderStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "COMPLETED" => Some(Self::Completed),
            "CANCELLED" => Some(Self::Cancelled),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "COMPLETED",
            Self::Cancelled => "CANCELLED",
        }
    }
    /// Whether the order counts for fees (domain.md: a COMPLETED order is billable).
    pub fn is_billable(self) -> bool {
        self == Self::Completed
    }
}

/// A worker registered with a platform (从业人员登记).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    pub worker_id: String,
    pub revision: u32,
    pub id_number: IdNumber,
    pub name: PersonName,
    pub mobile: Mobile,
    /// Sorted, without repeats.
    pub industries: Vec<String>,
    pub registered_at: Millis,
    pub status: WorkerStatus,
    pub left_at: Option<Millis>,
}

/// An order (订单).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: String,
    pub revision: u32,
    pub worker_id: String,
    pub industry: String,
    pub division_code: String,
    pub accepted_at: Millis,
    pub completed_at: Option<Millis>,
    pub status: OrderStatus,
    pub vehicle_plate: Option<Plate>,
}

/// 月度缴费申报: what the platform declares to the tax bureau for one month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaration {
    pub declaration_id: String,
    pub revision: u32,
    pub period: Period,
    /// A city, or a province (covering all its cities).
    pub division_code: String,
    pub industry: String,
    pub figures: Figures,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjuryKind {
    Traffic,
    Fall,
    Assault,
    Other,
}

impl InjuryKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TRAFFIC" => Some(Self::Traffic),
            "FALL" => Some(Self::Fall),
            "ASSAULT" => Some(Self::Assault),
            "OTHER" => Some(Self::Other),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Traffic => "TRAFFIC",
            Self::Fall => "FALL",
            Self::Assault => "ASSAULT",
            Self::Other => "OTHER",
        }
    }
}

/// 事故备案: an accident reported during an order. The description may hold medical
/// detail: it is personal information and never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Accident {
    pub report_id: String,
    pub revision: u32,
    pub worker_id: String,
    pub order_id: String,
    pub occurred_at: Millis,
    pub division_code: String,
    pub injury_kind: InjuryKind,
    pub description: String,
}

impl std::fmt::Debug for Accident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accident")
            .field("report_id", &self.report_id)
            .field("revision", &self.revision)
            .field("order_id", &self.order_id)
            .field("injury_kind", &self.injury_kind)
            .field(
                "description",
                &format_args!("<{} chars>", self.description.chars().count()),
            )
            .finish_non_exhaustive()
    }
}

/// The kinds of record a platform submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Worker,
    Order,
    Declaration,
    Accident,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Worker => "worker",
            Self::Order => "order",
            Self::Declaration => "declaration",
            Self::Accident => "accident",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "worker" => Some(Self::Worker),
            "order" => Some(Self::Order),
            "declaration" => Some(Self::Declaration),
            "accident" => Some(Self::Accident),
            _ => None,
        }
    }
}

/// A validated record of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Worker(Worker),
    Order(Order),
    Declaration(Declaration),
    Accident(Accident),
}

/// SHA-256 over a record's canonical content, excluding its revision: equal hashes
/// at equal revisions make a resend a DUPLICATE.
pub type ContentHash = [u8; 32];

/// Feeds length-prefixed fields into a hasher so that field boundaries are unambiguous.
struct Canon(Sha256);

impl Canon {
    fn new(tag: &str) -> Self {
        let mut c = Canon(Sha256::new());
        c.str(tag);
        c
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.update((s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
        self
    }
    fn int(&mut self, v: i64) -> &mut Self {
        self.0.update(v.to_le_bytes());
        self
    }
    fn opt_int(&mut self, v: Option<i64>) -> &mut Self {
        match v {
            Some(v) => self.str("some").int(v),
            None => self.str("none"),
        }
    }
    fn finish(self) -> ContentHash {
        self.0.finalize().into()
    }
}

impl Worker {
    pub fn content_hash(&self) -> ContentHash {
        let mut c = Canon::new("worker/v1");
        c.str(&self.worker_id)
            .str(self.id_number.id_type().as_str())
            .str(self.id_number.as_str())
            .str(self.name.as_str())
            .str(self.mobile.as_str())
            .int(self.industries.len() as i64);
        for i in &self.industries {
            c.str(i);
        }
        c.int(self.registered_at)
            .str(self.status.as_str())
            .opt_int(self.left_at);
        c.finish()
    }

    /// Whether the worker was registered and not yet gone at `at`.
    pub fn active_at(&self, at: Millis) -> bool {
        self.registered_at <= at && self.left_at.is_none_or(|left| at < left)
    }
}

impl Order {
    pub fn content_hash(&self) -> ContentHash {
        let mut c = Canon::new("order/v1");
        c.str(&self.order_id)
            .str(&self.worker_id)
            .str(&self.industry)
            .str(&self.division_code)
            .int(self.accepted_at)
            .opt_int(self.completed_at)
            .str(self.status.as_str())
            .str(self.vehicle_plate.as_ref().map_or("", |p| p.as_str()));
        c.finish()
    }
}

impl Declaration {
    pub fn content_hash(&self) -> ContentHash {
        let mut c = Canon::new("declaration/v1");
        c.str(&self.declaration_id)
            .str(&self.period.to_string())
            .str(&self.division_code)
            .str(&self.industry)
            .int(self.figures.order_count)
            .int(self.figures.amount_fen);
        c.finish()
    }
}

impl Accident {
    pub fn content_hash(&self) -> ContentHash {
        let mut c = Canon::new("accident/v1");
        c.str(&self.report_id)
            .str(&self.worker_id)
            .str(&self.order_id)
            .int(self.occurred_at)
            .str(&self.division_code)
            .str(self.injury_kind.as_str())
            .str(&self.description);
        c.finish()
    }
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Worker(_) => RecordKind::Worker,
            Record::Order(_) => RecordKind::Order,
            Record::Declaration(_) => RecordKind::Declaration,
            Record::Accident(_) => RecordKind::Accident,
        }
    }
    pub fn id(&self) -> &str {
        match self {
            Record::Worker(w) => &w.worker_id,
            Record::Order(o) => &o.order_id,
            Record::Declaration(d) => &d.declaration_id,
            Record::Accident(a) => &a.report_id,
        }
    }
}
