//! The board + chat document schema, with typed accessors.
//!
//! One Yjs document per room holds:
//! - `shapes`: a root `Y.Map` from shape id to a nested `Y.Map` of that shape's fields (nested so
//!   that two people changing different fields of one shape — one moves it, one recolours it —
//!   both win). A plain JSON object in place of the nested map is read as well, so a script can
//!   `shapes.set(id, {...})`.
//! - `chat`: a root `Y.Array` of chat messages, each a `Y.Map` (or plain object), in send order.
//!
//! Field names and types are listed in `shared/README.md` for non-Rust clients.

use std::collections::HashMap;
use std::sync::Arc;

use yrs::DeepObservable;
use yrs::types::{Event, PathSegment, ToJson};
use yrs::{
    Any, Array, ArrayPrelim, ArrayRef, Doc, In, Map, MapPrelim, MapRef, Out, ReadTxn,
    TransactionMut,
};

/// Name of the root map holding the shapes.
pub const SHAPES: &str = "shapes";
/// Name of the root array holding the chat messages.
pub const CHAT: &str = "chat";
/// Longest chat message accepted by Huddle's clients, in characters.
pub const MAX_CHAT_CHARS: usize = 4000;

/// What a shape is. Stored as its lowercase name (`"rect"`, `"pen"`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShapeKind {
    /// A freehand stroke through `points`.
    Pen,
    /// A rectangle with corner `(x, y)` and size `(w, h)`.
    Rect,
    /// An ellipse inscribed in the box `(x, y, w, h)`.
    Ellipse,
    /// A straight line through `points`.
    Line,
    /// A line through `points` with an arrow head at the last point.
    Arrow,
    /// Free text at `(x, y)`.
    Text,
    /// A sticky note: a filled box `(x, y, w, h)` with text.
    Sticky,
}

impl ShapeKind {
    /// Every kind, in palette order.
    pub const ALL: [ShapeKind; 7] = [
        ShapeKind::Pen,
        ShapeKind::Rect,
        ShapeKind::Ellipse,
        ShapeKind::Line,
        ShapeKind::Arrow,
        ShapeKind::Text,
        ShapeKind::Sticky,
    ];

    /// The name stored in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            ShapeKind::Pen => "pen",
            ShapeKind::Rect => "rect",
            ShapeKind::Ellipse => "ellipse",
            ShapeKind::Line => "line",
            ShapeKind::Arrow => "arrow",
            ShapeKind::Text => "text",
            ShapeKind::Sticky => "sticky",
        }
    }

    /// Parses a stored name; `None` for kinds this version does not know (they are skipped, so a
    /// newer client's shapes do not break an older one).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One shape on the board.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// Unique id (any string; Huddle uses `<client id>-<counter>` in base 36).
    pub id: String,
    /// What it is.
    pub kind: ShapeKind,
    /// Left of the bounding box, board units.
    pub x: f64,
    /// Top of the bounding box, board units.
    pub y: f64,
    /// Width of the bounding box.
    pub w: f64,
    /// Height of the bounding box.
    pub h: f64,
    /// Flat `[x0, y0, x1, y1, …]` relative to `(x, y)`, for pen, line and arrow.
    pub points: Vec<f64>,
    /// Stroke colour (CSS).
    pub stroke: String,
    /// Fill colour (CSS), `"transparent"` for none.
    pub fill: String,
    /// Stroke width in board units.
    pub width: f64,
    /// Text of text shapes and sticky notes (plain text, never HTML).
    pub text: String,
    /// Stacking order: larger is drawn on top; ties broken by id.
    pub z: f64,
    /// User id of whoever created it.
    pub author: String,
}

impl Shape {
    /// A shape of `kind` with neutral defaults, for builders and tests.
    pub fn new(id: impl Into<String>, kind: ShapeKind) -> Self {
        Self {
            id: id.into(),
            kind,
            x: 0.0,
            y: 0.0,
            w: 0.0,
            h: 0.0,
            points: Vec::new(),
            stroke: "#1e1e1e".into(),
            fill: "transparent".into(),
            width: 2.0,
            text: String::new(),
            z: 0.0,
            author: String::new(),
        }
    }

