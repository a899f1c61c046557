//! `oip.v1.PlatformService`: batch and streaming ingestion, and read-back of the
//! caller's own records and rejections.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::access::Access;
use crate::api::paging;
use crate::audit::CallNote;
use crate::config::Limits;
use crate::deadline::CallDeadline;
use crate::domain::batch::{Candidate, Plan};
use crate::domain::fees::{Figures, ReconciliationStatus};
use crate::domain::ids::{mask_id_number, mask_mobile, mask_name};
use crate::domain::period::Period;
use crate::domain::reconcile;
use crate::domain::time::{now_millis, to_rfc3339};
use crate::domain::{Outcome, PlatformProfile, Record, RecordKind};
use crate::error::{self, ApiError};
use crate::identity::Principal;
use crate::ingest::{Ingest, Sequence};
use crate::pii::Pii;
use crate::proto::{self, platform_service_server::PlatformService};
use crate::reference::Reference;
use crate::store::{PageRequest, Store, StoreError};
use crate::validate;

/// Response metadata of `SubmitStream`: the most records a chunk may carry.
pub const MAX_BATCH_RECORDS_HEADER: &str = "x-oip-max-batch-records";
/// Response metadata of `SubmitStream`: the largest message accepted, in bytes.
pub const MAX_MESSAGE_BYTES_HEADER: &str = "x-oip-max-message-bytes";

/// Listing names, which tag their page tokens.
const WORKERS: &str = "workers";
const ORDERS: &str = "orders";
const REJECTIONS: &str = "rejections";
const DECLARATIONS: &str = "declarations";

#[derive(Clone)]
pub struct PlatformApi {
    pub access: Access,
    pub ingest: Ingest,
    pub store: Arc<dyn Store>,
    /// Opens the workers' personal data a listing shows (masked).
    pub pii: Pii,
    pub reference: Arc<Reference>,
    pub limits: Limits,
    /// Writes the intent entries of changes (see `started`).
    pub auditor: crate::audit::Auditor,
    /// The callers' records-a-second rates (see `started`).
    pub admission: Arc<crate::admission::Admission>,
    /// Counts answered records (`oip_records_total`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// How a record of a call is named in outcomes: its kind, id, revision and the
/// prefix of its field paths (`orders[3].`).
struct Named {
    /// None for a record that names no kind.
    kind: Option<RecordKind>,
    id: String,
    revision: u32,
    path: String,
}

/// Wire records that can enter the pipeline.
trait WireRecord {
    const LIST: &'static str;
    fn name(&self, index: usize) -> Named;
    fn validate(&self, ctx: &validate::Context<'_>) -> Result<Record, crate::domain::Rejection>;
}

impl WireRecord for proto::Worker {
    const LIST: &'static str = "workers";
    fn name(&self, index: usize) -> Named {
        named(
            RecordKind::Worker,
            validate::name_of(&self.worker_id, self.revision),
            format!("workers[{index}]."),
        )
    }
    fn validate(&self, ctx: &validate::Context<'_>) -> Result<Record, crate::domain::Rejection> {
        validate::worker(self, ctx).map(Record::Worker)
    }
}

impl WireRecord for proto::Order {
    const LIST: &'static str = "orders";
    fn name(&self, index: usize) -> Named {
        named(
            RecordKind::Order,
            validate::name_of(&self.order_id, self.revision),
            format!("orders[{index}]."),
        )
    }
    fn validate(&self, ctx: &validate::Context<'_>) -> Result<Record, crate::domain::Rejection> {
        validate::order(self, ctx).map(Record::Order)
    }
}

impl WireRecord for proto::Declaration {
    const LIST: &'static str = "declarations";
    fn name(&self, index: usize) -> Named {
        named(
            RecordKind::Declaration,
            validate::name_of(&self.declaration_id, self.revision),
            format!("declarations[{index}]."),
        )
    }
    fn validate(&self, ctx: &validate::Context<'_>) -> Result<Record, crate::domain::Rejection> {
        validate::declaration(self, ctx).map(Record::Declaration)
    }
}

impl WireRecord for proto::Accident {
    const LIST: &'static str = "accidents";
    fn name(&self, index: usize) -> Named {
        named(
            RecordKind::Accident,
            validate::name_of(&self.report_id, self.revision),
            format!("accidents[{index}]."),
        )
    }
    fn validate(&self, ctx: &validate::Context<'_>) -> Result<Record, crate::domain::Rejection> {
        validate::accident(self, ctx).map(Record::Accident)
    }
}

fn wire_figures(f: Figures) -> proto::Figures {
    proto::Figures {
        order_count: f.order_count,
        amount_fen: f.amount_fen,
    }
}

fn wire_reconciliation(
    declared: Figures,
    computed: Figures,
    status: ReconciliationStatus,
) -> proto::Reconciliation {
    proto::Reconciliation {
        status: status.as_str().to_string(),
        declared: Some(wire_figures(declared)),
        computed: Some(wire_figures(computed)),
    }
}

impl WireRecord for proto::Record {
    const LIST: &'static str = "records";
    fn name(&self, index: usize) -> Named {
        match validate::identity(self) {
            Some((kind, id, revision)) => named(
                kind,
                (id, revision),
                format!("records[{index}].{}.", kind.as_str()),
            ),
            // No kind: named as a blank; the rejection says MISSING_FIELD kind.
            None => Named {
                kind: None,
                id: String::new(),
                revision: 1,
                path: format!("records[{index}]."),
            },
        }
    }
    fn validate(&self, ctx: &validate::Context<'_>) -> Result<Record, crate::domain::Rejection> {
        validate::record(self, ctx)
    }
}

/// `(id, revision)` as `validate::name_of` bounds them.
fn named(kind: RecordKind, (id, revision): (String, u32), path: String) -> Named {
    Named {
        kind: Some(kind),
        id,
        revision,
        path,
    }
}

fn to_wire(
    index: usize,
    named: Named,
    outcome: Outcome,
    summary: &mut proto::OutcomeSummary,
) -> proto::RecordOutcome {
    let mut out = proto::RecordOutcome {
        index: index as u32,
        kind: named.kind.map_or("", RecordKind::as_str).to_string(),
        id: named.id,
        revision: named.revision,
        ..Default::default()
    };
    match outcome {
        Outcome::Accepted { warnings } if warnings.is_empty() => {
            summary.accepted += 1;
            out.set_outcome(proto::Outcome::Accepted);
        }
        Outcome::Accepted { warnings } => {
            summary.accepted_with_warnings += 1;
            out.set_outcome(proto::Outcome::AcceptedWithWarnings);
            out.warnings = warnings.iter().map(|w| w.as_str().to_string()).collect();
        }
        Outcome::Duplicate => {
            summary.duplicate += 1;
            out.set_outcome(proto::Outcome::Duplicate);
        }
        Outcome::Rejected(r) => {
            summary.rejected += 1;
            out.set_outcome(proto::Outcome::Rejected);
            out.code = r.code.as_str().to_string();
            out.field = format!("{}{}", named.path, r.field)
                .trim_end_matches('.')
                .to_string();
            out.message = r.message;
        }
    }
    out
}

impl PlatformApi {
    /// The calling platform, and the note of its call's audit entry (scope: the
    /// platform; records: how many the call carried or returned).
    async fn caller<T>(&self, req: &Request<T>) -> Result<(PlatformProfile, CallNote), ApiError> {
        let principal = Principal::of_request(req)?;
        let platform = self.access.platform(&principal, now_millis()).await?;
        let note = req
            .extensions()
            .get::<CallNote>()
            .cloned()
            .unwrap_or_default();
        note.set(platform.uscc.to_string(), 0);
        Ok((platform, note))
    }

