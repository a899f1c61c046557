//! The operations listener (`/live`, `/ready`, `/metrics`) of a real gateway: the
//! metrics parsed by a Prometheus text-format parser and checked against the calls the
//! test made; readiness following the database's writability, and gRPC health with it.

use std::time::{Duration, Instant};

use oip_gateway::proto;

use crate::common::*;

fn scrape(body: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// The value of the sample named `metric` whose labels include all of `labels`.
fn value(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .and_then(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(*v),
            prometheus_parse::Value::Histogram(b) => b.last().map(|c| c.count),
            _ => None,
        })
}

#[tokio::test]
async fn metrics_count_the_calls_records_and_refusals_made() {
    let gw = TestGateway::spawn_with(|c| c.rate_limits.records_per_second = 50).await;
    let ops = gw.ops_addr.expect("operations listener");
    assert_eq!(http_get(ops, "/live").await.0, 200);
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    for i in 0..3 {
        report(&mut a, vec![order(&format!("O{i}"), "W1")]).await;
    }
    // One rejected (unknown worker), one call denied, one over the rate.
    report(&mut a, vec![order("O-x", "W-none")]).await;
    let mut ungranted = gw.client("platform-ungranted").await;
    let denied = ungranted
        .report_orders(proto::ReportOrdersRequest {
            orders: vec![order("O-u", "W1")],
        })
        .await
        .expect_err("no grant");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let over = a
        .register_workers(proto::RegisterWorkersRequest {
            // More than a second's worth: refused however long the test took so far.
            workers: (0..51).map(|i| worker(&format!("X{i}"))).collect(),
        })
        .await
        .expect_err("over the rate");
    assert_eq!(over.code(), tonic::Code::ResourceExhausted);

    // A method the gateway does not serve: counted, but under a fixed label value.
    let mut grpc = tonic::client::Grpc::new(role_channel(gw.addr, "platform-a").await);
    grpc.ready().await.expect("ready");
    let bogus: Result<tonic::Response<proto::ListWorkersResponse>, _> = grpc
        .unary(
            tonic::Request::new(proto::ListRequest::default()),
            http::uri::PathAndQuery::from_static("/oip.v1.PlatformService/Bogus123"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_eq!(
        bogus.expect_err("not served").code(),
        tonic::Code::Unimplemented
    );

    let (status, head, body) = http_get(ops, "/metrics").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_lowercase().contains("application/openmetrics-text"),
        "{head}"
    );
    let s = scrape(&body);
    let platform = "oip.v1.PlatformService";
    let calls = |method: &str, code: &str| {
        value(
            &s,
            "grpc_server_handled_total",
            &[
                ("grpc_service", platform),
                ("grpc_method", method),
                ("grpc_code", code),
            ],
        )
    };
    assert_eq!(calls("ReportOrders", "OK"), Some(4.0), "{body}");
    assert_eq!(
        calls("ReportOrders", "PERMISSION_DENIED"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(calls("RegisterWorkers", "OK"), Some(1.0), "{body}");
    assert_eq!(
        calls("RegisterWorkers", "RESOURCE_EXHAUSTED"),
        Some(1.0),
        "{body}"
    );
    let records = |kind: &str, outcome: &str, code: &str| {
        value(
            &s,
            "oip_records_total",
            &[("kind", kind), ("outcome", outcome), ("code", code)],
        )
    };
    assert_eq!(records("order", "ACCEPTED", ""), Some(3.0), "{body}");
    assert_eq!(
        records("order", "REJECTED", "WORKER_NOT_REGISTERED"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(records("worker", "ACCEPTED", ""), Some(1.0), "{body}");
    assert_eq!(
        value(&s, "oip_calls_refused_total", &[("reason", "record_rate")]),
        Some(1.0),
        "{body}"
    );
    // Six ReportOrders answers were timed (four OK, one denied... and the histogram
    // counts every call of the method).
    assert_eq!(
        value(
            &s,
            "grpc_server_handling_seconds",
            &[("grpc_service", platform), ("grpc_method", "ReportOrders")]
        ),
        Some(5.0),
        "{body}"
    );
    assert!(
        value(&s, "oip_connections", &[("state", "established")]).is_some_and(|v| v >= 2.0),
        "{body}"
    );
    assert!(
        value(&s, "oip_handshakes_total", &[("result", "accepted")]).is_some_and(|v| v >= 2.0),
        "{body}"
    );
    assert!(
        value(
            &s,
            "oip_outbox_pending",
            &[("destination", "social-security")]
        )
        .is_some(),
        "{body}"
    );
    assert!(value(&s, "oip_outbox_dead_letters", &[("destination", "tax")]).is_some());
    assert!(
        value(
            &s,
            "oip_outbox_oldest_pending_age_seconds",
            &[("destination", "tax")]
        )
        .is_some()
    );
    assert!(
        value(&s, "oip_audit_write_seconds", &[]).is_some_and(|v| v >= 1.0),
        "{body}"
    );
    // The batches were applied in ingest transactions, each stage timed.
    assert!(
        value(&s, "oip_ingest_transaction_calls", &[]).is_some_and(|v| v >= 1.0),
        "{body}"
    );
    for stage in ["begin", "load", "decide", "write_orders", "audit", "commit"] {
        assert!(
            value(&s, "oip_ingest_stage_seconds_total", &[("stage", stage)])
                .is_some_and(|v| v > 0.0),
            "{stage}: {body}"
        );
    }
    assert_eq!(
        value(
            &s,
            "oip_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{body}"
    );
    assert!(!body.contains("Bogus123"), "label values stay a fixed set");
    let mut admin =
        proto::admin_service_client::AdminServiceClient::new(role_channel(gw.addr, "admin").await);
    let entries = admin
        .query_audit(proto::QueryAuditRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .entries;
    assert!(
        !entries
            .iter()
            .any(|e| e.action.contains("Bogus") || e.scope.contains("Bogus")),
        "a made-up method is not written to the audit log with its path"
    );
    assert_eq!(
        value(
            &s,
            "grpc_server_handled_total",
            &[("grpc_method", "unknown"), ("grpc_code", "UNIMPLEMENTED")]
        ),
        Some(1.0),
        "{body}"
    );
    // No personal data, no caller identity in any label.
    assert!(!body.contains("oip://"), "{body}");
    assert!(!body.contains("11010519491231002X") && !body.contains("张三丰"));
    gw.stop().await;
}

/// Makes `files` unwritable even for root (immutable) or gives them back; false when
/// this file system cannot.
fn immutable(files: &[std::path::PathBuf], on: bool) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    for f in files.iter().filter(|f| f.exists()) {
        if root {
            let ok = std::process::Command::new("chattr")
                .arg(if on { "+i" } else { "-i" })
                .arg(f)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return false;
            }
        } else {
            let mode = if on { 0o400 } else { 0o600 };
            if std::fs::set_permissions(f, std::fs::Permissions::from_mode(mode)).is_err() {
                return false;
            }
        }
    }
    true
}

async fn ready_becomes(ops: std::net::SocketAddr, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = http_get(ops, "/ready").await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/ready stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readiness_follows_the_database_and_health_follows_readiness() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    // In the target directory: a real disk, where the immutable flag works.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let mut gw = GatewayProcess::spawn(dir.path(), &[("OIP_OPERATIONS__PROBE_INTERVAL_MS", "200")]);
    let ops = gw.ops_addr.expect("operations listener");
    assert_eq!(ready_becomes(ops, 200).await, "ready\n");
    let ch = channel(gw.addr, client_tls(Some("platform-a"), "ca.pem"))
        .await
        .expect("connect");
    let mut health = HealthClient::new(ch);
    let serving = |h: &tonic_health::pb::HealthCheckResponse| h.status;
    assert_eq!(
        serving(
            &health
                .check(HealthCheckRequest::default())
                .await
                .expect("health")
                .into_inner()
        ),
        1
    );

    let files = vec![dir.path().join("oip.db"), dir.path().join("oip.db-wal")];
    // Where the file system (or a container without CAP_LINUX_IMMUTABLE) cannot make
    // the file unwritable, another writer holding the database's exclusive lock makes
    // it unwritable for the gateway just the same.
    let mut holder = None;
    if !immutable(&files, true) {
        immutable(&files, false);
        use sqlx::Connection as _;
        let mut c = sqlx::SqliteConnection::connect(&format!(
            "sqlite:{}",
            dir.path().join("oip.db").display()
        ))
        .await
        .expect("a second connection");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut c)
            .await
            .expect("exclusive lock");
        holder = Some(c);
    }
    let why = ready_becomes(ops, 503).await;
    assert!(
        why.contains("cannot be written") || why.contains("store"),
        "{why}"
    );
    assert_eq!(
        serving(
            &health
                .check(HealthCheckRequest::default())
                .await
                .expect("health")
                .into_inner()
        ),
        2,
        "NOT_SERVING while the store cannot be written"
    );
    assert_eq!(http_get(ops, "/live").await.0, 200, "still live");
    match holder {
        Some(mut c) => {
            sqlx::query("ROLLBACK")
                .execute(&mut c)
                .await
                .expect("release");
        }
        None => {
            immutable(&files, false);
        }
    }
    assert_eq!(ready_becomes(ops, 200).await, "ready\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while serving(
        &health
            .check(HealthCheckRequest::default())
            .await
            .expect("health")
            .into_inner(),
    ) != 1
    {
        assert!(Instant::now() < deadline, "health back to SERVING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it takes writes again.
    let mut a = client(gw.addr, "platform-a").await;
    assert_eq!(register(&mut a, vec![worker("W1")]).await.outcomes.len(), 1);
    let logs = gw.captured_logs();
    assert!(
        logs.contains("not ready") && logs.contains("ready again"),
        "{logs}"
    );
}
