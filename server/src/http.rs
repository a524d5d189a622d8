//! The HTTP edge: routes, the one place a socket is admitted, and the error type that turns
//! failures into responses without leaking internals.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use huddle_protocol::room::RoomNameError;
use huddle_protocol::{RoomName, wire};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tungstenite::protocol::WebSocketConfig;

use crate::clients::{ClientRefusal, ClientSlot, Clients, Origin};
use crate::connection::{SocketContext, Upgraded, serve_socket};
use crate::stats::Stats;

/// Initial read buffer per socket (see where it is used).
pub(crate) const READ_BUFFER_BYTES: usize = 1024;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// What every socket gets.
    pub sockets: SocketContext,
    /// One permit per open socket: the connection limit.
    pub connection_permits: Arc<Semaphore>,
    /// The places of connections that are not admitted sockets (see [`HttpSlot`]).
    pub http_places: Arc<HttpPlaces>,
    /// The connections each client holds (`--max-connections-per-client`).
    pub clients: Arc<Clients>,
    /// Socket tasks, so shutdown can wait for every socket to close.
    pub socket_tasks: TaskTracker,
}

/// Errors at the HTTP edge.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The room name in the URL is not valid.
    #[error("invalid room name: {0}")]
    BadRoomName(#[from] RoomNameError),
    /// The server is at its connection limit.
    #[error("too many connections; try again later")]
    TooManyConnections,
    /// The client holds as many connections as one client may.
    #[error("too many connections from your address; close some and try again")]
    TooManyFromClient,
    /// The client opened sockets faster than one client may.
    #[error("too many connections from your address lately; try again in {retry_after} s")]
    JoiningTooOften {
        /// Whole seconds until its rate allows the next (`Retry-After`).
        retry_after: u64,
    },
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match self {
            AppError::BadRoomName(_) => StatusCode::BAD_REQUEST,
            AppError::TooManyConnections | AppError::TooManyFromClient | AppError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::JoiningTooOften { .. } => StatusCode::TOO_MANY_REQUESTS,
        };
        let mut response =
            (status, [(header::CACHE_CONTROL, "no-store")], self.to_string()).into_response();
        if let AppError::JoiningTooOften { retry_after } = self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        response
    }
}

/// How long an HTTP client may take before its connection is closed: connections are few
/// (`--max-connections`), and one that sits idle holds its slot and buffers for good.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// To send a request's headers (bounds clients that open a connection and then trickle
    /// or send nothing).
    pub header: std::time::Duration,
    /// To take any of a response: a response the client has not read from for this long
    /// ends the connection (bounds clients that ask for a file and then stop reading). A
    /// WebSocket's outbox applies the same limit to its own frames (see
    /// [`crate::outbox::Limits::write_stall`]).
    pub write_stall: std::time::Duration,
}

