//! How sockets get in: the upgrade the server's accept loop handles itself (a connection's
//! first request), the one hyper handles (an upgrade on a connection that already served a
//! request), a first frame sent before the 101 arrived, requests to the socket endpoint that
//! are not upgrades, the connection limit, and the limit per client (direct or behind a proxy).

mod common;

use common::{DEADLINE, TestClient, TestServer, test_config};
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::schema::{Board, ShapeKind};
use huddle_protocol::session::ClientSession;
use huddle_protocol::yrs::{Doc, Transact};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Reads one HTTP response head (and whatever followed it in the same reads) from `tcp`.
async fn read_head(tcp: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, tcp.read(&mut chunk))
            .await
            .expect("answers in time")
            .expect("reads");
        assert!(n > 0, "connection closed before a whole response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8(buf).expect("ASCII head"), rest);
        }
    }
}

fn upgrade_request(room: &str) -> String {
    format!(
        "GET /ws/{room} HTTP/1.1\r\nHost: test\r\nConnection: keep-alive, Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A masked client frame carrying `payload` as one binary message (RFC 6455 section 5.2).
fn client_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x82, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads frames until the server's answer to a sync step 1 arrives; returns the session that
/// applied them.
async fn read_until_synced<S>(ws: &mut WebSocketStream<S>) -> ClientSession
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut session = ClientSession::new(Doc::new(), common::now_millis);
    let _ = session.handshake();
    while !session.is_synced() {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("synced in time")
            .expect("socket open")
            .expect("reads a frame");
        if let Message::Binary(frame) = message {
            session.receive(&frame).expect("a valid frame");
        }
    }
    session
}

#[tokio::test]
async fn the_first_frame_may_arrive_with_the_upgrade_request() {
    let server = TestServer::start().await;
    let mut author = TestClient::connect(&server.url("pipelined")).await;
    author.synced().await;
    author.add_shape("shape-1", ShapeKind::Rect).await;
    // Wait until the server has relayed the shape (a second client sees it).
    let mut witness = TestClient::connect(&server.url("pipelined")).await;
    witness
        .until("the shape is relayed", |s| {
            Board::new(s.doc()).shape(&s.doc().transact(), "shape-1").is_some()
        })
        .await;

    // Request and sync step 1 (an empty state vector) in one write, before any 101.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connects");
    let mut bytes = upgrade_request("pipelined").into_bytes();
    bytes.extend(client_frame(&[0, 0, 1, 0]));
    tcp.write_all(&bytes).await.expect("writes");
    let (head, rest) = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "RFC 6455's sample key gets its sample answer: {head}"
    );
    let mut ws = WebSocketStream::from_partially_read(tcp, rest, Role::Client, None).await;
    let session = read_until_synced(&mut ws).await;
    let doc = session.doc();
    let board = Board::new(doc);
    assert!(board.shape(&doc.transact(), "shape-1").is_some(), "the answer holds the shape");
    server.stop().await;
}

