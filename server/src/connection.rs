//! One WebSocket, from admission to close.
//!
//! The pattern (axum's chat example, y-sweet's `handle_socket`): the socket is split; a writer
//! owns the sink and drains the socket's bounded queue, coalescing whatever is queued into one
//! flush; the reader drives the protocol. Both run in one task under `select!`, so when either
//! ends, both end, and the socket is closed once, with the code its ending earned.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use huddle_protocol::RoomName;
use huddle_protocol::session::PeerPresence;
use huddle_protocol::wire::{self, CloseCode, WireMessage, WireSyncMessage};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Error as WsError, Message};

use crate::registry::{Lease, Registry};
use crate::room::{ConnId, PeerTx, Room, RoomError};
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

/// Serves one upgraded socket in `room` until it ends. `deflate`: the client asked for big
/// answers as [`wire::MSG_DEFLATED`] frames ([`wire::DEFLATE_QUERY`]).
///
/// Not an `async fn`: one keeps its arguments in its state for as long as it runs, and this
/// future lives as long as the socket, so every idle socket would carry a dead copy of the
/// whole WebSocket next to the two halves it is split into. Splitting first leaves just the
/// halves.
pub fn serve_socket<S>(
    socket: S,
    room: RoomName,
    deflate: bool,
    ctx: SocketContext,
) -> impl Future<Output = ()> + Send
where
    S: Stream<Item = Result<Message, WsError>>
        + Sink<Message, Error = WsError>
        + Send
        + Unpin
        + 'static,
{
    let id = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
    let span = tracing::info_span!("socket", conn = id.0, %room);
    let (sink, stream) = socket.split();
    serve(sink, stream, room, id, deflate, ctx).instrument(span)
}

async fn serve<S>(
    mut sink: SplitSink<S, Message>,
    mut stream: SplitStream<S>,
    room: RoomName,
    id: ConnId,
    deflate: bool,
    ctx: SocketContext,
) where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Send + Unpin,
{
    // Futures that run once or briefly (joining, handling one frame) are boxed: an async fn's
    // state is as big as its biggest await point, and this one lives as long as the socket, so
    // unboxed they would make every idle socket carry room-loading and sync-answering state.
    let lease = match Box::pin(ctx.registry.join(&room)).await {
        Ok(lease) => lease,
        Err(e) => {
            tracing::error!(error = %e, "room failed to load; refusing socket");
            close(&mut sink, CloseCode::INTERNAL_ERROR, "room failed to load").await;
            return;
        }
    };
    let room = Arc::clone(lease.room());
    let (tx, mut rx) = PeerTx::new(ctx.config.max_queue_frames);
    let kick = Arc::clone(&tx.kick);
    let queued = Arc::clone(&tx.queued);
    let drained = Arc::clone(&tx.drained);
    let greeting = room.subscribe(id, tx.clone());
    // From here on, `member` undoes the join whatever happens, even a panic.
    let mut member =
        Member { id, lease: Some(lease), presence: PeerPresence::default(), ctx: ctx.clone() };
    ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!("socket joined");
    for frame in greeting {
        tx.offer(frame, ctx.config.max_queue_bytes);
    }

    let end = {
        let first = tokio::sync::Notify::new();
        let reader = read_loop(
            &mut stream,
            &room,
            Peer { id, deflate },
            &tx,
            &mut member.presence,
            &ctx,
            &first,
        );
        let writer = async {
            // Clients send their sync step 1 as soon as the socket opens: give it a moment, so
            // our greeting and the answer leave in one write (on loopback a write costs about
            // as much as the rest of a connect).
            let _ = tokio::time::timeout(FIRST_FRAME_WAIT, first.notified()).await;
            write_loop(&mut sink, &mut rx, &queued, &drained, ctx.config.ping_interval).await
        };
        tokio::select! {
            end = reader => end,
            end = writer => end,
            () = kick.kicked() => {
                let (code, reason) = kick.reason().unwrap_or((CloseCode::INTERNAL_ERROR, "closed"));
                if code == CloseCode::TRY_AGAIN_LATER {
                    ctx.stats.slow_peers.fetch_add(1, Ordering::Relaxed);
                }
                End::Close(code, reason.into())
            }
            () = ctx.shutdown.cancelled() => End::Close(CloseCode::GOING_AWAY, "server shutting down".into()),
        }
    };
    // Leave the room (and announce the departure) before spending time on the close handshake.
    drop(member);
    match end {
        End::PeerGone => {
            // Sends the reply to the peer's close frame, if it sent one.
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.flush()).await;
            tracing::debug!("socket closed by peer");
        }
        End::Silent => {
            ctx.stats.dead_peers.fetch_add(1, Ordering::Relaxed);
            tracing::info!("no pong within the timeout; dropping connection");
        }
        End::Close(code, reason) => {
            if code != CloseCode::GOING_AWAY {
                tracing::info!(code = code.0, %reason, "closing socket");
            }
            close(&mut sink, code, &reason).await;
        }
    }
    // Dropping the sink and stream closes the TCP connection.
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

