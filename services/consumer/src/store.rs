//! Durable subscriptions: each one's filter and cursor, kept in a compacted Kafka topic.
//!
//! The topic is keyed by subscription name, so after compaction it holds one record per
//! subscription: a small JSON document any Kafka tool can read. Every instance tails the
//! topic into memory. Before a stream opens, [`SubscriptionStore::get`] waits until this
//! instance has read up to the topic's current end, so it sees the newest cursor even if
//! another instance (or a previous run of this one) wrote it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use crier_kafka::{KafkaConfig, Writer};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
    producer::{FutureRecord, Producer},
    util::Timeout,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{read_errors::ReadErrors, stall};

/// A subscription as stored: its filter and how far it has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    /// The subscription's name (also the record key).
    pub name: String,
    /// The identity that created it, and alone may open it.
    #[serde(default)]
    pub owner: String,
    /// Event types it receives (canonical order).
    pub event_types: Vec<String>,
    /// Areas it receives; empty for all (canonical order).
    pub areas: Vec<String>,
    /// Per partition of the events topic: the first offset not yet acknowledged. Everything
    /// before it was acknowledged or did not match the filter.
    pub cursor: BTreeMap<i32, i64>,
    /// When this record was written (RFC 3339).
    pub updated_at: String,
}

/// Reads and writes subscriptions.
pub struct SubscriptionStore {
    topic: String,
    producer: Writer,
    state: Arc<Mutex<HashMap<String, StoredSubscription>>>,
    /// The next offset the tailing reader will read.
    read_to: watch::Receiver<i64>,
    timeout: Duration,
}

impl std::fmt::Debug for SubscriptionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionStore")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl SubscriptionStore {
    /// Starts tailing the subscriptions topic from its beginning, until `shutdown`; writes
    /// go through `producer`.
    pub fn start(
        config: &KafkaConfig,
        producer: Writer,
        shutdown: CancellationToken,
    ) -> Result<Self, KafkaError> {
        let topic = config.subscriptions_topic.clone();
        let mut reader = reader_from(config, &topic, Offset::Beginning)?;
        let state = Arc::new(Mutex::new(HashMap::new()));
        let (tx, read_to) = watch::channel(0);
        let tail_state = state.clone();
        let (tail_config, watcher, tail_topic) = (config.clone(), producer.clone(), topic.clone());
        let timeout = Duration::from_millis(config.delivery_timeout_ms);
        tokio::spawn(async move {
            let mut errors = ReadErrors::new("store", None);
            let mut check = tokio::time::interval(stall::CHECK_EVERY);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut progress = stall::Progress::default();
            loop {
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = check.tick() => None,
                    msg = reader.recv() => Some(msg),
                };
                match msg {
                    Some(Ok(msg)) => {
                        apply(&tail_state, msg.key(), msg.payload());
                        let _ = tx.send(msg.offset() + 1);
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => {}
                    // Not waited on: see `read_errors` for why.
                    Some(Err(e)) => errors.note(&e),
                    // A stalled reader would stop every Open of this instance: see `stall`.
                    None => {
                        let (producer, topic) = (watcher.clone(), tail_topic.clone());
                        let high = tokio::task::spawn_blocking(move || {
                            producer
                                .client()
                                .client()
                                .fetch_watermarks(&topic, 0, timeout)
                        })
                        .await;
                        let Ok(Ok((_, high))) = high else { continue };
                        let next = *tx.borrow();
                        if progress.stalled(&[(0, next)].into(), &[(0, high)].into()) {
                            tracing::warn!(
                                next,
                                high,
                                "subscription store reader stalled; replacing its Kafka client"
                            );
                            metrics::counter!("crier_store_reader_restarts_total").increment(1);
                            match reader_from(&tail_config, &tail_topic, Offset::Offset(next)) {
                                Ok(fresh) => {
                                    let stale = std::mem::replace(&mut reader, fresh);
                                    tokio::task::spawn_blocking(move || drop(stale));
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot replace the store reader")
                                }
                            }
                        }
                    }
                }
            }
            tokio::task::spawn_blocking(move || drop(reader));
        });
        Ok(Self {
            topic,
            producer,
            state,
            read_to,
            timeout: Duration::from_millis(config.delivery_timeout_ms),
        })
    }

    /// The newest stored record for `name`, after catching up with the topic.
    pub async fn get(&self, name: &str) -> Result<Option<StoredSubscription>, KafkaError> {
        let (producer, topic, timeout) = (self.producer.clone(), self.topic.clone(), self.timeout);
        let (_, high) = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .client()
                .fetch_watermarks(&topic, 0, timeout)
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        let mut read_to = self.read_to.clone();
        tokio::time::timeout(self.timeout, read_to.wait_for(|p| *p >= high))
            .await
            .map_err(|_| KafkaError::Canceled)?
            .map_err(|_| KafkaError::Canceled)?;
        Ok(self.lock().get(name).cloned())
    }

    /// Durably writes `sub` (acks=all) and returns once Kafka holds it.
    pub async fn put(&self, mut sub: StoredSubscription) -> Result<(), KafkaError> {
        sub.updated_at = prost_types::Timestamp::from(std::time::SystemTime::now()).to_string();
        let value = serde_json::to_vec(&sub).map_err(|_| KafkaError::Canceled)?;
        let record = FutureRecord::to(&self.topic).key(&sub.name).payload(&value);
        self.producer
            .send(record, Timeout::After(self.timeout))
            .await
            .map_err(|(e, _)| e)?;
        self.lock().insert(sub.name.clone(), sub);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, StoredSubscription>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A client reading the subscriptions topic's one partition from `offset`.
fn reader_from(
    config: &KafkaConfig,
    topic: &str,
    offset: Offset,
) -> Result<StreamConsumer, KafkaError> {
    let reader: StreamConsumer = config.tail_reader().create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, offset)?;
    reader.assign(&tpl)?;
    Ok(reader)
}

fn apply(
    state: &Mutex<HashMap<String, StoredSubscription>>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) {
    let Some(name) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
        return;
    };
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    match payload.map(serde_json::from_slice::<StoredSubscription>) {
        None => {
            state.remove(name);
        }
        Some(Ok(sub)) => {
            state.insert(name.to_owned(), sub);
        }
        Some(Err(e)) => {
            tracing::warn!(subscription = name, error = %e, "unreadable subscription record")
        }
    }
}
