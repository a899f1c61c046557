//! Pulls by tax and social security: incremental through cursors (resumed without
//! gaps or repeats), limited to the grant, filtered, audited.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use oip_gateway::certs::{DEMO_PLATFORM_A, DEMO_PLATFORM_B};
use oip_gateway::proto::{self, social_security_item, tax_item};
use tonic::Code;

use crate::common::*;

const CITIES: [&str; 13] = [
    "320100", "320200", "320300", "320400", "320500", "320600", "320700", "320800", "320900",
    "321000", "321100", "321200", "321300",
];

fn request(since: &str) -> proto::PullRequest {
    proto::PullRequest {
        since: since.into(),
        ..Default::default()
    }
}

async fn pull(tax: &mut Tax, req: proto::PullRequest) -> Vec<proto::ContributionChange> {
    drain(
        tax.pull_contributions(req)
            .await
            .expect("pull")
            .into_inner(),
    )
    .await
    .expect("stream")
}

/// (cursor, idempotency key) of the items, and the closing checkpoint's cursor.
fn keys(msgs: &[proto::ContributionChange]) -> (Vec<(String, String)>, String) {
    let (last, items) = msgs.split_last().expect("at least the checkpoint");
    assert!(last.item.is_none(), "a pull ends with a checkpoint");
    (
        items
            .iter()
            .map(|m| {
                let item = m.item.as_ref().expect("item before the checkpoint");
                (
                    m.cursor.clone(),
                    item.header
                        .as_ref()
                        .expect("header")
                        .idempotency_key
                        .clone(),
                )
            })
            .collect(),
        last.cursor.clone(),
    )
}

/// (division, kind) of a tax item.
fn division_of(item: &proto::TaxItem) -> (String, &'static str) {
    match item.payload.as_ref().expect("payload") {
        tax_item::Payload::Statement(s) => (s.division_code.clone(), "statement"),
        tax_item::Payload::Declaration(d) => (
            d.declaration
                .as_ref()
                .expect("declaration")
                .division_code
                .clone(),
            "declaration",
        ),
    }
}

