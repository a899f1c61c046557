//! The audit log's tamper evidence (issue 5): an append-only chain in which each entry
//! hashes the one before. Altering, deleting or reordering an entry breaks the chain
//! at that entry, and [`verify`] names the first one that no longer fits.
//!
//! Pure: the store keeps the entries with their `seq` and `hash`; this module defines
//! what is hashed and checks a run of entries.

use sha2::{Digest, Sha256};

use super::time::Millis;

/// The hash before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// One audited event (a call, or a read of personal data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// 1, 2, 3, ... with no gaps.
    pub seq: i64,
    pub at: Millis,
    /// The caller's identity URI.
    pub identity: String,
    pub role: String,
    /// e.g. `oip.v1.PlatformService/ReportOrders`.
    pub action: String,
    /// Divisions or platform touched.
    pub scope: String,
    pub records: i64,
    /// OK, or the status code of a failed call.
    pub outcome: String,
    pub trace_id: String,
}

impl AuditEntry {
    /// `SHA-256(previous ‖ entry)`, every field length-prefixed so that no two
    /// entries encode alike.
    pub fn chain_hash(&self, previous: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(previous);
        h.update(self.seq.to_be_bytes());
        h.update(self.at.to_be_bytes());
        for field in [
            &self.identity,
            &self.role,
            &self.action,
            &self.scope,
            &self.outcome,
            &self.trace_id,
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        h.update(self.records.to_be_bytes());
        h.finalize().into()
    }
}

/// Why a chain does not verify, naming the first entry that does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("audit entry {expected} is missing (found {found} next)")]
    Missing { expected: i64, found: i64 },
    #[error("audit entry {seq} was altered, or an entry before it was")]
    Altered { seq: i64 },
    /// The chain starts after entry `seq` (older entries removed), but no retention
    /// entry in the chain records that removal: entries were removed by hand.
    #[error("entries up to {seq} were removed without a retention entry saying so")]
    UnconfirmedAnchor { seq: i64 },
}

/// The action of the entry retention appends after removing old entries.
pub const RETENTION_ACTION: &str = "audit-retention";

/// The actions of entries that are not calls: a page of a tax pull, a page of personal
/// data read (social-security pulls), a retention removal.
pub const SPECIAL_ACTIONS: [&str; 3] = ["pull-page", "personal-data-read", RETENTION_ACTION];

/// The scope of a retention entry: the new anchor (the last removed entry).
pub fn retention_scope(seq: i64, hash: &[u8; 32]) -> String {
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("through {seq} {hex}")
}

/// Checks entries stored as `(entry, hash)`, in seq order, starting after the entry
/// whose hash is `previous` and whose seq is `after` (`GENESIS`, 0 for the start).
/// Returns the last hash and seq, to continue from.
pub fn verify<'a>(
    entries: impl IntoIterator<Item = (&'a AuditEntry, &'a [u8; 32])>,
    mut previous: [u8; 32],
    mut after: i64,
) -> Result<([u8; 32], i64), ChainBreak> {
    for (entry, stored) in entries {
        if entry.seq != after + 1 {
            return Err(ChainBreak::Missing {
                expected: after + 1,
                found: entry.seq,
            });
        }
        let hash = entry.chain_hash(&previous);
        if hash != *stored {
            return Err(ChainBreak::Altered { seq: entry.seq });
        }
        previous = hash;
        after = entry.seq;
    }
    Ok((previous, after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(seq: i64, action: &str) -> AuditEntry {
        AuditEntry {
            seq,
            at: 1_764_000_000_000 + seq,
            identity: "oip://tax/32010000".into(),
            role: "tax".into(),
            action: action.into(),
            scope: "320100".into(),
            records: seq * 10,
            outcome: "OK".into(),
            trace_id: format!("t{seq}"),
        }
    }

    fn chain(n: i64) -> Vec<(AuditEntry, [u8; 32])> {
        let mut previous = GENESIS;
        (1..=n)
            .map(|seq| {
                let e = entry(seq, "oip.v1.TaxService/PullContributions");
                previous = e.chain_hash(&previous);
                (e, previous)
            })
            .collect()
    }

    fn check(rows: &[(AuditEntry, [u8; 32])]) -> Result<([u8; 32], i64), ChainBreak> {
        verify(rows.iter().map(|(e, h)| (e, h)), GENESIS, 0)
    }

    #[test]
    fn an_untouched_chain_verifies_and_can_be_continued() {
        let rows = chain(5);
        let (last, seq) = check(&rows).expect("verifies");
        assert_eq!((last, seq), (rows[4].1, 5));
        let (head, tail) = rows.split_at(3);
        let (h, s) = check(head).expect("head");
        assert_eq!(
            verify(tail.iter().map(|(e, h)| (e, h)), h, s),
            Ok((last, 5))
        );
    }

    #[test]
    fn a_deleted_entry_is_named() {
        let mut rows = chain(5);
        rows.remove(2);
        assert_eq!(
            check(&rows),
            Err(ChainBreak::Missing {
                expected: 3,
                found: 4
            })
        );
    }

    #[test]
    fn field_boundaries_matter() {
        let a = AuditEntry {
            identity: "ab".into(),
            role: "c".into(),
            ..entry(1, "x")
        };
        let b = AuditEntry {
            identity: "a".into(),
            role: "bc".into(),
            ..entry(1, "x")
        };
        assert_ne!(a.chain_hash(&GENESIS), b.chain_hash(&GENESIS));
    }

    proptest! {
        /// Any change to any field of any entry is caught at that entry.
        #[test]
        fn any_alteration_is_caught_where_it_happens(
            n in 1_i64..20, pick in 0_usize..20, field in 0_u8..6, text in "[a-z0-9]{0,8}"
        ) {
            let mut rows = chain(n);
            let i = pick % rows.len();
            let e = &mut rows[i].0;
            match field {
                0 => e.identity.push_str(&format!("{text}!")),
                1 => e.action.push_str(&format!("{text}!")),
                2 => e.scope.push_str(&format!("{text}!")),
                3 => e.records += 1,
                4 => e.at -= 1,
                _ => e.outcome.push_str(&format!("{text}!")),
            }
            prop_assert_eq!(check(&rows), Err(ChainBreak::Altered { seq: i as i64 + 1 }));
        }
    }
}
