//! The grant, audit and pull repositories on PostgreSQL. The audit chain's appenders
//! lock the `heads` row before reading the head, so entries of every replica form one
//! chain; the journal is read by position (`outbox.pos`, given in commit order), so a
//! cursor never passes an item that commits later.

use std::collections::HashMap;

use async_trait::async_trait;

use super::{PgStore, Tx, lock_heads};
use crate::domain::audit::{AuditEntry, GENESIS};
use crate::domain::grant::{Grant, Role};
use crate::domain::time::Millis;
use crate::store::access::{
    AuditQuery, ChainRows, GrantRow, JournalEntry, JournalPage, Person, RateLimitRow,
};
use crate::store::rows::{
    AUDIT_COLUMNS, AuditRow, db_err, entry_of, grant_of, hash32, rate_limit_of,
};
use crate::store::{AuditRepo, Destination, GrantRepo, PullRepo, Result};

#[async_trait]
impl GrantRepo for PgStore {
    async fn put_grant(&self, grant: &Grant) -> Result<()> {
        sqlx::query(
            "INSERT INTO grants (identity, role, scope, expires_at, granted_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (identity, role, scope) DO UPDATE SET expires_at = excluded.expires_at, granted_at = excluded.granted_at",
        )
        .bind(&grant.identity)
        .bind(grant.role.as_str())
        .bind(&grant.scope)
        .bind(grant.expires_at)
        .bind(crate::domain::time::now_millis())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn grants(&self, identity: &str) -> Result<Vec<Grant>> {
        let rows: Vec<(String, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT identity, role, scope, expires_at FROM grants WHERE identity = $1",
        )
        .bind(identity)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(|(identity, role, scope, expires_at)| grant_of(identity, &role, scope, expires_at))
            .collect()
    }

    async fn put_grants(&self, grants: &[Grant], by: &str, now: Millis) -> Result<()> {
        if grants.is_empty() {
            return Ok(());
        }
        // One row per key (the last wins), as a multi-row upsert may not touch a row twice.
        let mut last: HashMap<(&str, &str, &str), Option<i64>> = HashMap::new();
        let mut keys = Vec::new();
        for g in grants {
            let key = (g.identity.as_str(), g.role.as_str(), g.scope.as_str());
            if last.insert(key, g.expires_at).is_none() {
                keys.push(key);
            }
        }
        sqlx::query(
            "INSERT INTO grants (identity, role, scope, expires_at, granted_at, granted_by)
             SELECT x.*, $5, $6 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[])
               AS x(identity, role, scope, expires_at)
             ON CONFLICT (identity, role, scope) DO UPDATE SET expires_at = excluded.expires_at,
               granted_at = excluded.granted_at, granted_by = excluded.granted_by",
        )
        .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| last[k]).collect::<Vec<_>>())
        .bind(now)
        .bind(by)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn revoke_grants(&self, identity: &str, role: Role, scopes: &[String]) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM grants WHERE identity = $1 AND role = $2
               AND (cardinality($3::text[]) = 0 OR scope = ANY($3))",
        )
        .bind(identity)
        .bind(role.as_str())
        .bind(scopes)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn list_grants(&self, identity: Option<&str>) -> Result<Vec<GrantRow>> {
        let rows: Vec<(String, String, String, Option<i64>, i64, String)> = sqlx::query_as(
            "SELECT identity, role, scope, expires_at, granted_at, granted_by FROM grants
             WHERE $1::text IS NULL OR identity = $1 ORDER BY identity, role, scope",
        )
        .bind(identity)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(
                |(identity, role, scope, expires_at, granted_at, granted_by)| {
                    Ok(GrantRow {
                        grant: grant_of(identity, &role, scope, expires_at)?,
                        granted_at,
                        granted_by,
                    })
                },
            )
            .collect()
    }

    async fn put_rate_limit(&self, row: &RateLimitRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO rate_limits (identity, calls_per_second, records_per_second, set_by, set_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (identity) DO UPDATE SET calls_per_second = $2,
               records_per_second = $3, set_by = $4, set_at = $5",
        )
        .bind(&row.identity)
        .bind(i64::from(row.calls_per_second))
        .bind(i64::from(row.records_per_second))
        .bind(&row.set_by)
        .bind(row.set_at)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn clear_rate_limit(&self, identity: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM rate_limits WHERE identity = $1")
            .bind(identity)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn rate_limits(&self) -> Result<Vec<RateLimitRow>> {
        let rows: Vec<(String, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT identity, calls_per_second, records_per_second, set_by, set_at
             FROM rate_limits ORDER BY identity",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.into_iter().map(rate_limit_of).collect()
    }
}

#[async_trait]
impl AuditRepo for PgStore {
    async fn audit_head(&self) -> Result<(i64, [u8; 32])> {
        let mut tx = self.begin().await?;
        chain_head(&mut tx).await
    }

    async fn append_audit(&self, entries: &ChainRows) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        lock_heads(&mut tx).await?;
        insert_chain(&mut tx, entries).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn begin_audit(&self) -> Result<Box<dyn crate::store::AuditTx>> {
        let tx = self.begin().await?;
        Ok(Box::new(PgAudit { tx, locked: false }))
    }

    async fn audit_anchor(&self) -> Result<(i64, [u8; 32])> {
        let row: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, hash FROM audit_anchor WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
        match row {
            Some((seq, hash)) => Ok((seq, hash32(&hash)?)),
            None => Ok((0, GENESIS)),
        }
    }

    async fn audit_chain(&self, after: i64, limit: u32) -> Result<ChainRows> {
        let rows: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.into_iter().map(entry_of).collect()
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let rows: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log
             WHERE seq > $1 AND ($2::text IS NULL OR identity = $2) AND ($3::int8 IS NULL OR at >= $3)
               AND ($4::int8 IS NULL OR at < $4) AND ($5::text IS NULL OR action = $5)
             ORDER BY seq LIMIT $6"
        ))
        .bind(query.after)
        .bind(query.identity.as_deref())
        .bind(query.from)
        .bind(query.to)
        .bind(query.action.as_deref())
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(|r| entry_of(r).map(|(e, _)| e))
            .collect()
    }

    async fn prune_audit(&self, before: Millis) -> Result<Option<(u64, i64, [u8; 32])>> {
        let mut tx = self.begin().await?;
        // One pruner at a time, and never while an appender is between head and commit.
        lock_heads(&mut tx).await?;
        let last: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, hash FROM audit_log
             WHERE at < $1 AND seq < (SELECT max(seq) FROM audit_log)
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(before)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some((seq, hash)) = last else {
            return Ok(None);
        };
        let hash = hash32(&hash)?;
        let done = sqlx::query("DELETE FROM audit_log WHERE seq <= $1")
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )
        .bind(seq)
        .bind(hash.as_slice())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some((done.rows_affected(), seq, hash)))
    }
}

