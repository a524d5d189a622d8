//! `huddle-protocol`: everything the Huddle server and its clients must agree on, and nothing that
//! does I/O. It compiles for `wasm32-unknown-unknown`, so the web client, the desktop shell, the
//! server and the load tool all share one implementation of the wire format and the schema.
//!
//! Modules:
//! - [`room`]: [`RoomName`], the validated name of a room (one CRDT document).
//! - [`wire`]: the standard Yjs y-websocket framing (sync step 1 / step 2 / update, awareness,
//!   auth, query-awareness) on top of yrs' own `sync` encoding, plus the [`wire::CloseCode`] each
//!   kind of bad input earns.
//! - [`presence`]: the awareness ("presence") state Huddle clients publish — user, cursor,
//!   selection, viewport, idle — and the validation a relay applies before passing a state on.
//! - [`schema`]: the board and chat document schema with typed accessors ([`schema::Board`],
//!   [`schema::Shape`], [`schema::ChatMessage`]). `README.md` documents it for plain Yjs clients.
//! - [`history`]: this user's undo and redo of shape edits, field by field, so an undo never
//!   takes back a collaborator's later change.
//! - [`nesting`]: how deeply shared types nest in a document, so an update nesting them too
//!   deeply (which would overflow the stack of whoever deletes them) is refused before it is
//!   applied.
//! - [`session`]: the sans-IO state machines: [`session::PeerPresence`] (what a relay remembers per
//!   socket) and [`session::ClientSession`] (a client's doc + awareness: bytes in, bytes and events
//!   out), usable over any transport.

pub mod history;
pub mod nesting;
pub mod presence;
pub mod room;
pub mod schema;
pub mod session;
pub mod wire;

pub use room::RoomName;
pub use yrs;
