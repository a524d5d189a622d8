//! Sans-IO protocol state machines: bytes in, bytes and events out, over any transport.
//!
//! - [`PeerPresence`] is what a relay remembers about one socket's presence: which awareness
//!   client ids it speaks for, so their removal can be broadcast the moment the socket goes.
//! - [`ClientSession`] is a complete y-websocket client: it owns the document and the awareness,
//!   answers the server's sync messages, and turns local edits into frames. The web client, the
//!   desktop shell, the load tool and the server's tests all drive this one type.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{Awareness, AwarenessUpdate, Clock, Message, SyncMessage};
use yrs::{ClientID, Doc, Origin, ReadTxn, Transact};

use crate::presence::{Presence, PresenceError, PresenceLimits, validate_update};
use crate::wire::{self, WireError};

/// What a relay knows about the presence one socket publishes.
#[derive(Debug, Default)]
pub struct PeerPresence {
    /// Awareness client ids whose current state came from this socket, with the clock it set.
    /// The clock tells, at departure, whether someone else (the same user reconnected on a new
    /// socket) has taken the id over since. With each, the bytes of its state's JSON.
    owned: HashMap<ClientID, (u32, usize)>,
}

/// How much presence one socket may publish ([`PeerPresence::apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedLimits {
    /// Most clients it may speak for (one tab is one client).
    pub clients: usize,
    /// Most bytes of JSON its states may take together, so that a room's presence (which every
    /// joiner is sent) takes many sockets to fill.
    pub bytes: usize,
}

