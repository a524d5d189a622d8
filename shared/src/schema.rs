//! The board + chat document schema, with typed accessors.
//!
//! One Yjs document per room holds:
//! - `shapes`: a root `Y.Map` from shape id to that shape's fields as one plain JSON object.
//!   One value per shape, not a nested `Y.Map` of fields: opening a board costs one CRDT item
//!   per shape instead of fourteen, which made applying a 10,000-shape room about 4× faster (see
//!   `docs/benchmarks.md`). The price is the one Excalidraw and tldraw pay too: two people
//!   changing the *same* shape at the same instant keep the last writer's version. Shapes stored
//!   as nested `Y.Map`s (older rooms, other clients, and a pen stroke while it is being drawn,
//!   whose points grow by appending) are read and edited as well.
//! - `chat`: a root `Y.Array` of chat messages, each a plain object (or `Y.Map`), in send order.
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
/// Stroke colour of a shape that names none.
pub const DEFAULT_STROKE: &str = "#1e1e1e";
/// Fill of a shape that names none: no fill.
pub const DEFAULT_FILL: &str = "transparent";
/// Stroke width of a shape that names none, board units.
pub const DEFAULT_WIDTH: f64 = 2.0;
/// Whether `color` may be handed to CSS and SVG as a colour: a hex colour (`#rgb`, `#rgba`,
/// `#rrggbb`, `#rrggbbaa`), a keyword (`transparent`, `red`, …), or `rgb()`, `rgba()`, `hsl()`
/// or `hsla()` of plain numbers.
///
/// Colours come from peers: any Yjs client can write a shape, a chat message or its presence.
/// A value such as `url(https://…)` set as an element's background would make every viewer's
/// browser fetch that address, telling a stranger who is looking, and SVG would follow it too.
/// Readers of the schema ([`Board`], and presence in [`crate::session`]) treat any other value as
/// absent.
pub fn is_safe_color(color: &str) -> bool {
    if color.len() > 64 {
        return false;
    }
    if let Some(hex) = color.strip_prefix('#') {
        return matches!(hex.len(), 3 | 4 | 6 | 8) && hex.bytes().all(|c| c.is_ascii_hexdigit());
    }
    if !color.is_empty() && color.len() <= 24 && color.bytes().all(|c| c.is_ascii_alphabetic()) {
        return true;
    }
    ["rgb(", "rgba(", "hsl(", "hsla("].iter().any(|f| {
        color.strip_prefix(f).and_then(|rest| rest.strip_suffix(')')).is_some_and(|body| {
            // No parentheses, quotes, backslashes or colons: nothing inside can be a function
            // (`url(`, `var(`), an escape or another declaration.
            body.bytes().all(|c| c.is_ascii_alphanumeric() || b" .,%/+-".contains(&c))
        })
    })
}

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

    /// Whether this kind is drawn through `points` rather than its box.
    pub fn uses_points(self) -> bool {
        matches!(self, ShapeKind::Pen | ShapeKind::Line | ShapeKind::Arrow)
    }
}

/// `(x0, y0, x1, y1)` of what a shape covers on the board: its points or its box (either may
/// run backwards), grown by half its stroke width. One function for [`Shape::bounds`] and for
/// [`Board::shapes_meeting`], which works it out without building the shape.
fn bounds_of(
    kind: ShapeKind,
    (x, y, w, h): (f64, f64, f64, f64),
    width: f64,
    points: Option<(f64, f64, f64, f64)>,
) -> (f64, f64, f64, f64) {
    let pad = width / 2.0;
    let (x0, y0, x1, y1) = match points {
        Some((px0, py0, px1, py1)) if kind.uses_points() => (x + px0, y + py0, x + px1, y + py1),
        _ => (x.min(x + w), y.min(y + h), x.max(x + w), y.max(y + h)),
    };
    (x0 - pad, y0 - pad, x1 + pad, y1 + pad)
}

/// The smallest box around the points of a flat `[x0, y0, x1, y1, …]` list (`None` without a
/// whole point).
fn points_box(points: impl Iterator<Item = f64>) -> Option<(f64, f64, f64, f64)> {
    let mut points = points;
    let mut b: Option<(f64, f64, f64, f64)> = None;
    while let (Some(px), Some(py)) = (points.next(), points.next()) {
        b = Some(match b {
            None => (px, py, px, py),
            Some((x0, y0, x1, y1)) => (x0.min(px), y0.min(py), x1.max(px), y1.max(py)),
        });
    }
    b
}

