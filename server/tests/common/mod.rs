//! Test harness: a real server on 127.0.0.1:0 with a fresh SQLite data dir, and a real client
//! built on `huddle-protocol`'s `ClientSession` over tokio-tungstenite.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use huddle_protocol::presence::{Presence, User};
use huddle_protocol::schema::{Board, Shape, ShapeKind};
use huddle_protocol::session::ClientSession;
use huddle_protocol::yrs::{Doc, Transact, TransactionMut};
use huddle_server::stats::Stats;
use huddle_server::{Config, Server};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any awaited condition may take before the test fails. Generous: it only bounds a
/// hang, it is never a performance assertion.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The address a `huddle-server` child process listens on, from the line it prints first
/// (`huddle listening on http://ADDR`); takes the child's piped stdout. Panics if the server
/// does not print it within [`DEADLINE`] (it did not start).
pub async fn printed_addr(child: &mut tokio::process::Child) -> String {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().expect("the server's stdout is piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the server prints its address in time")
        .expect("reads")
        .expect("the server prints its address (it did not start)");
    line.rsplit("http://").next().expect("address").trim().to_owned()
}

/// Config for tests: short idle unload so rooms cycle quickly; default limits otherwise.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::with_data_dir(dir);
    config.durability = huddle_server::store::sqlite::Durability::Process;
    config.room_idle_ms = 100;
    config
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), huddle_server::ServerError>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(dir.path());
        let mut server = Self::start_with(config).await;
        server._dir = Some(dir);
        server
    }

    pub async fn start_with(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let data_dir = config.data_dir.clone();
        let server = Server::open(config).await.expect("server opens");
        let stats = server.stats();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.serve(listener, async move {
            let _ = rx.await;
        }));
        Self { addr, stats, data_dir, shutdown: Some(tx), handle: Some(handle), _dir: None }
    }

    pub fn url(&self, room: &str) -> String {
        format!("ws://{}/ws/{room}", self.addr)
    }

    /// Graceful shutdown; returns the temp dir (if owned) so a restart can reuse it.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(DEADLINE, h)
                .await
                .expect("server stops in time")
                .expect("join")
                .expect("clean stop");
        }
        self._dir.take()
    }
}

/// Polls `cond` until it holds, failing the test after [`DEADLINE`].
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A Huddle client: the shared protocol session over a real WebSocket.
pub struct TestClient {
    pub session: ClientSession,
    pub ws: Ws,
    pub closed: Option<Option<CloseFrame>>,
}

impl TestClient {
    pub async fn connect(url: &str) -> Self {
        Self::connect_with_id(url, rand_id()).await
    }

