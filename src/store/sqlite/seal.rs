//! Bringing personal data under the current key: values stored in clear (databases
//! written before sealing) or sealed under an older key are sealed again, in batches,
//! when the store opens. `pii_state` records the key everything was last brought
//! under, so an unchanged key costs one query at start.

use super::{
    AAD_BIRTH_DATE, AAD_DESCRIPTION, AAD_ID_NUMBER, AAD_MOBILE, AAD_NAME, AAD_PAYLOAD, SqliteStore,
    carries_personal_data, corrupt, db_err, row_of, sealed_err,
};
use crate::store::Destination;
use crate::store::Result;
use crate::vault::Vault;

const BATCH: i64 = 500;
/// Outbox rows read per page (most are orders and enrolments, which hold no personal
/// data and are only looked at).
const PAYLOAD_PAGE: i64 = 5000;

/// Logs how far a long re-sealing is, at most every 10 seconds.
struct Progress {
    what: &'static str,
    end: i64,
    started: std::time::Instant,
    last: std::time::Instant,
}

impl Progress {
    fn new(what: &'static str, end: i64) -> Self {
        let now = std::time::Instant::now();
        Self {
            what,
            end,
            started: now,
            last: now,
        }
    }

    fn at(&mut self, position: i64, changed: u64) {
        if self.last.elapsed() >= std::time::Duration::from_secs(10) {
            self.last = std::time::Instant::now();
            tracing::info!(
                what = self.what,
                position,
                of = self.end,
                resealed = changed,
                elapsed_s = self.started.elapsed().as_secs(),
                "re-sealing personal data under the current key"
            );
        }
    }

    fn done(&self, changed: u64) {
        tracing::info!(
            what = self.what,
            resealed = changed,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "re-sealed"
        );
    }
}

/// A stored value in clear, whether it was sealed or not.
fn clear_of(vault: &Vault, value: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    match Vault::key_id(value) {
        Some(_) => vault.open(value, aad).map_err(sealed_err),
        None => Ok(value.to_vec()),
    }
}

/// What a stored value becomes: None when it is already sealed under the current key.
fn resealed(vault: &Vault, value: &[u8], aad: &[u8]) -> Result<Option<Vec<u8>>> {
    if vault.is_current(value) {
        return Ok(None);
    }
    Ok(Some(vault.seal(&clear_of(vault, value, aad)?, aad)))
}

/// A stored content hash as it must be stored now: masked, and masked once (a row
/// from before sealing has a plain one).
fn masked_hash(vault: &Vault, row: &[u8], stored: &[u8], was_clear: bool) -> Result<[u8; 32]> {
    let hash: [u8; 32] = stored
        .try_into()
        .map_err(|_| corrupt("content_hash is not 32 bytes"))?;
    Ok(if was_clear {
        vault.mask_hash(row, &hash)
    } else {
        hash
    })
}

