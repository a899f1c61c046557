//! Issue 13's "no behaviour changes", kept: a generated file with every kind of outcome
//! (valid records, duplicates, corrections that cancel or move an order, same-revision
//! conflicts, invalid and malformed lines, orders of unknown workers, declarations that
//! do not match and come late, late orders after them, declaration corrections,
//! accidents) gives, byte for byte, the report and the stored state that the gateway
//! gave before issue 13's speed work (b0b1d75: one transaction per call, an outbox row
//! per item in the record index, no kept state). The digests below were printed by this
//! very test run on that commit (`OIP_BEHAVIOUR_PRINT=1`); a change of outcome, of a
//! stored figure or of a delivery key fails it. A change made on purpose replaces the
//! digest it changes, and says why in its commit.
//!
//! Compared: the `submit` report; and, sorted, the columns that carry behaviour of
//! orders, workers (not the sealed personal fields, whose nonces differ per run),
//! rejections, volume statements, daily enrolments (days with orders: a day that lost
//! its last order keeps its row at 0 as its items' anchor since 20261201000002),
//! declarations, closed and released months, accidents, the platforms' batch counts,
//! and every outbox item's destination, record key and idempotency key (batch numbers
//! included). Not compared: times of receipt, delivery states (they depend on the
//! simulator's timing) and the audit log (one entry per batch since issue 13).

use oip_gateway::config::StatementRelease;
use oip_gateway::submit;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::common::*;

