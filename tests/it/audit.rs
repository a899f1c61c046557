//! The audit log: one entry per call, chained by hash; `VerifyAudit` names the first
//! altered or missing entry; a call whose entry cannot be written fails; retention
//! removes old entries without breaking verification.

use oip_gateway::certs::DEMO_PLATFORM_A;
use oip_gateway::domain::audit::{AuditEntry, GENESIS};
use oip_gateway::proto;
use oip_gateway::store::AuditRepo;
use oip_gateway::store::sqlite::SqliteStore;
use tonic::Code;

use crate::common::*;

async fn verify(admin: &mut Admin) -> proto::VerifyAuditResponse {
    admin
        .verify_audit(proto::VerifyAuditRequest {})
        .await
        .expect("verify")
        .into_inner()
}

#[tokio::test]
async fn verify_passes_on_an_untouched_log_and_names_an_altered_or_deleted_entry() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    let mut a = gw.client("platform-a").await;
    for i in 0..5 {
        register(&mut a, vec![worker(&format!("W{i}"))]).await;
    }
    let listed = a
        .list_workers(proto::ListRequest::default())
        .await
        .expect("list");
    assert_eq!(listed.get_ref().workers.len(), 5);
    let mut admin = gw.admin().await;
    let v = verify(&mut admin).await;
    assert!(v.ok, "{v:?}");
    assert_eq!(
        v.checked, 6,
        "five writes (one entry each, with their records) and a read before the verification"
    );

    // Each entry names the platform touched and the records carried or returned.
    let pool = gw.sql().await;
    let entries: Vec<_> = audit_entries(&pool, PLATFORM_A_ID)
        .await
        .into_iter()
        .map(|(action, outcome, _, scope, records)| (action, outcome, scope, records))
        .collect();
    let register = |outcome: &str| {
        (
            "oip.v1.PlatformService/RegisterWorkers".to_string(),
            outcome.to_string(),
            DEMO_PLATFORM_A.to_string(),
            1,
        )
    };
    // Each write: one entry, written in the transaction that stores its records.
    let five: Vec<_> = (0..5).map(|_| register("OK")).collect();
    assert_eq!(entries[..5], five);
    assert_eq!(
        entries[5],
        (
            "oip.v1.PlatformService/ListWorkers".to_string(),
            "OK".to_string(),
            DEMO_PLATFORM_A.to_string(),
            5
        )
    );

    let original: (i64,) = sqlx::query_as("SELECT records FROM audit_log WHERE seq = 3")
        .fetch_one(&pool)
        .await
        .expect("row 3");
    sqlx::query("UPDATE audit_log SET records = records + 1 WHERE seq = 3")
        .execute(&pool)
        .await
        .expect("alter");
    let v = verify(&mut admin).await;
    assert!(!v.ok);
    assert_eq!(v.first_bad_seq, 3, "{v:?}");
    assert!(v.problem.contains("altered"), "{v:?}");

    sqlx::query("UPDATE audit_log SET records = ?1 WHERE seq = 3")
        .bind(original.0)
        .execute(&pool)
        .await
        .expect("restore");
    let v = verify(&mut admin).await;
    assert!(v.ok, "restored: {v:?}");

    // Altering the identity of a row is caught the same way.
    sqlx::query("UPDATE audit_log SET identity = 'oip://admin/someone-else' WHERE seq = 2")
        .execute(&pool)
        .await
        .expect("alter");
    assert_eq!(verify(&mut admin).await.first_bad_seq, 2);
    sqlx::query("UPDATE audit_log SET identity = ?1 WHERE seq = 2")
        .bind(PLATFORM_A_ID)
        .execute(&pool)
        .await
        .expect("restore");

    sqlx::query("DELETE FROM audit_log WHERE seq = 4")
        .execute(&pool)
        .await
        .expect("delete");
    let v = verify(&mut admin).await;
    assert!(!v.ok);
    assert_eq!(v.first_bad_seq, 4, "{v:?}");
    assert!(v.problem.contains("missing"), "{v:?}");
}

