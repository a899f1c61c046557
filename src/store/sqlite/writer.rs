//! The database's one write connection, held for the life of the store.
//!
//! SQLite has one writer at a time; queueing on this connection's lock avoids
//! SQLITE_BUSY between our own writers. It is not a one-connection sqlx pool: a pool
//! hands a connection back through a task of its own that pings it first, and
//! `Transaction::begin` with a custom statement asks the connection whether it is in a
//! transaction: three round trips to the connection's thread around every
//! transaction, which made "begin" a fifth of a unary group's time (issue 13). Here
//! a transaction is `BEGIN IMMEDIATE` … `COMMIT`, one round trip each.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Executor, SqliteConnection};
use tokio::sync::{Mutex, MutexGuard, OwnedMutexGuard};

/// The write connection, and whether a transaction on it may still be open (one was
/// dropped or failed before its commit): the next user rolls it back first.
pub(crate) struct Slot {
    conn: SqliteConnection,
    unfinished: bool,
}

impl Slot {
    /// Rolls back what a dropped or failed transaction left open, if anything.
    async fn roll_back_unfinished(&mut self) {
        if self.unfinished {
            // "no transaction is active" when it never began or the failure ended
            // it: nothing to undo either way.
            if let Err(e) = self.conn.execute("ROLLBACK").await
                && !e.to_string().contains("no transaction is active")
            {
                tracing::warn!(error = %e, "cannot roll back an unfinished write transaction");
            }
            self.unfinished = false;
        }
    }
}

impl Deref for Slot {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl DerefMut for Slot {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

/// The store's write connection; clones share it.
#[derive(Clone)]
pub(crate) struct Writer(Arc<Mutex<Slot>>);

impl Writer {
    pub async fn connect(opts: &SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        let conn = opts.connect().await?;
        Ok(Self(Arc::new(Mutex::new(Slot {
            conn,
            unfinished: false,
        }))))
    }

    /// The connection, outside any transaction, for single statements (each its own
    /// transaction), once the writers before have finished.
    pub async fn lock(&self) -> MutexGuard<'_, Slot> {
        let mut slot = self.0.lock().await;
        slot.roll_back_unfinished().await;
        slot
    }

    /// A write transaction that holds the write lock from its first statement
    /// (`BEGIN IMMEDIATE`). A deferred one reads first and upgrades at its first write,
    /// which SQLite refuses at once (SQLITE_BUSY_SNAPSHOT, code 517, no busy wait) when
    /// the database changed since the read began: seen once in a 1,000,000-order
    /// submit with forwarding on. Dropped without `commit`, it is rolled back before
    /// the connection's next use.
    ///
    /// Fails with `PoolTimedOut` when the writers before have not finished within
    /// [`WAIT`].
    pub async fn begin(&self) -> Result<WriteTx, sqlx::Error> {
        let mut slot = tokio::time::timeout(WAIT, self.0.clone().lock_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?;
        slot.roll_back_unfinished().await;
        slot.unfinished = true;
        slot.conn.execute("BEGIN IMMEDIATE").await?;
        Ok(WriteTx {
            slot,
            writer: self.clone(),
        })
    }
}

/// How long a write transaction waits for the writers before it, at most.
const WAIT: Duration = Duration::from_secs(30);

/// An open write transaction; derefs to the connection it runs on.
pub(crate) struct WriteTx {
    slot: OwnedMutexGuard<Slot>,
    writer: Writer,
}

impl WriteTx {
    /// Commits. On failure the transaction is rolled back before the connection's next
    /// use (SQLite may leave it open, for instance when the commit was busy).
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.slot.conn.execute("COMMIT").await?;
        self.slot.unfinished = false;
        Ok(())
    }
}

/// An unfinished transaction still holds SQLite's write lock: a task takes the
/// connection right after it and rolls it back, so the lock is not kept until the
/// gateway's next write (an external tool would find the database locked meanwhile).
/// A writer already waiting may take the connection first; it rolls back itself.
impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.slot.unfinished
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let writer = self.writer.clone();
            runtime.spawn(async move {
                drop(writer.lock().await);
            });
        }
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.slot.conn
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.slot.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    async fn writer(dir: &tempfile::TempDir) -> Writer {
        let opts = SqliteConnectOptions::from_str(&format!(
            "sqlite:{}",
            dir.path().join("w.db").display()
        ))
        .expect("options")
        .create_if_missing(true);
        let w = Writer::connect(&opts).await.expect("connect");
        sqlx::query("CREATE TABLE t (v INTEGER PRIMARY KEY)")
            .execute(&mut **w.lock().await)
            .await
            .expect("table");
        w
    }

    async fn values(w: &Writer) -> Vec<i64> {
        sqlx::query_scalar("SELECT v FROM t ORDER BY v")
            .fetch_all(&mut **w.lock().await)
            .await
            .expect("select")
    }

    async fn insert(tx: &mut WriteTx, v: i64) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO t (v) VALUES (?1)")
            .bind(v)
            .execute(&mut **tx)
            .await
            .map(|_| ())
    }

    #[tokio::test]
    async fn a_transaction_dropped_or_failed_before_its_commit_leaves_nothing_and_the_next_one_runs()
     {
        let dir = tempfile::tempdir().expect("dir");
        let w = writer(&dir).await;

        let mut tx = w.begin().await.expect("begin");
        insert(&mut tx, 1).await.expect("insert");
        tx.commit().await.expect("commit");

        // Dropped after a write: rolled back before the next use.
        let mut tx = w.begin().await.expect("begin");
        insert(&mut tx, 2).await.expect("insert");
        drop(tx);
        assert_eq!(values(&w).await, vec![1]);

        // A failed statement, then dropped: the next transaction begins and commits.
        let mut tx = w.begin().await.expect("begin");
        insert(&mut tx, 3).await.expect("insert");
        assert!(insert(&mut tx, 1).await.is_err(), "duplicate key");
        drop(tx);
        let mut tx = w.begin().await.expect("a transaction after a dropped one");
        insert(&mut tx, 4).await.expect("insert");
        tx.commit().await.expect("commit");
        assert_eq!(values(&w).await, vec![1, 4]);

        // Dropped while its statement is still on the connection's thread (a caller
        // that went away mid-await): the statement finishes, then is rolled back.
        let mut tx = w.begin().await.expect("begin");
        {
            let pending = insert(&mut tx, 5);
            tokio::pin!(pending);
            let _ = futures::poll!(pending.as_mut());
        }
        drop(tx);
        assert_eq!(values(&w).await, vec![1, 4]);
    }

    #[tokio::test]
    async fn a_dropped_transaction_releases_the_write_lock_without_waiting_for_the_next_write() {
        let dir = tempfile::tempdir().expect("dir");
        let w = writer(&dir).await;
        let mut tx = w.begin().await.expect("begin");
        insert(&mut tx, 1).await.expect("insert");
        drop(tx);
        // Another connection (an operator's tool) gets the write lock while the
        // writer stays idle; it waits up to 5 s for it.
        let mut other = SqliteConnectOptions::from_str(&format!(
            "sqlite:{}",
            dir.path().join("w.db").display()
        ))
        .expect("options")
        .busy_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect");
        let started = std::time::Instant::now();
        other
            .execute("BEGIN IMMEDIATE")
            .await
            .expect("the write lock is released");
        other.execute("ROLLBACK").await.expect("rollback");
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!(values(&w).await, Vec::<i64>::new());
    }
}
