//! The board: a canvas with the shapes, pointer and wheel interaction for every tool, and a DOM
//! overlay for other people's cursors and the text editor.

use std::cell::Cell;
use std::rc::Rc;

use huddle_protocol::presence::{Point, Viewport};
use huddle_protocol::schema::{Board, Shape, ShapeKind};
use huddle_protocol::yrs::{Any, Transact};
use leptos::ev;
use leptos::html;
use leptos::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;

use crate::geometry::{bounds, hit, inside, to_board, to_screen, zoom_at};
use crate::render::{draw_board, draw_outline, draw_shape, text_box};
use crate::state::{RoomState, Tool};
use crate::sync::Loading;

/// The document's shapes in z order, brought up to date when the document changes: only the
/// shapes the board's observer saw change are re-read (see [`Board::observe_shapes`]).
#[derive(Default)]
struct ShapeCache {
    version: Option<u64>,
    shapes: Rc<Vec<Shape>>,
}

/// Ids of shapes changed since the list was last brought up to date; `None` until the first
/// full read, and after a change too big to be worth patching in (then the list is re-read).
type Changed = std::sync::Arc<std::sync::Mutex<Option<std::collections::HashSet<String>>>>;

/// Shapes (or elements) changed at once beyond which the board re-reads every shape instead of
/// patching its list.
const BIG_CHANGE: u64 = 4096;

/// Name of the board view's shape observer.
const OBSERVER: &str = "board-view";

/// What a pointer drag is doing.
#[derive(Debug, Clone, Default)]
enum Drag {
    #[default]
    None,
    /// Two fingers: zoom by their spread, pan by their midpoint.
    Pinch {
        spread: f64,
        mid: (f64, f64),
        view: Viewport,
    },
    Pan {
        sx: f64,
        sy: f64,
        view: Viewport,
    },
    Move {
        start: (f64, f64),
        orig: Vec<(String, f64, f64)>,
    },
    Resize {
        id: String,
        anchor: (f64, f64),
        /// For pen strokes, lines and arrows: their points when the drag began, which are
        /// scaled from the anchor (the top-left of their extent) as the handle moves.
        points: Option<Vec<f64>>,
    },
    Create {
        id: String,
        origin: (f64, f64),
    },
    Pen {
        id: String,
        origin: (f64, f64),
        points: Vec<f64>,
        /// When the stroke was last written to the document (`Date.now()` ms).
        written_at: f64,
        /// How many of `points` are in the document already.
        written: usize,
    },
    Marquee {
        start: (f64, f64),
        current: (f64, f64),
    },
    Erase,
    Laser {
        trail: Vec<Point>,
    },
}

thread_local! {
    static COUNTER: Cell<u32> = const { Cell::new(0) };
}

/// A new shape id for this room's local user.
pub fn new_shape_id(state: RoomState) -> String {
    new_id(state.conn.with_value(|c| c.client_id()))
}

/// A new shape id, unique across clients: our awareness client id plus a counter.
fn new_id(client: u64) -> String {
    let n = COUNTER.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    format!("{client:x}-{n:x}")
}

/// The extent `(x0, y0, x1, y1)` of flat `[x, y, …]` points.
fn extent(points: &[f64]) -> (f64, f64, f64, f64) {
    points.chunks_exact(2).fold((f64::MAX, f64::MAX, f64::MIN, f64::MIN), |(a, b, c, d), p| {
        (a.min(p[0]), b.min(p[1]), c.max(p[0]), d.max(p[1]))
    })
}

/// `points` stretched so their extent becomes `size` (at least 4 × 4), keeping its top-left.
/// A flat extent (a horizontal or vertical line) keeps its size along that axis.
fn scale_points(points: &[f64], size: (f64, f64)) -> Vec<Any> {
    let (x0, y0, x1, y1) = extent(points);
    let factor = |from: f64, to: f64| if from > 0.5 { to.max(4.0) / from } else { 1.0 };
    let (sx, sy) = (factor(x1 - x0, size.0), factor(y1 - y0, size.1));
    points
        .chunks_exact(2)
        .flat_map(|p| [Any::from(x0 + (p[0] - x0) * sx), Any::from(y0 + (p[1] - y0) * sy)])
        .collect()
}

fn z_top(shapes: &[Shape]) -> f64 {
    shapes.iter().map(|s| s.z).fold(0.0, f64::max) + 1.0
}

