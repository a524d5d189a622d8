//! Bad input closes only the socket that sent it, with the right close code; the room and its
//! other clients carry on. Silent and slow clients are cut off.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestClient, TestServer, Ws, eventually, expect_close, test_config};
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::schema::{Shape, ShapeKind};
use huddle_protocol::wire;
use huddle_protocol::yrs::ClientID;
use huddle_protocol::yrs::sync::AwarenessUpdate;
use huddle_protocol::yrs::sync::awareness::AwarenessUpdateEntry;
use tokio_tungstenite::tungstenite::Message;

/// A string from client 88 whose parent is item (77, 0).
const ORPHAN: [u8; 11] = [1, 1, 88, 0, 4, 0, 77, 0, 1, b'b', 0];

/// Whether `s` has item (77, 0).
fn has_77(s: &huddle_protocol::session::ClientSession) -> bool {
    use huddle_protocol::yrs::{ReadTxn, Transact};
    s.doc().transact().state_vector().get(&ClientID::new(77)) == 1
}

/// An update putting into the root array `a` a null inside arrays nested `depth` deep.
fn deep_value_update(depth: usize) -> Vec<u8> {
    use huddle_protocol::yrs::{Array, Doc, ReadTxn, StateVector, Transact};
    let doc = Doc::with_client_id(1);
    let array = doc.get_or_insert_array("a");
    let placeholder = "PLACEHOLDER-VALUE";
    array.push_back(&mut doc.transact_mut(), placeholder);
    let update = doc.transact().encode_state_as_update_v1(&StateVector::default());
    let mut encoded = vec![119, placeholder.len() as u8];
    encoded.extend_from_slice(placeholder.as_bytes());
    let at = update.windows(encoded.len()).position(|w| w == encoded).expect("placeholder");
    let mut value = [117u8, 1].repeat(depth);
    value.push(126);
    [&update[..at], &value[..], &update[at + encoded.len()..]].concat()
}

async fn raw(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.expect("connects").0
}

fn awareness_frame(client: u64, clock: u32, json: &str) -> Vec<u8> {
    wire::awareness(AwarenessUpdate {
        clients: HashMap::from([(
            ClientID::new(client),
            AwarenessUpdateEntry { clock, json: json.into() },
        )]),
    })
}

/// An update (v1) from client 77 with two items: "a" in the root type "t", then "b" whose
/// parent is item (77, 0), the string "a" (not a type), which yrs refuses once it meets it.
const REFUSED_PART_WAY: [u8; 17] = [
    1, // clients
    2, 77, 0, // 2 items of client 77 from clock 0
    4, 1, 1, b't', 1, b'a', // a string, no origins, parent: the root type named "t"
    4, 0, 77, 0, 1, b'b', // a string, no origins, parent: item (77, 0)
    0,    // no deletions
];

/// An awareness message naming `client` twice, with `first` then `second` as its state.
fn awareness_twice(client: u8, first: &str, second: &str) -> Vec<u8> {
    let mut body = vec![2];
    for json in [first, second] {
        body.extend([client, 1, json.len() as u8]);
        body.extend(json.as_bytes());
    }
    let mut frame = vec![1, body.len() as u8];
    frame.extend(body);
    frame
}

