//! Issue 14's speed on PostgreSQL, measured in one run against a reference on the same
//! database server: `cargo bench --bench replicas` (needs PostgreSQL at 127.0.0.1:5432,
//! user postgres, trust; `OIP_TEST_POSTGRES` names another server; each phase gets a
//! database of its own, dropped afterwards).
//!
//! Settings: BENCH_REPLICAS_ORDERS=200000, BENCH_REPLICAS_WORKERS=10000,
//! BENCH_REPLICAS_SECS=10 (small calls), BENCH_REPLICAS_PHASES=reference,sqlite,pg1,
//! pg1-two-platforms,pg2,unary.
//!
//! One `loadgen` file (WORKERS workers, ORDERS orders of demo platform A's shape) is
//! submitted by `oip-gateway submit` (8 chunks of 1000 in flight) in each phase; every
//! gateway delivers to one backend simulator process.
//! 1. **reference**: the file's orders COPYed into a table of a fresh database in
//!    batches of 1000, one transaction each, on one connection: what the database
//!    takes at most for these rows. Target for the gateway's batch ingest on
//!    PostgreSQL: ≥ 0.3× of it.
//! 2. **sqlite**: one gateway on its embedded SQLite file, platform A's file.
//! 3. **pg1**: one replica on PostgreSQL, the same file.
//! 4. **pg1-two-platforms**: one replica, the file submitted as platform A and as
//!    platform B at once.
//! 5. **pg2**: two replicas on one database, platform A's file to one and B's to the
//!    other at once. Target: faster than 4.
//! 6. **unary**: single-order `ReportOrders` calls (64 in flight) for SECS seconds
//!    against one replica on PostgreSQL (`oip-gateway load`). Target: ≥ 20,000/s.
//!
//! Every process shares the machine's cores (the database server, the replicas, the
//! simulator and the clients): the CPU each used is printed per phase.

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

#[path = "support/cpu.rs"]
#[allow(dead_code)]
mod cpu;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use sqlx::Connection as _;
use support::env_or;

const BIN: &str = env!("CARGO_BIN_EXE_oip-gateway");

/// A process that printed `listening on ADDR`.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(mut cmd: Command) -> anyhow::Result<Self> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdout"))?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            if let Some(a) = line?.strip_prefix("listening on ") {
                addr = Some(a.to_string());
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let addr = addr.ok_or_else(|| anyhow::anyhow!("the server printed no address"))?;
        Ok(Self { child, addr })
    }

    fn cpu(&self) -> f64 {
        cpu::cpu_secs(self.child.id())
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn server_url() -> String {
    std::env::var("OIP_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database of its own for a phase (dropped by [`drop_database`]).
async fn fresh_database(name: &str) -> anyhow::Result<String> {
    let server = server_url();
    let mut admin = sqlx::PgConnection::connect(&server).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    Ok(format!("{base}/{name}"))
}

async fn drop_database(name: &str) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect(&server_url()).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}

/// The CPU seconds every server process of the database has used so far (the
/// postgres processes are children of the postmaster, not of this process).
fn postgres_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(cpu::cpu_secs)
        .sum()
}

/// The gateway on `database_url`, on port 0, delivering to the simulator at `sim`.
fn gateway(database_url: &str, sim: &str) -> anyhow::Result<Server> {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve"])
        .env("OIP_LISTEN", "127.0.0.1:0")
        .env("OIP_OPERATIONS__LISTEN", "127.0.0.1:0")
        .env("OIP_DATABASE_URL", database_url)
        .env("OIP_FORWARD__SIMULATE", "false")
        .env("OIP_FORWARD__SOCIAL_SECURITY_ENDPOINT", sim)
        .env("OIP_FORWARD__TAX_ENDPOINT", sim)
        .env("OIP_RATE_LIMITS__CALLS_PER_SECOND", "10000000")
        .env("OIP_RATE_LIMITS__RECORDS_PER_SECOND", "100000000")
        .env("OIP_CONNECTIONS__MAX_CALLS_PER_IDENTITY", "100000")
        .env("RUST_LOG", "warn");
    Server::start(cmd)
}

fn simulator(dir: &Path) -> anyhow::Result<Server> {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "backend-sim",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
    ])
    .arg(format!("sqlite:{}", dir.join("backend-sim.db").display()))
    .env("RUST_LOG", "warn");
    Server::start(cmd)
}

