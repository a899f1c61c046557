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
