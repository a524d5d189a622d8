//! Presence: the awareness state each Huddle client publishes, and what a relay checks before it
//! passes a state on.
//!
//! A stock Yjs client in the room parses every awareness state it receives with `JSON.parse`; a
//! state that is not JSON crashes it (y-sweet relays such states). So a relay validates every
//! entry first: valid JSON, bounded size, bounded nesting.

use serde::{Deserialize, Serialize};
use yrs::sync::AwarenessUpdate;

use crate::wire::CloseCode;

/// Limits a relay applies to awareness updates. The defaults fit Huddle's own states (a few
/// hundred bytes; a large multi-selection a few KiB) with a wide margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceLimits {
    /// Largest JSON text of one client's state, in bytes.
    pub max_state_bytes: usize,
    /// Deepest nesting of arrays/objects in one state.
    pub max_depth: usize,
    /// Most client entries in one awareness update.
    pub max_entries: usize,
}

impl Default for PresenceLimits {
    fn default() -> Self {
        Self { max_state_bytes: 64 * 1024, max_depth: 16, max_entries: 64 }
    }
}

/// Why an awareness update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// A state is not valid JSON.
    #[error("state of client {client} is not valid JSON")]
    NotJson {
        /// The client id whose state was bad.
        client: u64,
    },
    /// A state's JSON text is larger than [`PresenceLimits::max_state_bytes`].
    #[error("state of client {client} is {len} bytes, over the {max} byte limit")]
    TooLarge {
        /// The client id whose state was bad.
        client: u64,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A state nests deeper than [`PresenceLimits::max_depth`].
    #[error("state of client {client} nests deeper than {max} levels")]
    TooDeep {
        /// The client id whose state was bad.
        client: u64,
        /// The limit.
        max: usize,
    },
    /// The update names more clients than [`PresenceLimits::max_entries`].
    #[error("awareness update has {len} entries, over the limit of {max}")]
    TooManyEntries {
        /// Entries in the update.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A clock past [`MAX_CLOCK`]: no client counts that far, and a state at the top of the
    /// range could never be replaced or removed (a peer naming someone else's client id with
    /// such a clock would lock them out of the room's presence).
    #[error("clock of client {client} is out of range")]
    BadClock {
        /// The offending client id.
        client: u64,
    },
    /// A client id that does not fit the 53 bits a JavaScript number holds exactly.
    #[error("client id {client} is out of range")]
    BadClientId {
        /// The offending id.
        client: u64,
    },
}

impl PresenceError {
    /// The close code a socket that sent this earns.
    pub fn close_code(&self) -> CloseCode {
        match self {
            PresenceError::TooLarge { .. } | PresenceError::TooManyEntries { .. } => {
                CloseCode::MESSAGE_TOO_BIG
            }
            _ => CloseCode::INVALID_PAYLOAD,
        }
    }
}

/// Largest client id a Yjs client can produce (JavaScript's safe integer range).
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// Largest awareness clock a relay accepts. A client's clock goes up by one per change of its
/// state: at 20 changes a second it would take over three years to pass this, and it leaves
/// room above it for every clock the relay and the clients derive from one (a removal at + 1,
/// a returning client at + 2).
pub const MAX_CLOCK: u32 = i32::MAX as u32;

/// Checks every entry of an awareness update against `limits`. `null` (a removal) is always fine.
///
/// # Errors
/// The first [`PresenceError`] found; a relay should then drop the whole update and close the
/// sender.
pub fn validate_update(
    update: &AwarenessUpdate,
    limits: &PresenceLimits,
) -> Result<(), PresenceError> {
    if update.clients.len() > limits.max_entries {
        return Err(PresenceError::TooManyEntries {
            len: update.clients.len(),
            max: limits.max_entries,
        });
    }
    for (id, entry) in &update.clients {
        let client = id.get();
        if client > MAX_CLIENT_ID {
            return Err(PresenceError::BadClientId { client });
        }
        if entry.clock > MAX_CLOCK {
            return Err(PresenceError::BadClock { client });
        }
        validate_state(client, &entry.json, limits)?;
    }
    Ok(())
}

fn validate_state(client: u64, json: &str, limits: &PresenceLimits) -> Result<(), PresenceError> {
    if json.len() > limits.max_state_bytes {
        return Err(PresenceError::TooLarge {
            client,
            len: json.len(),
            max: limits.max_state_bytes,
        });
    }
    // Depth first: it is a cheap scan, and it keeps the parser below from recursing deeply.
    if nesting_depth(json) > limits.max_depth {
        return Err(PresenceError::TooDeep { client, max: limits.max_depth });
    }
    // `IgnoredAny` checks the syntax without building a value.
    serde_json::from_str::<serde::de::IgnoredAny>(json)
        .map(|_| ())
        .map_err(|_| PresenceError::NotJson { client })
}

/// The deepest `[`/`{` nesting in `json`, ignoring brackets inside strings. Not a validator: it
/// only bounds the work the real parser will do.
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// A point on the board, in board coordinates (not screen pixels).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Point {
    /// Horizontal position.
    pub x: f64,
    /// Vertical position.
    pub y: f64,
}

