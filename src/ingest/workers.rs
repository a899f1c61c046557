//! Hot worker state: what the rules need of each stored worker (`WorkerState`), kept
//! between a platform's transactions so that a batch of orders does not read, decode
//! and open its workers' rows again (issue 13: loading a thousand orders' workers was
//! most of the load stage of a batch).
//!
//! Coherent with the database, also with several processes writing: the store keeps a
//! counter per platform, its *workers version*, raised by one in every transaction
//! that writes any of the platform's workers, and reads it with the state a
//! transaction loads (`Known::workers_version`), after the platform's transactions are
//! serialised. A cached entry is used only when the version read equals the version
//! the cache holds; otherwise another process wrote workers since, every entry of the
//! platform is dropped (a new *epoch*), and the workers are read from the store.
//! Entries are added and the version advanced only after a commit: the workers the
//! transaction wrote are dropped, the ones it read are kept.
//!
//! Bounded by [`CAPACITY`] entries over all platforms (least recently used go first).
//!
//! A worker changed in the database by hand, outside the gateway, is seen after a
//! restart, or at once if the same change raises the platform's `workers_version`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::domain::batch::{Known, Touched, WorkerState};
use crate::pii::Pii;
use crate::store::{IngestTx, StoreError};

/// Worker states kept at most, over all platforms: about 600 bytes each with the
/// cache's own bookkeeping (measured filling it with 200,000 typical workers: 112 MB),
/// so about 30 MB at most, within issue 13's memory budget (150 MB in all).
pub const CAPACITY: u64 = 50_000;

/// The platform's workers version the cache holds and the epoch its entries are
/// keyed under (a new epoch drops every entry of the platform at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    version: i64,
    epoch: u64,
}

/// Worker states of every platform, keyed by (platform id, epoch, worker id).
pub struct WorkerCache {
    entries: moka::sync::Cache<(i64, u64, String), WorkerState>,
    stamps: Mutex<HashMap<i64, Stamp>>,
}

impl Default for WorkerCache {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl WorkerCache {
    /// A cache of at most `capacity` worker states.
    pub fn with_capacity(capacity: u64) -> Self {
        Self {
            entries: moka::sync::Cache::new(capacity),
            stamps: Mutex::new(HashMap::new()),
        }
    }

