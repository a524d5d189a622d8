//! Interop with real Yjs: a Node script using the stock `yjs` + `y-websocket` npm packages edits
//! a room together with a Rust client built on `huddle-protocol`. Both converge, presence flows
//! both ways, and the stock client's clean departure reaches the Rust client. A stock client
//! joins a room with more people present than one awareness message from a peer may name, and
//! stays.

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::{DEADLINE, TestClient, TestServer};
use huddle_protocol::schema::{Board, ChatMessage, Shape, ShapeKind};
use huddle_protocol::yrs::Transact;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// A stock Yjs client: `script` in `tests/interop`, run by node against `server`'s room `room`
/// with `more` arguments after those two.
fn stock_client(script: &str, server: &TestServer, room: &str, more: &[&str]) -> StockClient {
    let mut node = Command::new("node")
        .arg(interop_dir().join(script))
        .arg(format!("ws://{}/ws", server.addr))
        .arg(room)
        .args(more)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed (Debian package nodejs)");
    let stdout = node.stdout.take().expect("stdout");
    StockClient { node, stdout }
}

struct StockClient {
    node: tokio::process::Child,
    stdout: tokio::process::ChildStdout,
}

impl StockClient {
    /// The one JSON line the script prints when it is done, then its successful exit.
    async fn report(mut self) -> serde_json::Value {
        let line = tokio::time::timeout(DEADLINE, BufReader::new(self.stdout).lines().next_line())
            .await
            .expect("node reports in time")
            .expect("read")
            .expect("node printed its report");
        let report = serde_json::from_str(&line).expect("json report");
        let status = tokio::time::timeout(DEADLINE, self.node.wait())
            .await
            .expect("node exits")
            .expect("status");
        assert!(status.success(), "node exited with {status}: {report}");
        report
    }
}

#[tokio::test]
async fn stock_yjs_client_and_rust_client_converge_with_presence_both_ways() {
    let dir = interop_dir();
    assert!(
        dir.join("node_modules/yjs").exists() && dir.join("node_modules/y-websocket").exists(),
        "the npm packages are missing: run `cargo xtask test` (it installs them) or `npm ci --prefix server/tests/interop`"
    );
    let server = TestServer::start().await;
    let room = "interop";
    let mut rust = TestClient::connect(&server.url(room)).await;
    rust.synced().await;
    rust.set_name("rust").await;
    let mut ellipse = Shape::new("rust-ellipse", ShapeKind::Ellipse);
    ellipse.w = 80.0;
    rust.edit(|b, t| {
        b.put_shape(t, &ellipse);
        b.post_chat(
            t,
            &ChatMessage {
                id: "rust-msg".into(),
                author_id: "rust".into(),
                author_name: "rust".into(),
                author_color: "#1971c2".into(),
                text: "hello from rust".into(),
                ts: 1.0,
            },
        );
    })
    .await;

    let node = stock_client("peer.mjs", &server, room, &[]);

    rust.until("the stock client's rectangle and chat message", |s| {
        let board = Board::new(s.doc());
        let txn = s.doc().transact();
        board.shape(&txn, "node-rect").is_some_and(|r| r.kind == ShapeKind::Rect && r.w == 120.0)
            && board
                .chat(&txn)
                .iter()
                .any(|m| m.text == "hello from yjs" && m.author_name == "node")
    })
    .await;
    rust.until("the stock client's presence", |s| {
        s.peers().iter().any(|(_, p)| p.user.name == "node" && p.cursor.is_some_and(|c| c.x == 5.0))
    })
    .await;

    let report = node.report().await;
    assert_eq!(report["shapes"], serde_json::json!(["node-rect", "rust-ellipse"]), "{report}");
    assert_eq!(report["rustKind"], "ellipse");
    assert_eq!(report["peers"], serde_json::json!(["rust"]));
    assert_eq!(report["chat"].as_array().map(Vec::len), Some(2));

    // The stock client left: its presence is gone for the Rust client.
    rust.until("the stock client's departure", |s| s.peers().is_empty()).await;
    assert_eq!(rust.shape_ids(), vec!["node-rect", "rust-ellipse"]);
    server.stop().await;
}

#[tokio::test]
async fn a_stock_client_joining_a_crowded_room_is_not_cut_off_for_echoing_its_presence() {
    let dir = interop_dir();
    let dir_ok = dir.join("node_modules/y-websocket").exists();
    assert!(dir_ok, "the npm packages are missing: run `npm ci --prefix server/tests/interop`");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config(tmp.path());
    config.max_client_joins_per_second = 1000;
    let server = TestServer::start_with(config).await;
    let room = "crowd";
    // More people present than one awareness message may name (64 by default).
    const PRESENT: usize = 80;
    let mut crowd = Vec::with_capacity(PRESENT);
    for i in 0..PRESENT {
        let mut client = TestClient::connect(&server.url(room)).await;
        client.synced().await;
        client.set_name(&format!("person {i}")).await;
        crowd.push(client);
    }
    let mut watcher = crowd.pop().expect("one");
    watcher.until("everyone's presence", |s| s.peers().len() == PRESENT - 1).await;

    let node = stock_client("crowd.mjs", &server, room, &[&PRESENT.to_string()]);
    // The stock client sent its echo of everyone's presence before its marker: once the marker
    // is here, the server has handled the echo.
    watcher
        .until("the stock client's marker", |s| {
            Board::new(s.doc()).shape(&s.doc().transact(), "crowd-marker").is_some()
        })
        .await;
    watcher.add_shape("crowd-ack", ShapeKind::Rect).await;
    let report = node.report().await;
    assert_eq!(report["closes"], 0, "the stock client was cut off: {report}");
    assert_eq!(report["others"], PRESENT, "{report}");
    server.stop().await;
}
