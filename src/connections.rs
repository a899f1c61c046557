//! Accepting connections on the gateway port: TCP accept, the mutual-TLS handshake
//! bounded in time and in number, established connections counted and capped. What
//! comes out is a stream of TLS connections for tonic to serve HTTP/2 on (whose own
//! limits, streams per connection, keepalive and connection age, are set from the same
//! [`ConnectionLimits`] in `app`).
//!
//! Why this is not tonic's built-in TLS: a connection that never starts TLS must not
//! hold a socket for ever (issue 12: 20,000 of them exhausted the descriptors with
//! nothing logged), and refused handshakes must be logged with their reason.
//!
//! - Each handshake has `handshake_timeout_ms`; a connection that has not finished by
//!   then is closed.
//! - At most `max_handshakes` connections are in the handshake at once. A new one
//!   beyond that closes the *oldest* pending handshake: a slow or silent peer loses its
//!   place to a new one, so a flood of idle sockets cannot lock out a real client
//!   (whose handshake takes milliseconds).
//! - At most `max_connections` connections are established at once; a new connection
//!   beyond it is closed at once (and logged).
//! - Refusals are logged (`tls handshake refused`, with the peer address and rustls'
//!   reason: an expired, unknown or missing client certificate) but at most
//!   [`LOG_BURST`] lines per [`LOG_WINDOW`] for each kind, then one line with the count
//!   suppressed, so that a flood cannot fill the disk.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// Why a connection that completed TLS was closed before HTTP/2 began.
const NO_PREFACE: &str = "no HTTP/2 connection preface in time";

/// Lines of one kind logged per [`LOG_WINDOW`] before further ones are counted only.
pub const LOG_BURST: u32 = 20;
/// The window of [`LOG_BURST`].
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Connection and stream limits of the gateway port (configuration `[connections]`).
/// Durations in milliseconds or seconds as named; 0 turns a timer off where noted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Time a new connection has to complete the TLS handshake, in milliseconds
    /// (default 10,000).
    pub handshake_timeout_ms: u64,
    /// Connections in the TLS handshake at once (default 1,024); a new one beyond it
    /// closes the oldest pending handshake.
    pub max_handshakes: usize,
    /// Established connections at once (default 10,000); beyond it new connections are
    /// closed at once. The process raises its open-file limit to fit at start.
    pub max_connections: usize,
    /// Established connections at once for one caller identity (default 64): one
    /// certificate cannot take every connection slot.
    pub max_connections_per_identity: usize,
    /// HTTP/2 streams (calls) open at once on one connection (default 100); the
    /// client waits for a free stream beyond it.
    pub max_concurrent_streams: u32,
    /// Calls in progress at once for one caller identity, across its connections
    /// (default 64); beyond it RESOURCE_EXHAUSTED at once.
    pub max_calls_per_identity: usize,
    /// Calls in progress at once in the whole gateway (default 512); beyond it
    /// UNAVAILABLE at once (load shedding), never an unbounded queue.
    pub max_calls: usize,
    /// A call whose request stream sends nothing for this long is ended with
    /// DEADLINE_EXCEEDED, in milliseconds (default 30,000; what it committed stands).
    pub idle_stream_timeout_ms: u64,
    /// HTTP/2 PING interval on an idle connection, in seconds (default 60; 0: none).
    pub keepalive_interval_secs: u64,
    /// Time a PING may go unanswered before the connection is closed, in seconds
    /// (default 20).
    pub keepalive_timeout_secs: u64,
    /// A connection is asked to go away (GOAWAY) after this long, in seconds (default
    /// 7,200; 0: never), so that clients spread over replicas and pick up a reloaded
    /// certificate.
    pub max_connection_age_secs: u64,
    /// Calls still running on a connection past its age get this long to finish, in
    /// seconds (default 600).
    pub max_connection_age_grace_secs: u64,
    /// On SIGTERM, SIGINT or SIGHUP the gateway stops accepting calls and gives the
    /// calls in progress this long to finish, in seconds (default 30); then it stops
    /// (a second signal stops it at once). What a cut call committed stands; what it
    /// had not committed was never acknowledged.
    pub shutdown_grace_secs: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 10_000,
            max_handshakes: 1024,
            max_connections: 10_000,
            max_connections_per_identity: 64,
            max_concurrent_streams: 100,
            max_calls_per_identity: 64,
            max_calls: 512,
            idle_stream_timeout_ms: 30_000,
            keepalive_interval_secs: 60,
            keepalive_timeout_secs: 20,
            max_connection_age_secs: 7200,
            max_connection_age_grace_secs: 600,
            shutdown_grace_secs: 30,
        }
    }
}

