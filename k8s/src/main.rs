//! `continuum-reconciler`: the Kubernetes reconciler of `Continuum` resources, and `crd`, which
//! prints the CRDs. (A separate binary rather than `continuum crd`: the CRD types live in this
//! crate, which depends on `continuum`.)

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use continuum_k8s::metrics::{CONTENT_TYPE, Metrics};
use continuum_k8s::reconciler::{self, Context};

#[derive(Parser)]
#[command(name = "continuum-reconciler", about = "Kubernetes reconciler for Continuum resources")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (Continuum, ContinuumSwitchover) as YAML.
    Crd,
    /// Run the controllers against the cluster of the in-cluster or kubeconfig credentials.
    Run {
        /// Watch only this namespace (default: all).
        #[arg(long, env = "CONTINUUM_RECONCILER_NAMESPACE")]
        namespace: Option<String>,
        /// Pause between two status polls of one Continuum.
        #[arg(long, env = "CONTINUUM_RECONCILER_POLL_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
        poll_interval: Duration,
        /// Address of `GET /metrics`.
        #[arg(long, env = "CONTINUUM_RECONCILER_METRICS", default_value = "0.0.0.0:9090")]
        metrics_listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", continuum_k8s::crds_yaml());
            Ok(())
        }
        Command::Run { namespace, poll_interval, metrics_listen } => {
            tracing_subscriber_init();
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = kube::Client::try_default().await.context("Kubernetes credentials")?;
            let metrics = Metrics::new();
            let listener = tokio::net::TcpListener::bind(metrics_listen).await.context("bind the metrics address")?;
            let served = metrics.clone();
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let m = served.clone();
                    async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], m.encode()) }
                }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
            let ctx = Context::new(client, metrics, poll_interval);
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            reconciler::run(ctx, namespace.as_deref(), shutdown).await;
            Ok(())
        }
    }
}

fn tracing_subscriber_init() {
    continuum::telemetry::init(continuum::telemetry::LogFormat::Plain);
}
