//! The room registry: which rooms are in memory, and the only code that loads or unloads one.
//!
//! Invariants:
//! - **One copy per room.** Sockets that open the same unloaded room at the same moment find the
//!   same [`Slot`] and share its single load (`OnceCell`), so nobody ever edits a second copy.
//! - **No join is lost to an unload.** A slot counts its clients, including ones still waiting for
//!   the load; an idle slot is removed only if, under the registry lock, it still has no clients
//!   and nobody joined since the unload was scheduled. A join after the removal creates a new slot
//!   and loads from the store, which already holds every update (they are durable before they are
//!   relayed), so it sees everything even while the old copy is still writing its snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use huddle_protocol::RoomName;
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::persist::Persister;
use crate::room::{LoadError, Room, RoomConfig};
use crate::stats::Stats;
use crate::store::Store;

/// A room's place in the registry, present from the first join until it is unloaded.
#[derive(Debug, Default)]
struct Slot {
    room: OnceCell<Arc<Room>>,
    /// Sockets holding or waiting for this room. Changed only under the registry lock.
    clients: AtomicUsize,
    /// Bumped on every join, so a scheduled unload can tell that someone came and went.
    joins: AtomicU64,
}

/// All rooms in memory.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Mutex<HashMap<RoomName, Arc<Slot>>>,
    store: Arc<dyn Store>,
    persister: Persister,
    config: Arc<RoomConfig>,
    stats: Arc<Stats>,
    tracker: TaskTracker,
    /// At shutdown, pending idle unloads stop waiting; [`Registry::flush_all`] saves everything.
    shutdown: CancellationToken,
}

/// A socket's hold on a room. Give it back with [`Registry::leave`].
#[derive(Debug)]
pub struct Lease {
    name: RoomName,
    slot: Arc<Slot>,
    room: Arc<Room>,
}

impl Lease {
    /// The room.
    pub fn room(&self) -> &Arc<Room> {
        &self.room
    }
}

