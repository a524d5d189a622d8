//! Where a scenario connects, and the servers the tool can start itself.
//!
//! A [`Target`] is any y-websocket server: a URL template with `{room}` in it, the server's pid
//! (for its CPU and memory) and, for y-sweet, where to create a room first. [`Server`] starts one
//! of the three servers we compare, on a free port with a fresh data directory.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A y-websocket server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Short name for reports.
    pub name: String,
    /// Socket URL with `{room}` where the room name goes.
    pub ws: String,
    /// y-sweet only: its HTTP base URL; each room is created with `POST /doc/new` first.
    pub create: Option<String>,
    /// The server's process id, for CPU and RSS. Without it those figures are not reported.
    pub pid: Option<u32>,
}

impl Target {
    /// The socket URL of `room`.
    pub fn room_url(&self, room: &str) -> String {
        self.ws.replace("{room}", room)
    }

    /// Makes `room` exist where the server needs that (y-sweet); a no-op elsewhere.
    pub async fn prepare(&self, room: &str) -> Result<()> {
        let Some(base) = &self.create else { return Ok(()) };
        let body = serde_json::json!({ "docId": room }).to_string();
        let status = post_json(base, "/doc/new", &body).await?;
        ensure!((200..300).contains(&status), "creating room {room} at {base}: HTTP {status}");
        Ok(())
    }

    /// Server CPU time so far, if the pid is known.
    pub fn cpu(&self) -> Option<Duration> {
        self.pid.and_then(|p| crate::system::cpu(p).ok())
    }

    /// Server resident memory, if the pid is known.
    pub fn rss(&self) -> Option<u64> {
        self.pid.and_then(|p| crate::system::rss(p).ok())
    }

    /// The server's count of writes to its sockets, where it publishes one: Huddle's
    /// `huddle_socket_writes_total` at `GET /metrics` on the socket URL's host. Against
    /// deliveries it says how many frames share a write. `None` for servers without it.
    pub async fn socket_writes(&self) -> Option<u64> {
        let rest = self.ws.strip_prefix("ws://")?;
        let authority = rest.split('/').next()?;
        let body = http_get(authority, "/metrics").await.ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix("huddle_socket_writes_total ")?.trim().parse().ok())
    }
}

/// One HTTP/1.1 GET, returning the whole response (head and body) as text.
async fn http_get(authority: &str, path: &str) -> Result<String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(authority))
        .await
        .context("connect timed out")??;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .context("response timed out")??;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// One HTTP/1.1 POST, returning the status code.
///
/// Written by hand rather than pulling in an HTTP client: it is one request to a loopback
/// server, made once per room, and the status line is all we read.
async fn post_json(base: &str, path: &str, body: &str) -> Result<u16> {
    let authority = base.strip_prefix("http://").context("create URL must be http://")?;
    let authority = authority.trim_end_matches('/');
    let mut stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let head = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in {head:?}"))
}

/// The servers the tool knows how to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// This repository's server (release build).
    Huddle,
    /// The Node reference, `@y/websocket-server` 0.1.1 with yjs 13 (in memory).
    Reference,
    /// y-sweet 0.9.1 (Rust, axum + yrs), storing to a directory.
    #[value(name = "y-sweet")]
    YSweet,
}

impl Kind {
    /// Name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Huddle => "huddle",
            Kind::Reference => "y-websocket-server",
            Kind::YSweet => "y-sweet",
        }
    }
}

/// Where the servers' programs are.
#[derive(Debug, Clone, clap::Args)]
pub struct Programs {
    /// The huddle-server binary (build it with `cargo build --release -p huddle-server`).
    #[arg(long, env = "HUDDLE_SERVER_BIN", default_value = "target/release/huddle-server")]
    pub huddle_bin: PathBuf,
    /// Directory whose `node_modules` holds `@y/websocket-server` (`npm ci` in `bench/peers`).
    #[arg(long, default_value = "bench/peers")]
    pub peers_dir: PathBuf,
    /// The y-sweet binary (`cargo install y-sweet --version 0.9.1 --locked`).
    #[arg(long, env = "YSWEET_BIN", default_value = "y-sweet")]
    pub ysweet_bin: PathBuf,
    /// Extra arguments for huddle-server, e.g. `--durability=process`.
    #[arg(long = "huddle-arg", allow_hyphen_values = true)]
    pub huddle_args: Vec<String>,
}

/// A server the tool started; it is killed when this is dropped.
#[derive(Debug)]
pub struct Server {
    kind: Kind,
    programs: Programs,
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Server {
    /// Starts a fresh `kind` server on a free loopback port and waits until it accepts
    /// connections.
    pub async fn start(kind: Kind, programs: &Programs) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("huddle-bench-").tempdir()?;
        let port = free_port()?;
        let child = spawn(kind, programs, dir.path(), port).await?;
        Ok(Self { kind, programs: programs.clone(), child, dir, port })
    }

    /// The target to point scenarios at.
    pub fn target(&self) -> Target {
        let host = format!("127.0.0.1:{}", self.port);
        let (ws, create) = match self.kind {
            Kind::Huddle => (format!("ws://{host}/ws/{{room}}"), None),
            Kind::Reference => (format!("ws://{host}/{{room}}"), None),
            // y-sweet's client library appends the room name to the URL it is given, as
            // y-websocket does, so the socket lives at /d/<room>/ws/<room>.
            Kind::YSweet => {
                (format!("ws://{host}/d/{{room}}/ws/{{room}}"), Some(format!("http://{host}")))
            }
        };
        Target { name: self.kind.label().into(), ws, create, pid: self.child.id() }
    }

    /// Which server this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Stops the server gracefully (SIGTERM, so it can flush) and starts it again on the same
    /// port and data: the next join of any room is a cold load from storage.
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.is_err() {
            self.child.start_kill()?;
            self.child.wait().await?;
        }
        self.child = spawn(self.kind, &self.programs, self.dir.path(), self.port).await?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

async fn spawn(kind: Kind, programs: &Programs, dir: &Path, port: u16) -> Result<Child> {
    let mut command = match kind {
        Kind::Huddle => {
            let mut c = Command::new(&programs.huddle_bin);
            c.arg("--addr")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(dir)
                .args(&programs.huddle_args)
                .env("RUST_LOG", "warn");
            c
        }
        Kind::Reference => {
            let script = programs.peers_dir.join("node_modules/@y/websocket-server/src/server.js");
            ensure!(
                script.exists(),
                "{} is missing: run `npm ci` in {}",
                script.display(),
                programs.peers_dir.display()
            );
            let mut c = Command::new("node");
            c.arg(script).env("HOST", "127.0.0.1").env("PORT", port.to_string());
            c
        }
        Kind::YSweet => {
            let mut c = Command::new(&programs.ysweet_bin);
            c.arg("serve")
                .arg("--host")
                .arg("127.0.0.1")
                .arg("--port")
                .arg(port.to_string())
                .arg(dir)
                .env("RUST_LOG", "warn");
            c
        }
    };
    let log = std::fs::File::create(dir.join(format!("{}.log", kind.label())))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", kind.label()))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited with {status} before listening; see its log in {}",
                kind.label(),
                dir.display()
            );
        }
        ensure!(Instant::now() < deadline, "{} did not listen on {addr} within 60 s", kind.label());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