impl ConnectionLimits {
    /// What is wrong with these limits, if anything (each must allow some traffic).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut positive = |key: &str, v: u64| {
            if v == 0 {
                out.push(format!("connections.{key} must be at least 1"));
            }
        };
        positive("handshake_timeout_ms", self.handshake_timeout_ms);
        positive("max_handshakes", self.max_handshakes as u64);
        positive("max_connections", self.max_connections as u64);
        positive(
            "max_connections_per_identity",
            self.max_connections_per_identity as u64,
        );
        positive(
            "max_concurrent_streams",
            u64::from(self.max_concurrent_streams),
        );
        positive("max_calls_per_identity", self.max_calls_per_identity as u64);
        positive("max_calls", self.max_calls as u64);
        positive("idle_stream_timeout_ms", self.idle_stream_timeout_ms);
        positive("keepalive_timeout_secs", self.keepalive_timeout_secs);
        out
    }
}

/// What the accept loop has seen, for metrics and tests.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections in the TLS handshake now.
    pub handshaking: AtomicUsize,
    /// Established connections now.
    pub established: AtomicUsize,
    /// Handshakes that completed.
    pub accepted: AtomicU64,
    /// Handshakes that failed (refused certificate, not TLS, peer gone).
    pub refused: AtomicU64,
    /// Handshakes closed at `handshake_timeout_ms`.
    pub timed_out: AtomicU64,
    /// Pending handshakes closed to make room for a new connection.
    pub evicted: AtomicU64,
    /// Connections closed at once because `max_connections` were established, or
    /// `max_connections_per_identity` of the caller's.
    pub over_capacity: AtomicU64,
    /// Connections closed after the handshake for not starting HTTP/2 in time.
    pub no_preface: AtomicU64,
}

/// A log line budget: [`LOG_BURST`] lines per [`LOG_WINDOW`], then a count.
pub struct LogBudget {
    state: Mutex<(std::time::Instant, u32, u64)>,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl LogBudget {
    /// A fresh budget.
    pub fn new() -> Self {
        Self {
            state: Mutex::new((std::time::Instant::now(), 0, 0)),
        }
    }

    /// Whether to log this event; `Some(n)` also reports `n` events suppressed in
    /// the window that just ended.
    pub fn take(&self) -> (bool, u64) {
        let Ok(mut s) = self.state.lock() else {
            return (false, 0);
        };
        let now = std::time::Instant::now();
        let mut suppressed = 0;
        if now.duration_since(s.0) >= LOG_WINDOW {
            suppressed = s.2;
            *s = (now, 0, 0);
        }
        if s.1 < LOG_BURST {
            s.1 += 1;
            (true, suppressed)
        } else {
            s.2 += 1;
            (false, suppressed)
        }
    }
}

/// Pending handshakes, oldest first, so that the oldest can be closed.
#[derive(Default)]
struct Pending {
    next: u64,
    queue: VecDeque<(u64, AbortHandle)>,
}

/// How many of something (connections, calls) each caller identity holds, each up to a
/// maximum; an identity holding none is forgotten (the map stays bounded by holders).
#[derive(Debug, Default)]
pub struct IdentityCounts(Mutex<std::collections::HashMap<String, usize>>);

impl IdentityCounts {
    /// Takes one for `identity` unless it holds `max` already.
    pub fn try_take(&self, identity: &str, max: usize) -> bool {
        let Ok(mut m) = self.0.lock() else {
            return false;
        };
        let held = m.get(identity).copied().unwrap_or(0);
        if held >= max {
            return false;
        }
        m.insert(identity.to_string(), held + 1);
        true
    }

