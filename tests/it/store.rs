//! The store conformance suite: written against the `Store` trait, run against every
//! backend (SQLite today; PostgreSQL joins the list when it lands).

use std::sync::Arc;

use chrono::NaiveDate;
use oip_gateway::access::{Grant, Role};
use oip_gateway::crosscheck::{self, Candidate, Known, Rules, Touched};
use oip_gateway::domain::fees::RateBook;
use oip_gateway::domain::platform::DeliveryTier;
use oip_gateway::domain::{PlatformProfile, Record, RecordKind};
use oip_gateway::reference::Reference;
use oip_gateway::store::sqlite::SqliteStore;
use oip_gateway::store::{PageRequest, PlatformRegistration, Store};
use oip_gateway::validate;

use crate::common::{order, worker};

fn touched(workers: &[&str], orders: &[&str]) -> Touched {
    Touched {
        worker_ids: workers.iter().map(|s| s.to_string()).collect(),
        order_ids: orders.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn rules<'a>(p: &'a PlatformProfile, book: &'a RateBook) -> Rules<'a> {
    Rules {
        platform: p,
        rates: book,
        now: oip_gateway::domain::time::now_millis(),
        declaration_deadline_day: 15,
        accident_margin_ms: 0,
    }
}

async fn backends() -> Vec<(&'static str, Arc<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("conf.db").display());
    let sqlite = SqliteStore::open(&url).await.expect("open sqlite");
    vec![("sqlite", Arc::new(sqlite), dir)]
}

fn registration(uscc: &str) -> PlatformRegistration {
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
fn candidates(
    platform: &PlatformProfile,
    workers: &[&str],
    orders: &[(&str, &str)],
) -> Vec<Candidate> {
    let reference = Reference::builtin();
    let ctx = validate::Context {
        now: oip_gateway::domain::time::now_millis(),
        max_future_ms: 0,
        reference: &reference,
        platform,
    };
    let ws = workers.iter().map(|id| Candidate {
        kind: RecordKind::Worker,
        id: id.to_string(),
        revision: 1,
        record: validate::worker(&worker(id), &ctx).map(Record::Worker),
    });
    let os = orders.iter().map(|(id, w)| Candidate {
        kind: RecordKind::Order,
        id: id.to_string(),
        revision: 1,
        record: validate::order(&order(id, w), &ctx).map(Record::Order),
    });
    ws.chain(os).collect()
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
    for (name, store, _dir) in backends().await {
        let p = store
            .upsert_platform(&registration(oip_gateway::certs::DEMO_PLATFORM_A))
            .await
            .expect(name);
        let book = RateBook::default();
        // Dropped without commit: nothing stays.
        {
            let mut tx = store.begin_ingest(p.id).await.expect(name);
            let mut known = tx.load(&touched(&["W1"], &["O1"])).await.expect(name);
            let plan = crosscheck::decide(
                &rules(&p, &book),
                candidates(&p, &["W1"], &[("O1", "W1")]),
                &mut known,
            );
            tx.write(&plan, 1).await.expect(name);
        }
        let mut tx = store.begin_ingest(p.id).await.expect(name);
        let known = tx.load(&touched(&["W1"], &["O1"])).await.expect(name);
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
        tx.write(&plan, 1).await.expect(name);
        tx.commit().await.expect(name);

        let mut tx = store.begin_ingest(p.id).await.expect(name);
        let known = tx
            .load(&touched(&["W1", "W2", "W3"], &["O1", "O2"]))
            .await
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