/// What a user's screen shows of the board, so others can follow them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Viewport {
    /// Board x at the left edge of the screen.
    pub x: f64,
    /// Board y at the top edge of the screen.
    pub y: f64,
    /// Screen pixels per board unit.
    pub zoom: f64,
}

impl Default for Viewport {
    fn default() -> Self {
        Self { x: 0.0, y: 0.0, zoom: 1.0 }
    }
}

/// The size of a user's board on screen, CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScreenSize {
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

impl ScreenSize {
    fn usable(self) -> Option<Self> {
        (self.w.is_finite() && self.h.is_finite() && self.w >= 1.0 && self.h >= 1.0).then_some(self)
    }
}

/// Most selected shape ids a client publishes in its presence.
pub const MAX_SELECTION_IDS: usize = 500;
/// Most bytes of selected shape ids a client publishes in its presence: a relay refuses a state
/// over [`PresenceLimits::max_state_bytes`] and closes the socket, and the client would send the
/// same state again on every reconnect.
pub const MAX_SELECTION_BYTES: usize = 16 * 1024;
/// Longest shape id a client publishes as selected (Huddle's are about 15 bytes; any Yjs
/// client may write longer keys).
const MAX_SELECTED_ID_BYTES: usize = 128;

/// The part of a selection a client publishes in its presence, so that others see it outlined:
/// at most [`MAX_SELECTION_IDS`] ids and [`MAX_SELECTION_BYTES`] in all, leaving out ids too
/// long to be worth their bytes.
pub fn selection_for_presence(selected: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut bytes = 0;
    selected
        .into_iter()
        .filter(|id| id.len() <= MAX_SELECTED_ID_BYTES)
        .take_while(|id| {
            // As the id is written in the state's JSON (a control character takes six bytes
            // there), with a comma.
            bytes += serde_json::to_string(id).map_or(usize::MAX / 2, |json| json.len()) + 1;
            bytes <= MAX_SELECTION_BYTES
        })
        .take(MAX_SELECTION_IDS)
        .collect()
}

/// Least zoom a Huddle view takes.
pub const MIN_ZOOM: f64 = 0.05;
/// Greatest zoom a Huddle view takes.
pub const MAX_ZOOM: f64 = 8.0;

impl Viewport {
    /// The view a follower whose board is `mine` takes to show what this view shows on a board
    /// of `theirs`: the same centre, at the zoom that fits all of it (a phone following a
    /// desktop zooms out rather than showing a corner of it). With boards of one size, or the
    /// leader's size unknown (an older client), the leader's view as it is, within the zoom
    /// Huddle allows. A leader's view is whatever its client published: one that is no view
    /// (a zoom of 0, a NaN) gives the default view rather than turning the follower's own view,
    /// and the presence it publishes, into nonsense.
    pub fn followed(&self, theirs: Option<ScreenSize>, mine: ScreenSize) -> Viewport {
        if !(self.x.is_finite() && self.y.is_finite() && self.zoom.is_finite() && self.zoom > 0.0) {
            return Viewport::default();
        }
        let lead = Viewport { zoom: self.zoom.clamp(MIN_ZOOM, MAX_ZOOM), ..*self };
        let (Some(theirs), Some(mine)) = (theirs.and_then(ScreenSize::usable), mine.usable())
        else {
            return lead;
        };
        if theirs == mine {
            return lead;
        }
        let zoom =
            (lead.zoom * (mine.w / theirs.w).min(mine.h / theirs.h)).clamp(MIN_ZOOM, MAX_ZOOM);
        let (cx, cy) = (lead.x + theirs.w / 2.0 / lead.zoom, lead.y + theirs.h / 2.0 / lead.zoom);
        Viewport { x: cx - mine.w / 2.0 / zoom, y: cy - mine.h / 2.0 / zoom, zoom }
    }
}

