//! `oip-gateway submit` against a real gateway: the report has one line per input
//! record with the expected outcomes; failures exit non-zero with a one-line reason.
//! (Multi-thread runtime: the CLI runs as a blocking child process while the gateway
//! serves from this test's runtime.)

use std::process::{Command, Output};

use crate::common::*;

fn submit_cmd(endpoint: &str, file: &str, report: Option<&std::path::Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oip-gateway"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "submit",
        file,
        "--quiet",
        "--batch-size",
        "3",
        "--endpoint",
        endpoint,
    ]);
    if let Some(r) = report {
        cmd.arg("--report").arg(r);
    }
    cmd.output().expect("run submit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_round_trip_on_the_example_file() {
    let gw = TestGateway::spawn().await;
    let report = gw.dir.path().join("report.jsonl");
    let out = submit_cmd(&gw.endpoint(), "examples/quickstart.jsonl", Some(&report));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let input = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart.jsonl"
    ))
    .expect("example");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report)
        .expect("report")
        .lines()
        .map(|l| serde_json::from_str(l).expect("report line is JSON"))
        .collect();
    assert_eq!(
        lines.len(),
        input.lines().filter(|l| !l.trim().is_empty()).count()
    );
    let got: Vec<(u64, &str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["line"].as_u64().unwrap_or(0),
                l["id"].as_str().unwrap_or(""),
                l["outcome"].as_str().unwrap_or(""),
                l["code"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "W001", "ACCEPTED", ""),
            (2, "W002", "ACCEPTED", ""),
            (3, "O-1", "ACCEPTED", ""),
            (4, "O-2", "ACCEPTED", ""),
            (5, "O-3", "ACCEPTED", ""),
            (6, "O-4", "REJECTED", "WORKER_NOT_REGISTERED"),
            (7, "O-5", "REJECTED", "PLATFORM_NOT_IN_PILOT"),
            (8, "W003", "REJECTED", "INVALID_ID_NUMBER"),
            (9, "", "REJECTED", "MALFORMED_RECORD"),
            (10, "D-2025-07-NJ-DELIVERY", "ACCEPTED_WITH_WARNINGS", ""),
            (11, "A-1", "ACCEPTED", ""),
            (12, "A-2", "REJECTED", "ORDER_NOT_FOUND"),
            (13, "O-6", "ACCEPTED_WITH_WARNINGS", ""),
        ]
    );
    // The declaration matches O-1 (1 order, 7 fen) but is past its deadline; O-6 is
    // an order for the month just declared.
    assert_eq!(
        lines[9]["warnings"],
        serde_json::json!(["LATE_DECLARATION"])
    );
    assert_eq!(lines[12]["warnings"], serde_json::json!(["LATE_ORDER"]));
    assert_eq!(lines[5]["field"], "worker_id");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ACCEPTED") && stdout.contains("WORKER_NOT_REGISTERED"),
        "{stdout}"
    );

    // Submitting again: every accepted record is a DUPLICATE now.
    let again = submit_cmd(&gw.endpoint(), "examples/quickstart.jsonl", Some(&report));
    assert!(again.status.success());
    let dups = std::fs::read_to_string(&report)
        .expect("report")
        .matches("\"DUPLICATE\"")
        .count();
    assert_eq!(dups, 8, "every accepted record, warnings or not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_fails_clearly_when_the_gateway_is_unreachable_or_the_file_missing() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let out = submit_cmd(
        &format!("https://127.0.0.1:{port}"),
        "examples/quickstart.jsonl",
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: nothing listens at"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    let gw = TestGateway::spawn().await;
    let out = submit_cmd(&gw.endpoint(), "examples/no-such-file.jsonl", None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: cannot read"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_are_named_with_what_to_do_before_connecting() {
    let gw = TestGateway::spawn().await;
    let host = gw.endpoint().trim_start_matches("https://").to_string();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["submit", "examples/quickstart.jsonl", "--quiet"])
            .args(args)
            .output()
            .expect("run submit");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let http = format!("http://{host}");
    let err = run(&["--endpoint", &http]);
    assert!(err.contains("mutual TLS only; use https://"), "{err}");
    let err = run(&["--endpoint", &host]);
    assert!(err.contains("has no scheme; use https://"), "{err}");
    let err = run(&["--endpoint", "https://127.0.0.1"]);
    assert!(
        err.contains("names no port") && err.contains(":50051"),
        "{err}"
    );
    let endpoint = gw.endpoint();
    let err = run(&[
        "--endpoint",
        &endpoint,
        "--cert",
        "certs-example/gateway.pem",
        "--key",
        "certs-example/gateway.key",
    ]);
    assert!(err.contains("the gateway's own identity"), "{err}");
    let err = run(&[
        "--endpoint",
        &endpoint,
        "--cert",
        "certs-example/expired.pem",
        "--key",
        "certs-example/expired.key",
    ]);
    assert!(
        err.contains("expired on") && err.contains("administrator"),
        "{err}"
    );
    let err = run(&[
        "--endpoint",
        &endpoint,
        "--cert",
        "certs-example/platform-a.pem",
        "--key",
        "certs-example/platform-b.key",
    ]);
    assert!(err.contains("does not belong to --cert"), "{err}");
    let err = run(&["--endpoint", &endpoint, "--domain", "gateway.example"]);
    assert!(err.contains("does not name gateway.example"), "{err}");
    let err = run(&[
        "--endpoint",
        &endpoint,
        "--cert",
        "certs-example/untrusted.pem",
        "--key",
        "certs-example/untrusted.key",
    ]);
    assert!(err.contains("refused --cert"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_command_checks_its_certificate_before_connecting() {
    let gw = TestGateway::spawn().await;
    for args in [
        vec!["admin", "platforms", "list"],
        vec!["status", "workers"],
        vec!["pull", "contributions", "--out", "x.jsonl"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(&args)
            .args([
                "--endpoint",
                &gw.endpoint(),
                "--cert",
                "certs-example/expired.pem",
                "--key",
                "certs-example/expired.key",
            ])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("expired on"), "{args:?}: {err}");
    }
}

/// A gateway serving an expired certificate (its own start refuses one; an older
/// process may outlive its certificate): the client names that, not the CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_gateway_certificate_is_named_as_expired() {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let certs = certs_dir();
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(certs.join("ca.key")).expect("key"))
        .expect("ca key");
    let issuer = Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(certs.join("ca.pem")).expect("ca"),
        ca_key,
    )
    .expect("issuer");
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.subject_alt_names = vec![SanType::DnsName("localhost".try_into().expect("name"))];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &issuer).expect("sign");
    let dir = tempfile::tempdir().expect("tempdir");
    let (pem, key_file) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&pem, cert.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    let gw = TestGateway::spawn_with(|c| {
        c.tls.cert = pem;
        c.tls.key = key_file;
        c.forward.enabled = false;
    })
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["status", "workers", "--endpoint", &gw.endpoint()])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the gateway's certificate has expired") && err.contains("tls.cert"),
        "{err}"
    );
    assert!(!err.contains("not issued by --ca"), "{err}");
}
