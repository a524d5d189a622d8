//! `cargo xtask`: the two commands a fresh machine needs.
//!
//! - `cargo xtask run [-- SERVER FLAGS]`: builds and runs the Huddle server on its SQLite default
//!   (`./data`, `127.0.0.1:8080`).
//! - `cargo xtask test`: installs what the tests need and is missing (the wasm target, Node.js,
//!   the npm packages of the interop test), then runs formatting and lint checks, a wasm build of
//!   the protocol crate, and every test.
//!
//! Plain `std::process::Command` and no dependencies beyond `anyhow`: this binary is compiled
//! before anything else on a fresh machine, so it must build fast.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("run") => run(&root, &args[1..]),
        Some("test") => test(&root),
        Some("web") => build_web(&root),
        Some("bench") if args.get(1).map(String::as_str) == Some("guard") => relay_guard(&root),
        Some("bench") => bench(&root, &args[1..]),
        _ => {
            eprintln!(
                "usage:\n  cargo xtask run [-- SERVER FLAGS]   build the web client and run Huddle (http://127.0.0.1:8080, data in ./data)\n  cargo xtask test                    install what is missing and run every check and test\n  cargo xtask web                     build the web client into web/dist\n  cargo xtask bench compare           load scenarios against Huddle, the Node reference and y-sweet (docs/benchmarks.md)\n  cargo xtask bench ARGS              huddle-bench ARGS, e.g. `--server huddle fanout --rooms 10`\n  cargo xtask bench guard             instructions per relayed update under callgrind, against the committed baseline"
            );
            std::process::exit(2);
        }
    }
}

