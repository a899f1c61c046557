//! Grants: every role × every RPC × own scope / other scope / no grant / expired
//! grant, with the exact status code, and every denial audited; grant changes take
//! effect on the next call.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use oip_gateway::certs::{DEMO_PLATFORM_A, DEMO_PLATFORM_B};
use oip_gateway::domain::time::now_millis;
use oip_gateway::proto::{
    self, admin_service_client::AdminServiceClient, platform_service_client::PlatformServiceClient,
    social_security_service_client::SocialSecurityServiceClient,
    tax_service_client::TaxServiceClient,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::common::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Own,
    Other,
    NoGrant,
    Expired,
}

/// The division a pull asks for: inside the grant (320100) or outside it.
fn division(state: State) -> &'static str {
    if state == State::Other {
        "320500"
    } else {
        "320100"
    }
}

type Call = Box<dyn Fn(Channel, State) -> BoxFuture<'static, Result<(), Status>> + Send + Sync>;

fn ok<T>(r: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    r.map(|_| ())
}

async fn drained<T>(r: Result<tonic::Response<tonic::Streaming<T>>, Status>) -> Result<(), Status> {
    drain(r?.into_inner()).await.map(|_| ())
}

fn pull_request(state: State) -> proto::PullRequest {
    proto::PullRequest {
        divisions: vec![division(state).into()],
        ..Default::default()
    }
}

fn platform_b() -> proto::PlatformRegistration {
    proto::PlatformRegistration {
        uscc: DEMO_PLATFORM_B.into(),
        name: "B".into(),
        industries: vec!["INSTANT_DELIVERY".into()],
        divisions: vec![
            proto::DivisionPilot {
                division_code: "320100".into(),
                pilot_start: "2025-07-01".into(),
            },
            proto::DivisionPilot {
                division_code: "320500".into(),
                pilot_start: "2026-01-01".into(),
            },
        ],
        delivery_tier: "B".into(),
        delivery_tier_overrides: Default::default(),
    }
}

macro_rules! rpc {
    ($owner:expr, $name:expr, |$ch:ident, $st:ident| $body:expr) => {
        (
            $owner,
            $name,
            Box::new(
                move |$ch: Channel, $st: State| -> BoxFuture<'static, Result<(), Status>> {
                    let _ = $st;
                    Box::pin(async move { $body })
                },
            ) as Call,
        )
    };
}