/// Pulls everything until at least `n` items are there (statements are released by
/// a background task after the declarations).
async fn await_items(tax: &mut Tax, n: usize) -> Vec<proto::ContributionChange> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msgs = pull(tax, request("")).await;
        if msgs.len() > n || Instant::now() > deadline {
            assert_eq!(msgs.len(), n + 1, "{n} items and a checkpoint");
            return msgs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_tax_pull_resumed_from_its_cursor_returns_every_record_exactly_once() {
    let gw = TestGateway::spawn().await;
    let mut admin = gw.admin().await;
    grant(&mut admin, TAX_ID, "tax", &["320000"]).await;
    let mut a = gw.client("platform-a").await;
    let mut tax = gw.tax().await;
    let (period, at) = previous_month(10);
    register(&mut a, vec![worker("W1")]).await;
    let ordered = ["320100", "320200", "320500"];
    let at_ref = &at;
    let orders = ordered
        .iter()
        .enumerate()
        .flat_map(|(i, city)| {
            (0..2)
                .map(move |k| order_at(&format!("O{i}{k}"), "W1", "INSTANT_DELIVERY", city, at_ref))
        })
        .collect();
    report(&mut a, orders).await;
    let declarations = CITIES
        .iter()
        .enumerate()
        .map(|(i, city)| {
            let n = if ordered.contains(city) { 2 } else { 0 };
            declaration(
                &format!("D{i}"),
                &period,
                city,
                "INSTANT_DELIVERY",
                n,
                n * 7,
            )
        })
        .collect();
    declare(&mut a, declarations).await;

    // 13 declarations and the 3 statements released with the first of them.
    let full = await_items(&mut tax, 16).await;
    let (all, end) = keys(&full);
    let unique: BTreeSet<_> = all.iter().map(|(_, k)| k.clone()).collect();
    assert_eq!(unique.len(), 16);
    let kinds: Vec<_> = full
        .iter()
        .filter_map(|m| m.item.as_ref())
        .map(division_of)
        .collect();
    assert_eq!(kinds.iter().filter(|(_, k)| *k == "statement").count(), 3);

    // Interrupted after 5 messages (the client goes away), then resumed.
    let mut stream = tax
        .pull_contributions(request(""))
        .await
        .expect("pull")
        .into_inner();
    let mut first = Vec::new();
    while first.len() < 5 {
        first.push(stream.message().await.expect("message").expect("not ended"));
    }
    drop(stream);
    let resumed = pull(&mut tax, request(&first[4].cursor)).await;
    let mut joined = first.clone();
    joined.extend(resumed);
    assert_eq!(
        keys(&joined),
        (all.clone(), end.clone()),
        "every item exactly once, in order"
    );

    // Pulled 4 at a time, each pull resuming from the last one's checkpoint.
    let mut cursor = String::new();
    let mut paged = Vec::new();
    for _ in 0..10 {
        let msgs = pull(
            &mut tax,
            proto::PullRequest {
                since: cursor.clone(),
                max_records: 4,
                ..Default::default()
            },
        )
        .await;
        let (items, next) = keys(&msgs);
        assert!(items.len() <= 4);
        paged.extend(items);
        cursor = next;
        if cursor == end {
            break;
        }
    }
    assert_eq!(paged, all);

    // Nothing new: a pull from the end returns only its checkpoint.
    assert_eq!(
        keys(&pull(&mut tax, request(&end)).await),
        (vec![], end.clone())
    );

    // A late order changes Nanjing's statement and its declaration's reconciliation:
    // both appear in the next pull, and nothing pulled before does.
    report(
        &mut a,
        vec![order_at("O-late", "W1", "INSTANT_DELIVERY", "320100", &at)],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let next = loop {
        let msgs = pull(&mut tax, request(&end)).await;
        if msgs.len() >= 3 || Instant::now() > deadline {
            break msgs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (new, _) = keys(&next);
    assert_eq!(new.len(), 2, "{new:?}");
    assert!(new.iter().all(|(_, k)| !unique.contains(k)));
    let changed: Vec<_> = next
        .iter()
        .filter_map(|m| m.item.as_ref())
        .map(|i| {
            let (d, kind) = division_of(i);
            let count = match i.payload.as_ref() {
                Some(tax_item::Payload::Statement(s)) => s.billable_count,
                Some(tax_item::Payload::Declaration(d)) => d
                    .reconciliation
                    .as_ref()
                    .and_then(|r| r.computed)
                    .map_or(-1, |f| f.order_count),
                None => -1,
            };
            (d, kind, count)
        })
        .collect();
    assert!(
        changed.contains(&("320100".into(), "statement", 3)),
        "{changed:?}"
    );
    assert!(
        changed.contains(&("320100".into(), "declaration", 3)),
        "{changed:?}"
    );

    // Filters: a division, a period, a platform.
    let only = |divisions: &[&str], periods: &[&str], platforms: &[&str]| proto::PullRequest {
        divisions: divisions.iter().map(|s| s.to_string()).collect(),
        periods: periods.iter().map(|s| s.to_string()).collect(),
        platforms: platforms.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut suzhou: Vec<_> = pull(&mut tax, only(&["320500"], &[], &[]))
        .await
        .iter()
        .filter_map(|m| m.item.as_ref())
        .map(division_of)
        .collect();
    suzhou.sort();
    assert_eq!(
        suzhou,
        vec![
            ("320500".into(), "declaration"),
            ("320500".into(), "statement")
        ]
    );
    assert_eq!(
        pull(&mut tax, only(&[], &[&period], &[DEMO_PLATFORM_A]))
            .await
            .len(),
        19
    );
    assert_eq!(pull(&mut tax, only(&[], &["2020-01"], &[])).await.len(), 1);
    assert_eq!(
        pull(&mut tax, only(&[], &[], &[DEMO_PLATFORM_B]))
            .await
            .len(),
        1
    );

    // A narrower grant sees only its divisions, with no filter at all.
    admin
        .revoke_grant(proto::RevokeRequest {
            identity: TAX_ID.into(),
            role: "tax".into(),
            scopes: vec![],
        })
        .await
        .expect("revoke");
    grant(&mut admin, TAX_ID, "tax", &["320200"]).await;
    let wuxi: BTreeSet<_> = pull(&mut tax, request(""))
        .await
        .iter()
        .filter_map(|m| m.item.as_ref())
        .map(|i| division_of(i).0)
        .collect();
    assert_eq!(wuxi, BTreeSet::from(["320200".to_string()]));
    let err = tax
        .pull_contributions(only(&["320100"], &[], &[]))
        .await
        .expect_err("outside the grant");
    assert_eq!(err.code(), Code::PermissionDenied);
    for bad in [request("not-a-cursor"), request("99999999")] {
        let err = tax
            .pull_contributions(bad)
            .await
            .expect_err("unknown cursor");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let err = tax
        .pull_contributions(only(&["999999"], &[], &[]))
        .await
        .expect_err("unknown division");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_social_security_pull_names_the_insured_and_is_audited_as_a_personal_data_read() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    let mut admin = gw.admin().await;
    grant(&mut admin, SS_ID, "social-security", &["320100"]).await;
    let mut a = gw.client("platform-a").await;
    let mut w = worker("W1");
    w.id_number = resident_id("32010219900307461");
    w.name = "李四".into();
    register(&mut a, vec![w.clone()]).await;
    let mut suzhou = order("O-sz", "W1");
    suzhou.division_code = "320500".into();
    report(&mut a, vec![order("O-nj", "W1"), suzhou]).await;
    report_accidents(&mut a, vec![accident("A1", "W1", "O-nj")]).await;

    let mut ss = gw.social_security().await;
    let msgs = drain(
        ss.pull_social_security(proto::PullRequest::default())
            .await
            .expect("pull")
            .into_inner(),
    )
    .await
    .expect("stream");
    let mut seen = Vec::new();
    for m in msgs.iter().filter(|m| m.item.is_some()) {
        let item = m.item.as_ref().expect("item");
        match item.payload.as_ref().expect("payload") {
            social_security_item::Payload::Enrolment(e) => {
                assert_eq!(e.division_code, "320100");
                let p = m.person.as_ref().expect("an enrolment names the insured");
                assert_eq!(
                    (p.id_number.as_str(), p.name.as_str()),
                    (w.id_number.as_str(), "李四")
                );
                seen.push("enrolment");
            }
            social_security_item::Payload::Order(o) => {
                assert_eq!(o.order_id, "O-nj", "Suzhou is outside the grant");
                seen.push("order");
            }
            social_security_item::Payload::Accident(x) => {
                assert_eq!(x.report_id, "A1");
                seen.push("accident");
            }
            social_security_item::Payload::Worker(_) => panic!("workers are not pulled"),
        }
    }
    seen.sort();
    assert_eq!(seen, vec!["accident", "enrolment", "order"]);

    let pool = gw.sql().await;
    let entries = audit_entries(&pool, SS_ID).await;
    let reads: Vec<_> = entries
        .iter()
        .filter(|(action, ..)| action == "personal-data-read")
        .map(|(_, outcome, _, scope, records)| (outcome.as_str(), scope.as_str(), *records))
        .collect();
    assert_eq!(reads, vec![("OK", "320100", 3)]);
    let call = entries
        .iter()
        .find(|(action, ..)| action == "oip.v1.SocialSecurityService/PullSocialSecurity")
        .expect("the call is audited");
    assert_eq!((call.1.as_str(), call.3.as_str()), ("OK", "320100"));
    let read_trace = &entries
        .iter()
        .find(|(action, ..)| action == "personal-data-read")
        .expect("read")
        .2;
    assert_eq!(&call.2, read_trace, "the read carries its call's trace id");
}

async fn ss_pull(
    ss: &mut SocialSecurity,
    req: proto::PullRequest,
) -> Vec<proto::SocialSecurityChange> {
    drain(
        ss.pull_social_security(req)
            .await
            .expect("pull")
            .into_inner(),
    )
    .await
    .expect("stream")
}

fn ss_cursors(msgs: &[proto::SocialSecurityChange]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.item.is_some())
        .map(|m| m.cursor.clone())
        .collect()
}

#[tokio::test]
async fn a_long_filtered_pull_crosses_scan_pages_without_gaps_or_repeats() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    let mut admin = gw.admin().await;
    grant(&mut admin, SS_ID, "social-security", &["320100"]).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    // 2,400 orders alternating between Nanjing (in the grant) and Wuxi (not): the
    // journal is longer than one scan page (2,000 rows), and filtered-out rows follow
    // every selected one.
    let orders = (0..2400)
        .map(|i| {
            let mut o = order(&format!("O{i:04}"), "W1");
            if i % 2 == 1 {
                o.division_code = "320200".into();
            }
            o
        })
        .collect();
    report(&mut a, orders).await;

    let mut ss = gw.social_security().await;
    let nanjing = || proto::PullRequest {
        divisions: vec!["320100".into()],
        ..Default::default()
    };
    let full = ss_pull(&mut ss, nanjing()).await;
    let all = ss_cursors(&full);
    assert_eq!(
        all.len(),
        1200 + 1,
        "Nanjing's orders and its daily enrolment"
    );
    let unique: BTreeSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len());
    let same_with_no_filter = ss_cursors(&ss_pull(&mut ss, proto::PullRequest::default()).await);
    assert_eq!(same_with_no_filter, all, "the grant is the filter");

    // Interrupted after 1,100 items (past the first scan page), resumed.
    let mut stream = ss
        .pull_social_security(nanjing())
        .await
        .expect("pull")
        .into_inner();
    let mut first = Vec::new();
    while first.len() < 1100 {
        first.push(stream.message().await.expect("message").expect("more"));
    }
    drop(stream);
    let rest = ss_pull(
        &mut ss,
        proto::PullRequest {
            since: first[1099].cursor.clone(),
            ..nanjing()
        },
    )
    .await;
    let mut joined = ss_cursors(&first);
    joined.extend(ss_cursors(&rest));
    assert_eq!(joined, all);

    // 500 at a time: each stop falls inside a scan page with Wuxi rows after it.
    let mut cursor = String::new();
    let mut paged = Vec::new();
    loop {
        let msgs = ss_pull(
            &mut ss,
            proto::PullRequest {
                since: cursor.clone(),
                max_records: 500,
                ..nanjing()
            },
        )
        .await;
        let items = ss_cursors(&msgs);
        let last = msgs.last().expect("checkpoint").cursor.clone();
        let done = items.is_empty();
        paged.extend(items);
        if done {
            break;
        }
        cursor = last;
    }
    assert_eq!(paged, all);

    // An entry that cannot be read ends the pull there, after the items before it.
    let bad = &all[600];
    let pool = gw.sql().await;
    sqlx::query("UPDATE outbox SET payload = x'00ff' WHERE seq = ?1")
        .bind(bad.parse::<i64>().expect("seq"))
        .execute(&pool)
        .await
        .expect("corrupt");
    let mut stream = ss
        .pull_social_security(nanjing())
        .await
        .expect("pull")
        .into_inner();
    let mut got = Vec::new();
    let err = loop {
        match stream.message().await {
            Ok(Some(m)) => got.push(m.cursor),
            Ok(None) => panic!("the pull must not skip the bad entry"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    assert_eq!(got, all[..600].to_vec());
}

/// Tax sees statements and declarations per city or province: a county as filter or
/// grant would match nothing, so it is refused naming its city; a division this
/// gateway does not serve is named as such, not as a missing grant; an unknown cursor
/// says which cursors exist.
#[tokio::test]
async fn tax_filters_and_grants_name_the_city_of_a_county_and_unserved_divisions() {
    let gw = TestGateway::spawn().await;
    let mut admin = gw.admin().await;
    grant(&mut admin, TAX_ID, "tax", &["320500"]).await;
    let mut tax = gw.tax().await;
    let filtered = |division: &str| proto::PullRequest {
        divisions: vec![division.into()],
        ..Default::default()
    };
    let err = tax
        .pull_contributions(filtered("320506"))
        .await
        .expect_err("a county");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("is a county") && err.message().contains("320500 (苏州市)"),
        "{}",
        err.message()
    );
    let err = tax
        .pull_contributions(filtered("110000"))
        .await
        .expect_err("not served");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("not served"), "{}", err.message());
    let err = tax
        .pull_contributions(request("999999999"))
        .await
        .expect_err("unknown cursor");
    assert!(err.message().contains("at most"), "{}", err.message());
    assert!(!pull(&mut tax, filtered("320500")).await.is_empty());

    let err = admin
        .put_grant(proto::GrantRequest {
            identity: TAX_ID.into(),
            role: "tax".into(),
            scopes: vec!["320506".into()],
            expires_at: String::new(),
        })
        .await
        .expect_err("a county grant for tax");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("320500 (苏州市)"),
        "{}",
        err.message()
    );
    // A division this gateway does not serve is no scope: the grant would reach nothing.
    let err = admin
        .put_grant(proto::GrantRequest {
            identity: "oip://tax/bj-tax-110000".into(),
            role: "tax".into(),
            scopes: vec!["110000".into()],
            expires_at: String::new(),
        })
        .await
        .expect_err("an unserved division");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("serves"), "{}", err.message());
    // Social security works at county level: its grants may name a county.
    grant(
        &mut admin,
        "oip://social-security/js-hrss-320506",
        "social-security",
        &["320506"],
    )
    .await;
}
