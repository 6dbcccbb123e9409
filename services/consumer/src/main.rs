//! `crier-consumer`: the Subscriber gRPC service as a process.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use crier_consumer::Config;

/// Crier consumer service: delivers citizen-service events from Kafka to durable gRPC
/// subscriptions (crier.v1.Subscriber), at least once and in per-citizen order.
///
/// Settings come from defaults, then the TOML file given by --config, then environment
/// variables named CRIER_<SECTION>__<KEY>, for example CRIER_KAFKA__BOOTSTRAP_SERVERS=kafka:9092
/// or CRIER_GRPC__LISTEN=0.0.0.0:50052. See README.md, "Configuration", for every setting.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short, env = "CRIER_CONFIG")]
    config: Option<PathBuf>,
    /// Load and check the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: Config = crier_runtime::load(args.config.as_deref())?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    crier_runtime::init_logging(&config.log);
    crier_runtime::serve_metrics(&config.metrics)?;
    let listener = tokio::net::TcpListener::bind(config.grpc.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.grpc.listen))?;
    let shutdown = crier_runtime::shutdown_on_signal();
    crier_consumer::serve(config, listener, shutdown).await?;
    Ok(())
}
