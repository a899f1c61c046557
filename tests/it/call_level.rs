//! Issue 10, kinds 5 and 7 (call level): reflection in both versions listing exactly
//! what the port serves; a deadline that passes before the commit rolls the batch back
//! and says DEADLINE_EXCEEDED (to the caller and in the audit log); gzip requests;
//! size limits as RESOURCE_EXHAUSTED naming the limit; undecodable requests as
//! INVALID_ARGUMENT naming the record; oversized metadata. Real gateway, real mTLS.

use std::time::Duration;

use bytes::{Buf, BufMut};
use prost::Message as _;
use tonic::codec::{CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_reflection::pb::{v1, v1alpha};

use oip_gateway::proto;

use crate::common::*;

#[tokio::test]
async fn reflection_lists_exactly_the_served_services_in_both_versions() {
    let gw = TestGateway::spawn().await;
    let channel = role_channel(gw.addr, "platform-a").await;
    let want: std::collections::BTreeSet<String> = oip_gateway::app::served_services()
        .into_iter()
        .map(String::from)
        .collect();
    assert!(want.contains("oip.v1.PlatformService"));

    let mut c = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = c
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let listed: std::collections::BTreeSet<String> = match answers
        .message()
        .await
        .expect("answer")
        .and_then(|a| a.message_response)
    {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(listed, want);

    let mut c = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = c
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let listed: std::collections::BTreeSet<String> = match answers
        .message()
        .await
        .expect("answer")
        .and_then(|a| a.message_response)
    {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(listed, want, "v1alpha lists the same");
    for absent in [
        "oip.v1.TaxBackend",
        "oip.v1.SocialSecurityBackend",
        "oip.v1.BackendSimControl",
    ] {
        assert!(!listed.contains(absent), "{absent} is not served here");
    }
}

fn workers(n: usize) -> Vec<proto::Worker> {
    (0..n).map(|i| worker(&format!("W{i:05}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_before_the_commit_rolls_the_batch_back() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    let mut a = gw.client("platform-a").await;
    let mut req = tonic::Request::new(proto::RegisterWorkersRequest {
        workers: workers(10_000),
    });
    req.set_timeout(Duration::from_millis(200));
    let err = a
        .register_workers(req)
        .await
        .expect_err("10,000 workers do not commit in 200 ms");
    // The gateway answers DEADLINE_EXCEEDED; a tonic client whose own timer fires
    // first (it starts earlier) reports CANCELLED "Timeout expired" itself.
    match err.code() {
        tonic::Code::DeadlineExceeded => {
            assert!(
                err.message().contains("nothing was applied"),
                "{}",
                err.message()
            );
            assert!(err.metadata().get("x-trace-id").is_some());
        }
        tonic::Code::Cancelled => assert_eq!(err.message(), "Timeout expired", "{err:?}"),
        other => panic!("{other:?}: {err:?}"),
    }
    // The audit log says what the gateway answered, once the handler has rolled back.
    let pool = gw.sql().await;
    let register = "oip.v1.PlatformService/RegisterWorkers";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let outcomes = loop {
        let outcomes: Vec<String> = audit_entries(&pool, PLATFORM_A_ID)
            .await
            .into_iter()
            .filter(|e| e.0 == register)
            .map(|e| e.1)
            .collect();
        if !outcomes.is_empty() || std::time::Instant::now() > deadline {
            break outcomes;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // One entry: nothing was stored, so no entry was written with records.
    assert_eq!(outcomes, ["DEADLINE_EXCEEDED"]);

    // Nothing was applied: the same batch, with time enough, is all ACCEPTED (not
    // DUPLICATE).
    let mut req = tonic::Request::new(proto::RegisterWorkersRequest {
        workers: workers(10_000),
    });
    req.set_timeout(Duration::from_secs(120));
    let out = a.register_workers(req).await.expect("in time").into_inner();
    let summary = out.summary.expect("summary");
    assert_eq!(summary.accepted, 10_000);
}

#[tokio::test]
async fn a_deadline_that_is_met_changes_nothing() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let mut req = tonic::Request::new(proto::RegisterWorkersRequest {
        workers: workers(3),
    });
    req.set_timeout(Duration::from_secs(30));
    let res = a.register_workers(req).await.expect("in time");
    assert!(res.metadata().get("x-trace-id").is_some());
    assert_eq!(brief(res.get_ref()), vec![accepted(); 3]);
    // A stream with a deadline answers as usual too.
    let mut req = tonic::Request::new(tokio_stream::iter(vec![proto::ReportOrdersRequest {
        orders: vec![order("O1", "W00000")],
    }]));
    req.set_timeout(Duration::from_secs(30));
    let out = a.stream_orders(req).await.expect("stream").into_inner();
    assert_eq!(brief(&out), vec![accepted()]);
}

#[tokio::test]
async fn gzip_requests_are_answered() {
    let gw = TestGateway::spawn().await;
    let mut a = gw
        .client("platform-a")
        .await
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let out = register(&mut a, workers(200)).await;
    assert_eq!(out.summary.expect("summary").accepted, 200);
}

#[tokio::test]
async fn messages_over_the_size_limit_are_resource_exhausted_naming_the_limit() {
    let gw = TestGateway::spawn_with(|c| {
        c.limits.max_message_bytes = 64 * 1024;
        c.limits.max_page_bytes = 16 * 1024;
    })
    .await;
    let mut a = gw
        .client("platform-a")
        .await
        .max_encoding_message_size(64 << 20);
    let check = |s: tonic::Status| {
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("65536"), "{}", s.message());
        assert!(s.message().contains("not applied"), "{}", s.message());
    };
    // Unary.
    let err = a
        .register_workers(proto::RegisterWorkersRequest {
            workers: workers(1000),
        })
        .await
        .expect_err("over 64 KiB");
    check(err);
    assert!(
        a.list_workers(proto::ListRequest::default())
            .await
            .expect("list")
            .into_inner()
            .workers
            .is_empty()
    );
    // A client stream: the chunk over the limit ends the call.
    let err = a
        .stream_workers(tokio_stream::iter(vec![
            proto::RegisterWorkersRequest {
                workers: workers(2),
            },
            proto::RegisterWorkersRequest {
                workers: workers(1000),
            },
        ]))
        .await
        .expect_err("over 64 KiB");
    assert!(
        err.message()
            .contains("records before index 2 were applied"),
        "{}",
        err.message()
    );
    check(err);
    // Compressed, it is the size after decompression that counts (a gzip bomb).
    let mut gz = gw
        .client("platform-a")
        .await
        .send_compressed(CompressionEncoding::Gzip)
        .max_encoding_message_size(64 << 20);
    let mut w = worker("WBIG");
    w.name = "张".repeat(200_000);
    let err = gz
        .register_workers(proto::RegisterWorkersRequest { workers: vec![w] })
        .await
        .expect_err("inflates past the limit");
    check(err);
}

/// Sends raw bytes as the request message and reads the answer as raw bytes.
#[derive(Debug, Clone, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

async fn raw_call(
    gw: &TestGateway,
    method: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let channel = role_channel(gw.addr, "platform-a").await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(method),
        Raw,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument_naming_the_record() {
    let gw = TestGateway::spawn_on(Backend::Sqlite, |_| {}).await;
    const REGISTER: &str = "/oip.v1.PlatformService/RegisterWorkers";
    // Random bytes.
    let err = raw_call(&gw, REGISTER, vec![0xFF, 0xFF, 0xFF, 0xFF, 0x0F])
        .await
        .expect_err("not protobuf");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // A wrong wire type: field 1 (workers) as a varint.
    let err = raw_call(&gw, REGISTER, vec![0x08, 0x01])
        .await
        .expect_err("wrong wire type");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // Invalid UTF-8 in the second worker's name: the message names it.
    let mut bad = worker("W2");
    bad.name = "ZZZZ".into();
    let mut bytes = proto::RegisterWorkersRequest {
        workers: vec![worker("W1"), bad, worker("W3")],
    }
    .encode_to_vec();
    let at = bytes
        .windows(4)
        .position(|w| w == b"ZZZZ")
        .expect("the name's bytes");
    bytes[at..at + 4].copy_from_slice(b"\xD5\xC5\xC8\xFD");
    let err = raw_call(&gw, REGISTER, bytes)
        .await
        .expect_err("invalid UTF-8");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("workers[1]"), "{}", err.message());
    assert!(err.message().contains("UTF-8"), "{}", err.message());
    // Nothing of it was applied; the call was audited with what the caller was told.
    let mut a = gw.client("platform-a").await;
    assert!(
        a.list_workers(proto::ListRequest::default())
            .await
            .expect("list")
            .into_inner()
            .workers
            .is_empty()
    );
    let entries = audit_entries(&gw.sql().await, PLATFORM_A_ID).await;
    assert!(
        entries
            .iter()
            .any(|e| e.0 == "oip.v1.PlatformService/RegisterWorkers" && e.1 == "INVALID_ARGUMENT"),
        "{entries:?}"
    );
}

#[tokio::test]
async fn oversized_metadata_is_refused_and_applies_nothing() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let mut req = tonic::Request::new(proto::RegisterWorkersRequest {
        workers: workers(1),
    });
    let big = "x".repeat(64 * 1024);
    req.metadata_mut()
        .insert("x-note", big.parse().expect("ascii metadata"));
    let err = a
        .register_workers(req)
        .await
        .expect_err("64 KiB of metadata");
    // The HTTP/2 layer refuses the headers (limits.max_header_bytes, 16 KiB) before any
    // handler runs; a tonic client reports it as RESOURCE_EXHAUSTED.
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    let mut a = gw.client("platform-a").await;
    assert!(
        a.list_workers(proto::ListRequest::default())
            .await
            .expect("list")
            .into_inner()
            .workers
            .is_empty()
    );
}

/// The documented limits fit together (README, "Limits and how they fit together"):
/// 10,000 workers, orders or declarations of maximal size fit in one 16 MiB message;
/// about 2,000 maximal accident reports do.
#[test]
fn a_full_batch_of_maximal_records_fits_the_message_limit() {
    let limits = oip_gateway::config::Limits::default();
    let id = "I".repeat(64);
    let time = "2025-07-02T11:00:00.123456789+08:00".to_string();
    let worker = proto::Worker {
        worker_id: id.clone(),
        revision: Some(u32::MAX),
        id_type: "FOREIGN_PERMANENT_RESIDENT".into(),
        id_number: "11010519491231002X".into(),
        name: "𠀀".repeat(50),
        mobile: "13800138000".into(),
        industries: vec!["INSTANT_DELIVERY_AND_MORE_X".into(); 16],
        registered_at: time.clone(),
        status: "ACTIVE".into(),
        left_at: time.clone(),
    };
    let order = proto::Order {
        order_id: id.clone(),
        revision: Some(u32::MAX),
        worker_id: id.clone(),
        industry: "INTRACITY_FREIGHT_AND_MORE_X".into(),
        division_code: "320100".into(),
        accepted_at: time.clone(),
        completed_at: time.clone(),
        status: "COMPLETED".into(),
        vehicle_plate: "苏AD12345".into(),
    };
    let declaration = proto::Declaration {
        declaration_id: id.clone(),
        revision: Some(u32::MAX),
        period: "2025-09".into(),
        division_code: "320100".into(),
        industry: "INTRACITY_FREIGHT_AND_MORE_X".into(),
        order_count: Some(i64::MAX),
        amount_fen: Some(i64::MAX),
    };
    let accident = proto::Accident {
        report_id: id.clone(),
        revision: Some(u32::MAX),
        worker_id: id.clone(),
        order_id: id,
        occurred_at: time,
        division_code: "320100".into(),
        injury_kind: "ASSAULT".into(),
        description: "𠀀".repeat(2000),
    };
    let n = limits.max_batch_records;
    let fits = |len: usize| len <= limits.max_message_bytes;
    let workers = proto::RegisterWorkersRequest {
        workers: vec![worker.clone(); n],
    };
    assert!(workers.encoded_len() < 900 * n, "{}", workers.encoded_len());
    assert!(fits(workers.encoded_len()));
    let orders = proto::ReportOrdersRequest {
        orders: vec![order.clone(); n],
    };
    assert!(orders.encoded_len() < 300 * n, "{}", orders.encoded_len());
    assert!(fits(orders.encoded_len()));
    let mixed = proto::SubmitRequest {
        records: (0..n)
            .map(|i| proto::Record {
                kind: Some(match i % 3 {
                    0 => proto::record::Kind::Worker(worker.clone()),
                    1 => proto::record::Kind::Order(order.clone()),
                    _ => proto::record::Kind::Declaration(declaration.clone()),
                }),
            })
            .collect(),
    };
    assert!(fits(mixed.encoded_len()));
    let one = proto::ReportAccidentsRequest {
        accidents: vec![accident.clone()],
    }
    .encoded_len();
    assert!((8_000..8_400).contains(&one), "{one}");
    let per_call = limits.max_message_bytes / one;
    assert!((1_990..2_100).contains(&per_call), "{per_call}");
    assert!(!fits(
        proto::ReportAccidentsRequest {
            accidents: vec![accident; n],
        }
        .encoded_len()
    ));
}

#[tokio::test]
async fn a_unary_call_without_its_message_is_invalid_argument() {
    let gw = TestGateway::spawn().await;
    let channel = role_channel(gw.addr, "platform-a").await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let err = grpc
        .client_streaming(
            tonic::Request::new(tokio_stream::empty::<Vec<u8>>()),
            http::uri::PathAndQuery::from_static("/oip.v1.PlatformService/RegisterWorkers"),
            Raw,
        )
        .await
        .expect_err("no message");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("no message"), "{}", err.message());
}

#[tokio::test]
async fn a_malformed_deadline_is_refused_not_ignored() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let mut req = tonic::Request::new(proto::RegisterWorkersRequest {
        workers: workers(1),
    });
    req.metadata_mut()
        .insert("grpc-timeout", "abc".parse().expect("ascii"));
    let err = a.register_workers(req).await.expect_err("malformed");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("grpc-timeout"), "{}", err.message());
}

#[tokio::test]
async fn administrators_values_must_be_plausible_too() {
    let gw = TestGateway::spawn().await;
    let mut admin = gw.admin().await;
    let grant = |expires_at: &str| proto::GrantRequest {
        identity: TAX_ID.into(),
        role: "tax".into(),
        scopes: vec!["320500".into()],
        expires_at: expires_at.into(),
    };
    for bad in [
        "1751425200",
        " 2027-01-01T00:00:00+08:00",
        "1999-12-31T00:00:00+08:00",
    ] {
        let err = admin.put_grant(grant(bad)).await.expect_err(bad);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err:?}");
    }
    admin
        .put_grant(grant("2099-01-01T00:00:00+08:00"))
        .await
        .expect("a plausible expiry");
    let base = |from: &str, fen: i64| proto::RateTables {
        base_rates: vec![proto::BaseRateRow {
            industry: "INSTANT_DELIVERY".into(),
            tier: "A".into(),
            effective_from: from.into(),
            fen_per_order: Some(fen),
            recorded_at: String::new(),
        }],
        floats: vec![],
    };
    for (from, fen) in [
        (" 2099-01-01", 7),
        ("1970-01-01", 7),
        ("9999-12-31", 7),
        ("2027-01-01", i64::MAX),
        ("2027-01-01", -1),
    ] {
        let err = admin.append_rates(base(from, fen)).await.expect_err(from);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{from} {fen}: {err:?}"
        );
    }
    // A long value is echoed cut, never whole.
    let err = admin
        .append_rates(base(&"9".repeat(50_000), 7))
        .await
        .expect_err("long");
    assert!(err.message().len() < 400, "{}", err.message().len());
}

