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
            .env(var, value)
            .output()
            .expect("run serve");
        assert!(!out.status.success(), "{var} must stop start-up");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.to_lowercase().contains(key), "{var}: {err}");
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
