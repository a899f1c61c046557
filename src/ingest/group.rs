//! Group commit. Every call of a platform enters the platform's lane. When no
//! transaction of that platform is under way, the call's own task starts a leader
//! (a task of its own); otherwise it waits. The leader takes every call waiting in the
//! lane (in arrival order, up to [`MAX_GROUP_RECORDS`] records), applies them one after
//! another in one store transaction, commits once, and answers each call; then it
//! takes the calls that arrived meanwhile, until the lane is empty.
//!
//! Exactly what each call would get alone, applied right after the calls before it:
//! - the state the rules need is loaded once for the whole group, and each call is
//!   decided against it in turn (`crosscheck::decide` updates it as records are
//!   accepted, as it does between the records of one batch), so a later call sees the
//!   earlier ones: DUPLICATE, revisions, enrolment counts, statements, reconciliation;
//! - each call keeps its own platform profile, trace and batch number (taken in
//!   order, only by calls that write something, as alone);
//! - the writes of the calls are merged (`crosscheck::merge_writes`: the last write of
//!   each id, summed aggregate changes) and written with every call's outbox items;
//! - one commit: a failure anywhere fails every call of the group and applies none;
//!   nobody is answered before the commit.
//!
//! The lane only coalesces; it does not serialise. The store serialises a platform's
//! transactions (`IngestRepo::begin_ingest`: SQLite's single writer; on PostgreSQL, a
//! per-platform lock taken first in the transaction), so several processes may each
//! run a leader for the same platform and still compute what one process would.
//!
//! Leaders run on a thread of their own (`LeaderThread`).
//!
//! A call's deadline holds until its commit starts, as alone: a call past its
//! deadline when its group's transaction begins is left out; one whose deadline passes
//! before the commit makes the group roll back, is answered DEADLINE_EXCEEDED with
//! nothing of it applied, and the others are applied again without it in a new
//! transaction. From the commit on the deadline no longer cuts a call off
//! (`CallDeadline::begin_commit`): its answer is the outcome.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::{Ingest, IngestError};
use crate::audit::Event;
use crate::crosscheck::{self, Rules};
use crate::deadline::{CallDeadline, CommitGuard};
use crate::domain::PlatformProfile;
use crate::domain::batch::{Candidate, Plan, Touched};
use crate::domain::time::{Millis, now_millis};
use crate::forward::outbox;
use crate::store::{Laps, StoreError};

/// Records in one group transaction at most (a single larger call is a group alone).
pub const MAX_GROUP_RECORDS: usize = 10_000;

/// One call waiting for its platform's transaction.
pub(super) struct Call {
    pub work: Work,
    pub reply: oneshot::Sender<Result<Plan, IngestError>>,
}

#[derive(Default)]
struct Lane {
    waiting: VecDeque<Call>,
    /// A leader is running for the platform.
    leading: bool,
}

/// The waiting calls of every platform with calls in progress.
#[derive(Clone, Default)]
pub(super) struct Lanes(Arc<Mutex<HashMap<i64, Lane>>>);

impl Lanes {
    fn lock(&self) -> MutexGuard<'_, HashMap<i64, Lane>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `call`; true when no leader runs for the platform (the caller must start
    /// one: it is now marked as running).
    pub fn push(&self, platform_id: i64, call: Call) -> bool {
        let mut lanes = self.lock();
        let lane = lanes.entry(platform_id).or_default();
        lane.waiting.push_back(call);
        !std::mem::replace(&mut lane.leading, true)
    }

    /// The next group: waiting calls in arrival order, at least one, up to
    /// [`MAX_GROUP_RECORDS`] records. Empty when none wait: the lane is then released
    /// (the next call starts a new leader).
    fn next_group(&self, platform_id: i64) -> Vec<Call> {
        let mut lanes = self.lock();
        let Some(lane) = lanes.get_mut(&platform_id) else {
            return Vec::new();
        };
        let mut group = Vec::new();
        let mut records = 0;
        while let Some(next) = lane.waiting.front() {
            if !group.is_empty() && records + next.work.candidates.len() > MAX_GROUP_RECORDS {
                break;
            }
            records += next.work.candidates.len();
            group.extend(lane.waiting.pop_front());
        }
        if group.is_empty() {
            lanes.remove(&platform_id);
        }
        group
    }

