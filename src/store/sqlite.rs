//! The embedded default store: one SQLite file in WAL mode with synchronous=FULL, so
//! a committed batch survives a crash or power loss.
//!
//! Writes go through one connection held for the store's life (`writer`: SQLite has
//! one writer at a time; queueing on it avoids SQLITE_BUSY between our own writers),
//! reads through a pool. Batch writes are multi-row statements; id look-ups pass
//! the ids as one JSON array parameter (`json_each`), whatever the batch size.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::chain::{Anchors, Links, Newest, link};
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use writer::{WriteTx, Writer};

use super::{
    DeadLetter, DeadLetterAction, DeadLetterSelection, DeadLettersHandled, DeclarationRow,
    DeliveryOutcome, DeliveryRow, Destination, DueItem, IngestRepo, IngestTx, Laps, ListingRepo,
    Loaded, MonthState, OrderRow, OutboxItem, OutboxRepo, Page, PageRequest, PlatformRegistration,
    PlatformRepo, QueueDepth, RejectionRecord, Result, SealedWrites, Store, StoreError,
    UnreleasedMonth, WorkerRow,
};
use crate::domain::OrderStatus;
use crate::domain::batch::{
    EnrolmentKey, Known, OrderFacts, Plan, Stored, StoredDeclaration, StoredOrder, Touched,
    WorkerState,
};
use crate::domain::fees::{BaseRate, FloatRate, RateBook};
use crate::domain::period::Period;
use crate::domain::reconcile::{StatementKey, Statements};
use crate::domain::records::ContentHash;
use crate::domain::time::Millis;
use crate::domain::{PlatformProfile, WorkerStatus};

mod access;
mod seal;
mod writer;

use super::rows::{
    DeclarationListing, DeclaredRow, WorkerListing, add_declared, base_rate_of, corrupt, db_err,
    enrolment_of, float_rate_of, join, page_of, period_of, profile_of, revision_of, split,
    statements_of,
};

/// Rows per multi-row INSERT (kept well under SQLite's 32,766 bound parameters).
///
/// Such statements (built with `QueryBuilder`, one shape per row count) stay in sqlx's
/// per-connection statement cache only at the full chunk size and at small sizes
/// ([`kept`]): when every shape was kept, a 1,000,000-order submit held 72 MB of
/// prepared programs at the peak (heaptrack, issue 13); preparing every shape each
/// time instead cost 8% of the writer (perf).
const ROWS_PER_STATEMENT: usize = 1000;

/// Row counts up to which every shape of a multi-row statement is kept prepared: a
/// group of single-order calls (64 in flight) writes a few dozen rows of each kind,
/// and preparing those statements afresh was a tenth of the writer's time on
/// single-order calls (perf, issue 13). The programs of all these shapes together
/// are a small fraction of the full-size ones.
pub(crate) const SMALL_SHAPES: usize = 64;

/// Statements kept prepared per connection: every small shape ([`SMALL_SHAPES`]) of
/// each multi-row statement, the full-size ones, and the fixed statements.
pub(crate) const STATEMENT_CACHE: usize = 1024;

/// Whether a multi-row statement of `rows` rows, chunked at `full`, is kept prepared
/// (sqlx's `persistent`): at the full chunk size and at small sizes.
pub(crate) fn kept(rows: usize, full: usize) -> bool {
    rows == full || rows <= SMALL_SHAPES
}

pub struct SqliteStore {
    reader: SqlitePool,
    writer: Writer,
    /// The database file (its `-wal` beside it).
    path: std::path::PathBuf,
}

impl SqliteStore {
    /// A write transaction (`Writer::begin`: `BEGIN IMMEDIATE`).
    async fn write_tx(&self) -> Result<WriteTx> {
        self.writer.begin().await.map_err(db_err)
    }

    /// Opens (creating if needed) the database at a `sqlite:` URL or plain path and
    /// applies the migrations. Personal data is brought under the current key above
    /// the store (`pii::reseal`).
    pub async fn open(url: &str) -> Result<Self> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let path = path.split('?').next().unwrap_or(path);
        super::owner_only_database(Path::new(path)).map_err(|e| {
            StoreError::Unavailable(format!("cannot create the database {path}: {e}"))
        })?;
        let opts = SqliteConnectOptions::from_str(&format!("sqlite:{path}"))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Freed pages are zeroed: an overwritten clear value does not linger.
            .pragma("secure_delete", "on")
            // Checkpoints less often (about 40 MB of WAL): a page written by many
            // commits is copied into the database once (issue 13's profile).
            .pragma("wal_autocheckpoint", "10000")
            // Statement journals (the undo of one statement within a transaction) in
            // memory: in a temporary file they cost a write for every page a statement
            // touched, 14% of the writer (issue 13's profile).
            .pragma("temp_store", "memory")
            .statement_cache_capacity(STATEMENT_CACHE);
        let writer = Writer::connect(&opts).await.map_err(db_err)?;
        sqlx::migrate!("migrations/sqlite")
            .run(&mut **writer.lock().await)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(db_err)?;
        let store = Self {
            reader,
            writer,
            path: Path::new(path).to_path_buf(),
        };
        Ok(store)
    }
}

