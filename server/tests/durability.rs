//! `kill -9` durability with the real binary: every update a client has seen relayed is in the
//! room after the server is killed mid-stream and restarted.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;

use common::{DEADLINE, TestClient};
use huddle_protocol::schema::{Board, Shape, ShapeKind};
use huddle_protocol::yrs::Transact;
use tokio::process::{Child, Command};

struct ServerProcess {
    child: Child,
    addr: String,
}

async fn spawn_server(data_dir: &Path) -> ServerProcess {
    spawn_server_with(data_dir, &[]).await
}

async fn spawn_server_with(data_dir: &Path, flags: &[&str]) -> ServerProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_huddle-server"))
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(flags)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("server binary starts");
    let addr = common::printed_addr(&mut child).await;
    ServerProcess { child, addr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_update_a_watcher_saw_survives_kill_dash_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let room = "durable";
    let mut seen_overall = BTreeSet::new();
    let mut server = spawn_server(dir.path()).await;
    // Kills that left updates in the journal (`store::journal`) for the restart to replay.
    let mut journal_left = 0;

    for (round, kill_after) in [3usize, 10, 25, 40, 80, 150, 250, 400].into_iter().enumerate() {
        let url = format!("ws://{}/ws/{room}", server.addr);
        let mut writer = TestClient::connect(&url).await;
        let mut watcher = TestClient::connect(&url).await;
        writer.synced().await;
        watcher.synced().await;

        // The writer streams shapes as fast as it can, without waiting for anything.
        let stream = tokio::spawn(async move {
            for i in 0.. {
                let shape = Shape::new(format!("r{round}-{i:05}"), ShapeKind::Pen);
                if !writer.try_edit(|b, t| b.put_shape(t, &shape)).await {
                    break; // the server is gone
                }
                if i % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let t0 = std::time::Instant::now();
        let target = seen_overall.len() as u32 + kill_after as u32;
        watcher
            .until("watcher sees the stream", |s| {
                Board::new(s.doc()).shape_count(&s.doc().transact()) >= target
            })
            .await;
        // SIGKILL mid-stream: no shutdown path runs.
        server.child.start_kill().expect("kill -9");
        let _ = server.child.wait().await;
        let journaled: u64 = huddle_server::store::journal::existing(dir.path())
            .expect("data dir")
            .iter()
            .map(|(_, path)| std::fs::metadata(path).map_or(0, |m| m.len()))
            .sum();
        journal_left += usize::from(journaled > 0);
        let seen: BTreeSet<String> = watcher.shape_ids().into_iter().collect();
        // Neither client may upload its copy to the new server.
        stream.abort();
        let _ = stream.await;
        drop(watcher);
        eprintln!("round {round}: watcher saw {} after {:?}", seen.len(), t0.elapsed());
        seen_overall.extend(seen);

        server = spawn_server(dir.path()).await;
        let url = format!("ws://{}/ws/{room}", server.addr);
        let mut fresh = TestClient::connect(&url).await;
        fresh.synced().await;
        eprintln!("round {round}: restarted and synced after {:?}", t0.elapsed());
        let have: BTreeSet<String> = fresh.shape_ids().into_iter().collect();
        let lost: Vec<_> = seen_overall.difference(&have).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} updates seen by the watcher were lost: {lost:?}",
            lost.len()
        );
        fresh.close().await;
    }
    assert!(journal_left > 0, "no kill left a journal to replay: the test missed that path");
    eprintln!("{journal_left} of 8 kills left updates in the journal");
    server.child.start_kill().expect("kill");
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_saves_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = spawn_server(dir.path()).await;
    let url = format!("ws://{}/ws/graceful", server.addr);
    let mut a = TestClient::connect(&url).await;
    a.synced().await;
    a.add_shape("kept", ShapeKind::Text).await;
    let mut b = TestClient::connect(&url).await;
    b.until("b sees it", |s| common::sync_doc_contents(s).contains(&"kept".to_owned())).await;

    let pid = server.child.id().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(common::expect_close(&mut b.ws).await, Some(1001));
    let exit = tokio::time::timeout(DEADLINE, server.child.wait())
        .await
        .expect("exits in time")
        .expect("status");
    assert!(exit.success(), "exit status {exit}");

    let server = spawn_server(dir.path()).await;
    let mut c = TestClient::connect(&format!("ws://{}/ws/graceful", server.addr)).await;
    c.synced().await;
    assert_eq!(c.shape_ids(), vec!["kept"]);
}

/// The room collects what each update deletes when that update's transaction ends, and yrs
/// takes an item under a collected parent but refuses one under a parent that is deleted and
/// not yet collected. A log replayed in one transaction refused the third update below, which
/// the room had taken and relayed, so after a `kill -9` the room failed to load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_an_item_under_text_deleted_before_it_came_loads_after_kill_dash_9() {
    use huddle_protocol::wire;
    use huddle_protocol::yrs::{ClientID, ReadTxn};
    // Item (77, 0): the string "a" in the root type "t".
    const TEXT: [u8; 11] = [1, 1, 77, 0, 4, 1, 1, b't', 1, b'a', 0];
    // No items; deletes (77, 0).
    const DELETE_TEXT: [u8; 6] = [0, 1, 77, 1, 0, 1];
    // A string from client 88 whose parent is item (77, 0).
    const UNDER_TEXT: [u8; 11] = [1, 1, 88, 0, 4, 0, 77, 0, 1, b'b', 0];
    let has_88 = |s: &huddle_protocol::session::ClientSession| {
        s.doc().transact().state_vector().get(&ClientID::new(88)) == 1
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = spawn_server(dir.path()).await;
    let url = format!("ws://{}/ws/collected", server.addr);
    let mut watcher = TestClient::connect(&url).await;
    watcher.synced().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("connects");
    for update in [&TEXT[..], &DELETE_TEXT, &UNDER_TEXT] {
        common::send_handled(&mut ws, wire::update(update.to_vec())).await;
    }
    watcher.until("the item under the deleted text, relayed", has_88).await;
    server.child.start_kill().expect("kill -9");
    server.child.wait().await.expect("killed");

    let server = spawn_server(dir.path()).await;
    let mut fresh = TestClient::connect(&format!("ws://{}/ws/collected", server.addr)).await;
    fresh.synced().await;
    assert!(has_88(&fresh.session), "the room lost what it relayed");
}

/// `--threads 4`: sockets, rooms, their compactions and the flusher on several runtime threads
/// at once. Four rooms, each with four people drawing and moving shapes while their connections
/// drop and come back (with the same document, as the web client keeps it), the rooms
/// compacting all along, and a visitor per room opening the board again and again: a
/// visitor never finds a shape it saw before missing, everyone in a room ends with the same
/// board holding every shape drawn in it, and that board is what a fresh client gets after the
/// server is killed with `kill -9` (no final snapshot to cover for a compaction that stored
/// less than it claimed) and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_four_runtime_threads_concurrent_drawing_and_reconnects_lose_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use huddle_protocol::yrs::{ReadTxn, StateVector};

    const ROOMS: usize = 4;
    const WRITERS: usize = 4;
    const EDITS: usize = 150;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server =
        spawn_server_with(dir.path(), &["--threads", "4", "--compact-every", "5"]).await;
    let url = |addr: &str, r: usize| format!("ws://{addr}/ws/busy-{r}");

    let mut writers = tokio::task::JoinSet::new();
    for r in 0..ROOMS {
        for w in 0..WRITERS {
            let url = url(&server.addr, r);
            writers.spawn(async move {
                let mut c = TestClient::connect(&url).await;
                c.synced().await;
                for e in 0..EDITS {
                    c.add_shape(&format!("r{r}-w{w}-e{e:02}"), ShapeKind::Rect).await;
                    if e > 0 {
                        // Move one of this writer's earlier shapes: replaced values, deletions.
                        let id = format!("r{r}-w{w}-e{:02}", e * 5 / 7);
                        c.edit(|b, t| {
                            b.set_field(t, &id, "x", e as f64);
                        })
                        .await;
                    }
                    if e % 8 == 7 {
                        c = c.reconnect(&url).await;
                        c.synced().await;
                    }
                }
                // Reading on (and so answering the server's pings) while the others finish.
                c.until("every shape drawn in the room", |s| {
                    common::sync_doc_contents(s).len() == WRITERS * EDITS
                })
                .await;
                (r, c)
            });
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let mut visitors = tokio::task::JoinSet::new();
    for r in 0..ROOMS {
        let url = url(&server.addr, r);
        let done = Arc::clone(&done);
        visitors.spawn(async move {
            let mut seen: Vec<String> = Vec::new();
            let mut visits = 0;
            while visits == 0 || !done.load(Ordering::Acquire) {
                let mut v = TestClient::connect(&url).await;
                v.synced().await;
                let now = v.shape_ids();
                let lost: Vec<_> = seen.iter().filter(|id| !now.contains(id)).collect();
                assert!(
                    lost.is_empty(),
                    "room {r}, visit {visits}: shapes seen before are gone: {lost:?}"
                );
                seen = now;
                visits += 1;
                v.close().await;
            }
            visits
        });
    }

    let mut rooms: Vec<Vec<TestClient>> = (0..ROOMS).map(|_| Vec::new()).collect();
    while let Some(joined) = writers.join_next().await {
        let (r, c) = joined.expect("a writer finishes without panicking");
        rooms[r].push(c);
    }
    done.store(true, Ordering::Release);
    let mut visits = 0;
    while let Some(joined) = visitors.join_next().await {
        visits += joined.expect("a visitor finishes without panicking");
    }

    let mut boards = Vec::new();
    for (r, room) in rooms.iter_mut().enumerate() {
        let ids = room[0].shape_ids();
        for c in room.iter() {
            assert_eq!(c.shape_ids(), ids, "room {r}: everyone has the same shapes");
        }
        // Every writer has finished, so everything written is in the union of their documents.
        let mut sv = StateVector::default();
        for c in room.iter() {
            sv.merge(c.session.doc().transact().state_vector());
        }
        for c in room.iter_mut() {
            // Every edit, moves included, reached everyone.
            c.until("the same edits as the others", |s| s.doc().transact().state_vector() == sv)
                .await;
        }
        boards.push((ids, sv));
    }
    let compactions = metric(&server.addr, "huddle_compactions_total").await;
    // From each room's fifth edit on, whenever its log reaches a share of its snapshot.
    assert!(compactions >= 3 * ROOMS as u64, "the rooms compacted meanwhile ({compactions})");
    eprintln!("{visits} visits, {compactions} compactions");
    server.child.start_kill().expect("kill -9");
    let _ = server.child.wait().await;
    drop(rooms); // nobody may upload a copy to the restarted server

    let server = spawn_server(dir.path()).await;
    for (r, (ids, sv)) in boards.into_iter().enumerate() {
        let mut c = TestClient::connect(&url(&server.addr, r)).await;
        c.synced().await;
        assert_eq!(c.shape_ids(), ids, "room {r} after kill -9 and a restart");
        assert_eq!(c.session.doc().transact().state_vector(), sv, "room {r} after kill -9");
    }
}

/// A counter from the server's `/metrics`.
async fn metric(addr: &str, name: &str) -> u64 {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connects");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("asks");
    let mut body = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut body).await.expect("answer");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}
