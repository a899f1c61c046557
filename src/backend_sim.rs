//! `oip-gateway backend-sim`: the social-security and tax backends as real gRPC servers
//! over mTLS, for tests and demos. Each keeps what it receives in its own SQLite file,
//! applies every idempotency key once and counts repeats, and injects faults on demand
//! (a fraction of calls UNAVAILABLE, added latency, chosen keys INVALID, pause/resume)
//! through its `BackendSimControl` service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::proto::backend_sim_control_server::{BackendSimControl, BackendSimControlServer};
use crate::proto::social_security_backend_server::{
    SocialSecurityBackend, SocialSecurityBackendServer,
};
use crate::proto::tax_backend_server::{TaxBackend, TaxBackendServer};
use crate::proto::{self, social_security_item, tax_item};
use crate::store::sim::{SimItem, SimStore};
use crate::tls;

/// Where the simulator listens and keeps its data.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub database_url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM CA certificates trusted for clients besides `ca` (the embedded simulator's
    /// link to its gateway, see [`crate::certs::loopback_link`]).
    pub also_trust: Option<String>,
    /// The only identities (`oip://gateway/...` URIs) whose certificates may deliver
    /// items (`TaxBackend`, `SocialSecurityBackend`): the gateway's own. Everyone else
    /// is PERMISSION_DENIED, whatever CA issued them. `BackendSimControl` takes only
    /// administrators (`oip://admin/...`).
    pub delivery_identities: Vec<String>,
}

/// The `oip://` identity of a call's client certificate, if any.
fn caller_uri<T>(req: &Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    crate::identity::Principal::uri_of_certificate(certs.first()?.as_ref()).ok()
}

/// Lets through delivery calls from the gateway's identities only.
#[derive(Clone)]
struct DeliveryGate(Arc<Vec<String>>);

impl tonic::service::Interceptor for DeliveryGate {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        match caller_uri(&req) {
            Some(uri) if self.0.contains(&uri) => Ok(req),
            who => Err(Status::permission_denied(format!(
                "backend simulator: {} may not deliver; only the gateway's identity ({}) may",
                who.as_deref()
                    .unwrap_or("a certificate without an oip:// identity"),
                self.0.join(", ")
            ))),
        }
    }
}

/// Lets through control calls from administrators only.
fn control_gate(req: Request<()>) -> Result<Request<()>, Status> {
    match caller_uri(&req) {
        Some(uri) if uri.starts_with("oip://admin/") => Ok(req),
        who => Err(Status::permission_denied(format!(
            "backend simulator: {} may not control the simulator; only an administrator (oip://admin/...) may",
            who.as_deref()
                .unwrap_or("a certificate without an oip:// identity")
        ))),
    }
}

struct State {
    store: SimStore,
    faults: Mutex<proto::Faults>,
    rng: Mutex<u64>,
}

#[derive(Clone)]
struct Sim(Arc<State>);

impl Sim {
    fn faults(&self) -> proto::Faults {
        self.0.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// A uniform number in [0, 1) (xorshift; quality is irrelevant here).
    fn chance(&self) -> f64 {
        let mut s = self.0.rng.lock().unwrap_or_else(|p| p.into_inner());
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Latency, pause and random failure of one call.
    async fn before_call(&self) -> Result<proto::Faults, Status> {
        let f = self.faults();
        if f.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(f.latency_ms))).await;
        }
        if f.paused || (f.fail_fraction > 0.0 && self.chance() < f.fail_fraction) {
            let _ = self.0.store.count("failed_calls", 1).await;
            return Err(Status::unavailable("backend simulator: injected outage"));
        }
        Ok(f)
    }

    /// Applies items (already typed), answering per item in order.
    async fn deliver(
        &self,
        items: Vec<(Option<SimItem>, String)>,
        faults: &proto::Faults,
    ) -> Result<proto::DeliverResponse, Status> {
        let mut results = Vec::with_capacity(items.len());
        let mut to_apply = Vec::new();
        let mut slots = Vec::new();
        for (item, key) in items {
            let reason = match &item {
                None => Some("item has no payload or no idempotency key"),
                Some(_) if faults.reject_keys.contains(&key) => Some("rejected by fault injection"),
                Some(_) => None,
            };
            match (reason, item) {
                (None, Some(i)) => {
                    slots.push(results.len());
                    to_apply.push(i);
                    results.push(proto::ItemResult {
                        idempotency_key: key,
                        ..Default::default()
                    });
                }
                (reason, _) => results.push(proto::ItemResult {
                    idempotency_key: key,
                    result: proto::DeliveryResult::Invalid as i32,
                    reason: reason.unwrap_or_default().to_string(),
                }),
            }
        }
        let invalid = (results.len() - to_apply.len()) as i64;
        if invalid > 0 {
            let _ = self.0.store.count("invalid_items", invalid).await;
        }
        let applied = self
            .0
            .store
            .apply(&to_apply, crate::domain::time::now_millis())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        for (slot, fresh) in slots.into_iter().zip(applied) {
            results[slot].result = if fresh {
                proto::DeliveryResult::Delivered
            } else {
                proto::DeliveryResult::Repeated
            } as i32;
        }
        Ok(proto::DeliverResponse { results })
    }
}

