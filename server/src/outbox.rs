//! A socket's outgoing frames, and the flusher that writes them.
//!
//! Why not a task per socket draining a channel (axum's chat example, and Huddle until
//! session 13): on the relay path every delivered update then woke its socket's task, which
//! polled its reader and its writer, took the split stream's lock and copied the frame into
//! tungstenite's buffer before the `write`. Here a broadcast appends the shared payload, with
//! its frame header, to each recipient's [`Outbox`] and marks it due; one [`Flusher`] task per
//! runtime thread then writes every due outbox with one `writev` each. Woken once per round,
//! it runs after the tasks already woken (the readers of everything that arrived together; see
//! [`Flusher`]'s task for the multi-thread runtime), so frames that arrived together still
//! leave a socket in one write, as they did before. A
//! socket's own task is woken only when its socket is full (it then writes the rest as the
//! socket takes it) or writing failed.
//!
//! tungstenite still reads every frame; what it writes itself (pongs, the reply to a close)
//! joins the outbox through [`Wire`], behind the frames already queued, so the byte stream
//! stays one well-formed sequence of frames.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use huddle_protocol::wire::CloseCode;
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::stats::Stats;

/// Longest header of a frame the server sends: unmasked, with a 64-bit length.
const MAX_HEADER: usize = 10;

/// Most frames one `writev` takes, at two slices each (Linux takes up to 1,024 slices).
const FRAMES_PER_WRITE: usize = 64;

/// Queue slots an emptied queue keeps; a bigger one (left by a burst, a slow reader) is freed,
/// so an idle socket does not keep the memory of its busiest moment.
const KEEP_SLOTS: usize = 16;

/// Why a socket is being cut off from outside its own reader.
#[derive(Debug)]
pub struct Kick {
    token: CancellationToken,
    reason: Mutex<Option<(CloseCode, &'static str)>>,
}

impl Kick {
    fn new() -> Self {
        Self { token: CancellationToken::new(), reason: Mutex::new(None) }
    }

    /// Asks the socket to close with `code` (the first reason given wins).
    pub fn kick(&self, code: CloseCode, reason: &'static str) {
        self.reason.lock().get_or_insert((code, reason));
        self.token.cancel();
    }

    /// Resolves once the socket was kicked.
    pub async fn kicked(&self) {
        self.token.cancelled().await;
    }

    /// Whether the socket was kicked.
    pub fn token_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The reason given, if kicked.
    pub fn reason(&self) -> Option<(CloseCode, &'static str)> {
        *self.reason.lock()
    }
}

/// A binary message framed for sending: its payload, shared by every recipient, and its
/// WebSocket header. Server frames are unmasked, so the header depends on the length only and
/// a broadcast frames its payload once for all of them.
#[derive(Debug, Clone)]
pub struct Framed {
    header: [u8; MAX_HEADER],
    header_len: u8,
    payload: Bytes,
}

impl Framed {
    /// `payload` as one binary frame.
    pub fn binary(payload: Bytes) -> Self {
        let mut header = [0; MAX_HEADER];
        let mut cursor = io::Cursor::new(&mut header[..]);
        let frame = Frame::message(Bytes::new(), OpCode::Data(Data::Binary), true);
        // Cannot fail: the buffer holds the longest header of an unmasked frame.
        let _ = frame.header().format(payload.len() as u64, &mut cursor);
        let header_len = u8::try_from(cursor.position()).unwrap_or(0);
        Self { header, header_len, payload }
    }

    /// Bytes already framed (control frames, tungstenite's own writes).
    fn raw(bytes: Bytes) -> Self {
        Self { header: [0; MAX_HEADER], header_len: 0, payload: bytes }
    }

    fn len(&self) -> usize {
        usize::from(self.header_len) + self.payload.len()
    }
}

/// Longest close reason: a control frame's payload is at most 125 bytes (RFC 6455 section
/// 5.5), two of them the code. A browser fails a connection whose close frame is longer, and
/// the client then sees 1006 instead of the code it earned.
const MAX_CLOSE_REASON: usize = 123;

/// A close frame with `code` and `reason`, for [`Outbox::close_with`]; a reason too long for a
/// control frame is cut at a character boundary (some carry text from the peer's input).
pub fn close_frame(code: CloseCode, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason[..end];
    control(Frame::close(Some(CloseFrame { code: code.0.into(), reason: reason.into() })))
}

/// An empty ping frame.
pub fn ping_frame() -> Bytes {
    control(Frame::ping(Bytes::new()))
}

fn control(frame: Frame) -> Bytes {
    let mut out = Vec::with_capacity(frame.len());
    // Writing into a `Vec` cannot fail.
    let _ = frame.format(&mut out);
    Bytes::from(out)
}

/// A frame in the queue, and how much of it is written.
struct Pending {
    frame: Framed,
    sent: usize,
    /// Not a broadcast: it does not count against broadcasts' byte budget (see
    /// [`Queue::exempt`]).
    exempt: bool,
}

impl Queue {
    /// Bytes of the frame being written that have not been written yet.
    fn in_flight(&self) -> usize {
        self.frames.front().filter(|p| p.sent > 0).map_or(0, |p| p.frame.len() - p.sent)
    }
}

impl Pending {
    /// What is left to write, as at most two slices.
    fn rest(&self) -> (&[u8], &[u8]) {
        let header = usize::from(self.frame.header_len);
        if self.sent < header {
            (&self.frame.header[self.sent..header], &self.frame.payload)
        } else {
            (&[], &self.frame.payload[self.sent - header..])
        }
    }
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Pending>,
    /// Payload bytes of the frames not started yet: what the byte budget counts. A frame
    /// being written belongs to the socket already (as it belonged to tungstenite's buffer
    /// before), so a big answer does not hold the budget for as long as the client reads it.
    bytes: usize,
    /// Of `bytes`, those of frames that are not broadcasts: answers the socket asked for
    /// (paced by [`Outbox::offer_reply`] instead) and control frames. Broadcasts are measured
    /// against the budget without them, so a big answer queued behind a frame still being
    /// written does not get the socket cut off by the next broadcast.
    exempt: usize,
    /// In the flusher's list.
    due: bool,
    /// The socket was full: its own task writes the rest as the socket takes it.
    blocked: bool,
    /// Nothing is written yet (see [`Outbox::release`]).
    held: bool,
    /// Writing failed: the connection is gone, and frames are dropped.
    failed: bool,
    /// The socket is closing (see [`Outbox::close_with`]): only control frames are taken.
    closing: bool,
}

/// What a queued frame counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// The frame and byte limits: broadcasts.
    Full,
    /// The frame limit only: answers the socket asked for, which wait for room beforehand.
    Frames,
    /// The frame limit only, and taken while the socket closes: control frames.
    Control,
}

