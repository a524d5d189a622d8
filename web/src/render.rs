//! Drawing the board on a 2D canvas: only what is in view (culling), bottom to top.

use huddle_protocol::presence::Viewport;
use huddle_protocol::schema::{Shape, ShapeKind};
use web_sys::CanvasRenderingContext2d as Ctx;

use crate::geometry::{bounds, smooth_stroke, visible};

/// Font used for text shapes and sticky notes.
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', sans-serif";
/// Board units of text size.
pub const TEXT_SIZE: f64 = 20.0;

/// Draws `shapes` (already in z order) seen through `view` on a canvas of `width`×`height` CSS
/// pixels with device pixel ratio `dpr`. Returns how many were drawn.
pub fn draw_board(
    ctx: &Ctx,
    shapes: &[Shape],
    view: &Viewport,
    width: f64,
    height: f64,
    dpr: f64,
    dark: bool,
) -> usize {
    let _ = ctx.set_transform(dpr, 0.0, 0.0, dpr, 0.0, 0.0);
    ctx.clear_rect(0.0, 0.0, width, height);
    draw_grid(ctx, view, width, height, dark);
    let _ = ctx.set_transform(
        dpr * view.zoom,
        0.0,
        0.0,
        dpr * view.zoom,
        -view.x * view.zoom * dpr,
        -view.y * view.zoom * dpr,
    );
    let mut drawn = 0;
    for shape in shapes {
        if visible(shape, view, width, height) {
            draw_shape(ctx, shape, dark);
            drawn += 1;
        }
    }
    drawn
}

fn draw_grid(ctx: &Ctx, view: &Viewport, width: f64, height: f64, dark: bool) {
    let step = 40.0 * view.zoom;
    if step < 12.0 {
        return;
    }
    ctx.set_fill_style_str(if dark { "#2c2f36" } else { "#dde1e6" });
    let ox = -(view.x * view.zoom).rem_euclid(step);
    let oy = -(view.y * view.zoom).rem_euclid(step);
    let mut x = ox;
    while x < width {
        let mut y = oy;
        while y < height {
            ctx.fill_rect(x - 1.0, y - 1.0, 2.0, 2.0);
            y += step;
        }
        x += step;
    }
}

/// Stroke colour adjusted for the theme: the default ink is near-black, invisible on dark.
fn ink(color: &str, dark: bool) -> &str {
    if dark && color == "#1e1e1e" { "#e9ecef" } else { color }
}

/// Draws one shape in board coordinates (the caller set the transform).
pub fn draw_shape(ctx: &Ctx, s: &Shape, dark: bool) {
    ctx.set_line_width(s.width.max(0.5));
    ctx.set_line_cap("round");
    ctx.set_line_join("round");
    ctx.set_stroke_style_str(ink(&s.stroke, dark));
    let filled = s.fill != "transparent" && !s.fill.is_empty();
    if filled {
        ctx.set_fill_style_str(&s.fill);
    }
    match s.kind {
        ShapeKind::Rect => {
            if filled {
                ctx.fill_rect(s.x, s.y, s.w, s.h);
            }
            ctx.stroke_rect(s.x, s.y, s.w, s.h);
        }
        ShapeKind::Ellipse => {
            ctx.begin_path();
            let _ = ctx.ellipse(
                s.x + s.w / 2.0,
                s.y + s.h / 2.0,
                (s.w / 2.0).abs(),
                (s.h / 2.0).abs(),
                0.0,
                0.0,
                std::f64::consts::TAU,
            );
            if filled {
                ctx.fill();
            }
            ctx.stroke();
        }
        ShapeKind::Pen => draw_smooth_path(ctx, s, dark),
        ShapeKind::Line | ShapeKind::Arrow => {
            let pts: Vec<(f64, f64)> =
                s.points.chunks_exact(2).map(|p| (s.x + p[0], s.y + p[1])).collect();
            if pts.len() < 2 {
                return;
            }
            ctx.begin_path();
            ctx.move_to(pts[0].0, pts[0].1);
            for p in &pts[1..] {
                ctx.line_to(p.0, p.1);
            }
            ctx.stroke();
            if s.kind == ShapeKind::Arrow {
                let (a, b) = (pts[pts.len() - 2], pts[pts.len() - 1]);
                let angle = (b.1 - a.1).atan2(b.0 - a.0);
                let len = (12.0 + s.width * 2.0).min(40.0);
                ctx.begin_path();
                ctx.move_to(b.0 - len * (angle - 0.45).cos(), b.1 - len * (angle - 0.45).sin());
                ctx.line_to(b.0, b.1);
                ctx.line_to(b.0 - len * (angle + 0.45).cos(), b.1 - len * (angle + 0.45).sin());
                ctx.stroke();
            }
        }
        ShapeKind::Text => {
            ctx.set_fill_style_str(ink(&s.stroke, dark));
            draw_text(ctx, &s.text, s.x, s.y, None);
        }
        ShapeKind::Sticky => {
            ctx.set_fill_style_str(if filled { &s.fill } else { "#ffec99" });
            ctx.fill_rect(s.x, s.y, s.w, s.h);
            ctx.set_fill_style_str("#1e1e1e");
            draw_text(ctx, &s.text, s.x + 10.0, s.y + 10.0, Some(s.w - 20.0));
        }
    }
}