#[tokio::test]
async fn each_malformed_input_gets_its_close_code_and_the_room_carries_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.max_message_bytes = 64 * 1024;
    let server = TestServer::start_with(config).await;
    let url = server.url("target");
    let mut bystander = TestClient::connect(&url).await;
    bystander.synced().await;
    bystander.set_name("Bystander").await;

    let deep = format!("{{\"user\":{}1{}}}", "[".repeat(64), "]".repeat(64));
    let cases: Vec<(&str, Message, u16)> = vec![
        ("text frame", Message::Text("hello".into()), 1003),
        ("truncated varint", Message::Binary(vec![0x80, 0x80].into()), 1002),
        ("truncated message", Message::Binary(vec![0, 2, 10, 1, 2].into()), 1002),
        ("unknown message type", Message::Binary(vec![42, 0].into()), 1003),
        ("unknown sync type", Message::Binary(vec![0, 9, 0].into()), 1002),
        (
            "update that does not decode",
            Message::Binary(wire::update(vec![5, 200, 1, 2, 3]).into()),
            1007,
        ),
        (
            "awareness that is not JSON",
            Message::Binary(awareness_frame(777, 1, "{not json").into()),
            1007,
        ),
        ("awareness nested too deep", Message::Binary(awareness_frame(778, 1, &deep).into()), 1007),
        ("frame over the size limit", Message::Binary(vec![0u8; 100 * 1024].into()), 1009),
        // Ten bytes announcing 2^32 state-vector entries: refused before any allocation.
        (
            "state vector allocation bomb",
            Message::Binary(vec![0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x0f].into()),
            1002,
        ),
        (
            "update allocation bomb",
            Message::Binary(wire::update(vec![0x80, 0x80, 0x80, 0x80, 0x01, 0, 0]).into()),
            1007,
        ),
        ("a frame packed with requests", Message::Binary(vec![3u8; 1000].into()), 1002),
        // yrs takes the first item, then refuses the second (its parent is not a type): what it
        // took is stored and relayed, and only the sender is cut off.
        (
            "update refused part-way",
            Message::Binary(wire::update(REFUSED_PART_WAY.to_vec()).into()),
            1007,
        ),
        // One client twice, the first state not JSON: must not slip past validation.
        (
            "awareness naming a client twice",
            Message::Binary(awareness_twice(79, "{bad", "{}").into()),
            1007,
        ),
        // 65 clients (the limit is 64), refused from the count, before any entry is read.
        ("awareness naming too many clients", Message::Binary(vec![1, 2, 65, 0].into()), 1009),
        // A value in arrays 20,000 deep (40 KB): yrs' own decoder recursed once per level and
        // overflowed the stack, which aborts the whole server.
        (
            "update with a value nested 20,000 deep",
            Message::Binary(wire::update(deep_value_update(20_000)).into()),
            1007,
        ),
    ];
    let rejected_before = server.stats.rejected_peers.load(Ordering::Relaxed);
    for (i, (what, frame, code)) in cases.into_iter().enumerate() {
        let mut bad = raw(&url).await;
        bad.send(frame).await.expect("send");
        assert_eq!(expect_close(&mut bad).await, Some(code), "{what}");

        // The room is untouched: the bystander and a newcomer still exchange edits.
        let id = format!("after-{i}");
        bystander.add_shape(&id, ShapeKind::Rect).await;
        let mut newcomer = TestClient::connect(&url).await;
        newcomer.until(what, |s| common::sync_doc_contents(s).contains(&id)).await;
        newcomer.until("bystander presence", |s| s.peers().len() == 1).await;
        assert_eq!(newcomer.peer_names(), vec!["Bystander"], "{what}: no bad presence leaked");
        newcomer.close().await;
    }
    assert_eq!(server.stats.rejected_peers.load(Ordering::Relaxed) - rejected_before, 16);
    // Nothing bad ever reached the bystander: its session decoded every frame it got.
    assert_eq!(bystander.peer_names(), Vec::<String>::new());
    server.stop().await;
}

/// `levels` maps nested under `under` (under key `k` of the root map `chain` when `None`), in
/// one update of `doc`'s; returns it and the deepest map.
fn nested_maps(
    doc: &huddle_protocol::yrs::Doc,
    under: Option<huddle_protocol::yrs::MapRef>,
    levels: usize,
) -> (Vec<u8>, huddle_protocol::yrs::MapRef) {
    use huddle_protocol::yrs::{Map, MapPrelim, Transact, WriteTxn};
    let mut txn = doc.transact_mut();
    let mut map = under.unwrap_or_else(|| txn.get_or_insert_map("chain"));
    for _ in 0..levels {
        map = map.insert(&mut txn, "k", MapPrelim::default());
    }
    (txn.encode_update_v1(), map)
}

#[tokio::test]
async fn shared_types_nested_too_deep_are_refused_and_the_room_carries_on() {
    use huddle_protocol::yrs::{Doc, Map, ReadTxn, Transact, WriteTxn};
    let server = TestServer::start().await;
    let url = server.url("deep-types");
    let mut bystander = TestClient::connect(&url).await;
    bystander.synced().await;
    let author = Doc::with_client_id(4242);
    let mut bad = raw(&url).await;
    // 60 levels: fine (the limit is 64).
    let (first, deepest) = nested_maps(&author, None, 60);
    common::send_handled(&mut bad, wire::update(first)).await;
    // Then 5,000 more. They went in, and a chain some tens of thousands deep (a few such
    // updates, or one of a couple of megabytes) overflowed the stack of whoever deleted it
    // (yrs deletes a type's contents recursively): the server's, which aborted, taking every
    // room down. (Kept short: the test shares its process's memory with others measuring it.)
    let (more, _) = nested_maps(&author, Some(deepest), 5_000);
    bad.send(Message::Binary(wire::update(more).into())).await.expect("send");
    assert_eq!(expect_close(&mut bad).await, Some(1007));
    // The bystander has the 60 levels and deletes them, as any client may: the room carries on.
    let has_chain = |s: &huddle_protocol::session::ClientSession| {
        let txn = s.doc().transact();
        txn.get_map("chain").is_some_and(|m| m.contains_key(&txn, "k"))
    };
    bystander.until("the chain that went in", has_chain).await;
    bystander
        .edit(|_, t| {
            t.get_or_insert_map("chain").remove(t, "k");
        })
        .await;
    bystander.add_shape("after-the-chain", ShapeKind::Rect).await;
    let mut newcomer = TestClient::connect(&url).await;
    newcomer
        .until("the bystander's edits", |s| {
            common::sync_doc_contents(s).contains(&"after-the-chain".to_owned()) && !has_chain(s)
        })
        .await;
    server.stop().await;
}

