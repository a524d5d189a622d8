//! Undo and redo of one user's shape edits, field by field.
//!
//! A shape is one plain object in the `shapes` map (see [`crate::schema`]), so yrs'
//! `UndoManager`, which restores the *value* an edit replaced, works on whole shapes. In a room
//! that is edited together that goes wrong in two ways users notice:
//! - Ada recolours a shape, Bob moves it, Ada moves it again; Ada undoes twice. The second undo
//!   restores the value from before her recolour, and Bob's move is gone with it.
//! - Ada and Bob change the same shape at the same instant and Ada's value wins; Ada's undo
//!   then finds Bob's (overwritten) value where the old one should go back, restores nothing,
//!   and deletes her own value: the shape disappears for everyone.
//!
//! [`History`] records instead, per shape, what it was before a step, and the value this user's
//! edits last gave each field they changed. Undoing a step sets back only the fields that still
//! hold that value, so a field someone else changed since keeps their value; a shape someone
//! else removed is not brought back, nor is one this user removed and someone else wrote since;
//! a shape the step created is removed. Redo is the same, the other way. This is how
//! Excalidraw's and tldraw's histories treat a shared document (each change is a diff applied
//! only where it still applies), and it needs no nested `Y.Map` per shape, which would make a
//! big room four times slower to open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use yrs::types::{EntryChange, Event, Events, PathSegment, ToJson};
use yrs::{Any, DeepObservable, Doc, Map, MapRef, Origin, Out, ReadTxn, Transact, TransactionMut};

use crate::schema::{Board, RemovedFields};

/// Most undo steps kept; the oldest are forgotten past this.
pub const MAX_STEPS: usize = 500;

/// Most shapes whose last change by someone else is remembered; past that the memory starts
/// over (an undo may then bring back a shape this user removed and someone else wrote since).
const MAX_REMEMBERED: usize = 100_000;

/// Origin of undo's and redo's own transactions: this user's, but not new steps.
const ORIGIN: &str = "huddle-history";

/// A shape's stored fields, as read from either form (plain object or nested map).
type Fields = Arc<HashMap<String, Any>>;

/// What one step did to one shape.
#[derive(Debug, Clone, Default)]
struct Change {
    /// The shape before the step (`None`: the step created it).
    before: Option<Fields>,
    /// The value this user's edits in the step last gave each field they changed (`None`: the
    /// field was removed). Per field, not a copy of the whole shape, since a field someone else
    /// changed in between is theirs. Not kept for a shape the step created, which undo removes
    /// whatever it holds.
    mine: HashMap<String, Option<Any>>,
    /// The step's last edit of the shape removed it.
    removed: bool,
    /// The shape as that removal found it: with what others changed during the step, which an
    /// undo of the removal keeps.
    removed_as: Option<Fields>,
    /// When (by [`Stacks::clock`]) this user last changed the shape in the step.
    at: u64,
}

/// One undo step: what it did to each shape it touched, by id.
type Step = HashMap<String, Change>;

#[derive(Debug, Default)]
struct Stacks {
    undo: Vec<Step>,
    redo: Vec<Step>,
    /// The next recorded edit starts a new step.
    cut: bool,
    /// Counts the transactions that changed shapes, to tell what came after what.
    clock: u64,
    /// When someone else last changed each shape, by `clock`.
    others: HashMap<String, u64>,
}

/// This user's undo and redo history of the board's shapes (see the module's documentation).
///
/// It records every transaction whose origin is the one given to [`History::watch`] (this
/// user's edits), made through [`History::board`]; edits are grouped into steps by
/// [`History::cut`].
#[derive(Debug, Clone)]
pub struct History {
    stacks: Arc<Mutex<Stacks>>,
    board: Board,
}

impl History {
    /// Starts recording the edits made with origin `own` to `board`'s shapes, under observer
    /// `key`.
    pub fn watch(board: &Board, key: &str, own: Origin) -> Self {
        let stacks = Arc::new(Mutex::new(Stacks::default()));
        let kept: RemovedFields = Arc::default();
        let board = board.clone().keeping_removed(Arc::clone(&kept));
        let recorder = Arc::clone(&stacks);
        let shapes = board.shapes_ref().clone();
        let ours = Origin::from(ORIGIN);
        board.shapes_ref().observe_deep(key, move |txn, events| {
            let kept = kept.lock().map(|mut k| std::mem::take(&mut *k)).unwrap_or_default();
            let origin = txn.origin();
            if origin == Some(&ours) {
                return;
            }
            let Ok(mut stacks) = recorder.lock() else { return };
            if origin == Some(&own) {
                record(&mut stacks, &shapes, kept, txn, events);
            } else if !(stacks.undo.is_empty() && stacks.redo.is_empty()) {
                // Someone else's change (or a restored copy). The first sync into an empty
                // document has nothing to tell, and listing a big room's keys is not free.
                note_others(&mut stacks, txn, events);
            }
        });
        Self { stacks, board }
    }