/// Every RPC of the gateway: (owning role, full method name, a valid call).
fn rpcs() -> Vec<(&'static str, &'static str, Call)> {
    type P = PlatformServiceClient<Channel>;
    type A = AdminServiceClient<Channel>;
    vec![
        rpc!(
            "platform",
            "oip.v1.PlatformService/RegisterWorkers",
            |ch, st| ok(P::new(ch)
                .register_workers(proto::RegisterWorkersRequest {
                    workers: vec![worker("WM")]
                })
                .await)
        ),
        rpc!(
            "platform",
            "oip.v1.PlatformService/StreamWorkers",
            |ch, st| ok(P::new(ch)
                .stream_workers(futures::stream::iter(vec![proto::RegisterWorkersRequest {
                    workers: vec![worker("WM")]
                }]))
                .await)
        ),
        rpc!(
            "platform",
            "oip.v1.PlatformService/ReportOrders",
            |ch, st| ok(P::new(ch)
                .report_orders(proto::ReportOrdersRequest {
                    orders: vec![order("OM", "WM")]
                })
                .await)
        ),
        rpc!(
            "platform",
            "oip.v1.PlatformService/StreamOrders",
            |ch, st| ok(P::new(ch)
                .stream_orders(futures::stream::iter(vec![proto::ReportOrdersRequest {
                    orders: vec![order("OM", "WM")]
                }]))
                .await)
        ),
        rpc!(
            "platform",
            "oip.v1.PlatformService/SubmitDeclarations",
            |ch, st| ok(P::new(ch)
                .submit_declarations(proto::SubmitDeclarationsRequest {
                    declarations: vec![declaration(
                        "DM",
                        "2025-07",
                        "320100",
                        "INSTANT_DELIVERY",
                        1,
                        7
                    )],
                })
                .await)
        ),
        rpc!(
            "platform",
            "oip.v1.PlatformService/StreamDeclarations",
            |ch, st| ok(P::new(ch)
                .stream_declarations(futures::stream::iter(vec![
                    proto::SubmitDeclarationsRequest {
                        declarations: vec![declaration(
                            "DM",
                            "2025-07",
                            "320100",
                            "INSTANT_DELIVERY",
                            1,
                            7
                        )],
                    }
                ]))
                .await)
        ),
        rpc!(
            "platform",
            "oip.v1.PlatformService/ReportAccidents",
            |ch, st| ok(P::new(ch)
                .report_accidents(proto::ReportAccidentsRequest {
                    accidents: vec![accident("AM", "WM", "OM")]
                })
                .await)
        ),
        rpc!(
            "platform",
            "oip.v1.PlatformService/StreamAccidents",
            |ch, st| ok(P::new(ch)
                .stream_accidents(futures::stream::iter(vec![proto::ReportAccidentsRequest {
                    accidents: vec![accident("AM", "WM", "OM")]
                }]))
                .await)
        ),
        rpc!("platform", "oip.v1.PlatformService/Submit", |ch, st| ok(
            P::new(ch)
                .submit(proto::SubmitRequest {
                    records: vec![rec_worker(worker("WM"))]
                })
                .await
        )),
        rpc!(
            "platform",
            "oip.v1.PlatformService/SubmitStream",
            |ch, st| drained(
                P::new(ch)
                    .submit_stream(futures::stream::iter(vec![proto::SubmitRequest {
                        records: vec![rec_worker(worker("WM"))]
                    }]))
                    .await
            )
            .await
        ),
        rpc!(
            "platform",
            "oip.v1.PlatformService/ListWorkers",
            |ch, st| ok(P::new(ch).list_workers(proto::ListRequest::default()).await)
        ),
        rpc!(
            "platform",
            "oip.v1.PlatformService/ListOrders",
            |ch, st| ok(P::new(ch).list_orders(proto::ListRequest::default()).await)
        ),
        rpc!(
            "platform",
            "oip.v1.PlatformService/ListRejections",
            |ch, st| ok(P::new(ch)
                .list_rejections(proto::ListRequest::default())
                .await)
        ),
        rpc!(
            "platform",
            "oip.v1.PlatformService/ListDeclarations",
            |ch, st| ok(P::new(ch)
                .list_declarations(proto::ListRequest::default())
                .await)
        ),
        rpc!(
            "platform",
            "oip.v1.PlatformService/ListVolumeStatements",
            |ch, st| ok(P::new(ch)
                .list_volume_statements(proto::ListVolumeStatementsRequest {
                    period: "2025-07".into()
                })
                .await)
        ),
        rpc!(
            "platform",
            "oip.v1.PlatformService/ListDeliveries",
            |ch, st| ok(P::new(ch)
                .list_deliveries(proto::ListDeliveriesRequest {
                    kind: "order".into(),
                    id: "OM".into()
                })
                .await)
        ),
        rpc!("admin", "oip.v1.AdminService/PutPlatform", |ch, st| ok(
            A::new(ch).put_platform(platform_b()).await
        )),
        rpc!("admin", "oip.v1.AdminService/ListPlatforms", |ch, st| ok(
            A::new(ch)
                .list_platforms(proto::ListPlatformsRequest {})
                .await
        )),
        rpc!("admin", "oip.v1.AdminService/PutGrant", |ch, st| ok(
            A::new(ch)
                .put_grant(proto::GrantRequest {
                    identity: "oip://tax/matrix-extra".into(),
                    role: "tax".into(),
                    scopes: vec!["320100".into()],
                    expires_at: String::new(),
                })
                .await
        )),
        rpc!("admin", "oip.v1.AdminService/RevokeGrant", |ch, st| ok(
            A::new(ch)
                .revoke_grant(proto::RevokeRequest {
                    identity: "oip://tax/matrix-extra".into(),
                    role: "tax".into(),
                    scopes: vec![],
                })
                .await
        )),
        rpc!("admin", "oip.v1.AdminService/ListGrants", |ch, st| ok(
            A::new(ch)
                .list_grants(proto::ListGrantsRequest::default())
                .await
        )),
        rpc!("admin", "oip.v1.AdminService/ListRates", |ch, st| ok(
            A::new(ch).list_rates(proto::ListRatesRequest {}).await
        )),
        rpc!("admin", "oip.v1.AdminService/AppendRates", |ch, st| ok(
            A::new(ch).append_rates(proto::RateTables::default()).await
        )),
        rpc!("admin", "oip.v1.AdminService/QueryAudit", |ch, st| ok(
            A::new(ch)
                .query_audit(proto::QueryAuditRequest {
                    page_size: 1,
                    ..Default::default()
                })
                .await
        )),
        rpc!("admin", "oip.v1.AdminService/VerifyAudit", |ch, st| ok(
            A::new(ch).verify_audit(proto::VerifyAuditRequest {}).await
        )),
        rpc!("admin", "oip.v1.AdminService/ListDeadLetters", |ch, st| ok(
            A::new(ch)
                .list_dead_letters(proto::ListDeadLettersRequest::default())
                .await
        )),
        rpc!(
            "admin",
            "oip.v1.AdminService/ReplayDeadLetters",
            |ch, st| ok(A::new(ch)
                .replay_dead_letters(proto::DeadLetterSelection {
                    seqs: vec![999_999],
                    ..Default::default()
                })
                .await)
        ),
        rpc!(
            "admin",
            "oip.v1.AdminService/DiscardDeadLetters",
            |ch, st| ok(A::new(ch)
                .discard_dead_letters(proto::DeadLetterSelection {
                    seqs: vec![999_999],
                    ..Default::default()
                })
                .await)
        ),
        rpc!("tax", "oip.v1.TaxService/PullContributions", |ch, st| {
            drained(
                TaxServiceClient::new(ch)
                    .pull_contributions(pull_request(st))
                    .await,
            )
            .await
        }),
        rpc!(
            "social-security",
            "oip.v1.SocialSecurityService/PullSocialSecurity",
            |ch, st| drained(
                SocialSecurityServiceClient::new(ch)
                    .pull_social_security(pull_request(st))
                    .await
            )
            .await
        ),
    ]
}

