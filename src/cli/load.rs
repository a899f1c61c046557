//! `oip-gateway load`: a closed-loop load generator for a platform's small calls, the
//! way platforms report orders as they happen (每单必保): N calls in flight over mTLS,
//! for a bounded duration, each answered call timed. It first registers its own
//! workers (ids `<prefix>W<n>`), then keeps N callers busy with fresh orders
//! (`<prefix>O<n>` from one counter, accepted two hours ago, Asia/Shanghai) until the duration
//! is over, and reports the calls and orders per second and the latency percentiles.
//!
//! Modes: `unary` (`ReportOrders`, `--records` orders a call), `stream` (`StreamOrders`,
//! `--messages` messages of `--records` orders per stream; the latency is a whole
//! stream's), `submit-stream` (`SubmitStream`, one chunk at a time on a long stream;
//! the latency is a chunk's, from sending it to its answer).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::proto::{self, platform_service_client::PlatformServiceClient};

/// Which calls carry the orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `ReportOrders`, one call per `--records` orders.
    Unary,
    /// `StreamOrders`: client streams of `--messages` messages.
    Stream,
    /// `SubmitStream`: one chunk in flight per stream, answered chunk by chunk.
    SubmitStream,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub mode: Mode,
    /// Calls (streams) in flight at any time, spread over the connections.
    pub in_flight: usize,
    /// How long to keep calling; calls in flight at the end are awaited and counted.
    pub duration: Duration,
    /// Orders per call (unary) or per message (streams).
    pub records: usize,
    /// Messages per stream (stream modes).
    pub messages: usize,
    /// Workers registered first and given the orders in turn.
    pub workers: usize,
    /// Prefix of worker and order ids: a new one per run keeps orders fresh.
    pub id_prefix: String,
    /// Industry of the workers and orders (one the platform is registered for).
    pub industry: String,
    /// Division code of the orders (one of the platform's pilot divisions).
    pub division: String,
    /// Deadline of each call (`grpc-timeout`).
    pub timeout: Duration,
}

/// What was measured.
#[derive(Debug)]
pub struct LoadReport {
    pub mode: Mode,
    pub in_flight: usize,
    /// From the first order sent to the last answer received.
    pub elapsed: Duration,
    /// Calls (streams; chunks of `submit-stream`) answered OK.
    pub calls_ok: u64,
    /// Orders answered ACCEPTED.
    pub accepted: u64,
    /// Orders answered otherwise (a fresh order should never be): by outcome and code.
    pub other_outcomes: BTreeMap<String, u64>,
    /// Calls that failed, by gRPC status code name.
    pub failures: BTreeMap<String, u64>,
    /// The first message of each code in `failures`, which says why (a limit of the
    /// gateway names its setting).
    pub failure_examples: BTreeMap<String, String>,
    /// Latency of answered calls (streams; chunks), in microseconds.
    pub latency_us: hdrhistogram::Histogram<u64>,
}

impl LoadReport {
    /// ACCEPTED orders per second over the run.
    pub fn orders_per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// OK calls per second over the run.
    pub fn calls_per_second(&self) -> f64 {
        self.calls_ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0.5, 0.99, ...).
    pub fn latency(&self, q: f64) -> Duration {
        Duration::from_micros(self.latency_us.value_at_quantile(q))
    }

    /// One line per figure, for people.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![
            format!(
                "{:?}, {} in flight: {} calls OK, {} orders accepted in {:.1} s = {:.0} orders/s ({:.0} calls/s)",
                self.mode,
                self.in_flight,
                self.calls_ok,
                self.accepted,
                self.elapsed.as_secs_f64(),
                self.orders_per_second(),
                self.calls_per_second()
            ),
            format!(
                "latency: p50 {:.1?}, p90 {:.1?}, p99 {:.1?}, p99.9 {:.1?}, max {:.1?}",
                self.latency(0.5),
                self.latency(0.9),
                self.latency(0.99),
                self.latency(0.999),
                Duration::from_micros(self.latency_us.max())
            ),
        ];
        if !self.failures.is_empty() {
            out.push(format!("failed calls: {:?}", self.failures));
            for (code, message) in &self.failure_examples {
                out.push(format!("  first {code}: {message}"));
            }
        }
        if !self.other_outcomes.is_empty() {
            out.push(format!(
                "orders not accepted: {:?} (fresh orders should all be)",
                self.other_outcomes
            ));
        }
        out
    }
}

