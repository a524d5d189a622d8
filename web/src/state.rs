//! The state one room view shares between its components, provided through Leptos context.

use std::rc::Rc;

use huddle_protocol::presence::{Presence, Viewport};
use leptos::prelude::*;

use crate::identity::Identity;
use crate::sync::{Connection, Signals};

/// A drawing tool, with its keyboard shortcut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tool {
    /// Select, move, resize (V).
    Select,
    /// Pan the board (H).
    Hand,
    /// Freehand pen (P).
    Pen,
    /// Rectangle (R).
    Rect,
    /// Ellipse (O).
    Ellipse,
    /// Straight line (L).
    Line,
    /// Arrow (A).
    Arrow,
    /// Text (T).
    Text,
    /// Sticky note (N).
    Sticky,
    /// Eraser (E).
    Eraser,
    /// Laser pointer, ephemeral (K).
    Laser,
}

impl Tool {
    /// Every tool in palette order.
    pub const ALL: [Tool; 11] = [
        Tool::Select,
        Tool::Hand,
        Tool::Pen,
        Tool::Rect,
        Tool::Ellipse,
        Tool::Line,
        Tool::Arrow,
        Tool::Text,
        Tool::Sticky,
        Tool::Eraser,
        Tool::Laser,
    ];

    /// Keyboard shortcut.
    pub fn key(self) -> char {
        match self {
            Tool::Select => 'v',
            Tool::Hand => 'h',
            Tool::Pen => 'p',
            Tool::Rect => 'r',
            Tool::Ellipse => 'o',
            Tool::Line => 'l',
            Tool::Arrow => 'a',
            Tool::Text => 't',
            Tool::Sticky => 'n',
            Tool::Eraser => 'e',
            Tool::Laser => 'k',
        }
    }

    /// Name for labels and test ids.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Select => "select",
            Tool::Hand => "hand",
            Tool::Pen => "pen",
            Tool::Rect => "rect",
            Tool::Ellipse => "ellipse",
            Tool::Line => "line",
            Tool::Arrow => "arrow",
            Tool::Text => "text",
            Tool::Sticky => "sticky",
            Tool::Eraser => "eraser",
            Tool::Laser => "laser",
        }
    }

    /// Icon: SVG path data (see [`crate::icons`]).
    pub fn icon(self) -> &'static str {
        use crate::icons;
        match self {
            Tool::Select => icons::SELECT,
            Tool::Hand => icons::HAND,
            Tool::Pen => icons::PEN,
            Tool::Rect => icons::RECT,
            Tool::Ellipse => icons::ELLIPSE,
            Tool::Line => icons::LINE,
            Tool::Arrow => icons::ARROW,
            Tool::Text => icons::TEXT,
            Tool::Sticky => icons::STICKY,
            Tool::Eraser => icons::ERASER,
            Tool::Laser => icons::LASER,
        }
    }
}

/// Everything a room view's components share. All fields are `Copy` handles.
#[derive(Clone, Copy)]
pub struct RoomState {
    /// The connection (not `Send`: kept local).
    pub conn: StoredValue<Rc<Connection>, LocalStorage>,
    /// What the connection reports.
    pub signals: Signals,
    /// The local user.
    pub me: StoredValue<Identity>,
    /// Current tool.
    pub tool: RwSignal<Tool>,
    /// Stroke colour for new shapes (and the selection).
    pub stroke: RwSignal<String>,
    /// Fill colour for new shapes (and the selection).
    pub fill: RwSignal<String>,
    /// Stroke width for new shapes (and the selection).
    pub width: RwSignal<f64>,
    /// Ids of the shapes this user has selected.
    pub selection: RwSignal<Vec<String>>,
    /// What this user's screen shows.
    pub view: RwSignal<Viewport>,
    /// The awareness client id whose viewport we follow, if any.
    pub follow: RwSignal<Option<u64>>,
    /// The board's size on screen, CSS pixels (0 × 0 until it is laid out).
    pub board_size: RwSignal<(f64, f64)>,
    /// The text or sticky shape being edited.
    pub editing: RwSignal<Option<String>>,
    /// Dark theme.
    pub dark: RwSignal<bool>,
    /// The user has given a name and joined; before that they only look (no edits, no
    /// presence).
    pub joined: RwSignal<bool>,
}

impl RoomState {
    /// Everyone else's presence (re-read whenever presence changes).
    pub fn peers(&self) -> Vec<(u64, Presence)> {
        self.signals.presence_version.track();
        self.conn.with_value(|c| c.peers())
    }
}
