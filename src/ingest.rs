//! One batch, end to end after validation: open the store transaction, load what the
//! rules need (the ids the batch touches, then the months and industries of its
//! orders and declarations), decide (`crosscheck`), write, commit. The outcomes are
//! returned only after the commit, so every ACCEPTED record is durable when the caller
//! hears of it.

use std::sync::{Arc, RwLock};

use crate::crosscheck::{self, Candidate, Plan, Rules, Touched};
use crate::deadline::{CallDeadline, DeadlineExceeded};
use crate::domain::PlatformProfile;
use crate::domain::fees::RateBook;
use crate::domain::period::Period;
use crate::domain::time::now_millis;
use crate::forward::outbox;
use crate::metrics::Metrics;
use crate::reconcile;
use crate::store::{Laps, Store, StoreError};

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller's deadline passed before the commit: rolled back.
    #[error(transparent)]
    DeadlineExceeded(#[from] DeadlineExceeded),
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
    /// Replaced as a whole when an administrator appends rates; each batch uses the
    /// book current when it starts.
    rates: Arc<RwLock<Arc<RateBook>>>,
    policy: Policy,
    /// Woken after every commit that queued items for delivery.
    wake: Arc<tokio::sync::Notify>,
    /// Where the stages' time is counted.
    metrics: Arc<Metrics>,
}

impl Ingest {
    pub fn new(store: Arc<dyn Store>, rates: Arc<RateBook>, policy: Policy) -> Self {
        Self {
            store,
            rates: Arc::new(RwLock::new(rates)),
            policy,
            wake: Arc::new(tokio::sync::Notify::new()),
            metrics: Arc::new(Metrics::new()),
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

    /// Applies a batch for `platform` and returns the plan (its outcomes are one per
    /// candidate, in order) once it is committed. With a `deadline`, the batch is
    /// rolled back when the deadline passes before the commit starts
    /// (`IngestError::DeadlineExceeded`; nothing is applied).
    pub async fn apply(
        &self,
        platform: &PlatformProfile,
        candidates: Vec<Candidate>,
        deadline: Option<&CallDeadline>,
        trace: &outbox::Trace,
    ) -> Result<Plan, IngestError> {
        if let Some(d) = deadline {
            d.check()?;
        }
        let mut laps = Laps::start();
        let touched = Touched::of(&candidates);
        let mut tx = self.store.begin_ingest(platform.id).await?;
        laps.lap("begin");
        if let Some(d) = deadline {
            // The wait for the platform's turn may have used it up.
            d.check()?;
        }
        let mut known = tx.load(&touched).await?;
        let scope = Touched::scope(&candidates, &known);
        tx.load_scope(&mut known, &scope).await?;
        laps.lap("load");
        let now = now_millis();
        let rates = self.rates();
        let rules = Rules {
            platform,
            rates: &rates,
            now,
            declaration_deadline_day: self.policy.declaration_deadline_day,
            accident_margin_ms: self.policy.accident_margin_ms,
        };
        let plan = crosscheck::decide(&rules, candidates, &mut known);
        laps.lap("decide");
        if !plan.is_empty() {
            let keys: Vec<_> = plan.enrolment_deltas.keys().collect();
            let before = tx.enrolment_counts(&keys).await?;
            let batch = tx.next_batch().await?;
            let outbox = outbox::items(&plan, platform, &before, batch, trace);
            laps.lap("plan");
            tx.write(&plan, &outbox, now, &mut laps).await?;
            // Dropping `tx` on the error path rolls the batch back.
            let _guard = deadline.map(CallDeadline::begin_commit).transpose()?;
            tx.commit().await?;
            laps.lap("commit");
            self.metrics.ingest_laps(&laps.laps);
            self.metrics.ingest_transaction(1);
            if !outbox.is_empty() {
                self.wake.notify_waiters();
            }
        }
        tracing::debug!(
            platform = %platform.uscc,
            records = plan.outcomes.len(),
            rejected = plan.rejections.len(),
            statements_changed = plan.statement_deltas.len(),
            "batch committed"
        );
        Ok(plan)
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
        let batch = tx.next_batch().await?;
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
