//! The gateway's metrics, in the Prometheus / OpenMetrics text format (served on the
//! operations listener, `ops`, at `/metrics`). Names follow the Prometheus conventions
//! (base units, `_total` for counters, `_seconds` for durations) and, for calls, the
//! names of go-grpc-prometheus (`grpc_server_handled_total`, `grpc_server_handling_seconds`),
//! so that existing gRPC dashboards work. No label carries personal data or a caller's
//! identity, and every label takes values from a fixed set (a method path the gateway
//! does not serve is counted as `unknown`; record kinds and codes are the spec's).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `grpc_server_handled_total` | counter | `grpc_service`, `grpc_method`, `grpc_code` | calls completed, by status code (refusals at admission included) |
//! | `grpc_server_handling_seconds` | histogram | `grpc_service`, `grpc_method` | time from a call's arrival to its answer (the end of a streamed answer) |
//! | `oip_records_total` | counter | `kind`, `outcome`, `code` | records answered, by outcome and error code (`code` empty when accepted) |
//! | `oip_calls_refused_total` | counter | `reason` | calls refused before any work: `call_rate`, `record_rate`, `identity_calls`, `shed` |
//! | `oip_calls_in_progress` | gauge | | calls admitted and not yet answered |
//! | `oip_connections` | gauge | `state` | connections `handshaking` or `established` |
//! | `oip_handshakes_total` | counter | `result` | TLS handshakes: `accepted`, `refused`, `timed_out`, `evicted`, `over_capacity`, `no_preface` |
//! | `oip_outbox_pending` | gauge | `destination` | items waiting for delivery |
//! | `oip_outbox_oldest_pending_age_seconds` | gauge | `destination` | age of the oldest waiting item (0 when none) |
//! | `oip_outbox_dead_letters` | gauge | `destination` | dead letters (kept, not delivered) |
//! | `oip_audit_write_seconds` | histogram | | time to commit a group of audit entries |
//! | `oip_ingest_stage_seconds_total` | counter | `stage` | time spent in each stage of ingest transactions: `validate`, `begin` (waiting for the platform's turn), `load`, `decide`, `plan`, `write_<table>`, `audit`, `commit` |
//! | `oip_ingest_transaction_calls` | histogram | | calls applied per ingest transaction (group commit: more than 1 when calls of a platform arrive together) |
//! | `oip_build_info` | gauge (info) | `version` | 1, with the build's version |

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Labels of a call: the service and method of its path
/// (`/oip.v1.PlatformService/Submit` → `oip.v1.PlatformService`, `Submit`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub grpc_service: String,
    pub grpc_method: String,
}

/// Labels of a completed call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub grpc_service: String,
    pub grpc_method: String,
    /// The gRPC status code name (`OK`, `RESOURCE_EXHAUSTED`, ...).
    pub grpc_code: String,
}

/// Labels of an answered record.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordLabels {
    pub kind: String,
    pub outcome: String,
    pub code: String,
}

/// One label with a fixed set of values.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabel {
    pub destination: &'static str,
}

/// Every metric of the gateway, and the registry they are encoded from.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    call_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    records: Family<RecordLabels, Counter>,
    refused: Family<ReasonLabel, Counter>,
    calls_in_progress: Gauge,
    connections: Family<StateLabel, Gauge>,
    handshakes: Family<ResultLabel, Counter>,
    outbox_pending: Family<DestinationLabel, Gauge>,
    outbox_oldest: Family<DestinationLabel, Gauge<f64, AtomicU64>>,
    dead_letters: Family<DestinationLabel, Gauge>,
    audit_write: Histogram,
    ingest_stage: Family<StageLabel, Counter<f64, AtomicU64>>,
    transaction_calls: Histogram,
}

