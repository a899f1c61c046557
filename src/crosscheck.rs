//! Rules between records: revisions (DUPLICATE, REVISION_CONFLICT, STALE_REVISION,
//! corrections); a known, active worker for every order; the worker's industries;
//! the platform's pilot start; an accident's order and worker; a declaration against
//! the gateway's figures; late orders for declared months.
//!
//! Pure: the store loads what it knows about the ids and months a batch touches into
//! [`Known`]; [`decide`] turns the batch into outcomes and a [`Plan`] of writes,
//! including the changes to the incremental aggregates (volume statements, daily
//! enrolments); the store writes the plan in the same transaction. Records in one
//! batch see each other in order: each accepted record updates `Known` before the
//! next is decided.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDate;

use crate::domain::fees::{Figures, RateBook};
use crate::domain::period::Period;
use crate::domain::records::ContentHash;
use crate::domain::time::{Millis, local_date, local_midnight};
use crate::domain::{
    Accident, Declaration, ErrorCode, Order, OrderStatus, Outcome, PlatformProfile, Record,
    RecordKind, Rejection, WarningCode, Worker, WorkerStatus,
};
use crate::reconcile::{self, RatedStatement, StatementKey, Statements};
use crate::validate;

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

    fn active_at(&self, at: Millis) -> bool {
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
    fn is_declared(&self, key: &StatementKey) -> bool {
        let province = StatementKey {
            division_code: format!("{}0000", key.division_code.get(..2).unwrap_or("")),
            ..key.clone()
        };
        [key, &province]
            .into_iter()
            .any(|k| self.declared.get(k).is_some_and(|n| *n > 0))
    }

    fn add_to_statement(&mut self, key: &StatementKey, delta: i64) {
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

/// Everything the rules need besides the batch and the stored state.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub platform: &'a PlatformProfile,
    pub rates: &'a RateBook,
    pub now: Millis,
    /// Declarations are due by the end of this day of the following month.
    pub declaration_deadline_day: u32,
    /// Margin around an order's window within which an accident is not flagged.
    pub accident_margin_ms: i64,
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

/// The store's writes of `plans`, decided one after another against the same state, as
/// one plan (group commit: the plans of several calls written in one transaction),
/// taken out of them: the last write of each id (in the order of last writes), every
/// rejection, the summed changes to statements (a key whose changes sum to zero is
/// kept: the statement exists, at its count, as after the calls one by one) and to
/// daily enrolments (a key summing to zero is dropped: the calls one by one would have
/// left it as it was), and every month closed. Outcomes, revisions and
/// reconciliations stay with each plan.
pub fn merge_writes(plans: &mut [&mut Plan]) -> Plan {
    let mut merged = Plan::default();
    for plan in plans.iter_mut() {
        merged.workers.append(&mut plan.workers);
        merged.orders.append(&mut plan.orders);
        merged.declarations.append(&mut plan.declarations);
        merged.accidents.append(&mut plan.accidents);
        merged.rejections.append(&mut plan.rejections);
        for (k, d) in std::mem::take(&mut plan.statement_deltas) {
            bump(&mut merged.statement_deltas, k, d);
        }
        for (k, d) in std::mem::take(&mut plan.enrolment_deltas) {
            bump(&mut merged.enrolment_deltas, k, d);
        }
        for p in std::mem::take(&mut plan.closes) {
            if !merged.closes.contains(&p) {
                merged.closes.push(p);
            }
        }
    }
    if plans.len() > 1 {
        merged.workers = last_per_id(merged.workers, |w| &w.worker_id);
        merged.orders = last_per_id(merged.orders, |o| &o.order_id);
        merged.declarations = last_per_id(merged.declarations, |d| &d.declaration_id);
        merged.accidents = last_per_id(merged.accidents, |a| &a.report_id);
    }
    merged.enrolment_deltas.retain(|_, d| *d != 0);
    merged
}

/// The last write of each id, in the order of last writes.
fn last_per_id<T>(writes: Vec<Write<T>>, id: impl Fn(&T) -> &str) -> Vec<Write<T>> {
    let mut seen = HashSet::new();
    let mut kept: Vec<Write<T>> = Vec::with_capacity(writes.len());
    for w in writes.into_iter().rev() {
        if seen.insert(id(&w.record).to_string()) {
            kept.push(w);
        }
    }
    kept.reverse();
    kept
}

/// Writes of one kind: one per id for the store, in the order of each id's last write
/// (a later revision in the same batch replaces the earlier one, and is a correction
/// only if the first write was), and every accepted revision in order, for the
/// backends (each revision of a record is forwarded, whatever the chunking).
struct Writes<T> {
    latest: Vec<Option<Write<T>>>,
    pos: HashMap<String, usize>,
    revisions: Vec<Write<T>>,
}

impl<T: Clone> Writes<T> {
    fn new() -> Self {
        Self {
            latest: Vec::new(),
            pos: HashMap::new(),
            revisions: Vec::new(),
        }
    }

    fn push(&mut self, id: &str, w: Write<T>) {
        let first_correction = match self.pos.get(id) {
            Some(&i) => {
                let earlier = self.latest[i].take();
                // A second revision in the batch corrects the first.
                self.revisions.push(Write {
                    correction: true,
                    ..w.clone()
                });
                earlier.map_or(w.correction, |e| e.correction)
            }
            None => {
                self.revisions.push(w.clone());
                w.correction
            }
        };
        self.pos.insert(id.to_string(), self.latest.len());
        self.latest.push(Some(Write {
            correction: first_correction,
            ..w
        }));
    }

    /// The store's writes and every revision.
    fn finish(self) -> (Vec<Write<T>>, Vec<Write<T>>) {
        (self.latest.into_iter().flatten().collect(), self.revisions)
    }
}

#[derive(Clone, Copy)]
enum Step {
    New,
    Correction,
    Duplicate,
}

/// Compares an incoming revision with the stored one.
fn revision_step(
    stored: Option<&Stored>,
    revision: u32,
    hash: &ContentHash,
) -> Result<Step, Rejection> {
    let Some(s) = stored else {
        return Ok(Step::New);
    };
    if revision < s.revision {
        Err(Rejection::new(
            ErrorCode::StaleRevision,
            "revision",
            format!(
                "revision {revision} is lower than the stored revision {}",
                s.revision
            ),
        ))
    } else if revision == s.revision && *hash == s.hash {
        Ok(Step::Duplicate)
    } else if revision == s.revision {
        Err(Rejection::new(
            ErrorCode::RevisionConflict,
            "revision",
            format!(
                "revision {revision} is already stored with different content; send a higher revision to correct it"
            ),
        ))
    } else {
        Ok(Step::Correction)
    }
}

/// Record ids are not repeated in messages: a platform may use a mobile or an ID
/// number as its worker id, and the field path already says which value is meant.
fn worker_not_registered() -> Rejection {
    Rejection::new(
        ErrorCode::WorkerNotRegistered,
        "worker_id",
        "worker_id names no worker registered with this platform",
    )
}

/// The rules an order must pass against its worker and its platform.
fn check_order(
    order: &Order,
    platform: &PlatformProfile,
    worker: Option<&WorkerState>,
) -> Result<(), Rejection> {
    let Some(w) = worker else {
        return Err(worker_not_registered());
    };
    if !w.active_at(order.accepted_at) {
        let why = if order.accepted_at < w.registered_at {
            "registered after"
        } else {
            "had left before"
        };
        return Err(Rejection::new(
            ErrorCode::WorkerNotActive,
            "worker_id",
            format!("the worker {why} accepted_at"),
        ));
    }
    if !w.industries.contains(&order.industry) {
        return Err(Rejection::new(
            ErrorCode::IndustryNotRegistered,
            "industry",
            format!("the worker is not registered for {}", order.industry),
        ));
    }
    validate::order_age(w.birth_date, order.accepted_at)?;
    match platform.pilot_start(&order.division_code) {
        None => Err(Rejection::new(
            ErrorCode::PlatformNotInPilot,
            "division_code",
            format!(
                "the platform has no pilot in division {}",
                order.division_code
            ),
        )),
        Some(start) if order.accepted_at < local_midnight(start) => Err(Rejection::new(
            ErrorCode::PlatformNotInPilot,
            "accepted_at",
            format!(
                "accepted_at is before the platform's pilot start {start} in division {}",
                order.division_code
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// The rules an accident must pass, and its warnings.
fn check_accident(
    a: &Accident,
    known: &Known,
    margin_ms: i64,
) -> Result<Vec<WarningCode>, Rejection> {
    if !known.workers.contains_key(&a.worker_id) {
        return Err(worker_not_registered());
    }
    let Some(order) = known.orders.get(&a.order_id) else {
        return Err(Rejection::new(
            ErrorCode::OrderNotFound,
            "order_id",
            "order_id names no order of this platform",
        ));
    };
    if order.facts.worker_id != a.worker_id {
        return Err(Rejection::new(
            ErrorCode::OrderWorkerMismatch,
            "order_id",
            "the order belongs to another worker",
        ));
    }
    let start = order.facts.accepted_at - margin_ms;
    let end = order.facts.completed_at.unwrap_or(order.facts.accepted_at) + margin_ms;
    Ok(if (start..=end).contains(&a.occurred_at) {
        vec![]
    } else {
        vec![WarningCode::AccidentOutsideOrderWindow]
    })
}

fn bump<K: Ord>(map: &mut BTreeMap<K, i64>, key: K, delta: i64) {
    let v = map.entry(key).or_default();
    *v += delta;
}

/// Decides every candidate in order against `known`, updating it as records are
/// accepted, and returns the outcomes with the writes to make.
pub fn decide(rules: &Rules<'_>, candidates: Vec<Candidate>, known: &mut Known) -> Plan {
    let mut plan = Plan {
        outcomes: Vec::with_capacity(candidates.len()),
        ..Plan::default()
    };
    // Statements of released months that tax already holds.
    let sent: HashSet<StatementKey> = known
        .statements
        .keys()
        .filter(|k| known.released.contains(&k.period))
        .cloned()
        .collect();
    let (mut workers, mut orders, mut declarations, mut accidents) =
        (Writes::new(), Writes::new(), Writes::new(), Writes::new());
    for (index, c) in candidates.into_iter().enumerate() {
        let outcome = match c.record {
            Err(rejection) => Err(rejection),
            Ok(Record::Worker(w)) => {
                let hash = w.content_hash();
                revision_step(
                    known.workers.get(&w.worker_id).map(|s| &s.stored),
                    w.revision,
                    &hash,
                )
                .map(|step| {
                    if let Step::Duplicate = step {
                        return Outcome::Duplicate;
                    }
                    known
                        .workers
                        .insert(w.worker_id.clone(), WorkerState::of(&w));
                    let id = w.worker_id.clone();
                    let correction = matches!(step, Step::Correction);
                    workers.push(
                        &id,
                        Write {
                            record: w,
                            hash,
                            correction,
                        },
                    );
                    Outcome::ACCEPTED
                })
            }
            Ok(Record::Order(o)) => {
                let hash = o.content_hash();
                revision_step(
                    known.orders.get(&o.order_id).map(|s| &s.stored),
                    o.revision,
                    &hash,
                )
                .and_then(|step| {
                    if let Step::Duplicate = step {
                        return Ok(Outcome::Duplicate);
                    }
                    check_order(&o, rules.platform, known.workers.get(&o.worker_id))?;
                    let facts = OrderFacts::of(&o);
                    let mut late = known.is_declared(&facts.statement());
                    let old = known.orders.insert(
                        o.order_id.clone(),
                        StoredOrder {
                            stored: Stored {
                                revision: o.revision,
                                hash,
                            },
                            facts: facts.clone(),
                        },
                    );
                    if let Some(old) = old {
                        late |= known.is_declared(&old.facts.statement());
                        if old.facts.status.is_billable() {
                            known.add_to_statement(&old.facts.statement(), -1);
                            bump(&mut plan.statement_deltas, old.facts.statement(), -1);
                            bump(&mut plan.enrolment_deltas, old.facts.enrolment(), -1);
                        }
                    }
                    if facts.status.is_billable() {
                        known.add_to_statement(&facts.statement(), 1);
                        bump(&mut plan.statement_deltas, facts.statement(), 1);
                        bump(&mut plan.enrolment_deltas, facts.enrolment(), 1);
                    }
                    let id = o.order_id.clone();
                    let correction = matches!(step, Step::Correction);
                    orders.push(
                        &id,
                        Write {
                            record: o,
                            hash,
                            correction,
                        },
                    );
                    Ok(Outcome::Accepted {
                        warnings: if late {
                            vec![WarningCode::LateOrder]
                        } else {
                            vec![]
                        },
                    })
                })
            }
            Ok(Record::Declaration(d)) => {
                let hash = d.content_hash();
                revision_step(
                    known.declarations.get(&d.declaration_id).map(|s| &s.stored),
                    d.revision,
                    &hash,
                )
                .map(|step| {
                    if let Step::Duplicate = step {
                        return Outcome::Duplicate;
                    }
                    let closed_at = match known.closed.get(&d.period) {
                        Some(t) => *t,
                        None => {
                            known.closed.insert(d.period, rules.now);
                            plan.closes.push(d.period);
                            rules.now
                        }
                    };
                    let late = rules.now >= d.period.deadline_end(rules.declaration_deadline_day);
                    let key = StatementKey {
                        period: d.period,
                        division_code: d.division_code.clone(),
                        industry: d.industry.clone(),
                    };
                    // Figures as of this position: records earlier in the batch count,
                    // later ones do not (they are sent as reconciliation updates), so
                    // an outcome never depends on how the caller chunks its records.
                    let declared = d.figures;
                    let computed = reconcile::computed(
                        rules.platform,
                        rules.rates,
                        key.period,
                        &key.division_code,
                        &key.industry,
                        &known.statements,
                        Some(closed_at),
                    );
                    let mut warnings = vec![];
                    if declared != computed {
                        warnings.push(WarningCode::DeclarationMismatch);
                    }
                    if late {
                        warnings.push(WarningCode::LateDeclaration);
                    }
                    let figures = Reconciliation { declared, computed };
                    plan.reconciliations.insert(index, figures);
                    plan.declaration_figures
                        .insert(d.declaration_id.clone(), figures);
                    let previous = known
                        .declarations
                        .get(&d.declaration_id)
                        .map(|s| s.key.clone());
                    if previous.as_ref() != Some(&key) {
                        if let Some(previous) = previous {
                            if let Some(old) = known.declared.get_mut(&previous) {
                                *old = old.saturating_sub(1);
                            }
                            if known
                                .current_declarations
                                .get(&previous)
                                .is_some_and(|c| c.declaration_id == d.declaration_id)
                            {
                                known.current_declarations.remove(&previous);
                            }
                        }
                        *known.declared.entry(key.clone()).or_default() += 1;
                    }
                    known.current_declarations.insert(key.clone(), d.clone());
                    known.declarations.insert(
                        d.declaration_id.clone(),
                        StoredDeclaration {
                            stored: Stored {
                                revision: d.revision,
                                hash,
                            },
                            key,
                        },
                    );
                    let id = d.declaration_id.clone();
                    let correction = matches!(step, Step::Correction);
                    declarations.push(
                        &id,
                        Write {
                            record: d,
                            hash,
                            correction,
                        },
                    );
                    plan.revisions.declaration_figures.push(figures);
                    Outcome::Accepted { warnings }
                })
            }
            Ok(Record::Accident(a)) => {
                let hash = a.content_hash();
                revision_step(known.accidents.get(&a.report_id), a.revision, &hash).and_then(
                    |step| {
                        if let Step::Duplicate = step {
                            return Ok(Outcome::Duplicate);
                        }
                        let warnings = check_accident(&a, known, rules.accident_margin_ms)?;
                        known.accidents.insert(
                            a.report_id.clone(),
                            Stored {
                                revision: a.revision,
                                hash,
                            },
                        );
                        let id = a.report_id.clone();
                        let correction = matches!(step, Step::Correction);
                        accidents.push(
                            &id,
                            Write {
                                record: a,
                                hash,
                                correction,
                            },
                        );
                        Ok(Outcome::Accepted { warnings })
                    },
                )
            }
        };
        plan.outcomes.push(match outcome {
            Ok(o) => o,
            Err(rejection) => {
                plan.rejections.push(RejectionRow {
                    kind: c.kind,
                    id: c.id,
                    revision: c.revision,
                    rejection: rejection.clone(),
                });
                Outcome::Rejected(rejection)
            }
        });
    }
    plan.statement_deltas.retain(|_, v| *v != 0);
    plan.statement_sends = statement_sends(rules, known, &plan.statement_deltas, &sent);
    plan.reconciliation_updates = reconciliation_updates(rules, known, &plan);
    (plan.workers, plan.revisions.workers) = workers.finish();
    (plan.orders, plan.revisions.orders) = orders.finish();
    (plan.declarations, plan.revisions.declarations) = declarations.finish();
    (plan.accidents, plan.revisions.accidents) = accidents.finish();
    plan.enrolment_deltas.retain(|_, v| *v != 0);
    plan
}

/// The changed statements of released months, rated as of their month's close.
fn statement_sends(
    rules: &Rules<'_>,
    known: &Known,
    deltas: &BTreeMap<StatementKey, i64>,
    sent: &HashSet<StatementKey>,
) -> Vec<StatementSend> {
    deltas
        .keys()
        .filter(|k| known.released.contains(&k.period))
        .map(|key| StatementSend {
            statement: reconcile::rate_statement(
                rules.platform,
                rules.rates,
                key,
                known.statements.get(key).copied().unwrap_or(0),
                known.closed.get(&key.period).copied(),
            ),
            correction: sent.contains(key),
        })
        .collect()
}

/// Current declarations whose computed figures moved after they were last sent: for
/// one outside the batch, between before and after the batch (late or corrected
/// orders); for one in the batch, between its position and the end of the batch
/// (records after it). Figures as they were and as they are now.
fn reconciliation_updates(
    rules: &Rules<'_>,
    known: &Known,
    plan: &Plan,
) -> Vec<(Declaration, Reconciliation)> {
    let deltas = &plan.statement_deltas;
    // The statements as they were before the batch, once for every declaration.
    let before: Statements = known
        .statements
        .iter()
        .map(|(k, n)| (k.clone(), n - deltas.get(k).copied().unwrap_or(0)))
        .collect();
    let mut updates: Vec<_> = known
        .current_declarations
        .iter()
        .filter(|(key, d)| {
            plan.declaration_figures.contains_key(&d.declaration_id)
                || deltas.keys().any(|k| {
                    k.period == key.period
                        && k.industry == key.industry
                        && reconcile::covers(&key.division_code, &k.division_code)
                })
        })
        .filter_map(|(key, d)| {
            let closed_at = known.closed.get(&key.period).copied();
            let figures = |statements: &Statements| {
                reconcile::computed(
                    rules.platform,
                    rules.rates,
                    key.period,
                    &key.division_code,
                    &key.industry,
                    statements,
                    closed_at,
                )
            };
            let after = figures(&known.statements);
            let sent = match plan.declaration_figures.get(&d.declaration_id) {
                Some(at_position) => at_position.computed,
                None => figures(&before),
            };
            (after != sent).then(|| {
                (
                    d.clone(),
                    Reconciliation {
                        declared: d.figures,
                        computed: after,
                    },
                )
            })
        })
        .collect();
    updates.sort_by(|a, b| a.0.declaration_id.cmp(&b.0.declaration_id));
    updates
}
