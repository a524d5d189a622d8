//! The relay as clients see it: convergence, late joiners, presence, single loads, unload races,
//! restarts. Real sockets on 127.0.0.1:0, a real SQLite file.

mod common;

use std::sync::atomic::Ordering;

use common::{TestClient, TestServer, eventually, test_config};
use huddle_protocol::schema::ShapeKind;
use huddle_protocol::yrs::{ReadTxn, Transact};

#[tokio::test]
async fn two_clients_converge_late_joiner_gets_everything_and_presence_comes_and_goes() {
    let server = TestServer::start().await;
    let url = server.url("board-1");
    let mut ada = TestClient::connect(&url).await;
    let mut bob = TestClient::connect(&url).await;
    ada.synced().await;
    bob.synced().await;

    ada.add_shape("rect-a", ShapeKind::Rect).await;
    bob.until("bob sees ada's rectangle", |s| {
        common::sync_doc_contents(s).contains(&"rect-a".into())
    })
    .await;
    bob.add_shape("ellipse-b", ShapeKind::Ellipse).await;
    ada.until("ada sees bob's ellipse", |s| {
        common::sync_doc_contents(s).contains(&"ellipse-b".into())
    })
    .await;

    // Re-sending what the room already has (as a reconnecting client does) stores and relays
    // nothing: the next real edit is the only one counted.
    let updates = server.stats.updates.load(Ordering::Relaxed);
    let history = {
        use huddle_protocol::yrs::ReadTxn;
        let txn = ada.session.doc().transact();
        txn.encode_state_as_update_v1(&Default::default())
    };
    ada.send(huddle_protocol::wire::update(history)).await;
    ada.add_shape("line-a", ShapeKind::Line).await;
    bob.until("bob sees the line", |s| common::sync_doc_contents(s).contains(&"line-a".into()))
        .await;
    assert_eq!(server.stats.updates.load(Ordering::Relaxed), updates + 1);

    ada.set_name("Ada").await;
    bob.set_name("Bob").await;
    bob.until("bob sees Ada", |s| s.peers().iter().any(|(_, p)| p.user.name == "Ada")).await;
    ada.until("ada sees Bob", |s| s.peers().iter().any(|(_, p)| p.user.name == "Bob")).await;

    // A late joiner gets the whole board and everyone's presence from the server.
    let mut cy = TestClient::connect(&url).await;
    cy.synced().await;
    assert_eq!(cy.shape_ids(), vec!["ellipse-b", "line-a", "rect-a"]);
    cy.until("cy sees both peers", |s| s.peers().len() == 2).await;
    assert_eq!(cy.peer_names(), vec!["Ada", "Bob"]);

    // Ada closes cleanly: everyone sees her leave at once (not after Yjs' 30 s timeout).
    ada.close().await;
    bob.until("Ada gone for bob", |s| s.peers().iter().all(|(_, p)| p.user.name != "Ada")).await;
    cy.until("Ada gone for cy", |s| s.peers().iter().all(|(_, p)| p.user.name != "Ada")).await;

    // Bob's TCP connection vanishes without a close frame: same result.
    drop(bob);
    cy.until("Bob gone for cy", |s| s.peers().is_empty()).await;
    assert_eq!(cy.shape_ids(), vec!["ellipse-b", "line-a", "rect-a"]);
    server.stop().await;
}

