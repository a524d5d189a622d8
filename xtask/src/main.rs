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
        _ => {
            eprintln!(
                "usage:\n  cargo xtask run [-- SERVER FLAGS]   run Huddle (server on 127.0.0.1:8080, data in ./data)\n  cargo xtask test                    install what is missing and run every check and test"
            );
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
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
    let passthrough: Vec<&String> = server_args.iter().skip_while(|a| *a == "--").collect();
    sh(cargo()
        .current_dir(root)
        .args(["run", "--release", "-p", "huddle-server", "--"])
        .args(passthrough))
}

fn test(root: &Path) -> Result<()> {
    ensure_wasm_target()?;
    ensure_debian_packages(&[("node", "nodejs"), ("npm", "npm")])?;
    npm_ci(&root.join("server/tests/interop"))?;

    sh(cargo().current_dir(root).args(["fmt", "--all", "--check"]))?;
    sh(cargo().current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The protocol crate must stay pure: it has to build for the browser.
    sh(cargo().current_dir(root).args([
        "check",
        "-p",
        "huddle-protocol",
        "--target",
        "wasm32-unknown-unknown",
    ]))?;
    sh(cargo().current_dir(root).args(["test", "--workspace"]))?;
    eprintln!("xtask test: all checks passed");
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
