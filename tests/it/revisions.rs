//! Safe retries and corrections: DUPLICATE, REVISION_CONFLICT, STALE_REVISION, higher
//! revisions; and client streams answering exactly as batches do.

use oip_gateway::proto;

use crate::common::*;

fn outcome_of(b: &proto::BatchOutcome) -> Vec<(String, String)> {
    b.outcomes
        .iter()
        .map(|o| (o.outcome().as_str_name().to_string(), o.code.clone()))
        .collect()
}

async fn stored_order(c: &mut Client, id: &str) -> proto::Order {
    c.list_orders(proto::ListRequest {
        id: id.into(),
        ..Default::default()
    })
    .await
    .expect("list")
    .into_inner()
    .orders
    .into_iter()
    .next()
    .and_then(|s| s.order)
    .expect("stored order")
}

#[tokio::test]
async fn duplicates_conflicts_stale_revisions_and_corrections() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1"), worker("W2")]).await;
    let original = order("O1", "W1");
    assert_eq!(
        brief(&report(&mut a, vec![original.clone()]).await),
        vec![accepted()]
    );

    // The identical resend is a DUPLICATE (safe retry), and changes nothing.
    let again = report(&mut a, vec![original.clone()]).await;
    assert_eq!(
        outcome_of(&again),
        vec![("DUPLICATE".into(), String::new())]
    );

    // Same revision, different content: REVISION_CONFLICT on the revision field.
    let mut changed = original.clone();
    changed.division_code = "320500".into();
    let out = report(&mut a, vec![changed.clone()]).await;
    assert_eq!(
        brief(&out),
        vec![(
            "REJECTED".into(),
            "REVISION_CONFLICT".into(),
            "orders[0].revision".into()
        )]
    );
    assert_eq!(stored_order(&mut a, "O1").await.division_code, "320100");

    // A higher revision is a correction that replaces the record.
    changed.revision = Some(3);
    changed.worker_id = "W2".into();
    assert_eq!(
        brief(&report(&mut a, vec![changed.clone()]).await),
        vec![accepted()]
    );
    let stored = stored_order(&mut a, "O1").await;
    assert_eq!(
        (
            stored.revision,
            stored.division_code.as_str(),
            stored.worker_id.as_str()
        ),
        (Some(3), "320500", "W2")
    );

    // A lower revision than the stored one is STALE_REVISION, even with old content.
    let mut stale = original.clone();
    stale.revision = Some(2);
    let out = report(&mut a, vec![stale, original.clone()]).await;
    assert_eq!(
        brief(&out),
        vec![
            (
                "REJECTED".into(),
                "STALE_REVISION".into(),
                "orders[0].revision".into()
            ),
            (
                "REJECTED".into(),
                "STALE_REVISION".into(),
                "orders[1].revision".into()
            ),
        ]
    );
    // The corrected revision resent is a DUPLICATE.
    assert_eq!(
        outcome_of(&report(&mut a, vec![changed]).await)[0].0,
        "DUPLICATE"
    );

    // Workers follow the same rules; a duplicate within one batch is a DUPLICATE too.
    let mut w1 = worker("W1");
    w1.revision = Some(2);
    w1.mobile = "13900139000".into();
    let out = register(&mut a, vec![worker("W1"), w1.clone(), w1.clone()]).await;
    assert_eq!(
        outcome_of(&out),
        vec![
            ("DUPLICATE".into(), String::new()),
            ("ACCEPTED".into(), String::new()),
            ("DUPLICATE".into(), String::new())
        ]
    );
    let listed = a
        .list_workers(proto::ListRequest {
            id: "W1".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let w = listed.workers[0].worker.as_ref().expect("worker");
    assert_eq!((w.revision, w.mobile.as_str()), (Some(2), "139****9000"));
}

#[tokio::test]
async fn a_worker_correction_governs_later_orders() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    register(&mut a, vec![worker("W1")]).await;
    let mut left = worker("W1");
    left.revision = Some(2);
    left.status = "LEFT".into();
    left.left_at = "2025-07-02T00:00:00+08:00".into();
    assert_eq!(brief(&register(&mut a, vec![left]).await), vec![accepted()]);
    let out = report(&mut a, vec![order("O1", "W1")]).await;
    assert_eq!(out.outcomes[0].code, "WORKER_NOT_ACTIVE");
}

/// The same sequence of records as unary batches and as client streams, on two fresh
/// gateways: the outcomes must be identical.
#[tokio::test]
async fn client_streams_answer_as_batches_do() {
    let workers = vec![worker("W1"), worker("W1"), {
        let mut w = worker("W2");
        w.mobile = "1".into();
        w
    }];
    let chunks: Vec<Vec<proto::Order>> = vec![
        vec![order("O1", "W1"), order("O2", "W2"), order("O1", "W1")],
        vec![
            {
                let mut o = order("O1", "W1");
                o.status = "CANCELLED".into();
                o
            },
            {
                let mut o = order("O3", "W1");
                o.revision = Some(2);
                o
            },
        ],
    ];

    let batch_gw = TestGateway::spawn().await;
    let mut c = batch_gw.client("platform-a").await;
    let mut batch = outcome_of(&register(&mut c, workers.clone()).await);
    for chunk in &chunks {
        batch.extend(outcome_of(&report(&mut c, chunk.clone()).await));
    }

    let stream_gw = TestGateway::spawn().await;
    let mut c = stream_gw.client("platform-a").await;
    let req = proto::RegisterWorkersRequest { workers };
    let w = c
        .stream_workers(tokio_stream::iter(vec![req]))
        .await
        .expect("stream")
        .into_inner();
    let reqs: Vec<_> = chunks
        .into_iter()
        .map(|orders| proto::ReportOrdersRequest { orders })
        .collect();
    let o = c
        .stream_orders(tokio_stream::iter(reqs))
        .await
        .expect("stream")
        .into_inner();
    let mut streamed = outcome_of(&w);
    streamed.extend(outcome_of(&o));

    assert_eq!(batch, streamed);
    assert!(streamed.iter().any(|(o, _)| o == "DUPLICATE"));
    assert!(streamed.iter().any(|(o, _)| o == "REJECTED"));
    // Indexes run across the chunks of a stream.
    let idx: Vec<u32> = o.outcomes.iter().map(|x| x.index).collect();
    assert_eq!(idx, vec![0, 1, 2, 3, 4]);
    let summary = o.summary.expect("summary");
    assert_eq!(summary.accepted + summary.duplicate + summary.rejected, 5);
}

#[tokio::test]
async fn a_stream_over_its_limit_fails_after_applying_what_fit() {
    let gw = TestGateway::spawn_with(|c| c.limits.max_stream_records = 2).await;
    let mut a = gw.client("platform-a").await;
    let reqs = vec![
        proto::RegisterWorkersRequest {
            workers: vec![worker("W1"), worker("W2")],
        },
        proto::RegisterWorkersRequest {
            workers: vec![worker("W3")],
        },
    ];
    let err = a
        .stream_workers(tokio_stream::iter(reqs))
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let listed = a
        .list_workers(proto::ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.workers.len(), 2);
}
