//! An acknowledged record survives the gateway being killed with SIGKILL.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::common::*;

#[tokio::test]
async fn acknowledged_batches_survive_sigkill_mid_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = GatewayProcess::spawn(dir.path(), &[]);
    let mut c = client(gw.addr, "platform-a").await;
    let workers: Vec<_> = (0..10).map(|i| worker(&format!("W{i}"))).collect();
    assert_eq!(
        brief(&register(&mut c, workers).await),
        vec![accepted(); 10]
    );

    // Send batches back to back; record every acknowledged order id; kill the process
    // with SIGKILL while batches are still in flight.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let sender = {
        let acked = acked.clone();
        let mut c = c.clone();
        tokio::spawn(async move {
            for batch in 0..10_000 {
                let orders: Vec<_> = (0..200)
                    .map(|i| order(&format!("O{batch}-{i}"), &format!("W{}", i % 10)))
                    .collect();
                let ids: Vec<String> = orders.iter().map(|o| o.order_id.clone()).collect();
                match c
                    .report_orders(oip_gateway::proto::ReportOrdersRequest { orders })
                    .await
                {
                    Ok(r) => {
                        assert!(r.get_ref().outcomes.iter().all(|o| o.code.is_empty()));
                        acked.lock().expect("acked").extend(ids);
                    }
                    Err(_) => return batch,
                }
            }
            10_000
        })
    };
    while acked.lock().expect("acked").len() < 2_000 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    gw.kill(); // Child::kill is SIGKILL on Unix: no shutdown code runs.
    let batches = sender.await.expect("sender");
    assert!(batches < 10_000, "the sender saw the gateway die");
    let acked = acked.lock().expect("acked").clone();

    let restarted = GatewayProcess::spawn(dir.path(), &[]);
    let mut c = client(restarted.addr, "platform-a").await;
    let stored: BTreeSet<String> = stored_order_ids(&mut c).await.into_iter().collect();
    let missing: Vec<_> = acked.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged orders lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    // Resending an acknowledged batch is answered DUPLICATE.
    let resend: Vec<_> = (0..200)
        .map(|i| order(&format!("O0-{i}"), &format!("W{}", i % 10)))
        .collect();
    let out = report(&mut c, resend).await;
    assert!(
        out.outcomes
            .iter()
            .all(|o| o.outcome() == oip_gateway::proto::Outcome::Duplicate)
    );
}

/// Another process that opens the running gateway's database to look (`sqlite3
/// oip.db`, a backup tool) and closes it again must find the gateway still there and
/// leave its write-ahead log alone: the log holds acknowledged commits not yet copied
/// into the database. The readiness probe runs every 100 ms here; it used to open and
/// close the database's files to see whether they could be written, which drops every
/// POSIX lock the gateway's process holds on them, SQLite's included, and the other
/// side's close then deleted the WAL under the running gateway (its later commits went
/// to a deleted file and were lost at the next start).
#[tokio::test]
async fn a_look_at_the_running_gateways_database_leaves_its_commits_in_place() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = GatewayProcess::spawn(dir.path(), &[("OIP_OPERATIONS__PROBE_INTERVAL_MS", "100")]);
    let mut c = client(gw.addr, "platform-a").await;
    assert_eq!(
        brief(&register(&mut c, vec![worker("W1")]).await),
        vec![accepted()]
    );
    let wal = dir.path().join("oip.db-wal");
    let url = format!("sqlite:{}", dir.path().join("oip.db").display());
    for n in 0..3 {
        // Several probes run meanwhile.
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let mut look = sqlx::SqliteConnection::connect(&url).await.expect("look");
        let (orders,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders")
            .fetch_one(&mut look)
            .await
            .expect("count");
        assert_eq!(orders, n, "the look sees every acknowledged order");
        look.close().await.expect("close");
        assert!(
            wal.exists(),
            "the running gateway's WAL was deleted by a reader's close"
        );
        assert_eq!(
            brief(&report(&mut c, vec![order(&format!("O{n}"), "W1")]).await),
            vec![accepted()]
        );
    }
    // Stopped and started again, every acknowledged order is there.
    gw.kill();
    let restarted = GatewayProcess::spawn(dir.path(), &[]);
    let mut c = client(restarted.addr, "platform-a").await;
    assert_eq!(stored_order_ids(&mut c).await.len(), 3);
}