    /// The shape as a plain object's fields (the schema's other accepted form).
    fn to_fields(&self) -> HashMap<String, Any> {
        let points: Vec<Any> = self.points.iter().map(|&p| Any::from(p)).collect();
        HashMap::from([
            ("id".to_owned(), Any::from(self.id.as_str())),
            ("kind".to_owned(), Any::from(self.kind.as_str())),
            ("x".to_owned(), Any::from(self.x)),
            ("y".to_owned(), Any::from(self.y)),
            ("w".to_owned(), Any::from(self.w)),
            ("h".to_owned(), Any::from(self.h)),
            ("points".to_owned(), Any::Array(points.into())),
            ("stroke".to_owned(), Any::from(self.stroke.as_str())),
            ("fill".to_owned(), Any::from(self.fill.as_str())),
            ("width".to_owned(), Any::from(self.width)),
            ("text".to_owned(), Any::from(self.text.as_str())),
            ("z".to_owned(), Any::from(self.z)),
            ("author".to_owned(), Any::from(self.author.as_str())),
        ])
    }

    fn to_prelim(&self) -> MapPrelim {
        let points: Vec<Any> = self.points.iter().map(|&p| Any::from(p)).collect();
        MapPrelim::from([
            ("id", In::from(self.id.as_str())),
            ("kind", In::from(self.kind.as_str())),
            ("x", In::from(self.x)),
            ("y", In::from(self.y)),
            ("w", In::from(self.w)),
            ("h", In::from(self.h)),
            ("points", In::Any(Any::Array(points.into()))),
            ("stroke", In::from(self.stroke.as_str())),
            ("fill", In::from(self.fill.as_str())),
            ("width", In::from(self.width)),
            ("text", In::from(self.text.as_str())),
            ("z", In::from(self.z)),
            ("author", In::from(self.author.as_str())),
        ])
    }

    /// Reads a shape straight from its nested map, without building an intermediate JSON value
    /// (this runs for every shape when a board opens).
    fn from_map<T: ReadTxn>(key: &str, map: &MapRef, txn: &T) -> Option<Self> {
        // Strings start empty (no allocation) and get their defaults only when the map lacks
        // them: a third fewer allocations per shape.
        let mut shape = Shape {
            id: String::new(),
            kind: ShapeKind::Rect,
            x: 0.0,
            y: 0.0,
            w: 0.0,
            h: 0.0,
            points: Vec::new(),
            stroke: String::new(),
            fill: String::new(),
            width: 2.0,
            text: String::new(),
            z: 0.0,
            author: String::new(),
        };
        let (mut kind, mut has_id, mut has_stroke, mut has_fill) = (None, false, false, false);
        for (name, value) in map.iter(txn) {
            let value = match value {
                Out::Any(value) => value,
                // A growing pen stroke keeps its points in a nested array (see
                // [`Board::append_points`]).
                Out::YArray(points) if name == "points" => {
                    shape.points = points
                        .iter(txn)
                        .filter_map(|p| match p {
                            Out::Any(p) => any_number(&p),
                            _ => None,
                        })
                        .collect();
                    continue;
                }
                _ => continue,
            };
            match (name, value) {
                ("kind", Any::String(k)) => kind = ShapeKind::parse(&k),
                ("id", Any::String(v)) => {
                    shape.id = v.to_string();
                    has_id = true;
                }
                ("x", v) => shape.x = any_number(&v).unwrap_or(0.0),
                ("y", v) => shape.y = any_number(&v).unwrap_or(0.0),
                ("w", v) => shape.w = any_number(&v).unwrap_or(0.0),
                ("h", v) => shape.h = any_number(&v).unwrap_or(0.0),
                ("width", v) => shape.width = any_number(&v).unwrap_or(shape.width),
                ("z", v) => shape.z = any_number(&v).unwrap_or(0.0),
                ("points", Any::Array(points)) => {
                    shape.points = points.iter().filter_map(any_number).collect()
                }
                ("stroke", Any::String(v)) => {
                    shape.stroke = v.to_string();
                    has_stroke = true;
                }
                ("fill", Any::String(v)) => {
                    shape.fill = v.to_string();
                    has_fill = true;
                }
                ("text", Any::String(v)) => shape.text = v.to_string(),
                ("author", Any::String(v)) => shape.author = v.to_string(),
                _ => {}
            }
        }
        shape.kind = kind?;
        if !has_id {
            shape.id = key.to_owned();
        }
        if !has_stroke || !has_fill {
            let defaults = Shape::new(String::new(), shape.kind);
            if !has_stroke {
                shape.stroke = defaults.stroke;
            }
            if !has_fill {
                shape.fill = defaults.fill;
            }
        }
        Some(shape)
    }

