//! Durable storage behind one interface. `sqlite` is the embedded default; a
//! PostgreSQL implementation for several replicas comes next (roadmap), and the
//! conformance suite in `tests/it/store.rs` is written against the trait.
//!
//! An ingest is one transaction: [`IngestRepo::begin_ingest`] opens it, the caller loads
//! what the rules need ([`IngestTx::load`]), decides with `crosscheck`, writes the
//! resulting plan and commits; the answer goes out only after the commit.

use async_trait::async_trait;

use crate::domain::grant::Grant;
use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;

use crate::domain::PlatformProfile;
use crate::domain::audit::AuditEntry;
use crate::domain::batch::{EnrolmentKey, Known, Plan, Touched};
use crate::domain::fees::{BaseRate, FloatRate, RateBook};
use crate::domain::grant::Role;
use crate::domain::period::Period;
use crate::domain::reconcile::Statements;
use crate::domain::time::Millis;
use access::{AuditQuery, ChainRows, GrantRow, JournalPage, Person, RateLimitRow};

pub mod access;
mod chain;
pub mod postgres;
mod rows;
pub mod sim;
pub mod sqlite;

/// Opens the store `url` names with the default [`StoreOptions`] (see [`connect_with`]).
pub async fn connect(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    connect_with(url, &StoreOptions::default()).await
}

/// Opens the store `url` names and applies its migrations: `sqlite:PATH` (or
/// `sqlite://PATH`) is the embedded SQLite file, created if missing;
/// `postgres://…` (or `postgresql://…`) is a PostgreSQL database that several
/// replicas may share. The one place that picks a backend: everything above the
/// store holds the `Arc<dyn Store>` it returns. Fails with `StoreError::Unavailable`
/// for a URL of no known backend, or when the database cannot be reached, and
/// `StoreError::Migrate` when its schema cannot be brought up to date.
pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        return Ok(std::sync::Arc::new(sqlite::SqliteStore::open(url).await?));
    }
    if is_postgres(url) {
        return Ok(std::sync::Arc::new(
            postgres::PgStore::open(url, options).await?,
        ));
    }
    let scheme = url.split(':').next().unwrap_or_default();
    Err(StoreError::Unavailable(format!(
        "database_url: no store for the scheme {scheme:?} (sqlite: and postgres:// are supported)"
    )))
}

/// `url` as it may be shown (logs, errors, `serve --print-config`): a password in it
/// is replaced by `***`, whether in the user information (`user:secret@`, the secret
/// running to the last `@`, so a `/` or `@` in it is covered too) or in the query
/// (`password=secret`, `sslpassword=secret`).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***@")),
                None => out.push_str(&format!("{userinfo}@")),
            }
            out.push_str(host);
        }
        None => out.push_str(rest),
    }
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// How a store that many replicas share works: its connection pool and the leases
/// of outbox deliveries (`[database]` in the configuration). SQLite ignores them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreOptions {
    /// Connections to PostgreSQL per replica, at most (at least 2).
    pub max_connections: u32,
    /// How long a call waits for a free connection before failing UNAVAILABLE, in
    /// milliseconds.
    pub acquire_timeout_ms: u64,
    /// How long an outbox item claimed for delivery stays this replica's, in
    /// milliseconds: after it, another replica may deliver it (again, under the same
    /// idempotency key). Longer than a delivery call and its settlement take.
    pub lease_ms: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout_ms: 10_000,
            lease_ms: 60_000,
        }
    }
}

