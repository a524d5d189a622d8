//! Room contents for the scenarios, in Huddle's documented schema (so any Yjs client reading
//! that schema sees a real board).

use huddle_protocol::schema::{Board, SHAPES, Shape, ShapeKind};
use huddle_protocol::yrs::{Any, Doc, In, Map, MapPrelim, Transact};

/// How the seeded shapes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShapeForm {
    /// One plain object per shape, as Huddle writes them (about 150 bytes of update each).
    Object,
    /// A nested `Y.Map` of all 13 fields per shape, as older rooms and some clients hold them
    /// (about 340 bytes each, and 14 CRDT items instead of one): the form the figures
    /// for the peers were first taken with.
    Map,
}

/// The mix of a real board: rectangles, ellipses, pen strokes, text and arrows, laid out on a
/// grid: shapes `first .. first + count`, stored in `form`.
pub fn mixed_shapes(doc: &Doc, first: usize, count: usize, form: ShapeForm) {
    let board = Board::new(doc);
    let shapes = doc.get_or_insert_map(SHAPES);
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
        match form {
            ShapeForm::Object => board.put_shape(&mut txn, &shape),
            ShapeForm::Map => {
                let points: Vec<Any> = shape.points.iter().map(|&p| Any::from(p)).collect();
                let fields = MapPrelim::from([
                    ("id", In::from(shape.id.as_str())),
                    ("kind", In::from(shape.kind.as_str())),
                    ("x", In::from(shape.x)),
                    ("y", In::from(shape.y)),
                    ("w", In::from(shape.w)),
                    ("h", In::from(shape.h)),
                    ("points", In::Any(Any::Array(points.into()))),
                    ("stroke", In::from(shape.stroke.as_str())),
                    ("fill", In::from(shape.fill.as_str())),
                    ("width", In::from(shape.width)),
                    ("text", In::from(shape.text.as_str())),
                    ("z", In::from(shape.z)),
                    ("author", In::from(shape.author.as_str())),
                ]);
                shapes.insert(&mut txn, shape.id.as_str(), fields);
            }
        }
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
