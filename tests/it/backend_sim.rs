//! The backend simulator as a real mTLS gRPC server: each idempotency key applied once,
//! repeats counted, faults injected on demand.

use oip_gateway::backend_sim::{BackendSim, SimConfig};
use oip_gateway::proto::{
    self, backend_sim_control_client::BackendSimControlClient,
    social_security_backend_client::SocialSecurityBackendClient,
    tax_backend_client::TaxBackendClient,
};

use crate::common::*;

/// The embedded simulator trusts the shared CA's certificates for nothing: a platform
/// (even an ungranted one) can neither deliver a forged item nor pause deliveries, and
/// an administrator of the shared CA cannot deliver either; the gateway's own link does
/// deliver.
#[tokio::test]
async fn the_embedded_simulator_takes_deliveries_from_its_gateway_only() {
    let gw = TestGateway::spawn().await;
    let sim = gw.sim_addr.expect("simulator");
    for stem in ["platform-ungranted", "platform-a", "admin", "gateway"] {
        let ch = channel(sim, client_tls(Some(stem), "ca.pem"))
            .await
            .expect("connect");
        let forged = SocialSecurityBackendClient::new(ch.clone())
            .deliver(proto::DeliverSocialSecurityRequest {
                items: vec![ss_order("91320500MA1DEMB02D/order/FORGED/1")],
            })
            .await
            .expect_err("refused");
        assert_eq!(
            forged.code(),
            tonic::Code::PermissionDenied,
            "{stem}: {forged:?}"
        );
        assert!(
            forged.message().contains("may not deliver"),
            "{}",
            forged.message()
        );
        let tax = TaxBackendClient::new(ch.clone())
            .deliver(proto::DeliverTaxRequest { items: vec![] })
            .await
            .expect_err("refused");
        assert_eq!(tax.code(), tonic::Code::PermissionDenied, "{stem}");
        let control = BackendSimControlClient::new(ch)
            .set_faults(proto::Faults {
                paused: true,
                ..Default::default()
            })
            .await;
        if stem == "admin" {
            assert!(control.is_ok(), "an administrator steers the simulator");
            let mut c = BackendSimControlClient::new(
                channel(sim, client_tls(Some("admin"), "ca.pem"))
                    .await
                    .expect("connect"),
            );
            c.set_faults(proto::Faults::default())
                .await
                .expect("resume");
        } else {
            let e = control.expect_err("refused");
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{stem}");
        }
    }
    // The gateway itself still delivers.
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    report(&mut a, vec![order("O1", "W1")]).await;
    await_delivery_states(&mut a, "order", "O1", &["DELIVERED"]).await;
    gw.stop().await;
}

fn header(key: &str) -> Option<proto::ItemHeader> {
    Some(proto::ItemHeader {
        idempotency_key: key.into(),
        platform: oip_gateway::certs::DEMO_PLATFORM_A.into(),
        correction: false,
        ..Default::default()
    })
}

fn ss_order(key: &str) -> proto::SocialSecurityItem {
    proto::SocialSecurityItem {
        header: header(key),
        payload: Some(proto::social_security_item::Payload::Order(order(
            "O1", "W1",
        ))),
    }
}

fn results(r: &proto::DeliverResponse) -> Vec<proto::DeliveryResult> {
    r.results.iter().map(|x| x.result()).collect()
}