/// Once-only work held by this process across every replica until dropped
/// ([`SealedRepo::lock_resealing`]): on PostgreSQL a session advisory lock on a
/// connection of its own, released when the guard drops or the process dies; on
/// SQLite nothing (one process owns the file: [`lock_database`]).
pub struct JobLock {
    _held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl JobLock {
    /// A lock that holds nothing (the backend has one process).
    pub fn none() -> Self {
        Self { _held: None }
    }

    /// A lock held as long as `held` lives.
    pub fn holding(held: Box<dyn std::any::Any + Send + Sync>) -> Self {
        Self { _held: Some(held) }
    }
}

/// Prepares a SQLite database file readable by its owner only: its directory is
/// created owner-only when missing, the file is created with mode 0600 when missing
/// (SQLite gives its `-wal` and `-shm` files the same mode), and existing files of an
/// older start are narrowed to 0600. The files hold sealed personal data and the audit
/// log: they are nobody else's business. Call it before this process opens the
/// database with SQLite: it opens and closes the file, and closing any descriptor of a
/// file drops every POSIX lock the process holds on it, SQLite's included (see
/// `SqliteStore::probe`).
pub(crate) fn owner_only_database(path: &std::path::Path) -> std::io::Result<()> {
    if path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:") {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    #[cfg(not(unix))]
    {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
    }
    Ok(())
}

/// The file of a `sqlite:` URL (or plain path), without its query; `None` for an
/// in-memory database.
pub(crate) fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && !path.contains(":memory:")).then(|| std::path::PathBuf::from(path))
}

/// A running gateway's claim on its SQLite database: an exclusive lock on
/// `<database>.lock` (holding the owner's process id), released when dropped or when
/// the process ends. SQLite keeps one writer's sequences (the audit chain, the outbox)
/// consistent only within one process; several replicas need PostgreSQL.
#[derive(Debug)]
pub struct DatabaseLock {
    _file: Option<std::fs::File>,
}

/// Claims the database of `url` for this process. Errors: another process holds it
/// (named with its process id and what to do), or the lock file cannot be made.
pub fn lock_database(url: &str) -> anyhow::Result<DatabaseLock> {
    use std::io::{Read as _, Seek as _, Write as _};
    let Some(path) = sqlite_path(url).filter(|_| url.starts_with("sqlite:")) else {
        // PostgreSQL: replicas share the database by design.
        return Ok(DatabaseLock { _file: None });
    };
    owner_only_database(&path)
        .map_err(|e| anyhow::anyhow!("database_url: cannot create {}: {e}", path.display()))?;
    let mut lock_path = path.clone().into_os_string();
    lock_path.push(".lock");
    let lock_path = std::path::PathBuf::from(lock_path);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&lock_path)
        .map_err(|e| anyhow::anyhow!("database_url: cannot create {}: {e}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut owner = String::new();
            let _ = file.read_to_string(&mut owner);
            let owner = owner.trim();
            let who = if owner.is_empty() {
                "another gateway".to_string()
            } else {
                format!("another gateway (process {owner})")
            };
            anyhow::bail!(
                "database_url: {} is in use by {who}: stop it first, or give this gateway its own database_url (several replicas on one database need PostgreSQL)",
                path.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            anyhow::bail!("database_url: cannot lock {}: {e}", lock_path.display());
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(DatabaseLock { _file: Some(file) })
}

/// Storage failures. Every variant is the gateway's problem, not the caller's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Busy, locked, out of connections or I/O: retrying later may succeed; nothing
    /// was half-applied.
    #[error("storage temporarily unavailable: {0}")]
    Unavailable(String),
    /// Data in the store does not have the shape the code expects.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("migration failed: {0}")]
    Migrate(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A page of a listing, in key order.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub limit: u32,
    /// Exclusive lower bound: the last key of the previous page.
    pub after: Option<String>,
    /// Only this record id.
    pub id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The key to pass as `after` for the next page; None at the end.
    pub next: Option<String>,
}

/// A stored worker as read back (personal fields as stored; callers mask them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    pub worker_id: String,
    pub revision: u32,
    pub id_type: String,
    /// Sealed (`pii::Pii::open_id_number` gives it in clear).
    pub id_number: Sealed,
    /// Sealed (`pii::Pii::open_name`).
    pub name: Sealed,
    /// Sealed (`pii::Pii::open_mobile`).
    pub mobile: Sealed,
    pub industries: Vec<String>,
    pub registered_at: Millis,
    pub status: String,
    pub left_at: Option<Millis>,
    pub received_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: String,
    #[sqlx(try_from = "i64")]
    pub revision: u32,
    pub worker_id: String,
    pub industry: String,
    pub division_code: String,
    pub accepted_at: Millis,
    pub completed_at: Option<Millis>,
    pub status: String,
    pub vehicle_plate: Option<String>,
    pub received_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RejectionRecord {
    pub seq: i64,
    pub kind: String,
    pub record_id: String,
    #[sqlx(try_from = "i64")]
    pub revision: u32,
    pub code: String,
    pub field: String,
    pub message: String,
    pub received_at: Millis,
}

/// A platform as registered by configuration or an administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformRegistration {
    pub uscc: String,
    pub name: String,
    pub industries: Vec<String>,
    /// Division code → pilot start (Asia/Shanghai local date).
    pub pilot_starts: Vec<(String, chrono::NaiveDate)>,
    pub delivery_tier: crate::domain::platform::DeliveryTier,
    /// Division → tier, where it differs from `delivery_tier`.
    pub delivery_tiers: Vec<(String, crate::domain::platform::DeliveryTier)>,
}

/// Where an outbox item goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    SocialSecurity,
    Tax,
}