/// Replaces a platform's per-division rows (`platform_id, division_code, value`).
async fn replace_division_rows(
    tx: &mut WriteTx,
    delete: &'static str,
    insert: &'static str,
    platform_id: i64,
    rows: &[(&str, String)],
) -> Result<()> {
    sqlx::query(delete)
        .bind(platform_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    if !rows.is_empty() {
        let mut q = QueryBuilder::<Sqlite>::new(insert);
        q.push_values(rows, |mut b, (code, value)| {
            b.push_bind(platform_id).push_bind(*code).push_bind(value);
        });
        q.build()
            .persistent(false)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn probe(&self) -> Result<()> {
        let expected = sqlx::migrate!("migrations/sqlite").migrations.len() as i64;
        let (applied,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(&self.reader)
                .await
                .map_err(db_err)?;
        if applied < expected {
            return Err(StoreError::Unavailable(format!(
                "{applied} of {expected} migrations applied"
            )));
        }
        // Open connections keep writing to a file whose permissions changed; what a
        // new connection (or the next checkpoint) would meet is seen here. Asked with
        // access(2), never by opening the file: closing any descriptor of a file drops
        // every POSIX lock this process holds on it, SQLite's included, and another
        // process (`sqlite3 oip.db` to look, a backup) would then take the gateway for
        // gone and delete its WAL, acknowledged commits with it (SQLite's "How To
        // Corrupt", 2.2).
        let wal = {
            let mut p = self.path.clone().into_os_string();
            p.push("-wal");
            std::path::PathBuf::from(p)
        };
        for file in [&self.path, &wal] {
            if file.exists()
                && let Err(e) = rustix::fs::access(file, rustix::fs::Access::WRITE_OK)
            {
                return Err(StoreError::Unavailable(format!(
                    "the database file {} cannot be written: {e}",
                    file.display()
                )));
            }
        }
        sqlx::query(
            "INSERT INTO ops_probe (id, at) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        )
        .bind(crate::domain::time::now_millis())
        .execute(&mut **self.writer.lock().await)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}

#[async_trait]
impl PlatformRepo for SqliteStore {
    async fn upsert_platform(&self, reg: &PlatformRegistration) -> Result<PlatformProfile> {
        let mut tx = self.write_tx().await?;
        let now = crate::domain::time::now_millis();
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO platforms (uscc, name, industries, delivery_tier, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (uscc) DO UPDATE SET name = excluded.name, industries = excluded.industries,
               delivery_tier = excluded.delivery_tier, updated_at = excluded.updated_at
             RETURNING id",
        )
        .bind(&reg.uscc)
        .bind(&reg.name)
        .bind(join(&reg.industries))
        .bind(reg.delivery_tier.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let pilots: Vec<(&str, String)> = reg
            .pilot_starts
            .iter()
            .map(|(c, d)| (c.as_str(), d.to_string()))
            .collect();
        replace_division_rows(
            &mut tx,
            "DELETE FROM platform_divisions WHERE platform_id = ?1",
            "INSERT INTO platform_divisions (platform_id, division_code, pilot_start) ",
            id,
            &pilots,
        )
        .await?;
        let tiers: Vec<(&str, String)> = reg
            .delivery_tiers
            .iter()
            .map(|(c, t)| (c.as_str(), t.as_str().to_string()))
            .collect();
        replace_division_rows(
            &mut tx,
            "DELETE FROM platform_delivery_tiers WHERE platform_id = ?1",
            "INSERT INTO platform_delivery_tiers (platform_id, division_code, tier) ",
            id,
            &tiers,
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        self.platform(&reg.uscc)
            .await?
            .ok_or_else(|| corrupt("platform vanished after upsert"))
    }

    async fn platform(&self, uscc: &str) -> Result<Option<PlatformProfile>> {
        let row: Option<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT id, uscc, name, industries, delivery_tier FROM platforms WHERE uscc = ?1",
        )
        .bind(uscc)
        .fetch_optional(&self.reader)
        .await
        .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id = row.0;
        let divisions: Vec<(String, String)> = sqlx::query_as(
            "SELECT division_code, pilot_start FROM platform_divisions WHERE platform_id = ?1",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        let tiers: Vec<(String, String)> = sqlx::query_as(
            "SELECT division_code, tier FROM platform_delivery_tiers WHERE platform_id = ?1",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        profile_of(row, divisions, tiers).map(Some)
    }

    async fn platforms(&self) -> Result<Vec<PlatformProfile>> {
        let usccs: Vec<(String,)> = sqlx::query_as("SELECT uscc FROM platforms ORDER BY uscc")
            .fetch_all(&self.reader)
            .await
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(usccs.len());
        for (uscc,) in usccs {
            if let Some(p) = self.platform(&uscc).await? {
                out.push(p);
            }
        }
        Ok(out)
    }

    async fn rate_book(&self) -> Result<RateBook> {
        let bases: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT industry, tier, effective_from, fen_per_order, recorded_at FROM base_rates",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        let floats: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT uscc, division_code, year, multiplier_e4, recorded_at FROM float_rates",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        Ok(RateBook {
            bases: bases.into_iter().map(base_rate_of).collect::<Result<_>>()?,
            floats: floats
                .into_iter()
                .map(float_rate_of)
                .collect::<Result<_>>()?,
        })
    }

    async fn append_rates(&self, bases: &[BaseRate], floats: &[FloatRate]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for b in bases {
            sqlx::query(
                "INSERT OR IGNORE INTO base_rates (industry, tier, effective_from, fen_per_order, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(&b.industry)
            .bind(b.tier.map_or("", |t| t.as_str()))
            .bind(b.effective_from.to_string())
            .bind(b.fen_per_order)
            .bind(b.recorded_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        for f in floats {
            sqlx::query(
                "INSERT OR IGNORE INTO float_rates (uscc, division_code, year, multiplier_e4, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(&f.uscc)
            .bind(&f.division_code)
            .bind(i64::from(f.year))
            .bind(f.multiplier.ten_thousandths())
            .bind(f.recorded_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }
}

#[async_trait]
impl IngestRepo for SqliteStore {
    async fn begin_ingest(&self, platform_id: i64) -> Result<Box<dyn IngestTx>> {
        let tx = self.write_tx().await?;
        Ok(Box::new(SqliteIngest {
            tx,
            platform_id,
            anchors: Anchors::default(),
        }))
    }

    async fn unreleased_months(&self) -> Result<Vec<UnreleasedMonth>> {
        let rows: Vec<(i64, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT m.platform_id, p.uscc, m.period, c.closed_at
             FROM (SELECT DISTINCT platform_id, period FROM volume_statements) m
             JOIN platforms p ON p.id = m.platform_id
             LEFT JOIN closed_periods c ON c.platform_id = m.platform_id AND c.period = m.period
             WHERE NOT EXISTS (SELECT 1 FROM released_periods r
                               WHERE r.platform_id = m.platform_id AND r.period = m.period)
             ORDER BY m.platform_id, m.period",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(|(platform_id, uscc, period, closed_at)| {
                Ok(UnreleasedMonth {
                    platform_id,
                    uscc,
                    period: period_of(&period)?,
                    closed_at,
                })
            })
            .collect()
    }
}

#[async_trait]
impl ListingRepo for SqliteStore {
    async fn list_workers(&self, platform_id: i64, page: &PageRequest) -> Result<Page<WorkerRow>> {
        let rows: Vec<WorkerListing> = sqlx::query_as(
            "SELECT worker_id, revision, id_type, id_number, name, mobile, industries, registered_at, status, left_at, received_at
             FROM workers WHERE platform_id = ?1 AND worker_id > ?2 AND (?3 IS NULL OR worker_id = ?3)
             ORDER BY worker_id LIMIT ?4",
        )
        .bind(platform_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.id.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        let items: Vec<WorkerRow> = rows.into_iter().map(WorkerRow::from).collect();
        Ok(page_of(items, page.limit, |w| w.worker_id.clone()))
    }

    async fn list_orders(&self, platform_id: i64, page: &PageRequest) -> Result<Page<OrderRow>> {
        let items: Vec<OrderRow> = sqlx::query_as(
            "SELECT order_id, revision, worker_id, industry, division_code, accepted_at, completed_at, status, vehicle_plate, received_at
             FROM orders WHERE platform_id = ?1 AND order_id > ?2 AND (?3 IS NULL OR order_id = ?3)
             ORDER BY order_id LIMIT ?4",
        )
        .bind(platform_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.id.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        Ok(page_of(items, page.limit, |o| o.order_id.clone()))
    }

    async fn list_rejections(
        &self,
        platform_id: i64,
        page: &PageRequest,
    ) -> Result<Page<RejectionRecord>> {
        let after: i64 = match page.after.as_deref() {
            None => 0,
            Some(s) => s.parse().map_err(|_| corrupt("bad rejection cursor"))?,
        };
        let items: Vec<RejectionRecord> = sqlx::query_as(
            "SELECT seq, kind, record_id, revision, code, field, message, received_at
             FROM rejections WHERE platform_id = ?1 AND seq > ?2 AND (?3 IS NULL OR record_id = ?3)
             ORDER BY seq LIMIT ?4",
        )
        .bind(platform_id)
        .bind(after)
        .bind(page.id.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        Ok(page_of(items, page.limit, |r| r.seq.to_string()))
    }

    async fn list_declarations(
        &self,
        platform_id: i64,
        page: &PageRequest,
    ) -> Result<Page<DeclarationRow>> {
        let rows: Vec<DeclarationListing> = sqlx::query_as(
            "SELECT d.declaration_id, d.revision, d.period, d.division_code, d.industry, d.order_count, d.amount_fen,
                    d.received_at,
                    EXISTS (SELECT 1 FROM declarations n
                            WHERE n.platform_id = d.platform_id AND n.period = d.period AND n.industry = d.industry
                              AND n.division_code = d.division_code
                              AND n.arrival > d.arrival) AS superseded
             FROM declarations d
             WHERE d.platform_id = ?1 AND d.declaration_id > ?2 AND (?3 IS NULL OR d.declaration_id = ?3)
             ORDER BY d.declaration_id LIMIT ?4",
        )
        .bind(platform_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.id.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        let items = rows
            .into_iter()
            .map(DeclarationListing::row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page_of(items, page.limit, |d| d.declaration_id.clone()))
    }

    async fn statements(&self, platform_id: i64, scope: &[(Period, String)]) -> Result<Statements> {
        if scope.is_empty() {
            return Ok(Statements::new());
        }
        statements_of(
            fetch_json(
                &self.reader,
                STATEMENTS_IN_SCOPE,
                platform_id,
                scope_json(scope)?,
            )
            .await?,
        )
    }

    async fn all_statements(&self, platform_id: i64) -> Result<Statements> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT period, division_code, industry, billable_count FROM volume_statements WHERE platform_id = ?1",
        )
        .bind(platform_id)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        statements_of(rows)
    }

    async fn all_enrolments(&self, platform_id: i64) -> Result<BTreeMap<EnrolmentKey, i64>> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT worker_id, day, division_code, order_count FROM daily_enrolments
             WHERE platform_id = ?1 AND order_count > 0",
        )
        .bind(platform_id)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.into_iter().map(enrolment_of).collect()
    }

    async fn closed_periods(&self, platform_id: i64) -> Result<HashMap<Period, Millis>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT period, closed_at FROM closed_periods WHERE platform_id = ?1")
                .bind(platform_id)
                .fetch_all(&self.reader)
                .await
                .map_err(db_err)?;
        rows.into_iter()
            .map(|(p, at)| Ok((period_of(&p)?, at)))
            .collect()
    }
}

#[async_trait]
impl OutboxRepo for SqliteStore {
    async fn due_items(
        &self,
        destination: Destination,
        now: Millis,
        limit: u32,
        excluded: &[RangeInclusive<i64>],
    ) -> Result<Vec<DueItem>> {
        // The earlier items an item waits for are open ones: `outbox_open` holds only
        // those, so the check does not walk every delivered version of a record. A
        // daily enrolment's item is not in it and waits for nothing: each one
        // supersedes the one before. (The partial indexes' WHERE terms, repeated
        // here, are what let SQLite use them.) The seqs outside the excluded ranges
        // are read one gap after the other, each a seek in `outbox_due`.
        let mut conn = self.reader.acquire().await.map_err(db_err)?;
        let mut due = Vec::new();
        for gap in super::outside(excluded) {
            let left = i64::from(limit) - due.len() as i64;
            if left <= 0 {
                break;
            }
            let rows: Vec<(i64, String, Vec<u8>, i64)> = sqlx::query_as(
                "SELECT o.seq, o.idempotency_key, o.payload, o.attempts FROM outbox o
                 WHERE o.destination = ?1 AND o.state IN ('pending', 'dead') AND o.state = 'pending'
                   AND o.seq BETWEEN ?4 AND ?5
                   AND o.next_attempt_at <= ?2
                   AND NOT EXISTS (SELECT 1 FROM outbox e INDEXED BY outbox_open
                                   WHERE e.record_key = o.record_key AND e.state IN ('pending', 'dead')
                                     AND e.enrolment = 0
                                     AND e.state = 'pending' AND e.destination = o.destination AND e.seq < o.seq)
                 ORDER BY o.seq LIMIT ?3",
            )
            .bind(destination.as_str())
            .bind(now)
            .bind(left)
            .bind(gap.start())
            .bind(gap.end())
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
            for (seq, idempotency_key, payload, attempts) in rows {
                due.push(DueItem {
                    seq,
                    idempotency_key,
                    payload,
                    attempts: u32::try_from(attempts)
                        .map_err(|_| corrupt("attempts out of range"))?,
                });
            }
        }
        Ok(due)
    }

    async fn settle(
        &self,
        outcomes: &[(i64, DeliveryOutcome)],
        max_attempts: u32,
        now: Millis,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let delivered: Vec<i64> = outcomes
            .iter()
            .filter(|(_, o)| *o == DeliveryOutcome::Delivered)
            .map(|(seq, _)| *seq)
            .collect();
        if !delivered.is_empty() {
            sqlx::query(
                "UPDATE outbox SET state = 'delivered', delivered_at = ?1, attempts = attempts + 1
                 WHERE seq IN (SELECT value FROM json_each(?2))",
            )
            .bind(now)
            .bind(serde_json::to_string(&delivered).map_err(|e| corrupt(&e.to_string()))?)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        for (seq, outcome) in outcomes {
            if let DeliveryOutcome::Invalid { reason, retry_at } = outcome {
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3,
                       state = CASE WHEN attempts + 1 >= ?4 THEN 'dead' ELSE 'pending' END
                     WHERE seq = ?1 AND state = 'pending'",
                )
                .bind(seq)
                .bind(reason)
                .bind(retry_at)
                .bind(i64::from(max_attempts))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
        }
        tx.commit().await.map_err(db_err)
    }

    async fn queue_depth(&self, destination: Destination) -> Result<QueueDepth> {
        let (pending, dead, oldest): (i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'dead'),
                    min(created_at) FILTER (WHERE state = 'pending')
             FROM outbox WHERE destination = ?1 AND state IN ('pending', 'dead')",
        )
        .bind(destination.as_str())
        .fetch_one(&self.reader)
        .await
        .map_err(db_err)?;
        Ok(QueueDepth {
            pending: u64::try_from(pending).unwrap_or(0),
            dead: u64::try_from(dead).unwrap_or(0),
            oldest_pending_at: oldest,
        })
    }

    async fn deliveries(&self, record_key: &str) -> Result<Vec<DeliveryRow>> {
        // Daily enrolments' and orders' items are not in `outbox_by_record`: they are
        // chained from their record's row (`latest_item`, then each item's
        // `previous`). A key is `<uscc>/enrolment/<worker>/<YYYY-MM-DD>/<division>` or
        // `<uscc>/order/<order>`; a worker or order id may hold '/', a USCC may not.
        let (uscc, enrolment, order) = super::chain::chained_key(record_key);
        let (worker, day, division) = enrolment.unwrap_or_default();
        sqlx::query_as(
            "WITH RECURSIVE chain(seq) AS (
               SELECT e.latest_item FROM daily_enrolments e JOIN platforms p ON p.id = e.platform_id
                WHERE ?2 AND p.uscc = ?3 AND e.worker_id = ?4 AND e.day = ?5 AND e.division_code = ?6
               UNION
               SELECT r.latest_item FROM orders r JOIN platforms p ON p.id = r.platform_id
                WHERE ?7 IS NOT NULL AND p.uscc = ?3 AND r.order_id = ?7
               UNION
               SELECT o.previous FROM chain c JOIN outbox o ON o.seq = c.seq WHERE o.chained = 1 OR o.enrolment = 1
             )
             SELECT idempotency_key, destination, state, attempts, last_error, created_at, delivered_at FROM outbox
             WHERE seq IN (SELECT seq FROM chain WHERE seq IS NOT NULL
                           UNION ALL
                           SELECT seq FROM outbox INDEXED BY outbox_by_record
                            WHERE record_key = ?1 AND enrolment = 0 AND chained = 0)
               AND record_key = ?1 ORDER BY seq",
        )
        .bind(record_key)
        .bind(enrolment.is_some())
        .bind(uscc)
        .bind(worker)
        .bind(day)
        .bind(division)
        .bind(order)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)
    }

    async fn dead_letters(
        &self,
        destination: Option<Destination>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<DeadLetter>> {
        sqlx::query_as(
            "SELECT seq, destination, record_key, idempotency_key, attempts, last_error, created_at FROM outbox
             WHERE state IN ('pending', 'dead') AND state = 'dead'
               AND destination IN (SELECT value FROM json_each(?1)) AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(destinations_json(destination)?)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)
    }

    async fn handle_dead_letters(
        &self,
        selection: &DeadLetterSelection,
        action: DeadLetterAction,
        by: &str,
        now: Millis,
    ) -> Result<DeadLettersHandled> {
        let selected = "state IN ('pending', 'dead') AND state = 'dead'
               AND destination IN (SELECT value FROM json_each(?1))
               AND (json_array_length(?2) = 0 OR seq IN (SELECT value FROM json_each(?2)))";
        let seqs = serde_json::to_string(&selection.seqs).map_err(|e| corrupt(&e.to_string()))?;
        let mut tx = self.write_tx().await?;
        let destinations = destinations_json(selection.destination)?;
        let args = (destinations.as_str(), seqs.as_str(), now, by);
        let mut superseded = 0;
        if action == DeadLetterAction::Replay {
            // A dead item behind which a later item of its record was delivered, or is
            // pending (perhaps delivered already, its answer not yet recorded), is
            // obsolete: replayed, it could reach the backend after the later one and
            // leave it with the older state. (A daily enrolment's dead item is always
            // its newest: the next one supersedes it when queued.)
            // Later items are in the record index, or (an order's, since they are
            // chained) found by walking back from the order's newest item.
            let sql = format!(
                "UPDATE outbox SET state = 'superseded', handled_by = ?4, handled_at = ?3
                 WHERE {selected} AND outbox.enrolment = 0
                   AND EXISTS (SELECT 1 FROM outbox l INDEXED BY outbox_by_record
                     WHERE l.record_key = outbox.record_key AND l.enrolment = 0 AND l.chained = 0
                       AND l.destination = outbox.destination AND l.seq > outbox.seq
                       AND l.state IN ('delivered', 'pending'))"
            );
            superseded = update_dead_letters(&mut tx, &sql, args).await?;
            let sql = format!(
                "WITH RECURSIVE dead(seq, record_key) AS (
                   SELECT seq, record_key FROM outbox
                    WHERE {selected} AND enrolment = 0 AND instr(record_key, '/order/') = 19
                 ), later(dead, seq) AS (
                   SELECT d.seq, r.latest_item FROM dead d
                     JOIN platforms p ON p.uscc = substr(d.record_key, 1, 18)
                     JOIN orders r ON r.platform_id = p.id AND r.order_id = substr(d.record_key, 26)
                   UNION ALL
                   SELECT l.dead, o.previous FROM later l JOIN outbox o ON o.seq = l.seq
                    WHERE o.chained = 1 AND o.previous > l.dead
                 )
                 UPDATE outbox SET state = 'superseded', handled_by = ?4, handled_at = ?3
                 WHERE seq IN (SELECT l.dead FROM later l JOIN outbox o ON o.seq = l.seq
                               WHERE l.seq > l.dead AND o.state IN ('delivered', 'pending'))"
            );
            superseded += update_dead_letters(&mut tx, &sql, args).await?;
        }
        let set = match action {
            DeadLetterAction::Replay => "state = 'pending', attempts = 0, next_attempt_at = ?3",
            DeadLetterAction::Discard => "state = 'discarded'",
        };
        let sql =
            format!("UPDATE outbox SET {set}, handled_by = ?4, handled_at = ?3 WHERE {selected}");
        let changed = update_dead_letters(&mut tx, &sql, args).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(DeadLettersHandled {
            changed,
            superseded,
        })
    }
}

/// Runs an UPDATE of selected dead letters; its parameters are ?1 destinations (JSON
/// array), ?2 seqs (JSON array, empty: all), ?3 now, ?4 the administrator.
async fn update_dead_letters(
    tx: &mut WriteTx,
    sql: &str,
    (destinations, seqs, now, by): (&str, &str, Millis, &str),
) -> Result<u64> {
    sqlx::query(sql)
        .bind(destinations)
        .bind(seqs)
        .bind(now)
        .bind(by)
        .execute(&mut **tx)
        .await
        .map(|r| r.rows_affected())
        .map_err(db_err)
}

/// `destination`, or every destination (None), as a JSON array: a query selecting
/// dead letters by `destination IN (SELECT value FROM json_each(?))` seeks them in
/// `outbox_due` instead of scanning every item after a seq.
fn destinations_json(destination: Option<Destination>) -> Result<String> {
    let names: Vec<&str> = match destination {
        Some(d) => vec![d.as_str()],
        None => Destination::ALL.iter().map(|d| d.as_str()).collect(),
    };
    serde_json::to_string(&names).map_err(|e| corrupt(&e.to_string()))
}

/// Queues outbox items (pending, due now) in the caller's transaction, after making
/// obsolete the open items they supersede (`OutboxItem::supersedes`):
/// - a daily enrolment's item supersedes the newest item of that enrolment, the only
///   one that can still be open, which the enrolment's row names (`latest_item`), and
///   names it as its `previous` (the chain `deliveries` walks back);
/// - any other superseding item (a volume statement, a reconciliation update)
///   supersedes the open items of its record with its prefix, found in `outbox_open`
///   (open items only).
///
/// An order's items are chained the same way from the order's row (`latest_item`,
/// then `previous`), without superseding: each waits for the open ones before it
/// through `outbox_open`. Chained items (daily enrolments', orders') are not in
/// `outbox_by_record`.
///
/// Seqs are assigned here (the next after the highest); SQLite has one writer, so no
/// other transaction takes them. Returns the seq of the newest item of each daily
/// enrolment and each order queued, for the caller to record on their rows.
async fn queue<'a>(
    tx: &mut WriteTx,
    platform_id: i64,
    outbox: &'a [OutboxItem],
    payloads: Vec<Vec<u8>>,
    anchors: &mut Anchors,
    at: Millis,
) -> Result<Newest<'a>> {
    if outbox.is_empty() {
        return Ok(Newest::default());
    }
    let superseding: Vec<(&str, &str, &str)> = outbox
        .iter()
        .filter(|i| i.daily_enrolment.is_none())
        .filter_map(|i| {
            i.supersedes
                .as_deref()
                .map(|p| (i.destination.as_str(), i.record_key.as_str(), p))
        })
        .collect();
    for chunk in superseding.chunks(ROWS_PER_STATEMENT) {
        sqlx::query(
            "UPDATE outbox SET state = 'superseded', handled_at = ?2 WHERE seq IN (
               SELECT o.seq FROM json_each(?1) j CROSS JOIN outbox o INDEXED BY outbox_open
                 ON o.record_key = json_extract(j.value, '$[1]')
                AND o.state IN ('pending', 'dead') AND o.enrolment = 0
                AND o.destination = json_extract(j.value, '$[0]')
                AND substr(o.idempotency_key, 1, length(json_extract(j.value, '$[2]'))) = json_extract(j.value, '$[2]'))",
        )
        .bind(serde_json::to_string(chunk).map_err(|e| corrupt(&e.to_string()))?)
        .bind(at)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    }
    // Each enrolment's newest stored item: the one a new item supersedes (if still
    // open) and names as its `previous` (the chain a listing walks back); each
    // order's, which its next item names.
    read_missing(anchors, tx, platform_id, outbox).await?;
    let open = anchors.open_enrolment_items(outbox);
    for chunk in open.chunks(ROWS_PER_STATEMENT) {
        sqlx::query(
            "UPDATE outbox SET state = 'superseded', handled_at = ?2
             WHERE seq IN (SELECT value FROM json_each(?1)) AND state IN ('pending', 'dead') AND enrolment = 1",
        )
        .bind(serde_json::to_string(chunk).map_err(|e| corrupt(&e.to_string()))?)
        .bind(at)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    }
    // An item that a later one of the same list supersedes (the calls of one group
    // commit, queued together) is stored superseded, as if queued before it.
    let (last,): (i64,) = sqlx::query_as("SELECT coalesce(max(seq), 0) FROM outbox")
        .fetch_one(&mut **tx)
        .await
        .map_err(db_err)?;
    let seqs: Vec<i64> = (last + 1..).take(outbox.len()).collect();
    let Links {
        obsolete,
        previous,
        newest,
    } = link(outbox, &seqs, anchors);
    let mut rows = outbox
        .iter()
        .zip(payloads)
        .zip(&obsolete)
        .zip(seqs.iter().zip(&previous));
    in_chunks(tx, outbox, ROWS_PER_STATEMENT, |chunk| {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO outbox (seq, destination, record_key, idempotency_key, payload, state, next_attempt_at,
                 created_at, handled_at, enrolment, previous, chained) ",
            );
            q.push_values(
                rows.by_ref().take(chunk.len()),
                |mut b, (((item, payload), superseded), (seq, previous))| {
                    b.push_bind(*seq)
                        .push_bind(item.destination.as_str())
                        .push_bind(&item.record_key)
                        .push_bind(&item.idempotency_key)
                        .push_bind(payload)
                        .push_bind(if *superseded { "superseded" } else { "pending" })
                        .push_bind(at)
                        .push_bind(at)
                        .push_bind(superseded.then_some(at))
                        .push_bind(item.daily_enrolment.is_some())
                        .push_bind(*previous)
                        .push_bind(item.daily_enrolment.is_some() || item.order_id.is_some());
                },
            );
            q
        })
        .await?;
    Ok(newest)
}

/// Multi-row statements of one kind, run one after another on the writer's thread,
/// each built on the calling thread while the one before it runs (issue 13's profile:
/// building a statement's arguments and running it took turns, each thread idle while
/// the other worked). A failed statement fails the rest (the transaction is then
/// rolled back by its caller).
#[derive(Default)]
struct Overlapped<'q> {
    /// Built and not yet run, and whether to keep it prepared (`kept`).
    next: Option<(QueryBuilder<'q, Sqlite>, bool)>,
}

impl<'q> Overlapped<'q> {
    /// Builds a statement with `build` while the one built before runs.
    async fn then(
        &mut self,
        tx: &mut WriteTx,
        build: impl FnOnce() -> (QueryBuilder<'q, Sqlite>, bool),
    ) -> Result<()> {
        let built = match self.next.take() {
            None => build(),
            Some((mut q, persistent)) => {
                let mut run = std::pin::pin!(q.build().persistent(persistent).execute(&mut **tx));
                // The first poll hands the statement to the connection's thread.
                let sent = futures::poll!(run.as_mut());
                let built = build();
                match sent {
                    std::task::Poll::Ready(ran) => ran,
                    std::task::Poll::Pending => run.await,
                }
                .map_err(db_err)?;
                built
            }
        };
        self.next = Some(built);
        Ok(())
    }

    /// Runs the last statement built.
    async fn finish(mut self, tx: &mut WriteTx) -> Result<()> {
        if let Some((mut q, persistent)) = self.next.take() {
            q.build()
                .persistent(persistent)
                .execute(&mut **tx)
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }
}

/// One multi-row statement per chunk of `items` (`rows` rows at most), each built by
/// `build` while the one before it runs ([`Overlapped`]); kept prepared only at full
/// size (`kept`).
async fn in_chunks<'q, T>(
    tx: &mut WriteTx,
    items: &'q [T],
    rows: usize,
    mut build: impl FnMut(&'q [T]) -> QueryBuilder<'q, Sqlite>,
) -> Result<()> {
    let mut run = Overlapped::default();
    for chunk in items.chunks(rows) {
        run.then(tx, || (build(chunk), kept(chunk.len(), rows)))
            .await?;
    }
    run.finish(tx).await
}

struct SqliteIngest {
    tx: WriteTx,
    platform_id: i64,
    /// The newest items of the orders and enrolments this transaction has read.
    anchors: Anchors,
}

/// Reads the newest items of the orders and enrolments of `outbox` not read yet
/// (a caller that wrote items without loading their records first).
async fn read_missing(
    anchors: &mut Anchors,
    tx: &mut WriteTx,
    platform_id: i64,
    outbox: &[OutboxItem],
) -> Result<()> {
    let keys = anchors.unread_enrolments(outbox);
    if !keys.is_empty() {
        let rows = stored_enrolments(tx, platform_id, &keys).await?;
        anchors
            .enrolments
            .extend(keys.iter().map(|k| ((*k).clone(), None)));
        anchors
            .enrolments
            .extend(rows.into_iter().map(|(k, _, item)| (k, item)));
    }
    let orders = anchors.unread_orders(outbox);
    if !orders.is_empty() {
        let rows: Vec<(String, Option<i64>)> = fetch_json(
            &mut **tx,
            "SELECT json_group_array(json_array(r.order_id, r.latest_item))
             FROM json_each(?2) j CROSS JOIN orders r ON r.platform_id = ?1 AND r.order_id = j.value",
            platform_id,
            serde_json::to_string(&orders).map_err(|e| corrupt(&e.to_string()))?,
        )
        .await?;
        anchors
            .orders
            .extend(orders.iter().map(|id| (id.to_string(), None)));
        anchors.orders.extend(rows);
    }
    Ok(())
}

fn stored(revision: i64, hash: &str) -> Result<Stored> {
    Ok(Stored {
        revision: revision_of(revision)?,
        hash: hash_of_hex(hash)?,
    })
}

// Look-ups by composite key join `json_each(?2) j CROSS JOIN table`: CROSS JOIN keeps
// the argument as the outer loop (SQLite's join-order hint), so each id is one index
// seek; with a plain JOIN the planner may scan the table for every batch instead, and
// ingest slows as the table grows.

/// Runs a look-up that SQLite aggregates into one JSON array (`json_group_array`)
/// and decodes it. One row crosses from sqlx's SQLite thread instead of one per
/// record, which is most of the cost of a look-up of a thousand ids. `?1` is the
/// platform, `?2` a JSON array argument.
async fn fetch_json<'e, E, T>(
    executor: E,
    sql: &'static str,
    platform_id: i64,
    arg: String,
) -> Result<Vec<T>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
    T: serde::de::DeserializeOwned,
{
    fetch_json_value(executor, sql, platform_id, arg).await
}

/// As `fetch_json`, for a query whose one value is any JSON document (several
/// look-ups in one round trip to the connection's thread: `json_array` of their
/// arrays, decoded as a tuple).
async fn fetch_json_value<'e, E, T>(
    executor: E,
    sql: &'static str,
    platform_id: i64,
    arg: String,
) -> Result<T>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
    T: serde::de::DeserializeOwned,
{
    let (json,): (String,) = sqlx::query_as(sql)
        .bind(platform_id)
        .bind(arg)
        .fetch_one(executor)
        .await
        .map_err(db_err)?;
    serde_json::from_str(&json).map_err(|e| corrupt(&format!("look-up result: {e}")))
}

fn scope_json(scope: &[(Period, String)]) -> Result<String> {
    let pairs: Vec<(String, &str)> = scope
        .iter()
        .map(|(p, i)| (p.to_string(), i.as_str()))
        .collect();
    serde_json::to_string(&pairs).map_err(|e| corrupt(&e.to_string()))
}

/// The volume statements of a platform (?1) in a scope (?2, `[[period, industry], …]`).
macro_rules! statements_in_scope {
    () => {
        "SELECT json_group_array(json_array(v.period, v.division_code, v.industry, v.billable_count))
     FROM json_each(?2) j CROSS JOIN volume_statements v
       ON v.platform_id = ?1 AND v.period = json_extract(j.value, '$[0]') AND v.industry = json_extract(j.value, '$[1]')"
    };
}
const STATEMENTS_IN_SCOPE: &str = statements_in_scope!();

/// A stored worker as `load` reads it: id, revision, content hash (hex), industries,
/// registered at, status, left at, sealed birth date (hex).
type StoredWorkerRow = (
    String,
    i64,
    String,
    String,
    i64,
    String,
    Option<i64>,
    Option<String>,
);

/// A stored order as `load` reads it: id, revision, content hash (hex), worker,
/// industry, division, accepted at, completed at, status, newest item.
type StoredOrderRow = (
    String,
    i64,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    String,
    Option<i64>,
);

/// What `load` reads, in one round trip: the stored workers, orders, declarations and
/// accidents of a platform (?1) among the ids of ?2 (`[[workers], [orders],
/// [declarations], [accidents]]`).
const STORED_RECORDS: &str = "SELECT json_array(
    json((SELECT json_group_array(json_array(worker_id, revision, hex(content_hash), industries,
            registered_at, status, left_at, hex(birth_date)))
          FROM workers WHERE platform_id = ?1 AND worker_id IN (SELECT value FROM json_each(?2, '$[0]')))),
    json((SELECT json_group_array(json_array(order_id, revision, hex(content_hash), worker_id, industry,
            division_code, accepted_at, completed_at, status, latest_item))
          FROM orders WHERE platform_id = ?1 AND order_id IN (SELECT value FROM json_each(?2, '$[1]')))),
    json((SELECT json_group_array(json_array(declaration_id, revision, hex(content_hash), period, division_code,
            industry))
          FROM declarations WHERE platform_id = ?1 AND declaration_id IN (SELECT value FROM json_each(?2, '$[2]')))),
    json((SELECT json_group_array(json_array(report_id, revision, hex(content_hash)))
          FROM accidents WHERE platform_id = ?1 AND report_id IN (SELECT value FROM json_each(?2, '$[3]')))),
    (SELECT workers_version FROM platforms WHERE id = ?1))";

/// What `load_scope` reads, in one round trip: the statements in the scope, the
/// declarations of its months and industries, and which of its months are released
/// and closed (issue 13's profile: on single-order calls each round trip to the
/// connection's thread cost about as much as the look-up itself).
const SCOPE_STATE: &str = concat!(
    "SELECT json_array(json((",
    statements_in_scope!(),
    ")), json((SELECT json_group_array(json_array(d.declaration_id, d.revision, d.period, d.division_code,
               d.industry, d.order_count, d.amount_fen, d.arrival))
             FROM json_each(?2) j CROSS JOIN declarations d
               ON d.platform_id = ?1 AND d.period = json_extract(j.value, '$[0]') AND d.industry = json_extract(j.value, '$[1]'))),
       json((SELECT json_group_array(r.period) FROM released_periods r WHERE r.platform_id = ?1
               AND r.period IN (SELECT json_extract(value, '$[0]') FROM json_each(?2)))),
       json((SELECT json_group_array(json_array(c.period, c.closed_at))
             FROM closed_periods c WHERE c.platform_id = ?1
               AND c.period IN (SELECT json_extract(value, '$[0]') FROM json_each(?2)))))"
);

