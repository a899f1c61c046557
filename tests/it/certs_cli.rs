//! `oip-gateway certs`, run as the real binary in temporary directories: the example PKI
//! keeps its CA key, writes keys owner-only and never overwrites without `--force`;
//! `certs ca` and `certs issue` make certificates a real gateway accepts.
//! (Multi-thread runtime: the CLI runs as a blocking child process while a gateway
//! serves from this test's runtime.)

use std::path::Path;
use std::process::{Command, Output};

use oip_gateway::config::TlsFiles;
use oip_gateway::identity::Principal;
use oip_gateway::proto::platform_service_client::PlatformServiceClient;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::common::*;

fn certs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
        .arg("certs")
        .args(args)
        .output()
        .expect("run oip-gateway certs")
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

/// The one-line error of a failed run.
fn refused(out: Output) -> String {
    assert!(!out.status.success(), "the run should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// Every `*.key` of `dir` is readable by its owner only; returns how many there are.
#[cfg(unix)]
fn keys_owner_only(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "key") {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            n += 1;
        }
    }
    n
}

/// The certificates of a PEM file.
fn chain(p: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let pem = std::fs::read(p).expect("read PEM");
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

/// A platform client presenting `cert`/`key`, trusting `ca` for the server `localhost`.
async fn platform_client(
    gw: &TestGateway,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Client, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("ca")))
        .identity(Identity::from_pem(
            std::fs::read(cert).expect("cert"),
            std::fs::read(key).expect("key"),
        ))
        .domain_name("localhost");
    Ok(PlatformServiceClient::new(channel(gw.addr, tls).await?))
}

#[test]
fn the_example_pki_keeps_its_ca_key_and_never_overwrites_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let out = ok(certs(&["--out", s(&pki)]));
    assert!(out.contains("wrote the example PKI"), "{out}");
    for f in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "platform-a.pem",
        "untrusted.pem",
    ] {
        assert!(pki.join(f).is_file(), "{f}");
    }
    #[cfg(unix)]
    assert_eq!(
        keys_owner_only(&pki),
        11,
        "ca + server + 6 roles + gateway, expired, untrusted"
    );
    let ca = std::fs::read(pki.join("ca.pem")).expect("ca.pem");

    // Again: refused, naming the first file that exists, and nothing is written.
    let err = refused(certs(&["--out", s(&pki)]));
    assert!(
        err.contains("ca.pem exists; --force overwrites it"),
        "{err}"
    );
    assert_eq!(std::fs::read(pki.join("ca.pem")).expect("ca.pem"), ca);

    // One existing file (the last one written) is enough, and the rest is not written.
    let partial = dir.path().join("partial");
    std::fs::create_dir(&partial).expect("mkdir");
    std::fs::write(partial.join("untrusted.key"), "keep").expect("write");
    let err = refused(certs(&["--out", s(&partial)]));
    assert!(err.contains("untrusted.key exists"), "{err}");
    assert!(!partial.join("ca.pem").exists(), "nothing written");
    assert_eq!(
        std::fs::read_to_string(partial.join("untrusted.key")).expect("read"),
        "keep"
    );

    // --force overwrites everything, a world-readable key file becomes owner-only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(pki.join("ca.key"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    ok(certs(&["--out", s(&pki), "--force"]));
    assert_ne!(std::fs::read(pki.join("ca.pem")).expect("ca.pem"), ca);
    #[cfg(unix)]
    assert_eq!(keys_owner_only(&pki), 11);

    // `certs --out` before a subcommand is refused rather than ignored.
    assert!(!certs(&["--out", s(&pki), "issue"]).status.success());
}

/// The issue's case: a certificate for a platform from the example CA (a copy of
/// certs-example/ca.*), accepted by a gateway trusting certs-example/ca.pem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_platform_certificate_is_accepted_by_the_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    std::fs::copy(certs_dir().join("ca.pem"), &ca).expect("copy ca.pem");
    std::fs::copy(certs_dir().join("ca.key"), &ca_key).expect("copy ca.key");
    let prefix = dir.path().join("issued/platform-a");
    let out = ok(certs(&[
        "issue",
        "--identity",
        PLATFORM_A_ID,
        "--ca-cert",
        s(&ca),
        "--ca-key",
        s(&ca_key),
        "--out",
        s(&prefix),
        "--days",
        "30",
    ]));
    assert!(out.contains(&format!("identity: {PLATFORM_A_ID}")), "{out}");
    let serial = out
        .lines()
        .find_map(|l| l.strip_prefix("serial: "))
        .expect("the serial is printed");
    assert!(out.contains("expires: "), "{out}");

    let (cert, key) = (
        dir.path().join("issued/platform-a.pem"),
        dir.path().join("issued/platform-a.key"),
    );
    #[cfg(unix)]
    assert_eq!(mode(&key), 0o600);
    let certs_in = chain(&cert);
    assert_eq!(certs_in.len(), 2, "the certificate, then the CA's");
    assert_eq!(certs_in[1], chain(&ca)[0]);
    let p = Principal::from_certificate(certs_in[0].as_ref()).expect("identity");
    assert_eq!(p.uri, PLATFORM_A_ID);
    let (_, x) = X509Certificate::from_der(certs_in[0].as_ref()).expect("parse");
    assert_eq!(hex::encode_upper(x.raw_serial()), serial);
    let eku = x.extended_key_usage().expect("eku").expect("an EKU");
    assert!(eku.value.client_auth && !eku.value.server_auth);
    let san = x.subject_alternative_name().expect("san").expect("a SAN");
    assert_eq!(
        san.value.general_names.len(),
        1,
        "the identity is the only SAN"
    );
    let days = (x.validity().not_after.timestamp() - x.validity().not_before.timestamp()) / 86_400;
    assert_eq!(days, 30, "30 days (and the 5 minutes before now)");

    let gw = TestGateway::spawn().await;
    let mut client = platform_client(&gw, &certs_dir().join("ca.pem"), &cert, &key)
        .await
        .expect("connect");
    assert_eq!(
        brief(&register(&mut client, vec![worker("W1")]).await),
        vec![accepted()]
    );
    gw.stop().await;
}

