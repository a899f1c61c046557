//! Benchmark: issue 13's speed targets, each against a reference measured in the same
//! run on the same machine (figures are ratios; the machines are noisy).
//!
//! `cargo bench --bench ingest` (BENCH_INGEST_SECS=10, BENCH_INGEST_ORDERS=1000000,
//! BENCH_INGEST_WORKERS=10000, BENCH_INGEST_PHASES=unary,stream,submit-stream,batch,
//! BENCH_INGEST_SHAPES=as-taken,scattered)
//!
//! The reference is `benches/ingest/reference.rs`: a tonic server over the same mTLS
//! that decodes orders and writes them in multi-row SQLite transactions (the least a
//! durable intake can do). The gateway is the release binary on the shipped
//! configuration, with rates high enough not to bind, forwarding to the backend
//! simulator run as a process of its own (`oip-gateway backend-sim serve`). Each runs
//! as its own process; the load comes from this process (small calls) or from
//! `oip-gateway submit` (batches).
//!
//! 1. **Unary**: `oip-gateway load`'s generator (`cli::load`), 64 single-order
//!    `ReportOrders` calls in flight on one connection for SECS seconds, against the
//!    ceiling (the reference storing nothing: what this client and machine allow any
//!    server), the reference, then the gateway. Target: ≥ 20,000 orders/s. The same
//!    for single-order client streams (`StreamOrders`, 64 streams of one order in
//!    flight) and for `SubmitStream` chunks (64 long streams, each sending a one-order
//!    chunk once the previous is answered).
//! 2. **Batch**: the reference gets ORDERS orders in 1000-order `ReportOrders` calls, 8
//!    in flight; the gateway gets a `loadgen` file of WORKERS workers and ORDERS orders
//!    through `oip-gateway submit` (8 chunks of 1000 in flight). Records/s of each and
//!    the ratio. Target: ≥ 0.3× (aim 0.5×). Once per file shape (`loadgen::Shape`):
//!    orders as a platform takes them (in time order, each worker in one city), then
//!    scattered (random times and cities, nearly one new daily enrolment per order,
//!    spread over every day: the worst case, and the shape of issue 13's first
//!    figures). The reference does not depend on the shape; it runs once.
//! 3. **Forwarding** (during 2): how long the outbox takes to empty after the submit
//!    ends; delivery keeps up when the items are delivered at least as fast as they
//!    were queued. Target: ratio ≥ 1.
//! 4. **Memory** (during 2): the gateway's peak resident memory. Target: ≤ 150 MB.
//!
//! After each gateway phase the time of each ingest stage per record is printed, from
//! the gateway's `oip_ingest_stage_seconds_total`, and the CPU time per record of the
//! gateway, the simulator and the client (`/proc/PID/stat`), against what the
//! machine's cores allow in all at the target rate: all three share the cores, so the
//! client's and the simulator's shares bound what any gateway could reach here.

#[path = "ingest/reference.rs"]
mod reference;

#[path = "support/mod.rs"]
mod support;

#[path = "support/cpu.rs"]
mod cpu;

use std::collections::BTreeMap;

use cpu::{cpu_secs, run_timed};
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{env_or, rss_kib};

use oip_gateway::cli::load::{self, LoadOptions, Mode};
use oip_gateway::proto::{self, platform_service_client::PlatformServiceClient};
use tonic::transport::Channel;

/// A server process that printed `listening on ADDR` (and `operations on ADDR`).
struct Server {
    child: Child,
    addr: String,
    ops: Option<String>,
}

