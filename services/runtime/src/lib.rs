//! What every Crier service binary needs around its business logic, done once:
//!
//! - [`load`]: configuration from defaults, then a TOML file, then `CRIER_*` environment
//!   variables (`CRIER_KAFKA__BOOTSTRAP_SERVERS` sets `[kafka] bootstrap_servers`);
//! - [`init_logging`]: structured logs (text for people, JSON for log pipelines);
//! - [`serve_metrics`]: Prometheus metrics over HTTP;
//! - [`shutdown_on_signal`]: SIGTERM or Ctrl-C cancels a token that the server watches;
//! - [`start`]: all of the above, in order, for a service's `main`;
//! - [`grpc`]: the gRPC server both services build, with its bound on request metadata.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::{Deserialize, de::DeserializeOwned};
use tokio_util::sync::CancellationToken;

pub mod grpc;

/// Configuration could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file or an environment variable has a bad value or an unknown key.
    #[error("invalid configuration")]
    Config(#[source] Box<figment::Error>),
    /// The metrics endpoint could not start.
    #[error("metrics: {0}")]
    Metrics(String),
    /// The configuration loaded but cannot work.
    #[error("configuration check failed: {0}")]
    Check(String),
    /// The gRPC address could not be bound.
    #[error("cannot listen on {0}")]
    Listen(SocketAddr, #[source] std::io::Error),
}

/// The flags every service binary takes.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "CRIER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Load and check the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// The sections every service's configuration has.
pub trait ServiceConfig: DeserializeOwned + std::fmt::Debug {
    /// `[grpc]`.
    fn grpc(&self) -> &GrpcConfig;
    /// `[metrics]`.
    fn metrics(&self) -> &MetricsConfig;
    /// `[log]`.
    fn log(&self) -> &LogConfig;
    /// Checks what loading alone cannot: that the files named exist and parse, and that
    /// callers can be authenticated.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Everything a service's `main` does before serving: load and check the configuration,
/// then (unless only checking it, when it is printed and `None` returned) start logging and
/// metrics, bind the gRPC address and watch for SIGTERM. The check runs on every start, so
/// a setting that cannot work stops the service with its name rather than failing calls.
pub async fn start<C: ServiceConfig>(
    args: &ServiceArgs,
) -> Result<Option<(C, tokio::net::TcpListener, CancellationToken)>, Error> {
    let config: C = load(args.config.as_deref())?;
    if args.check_config {
        println!("{config:#?}");
    }
    config.check().map_err(Error::Check)?;
    if args.check_config {
        println!("configuration OK");
        return Ok(None);
    }
    init_logging(config.log());
    serve_metrics(config.metrics())?;
    let listen = config.grpc().listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Listen(listen, e))?;
    Ok(Some((config, listener, shutdown_on_signal())))
}

/// The `[grpc]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
}

/// The `[metrics]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address for the Prometheus `/metrics` endpoint; none disables it.
    pub listen: Option<SocketAddr>,
}

/// The `[log]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for a terminal, `json` for a log pipeline.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,crier_consumer=debug`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Loads `T` from its defaults, then the TOML file at `path` (which must exist if given),
/// then environment variables `CRIER_<SECTION>__<KEY>`. Unknown keys are errors, so a typo
/// cannot silently leave a default in place.
pub fn load<T: DeserializeOwned>(path: Option<&Path>) -> Result<T, Error> {
    let mut figment = Figment::new();
    if let Some(path) = path {
        figment = figment.merge(Toml::file_exact(path));
    }
    // Only `SECTION__KEY` variables are settings; others with the prefix (such as the
    // deploy script's CRIER_KAFKA_PORT) are not ours to read.
    figment = figment.merge(
        Env::prefixed("CRIER_")
            .filter(|k| k.as_str().contains("__"))
            .split("__"),
    );
    figment.extract().map_err(|e| Error::Config(Box::new(e)))
}

/// Installs the global tracing subscriber. Call once, from `main`.
pub fn init_logging(config: &LogConfig) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Serves Prometheus metrics at `http://<listen>/metrics` when configured. Call once, from
/// `main`, inside the runtime.
pub fn serve_metrics(config: &MetricsConfig) -> Result<(), Error> {
    if let Some(listen) = config.listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(listen)
            .install()
            .map_err(|e| Error::Metrics(e.to_string()))?;
        tracing::info!(%listen, "metrics endpoint listening");
    }
    Ok(())
}

/// A token cancelled on the first SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        cancel.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
