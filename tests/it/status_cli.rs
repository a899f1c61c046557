//! `oip-gateway status ...` (a platform's read-back), the administrator's commands that
//! must not be silent no-ops (replaying or discarding a seq that is not a dead letter,
//! an audit query cut at --limit), and the Python example client, each run as the real
//! binary (or `python3`) against a real gateway. (Multi-thread runtime: the CLI runs as
//! a blocking child process while the gateway serves from this test's runtime.)

use std::process::{Command, Output};

use oip_gateway::certs::DEMO_PLATFORM_A;
use oip_gateway::proto::{self, backend_sim_control_client::BackendSimControlClient};

use crate::common::*;

fn cli(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .args(["--endpoint", endpoint])
        .env_remove("OIP_ENDPOINT")
        .output()
        .expect("run oip-gateway")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The stdout of a run that must succeed.
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// (stdout, stderr) of a run that must fail; stderr is one line.
fn fails(out: Output) -> (String, String) {
    assert!(
        !out.status.success(),
        "the run should fail: {}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    (text(&out.stdout), err)
}

/// The token of a `more entries exist: continue with --page-token TOKEN` line.
fn continuation(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        l.strip_prefix("more entries exist: continue with --page-token ")
            .map(str::to_string)
    })
}

/// The first tab-separated column of each line but the continuation hint.
fn first_column(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("more entries exist"))
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect()
}

