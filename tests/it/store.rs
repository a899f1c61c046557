//! The store conformance suite: written against the `Store` trait, run against every
//! backend (SQLite and PostgreSQL), each on a fresh database.

use oip_gateway::store::{IngestRepo, ListingRepo, OutboxRepo, PlatformRepo};
use std::sync::Arc;

use chrono::NaiveDate;
use oip_gateway::crosscheck::{self, Rules};
use oip_gateway::domain::batch;
use oip_gateway::domain::batch::{Candidate, Known, Touched};
use oip_gateway::domain::fees::RateBook;
use oip_gateway::domain::grant::{Grant, Role};
use oip_gateway::domain::platform::DeliveryTier;
use oip_gateway::domain::{PlatformProfile, Record, RecordKind};
use oip_gateway::pii::Pii;
use oip_gateway::proto;
use oip_gateway::reference::Reference;
use oip_gateway::store::sqlite::SqliteStore;
use oip_gateway::store::{Laps, PageRequest, PlatformRegistration, Store, StoreError};
use oip_gateway::validate;

use crate::common::{order, worker};

pub(crate) fn touched(workers: &[&str], orders: &[&str]) -> Touched {
    Touched {
        worker_ids: workers.iter().map(|s| s.to_string()).collect(),
        order_ids: orders.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub(crate) fn rules<'a>(p: &'a PlatformProfile, book: &'a RateBook) -> Rules<'a> {
    Rules {
        platform: p,
        rates: book,
        now: oip_gateway::domain::time::now_millis(),
        declaration_deadline_day: 15,
        accident_margin_ms: 0,
    }
}

/// What keeps a backend's database alive for a test (a temporary directory, a
/// PostgreSQL database dropped afterwards).
type Keep = Box<dyn std::any::Any>;

/// Every backend, each on a fresh database, opened as the gateway opens its store
/// (`store::connect`): SQLite in a temporary directory, PostgreSQL in a database of
/// its own on the tests' server (`common::FreshPostgres`).
async fn backends() -> Vec<(&'static str, Arc<dyn Store>, Keep)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("conf.db").display());
    let sqlite = oip_gateway::store::connect(&url)
        .await
        .expect("open sqlite");
    let pg = crate::common::FreshPostgres::new().await;
    let postgres = oip_gateway::store::connect(&pg.url)
        .await
        .expect("open postgres");
    vec![
        ("sqlite", sqlite, Box::new(dir)),
        ("postgres", postgres, Box::new(pg)),
    ]
}

#[tokio::test]
async fn a_database_url_of_no_known_backend_is_refused_by_name() {
    for url in ["mysql://db/oip", "oracle://db/oip", "oip.db"] {
        let err = oip_gateway::store::connect(url)
            .await
            .err()
            .unwrap_or_else(|| panic!("{url}: opened"));
        let scheme = url.split(':').next().unwrap_or_default();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains(&format!("{scheme:?}")) && m.contains("sqlite:") && m.contains("postgres://")),
            "{url}: {err:?}"
        );
    }
}

pub(crate) fn registration(uscc: &str) -> PlatformRegistration {
    PlatformRegistration {
        uscc: uscc.into(),
        name: "P".into(),
        industries: vec!["INSTANT_DELIVERY".into()],
        pilot_starts: vec![(
            "320100".into(),
            NaiveDate::from_ymd_opt(2025, 7, 1).expect("date"),
        )],
        delivery_tier: DeliveryTier::B,
        delivery_tiers: vec![],
    }
}

/// Candidates from wire records, validated as the API would.
/// Validates with the API's rules (no clock skew allowed) for `platform`.
fn validated<T>(platform: &PlatformProfile, f: impl FnOnce(&validate::Context) -> T) -> T {
    let reference = Reference::builtin();
    let ctx = validate::Context {
        now: oip_gateway::domain::time::now_millis(),
        bounds: oip_gateway::validate::Bounds {
            max_future_ms: 0,
            ..Default::default()
        },
        reference: &reference,
        platform,
    };
    f(&ctx)
}

/// Worker candidates from wire workers, validated as the API would.
fn worker_candidates(platform: &PlatformProfile, workers: &[proto::Worker]) -> Vec<Candidate> {
    validated(platform, |ctx| {
        workers
            .iter()
            .map(|w| Candidate {
                kind: Some(RecordKind::Worker),
                id: w.worker_id.clone(),
                revision: w.revision.unwrap_or(1),
                record: validate::worker(w, ctx).map(Record::Worker),
            })
            .collect()
    })
}

pub(crate) fn candidates(
    platform: &PlatformProfile,
    workers: &[&str],
    orders: &[(&str, &str)],
) -> Vec<Candidate> {
    let wire: Vec<proto::Worker> = workers.iter().map(|id| worker(id)).collect();
    let mut all = worker_candidates(platform, &wire);
    validated(platform, |ctx| {
        all.extend(orders.iter().map(|(id, w)| Candidate {
            kind: Some(RecordKind::Order),
            id: id.to_string(),
            revision: 1,
            record: validate::order(&order(id, w), ctx).map(Record::Order),
        }))
    });
    all
}

#[tokio::test]
async fn platforms_round_trip_and_divisions_are_replaced() {
    for (name, store, _dir) in backends().await {
        let p = store
            .upsert_platform(&registration(oip_gateway::certs::DEMO_PLATFORM_A))
            .await
            .expect(name);
        assert_eq!(p.delivery_tier, DeliveryTier::B);
        assert_eq!(p.pilot_start("320100"), NaiveDate::from_ymd_opt(2025, 7, 1));
        let mut reg = registration(oip_gateway::certs::DEMO_PLATFORM_A);
        reg.pilot_starts = vec![(
            "320500".into(),
            NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"),
        )];
        let q = store.upsert_platform(&reg).await.expect(name);
        assert_eq!(q.id, p.id, "{name}: same platform");
        assert_eq!(q.pilot_start("320100"), None, "{name}: divisions replaced");
        assert!(
            store
                .platform("91000000000000000X")
                .await
                .expect(name)
                .is_none()
        );
    }
}

