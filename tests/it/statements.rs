//! Volume statements to tax: released when a month closes (on the platform's first
//! declaration, or a number of days after month end), sent again as corrections when
//! late or corrected orders change them, and declarations' reconciliation re-sent when
//! the gateway's figures move. Checked on what the simulated tax backend stored.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use oip_gateway::certs::DEMO_PLATFORM_A;
use oip_gateway::config::StatementRelease;
use oip_gateway::proto::{self, backend_sim_control_client::BackendSimControlClient, tax_item};
use oip_gateway::store::sim::SimStore;
use prost::Message;

use crate::common::*;

/// Waits until the simulator has applied `n` tax items of `kind`.
async fn await_tax(gw: &TestGateway, kind: &str, n: u64) {
    let addr = gw.sim_addr.expect("embedded simulator");
    let mut c = BackendSimControlClient::new(
        channel(addr, client_tls(Some("admin"), "ca.pem"))
            .await
            .expect("connect"),
    );
    let want = format!("tax/{kind}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = c
            .stats(proto::StatsRequest {})
            .await
            .expect("stats")
            .into_inner();
        let got = stats
            .applied
            .iter()
            .find(|k| k.kind == want)
            .map_or(0, |k| k.count);
        if got == n {
            return;
        }
        assert!(got < n, "{want}: {got} applied, want {n}");
        assert!(Instant::now() < deadline, "{want}: {got} applied, want {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the tax simulator stored of `kind`, by idempotency key.
async fn tax_items(gw: &TestGateway, kind: &str) -> BTreeMap<String, proto::TaxItem> {
    let store = SimStore::open(&format!(
        "sqlite:{}",
        gw.dir.path().join("backend-sim.db").display()
    ))
    .await
    .expect("simulator store");
    store
        .payloads("tax", kind)
        .await
        .expect("payloads")
        .into_iter()
        .map(|(key, bytes)| (key, proto::TaxItem::decode(bytes.as_slice()).expect("item")))
        .collect()
}

/// (billable count, base, multiplier, amount, correction) of a statement item.
fn statement(item: &proto::TaxItem) -> (i64, i64, String, i64, bool) {
    let Some(tax_item::Payload::Statement(s)) = &item.payload else {
        panic!("not a statement: {item:?}");
    };
    let correction = item.header.as_ref().expect("header").correction;
    (
        s.billable_count,
        s.base_fen_per_order,
        s.multiplier.clone(),
        s.amount_fen,
        correction,
    )
}

fn statement_key(period: &str, city: &str, batch: u32) -> String {
    format!("{DEMO_PLATFORM_A}/statement/{period}/{city}/INSTANT_DELIVERY/{batch}")
}

fn at_in(id: &str, city: &str, at: &str) -> proto::Order {
    order_at(id, "W1", "INSTANT_DELIVERY", city, at)
}

#[tokio::test]
async fn a_declared_month_goes_to_tax_and_late_orders_correct_it() {
    let (period, at) = previous_month(9);
    // The deadline (day 31) has not passed: only a declaration closes the month.
    let gw = TestGateway::spawn_with(|c| c.fees.declaration_deadline_day = 31).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await; // batch 1
    let orders = vec![
        at_in("O1", "320100", &at),
        at_in("O2", "320100", &at),
        at_in("O3", "320500", &at),
    ];
    report(&mut a, orders).await; // batch 2

    // Declared 3 orders in Nanjing; the gateway has 2 there.
    let out = declare(
        &mut a,
        vec![declaration(
            "D1",
            &period,
            "320100",
            "INSTANT_DELIVERY",
            3,
            21,
        )],
    )
    .await; // batch 3; the release that follows is batch 4
    assert_eq!(out.outcomes[0].warnings, vec!["DECLARATION_MISMATCH"]);
    await_tax(&gw, "statement", 2).await;
    await_tax(&gw, "declaration", 1).await;

    // Every statement of the month, released after (not before) the declaration,
    // rated at 7 fen (instant delivery, tier A, float 1).
    let statements = tax_items(&gw, "statement").await;
    assert_eq!(
        statements.keys().cloned().collect::<Vec<_>>(),
        vec![
            statement_key(&period, "320100", 4),
            statement_key(&period, "320500", 4)
        ]
    );
    assert_eq!(
        statement(&statements[&statement_key(&period, "320100", 4)]),
        (2, 7, "1.0000".to_string(), 14, false)
    );
    assert_eq!(
        statement(&statements[&statement_key(&period, "320500", 4)]),
        (1, 7, "1.0000".to_string(), 7, false)
    );

    // A late order in Nanjing: the Nanjing statement is corrected (Suzhou is not sent
    // again) and D1's reconciliation, now matched, is sent again.
    let out = report(&mut a, vec![at_in("O4", "320100", &at)]).await; // batch 5
    assert_eq!(out.outcomes[0].warnings, vec!["LATE_ORDER"]);
    await_tax(&gw, "statement", 3).await;
    await_tax(&gw, "declaration", 2).await;
    let statements = tax_items(&gw, "statement").await;
    assert_eq!(
        statement(&statements[&statement_key(&period, "320100", 5)]),
        (3, 7, "1.0000".to_string(), 21, true)
    );
    // The platform sees both versions of its Nanjing statement delivered.
    let deliveries = a
        .list_deliveries(proto::ListDeliveriesRequest {
            kind: "statement".into(),
            id: format!("{period}/320100/INSTANT_DELIVERY"),
        })
        .await
        .expect("deliveries")
        .into_inner()
        .deliveries;
    let seen: Vec<_> = deliveries
        .iter()
        .map(|d| (d.idempotency_key.clone(), d.destination.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (statement_key(&period, "320100", 4), "tax".to_string()),
            (statement_key(&period, "320100", 5), "tax".to_string())
        ]
    );
    let declarations = tax_items(&gw, "declaration").await;
    let update = &declarations[&format!("{DEMO_PLATFORM_A}/declaration/D1/1/reconciliation/5")];
    assert!(update.header.as_ref().expect("header").correction);
    let Some(tax_item::Payload::Declaration(d)) = &update.payload else {
        panic!("not a declaration: {update:?}");
    };
    let r = d.reconciliation.as_ref().expect("reconciliation");
    assert_eq!(r.status, "MATCHED");
    assert_eq!(
        r.computed.map(|f| (f.order_count, f.amount_fen)),
        Some((3, 21))
    );
    let first = &declarations[&format!("{DEMO_PLATFORM_A}/declaration/D1/1")];
    let Some(tax_item::Payload::Declaration(d)) = &first.payload else {
        panic!("not a declaration: {first:?}");
    };
    assert_eq!(
        d.reconciliation.as_ref().map(|r| r.status.as_str()),
        Some("MISMATCH")
    );
    gw.stop().await;
}

#[tokio::test]
async fn after_month_end_a_month_is_released_without_a_declaration() {
    let (period, at) = previous_month(9);
    let gw = TestGateway::spawn_with(|c| {
        c.forward.statement_release = StatementRelease::AfterMonthEnd;
        c.forward.statement_release_days = 0;
    })
    .await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    report(
        &mut a,
        vec![at_in("O1", "320100", &at), at_in("O2", "320100", &at)],
    )
    .await;
    await_tax(&gw, "statement", 1).await;
    let statements = tax_items(&gw, "statement").await;
    let (key, first) = statements.iter().next().expect("one statement");
    assert!(key.starts_with(&format!(
        "{DEMO_PLATFORM_A}/statement/{period}/320100/INSTANT_DELIVERY/"
    )));
    assert_eq!(statement(first), (2, 7, "1.0000".to_string(), 14, false));

    // A cancellation after the release: a correction with one order less.
    let mut cancel = at_in("O2", "320100", &at);
    cancel.revision = Some(2);
    cancel.status = "CANCELLED".into();
    report(&mut a, vec![cancel]).await;
    await_tax(&gw, "statement", 2).await;
    let statements = tax_items(&gw, "statement").await;
    let newest = statements
        .iter()
        .filter(|(k, _)| *k != key)
        .map(|(_, v)| statement(v))
        .collect::<Vec<_>>();
    assert_eq!(newest, vec![(1, 7, "1.0000".to_string(), 7, true)]);
    assert_eq!(tax_items(&gw, "declaration").await.len(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn reconciliation_updates_go_to_the_current_declarations_that_cover_the_change() {
    let (period, at) = previous_month(9);
    let gw = TestGateway::spawn_with(|c| c.fees.declaration_deadline_day = 31).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await; // batch 1
    let orders = vec![at_in("O1", "320100", &at), at_in("O2", "320500", &at)];
    report(&mut a, orders).await; // batch 2
    // Nanjing declared twice (D2 supersedes D1), and the province as a whole.
    let d = |id: &str, division: &str, n: i64| {
        declaration(id, &period, division, "INSTANT_DELIVERY", n, n * 7)
    };
    declare(
        &mut a,
        vec![
            d("D1", "320100", 5),
            d("D2", "320100", 1),
            d("DP", "320000", 2),
        ],
    )
    .await; // batch 3 (release: 4)
    await_tax(&gw, "declaration", 3).await;
    await_tax(&gw, "statement", 2).await;

    // A late order in Suzhou moves only the province's figures...
    report(&mut a, vec![at_in("O3", "320500", &at)]).await; // batch 5
    await_tax(&gw, "declaration", 4).await;
    // ...one in Nanjing moves the province's and D2's, not superseded D1's.
    report(&mut a, vec![at_in("O4", "320100", &at)]).await; // batch 6
    await_tax(&gw, "declaration", 6).await;
    let key = |id: &str, batch: u32| {
        format!("{DEMO_PLATFORM_A}/declaration/{id}/1/reconciliation/{batch}")
    };
    let declarations = tax_items(&gw, "declaration").await;
    let updates: Vec<_> = declarations
        .keys()
        .filter(|k| k.contains("/reconciliation/"))
        .cloned()
        .collect();
    assert_eq!(updates, vec![key("D2", 6), key("DP", 5), key("DP", 6)]);
    let status = |k: &str| match &declarations[k].payload {
        Some(tax_item::Payload::Declaration(d)) => {
            let r = d.reconciliation.as_ref().expect("reconciliation");
            let c = r.computed.expect("computed");
            (r.status.clone(), c.order_count, c.amount_fen)
        }
        other => panic!("not a declaration: {other:?}"),
    };
    assert_eq!(status(&key("DP", 5)), ("MISMATCH".into(), 3, 21));
    assert_eq!(status(&key("DP", 6)), ("MISMATCH".into(), 4, 28));
    assert_eq!(status(&key("D2", 6)), ("MISMATCH".into(), 2, 14));
    gw.stop().await;
}