#[tokio::test]
async fn an_upgrade_on_a_connection_that_served_a_request_still_joins_the_room() {
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connects");
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await.expect("writes");
    let (head, rest) = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
        .expect("a content length")
        .trim()
        .parse()
        .expect("a number");
    let mut body = rest;
    while body.len() < length {
        let mut chunk = [0u8; 256];
        let n = tcp.read(&mut chunk).await.expect("reads");
        assert!(n > 0, "body cut short");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(&body[..length], br#"{"status":"ok"}"#);

    // The same connection now asks for a socket.
    let (mut ws, response) = tokio_tungstenite::client_async(server.url("reused-connection"), tcp)
        .await
        .expect("upgrades");
    assert_eq!(response.status(), 101);
    let mut session = ClientSession::new(Doc::new(), common::now_millis);
    for frame in session.handshake() {
        ws.send(Message::Binary(frame.into())).await.expect("sends");
    }
    let _ = read_until_synced(&mut ws).await;
    assert_eq!(server.stats.connections.load(std::sync::atomic::Ordering::Relaxed), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_plain_request_to_a_room_socket_is_told_to_upgrade() {
    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connects");
    tcp.write_all(b"GET /ws/some-room HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("writes");
    let (head, _) = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    server.stop().await;
}

#[tokio::test]
async fn sockets_over_the_connection_limit_get_503_until_one_leaves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.max_connections = 2;
    let server = TestServer::start_with(config).await;
    let url = server.url("full");
    let mut first = TestClient::connect(&url).await;
    first.synced().await;
    let mut second = TestClient::connect(&url).await;
    second.synced().await;
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        Err(other) => panic!("expected HTTP 503, got {other}"),
        Ok(_) => panic!("a third socket was let in over a limit of two"),
    }
    first.close().await;
    // The permit comes back once the first socket's task has ended.
    let start = tokio::time::Instant::now();
    let mut third = loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => break ws,
            Err(_) => {
                assert!(start.elapsed() < DEADLINE, "the freed place was never given out");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    third.send(Message::Binary(vec![0, 0, 1, 0].into())).await.expect("sends");
    let _ = read_until_synced(&mut third).await;
    drop(second);
    server.stop().await;
}

/// A host whose open-files limit is low (4,096 is a common hard limit; here 600, to keep the
/// test small) runs the server with its default limits: they are fitted into the descriptors it
/// has, most of them for sockets. Filling every socket place gets the next socket the
/// promised 503, not a failed `accept`; the page is still served meanwhile, and the sockets
/// already in their room carry on.
#[tokio::test]
async fn under_a_low_open_files_limit_the_defaults_fit_and_the_socket_limit_is_a_503() {
    const OPEN_FILES: usize = 600;
    let dir = tempfile::tempdir().expect("tempdir");
    // `ulimit -n` lowers both the soft and the hard limit the server then starts under.
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &format!("ulimit -n {OPEN_FILES} && exec \"$0\" \"$@\"")])
        .arg(env!("CARGO_BIN_EXE_huddle-server"))
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        // Every socket here comes from one address; its join rate is not what is tested.
        .args(["--max-client-joins-per-second", "100000"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("server binary starts");
    let addr = common::printed_addr(&mut child).await;
    let url = format!("ws://{addr}/ws/low-limit");

    let mut ada = TestClient::connect(&url).await;
    ada.synced().await;
    let mut bob = TestClient::connect(&url).await;
    bob.synced().await;
    let mut held = Vec::new();
    let refusal = loop {
        assert!(held.len() < OPEN_FILES, "more sockets let in than the server has descriptors");
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => held.push(join(ws).await),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => break resp.status(),
            Err(other) => panic!("after {} sockets: expected HTTP 503, got {other}", held.len()),
        }
    };
    assert_eq!(refusal, 503, "after {} sockets", held.len());
    // The descriptors beside the server's reserve of 256 go mostly to sockets.
    let sockets = held.len() + 2;
    assert!(sockets >= (OPEN_FILES - 256) * 9 / 10, "only {sockets} sockets let in");

    // The page is still served with every socket place taken.
    let mut page = TcpStream::connect(&addr).await.expect("connects");
    serve_a_request(&mut page).await;
    // And the room carries on.
    ada.add_shape("at-the-limit", ShapeKind::Rect).await;
    bob.until("the shape drawn at the limit", |s| {
        Board::new(s.doc()).shape(&s.doc().transact(), "at-the-limit").is_some()
    })
    .await;

    child.kill().await.expect("kills");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).await.expect("reads");
    let warning = stderr.lines().find(|l| l.contains("ulimit -n")).unwrap_or_default();
    assert!(
        warning.contains("--max-connections") && warning.contains("--max-http-connections"),
        "the server says which limits it lowered and how to raise them: {stderr}"
    );
    assert!(!stderr.contains("Too many open files"), "{stderr}");
    drop(held);
}

/// Connections that open and say nothing hold at most `--max-http-connections` places, and
/// do not keep anyone out: at the limit, a new connection takes the place of the one that has
/// waited longest for its request head, which is closed. Sockets already in their room carry
/// on meanwhile.
// On four runtime threads, as under `--threads 4` (the limits are shared between them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_that_say_nothing_take_a_bounded_number_of_places() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.max_http_connections = 3;
    // Longer than the test's deadline: only being made to give way frees a place in time.
    config.header_timeout_ms = 120_000;
    let server = TestServer::start_with(config).await;
    let url = server.url("busy");
    let mut alice = TestClient::connect(&url).await;
    alice.synced().await;
    let mut bob = TestClient::connect(&url).await;
    bob.synced().await;

    let open = || server.stats.http_connections.load(Ordering::Relaxed);
    let closed = || server.stats.waiting_heads_closed.load(Ordering::Relaxed);
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(TcpStream::connect(server.addr).await.expect("connects"));
    }
    // The first says a little: a head with more headers than the fast path reads, which goes
    // on to hyper unfinished (and is still waiting for its head there).
    let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    head.extend((0..40).map(|i| format!("X-Header-{i}: {i}\r\n")));
    first[0].write_all(head.as_bytes()).await.expect("writes");
    common::eventually("three silent connections accepted", || open() == 3).await;
    assert_eq!(closed(), 0, "nobody made to give way below the limit");
    // Three more: each takes the place of one of the first three, oldest first.
    let mut second = Vec::new();
    for i in 0..3 {
        second.push(TcpStream::connect(server.addr).await.expect("connects"));
        common::eventually("one made to give way", || closed() == i + 1).await;
        assert_closed(&mut first[i as usize]).await;
    }
    common::eventually("the places taken again", || open() == 3).await;

    // The sockets in the room do not notice.
    alice.add_shape("while-full", ShapeKind::Rect).await;
    bob.until("alice's shape", |s| common::sync_doc_contents(s).contains(&"while-full".into()))
        .await;

    // A newcomer gets in while the silent ones are still there: the longest waiting of them
    // gives way.
    let mut carol = TestClient::connect(&url).await;
    carol.synced().await;
    assert_eq!(carol.shape_ids(), vec!["while-full".to_owned()]);
    assert_closed(&mut second[0]).await;
    assert_eq!(closed(), 4, "only the one");
    drop(second);
    common::eventually("places given back", || open() == 0).await;
    // With places free, nobody is made to give way.
    let mut dave = TestClient::connect(&url).await;
    dave.synced().await;
    assert_eq!(closed(), 4);
    server.stop().await;
}