#[tokio::test]
async fn grants_round_trip() {
    for (name, store, _dir) in backends().await {
        let g = Grant {
            identity: "oip://tax/t1".into(),
            role: Role::Tax,
            scope: "320100".into(),
            expires_at: Some(1),
        };
        store.put_grant(&g).await.expect(name);
        store
            .put_grant(&Grant {
                scope: "320500".into(),
                expires_at: None,
                ..g.clone()
            })
            .await
            .expect(name);
        let mut got = store.grants("oip://tax/t1").await.expect(name);
        got.sort_by(|a, b| a.scope.cmp(&b.scope));
        assert_eq!(got.len(), 2, "{name}");
        assert_eq!(got[0], g);
        assert!(!got[0].is_live(2) && got[1].is_live(2));
        assert!(
            store
                .grants("oip://tax/nobody")
                .await
                .expect(name)
                .is_empty()
        );
    }
}

#[tokio::test]
async fn an_ingest_is_all_or_nothing_and_visible_after_commit() {
    let pii = Pii::for_test();
    for (name, store, _dir) in backends().await {
        let p = store
            .upsert_platform(&registration(oip_gateway::certs::DEMO_PLATFORM_A))
            .await
            .expect(name);
        let book = RateBook::default();
        // Dropped without commit: nothing stays.
        {
            let mut tx = store.begin_ingest(p.id).await.expect(name);
            let mut known = pii
                .open_loaded(p.id, tx.load(&touched(&["W1"], &["O1"])).await.expect(name))
                .expect(name);
            let plan = crosscheck::decide(
                &rules(&p, &book),
                candidates(&p, &["W1"], &[("O1", "W1")]),
                &mut known,
            );
            tx.write(
                &plan,
                &pii.seal_writes(p.id, &plan),
                oip_gateway::forward::outbox::items(
                    &plan,
                    &p,
                    &Default::default(),
                    1,
                    &Default::default(),
                ),
                1,
                &mut Laps::start(),
            )
            .await
            .expect(name);
        }
        let mut tx = store.begin_ingest(p.id).await.expect(name);
        let known = pii
            .open_loaded(p.id, tx.load(&touched(&["W1"], &["O1"])).await.expect(name))
            .expect(name);
        assert!(
            known.workers.is_empty() && known.orders.is_empty(),
            "{name}: rolled back"
        );

        let mut known = Known::default();
        let plan = crosscheck::decide(
            &rules(&p, &book),
            candidates(&p, &["W1", "W2"], &[("O1", "W1"), ("O2", "W9")]),
            &mut known,
        );
        assert_eq!(plan.rejections.len(), 1);
        tx.write(
            &plan,
            &pii.seal_writes(p.id, &plan),
            oip_gateway::forward::outbox::items(
                &plan,
                &p,
                &Default::default(),
                1,
                &Default::default(),
            ),
            1,
            &mut Laps::start(),
        )
        .await
        .expect(name);
        tx.commit().await.expect(name);

        let mut tx = store.begin_ingest(p.id).await.expect(name);
        let known = pii
            .open_loaded(
                p.id,
                tx.load(&touched(&["W1", "W2", "W3"], &["O1", "O2"]))
                    .await
                    .expect(name),
            )
            .expect(name);
        assert_eq!(known.workers.len(), 2, "{name}");
        assert_eq!(known.orders.len(), 1, "{name}");
        assert_eq!(
            known.workers["W1"].industries,
            vec!["INSTANT_DELIVERY".to_string()]
        );
        assert_eq!(
            known.workers["W1"].birth_date,
            NaiveDate::from_ymd_opt(1949, 12, 31)
        );
        drop(tx);

        let page = store
            .list_rejections(
                p.id,
                &PageRequest {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect(name);
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].code, "WORKER_NOT_REGISTERED");
        let page = store
            .list_workers(
                p.id,
                &PageRequest {
                    limit: 1,
                    ..Default::default()
                },
            )
            .await
            .expect(name);
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.next.as_deref(), Some("W1"));
        let page = store
            .list_workers(
                p.id,
                &PageRequest {
                    limit: 1,
                    after: page.next,
                    id: None,
                },
            )
            .await
            .expect(name);
        assert_eq!((page.items[0].worker_id.as_str(), page.next), ("W2", None));
        // Another platform sees none of it.
        let other = store
            .upsert_platform(&registration(oip_gateway::certs::DEMO_PLATFORM_B))
            .await
            .expect(name);
        let page = store
            .list_orders(
                other.id,
                &PageRequest {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect(name);
        assert!(page.items.is_empty());
    }
}

/// The idempotency keys of due items, in order.
fn keys(due: &[oip_gateway::store::DueItem]) -> Vec<&str> {
    due.iter().map(|d| d.idempotency_key.as_str()).collect()
}

#[tokio::test]
async fn the_outbox_delivers_in_order_and_dead_letters() {
    use oip_gateway::store::{DeliveryOutcome, Destination, OutboxItem};
    for (name, store, _dir) in backends().await {
        let p = store
            .upsert_platform(&registration(oip_gateway::certs::DEMO_PLATFORM_A))
            .await
            .expect(name);
        let item = |record: &str, rev: u32| OutboxItem {
            destination: Destination::SocialSecurity,
            record_key: record.to_string(),
            idempotency_key: format!("{record}/{rev}"),
            payload: vec![rev as u8],
            supersedes: None,
            daily_enrolment: None,
            order_id: None,
        };
        let mut tx = store.begin_ingest(p.id).await.expect(name);
        let plan = batch::Plan::default();
        let items = [item("r1", 1), item("r2", 1), item("r1", 2), item("r3", 1)];
        tx.write(
            &plan,
            &Default::default(),
            items.to_vec(),
            10,
            &mut Laps::start(),
        )
        .await
        .expect(name);
        tx.commit().await.expect(name);

        // r1/2 waits behind r1/1: a correction never overtakes its original.
        let due = store
            .due_items(Destination::SocialSecurity, 10, 10, &[])
            .await
            .expect(name);
        assert_eq!(keys(&due), vec!["r1/1", "r2/1", "r3/1"], "{name}");
        // Excluded items (delivered, not yet settled) are left out; the items behind
        // them still wait, as the excluded ones are still pending.
        let rest = store
            .due_items(
                Destination::SocialSecurity,
                10,
                10,
                &[due[0].seq..=due[0].seq, due[2].seq..=due[2].seq],
            )
            .await
            .expect(name);
        assert_eq!(keys(&rest), vec!["r2/1"], "{name}");
        // The limit counts across the gaps between the ranges.
        let social = async |limit: u32, excluded: &[std::ops::RangeInclusive<i64>]| {
            let due = store
                .due_items(Destination::SocialSecurity, 10, limit, excluded)
                .await
                .expect(name);
            keys(&due)
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let middle = [due[1].seq..=due[1].seq];
        assert_eq!(social(2, &middle).await, ["r1/1", "r3/1"], "{name}");
        assert_eq!(social(1, &middle).await, ["r1/1"], "{name}");
        // A range stands for one call delivered and not yet settled, from its first
        // seq to its last: all of it is left out, r2/1 too, which lies inside.
        let first_two = [due[0].seq..=due[1].seq];
        assert_eq!(social(10, &first_two).await, ["r3/1"], "{name}");
        assert!(
            store
                .due_items(Destination::Tax, 10, 10, &[])
                .await
                .expect(name)
                .is_empty()
        );

        // r1/1 refused (retry later, 2 attempts max), the others delivered.
        let invalid = DeliveryOutcome::Invalid {
            reason: "bad".into(),
            retry_at: 20,
        };
        let outcomes = vec![
            (due[0].seq, invalid.clone()),
            (due[1].seq, DeliveryOutcome::Delivered),
            (due[2].seq, DeliveryOutcome::Delivered),
        ];
        store.settle(&outcomes, 2, 11).await.expect(name);
        assert!(
            store
                .due_items(Destination::SocialSecurity, 11, 10, &[])
                .await
                .expect(name)
                .is_empty(),
            "{name}: r1/1 not due yet, r1/2 behind it"
        );
        // Due again at 20, but not while a call that spans it is unsettled.
        assert!(
            store
                .due_items(
                    Destination::SocialSecurity,
                    20,
                    10,
                    &[due[0].seq - 1..=due[2].seq]
                )
                .await
                .expect(name)
                .is_empty(),
            "{name}"
        );
        let again = store
            .due_items(Destination::SocialSecurity, 20, 10, &[])
            .await
            .expect(name);
        assert_eq!(keys(&again), vec!["r1/1"]);
        assert_eq!(again[0].attempts, 1);
        store
            .settle(&[(again[0].seq, invalid)], 2, 21)
            .await
            .expect(name);
        // Dead after its second refusal: the correction behind it may go now.
        let depth = store
            .queue_depth(Destination::SocialSecurity)
            .await
            .expect(name);
        assert_eq!((depth.pending, depth.dead), (1, 1), "{name}");
        let last = store
            .due_items(Destination::SocialSecurity, 21, 10, &[])
            .await
            .expect(name);
        assert_eq!(keys(&last), vec!["r1/2"]);
    }
}

/// A derived item's newer version makes its pending (and dead) older versions obsolete;
/// other records and kinds are untouched. Dead letters are replayed or discarded.
#[tokio::test]
async fn newer_derived_versions_supersede_and_dead_letters_are_handled() {
    use oip_gateway::store::{
        DeadLetterAction, DeadLetterSelection, DeliveryOutcome, Destination, OutboxItem,
    };
    for (name, store, _dir) in backends().await {
        let p = store
            .upsert_platform(&registration(oip_gateway::certs::DEMO_PLATFORM_A))
            .await
            .expect(name);
        let item = |record: &str, version: &str, supersedes: Option<&str>| OutboxItem {
            destination: Destination::Tax,
            record_key: record.to_string(),
            idempotency_key: format!("{record}/{version}"),
            payload: vec![],
            supersedes: supersedes.map(str::to_string),
            daily_enrolment: None,
            order_id: None,
        };
        let queue = |items: Vec<OutboxItem>, at: i64| {
            let store = store.clone();
            async move {
                let mut tx = store.begin_ingest(p.id).await.expect("begin");
                tx.write(
                    &batch::Plan::default(),
                    &Default::default(),
                    items,
                    at,
                    &mut Laps::start(),
                )
                .await
                .expect("write");
                tx.commit().await.expect("commit");
            }
        };
        let due = |at: i64| {
            let store = store.clone();
            async move {
                store
                    .due_items(Destination::Tax, at, 100, &[])
                    .await
                    .expect("due")
                    .into_iter()
                    .map(|d| (d.seq, d.idempotency_key))
                    .collect::<Vec<_>>()
            }
        };
        let handle = |selection: DeadLetterSelection, action, at| {
            let store = store.clone();
            async move {
                store
                    .handle_dead_letters(&selection, action, "oip://admin/root", at)
                    .await
                    .expect("handle dead letters")
            }
        };
        let dead = || {
            let store = store.clone();
            async move { store.dead_letters(None, 0, 10).await.expect("dead letters") }
        };
        // A declaration revision, then two reconciliation updates of it; a statement
        // in two versions, and another statement.
        queue(
            vec![
                item("d", "1", None),
                item("d", "1/reconciliation/2", Some("d/1/reconciliation/")),
                item("s", "2", Some("s/")),
                item("t", "2", Some("t/")),
            ],
            10,
        )
        .await;
        queue(
            vec![
                item("d", "1/reconciliation/3", Some("d/1/reconciliation/")),
                item("s", "3", Some("s/")),
            ],
            11,
        )
        .await;
        let keys: Vec<_> = due(11).await.into_iter().map(|(_, k)| k).collect();
        // The revision itself stays; its older update and s/2 are gone; d's newest
        // update waits behind the revision.
        assert_eq!(keys, vec!["d/1", "t/2", "s/3"], "{name}");

        // t/2 dead after one refusal; replayed, then dead again and discarded.
        let seq_t = due(11).await[1].0;
        let refuse = |seq| {
            (
                seq,
                DeliveryOutcome::Invalid {
                    reason: "no".into(),
                    retry_at: 12,
                },
            )
        };
        store.settle(&[refuse(seq_t)], 1, 12).await.expect(name);
        let letters = dead().await;
        assert_eq!(letters.len(), 1, "{name}");
        assert_eq!(letters[0].idempotency_key, "t/2");
        assert_eq!(letters[0].last_error.as_deref(), Some("no"));
        let all = DeadLetterSelection::default();
        let n = handle(all.clone(), DeadLetterAction::Replay, 13).await;
        assert_eq!((n.changed, n.superseded), (1, 0), "{name}");
        let again = due(13).await;
        assert!(
            again.iter().any(|(s, k)| *s == seq_t && k == "t/2"),
            "{name}"
        );
        assert!(
            store
                .due_items(Destination::Tax, 13, 100, &[])
                .await
                .expect(name)
                .iter()
                .all(|d| d.attempts == 0),
            "{name}: replay starts attempts afresh"
        );
        store.settle(&[refuse(seq_t)], 1, 14).await.expect(name);
        let only_tax = DeadLetterSelection {
            destination: Some(Destination::SocialSecurity),
            seqs: vec![],
        };
        let n = handle(only_tax.clone(), DeadLetterAction::Discard, 15).await;
        assert_eq!(
            n.changed, 0,
            "{name}: another destination's dead letters are untouched"
        );
        let picked = DeadLetterSelection {
            destination: None,
            seqs: vec![seq_t],
        };
        let n = handle(picked.clone(), DeadLetterAction::Discard, 15).await;
        assert_eq!((n.changed, n.superseded), (1, 0), "{name}");
        assert!(dead().await.is_empty());
        assert!(due(15).await.iter().all(|(s, _)| *s != seq_t), "{name}");

        // A newer version supersedes a dead older one too (never replayed stale).
        queue(vec![item("u", "4", Some("u/"))], 16).await;
        let seq_u = due(16)
            .await
            .iter()
            .find(|(_, k)| k == "u/4")
            .expect("u/4")
            .0;
        store.settle(&[refuse(seq_u)], 1, 17).await.expect(name);
        queue(vec![item("u", "5", Some("u/"))], 18).await;
        assert!(dead().await.is_empty(), "{name}");
        assert!(due(18).await.iter().any(|(_, k)| k == "u/5"), "{name}");

        // Two versions queued in one write (the calls of one group commit): the
        // earlier is stored superseded, as if it had been queued first.
        queue(
            vec![
                item("g", "1", Some("g/")),
                item("h", "1", Some("h/")),
                item("g", "2", Some("g/")),
            ],
            18,
        )
        .await;
        let keys: Vec<_> = due(18).await.into_iter().map(|(_, k)| k).collect();
        assert!(!keys.contains(&"g/1".to_string()), "{name}: {keys:?}");
        assert!(keys.contains(&"g/2".to_string()), "{name}: {keys:?}");
        assert!(keys.contains(&"h/1".to_string()), "{name}: {keys:?}");

        // A refusal of an item superseded while in flight does not bring it back.
        let seq_u5 = due(18)
            .await
            .iter()
            .find(|(_, k)| k == "u/5")
            .expect("u/5")
            .0;
        queue(vec![item("u", "6", Some("u/"))], 19).await;
        store.settle(&[refuse(seq_u5)], 1, 20).await.expect(name);
        assert!(dead().await.is_empty(), "{name}");
        assert!(due(20).await.iter().all(|(s, _)| *s != seq_u5), "{name}");

        // A record revision dead while a later one was delivered is not replayed.
        queue(vec![item("o", "1", None), item("o", "2", None)], 21).await;
        let seq_o1 = due(21)
            .await
            .iter()
            .find(|(_, k)| k == "o/1")
            .expect("o/1")
            .0;
        store.settle(&[refuse(seq_o1)], 1, 22).await.expect(name);
        let seq_o2 = due(22)
            .await
            .iter()
            .find(|(_, k)| k == "o/2")
            .expect("o/2")
            .0;
        store
            .settle(&[(seq_o2, DeliveryOutcome::Delivered)], 1, 23)
            .await
            .expect(name);
        let n = handle(all.clone(), DeadLetterAction::Replay, 24).await;
        assert_eq!(
            (n.changed, n.superseded),
            (0, 1),
            "{name}: o/1 is older than the delivered o/2"
        );
        assert!(dead().await.is_empty(), "{name}");
        assert!(due(24).await.iter().all(|(s, _)| *s != seq_o1), "{name}");

        // Replayed while the later revision is pending (the dispatcher may have sent
        // it, its answer not yet recorded): q/1 is superseded, not sent again, since
        // it could reach the backend after its correction.
        queue(vec![item("q", "1", None), item("q", "2", None)], 25).await;
        let find = |items: Vec<(i64, String)>, key: &str| {
            items.iter().find(|(_, k)| k == key).map(|(s, _)| *s)
        };
        let seq_q1 = find(due(25).await, "q/1").expect("q/1");
        store.settle(&[refuse(seq_q1)], 1, 26).await.expect(name);
        let seq_q2 = find(due(26).await, "q/2").expect("q/2 is due behind a dead letter");
        let n = handle(all.clone(), DeadLetterAction::Replay, 27).await;
        assert_eq!(
            (n.changed, n.superseded),
            (0, 1),
            "{name}: q/1 is older than the pending q/2"
        );
        assert_eq!(find(due(27).await, "q/1"), None, "{name}");
        assert!(dead().await.is_empty(), "{name}");
        store
            .settle(&[(seq_q2, DeliveryOutcome::Delivered)], 1, 28)
            .await
            .expect(name);
        let states: Vec<_> = store
            .deliveries("q")
            .await
            .expect(name)
            .into_iter()
            .map(|d| d.state)
            .collect();
        assert_eq!(states, vec!["superseded", "delivered"], "{name}");
    }
}

/// A database at `url` (created) with only the migrations of `from` named before
/// `first_left_out` applied: the schema an older release left, to upgrade from.
async fn older_database(
    dir: &std::path::Path,
    url: &str,
    from: &str,
    first_left_out: &str,
) -> sqlx::SqlitePool {
    let older = dir.join("older-migrations");
    std::fs::create_dir(&older).expect("dir");
    for entry in std::fs::read_dir(from).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name < first_left_out {
            std::fs::copy(&path, older.join(name)).expect("copy");
        }
    }
    let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
        .await
        .expect("connect");
    sqlx::migrate::Migrator::new(older.as_path())
        .await
        .expect("older migrations")
        .run(&pool)
        .await
        .expect("run older migrations");
    pool
}

/// Platform A as row 1 of an older database's `platforms`.
async fn insert_platform_a(pool: &sqlx::SqlitePool) {
    sqlx::query(
        "INSERT INTO platforms (id, uscc, name, industries, delivery_tier, updated_at)
         VALUES (1, ?1, 'P', 'INSTANT_DELIVERY', 'B', 0)",
    )
    .bind(oip_gateway::certs::DEMO_PLATFORM_A)
    .execute(pool)
    .await
    .expect("platform");
}

/// A backend simulator's file made before its key index led with the key's version
/// (migrations up to 20261202000001) keeps its items, and a key it applied is still a
/// repeat after the upgrade, whatever the key's last segment.
#[tokio::test]
async fn keys_the_simulator_applied_before_the_version_index_stay_applied() {
    use oip_gateway::store::sim::{SimItem, SimStore};
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("old.db").display());
    let keys = [
        "P/enrolment/W1/2025-07-02/320100/7",
        "P/order/O1/12abc",
        "P/order/O1/",
        "no-slash-12",
    ];
    {
        let pool =
            older_database(dir.path(), &url, "migrations/backend-sim", "20261204000001").await;
        for (seq, key) in (1_i64..).zip(keys) {
            sqlx::query(
                "INSERT INTO applied (seq, idempotency_key, backend, kind, platform, correction, payload, applied_at)
                 VALUES (?1, ?2, 'social-security', 'order', 'P', 0, ?2, 0)",
            )
            .bind(seq)
            .bind(key)
            .execute(&pool)
            .await
            .expect("item");
        }
        pool.close().await;
    }
    let store = SimStore::open(&url).await.expect("upgrade");
    let items: Vec<SimItem> = keys
        .iter()
        .chain(&["P/order/O2/1"])
        .map(|k| SimItem {
            idempotency_key: k.to_string(),
            backend: "social-security",
            kind: "order",
            platform: "P".to_string(),
            correction: false,
            payload: k.as_bytes().to_vec(),
        })
        .collect();
    let fresh = store.apply(&items, 1).await.expect("apply");
    assert_eq!(fresh, [false, false, false, false, true]);
    let stored = store
        .payloads("social-security", "order")
        .await
        .expect("payloads");
    assert_eq!(stored.len(), keys.len() + 1);
}

