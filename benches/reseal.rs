//! Benchmark: the start-up after a personal-data key rotation (README, "Personal data
//! at rest"), on a database of the README's own load file.
//!
//! `cargo bench --bench reseal` (BENCH_RESEAL_WORKERS=10000, BENCH_RESEAL_ORDERS=1000000)
//!
//! A gateway on the shipped configuration (forwarding off, so the outbox keeps every
//! item: workers, orders and daily enrolments) takes a loadgen file through `submit`;
//! it is stopped and started again, first with the key unchanged (the reference: one
//! query), then with a new current key beside the old one, when every sealed value is
//! sealed again before the gateway listens. The figure is that start-up time, and its
//! ratio to the time the same data took to submit (both measured in this run).

use std::path::{Path, PathBuf};
use std::time::Instant;

use oip_gateway::app::Gateway;
use oip_gateway::config::Config;
use oip_gateway::{loadgen, submit};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn certs(name: &str) -> PathBuf {
    Path::new("certs-example").join(name)
}

fn config(db: &str) -> anyhow::Result<Config> {
    let mut c = Config::load(Path::new(oip_gateway::config::DEFAULT_PATH))?;
    c.listen = ([127, 0, 0, 1], 0).into();
    c.database_url = db.to_string();
    c.forward.enabled = false;
    Ok(c)
}

async fn start_timed(config: Config) -> anyhow::Result<(Gateway, f64)> {
    let t = Instant::now();
    let g = Gateway::start(config).await?;
    Ok((g, t.elapsed().as_secs_f64()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let workers = env_or("BENCH_RESEAL_WORKERS", 10_000);
    let orders = env_or("BENCH_RESEAL_ORDERS", 1_000_000);
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("load.jsonl");
    let spec = loadgen::LoadSpec {
        workers,
        orders,
        start: chrono::NaiveDate::from_ymd_opt(2025, 9, 1).unwrap_or_default(),
        id_prefix: "R".into(),
        seed: 7,
        shape: oip_gateway::loadgen::Shape::AsTaken,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(&file)?);
    loadgen::write(&spec, &mut w)?;
    std::io::Write::flush(&mut w)?;
    drop(w);
    let db = format!("sqlite:{}", dir.path().join("oip.db").display());

    let (gateway, _) = start_timed(config(&db)?).await?;
    let t = Instant::now();
    let summary = submit::run(
        &submit::SubmitOptions {
            file: file.clone(),
            report: None,
            endpoint: format!("https://{}", gateway.addr),
            ca: certs("ca.pem"),
            cert: certs("platform-a.pem"),
            key: certs("platform-a.key"),
            domain: "localhost".into(),
            batch_size: 1000,
            window: 8,
            progress: false,
            compress: true,
            from_line: 1,
        },
        submit::no_stop(),
    )
    .await?;
    let submitted = t.elapsed().as_secs_f64();
    anyhow::ensure!(summary.complete(), "the load file went in whole");
    gateway.shutdown().await?;
    println!(
        "submitted {} records in {submitted:.1} s ({workers} workers, {orders} orders)",
        summary.records
    );

    let (gateway, unchanged) = start_timed(config(&db)?).await?;
    gateway.shutdown().await?;
    println!("start, key unchanged: {unchanged:.2} s (reference)");

    let mut rotated = config(&db)?;
    rotated.pii.keys.insert("k2".into(), "3c".repeat(32));
    rotated.pii.current_key = "k2".into();
    let (gateway, resealed) = start_timed(rotated).await?;
    gateway.shutdown().await?;
    println!(
        "start, new key: {resealed:.1} s ({:.2}x the submit of the same data, {:.0}x the unchanged start)",
        resealed / submitted,
        resealed / unchanged.max(1e-3)
    );
    Ok(())
}
