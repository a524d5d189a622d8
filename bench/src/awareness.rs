//! *awareness*: N live cursors at F Hz in one room, then one client vanishing.
//!
//! Each client publishes its cursor as an awareness state; receivers identify each state by
//! (client id, awareness clock). After the timed phase one client's socket is dropped without a
//! close frame (the TCP connection just ends), and we time how long until every other client
//! has seen its state removed. With `--frozen`, another client then stops reading and writing
//! with its socket still open, and we time how long until the server drops it (its ping
//! timeout) and everyone sees it gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use huddle_protocol::wire;
use huddle_protocol::yrs::Doc;
use huddle_protocol::yrs::sync::AwarenessUpdate;
use huddle_protocol::yrs::sync::awareness::AwarenessUpdateEntry;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::client;
use crate::stats::{Latencies, Report, us};
use crate::target::Target;

/// Parameters of an awareness run.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Clients with a cursor.
    #[arg(long, default_value_t = 50)]
    pub cursors: usize,
    /// Cursor updates per second per client.
    #[arg(long, default_value_t = 10.0)]
    pub cursor_hz: f64,
    /// Seconds of cursor movement.
    #[arg(long, default_value_t = 10.0)]
    pub cursor_secs: f64,
    /// Also time a frozen client (silent, socket open) being dropped; waits for the server's
    /// ping timeout (up to 120 s).
    #[arg(long)]
    pub frozen: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Wait,
    Run,
    Idle,
    /// The client with this index drops its socket without a close frame.
    Destroy(usize),
    /// The client with this index stops reading and writing.
    Freeze(usize),
    Done,
}

struct Shared {
    ids: Vec<u64>,
    index: HashMap<u64, usize>,
    sent: Vec<Mutex<HashMap<u32, Instant>>>,
}

struct Outcome {
    delivered: u64,
    latencies: Latencies,
}

/// Runs the scenario against `target`.
pub async fn run(target: &Target, o: &Opts) -> Result<Report> {
    ensure!(o.cursors >= 3, "need at least 3 cursors");
    let salt = crate::run_salt();
    let room = format!("cursors-{salt}");
    target.prepare(&room).await?;
    let ids: Vec<u64> = (0..o.cursors).map(|i| salt * 100_000 + 50_000 + i as u64).collect();
    let shared = Arc::new(Shared {
        index: ids.iter().enumerate().map(|(i, &c)| (c, i)).collect(),
        sent: ids.iter().map(|_| Mutex::new(HashMap::new())).collect(),
        ids,
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Wait);
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(o.cursors);
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = Vec::new();
    for me in 0..o.cursors {
        let url = target.room_url(&room);
        let (shared, phase, ready, gone, o) =
            (Arc::clone(&shared), phase_rx.clone(), ready_tx.clone(), gone_tx.clone(), o.clone());
        tasks.push(tokio::spawn(async move {
            cursor_task(url, shared, me, o, phase, ready, gone).await
        }));
    }
    drop(ready_tx);
    drop(gone_tx);
    for _ in 0..o.cursors {
        let joined = tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await;
        if !matches!(joined, Ok(Some(()))) {
            return Err(crate::first_failure(tasks)
                .await
                .context("cursor clients did not all join"));
        }
    }
    let cpu0 = target.cpu();
    let writes0 = target.socket_writes().await;
    let own0 = crate::system::own_cpu()?;
    let t0 = Instant::now();
    phase_tx.send(Phase::Run)?;
    tokio::time::sleep(Duration::from_secs_f64(o.cursor_secs)).await;
    phase_tx.send(Phase::Idle)?;
    // Let the last updates land before reading CPU.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wall = t0.elapsed();
    let cpu = target.cpu().zip(cpu0).map(|(a, b)| a - b);
    let writes = target.socket_writes().await.zip(writes0).map(|(a, b)| a.saturating_sub(b));
    let own = crate::system::own_cpu()? - own0;

    let mut report = Report::new(
        format!("awareness {} cursors @ {} Hz, {} s", o.cursors, o.cursor_hz, o.cursor_secs),
        &target.name,
    );

    // A socket destroyed without a close frame.
    let destroyed_at = Instant::now();
    phase_tx.send(Phase::Destroy(0))?;
    let gone =
        wait_gone(&mut gone_rx, 0, o.cursors - 1, destroyed_at, Duration::from_secs(10)).await;
    report.row(
        "destroyed socket's cursor gone for all",
        gone.map_or_else(
            |n| format!("NOT within 10 s ({n} of {} saw it)", o.cursors - 1),
            |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0),
        ),
    );
    if o.frozen {
        let frozen_at = Instant::now();
        phase_tx.send(Phase::Freeze(1))?;
        let gone =
            wait_gone(&mut gone_rx, 1, o.cursors - 2, frozen_at, Duration::from_secs(120)).await;
        report.row(
            "frozen client's cursor gone for all",
            gone.map_or_else(
                |n| format!("NOT within 120 s ({n} saw it)"),
                |d| format!("{:.1} s", d.as_secs_f64()),
            ),
        );
    }
    phase_tx.send(Phase::Done)?;

    let mut delivered = 0;
    let mut latencies = Latencies::default();
    for t in tasks {
        match t.await? {
            Ok(out) => {
                delivered += out.delivered;
                latencies.extend(out.latencies);
            }
            Err(e) => report.warn(format!("cursor client failed: {e:#}")),
        }
    }
    report.row("cursor updates delivered", delivered.to_string());
    report.row("latency p50 / p99 / max", latencies.summary());
    if let Some(cpu) = cpu {
        report
            .row("server CPU per delivered cursor", us(crate::system::micros_per(cpu, delivered)));
    }
    if let Some(writes) = writes {
        report.row(
            "server socket writes per delivered cursor",
            format!("{:.2}", writes as f64 / delivered.max(1) as f64),
        );
    }
    report.check_own_cpu(own, wall);
    Ok(report)
}

