//! The data of one batch as it passes through the stages (ingest → crosscheck →
//! store): the candidates as validated, the stored state the rules see ([`Known`]), the
//! ids to load ([`Touched`]) and the [`Plan`] of outcomes and writes the rules decide.
//! Shared by the rules, the store and the delivery items, and owned by none of them.
//! Pure: no tonic, no sqlx.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDate;

use crate::domain::fees::Figures;
use crate::domain::period::Period;
use crate::domain::reconcile::{RatedStatement, StatementKey, Statements};
use crate::domain::records::ContentHash;
use crate::domain::time::{Millis, local_date};
use crate::domain::{
    Accident, Declaration, Order, OrderStatus, Outcome, Record, RecordKind, Rejection, Worker,
    WorkerStatus,
};

/// A record's stored revision and content hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub revision: u32,
    pub hash: ContentHash,
}

/// What the rules need of a stored worker (its current revision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerState {
    pub stored: Stored,
    pub industries: Vec<String>,
    pub registered_at: Millis,
    pub status: WorkerStatus,
    pub left_at: Option<Millis>,
    pub birth_date: Option<NaiveDate>,
}

impl WorkerState {
    /// What the rules keep of a worker just accepted (its birth date from the ID
    /// number, GB 11643).
    pub fn of(w: &Worker) -> Self {
        Self {
            stored: Stored {
                revision: w.revision,
                hash: w.content_hash(),
            },
            industries: w.industries.clone(),
            registered_at: w.registered_at,
            status: w.status,
            left_at: w.left_at,
            birth_date: w.id_number.birth_date(),
        }
    }

    pub(crate) fn active_at(&self, at: Millis) -> bool {
        self.registered_at <= at && self.left_at.is_none_or(|left| at < left)
    }
}

/// What the aggregates and the accident rules need of a stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFacts {
    pub worker_id: String,
    pub industry: String,
    pub division_code: String,
    pub accepted_at: Millis,
    pub completed_at: Option<Millis>,
    pub status: OrderStatus,
}

impl OrderFacts {
    /// What the aggregates keep of an order just accepted.
    pub fn of(o: &Order) -> Self {
        Self {
            worker_id: o.worker_id.clone(),
            industry: o.industry.clone(),
            division_code: o.division_code.clone(),
            accepted_at: o.accepted_at,
            completed_at: o.completed_at,
            status: o.status,
        }
    }

    /// The volume statement the order counts in: its month, industry and city (an
    /// order taken in a county counts in the county's prefecture-level city).
    pub fn statement(&self) -> StatementKey {
        let city = match self.division_code.get(..4) {
            Some(prefix) => format!("{prefix}00"),
            None => self.division_code.clone(),
        };
        StatementKey {
            period: Period::of(self.accepted_at),
            division_code: city,
            industry: self.industry.clone(),
        }
    }

    /// The daily enrolment a billable order makes: worker, local day, division.
    pub fn enrolment(&self) -> EnrolmentKey {
        EnrolmentKey {
            worker_id: self.worker_id.clone(),
            day: local_date(self.accepted_at),
            division_code: self.division_code.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrder {
    pub stored: Stored,
    pub facts: OrderFacts,
}

/// A stored declaration: its revision and what it declares for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeclaration {
    pub stored: Stored,
    pub key: StatementKey,
}

/// 按日参保: a worker insured on a local day in a division.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnrolmentKey {
    pub worker_id: String,
    pub day: NaiveDate,
    pub division_code: String,
}

/// The stored state of everything a batch touches.
#[derive(Debug, Default, Clone)]
pub struct Known {
    pub workers: HashMap<String, WorkerState>,
    pub orders: HashMap<String, StoredOrder>,
    pub declarations: HashMap<String, StoredDeclaration>,
    pub accidents: HashMap<String, Stored>,
    /// Billable counts of the statements of the months and industries in `scope`.
    pub statements: Statements,
    /// Keys (a city or a province) declared for, within `scope`, with the number of
    /// declarations holding each.
    pub declared: HashMap<StatementKey, usize>,
    /// When the platform's months closed (first declaration), within `scope`.
    pub closed: HashMap<Period, Millis>,
    /// Months whose statements were released to tax, within `scope`: a change to one
    /// of their statements is sent again as a correction.
    pub released: HashSet<Period>,
    /// The current (latest) declaration of each declared key, within `scope`.
    pub current_declarations: HashMap<StatementKey, Declaration>,
    /// The (month, industry) pairs whose statements and declarations were loaded.
    pub scope: HashSet<(Period, String)>,
    /// The platform's workers version when the state was loaded: a counter the store
    /// raises by one in every transaction that writes any of the platform's workers
    /// (for caches of `workers`, `ingest::workers`). None when not read from a store.
    pub workers_version: Option<i64>,
}

impl Known {
    pub(crate) fn is_declared(&self, key: &StatementKey) -> bool {
        let province = StatementKey {
            division_code: format!("{}0000", key.division_code.get(..2).unwrap_or("")),
            ..key.clone()
        };
        [key, &province]
            .into_iter()
            .any(|k| self.declared.get(k).is_some_and(|n| *n > 0))
    }

