//! Kafka settings shared by both services, and the librdkafka client configurations built
//! from them. Durability settings live here so no service can forget them.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::Deserialize;

/// The `[kafka]` section of a service's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// Topic holding every citizen event (see ARCHITECTURE.md for why there is one).
    pub events_topic: String,
    /// Compacted topic holding each subscription's definition and cursor.
    pub subscriptions_topic: String,
    /// Append-only topic of hash-chained audit records (kept forever).
    pub audit_topic: String,
    /// Partitions for the events topic when Crier creates it.
    pub partitions: i32,
    /// Replication factor for topics Crier creates (3 in production, 1 for a single broker).
    pub replication_factor: i32,
    /// Create missing topics at start-up. Turn off where topics are managed elsewhere.
    pub create_topics: bool,
    /// How long a publish may wait for Kafka's acknowledgement before it fails.
    pub delivery_timeout_ms: u64,
    /// Extra librdkafka properties, applied last (for example TLS or SASL settings).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            events_topic: "crier.events.v1".into(),
            subscriptions_topic: "crier.subscriptions.v1".into(),
            audit_topic: "crier.audit.v1".into(),
            partitions: 6,
            replication_factor: 1,
            create_topics: true,
            delivery_timeout_ms: 10_000,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", "crier")
            // After a broker restart, librdkafka can hold a partition whose leader it cannot
            // place ("leader not found in cache") until the next full metadata refresh,
            // 5 minutes by default; seen in the fault suite. Refresh often enough that such
            // a stall lasts seconds.
            .set("topic.metadata.refresh.interval.ms", "10000");
        c
    }

    fn with_overrides(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// A producer that never reorders or duplicates within a partition (idempotent) and
    /// reports success only when every in-sync replica has the record (acks=all).
    pub fn producer(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string())
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .set("partitioner", "murmur2_random");
        self.with_overrides(c)
    }

    /// A [`producer`](Self::producer) for writes that no delivery waits on: the consumer
    /// service's cursors and audit records. It gathers records for 20 ms, not 2, into each
    /// request: they came a few at a time from hundreds of streams and the live reader, a
    /// produce request every 2-3 ms that Kafka answered on the cores the fan-out needed
    /// (PERFORMANCE.md, session 12). Opening a new subscription waits up to 20 ms more for
    /// its first cursor write.
    pub fn background_producer(&self) -> ClientConfig {
        let mut c = self.producer();
        c.set("linger.ms", "20");
        self.with_overrides(c)
    }

    /// A consumer with no group and no automatic commits: Crier assigns partitions itself
    /// and keeps cursors in its own compacted topic.
    pub fn reader(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", "crier-reader-unused")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            // A long poll: the broker answers as soon as a record arrives, so this only
            // bounds how often an idle reader asks. At 10 ms, idle readers kept Kafka at 15%
            // of a core; at 100, 7% (PERFORMANCE.md).
            .set("fetch.wait.max.ms", "100")
            .set("session.timeout.ms", "10000")
            .set("queued.max.messages.kbytes", "16384");
        self.with_overrides(c)
    }

    /// A [`reader`](Self::reader) that reports reaching the end of each partition, for
    /// readers that must know when they have caught up.
    pub fn catch_up_reader(&self) -> ClientConfig {
        let mut c = self.reader();
        // One of these runs per lagging stream (up to max_catch_up_readers), so its
        // prefetch, not the live reader's, sets the memory bound under lag.
        c.set("enable.partition.eof", "true")
            .set("queued.max.messages.kbytes", "2048");
        self.with_overrides(c)
    }

    /// A [`reader`](Self::reader) for a topic that is tailed rather than waited on, such
    /// as the subscriptions topic: a fetch returns once 64 KiB have gathered or 20 ms have
    /// passed, not on every record. Every cursor write was otherwise a fetch answered to
    /// every consumer instance, a tenth of Kafka's requests at 500 events/s
    /// (PERFORMANCE.md); an Open waits at most 20 ms more for the newest cursor.
    pub fn tail_reader(&self) -> ClientConfig {
        let mut c = self.reader();
        c.set("fetch.min.bytes", "65536")
            .set("fetch.wait.max.ms", "20");
        self.with_overrides(c)
    }

    /// An admin client, for creating topics.
    pub fn admin(&self) -> ClientConfig {
        self.with_overrides(self.base())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_background_producer_lingers_longer_with_the_same_durability_and_overrides_win() {
        let mut config = KafkaConfig::default();
        let background = config.background_producer();
        assert_eq!(background.get("linger.ms"), Some("20"));
        assert_eq!(background.get("acks"), Some("all"));
        assert_eq!(background.get("enable.idempotence"), Some("true"));
        config.properties.insert("linger.ms".into(), "5".into());
        assert_eq!(config.background_producer().get("linger.ms"), Some("5"));
        assert_eq!(config.producer().get("linger.ms"), Some("5"));
    }
}