    fn from_fields(key: &str, fields: &HashMap<String, Any>) -> Option<Self> {
        let kind = ShapeKind::parse(&str_field(fields, "kind")?)?;
        let mut shape = Shape::new(str_field(fields, "id").unwrap_or_else(|| key.to_owned()), kind);
        let num = |name: &str, default: f64| num_field(fields, name).unwrap_or(default);
        shape.x = num("x", 0.0);
        shape.y = num("y", 0.0);
        shape.w = num("w", 0.0);
        shape.h = num("h", 0.0);
        shape.width = num("width", shape.width);
        shape.z = num("z", 0.0);
        if let Some(Any::Array(points)) = fields.get("points") {
            shape.points = points.iter().filter_map(any_number).collect();
        }
        for (name, slot) in [
            ("stroke", &mut shape.stroke),
            ("fill", &mut shape.fill),
            ("text", &mut shape.text),
            ("author", &mut shape.author),
        ] {
            if let Some(v) = str_field(fields, name) {
                *slot = v;
            }
        }
        Some(shape)
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// Unique id.
    pub id: String,
    /// Stable user id of the author.
    pub author_id: String,
    /// Author's display name when they sent it.
    pub author_name: String,
    /// Author's colour when they sent it (CSS).
    pub author_color: String,
    /// The message (plain text, never HTML).
    pub text: String,
    /// When it was sent, milliseconds since the Unix epoch (sender's clock).
    pub ts: f64,
}

impl ChatMessage {
    fn to_prelim(&self) -> MapPrelim {
        MapPrelim::from([
            ("id", In::from(self.id.as_str())),
            ("authorId", In::from(self.author_id.as_str())),
            ("authorName", In::from(self.author_name.as_str())),
            ("authorColor", In::from(self.author_color.as_str())),
            ("text", In::from(self.text.as_str())),
            ("ts", In::from(self.ts)),
        ])
    }

    fn from_fields(fields: &HashMap<String, Any>) -> Option<Self> {
        Some(Self {
            id: str_field(fields, "id").unwrap_or_default(),
            author_id: str_field(fields, "authorId").unwrap_or_default(),
            author_name: str_field(fields, "authorName").unwrap_or_default(),
            author_color: str_field(fields, "authorColor").unwrap_or_default(),
            text: str_field(fields, "text")?,
            ts: num_field(fields, "ts").unwrap_or(0.0),
        })
    }
}

/// Typed access to one room's board and chat. Holds only root-type handles, so it is cheap to
/// create and clone; every read or write takes the caller's transaction.
#[derive(Debug, Clone)]
pub struct Board {
    shapes: MapRef,
    chat: ArrayRef,
}

impl Board {
    /// The board inside `doc` (creating the root types if this is a new document).
    ///
    /// Creating the root types takes a write transaction, so call this *before* opening a
    /// transaction on `doc` (yrs blocks a second transaction while one is open).
    pub fn new(doc: &Doc) -> Self {
        Self { shapes: doc.get_or_insert_map(SHAPES), chat: doc.get_or_insert_array(CHAT) }
    }

    /// Adds `shape`, or replaces the shape with the same id.
    pub fn put_shape(&self, txn: &mut TransactionMut<'_>, shape: &Shape) {
        self.shapes.insert(txn, shape.id.as_str(), shape.to_prelim());
    }

    /// Sets one field of an existing shape (e.g. `"x"` when moving it). Returns false if there is
    /// no such shape or it is stored as a plain object (then use [`Board::put_shape`]).
    pub fn set_field(
        &self,
        txn: &mut TransactionMut<'_>,
        id: &str,
        field: &str,
        value: impl Into<Any>,
    ) -> bool {
        match self.shapes.get(txn, id) {
            Some(Out::YMap(map)) => {
                map.insert(txn, field, In::Any(value.into()));
                true
            }
            _ => false,
        }
    }