/// RFC 3339 in Asia/Shanghai (+08:00), `minutes_ago` minutes before now.
fn local_time(minutes_ago: i64) -> String {
    use crate::domain::time;
    time::to_rfc3339(time::now_millis() - minutes_ago * 60_000)
}

fn worker(opts: &LoadOptions, n: usize) -> proto::Worker {
    proto::Worker {
        worker_id: format!("{}W{n}", opts.id_prefix),
        revision: Some(1),
        id_type: String::new(),
        id_number: crate::loadgen::resident_id_of(7, n as u64),
        name: format!("测试{n}"),
        mobile: format!("13{:09}", n % 1_000_000_000),
        industries: vec![opts.industry.clone()],
        registered_at: "2025-01-01T08:00:00+08:00".into(),
        status: "ACTIVE".into(),
        left_at: String::new(),
    }
}

/// Makes the orders of one caller: fresh ids, workers in turn. The callers share one
/// counter, so ids grow with time across them, as a platform's order numbers do
/// (time-ordered, whichever of its servers took the order): `<prefix>O<12 digits>`.
struct Orders {
    prefix: String,
    next: Arc<AtomicU64>,
    workers: usize,
    industry: String,
    division: String,
    accepted_at: String,
    completed_at: String,
}

impl Orders {
    fn take(&mut self, n: usize) -> Vec<proto::Order> {
        (0..n)
            .map(|_| {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                proto::Order {
                    order_id: format!("{}O{i:012}", self.prefix),
                    revision: Some(1),
                    worker_id: format!("{}W{}", self.prefix, i as usize % self.workers),
                    industry: self.industry.clone(),
                    division_code: self.division.clone(),
                    accepted_at: self.accepted_at.clone(),
                    completed_at: self.completed_at.clone(),
                    status: "COMPLETED".into(),
                    vehicle_plate: String::new(),
                }
            })
            .collect()
    }
}

/// One caller's tally.
struct Tally {
    calls_ok: u64,
    accepted: u64,
    other: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
    examples: BTreeMap<String, String>,
    latency_us: hdrhistogram::Histogram<u64>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            calls_ok: 0,
            accepted: 0,
            other: BTreeMap::new(),
            failures: BTreeMap::new(),
            examples: BTreeMap::new(),
            // 1 µs to 10 min, 3 significant digits.
            latency_us: hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)?,
        })
    }

    fn answered(&mut self, started: Instant, out: &proto::BatchOutcome) {
        self.calls_ok += 1;
        self.latency_us
            .saturating_record(started.elapsed().as_micros() as u64);
        for o in &out.outcomes {
            if o.outcome() == proto::Outcome::Accepted {
                self.accepted += 1;
            } else {
                *self
                    .other
                    .entry(format!("{} {}", o.outcome().as_str_name(), o.code))
                    .or_default() += 1;
            }
        }
    }

    fn failed(&mut self, s: &tonic::Status) {
        let code = format!("{:?}", s.code());
        self.examples
            .entry(code.clone())
            .or_insert_with(|| s.message().to_string());
        *self.failures.entry(code).or_default() += 1;
    }
}

/// Registers the workers (ACCEPTED or DUPLICATE both do), 1000 a call.
async fn register(
    client: &mut PlatformServiceClient<Channel>,
    opts: &LoadOptions,
) -> anyhow::Result<()> {
    let all: Vec<_> = (0..opts.workers.max(1)).map(|n| worker(opts, n)).collect();
    for chunk in all.chunks(1000) {
        let out = client
            .register_workers(proto::RegisterWorkersRequest {
                workers: chunk.to_vec(),
            })
            .await
            .map_err(|s| crate::cli::status_line(&s))
            .context("registering the load's workers")?
            .into_inner();
        if let Some(bad) = out.outcomes.iter().find(|o| {
            !matches!(
                o.outcome(),
                proto::Outcome::Accepted | proto::Outcome::Duplicate
            )
        }) {
            anyhow::bail!(
                "a load worker was refused: {} {} at {} ({}); check --industry against the platform's registration",
                bad.outcome().as_str_name(),
                bad.code,
                bad.field,
                bad.message
            );
        }
    }
    Ok(())
}