/// Platform A's records: two workers and a rejected one, two orders, a declaration.
async fn seed(gw: &TestGateway) -> Client {
    let mut a = gw.client("platform-a").await;
    let mut bad = worker("W9");
    bad.id_number = "110105194912310021".into();
    let b = register(&mut a, vec![worker("W1"), worker("W2"), bad]).await;
    assert_eq!(b.summary.map(|s| s.rejected), Some(1));
    report(&mut a, vec![order("O1", "W1"), order("O2", "W2")]).await;
    declare(
        &mut a,
        vec![declaration(
            "D1",
            "2025-07",
            "320100",
            "INSTANT_DELIVERY",
            2,
            14,
        )],
    )
    .await;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listing_prints_one_line_per_item() {
    let gw = TestGateway::spawn().await;
    let e = gw.endpoint();
    let mut a = seed(&gw).await;

    let workers = ok(cli(&e, &["status", "workers"]));
    assert_eq!(first_column(&workers), ["W1", "W2"], "{workers}");
    assert!(
        workers.contains("1101**********002X") && !workers.contains("11010519491231002X"),
        "masked: {workers}"
    );
    assert!(workers.contains("ACTIVE\tINSTANT_DELIVERY"), "{workers}");

    let orders = ok(cli(&e, &["status", "orders"]));
    assert_eq!(first_column(&orders), ["O1", "O2"], "{orders}");
    assert!(orders.contains("worker=W1\tINSTANT_DELIVERY\t320100\tCOMPLETED"));
    let one = ok(cli(&e, &["status", "orders", "--id", "O2"]));
    assert_eq!(first_column(&one), ["O2"], "{one}");

    let rejections = ok(cli(&e, &["status", "rejections"]));
    assert_eq!(rejections.lines().count(), 1, "{rejections}");
    assert!(
        rejections.contains("\tworker\tW9\trevision=1\tINVALID_ID_NUMBER\tid_number\t"),
        "{rejections}"
    );

    let declarations = ok(cli(&e, &["status", "declarations"]));
    assert!(
        declarations.starts_with(
            "D1\trevision=1\t2025-07\t320100\tINSTANT_DELIVERY\tMATCHED\tdeclared=2 orders, 14 fen\tcomputed=2 orders, 14 fen\t"
        ),
        "{declarations}"
    );

    let statements = ok(cli(&e, &["status", "statements", "--period", "2025-07"]));
    assert_eq!(
        statements.trim_end(),
        "2025-07\t320100\tINSTANT_DELIVERY\tbillable=2\tbase=7 fen/order\tfloat=1.0000\tamount=14 fen\tclosed"
    );

    await_delivery_states(&mut a, "order", "O1", &["DELIVERED"]).await;
    let deliveries = ok(cli(
        &e,
        &["status", "deliveries", "--kind", "order", "--id", "O1"],
    ));
    assert_eq!(deliveries.lines().count(), 1, "{deliveries}");
    assert!(
        deliveries.contains(&format!(
            "\tsocial-security\tDELIVERED\t{DEMO_PLATFORM_A}/order/O1/1\tattempts=1\tdelivered="
        )),
        "{deliveries}"
    );

    // JSON Lines: the proto messages, one per line, nothing else on stdout.
    let json = ok(cli(&e, &["status", "workers", "--json"]));
    let items: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(items.len(), 2, "{json}");
    assert_eq!(items[0]["worker"]["worker_id"], "W1");
    assert_eq!(items[0]["worker"]["name"], "张**");
    assert!(items[0]["received_at_ms"].as_i64().is_some_and(|t| t > 0));
    let json = ok(cli(&e, &["status", "--json", "declarations"]));
    let d: serde_json::Value = serde_json::from_str(json.trim()).expect("JSON");
    assert_eq!(d["reconciliation"]["status"], "MATCHED");
    assert_eq!(d["reconciliation"]["computed"]["amount_fen"], 14);
    gw.stop().await;
}

/// A command whose reader has gone (`oip-gateway status workers | head -1`) ends quietly
/// with success instead of panicking on the broken pipe: its standard output here is a
/// pipe whose reading end is closed before the command starts, so its first write fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_to_a_closed_pipe_ends_the_command_quietly() {
    let gw = TestGateway::spawn().await;
    let e = gw.endpoint();
    seed(&gw).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("load.jsonl");
    let file = file.to_str().expect("utf-8 path");
    let runs: [&[&str]; 4] = [
        &["status", "workers", "--endpoint", &e],
        &["status", "orders", "--json", "--endpoint", &e],
        &["loadgen", "--workers", "2", "--orders", "3", "--out", file],
        &["serve", "--print-config"],
    ];
    for args in runs {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .env_remove("OIP_ENDPOINT")
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run oip-gateway");
        let err = text(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_says_how_to_continue_and_the_last_page_does_not() {
    let gw = TestGateway::spawn().await;
    let e = gw.endpoint();
    let mut a = gw.client("platform-a").await;
    register(&mut a, ["W1", "W2", "W3"].map(worker).to_vec()).await;

    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..5 {
        let mut args = vec!["status", "workers", "--page-size", "2"];
        if let Some(t) = &token {
            args.extend(["--page-token", t.as_str()]);
        }
        let out = ok(cli(&e, &args));
        seen.extend(first_column(&out));
        token = continuation(&out);
        if token.is_none() {
            assert!(!out.contains("entries"), "the last page: {out}");
            break;
        }
        assert_eq!(first_column(&out).len(), 2, "a full page first: {out}");
    }
    assert_eq!(seen, ["W1", "W2", "W3"]);

    // With --json, stdout stays JSON Lines: the hint goes to stderr.
    let out = cli(&e, &["status", "workers", "--page-size", "1", "--json"]);
    let stdout = ok(out.clone());
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    serde_json::from_str::<serde_json::Value>(stdout.trim()).expect("JSON only");
    let token = continuation(&text(&out.stderr)).expect("the hint on stderr");
    let rest = ok(cli(
        &e,
        &[
            "status",
            "workers",
            "--page-size",
            "5",
            "--page-token",
            &token,
        ],
    ));
    assert_eq!(first_column(&rest), ["W2", "W3"]);

    // A token of another listing is the gateway's INVALID_ARGUMENT, in one line.
    let (_, err) = fails(cli(&e, &["status", "orders", "--page-token", &token]));
    assert!(
        err.contains("InvalidArgument") && err.contains("page_token"),
        "{err}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_listings_say_0_entries() {
    let gw = TestGateway::spawn().await;
    let e = gw.endpoint();
    for args in [
        &["status", "workers"][..],
        &["status", "orders"],
        &["status", "rejections"],
        &["status", "declarations"],
        &["status", "statements", "--period", "2025-07"],
        &["status", "deliveries", "--kind", "order", "--id", "NONE"],
        &["status", "workers", "--id", "NONE"],
    ] {
        assert_eq!(ok(cli(&e, args)), "0 entries\n", "{args:?}");
    }
    // --json: nothing on stdout, the count on stderr.
    let out = cli(&e, &["status", "orders", "--json"]);
    assert_eq!(ok(out.clone()), "");
    assert_eq!(text(&out.stderr), "0 entries\n");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_is_one_line_with_its_code_and_exits_non_zero() {
    let gw = TestGateway::spawn().await;
    let e = gw.endpoint();
    let (stdout, err) = fails(cli(&e, &["status", "statements", "--period", "2025-13"]));
    assert_eq!(stdout, "");
    assert!(err.contains("InvalidArgument"), "{err}");
    let (_, err) = fails(cli(
        &e,
        &[
            "status",
            "workers",
            "--cert",
            "certs-example/platform-ungranted.pem",
            "--key",
            "certs-example/platform-ungranted.key",
        ],
    ));
    assert!(
        err.contains("PermissionDenied") && err.contains("admin grants put"),
        "{err}"
    );
    // Checked before anything is sent.
    let (_, err) = fails(cli(
        &e.replace("https://", "http://"),
        &["status", "workers"],
    ));
    assert!(err.contains("mutual TLS only"), "{err}");
    gw.stop().await;
}

async fn reject_at_backend(gw: &TestGateway, keys: Vec<String>) {
    BackendSimControlClient::new(
        channel(
            gw.sim_addr.expect("embedded simulator"),
            client_tls(Some("admin"), "ca.pem"),
        )
        .await
        .expect("connect"),
    )
    .set_faults(proto::Faults {
        reject_keys: keys,
        ..Default::default()
    })
    .await
    .expect("faults");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_or_discarding_a_seq_that_is_no_dead_letter_fails_naming_it() {
    let gw = TestGateway::spawn_with(|c| {
        c.forward.max_attempts = 2;
        c.forward.invalid_retry_ms = 20;
    })
    .await;
    let e = gw.endpoint();

    // Neither --seq nor --all: a usage error naming both.
    let out = cli(&e, &["admin", "dead-letters", "replay"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("<--seq <SEQ>|--all>"),
        "{}",
        text(&out.stderr)
    );

    // Nothing is dead: the seq is named, nothing is replayed, the exit is non-zero.
    let (stdout, err) = fails(cli(
        &e,
        &["admin", "dead-letters", "replay", "--seq", "1234"],
    ));
    assert_eq!(stdout.trim(), "replayed 0");
    assert!(
        err.contains("not replayed: seq 1234 is not a dead letter"),
        "{err}"
    );
    let (_, err) = fails(cli(
        &e,
        &[
            "admin",
            "dead-letters",
            "discard",
            "--seq",
            "77",
            "--seq",
            "78",
        ],
    ));
    assert!(
        err.contains("not discarded: seqs 77, 78 are not dead letters"),
        "{err}"
    );

    // One real dead letter and one made-up seq: the dead letter is replayed (and
    // delivered), the made-up one named, and the exit is still non-zero.
    let key = format!("{DEMO_PLATFORM_A}/order/O1/1");
    reject_at_backend(&gw, vec![key.clone()]).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    report(&mut a, vec![order("O1", "W1")]).await;
    await_delivery_states(&mut a, "order", "O1", &["DEAD_LETTERED"]).await;
    let listed = ok(cli(&e, &["admin", "dead-letters", "list"]));
    assert!(
        listed.contains(&key) && listed.contains("1 dead letter\n"),
        "{listed}"
    );
    let seq = listed
        .lines()
        .find(|l| l.contains(&key))
        .and_then(|l| l.split('\t').next())
        .expect("the dead letter's seq")
        .to_string();
    reject_at_backend(&gw, vec![]).await;
    // The wrong destination names where the dead letter is.
    let (stdout, err) = fails(cli(
        &e,
        &[
            "admin",
            "dead-letters",
            "replay",
            "--seq",
            &seq,
            "--destination",
            "tax",
        ],
    ));
    assert_eq!(stdout.trim(), "replayed 0");
    assert!(
        err.contains(&format!(
            "seq {seq} is a dead letter of social-security, not of tax"
        )),
        "{err}"
    );
    let (stdout, err) = fails(cli(
        &e,
        &[
            "admin",
            "dead-letters",
            "replay",
            "--seq",
            &seq,
            "--seq",
            "999999",
        ],
    ));
    assert_eq!(stdout.trim(), "replayed 1");
    assert!(
        err.contains("seq 999999 is not a dead letter") && !err.contains(&format!("seq {seq} ")),
        "{err}"
    );
    await_delivery_states(&mut a, "order", "O1", &["DELIVERED"]).await;
    // Every seq a dead letter: success, as before.
    assert_eq!(
        ok(cli(&e, &["admin", "dead-letters", "discard", "--all"])).trim(),
        "discarded 0"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_query_cut_at_its_limit_says_how_to_continue() {
    let gw = TestGateway::spawn().await;
    let e = gw.endpoint();
    let mut a = gw.client("platform-a").await;
    for id in ["W1", "W2", "W3"] {
        register(&mut a, vec![worker(id)]).await;
    }
    let args = ["admin", "audit", "query", "--identity", PLATFORM_A_ID];
    let first = ok(cli(&e, &[&args[..], &["--limit", "2"]].concat()));
    let seqs = first_column(&first);
    assert_eq!(seqs.len(), 2, "{first}");
    let token = continuation(&first).expect("more entries exist");
    let rest = ok(cli(&e, &[&args[..], &["--page-token", &token]].concat()));
    let more = first_column(&rest);
    // Each batch is one entry, written with its records: three in all.
    assert_eq!(more.len(), 1, "{rest}");
    assert!(continuation(&rest).is_none(), "{rest}");
    let all: Vec<i64> = seqs
        .iter()
        .chain(&more)
        .map(|s| s.parse().expect("seq"))
        .collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");

    assert_eq!(
        ok(cli(
            &e,
            &["admin", "audit", "query", "--identity", "oip://tax/nobody"]
        )),
        "0 entries\n"
    );
    gw.stop().await;
}

/// True when `python3` can import grpc and grpc_tools (pip install grpcio grpcio-tools).
fn python_with_grpc() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_client_runs_against_a_gateway() {
    if !python_with_grpc() {
        println!(
            "SKIPPED the_python_example_client_runs_against_a_gateway: python3 with grpcio and grpcio-tools is not available (pip install -r examples/python/requirements.txt)"
        );
        return;
    }
    let gw = TestGateway::spawn().await;
    let out = Command::new("python3")
        .current_dir(gw.dir.path())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/python/client.py"
        ))
        .args([
            "--endpoint",
            &gw.endpoint(),
            "--page-size",
            "1",
            "--prefix",
            "PYT",
        ])
        .env_remove("OIP_ENDPOINT")
        .output()
        .expect("run python3");
    let stdout = ok(out);
    for expected in [
        "[0] worker PYT-W1 revision 1: ACCEPTED",
        "[1] worker PYT-W2 revision 1: REJECTED: INVALID_ID_NUMBER at workers[1].id_number",
        "[0] worker PYT-W1 revision 1: DUPLICATE",
        "[0] order PYT-O1 revision 1: ACCEPTED",
        "[2] order PYT-O3 revision 1: REJECTED: WORKER_NOT_REGISTERED at orders[2].worker_id",
        "[0] declaration PYT-D1 revision 1: ACCEPTED",
        "reconciliation MATCHED: declared 2 orders / 14 fen, gateway computed 2 orders / 14 fen",
        "ListRejections page 2: OK",
        "2 rejections in 2 pages",
        "PYT-D1 revision 1: MATCHED",
        "done",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
    // What it stored is what the gateway holds.
    let mut a = gw.client("platform-a").await;
    let status = declaration_status(&mut a).await;
    assert_eq!(status["PYT-D1"].0, "MATCHED", "{status:?}");
    assert_eq!(stored_order_ids(&mut a).await, ["PYT-O1", "PYT-O2"]);

    // Its mistakes are named before connecting, as the CLI's are.
    let python = |args: &[&str]| {
        Command::new("python3")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("examples/python/client.py")
            .args(args)
            .env_remove("OIP_ENDPOINT")
            .output()
            .expect("run python3")
    };
    let host = gw.endpoint().trim_start_matches("https://").to_string();
    let out = python(&["--endpoint", &format!("http://{host}")]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("mutual TLS only"),
        "{}",
        text(&out.stderr)
    );
    let out = python(&["--endpoint", "https://127.0.0.1"]);
    assert!(
        text(&out.stderr).contains("names no port"),
        "{}",
        text(&out.stderr)
    );
    let out = python(&[
        "--endpoint",
        &gw.endpoint(),
        "--cert",
        "certs-example/expired.pem",
        "--key",
        "certs-example/expired.key",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("expired on"),
        "{}",
        text(&out.stderr)
    );
    gw.stop().await;
}

/// Revoking what is not held fails naming it (a typo must not look like success);
/// revoking a grant the configuration owns warns that it returns at the next start; a
/// past expiry for a scope not held is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_nothing_fails_and_configured_grants_are_flagged() {
    let gw = TestGateway::spawn().await;
    let e = gw.endpoint();
    let tax = "oip://tax/js-tax-320500";
    let (stdout, err) = fails(cli(
        &e,
        &[
            "admin",
            "grants",
            "revoke",
            "--identity",
            "oip://tax/js-tax-32050",
            "--role",
            "tax",
        ],
    ));
    assert_eq!(stdout.trim(), "revoked 0");
    assert!(
        err.contains("not revoked: oip://tax/js-tax-32050 holds no tax grant")
            && err.contains("admin grants list --identity oip://tax/js-tax-32050"),
        "{err}"
    );

    ok(cli(
        &e,
        &[
            "admin",
            "grants",
            "put",
            "--identity",
            tax,
            "--role",
            "tax",
            "--scope",
            "320500",
        ],
    ));
    let (stdout, err) = fails(cli(
        &e,
        &[
            "admin",
            "grants",
            "revoke",
            "--identity",
            tax,
            "--role",
            "tax",
            "--scope",
            "320500",
            "--scope",
            "320100",
        ],
    ));
    assert_eq!(stdout.trim(), "revoked 1");
    assert!(err.contains("holds no tax grant for 320100"), "{err}");

    let listed = ok(cli(
        &e,
        &[
            "admin",
            "grants",
            "list",
            "--identity",
            &format!("oip://platform/{DEMO_PLATFORM_A}"),
        ],
    ));
    assert!(listed.contains("by=configuration"), "{listed}");
    let out = cli(
        &e,
        &[
            "admin",
            "grants",
            "revoke",
            "--identity",
            &format!("oip://platform/{DEMO_PLATFORM_A}"),
            "--role",
            "platform",
        ],
    );
    let stdout = ok(out.clone());
    assert_eq!(stdout.trim(), "revoked 1");
    let err = text(&out.stderr);
    assert!(
        err.contains("the configuration grants again at the next start"),
        "{err}"
    );

    let (_, err) = fails(cli(
        &e,
        &[
            "admin",
            "grants",
            "put",
            "--identity",
            tax,
            "--role",
            "tax",
            "--scope",
            "320500",
            "--expires-at",
            "2020-01-01T00:00:00+08:00",
        ],
    ));
    assert!(err.contains("would never be live"), "{err}");
}

/// Findings of a new user's review: each mistake named with its cause and next step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_findings_are_named_with_cause_and_next_step() {
    let gw = TestGateway::spawn().await;
    let e = gw.endpoint();

    // The only administrator cannot revoke itself (nobody could grant again).
    let (_, err) = fails(cli(
        &e,
        &[
            "admin",
            "grants",
            "revoke",
            "--identity",
            "oip://admin/root",
            "--role",
            "admin",
        ],
    ));
    assert!(
        err.contains("FailedPrecondition") && err.contains("would leave no administrator"),
        "{err}"
    );
    assert!(
        ok(cli(
            &e,
            &["admin", "grants", "list", "--identity", "oip://admin/root"]
        ))
        .contains("oip://admin/root")
    );

    // An expired grant is named as expired, with its time, and listed as EXPIRED.
    let tax = "oip://tax/js-tax-320000";
    let _ = fails(cli(
        &e,
        &[
            "admin",
            "grants",
            "put",
            "--identity",
            tax,
            "--role",
            "tax",
            "--scope",
            "320400",
            "--expires-at",
            "2020-01-01T00:00:00+08:00",
        ],
    ));
    // A past expiry only ends a held grant: grant, then end it.
    ok(cli(
        &e,
        &[
            "admin",
            "grants",
            "put",
            "--identity",
            tax,
            "--role",
            "tax",
            "--scope",
            "320400",
        ],
    ));
    let now = chrono::Utc::now()
        .with_timezone(&oip_gateway::domain::time::shanghai())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
    ok(cli(
        &e,
        &[
            "admin",
            "grants",
            "put",
            "--identity",
            tax,
            "--role",
            "tax",
            "--scope",
            "320400",
            "--expires-at",
            &now,
        ],
    ));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let listed = ok(cli(&e, &["admin", "grants", "list", "--identity", tax]));
    assert!(listed.contains("EXPIRED="), "{listed}");
    let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "pull",
            "contributions",
            "--out",
            "/dev/null",
            "--endpoint",
            &e,
        ])
        .output()
        .expect("pull");
    let err = text(&out.stderr);
    assert!(
        err.contains("grant over 320400 expired at") && err.contains("renews it with"),
        "{err}"
    );
    assert!(!err.contains("<division code>"), "{err}");

    // A platform identity with a wrong check character is named as such.
    let (_, err) = fails(cli(
        &e,
        &[
            "admin",
            "grants",
            "put",
            "--identity",
            "oip://platform/91320400MA7PLT110X",
            "--role",
            "platform",
            "--scope",
            "91320400MA7PLT110X",
        ],
    ));
    assert!(err.contains("unified social credit code"), "{err}");

    // A client pointed at the simulator's port is told so.
    let sim = format!("https://{}", gw.sim_addr.expect("simulator"));
    let (_, err) = fails(cli(&sim, &["status", "workers"]));
    assert!(err.contains("does not serve this call"), "{err}");

    // An audit filter that matches nothing says that matching is exact.
    let out = cli(
        &e,
        &["admin", "audit", "query", "--action", "personal_data_read"],
    );
    assert_eq!(ok(out.clone()), "0 entries\n");
    assert!(
        text(&out.stderr).contains("personal-data-read"),
        "{}",
        text(&out.stderr)
    );

    // A file that is not JSON Lines says so.
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("tax.csv");
    std::fs::write(&csv, "a,b,c\n1,2,3\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["submit", "--quiet", "--endpoint", &e])
        .arg(&csv)
        .output()
        .expect("submit");
    assert!(
        text(&out.stderr).contains("no line of the file is a JSON record"),
        "{}",
        text(&out.stderr)
    );

    // A missing CA file is named once, with the working-directory hint.
    let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
        .current_dir(dir.path())
        .args(["status", "workers", "--endpoint", &e])
        .output()
        .expect("status");
    let err = text(&out.stderr);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    gw.stop().await;
}
