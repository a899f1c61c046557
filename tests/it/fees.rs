//! Fees, declarations and their live reconciliation, accident reports: every
//! declaration and accident code and warning; fen-exact amounts.

use std::collections::BTreeSet;

use oip_gateway::proto;

use crate::common::*;

/// A floats file giving platform A `multiplier` in `division` for `year`.
fn write_float(path: &std::path::Path, division: &str, year: &str, multiplier: &str) {
    let line = format!(
        "{},{division},{year},{multiplier}",
        oip_gateway::certs::DEMO_PLATFORM_A
    );
    std::fs::write(
        path,
        format!("uscc,division_code,year,multiplier\n{line}\n"),
    )
    .expect("floats");
}

fn worker_in_all_industries(id: &str) -> proto::Worker {
    proto::Worker {
        industries: vec![
            "RIDE_HAILING".into(),
            "INSTANT_DELIVERY".into(),
            "INTRACITY_FREIGHT".into(),
        ],
        ..worker(id)
    }
}

fn orders(prefix: &str, n: usize, industry: &str, division: &str, at: &str) -> Vec<proto::Order> {
    (0..n)
        .map(|i| order_at(&format!("{prefix}{i}"), "W1", industry, division, at))
        .collect()
}

fn warnings(b: &proto::BatchOutcome) -> Vec<Vec<String>> {
    b.outcomes.iter().map(|o| o.warnings.clone()).collect()
}

/// Amounts for each industry and tier, a float that makes the total need rounding, a
/// per-division tier, and a province-wide declaration.
#[tokio::test]
async fn fen_exact_amounts_for_every_industry_and_tier() {
    let (period, at) = previous_month(10);
    let year = &period[..4];
    let floats_dir = tempfile::tempdir().expect("tempdir");
    let floats = floats_dir.path().join("floats.csv");
    write_float(&floats, "320100", year, "1.05");
    let gw = TestGateway::spawn_with(|c| {
        c.fees.floats_file = Some(floats.clone());
        c.fees.declaration_deadline_day = 31; // the previous month is never late
        c.platforms[0].delivery_tier_overrides = [("320500".to_string(), "B".to_string())]
            .into_iter()
            .collect();
    })
    .await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker_in_all_industries("W1")]).await;
    let mut batch = orders("D", 10, "INSTANT_DELIVERY", "320100", &at);
    batch.extend(orders("R", 3, "RIDE_HAILING", "320100", &at));
    batch.extend(orders("F", 2, "INTRACITY_FREIGHT", "320100", &at));
    batch.extend(orders("S", 5, "INSTANT_DELIVERY", "320500", &at));
    let mut cancelled = order_at("C0", "W1", "INSTANT_DELIVERY", "320100", &at);
    cancelled.status = "CANCELLED".into();
    batch.push(cancelled);
    let out = report(&mut a, batch).await;
    assert_eq!(out.summary.expect("summary").accepted, 21);

    let mut b = gw.client("platform-b").await;
    register(&mut b, vec![worker("W1")]).await;
    report(&mut b, orders("B", 4, "INSTANT_DELIVERY", "320100", &at)).await;

    // 10 × 7 fen × 1.05 = 73.5 → 74 (only the monthly total is rounded, half up);
    // 3 × 1 × 1.05 = 3.15 → 3; 2 × 18 × 1.05 = 37.8 → 38; Suzhou at tier B without a
    // float: 5 × 25 = 125; the province: 15 orders, 74 + 125 = 199 fen.
    let decls = vec![
        declaration("A-D", &period, "320100", "INSTANT_DELIVERY", 10, 74),
        declaration("A-R", &period, "320100", "RIDE_HAILING", 3, 3),
        declaration("A-F", &period, "320100", "INTRACITY_FREIGHT", 2, 38),
        declaration("A-S", &period, "320500", "INSTANT_DELIVERY", 5, 125),
        declaration("A-P", &period, "320000", "INSTANT_DELIVERY", 15, 199),
        declaration("A-X", &period, "320500", "RIDE_HAILING", 1, 1),
    ];
    let out = declare(&mut a, decls).await;
    let w = warnings(&out);
    assert!(w[..5].iter().all(Vec::is_empty), "{w:?}");
    assert_eq!(w[5], vec!["DECLARATION_MISMATCH".to_string()]);
    let r = out.outcomes[5].reconciliation.clone().expect("figures");
    assert_eq!(r.status, "MISMATCH");
    assert_eq!(
        r.declared.map(|f| (f.order_count, f.amount_fen)),
        Some((1, 1))
    );
    assert_eq!(
        r.computed.map(|f| (f.order_count, f.amount_fen)),
        Some((0, 0))
    );
    // Platform B pays tier B: 4 × 25 = 100.
    let out = declare(
        &mut b,
        vec![declaration(
            "B-D",
            &period,
            "320100",
            "INSTANT_DELIVERY",
            4,
            100,
        )],
    )
    .await;
    assert_eq!(
        out.outcomes[0].outcome(),
        proto::Outcome::Accepted,
        "{:?}",
        out.outcomes[0]
    );

    let status = declaration_status(&mut a).await;
    assert_eq!(status["A-D"], ("MATCHED".to_string(), (10, 74), (10, 74)));

    // The statements themselves: count, base, float and amount per city and industry.
    let list = a
        .list_volume_statements(proto::ListVolumeStatementsRequest {
            period: period.clone(),
        })
        .await
        .expect("statements")
        .into_inner();
    let got: Vec<(String, String, i64, i64, String, i64, bool)> = list
        .statements
        .into_iter()
        .map(|s| {
            (
                s.division_code,
                s.industry,
                s.billable_count,
                s.base_fen_per_order,
                s.multiplier,
                s.amount_fen,
                s.closed,
            )
        })
        .collect();
    let row = |d: &str, i: &str, n, b, m: &str, amt| {
        (d.to_string(), i.to_string(), n, b, m.to_string(), amt, true)
    };
    assert_eq!(
        got,
        vec![
            row("320100", "INSTANT_DELIVERY", 10, 7, "1.0500", 74),
            row("320100", "INTRACITY_FREIGHT", 2, 18, "1.0500", 38),
            row("320100", "RIDE_HAILING", 3, 1, "1.0500", 3),
            row("320500", "INSTANT_DELIVERY", 5, 25, "1.0000", 125),
        ]
    );
    let bad = a
        .list_volume_statements(proto::ListVolumeStatementsRequest {
            period: "July".into(),
        })
        .await
        .expect_err("bad period");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(status["A-P"], ("MATCHED".to_string(), (15, 199), (15, 199)));
    assert_eq!(status["A-X"].0, "MISMATCH");
}