/// A keep-alive connection between two requests holds its place as a new one does, and gives
/// it up the same way: it is queued from when its last answer was sent.
// On four runtime threads, as under `--threads 4` (the limits are shared between them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_between_requests_gives_way_too() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.max_http_connections = 3;
    config.header_timeout_ms = 120_000;
    let server = TestServer::start_with(config).await;
    let open = || server.stats.http_connections.load(Ordering::Relaxed);
    let closed = || server.stats.waiting_heads_closed.load(Ordering::Relaxed);
    let mut idle = TcpStream::connect(server.addr).await.expect("connects");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("writes");
    let (head, _) = read_head(&mut idle).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Two silent connections after it: the idle one has waited longest.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(server.addr).await.expect("connects"));
    }
    common::eventually("three connections accepted", || open() == 3).await;
    let mut newcomer = TcpStream::connect(server.addr).await.expect("connects");
    assert_closed(&mut idle).await;
    assert_eq!(closed(), 1);
    newcomer.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("writes");
    let (head, _) = read_head(&mut newcomer).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    server.stop().await;
}

/// Waits until the server has closed `tcp` (reading past whatever it was still sent).
async fn assert_closed(tcp: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "not closed in time");
}

/// A WebSocket handshake for `url` from `from` (a loopback address: all of 127.0.0.0/8 is this
/// machine), with `forwarded` as its `X-Forwarded-For` if given.
async fn connect_from(
    from: &str,
    url: &str,
    forwarded: Option<&str>,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.bind(format!("{from}:0").parse().expect("an address")).expect("binds");
    let addr =
        url.trim_start_matches("ws://").split('/').next().expect("host").parse().expect("addr");
    let tcp = socket.connect(addr).await.expect("connects");
    let mut request = url.into_client_request().expect("a request");
    if let Some(forwarded) = forwarded {
        request.headers_mut().insert("x-forwarded-for", forwarded.parse().expect("a header"));
    }
    let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(request, tcp))
        .await
        .expect("answered in time")?;
    Ok(ws)
}

