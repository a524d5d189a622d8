//! Group commit: the one place updates become durable.
//!
//! Rooms hand each accepted update to the [`Persister`] and wait for their [`Watermark`] to pass
//! it before relaying. A single writer task drains everything queued while the previous commit
//! was running into the next transaction, so under load many updates share one commit (and one
//! fsync) while an idle server commits each update at once.
//!
//! The queue is unbounded on purpose, and still bounded: every socket waits for its update to be
//! durable before it reads its next message, so at most one entry per connection is queued,
//! plus one for each socket cut off while its update waited (the update is in the document
//! and relayed once durable, see `room::Relay`). While the store is stalled those last ones can
//! add up, one per such cut-off, each at most a message's size; they go with the next commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use huddle_protocol::RoomName;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{LogEntry, Seq, Store};

/// Most entries committed in one transaction; keeps one commit's latency bounded.
const MAX_BATCH: usize = 4096;
/// Attempts per batch before it is split by room (a locked or briefly full disk).
const ATTEMPTS: u32 = 3;
/// Pause between attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How far a room's log is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Durable {
    /// Every update up to this position is committed.
    pub seq: Seq,
    /// Storage failed for this room: this incarnation of the room must not be used further.
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
    /// [`NotDurable`] once storage failed for the room: a later commit must not make an update
    /// whose predecessor was lost look safe.
    pub async fn wait_for(&self, seq: Seq) -> Result<(), NotDurable> {
        let mut rx = self.0.subscribe();
        let state = rx.wait_for(|d| d.seq >= seq || d.failed).await.map_err(|_| NotDurable)?;
        if state.failed { Err(NotDurable) } else { Ok(()) }
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

    fn is_failed(&self) -> bool {
        self.0.borrow().failed
    }
}

enum Pending {
    /// An update to commit; `watermark` advances once it is.
    Entry { entry: LogEntry, watermark: Arc<Watermark> },
    /// Answered once everything queued before it is committed (or failed).
    Barrier(oneshot::Sender<()>),
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
        if let Err(mpsc::error::SendError(Pending::Entry { watermark, .. })) =
            self.tx.send(Pending::Entry { entry, watermark })
        {
            // The writer is gone (shutdown finished): this update can never be committed.
            watermark.fail();
        }
    }

    /// Resolves once everything queued before the call is committed or has failed. A room load
    /// waits for this, so a previous copy of the room that is still being written out (a slow
    /// commit racing an unload) is complete in the store before the new copy reads it.
    pub async fn barrier(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Pending::Barrier(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn write_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Pending> = Vec::new();
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
        let mut entries = Vec::with_capacity(batch.len());
        let mut watermarks = Vec::with_capacity(batch.len());
        let mut barriers = Vec::new();
        for p in batch.drain(..) {
            match p {
                // Storage already failed for this room: an entry after the lost one would leave
                // a gap in the room's log (and keep an edit that may build on the lost one).
                // The room is reloaded from what the store has; nobody was sent this entry.
                Pending::Entry { watermark, .. } if watermark.is_failed() => {}
                Pending::Entry { entry, watermark } => {
                    entries.push(entry);
                    watermarks.push(watermark);
                }
                Pending::Barrier(tx) => barriers.push(tx),
            }
        }
        if !entries.is_empty() {
            commit(store.as_ref(), &entries, &watermarks).await;
        }
        for tx in barriers {
            let _ = tx.send(());
        }
    }
}

/// Commits one batch, retrying; if it keeps failing, retries room by room so that one room's
/// bad entry fails only that room.
async fn commit(store: &dyn Store, entries: &[LogEntry], watermarks: &[Arc<Watermark>]) {
    let mut result = store.append(entries).await;
    for _ in 1..ATTEMPTS {
        let Err(e) = &result else { break };
        tracing::warn!(error = %e, entries = entries.len(), "commit failed; retrying");
        tokio::time::sleep(RETRY_PAUSE).await;
        result = store.append(entries).await;
    }
    if result.is_ok() {
        for (entry, watermark) in entries.iter().zip(watermarks) {
            watermark.advance(entry.seq);
        }
        return;
    }
    let mut by_room: HashMap<&RoomName, (Vec<LogEntry>, Arc<Watermark>)> = HashMap::new();
    for (entry, watermark) in entries.iter().zip(watermarks) {
        by_room
            .entry(&entry.room)
            .or_insert_with(|| (Vec::new(), Arc::clone(watermark)))
            .0
            .push(entry.clone());
    }
    for (room, (entries, watermark)) in by_room {
        match store.append(&entries).await {
            Ok(()) => {
                if let Some(last) = entries.last() {
                    watermark.advance(last.seq);
                }
            }
            Err(e) => {
                tracing::error!(%room, error = %e, entries = entries.len(), "commit failed; failing the room");
                watermark.fail();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::store::StoreError;
    use crate::store::memory::tests::Hooked;

    /// An entry that comes after one the store failed to take is not stored either: the
    /// room's log never has a gap.
    #[tokio::test]
    async fn an_entry_after_a_lost_one_is_not_stored() {
        // The first appends fail: the batch's attempts, then its room's own.
        let failures = Arc::new(AtomicU32::new(ATTEMPTS + 1));
        let store = Arc::new(Hooked::appends({
            let failures = Arc::clone(&failures);
            Box::new(move || {
                let failed = failures
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
                Box::pin(async move {
                    if failed {
                        Err(StoreError::Journal(std::io::Error::other("disk full")))
                    } else {
                        Ok(())
                    }
                })
            })
        }));
        let tracker = TaskTracker::new();
        let persister = Persister::start(Arc::clone(&store) as Arc<dyn Store>, &tracker);
        let room = RoomName::parse("r").expect("valid");
        let watermark = Arc::new(Watermark::new(Seq(0)));
        let entry = |seq| LogEntry { room: room.clone(), seq: Seq(seq), update: Bytes::new() };
        persister.enqueue(entry(1), Arc::clone(&watermark));
        // Queued while the first is being retried.
        tokio::task::yield_now().await;
        persister.enqueue(entry(2), Arc::clone(&watermark));
        assert_eq!(watermark.wait_for(Seq(1)).await, Err(NotDurable));
        persister.barrier().await;
        assert_eq!(failures.load(Ordering::Relaxed), 0, "every failure was used");
        let stored = store.inner.load(&room).await.expect("loads");
        assert!(stored.log.is_empty(), "stored after the lost entry: {:?}", stored.log);
    }
}