/// Runs the load over `channels` (one per connection; callers are spread over them)
/// and returns what was measured. Fails if the workers cannot be registered.
pub async fn run(channels: &[Channel], opts: &LoadOptions) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(!channels.is_empty(), "no connection");
    let max = crate::config::Limits::default().max_message_bytes;
    let client = |i: usize| {
        PlatformServiceClient::new(channels[i % channels.len()].clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    };
    register(&mut client(0), opts).await?;
    let accepted_at = local_time(120);
    let completed_at = local_time(90);
    let started = Instant::now();
    let until = started + opts.duration;
    let mut callers = Vec::with_capacity(opts.in_flight);
    let next = Arc::new(AtomicU64::new(0));
    for caller in 0..opts.in_flight.max(1) {
        let mut c = client(caller);
        let mut orders = Orders {
            prefix: opts.id_prefix.clone(),
            next: next.clone(),
            workers: opts.workers.max(1),
            industry: opts.industry.clone(),
            division: opts.division.clone(),
            accepted_at: accepted_at.clone(),
            completed_at: completed_at.clone(),
        };
        let opts = opts.clone();
        callers.push(tokio::spawn(async move {
            let mut tally = Tally::new()?;
            while Instant::now() < until {
                match opts.mode {
                    Mode::Unary => {
                        let mut req = tonic::Request::new(proto::ReportOrdersRequest {
                            orders: orders.take(opts.records),
                        });
                        req.set_timeout(opts.timeout);
                        let t = Instant::now();
                        match c.report_orders(req).await {
                            Ok(r) => tally.answered(t, r.get_ref()),
                            Err(s) => tally.failed(&s),
                        }
                    }
                    Mode::Stream => {
                        let msgs: Vec<_> = (0..opts.messages.max(1))
                            .map(|_| proto::ReportOrdersRequest {
                                orders: orders.take(opts.records),
                            })
                            .collect();
                        let mut req = tonic::Request::new(tokio_stream::iter(msgs));
                        req.set_timeout(opts.timeout);
                        let t = Instant::now();
                        match c.stream_orders(req).await {
                            Ok(r) => tally.answered(t, r.get_ref()),
                            Err(s) => tally.failed(&s),
                        }
                    }
                    Mode::SubmitStream => {
                        submit_stream(&mut c, &mut orders, &opts, until, &mut tally).await;
                    }
                }
            }
            anyhow::Ok(tally)
        }));
    }
    let mut total = Tally::new()?;
    for c in callers {
        let t = c.await.context("a caller stopped")??;
        total.calls_ok += t.calls_ok;
        total.accepted += t.accepted;
        for (k, v) in t.other {
            *total.other.entry(k).or_default() += v;
        }
        for (k, v) in t.failures {
            *total.failures.entry(k).or_default() += v;
        }
        for (k, m) in t.examples {
            total.examples.entry(k).or_insert(m);
        }
        total.latency_us.add(&t.latency_us)?;
    }
    Ok(LoadReport {
        mode: opts.mode,
        in_flight: opts.in_flight,
        elapsed: started.elapsed(),
        calls_ok: total.calls_ok,
        accepted: total.accepted,
        other_outcomes: total.other,
        failures: total.failures,
        failure_examples: total.examples,
        latency_us: total.latency_us,
    })
}

/// One `SubmitStream`: `--messages` chunks, each sent once the previous is answered.
async fn submit_stream(
    c: &mut PlatformServiceClient<Channel>,
    orders: &mut Orders,
    opts: &LoadOptions,
    until: Instant,
    tally: &mut Tally,
) {
    let (tx, rx) = mpsc::channel::<proto::SubmitRequest>(1);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.set_timeout(opts.timeout);
    let chunk = |orders: &mut Orders| proto::SubmitRequest {
        records: orders
            .take(opts.records)
            .into_iter()
            .map(|o| proto::Record {
                kind: Some(proto::record::Kind::Order(o)),
            })
            .collect(),
    };
    let mut t = Instant::now();
    if tx.send(chunk(orders)).await.is_err() {
        return;
    }
    let mut answers = match c.submit_stream(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return tally.failed(&s),
    };
    let mut sent = 1;
    loop {
        match answers.message().await {
            Ok(Some(out)) => {
                tally.answered(t, &out);
                if sent >= opts.messages.max(1) || Instant::now() >= until {
                    return;
                }
                t = Instant::now();
                sent += 1;
                if tx.send(chunk(orders)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(s) => return tally.failed(&s),
        }
    }
}
