//! *bigdoc* and *edit-into-big*: rooms of many shapes.
//!
//! - bigdoc: a fresh client syncing a K-shape room — time to the sync answer and server CPU
//!   per sync, warm (room in memory), warm right after an edit (so a server that keeps the
//!   encoded room between edits must encode it again), by a returning client whose copy holds
//!   only the first half of the room (it is sent what it lacks), and cold (server restarted,
//!   room loaded from storage).
//! - edit-into-big: one small edit at a time into rooms of growing size, each waited for at a
//!   second client — server CPU per edit, which should not grow with the document.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use huddle_protocol::schema::Board;
use huddle_protocol::wire;
use huddle_protocol::yrs::{Doc, ReadTxn, StateVector, Transact};
use tokio::time::Instant;

use crate::client;
use crate::docgen::{self, ShapeForm};
use crate::stats::{Latencies, Report, bytes, us};
use crate::target::{Server, Target};

/// Parameters of a bigdoc run.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Shapes in the room.
    #[arg(long, default_value_t = 20_000)]
    pub shapes: usize,
    /// Warm syncs to average over.
    #[arg(long, default_value_t = 50)]
    pub syncs: usize,
    /// Warm syncs each right after a small edit into the room (seen relayed to another
    /// client first), as when people open a board others are drawing on.
    #[arg(long, default_value_t = 20)]
    pub edited_syncs: usize,
    /// Warm syncs by a returning client whose saved copy holds the first half of the room's
    /// shapes (as a browser's offline copy of a board that has grown since): the server sends
    /// it what it lacks, half the room.
    #[arg(long, default_value_t = 10)]
    pub stale_syncs: usize,
    /// Cold syncs (each after a server restart); only when the tool started the server.
    #[arg(long, default_value_t = 3)]
    pub cold: usize,
}

/// Parameters of an edit-into-big run.
#[derive(Debug, Clone, clap::Args)]
pub struct EditOpts {
    /// Room sizes, in shapes.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 20_000, 100_000])]
    pub sizes: Vec<usize>,
    /// Most edits per size (fewer if `edit_secs` runs out first; at least 10).
    #[arg(long, default_value_t = 100_000)]
    pub edits: usize,
    /// Time per size, in seconds: long enough that the server's CPU time (counted in 10 ms
    /// ticks) is measured to a percent or two.
    #[arg(long, default_value_t = 8.0)]
    pub edit_secs: f64,
}

const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// The client id the rooms are seeded under. Fixed, so that a returning client can rebuild the
/// seeder's first shapes item for item (see [`seeded_copy`]); below 2^32 for y-sweet's yrs.
const SEEDER: u64 = 0x5eed;

