//! Reliable forwarding to the social-security and tax backends.
//!
//! `outbox` turns a committed plan into delivery items (written in the same transaction
//! as the records); `dispatcher` delivers each destination's queue in order, at least
//! once, with backoff while a backend is down, and dead-letters items a backend keeps
//! refusing; `release` sends a month's volume statements to tax when it closes.
//! Idempotency keys (`platform/kind/id/revision`, or `.../<batch>` for derived items)
//! let backends drop repeats.

pub mod dispatcher;
pub mod outbox;
pub mod release;