    /// The board to make this user's edits through: it leaves what undo needs of a nested-map
    /// shape it removes, which reads as empty once removed.
    pub fn board(&self) -> &Board {
        &self.board
    }

    /// Ends the current step: the next edit starts a new one.
    pub fn cut(&self) {
        if let Ok(mut stacks) = self.stacks.lock() {
            stacks.cut = true;
        }
    }

    /// Undoes this user's last step that still changes something, in one transaction on `doc`.
    /// Returns whether anything changed.
    pub fn undo(&self, doc: &Doc) -> bool {
        self.pop(doc, true)
    }

    /// Redoes the last undone step that still changes something, in one transaction on `doc`.
    /// Returns whether anything changed.
    pub fn redo(&self, doc: &Doc) -> bool {
        self.pop(doc, false)
    }

    /// Whether there is a step to undo.
    pub fn can_undo(&self) -> bool {
        self.stacks.lock().is_ok_and(|s| !s.undo.is_empty())
    }

    /// Whether there is a step to redo.
    pub fn can_redo(&self) -> bool {
        self.stacks.lock().is_ok_and(|s| !s.redo.is_empty())
    }

    /// Takes steps off one stack until one changes something (a step whose every change was
    /// overtaken by others, say its shape was deleted, is dropped, as Yjs and Excalidraw do),
    /// and puts what it did on the other stack.
    fn pop(&self, doc: &Doc, undo: bool) -> bool {
        let mut txn = doc.transact_mut_with(ORIGIN);
        // The lock is released before the transaction commits and the observer runs.
        let Ok(mut stacks) = self.stacks.lock() else { return false };
        let stacks = &mut *stacks;
        loop {
            let step = if undo { stacks.undo.pop() } else { stacks.redo.pop() };
            // With nothing to undo or redo, the step being recorded (a stroke, a drag) goes on.
            let Some(step) = step else { return false };
            stacks.cut = true;
            let done = revert(&self.board, &mut txn, step, stacks.clock, &stacks.others);
            if !done.is_empty() {
                let other = if undo { &mut stacks.redo } else { &mut stacks.undo };
                other.push(done);
                return true;
            }
        }
    }
}