/// A freehand stroke, smoothed with quadratic curves through the midpoints.
fn draw_smooth_path(ctx: &Ctx, s: &Shape, dark: bool) {
    let pts: Vec<(f64, f64)> = s.points.chunks_exact(2).map(|p| (s.x + p[0], s.y + p[1])).collect();
    match pts.len() {
        0 => {}
        1 => {
            ctx.begin_path();
            let _ = ctx.arc(pts[0].0, pts[0].1, s.width / 2.0, 0.0, std::f64::consts::TAU);
            ctx.set_fill_style_str(ink(&s.stroke, dark));
            ctx.fill();
        }
        _ => {
            ctx.begin_path();
            ctx.move_to(pts[0].0, pts[0].1);
            for (control, end) in smooth_stroke(&pts) {
                ctx.quadratic_curve_to(control.0, control.1, end.0, end.1);
            }
            ctx.stroke();
        }
    }
}

/// Text as plain text (never markup), one line per `\n`, wrapped to `max_width` if given.
fn draw_text(ctx: &Ctx, text: &str, x: f64, y: f64, max_width: Option<f64>) {
    ctx.set_font(&format!("{TEXT_SIZE}px {FONT}"));
    ctx.set_text_baseline("top");
    let line_height = TEXT_SIZE * 1.3;
    let mut row = 0.0;
    for paragraph in text.split('\n') {
        let Some(max_width) = max_width else {
            // Nothing to wrap to: the paragraph is one line.
            let _ = ctx.fill_text(paragraph, x, y + row);
            row += line_height;
            continue;
        };
        let width = |text: &str| ctx.measure_text(text).map(|m| m.width()).unwrap_or(0.0);
        // Each word measured once, the line's width added up: measuring the whole line again
        // for every word was quadratic in a long paragraph, every frame.
        let space = width(" ");
        let (mut line, mut line_width) = (String::new(), 0.0);
        for word in paragraph.split(' ') {
            let word_width = width(word);
            let extended =
                if line.is_empty() { word_width } else { line_width + space + word_width };
            if extended > max_width && !line.is_empty() {
                let _ = ctx.fill_text(&line, x, y + row);
                row += line_height;
                line.clear();
                line.push_str(word);
                line_width = word_width;
            } else {
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(word);
                line_width = extended;
            }
        }
        let _ = ctx.fill_text(&line, x, y + row);
        row += line_height;
    }
}

/// Outlines `shape` (selected by us or, in their colour, by someone else).
pub fn draw_outline(ctx: &Ctx, shape: &Shape, view: &Viewport, color: &str, handles: bool) {
    let (x0, y0, x1, y1) = bounds(shape);
    let pad = 4.0 / view.zoom;
    ctx.set_stroke_style_str(color);
    ctx.set_line_width(1.5 / view.zoom);
    ctx.stroke_rect(x0 - pad, y0 - pad, x1 - x0 + 2.0 * pad, y1 - y0 + 2.0 * pad);
    if handles {
        let size = 8.0 / view.zoom;
        ctx.set_fill_style_str("#ffffff");
        ctx.fill_rect(x1 + pad - size / 2.0, y1 + pad - size / 2.0, size, size);
        ctx.stroke_rect(x1 + pad - size / 2.0, y1 + pad - size / 2.0, size, size);
    }
}

/// The text size used by text shapes, for sizing their bounds as they are typed.
pub fn text_box(text: &str) -> (f64, f64) {
    let lines = text.split('\n').count().max(1) as f64;
    let longest = text.split('\n').map(|l| l.chars().count()).max().unwrap_or(0).max(1) as f64;
    (longest * TEXT_SIZE * 0.6, lines * TEXT_SIZE * 1.3)
}
