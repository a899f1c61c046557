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

use crate::domain::batch::{
    Candidate, Known, OrderFacts, Plan, Reconciliation, RejectionRow, StatementSend, Stored,
    StoredDeclaration, StoredOrder, WorkerState, Write,
};
use crate::domain::fees::RateBook;
use crate::domain::reconcile::{self, StatementKey, Statements};
use crate::domain::records::ContentHash;
use crate::domain::time::{Millis, local_midnight};
use crate::domain::{
    Accident, Declaration, ErrorCode, Order, Outcome, PlatformProfile, Record, Rejection,
    WarningCode,
};
use crate::validate;

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