#[tokio::test]
async fn a_mismatch_followed_by_late_orders_ends_matched() {
    let (period, at) = previous_month(9);
    let gw = TestGateway::spawn_with(|c| c.fees.declaration_deadline_day = 31).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    report(&mut a, orders("O", 10, "INSTANT_DELIVERY", "320100", &at)).await;

    // Declared 12 orders, 84 fen; the gateway has 10 (70 fen).
    let out = declare(
        &mut a,
        vec![declaration(
            "D1",
            &period,
            "320100",
            "INSTANT_DELIVERY",
            12,
            84,
        )],
    )
    .await;
    assert_eq!(
        warnings(&out),
        vec![vec!["DECLARATION_MISMATCH".to_string()]]
    );
    assert_eq!(
        declaration_status(&mut a).await["D1"],
        ("MISMATCH".to_string(), (12, 84), (10, 70))
    );

    // Two late orders for the declared month: LATE_ORDER, and the status follows.
    let late = vec![
        order_at("L1", "W1", "INSTANT_DELIVERY", "320100", &at),
        order_at("L2", "W1", "INSTANT_DELIVERY", "320100", &at),
    ];
    let out = report(&mut a, late).await;
    assert_eq!(warnings(&out), vec![vec!["LATE_ORDER".to_string()]; 2]);
    assert_eq!(
        declaration_status(&mut a).await["D1"],
        ("MATCHED".to_string(), (12, 84), (12, 84))
    );

    // An order of another month or industry is not late.
    let other = order_at(
        "N1",
        "W1",
        "INSTANT_DELIVERY",
        "320100",
        "2025-07-02T11:00:00+08:00",
    );
    assert!(warnings(&report(&mut a, vec![other]).await)[0].is_empty());

    // A correction cancelling one order changes the month again...
    let mut cancel = order_at("L2", "W1", "INSTANT_DELIVERY", "320100", &at);
    cancel.revision = Some(2);
    cancel.status = "CANCELLED".into();
    assert_eq!(
        warnings(&report(&mut a, vec![cancel]).await),
        vec![vec!["LATE_ORDER".to_string()]]
    );
    assert_eq!(declaration_status(&mut a).await["D1"].0, "MISMATCH");
    // ...and a correcting declaration settles it; the first one is superseded.
    let out = declare(
        &mut a,
        vec![declaration(
            "D2",
            &period,
            "320100",
            "INSTANT_DELIVERY",
            11,
            77,
        )],
    )
    .await;
    assert!(warnings(&out)[0].is_empty());
    let status = declaration_status(&mut a).await;
    assert_eq!(status["D2"], ("MATCHED".to_string(), (11, 77), (11, 77)));
    assert_eq!(status["D1"].0, "SUPERSEDED");
}

