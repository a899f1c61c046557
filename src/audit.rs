//! The audit log at work: every gRPC call of the `oip.v1` services leaves one entry
//! (identity, role, method, scope touched, record count, outcome, trace id), written
//! by [`AuditLayer`] before the response leaves the gateway; reads of personal data
//! add their own entries ([`Auditor::record`]). If the entry cannot be written, the
//! caller gets UNAVAILABLE instead of the answer: nothing proceeds unaudited.
//!
//! Entries are chained by hash (`domain::audit`). Each appending transaction reads the
//! head inside itself (one writer at a time), so entries written by the writer task
//! and by ingest transactions form one chain. The writer task writes the entries of
//! calls that arrive together in one transaction (group commit), so auditing costs one
//! commit per burst, not one per call; a call that stores records has its entry written
//! in the very transaction that stores them (`ingest::group`), and needs no other. The layer
//! also applies the call edge's conventions (`edge`), so that the entry records the
//! status the caller was told.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::deadline::CallDeadline;
use crate::domain::audit::{self, AuditEntry, ChainBreak};
use crate::domain::time::{Millis, now_millis};
use crate::edge::{self, BoxError, CallBody, Checked, header_code};
use crate::store::access::ChainRows;
use crate::store::{Store, StoreError};

/// Audit entries queued at most; beyond it callers wait (backpressure).
const QUEUE: usize = 4096;
/// Entries written in one transaction at most.
const GROUP: usize = 512;
/// Longest scope kept in an entry, in characters.
pub const MAX_SCOPE_CHARS: usize = 1000;

/// An entry before it has a seq (the writer assigns seq and hash in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub identity: String,
    pub role: String,
    pub action: String,
    pub scope: String,
    pub records: i64,
    pub outcome: String,
    pub trace_id: String,
}

type Ack = oneshot::Sender<Result<(), StoreError>>;

/// Appends audit entries through the single writer task.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<(Event, Millis, Ack)>,
}

impl Auditor {
    /// Starts the writer. It stops once every `Auditor` clone is dropped.
    pub fn spawn(
        store: Arc<dyn Store>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_loop(store, rx, metrics));
        (Self { tx }, task)
    }

    /// Appends `event` and waits until it is committed. Its scope is cut to
    /// [`MAX_SCOPE_CHARS`] (see [`chain`]).
    pub async fn record(&self, event: Event) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((event, now_millis(), ack))
            .await
            .map_err(|_| StoreError::Unavailable("audit writer stopped".into()))?;
        done.await
            .map_err(|_| StoreError::Unavailable("audit writer stopped".into()))?
    }
}

async fn write_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<(Event, Millis, Ack)>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut batch = Vec::with_capacity(GROUP);
    let mut acks = Vec::with_capacity(GROUP);
    while rx.recv_many(&mut batch, GROUP).await > 0 {
        let events = batch.drain(..).map(|(event, at, ack)| {
            acks.push(ack);
            (event, at)
        });
        let started = std::time::Instant::now();
        let result = write_group(store.as_ref(), events.collect()).await;
        metrics.audit_write(started.elapsed());
        for ack in acks.drain(..) {
            let _ = ack.send(result.clone());
        }
    }
}

/// Appends `events` (with their times) in one transaction, chained from the head as
/// that transaction sees it.
async fn write_group(store: &dyn Store, events: Vec<(Event, Millis)>) -> Result<(), StoreError> {
    let mut tx = store.begin_audit().await?;
    let head = tx.audit_head().await?;
    tx.append_audit(&chain(head, events)).await?;
    tx.commit().await
}

