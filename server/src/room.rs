//! Rooms: one in-memory CRDT document + awareness per active room, and the registry that loads,
//! shares and unloads them.
//!
//! The three paths every message takes, each in one place:
//! - **enters**: [`Room::apply_update`] / [`Room::apply_awareness`] validate and apply under the
//!   room lock, assigning each update its log position;
//! - **persisted**: the same lock hands the update to the group-commit [`Persister`], and the
//!   caller waits for the room's [`Watermark`] before anything else happens;
//! - **fans out**: [`Room::broadcast`] pushes one shared encoded frame into every other peer's
//!   bounded queue.
//!
//! Sync step 2 answers also wait for the watermark to cover the state they were computed from, so
//! no client ever sees an update that a crash could still lose.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use huddle_protocol::RoomName;
use huddle_protocol::nesting::{Nesting, Placed};
use huddle_protocol::presence::PresenceLimits;
use huddle_protocol::session::{OwnedLimits, PeerPresence, PresenceApplyError};
use huddle_protocol::wire::{self, CloseCode};
use huddle_protocol::yrs::sync::{Awareness, AwarenessUpdate};
use huddle_protocol::yrs::updates::decoder::Decode;
use huddle_protocol::yrs::updates::encoder::Encode;
use huddle_protocol::yrs::{ClientID, Doc, IdSet, ReadTxn, StateVector, Transact};
use parking_lot::Mutex;
use tokio_util::task::TaskTracker;

use crate::outbox::{Framed, Outbox};
use crate::persist::{NotDurable, Persister, Watermark};
use crate::stats::Stats;
use crate::store::{LogEntry, Seq, Store, StoreError};

/// A compaction waits for at least 1/`COMPACT_LOG_RATIO` of the snapshot's size in new log (see
/// [`Room::maybe_compact`]).
const COMPACT_LOG_RATIO: u64 = 4;

/// ... and for 1/`NEAR_FULL_LOG_RATIO` once the room's storage is within an eighth of
/// [`RoomConfig::max_room_bytes`], so that the log it keeps between compactions takes less of
/// what the limit allows.
const NEAR_FULL_LOG_RATIO: u64 = 8;

/// No background compaction runs ([`Room::compaction`]).
const COMPACTION_IDLE: u8 = 0;
/// One runs.
const COMPACTION_RUNNING: u8 = 1;
/// One runs, and deletions came into the full room meanwhile: it runs once more after.
const COMPACTION_AGAIN: u8 = 2;

/// The last snapshot a room wrote (or loaded).
#[derive(Debug, Clone, Copy, Default)]
struct SnapshotMark {
    /// Log position it covers.
    seq: u64,
    /// Its size.
    bytes: u64,
    /// Of the room's `log_bytes`, those it covers (the log since is the rest).
    log_bytes: u64,
}

/// Stored rooms at least this big (snapshot only) are decoded only when first needed; see
/// [`Room::load`].
const LAZY_BUILD_BYTES: u64 = 256 << 10;

/// Rooms whose state vectors add up to at least this many items answer a client that has part
/// of them (a reconnect, a returning visitor's saved copy) from the blocking pool, not the
/// relay's thread: yrs walks every block of the document for such a diff (its delete set), and
/// sends what the client lacks, so the cost grows with the room, not with the gap. About 50 ms
/// of CPU for a client holding half of a 100,000-shape room; under 1 ms below this size.
const POOL_DIFF_ITEMS: u64 = 10_000;

/// A client that lacks at least this share (in tenths) of a big room's items gets the whole
/// document, which is encoded once and shared by everyone who asks before the next edit, rather
/// than a diff of its own that is almost as big (a state vector from a long-gone copy, or one
/// made up to make the server work).
const WHOLE_ANSWER_TENTHS: u64 = 9;

/// Most updates kept since the last whole-document encode for answering fresh joiners with it
/// (see `DocState::since_encode`); past this (or [`TAIL_MAX_BYTES`], or 1/[`TAIL_SHARE`] of
/// the encode's size) the next joiner waits for a new encode.
const TAIL_MAX_UPDATES: usize = 256;

/// Most bytes of updates kept since the last whole-document encode (see [`TAIL_MAX_UPDATES`]).
const TAIL_MAX_BYTES: usize = 256 << 10;

/// Updates kept since the last whole-document encode take at most 1/`TAIL_SHARE` of its size:
/// a joiner applies them one by one after it, which costs more per byte than the encode.
const TAIL_SHARE: usize = 8;

/// At most one whole-document encode or big diff per core runs at once, server-wide: each
/// holds a copy of its answer (10 MB for 100,000 shapes), so many big rooms asked at once must
/// not all encode together.
fn encode_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        tokio::sync::Semaphore::new(cores)
    })
}

/// Adds an applied update to the ones kept since the last whole-document encode, or stops
/// keeping them once they are too many or too big (see `DocState::since_encode`).
fn keep_for_joiners(state: &mut DocState, update: &Bytes) {
    let limit = state
        .last_encode
        .as_ref()
        .map_or(0, |(_, full)| (full.update.len() / TAIL_SHARE).min(TAIL_MAX_BYTES));
    let keep = state.since_encode.as_ref().is_some_and(|tail| {
        tail.updates.len() < TAIL_MAX_UPDATES && tail.bytes + update.len() <= limit
    });
    match &mut state.since_encode {
        Some(tail) if keep => {
            tail.bytes += update.len();
            tail.updates.push(update.clone());
            tail.merged = None;
        }
        tail => *tail = None,
    }
}

/// How far a client is behind the room: the items (counted as yrs clocks count them) the room
/// has that the client lacks, and all the room's items.
fn lag(ours: &StateVector, theirs: &StateVector) -> (u64, u64) {
    ours.iter().fold((0, 0), |(missing, total), (client, &clock)| {
        let lacks = clock.saturating_sub(theirs.get(client));
        (missing + u64::from(lacks), total + u64::from(clock))
    })
}

/// Identifies one socket within the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// Settings rooms need, taken from the server config.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// How long a room with nobody connected stays in memory before it is unloaded.
    pub idle_unload: Duration,
    /// Log entries since the last snapshot that trigger a background compaction.
    pub compact_every: u64,
    /// Limits on awareness states.
    pub presence: PresenceLimits,
    /// How much presence one socket may publish: clients it speaks for, and their states'
    /// bytes together.
    pub presence_per_socket: OwnedLimits,
    /// Most bytes of presence (live states' JSON) in one room: every joiner is sent all of it
    /// at once, so past this, states that would grow it are refused (see
    /// [`Room::apply_awareness`]).
    pub max_room_presence_bytes: usize,
    /// Most bytes a room's stored document may take (its snapshot and the log since): past
    /// this, updates that add content are refused with 1008; deletions still go through.
    pub max_room_bytes: u64,
}

/// Why a message could not be handled; each maps to the close code its sender gets.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// The update does not decode or does not apply.
    #[error("invalid update: {0}")]
    InvalidUpdate(String),
    /// An awareness update was refused.
    #[error(transparent)]
    Presence(#[from] PresenceApplyError),
    /// Storage failed; the update was not saved and was not relayed.
    #[error(transparent)]
    NotDurable(#[from] NotDurable),
    /// The room is broken (storage failed or yrs panicked) and is being unloaded.
    #[error("room is unavailable")]
    Unavailable,
    /// The room's document is at [`RoomConfig::max_room_bytes`]; the update would add to it.
    #[error("room is full: {bytes} bytes stored, the limit is {max}")]
    Full {
        /// What the room takes now.
        bytes: u64,
        /// The limit.
        max: u64,
    },
}

impl RoomError {
    /// Close code and a short reason for the sender.
    pub fn close(&self) -> (CloseCode, &'static str) {
        match self {
            RoomError::InvalidUpdate(_) => (CloseCode::INVALID_PAYLOAD, "invalid update"),
            RoomError::Presence(PresenceApplyError::Invalid(e)) => {
                (e.close_code(), "invalid awareness state")
            }
            RoomError::Presence(PresenceApplyError::TooManyClients { .. }) => {
                (CloseCode::POLICY_VIOLATION, "too many awareness clients on one socket")
            }
            RoomError::Presence(PresenceApplyError::TooMuchState { .. }) => {
                (CloseCode::POLICY_VIOLATION, "too much awareness state on one socket")
            }
            RoomError::NotDurable(_) | RoomError::Unavailable => {
                (CloseCode::INTERNAL_ERROR, "storage unavailable")
            }
            RoomError::Full { .. } => {
                (CloseCode::POLICY_VIOLATION, "room is full: its board reached the size limit")
            }
        }
    }
}

/// Why a room could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored update or snapshot does not decode or apply.
    #[error("room {room}: stored {what} is corrupt: {detail}")]
    Corrupt {
        /// The room.
        room: RoomName,
        /// Which row (snapshot, or the update at a seq).
        what: String,
        /// What yrs said.
        detail: String,
    },
}

struct DocState {
    /// The document and everyone's presence (yrs' `Awareness` owns the `Doc`).
    awareness: Awareness,
    /// How deeply the document's shared types nest, to refuse an update nesting them too
    /// deeply before yrs applies it (see [`Nesting`]); changed only with the document.
    nesting: Nesting,
    /// Presence states removed since `awareness` was last rebuilt (see [`note_departures`]).
    departed: usize,
    /// At least the bytes of the room's live presence states (see [`admit_presence`]).
    presence_bound: usize,
    /// Log position of the last update applied to the document.
    applied: Seq,
    /// The whole document as fresh joiners get it, at the version it was encoded at; dropped
    /// by the next update. Encoding a big document is the most expensive thing the relay
    /// does; a room that many people open between edits encodes it once.
    full: Option<Arc<FullState>>,
    /// False while a big stored room is not built (see [`Room::load`]); the document is an
    /// empty placeholder until then, holding only presence, and only cached answers are served.
    ready: bool,
    /// The snapshot of a room not built yet (all there is of it), until its build starts.
    unbuilt: Option<Bytes>,
    /// The state vector of the snapshot a room not built yet holds (stored with it), to greet
    /// joiners with before it is built; `None` once built, or if the snapshot came without one.
    stored_sv: Option<StateVector>,
    /// True while the whole document is being encoded on the blocking pool (see
    /// [`Room::start_encode`]). Edits wait, without blocking their thread, until it is done.
    encoding: bool,
    /// True while an encode waits for its turn (see [`EncodeTicket`]); those who want the
    /// whole document wait for it, edits do not.
    encode_pending: bool,
    /// Diffs for clients that have part of a big room being encoded on the blocking pool (see
    /// [`DiffJob`]). Edits wait, like for `encoding`, until none are.
    diffs: usize,
    /// Edits waiting for `encoding` or `diffs` to end (see [`WaitingEdit`]). No new diff starts
    /// while any wait: diffs are one per client, so a stream of them (reconnects after a
    /// network blip) could otherwise keep `diffs` above zero and hold the room's edits off
    /// for as long as it lasts.
    edits_waiting: usize,
    /// The latest whole-document encode and its number (encodes are counted from 1). Kept
    /// after edits, unlike `full`: whoever waited for an encode takes its result even if
    /// edits were applied since (they reach a joiner as updates, like any edit after its
    /// answer), so a joiner of a room edited without pause is not sent to wait for encode
    /// after encode. One copy of the document per loaded room, dropped with the room.
    last_encode: Option<(u64, Arc<FullState>)>,
    /// The updates applied since `last_encode`, oldest first, while they stay few and small
    /// next to it (see [`TAIL_MAX_UPDATES`]); `None` once they do not, until the next encode.
    /// A fresh joiner of a room being drawn in gets the last encode and these, merged into one
    /// update, instead of waiting for the whole document to be encoded again (25 ms of CPU at
    /// 20,000 shapes, 90 ms at 100,000, for every joiner after every edit).
    since_encode: Option<Tail>,
}

/// See `DocState::since_encode`.
#[derive(Default)]
struct Tail {
    updates: Vec<Bytes>,
    bytes: usize,
    /// `updates` merged into one update frame, once a joiner needed it (joiners arriving
    /// together share it); dropped by the next update.
    merged: Option<Bytes>,
}

/// The whole document at one version, encoded once and shared by everyone who asks for it
/// before the next update, in the forms they ask for.
struct FullState {
    /// Log position it was encoded at.
    seq: Seq,
    /// The sync step 2 frame that answers a client that has nothing.
    frame: Bytes,
    /// The Yjs update inside `frame` (what a room not built yet is built from, and what a
    /// compaction stores).
    update: Bytes,
    /// The room's `log_bytes` at `seq` (what a snapshot of this covers; 0 for a stored one).
    log_bytes: u64,
    /// The document's state vector (v1) at `seq`, when it was encoded from the document
    /// (`None` for a stored snapshot served as it is).
    state_vector: Option<Vec<u8>>,
    /// `frame` as a [`wire::MSG_DEFLATED`] frame, for sockets that read those. Cells rather
    /// than bytes so that joiners arriving together (a team opening a shared link) wait for
    /// one compression instead of each starting their own.
    deflated: tokio::sync::OnceCell<Bytes>,
}

impl FullState {
    fn new(seq: Seq, update: Vec<u8>, state_vector: Option<Vec<u8>>, log_bytes: u64) -> Arc<Self> {
        let len = update.len();
        let frame = Bytes::from(wire::into_sync_step2(update));
        // The frame ends with the update: share its bytes rather than keep a second copy.
        let update = frame.slice(frame.len() - len..);
        let deflated = tokio::sync::OnceCell::new();
        Arc::new(Self { seq, frame, update, state_vector, log_bytes, deflated })
    }
}

/// Breaks its room when dropped while still holding it: see [`Room::build`].
struct Unfinished<'a>(Option<&'a Room>);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(room) = self.0.take() {
            room.break_room();
            room.ready.send_replace(true);
        }
    }
}

/// How a whole-document encode ended.
enum Encoded {
    /// The update and the state vector (v1).
    Done(Vec<u8>, Vec<u8>),
    /// yrs panicked.
    Panicked,
    /// It never ran: the runtime is shutting down.
    NotRun,
}