/// A database made before daily enrolments' items were chained (migrations up to
/// 20261201000002) keeps every delivery of an enrolment listable after the upgrade:
/// the closed item still in the record index, and the flagged items, now chained.
#[tokio::test]
async fn an_upgrade_chains_the_daily_enrolment_items_already_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("old.db");
    let url = format!("sqlite:{}", db.display());
    {
        let pool = older_database(dir.path(), &url, "migrations/sqlite", "20261202000001").await;
        let uscc = oip_gateway::certs::DEMO_PLATFORM_A;
        let day = format!("{uscc}/enrolment/W1/2025-07-02/320100");
        insert_platform_a(&pool).await;
        // Seq 1 was delivered before enrolment items were flagged; 3 and 4 were
        // flagged by the earlier migration (3 superseded by 4, still pending).
        for (seq, key, state, flagged) in [
            (1, day.as_str(), "delivered", 0),
            (2, &format!("{uscc}/order/O1"), "delivered", 0),
            (3, day.as_str(), "superseded", 1),
            (4, day.as_str(), "pending", 1),
        ] {
            sqlx::query(
                "INSERT INTO outbox (seq, destination, record_key, idempotency_key, payload, state,
                   next_attempt_at, created_at, enrolment)
                 VALUES (?1, 'social-security', ?2, ?2 || '/' || ?1, x'00', ?3, 0, ?1, ?4)",
            )
            .bind(seq)
            .bind(key)
            .bind(state)
            .bind(flagged)
            .execute(&pool)
            .await
            .expect("item");
        }
        sqlx::query(
            "INSERT INTO daily_enrolments (platform_id, worker_id, day, division_code, order_count, latest_item)
             VALUES (1, 'W1', '2025-07-02', '320100', 2, 4)",
        )
        .execute(&pool)
        .await
        .expect("enrolment");
        pool.close().await;
    }
    let store = SqliteStore::open(&url).await.expect("upgrade");
    let uscc = oip_gateway::certs::DEMO_PLATFORM_A;
    let listed = |key: String| {
        let store = &store;
        async move {
            store
                .deliveries(&key)
                .await
                .expect("deliveries")
                .into_iter()
                .map(|d| (d.created_at, d.state))
                .collect::<Vec<_>>()
        }
    };
    let states = |v: &[(i64, &str)]| {
        v.iter()
            .map(|(s, st)| (*s, st.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(format!("{uscc}/enrolment/W1/2025-07-02/320100")).await,
        states(&[(1, "delivered"), (3, "superseded"), (4, "pending")])
    );
    assert_eq!(
        listed(format!("{uscc}/order/O1")).await,
        states(&[(2, "delivered")])
    );
}

/// A database made before daily enrolments were keyed by day first (migrations up to
/// 20261205000001) keeps every row across the upgrade: the counts (a day at 0 orders
/// is kept as its items' anchor, and not counted) and the newest item each row names,
/// which a delivery listing walks back from.
#[tokio::test]
async fn an_upgrade_keys_daily_enrolments_by_day_and_keeps_every_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("old.db").display());
    let uscc = oip_gateway::certs::DEMO_PLATFORM_A;
    {
        let pool = older_database(dir.path(), &url, "migrations/sqlite", "20261205000001").await;
        insert_platform_a(&pool).await;
        for (worker, day, count, item) in [
            ("W1", "2025-07-02", 2, Some(4)),
            ("W1", "2025-07-01", 0, Some(3)),
            ("W2", "2025-07-01", 1, None),
        ] {
            sqlx::query(
                "INSERT INTO daily_enrolments (platform_id, worker_id, day, division_code, order_count, latest_item)
                 VALUES (1, ?1, ?2, '320100', ?3, ?4)",
            )
            .bind(worker)
            .bind(day)
            .bind(count)
            .bind(item)
            .execute(&pool)
            .await
            .expect("enrolment");
        }
        for seq in [3, 4] {
            sqlx::query(
                "INSERT INTO outbox (seq, destination, record_key, idempotency_key, payload, state,
                   next_attempt_at, created_at, enrolment, chained)
                 VALUES (?1, 'social-security', ?2, ?2 || '/' || ?1, x'00', 'delivered', 0, ?1, 1, 1)",
            )
            .bind(seq)
            .bind(format!(
                "{uscc}/enrolment/W1/2025-07-0{}/320100",
                if seq == 3 { 1 } else { 2 }
            ))
            .execute(&pool)
            .await
            .expect("item");
        }
        pool.close().await;
    }
    let store = SqliteStore::open(&url).await.expect("upgrade");
    let counted: Vec<(String, String, i64)> = store
        .all_enrolments(1)
        .await
        .expect("enrolments")
        .into_iter()
        .map(|(k, n)| (k.worker_id, k.day.to_string(), n))
        .collect();
    assert_eq!(
        counted,
        vec![
            ("W1".to_string(), "2025-07-02".to_string(), 2),
            ("W2".to_string(), "2025-07-01".to_string(), 1),
        ]
    );
    for (day, seq) in [("2025-07-01", 3), ("2025-07-02", 4)] {
        let listed: Vec<i64> = store
            .deliveries(&format!("{uscc}/enrolment/W1/{day}/320100"))
            .await
            .expect("deliveries")
            .into_iter()
            .map(|d| d.created_at)
            .collect();
        assert_eq!(listed, vec![seq], "{day}");
    }
}