#[tokio::test]
async fn applies_each_key_once_and_injects_faults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = tls_files();
    let sim = BackendSim::start(SimConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url: format!("sqlite:{}", dir.path().join("sim.db").display()),
        ca: tls.ca,
        cert: tls.cert,
        key: tls.key,
        also_trust: None,
        delivery_identities: vec!["oip://gateway/oip-gateway".into()],
    })
    .await
    .expect("simulator starts");
    // Deliveries with the gateway's certificate, control with an administrator's.
    let gateway = channel(sim.addr, client_tls(Some("gateway"), "ca.pem"))
        .await
        .expect("connect");
    let admin = channel(sim.addr, client_tls(Some("admin"), "ca.pem"))
        .await
        .expect("connect");
    let mut ss = SocialSecurityBackendClient::new(gateway.clone());
    let mut tax = TaxBackendClient::new(gateway);
    let mut control = BackendSimControlClient::new(admin);
    use proto::DeliveryResult::{Delivered, Invalid, Repeated};

    let worker_item = proto::SocialSecurityItem {
        header: header("k-worker"),
        payload: Some(proto::social_security_item::Payload::Worker(worker("W1"))),
    };
    let no_key = proto::SocialSecurityItem {
        header: None,
        ..ss_order("")
    };
    let r = ss
        .deliver(proto::DeliverSocialSecurityRequest {
            items: vec![
                worker_item.clone(),
                ss_order("k-order"),
                ss_order("k-order"),
                no_key,
            ],
        })
        .await
        .expect("deliver")
        .into_inner();
    assert_eq!(results(&r), vec![Delivered, Delivered, Repeated, Invalid]);
    let r = ss
        .deliver(proto::DeliverSocialSecurityRequest {
            items: vec![worker_item],
        })
        .await
        .expect("deliver")
        .into_inner();
    assert_eq!(results(&r), vec![Repeated], "a resend is dropped by key");

    let statement = proto::TaxItem {
        header: header("k-statement"),
        payload: Some(proto::tax_item::Payload::Statement(proto::StatementItem {
            period: "2025-07".into(),
            division_code: "320100".into(),
            industry: "INSTANT_DELIVERY".into(),
            billable_count: 10,
            base_fen_per_order: 7,
            multiplier: "1.0000".into(),
            amount_fen: 70,
        })),
    };
    let r = tax
        .deliver(proto::DeliverTaxRequest {
            items: vec![statement],
        })
        .await
        .expect("tax")
        .into_inner();
    assert_eq!(results(&r), vec![Delivered]);

    // Faults: paused, always failing, chosen keys invalid; then back to normal.
    let set = |f: proto::Faults| {
        let mut c = control.clone();
        async move { c.set_faults(f).await.expect("set faults") }
    };
    set(proto::Faults {
        paused: true,
        ..Default::default()
    })
    .await;
    let err = ss
        .deliver(proto::DeliverSocialSecurityRequest {
            items: vec![ss_order("k2")],
        })
        .await
        .expect_err("paused");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    set(proto::Faults {
        fail_fraction: 1.0,
        ..Default::default()
    })
    .await;
    let err = ss
        .deliver(proto::DeliverSocialSecurityRequest {
            items: vec![ss_order("k2")],
        })
        .await
        .expect_err("failing");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    set(proto::Faults {
        reject_keys: vec!["k2".into()],
        ..Default::default()
    })
    .await;
    let r = ss
        .deliver(proto::DeliverSocialSecurityRequest {
            items: vec![ss_order("k2"), ss_order("k3")],
        })
        .await
        .expect("deliver")
        .into_inner();
    assert_eq!(results(&r), vec![Invalid, Delivered]);
    assert!(r.results[0].reason.contains("fault"));
    let bad = control
        .set_faults(proto::Faults {
            fail_fraction: 2.0,
            ..Default::default()
        })
        .await
        .expect_err("bad fraction");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let stats = control
        .stats(proto::StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let applied: Vec<(String, u64)> = stats
        .applied
        .into_iter()
        .map(|k| (k.kind, k.count))
        .collect();
    assert_eq!(
        applied,
        vec![
            ("social-security/order".to_string(), 2),
            ("social-security/worker".to_string(), 1),
            ("tax/statement".to_string(), 1)
        ]
    );
    assert_eq!(
        (
            stats.repeated_items,
            stats.failed_calls,
            stats.invalid_items
        ),
        (2, 2, 2)
    );
    sim.shutdown().await.expect("shutdown");
}
