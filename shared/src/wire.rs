//! The Yjs y-websocket wire protocol, one WebSocket binary frame at a time.
//!
//! Payloads (state vectors, updates, awareness updates) use yrs' own lib0 encoders; only the outer
//! framing loop is ours, because we need two things yrs' `MessageReader` does not give: a
//! truncated message at the end of a frame must be an error (the reader treats it as a clean end),
//! and each failure must map to the WebSocket close code the peer deserves.

use std::fmt;

use yrs::StateVector;
use yrs::encoding::read::{self, Cursor, Read};
use yrs::sync::protocol::{
    MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, MSG_SYNC_STEP_1, MSG_SYNC_STEP_2,
    MSG_SYNC_UPDATE,
};
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

pub use yrs::sync::{Message as WireMessage, SyncMessage as WireSyncMessage};

/// A WebSocket close code (RFC 6455 §7.4.1). A newtype so the relay cannot confuse it with any
/// other `u16`, with the codes Huddle sends named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// The socket's purpose is fulfilled (a clean close).
    pub const NORMAL: Self = Self(1000);
    /// The server is shutting down; clients should reconnect later.
    pub const GOING_AWAY: Self = Self(1001);
    /// The peer broke the protocol: undecodable message, truncated varint.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// The peer sent a kind of data we do not accept: text frames, unknown message types.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// The message decoded but its content is invalid: an update yrs refuses, bad awareness JSON.
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// The peer broke a policy (for example owning too many awareness clients).
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// A frame larger than the configured limit.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// The server failed (storage down, a room that cannot load); not the peer's fault.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// The peer could not keep up (its outgoing queue overflowed); it may reconnect and resync.
    pub const TRY_AGAIN_LATER: Self = Self(1013);
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a frame was refused. Each variant knows its close code ([`WireError::close_code`]).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frame is not valid lib0: truncated, a varint that does not end, a bad tag.
    #[error("malformed message: {0}")]
    Malformed(#[from] read::Error),
    /// The frame has no message at all.
    #[error("empty frame")]
    Empty,
    /// A message type this protocol does not define.
    #[error("unknown message type {0}")]
    UnknownMessageType(u64),
    /// A sync message with a sub-type other than step 1 / step 2 / update.
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    /// An update that decodes but cannot be applied, or does not decode as an update.
    #[error("invalid update: {0}")]
    InvalidUpdate(String),
    /// An awareness state that is not acceptable (see [`crate::presence`]).
    #[error("invalid awareness update: {0}")]
    InvalidAwareness(#[from] crate::presence::PresenceError),
}

impl WireError {
    /// The close code a socket that sent this earns.
    pub fn close_code(&self) -> CloseCode {
        match self {
            WireError::Malformed(_) | WireError::Empty | WireError::UnknownSyncType(_) => {
                CloseCode::PROTOCOL_ERROR
            }
            WireError::UnknownMessageType(_) => CloseCode::UNSUPPORTED_DATA,
            WireError::InvalidUpdate(_) => CloseCode::INVALID_PAYLOAD,
            WireError::InvalidAwareness(e) => e.close_code(),
        }
    }
}

/// Decodes every message in one binary frame (stock clients send one per frame; lib0 allows
/// several back to back).
///
/// # Errors
/// [`WireError`] if any message is malformed, truncated or of an unknown type; nothing from a
/// frame with a bad message should be acted on.
pub fn decode_frame(frame: &[u8]) -> Result<Vec<Message>, WireError> {
    if frame.is_empty() {
        return Err(WireError::Empty);
    }
    let mut cursor = Cursor::new(frame);
    let mut out = Vec::with_capacity(1);
    while cursor.has_content() {
        out.push(decode_one(&mut cursor)?);
    }
    Ok(out)
}

fn decode_one(cursor: &mut Cursor<'_>) -> Result<Message, WireError> {
    let tag: u64 = cursor.read_var()?;
    match tag {
        t if t == u64::from(MSG_SYNC) => {
            let sub: u64 = cursor.read_var()?;
            let buf = cursor.read_buf()?;
            match sub {
                s if s == u64::from(MSG_SYNC_STEP_1) => {
                    Ok(Message::Sync(SyncMessage::SyncStep1(StateVector::decode_v1(buf)?)))
                }
                s if s == u64::from(MSG_SYNC_STEP_2) => {
                    Ok(Message::Sync(SyncMessage::SyncStep2(buf.to_vec())))
                }
                s if s == u64::from(MSG_SYNC_UPDATE) => {
                    Ok(Message::Sync(SyncMessage::Update(buf.to_vec())))
                }
                other => Err(WireError::UnknownSyncType(other)),
            }
        }
        t if t == u64::from(MSG_AWARENESS) => {
            let buf = cursor.read_buf()?;
            Ok(Message::Awareness(AwarenessUpdate::decode_v1(buf)?))
        }
        t if t == u64::from(MSG_AUTH) => {
            let denied = cursor.read_var::<u64>()? == 0;
            let reason = if denied { Some(cursor.read_string()?.to_owned()) } else { None };
            Ok(Message::Auth(reason))
        }
        t if t == u64::from(MSG_QUERY_AWARENESS) => Ok(Message::AwarenessQuery),
        other => Err(WireError::UnknownMessageType(other)),
    }
}

/// Encodes one message as a frame.
pub fn encode(message: &Message) -> Vec<u8> {
    message.encode_v1()
}

/// A sync step 1 frame: "here is my state vector, send me what I lack".
pub fn sync_step1(state_vector: &StateVector) -> Vec<u8> {
    encode(&Message::Sync(SyncMessage::SyncStep1(state_vector.clone())))
}

/// A sync step 2 frame carrying `update` (the answer to a step 1).
pub fn sync_step2(update: Vec<u8>) -> Vec<u8> {
    encode(&Message::Sync(SyncMessage::SyncStep2(update)))
}

/// An incremental update frame.
pub fn update(update: Vec<u8>) -> Vec<u8> {
    encode(&Message::Sync(SyncMessage::Update(update)))
}

/// An awareness frame carrying `update`.
pub fn awareness(update: AwarenessUpdate) -> Vec<u8> {
    encode(&Message::Awareness(update))
}

/// The empty update (no structs, empty delete set) that Yjs sends as a step 2 when it has
/// nothing new; recognised so a relay need not persist or relay it.
pub const EMPTY_UPDATE: [u8; 2] = [0, 0];

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, Text, Transact};

    fn an_update() -> Vec<u8> {
        let doc = Doc::with_client_id(1);
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hello");
        txn.encode_update_v1()
    }

    #[test]
    fn round_trips_every_message_kind() {
        let sv = StateVector::default();
        let upd = an_update();
        for frame in [sync_step1(&sv), sync_step2(upd.clone()), update(upd.clone())] {
            let msgs = decode_frame(&frame).expect("decodes");
            assert_eq!(msgs.len(), 1);
            assert_eq!(encode(&msgs[0]), frame);
        }
        assert!(matches!(decode_frame(&[3]).expect("query")[..], [Message::AwarenessQuery]));
        let doc = Doc::new();
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        txn.apply_update(yrs::Update::decode_v1(&upd).expect("update")).expect("applies");
        assert_eq!(t.get_string(&txn), "hello");
    }

    #[test]
    fn several_messages_in_one_frame() {
        let mut frame = sync_step1(&StateVector::default());
        frame.extend(update(an_update()));
        assert_eq!(decode_frame(&frame).expect("decodes").len(), 2);
    }

    #[test]
    fn bad_frames_map_to_close_codes() {
        let truncated = {
            let mut f = update(an_update());
            f.truncate(f.len() - 2);
            f
        };
        let cases: [(&[u8], u16); 6] = [
            (&[], 1002),
            (&[0xff, 0xff, 0xff], 1002), // varint that never ends
            (&truncated, 1002),
            (&[9, 0], 1003), // unknown message type
            (&[0, 7, 0], 1002),
            (&[1, 5, 1, 2], 1002), // awareness buf shorter than announced
        ];
        for (frame, code) in cases {
            let err = decode_frame(frame).expect_err("must fail");
            assert_eq!(err.close_code().0, code, "{frame:?}: {err}");
        }
    }
}
