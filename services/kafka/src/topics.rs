//! The topic layout, and creating it when missing.
//!
//! - `events_topic`: every event, keyed by the citizen's pseudonymous partition key so that
//!   events about one person share a partition and keep their order across event types.
//! - `subscriptions_topic`: compacted, one partition, keyed by subscription name; the last
//!   record for a name is that subscription's filter and cursor.
//! - `audit_topic`: one partition, never deleted or compacted; the hash-chained audit trail.

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
};

use crate::{Error, KafkaConfig, Result};

/// Creates the events, subscriptions and audit topics if they do not exist yet, retrying
/// for up to `wait` while Kafka is unreachable or still electing leaders (a service started
/// alongside its broker should wait for it, not crash).
pub async fn ensure_topics_within(config: &KafkaConfig, wait: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match ensure_topics(config).await {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "Kafka not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates the events, subscriptions and audit topics if they do not exist yet.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config.admin().create()?;
    let replication = || TopicReplication::Fixed(config.replication_factor);
    // With replicas, acks=all must mean at least two copies.
    let min_isr = if config.replication_factor > 1 {
        "2"
    } else {
        "1"
    };
    let events = NewTopic::new(&config.events_topic, config.partitions, replication())
        .set("min.insync.replicas", min_isr);
    let subscriptions = NewTopic::new(&config.subscriptions_topic, 1, replication())
        .set("cleanup.policy", "compact")
        .set("min.insync.replicas", min_isr);
    let audit = NewTopic::new(&config.audit_topic, 1, replication())
        .set("cleanup.policy", "delete")
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("min.insync.replicas", min_isr);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&events, &subscriptions, &audit], &opts)
        .await?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Kafka(rdkafka::error::KafkaError::AdminOp(code)))
                    .inspect_err(|_| tracing::error!(topic, ?code, "could not create topic"));
            }
        }
    }
    Ok(())
}
