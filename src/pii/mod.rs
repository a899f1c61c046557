//! Personal data at rest (README, "Personal data at rest"), sealed above the store.
//!
//! A worker's ID number, name, mobile and birth date, an accident's description, and
//! the social-security outbox items that carry them are sealed (XChaCha20-Poly1305,
//! [`Vault`]) with associated data naming their column; an ID number also gets a
//! keyed lookup hash; the content hashes of workers and accidents are stored masked
//! for their row (a plain hash of a record whose values can be guessed would confirm
//! a guess). The store receives and returns sealed bytes and masked hashes
//! (`store::Sealed`) and never holds a key, so a second backend needs no cryptography
//! of its own. [`reseal`] brings what is stored under the current key at start.

pub mod reseal;

use std::str::FromStr;
use std::sync::Arc;

use chrono::NaiveDate;

use crate::domain::batch::{Known, Plan};
use crate::store::{
    Destination, Loaded, OutboxItem, Sealed, SealedAccident, SealedWorker, SealedWrites, StoreError,
};
use crate::vault::{Vault, VaultError};

/// Associated data naming the column a sealed value belongs to: a value moved to
/// another column does not open.
pub(crate) const AAD_ID_NUMBER: &[u8] = b"workers.id_number";
pub(crate) const AAD_NAME: &[u8] = b"workers.name";
pub(crate) const AAD_MOBILE: &[u8] = b"workers.mobile";
pub(crate) const AAD_BIRTH_DATE: &[u8] = b"workers.birth_date";
pub(crate) const AAD_DESCRIPTION: &[u8] = b"accidents.description";
pub(crate) const AAD_PAYLOAD: &[u8] = b"outbox.payload";

/// Seals personal data before it reaches the store and opens what the store returns.
/// Clones share the keys.
#[derive(Clone)]
pub struct Pii {
    vault: Arc<Vault>,
}

impl std::fmt::Debug for Pii {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pii")
            .field("current_key", &self.vault.current())
            .finish()
    }
}

/// A value that does not open (a key no longer configured, or tampering) is
/// reported as a corrupt store; the message names no value.
fn sealed_err(e: VaultError) -> StoreError {
    StoreError::Corrupt(format!("personal data: {e}"))
}

/// The row a masked content hash belongs to: platform id (8 bytes, big-endian), then
/// the record id.
fn row_of(platform_id: i64, id: &str) -> Vec<u8> {
    let mut row = platform_id.to_be_bytes().to_vec();
    row.extend_from_slice(id.as_bytes());
    row
}

/// Outbox items sealed at rest: worker records (ID number, name, mobile) and accident
/// reports (medical detail) for social security. Orders, daily enrolments and
/// everything for tax carry no personal data and stay clear (sealing every order
/// would cost a seal per item on the hottest path for nothing).
pub fn carries_personal_data(destination: Destination, record_key: &str) -> bool {
    destination == Destination::SocialSecurity
        && matches!(record_key.split('/').nth(1), Some("worker" | "accident"))
}

impl Pii {
    /// Seals and opens with `vault`'s keys (`Config::vault`).
    pub fn new(vault: Vault) -> Self {
        Self {
            vault: Arc::new(vault),
        }
    }

    /// The example keys of [`Vault::for_test`].
    pub fn for_test() -> Self {
        Self::new(Vault::for_test())
    }

    /// The name of the key new values are sealed under.
    pub fn current_key(&self) -> &str {
        self.vault.current()
    }

    /// Seals, in place, the payloads of `items` that carry personal data
    /// ([`carries_personal_data`]).
    pub fn seal_outbox(&self, items: &mut [OutboxItem]) {
        for item in items
            .iter_mut()
            .filter(|i| carries_personal_data(i.destination, &i.record_key))
        {
            item.payload = self.vault.seal(&item.payload, AAD_PAYLOAD);
        }
    }

    /// An outbox payload as stored, in clear (a payload without personal data is
    /// stored in clear and returned as it is). Fails with `StoreError::Corrupt` when a
    /// sealed payload does not open.
    pub fn open_payload(&self, payload: Sealed) -> Result<Vec<u8>, StoreError> {
        if Vault::key_id(&payload).is_some() {
            self.vault.open(&payload, AAD_PAYLOAD).map_err(sealed_err)
        } else {
            Ok(payload)
        }
    }

    /// The sealed values and masked hashes of the workers and accidents `plan` writes
    /// for platform `platform_id`, one each, in the plan's order.
    pub fn seal_writes(&self, platform_id: i64, plan: &Plan) -> SealedWrites {
        let v = &self.vault;
        SealedWrites {
            workers: plan
                .workers
                .iter()
                .map(|w| {
                    let r = &w.record;
                    SealedWorker {
                        content_hash: v.mask_hash(&row_of(platform_id, &r.worker_id), &w.hash),
                        id_number: v.seal(r.id_number.as_str().as_bytes(), AAD_ID_NUMBER),
                        name: v.seal(r.name.as_str().as_bytes(), AAD_NAME),
                        mobile: v.seal(r.mobile.as_str().as_bytes(), AAD_MOBILE),
                        birth_date: r
                            .id_number
                            .birth_date()
                            .map(|d| v.seal(d.to_string().as_bytes(), AAD_BIRTH_DATE)),
                        id_number_hash: v.lookup_hash(r.id_number.as_str().as_bytes()),
                    }
                })
                .collect(),
            accidents: plan
                .accidents
                .iter()
                .map(|w| SealedAccident {
                    content_hash: v.mask_hash(&row_of(platform_id, &w.record.report_id), &w.hash),
                    description: v.seal(w.record.description.as_bytes(), AAD_DESCRIPTION),
                })
                .collect(),
        }
    }

    /// The rules' state from what the store loaded for platform `platform_id`: the
    /// content hashes of workers and accidents unmasked, birth dates opened. Fails
    /// with `StoreError::Corrupt` when a value does not open or is not a date.
    pub fn open_loaded(&self, platform_id: i64, loaded: Loaded) -> Result<Known, StoreError> {
        let Loaded {
            mut known,
            mut birth_dates,
        } = loaded;
        for (id, state) in &mut known.workers {
            state.stored.hash = self
                .vault
                .mask_hash(&row_of(platform_id, id), &state.stored.hash);
            state.birth_date =
                match birth_dates.remove(id) {
                    None => None,
                    Some(sealed) => {
                        let clear = self
                            .vault
                            .open_str(&sealed, AAD_BIRTH_DATE)
                            .map_err(sealed_err)?;
                        Some(NaiveDate::from_str(&clear).map_err(|_| {
                            StoreError::Corrupt("birth_date is not a date".to_string())
                        })?)
                    }
                };
        }
        for (id, stored) in &mut known.accidents {
            stored.hash = self.vault.mask_hash(&row_of(platform_id, id), &stored.hash);
        }
        Ok(known)
    }

    /// A worker's ID number in clear.
    pub fn open_id_number(&self, sealed: &[u8]) -> Result<String, StoreError> {
        self.vault
            .open_str(sealed, AAD_ID_NUMBER)
            .map_err(sealed_err)
    }

    /// A worker's name in clear.
    pub fn open_name(&self, sealed: &[u8]) -> Result<String, StoreError> {
        self.vault.open_str(sealed, AAD_NAME).map_err(sealed_err)
    }

    /// A worker's mobile number in clear.
    pub fn open_mobile(&self, sealed: &[u8]) -> Result<String, StoreError> {
        self.vault.open_str(sealed, AAD_MOBILE).map_err(sealed_err)
    }
}
