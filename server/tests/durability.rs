//! `kill -9` durability with the real binary: every update a client has seen relayed is in the
//! room after the server is killed mid-stream and restarted.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;

use common::{DEADLINE, TestClient};
use huddle_protocol::schema::{Board, Shape, ShapeKind};
use huddle_protocol::yrs::Transact;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

struct ServerProcess {
    child: Child,
    addr: String,
}

async fn spawn_server(data_dir: &Path) -> ServerProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_huddle-server"))
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("server binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("server prints its address in time")
        .expect("read")
        .expect("a line");
    let addr = line.rsplit("http://").next().expect("address").trim().to_owned();
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