    fn stamps(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Stamp>> {
        self.stamps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the cached workers among `ids` out of `ids` and returns them with the
    /// stamp they are valid under: usable only if the transaction reads that same
    /// workers version (see [`Cached::holds`]).
    fn take(&self, platform_id: i64, ids: &mut Vec<String>) -> Cached {
        let Some(stamp) = self.stamps().get(&platform_id).copied() else {
            return Cached::default();
        };
        let mut workers = Vec::new();
        let mut rest = Vec::with_capacity(ids.len());
        // Each id moves into its cache key and back out (no copy per lookup).
        for id in ids.drain(..) {
            let key = (platform_id, stamp.epoch, id);
            match self.entries.get(&key) {
                Some(state) => workers.push((key.2, state)),
                None => rest.push(key.2),
            }
        }
        *ids = rest;
        Cached {
            stamp: Some(stamp),
            workers,
        }
    }

    /// Loads the state of `touched` in `tx` as `IngestTx::load` does (opened by `pii`), but takes the
    /// platform's kept workers instead of reading them while they hold (the version
    /// the transaction reads is the one they were kept at); otherwise reads them too.
    /// Returns the state and the workers read from the store, to keep after the
    /// commit ([`Self::committed`]).
    pub async fn load(
        &self,
        tx: &mut dyn IngestTx,
        pii: &Pii,
        platform_id: i64,
        mut touched: Touched,
    ) -> Result<(Known, Vec<(String, WorkerState)>), StoreError> {
        let mut cached = self.take(platform_id, &mut touched.worker_ids);
        let mut known = pii.open_loaded(platform_id, tx.load(&touched).await?)?;
        if !cached.workers.is_empty() && !cached.holds(known.workers_version) {
            let stale = Touched {
                worker_ids: cached.workers.drain(..).map(|(id, _)| id).collect(),
                ..Touched::default()
            };
            let fresh = pii.open_loaded(platform_id, tx.load(&stale).await?)?;
            known.workers.extend(fresh.workers);
        }
        let loaded = known
            .workers
            .iter()
            .map(|(id, state)| (id.clone(), state.clone()))
            .collect();
        known.workers.extend(cached.workers);
        Ok((known, loaded))
    }

    /// After a commit: the transaction read the platform's workers version `read`,
    /// read the workers `loaded` from the store and wrote the workers `written` (the
    /// store then raised the version by one). The written ones are dropped, the
    /// loaded ones kept, under the version the database now holds.
    pub fn committed(
        &self,
        platform_id: i64,
        read: i64,
        loaded: Vec<(String, WorkerState)>,
        written: &HashSet<String>,
    ) {
        let stamp = {
            let mut stamps = self.stamps();
            let stamp = stamps.entry(platform_id).or_insert(Stamp {
                version: read,
                epoch: 0,
            });
            if stamp.version != read {
                // Written elsewhere since: nothing cached under the old version holds.
                stamp.epoch += 1;
            }
            stamp.version = read + i64::from(!written.is_empty());
            *stamp
        };
        for id in written {
            self.entries
                .invalidate(&(platform_id, stamp.epoch, id.clone()));
        }
        for (id, state) in loaded {
            if !written.contains(id.as_str()) {
                self.entries.insert((platform_id, stamp.epoch, id), state);
            }
        }
    }
}

/// Workers found in the cache, and the stamp they were cached under.
#[derive(Debug, Default)]
struct Cached {
    stamp: Option<Stamp>,
    workers: Vec<(String, WorkerState)>,
}

impl Cached {
    /// Whether the entries hold for a transaction that read the workers version
    /// `read` (None: not read from a store).
    fn holds(&self, read: Option<i64>) -> bool {
        self.stamp.map(|s| s.version) == read && read.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::batch::Stored;
    use crate::domain::records::WorkerStatus;

    fn state(revision: u32) -> WorkerState {
        WorkerState {
            stored: Stored {
                revision,
                hash: [0; 32],
            },
            industries: vec!["INSTANT_DELIVERY".into()],
            registered_at: 0,
            status: WorkerStatus::Active,
            left_at: None,
            birth_date: None,
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entries_hold_only_under_the_version_they_were_kept_at() {
        let cache = WorkerCache::default();
        let none = HashSet::new();
        let mut want = ids(&["W1", "W2"]);
        assert!(cache.take(1, &mut want).workers.is_empty());
        cache.committed(1, 5, vec![("W1".into(), state(1))], &none);
        let mut want = ids(&["W1", "W2"]);
        let cached = cache.take(1, &mut want);
        assert_eq!(want, ids(&["W2"]));
        assert_eq!(cached.workers, vec![("W1".to_string(), state(1))]);
        assert!(cached.holds(Some(5)));
        assert!(!cached.holds(Some(6)), "written elsewhere since");
        assert!(!cached.holds(None));
        // Another platform shares nothing.
        let mut want = ids(&["W1"]);
        assert!(cache.take(2, &mut want).workers.is_empty());
        assert_eq!(want, ids(&["W1"]));
    }

    #[test]
    fn a_write_drops_the_written_and_advances_the_version() {
        let cache = WorkerCache::default();
        let none = HashSet::new();
        cache.committed(
            1,
            5,
            vec![("W1".into(), state(1)), ("W2".into(), state(1))],
            &none,
        );
        // This process writes W2: W1 still holds, under version 6.
        cache.committed(1, 5, vec![], &HashSet::from(["W2".to_string()]));
        let mut want = ids(&["W1", "W2"]);
        let cached = cache.take(1, &mut want);
        assert_eq!(want, ids(&["W2"]));
        assert!(cached.holds(Some(6)));
    }

    #[test]
    fn a_version_moved_elsewhere_drops_every_entry_of_the_platform() {
        let cache = WorkerCache::default();
        let none = HashSet::new();
        cache.committed(1, 5, vec![("W1".into(), state(1))], &none);
        cache.committed(2, 9, vec![("W1".into(), state(3))], &none);
        // A transaction read version 7 (another process wrote twice) and W2.
        cache.committed(1, 7, vec![("W2".into(), state(1))], &none);
        let mut want = ids(&["W1", "W2"]);
        let cached = cache.take(1, &mut want);
        assert_eq!(want, ids(&["W1"]), "W1 was kept under version 5");
        assert_eq!(cached.workers, vec![("W2".to_string(), state(1))]);
        assert!(cached.holds(Some(7)));
        let mut want = ids(&["W1"]);
        assert_eq!(cache.take(2, &mut want).workers.len(), 1);
    }
}