/// The stored rows among `keys` of a platform's daily enrolments: each key with its
/// order count and newest item (`latest_item`). Keys without a row are left out.
async fn stored_enrolments(
    tx: &mut WriteTx,
    platform_id: i64,
    keys: &[&EnrolmentKey],
) -> Result<Vec<(EnrolmentKey, i64, Option<i64>)>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let arg: Vec<(&str, String, &str)> = keys
        .iter()
        .map(|k| {
            (
                k.worker_id.as_str(),
                k.day.to_string(),
                k.division_code.as_str(),
            )
        })
        .collect();
    let rows: Vec<(String, String, String, i64, Option<i64>)> = fetch_json(
        &mut **tx,
        "SELECT json_group_array(json_array(e.worker_id, e.day, e.division_code, e.order_count, e.latest_item))
         FROM json_each(?2) j CROSS JOIN daily_enrolments e
           ON e.platform_id = ?1 AND e.worker_id = json_extract(j.value, '$[0]')
          AND e.day = json_extract(j.value, '$[1]') AND e.division_code = json_extract(j.value, '$[2]')",
        platform_id,
        serde_json::to_string(&arg).map_err(|e| corrupt(&e.to_string()))?,
    )
    .await?;
    rows.into_iter()
        .map(|(w, d, c, count, item)| Ok((enrolment_of((w, d, c, count))?.0, count, item)))
        .collect()
}

