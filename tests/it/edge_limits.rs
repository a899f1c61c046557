//! Hostile connections and callers at the edge (issue 12): connections that never
//! start TLS, floods of idle streams, callers over their rates. Real gateway processes
//! where memory is measured, loopback only, bounded loops.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use oip_gateway::proto;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::*;

/// Resident memory of process `pid`, in bytes (Linux `/proc`).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

async fn health_within(addr: std::net::SocketAddr, limit: Duration) -> Duration {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let started = Instant::now();
    let answer = tokio::time::timeout(limit, async {
        let ch = channel(addr, client_tls(Some("platform-a"), "ca.pem"))
            .await
            .expect("a valid client connects");
        HealthClient::new(ch)
            .check(HealthCheckRequest::default())
            .await
            .expect("health answers")
    })
    .await;
    assert!(
        answer.is_ok(),
        "a valid client's health check did not answer within {limit:?}"
    );
    started.elapsed()
}

#[tokio::test]
async fn connections_that_never_start_tls_are_closed_and_lock_no_one_out() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().expect("tempdir");
    let timeout_ms = 2000u64;
    let mut gw = GatewayProcess::spawn(
        dir.path(),
        &[("OIP_CONNECTIONS__HANDSHAKE_TIMEOUT_MS", "2000")],
    );
    let started = Instant::now();
    let mut silent = Vec::with_capacity(2000);
    for _ in 0..2000 {
        silent.push(
            tokio::net::TcpStream::connect(gw.addr)
                .await
                .expect("tcp connect"),
        );
    }
    let opened = Instant::now();
    eprintln!("2,000 connections opened in {:?}", started.elapsed());
    // While they are held, a real client is served at once.
    let took = health_within(gw.addr, Duration::from_secs(2)).await;
    eprintln!("health check with 2,000 silent connections held: {took:?}");

    // Every silent connection is closed by the server by the handshake timeout (the
    // oldest ones earlier, to make room: connections.max_handshakes is 1,024).
    let reads = silent.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_millis(timeout_ms + 3000), s.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    });
    let closed = futures::future::join_all(reads).await;
    let still_open = closed.iter().filter(|c| !**c).count();
    assert_eq!(still_open, 0, "connections never closed by the server");
    eprintln!(
        "all closed {:?} after the last was opened",
        opened.elapsed()
    );
    assert!(
        opened.elapsed() < Duration::from_millis(timeout_ms + 2000),
        "closed within the handshake timeout"
    );
    // And the gateway still serves.
    health_within(gw.addr, Duration::from_secs(2)).await;
    let logs = gw.captured_logs();
    assert!(
        logs.lines().count() < 200,
        "refusals are logged on a budget, not one line each: {} lines",
        logs.lines().count()
    );
}

/// A client stream of orders that sends its headers and then nothing.
fn silent_stream() -> impl futures::Stream<Item = proto::ReportOrdersRequest> + Send + 'static {
    futures::stream::pending()
}

