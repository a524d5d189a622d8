//! What opening a big room costs a client, natively: decoding the first sync's update,
//! integrating it into a document, and reading the shapes back. The room is the one
//! `e2e/bench/board-load.mjs` opens (mixed shapes, every documented field written).
//!
//! ```sh
//! cargo run --release -p huddle-protocol --example apply_cost -- 10000 5
//! # also write the update and its sync step 2 frame (e.g. to time them in wasm):
//! DUMP=/tmp cargo run --release -p huddle-protocol --example apply_cost -- 10000 1
//! ```

use std::collections::HashMap;
use std::time::Instant;

use huddle_protocol::schema::{Board, SHAPES};
use huddle_protocol::wire;
use yrs::updates::decoder::Decode;
use yrs::{Any, Doc, Map, ReadTxn, StateVector, Transact, Update};

/// A board of `n` shapes as the benchmark seeds it, encoded as one update.
fn board_update(n: usize) -> Vec<u8> {
    let doc = Doc::new();
    let shapes = doc.get_or_insert_map(SHAPES);
    let mut txn = doc.transact_mut();
    let kinds = ["rect", "ellipse", "pen", "text", "arrow"];
    for i in 0..n {
        let kind = kinds[i % kinds.len()];
        let points: &[f64] = match kind {
            "pen" => &[0., 0., 10., 12., 20., 8., 30., 20., 40., 14.],
            "arrow" => &[0., 0., 40., 30.],
            _ => &[],
        };
        let text = if kind == "text" { format!("note {i}") } else { String::new() };
        let fill = if i % 3 == 0 { "#a5d8ff" } else { "transparent" };
        let fields: HashMap<String, Any> = [
            ("id", Any::from(format!("s{i}"))),
            ("kind", Any::from(kind)),
            ("x", Any::from((i % 100) as f64 * 60.0)),
            ("y", Any::from((i / 100) as f64 * 50.0)),
            ("w", Any::from(44.0)),
            ("h", Any::from(36.0)),
            ("points", Any::from(points.iter().map(|&v| Any::from(v)).collect::<Vec<_>>())),
            ("stroke", Any::from("#1e1e1e")),
            ("fill", Any::from(fill)),
            ("width", Any::from(2.0)),
            ("text", Any::from(text)),
            ("z", Any::from(i as f64)),
            ("author", Any::from("bench")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        shapes.insert(&mut txn, format!("s{i}"), Any::from(fields));
    }
    drop(txn);
    doc.transact().encode_state_as_update_v1(&StateVector::default())
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let n = args.next().and_then(Result::ok).unwrap_or(10_000);
    let reps = args.next().and_then(Result::ok).unwrap_or(5);
    let update = board_update(n);
    println!("{n} shapes: update of {} bytes", update.len());
    if let Ok(dir) = std::env::var("DUMP") {
        let frame = wire::sync_step2(update.clone());
        for (name, bytes) in [("update", &update), ("frame", &frame)] {
            if let Err(e) = std::fs::write(format!("{dir}/{name}{n}.bin"), bytes) {
                eprintln!("cannot write to {dir}: {e}");
                std::process::exit(2);
            }
        }
    }
    for _ in 0..reps {
        let started = Instant::now();
        let Ok(decoded) = Update::decode_v1(&update) else { unreachable!("we encoded it") };
        let decode = started.elapsed();
        let doc = Doc::new();
        let board = Board::new(&doc);
        let started = Instant::now();
        if doc.transact_mut().apply_update(decoded).is_err() {
            unreachable!("a fresh document takes any update");
        }
        let apply = started.elapsed();
        let started = Instant::now();
        let read = board.shapes(&doc.transact()).len();
        let reading = started.elapsed();
        println!("decode {decode:.1?}, integrate {apply:.1?}, read {read} shapes {reading:.1?}");
    }
}
