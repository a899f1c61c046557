//! Several replicas on one PostgreSQL database, at the store: each "replica" is a
//! store of its own (its own pool and replica name) on one fresh database, as two
//! gateway processes would have. What one SQLite process gets from its single writer,
//! these get from the database: a platform's batches wait for each other, a pull
//! never passes an item that commits later, an outbox item has one sender while its
//! lease runs, and the audit log stays one chain.

use std::sync::Arc;
use std::time::Duration;

use oip_gateway::crosscheck;
use oip_gateway::domain::PlatformProfile;
use oip_gateway::domain::fees::RateBook;
use oip_gateway::domain::time::now_millis;
use oip_gateway::pii::Pii;
use oip_gateway::store::{DeliveryOutcome, Destination, IngestTx, Laps, Store, StoreOptions};

use crate::common::FreshPostgres;
use crate::store::{candidates, registration, rules, touched};

/// `n` replicas' stores on one fresh database, with outbox leases of `lease_ms`.
async fn replicas(n: usize, lease_ms: u64) -> (Vec<Arc<dyn Store>>, FreshPostgres) {
    let pg = FreshPostgres::new().await;
    let options = StoreOptions {
        lease_ms,
        ..StoreOptions::default()
    };
    let mut stores = Vec::new();
    for _ in 0..n {
        stores.push(
            oip_gateway::store::connect_with(&pg.url, &options)
                .await
                .expect("open postgres"),
        );
    }
    (stores, pg)
}

/// Opens a batch of `p` registering `workers` and reporting an order for each, and
/// writes it; the transaction is returned uncommitted.
async fn written(
    store: &dyn Store,
    pii: &Pii,
    p: &PlatformProfile,
    workers: &[&str],
) -> Box<dyn IngestTx> {
    let orders: Vec<(String, &str)> = workers.iter().map(|w| (format!("O-{w}"), *w)).collect();
    let order_refs: Vec<(&str, &str)> = orders.iter().map(|(o, w)| (o.as_str(), *w)).collect();
    let order_ids: Vec<&str> = orders.iter().map(|(o, _)| o.as_str()).collect();
    let mut tx = store.begin_ingest(p.id).await.expect("begin");
    let mut known = pii
        .open_loaded(
            p.id,
            tx.load(&touched(workers, &order_ids)).await.expect("load"),
        )
        .expect("open");
    let book = RateBook::default();
    let plan = crosscheck::decide(
        &rules(p, &book),
        candidates(p, workers, &order_refs),
        &mut known,
    );
    assert!(plan.rejections.is_empty(), "{:?}", plan.rejections);
    let items =
        oip_gateway::forward::outbox::items(&plan, p, &Default::default(), 1, &Default::default());
    let mut sealed_items = items;
    pii.seal_outbox(&mut sealed_items);
    tx.write(
        &plan,
        &pii.seal_writes(p.id, &plan),
        sealed_items,
        now_millis(),
        &mut Laps::start(),
    )
    .await
    .expect("write");
    tx
}

/// Every record key of a destination's journal after `after`, read in pages of
/// `scan` positions up to the end as it stands, and the end.
async fn pull(store: &dyn Store, destination: Destination, after: i64) -> (Vec<String>, i64) {
    let end = store.journal_end().await.expect("end");
    let mut cursor = after;
    let mut keys = Vec::new();
    while cursor < end {
        let page = store.journal(destination, cursor, 7).await.expect("page");
        keys.extend(page.entries.into_iter().map(|e| e.record_key));
        assert!(page.scanned_to > cursor, "the cursor moves");
        cursor = page.scanned_to;
    }
    (keys, end)
}

#[tokio::test]
async fn a_pull_never_passes_an_item_that_commits_after_a_later_one() {
    let (stores, _pg) = replicas(2, 60_000).await;
    let pii = Pii::for_test();
    let a = stores[0]
        .upsert_platform(&registration(oip_gateway::certs::DEMO_PLATFORM_A))
        .await
        .expect("a");
    let b = stores[1]
        .upsert_platform(&registration(oip_gateway::certs::DEMO_PLATFORM_B))
        .await
        .expect("b");
    // A queues its items first (lower seqs) and holds its transaction open; B queues
    // after it and commits first.
    let tx_a = written(&*stores[0], &pii, &a, &["WA1", "WA2"]).await;
    let tx_b = written(&*stores[1], &pii, &b, &["WB1"]).await;
    tx_b.commit().await.expect("commit b");
    let (first, cursor) = pull(&*stores[0], Destination::SocialSecurity, 0).await;
    assert!(!first.is_empty(), "B's items are pulled");
    assert!(
        first
            .iter()
            .all(|k| k.starts_with(oip_gateway::certs::DEMO_PLATFORM_B)),
        "only B's items are visible: {first:?}"
    );
    tx_a.commit().await.expect("commit a");
    // Resumed from the cursor of the first pull, on the other replica: A's items,
    // none of B's again.
    let (second, _) = pull(&*stores[1], Destination::SocialSecurity, cursor).await;
    assert!(
        !second.is_empty()
            && second
                .iter()
                .all(|k| k.starts_with(oip_gateway::certs::DEMO_PLATFORM_A)),
        "A's items, after the cursor: {second:?}"
    );
    let (all, _) = pull(&*stores[0], Destination::SocialSecurity, 0).await;
    let mut resumed = first.clone();
    resumed.extend(second);
    assert_eq!(resumed, all, "no gap and no repeat");
}

