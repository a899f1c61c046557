//! Benchmark: the reconciliation check at 10 thousand, 1 million and 10 million stored
//! orders. Volume statements are kept incrementally with the orders, so the check
//! should cost the same at every size.
//!
//! `cargo bench --bench reconcile` (sizes: BENCH_ORDER_COUNTS=10000,1000000,10000000).
//! For each size it fills a fresh SQLite file through the real ingest path (validation,
//! cross-checks, aggregates, one transaction per 5,000 orders), then measures
//! - `check`: what ListDeclarations does per declaration: read the statements of the
//!   month and industry, compute the figures and status (read only);
//! - `declare`: submitting one declaration end to end in the store (load, reconcile,
//!   write, commit with fsync).
//!
//! It prints medians and the ratio of each size to the smallest, measured in one run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oip_gateway::domain::PlatformProfile;
use oip_gateway::domain::batch::Candidate;
use oip_gateway::domain::period::Period;
use oip_gateway::domain::reconcile;
use oip_gateway::ingest::{Ingest, Policy};
use oip_gateway::proto;
use oip_gateway::reference::Reference;
use oip_gateway::store::Store;
use oip_gateway::store::sqlite::SqliteStore;
use oip_gateway::validate;

const CITIES: [&str; 13] = [
    "320100", "320200", "320300", "320400", "320500", "320600", "320700", "320800", "320900",
    "321000", "321100", "321200", "321300",
];
const WORKERS: usize = 2_000;
const BATCH: usize = 5_000;

struct Bench {
    store: Arc<dyn Store>,
    ingest: Ingest,
    platform: PlatformProfile,
    reference: Reference,
    _dir: tempfile::TempDir,
}

fn candidates(b: &Bench, records: &[proto::Record]) -> Vec<Candidate> {
    let ctx = validate::Context {
        now: oip_gateway::domain::time::now_millis(),
        bounds: oip_gateway::validate::Bounds {
            max_future_ms: 0,
            ..Default::default()
        },
        reference: &b.reference,
        platform: &b.platform,
    };
    records
        .iter()
        .map(|r| validate::candidate(r, &ctx))
        .collect()
}

async fn setup() -> anyhow::Result<Bench> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&format!("sqlite:{}", dir.path().join("bench.db").display())).await?,
    );
    let reference = Reference::builtin();
    // The shipped configuration (cargo runs benches from the repository root).
    let config =
        oip_gateway::config::Config::load(std::path::Path::new(oip_gateway::config::DEFAULT_PATH))?;
    let reg = config.platform_registrations(&reference)?.remove(0);
    let platform = store.upsert_platform(&reg).await?;
    let rates = oip_gateway::app::load_rates(&config, store.as_ref()).await?;
    let ingest = Ingest::new(
        store.clone(),
        oip_gateway::pii::Pii::for_test(),
        Arc::new(rates),
        Policy {
            declaration_deadline_day: 15,
            accident_margin_ms: 0,
        },
    );
    let b = Bench {
        store,
        ingest,
        platform,
        reference,
        _dir: dir,
    };
    let workers: Vec<proto::Record> = (0..WORKERS)
        .map(|i| {
            let first17 = format!("320102199001{:02}{:03}", 1 + i % 28, i % 1000);
            let id = format!(
                "{first17}{}",
                oip_gateway::domain::ids::resident_id_check_char(&first17).unwrap_or('0')
            );
            proto::Record {
                kind: Some(proto::record::Kind::Worker(proto::Worker {
                    worker_id: format!("W{i}"),
                    id_number: id,
                    name: "测试".into(),
                    mobile: "13800138000".into(),
                    industries: vec![
                        "INSTANT_DELIVERY".into(),
                        "RIDE_HAILING".into(),
                        "INTRACITY_FREIGHT".into(),
                    ],
                    registered_at: "2025-06-01T00:00:00+08:00".into(),
                    status: "ACTIVE".into(),
                    ..Default::default()
                })),
            }
        })
        .collect();
    let workers = candidates(&b, &workers);
    b.ingest
        .apply(&b.platform, workers, None, &Default::default(), Vec::new())
        .await?;
    Ok(b)
}

