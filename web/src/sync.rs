//! The live connection to the server: the shared protocol's `ClientSession` over a browser
//! WebSocket, with reconnection (exponential backoff with full jitter, capped at 30 s), local
//! undo/redo, and throttled presence.
//!
//! Edits always go into the local document first, so drawing keeps working while offline; the
//! sync step 1/2 exchange of the next connection carries them to the server.
//!
//! The socket is `web_sys::WebSocket` itself rather than gloo-net's wrapper: the page opens
//! the room's socket before the app has loaded (`index.html`), and the app adopts that very
//! socket and what it already received, which gloo-net (it only opens sockets of its own)
//! cannot do; and messages are handled in the socket's own callback, not through a stream
//! polled by a spawned task, so a big sync is applied without an extra task hop.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use huddle_protocol::history::History;
use huddle_protocol::presence::{Presence, User};
use huddle_protocol::schema::Board;
use huddle_protocol::session::{ClientEvent, ClientSession};
use huddle_protocol::wire;
use huddle_protocol::yrs::{Doc, Origin, ReadTxn, StateVector, Transact, TransactionMut};
use leptos::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::Closure;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

/// Transaction origin of this user's own edits: the only ones undo/redo touches.
const LOCAL: &str = "huddle-local";
/// First reconnection delay.
const BACKOFF_BASE_MS: f64 = 500.0;
/// Longest reconnection delay.
const BACKOFF_CAP_MS: f64 = 30_000.0;
/// Edits outside a gesture closer together than this share an undo step (typing a word).
const UNDO_MERGE_MS: f64 = 400.0;
/// Edits are written to the offline cache at most this often.
const SAVE_DELAY_MS: u64 = 300;

/// First wait before retrying a save to the offline cache that failed (storage full or
/// unavailable); it doubles after each failure, up to [`CACHE_RETRY_MAX_MS`].
const CACHE_RETRY_FIRST_MS: u64 = 1_000;

/// Longest wait between retries of a failing offline cache: each retry encodes the whole
/// document, tens of milliseconds in a big room.
const CACHE_RETRY_MAX_MS: u64 = 60_000;
/// Presence (cursor) updates are sent at most this often (~30 Hz).
const PRESENCE_INTERVAL_MS: f64 = 33.0;

/// What the connection is doing, as shown in the status bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Status {
    /// Opening the socket.
    Connecting,
    /// Open and synced.
    Connected,
    /// Waiting to retry; the next attempt is at this time (`Date.now()` milliseconds).
    Reconnecting {
        /// When the next attempt starts.
        at_ms: f64,
    },
    /// The browser reports no network.
    Offline,
    /// The server closed the socket refusing something of ours (see [`Refusal`]); the next
    /// attempt is at this time, later than after a plain disconnect.
    Refused {
        /// What was refused.
        why: Refusal,
        /// When the next attempt starts.
        at_ms: f64,
    },
}

/// Why the server closed the socket over something this client sent (close code 1008): retrying
/// at once would only be refused again, so the user is told, and retries are spaced out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The room's board reached the server's size limit (`--max-room-bytes`): edits that add
    /// to it are refused until something is deleted.
    RoomFull,
    /// Another of the server's limits (presence size, clients per socket).
    Limit,
}

impl Refusal {
    /// The refusal a close with `code` and `reason` means, if any.
    fn of_close(code: u16, reason: &str) -> Option<Self> {
        (code == 1008).then(|| {
            if reason.starts_with("room is full") { Refusal::RoomFull } else { Refusal::Limit }
        })
    }
}

/// How long a connection must have been synced for the reconnect backoff to start over when
/// it ends (see `Connection::schedule_reconnect`).
const HEALTHY_MS: f64 = 10_000.0;

/// How long a socket may take to open before it is given up (a network that swallows the
/// connection without refusing it): checked at each heartbeat.
const OPEN_DEADLINE_MS: f64 = 20_000.0;

/// How long a connection's first sync may take before the socket is given up: a big room over
/// a slow link takes a while, and the heartbeat's liveness question is not asked meanwhile
/// (see `Connection::heartbeat`).
const FIRST_SYNC_DEADLINE_MS: f64 = 300_000.0;

/// Least reconnect attempt number after a refusal: its backoff ceiling is 8 s, so a client
/// whose edit a full room refuses does not come back every half second to be refused again.
const REFUSED_ATTEMPT: u32 = 4;

/// Reactive values the UI reads; the connection writes them.
#[derive(Debug, Clone, Copy)]
pub struct Signals {
    /// Bumped after every change to the document (local or remote).
    pub doc_version: RwSignal<u64>,
    /// True once the first sync of this page load was applied.
    pub synced: RwSignal<bool>,
    /// Connection state.
    pub status: RwSignal<Status>,
    /// Bumped after every change to someone's presence.
    pub presence_version: RwSignal<u64>,
    /// True when everything in the document is also in the offline cache.
    pub cached: RwSignal<bool>,
    /// The last write to the offline cache failed (storage full, or none on this device):
    /// until one succeeds, edits made while disconnected live only in this tab.
    pub cache_failed: RwSignal<bool>,
    /// How far the first sync of the current connection has got, for the loading display.
    pub loading: RwSignal<Loading>,
}

/// Stages of opening a room, shown while the board is not yet synced: a big room takes a
/// moment, and people should see what it is doing rather than a blank board.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loading {
    /// Opening the socket.
    Connecting,
    /// Connected; the server's copy of the board is on its way.
    Receiving,
    /// The board arrived and is being read (this many bytes).
    Opening {
        /// Size of the server's answer.
        bytes: usize,
    },
    /// Synced.
    Done,
}