/// Entries for `events` (with their times) following the chain's head `(seq, hash)`:
/// each gets the next seq and its chain hash (`domain::audit`), its scope cut to
/// [`MAX_SCOPE_CHARS`] (a call may name any number of things). Every entry, of the
/// writer task or of an ingest transaction, is made here.
pub fn chain(head: (i64, [u8; 32]), events: Vec<(Event, Millis)>) -> ChainRows {
    let (mut seq, mut hash) = head;
    events
        .into_iter()
        .map(|(mut e, at)| {
            seq += 1;
            if e.scope.chars().count() > MAX_SCOPE_CHARS {
                e.scope = crate::domain::outcome::truncate(&e.scope, MAX_SCOPE_CHARS);
            }
            let entry = AuditEntry {
                seq,
                at,
                identity: e.identity,
                role: e.role,
                action: e.action,
                scope: e.scope,
                records: e.records,
                outcome: e.outcome,
                trace_id: e.trace_id,
            };
            hash = entry.chain_hash(&hash);
            (entry, hash)
        })
        .collect()
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub checked: u64,
    pub problem: Option<ChainBreak>,
}

/// Checks the whole stored chain from its anchor, page by page; the anchor must be
/// the one the newest retention entry names.
pub async fn verify(store: &dyn Store) -> Result<Verification, StoreError> {
    let first = verify_once(store).await?;
    // Retention may have moved the anchor between reading it and the first page.
    let (anchor, _) = store.audit_anchor().await?;
    match first.problem {
        Some(ChainBreak::Missing { expected, .. }) if expected <= anchor => {
            verify_once(store).await
        }
        _ => Ok(first),
    }
}

async fn verify_once(store: &dyn Store) -> Result<Verification, StoreError> {
    let (anchor, anchor_hash) = store.audit_anchor().await?;
    let (mut after, mut previous) = (anchor, anchor_hash);
    let mut checked = 0u64;
    let mut retention: Option<String> = None;
    loop {
        let page = store.audit_chain(after, 5000).await?;
        if page.is_empty() {
            let confirmed = anchor == 0
                || retention.as_deref() == Some(&audit::retention_scope(anchor, &anchor_hash));
            return Ok(Verification {
                checked,
                problem: (!confirmed).then_some(ChainBreak::UnconfirmedAnchor { seq: anchor }),
            });
        }
        match audit::verify(page.iter().map(|(e, h)| (e, h)), previous, after) {
            Ok((h, s)) => {
                checked += page.len() as u64;
                previous = h;
                after = s;
                if let Some((e, _)) = page
                    .iter()
                    .rev()
                    .find(|(e, _)| e.action == audit::RETENTION_ACTION)
                {
                    retention = Some(e.scope.clone());
                }
            }
            Err(problem) => {
                return Ok(Verification {
                    checked,
                    problem: Some(problem),
                });
            }
        }
    }
}

/// Removes entries older than `retention` and records the removal in the chain
/// (the entry names the new anchor, which `verify` requires).
pub async fn apply_retention(
    store: &dyn Store,
    auditor: &Auditor,
    retention: Duration,
) -> Result<u64, StoreError> {
    let before = now_millis() - retention.as_millis() as i64;
    let Some((removed, seq, hash)) = store.prune_audit(before).await? else {
        return Ok(0);
    };
    auditor
        .record(Event {
            identity: "oip-gateway".into(),
            role: "system".into(),
            action: audit::RETENTION_ACTION.into(),
            scope: audit::retention_scope(seq, &hash),
            records: removed as i64,
            outcome: "OK".into(),
            trace_id: new_trace_id(),
        })
        .await?;
    Ok(removed)
}

/// Applies retention once at start and then daily.
pub fn spawn_retention(
    store: Arc<dyn Store>,
    auditor: Auditor,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match apply_retention(store.as_ref(), &auditor, retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "audit entries past retention removed"),
                Err(e) => tracing::warn!(error = %e, "audit retention failed; retrying later"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
                _ = stop.changed() => return,
            }
        }
    })
}

/// What a handler adds to its call's audit entry: the scope it touched and how many
/// records. Handlers find it in the request extensions, with who is calling.
#[derive(Debug, Clone, Default)]
pub struct CallNote {
    noted: Arc<Mutex<(String, i64)>>,
    /// The call's entry was written in the transaction that applied it: the layer
    /// writes none when the call answers OK.
    audited: Arc<std::sync::atomic::AtomicBool>,
    identity: String,
    role: String,
    action: String,
    trace_id: String,
    /// The caller's W3C `traceparent`, when valid (empty otherwise).
    traceparent: String,
}

