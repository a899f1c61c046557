//! Bringing personal data under the current key: values stored in clear (databases
//! written before sealing) or sealed under an older key are sealed again, a page at a
//! time, before the gateway serves. The store records the key everything was last
//! brought under ([`SealedRepo::sealed_with`]), so an unchanged key costs one query
//! at start.

use super::{
    AAD_BIRTH_DATE, AAD_DESCRIPTION, AAD_ID_NUMBER, AAD_MOBILE, AAD_NAME, AAD_PAYLOAD, Pii,
    carries_personal_data, row_of, sealed_err,
};
use crate::store::{Destination, PullRepo, Result, SealedRepo, StoreError};
use crate::vault::Vault;

/// Workers and accidents per page (one transaction each).
const PAGE: u32 = 500;
/// Outbox rows read per page (most are orders and enrolments, which hold no personal
/// data and are only looked at).
const PAYLOAD_PAGE: u32 = 5000;

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

/// Names where a value that does not open was found (never the value, nor a record
/// id, which may be a mobile or an ID number).
fn at(place: String) -> impl FnOnce(StoreError) -> StoreError {
    move |e| match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{place}: {m}")),
        other => other,
    }
}

/// A stored content hash as it must be stored now: masked, and masked once (a row
/// from before sealing has a plain one).
fn masked_hash(vault: &Vault, row: &[u8], stored: &[u8], was_clear: bool) -> Result<Vec<u8>> {
    let hash: [u8; 32] = stored
        .try_into()
        .map_err(|_| StoreError::Corrupt("content_hash is not 32 bytes".to_string()))?;
    Ok(if was_clear {
        vault.mask_hash(row, &hash).to_vec()
    } else {
        hash.to_vec()
    })
}

