//! Group commit (issue 13): concurrent calls of one platform share one transaction.
//! A commit that fails fails every call in it and acknowledges none; calls that share
//! a transaction get exactly the outcomes they would get one after another
//! (DUPLICATE, revisions, daily enrolment counts, volume statements).

use std::collections::BTreeMap;

use crate::common::*;
use oip_gateway::proto;

/// A fault at COMMIT, installed in the gateway's database as an operator could: a
/// deferred foreign key is only checked when the transaction commits, so a transaction
/// that stores an order whose id starts with `FAIL` fails at its COMMIT, after every
/// statement of it succeeded.
async fn install_commit_fault(gw: &TestGateway) {
    let pool = gw.sql().await;
    for sql in [
        "CREATE TABLE commit_fault_parent (id TEXT PRIMARY KEY)",
        "CREATE TABLE commit_fault (id TEXT REFERENCES commit_fault_parent (id) DEFERRABLE INITIALLY DEFERRED)",
        "CREATE TRIGGER commit_fault AFTER INSERT ON orders WHEN NEW.order_id LIKE 'FAIL%'
         BEGIN INSERT INTO commit_fault (id) VALUES (NEW.order_id); END",
    ] {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    pool.close().await;
}

/// A gateway with the commit fault installed, and platform A's client with worker W1.
async fn with_commit_fault() -> (TestGateway, Client) {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    install_commit_fault(&gw).await;
    (gw, a)
}

async fn stored_orders(gw: &TestGateway) -> std::collections::HashSet<String> {
    let pool = gw.sql().await;
    let rows: Vec<(String,)> = sqlx::query_as("SELECT order_id FROM orders")
        .fetch_all(&pool)
        .await
        .expect("orders");
    pool.close().await;
    rows.into_iter().map(|(id,)| id).collect()
}

/// One single-order `ReportOrders` call per order, all in flight at once; each
/// answer (Ok: the order's outcome name; Err: the status code) by order id.
async fn concurrently(
    client: &Client,
    orders: Vec<proto::Order>,
) -> BTreeMap<String, Result<String, tonic::Code>> {
    concurrently_by_kind(client, orders, |_| Carrier::Unary).await
}

/// Checks that every acknowledged order was ACCEPTED and is stored and that no failed
/// one is stored; returns the failed ones' ids.
fn failed_and_not_stored(
    answers: &BTreeMap<String, Result<String, tonic::Code>>,
    stored: &std::collections::HashSet<String>,
) -> Vec<String> {
    let mut failed = Vec::new();
    for (id, answer) in answers {
        match answer {
            Ok(outcome) => {
                assert_eq!(outcome, "ACCEPTED", "{id}");
                assert!(stored.contains(id), "{id} was acknowledged but not stored");
            }
            Err(code) => {
                assert!(
                    !stored.contains(id),
                    "{id} failed ({code:?}) but was stored"
                );
                failed.push(id.clone());
            }
        }
    }
    failed
}

#[tokio::test]
async fn a_failed_commit_fails_every_call_in_it_and_acknowledges_none() {
    let (gw, a) = with_commit_fault().await;

    // 63 ordinary orders and one that fails its transaction's commit, all in flight at
    // once: the calls queue behind the first transaction and commit in groups. Tried
    // until the failing order shared its transaction with others (almost always at
    // once).
    let mut shared = false;
    for attempt in 0..10 {
        let mut orders: Vec<_> = (0..63)
            .map(|i| order(&format!("R{attempt}-{i}"), "W1"))
            .collect();
        orders.insert(32, order(&format!("FAIL{attempt}"), "W1"));
        let answers = concurrently(&a, orders).await;
        let stored = stored_orders(&gw).await;
        let failed = failed_and_not_stored(&answers, &stored).len();
        let fail_id = format!("FAIL{attempt}");
        assert!(
            answers[&fail_id].is_err(),
            "the failing commit was acknowledged: {:?}",
            answers[&fail_id]
        );
        assert!(!stored.contains(&fail_id));
        if failed > 1 {
            shared = true;
            // Resending what failed, without the fault's order, stores it: nothing of
            // it was half-applied (not DUPLICATE).
            let resend: Vec<_> = answers
                .iter()
                .filter(|(id, a)| a.is_err() && **id != fail_id)
                .map(|(id, _)| order(id, "W1"))
                .collect();
            let again = concurrently(&a, resend).await;
            assert!(
                again.values().all(|a| a.as_deref() == Ok("ACCEPTED")),
                "{again:?}"
            );
            break;
        }
    }
    assert!(
        shared,
        "the failing order never shared a transaction with another call"
    );
    gw.stop().await;
}

/// How a single order travels in `concurrently_by_kind`.
#[derive(Debug, Clone, Copy)]
enum Carrier {
    Unary,
    /// A `StreamOrders` client stream of one message of one order.
    Stream,
    /// A `SubmitStream` whose one chunk holds the order (answered chunk by chunk).
    SubmitChunk,
}

impl Carrier {
    /// Unary, stream, chunk, unary, … by index.
    fn by_index(i: usize) -> Self {
        match i % 3 {
            0 => Carrier::Unary,
            1 => Carrier::Stream,
            _ => Carrier::SubmitChunk,
        }
    }
}

/// One order per call, each carried as `carrier(index)` says, all in flight at once;
/// each answer (Ok: the order's outcome or code; Err: the status code) by order id.
async fn concurrently_by_kind(
    client: &Client,
    orders: Vec<proto::Order>,
    carrier: impl Fn(usize) -> Carrier,
) -> BTreeMap<String, Result<String, tonic::Code>> {
    let outcome = |out: &proto::BatchOutcome| {
        let o = &out.outcomes[0];
        if o.code.is_empty() {
            o.outcome().as_str_name().to_string()
        } else {
            o.code.clone()
        }
    };
    let calls: Vec<_> = orders
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let mut c = client.clone();
            let how = carrier(i);
            tokio::spawn(async move {
                let id = o.order_id.clone();
                let answer = match how {
                    Carrier::Unary => c
                        .report_orders(proto::ReportOrdersRequest { orders: vec![o] })
                        .await
                        .map(|r| outcome(r.get_ref())),
                    Carrier::Stream => c
                        .stream_orders(tokio_stream::iter(vec![proto::ReportOrdersRequest {
                            orders: vec![o],
                        }]))
                        .await
                        .map(|r| outcome(r.get_ref())),
                    Carrier::SubmitChunk => {
                        let chunk = proto::SubmitRequest {
                            records: vec![proto::Record {
                                kind: Some(proto::record::Kind::Order(o)),
                            }],
                        };
                        match c.submit_stream(tokio_stream::iter(vec![chunk])).await {
                            Err(s) => Err(s),
                            Ok(r) => match r.into_inner().message().await {
                                Ok(Some(out)) => Ok(outcome(&out)),
                                Ok(None) => Err(tonic::Status::unknown("no answer")),
                                Err(s) => Err(s),
                            },
                        }
                    }
                }
                .map_err(|s| s.code());
                (id, answer)
            })
        })
        .collect();
    let mut answers = BTreeMap::new();
    for c in calls {
        let (id, answer) = c.await.expect("call task");
        answers.insert(id, answer);
    }
    answers
}