#[tokio::test]
async fn every_declaration_and_accident_code_and_warning() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let mut b = gw.client("platform-b").await;
    register(&mut a, vec![worker("W1"), worker("W2")]).await;
    report(&mut a, vec![order("O1", "W1")]).await;
    let (this_month, _) = {
        let now = chrono::Utc::now().with_timezone(&oip_gateway::domain::time::shanghai());
        (now.format("%Y-%m").to_string(), ())
    };
    let d = |f: &dyn Fn(&mut proto::Declaration)| {
        let mut x = declaration("DX", "2025-07", "320100", "INSTANT_DELIVERY", 1, 7);
        f(&mut x);
        rec_declaration(x)
    };
    let acc = |f: &dyn Fn(&mut proto::Accident)| {
        let mut x = accident("AX", "W1", "O1");
        f(&mut x);
        rec_accident(x)
    };
    let cases: Vec<(&str, proto::Record, &str, &str)> = vec![
        (
            "no id",
            d(&|x| x.declaration_id.clear()),
            "MISSING_FIELD",
            "declaration_id",
        ),
        (
            "period shape",
            d(&|x| x.period = "2025/07".into()),
            "INVALID_PERIOD",
            "period",
        ),
        (
            "period not ended",
            d(&|x| x.period = this_month.clone()),
            "INVALID_PERIOD",
            "period",
        ),
        (
            "division",
            d(&|x| x.division_code = "110000".into()),
            "INVALID_DIVISION_CODE",
            "division_code",
        ),
        (
            "industry",
            d(&|x| x.industry = "TAKEAWAY".into()),
            "INVALID_INDUSTRY",
            "industry",
        ),
        (
            "count",
            d(&|x| x.order_count = Some(-1)),
            "INVALID_AMOUNT",
            "order_count",
        ),
        (
            "amount",
            d(&|x| x.amount_fen = Some(-7)),
            "INVALID_AMOUNT",
            "amount_fen",
        ),
        (
            "unknown worker",
            acc(&|x| x.worker_id = "W9".into()),
            "WORKER_NOT_REGISTERED",
            "worker_id",
        ),
        (
            "unknown order",
            acc(&|x| x.order_id = "O9".into()),
            "ORDER_NOT_FOUND",
            "order_id",
        ),
        (
            "other worker's order",
            acc(&|x| x.worker_id = "W2".into()),
            "ORDER_WORKER_MISMATCH",
            "order_id",
        ),
        (
            "injury kind",
            acc(&|x| x.injury_kind = "BURN".into()),
            "INVALID_INJURY_KIND",
            "injury_kind",
        ),
        (
            "description",
            acc(&|x| x.description = "伤".repeat(2001)),
            "FIELD_TOO_LONG",
            "description",
        ),
        (
            "future",
            acc(&|x| x.occurred_at = "2099-01-01T00:00:00+08:00".into()),
            "INVALID_TIME",
            "occurred_at",
        ),
        (
            "division",
            acc(&|x| x.division_code = "999999".into()),
            "INVALID_DIVISION_CODE",
            "division_code",
        ),
        (
            "no order id",
            acc(&|x| x.order_id.clear()),
            "MISSING_FIELD",
            "order_id",
        ),
    ];
    let out = submit(&mut a, cases.iter().map(|c| c.1.clone()).collect()).await;
    let mut codes = BTreeSet::new();
    for (i, ((name, _, code, field), got)) in cases.iter().zip(&out.outcomes).enumerate() {
        assert_eq!(got.outcome(), proto::Outcome::Rejected, "{name}: {got:?}");
        assert_eq!(
            (got.code.as_str(), got.field.split('.').nth(2)),
            (*code, Some(*field)),
            "{name}"
        );
        assert!(got.field.starts_with(&format!("records[{i}].")));
        assert!(
            !got.message.contains("擦伤") && !got.message.contains('伤'),
            "{name}: no medical detail"
        );
        codes.insert(got.code.clone());
    }
    // A platform not registered for the industry.
    let out = declare(
        &mut b,
        vec![declaration("DB", "2025-07", "320100", "RIDE_HAILING", 0, 0)],
    )
    .await;
    assert_eq!(out.outcomes[0].code, "INDUSTRY_NOT_REGISTERED");
    for c in [
        "INVALID_PERIOD",
        "INVALID_AMOUNT",
        "INVALID_INJURY_KIND",
        "ORDER_NOT_FOUND",
        "ORDER_WORKER_MISMATCH",
    ] {
        assert!(codes.contains(c), "{c}");
    }

    // Warnings: inside the window (with its 2-hour margin) nothing; outside it, a
    // warning; a month long past its deadline is a late declaration, and a mismatch.
    let mut near = accident("A1", "W1", "O1");
    near.occurred_at = "2025-07-02T13:30:00+08:00".into(); // 1h55m after completion
    let mut far = accident("A2", "W1", "O1");
    far.occurred_at = "2025-07-02T08:59:00+08:00".into(); // 2h01m before acceptance
    let out = report_accidents(&mut a, vec![accident("A0", "W1", "O1"), near, far]).await;
    assert_eq!(
        warnings(&out),
        vec![
            vec![],
            vec![],
            vec!["ACCIDENT_OUTSIDE_ORDER_WINDOW".to_string()]
        ]
    );
    assert_eq!(
        out.outcomes[2].outcome(),
        proto::Outcome::AcceptedWithWarnings
    );
    let out = declare(
        &mut a,
        vec![declaration(
            "D1",
            "2025-07",
            "320100",
            "INSTANT_DELIVERY",
            2,
            14,
        )],
    )
    .await;
    assert_eq!(
        warnings(&out),
        vec![vec![
            "DECLARATION_MISMATCH".to_string(),
            "LATE_DECLARATION".to_string()
        ]]
    );
    // Resent unchanged: a duplicate; changed at the same revision: a conflict.
    let again = declare(
        &mut a,
        vec![declaration(
            "D1",
            "2025-07",
            "320100",
            "INSTANT_DELIVERY",
            2,
            14,
        )],
    )
    .await;
    assert_eq!(again.outcomes[0].outcome(), proto::Outcome::Duplicate);
    let mut changed = accident("A0", "W1", "O1");
    changed.injury_kind = "FALL".into();
    assert_eq!(
        report_accidents(&mut a, vec![changed]).await.outcomes[0].code,
        "REVISION_CONFLICT"
    );
}

