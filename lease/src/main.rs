//! `lease-node --config FILE`: one lease-store member without a data plane (the witness).

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Continuum lease-store node (witness)")]
struct Args {
    /// TOML config, see `lease::NodeConfig`.
    #[arg(long, env = "LEASE_NODE_CONFIG")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let result = match lease::NodeConfig::from_file(&args.config) {
        Ok(config) => lease::run(config, shutdown_signal()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lease-node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