/// Who a peer is, as shown in the presence list and on their cursor label. The field is named
/// `user` with `name` and `color`, the convention of the Yjs demos, so stock clients show up too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct User {
    /// Stable id of the user (survives reconnects, unlike the Yjs client id).
    #[serde(default, deserialize_with = "lenient")]
    pub id: String,
    /// Display name.
    pub name: String,
    /// CSS colour, e.g. `#e03131` (empty when a peer names none).
    #[serde(default, deserialize_with = "lenient")]
    pub color: String,
}

/// Reads a field of a peer's presence as `T`, or as `T`'s default if it holds something else.
/// Presence comes from any Yjs client, and other editors' bindings use the same field names for
/// other things (y-codemirror's and y-prosemirror's `cursor` is `{anchor, head}`, y-monaco's
/// `selection` an object): one such field must not hide the whole peer from the presence list.
fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

/// The colour shown for a peer whose own is not one (see [`crate::schema::is_safe_color`]).
pub const UNKNOWN_COLOR: &str = "#868e96";

/// How often a client re-sends its presence even when nothing changed, so peers know it is
/// still there (Yjs clients renew theirs every 15 s too, and drop states not renewed for 30 s).
pub const HEARTBEAT_MS: u64 = 15_000;

/// A peer not heard from for this long is shown as away, whatever its state says: two
/// heartbeats missed (a frozen tab, a laptop gone to sleep, a background tab whose timers the
/// browser throttles), with some slack for a slow network.
pub const SILENT_AFTER_MS: u64 = 2 * HEARTBEAT_MS + 5_000;

