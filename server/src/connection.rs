//! One WebSocket, from admission to close.
//!
//! The socket's task reads: tungstenite parses the frames and the task drives the protocol.
//! Writing is the [`Outbox`]'s: rooms queue frames there and a flusher writes them, so a
//! delivered update does not wake the socket's task (see [`crate::outbox`]). The task takes
//! over writing only while the socket is full, pings on schedule, and closes the socket once,
//! with the code its ending earned.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use huddle_protocol::RoomName;
use huddle_protocol::session::PeerPresence;
use huddle_protocol::wire::{self, CloseCode, WireMessage, WireSyncMessage};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message};

use crate::gcra;
use crate::outbox::{self, Flushers, Limits, Outbox, Wire};
use crate::registry::{Lease, Registry};
use crate::room::{ConnId, Room, RoomError};
use crate::stats::Stats;

/// How long the first write waits for the client's first frame (see where it is used).
const FIRST_FRAME_WAIT: Duration = Duration::from_millis(20);

/// How long we wait for a close frame to be written to a peer before dropping the connection.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Per-socket settings, from the server config.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    /// Largest binary frame accepted.
    pub max_message_bytes: usize,
    /// Most frames queued for the socket before it is cut off as too slow.
    pub max_queue_frames: usize,
    /// Most bytes queued for the socket before it is cut off as too slow.
    pub max_queue_bytes: usize,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// How long after a ping with no frame at all (pong or otherwise) the peer is dead.
    pub pong_timeout: Duration,
    /// Most messages (binary frames) per second a socket is read at, on average.
    pub max_messages_per_second: u32,
    /// Most bytes per second a socket's messages are read at, on average.
    pub max_bytes_per_second: u32,
    /// Longest a socket may take none of what waits to be written (see
    /// [`crate::outbox::Limits::write_stall`]).
    pub write_stall: Duration,
}

/// How fast one socket's messages are taken in: a token bucket for messages and one for
/// bytes, each holding [`gcra::BURST_SECONDS`] of its rate (the bytes' at least two of the largest
/// messages). A socket over either waits before its next message is handled, so it is slowed,
/// not cut off: its unread frames stay in its TCP buffers until the sender itself has to
/// wait. One peer cannot take more of the relay's time than that, whatever it sends.
///
/// The buckets are [`crate::gcra`]'s, kept as two theoretical arrival times (not `governor`,
/// see there); the rates live in the shared config.
#[derive(Debug, Default)]
struct ReadRate {
    /// The messages bucket's time: full again then, in nanoseconds (see [`gcra::now`]).
    messages_at: u64,
    /// The same for bytes.
    bytes_at: u64,
}

impl ReadRate {
    /// Takes a message of `len` bytes out of both buckets, or says how long until both have
    /// room (and takes nothing).
    fn try_take(&mut self, len: usize, config: &SocketConfig) -> Result<(), Duration> {
        let now = gcra::now();
        let largest = 2 * config.max_message_bytes as u64;
        let (mut messages, mut bytes) = (self.messages_at, self.bytes_at);
        gcra::take(&mut messages, now, 1, config.max_messages_per_second.into(), 1)
            .and_then(|()| {
                gcra::take(&mut bytes, now, len as u64, config.max_bytes_per_second.into(), largest)
            })
            .map_err(Duration::from_nanos)?;
        (self.messages_at, self.bytes_at) = (messages, bytes);
        Ok(())
    }

    /// Waits `wait`, then until a message of `len` bytes fits both buckets, and takes it.
    async fn take_after(&mut self, mut wait: Duration, len: usize, config: &SocketConfig) {
        loop {
            tokio::time::sleep(wait).await;
            match self.try_take(len, config) {
                Ok(()) => return,
                Err(more) => wait = more,
            }
        }
    }
}