    /// Takes `records` records from the caller's records-a-second rate before they are
    /// applied (RESOURCE_EXHAUSTED with retry advice, nothing applied, when over it).
    fn take_records(&self, note: &CallNote, records: usize) -> Result<(), ApiError> {
        self.admission.take_records(note.identity(), records)
    }

    /// After a part of a call (a chunk of a stream) failed: its entry, with the code
    /// (an applied part's entry is written with its records, in their transaction).
    async fn part_failed(
        &self,
        note: &CallNote,
        records: usize,
        e: &ApiError,
    ) -> Result<(), ApiError> {
        let outcome = crate::audit::code_name_of(e.code());
        Ok(note
            .finished(&self.auditor, records as i64, &outcome)
            .await?)
    }

    /// INVALID_ARGUMENT when `items` are more than one call (or chunk) may carry
    /// (`limits.max_batch_records`).
    fn within_call_limit<R: WireRecord>(&self, items: &[R]) -> Result<(), ApiError> {
        if items.len() > self.limits.max_batch_records {
            return Err(ApiError::InvalidArgument(format!(
                "{} {} in one call; at most {} (send several calls or a stream)",
                items.len(),
                R::LIST,
                self.limits.max_batch_records
            )));
        }
        Ok(())
    }

    /// Validates and applies `items` (numbered from `part.offset`), appending outcomes.
    async fn apply<R: WireRecord>(
        &self,
        platform: &PlatformProfile,
        note: &CallNote,
        items: &[R],
        part: Part,
        out: &mut proto::BatchOutcome,
        deadline: Option<&CallDeadline>,
    ) -> Result<(), ApiError> {
        let offset = part.offset;
        let (names, candidates) = self.validated(platform, items, offset);
        let plan = self
            .ingest
            .apply(
                platform,
                candidates,
                deadline,
                &note.trace(),
                part.entries(note, items.len()),
            )
            .await?;
        self.answer(names, plan, offset, out);
        Ok(())
    }

