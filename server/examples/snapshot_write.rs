//! What storing one big snapshot costs: the CPU of `SqliteStore::compact` for the snapshot of a
//! 100,000-shape room (about 7.3 MB), and of copying it from the write-ahead log into the
//! database (the checkpoint that follows every snapshot sooner or later; here a truncating one
//! after each, where the server's runs every second: the same pages are copied). Compaction
//! pays this once per eighth of the snapshot's size in new log, so it is part of every edit's
//! cost in a big room (docs/benchmarks.md, "Session 19: a snapshot in a rowid table").
//!
//! `cargo run --release -p huddle-server --example snapshot_write [-- --without-rowid]`
//! (`--without-rowid`: the snapshots' table as migrations 0001–0003 made it, for comparison)

use std::time::Instant;

use bytes::Bytes;
use huddle_protocol::RoomName;
use huddle_protocol::schema::{Board, Shape, ShapeKind};
use huddle_protocol::yrs::{Doc, ReadTxn, Transact};
use huddle_server::store::sqlite::{Durability, SqliteStore};
use huddle_server::store::{Seq, Store};

/// CPU seconds this process has used (all threads), from `/proc` (in clock ticks of 1/100 s,
/// `CLK_TCK` on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("reads /proc/self/stat");
    let fields: Vec<&str> =
        stat.rsplit(')').next().expect("a stat line").split_whitespace().collect();
    let ticks = |i: usize| fields[i].parse::<f64>().expect("a number");
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let doc = Doc::new();
    let board = Board::new(&doc);
    {
        let mut txn = doc.transact_mut();
        for i in 0..100_000 {
            let mut shape = Shape::new(format!("s{i}"), ShapeKind::Rect);
            shape.text = format!("shape number {i}");
            board.put_shape(&mut txn, &shape);
        }
    }
    let (snapshot, state_vector) = {
        let txn = doc.transact();
        (Bytes::from(txn.encode_state_as_update_v1(&Default::default())), txn.state_vector())
    };
    let state_vector = huddle_protocol::yrs::updates::encoder::Encode::encode_v1(&state_vector);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(dir.path(), Durability::Process).await.expect("opens");
    if std::env::args().any(|a| a == "--without-rowid") {
        sqlx::raw_sql(
            "DROP TABLE room_snapshots; \
             CREATE TABLE room_snapshots (room TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT NULL, \
             data BLOB NOT NULL, checksum INTEGER, state_vector BLOB, \
             state_vector_checksum INTEGER) WITHOUT ROWID;",
        )
        .execute(store.pool())
        .await
        .expect("the old table");
    }
    let room = RoomName::parse("big").expect("a room name");
    let rounds = 20;
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    for seq in 1..=rounds {
        store
            .compact(&room, Seq(seq), snapshot.clone(), state_vector.clone())
            .await
            .expect("compacts");
        let (busy,): (i64,) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(store.pool())
            .await
            .expect("checkpoints");
        assert_eq!(busy, 0, "a checkpoint was blocked");
    }
    let per = |total: f64| total * 1000.0 / rounds as f64;
    println!(
        "snapshot of {} KiB: {:.1} ms of CPU, {:.1} ms of wall time per compaction and checkpoint",
        snapshot.len() >> 10,
        per(cpu_seconds() - cpu),
        per(wall.elapsed().as_secs_f64())
    );
    store.close().await;
}
