//! Storage failures are loud and never destructive; bad CLI input gets a one-line fix.

mod common;

use common::{TestClient, TestServer, expect_close, test_config};
use huddle_protocol::schema::ShapeKind;
use huddle_server::store::Store;
use huddle_server::store::sqlite::{Durability, SqliteStore};
use sqlx::Row;

async fn rows(dir: &std::path::Path, room: &str) -> (Vec<(i64, Vec<u8>)>, Option<(i64, Vec<u8>)>) {
    let store = SqliteStore::open(dir, Durability::Full).await.expect("opens");
    let log = sqlx::query("SELECT seq, data FROM room_updates WHERE room = ? ORDER BY seq")
        .bind(room)
        .fetch_all(store.pool())
        .await
        .expect("query")
        .into_iter()
        .map(|r| (r.get("seq"), r.get("data")))
        .collect();
    let snap = sqlx::query("SELECT seq, data FROM room_snapshots WHERE room = ?")
        .bind(room)
        .fetch_optional(store.pool())
        .await
        .expect("query")
        .map(|r| (r.get("seq"), r.get("data")));
    store.close().await;
    (log, snap)
}

#[tokio::test]
async fn a_corrupt_row_fails_that_room_loudly_and_is_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(test_config(dir.path())).await;
    for room in ["damaged", "healthy"] {
        let mut c = TestClient::connect(&server.url(room)).await;
        c.synced().await;
        c.add_shape(&format!("{room}-shape"), ShapeKind::Rect).await;
        let mut w = TestClient::connect(&server.url(room)).await;
        w.until("durable", |s| common::sync_doc_contents(s).len() == 1).await;
    }
    server.stop().await;

    // Damage the room on disk: a log entry after the snapshot that is not a Yjs update.
    {
        let store = SqliteStore::open(dir.path(), Durability::Full).await.expect("opens");
        sqlx::query(
            "INSERT INTO room_updates (room, seq, data) VALUES ('damaged', 999, x'ff00ff00')",
        )
        .execute(store.pool())
        .await
        .expect("insert");
        store.close().await;
    }
    let before = rows(dir.path(), "damaged").await;
    assert!(before.1.is_some(), "the clean shutdown wrote a snapshot");

    let server = TestServer::start_with(test_config(dir.path())).await;
    for _ in 0..2 {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(server.url("damaged")).await.expect("upgrade");
        assert_eq!(expect_close(&mut ws).await, Some(1011), "a room that cannot load is refused");
    }
    // Other rooms are unaffected.
    let mut ok = TestClient::connect(&server.url("healthy")).await;
    ok.synced().await;
    assert_eq!(ok.shape_ids(), vec!["healthy-shape"]);
    ok.close().await;
    server.stop().await;

    // Nothing was written over the damaged room: same snapshot, same log (bad row included).
    assert_eq!(rows(dir.path(), "damaged").await, before);
}

