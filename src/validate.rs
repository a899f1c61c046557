//! Field rules: a wire record becomes a domain record or a per-record rejection
//! (code, field path inside the record, message without personal data).
//!
//! Only rules that need nothing but the record, the clock, the reference data and the
//! caller's platform live here; rules between records are in `crosscheck`.

use chrono::NaiveDate;

use crate::crosscheck::Candidate;
use crate::domain::RecordKind;
use crate::domain::fees::Figures;
use crate::domain::ids::{IdNumber, IdType, Mobile, PersonName, Plate};
use crate::domain::period::Period;
use crate::domain::time::{self, Millis, age_on, local_date};
use crate::domain::{
    Accident, Declaration, ErrorCode, InjuryKind, Order, OrderStatus, PlatformProfile, Record,
    Rejection, Worker, WorkerStatus,
};
use crate::proto;
use crate::reference::Reference;

/// Longest record id (worker_id, order_id, ...).
pub const MAX_ID_LEN: usize = 64;
/// Minimum working age (domain.md, Enrolment).
pub const MIN_AGE: i32 = 16;

/// What validation may look at besides the record.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub now: Millis,
    /// How far in the future a time may be (clock skew), in milliseconds.
    pub max_future_ms: i64,
    pub reference: &'a Reference,
    pub platform: &'a PlatformProfile,
}

impl Context<'_> {
    fn today(&self) -> NaiveDate {
        local_date(self.now)
    }
}

type Result<T> = std::result::Result<T, Rejection>;

fn reject(code: ErrorCode, field: &str, message: impl Into<String>) -> Rejection {
    Rejection::new(code, field, message)
}

/// A record id: 1..64 printable ASCII. Non-printable content leaves no usable id, so it
/// is MISSING_FIELD (the spec has no code of its own for it).
fn record_id<'a>(v: &'a str, field: &str) -> Result<&'a str> {
    if v.is_empty() {
        return Err(Rejection::missing(field));
    }
    if v.len() > MAX_ID_LEN {
        return Err(reject(
            ErrorCode::FieldTooLong,
            field,
            format!("{field} is longer than {MAX_ID_LEN} characters"),
        ));
    }
    if !v.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(reject(
            ErrorCode::MissingField,
            field,
            format!("{field} must be printable ASCII"),
        ));
    }
    Ok(v)
}

fn required<'a>(v: &'a str, field: &str) -> Result<&'a str> {
    if v.trim().is_empty() {
        Err(Rejection::missing(field))
    } else {
        Ok(v)
    }
}

/// A required time, not further in the future than the allowed skew.
fn time_field(v: &str, field: &str, ctx: &Context<'_>) -> Result<Millis> {
    let t = time::parse_wire_time(required(v, field)?).ok_or_else(|| {
        reject(
            ErrorCode::InvalidTime,
            field,
            format!("{field} is not RFC 3339 with an offset or epoch milliseconds"),
        )
    })?;
    if t > ctx.now + ctx.max_future_ms {
        return Err(reject(
            ErrorCode::InvalidTime,
            field,
            format!("{field} is in the future"),
        ));
    }
    Ok(t)
}

fn optional_time(v: &str, field: &str, ctx: &Context<'_>) -> Result<Option<Millis>> {
    if v.trim().is_empty() {
        Ok(None)
    } else {
        time_field(v, field, ctx).map(Some)
    }
}

fn revision(r: u32) -> u32 {
    r.max(1)
}

/// A known industry code that the platform is registered for.
fn industry(v: &str, field: &str, ctx: &Context<'_>) -> Result<String> {
    let v = required(v, field)?;
    if !ctx.reference.is_industry(v) {
        return Err(reject(
            ErrorCode::InvalidIndustry,
            field,
            format!("unknown industry {v}"),
        ));
    }
    if !ctx.platform.industries.contains(v) {
        return Err(reject(
            ErrorCode::IndustryNotRegistered,
            field,
            format!("the platform is not registered for {v}"),
        ));
    }
    Ok(v.to_string())
}

fn check_age(birth: Option<NaiveDate>, at: Millis, field: &str, what: &str) -> Result<()> {
    match birth {
        Some(b) if age_on(b, local_date(at)) < MIN_AGE => Err(reject(
            ErrorCode::UnderageWorker,
            field,
            format!("worker is under {MIN_AGE} at {what}"),
        )),
        _ => Ok(()),
    }
}

