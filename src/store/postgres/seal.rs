//! [`SealedRepo`] on PostgreSQL: personal data as stored, read in pages by primary key
//! and written back a page per transaction, for `pii::reseal`; one replica re-seals at
//! a time (a session advisory lock, released when its connection closes, so a replica
//! that dies half-way leaves the work to the next, which resumes it).

use async_trait::async_trait;
use sqlx::Connection as _;

use super::{PgStore, RESEAL_LOCK};
use crate::store::rows::db_err;
use crate::store::{
    JobLock, Result, Sealed, SealedAccidentRow, SealedRepo, SealedWorkerRow, StoredPayload,
};

impl PgStore {
    /// The rows of `sql` after the key `after` (platform id, record id), at most
    /// `limit`: `sql` takes the key as $1 and $2 and the limit as $3.
    async fn page_after<T>(
        &self,
        sql: &'static str,
        after: &(i64, String),
        limit: u32,
    ) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        sqlx::query_as(sql)
            .bind(after.0)
            .bind(&after.1)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)
    }
}

#[async_trait]
impl SealedRepo for PgStore {
    async fn lock_resealing(&self) -> Result<JobLock> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?.detach();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(RESEAL_LOCK)
            .execute(&mut conn)
            .await
            .map_err(db_err)?;
        Ok(JobLock::holding(Box::new(conn)))
    }

    async fn sealed_with(&self) -> Result<Option<String>> {
        let state: Option<(String,)> =
            sqlx::query_as("SELECT sealed_with FROM pii_state WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
        Ok(state.map(|(k,)| k))
    }

    async fn set_sealed_with(&self, key: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO pii_state (id, sealed_with) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET sealed_with = excluded.sealed_with",
        )
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn sealed_workers(
        &self,
        after: &(i64, String),
        limit: u32,
    ) -> Result<Vec<SealedWorkerRow>> {
        self.page_after(
            "SELECT platform_id, worker_id, id_number, name, mobile, birth_date, content_hash,
                    coalesce(id_number_hash, '\\x'::bytea) AS id_number_hash
             FROM workers WHERE (platform_id, worker_id) > ($1, $2)
             ORDER BY platform_id, worker_id LIMIT $3",
            after,
            limit,
        )
        .await
    }

    async fn replace_sealed_workers(&self, rows: &[(Sealed, SealedWorkerRow)]) -> Result<()> {
        let read: Vec<&[u8]> = rows.iter().map(|(r, _)| r.as_slice()).collect();
        let r: Vec<&SealedWorkerRow> = rows.iter().map(|(_, w)| w).collect();
        sqlx::query(
            "UPDATE workers w SET id_number = x.id_number, name = x.name, mobile = x.mobile,
               id_number_hash = x.id_number_hash, birth_date = x.birth_date, content_hash = x.content_hash
             FROM UNNEST($1::int8[], $2::text[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[],
                         $7::bytea[], $8::bytea[], $9::bytea[])
               AS x(platform_id, worker_id, id_number, name, mobile, id_number_hash, birth_date, content_hash,
                    read_id_number)
             WHERE w.platform_id = x.platform_id AND w.worker_id = x.worker_id
               AND w.id_number = x.read_id_number",
        )
        .bind(r.iter().map(|r| r.platform_id).collect::<Vec<_>>())
        .bind(r.iter().map(|r| r.worker_id.as_str()).collect::<Vec<_>>())
        .bind(r.iter().map(|r| r.id_number.as_slice()).collect::<Vec<_>>())
        .bind(r.iter().map(|r| r.name.as_slice()).collect::<Vec<_>>())
        .bind(r.iter().map(|r| r.mobile.as_slice()).collect::<Vec<_>>())
        .bind(
            r.iter()
                .map(|r| r.id_number_hash.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(r.iter().map(|r| r.birth_date.as_deref()).collect::<Vec<_>>())
        .bind(
            r.iter()
                .map(|r| r.content_hash.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(read)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn sealed_accidents(
        &self,
        after: &(i64, String),
        limit: u32,
    ) -> Result<Vec<SealedAccidentRow>> {
        self.page_after(
            "SELECT platform_id, report_id, description, content_hash
             FROM accidents WHERE (platform_id, report_id) > ($1, $2)
             ORDER BY platform_id, report_id LIMIT $3",
            after,
            limit,
        )
        .await
    }

    async fn replace_sealed_accidents(&self, rows: &[(Sealed, SealedAccidentRow)]) -> Result<()> {
        let read: Vec<&[u8]> = rows.iter().map(|(r, _)| r.as_slice()).collect();
        let r: Vec<&SealedAccidentRow> = rows.iter().map(|(_, a)| a).collect();
        sqlx::query(
            "UPDATE accidents a SET description = x.description, content_hash = x.content_hash
             FROM UNNEST($1::int8[], $2::text[], $3::bytea[], $4::bytea[], $5::bytea[])
               AS x(platform_id, report_id, description, content_hash, read_description)
             WHERE a.platform_id = x.platform_id AND a.report_id = x.report_id
               AND a.description = x.read_description",
        )
        .bind(r.iter().map(|r| r.platform_id).collect::<Vec<_>>())
        .bind(r.iter().map(|r| r.report_id.as_str()).collect::<Vec<_>>())
        .bind(
            r.iter()
                .map(|r| r.description.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(
            r.iter()
                .map(|r| r.content_hash.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(read)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn stored_payloads(&self, after: i64, limit: u32) -> Result<Vec<StoredPayload>> {
        sqlx::query_as(
            "SELECT seq, destination, record_key, payload FROM outbox
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)
    }

    async fn replace_payloads(&self, rows: &[(i64, Sealed)]) -> Result<()> {
        sqlx::query(
            "UPDATE outbox o SET payload = x.payload
             FROM UNNEST($1::int8[], $2::bytea[]) AS x(seq, payload) WHERE o.seq = x.seq",
        )
        .bind(rows.iter().map(|(s, _)| *s).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, p)| p.as_slice()).collect::<Vec<_>>())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn purge_old_images(&self, rebuild: bool) -> Result<()> {
        // Replaced values linger as dead row versions until VACUUM frees them; VACUUM
        // FULL rewrites the tables (and locks them while it runs), for values that
        // were ever stored in clear.
        let sql = if rebuild {
            "VACUUM FULL workers, accidents, outbox"
        } else {
            "VACUUM workers, accidents, outbox"
        };
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        sqlx::query(sql).execute(&mut *conn).await.map_err(db_err)?;
        conn.ping().await.map_err(db_err)?;
        Ok(())
    }
}