/// A big snapshot may be served before it is decoded, but only when its checksum matches: a
/// damaged one is decoded first, fails, and no joiner ever receives its bytes.
#[tokio::test]
async fn a_damaged_big_snapshot_is_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(test_config(dir.path())).await;
    let mut c = TestClient::connect(&server.url("big")).await;
    c.synced().await;
    c.add_many_shapes(5000).await;
    let mut w = TestClient::connect(&server.url("big")).await;
    w.until("durable", |s| common::sync_doc_contents(s).len() == 5000).await;
    c.close().await;
    w.close().await;
    server.stop().await;

    // Damage the snapshot's bytes in place (same length, checksum left as written).
    let (_, snapshot) = rows(dir.path(), "big").await;
    let mut data = snapshot.expect("the clean shutdown wrote a snapshot").1;
    assert!(data.len() > 256 << 10, "big enough to be served before decoding");
    let middle = data.len() / 2;
    for b in &mut data[middle..middle + 64] {
        *b = 0xff;
    }
    {
        let store = SqliteStore::open(dir.path(), Durability::Full).await.expect("opens");
        sqlx::query("UPDATE room_snapshots SET data = ? WHERE room = 'big'")
            .bind(&data)
            .execute(store.pool())
            .await
            .expect("update");
        store.close().await;
    }

    let server = TestServer::start_with(test_config(dir.path())).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("big")).await.expect("upgrade");
    use futures_util::SinkExt;
    // A fresh client's sync step 1: it must get a refusal, never the damaged bytes.
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(vec![0u8, 0, 1, 0].into()))
        .await
        .expect("send");
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let code = loop {
        match tokio::time::timeout(common::DEADLINE, ws.next()).await.expect("server answers") {
            Some(Ok(Message::Binary(frame))) => {
                assert!(!frame.starts_with(&[0, 1]), "a sync answer was sent from a damaged room");
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    assert_eq!(code, Some(1011), "a room that cannot load is refused");
    server.stop().await;
}

#[tokio::test]
async fn bad_cli_input_gets_a_one_line_message_naming_the_fix() {
    let bin = env!("CARGO_BIN_EXE_huddle-server");
    let out =
        std::process::Command::new(bin).args(["--addr", "not-an-address"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().next().is_some_and(|l| l.contains("--addr")), "{err}");

    let file = tempfile::NamedTempFile::new().expect("file");
    let out = std::process::Command::new(bin)
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(file.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("error:")).expect("an error line");
    assert!(line.contains("--data-dir"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(bin)
        .args(["--addr", &addr, "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().any(|l| l.starts_with("error:") && l.contains("--addr")), "{err}");
}

#[tokio::test]
async fn health_and_metrics_endpoints_answer() {
    let server = TestServer::start().await;
    let mut c = TestClient::connect(&server.url("m")).await;
    c.synced().await;
    let get = |path: &str| {
        let addr = server.addr;
        let path = path.to_owned();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
            let mut body = String::new();
            s.read_to_string(&mut body).await.expect("read");
            body
        }
    };
    let health = get("/healthz").await;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains(r#"{"status":"ok"}"#),
        "{health}"
    );
    let metrics = get("/metrics").await;
    assert!(metrics.contains("huddle_connections 1"), "{metrics}");
    assert!(metrics.contains("huddle_rooms_loaded 1"), "{metrics}");
    server.stop().await;
}

/// A journal file (left by a killed server) with a damaged record in the middle: the records
/// before it are replayed, and the file is kept aside rather than deleted, since the records
/// after the damage may have been relayed. A write cut short at the end is not damage.
#[tokio::test]
async fn a_damaged_journal_is_kept_aside_and_the_records_before_the_damage_are_replayed() {
    use huddle_protocol::RoomName;
    use huddle_server::store::journal;
    use huddle_server::store::{LogEntry, Seq};

    let entry = |room: &str, seq: u64| LogEntry {
        room: RoomName::parse(room).expect("room"),
        seq: Seq(seq),
        update: bytes::Bytes::from_static(&[0, 0]),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // File 1: three records, the second damaged. File 2: one whole record and a torn one.
    let mut damaged = Vec::new();
    journal::encode(&[entry("hurt", 1)], &mut damaged);
    let second_starts = damaged.len();
    journal::encode(&[entry("hurt", 2), entry("hurt", 3)], &mut damaged);
    damaged[second_starts + 9] ^= 0xff;
    std::fs::write(journal::path(dir.path(), 1), &damaged).expect("write");
    let mut torn = Vec::new();
    journal::encode(&[entry("fine", 1), entry("fine", 2)], &mut torn);
    torn.truncate(torn.len() - 3);
    std::fs::write(journal::path(dir.path(), 2), &torn).expect("write");

    let store = SqliteStore::open(dir.path(), Durability::Process).await.expect("opens");
    let seqs = |room: &str| {
        let store = &store;
        let room = RoomName::parse(room).expect("room");
        async move {
            store.load(&room).await.expect("loads").log.iter().map(|(s, _)| s.0).collect::<Vec<_>>()
        }
    };
    assert_eq!(seqs("hurt").await, vec![1]);
    assert_eq!(seqs("fine").await, vec![1]);
    store.close().await;
    let mut aside = journal::path(dir.path(), 1).into_os_string();
    aside.push(".damaged");
    assert_eq!(std::fs::read(&aside).expect("kept aside"), damaged, "kept as it was");
    assert!(!journal::path(dir.path(), 1).exists(), "not replayed again");
    assert!(!journal::path(dir.path(), 2).exists(), "the torn one was replayed and deleted");
}

/// A `room_snapshots` row: seq, data, checksum, state vector and its checksum.
type SnapshotRow = (i64, Vec<u8>, Option<i64>, Option<Vec<u8>>, Option<i64>);

/// A database written before snapshots moved to an ordinary (rowid) table (migration 0004)
/// keeps its rooms: the snapshot is carried over, checksums and state vector too, and served
/// as before.
#[tokio::test]
async fn a_database_from_before_the_rowid_snapshots_keeps_its_rooms() {
    use huddle_protocol::schema::{Board, Shape};
    use huddle_protocol::yrs::{Doc, ReadTxn, Transact};
    use huddle_server::store::sqlite::DB_FILE;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    let dir = tempfile::tempdir().expect("tempdir");
    // The schema as the first three migrations left it.
    let old = tempfile::tempdir().expect("tempdir");
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for name in ["0001_rooms.sql", "0002_snapshot_checksum.sql", "0003_snapshot_state_vector.sql"] {
        std::fs::copy(migrations.join(name), old.path().join(name)).expect("copies");
    }
    let options =
        SqliteConnectOptions::new().filename(dir.path().join(DB_FILE)).create_if_missing(true);
    let pool = SqlitePoolOptions::new().connect_with(options).await.expect("opens");
    sqlx::migrate::Migrator::new(old.path())
        .await
        .expect("reads the migrations")
        .run(&pool)
        .await
        .expect("old schema");
    let doc = Doc::new();
    let board = Board::new(&doc);
    let snapshot = {
        let mut txn = doc.transact_mut();
        board.put_shape(&mut txn, &Shape::new("from-before", ShapeKind::Rect));
        txn.encode_update_v1()
    };
    let state_vector =
        huddle_protocol::yrs::updates::encoder::Encode::encode_v1(&doc.transact().state_vector());
    let row: SnapshotRow = (
        1,
        snapshot.clone(),
        Some(i64::from(crc32fast::hash(&snapshot))),
        Some(state_vector.clone()),
        Some(i64::from(crc32fast::hash(&state_vector))),
    );
    sqlx::query(
        "INSERT INTO room_snapshots \
         (room, seq, data, checksum, state_vector, state_vector_checksum) \
         VALUES ('kept', ?, ?, ?, ?, ?)",
    )
    .bind(row.0)
    .bind(&row.1)
    .bind(row.2)
    .bind(&row.3)
    .bind(row.4)
    .execute(&pool)
    .await
    .expect("insert");
    pool.close().await;

    // Carried over whole (read before a server runs: its compaction may rewrite the row).
    let store = SqliteStore::open(dir.path(), Durability::Full).await.expect("migrates");
    let carried: SnapshotRow = sqlx::query_as(
        "SELECT seq, data, checksum, state_vector, state_vector_checksum \
         FROM room_snapshots WHERE room = 'kept'",
    )
    .fetch_one(store.pool())
    .await
    .expect("the row is there");
    assert!(carried == row, "carried over as it was");
    store.close().await;

    let server = TestServer::start_with(test_config(dir.path())).await;
    let mut c = TestClient::connect(&server.url("kept")).await;
    c.synced().await;
    assert_eq!(c.shape_ids(), vec!["from-before".to_owned()]);
    server.stop().await;
    let store = SqliteStore::open(dir.path(), Durability::Full).await.expect("opens");
    let table: String =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'room_snapshots'")
            .fetch_one(store.pool())
            .await
            .expect("query");
    assert!(!table.to_uppercase().contains("WITHOUT ROWID"), "{table}");
    store.close().await;
}

/// A database upgraded by a newer Huddle is refused with a message saying so, and left as it is.
#[tokio::test]
async fn a_database_from_a_newer_huddle_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), Durability::Full).await.expect("opens");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', 1, x'00', 0)",
    )
    .execute(store.pool())
    .await
    .expect("insert");
    store.close().await;
    let error = SqliteStore::open(dir.path(), Durability::Full).await.expect_err("refused");
    let message = error.to_string();
    assert!(message.contains("newer Huddle") && message.contains("9999"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}