/// (certificate stem, identity, role, own scope, other scope).
const ROLES: [(&str, &str, &str, &str, &str); 4] = [
    (
        "platform-a",
        PLATFORM_A_ID,
        "platform",
        DEMO_PLATFORM_A,
        DEMO_PLATFORM_B,
    ),
    // Tax and social security keep their grant in "other": they ask for a division
    // outside it.
    ("tax", TAX_ID, "tax", "320100", "320100"),
    (
        "social-security",
        SS_ID,
        "social-security",
        "320100",
        "320100",
    ),
    ("admin", ADMIN_ID, "admin", "*", "320000"),
];

/// Sets `identity`'s grants directly in the database (the admin API refuses some of
/// these states, e.g. an admin grant with a division scope).
async fn set_state(
    pool: &sqlx::SqlitePool,
    identity: &str,
    role: &str,
    own: &str,
    other: &str,
    state: State,
) {
    sqlx::query("DELETE FROM grants WHERE identity = ?1")
        .bind(identity)
        .execute(pool)
        .await
        .expect("delete grants");
    let (scope, expires_at) = match state {
        State::NoGrant => return,
        State::Own => (own, None),
        State::Other => (other, None),
        State::Expired => (own, Some(now_millis() - 60_000)),
    };
    sqlx::query(
        "INSERT INTO grants (identity, role, scope, expires_at, granted_at, granted_by)
         VALUES (?1, ?2, ?3, ?4, ?5, 'test')",
    )
    .bind(identity)
    .bind(role)
    .bind(scope)
    .bind(expires_at)
    .bind(now_millis())
    .execute(pool)
    .await
    .expect("insert grant");
}