    /// Each record of `items` (numbered from `offset`) named and validated, in order.
    fn validated<R: WireRecord>(
        &self,
        platform: &PlatformProfile,
        items: &[R],
        offset: usize,
    ) -> (Vec<Named>, Vec<Candidate>) {
        let ctx = validate::Context {
            now: now_millis(),
            bounds: self.limits.bounds(),
            reference: &self.reference,
            platform,
        };
        let validating = std::time::Instant::now();
        let mut names = Vec::with_capacity(items.len());
        let candidates = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let n = item.name(offset + i);
                let c = Candidate {
                    kind: n.kind,
                    id: n.id.clone(),
                    revision: n.revision,
                    record: item.validate(&ctx),
                };
                names.push(n);
                c
            })
            .collect();
        self.metrics
            .ingest_laps(&[("validate", validating.elapsed())]);
        (names, candidates)
    }

    /// `SubmitStream`'s parts, read ahead: each chunk is validated and queued for its
    /// platform's transaction as soon as it arrives (up to [`PARTS_AHEAD`] chunks and
    /// [`RECORDS_AHEAD`] records not yet answered), so the next chunks are validated
    /// while the earlier ones are applied, and chunks that arrive together share a
    /// transaction (group commit). Answers go out in order, each once its chunk is
    /// committed. The first failure ends the stream: no later chunk is applied (the
    /// queued ones are stopped, [`Sequence`]), exactly as if the chunks had been applied
    /// one after another; a failure found on reading (a refused chunk, a broken stream,
    /// the deadline) is answered after the chunks before it.
    async fn submit_parts(
        &self,
        platform: PlatformProfile,
        note: CallNote,
        mut inbound: Streaming<proto::SubmitRequest>,
        deadline: Option<CallDeadline>,
        rearm: Option<crate::edge::IdleRearm>,
        tx: mpsc::Sender<Result<proto::BatchOutcome, Status>>,
    ) {
        let sequence = Sequence::default();
        let mut pending: VecDeque<Queued> = VecDeque::new();
        // Whether the idle timer is held (chunks are being applied).
        let mut held = false;
        // Records answered (all applied), and records read (the next chunk's offset).
        let (mut seen, mut read) = (0usize, 0usize);
        // Why reading stopped, answered once the chunks before it are.
        let mut stop: Option<ReadStop> = None;
        let mut watching = deadline.is_some();
        loop {
            let ahead: usize = pending.iter().map(|q| q.records).sum();
            let bytes: usize = pending.iter().map(|q| q.bytes).sum();
            let room = stop.is_none()
                && pending.len() < PARTS_AHEAD
                && ahead < RECORDS_AHEAD
                && bytes < self.limits.max_message_bytes;
            if !room && pending.is_empty() {
                break;
            }
            // While chunks are being applied the caller may wait for their answers:
            // that is not idle time.
            if let Some(r) = &rearm
                && held == pending.is_empty()
            {
                held = !pending.is_empty();
                r.hold(held);
            }
            let next = tokio::select! {
                biased;
                a = async {
                    match pending.front_mut() {
                        Some(q) => Some(q.answer.as_mut().await),
                        None => None,
                    }
                }, if !pending.is_empty() => match a {
                    Some(answer) => Next::Answer(Box::new(answer)),
                    None => continue,
                },
                m = inbound.message(), if room => Next::Message(m),
                () = async {
                    match &deadline {
                        Some(d) => d.passed().await,
                        None => std::future::pending().await,
                    }
                }, if watching => Next::Deadline,
            };
            match next {
                Next::Answer(answer) => {
                    let Some(q) = pending.pop_front() else { break };
                    match *answer {
                        Ok(plan) => {
                            let mut out = empty_outcome();
                            self.answer(q.names, plan, q.offset, &mut out);
                            seen += q.records;
                            note.records(seen as i64);
                            if tx.send(Ok(out)).await.is_err() {
                                break;
                            }
                        }
                        // Stopped because the stream broke: that is the answer.
                        Err(crate::ingest::IngestError::NotApplied) => break,
                        Err(e) => {
                            let e = ApiError::from(e);
                            let status = match self.part_failed(&note, q.records, &e).await {
                                Err(audit) => audit.into(),
                                Ok(()) => match e {
                                    ApiError::DeadlineExceeded(_) => ApiError::DeadlineExceeded(format!(
                                        "the caller's deadline passed before this chunk committed; the chunks before it were applied and answered (records before index {seen}), this one and the rest were not"
                                    ))
                                    .into(),
                                    e => error::with_progress(
                                        &e.into(),
                                        &format!(
                                            "the chunks before this one were applied and answered (records before index {seen}); this one and the rest were not (a failed transaction fails every chunk in it)"
                                        ),
                                    ),
                                },
                            };
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    }
                }
                Next::Deadline => {
                    watching = false;
                    // Chunks not yet committing fail with it; if the client's side
                    // has ended, those already committing end the stream as usual.
                    if let Some(d) = &deadline {
                        d.expire();
                    }
                    stop.get_or_insert(ReadStop::DeadlineWhileOpen);
                }
                Next::Message(Ok(None)) => stop = Some(ReadStop::Ended),
                Next::Message(Err(status)) => {
                    // The caller went away or the stream broke: queued chunks not yet
                    // in a transaction are not applied (no one could be told).
                    sequence.stop(crate::ingest::IngestError::NotApplied);
                    stop = Some(ReadStop::Broken(status));
                }
                Next::Message(Ok(Some(m))) => {
                    let bytes = prost::Message::encoded_len(&m);
                    let records = m.records;
                    if let Err(e) = self.take_records(&note, records.len()) {
                        stop = Some(ReadStop::Refused(e));
                        continue;
                    }
                    if let Err(e) = self.within_call_limit(&records) {
                        stop = Some(ReadStop::Part(e, records.len()));
                        continue;
                    }
                    let (names, candidates) = self.validated(&platform, &records, read);
                    let part = Part {
                        offset: read,
                        ends_call: false,
                    };
                    match self.ingest.queue(
                        &platform,
                        candidates,
                        deadline.as_ref(),
                        &note.trace(),
                        part.entries(&note, records.len()),
                        Some(&sequence),
                    ) {
                        Ok(answer) => pending.push_back(Queued {
                            names,
                            offset: read,
                            records: records.len(),
                            bytes,
                            answer: Box::pin(answer),
                        }),
                        Err(e) => {
                            // Only the deadline refuses a part before queueing it.
                            pending.push_back(Queued {
                                names,
                                offset: read,
                                records: records.len(),
                                bytes,
                                answer: Box::pin(std::future::ready(Err(e))),
                            });
                            stop = Some(ReadStop::Ended);
                        }
                    }
                    read += records.len();
                }
            }
        }
        // Parts queued but not answered (the stream failed or its caller went away)
        // are not applied unless their transaction is already under way.
        sequence.stop(crate::ingest::IngestError::NotApplied);
        if let Some(r) = &rearm {
            r.hold(false);
        }
        if !pending.is_empty() && !matches!(stop, Some(ReadStop::Broken(_))) {
            return;
        }
        let status = match stop {
            None | Some(ReadStop::Ended) => return,
            Some(ReadStop::DeadlineWhileOpen) => ApiError::DeadlineExceeded(format!(
                "the caller's deadline passed while the stream was open; {}",
                applied(seen)
            ))
            .into(),
            Some(ReadStop::Broken(status)) => error::with_progress(
                &error::inbound(status),
                &format!(
                    "the chunks before it were applied and answered (records before index {seen})"
                ),
            ),
            Some(ReadStop::Refused(e)) => error::with_progress(&e.into(), &applied(seen)),
            Some(ReadStop::Part(e, records)) => match self.part_failed(&note, records, &e).await {
                Err(audit) => audit.into(),
                Ok(()) => error::with_progress(&e.into(), &applied(seen)),
            },
        };
        let _ = tx.send(Err(status)).await;
    }

    /// Appends the outcome of each record of an applied part (named by `names`,
    /// numbered from `offset`) to `out`, and counts them.
    fn answer(
        &self,
        names: Vec<Named>,
        mut plan: Plan,
        offset: usize,
        out: &mut proto::BatchOutcome,
    ) {
        let first = out.outcomes.len();
        let summary = out.summary.get_or_insert_with(Default::default);
        out.outcomes.extend(
            names
                .into_iter()
                .zip(plan.outcomes)
                .enumerate()
                .map(|(i, (n, o))| {
                    let mut wire = to_wire(offset + i, n, o, summary);
                    if let Some(r) = plan.reconciliations.remove(&i) {
                        let status = ReconciliationStatus::of(r.declared, r.computed);
                        wire.reconciliation =
                            Some(wire_reconciliation(r.declared, r.computed, status));
                    }
                    wire
                }),
        );
        for o in &out.outcomes[first..] {
            let kind = if o.kind.is_empty() {
                "unknown"
            } else {
                &o.kind
            };
            self.metrics
                .record(kind, o.outcome().as_str_name(), &o.code);
        }
    }

    async fn batch<R: WireRecord>(
        &self,
        platform: &PlatformProfile,
        note: &CallNote,
        items: Vec<R>,
        deadline: Option<&CallDeadline>,
    ) -> Result<proto::BatchOutcome, ApiError> {
        self.batch_at(platform, note, &items, 0, deadline).await
    }

    /// One batch whose records are numbered from `offset`, within the batch size limit.
    async fn batch_at<R: WireRecord>(
        &self,
        platform: &PlatformProfile,
        note: &CallNote,
        items: &[R],
        offset: usize,
        deadline: Option<&CallDeadline>,
    ) -> Result<proto::BatchOutcome, ApiError> {
        self.within_call_limit(items)?;
        let mut out = empty_outcome();
        let part = Part {
            offset,
            ends_call: false,
        };
        self.apply(platform, note, items, part, &mut out, deadline)
            .await?;
        Ok(out)
    }

    /// Applies each chunk of a client stream as it arrives (each chunk is its own
    /// transaction, with its entry) and answers with every outcome at the end.
    async fn stream<M, R: WireRecord>(
        &self,
        platform: &PlatformProfile,
        note: &CallNote,
        mut stream: Streaming<M>,
        items_of: impl Fn(M) -> Vec<R>,
        deadline: Option<&CallDeadline>,
        rearm: Option<crate::edge::IdleRearm>,
    ) -> Result<proto::BatchOutcome, Status> {
        let mut out = empty_outcome();
        let mut seen = 0usize;
        if let Some(d) = deadline {
            d.own();
        }
        // What the stream already holds after the message in hand (see below).
        let mut ahead: Option<Result<Option<M>, Status>> = None;
        loop {
            let next = match (ahead.take(), deadline) {
                (Some(next), _) => next,
                (None, None) => stream.message().await,
                (None, Some(d)) => tokio::select! {
                    m = stream.message() => m,
                    () = d.passed() => {
                        d.expire();
                        return Err(ApiError::DeadlineExceeded(format!(
                            "the caller's deadline passed while the stream was open; records before index {seen} were applied (see ListRejections and the stored records), the rest were not"
                        ))
                        .into());
                    }
                },
            };
            let Some(msg) = next.map_err(|s| {
                error::with_progress(
                    &error::inbound(s),
                    &format!("records before index {seen} were applied"),
                )
            })?
            else {
                break;
            };
            // When the caller has already ended the stream (a stream of one message, or
            // the last one sent with the end), this part is the call's last: its
            // transaction also writes the call's own entry, which the audit layer then
            // does not write in a transaction of its own. Otherwise the next message (or
            // error) already received is kept for the next turn.
            ahead = futures::FutureExt::now_or_never(stream.message());
            if ahead.is_none()
                && let Some(r) = &rearm
            {
                // That look found nothing and started the idle timer: what follows (this
                // part's commit) is the gateway's time, not the caller's.
                r.rearm();
            }
            let last = matches!(ahead, Some(Ok(None)));
            let items = items_of(msg);
            if seen + items.len() > self.limits.max_stream_records {
                return Err(ApiError::InvalidArgument(format!(
                    "more than {} {} in one stream; records before index {seen} were applied",
                    self.limits.max_stream_records,
                    R::LIST
                ))
                .into());
            }
            self.take_records(note, items.len())?;
            let applied = self
                .apply(
                    platform,
                    note,
                    &items,
                    Part {
                        offset: seen,
                        ends_call: last,
                    },
                    &mut out,
                    deadline,
                )
                .await;
            if let Err(e) = &applied {
                self.part_failed(note, items.len(), e).await?;
            }
            applied.map_err(|e| match e {
                    ApiError::DeadlineExceeded(_) => ApiError::DeadlineExceeded(format!(
                        "the caller's deadline passed before this chunk committed; records before index {seen} were applied, the rest were not"
                    )),
                    other => other,
                })?;
            seen += items.len();
            note.records(seen as i64);
            if last {
                // The stream's end, already received.
                note.audited_in_transaction();
                break;
            }
        }
        Ok(out)
    }

    /// A unary batch call, whatever its record kind: the caller, its records taken from
    /// its rate, the batch applied with the call's entry in the same transaction (the
    /// audit layer then writes none). `items_of` takes the records out of the request.
    async fn unary<M, R: WireRecord>(
        &self,
        req: Request<M>,
        items_of: impl FnOnce(M) -> Vec<R>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        let (platform, note) = self.caller(&req).await?;
        let deadline = req.extensions().get::<CallDeadline>().cloned();
        let items = items_of(req.into_inner());
        self.take_records(&note, items.len())?;
        let out = self
            .batch(&platform, &note, items, deadline.as_ref())
            .await?;
        note.records(out.outcomes.len() as i64);
        // Its entry was written with its records.
        note.audited_in_transaction();
        Ok(Response::new(out))
    }

    /// A client stream of batches, whatever its record kind (see [`Self::stream`]).
    async fn streamed<M, R: WireRecord>(
        &self,
        req: Request<Streaming<M>>,
        items_of: impl Fn(M) -> Vec<R>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        let (platform, note) = self.caller(&req).await?;
        let deadline = req.extensions().get::<CallDeadline>().cloned();
        let rearm = req.extensions().get::<crate::edge::IdleRearm>().cloned();
        let out = self
            .stream(
                &platform,
                &note,
                req.into_inner(),
                items_of,
                deadline.as_ref(),
                rearm,
            )
            .await?;
        note.records(out.outcomes.len() as i64);
        Ok(Response::new(out))
    }

    /// The page a listing request asks for (`listing` names the token's owner).
    fn page(listing: &str, req: &proto::ListRequest) -> Result<PageRequest, ApiError> {
        Ok(PageRequest {
            limit: paging::page_size(req.page_size),
            after: paging::key_of(listing, &req.page_token)?,
            id: (!req.id.is_empty()).then(|| req.id.clone()),
        })
    }

    /// The page's items cut to `limits.max_page_bytes`, and its next token.
    fn bounded<W: prost::Message>(
        &self,
        listing: &str,
        items: Vec<(W, String)>,
        next: Option<String>,
    ) -> (Vec<W>, String) {
        let (items, next) = paging::bounded(items, next, self.limits.max_page_bytes);
        let token = next.map(|k| paging::token(listing, &k)).unwrap_or_default();
        (items, token)
    }
}

/// Which part of a call a batch of records is.
#[derive(Debug, Clone, Copy)]
struct Part {
    /// The index of its first record within the call.
    offset: usize,
    /// It is a client stream's last part (the stream's end has arrived): its
    /// transaction also writes the call's own entry.
    ends_call: bool,
}

impl Part {
    /// The audit entries written with the part's `records` records: the part's own,
    /// and for a stream's last part also the call's, with the stream's total.
    fn entries(&self, note: &CallNote, records: usize) -> Vec<crate::audit::Event> {
        let mut entries = vec![note.entry(records as i64, "OK")];
        if self.ends_call {
            entries.push(note.entry((self.offset + records) as i64, "OK"));
        }
        entries
    }
}

/// How far a `SubmitStream` got, for the status that ends it: `seen` records applied.
fn applied(seen: usize) -> String {
    format!(
        "the chunks before it were applied and answered (records before index {seen}), the rest were not"
    )
}

/// Chunks of a `SubmitStream` queued and not yet answered, at most.
const PARTS_AHEAD: usize = 16;

/// Records of a `SubmitStream` queued and not yet answered, at most before the next
/// chunk is read (a chunk that alone exceeds it is still read): enough for a full
/// group transaction ([`crate::ingest::group::MAX_GROUP_RECORDS`]) behind the one
/// under way.
const RECORDS_AHEAD: usize = 2 * crate::ingest::group::MAX_GROUP_RECORDS;

/// A chunk of a `SubmitStream` queued for its transaction.
struct Queued {
    names: Vec<Named>,
    offset: usize,
    records: usize,
    /// Its message's encoded size.
    bytes: usize,
    answer: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Plan, crate::ingest::IngestError>> + Send>,
    >,
}

/// What a `SubmitStream` waits for next.
enum Next {
    /// The first queued chunk's answer.
    Answer(Box<Result<Plan, crate::ingest::IngestError>>),
    /// The next chunk (None: the client's side ended).
    Message(Result<Option<proto::SubmitRequest>, Status>),
    /// The caller's deadline passed.
    Deadline,
}

/// Why a `SubmitStream` read no further.
enum ReadStop {
    /// The client's side ended.
    Ended,
    /// The deadline passed while the stream was open.
    DeadlineWhileOpen,
    /// The stream broke (a transport error or a message that does not decode).
    Broken(Status),
    /// The caller's records-a-second rate refused the chunk (nothing of it applied).
    Refused(ApiError),
    /// The chunk was refused as a whole (its entry is written with the code), and how
    /// many records it held.
    Part(ApiError, usize),
}

/// An outcome with no records yet and a zero summary, to append a call's to.
fn empty_outcome() -> proto::BatchOutcome {
    proto::BatchOutcome {
        summary: Some(Default::default()),
        ..Default::default()
    }
}

fn opt_time(t: Option<i64>) -> String {
    t.map(to_rfc3339).unwrap_or_default()
}

#[tonic::async_trait]
impl PlatformService for PlatformApi {
    async fn register_workers(
        &self,
        req: Request<proto::RegisterWorkersRequest>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        self.unary(req, |m| m.workers).await
    }

