//! Server configuration: command-line flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use huddle_protocol::presence::PresenceLimits;

use crate::clients::TrustedProxies;
use crate::connection::SocketConfig;
use crate::room::RoomConfig;
use crate::store::sqlite::Durability;

/// Most bytes of presence in one room (see [`RoomConfig::max_room_presence_bytes`]): a
/// thousand people with 8 KiB of state each, a quarter of a socket's default queue budget.
const MAX_ROOM_PRESENCE_BYTES: usize = 8 << 20;

/// File descriptors kept for what is not a connection: the database and its WAL, the update
/// journal's files, the listening socket, logs, the runtime's own.
const OPEN_FILES_RESERVE: u64 = 256;

/// The share of the open-files limit (one in this many) that HTTP places keep when the
/// connection limits do not fit in it (see [`Config::fit_open_files`]). HTTP connections are
/// page loads and upgrades whose request is still being read, each over in moments, and at the
/// limit the one waiting longest for its head gives its place up; the sockets people stay on
/// need the descriptors. At 20,000: 1,234 HTTP places, 18,510 WebSockets.
pub const HTTP_SHARE_OF_OPEN_FILES: u64 = 16;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Huddle's realtime relay: rooms over the Yjs y-websocket protocol, persisted to SQLite.
#[derive(Debug, Clone, Parser)]
#[command(name = "huddle-server", version, about)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "HUDDLE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Directory holding the SQLite database.
    #[arg(long, env = "HUDDLE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// `process` (the default) commits every update to the OS before anyone sees it: nothing
    /// is lost when the server dies, even by `kill -9`. `full` also fsyncs every commit, so a
    /// power cut loses nothing either, at the price of the disk's fsync latency on every edit.
    #[arg(long, env = "HUDDLE_DURABILITY", value_enum, default_value_t = Durability::Process)]
    pub durability: Durability,

    /// Runtime threads for sockets. 1 (the default) is cheapest per message; more help only
    /// when one core cannot keep up with the sockets.
    #[arg(long, env = "HUDDLE_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,

    /// Log format.
    #[arg(long, env = "HUDDLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Largest WebSocket message accepted, in bytes; larger ones close the socket with 1009.
    #[arg(long, env = "HUDDLE_MAX_MESSAGE_BYTES", default_value_t = 32 << 20,
          value_parser = clap::value_parser!(u32).range(1024..=(256 << 20)))]
    pub max_message_bytes: u32,

    /// Most WebSocket connections at once; more are refused with 503.
    #[arg(long, env = "HUDDLE_MAX_CONNECTIONS", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Most connections one client may hold at once: its WebSockets, and if it connects
    /// directly, its other connections too. An IPv6 client is its /64; a client behind a
    /// trusted proxy is the one its `X-Forwarded-For` names. Sockets over the limit are
    /// refused with 503, direct connections closed at once.
    #[arg(long, env = "HUDDLE_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_client: u32,

    /// Most room sockets one client may open per second, on average (ten seconds' worth at
    /// once); more get 429 until its rate allows. Each join makes the server answer a sync,
    /// which for a big room costs milliseconds of CPU. Counted like
    /// `--max-connections-per-client`.
    #[arg(long, env = "HUDDLE_MAX_CLIENT_JOINS_PER_SECOND", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_client_joins_per_second: u32,

    /// Reverse proxies in front of the server, as comma-separated addresses or CIDR ranges
    /// (`none` for none): connections from them count for the client their `X-Forwarded-For`
    /// names. Only list proxies that set that header themselves.
    #[arg(long, env = "HUDDLE_TRUSTED_PROXIES", default_value = "127.0.0.0/8,::1")]
    pub trusted_proxies: TrustedProxies,

    /// Most connections at once that are not WebSockets (yet): requests for the web client's
    /// files, and upgrades whose request is still being read; admitted WebSockets do not
    /// count. At the limit, a new connection takes the place of the one that has waited
    /// longest for its request head (closed), or waits to be accepted if none is waiting; so
    /// connections that open and then trickle or say nothing can neither take every file
    /// descriptor and buffer the server has nor keep people out.
    #[arg(long, env = "HUDDLE_MAX_HTTP_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_http_connections: u32,

    /// Most messages per second one socket is read at, on average (ten seconds' worth may come
    /// at once). A faster sender is slowed, not disconnected.
    #[arg(long, env = "HUDDLE_MAX_MESSAGES_PER_SECOND", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_messages_per_second: u32,

    /// Most bytes per second one socket is read at, on average (ten seconds' worth, and at
    /// least two of the largest messages, may come at once). A faster sender is slowed.
    #[arg(long, env = "HUDDLE_MAX_BYTES_PER_SECOND", default_value_t = 16 << 20,
          value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_bytes_per_second: u32,

    /// Most bytes a room's board may take in storage (its snapshot and the updates since);
    /// past this, edits that add to it close their socket with 1008 (deletions still work).
    #[arg(long, env = "HUDDLE_MAX_ROOM_BYTES", default_value_t = 256 << 20,
          value_parser = clap::value_parser!(u64).range(4096..))]
    pub max_room_bytes: u64,

    /// Most bytes queued for one socket before it is closed as too slow (it resyncs on reconnect).
    #[arg(long, env = "HUDDLE_MAX_QUEUE_BYTES", default_value_t = 32 << 20,
          value_parser = clap::value_parser!(u32).range(65536..))]
    pub max_queue_bytes: u32,

    /// Most bytes of messages not yet whole that all sockets together may hold (default:
    /// eight of the largest messages, at least 256 MiB). When a socket's message would pass
    /// it, sockets holding slower ones are closed with 1013 to make room, slowest first; if
    /// closing them would not do, the socket itself is.
    #[arg(long, env = "HUDDLE_MAX_UNFINISHED_INPUT_BYTES",
          value_parser = clap::value_parser!(u64).range(1 << 20..))]
    pub max_unfinished_input_bytes: Option<u64>,

    /// Most frames queued for one socket before it is closed as too slow.
    #[arg(long, env = "HUDDLE_MAX_QUEUE_FRAMES", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(16..))]
    pub max_queue_frames: u32,

    /// Milliseconds between pings to each client.
    #[arg(long, env = "HUDDLE_PING_INTERVAL_MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub ping_interval_ms: u64,

    /// Milliseconds a client may stay silent after a ping before it is dropped.
    #[arg(long, env = "HUDDLE_PONG_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub pong_timeout_ms: u64,

    /// Milliseconds a client may take to send a request's headers before its connection is
    /// closed (bounds connections that open and then trickle or send nothing).
    #[arg(long, env = "HUDDLE_HEADER_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub header_timeout_ms: u64,

    /// Milliseconds an HTTP response, or what waits to be written to a WebSocket, may wait for
    /// the client to take any of it before the connection is closed (bounds clients that ask for
    /// a file, or a room, and then stop reading).
    #[arg(long, env = "HUDDLE_WRITE_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub write_timeout_ms: u64,

    /// Milliseconds a room with nobody in it stays in memory before it is saved and unloaded.
    #[arg(long, env = "HUDDLE_ROOM_IDLE_MS", default_value_t = 30_000)]
    pub room_idle_ms: u64,

    /// Updates in a room's log that trigger a background snapshot.
    #[arg(long, env = "HUDDLE_COMPACT_EVERY", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub compact_every: u64,
}