    /// Appends `more` (flat `x, y` pairs) to a shape's `points`, sending only the new points:
    /// a pen stroke grows by appending, so drawing a long stroke costs O(its length) on the
    /// wire and in the server's log, not O(length²) as rewriting the whole list each time did.
    /// The first append turns a plain `points` list into a nested `Y.Array` holding the same
    /// numbers. Returns false if there is no such shape or it is stored as a plain object.
    pub fn append_points(&self, txn: &mut TransactionMut<'_>, id: &str, more: &[f64]) -> bool {
        let Some(Out::YMap(map)) = self.shapes.get(txn, id) else { return false };
        let more = more.iter().map(|&v| Any::from(v));
        match map.get(txn, "points") {
            Some(Out::YArray(points)) => {
                let end = points.len(txn);
                points.insert_range(txn, end, more);
            }
            existing => {
                let mut all: Vec<Any> = match existing {
                    Some(Out::Any(Any::Array(old))) => old.iter().cloned().collect(),
                    _ => Vec::new(),
                };
                all.extend(more);
                map.insert(txn, "points", ArrayPrelim::from(all));
            }
        }
        true
    }

    /// Removes a shape; returns whether it existed.
    pub fn remove_shape(&self, txn: &mut TransactionMut<'_>, id: &str) -> bool {
        self.shapes.remove(txn, id).is_some()
    }

    /// The shape with `id`, if present and of a known kind.
    pub fn shape<T: ReadTxn>(&self, txn: &T, id: &str) -> Option<Shape> {
        read_shape(txn, id, self.shapes.get(txn, id)?)
    }

    /// Number of entries in the shapes map (including any of unknown kinds).
    pub fn shape_count<T: ReadTxn>(&self, txn: &T) -> u32 {
        self.shapes.len(txn)
    }

    /// Every shape of a known kind, bottom to top (by `z`, then id).
    pub fn shapes<T: ReadTxn>(&self, txn: &T) -> Vec<Shape> {
        let mut all: Vec<Shape> =
            self.shapes.iter(txn).filter_map(|(key, out)| read_shape(txn, key, out)).collect();
        all.sort_by(drawing_order);
        all
    }

    /// Calls `changed` with the id of every shape a transaction touches — added, removed, or
    /// any field changed, in a nested map or a plain object — from inside the commit. Paired
    /// with [`Board::refresh`], this lets a view re-read only what changed: re-reading every
    /// shape after each remote edit took 37 ms at 10k shapes and 145 ms at 40k in the browser.
    /// `changed` returns whether it wants more ids from this transaction (a view that will
    /// re-read everything anyway returns false, and the rest of a big sync is skipped). `key`
    /// names the observer for [`Board::unobserve_shapes`].
    pub fn observe_shapes(
        &self,
        key: &str,
        mut changed: impl FnMut(&str) -> bool + Send + Sync + 'static,
    ) {
        self.shapes.observe_deep(key, move |txn, events| {
            for event in events.iter() {
                let more = match event.path().front() {
                    Some(PathSegment::Key(id)) => changed(id),
                    Some(PathSegment::Index(_)) => true,
                    None => match event {
                        Event::Map(e) => e.keys(txn).keys().all(|id| changed(id)),
                        _ => true,
                    },
                };
                if !more {
                    return;
                }
            }
        });
    }

    /// Stops the observer registered under `key`.
    pub fn unobserve_shapes(&self, key: &str) {
        self.shapes.unobserve_deep(key);
    }

    /// Brings `shapes` (a list in [`Board::shapes`] order) up to date for the shapes `changed`
    /// names, re-reading only those: each is removed and, if it still exists, re-inserted at
    /// its place in the drawing order.
    pub fn refresh<T: ReadTxn>(
        &self,
        txn: &T,
        shapes: &mut Vec<Shape>,
        changed: impl IntoIterator<Item = impl AsRef<str>>,
    ) {
        for id in changed {
            let id = id.as_ref();
            if let Some(at) = shapes.iter().position(|s| s.id == id) {
                shapes.remove(at);
            }
            if let Some(shape) = self.shape(txn, id) {
                let at = shapes.partition_point(|s| drawing_order(s, &shape).is_lt());
                shapes.insert(at, shape);
            }
        }
    }