/// Why a socket's awareness update was refused by [`PeerPresence::apply`].
#[derive(Debug, thiserror::Error)]
pub enum PresenceApplyError {
    /// An entry broke [`PresenceLimits`].
    #[error(transparent)]
    Invalid(#[from] PresenceError),
    /// The socket would speak for more clients than allowed (one tab is one client).
    #[error("socket would own {owned} awareness clients, over the limit of {max}")]
    TooManyClients {
        /// How many it would own.
        owned: usize,
        /// The limit.
        max: usize,
    },
    /// The socket's states would take more bytes together than allowed.
    #[error("socket's awareness states would take {bytes} bytes, over the limit of {max}")]
    TooMuchState {
        /// What they would take.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

/// What [`PeerPresence::apply`] made of one awareness update.
#[derive(Debug, Default)]
pub struct Applied {
    /// The entries that took effect: the update a relay passes on (`None` if nothing did).
    pub effective: Option<AwarenessUpdate>,
    /// For the sender alone: the removals the room holds for client ids the sender sent a
    /// state for at a clock that does not outrank them. A stock y-websocket client that comes
    /// back on a new socket sends its state at the clock it had, and the removal the relay made
    /// when its old socket went (at that clock + 1) outranks it, so others would not see it
    /// until it had changed its state twice. Told of the removal, the client raises its clock
    /// and sends its state again, which then takes effect.
    pub reminder: Option<AwarenessUpdate>,
}

/// Whether `awareness` holds a live (non-null) state for `id`.
fn is_live(awareness: &Awareness, id: ClientID) -> bool {
    awareness
        .update_with_clients([id])
        .ok()
        .and_then(|u| u.clients.get(&id).map(|e| &*e.json != NULL))
        .unwrap_or(false)
}

/// Most clocks past a live state that a new state for it may be (see [`PeerPresence::apply`]):
/// reaching the top of the range takes millions of rate-limited messages.
const MAX_CLOCK_STEP: u32 = 1024;

/// The JSON of a removed state.
const NULL: &str = "null";

impl PeerPresence {
    /// Validates `update` from this socket and applies what in it takes effect to the room's
    /// `awareness` (see [`Applied`]).
    ///
    /// Entries that change nothing are dropped first: stock y-websocket clients re-send every
    /// state they receive (so they must not count against the sender), and yrs would record a
    /// tombstone for every unknown id named in a removal (so a peer could grow the room's
    /// awareness map without bound). So are removals of states this socket did not publish: the
    /// relay announces a socket's departure itself, and a stock client removes, and tells
    /// everyone it removed, any peer it has not heard from for 30 s, which a live Huddle tab in
    /// the background (whose timers the browser slows to one a minute) can be.
    ///
    /// # Errors
    /// [`PresenceApplyError`] when an entry is invalid or the socket would own more than
    /// `owned` allows; then nothing is applied.
    pub fn apply(
        &mut self,
        awareness: &mut Awareness,
        update: AwarenessUpdate,
        limits: &PresenceLimits,
        owned: OwnedLimits,
    ) -> Result<Applied, PresenceApplyError> {
        validate_update(&update, limits)?;
        let mut effective = AwarenessUpdate { clients: HashMap::new() };
        let mut reminder = AwarenessUpdate { clients: HashMap::new() };
        for (id, entry) in update.clients {
            let removal = &*entry.json == NULL;
            let takes_effect = match awareness.meta(id).map(|(clock, _)| clock) {
                None => !removal,
                // yrs applies a removal at an equal clock, a new state only at a newer one.
                Some(clock) if removal => {
                    self.owned.contains_key(&id) && entry.clock >= clock && is_live(awareness, id)
                }
                // A live state moves on only so many clocks at a time, whoever sends it: a peer
                // naming another's id (and then owning it) cannot push its clock to the top of
                // the range, where the owner could never announce itself again. A client's own
                // clock moves one per change; back on a new socket before its old one was found
                // dead (half a minute at most), it is at most a few hundred on.
                Some(clock) if entry.clock > clock && is_live(awareness, id) => {
                    entry.clock - clock <= MAX_CLOCK_STEP
                }
                Some(clock) if entry.clock > clock => true,
                Some(clock) => {
                    if !is_live(awareness, id) {
                        reminder
                            .clients
                            .insert(id, AwarenessUpdateEntry { clock, json: NULL.into() });
                    }
                    false
                }
            };
            if takes_effect {
                effective.clients.insert(id, entry);
            }
        }
        let reminder = (!reminder.clients.is_empty()).then_some(reminder);
        if effective.clients.is_empty() {
            return Ok(Applied { effective: None, reminder });
        }
        let new_ids = effective
            .clients
            .iter()
            .filter(|(id, e)| &*e.json != NULL && !self.owned.contains_key(id))
            .count();
        if self.owned.len() + new_ids > owned.clients {
            return Err(PresenceApplyError::TooManyClients {
                owned: self.owned.len() + new_ids,
                max: owned.clients,
            });
        }
        let bytes_after = self
            .owned
            .iter()
            .filter(|(id, _)| !effective.clients.contains_key(id))
            .map(|(_, (_, bytes))| *bytes)
            .chain(effective.clients.values().filter(|e| &*e.json != NULL).map(|e| e.json.len()))
            .sum::<usize>();
        if bytes_after > owned.bytes {
            return Err(PresenceApplyError::TooMuchState { bytes: bytes_after, max: owned.bytes });
        }
        // Cannot fail: every entry is valid and the clients map is fresh.
        let _ = awareness.apply_update(effective.clone());
        for (id, entry) in &effective.clients {
            if &*entry.json == NULL {
                self.owned.remove(id);
            } else {
                self.owned.insert(*id, (entry.clock, entry.json.len()));
            }
        }
        Ok(Applied { effective: Some(effective), reminder })
    }

    /// Removes this socket's states from `awareness` and returns the update announcing that to
    /// everyone else (`None` if it owned nothing still present). Called when the socket closes or
    /// dies, so others see the user leave at once instead of after Yjs' 30 s timeout. A state
    /// another socket has replaced since (same client id, newer clock) is left alone.
    pub fn depart(&mut self, awareness: &mut Awareness) -> Option<AwarenessUpdate> {
        let mut removal = AwarenessUpdate { clients: HashMap::new() };
        for (id, (clock, _)) in self.owned.drain() {
            let current = awareness.meta(id).map(|(c, _)| c);
            if current == Some(clock) && is_live(awareness, id) {
                removal.clients.insert(
                    id,
                    AwarenessUpdateEntry { clock: clock.saturating_add(1), json: NULL.into() },
                );
            }
        }
        if removal.clients.is_empty() {
            return None;
        }
        // Our own removal (clock + 1, null) always takes effect.
        let _ = awareness.apply_update(removal.clone());
        Some(removal)
    }
}

/// Transaction origin marking updates that came from the server, so they are not sent back.
const REMOTE: &str = "huddle-remote";
/// Key of the document observer that collects local updates.
const OBSERVER_KEY: &str = "huddle-client-session";

/// Something a [`ClientSession`] noticed while handling a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server's answer to our sync step 1 was applied: the document now holds everything
    /// the server had when it answered.
    Synced,
    /// A remote update changed the document.
    DocChanged,
    /// Remote presence changed: these awareness client ids were added, updated or removed.
    PresenceChanged {
        /// Client ids that appeared.
        added: Vec<u64>,
        /// Client ids whose state changed.
        updated: Vec<u64>,
        /// Client ids that left.
        removed: Vec<u64>,
    },
}

/// Frames to send and events to act on, produced by [`ClientSession::receive`].
#[derive(Debug, Default)]
pub struct Received {
    /// Frames to send back to the server, in order.
    pub replies: Vec<Vec<u8>>,
    /// What happened.
    pub events: Vec<ClientEvent>,
}

/// A y-websocket client without the socket.
///
/// Drive it like this: on connect send [`ClientSession::handshake`]; feed every binary frame to
/// [`ClientSession::receive`] and send its replies; after local edits (or on a timer) send
/// [`ClientSession::drain_local_updates`]. Edits made while disconnected stay in the document
/// and reach the server through the sync step 1/2 exchange of the next handshake.
pub struct ClientSession {
    awareness: Awareness,
    /// The awareness's clock, also read to tell silent peers (see [`ClientSession::peers`]).
    clock: Arc<dyn Clock>,
    synced: bool,
    /// The state vector the server greeted this connection with (its sync step 1), once it
    /// has; see [`ClientSession::catch_up`].
    server_sv: Option<yrs::StateVector>,
    /// Updates produced by local transactions, waiting to be sent. Filled by a doc observer.
    local: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession").field("synced", &self.synced).finish_non_exhaustive()
    }
}

impl ClientSession {
    /// A session over `doc`. `clock` stamps awareness states (milliseconds; pass
    /// `js_sys::Date::now` in a browser, the system clock elsewhere).
    pub fn new(doc: Doc, clock: impl Clock + 'static) -> Self {
        let local = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&local);
        let remote = Origin::from(REMOTE);
        // Only fails if a transaction is open on this fresh doc, which cannot be.
        // Not `observe_update_v1`: that encodes every transaction's update before the callback
        // can look at its origin, so applying a big room's sync would re-encode all of it only
        // to throw it away. This hook runs at the same point (after the transaction's blocks
        // are merged) and encodes local transactions only.
        let _ = doc.observe_transaction_cleanup(OBSERVER_KEY, move |txn, event| {
            let changed = !event.delete_set.is_empty() || event.before_state != event.after_state;
            if changed && txn.origin() != Some(&remote) {
                sink.lock().unwrap_or_else(PoisonError::into_inner).push(txn.encode_update_v1());
            }
        });
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let stamps = Arc::clone(&clock);
        let awareness = Awareness::with_clock(doc, move || stamps.now());
        Self { awareness, clock, synced: false, server_sv: None, local }
    }

