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

/// Platform `uscc` as registered in `store`.
async fn registered(store: &dyn Store, uscc: &str) -> PlatformProfile {
    store
        .upsert_platform(&registration(uscc))
        .await
        .expect("register the platform")
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
    let a = registered(&*stores[0], oip_gateway::certs::DEMO_PLATFORM_A).await;
    let b = registered(&*stores[1], oip_gateway::certs::DEMO_PLATFORM_B).await;
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
    let a = registered(&*stores[0], oip_gateway::certs::DEMO_PLATFORM_A).await;
    let b = registered(&*stores[0], oip_gateway::certs::DEMO_PLATFORM_B).await;
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
    let a = registered(&*stores[0], oip_gateway::certs::DEMO_PLATFORM_A).await;
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
        .due_items(ss, now + 3_000, 1000, &[])
        .await
        .expect("due after the lease");
    let seqs = |d: &[oip_gateway::store::DueItem]| d.iter().map(|i| i.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&later), seqs(&claimed));
    // Now the second replica's: the first no longer gets them, even reading again.
    assert!(
        stores[0]
            .due_items(ss, now + 3_001, 1000, &[])
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

#[tokio::test]
async fn a_month_released_by_two_replicas_at_once_is_released_once() {
    let (stores, _pg) = replicas(2, 60_000).await;
    let pii = Pii::for_test();
    let a = registered(&*stores[0], oip_gateway::certs::DEMO_PLATFORM_A).await;
    written(&*stores[0], &pii, &a, &["W1", "W2"])
        .await
        .commit()
        .await
        .expect("commit");
    let period = oip_gateway::domain::period::Period::parse("2025-07").expect("period");
    let policy = || oip_gateway::ingest::Policy {
        declaration_deadline_day: 15,
        accident_margin_ms: 0,
    };
    let ingests: Vec<_> = stores
        .iter()
        .map(|s| {
            oip_gateway::ingest::Ingest::new(
                s.clone(),
                pii.clone(),
                Arc::new(RateBook::default()),
                policy(),
            )
        })
        .collect();
    let (first, second) = tokio::join!(
        ingests[0].release_month(&a, period),
        ingests[1].release_month(&a, period)
    );
    let (first, second) = (first.expect("release"), second.expect("release"));
    assert_eq!(
        (first.min(second), first.max(second)),
        (0, 1),
        "one replica releases the month's one statement, the other finds it released"
    );
    let end = stores[1].journal_end().await.expect("end");
    let page = stores[1]
        .journal(Destination::Tax, 0, u32::try_from(end).expect("end"))
        .await
        .expect("journal");
    let statements = page
        .entries
        .iter()
        .filter(|e| e.record_key.contains("/statement/"))
        .count();
    assert_eq!(statements, 1, "the statement is queued once");
}

// ---------------------------------------------------------------------------
// Real processes: replicas of `oip-gateway serve` on one database, one `backend-sim`.

mod processes {
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use oip_gateway::proto::{self, backend_sim_control_client::BackendSimControlClient};
    use prost::Message as _;
    use tokio::sync::Mutex;

    use crate::common::*;

    /// The backend simulator as a process of its own.
    struct Sim {
        child: Child,
        addr: std::net::SocketAddr,
    }

    impl Sim {
        fn start(dir: &std::path::Path) -> Self {
            let mut child = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
                .args([
                    "backend-sim",
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--database-url",
                ])
                .arg(format!("sqlite:{}", dir.join("backend-sim.db").display()))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn the simulator");
            let stdout = child.stdout.take().expect("stdout");
            let mut line = String::new();
            BufReader::new(stdout)
                .read_line(&mut line)
                .expect("the simulator's address");
            let addr = line
                .trim()
                .strip_prefix("listening on ")
                .unwrap_or_else(|| panic!("unexpected line {line:?}"))
                .parse()
                .expect("address");
            Self { child, addr }
        }
    }

    impl Drop for Sim {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The environment of a replica: the shared database, the simulator, short leases
    /// (a killed replica's items are delivered by the other within seconds).
    fn replica_env(database: &str, sim: &Sim) -> Vec<(String, String)> {
        let backend = format!("https://{}", sim.addr);
        [
            ("OIP_DATABASE_URL", database.to_string()),
            ("OIP_FORWARD__SIMULATE", "false".into()),
            ("OIP_FORWARD__SOCIAL_SECURITY_ENDPOINT", backend.clone()),
            ("OIP_FORWARD__TAX_ENDPOINT", backend),
            ("OIP_FORWARD__REQUEST_TIMEOUT_MS", "1500".into()),
            ("OIP_FORWARD__MIN_BACKOFF_MS", "20".into()),
            ("OIP_FORWARD__MAX_BACKOFF_MS", "200".into()),
            ("OIP_DATABASE__LEASE_MS", "2000".into()),
            ("RUST_LOG", "warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn spawn_replica(dir: &std::path::Path, env: &[(String, String)]) -> GatewayProcess {
        std::fs::create_dir_all(dir).expect("replica dir");
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        GatewayProcess::spawn_in(dir, &dir.join("unused.db"), &env)
    }

    /// One platform's calls, in the order they are sent: workers, then orders in
    /// chunks, corrections of some (cancelled), a chunk sent twice, a record that is
    /// rejected, and the month's declaration.
    fn calls(prefix: &str, workers: usize, orders: usize) -> Vec<Vec<proto::Record>> {
        let (period, at) = previous_month(10);
        let worker_id = |i: usize| format!("{prefix}W{i:03}");
        let order_id = |i: usize| format!("{prefix}O{i:04}");
        let mut calls: Vec<Vec<proto::Record>> = (0..workers)
            .collect::<Vec<_>>()
            .chunks(20)
            .map(|c| {
                c.iter()
                    .map(|&i| rec_worker(worker(&worker_id(i))))
                    .collect()
            })
            .collect();
        let order_of = |i: usize| {
            rec_order(order_at(
                &order_id(i),
                &worker_id(i % workers),
                "INSTANT_DELIVERY",
                "320100",
                &at,
            ))
        };
        for chunk in (0..orders).collect::<Vec<_>>().chunks(40) {
            calls.push(chunk.iter().map(|&i| order_of(i)).collect());
        }
        // The third chunk again (all DUPLICATE), a record that is rejected, and
        // corrections: the first ten orders cancelled.
        calls.push((80..120).map(order_of).collect());
        calls.push(vec![rec_order(order_at(
            &order_id(9999),
            &format!("{prefix}NOBODY"),
            "INSTANT_DELIVERY",
            "320100",
            &at,
        ))]);
        calls.push(
            (0..10)
                .map(|i| {
                    let mut o = order_at(
                        &order_id(i),
                        &worker_id(i % workers),
                        "INSTANT_DELIVERY",
                        "320100",
                        &at,
                    );
                    o.revision = Some(2);
                    o.status = "CANCELLED".into();
                    rec_order(o)
                })
                .collect(),
        );
        let billable = (orders - 10) as i64;
        calls.push(vec![rec_declaration(declaration(
            &format!("{prefix}D1"),
            &period,
            "320100",
            "INSTANT_DELIVERY",
            billable,
            billable * 20,
        ))]);
        calls
    }

    /// What a replica answered to each call of a platform, and whether the call was
    /// sent again to the other replica after a failure (its records may then be
    /// DUPLICATE where they were first applied by the call that failed).
    type Answers = Vec<(proto::BatchOutcome, bool)>;

    /// Sends `calls` one after another, call `i` to replica `i % 2`; a call that
    /// fails (its replica killed) is sent again to the other, until answered.
    async fn send(
        replicas: Arc<Mutex<Vec<std::net::SocketAddr>>>,
        stem: &'static str,
        calls: Vec<Vec<proto::Record>>,
        progress: tokio::sync::watch::Sender<usize>,
    ) -> Answers {
        let mut answers = Vec::new();
        for (i, records) in calls.into_iter().enumerate() {
            let mut target = i % 2;
            let mut retried = false;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let addr = replicas.lock().await[target];
                let answer = match tokio::time::timeout(
                    Duration::from_secs(10),
                    channel(addr, client_tls(Some(stem), "ca.pem")),
                )
                .await
                {
                    Ok(Ok(ch)) => PlatformClient::new(ch)
                        .submit(proto::SubmitRequest {
                            records: records.clone(),
                        })
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| s.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("connect timed out".into()),
                };
                match answer {
                    Ok(a) => {
                        answers.push((a, retried));
                        break;
                    }
                    Err(e) => {
                        assert!(Instant::now() < deadline, "call {i} never answered: {e}");
                        retried = true;
                        target = 1 - target;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            let _ = progress.send(i + 1);
        }
        answers
    }

    type PlatformClient =
        proto::platform_service_client::PlatformServiceClient<tonic::transport::Channel>;

    /// Every contribution change of a tax pull from `since` on (at most `max`), and
    /// the cursor to resume from.
    async fn tax_pull(addr: std::net::SocketAddr, since: &str, max: u32) -> (Vec<Vec<u8>>, String) {
        let mut tax = Tax::new(role_channel(addr, "tax").await);
        let stream = tax
            .pull_contributions(proto::PullRequest {
                since: since.into(),
                max_records: max,
                ..Default::default()
            })
            .await
            .expect("pull")
            .into_inner();
        let messages = drain(stream).await.expect("pulled");
        let cursor = messages
            .last()
            .map(|m| m.cursor.clone())
            .unwrap_or_default();
        let items = messages
            .into_iter()
            .filter_map(|m| m.item)
            .map(|i| i.encode_to_vec())
            .collect();
        (items, cursor)
    }

    async fn statements(addr: std::net::SocketAddr, stem: &str, period: &str) -> Vec<Vec<u8>> {
        let mut c = PlatformClient::new(role_channel(addr, stem).await);
        c.list_volume_statements(proto::ListVolumeStatementsRequest {
            period: period.into(),
        })
        .await
        .expect("statements")
        .into_inner()
        .statements
        .into_iter()
        .map(|s| s.encode_to_vec())
        .collect()
    }

    async fn declarations(addr: std::net::SocketAddr, stem: &str) -> Vec<Vec<u8>> {
        let mut c = PlatformClient::new(role_channel(addr, stem).await);
        c.list_declarations(proto::ListRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("declarations")
        .into_inner()
        .declarations
        .into_iter()
        .map(|d| {
            let mut d = d;
            d.received_at_ms = 0;
            d.encode_to_vec()
        })
        .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_on_one_database_with_one_killed_mid_load_store_and_deliver_every_record_once()
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = FreshPostgres::new().await;
        let sim = Sim::start(dir.path());
        let env = replica_env(&pg.url, &sim);
        let mut r0 = spawn_replica(&dir.path().join("r0"), &env);
        let mut r1 = Some(spawn_replica(&dir.path().join("r1"), &env));
        let replicas = Arc::new(Mutex::new(vec![
            r0.addr,
            r1.as_ref().map(|r| r.addr).expect("r1"),
        ]));
        let mut admin = Admin::new(role_channel(r0.addr, "admin").await);
        grant(&mut admin, TAX_ID, "tax", &["320000"]).await;

        let a_calls = calls("A", 60, 600);
        let b_calls = calls("B", 40, 400);
        let (a_progress, mut a_seen) = tokio::sync::watch::channel(0);
        let (b_progress, _) = tokio::sync::watch::channel(0);
        let a = tokio::spawn(send(
            replicas.clone(),
            "platform-a",
            a_calls.clone(),
            a_progress,
        ));
        let b = tokio::spawn(send(
            replicas.clone(),
            "platform-b",
            b_calls.clone(),
            b_progress,
        ));
        // Mid-load: replica 1 is killed (SIGKILL), and started again a few calls later.
        a_seen.wait_for(|n| *n >= 7).await.expect("progress");
        if let Some(mut r) = r1.take() {
            r.kill();
        }
        a_seen.wait_for(|n| *n >= 12).await.expect("progress");
        let restarted = spawn_replica(&dir.path().join("r1"), &env);
        replicas.lock().await[1] = restarted.addr;
        let r1 = restarted;
        let a_answers = a.await.expect("platform A's calls");
        let b_answers = b.await.expect("platform B's calls");
        assert!(
            a_answers.iter().any(|(_, retried)| *retried),
            "calls meant for the killed replica were sent to the other"
        );

        // One SQLite gateway fed the same calls in the same order.
        let single = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
        for (stem, calls, answers) in [
            ("platform-a", &a_calls, &a_answers),
            ("platform-b", &b_calls, &b_answers),
        ] {
            let mut c = single.client(stem).await;
            for (i, (records, (answer, retried))) in calls.iter().zip(answers).enumerate() {
                let want = submit(&mut c, records.clone()).await;
                let (got, want) = (brief(answer), brief(&want));
                if *retried {
                    // Applied by the call that failed, then DUPLICATE on its resend.
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            g == w || (g.0 == "DUPLICATE" && w.0 != "REJECTED"),
                            "{stem} call {i} (resent): {g:?} where one gateway gave {w:?}"
                        );
                    }
                    assert_eq!(got.len(), want.len());
                } else {
                    assert_eq!(got, want, "{stem} call {i}");
                }
            }
        }
        let r = [r0.addr, r1.addr];
        let (period, _) = previous_month(10);
        for stem in ["platform-a", "platform-b"] {
            for addr in r {
                assert_eq!(
                    statements(addr, stem, &period).await,
                    statements(single.addr, stem, &period).await,
                    "{stem}: the volume statements of one gateway"
                );
                assert_eq!(
                    declarations(addr, stem).await,
                    declarations(single.addr, stem).await,
                    "{stem}: the declarations and their reconciliation"
                );
            }
        }
        // A resend of everything, to either replica: every stored record DUPLICATE,
        // every rejected one rejected again.
        for (stem, calls) in [("platform-a", &a_calls), ("platform-b", &b_calls)] {
            let mut c = single.client(stem).await;
            let mut again = client(r[1], stem).await;
            for records in calls {
                let once = brief(&submit(&mut c, records.clone()).await);
                let replica = brief(&submit(&mut again, records.clone()).await);
                assert_eq!(replica, once, "{stem}: a resend");
                assert!(
                    replica
                        .iter()
                        .all(|o| o.0 == "DUPLICATE" || o.0 == "REJECTED"),
                    "{stem}: {replica:?}"
                );
            }
        }

        // Delivery: the outbox empties, and the simulator applied each delivered item
        // once (items a killed replica had claimed were delivered again by the other,
        // and dropped there as repeats).
        let pool = sqlx::PgPool::connect(&pg.url).await.expect("database");
        let deadline = Instant::now() + Duration::from_secs(60);
        let states: BTreeMap<String, String> = loop {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT idempotency_key, state FROM outbox")
                    .fetch_all(&pool)
                    .await
                    .expect("outbox");
            let pending = rows.iter().filter(|(_, s)| s == "pending").count();
            if pending == 0 {
                break rows.into_iter().collect();
            }
            assert!(Instant::now() < deadline, "still {pending} pending");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let sim_db = sqlx::SqlitePool::connect(&format!(
            "sqlite:{}",
            dir.path().join("backend-sim.db").display()
        ))
        .await
        .expect("the simulator's database");
        let applied: Vec<(String,)> = sqlx::query_as("SELECT idempotency_key FROM applied")
            .fetch_all(&sim_db)
            .await
            .expect("applied");
        let applied: std::collections::BTreeSet<String> =
            applied.into_iter().map(|(k,)| k).collect();
        // Nothing lost: every item is delivered, or was superseded by a newer version
        // of its record before it reached the backend (an enrolment's or a
        // statement's: the newer one carries the whole state).
        for (key, state) in &states {
            assert!(
                state == "delivered" || state == "superseded",
                "{key}: {state}"
            );
            if state == "delivered" {
                assert!(applied.contains(key), "{key} delivered but not applied");
            }
        }
        // Nothing extra: the simulator applied only items of the outbox (each key once,
        // repeats dropped); one superseded after a killed replica delivered it may be
        // among them.
        for key in &applied {
            assert!(states.contains_key(key), "{key} applied but never queued");
        }
        let mut control = BackendSimControlClient::new(
            channel(sim.addr, client_tls(Some("admin"), "ca.pem"))
                .await
                .expect("connect"),
        );
        let stats = control
            .stats(proto::StatsRequest {})
            .await
            .expect("stats")
            .into_inner();
        assert_eq!(
            stats.applied.iter().map(|k| k.count).sum::<u64>(),
            applied.len() as u64,
            "each applied once"
        );
        assert_eq!(stats.invalid_items, 0);

        // A tax pull resumed on the other replica from a cursor of the first gives
        // every item once.
        let (whole, _) = tax_pull(r[0], "", 0).await;
        assert!(!whole.is_empty());
        let (first, cursor) = tax_pull(r[0], "", (whole.len() / 3) as u32).await;
        let (rest, _) = tax_pull(r[1], &cursor, 0).await;
        let mut resumed = first;
        resumed.extend(rest);
        assert_eq!(resumed, whole);
        r0.kill();
    }
}

mod outage {
    use std::time::{Duration, Instant};

    use oip_gateway::proto;
    use sqlx::Connection as _;

    use crate::common::*;

    /// Cuts a database off as a restart of its server does, without touching the
    /// server's other databases (the rest of the suite uses them): new connections
    /// are refused and every open one is ended, transactions in flight with them;
    /// `restore` lets connections in again.
    async fn cut(server: &str, database: &str) {
        let mut admin = sqlx::PgConnection::connect(server).await.expect("admin");
        sqlx::query(&format!(
            "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
        ))
        .execute(&mut admin)
        .await
        .expect("refuse connections");
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(database)
        .execute(&mut admin)
        .await
        .expect("end connections");
    }

    async fn restore(server: &str, database: &str) {
        let mut admin = sqlx::PgConnection::connect(server).await.expect("admin");
        sqlx::query(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"))
            .execute(&mut admin)
            .await
            .expect("allow connections");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_outage_under_load_fails_calls_unavailable_loses_nothing_and_heals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = FreshPostgres::new().await;
        let database = pg.url.rsplit('/').next().expect("name").to_string();
        let mut gw = GatewayProcess::spawn_in(
            dir.path(),
            &dir.path().join("unused.db"),
            &[
                ("OIP_DATABASE_URL", pg.url.as_str()),
                ("OIP_DATABASE__ACQUIRE_TIMEOUT_MS", "1000"),
                ("RUST_LOG", "warn"),
            ],
        );
        let ops = gw.ops_addr.expect("operations listener");
        let mut c = client(gw.addr, "platform-a").await;
        let workers: Vec<proto::Worker> = (0..20).map(|i| worker(&format!("W{i}"))).collect();
        register(&mut c, workers).await;

        let load = {
            let addr = gw.addr;
            tokio::spawn(async move {
                let mut c = client(addr, "platform-a").await;
                let (mut acknowledged, mut refused) = (Vec::new(), Vec::new());
                let started = Instant::now();
                let mut n = 0;
                while started.elapsed() < Duration::from_secs(8) {
                    let ids: Vec<String> = (0..20).map(|k| format!("O{n}-{k}")).collect();
                    n += 1;
                    let orders = ids
                        .iter()
                        .enumerate()
                        .map(|(k, id)| order(id, &format!("W{k}")))
                        .collect();
                    match c.report_orders(proto::ReportOrdersRequest { orders }).await {
                        Ok(a) => {
                            let a = a.into_inner();
                            assert!(brief(&a).iter().all(|o| *o == accepted()), "{a:?}");
                            acknowledged.extend(ids);
                        }
                        Err(s) => refused.push((s.code(), ids)),
                    }
                }
                (acknowledged, refused)
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        cut(&postgres_server(), &database).await;
        // While the database is away the gateway is not ready.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _, _) = http_get(ops, "/ready").await;
            if status == 503 {
                break;
            }
            assert!(Instant::now() < deadline, "/ready still {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        restore(&postgres_server(), &database).await;
        let (acknowledged, refused) = load.await.expect("load");
        assert!(
            !refused.is_empty(),
            "calls were made while the database was away"
        );
        for (code, _) in &refused {
            assert_eq!(*code, tonic::Code::Unavailable, "a refused call says so");
        }
        // Healed without a restart: ready again, and calls succeed.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _, _) = http_get(ops, "/ready").await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "/ready still {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = report(&mut c, vec![order("AFTER", "W1")]).await;
        assert_eq!(brief(&after), vec![accepted()]);
        // Every acknowledged order is stored. A refused call stored all of its orders
        // or none (nearly always none; all only when the connection was lost after its
        // commit was made and before it was confirmed), and nothing else is stored.
        let stored: std::collections::BTreeSet<String> =
            stored_order_ids(&mut c).await.into_iter().collect();
        for id in &acknowledged {
            assert!(stored.contains(id), "acknowledged {id} is stored");
        }
        let mut refused_stored = 0;
        for (_, ids) in &refused {
            let here = ids.iter().filter(|id| stored.contains(*id)).count();
            assert!(
                here == 0 || here == ids.len(),
                "a call is applied whole or not at all"
            );
            refused_stored += here;
        }
        assert_eq!(stored.len(), acknowledged.len() + refused_stored + 1);
        gw.kill();
    }
}

mod shared_settings {
    use std::time::{Duration, Instant};

    use oip_gateway::proto;

    use crate::common::*;

    fn spawn(dir: &std::path::Path, url: &str) -> GatewayProcess {
        std::fs::create_dir_all(dir).expect("dir");
        GatewayProcess::spawn_in(
            dir,
            &dir.join("unused.db"),
            &[
                ("OIP_DATABASE_URL", url),
                ("OIP_FORWARD__ENABLED", "false"),
                ("OIP_ACCESS__CACHE_MS", "250"),
                ("RUST_LOG", "warn"),
            ],
        )
    }

    /// Polls `check` until it holds, for at most 10 seconds.
    async fn within_seconds<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check().await {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rates_and_rate_limits_set_through_one_replica_apply_on_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = FreshPostgres::new().await;
        let r0 = spawn(&dir.path().join("r0"), &pg.url);
        let r1 = spawn(&dir.path().join("r1"), &pg.url);
        let mut admin = Admin::new(role_channel(r0.addr, "admin").await);

        // Rates: a float for platform A, added through replica 0, rates the statements
        // replica 1 shows.
        let (period, at) = previous_month(10);
        let mut a1 = client(r1.addr, "platform-a").await;
        register(&mut a1, vec![worker("W1")]).await;
        let o = order_at("O1", "W1", "INSTANT_DELIVERY", "320100", &at);
        assert_eq!(brief(&report(&mut a1, vec![o]).await), vec![accepted()]);
        let amount = |addr| {
            let period = period.clone();
            async move {
                let mut c = client(addr, "platform-a").await;
                c.list_volume_statements(proto::ListVolumeStatementsRequest { period })
                    .await
                    .expect("statements")
                    .into_inner()
                    .statements
                    .first()
                    .map(|s| (s.multiplier.clone(), s.amount_fen))
                    .expect("a statement")
            }
        };
        let (multiplier, before) = amount(r1.addr).await;
        assert_eq!(multiplier, "1.0000");
        admin
            .append_rates(proto::RateTables {
                base_rates: vec![],
                floats: vec![proto::FloatRow {
                    uscc: oip_gateway::certs::DEMO_PLATFORM_A.into(),
                    division_code: "320100".into(),
                    year: Some(period[..4].parse().expect("year")),
                    multiplier: "2".into(),
                    recorded_at: String::new(),
                }],
            })
            .await
            .expect("append a float");
        within_seconds("the float on replica 1", || async {
            amount(r1.addr).await == ("2.0000".to_string(), before * 2)
        })
        .await;

        // Rate limits: one call a second for platform A, set through replica 0, refuses
        // a burst on replica 1; cleared through replica 0, the burst passes there again.
        let burst = |addr| async move {
            let mut c = client(addr, "platform-a").await;
            let mut refused = false;
            for _ in 0..5 {
                if let Err(s) = c.list_workers(proto::ListRequest::default()).await {
                    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                    refused = true;
                }
            }
            refused
        };
        assert!(!burst(r1.addr).await, "no limit yet");
        admin
            .put_rate_limit(proto::RateLimit {
                identity: PLATFORM_A_ID.into(),
                calls_per_second: Some(1),
                records_per_second: Some(1000),
                ..Default::default()
            })
            .await
            .expect("put a limit");
        within_seconds("the limit on replica 1", || burst(r1.addr)).await;
        admin
            .clear_rate_limit(proto::ClearRateLimitRequest {
                identity: PLATFORM_A_ID.into(),
            })
            .await
            .expect("clear the limit");
        tokio::time::sleep(Duration::from_secs(1)).await;
        within_seconds("no limit on replica 1", || async { !burst(r1.addr).await }).await;
        drop((r0, r1));
    }
}
