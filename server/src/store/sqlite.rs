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
use bytes::Bytes;
use huddle_protocol::RoomName;
use parking_lot::Mutex;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::journal::{self, AppendError, Appender};
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
/// synchronous `rusqlite` connection instead: sqlx hands every statement to its worker thread
/// and back — two thread wake-ups per group commit, which measured as the largest cost of
/// relaying an update (docs/benchmarks.md). With `--durability process` an append goes to the
/// update journal (see [`super::journal`]) and reaches the database in the background, many
/// entries per transaction; with `full` it is committed (and fsynced) on the blocking pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Loads, checkpoints and tests.
    pool: SqlitePool,
    /// The one connection that writes (appends and compactions). Always the same connection,
    /// so its page cache stays valid between commits.
    writer: Arc<Mutex<rusqlite::Connection>>,
    durability: Durability,
    /// The update journal (process durability only).
    journal: Option<Arc<Journal>>,
}

/// Longest an appended entry waits in the journal before it is moved into the database; the
/// wait gathers many entries into one transaction. Nothing waits for a move (loads read the
/// entries not moved yet from memory, and a restart replays the journal file), so the delay
/// only sets how many entries share a transaction, a new journal file and a hand-off to the
/// blocking pool: 250 ms rather than 50 ms took 8–10 % off the server's CPU per delivered
/// update in `fanout` (docs/benchmarks.md, session 13).
const MOVE_DELAY: Duration = Duration::from_millis(250);

/// Most bytes kept in memory for the journal's entries (appended, not yet in the database),
/// each entry counted with [`ENTRY_OVERHEAD`]. Past this, appends fail (and rooms with them)
/// rather than memory growing without bound while the database is failing or slower than the
/// updates coming in.
const MAX_HELD_BYTES: usize = 256 << 20;

/// Memory an entry holds besides its update's bytes: the entry itself in `pending` and the
/// allocation behind its `Bytes`. Counted so that a flood of tiny updates meets
/// [`MAX_HELD_BYTES`] as soon as big ones would.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<LogEntry>() + 32;

/// The update journal and the entries in it that are not in the database yet.
#[derive(Debug)]
struct Journal {
    dir: std::path::PathBuf,
    state: Mutex<JournalState>,
    /// Poked when `pending` stops being empty.
    wake: tokio::sync::Notify,
    /// Held while entries are being moved into the database.
    mover: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct JournalState {
    /// The file appends go to; `None` after a write to it failed and could not be undone (the
    /// next rotation starts a new one; meanwhile appends are committed to the database).
    appender: Option<Appender>,
    /// The number of that file.
    number: u64,
    /// Entries in that file.
    pending: Vec<LogEntry>,
    /// Entries being moved into the database, and the number of the file that holds them.
    moving: Arc<Vec<LogEntry>>,
    moving_file: Option<u64>,
    /// Memory held by `pending` and `moving` (see [`held_bytes`]).
    held_bytes: usize,
    /// The file a write failed in and could not be cut back (`appender` is `None` since).
    /// It may end in records that were never acknowledged, under sequence numbers that the
    /// failed room reuses once it reloads; were the reused ones appended to a newer file and
    /// the server killed before the move, replay (oldest file first, the first copy of a
    /// sequence number wins) would keep the stale record and drop the relayed one. So no new
    /// file is started until this one's entries are in the database and it is deleted; appends
    /// are committed to the database meanwhile, ahead of anything replay could bring back.
    broken_file: Option<u64>,
}

/// Memory `entries` hold while they wait in the journal.
fn held_bytes(entries: &[LogEntry]) -> usize {
    entries.iter().map(|e| e.update.len() + ENTRY_OVERHEAD).sum()
}

impl Journal {
    /// Moves whatever journal files a previous run left into the database (a server that was
    /// killed, or ran with process durability before), then starts a new file after them.
    fn open(
        dir: &Path,
        writer: &Mutex<rusqlite::Connection>,
    ) -> Result<(JournalState, Vec<std::path::PathBuf>), StoreError> {
        let files = journal::existing(dir).map_err(StoreError::Journal)?;
        let mut entries = Vec::new();
        let mut replayed_files = Vec::with_capacity(files.len());
        for (_, path) in &files {
            let bytes = std::fs::read(path).map_err(StoreError::Journal)?;
            let replayed = journal::decode(&bytes);
            if replayed.damaged {
                // What follows the damage may have been relayed: keep the file for whoever
                // can recover it, out of the way of the next replay and of deletion.
                let mut aside = path.clone().into_os_string();
                aside.push(".damaged");
                std::fs::rename(path, &aside).map_err(StoreError::Journal)?;
                tracing::error!(
                    file = %std::path::Path::new(&aside).display(),
                    replayed = replayed.entries.len(),
                    bytes_after = replayed.torn_bytes,
                    "update journal damaged (a record fails its checksum with more after it); the records before it were replayed, the file is kept under this name, and updates after the damage are missing from their rooms"
                );
            } else {
                if replayed.torn_bytes > 0 {
                    tracing::warn!(
                        file = %path.display(),
                        bytes = replayed.torn_bytes,
                        "update journal ends in a write cut short by a crash; that write was never acknowledged"
                    );
                }
                replayed_files.push(path.clone());
            }
            entries.extend(replayed.entries);
        }
        if !entries.is_empty() {
            tracing::info!(entries = entries.len(), "moving the update journal into the database");
            insert_missing_on(&mut writer.lock(), &entries)?;
        }
        let number = files.last().map_or(0, |(n, _)| n + 1);
        let file = journal::create(dir, number).map_err(StoreError::Journal)?;
        let state = JournalState {
            appender: Some(Appender::new(file)),
            number,
            pending: Vec::new(),
            moving: Arc::new(Vec::new()),
            moving_file: None,
            held_bytes: 0,
            broken_file: None,
        };
        Ok((state, replayed_files))
    }