    /// The document this session syncs.
    pub fn doc(&self) -> &Doc {
        self.awareness.doc()
    }

    /// The awareness (presence) of everyone in the room, ourselves included.
    pub fn awareness(&self) -> &Awareness {
        &self.awareness
    }

    /// Our awareness client id (the document's client id).
    pub fn client_id(&self) -> u64 {
        self.awareness.client_id().get()
    }

    /// True once the server's sync step 2 was applied on the current connection.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The frames to send right after the socket opens: our state vector (sync step 1) and our
    /// presence, if set.
    pub fn handshake(&mut self) -> Vec<Vec<u8>> {
        self.synced = false;
        self.server_sv = None;
        // Anything queued while offline is covered by the step 1/2 exchange.
        self.local.lock().unwrap_or_else(PoisonError::into_inner).clear();
        let sv = self.doc().transact().state_vector();
        let mut frames = vec![wire::sync_step1(&sv)];
        if let Some(frame) = self.own_presence_frame() {
            frames.push(frame);
        }
        frames
    }

    /// Applies a state saved earlier on this device (an offline cache) without treating it as a
    /// new local edit: whatever the server lacks of it reaches the server through the next
    /// handshake's sync step 2.
    ///
    /// # Errors
    /// [`WireError::InvalidUpdate`] if the saved bytes are not a valid update.
    pub fn restore(&mut self, saved: &[u8]) -> Result<(), WireError> {
        self.apply_remote(saved).map(|_| ())
    }

    /// What the server still lacks after a [`ClientSession::restore`] that came after the
    /// server's sync step 1 had been answered (that answer went out without the restored
    /// state), as an update frame: what we have beyond the state vector the server greeted us
    /// with. `None` before that greeting (answering it will cover everything) or when there is
    /// nothing beyond it. A restored copy of a big room is mostly what the server has already:
    /// this sends the difference, not the whole copy again.
    pub fn catch_up(&self) -> Option<Vec<u8>> {
        let sv = self.server_sv.as_ref()?;
        let diff = self.doc().transact().encode_state_as_update_v1(sv);
        (diff != wire::EMPTY_UPDATE).then(|| wire::update(diff))
    }

    /// The whole document as one update, for an offline cache.
    pub fn snapshot(&self) -> Vec<u8> {
        self.doc().transact().encode_state_as_update_v1(&yrs::StateVector::default())
    }

    /// Call when the socket closes: the session is no longer synced, and everyone else's
    /// presence is forgotten (departures during the outage would never arrive; the server's
    /// greeting on reconnect lists who is there).
    ///
    /// Forgotten entirely, in a fresh awareness, rather than marked removed: yrs marks a removal
    /// by raising the client's clock, and would then ignore the greeting, which lists everyone
    /// at the clock the server has, until each had changed its state twice. Our own state
    /// comes back two clocks on: the server marked it removed at its clock + 1 when this socket
    /// went, and takes a state only at a newer clock, so at + 1 others would not see us until
    /// our second change.
    pub fn disconnected(&mut self) {
        self.synced = false;
        self.server_sv = None;
        let me = self.awareness.client_id();
        let own = self.awareness.meta(me).map(|(clock, _)| AwarenessUpdateEntry {
            clock: clock.saturating_add(2),
            json: self.awareness.local_state_raw().unwrap_or_else(|| NULL.into()),
        });
        let stamps = Arc::clone(&self.clock);
        let mut fresh = Awareness::with_clock(self.doc().clone(), move || stamps.now());
        if let Some(own) = own {
            // Cannot fail: one valid entry, applied to an empty awareness.
            let _ = fresh.apply_update(AwarenessUpdate { clients: HashMap::from([(me, own)]) });
        }
        self.awareness = fresh;
    }

    /// Handles one binary frame from the server.
    ///
    /// # Errors
    /// [`WireError`] if the frame is malformed or an update does not apply; the caller should
    /// close the socket (and will resync on reconnect).
    pub fn receive(&mut self, frame: &[u8]) -> Result<Received, WireError> {
        // A big answer may come deflated (the client asked with `wire::DEFLATE_QUERY`).
        let inflated = wire::inflate(frame, wire::MAX_INFLATED_BYTES)?;
        self.receive_inflated(inflated.as_deref().unwrap_or(frame))
    }

    /// [`ClientSession::receive`] for a frame that is not [`wire::MSG_DEFLATED`] (one refuses
    /// it): for a client that inflates such frames itself, as the web client does with the
    /// browser's own zlib, and so leaves this crate's inflater out of its bundle.
    ///
    /// # Errors
    /// As [`ClientSession::receive`].
    pub fn receive_inflated(&mut self, frame: &[u8]) -> Result<Received, WireError> {
        let mut out = Received::default();
        for message in wire::decode_frame(frame)? {
            match message {
                Message::Sync(SyncMessage::SyncStep1(sv)) => {
                    let diff = self.doc().transact().encode_state_as_update_v1(&sv);
                    out.replies.push(wire::sync_step2(diff));
                    self.server_sv = Some(sv);
                }
                Message::Sync(SyncMessage::SyncStep2(update)) => {
                    if self.apply_remote(&update)? {
                        out.events.push(ClientEvent::DocChanged);
                    }
                    self.synced = true;
                    out.events.push(ClientEvent::Synced);
                }
                Message::Sync(SyncMessage::Update(update)) => {
                    if self.apply_remote(&update)? {
                        out.events.push(ClientEvent::DocChanged);
                    }
                }
                Message::Awareness(mut update) => {
                    let me = self.awareness.client_id();
                    if let Some(entry) = update.clients.remove(&me)
                        && let Some(frame) = self.reclaim(&entry)
                    {
                        out.replies.push(frame);
                    }
                    if let Ok(Some(s)) = self.awareness.apply_update_summary(update) {
                        let ids = |v: &[ClientID]| v.iter().map(|c| c.get()).collect();
                        out.events.push(ClientEvent::PresenceChanged {
                            added: ids(&s.added),
                            updated: ids(&s.updated),
                            removed: ids(&s.removed),
                        });
                    }
                }
                Message::AwarenessQuery => {
                    if let Ok(update) = self.awareness.update() {
                        out.replies.push(wire::awareness(update));
                    }
                }
                Message::Auth(_) | Message::Custom(..) => {}
            }
        }
        Ok(out)
    }

