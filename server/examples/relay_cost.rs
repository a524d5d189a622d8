//! The relay path in isolation, for the regression guard (`cargo xtask bench guard`).
//!
//! One room, ten sockets' queues, a stream of small shape moves from one of them: each update is
//! decoded, applied, persisted (in-memory store, through the real group-commit persister) and
//! fanned out to the nine others, whose queues are drained as a socket writer would. Run under
//! `valgrind --tool=callgrind --toggle-collect=*relay_loop*`, the instruction count of
//! [`relay_loop`] divided by the deliveries is the relay's cost per delivered update, stable to
//! a few percent from run to run whatever else the machine is doing.

use std::sync::Arc;
use std::time::Duration;

use huddle_protocol::RoomName;
use huddle_protocol::presence::PresenceLimits;
use huddle_protocol::schema::{Board, Shape, ShapeKind};
use huddle_protocol::yrs::{Doc, Transact};
use huddle_server::persist::Persister;
use huddle_server::registry::Registry;
use huddle_server::room::{ConnId, PeerTx, Room, RoomConfig};
use huddle_server::stats::Stats;
use huddle_server::store::memory::MemoryStore;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Sockets in the room.
const PEERS: u64 = 10;
/// Updates relayed.
const UPDATES: usize = 2_000;
/// Shapes already in the room.
const PRELOAD: usize = 2_000;

fn main() {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (room, mut queues) = runtime.block_on(async {
        let store = Arc::new(MemoryStore::default());
        let tracker = TaskTracker::new();
        let persister = Persister::start(store.clone(), &tracker);
        let config = RoomConfig {
            idle_unload: Duration::from_secs(60),
            compact_every: 1000,
            presence: PresenceLimits::default(),
            max_presence_per_socket: 8,
            max_queue_bytes: 32 << 20,
        };
        let registry = Registry::new(
            store,
            persister,
            config,
            Arc::new(Stats::default()),
            tracker,
            CancellationToken::new(),
        );
        let name = RoomName::parse("guard").expect("valid name");
        let lease = registry.join(&name).await.expect("room loads");
        let room = Arc::clone(lease.room());
        let mut queues = Vec::new();
        for id in 0..PEERS {
            let (tx, rx) = PeerTx::new(4096);
            for frame in room.subscribe(ConnId(id), tx) {
                drop(frame);
            }
            queues.push(rx);
        }
        // A room with content, so a cost that grows with the document shows up too.
        room.apply_update(ConnId(PEERS), &board_of(PRELOAD), None).await.expect("preloads");
        for queue in &mut queues {
            while queue.try_recv().is_ok() {}
        }
        // Keep the room loaded for the whole run.
        std::mem::forget(lease);
        (room, queues)
    });
    let updates = moves();
    let deliveries = relay_loop(&runtime, &room, &updates, &mut queues);
    println!("deliveries {deliveries}");
}

/// One update holding `count` shapes from another client.
fn board_of(count: usize) -> Vec<u8> {
    let doc = Doc::with_client_id(9);
    let board = Board::new(&doc);
    let mut txn = doc.transact_mut();
    for i in 0..count {
        let mut shape = Shape::new(format!("s{i}"), ShapeKind::Rect);
        shape.x = i as f64;
        board.put_shape(&mut txn, &shape);
    }
    txn.encode_update_v1()
}

/// Shape moves as a client writes them: one shape created, then `UPDATES` writes of its `x`.
fn moves() -> Vec<Vec<u8>> {
    let doc = Doc::with_client_id(7);
    let board = Board::new(&doc);
    let mut updates = Vec::with_capacity(UPDATES);
    {
        let mut txn = doc.transact_mut();
        board.put_shape(&mut txn, &Shape::new("moving", ShapeKind::Rect));
        updates.push(txn.encode_update_v1());
    }
    for i in 1..UPDATES {
        let mut txn = doc.transact_mut();
        board.set_field(&mut txn, "moving", "x", i as f64);
        updates.push(txn.encode_update_v1());
    }
    updates
}

/// The measured region: relay every update and drain every queue. Returns the deliveries.
/// A plain function (driving the runtime itself) so callgrind can find it by name: the body of
/// an `async fn` is inlined into whatever polls it.
#[inline(never)]
fn relay_loop(
    runtime: &tokio::runtime::Runtime,
    room: &Arc<Room>,
    updates: &[Vec<u8>],
    queues: &mut [mpsc::Receiver<bytes::Bytes>],
) -> u64 {
    let mut delivered = 0;
    for update in updates {
        runtime.block_on(room.apply_update(ConnId(0), update, None)).expect("relays");
        for queue in queues.iter_mut() {
            while let Ok(frame) = queue.try_recv() {
                delivered += 1;
                drop(frame);
            }
        }
    }
    delivered
}