impl Destination {
    /// Every destination.
    pub const ALL: [Self; 2] = [Self::SocialSecurity, Self::Tax];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SocialSecurity => "social-security",
            Self::Tax => "tax",
        }
    }
}

/// An item to deliver, written with the records it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub destination: Destination,
    /// `platform/kind/id`: items of one record are delivered in order.
    pub record_key: String,
    /// `platform/kind/id/revision`: the backend drops repeats by it.
    pub idempotency_key: String,
    /// The encoded delivery item.
    pub payload: Vec<u8>,
    /// Pending (or dead-lettered) items of the same record whose idempotency key starts
    /// with this prefix are made obsolete by this one (state `superseded`, never sent,
    /// never replayed): a derived item
    /// (statement, daily enrolment, reconciliation update) carries the whole new
    /// state, so the backend needs only the latest. None for records, whose every
    /// revision is delivered.
    pub supersedes: Option<String>,
    /// The daily enrolment a daily enrolment's item states (None for every other
    /// item). Its items replace each other whole, so only the newest can be open: the
    /// enrolment's row names it, and the next item supersedes it through the row
    /// instead of a record-key index (issue 13's profile).
    pub daily_enrolment: Option<EnrolmentKey>,
    /// The order whose revision this item carries (None for every other item). Every
    /// revision of an order is delivered, in order; the order's row names its newest
    /// item and each item the one before it, so a store chains them instead of
    /// indexing them by record key (issue 13's profile: one random index page per
    /// order and commit).
    pub order_id: Option<String>,
}

/// An outbox item claimed for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueItem {
    pub seq: i64,
    pub idempotency_key: String,
    /// The encoded delivery item as stored: sealed when it carries personal data
    /// (`pii::Pii::open_payload` gives it in clear).
    pub payload: Sealed,
    pub attempts: u32,
}

/// What became of a delivered item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Refused as invalid: retried after `retry_at`, or dead-lettered at `max_attempts`.
    Invalid {
        reason: String,
        retry_at: Millis,
    },
}

/// One outbox item of a record, as its platform reads it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryRow {
    pub idempotency_key: String,
    pub destination: String,
    pub state: String,
    #[sqlx(try_from = "i64")]
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub delivered_at: Option<Millis>,
}

/// Queue depth of one destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub pending: u64,
    pub dead: u64,
    pub oldest_pending_at: Option<Millis>,
}

/// A dead-lettered outbox item, as an administrator reads it (keys and the
/// backend's reason; never the payload, which may hold personal data).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetter {
    pub seq: i64,
    pub destination: String,
    pub record_key: String,
    pub idempotency_key: String,
    #[sqlx(try_from = "i64")]
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: Millis,
}

/// Which dead letters an administrator acts on: the listed ones, or (with an empty
/// list) every dead letter of `destination` (of both when None).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterSelection {
    pub destination: Option<Destination>,
    pub seqs: Vec<i64>,
}

/// What [`OutboxRepo::handle_dead_letters`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeadLettersHandled {
    /// Dead letters replayed (pending again) or discarded.
    pub changed: u64,
    /// On replay, selected dead letters superseded instead: a newer version of their
    /// record is delivered or pending, and the old one sent again could reach the
    /// backend after it.
    pub superseded: u64,
}

/// What an administrator does to dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterAction {
    /// Back to pending with no attempts: delivered again in order.
    Replay,
    /// Kept for the record, never delivered.
    Discard,
}