    /// Whether the server's greeting (its sync step 1) was answered on this connection. Until
    /// then, local edits need not be sent: the answer, a diff against the server's state,
    /// carries them. Sent before it, an edit made after edits made offline would reach the
    /// server ahead of them, and the server refuses a client's edits out of order (the
    /// socket is closed and the client reconnects).
    pub fn answered_greeting(&self) -> bool {
        self.server_sv.is_some()
    }

    /// Local edits since the last call, as update frames (one per transaction). Empty while
    /// nothing changed.
    pub fn drain_local_updates(&mut self) -> Vec<Vec<u8>> {
        let pending =
            std::mem::take(&mut *self.local.lock().unwrap_or_else(PoisonError::into_inner));
        pending.into_iter().map(wire::update).collect()
    }

    /// Sets our presence and returns the awareness frame announcing it.
    ///
    /// # Errors
    /// Only if `presence` cannot be serialised, which a [`Presence`] always can.
    pub fn set_presence(&mut self, presence: &Presence) -> Result<Vec<u8>, serde_json::Error> {
        let json = serde_json::to_string(presence)?;
        self.awareness.set_local_state_raw(json);
        Ok(self.own_presence_frame().unwrap_or_default())
    }

    /// Clears our presence (we are leaving) and returns the frame announcing it.
    pub fn clear_presence(&mut self) -> Vec<u8> {
        self.awareness.clean_local_state();
        let id = self.awareness.client_id();
        let update = self
            .awareness
            .update_with_clients([id])
            .unwrap_or(AwarenessUpdate { clients: Default::default() });
        wire::awareness(update)
    }

    /// The presence of every other client in the room, by awareness client id. States that are
    /// not Huddle presences (some other app's awareness) are skipped. A peer not heard from for
    /// [`crate::presence::SILENT_AFTER_MS`] (by the session's clock) is marked idle: its tab
    /// may be frozen or asleep even though its socket is still open.
    pub fn peers(&self) -> Vec<(u64, Presence)> {
        let me = self.awareness.client_id();
        let now = self.clock.now();
        self.awareness
            .iter()
            .filter(|(id, _)| *id != me)
            .filter_map(|(id, state)| {
                let json = state.data?;
                let mut presence: Presence = serde_json::from_str(&json).ok()?;
                if !crate::schema::is_safe_color(&presence.user.color) {
                    presence.user.color = crate::presence::UNKNOWN_COLOR.to_owned();
                }
                if now.saturating_sub(state.last_updated) > crate::presence::SILENT_AFTER_MS {
                    presence.idle = true;
                }
                Some((id.get(), presence))
            })
            .collect()
    }

    /// Handles a remote entry for our own client id, which yrs would apply as if it were
    /// anyone's: a newer state from someone else (any peer can name any id) would replace ours,
    /// and a removal (a stock client that timed us out, or the relay after a dropped socket)
    /// would raise our clock without telling anyone we are still here. Instead our state stays,
    /// and if the entry outranks it, is announced again at a clock above the entry's. Returns
    /// that announcement.
    fn reclaim(&mut self, entry: &AwarenessUpdateEntry) -> Option<Vec<u8>> {
        let me = self.awareness.client_id();
        let ours = self.awareness.local_state_raw()?;
        let (clock, _) = self.awareness.meta(me)?;
        let outranks = entry.clock > clock || (entry.clock == clock && entry.json != ours);
        if !outranks || entry.clock >= crate::presence::MAX_CLOCK {
            return None;
        }
        let again = AwarenessUpdateEntry { clock: entry.clock + 1, json: ours };
        // Cannot fail: one valid entry for a client we know.
        let _ =
            self.awareness.apply_update(AwarenessUpdate { clients: HashMap::from([(me, again)]) });
        self.own_presence_frame()
    }

    fn own_presence_frame(&self) -> Option<Vec<u8>> {
        let id = self.awareness.client_id();
        self.awareness.local_state_raw()?;
        self.awareness.update_with_clients([id]).ok().map(wire::awareness)
    }

    fn apply_remote(&mut self, update: &[u8]) -> Result<bool, WireError> {
        if update == wire::EMPTY_UPDATE {
            return Ok(false);
        }
        let update = wire::decode_update(update)?;
        let mut txn = self.doc().transact_mut_with(REMOTE);
        txn.apply_update(update).map_err(|e| WireError::InvalidUpdate(e.to_string()))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Board, Shape, ShapeKind};
    use yrs::Update;
    use yrs::updates::decoder::Decode;

    fn clock() -> u64 {
        0
    }

    /// Pumps frames between two sessions through a trivial in-memory "relay" that forwards
    /// everything, until both are quiet.
    fn exchange(
        a: &mut ClientSession,
        b: &mut ClientSession,
        mut to_b: Vec<Vec<u8>>,
        mut to_a: Vec<Vec<u8>>,
    ) {
        while !to_a.is_empty() || !to_b.is_empty() {
            let mut next_to_a = Vec::new();
            for f in to_b.drain(..) {
                next_to_a.extend(b.receive(&f).expect("b receives").replies);
            }
            for f in to_a.drain(..) {
                to_b.extend(a.receive(&f).expect("a receives").replies);
            }
            to_a = next_to_a;
        }
    }

