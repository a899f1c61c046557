//! Storage of who may do what and of what they did: grants, the platform registry as
//! administrators read it, the audit log, and the journal that pulls read (the
//! outbox, in commit order).

use crate::domain::audit::AuditEntry;
use crate::domain::grant::Grant;
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
    /// The encoded delivery item as stored: sealed when it carries personal data
    /// (`pii::Pii::open_payload`).
    pub payload: super::Sealed,
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
    /// Sealed (`pii::Pii::open_id_number`).
    pub id_number: super::Sealed,
    /// Sealed (`pii::Pii::open_name`).
    pub name: super::Sealed,
}
