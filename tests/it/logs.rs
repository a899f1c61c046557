//! No full resident ID number, name or mobile in the gateway's logs, at any level.

use oip_gateway::proto;

use crate::common::*;

#[tokio::test]
async fn personal_data_never_reaches_the_logs() {
    personal_data_never_reaches_logs_in("text").await;
}

/// The JSON format: one object per line, and no personal data either.
#[tokio::test]
async fn json_logs_are_one_object_per_line_without_personal_data() {
    let logs = personal_data_never_reaches_logs_in("json").await;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(
        logs.contains("\"message\":\"gateway listening\""),
        "{}",
        &logs[..logs.len().min(500)]
    );
}

async fn personal_data_never_reaches_logs_in(format: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = GatewayProcess::spawn(
        dir.path(),
        &[("RUST_LOG", "trace"), ("OIP_LOGGING__FORMAT", format)],
    );
    let mut c = client(gw.addr, "platform-a").await;

    let id = resident_id("32058319880808771");
    let name = "欧阳娜娜";
    let mobile = "13987654321";
    let mut good = worker("W-PII");
    good.id_number = id.clone();
    good.name = name.into();
    good.mobile = mobile.into();
    // Rejected records travel the error paths with the same personal data.
    let mut bad_mobile = good.clone();
    bad_mobile.worker_id = "W-PII-2".into();
    bad_mobile.mobile = "23987654321".into();
    let mut bad_id = good.clone();
    bad_id.worker_id = "W-PII-3".into();
    bad_id.id_number = format!("{}0", &id[..17]);
    let out = register(&mut c, vec![good.clone(), bad_mobile, bad_id.clone()]).await;
    assert_eq!(out.summary.expect("summary").accepted, 1);
    register(&mut c, vec![good.clone()]).await; // duplicate path
    let mut conflict = good.clone();
    conflict.name = "欧阳娜".into();
    register(&mut c, vec![conflict]).await; // conflict path
    c.list_workers(proto::ListRequest::default())
        .await
        .expect("list");
    report(&mut c, vec![order("O1", "W-PII")]).await;

    let logs = gw.captured_logs();
    assert!(
        logs.contains("gateway listening"),
        "the capture works: {}",
        &logs[..logs.len().min(500)]
    );
    assert!(
        logs.len() > 10_000,
        "trace level was on ({} bytes)",
        logs.len()
    );
    for secret in [
        id.as_str(),
        bad_id.id_number.as_str(),
        name,
        mobile,
        "23987654321",
    ] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
    logs
}

/// Each destination's queue depth and oldest pending age are logged periodically.
#[tokio::test]
async fn queue_depth_and_oldest_pending_age_are_logged() {
    use oip_gateway::proto::backend_sim_control_client::BackendSimControlClient;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = GatewayProcess::spawn(dir.path(), &[("OIP_FORWARD__QUEUE_REPORT_SECS", "1")]);
    let sim = gw.sim_addr.expect("embedded simulator");
    BackendSimControlClient::new(
        channel(sim, client_tls(Some("admin"), "ca.pem"))
            .await
            .expect("connect"),
    )
    .set_faults(proto::Faults {
        paused: true,
        ..Default::default()
    })
    .await
    .expect("pause");
    let mut c = client(gw.addr, "platform-a").await;
    register(&mut c, vec![worker("W1")]).await;

    // The log as it grows, without colour codes.
    let read = |gw: &GatewayProcess| {
        let raw = String::from_utf8_lossy(&gw.logs.lock().expect("log buffer")).into_owned();
        let mut plain = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        plain
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let logs = read(&gw);
        let reported = |destination: &str, pending: &str| {
            logs.lines().any(|l| {
                l.contains("outbox queue")
                    && l.contains(&format!("destination=\"{destination}\""))
                    && l.contains(&format!("pending={pending} "))
                    && l.contains("oldest_pending_age_s=")
            })
        };
        // Each report logs one destination after the other: wait for both lines.
        if reported("social-security", "1") && reported("tax", "0") {
            gw.kill();
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no queue report with the pending worker (social-security) and the tax queue in the logs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_refused_handshake_is_logged_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = GatewayProcess::spawn(dir.path(), &[]);
    for stem in ["expired", "untrusted"] {
        let _ = channel(gw.addr, client_tls(Some(stem), "ca.pem")).await;
        let mut c = oip_gateway::proto::platform_service_client::PlatformServiceClient::new(
            tonic::transport::Channel::from_shared(format!("https://{}", gw.addr))
                .expect("endpoint")
                .tls_config(client_tls(Some(stem), "ca.pem"))
                .expect("tls")
                .connect_lazy(),
        );
        let _ = c
            .list_workers(oip_gateway::proto::ListRequest::default())
            .await;
    }
    let logs = gw.captured_logs();
    assert!(
        !logs.contains('\u{1b}'),
        "no colour escapes when not on a terminal"
    );
    assert!(logs.contains("tls handshake refused"), "{logs}");
    assert!(
        logs.to_lowercase().contains("expired"),
        "the reason is named: {logs}"
    );
}

/// A caller's W3C `traceparent` is recorded with the call's audit entry and travels
/// with the items the call queued, to the backend, with the gateway's own trace id.
#[tokio::test]
async fn a_callers_traceparent_is_audited_and_reaches_the_backend() {
    use prost::Message as _;
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut req = tonic::Request::new(proto::ReportOrdersRequest {
        orders: vec![order("O-traced", "W1")],
    });
    req.metadata_mut()
        .insert("traceparent", parent.parse().expect("metadata"));
    let answer = a.report_orders(req).await.expect("report");
    let trace = answer
        .metadata()
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-trace-id")
        .to_string();
    assert!(
        trace.ends_with(".4bf92f3577b34da6a3ce929d0e0e4736"),
        "the caller's trace id is kept after the gateway's own: {trace}"
    );
    // A malformed traceparent is ignored, not an error.
    let mut bad = tonic::Request::new(proto::ListRequest::default());
    bad.metadata_mut()
        .insert("traceparent", "00-zz-11-01".parse().expect("metadata"));
    a.list_workers(bad).await.expect("still answered");

    let mut admin = oip_gateway::proto::admin_service_client::AdminServiceClient::new(
        role_channel(gw.addr, "admin").await,
    );
    let entries = admin
        .query_audit(proto::QueryAuditRequest {
            action: "oip.v1.PlatformService/ReportOrders".into(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .entries;
    assert!(
        entries
            .iter()
            .any(|e| e.trace_id == trace && e.outcome == "OK"),
        "{entries:?}"
    );
    await_delivery_states(&mut a, "order", "O-traced", &["DELIVERED"]).await;
    let store = oip_gateway::store::sim::SimStore::open(&format!(
        "sqlite:{}",
        gw.dir.path().join("backend-sim.db").display()
    ))
    .await
    .expect("simulator store");
    let delivered: Vec<proto::SocialSecurityItem> = store
        .payloads("social-security", "order")
        .await
        .expect("payloads")
        .iter()
        .map(|(_, p)| proto::SocialSecurityItem::decode(p.as_slice()).expect("item"))
        .collect();
    let header = delivered
        .iter()
        .filter_map(|i| i.header.as_ref())
        .find(|h| h.idempotency_key.ends_with("/order/O-traced/1"))
        .expect("the order reached the backend");
    assert_eq!(header.trace_id, trace);
    assert_eq!(header.traceparent, parent);
    gw.stop().await;
}