    /// Releases the lane and returns the calls still waiting (the leader stopped).
    fn abandon(&self, platform_id: i64) -> Vec<Call> {
        self.lock()
            .remove(&platform_id)
            .map(|lane| lane.waiting.into())
            .unwrap_or_default()
    }
}

/// The thread the group-commit leaders run on: a single-threaded runtime of its own.
/// A transaction awaits the database a couple of dozen times (each a round trip to the
/// connection's thread); on the server's runtime each of those resumptions queued
/// behind TLS and HTTP/2 work, and a platform's transactions, which run one after
/// another, waited for all of it (issue 13: 5.8k single-order calls/s on the server's
/// runtime, 6.8k here, three alternating runs each). The thread ends when the last
/// clone of its `Ingest` is dropped (a running leader holds one).
pub(super) struct LeaderThread {
    handle: tokio::runtime::Handle,
    /// Dropped with the last `Ingest`: the thread's runtime then stops.
    _stop: oneshot::Sender<()>,
}

impl LeaderThread {
    pub fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("oip-ingest".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    pub fn spawn(&self, lead: impl std::future::Future<Output = ()> + Send + 'static) {
        self.handle.spawn(lead);
    }
}

/// Fails the waiting calls and releases the lane if the leader stops without having
/// emptied it (a panic): no call waits for ever. A leader that emptied its lane has
/// released it already (a new leader may own it by now): `done` then leaves it alone.
struct Leading {
    lanes: Lanes,
    platform_id: i64,
    done: bool,
    /// The streams of the group under way: stopped with it, so that none of their
    /// later parts is applied by a new leader.
    current: Vec<Sequence>,
}

impl Drop for Leading {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for s in &self.current {
            s.stop(stopped());
        }
        for call in self.lanes.abandon(self.platform_id) {
            if let Some(s) = &call.work.sequence {
                s.stop(stopped());
            }
            let _ = call.reply.send(Err(stopped()));
        }
    }
}

/// The answer of a call whose transaction stopped without answering it.
pub(super) fn stopped() -> IngestError {
    IngestError::Store(StoreError::Unavailable(
        "the platform's ingest transaction stopped".into(),
    ))
}

impl Ingest {
    /// Leads the platform's lane until it is empty.
    pub(super) async fn lead(&self, platform_id: i64) {
        let mut leading = Leading {
            lanes: self.lanes.clone(),
            platform_id,
            done: false,
            current: Vec::new(),
        };
        loop {
            let group = self.lanes.next_group(platform_id);
            if group.is_empty() {
                // `next_group` released the lane.
                leading.done = true;
                return;
            }
            leading.current = group
                .iter()
                .filter_map(|c| c.work.sequence.clone())
                .collect();
            self.commit_group(group).await;
        }
    }

    /// Applies a group in one transaction and answers each call. When the deadline of
    /// some calls passes before the commit, the transaction is rolled back, those calls
    /// are answered DEADLINE_EXCEEDED and the others are applied again without them.
    async fn commit_group(&self, calls: Vec<Call>) {
        let mut replies = Vec::with_capacity(calls.len());
        let mut work = Vec::with_capacity(calls.len());
        for call in calls {
            replies.push(call.reply);
            work.push(call.work);
        }
        loop {
            let live = work.iter().filter(|w| w.answer.is_none()).count();
            // Kept to be applied again if another call's deadline passes before the
            // commit (only then can a call be taken out of a transaction).
            let again: Option<Vec<Vec<Candidate>>> = (live > 1
                && work
                    .iter()
                    .any(|w| w.answer.is_none() && w.deadline.is_some()))
            .then(|| work.iter().map(|w| w.candidates.clone()).collect());
            match self.transact(&mut work).await {
                Ok(()) => break,
                Err(Failure::Expired) => match again {
                    Some(again) => {
                        for (w, candidates) in work.iter_mut().zip(again) {
                            w.candidates = candidates;
                        }
                    }
                    None => break,
                },
                Err(Failure::Failed(e)) => {
                    for w in work.iter_mut().filter(|w| w.answer.is_none()) {
                        w.fail(e.clone());
                    }
                    break;
                }
            }
        }
        for (reply, w) in replies.into_iter().zip(work) {
            let _ = reply.send(w.answer.unwrap_or_else(|| Err(stopped())));
        }
    }