    pub async fn connect_with_id(url: &str, client_id: u64) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("connects");
        let mut session = ClientSession::new(Doc::with_client_id(client_id), now_millis);
        let frames = session.handshake();
        let mut client = Self { session, ws, closed: None };
        for f in frames {
            client.send(f).await;
        }
        client
    }

    /// Drops the socket without a close frame (a lost connection) and connects again with the
    /// same session, as the web client does: the sync exchange then sends the server whatever
    /// of this client's edits it did not get, and brings this client what it missed.
    pub async fn reconnect(self, url: &str) -> Self {
        let Self { mut session, ws, .. } = self;
        drop(ws);
        session.disconnected();
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("reconnects");
        let frames = session.handshake();
        let mut client = Self { session, ws, closed: None };
        for f in frames {
            client.send(f).await;
        }
        client
    }

    pub async fn send(&mut self, frame: Vec<u8>) {
        self.ws.send(Message::Binary(frame.into())).await.expect("send");
    }

    /// Reads and handles frames until `cond` holds.
    pub async fn until<F: FnMut(&ClientSession) -> bool>(&mut self, what: &str, mut cond: F) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !cond(&self.session) {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
            match next {
                Some(Ok(Message::Binary(frame))) => {
                    let received = self.session.receive(&frame).expect("server frames are valid");
                    for reply in received.replies {
                        self.send(reply).await;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(frame);
                    panic!("socket closed while waiting for: {what} ({:?})", self.closed);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket error while waiting for {what}: {e}"),
                None => panic!("socket ended while waiting for: {what}"),
            }
        }
    }

    pub async fn synced(&mut self) {
        self.until("initial sync", |s| s.is_synced()).await;
    }

    /// Runs a local transaction on the board and sends the resulting update.
    pub async fn edit(&mut self, f: impl FnOnce(&Board, &mut TransactionMut<'_>)) {
        {
            let board = Board::new(self.session.doc());
            let mut txn = self.session.doc().transact_mut();
            f(&board, &mut txn);
        }
        for frame in self.session.drain_local_updates() {
            self.send(frame).await;
        }
    }

    /// Like [`TestClient::edit`], but reports a dead socket instead of panicking.
    pub async fn try_edit(&mut self, f: impl FnOnce(&Board, &mut TransactionMut<'_>)) -> bool {
        {
            let board = Board::new(self.session.doc());
            let mut txn = self.session.doc().transact_mut();
            f(&board, &mut txn);
        }
        for frame in self.session.drain_local_updates() {
            if self.ws.send(Message::Binary(frame.into())).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Adds `count` rectangles with some text in one update (2,000 make a room of ~700 KB: big
    /// enough to be loaded lazily after a restart).
    pub async fn add_many_shapes(&mut self, count: usize) {
        self.edit(|b, t| {
            for i in 0..count {
                let mut shape = Shape::new(format!("s{i}"), ShapeKind::Rect);
                shape.text = format!("shape number {i}");
                b.put_shape(t, &shape);
            }
        })
        .await;
    }

    pub async fn add_shape(&mut self, id: &str, kind: ShapeKind) {
        let shape = Shape::new(id, kind);
        self.edit(|b, t| b.put_shape(t, &shape)).await;
    }

    pub async fn set_name(&mut self, name: &str) {
        let presence = Presence {
            user: User { id: name.into(), name: name.into(), color: "#1971c2".into() },
            ..Presence::default()
        };
        let frame = self.session.set_presence(&presence).expect("presence");
        self.send(frame).await;
    }

    pub fn shape_ids(&self) -> Vec<String> {
        let board = Board::new(self.session.doc());
        let txn = self.session.doc().transact();
        let mut ids: Vec<String> = board.shapes(&txn).into_iter().map(|s| s.id).collect();
        ids.sort();
        ids
    }

    pub fn has_shape(&self, id: &str) -> bool {
        let board = Board::new(self.session.doc());
        board.shape(&self.session.doc().transact(), id).is_some()
    }

    pub fn peer_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.session.peers().into_iter().map(|(_, p)| p.user.name).collect();
        names.sort();
        names
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server's close reply so the close handshake completes.
        let _ = tokio::time::timeout(DEADLINE, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

pub fn sync_doc_contents(a: &ClientSession) -> Vec<String> {
    let board = Board::new(a.doc());
    let txn = a.doc().transact();
    board.shapes(&txn).into_iter().map(|s| s.id).collect()
}

/// Reads raw frames until a close frame (or the end of the stream) and returns its code.
pub async fn expect_close(ws: &mut Ws) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.expect("server closes in time") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

/// Sends `frame` on a raw socket and waits until the server has handled it: a sync step 1
/// follows it, and the server answers a socket's frames in order, each update once it is
/// durable. Every sync step 2 the socket was sent before must have been read.
pub async fn send_handled(ws: &mut Ws, frame: Vec<u8>) {
    if let Err(code) = try_send_handled(ws, frame).await {
        panic!("socket ended before its frame was handled (close code {code:?})");
    }
}

/// Like [`send_handled`], but a socket the server closes instead gives its close code.
pub async fn try_send_handled(ws: &mut Ws, frame: Vec<u8>) -> Result<(), Option<u16>> {
    use huddle_protocol::wire::{self, WireMessage, WireSyncMessage};
    let step1 = wire::sync_step1(&huddle_protocol::yrs::StateVector::default());
    for frame in [frame, step1] {
        if ws.send(Message::Binary(frame.into())).await.is_err() {
            return Err(None);
        }
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.expect("answered in time") {
            Some(Ok(Message::Binary(frame))) => {
                let messages = wire::decode_frame(&frame).expect("server frames are valid");
                if messages
                    .iter()
                    .any(|m| matches!(m, WireMessage::Sync(WireSyncMessage::SyncStep2(_))))
                {
                    return Ok(());
                }
            }
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random 32-bit client id (what Yjs uses).
pub fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_millis());
    h.finish() & 0xffff_ffff
}
