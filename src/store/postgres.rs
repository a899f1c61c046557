//! The store on PostgreSQL, for several gateway replicas on one database
//! (`database_url = "postgres://…"`). It behaves exactly as the embedded SQLite store
//! (the conformance suite in `tests/it/store.rs` runs against both); what several
//! writers need is done in the database:
//!
//! - **A platform's batches are serialised across replicas**: each ingest
//!   transaction takes `pg_advisory_xact_lock(platform id)` first (released at
//!   commit), so DUPLICATE, revisions, enrolment counts, statements and
//!   reconciliation are what one process computes; other platforms proceed in
//!   parallel.
//! - **Pulls never skip an item**: outbox items get their journal position (`pos`)
//!   at commit, in commit order: the transaction locks the one `heads` row, takes the
//!   next positions, inserts its items and commits; the next one waits for the lock,
//!   so a lower position is never committed after a higher one was visible. Items
//!   queued in a transaction are held in memory until then.
//! - **The audit log stays one chain**: a transaction that appends reads the head
//!   after locking the same row, so appenders run one at a time from their head to
//!   their commit, whichever replica they are on.
//! - **Each outbox item has one sender at a time**: a dispatcher claims due items with
//!   `FOR UPDATE SKIP LOCKED` and a lease (this replica, until when); an item whose
//!   lease ran out (its replica died or stalled) is claimable by any replica, and
//!   delivered again under the same idempotency key (the backends drop repeats).
//!
//! Batch writes are set operations: each table gets one `INSERT … SELECT FROM
//! UNNEST(arrays)` per batch, whatever the batch size.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use super::chain::{Anchors, Links, Newest, link};
use super::rows::{
    DeclarationListing, DeclaredRow, WorkerListing, add_declared, base_rate_of, corrupt, db_err,
    enrolment_of, float_rate_of, hash32, join, page_of, period_of, profile_of, revision_of, split,
    statements_of,
};
use super::{
    DeadLetter, DeadLetterAction, DeadLetterSelection, DeadLettersHandled, DeliveryOutcome,
    DeliveryRow, Destination, DueItem, IngestRepo, IngestTx, Laps, ListingRepo, Loaded, MonthState,
    OrderRow, OutboxItem, OutboxRepo, Page, PageRequest, PlatformRegistration, PlatformRepo,
    QueueDepth, RejectionRecord, Result, SealedWrites, Store, StoreError, StoreOptions,
    UnreleasedMonth, WorkerRow,
};
use crate::domain::batch::{
    EnrolmentKey, Known, OrderFacts, Plan, Stored, StoredDeclaration, StoredOrder, Touched,
    WorkerState,
};
use crate::domain::fees::{BaseRate, FloatRate, RateBook};
use crate::domain::period::Period;
use crate::domain::reconcile::{StatementKey, Statements};
use crate::domain::time::Millis;
use crate::domain::{OrderStatus, PlatformProfile, WorkerStatus};

mod access;
mod seal;

/// Advisory lock keys of once-only work (platforms use their id, which is positive).
pub(crate) const RESEAL_LOCK: i64 = -1;

type Tx = Transaction<'static, Postgres>;

/// The store on a PostgreSQL database, shared by any number of replicas.
pub struct PgStore {
    pool: PgPool,
    /// This replica, as its outbox leases name it.
    replica: String,
    /// How long a claimed outbox item is this replica's (milliseconds).
    lease_ms: i64,
}

impl PgStore {
    /// Connects to the database at a `postgres://` URL (a pool of
    /// `options.max_connections`) and applies the migrations of
    /// `migrations/postgres` (sqlx takes an advisory lock for them, so replicas
    /// starting together migrate once). Errors: `Unavailable` when the database
    /// cannot be reached, `Migrate` when its schema cannot be brought up to date.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("database_url: {e}")))?
            .application_name("oip-gateway")
            // A statement kept prepared is planned for its arguments every time: a
            // generic plan made while the outbox was empty claimed 2000 items among
            // 40,000 in minutes (a helper's attack on issue 14).
            .options([("plan_cache_mode", "force_custom_plan")]);
        // One connection first: its error says what is wrong (refused, unknown host,
        // authentication, no such database), where the pool would only time out.
        {
            use sqlx::Connection as _;
            let first = sqlx::PgConnection::connect_with(&connect)
                .await
                .map_err(db_err)?;
            let _ = first.close().await;
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(Duration::from_millis(options.acquire_timeout_ms.max(1)))
            .connect_with(connect)
            .await
            .map_err(db_err)?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        Ok(Self {
            pool,
            replica: replica_name(),
            lease_ms: i64::try_from(options.lease_ms).unwrap_or(i64::MAX),
        })
    }

    async fn begin(&self) -> Result<Tx> {
        self.pool.begin().await.map_err(db_err)
    }
}

/// A name for this process among the replicas: host, process id and start time, so
/// that a restarted replica does not take its predecessor's leases for its own.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!(
        "{host}/{}/{}",
        std::process::id(),
        crate::domain::time::now_millis()
    )
}

