//! Personal data at rest: values sealed with an AEAD (XChaCha20-Poly1305, RustCrypto)
//! under a key from configuration, and a keyed hash (HMAC-SHA-256) for equality
//! lookups. A stolen database file alone reveals neither.
//!
//! A sealed value is `MAGIC ‖ key-id length ‖ key id ‖ 24-byte nonce ‖ ciphertext+tag`,
//! so any configured key opens it and rotation can tell which rows still use an old
//! key. The associated data names the column (`workers.name`), so a value cannot be
//! moved to another column unnoticed. The lookup key never rotates: stored lookup
//! hashes depend on it.

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// First bytes of a sealed value. 0xA7 is never the first byte of a protobuf message
/// (wire type 7 does not exist) nor of UTF-8 text, so sealed and clear values are told
/// apart.
const MAGIC: [u8; 2] = [0xA7, 0x01];
const NONCE: usize = 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("value is not sealed")]
    NotSealed,
    #[error("value is sealed under key {0:?}, which is not configured")]
    UnknownKey(String),
    #[error("sealed value does not open (altered, or moved from another column)")]
    Tampered,
    #[error("key {key}: {reason}")]
    BadKey { key: String, reason: String },
}

/// The configured keys.
#[derive(Clone)]
pub struct Vault {
    keys: BTreeMap<String, XChaCha20Poly1305>,
    current: String,
    lookup: [u8; 32],
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

/// 64 hex digits → 32 bytes.
pub fn key_bytes(name: &str, hex_key: &str) -> Result<[u8; 32], VaultError> {
    let bad = |reason: &str| VaultError::BadKey {
        key: name.to_string(),
        reason: reason.to_string(),
    };
    const HOW: &str = "a key is 64 hexadecimal digits (32 bytes), e.g. from `openssl rand -hex 32`";
    let bytes = hex::decode(hex_key.trim()).map_err(|_| bad(&format!("not hexadecimal: {HOW}")))?;
    let n = bytes.len();
    bytes
        .try_into()
        .map_err(|_| bad(&format!("{} hex digits: {HOW}", n * 2)))
}

impl Vault {
    /// Keys by id (each 32 bytes), the id sealing new values, and the lookup key.
    pub fn new(
        keys: &BTreeMap<String, [u8; 32]>,
        current: &str,
        lookup: [u8; 32],
    ) -> Result<Self, VaultError> {
        if current.is_empty() {
            return Err(VaultError::BadKey {
                key: "current_key".to_string(),
                reason: format!(
                    "not set: name the key that seals new values, one of {} (OIP_PII__CURRENT_KEY=<id>)",
                    keys.keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if !keys.contains_key(current) {
            return Err(VaultError::BadKey {
                key: current.to_string(),
                reason: format!(
                    "the current key is not among the keys ({}; ids given by environment variable are lower case)",
                    keys.keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if let Some(id) = keys.keys().find(|id| id.is_empty() || id.len() > 32) {
            return Err(VaultError::BadKey {
                key: id.clone(),
                reason: "key ids have 1 to 32 characters".into(),
            });
        }
        Ok(Self {
            keys: keys
                .iter()
                .map(|(id, k)| (id.clone(), XChaCha20Poly1305::new(Key::from_slice(k))))
                .collect(),
            current: current.to_string(),
            lookup,
        })
    }

    /// The id of the key that seals new values.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// Seals `plain` for the column named by `aad`.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let cipher = &self.keys[&self.current];
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption with a valid key and nonce only fails for inputs beyond 256 GiB.
        let sealed = cipher
            .encrypt(&nonce, Payload { msg: plain, aad })
            .unwrap_or_default();
        let id = self.current.as_bytes();
        let mut out = Vec::with_capacity(MAGIC.len() + 1 + id.len() + NONCE + sealed.len());
        out.extend_from_slice(&MAGIC);
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The key id of a sealed value (None when it is not sealed).
    pub fn key_id(blob: &[u8]) -> Option<&str> {
        let rest = blob.strip_prefix(&MAGIC)?;
        let (&len, rest) = rest.split_first()?;
        std::str::from_utf8(rest.get(..usize::from(len))?).ok()
    }

    /// Opens a value sealed for the column named by `aad`.
    pub fn open(&self, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        let id = Self::key_id(blob).ok_or(VaultError::NotSealed)?;
        let cipher = self
            .keys
            .get(id)
            .ok_or_else(|| VaultError::UnknownKey(id.to_string()))?;
        let start = MAGIC.len() + 1 + id.len();
        let nonce = blob.get(start..start + NONCE).ok_or(VaultError::Tampered)?;
        let sealed = blob.get(start + NONCE..).ok_or(VaultError::Tampered)?;
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map_err(|_| VaultError::Tampered)
    }

    /// Opens a sealed UTF-8 string.
    pub fn open_str(&self, blob: &[u8], aad: &[u8]) -> Result<String, VaultError> {
        String::from_utf8(self.open(blob, aad)?).map_err(|_| VaultError::Tampered)
    }

    /// Sealed by the current key.
    pub fn is_current(&self, blob: &[u8]) -> bool {
        Self::key_id(blob) == Some(self.current.as_str())
    }

    /// HMAC-SHA-256 of `value` under the lookup key: equal values hash alike, and the
    /// hash reveals nothing without the key.
    pub fn lookup_hash(&self, value: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.lookup)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(value);
        mac.finalize().into_bytes().into()
    }

    /// A stored content hash, masked: `hash ⊕ HMAC(lookup key, row)`. Applying it twice
    /// gives the hash back. Without the key a masked hash says nothing about the record
    /// it was computed from (a plain SHA-256 of a worker record would let anyone holding
    /// the file test guesses of its ID number).
    pub fn mask_hash(&self, row: &[u8], hash: &[u8; 32]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.lookup)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"content-hash\0");
        mac.update(row);
        let pad: [u8; 32] = mac.finalize().into_bytes().into();
        std::array::from_fn(|i| hash[i] ^ pad[i])
    }

    /// A vault with fixed keys, for tests and the example configuration only.
    pub fn for_test() -> Self {
        let keys = BTreeMap::from([("test".to_string(), [7u8; 32])]);
        Self::new(&keys, "test", [9u8; 32]).unwrap_or_else(|e| unreachable!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn two_keys(current: &str) -> Vault {
        let keys = BTreeMap::from([("k1".to_string(), [1u8; 32]), ("k2".to_string(), [2u8; 32])]);
        Vault::new(&keys, current, [3u8; 32]).expect("vault")
    }

    #[test]
    fn sealed_values_open_with_any_configured_key_and_only_in_their_column() {
        let old = two_keys("k1");
        let new = two_keys("k2");
        let sealed = old.seal("张三丰".as_bytes(), b"workers.name");
        assert_eq!(Vault::key_id(&sealed), Some("k1"));
        assert!(!new.is_current(&sealed));
        assert_eq!(
            new.open_str(&sealed, b"workers.name").as_deref(),
            Ok("张三丰")
        );
        assert_eq!(
            new.open(&sealed, b"workers.mobile"),
            Err(VaultError::Tampered)
        );
        let only_k2 = Vault::new(
            &BTreeMap::from([("k2".to_string(), [2u8; 32])]),
            "k2",
            [3u8; 32],
        )
        .expect("vault");
        assert_eq!(
            only_k2.open(&sealed, b"workers.name"),
            Err(VaultError::UnknownKey("k1".into()))
        );
        assert_eq!(old.open(b"plain", b"x"), Err(VaultError::NotSealed));
        assert!(Vault::new(&BTreeMap::new(), "k1", [0; 32]).is_err());
        assert!(key_bytes("k", "abc").is_err());
        assert!(key_bytes("k", &"0f".repeat(32)).is_ok());
    }

    #[test]
    fn the_same_value_seals_differently_but_hashes_alike() {
        let v = two_keys("k1");
        assert_ne!(v.seal(b"13800138000", b"m"), v.seal(b"13800138000", b"m"));
        assert_eq!(v.lookup_hash(b"13800138000"), v.lookup_hash(b"13800138000"));
        assert_ne!(v.lookup_hash(b"13800138000"), v.lookup_hash(b"13800138001"));
        let other = Vault::new(
            &BTreeMap::from([("k1".to_string(), [1u8; 32])]),
            "k1",
            [4u8; 32],
        )
        .expect("vault");
        assert_ne!(v.lookup_hash(b"x"), other.lookup_hash(b"x"), "keyed");
    }

    #[test]
    fn masked_hashes_unmask_and_depend_on_the_row() {
        let v = two_keys("k1");
        let h = [5u8; 32];
        let m = v.mask_hash(b"1/W1", &h);
        assert_ne!(m, h);
        assert_eq!(v.mask_hash(b"1/W1", &m), h);
        assert_ne!(v.mask_hash(b"1/W2", &h), m);
    }

    proptest! {
        #[test]
        fn round_trip_and_any_flipped_byte_is_refused(
            plain in proptest::collection::vec(any::<u8>(), 0..200),
            flip in any::<prop::sample::Index>(),
        ) {
            let v = two_keys("k2");
            let sealed = v.seal(&plain, b"col");
            prop_assert_eq!(v.open(&sealed, b"col"), Ok(plain.clone()));
            let mut bad = sealed.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 0x01;
            prop_assert!(v.open(&bad, b"col") != Ok(plain));
        }
    }
}
