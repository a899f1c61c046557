//! Property: after any sequence of order inserts, corrections (status flips, moves
//! between months, days, divisions, industries and workers) and cancellations, applied
//! in batches of any size, every volume statement and daily-enrolment row equals a
//! brute-force recount from the stored orders.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use oip_gateway::domain::PlatformProfile;
use oip_gateway::domain::batch::{Candidate, EnrolmentKey};
use oip_gateway::domain::fees::RateBook;
use oip_gateway::domain::period::Period;
use oip_gateway::domain::reconcile::StatementKey;
use oip_gateway::domain::time::{local_date, parse_wire_time};
use oip_gateway::ingest::{Ingest, Policy};
use oip_gateway::proto;
use oip_gateway::reference::Reference;
use oip_gateway::store::sqlite::SqliteStore;
use oip_gateway::store::{PageRequest, Store};
use oip_gateway::validate;
use proptest::prelude::*;

use crate::common::{order, test_platforms, worker};

#[derive(Debug, Clone)]
struct Op {
    id: usize,
    worker: usize,
    industry: usize,
    division: usize,
    month: u32,
    day: u32,
    hour: u32,
    cancelled: bool,
    /// Send the next revision (a correction when the id exists); otherwise resend the
    /// current one (a duplicate or a conflict).
    bump: bool,
}

fn op() -> impl Strategy<Value = Op> {
    (
        0..8usize,
        0..2usize,
        0..2usize,
        0..3usize,
        7..10u32,
        1..29u32,
        0..24u32,
        any::<bool>(),
        prop::bool::weighted(0.8),
    )
        .prop_map(
            |(id, worker, industry, division, month, day, hour, cancelled, bump)| Op {
                id,
                worker,
                industry,
                division,
                month,
                day,
                hour,
                cancelled,
                bump,
            },
        )
}

const INDUSTRIES: [&str; 2] = ["INSTANT_DELIVERY", "RIDE_HAILING"];
const DIVISIONS: [&str; 3] = ["320100", "320500", "321300"];

struct Harness {
    store: Arc<dyn Store>,
    ingest: Ingest,
    platform: PlatformProfile,
    reference: Reference,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&format!("sqlite:{}", dir.path().join("p.db").display()))
            .await
            .expect("open");
        let store: Arc<dyn Store> = Arc::new(store);
        let reference = Reference::builtin();
        let config = oip_gateway::config::Config::for_test(
            String::new(),
            crate::common::tls_files(),
            test_platforms(),
        );
        let reg = config
            .platform_registrations(&reference)
            .expect("registration")
            .remove(0);
        let platform = store.upsert_platform(&reg).await.expect("platform");
        let ingest = Ingest::new(
            store.clone(),
            oip_gateway::pii::Pii::for_test(),
            Arc::new(RateBook::default()),
            Policy {
                declaration_deadline_day: 15,
                accident_margin_ms: 0,
            },
        );
        Self {
            store,
            ingest,
            platform,
            reference,
            _dir: dir,
        }
    }

    async fn apply(&self, records: Vec<proto::Record>) {
        let ctx = validate::Context {
            now: oip_gateway::domain::time::now_millis(),
            bounds: oip_gateway::validate::Bounds {
                max_future_ms: 0,
                ..Default::default()
            },
            reference: &self.reference,
            platform: &self.platform,
        };
        let candidates: Vec<Candidate> = records
            .iter()
            .map(|r| validate::candidate(r, &ctx))
            .collect();
        assert!(
            candidates.iter().all(|c| c.record.is_ok()),
            "generated records are valid"
        );
        self.ingest
            .apply(
                &self.platform,
                candidates,
                None,
                &Default::default(),
                Vec::new(),
            )
            .await
            .expect("apply");
    }

    async fn stored_orders(&self) -> Vec<proto::Order> {
        let mut all = vec![];
        let mut after = None;
        loop {
            let page = self
                .store
                .list_orders(
                    self.platform.id,
                    &PageRequest {
                        limit: 1000,
                        after,
                        id: None,
                    },
                )
                .await
                .expect("list");
            all.extend(page.items.into_iter().map(|o| proto::Order {
                worker_id: o.worker_id,
                industry: o.industry,
                division_code: o.division_code,
                accepted_at: o.accepted_at.to_string(),
                status: o.status,
                ..Default::default()
            }));
            if page.next.is_none() {
                return all;
            }
            after = page.next;
        }
    }
}

