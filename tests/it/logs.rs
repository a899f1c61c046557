//! No full resident ID number, name or mobile in the gateway's logs, at any level.

use oip_gateway::proto;

use crate::common::*;

#[tokio::test]
async fn personal_data_never_reaches_the_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = GatewayProcess::spawn(dir.path(), &[("RUST_LOG", "trace")]);
    let mut c = client(gw.addr, "platform-a").await;

    let id = resident_id("32058319880808771");
    let name = "欧阳娜娜";
    let mobile = "13987654321";
    let mut good = worker("W-PII");
    good.id_number = id.clone();
    good.name = name.into();
    good.mobile = mobile.into();
    // Rejected records travel the error paths with the same personal data.
    let mut bad_mobile = good.clone();
    bad_mobile.worker_id = "W-PII-2".into();
    bad_mobile.mobile = "23987654321".into();
    let mut bad_id = good.clone();
    bad_id.worker_id = "W-PII-3".into();
    bad_id.id_number = format!("{}0", &id[..17]);
    let out = register(&mut c, vec![good.clone(), bad_mobile, bad_id.clone()]).await;
    assert_eq!(out.summary.expect("summary").accepted, 1);
    register(&mut c, vec![good.clone()]).await; // duplicate path
    let mut conflict = good.clone();
    conflict.name = "欧阳娜".into();
    register(&mut c, vec![conflict]).await; // conflict path
    c.list_workers(proto::ListRequest::default())
        .await
        .expect("list");
    report(&mut c, vec![order("O1", "W-PII")]).await;

    let logs = gw.captured_logs();
    assert!(
        logs.contains("gateway listening"),
        "the capture works: {}",
        &logs[..logs.len().min(500)]
    );
    assert!(
        logs.len() > 10_000,
        "trace level was on ({} bytes)",
        logs.len()
    );
    for secret in [
        id.as_str(),
        bad_id.id_number.as_str(),
        name,
        mobile,
        "23987654321",
    ] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
}