#[tokio::test]
async fn one_platforms_batches_wait_for_each_other_across_replicas_and_others_do_not() {
    let (stores, _pg) = replicas(2, 60_000).await;
    let pii = Pii::for_test();
    let a = stores[0]
        .upsert_platform(&registration(oip_gateway::certs::DEMO_PLATFORM_A))
        .await
        .expect("a");
    let b = stores[0]
        .upsert_platform(&registration(oip_gateway::certs::DEMO_PLATFORM_B))
        .await
        .expect("b");
    let first = written(&*stores[0], &pii, &a, &["W1"]).await;
    // The same platform on the other replica waits for the first batch's commit.
    let second = {
        let store = stores[1].clone();
        let id = a.id;
        tokio::spawn(async move { store.begin_ingest(id).await.map(|_| ()) })
    };
    // Another platform does not.
    tokio::time::timeout(Duration::from_secs(5), stores[1].begin_ingest(b.id))
        .await
        .expect("another platform proceeds")
        .expect("begin b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the second batch of A waits");
    first.commit().await.expect("commit");
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("it proceeds after the commit")
        .expect("task")
        .expect("begin");
    // And then sees the first batch: W1 is stored, its order a duplicate.
    let mut tx = stores[1].begin_ingest(a.id).await.expect("begin");
    let known = pii
        .open_loaded(
            a.id,
            tx.load(&touched(&["W1"], &["O-W1"])).await.expect("load"),
        )
        .expect("open");
    assert!(known.workers.contains_key("W1") && known.orders.contains_key("O-W1"));
}

#[tokio::test]
async fn a_claimed_item_has_one_sender_until_its_lease_runs_out() {
    let (stores, _pg) = replicas(2, 2_000).await;
    let pii = Pii::for_test();
    let a = stores[0]
        .upsert_platform(&registration(oip_gateway::certs::DEMO_PLATFORM_A))
        .await
        .expect("a");
    written(&*stores[0], &pii, &a, &["W1", "W2", "W3"])
        .await
        .commit()
        .await
        .expect("commit");
    let now = now_millis();
    let ss = Destination::SocialSecurity;
    let claimed = stores[0]
        .due_items(ss, now, 1000, &[])
        .await
        .expect("claim");
    assert!(!claimed.is_empty());
    let other = stores[1].due_items(ss, now, 1000, &[]).await.expect("due");
    assert!(
        other.is_empty(),
        "claimed by the first replica: {}",
        other.len()
    );
    // The first replica's lease runs out (it died): the other replica delivers.
    let later = stores[1]
        .due_items(ss, now + 2_001, 1000, &[])
        .await
        .expect("due after the lease");
    let seqs = |d: &[oip_gateway::store::DueItem]| d.iter().map(|i| i.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&later), seqs(&claimed));
    // Now the second replica's: the first no longer gets them, even reading again.
    assert!(
        stores[0]
            .due_items(ss, now + 2_002, 1000, &[])
            .await
            .expect("due")
            .is_empty()
    );
    let outcomes: Vec<_> = later
        .iter()
        .map(|i| (i.seq, DeliveryOutcome::Delivered))
        .collect();
    stores[1].settle(&outcomes, 5, now).await.expect("settle");
    for store in &stores {
        assert!(
            store
                .due_items(ss, now + 10_000, 1000, &[])
                .await
                .expect("due")
                .is_empty(),
            "delivered: due nowhere"
        );
    }
}

#[tokio::test]
async fn two_replicas_appending_together_keep_one_audit_chain() {
    let (stores, _pg) = replicas(2, 60_000).await;
    let mut tasks = Vec::new();
    for (r, store) in stores.iter().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..40 {
                let event = oip_gateway::audit::Event {
                    identity: format!("oip://admin/replica-{r}"),
                    role: "admin".into(),
                    action: "test".into(),
                    scope: format!("{n}"),
                    records: 1,
                    outcome: "OK".into(),
                    trace_id: String::new(),
                };
                let mut tx = store.begin_audit().await.expect("begin");
                let head = tx.audit_head().await.expect("head");
                tx.append_audit(&oip_gateway::audit::chain(
                    head,
                    vec![(event, now_millis())],
                ))
                .await
                .expect("append");
                tx.commit().await.expect("commit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let verified = oip_gateway::audit::verify(&*stores[0])
        .await
        .expect("verify");
    assert_eq!(verified.problem, None);
    assert_eq!(verified.checked, 80);
}