/// Locks the `heads` row until the transaction ends: the audit chain's appenders and
/// the takers of journal positions run one at a time from here to their commit.
async fn lock_heads(tx: &mut Tx) -> Result<i64> {
    let (pos,): (i64,) = sqlx::query_as("SELECT journal_pos FROM heads WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(pos)
}

#[async_trait]
impl Store for PgStore {
    async fn probe(&self) -> Result<()> {
        let expected = sqlx::migrate!("migrations/postgres").migrations.len() as i64;
        let (applied,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?;
        if applied < expected {
            return Err(StoreError::Unavailable(format!(
                "{applied} of {expected} migrations applied"
            )));
        }
        sqlx::query(
            "INSERT INTO ops_probe (id, at) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        )
        .bind(crate::domain::time::now_millis())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}

/// Replaces a platform's per-division rows (`platform_id, division_code, value`).
async fn replace_division_rows(
    tx: &mut Tx,
    table: &'static str,
    column: &'static str,
    platform_id: i64,
    rows: Vec<(String, String)>,
) -> Result<()> {
    sqlx::query(&format!("DELETE FROM {table} WHERE platform_id = $1"))
        .bind(platform_id)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    let (codes, values): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
    sqlx::query(&format!(
        "INSERT INTO {table} (platform_id, division_code, {column})
         SELECT $1, * FROM UNNEST($2::text[], $3::text[])"
    ))
    .bind(platform_id)
    .bind(codes)
    .bind(values)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

#[async_trait]
impl PlatformRepo for PgStore {
    async fn upsert_platform(&self, reg: &PlatformRegistration) -> Result<PlatformProfile> {
        let mut tx = self.begin().await?;
        let now = crate::domain::time::now_millis();
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO platforms (uscc, name, industries, delivery_tier, updated_at) VALUES ($1, $2, $3, $4, $5)
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
        let pilots = reg
            .pilot_starts
            .iter()
            .map(|(c, d)| (c.clone(), d.to_string()))
            .collect();
        replace_division_rows(&mut tx, "platform_divisions", "pilot_start", id, pilots).await?;
        let tiers = reg
            .delivery_tiers
            .iter()
            .map(|(c, t)| (c.clone(), t.as_str().to_string()))
            .collect();
        replace_division_rows(&mut tx, "platform_delivery_tiers", "tier", id, tiers).await?;
        tx.commit().await.map_err(db_err)?;
        self.platform(&reg.uscc)
            .await?
            .ok_or_else(|| corrupt("platform vanished after upsert"))
    }

    async fn platform(&self, uscc: &str) -> Result<Option<PlatformProfile>> {
        let row: Option<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT id, uscc, name, industries, delivery_tier FROM platforms WHERE uscc = $1",
        )
        .bind(uscc)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let divisions: Vec<(String, String)> = sqlx::query_as(
            "SELECT division_code, pilot_start FROM platform_divisions WHERE platform_id = $1",
        )
        .bind(row.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let tiers: Vec<(String, String)> = sqlx::query_as(
            "SELECT division_code, tier FROM platform_delivery_tiers WHERE platform_id = $1",
        )
        .bind(row.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        profile_of(row, divisions, tiers).map(Some)
    }

    async fn platforms(&self) -> Result<Vec<PlatformProfile>> {
        let usccs: Vec<(String,)> = sqlx::query_as("SELECT uscc FROM platforms ORDER BY uscc")
            .fetch_all(&self.pool)
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
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let floats: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT uscc, division_code, year, multiplier_e4, recorded_at FROM float_rates",
        )
        .fetch_all(&self.pool)
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
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO base_rates (industry, tier, effective_from, fen_per_order, recorded_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[])
             ON CONFLICT DO NOTHING",
        )
        .bind(
            bases
                .iter()
                .map(|b| b.industry.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            bases
                .iter()
                .map(|b| b.tier.map_or("", |t| t.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(
            bases
                .iter()
                .map(|b| b.effective_from.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(bases.iter().map(|b| b.fen_per_order).collect::<Vec<_>>())
        .bind(bases.iter().map(|b| b.recorded_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO float_rates (uscc, division_code, year, multiplier_e4, recorded_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[])
             ON CONFLICT DO NOTHING",
        )
        .bind(floats.iter().map(|f| f.uscc.as_str()).collect::<Vec<_>>())
        .bind(
            floats
                .iter()
                .map(|f| f.division_code.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(floats.iter().map(|f| i64::from(f.year)).collect::<Vec<_>>())
        .bind(
            floats
                .iter()
                .map(|f| f.multiplier.ten_thousandths())
                .collect::<Vec<_>>(),
        )
        .bind(floats.iter().map(|f| f.recorded_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }
}

#[async_trait]
impl IngestRepo for PgStore {
    async fn begin_ingest(&self, platform_id: i64) -> Result<Box<dyn IngestTx>> {
        let mut tx = self.begin().await?;
        // First: the platform's batches run one at a time, on any replica.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(platform_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        Ok(Box::new(PgIngest {
            tx,
            platform_id,
            anchors: Anchors::default(),
            queued: Vec::new(),
            heads_locked: false,
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
        .fetch_all(&self.pool)
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

/// A scope's (month, industry) pairs as two arrays.
fn scope_arrays(scope: &[(Period, String)]) -> (Vec<String>, Vec<&str>) {
    scope
        .iter()
        .map(|(p, i)| (p.to_string(), i.as_str()))
        .unzip()
}

/// The volume statements of a platform ($1) among (month, industry) pairs ($2, $3).
const STATEMENTS_IN_SCOPE: &str = "SELECT v.period, v.division_code, v.industry, v.billable_count
     FROM volume_statements v
     JOIN (SELECT DISTINCT * FROM UNNEST($2::text[], $3::text[])) s(period, industry)
       ON v.period = s.period AND v.industry = s.industry
     WHERE v.platform_id = $1";

#[async_trait]
impl ListingRepo for PgStore {
    async fn list_workers(&self, platform_id: i64, page: &PageRequest) -> Result<Page<WorkerRow>> {
        let rows: Vec<WorkerListing> = sqlx::query_as(
            "SELECT worker_id, revision, id_type, id_number, name, mobile, industries, registered_at, status, left_at, received_at
             FROM workers WHERE platform_id = $1 AND worker_id > $2 AND ($3::text IS NULL OR worker_id = $3)
             ORDER BY worker_id LIMIT $4",
        )
        .bind(platform_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.id.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let items: Vec<WorkerRow> = rows.into_iter().map(WorkerRow::from).collect();
        Ok(page_of(items, page.limit, |w| w.worker_id.clone()))
    }

    async fn list_orders(&self, platform_id: i64, page: &PageRequest) -> Result<Page<OrderRow>> {
        let items: Vec<OrderRow> = sqlx::query_as(
            "SELECT order_id, revision, worker_id, industry, division_code, accepted_at, completed_at, status, vehicle_plate, received_at
             FROM orders WHERE platform_id = $1 AND order_id > $2 AND ($3::text IS NULL OR order_id = $3)
             ORDER BY order_id LIMIT $4",
        )
        .bind(platform_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.id.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.pool)
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
             FROM rejections WHERE platform_id = $1 AND seq > $2 AND ($3::text IS NULL OR record_id = $3)
             ORDER BY seq LIMIT $4",
        )
        .bind(platform_id)
        .bind(after)
        .bind(page.id.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.pool)
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
             WHERE d.platform_id = $1 AND d.declaration_id > $2 AND ($3::text IS NULL OR d.declaration_id = $3)
             ORDER BY d.declaration_id LIMIT $4",
        )
        .bind(platform_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.id.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.pool)
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
        let (periods, industries) = scope_arrays(scope);
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(STATEMENTS_IN_SCOPE)
            .bind(platform_id)
            .bind(periods)
            .bind(industries)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        statements_of(rows)
    }

    async fn all_statements(&self, platform_id: i64) -> Result<Statements> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT period, division_code, industry, billable_count FROM volume_statements WHERE platform_id = $1",
        )
        .bind(platform_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        statements_of(rows)
    }

    async fn all_enrolments(&self, platform_id: i64) -> Result<BTreeMap<EnrolmentKey, i64>> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT worker_id, day, division_code, order_count FROM daily_enrolments
             WHERE platform_id = $1 AND order_count > 0",
        )
        .bind(platform_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.into_iter().map(enrolment_of).collect()
    }

    async fn closed_periods(&self, platform_id: i64) -> Result<HashMap<Period, Millis>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT period, closed_at FROM closed_periods WHERE platform_id = $1")
                .bind(platform_id)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        rows.into_iter()
            .map(|(p, at)| Ok((period_of(&p)?, at)))
            .collect()
    }
}

use super::DeclarationRow;

/// `destination`, or every destination (None), as names.
fn destination_names(destination: Option<Destination>) -> Vec<&'static str> {
    match destination {
        Some(d) => vec![d.as_str()],
        None => Destination::ALL.iter().map(|d| d.as_str()).collect(),
    }
}

#[async_trait]
impl OutboxRepo for PgStore {
    async fn due_items(
        &self,
        destination: Destination,
        now: Millis,
        limit: u32,
        excluded: &[RangeInclusive<i64>],
    ) -> Result<Vec<DueItem>> {
        // Written so that only one plan fits, whatever the statistics say (a fresh
        // database under its first load has none; a queue's pending share changes by
        // the minute): `ORDER BY seq + 0`, which only `outbox_due` gives, so the LIMIT
        // stops its scan early; no destination in the ordering check (a record key names
        // one destination), so that `outbox_due` cannot serve it and `outbox_open` seeks
        // by record key. Before, the planner took `outbox_due` for both sides on a fresh
        // database, or the primary key once statistics said most items were pending,
        // and a claim of 2000 items among 400,000 ran for minutes.
        // Claimed: locked rows (another replica claiming them now) are skipped, and the
        // claim is a lease this replica holds until `lease_until`, counted from when
        // the claim is made (not from `now`, read before a claim that may wait). An item leased by
        // another replica whose lease has not run out is not due; one leased by this
        // replica is (its delivery failed and it is due again, as on SQLite). An item
        // waits for any earlier pending item of its record, claimed or not.
        let (starts, ends): (Vec<i64>, Vec<i64>) = excluded
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| (*r.start(), *r.end()))
            .unzip();
        let mut rows: Vec<(i64, String, Vec<u8>, i64)> = sqlx::query_as(
            "WITH due AS (
               SELECT o.seq FROM outbox o
                WHERE o.destination = $1 AND o.state = 'pending' AND o.next_attempt_at <= $2
                  AND (o.lease_until IS NULL OR o.lease_until <= $2 OR o.lease_owner = $4)
                  AND NOT EXISTS (SELECT 1 FROM UNNEST($6::int8[], $7::int8[]) x(s, e)
                                  WHERE o.seq BETWEEN x.s AND x.e)
                  AND NOT EXISTS (SELECT 1 FROM outbox e
                                  WHERE e.record_key = o.record_key AND e.state IN ('pending', 'dead')
                                    AND NOT e.enrolment AND e.state = 'pending' AND e.seq < o.seq)
                ORDER BY o.seq + 0 LIMIT $3
                FOR UPDATE OF o SKIP LOCKED)
             UPDATE outbox o SET lease_owner = $4,
               lease_until = greatest($2, (extract(epoch FROM clock_timestamp()) * 1000)::int8) + $5
             FROM due WHERE o.seq = due.seq
             RETURNING o.seq, o.idempotency_key, o.payload, o.attempts",
        )
        .bind(destination.as_str())
        .bind(now)
        .bind(i64::from(limit))
        .bind(&self.replica)
        .bind(self.lease_ms)
        .bind(starts)
        .bind(ends)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.sort_unstable_by_key(|r| r.0);
        rows.into_iter()
            .map(|(seq, idempotency_key, payload, attempts)| {
                Ok(DueItem {
                    seq,
                    idempotency_key,
                    payload,
                    attempts: u32::try_from(attempts)
                        .map_err(|_| corrupt("attempts out of range"))?,
                })
            })
            .collect()
    }

    async fn settle(
        &self,
        outcomes: &[(i64, DeliveryOutcome)],
        max_attempts: u32,
        now: Millis,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        // Rows locked in seq order, as every writer of several outbox rows does: two
        // of them never wait for each other in a circle.
        let mut seqs: Vec<i64> = outcomes.iter().map(|(s, _)| *s).collect();
        seqs.sort_unstable();
        sqlx::query("SELECT seq FROM outbox WHERE seq = ANY($1) ORDER BY seq FOR UPDATE")
            .bind(&seqs)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let delivered: Vec<i64> = outcomes
            .iter()
            .filter(|(_, o)| *o == DeliveryOutcome::Delivered)
            .map(|(seq, _)| *seq)
            .collect();
        if !delivered.is_empty() {
            sqlx::query(
                "UPDATE outbox SET state = 'delivered', delivered_at = $1, attempts = attempts + 1,
                   lease_owner = NULL, lease_until = NULL
                 WHERE seq = ANY($2)",
            )
            .bind(now)
            .bind(&delivered)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        let mut refused: (Vec<i64>, Vec<&str>, Vec<i64>) = Default::default();
        for (seq, outcome) in outcomes {
            if let DeliveryOutcome::Invalid { reason, retry_at } = outcome {
                refused.0.push(*seq);
                refused.1.push(reason);
                refused.2.push(*retry_at);
            }
        }
        if !refused.0.is_empty() {
            sqlx::query(
                "UPDATE outbox o SET attempts = o.attempts + 1, last_error = x.reason,
                   next_attempt_at = x.retry_at, lease_owner = NULL, lease_until = NULL,
                   state = CASE WHEN o.attempts + 1 >= $4 THEN 'dead' ELSE 'pending' END
                 FROM UNNEST($1::int8[], $2::text[], $3::int8[]) x(seq, reason, retry_at)
                 WHERE o.seq = x.seq AND o.state = 'pending'",
            )
            .bind(&refused.0)
            .bind(&refused.1)
            .bind(&refused.2)
            .bind(i64::from(max_attempts))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn queue_depth(&self, destination: Destination) -> Result<QueueDepth> {
        let (pending, dead, oldest): (i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'dead'),
                    min(created_at) FILTER (WHERE state = 'pending')
             FROM outbox WHERE destination = $1 AND state IN ('pending', 'dead')",
        )
        .bind(destination.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(QueueDepth {
            pending: u64::try_from(pending).unwrap_or(0),
            dead: u64::try_from(dead).unwrap_or(0),
            oldest_pending_at: oldest,
        })
    }

    async fn deliveries(&self, record_key: &str) -> Result<Vec<DeliveryRow>> {
        // Daily enrolments' and orders' items are chained from their record's row
        // (`latest_item`, then each item's `previous`); the others are in
        // `outbox_by_record`.
        let (uscc, enrolment, order) = super::chain::chained_key(record_key);
        let (worker, day, division) = enrolment.unwrap_or_default();
        sqlx::query_as(
            "WITH RECURSIVE chain(seq) AS (
               SELECT e.latest_item FROM daily_enrolments e JOIN platforms p ON p.id = e.platform_id
                WHERE $2 AND p.uscc = $3 AND e.worker_id = $4 AND e.day = $5 AND e.division_code = $6
               UNION
               SELECT r.latest_item FROM orders r JOIN platforms p ON p.id = r.platform_id
                WHERE $7::text IS NOT NULL AND p.uscc = $3 AND r.order_id = $7
               UNION
               SELECT o.previous FROM chain c JOIN outbox o ON o.seq = c.seq WHERE o.chained OR o.enrolment
             )
             SELECT idempotency_key, destination, state, attempts, last_error, created_at, delivered_at FROM outbox
             WHERE seq IN (SELECT seq FROM chain WHERE seq IS NOT NULL
                           UNION ALL
                           SELECT seq FROM outbox WHERE record_key = $1 AND NOT enrolment AND NOT chained)
               AND record_key = $1 ORDER BY seq",
        )
        .bind(record_key)
        .bind(enrolment.is_some())
        .bind(uscc)
        .bind(worker)
        .bind(day)
        .bind(division)
        .bind(order)
        .fetch_all(&self.pool)
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
             WHERE state = 'dead'
               AND destination = ANY($1) AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(destination_names(destination))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
        let selected = "state = 'dead'
               AND destination = ANY($1::text[])
               AND (cardinality($2::int8[]) = 0 OR seq = ANY($2::int8[]))";
        let destinations = destination_names(selection.destination);
        let args = (&destinations[..], &selection.seqs[..], now, by);
        let mut tx = self.begin().await?;
        let mut superseded = 0;
        if action == DeadLetterAction::Replay {
            // As on SQLite: a dead item with a later item of its record delivered or
            // pending is superseded instead (sent again, it could arrive after it).
            let sql = format!(
                "UPDATE outbox SET state = 'superseded', handled_by = $4, handled_at = $3
                 WHERE {selected} AND NOT outbox.enrolment
                   AND EXISTS (SELECT 1 FROM outbox l
                     WHERE l.record_key = outbox.record_key AND NOT l.enrolment AND NOT l.chained
                       AND l.seq > outbox.seq
                       AND l.state IN ('delivered', 'pending'))"
            );
            superseded = update_dead_letters(&mut tx, &sql, args).await?;
            let sql = format!(
                "WITH RECURSIVE dead(seq, record_key) AS (
                   SELECT seq, record_key FROM outbox
                    WHERE {selected} AND NOT enrolment AND strpos(record_key, '/order/') = 19
                 ), later(dead, seq) AS (
                   SELECT d.seq, r.latest_item FROM dead d
                     JOIN platforms p ON p.uscc = substr(d.record_key, 1, 18)
                     JOIN orders r ON r.platform_id = p.id AND r.order_id = substr(d.record_key, 26)
                   UNION ALL
                   SELECT l.dead, o.previous FROM later l JOIN outbox o ON o.seq = l.seq
                    WHERE o.chained AND o.previous > l.dead
                 )
                 UPDATE outbox SET state = 'superseded', handled_by = $4, handled_at = $3
                 WHERE seq IN (SELECT l.dead FROM later l JOIN outbox o ON o.seq = l.seq
                               WHERE l.seq > l.dead AND o.state IN ('delivered', 'pending'))"
            );
            superseded += update_dead_letters(&mut tx, &sql, args).await?;
        }
        let set = match action {
            DeadLetterAction::Replay => {
                "state = 'pending', attempts = 0, next_attempt_at = $3, lease_owner = NULL, lease_until = NULL"
            }
            DeadLetterAction::Discard => "state = 'discarded'",
        };
        let sql =
            format!("UPDATE outbox SET {set}, handled_by = $4, handled_at = $3 WHERE {selected}");
        let changed = update_dead_letters(&mut tx, &sql, args).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(DeadLettersHandled {
            changed,
            superseded,
        })
    }
}

/// Runs an UPDATE of selected dead letters; its parameters are $1 destinations, $2
/// seqs (empty: all), $3 now, $4 the administrator.
async fn update_dead_letters(
    tx: &mut Tx,
    sql: &str,
    (destinations, seqs, now, by): (&[&str], &[i64], Millis, &str),
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

/// An outbox row queued in a transaction, inserted at its commit with its journal
/// position.
struct QueuedRow {
    seq: i64,
    destination: &'static str,
    record_key: String,
    idempotency_key: String,
    payload: Vec<u8>,
    superseded: bool,
    at: Millis,
    enrolment: bool,
    previous: Option<i64>,
    chained: bool,
}

struct PgIngest {
    tx: Tx,
    platform_id: i64,
    /// The newest items of the orders and enrolments this transaction has read.
    anchors: Anchors,
    /// Items queued, inserted at the commit (`flush`).
    queued: Vec<QueuedRow>,
    /// The `heads` row is locked by this transaction.
    heads_locked: bool,
}

impl PgIngest {
    /// Locks `heads` (once) and returns the last journal position given.
    async fn lock_heads(&mut self) -> Result<i64> {
        let pos = lock_heads(&mut self.tx).await?;
        self.heads_locked = true;
        Ok(pos)
    }

    /// Inserts the queued items with the next journal positions, in seq order.
    async fn flush(&mut self) -> Result<()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.queued);
        let count = rows.len() as i64;
        // The UPDATE locks the `heads` row itself, until the commit.
        let (last,): (i64,) = sqlx::query_as(
            "UPDATE heads SET journal_pos = journal_pos + $1 WHERE id = 1 RETURNING journal_pos",
        )
        .bind(count)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db_err)?;
        self.heads_locked = true;
        let first = last - count + 1;
        let mut c = OutboxColumns::with_capacity(rows.len());
        for (pos, r) in (first..).zip(rows) {
            c.seq.push(r.seq);
            c.pos.push(pos);
            c.destination.push(r.destination);
            c.record_key.push(r.record_key);
            c.idempotency_key.push(r.idempotency_key);
            c.payload.push(r.payload);
            c.state.push(if r.superseded {
                "superseded"
            } else {
                "pending"
            });
            c.at.push(r.at);
            c.handled_at.push(r.superseded.then_some(r.at));
            c.enrolment.push(r.enrolment);
            c.previous.push(r.previous);
            c.chained.push(r.chained);
        }
        sqlx::query(
            "INSERT INTO outbox (seq, pos, destination, record_key, idempotency_key, payload, state,
               next_attempt_at, created_at, handled_at, enrolment, previous, chained)
             SELECT seq, pos, destination, record_key, idempotency_key, payload, state, at, at, handled_at,
                    enrolment, previous, chained
             FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::text[],
                         $8::int8[], $9::int8[], $10::bool[], $11::int8[], $12::bool[])
               AS x(seq, pos, destination, record_key, idempotency_key, payload, state, at, handled_at,
                    enrolment, previous, chained)",
        )
        .bind(c.seq)
        .bind(c.pos)
        .bind(c.destination)
        .bind(c.record_key)
        .bind(c.idempotency_key)
        .bind(c.payload)
        .bind(c.state)
        .bind(c.at)
        .bind(c.handled_at)
        .bind(c.enrolment)
        .bind(c.previous)
        .bind(c.chained)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Reads the newest items of the orders and enrolments of `outbox` not read yet
    /// (a caller that wrote items without loading their records first).
    async fn read_missing(&mut self, outbox: &[OutboxItem]) -> Result<()> {
        let keys: Vec<EnrolmentKey> = self
            .anchors
            .unread_enrolments(outbox)
            .into_iter()
            .cloned()
            .collect();
        if !keys.is_empty() {
            let refs: Vec<&EnrolmentKey> = keys.iter().collect();
            let rows = stored_enrolments(&mut self.tx, self.platform_id, &refs).await?;
            self.anchors
                .enrolments
                .extend(keys.into_iter().map(|k| (k, None)));
            self.anchors
                .enrolments
                .extend(rows.into_iter().map(|(k, _, item)| (k, item)));
        }
        let orders: Vec<String> = self
            .anchors
            .unread_orders(outbox)
            .into_iter()
            .map(str::to_string)
            .collect();
        if !orders.is_empty() {
            let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
                "SELECT order_id, latest_item FROM orders WHERE platform_id = $1 AND order_id = ANY($2)",
            )
            .bind(self.platform_id)
            .bind(&orders)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err)?;
            self.anchors
                .orders
                .extend(orders.into_iter().map(|id| (id, None)));
            self.anchors.orders.extend(rows);
        }
        Ok(())
    }

    /// Queues outbox items as `sqlite::queue` does (the same supersession and
    /// chaining, `chain::link`), with seqs from `outbox_seq`; the rows are inserted
    /// at the commit (`flush`). Returns the newest item of each enrolment and order.
    async fn queue<'a>(
        &mut self,
        outbox: &'a [OutboxItem],
        payloads: Vec<Vec<u8>>,
        at: Millis,
    ) -> Result<Newest<'a>> {
        if outbox.is_empty() {
            return Ok(Newest::default());
        }
        // Items queued before in this transaction are in the table before these.
        self.flush().await?;
        let superseding: Vec<&OutboxItem> = outbox
            .iter()
            .filter(|i| i.daily_enrolment.is_none() && i.supersedes.is_some())
            .collect();
        if !superseding.is_empty() {
            sqlx::query(
                "UPDATE outbox o SET state = 'superseded', handled_at = $3
                 FROM (SELECT DISTINCT * FROM UNNEST($1::text[], $2::text[])) x(record_key, prefix)
                 WHERE o.record_key = x.record_key AND o.state IN ('pending', 'dead') AND NOT o.enrolment
                   AND starts_with(o.idempotency_key, x.prefix)",
            )
            .bind(
                superseding
                    .iter()
                    .map(|i| i.record_key.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                superseding
                    .iter()
                    .map(|i| i.supersedes.as_deref().unwrap_or_default())
                    .collect::<Vec<_>>(),
            )
            .bind(at)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        }
        self.read_missing(outbox).await?;
        let open = self.anchors.open_enrolment_items(outbox);
        if !open.is_empty() {
            sqlx::query(
                "UPDATE outbox SET state = 'superseded', handled_at = $2
                 WHERE seq = ANY($1) AND state IN ('pending', 'dead') AND enrolment",
            )
            .bind(&open)
            .bind(at)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        }
        let mut seqs: Vec<i64> =
            sqlx::query_scalar("SELECT nextval('outbox_seq') FROM generate_series(1, $1)")
                .bind(outbox.len() as i64)
                .fetch_all(&mut *self.tx)
                .await
                .map_err(db_err)?;
        seqs.sort_unstable();
        let Links {
            obsolete,
            previous,
            newest,
        } = link(outbox, &seqs, &self.anchors);
        for ((((item, payload), superseded), seq), previous) in outbox
            .iter()
            .zip(payloads)
            .zip(obsolete)
            .zip(seqs)
            .zip(previous)
        {
            self.queued.push(QueuedRow {
                seq,
                destination: item.destination.as_str(),
                record_key: item.record_key.clone(),
                idempotency_key: item.idempotency_key.clone(),
                payload,
                superseded,
                at,
                enrolment: item.daily_enrolment.is_some(),
                previous,
                chained: item.daily_enrolment.is_some() || item.order_id.is_some(),
            });
        }
        Ok(newest)
    }
}

/// The columns of outbox rows to insert, as arrays.
#[derive(Default)]
struct OutboxColumns {
    seq: Vec<i64>,
    pos: Vec<i64>,
    destination: Vec<&'static str>,
    record_key: Vec<String>,
    idempotency_key: Vec<String>,
    payload: Vec<Vec<u8>>,
    state: Vec<&'static str>,
    at: Vec<i64>,
    handled_at: Vec<Option<i64>>,
    enrolment: Vec<bool>,
    previous: Vec<Option<i64>>,
    chained: Vec<bool>,
}

impl OutboxColumns {
    fn with_capacity(n: usize) -> Self {
        Self {
            seq: Vec::with_capacity(n),
            pos: Vec::with_capacity(n),
            destination: Vec::with_capacity(n),
            record_key: Vec::with_capacity(n),
            idempotency_key: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            state: Vec::with_capacity(n),
            at: Vec::with_capacity(n),
            handled_at: Vec::with_capacity(n),
            enrolment: Vec::with_capacity(n),
            previous: Vec::with_capacity(n),
            chained: Vec::with_capacity(n),
        }
    }
}

/// The stored rows among `keys` of a platform's daily enrolments: each key with its
/// order count and newest item (`latest_item`). Keys without a row are left out.
async fn stored_enrolments(
    tx: &mut Tx,
    platform_id: i64,
    keys: &[&EnrolmentKey],
) -> Result<Vec<(EnrolmentKey, i64, Option<i64>)>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT e.worker_id, e.day, e.division_code, e.order_count, e.latest_item
         FROM (SELECT DISTINCT * FROM UNNEST($2::text[], $3::text[], $4::text[])) k(day, worker_id, division_code)
         JOIN daily_enrolments e ON e.platform_id = $1 AND e.day = k.day AND e.worker_id = k.worker_id
          AND e.division_code = k.division_code",
    )
    .bind(platform_id)
    .bind(keys.iter().map(|k| k.day.to_string()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.worker_id.as_str()).collect::<Vec<_>>())
    .bind(
        keys.iter()
            .map(|k| k.division_code.as_str())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?;
    rows.into_iter()
        .map(|(w, d, c, count, item)| Ok((enrolment_of((w, d, c, count))?.0, count, item)))
        .collect()
}

fn stored(revision: i64, hash: &[u8]) -> Result<Stored> {
    Ok(Stored {
        revision: revision_of(revision)?,
        hash: hash32(hash)?,
    })
}

/// A stored worker as `load` reads it: id, revision, content hash (as stored),
/// industries, registered at, status, left at, sealed birth date.
type StoredWorkerRow = (
    String,
    i64,
    Vec<u8>,
    String,
    i64,
    String,
    Option<i64>,
    Option<Vec<u8>>,
);

/// A stored order as `load` reads it: id, revision, content hash, worker, industry,
/// division, accepted at, completed at, status, newest item.
type StoredOrderRow = (
    String,
    i64,
    Vec<u8>,
    String,
    String,
    String,
    i64,
    Option<i64>,
    String,
    Option<i64>,
);

#[async_trait]
impl IngestTx for PgIngest {
    async fn load(&mut self, touched: &Touched) -> Result<Loaded> {
        let mut known = Known::default();
        let mut birth_dates = HashMap::new();
        let pid = self.platform_id;
        let (version,): (i64,) =
            sqlx::query_as("SELECT workers_version FROM platforms WHERE id = $1")
                .bind(pid)
                .fetch_one(&mut *self.tx)
                .await
                .map_err(db_err)?;
        known.workers_version = Some(version);
        if !touched.worker_ids.is_empty() {
            let workers: Vec<StoredWorkerRow> = sqlx::query_as(
                "SELECT worker_id, revision, content_hash, industries, registered_at, status, left_at, birth_date
                 FROM workers WHERE platform_id = $1 AND worker_id = ANY($2)",
            )
            .bind(pid)
            .bind(&touched.worker_ids)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err)?;
            for (id, revision, hash, industries, registered_at, status, left_at, birth) in workers {
                // Hash and birth date as stored: `pii` unmasks and opens them.
                if let Some(b) = birth.filter(|b| !b.is_empty()) {
                    birth_dates.insert(id.clone(), b);
                }
                let state = WorkerState {
                    stored: stored(revision, &hash)?,
                    industries: split(&industries),
                    registered_at,
                    status: WorkerStatus::parse(&status)
                        .ok_or_else(|| corrupt("unknown worker status"))?,
                    left_at,
                    birth_date: None,
                };
                known.workers.insert(id, state);
            }
        }
        // Read or not, each order's newest item is known now (none if not stored).
        self.anchors
            .orders
            .extend(touched.order_ids.iter().map(|id| (id.clone(), None)));
        if !touched.order_ids.is_empty() {
            let orders: Vec<StoredOrderRow> = sqlx::query_as(
                "SELECT order_id, revision, content_hash, worker_id, industry, division_code, accepted_at,
                        completed_at, status, latest_item
                 FROM orders WHERE platform_id = $1 AND order_id = ANY($2)",
            )
            .bind(pid)
            .bind(&touched.order_ids)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err)?;
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
        }
        if !touched.declaration_ids.is_empty() {
            let declarations: Vec<(String, i64, Vec<u8>, String, String, String)> = sqlx::query_as(
                "SELECT declaration_id, revision, content_hash, period, division_code, industry
                     FROM declarations WHERE platform_id = $1 AND declaration_id = ANY($2)",
            )
            .bind(pid)
            .bind(&touched.declaration_ids)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err)?;
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
        }
        if !touched.accident_ids.is_empty() {
            let accidents: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
                "SELECT report_id, revision, content_hash FROM accidents
                 WHERE platform_id = $1 AND report_id = ANY($2)",
            )
            .bind(pid)
            .bind(&touched.accident_ids)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err)?;
            for (id, revision, hash) in accidents {
                known.accidents.insert(id, stored(revision, &hash)?);
            }
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
        let pid = self.platform_id;
        let (periods, industries) = scope_arrays(scope);
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(STATEMENTS_IN_SCOPE)
            .bind(pid)
            .bind(&periods)
            .bind(&industries)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err)?;
        known.statements.extend(statements_of(rows)?);
        let declared: Vec<DeclaredRow> = sqlx::query_as(
            "SELECT d.declaration_id, d.revision, d.period, d.division_code, d.industry, d.order_count,
                    d.amount_fen, d.arrival
             FROM declarations d
             JOIN (SELECT DISTINCT * FROM UNNEST($2::text[], $3::text[])) s(period, industry)
               ON d.period = s.period AND d.industry = s.industry
             WHERE d.platform_id = $1",
        )
        .bind(pid)
        .bind(&periods)
        .bind(&industries)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err)?;
        add_declared(known, declared)?;
        let months: Vec<(String, Option<i64>, bool)> = sqlx::query_as(
            "SELECT m.period, c.closed_at, r.period IS NOT NULL
             FROM (SELECT DISTINCT period FROM UNNEST($2::text[]) p(period)) m
             LEFT JOIN closed_periods c ON c.platform_id = $1 AND c.period = m.period
             LEFT JOIN released_periods r ON r.platform_id = $1 AND r.period = m.period",
        )
        .bind(pid)
        .bind(&periods)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err)?;
        for (period, closed_at, released) in months {
            let period = period_of(&period)?;
            if released {
                known.released.insert(period);
            }
            if let Some(at) = closed_at {
                known.closed.insert(period, at);
            }
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
        if sealed.workers.len() != plan.workers.len()
            || sealed.accidents.len() != plan.accidents.len()
        {
            return Err(corrupt(
                "the sealed writes do not match the plan's workers and accidents",
            ));
        }
        let payloads = outbox
            .iter_mut()
            .map(|i| std::mem::take(&mut i.payload))
            .collect();
        let newest = self.queue(&outbox, payloads, received_at).await?;
        laps.lap("write_outbox");
        write::workers(&mut self.tx, pid, plan, sealed, received_at).await?;
        if !plan.workers.is_empty() {
            // Cached worker states hold while this does not move (`ingest::workers`).
            sqlx::query("UPDATE platforms SET workers_version = workers_version + 1 WHERE id = $1")
                .bind(pid)
                .execute(&mut *self.tx)
                .await
                .map_err(db_err)?;
        }
        laps.lap("write_workers");
        write::orders(&mut self.tx, pid, plan, &newest, received_at).await?;
        laps.lap("write_orders");
        write::rejections(&mut self.tx, pid, plan, received_at).await?;
        laps.lap("write_rejections");
        write::declarations(&mut self.tx, pid, plan, received_at).await?;
        laps.lap("write_declarations");
        write::accidents(&mut self.tx, pid, plan, sealed, received_at).await?;
        laps.lap("write_accidents");
        write::statements(&mut self.tx, pid, plan, received_at).await?;
        laps.lap("write_statements");
        if !plan.closes.is_empty() {
            sqlx::query(
                "INSERT INTO closed_periods (platform_id, period, closed_at)
                 SELECT $1, p, $3 FROM UNNEST($2::text[]) p ON CONFLICT DO NOTHING",
            )
            .bind(pid)
            .bind(
                plan.closes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .bind(received_at)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        }
        laps.lap("write_closes");
        write::enrolments(&mut self.tx, pid, plan, &newest).await?;
        laps.lap("write_enrolments");
        Ok(())
    }

    async fn take_batches(&mut self, count: u64) -> Result<u64> {
        let count = i64::try_from(count).map_err(|_| corrupt("batch count out of range"))?;
        let (n,): (i64,) = sqlx::query_as(
            "UPDATE platforms SET batches = batches + $2 WHERE id = $1 RETURNING batches - $2 + 1",
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
             WHERE platform_id = $1 AND period = $2",
        )
        .bind(pid)
        .bind(&p)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err)?;
        let (closed_at, released): (Option<i64>, bool) = sqlx::query_as(
            "SELECT (SELECT closed_at FROM closed_periods WHERE platform_id = $1 AND period = $2),
                    EXISTS (SELECT 1 FROM released_periods WHERE platform_id = $1 AND period = $2)",
        )
        .bind(pid)
        .bind(&p)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(MonthState {
            statements: statements_of(rows)?,
            closed_at,
            released,
        })
    }

    async fn release(&mut self, period: Period, at: Millis, outbox: &[OutboxItem]) -> Result<()> {
        for table in [
            "INSERT INTO closed_periods (platform_id, period, closed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            "INSERT INTO released_periods (platform_id, period, released_at) VALUES ($1, $2, $3)",
        ] {
            sqlx::query(table)
                .bind(self.platform_id)
                .bind(period.to_string())
                .bind(at)
                .execute(&mut *self.tx)
                .await
                .map_err(db_err)?;
        }
        let payloads = outbox.iter().map(|i| i.payload.clone()).collect();
        self.queue(outbox, payloads, at).await.map(drop)
    }

    async fn audit_head(&mut self) -> Result<(i64, [u8; 32])> {
        if !self.heads_locked {
            self.lock_heads().await?;
        }
        access::chain_head(&mut self.tx).await
    }

    async fn append_audit(&mut self, entries: &super::access::ChainRows) -> Result<()> {
        access::insert_chain(&mut self.tx, entries).await
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.flush().await?;
        self.tx.commit().await.map_err(db_err)
    }
}

