//! Room names.

use std::fmt;
use std::sync::Arc;

/// The longest room name accepted. Long enough for a UUID or a readable slug with a team prefix,
/// short enough to be a cheap map key and a sane URL segment.
pub const MAX_ROOM_NAME_LEN: usize = 128;

/// The name of a room: `[A-Za-z0-9_-]{1,128}`.
///
/// A newtype so that an unvalidated string can never reach the room registry or the store: the
/// only way to get one is [`RoomName::parse`]. It is cheap to clone (`Arc<str>`) because every
/// room, store row and log line carries it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

/// Why a string is not a valid [`RoomName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomNameError {
    /// The name is empty.
    #[error("room name is empty")]
    Empty,
    /// The name is longer than [`MAX_ROOM_NAME_LEN`] bytes.
    #[error("room name is longer than {MAX_ROOM_NAME_LEN} characters")]
    TooLong,
    /// The name contains a character outside `[A-Za-z0-9_-]`.
    #[error("room name may only contain letters, digits, '-' and '_'")]
    InvalidChar,
}

impl RoomName {
    /// Validates `name` as a room name.
    ///
    /// # Errors
    /// [`RoomNameError`] when the name is empty, too long or has a character outside
    /// `[A-Za-z0-9_-]`.
    pub fn parse(name: &str) -> Result<Self, RoomNameError> {
        if name.is_empty() {
            return Err(RoomNameError::Empty);
        }
        if name.len() > MAX_ROOM_NAME_LEN {
            return Err(RoomNameError::TooLong);
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(RoomNameError::InvalidChar);
        }
        Ok(Self(name.into()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_slugs_and_rejects_everything_else() {
        assert!(RoomName::parse("team-42_board").is_ok());
        assert!(RoomName::parse(&"a".repeat(128)).is_ok());
        assert_eq!(RoomName::parse(""), Err(RoomNameError::Empty));
        assert_eq!(RoomName::parse(&"a".repeat(129)), Err(RoomNameError::TooLong));
        for bad in ["a b", "a/b", "..", "é", "a%20", "room?x=1"] {
            assert_eq!(RoomName::parse(bad), Err(RoomNameError::InvalidChar), "{bad}");
        }
    }
}