/// `oip-gateway submit FILE` to `addr` as `platform` (`platform-a` or `platform-b`).
fn submit(addr: &str, file: &Path, platform: &str) -> anyhow::Result<Child> {
    Ok(Command::new(BIN)
        .args(["submit", "--quiet", "--endpoint"])
        .arg(format!("https://{addr}"))
        .arg(file)
        .arg("--cert")
        .arg(format!("certs-example/{platform}.pem"))
        .arg("--key")
        .arg(format!("certs-example/{platform}.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// Runs the submits of `plan` (gateway index, platform) at once; records/s in all.
fn submit_all(
    gateways: &[&Server],
    file: &Path,
    records: usize,
    plan: &[(usize, &str)],
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut children = Vec::new();
    for (g, platform) in plan {
        children.push(submit(&gateways[*g].addr, file, platform)?);
    }
    for mut c in children {
        let status = c.wait()?;
        anyhow::ensure!(status.success(), "submit failed: {status}");
    }
    Ok((records * plan.len()) as f64 / started.elapsed().as_secs_f64())
}

/// The orders of a loadgen file as COPY text rows, in batches of `batch`.
fn copy_batches(file: &Path, batch: usize) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(file)?;
    let mut batches = Vec::new();
    let mut current = String::new();
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["kind"] != "order" {
            continue;
        }
        let field = |k: &str| v[k].as_str().unwrap_or_default().replace(['\t', '\n'], " ");
        current.push_str(&format!(
            "1\t{}\t1\t{}\t{}\t{}\t{}\t{}\t{}\n",
            field("order_id"),
            field("worker_id"),
            field("industry"),
            field("division_code"),
            field("accepted_at"),
            field("completed_at"),
            field("status"),
        ));
        n += 1;
        if n == batch {
            batches.push(std::mem::take(&mut current));
            n = 0;
        }
    }
    if !current.is_empty() {
        batches.push(current);
    }
    Ok(batches)
}

/// COPYs the orders of `file` into a fresh table, a transaction per batch; rows/s.
async fn reference(file: &Path) -> anyhow::Result<(f64, usize)> {
    let batches = copy_batches(file, 1000)?;
    let rows: usize = batches.iter().map(|b| b.lines().count()).sum();
    let url = fresh_database("oip_bench_reference").await?;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    sqlx::query(
        "CREATE TABLE orders (platform_id BIGINT, order_id TEXT, revision BIGINT, worker_id TEXT,
           industry TEXT, division_code TEXT, accepted_at TEXT, completed_at TEXT, status TEXT,
           PRIMARY KEY (platform_id, order_id))",
    )
    .execute(&mut conn)
    .await?;
    let started = Instant::now();
    for b in &batches {
        let mut tx = conn.begin().await?;
        let mut copy = tx
            .copy_in_raw("COPY orders FROM STDIN (FORMAT text)")
            .await?;
        copy.send(b.as_bytes()).await?;
        copy.finish().await?;
        tx.commit().await?;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    drop_database("oip_bench_reference").await?;
    Ok((rate, rows))
}

/// One phase: the simulator, `replicas` gateways on a fresh database (or SQLite), the
/// submits of `plan`; prints records/s and CPU per record, returns records/s.
async fn phase(
    name: &str,
    dir: &Path,
    file: &Path,
    records: usize,
    sqlite: bool,
    replicas: usize,
    plan: &[(usize, &str)],
) -> anyhow::Result<f64> {
    let phase_dir = dir.join(name);
    std::fs::create_dir_all(&phase_dir)?;
    let database = format!("oip_bench_{}", name.replace('-', "_"));
    let url = if sqlite {
        format!("sqlite:{}", phase_dir.join("oip.db").display())
    } else {
        fresh_database(&database).await?
    };
    let sim = simulator(&phase_dir)?;
    let sim_url = format!("https://{}", sim.addr);
    let mut gateways = Vec::new();
    for _ in 0..replicas {
        gateways.push(gateway(&url, &sim_url)?);
    }
    let refs: Vec<&Server> = gateways.iter().collect();
    let cpu_before: (f64, f64, f64) = (
        gateways.iter().map(Server::cpu).sum(),
        postgres_cpu(),
        sim.cpu(),
    );
    let rate = submit_all(&refs, file, records, plan)?;
    let total = (records * plan.len()) as f64;
    let per = |secs: f64| secs * 1e6 / total;
    println!(
        "{name:<20} {rate:>10.0} records/s   CPU µs a record: gateways {:.1}, postgres {:.1}, simulator {:.1}",
        per(gateways.iter().map(Server::cpu).sum::<f64>() - cpu_before.0),
        per(postgres_cpu() - cpu_before.1),
        per(sim.cpu() - cpu_before.2),
    );
    for g in gateways {
        g.stop();
    }
    sim.stop();
    if !sqlite {
        drop_database(&database).await?;
    }
    Ok(rate)
}

/// Single-order calls against one replica on PostgreSQL for `secs` seconds.
async fn unary(dir: &Path, secs: u64) -> anyhow::Result<()> {
    let database = "oip_bench_unary";
    let url = fresh_database(database).await?;
    let phase_dir = dir.join("unary");
    std::fs::create_dir_all(&phase_dir)?;
    let sim = simulator(&phase_dir)?;
    let g = gateway(&url, &format!("https://{}", sim.addr))?;
    let out = Command::new(BIN)
        .args(["load", "--mode", "unary", "--seconds", &secs.to_string()])
        .arg("--endpoint")
        .arg(format!("https://{}", g.addr))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        println!("unary (PostgreSQL)   {line}");
    }
    g.stop();
    sim.stop();
    drop_database(database).await
}

/// A phase of submits: its name, whether on SQLite, its replicas, and which replica
/// each platform's submit goes to.
type Run<'a> = (&'a str, bool, usize, &'a [(usize, &'a str)]);

