//! One dispatcher per destination: takes the due items of its queue in order, delivers
//! them in one call with a deadline, and settles each by the backend's answer. Calls
//! are pipelined: the next batch is delivered while the last one's outcomes are being
//! recorded, and outcomes that arrive meanwhile are recorded together (`Settler`).
//! Transient failures (the backend down, slow or failing) retry the same items without
//! limit, with exponential backoff and jitter; an item the backend refuses as invalid is
//! retried later and dead-lettered after `max_attempts`.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::domain::outcome::scrub_reason;
use crate::domain::time::now_millis;
use crate::pii::Pii;
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
    /// How long a call of fewer than `batch_size` items (and under half the size limit
    /// of a call) is held for more to become due (once per call). Live traffic (one
    /// order per ingest transaction) then reaches the backend in calls of hundreds of
    /// items, and the gateway's single writer records their outcomes a few times a
    /// second instead of after every ingest transaction; a backlog is sent at once, in
    /// full calls.
    pub linger: Duration,
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

    /// Delivers the items; the answer has one result per item, in order. Nothing is
    /// sent when a stored item does not decode ([`Failure::Unreadable`]).
    async fn deliver(
        &mut self,
        items: &[DueItem],
        timeout: Duration,
    ) -> Result<proto::DeliverResponse, Failure> {
        let unavailable =
            |s: tonic::Status| Failure::Backend(format!("{}: {}", s.code(), s.message()));
        let call = async {
            match self {
                Backend::SocialSecurity(c) => {
                    let items = decoded::<proto::SocialSecurityItem>(items)?;
                    c.deliver(proto::DeliverSocialSecurityRequest { items })
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(unavailable)
                }
                Backend::Tax(c) => {
                    let items = decoded::<proto::TaxItem>(items)?;
                    c.deliver(proto::DeliverTaxRequest { items })
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(unavailable)
                }
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Backend(format!("no answer within {timeout:?}"))),
        }
    }
}

/// Why a call was not delivered.
enum Failure {
    /// These stored items (seqs) do not decode: they are dead-lettered, the others
    /// are sent again at once.
    Unreadable(Vec<i64>),
    /// The backend did not answer, or answered with an error: retried with backoff.
    Backend(String),
}