/// A platform's month not yet released to tax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreleasedMonth {
    pub platform_id: i64,
    pub uscc: String,
    pub period: Period,
    /// When the month closed (its first declaration), if it has.
    pub closed_at: Option<Millis>,
}

/// A platform's month as its release needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthState {
    /// Every statement of the month, all industries.
    pub statements: Statements,
    pub closed_at: Option<Millis>,
    pub released: bool,
}

/// A stored declaration as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclarationRow {
    pub declaration_id: String,
    pub revision: u32,
    pub period: Period,
    pub division_code: String,
    pub industry: String,
    pub order_count: i64,
    pub amount_fen: i64,
    pub received_at: Millis,
    /// A later declaration exists for the same period, division and industry.
    pub superseded: bool,
}

/// Bytes sealed above the store by `pii` (XChaCha20-Poly1305 under a key the store never
/// holds), or a value in clear in a database written before sealing: the store keeps
/// and returns them as they are.
pub type Sealed = Vec<u8>;

/// A worker write's personal data, sealed by `pii::Pii::seal_writes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedWorker {
    /// The record's content hash, masked for its row.
    pub content_hash: [u8; 32],
    pub id_number: Sealed,
    pub name: Sealed,
    pub mobile: Sealed,
    /// From the resident ID number (GB 11643); None for other identity documents.
    pub birth_date: Option<Sealed>,
    /// The keyed hash the ID number is looked up by.
    pub id_number_hash: [u8; 32],
}

/// An accident write's personal data (the description, which may hold medical
/// detail), sealed by `pii::Pii::seal_writes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedAccident {
    /// The record's content hash, masked for its row.
    pub content_hash: [u8; 32],
    pub description: Sealed,
}

/// The sealed part of a plan's writes: one entry per `Plan::workers` and
/// `Plan::accidents` write, in the same order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealedWrites {
    pub workers: Vec<SealedWorker>,
    pub accidents: Vec<SealedAccident>,
}

/// What [`IngestTx::load`] reads, as stored: `known` holds the content hashes of
/// workers and accidents masked and no birth dates; `birth_dates` holds each loaded
/// worker's sealed birth date. `pii::Pii::open_loaded` makes it the rules' state.
#[derive(Debug, Default)]
pub struct Loaded {
    pub known: Known,
    pub birth_dates: HashMap<String, Sealed>,
}

/// A stored worker's sealed values, for re-sealing ([`SealedRepo`]).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SealedWorkerRow {
    pub platform_id: i64,
    pub worker_id: String,
    pub id_number: Sealed,
    pub name: Sealed,
    pub mobile: Sealed,
    pub birth_date: Option<Sealed>,
    /// As stored: masked, or plain in a row written before sealing.
    pub content_hash: Vec<u8>,
    pub id_number_hash: Vec<u8>,
}

/// A stored accident's sealed description, for re-sealing ([`SealedRepo`]).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SealedAccidentRow {
    pub platform_id: i64,
    pub report_id: String,
    pub description: Sealed,
    /// As stored: masked, or plain in a row written before sealing.
    pub content_hash: Vec<u8>,
}

/// An outbox item's payload as stored, for re-sealing ([`SealedRepo`]).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredPayload {
    pub seq: i64,
    pub destination: String,
    pub record_key: String,
    pub payload: Sealed,
}

/// The store: every repository, and readiness. A backend implements each repository
/// ([`sqlite::SqliteStore`]); callers hold an `Arc<dyn Store>` and bring into scope
/// the repositories whose methods they call.
#[async_trait]
pub trait Store:
    PlatformRepo
    + IngestRepo
    + ListingRepo
    + OutboxRepo
    + GrantRepo
    + AuditRepo
    + PullRepo
    + SealedRepo
    + Send
    + Sync
    + 'static
{
    /// Whether the store takes writes now (readiness, `/ready`): its migrations are all
    /// applied, its files can be written, and a write commits. The error says which
    /// failed (no personal data).
    async fn probe(&self) -> Result<()>;
}

/// Platforms and the rate book: registered from configuration or by administrators,
/// read on every call.
#[async_trait]
pub trait PlatformRepo: Send + Sync {
    /// Creates or replaces a platform (its divisions are replaced as a whole).
    async fn upsert_platform(&self, reg: &PlatformRegistration) -> Result<PlatformProfile>;

