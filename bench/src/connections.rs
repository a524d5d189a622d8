//! *connections*: C idle sockets → server memory per socket and CPU per connect.
//!
//! Each socket connects, completes the y-websocket handshake (so the server has really admitted
//! it into its room) and then idles, answering pings. Rooms are opened with one socket each
//! before the baseline is read, so the figures are the sockets' own cost, not the rooms'.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use futures_util::StreamExt;
use huddle_protocol::yrs::Doc;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::client;
use crate::stats::{Latencies, Report, bytes, us};
use crate::target::Target;

/// Parameters of a connections run.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Idle sockets to hold.
    #[arg(long, default_value_t = 2000)]
    pub count: usize,
    /// Rooms they are spread over.
    #[arg(long, default_value_t = 1)]
    pub conn_rooms: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub parallel: usize,
    /// Seconds to hold the sockets open (idle) before reading memory.
    #[arg(long, default_value_t = 3.0)]
    pub hold_secs: f64,
}

/// Runs the scenario against `target`.
pub async fn run(target: &Target, o: &Opts) -> Result<Report> {
    ensure!(o.count > 0 && o.conn_rooms > 0, "need at least one socket and one room");
    let limit = crate::system::raise_fd_limit();
    let salt = crate::run_salt();
    let names: Vec<String> = (0..o.conn_rooms).map(|r| format!("idle-{salt}-{r}")).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let holders = Arc::new(AtomicUsize::new(0));

    // Open each room once so its load is not counted against the sockets.
    let mut openers = Vec::new();
    for name in &names {
        target.prepare(name).await?;
        let mut ws = client::connect(&target.room_url(name), None).await?;
        client::handshake(&mut ws, &Doc::new(), Duration::from_secs(60)).await?;
        openers.push(hold(ws, stop_rx.clone(), Arc::clone(&holders)));
    }
    // Let the server's allocator settle from startup before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = target.rss();
    let cpu0 = target.cpu();
    let t0 = Instant::now();

    let gate = Arc::new(Semaphore::new(o.parallel));
    let mut tasks = Vec::with_capacity(o.count);
    for i in 0..o.count {
        let permit = Arc::clone(&gate).acquire_owned().await?;
        let url = target.room_url(&names[i % names.len()]);
        let stop = stop_rx.clone();
        let holders = Arc::clone(&holders);
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = async {
                let mut ws = client::connect(&url, Some(client::source_ip(i))).await?;
                client::handshake(&mut ws, &Doc::new(), Duration::from_secs(60)).await?;
                Ok::<_, anyhow::Error>(ws)
            }
            .await;
            drop(permit);
            let took = started.elapsed();
            result.map(|ws| (hold(ws, stop, holders), took))
        }));
    }
    let mut failures = Vec::new();
    let mut connect_times = Latencies::default();
    let mut held = Vec::with_capacity(o.count);
    for t in tasks {
        match t.await? {
            Ok((h, took)) => {
                connect_times.push(took);
                held.push(h);
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let connect_wall = t0.elapsed();
    let cpu = target.cpu().zip(cpu0).map(|(a, b)| a - b);
    tokio::time::sleep(Duration::from_secs_f64(o.hold_secs)).await;
    let alive = holders.load(Ordering::Acquire).saturating_sub(openers.len());
    let rss1 = target.rss();
    let ok = held.len();

    let mut report = Report::new(format!("connections {}", o.count), &target.name);
    report.row("sockets connected and synced", format!("{ok} of {}", o.count));
    report.row(format!("still open after {} s idle", o.hold_secs), alive.to_string());
    report.row("handshake time p50 / p99 / max", connect_times.summary());
    report.row("connect rate", format!("{:.0} /s", ok as f64 / connect_wall.as_secs_f64()));
    if let (Some(a), Some(b)) = (rss0, rss1) {
        report
            .row("server RSS before / after", format!("{} / {}", bytes(a as f64), bytes(b as f64)));
        report.row("server RSS per socket", bytes((b as f64 - a as f64) / ok.max(1) as f64));
    }
    if let Some(cpu) = cpu {
        report.row("server CPU per connect", us(crate::system::micros_per(cpu, ok as u64)));
    }
    report.row("tool open-files limit", limit.to_string());
    if !failures.is_empty() {
        report.warn(format!("{} sockets failed; first: {}", failures.len(), failures[0]));
    }
    if alive < ok {
        report.warn(format!("{} sockets were closed by the server while idle", ok - alive));
    }
    stop_tx.send(true).ok();
    for h in held.into_iter().chain(openers) {
        let _ = h.await;
    }
    Ok(report)
}

/// Keeps a socket open and idle (reading, so pings are answered) until `stop`.
fn hold(
    mut ws: client::Ws,
    mut stop: watch::Receiver<bool>,
    alive: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    alive.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                m = ws.next() => if !matches!(m, Some(Ok(_))) { break },
                _ = stop.wait_for(|&s| s) => break,
            }
        }
        alive.fetch_sub(1, Ordering::AcqRel);
        // Dropped without a close handshake: closing 50k sockets politely is not what we measure.
        drop(ws);
    })
}
