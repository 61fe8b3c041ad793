//! `continuum`: parse the command line, set up logging, hand over to the library, map the outcome
//! to an exit status.

use clap::Parser;
use continuum::cli::{self, Cli};

#[tokio::main]
async fn main() {
    // reqwest and async-nats use rustls without a built-in provider: ring, before anything else.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    continuum::telemetry::init(cli.log_format);
    if let Err(error) = cli::execute(cli).await {
        let error = anyhow::Error::new(error);
        eprintln!("error: {error:#}");
        let code = error.downcast_ref::<continuum::Error>().map_or(1, continuum::Error::exit_code);
        std::process::exit(code);
    }
}
