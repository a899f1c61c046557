//! Issue 10, kinds 2, 3, 4, 6 and 7 (record level): absent is never a default,
//! ambiguous input is refused rather than guessed, values must be plausible, a record's
//! outcome is the one at its position whatever the chunking, and echoed values are
//! bounded. Each example of the issue, in the bulk format and over gRPC, and variants.

use std::path::Path;

use oip_gateway::proto;

use crate::common::*;

/// `(outcome, code, field)` of one outcome.
fn one(o: &proto::RecordOutcome) -> (String, String, String) {
    (
        o.outcome().as_str_name().to_string(),
        o.code.clone(),
        o.field.clone(),
    )
}

fn rejected(code: &str, field: &str) -> (String, String, String) {
    ("REJECTED".into(), code.into(), field.into())
}

fn submit_lines(
    gw: &TestGateway,
    name: &str,
    lines: &[String],
    args: &[&str],
) -> std::path::PathBuf {
    let file = gw.dir.path().join(format!("{name}.jsonl"));
    std::fs::write(&file, lines.join("\n") + "\n").expect("write input");
    let report = gw.dir.path().join(format!("{name}.report.jsonl"));
    let out = run_submit(&gw.endpoint(), &file, &report, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

fn message(report: &Path, line: usize) -> String {
    report_lines(report)[line - 1]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

// Kind 2: an absent value is absent, never a default.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_count_or_amount_is_missing_never_zero() {
    let gw = TestGateway::spawn().await;
    let (period, _) = previous_month(10);
    // The issue's example, then variants: only one of the two, and null.
    let lines = [
        r#"{"kind":"declaration","declaration_id":"D-1","period":"2025-09","division_code":"321300","industry":"INSTANT_DELIVERY"}"#.to_string(),
        format!(r#"{{"kind":"declaration","declaration_id":"D-2","period":"{period}","division_code":"320100","industry":"INSTANT_DELIVERY","order_count":0}}"#),
        format!(r#"{{"kind":"declaration","declaration_id":"D-3","period":"{period}","division_code":"320100","industry":"INSTANT_DELIVERY","order_count":null,"amount_fen":0}}"#),
        format!(r#"{{"kind":"declaration","declaration_id":"D-4","period":"{period}","division_code":"320100","industry":"INSTANT_DELIVERY","order_count":0,"amount_fen":0,"revision":0}}"#),
    ];
    let report = submit_lines(&gw, "absent", &lines, &[]);
    let got: Vec<_> = report_brief(&report)
        .into_iter()
        .map(|l| (l.1, l.2, l.3, l.4))
        .collect();
    let r = |id: &str, code: &str, field: &str| {
        (
            id.to_string(),
            "REJECTED".to_string(),
            code.to_string(),
            field.to_string(),
        )
    };
    assert_eq!(
        got,
        vec![
            r("D-1", "MISSING_FIELD", "order_count"),
            r("D-2", "MISSING_FIELD", "amount_fen"),
            r("D-3", "MISSING_FIELD", "order_count"),
            r("D-4", "MALFORMED_RECORD", "revision"),
        ]
    );

    // Over gRPC: proto3 field presence says "absent".
    let mut a = gw.client("platform-a").await;
    let full = declaration("D-5", &period, "320100", "INSTANT_DELIVERY", 0, 0);
    let out = declare(
        &mut a,
        vec![
            proto::Declaration {
                order_count: None,
                ..full.clone()
            },
            proto::Declaration {
                amount_fen: None,
                ..full.clone()
            },
            proto::Declaration {
                revision: Some(0),
                ..full.clone()
            },
        ],
    )
    .await;
    assert_eq!(
        out.outcomes.iter().map(one).collect::<Vec<_>>(),
        vec![
            rejected("MISSING_FIELD", "declarations[0].order_count"),
            rejected("MISSING_FIELD", "declarations[1].amount_fen"),
            rejected("MALFORMED_RECORD", "declarations[2].revision"),
        ]
    );
    let out = submit(
        &mut a,
        vec![rec_declaration(proto::Declaration {
            order_count: None,
            amount_fen: None,
            ..full.clone()
        })],
    )
    .await;
    assert_eq!(
        one(&out.outcomes[0]),
        rejected("MISSING_FIELD", "records[0].declaration.order_count")
    );
    // A record that names no kind is named as none (not as a worker).
    let out = submit(&mut a, vec![proto::Record { kind: None }]).await;
    assert_eq!(
        one(&out.outcomes[0]),
        rejected("MISSING_FIELD", "records[0].kind")
    );
    assert_eq!(out.outcomes[0].kind, "");
    // Nothing was stored, closed or sent to tax.
    assert!(declaration_status(&mut a).await.is_empty());
    assert!(
        delivery_states(&mut a, "declaration", "D-1")
            .await
            .is_empty()
    );
    // Explicit zeros are a declaration of zero.
    let out = declare(&mut a, vec![full]).await;
    assert_ne!(out.outcomes[0].outcome(), proto::Outcome::Rejected);

    // Every revision 0 is refused, for every kind; absent is 1.
    let mut w = worker("W1");
    w.revision = Some(0);
    let mut o = order("O1", "W1");
    o.revision = Some(0);
    let mut ac = accident("A1", "W1", "O1");
    ac.revision = Some(0);
    let mut w2 = worker("W2");
    w2.revision = None;
    let out = submit(
        &mut a,
        vec![
            rec_worker(w),
            rec_order(o),
            rec_accident(ac),
            rec_worker(w2),
        ],
    )
    .await;
    let got: Vec<_> = out.outcomes.iter().map(one).collect();
    assert_eq!(
        got[0],
        rejected("MALFORMED_RECORD", "records[0].worker.revision")
    );
    assert_eq!(
        got[1],
        rejected("MALFORMED_RECORD", "records[1].order.revision")
    );
    assert_eq!(
        got[2],
        rejected("MALFORMED_RECORD", "records[2].accident.revision")
    );
    assert_eq!(got[3], accepted());
    assert_eq!(out.outcomes[3].revision, 1);
}

#[tokio::test]
async fn an_absent_rate_is_refused_never_zero() {
    let gw = TestGateway::spawn().await;
    let mut admin = gw.admin().await;
    let before = admin
        .list_rates(proto::ListRatesRequest {})
        .await
        .expect("rates")
        .into_inner();
    let base = proto::BaseRateRow {
        industry: "INSTANT_DELIVERY".into(),
        tier: "A".into(),
        effective_from: "2027-01-01".into(),
        fen_per_order: None,
        recorded_at: String::new(),
    };
    let err = admin
        .append_rates(proto::RateTables {
            base_rates: vec![base],
            floats: vec![],
        })
        .await
        .expect_err("absent fen_per_order");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("base_rates[0].fen_per_order is required"),
        "{}",
        err.message()
    );
    let float = proto::FloatRow {
        uscc: oip_gateway::certs::DEMO_PLATFORM_A.into(),
        division_code: "320100".into(),
        year: None,
        multiplier: "1.05".into(),
        recorded_at: String::new(),
    };
    let err = admin
        .append_rates(proto::RateTables {
            base_rates: vec![],
            floats: vec![float],
        })
        .await
        .expect_err("absent year");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("floats[0].year is required"),
        "{}",
        err.message()
    );
    let after = admin
        .list_rates(proto::ListRatesRequest {})
        .await
        .expect("rates")
        .into_inner();
    assert_eq!(before, after, "nothing appended");
}

// Kind 3: ambiguous input is refused, not guessed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_keys_wrong_types_and_unknown_keys_are_refused_in_bulk_files() {
    let gw = TestGateway::spawn().await;
    let o = order_line("O-1", "W1");
    let lines = [
        worker_line("W1"),
        // The issue's example: CANCELLED, then COMPLETED.
        o.replace(r#""status":"COMPLETED""#, r#""status":"CANCELLED","status":"COMPLETED""#),
        order_line("O-2", "W1").replace(r#""order_id":"O-2""#, r#""order_id":"O-2","order_id":"O-2""#),
        order_line("O-3", "W1").replace(r#""order_id":"O-3""#, r#""order_id":3"#),
        order_line("O-4", "W1").replace(r#""status""#, r#""vehicle_plat":"苏A12345","status""#),
        r#"{"kind":"declaration","declaration_id":"D-1","period":"2025-09","division_code":"320100","industry":"INSTANT_DELIVERY","order_count":"12","amount_fen":84}"#.into(),
        r#"{"kind":"declaration","declaration_id":"D-2","period":"2025-09","division_code":"320100","industry":"INSTANT_DELIVERY","order_count":12.0,"amount_fen":84}"#.into(),
        worker_line("W2").replace(r#"["INSTANT_DELIVERY"]"#, r#""INSTANT_DELIVERY""#),
        // Epoch milliseconds as a JSON number are a time, not a guess.
        order_line("O-5", "W1").replace(r#""2025-07-02T11:00:00+08:00""#, "1751425200000"),
    ];
    let report = submit_lines(&gw, "ambiguous", &lines, &[]);
    let got: Vec<_> = report_brief(&report)
        .into_iter()
        .map(|l| (l.1, l.2, l.3, l.4))
        .collect();
    let r = |id: &str, code: &str, field: &str| {
        (
            id.to_string(),
            "REJECTED".to_string(),
            code.to_string(),
            field.to_string(),
        )
    };
    let ok = |id: &str| {
        (
            id.to_string(),
            "ACCEPTED".to_string(),
            String::new(),
            String::new(),
        )
    };
    assert_eq!(
        got,
        vec![
            ok("W1"),
            r("O-1", "MALFORMED_RECORD", "status"),
            r("O-2", "MALFORMED_RECORD", "order_id"),
            r("", "MALFORMED_RECORD", "order_id"),
            r("O-4", "MALFORMED_RECORD", "vehicle_plat"),
            r("D-1", "MALFORMED_RECORD", "order_count"),
            r("D-2", "MALFORMED_RECORD", "order_count"),
            r("W2", "MALFORMED_RECORD", "industries"),
            ok("O-5"),
        ]
    );
    assert!(
        message(&report, 2).contains("`status` appears twice"),
        "{}",
        message(&report, 2)
    );
    assert!(message(&report, 6).contains("JSON number, not a string"));
    let mut a = gw.client("platform-a").await;
    assert_eq!(
        stored_order_ids(&mut a).await,
        vec!["O-5"],
        "nothing refused was stored"
    );
}

#[tokio::test]
async fn surrounding_spaces_are_refused_with_the_fields_own_code() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let (period, _) = previous_month(10);
    let w = |f: &dyn Fn(&mut proto::Worker)| {
        let mut x = worker("W9");
        f(&mut x);
        rec_worker(x)
    };
    let o = |f: &dyn Fn(&mut proto::Order)| {
        let mut x = order("O9", "W1");
        f(&mut x);
        rec_order(x)
    };
    let cases: Vec<(proto::Record, &str, &str)> = vec![
        (
            w(&|x| x.worker_id = " W9".into()),
            "MALFORMED_RECORD",
            "worker_id",
        ),
        (
            w(&|x| x.id_number = "11010519491231002X ".into()),
            "INVALID_ID_NUMBER",
            "id_number",
        ),
        (
            w(&|x| x.mobile = "13800138000\u{3000}".into()),
            "INVALID_MOBILE",
            "mobile",
        ),
        (
            w(&|x| x.industries = vec![" INSTANT_DELIVERY".into()]),
            "INVALID_INDUSTRY",
            "industries[0]",
        ),
        (
            w(&|x| x.id_type = "RESIDENT_ID ".into()),
            "INVALID_ID_TYPE",
            "id_type",
        ),
        (
            w(&|x| x.status = "ACTIVE\t".into()),
            "INVALID_STATUS",
            "status",
        ),
        (
            o(&|x| x.status = "COMPLETED ".into()),
            "INVALID_STATUS",
            "status",
        ),
        (
            o(&|x| x.accepted_at = " 2025-07-02T11:00:00+08:00".into()),
            "INVALID_TIME",
            "accepted_at",
        ),
        (
            o(&|x| x.division_code = "320100 ".into()),
            "INVALID_DIVISION_CODE",
            "division_code",
        ),
        (
            o(&|x| x.vehicle_plate = " ".into()),
            "INVALID_PLATE",
            "vehicle_plate",
        ),
        (
            o(&|x| x.order_id = "O9 ".into()),
            "MALFORMED_RECORD",
            "order_id",
        ),
        (
            rec_declaration(declaration(
                "D9",
                &format!(" {period}"),
                "320100",
                "INSTANT_DELIVERY",
                0,
                0,
            )),
            "INVALID_PERIOD",
            "period",
        ),
    ];
    let mut records = vec![rec_worker(worker("W1"))];
    records.extend(cases.iter().map(|c| c.0.clone()));
    // A name is trimmed (records.md: INVALID_NAME is "empty after trimming").
    records.push(w(&|x| {
        x.worker_id = "W10".into();
        x.name = " 张三 ".into();
    }));
    let out = submit(&mut a, records).await;
    assert_eq!(one(&out.outcomes[0]), accepted());
    for (i, (_, code, field)) in cases.iter().enumerate() {
        let got = &out.outcomes[i + 1];
        let kind = got.kind.clone();
        assert_eq!(
            one(got),
            rejected(code, &format!("records[{}].{kind}.{field}", i + 1)),
            "case {i}: {}",
            got.message
        );
        assert!(
            got.message.contains("leading or trailing spaces") || got.message.contains("blank"),
            "case {i}: {}",
            got.message
        );
    }
    assert_eq!(one(out.outcomes.last().expect("last")), accepted());
    let listed = a
        .list_workers(proto::ListRequest {
            id: "W10".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let name = listed.workers[0].worker.as_ref().map(|w| w.name.clone());
    assert_eq!(name.as_deref(), Some("张*"), "stored trimmed");
}

// Kind 4: values must be plausible, not only well-formed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implausible_births_times_and_periods_are_refused() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    let (period, _) = previous_month(10);
    let with_id = |id: &str, first17: &str| {
        let mut w = worker(id);
        w.id_number = resident_id(first17);
        rec_worker(w)
    };
    let at = |id: &str, accepted: &str| {
        let mut o = order(id, "W1");
        o.accepted_at = accepted.into();
        rec_order(o)
    };
    let records = vec![
        with_id("WB1", "11010500010101002"),
        with_id("WB2", "11010518991231002"),
        with_id("WB3", "11010519000101002"),
        at("O1", "1751425200"),
        at("O2", "1751425200000000"),
        at("O3", "1970-01-21T06:30:25+08:00"),
        at("O4", "2025-07-02T11:00:00"),
        at("O5", &"9".repeat(31)),
        rec_declaration(declaration(
            "D1",
            "2021-12",
            "320100",
            "INSTANT_DELIVERY",
            0,
            0,
        )),
        rec_declaration(declaration(
            "D2",
            &period,
            "320100",
            "INSTANT_DELIVERY",
            0,
            0,
        )),
        {
            let mut w = worker("WB4");
            w.registered_at = "1999-12-31T23:59:59+08:00".into();
            rec_worker(w)
        },
    ];
    let out = submit(&mut a, records).await;
    let got: Vec<_> = out
        .outcomes
        .iter()
        .map(|o| (o.code.clone(), o.message.clone()))
        .collect();
    assert_eq!(got[0].0, "INVALID_ID_NUMBER");
    assert!(got[0].1.contains("before 1900"), "{}", got[0].1);
    assert_eq!(got[1].0, "INVALID_ID_NUMBER");
    assert_eq!(
        out.outcomes[2].outcome(),
        proto::Outcome::Accepted,
        "1900-01-01 is fine"
    );
    assert_eq!(got[3].0, "INVALID_TIME");
    assert!(
        got[3].1.contains("2000-01-01T00:00:00+08:00") && got[3].1.contains("epoch seconds"),
        "{}",
        got[3].1
    );
    assert_eq!(got[4].0, "INVALID_TIME");
    assert!(got[4].1.contains("microseconds"), "{}", got[4].1);
    assert_eq!(got[5].0, "INVALID_TIME");
    assert!(
        got[5]
            .1
            .contains("before the earliest accepted time 2000-01-01"),
        "{}",
        got[5].1
    );
    assert_eq!(got[6].0, "INVALID_TIME");
    assert!(got[6].1.contains("no offset"), "{}", got[6].1);
    assert_eq!(got[7].0, "INVALID_TIME");
    assert_eq!(got[8].0, "INVALID_PERIOD");
    assert!(
        got[8].1.contains("earliest accepted period 2022-07"),
        "{}",
        got[8].1
    );
    assert_ne!(out.outcomes[9].outcome(), proto::Outcome::Rejected);
    assert_eq!(got[10].0, "INVALID_TIME");

    // The same 10-digit number as a JSON number in a bulk file.
    let lines = [order_line("O6", "W1").replace(r#""2025-07-02T11:00:00+08:00""#, "1751425200")];
    let report = submit_lines(&gw, "seconds", &lines, &[]);
    assert_eq!(report_brief(&report)[0].3, "INVALID_TIME");
    assert!(
        message(&report, 1).contains("epoch seconds"),
        "{}",
        message(&report, 1)
    );
}

#[tokio::test]
async fn the_earliest_time_comes_from_configuration() {
    let gw = TestGateway::spawn_with(|c| {
        c.limits.earliest_time = "2025-06-15T00:00:00+08:00".parse().expect("time");
        c.limits.earliest_period = "2025-08".parse().expect("period");
    })
    .await;
    let mut a = gw.client("platform-a").await;
    let mut early = worker("W1");
    early.registered_at = "2025-06-01T08:00:00+08:00".into();
    let out = register(&mut a, vec![early]).await;
    assert_eq!(out.outcomes[0].code, "INVALID_TIME");
    assert!(
        out.outcomes[0]
            .message
            .contains("2025-06-15T00:00:00+08:00"),
        "{}",
        out.outcomes[0].message
    );
    let out = declare(
        &mut a,
        vec![declaration(
            "D1",
            "2025-07",
            "320100",
            "INSTANT_DELIVERY",
            0,
            0,
        )],
    )
    .await;
    assert_eq!(out.outcomes[0].code, "INVALID_PERIOD");
}

// Kind 6: records in one call are applied in order for every derived figure.

/// The issue's example as records: a declaration that matches the stored orders, then
/// a new order for the same key.
fn kind6_lines(period: &str, at: &str) -> Vec<String> {
    let order_at = |id: &str| {
        format!(
            r#"{{"kind":"order","order_id":"{id}","worker_id":"W1","industry":"INSTANT_DELIVERY","division_code":"320100","accepted_at":"{at}","completed_at":"{at}","status":"COMPLETED"}}"#
        )
    };
    vec![
        worker_line("W1"),
        order_at("O1"),
        format!(
            r#"{{"kind":"declaration","declaration_id":"D-1","period":"{period}","division_code":"320100","industry":"INSTANT_DELIVERY","order_count":1,"amount_fen":7}}"#
        ),
        order_at("O2"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declaration_is_judged_at_its_position_whatever_the_chunking() {
    let (period, at) = previous_month(11);
    // Declarations before the deadline (the last day of the next month).
    let on_time = |c: &mut oip_gateway::config::Config| c.fees.declaration_deadline_day = 31;
    // Over gRPC: worker and first order stored, then declaration + order in one call.
    let gw = TestGateway::spawn_with(on_time).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    report(
        &mut a,
        vec![order_at("O1", "W1", "INSTANT_DELIVERY", "320100", &at)],
    )
    .await;
    let out = submit(
        &mut a,
        vec![
            rec_declaration(declaration(
                "D-1",
                &period,
                "320100",
                "INSTANT_DELIVERY",
                1,
                7,
            )),
            rec_order(order_at("O2", "W1", "INSTANT_DELIVERY", "320100", &at)),
        ],
    )
    .await;
    assert_eq!(one(&out.outcomes[0]), accepted(), "{:?}", out.outcomes[0]);
    let r = out.outcomes[0].reconciliation.clone().expect("figures");
    assert_eq!(r.status, "MATCHED");
    assert_eq!(out.outcomes[1].warnings, vec!["LATE_ORDER"]);
    // The order after it then moves the figures: MISMATCH now, sent to tax as an update.
    assert_eq!(declaration_status(&mut a).await["D-1"].0, "MISMATCH");
    await_delivery_states(&mut a, "declaration", "D-1", &["DELIVERED", "DELIVERED"]).await;

    // In a bulk file: the same report at batch sizes 1000, 50, 3 and 1.
    let mut reports = vec![];
    for batch in ["1000", "50", "3", "1"] {
        let gw = TestGateway::spawn_with(on_time).await;
        let report = submit_lines(
            &gw,
            "kind6",
            &kind6_lines(&period, &at),
            &["--batch-size", batch],
        );
        let got = report_brief(&report);
        assert_eq!(got[2].2, "ACCEPTED", "batch size {batch}: {got:?}");
        reports.push(std::fs::read(&report).expect("report"));
    }
    assert!(
        reports.windows(2).all(|w| w[0] == w[1]),
        "identical reports"
    );
}

// Kind 7: every value is bounded before it is echoed, stored or paged.

#[tokio::test]
async fn long_ids_are_cut_when_echoed_and_stored_and_pages_stay_readable() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let long = "O".repeat(100_000);
    let out = report(&mut a, vec![order(&long, "W1")]).await;
    let o = &out.outcomes[0];
    assert_eq!(one(o), rejected("FIELD_TOO_LONG", "orders[0].order_id"));
    assert_eq!(o.id, format!("{}…", "O".repeat(64)));
    assert!(o.message.contains("100000 characters"), "{}", o.message);
    // 30 rejections with 1 MiB ids: the page of 1000 still reads.
    for i in 0..30 {
        let mut ord = order(&format!("{i}{}", "x".repeat(1 << 20)), "W1");
        ord.status = "DONE".into();
        report(&mut a, vec![ord]).await;
    }
    let page = a
        .list_rejections(proto::ListRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("a page of 1000 rejections")
        .into_inner();
    assert_eq!(page.rejections.len(), 31);
    assert!(
        page.rejections
            .iter()
            .all(|r| r.id.chars().count() == 65 && r.id.ends_with('…'))
    );
    assert!(page.next_page_token.is_empty());
}

#[tokio::test]
async fn pages_are_cut_by_bytes_and_their_tokens_are_opaque() {
    let gw = TestGateway::spawn_with(|c| c.limits.max_page_bytes = 1024).await;
    let mut a = gw.client("platform-a").await;
    let orders: Vec<_> = (0..40)
        .map(|i| order(&format!("R{i:02}"), "W-NOBODY"))
        .collect();
    report(&mut a, orders).await;
    let mut seen = vec![];
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = a
            .list_rejections(proto::ListRequest {
                page_size: 1000,
                page_token: token.clone(),
                id: String::new(),
            })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        let bytes: usize = page
            .rejections
            .iter()
            .map(prost::Message::encoded_len)
            .sum();
        assert!(bytes <= 1024, "{bytes} bytes in a page");
        seen.extend(page.rejections.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(
            !page.next_page_token.contains('R'),
            "opaque: {}",
            page.next_page_token
        );
        token = page.next_page_token;
    }
    assert!(pages > 2, "cut by bytes, not by the 1000 asked");
    let want: Vec<_> = (0..40).map(|i| format!("R{i:02}")).collect();
    assert_eq!(seen, want, "every rejection once, in order");

    // A token of another listing, or a made-up one, is INVALID_ARGUMENT.
    for bad in [token.as_str(), "17", "R10"] {
        let err = a
            .list_workers(proto::ListRequest {
                page_token: bad.into(),
                ..Default::default()
            })
            .await
            .expect_err("foreign token");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
    }
}

#[tokio::test]
async fn echoed_codes_never_carry_personal_data() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let mut o = order("O1", "W1");
    o.industry = "11010519491231002X".into();
    let mut o2 = order("O2", "W1");
    o2.division_code = "13800138000".into();
    let mut o3 = order("O3", "W1");
    o3.status = "张三".into();
    let out = report(&mut a, vec![o, o2, o3]).await;
    let allowed = ["INSTANT_DELIVERY", "not shown", "COMPLETED or CANCELLED"];
    for ((o, secret), says) in out
        .outcomes
        .iter()
        .zip(["1101051949", "13800138000", "张三"])
        .zip(allowed)
    {
        assert!(!o.message.contains(secret), "{}", o.message);
        assert!(o.message.contains(says), "{}", o.message);
    }
    // Code-like values (a passport number, a name in pinyin) are not echoed either.
    let mut o4 = order("O4", "W1");
    o4.status = "ZhangSan".into();
    let mut w = worker("W2");
    w.id_type = "E12345678".into();
    let out = submit(&mut a, vec![rec_order(o4), rec_worker(w)]).await;
    assert!(
        !out.outcomes[0].message.contains("ZhangSan"),
        "{}",
        out.outcomes[0].message
    );
    assert!(
        !out.outcomes[1].message.contains("E12345678"),
        "{}",
        out.outcomes[1].message
    );
    // Nor are record ids: a platform may use a mobile as its worker id.
    let out = report(&mut a, vec![order("O5", "13912345678")]).await;
    assert_eq!(out.outcomes[0].code, "WORKER_NOT_REGISTERED");
    assert!(
        !out.outcomes[0].message.contains("13912345678"),
        "{}",
        out.outcomes[0].message
    );
    let kept = a
        .list_rejections(proto::ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(
        kept.rejections
            .iter()
            .all(|r| !r.message.contains("1101051949"))
    );
}

#[tokio::test]
async fn the_latest_declaration_and_every_revision_do_not_depend_on_the_chunking() {
    let (period, _) = previous_month(10);
    let (earlier, _) = {
        use chrono::{Datelike, Duration};
        let p = oip_gateway::domain::period::Period::parse(&period).expect("period");
        let before = p.first_day() - Duration::days(1);
        (format!("{:04}-{:02}", before.year(), before.month()), ())
    };
    let x1 = declaration("X", &earlier, "320300", "INSTANT_DELIVERY", 0, 0);
    let y1 = declaration("Y", &period, "320300", "INSTANT_DELIVERY", 0, 0);
    let x2 = proto::Declaration {
        revision: Some(2),
        ..declaration("X", &period, "320300", "INSTANT_DELIVERY", 0, 0)
    };
    let mut states = vec![];
    for together in [true, false] {
        let gw = TestGateway::spawn().await;
        let mut a = gw.client("platform-a").await;
        let mut w2 = worker("W1");
        w2.revision = Some(2);
        w2.mobile = "13900139000".into();
        let records = vec![
            rec_worker(worker("W1")),
            rec_worker(w2),
            rec_declaration(x1.clone()),
            rec_declaration(y1.clone()),
            rec_declaration(x2.clone()),
        ];
        if together {
            submit(&mut a, records).await;
        } else {
            for r in records {
                submit(&mut a, vec![r]).await;
            }
        }
        let status = declaration_status(&mut a).await;
        let current: Vec<_> = status
            .iter()
            .map(|(id, s)| (id.clone(), s.0.clone()))
            .collect();
        // Every accepted revision is forwarded, however the records were chunked.
        await_delivery_states(&mut a, "worker", "W1", &["DELIVERED", "DELIVERED"]).await;
        let keys: Vec<String> = a
            .list_deliveries(proto::ListDeliveriesRequest {
                kind: "declaration".into(),
                id: "X".into(),
            })
            .await
            .expect("deliveries")
            .into_inner()
            .deliveries
            .into_iter()
            .map(|d| d.idempotency_key)
            .filter(|k| !k.contains("/reconciliation/"))
            .collect();
        assert_eq!(keys.len(), 2, "X/1 and X/2: {keys:?}");
        states.push(current);
    }
    assert_eq!(states[0], states[1], "the same declaration is current");
    assert!(
        states[0].contains(&("Y".to_string(), "SUPERSEDED".to_string())),
        "X's second revision, received last, is current: {:?}",
        states[0]
    );
}

#[tokio::test]
async fn implausibly_large_figures_and_endless_orders_are_refused() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    let (period, _) = previous_month(10);
    let out = declare(
        &mut a,
        vec![
            declaration("D1", &period, "320100", "INSTANT_DELIVERY", i64::MAX, 7),
            declaration("D2", &period, "320100", "INSTANT_DELIVERY", 1, i64::MAX),
        ],
    )
    .await;
    assert_eq!(
        out.outcomes.iter().map(one).collect::<Vec<_>>(),
        vec![
            rejected("INVALID_AMOUNT", "declarations[0].order_count"),
            rejected("INVALID_AMOUNT", "declarations[1].amount_fen"),
        ]
    );
    let mut long = order("O1", "W1");
    long.completed_at = "2026-01-02T11:35:00+08:00".into();
    long.accepted_at = "2025-07-02T11:00:00+08:00".into();
    let out = report(&mut a, vec![long]).await;
    assert_eq!(
        one(&out.outcomes[0]),
        rejected("INVALID_TIME_RANGE", "orders[0].completed_at")
    );
    assert!(
        out.outcomes[0].message.contains("72 hours"),
        "{}",
        out.outcomes[0].message
    );
}