fn loadgen(dir: &Path, workers: u64, orders: u64) -> anyhow::Result<PathBuf> {
    let file = dir.join("load.jsonl");
    let status = Command::new(BIN)
        .args(["loadgen", "--workers", &workers.to_string()])
        .args(["--orders", &orders.to_string(), "--id-prefix", "R", "--out"])
        .arg(&file)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "loadgen failed");
    Ok(file)
}

fn main() -> anyhow::Result<()> {
    let orders = env_or("BENCH_REPLICAS_ORDERS", 200_000);
    let workers = env_or("BENCH_REPLICAS_WORKERS", 10_000);
    let secs = env_or("BENCH_REPLICAS_SECS", 10);
    let phases = std::env::var("BENCH_REPLICAS_PHASES")
        .unwrap_or_else(|_| "reference,sqlite,pg1,pg1-two-platforms,pg2,unary".into());
    let phases: Vec<&str> = phases.split(',').map(str::trim).collect();
    let dir = tempfile::tempdir()?;
    let file = loadgen(dir.path(), workers, orders)?;
    let records = (workers + orders) as usize;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        println!("{records} records a file ({workers} workers, {orders} orders)");
        let mut reference_rate = None;
        if phases.contains(&"reference") {
            let (rate, rows) = reference(&file).await?;
            println!(
                "{:<20} {rate:>10.0} rows/s ({rows} orders COPYed, 1000 a transaction)",
                "reference"
            );
            reference_rate = Some(rate);
        }
        let mut rates = std::collections::BTreeMap::new();
        let a = [(0, "platform-a")];
        let both_one = [(0, "platform-a"), (0, "platform-b")];
        let both_two = [(0, "platform-a"), (1, "platform-b")];
        let runs: [Run; 4] = [
            ("sqlite", true, 1, &a),
            ("pg1", false, 1, &a),
            ("pg1-two-platforms", false, 1, &both_one),
            ("pg2", false, 2, &both_two),
        ];
        for (name, sqlite, replicas, plan) in runs {
            if phases.contains(&name) {
                let rate = phase(name, dir.path(), &file, records, sqlite, replicas, plan).await?;
                rates.insert(name, rate);
            }
        }
        if let (Some(r), Some(pg1)) = (reference_rate, rates.get("pg1")) {
            println!(
                "batch on PostgreSQL: {:.3}× the reference   target ≥ 0.3×",
                pg1 / r
            );
        }
        if let (Some(one), Some(two)) = (rates.get("pg1-two-platforms"), rates.get("pg2")) {
            println!(
                "two replicas: {:.2}× one replica (two platforms each)   target > 1",
                two / one
            );
        }
        if phases.contains(&"unary") {
            unary(dir.path(), secs).await?;
        }
        anyhow::Ok(())
    })
}