/// A pilot without any demo material: a CA of its own, the gateway's server certificate
/// and a platform certificate from it; records reach the embedded simulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pilot_ca_issues_server_and_client_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pilot");
    let out = ok(certs(&[
        "ca",
        "--out",
        s(&pki),
        "--name",
        "Jiangsu OIP pilot CA",
    ]));
    assert!(out.contains("CA: Jiangsu OIP pilot CA"), "{out}");
    #[cfg(unix)]
    assert_eq!(keys_owner_only(&pki), 1);
    let (ca, ca_key) = (pki.join("ca.pem"), pki.join("ca.key"));
    let issue = |args: &[&str], prefix: &str| {
        let mut a = vec![
            "issue",
            "--ca-cert",
            s(&ca),
            "--ca-key",
            s(&ca_key),
            "--out",
            prefix,
        ];
        a.extend_from_slice(args);
        certs(&a)
    };
    let server = pki.join("server");
    let out = ok(issue(
        &["--server-name", "localhost", "--server-name", "127.0.0.1"],
        s(&server),
    ));
    assert!(out.contains("server names: localhost, 127.0.0.1"), "{out}");
    let platform = pki.join("platform-a");
    ok(issue(&["--identity", PLATFORM_A_ID], s(&platform)));

    let tls = TlsFiles {
        ca: ca.clone(),
        cert: pki.join("server.pem"),
        key: pki.join("server.key"),
        crls: Vec::new(),
        reload_check_secs: 5,
    };
    // Forwarding stays on with the demo's forward.* files left in place: the embedded
    // simulator is reached over the gateway's own link, whatever CA tls.* come from.
    let gw = TestGateway::spawn_with(|c| c.tls = tls).await;
    let mut client = platform_client(
        &gw,
        &ca,
        &pki.join("platform-a.pem"),
        &pki.join("platform-a.key"),
    )
    .await
    .expect("connect");
    assert_eq!(
        brief(&register(&mut client, vec![worker("W1")]).await),
        vec![accepted()]
    );
    await_delivery_states(&mut client, "worker", "W1", &["DELIVERED"]).await;

    // The example platform A certificate is not from this CA: refused.
    let demo = platform_client(
        &gw,
        &ca,
        &certs_dir().join("platform-a.pem"),
        &certs_dir().join("platform-a.key"),
    )
    .await;
    if let Ok(mut demo) = demo {
        let r = demo
            .register_workers(oip_gateway::proto::RegisterWorkersRequest {
                workers: vec![worker("W2")],
            })
            .await;
        assert!(r.is_err(), "a certificate of another CA is refused");
    }
    gw.stop().await;
}