/// Accepts connections on `listener` and serves them over HTTP/1.1 until `stop` is cancelled;
/// then stops accepting and lets requests in flight finish (upgraded sockets are not waited
/// for here: they have their own shutdown). Clients that take too long are disconnected (see
/// [`HttpTimeouts`]).
///
/// A connection that opens with a WebSocket upgrade for a room, which is nearly every
/// connection a busy server accepts, is upgraded right here (see [`serve_connection`]);
/// anything else is served by hyper and the router of [`router`].
///
/// Not `axum::serve`: it negotiates HTTP/1 vs HTTP/2 by first reading the 24 bytes of an
/// HTTP/2 preface, which costs every connection an extra `recv` before the request is parsed
/// (a fifth of the syscalls of a WebSocket connect; `strace -c` of 2,000 connects). WebSockets
/// and the web client need HTTP/1.1 only. Also sets a header read timeout, which axum's does
/// not.
///
/// # Errors
/// None in practice: accept errors are logged and retried (see [`wait_after_accept_error`]).
pub async fn serve_http1(
    listener: tokio::net::TcpListener,
    state: AppState,
    timeouts: HttpTimeouts,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let connections = TaskTracker::new();
    let places = Arc::clone(&state.http_places);
    loop {
        let (tcp, peer, place) = tokio::select! {
            accepted = places.accept(&listener) => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    wait_after_accept_error(e).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // A client at its limit is closed at once, before it is given buffers and time (or
        // anyone's place).
        let Some(origin) = state.clients.accepted(peer.ip()) else {
            continue;
        };
        let permit = match place {
            Some(permit) => permit,
            None => {
                tokio::select! {
                    permit = places.place(&state.sockets.stats) => match permit {
                        Some(permit) => permit,
                        None => break,
                    },
                    () = stop.cancelled() => break,
                }
            }
        };
        without_nagle(&tcp);
        connections.spawn(serve_connection(
            tcp,
            origin,
            HttpSlot::new(permit, &state.sockets.stats),
            // Queued from here, in the order connections are accepted (a connection's task may
            // first run later, and not in that order with several runtime threads).
            places.waiting(),
            state.clone(),
            app.clone(),
            timeouts,
            stop.clone(),
        ));
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serves one accepted connection.
///
/// The request head is read and parsed here (with `httparse`, hyper's own parser). If it is a
/// WebSocket upgrade to `/ws/{room}` that [`admit`] accepts, the 101 is written and the
/// connection becomes the room's socket (see [`Admission::serve`]). Anything else — other requests,
/// refused or malformed upgrades — goes to hyper and the router, with the bytes read so far
/// replayed first, so every HTTP response (400, 503, files) still comes from one place.
///
/// Why not hyper for upgrades too: per connect it spawned a second task for the socket, went
/// through the router, the compression layer and a `oneshot` to hand the connection over,
/// and left every socket behind a boxed `Upgraded` with its own buffer; all of that was a
/// large share of the CPU of a connect, which is what a server that thousands of people join
/// after a restart spends its time on (docs/benchmarks.md).
#[allow(clippy::too_many_arguments)] // one call site, each argument different
async fn serve_connection(
    tcp: TcpStream,
    origin: Origin,
    slot: HttpSlot,
    waiting: WaitingHead,
    state: AppState,
    app: Router,
    timeouts: HttpTimeouts,
    stop: tokio_util::sync::CancellationToken,
) {
    match read_head(tcp, waiting, &state, &origin, timeouts.header, &stop).await {
        Opening::Socket { tcp, upgrade, pipelined, admission } => {
            // A socket now, counted by its admission.
            drop(slot);
            accept_socket(tcp, upgrade, pipelined, admission, state.sockets.clone()).await;
        }
        Opening::Http { tcp, head, waiting } => {
            let stats = Arc::clone(&state.sockets.stats);
            serve_hyper(tcp, head, waiting, origin, app, timeouts, stats, stop).await;
        }
        Opening::Gone => {}
    }
}

/// The places under `--max-http-connections`, and which connections in them are still waiting
/// for their request head.
///
/// At the limit, a connection that arrives takes the place of the one that has waited longest
/// for its head, which is closed. Without that, connections that open and then say nothing, or
/// trickle their head, would hold every place for the header timeout, and again as soon as
/// they are closed, while the connections of people opening the page or joining a room wait in
/// the listen backlog: four addresses at `--max-connections-per-client` fill the default
/// 4,096. A client using its connection sends its head in its first packets, so the longest
/// waiting is the least likely to be anyone's page load; an attacker now has to open
/// connections faster than a real client's head arrives to keep one out. A keep-alive
/// connection between two requests waits for a head too, queued from when its last answer was
/// sent (see [`WaitAgainOnEnd`]). Connections being answered are not closed for this: they
/// hold a place for as long as their answer is taken (`--write-timeout-ms` bounds a client
/// that stops taking it).
pub struct HttpPlaces {
    permits: Arc<Semaphore>,
    /// Connections waiting for their head, by when they began to (a sequence number).
    waiting:
        parking_lot::Mutex<std::collections::BTreeMap<u64, tokio_util::sync::CancellationToken>>,
    next: std::sync::atomic::AtomicU64,
}

impl HttpPlaces {
    /// `limit` places.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(limit)),
            waiting: parking_lot::Mutex::new(std::collections::BTreeMap::new()),
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The next connection, with a place if one was free before it arrived (`None`: every
    /// place was taken; see [`HttpPlaces::close_longest_waiting`]).
    async fn accept(
        &self,
        listener: &tokio::net::TcpListener,
    ) -> std::io::Result<(TcpStream, std::net::SocketAddr, Option<OwnedSemaphorePermit>)> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            let (tcp, peer) = listener.accept().await?;
            return Ok((tcp, peer, Some(permit)));
        }
        // Both are cancel-safe: the one that loses loses nothing. A place that is free is
        // taken before anyone is made to give theirs up.
        tokio::select! {
            biased;
            permit = Arc::clone(&self.permits).acquire_owned() => {
                let (tcp, peer) = listener.accept().await?;
                Ok((tcp, peer, permit.ok()))
            }
            accepted = listener.accept() => {
                let (tcp, peer) = accepted?;
                Ok((tcp, peer, None))
            }
        }
    }

    /// A place for a connection accepted when none was free: one freed meanwhile, or the
    /// place of the connection that has waited longest for its head, made to give it up (its
    /// place is free as soon as its task sees that), or else the next to end (`None`: never,
    /// the places are closed).
    async fn place(&self, stats: &Stats) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Some(permit);
        }
        self.close_longest_waiting(stats);
        Arc::clone(&self.permits).acquire_owned().await.ok()
    }

    /// Closes the connection that has waited longest for its request head, if any.
    fn close_longest_waiting(&self, stats: &Stats) {
        let longest = self.waiting.lock().pop_first();
        if let Some((_, token)) = longest {
            token.cancel();
            stats.waiting_heads_closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a new connection as waiting for its head, until it has one or the guard is
    /// dropped.
    fn waiting(self: &Arc<Self>) -> WaitingHead {
        let token = tokio_util::sync::CancellationToken::new();
        let waiting = WaitingHead {
            places: Arc::clone(self),
            at: parking_lot::Mutex::new(None),
            token,
            answered: std::sync::atomic::AtomicBool::new(false),
        };
        waiting.wait_again();
        waiting
    }
}

/// A connection, and whether it is waiting for a request head (see [`HttpPlaces`]).
struct WaitingHead {
    places: Arc<HttpPlaces>,
    /// Its place among those waiting (`None`: not waiting, a request is being answered).
    at: parking_lot::Mutex<Option<u64>>,
    /// Cancelled when the connection is to give its place up.
    token: tokio_util::sync::CancellationToken,
    /// It has answered a request (and may still be sending the answer's last bytes).
    answered: std::sync::atomic::AtomicBool,
}

impl WaitingHead {
    /// Its head has arrived whole: it waits no more (and can no longer be made to give way).
    fn heard(&self) {
        if let Some(at) = self.at.lock().take() {
            self.places.waiting.lock().remove(&at);
        }
    }

    /// Its request is answered: it waits for the next head, behind everyone waiting already.
    fn wait_again(&self) {
        let mut at = self.at.lock();
        if at.is_none() && !self.token.is_cancelled() {
            let next = self.places.next.fetch_add(1, Ordering::Relaxed);
            self.places.waiting.lock().insert(next, self.token.clone());
            *at = Some(next);
        }
    }
}

/// A response's body that, once hyper is done with it (all sent, or the connection gone),
/// counts its connection as waiting for its next request head (see [`HttpPlaces`]): between
/// two requests a keep-alive connection holds its place as a silent new one does, and gives it
/// up the same way. (nginx, out of connections, closes idle keep-alive ones first, too.)
struct WaitAgainOnEnd {
    inner: axum::body::Body,
    waiting: Arc<WaitingHead>,
}

impl hyper::body::Body for WaitAgainOnEnd {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for WaitAgainOnEnd {
    fn drop(&mut self) {
        self.waiting.answered.store(true, Ordering::Relaxed);
        self.waiting.wait_again();
    }
}

impl Drop for WaitingHead {
    fn drop(&mut self) {
        self.heard();
    }
}

/// A connection's place under `--max-http-connections`, held until it ends or becomes an
/// admitted socket (one upgraded through hyper holds it until hyper lets go of the
/// connection, just after the upgrade).
pub struct HttpSlot {
    _permit: OwnedSemaphorePermit,
    stats: Arc<Stats>,
}

impl HttpSlot {
    fn new(permit: OwnedSemaphorePermit, stats: &Arc<Stats>) -> Self {
        stats.http_connections.fetch_add(1, Ordering::Relaxed);
        Self { _permit: permit, stats: Arc::clone(stats) }
    }
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.stats.http_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a connection opened.
enum Opening {
    /// With an upgrade to a room's socket, admitted.
    Socket {
        tcp: TcpStream,
        /// The `Sec-WebSocket-Accept` to answer with.
        upgrade: String,
        /// Bytes the client sent after its request, ahead of the 101.
        pipelined: Vec<u8>,
        admission: Admission,
    },
    /// With anything else; `head` is what was read of it so far. Still waiting for its head
    /// (see [`HttpPlaces`]) until hyper has a whole one.
    Http { tcp: TcpStream, head: Vec<u8>, waiting: WaitingHead },
    /// Closed, broken or too slow before a whole request head arrived: nothing to answer.
    Gone,
}

/// Whether the bytes read since `before` end the request head: a blank line, which may
/// straddle two reads, after lines ending in CRLF or, as HTTP parsers also accept, a bare LF.
fn head_ended(head: &[u8], before: usize) -> bool {
    let new = &head[before.saturating_sub(2)..];
    new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n")
}

/// Reads the start of a connection until it is clear whether it asks for a room's socket.
async fn read_head(
    mut tcp: TcpStream,
    waiting: WaitingHead,
    state: &AppState,
    origin: &Origin,
    header_timeout: std::time::Duration,
    stop: &tokio_util::sync::CancellationToken,
) -> Opening {
    let deadline = tokio::time::Instant::now() + header_timeout;
    let mut head = Vec::with_capacity(HEAD_READ_BYTES);
    loop {
        let before = head.len();
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, tcp.read_buf(&mut head)) => read,
            () = stop.cancelled() => return Opening::Gone,
            () = waiting.token.cancelled() => return Opening::Gone,
        };
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            return Opening::Gone;
        }
        // Parsed after the first read (what is not HTTP at all is told at once) and then once
        // the head has ended (or is as long as a head may be), not after every read: a head
        // trickled in a byte at a time would be parsed again for each byte, up to 16 KiB.
        let parse = before == 0 || head_ended(&head, before) || head.len() >= MAX_HEAD_BYTES;
        match if parse { upgrade_request(&head) } else { Head::Partial } {
            Head::Partial if head.len() < MAX_HEAD_BYTES => {
                if head.len() == head.capacity() {
                    head.reserve(head.len());
                }
            }
            Head::Upgrade { room, deflate, accept, len, forwarded } => {
                // A refusal (400, 429, 503) is answered by the router, like any other request's.
                let Ok(admission) = admit(state, room, deflate, Some(origin), forwarded.as_deref())
                else {
                    return Opening::Http { tcp, head, waiting };
                };
                let pipelined = head.split_off(len);
                return Opening::Socket { tcp, upgrade: accept, pipelined, admission };
            }
            Head::Partial | Head::Other => return Opening::Http { tcp, head, waiting },
        }
    }
}

/// Serves a connection over HTTP/1.1 with hyper and the router, `head` (already read) first.
#[allow(clippy::too_many_arguments)] // one call site, each argument different
async fn serve_hyper(
    tcp: TcpStream,
    head: Vec<u8>,
    waiting: WaitingHead,
    origin: Origin,
    app: Router,
    timeouts: HttpTimeouts,
    stats: Arc<Stats>,
    stop: tokio_util::sync::CancellationToken,
) {
    let io = hyper_util::rt::TokioIo::new(Replay {
        head,
        read: 0,
        tcp,
        stall_limit: timeouts.write_stall,
        stalled: None,
        stats,
    });
    // The router's handlers see who the connection is from (see `websocket`). A whole head
    // has arrived: the connection is not waiting for one any more.
    // Once its answer is sent, it waits for the next (keep-alive) and may be made to give way
    // again.
    let waiting = Arc::new(waiting);
    let (heard, answered) = (Arc::clone(&waiting), Arc::clone(&waiting));
    let app = tower::ServiceExt::map_request(
        app,
        move |mut request: hyper::Request<hyper::body::Incoming>| {
            heard.heard();
            request.extensions_mut().insert(origin.clone());
            request
        },
    );
    let app = tower::ServiceExt::map_response(app, move |response: axum::response::Response| {
        // (An upgrade's connection is done with HTTP: it never waits for a head again.)
        if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
            return response;
        }
        let waiting = Arc::clone(&answered);
        response.map(|inner| axum::body::Body::new(WaitAgainOnEnd { inner, waiting }))
    });
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeouts.header)
        // Requests here are heads without bodies: 64 KiB rather than hyper's 400 KiB bounds
        // what each of `--max-http-connections` can make the server buffer.
        .max_buf_size(MAX_HTTP_BUFFER);
    let conn = builder.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        // Made to give its place up before its head was whole (also when that happened just
        // as `read_head` finished: every connection made to give way frees its place). One
        // that has answered a request may still be sending the answer's last bytes (it is
        // queued once its body is done, not sent): it gets a moment, and is closed at once if
        // idle. One that never sent a whole head has nothing to finish.
        () = waiting.token.cancelled() => {
            if waiting.answered.load(Ordering::Relaxed) {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(GIVE_WAY_GRACE, conn.as_mut()).await;
            }
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Longest a connection made to give its place up may take to finish sending an answer (see
/// [`serve_hyper`]).
/// (A healthy client takes what is left within a round trip; a slow one would keep the place
/// the newcomer waits for.)
const GIVE_WAY_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// First read of a request head: browsers send theirs in well under a kilobyte.
const HEAD_READ_BYTES: usize = 1024;
/// Longest head the WebSocket fast path waits for; a longer one goes to hyper, which has its
/// own limit.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest read buffer hyper may grow for one connection (see [`serve_hyper`]).
const MAX_HTTP_BUFFER: usize = 64 * 1024;
/// Most headers the fast path parses; a request with more goes to hyper.
const MAX_HEADERS: usize = 32;

/// What the start of a connection holds.
#[derive(Debug, PartialEq, Eq)]
enum Head<'a> {
    /// Not a whole request head yet.
    Partial,
    /// A WebSocket upgrade to `/ws/{room}` (the room name not yet checked).
    Upgrade {
        /// The room segment of the path.
        room: &'a str,
        /// The client reads deflated frames ([`wire::DEFLATE_QUERY`]).
        deflate: bool,
        /// The `Sec-WebSocket-Accept` to answer with.
        accept: String,
        /// Length of the head; anything after it was sent ahead of the 101.
        len: usize,
        /// Its `X-Forwarded-For` (several such headers joined, as HTTP reads them).
        forwarded: Option<Vec<u8>>,
    },
    /// Anything else, for hyper (including requests it will refuse).
    Other,
}

/// Parses the head at the start of `bytes`.
fn upgrade_request(bytes: &[u8]) -> Head<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    if request.method != Some("GET") || request.version != Some(1) {
        return Head::Other;
    }
    let path = request.path.unwrap_or_default();
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let Some(room) = path.strip_prefix("/ws/") else { return Head::Other };
    let header = |name: &str| {
        request.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    };
    let Some(accept) = websocket_accept(header) else { return Head::Other };
    let forwarded = forwarded_for(
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|h| h.value),
    );
    Head::Upgrade { room, deflate: wire::wants_deflate(query), accept, len, forwarded }
}

