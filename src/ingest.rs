//! One batch, end to end after validation: open the store transaction, load what the
//! rules need (the ids the batch touches, then the months and industries of its
//! orders and declarations), decide (`crosscheck`), write, commit. The outcomes are
//! returned only after the commit, so every ACCEPTED record is durable when the caller
//! hears of it. Calls of one platform that arrive together share one transaction
//! (group commit, [`group`]).

use std::sync::{Arc, RwLock};

use crate::deadline::{CallDeadline, DeadlineExceeded};
use crate::domain::PlatformProfile;
use crate::domain::batch::{Candidate, Plan};
use crate::domain::fees::RateBook;
use crate::domain::period::Period;
use crate::domain::reconcile;
use crate::domain::time::now_millis;
use crate::forward::outbox;
use crate::metrics::Metrics;
use crate::pii::Pii;
use crate::store::{Store, StoreError};

pub mod group;
pub mod workers;

pub use group::Sequence;

/// Why a batch was not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller's deadline passed before the commit: rolled back.
    #[error(transparent)]
    DeadlineExceeded(#[from] DeadlineExceeded),
    /// A part of a stream not applied because the stream stopped before its
    /// transaction began (its caller went away or the stream broke; see
    /// [`Sequence::stop`]).
    #[error("the stream stopped before this part was applied; nothing of it was applied")]
    NotApplied,
}

/// Settings of the rules that come from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub declaration_deadline_day: u32,
    pub accident_margin_ms: i64,
}

#[derive(Clone)]
pub struct Ingest {
    store: Arc<dyn Store>,
    /// Seals the personal data of what is written and opens what is loaded.
    pii: Pii,
    /// Replaced as a whole when an administrator appends rates; each batch uses the
    /// book current when it starts.
    rates: Arc<RwLock<Arc<RateBook>>>,
    policy: Policy,
    /// Woken after every commit that queued items for delivery.
    wake: Arc<tokio::sync::Notify>,
    /// Where the stages' time is counted.
    metrics: Arc<Metrics>,
    /// Calls waiting for their platform's next transaction.
    lanes: group::Lanes,
    /// Where the leaders of group transactions run (None: on the caller's runtime,
    /// when the thread could not be started).
    leaders: Option<Arc<group::LeaderThread>>,
    /// Stored workers' state kept between transactions, coherent through the
    /// platform's workers version.
    workers: Arc<workers::WorkerCache>,
}