/// How far one call to write got.
enum Progress {
    Done,
    Full,
    Failed,
}

/// Budgets of one socket's outbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most frames queued before the socket is cut off as too slow.
    pub max_frames: usize,
    /// Most bytes queued before the socket is cut off as too slow.
    pub max_bytes: usize,
    /// Longest the socket may take none of what is waiting to be written before it is cut off
    /// as not reading. Nothing else would notice a peer that stops reading in the middle of a
    /// big answer while it keeps sending: its liveness comes from what it sends, and the
    /// queue's limits only from what is queued after.
    pub write_stall: Duration,
}

/// The sending side of one socket: frames waiting to be written, and the write half of the
/// connection they are written to.
pub struct Outbox {
    queue: Mutex<Queue>,
    tcp: OwnedWriteHalf,
    flusher: Arc<Flusher>,
    /// Cuts the socket off.
    pub kick: Kick,
    /// Signalled each time a frame starts being written (a waiting answer may fit now).
    drained: Notify,
    /// Wakes the socket's task: the socket is full, or writing failed.
    task: Notify,
    limits: Limits,
    /// Bytes read from the socket so far (see [`Outbox::bytes_read`]).
    read: std::sync::atomic::AtomicU64,
    /// What bytes read of messages not yet whole count against (see [`InputBudget`]).
    input: std::sync::OnceLock<Arc<InputBudget>>,
    /// `read` when the last whole data message was taken (see [`Outbox::message_done`]).
    mark: std::sync::atomic::AtomicU64,
    /// What this socket holds of the input budget now.
    charged: std::sync::atomic::AtomicU64,
}

/// Bytes read of messages not yet whole, on every socket together, and the most they may be.
///
/// tungstenite keeps what it has read of a message until the message is whole (a frame that
/// has not all arrived, or the fragments of one message), up to the largest message accepted
/// (32 MiB by default). One socket holding that is allowed; a thousand, each trickling or
/// idling in the middle of one with a ping now and then to stay alive, would hold 32 GiB. Only
/// what passes [`SMALL_UNFINISHED`] on a socket is counted (the messages of healthy clients
/// are smaller and whole within a read or two).
///
/// Who gets the room when a message would take the budget past its limit: the fastest. If
/// closing the sockets holding part of a message slower than it (bytes held over the time since
/// they began to count, a second at least) makes room, they are closed (1013, their clients
/// retry later), slowest first, until it fits; if not, the socket itself is closed, unless all
/// the others were slower (then it may go on alone, with a message as big as the largest
/// accepted, whatever the budget). First come, first served would let a few hundred peers
/// trickling at the lowest rate allowed (see `connection::Progress`) keep a legitimate big
/// upload (a long offline session coming back) out for as long as their messages last: with
/// slowest-first, they only ever hold room no faster sender needs. A peer that wants the room
/// has to outpace the sender it would displace, with the bandwidth that costs.
///
/// So what all sockets hold of unfinished messages stays under the budget (or one message,
/// when that is larger), plus [`SMALL_UNFINISHED`] per socket, plus what sockets just closed
/// to make room held until their tasks end (they read no more; their close frame waits at
/// most `connection::CLOSE_WRITE_TIMEOUT`, after their buffers are freed).
#[derive(Debug)]
pub struct InputBudget {
    held: std::sync::atomic::AtomicU64,
    limit: u64,
    /// The sockets holding something of the budget (a message past [`SMALL_UNFINISHED`]),
    /// with when they began to. Few at any time: ordinary messages never get here.
    holders: Mutex<Vec<Holder>>,
}

/// A socket holding part of the [`InputBudget`].
#[derive(Debug)]
struct Holder {
    outbox: std::sync::Weak<Outbox>,
    began: tokio::time::Instant,
}

impl Holder {
    /// Bytes a second this holder's message has come at since it began to count, reckoned
    /// over a second at least (a burst is not a rate).
    fn rate(&self, outbox: &Outbox, now: tokio::time::Instant) -> f64 {
        let held = outbox.charged.load(Ordering::Relaxed) as f64;
        held / (now - self.began).as_secs_f64().max(1.0)
    }
}

/// What a socket may hold of an unfinished message whatever the [`InputBudget`] says: the
/// ordinary messages of a healthy client are smaller and whole within a read or two.
pub const SMALL_UNFINISHED: u64 = 64 << 10;

/// Why a socket was closed to keep the [`InputBudget`].
const BUDGET_SPENT: &str = "server busy: too many unfinished messages; try again";

