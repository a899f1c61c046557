//! Storage of who may do what and of what they did: grants, the platform registry as
//! administrators read it, the audit log, and the journal that pulls read (the
//! outbox, in commit order).

use std::collections::HashMap;

use async_trait::async_trait;

use super::{Destination, Result};
use crate::domain::PlatformProfile;
use crate::domain::audit::AuditEntry;
use crate::domain::grant::{Grant, Role};
use crate::domain::time::Millis;

/// A grant as an administrator lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    pub grant: Grant,
    pub granted_at: Millis,
    /// The administrator who made it ([`CONFIGURATION`] for configuration seeds).
    pub granted_by: String,
}

/// The rates an administrator set for one caller identity (`admin limits put`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitRow {
    pub identity: String,
    pub calls_per_second: u32,
    pub records_per_second: u32,
    /// The administrator who set them.
    pub set_by: String,
    pub set_at: Millis,
}

/// `granted_by` of the grants the configuration makes at every start.
pub const CONFIGURATION: &str = "configuration";

/// Which audit entries to read: every filter that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub identity: Option<String>,
    /// Inclusive.
    pub from: Option<Millis>,
    /// Exclusive.
    pub to: Option<Millis>,
    pub action: Option<String>,
    /// Entries after this seq.
    pub after: i64,
    pub limit: u32,
}

/// Entries of the audit log with their stored hashes, in seq order.
pub type ChainRows = Vec<(AuditEntry, [u8; 32])>;

/// One journal entry: an item sent (or to be sent) to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub seq: i64,
    /// `platform/kind/id`.
    pub record_key: String,
    /// The encoded delivery item (in clear).
    pub payload: Vec<u8>,
}

/// A bounded scan of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalPage {
    pub entries: Vec<JournalEntry>,
    /// The last seq examined: the next scan starts after it.
    pub scanned_to: i64,
}

/// Who a worker is, for the social-security pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub id_type: String,
    pub id_number: String,
    pub name: String,
}

#[async_trait]
pub trait AccessStore: Send + Sync {
    /// Creates or replaces grants, recording who made them.
    async fn put_grants(&self, grants: &[Grant], by: &str, now: Millis) -> Result<()>;
    /// Deletes the listed scopes of a role (all of its scopes when `scopes` is empty);
    /// returns how many grants went.
    async fn revoke_grants(&self, identity: &str, role: Role, scopes: &[String]) -> Result<u64>;
    /// Every grant (of `identity` when given), expired ones included.
    async fn list_grants(&self, identity: Option<&str>) -> Result<Vec<GrantRow>>;

    /// Sets (or replaces) one identity's rates.
    async fn put_rate_limit(&self, row: &RateLimitRow) -> Result<()>;
    /// Removes one identity's rates; whether it had any.
    async fn clear_rate_limit(&self, identity: &str) -> Result<bool>;
    /// Every identity's rates, ordered by identity.
    async fn rate_limits(&self) -> Result<Vec<RateLimitRow>>;

    /// Every registered platform.
    async fn platforms(&self) -> Result<Vec<PlatformProfile>>;

    /// The newest entry's seq and hash, or the anchor (0 and genesis when empty).
    async fn audit_head(&self) -> Result<(i64, [u8; 32])>;
    /// Appends entries whose seq and hash the caller computed from the head.
    async fn append_audit(&self, entries: &ChainRows) -> Result<()>;
    /// A writer transaction for appending entries: its head is read inside it, so that
    /// entries appended by ingest transactions (`IngestTx::append_audit`) and by it
    /// form one chain.
    async fn begin_audit(&self) -> Result<Box<dyn super::AuditTx>>;
    /// Where the stored chain starts: the seq and hash of the last entry removed by
    /// retention, or 0 and genesis.
    async fn audit_anchor(&self) -> Result<(i64, [u8; 32])>;
    /// Up to `limit` entries after `after`, with their stored hashes.
    async fn audit_chain(&self, after: i64, limit: u32) -> Result<ChainRows>;
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>>;
    /// Removes entries older than `before` (never the newest), moving the anchor to
    /// the last removed; returns how many went and the anchor, or None when none did.
    async fn prune_audit(&self, before: Millis) -> Result<Option<(u64, i64, [u8; 32])>>;

    /// The newest journal seq (0 when empty).
    async fn journal_end(&self) -> Result<i64>;
    /// Entries of `destination` among the seqs `after + 1 ..= after + scan`.
    async fn journal(&self, destination: Destination, after: i64, scan: u32)
    -> Result<JournalPage>;
    /// The identities of workers, by (platform USCC, worker id); unknown ones absent.
    async fn persons(&self, keys: &[(String, String)])
    -> Result<HashMap<(String, String), Person>>;
}