/// Whether two `(x0, y0, x1, y1)` boxes meet.
fn meets(a: (f64, f64, f64, f64), b: (f64, f64, f64, f64)) -> bool {
    a.2 >= b.0 && a.0 <= b.2 && a.3 >= b.1 && a.1 <= b.3
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
    /// `(x0, y0, x1, y1)` of what the shape covers on the board, stroke included.
    pub fn bounds(&self) -> (f64, f64, f64, f64) {
        let points =
            if self.kind.uses_points() { points_box(self.points.iter().copied()) } else { None };
        bounds_of(self.kind, (self.x, self.y, self.w, self.h), self.width, points)
    }

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
            stroke: DEFAULT_STROKE.into(),
            fill: DEFAULT_FILL.into(),
            width: DEFAULT_WIDTH,
            text: String::new(),
            z: 0.0,
            author: String::new(),
        }
    }

    /// The shape as the schema's plain object. Fields holding their documented default (empty
    /// `points` and `text`, `"transparent"` fill, `"#1e1e1e"` stroke, width 2, `id` equal to the
    /// key) are left out: fewer bytes to send, store and decode for every shape.
    fn to_fields(&self) -> HashMap<String, Any> {
        self.fields(false)
    }

    /// The shape's fields, those at their default included when `all` (for exports, which
    /// people read).
    fn fields(&self, all: bool) -> HashMap<String, Any> {
        let mut fields = HashMap::with_capacity(13);
        let mut put = |name: &str, value: Any| {
            fields.insert(name.to_owned(), value);
        };
        put("kind", Any::from(self.kind.as_str()));
        put("x", num(self.x));
        put("y", num(self.y));
        put("w", num(self.w));
        put("h", num(self.h));
        put("z", num(self.z));
        if all {
            put("id", Any::from(self.id.as_str()));
        }
        if all || !self.points.is_empty() {
            let points: Vec<Any> = self.points.iter().map(|&p| num(p)).collect();
            put("points", Any::Array(points.into()));
        }
        if all || self.stroke != DEFAULT_STROKE {
            put("stroke", Any::from(self.stroke.as_str()));
        }
        if all || self.fill != DEFAULT_FILL {
            put("fill", Any::from(self.fill.as_str()));
        }
        if all || self.width != DEFAULT_WIDTH {
            put("width", num(self.width));
        }
        if all || !self.text.is_empty() {
            put("text", Any::from(self.text.as_str()));
        }
        if all || !self.author.is_empty() {
            put("author", Any::from(self.author.as_str()));
        }
        fields
    }

    /// The shape as a nested map whose `points` are a `Y.Array`, for a stroke that will grow
    /// (see [`Board::begin_stroke`]).
    fn to_prelim(&self) -> MapPrelim {
        let points: Vec<Any> = self.points.iter().map(|&p| num(p)).collect();
        MapPrelim::from([
            ("id", In::from(self.id.as_str())),
            ("kind", In::from(self.kind.as_str())),
            ("x", In::Any(num(self.x))),
            ("y", In::Any(num(self.y))),
            ("w", In::Any(num(self.w))),
            ("h", In::Any(num(self.h))),
            ("points", In::from(ArrayPrelim::from(points))),
            ("stroke", In::from(self.stroke.as_str())),
            ("fill", In::from(self.fill.as_str())),
            ("width", In::Any(num(self.width))),
            ("text", In::from(self.text.as_str())),
            ("z", In::Any(num(self.z))),
            ("author", In::from(self.author.as_str())),
        ])
    }

    /// Reads a shape from its nested map, without building an intermediate JSON value.
    fn from_map<T: ReadTxn>(key: &str, map: &MapRef, txn: &T) -> Option<Self> {
        let mut reader = ShapeReader::default();
        for (name, value) in map.iter(txn) {
            match value {
                Out::Any(value) => reader.field(name, &value),
                // A pen stroke being drawn keeps its points in a nested array (see
                // [`Board::begin_stroke`]).
                Out::YArray(points) if name == "points" => {
                    reader.shape.points = point_pairs(points.iter(txn).map(|p| match p {
                        Out::Any(p) => any_number(&p),
                        _ => None,
                    }));
                }
                _ => {}
            }
        }
        reader.finish(key)
    }

    /// Reads a shape from its plain object.
    fn from_fields(key: &str, fields: &HashMap<String, Any>) -> Option<Self> {
        let mut reader = ShapeReader::default();
        for (name, value) in fields {
            reader.field(name, value);
        }
        reader.finish(key)
    }
}

/// Builds a [`Shape`] from its fields in one pass over them, whichever form they are stored in.
/// This runs for every shape when a board opens, so it looks each field up once instead of
/// hashing every name, and gives strings their defaults only when they are missing.
struct ShapeReader {
    shape: Shape,
    kind: Option<ShapeKind>,
    has_stroke: bool,
    has_fill: bool,
}

impl Default for ShapeReader {
    fn default() -> Self {
        Self {
            // Strings start empty: no allocation until a field is read.
            shape: Shape {
                id: String::new(),
                kind: ShapeKind::Rect,
                x: 0.0,
                y: 0.0,
                w: 0.0,
                h: 0.0,
                points: Vec::new(),
                stroke: String::new(),
                fill: String::new(),
                width: DEFAULT_WIDTH,
                text: String::new(),
                z: 0.0,
                author: String::new(),
            },
            kind: None,
            has_stroke: false,
            has_fill: false,
        }
    }
}

impl ShapeReader {
    fn field(&mut self, name: &str, value: &Any) {
        let shape = &mut self.shape;
        match (name, value) {
            ("kind", Any::String(k)) => self.kind = ShapeKind::parse(k),
            ("x", v) => shape.x = coordinate(v),
            ("y", v) => shape.y = coordinate(v),
            ("w", v) => shape.w = coordinate(v),
            ("h", v) => shape.h = coordinate(v),
            ("width", v) => shape.width = stroke_width(v),
            ("z", v) => shape.z = any_number(v).map_or(0.0, |z| z.clamp(-MAX_Z, MAX_Z)),
            ("points", Any::Array(points)) => {
                shape.points = point_pairs(points.iter().map(any_number))
            }
            ("stroke", Any::String(v)) if is_safe_color(v) => {
                shape.stroke = v.to_string();
                self.has_stroke = true;
            }
            ("fill", Any::String(v)) if is_safe_color(v) => {
                shape.fill = v.to_string();
                self.has_fill = true;
            }
            ("text", Any::String(v)) => shape.text = at_most(v, MAX_TEXT_CHARS),
            ("author", Any::String(v)) => shape.author = at_most(v, MAX_NAME_CHARS),
            _ => {}
        }
    }

