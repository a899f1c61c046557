//! Configuration through the real binary: environment variables override the file, and
//! bad configuration stops start-up with a message naming the key.

use std::process::Command;

use oip_gateway::proto;

use crate::common::*;

#[tokio::test]
async fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // OIP_ENDPOINT belongs to the client: the server must not trip over it.
    let gw = GatewayProcess::spawn(
        dir.path(),
        &[
            ("OIP_LIMITS__MAX_BATCH_RECORDS", "2"),
            ("OIP_ENDPOINT", "https://127.0.0.1:1"),
        ],
    );
    let mut c = client(gw.addr, "platform-a").await;
    let err = c
        .register_workers(proto::RegisterWorkersRequest {
            workers: vec![worker("W1"), worker("W2"), worker("W3")],
        })
        .await
        .expect_err("over the limit set by the environment");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        register(&mut c, vec![worker("W1"), worker("W2")])
            .await
            .outcomes
            .len(),
        2
    );
}

#[test]
fn bad_configuration_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/oip-gateway.toml");
    for (var, value, key) in [
        ("OIP_LISTEN", "not-an-address", "listen"),
        ("OIP_TLS__CA", "/nonexistent/ca.pem", "tls.ca"),
        (
            "OIP_LIMITS__MAX_FUTURE_SECS",
            "-5",
            "limits.max_future_secs",
        ),
    ] {
        let db = format!("sqlite:{}", dir.path().join("oip.db").display());
        let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["serve", "--config", config])
            .env("OIP_DATABASE_URL", db)
            .env("OIP_LISTEN", "127.0.0.1:0")
            .env("OIP_OPERATIONS__LISTEN", "127.0.0.1:0")
            .env(var, value)
            .output()
            .expect("run serve");
        assert!(!out.status.success(), "{var} must stop start-up");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.to_lowercase().contains(key), "{var}: {err}");
    }
    // TLS files that cannot serve: named by key, with the reason, before anything starts.
    let certs = certs_dir();
    let file = |name: &str| certs.join(name).display().to_string();
    for (envs, key, says) in [
        (
            vec![("OIP_TLS__CA", file("server.pem"))],
            "tls.ca",
            "not a CA certificate",
        ),
        (
            vec![("OIP_TLS__KEY", file("platform-a.key"))],
            "tls.key",
            "does not belong to tls.cert",
        ),
        (
            vec![
                ("OIP_TLS__CERT", file("platform-a.pem")),
                ("OIP_TLS__KEY", file("platform-a.key")),
            ],
            "tls.cert",
            "is a client certificate",
        ),
        (
            vec![
                ("OIP_TLS__CERT", file("expired.pem")),
                ("OIP_TLS__KEY", file("expired.key")),
            ],
            "tls.cert",
            "expired on",
        ),
    ] {
        let db = format!("sqlite:{}", dir.path().join("tls.db").display());
        let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["serve", "--config", config])
            .env("OIP_DATABASE_URL", db)
            .env("OIP_LISTEN", "127.0.0.1:0")
            .env("OIP_OPERATIONS__LISTEN", "127.0.0.1:0")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{envs:?}");
        assert!(err.contains(key) && err.contains(says), "{envs:?}: {err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
        .current_dir(dir.path())
        .args(["serve", "--config", "missing.toml"])
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[cfg(unix)]
#[tokio::test]
async fn database_files_are_the_owners_only_and_the_demo_setup_is_announced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("data");
    let mut gw = GatewayProcess::spawn_in(dir.path(), &nested.join("oip.db"), &[]);
    let mut c = client(gw.addr, "platform-a").await;
    register(&mut c, vec![worker("W1")]).await;
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    assert_eq!(mode(&nested), 0o700, "the directory it created");
    for f in ["oip.db", "oip.db-wal", "oip.db-shm", "backend-sim.db"] {
        assert_eq!(mode(&nested.join(f)), 0o600, "{f}");
    }
    let logs = gw.captured_logs();
    assert!(logs.contains("DEMO SETUP IN USE"), "{logs}");
    assert!(logs.contains("example certificates"), "{logs}");
}

/// One gateway per SQLite database, and a taken port is named with what to do; the
/// second start fails before it starts anything (no simulator, no database writes).
#[tokio::test]
async fn a_second_gateway_on_the_same_database_or_port_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = GatewayProcess::spawn(dir.path(), &[]);
    let serve = |envs: &[(&str, String)]| {
        Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
            .args(["serve", "--config"])
            .arg(dir.path().join("gateway.toml"))
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run serve")
    };
    let out = serve(&[("OIP_LISTEN", "127.0.0.1:0".into())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let pid = first.child.id().to_string();
    assert!(
        err.contains("database_url")
            && err.contains("in use by another gateway")
            && err.contains(&pid)
            && err.contains("PostgreSQL"),
        "{err}"
    );
    assert!(!err.contains("backend simulator listening"), "{err}");

    let other_db = format!("sqlite:{}", dir.path().join("other.db").display());
    let out = serve(&[
        ("OIP_LISTEN", first.addr.to_string()),
        ("OIP_DATABASE_URL", other_db),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot bind {}", first.addr))
            && err.contains("another process")
            && err.contains("OIP_LISTEN"),
        "{err}"
    );
    assert!(!err.contains("backend simulator listening"), "{err}");
    assert!(
        !dir.path().join("other.db").exists(),
        "nothing created before the port is bound"
    );

    // The first is unharmed: it still answers.
    let mut c = client(first.addr, "platform-a").await;
    assert_eq!(register(&mut c, vec![worker("W1")]).await.outcomes.len(), 1);
}

/// Backends are both configured or neither, as https://host:port: one alone would send
/// the other's records to the simulator.
#[test]
fn forward_endpoints_are_both_or_neither_and_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/oip-gateway.toml");
    let ss = "OIP_FORWARD__SOCIAL_SECURITY_ENDPOINT";
    let tax = "OIP_FORWARD__TAX_ENDPOINT";
    for (envs, key, says) in [
        (
            vec![(ss, "https://ss.example.cn:443")],
            "forward.tax_endpoint",
            "set both",
        ),
        (
            vec![(tax, "https://tax.example.cn:443")],
            "forward.social_security_endpoint",
            "set both",
        ),
        (
            vec![
                (ss, "http://ss.example.cn:443"),
                (tax, "https://t.example.cn:1"),
            ],
            "forward.social_security_endpoint",
            "mutual TLS",
        ),
        (
            vec![(ss, "https://ss.example.cn:1"), (tax, "tax.example.cn:443")],
            "forward.tax_endpoint",
            "https://host:port",
        ),
        (
            vec![
                (ss, "https://ss.example.cn:1"),
                (tax, "https://tax.example.cn"),
            ],
            "forward.tax_endpoint",
            "https://host:port",
        ),
        (
            vec![
                (ss, "https://ss.example.cn:1"),
                (tax, "https://tax.example.cn:1"),
            ],
            "forward.simulate",
            "choose one",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["serve", "--config", config])
            .env(
                "OIP_DATABASE_URL",
                format!("sqlite:{}", dir.path().join("oip.db").display()),
            )
            .env("OIP_LISTEN", "127.0.0.1:0")
            .env("OIP_OPERATIONS__LISTEN", "127.0.0.1:0")
            .envs(envs.iter().copied())
            .output()
            .expect("run serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{envs:?}: {err}");
        assert!(err.contains(key) && err.contains(says), "{envs:?}: {err}");
        assert!(!dir.path().join("oip.db").exists(), "refused before start");
    }
}
