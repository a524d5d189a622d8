//! *fanout*: R rooms × N clients, each moving its own shape at F Hz.
//!
//! Every client creates one shape, waits until it has seen everyone else's, and then on a
//! signal moves its shape (one `x` write per tick, an ordinary ~30-byte Yjs update). Receivers
//! identify each move by its sender's client id and clock, so the figures hold for any server,
//! whether it relays frames as they came (Huddle, y-sweet) or re-encodes them (the Node
//! reference). Received updates are kept and applied only at the end, to check convergence
//! without spending the tool's CPU during the measurement.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use huddle_protocol::schema::Board;
use huddle_protocol::wire;
use huddle_protocol::yrs::updates::decoder::Decode;
use huddle_protocol::yrs::{ClientID, Doc, ReadTxn, Transact, Update};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::client;
use crate::docgen::{self, ShapeForm};
use crate::stats::{Latencies, Report, us};
use crate::target::Target;

/// Parameters of a fanout run.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Clients per room.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Moves per second per client.
    #[arg(long, default_value_t = 20.0)]
    pub hz: f64,
    /// Seconds of moving.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// In what order the clients' moves are spread over a period.
    #[arg(long, value_enum, default_value = "grouped")]
    pub phases: Phases,
}

/// In what order the clients' moves are spread evenly over one period (`1 / hz`).
///
/// Why it matters: the tool's timers fire on a 1 ms grid, so at 2,000 moves a second (the
/// default 10 × 10 × 20 Hz) two clients' moves leave together each millisecond. Two moves of
/// one room that reach a server together can share each common recipient's write, and a
/// server's cost per delivery depends on how often that happens (docs/benchmarks.md,
/// "Session 23: moves of one room sent together"). Real clients keep no common clock, so
/// neither order is the one true load: `spread` is the one without the sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phases {
    /// A room's clients one after the other (room 0's ten, then room 1's, …): the moves that
    /// leave together are mostly of one room. The default, which every figure before session
    /// 23 was taken with (the stock-Yjs harness orders its clients the same way).
    Grouped,
    /// The rooms interleaved (client 0 of every room, then client 1 of every room, …): the
    /// moves that leave together are of different rooms.
    Spread,
}

impl Phases {
    /// Where client `me` of room `room` moves within the period, as a share of it.
    fn share(self, room: usize, me: usize, rooms: usize, clients: usize) -> f64 {
        let slot = match self {
            Self::Grouped => room * clients + me,
            Self::Spread => me * rooms + room,
        };
        slot as f64 / (rooms * clients) as f64
    }
}

/// What every client of a room can see of every sender.
struct Sender {
    client_id: u64,
    /// When each move (by its clock) was sent.
    sent: Mutex<HashMap<u32, Instant>>,
    /// The sender's clock when the timed phase began: moves have clocks from here on.
    start_clock: AtomicU32,
    /// The sender's clock after its last move; `u32::MAX` while it is still moving.
    final_clock: AtomicU32,
}

struct RoomShared {
    name: String,
    senders: Vec<Sender>,
    /// client id → index in `senders`.
    index: HashMap<u64, usize>,
    /// How each client stores the shape it moves.
    form: ShapeForm,
}

/// What one client saw.
struct Outcome {
    room: usize,
    delivered: u64,
    latencies: Latencies,
    shapes: Vec<huddle_protocol::schema::Shape>,
}