    fn finish(self, key: &str) -> Option<Shape> {
        let mut shape = self.shape;
        shape.kind = self.kind?;
        // The key, never an `id` field: a peer could write a shape whose field names another's
        // key, and every edit, erase and restack of it would then land on that other shape.
        shape.id = key.to_owned();
        if !self.has_stroke {
            shape.stroke = DEFAULT_STROKE.to_owned();
        }
        if !self.has_fill {
            shape.fill = DEFAULT_FILL.to_owned();
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
    /// The message as one plain object: messages are never edited, so a nested map's per-field
    /// items would only make the room slower to open.
    fn to_any(&self) -> Any {
        Any::from(HashMap::from([
            ("id".to_owned(), Any::from(self.id.as_str())),
            ("authorId".to_owned(), Any::from(self.author_id.as_str())),
            ("authorName".to_owned(), Any::from(self.author_name.as_str())),
            ("authorColor".to_owned(), Any::from(self.author_color.as_str())),
            ("text".to_owned(), Any::from(self.text.as_str())),
            ("ts".to_owned(), Any::from(self.ts)),
        ]))
    }

    fn from_fields(fields: &HashMap<String, Any>) -> Option<Self> {
        Some(Self {
            id: str_field(fields, "id").map(|id| at_most(&id, MAX_NAME_CHARS)).unwrap_or_default(),
            author_id: str_field(fields, "authorId")
                .map(|id| at_most(&id, MAX_NAME_CHARS))
                .unwrap_or_default(),
            author_name: str_field(fields, "authorName")
                .map(|name| at_most(&name, MAX_NAME_CHARS))
                .unwrap_or_default(),
            author_color: str_field(fields, "authorColor")
                .filter(|c| is_safe_color(c))
                .unwrap_or_default(),
            // Longer than Huddle's clients send: cut, so one message cannot freeze the panel.
            text: at_most(&str_field(fields, "text")?, MAX_CHAT_CHARS),
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
    /// Where [`Board::remove_shape`] leaves the fields of a nested-map shape it removes, for an
    /// undo history (see [`crate::history::History::board`]): once removed, a nested map reads
    /// as empty, even to the transaction's own observers.
    keep_removed: Option<RemovedFields>,
}

/// The fields of nested-map shapes a [`Board`] removed, by id (see `Board::keep_removed`).
pub(crate) type RemovedFields = Arc<std::sync::Mutex<HashMap<String, Arc<HashMap<String, Any>>>>>;

impl Board {
    /// The board inside `doc` (creating the root types if this is a new document).
    ///
    /// Creating the root types takes a write transaction, so call this *before* opening a
    /// transaction on `doc` (yrs blocks a second transaction while one is open).
    pub fn new(doc: &Doc) -> Self {
        Self {
            shapes: doc.get_or_insert_map(SHAPES),
            chat: doc.get_or_insert_array(CHAT),
            keep_removed: None,
        }
    }

    /// This board, leaving the fields of each nested-map shape it removes in `keep`.
    pub(crate) fn keeping_removed(mut self, keep: RemovedFields) -> Self {
        self.keep_removed = Some(keep);
        self
    }

    /// Adds `shape`, or replaces the shape with the same id, as one plain object.
    pub fn put_shape(&self, txn: &mut TransactionMut<'_>, shape: &Shape) {
        self.shapes.insert(txn, shape.id.as_str(), Any::from(shape.to_fields()));
    }

    /// Adds a pen stroke that is about to grow: stored as a nested map whose `points` are a
    /// `Y.Array`, so each [`Board::append_points`] sends only the new points (O(stroke) on the
    /// wire and in the server's log, not O(stroke²) as rewriting the list each time did).
    /// [`Board::settle`] turns it into the compact form once the stroke is finished.
    pub fn begin_stroke(&self, txn: &mut TransactionMut<'_>, shape: &Shape) {
        self.shapes.insert(txn, shape.id.as_str(), shape.to_prelim());
    }

    /// Turns a shape stored as a nested map (this client's finished stroke) into one plain
    /// object, the form that is cheapest to open, with `more` points (flat `x, y` pairs not
    /// yet appended) added at the end: one write finishes the stroke. It keeps the schema's
    /// fields only, and a change someone else makes to the nested map while this is in flight
    /// (one round trip) is lost, so Huddle settles only its own strokes, once, on pointer-up.
    /// Returns false if there is no such shape, or it already is a plain object.
    pub fn settle(&self, txn: &mut TransactionMut<'_>, id: &str, more: &[f64]) -> bool {
        let Some(Out::YMap(map)) = self.shapes.get(txn, id) else { return false };
        let Some(mut shape) = Shape::from_map(id, &map, txn) else { return false };
        self.keep_if_nested(txn, id);
        shape.points.extend_from_slice(more);
        self.put_shape(txn, &shape);
        true
    }

    /// Sets one field of an existing shape (e.g. `"z"` when restacking it). Returns false if
    /// there is no such shape.
    pub fn set_field(
        &self,
        txn: &mut TransactionMut<'_>,
        id: &str,
        field: &str,
        value: impl Into<Any>,
    ) -> bool {
        self.set_fields(txn, id, [(field, value.into())])
    }

    /// Sets several fields of an existing shape in one write (moving it sets `x` and `y`).
    /// A plain-object shape is replaced by a copy with the fields changed, so a concurrent
    /// change of the same shape by someone else is settled as last writer wins; a nested-map
    /// shape gets each field set on its own, except the `points` of a stroke still being drawn
    /// (a `Y.Array` its author appends to, see [`Board::begin_stroke`]): replacing them would
    /// drop the points on their way and make the stroke jump; they can be changed once it is
    /// finished. Returns false if there is no such shape.
    pub fn set_fields<'a>(
        &self,
        txn: &mut TransactionMut<'_>,
        id: &str,
        changes: impl IntoIterator<Item = (&'a str, Any)>,
    ) -> bool {
        match self.shapes.get(txn, id) {
            Some(Out::YMap(map)) => {
                for (field, value) in changes {
                    if field == "points" && matches!(map.get(txn, "points"), Some(Out::YArray(_))) {
                        continue;
                    }
                    map.insert(txn, field, In::Any(compact(value)));
                }
                true
            }
            Some(Out::Any(Any::Map(fields))) => {
                let mut fields = Arc::unwrap_or_clone(fields);
                for (field, value) in changes {
                    fields.insert(field.to_owned(), compact(value));
                }
                self.shapes.insert(txn, id, Any::from(fields));
                true
            }
            _ => false,
        }
    }

    /// Appends `more` (flat `x, y` pairs) to the `points` of a stroke begun with
    /// [`Board::begin_stroke`], sending only the new points. A nested-map shape whose `points`
    /// are a plain list gets them turned into a `Y.Array` first; a plain-object shape is
    /// rewritten whole. Returns false if there is no such shape.
    pub fn append_points(&self, txn: &mut TransactionMut<'_>, id: &str, more: &[f64]) -> bool {
        let more = more.iter().map(|&v| num(v));
        let map = match self.shapes.get(txn, id) {
            Some(Out::YMap(map)) => map,
            Some(Out::Any(Any::Map(fields))) => {
                let mut all: Vec<Any> = match fields.get("points") {
                    Some(Any::Array(old)) => old.to_vec(),
                    _ => Vec::new(),
                };
                all.extend(more);
                return self.set_fields(txn, id, [("points", Any::Array(all.into()))]);
            }
            _ => return false,
        };
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
        self.keep_if_nested(txn, id);
        self.shapes.remove(txn, id).is_some()
    }

    /// Before shape `id` is removed or replaced: if it is a nested map and this board keeps
    /// such shapes' fields (see [`Board::keeping_removed`]), keeps them.
    fn keep_if_nested(&self, txn: &TransactionMut<'_>, id: &str) {
        if let Some(keep) = &self.keep_removed
            && let Some(Out::YMap(map)) = self.shapes.get(txn, id)
            && let Any::Map(fields) = map.to_json(txn)
            && let Ok(mut keep) = keep.lock()
        {
            keep.insert(id.to_owned(), fields);
        }
    }

    /// The root map of shapes, for [`crate::history`].
    pub(crate) fn shapes_ref(&self) -> &MapRef {
        &self.shapes
    }

    /// Stores `fields` as shape `id`'s plain object, as they are (an undo putting back a shape
    /// exactly as it was).
    pub(crate) fn put_fields(
        &self,
        txn: &mut TransactionMut<'_>,
        id: &str,
        fields: &Arc<HashMap<String, Any>>,
    ) {
        self.shapes.insert(txn, id, Any::Map(Arc::clone(fields)));
    }

    /// Sets (`Some`) or removes (`None`) fields of an existing shape, as they are, in whichever
    /// form it is stored (see [`Board::set_fields`], whose rules for a growing stroke's points
    /// this follows). Returns the changes it made (none if there is no such shape).
    pub(crate) fn restore_fields(
        &self,
        txn: &mut TransactionMut<'_>,
        id: &str,
        changes: Vec<(String, Option<Any>)>,
    ) -> HashMap<String, Option<Any>> {
        let mut written = HashMap::new();
        match self.shapes.get(txn, id) {
            Some(Out::YMap(map)) => {
                for (field, value) in changes {
                    if field == "points" && matches!(map.get(txn, "points"), Some(Out::YArray(_))) {
                        continue;
                    }
                    match &value {
                        Some(value) => {
                            map.insert(txn, field.as_str(), In::Any(value.clone()));
                        }
                        None => {
                            map.remove(txn, &field);
                        }
                    }
                    written.insert(field, value);
                }
            }
            Some(Out::Any(Any::Map(fields))) if !changes.is_empty() => {
                let mut fields = Arc::unwrap_or_clone(fields);
                for (field, value) in changes {
                    match &value {
                        Some(value) => fields.insert(field.clone(), value.clone()),
                        None => fields.remove(&field),
                    };
                    written.insert(field, value);
                }
                self.shapes.insert(txn, id, Any::from(fields));
            }
            _ => {}
        }
        written
    }

    /// The shape with `id`, if present and of a known kind.
    pub fn shape<T: ReadTxn>(&self, txn: &T, id: &str) -> Option<Shape> {
        read_shape(txn, id, self.shapes.get(txn, id)?)
    }

    /// Number of entries in the shapes map (including any of unknown kinds).
    pub fn shape_count<T: ReadTxn>(&self, txn: &T) -> u32 {
        self.shapes.len(txn)
    }

    /// The shapes whose [`Shape::bounds`] meet `area` (`x0, y0, x1, y1`), bottom to top, and
    /// how many shapes of known kinds there are in all (what [`Board::shapes`] would return).
    /// Only the shapes in `area` are built: the others' extent is read from their stored
    /// fields in place. Opening a big room draws its first frame from this: of a 10,000-shape
    /// board a screen shows a few hundred, and building every shape first took about a third
    /// of the time from the sync's arrival to the board on screen.
    pub fn shapes_meeting<T: ReadTxn>(
        &self,
        txn: &T,
        area: (f64, f64, f64, f64),
    ) -> (Vec<Shape>, usize) {
        let mut total = 0;
        let mut found = Vec::new();
        for (key, out) in self.shapes.iter(txn) {
            if let Out::Any(Any::Map(fields)) = &out {
                let Some(extent) = extent(fields) else { continue };
                total += 1;
                if meets(extent, area)
                    && let Some(shape) = Shape::from_fields(key, fields)
                {
                    found.push(shape);
                }
            } else if let Some(shape) = read_shape(txn, key, out) {
                total += 1;
                if meets(shape.bounds(), area) {
                    found.push(shape);
                }
            }
        }
        found.sort_by(drawing_order);
        (found, total)
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
    /// `changed` returns whether it wants more ids from this transaction. `wants` is asked
    /// first, with how many elements the transaction added (CRDT clock ticks: one per shape
    /// object, map field or array number, one per character of text), before anything is
    /// worked out: a view that will re-read everything anyway (before its first full read, or
    /// for a change that big) says no, and the rest is skipped — for a 10,000-shape sync,
    /// listing what changed is a map of 10,000 entries. `key` names the observer for
    /// [`Board::unobserve_shapes`].
    pub fn observe_shapes(
        &self,
        key: &str,
        wants: impl Fn(u64) -> bool + Send + Sync + 'static,
        mut changed: impl FnMut(&str) -> bool + Send + Sync + 'static,
    ) {
        self.shapes.observe_deep(key, move |txn, events| {
            let before = txn.before_state();
            let added: u64 = txn
                .after_state()
                .iter()
                .map(|(client, &clock)| u64::from(clock.saturating_sub(before.get(client))))
                .sum();
            if !wants(added) {
                return;
            }
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
    /// names, re-reading only those: they are taken out in one pass, and those that still exist
    /// merged back in at their places in the drawing order. One pass over the list, however
    /// many changed: one peer's update touching thousands of a big board's shapes, patched one
    /// by one (a search and a shift of the list each), froze every viewer for seconds.
    pub fn refresh<T: ReadTxn>(
        &self,
        txn: &T,
        shapes: &mut Vec<Shape>,
        changed: impl IntoIterator<Item = impl AsRef<str>>,
    ) {
        let changed: std::collections::HashSet<String> =
            changed.into_iter().map(|id| id.as_ref().to_owned()).collect();
        if changed.is_empty() {
            return;
        }
        shapes.retain(|s| !changed.contains(&s.id));
        let mut fresh: Vec<Shape> = changed.iter().filter_map(|id| self.shape(txn, id)).collect();
        fresh.sort_by(drawing_order);
        let kept = std::mem::take(shapes);
        shapes.reserve(kept.len() + fresh.len());
        let (mut kept, mut fresh) = (kept.into_iter().peekable(), fresh.into_iter().peekable());
        loop {
            let take_kept = match (kept.peek(), fresh.peek()) {
                (Some(a), Some(b)) => drawing_order(a, b).is_le(),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            shapes.extend(if take_kept { kept.next() } else { fresh.next() });
        }
    }

    /// The whole room as JSON, `{"shapes": {<id>: {<every field>}}, "chat": [<message>]}`: each
    /// shape of a known kind with all its fields, defaults included, whichever form it is
    /// stored in, so the export reads the same for every room.
    pub fn to_json<T: ReadTxn>(&self, txn: &T) -> String {
        // Keyed by the map's keys, not by the `id` fields, which a script may have set apart.
        let shapes: HashMap<String, Any> = self
            .shapes
            .iter(txn)
            .filter_map(|(key, out)| {
                read_shape(txn, key, out).map(|s| (key.to_owned(), Any::from(s.fields(true))))
            })
            .collect();
        let chat: Vec<Any> = self.chat(txn).iter().map(ChatMessage::to_any).collect();
        let mut out = String::new();
        Any::from(HashMap::from([
            ("shapes".to_owned(), Any::from(shapes)),
            ("chat".to_owned(), Any::Array(chat.into())),
        ]))
        .to_json(&mut out);
        out
    }

    /// Calls `changed` after every transaction that changes the chat: a message added or
    /// removed, or one stored as a nested map edited. A view that keeps a copy of the chat can
    /// tell it is stale from this even when the number of messages stays the same (any Yjs
    /// client may delete one and add one in one transaction). `key` names the observer.
    pub fn observe_chat(&self, key: &str, changed: impl Fn() + Send + Sync + 'static) {
        self.chat.observe_deep(key, move |_, _| changed());
    }

    /// Appends a chat message.
    pub fn post_chat(&self, txn: &mut TransactionMut<'_>, message: &ChatMessage) {
        self.chat.push_back(txn, message.to_any());
    }

    /// The last `n` chat messages, in order (fewer if some of those entries are not messages),
    /// and how many entries the chat has in all. Only those `n` are built: a team's room keeps
    /// its chat for good, and reading all 20,000 messages of one on every new message made each
    /// take over half a second to show.
    pub fn chat_tail<T: ReadTxn>(&self, txn: &T, n: usize) -> (Vec<ChatMessage>, usize) {
        let total = self.chat.len(txn) as usize;
        let tail = self
            .chat
            .iter(txn)
            .skip(total.saturating_sub(n))
            .filter_map(|out| ChatMessage::from_fields(&*fields(txn, out)?))
            .collect();
        (tail, total)
    }

    /// Every chat message, in order.
    pub fn chat<T: ReadTxn>(&self, txn: &T) -> Vec<ChatMessage> {
        self.chat
            .iter(txn)
            .filter_map(|out| ChatMessage::from_fields(&*fields(txn, out)?))
            .collect()
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

/// A shape stored as a plain object (Huddle's own) or as a nested map (a stroke being drawn,
/// an older room's, or another client's).
fn read_shape<T: ReadTxn>(txn: &T, key: &str, out: Out) -> Option<Shape> {
    match out {
        Out::YMap(map) => Shape::from_map(key, &map, txn),
        // Read in place: cloning each shape's map first cost a third of opening a board.
        Out::Any(Any::Map(fields)) => Shape::from_fields(key, &fields),
        _ => None,
    }
}

/// [`Shape::bounds`] of a shape stored as a plain object, read in one pass over its fields
/// without building it; `None` for a kind this version does not know (as [`read_shape`]).
fn extent(fields: &HashMap<String, Any>) -> Option<(f64, f64, f64, f64)> {
    let (mut kind, mut xywh, mut width, mut points) = (None, (0.0, 0.0, 0.0, 0.0), None, None);
    for (name, value) in fields {
        match (name.as_str(), value) {
            ("kind", Any::String(k)) => kind = ShapeKind::parse(k),
            ("x", v) => xywh.0 = coordinate(v),
            ("y", v) => xywh.1 = coordinate(v),
            ("w", v) => xywh.2 = coordinate(v),
            ("h", v) => xywh.3 = coordinate(v),
            ("width", v) => width = Some(stroke_width(v)),
            ("points", Any::Array(p)) => points = Some(p),
            _ => {}
        }
    }
    let kind = kind?;
    let points = points
        .filter(|_| kind.uses_points())
        .and_then(|p| points_box(point_pairs(p.iter().map(any_number)).into_iter()));
    Some(bounds_of(kind, xywh, width.unwrap_or(DEFAULT_WIDTH), points))
}

/// The fields of a nested `Y.Map` or of a plain JSON object, as plain values.
pub(crate) fn fields<T: ReadTxn>(txn: &T, out: Out) -> Option<Arc<HashMap<String, Any>>> {
    match out {
        Out::YMap(map) => match map.to_json(txn) {
            Any::Map(m) => Some(m),
            _ => None,
        },
        Out::Any(Any::Map(m)) => Some(m),
        _ => None,
    }
}

/// `value` with whole numbers written as integers, as Yjs writes them: yrs writes every `f64`
/// as a float (a 1-byte tag and 4 or 8 bytes), Yjs a whole number below 2^31 as a varint
/// (1 to 5 bytes, 1 or 2 for most coordinates). A shape's numbers are mostly whole, so a board
/// is about a fifth smaller to send, store and cache. Lists (a stroke's points) are written
/// the same way; anything else is left as it is.
fn compact(value: Any) -> Any {
    match value {
        Any::Number(n) => number(n.as_f64().unwrap_or(f64::NAN)).unwrap_or(Any::Number(n)),
        Any::Array(items) if items.iter().any(|v| matches!(v, Any::Number(_))) => {
            Any::Array(items.iter().cloned().map(compact).collect::<Vec<_>>().into())
        }
        other => other,
    }
}

/// `v` as an integer if it is whole and within Yjs' integer range (31 bits and a sign).
fn number(v: f64) -> Option<Any> {
    const MAX: f64 = 2_147_483_647.0;
    (v.fract() == 0.0 && v.abs() <= MAX).then(|| Any::from(v as i64))
}

/// A coordinate or size as the schema writes it (see [`compact`]).
fn num(v: f64) -> Any {
    number(v).unwrap_or_else(|| Any::from(v))
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

/// A finite number, as a field from any client may hold: Yjs encodes `Infinity` and `NaN` as
/// floats, and one of them in a shape's `z` would put every new shape at infinity.
fn any_number(any: &Any) -> Option<f64> {
    match any {
        Any::Number(n) => n.as_f64().filter(|v| v.is_finite()),
        _ => None,
    }
}

/// A stroke's flat `[x0, y0, x1, y1, …]` list from values of any kind: a pair with a value
/// that is not a finite number is left out whole, so the pairs after it stay pairs (dropping
/// only that value would turn every later x into a y).
///
/// At most [`MAX_POINT_PAIRS`] pairs are read, each number within [`MAX_COORDINATE`]: a stroke
/// is drawn, hit-tested and re-read on every frame, and one of millions of points from a peer
/// would freeze every viewer's tab.
fn point_pairs(values: impl Iterator<Item = Option<f64>>) -> Vec<f64> {
    let mut values = values;
    let mut pairs = Vec::new();
    while pairs.len() < 2 * MAX_POINT_PAIRS {
        let (Some(x), Some(y)) = (values.next(), values.next()) else { break };
        if let (Some(x), Some(y)) = (x, y) {
            let clamp = |v: f64| v.clamp(-MAX_COORDINATE, MAX_COORDINATE);
            pairs.extend([clamp(x), clamp(y)]);
        }
    }
    pairs
}

/// Farthest a shape's coordinates and sizes reach from the origin, board units. Far beyond any
/// board people draw on; a value past it from a peer (1e300) would make the board's bounds
/// infinite, and "zoom to fit" and the exports show nothing.
pub const MAX_COORDINATE: f64 = 1e9;
/// Widest stroke read, board units (a stroke a peer made 1e9 wide would paint over the board).
pub const MAX_STROKE_WIDTH: f64 = 1000.0;
/// Most points a stroke is read with (a five-minute freehand stroke has about that many).
pub const MAX_POINT_PAIRS: usize = 20_000;
/// Longest text a shape is read with, in characters.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Longest name (a shape's author, a chat message's) read, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Largest stacking order read: beyond 2^53, adding one to put a shape on top changes nothing.
const MAX_Z: f64 = (1u64 << 40) as f64;

/// A coordinate or size: a finite number within [`MAX_COORDINATE`], else 0.
fn coordinate(v: &Any) -> f64 {
    any_number(v).map_or(0.0, |v| v.clamp(-MAX_COORDINATE, MAX_COORDINATE))
}

/// A stroke width: a finite number within `0..=`[`MAX_STROKE_WIDTH`], else the default.
fn stroke_width(v: &Any) -> f64 {
    any_number(v).map_or(DEFAULT_WIDTH, |w| w.clamp(0.0, MAX_STROKE_WIDTH))
}

/// `text` cut to its first `max` characters.
fn at_most(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Transact, Update};

    /// Someone resizing a stroke another is still drawing does not replace its growing list of
    /// points: the points still on their way, and those after, are kept, and the stroke does
    /// not jump.
    #[test]
    fn the_points_of_a_stroke_still_being_drawn_are_not_replaced() {
        let doc = Doc::new();
        let board = Board::new(&doc);
        let mut pen = Shape::new("s", ShapeKind::Pen);
        pen.points = vec![0.0, 0.0, 1.0, 1.0];
        board.begin_stroke(&mut doc.transact_mut(), &pen);
        let scaled = Any::from(vec![Any::from(9.0), Any::from(9.0)]);
        assert!(board.set_fields(
            &mut doc.transact_mut(),
            "s",
            [("points", scaled), ("x", Any::from(5.0))]
        ));
        assert!(board.append_points(&mut doc.transact_mut(), "s", &[2.0, 2.0]));
        let shape = board.shape(&doc.transact(), "s").expect("the stroke");
        assert_eq!(shape.points, vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
        assert_eq!(shape.x, 5.0, "other fields still change");
    }

    /// What a stock Yjs client may write: a stroke with a string among its points keeps its
    /// other pairs as pairs, and a shape at `z: Infinity` reads as if `z` were missing.
    #[test]
    fn a_peers_odd_numbers_do_not_garble_a_stroke_or_the_stacking_order() {
        let doc = Doc::new();
        let board = Board::new(&doc);
        {
            let mut txn = doc.transact_mut();
            let points: Vec<Any> = vec![
                Any::from(1.0),
                Any::from(2.0),
                Any::from("three"),
                Any::from(4.0),
                Any::from(5.0),
                Any::from(6.0),
                Any::from(f64::NAN),
            ];
            let odd = Any::from(HashMap::from([
                ("id".to_owned(), Any::from("odd")),
                ("kind".to_owned(), Any::from("pen")),
                ("points".to_owned(), Any::from(points)),
                ("z".to_owned(), Any::from(f64::INFINITY)),
            ]));
            board.shapes.insert(&mut txn, "odd", odd);
        }
        let shape = board.shape(&doc.transact(), "odd").expect("a pen stroke");
        assert_eq!(shape.points, vec![1.0, 2.0, 5.0, 6.0]);
        assert_eq!(shape.z, 0.0);
    }

    /// Whole numbers are written as Yjs writes them (varints), others as floats, and both
    /// read back as they were: a board of whole coordinates is a fifth smaller than with
    /// yrs' default of a float for every number.
    #[test]
    fn whole_numbers_are_written_as_integers_and_read_back_unchanged() {
        let write = |x: f64| {
            let doc = Doc::new();
            let board = Board::new(&doc);
            let mut shape = Shape::new("a", ShapeKind::Pen);
            shape.x = x;
            shape.y = -40.0;
            shape.points = vec![0.0, 12.0, 2.5, 5e8];
            board.put_shape(&mut doc.transact_mut(), &shape);
            let update = doc.transact().encode_state_as_update_v1(&yrs::StateVector::default());
            let fields = fields_of(&doc, &board);
            (doc, board, update.len(), fields)
        };
        let (doc, board, whole, fields) = write(60.0);
        assert!(matches!(fields.get("x"), Some(Any::Number(yrs::any::Number::Int(60)))));
        assert!(matches!(fields.get("y"), Some(Any::Number(yrs::any::Number::Int(-40)))));
        let shape = board.shape(&doc.transact(), "a").expect("shape");
        assert_eq!(
            (shape.x, shape.y, shape.points.clone()),
            (60.0, -40.0, vec![0.0, 12.0, 2.5, 5e8])
        );
        let (doc, board, fractional, fields) = write(60.25);
        assert!(matches!(fields.get("x"), Some(Any::Number(yrs::any::Number::Float(_)))));
        assert_eq!(board.shape(&doc.transact(), "a").expect("shape").x, 60.25);
        assert!(whole < fractional, "{whole} bytes with x whole, {fractional} with x = 60.25");
        // Edits through `set_fields` are written the same way.
        assert!(board.set_fields(&mut doc.transact_mut(), "a", [("x", Any::from(7.0))]));
        let fields = fields_of(&doc, &board);
        assert!(matches!(fields.get("x"), Some(Any::Number(yrs::any::Number::Int(7)))));
    }

    #[test]
    fn whatever_a_peer_writes_a_shape_reads_within_bounds_a_board_can_draw() {
        let doc = Doc::new();
        let board = Board::new(&doc);
        let huge = 1.7e308;
        let many: Vec<Any> = (0..200_000).map(|i| Any::from(f64::from(i))).collect();
        let fields = HashMap::from([
            ("kind".to_owned(), Any::from("pen")),
            // Names another shape: edits of this one must not land on it.
            ("id".to_owned(), Any::from("victim")),
            ("x".to_owned(), Any::from(huge)),
            ("w".to_owned(), Any::from(huge)),
            ("y".to_owned(), Any::from(-huge)),
            ("width".to_owned(), Any::from(1e9)),
            ("z".to_owned(), Any::from(1e300)),
            ("points".to_owned(), Any::Array(many.into())),
            ("text".to_owned(), Any::from("a ".repeat(500_000))),
            ("author".to_owned(), Any::from("x".repeat(1000))),
        ]);
        {
            let mut txn = doc.transact_mut();
            board.shapes.insert(&mut txn, "evil", Any::from(fields));
            board.post_chat(
                &mut txn,
                &ChatMessage {
                    id: "m".into(),
                    author_id: "u".into(),
                    author_name: "n".repeat(1000),
                    author_color: String::new(),
                    text: "t".repeat(100_000),
                    ts: 0.0,
                },
            );
        }
        let txn = doc.transact();
        let shape = board.shape(&txn, "evil").expect("read");
        assert_eq!(shape.id, "evil", "the key, not the id field");
        assert_eq!((shape.x, shape.y, shape.w), (MAX_COORDINATE, -MAX_COORDINATE, MAX_COORDINATE));
        assert_eq!(shape.width, MAX_STROKE_WIDTH);
        assert_eq!(shape.z, MAX_Z);
        assert_eq!(shape.points.len(), 2 * MAX_POINT_PAIRS);
        assert_eq!(shape.text.chars().count(), MAX_TEXT_CHARS);
        assert_eq!(shape.author.chars().count(), MAX_NAME_CHARS);
        let (x0, y0, x1, y1) = shape.bounds();
        assert!([x0, y0, x1, y1].iter().all(|v| v.is_finite()), "{:?}", shape.bounds());
        let everything = (-f64::MAX, -f64::MAX, f64::MAX, f64::MAX);
        let (found, total) = board.shapes_meeting(&txn, everything);
        assert_eq!((found.len(), total), (1, 1));
        let message = &board.chat(&txn)[0];
        assert_eq!(message.text.chars().count(), MAX_CHAT_CHARS);
        assert_eq!(message.author_name.chars().count(), MAX_NAME_CHARS);
        // A negative width reads as none rather than turning the bounds inside out.
        let thin = HashMap::from([
            ("kind".to_owned(), Any::from("rect")),
            ("width".to_owned(), Any::from(-50.0)),
        ]);
        assert_eq!(Shape::from_fields("t", &thin).expect("rect").width, 0.0);
    }

    fn fields_of(doc: &Doc, board: &Board) -> Arc<HashMap<String, Any>> {
        let txn = doc.transact();
        fields(&txn, board.shapes.get(&txn, "a").expect("shape")).expect("fields")
    }

    #[test]
    fn colours_that_could_fetch_or_inject_read_as_absent() {
        for ok in ["#1e1e1e", "#fff", "#ffec99cc", "transparent", "rebeccapurple", "rgb(1, 2, 3)"] {
            assert!(is_safe_color(ok), "{ok}");
        }
        assert!(is_safe_color("hsla(120deg 50% 50% / 0.5)"));
        for bad in [
            "",
            "url(https://example.com/x)",
            "#12345",
            "#ggg",
            "red; background: url(x)",
            "rgb(var(--x))",
            "rgb(1,2,3) url(x)",
            "\\75 rl(x)",
            "expression(alert(1))",
        ] {
            assert!(!is_safe_color(bad), "{bad}");
        }

        // Written by another client, as a stock Yjs client could.
        let doc = Doc::with_client_id(1);
        let board = Board::new(&doc);
        {
            let mut txn = doc.transact_mut();
            let mut shape = Shape::new("r", ShapeKind::Rect);
            shape.stroke = "url(https://example.com/s)".into();
            shape.fill = "url(https://example.com/f)".into();
            board.put_shape(&mut txn, &shape);
            board.post_chat(
                &mut txn,
                &ChatMessage {
                    id: "m".into(),
                    author_id: "e".into(),
                    author_name: "Eve".into(),
                    author_color: "url(https://example.com/c)".into(),
                    text: "hi".into(),
                    ts: 1.0,
                },
            );
        }
        let txn = doc.transact();
        let shape = board.shape(&txn, "r").expect("shape");
        assert_eq!((shape.stroke.as_str(), shape.fill.as_str()), (DEFAULT_STROKE, DEFAULT_FILL));
        assert_eq!(board.chat(&txn)[0].author_color, "");
        assert_eq!(board.chat(&txn)[0].text, "hi");
    }

    #[test]
    fn only_the_shapes_in_an_area_are_built_and_all_are_counted() {
        let doc = Doc::with_client_id(1);
        let board = Board::new(&doc);
        let mut shapes = Vec::new();
        // A row of boxes 100 apart, one drawn backwards (negative size), a pen stroke whose
        // origin is far off but whose points reach in, a wide stroke whose edge just reaches
        // in, a nested-map shape, and one of a kind this version does not know.
        for i in 0..10 {
            let mut r = Shape::new(format!("r{i}"), ShapeKind::Rect);
            (r.x, r.y, r.w, r.h, r.z) = (f64::from(i) * 100.0, 0.0, 50.0, 50.0, f64::from(10 - i));
            shapes.push(r);
        }
        let mut back = Shape::new("back", ShapeKind::Ellipse);
        (back.x, back.y, back.w, back.h) = (260.0, 90.0, -40.0, -60.0);
        let mut pen = Shape::new("pen", ShapeKind::Pen);
        (pen.x, pen.y, pen.points) = (-500.0, 0.0, vec![0.0, 0.0, 720.0, 10.0]);
        let mut wide = Shape::new("wide", ShapeKind::Rect);
        (wide.x, wide.y, wide.w, wide.h, wide.width) = (150.0, 300.0, 40.0, 50.0, 120.0);
        shapes.extend([back, pen, wide]);
        {
            let mut txn = doc.transact_mut();
            for shape in &shapes {
                board.put_shape(&mut txn, shape);
            }
            let nested = MapPrelim::from([
                ("kind", In::from("rect")),
                ("x", In::from(210.0)),
                ("w", In::from(10.0)),
                ("h", In::from(10.0)),
            ]);
            board.shapes.insert(&mut txn, "nested", nested);
            board.shapes.insert(&mut txn, "future", MapPrelim::from([("kind", In::from("cloud"))]));
        }
        let txn = doc.transact();
        let all = board.shapes(&txn);
        let area = (200.0, 0.0, 300.0, 250.0);
        let (found, total) = board.shapes_meeting(&txn, area);
        assert_eq!(total, all.len());
        assert_eq!(total, 14);
        let ids: Vec<&str> = found.iter().map(|s| s.id.as_str()).collect();
        // Bottom to top, as `shapes` orders them; each built as `shapes` builds it.
        assert_eq!(ids, ["back", "nested", "pen", "wide", "r3", "r2"]);
        let full: Vec<&Shape> = all.iter().filter(|s| ids.contains(&s.id.as_str())).collect();
        assert_eq!(found.iter().collect::<Vec<_>>(), full);
        // And exactly those meet the area by `Shape::bounds`.
        let by_bounds = all.iter().filter(|s| meets(s.bounds(), area)).count();
        assert_eq!(by_bounds, found.len());
    }

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
        board.begin_stroke(&mut doc.transact_mut(), &pen);
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
        // The last step costs what an early one did: the update carries the new points only
        // (give or take a byte per point: later points are bigger numbers, longer varints).
        assert!(sizes[199] <= sizes[1] + 20, "update sizes grew: {} then {}", sizes[1], sizes[199]);
        let expected: Vec<f64> = [0.0, 0.0].into_iter().chain((0..2000).map(f64::from)).collect();
        for d in [&doc, &peer] {
            let got = Board::new(d).shape(&d.transact(), "p1").expect("the stroke");
            assert_eq!(got.points, expected);
        }
        // The finished stroke becomes one plain object, read the same way by both.
        // The last points not yet appended come with the settling write.
        assert!(board.settle(&mut doc.transact_mut(), "p1", &[5000.0, 5001.0]));
        assert!(!board.settle(&mut doc.transact_mut(), "p1", &[]), "already settled");
        let expected: Vec<f64> = expected.into_iter().chain([5000.0, 5001.0]).collect();
        let sync = doc.transact().encode_state_as_update_v1(&peer.transact().state_vector());
        peer.transact_mut()
            .apply_update(Update::decode_v1(&sync).expect("decodes"))
            .expect("applies");
        for d in [&doc, &peer] {
            let board = Board::new(d);
            let txn = d.transact();
            assert!(matches!(board.shapes.get(&txn, "p1"), Some(Out::Any(Any::Map(_)))));
            assert_eq!(board.shape(&txn, "p1").expect("the stroke").points, expected);
        }
        // Appending to a settled stroke rewrites its list; rewriting the points (a resize)
        // replaces it; both read back.
        assert!(board.append_points(&mut doc.transact_mut(), "p1", &[7.0, 8.0]));
        assert_eq!(
            board.shape(&doc.transact(), "p1").expect("the stroke").points[expected.len()..],
            [7.0, 8.0]
        );
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
        board.observe_shapes(
            "test",
            |_| true,
            move |id| {
                sink.lock().expect("lock").push(id.to_owned());
                true
            },
        );
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
    fn the_chat_tail_is_the_newest_messages_in_order_and_counts_them_all() {
        let doc = Doc::with_client_id(1);
        let board = Board::new(&doc);
        let message = |i: usize| ChatMessage {
            id: format!("m{i}"),
            author_id: "u1".into(),
            author_name: "Ada".into(),
            author_color: "#e03131".into(),
            text: format!("message {i}"),
            ts: i as f64,
        };
        let mut txn = doc.transact_mut();
        for i in 0..250 {
            board.post_chat(&mut txn, &message(i));
        }
        let (tail, total) = board.chat_tail(&txn, 100);
        assert_eq!(total, 250);
        assert_eq!(tail, (150..250).map(message).collect::<Vec<_>>());
        let (all, total) = board.chat_tail(&txn, 1000);
        assert_eq!((all.len(), total), (250, 250));
        assert_eq!(all, board.chat(&txn));
        assert_eq!(board.chat_tail(&txn, 0), (Vec::new(), 250));
    }

    #[test]
    fn each_shape_is_one_plain_object_without_its_defaults_and_edits_replace_it() {
        let sync = |from: &Doc, to: &Doc| {
            let sv = to.transact().state_vector();
            let update = from.transact().encode_state_as_update_v1(&sv);
            to.transact_mut()
                .apply_update(Update::decode_v1(&update).expect("decodes"))
                .expect("applies");
        };
        let a = Doc::with_client_id(1);
        let board = Board::new(&a);
        let mut r1 = Shape::new("r1", ShapeKind::Rect);
        r1.w = 10.0;
        let r2 = Shape::new("r2", ShapeKind::Ellipse);
        {
            let mut txn = a.transact_mut();
            board.put_shape(&mut txn, &r1);
            board.put_shape(&mut txn, &r2);
        }
        {
            let txn = a.transact();
            let Some(Out::Any(Any::Map(stored))) = board.shapes.get(&txn, "r1") else {
                panic!("r1 is not a plain object");
            };
            let mut keys: Vec<&str> = stored.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["h", "kind", "w", "x", "y", "z"], "defaults are left out");
            assert_eq!(board.shape(&txn, "r1"), Some(r1.clone()));
            // The export spells every field out.
            let Ok(Any::Map(room)) = Any::from_json(&board.to_json(&txn)) else { panic!("json") };
            let Some(Any::Map(shapes)) = room.get("shapes") else { panic!("shapes") };
            let Some(Any::Map(exported)) = shapes.get("r1") else { panic!("r1") };
            assert_eq!(exported.len(), 13, "{exported:?}");
            assert_eq!(exported.get("fill"), Some(&Any::from(DEFAULT_FILL)));
        }

        // Concurrent edits of different shapes both survive.
        let b = Doc::with_client_id(2);
        sync(&a, &b);
        assert!(board.set_fields(
            &mut a.transact_mut(),
            "r1",
            [("x", 5.0.into()), ("y", 6.0.into())]
        ));
        assert!(Board::new(&b).set_field(&mut b.transact_mut(), "r2", "fill", "#ffec99"));
        sync(&a, &b);
        sync(&b, &a);
        let (mut moved, mut filled) = (r1.clone(), r2.clone());
        (moved.x, moved.y) = (5.0, 6.0);
        filled.fill = "#ffec99".into();
        for d in [&a, &b] {
            assert_eq!(Board::new(d).shapes(&d.transact()), vec![moved.clone(), filled.clone()]);
        }

        // Concurrent edits of the same shape: both sides settle on one writer's version.
        assert!(board.set_field(&mut a.transact_mut(), "r1", "x", 100.0));
        assert!(Board::new(&b).set_field(&mut b.transact_mut(), "r1", "stroke", "#e03131"));
        sync(&a, &b);
        sync(&b, &a);
        let seen = |d: &Doc| Board::new(d).shape(&d.transact(), "r1").expect("r1");
        assert_eq!(seen(&a), seen(&b));
        assert!(!board.set_field(&mut a.transact_mut(), "missing", "x", 1.0));

        // A nested-map shape (an older room's) is edited field by field and stays nested.
        {
            let mut txn = a.transact_mut();
            let old = MapPrelim::from([("kind", In::from("rect")), ("x", In::from(1.0))]);
            board.shapes.insert(&mut txn, "old", old);
            assert!(board.set_fields(&mut txn, "old", [("x", 7.0.into()), ("y", 8.0.into())]));
        }
        let txn = a.transact();
        assert!(matches!(board.shapes.get(&txn, "old"), Some(Out::YMap(_))));
        let old = board.shape(&txn, "old").expect("old");
        assert_eq!((old.x, old.y), (7.0, 8.0));
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