/// An order's items are chained from its row (migration 20261203000001); the ones
/// stored before that stay in the record index. Across the upgrade an order's
/// deliveries are all listed in order, the first chained one still waits for an open
/// unchained one, a chained item waits for a pending one anywhere behind it along the
/// chain (past dead ones), and a replayed dead letter is superseded by a later
/// delivered or pending revision whether it is found in the index or along the chain.
#[tokio::test]
async fn an_orders_items_stay_in_order_across_the_chain_upgrade() {
    use oip_gateway::store::{DeadLetterAction, DeadLetterSelection, DeliveryOutcome, Destination};
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("chain.db").display());
    let store = SqliteStore::open(&url).await.expect("open");
    let p = store
        .upsert_platform(&registration(oip_gateway::certs::DEMO_PLATFORM_A))
        .await
        .expect("platform");
    let book = RateBook::default();
    let reference = Reference::builtin();
    // Each call ingests the given revisions of orders (id, revision) of worker W1;
    // a revision's content differs from the one before (its completion time).
    let ingest = |orders: Vec<(&'static str, u32)>, first: bool| {
        let (store, p, book, reference) = (&store, &p, &book, &reference);
        async move {
            let ctx = validate::Context {
                now: oip_gateway::domain::time::now_millis(),
                bounds: oip_gateway::validate::Bounds {
                    max_future_ms: 0,
                    ..Default::default()
                },
                reference,
                platform: p,
            };
            let mut cands = if first {
                candidates(p, &["W1"], &[])
            } else {
                vec![]
            };
            cands.extend(orders.iter().map(|(id, rev)| {
                let mut o = order(id, "W1");
                o.revision = Some(*rev);
                o.completed_at = format!("2025-07-02T11:{:02}:00+08:00", 30 + rev);
                Candidate {
                    kind: Some(RecordKind::Order),
                    id: id.to_string(),
                    revision: *rev,
                    record: validate::order(&o, &ctx).map(Record::Order),
                }
            }));
            let ids: Vec<&str> = orders.iter().map(|(id, _)| *id).collect();
            let mut tx = store.begin_ingest(p.id).await.expect("begin");
            let mut known = Pii::for_test()
                .open_loaded(p.id, tx.load(&touched(&["W1"], &ids)).await.expect("load"))
                .expect("open");
            let plan = crosscheck::decide(&rules(p, book), cands, &mut known);
            assert!(plan.rejections.is_empty(), "{:?}", plan.rejections);
            let items = oip_gateway::forward::outbox::items(
                &plan,
                p,
                &Default::default(),
                1,
                &Default::default(),
            );
            tx.write(
                &plan,
                &Pii::for_test().seal_writes(p.id, &plan),
                items.to_vec(),
                10,
                &mut Laps::start(),
            )
            .await
            .expect("write");
            tx.commit().await.expect("commit");
        }
    };
    let key = |id: &str| format!("{}/order/{id}", oip_gateway::certs::DEMO_PLATFORM_A);
    let listed = |id: &'static str| {
        let store = &store;
        async move {
            store
                .deliveries(&key(id))
                .await
                .expect("deliveries")
                .into_iter()
                .map(|d| {
                    (
                        d.idempotency_key
                            .rsplit('/')
                            .next()
                            .unwrap_or("")
                            .to_string(),
                        d.state,
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let expect = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(r, s)| (r.to_string(), s.to_string()))
            .collect::<Vec<_>>()
    };
    let due = || {
        let store = &store;
        async move {
            store
                .due_items(Destination::SocialSecurity, 100, 100, &[])
                .await
                .expect("due")
                .into_iter()
                .filter_map(|d| {
                    let (_, tail) = d.idempotency_key.split_once("/order/")?;
                    Some((d.seq, tail.to_string()))
                })
                .collect::<Vec<_>>()
        }
    };
    // Replays the dead letters `seqs` (empty: all) and returns (replayed, superseded).
    let replay = |seqs: Vec<i64>, at: i64| {
        let store = &store;
        async move {
            let n = store
                .handle_dead_letters(
                    &DeadLetterSelection {
                        destination: None,
                        seqs,
                    },
                    DeadLetterAction::Replay,
                    "oip://admin/test",
                    at,
                )
                .await
                .expect("replay");
            (n.changed, n.superseded)
        }
    };
    let refuse = |seq: i64| {
        (
            seq,
            DeliveryOutcome::Invalid {
                reason: "bad".into(),
                retry_at: 100,
            },
        )
    };

    // Revision 1 of O1 and O2, then made into items stored before the upgrade: in the
    // record index, unchained, and not named by their order's row.
    ingest(vec![("O1", 1), ("O2", 1)], true).await;
    {
        let pool = sqlx::SqlitePool::connect(&url).await.expect("connect");
        sqlx::query(
            "UPDATE outbox SET chained = 0, previous = NULL WHERE record_key LIKE '%/order/%'",
        )
        .execute(&pool)
        .await
        .expect("unchain");
        sqlx::query("UPDATE orders SET latest_item = NULL")
            .execute(&pool)
            .await
            .expect("unname");
        pool.close().await;
    }
    // Revision 2 of O1 (chained) waits while revision 1 (unchained) is pending.
    ingest(vec![("O1", 2)], false).await;
    let d = due().await;
    assert_eq!(
        d.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>(),
        vec!["O1/1", "O2/1"],
        "O1/2 waits behind the unchained O1/1"
    );
    assert_eq!(
        listed("O1").await,
        expect(&[("1", "pending"), ("2", "pending")])
    );
    // O1/1 dies; O1/2 goes and is delivered; O2/1 dies.
    store
        .settle(&[refuse(d[0].0), refuse(d[1].0)], 1, 20)
        .await
        .expect("settle");
    let d = due().await;
    assert_eq!(
        d.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>(),
        vec!["O1/2"]
    );
    store
        .settle(&[(d[0].0, DeliveryOutcome::Delivered)], 1, 21)
        .await
        .expect("settle");
    // Revisions 3 and 4 of O1 in one transaction (O1/4 waits behind O1/3); then O2/2,
    // which does not wait for the dead O2/1, and dies as well.
    ingest(vec![("O1", 3), ("O1", 4)], false).await;
    assert_eq!(
        listed("O1").await,
        expect(&[
            ("1", "dead"),
            ("2", "delivered"),
            ("3", "pending"),
            ("4", "pending")
        ])
    );
    ingest(vec![("O2", 2)], false).await;
    let d = due().await;
    assert_eq!(
        d.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>(),
        vec!["O1/3", "O2/2"],
        "O1/4 waits behind O1/3 (same transaction); O2/2 waits for no dead letter"
    );
    store
        .settle(&[refuse(d[1].0)], 1, 22)
        .await
        .expect("settle");
    assert_eq!(listed("O2").await, expect(&[("1", "dead"), ("2", "dead")]));

    // Replaying every dead letter: O1/1 is superseded (O1/2 delivered, along the
    // chain from an unchained item); O2/1 and O2/2 are replayed, nothing after them
    // being delivered or pending, and O2/2 waits behind O2/1 again.
    assert_eq!(replay(vec![], 30).await, (2, 1));
    assert_eq!(
        listed("O1").await[0],
        ("1".to_string(), "superseded".to_string())
    );
    assert_eq!(
        listed("O2").await,
        expect(&[("1", "pending"), ("2", "pending")])
    );
    // O2/3 arrives; O2/1 is delivered, O2/2 dies again: behind the pending O2/3 (the
    // order's newest item), its replay is superseded.
    ingest(vec![("O2", 3)], false).await;
    let d = due().await;
    let o2_1 = d
        .iter()
        .find(|(_, r)| r == "O2/1")
        .map(|(s, _)| *s)
        .expect("O2/1 due");
    store
        .settle(&[(o2_1, DeliveryOutcome::Delivered)], 1, 31)
        .await
        .expect("settle");
    let d = due().await;
    let o2_2 = d
        .iter()
        .find(|(_, r)| r == "O2/2")
        .map(|(s, _)| *s)
        .expect("O2/2 due");
    store.settle(&[refuse(o2_2)], 1, 32).await.expect("settle");
    assert_eq!(replay(vec![o2_2], 33).await, (0, 1));
    assert_eq!(
        listed("O2").await,
        expect(&[("1", "delivered"), ("2", "superseded"), ("3", "pending")])
    );

    // All chained: O3/1 dies, O3/2 is delivered, O3/3 dies. Replaying O3/1 walks back
    // from O3/3 (dead) to O3/2 (delivered): superseded. O3/3 is replayed.
    let mut seqs = Vec::new();
    for (rev, outcome) in [(1, false), (2, true), (3, false)] {
        ingest(vec![("O3", rev)], false).await;
        let d = due().await;
        let seq = d
            .iter()
            .find(|(_, r)| *r == format!("O3/{rev}"))
            .map(|(s, _)| *s)
            .expect("O3 due");
        let settled = if outcome {
            (seq, DeliveryOutcome::Delivered)
        } else {
            refuse(seq)
        };
        store.settle(&[settled], 1, 40).await.expect("settle");
        seqs.push(seq);
    }
    for (seq, counts) in [(seqs[0], (0, 1)), (seqs[2], (1, 0))] {
        assert_eq!(replay(vec![seq], 41).await, counts, "seq {seq}");
    }
    assert_eq!(
        listed("O3").await,
        expect(&[("1", "superseded"), ("2", "delivered"), ("3", "pending")])
    );

    // All chained, none delivered: O4/1 and O4/2 die and O4/1 alone is replayed
    // (nothing after it is delivered or pending). O4/3, chained to the dead O4/2,
    // still waits behind the pending O4/1: the wait walks back past dead items.
    let mut seqs = Vec::new();
    for rev in [1, 2] {
        ingest(vec![("O4", rev)], false).await;
        let d = due().await;
        let seq = d
            .iter()
            .find(|(_, r)| *r == format!("O4/{rev}"))
            .map(|(s, _)| *s)
            .expect("O4 due");
        store.settle(&[refuse(seq)], 1, 50).await.expect("settle");
        seqs.push(seq);
    }
    assert_eq!(replay(vec![seqs[0]], 51).await, (1, 0));
    ingest(vec![("O4", 3)], false).await;
    let o4 = || async {
        due()
            .await
            .into_iter()
            .filter(|(_, r)| r.starts_with("O4/"))
            .collect::<Vec<_>>()
    };
    let d = o4().await;
    assert_eq!(
        d.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>(),
        vec!["O4/1"],
        "O4/3 waits behind the replayed O4/1, past the dead O4/2"
    );
    store
        .settle(&[(d[0].0, DeliveryOutcome::Delivered)], 1, 52)
        .await
        .expect("settle");
    assert_eq!(
        o4().await
            .iter()
            .map(|(_, r)| r.as_str())
            .collect::<Vec<_>>(),
        vec!["O4/3"]
    );
    assert_eq!(
        listed("O4").await,
        expect(&[("1", "delivered"), ("2", "dead"), ("3", "pending")])
    );
}

/// The embedded SQLite is built with `.cargo/config.toml`'s `LIBSQLITE3_FLAGS` (issue
/// 13's profile): without `SQLITE_ENABLE_MEMORY_MANAGEMENT`, whose page cache is one
/// group under one process-wide mutex for every connection (the writer, the readers and
/// the simulator's waited on each other's page fetches), and with the memory statistics
/// off, whose counters took another process-wide mutex around every allocation. A
/// build that lost the flags (cargo run from outside the checkout, where the file is not
/// read) fails here.
#[tokio::test]
async fn the_embedded_sqlite_shares_no_page_cache_or_allocation_lock_between_connections() {
    use sqlx::Connection as _;
    let mut c = sqlx::SqliteConnection::connect("sqlite::memory:")
        .await
        .expect("connect");
    let options: Vec<(String,)> = sqlx::query_as("PRAGMA compile_options")
        .fetch_all(&mut c)
        .await
        .expect("compile options");
    let options: Vec<String> = options.into_iter().map(|(o,)| o).collect();
    assert!(
        options.iter().any(|o| o == "THREADSAFE=1"),
        "not the bundled build: {options:?}"
    );
    assert!(
        !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
        "{options:?}"
    );
    assert!(
        options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
        "{options:?}"
    );
}

/// Re-sealing at one replica's start while another replica writes: a worker written
/// after its page was read keeps what was written (its newer revision), on every
/// backend.
#[tokio::test]
async fn re_sealing_leaves_a_worker_written_since_its_page_was_read() {
    let pii = Pii::for_test();
    for (name, store, _keep) in backends().await {
        let p = store
            .upsert_platform(&registration(oip_gateway::certs::DEMO_PLATFORM_A))
            .await
            .expect(name);
        let book = RateBook::default();
        let write = |workers: Vec<oip_gateway::proto::Worker>| {
            let (store, pii, p, book) = (store.clone(), pii.clone(), p.clone(), book.clone());
            async move {
                let mut tx = store.begin_ingest(p.id).await.expect("begin");
                let mut known = pii
                    .open_loaded(p.id, tx.load(&touched(&["W1"], &[])).await.expect("load"))
                    .expect("open");
                let plan = crosscheck::decide(
                    &rules(&p, &book),
                    worker_candidates(&p, &workers),
                    &mut known,
                );
                assert!(plan.rejections.is_empty(), "{:?}", plan.rejections);
                tx.write(
                    &plan,
                    &pii.seal_writes(p.id, &plan),
                    vec![],
                    1,
                    &mut Laps::start(),
                )
                .await
                .expect("write");
                tx.commit().await.expect("commit");
            }
        };
        write(vec![worker("W1")]).await;
        let stored = || async {
            store
                .sealed_workers(&(i64::MIN, String::new()), 10)
                .await
                .expect("sealed workers")[0]
                .clone()
        };
        let stale = stored().await;
        // Revision 2 arrives (on another replica) after the page was read.
        let mut second = worker("W1");
        second.revision = Some(2);
        second.name = "李四".into();
        write(vec![second]).await;
        let written = stored().await;
        // The re-sealer writes back what it read, re-sealed: nothing changes.
        store
            .replace_sealed_workers(&[(stale.id_number.clone(), stale.clone())])
            .await
            .expect(name);
        let after = stored().await;
        assert_eq!(after, written, "{name}: revision 2 is kept whole");
        assert_eq!(pii.open_name(&after.name).expect("open"), "李四", "{name}");
        // A row unchanged since it was read is replaced.
        let mut resealed = written.clone();
        resealed.mobile = stale.mobile.clone();
        store
            .replace_sealed_workers(&[(written.id_number.clone(), resealed.clone())])
            .await
            .expect(name);
        let replaced = stored().await;
        assert_eq!(replaced, resealed, "{name}");
    }
}