    /// Gives one of `identity`'s back.
    pub fn give_back(&self, identity: &str) {
        if let Ok(mut m) = self.0.lock()
            && let Some(n) = m.get_mut(identity)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(identity);
            }
        }
    }

    /// Whether no identity holds any.
    pub fn is_empty(&self) -> bool {
        self.0.lock().map(|m| m.is_empty()).unwrap_or(true)
    }

    /// How many `identity` holds.
    pub fn held(&self, identity: &str) -> usize {
        self.0
            .lock()
            .map(|m| m.get(identity).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// Established connections per caller identity.
type PerIdentity = Arc<IdentityCounts>;

/// The HTTP/2 client connection preface (RFC 9113 §3.4), which a client sends first.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An established connection, counted while it lives (in all and for its caller), with
/// the HTTP/2 preface already read from it (replayed first).
pub struct Connection {
    inner: TlsStream<TcpStream>,
    stats: Arc<ConnectionStats>,
    identity: String,
    per_identity: PerIdentity,
    replay: usize,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.stats.established.fetch_sub(1, Ordering::Relaxed);
        self.per_identity.give_back(&self.identity);
    }
}

impl Connected for Connection {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.replay < PREFACE.len() {
            let rest = &PREFACE[self.replay..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.replay += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The source of the TLS server configuration for each new handshake: swapped in place
/// when the certificate, key or CRLs are reloaded.
pub type TlsSource = Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>;

/// Accepts connections on `listener` for as long as the returned stream is polled
/// (dropping it stops the loop) and `stop` is false (at true the listener closes),
/// each through a bounded handshake under the current configuration of `tls`.
pub fn accept(
    listener: TcpListener,
    tls: TlsSource,
    limits: &ConnectionLimits,
    stats: Arc<ConnectionStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<Result<Connection, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let timeout = Duration::from_millis(limits.handshake_timeout_ms.max(1));
    let (max_handshakes, max_connections) = (limits.max_handshakes.max(1), limits.max_connections);
    let per_identity_max = limits.max_connections_per_identity.max(1);
    tokio::spawn(async move {
        let per_identity: PerIdentity = Arc::default();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let refused_log = Arc::new(LogBudget::new());
        let capacity_log = Arc::new(LogBudget::new());
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stop.changed() => None,
                () = tx.closed() => return,
                a = listener.accept() => Some(a),
            };
            if *stop.borrow() {
                // Shutting down: the listener closes, new connections are refused at
                // once (clients fail over instead of waiting on a draining server),
                // and one accepted as it stopped is closed unserved, as those still
                // in the listener's backlog are.
                return;
            }
            let Some(accepted) = accepted else { continue };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if stats.established.load(Ordering::Relaxed) >= max_connections {
                stats.over_capacity.fetch_add(1, Ordering::Relaxed);
                log_refusal(
                    &capacity_log,
                    peer,
                    "connection closed: connections.max_connections are established",
                );
                drop(tcp);
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let config = match tls.read() {
                Ok(c) => c.clone(),
                Err(_) => return,
            };
            let (tx, stats, pending_for_task, log, per_identity) = (
                tx.clone(),
                stats.clone(),
                pending.clone(),
                refused_log.clone(),
                per_identity.clone(),
            );
            let id;
            {
                let Ok(mut p) = pending.lock() else { return };
                id = p.next;
                p.next += 1;
                while p.queue.len() >= max_handshakes {
                    if let Some((_, oldest)) = p.queue.pop_front() {
                        oldest.abort();
                        stats.evicted.fetch_add(1, Ordering::Relaxed);
                        stats.handshaking.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                stats.handshaking.fetch_add(1, Ordering::Relaxed);
                let task = tokio::spawn(async move {
                    // The handshake and the HTTP/2 preface, within one timeout: a peer
                    // that completes TLS and then says nothing holds no slot for long.
                    let result = tokio::time::timeout(timeout, async {
                        let mut tls = TlsAcceptor::from(config).accept(tcp).await?;
                        let mut first = [0u8; PREFACE.len()];
                        tokio::io::AsyncReadExt::read_exact(&mut tls, &mut first)
                            .await
                            .map_err(|_| std::io::Error::other(NO_PREFACE))?;
                        if &first != PREFACE {
                            return Err(std::io::Error::other(NO_PREFACE));
                        }
                        Ok(tls)
                    })
                    .await;
                    // Out of the pending queue first: from here on this task is not
                    // aborted for room, and its count is its own to take back.
                    let still_pending = pending_for_task
                        .lock()
                        .map(|mut p| {
                            let before = p.queue.len();
                            p.queue.retain(|(i, _)| *i != id);
                            p.queue.len() < before
                        })
                        .unwrap_or(false);
                    if !still_pending {
                        return;
                    }
                    stats.handshaking.fetch_sub(1, Ordering::Relaxed);
                    match result {
                        Ok(Ok(tls)) => {
                            let identity = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| {
                                    crate::identity::Principal::uri_of_certificate(c.as_ref()).ok()
                                })
                                .unwrap_or_else(|| "unknown".to_string());
                            if !per_identity.try_take(&identity, per_identity_max) {
                                stats.over_capacity.fetch_add(1, Ordering::Relaxed);
                                log_refusal(
                                    &log,
                                    peer,
                                    &format!(
                                        "connection of {identity} closed: it has connections.max_connections_per_identity established"
                                    ),
                                );
                                return;
                            }
                            stats.accepted.fetch_add(1, Ordering::Relaxed);
                            stats.established.fetch_add(1, Ordering::Relaxed);
                            let conn = Connection {
                                inner: tls,
                                stats: stats.clone(),
                                identity,
                                per_identity: per_identity.clone(),
                                replay: 0,
                            };
                            let _ = tx.send(Ok(conn)).await;
                        }
                        Ok(Err(e)) if e.to_string() == NO_PREFACE => {
                            stats.no_preface.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "connection closed: no HTTP/2 preface after the handshake");
                        }
                        Ok(Err(e)) => {
                            stats.refused.fetch_add(1, Ordering::Relaxed);
                            log_refusal(&log, peer, &format!("tls handshake refused: {e}"));
                        }
                        Err(_) => {
                            stats.timed_out.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "tls handshake timed out; connection closed");
                        }
                    }
                });
                p.queue.push_back((id, task.abort_handle()));
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn log_refusal(budget: &LogBudget, peer: SocketAddr, what: &str) {
    let (log, suppressed) = budget.take();
    if suppressed > 0 {
        tracing::warn!(
            suppressed,
            "more connections were refused in the last {} s than logged",
            LOG_WINDOW.as_secs()
        );
    }
    if log {
        tracing::warn!(%peer, "{what}");
    }
}

/// Raises this process's soft limit on open files to its hard limit, so that
/// `max_connections` fits; returns the limit now in force (None where unknown).
pub fn raise_open_file_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}
