//! The call edge: gRPC conventions applied to every `oip.v1` call before and after its
//! handler, by the audit layer (`audit::AuditLayer`), so that what the caller is told
//! is what the audit log records (records.md, call-level errors):
//! - a call with a malformed `grpc-timeout` is INVALID_ARGUMENT, one with a content type
//!   other than protobuf UNIMPLEMENTED, before any handler runs ([`check`]);
//! - a status tonic produced for a request it could not read is restated in the spec's
//!   terms (`error::inbound`) and every status message is bounded ([`restate`]);
//! - a call with a deadline answers its headers at once and the rest when the handler
//!   ends or the deadline wins the race with the commit ([`CallBody`], `deadline`):
//!   tonic's own timer would otherwise cut the call off as CANCELLED while a commit may
//!   still complete.

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::deadline::{CallDeadline, parse_grpc_timeout};

/// Longest status message sent to a caller, in characters.
pub const MAX_STATUS_MESSAGE_CHARS: usize = 1000;

/// What [`check`] found in a call's headers.
#[derive(Debug, Default)]
pub struct Checked {
    /// The caller's deadline, when it sent one.
    pub deadline: Option<CallDeadline>,
    /// The status to answer without running the handler, if any.
    pub refusal: Option<tonic::Status>,
}

/// Checks a call's headers: its deadline (`grpc-timeout`) and content type.
pub fn check(headers: &http::HeaderMap) -> Checked {
    let mut checked = Checked::default();
    if let Some(v) = headers.get("grpc-timeout") {
        match v.to_str().ok().and_then(parse_grpc_timeout) {
            Some(d) => checked.deadline = Some(CallDeadline::after(d)),
            None => {
                checked.refusal = Some(crate::error::malformed_timeout());
            }
        }
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let subtype = content_type.split(';').next().unwrap_or_default().trim();
    if !matches!(subtype, "application/grpc" | "application/grpc+proto") {
        checked.refusal = Some(crate::error::unsupported_content_type(subtype));
    }
    checked
}

/// Restates a trailers-only status in the spec's terms and bounds its message.
pub fn restate<B: Default>(res: &mut http::Response<B>) {
    let Some(status) = tonic::Status::from_header_map(res.headers()) else {
        return;
    };
    let (code, message) = (status.code(), status.message().to_string());
    let mut mapped = crate::error::inbound(status);
    if mapped.message().chars().count() > MAX_STATUS_MESSAGE_CHARS {
        mapped = crate::error::bounded(&mapped, MAX_STATUS_MESSAGE_CHARS);
    }
    if mapped.code() != code || mapped.message() != message {
        *res = mapped.into_http();
    }
}

/// The error type of the edge's services and bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The status code in a trailers-only response's headers, if any.
pub fn header_code<B>(res: &http::Response<B>) -> Option<tonic::Code> {
    res.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// A handler's answer to come.
pub type Answer<B> =
    Pin<Box<dyn std::future::Future<Output = Result<http::Response<B>, BoxError>> + Send>>;

/// The body of an audited call: the handler's body as it is, or, for a call with a
/// deadline whose headers were sent at once, the handler's answer when it comes (its
/// body, or its trailers-only status as trailers), or DEADLINE_EXCEEDED when the
/// deadline wins the race with the commit (`deadline`).
pub struct CallBody<B> {
    state: BodyState<B>,
}

enum BodyState<B> {
    Waiting {
        answer: Answer<B>,
        deadline: CallDeadline,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    Body(Pin<Box<B>>),
    Trailers(Option<http::HeaderMap>),
    Done,
}

impl<B> CallBody<B> {
    /// The handler's body as it is.
    pub fn direct(body: B) -> Self {
        Self {
            state: BodyState::Body(Box::pin(body)),
        }
    }

    /// The handler's answer when it comes, or DEADLINE_EXCEEDED at `deadline`.
    pub fn deferred(answer: Answer<B>, deadline: CallDeadline) -> Self {
        let timer = Some(Box::pin(tokio::time::sleep_until(deadline.at())));
        Self {
            state: BodyState::Waiting {
                answer,
                deadline,
                timer,
            },
        }
    }
}

/// The gRPC status headers of `status`, to send as trailers.
fn status_trailers(status: tonic::Status) -> http::HeaderMap {
    let mut headers = status.into_http::<()>().into_parts().0.headers;
    headers.remove(http::header::CONTENT_TYPE);
    headers
}

impl<B> http_body::Body for CallBody<B>
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
            match &mut self.state {
                BodyState::Waiting {
                    answer,
                    deadline,
                    timer,
                } => {
                    if let Poll::Ready(res) = answer.as_mut().poll(cx) {
                        self.state = match res {
                            Ok(res) => {
                                let (parts, body) = res.into_parts();
                                if parts.headers.contains_key("grpc-status") {
                                    let mut trailers = parts.headers;
                                    trailers.remove(http::header::CONTENT_TYPE);
                                    BodyState::Trailers(Some(trailers))
                                } else {
                                    BodyState::Body(Box::pin(body))
                                }
                            }
                            Err(e) => BodyState::Trailers(Some(status_trailers(
                                crate::error::call_failed(e),
                            ))),
                        };
                        continue;
                    }
                    if let Some(t) = timer
                        && t.as_mut().poll(cx).is_ready()
                    {
                        *timer = None;
                        // A handler that owns its deadline answers it itself.
                        if !deadline.is_owned() && deadline.expire() {
                            // The handler will commit nothing now; it goes on to
                            // write the call's audit entry, which says so.
                            self.state =
                                BodyState::Trailers(Some(status_trailers(tonic::Status::from(
                                    crate::error::ApiError::from(crate::deadline::DeadlineExceeded),
                                ))));
                            continue;
                        }
                        // A commit is under way: its outcome is the answer.
                    }
                    return Poll::Pending;
                }
                BodyState::Body(b) => return b.as_mut().poll_frame(cx).map_err(Into::into),
                BodyState::Trailers(t) => {
                    let t = t.take().unwrap_or_default();
                    self.state = BodyState::Done;
                    return Poll::Ready(Some(Ok(http_body::Frame::trailers(t))));
                }
                BodyState::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::Body(b) => b.is_end_stream(),
            BodyState::Done => true,
            _ => false,
        }
    }
}

/// Admits each `oip.v1` call (`admission`): a path that names no method is
/// UNIMPLEMENTED at once (never audited with its raw path); a call over the caller's limits or the
/// gateway's is answered at once (RESOURCE_EXHAUSTED or UNAVAILABLE, with retry
/// advice) without reaching the audit layer or a handler; an admitted call holds its
/// place until its answer is sent. The request body of an admitted call is watched for
/// idleness (`connections.idle_stream_timeout_ms`). Health and reflection pass
/// through (a health check must answer under any load).
#[derive(Clone)]
pub struct AdmissionLayer {
    admission: std::sync::Arc<crate::admission::Admission>,
    idle: std::time::Duration,
    log: std::sync::Arc<crate::connections::LogBudget>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl AdmissionLayer {
    /// The layer over `admission`, ending request streams idle for `idle`.
    pub fn new(
        admission: std::sync::Arc<crate::admission::Admission>,
        idle: std::time::Duration,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            admission,
            idle,
            log: std::sync::Arc::new(crate::connections::LogBudget::new()),
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`AdmissionLayer`].
#[derive(Clone)]
pub struct AdmissionService<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S, ResBody> tower::Service<http::Request<tonic::body::Body>> for AdmissionService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<AdmittedBody<ResBody>>;
    type Error = BoxError;
    type Future = Answer<AdmittedBody<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !req.uri().path().starts_with("/oip.v1.") {
            let call = inner.call(req);
            return Box::pin(async move {
                let res = call.await.map_err(Into::into)?;
                Ok(res.map(|b| AdmittedBody::Admitted(Box::pin(b), None)))
            });
        }
        if !crate::metrics::is_known_method(req.uri().path()) {
            // A method no service has (a caller may send any path): answered here, not
            // audited with its raw path, counted as `unknown` (bounded labels).
            let status = crate::error::unknown_method();
            self.layer.metrics.call(
                req.uri().path(),
                &crate::audit::code_name_of(status.code()),
                std::time::Duration::ZERO,
            );
            let res = status.into_http::<()>();
            return Box::pin(async move { Ok(res.map(|()| AdmittedBody::Refused)) });
        }
        let caller = crate::identity::Caller::of(&req);
        let permit = match self.layer.admission.admit(caller.identity()) {
            Ok(p) => p,
            Err(refusal) => {
                let (log, suppressed) = self.layer.log.take();
                if suppressed > 0 {
                    tracing::warn!(suppressed, "more calls were refused than logged");
                }
                if log {
                    tracing::warn!(
                        identity = caller.identity(),
                        method = req.uri().path(),
                        "call refused: {refusal}"
                    );
                }
                let status = tonic::Status::from(refusal);
                self.layer.metrics.call(
                    req.uri().path(),
                    &crate::audit::code_name_of(status.code()),
                    std::time::Duration::ZERO,
                );
                let res = status.into_http::<()>();
                return Box::pin(async move { Ok(res.map(|()| AdmittedBody::Refused)) });
            }
        };
        req.extensions_mut().insert(caller);
        let idle = self.layer.idle;
        let rearm = IdleRearm::default();
        req.extensions_mut().insert(rearm.clone());
        let req = req.map(|b| tonic::body::Body::new(IdleBody::new(b, idle, rearm)));
        let call = inner.call(req);
        Box::pin(async move {
            let res = call.await.map_err(Into::into)?;
            Ok(res.map(|b| AdmittedBody::Admitted(Box::pin(b), Some(permit))))
        })
    }
}

/// The answer of a call through [`AdmissionLayer`]: the handler's body, holding the
/// call's place until it ends, or nothing (a refusal is all headers).
pub enum AdmittedBody<B> {
    Admitted(Pin<Box<B>>, Option<crate::admission::CallPermit>),
    Refused,
}

impl<B> http_body::Body for AdmittedBody<B>
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
        match &mut *self {
            AdmittedBody::Admitted(b, permit) => {
                let polled = b.as_mut().poll_frame(cx).map_err(Into::into);
                if let Poll::Ready(None) = polled {
                    // The answer is complete: the call's place is free.
                    permit.take();
                }
                polled
            }
            AdmittedBody::Refused => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AdmittedBody::Admitted(b, _) => b.is_end_stream(),
            AdmittedBody::Refused => true,
        }
    }
}