/// Issue 13: "the same for single-order client streams and SubmitStream chunks". Unary
/// calls, one-order client streams and one-order SubmitStream chunks of one platform,
/// in flight together, share transactions; the one whose order fails the commit fails
/// with every call, stream and chunk in its transaction, and none of those is stored;
/// everything acknowledged is stored; resending what failed stores it (ACCEPTED, not
/// DUPLICATE: nothing of it was half-applied).
#[tokio::test]
async fn a_failed_commit_fails_every_stream_and_chunk_in_it_and_acknowledges_none() {
    let (gw, a) = with_commit_fault().await;
    let carrier = Carrier::by_index;

    // For each carrier in turn, the failing order travels that way.
    for failing in 0..3 {
        let mut shared_kinds = std::collections::BTreeSet::new();
        for attempt in 0..10 {
            let tag = format!("K{failing}-{attempt}");
            let mut orders: Vec<_> = (0..62)
                .map(|i| order(&format!("{tag}-{i}"), "W1"))
                .collect();
            let fail_id = format!("FAIL{tag}");
            // Index 30 + failing: carrier(30 + failing) is the carrier `failing`.
            orders.insert(30 + failing, order(&fail_id, "W1"));
            let answers = concurrently_by_kind(&a, orders, carrier).await;
            let stored = stored_orders(&gw).await;
            let mut failed = failed_and_not_stored(&answers, &stored);
            failed.retain(|id| *id != fail_id);
            assert!(
                answers[&fail_id].is_err(),
                "the failing commit was acknowledged: {:?}",
                answers[&fail_id]
            );
            assert!(!stored.contains(&fail_id));
            // Which carriers shared the failing transaction (by their index in the
            // order they were sent: the ids end with their index).
            for id in &failed {
                let n: usize = id
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("index");
                let at = if n >= 30 + failing { n + 1 } else { n };
                shared_kinds.insert(at % 3);
            }
            if !failed.is_empty() {
                let resend: Vec<_> = failed.iter().map(|id| order(id, "W1")).collect();
                let again = concurrently_by_kind(&a, resend, carrier).await;
                assert!(
                    again.values().all(|a| a.as_deref() == Ok("ACCEPTED")),
                    "{again:?}"
                );
            }
            if shared_kinds.len() == 3 {
                break;
            }
        }
        assert_eq!(
            shared_kinds.len(),
            3,
            "a failing {:?} never shared its transaction with every other carrier",
            carrier(failing)
        );
    }
    gw.stop().await;
}