impl InputBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            held: std::sync::atomic::AtomicU64::new(0),
            limit,
            holders: Mutex::new(Vec::new()),
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes back what `outbox` holds and takes it off the holders.
    fn release(&self, outbox: &Outbox) {
        let mut holders = self.holders.lock();
        let charged = outbox.charged.swap(0, Ordering::Relaxed);
        self.held.fetch_sub(charged, Ordering::Relaxed);
        if let Some(at) = holders.iter().position(|h| std::ptr::eq(h.outbox.as_ptr(), outbox)) {
            holders.swap_remove(at);
        }
    }

    /// The budget is over its limit since `me`'s last read: closes holders slower than `me`,
    /// slowest first, until it is not, if closing them all would do. Returns whether `me` may
    /// go on (it is not closed).
    fn make_room(&self, me: &Arc<Outbox>) -> bool {
        let now = tokio::time::Instant::now();
        let mut my_rate = 0.0;
        // The other holders, by rate. Declared before the lock's guard, so dropped after it:
        // an `Outbox` whose last reference went here would leave the holders on drop, taking
        // the lock again.
        let mut others: Vec<(f64, Arc<Outbox>)> = Vec::new();
        let mut holders = self.holders.lock();
        for holder in holders.iter() {
            let Some(outbox) = holder.outbox.upgrade() else { continue };
            let rate = holder.rate(&outbox, now);
            if Arc::ptr_eq(&outbox, me) {
                my_rate = rate;
            } else {
                others.push((rate, outbox));
            }
        }
        others.sort_by(|a, b| a.0.total_cmp(&b.0));
        let slower = others.iter().take_while(|(rate, _)| *rate < my_rate).count();
        let held_by_slower: u64 =
            others[..slower].iter().map(|(_, o)| o.charged.load(Ordering::Relaxed)).sum();
        let mut closed = 0;
        // Nobody is closed for nothing: if all the slower ones would not make room, `me` is
        // the one to give way.
        if slower == others.len() || self.held().saturating_sub(held_by_slower) <= self.limit {
            for (_, victim) in &others[..slower] {
                if self.held() <= self.limit {
                    break;
                }
                victim.kick.kick(CloseCode::TRY_AGAIN_LATER, BUDGET_SPENT);
                // What it held is free at once (its memory once its task ends, soon: kicked,
                // it reads and charges no more).
                let charged = victim.charged.swap(0, Ordering::Relaxed);
                self.held.fetch_sub(charged, Ordering::Relaxed);
                closed += 1;
            }
        }
        let victims = &others[..closed];
        holders.retain(|h| !victims.iter().any(|(_, v)| std::ptr::eq(h.outbox.as_ptr(), &**v)));
        drop(holders);
        if self.held() <= self.limit || closed == others.len() {
            return true;
        }
        // The socket is done for: what it held is free for the others at once.
        me.message_done();
        me.kick.kick(CloseCode::TRY_AGAIN_LATER, BUDGET_SPENT);
        false
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.message_done();
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Outbox {
    /// An outbox writing to `tcp`, through `flusher`. It holds its frames until
    /// [`Outbox::release`], so the greeting and the answer to the client's first frame can
    /// leave in one write.
    pub fn new(tcp: OwnedWriteHalf, flusher: Arc<Flusher>, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue { held: true, ..Queue::default() }),
            tcp,
            flusher,
            kick: Kick::new(),
            drained: Notify::new(),
            task: Notify::new(),
            read: std::sync::atomic::AtomicU64::new(0),
            input: std::sync::OnceLock::new(),
            mark: std::sync::atomic::AtomicU64::new(0),
            charged: std::sync::atomic::AtomicU64::new(0),
            limits,
        })
    }

    /// Counts what this socket reads of unfinished messages against `budget` from now on.
    pub fn count_input_against(&self, budget: Arc<InputBudget>) {
        let _ = self.input.set(budget);
    }

    /// A whole data message was taken from the socket: what it held of the input budget is
    /// free again. (Not for pings: a peer could otherwise clear its account in the middle of a
    /// fragmented message with a ping between two fragments.)
    pub fn message_done(&self) {
        self.mark.store(self.read.load(Ordering::Relaxed), Ordering::Relaxed);
        // Only this socket's own reads make its charge more than zero, so a zero read here is
        // not stale: the common case passes without the lock.
        if self.charged.load(Ordering::Relaxed) > 0
            && let Some(budget) = self.input.get()
        {
            budget.release(self);
        }
    }

    /// A control frame (a ping or pong, `payload` bytes) was read: its bytes are no part of a
    /// message being put together (a client's control frames are masked: 6 bytes of header
    /// for the at most 125 of payload they may carry).
    pub fn control_frame_read(&self, payload: usize) {
        self.mark.fetch_add(6 + payload as u64, Ordering::Relaxed);
    }

    /// Bytes read of a data message not yet whole (and of any frame read ahead after it).
    pub fn unfinished(&self) -> u64 {
        self.read.load(Ordering::Relaxed).saturating_sub(self.mark.load(Ordering::Relaxed))
    }

    /// Counts what was read since the last whole message against the input budget, making
    /// room in it if need be (see [`InputBudget`]). Returns false, and cuts the socket off, if
    /// the socket is to give way.
    fn charge_unfinished(self: &Arc<Self>) -> bool {
        let Some(budget) = self.input.get() else { return true };
        let unfinished = self.unfinished();
        // A message in progress below the size that counts is the common case: the shared
        // counter is left alone. A socket closed to make room charges no more.
        if unfinished <= self.charged.load(Ordering::Relaxed)
            || unfinished <= SMALL_UNFINISHED
            || self.kick.token_cancelled()
        {
            return true;
        }
        let over = {
            // Charges change under the holders' lock only, so a socket closed to make room
            // (its charge taken back under the lock) cannot be charged again in between.
            let mut holders = budget.holders.lock();
            if self.kick.token_cancelled() {
                return true;
            }
            let charged = self.charged.load(Ordering::Relaxed);
            if charged == 0 {
                let began = tokio::time::Instant::now();
                holders.push(Holder { outbox: Arc::downgrade(self), began });
            }
            self.charged.store(unfinished, Ordering::Relaxed);
            budget.held.fetch_add(unfinished - charged, Ordering::Relaxed) + (unfinished - charged)
                > budget.limit
        };
        !over || budget.make_room(self)
    }

    /// Queues a frame without waiting; a socket whose queue is full is too slow and is kicked.
    /// Returns false when the frame was not queued.
    pub fn offer(self: &Arc<Self>, frame: &Framed) -> bool {
        self.push(frame.clone(), Budget::Full)
    }

    /// Queues a small frame whatever the byte budget says (the frame limit still applies).
    pub fn offer_unbudgeted(self: &Arc<Self>, payload: Bytes) -> bool {
        self.push(Framed::binary(payload), Budget::Frames)
    }

    /// Queues the answer to this socket's own request (a sync step 2, say), first waiting
    /// until the queue has room for it. A socket that asks for a big room gets it at the pace
    /// it reads, instead of being cut off as slow because broadcasts were queued meanwhile; its
    /// reader waits, so it cannot pile up answers either. Returns false if the frame was not
    /// queued (the socket is closing).
    ///
    /// A socket whose queue does not drain within `max_wait` is not reading: it is cut off as
    /// too slow (while the reader waits here, no liveness timeout would notice).
    pub async fn offer_reply(self: &Arc<Self>, payload: Bytes, max_wait: Duration) -> bool {
        let len = payload.len();
        let room = async {
            loop {
                let drained = self.drained.notified();
                {
                    let queue = self.queue.lock();
                    if queue.failed || self.kick.token_cancelled() {
                        return false;
                    }
                    // The rest of a frame being written counts here: otherwise each answer
                    // would leave the budget as it started, and a peer that asks again and
                    // again without reading would hold one whole answer per request.
                    let pending = queue.bytes + queue.in_flight();
                    if pending == 0 || pending + len <= self.limits.max_bytes {
                        return true;
                    }
                }
                tokio::select! {
                    () = drained => {}
                    () = self.kick.kicked() => return false,
                }
            }
        };
        match tokio::time::timeout(max_wait, room).await {
            // Over the budget by at most this one answer, which the peer asked for.
            Ok(true) => self.push(Framed::binary(payload), Budget::Frames),
            Ok(false) => false,
            Err(_) => {
                self.kick.kick(CloseCode::TRY_AGAIN_LATER, "too slow: outgoing queue full");
                false
            }
        }
    }

    /// Queues control frames already framed: pings, and what tungstenite writes itself
    /// (pongs, the reply to a close), also while the socket closes. They are tiny and count
    /// against the frame limit only, so a peer that pings without reading is still cut off.
    pub fn push_framed(self: &Arc<Self>, bytes: Bytes) -> bool {
        bytes.is_empty() || self.push(Framed::raw(bytes), Budget::Control)
    }

    fn push(self: &Arc<Self>, frame: Framed, budget: Budget) -> bool {
        let len = frame.payload.len();
        let mut queue = self.queue.lock();
        if queue.failed || (queue.closing && budget != Budget::Control) {
            return false;
        }
        // One broadcast is always taken into a queue without any, however large (a big
        // room's sync answer may exceed the budget on its own).
        let broadcasts = queue.bytes - queue.exempt;
        let over_bytes =
            budget == Budget::Full && broadcasts > 0 && broadcasts + len > self.limits.max_bytes;
        if over_bytes || queue.frames.len() >= self.limits.max_frames {
            drop(queue);
            self.kick.kick(CloseCode::TRY_AGAIN_LATER, "too slow: outgoing queue full");
            return false;
        }
        queue.bytes += len;
        let exempt = budget != Budget::Full;
        if exempt {
            queue.exempt += len;
        }
        queue.frames.push_back(Pending { frame, sent: 0, exempt });
        let schedule = !(queue.due || queue.blocked || queue.held);
        queue.due |= schedule;
        drop(queue);
        if schedule {
            self.flusher.schedule(Arc::clone(self));
        }
        true
    }

    /// Bytes read from the socket so far: a peer still sending part of a big message is alive
    /// though no whole frame has come for a while.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Lets queued frames go: until now they were held (see [`Outbox::new`]).
    pub fn release(self: &Arc<Self>) {
        let mut queue = self.queue.lock();
        if !queue.held {
            return;
        }
        queue.held = false;
        let schedule = !queue.frames.is_empty() && !queue.due;
        queue.due |= schedule;
        drop(queue);
        if schedule {
            self.flusher.schedule(Arc::clone(self));
        }
    }

    /// Writes what is queued, for the flusher. A full socket is handed to its own task.
    fn flush(&self) {
        let mut queue = self.queue.lock();
        queue.due = false;
        if queue.blocked || queue.held || queue.failed {
            return;
        }
        match self.write_queued(&mut queue) {
            Progress::Done => {}
            Progress::Full => {
                queue.blocked = true;
                drop(queue);
                self.task.notify_one();
            }
            Progress::Failed => {
                Self::fail(&mut queue);
                drop(queue);
                self.task.notify_one();
            }
        }
    }

    /// Writes until the queue is empty, the socket is full or writing fails. Called with the
    /// queue locked, so writes from the flusher and the socket's task never interleave.
    fn write_queued(&self, queue: &mut Queue) -> Progress {
        while !queue.frames.is_empty() {
            let written = {
                // Most writes carry a frame or two: a few slots inline, not a zeroed array of
                // the most a write may take.
                let mut slices = SmallVec::<[IoSlice<'_>; 8]>::new();
                for pending in queue.frames.iter().take(FRAMES_PER_WRITE) {
                    let (header, payload) = pending.rest();
                    for part in [header, payload] {
                        if !part.is_empty() {
                            slices.push(IoSlice::new(part));
                        }
                    }
                }
                self.tcp.try_write_vectored(&slices)
            };
            match written {
                Ok(0) => return Progress::Failed,
                Ok(written) => {
                    self.flusher.stats.socket_writes.fetch_add(1, Ordering::Relaxed);
                    if Self::advance(queue, written) {
                        self.drained.notify_one();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Full,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "socket write failed");
                    return Progress::Failed;
                }
            }
        }
        if queue.frames.capacity() > KEEP_SLOTS {
            queue.frames = VecDeque::new();
        }
        Progress::Done
    }

    /// Marks `written` bytes as written. Returns whether a frame was started (and so left the
    /// byte budget) or finished (and so left what an answer waits for, see
    /// [`Outbox::offer_reply`]).
    fn advance(queue: &mut Queue, mut written: usize) -> bool {
        let mut started = false;
        while written > 0 {
            let Some(front) = queue.frames.front_mut() else { break };
            if front.sent == 0 {
                queue.bytes -= front.frame.payload.len();
                if front.exempt {
                    queue.exempt -= front.frame.payload.len();
                }
                started = true;
            }
            let rest = front.frame.len() - front.sent;
            if written >= rest {
                written -= rest;
                queue.frames.pop_front();
                started = true;
            } else {
                front.sent += written;
                written = 0;
            }
        }
        started
    }

    fn fail(queue: &mut Queue) {
        queue.failed = true;
        queue.frames.clear();
        queue.bytes = 0;
        queue.exempt = 0;
    }

    /// The socket task's part: whenever the socket was full, writes the rest as the socket
    /// takes it, then hands writing back to the flusher. Returns when writing failed.
    pub async fn write_when_full(&self) {
        loop {
            self.task.notified().await;
            loop {
                {
                    let mut queue = self.queue.lock();
                    if queue.failed {
                        return;
                    }
                    if !queue.blocked {
                        break;
                    }
                    match self.write_queued(&mut queue) {
                        Progress::Done => {
                            queue.blocked = false;
                            break;
                        }
                        Progress::Full => {}
                        Progress::Failed => {
                            Self::fail(&mut queue);
                            return;
                        }
                    }
                }
                match tokio::time::timeout(self.limits.write_stall, self.tcp.writable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        Self::fail(&mut self.queue.lock());
                        return;
                    }
                    Err(_) => {
                        self.kick.kick(CloseCode::TRY_AGAIN_LATER, "too slow: not reading");
                        return;
                    }
                }
            }
        }
    }

    /// For a socket about to close: drops the frames not started (the one being written must
    /// end first, or the stream would be corrupt), then queues `close`, if any, to go last.
    /// From now on only control frames are taken (tungstenite's reply to a peer's close).
    pub fn close_with(self: &Arc<Self>, close: Option<Bytes>) {
        let mut queue = self.queue.lock();
        queue.closing = true;
        let started = usize::from(queue.frames.front().is_some_and(|p| p.sent > 0));
        queue.frames.truncate(started);
        queue.bytes = 0;
        queue.exempt = 0;
        if let Some(close) = close.filter(|c| !c.is_empty()) {
            queue.bytes += close.len();
            queue.exempt += close.len();
            queue.frames.push_back(Pending { frame: Framed::raw(close), sent: 0, exempt: true });
        }
    }

    /// Writes everything queued, waiting at most `timeout` for the socket to take it (a peer
    /// that does not read gets no longer than that).
    pub async fn finish(&self, timeout: Duration) {
        let written = async {
            loop {
                {
                    let mut queue = self.queue.lock();
                    queue.held = false;
                    if queue.failed {
                        return;
                    }
                    match self.write_queued(&mut queue) {
                        Progress::Done => return,
                        Progress::Full => {}
                        Progress::Failed => {
                            Self::fail(&mut queue);
                            return;
                        }
                    }
                }
                if self.tcp.writable().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, written).await;
    }
}

