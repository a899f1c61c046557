//! Storage of the backend simulator (`oip-gateway backend-sim`): its own SQLite file,
//! each idempotency key applied once, repeats counted.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::{Result, StoreError};

/// One item as the simulator keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimItem {
    pub idempotency_key: String,
    pub backend: &'static str,
    pub kind: &'static str,
    pub platform: String,
    pub correction: bool,
    pub payload: Vec<u8>,
}

pub struct SimStore {
    pool: SqlitePool,
}

fn err(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SimStore {
    pub async fn open(url: &str) -> Result<Self> {
        let path = url.strip_prefix("sqlite:").unwrap_or(url);
        super::owner_only_database(Path::new(path))
            .map_err(|e| StoreError::Unavailable(format!("cannot create {path}: {e}")))?;
        let opts = SqliteConnectOptions::from_str(&format!("sqlite:{path}"))
            .map_err(err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // Checkpoints every 40 MB of WAL, as the gateway's store (issue 13's
            // profile: at the default 4 MB they took a third of the simulator's time).
            .pragma("wal_autocheckpoint", "10000")
            .statement_cache_capacity(super::sqlite::STATEMENT_CACHE);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .map_err(err)?;
        sqlx::migrate!("migrations/backend-sim")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        Ok(Self { pool })
    }

    /// Applies the items of one answered Deliver call whose key is new (within the call
    /// too) and returns, per item, whether it was applied (false: a repeat, dropped and
    /// counted). Counts the call (`answered_calls`).
    pub async fn apply(&self, items: &[SimItem], now: i64) -> Result<Vec<bool>> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        // One pass over the key index: the insert skips the keys already applied (or
        // repeated earlier in the call) and returns the ones it stored.
        let mut stored: HashSet<String> = HashSet::with_capacity(items.len());
        for chunk in items.chunks(1000) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO applied (idempotency_key, backend, kind, platform, correction, payload, applied_at) ",
            );
            q.push_values(chunk, |mut b, i| {
                b.push_bind(&i.idempotency_key)
                    .push_bind(i.backend)
                    .push_bind(i.kind)
                    .push_bind(&i.platform)
                    .push_bind(i.correction)
                    .push_bind(&i.payload)
                    .push_bind(now);
            });
            // The one unique index is the key's (`applied_by_version`).
            q.push(" ON CONFLICT DO NOTHING RETURNING idempotency_key");
            let keys: Vec<(String,)> = q
                .build_query_as()
                .persistent(super::sqlite::kept(chunk.len(), 1000))
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
            stored.extend(keys.into_iter().map(|(k,)| k));
        }
        // The first item of a stored key is the one applied.
        let fresh: Vec<bool> = items
            .iter()
            .map(|i| stored.remove(&i.idempotency_key))
            .collect();
        let new_items: Vec<&SimItem> = items
            .iter()
            .zip(&fresh)
            .filter(|(_, f)| **f)
            .map(|(i, _)| i)
            .collect();
        let mut per_kind: BTreeMap<String, i64> = BTreeMap::new();
        for i in &new_items {
            *per_kind
                .entry(format!("applied:{}/{}", i.backend, i.kind))
                .or_default() += 1;
        }
        for (name, n) in &per_kind {
            Self::bump(&mut tx, name, *n).await?;
        }
        Self::bump(&mut tx, "answered_calls", 1).await?;
        let repeats = fresh.iter().filter(|f| !**f).count() as i64;
        if repeats > 0 {
            Self::bump(&mut tx, "repeated_items", repeats).await?;
        }
        tx.commit().await.map_err(err)?;
        Ok(fresh)
    }

    async fn bump(tx: &mut sqlx::Transaction<'_, Sqlite>, name: &str, by: i64) -> Result<()> {
        sqlx::query("INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = value + ?2")
            .bind(name)
            .bind(by)
            .execute(&mut **tx)
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Adds to a named counter (failed calls, invalid items).
    pub async fn count(&self, name: &str, by: i64) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        Self::bump(&mut tx, name, by).await?;
        tx.commit().await.map_err(err)
    }

    /// Applied items per `backend/kind` (counted as applied: no scan of the payloads),
    /// and the other counters.
    pub async fn stats(&self) -> Result<(BTreeMap<String, u64>, BTreeMap<String, u64>)> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT name, value FROM counters")
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        let (mut applied, mut counters) = (BTreeMap::new(), BTreeMap::new());
        for (name, value) in rows {
            let value = u64::try_from(value).unwrap_or(0);
            match name.strip_prefix("applied:") {
                Some(kind) => applied.insert(kind.to_string(), value),
                None => counters.insert(name, value),
            };
        }
        Ok((applied, counters))
    }

    /// The stored payloads of one backend and kind, in key order.
    pub async fn payloads(&self, backend: &str, kind: &str) -> Result<Vec<(String, Vec<u8>)>> {
        sqlx::query_as("SELECT idempotency_key, payload FROM applied WHERE backend = ?1 AND kind = ?2 ORDER BY idempotency_key")
            .bind(backend)
            .bind(kind)
            .fetch_all(&self.pool)
            .await
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str) -> SimItem {
        SimItem {
            idempotency_key: key.to_string(),
            backend: "social-security",
            kind: "enrolment",
            platform: "P".to_string(),
            correction: false,
            payload: key.as_bytes().to_vec(),
        }
    }

    fn items(keys: &[&str]) -> Vec<SimItem> {
        keys.iter().map(|k| item(k)).collect()
    }

    /// Keys whose last segment is a number, is not, or that have no '/' at all.
    const KEYS: [&str; 6] = [
        "P/enrolment/W1/2025-07-02/320100/7",
        "P/enrolment/W2/2025-07-02/320100/7",
        "P/order/O1/1",
        "P/order/O1/12abc",
        "P/order/O1/",
        "no-slash-12",
    ];

    /// Each key is applied once however its version index orders it: a repeat in the
    /// same call, in a later call, or after a restart is dropped and counted, and two
    /// keys with the same version are both applied.
    #[tokio::test]
    async fn each_key_is_applied_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("sim.db").display());
        let store = SimStore::open(&url).await.expect("open");
        let mut first = items(&KEYS);
        first.push(item(KEYS[0]));
        let fresh = store.apply(&first, 1).await.expect("apply");
        assert_eq!(fresh, [true, true, true, true, true, true, false]);
        let again = store
            .apply(&items(&[KEYS[2], "P/order/O1/2", KEYS[5]]), 2)
            .await
            .expect("apply");
        assert_eq!(again, [false, true, false]);
        drop(store);
        let store = SimStore::open(&url).await.expect("reopen");
        let fresh = store.apply(&items(&KEYS), 3).await.expect("apply");
        assert_eq!(fresh, [false; 6]);
        let (applied, counters) = store.stats().await.expect("stats");
        assert_eq!(applied.get("social-security/enrolment"), Some(&7));
        assert_eq!(counters.get("repeated_items"), Some(&9));
    }
}