/// Puts `shapes` shapes into `room`, 5,000 per update as a board grows (one update of a
/// 100k-shape room would exceed servers' message limits), and waits until a fresh client sees
/// them all. Returns the size of the whole document as one update.
pub async fn seed(target: &Target, room: &str, shapes: usize, form: ShapeForm) -> Result<usize> {
    target.prepare(room).await?;
    let url = target.room_url(room);
    let mut writer = client::connect(&url, None).await?;
    client::handshake(&mut writer, &Doc::new(), SYNC_TIMEOUT).await?;
    let mut updates = Vec::new();
    let doc = seeded_copy(shapes, form, |u| updates.push(u));
    for update in updates {
        client::send(&mut writer, wire::update(update)).await?;
    }
    let size = doc.transact().encode_state_as_update_v1(&StateVector::default()).len();
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let (count, _) = fresh_sync(&url, true).await?;
        if count == shapes {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{room}: a fresh client sees {count} of {shapes} shapes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = writer.close(None).await;
    Ok(size)
}

/// Shapes per seeding update.
const SEED_CHUNK: usize = 5_000;

/// The seeder's document after its first `shapes` shapes: the same items, with the same ids,
/// as in a room seeded with at least that many. `each` gets every seeding update.
fn seeded_copy(shapes: usize, form: ShapeForm, mut each: impl FnMut(Vec<u8>)) -> Doc {
    let doc = Doc::with_client_id(SEEDER);
    let mut done = 0;
    while done < shapes {
        let n = SEED_CHUNK.min(shapes - done);
        let before = doc.transact().state_vector();
        docgen::mixed_shapes(&doc, done, n, form);
        each(doc.transact().encode_state_as_update_v1(&before));
        done += n;
    }
    doc
}

/// Connects a fresh client and completes its sync. Returns the shapes it got (only counted
/// when `count` is set: decoding a big room costs the tool time) and the bytes received.
async fn fresh_sync(url: &str, count: bool) -> Result<(usize, usize)> {
    let mut ws = client::connect(url, None).await?;
    let doc = Doc::new();
    // A stock y-websocket client sends its presence as soon as the socket opens, beside its
    // sync step 1: so does this one, so a server that does work for presence (a lazily loaded
    // room that builds its document first, say) is measured as stock clients would find it.
    let me = doc.client_id();
    let presence = huddle_protocol::yrs::sync::AwarenessUpdate {
        clients: std::collections::HashMap::from([(
            me,
            huddle_protocol::yrs::sync::awareness::AwarenessUpdateEntry {
                clock: 1,
                json: format!(
                    r##"{{"user":{{"id":"bench-{me}","name":"bench","color":"#1971c2"}}}}"##
                )
                .into(),
            },
        )]),
    };
    client::send(&mut ws, wire::awareness(presence)).await?;
    let updates = client::handshake(&mut ws, &doc, SYNC_TIMEOUT).await?;
    let received = updates.iter().map(Vec::len).sum();
    let _ = ws.close(None).await;
    let shapes = if count {
        let doc = Doc::new();
        let board = Board::new(&doc);
        client::apply_all(&doc, &updates)?;
        board.shape_count(&doc.transact()) as usize
    } else {
        0
    };
    Ok((shapes, received))
}

/// Runs bigdoc against `target`; with `server`, also the cold syncs.
pub async fn run(
    target: &Target,
    server: Option<&mut Server>,
    o: &Opts,
    form: ShapeForm,
) -> Result<Report> {
    let room = format!("big-{}", crate::run_salt());
    let size = seed(target, &room, o.shapes, form).await?;
    let url = target.room_url(&room);
    let mut report = Report::new(format!("bigdoc {} shapes", o.shapes), &target.name);
    report.row("document size", bytes(size as f64));

    // Warm: the room stays loaded between syncs (the seeding probes just used it).
    let mut times = Latencies::default();
    let cpu0 = target.cpu();
    let mut received = 0;
    for _ in 0..o.syncs {
        let t = Instant::now();
        let (_, n) = fresh_sync(&url, false).await?;
        times.push(t.elapsed());
        received = n;
    }
    let cpu = target.cpu().zip(cpu0).map(|(a, b)| a - b);
    report.row("sync answer size", bytes(received as f64));
    report.row("warm sync time p50 / p99 / max", times.summary());
    if let Some(cpu) = cpu {
        report.row("server CPU per warm sync", us(crate::system::micros_per(cpu, o.syncs as u64)));
    }

    if o.edited_syncs > 0 {
        synced_after_edits(target, &url, o, &mut report).await?;
    }

    if o.stale_syncs > 0 {
        stale_syncs(target, &url, o, form, &mut report).await?;
    }

    if let Some(server) = server
        && o.cold > 0
    {
        let mut times = Latencies::default();
        let mut cpus = Latencies::default();
        for _ in 0..o.cold {
            server.restart().await?;
            let target = server.target();
            let cpu0 = target.cpu();
            let t = Instant::now();
            fresh_sync(&url, false).await.context("cold sync")?;
            times.push(t.elapsed());
            if let Some(cpu) = target.cpu().zip(cpu0).map(|(a, b)| a - b) {
                cpus.push(cpu);
            }
        }
        // Check once that what a cold load serves is the whole room.
        let (count, _) = fresh_sync(&url, true).await?;
        report.row(
            "cold sync time p50 / max",
            format!("{:.1} / {:.1} ms", times.quantile_ms(0.5), times.quantile_ms(1.0)),
        );
        if !cpus.is_empty() {
            report.row(
                "server CPU per cold sync (median)",
                format!("{:.1} ms", cpus.quantile_ms(0.5)),
            );
        }
        if count != o.shapes {
            report.warn(format!("after a restart the room has {count} of {} shapes", o.shapes));
        }
    }
    Ok(report)
}

/// Waits until `observer` receives an update (the edit just sent, relayed: so the server has
/// applied it).
async fn relayed(observer: &mut client::Ws) -> Result<()> {
    loop {
        let incoming = tokio::time::timeout(SYNC_TIMEOUT, client::next(observer))
            .await
            .context("edit not relayed")??
            .context("observer socket closed")?;
        if !incoming.updates.is_empty() {
            return Ok(());
        }
    }
}

/// The warm syncs right after an edit: an editor changes one shape, waits until an observer
/// has it relayed (so the server applied it), then a fresh client syncs.
async fn synced_after_edits(
    target: &Target,
    url: &str,
    o: &Opts,
    report: &mut Report,
) -> Result<()> {
    let doc = Doc::new();
    let board = Board::new(&doc);
    let mut editor = client::connect(url, None).await?;
    client::apply_all(&doc, &client::handshake(&mut editor, &doc, SYNC_TIMEOUT).await?)?;
    let mut observer = client::connect(url, None).await?;
    client::handshake(&mut observer, &Doc::new(), SYNC_TIMEOUT).await?;
    let mut times = Latencies::default();
    let cpu0 = target.cpu();
    for i in 0..o.edited_syncs {
        let update = {
            let mut txn = doc.transact_mut();
            let id = format!("s{}", (i * 7919) % o.shapes.max(1));
            board.set_field(&mut txn, &id, "y", i as f64 * 5.0);
            txn.encode_update_v1()
        };
        client::send(&mut editor, wire::update(update)).await?;
        relayed(&mut observer).await?;
        let t = Instant::now();
        fresh_sync(url, false).await?;
        times.push(t.elapsed());
    }
    let cpu = target.cpu().zip(cpu0).map(|(a, b)| a - b);
    report.row("sync right after an edit p50 / p99 / max", times.summary());
    if let Some(cpu) = cpu {
        report.row(
            "server CPU per sync right after an edit",
            us(crate::system::micros_per(cpu, o.edited_syncs as u64)),
        );
    }
    let _ = editor.close(None).await;
    let _ = observer.close(None).await;
    Ok(())
}

/// The syncs of a returning client that holds the first half of the room (a saved copy from
/// when the board was half its size): the server must send it the other half.
async fn stale_syncs(
    target: &Target,
    url: &str,
    o: &Opts,
    form: ShapeForm,
    report: &mut Report,
) -> Result<()> {
    let copy = seeded_copy(o.shapes / 2, form, drop);
    let saved = copy.transact().encode_state_as_update_v1(&StateVector::default());
    let mut times = Latencies::default();
    let mut received = 0;
    let mut last = Vec::new();
    let cpu0 = target.cpu();
    for _ in 0..o.stale_syncs {
        let doc = Doc::new();
        client::apply_all(&doc, std::slice::from_ref(&saved))?;
        let t = Instant::now();
        let mut ws = client::connect(url, None).await?;
        last = client::handshake(&mut ws, &doc, SYNC_TIMEOUT).await?;
        times.push(t.elapsed());
        received = last.iter().map(Vec::len).sum();
        let _ = ws.close(None).await;
    }
    let cpu = target.cpu().zip(cpu0).map(|(a, b)| a - b);
    report.row("sync of a client holding half the room p50 / p99 / max", times.summary());
    report.row("its answer size", bytes(received as f64));
    if let Some(cpu) = cpu {
        report.row(
            "server CPU per sync of a client holding half",
            us(crate::system::micros_per(cpu, o.stale_syncs as u64)),
        );
    }
    // Check once, outside the timing, that it ends up with the whole room.
    client::apply_all(&copy, &last)?;
    let count = Board::new(&copy).shape_count(&copy.transact()) as usize;
    if count != o.shapes {
        report.warn(format!(
            "a client holding half the room has {count} of {} shapes after its sync",
            o.shapes
        ));
    }
    Ok(())
}

/// Runs edit-into-big against `target`.
pub async fn run_edits(target: &Target, o: &EditOpts, form: ShapeForm) -> Result<Report> {
    let mut report = Report::new("edit-into-big", &target.name);
    for &shapes in &o.sizes {
        let room = format!("edit-{}-{shapes}", crate::run_salt());
        seed(target, &room, shapes, form).await?;
        let url = target.room_url(&room);
        let doc = Doc::new();
        let board = Board::new(&doc);
        let mut editor = client::connect(&url, None).await?;
        let updates = client::handshake(&mut editor, &doc, SYNC_TIMEOUT).await?;
        client::apply_all(&doc, &updates)?;
        let mut observer = client::connect(&url, None).await?;
        client::handshake(&mut observer, &Doc::new(), SYNC_TIMEOUT).await?;

        let mut times = Latencies::default();
        let edit = |i: usize| {
            let mut txn = doc.transact_mut();
            let id = format!("s{}", (i * 7919) % shapes);
            board.set_field(&mut txn, &id, "x", (i % 5000) as f64 * 3.0);
            txn.encode_update_v1()
        };
        // Warm up (first edits may allocate), then measure.
        let mut i = 0;
        let budget = Duration::from_secs_f64(o.edit_secs);
        let mut cpu0 = None;
        let mut t0 = Instant::now();
        let mut measured = 0usize;
        loop {
            if i == 5 {
                cpu0 = target.cpu();
                t0 = Instant::now();
            }
            if i >= 5 && (measured >= o.edits || (measured >= 10 && t0.elapsed() > budget)) {
                break;
            }
            let update = edit(i);
            let sent = Instant::now();
            client::send(&mut editor, wire::update(update)).await?;
            relayed(&mut observer).await?;
            if i >= 5 {
                times.push(sent.elapsed());
                measured += 1;
            }
            i += 1;
        }
        let cpu = target.cpu().zip(cpu0).map(|(a, b)| a - b);
        let per = cpu.map_or(f64::NAN, |c| crate::system::micros_per(c, measured as u64));
        report.row(
            format!("{shapes} shapes: CPU per edit"),
            format!("{} ({measured} edits, relay p50 / p99 / max {})", us(per), times.summary()),
        );
        let _ = editor.close(None).await;
        let _ = observer.close(None).await;
    }
    Ok(report)
}
