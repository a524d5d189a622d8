//! Counters the server keeps about itself, exported as Prometheus text at `GET /metrics`.
//!
//! Plain atomics rather than the `metrics` crate and an exporter: a handful of counters do not
//! justify an HTTP exporter stack, and tests read these directly.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Server-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Rooms loaded from the store (one per load, however many sockets wait for it).
    pub room_loads: AtomicU64,
    /// Big stored rooms decoded into a document after loading, when first needed (a room
    /// people only look at is served from its snapshot and never decoded).
    pub room_builds: AtomicU64,
    /// Rooms written back and dropped from memory after going idle.
    pub room_unloads: AtomicU64,
    /// Open WebSocket connections.
    pub connections: AtomicUsize,
    /// Open connections that are not (yet) WebSockets: requests for files and metrics, and
    /// upgrades whose request is still being read (see `--max-http-connections`).
    pub http_connections: AtomicUsize,
    /// Document updates accepted (durable and relayed).
    pub updates: AtomicU64,
    /// Frames queued to sockets by the fan-out.
    pub frames_relayed: AtomicU64,
    /// Snapshots written.
    pub compactions: AtomicU64,
    /// Sockets closed for sending bad input.
    pub rejected_peers: AtomicU64,
    /// Sockets closed for not keeping up.
    pub slow_peers: AtomicU64,
    /// Awareness updates refused because their room's presence was at its limit.
    pub presence_refused: AtomicU64,
    /// Sockets closed for not answering pings.
    pub dead_peers: AtomicU64,
    /// HTTP connections closed because the client stopped reading a response.
    pub stalled_responses: AtomicU64,
    /// Sync answers compressed for clients that asked (a big room's first sync is compressed
    /// once per version of the room, however many open it).
    pub answers_deflated: AtomicU64,
    /// Diffs for clients that have part of a big room, encoded on the blocking pool (a
    /// returning visitor, a reconnect): how often big rooms are resynced rather than opened.
    pub pool_diffs: AtomicU64,
    /// `write`s to sockets: against `frames_relayed`, how many frames share a write.
    pub socket_writes: AtomicU64,
    /// Connections and sockets refused because their client held as many as it may
    /// (`--max-connections-per-client`).
    pub client_limit_refusals: AtomicU64,
    /// Clients (addresses, IPv6 /64s) holding connections that are counted per client.
    pub clients: AtomicUsize,
    /// Connections closed, with every HTTP place taken, to make a place for a new one: each
    /// had waited longest for its request head (see `http::HttpPlaces`).
    pub waiting_heads_closed: AtomicU64,
}

impl Stats {
    /// The counters in the Prometheus text format; `rooms_loaded` is passed in by the registry.
    pub fn render(&self, rooms_loaded: usize) -> String {
        let mut out = String::new();
        let counters = [
            (
                "huddle_room_loads_total",
                "Rooms loaded from storage.",
                self.room_loads.load(Ordering::Relaxed),
            ),
            (
                "huddle_room_builds_total",
                "Big stored rooms decoded when first needed.",
                self.room_builds.load(Ordering::Relaxed),
            ),
            (
                "huddle_room_unloads_total",
                "Idle rooms unloaded.",
                self.room_unloads.load(Ordering::Relaxed),
            ),
            (
                "huddle_updates_total",
                "Document updates accepted.",
                self.updates.load(Ordering::Relaxed),
            ),
            (
                "huddle_frames_relayed_total",
                "Frames queued to sockets.",
                self.frames_relayed.load(Ordering::Relaxed),
            ),
            (
                "huddle_compactions_total",
                "Snapshots written.",
                self.compactions.load(Ordering::Relaxed),
            ),
            (
                "huddle_rejected_peers_total",
                "Sockets closed for bad input.",
                self.rejected_peers.load(Ordering::Relaxed),
            ),
            (
                "huddle_slow_peers_total",
                "Sockets closed for being too slow.",
                self.slow_peers.load(Ordering::Relaxed),
            ),
            (
                "huddle_dead_peers_total",
                "Sockets closed for missing pongs.",
                self.dead_peers.load(Ordering::Relaxed),
            ),
            (
                "huddle_stalled_responses_total",
                "HTTP connections closed because the client stopped reading a response.",
                self.stalled_responses.load(Ordering::Relaxed),
            ),
            (
                "huddle_answers_deflated_total",
                "Answers compressed for clients that asked.",
                self.answers_deflated.load(Ordering::Relaxed),
            ),
            (
                "huddle_pool_diffs_total",
                "Sync answers for clients that had part of a big room, encoded off the relay's thread.",
                self.pool_diffs.load(Ordering::Relaxed),
            ),
            (
                "huddle_presence_refused_total",
                "Awareness updates refused because their room's presence was full.",
                self.presence_refused.load(Ordering::Relaxed),
            ),
            (
                "huddle_socket_writes_total",
                "Writes to sockets (frames queued together share one).",
                self.socket_writes.load(Ordering::Relaxed),
            ),
            (
                "huddle_client_limit_refusals_total",
                "Connections refused because their client held as many as it may.",
                self.client_limit_refusals.load(Ordering::Relaxed),
            ),
            (
                "huddle_waiting_heads_closed_total",
                "Connections that had waited longest for their request head, closed to make a place for a new one.",
                self.waiting_heads_closed.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let gauges = [
            (
                "huddle_connections",
                "Open WebSocket connections.",
                self.connections.load(Ordering::Relaxed),
            ),
            (
                "huddle_http_connections",
                "Open connections that are not WebSockets (yet).",
                self.http_connections.load(Ordering::Relaxed),
            ),
            (
                "huddle_clients",
                "Client addresses holding connections counted per client.",
                self.clients.load(Ordering::Relaxed),
            ),
            ("huddle_rooms_loaded", "Rooms in memory.", rooms_loaded),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        out
    }
}