impl Server {
    /// Starts `cmd` and reads its address lines: `listening on`, then (`ops`)
    /// `operations on`.
    fn start(mut cmd: Command, ops: bool) -> anyhow::Result<Self> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdout"))?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let (mut addr, mut ops_addr) = (None, None);
        for line in lines.by_ref() {
            let line = line?;
            if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.to_string());
            }
            if let Some(a) = line.strip_prefix("operations on ") {
                ops_addr = Some(a.to_string());
            }
            if addr.is_some() && (!ops || ops_addr.is_some()) {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let addr = addr.ok_or_else(|| anyhow::anyhow!("the server printed no address"))?;
        Ok(Self {
            child,
            addr,
            ops: ops_addr,
        })
    }

    /// The CPU time the server has used so far, in seconds.
    fn cpu(&self) -> f64 {
        cpu_secs(self.child.id())
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn reference(dir: &Path) -> anyhow::Result<Server> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env("OIP_BENCH_REFERENCE", dir.join("reference.db"));
    Server::start(cmd, false)
}

/// The reference that stores nothing and answers at once (`OIP_BENCH_CEILING`).
fn ceiling(dir: &Path) -> anyhow::Result<Server> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env("OIP_BENCH_REFERENCE", dir.join("ceiling.db"))
        .env("OIP_BENCH_CEILING", "1");
    Server::start(cmd, false)
}

/// The gateway on the shipped configuration, delivering to the backend simulator run
/// as a process of its own (as a backend would be), so that the CPU each uses can be
/// told apart. Returns the gateway and the simulator.
fn gateway(dir: &Path) -> anyhow::Result<(Server, Server)> {
    let mut sim = Command::new(env!("CARGO_BIN_EXE_oip-gateway"));
    sim.args([
        "backend-sim",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
    ])
    .arg(format!("sqlite:{}", dir.join("backend-sim.db").display()))
    .env("RUST_LOG", "warn");
    let sim = Server::start(sim, false)?;
    let backend = format!("https://{}", sim.addr);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oip-gateway"));
    cmd.args(["serve"])
        .env("OIP_LISTEN", "127.0.0.1:0")
        .env("OIP_OPERATIONS__LISTEN", "127.0.0.1:0")
        .env(
            "OIP_DATABASE_URL",
            format!("sqlite:{}", dir.join("oip.db").display()),
        )
        .env("OIP_FORWARD__SIMULATE", "false")
        .env("OIP_FORWARD__SOCIAL_SECURITY_ENDPOINT", &backend)
        .env("OIP_FORWARD__TAX_ENDPOINT", &backend)
        .env("OIP_RATE_LIMITS__CALLS_PER_SECOND", "10000000")
        .env("OIP_RATE_LIMITS__RECORDS_PER_SECOND", "100000000")
        .env("OIP_CONNECTIONS__MAX_CALLS_PER_IDENTITY", "100000")
        .env("RUST_LOG", "warn");
    Ok((Server::start(cmd, true)?, sim))
}

/// CPU time per record of each process at work in a gateway phase, in microseconds,
/// against what the machine's cores allow at the target rate (`target_rate` records
/// a second): the share left to the gateway once the client and the simulator have
/// theirs shows whether the target can be met here at all.
fn print_cpu(
    records: f64,
    (gateway, simulator, client): (f64, f64, f64),
    client_name: &str,
    target_rate: f64,
) {
    let per = |secs: f64| secs * 1e6 / records.max(1.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let budget = cores * 1e6 / target_rate.max(1e-9);
    println!(
        "  CPU µs a record: gateway {:.1}, backend simulator {:.1}, {client_name} {:.1}; in all {:.1}. \
         At the target ({target_rate:.0} records/s) the machine's {cores} cores allow {budget:.1} in all, \
         {:.1} once the simulator and the client have theirs",
        per(gateway),
        per(simulator),
        per(client),
        per(gateway + simulator + client),
        budget - per(simulator + client),
    );
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    let d = Path::new("certs-example");
    oip_gateway::tls::connect(
        &format!("https://{addr}"),
        &d.join("ca.pem"),
        &d.join("platform-a.pem"),
        &d.join("platform-a.key"),
        "localhost",
    )
    .await
}

/// Seconds spent per ingest stage, from the gateway's metrics.
async fn stages(ops: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let body = ops_get(ops, "/metrics").await?;
    Ok(body
        .lines()
        .filter_map(|l| l.strip_prefix("oip_ingest_stage_seconds_total{stage=\""))
        .filter_map(|l| {
            let (stage, rest) = l.split_once("\"} ")?;
            Some((stage.to_string(), rest.trim().parse().ok()?))
        })
        .collect())
}

/// A metric's value summed over its labels.
async fn metric_sum(ops: &str, name: &str) -> anyhow::Result<f64> {
    let body = ops_get(ops, "/metrics").await?;
    Ok(body
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// GET over plain HTTP/1.1 from the operations listener.
async fn ops_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

fn print_stages(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, records: f64) {
    let mut total = 0.0;
    let mut rows: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0.0)) * 1e6 / records.max(1.0),
            )
        })
        .filter(|(_, us)| *us >= 0.005)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("  ingest stage          µs per record");
    for (stage, us) in rows {
        if stage != "begin" {
            total += us;
        }
        println!("  {stage:<20} {us:>9.2}");
    }
    println!(
        "  {:<20} {total:>9.2}  (without begin: the wait for the platform's turn)",
        "total"
    );
}

