//! [`SealedRepo`] on SQLite: personal data as stored, read in pages by primary key and
//! written back a page per transaction, for `pii::reseal`. Values are sealed above
//! the store; these move bytes. `pii_state` records the key everything was last
//! brought under.

use async_trait::async_trait;

use super::{SqliteStore, db_err};
use crate::store::{Result, Sealed, SealedAccidentRow, SealedRepo, SealedWorkerRow, StoredPayload};

impl SqliteStore {
    /// The rows of `sql` after the key `after` (platform id, record id), at most
    /// `limit`: `sql` takes the key as ?1 and ?2 and the limit as ?3.
    async fn page_after<T>(
        &self,
        sql: &'static str,
        after: &(i64, String),
        limit: u32,
    ) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
    {
        sqlx::query_as(sql)
            .bind(after.0)
            .bind(&after.1)
            .bind(i64::from(limit))
            .fetch_all(&mut **self.writer.lock().await)
            .await
            .map_err(db_err)
    }
}

#[async_trait]
impl SealedRepo for SqliteStore {
    async fn lock_resealing(&self) -> Result<crate::store::JobLock> {
        Ok(crate::store::JobLock::none())
    }

    async fn sealed_with(&self) -> Result<Option<String>> {
        let state: Option<(String,)> =
            sqlx::query_as("SELECT sealed_with FROM pii_state WHERE id = 1")
                .fetch_optional(&mut **self.writer.lock().await)
                .await
                .map_err(db_err)?;
        Ok(state.map(|(k,)| k))
    }

    async fn set_sealed_with(&self, key: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO pii_state (id, sealed_with) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET sealed_with = excluded.sealed_with",
        )
        .bind(key)
        .execute(&mut **self.writer.lock().await)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn sealed_workers(
        &self,
        after: &(i64, String),
        limit: u32,
    ) -> Result<Vec<SealedWorkerRow>> {
        // CAST: a database written before sealing holds text.
        self.page_after(
            "SELECT platform_id, worker_id, CAST(id_number AS BLOB) AS id_number,
                    CAST(name AS BLOB) AS name, CAST(mobile AS BLOB) AS mobile,
                    CAST(birth_date AS BLOB) AS birth_date, content_hash,
                    coalesce(id_number_hash, x'') AS id_number_hash
             FROM workers WHERE (platform_id, worker_id) > (?1, ?2)
             ORDER BY platform_id, worker_id LIMIT ?3",
            after,
            limit,
        )
        .await
    }

    async fn replace_sealed_workers(&self, rows: &[(Sealed, SealedWorkerRow)]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for (read, row) in rows {
            sqlx::query(
                "UPDATE workers SET id_number = ?3, name = ?4, mobile = ?5, id_number_hash = ?6,
                   birth_date = ?7, content_hash = ?8
                 WHERE platform_id = ?1 AND worker_id = ?2 AND CAST(id_number AS BLOB) = ?9",
            )
            .bind(row.platform_id)
            .bind(&row.worker_id)
            .bind(&row.id_number)
            .bind(&row.name)
            .bind(&row.mobile)
            .bind(&row.id_number_hash)
            .bind(&row.birth_date)
            .bind(&row.content_hash)
            .bind(read)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn sealed_accidents(
        &self,
        after: &(i64, String),
        limit: u32,
    ) -> Result<Vec<SealedAccidentRow>> {
        self.page_after(
            "SELECT platform_id, report_id, CAST(description AS BLOB) AS description, content_hash
             FROM accidents WHERE (platform_id, report_id) > (?1, ?2)
             ORDER BY platform_id, report_id LIMIT ?3",
            after,
            limit,
        )
        .await
    }

    async fn replace_sealed_accidents(&self, rows: &[(Sealed, SealedAccidentRow)]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for (read, row) in rows {
            sqlx::query(
                "UPDATE accidents SET description = ?3, content_hash = ?4
                 WHERE platform_id = ?1 AND report_id = ?2 AND CAST(description AS BLOB) = ?5",
            )
            .bind(row.platform_id)
            .bind(&row.report_id)
            .bind(&row.description)
            .bind(&row.content_hash)
            .bind(read)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn stored_payloads(&self, after: i64, limit: u32) -> Result<Vec<StoredPayload>> {
        // Pages by primary key: each page costs the same however large the outbox is.
        sqlx::query_as(
            "SELECT seq, destination, record_key, payload FROM outbox
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&mut **self.writer.lock().await)
        .await
        .map_err(db_err)
    }

    async fn replace_payloads(&self, rows: &[(i64, Sealed)]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for (seq, payload) in rows {
            sqlx::query("UPDATE outbox SET payload = ?2 WHERE seq = ?1")
                .bind(seq)
                .bind(payload)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn purge_old_images(&self, rebuild: bool) -> Result<()> {
        // Old page images must not survive in the write-ahead log; values stored in
        // clear may linger in pages freed before secure_delete was on: VACUUM
        // rebuilds the file.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut **self.writer.lock().await)
            .await
            .map_err(db_err)?;
        if rebuild {
            sqlx::query("VACUUM")
                .execute(&mut **self.writer.lock().await)
                .await
                .map_err(db_err)?;
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut **self.writer.lock().await)
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }
}
