//! Who the user is on this device: a stable id, a display name and a colour, asked once and kept
//! in `localStorage`; and readable random room names.

use serde::{Deserialize, Serialize};

const KEY: &str = "huddle.identity";

/// Colours offered for users; readable on both themes.
pub const USER_COLORS: [&str; 8] =
    ["#e03131", "#1971c2", "#2f9e44", "#f08c00", "#9c36b5", "#0c8599", "#e8590c", "#5f3dc4"];

/// The local user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Stable across sessions on this device.
    pub id: String,
    /// Display name.
    pub name: String,
    /// CSS colour.
    pub color: String,
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
}

/// A random integer below `n` (from the browser's PRNG; not for secrets).
pub fn random_below(n: usize) -> usize {
    ((js_sys::Math::random() * n as f64) as usize).min(n.saturating_sub(1))
}

impl Identity {
    /// The remembered identity, if the user already chose a name.
    pub fn load() -> Option<Self> {
        let json = storage()?.get_item(KEY).ok()??;
        serde_json::from_str(&json).ok()
    }

    /// A new identity with `name` and `color`, keeping the stored id if there is one.
    pub fn new(name: &str, color: &str) -> Self {
        let id = Self::load()
            .map(|i| i.id)
            .unwrap_or_else(|| format!("u-{:08x}", random_below(u32::MAX as usize)));
        Self { id, name: name.trim().chars().take(40).collect(), color: color.to_owned() }
    }

    /// Remembers this identity on this device.
    pub fn save(&self) {
        if let (Some(s), Ok(json)) = (storage(), serde_json::to_string(self)) {
            let _ = s.set_item(KEY, &json);
        }
    }
}

const ADJECTIVES: [&str; 16] = [
    "amber", "brave", "calm", "daring", "eager", "fuzzy", "gentle", "happy", "icy", "jolly",
    "keen", "lucky", "mellow", "nimble", "quiet", "sunny",
];
const NOUNS: [&str; 16] = [
    "otter", "falcon", "maple", "comet", "harbor", "meadow", "pebble", "lantern", "willow",
    "canyon", "badger", "island", "rocket", "garden", "summit", "river",
];

/// A readable, hard-to-guess room name such as `sunny-otter-4821`.
pub fn random_room_name() -> String {
    format!(
        "{}-{}-{:04}",
        ADJECTIVES[random_below(ADJECTIVES.len())],
        NOUNS[random_below(NOUNS.len())],
        random_below(10_000)
    )
}