/// A whole-document encode waiting for its turn (see [`Room::start_encode`]): at most one per
/// core runs at once, server-wide. The room's edits go on while it waits; only once it has its
/// turn does it mark the room `encoding` and read the document at the version of that moment.
/// Dropped without running (a runtime shutting down), it ends the wait by breaking the room, so
/// that nobody waits for it forever.
struct EncodeTicket {
    room: Option<Arc<Room>>,
}

impl EncodeTicket {
    async fn run(mut self) {
        // The semaphore is never closed: a permit always comes.
        let _permit = encode_permits().acquire().await;
        let Some(room) = self.room.take() else { return };
        let job = {
            let mut state = room.state.lock();
            state.encode_pending = false;
            if room.is_broken() || !state.ready {
                None
            } else {
                state.encoding = true;
                let doc = state.awareness.doc().clone();
                Some(EncodeJob { room: Some(Arc::clone(&room)), doc, seq: state.applied })
            }
        };
        match job {
            Some(job) => {
                let _ = tokio::task::spawn_blocking(move || job.run()).await;
            }
            None => room.encoded.notify_waiters(),
        }
    }
}

impl Drop for EncodeTicket {
    fn drop(&mut self) {
        if let Some(room) = self.room.take() {
            {
                let mut state = room.state.lock();
                state.encode_pending = false;
                tracing::debug!(room = %room.name, "whole-document encode not run: shutting down");
                room.mark_broken();
            }
            room.encoded.notify_waiters();
        }
    }
}

/// A whole-document encode on the blocking pool, reading the document while the room is marked
/// `encoding` (see [`Room::start_encode`]). It ends the encode when dropped, however it ends:
/// with its result, or (a panic inside yrs, or a runtime shutting down before it ran) by
/// breaking the room, so that nobody waits for it forever.
struct EncodeJob {
    room: Option<Arc<Room>>,
    doc: Doc,
    seq: Seq,
}

impl EncodeJob {
    fn run(mut self) {
        let encoded = catch_unwind(AssertUnwindSafe(|| {
            let txn = self.doc.transact();
            let update = txn.encode_state_as_update_v1(&StateVector::default());
            (update, txn.state_vector().encode_v1())
        }));
        self.finish(encoded.map_or(Encoded::Panicked, |(update, sv)| Encoded::Done(update, sv)));
    }

    fn finish(&mut self, encoded: Encoded) {
        let Some(room) = self.room.take() else { return };
        {
            let mut state = room.state.lock();
            state.encoding = false;
            match encoded {
                // Nothing was applied meanwhile (edits wait for `encoding`); the check is for
                // a room rebuilt from the store in between, which has nothing to do with us.
                // Not from a broken room: its document may be half-changed.
                Encoded::Done(update, sv) if state.applied == self.seq && !room.is_broken() => {
                    let log_bytes = room.log_bytes.load(Ordering::Relaxed);
                    let full = FullState::new(self.seq, update, Some(sv), log_bytes);
                    let number = state.last_encode.as_ref().map_or(1, |(n, _)| n + 1);
                    state.last_encode = Some((number, Arc::clone(&full)));
                    state.full = Some(full);
                    state.since_encode = Some(Tail::default());
                }
                Encoded::Done(..) => {}
                Encoded::Panicked => {
                    tracing::error!(room = %room.name, "yrs panicked encoding the document; reloading room");
                    room.mark_broken();
                }
                Encoded::NotRun => {
                    tracing::debug!(room = %room.name, "whole-document encode not run: shutting down");
                    room.mark_broken();
                }
            }
        }
        room.encoded.notify_waiters();
    }
}

impl Drop for EncodeJob {
    fn drop(&mut self) {
        self.finish(Encoded::NotRun);
    }
}

/// A diff for one client that has part of a big room (what it lacks), encoded on the blocking
/// pool while the room counts it in `diffs`, so that the room's edits wait for it without
/// blocking their thread. It leaves the count when dropped, however it ends: done, panicked
/// (the room is broken then), or never run (a runtime shutting down; whoever asked sees the
/// task fail).
struct DiffJob {
    room: Option<Arc<Room>>,
    doc: Doc,
    since: StateVector,
}

impl DiffJob {
    /// The diff, or `None` if yrs panicked.
    fn run(mut self) -> Option<Vec<u8>> {
        let diff = catch_unwind(AssertUnwindSafe(|| {
            self.doc.transact().encode_state_as_update_v1(&self.since)
        }));
        self.finish(diff.is_err());
        diff.ok()
    }

    fn finish(&mut self, panicked: bool) {
        let Some(room) = self.room.take() else { return };
        {
            let mut state = room.state.lock();
            state.diffs -= 1;
            if panicked {
                tracing::error!(room = %room.name, "yrs panicked encoding a diff; reloading room");
                room.mark_broken();
            }
        }
        room.encoded.notify_waiters();
    }
}

impl Drop for DiffJob {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// An edit's place in its room's `edits_waiting` while it waits for a read of the document to
/// end, given up however the edit ends (applied, refused, or its task dropped). When the last
/// waiting edit goes, diffs waiting for their turn are signalled.
struct WaitingEdit<'a> {
    room: &'a Room,
    counted: bool,
    last_gone: bool,
}

impl<'a> WaitingEdit<'a> {
    fn new(room: &'a Room) -> Self {
        Self { room, counted: false, last_gone: false }
    }

    /// Counts the edit as waiting (once).
    fn wait(&mut self, state: &mut DocState) {
        if !std::mem::replace(&mut self.counted, true) {
            state.edits_waiting += 1;
        }
    }

    /// Stops counting the edit; [`WaitingEdit::signal`] then tells waiting diffs if it was the
    /// last.
    fn done(&mut self, state: &mut DocState) {
        if std::mem::replace(&mut self.counted, false) {
            state.edits_waiting -= 1;
            self.last_gone = state.edits_waiting == 0;
        }
    }

    /// Signals waiting diffs if this was the last waiting edit. Call without the state lock.
    fn signal(&mut self) {
        if std::mem::take(&mut self.last_gone) {
            self.room.encoded.notify_waiters();
        }
    }
}

impl Drop for WaitingEdit<'_> {
    fn drop(&mut self) {
        // Only ever dropped without the state lock held: every lock guard in `apply_update`
        // is declared after it, so it goes first.
        if self.counted {
            self.done(&mut self.room.state.lock());
        }
        self.signal();
    }
}

/// How a client that has part of the room is answered (see [`Room::sync_step2`]).
enum Answer {
    /// With the whole document.
    Whole,
    /// With this diff, encoded on the spot, at this log position.
    Here(Vec<u8>, Seq),
    /// With a diff encoded on the blocking pool.
    Pool,
}

/// One loaded room.
pub struct Room {
    /// This room, for starting its build on a task of its own from `&self`.
    me: std::sync::Weak<Room>,
    name: RoomName,
    state: Mutex<DocState>,
    peers: Mutex<HashMap<ConnId, Arc<Outbox>>>,
    watermark: Arc<Watermark>,
    persister: Persister,
    store: Arc<dyn Store>,
    config: Arc<RoomConfig>,
    stats: Arc<Stats>,
    /// Background work (compactions) that shutdown waits for.
    tracker: TaskTracker,
    /// The last snapshot written, as one value: with several runtime threads, a reader of
    /// separate fields could take a new snapshot's size with the old log it covered and count
    /// that log twice (a room wrongly full). Lock order: `state`, then this.
    snapshot: Mutex<SnapshotMark>,
    /// Bytes of log this copy of the room knows of: what it loaded plus what it appended since.
    log_bytes: AtomicU64,
    /// Whether a background compaction runs, and whether it must run once more (see
    /// [`Room::maybe_compact`]): one value, so that a request cannot fall between a compaction
    /// ending and its flag being cleared, as it could between two flags on two threads.
    compaction: AtomicU8,
    /// Set when the room can no longer be trusted (storage failure, a panic inside yrs).
    broken: AtomicBool,
    /// Becomes true once the document is built (at once for all but big stored rooms).
    ready: tokio::sync::watch::Sender<bool>,
    /// Signalled when an encode of the whole document ends (see [`Room::start_encode`]).
    encoded: tokio::sync::Notify,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room").field("name", &self.name).finish_non_exhaustive()
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What applying a client's update did to the room's document.
///
/// Parts of an update that wait for missing dependencies (yrs keeps them pending, and retries
/// them inside later applies) are stored but not relayed: the room's clients get what the room
/// integrated, when it integrates it. Relayed as they came, every client would hold them
/// pending too, and a client running yrs (Huddle's own) then fails where the room's retry
/// fails (see [`Applied::Tangled`]) and has to reconnect. (Whole-document answers carry what
/// waits, as yrs and Yjs encode it, so snapshots keep it; only those who join while something
/// waits hold it.)
enum Applied {
    /// All of it went in, or waits for dependencies; `changed` is false when the room had it
    /// all already. `integrated` is set when something waited, before or after: what this
    /// apply integrated (encoded as an update, possibly empty), relayed instead of the update.
    Whole { changed: bool, integrated: Option<Vec<u8>> },
    /// yrs refused it part-way; `integrated` is what went in before (encoded as an update).
    Part { error: huddle_protocol::yrs::error::UpdateError, integrated: Option<Vec<u8>> },
    /// yrs refused it while something waited for dependencies: either at one of the update's
    /// own items (`own`: what waited is untouched) or while retrying what waited, which it
    /// then drops. The update is stored as it came, since replaying the log refuses it at the
    /// same point and drops the same (see [`build_doc`]); what went in (`integrated`) is
    /// relayed; the sender is cut off only if the fault was its own update's.
    /// `dropped`: what waited changed (yrs dropped what it could not place).
    Tangled {
        error: huddle_protocol::yrs::error::UpdateError,
        integrated: Vec<u8>,
        own: bool,
        dropped: bool,
    },
}

/// Tells the room's [`Nesting`] what an apply put in the document: the update it checked when
/// all of it went in as it came (`placed`, if [`Placed::is_plain`]), else what yrs reports it
/// integrated (`as_integrated`, or the encoding `applied` carries).
fn record_nesting(
    nesting: &mut Nesting,
    doc: &Doc,
    applied: &Applied,
    placed: Option<Placed>,
    as_integrated: Option<Vec<u8>>,
) {
    let integrated = match applied {
        Applied::Whole { changed: false, .. } | Applied::Part { integrated: None, .. } => return,
        Applied::Whole { integrated: None, .. } => match (&as_integrated, placed) {
            (Some(part), _) => part,
            (None, Some(placed)) => return nesting.record(&placed),
            // Deletions only: no items.
            (None, None) => return,
        },
        Applied::Whole { integrated: Some(part), .. }
        | Applied::Part { integrated: Some(part), .. }
        | Applied::Tangled { integrated: part, .. } => part,
    };
    match nesting.place(integrated) {
        Ok(placed) => nesting.record(&placed),
        // yrs' own encoding always reads; if it did not, read the whole document again
        // rather than miss what went in.
        Err(e) => {
            tracing::error!(error = %e, "reading what an update integrated failed; re-reading the document");
            *nesting = Nesting::of_doc(&doc.transact());
        }
    }
}

/// After yrs refused an update part-way, retries what waits for dependencies, as an apply that
/// succeeds does. yrs returns the error before its retry, so an item waiting for a parent that
/// the refused update brought would go on waiting with nothing missing; a snapshot (which
/// carries what waits) would then fail to load at it. The room and its replay both call this
/// after every refusal, so they stay one history. Its own refusal needs no handling: yrs drops
/// what failed, in both.
fn retry_waiting(txn: &mut huddle_protocol::yrs::TransactionMut<'_>) {
    let _ = txn.apply_update(huddle_protocol::yrs::Update::new());
}

/// `update` (what one apply integrated) as bytes to relay; empty when nothing went in.
fn integrated_part(update: Vec<u8>) -> Bytes {
    if update == wire::EMPTY_UPDATE { Bytes::new() } else { Bytes::from(update) }
}

/// [`pending_fingerprint`] of a document where nothing waits for missing dependencies.
const NOTHING_PENDING: (Option<(StateVector, usize)>, Option<IdSet>) = (None, None);

/// An accepted update on its way out: relayed once it is durable. If the socket that sent it
/// is cut off meanwhile (its task dropped while waiting here), the relay goes on in a task of
/// its own: an update in the room's document and log is never kept from the room's clients,
/// whose later edits would otherwise wait on it until they reconnect.
struct Relay {
    room: Arc<Room>,
    /// Who is not sent the frame: its sender, unless the frame holds more than it sent.
    from: Option<ConnId>,
    seq: Seq,
    /// Taken once relayed (or refused); still here when dropped means "finish elsewhere".
    /// Empty when there is nothing to send (see [`Applied`]).
    frame: Option<Bytes>,
    /// False in the task that finishes a dropped relay, so a runtime shutting down (which
    /// drops new tasks at once) cannot make it spawn itself forever.
    detach_if_dropped: bool,
    /// The update deletes something (see [`Room::maybe_compact`]).
    deletes: bool,
}

impl Relay {
    /// Waits until the update is durable, then relays it to everyone but its sender.
    async fn when_durable(mut self) -> Result<(), RoomError> {
        let durable = self.room.watermark.wait_for(self.seq).await;
        let Some(frame) = self.frame.take() else { return Ok(()) };
        if let Err(e) = durable {
            self.room.break_room();
            return Err(e.into());
        }
        // Empty when nothing of the update went in yet (it waits for dependencies).
        if !frame.is_empty() {
            self.room.broadcast(self.from, &frame);
            self.room.stats.updates.fetch_add(1, Ordering::Relaxed);
        }
        self.room.maybe_compact(self.seq, self.deletes);
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.detach_if_dropped
            && let Some(frame) = self.frame.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let rest = Relay {
                room: Arc::clone(&self.room),
                from: self.from,
                seq: self.seq,
                frame: Some(frame),
                detach_if_dropped: false,
                deletes: self.deletes,
            };
            runtime.spawn(async move {
                let _ = rest.when_durable().await;
            });
        }
    }
}

