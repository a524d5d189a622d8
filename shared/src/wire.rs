//! The Yjs y-websocket wire protocol, one WebSocket binary frame at a time.
//!
//! Payloads (state vectors, updates, awareness updates) use yrs' own lib0 encoders; only the outer
//! framing loop is ours, because we need two things yrs' `MessageReader` does not give: a
//! truncated message at the end of a frame must be an error (the reader treats it as a clean end),
//! and each failure must map to the WebSocket close code the peer deserves.

use std::collections::HashMap;
use std::fmt;

use yrs::encoding::read::{self, Cursor, Read};
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::protocol::{
    MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, MSG_SYNC_STEP_1, MSG_SYNC_STEP_2,
    MSG_SYNC_UPDATE,
};
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::{Decode, Decoder, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{Any, ClientID, Number, StateVector, Update};

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
    /// A count in the message promises more entries than the bytes after it can hold; decoding
    /// it would only reserve memory for an allocation bomb.
    #[error("message announces {count} entries in {bytes} bytes")]
    ImplausibleCount {
        /// The announced count.
        count: u64,
        /// The bytes left to hold them.
        bytes: usize,
    },
    /// More messages in one frame than [`MAX_MESSAGES_PER_FRAME`].
    #[error("more than {MAX_MESSAGES_PER_FRAME} messages in one frame")]
    TooManyMessages,
    /// A [`MSG_DEFLATED`] frame whose compressed bytes are corrupt.
    #[error("corrupt compressed frame")]
    CorruptDeflate,
    /// An awareness message naming more clients than the reader accepts in one message.
    #[error("awareness message names {count} clients, more than {max}")]
    TooManyClients {
        /// The announced count.
        count: u64,
        /// The reader's limit.
        max: usize,
    },
    /// An awareness message naming the same client twice: which of its states counts is
    /// anyone's guess (yrs keeps the last, a validator checking one copy would pass the other).
    #[error("awareness message names client {0} twice")]
    DuplicateClient(u64),
    /// A [`MSG_DEFLATED`] frame that inflates to more than the reader's limit.
    #[error("compressed frame inflates to more than {limit} bytes")]
    InflatesTooBig {
        /// The reader's limit.
        limit: usize,
    },
}

impl WireError {
    /// The close code a socket that sent this earns.
    pub fn close_code(&self) -> CloseCode {
        match self {
            WireError::Malformed(_)
            | WireError::Empty
            | WireError::UnknownSyncType(_)
            | WireError::ImplausibleCount { .. }
            | WireError::TooManyMessages
            | WireError::CorruptDeflate => CloseCode::PROTOCOL_ERROR,
            WireError::InflatesTooBig { .. } | WireError::TooManyClients { .. } => {
                CloseCode::MESSAGE_TOO_BIG
            }
            WireError::UnknownMessageType(_) => CloseCode::UNSUPPORTED_DATA,
            WireError::InvalidUpdate(_) | WireError::DuplicateClient(_) => {
                CloseCode::INVALID_PAYLOAD
            }
        }
    }
}

/// Most messages accepted in one frame. Stock clients send exactly one; a frame packed with
/// thousands of tiny requests would make the relay do thousands of document encodes for a
/// single read.
pub const MAX_MESSAGES_PER_FRAME: usize = 16;

/// Decodes every message in one binary frame (stock clients send one per frame; lib0 allows
/// several back to back, up to [`MAX_MESSAGES_PER_FRAME`]).
///
/// # Errors
/// [`WireError`] if any message is malformed, truncated or of an unknown type; nothing from a
/// frame with a bad message should be acted on.
pub fn decode_frame(frame: &[u8]) -> Result<Vec<Message>, WireError> {
    decode_frame_limited(frame, usize::MAX)
}