/// Validates a worker registration.
pub fn worker(w: &proto::Worker, ctx: &Context<'_>) -> Result<Worker> {
    let worker_id = record_id(&w.worker_id, "worker_id")?;
    let id_type = if w.id_type.is_empty() {
        IdType::ResidentId
    } else {
        IdType::parse(&w.id_type)
            .ok_or_else(|| reject(ErrorCode::InvalidIdType, "id_type", "unknown id_type"))?
    };
    let id_number = IdNumber::parse(id_type, required(&w.id_number, "id_number")?, ctx.today())
        .map_err(|e| reject(ErrorCode::InvalidIdNumber, "id_number", e.to_string()))?;
    if w.name.is_empty() {
        return Err(Rejection::missing("name"));
    }
    let name = PersonName::parse(&w.name)
        .map_err(|e| reject(ErrorCode::InvalidName, "name", e.to_string()))?;
    let mobile = Mobile::parse(required(&w.mobile, "mobile")?).map_err(|_| {
        reject(
            ErrorCode::InvalidMobile,
            "mobile",
            "not a mainland mobile number",
        )
    })?;
    if w.industries.is_empty() {
        return Err(Rejection::missing("industries"));
    }
    let mut industries = w
        .industries
        .iter()
        .enumerate()
        .map(|(i, v)| industry(v, &format!("industries[{i}]"), ctx))
        .collect::<Result<Vec<_>>>()?;
    industries.sort();
    industries.dedup();
    let registered_at = time_field(&w.registered_at, "registered_at", ctx)?;
    check_age(
        id_number.birth_date(),
        registered_at,
        "id_number",
        "registered_at",
    )?;
    let status = WorkerStatus::parse(required(&w.status, "status")?).ok_or_else(|| {
        reject(
            ErrorCode::InvalidStatus,
            "status",
            "status must be ACTIVE or LEFT",
        )
    })?;
    let left_at = optional_time(&w.left_at, "left_at", ctx)?;
    match (status, left_at) {
        (WorkerStatus::Left, None) => {
            return Err(reject(
                ErrorCode::InvalidStatus,
                "left_at",
                "left_at is required when status is LEFT",
            ));
        }
        (WorkerStatus::Active, Some(_)) => {
            return Err(reject(
                ErrorCode::InvalidStatus,
                "left_at",
                "left_at is only allowed when status is LEFT",
            ));
        }
        (WorkerStatus::Left, Some(l)) if l < registered_at => {
            return Err(reject(
                ErrorCode::InvalidTime,
                "left_at",
                "left_at is before registered_at",
            ));
        }
        _ => {}
    }
    Ok(Worker {
        worker_id: worker_id.to_string(),
        revision: revision(w.revision),
        id_number,
        name,
        mobile,
        industries,
        registered_at,
        status,
        left_at,
    })
}

/// Validates an order.
pub fn order(o: &proto::Order, ctx: &Context<'_>) -> Result<Order> {
    let order_id = record_id(&o.order_id, "order_id")?;
    let worker_id = record_id(&o.worker_id, "worker_id")?;
    let industry = industry(&o.industry, "industry", ctx)?;
    let division_code = required(&o.division_code, "division_code")?;
    match ctx.reference.division(division_code) {
        Some(d) if d.is_province() => {
            return Err(reject(
                ErrorCode::InvalidDivisionCode,
                "division_code",
                "an order is taken in a city or county, not a province",
            ));
        }
        Some(_) if ctx.reference.serves(division_code) => {}
        Some(_) => {
            return Err(reject(
                ErrorCode::InvalidDivisionCode,
                "division_code",
                format!("division {division_code} is not served by this gateway"),
            ));
        }
        None => {
            return Err(reject(
                ErrorCode::InvalidDivisionCode,
                "division_code",
                format!("unknown division {division_code}"),
            ));
        }
    }
    let accepted_at = time_field(&o.accepted_at, "accepted_at", ctx)?;
    let status = OrderStatus::parse(required(&o.status, "status")?).ok_or_else(|| {
        reject(
            ErrorCode::InvalidStatus,
            "status",
            "status must be COMPLETED or CANCELLED",
        )
    })?;
    let completed_at = match status {
        OrderStatus::Completed => Some(time_field(&o.completed_at, "completed_at", ctx)?),
        OrderStatus::Cancelled => optional_time(&o.completed_at, "completed_at", ctx)?,
    };
    if completed_at.is_some_and(|c| c < accepted_at) {
        return Err(reject(
            ErrorCode::InvalidTimeRange,
            "completed_at",
            "completed_at is before accepted_at",
        ));
    }
    let vehicle_plate = if o.vehicle_plate.is_empty() {
        None
    } else {
        Some(Plate::parse(&o.vehicle_plate).map_err(|_| {
            reject(
                ErrorCode::InvalidPlate,
                "vehicle_plate",
                "not a GA 36-2018 plate",
            )
        })?)
    };
    Ok(Order {
        order_id: order_id.to_string(),
        revision: revision(o.revision),
        worker_id: worker_id.to_string(),
        industry,
        division_code: division_code.to_string(),
        accepted_at,
        completed_at,
        status,
        vehicle_plate,
    })
}

/// A known division served by this gateway (any level).
fn served_division<'a>(v: &'a str, ctx: &Context<'_>) -> Result<&'a str> {
    let v = required(v, "division_code")?;
    if ctx.reference.division(v).is_none() {
        return Err(reject(
            ErrorCode::InvalidDivisionCode,
            "division_code",
            format!("unknown division {v}"),
        ));
    }
    if !ctx.reference.serves(v) {
        return Err(reject(
            ErrorCode::InvalidDivisionCode,
            "division_code",
            format!("division {v} is not served by this gateway"),
        ));
    }
    Ok(v)
}