/// The awareness state of one Huddle client. Every field but `user.name` is optional on the wire
/// so a plain Yjs client that only sets `user: {name}` is still shown; unknown fields are
/// ignored, and a known one holding something else reads as absent (see `lenient`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Presence {
    /// Who this is.
    pub user: User,
    /// Pointer position on the board, absent when the pointer is off the board.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Point>,
    /// Ids of the shapes this user has selected (others outline them in the user's colour).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Vec::is_empty")]
    pub selection: Vec<String>,
    /// What this user's screen shows (for follow mode).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub viewport: Option<Viewport>,
    /// How big this user's board is on screen, so a follower can fit the same area into its
    /// own (see [`Viewport::followed`]).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub screen: Option<ScreenSize>,
    /// True when the user has not interacted for a while (tab hidden, no input). As read by
    /// [`crate::session::ClientSession::peers`], also true when the peer has gone silent (see
    /// [`SILENT_AFTER_MS`]).
    #[serde(default, deserialize_with = "lenient")]
    pub idle: bool,
    /// The recent trail of the laser pointer; ephemeral, so it lives here and not in the doc.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Vec::is_empty")]
    pub laser: Vec<Point>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use yrs::ClientID;
    use yrs::sync::awareness::AwarenessUpdateEntry;

    fn update(json: &str) -> AwarenessUpdate {
        AwarenessUpdate {
            clients: HashMap::from([(
                ClientID::new(7),
                AwarenessUpdateEntry { clock: 1, json: json.into() },
            )]),
        }
    }

    #[test]
    fn accepts_presence_and_removals() {
        let p = Presence {
            user: User { id: "u1".into(), name: "Ada".into(), color: "#e03131".into() },
            cursor: Some(Point { x: 1.0, y: 2.0 }),
            ..Presence::default()
        };
        let json = serde_json::to_string(&p).expect("serialises");
        let limits = PresenceLimits::default();
        assert_eq!(validate_update(&update(&json), &limits), Ok(()));
        assert_eq!(validate_update(&update("null"), &limits), Ok(()));
        let back: Presence = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, p);
        // A stock Yjs demo state is a valid presence too.
        let demo: Presence =
            serde_json::from_str(r##"{"user":{"name":"x","color":"#fff"},"other":1}"##)
                .expect("ok");
        assert_eq!(demo.user.name, "x");
    }

    #[test]
    fn a_follower_sees_the_leaders_whole_view_around_the_same_centre() {
        let leader = Viewport { x: 100.0, y: 50.0, zoom: 2.0 };
        let desk = ScreenSize { w: 1280.0, h: 800.0 };
        // Same screen, or the leader's size unknown: the same view, exactly.
        assert_eq!(leader.followed(Some(desk), desk), leader);
        assert_eq!(leader.followed(None, ScreenSize { w: 390.0, h: 700.0 }), leader);
        // A phone: zoomed out so the leader's 640 × 400 board units fit its 390 px width.
        let phone = ScreenSize { w: 390.0, h: 700.0 };
        let v = leader.followed(Some(desk), phone);
        assert!((v.zoom - 2.0 * 390.0 / 1280.0).abs() < 1e-9);
        let centre =
            |v: Viewport, s: ScreenSize| (v.x + s.w / 2.0 / v.zoom, v.y + s.h / 2.0 / v.zoom);
        let (a, b) = (centre(leader, desk), centre(v, phone));
        assert!((a.0 - b.0).abs() < 1e-9 && (a.1 - b.1).abs() < 1e-9, "{a:?} {b:?}");
        // Every corner of the leader's view is on the phone's screen.
        assert!(
            v.x <= leader.x && v.x + phone.w / v.zoom >= leader.x + desk.w / leader.zoom - 1e-9
        );
        assert!(
            v.y <= leader.y && v.y + phone.h / v.zoom >= leader.y + desk.h / leader.zoom - 1e-9
        );
        // A nonsense size from a peer changes nothing.
        assert_eq!(leader.followed(Some(ScreenSize { w: f64::NAN, h: 0.0 }), phone), leader);
        // Nor does a view that is none: the follower's own view stays a view.
        for zoom in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let bad = Viewport { zoom, ..leader };
            for theirs in [None, Some(desk)] {
                let v = bad.followed(theirs, phone);
                assert_eq!(v, Viewport::default(), "zoom {zoom}");
            }
        }
        let far = Viewport { x: f64::NAN, ..leader };
        assert_eq!(far.followed(Some(desk), phone), Viewport::default());
        // A zoom out of Huddle's range is brought into it.
        let v = Viewport { zoom: 1e300, ..leader }.followed(Some(desk), desk);
        assert_eq!(v.zoom, MAX_ZOOM);
        assert!(serde_json::to_string(&v).expect("serialises").contains("8"));
    }

    #[test]
    fn a_selection_of_anything_fits_in_a_presence_the_relay_accepts() {
        // Ctrl+A on a board whose shape ids a script made long.
        let long: Vec<String> = (0..2_000).map(|i| format!("{i:0>127}")).collect();
        let mut p = Presence::default();
        p.user.name = "Ada".into();
        p.selection = selection_for_presence(long.iter().cloned());
        assert!(!p.selection.is_empty() && p.selection.len() < long.len());
        let json = serde_json::to_string(&p).expect("serialises");
        assert!(json.len() < MAX_SELECTION_BYTES + 1024, "{} bytes", json.len());
        assert!(
            validate_state(1, &json, &PresenceLimits::default()).is_ok(),
            "{} bytes",
            json.len()
        );
        // Huddle's own ids: the first 500 of a big selection, in order; absurd ids left out.
        let ids: Vec<String> = (0..800).map(|i| format!("k3j9x2-{i}")).collect();
        let shown = selection_for_presence(ids.iter().cloned());
        assert_eq!(shown, ids[..MAX_SELECTION_IDS]);
        let shown = selection_for_presence(["a".repeat(10_000), "b".into()]);
        assert_eq!(shown, ["b"]);
        // Ids of control characters take six bytes each in JSON.
        let controls: Vec<String> = (0..500).map(|i| format!("{i:\u{1}>128}")).collect();
        p.selection = selection_for_presence(controls);
        let json = serde_json::to_string(&p).expect("serialises");
        assert!(json.len() < MAX_SELECTION_BYTES + 1024, "{} bytes", json.len());
    }

    #[test]
    fn refuses_bad_states() {
        let limits = PresenceLimits::default();
        assert!(matches!(
            validate_update(&update("{"), &limits),
            Err(PresenceError::NotJson { .. })
        ));
        assert!(matches!(
            validate_update(&update("{\"a\":1} trailing"), &limits),
            Err(PresenceError::NotJson { .. })
        ));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(matches!(
            validate_update(&update(&deep), &limits),
            Err(PresenceError::TooDeep { .. })
        ));
        let big = format!("\"{}\"", "x".repeat(limits.max_state_bytes));
        let err = validate_update(&update(&big), &limits).expect_err("too big");
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
        // Brackets inside strings do not count as nesting.
        let s = format!("{{\"s\":\"{}\"}}", "[".repeat(100));
        assert_eq!(validate_update(&update(&s), &limits), Ok(()));
    }
}