impl Registry {
    /// An empty registry over `store`. Background work (unloads, compactions) runs on `tracker`.
    pub fn new(
        store: Arc<dyn Store>,
        persister: Persister,
        config: RoomConfig,
        stats: Arc<Stats>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                slots: Mutex::new(HashMap::new()),
                store,
                persister,
                config: Arc::new(config),
                stats,
                tracker,
                shutdown,
            }),
        }
    }

    /// Joins `name`, loading it if it is not in memory (once, however many join at once).
    /// Cancel-safe: a join dropped before it completes leaves the room as if it never came.
    ///
    /// # Errors
    /// [`LoadError`] if the stored room cannot be read or is corrupt.
    pub async fn join(&self, name: &RoomName) -> Result<Lease, LoadError> {
        // A broken room is being replaced: at most one retry is needed, since the broken slot
        // is removed before the retry.
        for _ in 0..2 {
            let joining = {
                let mut slots = self.inner.slots.lock();
                let slot = Arc::clone(slots.entry(name.clone()).or_default());
                slot.clients.fetch_add(1, Ordering::Relaxed);
                slot.joins.fetch_add(1, Ordering::Relaxed);
                Joining { registry: self, name, slot: Some(slot) }
            };
            let slot = Arc::clone(joining.slot.as_ref().expect("set above"));
            let inner = &self.inner;
            let loaded = slot
                .room
                .get_or_try_init(|| {
                    Room::load(
                        name.clone(),
                        Arc::clone(&inner.store),
                        inner.persister.clone(),
                        Arc::clone(&inner.config),
                        Arc::clone(&inner.stats),
                        inner.tracker.clone(),
                    )
                })
                .await
                .cloned();
            match loaded {
                Ok(room) if !room.is_broken() => {
                    joining.done();
                    return Ok(Lease { name: name.clone(), slot, room });
                }
                Ok(_) => {
                    drop(joining);
                    self.forget(name, &slot);
                }
                Err(e) => return Err(e),
            }
        }
        Err(LoadError::Store(crate::store::StoreError::Corrupt {
            room: name.clone(),
            detail: "room keeps failing".into(),
        }))
    }

    /// Gives a lease back. When the last socket of a room leaves, the room is unloaded after the
    /// idle timeout unless someone joins before.
    pub fn leave(&self, lease: Lease) {
        if lease.room.is_broken() {
            self.forget(&lease.name, &lease.slot);
        }
        self.release(&lease.name, &lease.slot);
    }

    fn release(&self, name: &RoomName, slot: &Arc<Slot>) {
        // The join count is read under the lock with the departure: read after it, it could
        // include a join (and leave) that came between, and this timer would then unload the
        // room `idle_unload` after this socket left rather than after the last one.
        let idle = {
            let _slots = self.inner.slots.lock();
            (slot.clients.fetch_sub(1, Ordering::Relaxed) == 1)
                .then(|| slot.joins.load(Ordering::Relaxed))
        };
        if let Some(joins) = idle {
            let registry = self.clone();
            let (name, slot) = (name.clone(), Arc::clone(slot));
            let delay = self.inner.config.idle_unload;
            let shutdown = self.inner.shutdown.clone();
            self.inner.tracker.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(delay) => registry.unload_if_idle(&name, &slot, joins).await,
                    () = shutdown.cancelled() => {}
                }
            });
        }
    }

    /// Drops a broken room's slot so the next join loads a fresh copy.
    fn forget(&self, name: &RoomName, slot: &Arc<Slot>) {
        let mut slots = self.inner.slots.lock();
        if slots.get(name).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(name);
        }
    }

    async fn unload_if_idle(&self, name: &RoomName, slot: &Arc<Slot>, joins: u64) {
        let removed = {
            let mut slots = self.inner.slots.lock();
            let still_idle = slot.clients.load(Ordering::Relaxed) == 0
                && slot.joins.load(Ordering::Relaxed) == joins
                && slots.get(name).is_some_and(|s| Arc::ptr_eq(s, slot));
            if still_idle {
                slots.remove(name);
            }
            still_idle
        };
        if removed && let Some(room) = slot.room.get() {
            if let Err(e) = room.compact().await {
                tracing::warn!(room = %name, error = %e, "snapshot on unload failed; the log still holds everything");
            }
            self.inner.stats.room_unloads.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(room = %name, "room unloaded");
        }
    }

    /// Rooms currently in memory.
    pub fn loaded(&self) -> usize {
        self.inner.slots.lock().values().filter(|s| s.room.initialized()).count()
    }

    /// Writes a snapshot of every room in memory (at shutdown, after the sockets are closed).
    pub async fn flush_all(&self) {
        let rooms: Vec<Arc<Room>> =
            self.inner.slots.lock().values().filter_map(|s| s.room.get().cloned()).collect();
        for room in rooms {
            if let Err(e) = room.compact().await {
                tracing::warn!(room = %room.name(), error = %e, "final snapshot failed; the log still holds everything");
            }
        }
    }
}

/// A join under way: counted in its slot, so an unload cannot take the room from under it, and
/// given back when dropped unless it became a [`Lease`] — so a join given up while its room
/// loads (its socket closed, the server shutting down) leaves no count behind that would keep
/// the room in memory for good.
struct Joining<'a> {
    registry: &'a Registry,
    name: &'a RoomName,
    slot: Option<Arc<Slot>>,
}