/// The file: a `loadgen` file (300 workers, 3,000 orders, seed 13) and, after it, the
/// faults and corrections, each picked from its orders by a fixed stride.
fn generated_file() -> Vec<u8> {
    let spec = oip_gateway::loadgen::LoadSpec {
        workers: 300,
        orders: 3000,
        start: chrono::NaiveDate::from_ymd_opt(2025, 9, 1).expect("date"),
        id_prefix: "G".into(),
        seed: 13,
        shape: oip_gateway::loadgen::Shape::Scattered,
    };
    let mut base = Vec::new();
    oip_gateway::loadgen::write(&spec, &mut base).expect("loadgen");
    let text = String::from_utf8(base).expect("utf-8");
    let orders: Vec<Value> = text
        .lines()
        .filter(|l| l.contains(r#""kind":"order""#))
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    // The n-th pick of a fault kind `k`: spread over the file, different per kind.
    let pick = |k: usize, n: usize| orders[(n * 211 + k * 97) % orders.len()].clone();
    let set = |o: &mut Value, key: &str, v: Value| {
        o.as_object_mut().expect("object").insert(key.into(), v);
    };
    let mut out: Vec<String> = text.lines().map(String::from).collect();
    for n in 0..30 {
        out.push(pick(1, n).to_string());
    }
    for n in 0..50 {
        let mut o = pick(2, n);
        set(&mut o, "revision", json!(2));
        if n % 2 == 1 {
            set(&mut o, "status", json!("CANCELLED"));
        } else {
            let moved = if o["division_code"] == "320500" {
                "320200"
            } else {
                "320500"
            };
            set(&mut o, "division_code", json!(moved));
        }
        out.push(o.to_string());
    }
    for n in 0..10 {
        let mut o = pick(3, n);
        let later = o["completed_at"].as_i64().expect("millis") + 60_000;
        set(&mut o, "completed_at", json!(later));
        out.push(o.to_string());
    }
    for n in 0..25 {
        let mut o = pick(4, n);
        let id = format!("{}X", o["order_id"].as_str().expect("id"));
        set(&mut o, "order_id", json!(id));
        match n % 5 {
            0 => set(&mut o, "division_code", json!("999999")),
            1 => {
                o.as_object_mut().expect("object").remove("worker_id");
            }
            2 => set(&mut o, "status", json!("DONE")),
            3 => {
                let after = o["completed_at"].as_i64().expect("millis") + 1000;
                set(&mut o, "accepted_at", json!(after));
            }
            _ => set(&mut o, "industry", json!("TAXI")),
        }
        out.push(o.to_string());
    }
    out.push(r#"{"kind":"order","#.into());
    for n in 0..10 {
        let mut o = pick(5, n);
        let id = format!("{}U", o["order_id"].as_str().expect("id"));
        set(&mut o, "order_id", json!(id));
        set(&mut o, "worker_id", json!(format!("NOBODY{n}")));
        out.push(o.to_string());
    }
    let combos: Vec<(String, String)> = ["320100", "320200", "320500", "320800"]
        .iter()
        .flat_map(|d| {
            ["RIDE_HAILING", "INSTANT_DELIVERY", "INTRACITY_FREIGHT"]
                .iter()
                .map(move |i| (d.to_string(), i.to_string()))
        })
        .collect();
    for (n, (division, industry)) in combos.iter().enumerate() {
        out.push(
            json!({"kind": "declaration", "declaration_id": format!("D{n}"), "period": "2025-09",
                   "division_code": division, "industry": industry,
                   "order_count": n * 3, "amount_fen": n * 21})
            .to_string(),
        );
    }
    for n in 0..20 {
        let mut o = pick(6, n);
        let id = format!("{}L", o["order_id"].as_str().expect("id"));
        set(&mut o, "order_id", json!(id));
        out.push(o.to_string());
    }
    for (n, (division, industry)) in combos.iter().take(2).enumerate() {
        out.push(
            json!({"kind": "declaration", "declaration_id": format!("D{n}"), "revision": 2,
                   "period": "2025-09", "division_code": division, "industry": industry,
                   "order_count": n * 3 + 1, "amount_fen": n * 21 + 7})
            .to_string(),
        );
    }
    for n in 0..10 {
        let o = pick(7, n);
        out.push(
            json!({"kind": "accident", "report_id": format!("A{n}"), "worker_id": o["worker_id"],
                   "order_id": o["order_id"],
                   "occurred_at": o["accepted_at"].as_i64().expect("millis") + 60_000,
                   "division_code": o["division_code"], "injury_kind": "FALL"})
            .to_string(),
        );
    }
    let mut bytes = out.join("\n").into_bytes();
    bytes.push(b'\n');
    bytes
}

/// What is compared: (name, SQL giving one canonical line per row of the stored state).
const STATE: [(&str, &str); 12] = [
    ("platforms", "SELECT uscc || ' ' || batches FROM platforms"),
    (
        "workers",
        "SELECT quote(worker_id) || quote(revision) || quote(content_hash) || quote(id_type)
         || quote(industries) || quote(registered_at) || quote(status) || quote(left_at)
         || quote(id_number_hash) FROM workers",
    ),
    (
        "orders",
        "SELECT quote(order_id) || quote(revision) || quote(content_hash) || quote(worker_id)
         || quote(industry) || quote(division_code) || quote(accepted_at) || quote(completed_at)
         || quote(status) || quote(vehicle_plate) FROM orders",
    ),
    (
        "rejections",
        "SELECT quote(kind) || quote(record_id) || quote(revision) || quote(code) || quote(field)
         || quote(message) FROM rejections",
    ),
    (
        "volume_statements",
        "SELECT quote(period) || quote(industry) || quote(division_code) || quote(billable_count)
         FROM volume_statements",
    ),
    (
        "daily_enrolments",
        "SELECT quote(worker_id) || quote(day) || quote(division_code) || quote(order_count)
         FROM daily_enrolments WHERE order_count > 0",
    ),
    (
        "declarations",
        "SELECT quote(declaration_id) || quote(revision) || quote(content_hash) || quote(period)
         || quote(division_code) || quote(industry) || quote(order_count) || quote(amount_fen)
         FROM declarations",
    ),
    ("closed_periods", "SELECT quote(period) FROM closed_periods"),
    (
        "released_periods",
        "SELECT quote(period) FROM released_periods",
    ),
    (
        "accidents",
        "SELECT quote(report_id) || quote(revision) || quote(content_hash) || quote(worker_id)
         || quote(order_id) || quote(occurred_at) || quote(division_code) || quote(injury_kind)
         FROM accidents",
    ),
    (
        "outbox",
        "SELECT quote(destination) || quote(record_key) || quote(idempotency_key) FROM outbox",
    ),
    // The `submit` report, read from its file (no SQL).
    ("report", ""),
];

/// The digests b0b1d75 gave (see the module's documentation).
const EXPECTED: [(&str, &str); 12] = [
    (
        "platforms",
        "7a4291ff24188c5423794092375669c083056dc9691bcb7021fed57cca79c34f",
    ),
    (
        "workers",
        "863f68f46d70416a077f4b02175b5e9986d5d022d7be5e7ed6c6a54bd89983ee",
    ),
    (
        "orders",
        "d6ceb2f05fa282c60fdf75a422768ebd0962cb78cd5f11d8f5ed03586f8b9a88",
    ),
    (
        "rejections",
        "787ca7b88fd40d845d8f55873181ed6602af89656a62107a14b13fe468dc83c8",
    ),
    (
        "volume_statements",
        "32fb6c08a86e6a4c70d823b5d6cbb5c23a2c6d02d013c16426a81a523a352f4d",
    ),
    (
        "daily_enrolments",
        "6fb2a8454f395cdbb0092e734a3d81aaa8a8241ae00d180bd4fd961f41361096",
    ),
    (
        "declarations",
        "1e84945d4d1ecd717a59120f49d1258d563a39065603f001cbe2ac2fca9c5485",
    ),
    (
        "closed_periods",
        "6117d17d9363d733fe98b2d9a8dfc76024ab9f6bf1ae3bf63bbcc805ed3e5192",
    ),
    (
        "released_periods",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ),
    (
        "accidents",
        "628507468e52b3e469938b937e7782a8f99654ae357ed5a4efae1775e985d1d3",
    ),
    (
        "outbox",
        "1013e13a429b50e42337a14a4c727eb8ed47bb8ed9aad47b3966f0a9acf27b1f",
    ),
    (
        "report",
        "0c6e2ab33eda3dd10bb17705c976c262a52b7dc5fcb8f05b8a218f53cd4f7132",
    ),
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_generated_file_gives_the_report_and_state_it_gave_before_issue_13() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |c| {
        // The month's release would race the file's chunks (timing, not behaviour).
        c.forward.statement_release = StatementRelease::AfterMonthEnd;
        c.forward.statement_release_days = 100_000;
    })
    .await;
    let file = gw.dir.path().join("behaviour.jsonl");
    std::fs::write(&file, generated_file()).expect("write");
    let report = gw.dir.path().join("report.jsonl");
    let opts = submit::SubmitOptions {
        // One chunk at a time: each chunk's batch number is then fixed.
        window: 1,
        compress: false,
        ..gw.submit_options(&file, &report, 500)
    };
    let summary = submit::run(&opts, submit::no_stop())
        .await
        .expect("submit runs");
    assert!(summary.complete(), "{summary:?}");
    // The file reaches every kind of outcome it was made for.
    let text = std::fs::read_to_string(&report).expect("report");
    for what in [
        r#""outcome":"ACCEPTED""#,
        r#""outcome":"DUPLICATE""#,
        "REVISION_CONFLICT",
        "INVALID_DIVISION_CODE",
        "MISSING_FIELD",
        "INVALID_STATUS",
        "INVALID_TIME_RANGE",
        "INVALID_INDUSTRY",
        "MALFORMED_RECORD",
        "WORKER_NOT_REGISTERED",
        "DECLARATION_MISMATCH",
        "LATE_DECLARATION",
        "LATE_ORDER",
    ] {
        assert!(text.contains(what), "no {what} in the report");
    }
    let pool = gw.sql().await;
    let mut got = Vec::new();
    for (name, sql) in STATE {
        let text = if sql.is_empty() {
            std::fs::read(&report).expect("report")
        } else {
            let (text,): (Option<String>,) = sqlx::query_as(&format!(
                "WITH t(line) AS ({sql}) SELECT group_concat(line, char(10)) FROM (SELECT line FROM t ORDER BY line)"
            ))
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            text.unwrap_or_default().into_bytes()
        };
        got.push((name, hex(&Sha256::digest(&text))));
    }
    pool.close().await;
    gw.stop().await;
    if std::env::var_os("OIP_BEHAVIOUR_PRINT").is_some() {
        for (name, digest) in &got {
            println!("    (\"{name}\", \"{digest}\"),");
        }
    }
    let differing: Vec<_> = got
        .iter()
        .zip(EXPECTED)
        .filter(|((_, g), (_, e))| g != e)
        .map(|((name, _), _)| *name)
        .collect();
    assert!(
        differing.is_empty(),
        "behaviour changed in {differing:?} (OIP_BEHAVIOUR_PRINT=1 prints the digests)"
    );
}
