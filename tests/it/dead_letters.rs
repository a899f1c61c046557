//! Dead letters: an item the backend refuses as invalid is retried, then dead-lettered;
//! an administrator sees it, and after the cause is fixed replays it (it is delivered)
//! or discards it (never delivered). The CLI runs as a child process against the real
//! gateway (multi-thread runtime so the gateway serves meanwhile).

use std::process::Command;
use std::time::{Duration, Instant};

use oip_gateway::certs::DEMO_PLATFORM_A;
use oip_gateway::proto::{
    self, admin_service_client::AdminServiceClient,
    backend_sim_control_client::BackendSimControlClient,
};

use crate::common::*;

type Admin = AdminServiceClient<tonic::transport::Channel>;

async fn admin(gw: &TestGateway, stem: &str) -> Admin {
    AdminServiceClient::new(
        channel(gw.addr, client_tls(Some(stem), "ca.pem"))
            .await
            .expect("connect"),
    )
}

async fn reject(gw: &TestGateway, keys: Vec<String>) {
    let addr = gw.sim_addr.expect("embedded simulator");
    BackendSimControlClient::new(
        channel(addr, client_tls(Some("admin"), "ca.pem"))
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

/// Waits until the order's delivery states are `want`.
async fn await_states(c: &mut Client, id: &str, want: &[&str]) -> Vec<proto::Delivery> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = c
            .list_deliveries(proto::ListDeliveriesRequest {
                kind: "order".into(),
                id: id.into(),
            })
            .await
            .expect("deliveries")
            .into_inner()
            .deliveries;
        if got
            .iter()
            .map(|d| d.state.as_str())
            .eq(want.iter().copied())
        {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "order {id}: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn list(a: &mut Admin) -> Vec<proto::DeadLetter> {
    a.list_dead_letters(proto::ListDeadLettersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .dead_letters
}

/// A gateway that dead-letters an item after `max_attempts` refusals, retried quickly.
async fn gateway(max_attempts: u32) -> TestGateway {
    TestGateway::spawn_with(|c| {
        c.forward.max_attempts = max_attempts;
        c.forward.invalid_retry_ms = 20;
    })
    .await
}

fn cli(gw: &TestGateway, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["admin", "dead-letters"])
        .args(args)
        .args(["--endpoint", &gw.endpoint()])
        .output()
        .expect("run admin dead-letters");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_seen_by_an_administrator_and_delivered_after_replay() {
    let gw = gateway(2).await;
    let o1 = format!("{DEMO_PLATFORM_A}/order/O1/1");
    let o3 = format!("{DEMO_PLATFORM_A}/order/O3/1");
    reject(&gw, vec![o1.clone(), o3.clone()]).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    let orders = ["O1", "O2", "O3"].map(|id| order(id, "W1")).to_vec();
    report(&mut a, orders).await;

    // Refused twice, then dead; the rest of the queue went on.
    let dead = await_states(&mut a, "O1", &["DEAD_LETTERED"]).await;
    assert_eq!(dead[0].attempts, 2);
    assert!(!dead[0].last_error.is_empty());
    await_states(&mut a, "O2", &["DELIVERED"]).await;
    await_states(&mut a, "O3", &["DEAD_LETTERED"]).await;

    // An administrator sees both, with the backend's reason; nobody else may look.
    let mut root = admin(&gw, "admin").await;
    let letters = list(&mut root).await;
    let keys: Vec<_> = letters.iter().map(|d| d.idempotency_key.clone()).collect();
    assert_eq!(keys, vec![o1.clone(), o3.clone()]);
    assert!(
        letters
            .iter()
            .all(|d| d.attempts == 2 && !d.last_error.is_empty())
    );
    for stem in ["platform-a", "tax"] {
        let denied = admin(&gw, stem)
            .await
            .list_dead_letters(proto::ListDeadLettersRequest::default())
            .await
            .expect_err("not an administrator");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{stem}");
    }
    let bad = root
        .replay_dead_letters(proto::DeadLetterSelection::default())
        .await
        .expect_err("empty selection");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // The cause is fixed at the backend; the administrator replays O1 with the CLI.
    reject(&gw, vec![]).await;
    let printed = cli(&gw, &["list"]);
    assert!(
        printed.contains(&o1) && printed.contains("2 dead letters"),
        "{printed}"
    );
    let seq = letters[0].seq.to_string();
    assert_eq!(cli(&gw, &["replay", "--seq", &seq]).trim(), "replayed 1");
    await_states(&mut a, "O1", &["DELIVERED"]).await;

    // O3 is given up on: discarded, never delivered, and no longer listed.
    assert_eq!(cli(&gw, &["discard", "--all"]).trim(), "discarded 1");
    await_states(&mut a, "O3", &["DISCARDED"]).await;
    assert!(list(&mut root).await.is_empty());
    let stats = BackendSimControlClient::new(
        channel(
            gw.sim_addr.expect("sim"),
            client_tls(Some("admin"), "ca.pem"),
        )
        .await
        .expect("connect"),
    )
    .stats(proto::StatsRequest {})
    .await
    .expect("stats")
    .into_inner();
    let orders = stats
        .applied
        .iter()
        .find(|k| k.kind == "social-security/order")
        .map_or(0, |k| k.count);
    assert_eq!(orders, 2, "O1 after replay and O2; never O3");
    assert_eq!(stats.repeated_items, 0);
    gw.stop().await;
}

/// A dead letter whose record's correction was delivered since is superseded, not
/// replayed, and the administrator is told so (by the call's answer and the CLI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_names_the_dead_letters_it_superseded() {
    let gw = gateway(1).await;
    reject(&gw, vec![format!("{DEMO_PLATFORM_A}/order/O4/1")]).await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    report(&mut a, vec![order("O4", "W1")]).await;
    await_states(&mut a, "O4", &["DEAD_LETTERED"]).await;
    let mut fix = order("O4", "W1");
    fix.revision = Some(2);
    fix.status = "CANCELLED".into();
    assert_eq!(brief(&report(&mut a, vec![fix]).await), vec![accepted()]);
    await_states(&mut a, "O4", &["DEAD_LETTERED", "DELIVERED"]).await;

    let printed = cli(&gw, &["replay", "--all"]);
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        vec![
            "replayed 0",
            "superseded 1, not replayed: a newer version of the record is already delivered or on its way (see `oip-gateway status deliveries`)"
        ],
        "{printed}"
    );
    await_states(&mut a, "O4", &["SUPERSEDED", "DELIVERED"]).await;
    assert!(list(&mut admin(&gw, "admin").await).await.is_empty());
    gw.stop().await;
}
