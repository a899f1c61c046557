//! One dispatcher per destination: takes the due items of its queue in order, delivers
//! them in one call with a deadline, and settles each by the backend's answer.
//! Transient failures (the backend down, slow or failing) retry the same items without
//! limit, with exponential backoff and jitter; an item the backend refuses as invalid is
//! retried later and dead-lettered after `max_attempts`.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::domain::outcome::scrub_reason;
use crate::domain::time::now_millis;
use crate::proto::{
    self, social_security_backend_client::SocialSecurityBackendClient,
    tax_backend_client::TaxBackendClient,
};
use crate::store::{DeliveryOutcome, Destination, DueItem, Store};

/// Dispatcher settings (from `[forward]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct DispatchSettings {
    pub batch_size: u32,
    pub max_attempts: u32,
    pub request_timeout: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Delay before an invalid item is offered again.
    pub invalid_retry: Duration,
    /// How often an idle dispatcher looks for due items without being woken.
    pub idle_poll: Duration,
}

/// A client of one backend.
#[derive(Clone)]
pub enum Backend {
    SocialSecurity(SocialSecurityBackendClient<Channel>),
    Tax(TaxBackendClient<Channel>),
}

impl Backend {
    pub fn destination(&self) -> Destination {
        match self {
            Backend::SocialSecurity(_) => Destination::SocialSecurity,
            Backend::Tax(_) => Destination::Tax,
        }
    }

    /// Delivers the items; the answer has one result per item, in order.
    async fn deliver(
        &mut self,
        items: &[DueItem],
        timeout: Duration,
    ) -> Result<proto::DeliverResponse, String> {
        let call = async {
            match self {
                Backend::SocialSecurity(c) => {
                    let items = items
                        .iter()
                        .map(|i| proto::SocialSecurityItem::decode(i.payload.as_slice()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("stored item does not decode: {e}"))?;
                    c.deliver(proto::DeliverSocialSecurityRequest { items })
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| format!("{}: {}", s.code(), s.message()))
                }
                Backend::Tax(c) => {
                    let items = items
                        .iter()
                        .map(|i| proto::TaxItem::decode(i.payload.as_slice()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("stored item does not decode: {e}"))?;
                    c.deliver(proto::DeliverTaxRequest { items })
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| format!("{}: {}", s.code(), s.message()))
                }
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }
}

/// Exponential backoff with full jitter.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
            seed: now_millis() as u64 | 1,
        }
    }
    fn reset(&mut self) {
        self.next = self.min;
    }
    fn step(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jittered = self.next.mul_f64(0.5 + (self.seed % 1000) as f64 / 2000.0);
        self.next = (self.next * 2).min(self.max);
        jittered
    }
}

/// Starts the dispatcher of `backend`'s destination; it runs until `stop` turns true.
pub fn spawn(
    store: Arc<dyn Store>,
    mut backend: Backend,
    settings: DispatchSettings,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let destination = backend.destination();
        let mut backoff = Backoff::new(settings.min_backoff, settings.max_backoff);
        loop {
            if *stop.borrow() {
                return;
            }
            let due = match store
                .due_items(destination, now_millis(), settings.batch_size)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(destination = destination.as_str(), error = %e, "outbox unreadable");
                    Vec::new()
                }
            };
            if due.is_empty() {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(settings.idle_poll) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let pause = match backend.deliver(&due, settings.request_timeout).await {
                Ok(answer) if answer.results.len() == due.len() => {
                    let now = now_millis();
                    let retry_at = now + settings.invalid_retry.as_millis() as i64;
                    let outcomes: Vec<_> = due
                        .iter()
                        .zip(&answer.results)
                        .map(|(item, r)| {
                            let outcome = match r.result() {
                                proto::DeliveryResult::Delivered | proto::DeliveryResult::Repeated => DeliveryOutcome::Delivered,
                                _ => {
                                    // The backend may quote the record: kept and logged
                                    // bounded, with long numbers masked.
                                    let reason = scrub_reason(&r.reason);
                                    tracing::warn!(destination = destination.as_str(), key = %item.idempotency_key,
                                        attempts = item.attempts + 1, reason = %reason, "backend refused an item");
                                    DeliveryOutcome::Invalid { reason, retry_at }
                                }
                            };
                            (item.seq, outcome)
                        })
                        .collect();
                    match store.settle(&outcomes, settings.max_attempts, now).await {
                        Ok(()) => {
                            backoff.reset();
                            None
                        }
                        Err(e) => {
                            // Delivered but not marked: the items are sent again and the
                            // backend drops them by idempotency key.
                            tracing::warn!(destination = destination.as_str(), error = %e, "cannot record deliveries");
                            Some(backoff.step())
                        }
                    }
                }
                Ok(answer) => {
                    tracing::warn!(
                        destination = destination.as_str(),
                        sent = due.len(),
                        answered = answer.results.len(),
                        "backend answered the wrong number of results"
                    );
                    Some(backoff.step())
                }
                Err(e) => {
                    let wait = backoff.step();
                    tracing::warn!(destination = destination.as_str(), error = %e, retry_in_ms = wait.as_millis() as u64,
                        "backend unavailable; retrying");
                    Some(wait)
                }
            };
            if let Some(wait) = pause {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    })
}

/// Logs each destination's queue depth and oldest pending age every `every`.
pub fn spawn_queue_reporter(
    store: Arc<dyn Store>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            for d in [Destination::SocialSecurity, Destination::Tax] {
                if let Ok(q) = store.queue_depth(d).await {
                    let age_s = q
                        .oldest_pending_at
                        .map_or(0, |t| (now_millis() - t).max(0) / 1000);
                    tracing::info!(
                        destination = d.as_str(),
                        pending = q.pending,
                        dead = q.dead,
                        oldest_pending_age_s = age_s,
                        "outbox queue"
                    );
                }
            }
        }
    })
}
