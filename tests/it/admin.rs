//! The admin service's checks: platform registrations are validated and replace the
//! previous one; the audit log is queried by identity, time range and action; rates
//! appended are used from the next batch.

use oip_gateway::certs::DEMO_PLATFORM_B;
use oip_gateway::proto;
use tonic::Code;

use crate::common::*;

fn registration() -> proto::PlatformRegistration {
    proto::PlatformRegistration {
        uscc: DEMO_PLATFORM_B.into(),
        name: "B renamed".into(),
        industries: vec!["INSTANT_DELIVERY".into(), "RIDE_HAILING".into()],
        divisions: vec![proto::DivisionPilot {
            division_code: "320100".into(),
            pilot_start: "2025-07-01".into(),
        }],
        delivery_tier: "B".into(),
        delivery_tier_overrides: [("320100".to_string(), "A".to_string())].into(),
    }
}

#[tokio::test]
async fn platform_registrations_are_checked_and_replace_the_previous_one() {
    let gw = TestGateway::spawn().await;
    let mut admin = gw.admin().await;
    type Mutation = Box<dyn Fn(&mut proto::PlatformRegistration)>;
    let bad: Vec<(&str, Mutation)> = vec![
        ("uscc", Box::new(|r| r.uscc = "91320500MA1DEMB02X".into())),
        ("name", Box::new(|r| r.name = " ".into())),
        (
            "industries",
            Box::new(|r| r.industries = vec!["TAXI".into()]),
        ),
        ("industries", Box::new(|r| r.industries.clear())),
        (
            "divisions",
            Box::new(|r| r.divisions[0].division_code = "110100".into()),
        ),
        ("divisions", Box::new(|r| r.divisions.clear())),
        (
            "divisions",
            Box::new(|r| r.divisions.push(r.divisions[0].clone())),
        ),
        (
            "pilot_start",
            Box::new(|r| r.divisions[0].pilot_start = "2025-13-01".into()),
        ),
        ("delivery_tier", Box::new(|r| r.delivery_tier = "C".into())),
        (
            "delivery_tier_overrides",
            Box::new(|r| {
                r.delivery_tier_overrides = [("999999".to_string(), "A".to_string())].into()
            }),
        ),
        // A tier for a city the platform is not in would never apply.
        (
            "delivery_tier_overrides",
            Box::new(|r| {
                r.delivery_tier_overrides = [("320500".to_string(), "A".to_string())].into()
            }),
        ),
        // Tiers apply to a city or province, never a county.
        (
            "delivery_tier_overrides",
            Box::new(|r| {
                r.delivery_tier_overrides = [("320102".to_string(), "A".to_string())].into()
            }),
        ),
    ];
    for (field, mutate) in bad {
        let mut r = registration();
        mutate(&mut r);
        let err = admin.put_platform(r).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }

    let stored = admin
        .put_platform(registration())
        .await
        .expect("register")
        .into_inner();
    assert_eq!(stored, registration());
    let listed = admin
        .list_platforms(proto::ListPlatformsRequest {})
        .await
        .expect("list")
        .into_inner()
        .platforms;
    let b = listed
        .iter()
        .find(|p| p.uscc == DEMO_PLATFORM_B)
        .expect("B listed");
    assert_eq!(b, &registration(), "Suzhou was dropped, ride-hailing added");

    // The platform's next call sees the new registration: ride-hailing is accepted
    // now, Suzhou is no longer a pilot division.
    let mut client = gw.client("platform-b").await;
    let mut w = worker("WB");
    w.industries = vec!["RIDE_HAILING".into()];
    assert_eq!(
        brief(&register(&mut client, vec![w]).await),
        vec![accepted()]
    );
    let mut o = order("OB", "WB");
    o.industry = "RIDE_HAILING".into();
    assert_eq!(
        brief(&report(&mut client, vec![o.clone()]).await),
        vec![accepted()]
    );
    o.order_id = "OB-sz".into();
    o.division_code = "320500".into();
    o.accepted_at = "2026-02-02T11:00:00+08:00".into();
    o.completed_at = "2026-02-02T11:35:00+08:00".into();
    let got = brief(&report(&mut client, vec![o]).await);
    assert_eq!(got[0].1, "PLATFORM_NOT_IN_PILOT", "{got:?}");
}

#[tokio::test]
async fn the_audit_log_is_queried_by_identity_time_and_action() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let mut admin = gw.admin().await;
    register(&mut a, vec![worker("W1")]).await;
    let between = chrono::Utc::now().to_rfc3339();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    a.list_workers(proto::ListRequest::default())
        .await
        .expect("list");
    grant(&mut admin, TAX_ID, "tax", &["320100"]).await;

    let query = |identity: &str, from: &str, to: &str, action: &str| proto::QueryAuditRequest {
        identity: identity.into(),
        from: from.into(),
        to: to.into(),
        action: action.into(),
        page_size: 0,
        page_token: String::new(),
    };
    let actions = |r: proto::QueryAuditResponse| -> Vec<String> {
        r.entries.into_iter().map(|e| e.action).collect()
    };
    let mut ask = async |q| actions(admin.query_audit(q).await.expect("query").into_inner());
    assert_eq!(
        ask(query(PLATFORM_A_ID, "", "", "")).await,
        vec![
            "oip.v1.PlatformService/RegisterWorkers",
            "oip.v1.PlatformService/ListWorkers"
        ],
        "a write is audited once, in the transaction that stores its records"
    );
    assert_eq!(
        ask(query(
            PLATFORM_A_ID,
            "",
            "",
            "oip.v1.PlatformService/ListWorkers"
        ))
        .await,
        vec!["oip.v1.PlatformService/ListWorkers"]
    );
    assert_eq!(
        ask(query(PLATFORM_A_ID, &between, "", "")).await,
        vec!["oip.v1.PlatformService/ListWorkers"]
    );
    assert_eq!(
        ask(query(PLATFORM_A_ID, "", &between, "")).await,
        vec!["oip.v1.PlatformService/RegisterWorkers"]
    );
    assert_eq!(
        ask(query("", "", "", "oip.v1.AdminService/PutGrant")).await,
        vec!["oip.v1.AdminService/PutGrant"; 2],
        "the intent and the outcome"
    );
    let err = admin
        .query_audit(query("", "yesterday", "", ""))
        .await
        .expect_err("bad time");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Paging: one entry a page, in seq order, every entry once (of one identity: each
    // query is itself audited, so the whole log grows while it is paged).
    let mut token = String::new();
    let mut seqs = Vec::new();
    loop {
        let page = admin
            .query_audit(proto::QueryAuditRequest {
                identity: PLATFORM_A_ID.into(),
                page_size: 1,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        seqs.extend(page.entries.iter().map(|e| e.seq));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seqs, vec![1, 2]);
}