    /// One transaction for the calls of `work` not yet answered; each gets its answer.
    /// `Failure::Expired`: rolled back because the deadline of some calls passed before
    /// the commit (they are answered; the others are not, and their candidates were
    /// used up). `Failure::Failed`: rolled back, every call unanswered fails with it.
    async fn transact(&self, work: &mut [Work]) -> Result<(), Failure> {
        let mut laps = Laps::start();
        let Some(platform_id) = work.first().map(|w| w.platform.id) else {
            return Ok(());
        };
        let mut tx = self.store.begin_ingest(platform_id).await?;
        laps.lap("begin");
        // The wait for the platform's turn may have used deadlines up; a part of a
        // stream whose earlier part failed is not applied (in order: a part that fails
        // here stops the later ones of its stream).
        for w in work.iter_mut().filter(|w| w.answer.is_none()) {
            if let Some(Err(e)) = w.deadline.as_ref().map(CallDeadline::check) {
                w.fail(e.into());
            } else if let Some(e) = w.sequence.as_ref().and_then(Sequence::stopped) {
                w.answer = Some(Err(e));
            }
        }
        let live: Vec<usize> = (0..work.len())
            .filter(|&i| work[i].answer.is_none())
            .collect();
        // Workers kept from earlier transactions are not read again, if no other
        // process has written the platform's workers since (`workers`).
        let touched = Touched::of(live.iter().flat_map(|&i| &work[i].candidates));
        let (mut known, loaded) = self
            .workers
            .load(&mut *tx, &self.pii, platform_id, touched)
            .await?;
        let scope = Touched::scope(live.iter().flat_map(|&i| &work[i].candidates), &known);
        tx.load_scope(&mut known, &scope).await?;
        laps.lap("load");
        let now = now_millis();
        let rates = self.rates();
        // Statements that exist as rows: a later call loading afresh would find those,
        // and not a key whose changes within one call summed to zero (never written).
        let mut stored: std::collections::HashSet<_> = known.statements.keys().cloned().collect();
        let mut plans: Vec<(usize, Plan)> = Vec::with_capacity(live.len());
        for &i in &live {
            let w = &mut work[i];
            let rules = Rules {
                platform: &w.platform,
                rates: &rates,
                now,
                declaration_deadline_day: self.policy.declaration_deadline_day,
                accident_margin_ms: self.policy.accident_margin_ms,
            };
            let candidates = std::mem::take(&mut w.candidates);
            let plan = crosscheck::decide(&rules, candidates, &mut known);
            stored.extend(plan.statement_deltas.keys().cloned());
            known.statements.retain(|k, _| stored.contains(k));
            plans.push((i, plan));
        }
        laps.lap("decide");
        let writing: Vec<usize> = (0..plans.len())
            .filter(|&k| !plans[k].1.is_empty())
            .collect();
        let entries: Vec<(Event, Millis)> = plans
            .iter()
            .flat_map(|(i, _)| work[*i].audit.clone())
            .map(|e| (e, now_millis()))
            .collect();
        // The workers this transaction writes (the store raises the workers version).
        let mut written: HashSet<String> = HashSet::new();
        if !writing.is_empty() || !entries.is_empty() {
            let mut queued = false;
            if !writing.is_empty() {
                let mut items = Vec::new();
                let keys: Vec<_> = {
                    let mut keys: Vec<_> = writing
                        .iter()
                        .flat_map(|&k| plans[k].1.enrolment_deltas.keys())
                        .collect();
                    keys.sort();
                    keys.dedup();
                    keys
                };
                let mut counts = tx.enrolment_counts(&keys).await?;
                let first_batch = tx.take_batches(writing.len() as u64).await?;
                for (n, &k) in writing.iter().enumerate() {
                    let (i, plan) = &plans[k];
                    let w = &work[*i];
                    items.extend(outbox::items(
                        plan,
                        &w.platform,
                        &counts,
                        first_batch + n as u64,
                        &w.trace,
                    ));
                    for (key, delta) in &plan.enrolment_deltas {
                        *counts.entry(key.clone()).or_default() += delta;
                    }
                }
                let mut writes: Vec<&mut Plan> = plans.iter_mut().map(|(_, p)| p).collect();
                let merged = crosscheck::merge_writes(&mut writes);
                written.extend(merged.workers.iter().map(|w| w.record.worker_id.clone()));
                laps.lap("plan");
                queued = !items.is_empty();
                let sealed = self.pii.seal_writes(platform_id, &merged);
                self.pii.seal_outbox(&mut items);
                tx.write(&merged, &sealed, items, now, &mut laps).await?;
            }
            if !entries.is_empty() {
                let head = tx.audit_head().await?;
                tx.append_audit(&crate::audit::chain(head, entries)).await?;
                laps.lap("audit");
            }
            // Right before the commit: a call past its deadline is rolled back (with
            // the others, applied again without it); the rest are committing from here,
            // and the deadline no longer cuts them off.
            // The parts of one stream share its deadline: one guard for them all.
            let mut guards: Vec<CommitGuard> = Vec::with_capacity(plans.len());
            let mut expired = false;
            for (i, _) in &plans {
                let Some(d) = work[*i].deadline.clone() else {
                    continue;
                };
                if guards.iter().any(|g| g.guards(&d)) {
                    continue;
                }
                match d.begin_commit() {
                    Ok(g) => guards.push(g),
                    Err(e) => {
                        for (k, _) in &plans {
                            if work[*k].deadline.as_ref().is_some_and(|o| o.same(&d)) {
                                work[*k].fail(e.into());
                            }
                        }
                        expired = true;
                    }
                }
            }
            if expired {
                return Err(Failure::Expired);
            }
            tx.commit().await?;
            laps.lap("commit");
            if let Some(read) = known.workers_version {
                self.workers.committed(platform_id, read, loaded, &written);
            }
            for g in guards {
                g.committed();
            }
            if queued {
                self.wake.notify_waiters();
            }
        }
        self.metrics.ingest_laps(&laps.laps);
        self.metrics.ingest_transaction(plans.len());
        tracing::debug!(
            calls = plans.len(),
            records = plans.iter().map(|(_, p)| p.outcomes.len()).sum::<usize>(),
            "ingest transaction committed"
        );
        for (i, plan) in plans {
            work[i].answer = Some(Ok(plan));
        }
        Ok(())
    }
}