    #[test]
    fn two_sessions_converge_and_see_each_others_presence() {
        let mut a = ClientSession::new(Doc::with_client_id(1), clock);
        let mut b = ClientSession::new(Doc::with_client_id(2), clock);
        {
            let board = Board::new(a.doc());
            let mut txn = a.doc().transact_mut();
            board.put_shape(&mut txn, &Shape::new("r1", ShapeKind::Rect));
        }
        let mut p = Presence::default();
        p.user.name = "Ada".into();
        // Not a colour: shown as the neutral one (see `schema::is_safe_color`).
        p.user.color = "url(https://example.com/who-is-looking)".into();
        a.set_presence(&p).expect("presence");
        let (ha, hb) = (a.handshake(), b.handshake());
        exchange(&mut a, &mut b, ha, hb);
        assert!(a.is_synced() && b.is_synced());
        assert_eq!(Board::new(b.doc()).shapes(&b.doc().transact()).len(), 1);
        assert_eq!(b.peers().len(), 1);
        assert_eq!(b.peers()[0].1.user.name, "Ada");
        assert_eq!(b.peers()[0].1.user.color, crate::presence::UNKNOWN_COLOR);

        // A local edit on b becomes exactly one frame; remote edits are not echoed.
        {
            let board = Board::new(b.doc());
            let mut txn = b.doc().transact_mut();
            board.put_shape(&mut txn, &Shape::new("e1", ShapeKind::Ellipse));
        }
        let frames = b.drain_local_updates();
        assert_eq!(frames.len(), 1);
        a.receive(&frames[0]).expect("applies");
        assert!(a.drain_local_updates().is_empty());
        assert_eq!(Board::new(a.doc()).shape_count(&a.doc().transact()), 2);
    }

    /// A server's document holding `n` rectangles.
    fn server_with_rects(n: usize) -> Doc {
        let server = Doc::with_client_id(1);
        let board = Board::new(&server);
        let mut txn = server.transact_mut();
        for i in 0..n {
            board.put_shape(&mut txn, &Shape::new(format!("s{i}"), ShapeKind::Rect));
        }
        drop(txn);
        server
    }

    #[test]
    fn a_copy_restored_after_the_greeting_sends_only_what_the_server_lacks() {
        let server = server_with_rects(2_000);
        let everything = server.transact().encode_state_as_update_v1(&Default::default());
        // A copy cached on this device: the whole room and one shape drawn offline.
        let cached = {
            let device = Doc::with_client_id(2);
            device
                .transact_mut()
                .apply_update(Update::decode_v1(&everything).expect("decodes"))
                .expect("applies");
            let board = Board::new(&device);
            board.put_shape(&mut device.transact_mut(), &Shape::new("offline", ShapeKind::Ellipse));
            device.transact().encode_state_as_update_v1(&Default::default())
        };

        let mut client = ClientSession::new(Doc::with_client_id(2), clock);
        client.handshake();
        assert_eq!(client.catch_up(), None, "before the server's greeting there is nothing to do");
        let greeting = wire::sync_step1(&server.transact().state_vector());
        client.receive(&greeting).expect("answers the greeting");
        assert_eq!(client.catch_up(), None, "nothing beyond what the server has");
        client.restore(&cached).expect("restores");
        let frame = client.catch_up().expect("the offline shape");
        assert!(
            frame.len() * 20 < cached.len(),
            "{} bytes, not the whole copy's {}",
            frame.len(),
            cached.len()
        );
        let [crate::wire::WireMessage::Sync(SyncMessage::Update(update))] =
            &wire::decode_frame(&frame).expect("a frame")[..]
        else {
            panic!("an update frame")
        };
        server
            .transact_mut()
            .apply_update(Update::decode_v1(update).expect("decodes"))
            .expect("applies");
        assert!(Board::new(&server).shape(&server.transact(), "offline").is_some());
        assert_eq!(Board::new(&server).shape_count(&server.transact()), 2_001);
    }

    /// The update a frame of one sync message carries.
    fn update_in(frame: &[u8]) -> Vec<u8> {
        match &wire::decode_frame(frame).expect("a frame")[..] {
            [
                crate::wire::WireMessage::Sync(
                    SyncMessage::Update(update) | SyncMessage::SyncStep2(update),
                ),
            ] => update.clone(),
            other => panic!("an update, not {other:?}"),
        }
    }

    #[test]
    fn an_edit_right_after_reconnecting_goes_in_the_greetings_answer_behind_those_made_offline() {
        let server = server_with_rects(3);
        let mut client = ClientSession::new(Doc::with_client_id(2), clock);
        client.handshake();
        let everything = server.transact().encode_state_as_update_v1(&Default::default());
        client.receive(&wire::sync_step2(everything)).expect("syncs");
        client.disconnected();
        let draw = |client: &ClientSession, id: &str| {
            let board = Board::new(client.doc());
            board.put_shape(&mut client.doc().transact_mut(), &Shape::new(id, ShapeKind::Rect));
        };
        draw(&client, "offline");
        let _ = client.drain_local_updates(); // not sent: offline
        client.handshake();
        assert!(!client.answered_greeting());
        draw(&client, "just-after");
        let live = client.drain_local_updates();
        // Sent now, the server would refuse it: it comes ahead of the offline edit.
        let nesting = crate::nesting::Nesting::of_doc(&server.transact());
        let refused = nesting.check(&update_in(&live[0])).expect_err("out of order");
        assert!(matches!(refused, crate::nesting::NestingError::OutOfOrder { .. }));
        // The answer to the greeting carries both, in order, and the server takes it.
        let greeting = wire::sync_step1(&server.transact().state_vector());
        let received = client.receive(&greeting).expect("answers");
        assert!(client.answered_greeting());
        let answer = update_in(&received.replies[0]);
        nesting.check(&answer).expect("in order");
        server
            .transact_mut()
            .apply_update(Update::decode_v1(&answer).expect("decodes"))
            .expect("applies");
        let board = Board::new(&server);
        for id in ["offline", "just-after"] {
            assert!(board.shape(&server.transact(), id).is_some(), "{id}");
        }
    }