/// The ingest transactions so far, and the calls they applied
/// (`oip_ingest_transaction_calls`).
async fn transactions(gw: &TestGateway) -> (f64, f64) {
    let ops = gw.ops_addr.expect("operations listener");
    let (_, _, metrics) = http_get(ops, "/metrics").await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("oip_ingest_transaction_calls_count"),
        value("oip_ingest_transaction_calls_sum"),
    )
}

/// `SubmitStream` reads ahead: the chunks a client sends together are validated and
/// queued while the earlier ones are applied, share transactions, and are answered in
/// order, each with its own outcomes (under the call's deadline, which the chunks of
/// a transaction share). A chunk whose commit fails ends the stream
/// there, as if the chunks had been applied one after another: every chunk answered
/// before the failure is stored; the failing chunk, every chunk of its transaction
/// and every later chunk (already read and queued) are not.
#[tokio::test]
async fn submit_stream_chunks_read_ahead_share_transactions_and_stop_at_the_first_failure() {
    let (gw, mut a) = with_commit_fault().await;
    const CHUNKS: usize = 24;
    const PER: usize = 20;
    let chunks = |tag: &str, failing: Option<usize>| -> Vec<proto::SubmitRequest> {
        (0..CHUNKS)
            .map(|c| proto::SubmitRequest {
                records: (0..PER)
                    .map(|i| {
                        let id = if failing == Some(c) && i == PER / 2 {
                            format!("FAIL{tag}-{c}-{i}")
                        } else {
                            format!("{tag}-{c}-{i}")
                        };
                        rec_order(order(&id, "W1"))
                    })
                    .collect(),
            })
            .collect()
    };

    let before = transactions(&gw).await;
    // With a deadline, which the chunks of one transaction share.
    let mut call = tonic::Request::new(tokio_stream::iter(chunks("RA", None)));
    call.set_timeout(std::time::Duration::from_secs(60));
    let answers = drain(a.submit_stream(call).await.expect("stream").into_inner())
        .await
        .expect("answers");
    let after = transactions(&gw).await;
    assert_eq!(answers.len(), CHUNKS);
    for (c, out) in answers.iter().enumerate() {
        let ids: Vec<_> = out
            .outcomes
            .iter()
            .map(|o| (o.index, o.id.clone()))
            .collect();
        let expected: Vec<_> = (0..PER)
            .map(|i| ((c * PER + i) as u32, format!("RA-{c}-{i}")))
            .collect();
        assert_eq!(ids, expected, "chunk {c} answered out of order");
        assert!(
            out.outcomes
                .iter()
                .all(|o| o.outcome() == proto::Outcome::Accepted),
            "{out:?}"
        );
    }
    assert_eq!(after.1 - before.1, CHUNKS as f64, "one call per chunk");
    assert!(
        after.0 - before.0 < CHUNKS as f64,
        "{} transactions for {CHUNKS} chunks sent together: none shared",
        after.0 - before.0
    );

    // The fault in chunk 12: the stream ends with a failure after the chunks before
    // that chunk's transaction.
    let mut answers = a
        .submit_stream(tokio_stream::iter(chunks("RB", Some(12))))
        .await
        .expect("stream")
        .into_inner();
    let mut answered = 0;
    let failure = loop {
        match answers.message().await {
            Ok(Some(out)) => {
                assert_eq!(out.outcomes[0].index as usize, answered * PER);
                answered += 1;
            }
            Ok(None) => panic!("the stream ended without the failure"),
            Err(status) => break status,
        }
    };
    assert!(
        answered <= 12,
        "{answered} chunks answered, the 13th failed"
    );
    assert_eq!(failure.code(), tonic::Code::Internal, "{failure:?}");
    let stored = stored_orders(&gw).await;
    for c in 0..CHUNKS {
        let kept = (0..PER)
            .filter(|i| stored.contains(&format!("RB-{c}-{i}")))
            .count();
        let expected = if c < answered { PER } else { 0 };
        assert_eq!(kept, expected, "chunk {c} ({answered} answered)");
    }
    gw.stop().await;
}