/// `/oip.v1.PlatformService/Submit` → (`oip.v1.PlatformService`, `Submit`). A path
/// that names no method of the gateway's services (a caller may send any) is
/// (`unknown`, `unknown`): label values stay a fixed set.
pub fn split_path(path: &str) -> (String, String) {
    match path.trim_start_matches('/').split_once('/') {
        Some((s, m)) if is_known_method(path) => (s.to_string(), m.to_string()),
        _ => ("unknown".to_string(), "unknown".to_string()),
    }
}

/// Whether `path` (`/oip.v1.PlatformService/Submit`) names a method of `proto/oip/v1/`
/// (a set lookup, no allocation: it runs on every call).
pub fn is_known_method(path: &str) -> bool {
    KNOWN_METHODS.contains(path.trim_start_matches('/'))
}

/// Every `service/method` of `proto/oip/v1/`, read from the compiled descriptors.
static KNOWN_METHODS: std::sync::LazyLock<std::collections::HashSet<String>> =
    std::sync::LazyLock::new(|| {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        set.file
            .iter()
            .flat_map(|f| {
                let package = f.package().to_string();
                f.service.iter().flat_map(move |s| {
                    let service = format!("{package}.{}", s.name());
                    s.method
                        .iter()
                        .map(move |m| format!("{service}/{}", m.name()))
                })
            })
            .collect()
    });

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 1 ms .. about 33 s.
    exponential_buckets(0.001, 2.0, 16)
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "grpc_server_handled",
            "Calls completed, by gRPC status code (refusals at admission included)",
            calls.clone(),
        );
        let call_seconds: Family<MethodLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "grpc_server_handling_seconds",
            "Time from a call's arrival to its answer (the end of a streamed answer)",
            call_seconds.clone(),
        );
        let records = Family::<RecordLabels, Counter>::default();
        registry.register(
            "oip_records",
            "Records answered, by kind, outcome and error code (code empty when accepted)",
            records.clone(),
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "oip_calls_refused",
            "Calls refused before any work: call_rate, record_rate, identity_calls, shed",
            refused.clone(),
        );
        let calls_in_progress = Gauge::default();
        registry.register(
            "oip_calls_in_progress",
            "Calls admitted and not yet answered",
            calls_in_progress.clone(),
        );
        let connections = Family::<StateLabel, Gauge>::default();
        registry.register(
            "oip_connections",
            "Connections in the TLS handshake (handshaking) or established",
            connections.clone(),
        );
        let handshakes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "oip_handshakes",
            "TLS handshakes: accepted, refused, timed_out, evicted (for a newer one), over_capacity, no_preface (TLS but no HTTP/2 in time)",
            handshakes.clone(),
        );
        let outbox_pending = Family::<DestinationLabel, Gauge>::default();
        registry.register(
            "oip_outbox_pending",
            "Items waiting for delivery to a backend",
            outbox_pending.clone(),
        );
        let outbox_oldest = Family::<DestinationLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "oip_outbox_oldest_pending_age_seconds",
            "Age of the oldest item waiting for delivery (0 when none)",
            outbox_oldest.clone(),
        );
        let dead_letters = Family::<DestinationLabel, Gauge>::default();
        registry.register(
            "oip_outbox_dead_letters",
            "Dead letters: items a backend kept refusing, kept and not delivered",
            dead_letters.clone(),
        );
        let audit_write = Histogram::new(latency_buckets());
        registry.register(
            "oip_audit_write_seconds",
            "Time to commit a group of audit entries",
            audit_write.clone(),
        );
        let ingest_stage = Family::<StageLabel, Counter<f64, AtomicU64>>::default();
        registry.register(
            "oip_ingest_stage_seconds",
            "Time spent in each stage of ingest transactions",
            ingest_stage.clone(),
        );
        let transaction_calls = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "oip_ingest_transaction_calls",
            "Calls applied per ingest transaction (group commit)",
            transaction_calls.clone(),
        );
        registry.register(
            "oip_build",
            "The build of this gateway",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Self {
            registry,
            calls,
            call_seconds,
            records,
            refused,
            calls_in_progress,
            connections,
            handshakes,
            outbox_pending,
            outbox_oldest,
            dead_letters,
            audit_write,
            ingest_stage,
            transaction_calls,
        }
    }

    /// Time spent in ingest stages (`validate`, `load`, `write_orders`, ...).
    pub fn ingest_laps(&self, laps: &[(&'static str, Duration)]) {
        for (stage, d) in laps {
            self.ingest_stage
                .get_or_create(&StageLabel { stage })
                .inc_by(d.as_secs_f64());
        }
    }

    /// An ingest transaction committed with `calls` calls in it.
    pub fn ingest_transaction(&self, calls: usize) {
        self.transaction_calls.observe(calls as f64);
    }

    /// A call to `path` answered with `code` (`OK`, `PERMISSION_DENIED`, ...) after
    /// `elapsed`.
    pub fn call(&self, path: &str, code: &str, elapsed: Duration) {
        let (grpc_service, grpc_method) = split_path(path);
        self.call_seconds
            .get_or_create(&MethodLabels {
                grpc_service: grpc_service.clone(),
                grpc_method: grpc_method.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.calls
            .get_or_create(&CallLabels {
                grpc_service,
                grpc_method,
                grpc_code: code.to_string(),
            })
            .inc();
    }

    /// A record of `kind` answered with `outcome` and `code` (empty when accepted).
    pub fn record(&self, kind: &str, outcome: &str, code: &str) {
        self.records
            .get_or_create(&RecordLabels {
                kind: kind.to_string(),
                outcome: outcome.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// A commit of audit entries that took `elapsed`.
    pub fn audit_write(&self, elapsed: Duration) {
        self.audit_write.observe(elapsed.as_secs_f64());
    }

    /// Brings the figures kept elsewhere (connections, admission, the outbox) up to
    /// date, then encodes everything in the OpenMetrics text format.
    pub fn encode(&self, now: &Snapshot) -> String {
        let sync = |c: &Counter, to: u64| {
            let have = c.get();
            if to > have {
                c.inc_by(to - have);
            }
        };
        let c = &now.connections;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.connections
            .get_or_create(&StateLabel {
                state: "handshaking",
            })
            .set(c.handshaking.load(Ordering::Relaxed) as i64);
        self.connections
            .get_or_create(&StateLabel {
                state: "established",
            })
            .set(c.established.load(Ordering::Relaxed) as i64);
        for (result, v) in [
            ("accepted", load(&c.accepted)),
            ("refused", load(&c.refused)),
            ("timed_out", load(&c.timed_out)),
            ("evicted", load(&c.evicted)),
            ("over_capacity", load(&c.over_capacity)),
            ("no_preface", load(&c.no_preface)),
        ] {
            sync(&self.handshakes.get_or_create(&ResultLabel { result }), v);
        }
        let a = &now.admission;
        for (reason, v) in [
            ("call_rate", load(&a.over_call_rate)),
            ("record_rate", load(&a.over_record_rate)),
            ("identity_calls", load(&a.over_identity_calls)),
            ("shed", load(&a.shed)),
        ] {
            sync(&self.refused.get_or_create(&ReasonLabel { reason }), v);
        }
        self.calls_in_progress.set(now.calls_in_progress as i64);
        for q in &now.outbox {
            let label = DestinationLabel {
                destination: q.destination,
            };
            self.outbox_pending.get_or_create(&label).set(q.pending);
            self.outbox_oldest
                .get_or_create(&label)
                .set(q.oldest_pending_age_seconds);
            self.dead_letters.get_or_create(&label).set(q.dead);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One destination's queue at scrape time.
#[derive(Debug, Clone)]
pub struct OutboxFigures {
    pub destination: &'static str,
    pub pending: i64,
    pub dead: i64,
    pub oldest_pending_age_seconds: f64,
}

/// What `/metrics` reads from elsewhere at scrape time.
pub struct Snapshot<'a> {
    pub connections: &'a crate::connections::ConnectionStats,
    pub admission: &'a crate::admission::AdmissionStats,
    pub calls_in_progress: usize,
    pub outbox: Vec<OutboxFigures>,
}