    #[test]
    fn a_deflated_answer_syncs_like_a_plain_one_and_a_corrupt_one_changes_nothing() {
        let server = server_with_rects(2_000);
        let answer =
            wire::sync_step2(server.transact().encode_state_as_update_v1(&Default::default()));
        let deflated = wire::deflate(&answer);

        let mut client = ClientSession::new(Doc::with_client_id(2), clock);
        let mut corrupt = deflated.clone();
        corrupt.truncate(corrupt.len() / 2);
        assert!(client.receive(&corrupt).is_err());
        assert!(!client.is_synced());
        assert_eq!(Board::new(client.doc()).shape_count(&client.doc().transact()), 0);

        let received = client.receive(&deflated).expect("applies");
        assert!(received.events.iter().any(|e| matches!(e, ClientEvent::Synced)));
        assert!(client.is_synced());
        assert_eq!(Board::new(client.doc()).shape_count(&client.doc().transact()), 2_000);
    }

    #[test]
    fn a_peer_that_stops_heartbeating_shows_as_away_until_it_speaks_again() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let now = Arc::new(AtomicU64::new(1_000));
        let b_now = Arc::clone(&now);
        let mut a = ClientSession::new(Doc::with_client_id(1), clock);
        let mut b =
            ClientSession::new(Doc::with_client_id(2), move || b_now.load(Ordering::SeqCst));
        let mut p = Presence::default();
        p.user.name = "Ada".into();
        let frame = a.set_presence(&p).expect("presence");
        b.receive(&frame).expect("b receives");
        assert!(!b.peers()[0].1.idle, "just heard from");

        now.fetch_add(crate::presence::SILENT_AFTER_MS, Ordering::SeqCst);
        assert!(!b.peers()[0].1.idle, "a heartbeat may still be on its way");
        now.fetch_add(1, Ordering::SeqCst);
        assert!(b.peers()[0].1.idle, "two heartbeats missed: away");