#[test]
fn issue_refuses_bad_identities_foreign_keys_and_overwriting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    ok(certs(&["ca", "--out", s(&pki)]));
    let (ca, ca_key) = (pki.join("ca.pem"), pki.join("ca.key"));
    let prefix = dir.path().join("x");
    let issue = |args: &[&str]| {
        let mut a = vec![
            "issue",
            "--ca-cert",
            s(&ca),
            "--ca-key",
            s(&ca_key),
            "--out",
            s(&prefix),
        ];
        a.extend_from_slice(args);
        certs(&a)
    };

    // A platform's subject must be a USCC with the right check character.
    let err = refused(issue(&["--identity", "oip://platform/91320100MA1DEMA011"]));
    assert!(
        err.contains("--identity") && err.contains("check character"),
        "{err}"
    );
    let err = refused(issue(&["--identity", "oip://platform/ACME"]));
    assert!(err.contains("unified social credit code"), "{err}");
    let err = refused(issue(&[
        "--identity",
        "https://platform/91320100MA1DEMA010",
    ]));
    assert!(err.contains("oip://<role>/<subject>"), "{err}");
    assert!(!dir.path().join("x.pem").exists() && !dir.path().join("x.key").exists());

    // Neither or both of --identity and --server-name: a usage error.
    assert!(!issue(&[]).status.success());
    assert!(
        !issue(&["--identity", TAX_ID, "--server-name", "localhost"])
            .status
            .success()
    );

    // A key that is not the CA's.
    let other = dir.path().join("other");
    ok(certs(&["ca", "--out", s(&other)]));
    let out = certs(&[
        "issue",
        "--identity",
        TAX_ID,
        "--ca-cert",
        s(&ca),
        "--ca-key",
        s(&other.join("ca.key")),
        "--out",
        s(&prefix),
    ]);
    let err = refused(out);
    assert!(
        err.contains("is not the private key of the CA certificate"),
        "{err}"
    );

    // Written once; refused again without --force; --force replaces it.
    ok(issue(&["--identity", TAX_ID]));
    let first = std::fs::read(dir.path().join("x.pem")).expect("x.pem");
    let err = refused(issue(&["--identity", TAX_ID]));
    assert!(err.contains("x.pem exists; --force overwrites it"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("x.pem")).expect("x.pem"),
        first
    );
    ok(issue(&["--identity", TAX_ID, "--force"]));
    assert_ne!(
        std::fs::read(dir.path().join("x.pem")).expect("x.pem"),
        first
    );

    // A validity beyond the CA's.
    let short = dir.path().join("short");
    ok(certs(&["ca", "--out", s(&short), "--days", "10"]));
    let err = refused(certs(&[
        "issue",
        "--identity",
        TAX_ID,
        "--ca-cert",
        s(&short.join("ca.pem")),
        "--ca-key",
        s(&short.join("ca.key")),
        "--out",
        s(&dir.path().join("y")),
    ]));
    assert!(err.contains("after the CA certificate"), "{err}");
}

/// `certs sign`: the requester keeps its key; the certificate names the identity given
/// on the command line and nothing the request asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_request_names_only_the_given_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    std::fs::copy(certs_dir().join("ca.pem"), &ca).expect("copy ca.pem");
    std::fs::copy(certs_dir().join("ca.key"), &ca_key).expect("copy ca.key");

    // The platform's side: a key that never leaves it, and a request asking for more.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut asked =
        rcgen::CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
    asked.subject_alt_names.push(rcgen::SanType::URI(
        "oip://admin/root".try_into().expect("uri"),
    ));
    asked.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let request = asked.serialize_request(&key).expect("CSR");
    let csr = dir.path().join("request.csr");
    std::fs::write(&csr, request.pem().expect("PEM")).expect("write CSR");
    let key_file = dir.path().join("platform-a.key");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");

    let cert = dir.path().join("platform-a.pem");
    let sign = |csr: &Path, out: &Path| {
        certs(&[
            "sign",
            "--csr",
            s(csr),
            "--identity",
            PLATFORM_A_ID,
            "--ca-cert",
            s(&ca),
            "--ca-key",
            s(&ca_key),
            "--out",
            s(out),
        ])
    };
    let out = ok(sign(&csr, &cert));
    assert!(out.contains(&format!("identity: {PLATFORM_A_ID}")), "{out}");
    let certs_in = chain(&cert);
    assert_eq!(certs_in.len(), 2, "the certificate, then the CA's");
    let (_, x) = X509Certificate::from_der(certs_in[0].as_ref()).expect("parse");
    assert_eq!(
        x.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    let san = x.subject_alternative_name().expect("san").expect("a SAN");
    assert_eq!(
        san.value.general_names,
        vec![x509_parser::extensions::GeneralName::URI(PLATFORM_A_ID)]
    );
    let eku = x.extended_key_usage().expect("eku").expect("an EKU");
    assert!(eku.value.client_auth && !eku.value.server_auth);
    assert!(!x.subject().to_string().contains("evil"));

    let gw = TestGateway::spawn().await;
    let mut client = platform_client(&gw, &certs_dir().join("ca.pem"), &cert, &key_file)
        .await
        .expect("connect");
    assert_eq!(
        brief(&register(&mut client, vec![worker("W1")]).await),
        vec![accepted()]
    );
    gw.stop().await;

    // A request whose signature does not verify (its key is not the signer's).
    let other = rcgen::KeyPair::generate().expect("key");
    let mut der = request.der().to_vec();
    let spki = key.public_key_raw();
    let at = der
        .windows(spki.len())
        .position(|w| w == spki)
        .expect("the key in the request");
    der[at..at + spki.len()].copy_from_slice(other.public_key_raw());
    let forged = dir.path().join("forged.csr");
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&der)
    };
    std::fs::write(
        &forged,
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"),
    )
    .expect("write");
    let err = refused(sign(&forged, &dir.path().join("forged.pem")));
    assert!(err.contains("signature does not verify"), "{err}");
    assert!(!dir.path().join("forged.pem").exists());
    let err = refused(sign(&csr, &cert));
    assert!(
        err.contains("platform-a.pem exists; --force overwrites it"),
        "{err}"
    );
}