/// Most removed presence states a room keeps. yrs keeps a clock for every client id that ever
/// left, so that a late copy of its old state cannot bring it back: a long-lived room's
/// visitors, or one peer naming new ids and removing them again and again, would grow that
/// without bound. Past this many, the awareness is rebuilt from the live states; a late copy
/// of a forgotten one could then show a departed cursor until Yjs' 30 s timeout.
const MAX_DEPARTED: usize = 1024;

/// Counts `departed` more removed presence states, and forgets them all once they are more
/// than [`MAX_DEPARTED`].
fn note_departures(state: &mut DocState, departed: usize) {
    state.departed += departed;
    if state.departed <= MAX_DEPARTED {
        return;
    }
    let mut awareness = Awareness::with_clock(state.awareness.doc().clone(), now_millis);
    if let Ok(live) = state.awareness.update()
        && !live.clients.is_empty()
    {
        // Cannot fail: the states are the room's own, already validated.
        let _ = awareness.apply_update(live);
    }
    state.awareness = awareness;
    state.departed = 0;
}

/// The live states in `awareness`, as awareness frames of at most `per_frame` states each. A
/// stock y-websocket client sends every change it receives straight back, as one message per
/// message received: one frame listing a big room's whole presence would come back over the
/// limit a peer's message may name (`PresenceLimits::max_entries`), and the client be cut off,
/// reconnect and be cut off again.
fn presence_frames(awareness: &Awareness, per_frame: usize) -> Vec<Bytes> {
    let live: Vec<ClientID> =
        awareness.iter().filter(|(_, s)| s.data.is_some()).map(|(id, _)| id).collect();
    live.chunks(per_frame.max(1))
        .filter_map(|ids| awareness.update_with_clients(ids.iter().copied()).ok())
        .map(|update| Bytes::from(wire::awareness(update)))
        .collect()
}

/// Whether `update` from a peer fits the room's presence budget (`max` bytes of live states'
/// JSON, what every joiner is sent at once). Cheap while the room is far below it: the states'
/// bytes are only summed, into `presence_bound`, an upper bound kept across calls (departures
/// and replaced states are not subtracted), and counted exactly only when that bound would
/// pass `max`.
fn admit_presence(state: &mut DocState, update: &AwarenessUpdate, max: usize) -> bool {
    let adding: usize = update.clients.values().map(|e| e.json.len()).sum();
    if state.presence_bound + adding <= max {
        state.presence_bound += adding;
        return true;
    }
    let (mut live, mut replaced) = (0, 0);
    for (id, client) in state.awareness.iter() {
        if let Some(json) = &client.data {
            live += json.len();
            if update.clients.contains_key(&id) {
                replaced += json.len();
            }
        }
    }
    let after = live - replaced + adding;
    if after <= max {
        state.presence_bound = after;
        true
    } else {
        state.presence_bound = live;
        false
    }
}

/// Whether `update` holds an item the document does not have (rather than only deletions, or
/// items it has already: a reconnecting client's sync answer).
fn adds_items(update: &huddle_protocol::yrs::Update, doc: &StateVector) -> bool {
    // Not `Update::state_vector`: it leaves out clients whose items in the update do not start
    // at clock 0, which is every client's second edit.
    update
        .insertions(true)
        .iter()
        .any(|(client, clocks)| clocks.iter().any(|range| range.end > doc.get(client)))
}

/// The deletions in `update` of items a document with state vector `doc` has, as an update of
/// their own; `None` if there are none. Deletions of items the document lacks are left out:
/// yrs would keep them pending, which a full room need not hold for a refused client.
fn deletions_of(update: &huddle_protocol::yrs::Update, doc: &StateVector) -> Option<Vec<u8>> {
    use huddle_protocol::yrs::encoding::write::Write;
    use huddle_protocol::yrs::updates::encoder::{Encoder, EncoderV1};
    let mut held = IdSet::new();
    for (client, clock) in doc.iter() {
        if *clock > 0 {
            held.insert(huddle_protocol::yrs::ID::new(*client, 0), *clock);
        }
    }
    let deletions = update.delete_set().intersect(&held);
    if deletions.is_empty() {
        return None;
    }
    let mut encoder = EncoderV1::new();
    // No blocks, then the delete set: the v1 update format.
    encoder.write_var(0u32);
    deletions.encode(&mut encoder);
    Some(encoder.to_vec())
}

/// What a document holds back for lack of dependencies (updates and deletions waiting for
/// earlier ones). A change here is new information even when the state vector did not move.
fn pending_fingerprint(txn: &impl ReadTxn) -> (Option<(StateVector, usize)>, Option<IdSet>) {
    let store = txn.store();
    let pending = store.pending_update().map(|p| (p.missing.clone(), p.update.encode_v1().len()));
    (pending, store.pending_ds().cloned())
}

/// Replays a stored room (its snapshot, then its log) into a fresh document.
fn build_doc(
    name: &RoomName,
    snapshot: Option<&[u8]>,
    log: &[(Seq, Vec<u8>)],
) -> Result<(Doc, Nesting), LoadError> {
    let doc = Doc::new();
    let rows = snapshot
        .into_iter()
        .map(|data| ("snapshot".to_owned(), data))
        .chain(log.iter().map(|(seq, data)| (format!("update {}", seq.0), data.as_slice())));
    for (what, data) in rows {
        let corrupt =
            |detail: String| LoadError::Corrupt { room: name.clone(), what: what.clone(), detail };
        let update = wire::decode_update(data).map_err(|e| corrupt(e.to_string()))?;
        let is_snapshot = what == "snapshot";
        // One transaction per row, as the room applied them: each commit collects what its
        // update deleted, and yrs tells a collected parent from a live one.
        let applied = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = doc.transact_mut();
            let result = txn.apply_update(update);
            if result.is_err() {
                retry_waiting(&mut txn);
            }
            result
        }));
        match applied {
            Ok(Ok(())) => {}
            // The room stored it as it came although yrs refused it part-way, because updates
            // waiting for dependencies were involved (see `Applied::Tangled`): replayed in the
            // same order it is refused at the same point, and the document ends as the room's
            // did. (Updates refused part-way otherwise are stored as the part that went in; a
            // snapshot is an encode of a document, which never fails to apply.)
            Ok(Err(e)) if !is_snapshot => {
                tracing::warn!(room = %name, %what, error = %e, "stored update refused part-way, as when it arrived");
            }
            Ok(Err(e)) => return Err(corrupt(e.to_string())),
            Err(_) => return Err(corrupt("apply panicked".into())),
        }
    }
    let waited = doc.transact().has_missing_updates();
    let doc = without_waiting(name, doc)?;
    let nesting = match snapshot {
        // The document is the snapshot, exactly.
        Some(data) if log.is_empty() && !waited => Nesting::of_update(data),
        _ => None,
    }
    .unwrap_or_else(|| Nesting::of_doc(&doc.transact()));
    Ok((doc, nesting))
}

/// `doc` without what waits in it for missing dependencies: rooms stored before those updates
/// were refused (see `Nesting::check`) may hold such items, and yrs would integrate them inside
/// some later apply, unchecked, wherever they then land. They were never part of the board
/// anyone saw (only whole-document answers carried them, as items that could not be placed).
/// The store's own encoding leaves them out; rebuilding from it costs a decode, only for such
/// rooms.
fn without_waiting(name: &RoomName, doc: Doc) -> Result<Doc, LoadError> {
    if !doc.transact().has_missing_updates() {
        return Ok(doc);
    }
    let encoded = {
        let mut encoder = huddle_protocol::yrs::updates::encoder::EncoderV1::new();
        doc.transact().store().encode_diff(&StateVector::default(), &mut encoder);
        huddle_protocol::yrs::updates::encoder::Encoder::to_vec(encoder)
    };
    tracing::warn!(room = %name, "dropping stored items that wait for updates the room never got");
    let clean = Doc::new();
    let update = wire::decode_update(&encoded).map_err(|e| LoadError::Corrupt {
        room: name.clone(),
        what: "room".into(),
        detail: e.to_string(),
    })?;
    clean.transact_mut().apply_update(update).map_err(|e| LoadError::Corrupt {
        room: name.clone(),
        what: "room".into(),
        detail: e.to_string(),
    })?;
    Ok(clean)
}

impl Room {
    /// The room's name.
    pub fn name(&self) -> &RoomName {
        &self.name
    }

    /// Runs `f` with read access to the document (for inspection, export and tests). A big
    /// stored room is empty here until [`Room::ready`] resolves.
    pub fn read_doc<R>(&self, f: impl FnOnce(&Doc) -> R) -> R {
        f(self.state.lock().awareness.doc())
    }

