//! Authentication in the TLS handshake and authorisation by grant.

use oip_gateway::proto;

use crate::common::*;

/// A call with this TLS configuration must fail before reaching the service: either
/// the connection is refused or the first call fails at the transport.
async fn assert_refused(gw: &TestGateway, tls: tonic::transport::ClientTlsConfig) {
    let Ok(ch) = channel(gw.addr, tls).await else {
        return;
    };
    let mut c = Client::new(ch);
    let err = c
        .register_workers(proto::RegisterWorkersRequest {
            workers: vec![worker("W-intruder")],
        })
        .await
        .expect_err("the handshake must refuse this client");
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
        ),
        "refused in the transport, not by the service: {err:?}"
    );
    assert_ne!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn refuses_clients_without_a_trusted_valid_certificate() {
    let gw = TestGateway::spawn().await;
    assert_refused(&gw, client_tls(None, "ca.pem")).await;
    assert_refused(&gw, client_tls(Some("untrusted"), "ca.pem")).await;
    assert_refused(&gw, client_tls(Some("expired"), "ca.pem")).await;
    // Nothing of the intruders was stored.
    let mut a = gw.client("platform-a").await;
    assert!(stored_order_ids(&mut a).await.is_empty());
    let workers = a
        .list_workers(proto::ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(workers.workers.is_empty());
}

#[tokio::test]
async fn a_certificate_without_a_grant_may_do_nothing() {
    let gw = TestGateway::spawn().await;
    for stem in ["platform-ungranted", "tax", "social-security", "admin"] {
        let mut c = gw.client(stem).await;
        let err = c
            .register_workers(proto::RegisterWorkersRequest {
                workers: vec![worker("W1")],
            })
            .await
            .expect_err("no platform grant");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{stem}: {err:?}");
        let err = c
            .list_orders(proto::ListRequest::default())
            .await
            .expect_err("no grant");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{stem}");
    }
}

#[tokio::test]
async fn a_platform_sees_and_uses_only_its_own_records() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let mut b = gw.client("platform-b").await;
    assert_eq!(
        brief(&register(&mut b, vec![worker("WB")]).await),
        vec![accepted()]
    );
    assert_eq!(
        brief(&report(&mut b, vec![order("OB", "WB")]).await),
        vec![accepted()]
    );

    // A cannot read B's worker or order, by listing or by id.
    for id in ["", "WB"] {
        let w = a
            .list_workers(proto::ListRequest {
                id: id.into(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        assert!(w.workers.is_empty());
    }
    assert!(stored_order_ids(&mut a).await.is_empty());
    // ...nor use B's worker, nor touch B's order id.
    let out = report(&mut a, vec![order("OB", "WB")]).await;
    assert_eq!(out.outcomes[0].code, "WORKER_NOT_REGISTERED");
    // B still sees exactly its own.
    assert_eq!(stored_order_ids(&mut b).await, vec!["OB".to_string()]);
    let rejections = a
        .list_rejections(proto::ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(rejections.rejections.len(), 1);
    let rb = b
        .list_rejections(proto::ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(rb.rejections.is_empty(), "B does not see A's rejections");
}

#[tokio::test]
async fn health_and_reflection_are_served_over_mtls() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let gw = TestGateway::spawn().await;
    let ch = channel(gw.addr, client_tls(Some("tax"), "ca.pem"))
        .await
        .expect("connect");
    let resp = HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: "oip.v1.PlatformService".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        resp.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let ch = channel(gw.addr, client_tls(Some("tax"), "ca.pem"))
        .await
        .expect("connect");
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"oip.v1.PlatformService".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn read_back_masks_personal_data_and_pages() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let workers: Vec<_> = (0..5).map(|i| worker(&format!("W{i}"))).collect();
    register(&mut a, workers).await;
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let page = a
            .list_workers(proto::ListRequest {
                page_size: 2,
                page_token: token.clone(),
                id: String::new(),
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.workers.len() <= 2);
        for w in page.workers.into_iter().filter_map(|s| s.worker) {
            assert_eq!(w.id_number, "1101**********002X");
            assert_eq!(w.mobile, "138****8000");
            assert_eq!(w.name, "张**");
            seen.push(w.worker_id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, vec!["W0", "W1", "W2", "W3", "W4"]);
    let bad = a
        .list_rejections(proto::ListRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn an_oversized_batch_is_refused_whole() {
    let gw = TestGateway::spawn_with(|c| c.limits.max_batch_records = 3).await;
    let mut a = gw.client("platform-a").await;
    let err = a
        .register_workers(proto::RegisterWorkersRequest {
            workers: (0..4).map(|i| worker(&format!("W{i}"))).collect(),
        })
        .await
        .expect_err("too many");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let w = a
        .list_workers(proto::ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(w.workers.is_empty(), "nothing of a refused call is stored");
}