    pub(crate) fn add_to_statement(&mut self, key: &StatementKey, delta: i64) {
        if self.scope.contains(&(key.period, key.industry.clone())) {
            *self.statements.entry(key.clone()).or_default() += delta;
        }
    }
}

/// Ids a batch touches, to load before deciding; then the months and industries.
#[derive(Debug, Default, Clone)]
pub struct Touched {
    pub worker_ids: Vec<String>,
    pub order_ids: Vec<String>,
    pub declaration_ids: Vec<String>,
    pub accident_ids: Vec<String>,
}

impl Touched {
    /// The ids the candidates name, each once: workers (of workers, orders and
    /// accidents), orders (of orders and accidents), declarations and accidents.
    pub fn of<'a>(candidates: impl IntoIterator<Item = &'a Candidate>) -> Self {
        let mut t = Touched::default();
        let mut seen = HashSet::new();
        let mut add = |list: &mut Vec<String>, kind: u8, id: &str| {
            if seen.insert((kind, id.to_string())) {
                list.push(id.to_string());
            }
        };
        for c in candidates {
            match &c.record {
                Ok(Record::Worker(w)) => add(&mut t.worker_ids, 0, &w.worker_id),
                Ok(Record::Order(o)) => {
                    add(&mut t.order_ids, 1, &o.order_id);
                    add(&mut t.worker_ids, 0, &o.worker_id);
                }
                Ok(Record::Declaration(d)) => add(&mut t.declaration_ids, 2, &d.declaration_id),
                Ok(Record::Accident(a)) => {
                    add(&mut t.accident_ids, 3, &a.report_id);
                    add(&mut t.order_ids, 1, &a.order_id);
                    add(&mut t.worker_ids, 0, &a.worker_id);
                }
                Err(_) => {}
            }
        }
        t
    }

    /// The (month, industry) pairs whose statements and declarations the batch needs:
    /// those of its orders (new and as stored) and of its declarations.
    pub fn scope<'a>(
        candidates: impl IntoIterator<Item = &'a Candidate>,
        known: &Known,
    ) -> Vec<(Period, String)> {
        let mut pairs = HashSet::new();
        for c in candidates {
            match &c.record {
                Ok(Record::Order(o)) => {
                    pairs.insert((Period::of(o.accepted_at), o.industry.clone()));
                    if let Some(s) = known.orders.get(&o.order_id) {
                        pairs.insert((Period::of(s.facts.accepted_at), s.facts.industry.clone()));
                    }
                }
                Ok(Record::Declaration(d)) => {
                    pairs.insert((d.period, d.industry.clone()));
                    if let Some(s) = known.declarations.get(&d.declaration_id) {
                        pairs.insert((s.key.period, s.key.industry.clone()));
                    }
                }
                _ => {}
            }
        }
        pairs.into_iter().collect()
    }
}

/// One record of a batch as it enters the rules: validated, or already rejected by
/// field rules. `kind`, `id` and `revision` come from the wire so that a rejected
/// record can still be named (`kind` is None for a record that names no kind).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub kind: Option<RecordKind>,
    pub id: String,
    pub revision: u32,
    pub record: Result<Record, Rejection>,
}

/// A rejected record to keep for the platform to read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionRow {
    /// None for a record that names no kind.
    pub kind: Option<RecordKind>,
    pub id: String,
    pub revision: u32,
    pub rejection: Rejection,
}

/// A record to store: new (`correction == false`) or replacing a lower revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write<T> {
    pub record: T,
    pub hash: ContentHash,
    pub correction: bool,
}

/// A declaration's figures at acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconciliation {
    pub declared: Figures,
    pub computed: Figures,
}

/// A statement of a released month that the batch changes, to send to tax again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementSend {
    pub statement: RatedStatement,
    /// Tax already holds a version of it.
    pub correction: bool,
}

/// Every accepted revision of the batch, in order, for the backends.
#[derive(Debug, Default, Clone)]
pub struct Revisions {
    pub workers: Vec<Write<Worker>>,
    pub orders: Vec<Write<Order>>,
    pub declarations: Vec<Write<Declaration>>,
    /// The figures of each of `declarations`, at its position in the batch.
    pub declaration_figures: Vec<Reconciliation>,
    pub accidents: Vec<Write<Accident>>,
}

/// The outcome of every record, in input order, and the writes that realise them.
/// Each id appears at most once per kind in the store's writes (the last accepted
/// revision, in the order of last writes); `revisions` has every one.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub outcomes: Vec<Outcome>,
    /// Figures of accepted declarations, by index in the batch...
    pub reconciliations: BTreeMap<usize, Reconciliation>,
    /// ...and by declaration id (the last accepted revision).
    pub declaration_figures: HashMap<String, Reconciliation>,
    pub workers: Vec<Write<Worker>>,
    pub orders: Vec<Write<Order>>,
    pub declarations: Vec<Write<Declaration>>,
    pub accidents: Vec<Write<Accident>>,
    /// Every accepted revision, for the backends.
    pub revisions: Revisions,
    pub rejections: Vec<RejectionRow>,
    /// Changes to billable counts of volume statements (zero entries removed).
    pub statement_deltas: BTreeMap<StatementKey, i64>,
    /// Changes to order counts of daily enrolments (zero entries removed).
    pub enrolment_deltas: BTreeMap<EnrolmentKey, i64>,
    /// Months the batch closes for the platform (its first declaration for them).
    pub closes: Vec<Period>,
    /// Statements of released months that the batch changes, with their new figures.
    pub statement_sends: Vec<StatementSend>,
    /// Current declarations (not in the batch) whose computed figures the batch
    /// changes: their reconciliation is sent to tax again.
    pub reconciliation_updates: Vec<(Declaration, Reconciliation)>,
}

impl Plan {
    /// True when nothing needs writing (every record a duplicate).
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
            && self.orders.is_empty()
            && self.declarations.is_empty()
            && self.accidents.is_empty()
            && self.rejections.is_empty()
    }
}