    /// The platform registered under this USCC, if any.
    async fn platform(&self, uscc: &str) -> Result<Option<PlatformProfile>>;

    /// Every registered platform.
    async fn platforms(&self) -> Result<Vec<PlatformProfile>>;

    /// Every version of every rate.
    async fn rate_book(&self) -> Result<RateBook>;

    /// Appends rate rows (new versions; nothing is overwritten).
    async fn append_rates(&self, bases: &[BaseRate], floats: &[FloatRate]) -> Result<()>;
}

/// A platform's batch transactions, serialised per platform, and the months
/// awaiting release to tax.
#[async_trait]
pub trait IngestRepo: Send + Sync {
    /// Opens the transaction of one batch for a platform. Batches of one platform are
    /// serialised, so `load` sees everything committed before.
    async fn begin_ingest(&self, platform_id: i64) -> Result<Box<dyn IngestTx>>;

    /// Months with statements that have not been released to tax.
    async fn unreleased_months(&self) -> Result<Vec<UnreleasedMonth>>;
}

/// What a platform reads back: its records, its rejections and its aggregates
/// (volume statements, daily enrolments, closed months).
#[async_trait]
pub trait ListingRepo: Send + Sync {
    /// A page of a platform's workers in worker-id order (personal data in clear).
    async fn list_workers(&self, platform_id: i64, page: &PageRequest) -> Result<Page<WorkerRow>>;

    /// A page of a platform's orders in order-id order.
    async fn list_orders(&self, platform_id: i64, page: &PageRequest) -> Result<Page<OrderRow>>;

    /// A page of a platform's kept rejections, in the order they were stored.
    async fn list_rejections(
        &self,
        platform_id: i64,
        page: &PageRequest,
    ) -> Result<Page<RejectionRecord>>;

    /// A page of a platform's declarations (what each declares, and whether a later one
    /// replaced it).
    async fn list_declarations(
        &self,
        platform_id: i64,
        page: &PageRequest,
    ) -> Result<Page<DeclarationRow>>;

    /// Statement counts of these (month, industry) pairs.
    async fn statements(&self, platform_id: i64, scope: &[(Period, String)]) -> Result<Statements>;

    /// Every statement of a platform (for checks and reports).
    async fn all_statements(&self, platform_id: i64) -> Result<Statements>;

    /// Every daily enrolment of a platform.
    async fn all_enrolments(&self, platform_id: i64) -> Result<BTreeMap<EnrolmentKey, i64>>;

    /// When the platform's months closed.
    async fn closed_periods(&self, platform_id: i64) -> Result<HashMap<Period, Millis>>;
}

/// The transactional outbox as delivery sees it: due items, settlement, the
/// deliveries of a record, dead letters.
#[async_trait]
pub trait OutboxRepo: Send + Sync {
    /// Up to `limit` pending items of a destination that are due, in seq order, skipping
    /// any item whose record has an earlier pending item, and every item whose seq lies
    /// in one of the `excluded` ranges (inclusive, in any order, overlapping or not).
    ///
    /// The dispatcher passes one range per call delivered and not yet settled, from
    /// its first seq to its last: its items are not read again, and an item inside a
    /// range that was not due when that call was read (it waited for an earlier item,
    /// or for its retry time) waits until the call is settled. Ranges instead of each
    /// seq: a list of up to 20,000 unsettled seqs made the store build and probe a
    /// temporary index on every read, half of the reading connections' time (issue
    /// 13's profile).
    async fn due_items(
        &self,
        destination: Destination,
        now: Millis,
        limit: u32,
        excluded: &[RangeInclusive<i64>],
    ) -> Result<Vec<DueItem>>;

    /// Records what the backend answered, in one transaction.
    async fn settle(
        &self,
        outcomes: &[(i64, DeliveryOutcome)],
        max_attempts: u32,
        now: Millis,
    ) -> Result<()>;

    /// How many items of a destination are pending and dead, and when the oldest
    /// pending one was queued.
    async fn queue_depth(&self, destination: Destination) -> Result<QueueDepth>;

    /// Every outbox item of a record (`platform/kind/id`), oldest first.
    async fn deliveries(&self, record_key: &str) -> Result<Vec<DeliveryRow>>;

