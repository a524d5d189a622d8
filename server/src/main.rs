//! The `huddle-server` binary: parse the config, set up logging, bind, and serve until SIGINT or
//! SIGTERM.

use clap::Parser;
use huddle_server::config::LogFormat;
use huddle_server::{Config, run};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let mut config = Config::parse();
    init_logging(config.log_format);
    // Every socket is a file descriptor: take the whole hard limit (the default soft limit of
    // 1,024 would refuse the 1,025th client), and fit the connection limits into it.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(open_files) => match config.fit_open_files(open_files) {
            Ok(Some(warning)) => tracing::warn!("{warning}"),
            Ok(None) => {}
            Err(message) => {
                eprintln!("error: {message}");
                return std::process::ExitCode::from(2);
            }
        },
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
    let runtime = if config.threads == 1 {
        // One thread: no cross-thread wake-ups on the relay path. Measured on 2 cores (see
        // docs/benchmarks.md) it spends a quarter less CPU per delivered update than two
        // work-stealing workers; storage and big decodes run on their own threads anyway.
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(config.threads))
            .enable_all()
            .build()
    };
    match runtime {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}; try a smaller --threads");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> std::process::ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: cannot listen on {}: {e}; pick another address with --addr or HUDDLE_ADDR",
                config.addr
            );
            return std::process::ExitCode::from(2);
        }
    };
    let addr = listener.local_addr().map_or_else(|_| config.addr.to_string(), |a| a.to_string());
    // Tests and scripts that pass port 0 read the chosen address from this line.
    println!("huddle listening on http://{addr}");
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "huddle server started");
    let data_dir = config.data_dir.clone();
    match run(config, listener, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(huddle_server::ServerError::Store(e)) => {
            eprintln!(
                "error: {e}; check --data-dir or HUDDLE_DATA_DIR (now {})",
                data_dir.display()
            );
            std::process::ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