/// Why a group transaction was rolled back.
enum Failure {
    /// Some calls' deadlines passed before the commit (they are answered).
    Expired,
    /// The store failed: every call still in the transaction fails.
    Failed(IngestError),
}

impl<E: Into<IngestError>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Failed(e.into())
    }
}

/// A call's part of a group transaction, and its answer once it has one (None while
/// it waits).
pub(super) struct Work {
    pub platform: PlatformProfile,
    pub candidates: Vec<Candidate>,
    pub deadline: Option<CallDeadline>,
    pub trace: outbox::Trace,
    /// The call's audit entries (a stream's part, and the call's own when the part is
    /// the last), written in this order in the transaction that stores its records.
    pub audit: Vec<Event>,
    /// The stream the call is a part of, when its parts are queued before the earlier
    /// ones are answered: it is applied only if every earlier part was.
    pub sequence: Option<Sequence>,
    pub answer: Option<Result<Plan, IngestError>>,
}

impl Work {
    /// Answers the call with `e` (not applied); its stream's later parts will not be
    /// applied either.
    fn fail(&mut self, e: IngestError) {
        if let Some(s) = &self.sequence {
            s.stop(e.clone());
        }
        self.answer = Some(Err(e));
    }
}

/// The parts of one stream queued in order, each before the earlier ones are answered
/// (a `SubmitStream` that reads ahead): once a part fails (or the stream stops), no
/// later part is applied, as if the stream had been applied part after part. Cheap to
/// clone; every part holds the same.
#[derive(Clone, Default)]
pub struct Sequence(Arc<Mutex<Option<IngestError>>>);

impl Sequence {
    /// Stops the stream: parts not yet in a transaction are answered `e` (the first
    /// reason is kept) and not applied.
    pub fn stop(&self, e: IngestError) {
        let mut first = self.0.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(e);
    }

    /// Why the stream stopped, if it did.
    fn stopped(&self) -> Option<IngestError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
