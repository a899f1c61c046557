//! Personal data at rest: the database file does not reveal resident ID numbers,
//! names, mobiles or accident descriptions; key rotation re-seals everything; values
//! stored in clear by an older version are sealed at the next start.

use std::collections::BTreeMap;
use std::path::Path;

use oip_gateway::app::Gateway;
use oip_gateway::config::{Config, PiiConfig};
use oip_gateway::proto::{self, social_security_item};
use oip_gateway::vault::Vault;

use crate::common::*;

const NAME: &str = "欧阳锋芒";
const MOBILE: &str = "13912345678";
const DESCRIPTION: &str = "右腿胫骨骨折，入院手术";
const OLD_NAME: &str = "欧阳旧名字";

fn the_worker() -> proto::Worker {
    let mut w = worker("W-pii");
    w.id_number = resident_id("32058219850617123");
    w.name = NAME.into();
    w.mobile = MOBILE.into();
    w
}

/// The secrets to look for, as bytes.
fn secrets() -> Vec<(String, Vec<u8>)> {
    vec![
        ("id number".into(), the_worker().id_number.into_bytes()),
        ("name".into(), NAME.as_bytes().to_vec()),
        ("mobile".into(), MOBILE.as_bytes().to_vec()),
        ("description".into(), DESCRIPTION.as_bytes().to_vec()),
        ("old name".into(), OLD_NAME.as_bytes().to_vec()),
        ("birth date".into(), b"1985-06-17".to_vec()),
    ]
}

/// Which secrets occur in the database file `path` or its -wal/-shm companions.
fn found_in(path: &Path) -> Vec<String> {
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", path.display());
        if let Ok(b) = std::fs::read(&p) {
            bytes.extend(b);
        }
    }
    assert!(!bytes.is_empty(), "{} exists", path.display());
    secrets()
        .into_iter()
        .filter(|(_, s)| bytes.windows(s.len()).any(|w| w == s.as_slice()))
        .map(|(what, _)| what)
        .collect()
}

fn pii(keys: &[(&str, &str)], current: &str) -> PiiConfig {
    PiiConfig {
        keys: keys
            .iter()
            .map(|(id, k)| (id.to_string(), k.to_string()))
            .collect::<BTreeMap<_, _>>(),
        current_key: current.into(),
        lookup_key: "42".repeat(32),
    }
}

async fn start(dir: &Path, pii: PiiConfig) -> anyhow::Result<Gateway> {
    let url = format!("sqlite:{}", dir.join("oip.db").display());
    let mut config = Config::for_test(url, tls_files(), test_platforms());
    config.pii = pii;
    config.forward.min_backoff_ms = 20;
    config.forward.max_backoff_ms = 200;
    Gateway::start(config).await
}

/// Submits the worker, an order and an accident, and waits until the worker and the
/// accident reached the social-security backend.
async fn submit_and_forward(addr: std::net::SocketAddr) {
    let mut a = client(addr, "platform-a").await;
    assert_eq!(
        brief(&register(&mut a, vec![the_worker()]).await),
        vec![accepted()]
    );
    report(&mut a, vec![order("O-pii", "W-pii")]).await;
    let mut acc = accident("A-pii", "W-pii", "O-pii");
    acc.description = DESCRIPTION.into();
    assert_eq!(
        brief(&report_accidents(&mut a, vec![acc]).await),
        vec![accepted()]
    );
    await_delivery_states(&mut a, "worker", "W-pii", &["DELIVERED"]).await;
    await_delivery_states(&mut a, "accident", "A-pii", &["DELIVERED"]).await;
}

/// The insured person of the first enrolment a social-security pull returns.
async fn pulled_person(addr: std::net::SocketAddr) -> proto::InsuredPerson {
    let mut admin = Admin::new(role_channel(addr, "admin").await);
    grant(&mut admin, SS_ID, "social-security", &["320000"]).await;
    let mut ss = SocialSecurity::new(role_channel(addr, "social-security").await);
    let msgs = drain(
        ss.pull_social_security(proto::PullRequest::default())
            .await
            .expect("pull")
            .into_inner(),
    )
    .await
    .expect("stream");
    msgs.into_iter()
        .find(|m| {
            matches!(
                m.item.as_ref().and_then(|i| i.payload.as_ref()),
                Some(social_security_item::Payload::Enrolment(_))
            )
        })
        .and_then(|m| m.person)
        .expect("an enrolment with its person")
}

async fn masked_name(addr: std::net::SocketAddr) -> String {
    let mut a = client(addr, "platform-a").await;
    let w = a
        .list_workers(proto::ListRequest::default())
        .await
        .expect("list")
        .into_inner()
        .workers;
    w[0].worker.as_ref().expect("worker").name.clone()
}

