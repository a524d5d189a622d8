//! `huddle-bench`: load scenarios against Huddle or any other y-websocket server.
//!
//! Point it at a running server (`--url ws://host:port/ws/{room} --pid PID`) or let it start
//! one (`--server huddle|reference|y-sweet`); `compare` starts each server in turn and prints
//! one table. Server CPU and memory come from `/proc/PID`, so the server must run on this
//! machine for those figures. The tool runs on one thread (leaving the other core to the
//! server on a 2-core machine) and says when it, not the server, was the bottleneck.

pub mod awareness;
pub mod bigdoc;
pub mod client;
pub mod connections;
pub mod docgen;
pub mod fanout;
pub mod stats;
pub mod system;
pub mod target;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::stats::Report;
use crate::target::{Kind, Programs, Server, Target};

/// Load scenarios for Huddle and other y-websocket servers.
#[derive(Debug, Parser)]
#[command(name = "huddle-bench", version, about)]
pub struct Cli {
    /// Start this server for the run (on a free port, with a fresh data directory).
    #[arg(long, value_enum, conflicts_with = "url", global = true)]
    server: Option<Kind>,
    /// Use a running server: socket URL with `{room}` for the room name,
    /// e.g. `ws://127.0.0.1:8080/ws/{room}`.
    #[arg(long, global = true)]
    url: Option<String>,
    /// Process id of the server at `--url`, for its CPU and memory.
    #[arg(long, requires = "url", global = true)]
    pid: Option<u32>,
    /// For y-sweet at `--url`: its HTTP base (rooms are created with `POST /doc/new`).
    #[arg(long, requires = "url", global = true)]
    create_url: Option<String>,
    /// How fanout, bigdoc and edit-into-big store the room's shapes (fanout: the shape each
    /// client moves).
    #[arg(long, value_enum, default_value = "object", global = true)]
    form: docgen::ShapeForm,
    #[command(flatten)]
    programs: Programs,
    #[command(subcommand)]
    command: Command,
}

/// The scenarios.
// Parsed once per run: the size of `Compare` (every scenario's options) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// R rooms × N clients moving their own shape at F Hz.
    Fanout(fanout::Opts),
    /// C idle sockets: memory per socket, CPU per connect.
    Connections(connections::Opts),
    /// A fresh client syncing a room of K shapes, warm and cold.
    Bigdoc(bigdoc::Opts),
    /// Small edits into rooms of growing size.
    EditIntoBig(bigdoc::EditOpts),
    /// N cursors at F Hz; a destroyed (and optionally a frozen) client's removal.
    Awareness(awareness::Opts),
    /// Every scenario against each server, a fresh server per scenario, and one table.
    Compare(CompareOpts),
}

/// Options of `compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareOpts {
    /// Servers to compare.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Kind::Huddle, Kind::Reference, Kind::YSweet])]
    servers: Vec<Kind>,
    /// Scenarios to run (default: all; `fanout-spread` is fanout with `--phases spread`).
    #[arg(long, value_delimiter = ',', value_parser = SCENARIOS)]
    only: Vec<String>,
    /// Also write the table (Markdown) to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    #[command(flatten)]
    fanout: fanout::Opts,
    #[command(flatten)]
    connections: connections::Opts,
    #[command(flatten)]
    bigdoc: bigdoc::Opts,
    #[command(flatten)]
    edits: bigdoc::EditOpts,
    #[command(flatten)]
    awareness: awareness::Opts,
}

/// The scenarios of `compare`, in the order it runs them.
const SCENARIOS: [&str; 6] =
    ["fanout", "fanout-spread", "connections", "bigdoc", "edit-into-big", "awareness"];

/// A number unique to this run (below 40,000), for room names and client ids. Client ids are
/// `salt * 100_000 + n`, which stays under 2^32: y-sweet's yrs keeps only 32 bits of a client
/// id, as Yjs itself generates them.
pub fn run_salt() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (now % 400) * 100 + COUNTER.fetch_add(1, Ordering::Relaxed) % 100
}

/// The first error among `tasks` that have finished (the others are aborted), or a timeout.
pub(crate) async fn first_failure<T>(
    tasks: Vec<tokio::task::JoinHandle<Result<T>>>,
) -> anyhow::Error {
    for task in &tasks {
        if !task.is_finished() {
            task.abort();
        }
    }
    for task in tasks {
        if let Ok(Err(e)) = task.await {
            return e;
        }
    }
    anyhow::anyhow!("timed out")
}