#[tokio::test]
async fn an_accident_may_follow_its_order_in_the_same_batch() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let out = submit(
        &mut a,
        vec![
            rec_worker(worker("W1")),
            rec_order(order("O1", "W1")),
            rec_accident(accident("A1", "W1", "O1")),
        ],
    )
    .await;
    assert_eq!(brief(&out), vec![accepted(); 3]);
}

/// Findings of a review, each pinned: figures are those at the declaration's position in
/// its batch (issue 10, kind 6), and later records of the batch are sent as an update; the later
/// of two declarations in one batch is current; a moved declaration releases its old
/// month; a province total is rounded once; a county's orders count in its city.
#[tokio::test]
async fn declarations_settle_with_their_batch_and_totals_round_once() {
    let (period, at) = previous_month(11);
    let year = &period[..4];
    let dir = tempfile::tempdir().expect("tempdir");
    let floats = dir.path().join("floats.csv");
    write_float(&floats, "320000", year, "1.05");
    let divisions = dir.path().join("divisions.csv");
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/reference/divisions.csv"
    ))
    .expect("shipped");
    std::fs::write(&divisions, format!("{shipped}320102,玄武区,\n")).expect("divisions");
    let gw = TestGateway::spawn_with(|c| {
        c.fees.floats_file = Some(floats.clone());
        c.fees.declaration_deadline_day = 31;
        c.reference.divisions_file = Some(divisions.clone());
    })
    .await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;

    // A declaration first, its order after it in the same batch: the declaration is
    // judged at its position (no order yet), the order then makes it match.
    let out = submit(
        &mut a,
        vec![
            rec_declaration(declaration(
                "D-NJ",
                &period,
                "320100",
                "INSTANT_DELIVERY",
                1,
                7,
            )),
            rec_order(order_at("O1", "W1", "INSTANT_DELIVERY", "320102", &at)), // a county of Nanjing
        ],
    )
    .await;
    let r = out.outcomes[0].reconciliation.clone().expect("figures");
    assert_eq!(r.status, "MISMATCH", "{:?}", out.outcomes[0]);
    assert_eq!(r.computed.map(|f| f.order_count), Some(0));
    assert_eq!(out.outcomes[0].warnings, vec!["DECLARATION_MISMATCH"]);
    assert_eq!(
        declaration_status(&mut a).await["D-NJ"].0,
        "MATCHED",
        "the order after it counts once the batch is in"
    );
    await_delivery_states(&mut a, "declaration", "D-NJ", &["DELIVERED", "DELIVERED"]).await;
    assert_eq!(
        out.outcomes[1].warnings,
        vec!["LATE_ORDER".to_string()],
        "the county's city was declared"
    );

    // One order in each of two more cities: 3 × 7 × 1.05 = 22.05 → 22 for the province
    // (rounding each city first would give 21).
    report(
        &mut a,
        vec![
            order_at("O2", "W1", "INSTANT_DELIVERY", "320200", &at),
            order_at("O3", "W1", "INSTANT_DELIVERY", "320300", &at),
        ],
    )
    .await;
    // Two declarations for the province in one batch: the later one is current.
    let out = declare(
        &mut a,
        vec![
            declaration("D-B", &period, "320000", "INSTANT_DELIVERY", 3, 21),
            declaration("D-A", &period, "320000", "INSTANT_DELIVERY", 3, 22),
        ],
    )
    .await;
    assert_eq!(
        out.outcomes[1].warnings,
        Vec::<String>::new(),
        "{:?}",
        out.outcomes[1]
    );
    let status = declaration_status(&mut a).await;
    assert_eq!(status["D-A"], ("MATCHED".to_string(), (3, 22), (3, 22)));
    assert_eq!(status["D-B"].0, "SUPERSEDED");

    // A declaration moved to another industry releases its old key: a later order in
    // the old industry is no longer late.
    register(
        &mut a,
        vec![{
            let mut w = worker("W2");
            w.industries = vec!["INSTANT_DELIVERY".into(), "RIDE_HAILING".into()];
            w
        }],
    )
    .await;
    let out = declare(
        &mut a,
        vec![declaration("D-R", &period, "320500", "RIDE_HAILING", 0, 0)],
    )
    .await;
    assert_eq!(
        out.outcomes[0]
            .reconciliation
            .clone()
            .expect("figures")
            .status,
        "MATCHED"
    );
    let moved = proto::Declaration {
        revision: Some(2),
        ..declaration("D-R", &period, "320500", "INTRACITY_FREIGHT", 0, 0)
    };
    let ride = order_at("O4", "W2", "RIDE_HAILING", "320500", &at);
    let out = submit(&mut a, vec![rec_declaration(moved), rec_order(ride)]).await;
    assert_eq!(
        out.outcomes[1].outcome(),
        proto::Outcome::Accepted,
        "{:?}",
        out.outcomes[1]
    );
}
