//! Board geometry: the viewport transform, shape bounds and hit testing. Pure functions, so they
//! are cheap to call per frame and easy to reason about.

use huddle_protocol::presence::{MAX_ZOOM, MIN_ZOOM, Viewport};
use huddle_protocol::schema::{Shape, ShapeKind};

/// Screen point (CSS pixels, relative to the board element) → board point.
pub fn to_board(view: &Viewport, sx: f64, sy: f64) -> (f64, f64) {
    (sx / view.zoom + view.x, sy / view.zoom + view.y)
}

/// Board point → screen point.
pub fn to_screen(view: &Viewport, bx: f64, by: f64) -> (f64, f64) {
    ((bx - view.x) * view.zoom, (by - view.y) * view.zoom)
}

/// A freehand stroke smoothed: from the first point, quadratic curves through the midpoints
/// between successive points, each with the point between them as its control point, then a
/// straight end to the last point. The canvas and the SVG export both draw it this way, so an
/// exported stroke looks like the one on screen. Yields `(control, end)` pairs; a line with no
/// control point has the control point at its start.
pub fn smooth_stroke(points: &[(f64, f64)]) -> Vec<((f64, f64), (f64, f64))> {
    let mut segments: Vec<_> = points
        .windows(2)
        .skip(1)
        .map(|w| (w[0], ((w[0].0 + w[1].0) / 2.0, (w[0].1 + w[1].1) / 2.0)))
        .collect();
    if let [.., before, last] = points {
        let from = segments.last().map_or(*before, |s| s.1);
        segments.push((from, *last));
    }
    segments
}

/// Axis-aligned bounds `(x0, y0, x1, y1)` with `x0 <= x1`, `y0 <= y1`, including the stroke.
pub fn bounds(shape: &Shape) -> (f64, f64, f64, f64) {
    shape.bounds()
}

/// Whether a kind is drawn through `points` rather than a box.
pub fn uses_points(kind: ShapeKind) -> bool {
    kind.uses_points()
}

/// Whether board point `(px, py)` hits `shape`, with `tol` board units of slack.
pub fn hit(shape: &Shape, px: f64, py: f64, tol: f64) -> bool {
    let (x0, y0, x1, y1) = bounds(shape);
    if px < x0 - tol || px > x1 + tol || py < y0 - tol || py > y1 + tol {
        return false;
    }
    if uses_points(shape.kind) {
        let tol = tol + shape.width / 2.0;
        let pts: Vec<(f64, f64)> =
            shape.points.chunks_exact(2).map(|p| (shape.x + p[0], shape.y + p[1])).collect();
        if pts.len() == 1 {
            return dist(px, py, pts[0].0, pts[0].1) <= tol;
        }
        return pts.windows(2).any(|w| segment_distance(px, py, w[0], w[1]) <= tol);
    }
    true
}

/// Whether `shape` lies entirely inside the rectangle spanned by two board points.
pub fn inside(shape: &Shape, a: (f64, f64), b: (f64, f64)) -> bool {
    let (x0, y0, x1, y1) = bounds(shape);
    x0 >= a.0.min(b.0) && x1 <= a.0.max(b.0) && y0 >= a.1.min(b.1) && y1 <= a.1.max(b.1)
}

/// Whether `shape` intersects the visible board rectangle (viewport culling).
pub fn visible(shape: &Shape, view: &Viewport, width: f64, height: f64) -> bool {
    let (x0, y0, x1, y1) = bounds(shape);
    let (vx1, vy1) = (view.x + width / view.zoom, view.y + height / view.zoom);
    x1 >= view.x && x0 <= vx1 && y1 >= view.y && y0 <= vy1
}

fn dist(ax: f64, ay: f64, bx: f64, by: f64) -> f64 {
    ((ax - bx).powi(2) + (ay - by).powi(2)).sqrt()
}

fn segment_distance(px: f64, py: f64, a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    if len2 == 0.0 {
        return dist(px, py, a.0, a.1);
    }
    let t = (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0);
    dist(px, py, a.0 + t * dx, a.1 + t * dy)
}

/// Zooms `view` by `factor` keeping the board point under screen point `(sx, sy)` fixed.
pub fn zoom_at(view: &Viewport, factor: f64, sx: f64, sy: f64) -> Viewport {
    let zoom = (view.zoom * factor).clamp(MIN_ZOOM, MAX_ZOOM);
    let (bx, by) = to_board(view, sx, sy);
    Viewport { x: bx - sx / zoom, y: by - sy / zoom, zoom }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_zoom_keeps_the_anchor() {
        let v = Viewport { x: 10.0, y: -5.0, zoom: 2.0 };
        let (bx, by) = to_board(&v, 100.0, 50.0);
        assert_eq!(to_screen(&v, bx, by), (100.0, 50.0));
        let z = zoom_at(&v, 1.5, 100.0, 50.0);
        let (bx2, by2) = to_board(&z, 100.0, 50.0);
        assert!((bx - bx2).abs() < 1e-9 && (by - by2).abs() < 1e-9);
    }

    #[test]
    fn a_stroke_is_smoothed_through_the_midpoints_and_ends_on_its_last_point() {
        let segments = smooth_stroke(&[(0.0, 0.0), (10.0, 0.0), (10.0, 10.0)]);
        assert_eq!(segments, vec![((10.0, 0.0), (10.0, 5.0)), ((10.0, 5.0), (10.0, 10.0))]);
        // Two points: one straight segment.
        assert_eq!(smooth_stroke(&[(0.0, 0.0), (4.0, 3.0)]), vec![((0.0, 0.0), (4.0, 3.0))]);
        assert!(smooth_stroke(&[(1.0, 1.0)]).is_empty());
    }

    #[test]
    fn hits_lines_near_the_segment_only() {
        let mut line = Shape::new("l", ShapeKind::Line);
        line.points = vec![0.0, 0.0, 100.0, 0.0];
        assert!(hit(&line, 50.0, 1.0, 2.0));
        assert!(!hit(&line, 50.0, 30.0, 2.0));
    }
}