fn row(what: &str, reference: f64, gateway: f64, unit: &str, target: &str) {
    println!(
        "{what:<28} reference {reference:>10.0} {unit}   gateway {gateway:>10.0} {unit}   ratio {:>5.2}   target {target}",
        gateway / reference.max(1e-9)
    );
}

/// The small-call phases: what each carries, and its line's name.
const SMALL_CALLS: [(&str, Mode, usize, &str); 3] = [
    ("unary", Mode::Unary, 1, "unary, 1 order, 64 in flight"),
    ("stream", Mode::Stream, 1, "stream, 1 order, 64 in flight"),
    (
        "submit-stream",
        Mode::SubmitStream,
        usize::MAX,
        "submit-stream, 1-order chunks",
    ),
];

/// One small-call phase: 64 callers of `mode` for `secs` seconds against the ceiling,
/// the reference and the gateway, each a fresh process. Every call (stream, chunk)
/// carries one order; a `Stream` call is one stream of one message, a `SubmitStream`
/// caller keeps one stream open and sends a chunk once the previous is answered
/// (`messages` chunks at most, here as many as the duration allows).
async fn small_calls(
    dir: &Path,
    secs: u64,
    name: &str,
    mode: Mode,
    messages: usize,
    label: &str,
) -> anyhow::Result<()> {
    let dir = dir.join(name);
    for d in ["ceiling", "ref", "gw"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let opts = LoadOptions {
        mode,
        in_flight: 64,
        duration: Duration::from_secs(secs),
        records: 1,
        messages,
        workers: 64,
        id_prefix: format!("U{}-", oip_gateway::domain::time::now_millis()),
        industry: "INSTANT_DELIVERY".into(),
        division: "320100".into(),
        timeout: Duration::from_secs(30),
    };
    println!("{label}:");
    let c = ceiling(&dir.join("ceiling"))?;
    let report = load::run(&[connect(&c.addr).await?], &opts).await?;
    c.stop();
    let ceiling_rate = report.orders_per_second();
    println!("ceiling:   {}", report.lines().join("; "));
    let r = reference(&dir.join("ref"))?;
    let report = load::run(&[connect(&r.addr).await?], &opts).await?;
    r.stop();
    let reference_rate = report.orders_per_second();
    println!("reference: {}", report.lines().join("; "));

    let (g, sim) = gateway(&dir.join("gw"))?;
    let ops = g.ops.clone().unwrap_or_default();
    let before = stages(&ops).await?;
    let channel = connect(&g.addr).await?;
    let cpu_before = (g.cpu(), sim.cpu(), cpu_secs(std::process::id()));
    let report = load::run(&[channel], &opts).await?;
    let cpu_after = (g.cpu(), sim.cpu(), cpu_secs(std::process::id()));
    let after = stages(&ops).await?;
    let calls = metric_sum(&ops, "oip_ingest_transaction_calls_sum").await?;
    let txs = metric_sum(&ops, "oip_ingest_transaction_calls_count").await?;
    g.stop();
    sim.stop();
    println!("gateway:   {}", report.lines().join("; "));
    row(
        label,
        reference_rate,
        report.orders_per_second(),
        "orders/s",
        "gateway ≥ 20000 orders/s",
    );
    println!(
        "  ceiling (answers without storing) {ceiling_rate:.0} orders/s: reference {:.2}, gateway {:.2} of it",
        reference_rate / ceiling_rate.max(1e-9),
        report.orders_per_second() / ceiling_rate.max(1e-9)
    );
    println!(
        "  {calls:.0} calls in {txs:.0} ingest transactions ({:.1} a transaction)",
        calls / txs.max(1.0)
    );
    print_stages(&before, &after, report.accepted as f64);
    print_cpu(
        report.accepted as f64,
        (
            cpu_after.0 - cpu_before.0,
            cpu_after.1 - cpu_before.1,
            cpu_after.2 - cpu_before.2,
        ),
        "load generator",
        20_000.0,
    );
    anyhow::ensure!(
        report.failures.is_empty() && report.other_outcomes.is_empty(),
        "{label}: calls failed or were not accepted"
    );
    Ok(())
}

/// Sends `orders` orders in 1000-order calls, `window` in flight; returns orders/s.
async fn reference_batches(addr: &str, orders: usize, window: usize) -> anyhow::Result<f64> {
    let channel = connect(addr).await?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..window {
        let mut c = PlatformServiceClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let next = next.clone();
        senders.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(1000, Ordering::Relaxed) as usize;
                if first >= orders {
                    return anyhow::Ok(());
                }
                let batch: Vec<_> = (first..(first + 1000).min(orders))
                    .map(|i| proto::Order {
                        order_id: format!("B{i}"),
                        revision: Some(1),
                        worker_id: format!("W{}", i % 10_000),
                        industry: "INSTANT_DELIVERY".into(),
                        division_code: "320100".into(),
                        accepted_at: "2025-09-02T11:00:00+08:00".into(),
                        completed_at: "2025-09-02T11:35:00+08:00".into(),
                        status: "COMPLETED".into(),
                        vehicle_plate: String::new(),
                    })
                    .collect();
                c.report_orders(proto::ReportOrdersRequest { orders: batch })
                    .await?;
            }
        }));
    }
    for s in senders {
        s.await??;
    }
    Ok(orders as f64 / started.elapsed().as_secs_f64())
}

