//! Benchmark: overload at 5× the sustainable rate (issue 12, load shedding).
//!
//! `cargo bench --bench overload` (BENCH_OVERLOAD_SECS=20, BENCH_OVERLOAD_FACTOR=5)
//!
//! A release gateway runs as its own process on the shipped configuration (forwarding
//! to its simulator, rates high enough not to bind: this measures shedding). First the
//! sustainable rate is measured: closed-loop callers (one order per `ReportOrders`
//! call, 32 at a time over 8 connections) for 10 s. Then an open-loop generator offers
//! FACTOR × that rate for SECS seconds, each call on its own task with a 10 s deadline,
//! over 16 connections, whatever the answers. Reported: offered and served rates, the
//! answers by status (only OK, RESOURCE_EXHAUSTED and UNAVAILABLE are allowed), the
//! gateway's peak resident memory (sampled every 50 ms) against its memory at rest,
//! the time until a plain call is served again after the load stops, and the check
//! that every acknowledged order is stored (the database is read after the gateway
//! stops). Everything runs on the same 2 cores: figures are ratios within one run.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{env_or, rss_kib};

use oip_gateway::proto::{self, platform_service_client::PlatformServiceClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

async fn channel(addr: &str, stem: &str) -> anyhow::Result<Channel> {
    let d = Path::new("certs-example");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(d.join("ca.pem"))?))
        .identity(Identity::from_pem(
            std::fs::read(d.join(format!("{stem}.pem")))?,
            std::fs::read(d.join(format!("{stem}.key")))?,
        ))
        .domain_name("localhost");
    Ok(Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?)
}

fn worker() -> proto::Worker {
    proto::Worker {
        worker_id: "W-LOAD".into(),
        revision: Some(1),
        id_type: String::new(),
        id_number: "11010519491231002X".into(),
        name: "张三丰".into(),
        mobile: "13800138000".into(),
        industries: vec!["INSTANT_DELIVERY".into()],
        registered_at: "2025-07-01T08:00:00+08:00".into(),
        status: "ACTIVE".into(),
        left_at: String::new(),
    }
}

fn order(id: String) -> proto::Order {
    proto::Order {
        order_id: id,
        revision: Some(1),
        worker_id: "W-LOAD".into(),
        industry: "INSTANT_DELIVERY".into(),
        division_code: "320100".into(),
        accepted_at: "2025-07-02T11:00:00+08:00".into(),
        completed_at: "2025-07-02T11:35:00+08:00".into(),
        status: "COMPLETED".into(),
        vehicle_plate: String::new(),
    }
}