    /// Appends `batch` to the journal file. `Ok(false)`: there is no file to append to (a
    /// failed write could not be undone); commit the batch to the database instead.
    fn append(&self, batch: &[LogEntry]) -> Result<bool, StoreError> {
        let mut state = self.state.lock();
        if state.held_bytes > MAX_HELD_BYTES {
            return Err(StoreError::Behind { held_bytes: state.held_bytes });
        }
        let Some(appender) = state.appender.as_mut() else {
            // The mover starts a new file (see `move_round`).
            drop(state);
            self.wake.notify_one();
            return Ok(false);
        };
        match appender.append(batch) {
            Ok(()) => {}
            Err(AppendError::Failed(e)) => return Err(StoreError::Journal(e)),
            Err(AppendError::Broken(e)) => {
                tracing::error!(error = %e, "update journal left after a failed write");
                state.appender = None;
                state.broken_file = Some(state.number);
                return Err(StoreError::Journal(e));
            }
        }
        let was_empty = state.pending.is_empty();
        state.held_bytes += held_bytes(batch);
        state.pending.extend_from_slice(batch);
        drop(state);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(true)
    }

    /// `room`'s entries that are in the journal and maybe not in the database yet.
    fn entries_of(&self, room: &RoomName) -> Vec<(Seq, Vec<u8>)> {
        let state = self.state.lock();
        state
            .moving
            .iter()
            .chain(&state.pending)
            .filter(|e| e.room == *room)
            .map(|e| (e.seq, e.update.to_vec()))
            .collect()
    }

    fn is_empty(&self) -> bool {
        let state = self.state.lock();
        state.pending.is_empty() && state.moving.is_empty()
    }

    /// Moves the entries appended so far into the database in one transaction: appends go to
    /// a new file meanwhile, and the old one is deleted once its entries are committed. Entries
    /// whose move failed are retried first next time.
    async fn move_round(
        &self,
        writer: &Arc<Mutex<rusqlite::Connection>>,
    ) -> Result<(), StoreError> {
        let _moving = self.mover.lock().await;
        let (batch, file) = {
            let mut state = self.state.lock();
            if state.moving.is_empty() {
                if state.pending.is_empty() && state.appender.is_some() {
                    return Ok(());
                }
                let next = state.number + 1;
                if state.appender.is_some() {
                    let file = journal::create(&self.dir, next).map_err(StoreError::Journal)?;
                    state.appender = Some(Appender::new(file));
                }
                let old = std::mem::replace(&mut state.number, next);
                state.moving = Arc::new(std::mem::take(&mut state.pending));
                state.moving_file = Some(old);
            }
            (Arc::clone(&state.moving), state.moving_file)
        };
        let to_db = Arc::clone(&batch);
        let writer = Arc::clone(writer);
        tokio::task::spawn_blocking(move || insert_missing_on(&mut writer.lock(), &to_db))
            .await??;
        {
            let mut state = self.state.lock();
            state.held_bytes -= held_bytes(&batch);
            state.moving = Arc::new(Vec::new());
            state.moving_file = None;
        }
        if let Some(number) = file
            && let Err(e) = remove_journal_file(&self.dir, number)
        {
            // Harmless: its entries are in the database, and replaying them skips them.
            tracing::warn!(error = %e, "could not delete a moved update journal file");
        }
        self.reopen_after_broken(file)
    }

