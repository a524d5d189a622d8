//! Room contents for the scenarios, in Huddle's documented schema (so any Yjs client reading
//! that schema sees a real board).

use huddle_protocol::schema::{Board, Shape, ShapeKind};
use huddle_protocol::yrs::{Doc, Transact};

/// The mix of a real board: rectangles, ellipses, pen strokes, text and arrows, laid out on a
/// grid: shapes `first .. first + count`, each a nested map of the schema's 13 fields (about
/// 340 bytes of update per shape).
pub fn mixed_shapes(doc: &Doc, first: usize, count: usize) {
    let board = Board::new(doc);
    let mut txn = doc.transact_mut();
    let kinds =
        [ShapeKind::Rect, ShapeKind::Ellipse, ShapeKind::Pen, ShapeKind::Text, ShapeKind::Arrow];
    for i in first..first + count {
        let kind = kinds[i % kinds.len()];
        let mut shape = Shape::new(format!("s{i}"), kind);
        shape.x = (i % 200) as f64 * 60.0;
        shape.y = (i / 200) as f64 * 60.0;
        shape.w = 44.0;
        shape.h = 36.0;
        shape.points = match kind {
            ShapeKind::Pen => vec![0.0, 0.0, 10.0, 12.0, 20.0, 8.0, 30.0, 20.0, 40.0, 14.0],
            ShapeKind::Arrow => vec![0.0, 0.0, 40.0, 30.0],
            _ => Vec::new(),
        };
        if i % 3 == 0 {
            shape.fill = "#a5d8ff".into();
        }
        if kind == ShapeKind::Text {
            shape.text = format!("note {i}");
        }
        shape.z = i as f64;
        shape.author = "bench".into();
        board.put_shape(&mut txn, &shape);
    }
}

/// One shape owned by a scenario client (it moves it around).
pub fn own_shape(doc: &Doc, id: &str) {
    let board = Board::new(doc);
    let mut shape = Shape::new(id, ShapeKind::Rect);
    shape.w = 40.0;
    shape.h = 30.0;
    shape.author = id.into();
    board.put_shape(&mut doc.transact_mut(), &shape);
}