impl Joining<'_> {
    /// The join succeeded: its count now belongs to the lease.
    fn done(mut self) {
        self.slot = None;
    }
}

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.registry.release(self.name, &slot);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use huddle_protocol::schema::{Board, Shape, ShapeKind};
    use huddle_protocol::yrs::{Doc, Transact};

    use super::*;
    use crate::room::ConnId;
    use crate::store::Seq;
    use crate::store::memory::MemoryStore;

    /// A registry over `store` with small limits, for tests (here and in `room`).
    pub(crate) fn registry_for_tests(
        store: Arc<dyn crate::store::Store>,
        stats: Arc<Stats>,
        idle_unload: Duration,
    ) -> Registry {
        let persister = Persister::start(store.clone(), &TaskTracker::new());
        let config = RoomConfig { idle_unload, ..crate::Config::with_data_dir("unused").room() };
        Registry::new(store, persister, config, stats, TaskTracker::new(), CancellationToken::new())
    }

    fn registry(store: Arc<MemoryStore>, stats: Arc<Stats>) -> Registry {
        registry_for_tests(store, stats, Duration::from_millis(5))
    }

    #[tokio::test]
    async fn concurrent_joins_share_one_load_and_an_idle_room_unloads_to_a_snapshot() {
        let store = Arc::new(MemoryStore::default());
        let stats = Arc::new(Stats::default());
        let registry = registry(Arc::clone(&store), Arc::clone(&stats));
        let name = RoomName::parse("r").expect("valid");

        let leases: Vec<Lease> =
            futures_util::future::join_all((0..10).map(|_| registry.join(&name)))
                .await
                .into_iter()
                .collect::<Result<_, _>>()
                .expect("all join");
        assert!(leases.iter().all(|l| Arc::ptr_eq(l.room(), leases[0].room())), "one copy");
        assert_eq!(stats.room_loads.load(Ordering::Relaxed), 1);

        let update = {
            let doc = Doc::new();
            let board = Board::new(&doc);
            let mut txn = doc.transact_mut();
            board.put_shape(&mut txn, &Shape::new("s1", ShapeKind::Rect));
            txn.encode_update_v1()
        };
        leases[0].room().apply_update(ConnId(1), &update, None).await.expect("applies");
        for lease in leases {
            registry.leave(lease);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stats.room_unloads.load(Ordering::Relaxed) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "room never unloaded");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let stored = store.load(&name).await.expect("load");
        assert_eq!(stored.snapshot.as_ref().map(|(s, _)| *s), Some(Seq(1)));
        assert!(stored.log.is_empty(), "the snapshot replaced the log");

        let lease = registry.join(&name).await.expect("rejoin");
        assert_eq!(stats.room_loads.load(Ordering::Relaxed), 2);
        let shapes = lease.room().read_doc(|doc| {
            let board = Board::new(doc);
            board.shapes(&doc.transact()).len()
        });
        assert_eq!(shapes, 1);
    }

    #[tokio::test]
    async fn a_join_given_up_while_its_room_loads_does_not_keep_the_room_in_memory() {
        use crate::store::memory::tests::Hooked;
        let (stall, stalled) = (Arc::new(tokio::sync::Notify::new()), Arc::new(AtomicU64::new(0)));
        let store = {
            let (stall, stalled) = (Arc::clone(&stall), Arc::clone(&stalled));
            Hooked::loads(Box::new(move || {
                let (stall, first) =
                    (Arc::clone(&stall), stalled.fetch_add(1, Ordering::SeqCst) == 0);
                Box::pin(async move {
                    // The first load hangs until the test lets it go; later ones do not.
                    if first {
                        stall.notified().await;
                    }
                    Ok(())
                })
            }))
        };
        let stats = Arc::new(Stats::default());
        let registry =
            registry_for_tests(Arc::new(store), Arc::clone(&stats), Duration::from_millis(5));
        let name = RoomName::parse("r").expect("valid");
        // A socket starts to join, and is given up while the load is stuck.
        let given_up = tokio::time::timeout(Duration::from_millis(20), registry.join(&name)).await;
        assert!(given_up.is_err(), "the load was stalled");
        assert_eq!(stalled.load(Ordering::SeqCst), 1);
        // Another socket joins and leaves: the room must unload once it has gone.
        let lease = registry.join(&name).await.expect("joins");
        registry.leave(lease);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stats.room_unloads.load(Ordering::Relaxed) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "room never unloaded");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