/// The `X-Forwarded-For` of a request whose values of that header are `values`: several are
/// one list, in order (RFC 9110 section 5.3). Raw bytes: what is not text is for
/// [`crate::clients::forwarded_client`] to judge, entry by entry.
fn forwarded_for<'h>(values: impl Iterator<Item = &'h [u8]>) -> Option<Vec<u8>> {
    let mut joined: Option<Vec<u8>> = None;
    for value in values {
        match &mut joined {
            Some(list) => {
                list.push(b',');
                list.extend_from_slice(value);
            }
            None => joined = Some(value.to_vec()),
        }
    }
    joined
}

/// The `Sec-WebSocket-Accept` for a request whose headers (looked up by `header`) ask for a
/// WebSocket (RFC 6455 section 4.2.1), or `None` if they do not. Both ways a socket is
/// upgraded check the same things here.
fn websocket_accept<'h>(header: impl Fn(&str) -> Option<&'h [u8]>) -> Option<String> {
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| {
            v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    if !has_token("connection", "upgrade")
        || !has_token("upgrade", "websocket")
        || header("sec-websocket-version") != Some(b"13")
    {
        return None;
    }
    let key = header("sec-websocket-key")?;
    Some(tungstenite::handshake::derive_accept_key(key))
}

/// The WebSocket settings of every socket.
fn websocket_config(ctx: &SocketContext) -> WebSocketConfig {
    let limit = ctx.config.max_message_bytes;
    WebSocketConfig::default()
        // tungstenite zero-fills its whole read buffer before every read and allocates it up
        // front: at the 128 KiB default that is a 128 KiB memset per incoming frame and 128 KiB
        // per idle socket. Frames are small; big ones grow the buffer as they arrive.
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
}

/// Answers an admitted upgrade with 101 and starts serving the socket.
async fn accept_socket(
    mut tcp: TcpStream,
    accept: String,
    pipelined: Vec<u8>,
    admission: Admission,
    ctx: SocketContext,
) {
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-accept: {accept}\r\n\r\n"
    );
    if let Err(e) = tcp.write_all(response.as_bytes()).await {
        tracing::debug!(error = %e, "websocket upgrade failed");
        return;
    }
    let socket = Upgraded::new(tcp, pipelined, websocket_config(&ctx), &ctx).await;
    admission.serve(socket, ctx);
}

