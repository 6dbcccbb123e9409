//! Runs `crier-producer` and `crier-consumer` as child processes of the benchmark.
//!
//! The services run as separate processes, from the release binaries, rather than
//! in-process like the e2e tests: memory is measured per process (`VmRSS`), a profiler can
//! attach to one pid, and the services are configured exactly as an operator would configure
//! them, through `CRIER_<SECTION>__<KEY>` variables. They are stopped with SIGTERM, so the
//! graceful-shutdown path runs too; a child left behind by an error is killed on drop.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::process::{Child, Command};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Producer,
    Consumer,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::Producer => "crier-producer",
            Kind::Consumer => "crier-consumer",
        }
    }
}

/// The topics and broker every child of one run shares.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub(crate) bin_dir: PathBuf,
    pub(crate) log_dir: PathBuf,
    pub(crate) bootstrap: String,
    pub(crate) events_topic: String,
    pub(crate) subscriptions_topic: String,
    /// Partitions of the events topic (`--partitions`).
    pub(crate) partitions: i32,
    /// Settings given with `--producer-env`, applied last.
    pub(crate) producer_settings: Vec<(String, String)>,
    /// Settings given with `--consumer-env`, applied last.
    pub(crate) consumer_settings: Vec<(String, String)>,
}

impl Env {
    /// The run's audit topic, beside its events topic.
    pub(crate) fn audit_topic(&self) -> String {
        self.events_topic.replace(".events", ".audit")
    }
}

/// A running service process.
#[derive(Debug)]
pub(crate) struct Service {
    kind: Kind,
    child: Child,
    pid: u32,
    grpc: SocketAddr,
    metrics: SocketAddr,
    started: u32,
}

impl Service {
    /// Starts `kind` on the given ports and waits until its health check says SERVING.
    pub(crate) async fn start(
        kind: Kind,
        env: &Env,
        grpc: SocketAddr,
        metrics: SocketAddr,
        generation: u32,
    ) -> anyhow::Result<Self> {
        let path = env.bin_dir.join(kind.binary());
        if !path.is_file() {
            bail!(
                "{} not found; build it with `cargo build --release -p crier-producer -p crier-consumer` \
                 or pass --bin-dir",
                path.display()
            );
        }
        std::fs::create_dir_all(&env.log_dir)?;
        let log = log_path(&env.log_dir, kind, generation);
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(&path);
        // Only this run's settings: nothing inherited from the caller's CRIER_* variables.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CRIER_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("CRIER_GRPC__LISTEN", grpc.to_string())
            .env("CRIER_METRICS__LISTEN", metrics.to_string())
            .env("CRIER_KAFKA__BOOTSTRAP_SERVERS", &env.bootstrap)
            .env("CRIER_KAFKA__EVENTS_TOPIC", &env.events_topic)
            .env("CRIER_KAFKA__SUBSCRIPTIONS_TOPIC", &env.subscriptions_topic)
            .env("CRIER_KAFKA__AUDIT_TOPIC", env.audit_topic())
            .env("CRIER_KAFKA__PARTITIONS", env.partitions.to_string())
            .envs(crate::client::service_env(kind == Kind::Producer))
            .envs(match kind {
                Kind::Producer => env.producer_settings.iter().cloned(),
                Kind::Consumer => env.consumer_settings.iter().cloned(),
            })
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", path.display()))?;
        let pid = child.id().context("child has no pid")?;
        let mut service = Self {
            kind,
            child,
            pid,
            grpc,
            metrics,
            started: generation,
        };
        service
            .wait_serving(Duration::from_secs(60))
            .await
            .with_context(|| format!("see {}", log.display()))?;
        eprintln!(
            "bench: {} pid {pid} serving on {grpc} (metrics {metrics}, log {})",
            kind.binary(),
            log.display()
        );
        Ok(service)
    }

    async fn wait_serving(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let url = self.url();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited during start-up ({status})", self.kind.binary());
            }
            if let Ok(channel) = crate::client::channel(&url).await
                && let Ok(answer) = HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await
                && answer.into_inner().status() == ServingStatus::Serving
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} not serving after {limit:?}", self.kind.binary());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The gRPC URL.
    pub(crate) fn url(&self) -> String {
        format!("https://localhost:{}", self.grpc.port())
    }

    /// The Prometheus endpoint.
    pub(crate) fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// The process id, for `/proc` and profilers.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident set size now, in MiB.
    pub(crate) fn rss_mb(&self) -> anyhow::Result<f64> {
        crate::probe::rss_mb(self.pid)
    }

    /// Sends SIGTERM and waits (up to `limit`) for a clean exit; kills it otherwise.
    pub(crate) async fn stop(mut self, limit: Duration) -> anyhow::Result<()> {
        let name = self.kind.binary();
        if self.child.try_wait()?.is_some() {
            bail!("{name} (pid {}) had already exited; see its log", self.pid);
        }
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM)
            .with_context(|| format!("cannot signal {name}"))?;
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                eprintln!(
                    "bench: {name} pid {} (start #{}) stopped on SIGTERM: {status}",
                    self.pid, self.started
                );
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("{name} did not stop within {limit:?} of SIGTERM; killed")
            }
        }
    }
}

fn log_path(dir: &Path, kind: Kind, generation: u32) -> PathBuf {
    dir.join(format!("{}-{generation}.log", kind.binary()))
}

/// `n` distinct ports on 127.0.0.1, free now, scanning upwards from `base`.
pub(crate) fn free_ports(base: u16, n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let mut found = Vec::with_capacity(n);
    let mut port = base;
    while found.len() < n {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).is_ok() {
            found.push(addr);
        }
        port = port
            .checked_add(1)
            .context("no free ports above --port-base")?;
    }
    Ok(found)
}