impl SqliteStore {
    pub(super) async fn reseal(&self) -> Result<()> {
        let current = self.vault.current().to_string();
        let state: Option<(String,)> =
            sqlx::query_as("SELECT sealed_with FROM pii_state WHERE id = 1")
                .fetch_optional(&mut **self.writer.lock().await)
                .await
                .map_err(db_err)?;
        if state.is_some_and(|(k,)| k == current) {
            return Ok(());
        }
        tracing::info!(
            key = %current,
            "bringing personal data under the current key before serving (progress is logged every 10 s)"
        );
        let (workers, clear_workers) = self.reseal_workers().await?;
        let (accidents, clear_accidents) = self.reseal_accidents().await?;
        let (payloads, clear_payloads) = self.reseal_payloads().await?;
        sqlx::query(
            "INSERT INTO pii_state (id, sealed_with) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET sealed_with = excluded.sealed_with",
        )
        .bind(&current)
        .execute(&mut **self.writer.lock().await)
        .await
        .map_err(db_err)?;
        // Old page images must not survive in the write-ahead log either, nor clear
        // values in pages freed before secure_delete was on: rebuild the file once.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut **self.writer.lock().await)
            .await
            .map_err(db_err)?;
        if clear_workers + clear_accidents + clear_payloads > 0 {
            sqlx::query("VACUUM")
                .execute(&mut **self.writer.lock().await)
                .await
                .map_err(db_err)?;
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut **self.writer.lock().await)
                .await
                .map_err(db_err)?;
        }
        tracing::info!(
            key = %current,
            workers,
            accidents,
            payloads,
            "personal data sealed under the current key; keys no longer current may be removed"
        );
        Ok(())
    }

    /// Returns (rows changed, rows that were in clear).
    async fn reseal_workers(&self) -> Result<(u64, u64)> {
        type Row = (
            i64,
            String,
            Vec<u8>,
            Vec<u8>,
            Vec<u8>,
            Option<Vec<u8>>,
            Vec<u8>,
        );
        let mut after = (i64::MIN, String::new());
        let (mut changed, mut clear) = (0, 0);
        loop {
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT platform_id, worker_id, CAST(id_number AS BLOB), CAST(name AS BLOB),
                        CAST(mobile AS BLOB), CAST(birth_date AS BLOB), content_hash
                 FROM workers WHERE (platform_id, worker_id) > (?1, ?2)
                 ORDER BY platform_id, worker_id LIMIT ?3",
            )
            .bind(after.0)
            .bind(&after.1)
            .bind(BATCH)
            .fetch_all(&mut **self.writer.lock().await)
            .await
            .map_err(db_err)?;
            let Some(last) = rows.last() else {
                return Ok((changed, clear));
            };
            after = (last.0, last.1.clone());
            let mut tx = self.write_tx().await?;
            for (pid, worker_id, id_number, name, mobile, birth_date, hash) in rows {
                let new_id = resealed(&self.vault, &id_number, AAD_ID_NUMBER)?;
                let new_name = resealed(&self.vault, &name, AAD_NAME)?;
                let new_mobile = resealed(&self.vault, &mobile, AAD_MOBILE)?;
                let new_birth = match &birth_date {
                    Some(b) => resealed(&self.vault, b, AAD_BIRTH_DATE)?,
                    None => None,
                };
                if new_id.is_none()
                    && new_name.is_none()
                    && new_mobile.is_none()
                    && new_birth.is_none()
                {
                    continue;
                }
                // A row from before sealing has a plain content hash: mask it too.
                let was_clear = Vault::key_id(&id_number).is_none();
                clear += u64::from(was_clear);
                let hash = masked_hash(&self.vault, &row_of(pid, &worker_id), &hash, was_clear)?;
                let clear_id = clear_of(&self.vault, &id_number, AAD_ID_NUMBER)?;
                sqlx::query(
                    "UPDATE workers SET id_number = ?3, name = ?4, mobile = ?5, id_number_hash = ?6,
                       birth_date = ?7, content_hash = ?8
                     WHERE platform_id = ?1 AND worker_id = ?2",
                )
                .bind(pid)
                .bind(&worker_id)
                .bind(new_id.unwrap_or(id_number))
                .bind(new_name.unwrap_or(name))
                .bind(new_mobile.unwrap_or(mobile))
                .bind(self.vault.lookup_hash(&clear_id).to_vec())
                .bind(new_birth.or(birth_date))
                .bind(hash.to_vec())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                changed += 1;
            }
            tx.commit().await.map_err(db_err)?;
        }
    }

    /// Returns (rows changed, rows that were in clear).
    async fn reseal_accidents(&self) -> Result<(u64, u64)> {
        let mut after = (i64::MIN, String::new());
        let (mut changed, mut clear) = (0, 0);
        loop {
            let rows: Vec<(i64, String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
                "SELECT platform_id, report_id, CAST(description AS BLOB), content_hash FROM accidents
                 WHERE (platform_id, report_id) > (?1, ?2)
                 ORDER BY platform_id, report_id LIMIT ?3",
            )
            .bind(after.0)
            .bind(&after.1)
            .bind(BATCH)
            .fetch_all(&mut **self.writer.lock().await)
            .await
            .map_err(db_err)?;
            let Some(last) = rows.last() else {
                return Ok((changed, clear));
            };
            after = (last.0, last.1.clone());
            let mut tx = self.write_tx().await?;
            for (pid, report_id, description, hash) in rows {
                if let Some(new) = resealed(&self.vault, &description, AAD_DESCRIPTION)? {
                    let was_clear = Vault::key_id(&description).is_none();
                    clear += u64::from(was_clear);
                    let hash =
                        masked_hash(&self.vault, &row_of(pid, &report_id), &hash, was_clear)?;
                    sqlx::query(
                        "UPDATE accidents SET description = ?3, content_hash = ?4
                         WHERE platform_id = ?1 AND report_id = ?2",
                    )
                    .bind(pid)
                    .bind(&report_id)
                    .bind(new)
                    .bind(hash.to_vec())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    changed += 1;
                }
            }
            tx.commit().await.map_err(db_err)?;
        }
    }

    /// Returns (rows changed, rows that were in clear).
    async fn reseal_payloads(&self) -> Result<(u64, u64)> {
        let mut after = 0i64;
        let (mut changed, mut clear) = (0, 0);
        let (end,): (Option<i64>,) = sqlx::query_as("SELECT max(seq) FROM outbox")
            .fetch_one(&mut **self.writer.lock().await)
            .await
            .map_err(db_err)?;
        let end = end.unwrap_or(0);
        let mut progress = Progress::new("outbox items", end);
        loop {
            // Pages by primary key (`+destination` keeps the planner on it): each page
            // costs the same however large the outbox is.
            let rows: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
                "SELECT seq, destination, record_key, payload FROM outbox
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .bind(after)
            .bind(PAYLOAD_PAGE)
            .fetch_all(&mut **self.writer.lock().await)
            .await
            .map_err(db_err)?;
            let Some(last) = rows.last() else {
                progress.done(changed);
                return Ok((changed, clear));
            };
            after = last.0;
            progress.at(after, changed);
            let mut tx = self.write_tx().await?;
            for (seq, destination, record_key, payload) in rows {
                if destination != "social-security" {
                    continue;
                }
                let sealed = Vault::key_id(&payload).is_some();
                if !sealed && !carries_personal_data(Destination::SocialSecurity, &record_key) {
                    continue;
                }
                if let Some(new) = resealed(&self.vault, &payload, AAD_PAYLOAD)? {
                    clear += u64::from(Vault::key_id(&payload).is_none());
                    sqlx::query("UPDATE outbox SET payload = ?2 WHERE seq = ?1")
                        .bind(seq)
                        .bind(new)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err)?;
                    changed += 1;
                }
            }
            tx.commit().await.map_err(db_err)?;
        }
    }
}
