//! Throwaway: how long applying a 10k-shape first sync takes natively, and where it goes.
use std::collections::HashMap;
use std::time::Instant;
use yrs::{Any, Doc, Map, ReadTxn, StateVector, Transact, Update, updates::decoder::Decode};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let reps: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let src = Doc::new();
    let shapes = src.get_or_insert_map("shapes");
    {
        let mut txn = src.transact_mut();
        let kinds = ["rect", "ellipse", "pen", "text", "arrow"];
        for i in 0..n {
            let kind = kinds[i % 5];
            let points: Vec<Any> = match kind {
                "pen" => [0., 0., 10., 12., 20., 8., 30., 20., 40., 14.]
                    .iter()
                    .map(|&v| Any::from(v))
                    .collect(),
                "arrow" => [0., 0., 40., 30.].iter().map(|&v| Any::from(v)).collect(),
                _ => vec![],
            };
            let mut f: HashMap<String, Any> = HashMap::new();
            f.insert("id".into(), Any::from(format!("s{i}")));
            f.insert("kind".into(), Any::from(kind));
            f.insert("x".into(), Any::from((i % 100) as f64 * 60.0));
            f.insert("y".into(), Any::from((i / 100) as f64 * 50.0));
            f.insert("w".into(), Any::from(44.0));
            f.insert("h".into(), Any::from(36.0));
            f.insert("points".into(), Any::from(points));
            f.insert("stroke".into(), Any::from("#1e1e1e"));
            f.insert("fill".into(), Any::from(if i % 3 != 0 { "transparent" } else { "#a5d8ff" }));
            f.insert("width".into(), Any::from(2.0));
            f.insert(
                "text".into(),
                Any::from(if kind == "text" { format!("note {i}") } else { String::new() }),
            );
            f.insert("z".into(), Any::from(i as f64));
            f.insert("author".into(), Any::from("bench"));
            shapes.insert(&mut txn, format!("s{i}"), Any::from(f));
        }
    }
    let update = src.transact().encode_state_as_update_v1(&StateVector::default());
    eprintln!("update: {} bytes", update.len());
    for _ in 0..reps {
        let t = Instant::now();
        let u = Update::decode_v1(&update).unwrap();
        let decoded = t.elapsed();
        let doc = Doc::new();
        let _m = doc.get_or_insert_map("shapes");
        let t2 = Instant::now();
        doc.transact_mut().apply_update(u).unwrap();
        let applied = t2.elapsed();
        let t3 = Instant::now();
        let board = huddle_protocol::schema::Board::new(&doc);
        let all = board.shapes(&doc.transact());
        let read = t3.elapsed();
        eprintln!("decode {decoded:?} apply {applied:?} read {read:?} ({} shapes)", all.len());
    }
}