/// How many answers of the calls in `handles` got each label (`label` names each
/// answer of one call's output).
async fn tally<T, L: IntoIterator<Item = String>>(
    handles: Vec<tokio::task::JoinHandle<T>>,
    label: impl Fn(T) -> L,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for h in handles {
        for l in label(h.await.expect("call")) {
            *counts.entry(l).or_default() += 1;
        }
    }
    counts
}

/// DUPLICATE and revisions hold whichever small call carries an order: the same
/// order from 33 calls at once, as unary calls, client streams and SubmitStream chunks,
/// is ACCEPTED once and DUPLICATE otherwise; revision 1 of one order with 9 different
/// contents is ACCEPTED once and REVISION_CONFLICT otherwise.
#[tokio::test]
async fn every_small_call_keeps_duplicate_and_revision_semantics() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    let carrier = Carrier::by_index;
    // Each call in a task of its own, all at once (the answers are keyed by order id).
    let answered = |answers: BTreeMap<String, Result<String, tonic::Code>>| {
        answers.into_values().map(|a| a.expect("answered"))
    };
    let handles: Vec<_> = (0..33)
        .map(|i| {
            let c = a.clone();
            tokio::spawn(async move {
                concurrently_by_kind(&c, vec![order("SAME", "W1")], move |_| carrier(i)).await
            })
        })
        .collect();
    assert_eq!(
        tally(handles, answered).await,
        BTreeMap::from([("ACCEPTED".to_string(), 1), ("DUPLICATE".to_string(), 32)])
    );

    let handles: Vec<_> = (0..9)
        .map(|i| {
            let mut o = order("CONFLICT", "W1");
            o.completed_at = format!("2025-07-02T11:{:02}:00+08:00", 10 + i);
            let c = a.clone();
            tokio::spawn(
                async move { concurrently_by_kind(&c, vec![o], move |_| carrier(i)).await },
            )
        })
        .collect();
    assert_eq!(
        tally(handles, answered).await,
        BTreeMap::from([
            ("ACCEPTED".to_string(), 1),
            ("REVISION_CONFLICT".to_string(), 8)
        ])
    );
    gw.stop().await;
}

#[tokio::test]
async fn concurrent_calls_keep_duplicate_and_revision_semantics() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1"), worker("W2")]).await;

    // The same order, same revision and content, from 32 calls at once: one ACCEPTED,
    // every other DUPLICATE.
    let calls: Vec<_> = (0..32).map(|_| order("SAME", "W1")).collect();
    let handles: Vec<_> = calls
        .into_iter()
        .map(|o| {
            let mut c = a.clone();
            tokio::spawn(async move { report(&mut c, vec![o]).await })
        })
        .collect();
    let outcomes = tally(handles, |out: proto::BatchOutcome| {
        [out.outcomes[0].outcome().as_str_name().to_string()]
    })
    .await;
    assert_eq!(
        outcomes,
        BTreeMap::from([("ACCEPTED".to_string(), 1), ("DUPLICATE".to_string(), 31)])
    );

    // Revision 1 of one order with 8 different contents at once: one ACCEPTED, the
    // others REVISION_CONFLICT.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let mut o = order("CONFLICT", "W1");
            o.completed_at = format!("2025-07-02T11:{:02}:00+08:00", 10 + i);
            let mut c = a.clone();
            tokio::spawn(async move { report(&mut c, vec![o]).await })
        })
        .collect();
    let codes = tally(handles, |out: proto::BatchOutcome| {
        let o = &out.outcomes[0];
        [format!("{} {}", o.outcome().as_str_name(), o.code)]
    })
    .await;
    assert_eq!(
        codes,
        BTreeMap::from([
            ("ACCEPTED ".to_string(), 1),
            ("REJECTED REVISION_CONFLICT".to_string(), 7)
        ])
    );

    // Revisions 1..=16 of one order at once, in any order: each is ACCEPTED or
    // STALE_REVISION, the accepted ones in increasing order, and the stored revision
    // is the highest, 16 (it is accepted whenever it comes, nothing being higher).
    let handles: Vec<_> = (1..=16)
        .map(|r| {
            let mut o = order("REV", "W2");
            o.revision = Some(r);
            o.completed_at = format!("2025-07-02T11:{:02}:00+08:00", 10 + r);
            let mut c = a.clone();
            tokio::spawn(async move { (r, report(&mut c, vec![o]).await) })
        })
        .collect();
    for h in handles {
        let (r, out) = h.await.expect("call");
        let o = &out.outcomes[0];
        assert!(
            o.outcome() == proto::Outcome::Accepted || o.code == "STALE_REVISION",
            "revision {r}: {o:?}"
        );
        if r == 16 {
            assert_eq!(o.outcome(), proto::Outcome::Accepted);
        }
    }
    let pool = gw.sql().await;
    let (revision,): (i64,) = sqlx::query_as("SELECT revision FROM orders WHERE order_id = 'REV'")
        .fetch_one(&pool)
        .await
        .expect("REV");
    assert_eq!(revision, 16);

    // 40 new orders of one worker on one day at once: the daily enrolment counts
    // every one of them, and the month's statement every billable order.
    let orders: Vec<_> = (0..40).map(|i| order(&format!("DAY{i}"), "W1")).collect();
    let answers = concurrently(&a, orders).await;
    assert!(answers.values().all(|a| a.as_deref() == Ok("ACCEPTED")));
    let (count,): (i64,) = sqlx::query_as(
        "SELECT order_count FROM daily_enrolments WHERE worker_id = 'W1' AND day = '2025-07-02'",
    )
    .fetch_one(&pool)
    .await
    .expect("enrolment");
    // SAME, CONFLICT and the 40 (W1's orders, all that day, all completed).
    assert_eq!(count, 42);
    let (billable,): (i64,) = sqlx::query_as(
        "SELECT SUM(billable_count) FROM volume_statements WHERE period = '2025-07'",
    )
    .fetch_one(&pool)
    .await
    .expect("statement");
    // ...and REV, W2's.
    assert_eq!(billable, 43);

    // The transactions did share calls (otherwise this test shows nothing new).
    let (transactions, calls) = transactions(&gw).await;
    assert!(
        calls > transactions,
        "{calls} calls in {transactions} transactions: no call shared a transaction"
    );
    gw.stop().await;
}

