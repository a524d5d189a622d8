//! The default [`Store`]: one SQLite file in WAL mode.
//!
//! WAL lets room loads read while the group-commit writer appends. `synchronous` follows
//! [`Durability`]: `FULL` fsyncs every commit (survives power loss), `NORMAL` survives a killed
//! process but may lose the last commits on power loss. Group commit keeps either cheap: one
//! transaction per batch of updates, however many sockets produced them.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use huddle_protocol::RoomName;
use parking_lot::Mutex;
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
///
/// Reads (loads), migrations and checkpoints go through sqlx's async pool. Writes go through one
/// synchronous `rusqlite` connection instead, and with `--durability process` a commit runs
/// right on the calling task: a WAL append without fsync takes tens of microseconds, while
/// sqlx hands every statement to its worker thread and back — two thread wake-ups per group
/// commit, which measured as the largest cost of relaying an update (docs/benchmarks.md).
/// Commits that may wait (fsync under `full`, or a compaction holding the connection) move to
/// the blocking pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Loads, checkpoints and tests.
    pool: SqlitePool,
    /// The one connection that writes (appends and compactions). Always the same connection,
    /// so its page cache stays valid between commits.
    writer: Arc<Mutex<rusqlite::Connection>>,
    durability: Durability,
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
        // Readers load rooms concurrently with the writer (WAL readers never block it).
        let pool = SqlitePoolOptions::new().max_connections(3).connect_with(options).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let writer = open_writer(&data_dir.join(DB_FILE), durability)?;
        let writer = Arc::new(Mutex::new(writer));
        let wal = data_dir.join(format!("{DB_FILE}-wal"));
        tokio::spawn(checkpoint_loop(pool.clone(), Arc::clone(&writer), wal));
        Ok(Self { pool, writer, durability })
    }

    /// The connection pool, for tests that need to look at or damage the raw rows.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// The write connection, set up like the pool's (WAL, durability, no automatic checkpoints).