impl Config {
    /// The defaults, with `data_dir` (what tests and embedders start from).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Self::parse_from(["huddle-server"]);
        config.data_dir = data_dir.into();
        config
    }

    pub(crate) fn socket(&self) -> SocketConfig {
        SocketConfig {
            max_message_bytes: self.max_message_bytes as usize,
            max_queue_frames: self.max_queue_frames as usize,
            max_queue_bytes: self.max_queue_bytes as usize,
            ping_interval: Duration::from_millis(self.ping_interval_ms),
            pong_timeout: Duration::from_millis(self.pong_timeout_ms),
            max_messages_per_second: self.max_messages_per_second,
            max_bytes_per_second: self.max_bytes_per_second,
            write_stall: Duration::from_millis(self.write_timeout_ms),
        }
    }

    /// Fits the connection limits into `open_files`, the process's open-files limit: every
    /// WebSocket and every HTTP connection is a file descriptor, and so are the database, its
    /// log and the update journal. With limits the descriptors cannot hold, accepting fails
    /// (and so does opening the next journal file) instead of the 503 the limit promises.
    ///
    /// When both limits do not fit beside the reserve, the HTTP places keep at most a
    /// sixteenth of the descriptors ([`HTTP_SHARE_OF_OPEN_FILES`]) and the WebSockets get the
    /// rest (up to `max_connections`; the HTTP places then take whatever the WebSockets leave).
    /// Lowering only the WebSockets, as before, left a host whose limit is 4,096 (a common
    /// hard limit) no WebSocket at all beside the default 4,096 HTTP places, so the server
    /// refused to start, and one at 20,000 a fifth of its descriptors idle in HTTP places.
    /// Returns a warning naming what was lowered (`None` if the limits fit as they are).
    ///
    /// # Errors
    /// A one-line message naming the fix when the limit leaves no descriptor for connections
    /// beside the reserve.
    pub fn fit_open_files(&mut self, open_files: u64) -> Result<Option<String>, String> {
        let budget = open_files.saturating_sub(OPEN_FILES_RESERVE);
        let (sockets, http) =
            (u64::from(self.max_connections), u64::from(self.max_http_connections));
        if sockets + http <= budget {
            return Ok(None);
        }
        if budget < 2 {
            return Err(format!(
                "the open-files limit ({open_files}) leaves no room for connections beside the \
                 {OPEN_FILES_RESERVE} files the server keeps for itself: raise it (ulimit -n)"
            ));
        }
        let http_floor = http.min((budget / HTTP_SHARE_OF_OPEN_FILES).max(1));
        let sockets_fitted = sockets.min(budget - http_floor);
        let http_fitted = http.min(budget - sockets_fitted);
        let mut lowered = Vec::new();
        if sockets_fitted < sockets {
            lowered.push(format!("--max-connections {sockets} to {sockets_fitted}"));
        }
        if http_fitted < http {
            lowered.push(format!("--max-http-connections {http} to {http_fitted}"));
        }
        // Both fit in `budget`, itself below `open_files`, a u64 made from a u32-sized limit
        // or less; saturate rather than trust that.
        self.max_connections = u32::try_from(sockets_fitted).unwrap_or(u32::MAX);
        self.max_http_connections = u32::try_from(http_fitted).unwrap_or(u32::MAX);
        Ok(Some(format!(
            "lowered {} to fit the open-files limit of {open_files}; raise it (ulimit -n) to \
             allow more",
            lowered.join(" and ")
        )))
    }

    /// The most bytes of messages not yet whole the sockets may hold together (see
    /// [`crate::outbox::InputBudget`]): as set, or eight of the largest messages, at least
    /// 256 MiB.
    pub fn unfinished_input_budget(&self) -> u64 {
        self.max_unfinished_input_bytes
            .unwrap_or_else(|| (8 * u64::from(self.max_message_bytes)).max(256 << 20))
    }

    /// The rooms' settings (also what tests and the relay guard start from).
    pub fn room(&self) -> RoomConfig {
        RoomConfig {
            idle_unload: Duration::from_millis(self.room_idle_ms),
            compact_every: self.compact_every,
            presence: PresenceLimits::default(),
            presence_per_socket: huddle_protocol::session::OwnedLimits {
                clients: 8,
                bytes: 64 << 10,
            },
            max_room_presence_bytes: MAX_ROOM_PRESENCE_BYTES,
            max_room_bytes: self.max_room_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_are_fitted_into_the_open_files_limit() {
        let defaults = || {
            let mut config = Config::with_data_dir("unused");
            (config.max_connections, config.max_http_connections) = (65_536, 4096);
            config
        };
        let limits = |c: &Config| (c.max_connections, c.max_http_connections);
        // Room for everything: nothing changes.
        let mut config = defaults();
        assert_eq!(config.fit_open_files(1 << 20), Ok(None));
        assert_eq!(limits(&config), (65_536, 4096));

        // This machine's hard limit: HTTP keeps a sixteenth, the WebSockets get the rest.
        let warning = config.fit_open_files(20_000).expect("fits").expect("a warning");
        let budget = 20_000 - 256;
        assert_eq!(limits(&config), (budget - budget / 16, budget / 16));
        assert!(
            warning.contains("--max-connections 65536 to")
                && warning.contains("--max-http-connections 4096 to")
                && warning.contains("ulimit -n")
                && !warning.contains('\n'),
            "{warning}"
        );
        assert_eq!(config.fit_open_files(20_000), Ok(None), "fitted now");

        // A common hard limit, 4,096: the defaults used to leave no WebSocket and refuse to start.
        let mut config = defaults();
        config.fit_open_files(4096).expect("fits");
        assert_eq!(limits(&config), (3840 - 240, 240));

        // Few WebSockets asked for: they keep their number, and HTTP gets what they leave.
        let mut config = defaults();
        config.max_connections = 1000;
        let warning = config.fit_open_files(4096).expect("fits").expect("a warning");
        assert_eq!(limits(&config), (1000, 2840));
        assert!(!warning.contains("--max-connections"), "{warning}");

        // Few HTTP places asked for: kept, the WebSockets get the rest.
        let mut config = defaults();
        config.max_http_connections = 100;
        config.fit_open_files(20_000).expect("fits");
        assert_eq!(limits(&config), (budget - 100, 100));

        // Room for one of each at the least.
        let mut config = defaults();
        config.fit_open_files(258).expect("fits");
        assert_eq!(limits(&config), (1, 1));

        // Not even that: a one-line error naming the fix.
        let error = defaults().fit_open_files(257).expect_err("nothing fits");
        assert!(error.contains("ulimit -n") && !error.contains('\n'), "{error}");
    }
}
