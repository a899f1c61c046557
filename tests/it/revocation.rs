//! Certificate revocation: CRL files (`tls.crls`) checked on every handshake and
//! reloaded without a restart, on SIGHUP and when a file changes; the refusal logged
//! with the certificate's serial number.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use oip_gateway::proto;

use crate::common::*;

/// The serial number of `certs-example/<stem>.pem`, upper-case hex.
fn serial(stem: &str) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let pem = std::fs::read(certs_dir().join(format!("{stem}.pem"))).expect("cert");
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .expect("a certificate")
        .expect("pem");
    let (_, c) = X509Certificate::from_der(&der).expect("parse");
    c.raw_serial_as_string().replace(':', "").to_uppercase()
}

/// `certs crl` with the example CA, revoking `serials`.
fn write_crl(out: &Path, serials: &[&str]) {
    let ca = certs_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oip-gateway"));
    cmd.args(["certs", "crl", "--ca-cert"])
        .arg(ca.join("ca.pem"))
        .arg("--ca-key")
        .arg(ca.join("ca.key"))
        .arg("--out")
        .arg(out);
    for s in serials {
        cmd.args(["--revoke", s]);
    }
    let done = cmd.output().expect("certs crl");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

/// Whether a new connection presenting `stem` is served.
async fn served(addr: std::net::SocketAddr, stem: &str) -> bool {
    match channel(addr, client_tls(Some(stem), "ca.pem")).await {
        Err(_) => false,
        Ok(ch) => proto::platform_service_client::PlatformServiceClient::new(ch)
            .list_workers(proto::ListRequest::default())
            .await
            .is_ok(),
    }
}

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_after_a_hangup_while_others_keep_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crl = dir.path().join("crl.pem");
    write_crl(&crl, &[]);
    let crls = format!("[\"{}\"]", crl.display());
    let mut gw = GatewayProcess::spawn(
        dir.path(),
        &[
            ("OIP_TLS__CRLS", crls.as_str()),
            ("OIP_TLS__RELOAD_CHECK_SECS", "3600"),
        ],
    );
    assert!(served(gw.addr, "platform-a").await, "not revoked yet");
    // A connection made before the revocation.
    let before = channel(gw.addr, client_tls(Some("platform-a"), "ca.pem"))
        .await
        .expect("connect");

    let a = serial("platform-a");
    write_crl(&crl, &[&a]);
    // Not before the reload (the file is only checked hourly here)...
    assert!(
        served(gw.addr, "platform-a").await,
        "reloaded on SIGHUP only"
    );
    let sent = Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(sent.success());
    let logs = gw.logs.clone();
    until("the reload is logged", async || {
        String::from_utf8_lossy(&logs.lock().expect("logs")).contains("tls material reloaded")
    })
    .await;
    assert!(!served(gw.addr, "platform-a").await, "revoked: refused");
    assert!(served(gw.addr, "platform-b").await, "others keep working");
    assert!(
        proto::platform_service_client::PlatformServiceClient::new(before)
            .list_workers(proto::ListRequest::default())
            .await
            .is_ok(),
        "an established connection keeps its handshake (until max_connection_age_secs)"
    );
    assert!(
        gw.child.try_wait().expect("wait").is_none(),
        "SIGHUP does not stop serve"
    );
    let logs = gw.captured_logs();
    let refused = logs
        .lines()
        .find(|l| l.contains("client certificate refused"))
        .unwrap_or_else(|| panic!("the refusal is logged: {logs}"));
    assert!(refused.contains(&a), "with the serial: {refused}");
    assert!(refused.contains("Revoked"), "and the reason: {refused}");
    assert!(!refused.contains("oip://"), "never the identity: {refused}");
}

