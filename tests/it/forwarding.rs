//! Forwarding to the (simulated) backends through outages: everything accepted is
//! delivered, each idempotency key applied once; the tax side holds no personal data.

use std::time::{Duration, Instant};

use oip_gateway::proto::{self, backend_sim_control_client::BackendSimControlClient};
use oip_gateway::store::sim::SimStore;

use crate::common::*;

type Control = BackendSimControlClient<tonic::transport::Channel>;

async fn control(gw: &TestGateway) -> Control {
    let addr = gw.sim_addr.expect("embedded simulator");
    BackendSimControlClient::new(
        channel(addr, client_tls(Some("admin"), "ca.pem"))
            .await
            .expect("connect"),
    )
}

/// The embedded simulator's control, its deliveries paused (every call UNAVAILABLE).
async fn paused(gw: &TestGateway) -> Control {
    let mut sim = control(gw).await;
    sim.set_faults(proto::Faults {
        paused: true,
        ..Default::default()
    })
    .await
    .expect("pause");
    sim
}

/// Revision 2 of `order(id, worker_id)`: cancelled.
fn cancelled(id: &str, worker_id: &str) -> proto::Order {
    let mut fix = order(id, worker_id);
    fix.revision = Some(2);
    fix.status = "CANCELLED".into();
    fix
}