/// [`decode_frame`] for a frame from an untrusted peer: an awareness message naming more than
/// `max_awareness_clients` clients is refused from its count, before a single entry is decoded
/// (a 32 MiB message can name ten million clients, half a gigabyte once decoded).
///
/// # Errors
/// As [`decode_frame`], and [`WireError::TooManyClients`].
pub fn decode_frame_limited(
    frame: &[u8],
    max_awareness_clients: usize,
) -> Result<Vec<Message>, WireError> {
    if frame.is_empty() {
        return Err(WireError::Empty);
    }
    let mut cursor = Cursor::new(frame);
    let mut out = Vec::with_capacity(1);
    while cursor.has_content() {
        if out.len() == MAX_MESSAGES_PER_FRAME {
            return Err(WireError::TooManyMessages);
        }
        out.push(decode_one(&mut cursor, max_awareness_clients)?);
    }
    Ok(out)
}

fn decode_one(cursor: &mut Cursor<'_>, max_awareness_clients: usize) -> Result<Message, WireError> {
    let tag: u64 = cursor.read_var()?;
    match tag {
        t if t == u64::from(MSG_SYNC) => {
            let sub: u64 = cursor.read_var()?;
            let buf = cursor.read_buf()?;
            match sub {
                s if s == u64::from(MSG_SYNC_STEP_1) => {
                    // Each state vector entry is at least two varints (client, clock).
                    check_count(buf, 2)?;
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
            Ok(Message::Awareness(decode_awareness(buf, max_awareness_clients)?))
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

/// Rejects a buffer whose leading count promises more entries of at least `min_entry_bytes`
/// than it holds. yrs reserves memory for the announced count before reading the entries, so
/// without this a ten-byte message could make the relay reserve and clear gigabytes.
fn check_count(buf: &[u8], min_entry_bytes: usize) -> Result<(), WireError> {
    let mut cursor = Cursor::new(buf);
    let count: u64 = cursor.read_var()?;
    let bytes = buf.len() - cursor.next;
    if count > (bytes / min_entry_bytes) as u64 {
        return Err(WireError::ImplausibleCount { count, bytes });
    }
    Ok(())
}

/// Decodes an awareness update: yrs' format, read here rather than by
/// `AwarenessUpdate::decode_v1`, which keeps the last of a client's repeated entries (so the
/// copy a validator saw need not be the one relayed) and reserves memory for the announced
/// count before anything could limit it.
fn decode_awareness(buf: &[u8], max_clients: usize) -> Result<AwarenessUpdate, WireError> {
    let mut cursor = Cursor::new(buf);
    let count: u64 = cursor.read_var()?;
    if count > max_clients as u64 {
        return Err(WireError::TooManyClients { count, max: max_clients });
    }
    // Each entry is at least three varints (client, clock, JSON length).
    check_count(buf, 3)?;
    let mut clients = HashMap::with_capacity(count as usize);
    for _ in 0..count {
        let client: u64 = cursor.read_var()?;
        let clock: u32 = cursor.read_var()?;
        let json = cursor.read_string()?;
        let entry = AwarenessUpdateEntry { clock, json: json.into() };
        if clients.insert(ClientID::new(client), entry).is_some() {
            return Err(WireError::DuplicateClient(client));
        }
    }
    Ok(AwarenessUpdate { clients })
}

/// Decodes a Yjs update (v1) from a peer or from storage, safely: an implausible client count is
/// refused before yrs reserves memory for it, values nested deeper than [`MAX_VALUE_DEPTH`] are
/// refused (see [`BoundedDecoder`]), and a panic inside yrs' decoder becomes an error.
///
/// # Errors
/// [`WireError::InvalidUpdate`] when the bytes are not a valid update.
pub fn decode_update(bytes: &[u8]) -> Result<Update, WireError> {
    // Each client section is at least three varints (struct count, client, clock).
    check_count(bytes, 3).map_err(|e| WireError::InvalidUpdate(e.to_string()))?;
    let decode = || Update::decode(&mut BoundedDecoder(DecoderV1::new(Cursor::new(bytes))));
    match std::panic::catch_unwind(decode) {
        Ok(Ok(update)) => Ok(update),
        Ok(Err(e)) => Err(WireError::InvalidUpdate(e.to_string())),
        Err(_) => Err(WireError::InvalidUpdate("decoder panicked".into())),
    }
}

/// Deepest nesting of arrays and maps in a value an update may carry (as deep as JSON gets
/// through `serde_json`, which yrs uses for the other kinds of value).
pub const MAX_VALUE_DEPTH: usize = 128;

/// yrs' v1 decoder, with values read by [`decode_value`] instead of `Any::decode`, which
/// recurses once per nested array or map with nothing to stop it: a value nested some ten
/// thousand levels deep (two bytes a level) overflows the decoding thread's stack, and a stack
/// overflow aborts the process — no `catch_unwind` catches it. One crafted update from any
/// peer would take the server down, and every client that received it.
struct BoundedDecoder<'a>(DecoderV1<'a>);

impl Read for BoundedDecoder<'_> {
    fn read_u8(&mut self) -> Result<u8, read::Error> {
        self.0.read_u8()
    }

    fn read_exact(&mut self, len: usize) -> Result<&[u8], read::Error> {
        self.0.read_exact(len)
    }
}

impl Decoder for BoundedDecoder<'_> {
    fn reset_ds_cur_val(&mut self) {
        self.0.reset_ds_cur_val();
    }
    fn read_ds_clock(&mut self) -> Result<u32, read::Error> {
        self.0.read_ds_clock()
    }
    fn read_ds_len(&mut self) -> Result<u32, read::Error> {
        self.0.read_ds_len()
    }
    fn read_left_id(&mut self) -> Result<yrs::ID, read::Error> {
        self.0.read_left_id()
    }
    fn read_right_id(&mut self) -> Result<yrs::ID, read::Error> {
        self.0.read_right_id()
    }
    fn read_client(&mut self) -> Result<ClientID, read::Error> {
        self.0.read_client()
    }
    fn read_info(&mut self) -> Result<u8, read::Error> {
        self.0.read_info()
    }
    fn read_parent_info(&mut self) -> Result<bool, read::Error> {
        self.0.read_parent_info()
    }
    fn read_type_ref(&mut self) -> Result<u8, read::Error> {
        self.0.read_type_ref()
    }
    fn read_len(&mut self) -> Result<u32, read::Error> {
        self.0.read_len()
    }
    fn read_any(&mut self) -> Result<Any, read::Error> {
        decode_value(self, MAX_VALUE_DEPTH)
    }
    fn read_json(&mut self) -> Result<Any, read::Error> {
        // `serde_json` stops at 128 levels itself.
        self.0.read_json()
    }
    fn read_key(&mut self) -> Result<std::sync::Arc<str>, read::Error> {
        self.0.read_key()
    }
    fn read_to_end(&mut self) -> Result<&[u8], read::Error> {
        self.0.read_to_end()
    }
}

/// `Any::decode` (lib0's encoding of a JSON-like value), refusing arrays and maps nested more
/// than `depth` levels. Written out here because yrs' own has no such bound (see
/// [`BoundedDecoder`]); tags and layouts are lib0's.
fn decode_value<R: Read>(r: &mut R, depth: usize) -> Result<Any, read::Error> {
    use std::sync::Arc;
    Ok(match r.read_u8()? {
        127 => Any::Undefined,
        126 => Any::Null,
        125 => Any::Number(Number::Int(r.read_var::<i64>()?)),
        124 => Any::Number(Number::Float(f64::from(r.read_f32()?))),
        123 => Any::Number(Number::Float(r.read_f64()?)),
        122 => Any::Number(Number::Int(r.read_i64()?)),
        121 => Any::Bool(false),
        120 => Any::Bool(true),
        119 => Any::String(Arc::from(r.read_string()?)),
        118 | 117 if depth == 0 => return Err(read::Error::UnexpectedValue),
        118 => {
            let len: usize = r.read_var()?;
            let mut map = HashMap::new();
            // `len` is the peer's word: reserved fallibly, as yrs does.
            map.try_reserve(len)?;
            for _ in 0..len {
                let key = r.read_string()?.to_owned();
                map.insert(key, decode_value(r, depth - 1)?);
            }
            Any::Map(Arc::new(map))
        }
        117 => {
            let len: usize = r.read_var()?;
            let mut items = Vec::new();
            items.try_reserve(len)?;
            for _ in 0..len {
                items.push(decode_value(r, depth - 1)?);
            }
            Any::Array(Arc::from(items))
        }
        116 => Any::Buffer(Arc::from(r.read_buf()?)),
        _ => return Err(read::Error::UnexpectedValue),
    })
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

/// [`sync_step2`] of an update already in a buffer of its own, built in that buffer: the header
/// goes in front of the update, which moves along within the buffer (grown in place if it can
/// be). For big updates (a stored room's snapshot, megabytes), where a copy into a fresh buffer
/// costs as much as everything else about serving it: its pages are new to the process.
pub fn into_sync_step2(update: Vec<u8>) -> Vec<u8> {
    use yrs::encoding::write::Write;
    let mut header = Vec::with_capacity(12);
    header.write_var(MSG_SYNC);
    header.write_var(MSG_SYNC_STEP_2);
    header.write_var(update.len());
    let mut frame = update;
    frame.splice(0..0, header);
    frame
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

/// Sync step 1 with an empty state vector: "send me everything". The web client's
/// `index.html` sends these bytes from plain JavaScript to ask for a room's board before the
/// app has loaded, so they are spelled out here and pinned by a test.
pub const EMPTY_SYNC_STEP1: [u8; 4] = [0, 0, 1, 0];

/// Message type of a frame whose remaining bytes are another frame compressed with raw DEFLATE
/// (RFC 1951). Not part of y-websocket: the server sends it only to a socket that asked for it
/// with [`DEFLATE_QUERY`], only for frames of at least [`DEFLATE_MIN_BYTES`] (in practice the
/// first sync of a big room), and never accepts it ([`decode_frame`] refuses it).
///
/// Why: Chromium hands a WebSocket message to the page in 64 KiB pieces, each needing a turn of
/// the page's main thread, which is busy while the app starts. A 10,000-shape room's 1.4 MB
/// answer reached the page 300 ms after the server sent it on a first visit; deflated it is
/// about 370 KB (and so also 3.8x less to download on a slow link). permessage-deflate would not
/// help the first part: the browser inflates it before that hand-over.
pub const MSG_DEFLATED: u8 = 100;

/// The query parameter (`/ws/{room}?deflate=1`) by which a client says it reads
/// [`MSG_DEFLATED`] frames. Stock Yjs clients do not send it and get plain frames.
pub const DEFLATE_QUERY: &str = "deflate=1";

/// Smallest frame worth compressing: below one 64 KiB hand-over the browser gains nothing, and
/// small answers would only cost the server CPU.
pub const DEFLATE_MIN_BYTES: usize = 64 * 1024;

/// Most bytes a client lets a [`MSG_DEFLATED`] frame inflate to: far beyond any room a server
/// keeps, and a stop for a compression bomb.
pub const MAX_INFLATED_BYTES: usize = 256 << 20;

/// Whether a socket URL's query string (the part after `?`) asks for [`MSG_DEFLATED`] frames.
pub fn wants_deflate(query: &str) -> bool {
    query.split('&').any(|pair| pair == DEFLATE_QUERY)
}

/// Compresses `frame` into a [`MSG_DEFLATED`] frame. Level 1: about 3.8x smaller for a board
/// (8.5 ms for 1.4 MB); level 3 gives 5.3x for 23 ms, paid by the first joiner after each change.
pub fn deflate(frame: &[u8]) -> Vec<u8> {
    let mut out = vec![MSG_DEFLATED];
    out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(frame, 1));
    out
}

/// The frame inside a [`MSG_DEFLATED`] frame, or `None` if `frame` is not one (then it is read
/// as it is). The result is an ordinary frame for [`decode_frame`], which refuses a nested
/// [`MSG_DEFLATED`].
///
/// # Errors
/// [`WireError::CorruptDeflate`] if the compressed bytes are corrupt,
/// [`WireError::InflatesTooBig`] if they would inflate past `limit` bytes (a compression bomb
/// stops there).
pub fn inflate(frame: &[u8], limit: usize) -> Result<Option<Vec<u8>>, WireError> {
    let Some((&MSG_DEFLATED, compressed)) = frame.split_first() else { return Ok(None) };
    match miniz_oxide::inflate::decompress_to_vec_with_limit(compressed, limit) {
        Ok(inner) => Ok(Some(inner)),
        Err(e) if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
            Err(WireError::InflatesTooBig { limit })
        }
        Err(_) => Err(WireError::CorruptDeflate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, ReadTxn, Text, Transact};

    /// An update putting one value into the root array `a`: `value` is its lib0 encoding.
    fn update_with_value(value: &[u8]) -> Vec<u8> {
        let doc = Doc::with_client_id(1);
        let array = doc.get_or_insert_array("a");
        let placeholder = "PLACEHOLDER-VALUE";
        yrs::Array::push_back(&array, &mut doc.transact_mut(), placeholder);
        let update = doc.transact().encode_state_as_update_v1(&yrs::StateVector::default());
        let mut encoded = vec![119, placeholder.len() as u8];
        encoded.extend_from_slice(placeholder.as_bytes());
        let at = update.windows(encoded.len()).position(|w| w == encoded).expect("placeholder");
        [&update[..at], value, &update[at + encoded.len()..]].concat()
    }

    /// Arrays nested `depth` deep around a null.
    fn nested(depth: usize) -> Vec<u8> {
        let mut value = [117u8, 1].repeat(depth);
        value.push(126);
        value
    }

    #[test]
    fn values_nested_deeper_than_json_allows_are_refused_not_a_crash() {
        // At the limit: decoded, and the document holds it.
        let update = decode_update(&update_with_value(&nested(MAX_VALUE_DEPTH))).expect("decodes");
        let doc = Doc::new();
        doc.transact_mut().apply_update(update).expect("applies");
        // One level more: refused. And two hundred thousand levels (400 KB, well within a
        // message), which overflowed the stack inside yrs' own decoder and aborted the process.
        for depth in [MAX_VALUE_DEPTH + 1, 200_000] {
            let err = decode_update(&update_with_value(&nested(depth))).expect_err("too deep");
            assert!(matches!(err, WireError::InvalidUpdate(_)), "{err}");
        }
    }

    #[test]
    fn the_bounded_decoder_reads_every_kind_of_value_as_yrs_does() {
        let doc = Doc::with_client_id(7);
        let array = doc.get_or_insert_array("a");
        {
            let mut txn = doc.transact_mut();
            let values: Vec<Any> = vec![
                Any::Null,
                Any::Undefined,
                Any::Bool(true),
                Any::Bool(false),
                Any::from(42i64),
                Any::from(-7i64),
                Any::from(1.5f64),
                Any::from(1e300f64),
                Any::from("text"),
                Any::Buffer(std::sync::Arc::from(&[1u8, 2, 3][..])),
                Any::from(vec![Any::from(1i64), Any::from("two")]),
                Any::from(HashMap::from([("k".to_owned(), Any::from(vec![Any::Null]))])),
            ];
            yrs::Array::insert_range(&array, &mut txn, 0, values);
        }
        let update = doc.transact().encode_state_as_update_v1(&yrs::StateVector::default());
        let ours = decode_update(&update).expect("decodes");
        let theirs = Update::decode_v1(&update).expect("decodes");
        let (a, b) = (Doc::new(), Doc::new());
        a.transact_mut().apply_update(ours).expect("applies");
        b.transact_mut().apply_update(theirs).expect("applies");
        let json = |d: &Doc| {
            let mut out = String::new();
            yrs::types::ToJson::to_json(&d.get_or_insert_array("a"), &d.transact())
                .to_json(&mut out);
            out
        };
        assert_eq!(json(&a), json(&b));
        assert!(json(&a).contains("1e+300") && json(&a).contains("two"), "{}", json(&a));
    }

    fn an_update() -> Vec<u8> {
        let doc = Doc::with_client_id(1);
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hello");
        txn.encode_update_v1()
    }

    #[test]
    fn the_empty_step1_constant_is_what_the_encoder_writes() {
        assert_eq!(sync_step1(&StateVector::default()), EMPTY_SYNC_STEP1);
        let page = include_str!("../../web/index.html");
        assert!(
            page.contains("new Uint8Array([0, 0, 1, 0])"),
            "web/index.html sends EMPTY_SYNC_STEP1"
        );
    }

    #[test]
    fn a_step2_built_in_place_is_the_encoder_s() {
        for len in [0, 1, 127, 128, 300, 70_000] {
            let update: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            assert_eq!(into_sync_step2(update.clone()), sync_step2(update), "{len} bytes");
        }
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
    fn several_messages_in_one_frame_up_to_a_limit() {
        let mut frame = sync_step1(&StateVector::default());
        frame.extend(update(an_update()));
        assert_eq!(decode_frame(&frame).expect("decodes").len(), 2);
        let flood = vec![3u8; MAX_MESSAGES_PER_FRAME + 1];
        assert!(matches!(decode_frame(&flood), Err(WireError::TooManyMessages)));
    }

    #[test]
    fn implausible_counts_are_refused_before_decoding() {
        // An update announcing 2^28 clients in a few bytes.
        let bomb = [0x80, 0x80, 0x80, 0x80, 0x01, 0, 0];
        assert!(matches!(decode_update(&bomb), Err(WireError::InvalidUpdate(_))));
        assert!(decode_update(&an_update()).is_ok());
        assert!(decode_update(&EMPTY_UPDATE).is_ok());
    }

    #[test]
    fn bad_frames_map_to_close_codes() {
        let truncated = {
            let mut f = update(an_update());
            f.truncate(f.len() - 2);
            f
        };
        let cases: [(&[u8], u16); 7] = [
            (&[], 1002),
            (&[0xff, 0xff, 0xff], 1002), // varint that never ends
            (&truncated, 1002),
            (&[9, 0], 1003), // unknown message type
            (&[0, 7, 0], 1002),
            (&[1, 5, 1, 2], 1002), // awareness buf shorter than announced
            (&[0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x0f], 1002), // 2^32 state vector entries in 4 bytes
        ];
        for (frame, code) in cases {
            let err = decode_frame(frame).expect_err("must fail");
            assert_eq!(err.close_code().0, code, "{frame:?}: {err}");
        }
    }

    #[test]
    fn a_deflated_frame_inflates_to_the_same_frame_and_nothing_else_is_touched() {
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, &"a board with many shapes ".repeat(10_000));
        let frame = sync_step2(doc.transact().encode_state_as_update_v1(&StateVector::default()));
        assert!(frame.len() >= DEFLATE_MIN_BYTES);
        let deflated = deflate(&frame);
        assert!(deflated.len() < frame.len() / 10, "{} of {}", deflated.len(), frame.len());
        assert_eq!(inflate(&deflated, 1 << 20).expect("inflates"), Some(frame.clone()));
        // Plain frames pass through; the first byte of every y-websocket message type differs.
        assert_eq!(inflate(&frame, 1 << 20).expect("plain"), None);
        assert_eq!(inflate(&[], 1 << 20).expect("empty"), None);
        // Past the limit, or corrupt: refused with the close code the sender earns.
        let err = inflate(&deflated, frame.len() - 1).expect_err("over the limit");
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
        let err = inflate(&[MSG_DEFLATED, 0xff, 0xff, 0xff], 1 << 20).expect_err("corrupt");
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
        // Never accepted as a message: a server refuses it, a client refuses it nested.
        let err = decode_frame(&deflated).expect_err("not a y-websocket message");
        assert_eq!(err.close_code(), CloseCode::UNSUPPORTED_DATA);
        let nested = deflate(&deflated);
        let inner = inflate(&nested, 1 << 20).expect("outer inflates").expect("deflated");
        assert!(decode_frame(&inner).is_err());
    }

    #[test]
    fn only_the_exact_query_parameter_asks_for_deflated_frames() {
        assert!(wants_deflate("deflate=1"));
        assert!(wants_deflate("token=abc&deflate=1"));
        assert!(!wants_deflate(""));
        assert!(!wants_deflate("deflate=0"));
        assert!(!wants_deflate("nodeflate=1"));
    }

    /// An awareness message as yrs' encoder would write it, but with `entries` as given
    /// (repeats included).
    fn awareness_message(entries: &[(u64, u32, &str)]) -> Vec<u8> {
        use yrs::encoding::write::Write;
        let mut body = Vec::new();
        body.write_var(entries.len() as u64);
        for (client, clock, json) in entries {
            body.write_var(*client);
            body.write_var(*clock);
            body.write_string(json);
        }
        let mut frame = vec![MSG_AWARENESS];
        frame.write_buf(&body);
        frame
    }

    #[test]
    fn awareness_decodes_as_yrs_encodes_it() {
        let frame =
            awareness_message(&[(1, 3, r#"{"a":1}"#), (u64::from(u32::MAX) + 7, 1, "null")]);
        let [Message::Awareness(update)] = &decode_frame(&frame).expect("decodes")[..] else {
            panic!("one awareness message");
        };
        assert_eq!(update.clients.len(), 2);
        let first = &update.clients[&ClientID::new(1)];
        assert_eq!((first.clock, &*first.json), (3, r#"{"a":1}"#));
        assert_eq!(&*update.clients[&ClientID::new(u64::from(u32::MAX) + 7)].json, "null");
        // Round trip through yrs' own encoder.
        assert_eq!(
            decode_frame(&awareness(update.clone())).expect("decodes").len(),
            1,
            "yrs' encoding decodes"
        );
    }

    #[test]
    fn awareness_naming_a_client_twice_is_refused() {
        let frame = awareness_message(&[(5, 1, "{bad"), (5, 1, "{}")]);
        let err = decode_frame(&frame).expect_err("a client named twice");
        assert!(matches!(err, WireError::DuplicateClient(5)), "{err:?}");
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn awareness_over_the_readers_client_limit_is_refused_from_its_count() {
        let entries: Vec<(u64, u32, &str)> = (0..5).map(|c| (c, 1, "{}")).collect();
        let frame = awareness_message(&entries);
        assert_eq!(decode_frame_limited(&frame, 5).expect("at the limit").len(), 1);
        let err = decode_frame_limited(&frame, 4).expect_err("over the limit");
        assert!(matches!(err, WireError::TooManyClients { count: 5, max: 4 }), "{err:?}");
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
        // Only the count is read: a message announcing millions, with no entries behind it.
        let bomb = [MSG_AWARENESS, 4, 0x80, 0x89, 0x7a, 0];
        assert!(matches!(
            decode_frame_limited(&bomb, 64),
            Err(WireError::TooManyClients { count: 2_000_000, max: 64 })
        ));
    }
}
