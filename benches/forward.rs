//! Benchmark: forwarding throughput to the simulated backends, and the time to drain a
//! backlog after an outage, per dispatcher batch size.
//!
//! `cargo bench --bench forward`
//! (BENCH_FORWARD_ORDERS=200000, BENCH_FORWARD_DECLARATIONS=20000,
//! BENCH_BATCH_SIZES=100,500,1000).
//!
//! For each batch size, on fresh files: a backend simulator (a real mTLS gRPC server
//! with its own SQLite file) is started and paused; a gateway delivering to it is
//! started; a loadgen file of workers and orders (2025-09) and a file of declarations
//! are submitted through the real API (`submit`), so the outbox fills as it does during
//! an outage (workers, orders and daily enrolments for social security; declarations
//! and the month's statements with their corrections for tax). Then the simulator is
//! resumed and the clock runs until it has applied every queued item of each
//! destination. Both queues drain at once, as they do after a real outage, on the
//! same 2 cores as the gateway and the simulator: figures are ratios within one run.
//! Then the whole journal is pulled once as social security and once as tax (every
//! page audited), timing each pull.

use oip_gateway::store::{Destination, GrantRepo, OutboxRepo};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oip_gateway::app::Gateway;
use oip_gateway::backend_sim::{BackendSim, SimConfig};
use oip_gateway::config::Config;
use oip_gateway::domain::grant::{Grant, Role};
use oip_gateway::proto::{
    self, backend_sim_control_client::BackendSimControlClient,
    social_security_service_client::SocialSecurityServiceClient,
    tax_service_client::TaxServiceClient,
};
use oip_gateway::store::sqlite::SqliteStore;
use oip_gateway::{loadgen, submit, tls};

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn certs(name: &str) -> PathBuf {
    Path::new("certs-example").join(name)
}

/// Declarations for 2025-09 across cities and industries (each a tax item).
fn write_declarations(path: &Path, n: usize) -> std::io::Result<()> {
    use std::io::Write;
    const CITIES: [&str; 13] = [
        "320100", "320200", "320300", "320400", "320500", "320600", "320700", "320800", "320900",
        "321000", "321100", "321200", "321300",
    ];
    const INDUSTRIES: [&str; 3] = ["RIDE_HAILING", "INSTANT_DELIVERY", "INTRACITY_FREIGHT"];
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        writeln!(
            w,
            r#"{{"kind":"declaration","declaration_id":"BD{i}","period":"2025-09","division_code":"{}","industry":"{}","order_count":{},"amount_fen":{}}}"#,
            CITIES[i % CITIES.len()],
            INDUSTRIES[(i / CITIES.len()) % INDUSTRIES.len()],
            i % 1000,
            i % 1000 * 7,
        )?;
    }
    w.flush()
}

