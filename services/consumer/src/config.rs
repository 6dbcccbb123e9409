//! The consumer's configuration: `crier-consumer.toml`, overridden by `CRIER_*` variables.

use crier_agreements::reload::AgreementsConfig;
use crier_identity::AuthConfig;
use crier_kafka::KafkaConfig;
use crier_runtime::{GrpcConfig, LogConfig, MetricsConfig};
use serde::Deserialize;

/// All consumer settings. Every field has a default, so an empty file is a valid config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[grpc]`: where the Subscriber service listens.
    pub grpc: GrpcConfig,
    /// `[metrics]`: where Prometheus scrapes.
    pub metrics: MetricsConfig,
    /// `[log]`: log format and level.
    pub log: LogConfig,
    /// `[kafka]`: brokers and topics.
    pub kafka: KafkaConfig,
    /// `[auth]`: how callers prove who they are.
    pub auth: AuthConfig,
    /// `[agreements]`: the data-sharing agreements in force.
    pub agreements: AgreementsConfig,
    /// `[subscriptions]`: delivery windows and cursor persistence.
    pub subscriptions: SubscriptionsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc: GrpcConfig {
                listen: ([0, 0, 0, 0], 50052).into(),
            },
            metrics: MetricsConfig {
                listen: Some(([0, 0, 0, 0], 9465).into()),
            },
            log: LogConfig::default(),
            kafka: KafkaConfig::default(),
            auth: AuthConfig::default(),
            agreements: AgreementsConfig::default(),
            subscriptions: SubscriptionsConfig::default(),
        }
    }
}

/// `[subscriptions]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionsConfig {
    /// Unacknowledged deliveries allowed per stream when the client does not ask.
    pub default_max_in_flight: u32,
    /// The most a client may ask for.
    pub max_in_flight_limit: u32,
    /// How often a stream's cursor is written to Kafka while acknowledgements arrive, in ms.
    /// A crash re-delivers at most this much acknowledged work.
    pub cursor_flush_ms: u64,
    /// How far, in records, a stream may fall behind the shared live reader: each stream's
    /// queue holds `live_buffer / 16` live batches (at least 64). A stream further behind
    /// reads from Kafka on its own until it catches up.
    pub live_buffer: usize,
    /// How long, in ms, a live batch stays open for more records after its first: the
    /// most it adds to a delivery's latency, traded for fewer messages to busy streams
    /// (each stream gets at most one message per batch) and fewer wake-ups of every stream.
    pub live_batch_ms: u64,
    /// Most streams reading from Kafka on their own (replaying or catching up) at once.
    pub max_catch_up_readers: usize,
    /// Most open streams per instance.
    pub max_streams: usize,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        Self {
            default_max_in_flight: 256,
            max_in_flight_limit: 10_000,
            cursor_flush_ms: 500,
            live_buffer: 8192,
            live_batch_ms: 2,
            max_catch_up_readers: 32,
            max_streams: 10_000,
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