/// Half a second of `mode` from 8 callers, 2 orders a call (message), 3 messages a
/// stream, over 5 workers.
fn small_load(
    mode: oip_gateway::cli::load::Mode,
    id_prefix: &str,
) -> oip_gateway::cli::load::LoadOptions {
    oip_gateway::cli::load::LoadOptions {
        mode,
        in_flight: 8,
        duration: std::time::Duration::from_millis(500),
        records: 2,
        messages: 3,
        workers: 5,
        id_prefix: id_prefix.into(),
        industry: "INSTANT_DELIVERY".into(),
        division: "320100".into(),
        timeout: std::time::Duration::from_secs(30),
    }
}

/// `oip-gateway load`'s generator, in each mode, against a real gateway: every order
/// it sends is accepted and stored, and it times every answered call.
#[tokio::test]
async fn the_load_generator_drives_each_kind_of_small_call() {
    use oip_gateway::cli::load::{Mode, run};
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    let channel = role_channel(gw.addr, "platform-a").await;
    let mut total = 0;
    for (n, mode) in [Mode::Unary, Mode::Stream, Mode::SubmitStream]
        .into_iter()
        .enumerate()
    {
        let opts = small_load(mode, &format!("L{n}-"));
        let report = run(std::slice::from_ref(&channel), &opts)
            .await
            .expect("load");
        assert!(
            report.failures.is_empty(),
            "{mode:?}: {:?}",
            report.failures
        );
        assert!(
            report.other_outcomes.is_empty(),
            "{mode:?}: {:?}",
            report.other_outcomes
        );
        assert!(report.accepted > 0, "{mode:?}: nothing accepted");
        assert_eq!(
            report.latency_us.len(),
            report.calls_ok,
            "{mode:?}: one latency per answered call"
        );
        let per_call = match mode {
            Mode::Stream => 6,
            _ => 2,
        };
        assert_eq!(report.accepted, report.calls_ok * per_call, "{mode:?}");
        total += report.accepted;
    }
    let pool = gw.sql().await;
    let (stored,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders WHERE order_id LIKE 'L%'")
        .fetch_one(&pool)
        .await
        .expect("orders");
    assert_eq!(stored as u64, total, "every accepted order is stored");
    gw.stop().await;
}

/// A load beyond one of the gateway's limits says which: the report keeps the first
/// message of each failing code (here RESOURCE_EXHAUSTED, naming the setting).
#[tokio::test]
async fn the_load_generator_says_why_calls_failed() {
    use oip_gateway::cli::load::{Mode, run};
    let gw = TestGateway::spawn_with(|c| c.connections.max_calls_per_identity = 2).await;
    let channel = role_channel(gw.addr, "platform-a").await;
    let opts = small_load(Mode::SubmitStream, "LX-");
    let report = run(std::slice::from_ref(&channel), &opts)
        .await
        .expect("load");
    assert!(
        report
            .failures
            .get("ResourceExhausted")
            .is_some_and(|n| *n > 0),
        "{:?}",
        report.failures
    );
    let lines = report.lines().join("\n");
    assert!(
        lines.contains("first ResourceExhausted: ")
            && lines.contains("connections.max_calls_per_identity"),
        "{lines}"
    );
    gw.stop().await;
}

/// A replica of the gateway's ingest on the database at `url`: its own store and its
/// own `Ingest` (with its own worker cache), and platform A's profile.
async fn replica(
    url: &str,
) -> (
    oip_gateway::ingest::Ingest,
    oip_gateway::domain::PlatformProfile,
) {
    use oip_gateway::domain::fees::RateBook;
    use oip_gateway::ingest::{Ingest, Policy};
    use oip_gateway::store::Store;
    use oip_gateway::store::sqlite::SqliteStore;
    use std::sync::Arc;
    let reference = oip_gateway::reference::Reference::builtin();
    let config =
        oip_gateway::config::Config::for_test(String::new(), tls_files(), test_platforms());
    let registration = config
        .platform_registrations(&reference)
        .expect("registration")
        .remove(0);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(url).await.expect("open"));
    let platform = store
        .upsert_platform(&registration)
        .await
        .expect("platform");
    let ingest = Ingest::new(
        store,
        oip_gateway::pii::Pii::for_test(),
        Arc::new(RateBook::default()),
        Policy {
            declaration_deadline_day: 15,
            accident_margin_ms: 0,
        },
    );
    (ingest, platform)
}

