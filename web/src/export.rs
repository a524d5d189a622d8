//! Export (PNG, SVG, room JSON), copy/paste of shapes, and selection helpers.

use huddle_protocol::schema::{Board, Shape, ShapeKind};
use huddle_protocol::yrs::Transact;
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::geometry::{bounds, smooth_stroke};
use crate::render::{TEXT_SIZE, draw_shape};
use crate::state::RoomState;

thread_local! {
    /// Shapes copied with Ctrl+C, for when the system clipboard is not available to the page
    /// (the copy goes to the system clipboard too, as text; see [`paste_event`]).
    static CLIPBOARD: std::cell::RefCell<Vec<Shape>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn all_shapes(state: RoomState) -> Vec<Shape> {
    state.conn.with_value(|c| {
        c.with_doc(|doc| {
            let board = Board::new(doc);
            let txn = doc.transact();
            board.shapes(&txn)
        })
    })
}

/// The selected shapes, bottom to top.
pub fn selected_shapes(state: RoomState) -> Vec<Shape> {
    let selection = state.selection.get_untracked();
    let chosen: std::collections::HashSet<&String> = selection.iter().collect();
    all_shapes(state).into_iter().filter(|s| chosen.contains(&s.id)).collect()
}

/// Highest z on the board.
pub fn max_z(state: RoomState) -> f64 {
    all_shapes(state).iter().map(|s| s.z).fold(0.0, f64::max)
}

/// Lowest z on the board.
pub fn min_z(state: RoomState) -> f64 {
    all_shapes(state).iter().map(|s| s.z).fold(0.0, f64::min)
}

/// The selection, or everything when nothing is selected.
fn export_set(state: RoomState) -> Vec<Shape> {
    let selected = selected_shapes(state);
    if selected.is_empty() { all_shapes(state) } else { selected }
}

fn union_bounds(shapes: &[Shape]) -> Option<(f64, f64, f64, f64)> {
    shapes
        .iter()
        .map(bounds)
        .reduce(|a, b| (a.0.min(b.0), a.1.min(b.1), a.2.max(b.2), a.3.max(b.3)))
}

/// The board element's size in CSS pixels.
pub fn board_size() -> (f64, f64) {
    document()
        .query_selector("[data-testid=board]")
        .ok()
        .flatten()
        .map_or((800.0, 600.0), |b| (b.client_width() as f64, b.client_height() as f64))
}

/// Fits the whole board in the window.
pub fn zoom_to_fit(state: RoomState) {
    let Some((x0, y0, x1, y1)) = union_bounds(&all_shapes(state)) else { return };
    let board = document().query_selector("[data-testid=board]").ok().flatten();
    let (w, h) =
        board.map_or((800.0, 600.0), |b| (b.client_width() as f64, b.client_height() as f64));
    let zoom =
        ((w - 80.0) / (x1 - x0).max(1.0)).min((h - 80.0) / (y1 - y0).max(1.0)).clamp(0.05, 4.0);
    state.follow.set(None);
    state.view.set(huddle_protocol::presence::Viewport {
        x: (x0 + x1) / 2.0 - w / 2.0 / zoom,
        y: (y0 + y1) / 2.0 - h / 2.0 / zoom,
        zoom,
    });
}

fn download(href: &str, filename: &str) {
    if let Ok(a) = document().create_element("a")
        && let Ok(a) = a.dyn_into::<web_sys::HtmlAnchorElement>()
    {
        a.set_href(href);
        a.set_download(filename);
        a.click();
    }
}

fn download_text(text: &str, mime: &str, filename: &str) {
    let parts = js_sys::Array::of1(&wasm_bindgen::JsValue::from_str(text));
    let options = web_sys::BlobPropertyBag::new();
    options.set_type(mime);
    if let Ok(blob) = web_sys::Blob::new_with_str_sequence_and_options(&parts, &options)
        && let Ok(url) = web_sys::Url::create_object_url_with_blob(&blob)
    {
        download(&url, filename);
        // Revoking at once can cancel the download in some browsers; a minute later is safe.
        set_timeout(
            move || {
                let _ = web_sys::Url::revoke_object_url(&url);
            },
            std::time::Duration::from_secs(60),
        );
    }
}

/// Exports the selection (or the whole board) as a PNG on a white background.
pub fn export_png(state: RoomState) {
    let shapes = export_set(state);
    let Some((x0, y0, x1, y1)) = union_bounds(&shapes) else { return };
    let pad = 20.0;
    let Ok(el) = document().create_element("canvas") else { return };
    let Ok(canvas) = el.dyn_into::<web_sys::HtmlCanvasElement>() else { return };
    // Browsers refuse canvases much beyond 8192 px a side: scale a larger board down to fit.
    let (w, h) = (x1 - x0 + 2.0 * pad, y1 - y0 + 2.0 * pad);
    let scale = (8192.0 / w.max(h)).min(1.0);
    canvas.set_width((w * scale).ceil() as u32);
    canvas.set_height((h * scale).ceil() as u32);
    let Some(ctx) = context_2d(&canvas) else { return };
    ctx.set_fill_style_str("#ffffff");
    ctx.fill_rect(0.0, 0.0, canvas.width() as f64, canvas.height() as f64);
    let _ = ctx.scale(scale, scale);
    let _ = ctx.translate(pad - x0, pad - y0);
    for s in &shapes {
        draw_shape(&ctx, s, false);
    }
    if let Ok(url) = canvas.to_data_url_with_type("image/png") {
        download(&url, "huddle-board.png");
    }
}

fn esc(s: &str) -> String {
    // Characters XML forbids even escaped (control characters but tab and line breaks, and
    // U+FFFE/U+FFFF) are left out: one in a peer's text would make the whole file unreadable.
    s.chars()
        .filter(|&c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
        .filter(|&c| !matches!(c, '\u{FFFE}' | '\u{FFFF}'))
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The selection (or the whole board) as an SVG document.
pub fn to_svg(shapes: &[Shape]) -> String {
    let (x0, y0, x1, y1) = union_bounds(shapes).unwrap_or((0.0, 0.0, 1.0, 1.0));
    let pad = 20.0;
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="{} {} {} {}" width="{}" height="{}"><rect x="{}" y="{}" width="100%" height="100%" fill="#ffffff"/>"##,
        x0 - pad,
        y0 - pad,
        x1 - x0 + 2.0 * pad,
        y1 - y0 + 2.0 * pad,
        x1 - x0 + 2.0 * pad,
        y1 - y0 + 2.0 * pad,
        x0 - pad,
        y0 - pad
    );
    for s in shapes {
        let stroke = esc(&s.stroke);
        let fill = if s.fill.is_empty() { "transparent".to_owned() } else { esc(&s.fill) };
        let common = format!(
            r#"stroke="{stroke}" stroke-width="{}" fill="{fill}" data-id="{}""#,
            s.width,
            esc(&s.id)
        );
        let points: Vec<String> =
            s.points.chunks_exact(2).map(|p| format!("{},{}", s.x + p[0], s.y + p[1])).collect();
        let shape = match s.kind {
            ShapeKind::Rect => format!(
                r#"<rect x="{}" y="{}" width="{}" height="{}" {common}/>"#,
                s.x, s.y, s.w, s.h
            ),
            ShapeKind::Ellipse => format!(
                r#"<ellipse cx="{}" cy="{}" rx="{}" ry="{}" {common}/>"#,
                s.x + s.w / 2.0,
                s.y + s.h / 2.0,
                (s.w / 2.0).abs(),
                (s.h / 2.0).abs()
            ),
            ShapeKind::Pen if s.points.len() >= 4 => {
                let pts: Vec<(f64, f64)> =
                    s.points.chunks_exact(2).map(|p| (s.x + p[0], s.y + p[1])).collect();
                let mut d = format!("M{},{}", pts[0].0, pts[0].1);
                for (control, end) in smooth_stroke(&pts) {
                    d.push_str(&format!(" Q{},{} {},{}", control.0, control.1, end.0, end.1));
                }
                format!(
                    r#"<path d="{d}" stroke="{stroke}" stroke-width="{}" fill="none" stroke-linecap="round" stroke-linejoin="round" data-id="{}"/>"#,
                    s.width,
                    esc(&s.id)
                )
            }
            ShapeKind::Pen | ShapeKind::Line | ShapeKind::Arrow => format!(
                r#"<polyline points="{}" stroke="{stroke}" stroke-width="{}" fill="none" stroke-linecap="round" stroke-linejoin="round" data-id="{}"{}/>"#,
                points.join(" "),
                s.width,
                esc(&s.id),
                if s.kind == ShapeKind::Arrow { r#" marker-end="url(#arrow)""# } else { "" }
            ),
            ShapeKind::Text | ShapeKind::Sticky => {
                let (tx, ty) =
                    if s.kind == ShapeKind::Sticky { (s.x + 10.0, s.y + 10.0) } else { (s.x, s.y) };
                let bg = if s.kind == ShapeKind::Sticky {
                    format!(
                        r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>"#,
                        s.x,
                        s.y,
                        s.w,
                        s.h,
                        if fill == "transparent" { "#ffec99".into() } else { fill.clone() }
                    )
                } else {
                    String::new()
                };
                let lines: String = s
                    .text
                    .split('\n')
                    .enumerate()
                    .map(|(i, l)| {
                        format!(
                            r#"<tspan x="{tx}" dy="{}">{}</tspan>"#,
                            if i == 0 { TEXT_SIZE } else { TEXT_SIZE * 1.3 },
                            esc(l)
                        )
                    })
                    .collect();
                format!(
                    r#"{bg}<text x="{tx}" y="{ty}" font-size="{TEXT_SIZE}" font-family="sans-serif" fill="{stroke}" data-id="{}">{lines}</text>"#,
                    esc(&s.id)
                )
            }
        };
        out.push_str(&shape);
    }
    out.push_str(r#"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="context-stroke"/></marker></defs></svg>"#);
    out
}

/// Exports the selection (or the whole board) as SVG.
pub fn export_svg(state: RoomState) {
    download_text(&to_svg(&export_set(state)), "image/svg+xml", "huddle-board.svg");
}

/// Exports the whole room (shapes and chat) as JSON.
pub fn export_json(state: RoomState) {
    let json = state.conn.with_value(|c| {
        c.with_doc(|doc| {
            let board = Board::new(doc);
            let txn = doc.transact();
            board.to_json(&txn)
        })
    });
    download_text(&json, "application/json", "huddle-room.json");
}

/// The system clipboard, if this page may use it. Browsers offer `navigator.clipboard` only to
/// secure contexts (HTTPS, or `localhost`), and a team's server is often reached over plain
/// HTTP on its LAN address: calling it there threw, and the copy was lost.
pub fn system_clipboard() -> Option<web_sys::Clipboard> {
    let navigator = web_sys::window()?.navigator();
    let clipboard =
        js_sys::Reflect::get(&navigator, &wasm_bindgen::JsValue::from_str("clipboard")).ok()?;
    (!clipboard.is_undefined() && !clipboard.is_null()).then(|| clipboard.unchecked_into())
}

/// Copies the selection (Ctrl+C, or the browser's Copy): onto the clipboard as Huddle's
/// clipboard text, through the `copy` event itself, so it pastes into any Huddle tab; and into
/// the in-app clipboard. The event's own clipboard works on every page, whereas
/// `navigator.clipboard` is missing on plain HTTP (see [`system_clipboard`]). With nothing
/// selected the browser copies what it would.
pub fn copy_event(state: RoomState, ev: &web_sys::ClipboardEvent) {
    let selected = selected_shapes(state);
    if selected.is_empty() {
        return;
    }
    let text = huddle_protocol::schema::shapes_to_clipboard(&selected);
    if let Some(data) = ev.clipboard_data()
        && data.set_data("text/plain", &text).is_ok()
    {
        ev.prevent_default();
    }
    CLIPBOARD.with(|c| *c.borrow_mut() = selected);
}

/// Longest text one paste turns into a text shape.
const MAX_PASTED_TEXT: usize = huddle_protocol::schema::MAX_CHAT_CHARS;

/// Handles a paste on the board: Huddle shapes from the system clipboard are placed as copies,
/// other text becomes a text shape in the middle of the view, and with nothing usable on the
/// clipboard the in-app copy is pasted.
pub fn paste_event(state: RoomState, ev: &web_sys::ClipboardEvent) {
    let text = ev.clipboard_data().and_then(|d| d.get_data("text/plain").ok()).unwrap_or_default();
    ev.prevent_default();
    if let Some(shapes) = huddle_protocol::schema::shapes_from_clipboard(&text) {
        place_copies(state, &shapes, 30.0, 'p');
    } else if !text.trim().is_empty() {
        let view = state.view.get_untracked();
        let (w, h) = board_size();
        let (x, y) = crate::geometry::to_board(&view, w / 2.0, h / 2.0);
        let mut shape = Shape::new(crate::board::new_shape_id(state), ShapeKind::Text);
        shape.text = text.trim().chars().take(MAX_PASTED_TEXT).collect();
        (shape.w, shape.h) = crate::render::text_box(&shape.text);
        shape.x = x;
        shape.y = y;
        shape.stroke = state.stroke.get_untracked();
        shape.z = max_z(state) + 1.0;
        shape.author = state.me.with_value(|m| m.id.clone());
        let id = shape.id.clone();
        state.conn.get_value().edit(|b, t| b.put_shape(t, &shape));
        state.selection.set(vec![id]);
    } else {
        paste(state);
    }
}

/// Adds copies of `shapes` offset by `offset`, on top of everything, and selects them. The copies'
/// ids add a `tag` and a time stamp to the originals' (unique per client and moment).
pub fn place_copies(state: RoomState, shapes: &[Shape], offset: f64, tag: char) {
    if shapes.is_empty() {
        return;
    }
    let top = max_z(state) + 1.0;
    let stamp = crate::sync::now_ms() as u64 & 0xff_ffff;
    let mut ids = Vec::new();
    state.conn.get_value().edit(|b, t| {
        for (i, s) in shapes.iter().enumerate() {
            let mut copy = s.clone();
            copy.id = format!("{}-{tag}{stamp:x}", s.id);
            copy.x += offset;
            copy.y += offset;
            copy.z = top + i as f64;
            b.put_shape(t, &copy);
            ids.push(copy.id);
        }
    });
    state.selection.set(ids);
}

/// Pastes the in-app clipboard, offset, on top, and selects the copies.
pub fn paste(state: RoomState) {
    let copied = CLIPBOARD.with(|c| c.borrow().clone());
    place_copies(state, &copied, 30.0, 'p');
}

/// Gets a canvas' 2D drawing context.
pub fn context_2d(
    canvas: &web_sys::HtmlCanvasElement,
) -> Option<web_sys::CanvasRenderingContext2d> {
    canvas
        .get_context("2d")
        .ok()
        .flatten()
        .and_then(|c| c.dyn_into::<web_sys::CanvasRenderingContext2d>().ok())
}
