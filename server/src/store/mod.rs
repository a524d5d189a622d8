//! Durable storage of rooms, behind the [`Store`] trait.
//!
//! The contract every backend keeps:
//! - [`Store::append`] makes a whole batch durable (one transaction, or one write to the update
//!   [`journal`]) before it returns; the relay relays nothing until it has. That is what makes
//!   "nothing a client has seen relayed is lost" hold through `kill -9`. A batch cut short by a
//!   crash was never acknowledged; it may survive in part, but never with a gap in a room's log.
//! - [`Store::compact`] replaces a prefix of a room's log by a snapshot atomically, and never
//!   replaces a newer snapshot by an older one (a room can be reloaded while its previous
//!   incarnation is still compacting).
//! - [`Store::load`] returns raw bytes; decoding them is the room's job, so a corrupt row fails
//!   that room's load loudly instead of being skipped — and nothing is written for a room whose
//!   load failed, so stored data is never overwritten by an empty document.
//!
//! Backends: [`sqlite::SqliteStore`] (the default) and [`memory::MemoryStore`] (unit tests).

pub mod journal;
pub mod memory;
pub mod sqlite;

use async_trait::async_trait;
use bytes::Bytes;
use huddle_protocol::RoomName;

/// Position of an update in a room's log. Starts at 1; a snapshot at `Seq(n)` covers `1..=n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

/// One update to append to a room's log.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// The room.
    pub room: RoomName,
    /// Its position in the room's log.
    pub seq: Seq,
    /// The Yjs update (v1 encoding).
    pub update: Bytes,
}

/// What is stored for one room.
#[derive(Debug, Default)]
pub struct StoredRoom {
    /// The latest snapshot and the log position it covers, if one was written.
    pub snapshot: Option<(Seq, Vec<u8>)>,
    /// Whether the snapshot's bytes were checked against a checksum written with them (or
    /// cannot have been damaged, in memory). Only a checked snapshot may be served before it
    /// has been decoded.
    pub snapshot_checked: bool,
    /// The snapshot's state vector (v1 encoding), written with it and checked like it; `None`
    /// for snapshots stored without one. With it, a room that is only a snapshot can greet
    /// clients before (or without ever) decoding the snapshot.
    pub snapshot_state_vector: Option<Vec<u8>>,
    /// Log entries after the snapshot, in order.
    pub log: Vec<(Seq, Vec<u8>)>,
}

impl StoredRoom {
    /// The last position used in this room's log (0 for a new room).
    pub fn last_seq(&self) -> Seq {
        let snap = self.snapshot.as_ref().map_or(Seq(0), |(s, _)| *s);
        self.log.last().map_or(snap, |(s, _)| (*s).max(snap))
    }
}

/// A storage failure. Always a server-side problem, never the peer's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database failed (on the write connection).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A blocking storage task failed to run to completion.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Setting up the database (migrations) failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database's schema is newer than this binary knows (a newer Huddle upgraded it).
    #[error(
        "the database was upgraded by a newer Huddle (schema version {version}): run that \
         version, or a copy of the data directory taken before the upgrade"
    )]
    NewerSchema {
        /// The newest schema version applied to it.
        version: i64,
    },
    /// A stored value is not what was written (bad sequence number, wrong type).
    #[error("corrupt row in room {room}: {detail}")]
    Corrupt {
        /// The room.
        room: RoomName,
        /// What was wrong.
        detail: String,
    },
    /// The update journal could not be written, read or rotated.
    #[error("update journal: {0}")]
    Journal(std::io::Error),
    /// Updates are arriving faster than the database takes them in (or it keeps failing), and
    /// the journal holds as much as the server keeps in memory for it.
    #[error(
        "the database is falling behind: {held_bytes} bytes of updates wait to be moved into it"
    )]
    Behind {
        /// Bytes of updates waiting.
        held_bytes: usize,
    },
    /// The data directory could not be created or opened.
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Where rooms live between server runs. See the module docs for the contract.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Everything stored for `room` (empty for a room never written).
    async fn load(&self, room: &RoomName) -> Result<StoredRoom, StoreError>;

    /// Appends `batch` (entries of any rooms) durably. After an error the caller may append the
    /// same entries again: an entry stored twice counts once. (A crash mid-append: see the
    /// module docs.)
    async fn append(&self, batch: &[LogEntry]) -> Result<(), StoreError>;

    /// Stores `snapshot` (with its `state_vector`, v1 encoding) as covering `room`'s log up to
    /// `upto` and drops those log entries — unless a snapshot covering more is already stored.
    async fn compact(
        &self,
        room: &RoomName,
        upto: Seq,
        snapshot: Bytes,
        state_vector: Vec<u8>,
    ) -> Result<(), StoreError>;

    /// Stores `state_vector` (v1 encoding) as that of `room`'s snapshot at `seq`, if that is
    /// still the stored one: for snapshots written before state vectors were stored, so the
    /// room can be served without decoding it the next time it is loaded.
    async fn set_snapshot_state_vector(
        &self,
        room: &RoomName,
        seq: Seq,
        state_vector: Vec<u8>,
    ) -> Result<(), StoreError>;

    /// Flushes and closes the store at shutdown.
    async fn close(&self);
}
