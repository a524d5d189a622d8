//! The HTTP edge: routes, the one place a socket is admitted, and the error type that turns
//! failures into responses without leaking internals.

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;

/// Initial read buffer per socket (see where it is used).
const READ_BUFFER_BYTES: usize = 1024;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use huddle_protocol::RoomName;
use huddle_protocol::room::RoomNameError;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::connection::{SocketContext, serve_socket};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// What every socket gets.
    pub sockets: SocketContext,
    /// One permit per open socket: the connection limit.
    pub connection_permits: Arc<Semaphore>,
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
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match self {
            AppError::BadRoomName(_) => StatusCode::BAD_REQUEST,
            AppError::TooManyConnections | AppError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        (status, [(header::CACHE_CONTROL, "no-store")], self.to_string()).into_response()
    }
}

/// Accepts connections on `listener` and serves `app` over HTTP/1.1 until `stop` is cancelled;
/// then stops accepting and lets requests in flight finish (upgraded sockets are not waited
/// for here: they have their own shutdown). A client that takes longer than `header_timeout`
/// to send a request's headers is disconnected.
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
    app: Router,
    header_timeout: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    // Nagle would hold small frames back for up to a delayed-ACK period; we coalesce writes
    // ourselves (see `connection`), so every frame can leave at once. Linux copies the option
    // from the listening socket to every accepted one, which saves a syscall per connection.
    let nodelay_inherited = cfg!(target_os = "linux")
        && socket2::SockRef::from(&listener).set_tcp_nodelay(true).is_ok();
    let connections = TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    wait_after_accept_error(e).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        if !nodelay_inherited {
            let _ = tcp.set_nodelay(true);
        }
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
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

/// Admits a socket: the room name is checked before anything else (so a bad one is a plain 400
/// whether or not the request is an upgrade), then the connection limit, then the upgrade.
async fn websocket(
    Path(room): Path<String>,
    State(state): State<AppState>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let room = RoomName::parse(&room)?;
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    if state.sockets.shutdown.is_cancelled() {
        return Err(AppError::ShuttingDown);
    }
    let permit = Arc::clone(&state.connection_permits)
        .try_acquire_owned()
        .map_err(|_| AppError::TooManyConnections)?;
    let limit = state.sockets.config.max_message_bytes;
    let ctx = state.sockets.clone();
    // Taken now, so shutdown waits for this socket even if its upgrade completes late.
    let tracked = state.socket_tasks.token();
    Ok(upgrade
        // tungstenite zero-fills its whole read buffer before every read and allocates it up
        // front: at the 128 KiB default that is a 128 KiB memset per incoming frame and 128 KiB
        // per idle socket. Frames are small; big ones grow the buffer as they arrive.
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            serve_socket(socket, room, ctx).await;
            drop(permit);
            drop(tracked);
        }))
}

#[cfg(test)]
mod tests {
    /// `serve_http1` relies on this to skip a `setsockopt` per connection on Linux.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        socket2::SockRef::from(&listener).set_tcp_nodelay(true).expect("sets TCP_NODELAY");
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connects");
        let (accepted, _) = listener.accept().await.expect("accepts");
        assert!(accepted.nodelay().expect("reads TCP_NODELAY"));
    }
}
