//! The default [`Store`]: one SQLite file in WAL mode.
//!
//! WAL lets room loads read while the group-commit writer appends. `synchronous` follows
//! [`Durability`]: `FULL` fsyncs every commit (survives power loss), `NORMAL` survives a killed
//! process but may lose the last commits on power loss. Group commit keeps either cheap: one
//! transaction per batch of updates, however many sockets produced them.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use huddle_protocol::RoomName;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{LogEntry, Seq, Store, StoreError, StoredRoom};

/// How hard a commit tries to be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// fsync on every commit: nothing acknowledged is lost even on power loss.
    Full,
    /// Commits reach the OS before they are acknowledged: nothing is lost when the server
    /// process dies (even `kill -9`), but a power cut may lose the last moments. The default:
    /// an fsync per commit put the disk's latency (up to 200 ms here) on every edit.
    #[default]
    Process,
}

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "huddle.sqlite3";

/// Rooms in one SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Loads, checkpoints and tests.
    pool: SqlitePool,
    /// The one connection that writes (appends and compactions). Always the same connection,
    /// so its page cache stays valid between commits instead of being re-read after another
    /// connection wrote.
    writer: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) `huddle.sqlite3` in `data_dir` and brings its schema up to date.
    ///
    /// # Errors
    /// [`StoreError`] if the directory cannot be created or the database cannot be opened.
    pub async fn open(data_dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::DataDir { path: data_dir.to_owned(), source })?;
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(data_dir.join(DB_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Process => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10))
            // Commits never checkpoint: an automatic checkpoint runs inside the commit that
            // crosses the threshold and, with fsyncs, stalled every update behind it for up to
            // 200 ms. A background task checkpoints instead (see `checkpoint_loop`).
            .pragma("wal_autocheckpoint", "0");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        // Readers load rooms concurrently with the writer (WAL readers never block it).
        let pool = SqlitePoolOptions::new().max_connections(3).connect_with(options).await?;
        tokio::spawn(checkpoint_loop(pool.clone()));
        Ok(Self { pool, writer })
    }

    /// The connection pool, for tests that need to look at or damage the raw rows.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// How often the write-ahead log is copied back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Copies the write-ahead log into the database file now and then, on its own connection.
/// A passive checkpoint never blocks the group-commit writer (WAL lets both run at once), so
/// the log stays short without any commit paying for it. Ends when the pool is closed.
async fn checkpoint_loop(pool: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
        }
    }
}

fn seq_from(room: &RoomName, value: i64) -> Result<Seq, StoreError> {
    u64::try_from(value).map(Seq).map_err(|_| StoreError::Corrupt {
        room: room.clone(),
        detail: format!("negative seq {value}"),
    })
}

/// Rows per INSERT statement: three bound values each, well under SQLite's limit of 32,766
/// variables per statement.
const INSERT_CHUNK_ROWS: usize = 1000;

/// `INSERT INTO room_updates … VALUES (…), (…), …` for `rows`.
fn insert_rows(rows: &[LogEntry]) -> sqlx::QueryBuilder<sqlx::Sqlite> {
    let mut query = sqlx::QueryBuilder::new("INSERT INTO room_updates (room, seq, data) ");
    query.push_values(rows, |mut row, entry| {
        row.push_bind(entry.room.as_str().to_owned())
            .push_bind(seq_to(entry.seq))
            .push_bind(entry.update.to_vec());
    });
    query
}

fn seq_to(seq: Seq) -> i64 {
    // Sequence numbers count updates; they cannot approach 2^63.
    i64::try_from(seq.0).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self, room: &RoomName) -> Result<StoredRoom, StoreError> {
        let mut tx = self.pool.begin().await?;
        let snapshot = sqlx::query("SELECT seq, data FROM room_snapshots WHERE room = ?")
            .bind(room.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let snapshot = match snapshot {
            Some(row) => {
                Some((seq_from(room, row.try_get("seq")?)?, row.try_get::<Vec<u8>, _>("data")?))
            }
            None => None,
        };
        let after = snapshot.as_ref().map_or(0, |(s, _)| seq_to(*s));
        let rows = sqlx::query(
            "SELECT seq, data FROM room_updates WHERE room = ? AND seq > ? ORDER BY seq",
        )
        .bind(room.as_str())
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut log = Vec::with_capacity(rows.len());
        for row in rows {
            log.push((seq_from(room, row.try_get("seq")?)?, row.try_get::<Vec<u8>, _>("data")?));
        }
        Ok(StoredRoom { snapshot, log })
    }

    async fn append(&self, batch: &[LogEntry]) -> Result<(), StoreError> {
        // One multi-row INSERT per chunk: every statement is a round trip to sqlx's worker
        // thread, and a batch is usually one chunk, so usually one statement (atomic by itself).
        let mut chunks = batch.chunks(INSERT_CHUNK_ROWS);
        if batch.len() <= INSERT_CHUNK_ROWS {
            if let Some(chunk) = chunks.next() {
                insert_rows(chunk).build().execute(&self.writer).await?;
            }
            return Ok(());
        }
        let mut tx = self.writer.begin().await?;
        for chunk in chunks {
            insert_rows(chunk).build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn compact(
        &self,
        room: &RoomName,
        upto: Seq,
        snapshot: Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let written = sqlx::query(
            "INSERT INTO room_snapshots (room, seq, data) VALUES (?1, ?2, ?3) \
             ON CONFLICT (room) DO UPDATE SET seq = excluded.seq, data = excluded.data \
             WHERE excluded.seq > room_snapshots.seq",
        )
        .bind(room.as_str())
        .bind(seq_to(upto))
        .bind(snapshot)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if written > 0 {
            sqlx::query("DELETE FROM room_updates WHERE room = ? AND seq <= ?")
                .bind(room.as_str())
                .bind(seq_to(upto))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn close(&self) {
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await {
            tracing::warn!(error = %e, "final WAL checkpoint failed; the WAL still holds everything");
        }
        self.writer.close().await;
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(room: &RoomName, seq: u64) -> LogEntry {
        LogEntry { room: room.clone(), seq: Seq(seq), update: Bytes::from(vec![seq as u8; 3]) }
    }

    #[tokio::test]
    async fn append_compact_load_and_never_regress_a_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path(), Durability::Process).await.expect("opens");
        let room = RoomName::parse("r").expect("valid");
        store.append(&[entry(&room, 1), entry(&room, 2), entry(&room, 3)]).await.expect("append");
        store.compact(&room, Seq(2), b"snap2".to_vec()).await.expect("compact");
        let loaded = store.load(&room).await.expect("load");
        assert_eq!(loaded.snapshot, Some((Seq(2), b"snap2".to_vec())));
        assert_eq!(loaded.log, vec![(Seq(3), vec![3; 3])]);
        assert_eq!(loaded.last_seq(), Seq(3));
        // An older snapshot (a previous incarnation finishing late) changes nothing.
        store.compact(&room, Seq(1), b"snap1".to_vec()).await.expect("compact");
        assert_eq!(
            store.load(&room).await.expect("load").snapshot,
            Some((Seq(2), b"snap2".to_vec()))
        );
        store.close().await;
        // Reopening finds the same data.
        let store = SqliteStore::open(dir.path(), Durability::Full).await.expect("reopens");
        assert_eq!(store.load(&room).await.expect("load").last_seq(), Seq(3));
        assert_eq!(
            store.load(&RoomName::parse("other").expect("v")).await.expect("load").last_seq(),
            Seq(0)
        );
    }
}