/// Sends a request for `/healthz` on `tcp` and reads the whole answer: the connection has
/// then served a request, so an upgrade on it goes through hyper.
async fn serve_a_request(tcp: &mut TcpStream) {
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await.expect("writes");
    let (head, mut body) = read_head(tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    while body.len() < br#"{"status":"ok"}"#.len() {
        let mut chunk = [0u8; 256];
        let n = tcp.read(&mut chunk).await.expect("reads");
        assert!(n > 0, "body cut short");
        body.extend_from_slice(&chunk[..n]);
    }
}

/// Joins the room from `from` as soon as a place is free (a socket that just closed gives its
/// place back once its task has ended).
async fn join_once_freed(
    from: &str,
    url: &str,
    forwarded: Option<&str>,
) -> WebSocketStream<TcpStream> {
    let start = tokio::time::Instant::now();
    loop {
        match connect_from(from, url, forwarded).await {
            Ok(ws) => return join(ws).await,
            Err(_) => {
                assert!(start.elapsed() < DEADLINE, "the freed place never came back");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Joins the room over `ws` and returns once synced: the socket is really in.
async fn join<S>(mut ws: WebSocketStream<S>) -> WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::Binary(vec![0, 0, 1, 0].into())).await.expect("sends");
    let _ = read_until_synced(&mut ws).await;
    ws
}

/// A client that connects directly holds at most `--max-connections-per-client` connections:
/// more are closed at once, while another client still gets in, and a place comes back when
/// one of its connections ends.
#[tokio::test]
async fn one_client_cannot_take_every_place() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.max_connections_per_client = 2;
    config.trusted_proxies = "none".parse().expect("a proxy list");
    let server = TestServer::start_with(config).await;
    let url = server.url("crowded");
    // The first connection serves a request, then becomes a socket (through hyper): one place.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connects");
    serve_a_request(&mut tcp).await;
    let (first, _) = tokio_tungstenite::client_async(&url, tcp).await.expect("upgrades");
    let first = join(first).await;
    let _second = join(connect_from("127.0.0.1", &url, None).await.expect("second in")).await;
    match connect_from("127.0.0.1", &url, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            panic!("expected the connection closed unanswered, got HTTP {}", resp.status())
        }
        Err(_) => {}
        Ok(_) => panic!("a third connection let in over a limit of two per client"),
    }
    // Nor a plain HTTP request: the connection is closed before anything is read.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connects");
    let _ = tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(DEADLINE, tcp.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "answered over the limit: {read:?}");
    assert_eq!(server.stats.client_limit_refusals.load(Ordering::Relaxed), 2);

    // Someone else is not held up by that client.
    let other = join(connect_from("127.0.0.2", &url, None).await.expect("another client")).await;

    drop(first);
    let _third = join_once_freed("127.0.0.1", &url, None).await;
    drop(other);
    drop(_second);
    drop(_third);
    common::eventually("every place given back", || {
        server.stats.clients.load(Ordering::Relaxed) == 0
    })
    .await;
    server.stop().await;
}