/// Brings every stored personal value under `pii`'s current key, then records that
/// key in the store. Run before serving; safe to run again after a failure half-way
/// (values already under the current key are left alone). Fails when a stored value
/// does not open under any configured key (`StoreError::Corrupt`, naming no value)
/// or the store fails.
pub async fn reseal<S: SealedRepo + PullRepo + ?Sized>(pii: &Pii, store: &S) -> Result<()> {
    let current = pii.current_key().to_string();
    // One replica at a time: the others wait here, then find the work done.
    let _only = store.lock_resealing().await?;
    if store.sealed_with().await?.is_some_and(|k| k == current) {
        return Ok(());
    }
    tracing::info!(
        key = %current,
        "bringing personal data under the current key before serving (progress is logged every 10 s)"
    );
    // No key recorded while values move: a re-sealing stopped half-way leaves some
    // under the new key, and the next start must scan again (and fail naming a key it
    // lacks) whatever key it is given, not trust a key recorded before.
    store.set_sealed_with("").await?;
    let (workers, clear_workers) = reseal_workers(pii, store).await?;
    let (accidents, clear_accidents) = reseal_accidents(pii, store).await?;
    let (payloads, clear_payloads) = reseal_payloads(pii, store).await?;
    store.set_sealed_with(&current).await?;
    // Old page images must not survive in the store's log either, nor clear values in
    // pages freed before they were zeroed: rebuild the file when anything was clear.
    store
        .purge_old_images(clear_workers + clear_accidents + clear_payloads > 0)
        .await?;
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
async fn reseal_workers<S: SealedRepo + ?Sized>(pii: &Pii, store: &S) -> Result<(u64, u64)> {
    let vault = &pii.vault;
    let mut after = (i64::MIN, String::new());
    let (mut changed, mut clear) = (0, 0);
    loop {
        let rows = store.sealed_workers(&after, PAGE).await?;
        let Some(last) = rows.last() else {
            return Ok((changed, clear));
        };
        after = (last.platform_id, last.worker_id.clone());
        let mut replaced = Vec::new();
        for mut row in rows {
            let read = row.id_number.clone();
            let place = || format!("a worker of platform {}", row.platform_id);
            let new_id = resealed(vault, &row.id_number, AAD_ID_NUMBER).map_err(at(place()))?;
            let new_name = resealed(vault, &row.name, AAD_NAME).map_err(at(place()))?;
            let new_mobile = resealed(vault, &row.mobile, AAD_MOBILE).map_err(at(place()))?;
            let new_birth = match &row.birth_date {
                Some(b) => resealed(vault, b, AAD_BIRTH_DATE).map_err(at(place()))?,
                None => None,
            };
            if new_id.is_none() && new_name.is_none() && new_mobile.is_none() && new_birth.is_none()
            {
                continue;
            }
            // A row from before sealing has a plain content hash: mask it too.
            let was_clear = Vault::key_id(&row.id_number).is_none();
            clear += u64::from(was_clear);
            row.content_hash = masked_hash(
                vault,
                &row_of(row.platform_id, &row.worker_id),
                &row.content_hash,
                was_clear,
            )?;
            let clear_id = clear_of(vault, &row.id_number, AAD_ID_NUMBER).map_err(at(place()))?;
            row.id_number_hash = vault.lookup_hash(&clear_id).to_vec();
            if let Some(v) = new_id {
                row.id_number = v;
            }
            if let Some(v) = new_name {
                row.name = v;
            }
            if let Some(v) = new_mobile {
                row.mobile = v;
            }
            if new_birth.is_some() {
                row.birth_date = new_birth;
            }
            replaced.push((read, row));
        }
        store.replace_sealed_workers(&replaced).await?;
        changed += replaced.len() as u64;
    }
}

/// Returns (rows changed, rows that were in clear).
async fn reseal_accidents<S: SealedRepo + ?Sized>(pii: &Pii, store: &S) -> Result<(u64, u64)> {
    let vault = &pii.vault;
    let mut after = (i64::MIN, String::new());
    let (mut changed, mut clear) = (0, 0);
    loop {
        let rows = store.sealed_accidents(&after, PAGE).await?;
        let Some(last) = rows.last() else {
            return Ok((changed, clear));
        };
        after = (last.platform_id, last.report_id.clone());
        let mut replaced = Vec::new();
        for mut row in rows {
            let place = format!("an accident of platform {}", row.platform_id);
            if let Some(new) =
                resealed(vault, &row.description, AAD_DESCRIPTION).map_err(at(place))?
            {
                let was_clear = Vault::key_id(&row.description).is_none();
                clear += u64::from(was_clear);
                row.content_hash = masked_hash(
                    vault,
                    &row_of(row.platform_id, &row.report_id),
                    &row.content_hash,
                    was_clear,
                )?;
                let read = std::mem::replace(&mut row.description, new);
                replaced.push((read, row));
            }
        }
        store.replace_sealed_accidents(&replaced).await?;
        changed += replaced.len() as u64;
    }
}

/// Returns (rows changed, rows that were in clear).
async fn reseal_payloads<S: SealedRepo + PullRepo + ?Sized>(
    pii: &Pii,
    store: &S,
) -> Result<(u64, u64)> {
    let vault = &pii.vault;
    let mut after = 0i64;
    let (mut changed, mut clear) = (0, 0);
    let mut progress = Progress::new("outbox items", store.journal_end().await?);
    loop {
        let rows = store.stored_payloads(after, PAYLOAD_PAGE).await?;
        let Some(last) = rows.last() else {
            progress.done(changed);
            return Ok((changed, clear));
        };
        after = last.seq;
        progress.at(after, changed);
        let mut replaced = Vec::new();
        for row in rows {
            if row.destination != Destination::SocialSecurity.as_str() {
                continue;
            }
            let sealed = Vault::key_id(&row.payload).is_some();
            if !sealed && !carries_personal_data(Destination::SocialSecurity, &row.record_key) {
                continue;
            }
            let place = format!("outbox item {}", row.seq);
            if let Some(new) = resealed(vault, &row.payload, AAD_PAYLOAD).map_err(at(place))? {
                clear += u64::from(!sealed);
                replaced.push((row.seq, new));
            }
        }
        store.replace_payloads(&replaced).await?;
        changed += replaced.len() as u64;
    }
}