#[tokio::test]
async fn a_call_whose_audit_entry_cannot_be_written_fails_instead() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    let pool = gw.sql().await;
    sqlx::query(
        "CREATE TRIGGER audit_broken BEFORE INSERT ON audit_log
         BEGIN SELECT RAISE(ABORT, 'audit store broken'); END",
    )
    .execute(&pool)
    .await
    .expect("break the audit log");

    let err = a
        .list_workers(proto::ListRequest::default())
        .await
        .expect_err("no answer without an audit entry");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let mut admin = gw.admin().await;
    grant_expecting(&mut admin, Code::Unavailable).await;
    // Writes: unary, client stream and bidirectional stream store nothing.
    let err = a
        .register_workers(proto::RegisterWorkersRequest {
            workers: vec![worker("W-unary")],
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = a
        .stream_workers(futures::stream::iter(vec![proto::RegisterWorkersRequest {
            workers: vec![worker("W-stream")],
        }]))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let mut answers = a
        .submit_stream(futures::stream::iter(vec![proto::SubmitRequest {
            records: vec![rec_worker(worker("W-bidi"))],
        }]))
        .await
        .map(|r| r.into_inner());
    let first = match &mut answers {
        Ok(s) => s.message().await.map(|_| ()),
        Err(e) => Err(e.clone()),
    };
    assert_eq!(
        first.expect_err("refused").code(),
        Code::Unavailable,
        "the stream's entry or its chunk's intent cannot be written"
    );

    sqlx::query("DROP TRIGGER audit_broken")
        .execute(&pool)
        .await
        .expect("repair");
    let workers = a
        .list_workers(proto::ListRequest::default())
        .await
        .expect("answered again")
        .into_inner();
    assert_eq!(
        workers.workers.len(),
        1,
        "no write went through unaudited: {workers:?}"
    );
    // The refused grant was not made: its intent could not be audited.
    let grants = admin
        .list_grants(proto::ListGrantsRequest {
            identity: TAX_ID.into(),
        })
        .await
        .expect("list grants")
        .into_inner();
    assert!(grants.grants.is_empty(), "{grants:?}");
    let v = admin
        .verify_audit(proto::VerifyAuditRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(v.ok, "the chain continues after the failure: {v:?}");
}

async fn grant_expecting(admin: &mut Admin, code: Code) {
    let err = admin
        .put_grant(proto::GrantRequest {
            identity: TAX_ID.into(),
            role: "tax".into(),
            scopes: vec!["320100".into()],
            expires_at: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), code);
}

#[tokio::test]
async fn retention_removes_old_entries_and_verification_starts_at_the_anchor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&format!("sqlite:{}", dir.path().join("a.db").display()))
        .await
        .expect("open");
    let day = 24 * 3600 * 1000;
    let now = oip_gateway::domain::time::now_millis();
    let mut previous = GENESIS;
    let rows: Vec<_> = (1..=10)
        .map(|seq| {
            let e = AuditEntry {
                seq,
                at: now - (200 - seq) * day,
                identity: TAX_ID.into(),
                role: "tax".into(),
                action: "oip.v1.TaxService/PullContributions".into(),
                scope: "320100".into(),
                records: seq,
                outcome: "OK".into(),
                trace_id: format!("t{seq}"),
            };
            previous = e.chain_hash(&previous);
            (e, previous)
        })
        .collect();
    store.append_audit(&rows).await.expect("append");
    // Entries 1..=9 are 191..199 days old, entry 10 is 190 days old: 180 days keep
    // none of them but the newest, which stays as the chain's head.
    let store: std::sync::Arc<dyn oip_gateway::store::Store> = std::sync::Arc::new(store);
    let (auditor, _writer) = oip_gateway::audit::Auditor::spawn(
        store.clone(),
        std::sync::Arc::new(oip_gateway::metrics::Metrics::new()),
    );
    let removed = oip_gateway::audit::apply_retention(
        store.as_ref(),
        &auditor,
        std::time::Duration::from_secs(180 * 24 * 3600),
    )
    .await
    .expect("retention");
    assert_eq!(removed, 9);
    assert_eq!(store.audit_anchor().await.expect("anchor"), (9, rows[8].1));
    // The removal is itself an entry of the chain, naming the new anchor.
    let (head, _) = store.audit_head().await.expect("head");
    assert_eq!(head, 11);
    let v = oip_gateway::audit::verify(store.as_ref())
        .await
        .expect("verify");
    assert_eq!((v.checked, v.problem), (2, None));

    // Removing entry 10 by hand and moving the anchor to it keeps the hashes valid,
    // but the retention entry names another anchor: caught.
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("a.db")))
        .await
        .expect("open");
    sqlx::query("DELETE FROM audit_log WHERE seq = 10")
        .execute(&pool)
        .await
        .expect("delete");
    sqlx::query("UPDATE audit_anchor SET seq = 10, hash = ?1")
        .bind(rows[9].1.to_vec())
        .execute(&pool)
        .await
        .expect("forge anchor");
    let v = oip_gateway::audit::verify(store.as_ref())
        .await
        .expect("verify");
    assert_eq!(
        v.problem,
        Some(oip_gateway::domain::audit::ChainBreak::UnconfirmedAnchor { seq: 10 })
    );
}