#[async_trait]
impl PullRepo for PgStore {
    async fn journal_end(&self) -> Result<i64> {
        let (end,): (i64,) = sqlx::query_as("SELECT journal_pos FROM heads WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(end)
    }

    async fn journal(
        &self,
        destination: Destination,
        after: i64,
        scan: u32,
    ) -> Result<JournalPage> {
        // Every position up to the committed end is committed (positions are given in
        // commit order), so a page never has a hole that fills in later.
        let end = self.journal_end().await?;
        let upto = after.saturating_add(i64::from(scan.max(1))).min(end);
        let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
            "SELECT pos, record_key, payload FROM outbox
             WHERE pos > $1 AND pos <= $2 AND destination = $3 ORDER BY pos",
        )
        .bind(after)
        .bind(upto)
        .bind(destination.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(JournalPage {
            entries: rows
                .into_iter()
                .map(|(seq, record_key, payload)| JournalEntry {
                    seq,
                    record_key,
                    payload,
                })
                .collect(),
            scanned_to: upto.max(after),
        })
    }

    async fn persons(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), Person>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, String, String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT p.uscc, w.worker_id, w.id_type, w.id_number, w.name
             FROM (SELECT DISTINCT * FROM UNNEST($1::text[], $2::text[])) k(uscc, worker_id)
             JOIN platforms p ON p.uscc = k.uscc
             JOIN workers w ON w.platform_id = p.id AND w.worker_id = k.worker_id",
        )
        .bind(keys.iter().map(|k| k.0.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(rows
            .into_iter()
            .map(|(uscc, worker_id, id_type, id_number, name)| {
                (
                    (uscc, worker_id),
                    Person {
                        id_type,
                        id_number,
                        name,
                    },
                )
            })
            .collect())
    }
}

/// The newest entry's seq and hash, or the anchor (0 and genesis when empty), as the
/// transaction sees them.
pub(super) async fn chain_head(tx: &mut Tx) -> Result<(i64, [u8; 32])> {
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?;
    if let Some((seq, hash)) = row {
        return Ok((seq, hash32(&hash)?));
    }
    let anchor: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM audit_anchor WHERE id = 1")
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err)?;
    match anchor {
        Some((seq, hash)) => Ok((seq, hash32(&hash)?)),
        None => Ok((0, GENESIS)),
    }
}

/// Inserts chained entries (their seq and hash computed from the head).
pub(super) async fn insert_chain(tx: &mut Tx, entries: &ChainRows) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let e = entries;
    sqlx::query(&format!(
        "INSERT INTO audit_log ({AUDIT_COLUMNS})
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
                              $7::int8[], $8::text[], $9::text[], $10::bytea[])"
    ))
    .bind(e.iter().map(|(e, _)| e.seq).collect::<Vec<_>>())
    .bind(e.iter().map(|(e, _)| e.at).collect::<Vec<_>>())
    .bind(e.iter().map(|(e, _)| e.identity.as_str()).collect::<Vec<_>>())
    .bind(e.iter().map(|(e, _)| e.role.as_str()).collect::<Vec<_>>())
    .bind(e.iter().map(|(e, _)| e.action.as_str()).collect::<Vec<_>>())
    .bind(e.iter().map(|(e, _)| e.scope.as_str()).collect::<Vec<_>>())
    .bind(e.iter().map(|(e, _)| e.records).collect::<Vec<_>>())
    .bind(e.iter().map(|(e, _)| e.outcome.as_str()).collect::<Vec<_>>())
    .bind(e.iter().map(|(e, _)| e.trace_id.as_str()).collect::<Vec<_>>())
    .bind(e.iter().map(|(_, h)| h.as_slice()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// A transaction that appends audit entries: it locks `heads` before reading the head.
struct PgAudit {
    tx: Tx,
    locked: bool,
}

#[async_trait]
impl crate::store::AuditTx for PgAudit {
    async fn audit_head(&mut self) -> Result<(i64, [u8; 32])> {
        if !self.locked {
            lock_heads(&mut self.tx).await?;
            self.locked = true;
        }
        chain_head(&mut self.tx).await
    }

    async fn append_audit(&mut self, entries: &ChainRows) -> Result<()> {
        insert_chain(&mut self.tx, entries).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await.map_err(db_err)
    }
}