#[tokio::test]
async fn a_changed_crl_file_is_reloaded_without_a_signal() {
    let keep = tempfile::tempdir().expect("tempdir");
    let crl = keep.path().join("crl.pem");
    write_crl(&crl, &[]);
    let path = crl.clone();
    let gw = TestGateway::spawn_with(move |c| {
        c.tls.crls = vec![path];
        c.tls.reload_check_secs = 1;
    })
    .await;
    assert!(served(gw.addr, "platform-a").await);
    write_crl(&crl, &[&serial("platform-a")]);
    let addr = gw.addr;
    until("refused once the file changed", async || {
        !served(addr, "platform-a").await
    })
    .await;
    assert!(served(gw.addr, "platform-b").await);
    // Lists that cannot be trusted are not taken: what is in force stays, and nobody
    // else is refused because of them.
    let good = std::fs::read(&crl).expect("read");
    let other = keep.path().join("other");
    let bin = env!("CARGO_BIN_EXE_oip-gateway");
    let made = Command::new(bin)
        .args(["certs", "ca", "--out"])
        .arg(&other)
        .output()
        .expect("certs ca");
    assert!(made.status.success());
    let crl_of = |ca_dir: &Path, number: Option<&str>, out: &Path| {
        let mut cmd = Command::new(bin);
        cmd.args(["certs", "crl", "--ca-cert"])
            .arg(ca_dir.join("ca.pem"))
            .arg("--ca-key")
            .arg(ca_dir.join("ca.key"))
            .arg("--out")
            .arg(out);
        if let Some(n) = number {
            cmd.args(["--number", n]);
        }
        let done = cmd.output().expect("certs crl");
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        std::fs::read(out).expect("read")
    };
    let foreign = crl_of(&other, None, &keep.path().join("foreign.pem"));
    let stale = crl_of(&certs_dir(), Some("1"), &keep.path().join("stale.pem"));
    let mut damaged = good.clone();
    // One byte of the signature (near the end of the PEM's base64) changed.
    let at = damaged.len() - 40;
    damaged[at] = if damaged[at] == b'A' { b'B' } else { b'A' };
    for (what, bytes) in [
        ("not a CRL", b"not a crl".to_vec()),
        ("another CA's", foreign),
        ("a damaged signature", damaged),
        ("an older number lifting the revocation", stale),
    ] {
        std::fs::write(&crl, bytes).expect("write");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !served(gw.addr, "platform-a").await,
            "{what}: the list in force stays"
        );
        assert!(
            served(gw.addr, "platform-b").await,
            "{what}: others keep working"
        );
    }
    // Lifted: served again.
    write_crl(&crl, &[]);
    until("served once lifted", async || {
        served(addr, "platform-a").await
    })
    .await;
    gw.stop().await;
}

/// The serial of the certificate the gateway presents to a new connection.
async fn presented_serial(addr: std::net::SocketAddr) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let tls = tls_connect(addr, rustls_client("platform-a", &[])).await;
    let leaf = tls.get_ref().1.peer_certificates().expect("certs")[0].clone();
    let (_, c) = X509Certificate::from_der(&leaf).expect("parse");
    c.raw_serial_as_string().replace(':', "").to_uppercase()
}

#[tokio::test]
async fn a_new_server_certificate_is_presented_without_a_restart() {
    let keep = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (
        keep.path().join("server.pem"),
        keep.path().join("server.key"),
    );
    std::fs::copy(certs_dir().join("server.pem"), &cert).expect("copy");
    std::fs::copy(certs_dir().join("server.key"), &key).expect("copy");
    let (c2, k2) = (cert.clone(), key.clone());
    let gw = TestGateway::spawn_with(move |c| {
        c.tls.cert = c2;
        c.tls.key = k2;
        c.tls.reload_check_secs = 1;
    })
    .await;
    let before = presented_serial(gw.addr).await;
    assert_eq!(before, serial("server"));
    // A new certificate and key from the same CA, put in place of the old ones.
    let prefix = keep.path().join("renewed");
    let ca = certs_dir();
    let issued = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
        .args([
            "certs",
            "issue",
            "--server-name",
            "localhost",
            "--server-name",
            "127.0.0.1",
        ])
        .arg("--ca-cert")
        .arg(ca.join("ca.pem"))
        .arg("--ca-key")
        .arg(ca.join("ca.key"))
        .arg("--out")
        .arg(&prefix)
        .output()
        .expect("certs issue");
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    std::fs::copy(prefix.with_extension("key"), &key).expect("key");
    std::fs::copy(prefix.with_extension("pem"), &cert).expect("cert");
    let addr = gw.addr;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = presented_serial(addr).await;
        if now != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is not presented"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served(gw.addr, "platform-a").await, "clients keep working");
    gw.stop().await;
}