/// Runs the scenario against `target`.
pub async fn run(target: &Target, o: &Opts, form: ShapeForm) -> Result<Report> {
    ensure!(o.clients >= 2 && o.rooms >= 1 && o.hz > 0.0, "need ≥ 1 room, ≥ 2 clients and a rate");
    let salt = crate::run_salt();
    let mut rooms = Vec::new();
    for r in 0..o.rooms {
        let senders: Vec<Sender> = (0..o.clients)
            .map(|c| Sender {
                client_id: salt * 100_000 + (r * o.clients + c) as u64 + 1,
                sent: Mutex::new(HashMap::new()),
                start_clock: AtomicU32::new(0),
                final_clock: AtomicU32::new(u32::MAX),
            })
            .collect();
        let index = senders.iter().enumerate().map(|(i, s)| (s.client_id, i)).collect();
        let room = RoomShared { name: format!("fanout-{salt}-{r}"), senders, index, form };
        target.prepare(&room.name).await?;
        rooms.push(Arc::new(room));
    }

    let total = o.rooms * o.clients;
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(total);
    let (start_tx, start_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for me in 0..o.clients {
            let url = target.room_url(&room.name);
            let room = Arc::clone(room);
            let ready = ready_tx.clone();
            let start = start_rx.clone();
            let o = o.clone();
            let global = r * o.clients + me;
            let phase = o.phases.share(r, me, o.rooms, o.clients);
            tasks.push(tokio::spawn(async move {
                client_task(url, r, room, me, global, phase, o, ready, start).await
            }));
        }
    }
    drop(ready_tx);
    for _ in 0..total {
        let joined = tokio::time::timeout(Duration::from_secs(120), ready_rx.recv()).await;
        if !matches!(joined, Ok(Some(()))) {
            return Err(crate::first_failure(tasks).await.context("clients did not all join"));
        }
    }

    let cpu0 = target.cpu();
    let writes0 = target.socket_writes().await;
    let own0 = crate::system::own_cpu()?;
    let t0 = Instant::now();
    start_tx.send(true)?;
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await? {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let wall = t0.elapsed();
    let cpu = target.cpu().zip(cpu0).map(|(a, b)| a - b);
    let writes = target.socket_writes().await.zip(writes0).map(|(a, b)| a.saturating_sub(b));
    let own = crate::system::own_cpu()? - own0;

    let mut sent = 0u64;
    let mut expected = 0u64;
    for room in &rooms {
        for s in &room.senders {
            let moves = u64::from(
                s.final_clock
                    .load(Ordering::Acquire)
                    .saturating_sub(s.start_clock.load(Ordering::Acquire)),
            );
            sent += moves;
            expected += moves * (o.clients as u64 - 1);
        }
    }
    let delivered: u64 = outcomes.iter().map(|c| c.delivered).sum();
    let mut latencies = Latencies::default();
    let mut by_room: HashMap<usize, Vec<&Outcome>> = HashMap::new();
    for c in &outcomes {
        by_room.entry(c.room).or_default().push(c);
    }
    let converged = (0..o.rooms)
        .filter(|r| {
            by_room.get(r).is_some_and(|cs| {
                cs.len() == o.clients
                    && cs[0].shapes.len() == o.clients
                    && cs.iter().all(|c| c.shapes == cs[0].shapes)
            })
        })
        .count();
    for c in outcomes {
        latencies.extend(c.latencies);
    }

    let mut report = Report::new(
        format!(
            "fanout {}×{} @ {} Hz, {} s{}",
            o.rooms,
            o.clients,
            o.hz,
            o.secs,
            if o.phases == Phases::Spread { ", rooms spread" } else { "" }
        ),
        &target.name,
    );
    report.row("updates sent", sent.to_string());
    report.row("deliveries expected", expected.to_string());
    report.row("deliveries received", delivered.to_string());
    report.row("lost", expected.saturating_sub(delivered).to_string());
    report.row("rooms converged", format!("{converged} of {}", o.rooms));
    report.row("latency p50 / p99 / max", latencies.summary());
    if let Some(cpu) = cpu {
        report.row(
            "server CPU",
            format!(
                "{:.3} s ({:.1}% of one core)",
                cpu.as_secs_f64(),
                100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
            ),
        );
        report
            .row("server CPU per delivered update", us(crate::system::micros_per(cpu, delivered)));
    }
    if let Some(writes) = writes {
        report.row(
            "server socket writes per delivered update",
            format!("{:.2}", writes as f64 / delivered.max(1) as f64),
        );
    }
    report.check_own_cpu(own, wall);
    if expected > delivered {
        report.warn(format!("{} deliveries lost", expected - delivered));
    }
    if converged < o.rooms {
        report.warn(format!("{} rooms did not converge", o.rooms - converged));
    }
    for f in failures.iter().take(3) {
        report.warn(format!("client failed: {f}"));
    }
    Ok(report)
}

/// Client ids (and their lowest clock) of the blocks in an update.
fn authors(update: &[u8]) -> Vec<(u64, u32)> {
    Update::decode_v1(update)
        .map(|u| u.state_vector_lower().iter().map(|(c, &clock)| (c.get(), clock)).collect())
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
async fn client_task(
    url: String,
    r: usize,
    room: Arc<RoomShared>,
    me: usize,
    global: usize,
    phase: f64,
    o: Opts,
    ready: mpsc::Sender<()>,
    mut start: watch::Receiver<bool>,
) -> Result<Outcome> {
    let my_id = room.senders[me].client_id;
    let doc = Doc::with_client_id(my_id);
    let board = Board::new(&doc);
    let mut ws = client::connect(&url, Some(client::source_ip(global))).await?;
    let mut received = client::handshake(&mut ws, &doc, Duration::from_secs(60)).await?;

    // Create our shape and wait until every other client's shape has arrived.
    let shape_id = format!("c{my_id}");
    let before = doc.transact().state_vector();
    docgen::own_shape(&doc, &shape_id, room.form);
    let creation = doc.transact().encode_state_as_update_v1(&before);
    client::send(&mut ws, wire::update(creation)).await?;
    let my_clock = || doc.transact().state_vector().get(&ClientID::new(my_id));
    room.senders[me].start_clock.store(my_clock(), Ordering::Release);
    let mut seen: std::collections::HashSet<u64> =
        received.iter().flat_map(|u| authors(u)).map(|(c, _)| c).collect();
    let others_seen = |seen: &std::collections::HashSet<u64>| {
        room.senders.iter().filter(|s| s.client_id != my_id && seen.contains(&s.client_id)).count()
    };
    while others_seen(&seen) < o.clients - 1 {
        let incoming = client::next(&mut ws).await?.context("socket closed while joining")?;
        for u in incoming.updates {
            seen.extend(authors(&u).into_iter().map(|(c, _)| c));
            received.push(u);
        }
    }
    ready.send(()).await?;
    start.wait_for(|&s| s).await?;

    let period = Duration::from_secs_f64(1.0 / o.hz);
    let mut tick = tokio::time::interval_at(Instant::now() + period.mul_f64(phase), period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop_sending = Instant::now() + Duration::from_secs_f64(o.secs);
    let give_up = stop_sending + Duration::from_secs(15);
    let mut sending = true;
    let mut x = 0.0f64;
    let mut last: HashMap<u64, u32> = HashMap::new();
    let mut delivered = 0u64;
    let mut latencies = Latencies::default();
    loop {
        tokio::select! {
            _ = tick.tick(), if sending => {
                if Instant::now() >= stop_sending {
                    sending = false;
                    room.senders[me].final_clock.store(my_clock(), Ordering::Release);
                } else {
                    x += 1.0;
                    let clock = my_clock();
                    let update = {
                        let mut txn = doc.transact_mut();
                        board.set_field(&mut txn, &shape_id, "x", x);
                        txn.encode_update_v1()
                    };
                    room.senders[me].sent.lock().insert(clock, Instant::now());
                    client::send(&mut ws, wire::update(update)).await?;
                }
            }
            incoming = client::next(&mut ws) => {
                let now = Instant::now();
                let incoming = incoming?.context("server closed the socket")?;
                for u in incoming.updates {
                    for (client, clock) in authors(&u) {
                        let Some(&s) = room.index.get(&client) else { continue };
                        let sender = &room.senders[s];
                        if client == my_id || clock < sender.start_clock.load(Ordering::Acquire) {
                            continue;
                        }
                        if last.get(&client).is_none_or(|&l| clock > l) {
                            last.insert(client, clock);
                            delivered += 1;
                            if let Some(at) = sender.sent.lock().get(&clock) {
                                latencies.push(now - *at);
                            }
                        }
                    }
                    received.push(u);
                }
            }
            // Once we stop sending, look again now and then: the last thing we wait for may be
            // another sender publishing its final clock, which arrives with no frame.
            () = tokio::time::sleep(Duration::from_millis(5)), if !sending => {}
            () = tokio::time::sleep_until(give_up) => break,
        }
        if !sending && everything_arrived(&room, my_id, &last) {
            break;
        }
    }
    let _ = ws.close(None).await;
    client::apply_all(&doc, &received)?;
    let shapes = board.shapes(&doc.transact());
    Ok(Outcome { room: r, delivered, latencies, shapes })
}

/// Whether this client has seen the last move of every other sender (all have stopped).
fn everything_arrived(room: &RoomShared, me: u64, last: &HashMap<u64, u32>) -> bool {
    room.senders.iter().filter(|s| s.client_id != me).all(|s| {
        let end = s.final_clock.load(Ordering::Acquire);
        let start = s.start_clock.load(Ordering::Acquire);
        end != u32::MAX && (end == start || last.get(&s.client_id).is_some_and(|&l| l + 1 >= end))
    })
}

#[cfg(test)]
mod tests {
    use super::Phases;

    /// The room of each slot on the period, in the order the moves leave.
    fn rooms_in_order(phases: Phases, rooms: usize, clients: usize) -> Vec<usize> {
        let mut slots: Vec<(f64, usize)> = (0..rooms)
            .flat_map(|r| (0..clients).map(move |c| (phases.share(r, c, rooms, clients), r)))
            .collect();
        slots.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Every client has a slot of its own, evenly spaced over the period.
        for (i, (share, _)) in slots.iter().enumerate() {
            assert!((share - i as f64 / (rooms * clients) as f64).abs() < 1e-12);
        }
        slots.into_iter().map(|(_, r)| r).collect()
    }

    #[test]
    fn grouped_moves_neighbour_their_room_and_spread_ones_other_rooms() {
        let grouped = rooms_in_order(Phases::Grouped, 10, 10);
        let spread = rooms_in_order(Phases::Spread, 10, 10);
        let same_room_neighbours =
            |order: &[usize]| order.windows(2).filter(|w| w[0] == w[1]).count();
        assert_eq!(same_room_neighbours(&grouped), 90);
        assert_eq!(same_room_neighbours(&spread), 0);
    }
}