#[tokio::test]
async fn an_administrators_change_past_its_deadline_is_not_made() {
    let gw = TestGateway::spawn().await;
    let mut admin = gw.admin().await;
    for i in 0..5 {
        let identity = format!("oip://tax/late-{i}");
        let mut req = tonic::Request::new(proto::GrantRequest {
            identity: identity.clone(),
            role: "tax".into(),
            scopes: vec!["320500".into()],
            expires_at: String::new(),
        });
        req.set_timeout(Duration::from_nanos(1));
        let answer = admin.put_grant(req).await;
        let granted = !admin
            .list_grants(proto::ListGrantsRequest { identity })
            .await
            .expect("list")
            .into_inner()
            .grants
            .is_empty();
        match answer {
            Ok(_) => assert!(granted, "answered OK: the grant is made"),
            Err(e) => assert!(!granted, "answered {e:?}, yet the grant was made"),
        }
    }
    // Too many scopes in one call is the caller's fault, not the storage's.
    let err = admin
        .put_grant(proto::GrantRequest {
            identity: TAX_ID.into(),
            role: "tax".into(),
            scopes: vec!["320100".into(); 7000],
            expires_at: String::new(),
        })
        .await
        .expect_err("7000 scopes");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_deadline_says_how_far_it_got() {
    let gw = TestGateway::spawn().await;
    let mut a = gw.client("platform-a").await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(proto::RegisterWorkersRequest {
        workers: workers(3),
    })
    .await
    .expect("first chunk");
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.set_timeout(Duration::from_millis(500));
    let call = tokio::spawn(async move { a.stream_workers(req).await });
    tokio::time::sleep(Duration::from_millis(900)).await;
    let _ = tx
        .send(proto::RegisterWorkersRequest {
            workers: workers(5),
        })
        .await;
    drop(tx);
    let err = call.await.expect("task").expect_err("past the deadline");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message()
            .contains("records before index 3 were applied"),
        "{}",
        err.message()
    );
    let mut a = gw.client("platform-a").await;
    let stored = a
        .list_workers(proto::ListRequest::default())
        .await
        .expect("list")
        .into_inner()
        .workers
        .len();
    assert_eq!(stored, 3, "the first chunk, and only it");

    // A pull stops at its deadline too (between pages), with a cursor to resume.
    let mut tax = gw.tax().await;
    let mut admin = gw.admin().await;
    grant(&mut admin, TAX_ID, "tax", &["320000"]).await;
    let mut req = tonic::Request::new(proto::PullRequest::default());
    req.set_timeout(Duration::from_nanos(1));
    match tax.pull_contributions(req).await {
        Ok(stream) => {
            let err = drain(stream.into_inner())
                .await
                .expect_err("past the deadline");
            assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
        }
        Err(e) => assert!(
            matches!(
                e.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ),
            "{e:?}"
        ),
    }
}

#[tokio::test]
async fn a_denial_names_the_missing_grant_and_the_command_that_makes_it() {
    let gw = TestGateway::spawn().await;
    let mut tax = gw.tax().await;
    let err = tax
        .pull_contributions(proto::PullRequest::default())
        .await
        .expect_err("no tax grant yet");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains(
            "oip-gateway admin grants put --identity oip://tax/js-tax-320000 --role tax --scope"
        ),
        "{}",
        err.message()
    );
    // A certificate of another role: said so, not "no grant".
    let mut as_platform = Tax::new(role_channel(gw.addr, "platform-a").await);
    let err = as_platform
        .pull_contributions(proto::PullRequest::default())
        .await
        .expect_err("a platform pulling tax records");
    assert!(
        err.message().contains("is a platform identity"),
        "{}",
        err.message()
    );
    // A platform without its grant.
    let mut ungranted = gw.client("platform-ungranted").await;
    let err = ungranted
        .list_workers(proto::ListRequest::default())
        .await
        .expect_err("no platform grant");
    assert!(
        err.message()
            .contains("--role platform --scope 91320200MA1DEMC03N"),
        "{}",
        err.message()
    );
}