    /// After a write that could not be undone: once the broken file's entries are in the
    /// database (files are moved in order, so a moved file numbered at least as high says so)
    /// and the file is gone, starts a new file for appends (see `broken_file`).
    fn reopen_after_broken(&self, moved: Option<u64>) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        let Some(broken) = state.broken_file else { return Ok(()) };
        if moved.is_none_or(|moved| moved < broken) {
            return Ok(());
        }
        remove_journal_file(&self.dir, broken).map_err(StoreError::Journal)?;
        // Still broken until a new file is there: if it cannot be created (the disk still
        // full), the next round tries again.
        let file = journal::create(&self.dir, state.number).map_err(StoreError::Journal)?;
        state.appender = Some(Appender::new(file));
        state.broken_file = None;
        Ok(())
    }
}

/// Deletes journal file `number`; one that is already gone is not an error.
fn remove_journal_file(dir: &Path, number: u64) -> std::io::Result<()> {
    match std::fs::remove_file(journal::path(dir, number)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Moves journal entries into the database: woken by the first append after a round, it waits
/// [`MOVE_DELAY`] to gather more, then moves them. Ends when the pool is closed.
async fn move_loop(
    journal: Arc<Journal>,
    pool: SqlitePool,
    writer: Arc<Mutex<rusqlite::Connection>>,
) {
    loop {
        journal.wake.notified().await;
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(MOVE_DELAY).await;
        while let Err(e) = journal.move_round(&writer).await {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "moving the update journal into the database failed; will retry");
            tokio::time::sleep(CHECKPOINT_EVERY).await;
        }
    }
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
        match sqlx::migrate!("./migrations").run(&pool).await {
            // A schema this binary does not know: written by a newer Huddle.
            Err(sqlx::migrate::MigrateError::VersionMissing(version)) => {
                return Err(StoreError::NewerSchema { version });
            }
            migrated => migrated?,
        }
        let writer = open_writer(&data_dir.join(DB_FILE), durability)?;
        let writer = Arc::new(Mutex::new(writer));
        // Always replayed, whatever the durability now: a run with process durability before
        // may have left entries only there.
        let (state, replayed) = Journal::open(data_dir, &writer)?;
        let journal = match durability {
            Durability::Process => {
                let journal = Arc::new(Journal {
                    dir: data_dir.to_owned(),
                    state: Mutex::new(state),
                    wake: tokio::sync::Notify::new(),
                    mover: tokio::sync::Mutex::new(()),
                });
                tokio::spawn(move_loop(Arc::clone(&journal), pool.clone(), Arc::clone(&writer)));
                Some(journal)
            }
            Durability::Full => {
                // Appends are committed to the database directly: no journal file is kept.
                let _ = std::fs::remove_file(journal::path(data_dir, state.number));
                None
            }
        };
        // The replayed files' entries are committed now.
        for path in replayed {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "could not delete a replayed update journal file");
            }
        }
        let wal = data_dir.join(format!("{DB_FILE}-wal"));
        tokio::spawn(checkpoint_loop(pool.clone(), Arc::clone(&writer), wal));
        Ok(Self { pool, writer, durability, journal })
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

