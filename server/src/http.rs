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