/// A connection whose first bytes were already read (while looking for an upgrade): hyper
/// reads those again before the socket's next bytes. Its writes fail once the client has taken
/// nothing for [`HttpTimeouts::write_stall`], which ends the connection (hyper has no write
/// timeout of its own).
struct Replay {
    head: Vec<u8>,
    read: usize,
    tcp: TcpStream,
    stall_limit: std::time::Duration,
    /// Since when writes have been waiting for the client (reset by any progress).
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: Arc<Stats>,
}

impl Replay {
    /// Passes a write's outcome on, unless writing has been stuck for longer than the stall
    /// limit: then an error, which makes hyper close the connection.
    fn unless_stalled<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        outcome: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if outcome.is_ready() {
            self.stalled = None;
            return outcome;
        }
        let limit = self.stall_limit;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stats.stalled_responses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client stopped reading the response",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.read < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.read);
            buf.put_slice(&this.head[this.read..this.read + n]);
            this.read += n;
            if this.read == this.head.len() {
                this.head = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.unless_stalled(cx, outcome)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.unless_stalled(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.tcp).poll_flush(cx);
        this.unless_stalled(cx, outcome)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// Turns Nagle's algorithm off on an accepted socket: it would hold small frames back for up to
/// a delayed-ACK period, and we coalesce writes ourselves (see `connection`), so every frame can
/// leave at once. Set on every socket, one `setsockopt` each: Linux usually copies the option
/// from a listening socket to the sockets it accepts, but not always. Session 11 saw a few dozen
/// of a benchmark's connections accepted without it from a listener that had it, and those
/// clients' cursors arriving 16 ms late at the median (Nagle meeting delayed ACKs).
fn without_nagle(tcp: &tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted socket");
    }
}

/// After a failed `accept`: a connection that died before it was accepted is nothing; anything
/// else (typically out of file descriptors) is logged, and accepting pauses for a second so
/// the loop does not spin while nothing can be accepted.
async fn wait_after_accept_error(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; pausing for a second");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
}

/// The server's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/ws/{room}", get(websocket))
        .fallback(crate::web::serve)
        .layer(tower_http::compression::CompressionLayer::new())
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.sockets.stats.render(state.sockets.registry.loaded());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// A socket let into a room: it holds one of the connection permits, and shutdown waits for it.
pub struct Admission {
    room: RoomName,
    deflate: bool,
    permit: OwnedSemaphorePermit,
    /// The client's place, if it is counted (see [`Clients::admit`]).
    client: Option<Arc<ClientSlot>>,
    tracked: TaskTrackerToken,
}

impl Admission {
    /// Serves the socket in its room on a task of its own until it ends, then gives the permit
    /// back. A task of its own, rather than the rest of the connection's: that future would
    /// carry everything the connection needed to get here for the socket's whole life.
    fn serve(self, socket: Upgraded, ctx: SocketContext) {
        let Self { room, deflate, permit, client, tracked } = self;
        let serving = serve_socket(socket, room, deflate, ctx);
        tokio::spawn(async move {
            serving.await;
            drop(permit);
            drop(client);
            drop(tracked);
        });
    }
}

/// The one place a socket is admitted, whichever way it was upgraded: the room name is checked
/// first, then that the server is not stopping, then the server's connection limit, then the
/// client's limits (so a socket the server refuses does not spend the client's join rate).
/// `deflate`: the client asked for deflated frames ([`wire::wants_deflate`] of the URL's
/// query). `origin`: who the connection is from (`None`: not counted per client);
/// `forwarded`: the request's `X-Forwarded-For`, believed only from a trusted proxy.
///
/// # Errors
/// The [`AppError`] to answer the request with.
pub fn admit(
    state: &AppState,
    room: &str,
    deflate: bool,
    origin: Option<&Origin>,
    forwarded: Option<&[u8]>,
) -> Result<Admission, AppError> {
    let room = RoomName::parse(room)?;
    if state.sockets.shutdown.is_cancelled() {
        return Err(AppError::ShuttingDown);
    }
    // The server's permit first: a client's join is taken from its rate only for a socket
    // that then gets in (a refused one is tried again through hyper, see `read_head`).
    let permit = Arc::clone(&state.connection_permits)
        .try_acquire_owned()
        .map_err(|_| AppError::TooManyConnections)?;
    let client = match origin {
        Some(origin) => {
            state.clients.admit(origin, forwarded).map_err(|refusal| match refusal {
                ClientRefusal::Connections => AppError::TooManyFromClient,
                ClientRefusal::Joins { wait } => AppError::JoiningTooOften {
                    // Whole seconds, rounded up.
                    retry_after: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
                },
            })?
        }
        None => None,
    };
    // Taken now, so shutdown waits for this socket even if its upgrade completes late.
    Ok(Admission { room, deflate, permit, client, tracked: state.socket_tasks.token() })
}

/// `GET /ws/{room}` as a request hyper serves: refusals (bad room name, limits), requests that
/// are not upgrades, and the rare upgrade that arrives on a connection already used for other
/// requests. (The first request of a connection is upgraded in [`serve_connection`].)
async fn websocket(
    Path(room): Path<String>,
    RawQuery(query): RawQuery,
    State(state): State<AppState>,
    origin: Option<Extension<Origin>>,
    mut request: Request,
) -> Result<Response, AppError> {
    let deflate = query.is_some_and(|q| wire::wants_deflate(&q));
    let headers = request.headers();
    let Some(accept) = websocket_accept(|name| headers.get(name).map(HeaderValue::as_bytes)) else {
        return Ok((
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket"), (header::CACHE_CONTROL, "no-store")],
            "this endpoint speaks WebSocket (the y-websocket protocol)",
        )
            .into_response());
    };
    let forwarded =
        forwarded_for(headers.get_all("x-forwarded-for").iter().map(HeaderValue::as_bytes));
    // Counted here, where the refusal is answered (the accept loop's fast path hands refused
    // upgrades to this handler).
    let admission =
        admit(&state, &room, deflate, origin.as_ref().map(|o| &o.0), forwarded.as_deref())
            .inspect_err(|e| {
                if matches!(e, AppError::TooManyFromClient | AppError::JoiningTooOften { .. }) {
                    state.clients.refused();
                }
            })?;
    let upgrade = hyper::upgrade::on(&mut request);
    let ctx = state.sockets.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                // Every connection hyper serves is a `Replay` (see `serve_hyper`): take the TCP
                // stream back, so this socket is written like any other (see `crate::outbox`).
                let Ok(parts) = upgraded.downcast::<hyper_util::rt::TokioIo<Replay>>() else {
                    tracing::error!("upgraded connection of an unexpected kind; dropped");
                    return;
                };
                let replay = parts.io.into_inner();
                // In the order the client sent them: what hyper read past the request, then
                // what it had not taken of the bytes read before it.
                let mut pipelined = parts.read_buf.to_vec();
                pipelined.extend_from_slice(&replay.head[replay.read..]);
                let socket =
                    Upgraded::new(replay.tcp, pipelined, websocket_config(&ctx), &ctx).await;
                admission.serve(socket, ctx);
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade".to_owned()),
            (header::UPGRADE, "websocket".to_owned()),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::{Head, head_ended, upgrade_request, without_nagle};

    const KEY: &str = "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    fn request(first_line: &str, headers: &str) -> String {
        format!("{first_line}\r\nHost: x\r\n{headers}\r\n")
    }