impl Signals {
    /// Fresh signals for a room view.
    pub fn new() -> Self {
        Self {
            doc_version: RwSignal::new(0),
            synced: RwSignal::new(false),
            status: RwSignal::new(Status::Connecting),
            presence_version: RwSignal::new(0),
            cached: RwSignal::new(false),
            cache_failed: RwSignal::new(false),
            loading: RwSignal::new(Loading::Connecting),
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}

struct Socket {
    ws: WebSocket,
    _on_open: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}

/// One room's connection. Lives as long as the room view.
pub struct Connection {
    url: String,
    room: String,
    /// What the offline cache holds, as far as this page knows.
    cache: Rc<RefCell<CacheState>>,
    session: RefCell<ClientSession>,
    socket: RefCell<Option<Socket>>,
    attempt: Cell<u32>,
    /// Which scheduled reconnect may still run: bumped whenever one is scheduled or the
    /// connection is opened some other way, so a timer left from before does not replace a
    /// socket opened since.
    reconnect_ticket: Cell<u32>,
    /// When the current socket was opened (`Date.now()` ms; 0 when there is none).
    opened_at: Cell<f64>,
    /// When the current connection's first sync was applied (0: not yet, or no connection).
    synced_at: Cell<f64>,
    /// What the server refused when it last closed the socket (see [`Refusal`]).
    refused: Cell<Option<Refusal>>,
    closed: Cell<bool>,
    signals: Signals,
    /// This user's undo and redo, field by field (see [`History`]).
    history: History,
    /// Bumped by every transaction that changes the chat (see [`Connection::chat_version`]).
    chat_version: Arc<AtomicU64>,
    presence: RefCell<Presence>,
    /// Whether others may see our presence (false until the user gives a name).
    announced: Cell<bool>,
    presence_sent_at: Cell<f64>,
    presence_timer: Cell<bool>,
    /// A pointer gesture (drag, stroke) is in progress: its edits are one undo step.
    in_action: Cell<bool>,
    /// When the last edit outside a gesture was made (`Date.now()` ms; 0 after a gesture).
    last_edit_at: Cell<f64>,
    /// When the last frame arrived from the server (`Date.now()` ms).
    last_received: Cell<f64>,
    /// When the last heartbeat asked the server for an answer (0: none outstanding).
    asked_at: Cell<f64>,
    /// When the last heartbeat ran.
    heartbeat_at: Cell<f64>,
    /// Frames held back so the page can paint the loading display before a big first sync
    /// blocks it (see [`BIG_SYNC_BYTES`]); later frames queue behind them, in order.
    deferred: RefCell<std::collections::VecDeque<Vec<u8>>>,
    /// A deflated frame is being inflated (see [`Connection::inflate`]).
    inflating: Cell<bool>,
    /// Frames that arrived while one was being inflated, in order.
    waiting: RefCell<std::collections::VecDeque<Vec<u8>>>,
    /// Bumped whenever a connection ends or starts, so work begun for an older one (an
    /// inflation) knows its frames no longer count.
    generation: Cell<u32>,
}

/// What the offline cache holds for a room, as far as this page knows (see
/// [`Connection::save_to_cache`]).
#[derive(Debug)]
struct CacheState {
    /// A save is pending.
    scheduled: bool,
    /// This page's tag in the keys of the records it writes.
    page: String,
    /// Records this page has read back (and restored) or written since its last whole copy,
    /// that copy included: the next whole copy holds them all and replaces them. Records it
    /// has not read (another tab's, or all of them while the cache is still being read) are
    /// never replaced.
    covered: Vec<String>,
    /// The document's state vector at the last save; `None`: the next save is a whole copy.
    saved_sv: Option<StateVector>,
    /// Updates saved since the last whole copy, and their bytes.
    updates: u32,
    update_bytes: usize,
    /// Size of the last whole copy.
    whole_bytes: usize,
    /// Saves made by this page (part of a record's key).
    count: u32,
    /// Local edits made while the socket was not open: until a save made after them succeeds
    /// (or the server has them), they exist only in this tab.
    offline_edits: u64,
    /// Of those, how many the last successful save held.
    saved_offline_edits: u64,
    /// Wait before retrying a failed save (0: the last save worked).
    retry_ms: u64,
    /// Retry timers armed so far: a timer acts only if no later one was armed.
    retry_timers: u32,
    /// Saves that failed so far. A save that starts before a failure and succeeds after it
    /// may be an update on top of what failed: it counts as failed too.
    failures: u32,
    /// Saves started and not finished.
    in_flight: u32,
}

impl CacheState {
    fn new() -> Self {
        Self {
            scheduled: false,
            page: format!("{:08x}", (js_sys::Math::random() * f64::from(u32::MAX)) as u32),
            covered: Vec::new(),
            saved_sv: None,
            updates: 0,
            update_bytes: 0,
            whole_bytes: 0,
            count: 0,
            offline_edits: 0,
            saved_offline_edits: 0,
            retry_ms: 0,
            retry_timers: 0,
            failures: 0,
            in_flight: 0,
        }
    }
}

/// Updates saved after a whole copy before a save writes a whole copy again (which replaces
/// them): loading a room's cache applies each.
const MAX_CACHED_UPDATES: u32 = 100;

/// A first sync answer at least this big is applied only after the page has painted "Opening
/// the board", since applying it blocks the page for a while: about 60 ms per MB (1 MB is
/// about 7,000 shapes) on the benchmark machine, so ≥ 120 ms here. Below that the freeze is
/// shorter than waiting for that paint is worth: holding back a 10,000-shape room's 1.4 MB
/// answer for it cost ~35 ms of its ~400 ms open.
const BIG_SYNC_BYTES: usize = 2 << 20;

/// Heap a document takes in yrs per byte of its encoded update: applying a 2.8 MB sync of
/// 10,000 shapes grew the wasm memory from 4 to 61 MB, an 11 MB one of 40,000 from 13 to
/// 239 MB. Measured on rooms of nested-map shapes; plain-object shapes take less per byte, and
/// reserving too much costs nothing lasting (the block is freed at once).
const HEAP_PER_SYNC_BYTE: usize = 20;
/// Most heap reserved up front for one sync.
const MAX_HEAP_RESERVE: usize = 512 << 20;

/// A held-back sync is applied after this long even without a paint (hidden tabs get no
/// animation frames).
const HIDDEN_APPLY_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// A socket that `index.html` opened for this room before the app loaded, and what it
/// received meanwhile.
struct EarlySocket {
    ws: WebSocket,
    frames: Vec<Vec<u8>>,
    /// It already asked for the whole board (an empty sync step 1).
    asked: bool,
}

/// Takes the socket `index.html` opened for `url`, if it is still usable. Taken at most once:
/// later connections open their own.
fn take_early_socket(url: &str) -> Option<EarlySocket> {
    let window = web_sys::window()?;
    let key = wasm_bindgen::JsValue::from_str("__huddleEarlySocket");
    let early = js_sys::Reflect::get(&window, &key).ok().filter(|e| e.is_object())?;
    let _ = js_sys::Reflect::delete_property(window.unchecked_ref::<js_sys::Object>(), &key);
    let get = |name: &str| js_sys::Reflect::get(&early, &wasm_bindgen::JsValue::from_str(name));
    let ws: WebSocket = get("ws").ok()?.dyn_into().ok()?;
    if get("url").ok()?.as_string().as_deref() != Some(url) || ws.ready_state() > WebSocket::OPEN {
        let _ = ws.close();
        return None;
    }
    let frames: js_sys::Array = get("frames").ok()?.dyn_into().ok()?;
    let frames = frames
        .iter()
        .filter_map(|f| f.dyn_into::<js_sys::ArrayBuffer>().ok())
        .map(|b| js_sys::Uint8Array::new(&b).to_vec())
        .collect();
    let asked = get("step1Sent").ok().and_then(|v| v.as_bool()).unwrap_or(false);
    Some(EarlySocket { ws, frames, asked })
}

/// Puts a named mark on the page's performance timeline, so a benchmark (or a person in the
/// browser's profiler) can see where opening a room spends its time.
pub fn mark(name: &str) {
    if let Some(p) = web_sys::window().and_then(|w| w.performance()) {
        let _ = p.mark(name);
    }
}

/// How long to wait before reconnect attempt `attempt` (0 for the first): exponential backoff
/// with full jitter, a uniformly random share (`random` in `[0, 1)`) of a ceiling that doubles
/// per attempt up to [`BACKOFF_CAP_MS`].
fn backoff_ms(attempt: u32, random: f64) -> f64 {
    let ceiling = (BACKOFF_BASE_MS * 2f64.powi(attempt.min(16) as i32)).min(BACKOFF_CAP_MS);
    random * ceiling
}

/// Milliseconds since the epoch, from the browser.
pub fn now_ms() -> f64 {
    js_sys::Date::now()
}

impl Connection {
    /// A connection to `room` (not yet open: call [`Connection::connect`]).
    /// Our `presence` is announced only once `announced`; until then (someone who has not
    /// given a name yet) others do not see us, see [`Connection::join`].
    pub fn new(room: &str, presence: Presence, announced: bool, signals: Signals) -> Rc<Self> {
        let doc = Doc::new();
        // Undo steps are cut by `edit`, `begin_action` and `end_action`, not by time: a slow
        // pen stroke or drag is still one step.
        let history = History::watch(&Board::new(&doc), "huddle-history", Origin::from(LOCAL));
        let chat_version = Arc::new(AtomicU64::new(0));
        let bump = Arc::clone(&chat_version);
        Board::new(&doc).observe_chat("huddle-chat-version", move || {
            bump.fetch_add(1, Ordering::Relaxed);
        });
        let session = ClientSession::new(doc, || now_ms() as u64);
        Rc::new(Self {
            url: socket_url(room),
            room: room.to_owned(),
            cache: Rc::new(RefCell::new(CacheState::new())),
            session: RefCell::new(session),
            socket: RefCell::new(None),
            attempt: Cell::new(0),
            reconnect_ticket: Cell::new(0),
            opened_at: Cell::new(0.0),
            synced_at: Cell::new(0.0),
            refused: Cell::new(None),
            closed: Cell::new(false),
            signals,
            history,
            chat_version,
            presence: RefCell::new(presence),
            announced: Cell::new(announced),
            presence_sent_at: Cell::new(0.0),
            presence_timer: Cell::new(false),
            deferred: RefCell::new(std::collections::VecDeque::new()),
            inflating: Cell::new(false),
            waiting: RefCell::new(std::collections::VecDeque::new()),
            generation: Cell::new(0),
            in_action: Cell::new(false),
            last_edit_at: Cell::new(0.0),
            last_received: Cell::new(0.0),
            asked_at: Cell::new(0.0),
            heartbeat_at: Cell::new(0.0),
        })
    }

    /// Opens the socket (again).
    pub fn connect(self: &Rc<Self>) {
        if self.closed.get() {
            return;
        }
        // A reconnect still scheduled from before must not replace this socket.
        self.reconnect_ticket.set(self.reconnect_ticket.get().wrapping_add(1));
        self.opened_at.set(now_ms());
        self.synced_at.set(0.0);
        self.asked_at.set(0.0);
        self.signals.status.set(Status::Connecting);
        self.signals.loading.set(Loading::Connecting);
        // Frames held back from an earlier connection must not count for this one.
        self.forget_inbound();
        let early = take_early_socket(&self.url);
        let ws = match &early {
            Some(early) => early.ws.clone(),
            None => match WebSocket::new(&self.url) {
                Ok(ws) => ws,
                Err(_) => {
                    self.schedule_reconnect();
                    return;
                }
            },
        };
        ws.set_binary_type(BinaryType::Arraybuffer);
        let weak = Rc::downgrade(self);
        let on_open = Closure::<dyn FnMut()>::new({
            let weak = weak.clone();
            move || {
                if let Some(c) = weak.upgrade() {
                    c.on_open();
                }
            }
        });
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new({
            let weak = weak.clone();
            move |ev: MessageEvent| {
                if let (Some(c), Ok(buf)) =
                    (weak.upgrade(), ev.data().dyn_into::<js_sys::ArrayBuffer>())
                {
                    c.on_frame(js_sys::Uint8Array::new(&buf).to_vec());
                }
            }
        });
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |ev: CloseEvent| {
            if let Some(c) = weak.upgrade() {
                c.refused.set(Refusal::of_close(ev.code(), &ev.reason()));
                c.on_close();
            }
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        *self.socket.borrow_mut() = Some(Socket {
            ws: ws.clone(),
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        });
        // An adopted socket: what it received goes first, then the handshake if it is open
        // already (otherwise `on_open` does it when it opens).
        if let Some(early) = early {
            if ws.ready_state() == WebSocket::OPEN {
                self.greet(early.asked);
            }
            for frame in early.frames {
                // A bad frame closes the connection: the rest belongs to a dead socket.
                if self.socket.borrow().is_none() {
                    break;
                }
                self.on_frame(frame);
            }
        }
    }

    /// Closes for good (the room view is going away).
    pub fn close(self: &Rc<Self>) {
        self.closed.set(true);
        self.save_to_cache();
        let bye = self.session.borrow_mut().clear_presence();
        self.send(&bye);
        self.socket.borrow_mut().take();
    }

    fn on_open(&self) {
        self.greet(false);
    }

    /// The handshake. `asked`: the socket already sent an empty sync step 1 (an adopted
    /// early socket), so ours is not sent again: the server would answer with the whole board
    /// twice.
    fn greet(&self, asked: bool) {
        let frames = self.session.borrow_mut().handshake();
        for f in frames.iter().skip(usize::from(asked)) {
            self.send(f);
        }
        // Our presence goes with the handshake so others see us at once.
        self.send_presence_now();
        if !self.session.borrow().is_synced() {
            self.signals.loading.set(Loading::Receiving);
        }
    }

    fn on_frame(self: &Rc<Self>, frame: Vec<u8>) {
        self.last_received.set(now_ms());
        // Frames are handled in the order they came: behind one being inflated, they wait.
        if self.inflating.get() {
            self.waiting.borrow_mut().push_back(frame);
            return;
        }
        self.route(frame);
    }

    /// A deflated frame goes to the browser's own zlib first; any other is handled now.
    fn route(self: &Rc<Self>, frame: Vec<u8>) {
        if frame.first() == Some(&wire::MSG_DEFLATED) {
            self.inflate(frame);
        } else {
            self.on_plain_frame(frame);
        }
    }

    /// Inflates a [`wire::MSG_DEFLATED`] frame (a big sync answer) with the browser's
    /// `DecompressionStream`, then handles it and whatever arrived meanwhile, in order. The
    /// browser's native zlib does in about 3 ms what `wire::inflate` compiled to wasm took
    /// 10–15 ms for (the 10k-shape room's 370 KB answer), on a first visit while the wasm still
    /// runs in V8's baseline compiler. Only sockets that asked for deflated frames get them,
    /// and they ask only where the browser has a `DecompressionStream` (see [`socket_url`]).
    fn inflate(self: &Rc<Self>, frame: Vec<u8>) {
        mark("huddle-inflate-start");
        self.inflating.set(true);
        let generation = self.generation.get();
        let weak = Rc::downgrade(self);
        leptos::task::spawn_local(async move {
            let inflated = inflate_natively(&frame[1..], wire::MAX_INFLATED_BYTES).await;
            let Some(c) = weak.upgrade() else { return };
            // The connection it came on has ended: the next one resyncs.
            if c.generation.get() != generation {
                return;
            }
            c.inflating.set(false);
            mark("huddle-inflated");
            match inflated {
                Ok(inner) => c.on_plain_frame(inner),
                Err(why) => return c.drop_bad_connection(&why),
            }
            while c.generation.get() == generation && !c.inflating.get() {
                let Some(next) = c.waiting.borrow_mut().pop_front() else { break };
                c.route(next);
            }
        });
    }

    fn on_plain_frame(self: &Rc<Self>, frame: Vec<u8>) {
        let mut deferred = self.deferred.borrow_mut();
        if !deferred.is_empty() {
            deferred.push_back(frame);
            return;
        }
        if frame.len() >= BIG_SYNC_BYTES && !self.session.borrow().is_synced() {
            let bytes = frame.len();
            deferred.push_back(frame);
            drop(deferred);
            mark("huddle-sync-received");
            self.signals.loading.set(Loading::Opening { bytes });
            // After the next paint: a timeout queued from an animation frame callback runs
            // once that frame is on screen. Hidden tabs get no animation frames, so a plain
            // timeout applies it too; whichever comes second finds nothing left to do.
            let apply = |weak: std::rc::Weak<Self>| {
                move || {
                    if let Some(c) = weak.upgrade() {
                        c.apply_deferred();
                    }
                }
            };
            let after_paint = apply(Rc::downgrade(self));
            request_animation_frame(move || set_timeout(after_paint, std::time::Duration::ZERO));
            set_timeout(apply(Rc::downgrade(self)), HIDDEN_APPLY_DELAY);
            return;
        }
        drop(deferred);
        self.handle_frame(&frame);
    }

    fn apply_deferred(self: &Rc<Self>) {
        if self.deferred.borrow().is_empty() {
            return;
        }
        mark("huddle-sync-applying");
        // Grow the wasm memory once, by about what the document will take, instead of a few
        // hundred times in small steps while yrs builds it (a trace of a 10k-shape open: 589
        // memory grows, 23 ms; with this, 7 grows, 1 ms). The block is freed at once and reused
        // by the allocator.
        let bytes: usize = self.deferred.borrow().iter().map(Vec::len).sum();
        drop(std::hint::black_box(Vec::<u8>::with_capacity(
            bytes.saturating_mul(HEAP_PER_SYNC_BYTE).min(MAX_HEAP_RESERVE),
        )));
        loop {
            let Some(frame) = self.deferred.borrow_mut().pop_front() else { return };
            self.handle_frame(&frame);
        }
    }

    fn handle_frame(self: &Rc<Self>, frame: &[u8]) {
        // Deflated frames were inflated natively on their way here (`Connection::inflate`).
        let received = self.session.borrow_mut().receive_inflated(frame);
        match received {
            Ok(received) => {
                for reply in &received.replies {
                    self.send(reply);
                }
                for event in received.events {
                    match event {
                        ClientEvent::Synced => {
                            mark("huddle-synced");
                            self.signals.loading.set(Loading::Done);
                            self.synced_at.set(now_ms());
                            self.signals.synced.set(true);
                            self.signals.status.set(Status::Connected);
                        }
                        ClientEvent::DocChanged => {
                            self.signals.doc_version.update(|v| *v += 1);
                            self.schedule_save();
                        }
                        ClientEvent::PresenceChanged { .. } => {
                            self.signals.presence_version.update(|v| *v += 1)
                        }
                    }
                }
            }
            Err(e) => self.drop_bad_connection(&e.to_string()),
        }
    }

    /// The server sent something we cannot read: this connection ends, the next one resyncs.
    fn drop_bad_connection(self: &Rc<Self>, why: &str) {
        leptos::logging::warn!("bad frame from server: {why}; reconnecting");
        self.socket.borrow_mut().take();
        self.on_close();
    }

    /// Frames held back or waiting belong to the connection that just ended or is being
    /// replaced (the next one resyncs); an inflation still running is disowned.
    fn forget_inbound(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        self.inflating.set(false);
        self.waiting.borrow_mut().clear();
        self.deferred.borrow_mut().clear();
    }

    fn on_close(self: &Rc<Self>) {
        self.socket.borrow_mut().take();
        self.asked_at.set(0.0);
        self.forget_inbound();
        self.signals.loading.set(Loading::Connecting);
        self.session.borrow_mut().disconnected();
        // Others' presence is stale until we are back.
        self.signals.presence_version.update(|v| *v += 1);
        if !self.closed.get() {
            self.schedule_reconnect();
        }
    }

    fn schedule_reconnect(self: &Rc<Self>) {
        // Exponential backoff with full jitter: spreads a crowd of clients reconnecting after a
        // server restart over the whole window instead of hitting it at once. It starts over
        // only after a connection that synced and then lasted (see [`HEALTHY_MS`]): a server
        // that lets us in and then cuts us off (a socket too slow for it, a stored update it
        // cannot load) is retried less and less often, not every half second for ever.
        let synced_at = self.synced_at.replace(0.0);
        if synced_at > 0.0 && now_ms() - synced_at >= HEALTHY_MS {
            self.attempt.set(0);
        }
        self.opened_at.set(0.0);
        let refused = self.refused.take();
        let attempt = match refused {
            Some(_) => self.attempt.get().max(REFUSED_ATTEMPT),
            None => self.attempt.get(),
        };
        self.attempt.set(attempt.saturating_add(1));
        let delay = backoff_ms(attempt, js_sys::Math::random());
        let offline = web_sys::window().is_some_and(|w| !w.navigator().on_line());
        self.signals.status.set(match refused {
            _ if offline => Status::Offline,
            Some(why) => Status::Refused { why, at_ms: now_ms() + delay },
            None => Status::Reconnecting { at_ms: now_ms() + delay },
        });
        let ticket = self.reconnect_ticket.get().wrapping_add(1);
        self.reconnect_ticket.set(ticket);
        let weak = Rc::downgrade(self);
        set_timeout(
            move || {
                // A socket opened since (`connect` takes a ticket too) makes this one stale.
                if let Some(c) = weak.upgrade()
                    && c.reconnect_ticket.get() == ticket
                {
                    c.connect();
                }
            },
            std::time::Duration::from_millis(delay as u64),
        );
    }

    /// True while the socket is open.
    pub fn is_open(&self) -> bool {
        self.socket.borrow().as_ref().is_some_and(|s| s.ws.ready_state() == WebSocket::OPEN)
    }

    fn send(&self, frame: &[u8]) {
        if let Some(s) = self.socket.borrow().as_ref()
            && s.ws.ready_state() == WebSocket::OPEN
        {
            let _ = s.ws.send_with_u8_array(frame);
        }
    }

    /// Runs a local edit (tracked by undo) and sends it. Inside a gesture (see
    /// [`Connection::begin_action`]) it joins the gesture's undo step; otherwise edits less than
    /// [`UNDO_MERGE_MS`] apart (typing) share a step.
    pub fn edit(self: &Rc<Self>, f: impl FnOnce(&Board, &mut TransactionMut<'_>)) {
        if !self.in_action.get() {
            let now = now_ms();
            if now - self.last_edit_at.get() >= UNDO_MERGE_MS {
                self.history.cut();
            }
            self.last_edit_at.set(now);
        }
        {
            let session = self.session.borrow();
            let mut txn = session.doc().transact_mut_with(LOCAL);
            f(self.history.board(), &mut txn);
        }
        self.after_local_change();
    }

    /// Starts a pointer gesture: every edit until [`Connection::end_action`] is one undo step,
    /// however long it takes (a slow pen stroke, a drag with pauses).
    pub fn begin_action(&self) {
        self.history.cut();
        self.in_action.set(true);
    }

    /// Ends the gesture begun by [`Connection::begin_action`]; the next edit starts a new step.
    pub fn end_action(&self) {
        self.in_action.set(false);
        self.last_edit_at.set(0.0);
    }

    /// Undoes this user's last edit: only the fields it changed that nobody has changed since,
    /// never anyone else's edit, and never bringing back a shape someone else deleted.
    pub fn undo(self: &Rc<Self>) {
        self.step_history(true);
    }

    /// Redoes this user's last undone edit, on the same terms as [`Connection::undo`].
    pub fn redo(self: &Rc<Self>) {
        self.step_history(false);
    }

    fn step_history(self: &Rc<Self>, undo: bool) {
        let changed = {
            let session = self.session.borrow();
            if undo { self.history.undo(session.doc()) } else { self.history.redo(session.doc()) }
        };
        if changed {
            self.after_local_change();
        }
    }

    fn after_local_change(self: &Rc<Self>) {
        let frames = self.session.borrow_mut().drain_local_updates();
        if self.is_open() {
            // Before the server's greeting is answered, the answer carries these (see
            // `ClientSession::answered_greeting`).
            if self.session.borrow().answered_greeting() {
                for f in &frames {
                    self.send(f);
                }
            }
        } else if !frames.is_empty() {
            self.cache.borrow_mut().offline_edits += 1;
        }
        self.signals.doc_version.update(|v| *v += 1);
        self.schedule_save();
    }

    /// Connects, and meanwhile restores the document saved in the offline cache (reading
    /// IndexedDB takes ~100 ms: the socket does not wait for it).
    pub fn start(self: &Rc<Self>) {
        self.connect();
        let me = Rc::clone(self);
        leptos::task::spawn_local(async move {
            let saved = crate::cache::load(&me.room).await.unwrap_or_default();
            // Each record that applies counts; a damaged one is skipped. All are now in the
            // document, so the next whole copy replaces them.
            let mut restored = false;
            for (key, record) in saved {
                restored |= me.session.borrow_mut().restore(&record).is_ok();
                me.cache.borrow_mut().covered.push(key);
            }
            if restored {
                me.signals.doc_version.update(|v| *v += 1);
                // If the server's greeting was answered already, offline edits in the cache
                // would not reach it until the next handshake: send what it lacks now (not the
                // whole copy: for a big room that is megabytes it has).
                let catch_up = me.session.borrow().catch_up();
                if let Some(frame) = catch_up.filter(|_| me.is_open()) {
                    me.send(&frame);
                }
            }
        });
    }

    /// The heartbeat, every [`huddle_protocol::presence::HEARTBEAT_MS`]: re-sends our presence
    /// (so peers know we are here) and checks that the socket is alive. A socket that brought
    /// nothing since the previous heartbeat is asked for everyone's presence, which the server
    /// always answers; one that has not answered by the next heartbeat is dead even though the
    /// browser has not noticed (a network that went away without closing anything, a laptop
    /// that slept): it is dropped and the connection starts over, so the status never says
    /// "Connected" over a dead socket for long. In a room with company, others' heartbeats
    /// keep arriving and nothing is asked (the answer lists everyone: big in a big room).
    ///
    /// Before the connection's first sync the server may still be sending a big answer, which
    /// the browser hands over only once all of it is in, and which the server answers the
    /// question behind: asking then would end a slow first sync every time. A socket is given
    /// [`OPEN_DEADLINE_MS`] to open and [`FIRST_SYNC_DEADLINE_MS`] to sync instead.
    pub fn heartbeat(self: &Rc<Self>) {
        let now = now_ms();
        let opened_at = self.opened_at.get();
        let connecting = self
            .socket
            .borrow()
            .as_ref()
            .is_some_and(|s| s.ws.ready_state() == WebSocket::CONNECTING);
        if connecting && opened_at > 0.0 && now - opened_at > OPEN_DEADLINE_MS {
            leptos::logging::warn!("the socket did not open in time; reconnecting");
            self.drop_socket();
            return;
        }
        if !self.is_open() {
            return;
        }
        if self.synced_at.get() == 0.0 {
            if opened_at > 0.0 && now - opened_at > FIRST_SYNC_DEADLINE_MS {
                leptos::logging::warn!("the first sync did not finish in time; reconnecting");
                self.drop_socket();
            } else {
                self.send_presence_now();
            }
            return;
        }
        let heard = self.last_received.get();
        let asked = self.asked_at.get();
        if asked > 0.0 && heard < asked {
            leptos::logging::warn!("no answer from the server for a heartbeat; reconnecting");
            self.drop_socket();
            return;
        }
        self.send_presence_now();
        if heard < self.heartbeat_at.replace(now) {
            self.send(&wire::encode(&huddle_protocol::yrs::sync::Message::AwarenessQuery));
            self.asked_at.set(now);
        } else {
            self.asked_at.set(0.0);
        }
    }

    /// The browser says the network is gone: the socket cannot work, whatever its state says,
    /// so it is dropped at once and the status shows offline (edits keep going into the
    /// document and leave when the network is back).
    pub fn went_offline(self: &Rc<Self>) {
        if self.socket.borrow().is_some() {
            self.drop_socket();
        } else if !self.closed.get() {
            self.signals.status.set(Status::Offline);
        }
    }

    /// Drops the socket as if it had closed.
    fn drop_socket(self: &Rc<Self>) {
        self.socket.borrow_mut().take();
        self.on_close();
    }

    /// Reconnects now if the socket is down (the browser came back online).
    pub fn reconnect_now(self: &Rc<Self>) {
        if self.socket.borrow().is_none() && !self.closed.get() {
            self.attempt.set(0);
            self.connect();
        }
    }

    /// Writes the document to the offline cache now (the page is going away).
    pub fn save_now(self: &Rc<Self>) {
        self.save_to_cache();
    }

    /// Whether leaving the page now would lose edits: some were made while disconnected, no
    /// save since them succeeded, and the offline cache is failing (storage full or
    /// unavailable). While it works, the save on the way out (`pagehide`) keeps them, so a
    /// reload right after an offline edit is not held up by a question.
    pub fn would_lose_edits(&self) -> bool {
        let cache = self.cache.borrow();
        !self.is_open()
            && cache.offline_edits > cache.saved_offline_edits
            && self.signals.cache_failed.get_untracked()
    }

    /// Saves the document to the offline cache soon (coalescing bursts of edits).
    fn schedule_save(self: &Rc<Self>) {
        self.signals.cached.set(false);
        if std::mem::replace(&mut self.cache.borrow_mut().scheduled, true) {
            return;
        }
        let weak = Rc::downgrade(self);
        set_timeout(
            move || {
                if let Some(c) = weak.upgrade() {
                    c.cache.borrow_mut().scheduled = false;
                    c.save_to_cache();
                }
            },
            std::time::Duration::from_millis(SAVE_DELAY_MS),
        );
    }

    /// Writes to the offline cache what changed since the last save, as an update beside a
    /// whole copy; every [`MAX_CACHED_UPDATES`] saves, or once the updates add up to half the
    /// copy's size, a whole copy instead, which replaces the records it holds. Encoding the
    /// whole document on every save (every 300 ms while anyone draws) stalled the page for up
    /// to 55 ms a time in a 40,000-shape room.
    fn save_to_cache(self: &Rc<Self>) {
        self.save_to_cache_as(false);
    }

    /// [`Connection::save_to_cache`]; `retry_of_failed`: this is a retry after a failed save.
    fn save_to_cache_as(self: &Rc<Self>, retry_of_failed: bool) {
        let (key, bytes, replaced, offline_edits) = {
            let mut cache = self.cache.borrow_mut();
            cache.count = cache.count.wrapping_add(1);
            let offline_edits = cache.offline_edits;
            let key = crate::cache::record_key(&self.room, &cache.page, cache.count);
            let session = self.session.borrow();
            let txn = session.doc().transact();
            let update_since = match &cache.saved_sv {
                Some(sv)
                    if cache.updates < MAX_CACHED_UPDATES
                        && cache.update_bytes <= cache.whole_bytes / 2 =>
                {
                    Some(txn.encode_state_as_update_v1(sv))
                }
                _ => None,
            };
            cache.saved_sv = Some(txn.state_vector());
            match update_since {
                Some(update) => {
                    cache.updates += 1;
                    cache.update_bytes += update.len();
                    cache.covered.push(key.clone());
                    (key, update, Vec::new(), offline_edits)
                }
                None => {
                    let copy = txn.encode_state_as_update_v1(&StateVector::default());
                    cache.updates = 0;
                    cache.update_bytes = 0;
                    cache.whole_bytes = copy.len();
                    let replaced = std::mem::replace(&mut cache.covered, vec![key.clone()]);
                    (key, copy, replaced, offline_edits)
                }
            }
        };
        let epoch = {
            let mut cache = self.cache.borrow_mut();
            cache.in_flight += 1;
            cache.failures
        };
        let weak = Rc::downgrade(self);
        let (cached, failed) = (self.signals.cached, self.signals.cache_failed);
        leptos::task::spawn_local(async move {
            let written = crate::cache::save(&key, &bytes, &replaced).await;
            let Some(conn) = weak.upgrade() else { return };
            let (ok, current, retry) = {
                let mut cache = conn.cache.borrow_mut();
                cache.in_flight -= 1;
                let ok = written && epoch == cache.failures;
                let mut retry = None;
                if ok {
                    cache.saved_offline_edits = cache.saved_offline_edits.max(offline_edits);
                    cache.retry_ms = 0;
                } else {
                    if !written {
                        // Nothing changed: what this save would have replaced is still there.
                        cache.failures += 1;
                        cache.covered.extend(replaced);
                    }
                    // The next save writes a whole copy, which holds what this one lost.
                    cache.saved_sv = None;
                    // Storage may come back (space freed) with no edit to trigger a save: try
                    // again, less and less often while retries fail, soon after a save for an
                    // edit failed.
                    cache.retry_ms = if retry_of_failed {
                        (cache.retry_ms * 2).clamp(CACHE_RETRY_FIRST_MS, CACHE_RETRY_MAX_MS)
                    } else {
                        CACHE_RETRY_FIRST_MS
                    };
                    cache.retry_timers = cache.retry_timers.wrapping_add(1);
                    retry = Some((cache.retry_ms, cache.retry_timers));
                }
                // Current unless another save is due or still being written.
                (ok, ok && !cache.scheduled && cache.in_flight == 0, retry)
            };
            let _ = failed.try_set(!ok);
            if current {
                let _ = cached.try_set(true);
            } else if !ok {
                let _ = cached.try_set(false);
            }
            if let Some((delay, timer)) = retry {
                let weak = Rc::downgrade(&conn);
                set_timeout(
                    move || {
                        let Some(c) = weak.upgrade() else { return };
                        let due = {
                            let cache = c.cache.borrow();
                            // Not if a later timer was armed, a save since worked, or one is
                            // scheduled anyway (its failure arms a timer again).
                            cache.retry_timers == timer && cache.retry_ms != 0 && !cache.scheduled
                        };
                        if due && !c.closed.get() {
                            c.save_to_cache_as(true);
                        }
                    },
                    std::time::Duration::from_millis(delay),
                );
            }
        });
    }

    /// Reads the document.
    pub fn with_doc<R>(&self, f: impl FnOnce(&Doc) -> R) -> R {
        f(self.session.borrow().doc())
    }

    /// A number that changes whenever the chat does, so the chat panel re-reads it only then
    /// (a drag on the board changes the document at pointer rate) but always then.
    pub fn chat_version(&self) -> u64 {
        self.chat_version.load(Ordering::Relaxed)
    }

    /// Our awareness client id.
    pub fn client_id(&self) -> u64 {
        self.session.borrow().client_id()
    }

    /// Everyone else's presence, by awareness client id.
    pub fn peers(&self) -> Vec<(u64, Presence)> {
        if !self.is_open() {
            return Vec::new();
        }
        self.session.borrow().peers()
    }

    /// Changes our presence; sent at most every 33 ms (the last change always goes out).
    pub fn update_presence(self: &Rc<Self>, f: impl FnOnce(&mut Presence)) {
        f(&mut self.presence.borrow_mut());
        let since = now_ms() - self.presence_sent_at.get();
        if since >= PRESENCE_INTERVAL_MS {
            self.send_presence_now();
        } else if !self.presence_timer.replace(true) {
            let weak = Rc::downgrade(self);
            set_timeout(
                move || {
                    if let Some(c) = weak.upgrade() {
                        c.presence_timer.set(false);
                        c.send_presence_now();
                    }
                },
                std::time::Duration::from_millis((PRESENCE_INTERVAL_MS - since).max(1.0) as u64),
            );
        }
    }

    /// Our current presence.
    pub fn presence(&self) -> Presence {
        self.presence.borrow().clone()
    }

    /// Announces us as `user` from now on (the name prompt was answered).
    pub fn join(self: &Rc<Self>, user: User) {
        self.presence.borrow_mut().user = user;
        self.announced.set(true);
        self.send_presence_now();
    }

    /// Sends our presence now (also the heartbeat), once we are announced.
    pub fn send_presence_now(&self) {
        if !self.announced.get() {
            return;
        }
        self.presence_sent_at.set(now_ms());
        let presence = self.presence.borrow().clone();
        let frame = self.session.borrow_mut().set_presence(&presence);
        if let Ok(frame) = frame {
            self.send(&frame);
        }
    }
}

/// `ws(s)://<this host>/ws/<room>?deflate=1`: we read deflated frames, so a big room's first
/// sync comes compressed (`wire::MSG_DEFLATED`), 3.8x smaller. Asked only where the browser
/// can inflate it natively (all current ones can); elsewhere the plain URL. `index.html`'s
/// early socket makes the same choice, so the app can adopt it.
fn socket_url(room: &str) -> String {
    let location = web_sys::window().map(|w| w.location());
    let (protocol, host) = location
        .map(|l| (l.protocol().unwrap_or_default(), l.host().unwrap_or_default()))
        .unwrap_or_default();
    let scheme = if protocol == "https:" { "wss" } else { "ws" };
    if native_inflate_available() {
        format!("{scheme}://{host}/ws/{room}?{}", wire::DEFLATE_QUERY)
    } else {
        format!("{scheme}://{host}/ws/{room}")
    }
}

/// Whether the browser has a `DecompressionStream` that reads raw DEFLATE.
fn native_inflate_available() -> bool {
    let has = web_sys::window().is_some_and(|w| {
        js_sys::Reflect::has(&w, &wasm_bindgen::JsValue::from_str("DecompressionStream"))
            .unwrap_or(false)
    });
    has && DecompressionStream::new(DEFLATE_RAW).is_ok()
}

thread_local! {
    /// A promise rejection handler that does nothing (see [`ignore_rejection`]). One for the
    /// page's lifetime.
    static IGNORE_REJECTION: Closure<dyn FnMut(wasm_bindgen::JsValue)> =
        Closure::new(|_: wasm_bindgen::JsValue| {});
}

/// Lets `promise` fail quietly: for promises whose failure is seen elsewhere or changes nothing,
/// which would otherwise be reported as unhandled rejections.
pub fn ignore_rejection(promise: &js_sys::Promise) {
    IGNORE_REJECTION.with(|ignore| {
        let _ = promise.catch(ignore);
    });
}

/// The format name of raw DEFLATE, as `wire::deflate` writes it.
const DEFLATE_RAW: &str = "deflate-raw";

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// The browser's `DecompressionStream`: declared here because web-sys has it only behind
    /// its `web_sys_unstable_apis` cfg, which would change how every web-sys item is built.
    type DecompressionStream;
    #[wasm_bindgen(constructor, catch)]
    fn new(format: &str) -> Result<DecompressionStream, wasm_bindgen::JsValue>;
    #[wasm_bindgen(method, getter)]
    fn readable(this: &DecompressionStream) -> web_sys::ReadableStream;
    #[wasm_bindgen(method, getter)]
    fn writable(this: &DecompressionStream) -> web_sys::WritableStream;
}

/// Raw DEFLATE `body` inflated by the browser's `DecompressionStream`, read piece by piece so
/// that a compression bomb stops at `limit` bytes.
///
/// # Errors
/// Why it could not be inflated: corrupt, over the limit, or no `DecompressionStream`.
async fn inflate_natively(body: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    use wasm_bindgen_futures::JsFuture;
    let js = |e: wasm_bindgen::JsValue| format!("cannot inflate: {e:?}");
    let inflater = DecompressionStream::new(DEFLATE_RAW).map_err(js)?;
    // Written straight into the stream: going through a `Blob` read it back asynchronously and
    // made inflating slower than doing it in wasm. Errors show up on the reading side; the
    // writer's own promises reject too, and are caught so the console does not report them.
    let writer = inflater.writable().get_writer().map_err(js)?;
    ignore_rejection(&writer.write_with_chunk(&js_sys::Uint8Array::from(body)));
    ignore_rejection(&writer.close());
    let reader: web_sys::ReadableStreamDefaultReader =
        inflater.readable().get_reader().unchecked_into();
    let field = |o: &wasm_bindgen::JsValue, name: &str| {
        js_sys::Reflect::get(o, &wasm_bindgen::JsValue::from_str(name)).unwrap_or_default()
    };
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    loop {
        let read = JsFuture::from(reader.read()).await.map_err(js)?;
        if field(&read, "done").as_bool().unwrap_or(true) {
            return Ok(out);
        }
        let piece: js_sys::Uint8Array = field(&read, "value").dyn_into().map_err(js)?;
        let at = out.len();
        let len = piece.length() as usize;
        if at + len > limit {
            let _ = reader.cancel();
            return Err(format!("compressed frame inflates to more than {limit} bytes"));
        }
        out.resize(at + len, 0);
        piece.copy_to(&mut out[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_full_jitter_up_to_the_cap() {
        let ceiling = |attempt| backoff_ms(attempt, 1.0);
        assert_eq!(ceiling(1), 2.0 * ceiling(0));
        assert_eq!(ceiling(3), 8.0 * ceiling(0));
        assert_eq!(ceiling(30), BACKOFF_CAP_MS);
        assert_eq!(ceiling(u32::MAX), BACKOFF_CAP_MS);
        // Full jitter: anywhere from nothing to the ceiling.
        assert_eq!(backoff_ms(5, 0.0), 0.0);
        assert_eq!(backoff_ms(5, 0.5), ceiling(5) / 2.0);
    }
}