#[tokio::test]
async fn a_flood_of_idle_streams_is_refused_beyond_the_limits_and_costs_little_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = GatewayProcess::spawn(
        dir.path(),
        &[("OIP_CONNECTIONS__IDLE_STREAM_TIMEOUT_MS", "4000")],
    );
    let pid = gw.child.id();
    // Warm up: one call of each kind used below.
    let mut b = client(gw.addr, "platform-b").await;
    let _ = report(&mut b, vec![order("O-warm", "W-none")]).await;
    let before = rss_bytes(pid);

    let mut connections = Vec::new();
    for _ in 0..10 {
        connections.push(
            channel(gw.addr, client_tls(Some("platform-a"), "ca.pem"))
                .await
                .expect("connect"),
        );
    }
    let started = Instant::now();
    let flooding = connections.clone();
    let calls = (0..10_000).map(move |i| {
        let mut c =
            proto::platform_service_client::PlatformServiceClient::new(flooding[i % 10].clone());
        async move { c.stream_orders(silent_stream()).await.map(|_| ()) }
    });
    let flood = tokio::spawn(
        futures::stream::iter(calls)
            .buffer_unordered(10_000)
            .collect::<Vec<_>>(),
    );
    // While the flood is under way, another platform is served, and the calls the
    // gateway holds at once stay within connections.max_calls_per_identity (64, plus
    // platform B's).
    let ops = gw.ops_addr.expect("operations listener");
    let mut held_at_once = 0.0f64;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, _, body) = http_get(ops, "/metrics").await;
        if let Some(v) = body
            .lines()
            .find_map(|l| l.strip_prefix("oip_calls_in_progress "))
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            held_at_once = held_at_once.max(v);
        }
    }
    let peak = rss_bytes(pid);
    let answered = tokio::time::timeout(
        Duration::from_secs(3),
        report(&mut b, vec![order("O-b-1", "W-none")]),
    )
    .await
    .expect("platform B is answered during the flood");
    assert_eq!(answered.outcomes.len(), 1);

    let results = tokio::time::timeout(Duration::from_secs(60), flood)
        .await
        .expect("every stream is answered")
        .expect("flood task");
    let count = |code: tonic::Code| {
        results
            .iter()
            .filter(|r| r.as_ref().err().map(|s| s.code()) == Some(code))
            .count()
    };
    let (refused, idle) = (
        count(tonic::Code::ResourceExhausted),
        count(tonic::Code::DeadlineExceeded),
    );
    eprintln!(
        "10,000 idle streams: {refused} refused, {idle} ended idle, in {:?}; rss {} MB before, {} MB at peak",
        started.elapsed(),
        before >> 20,
        peak >> 20
    );
    assert_eq!(
        refused + idle,
        10_000,
        "each stream refused or ended: {:?}",
        results.iter().find(|r| {
            !matches!(
                r.as_ref().err().map(|s| s.code()),
                Some(tonic::Code::ResourceExhausted | tonic::Code::DeadlineExceeded)
            )
        })
    );
    assert!(
        (1.0..=65.0).contains(&held_at_once),
        "at most connections.max_calls_per_identity held at once: {held_at_once}"
    );
    assert!(
        idle >= 1 && refused >= 9_000,
        "{refused} refused, {idle} idle"
    );
    assert!(
        peak.saturating_sub(before) < 64 << 20,
        "memory grew by {} MB",
        (peak - before) >> 20
    );
    drop(connections);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes(pid);
    eprintln!("rss {} MB after they closed", after >> 20);
    assert!(
        after.saturating_sub(before) < 32 << 20,
        "memory returned: {} MB before, {} MB after",
        before >> 20,
        after >> 20
    );
    gw.kill();
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_retry_advice_and_nothing_is_applied() {
    let gw = TestGateway::spawn_with(|c| {
        c.rate_limits.records_per_second = 100;
    })
    .await;
    let mut a = gw.client("platform-a").await;
    let mut b = gw.client("platform-b").await;
    let workers: Vec<_> = (0..100).map(|i| worker(&format!("W{i:03}"))).collect();
    let first = register(&mut a, workers).await;
    assert_eq!(first.outcomes.len(), 100);
    // The second's budget is spent: the next 100 records (a second's worth, while the
    // first call took less) are refused with advice.
    let refused = a
        .register_workers(proto::RegisterWorkersRequest {
            workers: (0..100)
                .map(|i| worker(&format!("W-extra{i:02}")))
                .collect(),
        })
        .await
        .expect_err("over the rate");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let pushback: u64 = refused
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry advice");
    assert!((1..=1001).contains(&pushback), "{pushback}");
    assert!(pushback >= 10, "a wait to honour: {pushback}");
    assert!(
        refused.message().contains("nothing"),
        "{}",
        refused.message()
    );
    // Another platform at the same moment is unaffected.
    let other = register(&mut b, vec![worker("W-b")]).await;
    assert_eq!(brief(&other)[0], accepted());
    // Nothing of the refused call was stored.
    let listed = a
        .list_workers(proto::ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.workers.iter().all(|w| {
        w.worker
            .as_ref()
            .is_none_or(|w| !w.worker_id.starts_with("W-extra"))
    }));
    // After the advised wait it goes through.
    tokio::time::sleep(Duration::from_millis(pushback)).await;
    let later = register(&mut a, vec![worker("W-extra00")]).await;
    assert_eq!(brief(&later)[0], accepted());
    // More than a second's worth at once can never pass: it says so.
    let too_many = a
        .register_workers(proto::RegisterWorkersRequest {
            workers: (0..101).map(|i| worker(&format!("X{i:03}"))).collect(),
        })
        .await
        .expect_err("over the burst");
    assert_eq!(too_many.code(), tonic::Code::ResourceExhausted);
    assert!(
        too_many.message().contains("at most 100 records"),
        "{}",
        too_many.message()
    );
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_and_does_not_wait_past_its_grace() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw =
        GatewayProcess::spawn(dir.path(), &[("OIP_CONNECTIONS__SHUTDOWN_GRACE_SECS", "2")]);
    let ch = channel(gw.addr, client_tls(Some("platform-a"), "ca.pem"))
        .await
        .expect("connect");
    let mut watch = HealthClient::new(ch.clone())
        .watch(HealthCheckRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("status").expect("a status");
    assert_eq!(first.status, 1, "SERVING");
    // A client stream that keeps its call open (sending nothing more).
    let (tx, rx) = tokio::sync::mpsc::channel::<proto::ReportOrdersRequest>(1);
    let mut platform = proto::platform_service_client::PlatformServiceClient::new(ch);
    let open = tokio::spawn(async move {
        platform
            .stream_orders(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(proto::ReportOrdersRequest {
        orders: vec![order("O-open", "W-none")],
    })
    .await
    .expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    let next = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("health changes at once")
        .expect("status")
        .expect("a status");
    assert_eq!(next.status, 2, "NOT_SERVING while draining");
    // New connections are refused at once (the listener is closed), not left hanging.
    let refused = tokio::time::timeout(
        Duration::from_secs(2),
        channel(gw.addr, client_tls(Some("platform-b"), "ca.pem")),
    )
    .await
    .expect("answered at once, not left waiting");
    assert!(refused.is_err(), "no new connection while draining");
    let status = loop {
        if let Some(s) = gw.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "serve waited past its grace for an open call"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("stopped {:?} after the signal", signalled.elapsed());
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "the grace was given"
    );
    assert_eq!(status.code(), Some(0), "{status:?}");
    drop(tx);
    let _ = open.await;
    let logs = gw.captured_logs();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(logs.contains("calls unfinished"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_completes_a_file_under_a_low_rate_by_backing_off() {
    let gw = TestGateway::spawn_with(|c| {
        c.rate_limits.records_per_second = 100;
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_oip-gateway");
    // Large chunks few at a time, and small chunks many at a time (more in flight to
    // resend after each refusal).
    for (batch, window, prefix) in [("100", "8", "a"), ("7", "64", "b")] {
        let file = dir.path().join(format!("load-{prefix}.jsonl"));
        let report = dir.path().join(format!("report-{prefix}.jsonl"));
        let made = std::process::Command::new(bin)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["loadgen", "--workers", "100", "--orders", "500"])
            .args(["--id-prefix", prefix, "--out"])
            .arg(&file)
            .output()
            .expect("loadgen");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let started = Instant::now();
        let out = std::process::Command::new(bin)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "submit",
                "--quiet",
                "--batch-size",
                batch,
                "--window",
                window,
            ])
            .args(["--endpoint", &gw.endpoint()])
            .arg(&file)
            .arg("--report")
            .arg(&report)
            .output()
            .expect("submit");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        eprintln!("{stdout}{stderr}took {:?}", started.elapsed());
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(stdout.starts_with("600 records"), "{stdout}");
        assert!(
            stderr.contains("the gateway asked to slow down"),
            "{stderr}"
        );
        // A complete report: every line once, in order, each applied once.
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report)
            .expect("report")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 600);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l["line"].as_u64(), Some(i as u64 + 1), "{l}");
            assert_eq!(l["outcome"], "ACCEPTED", "{l}");
        }
        // At least five seconds: 600 records at 100 a second, the first 100 at once.
        assert!(started.elapsed() >= Duration::from_secs(5));
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_sets_a_platforms_rate_live_audited_and_kept() {
    let keep = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", keep.path().join("oip.db").display());
    let gw = TestGateway::spawn_with(|c| c.database_url = url.clone()).await;
    let e = gw.endpoint();
    let bin = env!("CARGO_BIN_EXE_oip-gateway");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .args(["--endpoint", &e])
            .output()
            .expect("cli");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let a_id = format!("oip://platform/{}", oip_gateway::certs::DEMO_PLATFORM_A);
    let (ok, out, err) = cli(&[
        "admin",
        "limits",
        "put",
        "--identity",
        &a_id,
        "--calls-per-second",
        "1000",
        "--records-per-second",
        "5",
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("default\tcalls=5000/s\trecords=100000/s"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{a_id}\tcalls=1000/s\trecords=5/s")),
        "{out}"
    );
    assert!(out.contains("by=oip://admin/root"), "{out}");

    // At once, without a restart: platform A may send 5 records a second, B is unaffected.
    let mut a = gw.client("platform-a").await;
    let mut b = gw.client("platform-b").await;
    let six: Vec<_> = (0..6).map(|i| worker(&format!("W{i}"))).collect();
    let refused = a
        .register_workers(proto::RegisterWorkersRequest {
            workers: six.clone(),
        })
        .await
        .expect_err("over A's own rate");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("5 records a second"),
        "{}",
        refused.message()
    );
    assert_eq!(register(&mut b, six).await.outcomes.len(), 6);

    // A bad rate changes nothing and says why.
    let (ok, _, err) = cli(&[
        "admin",
        "limits",
        "put",
        "--identity",
        "oip://platform/NOT-A-USCC",
        "--calls-per-second",
        "1",
        "--records-per-second",
        "1",
    ]);
    assert!(!ok && err.contains("InvalidArgument"), "{err}");

    // Audited: the intent, then the outcome.
    let (_, audit, _) = cli(&[
        "admin",
        "audit",
        "query",
        "--action",
        "oip.v1.AdminService/PutRateLimit",
    ]);
    let outcomes: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains(&a_id))
        .filter_map(|l| l.split('\t').nth(7))
        .collect();
    assert_eq!(outcomes, ["STARTED", "OK"], "{audit}");

    // Kept across a restart.
    gw.stop().await;
    let gw = TestGateway::spawn_with(|c| c.database_url = url.clone()).await;
    let mut a = gw.client("platform-a").await;
    let refused = a
        .register_workers(proto::RegisterWorkersRequest {
            workers: (0..6).map(|i| worker(&format!("W{i}"))).collect(),
        })
        .await
        .expect_err("the rate survives a restart");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    // Cleared: the default again at once; clearing again is NOT_FOUND.
    let e = gw.endpoint();
    let clear = |expect: bool| {
        let out = std::process::Command::new(bin)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "admin",
                "limits",
                "clear",
                "--identity",
                &a_id,
                "--endpoint",
                &e,
            ])
            .output()
            .expect("cli");
        assert_eq!(
            out.status.success(),
            expect,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    clear(true);
    assert!(clear(false).contains("NotFound"));
    let six: Vec<_> = (0..6).map(|i| worker(&format!("W{i}"))).collect();
    assert_eq!(register(&mut a, six).await.outcomes.len(), 6);
    gw.stop().await;
}

/// A TLS connection with platform A's certificate that never starts HTTP/2.
async fn tls_without_http2(
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_connect(addr, rustls_client("platform-a", &[b"h2"])).await
}

#[tokio::test]
async fn one_certificate_cannot_take_every_connection_nor_hold_one_without_http2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = GatewayProcess::spawn(
        dir.path(),
        &[
            ("OIP_CONNECTIONS__MAX_CONNECTIONS_PER_IDENTITY", "5"),
            ("OIP_CONNECTIONS__HANDSHAKE_TIMEOUT_MS", "1000"),
        ],
    );
    // TLS done, HTTP/2 never started: closed by the timeout, holding nothing.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tls_without_http2(gw.addr).await);
    }
    let started = Instant::now();
    for mut s in silent {
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(4), s.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "a TLS connection without HTTP/2 is closed"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    // Five of platform A's connections at most; platform B is unaffected.
    let mut held = Vec::new();
    for i in 0..5 {
        let ch = channel(gw.addr, client_tls(Some("platform-a"), "ca.pem"))
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        let mut c = proto::platform_service_client::PlatformServiceClient::new(ch.clone());
        c.list_workers(proto::ListRequest::default())
            .await
            .expect("served");
        held.push(ch);
    }
    let mut sixth = proto::platform_service_client::PlatformServiceClient::new(
        tonic::transport::Channel::from_shared(format!("https://{}", gw.addr))
            .expect("endpoint")
            .tls_config(client_tls(Some("platform-a"), "ca.pem"))
            .expect("tls")
            .connect_lazy(),
    );
    assert!(
        sixth
            .list_workers(proto::ListRequest::default())
            .await
            .is_err(),
        "a sixth connection of the same certificate is closed"
    );
    let mut b = client(gw.addr, "platform-b").await;
    b.list_workers(proto::ListRequest::default())
        .await
        .expect("another platform is served");
    drop(held);
    let logs = gw.captured_logs();
    assert!(
        logs.contains("max_connections_per_identity"),
        "the refusal names the limit: {logs}"
    );
}

/// The figure of an unlabelled or labelled sample in the operations listener's metrics.
async fn metric(ops: std::net::SocketAddr, sample: &str) -> Option<f64> {
    let (_, _, body) = http_get(ops, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(sample))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn connections_are_aged_out_and_dead_peers_dropped_by_keepalive() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Ageing alone (no keepalive pings).
    let mut gw = GatewayProcess::spawn(
        dir.path(),
        &[
            ("OIP_CONNECTIONS__MAX_CONNECTION_AGE_SECS", "1"),
            ("OIP_CONNECTIONS__MAX_CONNECTION_AGE_GRACE_SECS", "1"),
            ("OIP_CONNECTIONS__KEEPALIVE_INTERVAL_SECS", "0"),
        ],
    );
    let ops = gw.ops_addr.expect("operations listener");
    let established = r#"oip_connections{state="established"} "#;
    // A client that used its connection once and keeps it: asked to go away after
    // max_connection_age_secs, closed after the grace.
    let mut a = client(gw.addr, "platform-a").await;
    a.list_workers(proto::ListRequest::default())
        .await
        .expect("served");
    assert_eq!(metric(ops, established).await, Some(1.0));
    let deadline = Instant::now() + Duration::from_secs(8);
    while metric(ops, established).await != Some(0.0) {
        assert!(Instant::now() < deadline, "the connection was not aged out");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gw.kill();
    // Keepalive alone (connections never aged): a peer that starts HTTP/2 and then
    // answers nothing (no PING acknowledgement) is dropped.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = GatewayProcess::spawn(
        dir.path(),
        &[
            ("OIP_CONNECTIONS__MAX_CONNECTION_AGE_SECS", "0"),
            ("OIP_CONNECTIONS__KEEPALIVE_INTERVAL_SECS", "1"),
            ("OIP_CONNECTIONS__KEEPALIVE_TIMEOUT_SECS", "1"),
            ("OIP_CONNECTIONS__IDLE_STREAM_TIMEOUT_MS", "60000"),
        ],
    );
    let mut dead = tls_without_http2(gw.addr).await;
    dead.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    dead.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    dead.flush().await.expect("flush");
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match dead.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // SETTINGS, PINGs: never answered
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a dead peer is dropped");
    eprintln!("dead peer dropped after {:?}", started.elapsed());
    // And the gateway still serves.
    let mut b = client(gw.addr, "platform-b").await;
    b.list_workers(proto::ListRequest::default())
        .await
        .expect("served");
    gw.kill();
}

/// The idle timeout (`connections.idle_stream_timeout_ms`) counts only the time the
/// gateway waits for the caller, never its own work: a client stream whose part waits
/// for its commit longer than the timeout (here the write lock is held by another
/// connection for 1 s against a 400 ms timeout), and whose caller sends the next
/// message right after that commit, ends OK with both parts applied. The stream looks
/// at what the caller has already sent before each commit (to write the call's entry
/// with the last part); that look must not start the idle timer for the commit.
#[tokio::test]
async fn a_slow_commit_never_counts_against_a_client_streams_idle_timeout() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |c| {
        c.connections.idle_stream_timeout_ms = 400
    })
    .await;
    let mut a = gw.client("platform-a").await;
    let pool = gw.sql().await;
    let (release, locker) = hold_write_lock(&pool).await;
    let msg = |id: &str| proto::RegisterWorkersRequest {
        workers: vec![worker(id)],
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(msg("I1")).await.expect("first message");
    let call = tokio::spawn(async move {
        a.stream_workers(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    // The first part waits for its commit longer than the idle timeout.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _ = release.send(());
    locker.await.expect("locker");
    // Once it is committed, the caller sends its next message soon after.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM workers WHERE worker_id = 'I1'")
            .fetch_one(&pool)
            .await
            .expect("workers");
        if n == 1 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(msg("I2")).await.expect("second message");
    drop(tx);
    let out = call
        .await
        .expect("call task")
        .expect("the caller was never idle for 400 ms")
        .into_inner();
    assert_eq!(out.outcomes.len(), 2);
    gw.stop().await;
}
