//! Every worker and order error code, with its field path; mixed batches store exactly
//! their valid records.

use std::collections::BTreeSet;

use oip_gateway::domain::ErrorCode;
use oip_gateway::proto::{self, Worker};

use crate::common::*;

type Case = (&'static str, proto::Record, &'static str, &'static str);

fn w(f: impl FnOnce(&mut Worker)) -> proto::Record {
    let mut x = worker("WX");
    f(&mut x);
    rec_worker(x)
}

fn o(f: impl FnOnce(&mut proto::Order)) -> proto::Record {
    let mut x = order("OX", "W-OK");
    f(&mut x);
    rec_order(x)
}

fn platform_a_cases() -> Vec<Case> {
    vec![
        (
            "empty worker_id",
            w(|x| x.worker_id.clear()),
            "MISSING_FIELD",
            "worker_id",
        ),
        (
            "long worker_id",
            w(|x| x.worker_id = "W".repeat(65)),
            "FIELD_TOO_LONG",
            "worker_id",
        ),
        (
            "control char in id",
            w(|x| x.worker_id = "W\u{1}".into()),
            "MALFORMED_RECORD",
            "worker_id",
        ),
        (
            "id_type",
            w(|x| x.id_type = "PASSPORT".into()),
            "INVALID_ID_TYPE",
            "id_type",
        ),
        (
            "check char",
            w(|x| x.id_number = "110105194912310021".into()),
            "INVALID_ID_NUMBER",
            "id_number",
        ),
        (
            "province",
            w(|x| x.id_number = resident_id("99010519491231002")),
            "INVALID_ID_NUMBER",
            "id_number",
        ),
        (
            "birth date",
            w(|x| x.id_number = resident_id("11010519490231002")),
            "INVALID_ID_NUMBER",
            "id_number",
        ),
        (
            "full-width",
            w(|x| x.id_number = "１１010519491231002X".into()),
            "INVALID_ID_NUMBER",
            "id_number",
        ),
        (
            "missing id",
            w(|x| x.id_number.clear()),
            "MISSING_FIELD",
            "id_number",
        ),
        (
            "underage",
            w(|x| x.id_number = resident_id("32010220100101123")),
            "UNDERAGE_WORKER",
            "id_number",
        ),
        (
            "blank name",
            w(|x| x.name = "   ".into()),
            "INVALID_NAME",
            "name",
        ),
        (
            "control in name",
            w(|x| x.name = "张\u{7}三".into()),
            "INVALID_NAME",
            "name",
        ),
        (
            "long name",
            w(|x| x.name = "张".repeat(51)),
            "INVALID_NAME",
            "name",
        ),
        (
            "missing name",
            w(|x| x.name.clear()),
            "MISSING_FIELD",
            "name",
        ),
        (
            "mobile",
            w(|x| x.mobile = "12800138000".into()),
            "INVALID_MOBILE",
            "mobile",
        ),
        (
            "no industries",
            w(|x| x.industries.clear()),
            "MISSING_FIELD",
            "industries",
        ),
        (
            "unknown industry",
            w(|x| x.industries = vec!["INSTANT_DELIVERY".into(), "TAKEAWAY".into()]),
            "INVALID_INDUSTRY",
            "industries[1]",
        ),
        (
            "bad time",
            w(|x| x.registered_at = "yesterday".into()),
            "INVALID_TIME",
            "registered_at",
        ),
        (
            "future time",
            w(|x| x.registered_at = "2099-01-01T00:00:00+08:00".into()),
            "INVALID_TIME",
            "registered_at",
        ),
        (
            "status",
            w(|x| x.status = "FIRED".into()),
            "INVALID_STATUS",
            "status",
        ),
        (
            "left without left_at",
            w(|x| x.status = "LEFT".into()),
            "INVALID_STATUS",
            "left_at",
        ),
        (
            "left before registered",
            w(|x| {
                x.status = "LEFT".into();
                x.left_at = "2025-06-01T00:00:00+08:00".into();
            }),
            "INVALID_TIME",
            "left_at",
        ),
        (
            "empty order_id",
            o(|x| x.order_id.clear()),
            "MISSING_FIELD",
            "order_id",
        ),
        (
            "long order_id",
            o(|x| x.order_id = "O".repeat(65)),
            "FIELD_TOO_LONG",
            "order_id",
        ),
        (
            "unknown worker",
            o(|x| x.worker_id = "W-NOBODY".into()),
            "WORKER_NOT_REGISTERED",
            "worker_id",
        ),
        (
            "worker had left",
            o(|x| x.worker_id = "W-LEFT".into()),
            "WORKER_NOT_ACTIVE",
            "worker_id",
        ),
        (
            "before registration",
            o(|x| x.accepted_at = "2025-06-30T10:00:00+08:00".into()),
            "WORKER_NOT_ACTIVE",
            "worker_id",
        ),
        (
            "unknown industry",
            o(|x| x.industry = "TAKEAWAY".into()),
            "INVALID_INDUSTRY",
            "industry",
        ),
        (
            "worker's industry",
            o(|x| x.industry = "RIDE_HAILING".into()),
            "INDUSTRY_NOT_REGISTERED",
            "industry",
        ),
        (
            "unknown division",
            o(|x| x.division_code = "329999".into()),
            "INVALID_DIVISION_CODE",
            "division_code",
        ),
        (
            "not served",
            o(|x| x.division_code = "110100".into()),
            "INVALID_DIVISION_CODE",
            "division_code",
        ),
        (
            "province",
            o(|x| x.division_code = "320000".into()),
            "INVALID_DIVISION_CODE",
            "division_code",
        ),
        (
            "bad accepted_at",
            o(|x| x.accepted_at = "2025-07-02".into()),
            "INVALID_TIME",
            "accepted_at",
        ),
        (
            "future",
            o(|x| x.accepted_at = "4102444800000".into()),
            "INVALID_TIME",
            "accepted_at",
        ),
        (
            "completed missing",
            o(|x| x.completed_at.clear()),
            "MISSING_FIELD",
            "completed_at",
        ),
        (
            "range",
            o(|x| x.completed_at = "2025-07-02T10:59:59+08:00".into()),
            "INVALID_TIME_RANGE",
            "completed_at",
        ),
        (
            "status",
            o(|x| x.status = "DONE".into()),
            "INVALID_STATUS",
            "status",
        ),
        (
            "plate",
            o(|x| x.vehicle_plate = "苏A1234".into()),
            "INVALID_PLATE",
            "vehicle_plate",
        ),
        (
            "plate letter O",
            o(|x| x.vehicle_plate = "苏AO2345".into()),
            "INVALID_PLATE",
            "vehicle_plate",
        ),
        (
            "before pilot",
            o(|x| {
                x.worker_id = "W-EARLY".into();
                x.accepted_at = "2025-06-30T23:59:59+08:00".into();
                x.completed_at = "2025-07-01T00:30:00+08:00".into();
            }),
            "PLATFORM_NOT_IN_PILOT",
            "accepted_at",
        ),
    ]
}

fn platform_b_cases() -> Vec<Case> {
    vec![
        (
            "platform industry",
            w(|x| x.industries = vec!["RIDE_HAILING".into()]),
            "INDUSTRY_NOT_REGISTERED",
            "industries[0]",
        ),
        (
            "order industry",
            o(|x| x.industry = "RIDE_HAILING".into()),
            "INDUSTRY_NOT_REGISTERED",
            "industry",
        ),
        (
            "no pilot in division",
            o(|x| x.division_code = "320200".into()),
            "PLATFORM_NOT_IN_PILOT",
            "division_code",
        ),
        (
            "Suzhou starts 2026",
            o(|x| x.division_code = "320500".into()),
            "PLATFORM_NOT_IN_PILOT",
            "accepted_at",
        ),
    ]
}

/// The workers the cases refer to: one fine, one who left, one registered early.
fn prerequisites() -> Vec<Worker> {
    let mut left = worker("W-LEFT");
    left.status = "LEFT".into();
    left.left_at = "2025-07-02T00:00:00+08:00".into();
    let mut early = worker("W-EARLY");
    early.registered_at = "2025-06-01T08:00:00+08:00".into();
    vec![worker("W-OK"), left, early]
}

async fn run_cases(client: &mut Client, cases: &[Case]) -> BTreeSet<String> {
    let records = cases.iter().map(|c| c.1.clone()).collect();
    let out = submit(client, records).await;
    assert_eq!(out.outcomes.len(), cases.len());
    let mut codes = BTreeSet::new();
    for (i, ((name, record, code, field), got)) in cases.iter().zip(&out.outcomes).enumerate() {
        let kind = match record.kind {
            Some(proto::record::Kind::Worker(_)) => "worker",
            _ => "order",
        };
        assert_eq!(got.outcome(), proto::Outcome::Rejected, "{name}: {got:?}");
        assert_eq!(got.code, *code, "{name}: {got:?}");
        assert_eq!(got.field, format!("records[{i}].{kind}.{field}"), "{name}");
        assert_eq!(got.index as usize, i);
        assert!(!got.message.is_empty(), "{name}: a message");
        codes.insert(got.code.clone());
    }
    codes
}

#[tokio::test]
async fn every_worker_and_order_error_code_with_its_field_path() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let mut b = gw.client("platform-b").await;
    for c in [&mut a, &mut b] {
        let out = register(c, prerequisites()).await;
        assert_eq!(brief(&out), vec![accepted(); 3]);
    }
    let mut codes = run_cases(&mut a, &platform_a_cases()).await;
    codes.extend(run_cases(&mut b, &platform_b_cases()).await);

    // REVISION_CONFLICT and STALE_REVISION are covered in revisions.rs; every other
    // code of the worker and order tables must have appeared here.
    let not_for_workers_or_orders = [
        ErrorCode::InvalidPeriod,
        ErrorCode::InvalidAmount,
        ErrorCode::InvalidInjuryKind,
        ErrorCode::OrderNotFound,
        ErrorCode::OrderWorkerMismatch,
        ErrorCode::RevisionConflict,
        ErrorCode::StaleRevision,
    ];
    let expected: BTreeSet<String> = ErrorCode::ALL
        .into_iter()
        .filter(|c| !not_for_workers_or_orders.contains(c))
        .map(|c| c.as_str().to_string())
        .collect();
    assert_eq!(codes, expected);

    // Nothing rejected was stored; every rejection is kept for read-back.
    assert!(stored_order_ids(&mut a).await.is_empty());
    let kept = a
        .list_rejections(proto::ListRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(kept.rejections.len(), platform_a_cases().len());
    assert!(
        kept.rejections
            .iter()
            .all(|r| !r.code.is_empty() && !r.field.is_empty())
    );
}

#[tokio::test]
async fn messages_name_no_personal_data() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let mut bad = worker("W1");
    bad.id_number = "110105194912310021".into();
    let mut bad_mobile = worker("W2");
    bad_mobile.mobile = "12800138000".into();
    let out = register(&mut a, vec![bad, bad_mobile]).await;
    for o in &out.outcomes {
        for secret in ["110105194912310021", "12800138000", "张三丰"] {
            assert!(!o.message.contains(secret), "{o:?}");
        }
    }
}