impl CallNote {
    /// Audits, before it happens, a change the call is about to make (outcome
    /// STARTED) with the scope noted so far: a change whose intent cannot be audited
    /// is not made.
    pub async fn started(&self, auditor: &Auditor, records: i64) -> Result<(), StoreError> {
        self.part(auditor, records, "STARTED").await
    }

    /// Audits what became of a part of the call (a chunk of a stream) after it was
    /// applied or refused: `outcome` is `OK` or a gRPC code name. The call's own entry
    /// follows when the call ends, with the total.
    pub async fn finished(
        &self,
        auditor: &Auditor,
        records: i64,
        outcome: &str,
    ) -> Result<(), StoreError> {
        self.part(auditor, records, outcome).await
    }

    async fn part(&self, auditor: &Auditor, records: i64, outcome: &str) -> Result<(), StoreError> {
        auditor.record(self.entry(records, outcome)).await
    }

    /// The call's entry (or a part's) with the scope noted so far, `records` and
    /// `outcome`, for a transaction to append with what it applies.
    pub fn entry(&self, records: i64, outcome: &str) -> Event {
        let (scope, _) = self.take();
        Event {
            identity: self.identity.clone(),
            role: self.role.clone(),
            action: self.action.clone(),
            scope,
            records,
            outcome: outcome.into(),
            trace_id: self.trace_id.clone(),
        }
    }

    /// The call's own entry (outcome OK) was written in the transaction that applied
    /// it: the layer writes none for it if the call answers OK.
    pub fn audited_in_transaction(&self) {
        self.audited
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The caller's identity URI (`unknown` when its certificate names none).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The call's trace, as the items it queues for the backends carry it.
    pub fn trace(&self) -> crate::forward::outbox::Trace {
        crate::forward::outbox::Trace {
            id: self.trace_id.clone(),
            parent: self.traceparent.clone(),
        }
    }

    pub fn set(&self, scope: impl Into<String>, records: i64) {
        if let Ok(mut n) = self.noted.lock() {
            *n = (scope.into(), records);
        }
    }
    /// Sets the record count only.
    pub fn records(&self, records: i64) {
        if let Ok(mut n) = self.noted.lock() {
            n.1 = records;
        }
    }
    fn take(&self) -> (String, i64) {
        self.noted.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

/// The trace id of a call, in the request extensions and the `x-trace-id` response
/// header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceId(pub String);

/// Notes the scope and record count of the call `req` belongs to.
pub fn note<T>(req: &tonic::Request<T>, scope: impl Into<String>, records: i64) {
    if let Some(n) = req.extensions().get::<CallNote>() {
        n.set(scope, records);
    }
}

/// The trace id of the call `req` belongs to.
pub fn trace_id<T>(req: &tonic::Request<T>) -> String {
    req.extensions()
        .get::<TraceId>()
        .map(|t| t.0.clone())
        .unwrap_or_default()
}

/// A caller's W3C trace context (`traceparent: 00-<32 hex>-<16 hex>-<2 hex>`, Trace
/// Context Level 1), when well-formed and not all-zero; lower-case hex only.
pub fn traceparent(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0');
    ok.then(|| v.to_string())
}

/// The gateway's own trace id, unique per call. A caller's W3C `traceparent` trace id,
/// or else its plain `x-trace-id` (up to 64 characters), is appended after a `.` for
/// correlation, never used alone (a caller could otherwise reuse another call's id).
fn trace_of(headers: &http::HeaderMap) -> String {
    let ours = new_trace_id();
    if let Some(tp) = traceparent(headers) {
        return format!("{ours}.{}", &tp[3..35]);
    }
    match headers
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        }) {
        Some(theirs) => format!("{ours}.{theirs}"),
        None => ours,
    }
}

fn new_trace_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&(t, n, std::process::id()), &mut h);
    format!("{:016x}{:08x}", std::hash::Hasher::finish(&h), n as u32)
}