#[tokio::test]
async fn the_database_file_does_not_reveal_personal_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start(dir.path(), PiiConfig::for_test())
        .await
        .expect("start");
    submit_and_forward(gw.addr).await;
    let person = pulled_person(gw.addr).await;
    assert_eq!(
        (person.id_number, person.name),
        (the_worker().id_number, NAME.into())
    );
    assert_eq!(masked_name(gw.addr).await, "欧***");
    gw.shutdown().await.expect("stop");

    assert_eq!(found_in(&dir.path().join("oip.db")), Vec::<String>::new());
    // The search works: the simulated backend stores what it received in clear.
    assert_eq!(
        found_in(&dir.path().join("backend-sim.db")),
        vec!["id number", "name", "mobile", "description"]
    );
}

/// The key ids of every sealed value in the database.
async fn key_ids(dir: &Path) -> BTreeMap<String, usize> {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(dir.join("oip.db")))
        .await
        .expect("open");
    let values: Vec<(Vec<u8>,)> = sqlx::query_as(
        "SELECT id_number FROM workers UNION ALL SELECT name FROM workers
         UNION ALL SELECT mobile FROM workers UNION ALL SELECT birth_date FROM workers
         UNION ALL SELECT description FROM accidents
         UNION ALL SELECT payload FROM outbox WHERE destination = 'social-security'
           AND (record_key LIKE '%/worker/%' OR record_key LIKE '%/accident/%')",
    )
    .fetch_all(&pool)
    .await
    .expect("values");
    pool.close().await;
    let mut ids = BTreeMap::new();
    for (v,) in values {
        *ids.entry(Vault::key_id(&v).unwrap_or("(clear)").to_string())
            .or_insert(0) += 1;
    }
    ids
}

#[tokio::test]
async fn a_rotated_key_re_seals_everything_and_the_old_key_can_then_go() {
    let k1 = "11".repeat(32);
    let k2 = "22".repeat(32);
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start(dir.path(), pii(&[("k1", &k1)], "k1"))
        .await
        .expect("start");
    submit_and_forward(gw.addr).await;
    gw.shutdown().await.expect("stop");
    let before = key_ids(dir.path()).await;
    assert_eq!(before.keys().collect::<Vec<_>>(), vec!["k1"], "{before:?}");
    let sealed: usize = before.values().sum();
    assert_eq!(
        sealed, 7,
        "ID number, name, mobile, birth date, description, the worker and accident items: {before:?}"
    );

    // Rotation: k2 becomes current, k1 stays listed for one start.
    let gw = start(dir.path(), pii(&[("k1", &k1), ("k2", &k2)], "k2"))
        .await
        .expect("start with k2");
    assert_eq!(
        key_ids(dir.path()).await,
        BTreeMap::from([("k2".to_string(), sealed)])
    );
    assert_eq!(masked_name(gw.addr).await, "欧***");
    gw.shutdown().await.expect("stop");

    // Without k1 everything still opens.
    let gw = start(dir.path(), pii(&[("k2", &k2)], "k2"))
        .await
        .expect("start with k2 only");
    assert_eq!(
        pulled_person(gw.addr).await.id_number,
        the_worker().id_number
    );
    assert_eq!(masked_name(gw.addr).await, "欧***");
    gw.shutdown().await.expect("stop");

    // Back to k1 alone: the data is not under it any more, and start-up says so.
    let err = start(dir.path(), pii(&[("k1", &k1)], "k1"))
        .await
        .err()
        .expect("k2's data cannot be opened with k1");
    assert!(format!("{err:#}").contains("\"k2\""), "{err:#}");
    assert_eq!(found_in(&dir.path().join("oip.db")), Vec::<String>::new());
}