// Two runtime threads, as `--threads 2` gives the server: the sockets are spread over two
// flushers, and broadcasts from either thread reach outboxes written by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sockets_opening_one_stored_room_share_one_load_and_converge() {
    let server = TestServer::start().await;
    let url = server.url("crowd");
    // Put something in the room, then let it unload so it must be loaded from SQLite.
    let mut first = TestClient::connect(&url).await;
    first.synced().await;
    first.add_shape("seed", ShapeKind::Sticky).await;
    let stats = server.stats.clone();
    // The update is durable once any other client could see it; a second client proves it.
    let mut check = TestClient::connect(&url).await;
    check.until("seed visible", |s| common::sync_doc_contents(s).contains(&"seed".into())).await;
    first.close().await;
    check.close().await;
    eventually("room unloaded", || stats.room_unloads.load(Ordering::Relaxed) == 1).await;
    let loads_before = stats.room_loads.load(Ordering::Relaxed);

    const N: usize = 24;
    let clients = futures_util::future::join_all((0..N).map(|_| TestClient::connect(&url))).await;
    let mut clients = clients;
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_name(&format!("user-{i:02}")).await;
        c.add_shape(&format!("shape-{i:02}"), ShapeKind::Rect).await;
    }
    for c in &mut clients {
        c.until("all shapes", |s| common::sync_doc_contents(s).len() == N + 1).await;
        c.until("all peers", |s| s.peers().len() == N - 1).await;
    }
    assert_eq!(stats.room_loads.load(Ordering::Relaxed), loads_before + 1, "exactly one load");
    let reference = clients[0].shape_ids();
    assert!(reference.contains(&"seed".to_owned()));
    for c in &clients {
        assert_eq!(c.shape_ids(), reference);
    }
    server.stop().await;
}

#[tokio::test]
async fn joins_racing_idle_unloads_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.room_idle_ms = 1; // unload as soon as the room is empty: every join below races it
    config.compact_every = 3; // and compactions run all the time too
    let server = TestServer::start_with(config).await;
    let url = server.url("churn");
    let mut expected = Vec::new();
    for i in 0..40 {
        let mut c = TestClient::connect(&url).await;
        c.synced().await;
        let have = c.shape_ids();
        assert_eq!(have, expected, "round {i}: a fresh client sees every earlier shape");
        let id = format!("s{i:03}");
        c.add_shape(&id, ShapeKind::Line).await;
        // Wait for the server to acknowledge by syncing a second socket (durable before relay).
        let mut w = TestClient::connect(&url).await;
        w.until("new shape", |s| common::sync_doc_contents(s).contains(&id)).await;
        expected.push(id);
        expected.sort();
        let unloads = server.stats.room_unloads.load(Ordering::Relaxed);
        c.close().await;
        drop(w); // abrupt: the server notices a moment later
        match i % 3 {
            // The room is written back and dropped before the next join: a load from SQLite.
            0 => {
                eventually("unload", || server.stats.room_unloads.load(Ordering::Relaxed) > unloads)
                    .await
            }
            // The next join lands while the unload timer is pending or firing.
            1 => {}
            // Not a wait for anything: shifts the join across the 1 ms unload window.
            _ => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
        }
    }
    assert!(server.stats.room_unloads.load(Ordering::Relaxed) > 0, "rooms did unload in between");
    server.stop().await;
}

#[tokio::test]
async fn restart_brings_every_room_back_with_the_same_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(test_config(dir.path())).await;
    let rooms = ["alpha", "beta", "gamma"];
    let mut before = Vec::new();
    for (n, room) in rooms.iter().enumerate() {
        let mut c = TestClient::connect(&server.url(room)).await;
        c.synced().await;
        for i in 0..=n * 5 {
            c.add_shape(&format!("{room}-{i}"), ShapeKind::Arrow).await;
        }
        c.edit(|b, t| {
            b.post_chat(
                t,
                &huddle_protocol::schema::ChatMessage {
                    id: format!("{room}-m"),
                    author_id: "u".into(),
                    author_name: "U".into(),
                    author_color: "#000".into(),
                    text: format!("hello {room}"),
                    ts: 1.0,
                },
            )
        })
        .await;
        let mut w = TestClient::connect(&server.url(room)).await;
        w.until("all of it", |s| common::sync_doc_contents(s).len() == n * 5 + 1).await;
        w.until("chat", |s| {
            huddle_protocol::schema::Board::new(s.doc()).chat(&s.doc().transact()).len() == 1
        })
        .await;
        let sv = w.session.doc().transact().state_vector();
        before.push((w.shape_ids(), sv));
        c.close().await;
        w.close().await;
    }
    server.stop().await;

    let server = TestServer::start_with(test_config(dir.path())).await;
    for (room, (ids, sv)) in rooms.iter().zip(before) {
        let mut c = TestClient::connect(&server.url(room)).await;
        c.synced().await;
        assert_eq!(c.shape_ids(), ids, "room {room}");
        assert_eq!(c.session.doc().transact().state_vector(), sv, "room {room} state vector");
        let chat =
            huddle_protocol::schema::Board::new(c.session.doc()).chat(&c.session.doc().transact());
        assert_eq!(chat[0].text, format!("hello {room}"));
    }
    server.stop().await;
}

