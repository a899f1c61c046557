//! Reliable forwarding to the social-security and tax backends.
//!
//! `outbox` turns a committed plan into delivery items (written in the same transaction
//! as the records); `dispatcher` delivers each destination's queue in order, at least
//! once, with backoff while a backend is down, and dead-letters items a backend keeps
//! refusing. Idempotency keys (`platform/kind/id/revision`) let backends drop repeats.

pub mod dispatcher;
pub mod outbox;
