//! Group commit: the one place updates become durable.
//!
//! Rooms hand each accepted update to the [`Persister`] and wait for their [`Durable`] watermark
//! to pass it before relaying. A single writer task drains everything queued while the previous
//! commit was running into the next transaction, so under load many updates share one commit
//! (and one fsync) while an idle server commits each update at once.
//!
//! The queue is unbounded on purpose, and still bounded: every socket waits for its update to be
//! durable before it reads its next message, so at most one entry per connection is queued.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{LogEntry, Seq, Store};

/// Most entries committed in one transaction; keeps one commit's latency bounded.
const MAX_BATCH: usize = 4096;
/// Attempts per batch before the rooms in it are failed (a locked or briefly full disk).
const ATTEMPTS: u32 = 3;
/// Pause between attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How far a room's log is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Durable {
    /// Every update up to this position is committed.
    pub seq: Seq,
    /// Storage failed for this room: what is past `seq` will never be committed by this
    /// incarnation of the room.
    pub failed: bool,
}

/// Why an update did not become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("storage failed; the update was not saved")]
pub struct NotDurable;

/// A room's durability watermark: written by the persister, awaited by the room.
#[derive(Debug)]
pub struct Watermark(watch::Sender<Durable>);

impl Watermark {
    /// A watermark for a room whose log is durable up to `seq`.
    pub fn new(seq: Seq) -> Self {
        Self(watch::Sender::new(Durable { seq, failed: false }))
    }

    /// Waits until everything up to `seq` is durable.
    ///
    /// # Errors
    /// [`NotDurable`] if storage failed first.
    pub async fn wait_for(&self, seq: Seq) -> Result<(), NotDurable> {
        let mut rx = self.0.subscribe();
        let state = rx.wait_for(|d| d.seq >= seq || d.failed).await.map_err(|_| NotDurable)?;
        if state.seq >= seq { Ok(()) } else { Err(NotDurable) }
    }

    /// The current state.
    pub fn get(&self) -> Durable {
        *self.0.borrow()
    }

    fn advance(&self, seq: Seq) {
        self.0.send_if_modified(|d| {
            let moved = seq > d.seq;
            d.seq = d.seq.max(seq);
            moved
        });
    }

    fn fail(&self) {
        self.0.send_modify(|d| d.failed = true);
    }
}

struct Pending {
    entry: LogEntry,
    watermark: Arc<Watermark>,
}

/// Handle to the group-commit writer. Cheap to clone.
#[derive(Clone)]
pub struct Persister {
    tx: mpsc::UnboundedSender<Pending>,
    stop: CancellationToken,
}

impl Persister {
    /// Starts the writer on `tracker`; it runs until [`Persister::stop`].
    pub fn start(store: Arc<dyn Store>, tracker: &TaskTracker) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tracker.spawn(write_loop(store, rx, stop.clone()));
        Self { tx, stop }
    }

    /// Stops the writer once everything queued so far is committed (at shutdown, when nothing
    /// can enqueue any more).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Queues `entry`; `watermark` advances once it is committed. Call in log order per room
    /// (the room does so under its lock).
    pub fn enqueue(&self, entry: LogEntry, watermark: Arc<Watermark>) {
        if let Err(mpsc::error::SendError(p)) = self.tx.send(Pending { entry, watermark }) {
            // The writer is gone (shutdown finished): this update can never be committed.
            p.watermark.fail();
        }
    }
}

async fn write_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Pending> = Vec::new();
    let mut entries: Vec<LogEntry> = Vec::new();
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            () = stop.cancelled() => {
                rx.close();
                rx.recv_many(&mut batch, MAX_BATCH).await
            }
        };
        if received == 0 {
            break;
        }
        entries.clear();
        entries.extend(batch.iter().map(|p| p.entry.clone()));
        let mut result = store.append(&entries).await;
        for _ in 1..ATTEMPTS {
            let Err(e) = &result else { break };
            tracing::warn!(error = %e, entries = entries.len(), "commit failed; retrying");
            tokio::time::sleep(RETRY_PAUSE).await;
            result = store.append(&entries).await;
        }
        match result {
            Ok(()) => {
                // Entries of one room are in log order, so the last one per room wins.
                for p in batch.drain(..) {
                    p.watermark.advance(p.entry.seq);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, entries = entries.len(), "commit failed; failing the rooms involved");
                for p in batch.drain(..) {
                    p.watermark.fail();
                }
            }
        }
    }
}