/// A request body that fails with DEADLINE_EXCEEDED when the caller sends nothing for
/// `idle` while the handler waits for it (the timer runs only while the handler is
/// waiting, so a slow commit never counts against the caller; a handler that looked
/// ahead without waiting before its own work says so with [`IdleRearm`]).
pub struct IdleBody {
    inner: tonic::body::Body,
    idle: std::time::Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    rearm: IdleRearm,
}

/// In the request extensions of a call with an [`IdleBody`]: lets the handler say it
/// is about to wait for the caller again after work of its own. A poll of the body
/// that found nothing (a look-ahead, `now_or_never`) started the idle timer; the next
/// poll drops it, so the handler's work in between (a commit) is not counted as the
/// caller's idle time. A handler that reads ahead while its own work is under way
/// (`SubmitStream`) holds the timer instead ([`IdleRearm::hold`]).
#[derive(Debug, Clone, Default)]
pub struct IdleRearm(std::sync::Arc<IdleFlags>);

#[derive(Debug, Default)]
struct IdleFlags {
    rearm: std::sync::atomic::AtomicBool,
    held: std::sync::atomic::AtomicBool,
}

impl IdleRearm {
    /// The idle time counts again from the body's next poll.
    pub fn rearm(&self) {
        self.0
            .rearm
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// `true`: the handler is working on what the caller sent (the caller may wait for
    /// its answers before sending more), so no idle time counts, even while the body
    /// is polled; `false`: it counts again from the body's next poll.
    pub fn hold(&self, held: bool) {
        self.0
            .held
            .store(held, std::sync::atomic::Ordering::Release);
        if !held {
            self.rearm();
        }
    }
}

impl IdleBody {
    /// `inner`, failing after `idle` without a frame.
    pub fn new(inner: tonic::body::Body, idle: std::time::Duration, rearm: IdleRearm) -> Self {
        Self {
            inner,
            idle,
            timer: None,
            rearm,
        }
    }
}

impl http_body::Body for IdleBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this
            .rearm
            .0
            .rearm
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            this.timer = None;
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame)
            }
            Poll::Pending if this.rearm.0.held.load(std::sync::atomic::Ordering::Acquire) => {
                this.timer = None;
                Poll::Pending
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.timer = None;
                    return Poll::Ready(Some(Err(crate::error::idle_stream(idle))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