    /// Appends a chat message.
    pub fn post_chat(&self, txn: &mut TransactionMut<'_>, message: &ChatMessage) {
        self.chat.push_back(txn, message.to_prelim());
    }

    /// Every chat message, in order.
    pub fn chat<T: ReadTxn>(&self, txn: &T) -> Vec<ChatMessage> {
        self.chat.iter(txn).filter_map(|out| ChatMessage::from_fields(&fields(txn, out)?)).collect()
    }
}

/// The key that marks Huddle shapes in clipboard text, so a paste can tell them from ordinary
/// text (and from another app's JSON).
pub const CLIPBOARD_KEY: &str = "huddle-shapes";

/// Most shapes one paste may add.
pub const MAX_PASTED_SHAPES: usize = 10_000;

/// `shapes` as clipboard text: `{"huddle-shapes": {<id>: {<fields>}}}`, each shape in the
/// schema's plain-object form. Plain text, so it survives every clipboard and can be pasted into
/// another Huddle (another tab, another server).
pub fn shapes_to_clipboard(shapes: &[Shape]) -> String {
    let by_id: HashMap<String, Any> =
        shapes.iter().map(|s| (s.id.clone(), Any::from(s.to_fields()))).collect();
    let mut out = String::new();
    Any::from(HashMap::from([(CLIPBOARD_KEY.to_owned(), Any::from(by_id))])).to_json(&mut out);
    out
}

/// The shapes in clipboard text written by [`shapes_to_clipboard`], in drawing order; `None`
/// for any other text, and for more than [`MAX_PASTED_SHAPES`] shapes.
pub fn shapes_from_clipboard(text: &str) -> Option<Vec<Shape>> {
    if !text.trim_start().starts_with('{') || !text.contains(CLIPBOARD_KEY) {
        return None;
    }
    let Ok(Any::Map(outer)) = Any::from_json(text) else { return None };
    let Some(Any::Map(by_id)) = outer.get(CLIPBOARD_KEY) else { return None };
    if by_id.len() > MAX_PASTED_SHAPES {
        return None;
    }
    let mut shapes: Vec<Shape> = by_id
        .iter()
        .filter_map(|(id, fields)| match fields {
            Any::Map(fields) => Shape::from_fields(id, fields),
            _ => None,
        })
        .collect();
    shapes.sort_by(drawing_order);
    Some(shapes)
}

/// Bottom to top: by `z`, then by id.
fn drawing_order(a: &Shape, b: &Shape) -> std::cmp::Ordering {
    a.z.total_cmp(&b.z).then_with(|| a.id.cmp(&b.id))
}

/// A shape stored as a nested map (Huddle's own) or as a plain object (a script's).
fn read_shape<T: ReadTxn>(txn: &T, key: &str, out: Out) -> Option<Shape> {
    match out {
        Out::YMap(map) => Shape::from_map(key, &map, txn),
        other => Shape::from_fields(key, &fields(txn, other)?),
    }
}

/// The fields of a nested `Y.Map` or of a plain JSON object, as plain values.
fn fields<T: ReadTxn>(txn: &T, out: Out) -> Option<HashMap<String, Any>> {
    match out {
        Out::YMap(map) => match map.to_json(txn) {
            Any::Map(m) => Some(Arc::unwrap_or_clone(m)),
            _ => None,
        },
        Out::Any(Any::Map(m)) => Some(Arc::unwrap_or_clone(m)),
        _ => None,
    }
}

fn str_field(fields: &HashMap<String, Any>, name: &str) -> Option<String> {
    match fields.get(name)? {
        Any::String(s) => Some(s.to_string()),
        _ => None,
    }
}

fn num_field(fields: &HashMap<String, Any>, name: &str) -> Option<f64> {
    any_number(fields.get(name)?)
}

fn any_number(any: &Any) -> Option<f64> {
    match any {
        Any::Number(n) => n.as_f64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Transact, Update};

    #[test]
    fn a_sparse_shape_map_reads_with_the_documented_defaults() {
        let doc = Doc::with_client_id(1);
        let board = Board::new(&doc);
        {
            let mut txn = doc.transact_mut();
            let sparse = MapPrelim::from([("kind", In::from("rect")), ("x", In::from(5.0))]);
            board.shapes.insert(&mut txn, "k1", sparse);
        }
        let got = board.shape(&doc.transact(), "k1").expect("read");
        let mut want = Shape::new("k1", ShapeKind::Rect);
        want.x = 5.0;
        assert_eq!(got, want);
    }

    #[test]
    fn a_growing_stroke_sends_only_its_new_points_and_reads_back_whole() {
        let doc = Doc::with_client_id(1);
        let board = Board::new(&doc);
        let mut pen = Shape::new("p1", ShapeKind::Pen);
        pen.points = vec![0.0, 0.0];
        board.put_shape(&mut doc.transact_mut(), &pen);
        let peer = Doc::with_client_id(2);
        let sync = doc.transact().encode_state_as_update_v1(&yrs::StateVector::default());
        peer.transact_mut()
            .apply_update(Update::decode_v1(&sync).expect("decodes"))
            .expect("applies");

        // Append 2,000 points in steps of 10, as a pen stroke does while drawing.
        let mut sizes = Vec::new();
        for step in 0..200 {
            let more: Vec<f64> = (0..10).map(|i| f64::from(step * 10 + i)).collect();
            let mut txn = doc.transact_mut();
            assert!(board.append_points(&mut txn, "p1", &more));
            let update = txn.encode_update_v1();
            drop(txn);
            sizes.push(update.len());
            peer.transact_mut()
                .apply_update(Update::decode_v1(&update).expect("decodes"))
                .expect("applies");
        }
        // The last step costs what an early one did: the update carries the new points only.
        assert!(sizes[199] <= sizes[1] + 8, "update sizes grew: {} then {}", sizes[1], sizes[199]);
        let expected: Vec<f64> = [0.0, 0.0].into_iter().chain((0..2000).map(f64::from)).collect();
        for d in [&doc, &peer] {
            let got = Board::new(d).shape(&d.transact(), "p1").expect("the stroke");
            assert_eq!(got.points, expected);
        }
        // Rewriting the points (a resize) goes back to a plain list, still read the same way.
        assert!(board.set_field(
            &mut doc.transact_mut(),
            "p1",
            "points",
            Any::from(vec![1.0, 2.0])
        ));
        assert_eq!(board.shape(&doc.transact(), "p1").expect("the stroke").points, vec![1.0, 2.0]);
        assert!(!board.append_points(&mut doc.transact_mut(), "missing", &[1.0, 2.0]));
    }

    #[test]
    fn a_refreshed_list_matches_a_full_read_after_local_and_remote_changes() {
        let doc = Doc::with_client_id(1);
        let board = Board::new(&doc);
        let changed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&changed);
        board.observe_shapes("test", move |id| {
            sink.lock().expect("lock").push(id.to_owned());
            true
        });
        let mut list = Vec::new();
        let mut check = |what: &str| {
            let ids = std::mem::take(&mut *changed.lock().expect("lock"));
            let txn = doc.transact();
            board.refresh(&txn, &mut list, &ids);
            assert_eq!(list, board.shapes(&txn), "after {what}");
        };
        {
            let mut txn = doc.transact_mut();
            for i in 0..20 {
                let mut shape = Shape::new(format!("s{i}"), ShapeKind::Rect);
                shape.z = f64::from(i % 7);
                board.put_shape(&mut txn, &shape);
            }
        }
        check("adding twenty");
        assert!(board.set_field(&mut doc.transact_mut(), "s3", "z", 100.0));
        check("bringing one to the front");
        assert!(board.set_field(&mut doc.transact_mut(), "s4", "x", 5.0));
        check("moving one");
        assert!(board.remove_shape(&mut doc.transact_mut(), "s5"));
        check("deleting one");
        // A remote client's plain-object shape and its own edit, arriving as updates.
        let other = Doc::with_client_id(2);
        let update = {
            let shapes = other.get_or_insert_map(SHAPES);
            let mut txn = other.transact_mut();
            let fields: HashMap<String, Any> = HashMap::from([
                ("id".into(), Any::from("plain")),
                ("kind".into(), Any::from("ellipse")),
                ("z".into(), Any::from(3.5)),
            ]);
            shapes.insert(&mut txn, "plain", Any::from(fields));
            txn.encode_update_v1()
        };
        doc.transact_mut()
            .apply_update(Update::decode_v1(&update).expect("decodes"))
            .expect("applies");
        check("a remote plain object");
        board.unobserve_shapes("test");
        board.put_shape(&mut doc.transact_mut(), &Shape::new("unseen", ShapeKind::Text));
        assert!(changed.lock().expect("lock").is_empty(), "no calls after unobserving");
    }

