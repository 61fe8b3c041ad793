//! `pdm --config FILE`: serves PDM's API until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "PowerDNS manager: epoch-fenced LUA record commits and zone lifecycle")]
struct Args {
    /// TOML configuration file (see the `pdm::config` docs for every key and default).
    #[arg(long, env = "PDM_CONFIG")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colours only at a terminal (journald and log files get plain text), never with NO_COLOR.
        .with_ansi(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
        .init();
    let args = Args::parse();
    let config = pdm::Config::from_file(&args.config)?;
    pdm::run(config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
