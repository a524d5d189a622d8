//! `huddle-bench`: see the library for what it measures and how.

use clap::Parser;
use huddle_bench::Cli;

fn main() {
    let cli = Cli::parse();
    // One thread: the tool's own work stays on one core and its CPU share is easy to read.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("huddle-bench: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = runtime.block_on(huddle_bench::run(cli)) {
        eprintln!("huddle-bench: {e:#}");
        std::process::exit(1);
    }
}