fn hash_of_hex(hex: &str) -> Result<ContentHash> {
    let bad = || corrupt("content_hash is not 32 bytes");
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[async_trait]
impl IngestTx for SqliteIngest {
    async fn load(&mut self, touched: &Touched) -> Result<Loaded> {
        let mut known = Known::default();
        let mut birth_dates = HashMap::new();
        let pid = self.platform_id;
        let ids = (
            &touched.worker_ids,
            &touched.order_ids,
            &touched.declaration_ids,
            &touched.accident_ids,
        );
        let (workers, orders, declarations, accidents, workers_version): (
            Vec<StoredWorkerRow>,
            Vec<StoredOrderRow>,
            Vec<(String, i64, String, String, String, String)>,
            Vec<(String, i64, String)>,
            i64,
        ) = fetch_json_value(
            &mut *self.tx,
            STORED_RECORDS,
            pid,
            serde_json::to_string(&ids).map_err(|e| corrupt(&e.to_string()))?,
        )
        .await?;
        known.workers_version = Some(workers_version);
        for (id, revision, hash, industries, registered_at, status, left_at, birth) in workers {
            // Hash and birth date as stored: `pii` unmasks and opens them.
            let stored = stored(revision, &hash)?;
            if let Some(b) = birth.filter(|b| !b.is_empty()) {
                let sealed = hex::decode(&b).map_err(|_| corrupt("birth_date is not hex"))?;
                birth_dates.insert(id.clone(), sealed);
            }
            let state = WorkerState {
                stored,
                industries: split(&industries),
                registered_at,
                status: WorkerStatus::parse(&status)
                    .ok_or_else(|| corrupt("unknown worker status"))?,
                left_at,
                birth_date: None,
            };
            known.workers.insert(id, state);
        }
        // Read or not, each order's newest item is known now (none if not stored).
        self.anchors
            .orders
            .extend(touched.order_ids.iter().map(|id| (id.clone(), None)));
        for (
            id,
            revision,
            hash,
            worker_id,
            industry,
            division_code,
            accepted_at,
            completed_at,
            status,
            latest_item,
        ) in orders
        {
            self.anchors.orders.insert(id.clone(), latest_item);
            let facts = OrderFacts {
                worker_id,
                industry,
                division_code,
                accepted_at,
                completed_at,
                status: OrderStatus::parse(&status)
                    .ok_or_else(|| corrupt("unknown order status"))?,
            };
            known.orders.insert(
                id,
                StoredOrder {
                    stored: stored(revision, &hash)?,
                    facts,
                },
            );
        }
        for (id, revision, hash, period, division_code, industry) in declarations {
            let key = StatementKey {
                period: period_of(&period)?,
                division_code,
                industry,
            };
            known.declarations.insert(
                id,
                StoredDeclaration {
                    stored: stored(revision, &hash)?,
                    key,
                },
            );
        }
        for (id, revision, hash) in accidents {
            known.accidents.insert(id, stored(revision, &hash)?);
        }
        Ok(Loaded { known, birth_dates })
    }

    async fn enrolment_counts(
        &mut self,
        keys: &[&EnrolmentKey],
    ) -> Result<HashMap<EnrolmentKey, i64>> {
        let rows = stored_enrolments(&mut self.tx, self.platform_id, keys).await?;
        let anchors = &mut self.anchors.enrolments;
        anchors.extend(keys.iter().map(|k| ((*k).clone(), None)));
        Ok(rows
            .into_iter()
            .map(|(k, count, item)| {
                anchors.insert(k.clone(), item);
                (k, count)
            })
            .collect())
    }

    async fn load_scope(&mut self, known: &mut Known, scope: &[(Period, String)]) -> Result<()> {
        if scope.is_empty() {
            return Ok(());
        }
        let (rows, declared, released, closed): (
            Vec<(String, String, String, i64)>,
            Vec<DeclaredRow>,
            Vec<String>,
            Vec<(String, i64)>,
        ) = fetch_json_value(
            &mut *self.tx,
            SCOPE_STATE,
            self.platform_id,
            scope_json(scope)?,
        )
        .await?;
        known.statements.extend(statements_of(rows)?);
        add_declared(known, declared)?;
        for period in released {
            known.released.insert(period_of(&period)?);
        }
        for (period, at) in closed {
            known.closed.insert(period_of(&period)?, at);
        }
        known.scope.extend(scope.iter().cloned());
        Ok(())
    }

    async fn write(
        &mut self,
        plan: &Plan,
        sealed: &SealedWrites,
        mut outbox: Vec<OutboxItem>,
        received_at: Millis,
        laps: &mut Laps,
    ) -> Result<()> {
        let pid = self.platform_id;
        // The items first: the orders' and enrolments' rows name their newest. Their
        // payloads move into the statement (not copied).
        let payloads = outbox
            .iter_mut()
            .map(|i| std::mem::take(&mut i.payload))
            .collect();
        if sealed.workers.len() != plan.workers.len()
            || sealed.accidents.len() != plan.accidents.len()
        {
            return Err(corrupt(
                "the sealed writes do not match the plan's workers and accidents",
            ));
        }
        let newest = queue(
            &mut self.tx,
            pid,
            &outbox,
            payloads,
            &mut self.anchors,
            received_at,
        )
        .await?;
        laps.lap("write_outbox");
        let workers: Vec<_> = plan.workers.iter().zip(&sealed.workers).collect();
        in_chunks(&mut self.tx, &workers, ROWS_PER_STATEMENT / 2, |chunk| {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO workers (platform_id, worker_id, revision, content_hash, id_type, id_number, name, mobile,
                     birth_date, industries, registered_at, status, left_at, received_at, id_number_hash) ",
                );
                q.push_values(chunk, |mut b, (w, sealed)| {
                    let r = &w.record;
                    b.push_bind(pid)
                        .push_bind(&r.worker_id)
                        .push_bind(i64::from(r.revision))
                        .push_bind(sealed.content_hash.to_vec())
                        .push_bind(r.id_number.id_type().as_str())
                        .push_bind(&sealed.id_number)
                        .push_bind(&sealed.name)
                        .push_bind(&sealed.mobile)
                        .push_bind(&sealed.birth_date)
                        .push_bind(join(&r.industries))
                        .push_bind(r.registered_at)
                        .push_bind(r.status.as_str())
                        .push_bind(r.left_at)
                        .push_bind(received_at)
                        .push_bind(sealed.id_number_hash.to_vec());
                });
                q.push(
                    " ON CONFLICT (platform_id, worker_id) DO UPDATE SET revision = excluded.revision,
                     content_hash = excluded.content_hash, id_type = excluded.id_type, id_number = excluded.id_number,
                     id_number_hash = excluded.id_number_hash,
                     name = excluded.name, mobile = excluded.mobile, birth_date = excluded.birth_date,
                     industries = excluded.industries, registered_at = excluded.registered_at, status = excluded.status,
                     left_at = excluded.left_at, received_at = excluded.received_at",
                );
                q
            })
            .await?;
        if !plan.workers.is_empty() {
            // Cached worker states hold while this does not move (`ingest::workers`).
            sqlx::query("UPDATE platforms SET workers_version = workers_version + 1 WHERE id = ?1")
                .bind(pid)
                .execute(&mut *self.tx)
                .await
                .map_err(db_err)?;
        }
        laps.lap("write_workers");
        in_chunks(&mut self.tx, &plan.orders, ROWS_PER_STATEMENT, |chunk| {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO orders (platform_id, order_id, revision, content_hash, worker_id, industry, division_code,
                     accepted_at, completed_at, status, vehicle_plate, received_at, latest_item) ",
                );
                q.push_values(chunk, |mut b, w| {
                    let r = &w.record;
                    b.push_bind(pid)
                        .push_bind(&r.order_id)
                        .push_bind(i64::from(r.revision))
                        .push_bind(&w.hash[..])
                        .push_bind(&r.worker_id)
                        .push_bind(&r.industry)
                        .push_bind(&r.division_code)
                        .push_bind(r.accepted_at)
                        .push_bind(r.completed_at)
                        .push_bind(r.status.as_str())
                        .push_bind(r.vehicle_plate.as_ref().map(|p| p.as_str()))
                        .push_bind(received_at)
                        .push_bind(newest.orders.get(r.order_id.as_str()).copied());
                });
                q.push(
                    " ON CONFLICT (platform_id, order_id) DO UPDATE SET revision = excluded.revision,
                     content_hash = excluded.content_hash, worker_id = excluded.worker_id, industry = excluded.industry,
                     division_code = excluded.division_code, accepted_at = excluded.accepted_at,
                     completed_at = excluded.completed_at, status = excluded.status,
                     vehicle_plate = excluded.vehicle_plate, received_at = excluded.received_at,
                     latest_item = coalesce(excluded.latest_item, latest_item)",
                );
                q
            })
            .await?;
        laps.lap("write_orders");
        in_chunks(&mut self.tx, &plan.rejections, ROWS_PER_STATEMENT, |chunk| {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO rejections (platform_id, kind, record_id, revision, code, field, message, received_at) ",
                );
                q.push_values(chunk, |mut b, r| {
                    b.push_bind(pid)
                        .push_bind(r.kind.map_or("", crate::domain::RecordKind::as_str))
                        .push_bind(&r.id)
                        .push_bind(i64::from(r.revision))
                        .push_bind(r.rejection.code.as_str())
                        .push_bind(&r.rejection.field)
                        .push_bind(&r.rejection.message)
                        .push_bind(received_at);
                });
                q
            })
            .await?;
        laps.lap("write_rejections");
        let mut positions = 0_i64..;
        in_chunks(&mut self.tx, &plan.declarations, ROWS_PER_STATEMENT, |chunk| {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO declarations (platform_id, declaration_id, revision, content_hash, period, division_code,
                     industry, order_count, amount_fen, received_at, arrival) ",
                );
                q.push_values(chunk, |mut b, w| {
                    let r = &w.record;
                    b.push_bind(pid)
                        .push_bind(&r.declaration_id)
                        .push_bind(i64::from(r.revision))
                        .push_bind(&w.hash[..])
                        .push_bind(r.period.to_string())
                        .push_bind(&r.division_code)
                        .push_bind(&r.industry)
                        .push_bind(r.figures.order_count)
                        .push_bind(r.figures.amount_fen)
                        .push_bind(received_at)
                        // Later in the batch is later: it supersedes.
                        .push_bind(received_at * 100_000 + positions.next().unwrap_or(0));
                });
                q.push(
                    " ON CONFLICT (platform_id, declaration_id) DO UPDATE SET revision = excluded.revision,
                     content_hash = excluded.content_hash, period = excluded.period, division_code = excluded.division_code,
                     industry = excluded.industry, order_count = excluded.order_count, amount_fen = excluded.amount_fen,
                     received_at = excluded.received_at, arrival = excluded.arrival",
                );
                q
            })
            .await?;
        laps.lap("write_declarations");
        let accidents: Vec<_> = plan.accidents.iter().zip(&sealed.accidents).collect();
        in_chunks(&mut self.tx, &accidents, ROWS_PER_STATEMENT, |chunk| {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO accidents (platform_id, report_id, revision, content_hash, worker_id, order_id, occurred_at,
                     division_code, injury_kind, description, received_at) ",
                );
                q.push_values(chunk, |mut b, (w, sealed)| {
                    let r = &w.record;
                    b.push_bind(pid)
                        .push_bind(&r.report_id)
                        .push_bind(i64::from(r.revision))
                        .push_bind(sealed.content_hash.to_vec())
                        .push_bind(&r.worker_id)
                        .push_bind(&r.order_id)
                        .push_bind(r.occurred_at)
                        .push_bind(&r.division_code)
                        .push_bind(r.injury_kind.as_str())
                        .push_bind(&sealed.description)
                        .push_bind(received_at);
                });
                q.push(
                    " ON CONFLICT (platform_id, report_id) DO UPDATE SET revision = excluded.revision,
                     content_hash = excluded.content_hash, worker_id = excluded.worker_id, order_id = excluded.order_id,
                     occurred_at = excluded.occurred_at, division_code = excluded.division_code,
                     injury_kind = excluded.injury_kind, description = excluded.description, received_at = excluded.received_at",
                );
                q
            })
            .await?;
        laps.lap("write_accidents");
        let deltas: Vec<_> = plan.statement_deltas.iter().collect();
        in_chunks(&mut self.tx, &deltas, ROWS_PER_STATEMENT, |chunk| {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO volume_statements (platform_id, period, industry, division_code, billable_count, updated_at) ",
                );
                q.push_values(chunk, |mut b, (k, d)| {
                    b.push_bind(pid)
                        .push_bind(k.period.to_string())
                        .push_bind(&k.industry)
                        .push_bind(&k.division_code)
                        .push_bind(**d)
                        .push_bind(received_at);
                });
                q.push(
                    " ON CONFLICT (platform_id, period, industry, division_code) DO UPDATE SET
                     billable_count = billable_count + excluded.billable_count, updated_at = excluded.updated_at",
                );
                q
            })
            .await?;
        laps.lap("write_statements");
        for period in &plan.closes {
            sqlx::query("INSERT OR IGNORE INTO closed_periods (platform_id, period, closed_at) VALUES (?1, ?2, ?3)")
                .bind(pid)
                .bind(period.to_string())
                .bind(received_at)
                .execute(&mut *self.tx)
                .await
                .map_err(db_err)?;
        }
        laps.lap("write_closes");
        // Each changed enrolment's count, and the newest item of each enrolment that got
        // one (its row at 0 orders if the calls of a group left no change).
        let mut rows: Vec<(&EnrolmentKey, i64, Option<i64>)> = plan
            .enrolment_deltas
            .iter()
            .map(|(k, d)| (k, *d, newest.enrolments.get(k).copied()))
            .collect();
        rows.extend(
            newest
                .enrolments
                .iter()
                .filter(|(k, _)| !plan.enrolment_deltas.contains_key(**k))
                .map(|(k, seq)| (*k, 0, Some(*seq))),
        );
        in_chunks(&mut self.tx, &rows, ROWS_PER_STATEMENT, |chunk| {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO daily_enrolments (platform_id, worker_id, day, division_code, order_count, latest_item) ",
                );
                q.push_values(chunk, |mut b, (k, delta, item)| {
                    b.push_bind(pid)
                        .push_bind(&k.worker_id)
                        .push_bind(k.day.to_string())
                        .push_bind(&k.division_code)
                        .push_bind(*delta)
                        .push_bind(*item);
                });
                q.push(
                    " ON CONFLICT (platform_id, worker_id, day, division_code) DO UPDATE SET
                     order_count = max(order_count + excluded.order_count, 0),
                     latest_item = coalesce(excluded.latest_item, latest_item)",
                );
                q
            })
            .await?;
        // A day whose last order moved away is no longer an enrolment, but its row
        // stays at 0 orders: it names the day's newest item (`latest_item`), which the
        // withdrawal is, and which a later order of that day supersedes.
        laps.lap("write_enrolments");
        Ok(())
    }

    async fn take_batches(&mut self, count: u64) -> Result<u64> {
        let count = i64::try_from(count).map_err(|_| corrupt("batch count out of range"))?;
        let (n,): (i64,) = sqlx::query_as(
            "UPDATE platforms SET batches = batches + ?2 WHERE id = ?1 RETURNING batches - ?2 + 1",
        )
        .bind(self.platform_id)
        .bind(count)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db_err)?;
        u64::try_from(n).map_err(|_| corrupt("batch number out of range"))
    }

    async fn month(&mut self, period: Period) -> Result<MonthState> {
        let pid = self.platform_id;
        let p = period.to_string();
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT period, division_code, industry, billable_count FROM volume_statements
             WHERE platform_id = ?1 AND period = ?2",
        )
        .bind(pid)
        .bind(&p)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err)?;
        let closed_at: Option<(i64,)> = sqlx::query_as(
            "SELECT closed_at FROM closed_periods WHERE platform_id = ?1 AND period = ?2",
        )
        .bind(pid)
        .bind(&p)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(db_err)?;
        let released: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM released_periods WHERE platform_id = ?1 AND period = ?2")
                .bind(pid)
                .bind(&p)
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(db_err)?;
        Ok(MonthState {
            statements: statements_of(rows)?,
            closed_at: closed_at.map(|(t,)| t),
            released: released.is_some(),
        })
    }

    async fn release(&mut self, period: Period, at: Millis, outbox: &[OutboxItem]) -> Result<()> {
        for table in [
            "INSERT OR IGNORE INTO closed_periods (platform_id, period, closed_at) VALUES (?1, ?2, ?3)",
            "INSERT INTO released_periods (platform_id, period, released_at) VALUES (?1, ?2, ?3)",
        ] {
            sqlx::query(table)
                .bind(self.platform_id)
                .bind(period.to_string())
                .bind(at)
                .execute(&mut *self.tx)
                .await
                .map_err(db_err)?;
        }
        queue(
            &mut self.tx,
            self.platform_id,
            outbox,
            outbox.iter().map(|i| i.payload.clone()).collect(),
            &mut self.anchors,
            at,
        )
        .await
        .map(drop)
    }

    async fn audit_head(&mut self) -> Result<(i64, [u8; 32])> {
        access::chain_head(&mut self.tx).await
    }

    async fn append_audit(&mut self, entries: &super::access::ChainRows) -> Result<()> {
        access::insert_chain(&mut self.tx, entries).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await.map_err(db_err)
    }
}
