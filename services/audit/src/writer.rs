//! Writes audit records to Kafka in the background, in chain order.
//!
//! Services call [`Auditor::record`], which queues the entry (waiting if the queue is full,
//! so a slow audit topic slows the service rather than losing records). One task per
//! instance numbers and hashes the entries and produces them, idempotently and acks=all,
//! keyed by chain id so a chain stays in order.

use std::time::Duration;

use crier_kafka::KafkaConfig;
use futures::{StreamExt, stream::FuturesOrdered};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::record::{AuditRecord, Entry, GENESIS};

/// Numbers and hash-links records for one chain.
#[derive(Debug)]
pub struct Chain {
    id: String,
    seq: u64,
    prev: String,
}

impl Chain {
    /// A new chain.
    pub fn new(id: String) -> Self {
        Self {
            id,
            seq: 0,
            prev: GENESIS.to_owned(),
        }
    }

    /// The next record of the chain.
    pub fn next(&mut self, entry: Entry) -> AuditRecord {
        let mut record = AuditRecord {
            chain: self.id.clone(),
            seq: self.seq,
            prev: self.prev.clone(),
            time: prost_types::Timestamp::from(std::time::SystemTime::now()).to_string(),
            entry,
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        self.seq += 1;
        self.prev = record.hash.clone();
        record
    }
}

/// The handle services record through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Entry>,
}

impl Auditor {
    /// Starts the writer for `topic`. The returned task ends, after flushing, once every
    /// `Auditor` clone is dropped.
    pub fn start(
        config: &KafkaConfig,
        topic: String,
    ) -> Result<(Self, JoinHandle<()>), rdkafka::error::KafkaError> {
        let producer: FutureProducer = config.producer().create()?;
        let (tx, rx) = mpsc::channel(4096);
        let chain = Chain::new(uuid::Uuid::now_v7().to_string());
        tracing::info!(chain = %chain.id, %topic, "audit chain started");
        let task = tokio::spawn(write(producer, topic, chain, rx));
        Ok((Self { tx }, task))
    }

    /// Records `entry`. Waits while the writer is behind.
    pub async fn record(&self, entry: Entry) {
        if self.tx.send(entry).await.is_err() {
            tracing::error!("audit writer has stopped; record lost");
        }
    }
}

async fn write(
    producer: FutureProducer,
    topic: String,
    mut chain: Chain,
    mut rx: mpsc::Receiver<Entry>,
) {
    let mut in_flight = FuturesOrdered::new();
    loop {
        tokio::select! {
            entry = rx.recv(), if in_flight.len() < 1024 => {
                let Some(entry) = entry else { break };
                let record = chain.next(entry);
                let value = serde_json::to_vec(&record).unwrap_or_default();
                let producer = producer.clone();
                let (topic, key) = (topic.clone(), record.chain.clone());
                in_flight.push_back(async move {
                    let r = FutureRecord::to(&topic).key(&key).payload(&value);
                    producer.send(r, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
                });
            }
            Some(result) = in_flight.next(), if !in_flight.is_empty() => report(result),
        }
    }
    while let Some(result) = in_flight.next().await {
        report(result);
    }
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
}

fn report(result: Result<(), rdkafka::error::KafkaError>) {
    match result {
        Ok(()) => metrics::counter!("crier_audit_records_total").increment(1),
        Err(e) => {
            metrics::counter!("crier_audit_failures_total").increment(1);
            tracing::error!(error = %e, "audit record not written: the chain will show a gap");
        }
    }
}
