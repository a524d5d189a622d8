//! Room contents for the scenarios, in Huddle's documented schema (so any Yjs client reading
//! that schema sees a real board).

use huddle_protocol::schema::{Board, SHAPES, Shape, ShapeKind};
use huddle_protocol::yrs::{Any, Doc, In, Map, MapPrelim, MapRef, Transact, TransactionMut};

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
        insert_shape(&board, &shapes, &mut txn, &shape, form);
    }
}

/// Writes `shape` into the room's shapes map in `form`.
fn insert_shape(
    board: &Board,
    shapes: &MapRef,
    txn: &mut TransactionMut<'_>,
    shape: &Shape,
    form: ShapeForm,
) {
    match form {
        ShapeForm::Object => board.put_shape(txn, shape),
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
            shapes.insert(txn, shape.id.as_str(), fields);
        }
    }
}

/// One shape owned by a scenario client (it moves it around), stored in `form`: moving a
/// plain-object shape rewrites all its fields (as the web client does), moving a nested-map
/// shape sets one field (as a stock Yjs client holding such a shape does).
pub fn own_shape(doc: &Doc, id: &str, form: ShapeForm) {
    let board = Board::new(doc);
    let shapes = doc.get_or_insert_map(SHAPES);
    let mut shape = Shape::new(id, ShapeKind::Rect);
    shape.w = 40.0;
    shape.h = 30.0;
    shape.author = id.into();
    insert_shape(&board, &shapes, &mut doc.transact_mut(), &shape, form);
}

#[cfg(test)]
mod tests {
    use super::*;
    use huddle_protocol::yrs::ReadTxn;

    /// A scenario client's shape reads back the same in either form after a move, and moving a
    /// nested-map shape sends the one field (what the `map` form is for), a plain object all.
    #[test]
    fn a_moved_shape_reads_back_in_either_form_and_a_nested_map_sends_one_field() {
        let mut sizes = Vec::new();
        for form in [ShapeForm::Object, ShapeForm::Map] {
            let doc = Doc::new();
            own_shape(&doc, "c1", form);
            let board = Board::new(&doc);
            let before = doc.transact().state_vector();
            assert!(board.set_field(&mut doc.transact_mut(), "c1", "x", 5.0), "{form:?}");
            sizes.push(doc.transact().encode_state_as_update_v1(&before).len());
            let shape = board.shape(&doc.transact(), "c1").expect("the shape is there");
            assert_eq!((shape.x, shape.w, shape.author.as_str()), (5.0, 40.0, "c1"), "{form:?}");
        }
        assert!(sizes[1] * 2 < sizes[0], "update sizes, object then map: {sizes:?}");
    }
}