    #[test]
    fn a_room_upgrade_is_recognised_however_its_headers_are_spelled() {
        let head = request(
            "GET /ws/team-board?token=1 HTTP/1.1",
            &format!(
                "Connection: keep-alive, Upgrade\r\nUPGRADE: WebSocket\r\nSec-WebSocket-Version: 13\r\n{KEY}\
                 X-Forwarded-For: 198.51.100.1\r\nx-forwarded-for: 203.0.113.7\r\n"
            ),
        );
        let mut bytes = head.clone().into_bytes();
        bytes.extend_from_slice(&[0x82, 0x84]); // the client's first frame, sent early
        match upgrade_request(&bytes) {
            Head::Upgrade { room, deflate, accept, len, forwarded } => {
                assert_eq!(room, "team-board");
                assert_eq!(
                    forwarded.as_deref(),
                    Some(&b"198.51.100.1,203.0.113.7"[..]),
                    "one list"
                );
                assert!(!deflate, "only `deflate=1` asks for deflated frames");
                // RFC 6455's own example.
                assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
                assert_eq!(len, head.len());
            }
            other => panic!("not recognised: {other:?}"),
        }
        let asks = head.replace("?token=1", "?token=1&deflate=1");
        assert!(matches!(upgrade_request(asks.as_bytes()), Head::Upgrade { deflate: true, .. }));
    }