/// Ada draws a shape and Bob, who has it, moves it; the room gets Bob's move first (it travelled
/// another way, a second provider or another tab). yrs would keep it waiting in the room and
/// retry it inside later applies, which crafted updates could use to put things where no check
/// saw them (see `Nesting::check`), so it is refused: Bob's socket is closed (1007) and nothing
/// of the move is stored or relayed. Bob's client reconnects and its sync step 2 brings the
/// shape and the move together: everyone, and everyone after a restart, sees the box where Bob
/// put it.
#[tokio::test]
async fn an_edit_that_arrives_before_the_one_it_builds_on_is_refused_until_a_resync_brings_both() {
    use futures_util::SinkExt;
    use huddle_protocol::schema::{Board, Shape};
    use huddle_protocol::wire;
    use huddle_protocol::yrs::updates::decoder::Decode;
    use huddle_protocol::yrs::{Doc, StateVector, Update};
    use tokio_tungstenite::tungstenite::Message;

    let ada = Doc::with_client_id(77);
    let drawn = {
        let board = Board::new(&ada);
        let mut txn = ada.transact_mut();
        board.put_shape(&mut txn, &Shape::new("box", ShapeKind::Rect));
        txn.encode_update_v1()
    };
    let bob = Doc::with_client_id(88);
    bob.transact_mut().apply_update(Update::decode_v1(&drawn).expect("decodes")).expect("applies");
    let moved = {
        let board = Board::new(&bob);
        let mut txn = bob.transact_mut();
        let mut shape = Shape::new("box", ShapeKind::Rect);
        shape.x = 500.0;
        board.put_shape(&mut txn, &shape);
        txn.encode_update_v1()
    };
    let x_of_box = |s: &huddle_protocol::session::ClientSession| {
        Board::new(s.doc()).shape(&s.doc().transact(), "box").map(|shape| shape.x)
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(test_config(dir.path())).await;
    let url = server.url("early");
    let mut watcher = TestClient::connect(&url).await;
    watcher.synced().await;
    let (mut bobs, _) = tokio_tungstenite::connect_async(&url).await.expect("connects");
    bobs.send(Message::Binary(wire::update(moved).into())).await.expect("send");
    assert_eq!(common::expect_close(&mut bobs).await, Some(1007));
    let mut other = TestClient::connect(&url).await;
    other.synced().await;
    other.add_shape("later", ShapeKind::Ellipse).await;
    watcher
        .until("the other's shape", |s| common::sync_doc_contents(s).contains(&"later".to_owned()))
        .await;
    assert_eq!(x_of_box(&watcher.session), None, "nothing of the move went out");
    assert!(!watcher.session.doc().transact().has_missing_updates());
    // Bob back: his sync step 2 is all the room lacks of what he has, Ada's shape included.
    let resync = bob.transact().encode_state_as_update_v1(&StateVector::default());
    let (mut bobs, _) = tokio_tungstenite::connect_async(&url).await.expect("connects");
    common::send_handled(&mut bobs, wire::update(resync)).await;
    watcher.until("the box where Bob moved it", |s| x_of_box(s) == Some(500.0)).await;
    drop(bobs);
    server.stop().await;

    let server = TestServer::start_with(test_config(dir.path())).await;
    let url = server.url("early");
    let mut fresh = TestClient::connect(&url).await;
    fresh.synced().await;
    assert_eq!(x_of_box(&fresh.session), Some(500.0), "a joiner after a restart gets the move");
    // Ada, whose own update now changes nothing, is not refused for it.
    let mut ada = TestClient::connect(&url).await;
    ada.synced().await;
    ada.send(wire::update(drawn)).await;
    ada.add_shape("after", ShapeKind::Rect).await;
    fresh
        .until("Ada's next shape", |s| common::sync_doc_contents(s).contains(&"after".to_owned()))
        .await;
    for client in [&fresh, &ada] {
        assert!(!client.session.doc().transact().has_missing_updates());
    }
    server.stop().await;
}

/// Stores a room of 5,000 shapes in `dir` through a server that then stops (writing the
/// room's snapshot), and returns the room as the client that drew it holds it.
async fn store_big_room(dir: &std::path::Path, room: &str) -> Vec<u8> {
    let server = TestServer::start_with(test_config(dir)).await;
    let url = server.url(room);
    let mut ada = TestClient::connect(&url).await;
    ada.synced().await;
    ada.add_many_shapes(5000).await;
    let mut check = TestClient::connect(&url).await;
    check.until("all 5000 stored", |s| common::sync_doc_contents(s).len() == 5000).await;
    let saved = ada.session.snapshot();
    ada.close().await;
    check.close().await;
    server.stop().await;
    saved
}

/// A big stored room is served from its snapshot after a restart and built when an edit needs
/// it: edits, presence and a client resyncing with state of its own must all work before the
/// build and after.
#[tokio::test]
async fn a_big_stored_room_serves_joiners_edits_and_presence_while_it_is_built() {
    let dir = tempfile::tempdir().expect("tempdir");
    let saved = store_big_room(dir.path(), "big").await;

    let server = TestServer::start_with(test_config(dir.path())).await;
    let url = server.url("big");
    // All three connect at once, before the room is built.
    let mut fresh = TestClient::connect(&url).await;
    let mut editor = TestClient::connect(&url).await;
    let (ws, _) = tokio_tungstenite::connect_async(&url).await.expect("connects");
    let mut session = huddle_protocol::session::ClientSession::new(
        huddle_protocol::yrs::Doc::with_client_id(common::rand_id()),
        common::now_millis,
    );
    session.restore(&saved).expect("restores");
    let frames = session.handshake();
    let mut returning = TestClient { session, ws, closed: None };
    for f in frames {
        returning.send(f).await;
    }
    returning.add_shape("made-offline", ShapeKind::Ellipse).await;
    editor.set_name("Editor").await;
    editor.add_shape("late", ShapeKind::Arrow).await;

    for (who, client) in
        [("fresh", &mut fresh), ("editor", &mut editor), ("returning", &mut returning)]
    {
        client
            .until(&format!("{who} has everything"), |s| {
                let ids = common::sync_doc_contents(s);
                ids.len() == 5002
                    && ids.iter().any(|i| i == "late")
                    && ids.iter().any(|i| i == "made-offline")
            })
            .await;
    }
    fresh
        .until("editor's presence", |s| s.peers().iter().any(|(_, p)| p.user.name == "Editor"))
        .await;
    fresh.close().await;
    editor.close().await;
    returning.close().await;
    server.stop().await;
}

/// A big stored room that people only look at is served from its snapshot and never decoded:
/// joiners get the whole board, see each other, and are asked for what they have that the room
/// lacks (a client's offline edit arrives). That edit, the first, builds the room, and presence
/// carries on across the build.
#[tokio::test]
async fn a_big_stored_room_that_people_only_look_at_is_never_decoded() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    // Ada keeps her copy, and will draw one more shape while the server is away.
    let saved = store_big_room(dir.path(), "gallery").await;

    let server = TestServer::start_with(test_config(dir.path())).await;
    let url = server.url("gallery");
    let builds = || server.stats.room_builds.load(Ordering::Relaxed);
    let mut bob = TestClient::connect(&url).await;
    let mut cy = TestClient::connect(&url).await;
    bob.set_name("Bob").await;
    cy.set_name("Cy").await;
    for (who, client, other) in [("bob", &mut bob, "Cy"), ("cy", &mut cy, "Bob")] {
        client
            .until(&format!("{who} has the board and sees {other}"), |s| {
                common::sync_doc_contents(s).len() == 5000
                    && s.peers().iter().any(|(_, p)| p.user.name == other)
            })
            .await;
    }
    assert_eq!(builds(), 0, "looking at a room does not decode it");

    // Ada comes back with her offline shape: the server's greeting asks for what it lacks.
    let (ws, _) = tokio_tungstenite::connect_async(&url).await.expect("connects");
    let mut session = huddle_protocol::session::ClientSession::new(
        huddle_protocol::yrs::Doc::with_client_id(common::rand_id()),
        common::now_millis,
    );
    session.restore(&saved).expect("restores");
    {
        let doc = session.doc();
        let board = huddle_protocol::schema::Board::new(doc);
        let shape = huddle_protocol::schema::Shape::new("drawn-offline", ShapeKind::Ellipse);
        board.put_shape(&mut doc.transact_mut(), &shape);
    }
    session.drain_local_updates();
    let frames = session.handshake();
    let mut ada = TestClient { session, ws, closed: None };
    for f in frames {
        ada.send(f).await;
    }
    // Her session answers the server's sync step 1 as it reads the greeting.
    ada.synced().await;
    bob.until("bob gets ada's offline shape", |s| {
        common::sync_doc_contents(s).iter().any(|i| i == "drawn-offline")
    })
    .await;
    assert_eq!(builds(), 1, "the first edit builds the room, once");
    // Presence made before the build is still there after it, and still changes.
    ada.until("ada sees bob and cy", |s| {
        let names: Vec<String> = s.peers().into_iter().map(|(_, p)| p.user.name).collect();
        names.contains(&"Bob".to_owned()) && names.contains(&"Cy".to_owned())
    })
    .await;
    cy.set_name("Cyrus").await;
    bob.until("bob sees cy renamed", |s| s.peers().iter().any(|(_, p)| p.user.name == "Cyrus"))
        .await;
    for client in [ada, bob, cy] {
        client.close().await;
    }
    server.stop().await;
}