/// One transaction appending `entries`, skipping any already stored (journal entries may have
/// been moved before a crash; a retried batch is stored once).
fn insert_missing_on(
    conn: &mut rusqlite::Connection,
    entries: &[LogEntry],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO room_updates (room, seq, data) VALUES (?1, ?2, ?3)",
        )?;
        for entry in entries {
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
        // Read before the database: an entry moved meanwhile is then in one or the other.
        let journaled = self.journal.as_ref().map(|j| j.entries_of(room)).unwrap_or_default();
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
        let mut log = Vec::with_capacity(rows.len() + journaled.len());
        for row in rows {
            log.push((seq_from(room, row.try_get("seq")?)?, row.try_get::<Vec<u8>, _>("data")?));
        }
        if !journaled.is_empty() {
            let stored: std::collections::HashSet<Seq> = log.iter().map(|(s, _)| *s).collect();
            let after = Seq(u64::try_from(after).unwrap_or(0));
            log.extend(journaled.into_iter().filter(|(s, _)| *s > after && !stored.contains(s)));
            log.sort_by_key(|(s, _)| *s);
        }
        Ok(StoredRoom { snapshot, snapshot_checked, snapshot_state_vector, log })
    }

    async fn append(&self, batch: &[LogEntry]) -> Result<(), StoreError> {
        if let Some(journal) = &self.journal
            && journal.append(batch)?
        {
            return Ok(());
        }
        if self.durability == Durability::Process
            && let Some(mut conn) = self.writer.try_lock()
        {
            return insert_missing_on(&mut conn, batch);
        }
        let writer = Arc::clone(&self.writer);
        let batch = batch.to_vec();
        tokio::task::spawn_blocking(move || insert_missing_on(&mut writer.lock(), &batch)).await?
    }

    async fn compact(
        &self,
        room: &RoomName,
        upto: Seq,
        snapshot: Bytes,
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
        if let Some(journal) = &self.journal {
            // Nothing appends any more: two rounds move everything (the first may only finish
            // one that failed before).
            for _ in 0..2 {
                if let Err(e) = journal.move_round(&self.writer).await {
                    tracing::warn!(error = %e, "moving the update journal into the database failed");
                }
            }
            if journal.is_empty() {
                let number = journal.state.lock().number;
                let _ = std::fs::remove_file(journal::path(&journal.dir, number));
            } else {
                tracing::warn!(
                    "the update journal is kept; the next start moves it into the database"
                );
            }
        }
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
        store
            .compact(&room, Seq(2), Bytes::from_static(b"snap2"), b"sv2".to_vec())
            .await
            .expect("compact");
        let loaded = store.load(&room).await.expect("load");
        assert_eq!(loaded.snapshot, Some((Seq(2), b"snap2".to_vec())));
        assert!(loaded.snapshot_checked);
        assert_eq!(loaded.snapshot_state_vector, Some(b"sv2".to_vec()));
        assert_eq!(loaded.log, vec![(Seq(3), vec![3; 3])]);
        assert_eq!(loaded.last_seq(), Seq(3));
        // An older snapshot (a previous incarnation finishing late) changes nothing.
        store
            .compact(&room, Seq(1), Bytes::from_static(b"snap1"), b"sv1".to_vec())
            .await
            .expect("compact");
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

    async fn raw_rows(store: &SqliteStore, room: &RoomName) -> Vec<i64> {
        sqlx::query("SELECT seq FROM room_updates WHERE room = ? ORDER BY seq")
            .bind(room.as_str())
            .fetch_all(store.pool())
            .await
            .expect("query")
            .into_iter()
            .map(|r| r.get::<i64, _>("seq"))
            .collect()
    }

    /// What a server killed before its journal was moved leaves behind: a journal file (here
    /// with a last write cut short), entries of which may already be in the database.
    #[tokio::test]
    async fn a_journal_left_by_a_killed_server_is_moved_into_the_database_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let room = RoomName::parse("r").expect("valid");
        {
            let store = SqliteStore::open(dir.path(), Durability::Full).await.expect("opens");
            store.append(&[entry(&room, 1)]).await.expect("append");
            store.close().await;
        }
        let mut bytes = Vec::new();
        journal::encode(&[entry(&room, 1), entry(&room, 2), entry(&room, 3)], &mut bytes);
        let mut torn = Vec::new();
        journal::encode(&[entry(&room, 4)], &mut torn);
        bytes.extend_from_slice(&torn[..torn.len() - 1]);
        std::fs::write(journal::path(dir.path(), 7), &bytes).expect("write");

        let store = SqliteStore::open(dir.path(), Durability::Process).await.expect("opens");
        assert_eq!(raw_rows(&store, &room).await, vec![1, 2, 3], "moved, the torn write left out");
        let loaded = store.load(&room).await.expect("load");
        assert_eq!(loaded.log.iter().map(|(s, _)| s.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(!journal::path(dir.path(), 7).exists(), "the replayed file is deleted");
        // Appends go on after the replayed file's number.
        assert!(journal::path(dir.path(), 8).exists());
        store.close().await;
    }

    #[tokio::test]
    async fn journaled_entries_load_at_once_and_are_in_the_database_after_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let room = RoomName::parse("r").expect("valid");
        let other = RoomName::parse("o").expect("valid");
        let store = SqliteStore::open(dir.path(), Durability::Process).await.expect("opens");
        store.append(&[entry(&room, 1), entry(&other, 1)]).await.expect("append");
        store.append(&[entry(&room, 2)]).await.expect("append");
        // Moved or not yet, a load has them all, once each, in order.
        let loaded = store.load(&room).await.expect("load");
        assert_eq!(loaded.log, vec![(Seq(1), vec![1; 3]), (Seq(2), vec![2; 3])]);
        // A round moves them, and appends meanwhile go to the next file.
        let journal = store.journal.clone().expect("process durability keeps a journal");
        journal.move_round(&store.writer).await.expect("moved");
        assert!(journal.is_empty());
        assert_eq!(raw_rows(&store, &room).await, vec![1, 2]);
        store.append(&[entry(&room, 3)]).await.expect("append");
        assert_eq!(store.load(&room).await.expect("load").last_seq(), Seq(3));
        store.close().await;
        assert!(journal::existing(dir.path()).expect("list").is_empty(), "no journal left");
        let store = SqliteStore::open(dir.path(), Durability::Full).await.expect("reopens");
        assert_eq!(raw_rows(&store, &room).await, vec![1, 2, 3]);
        assert_eq!(raw_rows(&store, &other).await, vec![1]);
        store.close().await;
    }
}
