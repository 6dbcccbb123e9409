//! The producer's configuration: `crier-producer.toml`, overridden by `CRIER_*` variables.

use std::time::Duration;

use crier_identity::AuthConfig;
use crier_kafka::KafkaConfig;
use crier_runtime::{GrpcConfig, LogConfig, MetricsConfig};
use serde::Deserialize;

/// All producer settings. Every field has a default, so an empty file is a valid config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[grpc]`: where the Publisher service listens.
    pub grpc: GrpcConfig,
    /// `[metrics]`: where Prometheus scrapes.
    pub metrics: MetricsConfig,
    /// `[log]`: log format and level.
    pub log: LogConfig,
    /// `[kafka]`: brokers, topics and durability.
    pub kafka: KafkaConfig,
    /// `[auth]`: how callers prove who they are.
    pub auth: AuthConfig,
    /// `[agreements]`: the data-sharing agreements in force.
    pub agreements: crier_agreements::reload::AgreementsConfig,
    /// `[limits]`: bounds on what one request may carry.
    pub limits: Limits,
    /// `[dedup]`: how retried publishes are recognised.
    pub dedup: DedupConfig,
    /// `[shutdown]`: how long to wait for in-flight publishes on SIGTERM.
    pub shutdown: ShutdownConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc: GrpcConfig {
                listen: ([0, 0, 0, 0], 50051).into(),
            },
            metrics: MetricsConfig {
                listen: Some(([0, 0, 0, 0], 9464).into()),
            },
            log: LogConfig::default(),
            kafka: KafkaConfig::default(),
            auth: AuthConfig::default(),
            agreements: Default::default(),
            limits: Limits::default(),
            dedup: DedupConfig::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest encoded event accepted, in bytes.
    pub max_event_bytes: usize,
    /// Most events in one PublishBatch.
    pub max_batch_events: usize,
    /// Events per second each publisher identity may send, sustained; beyond it,
    /// RESOURCE_EXHAUSTED. 0 turns the quota off.
    pub publish_rate_per_sec: u32,
    /// Events a publisher may send in a burst above the sustained rate.
    pub publish_burst: u32,
    /// Most events being published at once, across every caller; beyond it, UNAVAILABLE
    /// at once rather than a queue that outlasts the callers' deadlines. At least
    /// `max_batch_events`, so that every allowed batch can be admitted.
    pub max_events_in_progress: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 256 * 1024,
            max_batch_events: 1000,
            publish_rate_per_sec: 5000,
            publish_burst: 10_000,
            max_events_in_progress: 20_000,
        }
    }
}

/// `[dedup]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// How long a published `(source, id)` is remembered at least, in seconds.
    pub window_secs: u64,
    /// How many of the newest `(source, id)` pairs are remembered at least. Older ones are
    /// forgotten a generation at a time, so up to twice this many are held.
    pub capacity: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            window_secs: 24 * 60 * 60,
            capacity: 1_000_000,
        }
    }
}

impl DedupConfig {
    /// The window as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Longest wait for Kafka to confirm queued publishes on shutdown, in seconds.
    pub flush_timeout_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            flush_timeout_secs: 15,
        }
    }
}

impl crier_runtime::ServiceConfig for Config {
    fn grpc(&self) -> &GrpcConfig {
        &self.grpc
    }
    fn metrics(&self) -> &MetricsConfig {
        &self.metrics
    }
    fn log(&self) -> &LogConfig {
        &self.log
    }
    fn check(&self) -> Result<(), String> {
        let limits = &self.limits;
        if limits.max_events_in_progress < limits.max_batch_events.max(1) {
            return Err(format!(
                "[limits] max_events_in_progress ({}) must be at least max_batch_events ({}), \
                 or a full batch could never be admitted",
                limits.max_events_in_progress, limits.max_batch_events
            ));
        }
        if self.dedup.window_secs == 0 {
            // Every pair would be forgotten as soon as it was remembered, and each publish
            // would clear both generations' tables.
            return Err(
                "[dedup] window_secs must be at least 1: a retried publish is \
                        recognised only within the window"
                    .into(),
            );
        }
        crier_identity::Authenticator::new(&self.auth)?;
        crier_identity::tls::server_from(&self.auth)?;
        let path = self
            .agreements
            .path
            .as_ref()
            .ok_or("[agreements] path is required")?;
        crier_agreements::Policy::load(path).map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crier_runtime::ServiceConfig;

    use super::*;

    #[test]
    fn a_limit_on_events_in_progress_below_the_largest_batch_is_refused() {
        let mut config = Config::default();
        config.limits.max_events_in_progress = 999;
        let error = config
            .check()
            .expect_err("999 cannot admit a batch of 1000");
        assert!(
            error.contains("max_events_in_progress (999)") && error.contains("(1000)"),
            "{error}"
        );
    }

    #[test]
    fn a_dedup_window_of_zero_is_refused_and_names_the_setting() {
        let mut config = Config::default();
        config.dedup.window_secs = 0;
        let error = config.check().expect_err("a window of 0 remembers nothing");
        assert!(error.contains("[dedup] window_secs"), "{error}");
    }
}