#[tokio::test]
async fn every_role_reaches_only_its_own_rpcs_in_its_own_scope_and_every_denial_is_audited() {
    // Grants are changed in the database behind the gateway's back: nothing cached.
    let gw = TestGateway::spawn_on(Backend::Sqlite, |c| c.access.cache_ms = 0).await;
    let pool = gw.sql().await;
    let rpcs = rpcs();
    assert_eq!(rpcs.len(), 30, "every RPC of every service");
    let mut failures = Vec::new();
    let mut denials = 0;
    for (stem, identity, role, own, other) in ROLES {
        let ch = role_channel(gw.addr, stem).await;
        for state in [State::Own, State::Other, State::NoGrant, State::Expired] {
            set_state(&pool, identity, role, own, other, state).await;
            for (owner, method, call) in &rpcs {
                let expected = if *owner == role && state == State::Own {
                    Code::Ok
                } else {
                    Code::PermissionDenied
                };
                let got = call(ch.clone(), state).await;
                let code = got.as_ref().err().map(Status::code).unwrap_or(Code::Ok);
                if code != expected {
                    failures.push(format!(
                        "{role} {state:?} {method}: {expected:?} expected, got {got:?}"
                    ));
                    continue;
                }
                if let Err(status) = got {
                    denials += 1;
                    let trace = status
                        .metadata()
                        .get("x-trace-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let audited = audit_entries(&pool, identity).await.into_iter().any(
                        |(action, outcome, trace_id, _, _)| {
                            action == *method && outcome == "PERMISSION_DENIED" && trace_id == trace
                        },
                    );
                    if trace.is_empty() || !audited {
                        failures.push(format!(
                            "{role} {state:?} {method}: denial not audited (trace {trace:?})"
                        ));
                    }
                }
            }
        }
        // Back to the role's own grant for the next roles' admin-side effects.
        set_state(&pool, identity, role, own, other, State::Own).await;
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // 4 roles × 30 RPCs × 4 states, less each role's own RPCs in its own scope.
    assert_eq!(denials, 4 * 30 * 4 - (16 + 12 + 1 + 1));
}

#[tokio::test]
async fn a_grant_change_takes_effect_on_the_next_call_and_is_audited() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    let mut admin = gw.admin().await;
    let mut tax = gw.tax().await;
    let pull = |divisions: &[&str]| proto::PullRequest {
        divisions: divisions.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    };
    let err = tax
        .pull_contributions(pull(&[]))
        .await
        .expect_err("no grant yet");
    assert_eq!(err.code(), Code::PermissionDenied);

    grant(&mut admin, TAX_ID, "tax", &["320100"]).await;
    let msgs = drain(
        tax.pull_contributions(pull(&[]))
            .await
            .expect("granted")
            .into_inner(),
    )
    .await
    .expect("pull");
    assert_eq!(
        msgs.len(),
        1,
        "only the closing checkpoint: nothing was sent yet"
    );
    let err = tax
        .pull_contributions(pull(&["320500"]))
        .await
        .expect_err("Suzhou is outside the grant");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Widening to the province: Suzhou is now inside.
    grant(&mut admin, TAX_ID, "tax", &["320000"]).await;
    tax.pull_contributions(pull(&["320500"]))
        .await
        .expect("province grant covers Suzhou");

    // An expiry in the past ends the grant at once.
    admin
        .put_grant(proto::GrantRequest {
            identity: TAX_ID.into(),
            role: "tax".into(),
            scopes: vec!["320000".into(), "320100".into()],
            expires_at: "2020-01-01T00:00:00+08:00".into(),
        })
        .await
        .expect("expire");
    let err = tax
        .pull_contributions(pull(&[]))
        .await
        .expect_err("expired");
    assert_eq!(err.code(), Code::PermissionDenied);

    grant(&mut admin, TAX_ID, "tax", &["320100"]).await;
    tax.pull_contributions(pull(&[]))
        .await
        .expect("granted again");
    let pool = gw.sql().await;
    let by: BTreeMap<String, String> =
        sqlx::query_as("SELECT scope, granted_by FROM grants WHERE identity = ?1")
            .bind(TAX_ID)
            .fetch_all(&pool)
            .await
            .expect("grants")
            .into_iter()
            .collect();
    assert_eq!(
        by,
        BTreeMap::from([
            ("320000".to_string(), ADMIN_ID.to_string()),
            ("320100".to_string(), ADMIN_ID.to_string())
        ]),
        "each grant records the administrator who made it"
    );
    let revoked = admin
        .revoke_grant(proto::RevokeRequest {
            identity: TAX_ID.into(),
            role: "tax".into(),
            scopes: vec![],
        })
        .await
        .expect("revoke")
        .into_inner()
        .revoked;
    assert_eq!(revoked, 2, "both scopes of the role");
    let err = tax
        .pull_contributions(pull(&[]))
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Grants that do not fit their role are refused.
    for (identity, role, scope) in [
        (TAX_ID, "admin", "*"),
        (TAX_ID, "tax", "999999"),
        (PLATFORM_A_ID, "platform", DEMO_PLATFORM_B),
        ("not-an-identity", "tax", "320100"),
    ] {
        let err = admin
            .put_grant(proto::GrantRequest {
                identity: identity.into(),
                role: role.into(),
                scopes: vec![scope.into()],
                expires_at: String::new(),
            })
            .await
            .expect_err("misfit grant");
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{identity} {role} {scope}"
        );
    }

    // Every change is in the audit log, with who made it and what it touched.
    let entries: Vec<_> = audit_entries(&pool, ADMIN_ID)
        .await
        .into_iter()
        .filter(|(action, ..)| action.ends_with("Grant"))
        .map(|(action, outcome, _, scope, _)| (action, outcome, scope))
        .collect();
    // Each change is audited twice: its intent before it is made, its outcome after.
    let (started, changes): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|(_, outcome, _)| outcome == "STARTED");
    assert_eq!(
        started.iter().map(|(a, _, s)| (a, s)).collect::<Vec<_>>(),
        changes.iter().map(|(a, _, s)| (a, s)).collect::<Vec<_>>()
    );
    let expected: Vec<(String, String, String)> = vec![
        ("PutGrant", "OK", format!("{TAX_ID} tax 320100")),
        ("PutGrant", "OK", format!("{TAX_ID} tax 320000")),
        ("PutGrant", "OK", format!("{TAX_ID} tax 320000,320100")),
        ("PutGrant", "OK", format!("{TAX_ID} tax 320100")),
        ("RevokeGrant", "OK", format!("{TAX_ID} tax ")),
        ("PutGrant", "INVALID_ARGUMENT", format!("{TAX_ID} admin *")),
        (
            "PutGrant",
            "INVALID_ARGUMENT",
            format!("{TAX_ID} tax 999999"),
        ),
        (
            "PutGrant",
            "INVALID_ARGUMENT",
            format!("{PLATFORM_A_ID} platform {DEMO_PLATFORM_B}"),
        ),
        (
            "PutGrant",
            "INVALID_ARGUMENT",
            "not-an-identity tax 320100".to_string(),
        ),
    ]
    .into_iter()
    .map(|(a, o, s)| (format!("oip.v1.AdminService/{a}"), o.to_string(), s))
    .collect();
    assert_eq!(changes, expected);
    let by: BTreeMap<String, String> =
        sqlx::query_as("SELECT scope, granted_by FROM grants WHERE identity = ?1")
            .bind(TAX_ID)
            .fetch_all(&pool)
            .await
            .expect("grants")
            .into_iter()
            .collect();
    assert!(by.is_empty(), "revoked: {by:?}");
}