/// A snapshot stored before state vectors were (NULL in the database) is decoded when its room
/// loads, as before, and gets its state vector stored then: the next load serves the room
/// without decoding it.
#[tokio::test]
async fn a_snapshot_stored_without_a_state_vector_gets_one_at_its_first_build() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("huddle.sqlite3");
    let stored_vectors = || {
        let db = rusqlite::Connection::open(&db).expect("opens the database");
        db.query_row(
            "SELECT count(*) FROM room_snapshots WHERE state_vector IS NOT NULL",
            [],
            |row| row.get::<_, i64>(0),
        )
        .expect("counts")
    };
    store_big_room(dir.path(), "older").await;
    assert_eq!(stored_vectors(), 1);
    // As a server from before the state vector was stored left it.
    rusqlite::Connection::open(&db)
        .expect("opens the database")
        .execute("UPDATE room_snapshots SET state_vector = NULL, state_vector_checksum = NULL", [])
        .expect("clears");

    for (round, builds) in [("first load", 1), ("second load", 0)] {
        let server = TestServer::start_with(test_config(dir.path())).await;
        let mut bob = TestClient::connect(&server.url("older")).await;
        bob.set_name("Bob").await;
        bob.until(&format!("{round}: bob has the board"), |s| {
            common::sync_doc_contents(s).len() == 5000
        })
        .await;
        if builds == 1 {
            common::eventually("the room built on load", || {
                server.stats.room_builds.load(Ordering::Relaxed) == 1
            })
            .await;
            common::eventually("its state vector stored", || stored_vectors() == 1).await;
        }
        assert_eq!(server.stats.room_builds.load(Ordering::Relaxed), builds, "{round}");
        bob.close().await;
        server.stop().await;
    }
}

