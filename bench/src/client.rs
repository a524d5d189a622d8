//! A minimal y-websocket client over tokio-tungstenite, built on `huddle-protocol`'s framing.
//!
//! Scenarios need control the full `ClientSession` does not give (timestamps per update, not
//! applying what arrives until the end, freezing, vanishing without a close frame), so this is
//! the bare wire: connect, handshake, send, and decode what arrives.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::wire::{self, WireMessage, WireSyncMessage};
use huddle_protocol::yrs::sync::AwarenessUpdate;
use huddle_protocol::yrs::updates::decoder::Decode;
use huddle_protocol::yrs::{Doc, ReadTxn, StateVector, Transact};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A client socket.
pub type Ws = WebSocketStream<TcpStream>;

/// Largest frame the tool accepts (a 100k-shape room's sync answer is ~12 MB).
const MAX_FRAME: usize = 256 << 20;

/// Source addresses to spread many sockets over: one address pair (source, server) has only
/// ~28k ephemeral ports, and every 127.0.0.0/8 address reaches loopback.
pub fn source_ip(i: usize) -> IpAddr {
    // 127.0.0.1 .. 127.0.0.8
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 8) as u8))
}

/// Opens a WebSocket to `url` (ws:// only), from `source` if given, with Nagle off as every
/// browser and Node's `ws` have it, and small buffers so tens of thousands fit in the tool.
pub async fn connect(url: &str, source: Option<IpAddr>) -> Result<Ws> {
    let rest = url.strip_prefix("ws://").context("only ws:// URLs are supported")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = tokio::net::lookup_host(authority)
        .await?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{authority} does not resolve to IPv4"))?;
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    config.max_message_size = Some(MAX_FRAME);
    config.max_frame_size = Some(MAX_FRAME);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .with_context(|| format!("WebSocket handshake with {url}"))?;
    Ok(ws)
}

/// Sends one binary frame.
pub async fn send(ws: &mut Ws, frame: Vec<u8>) -> Result<()> {
    ws.send(Message::Binary(Bytes::from(frame))).await.context("sending")
}

/// What one received frame carried, as far as scenarios care.
#[derive(Debug, Default)]
pub struct Incoming {
    /// Document updates (update messages and sync step 2 answers).
    pub updates: Vec<Vec<u8>>,
    /// Whether one of them was a sync step 2.
    pub step2: bool,
    /// The server's sync step 1, if it sent one.
    pub step1: Option<StateVector>,
    /// Awareness updates.
    pub awareness: Vec<AwarenessUpdate>,
}

/// Reads the next binary frame and decodes it; `None` when the socket ended.
pub async fn next(ws: &mut Ws) -> Result<Option<Incoming>> {
    loop {
        let Some(message) = ws.next().await else { return Ok(None) };
        match message {
            Ok(Message::Binary(frame)) => return decode(&frame).map(Some),
            Ok(Message::Close(_)) => return Ok(None),
            Ok(_) => continue,
            Err(e) => return Err(anyhow!(e).context("receiving")),
        }
    }
}

/// Decodes one frame.
pub fn decode(frame: &[u8]) -> Result<Incoming> {
    let mut incoming = Incoming::default();
    for message in wire::decode_frame(frame).map_err(|e| anyhow!("server sent a bad frame: {e}"))? {
        match message {
            WireMessage::Sync(WireSyncMessage::SyncStep1(sv)) => incoming.step1 = Some(sv),
            WireMessage::Sync(WireSyncMessage::SyncStep2(u)) => {
                incoming.step2 = true;
                incoming.updates.push(u);
            }
            WireMessage::Sync(WireSyncMessage::Update(u)) => incoming.updates.push(u),
            WireMessage::Awareness(a) => incoming.awareness.push(a),
            _ => {}
        }
    }
    Ok(incoming)
}

/// The y-websocket handshake for a client holding `doc`: send our sync step 1, answer the
/// server's step 1 with what it lacks, and return once the server's step 2 arrived, with every
/// update received so far (not applied: the caller decides).
pub async fn handshake(ws: &mut Ws, doc: &Doc, timeout: Duration) -> Result<Vec<Vec<u8>>> {
    let sv = doc.transact().state_vector();
    send(ws, wire::sync_step1(&sv)).await?;
    let mut updates = Vec::new();
    let run = async {
        loop {
            let Some(incoming) = next(ws).await? else {
                bail!("socket closed during the handshake")
            };
            if let Some(server_sv) = incoming.step1 {
                let diff = doc.transact().encode_state_as_update_v1(&server_sv);
                send(ws, wire::sync_step2(diff)).await?;
            }
            updates.extend(incoming.updates);
            if incoming.step2 {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(timeout, run).await.context("no sync step 2 in time")??;
    Ok(updates)
}

/// Applies updates received from the server to `doc`.
pub fn apply_all(doc: &Doc, updates: &[Vec<u8>]) -> Result<()> {
    let mut txn = doc.transact_mut();
    for u in updates {
        let update = huddle_protocol::yrs::Update::decode_v1(u)?;
        txn.apply_update(update)?;
    }
    Ok(())
}