/// Orders spread over 2025-07..2025-09, 13 cities, 3 industries.
async fn fill(b: &Bench, from: usize, to: usize) -> anyhow::Result<()> {
    const INDUSTRIES: [&str; 3] = ["INSTANT_DELIVERY", "RIDE_HAILING", "INTRACITY_FREIGHT"];
    let start =
        oip_gateway::domain::time::parse_wire_time("2025-07-01T00:00:00+08:00").unwrap_or_default();
    let mut n = from;
    while n < to {
        let end = (n + BATCH).min(to);
        let records: Vec<proto::Record> = (n..end)
            .map(|i| {
                let accepted = start + ((i as i64 * 7_919) % (92 * 86_400)) * 1000;
                proto::Record {
                    kind: Some(proto::record::Kind::Order(proto::Order {
                        order_id: format!("O{i}"),
                        revision: Some(1),
                        worker_id: format!("W{}", i % WORKERS),
                        industry: INDUSTRIES[i % 3].into(),
                        division_code: CITIES[i % 13].into(),
                        accepted_at: accepted.to_string(),
                        completed_at: (accepted + 1_200_000).to_string(),
                        status: if i % 20 == 0 {
                            "CANCELLED"
                        } else {
                            "COMPLETED"
                        }
                        .into(),
                        vehicle_plate: String::new(),
                    })),
                }
            })
            .collect();
        let c = candidates(b, &records);
        let plan = b
            .ingest
            .apply(&b.platform, c, None, &Default::default(), Vec::new())
            .await?;
        anyhow::ensure!(
            plan.rejections.is_empty(),
            "generated orders are valid: {:?}",
            plan.rejections.first()
        );
        n = end;
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn measure(b: &Bench, size: usize, round: usize) -> anyhow::Result<(Duration, Duration)> {
    let period = Period::parse("2025-08").unwrap_or_else(|| unreachable!());
    let scope = vec![(period, "INSTANT_DELIVERY".to_string())];
    let mut checks = vec![];
    for _ in 0..300 {
        let t = Instant::now();
        let statements = b.store.statements(b.platform.id, &scope).await?;
        let closed = b.store.closed_periods(b.platform.id).await?;
        let f = reconcile::computed(
            &b.platform,
            &b.ingest.rates(),
            period,
            "320000",
            "INSTANT_DELIVERY",
            &statements,
            closed.get(&period).copied(),
        );
        std::hint::black_box(f);
        checks.push(t.elapsed());
    }
    let mut declares = vec![];
    for k in 0..50 {
        let d = proto::Record {
            kind: Some(proto::record::Kind::Declaration(proto::Declaration {
                declaration_id: format!("D{size}-{round}-{k}"),
                revision: Some(1),
                period: period.to_string(),
                division_code: "320000".into(),
                industry: "INSTANT_DELIVERY".into(),
                order_count: Some(1),
                amount_fen: Some(7),
            })),
        };
        let c = candidates(b, &[d]);
        let t = Instant::now();
        let plan = b
            .ingest
            .apply(&b.platform, c, None, &Default::default(), Vec::new())
            .await?;
        declares.push(t.elapsed());
        anyhow::ensure!(
            matches!(
                plan.outcomes[0],
                oip_gateway::domain::Outcome::Accepted { .. }
            ),
            "declaration accepted"
        );
    }
    Ok((median(checks), median(declares)))
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("BENCH_ORDER_COUNTS")
        .unwrap_or_else(|_| "10000,1000000,10000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let b = setup().await?;
        let mut stored = 0;
        let mut rows = vec![];
        for (round, size) in sizes.iter().copied().enumerate() {
            let t = Instant::now();
            fill(&b, stored, size).await?;
            let filled = t.elapsed();
            let rate = (size - stored) as f64 / filled.as_secs_f64().max(1e-9);
            stored = size;
            let (check, declare) = measure(&b, size, round).await?;
            println!(
                "{size:>10} orders stored (filled at {rate:.0} orders/s): check {:>8.1} µs, declare {:>8.1} µs",
                check.as_secs_f64() * 1e6,
                declare.as_secs_f64() * 1e6
            );
            rows.push((size, check, declare));
        }
        if let Some((base, c0, d0)) = rows.first().copied() {
            for (size, c, d) in &rows {
                println!(
                    "ratio {size}/{base}: check {:.2}×, declare {:.2}×",
                    c.as_secs_f64() / c0.as_secs_f64(),
                    d.as_secs_f64() / d0.as_secs_f64()
                );
            }
        }
        anyhow::Ok(())
    })
}
