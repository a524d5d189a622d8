//! Connections per client. The server's connection limits (`--max-connections`,
//! `--max-http-connections`) are shared by everyone, so without a limit per client one address
//! could take every place and lock everyone else out. `--max-connections-per-client` caps what
//! one client holds at once. (It takes several addresses to fill the server now, not one: what
//! stops many addresses is a firewall's or a proxy's job.) And `--max-client-joins-per-second`
//! caps how often one client may open a room's socket: each join makes the server answer a
//! sync, which for a big room the client holds part of costs milliseconds of CPU, so without
//! it one address reconnecting in a loop could keep the cores busy.
//!
//! A client is its IP address, and an IPv6 client its /64: one host is usually given a whole
//! /64, so counting single addresses would let it take every place.
//!
//! Behind a reverse proxy every connection comes from the proxy's address. Connections from a
//! trusted proxy (`--trusted-proxies`, loopback by default) are therefore not counted as one
//! client: a socket upgraded through one counts for the client its `X-Forwarded-For` names,
//! the rightmost address there that is not itself a trusted proxy (everything to the left of
//! that is what the client said about itself, which anyone can forge; a proxy that passes the
//! client's header on without appending the address it saw defeats this, so only such proxies
//! may be trusted). An entry there that is not an address counts as the proxy itself, so
//! garbage cannot switch the limit off. HTTP connections from a proxy are the proxy's to
//! limit, and so is a socket whose request names no client (a local tool such as the
//! benchmark, which connects from loopback).
//!
//! A plain table under a mutex rather than a crate: an entry goes when its client holds no
//! connection and its join bucket is full again (at most `gcra::BURST_SECONDS` after its last
//! join), or, if it still remembered a join then, at the next sweep, when the table has
//! doubled; so the table is bounded by the connection limits and the joins of the last ten
//! seconds, twice over. One lock per connect and per disconnect is nothing next to the
//! connect's system calls.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ipnet::{IpNet, Ipv4Net};
use parking_lot::Mutex;

use crate::stats::Stats;

/// The addresses of reverse proxies whose `X-Forwarded-For` is believed (`--trusted-proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Whether `ip` is one of them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Why a `--trusted-proxies` value was refused.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an address or a CIDR range (write e.g. `10.0.0.0/8,::1`, or `none`)")]
pub struct BadProxyList(String);

impl FromStr for TrustedProxies {
    type Err = BadProxyList;

    /// Comma-separated addresses and CIDR ranges; `none` (or nothing) for no proxy at all.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(Self(Vec::new()));
        }
        s.split(',')
            .map(str::trim)
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| ipv4_if_mapped(net).trunc())
                    .map_err(|_| BadProxyList(item.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// An IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) as the IPv4 range it stands for:
/// addresses are compared as IPv4 (see [`TrustedProxies::contains`]).
fn ipv4_if_mapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        net => net,
    }
}

/// One client, as the limits count them: an IPv4 address, or an IPv6 address's /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The client `ip` counts as.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                Self(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

/// Who an `X-Forwarded-For` names, read from the right (see [`forwarded_client`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// This client: the rightmost entry that is not a trusted proxy.
    Client(IpAddr),
    /// Nobody but trusted proxies (or nothing at all): the request started at a proxy.
    Proxies,
    /// An entry where the client should be is not an address (not text, `unknown`, a zone).
    Unreadable,
}

/// The client an `X-Forwarded-For` value (its raw bytes, several headers joined by commas)
/// names, as seen by a trusted proxy: the rightmost entry that is not a trusted proxy itself.
/// Only the entries up to that one are read, so whatever the client put left of it, text or
/// not, changes nothing.
pub fn forwarded_client(forwarded: &[u8], trusted: &TrustedProxies) -> Forwarded {
    for entry in forwarded.rsplit(|&b| b == b',') {
        let entry = entry.trim_ascii();
        if entry.is_empty() {
            continue;
        }
        let Some(ip) = std::str::from_utf8(entry).ok().and_then(parse_entry) else {
            return Forwarded::Unreadable;
        };
        if !trusted.contains(ip) {
            return Forwarded::Client(ip);
        }
    }
    Forwarded::Proxies
}

/// An `X-Forwarded-For` entry's address: bare, bracketed (IPv6), or with a port after it.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse::<IpAddr>().ok())
}

/// The connections each client holds and how fast it joins, and the limits on them.
pub struct Clients {
    table: Mutex<Table>,
    limits: ClientLimits,
    trusted: TrustedProxies,
    stats: Arc<Stats>,
}