/// Waits until `expected` clients reported `victim` gone; returns how long that took after
/// `since`, or how many saw it by the deadline.
async fn wait_gone(
    rx: &mut mpsc::UnboundedReceiver<(usize, Instant)>,
    victim: usize,
    expected: usize,
    since: Instant,
    timeout: Duration,
) -> Result<Duration, usize> {
    let deadline = since + timeout;
    let mut seen = 0;
    let mut last = since;
    while seen < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((v, at))) if v == victim => {
                seen += 1;
                last = last.max(at);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Err(seen),
        }
    }
    Ok(last - since)
}

async fn cursor_task(
    url: String,
    shared: Arc<Shared>,
    me: usize,
    o: Opts,
    mut phase: watch::Receiver<Phase>,
    ready: mpsc::Sender<()>,
    gone: mpsc::UnboundedSender<(usize, Instant)>,
) -> Result<Outcome> {
    let my_id = shared.ids[me];
    let mut ws = client::connect(&url, Some(client::source_ip(me))).await?;
    client::handshake(&mut ws, &Doc::new(), Duration::from_secs(60)).await?;
    ready.send(()).await?;
    let period = Duration::from_secs_f64(1.0 / o.cursor_hz);
    let mut tick = tokio::time::interval_at(
        Instant::now() + period.mul_f64(me as f64 / o.cursors as f64),
        period,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock = 0u32;
    let mut last: HashMap<u64, u32> = HashMap::new();
    let mut removed = vec![false; shared.ids.len()];
    let mut out = Outcome { delivered: 0, latencies: Latencies::default() };
    loop {
        let now_phase = *phase.borrow();
        match now_phase {
            Phase::Done => break,
            Phase::Destroy(v) if v == me => {
                // Dropping the stream ends the TCP connection without a WebSocket close.
                drop(ws);
                return Ok(out);
            }
            Phase::Freeze(v) if v == me => {
                // Hold the socket, never read or write again.
                let _ = phase.wait_for(|p| *p == Phase::Done).await;
                drop(ws);
                return Ok(out);
            }
            _ => {}
        }
        let running = now_phase == Phase::Run;
        tokio::select! {
            _ = tick.tick(), if running => {
                clock += 1;
                let x = f64::from(clock % 1000);
                let json = format!(
                    r##"{{"user":{{"id":"bench-{me}","name":"bench {me}","color":"#1971c2"}},"cursor":{{"x":{x},"y":{}}}}}"##,
                    me * 10
                );
                let update = AwarenessUpdate {
                    clients: HashMap::from([(
                        huddle_protocol::yrs::ClientID::new(my_id),
                        AwarenessUpdateEntry { clock, json: json.into() },
                    )]),
                };
                shared.sent[me].lock().insert(clock, Instant::now());
                client::send(&mut ws, wire::awareness(update)).await?;
            }
            incoming = client::next(&mut ws) => {
                let now = Instant::now();
                let Some(incoming) = incoming? else { break };
                for update in incoming.awareness {
                    for (client, entry) in update.clients {
                        let client = client.get();
                        let Some(&s) = shared.index.get(&client) else { continue };
                        if s == me {
                            continue;
                        }
                        if &*entry.json == "null" {
                            if !removed[s] {
                                removed[s] = true;
                                let _ = gone.send((s, now));
                            }
                        } else if last.get(&client).is_none_or(|&l| entry.clock > l) {
                            last.insert(client, entry.clock);
                            if let Some(at) = shared.sent[s].lock().get(&entry.clock) {
                                out.delivered += 1;
                                out.latencies.push(now - *at);
                            }
                        }
                    }
                }
            }
            _ = phase.changed() => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(out)
}