fn record_of(op: &Op, revision: u32) -> proto::Record {
    let at = format!(
        "2025-{:02}-{:02}T{:02}:30:00+08:00",
        op.month, op.day, op.hour
    );
    let accepted = parse_wire_time(&at).expect("time");
    let mut o = order(&format!("O{}", op.id), &format!("W{}", op.worker));
    o.revision = Some(revision);
    o.industry = INDUSTRIES[op.industry].into();
    o.division_code = DIVISIONS[op.division].into();
    o.accepted_at = at;
    o.completed_at = (accepted + 20 * 60_000).to_string();
    if op.cancelled {
        o.status = "CANCELLED".into();
    }
    proto::Record {
        kind: Some(proto::record::Kind::Order(o)),
    }
}

async fn run(ops: Vec<Op>, batch_sizes: Vec<usize>) {
    let h = Harness::new().await;
    let workers = (0..2)
        .map(|i| {
            let mut w = worker(&format!("W{i}"));
            w.industries = INDUSTRIES.iter().map(|s| s.to_string()).collect();
            w.registered_at = "2025-06-01T00:00:00+08:00".into();
            proto::Record {
                kind: Some(proto::record::Kind::Worker(w)),
            }
        })
        .collect();
    h.apply(workers).await;

    let mut revisions: HashMap<usize, u32> = HashMap::new();
    let records: Vec<proto::Record> = ops
        .iter()
        .map(|op| {
            let rev = revisions.entry(op.id).or_insert(0);
            if op.bump || *rev == 0 {
                *rev += 1;
            }
            record_of(op, *rev)
        })
        .collect();
    let mut rest = records.as_slice();
    for size in batch_sizes.into_iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(size.min(rest.len()));
        h.apply(now.to_vec()).await;
        rest = later;
    }

    let mut statements: BTreeMap<StatementKey, i64> = BTreeMap::new();
    let mut enrolments: BTreeMap<EnrolmentKey, i64> = BTreeMap::new();
    for o in h.stored_orders().await {
        let accepted: i64 = o.accepted_at.parse().expect("millis");
        if o.status == "COMPLETED" {
            let key = StatementKey {
                period: Period::of(accepted),
                division_code: o.division_code.clone(),
                industry: o.industry.clone(),
            };
            *statements.entry(key).or_default() += 1;
            let key = EnrolmentKey {
                worker_id: o.worker_id.clone(),
                day: local_date(accepted),
                division_code: o.division_code.clone(),
            };
            *enrolments.entry(key).or_default() += 1;
        }
    }
    let kept: BTreeMap<_, _> = h
        .store
        .all_statements(h.platform.id)
        .await
        .expect("statements")
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .collect();
    assert_eq!(kept, statements, "volume statements");
    let kept = h
        .store
        .all_enrolments(h.platform.id)
        .await
        .expect("enrolments");
    assert_eq!(kept, enrolments, "daily enrolments (no zero rows)");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn aggregates_equal_a_recount(ops in prop::collection::vec(op(), 1..60), sizes in prop::collection::vec(1..12usize, 1..4)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(run(ops, sizes));
    }
}

/// The worked example: a correction moving an order to another month, city and
/// industry, then cancelling it, leaves no trace in the aggregates.
#[tokio::test]
async fn a_moved_then_cancelled_order_leaves_no_trace() {
    let base = Op {
        id: 1,
        worker: 0,
        industry: 0,
        division: 0,
        month: 7,
        day: 3,
        hour: 10,
        cancelled: false,
        bump: true,
    };
    let moved = Op {
        industry: 1,
        division: 2,
        month: 8,
        ..base.clone()
    };
    let cancelled = Op {
        cancelled: true,
        ..moved.clone()
    };
    run(vec![base, moved, cancelled], vec![1]).await;
}