/// What one client may do.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Most connections held at once (`--max-connections-per-client`).
    pub connections: u32,
    /// Most room sockets opened per second, on average (`--max-client-joins-per-second`;
    /// ten seconds' worth at once).
    pub joins_per_second: u32,
}

#[derive(Default)]
struct Table {
    clients: HashMap<ClientKey, Held>,
    /// Entries that hold connections (the others only remember a recent join).
    holding: usize,
    /// Size at which entries that only remember a join long past are swept out.
    sweep_at: usize,
}

/// One client's entry.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    connections: u32,
    /// Its join bucket's time (see `gcra`): the bucket is full again then, in nanoseconds.
    joins_at: u64,
}

/// Fewest entries before a sweep is worth it.
const MIN_SWEEP: usize = 1024;

impl Table {
    /// Counts one more connection for `key`, unless it holds `max` already.
    fn hold(&mut self, key: ClientKey, max: u32) -> bool {
        if !self.clients.contains_key(&key) && self.clients.len() >= self.sweep_at.max(MIN_SWEEP) {
            let now = crate::gcra::now();
            self.clients.retain(|_, held| held.connections > 0 || held.joins_at > now);
            self.sweep_at = 2 * self.clients.len();
        }
        let held = self.clients.entry(key).or_default();
        if held.connections >= max {
            return false;
        }
        held.connections += 1;
        if held.connections == 1 {
            self.holding += 1;
        }
        true
    }

    /// Gives one of `key`'s connections back; its entry goes unless it remembers a recent
    /// join.
    fn release(&mut self, key: ClientKey) {
        let Some(held) = self.clients.get_mut(&key) else { return };
        if held.connections == 0 {
            debug_assert!(false, "a connection given back twice");
            return;
        }
        held.connections -= 1;
        if held.connections == 0 {
            self.holding -= 1;
            if held.joins_at <= crate::gcra::now() {
                self.clients.remove(&key);
            }
        }
    }
}

/// Who a connection is from, decided when it is accepted.
#[derive(Clone)]
pub enum Origin {
    /// A client connected directly; this connection holds one of its places.
    Client(Arc<ClientSlot>),
    /// A trusted proxy at this address: the client is named by each request.
    Proxy(IpAddr),
}

/// Why a client's socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRefusal {
    /// It holds as many connections as it may.
    Connections,
    /// It joined as often as it may lately; room again after this long.
    Joins {
        /// Until its join rate allows the next.
        wait: std::time::Duration,
    },
}

/// One of a client's places; given back when dropped.
pub struct ClientSlot {
    clients: Arc<Clients>,
    key: ClientKey,
}