        // The same state again (a heartbeat) brings it back.
        let frame = a.set_presence(&p).expect("presence");
        b.receive(&frame).expect("b receives");
        assert!(!b.peers()[0].1.idle);
    }

    const OWN: OwnedLimits = OwnedLimits { clients: 4, bytes: 1024 };

    #[test]
    fn a_sockets_states_together_stay_within_its_byte_limit() {
        let mut room = Awareness::with_clock(Doc::new(), clock);
        let mut peer = PeerPresence::default();
        let limits = PresenceLimits::default();
        let state = |id: u64, clock: u32, bytes: usize| AwarenessUpdate {
            clients: HashMap::from([(
                ClientID::new(id),
                AwarenessUpdateEntry {
                    clock,
                    json: format!("\"{}\"", "x".repeat(bytes - 2)).into(),
                },
            )]),
        };
        peer.apply(&mut room, state(1, 1, 600), &limits, OWN).expect("600 of 1024");
        let err = peer.apply(&mut room, state(2, 1, 600), &limits, OWN).expect_err("1200 bytes");
        assert!(matches!(err, PresenceApplyError::TooMuchState { bytes: 1200, max: 1024 }));
        assert!(room.meta(ClientID::new(2)).is_none(), "nothing applied");
        // Replacing its own state counts the new one only.
        peer.apply(&mut room, state(1, 2, 1000), &limits, OWN).expect("1000 replaces 600");
        peer.apply(&mut room, state(1, 3, 10), &limits, OWN).expect("smaller");
        peer.apply(&mut room, state(2, 1, 900), &limits, OWN).expect("910 in all");
    }

    /// An awareness update of one entry.
    fn entry(id: u64, clock: u32, json: &str) -> AwarenessUpdate {
        AwarenessUpdate {
            clients: HashMap::from([(
                ClientID::new(id),
                AwarenessUpdateEntry { clock, json: json.into() },
            )]),
        }
    }

    #[test]
    fn peers_from_other_editors_show_with_what_huddle_can_read_of_them() {
        let mut huddle = ClientSession::new(Doc::with_client_id(1), clock);
        // y-codemirror's cursor, y-monaco's selection, a user with no colour.
        let codemirror = r#"{"user":{"name":"Kim"},"cursor":{"anchor":{"type":1},"head":2},"selection":{"x":1},"idle":"no"}"#;
        huddle.receive(&wire::awareness(entry(9, 1, codemirror))).expect("handled");
        let peers = huddle.peers();
        let [(9, kim)] = peers.as_slice() else { panic!("Kim is listed: {peers:?}") };
        assert_eq!(kim.user.name, "Kim");
        assert_eq!(kim.user.color, crate::presence::UNKNOWN_COLOR);
        assert!(kim.cursor.is_none() && kim.selection.is_empty() && !kim.idle);
        // Without a name there is nobody to list.
        huddle.receive(&wire::awareness(entry(10, 1, r#"{"cursor":{"x":1,"y":2}}"#))).expect("ok");
        assert_eq!(huddle.peers().len(), 1);
    }

    #[test]
    fn a_socket_cannot_remove_presence_it_did_not_publish() {
        let mut room = Awareness::with_clock(Doc::new(), clock);
        let limits = PresenceLimits::default();
        let (mut ada, mut stock) = (PeerPresence::default(), PeerPresence::default());
        ada.apply(&mut room, entry(1, 3, "{}"), &limits, OWN).expect("ok");
        // A stock client that has not heard from Ada for 30 s removes her and says so.
        let applied = stock.apply(&mut room, entry(1, 4, "null"), &limits, OWN).expect("ok");
        assert!(applied.effective.is_none(), "not relayed");
        assert!(is_live(&room, ClientID::new(1)), "Ada is still there for everyone");
        // Ada may remove her own.
        let applied = ada.apply(&mut room, entry(1, 4, "null"), &limits, OWN).expect("ok");
        assert!(applied.effective.is_some());
        assert!(!is_live(&room, ClientID::new(1)));
    }

    #[test]
    fn a_live_state_moves_on_only_so_many_clocks_at_a_time() {
        let mut room = Awareness::with_clock(Doc::new(), clock);
        let limits = PresenceLimits::default();
        let (mut ada, mut eve, mut back) =
            (PeerPresence::default(), PeerPresence::default(), PeerPresence::default());
        ada.apply(&mut room, entry(1, 3, r#"{"n":"Ada"}"#), &limits, OWN).expect("ok");
        // Eve names Ada's id at the top of the clock's range: not taken.
        let top = crate::presence::MAX_CLOCK;
        let applied = eve.apply(&mut room, entry(1, top, r#"{"n":"Eve"}"#), &limits, OWN);
        assert!(applied.expect("not an error").effective.is_none());
        assert_eq!(room.meta(ClientID::new(1)).map(|(c, _)| c), Some(3));
        // Ada's tab back on a new socket before the old one was found dead, her clock moved on
        // by her cursor meanwhile: taken.
        let applied = back.apply(&mut room, entry(1, 600, r#"{"n":"Ada"}"#), &limits, OWN);
        assert!(applied.expect("ok").effective.is_some());
        // Having taken the id, no socket may jump it far either (Eve could otherwise take it
        // one step on, then jump).
        let applied = eve.apply(&mut room, entry(1, 602, r#"{"n":"Eve"}"#), &limits, OWN);
        assert!(applied.expect("ok").effective.is_some());
        let applied = eve.apply(&mut room, entry(1, top, r#"{"n":"Eve"}"#), &limits, OWN);
        assert!(applied.expect("not an error").effective.is_none());
        assert_eq!(room.meta(ClientID::new(1)).map(|(c, _)| c), Some(602));
    }

    #[test]
    fn a_client_back_at_the_clock_it_left_with_is_told_of_its_removal() {
        let mut room = Awareness::with_clock(Doc::new(), clock);
        let limits = PresenceLimits::default();
        let mut old = PeerPresence::default();
        old.apply(&mut room, entry(7, 3, r#"{"a":1}"#), &limits, OWN).expect("ok");
        // Its socket goes: removed at clock 4 for everyone.
        assert!(old.depart(&mut room).is_some());
        // Back on a new socket, a stock client re-sends its state at clock 3.
        let mut new = PeerPresence::default();
        let applied = new.apply(&mut room, entry(7, 3, r#"{"a":1}"#), &limits, OWN).expect("ok");
        assert!(applied.effective.is_none(), "outranked by the removal");
        let reminder = applied.reminder.expect("the sender is told");
        let told = &reminder.clients[&ClientID::new(7)];
        assert_eq!((told.clock, &*told.json), (4, "null"));
        // It raises its clock over the removal and sends its state again: now it shows.
        let applied = new.apply(&mut room, entry(7, 5, r#"{"a":1}"#), &limits, OWN).expect("ok");
        assert!(applied.effective.is_some() && applied.reminder.is_none());
        assert!(is_live(&room, ClientID::new(7)));
        // An echo of a live state at its clock is no news to anyone.
        let applied = old.apply(&mut room, entry(7, 5, r#"{"a":1}"#), &limits, OWN).expect("ok");
        assert!(applied.effective.is_none() && applied.reminder.is_none());
    }

    #[test]
    fn nobody_else_can_take_over_our_presence_and_a_clock_near_the_top_is_refused() {
        let mut ada = ClientSession::new(Doc::with_client_id(1), clock);
        let mut p = Presence::default();
        p.user.name = "Ada".into();
        ada.set_presence(&p).expect("presence");
        let ours = ada.awareness.local_state_raw().expect("set");
        // Someone sends a state under Ada's id at a newer clock.
        let forged = wire::awareness(entry(1, 50, r#"{"user":{"name":"Eve"}}"#));
        let received = ada.receive(&forged).expect("handled");
        assert_eq!(ada.awareness.local_state_raw().as_deref(), Some(&*ours), "still Ada's");
        // Ada announces herself again above the forged clock.
        let [reply] = received.replies.as_slice() else { panic!("one reply") };
        let Message::Awareness(again) = wire::decode_frame(reply).expect("decodes").remove(0)
        else {
            panic!("not awareness");
        };
        let mine = &again.clients[&ClientID::new(1)];
        assert_eq!((mine.clock, &*mine.json), (51, &*ours));
        // A removal of her at her clock (a stock client timed her out) gets the same answer.
        let received = ada.receive(&wire::awareness(entry(1, 51, "null"))).expect("handled");
        assert_eq!(received.replies.len(), 1);
        // Her own state echoed back is no news.
        let echo = ada.set_presence(&p).expect("presence");
        assert!(ada.receive(&echo).expect("handled").replies.is_empty());
        // A relay refuses a clock no client reaches, which would lock an id out for good.
        let limits = PresenceLimits::default();
        let mut room = Awareness::with_clock(Doc::new(), clock);
        let err = PeerPresence::default()
            .apply(&mut room, entry(1, u32::MAX - 1, "{}"), &limits, OWN)
            .expect_err("refused");
        assert!(matches!(err, PresenceApplyError::Invalid(PresenceError::BadClock { client: 1 })));
    }

    #[test]
    fn peer_presence_removes_what_the_socket_owned() {
        let mut room = Awareness::with_clock(Doc::new(), clock);
        let mut client = ClientSession::new(Doc::with_client_id(9), clock);
        let frame = client.set_presence(&Presence::default()).expect("presence");
        let Message::Awareness(update) = wire::decode_frame(&frame).expect("decodes").remove(0)
        else {
            panic!("not awareness");
        };
        let mut peer = PeerPresence::default();
        let limits = PresenceLimits::default();
        assert!(
            peer.apply(&mut room, update.clone(), &limits, OWN).expect("ok").effective.is_some()
        );
        // The same state again (an echo) changes nothing.
        assert!(peer.apply(&mut room, update, &limits, OWN).expect("ok").effective.is_none());
        // Removals of ids nobody knows are dropped, and so leave no tombstones behind.
        let ghost = AwarenessUpdate {
            clients: HashMap::from([(
                ClientID::new(555),
                AwarenessUpdateEntry { clock: 3, json: "null".into() },
            )]),
        };
        assert!(peer.apply(&mut room, ghost, &limits, OWN).expect("ok").effective.is_none());
        assert!(room.meta(ClientID::new(555)).is_none());
        // A stock y-websocket client re-sends every state it receives: echoes of many other
        // clients' states do not count against the one it owns.
        let mut others = AwarenessUpdate { clients: HashMap::new() };
        for id in 100..120u64 {
            let mut p = PeerPresence::default();
            let one = AwarenessUpdate {
                clients: HashMap::from([(
                    ClientID::new(id),
                    AwarenessUpdateEntry { clock: 1, json: "{}".into() },
                )]),
            };
            p.apply(&mut room, one.clone(), &limits, OWN).expect("ok");
            others.clients.extend(one.clients);
        }
        assert!(
            peer.apply(&mut room, others, &limits, OWN).expect("echo accepted").effective.is_none()
        );
        let removal = peer.depart(&mut room).expect("owned one");
        assert_eq!(removal.clients.len(), 1);
        assert!(room.iter().all(|(id, s)| s.data.is_none() || id.get() >= 100));
        // The removal, relayed, makes the state disappear at other clients.
        let mut other = ClientSession::new(Doc::with_client_id(3), clock);
        other.receive(&frame).expect("state");
        assert_eq!(other.peers().len(), 1);
        other.receive(&wire::awareness(removal)).expect("removal");
        assert!(other.peers().is_empty());
    }

    /// What a relay does with one socket's awareness frame: applies it to the room's
    /// awareness through the socket's [`PeerPresence`], and returns the frame to relay.
    fn relay_presence(room: &mut Awareness, peer: &mut PeerPresence, frame: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for message in wire::decode_frame(frame).expect("decodes") {
            if let Message::Awareness(update) = message
                && let Some(effective) = peer
                    .apply(room, update, &PresenceLimits::default(), OWN)
                    .expect("valid")
                    .effective
            {
                out.push(wire::awareness(effective));
            }
        }
        out
    }

    /// After a socket drops and comes back, the client is seen again at once, and sees everyone
    /// at once, from the greeting alone: nobody has to move first.
    #[test]
    fn after_a_reconnect_everyone_is_seen_again_without_moving() {
        let mut room = Awareness::with_clock(Doc::new(), clock);
        let (mut ada, mut bob) = (
            ClientSession::new(Doc::with_client_id(1), clock),
            ClientSession::new(Doc::with_client_id(2), clock),
        );
        let (mut ada_socket, mut bob_socket) = (PeerPresence::default(), PeerPresence::default());
        let named = |name: &str| {
            let mut p = Presence::default();
            p.user.name = name.into();
            p
        };
        // Both join and move a few times, so their clocks are well past 1.
        for round in 0..3 {
            let frame = ada.set_presence(&named(&format!("Ada {round}"))).expect("set");
            for relayed in relay_presence(&mut room, &mut ada_socket, &frame) {
                bob.receive(&relayed).expect("applies");
            }
            let frame = bob.set_presence(&named(&format!("Bob {round}"))).expect("set");
            for relayed in relay_presence(&mut room, &mut bob_socket, &frame) {
                ada.receive(&relayed).expect("applies");
            }
        }
        assert_eq!(ada.peers()[0].1.user.name, "Bob 2");

        // Ada's socket drops: the relay removes her state for everyone; she notices the close.
        let removal = ada_socket.depart(&mut room).expect("she owned a state");
        bob.receive(&wire::awareness(removal)).expect("applies");
        assert!(bob.peers().is_empty(), "Bob sees Ada leave");
        ada.disconnected();
        assert!(ada.peers().is_empty(), "Ada forgets who was there");

        // She reconnects: her handshake's presence is taken and relayed to Bob...
        let mut ada_socket = PeerPresence::default();
        let frames = ada.handshake();
        let relayed: Vec<_> =
            frames.iter().flat_map(|f| relay_presence(&mut room, &mut ada_socket, f)).collect();
        assert_eq!(relayed.len(), 1, "her presence is news to the room");
        for frame in &relayed {
            bob.receive(frame).expect("applies");
        }
        assert_eq!(bob.peers().len(), 1, "Bob sees Ada again without her moving");
        assert_eq!(bob.peers()[0].1.user.name, "Ada 2");
        // ...and the relay's greeting (everyone in the room) shows her Bob at once.
        let greeting = wire::awareness(room.update().expect("encodes"));
        ada.receive(&greeting).expect("applies");
        let names: Vec<_> = ada.peers().into_iter().map(|(_, p)| p.user.name).collect();
        assert_eq!(names, vec!["Bob 2".to_owned()], "Ada sees Bob without him moving");
    }
}
