//! The grant, audit and pull repositories on SQLite: grants and rate limits, the audit
//! log and the journal (the outbox read in seq order, which is commit order: SQLite has one
//! writer, so a seq is never committed after a higher one).

use crate::store::access::RateLimitRow;
use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::{QueryBuilder, Sqlite};

use super::{SqliteStore, db_err};
use crate::domain::audit::{AuditEntry, GENESIS};
use crate::domain::grant::{Grant, Role};
use crate::domain::time::Millis;
use crate::store::access::{AuditQuery, ChainRows, GrantRow, JournalEntry, JournalPage, Person};
use crate::store::rows::{
    AUDIT_COLUMNS, AuditRow, corrupt, entry_of, grant_of, hash32, rate_limit_of,
};
use crate::store::{AuditRepo, Destination, GrantRepo, PullRepo, Result};

#[async_trait]
impl GrantRepo for SqliteStore {
    async fn put_grant(&self, grant: &Grant) -> Result<()> {
        sqlx::query(
            "INSERT INTO grants (identity, role, scope, expires_at, granted_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (identity, role, scope) DO UPDATE SET expires_at = excluded.expires_at, granted_at = excluded.granted_at",
        )
        .bind(&grant.identity)
        .bind(grant.role.as_str())
        .bind(&grant.scope)
        .bind(grant.expires_at)
        .bind(crate::domain::time::now_millis())
        .execute(&mut **self.writer.lock().await)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn grants(&self, identity: &str) -> Result<Vec<Grant>> {
        let rows: Vec<(String, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT identity, role, scope, expires_at FROM grants WHERE identity = ?1",
        )
        .bind(identity)
        .fetch_all(&self.reader)
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
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO grants (identity, role, scope, expires_at, granted_at, granted_by) ",
        );
        q.push_values(grants, |mut b, g| {
            b.push_bind(&g.identity)
                .push_bind(g.role.as_str())
                .push_bind(&g.scope)
                .push_bind(g.expires_at)
                .push_bind(now)
                .push_bind(by);
        });
        q.push(
            " ON CONFLICT (identity, role, scope) DO UPDATE SET expires_at = excluded.expires_at,
              granted_at = excluded.granted_at, granted_by = excluded.granted_by",
        );
        q.build()
            .persistent(false)
            .execute(&mut **self.writer.lock().await)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn revoke_grants(&self, identity: &str, role: Role, scopes: &[String]) -> Result<u64> {
        let scopes = serde_json::to_string(scopes).map_err(|e| corrupt(&e.to_string()))?;
        let done = sqlx::query(
            "DELETE FROM grants WHERE identity = ?1 AND role = ?2
               AND (json_array_length(?3) = 0 OR scope IN (SELECT value FROM json_each(?3)))",
        )
        .bind(identity)
        .bind(role.as_str())
        .bind(scopes)
        .execute(&mut **self.writer.lock().await)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn list_grants(&self, identity: Option<&str>) -> Result<Vec<GrantRow>> {
        let rows: Vec<(String, String, String, Option<i64>, i64, String)> = sqlx::query_as(
            "SELECT identity, role, scope, expires_at, granted_at, granted_by FROM grants
             WHERE ?1 IS NULL OR identity = ?1 ORDER BY identity, role, scope",
        )
        .bind(identity)
        .fetch_all(&self.reader)
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
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (identity) DO UPDATE SET calls_per_second = ?2,
               records_per_second = ?3, set_by = ?4, set_at = ?5",
        )
        .bind(&row.identity)
        .bind(i64::from(row.calls_per_second))
        .bind(i64::from(row.records_per_second))
        .bind(&row.set_by)
        .bind(row.set_at)
        .execute(&mut **self.writer.lock().await)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn clear_rate_limit(&self, identity: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM rate_limits WHERE identity = ?1")
            .bind(identity)
            .execute(&mut **self.writer.lock().await)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn rate_limits(&self) -> Result<Vec<RateLimitRow>> {
        let rows: Vec<(String, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT identity, calls_per_second, records_per_second, set_by, set_at
             FROM rate_limits ORDER BY identity",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.into_iter().map(rate_limit_of).collect()
    }
}

#[async_trait]
impl AuditRepo for SqliteStore {
    async fn audit_head(&self) -> Result<(i64, [u8; 32])> {
        chain_head(&mut **self.writer.lock().await).await
    }

    async fn append_audit(&self, entries: &ChainRows) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        insert_chain(&mut tx, entries).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn begin_audit(&self) -> Result<Box<dyn crate::store::AuditTx>> {
        let tx = self.write_tx().await?;
        Ok(Box::new(SqliteAudit { tx }))
    }

    async fn audit_anchor(&self) -> Result<(i64, [u8; 32])> {
        let row: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, hash FROM audit_anchor WHERE id = 1")
                .fetch_optional(&self.reader)
                .await
                .map_err(db_err)?;
        match row {
            Some((seq, hash)) => Ok((seq, hash32(&hash)?)),
            None => Ok((0, GENESIS)),
        }
    }

    async fn audit_chain(&self, after: i64, limit: u32) -> Result<ChainRows> {
        let rows: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.into_iter().map(entry_of).collect()
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let rows: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log
             WHERE seq > ?1 AND (?2 IS NULL OR identity = ?2) AND (?3 IS NULL OR at >= ?3)
               AND (?4 IS NULL OR at < ?4) AND (?5 IS NULL OR action = ?5)
             ORDER BY seq LIMIT ?6"
        ))
        .bind(query.after)
        .bind(query.identity.as_deref())
        .bind(query.from)
        .bind(query.to)
        .bind(query.action.as_deref())
        .bind(query.limit)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(|r| entry_of(r).map(|(e, _)| e))
            .collect()
    }

    async fn prune_audit(&self, before: Millis) -> Result<Option<(u64, i64, [u8; 32])>> {
        let mut tx = self.write_tx().await?;
        // The newest entry always stays, so the next append still has its head.
        let last: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, hash FROM audit_log
             WHERE at < ?1 AND seq < (SELECT max(seq) FROM audit_log)
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
        let done = sqlx::query("DELETE FROM audit_log WHERE seq <= ?1")
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?1, ?2)
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
impl PullRepo for SqliteStore {
    async fn journal_end(&self) -> Result<i64> {
        let (end,): (i64,) = sqlx::query_as("SELECT coalesce(max(seq), 0) FROM outbox")
            .fetch_one(&self.reader)
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
        let upto = after.saturating_add(i64::from(scan.max(1)));
        let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, record_key, payload FROM outbox
             WHERE seq > ?1 AND seq <= ?2 AND destination = ?3 ORDER BY seq",
        )
        .bind(after)
        .bind(upto)
        .bind(destination.as_str())
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        let end = self.journal_end().await?;
        Ok(JournalPage {
            entries: rows
                .into_iter()
                .map(|(seq, record_key, payload)| {
                    Ok(JournalEntry {
                        seq,
                        record_key,
                        payload,
                    })
                })
                .collect::<Result<_>>()?,
            scanned_to: upto.min(end).max(after),
        })
    }

    async fn persons(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), Person>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let json = serde_json::to_string(keys).map_err(|e| corrupt(&e.to_string()))?;
        let rows: Vec<(String, String, String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT p.uscc, w.worker_id, w.id_type, w.id_number, w.name
             FROM json_each(?1) AS k
             JOIN platforms AS p ON p.uscc = json_extract(k.value, '$[0]')
             JOIN workers AS w ON w.platform_id = p.id AND w.worker_id = json_extract(k.value, '$[1]')",
        )
        .bind(json)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(|(uscc, worker_id, id_type, id_number, name)| {
                Ok((
                    (uscc, worker_id),
                    Person {
                        id_type,
                        id_number,
                        name,
                    },
                ))
            })
            .collect()
    }
}

/// The newest entry's seq and hash, or the anchor (0 and genesis when empty), as the
/// connection (its transaction) sees them.
pub(super) async fn chain_head(conn: &mut sqlx::SqliteConnection) -> Result<(i64, [u8; 32])> {
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
    if let Some((seq, hash)) = row {
        return Ok((seq, hash32(&hash)?));
    }
    let anchor: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM audit_anchor WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
    match anchor {
        Some((seq, hash)) => Ok((seq, hash32(&hash)?)),
        None => Ok((0, GENESIS)),
    }
}

/// Inserts chained entries (their seq and hash computed from the head).
pub(super) async fn insert_chain(
    conn: &mut sqlx::SqliteConnection,
    entries: &ChainRows,
) -> Result<()> {
    for chunk in entries.chunks(super::ROWS_PER_STATEMENT / 10) {
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("INSERT INTO audit_log ({AUDIT_COLUMNS}) "));
        q.push_values(chunk, |mut b, (e, hash)| {
            b.push_bind(e.seq)
                .push_bind(e.at)
                .push_bind(&e.identity)
                .push_bind(&e.role)
                .push_bind(&e.action)
                .push_bind(&e.scope)
                .push_bind(e.records)
                .push_bind(&e.outcome)
                .push_bind(&e.trace_id)
                .push_bind(hash.as_slice());
        });
        q.build()
            .persistent(super::kept(chunk.len(), super::ROWS_PER_STATEMENT / 10))
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// A writer transaction that appends audit entries.
struct SqliteAudit {
    tx: super::WriteTx,
}

#[async_trait]
impl crate::store::AuditTx for SqliteAudit {
    async fn audit_head(&mut self) -> Result<(i64, [u8; 32])> {
        chain_head(&mut self.tx).await
    }

    async fn append_audit(&mut self, entries: &ChainRows) -> Result<()> {
        insert_chain(&mut self.tx, entries).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await.map_err(db_err)
    }
}