/// Reads `client`'s frames (handling them) until one satisfies `stop`; returns whether any
/// frame before it, or it, satisfied `seen`.
async fn read_until(
    client: &mut TestClient,
    mut stop: impl FnMut(&[huddle_protocol::wire::WireMessage]) -> bool,
    mut seen: impl FnMut(&[huddle_protocol::wire::WireMessage]) -> bool,
) -> bool {
    use futures_util::StreamExt;
    let mut saw = false;
    loop {
        let next = tokio::time::timeout(common::DEADLINE, client.ws.next()).await.expect("in time");
        let Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(frame))) = next else {
            continue;
        };
        let messages = huddle_protocol::wire::decode_frame(&frame).expect("valid frame");
        client.session.receive(&frame).expect("applies");
        saw |= seen(&messages);
        if stop(&messages) {
            return saw;
        }
    }
}

/// Whether `messages` hold a presence entry of awareness client `id`.
fn names_client(messages: &[huddle_protocol::wire::WireMessage], id: u64) -> bool {
    messages.iter().any(|m| {
        matches!(m, huddle_protocol::wire::WireMessage::Awareness(u)
            if u.clients.contains_key(&huddle_protocol::yrs::ClientID::new(id)))
    })
}

/// Stock y-websocket clients drop a socket that has received nothing for 30 s. Alone in a
/// room, a client would receive nothing after its sync, so its presence heartbeat comes back
/// to it; with company it does not (others' heartbeats arrive anyway).
#[tokio::test]
async fn a_client_alone_gets_its_presence_back_and_one_with_company_does_not() {
    let server = TestServer::start().await;
    let url = server.url("lonely");
    let mut ada = TestClient::connect(&url).await;
    ada.synced().await;
    let ada_id = ada.session.client_id();
    ada.set_name("Ada").await;
    let echoed = read_until(&mut ada, |m| names_client(m, ada_id), |_| false).await;
    assert!(!echoed, "stopped at the echo itself");

    let mut bob = TestClient::connect(&url).await;
    bob.synced().await;
    bob.until("Bob sees Ada", |s| s.peers().iter().any(|(_, p)| p.user.name == "Ada")).await;
    // Ada's next heartbeat reaches Bob; then Bob edits. Whatever the server sent Ada for her
    // heartbeat would be queued to her before Bob's edit.
    ada.set_name("Ada again").await;
    bob.until("Bob sees the heartbeat", |s| {
        s.peers().iter().any(|(_, p)| p.user.name == "Ada again")
    })
    .await;
    bob.add_shape("after-the-heartbeat", ShapeKind::Rect).await;
    let is_update = |m: &[huddle_protocol::wire::WireMessage]| {
        m.iter().any(|m| {
            matches!(
                m,
                huddle_protocol::wire::WireMessage::Sync(
                    huddle_protocol::wire::WireSyncMessage::Update(_)
                )
            )
        })
    };
    let echoed = read_until(&mut ada, is_update, |m| names_client(m, ada_id)).await;
    assert!(!echoed, "with company, Ada's own presence was sent back to her");
    server.stop().await;
}