/// Everything a socket needs from the server.
#[derive(Clone)]
pub struct SocketContext {
    /// The rooms.
    pub registry: Registry,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Settings.
    pub config: Arc<SocketConfig>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// What writes every socket's queued frames.
    pub flushers: Flushers,
    /// What the sockets may hold of messages not yet whole, together.
    pub input: Arc<crate::outbox::InputBudget>,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Who a socket is in its room, and what its client asked for when it connected.
#[derive(Debug, Clone, Copy)]
struct Peer {
    id: ConnId,
    /// Big answers go as [`wire::MSG_DEFLATED`] frames.
    deflate: bool,
}

/// How a socket's session ended.
#[derive(Debug)]
enum End {
    /// The peer closed or the TCP connection went away.
    PeerGone,
    /// The peer stopped answering pings.
    Silent,
    /// We close with this code and reason.
    Close(CloseCode, String),
}

/// A connection upgraded to a WebSocket, not yet serving a room: tungstenite's side for
/// reading and the outbox for writing.
pub struct Upgraded {
    socket: WebSocketStream<Wire>,
    outbox: Arc<Outbox>,
    id: ConnId,
}

impl Upgraded {
    /// Takes over `tcp`, whose client sent `pipelined` after its upgrade request (read with it).
    pub async fn new(
        tcp: TcpStream,
        pipelined: Vec<u8>,
        websocket: WebSocketConfig,
        ctx: &SocketContext,
    ) -> Self {
        let id = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
        let (read, write) = tcp.into_split();
        let limits = Limits {
            max_frames: ctx.config.max_queue_frames,
            max_bytes: ctx.config.max_queue_bytes,
            write_stall: ctx.config.write_stall,
        };
        let outbox = Outbox::new(write, ctx.flushers.pick(id.0), limits);
        outbox.count_input_against(Arc::clone(&ctx.input));
        let wire = Wire::new(read, Arc::clone(&outbox));
        let socket = if pipelined.is_empty() {
            WebSocketStream::from_raw_socket(wire, Role::Server, Some(websocket)).await
        } else {
            WebSocketStream::from_partially_read(wire, pipelined, Role::Server, Some(websocket))
                .await
        };
        Self { socket, outbox, id }
    }
}

/// Serves one upgraded socket in `room` until it ends. `deflate`: the client asked for big
/// answers as [`wire::MSG_DEFLATED`] frames ([`wire::DEFLATE_QUERY`]).
///
/// Not an `async fn`: one keeps its arguments in its state for as long as it runs, and this
/// future lives as long as the socket, so every idle socket would carry a dead copy of
/// [`Upgraded`] next to its parts. Taking it apart first leaves just the parts.
pub fn serve_socket(
    upgraded: Upgraded,
    room: RoomName,
    deflate: bool,
    ctx: SocketContext,
) -> impl Future<Output = ()> + Send {
    let Upgraded { socket, outbox, id } = upgraded;
    let span = tracing::info_span!("socket", conn = id.0, %room);
    serve(socket, outbox, room, id, deflate, ctx).instrument(span)
}

async fn serve(
    mut socket: WebSocketStream<Wire>,
    outbox: Arc<Outbox>,
    room: RoomName,
    id: ConnId,
    deflate: bool,
    ctx: SocketContext,
) {
    // Futures that run once or briefly (joining, handling one frame) are boxed: an async fn's
    // state is as big as its biggest await point, and this one lives as long as the socket, so
    // unboxed they would make every idle socket carry room-loading and sync-answering state.
    // A room can take a while to load: a server shutting down does not wait for it (the join
    // is cancel-safe).
    let joined = tokio::select! {
        joined = Box::pin(ctx.registry.join(&room)) => joined,
        () = ctx.shutdown.cancelled() => {
            close(&outbox, CloseCode::GOING_AWAY, "server shutting down").await;
            return;
        }
    };
    let lease = match joined {
        Ok(lease) => lease,
        Err(e) => {
            tracing::error!(error = %e, "room failed to load; refusing socket");
            close(&outbox, CloseCode::INTERNAL_ERROR, "room failed to load").await;
            return;
        }
    };
    let room = Arc::clone(lease.room());
    let greeting = room.subscribe(id, Arc::clone(&outbox));
    // From here on, `member` undoes the join whatever happens, even a panic.
    let mut member =
        Member { id, lease: Some(lease), presence: PeerPresence::default(), ctx: ctx.clone() };
    ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!("socket joined");
    for frame in greeting {
        outbox.offer(&outbox::Framed::binary(frame));
    }

    let end = {
        let first = tokio::sync::Notify::new();
        let reader = read_loop(
            &mut socket,
            &room,
            Peer { id, deflate },
            &outbox,
            &mut member.presence,
            &ctx,
            &first,
        );
        let writer = async {
            // Clients send their sync step 1 as soon as the socket opens: give it a moment, so
            // our greeting and the answer leave in one write (on loopback a write costs about
            // as much as the rest of a connect).
            let _ = tokio::time::timeout(FIRST_FRAME_WAIT, first.notified()).await;
            outbox.release();
            tokio::select! {
                () = outbox.write_when_full() => End::PeerGone,
                end = pings(&outbox, ctx.config.ping_interval) => end,
            }
        };
        tokio::select! {
            end = reader => end,
            end = writer => end,
            () = outbox.kick.kicked() => kicked(&outbox, &ctx),
            () = ctx.shutdown.cancelled() => End::Close(CloseCode::GOING_AWAY, "server shutting down".into()),
        }
    };
    // Cut off by a frame of its own (a pong or ping over the frame limit) in the same poll as
    // the branch that saw the frame refused: the kick's reason wins.
    let end = match end {
        End::PeerGone if outbox.kick.token_cancelled() => kicked(&outbox, &ctx),
        end => end,
    };
    // Leave the room (and announce the departure) before spending time on the close handshake.
    drop(member);
    match end {
        End::PeerGone => {
            // The reply to the peer's close frame, if it sent one: tungstenite queues it on the
            // outbox when flushed.
            outbox.close_with(None);
            let _ = socket.flush().await;
            outbox.finish(CLOSE_WRITE_TIMEOUT).await;
            tracing::debug!("socket closed by peer");
        }
        End::Silent => {
            drop(socket);
            outbox.message_done();
            ctx.stats.dead_peers.fetch_add(1, Ordering::Relaxed);
            tracing::info!("no pong within the timeout; dropping connection");
        }
        End::Close(code, reason) => {
            // What tungstenite holds (a message half read, up to the largest) is freed before
            // the close handshake waits on the peer, and so is its share of the input budget;
            // the close goes out through the outbox.
            drop(socket);
            outbox.message_done();
            if code != CloseCode::GOING_AWAY {
                tracing::info!(code = code.0, %reason, "closing socket");
            }
            close(&outbox, code, &reason).await;
        }
    }
    // Dropping the socket and the outbox (the room let go of it when the socket left) closes
    // the TCP connection.
}

/// How a socket cut off from outside ends: with the kick's code and reason (a slow peer counted
/// as one).
fn kicked(outbox: &Outbox, ctx: &SocketContext) -> End {
    let (code, reason) = outbox.kick.reason().unwrap_or((CloseCode::INTERNAL_ERROR, "closed"));
    if code == CloseCode::TRY_AGAIN_LATER {
        ctx.stats.slow_peers.fetch_add(1, Ordering::Relaxed);
    }
    End::Close(code, reason.into())
}

/// A socket's membership of a room; dropping it leaves the room, removes the socket's presence
/// for everyone, and gives the lease back, on every path out of the socket task.
struct Member {
    id: ConnId,
    lease: Option<Lease>,
    presence: PeerPresence,
    ctx: SocketContext,
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.room().unsubscribe(self.id, &mut self.presence);
            self.ctx.registry.leave(lease);
        }
        self.ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends a close frame after whatever is being written, dropping the frames not started, and
/// gives up after [`CLOSE_WRITE_TIMEOUT`] (a peer that does not read).
async fn close(outbox: &Arc<Outbox>, code: CloseCode, reason: &str) {
    outbox.close_with(Some(outbox::close_frame(code, reason)));
    outbox.finish(CLOSE_WRITE_TIMEOUT).await;
}

/// Pings on schedule; ends when the socket can take no more frames.
async fn pings(outbox: &Arc<Outbox>, interval: Duration) -> End {
    let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let frame = outbox::ping_frame();
    loop {
        ping.tick().await;
        if !outbox.push_framed(frame.clone()) {
            return End::PeerGone;
        }
    }
}

/// Whether a socket's unfinished message is still growing. A peer that holds one (tungstenite
/// keeps it, up to the largest message, see [`crate::outbox::InputBudget`]) and only pings to
/// stay alive would keep its memory, and its share of the input budget, for good; a message on
/// a slow link grows at least every so often.
///
/// What the socket has read but not taken apart yet counts as unfinished too (at most a read
/// buffer of control frames, see [`READ_AHEAD`]), so only growth past the count at the last
/// progress by more than that is progress: pings read ahead, then taken, cannot pass for it.
///
/// Growing is not enough either: a peer adding a read's worth every so often would keep its
/// place in the input budget for hours, and a few hundred such peers would hold all of it, for
/// the price of a few bytes a second each. Once a message has been under way for longer than
/// the patience, it must have grown by at least [`MIN_MESSAGE_RATE`] for every second past that.
#[derive(Debug)]
struct Progress {
    /// Unfinished bytes when the message last made progress (0: none under way).
    base: u64,
    /// When it last made progress.
    since: Instant,
    /// When the message began to count (it got big, or the clock started again), and its
    /// unfinished bytes then.
    began: (Instant, u64),
}

/// Slowest a big message may arrive on average, in bytes a second, after a first wait of the
/// ping timeout: 64 kbit/s, slower than any link people draw on.
const MIN_MESSAGE_RATE: u64 = 8 << 10;

/// Bytes a socket may have read ahead of the frames it has taken apart: a read's worth (see
/// `http::READ_BUFFER_BYTES`), with ample slack.
const READ_AHEAD: u64 = 8 * crate::http::READ_BUFFER_BYTES as u64;

impl Default for Progress {
    fn default() -> Self {
        let now = Instant::now();
        Self { base: 0, since: now, began: (now, 0) }
    }
}

impl Progress {
    /// Starts the clock again after the server itself stopped reading for a while. Cheap for
    /// the usual small messages: the time is only read when a big one is under way.
    fn restart(&mut self, tx: &Outbox) {
        let unfinished = tx.unfinished();
        if unfinished > crate::outbox::SMALL_UNFINISHED || self.base > 0 {
            let now = Instant::now();
            *self = Self { base: unfinished, since: now, began: (now, unfinished) };
        }
    }

