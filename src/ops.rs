//! The operations listener: plain HTTP on its own port (`[operations] listen`, loopback
//! by default), for load balancers, orchestrators and Prometheus. Nothing on it carries
//! personal data or a caller's identity.
//!
//! - `GET /live`: 200 while the process runs (restart it when this fails).
//! - `GET /ready`: 200 when the gateway should get calls: started, not draining, and its
//!   store takes writes (migrations applied, files writable, a write commits: probed
//!   every `probe_interval_ms`). Else 503 with the reason. gRPC health on the gateway
//!   port follows it (SERVING / NOT_SERVING).
//! - `GET /metrics`: every metric (`metrics`), OpenMetrics text format.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::Store;

/// The operations listener's configuration (`[operations]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OperationsConfig {
    /// Serve `/live`, `/ready` and `/metrics` at all (default true).
    pub enabled: bool,
    /// Address of the listener (plain HTTP; default `127.0.0.1:50052`, port 0 picks a
    /// free one and `serve` prints `operations on ADDR`). Beyond loopback, anyone who
    /// reaches it can read the metrics (no personal data, but volumes).
    pub listen: SocketAddr,
    /// How often the store is probed for readiness, in milliseconds (default 1,000).
    pub probe_interval_ms: u64,
}

impl Default for OperationsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            probe_interval_ms: 1000,
        }
    }
}

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const DRAINING: u8 = 2;

/// Where the gateway is in its life, and what the last store probe found.
#[derive(Default)]
pub struct Readiness {
    phase: AtomicU8,
    problem: Mutex<Option<String>>,
}

impl Readiness {
    /// The gateway serves (end of start-up).
    pub fn serving(&self) {
        self.phase.store(SERVING, Ordering::SeqCst);
    }

    /// The gateway drains (shutdown): never ready again.
    pub fn draining(&self) {
        self.phase.store(DRAINING, Ordering::SeqCst);
    }

    fn set_problem(&self, p: Option<String>) {
        if let Ok(mut g) = self.problem.lock() {
            *g = p;
        }
    }

    /// None when ready, else why not.
    pub fn why_not(&self) -> Option<String> {
        match self.phase.load(Ordering::SeqCst) {
            STARTING => Some("starting".into()),
            DRAINING => Some("draining: shutting down".into()),
            _ => self.problem.lock().ok().and_then(|p| p.clone()),
        }
    }
}

/// What `/metrics` reads, set once the gateway has built it.
pub struct Sources {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub connections: Arc<crate::connections::ConnectionStats>,
    pub admission: Arc<crate::admission::Admission>,
    pub store: Arc<dyn Store>,
}

/// The listener's shared state.
#[derive(Clone)]
pub struct Ops {
    pub readiness: Arc<Readiness>,
    pub sources: Arc<OnceLock<Sources>>,
}

/// Binds the listener and serves until `stop` turns true; returns its address.
pub async fn serve(
    config: &OperationsConfig,
    ops: Ops,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "operations.listen: cannot bind {} ({e}): set operations.listen (OIP_OPERATIONS__LISTEN) to a free address, or operations.enabled = false",
            config.listen
        )
    })?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(ops);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    return;
                }
            }
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "operations listener stopped");
        }
    });
    Ok((addr, task))
}

async fn ready(State(ops): State<Ops>) -> impl IntoResponse {
    match ops.readiness.why_not() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(ops): State<Ops>) -> axum::response::Response {
    let Some(s) = ops.sources.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
    };
    let now = crate::domain::time::now_millis();
    let mut outbox = Vec::new();
    for d in [
        crate::store::Destination::SocialSecurity,
        crate::store::Destination::Tax,
    ] {
        if let Ok(q) = s.store.queue_depth(d).await {
            outbox.push(crate::metrics::OutboxFigures {
                destination: d.as_str(),
                pending: i64::try_from(q.pending).unwrap_or(i64::MAX),
                dead: i64::try_from(q.dead).unwrap_or(i64::MAX),
                oldest_pending_age_seconds: q
                    .oldest_pending_at
                    .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0),
            });
        }
    }
    let body = s.metrics.encode(&crate::metrics::Snapshot {
        connections: &s.connections,
        admission: &s.admission.stats,
        calls_in_progress: s.admission.calls_in_progress(),
        outbox,
    });
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Probes the store every `every` and keeps gRPC health in step with readiness,
/// announcing only changes. The services start SERVING (registered so before the probe
/// starts), and `tonic_health` notifies every `Watch` caller of each status it is
/// given, changed or not: re-announcing SERVING at the first probe sent watchers a
/// second SERVING, which a watcher waiting for the next change (NOT_SERVING at
/// shutdown) took for it.
pub fn spawn_probe(
    ops: Ops,
    store: Arc<dyn Store>,
    health: tonic_health::server::HealthReporter,
    services: Vec<&'static str>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut was_ready = true;
        loop {
            let problem = match tokio::time::timeout(Duration::from_secs(5), store.probe()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("store: {e}")),
                Err(_) => Some("store: no answer within 5 s".to_string()),
            };
            if problem.is_some()
                != ops
                    .readiness
                    .problem
                    .lock()
                    .map(|p| p.is_some())
                    .unwrap_or(false)
            {
                match &problem {
                    Some(p) => tracing::warn!(problem = %p, "not ready"),
                    None => tracing::info!("ready again"),
                }
            }
            ops.readiness.set_problem(problem);
            let ready = ops.readiness.why_not().is_none();
            if was_ready != ready {
                let status = if ready {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                health.set_service_status("", status).await;
                for name in &services {
                    health.set_service_status(*name, status).await;
                }
                was_ready = ready;
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    })
}
