//! `huddle-server`: the realtime relay behind Huddle.
//!
//! Rooms are Yjs documents spoken over the standard y-websocket protocol at `GET /ws/{room}`,
//! kept in memory while anyone is connected and persisted to SQLite before anything is relayed.
//!
//! Modules:
//! - [`config`]: flags and environment ([`Config`]).
//! - [`http`]: routes, socket admission, [`http::AppError`].
//! - [`clients`]: connections per client, and who is behind a trusted proxy.
//! - `gcra`: token buckets (read rates, joins per client).
//! - [`connection`]: one socket's reader loop, pings, close codes.
//! - [`outbox`]: a socket's queued frames, and the flusher that writes them.
//! - [`registry`]: which rooms are in memory; single load, idle unload.
//! - [`room`]: a loaded room: where messages enter, are persisted and fan out.
//! - [`persist`]: group commit and durability watermarks.
//! - [`store`]: the [`store::Store`] trait, SQLite and in-memory backends.
//! - [`stats`]: counters served at `/metrics`.
//! - [`web`]: the embedded web client, with deep links to rooms.
//!
//! Binaries stay thin: `main.rs` parses [`Config`] and calls [`run`]; tests call [`Server`] with
//! their own listener and shutdown signal.

pub mod clients;
pub mod config;
pub mod connection;
pub(crate) mod gcra;
pub mod http;
pub mod outbox;
pub mod persist;
pub mod registry;
pub mod room;
pub mod stats;
pub mod store;
pub mod web;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use crate::connection::SocketContext;
use crate::http::AppState;
use crate::persist::Persister;
use crate::registry::Registry;
use crate::stats::Stats;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Opening the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listener failed.
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A configured server, ready to serve on a listener.
pub struct Server {
    config: Config,
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
}

impl Server {
    /// Opens the SQLite store in `config.data_dir`.
    ///
    /// # Errors
    /// [`ServerError::Store`] if the data directory or database cannot be opened.
    pub async fn open(config: Config) -> Result<Self, ServerError> {
        let store = SqliteStore::open(&config.data_dir, config.durability).await?;
        Ok(Self::with_store(config, Arc::new(store)))
    }

    /// A server over any store.
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> Self {
        Self { config, store, stats: Arc::new(Stats::default()) }
    }

    /// The server's counters (also served at `/metrics`).
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Serves on `listener` until `shutdown` resolves; then stops accepting, closes every socket
    /// with 1001, snapshots every room, and returns.
    ///
    /// # Errors
    /// [`ServerError::Io`] if the listener fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let cancel = CancellationToken::new();
        let background = TaskTracker::new();
        let persister_tasks = TaskTracker::new();
        let persister = Persister::start(Arc::clone(&self.store), &persister_tasks);
        let registry = Registry::new(
            Arc::clone(&self.store),
            persister.clone(),
            self.config.room(),
            Arc::clone(&self.stats),
            background.clone(),
            cancel.clone(),
        );
        let state = AppState {
            sockets: SocketContext {
                registry: registry.clone(),
                stats: Arc::clone(&self.stats),
                config: Arc::new(self.config.socket()),
                shutdown: cancel.clone(),
                flushers: crate::outbox::Flushers::start(&self.stats),
                input: crate::outbox::InputBudget::new(self.config.unfinished_input_budget()),
            },
            connection_permits: Arc::new(Semaphore::new(self.config.max_connections as usize)),
            http_places: http::HttpPlaces::new(self.config.max_http_connections as usize),
            clients: clients::Clients::new(
                clients::ClientLimits {
                    connections: self.config.max_connections_per_client,
                    joins_per_second: self.config.max_client_joins_per_second,
                },
                self.config.trusted_proxies.clone(),
                Arc::clone(&self.stats),
            ),
            socket_tasks: TaskTracker::new(),
        };
        let socket_tasks = state.socket_tasks.clone();
        {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                shutdown.await;
                cancel.cancel();
            });
        }
        let timeouts = http::HttpTimeouts {
            header: std::time::Duration::from_millis(self.config.header_timeout_ms),
            write_stall: std::time::Duration::from_millis(self.config.write_timeout_ms),
        };
        let served = http::serve_http1(listener, state, timeouts, cancel.clone()).await;
        cancel.cancel();
        tracing::info!("shutting down: closing sockets");
        socket_tasks.close();
        socket_tasks.wait().await;
        tracing::info!("saving rooms");
        registry.flush_all().await;
        background.close();
        background.wait().await;
        persister.stop();
        persister_tasks.close();
        persister_tasks.wait().await;
        self.store.close().await;
        tracing::info!("stopped");
        served.map_err(ServerError::Io)
    }
}

/// Opens the store from `config` and serves on `listener` until `shutdown` resolves.
///
/// # Errors
/// See [`Server::open`] and [`Server::serve`].
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Server::open(config).await?.serve(listener, shutdown).await
}