async fn submit_file(endpoint: &str, file: &Path) -> anyhow::Result<submit::Summary> {
    submit::run(
        &submit::SubmitOptions {
            file: file.to_path_buf(),
            report: None,
            endpoint: endpoint.to_string(),
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
    .await
}

/// Applied items per backend ("social-security", "tax").
async fn applied(
    c: &mut BackendSimControlClient<tonic::transport::Channel>,
) -> anyhow::Result<(u64, u64)> {
    let s = c.stats(proto::StatsRequest {}).await?.into_inner();
    let sum = |prefix: &str| {
        s.applied
            .iter()
            .filter(|k| k.kind.starts_with(prefix))
            .map(|k| k.count)
            .sum::<u64>()
    };
    Ok((sum("social-security/"), sum("tax/")))
}

struct Drain {
    ss_items: u64,
    tax_items: u64,
    ss: Duration,
    tax: Duration,
    submit: Duration,
    submitted_records: u64,
    ss_pulled: u64,
    ss_pull: Duration,
    tax_pulled: u64,
    tax_pull: Duration,
}

async fn run(
    batch_size: u32,
    orders_file: &Path,
    declarations_file: &Path,
) -> anyhow::Result<Drain> {
    let dir = tempfile::tempdir()?;
    let sim = BackendSim::start(SimConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        database_url: format!("sqlite:{}", dir.path().join("sim.db").display()),
        ca: certs("ca.pem"),
        cert: certs("server.pem"),
        key: certs("server.key"),
        also_trust: None,
        delivery_identities: vec!["oip://gateway/oip-gateway".into()],
    })
    .await?;
    let sim_endpoint = format!("https://{}", sim.addr);
    let channel = tonic::transport::Channel::from_shared(sim_endpoint.clone())?
        .tls_config(tls::client_config(
            &certs("ca.pem"),
            &certs("admin.pem"),
            &certs("admin.key"),
            "localhost",
        )?)?
        .connect()
        .await?;
    let mut control = BackendSimControlClient::new(channel);
    control
        .set_faults(proto::Faults {
            paused: true,
            ..Default::default()
        })
        .await?;

    let db = format!("sqlite:{}", dir.path().join("oip.db").display());
    let mut config = Config::load(Path::new(oip_gateway::config::DEFAULT_PATH))?;
    config.listen = ([127, 0, 0, 1], 0).into();
    config.database_url = db.clone();
    config.forward.simulate = false;
    config.forward.social_security_endpoint = Some(sim_endpoint.clone());
    config.forward.tax_endpoint = Some(sim_endpoint);
    config.forward.batch_size = batch_size;
    // While paused, retry often enough that the resume is noticed at once.
    config.forward.max_backoff_ms = 200;
    let gateway = Gateway::start(config).await?;
    let endpoint = format!("https://{}", gateway.addr);
    let filled = Instant::now();
    let orders = submit_file(&endpoint, orders_file).await?;
    let declarations = submit_file(&endpoint, declarations_file).await?;
    let submitted = filled.elapsed();
    println!(
        "  batch {batch_size}: submitted {} + {} records in {:.1} s",
        orders.records,
        declarations.records,
        submitted.as_secs_f64()
    );

    // What is queued (the month's release follows its first batch; wait for it).
    let store = SqliteStore::open(&db).await?;
    let mut queued = (0, 0);
    for _ in 0..100 {
        let q = (
            store
                .queue_depth(Destination::SocialSecurity)
                .await?
                .pending,
            store.queue_depth(Destination::Tax).await?.pending,
        );
        if q == queued && q.1 > 0 {
            break;
        }
        queued = q;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(
        applied(&mut control).await? == (0, 0),
        "nothing applied while paused"
    );

    control.set_faults(proto::Faults::default()).await?;
    let start = Instant::now();
    let (mut ss, mut tax) = (None, None);
    while ss.is_none() || tax.is_none() {
        let (a_ss, a_tax) = applied(&mut control).await?;
        if ss.is_none() && a_ss >= queued.0 {
            ss = Some(start.elapsed());
        }
        if tax.is_none() && a_tax >= queued.1 {
            tax = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = control.stats(proto::StatsRequest {}).await?.into_inner();
    anyhow::ensure!(
        stats.repeated_items == 0 && stats.invalid_items == 0,
        "{stats:?}"
    );

    // The same journal pulled by social security and tax (every page audited; social
    // security's payloads opened and its enrolments joined with their persons).
    store
        .put_grants(
            &[
                Grant {
                    identity: "oip://social-security/js-hrss-320000".into(),
                    role: Role::SocialSecurity,
                    scope: "320000".into(),
                    expires_at: None,
                },
                Grant {
                    identity: "oip://tax/js-tax-320000".into(),
                    role: Role::Tax,
                    scope: "320000".into(),
                    expires_at: None,
                },
            ],
            "bench",
            oip_gateway::domain::time::now_millis(),
        )
        .await?;
    let connect = |stem: &'static str| {
        let endpoint = endpoint.clone();
        async move {
            anyhow::Ok(
                tonic::transport::Channel::from_shared(endpoint)?
                    .tls_config(tls::client_config(
                        &certs("ca.pem"),
                        &certs(&format!("{stem}.pem")),
                        &certs(&format!("{stem}.key")),
                        "localhost",
                    )?)?
                    .connect()
                    .await?,
            )
        }
    };
    let pulled = Instant::now();
    let mut stream = SocialSecurityServiceClient::new(connect("social-security").await?)
        .max_decoding_message_size(64 << 20)
        .pull_social_security(proto::PullRequest::default())
        .await?
        .into_inner();
    let mut ss_pulled = 0u64;
    while let Some(m) = stream.message().await? {
        ss_pulled += u64::from(m.item.is_some());
    }
    let ss_pull = pulled.elapsed();
    let pulled = Instant::now();
    let mut stream = TaxServiceClient::new(connect("tax").await?)
        .pull_contributions(proto::PullRequest::default())
        .await?
        .into_inner();
    let mut tax_pulled = 0u64;
    while let Some(m) = stream.message().await? {
        tax_pulled += u64::from(m.item.is_some());
    }
    let tax_pull = pulled.elapsed();

    gateway.shutdown().await?;
    sim.shutdown().await?;
    Ok(Drain {
        ss_items: queued.0,
        tax_items: queued.1,
        ss: ss.unwrap_or_default(),
        tax: tax.unwrap_or_default(),
        submit: submitted,
        submitted_records: (orders.records + declarations.records) as u64,
        ss_pulled,
        ss_pull,
        tax_pulled,
        tax_pull,
    })
}

fn main() -> anyhow::Result<()> {
    let orders = env_list("BENCH_FORWARD_ORDERS", "200000")[0];
    let declarations = env_list("BENCH_FORWARD_DECLARATIONS", "20000")[0];
    let sizes = env_list("BENCH_BATCH_SIZES", "100,500,1000");
    let files = tempfile::tempdir()?;
    let orders_file = files.path().join("orders.jsonl");
    let spec = loadgen::LoadSpec {
        workers: (orders / 100).max(1),
        orders,
        start: chrono::NaiveDate::from_ymd_opt(2025, 9, 1).unwrap_or_default(),
        id_prefix: "B".into(),
        seed: 1,
        shape: oip_gateway::loadgen::Shape::AsTaken,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(&orders_file)?);
    loadgen::write(&spec, &mut w)?;
    std::io::Write::flush(&mut w)?;
    drop(w);
    let declarations_file = files.path().join("declarations.jsonl");
    write_declarations(&declarations_file, declarations)?;

    let rt = tokio::runtime::Runtime::new()?;
    println!(
        "forward: {orders} orders ({} workers), {declarations} declarations; backlog drained after an outage",
        spec.workers
    );
    let mut rows = Vec::new();
    for &size in &sizes {
        let d = rt.block_on(run(size as u32, &orders_file, &declarations_file))?;
        rows.push((size, d));
    }
    println!(
        "\n| batch | social-security items | drain s | items/s | tax items | drain s | items/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    let base = rows
        .first()
        .map(|(_, d)| d.ss_items as f64 / d.ss.as_secs_f64());
    for (size, d) in &rows {
        let ss_rate = d.ss_items as f64 / d.ss.as_secs_f64().max(1e-9);
        let tax_rate = d.tax_items as f64 / d.tax.as_secs_f64().max(1e-9);
        let ratio = base.map_or(1.0, |b| ss_rate / b);
        println!(
            "| {size} | {} | {:.1} | {ss_rate:.0} ({ratio:.2}×) | {} | {:.1} | {tax_rate:.0} |",
            d.ss_items,
            d.ss.as_secs_f64(),
            d.tax_items,
            d.tax.as_secs_f64(),
        );
    }
    println!("\n| batch | submitted records/s | social-security pull items/s | tax pull items/s |");
    println!("|---|---|---|---|");
    for (size, d) in &rows {
        let rate = |n: u64, t: Duration| n as f64 / t.as_secs_f64().max(1e-9);
        println!(
            "| {size} | {:.0} | {:.0} ({} items) | {:.0} ({} items) |",
            rate(d.submitted_records, d.submit),
            rate(d.ss_pulled, d.ss_pull),
            d.ss_pulled,
            rate(d.tax_pulled, d.tax_pull),
            d.tax_pulled,
        );
    }
    Ok(())
}