    /// Dead letters in seq order after `after`, at most `limit`.
    async fn dead_letters(
        &self,
        destination: Option<Destination>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<DeadLetter>>;

    /// Replays or discards the selected dead letters (items not dead are left alone);
    /// returns how many changed. A dead letter with a later item of its record that
    /// is pending or delivered is superseded instead of replayed: sent again, it could
    /// reach the backend after its correction (a pending item may be on its way).
    async fn handle_dead_letters(
        &self,
        selection: &DeadLetterSelection,
        action: DeadLetterAction,
        by: &str,
        now: Millis,
    ) -> Result<DeadLettersHandled>;
}

/// Grants and per-identity rate limits: the access tables (spec/README.md, roles).
#[async_trait]
pub trait GrantRepo: Send + Sync {
    /// Creates or replaces one grant.
    async fn put_grant(&self, grant: &Grant) -> Result<()>;

    /// Every grant held by `identity`, expired ones included (the caller decides).
    async fn grants(&self, identity: &str) -> Result<Vec<Grant>>;

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
}

/// The hash-chained audit log (`domain::audit`): its head, appends, the stored chain
/// for verification, queries and retention.
#[async_trait]
pub trait AuditRepo: Send + Sync {
    /// The newest entry's seq and hash, or the anchor (0 and genesis when empty).
    async fn audit_head(&self) -> Result<(i64, [u8; 32])>;

    /// Appends entries whose seq and hash the caller computed from the head.
    async fn append_audit(&self, entries: &ChainRows) -> Result<()>;

    /// A writer transaction for appending entries: its head is read inside it, so that
    /// entries appended by ingest transactions (`IngestTx::append_audit`) and by it
    /// form one chain.
    async fn begin_audit(&self) -> Result<Box<dyn AuditTx>>;

    /// Where the stored chain starts: the seq and hash of the last entry removed by
    /// retention, or 0 and genesis.
    async fn audit_anchor(&self) -> Result<(i64, [u8; 32])>;

    /// Up to `limit` entries after `after`, with their stored hashes.
    async fn audit_chain(&self, after: i64, limit: u32) -> Result<ChainRows>;

    /// Audit entries matching `query`, oldest first.
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>>;

    /// Removes entries older than `before` (never the newest), moving the anchor to
    /// the last removed; returns how many went and the anchor, or None when none did.
    async fn prune_audit(&self, before: Millis) -> Result<Option<(u64, i64, [u8; 32])>>;
}

/// The journal the tax bureau and social security pull by cursor, and the
/// identities the social-security pull attaches to its items.
#[async_trait]
pub trait PullRepo: Send + Sync {
    /// The newest journal seq (0 when empty).
    async fn journal_end(&self) -> Result<i64>;

    /// Entries of `destination` among the seqs `after + 1 ..= after + scan`.
    async fn journal(&self, destination: Destination, after: i64, scan: u32)
    -> Result<JournalPage>;

    /// The identities of workers, by (platform USCC, worker id); unknown ones absent.
    async fn persons(&self, keys: &[(String, String)])
    -> Result<HashMap<(String, String), Person>>;
}

/// Where a batch's time went, stage by stage (for `oip_ingest_stage_seconds_total`):
/// the ingest pipeline and the store each add a lap when a stage ends.
#[derive(Debug)]
pub struct Laps {
    last: std::time::Instant,
    /// (stage, time it took), in the order the stages ran.
    pub laps: Vec<(&'static str, std::time::Duration)>,
}

impl Laps {
    /// Starts timing the first stage now.
    pub fn start() -> Self {
        Self {
            last: std::time::Instant::now(),
            laps: Vec::with_capacity(16),
        }
    }