/// An item as the simulator keeps it, or None when it lacks a key or a payload; with
/// its key for the answer.
fn sim_item(
    backend: &'static str,
    header: Option<&proto::ItemHeader>,
    kind: Option<&'static str>,
    payload: Vec<u8>,
) -> (Option<SimItem>, String) {
    let (key, platform, correction) = header.map_or((String::new(), String::new(), false), |h| {
        (h.idempotency_key.clone(), h.platform.clone(), h.correction)
    });
    let item = kind.filter(|_| !key.is_empty()).map(|kind| SimItem {
        idempotency_key: key.clone(),
        backend,
        kind,
        platform,
        correction,
        payload,
    });
    (item, key)
}

#[tonic::async_trait]
impl SocialSecurityBackend for Sim {
    async fn deliver(
        &self,
        req: Request<proto::DeliverSocialSecurityRequest>,
    ) -> Result<Response<proto::DeliverResponse>, Status> {
        let faults = self.before_call().await?;
        let items = req
            .into_inner()
            .items
            .into_iter()
            .map(|item| {
                let kind = item.payload.as_ref().map(|p| match p {
                    social_security_item::Payload::Worker(_) => "worker",
                    social_security_item::Payload::Enrolment(_) => "enrolment",
                    social_security_item::Payload::Order(_) => "order",
                    social_security_item::Payload::Accident(_) => "accident",
                });
                sim_item(
                    "social-security",
                    item.header.as_ref(),
                    kind,
                    item.encode_to_vec(),
                )
            })
            .collect();
        Ok(Response::new(Sim::deliver(self, items, &faults).await?))
    }
}

#[tonic::async_trait]
impl TaxBackend for Sim {
    async fn deliver(
        &self,
        req: Request<proto::DeliverTaxRequest>,
    ) -> Result<Response<proto::DeliverResponse>, Status> {
        let faults = self.before_call().await?;
        let items = req
            .into_inner()
            .items
            .into_iter()
            .map(|item| {
                let kind = item.payload.as_ref().map(|p| match p {
                    tax_item::Payload::Statement(_) => "statement",
                    tax_item::Payload::Declaration(_) => "declaration",
                });
                sim_item("tax", item.header.as_ref(), kind, item.encode_to_vec())
            })
            .collect();
        Ok(Response::new(Sim::deliver(self, items, &faults).await?))
    }
}

#[tonic::async_trait]
impl BackendSimControl for Sim {
    async fn stats(
        &self,
        _req: Request<proto::StatsRequest>,
    ) -> Result<Response<proto::StatsResponse>, Status> {
        let (applied, counters) = self
            .0
            .store
            .stats()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let counter = |n: &str| counters.get(n).copied().unwrap_or(0);
        Ok(Response::new(proto::StatsResponse {
            applied: applied
                .into_iter()
                .map(|(kind, count)| proto::KindCount { kind, count })
                .collect(),
            repeated_items: counter("repeated_items"),
            failed_calls: counter("failed_calls"),
            invalid_items: counter("invalid_items"),
            answered_calls: counter("answered_calls"),
            faults: Some(self.faults()),
        }))
    }

    async fn set_faults(
        &self,
        req: Request<proto::Faults>,
    ) -> Result<Response<proto::Faults>, Status> {
        let f = req.into_inner();
        if !(0.0..=1.0).contains(&f.fail_fraction) {
            return Err(Status::invalid_argument(
                "fail_fraction must be between 0 and 1",
            ));
        }
        tracing::info!(
            fail_fraction = f.fail_fraction,
            latency_ms = f.latency_ms,
            paused = f.paused,
            rejects = f.reject_keys.len(),
            "faults set"
        );
        if let Ok(mut cur) = self.0.faults.lock() {
            *cur = f.clone();
        }
        Ok(Response::new(f))
    }
}

/// A running simulator.
pub struct BackendSim {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl BackendSim {
    /// Opens the store, binds the listener and serves both backends and the control
    /// service; returns once bound.
    pub async fn start(config: SimConfig) -> anyhow::Result<Self> {
        let store = SimStore::open(&config.database_url)
            .await
            .with_context(|| format!("backend-sim database {}", config.database_url))?;
        let seed = crate::domain::time::now_millis() as u64 | 1;
        let sim = Sim(Arc::new(State {
            store,
            faults: Mutex::new(proto::Faults::default()),
            rng: Mutex::new(seed),
        }));
        let tls = tls::server_config(
            &config.ca,
            &config.cert,
            &config.key,
            config.also_trust.as_deref(),
        )?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("backend-sim: cannot bind {}", config.listen))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let gate = DeliveryGate(Arc::new(config.delivery_identities.clone()));
        let router = Server::builder()
            .tls_config(tls)?
            .add_service(tonic::service::interceptor::InterceptedService::new(
                SocialSecurityBackendServer::new(sim.clone()).max_decoding_message_size(64 << 20),
                gate.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                TaxBackendServer::new(sim.clone()).max_decoding_message_size(64 << 20),
                gate,
            ))
            .add_service(BackendSimControlServer::with_interceptor(sim, control_gate));
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(tls::incoming(listener), async {
                    let _ = rx.await;
                })
                .await
        });
        tracing::info!(%addr, "backend simulator listening");
        Ok(Self {
            addr,
            shutdown: Some(tx),
            task,
        })
    }

    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}