/// Writes due outboxes, once per round of the runtime (see the module's doc).
#[derive(Debug)]
pub struct Flusher {
    due: Mutex<Vec<Arc<Outbox>>>,
    wake: Notify,
    /// Counts the writes.
    stats: Arc<Stats>,
}

impl Flusher {
    /// A flusher, its task spawned on the current runtime (it lives as long as the runtime).
    pub fn start(stats: Arc<Stats>) -> Arc<Self> {
        let flusher = Arc::new(Self { due: Mutex::default(), wake: Notify::new(), stats });
        tokio::spawn(Arc::clone(&flusher).run());
        flusher
    }

    fn schedule(&self, outbox: Arc<Outbox>) {
        let mut due = self.due.lock();
        let first = due.is_empty();
        due.push(outbox);
        drop(due);
        if first {
            self.wake.notify_one();
        }
    }

    async fn run(self: Arc<Self>) {
        // On the current-thread runtime (the default) a task woken from another runs after
        // those already woken, which is what lets frames that arrived together share a write.
        // A worker of the multi-thread runtime runs the task it woke last first (its LIFO
        // slot): there the flusher steps back once, behind the readers woken with it.
        let step_back = tokio::runtime::Handle::current().runtime_flavor()
            != tokio::runtime::RuntimeFlavor::CurrentThread;
        let mut batch = Vec::new();
        loop {
            self.wake.notified().await;
            if step_back {
                tokio::task::yield_now().await;
            }
            std::mem::swap(&mut batch, &mut *self.due.lock());
            for outbox in batch.drain(..) {
                outbox.flush();
            }
        }
    }
}