/// Sends a close frame, giving up after [`CLOSE_WRITE_TIMEOUT`] (a peer that does not read).
async fn close<S>(sink: &mut S, code: CloseCode, reason: &str)
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let frame = CloseFrame { code: code.0.into(), reason: reason.into() };
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
}

/// Writes queued frames, coalescing everything queued into one flush, and pings on schedule.
async fn write_loop<S>(
    sink: &mut S,
    rx: &mut mpsc::Receiver<Bytes>,
    queued: &std::sync::atomic::AtomicUsize,
    drained: &tokio::sync::Notify,
    ping_interval: Duration,
) -> End
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Grows to the largest batch seen: an idle socket keeps a few slots, not 64 (2 KiB).
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 64) => {
                if n == 0 {
                    return End::PeerGone;
                }
                for frame in batch.drain(..) {
                    queued.fetch_sub(frame.len(), Ordering::Relaxed);
                    if sink.feed(Message::Binary(frame)).await.is_err() {
                        return End::PeerGone;
                    }
                }
                if sink.flush().await.is_err() {
                    return End::PeerGone;
                }
                drained.notify_one();
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return End::PeerGone;
                }
            }
        }
    }
}

/// Reads frames and drives the protocol until the socket ends or misbehaves.
async fn read_loop<S>(
    stream: &mut S,
    room: &Arc<Room>,
    peer: Peer,
    tx: &PeerTx,
    presence: &mut PeerPresence,
    ctx: &SocketContext,
    first: &tokio::sync::Notify,
) -> End
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    // Any frame proves the peer alive; a healthy peer answers each ping within the timeout.
    let liveness = liveness(ctx);
    let mut greeted = false;
    loop {
        let message = match tokio::time::timeout(liveness, stream.next()).await {
            Err(_) => return End::Silent,
            Ok(None) => return End::PeerGone,
            Ok(Some(Err(e))) => return transport_error(e, ctx),
            Ok(Some(Ok(m))) => m,
        };
        let frame = match message {
            Message::Binary(frame) => frame,
            Message::Text(_) => {
                ctx.stats.rejected_peers.fetch_add(1, Ordering::Relaxed);
                return End::Close(
                    CloseCode::UNSUPPORTED_DATA,
                    "text frames are not supported; send binary".into(),
                );
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => return End::PeerGone,
        };
        if let Err((code, reason)) =
            Box::pin(handle_frame(frame, room, peer, tx, presence, ctx)).await
        {
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
    tx: &PeerTx,
    presence: &mut PeerPresence,
    ctx: &SocketContext,
) -> Result<(), (CloseCode, String)> {
    let messages = wire::decode_frame(&frame).map_err(|e| {
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
                    if !tx.offer_reply(frame, ctx.config.max_queue_bytes, liveness(ctx)).await {
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
                if let Some(frame) = room.awareness_frame() {
                    tx.offer_reply(frame, ctx.config.max_queue_bytes, liveness(ctx)).await;
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