    async fn stream_workers(
        &self,
        req: Request<Streaming<proto::RegisterWorkersRequest>>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        self.streamed(req, |m| m.workers).await
    }

    async fn report_orders(
        &self,
        req: Request<proto::ReportOrdersRequest>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        self.unary(req, |m| m.orders).await
    }

    async fn stream_orders(
        &self,
        req: Request<Streaming<proto::ReportOrdersRequest>>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        self.streamed(req, |m| m.orders).await
    }

    async fn submit(
        &self,
        req: Request<proto::SubmitRequest>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        self.unary(req, |m| m.records).await
    }

    async fn submit_declarations(
        &self,
        req: Request<proto::SubmitDeclarationsRequest>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        self.unary(req, |m| m.declarations).await
    }

    async fn stream_declarations(
        &self,
        req: Request<Streaming<proto::SubmitDeclarationsRequest>>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        self.streamed(req, |m| m.declarations).await
    }

    async fn report_accidents(
        &self,
        req: Request<proto::ReportAccidentsRequest>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        self.unary(req, |m| m.accidents).await
    }

    async fn stream_accidents(
        &self,
        req: Request<Streaming<proto::ReportAccidentsRequest>>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        self.streamed(req, |m| m.accidents).await
    }

    async fn list_declarations(
        &self,
        req: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListDeclarationsResponse>, Status> {
        let (platform, note) = self.caller(&req).await?;
        let page = self
            .store
            .list_declarations(platform.id, &Self::page(DECLARATIONS, req.get_ref())?)
            .await
            .map_err(ApiError::from)?;
        // The status is computed now, from the statements as they are: never stale.
        let scope: Vec<_> = page
            .items
            .iter()
            .map(|d| (d.period, d.industry.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let statements = self
            .store
            .statements(platform.id, &scope)
            .await
            .map_err(ApiError::from)?;
        let closed = self
            .store
            .closed_periods(platform.id)
            .await
            .map_err(ApiError::from)?;
        let declarations: Vec<_> = page
            .items
            .into_iter()
            .map(|d| {
                let declared = Figures {
                    order_count: d.order_count,
                    amount_fen: d.amount_fen,
                };
                let computed = reconcile::computed(
                    &platform,
                    &self.ingest.rates(),
                    d.period,
                    &d.division_code,
                    &d.industry,
                    &statements,
                    closed.get(&d.period).copied(),
                );
                let status = reconcile::status(declared, computed, d.superseded);
                let key = d.declaration_id.clone();
                let stored = proto::StoredDeclaration {
                    reconciliation: Some(wire_reconciliation(declared, computed, status)),
                    declaration: Some(proto::Declaration {
                        declaration_id: d.declaration_id,
                        revision: Some(d.revision),
                        period: d.period.to_string(),
                        division_code: d.division_code,
                        industry: d.industry,
                        order_count: Some(d.order_count),
                        amount_fen: Some(d.amount_fen),
                    }),
                    received_at_ms: d.received_at,
                };
                (stored, key)
            })
            .collect();
        let (declarations, next_page_token) = self.bounded(DECLARATIONS, declarations, page.next);
        note.records(declarations.len() as i64);
        Ok(Response::new(proto::ListDeclarationsResponse {
            declarations,
            next_page_token,
        }))
    }

    async fn list_volume_statements(
        &self,
        req: Request<proto::ListVolumeStatementsRequest>,
    ) -> Result<Response<proto::ListVolumeStatementsResponse>, Status> {
        let (platform, note) = self.caller(&req).await?;
        let period = Period::parse(&req.get_ref().period)
            .ok_or_else(|| ApiError::InvalidArgument("period must be YYYY-MM".into()))?;
        let scope: Vec<_> = platform
            .industries
            .iter()
            .map(|i| (period, i.clone()))
            .collect();
        let statements = self
            .store
            .statements(platform.id, &scope)
            .await
            .map_err(ApiError::from)?;
        let closed_at = self
            .store
            .closed_periods(platform.id)
            .await
            .map_err(ApiError::from)?
            .get(&period)
            .copied();
        let mut statements: Vec<_> = statements.into_iter().collect();
        statements.sort();
        let statements: Vec<_> = statements
            .into_iter()
            .map(|(key, count)| {
                let s = reconcile::rate_statement(
                    &platform,
                    &self.ingest.rates(),
                    &key,
                    count,
                    closed_at,
                );
                proto::VolumeStatement {
                    period: period.to_string(),
                    division_code: s.key.division_code,
                    industry: s.key.industry,
                    billable_count: s.billable_count,
                    base_fen_per_order: s.base_fen_per_order,
                    multiplier: s.multiplier.to_string(),
                    amount_fen: s.amount_fen,
                    closed: closed_at.is_some(),
                }
            })
            .collect();
        note.records(statements.len() as i64);
        Ok(Response::new(proto::ListVolumeStatementsResponse {
            statements,
        }))
    }

    async fn list_deliveries(
        &self,
        req: Request<proto::ListDeliveriesRequest>,
    ) -> Result<Response<proto::ListDeliveriesResponse>, Status> {
        let (platform, note) = self.caller(&req).await?;
        let r = req.get_ref();
        const KINDS: [&str; 6] = [
            "worker",
            "order",
            "accident",
            "declaration",
            "statement",
            "enrolment",
        ];
        if !KINDS.contains(&r.kind.as_str()) || r.id.is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "kind must be one of {} with an id",
                KINDS.join(", ")
            ))
            .into());
        }
        // The record key starts with the caller's own credit code: no other platform's
        // records can be named.
        let key = format!("{}/{}/{}", platform.uscc, r.kind, r.id);
        let rows = self.store.deliveries(&key).await.map_err(ApiError::from)?;
        let deliveries: Vec<_> = rows
            .into_iter()
            .map(|d| proto::Delivery {
                idempotency_key: d.idempotency_key,
                destination: d.destination,
                state: match d.state.as_str() {
                    "delivered" => "DELIVERED",
                    "dead" => "DEAD_LETTERED",
                    "discarded" => "DISCARDED",
                    "superseded" => "SUPERSEDED",
                    _ => "PENDING",
                }
                .to_string(),
                attempts: d.attempts,
                last_error: d.last_error.unwrap_or_default(),
                queued_at_ms: d.created_at,
                delivered_at_ms: d.delivered_at.unwrap_or_default(),
            })
            .collect();
        note.records(deliveries.len() as i64);
        Ok(Response::new(proto::ListDeliveriesResponse { deliveries }))
    }