fn non_negative(v: i64, field: &str) -> Result<i64> {
    if v < 0 {
        Err(reject(
            ErrorCode::InvalidAmount,
            field,
            format!("{field} must not be negative"),
        ))
    } else {
        Ok(v)
    }
}

/// Validates a monthly declaration.
pub fn declaration(d: &proto::Declaration, ctx: &Context<'_>) -> Result<Declaration> {
    let declaration_id = record_id(&d.declaration_id, "declaration_id")?;
    let period = Period::parse(required(&d.period, "period")?)
        .ok_or_else(|| reject(ErrorCode::InvalidPeriod, "period", "period must be YYYY-MM"))?;
    if !period.has_ended(ctx.now) {
        return Err(reject(
            ErrorCode::InvalidPeriod,
            "period",
            format!("{period} has not ended"),
        ));
    }
    let division_code = served_division(&d.division_code, ctx)?;
    let industry = industry(&d.industry, "industry", ctx)?;
    let figures = Figures {
        order_count: non_negative(d.order_count, "order_count")?,
        amount_fen: non_negative(d.amount_fen, "amount_fen")?,
    };
    Ok(Declaration {
        declaration_id: declaration_id.to_string(),
        revision: revision(d.revision),
        period,
        division_code: division_code.to_string(),
        industry,
        figures,
    })
}

/// Longest accident description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 2000;

/// Validates an accident report.
pub fn accident(a: &proto::Accident, ctx: &Context<'_>) -> Result<Accident> {
    let report_id = record_id(&a.report_id, "report_id")?;
    let worker_id = record_id(&a.worker_id, "worker_id")?;
    let order_id = record_id(&a.order_id, "order_id")?;
    let occurred_at = time_field(&a.occurred_at, "occurred_at", ctx)?;
    let division_code = served_division(&a.division_code, ctx)?;
    let injury_kind =
        InjuryKind::parse(required(&a.injury_kind, "injury_kind")?).ok_or_else(|| {
            reject(
                ErrorCode::InvalidInjuryKind,
                "injury_kind",
                "injury_kind must be TRAFFIC, FALL, ASSAULT or OTHER",
            )
        })?;
    if a.description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(reject(
            ErrorCode::FieldTooLong,
            "description",
            format!("description is longer than {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(Accident {
        report_id: report_id.to_string(),
        revision: revision(a.revision),
        worker_id: worker_id.to_string(),
        order_id: order_id.to_string(),
        occurred_at,
        division_code: division_code.to_string(),
        injury_kind,
        description: a.description.clone(),
    })
}

/// The kind, id and revision a wire record names (revision 0 means 1), whatever its
/// validity; None when it has no kind.
pub fn identity(r: &proto::Record) -> Option<(RecordKind, &str, u32)> {
    let (kind, id, rev) = match r.kind.as_ref()? {
        proto::record::Kind::Worker(w) => (RecordKind::Worker, w.worker_id.as_str(), w.revision),
        proto::record::Kind::Order(o) => (RecordKind::Order, o.order_id.as_str(), o.revision),
        proto::record::Kind::Declaration(d) => (
            RecordKind::Declaration,
            d.declaration_id.as_str(),
            d.revision,
        ),
        proto::record::Kind::Accident(a) => {
            (RecordKind::Accident, a.report_id.as_str(), a.revision)
        }
    };
    Some((kind, id, revision(rev)))
}

/// A wire record as it enters the cross-checks: validated, or rejected, and named.
pub fn candidate(r: &proto::Record, ctx: &Context<'_>) -> Candidate {
    let (kind, id, revision) = identity(r).unwrap_or((RecordKind::Worker, "", 1));
    Candidate {
        kind,
        id: id.to_string(),
        revision,
        record: record(r, ctx),
    }
}

/// Validates a record of any kind.
pub fn record(r: &proto::Record, ctx: &Context<'_>) -> Result<Record> {
    match &r.kind {
        Some(proto::record::Kind::Worker(w)) => worker(w, ctx).map(Record::Worker),
        Some(proto::record::Kind::Order(o)) => order(o, ctx).map(Record::Order),
        Some(proto::record::Kind::Declaration(d)) => declaration(d, ctx).map(Record::Declaration),
        Some(proto::record::Kind::Accident(a)) => accident(a, ctx).map(Record::Accident),
        None => Err(Rejection::missing("kind")),
    }
}

/// Check the underage rule for an order against the worker's birth date (needs the
/// stored worker, so `crosscheck` calls it).
pub fn order_age(birth: Option<NaiveDate>, accepted_at: Millis) -> Result<()> {
    check_age(birth, accepted_at, "worker_id", "accepted_at")
}