    /// Whether the room is broken and must not be used further.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Builds the room from what the store holds.
    pub(crate) async fn load(
        name: RoomName,
        store: Arc<dyn Store>,
        persister: Persister,
        config: Arc<RoomConfig>,
        stats: Arc<Stats>,
        tracker: TaskTracker,
    ) -> Result<Arc<Self>, LoadError> {
        // A previous copy of this room may still have commits in flight; they must be in the
        // store before we read it.
        persister.barrier().await;
        let stored = store.load(&name).await?;
        let last = stored.last_seq();
        let snapshot_seq = stored.snapshot.as_ref().map_or(Seq(0), |(s, _)| *s);
        let snapshot_bytes = stored.snapshot.as_ref().map_or(0, |(_, d)| d.len() as u64);
        let log_bytes = stored.log.iter().map(|(_, d)| d.len() as u64).sum();
        // The answer for fresh joiners: when the snapshot is the whole story it is that answer
        // already, and whoever opens a room first does not wait for a re-encode.
        let whole = stored.log.is_empty() && stored.snapshot.is_some();
        // Building a big document in yrs takes ~12 ms per MB here, and holds several times the
        // snapshot's size in memory. A big room that is only a snapshot is not built on load:
        // fresh joiners get the snapshot at once and presence works without it; what needs the
        // document (an edit, a sync of a client that has part of the room) builds it first. With
        // the snapshot's state vector stored beside it, joiners are greeted with our sync step 1
        // at once and a room people only look at is never built; without (older snapshots) it
        // is built in the background straight away, and joiners are greeted once it is. Only a
        // snapshot whose checksum matched may be served before it is decoded.
        let lazy = whole && stored.snapshot_checked && snapshot_bytes >= LAZY_BUILD_BYTES;
        let stored_sv = stored
            .snapshot_state_vector
            .as_deref()
            .filter(|_| lazy)
            .and_then(|sv| StateVector::decode_v1(sv).ok());
        let ((doc, nesting), full, unbuilt) = if lazy {
            // The snapshot becomes the answer in its own buffer (megabytes: not copied), and
            // the build, when it comes, reads it from there.
            let (seq, data) = stored.snapshot.unwrap_or_default();
            let full = FullState::new(seq, data, None, 0);
            let unbuilt = full.update.clone();
            ((Doc::new(), Nesting::default()), Some(full), Some(unbuilt))
        } else {
            let full = match (&stored.snapshot, whole) {
                (Some((seq, data)), true) => Some(FullState::new(*seq, data.clone(), None, 0)),
                _ => None,
            };
            // Decoding is CPU work: keep it off the async workers.
            let room = name.clone();
            let doc = tokio::task::spawn_blocking(move || {
                let snapshot = stored.snapshot.as_ref().map(|(_, data)| data.as_slice());
                build_doc(&room, snapshot, &stored.log)
            })
            .await
            .map_err(|e| LoadError::Corrupt {
                room: name.clone(),
                what: "room".into(),
                detail: e.to_string(),
            })??;
            (doc, full, None)
        };
        stats.room_loads.fetch_add(1, Ordering::Relaxed);
        let build_now = lazy && stored_sv.is_none();
        let room = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            name,
            state: Mutex::new(DocState {
                awareness: Awareness::with_clock(doc, now_millis),
                nesting,
                departed: 0,
                presence_bound: 0,
                applied: last,
                full,
                ready: !lazy,
                unbuilt,
                stored_sv,
                encoding: false,
                encode_pending: false,
                diffs: 0,
                edits_waiting: 0,
                last_encode: None,
                since_encode: None,
            }),
            peers: Mutex::new(HashMap::new()),
            watermark: Arc::new(Watermark::new(last)),
            persister,
            store,
            config,
            stats,
            tracker,
            snapshot: Mutex::new(SnapshotMark {
                seq: snapshot_seq.0,
                bytes: snapshot_bytes,
                log_bytes: 0,
            }),
            log_bytes: AtomicU64::new(log_bytes),
            compaction: AtomicU8::new(COMPACTION_IDLE),
            broken: AtomicBool::new(false),
            ready: tokio::sync::watch::Sender::new(!lazy),
            encoded: tokio::sync::Notify::new(),
        });
        if build_now {
            room.start_build();
        }
        Ok(room)
    }

    /// Starts building a lazily loaded room's document, once, on a task of its own (so a
    /// caller that stops waiting does not stop it).
    fn start_build(&self) {
        let Some(snapshot) = self.state.lock().unbuilt.take() else { return };
        let Some(me) = self.me.upgrade() else { return };
        self.tracker.spawn(async move { me.build(snapshot).await });
    }

    /// Builds a lazily loaded room's document and swaps it in, moving everyone's presence
    /// over from the placeholder, and greets the sockets that joined meanwhile with our sync
    /// step 1 if they could not be greeted before.
    async fn build(self: Arc<Self>, snapshot: Bytes) {
        self.stats.room_builds.fetch_add(1, Ordering::Relaxed);
        // Whatever ends this build early (a panic, the runtime dropping the task), nobody may
        // be left waiting for a document that will never come: the room is broken instead,
        // and its sockets reconnect to a fresh copy.
        let mut unfinished = Unfinished(Some(&*self));
        let name = self.name.clone();
        let built = tokio::task::spawn_blocking(move || build_doc(&name, Some(&snapshot), &[]))
            .await
            .map_err(|e| e.to_string())
            .and_then(|built| built.map_err(|e| e.to_string()));
        let (doc, nesting) = match built {
            Ok(built) => built,
            Err(e) => {
                tracing::error!(room = %self.name, error = %e, "building the stored room failed");
                return;
            }
        };
        {
            let mut state = self.state.lock();
            let mut awareness = Awareness::with_clock(doc, now_millis);
            // Presence lives beside the document, not in it: carry it over as it is.
            if let Ok(everyone) = state.awareness.update()
                && !everyone.clients.is_empty()
                && let Err(e) = awareness.apply_update(everyone)
            {
                tracing::warn!(room = %self.name, error = %e, "presence not carried over to the built room");
            }
            state.awareness = awareness;
            state.nesting = nesting;
            state.departed = 0;
            state.ready = true;
            if state.stored_sv.take().is_none() {
                let sv = state.awareness.doc().transact().state_vector();
                let greeting = Bytes::from(wire::sync_step1(&sv));
                for tx in self.peers.lock().values() {
                    // Past the byte budget if need be: the snapshot answer may still be queued.
                    tx.offer_unbudgeted(greeting.clone());
                }
                // A snapshot stored without its state vector (before they were stored): store
                // it now, so the next load need not decode the room. Nothing was applied
                // before this build, so this is the snapshot's own.
                let (store, name, seq) =
                    (Arc::clone(&self.store), self.name.clone(), state.applied);
                let sv = sv.encode_v1();
                self.tracker.spawn(async move {
                    if let Err(e) = store.set_snapshot_state_vector(&name, seq, sv).await {
                        tracing::warn!(room = %name, error = %e, "storing the snapshot's state vector failed");
                    }
                });
            }
        }
        unfinished.0 = None;
        self.ready.send_replace(true);
    }

    /// Resolves once the document is built, building it now if it was waiting to be needed
    /// (at once for rooms that were not loaded lazily).
    pub async fn ready(&self) {
        // The usual case, on every update: no subscription.
        if *self.ready.borrow() {
            return;
        }
        self.start_build();
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|&r| r).await;
    }

    /// Adds a socket and returns the frames to greet it with: our sync step 1 (so the client
    /// sends what we lack) and everyone's presence. The peer is registered before the state
    /// vector is read, so no update can fall between the two.
    pub fn subscribe(&self, id: ConnId, tx: Arc<Outbox>) -> Vec<Bytes> {
        let state = self.state.lock();
        // Under the state lock, as a room is broken: either this socket is among the peers the
        // break kicks, or it sees the room broken and goes at once (its client reconnects to
        // the reloaded copy) rather than sit on a copy nobody edits.
        if self.is_broken() {
            tx.kick.kick(CloseCode::INTERNAL_ERROR, "room unavailable; reconnect");
        }
        self.peers.lock().insert(id, tx);
        let mut frames = Vec::with_capacity(2);
        if state.ready {
            let sv = state.awareness.doc().transact().state_vector();
            frames.push(Bytes::from(wire::sync_step1(&sv)));
        } else if let Some(sv) = &state.stored_sv {
            // Not built yet: the snapshot's stored state vector says what we have. (Without
            // one, the room is being built, and greets with our sync step 1 once it is.)
            frames.push(Bytes::from(wire::sync_step1(sv)));
        }
        frames.extend(presence_frames(&state.awareness, self.config.presence.max_entries));
        frames
    }

    /// The answer to a client's sync step 1: everything it lacks, once that is durable. With
    /// `deflate` (the client reads [`wire::MSG_DEFLATED`] frames) a big answer is compressed.
    ///
    /// A client with nothing, or with next to nothing of a big room, gets the whole document
    /// (encoded once per version, shared). A client with part of a big room gets its diff
    /// encoded on the blocking pool ([`POOL_DIFF_ITEMS`]); of a small room, on the spot.
    ///
    /// # Errors
    /// [`RoomError::NotDurable`] if storage failed before the state was saved.
    pub async fn sync_step2(
        &self,
        client_sv: &StateVector,
        deflate: bool,
    ) -> Result<Vec<Bytes>, RoomError> {
        if client_sv.is_empty() {
            return self.whole_answer(deflate).await;
        }
        self.ready().await;
        let answer = {
            let state = self.state.lock();
            if self.is_broken() {
                return Err(RoomError::Unavailable);
            }
            // A document written on another thread (nothing but tests does that) is not
            // waited for here either: its diff goes to the pool.
            let ours = state.awareness.doc().try_transact().map(|txn| txn.state_vector());
            let (missing, total) = ours.map_or((0, POOL_DIFF_ITEMS), |ours| lag(&ours, client_sv));
            if total < POOL_DIFF_ITEMS {
                let diff = self.encode_guarded(state.awareness.doc(), client_sv)?;
                Answer::Here(diff, state.applied)
            } else if missing * 10 >= total * WHOLE_ANSWER_TENTHS {
                Answer::Whole
            } else {
                Answer::Pool
            }
        };
        let (diff, seq) = match answer {
            Answer::Whole => return self.whole_answer(deflate).await,
            Answer::Here(diff, seq) => (diff, seq),
            Answer::Pool => self.diff_on_pool(client_sv).await?,
        };
        let answer = Bytes::from(wire::sync_step2(diff));
        let answer = if deflate && answer.len() >= wire::DEFLATE_MIN_BYTES {
            self.compress(answer.clone(), wire::deflate).await.unwrap_or(answer)
        } else {
            answer
        };
        self.watermark.wait_for(seq).await?;
        Ok(vec![answer])
    }

    /// What the room has beyond `since`, encoded on the blocking pool, and the log position
    /// it was encoded at. Waits for its turn first (see [`encode_permits`]) without holding
    /// up the room's edits; they wait only while the document is read.
    async fn diff_on_pool(&self, since: &StateVector) -> Result<(Vec<u8>, Seq), RoomError> {
        let room = self.me.upgrade().ok_or(RoomError::Unavailable)?;
        let (permit, job, seq) = loop {
            // The semaphore is never closed: a permit always comes.
            let permit = encode_permits().acquire().await;
            let edits_first = {
                let mut state = self.state.lock();
                if self.is_broken() {
                    return Err(RoomError::Unavailable);
                }
                if state.edits_waiting == 0 {
                    state.diffs += 1;
                    let doc = state.awareness.doc().clone();
                    let job = DiffJob { room: Some(Arc::clone(&room)), doc, since: since.clone() };
                    break (permit, job, state.applied);
                }
                // Edits are waiting for the diffs under way: they go first (see
                // `edits_waiting`). Created under the lock, so their going cannot come unseen.
                self.encoded.notified()
            };
            drop(permit);
            edits_first.await;
        };
        let diff = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job.run()
        })
        .await;
        match diff {
            Ok(Some(diff)) => {
                self.stats.pool_diffs.fetch_add(1, Ordering::Relaxed);
                Ok((diff, seq))
            }
            // yrs panicked (the job broke the room), or the runtime is shutting down.
            Ok(None) | Err(_) => Err(RoomError::Unavailable),
        }
    }

    /// The whole document as a sync step 2 answer, deflated for a client that asked for that,
    /// once it is durable.
    ///
    /// In a room edited since its last encode, the answer is an update frame with the edits
    /// since and that encode (see `DocState::since_encode`), while those edits are kept.
    async fn whole_answer(&self, deflate: bool) -> Result<Vec<Bytes>, RoomError> {
        let (full, since, seq) = match self.last_encode_and_since() {
            Some((full, since, seq)) => (full, Some(since), seq),
            None => {
                let full = self.full().await?;
                let seq = full.seq;
                (full, None, seq)
            }
        };
        let answer = if deflate && full.frame.len() >= wire::DEFLATE_MIN_BYTES {
            let frame = full.frame.clone();
            let deflated = full.deflated.get_or_try_init(|| self.compress(frame, wire::deflate));
            // Unless the runtime is shutting down: then plain works too.
            deflated.await.map_or_else(|()| full.frame.clone(), Bytes::clone)
        } else {
            full.frame.clone()
        };
        // The edits since go first: a client applies an update whose base it lacks once the base
        // comes (Yjs and yrs keep it pending), and counts itself synced on the sync step 2, so
        // it is synced with everything, as with a fresh encode.
        let mut frames = Vec::with_capacity(2);
        frames.extend(since);
        frames.push(answer);
        self.watermark.wait_for(seq).await?;
        Ok(frames)
    }

    /// The last whole-document encode, the updates applied since, and the log position they
    /// bring a client to, when the room was edited since that encode and still keeps those
    /// updates (see `DocState::since_encode`).
    ///
    /// The updates go as one merged update frame (one update for the client to apply, not
    /// hundreds), merged once for every joiner until the next edit. Updates that do not merge
    /// (or a panic inside yrs) stop the keeping: the joiner, and those after it, wait for an
    /// encode instead.
    fn last_encode_and_since(&self) -> Option<(Arc<FullState>, Bytes, Seq)> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if self.is_broken() || !state.ready {
            return None;
        }
        let (_, full) = state.last_encode.as_ref()?;
        let since = state.since_encode.as_mut()?;
        // Exactly the updates after the encode, one per log position.
        let covered = full.seq.0 + since.updates.len() as u64 == state.applied.0;
        if !covered || since.updates.is_empty() {
            return None;
        }
        let merged = match &since.merged {
            Some(merged) => Some(merged.clone()),
            None => {
                let updates = &since.updates;
                let merged = catch_unwind(AssertUnwindSafe(|| {
                    huddle_protocol::yrs::merge_updates_v1(updates)
                }));
                match merged {
                    Ok(Ok(merged)) => {
                        let frame = Bytes::from(wire::update(merged));
                        since.merged = Some(frame.clone());
                        Some(frame)
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(room = %self.name, error = %e, "updates since the last encode did not merge");
                        None
                    }
                    Err(_) => {
                        tracing::error!(room = %self.name, "yrs panicked merging updates");
                        None
                    }
                }
            }
        };
        let Some(merged) = merged else {
            state.since_encode = None;
            return None;
        };
        Some((Arc::clone(full), merged, state.applied))
    }

    /// The whole document at its current version, encoded now unless it was since the last
    /// update. A room not built yet serves the stored snapshot it will be built from.
    ///
    /// The encode runs on the blocking pool (see [`Room::start_encode`]): at 100,000 shapes it
    /// takes tens of milliseconds, which on the relay's thread would hold up every room's
    /// updates, not only this one's. Everyone who asks meanwhile (joiners, a compaction)
    /// waits for that one encode.
    async fn full(&self) -> Result<Arc<FullState>, RoomError> {
        // The number of the latest encode when this call began waiting for one.
        let mut waited_after = None;
        loop {
            let encoded = self.encoded.notified();
            let start = {
                let mut state = self.state.lock();
                if self.is_broken() {
                    return Err(RoomError::Unavailable);
                }
                if let Some(full) = &state.full
                    && full.seq == state.applied
                {
                    return Ok(Arc::clone(full));
                }
                let latest = state.last_encode.as_ref().map_or(0, |(n, _)| *n);
                if let (Some(before), Some((_, full))) = (waited_after, &state.last_encode)
                    && latest > before
                {
                    // The encode waited for, though edits came in after it: see `last_encode`.
                    return Ok(Arc::clone(full));
                }
                waited_after = Some(latest);
                let start = state.ready && !state.encoding && !state.encode_pending;
                if start {
                    state.encode_pending = true;
                }
                start
            };
            // Outside the lock: a runtime that is shutting down drops the ticket on the spot,
            // and its drop takes the lock.
            if start {
                self.start_encode()?;
            }
            if *self.ready.borrow() {
                // `encoded` was created before the state was looked at, so it sees the end of
                // an encode that was running then or was started just now.
                encoded.await;
            } else {
                self.ready().await;
            }
        }
    }

    /// Starts encoding the whole document on the blocking pool (the room is marked
    /// `encode_pending` already); the result becomes `state.full`, and [`Room::encoded`] is
    /// signalled.
    ///
    /// The document must not change while it is read (the encode reads it in a yrs read
    /// transaction on another thread): edits see `state.encoding` and wait for the signal,
    /// instead of blocking their thread on yrs' lock. Reads (state vectors, diffs for clients
    /// that have part of the room) go on alongside.
    ///
    /// At most one encode per core runs at once, server-wide (see [`EncodeTicket`]): on the
    /// relay's thread they ran one at a time by themselves, and each holds a copy of its
    /// document's size (10 MB for 100,000 shapes), so many big rooms asked at once must not all
    /// encode together. Edits are held up only while their own room's document is read.
    fn start_encode(&self) -> Result<(), RoomError> {
        let Some(room) = self.me.upgrade() else {
            // Only a room already being dropped.
            self.state.lock().encode_pending = false;
            return Err(RoomError::Unavailable);
        };
        // Detached: the ticket ends the wait itself, also if it never runs.
        tokio::spawn(EncodeTicket { room: Some(room) }.run());
        Ok(())
    }

    /// `compress(data)` on the blocking pool: compressing a big board takes milliseconds
    /// (about 8.5 ms for 1.4 MB at level 1), which would hold up everyone's updates on the
    /// relay's thread. `Err` if the pool is gone (the runtime is shutting down).
    async fn compress(&self, data: Bytes, compress: fn(&[u8]) -> Vec<u8>) -> Result<Bytes, ()> {
        let compressed =
            tokio::task::spawn_blocking(move || compress(&data)).await.map_err(|_| ())?;
        self.stats.answers_deflated.fetch_add(1, Ordering::Relaxed);
        Ok(Bytes::from(compressed))
    }

    /// Applies an update from socket `from`, makes it durable, then relays it to everyone else.
    /// `frame` is the frame to relay; pass the received frame when it holds exactly this update
    /// as an update message, so it is not re-encoded.
    ///
    /// Once the update is in the document, it is relayed even if this future is dropped while
    /// it waits to be durable (see [`Relay`]).
    ///
    /// # Errors
    /// [`RoomError::InvalidUpdate`] if it does not decode (nothing is stored or relayed) or
    /// yrs refuses it part-way (the part it took is stored and relayed first);
    /// [`RoomError::NotDurable`] if storage failed (nothing is relayed).
    pub async fn apply_update(
        self: &Arc<Self>,
        from: ConnId,
        update: &[u8],
        frame: Option<Bytes>,
    ) -> Result<(), RoomError> {
        if update == wire::EMPTY_UPDATE {
            return Ok(());
        }
        let mut decoded =
            wire::decode_update(update).map_err(|e| RoomError::InvalidUpdate(e.to_string()))?;
        // Set when a full room takes only the deletions of this update (see below): what is
        // stored and relayed then, and the sender is refused afterwards.
        let mut deletions_only: Option<(Bytes, RoomError)> = None;
        if decoded.is_empty() {
            return Ok(());
        }
        self.ready().await;
        let deletes = !decoded.delete_set().is_empty();
        let mut waiting = WaitingEdit::new(self);
        let (seq, relayed, as_stored, refused) = loop {
            let encoded = {
                let mut state = self.state.lock();
                if self.is_broken() {
                    return Err(RoomError::Unavailable);
                }
                if state.encoding || state.diffs > 0 {
                    waiting.wait(&mut state);
                    // The document is being read on another thread (a joiner's answer, a
                    // compaction, a big diff): wait for that here rather than block this
                    // thread, and with it every other room's updates, on yrs' lock. Created
                    // under the lock, so the read's end (which takes it first) cannot come
                    // unseen.
                    self.encoded.notified()
                } else {
                    waiting.done(&mut state);
                    // Looked at after any wait above: what the room holds may have changed
                    // meanwhile (the wait is usually for a compaction's encode).
                    let stored_bytes = self.stored_bytes();
                    let full = stored_bytes >= self.config.max_room_bytes;
                    // The state vector only when full: building it on every update would cost
                    // the relay path an allocation per client for nothing.
                    let sv = full.then(|| state.awareness.doc().transact().state_vector());
                    if let Some(sv) = sv.filter(|sv| adds_items(&decoded, sv)) {
                        let refusal = RoomError::Full {
                            bytes: stored_bytes,
                            max: self.config.max_room_bytes,
                        };
                        // Deleting still works in a full room, also in an update that adds:
                        // a client's sync step 2 after a refusal bundles the refused shapes
                        // with whatever its user deleted since, and refusing it all would
                        // leave those deletions, the way to make room, out for good.
                        let Some(deletions) = deletions_of(&decoded, &sv) else {
                            return Err(refusal);
                        };
                        decoded = wire::decode_update(&deletions)
                            .map_err(|e| RoomError::InvalidUpdate(e.to_string()))?;
                        deletions_only = Some((Bytes::from(deletions), refusal));
                    }
                    // Before yrs sees it: a chain of types too deep would go in fine and
                    // overflow the stack when deleted. Under the lock, against the document
                    // as it is. Deletions alone bring no types.
                    let placed = match deletions_only {
                        Some(_) => None,
                        None => Some(
                            state
                                .nesting
                                .check(update)
                                .map_err(|e| RoomError::InvalidUpdate(e.to_string()))?,
                        ),
                    };
                    let plain = placed.as_ref().is_none_or(Placed::is_plain);
                    // What yrs integrated, as it encodes it, when the nesting must be recorded
                    // from that (see `record_nesting`) and nothing below encodes it already.
                    let mut as_integrated = None;
                    let applied = catch_unwind(AssertUnwindSafe(|| {
                        let mut txn = state.awareness.doc().transact_mut();
                        let before = (txn.state_vector(), pending_fingerprint(&txn));
                        let result = txn.apply_update(decoded);
                        let after = pending_fingerprint(&txn);
                        let waited = before.1 != NOTHING_PENDING || after != NOTHING_PENDING;
                        if !plain && !waited && result.is_ok() {
                            as_integrated = Some(txn.encode_update_v1());
                        }
                        // Whether a refusal left what waited untouched (the fault was the
                        // update's own), before the retry below touches it.
                        let own = after == before.1;
                        if result.is_err() && waited {
                            retry_waiting(&mut txn);
                        }
                        match result {
                            // An update the room already had entirely (a reconnecting client
                            // re-sending its delete set, say) changes nothing: nothing to
                            // store, nothing to relay.
                            // (An item filling a hole past the client's first one changes no
                            // state vector: yrs reports a client's clock as where its first
                            // hole starts. The insert set tells.)
                            Ok(()) => Applied::Whole {
                                changed: !txn.delete_set().is_empty()
                                    || !txn.insert_set().is_empty()
                                    || txn.state_vector() != before.0
                                    || after != before.1,
                                integrated: waited.then(|| txn.encode_update_v1()),
                            },
                            // yrs refuses an item whose parent is not a type only once it
                            // meets it, after integrating the items before it (its only
                            // error, `InvalidParent`). Those are in the document now: what
                            // changed is stored and relayed like any update, so the room
                            // keeps one history with its log and its clients, and only the
                            // sender is cut off.
                            Err(e) if !waited => {
                                let changed =
                                    txn.state_vector() != before.0 || !txn.delete_set().is_empty();
                                Applied::Part {
                                    error: e,
                                    integrated: changed.then(|| txn.encode_update_v1()),
                                }
                            }
                            Err(error) => Applied::Tangled {
                                error,
                                integrated: txn.encode_update_v1(),
                                own,
                                dropped: pending_fingerprint(&txn) != before.1,
                            },
                        }
                    }));
                    if let Ok(applied) = &applied {
                        let state = &mut *state;
                        let doc = state.awareness.doc();
                        record_nesting(&mut state.nesting, doc, applied, placed, as_integrated);
                    }
                    // `relayed`: what to relay when it is not what is stored (empty: nothing).
                    let (stored, relayed, refused) = match applied {
                        Ok(Applied::Whole { changed: true, integrated }) => {
                            let stored = match &deletions_only {
                                Some((deletions, _)) => deletions.clone(),
                                None => Bytes::copy_from_slice(update),
                            };
                            (stored, integrated.map(integrated_part), None)
                        }
                        Ok(Applied::Whole { changed: false, .. }) => {
                            return deletions_only.map_or(Ok(()), |(_, refusal)| Err(refusal));
                        }
                        Ok(Applied::Part { error, integrated: Some(part) }) => {
                            tracing::warn!(room = %self.name, %error, "update applied in part; storing and relaying that part");
                            (Bytes::from(part), None, Some(error))
                        }
                        Ok(Applied::Part { error, integrated: None }) => {
                            return Err(RoomError::InvalidUpdate(error.to_string()));
                        }
                        Ok(Applied::Tangled { error, integrated, own, dropped }) => {
                            let integrated = integrated_part(integrated);
                            if own && !dropped && integrated.is_empty() {
                                // Nothing changed: nothing to store (a peer must not fill the
                                // log with updates that fail at their first item).
                                return Err(RoomError::InvalidUpdate(error.to_string()));
                            }
                            tracing::warn!(room = %self.name, %error, own, "update refused part-way with updates waiting for dependencies; storing it whole, relaying what went in");
                            if dropped {
                                // The last encode may hold what yrs just dropped, and the
                                // edits since may hold what makes it fail: a joiner given
                                // both would fail where the room did.
                                state.last_encode = None;
                                state.since_encode = None;
                            }
                            let stored = Bytes::copy_from_slice(update);
                            (stored, Some(integrated), own.then_some(error))
                        }
                        Err(_) => {
                            // The document may be half-changed in ways nothing can tell: stop
                            // using this copy; the log holds everything accepted, so a reload
                            // loses nothing. Broken before the lock is let go, so that no
                            // encode, compaction or answer reads the half-changed document.
                            self.mark_broken();
                            drop(state);
                            tracing::error!(room = %self.name, "yrs panicked applying an update; reloading room");
                            return Err(RoomError::Unavailable);
                        }
                    };
                    state.applied = Seq(state.applied.0 + 1);
                    state.full = None;
                    let seq = state.applied;
                    self.log_bytes.fetch_add(stored.len() as u64, Ordering::Relaxed);
                    let as_stored = relayed.is_none();
                    let relayed = relayed.unwrap_or_else(|| stored.clone());
                    // Nothing to relay is kept as an empty update: the tail still covers
                    // everything since the last encode.
                    let kept = if relayed.is_empty() {
                        Bytes::from_static(&wire::EMPTY_UPDATE)
                    } else {
                        relayed.clone()
                    };
                    keep_for_joiners(&mut state, &kept);
                    let entry = LogEntry { room: self.name.clone(), seq, update: stored };
                    self.persister.enqueue(entry, Arc::clone(&self.watermark));
                    break (seq, relayed, as_stored, refused);
                }
            };
            encoded.await;
        };
        waiting.signal();
        let frame = match (frame, &refused, &deletions_only) {
            _ if relayed.is_empty() => Bytes::new(),
            (Some(frame), None, None) if as_stored => frame,
            _ => Bytes::from(wire::update(relayed.to_vec())),
        };
        Relay {
            room: Arc::clone(self),
            // What went in may hold edits that waited, which the sender never got: it is
            // relayed to the sender too (its own part is nothing new to it).
            from: as_stored.then_some(from),
            seq,
            frame: Some(frame),
            detach_if_dropped: true,
            deletes,
        }
        .when_durable()
        .await?;
        match (refused, deletions_only) {
            (Some(error), _) => Err(RoomError::InvalidUpdate(error.to_string())),
            (None, Some((_, refusal))) => Err(refusal),
            (None, None) => Ok(()),
        }
    }

    /// Validates and applies an awareness update from socket `from` and relays `frame` to
    /// everyone else if it changed anything.
    ///
    /// # Errors
    /// [`RoomError::Presence`] if a state is invalid or the socket claims too many clients;
    /// nothing is applied or relayed then.
    pub fn apply_awareness(
        &self,
        from: ConnId,
        presence: &mut PeerPresence,
        update: AwarenessUpdate,
        frame: Bytes,
    ) -> Result<(), RoomError> {
        let sent = update.clients.len();
        let effective = {
            let mut state = self.state.lock();
            if !admit_presence(&mut state, &update, self.config.max_room_presence_bytes) {
                // Not the sender's fault alone, so not closed: its presence waits for room.
                tracing::info!(room = %self.name, "room's presence is full; awareness update refused");
                self.stats.presence_refused.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            let applied = presence.apply(
                &mut state.awareness,
                update,
                &self.config.presence,
                self.config.presence_per_socket,
            )?;
            if let Some(effective) = &applied.effective {
                let removed = effective.clients.values().filter(|e| &*e.json == "null").count();
                note_departures(&mut state, removed);
            }
            if let Some(reminder) = applied.reminder
                && let Some(tx) = self.peers.lock().get(&from)
            {
                tx.offer(&Framed::binary(Bytes::from(wire::awareness(reminder))));
            }
            applied.effective
        };
        if let Some(effective) = effective {
            // Relay the received frame untouched unless entries were dropped from it.
            let frame = if effective.clients.len() == sent {
                frame
            } else {
                Bytes::from(wire::awareness(effective))
            };
            self.relay_presence(from, &frame);
        }
        Ok(())
    }

    /// Relays a presence frame from `from` to everyone else; a socket alone in the room gets
    /// its own frame back instead. Stock y-websocket clients close a socket that has received
    /// nothing for 30 s, and one alone in a room would receive nothing after its sync: echoing
    /// its presence heartbeat (every 15 s) keeps it from reconnecting every 30 s. (The Node
    /// reference server echoes every update to its sender; with company, others' heartbeats
    /// arrive anyway, so Huddle spends nothing on echoes then.)
    fn relay_presence(&self, from: ConnId, frame: &Bytes) {
        let alone = self.peers.lock().len() == 1;
        self.broadcast((!alone).then_some(from), frame);
    }

    /// Most clients one awareness message from a peer may name: refused from its count, before
    /// decoding (see `wire::decode_frame_limited`).
    pub fn max_awareness_clients(&self) -> usize {
        self.config.presence.max_entries
    }

    /// Everyone's presence (the answer to a query-awareness message), in frames of at most
    /// as many states as a peer may send in one (see [`presence_frames`]).
    pub fn awareness_frames(&self) -> Vec<Bytes> {
        presence_frames(&self.state.lock().awareness, self.config.presence.max_entries)
    }

    /// Removes socket `id` and tells everyone its presence is gone.
    pub fn unsubscribe(&self, id: ConnId, presence: &mut PeerPresence) {
        self.peers.lock().remove(&id);
        let removal = {
            let mut state = self.state.lock();
            let removal = presence.depart(&mut state.awareness);
            if let Some(removal) = &removal {
                note_departures(&mut state, removal.clients.len());
            }
            removal
        };
        if let Some(update) = removal {
            self.broadcast(None, &Bytes::from(wire::awareness(update)));
        }
    }

    /// The fan-out: one encoded frame, shared by every recipient's queue.
    pub fn broadcast(&self, except: Option<ConnId>, frame: &Bytes) {
        let framed = Framed::binary(frame.clone());
        let peers = self.peers.lock();
        for (id, tx) in peers.iter() {
            if Some(*id) != except && tx.offer(&framed) {
                self.stats.frames_relayed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Encodes what `doc` has beyond `sv`. A panic inside yrs marks the room broken (it is
    /// reloaded from the log) instead of taking the task down. Called with the state lock held.
    fn encode_guarded(&self, doc: &Doc, sv: &StateVector) -> Result<Vec<u8>, RoomError> {
        catch_unwind(AssertUnwindSafe(|| doc.transact().encode_state_as_update_v1(sv))).map_err(|_| {
            tracing::error!(room = %self.name, "yrs panicked encoding the document; reloading room");
            self.mark_broken();
            RoomError::Unavailable
        })
    }

    /// Marks the room broken and closes every socket in it; they reconnect to a fresh copy.
    fn break_room(&self) {
        // Set under the state lock: an update is either enqueued before the room is broken (and
        // so before any reload's persister barrier) or refused.
        let _state = self.state.lock();
        self.mark_broken();
    }

    /// [`Room::break_room`] for callers that hold the state lock already. (Lock order: state,
    /// then peers; nothing takes them the other way round.)
    fn mark_broken(&self) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            for tx in self.peers.lock().values() {
                tx.kick.kick(CloseCode::INTERNAL_ERROR, "room unavailable; reconnect");
            }
        }
    }

    /// What the room takes in storage: its snapshot and the log since.
    fn stored_bytes(&self) -> u64 {
        let (snapshot, log) = self.snapshot_and_log();
        snapshot.bytes + log
    }

    /// Bytes of log written after the last snapshot.
    #[cfg(test)]
    fn log_since_snapshot(&self) -> u64 {
        self.snapshot_and_log().1
    }

    /// The last snapshot and the bytes of log written after it, read together.
    fn snapshot_and_log(&self) -> (SnapshotMark, u64) {
        let snapshot = *self.snapshot.lock();
        // Read after the snapshot: the log it covers was counted before it was written.
        let log = self.log_bytes.load(Ordering::Acquire).saturating_sub(snapshot.log_bytes);
        (snapshot, log)
    }

    /// Starts a background compaction once the log since the last snapshot is long enough.
    ///
    /// "Long enough" is at least `compact_every` entries *and* at least a quarter of the last
    /// snapshot's size: rewriting the snapshot costs time proportional to the document, so it
    /// must wait for a proportional amount of log, or small edits into a big room would each
    /// pay for a slice of a full re-encode. The share trades that cost (per edit, about
    /// `COMPACT_LOG_RATIO` times the edit's bytes times the cost of encoding and storing a byte
    /// of snapshot) against the log a load after a crash replays and the storage the log takes
    /// beside the snapshot: a quarter instead of an eighth took some 4 µs off each small edit
    /// into a 20k- or 100k-shape room here, and adds about 60 ms of replay (120 at most) to
    /// loading a 100k-shape room after `kill -9` (docs/benchmarks.md, "Session 20: compacting
    /// after a quarter of the snapshot"). A room within an eighth of its size limit waits for
    /// an eighth only, so that the log does not keep it from growing to nearly the limit.
    ///
    /// A full room (see [`RoomConfig::max_room_bytes`]) compacts after each update that
    /// deletes (`deletes`), one compaction at a time, and again after one that ran while
    /// deletions came in: only deletions get into a full room, and it has room again only once
    /// a snapshot without what they deleted replaces the old one and its log.
    fn maybe_compact(self: &Arc<Self>, seq: Seq, deletes: bool) {
        let (snapshot, log) = self.snapshot_and_log();
        let behind = seq.0.saturating_sub(snapshot.seq);
        let max = self.config.max_room_bytes;
        let stored = snapshot.bytes + log;
        let ratio = if stored >= max - max / 8 { NEAR_FULL_LOG_RATIO } else { COMPACT_LOG_RATIO };
        let due =
            behind >= self.config.compact_every && log.saturating_mul(ratio) >= snapshot.bytes;
        let full = deletes && stored >= max;
        let start = if full {
            // Idle: start one. Running: it may have encoded the room before these deletions,
            // so it runs once more.
            let before = self.compaction.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(if c == COMPACTION_IDLE { COMPACTION_RUNNING } else { COMPACTION_AGAIN })
            });
            before == Ok(COMPACTION_IDLE)
        } else {
            due && self
                .compaction
                .compare_exchange(
                    COMPACTION_IDLE,
                    COMPACTION_RUNNING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        };
        if start {
            let room = Arc::clone(self);
            self.tracker.spawn(async move {
                loop {
                    let _ = room.compact().await;
                    // Running: done. Again: deletions came meanwhile, and the next pass (which
                    // encodes the room after them) covers them and any that come before it.
                    let ended = room.compaction.compare_exchange(
                        COMPACTION_RUNNING,
                        COMPACTION_IDLE,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    if ended.is_ok() {
                        break;
                    }
                    room.compaction.store(COMPACTION_RUNNING, Ordering::Release);
                }
            });
        }
    }

    /// Writes a snapshot of the whole document and drops the log it covers. Runs in the
    /// background after many updates, and when the room is unloaded or the server stops.
    pub async fn compact(&self) -> Result<(), RoomError> {
        if self.is_broken() {
            return Err(RoomError::Unavailable);
        }
        {
            let state = self.state.lock();
            // A room not built has nothing beyond its snapshot (edits build it first), and its
            // placeholder document is empty: never write that as the room.
            if !state.ready || state.applied.0 <= self.snapshot.lock().seq {
                return Ok(());
            }
        }
        // The whole document as joiners get it: free if one asked since the last edit, and
        // encoded off the relay's thread if not.
        let full = self.full().await?;
        let seq = full.seq;
        let Some(state_vector) = full.state_vector.clone() else {
            // Only a stored snapshot served as it is comes without one, and that is no news.
            return Ok(());
        };
        if seq.0 <= self.snapshot.lock().seq {
            return Ok(());
        }
        self.watermark.wait_for(seq).await?;
        // A room broken meanwhile may have been encoded half-changed: its log stays.
        if self.is_broken() {
            return Err(RoomError::Unavailable);
        }
        let snapshot_len = full.update.len() as u64;
        if let Err(e) = self.store.compact(&self.name, seq, full.update.clone(), state_vector).await
        {
            tracing::warn!(room = %self.name, error = %e, "compaction failed; the log still holds everything");
            return Ok(());
        }
        // Unless a newer snapshot was written meanwhile (an unload's beside a background one).
        // Updates applied while this one was encoded and written stay counted as log.
        {
            let mut snapshot = self.snapshot.lock();
            if snapshot.seq < seq.0 {
                *snapshot = SnapshotMark {
                    seq: seq.0,
                    bytes: snapshot_len,
                    log_bytes: snapshot.log_bytes.max(full.log_bytes),
                };
            }
        }
        self.stats.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use futures_util::FutureExt;

    use huddle_protocol::schema::{Board, Shape, ShapeKind};
    use huddle_protocol::yrs::{Transact, TransactionMut};

    use huddle_protocol::wire::{WireMessage, WireSyncMessage};
    use huddle_protocol::yrs::ClientID;
    use huddle_protocol::yrs::sync::awareness::AwarenessUpdateEntry;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::memory::tests::Hooked;

    fn shape_update(id: &str) -> Vec<u8> {
        let doc = Doc::new();
        let board = Board::new(&doc);
        let mut txn = doc.transact_mut();
        board.put_shape(&mut txn, &Shape::new(id, ShapeKind::Rect));
        txn.encode_update_v1()
    }

    fn shapes(room: &Room) -> usize {
        room.read_doc(|doc| Board::new(doc).shapes(&doc.transact()).len())
    }

    /// A registry over an in-memory store, counting into `stats`.
    fn registry(stats: Arc<Stats>) -> crate::registry::Registry {
        crate::registry::tests::registry_for_tests(
            Arc::new(MemoryStore::default()),
            stats,
            Duration::from_secs(60),
        )
    }

    /// Takes `room`'s document for writing on another thread, so that reading it elsewhere
    /// waits, until the returned sender is used (or 10 s pass, so that a thread blocked on
    /// yrs' lock fails a test instead of hanging it). The thread says whether it was let go
    /// on request.
    fn hold_for_writing(room: &Room) -> (std_mpsc::Sender<()>, std::thread::JoinHandle<bool>) {
        let doc = room.read_doc(Doc::clone);
        let (held_tx, held_rx) = std_mpsc::channel();
        let (release_tx, release_rx) = std_mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let txn = doc.transact_mut();
            held_tx.send(()).expect("test waits");
            let on_request = release_rx.recv_timeout(Duration::from_secs(10)).is_ok();
            drop(txn);
            on_request
        });
        held_rx.recv().expect("holder started");
        (release_tx, holder)
    }

    /// Once `started` holds for `big`'s state (a read of its document on another thread, held
    /// back by [`hold_for_writing`]): an edit "b" to `big`, polled once by hand, comes back
    /// waiting (with the thread free, not blocked in yrs' lock until the holder gives up), an
    /// edit "c" to `other` goes through meanwhile, and once the holder lets go the edit to
    /// `big` applies.
    async fn an_edit_waits_while_another_room_goes_on(
        big: &crate::registry::Lease,
        other: &crate::registry::Lease,
        started: impl Fn(&DocState) -> bool,
        release: std_mpsc::Sender<()>,
        holder: std::thread::JoinHandle<bool>,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !started(&big.room().state.lock()) {
            assert!(tokio::time::Instant::now() < deadline, "the read never started");
            tokio::task::yield_now().await;
        }
        let b = shape_update("b");
        let mut edit = Box::pin(big.room().apply_update(ConnId(1), &b, None));
        assert!((&mut edit).now_or_never().is_none(), "the edit waits for the read");
        other.room().apply_update(ConnId(2), &shape_update("c"), None).await.expect("applies");
        assert_eq!(shapes(other.room()), 1);
        release.send(()).expect("holder waits");
        assert!(holder.join().expect("holder"), "nothing was blocked on the held document");
        edit.await.expect("the edit applies once the read is done");
    }

    /// A room grown in two halves of `half` new shapes each, over [`POOL_DIFF_ITEMS`] items in
    /// all, as [`halves`] makes it: the first half's update, and a client that has it.
    struct Halves {
        first: Vec<u8>,
        /// The state vector of a client that has the first half.
        returning: StateVector,
        half: usize,
    }

    async fn halves(room: &Arc<Room>) -> Halves {
        let half = usize::try_from(POOL_DIFF_ITEMS).expect("small") / 2 + 1;
        let seeder = Doc::new();
        let first = add_shapes(&seeder, 0, half);
        let returning = seeder.transact().state_vector();
        let second = add_shapes(&seeder, half, half);
        for update in [&first, &second] {
            room.apply_update(ConnId(1), update, None).await.expect("applies");
        }
        Halves { first, returning, half }
    }

    /// Adds shapes `first..first + count` to `doc` and returns them as one update.
    fn add_shapes(doc: &Doc, first: usize, count: usize) -> Vec<u8> {
        let board = Board::new(doc);
        let mut txn = doc.transact_mut();
        for i in first..first + count {
            board.put_shape(&mut txn, &Shape::new(format!("s{i}"), ShapeKind::Rect));
        }
        txn.encode_update_v1()
    }

    /// The Yjs update inside a sync step 2 answer of one frame.
    fn answered_update(answer: &[Bytes]) -> Vec<u8> {
        let [answer] = answer else { panic!("{} frames", answer.len()) };
        match wire::decode_frame(answer).expect("decodes").as_slice() {
            [wire::WireMessage::Sync(wire::WireSyncMessage::SyncStep2(update))] => update.clone(),
            other => panic!("not a sync step 2: {other:?}"),
        }
    }

    /// A returning client that has half of a big room (a saved copy from when the board was
    /// half its size) is sent the other half, which takes tens of milliseconds to encode at
    /// 100,000 shapes: the diff is encoded off the relay's thread, the room's edits wait for it
    /// without holding the thread up, and other rooms' edits go on meanwhile. Held back like
    /// the whole-document encode in the test below.
    #[tokio::test]
    async fn a_big_diff_for_a_returning_client_does_not_hold_up_other_rooms() {
        let stats = Arc::new(Stats::default());
        let registry = registry(Arc::clone(&stats));
        let big = registry.join(&RoomName::parse("big").expect("valid")).await.expect("join");
        let other = registry.join(&RoomName::parse("other").expect("valid")).await.expect("join");
        let Halves { first, returning, half } = halves(big.room()).await;

        let (release_tx, holder) = hold_for_writing(big.room());

        let room = Arc::clone(big.room());
        let asked = returning.clone();
        let answer = tokio::spawn(async move { room.sync_step2(&asked, false).await });
        let started = |state: &DocState| state.diffs > 0;
        an_edit_waits_while_another_room_goes_on(&big, &other, started, release_tx, holder).await;
        assert_eq!(shapes(big.room()), 2 * half + 1);

        // The answer is the half the client lacked: with it, the client has the whole room as
        // it was when the diff was taken.
        let answer = answer.await.expect("task").expect("answer");
        let update = answered_update(&answer);
        let whole = big.room().sync_step2(&StateVector::default(), false).await.expect("answer");
        assert!(update.len() * 10 < whole[0].len() * 6, "a diff, not the whole room");
        let client = Doc::new();
        let mut txn = client.transact_mut();
        txn.apply_update(wire::decode_update(&first).expect("decodes")).expect("applies");
        txn.apply_update(wire::decode_update(&update).expect("decodes")).expect("applies");
        drop(txn);
        assert_eq!(Board::new(&client).shapes(&client.transact()).len(), 2 * half);
        assert_eq!(big.room().state.lock().diffs, 0);
        assert_eq!(stats.pool_diffs.load(Ordering::Relaxed), 1);

        // Routed by how far behind the client is, with nothing held: the pool again.
        big.room().sync_step2(&returning, false).await.expect("answer");
        assert_eq!(stats.pool_diffs.load(Ordering::Relaxed), 2);
    }

    /// Edits waiting for a diff to end go before the next diff: diffs are one per client, and
    /// back to back (reconnects after a network blip) they would otherwise hold the room's
    /// edits off for as long as they kept coming. A diff under way is stood in for by the
    /// room's count of them.
    #[tokio::test]
    async fn edits_waiting_for_a_diff_go_before_the_next_diff() {
        let registry = registry(Arc::new(Stats::default()));
        let big = registry.join(&RoomName::parse("big").expect("valid")).await.expect("join");
        let Halves { first, returning, half } = halves(big.room()).await;

        // A diff is under way; an edit comes and waits for it.
        big.room().state.lock().diffs += 1;
        let b = shape_update("b");
        let mut edit = Box::pin(big.room().apply_update(ConnId(1), &b, None));
        assert!((&mut edit).now_or_never().is_none(), "the edit waits for the diff under way");
        assert_eq!(big.room().state.lock().edits_waiting, 1);
        // Another client asks for its diff meanwhile: it must not start before the edit.
        let room = Arc::clone(big.room());
        let mut answer = tokio::spawn(async move { room.sync_step2(&returning, false).await });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!((&mut answer).now_or_never().is_none(), "the diff waits for the edit");
        assert_eq!(big.room().state.lock().diffs, 1, "no second diff started");
        // The diff under way ends: the edit applies, then the new diff runs, and has it.
        {
            big.room().state.lock().diffs -= 1;
        }
        big.room().encoded.notify_waiters();
        edit.await.expect("the edit applies");
        let answer = answer.await.expect("task").expect("answer");
        let client = Doc::new();
        let mut txn = client.transact_mut();
        txn.apply_update(wire::decode_update(&first).expect("decodes")).expect("applies");
        let update = answered_update(&answer);
        txn.apply_update(wire::decode_update(&update).expect("decodes")).expect("applies");
        drop(txn);
        let board = Board::new(&client);
        assert_eq!(board.shapes(&client.transact()).len(), 2 * half + 1);
        assert!(board.shape(&client.transact(), "b").is_some(), "the diff came after the edit");
        assert_eq!(big.room().state.lock().edits_waiting, 0);
    }

    /// A client with next to nothing of a big room (a state vector from a copy long gone, or
    /// one made up) gets the whole document that fresh joiners share, not a diff of its own.
    #[tokio::test]
    async fn a_client_lacking_nearly_all_of_a_big_room_gets_the_shared_whole_document() {
        let registry = registry(Arc::new(Stats::default()));
        let big = registry.join(&RoomName::parse("big").expect("valid")).await.expect("join");
        let seeder = Doc::new();
        let few = add_shapes(&seeder, 0, 3);
        let sv = seeder.transact().state_vector();
        let rest = add_shapes(&seeder, 3, usize::try_from(POOL_DIFF_ITEMS).expect("small"));
        for update in [&few, &rest] {
            big.room().apply_update(ConnId(1), update, None).await.expect("applies");
        }
        let fresh = big.room().sync_step2(&StateVector::default(), false).await.expect("answer");
        let returning = big.room().sync_step2(&sv, false).await.expect("answer");
        assert_eq!(returning[0].as_ptr(), fresh[0].as_ptr(), "the same shared bytes");
        let client = Doc::new();
        client
            .transact_mut()
            .apply_update(wire::decode_update(&answered_update(&fresh)).expect("decodes"))
            .expect("applies");
        assert_eq!(
            Board::new(&client).shapes(&client.transact()).len(),
            3 + usize::try_from(POOL_DIFF_ITEMS).expect("small")
        );
    }

    /// While a joiner's answer (the whole document) is being encoded, which takes tens of
    /// milliseconds in a big room, an edit to that room waits for it without holding up the
    /// thread: other rooms' edits go on meanwhile. The test holds the encode back by holding
    /// a yrs write transaction on the room's document from another thread (with a deadline,
    /// so a thread blocked on yrs' lock fails the test instead of hanging it).
    #[tokio::test]
    async fn an_edit_waits_for_a_whole_document_encode_without_holding_up_other_rooms() {
        let registry = registry(Arc::new(Stats::default()));
        let big = registry.join(&RoomName::parse("big").expect("valid")).await.expect("join");
        let other = registry.join(&RoomName::parse("other").expect("valid")).await.expect("join");
        big.room().apply_update(ConnId(1), &shape_update("a"), None).await.expect("applies");

        // Another thread takes the big room's document for writing, so the encode that the
        // joiner's request starts cannot read it until that thread lets go.
        let (release_tx, holder) = hold_for_writing(big.room());

        let room = Arc::clone(big.room());
        let answer =
            tokio::spawn(async move { room.sync_step2(&StateVector::default(), false).await });
        let started = |state: &DocState| state.encoding;
        an_edit_waits_while_another_room_goes_on(&big, &other, started, release_tx, holder).await;

        let answer = answer.await.expect("task").expect("answer");
        assert_eq!(shapes(big.room()), 2);
        // The answer is the document as it was when the encode started: one shape.
        let joiner = Doc::new();
        let update = answered_update(&answer);
        joiner
            .transact_mut()
            .apply_update(wire::decode_update(&update).expect("decodes"))
            .expect("applies");
        assert_eq!(Board::new(&joiner).shapes(&joiner.transact()).len(), 1);
    }

    /// A fresh joiner of a room edited since its last whole-document encode gets the edits
    /// since as one update, then that encode, without the document being encoded again. The
    /// edits change and delete shapes of the encode, so the client holds them pending until
    /// the encode comes, and has everything once it has the sync step 2. Past the most edits
    /// kept, the next joiner waits for a new encode.
    #[tokio::test]
    async fn a_joiner_after_edits_gets_the_edits_since_and_the_last_encode() {
        let registry = registry(Arc::new(Stats::default()));
        let lease = registry.join(&RoomName::parse("busy").expect("valid")).await.expect("join");
        let room = lease.room();
        let encodes = || room.state.lock().last_encode.as_ref().map_or(0, |(n, _)| *n);
        // Big enough that the byte limit on kept edits is not what stops the keeping below.
        let shapes = 6000;
        room.apply_update(ConnId(1), &add_shapes(&Doc::new(), 0, shapes), None)
            .await
            .expect("applies");
        let first = room.sync_step2(&StateVector::default(), false).await.expect("answer");
        assert_eq!((first.len(), encodes()), (1, 1));

        // An editor with the room changes one shape and deletes another.
        let editor = Doc::new();
        editor
            .transact_mut()
            .apply_update(wire::decode_update(&answered_update(&first)).expect("decodes"))
            .expect("applies");
        let board = Board::new(&editor);
        let edit = |change: &dyn Fn(&mut TransactionMut<'_>)| {
            let mut txn = editor.transact_mut();
            change(&mut txn);
            txn.encode_update_v1()
        };
        let moved = edit(&|txn| assert!(board.set_field(txn, "s1", "x", 500.0)));
        let removed = edit(&|txn| assert!(board.remove_shape(txn, "s2")));
        for update in [&moved, &removed] {
            room.apply_update(ConnId(1), update, None).await.expect("applies");
        }

        let answer = room.sync_step2(&StateVector::default(), false).await.expect("answer");
        assert_eq!(answer.len(), 2, "the edits since and the last encode");
        assert_eq!(answer[1].as_ptr(), first[0].as_ptr(), "the encode is shared, not redone");
        assert_eq!(encodes(), 1);
        let joiner = Doc::new();
        let apply = |frame: &Bytes| {
            let update = match wire::decode_frame(frame).expect("decodes").as_slice() {
                [
                    wire::WireMessage::Sync(
                        wire::WireSyncMessage::SyncStep2(u) | wire::WireSyncMessage::Update(u),
                    ),
                ] => u.clone(),
                other => panic!("unexpected {other:?}"),
            };
            joiner
                .transact_mut()
                .apply_update(wire::decode_update(&update).expect("decodes"))
                .expect("applies");
        };
        apply(&answer[0]);
        assert!(joiner.transact().has_missing_updates(), "the edits wait for their base");
        apply(&answer[1]);
        assert!(!joiner.transact().has_missing_updates());
        let got = Board::new(&joiner);
        let txn = joiner.transact();
        assert_eq!(got.shapes(&txn).len(), shapes - 1);
        assert_eq!(got.shape(&txn, "s1").expect("moved").x, 500.0);
        assert!(got.shape(&txn, "s2").is_none(), "deleted");
        drop(txn);

        // The most edits kept, then one more: the next joiner waits for a new encode.
        let kept = || room.state.lock().since_encode.as_ref().map(|t| t.updates.len());
        for i in 2..TAIL_MAX_UPDATES {
            let update = edit(&|txn| assert!(board.set_field(txn, "s3", "y", i as f64)));
            room.apply_update(ConnId(1), &update, None).await.expect("applies");
        }
        assert_eq!(kept(), Some(TAIL_MAX_UPDATES));
        let update = edit(&|txn| assert!(board.set_field(txn, "s3", "y", -1.0)));
        room.apply_update(ConnId(1), &update, None).await.expect("applies");
        assert_eq!(kept(), None, "too many edits kept");
        let answer = room.sync_step2(&StateVector::default(), false).await.expect("answer");
        assert_eq!((answer.len(), encodes()), (1, 2));
    }

    /// A hook that waits until the test opens `gate`: storage that is slow to confirm.
    fn wait_for_gate(
        gate: tokio::sync::watch::Receiver<bool>,
    ) -> crate::store::memory::tests::Hook {
        Box::new(move || {
            let mut gate = gate.clone();
            Box::pin(async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok(())
            })
        })
    }

    /// A socket cut off while its update waits to be durable (its task, and the edit's future
    /// with it, dropped): the update is in the room's document, so it still reaches the others
    /// once stored, rather than never (their later edits would wait on it until they
    /// reconnected).
    #[tokio::test]
    async fn an_update_whose_sender_is_cut_off_before_it_is_stored_still_reaches_the_room() {
        let (gate, open) = tokio::sync::watch::channel(false);
        // Appends wait: the window in which a socket can be cut off with its update accepted.
        let store = Arc::new(Hooked::appends(wait_for_gate(open)));
        let registry = crate::registry::tests::registry_for_tests(
            store,
            Arc::new(Stats::default()),
            Duration::from_secs(60),
        );
        let lease = registry.join(&RoomName::parse("r").expect("valid")).await.expect("join");
        let room = lease.room();
        let mut other = crate::outbox::tests::connected(crate::outbox::tests::ROOMY).await;
        let _greeting = room.subscribe(ConnId(2), Arc::clone(&other.outbox));
        other.outbox.release();

        let update = shape_update("kept");
        let mut edit = Box::pin(room.apply_update(ConnId(1), &update, None));
        assert!((&mut edit).now_or_never().is_none(), "the edit waits for the store");
        assert_eq!(shapes(room), 1, "the update is in the room's document");
        drop(edit);
        gate.send_replace(true);

        let relayed = loop {
            let frame = crate::outbox::tests::next_binary(&mut other.client).await;
            if let [WireMessage::Sync(WireSyncMessage::Update(update))] =
                wire::decode_frame(&frame).expect("decodes").as_slice()
            {
                break update.clone();
            }
        };
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(wire::decode_update(&relayed).expect("decodes"))
            .expect("applies");
        assert!(Board::new(&doc).shape(&doc.transact(), "kept").is_some(), "the relayed update");
    }

    /// yrs takes a client's items out of order when they depend on nothing missing, leaving
    /// holes, and then reports the client's clock as where its first hole starts: an item
    /// filling a later hole changed no state vector, and the room took it for nothing new (in
    /// the document, neither stored nor relayed). Out-of-order items are refused now (see
    /// `Nesting::check`); in order, every one is stored.
    #[tokio::test]
    async fn a_clients_items_out_of_order_are_refused_and_in_order_all_stored() {
        use huddle_protocol::yrs::{Map, WriteTxn};
        let store = Arc::new(MemoryStore::default());
        let registry = crate::registry::tests::registry_for_tests(
            Arc::clone(&store) as Arc<dyn Store>,
            Arc::new(Stats::default()),
            Duration::from_secs(60),
        );
        let name = RoomName::parse("holes").expect("valid");
        let lease = registry.join(&name).await.expect("join");
        // Client 9's clocks 0..4: one new key of the root map `m` each (nothing to depend on).
        let author = Doc::with_client_id(9);
        let updates: Vec<Vec<u8>> = (0..4i64)
            .map(|i| {
                let mut txn = author.transact_mut();
                txn.get_or_insert_map("m").insert(&mut txn, format!("k{i}"), i);
                txn.encode_update_v1()
            })
            .collect();
        for i in [1, 3] {
            let refused = lease.room().apply_update(ConnId(1), &updates[i], None).await;
            assert!(matches!(refused, Err(RoomError::InvalidUpdate(_))), "{i} first: {refused:?}");
        }
        for update in &updates {
            lease.room().apply_update(ConnId(1), update, None).await.expect("applies");
        }
        let stored = store.load(&name).await.expect("loads");
        let snapshot = stored.snapshot.as_ref().map(|(_, data)| data.as_slice());
        let (doc, _) = build_doc(&name, snapshot, &stored.log).expect("builds");
        let txn = doc.transact();
        let m = txn.get_map("m").expect("the map");
        for key in ["k0", "k1", "k2", "k3"] {
            assert!(m.contains_key(&txn, key), "{key} was stored");
        }
    }

    /// A room stored before items waiting for dependencies were refused may hold one: it is
    /// dropped at load, so the update it waited for (here a map, the parent it names) does not
    /// bring it in unchecked.
    #[tokio::test]
    async fn an_item_stored_waiting_for_its_parent_is_dropped_at_load() {
        // A string from client 88 whose parent is item (77, 0), which the room never got.
        const ORPHAN: [u8; 11] = [1, 1, 88, 0, 4, 0, 77, 0, 1, b'b', 0];
        let store = Arc::new(MemoryStore::default());
        let name = RoomName::parse("waiting").expect("valid");
        let entry = crate::store::LogEntry {
            room: name.clone(),
            seq: Seq(1),
            update: Bytes::from_static(&ORPHAN),
        };
        store.append(&[entry]).await.expect("stored");
        let registry = crate::registry::tests::registry_for_tests(
            Arc::clone(&store) as Arc<dyn Store>,
            Arc::new(Stats::default()),
            Duration::from_secs(60),
        );
        let lease = registry.join(&name).await.expect("join");
        assert!(!lease.room().read_doc(|doc| doc.transact().has_missing_updates()));
        // Item (77, 0): a map in the root map "t".
        let parent = {
            use huddle_protocol::yrs::{Map, MapPrelim, WriteTxn};
            let doc = Doc::with_client_id(77);
            let mut txn = doc.transact_mut();
            txn.get_or_insert_map("t").insert(&mut txn, "m", MapPrelim::default());
            txn.encode_update_v1()
        };
        lease.room().apply_update(ConnId(1), &parent, None).await.expect("applies");
        let sv = lease.room().read_doc(|doc| doc.transact().state_vector());
        assert_eq!(sv.get(&ClientID::new(77)), 1);
        assert_eq!(sv.get(&ClientID::new(88)), 0, "the orphan stays out");
    }

    /// A store whose snapshot writes wait until the returned gate is opened (`true`), telling
    /// the returned `Notify` when one starts waiting.
    fn held_snapshots() -> (tokio::sync::watch::Sender<bool>, Arc<tokio::sync::Notify>, Arc<Hooked>)
    {
        let (gate, open) = tokio::sync::watch::channel(false);
        let started = Arc::new(tokio::sync::Notify::new());
        let store = Arc::new(Hooked::snapshots({
            let (started, wait) = (Arc::clone(&started), wait_for_gate(open));
            Box::new(move || {
                started.notify_one();
                wait()
            })
        }));
        (gate, started, store)
    }

    /// An edit applied while a snapshot is being written is not covered by it: it stays counted
    /// in the room's stored size (what the room-size limit checks).
    #[tokio::test]
    async fn an_edit_during_a_compaction_still_counts_toward_the_rooms_size() {
        let (gate, started, store) = held_snapshots();
        let registry = crate::registry::tests::registry_for_tests(
            Arc::clone(&store) as Arc<dyn Store>,
            Arc::new(Stats::default()),
            Duration::from_secs(60),
        );
        let lease = registry.join(&RoomName::parse("r").expect("valid")).await.expect("join");
        let room = Arc::clone(lease.room());
        for id in ["a", "b"] {
            room.apply_update(ConnId(1), &shape_update(id), None).await.expect("applies");
        }
        let compaction = tokio::spawn({
            let room = Arc::clone(&room);
            async move { room.compact().await }
        });
        started.notified().await;
        let late = shape_update("c");
        room.apply_update(ConnId(1), &late, None).await.expect("applies");
        gate.send_replace(true);
        compaction.await.expect("joins").expect("compacts");
        let snapshot = room.snapshot.lock().bytes;
        assert!(snapshot > 0, "a snapshot was written");
        assert_eq!(room.stored_bytes(), snapshot + late.len() as u64);
    }

    /// A registry over `store` whose rooms compact after every update (as far as the size
    /// ratio lets them) and hold at most `max_room_bytes`.
    fn compacting_registry(
        store: Arc<dyn Store>,
        stats: Arc<Stats>,
        max_room_bytes: u64,
    ) -> crate::registry::Registry {
        let tracker = TaskTracker::new();
        let persister = Persister::start(Arc::clone(&store), &tracker);
        let config = RoomConfig {
            compact_every: 1,
            max_room_bytes,
            ..crate::Config::with_data_dir("unused").room()
        };
        crate::registry::Registry::new(
            store,
            persister,
            config,
            stats,
            tracker,
            tokio_util::sync::CancellationToken::new(),
        )
    }

    /// Deletions into a full room while its compaction runs (which may have encoded the room
    /// before them) get a compaction of their own after it: only a snapshot without what they
    /// deleted gives the room space again.
    #[tokio::test]
    async fn deletions_into_a_full_room_during_a_compaction_are_compacted_after_it() {
        let (gate, started, store) = held_snapshots();
        let stats = Arc::new(Stats::default());
        let doc = Doc::with_client_id(1);
        let seed = add_shapes(&doc, 0, 50);
        // Full once the seed is in (snapshot 0 plus the seed's log).
        let registry = compacting_registry(store, Arc::clone(&stats), seed.len() as u64 / 2);
        let lease = registry.join(&RoomName::parse("r").expect("valid")).await.expect("join");
        let room = Arc::clone(lease.room());
        room.apply_update(ConnId(1), &seed, None).await.expect("applies");
        // The seed's compaction has encoded the room and waits to write it.
        started.notified().await;
        let deletion = {
            let board = Board::new(&doc);
            let mut txn = doc.transact_mut();
            assert!(board.remove_shape(&mut txn, "s0"));
            txn.encode_update_v1()
        };
        room.apply_update(ConnId(1), &deletion, None).await.expect("a deletion is taken");
        assert_eq!(room.compaction.load(Ordering::Acquire), COMPACTION_AGAIN);
        gate.send_replace(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while room.compaction.load(Ordering::Acquire) != COMPACTION_IDLE {
            assert!(tokio::time::Instant::now() < deadline, "the compactions end");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(stats.compactions.load(Ordering::Relaxed), 2, "one more after the first");
        let applied = room.state.lock().applied.0;
        assert_eq!(room.snapshot.lock().seq, applied, "the last snapshot has the deletion");
        assert_eq!(room.log_since_snapshot(), 0);
    }

    /// Where a room's compactions begin: `max_room_bytes` as configured, the first compaction
    /// (of the seed) done. Returns the snapshot's size and the log since it at the first small
    /// edit after which a compaction began, with that edit's size.
    async fn log_at_next_compaction(max_room_bytes: u64) -> (u64, u64, u64) {
        let stats = Arc::new(Stats::default());
        let registry = compacting_registry(
            Arc::new(MemoryStore::default()),
            Arc::clone(&stats),
            max_room_bytes,
        );
        let lease = registry.join(&RoomName::parse("r").expect("valid")).await.expect("join");
        let room = Arc::clone(lease.room());
        // One client id for every call: its varint's length is part of the snapshot's size.
        let doc = Doc::with_client_id(1);
        room.apply_update(ConnId(1), &add_shapes(&doc, 0, 200), None).await.expect("applies");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stats.compactions.load(Ordering::Relaxed) == 0
            || room.compaction.load(Ordering::Acquire) != COMPACTION_IDLE
        {
            assert!(tokio::time::Instant::now() < deadline, "the seed is compacted");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let snapshot = room.snapshot.lock().bytes;
        assert_eq!(room.log_since_snapshot(), 0, "the snapshot covers the seed");
        for i in 200.. {
            let edit = add_shapes(&doc, i, 1);
            room.apply_update(ConnId(1), &edit, None).await.expect("applies");
            if room.compaction.load(Ordering::Acquire) != COMPACTION_IDLE
                || stats.compactions.load(Ordering::Relaxed) > 1
            {
                return (snapshot, room.log_since_snapshot(), edit.len() as u64);
            }
            assert!(i < 10_000, "a compaction began");
        }
        unreachable!()
    }

    /// Compacting rewrites the whole room, so a room waits for a quarter of its snapshot's size
    /// in new log (not an eighth: the rewrite was a fifth of a small edit's cost into a big
    /// room); one within an eighth of its size limit waits for an eighth only, so that what
    /// its log takes beside the snapshot does not keep it from growing to nearly the limit.
    #[tokio::test]
    async fn a_room_compacts_after_a_quarter_of_its_size_in_log_and_near_its_limit_an_eighth() {
        let (snapshot, log, edit) = log_at_next_compaction(u64::MAX / 2).await;
        assert!(log * 4 >= snapshot && (log - edit) * 4 < snapshot, "{log} of {snapshot}");
        // The same room with a limit a quarter over its snapshot: past seven eighths of it
        // (with about a tenth of the snapshot in log), the room waits for an eighth only.
        let (near, log, edit) = log_at_next_compaction(snapshot + snapshot / 4).await;
        assert_eq!(near, snapshot);
        assert!(log * 8 >= snapshot && (log - edit) * 8 < snapshot, "{log} of {snapshot}");
        // A limit whose seven eighths are a fifth over the snapshot: the room waits for an
        // eighth only from the edit that takes its storage there (past an eighth of log).
        let max = snapshot * 48 / 35;
        let threshold = max - max / 8;
        let (near, log, edit) = log_at_next_compaction(max).await;
        assert_eq!(near, snapshot);
        assert!(
            near + log >= threshold && near + log - edit < threshold,
            "{log} of {snapshot}, limit {max}"
        );
    }

    /// A socket that subscribes to a room broken just after its join (between the registry's
    /// check and the subscription) is told to go at once, not left on a copy nobody edits.
    #[tokio::test]
    async fn a_socket_subscribing_to_a_broken_room_is_sent_away() {
        let registry = registry(Arc::new(Stats::default()));
        let lease = registry.join(&RoomName::parse("r").expect("valid")).await.expect("join");
        let room = lease.room();
        let before = crate::outbox::tests::connected(crate::outbox::tests::ROOMY).await;
        let _ = room.subscribe(ConnId(1), Arc::clone(&before.outbox));
        room.break_room();
        assert!(before.outbox.kick.token_cancelled(), "a peer of the broken room is kicked");
        let after = crate::outbox::tests::connected(crate::outbox::tests::ROOMY).await;
        let _ = room.subscribe(ConnId(2), Arc::clone(&after.outbox));
        assert!(after.outbox.kick.token_cancelled(), "a socket arriving after the break too");
    }

    /// One peer naming new presence ids and removing them again, over and over: the room's
    /// awareness keeps only a bounded number of the departed ones, and everyone live stays.
    #[tokio::test]
    async fn departed_presence_does_not_pile_up() {
        let registry = registry(Arc::new(Stats::default()));
        let lease = registry.join(&RoomName::parse("r").expect("valid")).await.expect("join");
        let room = lease.room();
        let entry = |json: &str| AwarenessUpdateEntry { clock: 1, json: json.into() };
        let mut stays = PeerPresence::default();
        let update = AwarenessUpdate {
            clients: HashMap::from([(ClientID::new(1), entry(r#"{"user":{"name":"Stays"}}"#))]),
        };
        room.apply_awareness(ConnId(1), &mut stays, update, Bytes::new()).expect("applies");

        let mut churner = PeerPresence::default();
        for round in 0..(3 * MAX_DEPARTED as u64 / 8) {
            let ids: Vec<u64> = (0..8).map(|i| 1_000 + round * 8 + i).collect();
            for json in ["{}", "null"] {
                let clients = ids.iter().map(|&id| (ClientID::new(id), entry(json))).collect();
                room.apply_awareness(
                    ConnId(2),
                    &mut churner,
                    AwarenessUpdate { clients },
                    Bytes::new(),
                )
                .expect("applies");
            }
        }
        let state = room.state.lock();
        let kept = state.awareness.iter().count();
        assert!(kept <= MAX_DEPARTED + 1, "{kept} presence entries kept");
        let live = state.awareness.update().expect("update");
        assert_eq!(live.clients.keys().copied().collect::<Vec<_>>(), vec![ClientID::new(1)]);
    }

    /// A room's presence stops growing at its limit: states past it are refused (the sender
    /// is not cut off), a state replacing one of the same size still goes through, and once
    /// someone leaves there is room again.
    #[tokio::test]
    async fn a_rooms_presence_stops_growing_at_its_limit() {
        let stats = Arc::new(Stats::default());
        let registry = registry(Arc::clone(&stats));
        let lease = registry.join(&RoomName::parse("r").expect("valid")).await.expect("join");
        let room = lease.room();
        let max = room.config.max_room_presence_bytes;
        let json = format!(r#"{{"user":{{"name":"x"}},"pad":"{}"}}"#, "p".repeat(60_000));
        let fit = max / json.len();
        let state = |id: u64, clock: u32| AwarenessUpdate {
            clients: HashMap::from([(
                ClientID::new(id),
                AwarenessUpdateEntry { clock, json: json.as_str().into() },
            )]),
        };
        let live =
            |room: &Room| room.state.lock().awareness.update().expect("update").clients.len();
        let mut sockets: Vec<PeerPresence> = Vec::new();
        for id in 0..fit as u64 + 1 {
            let mut presence = PeerPresence::default();
            room.apply_awareness(ConnId(id), &mut presence, state(id, 1), Bytes::new())
                .expect("not the sender's fault");
            sockets.push(presence);
        }
        assert_eq!(live(room), fit, "states up to the limit, none past it");
        assert_eq!(stats.presence_refused.load(Ordering::Relaxed), 1);

        room.apply_awareness(ConnId(0), &mut sockets[0], state(0, 2), Bytes::new()).expect("ok");
        assert_eq!(room.state.lock().awareness.meta(ClientID::new(0)).map(|m| m.0), Some(2));
        assert_eq!(stats.presence_refused.load(Ordering::Relaxed), 1, "a replacement fits");

        room.unsubscribe(ConnId(1), &mut sockets[1]);
        let last = fit as u64;
        room.apply_awareness(ConnId(last), &mut sockets[fit], state(last, 1), Bytes::new())
            .expect("ok");
        assert_eq!(live(room), fit, "the newcomer took the leaver's place");
        assert!(room.state.lock().awareness.meta(ClientID::new(last)).is_some());
    }

    /// Of an update that adds and deletes, a full room takes the deletions of items it has,
    /// and nothing that would leave deletions waiting for items it lacks.
    #[test]
    fn a_full_rooms_share_of_an_update_is_the_deletions_of_what_it_has() {
        use huddle_protocol::yrs::Update;
        let room = Doc::with_client_id(1);
        let board = Board::new(&room);
        for id in ["a", "b"] {
            board.put_shape(&mut room.transact_mut(), &Shape::new(id, ShapeKind::Rect));
        }
        let sv = room.transact().state_vector();
        let everything = room.transact().encode_state_as_update_v1(&StateVector::default());
        // What client `id`, holding the room as it is now, sends after `edit` (one transaction).
        let edited = |id: u64, edit: &dyn Fn(&Board, &mut TransactionMut<'_>)| {
            let client = Doc::with_client_id(id);
            client
                .transact_mut()
                .apply_update(Update::decode_v1(&everything).expect("decodes"))
                .expect("applies");
            edit(&Board::new(&client), &mut client.transact_mut());
            let diff = client.transact().encode_state_as_update_v1(&sv);
            Update::decode_v1(&diff).expect("decodes")
        };
        let mixed = edited(2, &|board, txn| {
            board.put_shape(txn, &Shape::new("new", ShapeKind::Ellipse));
            assert!(board.remove_shape(txn, "a"));
        });
        assert!(adds_items(&mixed, &sv));
        let deletions = deletions_of(&mixed, &sv).expect("deletes a");
        let deletions = Update::decode_v1(&deletions).expect("an update");
        assert!(!adds_items(&deletions, &sv), "nothing added");
        room.transact_mut().apply_update(deletions).expect("applies");
        let ids = |doc: &Doc| {
            let mut ids: Vec<_> =
                Board::new(doc).shapes(&doc.transact()).into_iter().map(|s| s.id).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&room), vec!["b".to_owned()]);
        assert_eq!(pending_fingerprint(&room.transact()), NOTHING_PENDING);

        // A client's own new shape, deleted in the same update: nothing the room has.
        let own = edited(3, &|board, txn| {
            board.put_shape(txn, &Shape::new("brief", ShapeKind::Rect));
            assert!(board.remove_shape(txn, "brief"));
        });
        assert!(!own.delete_set().is_empty());
        assert!(deletions_of(&own, &sv).is_none());
    }
}
