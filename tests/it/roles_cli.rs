//! The administrator's, tax bureau's and social-security agency's commands against a
//! real gateway: what each role runs (README, "Roles"), end to end.

use std::process::{Command, Output};

use oip_gateway::certs::UNGRANTED_PLATFORM;
use oip_gateway::proto;

use crate::common::*;

fn cli(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .args(["--endpoint", endpoint])
        .output()
        .expect("run oip-gateway")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn next_cursor(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("next cursor: "))
        .expect("the next cursor is printed")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_runs_its_commands() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    let e = gw.endpoint();

    // Administrator: register a platform, grant it and the tax office, set a float.
    let out = ok(cli(
        &e,
        &[
            "admin",
            "platforms",
            "put",
            "--uscc",
            UNGRANTED_PLATFORM,
            "--name",
            "C",
            "--industry",
            "INSTANT_DELIVERY",
            "--division",
            "320200=2025-07-01",
        ],
    ));
    assert!(
        out.contains(UNGRANTED_PLATFORM) && out.contains("320200=2025-07-01"),
        "{out}"
    );
    assert!(ok(cli(&e, &["admin", "platforms", "list"])).contains(UNGRANTED_PLATFORM));
    let c_identity = format!("oip://platform/{UNGRANTED_PLATFORM}");
    ok(cli(
        &e,
        &[
            "admin",
            "grants",
            "put",
            "--identity",
            &c_identity,
            "--role",
            "platform",
            "--scope",
            UNGRANTED_PLATFORM,
        ],
    ));
    let out = ok(cli(
        &e,
        &[
            "admin",
            "grants",
            "put",
            "--identity",
            TAX_ID,
            "--role",
            "tax",
            "--scope",
            "320000",
        ],
    ));
    assert!(out.contains(TAX_ID) && out.contains("320000"), "{out}");
    let out = ok(cli(
        &e,
        &[
            "admin",
            "rates",
            "add-float",
            "--uscc",
            UNGRANTED_PLATFORM,
            "--division",
            "320200",
            "--year",
            "2025",
            "--multiplier",
            "1.05",
        ],
    ));
    assert!(out.contains("1.05"), "{out}");

    // The newly registered platform works at once, no restart.
    let mut c = gw.client("platform-ungranted").await;
    let mut w = worker("WC");
    w.registered_at = "2025-07-01T08:00:00+08:00".into();
    assert_eq!(brief(&register(&mut c, vec![w]).await), vec![accepted()]);
    let mut o = order("OC", "WC");
    o.division_code = "320200".into();
    assert_eq!(brief(&report(&mut c, vec![o]).await), vec![accepted()]);
    declare(
        &mut c,
        vec![declaration(
            "DC",
            "2025-07",
            "320200",
            "INSTANT_DELIVERY",
            1,
            7,
        )],
    )
    .await;

    // Tax: pull into JSON Lines until the released statement is there, then resume.
    let file = gw.dir.path().join("contributions.jsonl");
    let file_s = file.to_str().expect("path");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (lines, cursor) = loop {
        let out = ok(cli(&e, &["pull", "contributions", "--out", file_s]));
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
            .expect("pulled file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        if lines.len() >= 2 || std::time::Instant::now() > deadline {
            break (lines, next_cursor(&out));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut kinds: Vec<_> = lines
        .iter()
        .map(|l| l["kind"].as_str().unwrap_or(""))
        .collect();
    // July 2025 is past its declaration deadline: its statement is released as soon as
    // it exists (after the order), before or after the declaration arrives.
    kinds.sort();
    assert_eq!(kinds, vec!["declaration", "statement"], "{lines:?}");
    let kind = |k: &str| {
        lines
            .iter()
            .find(|l| l["kind"] == k)
            .unwrap_or_else(|| panic!("a {k} in {lines:?}"))
    };
    let statement = kind("statement");
    assert_eq!(
        statement["multiplier"], "1.0500",
        "the float set by the administrator"
    );
    assert_eq!(statement["amount_fen"], 7, "7 fen × 1.05 rounds to 7");
    assert_eq!(kind("declaration")["status"], "MATCHED");
    let csv = gw.dir.path().join("later.csv");
    let out = ok(cli(
        &e,
        &[
            "pull",
            "contributions",
            "--since",
            &cursor,
            "--out",
            csv.to_str().expect("path"),
        ],
    ));
    assert_eq!(next_cursor(&out), cursor, "nothing changed since");
    let csv_text = std::fs::read_to_string(&csv).expect("csv");
    assert_eq!(csv_text.lines().count(), 1, "only the header: {csv_text}");
    assert!(csv_text.starts_with("cursor,kind,platform,"));

    // Social security: granted by the administrator, pulls as CSV with the person.
    ok(cli(
        &e,
        &[
            "admin",
            "grants",
            "put",
            "--identity",
            SS_ID,
            "--role",
            "social-security",
            "--scope",
            "320200",
        ],
    ));
    let ss_file = gw.dir.path().join("ss.csv");
    ok(cli(
        &e,
        &[
            "pull",
            "social-security",
            "--out",
            ss_file.to_str().expect("path"),
        ],
    ));
    let ss = std::fs::read_to_string(&ss_file).expect("ss csv");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ss_file)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "personal data: owner only");
    }
    assert_eq!(ss.lines().count(), 3, "header, enrolment, order: {ss}");
    assert!(
        ss.contains("11010519491231002X"),
        "the enrolment names the insured: {ss}"
    );

    // Not an administrator: refused, with the reason.
    let out = cli(
        &e,
        &[
            "admin",
            "grants",
            "list",
            "--cert",
            "certs-example/tax.pem",
            "--key",
            "certs-example/tax.key",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"));

    // The audit log holds the tax office's pulls; verify passes, then names a
    // tampered entry.
    let audit = ok(cli(&e, &["admin", "audit", "query", "--identity", TAX_ID]));
    assert!(
        audit.contains("oip.v1.TaxService/PullContributions"),
        "{audit}"
    );
    assert!(ok(cli(&e, &["admin", "audit", "verify"])).contains("intact"));
    let pool = gw.sql().await;
    sqlx::query("UPDATE audit_log SET outcome = 'OK' WHERE seq = 3")
        .execute(&pool)
        .await
        .expect("tamper");
    sqlx::query("UPDATE audit_log SET scope = 'nothing to see' WHERE seq = 3")
        .execute(&pool)
        .await
        .expect("tamper");
    let out = cli(&e, &["admin", "audit", "verify"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken at entry 3"), "{err}");

    // The admin's grant list shows every grant made above.
    let mut admin = gw.admin().await;
    let grants = admin
        .list_grants(proto::ListGrantsRequest::default())
        .await
        .expect("grants")
        .into_inner()
        .grants;
    for identity in [TAX_ID, SS_ID, c_identity.as_str()] {
        assert!(grants.iter().any(|g| g.identity == identity), "{identity}");
    }
}