    type SubmitStreamStream = ReceiverStream<Result<proto::BatchOutcome, Status>>;

    async fn submit_stream(
        &self,
        req: Request<Streaming<proto::SubmitRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let (platform, note) = self.caller(&req).await?;
        // The most a chunk may hold: the call limit, or less under the caller's rate.
        let at_once = self
            .limits
            .max_batch_records
            .min(self.admission.max_records_at_once(note.identity()));
        let deadline = req.extensions().get::<CallDeadline>().cloned();
        let rearm = req.extensions().get::<crate::edge::IdleRearm>().cloned();
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let api = self.clone();
        if let Some(d) = &deadline {
            d.own();
        }
        tokio::spawn(async move {
            api.submit_parts(platform, note, inbound, deadline, rearm, tx)
                .await
        });
        // The limits a chunk must keep, for clients to size their chunks by.
        let mut res = Response::new(ReceiverStream::new(rx));
        for (name, value) in [
            (MAX_BATCH_RECORDS_HEADER, at_once),
            (MAX_MESSAGE_BYTES_HEADER, self.limits.max_message_bytes),
        ] {
            if let Ok(v) = value.to_string().parse() {
                res.metadata_mut().insert(name, v);
            }
        }
        Ok(res)
    }

    async fn list_workers(
        &self,
        req: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListWorkersResponse>, Status> {
        let (platform, note) = self.caller(&req).await?;
        let page = self
            .store
            .list_workers(platform.id, &Self::page(WORKERS, req.get_ref())?)
            .await
            .map_err(ApiError::from)?;
        let workers: Vec<_> = page
            .items
            .into_iter()
            .map(|w| {
                let id_number = self.pii.open_id_number(&w.id_number)?;
                let name = self.pii.open_name(&w.name)?;
                let mobile = self.pii.open_mobile(&w.mobile)?;
                let key = w.worker_id.clone();
                let stored = proto::StoredWorker {
                    worker: Some(proto::Worker {
                        worker_id: w.worker_id,
                        revision: Some(w.revision),
                        id_type: w.id_type,
                        id_number: mask_id_number(&id_number),
                        name: mask_name(&name),
                        mobile: mask_mobile(&mobile),
                        industries: w.industries,
                        registered_at: to_rfc3339(w.registered_at),
                        status: w.status,
                        left_at: opt_time(w.left_at),
                    }),
                    received_at_ms: w.received_at,
                };
                Ok((stored, key))
            })
            .collect::<Result<_, StoreError>>()
            .map_err(ApiError::from)?;
        let (workers, next_page_token) = self.bounded(WORKERS, workers, page.next);
        note.records(workers.len() as i64);
        Ok(Response::new(proto::ListWorkersResponse {
            workers,
            next_page_token,
        }))
    }

    async fn list_orders(
        &self,
        req: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListOrdersResponse>, Status> {
        let (platform, note) = self.caller(&req).await?;
        let page = self
            .store
            .list_orders(platform.id, &Self::page(ORDERS, req.get_ref())?)
            .await
            .map_err(ApiError::from)?;
        let orders: Vec<_> = page
            .items
            .into_iter()
            .map(|o| {
                let key = o.order_id.clone();
                let stored = proto::StoredOrder {
                    order: Some(proto::Order {
                        order_id: o.order_id,
                        revision: Some(o.revision),
                        worker_id: o.worker_id,
                        industry: o.industry,
                        division_code: o.division_code,
                        accepted_at: to_rfc3339(o.accepted_at),
                        completed_at: opt_time(o.completed_at),
                        status: o.status,
                        vehicle_plate: o.vehicle_plate.unwrap_or_default(),
                    }),
                    received_at_ms: o.received_at,
                };
                (stored, key)
            })
            .collect();
        let (orders, next_page_token) = self.bounded(ORDERS, orders, page.next);
        note.records(orders.len() as i64);
        Ok(Response::new(proto::ListOrdersResponse {
            orders,
            next_page_token,
        }))
    }

    async fn list_rejections(
        &self,
        req: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListRejectionsResponse>, Status> {
        let (platform, note) = self.caller(&req).await?;
        let page_req = Self::page(REJECTIONS, req.get_ref())?;
        if page_req
            .after
            .as_deref()
            .is_some_and(|t| t.parse::<i64>().is_err())
        {
            return Err(paging::invalid(REJECTIONS).into());
        }
        let page = self
            .store
            .list_rejections(platform.id, &page_req)
            .await
            .map_err(ApiError::from)?;
        let rejections: Vec<_> = page
            .items
            .into_iter()
            .map(|r| {
                let key = r.seq.to_string();
                let rejection = proto::Rejection {
                    kind: r.kind,
                    id: r.record_id,
                    revision: r.revision,
                    code: r.code,
                    field: r.field,
                    message: r.message,
                    received_at_ms: r.received_at,
                };
                (rejection, key)
            })
            .collect();
        let (rejections, next_page_token) = self.bounded(REJECTIONS, rejections, page.next);
        note.records(rejections.len() as i64);
        Ok(Response::new(proto::ListRejectionsResponse {
            rejections,
            next_page_token,
        }))
    }
}
