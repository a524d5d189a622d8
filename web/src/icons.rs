//! The toolbar's icons: SVG path data on a 24×24 grid, stroked in the current text colour.
//!
//! Inline SVG rather than Unicode symbols (which the palette used before): symbols like ☚ or ⤓
//! come from whatever fallback font each system has, so they looked different everywhere, and
//! finding those fonts was 13 ms of the page's first layout here.

use leptos::prelude::*;

/// Select: a pointer.
pub const SELECT: &str = "M6 3l13 8-6 1.5L10 19z";
/// Hand (pan): an open palm.
pub const HAND: &str = "M8 12V6a1.5 1.5 0 0 1 3 0v5M11 10.5V4.5a1.5 1.5 0 0 1 3 0v6M14 11V6.5a1.5 1.5 0 0 1 3 0V14c0 4-2.5 7-6 7-3 0-4.5-1.5-6-4.5l-1.5-3a1.5 1.5 0 0 1 2.6-1.5L8 14";
/// Pen: a pencil.
pub const PEN: &str = "M4 20l1-4L16 5l3 3L8 19zM14 7l3 3";
/// Rectangle.
pub const RECT: &str = "M4 6h16v12H4z";
/// Ellipse.
pub const ELLIPSE: &str = "M12 5c4.4 0 8 3.1 8 7s-3.6 7-8 7-8-3.1-8-7 3.6-7 8-7z";
/// Line.
pub const LINE: &str = "M5 19L19 5";
/// Arrow.
pub const ARROW: &str = "M5 19L19 5M11 5h8v8";
/// Text.
pub const TEXT: &str = "M5 7V5h14v2M12 5v14M9 19h6";
/// Sticky note: a square with a folded corner.
pub const STICKY: &str = "M5 4h14v10l-6 6H5zM13 20v-6h6";
/// Eraser.
pub const ERASER: &str = "M9 20h11M5 15l9-9a2 2 0 0 1 2.8 0l2.2 2.2a2 2 0 0 1 0 2.8L11 19H9z";
/// Laser pointer: a burst.
pub const LASER: &str =
    "M12 3v5M12 16v5M3 12h5M16 12h5M6.5 6.5l2.5 2.5M15 15l2.5 2.5M6.5 17.5L9 15M15 9l2.5-2.5";
/// Undo.
pub const UNDO: &str = "M9 14L4 9l5-5M4 9h10a5.5 5.5 0 0 1 0 11h-3";
/// Redo.
pub const REDO: &str = "M15 14l5-5-5-5M20 9H10a5.5 5.5 0 0 0 0 11h3";
/// Bring to front: up to a bar.
pub const FRONT: &str = "M5 4h14M12 20V8M7 13l5-5 5 5";
/// Send to back: down to a bar.
pub const BACK: &str = "M5 20h14M12 4v12M7 11l5 5 5-5";
/// Duplicate: two overlapping squares.
pub const DUPLICATE: &str = "M9 9h11v11H9zM15 5V4H4v11h1";
/// Delete: a cross.
pub const DELETE: &str = "M6 6l12 12M18 6L6 18";
/// Zoom out.
pub const MINUS: &str = "M5 12h14";
/// Zoom in.
pub const PLUS: &str = "M5 12h14M12 5v14";
/// Zoom to fit: four corners.
pub const FIT: &str = "M4 9V4h5M20 9V4h-5M4 15v5h5M20 15v5h-5";
/// Dark theme: a moon.
pub const MOON: &str = "M20 14.5A8 8 0 1 1 9.5 4a6.5 6.5 0 0 0 10.5 10.5z";
/// Light theme: a sun.
pub const SUN: &str = "M12 8a4 4 0 1 1 0 8 4 4 0 0 1 0-8zM12 2v2M12 20v2M2 12h2M20 12h2M4.9 4.9l1.4 1.4M17.7 17.7l1.4 1.4M4.9 19.1l1.4-1.4M17.7 6.3l1.4-1.4";

/// One icon (decorative: the button around it carries the accessible label).
pub fn icon(d: &'static str) -> impl IntoView {
    view! {
        <svg class="icon" viewBox="0 0 24 24" width="18" height="18" fill="none" stroke="currentColor"
            stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">
            <path d=d/>
        </svg>
    }
}