/// The depth of what a room holds survives a restart (the room reads it again from its
/// snapshot): a chain 60 deep takes four more levels after it, not five.
#[tokio::test]
async fn nesting_is_counted_from_what_a_restarted_room_holds() {
    use huddle_protocol::yrs::Doc;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(test_config(dir.path())).await;
    let author = Doc::with_client_id(4343);
    let (first, deepest) = nested_maps(&author, None, 60);
    let mut bad = raw(&server.url("deep-restart")).await;
    common::send_handled(&mut bad, wire::update(first)).await;
    drop(bad);
    server.stop().await;

    let server = TestServer::start_with(test_config(dir.path())).await;
    let url = server.url("deep-restart");
    // Five more (65 deep) from another client that has the chain (the author's clock must not
    // move on for what the room refuses).
    let other = Doc::with_client_id(4344);
    let bottom = {
        use huddle_protocol::yrs::updates::decoder::Decode;
        use huddle_protocol::yrs::{Map, Out, ReadTxn, StateVector, Transact, Update};
        let all = author.transact().encode_state_as_update_v1(&StateVector::default());
        other
            .transact_mut()
            .apply_update(Update::decode_v1(&all).expect("valid"))
            .expect("applies");
        let txn = other.transact();
        let mut map = txn.get_map("chain").expect("the chain");
        while let Some(Out::YMap(next)) = map.get(&txn, "k") {
            map = next;
        }
        map
    };
    let (five, _) = nested_maps(&other, Some(bottom), 5);
    let mut bad = raw(&url).await;
    bad.send(Message::Binary(wire::update(five).into())).await.expect("send");
    assert_eq!(expect_close(&mut bad).await, Some(1007));
    let (four, _) = nested_maps(&author, Some(deepest), 4);
    let mut fine = raw(&url).await;
    common::send_handled(&mut fine, wire::update(four)).await;
    let mut reader = TestClient::connect(&url).await;
    reader
        .until("64 levels", |s| {
            use huddle_protocol::yrs::{Map, Out, ReadTxn, Transact};
            let txn = s.doc().transact();
            let mut depth = 0;
            let mut map = txn.get_map("chain");
            while let Some(Out::YMap(next)) = map.and_then(|m| m.get(&txn, "k")) {
                depth += 1;
                map = Some(next);
            }
            depth == 64
        })
        .await;
    server.stop().await;
}