/// The first answer a fresh client gets to its sync step 1 at `url` (the greeting and presence
/// skipped), as the raw frame.
async fn first_answer(url: &str) -> Vec<u8> {
    use futures_util::{SinkExt, StreamExt};
    use huddle_protocol::wire::{self, WireMessage, WireSyncMessage};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connects");
    ws.send(Message::Binary(wire::EMPTY_SYNC_STEP1.to_vec().into())).await.expect("asks");
    loop {
        let next = tokio::time::timeout(common::DEADLINE, ws.next()).await.expect("in time");
        let Some(Ok(Message::Binary(frame))) = next else { continue };
        if frame[0] == wire::MSG_DEFLATED {
            return frame.to_vec();
        }
        let messages = wire::decode_frame(&frame).expect("valid frame");
        if matches!(messages[..], [WireMessage::Sync(WireSyncMessage::SyncStep2(_))]) {
            return frame.to_vec();
        }
    }
}

/// The web client asks (`?deflate=1`) for big answers deflated: a big room's first sync then
/// travels several times smaller. Stock clients, which do not ask, and small answers get the
/// plain y-websocket frame.
#[tokio::test]
async fn a_client_that_asks_gets_a_big_first_sync_deflated_and_others_get_it_plain() {
    use huddle_protocol::wire;
    let server = TestServer::start().await;
    let url = server.url("deflated");
    let asking = format!("{url}?deflate=1");
    let mut ada = TestClient::connect(&url).await;
    let mut bob = TestClient::connect(&url).await;
    ada.synced().await;
    bob.synced().await;
    ada.add_shape("first", ShapeKind::Rect).await;
    bob.until("bob sees the first shape", |s| {
        common::sync_doc_contents(s).contains(&"first".into())
    })
    .await;
    assert_eq!(first_answer(&asking).await[0], 0, "a small answer stays plain");

    ada.add_many_shapes(2_000).await;
    bob.until("bob sees the big board", |s| {
        huddle_protocol::schema::Board::new(s.doc()).shape_count(&s.doc().transact()) == 2_001
    })
    .await;
    let plain = first_answer(&url).await;
    let deflated = first_answer(&asking).await;
    assert_eq!(plain[0], 0, "stock clients get the y-websocket frame");
    assert_eq!(deflated[0], wire::MSG_DEFLATED);
    assert!(deflated.len() * 4 < plain.len(), "{} of {} bytes", deflated.len(), plain.len());
    assert_eq!(wire::inflate(&deflated, usize::MAX).expect("inflates"), Some(plain.clone()));
    // A second asking joiner gets the same bytes, and a client session syncs from them.
    assert_eq!(first_answer(&asking).await, deflated);
    let mut cy = TestClient::connect(&asking).await;
    cy.synced().await;
    assert_eq!(cy.shape_ids().len(), 2_001);
    server.stop().await;
}