/// Audits every call to an `oip.v1` service (health and reflection are not audited),
/// and counts it in the metrics (`grpc_server_handled_total`, with its duration) with
/// the status its entry records.
#[derive(Clone)]
pub struct AuditLayer {
    auditor: Auditor,
    metrics: Arc<crate::metrics::Metrics>,
}

impl AuditLayer {
    pub fn new(auditor: Auditor, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self { auditor, metrics }
    }
}

impl<S> tower::Layer<S> for AuditLayer {
    type Service = AuditService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuditService {
            inner,
            auditor: self.auditor.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuditService<S> {
    inner: S,
    auditor: Auditor,
    metrics: Arc<crate::metrics::Metrics>,
}

/// The gRPC status code name of a response whose handler failed (trailers-only), or
/// OK.
fn outcome_of<B>(res: &http::Response<B>) -> String {
    match res
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        None | Some("0") => "OK".to_string(),
        Some(code) => {
            let code = code.parse::<i32>().unwrap_or(2);
            format!("{:?}", tonic::Code::from_i32(code)).to_uppercase_snake()
        }
    }
}

trait UpperSnake {
    fn to_uppercase_snake(&self) -> String;
}

impl UpperSnake for String {
    /// `PermissionDenied` → `PERMISSION_DENIED`.
    fn to_uppercase_snake(&self) -> String {
        let mut out = String::with_capacity(self.len() + 4);
        for (i, c) in self.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AuditService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Default + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<CallBody<AuditedBody<ResBody>>>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        // The clone is ready (tower's "take the ready one" pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path().to_string();
        if !path.starts_with("/oip.v1.") {
            let call = inner.call(req);
            return Box::pin(async move {
                let res = call.await.map_err(Into::into)?;
                Ok(res.map(|b| CallBody::direct(AuditedBody::plain(b))))
            });
        }
        let action = path.trim_start_matches('/').to_string();
        let arrived = std::time::Instant::now();
        let metrics = self.metrics.clone();
        let trace = trace_of(req.headers());
        let Checked { deadline, refusal } = edge::check(req.headers());
        if let Some(d) = &deadline {
            req.extensions_mut().insert(d.clone());
        }
        // Parsed from the client certificate once a call: the layers and handlers
        // inside find it in the extensions (issue 13's profile: parsed twice, the
        // certificate took 2% of the gateway's CPU on single-order calls).
        let caller = crate::identity::Caller::of(&req);
        req.extensions_mut().insert(caller.clone());
        let (identity, role) = caller
            .0
            .map(|p| (p.uri, p.role.as_str().to_string()))
            .unwrap_or_else(|| ("unknown".into(), String::new()));
        let note = CallNote {
            noted: Arc::default(),
            audited: Arc::default(),
            identity: identity.clone(),
            role: role.clone(),
            action: action.clone(),
            trace_id: trace.clone(),
            traceparent: traceparent(req.headers()).unwrap_or_default(),
        };
        req.extensions_mut().insert(note.clone());
        req.extensions_mut().insert(TraceId(trace.clone()));
        let auditor = self.auditor.clone();
        let expired = deadline.clone();
        let trace_header = http::HeaderValue::from_str(&trace).ok();
        // The call and its entry run in their own task: a caller who goes away (the
        // connection drops this future) cannot leave a stored batch without its entry.
        let task = tokio::spawn(async move {
            let mut res = match refusal {
                Some(status) => status.into_http(),
                None => inner.call(req).await.map_err(Into::into)?,
            };
            // What the caller is told for a request tonic could not read.
            edge::restate(&mut res);
            let entry = CallEntry {
                auditor: auditor.clone(),
                note: note.clone(),
                identity: identity.clone(),
                role: role.clone(),
                action: action.clone(),
                trace_id: trace.clone(),
                metrics: metrics.clone(),
                arrived,
            };
            if STREAMED_ANSWERS.contains(&action.as_str()) && header_code(&res).is_none() {
                // A streamed answer: its entry is written when the stream ends, after
                // the entries of its parts, with the status it ended with.
                if let Ok(v) = http::HeaderValue::from_str(&trace) {
                    res.headers_mut().insert("x-trace-id", v);
                }
                return Ok::<_, BoxError>(res.map(|b| AuditedBody::streamed(b, entry)));
            }
            let (scope, records) = note.take();
            let outcome = if expired.as_ref().is_some_and(CallDeadline::expired)
                && header_code(&res).is_none_or(|c| c == tonic::Code::Ok)
            {
                // The edge answered DEADLINE_EXCEEDED while the handler ran (it
                // committed nothing: see `deadline`).
                "DEADLINE_EXCEEDED".to_string()
            } else {
                outcome_of(&res)
            };
            metrics.call(&action, &outcome, arrived.elapsed());
            let event = Event {
                identity,
                role,
                action,
                scope,
                records,
                outcome,
                trace_id: trace.clone(),
            };
            let written =
                note.audited.load(std::sync::atomic::Ordering::Acquire) && event.outcome == "OK";
            if !written && let Err(e) = auditor.record(event).await {
                tracing::error!(error = %e, trace_id = %trace, "audit write failed: call refused");
                res = crate::error::audit_unavailable("nothing was answered, retry later")
                    .into_http();
            }
            if let Ok(v) = http::HeaderValue::from_str(&trace) {
                res.headers_mut().insert("x-trace-id", v);
            }
            Ok::<_, BoxError>(res.map(AuditedBody::plain))
        });
        let answer = async move {
            match task.await {
                Ok(result) => result,
                Err(e) => {
                    tracing::error!(error = %e, "call task failed");
                    Ok(crate::error::call_failed("its task ended").into_http())
                }
            }
        };
        match deadline {
            None => Box::pin(async move { Ok(answer.await?.map(CallBody::direct)) }),
            Some(d) => {
                // Answer the headers at once and the rest when the call ends or its
                // deadline passes: tonic's own timer would otherwise cut the call off as
                // CANCELLED while a commit may still complete.
                let mut head = http::Response::new(CallBody::deferred(Box::pin(answer), d));
                head.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/grpc"),
                );
                if let Some(v) = trace_header {
                    head.headers_mut().insert("x-trace-id", v);
                }
                Box::pin(async move { Ok(head) })
            }
        }
    }
}