/// The board view.
#[component]
pub fn BoardView() -> impl IntoView {
    let room = expect_context::<RoomState>();
    let canvas_ref = NodeRef::<html::Canvas>::new();
    let host_ref = NodeRef::<html::Div>::new();
    let cache = StoredValue::new_local(ShapeCache::default());
    let changed: Changed = Changed::default();
    {
        let changed = std::sync::Arc::clone(&changed);
        room.conn.with_value(|c| {
            c.with_doc(|doc| {
                // A big change (a sync, a paste of thousands) is cheaper to re-read whole.
                let wants = std::sync::Arc::clone(&changed);
                let wants = move |added: u64| {
                    let Ok(mut guard) = wants.lock() else { return false };
                    if added > BIG_CHANGE {
                        *guard = None;
                    }
                    guard.is_some()
                };
                Board::new(doc).observe_shapes(OBSERVER, wants, move |id| {
                    let Ok(mut guard) = changed.lock() else { return false };
                    let Some(set) = guard.as_mut() else { return false };
                    set.insert(id.to_owned());
                    if set.len() as u64 > BIG_CHANGE {
                        *guard = None;
                        return false;
                    }
                    true
                });
            });
        });
        on_cleanup(move || {
            let _ = room
                .conn
                .try_with_value(|c| c.with_doc(|doc| Board::new(doc).unobserve_shapes(OBSERVER)));
        });
    }
    // A `Copy` handle, so the closures below stay `Copy`.
    let changed = StoredValue::new(changed);
    let drag = StoredValue::new_local(Drag::None);
    let size = RwSignal::new((0.0f64, 0.0f64));
    let frame_pending = StoredValue::new_local(false);
    // What the canvas shows, as of its last frame: the board's `data-shape-count` and
    // `data-synced`, set after each draw so that tests and outside benchmarks that wait for
    // them see a board that is on screen, not one that is only in memory.
    let shape_count = RwSignal::new(0usize);
    let synced_drawn = RwSignal::new(false);
    let space_held = StoredValue::new(false);
    // Pointers currently down (touch points), for pinch zoom.
    let touches = StoredValue::new_local(Vec::<(i32, f64, f64)>::new());
    let pinch_state = move || -> Option<(f64, (f64, f64))> {
        touches.with_value(|t| match t.as_slice() {
            [a, b, ..] => Some((
                ((a.1 - b.1).powi(2) + (a.2 - b.2).powi(2)).sqrt().max(1.0),
                ((a.1 + b.1) / 2.0, (a.2 + b.2) / 2.0),
            )),
            _ => None,
        })
    };

    // The shapes, refreshed lazily when the document version moved.
    let shapes = move || -> Rc<Vec<Shape>> {
        let version = room.signals.doc_version.get_untracked();
        let stale = cache.with_value(|c| c.version != Some(version));
        if stale {
            let pending = changed.with_value(|c| {
                c.lock().ok().and_then(|mut guard| guard.replace(Default::default()))
            });
            cache.update_value(|c| {
                room.conn.with_value(|conn| {
                    conn.with_doc(|doc| {
                        let board = Board::new(doc);
                        let txn = doc.transact();
                        match pending {
                            Some(ids) => board.refresh(&txn, Rc::make_mut(&mut c.shapes), ids),
                            None => c.shapes = Rc::new(board.shapes(&txn)),
                        }
                    })
                });
                c.version = Some(version);
            });
        }
        cache.with_value(|c| Rc::clone(&c.shapes))
    };

    // Paints `all` (the document's shapes, or at least all those in view) and what goes over
    // them; `count` is how many shapes the document holds.
    let paint = move |all: &[Shape], count: usize| {
        let Some(canvas) = canvas_ref.try_get_untracked().flatten() else { return };
        let Some(ctx) = crate::export::context_2d(&canvas) else { return };
        let (w, h) = size.get_untracked();
        let dpr = web_sys::window().map_or(1.0, |w| w.device_pixel_ratio());
        let view = room.view.get_untracked();
        let dark = room.dark.get_untracked();
        draw_board(&ctx, all, &view, w, h, dpr, dark);
        if shape_count.get_untracked() != count {
            shape_count.set(count);
        }
        if !synced_drawn.get_untracked() && room.signals.synced.get_untracked() {
            synced_drawn.set(true);
            crate::sync::mark("huddle-board-drawn");
        }
        // Our selection, with a resize handle when one shape is selected.
        // Looked up in sets: a select-all of a big board against the shapes in view, list
        // against list, was a hundred million comparisons a frame.
        let selection = room.selection.get_untracked();
        let selected: std::collections::HashSet<&str> =
            selection.iter().map(String::as_str).collect();
        for s in all.iter().filter(|s| selected.contains(s.id.as_str())) {
            draw_outline(&ctx, s, &view, "#4263eb", selection.len() == 1);
        }
        // Other people's selections and laser pointers, in their colours.
        for (_, p) in room.conn.with_value(|c| c.peers()) {
            let theirs: std::collections::HashSet<&str> =
                p.selection.iter().map(String::as_str).collect();
            for s in all.iter().filter(|s| theirs.contains(s.id.as_str())) {
                draw_outline(&ctx, s, &view, &p.user.color, false);
            }
            draw_laser(&ctx, &p.laser, &view, &p.user.color);
        }
        match drag.get_value() {
            Drag::Marquee { start, current } => {
                ctx.set_stroke_style_str("#4263eb");
                ctx.set_line_width(1.0 / view.zoom);
                ctx.stroke_rect(start.0, start.1, current.0 - start.0, current.1 - start.1);
            }
            Drag::Laser { trail } => {
                draw_laser(&ctx, &trail, &view, &room.me.with_value(|me| me.color.clone()))
            }
            _ => {}
        }
        let _ = draw_shape; // drawn through draw_board
    };
    let draw = move || {
        // The room view may be gone by the time the frame comes (Back to the landing page). A
        // frame with nothing pending was already drawn (the first draw after the sync is
        // drawn at once, see below).
        if !frame_pending.try_get_value().unwrap_or(false)
            || room.view.try_get_untracked().is_none()
        {
            return;
        }
        frame_pending.set_value(false);
        let all = shapes();
        paint(&all, all.len());
    };
    // Draws in the next animation frame (once, however often it is asked for before then).
    let redraw = move || {
        if !frame_pending.get_value() {
            frame_pending.set_value(true);
            request_animation_frame(draw);
        }
    };
    // The first frame of a freshly synced board, when every shape is still to be read: only
    // the shapes in view are built for it ([`Board::shapes_meeting`]); the full list is read
    // right after, in a task of its own, and the board redrawn from it. Returns whether it
    // drew.
    let paint_first = move || -> bool {
        let version = room.signals.doc_version.get_untracked();
        let unread = cache.with_value(|c| c.version != Some(version))
            && changed.with_value(|c| c.lock().is_ok_and(|guard| guard.is_none()));
        if !unread {
            return false;
        }
        let (w, h) = size.get_untracked();
        let view = room.view.get_untracked();
        let area = (view.x, view.y, view.x + w / view.zoom, view.y + h / view.zoom);
        let (in_view, count) = room.conn.with_value(|conn| {
            conn.with_doc(|doc| Board::new(doc).shapes_meeting(&doc.transact(), area))
        });
        frame_pending.set_value(false);
        paint(&in_view, count);
        set_timeout(
            move || {
                if room.view.try_get_untracked().is_some() {
                    let _ = shapes();
                    redraw();
                }
            },
            std::time::Duration::ZERO,
        );
        true
    };

    // Redraw (once per animation frame at most) whenever anything visible changes.
    Effect::new(move |_| {
        room.signals.doc_version.track();
        room.signals.synced.track();
        room.signals.presence_version.track();
        room.view.track();
        room.selection.track();
        room.dark.track();
        size.track();
        // The board the sync brought is drawn at once: the canvas shows it in the next frame
        // either way, and `data-synced` need not wait for that frame to start (8 ms on
        // average). Not before the canvas has its size: that draw would show nothing.
        let (w, h) = size.get_untracked();
        if room.signals.synced.get_untracked()
            && !synced_drawn.get_untracked()
            && w > 0.0
            && h > 0.0
        {
            if !paint_first() {
                frame_pending.set_value(true);
                draw();
            }
            return;
        }
        // Read the shapes now rather than in the frame: after a big sync, reading them all
        // takes a while, and done here it overlaps the wait for the next frame.
        let _ = shapes();
        redraw();
    });

    // Size the canvas to its container, in device pixels.
    let resize = move || {
        let (Some(host), Some(canvas)) = (host_ref.get_untracked(), canvas_ref.get_untracked())
        else {
            return;
        };
        let (w, h) = (host.client_width() as f64, host.client_height() as f64);
        let dpr = web_sys::window().map_or(1.0, |w| w.device_pixel_ratio());
        canvas.set_width((w * dpr) as u32);
        canvas.set_height((h * dpr) as u32);
        size.set((w, h));
        room.board_size.set((w, h));
    };
    canvas_ref.on_load(move |_| request_animation_frame(resize));
    // The board's box also changes while the window keeps its size (on a phone the panel under
    // the board grows as people join): watch the box itself.
    let on_resize = Closure::<dyn FnMut(js_sys::Array)>::new(move |_: js_sys::Array| resize());
    let observer = web_sys::ResizeObserver::new(on_resize.as_ref().unchecked_ref()).ok();
    let observer = StoredValue::new_local((observer, on_resize));
    host_ref.on_load(move |host| {
        observer.with_value(|(o, _)| o.as_ref().map(|o| o.observe(&host)));
    });
    let resize_listener = window_event_listener(ev::resize, move |_| resize());
    on_cleanup(move || {
        resize_listener.remove();
        // Disconnected before the callback is dropped, so nothing can call it afterwards.
        observer.with_value(|(o, _)| o.as_ref().map(web_sys::ResizeObserver::disconnect));
        observer.dispose();
    });

    let board_point = move |ev: &web_sys::PointerEvent| {
        to_board(&room.view.get_untracked(), ev.offset_x() as f64, ev.offset_y() as f64)
    };
    let topmost_hit = move |p: (f64, f64)| -> Option<Shape> {
        let tol = 4.0 / room.view.get_untracked().zoom;
        shapes().iter().rev().find(|s| hit(s, p.0, p.1, tol)).cloned()
    };

    let on_down = move |ev: web_sys::PointerEvent| {
        if let Some(c) = canvas_ref.get_untracked() {
            let _ = c.set_pointer_capture(ev.pointer_id());
        }
        if ev.pointer_type() == "touch" {
            touches.update_value(|t| {
                t.push((ev.pointer_id(), ev.offset_x() as f64, ev.offset_y() as f64))
            });
            if let Some((spread, mid)) = pinch_state() {
                // A second finger turns whatever the first one started into a pinch.
                if let Drag::Create { id, .. } | Drag::Pen { id, .. } = drag.get_value() {
                    room.conn.get_value().edit(|b, t| {
                        b.remove_shape(t, &id);
                    });
                }
                room.follow.set(None);
                drag.set_value(Drag::Pinch { spread, mid, view: room.view.get_untracked() });
                return;
            }
        }
        if let Some(previous) = room.editing.get_untracked() {
            remove_if_empty_text(room, &previous);
            room.editing.set(None);
        }
        let p = board_point(&ev);
        let tool = room.tool.get_untracked();
        let conn = room.conn.get_value();
        if tool == Tool::Hand || ev.button() == 1 || space_held.get_value() {
            room.follow.set(None);
            drag.set_value(Drag::Pan {
                sx: ev.client_x() as f64,
                sy: ev.client_y() as f64,
                view: room.view.get_untracked(),
            });
            return;
        }
        // Whatever this press starts (a shape, a stroke, a move, a resize) is one undo step.
        conn.begin_action();
        let mut style = Shape::new(new_id(conn.client_id()), ShapeKind::Rect);
        style.x = p.0;
        style.y = p.1;
        style.stroke = room.stroke.get_untracked();
        style.fill = room.fill.get_untracked();
        style.width = room.width.get_untracked();
        style.z = z_top(&shapes());
        style.author = room.me.with_value(|m| m.id.clone());
        match tool {
            Tool::Select => {
                let selection = room.selection.get_untracked();
                // The resize handle of a single selected shape.
                if let [only] = selection.as_slice()
                    && let Some(s) = shapes().iter().find(|s| &s.id == only)
                {
                    let (x0, y0, x1, y1) = bounds(s);
                    let tol = 8.0 / room.view.get_untracked().zoom;
                    if (p.0 - x1).abs() <= tol && (p.1 - y1).abs() <= tol {
                        let points = crate::geometry::uses_points(s.kind).then(|| s.points.clone());
                        let anchor = match &points {
                            // Point shapes scale from the top-left of their points' extent.
                            Some(pts) => {
                                let (px0, py0, _, _) = extent(pts);
                                (s.x + px0, s.y + py0)
                            }
                            None => (x0.min(s.x), y0.min(s.y)),
                        };
                        drag.set_value(Drag::Resize { id: s.id.clone(), anchor, points });
                        return;
                    }
                }
                match topmost_hit(p) {
                    Some(s) => {
                        let mut sel = selection;
                        if ev.shift_key() {
                            if let Some(i) = sel.iter().position(|id| id == &s.id) {
                                sel.remove(i);
                            } else {
                                sel.push(s.id.clone());
                            }
                        } else if !sel.contains(&s.id) {
                            sel = vec![s.id.clone()];
                        }
                        let chosen: std::collections::HashSet<&String> = sel.iter().collect();
                        let orig = shapes()
                            .iter()
                            .filter(|x| chosen.contains(&x.id))
                            .map(|x| (x.id.clone(), x.x, x.y))
                            .collect();
                        room.selection.set(sel);
                        drag.set_value(Drag::Move { start: p, orig });
                    }
                    None => {
                        if !ev.shift_key() {
                            room.selection.set(Vec::new());
                        }
                        drag.set_value(Drag::Marquee { start: p, current: p });
                    }
                }
            }
            Tool::Pen => {
                style.kind = ShapeKind::Pen;
                style.points = vec![0.0, 0.0];
                style.fill = "transparent".into();
                conn.edit(|b, t| b.begin_stroke(t, &style));
                drag.set_value(Drag::Pen {
                    id: style.id,
                    origin: p,
                    points: vec![0.0, 0.0],
                    written_at: 0.0,
                    written: 2,
                });
            }
            Tool::Rect | Tool::Ellipse | Tool::Line | Tool::Arrow => {
                style.kind = match tool {
                    Tool::Rect => ShapeKind::Rect,
                    Tool::Ellipse => ShapeKind::Ellipse,
                    Tool::Line => ShapeKind::Line,
                    _ => ShapeKind::Arrow,
                };
                if crate::geometry::uses_points(style.kind) {
                    style.points = vec![0.0, 0.0, 0.0, 0.0];
                    style.fill = "transparent".into();
                }
                conn.edit(|b, t| b.put_shape(t, &style));
                drag.set_value(Drag::Create { id: style.id, origin: p });
            }
            Tool::Text | Tool::Sticky => {
                if tool == Tool::Sticky {
                    style.kind = ShapeKind::Sticky;
                    style.w = 200.0;
                    style.h = 160.0;
                    if style.fill == "transparent" {
                        style.fill = "#ffec99".into();
                    }
                } else {
                    style.kind = ShapeKind::Text;
                    style.fill = "transparent".into();
                    (style.w, style.h) = text_box("");
                }
                let id = style.id.clone();
                conn.edit(|b, t| b.put_shape(t, &style));
                room.selection.set(vec![id.clone()]);
                room.editing.set(Some(id));
            }
            Tool::Eraser => {
                if let Some(s) = topmost_hit(p) {
                    conn.edit(|b, t| {
                        b.remove_shape(t, &s.id);
                    });
                }
                drag.set_value(Drag::Erase);
            }
            Tool::Laser => {
                let trail = vec![Point { x: p.0, y: p.1 }];
                let rc = room.conn.get_value();
                rc.update_presence(|pr| pr.laser = trail.clone());
                drag.set_value(Drag::Laser { trail });
            }
            Tool::Hand => {}
        }
    };

    let on_move = move |ev: web_sys::PointerEvent| {
        if ev.pointer_type() == "touch" {
            touches.update_value(|t| {
                if let Some(e) = t.iter_mut().find(|e| e.0 == ev.pointer_id()) {
                    (e.1, e.2) = (ev.offset_x() as f64, ev.offset_y() as f64);
                }
            });
        }
        if let Drag::Pinch { spread, mid, view } = drag.get_value() {
            if let Some((now_spread, now_mid)) = pinch_state() {
                let zoomed = zoom_at(&view, now_spread / spread, mid.0, mid.1);
                room.view.set(Viewport {
                    x: zoomed.x - (now_mid.0 - mid.0) / zoomed.zoom,
                    y: zoomed.y - (now_mid.1 - mid.1) / zoomed.zoom,
                    zoom: zoomed.zoom,
                });
            }
            return;
        }
        let p = board_point(&ev);
        let conn = room.conn.get_value();
        conn.update_presence(|pr| pr.cursor = Some(Point { x: p.0, y: p.1 }));
        match drag.get_value() {
            Drag::None | Drag::Pinch { .. } => {}
            Drag::Pan { sx, sy, view } => {
                let dx = (ev.client_x() as f64 - sx) / view.zoom;
                let dy = (ev.client_y() as f64 - sy) / view.zoom;
                room.view.set(Viewport { x: view.x - dx, y: view.y - dy, zoom: view.zoom });
            }
            Drag::Move { start, orig } => {
                let (dx, dy) = (p.0 - start.0, p.1 - start.1);
                conn.edit(|b, t| {
                    for (id, x, y) in &orig {
                        b.set_fields(t, id, [("x", Any::from(x + dx)), ("y", Any::from(y + dy))]);
                    }
                });
            }
            Drag::Resize { id, anchor, points: Some(points) } => {
                let scaled = scale_points(&points, (p.0 - anchor.0, p.1 - anchor.1));
                conn.edit(|b, t| {
                    b.set_field(t, &id, "points", Any::from(scaled));
                });
            }
            Drag::Resize { id, anchor, points: None } => {
                let (w, h) = ((p.0 - anchor.0).max(4.0), (p.1 - anchor.1).max(4.0));
                conn.edit(|b, t| {
                    b.set_fields(t, &id, [("w", Any::from(w)), ("h", Any::from(h))]);
                });
            }
            Drag::Create { id, origin } => {
                let kind = shapes().iter().find(|s| s.id == id).map(|s| s.kind);
                conn.edit(|b, t| {
                    if kind.is_some_and(crate::geometry::uses_points) {
                        b.set_field(t, &id, "points", segment(p.0 - origin.0, p.1 - origin.1));
                    } else {
                        b.set_fields(
                            t,
                            &id,
                            [
                                ("x", Any::from(origin.0.min(p.0))),
                                ("y", Any::from(origin.1.min(p.1))),
                                ("w", Any::from((p.0 - origin.0).abs())),
                                ("h", Any::from((p.1 - origin.1).abs())),
                            ],
                        );
                    }
                });
            }
            Drag::Pen { id, origin, mut points, mut written_at, mut written } => {
                // A stroke holds as many points as anyone reads of one; the rest of a longer
                // drag is not drawn.
                if points.len() < 2 * huddle_protocol::schema::MAX_POINT_PAIRS {
                    points.push(p.0 - origin.0);
                    points.push(p.1 - origin.1);
                }
                // New points are appended at most every PEN_WRITE_MS (one update each, which
                // others see as the stroke growing live); pointer-up appends the rest.
                let now = crate::sync::now_ms();
                if now - written_at >= PEN_WRITE_MS {
                    append_points(&conn, &id, &points[written..]);
                    written = points.len();
                    written_at = now;
                }
                drag.set_value(Drag::Pen { id, origin, points, written_at, written });
            }
            Drag::Marquee { start, .. } => {
                drag.set_value(Drag::Marquee { start, current: p });
                redraw();
            }
            Drag::Erase => {
                if let Some(s) = topmost_hit(p) {
                    conn.edit(|b, t| {
                        b.remove_shape(t, &s.id);
                    });
                }
            }
            Drag::Laser { mut trail } => {
                trail.push(Point { x: p.0, y: p.1 });
                if trail.len() > 24 {
                    trail.remove(0);
                }
                conn.update_presence(|pr| pr.laser = trail.clone());
                drag.set_value(Drag::Laser { trail });
                redraw();
            }
        }
    };

    let on_up = move |ev: web_sys::PointerEvent| {
        touches.update_value(|t| t.retain(|e| e.0 != ev.pointer_id()));
        if matches!(drag.get_value(), Drag::Pinch { .. }) {
            if pinch_state().is_none() {
                drag.set_value(Drag::None);
                room.conn.get_value().end_action();
            }
            return;
        }
        let p = board_point(&ev);
        let conn = room.conn.get_value();
        match drag.get_value() {
            Drag::Create { id, origin } => {
                // A click without a drag makes a shape of a useful default size.
                if (p.0 - origin.0).abs() < 3.0 && (p.1 - origin.1).abs() < 3.0 {
                    let kind = shapes().iter().find(|s| s.id == id).map(|s| s.kind);
                    conn.edit(|b, t| {
                        if kind.is_some_and(crate::geometry::uses_points) {
                            b.set_field(t, &id, "points", segment(120.0, 0.0));
                        } else {
                            b.set_fields(t, &id, [("w", Any::from(120.0)), ("h", Any::from(80.0))]);
                        }
                    });
                }
                room.selection.set(vec![id]);
            }
            Drag::Marquee { start, current } => {
                let mut sel = room.selection.get_untracked();
                let mut chosen: std::collections::HashSet<String> = sel.iter().cloned().collect();
                for s in shapes().iter().filter(|s| inside(s, start, current)) {
                    if chosen.insert(s.id.clone()) {
                        sel.push(s.id.clone());
                    }
                }
                room.selection.set(sel);
            }
            Drag::Laser { .. } => conn.update_presence(|pr| pr.laser.clear()),
            // The finished stroke, with the points not yet sent, becomes one plain object in a
            // single write: cheapest for everyone to open.
            Drag::Pen { id, points, written, .. } => conn.edit(|b, t| {
                b.settle(t, &id, &points[written..]);
            }),
            _ => {}
        }
        conn.end_action();
        drag.set_value(Drag::None);
        redraw();
    };

    let on_leave = move |_ev: web_sys::PointerEvent| {
        room.conn.get_value().update_presence(|pr| pr.cursor = None);
    };

    let on_wheel = move |ev: web_sys::WheelEvent| {
        ev.prevent_default();
        room.follow.set(None);
        let view = room.view.get_untracked();
        if ev.ctrl_key() || ev.meta_key() {
            let factor = (-ev.delta_y() * 0.002).exp();
            room.view.set(zoom_at(&view, factor, ev.offset_x() as f64, ev.offset_y() as f64));
        } else {
            room.view.set(Viewport {
                x: view.x + ev.delta_x() / view.zoom,
                y: view.y + ev.delta_y() / view.zoom,
                zoom: view.zoom,
            });
        }
    };

    let on_dblclick = move |ev: web_sys::MouseEvent| {
        let p = to_board(&room.view.get_untracked(), ev.offset_x() as f64, ev.offset_y() as f64);
        if let Some(s) = topmost_hit(p)
            && matches!(s.kind, ShapeKind::Text | ShapeKind::Sticky)
        {
            room.selection.set(vec![s.id.clone()]);
            room.editing.set(Some(s.id));
        }
    };

    // Space held: temporary hand tool.
    let keydown = window_event_listener(ev::keydown, move |ev: web_sys::KeyboardEvent| {
        if ev.key() == " " && !crate::typing_in_field(&ev) {
            // Also keeps space from pressing whichever toolbar button has focus.
            ev.prevent_default();
            space_held.set_value(true);
        }
    });
    let keyup = window_event_listener(ev::keyup, move |ev: web_sys::KeyboardEvent| {
        if ev.key() == " " {
            space_held.set_value(false);
        }
    });
    on_cleanup(move || {
        keydown.remove();
        keyup.remove();
    });

    // Others' cursors, as DOM so they carry names (and tests can see them).
    let cursors = move || {
        let view = room.view.get();
        room.peers()
            .into_iter()
            .filter_map(|(id, p)| {
                let c = p.cursor?;
                let (sx, sy) = to_screen(&view, c.x, c.y);
                Some(view! {
                    <div class="cursor" data-testid="cursor" data-name=p.user.name.clone() data-client=id.to_string()
                        style:transform=format!("translate({sx:.1}px, {sy:.1}px)")>
                        <svg width="16" height="16" viewBox="0 0 16 16" aria-hidden="true">
                            <path d="M1 1 L6 15 L8 9 L14 7 Z" fill=p.user.color.clone() stroke="white" stroke-width="1"/>
                        </svg>
                        <span class="cursor-label" style:background=p.user.color.clone()>{p.user.name.clone()}</span>
                    </div>
                })
            })
            .collect_view()
    };

    // The text editor over a text shape or sticky note being edited.
    let editor = move || {
        let id = room.editing.get()?;
        let view = room.view.get();
        let shape = shapes().iter().find(|s| s.id == id).cloned()?;
        let (sx, sy) = to_screen(&view, shape.x, shape.y);
        let initial = shape.text.clone();
        let sticky = shape.kind == ShapeKind::Sticky;
        let id_for_input = id.clone();
        let id_for_blur = id.clone();
        Some(view! {
            <textarea class="text-editor" data-testid="text-editor" aria-label="Shape text"
                maxlength=huddle_protocol::schema::MAX_TEXT_CHARS
                class:sticky-editor=sticky
                style:left=format!("{sx}px") style:top=format!("{sy}px")
                style:font-size=format!("{}px", crate::render::TEXT_SIZE * view.zoom)
                prop:value=initial
                autofocus=true
                on:input=move |ev| {
                    let text = event_target_value(&ev);
                    let (w, h) = text_box(&text);
                    room.conn.get_value().edit(|b, t| {
                        let mut fields = vec![("text", Any::from(text.as_str()))];
                        if !sticky {
                            fields.extend([("w", Any::from(w)), ("h", Any::from(h))]);
                        }
                        b.set_fields(t, &id_for_input, fields);
                    });
                }
                on:blur=move |_| {
                    let empty_text = room.conn.with_value(|c| c.with_doc(|doc| {
                        let board = Board::new(doc);
                        let txn = doc.transact();
                        board.shape(&txn, &id_for_blur).is_some_and(|s| s.kind == ShapeKind::Text && s.text.trim().is_empty())
                    }));
                    if empty_text {
                        room.conn.get_value().edit(|b, t| { b.remove_shape(t, &id_for_blur); });
                    }
                    room.editing.set(None);
                }
                on:keydown=move |ev: web_sys::KeyboardEvent| {
                    if ev.key() == "Escape"
                        && let Some(t) = ev.target().and_then(|t| t.dyn_into::<web_sys::HtmlElement>().ok())
                    {
                        let _ = t.blur();
                    }
                }
            ></textarea>
        })
    };
    Effect::new(move |_| {
        if room.editing.get().is_some() {
            request_animation_frame(|| {
                if let Some(el) =
                    document().query_selector("[data-testid=text-editor]").ok().flatten()
                    && let Ok(el) = el.dyn_into::<web_sys::HtmlElement>()
                {
                    let _ = el.focus();
                }
            });
        }
    });

    let cursor_class = move || match room.tool.get() {
        Tool::Hand => "board-canvas tool-hand",
        Tool::Select => "board-canvas tool-select",
        _ => "board-canvas tool-draw",
    };

    view! {
        <div class="board" node_ref=host_ref data-testid="board"
            data-synced=move || synced_drawn.get().to_string()
            data-shape-count=move || shape_count.get().to_string()
            data-cached=move || room.signals.cached.get().to_string()
            data-view=move || { let v = room.view.get(); format!("{:.1},{:.1},{:.3}", v.x, v.y, v.zoom) }
            role="application" aria-roledescription="whiteboard"
            aria-label="Whiteboard: drawing tools V H P R O L A T N E K; arrow keys move the selection">
            <canvas node_ref=canvas_ref class=cursor_class
                style:width=move || format!("{}px", size.get().0)
                style:height=move || format!("{}px", size.get().1)
                on:pointerdown=on_down on:pointermove=on_move on:pointerup=on_up on:pointercancel=on_up
                on:pointerleave=on_leave on:wheel=on_wheel on:dblclick=on_dblclick
            ></canvas>
            <div class="cursors">{cursors}</div>
            {move || {
                let stage = room.signals.loading.get();
                let opening = matches!(stage, Loading::Opening { .. });
                // Over a board shown from the offline cache, only the (blocking) opening step.
                (!room.signals.synced.get() && (shape_count.get() == 0 || opening)).then(|| {
                    let text = match stage {
                        Loading::Connecting => "Connecting…".to_owned(),
                        Loading::Receiving => "Receiving the board…".to_owned(),
                        Loading::Opening { bytes } => {
                            format!("Opening the board ({:.1} MB)…", bytes as f64 / 1e6)
                        }
                        Loading::Done => "Loading the board…".to_owned(),
                    };
                    view! {
                        <div class="loading" data-testid="loading" role="status">
                            <span class="spinner"></span>{text}
                        </div>
                    }
                })
            }}
            {editor}
        </div>
    }
}

