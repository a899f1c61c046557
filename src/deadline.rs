//! A call's deadline (the caller's `grpc-timeout`, gRPC over HTTP/2 protocol) and the
//! gate between it and a commit (records.md, call-level errors: "DEADLINE_EXCEEDED:
//! the caller's deadline passed before the batch committed; nothing was applied").
//!
//! The edge ([`crate::audit::AuditLayer`]) starts the clock when the call arrives; a
//! write passes [`CallDeadline::begin_commit`] right before it commits. Exactly one of
//! two things happens: the deadline wins (the write rolls back, the caller is told
//! DEADLINE_EXCEEDED, and so is the audit log), or the commit wins (the caller gets
//! the real outcome, even if it arrives after the deadline).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const OPEN: u8 = 0;
const COMMITTING: u8 = 1;
const EXPIRED: u8 = 2;
/// A unary call whose commit succeeded: its answer is the outcome, however late.
const COMMITTED: u8 = 3;

/// The deadline of one call; cheap to clone (shared by the edge and the handler).
#[derive(Debug, Clone)]
pub struct CallDeadline(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    at: Instant,
    state: AtomicU8,
    /// The handler answers the deadline itself (a stream that says how far it got).
    owned: std::sync::atomic::AtomicBool,
}

/// The deadline passed before the commit: nothing was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the caller's deadline passed before the batch committed; nothing was applied")]
pub struct DeadlineExceeded;

/// Held while a commit is under way: the deadline cannot expire the call meanwhile.
#[derive(Debug)]
pub struct CommitGuard(CallDeadline);

impl CommitGuard {
    /// The commit succeeded. A call whose handler answers the deadline itself (a
    /// stream, which commits chunk by chunk) is open again for its next chunk; any
    /// other call can no longer be expired: its answer is the committed outcome.
    pub fn committed(self) {
        let next = if self.0.is_owned() { OPEN } else { COMMITTED };
        let _ =
            self.0
                .0
                .state
                .compare_exchange(COMMITTING, next, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl CommitGuard {
    /// Whether this guard holds `deadline` (the same call's, not an equal instant).
    pub fn guards(&self, deadline: &CallDeadline) -> bool {
        self.0.same(deadline)
    }
}

impl Drop for CommitGuard {
    fn drop(&mut self) {
        let _ =
            self.0
                .0
                .state
                .compare_exchange(COMMITTING, OPEN, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl CallDeadline {
    /// A deadline `after` from now.
    pub fn after(after: Duration) -> Self {
        Self(Arc::new(Inner {
            at: Instant::now() + after,
            state: AtomicU8::new(OPEN),
            owned: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Whether `other` is this call's deadline (a clone of it), not another call's.
    pub fn same(&self, other: &CallDeadline) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The handler will answer the deadline itself (a stream, which can say how far it
    /// got): the edge then waits for its answer instead of answering at the deadline.
    pub fn own(&self) {
        self.0.owned.store(true, Ordering::Release);
    }

    /// Whether the handler answers the deadline itself.
    pub fn is_owned(&self) -> bool {
        self.0.owned.load(Ordering::Acquire)
    }

    /// Resolves when the deadline passes; the call is then expired unless a commit is
    /// under way (see [`CallDeadline::expire`]).
    pub async fn passed(&self) {
        tokio::time::sleep_until(self.0.at).await;
    }

    /// When the deadline passes.
    pub fn at(&self) -> Instant {
        self.0.at
    }

    /// Expires the call unless a commit is under way: true when the call is expired
    /// (no commit will start), false when a commit won the race.
    pub fn expire(&self) -> bool {
        match self
            .0
            .state
            .compare_exchange(OPEN, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == EXPIRED,
        }
    }

    /// Whether the call was expired (the caller was or will be told
    /// DEADLINE_EXCEEDED).
    pub fn expired(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == EXPIRED
    }

    /// Checks the deadline without committing (before starting work).
    pub fn check(&self) -> Result<(), DeadlineExceeded> {
        if self.expired() || (Instant::now() >= self.0.at && self.expire()) {
            Err(DeadlineExceeded)
        } else {
            Ok(())
        }
    }

    /// Right before a commit: the guard keeps the deadline from expiring the call until
    /// it is dropped; Err when the deadline has passed (roll back).
    pub fn begin_commit(&self) -> Result<CommitGuard, DeadlineExceeded> {
        self.check()?;
        match self
            .0
            .state
            .compare_exchange(OPEN, COMMITTING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(CommitGuard(self.clone())),
            Err(_) => Err(DeadlineExceeded),
        }
    }
}

/// Parses a `grpc-timeout` header value: up to 8 ASCII digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`), per the gRPC over HTTP/2 protocol; None when malformed.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("50m"), Some(Duration::from_millis(50)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "5x", "-5m", "5 m"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_committed_call_is_never_expired_but_a_stream_goes_on() {
        let unary = CallDeadline::after(Duration::from_secs(60));
        unary.begin_commit().expect("open").committed();
        assert!(!unary.expire(), "its answer is the committed outcome");
        assert!(!unary.expired());

        let stream = CallDeadline::after(Duration::from_secs(60));
        stream.own();
        stream.begin_commit().expect("open").committed();
        assert!(stream.expire(), "the next chunk can still be cut off");
    }

    #[tokio::test]
    async fn a_commit_and_the_deadline_exclude_each_other() {
        let d = CallDeadline::after(Duration::from_secs(60));
        let guard = d.begin_commit().expect("before the deadline");
        assert!(!d.expire(), "a commit under way wins");
        drop(guard);
        assert!(
            d.expire(),
            "after the commit, the deadline can expire the call"
        );
        assert!(d.expired());
        assert_eq!(d.begin_commit().err(), Some(DeadlineExceeded));

        let past = CallDeadline::after(Duration::ZERO);
        assert_eq!(past.check(), Err(DeadlineExceeded));
        assert!(past.expired(), "noticing the deadline expires the call");
    }
}