/// The items decoded, or the seqs of those that do not decode.
fn decoded<M: Message + Default>(items: &[DueItem]) -> Result<Vec<M>, Failure> {
    let mut out = Vec::with_capacity(items.len());
    let mut bad = Vec::new();
    for i in items {
        match M::decode(i.payload.as_slice()) {
            Ok(m) => out.push(m),
            Err(_) => bad.push(i.seq),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(Failure::Unreadable(bad))
    }
}

/// Why an unreadable item is dead-lettered (the administrator's dead-letter list
/// shows it; no personal data).
const UNREADABLE: &str =
    "the stored item cannot be read (its payload does not open or decode): repair or discard it";

/// Dead-letters stored items that cannot be read, at once: retrying cannot help, and
/// left pending they would hold back every item after them. Logged by seq.
async fn dead_letter_unreadable(store: &dyn Store, destination: Destination, seqs: &[i64]) {
    tracing::error!(
        destination = destination.as_str(),
        ?seqs,
        "stored items cannot be read; dead-lettered"
    );
    let now = now_millis();
    let outcomes: Vec<_> = seqs
        .iter()
        .map(|&seq| {
            (
                seq,
                DeliveryOutcome::Invalid {
                    reason: UNREADABLE.to_string(),
                    retry_at: now,
                },
            )
        })
        .collect();
    // One attempt: the item is dead at once. If this fails the items stay pending
    // and are found unreadable again at the next read.
    if let Err(e) = store.settle(&outcomes, 1, now).await {
        tracing::warn!(destination = destination.as_str(), error = %e, "cannot dead-letter unreadable items");
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

/// The outcomes of delivered batches on their way into the store. A settlement runs
/// while the next batch is delivered, and the outcomes of batches delivered meanwhile
/// are settled together by the next one (issue 13: delivering and settling one batch
/// after the other left the backend idle while the gateway's single writer, busy with
/// ingest, recorded the last answer).
///
/// Delivered items stay pending in the store until settled, so they are excluded from
/// the next take (`unsettled`); an item that waits for one of them is not due either,
/// since its predecessor is still pending, so a correction still never overtakes its
/// original. A failed settlement leaves its items pending: they are delivered again,
/// and the backends drop the repeats by idempotency key.
struct Settler {
    store: Arc<dyn Store>,
    destination: Destination,
    max_attempts: u32,
    /// The settlement under way, and what it settles.
    running: Option<(JoinHandle<crate::store::Result<()>>, Unsettled)>,
    waiting: Vec<(i64, DeliveryOutcome)>,
    /// The span of each call whose outcomes wait in `waiting`.
    waiting_calls: Vec<RangeInclusive<i64>>,
}

/// What is delivered and not yet settled: the span of each call, first seq to last
/// (what the store leaves out: [`crate::store::OutboxRepo::due_items`]). Every item read is outside them,
/// so no item of a call is read again.
type Unsettled = Vec<RangeInclusive<i64>>;

/// A call's items from its first seq to its last; None for no items.
fn span(due: &[DueItem]) -> Option<RangeInclusive<i64>> {
    let first = due.iter().map(|i| i.seq).min()?;
    let last = due.iter().map(|i| i.seq).max()?;
    Some(first..=last)
}

impl Settler {
    fn new(store: Arc<dyn Store>, destination: Destination, max_attempts: u32) -> Self {
        Self {
            store,
            destination,
            max_attempts,
            running: None,
            waiting: Vec::new(),
            waiting_calls: Vec::new(),
        }
    }

    /// What is delivered and not yet recorded.
    fn unsettled(&self) -> Unsettled {
        let running = self.running.iter().flat_map(|(_, calls)| calls);
        running.chain(&self.waiting_calls).cloned().collect()
    }

    fn busy(&self) -> bool {
        self.running.is_some() || !self.waiting.is_empty()
    }

    fn running_done(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|(task, _)| task.is_finished())
    }

    /// Starts settling the waiting outcomes unless a settlement is running.
    fn start(&mut self) {
        if self.running.is_some() || self.waiting.is_empty() {
            return;
        }
        let outcomes = std::mem::take(&mut self.waiting);
        let settling = std::mem::take(&mut self.waiting_calls);
        let (store, max_attempts) = (self.store.clone(), self.max_attempts);
        let task =
            tokio::spawn(async move { store.settle(&outcomes, max_attempts, now_millis()).await });
        self.running = Some((task, settling));
    }

    /// Waits for the running settlement: false if it failed (logged; its items stay
    /// pending and are delivered again).
    async fn finish(&mut self) -> bool {
        let Some((task, _)) = self.running.take() else {
            return true;
        };
        let error = match task.await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("settlement stopped: {e}"),
        };
        tracing::warn!(destination = self.destination.as_str(), error = %error, "cannot record deliveries");
        false
    }

    /// Settles everything delivered so far.
    async fn flush(&mut self) {
        self.finish().await;
        self.start();
        self.finish().await;
    }
}

/// Payload bytes per Deliver call, at most (one item is sent whatever its size): below
/// gRPC's customary 4 MiB message limit at the receiving backend, so a batch of large
/// items (accidents with long descriptions) is cut short rather than refused.
const MAX_CALL_BYTES: usize = 3 * 1024 * 1024;

/// Batches delivered but not yet settled, at most, besides the one being settled,
/// before the dispatcher waits for the store (bounds what a crash makes it deliver
/// again). A settlement gets the single writer once per ingest transaction while a
/// platform ingests without pause, and one transaction queues up to two items per
/// record of a group ([`crate::ingest::group::MAX_GROUP_RECORDS`]: an order and its
/// daily enrolment): at the default `forward.batch_size` (2000), ten batches settle
/// what one full group queued (issue 13: at 3, delivery of a 1,000,000-order submit
/// fell to 0.73 of its queueing once `SubmitStream` chunks shared transactions).
const MAX_UNSETTLED_BATCHES: usize = 10;

/// Starts the dispatcher of `backend`'s destination; it runs until `stop` turns true,
/// then records what it delivered.
pub fn spawn(
    store: Arc<dyn Store>,
    pii: Pii,
    mut backend: Backend,
    settings: DispatchSettings,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let destination = backend.destination();
        let mut backoff = Backoff::new(settings.min_backoff, settings.max_backoff);
        let mut settler = Settler::new(store.clone(), destination, settings.max_attempts);
        let batch = settings.batch_size as usize;
        let mut prefetched: Option<Vec<DueItem>> = None;
        // The items of a short call were held once already: send what is due now.
        let mut lingered = false;
        loop {
            if *stop.borrow() {
                settler.flush().await;
                return;
            }
            let mut pause = None;
            if settler.running_done() || settler.waiting.len() >= batch * MAX_UNSETTLED_BATCHES {
                if settler.finish().await {
                    backoff.reset();
                } else {
                    pause = Some(backoff.step());
                }
            }
            settler.start();
            if pause.is_none() {
                let skip = settler.unsettled();
                // The items read while the last call was delivered, if it succeeded;
                // read again when none of them is left, since more may be due by now.
                let due = match prefetched
                    .take()
                    .map(|d| next_call(d, batch, MAX_CALL_BYTES))
                {
                    Some(due) if !due.is_empty() => due,
                    _ => take(&*store, &pii, destination, &skip, batch).await,
                };
                if !lingered && !settings.linger.is_zero() && short(&due, batch, MAX_CALL_BYTES) {
                    lingered = true;
                    tokio::select! {
                        _ = tokio::time::sleep(settings.linger) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
                lingered = false;
                if due.is_empty() {
                    if settler.busy() {
                        // What is due next may wait for what is being recorded.
                        if !settler.finish().await {
                            pause = Some(backoff.step());
                        }
                    } else {
                        tokio::select! {
                            _ = wake.notified() => {}
                            _ = tokio::time::sleep(settings.idle_poll) => {}
                            _ = stop.changed() => {}
                        }
                    }
                } else {
                    // The next call's items are read while this one is delivered: they
                    // skip this call's items, and an item that waits for one of them
                    // is not due, as it is still pending (issue 13: reading took
                    // nearly half of each delivery cycle).
                    let ahead: Unsettled = skip.iter().cloned().chain(span(&due)).collect();
                    let (outcome, next) = tokio::join!(
                        deliver(&mut backend, &due, &settings, &mut settler, &mut backoff),
                        take(&*store, &pii, destination, &ahead, batch)
                    );
                    pause = outcome;
                    prefetched = pause.is_none().then_some(next);
                }
            }
            if let Some(wait) = pause {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    })
}

/// Whether a call of `due` is short enough to wait for more items: fewer than `batch`
/// items and under half of `max_bytes` (a call cut by its size is full: a backlog of
/// large items is sent without waiting).
fn short(due: &[DueItem], batch: usize, max_bytes: usize) -> bool {
    !due.is_empty()
        && due.len() < batch
        && due.iter().map(|i| i.payload.len()).sum::<usize>() < max_bytes / 2
}

/// Reads the due items of `destination` outside the calls in `skip` (which the store
/// leaves out, so their payloads are not read again: issue 13's profile found the
/// readers busier than the writer re-reading them) and keeps those of the next call
/// (`next_call`), their payloads opened by `pii` (one that does not open is
/// dead-lettered); none when the outbox cannot be read (logged; the dispatcher tries
/// again).
async fn take(
    store: &dyn Store,
    pii: &Pii,
    destination: Destination,
    skip: &Unsettled,
    batch: usize,
) -> Vec<DueItem> {
    let limit = u32::try_from(batch).unwrap_or(u32::MAX);
    match store
        .due_items(destination, now_millis(), limit, skip)
        .await
    {
        Ok(due) => {
            let mut readable = Vec::with_capacity(due.len());
            let mut unreadable = Vec::new();
            for mut i in due {
                match pii.open_payload(std::mem::take(&mut i.payload)) {
                    Ok(clear) => {
                        i.payload = clear;
                        readable.push(i);
                    }
                    Err(_) => unreadable.push(i.seq),
                }
            }
            if !unreadable.is_empty() {
                dead_letter_unreadable(store, destination, &unreadable).await;
            }
            next_call(readable, batch, MAX_CALL_BYTES)
        }
        Err(e) => {
            tracing::warn!(destination = destination.as_str(), error = %e, "outbox unreadable");
            Vec::new()
        }
    }
}

/// The items of the next call: the due ones in order, at most `batch` and at most
/// `max_bytes` of payload (the first whatever its size). None of them is delivered and
/// unsettled: they were read outside every unsettled call, and those read ahead,
/// while the last call was delivered, outside that call too.
fn next_call(due: Vec<DueItem>, batch: usize, max_bytes: usize) -> Vec<DueItem> {
    let mut bytes = 0;
    due.into_iter()
        .take(batch)
        .enumerate()
        .take_while(|(n, i)| {
            bytes += i.payload.len();
            *n == 0 || bytes <= max_bytes
        })
        .map(|(_, i)| i)
        .collect()
}

/// Delivers `due` in one call and hands the outcomes to `settler`; the pause before
/// the next call when the backend failed.
async fn deliver(
    backend: &mut Backend,
    due: &[DueItem],
    settings: &DispatchSettings,
    settler: &mut Settler,
    backoff: &mut Backoff,
) -> Option<Duration> {
    let destination = backend.destination();
    match backend.deliver(due, settings.request_timeout).await {
        Ok(answer) if answer.results.len() == due.len() => {
            let retry_at = now_millis() + settings.invalid_retry.as_millis() as i64;
            settler.waiting_calls.extend(span(due));
            settler.waiting.extend(due.iter().zip(&answer.results).map(|(item, r)| {
                let outcome = match r.result() {
                    proto::DeliveryResult::Delivered | proto::DeliveryResult::Repeated => {
                        DeliveryOutcome::Delivered
                    }
                    _ => {
                        let reason = scrub_reason(&r.reason);
                        tracing::warn!(destination = destination.as_str(), key = %item.idempotency_key,
                            attempts = item.attempts + 1, reason = %reason, "backend refused an item");
                        DeliveryOutcome::Invalid { reason, retry_at }
                    }
                };
                (item.seq, outcome)
            }));
            None
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
        Err(Failure::Unreadable(seqs)) => {
            dead_letter_unreadable(settler.store.as_ref(), destination, &seqs).await;
            Some(Duration::ZERO)
        }
        Err(Failure::Backend(e)) => {
            let wait = backoff.step();
            tracing::warn!(destination = destination.as_str(), error = %e, retry_in_ms = wait.as_millis() as u64,
                "backend unavailable; retrying");
            Some(wait)
        }
    }
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
            for d in Destination::ALL {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: i64, bytes: usize) -> DueItem {
        DueItem {
            seq,
            idempotency_key: format!("k/{seq}"),
            payload: vec![0; bytes],
            attempts: 0,
        }
    }

    fn seqs(items: &[DueItem]) -> Vec<i64> {
        items.iter().map(|i| i.seq).collect()
    }

    #[test]
    fn a_call_stops_at_the_count_or_the_bytes() {
        let due = || (1..=6).map(|s| item(s, 100)).collect::<Vec<_>>();
        assert_eq!(seqs(&next_call(due(), 4, 10_000)), vec![1, 2, 3, 4]);
        assert_eq!(seqs(&next_call(due(), 10, 250)), vec![1, 2]);
        // One item larger than the limit still goes, alone.
        let big = vec![item(7, 5_000), item(8, 10)];
        assert_eq!(seqs(&next_call(big, 10, 1_000)), vec![7]);
        assert!(next_call(Vec::new(), 10, 1_000).is_empty());
    }

    #[test]
    fn a_call_spans_its_first_seq_to_its_last() {
        assert_eq!(span(&[]), None);
        assert_eq!(span(&[item(7, 1), item(3, 1), item(12, 1)]), Some(3..=12));
    }

    #[test]
    fn only_a_call_short_of_both_its_count_and_its_size_waits_for_more() {
        let items =
            |n: usize, bytes: usize| (1..=n as i64).map(|s| item(s, bytes)).collect::<Vec<_>>();
        assert!(short(&items(3, 100), 10, 10_000));
        assert!(!short(&items(10, 100), 10, 10_000), "full by count");
        assert!(!short(&items(3, 2_000), 10, 10_000), "cut by size");
        assert!(!short(&[], 10, 10_000), "nothing to send");
    }
}