/// One call: its status code name, and whether the order was acknowledged as accepted.
async fn call(c: &mut PlatformServiceClient<Channel>, id: String) -> (String, bool) {
    let mut req = tonic::Request::new(proto::ReportOrdersRequest {
        orders: vec![order(id)],
    });
    req.set_timeout(Duration::from_secs(10));
    match c.report_orders(req).await {
        Ok(r) => {
            let accepted = r
                .get_ref()
                .outcomes
                .first()
                .is_some_and(|o| o.outcome() == proto::Outcome::Accepted);
            ("OK".into(), accepted)
        }
        Err(s) => (format!("{:?}", s.code()), false),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs = env_or("BENCH_OVERLOAD_SECS", 20);
    let factor = env_or("BENCH_OVERLOAD_FACTOR", 5);
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("oip.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
        .args(["serve"])
        .env("OIP_LISTEN", "127.0.0.1:0")
        .env("OIP_OPERATIONS__LISTEN", "127.0.0.1:0")
        .env("OIP_DATABASE_URL", format!("sqlite:{}", db.display()))
        .env("OIP_RATE_LIMITS__CALLS_PER_SECOND", "1000000")
        .env("OIP_RATE_LIMITS__RECORDS_PER_SECOND", "1000000")
        .env("OIP_CONNECTIONS__MAX_CALLS_PER_IDENTITY", "100000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines
        .next()
        .ok_or_else(|| anyhow::anyhow!("no ready line"))??;
    let addr = first
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow::anyhow!("unexpected {first}"))?
        .to_string();
    std::thread::spawn(move || for _ in lines {});

    let mut setup = PlatformServiceClient::new(channel(&addr, "platform-a").await?);
    setup
        .register_workers(proto::RegisterWorkersRequest {
            workers: vec![worker()],
        })
        .await?;
    let rest_kib = rss_kib(pid);

    // 1. The sustainable rate, closed loop.
    let mut conns = Vec::new();
    for _ in 0..16 {
        conns.push(channel(&addr, "platform-a").await?);
    }
    let next_id = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let measure = Duration::from_secs(10);
    let started = Instant::now();
    let served = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for i in 0..32 {
        let mut c = PlatformServiceClient::new(conns[i % 8].clone());
        let (next_id, served, acknowledged) =
            (next_id.clone(), served.clone(), acknowledged.clone());
        loops.push(tokio::spawn(async move {
            while started.elapsed() < measure {
                let id = format!("S{}", next_id.fetch_add(1, Ordering::Relaxed));
                let (code, accepted) = call(&mut c, id.clone()).await;
                if code == "OK" {
                    served.fetch_add(1, Ordering::Relaxed);
                }
                if accepted && let Ok(mut a) = acknowledged.lock() {
                    a.push(id);
                }
            }
        }));
    }
    for l in loops {
        l.await?;
    }
    let sustainable = served.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("sustainable: {sustainable:.0} calls/s (one order each, 32 callers)");

    // 2. Open loop at FACTOR × sustainable.
    let offered_rate = sustainable * factor as f64;
    let interval = Duration::from_secs_f64(1.0 / offered_rate);
    let peak = Arc::new(AtomicU64::new(rest_kib));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let codes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let mut offered = 0u64;
    let load = Duration::from_secs(secs);
    let started = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = Vec::new();
    while started.elapsed() < load {
        tick.tick().await;
        offered += 1;
        let mut c = PlatformServiceClient::new(conns[(offered % 16) as usize].clone());
        let (codes, acknowledged) = (codes.clone(), acknowledged.clone());
        let id = format!("L{offered}");
        calls.push(tokio::spawn(async move {
            let (code, accepted) = call(&mut c, id.clone()).await;
            if let Ok(mut m) = codes.lock() {
                *m.entry(code).or_default() += 1;
            }
            if accepted && let Ok(mut a) = acknowledged.lock() {
                a.push(id);
            }
        }));
    }
    let offered_secs = started.elapsed().as_secs_f64();
    for c in calls {
        let _ = c.await;
    }
    let load_end = Instant::now();
    // 3. Recovery: a plain call served within 1 s.
    let mut probe = PlatformServiceClient::new(channel(&addr, "platform-b").await?);
    let recovered = loop {
        let t = Instant::now();
        let ok = probe
            .list_workers(proto::ListRequest::default())
            .await
            .is_ok();
        if ok && t.elapsed() < Duration::from_secs(1) {
            break load_end.elapsed();
        }
        if load_end.elapsed() > Duration::from_secs(60) {
            break load_end.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    sampling.abort();
    let codes = codes.lock().map(|m| m.clone()).unwrap_or_default();
    let ok = codes.get("OK").copied().unwrap_or(0);
    let shed: u64 = codes
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "ResourceExhausted" | "Unavailable"))
        .map(|(_, v)| *v)
        .sum();
    let other: u64 = codes.values().sum::<u64>() - ok - shed;
    println!(
        "offered: {offered} calls in {offered_secs:.1} s = {:.0} calls/s ({factor}× sustainable)",
        offered as f64 / offered_secs
    );
    println!(
        "served: {ok} OK = {:.0} calls/s ({:.2}× sustainable); shed: {shed}; other: {other} {codes:?}",
        ok as f64 / offered_secs,
        ok as f64 / offered_secs / sustainable
    );
    let peak_kib = peak.load(Ordering::Relaxed);
    println!(
        "rss: {} MiB at rest, {} MiB peak ({:.2}×)",
        rest_kib / 1024,
        peak_kib / 1024,
        peak_kib as f64 / rest_kib.max(1) as f64
    );
    println!("recovery: a plain call served {recovered:.1?} after the load stopped");

    // 4. Nothing acknowledged is lost.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}?mode=ro", db.display())).await?;
    let stored: Vec<(String,)> = sqlx::query_as("SELECT order_id FROM orders")
        .fetch_all(&pool)
        .await?;
    let stored: std::collections::HashSet<String> = stored.into_iter().map(|(s,)| s).collect();
    let acknowledged = acknowledged.lock().map(|a| a.clone()).unwrap_or_default();
    let lost = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .count();
    println!(
        "acknowledged: {} orders, {} stored, {lost} lost",
        acknowledged.len(),
        stored.len()
    );
    anyhow::ensure!(lost == 0, "{lost} acknowledged orders are not stored");
    anyhow::ensure!(
        other == 0,
        "statuses other than OK/RESOURCE_EXHAUSTED/UNAVAILABLE: {codes:?}"
    );
    Ok(())
}