impl Ingest {
    pub fn new(store: Arc<dyn Store>, pii: Pii, rates: Arc<RateBook>, policy: Policy) -> Self {
        Self {
            store,
            pii,
            rates: Arc::new(RwLock::new(rates)),
            policy,
            wake: Arc::new(tokio::sync::Notify::new()),
            metrics: Arc::new(Metrics::new()),
            lanes: group::Lanes::default(),
            leaders: group::LeaderThread::start()
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "cannot start the ingest thread; leading on the server's runtime")
                })
                .ok()
                .map(Arc::new),
            workers: Arc::default(),
        }
    }

    /// Counts the stages' time in `metrics` (by default in metrics of its own).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// What the forwarding dispatchers wait on.
    pub fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// The rate book the rules use now.
    pub fn rates(&self) -> Arc<RateBook> {
        match self.rates.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the rate book (after rates were appended to the store).
    pub fn set_rates(&self, book: RateBook) {
        let book = Arc::new(book);
        match self.rates.write() {
            Ok(mut r) => *r = book,
            Err(poisoned) => *poisoned.into_inner() = book,
        }
    }

    /// Applies a batch and waits for its plan: [`Ingest::queue`] without a sequence.
    pub async fn apply(
        &self,
        platform: &PlatformProfile,
        candidates: Vec<Candidate>,
        deadline: Option<&CallDeadline>,
        trace: &outbox::Trace,
        audit: Vec<crate::audit::Event>,
    ) -> Result<Plan, IngestError> {
        self.queue(platform, candidates, deadline, trace, audit, None)?
            .await
    }

    /// Queues a batch for `platform` in the platform's lane now, and returns a future of
    /// the plan (its outcomes are one per candidate, in order; its writes are taken out)
    /// once it is committed: a stream queues its next part while the earlier ones are
    /// being applied, and they are applied in the order queued.
    ///
    /// Group commit: calls of one platform that arrive while its previous transaction
    /// is under way wait in the platform's lane and are then applied together, in
    /// arrival order, in one transaction (see [`group`]). Each call's outcomes are those
    /// it would get alone, applied right after the calls before it; a failed
    /// transaction fails every call in it and applies none.
    ///
    /// With a `deadline`, the call fails with `IngestError::DeadlineExceeded` and
    /// nothing of it is applied when the deadline passes before its commit starts.
    /// `audit` holds the call's entries (outcome OK: a stream's part, and the call's own
    /// entry when the part is the stream's last), appended to the audit chain in this
    /// order in the same transaction: the records and their entries commit together or
    /// not at all.
    ///
    /// With a `sequence`, a part is applied only if every earlier part queued with the
    /// same sequence was (see [`Sequence`]); otherwise it is answered with the earlier
    /// part's failure.
    ///
    /// Err at once (nothing queued) when the deadline has passed.
    pub fn queue(
        &self,
        platform: &PlatformProfile,
        candidates: Vec<Candidate>,
        deadline: Option<&CallDeadline>,
        trace: &outbox::Trace,
        audit: Vec<crate::audit::Event>,
        sequence: Option<&Sequence>,
    ) -> Result<impl std::future::Future<Output = Result<Plan, IngestError>> + use<>, IngestError>
    {
        if let Some(d) = deadline {
            d.check()?;
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let call = group::Call {
            work: group::Work {
                platform: platform.clone(),
                candidates,
                deadline: deadline.cloned(),
                trace: trace.clone(),
                audit,
                sequence: sequence.cloned(),
                answer: None,
            },
            reply,
        };
        if self.lanes.push(platform.id, call) {
            // No transaction of this platform is under way: lead one (in a task of its
            // own, so that a caller who goes away does not strand the others).
            let ingest = self.clone();
            let platform_id = platform.id;
            let lead = async move { ingest.lead(platform_id).await };
            match &self.leaders {
                Some(thread) => thread.spawn(lead),
                None => drop(tokio::spawn(lead)),
            }
        }
        Ok(async move { answer.await.unwrap_or_else(|_| Err(group::stopped())) })
    }

    /// Releases a platform's month to tax: closes it (rated as of now, unless its first
    /// declaration closed it earlier) and queues every statement of the month, in the
    /// platform's serialised transaction, so a concurrent batch either counts in what
    /// is released or is sent as a correction after it. Returns the number of
    /// statements queued; 0 when the month was already released.
    pub async fn release_month(
        &self,
        platform: &PlatformProfile,
        period: Period,
    ) -> Result<usize, StoreError> {
        let mut tx = self.store.begin_ingest(platform.id).await?;
        let month = tx.month(period).await?;
        if month.released {
            return Ok(0);
        }
        let now = now_millis();
        let closed_at = month.closed_at.unwrap_or(now);
        let rates = self.rates();
        let mut statements: Vec<_> = month
            .statements
            .iter()
            .map(|(key, count)| {
                reconcile::rate_statement(platform, &rates, key, *count, Some(closed_at))
            })
            .collect();
        statements.sort_by(|a, b| a.key.cmp(&b.key));
        let batch = tx.take_batches(1).await?;
        let items: Vec<_> = outbox::statements(
            platform,
            statements.iter().map(|s| (s, false)),
            batch,
            &outbox::Trace::default(),
        )
        .collect();
        tx.release(period, now, &items).await?;
        tx.commit().await?;
        self.wake.notify_waiters();
        tracing::info!(platform = %platform.uscc, %period, statements = items.len(), "month released to tax");
        Ok(items.len())
    }
}