fn open_writer(path: &Path, durability: Durability) -> Result<rusqlite::Connection, StoreError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Process => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// One transaction appending `batch`.
fn append_on(conn: &mut rusqlite::Connection, batch: &[LogEntry]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut insert =
            tx.prepare_cached("INSERT INTO room_updates (room, seq, data) VALUES (?1, ?2, ?3)")?;
        for entry in batch {
            insert.execute(rusqlite::params![
                entry.room.as_str(),
                seq_to(entry.seq),
                &entry.update[..]
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// One transaction storing a snapshot and dropping the log it covers (unless a newer snapshot
/// is already there).
fn compact_on(
    conn: &mut rusqlite::Connection,
    room: &RoomName,
    upto: Seq,
    snapshot: &[u8],
    state_vector: &[u8],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let written = tx.execute(
        "INSERT INTO room_snapshots \
         (room, seq, data, checksum, state_vector, state_vector_checksum) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (room) DO UPDATE SET seq = excluded.seq, data = excluded.data, \
         checksum = excluded.checksum, state_vector = excluded.state_vector, \
         state_vector_checksum = excluded.state_vector_checksum \
         WHERE excluded.seq > room_snapshots.seq",
        rusqlite::params![
            room.as_str(),
            seq_to(upto),
            snapshot,
            i64::from(crc32fast::hash(snapshot)),
            state_vector,
            i64::from(crc32fast::hash(state_vector))
        ],
    )?;
    if written > 0 {
        tx.execute(
            "DELETE FROM room_updates WHERE room = ?1 AND seq <= ?2",
            rusqlite::params![room.as_str(), seq_to(upto)],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// How often the write-ahead log is copied back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// WAL size above which the writer itself checkpoints and rewinds the log.
const WAL_REWIND_BYTES: u64 = 64 << 20;

/// Copies the write-ahead log into the database file now and then, on a pool connection. A
/// passive checkpoint never blocks the group-commit writer (WAL lets both run at once), so the
/// log stays short without any commit paying for it. But SQLite only rewinds the log when a
/// write starts after a *complete* checkpoint, which steady writing can keep from ever
/// happening; so once the log passes [`WAL_REWIND_BYTES`], the checkpoint runs on the writer
/// (appends wait for it meanwhile) and truncates the log. Ends when the pool is closed.
async fn checkpoint_loop(
    pool: SqlitePool,
    writer: Arc<Mutex<rusqlite::Connection>>,
    wal: std::path::PathBuf,
) {
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
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_REWIND_BYTES) {
            let writer = Arc::clone(&writer);
            let rewound = tokio::task::spawn_blocking(move || {
                writer.lock().execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            })
            .await;
            if !matches!(rewound, Ok(Ok(()))) {
                tracing::warn!("rewinding the WAL failed; will retry");
            }
        }
    }
}

fn seq_from(room: &RoomName, value: i64) -> Result<Seq, StoreError> {
    u64::try_from(value).map(Seq).map_err(|_| StoreError::Corrupt {
        room: room.clone(),
        detail: format!("negative seq {value}"),
    })
}

fn seq_to(seq: Seq) -> i64 {
    // Sequence numbers count updates; they cannot approach 2^63.
    i64::try_from(seq.0).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self, room: &RoomName) -> Result<StoredRoom, StoreError> {
        let mut tx = self.pool.begin().await?;
        let snapshot = sqlx::query(
            "SELECT seq, data, checksum, state_vector, state_vector_checksum \
             FROM room_snapshots WHERE room = ?",
        )
        .bind(room.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let mut snapshot_checked = false;
        let mut snapshot_state_vector = None;
        let snapshot = match snapshot {
            Some(row) => {
                let data = row.try_get::<Vec<u8>, _>("data")?;
                let checksum = row.try_get::<Option<i64>, _>("checksum")?;
                snapshot_checked = checksum == Some(i64::from(crc32fast::hash(&data)));
                let sv = row.try_get::<Option<Vec<u8>>, _>("state_vector")?;
                let sv_checksum = row.try_get::<Option<i64>, _>("state_vector_checksum")?;
                snapshot_state_vector = sv.filter(|sv| {
                    snapshot_checked && sv_checksum == Some(i64::from(crc32fast::hash(sv)))
                });
                Some((seq_from(room, row.try_get("seq")?)?, data))
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
        Ok(StoredRoom { snapshot, snapshot_checked, snapshot_state_vector, log })
    }

    async fn append(&self, batch: &[LogEntry]) -> Result<(), StoreError> {
        if self.durability == Durability::Process
            && let Some(mut conn) = self.writer.try_lock()
        {
            return append_on(&mut conn, batch);
        }
        let writer = Arc::clone(&self.writer);
        let batch = batch.to_vec();
        tokio::task::spawn_blocking(move || append_on(&mut writer.lock(), &batch)).await?
    }

    async fn compact(
        &self,
        room: &RoomName,
        upto: Seq,
        snapshot: Vec<u8>,
        state_vector: Vec<u8>,
    ) -> Result<(), StoreError> {
        let writer = Arc::clone(&self.writer);
        let room = room.clone();
        tokio::task::spawn_blocking(move || {
            compact_on(&mut writer.lock(), &room, upto, &snapshot, &state_vector)
        })
        .await?
    }

    async fn set_snapshot_state_vector(
        &self,
        room: &RoomName,
        seq: Seq,
        state_vector: Vec<u8>,
    ) -> Result<(), StoreError> {
        let writer = Arc::clone(&self.writer);
        let room = room.clone();
        tokio::task::spawn_blocking(move || {
            writer.lock().execute(
                "UPDATE room_snapshots SET state_vector = ?1, state_vector_checksum = ?2 \
                 WHERE room = ?3 AND seq = ?4",
                rusqlite::params![
                    state_vector,
                    i64::from(crc32fast::hash(&state_vector)),
                    room.as_str(),
                    seq_to(seq)
                ],
            )?;
            Ok(())
        })
        .await?
    }

    async fn close(&self) {
        let writer = Arc::clone(&self.writer);
        let checkpoint = tokio::task::spawn_blocking(move || {
            writer.lock().execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        })
        .await;
        if !matches!(checkpoint, Ok(Ok(()))) {
            tracing::warn!("final WAL checkpoint failed; the WAL still holds everything");
        }
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
        store.compact(&room, Seq(2), b"snap2".to_vec(), b"sv2".to_vec()).await.expect("compact");
        let loaded = store.load(&room).await.expect("load");
        assert_eq!(loaded.snapshot, Some((Seq(2), b"snap2".to_vec())));
        assert!(loaded.snapshot_checked);
        assert_eq!(loaded.snapshot_state_vector, Some(b"sv2".to_vec()));
        assert_eq!(loaded.log, vec![(Seq(3), vec![3; 3])]);
        assert_eq!(loaded.last_seq(), Seq(3));
        // An older snapshot (a previous incarnation finishing late) changes nothing.
        store.compact(&room, Seq(1), b"snap1".to_vec(), b"sv1".to_vec()).await.expect("compact");
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