impl Clients {
    /// A table holding clients to `limits`.
    pub fn new(limits: ClientLimits, trusted: TrustedProxies, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Self { table: Mutex::default(), limits, trusted, stats })
    }

    /// Who a connection accepted from `peer` is from, or `None` if that client already holds
    /// as many connections as it may (the connection is then to be closed at once: reading its
    /// request first would give it the buffers and time the limit is there to bound).
    pub fn accepted(self: &Arc<Self>, peer: IpAddr) -> Option<Origin> {
        if self.trusted.contains(peer) {
            return Some(Origin::Proxy(peer));
        }
        let slot = self.take(ClientKey::of(peer));
        if slot.is_none() {
            self.refused();
            tracing::debug!(client = %peer, "connection closed: client at its connection limit");
        }
        slot.map(|slot| Origin::Client(Arc::new(slot)))
    }

    /// The place a socket from `origin` holds while it is open: the connection's own for a
    /// direct client, a new one for the client a proxy names in `forwarded` (the request's
    /// `X-Forwarded-For`; an unreadable one counts as the proxy), none for a proxied request
    /// that names nobody (which is not limited either). The join is taken from the client's
    /// join rate. A refusal is not counted here: the caller counts what it answers.
    ///
    /// # Errors
    /// [`ClientRefusal`]: the client holds as many sockets as it may, or joins too often.
    pub fn admit(
        self: &Arc<Self>,
        origin: &Origin,
        forwarded: Option<&[u8]>,
    ) -> Result<Option<Arc<ClientSlot>>, ClientRefusal> {
        let (key, direct) = match origin {
            Origin::Client(slot) => (slot.key, Some(slot)),
            Origin::Proxy(proxy) => match forwarded.map(|f| forwarded_client(f, &self.trusted)) {
                None | Some(Forwarded::Proxies) => return Ok(None),
                Some(Forwarded::Client(client)) => (ClientKey::of(client), None),
                Some(Forwarded::Unreadable) => (ClientKey::of(*proxy), None),
            },
        };
        let mut table = self.table.lock();
        if direct.is_none() && !table.hold(key, self.limits.connections) {
            return Err(ClientRefusal::Connections);
        }
        let held = table.clients.entry(key).or_default();
        let per_second = u64::from(self.limits.joins_per_second);
        if let Err(wait) =
            crate::gcra::take(&mut held.joins_at, crate::gcra::now(), 1, per_second, 1)
        {
            if direct.is_none() {
                table.release(key);
            }
            return Err(ClientRefusal::Joins { wait: std::time::Duration::from_nanos(wait) });
        }
        self.stats.clients.store(table.holding, Ordering::Relaxed);
        drop(table);
        Ok(Some(match direct {
            Some(slot) => Arc::clone(slot),
            None => Arc::new(ClientSlot { clients: Arc::clone(self), key }),
        }))
    }

    /// Counts a socket refused for its client's limit (see [`Clients::admit`]).
    pub fn refused(&self) {
        self.stats.client_limit_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections `ip`'s client holds now (for tests and diagnostics).
    pub fn held_by(&self, ip: IpAddr) -> u32 {
        self.table.lock().clients.get(&ClientKey::of(ip)).map_or(0, |held| held.connections)
    }

    fn take(self: &Arc<Self>, key: ClientKey) -> Option<ClientSlot> {
        let mut table = self.table.lock();
        if !table.hold(key, self.limits.connections) {
            return None;
        }
        self.stats.clients.store(table.holding, Ordering::Relaxed);
        Some(ClientSlot { clients: Arc::clone(self), key })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut table = self.clients.table.lock();
        table.release(self.key);
        self.clients.stats.clients.store(table.holding, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn proxies(s: &str) -> TrustedProxies {
        s.parse().expect("a proxy list")
    }

    #[test]
    fn proxy_lists_parse_addresses_ranges_and_none() {
        let list = proxies("127.0.0.0/8, ::1,10.1.2.3/16");
        assert!(list.contains(ip("127.9.9.9")));
        assert!(list.contains(ip("::1")));
        assert!(list.contains(ip("::ffff:127.0.0.1")), "IPv4-mapped addresses are IPv4");
        assert!(list.contains(ip("10.1.200.1")), "a range written from a host address");
        assert!(proxies("::ffff:10.0.0.0/104").contains(ip("10.9.9.9")), "a mapped range");
        assert!(!list.contains(ip("10.2.0.1")));
        assert_eq!(proxies("none"), TrustedProxies::default());
        assert_eq!(proxies(""), TrustedProxies::default());
        let err = "10.0.0.0/33".parse::<TrustedProxies>().expect_err("refused");
        assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
        assert!("10.0.0.1, proxy.lan".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        assert_eq!(ClientKey::of(ip("2001:db8:1:2::5")), ClientKey::of(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(ClientKey::of(ip("2001:db8:1:2::5")), ClientKey::of(ip("2001:db8:1:3::5")));
        assert_eq!(ClientKey::of(ip("::ffff:192.0.2.1")), ClientKey::of(ip("192.0.2.1")));
        assert_ne!(ClientKey::of(ip("192.0.2.1")), ClientKey::of(ip("192.0.2.2")));
    }

    #[test]
    fn the_client_behind_a_proxy_is_the_rightmost_address_not_a_proxy() {
        let trusted = proxies("127.0.0.0/8,10.0.0.0/8");
        let client = |f: &[u8]| forwarded_client(f, &trusted);
        let named = |s: &str| Forwarded::Client(ip(s));
        assert_eq!(client(b"203.0.113.7"), named("203.0.113.7"));
        // What the client wrote itself is left of what the proxy appended, and is not read.
        assert_eq!(client(b"1.1.1.1, 203.0.113.7"), named("203.0.113.7"));
        assert_eq!(client(b"\xff\xfe, 203.0.113.7"), named("203.0.113.7"));
        // Through a chain of trusted proxies.
        assert_eq!(client(b"203.0.113.7, 10.0.0.2,10.0.0.3"), named("203.0.113.7"));
        assert_eq!(client(b"[2001:db8::1]:4711"), named("2001:db8::1"));
        assert_eq!(client(b"[2001:db8::1]"), named("2001:db8::1"));
        assert_eq!(client(b"198.51.100.1:80"), named("198.51.100.1"));
        assert_eq!(client(b"10.0.0.2"), Forwarded::Proxies);
        assert_eq!(client(b""), Forwarded::Proxies);
        assert_eq!(client(b"unknown"), Forwarded::Unreadable);
        assert_eq!(client(b"unknown, 10.0.0.2"), Forwarded::Unreadable);
        assert_eq!(client(b"\xff, 10.0.0.2"), Forwarded::Unreadable);
    }

    #[test]
    fn a_client_holds_at_most_its_share_and_gets_places_back() {
        let limits = ClientLimits { connections: 2, joins_per_second: 1000 };
        let clients = Clients::new(limits, proxies("127.0.0.1"), Arc::new(Stats::default()));
        let alice = ip("192.0.2.1");
        let first = clients.accepted(alice).expect("first");
        let second = clients.accepted(alice).expect("second");
        assert!(clients.accepted(alice).is_none(), "a third over a limit of two");
        assert!(clients.accepted(ip("192.0.2.2")).is_some(), "someone else still gets in");
        // A socket on a direct connection holds the connection's own place.
        let socket = clients.admit(&first, None).expect("admitted").expect("a place");
        drop(first);
        assert_eq!(clients.held_by(alice), 2, "the socket keeps the place");
        drop(socket);
        assert_eq!(clients.held_by(alice), 1);
        let third = clients.accepted(alice).expect("a place came back");
        drop(second);

        let proxy = clients.accepted(ip("127.0.0.1")).expect("a proxy is not limited");
        let held: Vec<_> = (0..2)
            .map(|_| clients.admit(&proxy, Some(b"203.0.113.7")).expect("in").expect("counted"))
            .collect();
        assert_eq!(
            clients.admit(&proxy, Some(b"203.0.113.7")).err(),
            Some(ClientRefusal::Connections),
            "the client behind the proxy is limited"
        );
        assert!(clients.admit(&proxy, None).expect("in").is_none(), "a request naming nobody");
        // Garbage where the client should be counts as the proxy: it cannot lift the limit.
        let garbage: Vec<_> = (0..2)
            .map(|_| clients.admit(&proxy, Some(b"\xff")).expect("in").expect("counted"))
            .collect();
        assert_eq!(clients.held_by(ip("127.0.0.1")), 2);
        assert!(clients.admit(&proxy, Some(b"unknown")).is_err());
        drop(garbage);
        drop(held);
        assert_eq!(clients.held_by(ip("203.0.113.7")), 0);
        assert_eq!(clients.table.lock().holding, 1, "only alice holds a connection");
        drop(third);
        assert_eq!(clients.table.lock().holding, 0, "nobody holds anything");
    }

    #[test]
    fn a_client_joining_too_often_is_told_when_to_come_back() {
        // One a second: ten at once, then one a second.
        let limits = ClientLimits { connections: 100, joins_per_second: 1 };
        let clients = Clients::new(limits, proxies("127.0.0.1"), Arc::new(Stats::default()));
        let proxy = clients.accepted(ip("127.0.0.1")).expect("a proxy");
        for i in 0..10 {
            let slot = clients.admit(&proxy, Some(b"203.0.113.7")).expect("joins").expect("slot");
            drop(slot);
            assert_eq!(clients.held_by(ip("203.0.113.7")), 0, "join {i} left again");
        }
        match clients.admit(&proxy, Some(b"203.0.113.7")) {
            Err(ClientRefusal::Joins { wait }) => {
                assert!(
                    wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(1)
                )
            }
            other => panic!(
                "the eleventh join at once was not refused: {:?}",
                other.map(|s| s.is_some())
            ),
        }
        assert_eq!(clients.held_by(ip("203.0.113.7")), 0, "a refused join holds nothing");
        assert!(clients.admit(&proxy, Some(b"203.0.113.8")).is_ok(), "someone else joins");

        // A direct client's joins count the same way, its connection still held.
        let alice = ip("192.0.2.1");
        let direct = clients.accepted(alice).expect("connects");
        for _ in 0..10 {
            drop(clients.admit(&direct, None).expect("joins"));
        }
        assert!(matches!(clients.admit(&direct, None), Err(ClientRefusal::Joins { .. })));
        assert_eq!(clients.held_by(alice), 1);
    }

    #[test]
    fn entries_that_only_remember_old_joins_are_swept() {
        // A millionth of a second per join: an entry is forgotten almost at once.
        let limits = ClientLimits { connections: 10, joins_per_second: 1_000_000 };
        let clients = Clients::new(limits, proxies("127.0.0.1"), Arc::new(Stats::default()));
        let proxy = clients.accepted(ip("127.0.0.1")).expect("a proxy");
        for i in 0..5000u32 {
            let [_, _, a, b] = i.to_be_bytes();
            let client = format!("198.18.{a}.{b}");
            drop(clients.admit(&proxy, Some(client.as_bytes())).expect("joins"));
        }
        let table = clients.table.lock();
        assert!(table.clients.len() <= 2 * MIN_SWEEP, "{} entries kept", table.clients.len());
        assert_eq!(table.holding, 0);
    }
}
