//! The relay path in isolation, for the regression guard (`cargo xtask bench guard`).
//!
//! One room, ten sockets (real loopback TCP connections), a stream of small shape moves from one
//! of them: each update is decoded, applied, persisted (in-memory store, through the real
//! group-commit persister) and fanned out to the nine others, whose outboxes the flusher writes
//! to their sockets (the kernel's part of a `write` is not counted: callgrind sees user space
//! only). The clients' ends are read and dropped between updates. Run under
//! `valgrind --tool=callgrind --toggle-collect=*relay_one*`, the instruction count of
//! [`relay_one`] divided by the deliveries is the relay's cost per delivered update, stable to
//! a few percent from run to run whatever else the machine is doing.

use std::sync::Arc;
use std::time::Duration;

use huddle_protocol::RoomName;
use huddle_protocol::schema::{Board, Shape, ShapeKind};
use huddle_protocol::yrs::{Doc, Transact};
use huddle_server::outbox::{Flusher, Limits, Outbox};
use huddle_server::persist::Persister;
use huddle_server::registry::Registry;
use huddle_server::room::{ConnId, Room, RoomConfig};
use huddle_server::stats::Stats;
use huddle_server::store::memory::MemoryStore;
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
    let stats = Arc::new(Stats::default());
    let (room, mut clients) = runtime.block_on(async {
        let store = Arc::new(MemoryStore::default());
        let tracker = TaskTracker::new();
        let persister = Persister::start(store.clone(), &tracker);
        let config = RoomConfig {
            idle_unload: Duration::from_secs(60),
            ..huddle_server::Config::with_data_dir("unused").room()
        };
        let registry = Registry::new(
            store,
            persister,
            config,
            Arc::clone(&stats),
            tracker,
            CancellationToken::new(),
        );
        let name = RoomName::parse("guard").expect("valid name");
        let lease = registry.join(&name).await.expect("room loads");
        let room = Arc::clone(lease.room());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("has an address");
        let flusher = Flusher::start(Arc::clone(&stats));
        let limits = Limits {
            max_frames: 4096,
            max_bytes: 32 << 20,
            write_stall: std::time::Duration::from_secs(30),
        };
        let mut clients = Vec::new();
        for id in 0..PEERS {
            let client = std::net::TcpStream::connect(addr).expect("connects");
            client.set_nonblocking(true).expect("non-blocking");
            let (server_end, _) = listener.accept().await.expect("accepts");
            let (_read, write) = server_end.into_split();
            // As in the server, where the 101 response was written first: tokio knows the
            // socket is writable, so the first write is tried at once.
            write.writable().await.expect("writable");
            let outbox = Outbox::new(write, Arc::clone(&flusher), limits);
            outbox.release();
            // The socket task's part: writing whatever a full socket held back.
            let writer = Arc::clone(&outbox);
            tokio::spawn(async move { writer.write_when_full().await });
            for frame in room.subscribe(ConnId(id), outbox) {
                drop(frame);
            }
            clients.push(client);
        }
        // A room with content, so a cost that grows with the document shows up too.
        room.apply_update(ConnId(PEERS), &board_of(PRELOAD), None).await.expect("preloads");
        tokio::task::yield_now().await;
        drain(&mut clients, &mut vec![0; 64 << 10]);
        // Keep the room loaded for the whole run.
        std::mem::forget(lease);
        (room, clients)
    });
    let updates = moves();
    let relayed = || stats.frames_relayed.load(std::sync::atomic::Ordering::Relaxed);
    let before = relayed();
    // The clients' reads are theirs, not the relay's: outside the measured function.
    let mut buf = vec![0; 64 << 10];
    let mut received = 0;
    for update in &updates {
        relay_one(&runtime, &room, update);
        received += drain(&mut clients, &mut buf);
    }
    let deliveries = relayed() - before;
    assert!(received > 0, "the sockets received nothing");
    println!("deliveries {deliveries}");
}

/// Reads whatever the clients' ends hold into `buf`; returns the bytes read.
fn drain(clients: &mut [std::net::TcpStream], buf: &mut [u8]) -> usize {
    use std::io::Read;
    let mut total = 0;
    for client in clients {
        while let Ok(n) = client.read(buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
    }
    total
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

/// The measured region: relay one update and let the flusher write it to the sockets.
/// A plain function (driving the runtime itself) so callgrind can find it by name: the body of
/// an `async fn` is inlined into whatever polls it.
#[inline(never)]
fn relay_one(runtime: &tokio::runtime::Runtime, room: &Arc<Room>, update: &[u8]) {
    runtime.block_on(async {
        room.apply_update(ConnId(0), update, None).await.expect("relays");
        // The flusher, woken by the fan-out, runs before this task is polled again.
        tokio::task::yield_now().await;
    });
}
