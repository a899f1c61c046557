//! Rules between records: revisions (DUPLICATE, REVISION_CONFLICT, STALE_REVISION,
//! corrections), a worker known and active for every order, the worker's industries,
//! age at the order, and the platform's pilot start.
//!
//! Pure: the store loads what it knows about the ids a batch touches into [`Known`],
//! [`decide`] turns the batch into outcomes and a [`Plan`] of writes, and the store
//! writes the plan in the same transaction. Records in one batch see each other in
//! order, because each accepted record updates `Known` before the next is decided.

use std::collections::HashMap;

use chrono::NaiveDate;

use crate::domain::records::ContentHash;
use crate::domain::time::{Millis, local_midnight};
use crate::domain::{
    ErrorCode, Order, Outcome, PlatformProfile, Record, RecordKind, Rejection, Worker, WorkerStatus,
};
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

/// The stored state of every id a batch touches, keyed by record id.
#[derive(Debug, Default, Clone)]
pub struct Known {
    pub workers: HashMap<String, WorkerState>,
    pub orders: HashMap<String, Stored>,
}

/// One record of a batch as it enters the rules: validated, or already rejected by
/// field rules. `kind`, `id` and `revision` come from the wire so that a rejected
/// record can still be named.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub kind: RecordKind,
    pub id: String,
    pub revision: u32,
    pub record: Result<Record, Rejection>,
}

/// A rejected record to keep for the platform to read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionRow {
    pub kind: RecordKind,
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

/// The outcome of every record, in input order, and the writes that realise them.
/// Each id appears at most once in `workers` and `orders` (the last accepted revision).
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub outcomes: Vec<Outcome>,
    pub workers: Vec<Write<Worker>>,
    pub orders: Vec<Write<Order>>,
    pub rejections: Vec<RejectionRow>,
}

impl Plan {
    /// True when nothing needs writing (every record a duplicate).
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty() && self.orders.is_empty() && self.rejections.is_empty()
    }
}

/// Adds `w` to `list`, replacing an earlier write of the same id.
fn push_write<T>(
    list: &mut Vec<Write<T>>,
    pos: &mut HashMap<String, usize>,
    id: &str,
    w: Write<T>,
) {
    match pos.get(id) {
        Some(&i) => {
            // A second revision of the same id in one batch: keep the later one, and it
            // is a correction only if the first write was.
            let correction = list[i].correction;
            list[i] = Write { correction, ..w };
        }
        None => {
            pos.insert(id.to_string(), list.len());
            list.push(w);
        }
    }
}

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

/// The rules an order must pass against its worker and its platform.
fn check_order(
    order: &Order,
    platform: &PlatformProfile,
    worker: Option<&WorkerState>,
) -> Result<(), Rejection> {
    let Some(w) = worker else {
        return Err(Rejection::new(
            ErrorCode::WorkerNotRegistered,
            "worker_id",
            format!("worker {} is not registered", order.worker_id),
        ));
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
            format!("worker {} {why} accepted_at", order.worker_id),
        ));
    }
    if !w.industries.contains(&order.industry) {
        return Err(Rejection::new(
            ErrorCode::IndustryNotRegistered,
            "industry",
            format!(
                "worker {} is not registered for {}",
                order.worker_id, order.industry
            ),
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

/// Decides every candidate in order against `known`, updating it as records are
/// accepted, and returns the outcomes with the writes to make.
pub fn decide(platform: &PlatformProfile, candidates: Vec<Candidate>, known: &mut Known) -> Plan {
    let mut plan = Plan {
        outcomes: Vec::with_capacity(candidates.len()),
        ..Plan::default()
    };
    let mut worker_pos = HashMap::new();
    let mut order_pos = HashMap::new();
    for c in candidates {
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
                    let write = Write {
                        record: w,
                        hash,
                        correction: matches!(step, Step::Correction),
                    };
                    push_write(&mut plan.workers, &mut worker_pos, &id, write);
                    Outcome::ACCEPTED
                })
            }
            Ok(Record::Order(o)) => {
                let hash = o.content_hash();
                revision_step(known.orders.get(&o.order_id), o.revision, &hash).and_then(|step| {
                    if let Step::Duplicate = step {
                        return Ok(Outcome::Duplicate);
                    }
                    check_order(&o, platform, known.workers.get(&o.worker_id))?;
                    known.orders.insert(
                        o.order_id.clone(),
                        Stored {
                            revision: o.revision,
                            hash,
                        },
                    );
                    let id = o.order_id.clone();
                    let write = Write {
                        record: o,
                        hash,
                        correction: matches!(step, Step::Correction),
                    };
                    push_write(&mut plan.orders, &mut order_pos, &id, write);
                    Ok(Outcome::ACCEPTED)
                })
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
    plan
}