    #[test]
    fn a_head_is_parsed_once_its_blank_line_arrived_even_split_across_reads() {
        let head = b"GET /ws/r HTTP/1.1\r\nHost: x\r\n\r\n";
        let end = head.len();
        // Every way of reading it in two parts: ended only once the last byte is in.
        for cut in 1..end {
            assert!(!head_ended(&head[..cut], 0), "not ended at {cut}");
            assert!(head_ended(head, cut), "ended with the read from {cut}");
        }
        // A byte at a time, each read looked at once.
        let ended: Vec<usize> = (1..=end).filter(|&n| head_ended(&head[..n], n - 1)).collect();
        assert_eq!(ended, [end]);
        // Bare line feeds, as httparse and hyper accept them.
        let bare = b"GET / HTTP/1.1\nHost: x\n\n";
        let ended: Vec<usize> =
            (1..=bare.len()).filter(|&n| head_ended(&bare[..n], n - 1)).collect();
        assert_eq!(ended, [bare.len()]);
    }

    #[test]
    fn anything_else_goes_to_the_router() {
        let upgrade = format!(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{KEY}"
        );
        for (what, head) in [
            ("a page", request("GET /r/room HTTP/1.1", &upgrade)),
            ("no upgrade headers", request("GET /ws/room HTTP/1.1", "")),
            (
                "no key",
                request(
                    "GET /ws/room HTTP/1.1",
                    "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
                ),
            ),
            ("an old version", request("GET /ws/room HTTP/1.1", &upgrade.replace(": 13", ": 8"))),
            ("another method", request("POST /ws/room HTTP/1.1", &upgrade)),
            ("HTTP/1.0", request("GET /ws/room HTTP/1.0", &upgrade)),
            ("not HTTP", "\x16\x03\x01 hello\r\n\r\n".to_owned()),
        ] {
            assert_eq!(upgrade_request(head.as_bytes()), Head::Other, "{what}");
        }
        let half = request("GET /ws/room HTTP/1.1", &upgrade);
        assert_eq!(upgrade_request(&half.as_bytes()[..half.len() - 2]), Head::Partial);
    }

    /// The accept loop's `without_nagle` sets the option itself, whatever the listener has.
    #[tokio::test]
    async fn accepted_sockets_get_nodelay_whatever_the_listener_has() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connects");
        let (accepted, _) = listener.accept().await.expect("accepts");
        assert!(!accepted.nodelay().expect("reads TCP_NODELAY"), "Nagle is on by default");
        without_nagle(&accepted);
        assert!(accepted.nodelay().expect("reads TCP_NODELAY"));
    }
}