async fn batch(
    dir: &Path,
    workers: usize,
    orders: usize,
    (name, shape): (&str, oip_gateway::loadgen::Shape),
    reference_rate: f64,
) -> anyhow::Result<()> {
    let label = format!("batch 1000 a call, {name}");
    let dir = &dir.join(format!("{shape:?}"));
    std::fs::create_dir_all(dir.join("gw-batch"))?;
    let file = dir.join("load.jsonl");
    let spec = oip_gateway::loadgen::LoadSpec {
        workers,
        orders,
        start: chrono::NaiveDate::from_ymd_opt(2025, 9, 1).unwrap_or_default(),
        id_prefix: "B".into(),
        seed: 1,
        shape,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(&file)?);
    oip_gateway::loadgen::write(&spec, &mut w)?;
    std::io::Write::flush(&mut w)?;
    drop(w);

    let (g, sim) = gateway(&dir.join("gw-batch"))?;
    let ops = g.ops.clone().unwrap_or_default();
    let pid = g.child.id();
    let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let before = stages(&ops).await?;
    let cpu_before = (g.cpu(), sim.cpu());
    let started = Instant::now();
    let (status, client_cpu) = run_timed(
        Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
            .args(["submit", "--quiet", "--endpoint"])
            .arg(format!("https://{}", g.addr))
            .arg("--report")
            .arg(dir.join("report.jsonl"))
            .arg(&file)
            .stdout(Stdio::null()),
    )?;
    let submit_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(status.success(), "submit failed: {status}");
    let after = stages(&ops).await?;
    let records = (workers + orders) as f64;
    let pending_at_end = metric_sum(&ops, "oip_outbox_pending").await?;
    // The backlog left when the submit ended, drained.
    let drain_started = Instant::now();
    loop {
        let pending = metric_sum(&ops, "oip_outbox_pending").await?;
        if pending == 0.0 || drain_started.elapsed() > Duration::from_secs(1800) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let cpu = (g.cpu() - cpu_before.0, sim.cpu() - cpu_before.1, client_cpu);
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    g.stop();
    sim.stop();
    let items: f64 = {
        let pool = sqlx::SqlitePool::connect(&format!(
            "sqlite:{}?mode=ro",
            dir.join("gw-batch").join("oip.db").display()
        ))
        .await?;
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox")
            .fetch_one(&pool)
            .await?;
        n as f64
    };
    let gateway_rate = records / submit_secs;
    row(
        &label,
        reference_rate,
        gateway_rate,
        "records/s",
        "ratio ≥ 0.3 (aim 0.5)",
    );
    let queued_rate = items / submit_secs;
    let delivered_rate = items / (submit_secs + drain_secs);
    println!(
        "{:<28} queued    {queued_rate:>10.0} items/s  delivered {delivered_rate:>10.0} items/s  ratio {:>5.2}   target ≥ 1 ({pending_at_end:.0} of {items:.0} items left when the submit ended, drained in {drain_secs:.1} s)",
        "forwarding",
        delivered_rate / queued_rate.max(1e-9)
    );
    println!(
        "{:<28} peak RSS  {:>10.1} MB   target ≤ 150 MB ({orders} orders submitted with forwarding on)",
        "memory",
        peak.load(Ordering::Relaxed) as f64 / 1024.0
    );
    print_stages(&before, &after, records);
    print_cpu(records, cpu, "submit client", 0.3 * reference_rate);
    Ok(())
}

/// The gateway's allocator (`src/main.rs`) for the reference and the load generator
/// too, so the ratios compare the work, not the allocators.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(db) = std::env::var_os("OIP_BENCH_REFERENCE") {
        return runtime.block_on(reference::serve(Path::new(&db)));
    }
    let secs = env_or("BENCH_INGEST_SECS", 10);
    let orders = env_or("BENCH_INGEST_ORDERS", 1_000_000) as usize;
    let workers = env_or("BENCH_INGEST_WORKERS", 10_000) as usize;
    let phases = std::env::var("BENCH_INGEST_PHASES")
        .unwrap_or_else(|_| "unary,stream,submit-stream,batch".into());
    let phases: Vec<&str> = phases.split(',').map(str::trim).collect();
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("ref-batch"))?;
    runtime.block_on(async {
        for (name, mode, messages, label) in SMALL_CALLS {
            if phases.contains(&name) {
                small_calls(dir.path(), secs, name, mode, messages, label).await?;
            }
        }
        if phases.contains(&"batch") {
            let r = reference(&dir.path().join("ref-batch"))?;
            let cpu_before = (r.cpu(), cpu_secs(std::process::id()));
            let reference_rate = reference_batches(&r.addr, orders, 8).await?;
            let per = |secs: f64| secs * 1e6 / orders.max(1) as f64;
            println!(
                "batch reference: CPU µs a record: server {:.1}, its load generator {:.1}",
                per(r.cpu() - cpu_before.0),
                per(cpu_secs(std::process::id()) - cpu_before.1)
            );
            r.stop();
            let shapes = std::env::var("BENCH_INGEST_SHAPES")
                .unwrap_or_else(|_| "as-taken,scattered".into());
            for name in shapes.split(',').map(str::trim) {
                let shape = <oip_gateway::loadgen::Shape as clap::ValueEnum>::from_str(name, true)
                    .map_err(|e| anyhow::anyhow!("BENCH_INGEST_SHAPES: {e}"))?;
                batch(dir.path(), workers, orders, (name, shape), reference_rate).await?;
            }
        }
        anyhow::Ok(())
    })
}