    /// Whether the socket has held more than [`crate::outbox::SMALL_UNFINISHED`] of a message
    /// that has not grown for `patience`, or has grown slower than [`MIN_MESSAGE_RATE`] since.
    fn stalled(&mut self, tx: &Outbox, patience: Duration) -> bool {
        let unfinished = tx.unfinished();
        if unfinished <= crate::outbox::SMALL_UNFINISHED {
            self.base = 0;
            return false;
        }
        let now = Instant::now();
        if self.base == 0 {
            *self = Self { base: unfinished, since: now, began: (now, unfinished) };
        } else if unfinished > self.base + READ_AHEAD {
            self.base = unfinished;
            self.since = now;
        }
        let (began, at_start) = self.began;
        let late = (now - began).saturating_sub(patience);
        let owed = (late.as_secs_f64() * MIN_MESSAGE_RATE as f64) as u64;
        now - self.since > patience || unfinished.saturating_sub(at_start) < owed
    }
}

fn stalled_message() -> End {
    End::Close(CloseCode::TRY_AGAIN_LATER, "too slow: a message that does not finish".into())
}

/// Reads frames and drives the protocol until the socket ends or misbehaves.
async fn read_loop<S>(
    stream: &mut S,
    room: &Arc<Room>,
    peer: Peer,
    tx: &Arc<Outbox>,
    presence: &mut PeerPresence,
    ctx: &SocketContext,
    first: &tokio::sync::Notify,
) -> End
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    // Any bytes prove the peer alive; a healthy peer answers each ping within the timeout.
    let liveness = liveness(ctx);
    let mut rate = ReadRate::default();
    let mut greeted = false;
    let mut progress = Progress::default();
    loop {
        let message = loop {
            let read = tx.bytes_read();
            match tokio::time::timeout(liveness, stream.next()).await {
                // Bytes came, though no whole frame (a big message on a slow link, its sender's
                // pong queued behind it): alive. Reading a frame resumes where it stopped.
                Err(_) if tx.bytes_read() != read => {
                    if progress.stalled(tx, liveness) {
                        return stalled_message();
                    }
                }
                Err(_) => return End::Silent,
                Ok(None) => return End::PeerGone,
                Ok(Some(Err(e))) => return transport_error(e, ctx),
                Ok(Some(Ok(m))) => break m,
            }
        };
        if matches!(message, Message::Binary(_) | Message::Text(_)) {
            tx.message_done();
        }
        let frame = match message {
            Message::Binary(frame) => frame,
            Message::Text(_) => {
                ctx.stats.rejected_peers.fetch_add(1, Ordering::Relaxed);
                return End::Close(
                    CloseCode::UNSUPPORTED_DATA,
                    "text frames are not supported; send binary".into(),
                );
            }
            // Charged like any message: each ping costs a pong (a copy, a queue, a write), and
            // a peer that pings without end must not get more of the relay than one that sends
            // updates.
            Message::Ping(payload) | Message::Pong(payload) => {
                tx.control_frame_read(payload.len());
                if progress.stalled(tx, liveness) {
                    return stalled_message();
                }
                if let Err(wait) = rate.try_take(payload.len(), &ctx.config) {
                    // Not a reason to start the unfinished-message clock again: the peer chose
                    // to ping that fast.
                    Box::pin(rate.take_after(wait, payload.len(), &ctx.config)).await;
                }
                continue;
            }
            Message::Frame(_) => continue,
            Message::Close(_) => return End::PeerGone,
        };
        if let Err(wait) = rate.try_take(frame.len(), &ctx.config) {
            // Boxed: a timer inline would grow every socket's long-lived future, for a path
            // that peers within the rates never take.
            Box::pin(rate.take_after(wait, frame.len(), &ctx.config)).await;
        }
        let handled = Box::pin(handle_frame(frame, room, peer, tx, presence, ctx)).await;
        // While the server waited (its read rate, an answer waiting for room), it read nothing:
        // an unfinished message that did not grow meanwhile is not the peer's doing.
        progress.restart(tx);
        if let Err((code, reason)) = handled {
            ctx.stats.rejected_peers.fetch_add(1, Ordering::Relaxed);
            return End::Close(code, reason);
        }
        if !greeted {
            greeted = true;
            first.notify_one();
        }
    }
}