/// Many people opening a big room at once (a shared link pasted into a meeting) cost one
/// compression of its first sync, not one each: they all get the same bytes.
#[tokio::test]
async fn joiners_arriving_together_share_one_compression_of_the_first_sync() {
    use std::sync::atomic::Ordering;
    let server = TestServer::start().await;
    let url = server.url("rush");
    let mut ada = TestClient::connect(&url).await;
    ada.synced().await;
    ada.add_many_shapes(3_000).await;
    // Ada's edits are durable and applied once a plain fresh joiner sees all of them.
    let mut bob = TestClient::connect(&url).await;
    bob.until("bob sees the big board", |s| {
        huddle_protocol::schema::Board::new(s.doc()).shape_count(&s.doc().transact()) == 3_000
    })
    .await;
    let before = server.stats.answers_deflated.load(Ordering::Relaxed);
    let asking = format!("{url}?deflate=1");
    let answers = futures_util::future::join_all((0..8).map(|_| first_answer(&asking))).await;
    assert!(answers.iter().all(|a| a[0] == huddle_protocol::wire::MSG_DEFLATED));
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "every joiner gets the same answer");
    let compressions = server.stats.answers_deflated.load(Ordering::Relaxed) - before;
    assert_eq!(compressions, 1, "eight joiners at once, one compression");
    server.stop().await;
}