/// Milliseconds between appends to a growing pen stroke (~30 Hz, like cursors).
const PEN_WRITE_MS: f64 = 33.0;

/// Appends new points to a pen stroke (only they go over the wire).
fn append_points(conn: &Rc<crate::sync::Connection>, id: &str, more: &[f64]) {
    if more.is_empty() {
        return;
    }
    conn.edit(|b, t| {
        b.append_points(t, id, more);
    });
}

/// The `points` of a straight line or arrow from its origin to `(dx, dy)`.
fn segment(dx: f64, dy: f64) -> Any {
    Any::Array([0.0, 0.0, dx, dy].map(Any::from).into())
}

/// Removes a text shape left empty when its editor closes.
fn remove_if_empty_text(room: RoomState, id: &str) {
    let empty = room.conn.with_value(|c| {
        c.with_doc(|doc| {
            let board = Board::new(doc);
            let txn = doc.transact();
            board
                .shape(&txn, id)
                .is_some_and(|s| s.kind == ShapeKind::Text && s.text.trim().is_empty())
        })
    });
    if empty {
        room.conn.get_value().edit(|b, t| {
            b.remove_shape(t, id);
        });
    }
}

/// A laser pointer's trail, in its owner's colour (so people can tell whose it is).
fn draw_laser(
    ctx: &web_sys::CanvasRenderingContext2d,
    trail: &[Point],
    view: &Viewport,
    color: &str,
) {
    if trail.len() < 2 {
        return;
    }
    ctx.save();
    ctx.set_global_alpha(0.85);
    ctx.set_stroke_style_str(color);
    ctx.set_line_width(4.0 / view.zoom);
    ctx.set_line_cap("round");
    ctx.set_line_join("round");
    ctx.begin_path();
    ctx.move_to(trail[0].x, trail[0].y);
    for p in &trail[1..] {
        ctx.line_to(p.x, p.y);
    }
    ctx.stroke();
    ctx.restore();
}