#[tokio::test]
async fn a_mixed_batch_stores_exactly_its_valid_records() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let mut records = vec![rec_worker(worker("W1"))];
    let mut expected = vec![];
    for i in 0..20 {
        let mut ord = order(&format!("O{i:02}"), "W1");
        if i % 3 == 0 {
            ord.division_code = "110100".into();
        } else if i % 7 == 0 {
            ord.worker_id = "W-NOBODY".into();
        } else {
            expected.push(ord.order_id.clone());
        }
        records.push(rec_order(ord));
    }
    let out = submit(&mut a, records).await;
    let summary = out.summary.expect("summary");
    assert_eq!(summary.accepted as usize, 1 + expected.len());
    assert_eq!(summary.rejected as usize, 20 - expected.len());
    assert_eq!(stored_order_ids(&mut a).await, expected);
}

#[tokio::test]
async fn records_in_one_batch_see_each_other_in_order() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    // An order before its worker is rejected; the same order after the worker passes.
    let out = submit(
        &mut a,
        vec![
            rec_order(order("O1", "W1")),
            rec_worker(worker("W1")),
            rec_order(order("O2", "W1")),
        ],
    )
    .await;
    let b = brief(&out);
    assert_eq!(b[0].1, "WORKER_NOT_REGISTERED");
    assert_eq!(b[1..], [accepted(), accepted()]);
}