/// Records one of this user's transactions into the current step. `kept` holds the fields of
/// nested-map shapes it removed or replaced (see [`History::board`]).
fn record(
    stacks: &mut Stacks,
    shapes: &MapRef,
    mut kept: HashMap<String, Fields>,
    txn: &TransactionMut<'_>,
    events: &Events,
) {
    if stacks.cut || stacks.undo.is_empty() {
        stacks.cut = false;
        stacks.undo.push(Step::new());
        if stacks.undo.len() > MAX_STEPS {
            stacks.undo.remove(0);
        }
    }
    stacks.redo.clear();
    stacks.clock += 1;
    let at = stacks.clock;
    let Some(step) = stacks.undo.last_mut() else { return };
    let mut old_value = |id: &str, old: &Out| kept.remove(id).or_else(|| fields_of(txn, old));
    // Changes of whole shapes and of a nested shape's fields first, so that a shape's state
    // before the step is worked out from them rather than from a change to its points.
    for shallow in [true, false] {
        for event in events.iter() {
            let path = event.path();
            if (path.len() <= 1) != shallow {
                continue;
            }
            match (path.front(), event) {
                (None, Event::Map(e)) => {
                    for (id, change) in e.keys(txn) {
                        let (old, new) = match change {
                            EntryChange::Inserted(new) => (None, fields_of(txn, new)),
                            EntryChange::Updated(old, new) => {
                                (old_value(id, old), fields_of(txn, new))
                            }
                            EntryChange::Removed(old) => (old_value(id, old), None),
                        };
                        let entry = step
                            .entry(id.to_string())
                            .or_insert_with(|| Change { before: old.clone(), ..Change::default() });
                        entry.at = at;
                        entry.removed = new.is_none();
                        if entry.removed {
                            entry.removed_as = old.clone();
                        }
                        // A shape created in the step is undone whole: no fields to keep.
                        let (Some(new), Some(before)) = (new, &entry.before) else { continue };
                        // What this edit changed: against the shape before it, or, for a shape
                        // put back in the same step, before the step.
                        let from = old.as_ref().unwrap_or(before);
                        for field in from.keys().chain(new.keys()) {
                            if !same(from.get(field), new.get(field)) {
                                entry.mine.insert(field.clone(), new.get(field).cloned());
                            }
                        }
                    }
                }
                (Some(PathSegment::Key(id)), event) => {
                    let entry = step.entry(id.to_string()).or_insert_with(|| Change {
                        before: before_nested(shapes, txn, id, event, path.len()),
                        ..Change::default()
                    });
                    entry.at = at;
                    if entry.before.is_none() {
                        continue;
                    }
                    match (path.get(1), event) {
                        (None, Event::Map(e)) => {
                            for (field, change) in e.keys(txn) {
                                let value = match change {
                                    EntryChange::Inserted(new) | EntryChange::Updated(_, new) => {
                                        any_of(txn, new)
                                    }
                                    EntryChange::Removed(_) => None,
                                };
                                entry.mine.insert(field.to_string(), value);
                            }
                        }
                        (Some(PathSegment::Key(field)), _) => {
                            let value = shapes
                                .get(txn, id)
                                .and_then(|out| fields_of(txn, &out))
                                .and_then(|now| now.get(field.as_ref()).cloned());
                            entry.mine.insert(field.to_string(), value);
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }
}

/// Notes which shapes someone else's transaction changed, and when.
fn note_others(stacks: &mut Stacks, txn: &TransactionMut<'_>, events: &Events) {
    if txn.before_state().is_empty() {
        return;
    }
    stacks.clock += 1;
    let at = stacks.clock;
    if stacks.others.len() >= MAX_REMEMBERED {
        stacks.others.clear();
    }
    for event in events.iter() {
        match (event.path().front(), event) {
            (None, Event::Map(e)) => {
                for id in e.keys(txn).keys() {
                    stacks.others.insert(id.to_string(), at);
                }
            }
            (Some(PathSegment::Key(id)), _) => {
                stacks.others.insert(id.to_string(), at);
            }
            _ => {}
        }
    }
}

/// A nested-map shape's fields before this transaction changed them: its fields now, with the
/// changed ones set back. A change below a field (a growing stroke's points) is taken as it is
/// now: Huddle only appends to a stroke it began in the same step, whose state before is "none".
fn before_nested(
    shapes: &MapRef,
    txn: &TransactionMut<'_>,
    id: &str,
    event: &Event,
    depth: usize,
) -> Option<Fields> {
    let now = shapes.get(txn, id).and_then(|out| fields_of(txn, &out))?;
    let (1, Event::Map(e)) = (depth, event) else { return Some(now) };
    let mut before = Arc::unwrap_or_clone(now);
    for (field, change) in e.keys(txn) {
        match change {
            EntryChange::Inserted(_) => {
                before.remove(field.as_ref());
            }
            EntryChange::Updated(old, _) | EntryChange::Removed(old) => {
                if let Some(old) = any_of(txn, old) {
                    before.insert(field.to_string(), old);
                }
            }
        }
    }
    Some(Arc::new(before))
}

/// Takes the board back from what `step` left to what it found, where that still applies, and
/// returns what was done as a step (undoing a step gives the step that redoes it). `clock` is
/// now; `others` says when someone else last changed each shape.
fn revert(
    board: &Board,
    txn: &mut TransactionMut<'_>,
    step: Step,
    clock: u64,
    others: &HashMap<String, u64>,
) -> Step {
    let mut done = Step::new();
    for (id, change) in step {
        let now = board.shapes_ref().get(txn, &id).and_then(|out| fields_of(txn, &out));
        match (change.before, change.removed, now) {
            // The step created it: remove it, unless someone else changed it since (their
            // work is not this user's to take back).
            (None, _, Some(now)) => {
                if others.get(&id).is_some_and(|&when| when > change.at) {
                    continue;
                }
                board.remove_shape(txn, &id);
                let undone =
                    Change { before: Some(now), removed: true, at: clock, ..Change::default() };
                done.insert(id, undone);
            }
            // The step removed it, it is still gone, and nobody else wrote it since (a move
            // that crossed the removal kept it, and then someone removed it for good): put it
            // back.
            (Some(before), true, None) => {
                if others.get(&id).is_some_and(|&when| when > change.at) {
                    continue;
                }
                // As the removal found it, with this user's own changes in the step set back.
                let mut back =
                    change.removed_as.map_or_else(|| (*before).clone(), Arc::unwrap_or_clone);
                for field in change.mine.keys() {
                    match before.get(field) {
                        Some(value) => back.insert(field.clone(), value.clone()),
                        None => back.remove(field),
                    };
                }
                board.put_fields(txn, &id, &Arc::new(back));
                done.insert(id, Change { at: clock, ..Change::default() });
            }
            // The step changed it: set back the fields that still hold what the step left. A
            // shape removed since (by anyone) stays removed.
            (Some(before), false, Some(now)) => {
                let back: Vec<(String, Option<Any>)> = change
                    .mine
                    .iter()
                    .filter(|(f, mine)| {
                        !same(before.get(*f), mine.as_ref()) && same(now.get(*f), mine.as_ref())
                    })
                    .map(|(f, _)| (f.clone(), before.get(f).cloned()))
                    .collect();
                let written = board.restore_fields(txn, &id, back);
                if written.is_empty() {
                    continue;
                }
                let redo =
                    Change { before: Some(now), mine: written, at: clock, ..Change::default() };
                done.insert(id, redo);
            }
            _ => {}
        }
    }
    done
}

/// Whether two field values are the same, without walking a long list that is shared.
fn same(a: Option<&Any>, b: Option<&Any>) -> bool {
    match (a, b) {
        (Some(Any::Array(x)), Some(Any::Array(y))) => Arc::ptr_eq(x, y) || x == y,
        (Some(Any::String(x)), Some(Any::String(y))) => Arc::ptr_eq(x, y) || x == y,
        _ => a == b,
    }
}

/// A shape's fields from its stored value, whichever form (see `schema::fields`).
fn fields_of<T: ReadTxn>(txn: &T, out: &Out) -> Option<Fields> {
    crate::schema::fields(txn, out.clone())
}

/// A field's value as plain data.
fn any_of<T: ReadTxn>(txn: &T, out: &Out) -> Option<Any> {
    match out {
        Out::Any(any) => Some(any.clone()),
        Out::YArray(array) => Some(array.to_json(txn)),
        Out::YMap(map) => Some(map.to_json(txn)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Shape, ShapeKind};
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, Transact, Update};

    /// One user's document with its history, as the web client sets it up.
    struct User {
        doc: Doc,
        board: Board,
        history: History,
    }

    const OWN: &str = "own";

    impl User {
        fn new(client: u64) -> Self {
            let doc = Doc::with_client_id(client);
            let board = Board::new(&doc);
            let history = History::watch(&board, "history", Origin::from(OWN));
            Self { doc, board, history }
        }

        fn edit(&self, f: impl FnOnce(&Board, &mut TransactionMut<'_>)) {
            f(self.history.board(), &mut self.doc.transact_mut_with(OWN));
        }

        fn undo(&self) -> bool {
            self.history.undo(&self.doc)
        }

        fn redo(&self) -> bool {
            self.history.redo(&self.doc)
        }

        fn shape(&self, id: &str) -> Option<Shape> {
            self.board.shape(&self.doc.transact(), id)
        }
    }

    /// Sends `from` everything `to` lacks, as the relay would.
    fn sync(from: &User, to: &User) {
        let sv = to.doc.transact().state_vector();
        let update = from.doc.transact().encode_state_as_update_v1(&sv);
        to.doc
            .transact_mut_with("remote")
            .apply_update(Update::decode_v1(&update).expect("decodes"))
            .expect("applies");
    }

    fn both(a: &User, b: &User) {
        sync(a, b);
        sync(b, a);
    }

    fn rect(id: &str) -> Shape {
        let mut s = Shape::new(id, ShapeKind::Rect);
        (s.w, s.h) = (10.0, 10.0);
        s
    }

    /// Ada and Bob share shape `s`, put there by neither's history.
    fn pair() -> (User, User) {
        let (ada, bob) = (User::new(3), User::new(2));
        ada.board.put_shape(&mut ada.doc.transact_mut_with("setup"), &rect("s"));
        both(&ada, &bob);
        (ada, bob)
    }

    #[test]
    fn undo_keeps_a_collaborators_later_change_of_the_same_shape() {
        let (ada, bob) = pair();
        ada.edit(|b, t| assert!(b.set_field(t, "s", "stroke", "#ff0000")));
        sync(&ada, &bob);
        bob.edit(|b, t| assert!(b.set_fields(t, "s", [("x", 99.0.into())])));
        sync(&bob, &ada);
        ada.history.cut();
        ada.edit(|b, t| assert!(b.set_fields(t, "s", [("y", 5.0.into())])));
        assert!(ada.undo());
        assert!(ada.undo());
        both(&ada, &bob);
        for user in [&ada, &bob] {
            let s = user.shape("s").expect("the shape is still there");
            assert_eq!((s.x, s.y, s.stroke.as_str()), (99.0, 0.0, "#1e1e1e"), "Bob's move stays");
        }
        // Redo brings Ada's edits back, Bob's move still standing.
        assert!(ada.redo());
        assert!(ada.redo());
        let s = ada.shape("s").expect("shape");
        assert_eq!((s.x, s.y, s.stroke.as_str()), (99.0, 5.0, "#ff0000"));
        assert!(!ada.redo());
    }

    #[test]
    fn undo_after_a_concurrent_change_that_ada_won_keeps_the_shape() {
        // Ada (client 3) and Bob (client 2) change `s` at once; Ada's value wins.
        let (ada, bob) = pair();
        ada.edit(|b, t| assert!(b.set_field(t, "s", "stroke", "#ff0000")));
        bob.edit(|b, t| assert!(b.set_fields(t, "s", [("x", 99.0.into())])));
        both(&ada, &bob);
        assert_eq!(ada.shape("s").map(|s| s.stroke), Some("#ff0000".to_owned()));
        // yrs' UndoManager deleted the shape here, for everyone.
        assert!(ada.undo());
        sync(&ada, &bob);
        for user in [&ada, &bob] {
            let s = user.shape("s").expect("the shape survives Ada's undo");
            assert_eq!(s.stroke, "#1e1e1e");
        }
    }

    #[test]
    fn a_field_someone_else_changed_since_is_left_alone() {
        let (ada, bob) = pair();
        ada.edit(|b, t| assert!(b.set_fields(t, "s", [("x", 10.0.into()), ("y", 20.0.into())])));
        sync(&ada, &bob);
        bob.edit(|b, t| assert!(b.set_fields(t, "s", [("y", 50.0.into())])));
        sync(&bob, &ada);
        assert!(ada.undo());
        let s = ada.shape("s").expect("shape");
        assert_eq!((s.x, s.y), (0.0, 50.0), "Ada's x goes back, Bob's y stays");
        // Nothing of the step left to undo: a second undo finds nothing.
        assert!(!ada.undo());
    }

    #[test]
    fn undo_and_redo_never_bring_back_a_shape_someone_else_removed() {
        let (ada, bob) = pair();
        ada.edit(|b, t| b.put_shape(t, &rect("mine")));
        ada.history.cut();
        // A drag: several moves in one step.
        for x in [10.0, 30.0, 50.0] {
            ada.edit(|b, t| assert!(b.set_field(t, "s", "x", x)));
        }
        sync(&ada, &bob);
        bob.edit(|b, t| assert!(b.remove_shape(t, "s")));
        sync(&bob, &ada);
        // The move's step has nothing left to do; undo goes on to the step before it.
        assert!(ada.undo());
        assert!(ada.shape("s").is_none(), "Bob's delete stands");
        assert!(ada.shape("mine").is_none(), "Ada's own rectangle was undone");
        assert!(ada.redo());
        assert!(ada.shape("s").is_none());
        assert!(ada.shape("mine").is_some());
        sync(&ada, &bob);
        assert!(bob.shape("s").is_none(), "Bob's delete stands for Bob too");
    }

    #[test]
    fn a_removal_is_undone_and_redone() {
        let (ada, bob) = pair();
        ada.edit(|b, t| assert!(b.set_field(t, "s", "fill", "#00ff00")));
        ada.history.cut();
        ada.edit(|b, t| assert!(b.remove_shape(t, "s")));
        assert!(ada.undo());
        assert_eq!(ada.shape("s").map(|s| s.fill), Some("#00ff00".to_owned()));
        sync(&ada, &bob);
        assert!(bob.shape("s").is_some());
        assert!(ada.redo());
        assert!(ada.shape("s").is_none());
        assert!(ada.undo());
        assert!(ada.undo(), "and the fill before it");
        assert_eq!(ada.shape("s").map(|s| s.fill), Some("transparent".to_owned()));
    }

    #[test]
    fn a_stroke_is_one_step_and_comes_back_whole() {
        let ada = User::new(1);
        let mut stroke = Shape::new("p", ShapeKind::Pen);
        stroke.points = vec![0.0, 0.0];
        ada.edit(|b, t| b.begin_stroke(t, &stroke));
        for i in 1..50 {
            ada.edit(|b, t| assert!(b.append_points(t, "p", &[f64::from(i), 1.0])));
        }
        ada.edit(|b, t| assert!(b.settle(t, "p", &[50.0, 2.0])));
        let drawn = ada.shape("p").expect("stroke");
        assert_eq!(drawn.points.len(), 102);
        assert!(ada.undo());
        assert!(ada.shape("p").is_none());
        assert!(ada.redo());
        assert_eq!(ada.shape("p"), Some(drawn));
        assert!(!ada.redo());
    }

    #[test]
    fn a_nested_map_shape_is_undone_field_by_field() {
        // An older room's shape, stored as a nested map.
        let (ada, bob) = (User::new(1), User::new(2));
        {
            let mut txn = ada.doc.transact_mut_with("setup");
            let prelim = yrs::MapPrelim::from([
                ("kind", yrs::In::from("rect")),
                ("x", yrs::In::from(1.0)),
                ("y", yrs::In::from(1.0)),
            ]);
            ada.board.shapes_ref().insert(&mut txn, "old", prelim);
        }
        both(&ada, &bob);
        ada.edit(|b, t| assert!(b.set_fields(t, "old", [("x", 7.0.into()), ("w", 4.0.into())])));
        sync(&ada, &bob);
        bob.edit(|b, t| assert!(b.set_fields(t, "old", [("w", 9.0.into())])));
        sync(&bob, &ada);
        assert!(ada.undo());
        let s = ada.shape("old").expect("shape");
        assert_eq!((s.x, s.y, s.w), (1.0, 1.0, 9.0));
    }

    #[test]
    fn a_removed_nested_map_shape_comes_back_whole() {
        // An older room's shape (or a stroke never finished) is a nested map; once removed it
        // reads as empty, so what undo puts back must be kept before.
        let ada = User::new(1);
        {
            let mut txn = ada.doc.transact_mut_with("setup");
            let prelim = yrs::MapPrelim::from([
                ("kind", yrs::In::from("ellipse")),
                ("x", yrs::In::from(3.0)),
                ("fill", yrs::In::from("#00ff00")),
            ]);
            ada.board.shapes_ref().insert(&mut txn, "old", prelim);
        }
        let was = ada.shape("old").expect("shape");
        ada.edit(|b, t| assert!(b.remove_shape(t, "old")));
        assert!(ada.undo());
        assert_eq!(ada.shape("old"), Some(was));
    }

    #[test]
    fn a_collaborators_change_inside_ada_s_step_stays() {
        let (ada, bob) = pair();
        // Ada makes it red; Bob makes it blue; within the same step Ada nudges it.
        ada.edit(|b, t| assert!(b.set_field(t, "s", "stroke", "#ff0000")));
        sync(&ada, &bob);
        bob.edit(|b, t| assert!(b.set_field(t, "s", "stroke", "#0000ff")));
        sync(&bob, &ada);
        ada.edit(|b, t| assert!(b.set_field(t, "s", "x", 4.0)));
        assert!(ada.undo());
        let s = ada.shape("s").expect("shape");
        assert_eq!((s.x, s.stroke.as_str()), (0.0, "#0000ff"), "Bob's colour stays");
    }

    #[test]
    fn a_shape_ada_removed_and_bob_removed_again_later_stays_removed() {
        // Ada removes `s` while Bob moves it: the move keeps it. Later Bob removes it.
        let (ada, bob) = pair();
        ada.edit(|b, t| assert!(b.remove_shape(t, "s")));
        bob.edit(|b, t| assert!(b.set_field(t, "s", "x", 40.0)));
        both(&ada, &bob);
        assert!(ada.shape("s").is_some(), "the concurrent move kept it");
        bob.edit(|b, t| assert!(b.remove_shape(t, "s")));
        sync(&bob, &ada);
        // Ada's undo of her removal must not undo Bob's.
        assert!(!ada.undo());
        assert!(ada.shape("s").is_none());
    }

    #[test]
    fn a_shape_removed_and_put_back_in_one_step_is_undone() {
        let (ada, _bob) = pair();
        ada.edit(|b, t| {
            assert!(b.remove_shape(t, "s"));
        });
        let mut moved = rect("s");
        moved.x = 70.0;
        ada.edit(|b, t| b.put_shape(t, &moved));
        assert!(ada.undo());
        assert_eq!(ada.shape("s").map(|s| s.x), Some(0.0));
        assert!(ada.redo());
        assert_eq!(ada.shape("s").map(|s| s.x), Some(70.0));
    }

    #[test]
    fn what_someone_else_changed_since_is_not_taken_away_with_a_creation_or_a_removal() {
        // Ada draws a rectangle; Bob moves it. Her undo leaves his moved rectangle.
        let (ada, bob) = (User::new(3), User::new(2));
        ada.edit(|b, t| b.put_shape(t, &rect("r")));
        sync(&ada, &bob);
        bob.edit(|b, t| assert!(b.set_field(t, "r", "x", 90.0)));
        sync(&bob, &ada);
        assert!(!ada.undo());
        assert_eq!(ada.shape("r").map(|s| s.x), Some(90.0));
        // Ada deletes it and undoes that; Bob recolours it; her redo leaves it.
        ada.history.cut();
        ada.edit(|b, t| assert!(b.remove_shape(t, "r")));
        assert!(ada.undo());
        sync(&ada, &bob);
        bob.edit(|b, t| assert!(b.set_field(t, "r", "stroke", "#0000ff")));
        sync(&bob, &ada);
        assert!(!ada.redo());
        assert_eq!(ada.shape("r").map(|s| s.stroke), Some("#0000ff".to_owned()));
    }

    #[test]
    fn a_removal_undone_keeps_what_others_changed_earlier_in_the_step() {
        // Ada moves the shape, Bob changes its height, and Ada removes it, all in one step.
        let (ada, bob) = pair();
        ada.edit(|b, t| assert!(b.set_field(t, "s", "x", 10.0)));
        sync(&ada, &bob);
        bob.edit(|b, t| assert!(b.set_field(t, "s", "h", 50.0)));
        sync(&bob, &ada);
        ada.edit(|b, t| assert!(b.remove_shape(t, "s")));
        assert!(ada.undo());
        let s = ada.shape("s").expect("back");
        assert_eq!((s.x, s.h), (0.0, 50.0), "Ada's move undone, Bob's height kept");
    }

    #[test]
    fn undo_or_redo_with_nothing_to_do_does_not_split_the_step_being_drawn() {
        let ada = User::new(1);
        let mut stroke = Shape::new("p", ShapeKind::Pen);
        stroke.points = vec![0.0, 0.0];
        ada.edit(|b, t| b.begin_stroke(t, &stroke));
        ada.edit(|b, t| assert!(b.append_points(t, "p", &[1.0, 1.0])));
        assert!(!ada.redo(), "nothing to redo");
        ada.edit(|b, t| assert!(b.append_points(t, "p", &[2.0, 2.0])));
        ada.edit(|b, t| assert!(b.settle(t, "p", &[])));
        assert!(ada.undo());
        assert!(ada.shape("p").is_none(), "the whole stroke was one step");
    }

    #[test]
    fn a_new_edit_clears_redo_and_steps_are_bounded() {
        let ada = User::new(1);
        ada.edit(|b, t| b.put_shape(t, &rect("a")));
        assert!(ada.undo());
        assert!(ada.history.can_redo());
        ada.edit(|b, t| b.put_shape(t, &rect("b")));
        assert!(!ada.history.can_redo());
        for i in 0..MAX_STEPS + 10 {
            ada.history.cut();
            ada.edit(|b, t| assert!(b.set_field(t, "b", "x", i as f64 + 1.0)));
        }
        let mut undone = 0;
        while ada.undo() {
            undone += 1;
        }
        assert_eq!(undone, MAX_STEPS);
        // Edits made under another origin (remote, restored) are nobody's steps.
        ada.board.put_shape(&mut ada.doc.transact_mut_with("remote"), &rect("c"));
        assert!(!ada.undo());
    }
}