/// Waits until `identity` has at least `n` entries of `action`, and returns
/// (outcome, records) of each, oldest first.
async fn entries_of(
    gw: &TestGateway,
    identity: &str,
    action: &str,
    n: usize,
) -> Vec<(String, i64)> {
    let pool = gw.sql().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got: Vec<(String, i64)> = audit_entries(&pool, identity)
            .await
            .into_iter()
            .filter(|e| e.0 == action)
            .map(|e| (e.1, e.4))
            .collect();
        if got.len() >= n || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Issue 13: a client stream whose end arrives with its last message (a one-order
/// stream, as platforms send live) has its call's entry written in the transaction of
/// that last part, after the part's entry, not in an audit transaction of its own: the
/// log holds the same entries in the same order as when the call's entry comes after
/// the answer, and the audit writer commits no group for those streams.
#[tokio::test]
async fn a_client_stream_ending_with_its_last_part_is_audited_in_that_parts_transaction() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    let ops = gw.ops_addr.expect("operations listener");
    let audit_groups = || async {
        let (_, _, metrics) = http_get(ops, "/metrics").await;
        metrics
            .lines()
            .find(|l| l.starts_with("oip_audit_write_seconds_count"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = audit_groups().await;
    let streams = 20;
    for i in 0..streams {
        let out = a
            .stream_orders(tokio_stream::iter(vec![proto::ReportOrdersRequest {
                orders: vec![order(&format!("S{i}"), "W1")],
            }]))
            .await
            .expect("stream")
            .into_inner();
        assert_eq!(out.outcomes[0].outcome(), proto::Outcome::Accepted);
    }
    let after = audit_groups().await;
    let s = |o: &str, n: i64| (o.to_string(), n);
    assert_eq!(
        entries_of(
            &gw,
            PLATFORM_A_ID,
            "oip.v1.PlatformService/StreamOrders",
            2 * streams
        )
        .await,
        vec![s("OK", 1); 2 * streams],
        "each stream: its part's entry, then the call's"
    );
    // The streams' ends arrive with their messages (a client sends the message and
    // the end together), so their entries needed no audit transaction of their own
    // (usually none at all; one whose end came a moment later still gets one, which
    // is why the bound is loose: without the look-ahead every stream gets one).
    assert!(
        after - before < streams as f64,
        "{} audit writer commits for {streams} one-message streams",
        after - before
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_streamed_call_is_audited_in_causal_order_with_its_total_last() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    let mut a = gw.client("platform-a").await;
    let chunk = |ids: &[&str]| proto::SubmitRequest {
        records: ids.iter().map(|id| rec_worker(worker(id))).collect(),
    };
    let answers = a
        .submit_stream(tokio_stream::iter(vec![
            chunk(&["W1", "W2"]),
            chunk(&["W3", "W4"]),
            chunk(&["W5"]),
        ]))
        .await
        .expect("stream")
        .into_inner();
    let answered = drain(answers).await.expect("answers");
    assert_eq!(answered.len(), 3);
    let s = |o: &str, n: i64| (o.to_string(), n);
    assert_eq!(
        entries_of(&gw, PLATFORM_A_ID, "oip.v1.PlatformService/SubmitStream", 4).await,
        vec![s("OK", 2), s("OK", 2), s("OK", 1), s("OK", 5),],
        "each chunk's entry, written with its records; the call's entry last with the total"
    );

    // A client stream: the same, with the call's entry (its answer) last.
    let out = a
        .stream_workers(tokio_stream::iter(vec![
            proto::RegisterWorkersRequest {
                workers: vec![worker("W6")],
            },
            proto::RegisterWorkersRequest {
                workers: vec![worker("W7"), worker("W8")],
            },
        ]))
        .await
        .expect("stream")
        .into_inner();
    assert_eq!(out.outcomes.len(), 3);
    assert_eq!(
        entries_of(
            &gw,
            PLATFORM_A_ID,
            "oip.v1.PlatformService/StreamWorkers",
            3
        )
        .await,
        vec![s("OK", 1), s("OK", 2), s("OK", 3)]
    );

    // A pull's pages come before the call's entry, which says how it ended.
    let mut tax = gw.tax().await;
    let mut admin = gw.admin().await;
    grant(&mut admin, TAX_ID, "tax", &["320000"]).await;
    drain(
        tax.pull_contributions(proto::PullRequest::default())
            .await
            .expect("pull")
            .into_inner(),
    )
    .await
    .expect("pulled");
    let pull = entries_of(&gw, TAX_ID, "oip.v1.TaxService/PullContributions", 1).await;
    assert_eq!(pull.last().map(|e| e.0.as_str()), Some("OK"), "{pull:?}");
}