/// Applies `records` through `ingest` and returns each outcome: the rejection's code,
/// or the outcome itself.
async fn outcomes(
    ingest: &oip_gateway::ingest::Ingest,
    platform: &oip_gateway::domain::PlatformProfile,
    records: &[proto::Record],
) -> Vec<String> {
    use oip_gateway::validate;
    let reference = oip_gateway::reference::Reference::builtin();
    let ctx = validate::Context {
        now: oip_gateway::domain::time::now_millis(),
        bounds: validate::Bounds {
            max_future_ms: 0,
            ..Default::default()
        },
        reference: &reference,
        platform,
    };
    let candidates = records
        .iter()
        .map(|r| validate::candidate(r, &ctx))
        .collect();
    let plan = ingest
        .apply(platform, candidates, None, &Default::default(), Vec::new())
        .await
        .expect("apply");
    plan.outcomes
        .iter()
        .map(|o| match o {
            oip_gateway::domain::Outcome::Rejected(r) => r.code.as_str().to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// W1's revision `revision`, in `industries`, registered on July `registered`, left
/// on July `left` (if any).
fn worker_revision(
    id: &str,
    revision: u32,
    industries: &[&str],
    registered: u32,
    left: Option<u32>,
) -> proto::Record {
    let mut w = worker(id);
    w.revision = Some(revision);
    w.industries = industries.iter().map(|s| s.to_string()).collect();
    w.registered_at = format!("2025-07-{registered:02}T08:00:00+08:00");
    if let Some(day) = left {
        w.status = "LEFT".into();
        w.left_at = format!("2025-07-{day:02}T00:00:00+08:00");
    }
    proto::Record {
        kind: Some(proto::record::Kind::Worker(w)),
    }
}

/// An order of `worker` in `industry` accepted on July `day`.
fn order_on(id: &str, worker: &str, industry: &str, day: u32) -> proto::Record {
    let mut o = order(id, worker);
    o.industry = industry.into();
    o.accepted_at = format!("2025-07-{day:02}T11:00:00+08:00");
    o.completed_at = format!("2025-07-{day:02}T11:35:00+08:00");
    proto::Record {
        kind: Some(proto::record::Kind::Order(o)),
    }
}

const DELIVERY: &str = "INSTANT_DELIVERY";
const ACCEPTED: &str = "Accepted { warnings: [] }";

/// Two replicas on one database (two stores and two ingests, each with its worker
/// cache): a worker that one of them revised is never judged from the other's cached
/// state, and a worker it revised itself is not either. Orders of W1 after it left
/// are WORKER_NOT_ACTIVE on whichever replica they arrive.
#[tokio::test]
async fn a_cached_worker_is_never_used_after_a_revision_by_any_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("shared.db").display());
    let replicas = [replica(&url).await, replica(&url).await];
    let apply = |r: usize, records: Vec<proto::Record>| {
        let (ingest, platform) = &replicas[r];
        async move { outcomes(ingest, platform, &records).await }
    };
    let left =
        |revision: u32, day: Option<u32>| worker_revision("W1", revision, &[DELIVERY], 1, day);
    let on = |id: &str, day: u32| order_on(id, "W1", DELIVERY, day);

    assert_eq!(apply(0, vec![left(1, None)]).await, [ACCEPTED]);
    // Replica 0 reads W1 (then keeps it) and judges from what it kept.
    for (id, day) in [("O1", 2), ("O2", 3)] {
        assert_eq!(apply(0, vec![on(id, day)]).await, [ACCEPTED], "{id}");
    }
    // Replica 1 records that W1 left on 5 July.
    assert_eq!(apply(1, vec![left(2, Some(5))]).await, [ACCEPTED]);
    assert_eq!(
        apply(0, vec![on("O3", 10)]).await,
        ["WORKER_NOT_ACTIVE"],
        "replica 0 must not judge from the W1 it kept"
    );
    // Replica 0 itself takes W1 back; replica 1, which kept the LEFT W1, sees it.
    assert_eq!(apply(1, vec![on("O4", 3)]).await, [ACCEPTED]);
    assert_eq!(apply(0, vec![left(3, None)]).await, [ACCEPTED]);
    assert_eq!(apply(1, vec![on("O5", 11)]).await, [ACCEPTED]);
    assert_eq!(apply(0, vec![on("O6", 12)]).await, [ACCEPTED]);
    // And leaves again on replica 0: its own write is not judged from its cache.
    assert_eq!(apply(0, vec![on("O7", 13)]).await, [ACCEPTED]);
    assert_eq!(apply(0, vec![left(4, Some(14))]).await, [ACCEPTED]);
    assert_eq!(apply(0, vec![on("O8", 20)]).await, ["WORKER_NOT_ACTIVE"]);
    assert_eq!(apply(1, vec![on("O9", 20)]).await, ["WORKER_NOT_ACTIVE"]);
}

/// One step of [`kept_workers_judge_as_a_fresh_read_would`]: a call of worker
/// revisions and orders on a replica, or a replica's restart.
#[derive(Debug, Clone)]
enum Step {
    Call { replica: usize, records: Vec<Pick> },
    Restart(usize),
}

/// A record of a generated call.
#[derive(Debug, Clone)]
enum Pick {
    /// Worker, revision, in both industries, registered day, left day (July).
    Worker(usize, u32, bool, u32, Option<u32>),
    /// Worker, ride-hailing (else delivery), accepted day (July).
    Order(usize, bool, u32),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let worker = (
        0..3usize,
        1..5u32,
        any::<bool>(),
        1..10u32,
        prop::option::of(5..20u32),
    );
    let order = (0..3usize, any::<bool>(), 1..25u32);
    let record = prop_oneof![
        1 => worker.prop_map(|(w, r, both, reg, left)| Pick::Worker(w, r, both, reg, left)),
        3 => order.prop_map(|(w, ride, day)| Pick::Order(w, ride, day)),
    ];
    prop_oneof![
        9 => (0..2usize, prop::collection::vec(record, 1..4))
            .prop_map(|(replica, records)| Step::Call { replica, records }),
        1 => (0..2usize).prop_map(Step::Restart),
    ]
}

/// Replays `steps` on two replicas sharing a database and, call by call, on a third
/// database through an ingest made afresh for every call (nothing kept): the outcomes
/// are the same.
async fn replay_against_fresh_reads(steps: Vec<Step>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = format!("sqlite:{}", dir.path().join("shared.db").display());
    let fresh = format!("sqlite:{}", dir.path().join("fresh.db").display());
    let mut replicas = [replica(&shared).await, replica(&shared).await];
    let industry = |ride: bool| if ride { "RIDE_HAILING" } else { DELIVERY };
    for (n, step) in steps.into_iter().enumerate() {
        match step {
            Step::Restart(r) => replicas[r] = replica(&shared).await,
            Step::Call {
                replica: r,
                records,
            } => {
                let records: Vec<proto::Record> = records
                    .iter()
                    .enumerate()
                    .map(|(i, record)| match *record {
                        Pick::Worker(w, revision, both, registered, left) => {
                            let industries: &[&str] = if both {
                                &[DELIVERY, "RIDE_HAILING"]
                            } else {
                                &[DELIVERY]
                            };
                            worker_revision(
                                &format!("W{w}"),
                                revision,
                                industries,
                                registered,
                                left,
                            )
                        }
                        Pick::Order(w, ride, day) => {
                            order_on(&format!("O{n}-{i}"), &format!("W{w}"), industry(ride), day)
                        }
                    })
                    .collect();
                let (ingest, platform) = &replicas[r];
                let kept = outcomes(ingest, platform, &records).await;
                let (ingest, platform) = replica(&fresh).await;
                let read = outcomes(&ingest, &platform, &records).await;
                assert_eq!(kept, read, "step {n} on replica {r}");
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// Whatever the sequence of worker revisions (new, repeated, older, leaving,
    /// industries changed) and orders on two replicas, with restarts, a replica that
    /// keeps workers between transactions answers exactly what a fresh read gives.
    #[test]
    fn kept_workers_judge_as_a_fresh_read_would(steps in proptest::collection::vec(step(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(replay_against_fresh_reads(steps));
    }
}

/// A chunk of `n` orders of W1, `<tag>-<i>`.
fn chunk_of(tag: &str, n: usize) -> proto::SubmitRequest {
    proto::SubmitRequest {
        records: (0..n)
            .map(|i| rec_order(order(&format!("{tag}-{i}"), "W1")))
            .collect(),
    }
}

/// Stored orders whose id starts with `prefix`.
async fn stored_like(pool: &sqlx::SqlitePool, prefix: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders WHERE order_id LIKE ?1")
        .bind(format!("{prefix}%"))
        .fetch_one(pool)
        .await
        .expect("count");
    n
}

/// The read-ahead does not count the gateway's own work as the caller's idle time: a
/// caller that sends its next chunk only after the previous one's answer, whose first
/// chunk's commit takes longer than the idle timeout, is answered for both.
#[tokio::test]
async fn submit_stream_idle_time_does_not_count_while_its_chunks_are_applied() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |c| {
        c.connections.idle_stream_timeout_ms = 400
    })
    .await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    let pool = gw.sql().await;
    let (release, locker) = hold_write_lock(&pool).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(chunk_of("IDLE1", 5)).await.expect("chunk 1");
    let mut answers = a
        .submit_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    // The first chunk waits a second for its commit.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let _ = release.send(());
    locker.await.expect("locker");
    let first = answers.message().await;
    assert!(matches!(first, Ok(Some(_))), "{first:?}");
    tx.send(chunk_of("IDLE2", 5)).await.expect("chunk 2");
    drop(tx);
    let second = answers.message().await;
    assert!(
        matches!(second, Ok(Some(_))),
        "the caller was never idle for 400 ms, yet: {second:?}"
    );
    assert_eq!(stored_like(&pool, "IDLE").await, 10);
    gw.stop().await;
}

/// A caller that goes away (its connection closed) while its chunks wait in the
/// platform's lane, behind another call's transaction: none of them is applied (no one
/// could be told), and the other call is.
#[tokio::test]
async fn submit_stream_chunks_queued_when_the_caller_goes_away_are_not_applied() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    let pool = gw.sql().await;
    let (release, locker) = hold_write_lock(&pool).await;
    // Another call of platform A, whose transaction waits for the write lock.
    let mut other = a.clone();
    let unary = tokio::spawn(async move {
        other
            .report_orders(proto::ReportOrdersRequest {
                orders: (0..100)
                    .map(|i| order(&format!("OTHER-{i}"), "W1"))
                    .collect(),
            })
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The stream's caller, through a TCP relay: stopping the relay closes its connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let relay_addr = listener.local_addr().expect("addr");
    let upstream = gw.addr;
    let relay = tokio::spawn(async move {
        let (mut down, _) = listener.accept().await.expect("accept");
        let mut up = tokio::net::TcpStream::connect(upstream).await.expect("up");
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    });
    let mut c = client(relay_addr, "platform-a").await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let call = tokio::spawn(async move {
        let mut answers = c
            .submit_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        while let Ok(Some(_)) = answers.message().await {}
    });
    for k in 1..=5 {
        tx.send(chunk_of(&format!("LEFT{k}"), 5))
            .await
            .expect("chunk");
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    relay.abort();
    let _ = relay.await;
    call.abort();
    let _ = call.await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = release.send(());
    locker.await.expect("locker");
    let other = unary.await.expect("task").expect("the other call");
    assert_eq!(other.get_ref().outcomes.len(), 100);
    // Time for anything still queued to be applied, were it to be.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(stored_like(&pool, "OTHER").await, 100);
    assert_eq!(stored_like(&pool, "LEFT").await, 0);
    drop(tx);
    gw.stop().await;
}