#[tokio::test]
async fn values_stored_in_clear_by_an_older_version_are_sealed_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start(dir.path(), PiiConfig::for_test())
        .await
        .expect("start");
    submit_and_forward(gw.addr).await;
    gw.shutdown().await.expect("stop");

    // What a database from before sealing holds: clear text, no state row.
    let vault = Vault::for_test();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("oip.db")))
        .await
        .expect("open");
    let payloads: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, payload FROM outbox WHERE destination = 'social-security'")
            .fetch_all(&pool)
            .await
            .expect("payloads");
    for (seq, p) in payloads {
        if Vault::key_id(&p).is_none() {
            continue; // orders and enrolments carry no personal data and stay clear
        }
        let clear = vault.open(&p, b"outbox.payload").expect("sealed payload");
        sqlx::query("UPDATE outbox SET payload = ?2 WHERE seq = ?1")
            .bind(seq)
            .bind(clear)
            .execute(&pool)
            .await
            .expect("clear payload");
    }
    let w = the_worker();
    // Plain content hashes, a clear birth date, and a name written twice (the first
    // version lingers in a free page unless the file is rebuilt).
    let unmask = |pid: i64, id: &str, stored: &[u8]| {
        let mut row = pid.to_be_bytes().to_vec();
        row.extend_from_slice(id.as_bytes());
        let stored: [u8; 32] = stored.try_into().expect("32 bytes");
        vault.mask_hash(&row, &stored).to_vec()
    };
    let (pid, hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT platform_id, content_hash FROM workers")
            .fetch_one(&pool)
            .await
            .expect("worker");
    // A row deleted by the older version: its bytes stay in the page's free space.
    sqlx::query(
        "INSERT INTO workers (platform_id, worker_id, revision, content_hash, id_type, id_number,
           name, mobile, industries, registered_at, status, received_at)
         SELECT platform_id, 'W-gone', 1, content_hash, id_type, 'x', ?1, 'x', industries,
           registered_at, status, received_at FROM workers",
    )
    .bind(OLD_NAME)
    .execute(&pool)
    .await
    .expect("insert");
    sqlx::query("DELETE FROM workers WHERE worker_id = 'W-gone'")
        .execute(&pool)
        .await
        .expect("delete");
    for name in [OLD_NAME, NAME] {
        sqlx::query(
            "UPDATE workers SET id_number = ?1, name = ?2, mobile = ?3, id_number_hash = NULL,
               birth_date = '1985-06-17', content_hash = ?4",
        )
        .bind(&w.id_number)
        .bind(name)
        .bind(MOBILE)
        .bind(unmask(pid, "W-pii", &hash))
        .execute(&pool)
        .await
        .expect("clear worker");
    }
    let hash: Vec<u8> = sqlx::query_scalar("SELECT content_hash FROM accidents")
        .fetch_one(&pool)
        .await
        .expect("accident");
    sqlx::query("UPDATE accidents SET description = ?1, content_hash = ?2")
        .bind(DESCRIPTION)
        .bind(unmask(pid, "A-pii", &hash))
        .execute(&pool)
        .await
        .expect("clear accident");
    sqlx::query("DELETE FROM pii_state")
        .execute(&pool)
        .await
        .expect("state");
    pool.close().await;
    let clear = key_ids(dir.path())
        .await
        .get("(clear)")
        .copied()
        .unwrap_or(0);
    assert!(clear >= 5, "{clear} clear values");
    assert!(
        !found_in(&dir.path().join("oip.db")).is_empty(),
        "the clear values are in the file"
    );

    let gw = start(dir.path(), PiiConfig::for_test())
        .await
        .expect("restart");
    assert_eq!(
        key_ids(dir.path()).await.keys().collect::<Vec<_>>(),
        vec!["test"]
    );
    assert_eq!(pulled_person(gw.addr).await.name, NAME);
    // The records are recognised as the same content: resending them is DUPLICATE.
    let mut a = client(gw.addr, "platform-a").await;
    let got = brief(&register(&mut a, vec![the_worker()]).await);
    assert_eq!(got[0].0, "DUPLICATE", "{got:?}");
    let mut acc = accident("A-pii", "W-pii", "O-pii");
    acc.description = DESCRIPTION.into();
    let got = brief(&report_accidents(&mut a, vec![acc]).await);
    assert_eq!(got[0].0, "DUPLICATE", "{got:?}");
    gw.shutdown().await.expect("stop");
    assert_eq!(found_in(&dir.path().join("oip.db")), Vec::<String>::new());
    let hashes: Vec<(Option<Vec<u8>>,)> = {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("oip.db")),
            )
            .await
            .expect("open");
        sqlx::query_as("SELECT id_number_hash FROM workers")
            .fetch_all(&pool)
            .await
            .expect("hashes")
    };
    let test_vault = oip_gateway::config::Config::for_test(String::new(), tls_files(), vec![])
        .vault()
        .expect("vault");
    assert_eq!(
        hashes,
        vec![(Some(
            test_vault.lookup_hash(w.id_number.as_bytes()).to_vec()
        ),)],
        "the lookup hash is restored"
    );
}

/// Damages a sealed value so that its tag no longer verifies.
fn flip_last_byte(p: &mut [u8]) {
    if let Some(last) = p.last_mut() {
        *last ^= 1;
    }
}

/// Replaces the stored payload of the social-security item of `record` (a record key
/// suffix such as `/worker/W-1`) with what `damage` makes of it, the gateway stopped.
async fn damage_item(db: &Path, record: &str, damage: impl Fn(&mut Vec<u8>)) {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(db))
        .await
        .expect("open");
    let (seq, mut payload): (i64, Vec<u8>) = sqlx::query_as(
        "SELECT seq, payload FROM outbox WHERE destination = 'social-security' AND record_key LIKE ?1",
    )
    .bind(format!("%{record}"))
    .fetch_one(&pool)
    .await
    .expect("the item");
    damage(&mut payload);
    sqlx::query("UPDATE outbox SET payload = ?2 WHERE seq = ?1")
        .bind(seq)
        .bind(payload)
        .execute(&pool)
        .await
        .expect("damage");
    pool.close().await;
}