/// The checkout this run belongs to. `cargo run` sets `CARGO_MANIFEST_DIR` for the program it
/// runs, so that comes first: the compile-time value names whichever checkout built the binary
/// last, and two checkouts sharing one `CARGO_TARGET_DIR` (a working copy and CI's clean clone)
/// share the binary, so it once built the other checkout's web client.
fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs `cmd`, echoing it, and fails with its exit status.
fn sh(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn run(root: &Path, server_args: &[String]) -> Result<()> {
    build_web(root)?;
    let passthrough: Vec<&String> = server_args.iter().skip_while(|a| *a == "--").collect();
    sh(cargo()
        .current_dir(root)
        .args(["run", "--release", "-p", "huddle-server", "--"])
        .args(passthrough))
}

fn test(root: &Path) -> Result<()> {
    ensure_wasm_target()?;
    ensure_debian_packages(&[("node", "nodejs"), ("npm", "npm"), ("chromium", "chromium")])?;
    npm_ci(&root.join("server/tests/interop"))?;
    npm_ci(&root.join("e2e"))?;

    sh(cargo().current_dir(root).args(["fmt", "--all", "--check"]))?;
    sh(cargo().current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    sh(cargo().current_dir(root).args([
        "clippy",
        "-p",
        "huddle-web",
        "-p",
        "huddle-protocol",
        "--target",
        "wasm32-unknown-unknown",
        "--",
        "-D",
        "warnings",
    ]))?;
    sh(cargo().current_dir(root).args(["test", "--workspace"]))?;
    relay_guard(root)?;

    // End to end: the built web client, served by the server binary, in Debian's Chromium.
    build_web(root)?;
    sh(cargo().current_dir(root).args(["build", "-p", "huddle-server"]))?;
    sh(Command::new("npx")
        .current_dir(root.join("e2e"))
        .args(["playwright", "test"])
        .env("HUDDLE_SERVER_BIN", target_dir(root).join("debug/huddle-server")))?;
    eprintln!("xtask test: all checks passed");
    Ok(())
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// y-sweet, the Rust peer the benchmarks compare against, built from crates.io once.
const YSWEET_VERSION: &str = "0.9.1";

/// Builds the release server and the load tool, installs the peers, and runs `huddle-bench`.
fn bench(root: &Path, args: &[String]) -> Result<()> {
    ensure_debian_packages(&[("node", "nodejs"), ("npm", "npm")])?;
    npm_ci(&root.join("bench/peers"))?;
    let peers = std::env::var_os("HOME").map_or_else(
        || root.join("target/peers"),
        |h| PathBuf::from(h).join(".cache/huddle/peers"),
    );
    let ysweet = peers.join("bin/y-sweet");
    let wants_ysweet = args.iter().any(|a| a == "compare" || a.contains("y-sweet"));
    if wants_ysweet && !ysweet.exists() {
        eprintln!(
            "installing y-sweet {YSWEET_VERSION} into {} (a few minutes, once)",
            peers.display()
        );
        sh(cargo()
            .args(["install", "y-sweet", "--version", YSWEET_VERSION, "--locked", "--root"])
            .arg(&peers))?;
    }
    sh(cargo().current_dir(root).args([
        "build",
        "--release",
        "-p",
        "huddle-server",
        "-p",
        "huddle-bench",
    ]))?;
    let release = target_dir(root).join("release");
    sh(Command::new(release.join("huddle-bench"))
        .current_dir(root)
        .args(args)
        .env("HUDDLE_SERVER_BIN", release.join("huddle-server"))
        .env("YSWEET_BIN", &ysweet))
}

/// Where the relay guard's baseline lives: instructions per delivered update, one number.
const GUARD_BASELINE: &str = "server/examples/relay_cost.baseline";

/// The regression guard: counts the instructions of the relay path (`server/examples/
/// relay_cost.rs`) under callgrind, which is repeatable whatever else the machine does, and
/// fails if a delivered update costs more than twice the committed baseline.
fn relay_guard(root: &Path) -> Result<()> {
    ensure_debian_packages(&[("valgrind", "valgrind")])?;
    sh(cargo().current_dir(root).args([
        "build",
        "--release",
        "-p",
        "huddle-server",
        "--example",
        "relay_cost",
    ]))?;
    let out_dir = target_dir(root).join("callgrind");
    std::fs::create_dir_all(&out_dir)?;
    let out_file = out_dir.join("relay_cost.out");
    let run = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--toggle-collect=*relay_one*")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(target_dir(root).join("release/examples/relay_cost"))
        .output()
        .context("cannot run valgrind")?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    if !run.status.success() {
        bail!("relay_cost under callgrind failed: {}", String::from_utf8_lossy(&run.stderr));
    }
    let deliveries: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("deliveries "))
        .and_then(|n| n.trim().parse().ok())
        .context("relay_cost printed no delivery count")?;
    let profile = std::fs::read_to_string(&out_file)?;
    let instructions: f64 = profile
        .lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .context("no instruction total in the callgrind output")?;
    let per = instructions / deliveries.max(1.0);
    let baseline: f64 = std::fs::read_to_string(root.join(GUARD_BASELINE))
        .with_context(|| format!("reading {GUARD_BASELINE}"))?
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("{GUARD_BASELINE} holds no number"))?;
    eprintln!(
        "relay guard: {per:.0} instructions per delivered update ({deliveries} deliveries), baseline {baseline:.0}"
    );
    if per > 2.0 * baseline {
        bail!(
            "the relay path got more than twice as expensive ({per:.0} instructions per delivered update, baseline {baseline:.0}); profile with `callgrind_annotate {}`, and if the cost is deliberate, update {GUARD_BASELINE}",
            out_file.display()
        );
    }
    if per < 0.5 * baseline {
        eprintln!(
            "relay guard: less than half the baseline: lower {GUARD_BASELINE} to keep the guard sharp"
        );
    }
    Ok(())
}

/// The `wasm-bindgen` version in Cargo.lock: the CLI must match it exactly.
fn locked_wasm_bindgen(root: &Path) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasm-bindgen\""
            && let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return Ok(v.trim_end_matches('"').to_owned());
        }
    }
    bail!("wasm-bindgen is not in Cargo.lock")
}

/// Installs `wasm-bindgen-cli` at the locked version if it is missing or another version.
fn ensure_wasm_bindgen(root: &Path) -> Result<()> {
    let want = locked_wasm_bindgen(root)?;
    let have = Command::new("wasm-bindgen").arg("--version").output();
    if have
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == format!("wasm-bindgen {want}"))
    {
        return Ok(());
    }
    // Not `--locked`: its lock file pins a crate version the registry no longer serves.
    sh(cargo().args(["install", "wasm-bindgen-cli", "--version", &want]))
}

