//! Issue 10, kind 6 as a property: for a random file of valid records with planted
//! faults, `submit` at batch sizes 1, 7, 50 and 1000 writes byte-identical reports:
//! each record's outcome is the one at its position in the file, whatever the
//! chunking. Each run has its own gateway and database.

use std::path::Path;

use oip_gateway::submit;
use proptest::prelude::*;

use crate::common::*;

/// One line of a generated file.
#[derive(Debug, Clone)]
enum Spec {
    Worker {
        id: u8,
        revision: u8,
        fault: u8,
    },
    Order {
        id: u8,
        worker: u8,
        day: u8,
        cancelled: bool,
        revision: u8,
    },
    Declaration {
        id: u8,
        count: u8,
        off: bool,
    },
    Accident {
        id: u8,
        order: u8,
        worker: u8,
    },
    Fault(u8),
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        2 => (0u8..5, 1u8..3, 0u8..6).prop_map(|(id, revision, fault)| Spec::Worker { id, revision, fault }),
        6 => (0u8..25, 0u8..6, 1u8..28, any::<bool>(), 1u8..3)
            .prop_map(|(id, worker, day, cancelled, revision)| Spec::Order { id, worker, day, cancelled, revision }),
        2 => (0u8..4, 0u8..6, any::<bool>()).prop_map(|(id, count, off)| Spec::Declaration { id, count, off }),
        1 => (0u8..3, 0u8..25, 0u8..6).prop_map(|(id, order, worker)| Spec::Accident { id, order, worker }),
        2 => (0u8..8).prop_map(Spec::Fault),
    ]
}

/// The bytes of one line (without its line end).
fn line(s: &Spec, period: &str) -> Vec<u8> {
    let at = |day: u8, minute: u8| format!("{period}-{day:02}T10:{minute:02}:00+08:00");
    match s {
        Spec::Worker { id, revision, fault } => {
            let mut l = worker_line(&format!("W{id}"))
                .replace(r#""status""#, &format!(r#""revision":{revision},"status""#));
            match fault {
                0 => l = l.replace("13800138000", "12800138000"),
                1 => l = l.replace(r#""registered_at":"2025-07-01T08:00:00+08:00","#, ""),
                2 => {
                    let (head, tail) = l.split_once("张三丰").unwrap_or((&l, ""));
                    return [head.as_bytes(), b"\xD5\xC5\xC8\xFD", tail.as_bytes()].concat();
                }
                _ => {}
            }
            l.into_bytes()
        }
        Spec::Order {
            id,
            worker,
            day,
            cancelled,
            revision,
        } => {
            let status = if *cancelled { "CANCELLED" } else { "COMPLETED" };
            format!(
                r#"{{"kind":"order","order_id":"O{id}","revision":{revision},"worker_id":"W{worker}","industry":"INSTANT_DELIVERY","division_code":"320100","accepted_at":"{}","completed_at":"{}","status":"{status}"}}"#,
                at(*day, 0),
                at(*day, 30)
            )
            .into_bytes()
        }
        Spec::Declaration { id, count, off } => {
            let amount = i64::from(*count) * 7 + i64::from(*off);
            format!(
                r#"{{"kind":"declaration","declaration_id":"D{id}","period":"{period}","division_code":"320100","industry":"INSTANT_DELIVERY","order_count":{count},"amount_fen":{amount}}}"#
            )
            .into_bytes()
        }
        Spec::Accident { id, order, worker } => format!(
            r#"{{"kind":"accident","report_id":"A{id}","worker_id":"W{worker}","order_id":"O{order}","occurred_at":"{}","division_code":"320100","injury_kind":"FALL"}}"#,
            at(3, 10)
        )
        .into_bytes(),
        Spec::Fault(k) => match k {
            0 => b"{\"kind\":\"order\",".to_vec(),
            1 => order_line("OF", "W0")
                .replace(r#""status":"COMPLETED""#, r#""status":"CANCELLED","status":"COMPLETED""#)
                .into_bytes(),
            2 => order_line("OG", "W0")
                .replace(r#""status""#, r#""vehicle_plat":"x","status""#)
                .into_bytes(),
            3 => b"\xEF\xBB\xBF".iter().copied().chain(worker_line("WB").into_bytes()).collect(),
            4 => Vec::new(),
            5 => format!(
                r#"{{"kind":"declaration","declaration_id":"DM","period":"{period}","division_code":"320100","industry":"INSTANT_DELIVERY"}}"#
            )
            .into_bytes(),
            6 => format!(
                r#"{{"kind":"declaration","declaration_id":"DS","period":"{period}","division_code":"320100","industry":"INSTANT_DELIVERY","order_count":"3","amount_fen":21}}"#
            )
            .into_bytes(),
            _ => b"   ".to_vec(),
        },
    }
}

fn report_at(rt: &tokio::runtime::Runtime, file: &Path, batch_size: usize) -> Vec<u8> {
    let gw = rt.block_on(TestGateway::spawn_with(|c| {
        c.fees.declaration_deadline_day = 31;
        c.forward.enabled = false;
    }));
    let report = gw.dir.path().join("report.jsonl");
    let opts = submit::SubmitOptions {
        compress: batch_size.is_multiple_of(2),
        ..gw.submit_options(file, &report, batch_size)
    };
    let summary = rt
        .block_on(submit::run(&opts, submit::no_stop()))
        .expect("submit runs");
    assert!(summary.complete(), "{summary:?}");
    let bytes = std::fs::read(&report).expect("report");
    rt.block_on(gw.stop());
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5, ..ProptestConfig::default() })]

    #[test]
    fn reports_do_not_depend_on_the_batch_size(specs in proptest::collection::vec(spec(), 30..90)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (period, _) = previous_month(10);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("in.jsonl");
        // Workers first often enough that orders have someone to belong to.
        let mut bytes = Vec::new();
        for w in 0..4u8 {
            bytes.extend(line(&Spec::Worker { id: w, revision: 1, fault: 9 }, &period));
            bytes.extend_from_slice(b"\r\n");
        }
        for s in &specs {
            bytes.extend(line(s, &period));
            bytes.push(b'\n');
        }
        std::fs::write(&file, &bytes).expect("write");
        let reference = report_at(&rt, &file, 1);
        let lines = reference.iter().filter(|b| **b == b'\n').count();
        prop_assert!(lines >= 4, "{lines} report lines");
        for batch in [7, 50, 1000] {
            let got = report_at(&rt, &file, batch);
            prop_assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&reference),
                "batch size {} against 1",
                batch
            );
        }
    }
}