#[tokio::test]
async fn bad_room_names_get_400_before_any_upgrade() {
    let server = TestServer::start().await;
    for name in ["has%20space", "dot.dot", &"x".repeat(129)] {
        let err = tokio_tungstenite::connect_async(server.url(name)).await.expect_err("refused");
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status(), 400, "{name}")
            }
            other => panic!("{name}: expected HTTP 400, got {other}"),
        }
    }
    // A valid name on the same server still works.
    let mut ok = TestClient::connect(&server.url("fine_name-1")).await;
    ok.synced().await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_responses_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.write_timeout_ms = 300;
    let server = TestServer::start_with(config).await;
    // A client with a small receive buffer sends request after request (HTTP/1.1 pipelining)
    // and reads none of the answers, which back up at the server (megabytes of them: more than
    // any socket buffer holds).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    let stuck = socket.connect(server.addr).await.expect("connects");
    let (mut reader, mut writer) = stuck.into_split();
    let requests = tokio::spawn(async move {
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        for _ in 0..50_000 {
            if writer.write_all(request).await.is_err() {
                break;
            }
        }
    });
    let stats = std::sync::Arc::clone(&server.stats);
    common::eventually("the server gives up on the client that stopped reading", || {
        stats.stalled_responses.load(std::sync::atomic::Ordering::Relaxed) >= 1
    })
    .await;
    // The connection is closed: what was sent arrives, then its end (or a reset).
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(common::DEADLINE, reader.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the stalled connection was still open after the deadline");
    requests.abort();
    // Others are served as usual.
    let mut ok = TestClient::connect(&server.url("after-a-stall")).await;
    ok.synced().await;
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.header_timeout_ms = 300;
    let server = TestServer::start_with(config).await;
    // One sends half a request and stalls; one sends nothing at all.
    let mut trickle = tokio::net::TcpStream::connect(server.addr).await.expect("connects");
    trickle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("writes");
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.expect("connects");
    for (what, stream) in [("half a request", &mut trickle), ("nothing", &mut silent)] {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(common::DEADLINE, stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a connection that sent {what} was still open after the deadline");
    }
    // Others are served as usual.
    let mut ok = TestClient::connect(&server.url("after-stalls")).await;
    ok.synced().await;
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_at_the_ping_timeout_with_its_presence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.ping_interval_ms = 200;
    config.pong_timeout_ms = 300;
    let server = TestServer::start_with(config).await;
    let url = server.url("liveness");
    let mut watcher = TestClient::connect(&url).await;
    watcher.synced().await;

    // A client that announces itself, then freezes: the socket stays open but it never reads,
    // so it never answers a ping.
    let mut frozen = raw(&url).await;
    frozen
        .send(Message::Binary(
            awareness_frame(4242, 1, r##"{"user":{"name":"Frozen","color":"#000"}}"##).into(),
        ))
        .await
        .expect("send");
    watcher
        .until("frozen client visible", |s| s.peers().iter().any(|(_, p)| p.user.name == "Frozen"))
        .await;

    // Meanwhile the watcher stays alive by reading (tungstenite answers pings while reading).
    watcher.until("frozen client removed", |s| s.peers().is_empty()).await;
    assert_eq!(server.stats.dead_peers.load(Ordering::Relaxed), 1);
    assert_eq!(
        server.stats.connections.load(Ordering::Relaxed),
        1,
        "only the watcher is connected"
    );
    // The server really closed the TCP connection: reading now drains what was sent before the
    // freeze (the greeting, pings) and then hits the end of the stream.
    let end = tokio::time::timeout(common::DEADLINE, async {
        loop {
            match frozen.next().await {
                Some(Ok(Message::Ping(_) | Message::Binary(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("connection ends");
    assert!(matches!(end, None | Some(Err(_))), "connection dropped, not still talking: {end:?}");
    server.stop().await;
}

/// Resident memory of this process, from /proc.
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    let kib: usize = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("number");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_off_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.max_queue_bytes = 1 << 20;
    let server = TestServer::start_with(config).await;
    let url = server.url("firehose");

    // The slow consumer connects and then never reads.
    let slow = raw(&url).await;
    let mut fast = TestClient::connect(&url).await;
    fast.synced().await;
    let mut writer = TestClient::connect(&url).await;
    writer.synced().await;

    // 200 MiB of presence traffic (32 KiB states): if the server buffered it for the slow
    // socket, memory would grow by about that much.
    let baseline = rss_bytes();
    let padding = "x".repeat(32 * 1024);
    let me = writer.session.client_id();
    let mut peak = baseline;
    for clock in 1..=6400u32 {
        let json =
            format!(r##"{{"user":{{"name":"W{clock}","color":"#000"}},"pad":"{padding}"}}"##);
        writer.send(awareness_frame(me, clock, &json)).await;
        if clock % 16 == 0 {
            // The fast reader keeps up: it reads everything before the writer sends more than
            // its queue holds.
            let expect = format!("W{clock}");
            fast.until("fast reader keeps up", |s| {
                s.peers().iter().any(|(_, p)| p.user.name == expect)
            })
            .await;
            peak = peak.max(rss_bytes());
        }
    }
    eventually("slow consumer cut off", || server.stats.slow_peers.load(Ordering::Relaxed) == 1)
        .await;
    let growth = peak.saturating_sub(baseline);
    assert!(growth < 100 << 20, "memory grew by {} MiB while relaying 200 MiB", growth >> 20);
    // The fast reader and the writer were never affected.
    assert_eq!(server.stats.connections.load(Ordering::Relaxed), 2);
    drop(slow);
    server.stop().await;
    let _ = Duration::ZERO;
}

/// A peer sending faster than `--max-messages-per-second` is slowed, not cut off and not
/// dropped from: its messages are taken in at the rate, everyone else's edits pass while it
/// waits, and every message it sent is handled in the end.
// On four runtime threads, as under `--threads 4` (the limits are shared between them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_peer_is_slowed_while_the_room_carries_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    // Ten seconds' worth at once (10 messages), then one a second.
    config.max_messages_per_second = 1;
    let server = TestServer::start_with(config).await;
    let url = server.url("flooded");
    let mut bystander = TestClient::connect(&url).await;
    bystander.synced().await;
    let mut editor = TestClient::connect(&url).await;
    editor.synced().await;

    let mut flooder = raw(&url).await;
    let name = |i: u32| format!("n-{i}");
    let seen = |s: &huddle_protocol::session::ClientSession, i: u32| {
        s.peers().into_iter().any(|(_, p)| p.user.name == name(i))
    };
    for i in 1..=15 {
        let json = format!(r##"{{"user":{{"name":"{}","color":"#123456"}}}}"##, name(i));
        flooder.send(Message::Binary(awareness_frame(555, i, &json).into())).await.expect("send");
    }
    // The flood's first ten (its burst) arrive at once; the last five take a second each.
    bystander.until("the flood's burst", |s| seen(s, 10)).await;
    editor.add_shape("passes", ShapeKind::Rect).await;
    bystander
        .until("the editor's shape", |s| common::sync_doc_contents(s).contains(&"passes".into()))
        .await;
    assert!(!seen(&bystander.session, 15), "the flood was taken in at once, not slowed");

    // Nothing was dropped: the flood's last message arrives too, and the flooder is still in.
    bystander.until("the flood's last message", |s| seen(s, 15)).await;
    assert_eq!(server.stats.rejected_peers.load(Ordering::Relaxed), 0);
    flooder.send(Message::Binary(awareness_frame(555, 16, "null").into())).await.expect("open");
    bystander.until("the flooder's departure", |s| s.peers().is_empty()).await;
    server.stop().await;
}

/// A big message on a slow link takes longer than the ping timeout to arrive, and its sender's
/// pong waits behind it: the bytes still coming prove the sender alive, so it is not dropped
/// as silent (and sent back to resend the same message forever) but heard out.
#[tokio::test]
async fn a_big_message_arriving_slowly_is_heard_out() {
    use huddle_protocol::schema::{Board, Shape};
    use huddle_protocol::yrs::{Doc, Transact};
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.ping_interval_ms = 200;
    config.pong_timeout_ms = 300;
    let server = TestServer::start_with(config).await;
    let url = server.url("slow-link");
    let mut watcher = TestClient::connect(&url).await;
    watcher.synced().await;

    let doc = Doc::new();
    let board = Board::new(&doc);
    let mut shape = Shape::new("long", ShapeKind::Text);
    shape.text = "x".repeat(20_000);
    let update = {
        let mut txn = doc.transact_mut();
        board.put_shape(&mut txn, &shape);
        txn.encode_update_v1()
    };
    let payload = wire::update(update);
    // One binary frame, masked with a zero key (so the payload goes as it is).
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend((payload.len() as u64).to_be_bytes());
    frame.extend([0u8; 4]);
    frame.extend(&payload);

    let mut slow = raw(&url).await;
    // About 1.6 s for the whole frame, three times the server's 0.5 s of patience per frame;
    // the watcher reads meanwhile (and so answers its pings).
    let sender = tokio::spawn(async move {
        for chunk in frame.chunks(frame.len() / 16 + 1) {
            let tcp = match slow.get_mut() {
                tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
                _ => unreachable!("a plain socket"),
            };
            tcp.write_all(chunk).await.expect("the server still reads");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slow
    });
    watcher
        .until("the long text", |s| common::sync_doc_contents(s).contains(&"long".to_owned()))
        .await;
    let _slow = sender.await.expect("sent");
    assert_eq!(server.stats.dead_peers.load(Ordering::Relaxed), 0, "the slow sender was dropped");
    server.stop().await;
}

/// A peer in the middle of a big message that stops sending it, and only pings to stay alive,
/// would keep what it sent (up to the largest message) for good: once the message has not grown
/// for the ping timeout, the socket is closed (1013).
#[tokio::test]
async fn a_peer_sitting_on_an_unfinished_message_is_cut_off() {
    sit_on_an_unfinished_message(None).await;
}

/// The same, pinging faster than its message rate lets it: the server's waits for its pings
/// do not count as the message's progress.
#[tokio::test]
async fn a_peer_sitting_on_an_unfinished_message_is_cut_off_however_fast_it_pings() {
    sit_on_an_unfinished_message(Some(1)).await;
}

/// The close frame the server ends `stream` with, read past whatever comes before it within
/// one deadline (the server's pings keep coming meanwhile).
async fn close_frame(
    stream: &mut futures_util::stream::SplitStream<Ws>,
) -> tungstenite::protocol::CloseFrame {
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(frame))) => return frame.expect("a close frame with a code"),
            Some(Ok(_)) => {}
            other => panic!("ended without a close frame: {other:?}"),
        }
    }
}

/// A peer adding a little to a big message every so often, enough to count as growing, would
/// hold its share of the input budget for hours: past a first wait of the ping timeout, a big
/// message must come at 8 KiB/s at least, or the socket is closed (1013).
// On four runtime threads, as under `--threads 4` (the limits are shared between them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_trickling_a_big_message_is_cut_off() {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    // Three seconds of patience: 9 KiB every 2.5 s (3.6 KiB/s) grows past a read's worth
    // (8 KiB) within every wait.
    config.ping_interval_ms = 1000;
    config.pong_timeout_ms = 2000;
    let server = TestServer::start_with(config).await;
    let url = server.url("trickle");
    let mut holder = raw(&url).await;
    let first_part = Frame::message(vec![1u8; 100 << 10], OpCode::Data(Data::Binary), false);
    holder.send(Message::Frame(first_part)).await.expect("send");
    let (mut sink, mut stream) = holder.split();
    let trickler = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let more = Frame::message(vec![1u8; 9 << 10], OpCode::Data(Data::Continue), false);
            if sink.send(Message::Frame(more)).await.is_err() {
                break;
            }
        }
    });
    let frame = close_frame(&mut stream).await;
    trickler.abort();
    assert_eq!(u16::from(frame.code), 1013);
    assert!(frame.reason.contains("does not finish"), "{}", frame.reason);
    server.stop().await;
}

/// Peers trickling big messages hold the input budget only until someone faster needs it: a
/// client sending a big update at once gets in (before, the socket that crossed the budget was
/// the one closed, whoever held the rest), and the slowest tricklers are closed (1013) instead.
// On four runtime threads, as under `--threads 4` (the limits are shared between them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_big_update_is_not_kept_out_by_peers_trickling_theirs() {
    use huddle_protocol::schema::Board;
    use huddle_protocol::yrs::{Doc, Transact};
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.max_unfinished_input_bytes = Some(1 << 20);
    let server = TestServer::start_with(config).await;
    let url = server.url("budget");
    let mut watcher = TestClient::connect(&url).await;
    watcher.synced().await;

    // Four peers each trickle a message, 10 KiB every 150 ms, to 200 KiB each (800 KiB of
    // the 1 MiB budget, at about 70 KiB/s).
    let mut sinks = Vec::new();
    let mut closes = Vec::new();
    for _ in 0..4 {
        let (sink, mut stream) = raw(&url).await.split();
        sinks.push(sink);
        closes.push(tokio::spawn(async move { close_frame(&mut stream).await }));
    }
    for round in 0..20 {
        for sink in &mut sinks {
            let code = if round == 0 { Data::Binary } else { Data::Continue };
            let part = Frame::message(vec![1u8; 10 << 10], OpCode::Data(code), false);
            sink.send(Message::Frame(part)).await.expect("the trickler is still heard");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // A client sends a 600 KiB text at once: past the budget once it holds 224 KiB of it,
    // far faster than the tricklers.
    let doc = Doc::new();
    let board = Board::new(&doc);
    let mut shape = Shape::new("big", ShapeKind::Text);
    shape.text = "x".repeat(600 << 10);
    let update = {
        let mut txn = doc.transact_mut();
        board.put_shape(&mut txn, &shape);
        txn.encode_update_v1()
    };
    let mut writer = raw(&url).await;
    writer.send(Message::Binary(wire::update(update).into())).await.expect("send");
    watcher
        .until("the big text", |s| common::sync_doc_contents(s).contains(&"big".to_owned()))
        .await;
    // The slowest tricklers gave way: the first to be closed was closed for the budget.
    let (closed, _, others) = futures_util::future::select_all(closes).await;
    others.iter().for_each(tokio::task::JoinHandle::abort);
    let frame = closed.expect("read its close");
    assert_eq!(u16::from(frame.code), 1013);
    assert!(frame.reason.contains("too many unfinished messages"), "{}", frame.reason);
    drop(sinks);
    server.stop().await;
}

async fn sit_on_an_unfinished_message(messages_per_second: Option<u32>) {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.ping_interval_ms = 200;
    config.pong_timeout_ms = 300;
    if let Some(rate) = messages_per_second {
        config.max_messages_per_second = rate;
    }
    let server = TestServer::start_with(config).await;
    let url = server.url("unfinished");
    let mut holder = raw(&url).await;
    if messages_per_second.is_some() {
        // Its burst spent first, so each ping after the message's start waits its turn.
        for _ in 0..12 {
            holder.send(Message::Ping(vec![0].into())).await.expect("send");
        }
    }
    let first_part = Frame::message(vec![1u8; 100 << 10], OpCode::Data(Data::Binary), false);
    holder.send(Message::Frame(first_part)).await.expect("send");
    let (mut sink, mut stream) = holder.split();
    let pinger = tokio::spawn(async move {
        while sink.send(Message::Ping(vec![1].into())).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // One deadline for the whole wait: the server's pings keep coming meanwhile.
    let frame = close_frame(&mut stream).await;
    pinger.abort();
    assert_eq!(u16::from(frame.code), 1013);
    assert!(frame.reason.contains("does not finish"), "{}", frame.reason);
    assert_eq!(server.stats.dead_peers.load(Ordering::Relaxed), 0, "closed, not dropped as silent");
    // The room carries on.
    let mut next = TestClient::connect(&url).await;
    next.synced().await;
    server.stop().await;
}

/// Pings count against the same rate as other messages: each costs the server a pong. A peer
/// that pings without end is slowed, and what it sends after its pings waits its turn.
#[tokio::test]
async fn a_peer_flooding_pings_is_slowed_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    // Ten seconds' worth at once (10 messages), then one a second.
    config.max_messages_per_second = 1;
    let server = TestServer::start_with(config).await;
    let url = server.url("pinged");
    let mut bystander = TestClient::connect(&url).await;
    bystander.synced().await;
    let mut editor = TestClient::connect(&url).await;
    editor.synced().await;

    let mut flooder = raw(&url).await;
    for i in 0..15u8 {
        flooder.send(Message::Ping(vec![i].into())).await.expect("send");
    }
    let json = r##"{"user":{"name":"pinger","color":"#123456"}}"##;
    flooder.send(Message::Binary(awareness_frame(556, 1, json).into())).await.expect("send");
    // The burst's ten pings are answered at once.
    let mut pongs = 0;
    while pongs < 10 {
        match tokio::time::timeout(common::DEADLINE, flooder.next()).await.expect("pongs in time") {
            Some(Ok(Message::Pong(_))) => pongs += 1,
            Some(Ok(_)) => {}
            other => panic!("the flooder was cut off: {other:?}"),
        }
    }
    let pinger = |s: &huddle_protocol::session::ClientSession| {
        s.peers().into_iter().any(|(_, p)| p.user.name == "pinger")
    };
    editor.add_shape("passes", ShapeKind::Rect).await;
    bystander
        .until("the editor's shape", |s| common::sync_doc_contents(s).contains(&"passes".into()))
        .await;
    assert!(!pinger(&bystander.session), "the pings were taken in at once, not slowed");
    // Nothing was dropped: the message after the pings arrives too.
    bystander.until("the pinger's presence", pinger).await;
    assert_eq!(server.stats.rejected_peers.load(Ordering::Relaxed), 0);
    server.stop().await;
}

/// A room at `--max-room-bytes` refuses edits that add to it (the sender is closed with 1008)
/// and keeps what it has; everyone else stays, deleting still works, and makes room again.
// On four runtime threads, as under `--threads 4` (the limits are shared between them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_room_refuses_more_and_keeps_what_it_has() {
    use huddle_protocol::schema::Board;
    use huddle_protocol::yrs::Transact;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.max_room_bytes = 4096;
    let server = TestServer::start_with(config).await;
    let url = server.url("full");
    let mut bystander = TestClient::connect(&url).await;
    bystander.synced().await;
    let mut writer = TestClient::connect(&url).await;
    writer.synced().await;

    // One update past the limit is still taken (the room was below it)...
    writer.add_many_shapes(100).await;
    bystander.until("the hundred shapes", |s| common::sync_doc_contents(s).len() == 100).await;
    // ...and then the room is full.
    writer.add_shape("one-too-many", ShapeKind::Rect).await;
    assert_eq!(expect_close(&mut writer.ws).await, Some(1008));

    // An update that adds and deletes (a refused client's sync step 2 after its user deleted
    // something): the deletion is taken, the addition refused.
    let mut mixed = TestClient::connect(&url).await;
    mixed.synced().await;
    mixed
        .edit(|board, txn| {
            board.put_shape(txn, &Shape::new("mixed-new", ShapeKind::Rect));
            assert!(board.remove_shape(txn, "s1"));
        })
        .await;
    assert_eq!(expect_close(&mut mixed.ws).await, Some(1008));
    bystander.until("s1 deleted", |s| common::sync_doc_contents(s).len() == 99).await;
    assert!(!bystander.has_shape("mixed-new") && !bystander.has_shape("s1"));

    // Deleting still works, and the room holds what it took.
    bystander.edit(|board, txn| assert!(board.remove_shape(txn, "s0"))).await;
    let mut newcomer = TestClient::connect(&url).await;
    newcomer.until("the room minus s0 and s1", |s| common::sync_doc_contents(s).len() == 98).await;
    assert!(!newcomer.has_shape("one-too-many") && !newcomer.has_shape("s0"));
    assert!(!newcomer.has_shape("mixed-new") && !newcomer.has_shape("s1"));

    // Deleting most of it makes room again, once a snapshot without them replaces the log. A
    // compaction counted here may be one that began before the deletions came in: a client
    // refused until the one that follows it is written tries again after it, as a refused
    // client does when it reconnects.
    let compactions = || server.stats.compactions.load(Ordering::Relaxed);
    let mut seen = compactions();
    bystander
        .edit(|board, txn| {
            for i in 2..95 {
                assert!(board.remove_shape(txn, &format!("s{i}")));
            }
        })
        .await;
    for attempt in 1.. {
        assert!(attempt <= 10, "still refused after {attempt} compactions");
        common::eventually("a compaction of the emptied room", || compactions() > seen).await;
        seen = compactions();
        let mut adder = TestClient::connect(&url).await;
        adder.synced().await;
        {
            let board = Board::new(adder.session.doc());
            let mut txn = adder.session.doc().transact_mut();
            board.put_shape(&mut txn, &Shape::new("fits-again", ShapeKind::Rect));
        }
        let [update] =
            <[Vec<u8>; 1]>::try_from(adder.session.drain_local_updates()).expect("one update");
        match common::try_send_handled(&mut adder.ws, update).await {
            Ok(()) => break,
            Err(code) => assert_eq!(code, Some(1008), "refused as full, if at all"),
        }
    }
    bystander.until("the new shape", |s| common::sync_doc_contents(s).len() == 6).await;
    assert!(bystander.has_shape("fits-again"));
    server.stop().await;
}

/// Two crafted updates: the first, from one socket, holds an item whose parent is item (77, 0),
/// which the room has not seen; the second, from another socket, brings (77, 0) as plain text,
/// not a type. yrs would keep the first waiting and retry it inside later applies, where (among
/// other things) it could land somewhere no check saw: it is refused (1007), and the room
/// carries on: the second update's text goes in and reaches everyone, and after a restart the
/// room loads with everything it took.
#[tokio::test]
async fn an_item_whose_parent_the_room_lacks_is_refused_and_disturbs_nobody() {
    // Item (77, 0): the string "a" in the root type "t".
    const NOT_A_TYPE: [u8; 11] = [1, 1, 77, 0, 4, 1, 1, b't', 1, b'a', 0];

    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(test_config(dir.path())).await;
    let url = server.url("tangle");
    let mut bystander = TestClient::connect(&url).await;
    bystander.synced().await;
    bystander.add_many_shapes(100).await;
    let mut first = raw(&url).await;
    first.send(Message::Binary(wire::update(ORPHAN.to_vec()).into())).await.expect("send");
    assert_eq!(expect_close(&mut first).await, Some(1007));
    let mut second = raw(&url).await;
    common::send_handled(&mut second, wire::update(NOT_A_TYPE.to_vec())).await;
    bystander.until("the plain text", has_77).await;

    bystander.add_shape("after", ShapeKind::Rect).await;
    let mut newcomer = TestClient::connect(&url).await;
    newcomer
        .until("the shape and the text", |s| {
            common::sync_doc_contents(s).contains(&"after".to_owned()) && has_77(s)
        })
        .await;
    for client in [&bystander, &newcomer] {
        use huddle_protocol::yrs::{ReadTxn, Transact};
        assert!(!client.session.doc().transact().has_missing_updates());
    }
    drop((first, second));
    server.stop().await;

    let server = TestServer::start_with(test_config(dir.path())).await;
    let mut fresh = TestClient::connect(&server.url("tangle")).await;
    fresh.synced().await;
    assert!(fresh.has_shape("after") && fresh.has_shape("s99"));
    assert!(has_77(&fresh.session));
    server.stop().await;
}