/// Behind a trusted proxy (loopback by default) the client is the one `X-Forwarded-For`
/// names, with what the client wrote there itself ignored; the proxy itself is not limited.
#[tokio::test]
async fn behind_a_proxy_the_forwarded_client_is_limited() {
    use std::sync::atomic::Ordering;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.max_connections_per_client = 2;
    let server = TestServer::start_with(config).await;
    let url = server.url("proxied");
    let alice = "203.0.113.7";
    let first = join(connect_from("127.0.0.1", &url, Some(alice)).await.expect("in")).await;
    let _second = join(connect_from("127.0.0.1", &url, Some(alice)).await.expect("in")).await;
    for (what, forwarded) in [
        ("a third socket", alice.to_owned()),
        ("a forged address in front", format!("198.51.100.9, {alice}")),
    ] {
        match connect_from("127.0.0.1", &url, Some(&forwarded)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503, "{what}");
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert!(body.contains("from your address"), "{what}: {body}");
            }
            Err(other) => panic!("{what}: expected HTTP 503, got {other}"),
            Ok(_) => panic!("{what}: let in over a limit of two per client"),
        }
    }
    // Other clients behind the same proxy, and the proxy's own sockets, get in.
    let _bob =
        join(connect_from("127.0.0.1", &url, Some("198.51.100.9")).await.expect("bob")).await;
    let mut own = Vec::new();
    for _ in 0..3 {
        own.push(join(connect_from("127.0.0.1", &url, None).await.expect("unnamed")).await);
    }

    // An upgrade on a connection that served a request first (hyper's path) is limited too.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connects");
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await.expect("writes");
    let (head, _) = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let upgrade = upgrade_request("proxied")
        .replace("\r\n\r\n", &format!("\r\nX-Forwarded-For: {alice}\r\n\r\n"));
    tcp.write_all(upgrade.as_bytes()).await.expect("writes");
    let (head, _) = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let refusals = || server.stats.client_limit_refusals.load(Ordering::Relaxed);
    assert_eq!(refusals(), 3, "each refusal counted once");
    // And let in through hyper's path, holding a place until it leaves.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connects");
    serve_a_request(&mut tcp).await;
    let mut request = url.as_str().into_client_request().expect("a request");
    request.headers_mut().insert("x-forwarded-for", "192.0.2.50".parse().expect("a header"));
    let (carol, _) = tokio_tungstenite::client_async(request, tcp).await.expect("upgrades");
    let carol = join(carol).await;
    let clients = || server.stats.clients.load(Ordering::Relaxed);
    assert_eq!(clients(), 3, "alice, bob and carol hold places; the proxy's own sockets do not");
    drop(carol);
    common::eventually("carol's place given back", || clients() == 2).await;

    drop(first);
    let _again = join_once_freed("127.0.0.1", &url, Some(alice)).await;
    drop((_second, _bob, own, _again));
    common::eventually("every place given back", || clients() == 0).await;
    server.stop().await;
}

/// A client that reconnects in a loop is told to wait (429 with `Retry-After`) once it has
/// used its burst of joins, each of which would cost the server a sync; others still join.
#[tokio::test]
async fn a_client_joining_in_a_loop_is_told_to_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    // One a second: ten at once.
    config.max_client_joins_per_second = 1;
    let server = TestServer::start_with(config).await;
    let url = server.url("revolving-door");
    let mallory = "203.0.113.66";
    for _ in 0..10 {
        let ws = join(connect_from("127.0.0.1", &url, Some(mallory)).await.expect("in")).await;
        drop(ws);
    }
    match connect_from("127.0.0.1", &url, Some(mallory)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            let retry: u64 = resp
                .headers()
                .get("retry-after")
                .expect("says when to come back")
                .to_str()
                .expect("text")
                .parse()
                .expect("whole seconds");
            assert!((1..=2).contains(&retry), "retry after {retry} s");
        }
        Err(other) => panic!("expected HTTP 429, got {other}"),
        Ok(_) => panic!("an eleventh join at once was let in at one a second"),
    }
    let _other =
        join(connect_from("127.0.0.1", &url, Some("198.51.100.4")).await.expect("in")).await;
    assert_eq!(
        server.stats.client_limit_refusals.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "counted once"
    );
    server.stop().await;
}