    /// Ends `stage` (the time since the previous lap) and starts the next.
    pub fn lap(&mut self, stage: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((stage, now - self.last));
        self.last = now;
    }
}

/// A writer transaction that appends to the audit chain. The head is read inside the
/// transaction, after every earlier appending transaction committed (one writer at a
/// time), so the chain stays one chain whichever transaction appends. Dropping it
/// without `commit` rolls back.
/// Personal data as stored, for bringing it under the current key (`pii::reseal`):
/// read in pages in key order, written back a page per transaction. Values are sealed
/// and unsealed above the store; these methods move bytes.
#[async_trait]
pub trait SealedRepo: Send + Sync {
    /// Waits until this process is the only one re-sealing, and holds that until the
    /// returned lock drops (replicas starting together re-seal once; one that dies
    /// half-way leaves the rest to the next).
    async fn lock_resealing(&self) -> Result<JobLock>;
    /// The key everything was last brought under (None: never recorded).
    async fn sealed_with(&self) -> Result<Option<String>>;
    /// Records the key everything is now under.
    async fn set_sealed_with(&self, key: &str) -> Result<()>;
    /// Up to `limit` workers after `after` (platform id, worker id), in that order.
    async fn sealed_workers(
        &self,
        after: &(i64, String),
        limit: u32,
    ) -> Result<Vec<SealedWorkerRow>>;
    /// Replaces the sealed values, hashes and lookup hashes of these workers, in one
    /// transaction; each is given with its sealed ID number as read, and a worker whose
    /// stored ID number is no longer that one (written since by an ingest, on another
    /// replica) is left as it is.
    async fn replace_sealed_workers(&self, rows: &[(Sealed, SealedWorkerRow)]) -> Result<()>;
    /// Up to `limit` accidents after `after` (platform id, report id), in that order.
    async fn sealed_accidents(
        &self,
        after: &(i64, String),
        limit: u32,
    ) -> Result<Vec<SealedAccidentRow>>;
    /// Replaces the descriptions and hashes of these accidents, in one transaction;
    /// each is given with its description as read, and an accident whose stored
    /// description is no longer that one (written since) is left as it is.
    async fn replace_sealed_accidents(&self, rows: &[(Sealed, SealedAccidentRow)]) -> Result<()>;
    /// Up to `limit` outbox items after seq `after`, in seq order.
    async fn stored_payloads(&self, after: i64, limit: u32) -> Result<Vec<StoredPayload>>;
    /// Replaces these items' payloads (seq, payload), in one transaction.
    async fn replace_payloads(&self, rows: &[(i64, Sealed)]) -> Result<()>;
    /// Removes the old images of replaced values: from the write-ahead log always, and
    /// from the whole file when `rebuild` (values stored in clear may linger in pages
    /// freed before).
    async fn purge_old_images(&self, rebuild: bool) -> Result<()>;
}

#[async_trait]
pub trait AuditTx: Send {
    /// The newest entry's seq and chain hash, or the anchor (0 and genesis when empty).
    async fn audit_head(&mut self) -> Result<(i64, [u8; 32])>;
    /// Appends entries whose seq and hash the caller computed from [`Self::audit_head`].
    async fn append_audit(&mut self, entries: &access::ChainRows) -> Result<()>;
    /// Commits the appended entries.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// One open ingest transaction. Dropping it without `commit` rolls back.
#[async_trait]
pub trait IngestTx: Send {
    /// The audit chain's head inside this transaction (see [`AuditTx`]).
    async fn audit_head(&mut self) -> Result<(i64, [u8; 32])>;
    /// Appends the entries of the calls this transaction applies: they commit with
    /// their records, or neither does.
    async fn append_audit(&mut self, entries: &access::ChainRows) -> Result<()>;
    /// The stored state of these ids (ids not stored are absent), and the platform's
    /// workers version (`Known::workers_version`, read even when every list is empty),
    /// with personal data and hashes as stored ([`Loaded`]).
    async fn load(&mut self, touched: &Touched) -> Result<Loaded>;
    /// Adds the statements, declared keys and closed months of these (month, industry)
    /// pairs to `known`.
    async fn load_scope(&mut self, known: &mut Known, scope: &[(Period, String)]) -> Result<()>;
    /// The stored order counts of these daily enrolments (absent keys: none stored).
    async fn enrolment_counts(
        &mut self,
        keys: &[&EnrolmentKey],
    ) -> Result<HashMap<EnrolmentKey, i64>>;
    /// Writes the plan's records, rejections and aggregates, and the outbox items that
    /// deliver them, adding a lap per table to `laps` (`write_orders`, ...). When the
    /// plan writes any worker, raises the platform's workers version by exactly one
    /// (caches of worker state rely on it: `ingest::workers`).
    async fn write(
        &mut self,
        plan: &Plan,
        sealed: &SealedWrites,
        outbox: Vec<OutboxItem>,
        received_at: Millis,
        laps: &mut Laps,
    ) -> Result<()>;
    /// Takes the platform's next `count` batch numbers (each call that writes takes
    /// one) and returns the first.
    async fn take_batches(&mut self, count: u64) -> Result<u64>;
    /// Every statement of a month, its close and whether it was released.
    async fn month(&mut self, period: Period) -> Result<MonthState>;
    /// Releases a month to tax: closes it at `at` unless already closed, marks it
    /// released and queues `outbox` (its statements).
    async fn release(&mut self, period: Period, at: Millis, outbox: &[OutboxItem]) -> Result<()>;
    /// Commits everything written in the transaction (durable on return).
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// The seqs outside every `excluded` range (inclusive, in any order, overlapping or
/// not), as inclusive ranges in ascending order, over all of `i64`: what
/// [`OutboxRepo::due_items`] reads, one range after the other, so that an excluded item is
/// neither read nor looked up.
pub(crate) fn outside(excluded: &[RangeInclusive<i64>]) -> Vec<RangeInclusive<i64>> {
    let mut sorted: Vec<(i64, i64)> = excluded
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| (*r.start(), *r.end()))
        .collect();
    sorted.sort_unstable();
    let mut gaps = Vec::with_capacity(sorted.len() + 1);
    // The first seq not yet covered by a range or a gap; None once past i64::MAX.
    let mut next = Some(i64::MIN);
    for (start, end) in sorted {
        let Some(from) = next else { break };
        if start > from {
            gaps.push(from..=start - 1);
        }
        if end >= from {
            next = end.checked_add(1);
        }
    }
    if let Some(from) = next {
        gaps.push(from..=i64::MAX);
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_password_in_a_database_url_is_never_shown() {
        for (url, shown) in [
            (
                "postgres://oip:s3cret@db:5432/oip",
                "postgres://oip:***@db:5432/oip",
            ),
            ("postgres://oip:se/cr@t@db/oip", "postgres://oip:***@db/oip"),
            (
                "postgres://oip@db/oip?password=s3cret&sslmode=require",
                "postgres://oip@db/oip?password=***&sslmode=require",
            ),
            (
                "postgres://db/oip?user=oip&PASSWORD=s3cret",
                "postgres://db/oip?user=oip&PASSWORD=***",
            ),
            ("sqlite:data/oip.db", "sqlite:data/oip.db"),
        ] {
            assert_eq!(redacted(url), shown, "{url}");
        }
    }

    #[test]
    fn the_seqs_outside_the_ranges_of_unsettled_calls() {
        assert_eq!(outside(&[]), vec![i64::MIN..=i64::MAX]);
        assert_eq!(
            outside(&[20..=30, 5..=9, 25..=40, 10..=12]),
            vec![i64::MIN..=4, 13..=19, 41..=i64::MAX]
        );
        assert_eq!(
            outside(&[i64::MIN..=0, 1..=i64::MAX]),
            Vec::<RangeInclusive<i64>>::new()
        );
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 9..=3;
        assert_eq!(outside(&[empty]), vec![i64::MIN..=i64::MAX]);
    }

    proptest! {
        /// A seq is in exactly one gap when no range holds it, and in none when one
        /// does; the gaps ascend without touching.
        #[test]
        fn every_seq_is_outside_exactly_when_no_range_holds_it(
            ranges in proptest::collection::vec((-50i64..50, 0i64..20), 0..8),
            probes in proptest::collection::vec(-80i64..80, 1..40),
        ) {
            let ranges: Vec<_> = ranges.into_iter().map(|(s, len)| s..=s + len - 1).collect();
            let gaps = outside(&ranges);
            for pair in gaps.windows(2) {
                prop_assert!(pair[0].end() + 1 < *pair[1].start(), "{:?}", gaps);
            }
            for seq in probes.into_iter().chain([i64::MIN, i64::MAX]) {
                let excluded = ranges.iter().any(|r| r.contains(&seq));
                let holding = gaps.iter().filter(|g| g.contains(&seq)).count();
                prop_assert_eq!(holding, usize::from(!excluded), "seq {} in {:?}", seq, gaps);
            }
        }
    }
}