async fn applied(
    c: &mut Control,
) -> (
    std::collections::BTreeMap<String, u64>,
    proto::StatsResponse,
) {
    let s = c
        .stats(proto::StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    (
        s.applied
            .iter()
            .map(|k| (k.kind.clone(), k.count))
            .collect(),
        s,
    )
}

/// Polls until `want` holds or the deadline passes (no fixed sleeps).
async fn eventually(
    c: &mut Control,
    what: &str,
    want: impl Fn(&std::collections::BTreeMap<String, u64>) -> bool,
) -> proto::StatsResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (counts, stats) = applied(c).await;
        if want(&counts) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: still {counts:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_backend_outage_delays_but_loses_nothing() {
    let gw = TestGateway::spawn().await;
    let mut sim = paused(&gw).await;

    let mut a = gw.client("platform-a").await;
    let workers: Vec<_> = (0..50).map(|i| worker(&format!("W{i}"))).collect();
    assert_eq!(
        register(&mut a, workers)
            .await
            .summary
            .expect("summary")
            .accepted,
        50
    );
    for batch in 0..5 {
        let orders = (0..100)
            .map(|i| order(&format!("O{batch}-{i}"), &format!("W{}", i % 50)))
            .collect();
        assert_eq!(
            report(&mut a, orders)
                .await
                .summary
                .expect("summary")
                .accepted,
            100
        );
    }
    // While paused the dispatcher keeps trying and nothing is applied.
    let deadline = Instant::now() + Duration::from_secs(10);
    while applied(&mut sim).await.1.failed_calls < 3 {
        assert!(
            Instant::now() < deadline,
            "the dispatcher retries during the outage"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(applied(&mut sim).await.0.is_empty());
    assert_eq!(
        delivery_states(&mut a, "order", "O0-0").await,
        vec!["PENDING".to_string()]
    );

    // Back: everything arrives, each key applied once, and flaky calls are retried.
    sim.set_faults(proto::Faults {
        fail_fraction: 0.3,
        ..Default::default()
    })
    .await
    .expect("flaky");
    // Each batch changed 50 workers' enrolment on 2025-07-02: 5 versions of each were
    // queued, and each newer one superseded the older while the backend was down, so
    // only the latest (10 orders) is delivered.
    let stats = eventually(&mut sim, "all delivered", |c| {
        c.get("social-security/worker") == Some(&50)
            && c.get("social-security/order") == Some(&500)
            && c.get("social-security/enrolment") == Some(&50)
    })
    .await;
    assert_eq!(stats.invalid_items, 0);
    await_delivery_states(
        &mut a,
        "enrolment",
        "W0/2025-07-02/320100",
        &[
            "SUPERSEDED",
            "SUPERSEDED",
            "SUPERSEDED",
            "SUPERSEDED",
            "DELIVERED",
        ],
    )
    .await;
    await_delivery_states(&mut a, "order", "O0-0", &["DELIVERED"]).await;
    await_delivery_states(&mut a, "worker", "W1", &["DELIVERED"]).await;
    // Another platform cannot see A's deliveries; a kind must be named.
    let mut b = gw.client("platform-b").await;
    assert!(delivery_states(&mut b, "order", "O0-0").await.is_empty());
    let bad = a
        .list_deliveries(proto::ListDeliveriesRequest {
            kind: "invoice".into(),
            id: "x".into(),
        })
        .await
        .expect_err("unknown kind");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // A correction is delivered as a new key after its original.
    report(&mut a, vec![cancelled("O0-0", "W0")]).await;
    // ...and W0's enrolment that day drops from 10 orders to 9: a new version.
    eventually(&mut sim, "correction delivered", |c| {
        c.get("social-security/order") == Some(&501)
            && c.get("social-security/enrolment") == Some(&51)
    })
    .await;
}

#[tokio::test]
async fn the_tax_backend_receives_no_personal_data() {
    let gw = TestGateway::spawn().await;
    let mut sim = control(&gw).await;
    let mut a = gw.client("platform-a").await;
    let id = resident_id("32058319880808771");
    let mut w = worker("W1");
    w.id_number = id.clone();
    w.name = "欧阳娜娜".into();
    w.mobile = "13987654321".into();
    register(&mut a, vec![w]).await;
    report(&mut a, vec![order("O1", "W1")]).await;
    declare(
        &mut a,
        vec![declaration(
            "D1",
            "2025-07",
            "320100",
            "INSTANT_DELIVERY",
            1,
            7,
        )],
    )
    .await;
    // The declaration closes July 2025: its volume statement is released too.
    eventually(&mut sim, "delivered", |c| {
        c.get("tax/declaration") == Some(&1)
            && c.get("tax/statement") == Some(&1)
            && c.get("social-security/worker") == Some(&1)
    })
    .await;

    let store = SimStore::open(&format!(
        "sqlite:{}",
        gw.dir.path().join("backend-sim.db").display()
    ))
    .await
    .expect("simulator store");
    for (kind, marker) in [("declaration", "D1"), ("statement", "2025-07")] {
        let tax = store.payloads("tax", kind).await.expect("payloads");
        assert_eq!(tax.len(), 1);
        for (_, payload) in &tax {
            let text = String::from_utf8_lossy(payload);
            for secret in [id.as_str(), "欧阳娜娜", "13987654321", "W1"] {
                assert!(!text.contains(secret), "tax {kind} payload holds {secret}");
            }
            assert!(text.contains(marker));
        }
    }
    // The social-security backend did get the worker it needs.
    let ss = store
        .payloads("social-security", "worker")
        .await
        .expect("payloads");
    assert!(String::from_utf8_lossy(&ss[0].1).contains(&id));
}

/// The gateway killed with SIGKILL while it forwards, then restarted on the same files:
/// every accepted record reaches the backend, each key applied once (repeats of what
/// was sent but not yet marked are dropped by the backend).
#[tokio::test]
async fn sigkill_during_forwarding_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = GatewayProcess::spawn(dir.path(), &[("OIP_FORWARD__BATCH_SIZE", "50")]);
    let sim_addr = gw.sim_addr.expect("embedded simulator");
    let mut sim = BackendSimControlClient::new(
        channel(sim_addr, client_tls(Some("admin"), "ca.pem"))
            .await
            .expect("connect"),
    );
    // Slow the backend so the kill lands mid-forwarding.
    sim.set_faults(proto::Faults {
        latency_ms: 20,
        ..Default::default()
    })
    .await
    .expect("latency");
    let mut a = client(gw.addr, "platform-a").await;
    register(&mut a, (0..20).map(|i| worker(&format!("W{i}"))).collect()).await;
    for batch in 0..10 {
        let orders = (0..200)
            .map(|i| order(&format!("O{batch}-{i}"), &format!("W{}", i % 20)))
            .collect();
        assert_eq!(
            report(&mut a, orders)
                .await
                .summary
                .expect("summary")
                .accepted,
            200
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (counts, _) = applied(&mut sim).await;
        if counts.get("social-security/order").copied().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "forwarding started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.kill();
    {
        let store = SimStore::open(&format!(
            "sqlite:{}",
            dir.path().join("backend-sim.db").display()
        ))
        .await
        .expect("simulator store");
        let (counts, _) = store.stats().await.expect("stats");
        let orders = counts.get("social-security/order").copied().unwrap_or(0);
        assert!(
            orders > 0 && orders < 2000,
            "killed mid-forwarding ({orders} orders had arrived)"
        );
    }

    let restarted = GatewayProcess::spawn(dir.path(), &[]);
    let sim_addr = restarted.sim_addr.expect("embedded simulator");
    let mut sim = BackendSimControlClient::new(
        channel(sim_addr, client_tls(Some("admin"), "ca.pem"))
            .await
            .expect("connect"),
    );
    eventually(&mut sim, "all 2000 orders and 20 workers delivered", |c| {
        c.get("social-security/order") == Some(&2000)
            && c.get("social-security/worker") == Some(&20)
    })
    .await;
}

/// A correction queued while its original is still pending (here: refused by the
/// backend and waiting to be retried) is not sent until the original is delivered.
#[tokio::test]
async fn a_correction_never_overtakes_its_pending_original() {
    let gw = TestGateway::spawn_with(|c| c.forward.invalid_retry_ms = 30).await;
    let mut sim = control(&gw).await;
    let original = format!("{}/order/O1/1", oip_gateway::certs::DEMO_PLATFORM_A);
    sim.set_faults(proto::Faults {
        reject_keys: vec![original],
        ..Default::default()
    })
    .await
    .expect("faults");
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    report(&mut a, vec![order("O1", "W1")]).await;
    report(&mut a, vec![cancelled("O1", "W1")]).await;

    // The original is refused again and again; the correction stays behind it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while applied(&mut sim).await.1.invalid_items < 3 {
        assert!(Instant::now() < deadline, "the original is retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (counts, _) = applied(&mut sim).await;
    assert_eq!(counts.get("social-security/order"), None, "{counts:?}");
    assert_eq!(
        delivery_states(&mut a, "order", "O1").await,
        vec!["PENDING".to_string(), "PENDING".to_string()]
    );

    // Accepted once the backend takes it: the original first, then the correction.
    sim.set_faults(proto::Faults::default())
        .await
        .expect("faults");
    await_delivery_states(&mut a, "order", "O1", &["DELIVERED", "DELIVERED"]).await;
    let d = deliveries(&mut a, "order", "O1").await;
    assert!(d[0].idempotency_key.ends_with("/1") && d[1].idempotency_key.ends_with("/2"));
    assert!(d[0].delivered_at_ms <= d[1].delivered_at_ms, "{d:?}");
    gw.stop().await;
}

/// Delivery is pipelined: the next batch is delivered while the last one's outcomes
/// are recorded. An item delivered and not yet recorded is never delivered again,
/// and a correction still waits for its original, with small batches, a slow backend
/// and ingest competing for the store all along.
#[tokio::test]
async fn pipelined_delivery_sends_each_item_once_and_corrections_after_originals() {
    let gw = TestGateway::spawn_with(|c| c.forward.batch_size = 4).await;
    let mut sim = control(&gw).await;
    sim.set_faults(proto::Faults {
        latency_ms: 3,
        ..Default::default()
    })
    .await
    .expect("faults");
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1"), worker("W2")]).await;
    let ids: Vec<String> = (0..60).map(|i| format!("P{i}")).collect();
    for chunk in ids.chunks(6) {
        let each = |revision: fn(&str, &str) -> _| {
            chunk
                .iter()
                .enumerate()
                .map(|(i, id)| revision(id, if i % 2 == 0 { "W1" } else { "W2" }))
                .collect()
        };
        report(&mut a, each(order)).await;
        // Each order's correction one call later, while its original is in flight.
        report(&mut a, each(cancelled)).await;
    }
    let stats = eventually(&mut sim, "every revision applied", |c| {
        c.get("social-security/order") == Some(&120)
    })
    .await;
    assert_eq!(stats.repeated_items, 0, "an unsettled item was sent again");
    for id in &ids {
        await_delivery_states(&mut a, "order", id, &["DELIVERED", "DELIVERED"]).await;
        let d = deliveries(&mut a, "order", id).await;
        assert!(d[0].idempotency_key.ends_with("/1") && d[1].idempotency_key.ends_with("/2"));
        assert!(d[0].delivered_at_ms <= d[1].delivered_at_ms, "{id}: {d:?}");
    }
    gw.stop().await;
}

/// A day that lost its last order and then got another: the withdrawal (0 orders)
/// and the re-enrolment are items of one daily enrolment, and the newer supersedes
/// the older even though the day was not an enrolment in between.
#[tokio::test]
async fn a_re_enrolment_supersedes_a_pending_withdrawal() {
    let gw = TestGateway::spawn().await;
    let mut sim = paused(&gw).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    report(&mut a, vec![order("O1", "W1")]).await;
    report(&mut a, vec![cancelled("O1", "W1")]).await;
    report(&mut a, vec![order("O2", "W1")]).await;
    let day = "W1/2025-07-02/320100";
    assert_eq!(
        delivery_states(&mut a, "enrolment", day).await,
        vec!["SUPERSEDED", "SUPERSEDED", "PENDING"]
    );
    sim.set_faults(proto::Faults::default())
        .await
        .expect("resume");
    await_delivery_states(
        &mut a,
        "enrolment",
        day,
        &["SUPERSEDED", "SUPERSEDED", "DELIVERED"],
    )
    .await;
    let stats = eventually(&mut sim, "orders delivered", |c| {
        c.get("social-security/order") == Some(&3)
    })
    .await;
    let enrolments = stats
        .applied
        .iter()
        .find(|k| k.kind == "social-security/enrolment");
    assert_eq!(enrolments.map(|k| k.count), Some(1), "{stats:?}");
    gw.stop().await;
}

/// Live traffic (one order per call, each its own ingest transaction) reaches the
/// backend in calls of many items: a short call is held `forward.linger_ms` for more
/// to become due, instead of one call (and one recorded settlement) per transaction.
#[tokio::test]
async fn single_order_calls_reach_the_backend_in_few_calls() {
    let gw = TestGateway::spawn_with(|c| c.forward.linger_ms = 400).await;
    let mut sim = control(&gw).await;
    let mut a = gw.client("platform-a").await;
    assert_eq!(
        brief(&register(&mut a, vec![worker("W0")]).await),
        vec![accepted()]
    );
    eventually(&mut sim, "worker delivered", |c| {
        c.get("social-security/worker") == Some(&1)
    })
    .await;
    let before = applied(&mut sim).await.1.answered_calls;

    for i in 0..20 {
        let outcome = report(&mut a, vec![order(&format!("L{i}"), "W0")]).await;
        assert_eq!(brief(&outcome), vec![accepted()]);
    }
    let stats = eventually(&mut sim, "all orders delivered", |c| {
        c.get("social-security/order") == Some(&20)
    })
    .await;
    let calls = stats.answered_calls - before;
    assert!(
        calls <= 4,
        "20 single-order transactions reached the backend in {calls} calls"
    );
}