    #[test]
    fn shapes_round_trip_through_clipboard_text_and_other_text_is_not_shapes() {
        let mut pen = Shape::new("p1", ShapeKind::Pen);
        pen.points = vec![0.0, 0.0, 3.5, 4.0];
        pen.text = "<b>\"quoted\"</b>".into();
        pen.z = 2.0;
        let mut rect = Shape::new("r1", ShapeKind::Rect);
        rect.fill = "#a5d8ff".into();
        let text = shapes_to_clipboard(&[pen.clone(), rect.clone()]);
        assert_eq!(shapes_from_clipboard(&text), Some(vec![rect, pen]));
        assert_eq!(shapes_from_clipboard("hello"), None);
        assert_eq!(shapes_from_clipboard(r#"{"other": 1}"#), None);
        assert_eq!(shapes_from_clipboard(r#"{"huddle-shapes": 3}"#), None);
        assert_eq!(shapes_from_clipboard("{\"huddle-shapes\": {"), None);
    }

    #[test]
    fn shapes_and_chat_round_trip_through_an_update() {
        let a = Doc::with_client_id(1);
        let board = Board::new(&a);
        let mut rect = Shape::new("r1", ShapeKind::Rect);
        rect.x = 10.0;
        rect.w = 100.5;
        rect.text = "<b>not html</b>".into();
        let mut pen = Shape::new("p1", ShapeKind::Pen);
        pen.points = vec![0.0, 0.0, 3.5, 4.0];
        pen.z = -1.0;
        let msg = ChatMessage {
            id: "m1".into(),
            author_id: "u1".into(),
            author_name: "Ada".into(),
            author_color: "#e03131".into(),
            text: "hi".into(),
            ts: 1.7e12,
        };
        let update = {
            let mut txn = a.transact_mut();
            board.put_shape(&mut txn, &rect);
            board.put_shape(&mut txn, &pen);
            assert!(board.set_field(&mut txn, "r1", "y", 42.0));
            board.post_chat(&mut txn, &msg);
            txn.encode_update_v1()
        };

        let b = Doc::with_client_id(2);
        let remote = Board::new(&b);
        let mut txn = b.transact_mut();
        txn.apply_update(Update::decode_v1(&update).expect("decodes")).expect("applies");
        rect.y = 42.0;
        assert_eq!(remote.shapes(&txn), vec![pen, rect]);
        assert_eq!(remote.chat(&txn), vec![msg]);
        assert!(remote.remove_shape(&mut txn, "r1"));
        assert_eq!(remote.shape_count(&txn), 1);
    }

    #[test]
    fn plain_objects_and_unknown_kinds() {
        let doc = Doc::new();
        let board = Board::new(&doc);
        let shapes = doc.get_or_insert_map(SHAPES);
        let mut txn = doc.transact_mut();
        let obj = |kind: &str| {
            Any::from(HashMap::from([
                ("kind".to_owned(), Any::from(kind)),
                ("x".to_owned(), Any::from(5i64)),
            ]))
        };
        shapes.insert(&mut txn, "js", obj("ellipse"));
        shapes.insert(&mut txn, "future", obj("hologram"));
        let all = board.shapes(&txn);
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].id.as_str(), all[0].kind, all[0].x), ("js", ShapeKind::Ellipse, 5.0));
        assert_eq!(board.shape_count(&txn), 2);
    }
}