/// Calls whose answer is a stream (a bulk submit, the pulls): their call entry is
/// written when the stream ends, after the entries of the chunks or pages, with the
/// status it ended with and the total.
const STREAMED_ANSWERS: [&str; 3] = [
    "oip.v1.PlatformService/SubmitStream",
    "oip.v1.TaxService/PullContributions",
    "oip.v1.SocialSecurityService/PullSocialSecurity",
];

/// What writes a call's entry at the end of a streamed answer.
struct CallEntry {
    auditor: Auditor,
    note: CallNote,
    identity: String,
    role: String,
    action: String,
    trace_id: String,
    metrics: Arc<crate::metrics::Metrics>,
    arrived: std::time::Instant,
}

impl CallEntry {
    /// The call's entry with `outcome` (made once, when the call ends; counted in the
    /// metrics then).
    fn event(&self, outcome: String) -> Event {
        self.metrics
            .call(&self.action, &outcome, self.arrived.elapsed());
        let (scope, records) = self.note.take();
        Event {
            identity: self.identity.clone(),
            role: self.role.clone(),
            action: self.action.clone(),
            scope,
            records,
            outcome,
            trace_id: self.trace_id.clone(),
        }
    }
}

/// The name of a gRPC code as the audit log writes it (`PERMISSION_DENIED`).
pub fn code_name_of(code: tonic::Code) -> String {
    if code == tonic::Code::Ok {
        "OK".into()
    } else {
        format!("{code:?}").to_uppercase_snake()
    }
}

/// The gRPC code name of a `grpc-status` value (`0` is `OK`).
fn code_name(code: Option<&http::HeaderValue>) -> String {
    match code.and_then(|v| v.to_str().ok()) {
        None | Some("0") => "OK".to_string(),
        Some(code) => {
            let code = code.parse::<i32>().unwrap_or(2);
            format!("{:?}", tonic::Code::from_i32(code)).to_uppercase_snake()
        }
    }
}

type Write = Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;