#[tokio::test]
async fn an_item_that_cannot_be_read_is_dead_lettered_and_the_others_are_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("oip.db");
    // Queued while forwarding is off, so that the items are still pending when damaged.
    let url = format!("sqlite:{}", db.display());
    let mut config = Config::for_test(url, tls_files(), test_platforms());
    config.forward.enabled = false;
    let gw = Gateway::start(config).await.expect("start");
    let mut a = client(gw.addr, "platform-a").await;
    let workers = vec![the_worker(), worker("W-bad-seal"), worker("W-bad-bytes")];
    assert_eq!(brief(&register(&mut a, workers).await), vec![accepted(); 3]);
    report(&mut a, vec![order("O-pii", "W-pii")]).await;
    assert_eq!(
        brief(&report_accidents(&mut a, vec![accident("A-bad", "W-pii", "O-pii")]).await),
        vec![accepted()]
    );
    gw.shutdown().await.expect("stop");
    damage_item(&db, "/accident/A-bad", |p| flip_last_byte(p)).await;
    // A sealed payload whose tag no longer verifies, and bytes that are no item.
    damage_item(&db, "/worker/W-bad-seal", |p| flip_last_byte(p)).await;
    damage_item(&db, "/worker/W-bad-bytes", |p| *p = vec![0xff; 3]).await;

    let gw = start(dir.path(), PiiConfig::for_test())
        .await
        .expect("start");
    let mut a = client(gw.addr, "platform-a").await;
    await_delivery_states(&mut a, "worker", "W-pii", &["DELIVERED"]).await;
    await_delivery_states(&mut a, "order", "O-pii", &["DELIVERED"]).await;
    for (kind, id) in [
        ("worker", "W-bad-seal"),
        ("worker", "W-bad-bytes"),
        ("accident", "A-bad"),
    ] {
        await_delivery_states(&mut a, kind, id, &["DEAD_LETTERED"]).await;
        let d = deliveries(&mut a, kind, id).await;
        assert!(
            d[0].last_error.contains("cannot be read"),
            "{id}: {:?}",
            d[0].last_error
        );
    }

    // A pull passes the worker items (not pulled, so not opened), sends the order and
    // its enrolment, and stops at the unreadable accident, naming it.
    let mut admin = Admin::new(role_channel(gw.addr, "admin").await);
    grant(&mut admin, SS_ID, "social-security", &["320000"]).await;
    let mut ss = SocialSecurity::new(role_channel(gw.addr, "social-security").await);
    let mut stream = ss
        .pull_social_security(proto::PullRequest::default())
        .await
        .expect("pull")
        .into_inner();
    let mut items = 0;
    let err = loop {
        match stream.message().await {
            Ok(Some(m)) => items += usize::from(m.item.is_some()),
            Ok(None) => panic!("the pull ended without reaching the unreadable entry"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    assert!(err.message().contains("journal entry"), "{err:?}");
    assert_eq!(items, 2, "the order and its enrolment before it");
    gw.shutdown().await.expect("stop");
}

#[tokio::test]
async fn a_rotation_stopped_half_way_is_not_trusted_at_the_next_start() {
    let k1 = "11".repeat(32);
    let k2 = "22".repeat(32);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("oip.db");
    let gw = start(dir.path(), pii(&[("k1", &k1)], "k1"))
        .await
        .expect("start");
    submit_and_forward(gw.addr).await;
    gw.shutdown().await.expect("stop");
    // An item that no longer opens stops the rotation after the workers were re-sealed.
    damage_item(&db, "/accident/A-pii", |p| flip_last_byte(p)).await;
    let err = start(dir.path(), pii(&[("k1", &k1), ("k2", &k2)], "k2"))
        .await
        .err()
        .expect("the damaged item stops the rotation");
    let text = format!("{err:#}");
    assert!(text.contains("outbox item"), "{text}");
    let keys = key_ids(dir.path()).await;
    assert!(
        keys.contains_key("k1") && keys.contains_key("k2"),
        "half-way: {keys:?}"
    );
    // Back to k1 alone: start-up does not trust the key recorded before the
    // rotation, finds the values under k2 and names the key it lacks.
    let err = start(dir.path(), pii(&[("k1", &k1)], "k1"))
        .await
        .err()
        .expect("values under k2 cannot be opened with k1");
    let text = format!("{err:#}");
    assert!(text.contains("\"k2\""), "{text}");
    for (what, secret) in secrets() {
        assert!(
            !text
                .as_bytes()
                .windows(secret.len())
                .any(|w| w == secret.as_slice()),
            "the error shows the {what}: {text}"
        );
    }
}