/// The flushers of a server, one per runtime thread; a socket keeps to one of them.
#[derive(Debug, Clone)]
pub struct Flushers(Arc<[Arc<Flusher>]>);

impl Flushers {
    /// One flusher per worker thread of the current runtime.
    pub fn start(stats: &Arc<Stats>) -> Self {
        let threads = tokio::runtime::Handle::current().metrics().num_workers().max(1);
        Self((0..threads).map(|_| Flusher::start(Arc::clone(stats))).collect())
    }

    /// The flusher for socket number `n`.
    pub fn pick(&self, n: u64) -> Arc<Flusher> {
        let index = usize::try_from(n % self.0.len() as u64).unwrap_or(0);
        Arc::clone(&self.0[index])
    }
}

/// The socket as tungstenite sees it: reads come from the connection; what tungstenite writes
/// itself (pongs, the reply to a close) joins the outbox behind the frames already queued.
pub struct Wire {
    read: OwnedReadHalf,
    outbox: Arc<Outbox>,
}

impl Wire {
    /// tungstenite's view of a socket whose writes go through `outbox`.
    pub fn new(read: OwnedReadHalf, outbox: Arc<Outbox>) -> Self {
        Self { read, outbox }
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.read).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.outbox.read.fetch_add(read, Ordering::Relaxed);
            if !self.outbox.charge_unfinished() {
                return Poll::Ready(Err(io::Error::other("unfinished input over the budget")));
            }
        }
        polled
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.outbox.push_framed(Bytes::copy_from_slice(buf)) {
            Poll::Ready(Ok(buf.len()))
        } else {
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use tokio::net::{TcpListener, TcpSocket, TcpStream};
    use tokio_tungstenite::WebSocketStream;
    use tungstenite::Message;
    use tungstenite::protocol::{Role, WebSocketConfig};

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(20);
    const SOCKET_BUFFER: u32 = 32 << 10;
    pub(crate) const ROOMY: Limits =
        Limits { max_frames: 1000, max_bytes: 64 << 20, write_stall: Duration::from_secs(30) };

    pub(crate) struct Connected {
        pub(crate) outbox: Arc<Outbox>,
        /// The server's end for reading, kept open.
        pub(crate) read: Option<OwnedReadHalf>,
        pub(crate) client: WebSocketStream<TcpStream>,
        pub(crate) stats: Arc<Stats>,
    }

    /// An outbox on the server's end of a loopback connection, with its socket task's part
    /// running, and a WebSocket client on the other end.
    /// Socket buffers on both ends are kept small, so [`big`] cannot be written at once
    /// whatever the machine's TCP settings allow.
    pub(crate) async fn connected(limits: Limits) -> Connected {
        let small_buffers = || {
            let socket = TcpSocket::new_v4().expect("a socket");
            socket.set_send_buffer_size(SOCKET_BUFFER).expect("sets SO_SNDBUF");
            socket.set_recv_buffer_size(SOCKET_BUFFER).expect("sets SO_RCVBUF");
            socket
        };
        let listening = small_buffers();
        listening.bind("127.0.0.1:0".parse().expect("an address")).expect("binds");
        // Accepted sockets take the listener's buffer sizes.
        let listener: TcpListener = listening.listen(4).expect("listens");
        let address = listener.local_addr().expect("address");
        let client = small_buffers().connect(address).await.expect("connects");
        let (server, _) = listener.accept().await.expect("accepts");
        let (read, write) = server.into_split();
        // As in the server, where the 101 response was written first.
        write.writable().await.expect("writable");
        let stats = Arc::new(Stats::default());
        let outbox = Outbox::new(write, Flusher::start(Arc::clone(&stats)), limits);
        let task = Arc::clone(&outbox);
        tokio::spawn(async move { task.write_when_full().await });
        let config = WebSocketConfig::default().max_frame_size(None).max_message_size(None);
        let client = WebSocketStream::from_raw_socket(client, Role::Client, Some(config)).await;
        Connected { outbox, read: Some(read), client, stats }
    }

    async fn next(client: &mut WebSocketStream<TcpStream>) -> Message {
        tokio::time::timeout(DEADLINE, client.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("a well-formed frame")
    }

    pub(crate) async fn next_binary(client: &mut WebSocketStream<TcpStream>) -> Bytes {
        match next(client).await {
            Message::Binary(payload) => payload,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// Waits (with a deadline) until `condition` holds of the outbox's queue.
    async fn until(outbox: &Outbox, what: &str, condition: impl Fn(&Queue) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !condition(&outbox.queue.lock()) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn small(tag: u8) -> Framed {
        Framed::binary(Bytes::from(vec![tag; 10 + usize::from(tag)]))
    }

    /// Many times the socket buffers on both ends, so it cannot be written at once.
    fn big() -> Bytes {
        Bytes::from((0..4 << 20).map(|i: u32| (i % 251) as u8).collect::<Vec<u8>>())
    }

    #[tokio::test]
    async fn frames_queued_together_leave_in_one_write_and_arrive_in_order() {
        let mut c = connected(ROOMY).await;
        c.outbox.release();
        for tag in 0..5 {
            assert!(c.outbox.offer(&small(tag)));
        }
        for tag in 0..5 {
            assert_eq!(next_binary(&mut c.client).await, small(tag).payload);
        }
        assert_eq!(c.stats.socket_writes.load(Ordering::Relaxed), 1, "one write for all five");
    }

    #[tokio::test]
    async fn an_emptied_queue_gives_back_what_a_burst_grew_it_to() {
        let mut c = connected(ROOMY).await;
        for tag in 0..100 {
            assert!(c.outbox.offer(&small(tag)));
        }
        assert!(c.outbox.queue.lock().frames.capacity() >= 100);
        c.outbox.release();
        for tag in 0..100 {
            assert_eq!(next_binary(&mut c.client).await, small(tag).payload);
        }
        until(&c.outbox, "the queue is written", |q| q.frames.is_empty()).await;
        assert!(c.outbox.queue.lock().frames.capacity() <= KEEP_SLOTS);
    }

    #[tokio::test]
    async fn held_frames_wait_for_the_release_then_leave_together() {
        let mut c = connected(ROOMY).await;
        assert!(c.outbox.offer(&small(1)));
        assert!(c.outbox.offer(&small(2)));
        tokio::task::yield_now().await;
        {
            let queue = c.outbox.queue.lock();
            assert!(!queue.due, "a held outbox is not handed to the flusher");
            assert_eq!(queue.frames.len(), 2);
        }
        assert_eq!(c.stats.socket_writes.load(Ordering::Relaxed), 0);
        c.outbox.release();
        assert_eq!(next_binary(&mut c.client).await, small(1).payload);
        assert_eq!(next_binary(&mut c.client).await, small(2).payload);
        assert_eq!(c.stats.socket_writes.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_full_socket_gets_the_rest_in_order_once_its_client_reads() {
        let mut c = connected(ROOMY).await;
        c.outbox.release();
        let big = big();
        assert!(c.outbox.offer(&Framed::binary(big.clone())));
        for tag in 0..5 {
            assert!(c.outbox.offer(&small(tag)));
        }
        until(&c.outbox, "the socket is full", |q| q.blocked).await;
        // Frames keep queueing behind the one being written.
        assert!(c.outbox.offer(&small(5)));
        assert_eq!(next_binary(&mut c.client).await, big);
        for tag in 0..6 {
            assert_eq!(next_binary(&mut c.client).await, small(tag).payload);
        }
        until(&c.outbox, "the flusher writes again", |q| !q.blocked && q.frames.is_empty()).await;
        assert!(c.outbox.queue.lock().frames.capacity() <= KEEP_SLOTS);
        assert!(c.outbox.offer(&small(6)));
        assert_eq!(next_binary(&mut c.client).await, small(6).payload);
    }

    #[tokio::test]
    async fn closing_ends_the_frame_being_written_then_sends_only_the_close_frame() {
        let mut c = connected(ROOMY).await;
        c.outbox.release();
        let big = big();
        assert!(c.outbox.offer(&Framed::binary(big.clone())));
        assert!(c.outbox.offer(&small(1)));
        until(&c.outbox, "the big frame is partly written", |q| {
            q.blocked && q.frames.front().is_some_and(|p| p.sent > 0)
        })
        .await;
        c.outbox.close_with(Some(close_frame(CloseCode::GOING_AWAY, "bye")));
        let outbox = Arc::clone(&c.outbox);
        let finished = tokio::spawn(async move { outbox.finish(DEADLINE).await });
        assert_eq!(next_binary(&mut c.client).await, big);
        match next(&mut c.client).await {
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), CloseCode::GOING_AWAY.0);
                assert_eq!(frame.reason.as_str(), "bye");
            }
            other => panic!("expected the close frame, got {other:?}"),
        }
        finished.await.expect("finish ends");
    }

    #[tokio::test]
    async fn a_queue_over_its_budget_cuts_the_socket_off_as_too_slow() {
        let by_bytes = connected(Limits { max_frames: 100, max_bytes: 1000, ..ROOMY }).await;
        let sized = |n| Framed::binary(Bytes::from(vec![0; n]));
        // Held, so nothing drains: the first frame is taken whatever its size.
        assert!(by_bytes.outbox.offer(&sized(1500)));
        assert!(!by_bytes.outbox.kick.token_cancelled());
        assert!(!by_bytes.outbox.offer(&sized(1)));
        assert_eq!(by_bytes.outbox.kick.reason().map(|r| r.0), Some(CloseCode::TRY_AGAIN_LATER));

        let by_frames = connected(Limits { max_frames: 2, max_bytes: 1 << 20, ..ROOMY }).await;
        assert!(by_frames.outbox.offer(&small(1)));
        assert!(by_frames.outbox.offer(&small(2)));
        assert!(!by_frames.outbox.kick.token_cancelled());
        assert!(!by_frames.outbox.offer(&small(3)));
        assert_eq!(by_frames.outbox.kick.reason().map(|r| r.0), Some(CloseCode::TRY_AGAIN_LATER));
        // A frame of the socket's own (tungstenite's pong) counts too: a peer that pings
        // without reading is cut off rather than growing the queue.
        assert!(!by_frames.outbox.push_framed(ping_frame()));
    }

    #[tokio::test]
    async fn an_answer_waits_for_room_in_the_queue_instead_of_cutting_the_socket_off() {
        let mut c = connected(Limits { max_frames: 100, max_bytes: 1 << 20, ..ROOMY }).await;
        c.outbox.release();
        let big = big();
        assert!(c.outbox.offer(&Framed::binary(big.clone())));
        until(&c.outbox, "the big frame is being written", |q| {
            q.frames.front().is_some_and(|p| p.sent > 0)
        })
        .await;
        // Not started, so within the budget: an answer as big would not fit beside it.
        assert!(c.outbox.offer(&Framed::binary(Bytes::from(vec![7; 900 << 10]))));
        until(&c.outbox, "the socket is full", |q| q.blocked).await;
        let outbox = Arc::clone(&c.outbox);
        let answer = Bytes::from(vec![9; 800 << 10]);
        let offered = {
            let answer = answer.clone();
            tokio::spawn(async move { outbox.offer_reply(answer, DEADLINE).await })
        };
        assert_eq!(next_binary(&mut c.client).await, big);
        assert_eq!(next_binary(&mut c.client).await.len(), 900 << 10);
        assert!(offered.await.expect("offer ends"), "the answer is queued once there is room");
        assert_eq!(next_binary(&mut c.client).await, answer);
        assert!(!c.outbox.kick.token_cancelled());
    }

    /// A big answer queued behind a frame still being written is the socket's own request,
    /// paced by `offer_reply`: broadcasts after it are measured without it, instead of
    /// cutting the socket off as too slow (which would happen again at every reconnect).
    #[tokio::test]
    async fn a_big_answer_behind_a_frame_in_flight_does_not_cut_off_the_next_broadcast() {
        let mut c = connected(Limits { max_frames: 100, max_bytes: 1 << 20, ..ROOMY }).await;
        c.outbox.release();
        let big = big();
        assert!(c.outbox.offer(&Framed::binary(big.clone())));
        until(&c.outbox, "the big frame is being written, the socket full", |q| {
            q.blocked && q.frames.front().is_some_and(|p| p.sent > 0)
        })
        .await;
        // Over the budget on its own: queued once the frame in flight is written, and then
        // itself being written (the client reads no further yet).
        let answer = Bytes::from(vec![9; 2 << 20]);
        let offered = {
            let (outbox, answer) = (Arc::clone(&c.outbox), answer.clone());
            tokio::spawn(async move { outbox.offer_reply(answer, DEADLINE).await })
        };
        assert_eq!(next_binary(&mut c.client).await, big);
        assert!(offered.await.expect("offer ends"));
        assert!(c.outbox.offer(&small(1)), "a broadcast is still taken");
        assert!(!c.outbox.kick.token_cancelled());
        assert_eq!(next_binary(&mut c.client).await, answer);
        assert_eq!(next_binary(&mut c.client).await, small(1).payload);
        until(&c.outbox, "everything written", |q| q.frames.is_empty()).await;
        let queue = c.outbox.queue.lock();
        assert_eq!((queue.bytes, queue.exempt), (0, 0), "the accounts are square");
    }

    /// A peer that asks for one answer after another without reading holds one at a time: an
    /// answer waits for the rest of the one being written, not only for what is queued.
    #[tokio::test]
    async fn an_answer_waits_for_the_rest_of_the_frame_being_written() {
        let mut c = connected(Limits { max_frames: 100, max_bytes: 1 << 20, ..ROOMY }).await;
        c.outbox.release();
        let big = big();
        assert!(c.outbox.offer_reply(big.clone(), DEADLINE).await, "an empty queue takes it");
        until(&c.outbox, "the big answer is being written, the socket full", |q| {
            q.blocked && q.frames.front().is_some_and(|p| p.sent > 0)
        })
        .await;
        let offered = {
            let outbox = Arc::clone(&c.outbox);
            let again = big.clone();
            tokio::spawn(async move { outbox.offer_reply(again, DEADLINE).await })
        };
        // Nothing the client did lets it in: it waits (the queue itself is empty).
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!offered.is_finished(), "a second answer waits for the first");
        assert_eq!(c.outbox.queue.lock().frames.len(), 1);
        assert_eq!(next_binary(&mut c.client).await, big);
        assert!(offered.await.expect("offer ends"));
        assert_eq!(next_binary(&mut c.client).await, big);
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_is_cut_off_after_the_write_stall() {
        let write_stall = Duration::from_millis(300);
        let c = connected(Limits { write_stall, ..ROOMY }).await;
        c.outbox.release();
        assert!(c.outbox.offer(&Framed::binary(big())));
        // The client never reads: the socket fills, and nothing more is taken.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while c.outbox.kick.reason().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "never cut off");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (code, reason) = c.outbox.kick.reason().expect("kicked");
        assert_eq!((code, reason), (CloseCode::TRY_AGAIN_LATER, "too slow: not reading"));
    }

    /// The server's end of `c` read as the read loop reads it: every whole data message frees
    /// what it held of the input budget. Sends the length of each message it gets.
    fn serve_reads(
        c: &mut Connected,
        budget: &Arc<InputBudget>,
    ) -> tokio::sync::mpsc::UnboundedReceiver<usize> {
        c.outbox.count_input_against(Arc::clone(budget));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (read, outbox) = (c.read.take().expect("read half"), Arc::clone(&c.outbox));
        tokio::spawn(async move {
            let config = WebSocketConfig::default().max_frame_size(None).max_message_size(None);
            let wire = Wire::new(read, Arc::clone(&outbox));
            let mut server =
                WebSocketStream::from_raw_socket(wire, Role::Server, Some(config)).await;
            while let Some(Ok(message)) = server.next().await {
                if let Message::Binary(payload) = message {
                    outbox.message_done();
                    let _ = tx.send(payload.len());
                }
            }
        });
        rx
    }

    #[tokio::test]
    async fn sockets_holding_unfinished_messages_share_one_budget() {
        let budget = InputBudget::new(256 << 10);
        let (mut a, mut b) = (connected(ROOMY).await, connected(ROOMY).await);
        let mut from_a = serve_reads(&mut a, &budget);
        let _from_b = serve_reads(&mut b, &budget);
        // Ada's client is in the middle of a 200 KiB message.
        a.client.send(fragment(200 << 10, true, false)).await.expect("sends");
        until_held(&budget, 200 << 10).await;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        // Another socket's unfinished 100 KiB, slower than Ada's 200 (both within their first
        // second, so smaller is slower), would take the budget past its 256 KiB: cut off.
        let _ = b.client.send(fragment(100 << 10, true, false)).await;
        while b.outbox.kick.reason().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "b never cut off");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            b.outbox.kick.reason(),
            Some((
                CloseCode::TRY_AGAIN_LATER,
                "server busy: too many unfinished messages; try again"
            ))
        );
        assert!(a.outbox.kick.reason().is_none(), "the faster socket goes on");
        // Ada's message ends: it arrives whole, and once Bob's socket is gone too nothing is
        // held.
        a.client.send(fragment(10, false, true)).await.expect("sends");
        let got = tokio::time::timeout(DEADLINE, from_a.recv()).await.expect("in time");
        assert_eq!(got, Some((200 << 10) + 10));
        drop(b);
        while budget.held() != 0 {
            assert!(tokio::time::Instant::now() < deadline, "held {}", budget.held());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A fragment of a binary message, `len` bytes of payload.
    fn fragment(len: usize, first: bool, fin: bool) -> Message {
        use tungstenite::protocol::frame::Frame;
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        let code = if first { Data::Binary } else { Data::Continue };
        Message::Frame(Frame::message(vec![1; len], OpCode::Data(code), fin))
    }

    /// Sends a message of `len` bytes and then 10 more, in two fragments, from `c`'s client,
    /// within the deadline (a socket that gave way is not read any more: the sends would never
    /// finish).
    async fn send_in_two(c: &mut Connected, len: usize) {
        let sent = async {
            c.client.send(fragment(len, true, false)).await.expect("sends");
            c.client.send(fragment(10, false, true)).await.expect("sends");
        };
        tokio::time::timeout(DEADLINE, sent).await.expect("taken in time");
    }

    /// Waits until `budget` holds at least `bytes`.
    async fn until_held(budget: &InputBudget, bytes: u64) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while budget.held() < bytes {
            assert!(tokio::time::Instant::now() < deadline, "held {}", budget.held());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn a_faster_message_takes_the_place_of_a_slower_one() {
        let budget = InputBudget::new(256 << 10);
        let (mut a, mut b) = (connected(ROOMY).await, connected(ROOMY).await);
        let _from_a = serve_reads(&mut a, &budget);
        let mut from_b = serve_reads(&mut b, &budget);
        // Ada's client has sent 200 KiB of a message, over ten seconds.
        a.client.send(fragment(200 << 10, true, false)).await.expect("sends");
        until_held(&budget, 200 << 10).await;
        {
            let mut holders = budget.holders.lock();
            let began = holders[0].began.checked_sub(Duration::from_secs(10)).expect("uptime");
            holders[0].began = began;
        }
        // Bob's 100 KiB come faster, smaller and later as they are: Ada's socket gives way,
        // and Bob's message arrives whole.
        send_in_two(&mut b, 100 << 10).await;
        let got = tokio::time::timeout(DEADLINE, from_b.recv()).await.expect("in time");
        assert_eq!(got, Some((100 << 10) + 10));
        assert_eq!(a.outbox.kick.reason(), Some((CloseCode::TRY_AGAIN_LATER, BUDGET_SPENT)));
        assert_eq!(b.outbox.kick.reason(), None);
        drop(a);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while budget.held() != 0 || !budget.holders.lock().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "held {}", budget.held());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn a_message_bigger_than_the_budget_is_taken_when_nobody_else_holds_any() {
        let budget = InputBudget::new(128 << 10);
        let mut a = connected(ROOMY).await;
        let mut from_a = serve_reads(&mut a, &budget);
        send_in_two(&mut a, 300 << 10).await;
        let got = tokio::time::timeout(DEADLINE, from_a.recv()).await.expect("in time");
        assert_eq!(got, Some((300 << 10) + 10));
        assert_eq!(a.outbox.kick.reason(), None);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_long_close_reason_is_cut_to_fit_a_control_frame() {
        let reason = format!("invalid update: {}", "é".repeat(200));
        let frame = close_frame(CloseCode::INVALID_PAYLOAD, &reason);
        // Header (2 bytes for a payload under 126), code, reason.
        assert!(frame.len() <= 2 + 125, "{} bytes", frame.len());
        assert_eq!(usize::from(frame[1] & 0x7f), frame.len() - 2);
        let text = std::str::from_utf8(&frame[4..]).expect("cut at a character boundary");
        assert!(reason.starts_with(text) && text.len() >= 122, "{text}");
        assert_eq!(&close_frame(CloseCode::GOING_AWAY, "bye")[4..], b"bye");
    }

    #[tokio::test]
    async fn tungstenite_answers_a_ping_through_the_outbox() {
        let mut c = connected(ROOMY).await;
        c.outbox.release();
        let read = c.read.take().expect("read half");
        let mut server = WebSocketStream::from_raw_socket(
            Wire::new(read, Arc::clone(&c.outbox)),
            Role::Server,
            None,
        )
        .await;
        tokio::spawn(async move { while let Some(Ok(_)) = server.next().await {} });
        c.client.send(Message::Ping(Bytes::from_static(b"hi"))).await.expect("pings");
        match next(&mut c.client).await {
            Message::Pong(payload) => assert_eq!(payload, Bytes::from_static(b"hi")),
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}