/// The set-based writes of an ingest plan: one statement per table, its rows as
/// arrays (`UNNEST`).
mod write {
    use super::{Tx, db_err, join};
    use crate::domain::batch::Plan;
    use crate::domain::time::Millis;
    use crate::store::chain::Newest;
    use crate::store::{Result, SealedWrites};

    pub async fn workers(
        tx: &mut Tx,
        pid: i64,
        plan: &Plan,
        sealed: &SealedWrites,
        received_at: Millis,
    ) -> Result<()> {
        if plan.workers.is_empty() {
            return Ok(());
        }
        let rows = plan.workers.iter().zip(&sealed.workers);
        let (mut id, mut revision, mut hash, mut id_type) = (vec![], vec![], vec![], vec![]);
        let (mut number, mut name, mut mobile, mut birth) = (vec![], vec![], vec![], vec![]);
        let (mut industries, mut registered, mut status, mut left, mut lookup) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (w, s) in rows {
            let r = &w.record;
            id.push(r.worker_id.as_str());
            revision.push(i64::from(r.revision));
            hash.push(s.content_hash.to_vec());
            id_type.push(r.id_number.id_type().as_str());
            number.push(s.id_number.as_slice());
            name.push(s.name.as_slice());
            mobile.push(s.mobile.as_slice());
            birth.push(s.birth_date.as_deref());
            industries.push(join(&r.industries));
            registered.push(r.registered_at);
            status.push(r.status.as_str());
            left.push(r.left_at);
            lookup.push(s.id_number_hash.to_vec());
        }
        sqlx::query(
            "INSERT INTO workers (platform_id, worker_id, revision, content_hash, id_type, id_number, name, mobile,
               birth_date, industries, registered_at, status, left_at, received_at, id_number_hash)
             SELECT $1, x.worker_id, x.revision, x.content_hash, x.id_type, x.id_number, x.name, x.mobile,
                    x.birth_date, x.industries, x.registered_at, x.status, x.left_at, $15, x.id_number_hash
             FROM UNNEST($2::text[], $3::int8[], $4::bytea[], $5::text[], $6::bytea[], $7::bytea[], $8::bytea[],
                         $9::bytea[], $10::text[], $11::int8[], $12::text[], $13::int8[], $14::bytea[])
               AS x(worker_id, revision, content_hash, id_type, id_number, name, mobile, birth_date, industries,
                    registered_at, status, left_at, id_number_hash)
             ON CONFLICT (platform_id, worker_id) DO UPDATE SET revision = excluded.revision,
               content_hash = excluded.content_hash, id_type = excluded.id_type, id_number = excluded.id_number,
               id_number_hash = excluded.id_number_hash, name = excluded.name, mobile = excluded.mobile,
               birth_date = excluded.birth_date, industries = excluded.industries,
               registered_at = excluded.registered_at, status = excluded.status, left_at = excluded.left_at,
               received_at = excluded.received_at",
        )
        .bind(pid)
        .bind(id)
        .bind(revision)
        .bind(hash)
        .bind(id_type)
        .bind(number)
        .bind(name)
        .bind(mobile)
        .bind(birth)
        .bind(industries)
        .bind(registered)
        .bind(status)
        .bind(left)
        .bind(lookup)
        .bind(received_at)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    pub async fn orders(
        tx: &mut Tx,
        pid: i64,
        plan: &Plan,
        newest: &Newest<'_>,
        received_at: Millis,
    ) -> Result<()> {
        if plan.orders.is_empty() {
            return Ok(());
        }
        let (mut id, mut revision, mut hash, mut worker) = (vec![], vec![], vec![], vec![]);
        let (mut industry, mut division, mut accepted, mut completed) =
            (vec![], vec![], vec![], vec![]);
        let (mut status, mut plate, mut latest) = (vec![], vec![], vec![]);
        for w in &plan.orders {
            let r = &w.record;
            id.push(r.order_id.as_str());
            revision.push(i64::from(r.revision));
            hash.push(&w.hash[..]);
            worker.push(r.worker_id.as_str());
            industry.push(r.industry.as_str());
            division.push(r.division_code.as_str());
            accepted.push(r.accepted_at);
            completed.push(r.completed_at);
            status.push(r.status.as_str());
            plate.push(r.vehicle_plate.as_ref().map(|p| p.as_str()));
            latest.push(newest.orders.get(r.order_id.as_str()).copied());
        }
        sqlx::query(
            "INSERT INTO orders (platform_id, order_id, revision, content_hash, worker_id, industry, division_code,
               accepted_at, completed_at, status, vehicle_plate, received_at, latest_item)
             SELECT $1, x.order_id, x.revision, x.content_hash, x.worker_id, x.industry, x.division_code,
                    x.accepted_at, x.completed_at, x.status, x.vehicle_plate, $13, x.latest_item
             FROM UNNEST($2::text[], $3::int8[], $4::bytea[], $5::text[], $6::text[], $7::text[], $8::int8[],
                         $9::int8[], $10::text[], $11::text[], $12::int8[])
               AS x(order_id, revision, content_hash, worker_id, industry, division_code, accepted_at,
                    completed_at, status, vehicle_plate, latest_item)
             ON CONFLICT (platform_id, order_id) DO UPDATE SET revision = excluded.revision,
               content_hash = excluded.content_hash, worker_id = excluded.worker_id, industry = excluded.industry,
               division_code = excluded.division_code, accepted_at = excluded.accepted_at,
               completed_at = excluded.completed_at, status = excluded.status,
               vehicle_plate = excluded.vehicle_plate, received_at = excluded.received_at,
               latest_item = coalesce(excluded.latest_item, orders.latest_item)",
        )
        .bind(pid)
        .bind(id)
        .bind(revision)
        .bind(hash)
        .bind(worker)
        .bind(industry)
        .bind(division)
        .bind(accepted)
        .bind(completed)
        .bind(status)
        .bind(plate)
        .bind(latest)
        .bind(received_at)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    pub async fn rejections(tx: &mut Tx, pid: i64, plan: &Plan, received_at: Millis) -> Result<()> {
        if plan.rejections.is_empty() {
            return Ok(());
        }
        let r = &plan.rejections;
        // WITH ORDINALITY: stored (and numbered) in the plan's order.
        sqlx::query(
            "INSERT INTO rejections (platform_id, kind, record_id, revision, code, field, message, received_at)
             SELECT $1, kind, record_id, revision, code, field, message, $8
             FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::text[])
               WITH ORDINALITY AS x(kind, record_id, revision, code, field, message, n)
             ORDER BY n",
        )
        .bind(pid)
        .bind(
            r.iter()
                .map(|r| r.kind.map_or("", crate::domain::RecordKind::as_str))
                .collect::<Vec<_>>(),
        )
        .bind(r.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
        .bind(r.iter().map(|r| i64::from(r.revision)).collect::<Vec<_>>())
        .bind(
            r.iter()
                .map(|r| r.rejection.code.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            r.iter()
                .map(|r| r.rejection.field.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            r.iter()
                .map(|r| r.rejection.message.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(received_at)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    pub async fn declarations(
        tx: &mut Tx,
        pid: i64,
        plan: &Plan,
        received_at: Millis,
    ) -> Result<()> {
        if plan.declarations.is_empty() {
            return Ok(());
        }
        let d = &plan.declarations;
        sqlx::query(
            "INSERT INTO declarations (platform_id, declaration_id, revision, content_hash, period, division_code,
               industry, order_count, amount_fen, received_at, arrival)
             SELECT $1, x.declaration_id, x.revision, x.content_hash, x.period, x.division_code, x.industry,
                    x.order_count, x.amount_fen, $10, $10 * 100000 + x.n - 1
             FROM UNNEST($2::text[], $3::int8[], $4::bytea[], $5::text[], $6::text[], $7::text[], $8::int8[],
                         $9::int8[])
               WITH ORDINALITY AS x(declaration_id, revision, content_hash, period, division_code, industry,
                                    order_count, amount_fen, n)
             ON CONFLICT (platform_id, declaration_id) DO UPDATE SET revision = excluded.revision,
               content_hash = excluded.content_hash, period = excluded.period,
               division_code = excluded.division_code, industry = excluded.industry,
               order_count = excluded.order_count, amount_fen = excluded.amount_fen,
               received_at = excluded.received_at, arrival = excluded.arrival",
        )
        .bind(pid)
        .bind(
            d.iter()
                .map(|w| w.record.declaration_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            d.iter()
                .map(|w| i64::from(w.record.revision))
                .collect::<Vec<_>>(),
        )
        .bind(d.iter().map(|w| &w.hash[..]).collect::<Vec<_>>())
        .bind(
            d.iter()
                .map(|w| w.record.period.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            d.iter()
                .map(|w| w.record.division_code.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            d.iter()
                .map(|w| w.record.industry.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            d.iter()
                .map(|w| w.record.figures.order_count)
                .collect::<Vec<_>>(),
        )
        .bind(
            d.iter()
                .map(|w| w.record.figures.amount_fen)
                .collect::<Vec<_>>(),
        )
        .bind(received_at)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    pub async fn accidents(
        tx: &mut Tx,
        pid: i64,
        plan: &Plan,
        sealed: &SealedWrites,
        received_at: Millis,
    ) -> Result<()> {
        if plan.accidents.is_empty() {
            return Ok(());
        }
        let a: Vec<_> = plan.accidents.iter().zip(&sealed.accidents).collect();
        sqlx::query(
            "INSERT INTO accidents (platform_id, report_id, revision, content_hash, worker_id, order_id, occurred_at,
               division_code, injury_kind, description, received_at)
             SELECT $1, x.*, $11
             FROM UNNEST($2::text[], $3::int8[], $4::bytea[], $5::text[], $6::text[], $7::int8[], $8::text[],
                         $9::text[], $10::bytea[])
               AS x(report_id, revision, content_hash, worker_id, order_id, occurred_at, division_code,
                    injury_kind, description)
             ON CONFLICT (platform_id, report_id) DO UPDATE SET revision = excluded.revision,
               content_hash = excluded.content_hash, worker_id = excluded.worker_id, order_id = excluded.order_id,
               occurred_at = excluded.occurred_at, division_code = excluded.division_code,
               injury_kind = excluded.injury_kind, description = excluded.description,
               received_at = excluded.received_at",
        )
        .bind(pid)
        .bind(
            a.iter()
                .map(|(w, _)| w.record.report_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            a.iter()
                .map(|(w, _)| i64::from(w.record.revision))
                .collect::<Vec<_>>(),
        )
        .bind(
            a.iter()
                .map(|(_, s)| s.content_hash.to_vec())
                .collect::<Vec<_>>(),
        )
        .bind(
            a.iter()
                .map(|(w, _)| w.record.worker_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            a.iter()
                .map(|(w, _)| w.record.order_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            a.iter()
                .map(|(w, _)| w.record.occurred_at)
                .collect::<Vec<_>>(),
        )
        .bind(
            a.iter()
                .map(|(w, _)| w.record.division_code.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            a.iter()
                .map(|(w, _)| w.record.injury_kind.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            a.iter()
                .map(|(_, s)| s.description.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(received_at)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    pub async fn statements(tx: &mut Tx, pid: i64, plan: &Plan, received_at: Millis) -> Result<()> {
        if plan.statement_deltas.is_empty() {
            return Ok(());
        }
        let d = &plan.statement_deltas;
        sqlx::query(
            "INSERT INTO volume_statements (platform_id, period, industry, division_code, billable_count, updated_at)
             SELECT $1, x.*, $6 FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int8[])
               AS x(period, industry, division_code, billable_count)
             ON CONFLICT (platform_id, period, industry, division_code) DO UPDATE SET
               billable_count = volume_statements.billable_count + excluded.billable_count,
               updated_at = excluded.updated_at",
        )
        .bind(pid)
        .bind(d.keys().map(|k| k.period.to_string()).collect::<Vec<_>>())
        .bind(d.keys().map(|k| k.industry.as_str()).collect::<Vec<_>>())
        .bind(
            d.keys()
                .map(|k| k.division_code.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(d.values().copied().collect::<Vec<_>>())
        .bind(received_at)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Each changed enrolment's count, and the newest item of each enrolment that got
    /// one (its row at 0 orders if the calls of a group left no change; a day whose
    /// last order moved away keeps its row at 0: it names the day's newest item).
    pub async fn enrolments(tx: &mut Tx, pid: i64, plan: &Plan, newest: &Newest<'_>) -> Result<()> {
        let mut rows: Vec<(&crate::domain::batch::EnrolmentKey, i64, Option<i64>)> = plan
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
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO daily_enrolments (platform_id, day, worker_id, division_code, order_count, latest_item)
             SELECT $1, x.* FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[])
               AS x(day, worker_id, division_code, order_count, latest_item)
             ON CONFLICT (platform_id, day, worker_id, division_code) DO UPDATE SET
               order_count = greatest(daily_enrolments.order_count + excluded.order_count, 0),
               latest_item = coalesce(excluded.latest_item, daily_enrolments.latest_item)",
        )
        .bind(pid)
        .bind(
            rows.iter()
                .map(|(k, _, _)| k.day.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|(k, _, _)| k.worker_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|(k, _, _)| k.division_code.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|(_, d, _)| *d).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, i)| *i).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}