/// Handles every message of one binary frame.
async fn handle_frame(
    frame: Bytes,
    room: &Arc<Room>,
    peer: Peer,
    tx: &Arc<Outbox>,
    presence: &mut PeerPresence,
    ctx: &SocketContext,
) -> Result<(), (CloseCode, String)> {
    let messages =
        wire::decode_frame_limited(&frame, room.max_awareness_clients()).map_err(|e| {
            tracing::info!(error = %e, "undecodable frame");
            (e.close_code(), e.to_string())
        })?;
    let single = messages.len() == 1;
    let room_err = |e: RoomError| {
        let (code, reason) = e.close();
        tracing::info!(error = %e, "message refused");
        (code, reason.to_owned())
    };
    for message in messages {
        if tx.kick.token_cancelled() {
            break; // cut off meanwhile: the socket task closes it
        }
        match message {
            WireMessage::Sync(WireSyncMessage::SyncStep1(sv)) => {
                let reply = room.sync_step2(&sv, peer.deflate).await.map_err(room_err)?;
                for frame in reply {
                    // Not queued (the socket is closing): nor is the rest, which must not go
                    // without what came before it.
                    if !tx.offer_reply(frame, liveness(ctx)).await {
                        break;
                    }
                }
            }
            WireMessage::Sync(WireSyncMessage::Update(update)) => {
                // The received frame is exactly this update message: relay it as is.
                let relay = single.then(|| frame.clone());
                room.apply_update(peer.id, &update, relay).await.map_err(room_err)?;
            }
            WireMessage::Sync(WireSyncMessage::SyncStep2(update)) => {
                room.apply_update(peer.id, &update, None).await.map_err(room_err)?;
            }
            WireMessage::Awareness(update) => {
                // Presence needs no document: a big room not built yet takes it as it is.
                let relay = if single {
                    frame.clone()
                } else {
                    Bytes::from(wire::awareness(update.clone()))
                };
                room.apply_awareness(peer.id, presence, update, relay).map_err(room_err)?;
            }
            WireMessage::AwarenessQuery => {
                for frame in room.awareness_frames() {
                    if !tx.offer_reply(frame, liveness(ctx)).await {
                        break;
                    }
                }
            }
            // Clients do not send auth in the y-websocket protocol; tolerate and ignore it.
            WireMessage::Auth(_) => {}
            WireMessage::Custom(tag, _) => {
                return Err((CloseCode::UNSUPPORTED_DATA, format!("unknown message type {tag}")));
            }
        }
    }
    Ok(())
}