/// Builds the web client into `web/dist`: wasm (size-optimised profile), JS glue, HTML, assets.
fn build_web(root: &Path) -> Result<()> {
    ensure_wasm_target()?;
    ensure_wasm_bindgen(root)?;
    sh(cargo().current_dir(root).args([
        "build",
        "-p",
        "huddle-web",
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        "wasm-release",
    ]))?;
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let wasm = target_dir.join("wasm32-unknown-unknown/wasm-release/huddle-web.wasm");
    let dist = root.join("web/dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist).context("clearing web/dist")?;
    }
    std::fs::create_dir_all(dist.join("assets")).context("creating web/dist")?;
    sh(Command::new("wasm-bindgen")
        .args(["--target", "web", "--no-typescript", "--out-name", "huddle_web", "--out-dir"])
        .arg(&dist)
        .arg(&wasm))?;
    std::fs::copy(root.join("web/index.html"), dist.join("index.html"))
        .context("copying index.html")?;
    // The service worker must live at the root to control room URLs.
    std::fs::copy(root.join("assets/sw.js"), dist.join("sw.js")).context("copying sw.js")?;
    for entry in std::fs::read_dir(root.join("assets")).context("reading assets/")? {
        let entry = entry?;
        std::fs::copy(entry.path(), dist.join("assets").join(entry.file_name()))
            .with_context(|| format!("copying {}", entry.path().display()))?;
    }
    // wasm-opt from npm's binaryen (Debian's binaryen 108 produces a module Chromium rejects):
    // about 40% smaller, which is download and compile time for every visitor. -O3 rather
    // than -Oz: nearly as small, and the board opened faster with it (docs/benchmarks.md).
    ensure_debian_packages(&[("node", "nodejs"), ("npm", "npm")])?;
    npm_ci(&root.join("web"))?;
    let module = dist.join("huddle_web_bg.wasm");
    sh(Command::new(root.join("web/node_modules/.bin/wasm-opt"))
        .args([
            "-O3",
            "--enable-bulk-memory",
            "--enable-nontrapping-float-to-int",
            "--enable-sign-ext",
            "--enable-mutable-globals",
            "--enable-reference-types",
            "--enable-multivalue",
        ])
        .arg(&module)
        .arg("-o")
        .arg(&module))?;
    precompress(&dist)?;
    let size = std::fs::metadata(dist.join("huddle_web_bg.wasm")).map(|m| m.len()).unwrap_or(0);
    eprintln!("web client built into web/dist ({} KiB of wasm)", size / 1024);
    Ok(())
}

/// Writes a brotli (`.br`) and a gzip (`.gz`) copy of every compressible file in `dist`, at the
/// best ratio, for the server to send as they are (server/src/web.rs). Compressed once here
/// rather than per request: gzip of the 800 KiB wasm cost the server ~30 ms of CPU on every
/// first visit, and brotli at its best ratio (about 20% smaller than gzip) takes seconds, far
/// too slow for a request. `index.html` is left out: the server rewrites it on the way out.
fn precompress(dist: &Path) -> Result<()> {
    use std::io::Write;
    let mut pending = vec![dist.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let compressible = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "wasm" | "js" | "css" | "svg" | "json"));
            if !compressible || path.file_name().is_some_and(|n| n == "index.html") {
                continue;
            }
            let data =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(&data)?;
            let gz = gz.finish()?;
            let mut br = Vec::new();
            let params =
                brotli::enc::BrotliEncoderParams { quality: 11, lgwin: 22, ..Default::default() };
            brotli::BrotliCompress(&mut &data[..], &mut br, &params)?;
            // Not worth a variant unless it saves a tenth (small or already dense files).
            for (ext, bytes) in [("gz", gz), ("br", br)] {
                if bytes.len() * 10 < data.len() * 9 {
                    let mut name = path.clone().into_os_string();
                    name.push(format!(".{ext}"));
                    std::fs::write(&name, bytes).with_context(|| format!("writing {name:?}"))?;
                }
            }
        }
    }
    Ok(())
}

fn ensure_wasm_target() -> Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("wasm32-unknown-unknown") => {
            Ok(())
        }
        Ok(_) => sh(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"])),
        Err(_) => bail!(
            "rustup not found: install the wasm target with your toolchain manager (wasm32-unknown-unknown)"
        ),
    }
}

/// Installs missing Debian packages when we are root with apt-get; otherwise names them.
fn ensure_debian_packages(needed: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> =
        needed.iter().filter(|(bin, _)| !have(bin)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    if is_root && have("apt-get") {
        sh(Command::new("apt-get").arg("update"))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing))?;
        return Ok(());
    }
    bail!("missing tools; install them with: sudo apt-get install {}", missing.join(" "))
}

/// `npm ci` in `dir` unless its node_modules is already up to date with the lock file.
fn npm_ci(dir: &Path) -> Result<()> {
    let lock = dir.join("package-lock.json");
    let stamp = dir.join("node_modules/.package-lock.json");
    let fresh = match (std::fs::metadata(&lock), std::fs::metadata(&stamp)) {
        (Ok(l), Ok(s)) => match (l.modified(), s.modified()) {
            (Ok(l), Ok(s)) => s >= l,
            _ => false,
        },
        _ => false,
    };
    if fresh {
        return Ok(());
    }
    sh(Command::new("npm").current_dir(dir).args(["ci", "--no-audit", "--no-fund"]))
}