/// An answer's body; for a streamed answer, its call entry is written before its
/// trailers leave (UNAVAILABLE instead when the entry cannot be written), or as
/// CANCELLED when the caller goes away first.
pub struct AuditedBody<B> {
    body: Pin<Box<B>>,
    entry: Option<CallEntry>,
    writing: Option<Write>,
    trailers: Option<http::HeaderMap>,
}

impl<B> AuditedBody<B> {
    fn plain(body: B) -> Self {
        Self {
            body: Box::pin(body),
            entry: None,
            writing: None,
            trailers: None,
        }
    }

    fn streamed(body: B, entry: CallEntry) -> Self {
        Self {
            body: Box::pin(body),
            entry: Some(entry),
            writing: None,
            trailers: None,
        }
    }
}

impl<B: Default> Default for AuditedBody<B> {
    fn default() -> Self {
        Self::plain(B::default())
    }
}

impl<B> Drop for AuditedBody<B> {
    fn drop(&mut self) {
        // An entry being written is finished; the caller went away before the end:
        // the entry says so.
        if let Some(w) = self.writing.take() {
            tokio::spawn(w);
        } else if let Some(entry) = self.entry.take() {
            {
                let event = entry.event("CANCELLED".into());
                tokio::spawn(async move {
                    if let Err(e) = entry.auditor.record(event).await {
                        tracing::error!(error = %e, "audit write failed for a cancelled stream");
                    }
                });
            }
        }
    }
}

impl<B> http_body::Body for AuditedBody<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        loop {
            if let Some(w) = self.writing.as_mut() {
                let written = std::task::ready!(w.as_mut().poll(cx));
                self.writing = None;
                self.entry = None;
                let mut trailers = self.trailers.take().unwrap_or_default();
                if let Err(e) = written {
                    tracing::error!(error = %e, "audit write failed: stream refused");
                    trailers = crate::error::audit_unavailable("retry later")
                        .into_http::<()>()
                        .into_parts()
                        .0
                        .headers;
                    trailers.remove(http::header::CONTENT_TYPE);
                }
                return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
            }
            let frame = std::task::ready!(self.body.as_mut().poll_frame(cx));
            let Some(entry) = self.entry.as_ref() else {
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            };
            match frame {
                Some(Ok(f)) if f.is_trailers() => {
                    let trailers = f.into_trailers().unwrap_or_default();
                    let event = entry.event(code_name(trailers.get("grpc-status")));
                    let auditor = entry.auditor.clone();
                    self.trailers = Some(trailers);
                    self.writing = Some(Box::pin(async move { auditor.record(event).await }));
                }
                None => {
                    // Ended without trailers: nothing more to say than OK.
                    let event = entry.event("OK".into());
                    let auditor = entry.auditor.clone();
                    self.entry = None;
                    tokio::spawn(async move { auditor.record(event).await });
                    return Poll::Ready(None);
                }
                other => return Poll::Ready(other.map(|f| f.map_err(Into::into))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.entry.is_none() && self.writing.is_none() && self.body.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_follow_grpc() {
        assert_eq!(
            "PermissionDenied".to_string().to_uppercase_snake(),
            "PERMISSION_DENIED"
        );
        let res = tonic::Status::permission_denied("x").into_http::<tonic::body::Body>();
        assert_eq!(outcome_of(&res), "PERMISSION_DENIED");
        let ok = http::Response::new(tonic::body::Body::default());
        assert_eq!(outcome_of(&ok), "OK");
    }

    #[test]
    fn caller_trace_ids_are_kept_only_when_plain() {
        let mut h = http::HeaderMap::new();
        h.insert("x-trace-id", http::HeaderValue::from_static("abc-123"));
        let t = trace_of(&h);
        assert!(t.ends_with(".abc-123") && t.len() > ".abc-123".len(), "{t}");
        assert_ne!(trace_of(&h), t, "each call has its own");
        h.insert("x-trace-id", http::HeaderValue::from_static("a b"));
        assert!(!trace_of(&h).contains(' '));
        assert_ne!(new_trace_id(), new_trace_id());
    }
}