/// How long a peer may go without showing it is alive: a ping interval plus the pong timeout.
fn liveness(ctx: &SocketContext) -> Duration {
    ctx.config.ping_interval + ctx.config.pong_timeout
}

/// Maps a transport error to how the socket ends: an oversized frame earns 1009, anything else
/// means the connection is already unusable.
fn transport_error(e: WsError, ctx: &SocketContext) -> End {
    match e {
        WsError::Capacity(c) => {
            ctx.stats.rejected_peers.fetch_add(1, Ordering::Relaxed);
            tracing::info!(error = %c, "frame over the size limit");
            End::Close(CloseCode::MESSAGE_TOO_BIG, "message too big".into())
        }
        // The peer vanished (tab killed, network gone): nothing to answer, nothing to log.
        WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
            End::PeerGone
        }
        WsError::Protocol(p) => {
            ctx.stats.rejected_peers.fetch_add(1, Ordering::Relaxed);
            tracing::info!(error = %p, "websocket protocol error");
            End::Close(CloseCode::PROTOCOL_ERROR, "websocket protocol error".into())
        }
        WsError::Utf8(_) => {
            ctx.stats.rejected_peers.fetch_add(1, Ordering::Relaxed);
            End::Close(CloseCode::INVALID_PAYLOAD, "invalid UTF-8 in text frame".into())
        }
        e => {
            tracing::debug!(error = %e, "transport error");
            End::PeerGone
        }
    }
}