/// Runs what the command line asks for.
pub async fn run(cli: Cli) -> Result<()> {
    system::raise_fd_limit();
    if let Command::Compare(o) = &cli.command {
        return compare(&cli.programs, o, cli.form).await;
    }
    let mut server = match cli.server {
        Some(kind) => Some(Server::start(kind, &cli.programs).await?),
        None => None,
    };
    let target = match (&server, &cli.url) {
        (Some(s), _) => s.target(),
        (None, Some(url)) => Target {
            name: url.clone(),
            ws: url.clone(),
            create: cli.create_url.clone(),
            pid: cli.pid,
        },
        (None, None) => {
            bail!("say which server: --server huddle|reference|y-sweet, or --url URL --pid PID")
        }
    };
    if !target.ws.contains("{room}") {
        bail!(
            "--url must contain {{room}} where the room name goes, e.g. ws://127.0.0.1:8080/ws/{{room}}"
        );
    }
    let report = match &cli.command {
        Command::Fanout(o) => fanout::run(&target, o, cli.form).await?,
        Command::Connections(o) => connections::run(&target, o).await?,
        Command::Bigdoc(o) => bigdoc::run(&target, server.as_mut(), o, cli.form).await?,
        Command::EditIntoBig(o) => bigdoc::run_edits(&target, o, cli.form).await?,
        Command::Awareness(o) => awareness::run(&target, o).await?,
        Command::Compare(_) => unreachable!("handled above"),
    };
    print!("{}", report.text());
    Ok(())
}

/// Every scenario against each server, each on a freshly started server.
async fn compare(programs: &Programs, o: &CompareOpts, form: docgen::ShapeForm) -> Result<()> {
    let wanted = |name: &str| o.only.is_empty() || o.only.iter().any(|s| s == name);
    let mut reports: Vec<Report> = Vec::new();
    for &kind in &o.servers {
        for scenario in SCENARIOS {
            if !wanted(scenario) {
                continue;
            }
            let mut server = Server::start(kind, programs)
                .await
                .with_context(|| format!("starting {}", kind.label()))?;
            let target = server.target();
            eprintln!("running {scenario} against {}…", kind.label());
            let result = match scenario {
                "fanout" => fanout::run(&target, &o.fanout, form).await,
                // The same load without the same-room pairs the default order sends together
                // (see `fanout::Phases`): what a server's write sharing is worth.
                "fanout-spread" => {
                    let spread =
                        fanout::Opts { phases: fanout::Phases::Spread, ..o.fanout.clone() };
                    fanout::run(&target, &spread, form).await
                }
                "connections" => connections::run(&target, &o.connections).await,
                "bigdoc" => {
                    let restartable = server.kind() != Kind::Reference;
                    bigdoc::run(&target, restartable.then_some(&mut server), &o.bigdoc, form).await
                }
                "edit-into-big" => bigdoc::run_edits(&target, &o.edits, form).await,
                _ => awareness::run(&target, &o.awareness).await,
            };
            let report = result.unwrap_or_else(|e| {
                let mut r = Report::new(scenario, kind.label());
                r.warn(format!("failed: {e:#}"));
                r
            });
            print!("{}", report.text());
            reports.push(report);
        }
    }
    let table = markdown(&reports);
    println!("\n{table}");
    if let Some(path) = &o.markdown {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One table: a row per (scenario, figure), a column per server.
fn markdown(reports: &[Report]) -> String {
    let mut servers: Vec<&str> = Vec::new();
    let mut rows: Vec<(String, String)> = Vec::new();
    for r in reports {
        if !servers.contains(&r.target.as_str()) {
            servers.push(&r.target);
        }
        let scenario = r.scenario.split(" —").next().unwrap_or(&r.scenario).to_owned();
        let warned = (!r.warnings.is_empty()).then_some(WARNINGS);
        for k in r.rows.iter().map(|(k, _)| k.as_str()).chain(warned) {
            let key = (scenario.clone(), k.to_owned());
            if !rows.contains(&key) {
                rows.push(key);
            }
        }
    }
    let mut out = format!("| scenario | figure | {} |\n", servers.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---|".repeat(servers.len()));
    for (scenario, figure) in &rows {
        let cells: Vec<String> = servers
            .iter()
            .map(|s| {
                reports
                    .iter()
                    .filter(|r| r.target == *s && r.scenario == *scenario)
                    .find_map(|r| {
                        if figure == WARNINGS {
                            (!r.warnings.is_empty()).then(|| r.warnings.join("; "))
                        } else {
                            r.rows.iter().find(|(k, _)| k == figure).map(|(_, v)| v.clone())
                        }
                    })
                    .unwrap_or_else(|| "–".into())
            })
            .collect();
        let _ = writeln!(out, "| {scenario} | {figure} | {} |", cells.join(" | "));
    }
    out
}

/// The table row that collects a report's warnings.
const WARNINGS: &str = "warnings";
