//! Writes audit records to Kafka in the background, in chain order.
//!
//! Services call [`Auditor::record`], which queues the entry (waiting if the queue is full,
//! so a slow audit topic slows the service rather than losing records). One task per
//! instance numbers and hashes the entries and produces them, idempotently and acks=all,
//! keyed by chain id so a chain stays in order.
//!
//! Records queued together go out as one Kafka message, one JSON record per line (up to
//! [`MAX_PER_MESSAGE`] records and [`MAX_MESSAGE_BYTES`]): a busy consumer service audits
//! over 100,000 deliveries a second, and a Kafka record each would cost more than the
//! deliveries themselves. Each record is still hashed and chained on its own, so
//! verification does not depend on how they were packed. The byte bound matters because a
//! record can name hundreds of events (a batch delivered or published): 512 of those
//! exceeded the broker's largest message, and Kafka refused them.

use std::time::Duration;

use crier_kafka::Writer;
use futures::{StreamExt, stream::FuturesOrdered};
use rdkafka::producer::FutureRecord;
use tokio::{sync::mpsc, task::JoinHandle};

use sha2::Digest;

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

    /// The next record of the chain, exactly as the writer stores it.
    pub fn next(&mut self, entry: Entry) -> AuditRecord {
        let mut line = Vec::new();
        self.append(entry, &now(), &mut line);
        serde_json::from_slice(&line).expect("the writer's own JSON reads back")
    }

    /// Appends the next record to `out` as one JSON line. Serialises once: the hash is
    /// taken over the JSON with an empty `hash` (exactly what [`AuditRecord::compute_hash`]
    /// hashes), then written into it.
    fn append(&mut self, entry: Entry, time: &str, out: &mut Vec<u8>) {
        let record = AuditRecord {
            chain: self.id.clone(),
            seq: self.seq,
            prev: std::mem::take(&mut self.prev),
            time: time.to_owned(),
            entry,
            hash: String::new(),
        };
        let json = serde_json::to_vec(&record).unwrap_or_default();
        let hash = hex::encode(sha2::Sha256::digest(&json));
        // `hash` is the last field, so the JSON ends `"hash":""}`.
        debug_assert!(json.ends_with(br#""hash":""}"#));
        out.extend_from_slice(&json[..json.len() - 2]);
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(b"\"}\n");
        self.seq += 1;
        self.prev = hash;
    }
}

fn now() -> String {
    prost_types::Timestamp::from(std::time::SystemTime::now()).to_string()
}

/// Most records packed into one Kafka message.
pub const MAX_PER_MESSAGE: usize = 512;

/// How long the writer gathers records before it packs them, after the first arrives.
/// librdkafka sends each partition its own produce request, and the audit topic is one
/// partition: packing whatever had queued meant an audit request to Kafka every few
/// milliseconds from each instance, about a third of all produce requests at 500 events/s
/// (PERFORMANCE.md). An audit record is not waited on, so the wait costs nothing else.
pub const GATHER: Duration = Duration::from_millis(20);

/// Most bytes of records packed into one Kafka message, well under Kafka's default largest
/// message (1 MB) even before compression. A single larger record goes alone.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Appends `entries` to `chain` and packs them, in chain order, into Kafka message values
/// of at most [`MAX_MESSAGE_BYTES`] each (a record bigger than that alone), with how many
/// records each holds.
fn pack(
    chain: &mut Chain,
    entries: impl Iterator<Item = Entry>,
    time: &str,
) -> Vec<(Vec<u8>, usize)> {
    let mut messages = Vec::new();
    let (mut value, mut n) = (Vec::new(), 0);
    let mut line = Vec::new();
    for entry in entries {
        line.clear();
        chain.append(entry, time, &mut line);
        if n > 0 && value.len() + line.len() > MAX_MESSAGE_BYTES {
            messages.push((std::mem::take(&mut value), n));
            n = 0;
        }
        value.extend_from_slice(&line);
        n += 1;
    }
    if n > 0 {
        messages.push((value, n));
    }
    messages
}

/// The handle services record through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Entry>,
}

impl Auditor {
    /// Starts the writer for `topic`, through `producer` (made from
    /// `KafkaConfig::producer`, so idempotent and acks=all). Sharing the service's own
    /// producer lets audit records ride in the same Kafka requests as the events they are
    /// about. The returned task ends, after flushing, once every `Auditor` clone is dropped.
    pub fn start(producer: Writer, topic: String) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4096);
        let chain = Chain::new(uuid::Uuid::now_v7().to_string());
        tracing::info!(chain = %chain.id, %topic, "audit chain started");
        let task = tokio::spawn(write(producer, topic, chain, rx));
        (Self { tx }, task)
    }

    /// Records `entry`. Waits while the writer is behind, and only then: a send that would
    /// not wait is made without an await point, so a caller that must queue a record before
    /// its next step (the live reader, before it hands a batch to the streams) is not sent
    /// to the back of the runtime's queue by tokio's cooperative budget.
    pub async fn record(&self, entry: Entry) {
        let entry = match self.tx.try_send(entry) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(entry)) => entry,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit writer has stopped; record lost");
                return;
            }
        };
        if self.tx.send(entry).await.is_err() {
            tracing::error!("audit writer has stopped; record lost");
        }
    }

    /// Records `entries`, in order, waiting once for queue space for all of them rather
    /// than once each (a batch publish audits hundreds of events at a time). Each entry is
    /// still its own record in the chain.
    pub async fn record_many(&self, entries: Vec<Entry>) {
        let mut entries = entries.into_iter();
        while entries.len() > 0 {
            // The channel cannot reserve more than its capacity at once.
            let n = entries.len().min(self.tx.max_capacity());
            let Ok(permits) = self.tx.reserve_many(n).await else {
                tracing::error!(
                    records = entries.len(),
                    "audit writer has stopped; records lost"
                );
                return;
            };
            for (permit, entry) in permits.zip(&mut entries) {
                permit.send(entry);
            }
        }
    }
}

async fn write(producer: Writer, topic: String, mut chain: Chain, mut rx: mpsc::Receiver<Entry>) {
    let mut in_flight = FuturesOrdered::new();
    let mut entries = Vec::with_capacity(MAX_PER_MESSAGE);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut entries, MAX_PER_MESSAGE), if in_flight.len() < 64 => {
                if n == 0 {
                    break;
                }
                gather(&mut rx, &mut entries).await;
                let time = now();
                for (value, n) in pack(&mut chain, entries.drain(..), &time) {
                    let producer = producer.clone();
                    let (topic, key) = (topic.clone(), chain.id.clone());
                    in_flight.push_back(async move {
                        let r = FutureRecord::to(&topic).key(&key).payload(&value);
                        let sent = producer.send(r, Duration::from_secs(30)).await;
                        (n, sent.map(|_| ()).map_err(|(e, _)| e))
                    });
                }
            }
            Some((n, result)) = in_flight.next(), if !in_flight.is_empty() => report(n, result),
        }
    }
    while let Some((n, result)) = in_flight.next().await {
        report(n, result);
    }
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
}

/// Adds to `entries` what arrives within [`GATHER`] of now, up to [`MAX_PER_MESSAGE`].
async fn gather(rx: &mut mpsc::Receiver<Entry>, entries: &mut Vec<Entry>) {
    let until = tokio::time::Instant::now() + GATHER;
    while entries.len() < MAX_PER_MESSAGE {
        let room = MAX_PER_MESSAGE - entries.len();
        match tokio::time::timeout_at(until, rx.recv_many(entries, room)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn report(n: usize, result: Result<(), rdkafka::error::KafkaError>) {
    match result {
        Ok(()) => metrics::counter!("crier_audit_records_total").increment(n as u64),
        Err(e) => {
            metrics::counter!("crier_audit_failures_total").increment(n as u64);
            tracing::error!(error = %e, records = n, "audit records not written: the chain will show a gap");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, chain::verify};

    #[test]
    fn records_naming_many_events_are_split_across_messages_under_the_byte_bound() {
        let mut chain = Chain::new("c1".into());
        let big = |i: usize| Entry {
            action: Some(Action::Deliver),
            events: (0..250)
                .map(|e| crate::EventRef {
                    event_id: format!("{i}-{e}"),
                    subject: "psn:0123456789abcdef".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let messages = pack(&mut chain, (0..40).map(big), "2026-11-27T00:00:00Z");
        assert!(messages.len() > 1, "{} message(s)", messages.len());
        assert!(messages.iter().all(|(v, _)| v.len() <= MAX_MESSAGE_BYTES));
        let records: Vec<AuditRecord> = messages
            .iter()
            .flat_map(|(v, _)| v.split(|b| *b == b'\n').filter(|l| !l.is_empty()))
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let counted: usize = messages.iter().map(|(_, n)| n).sum();
        assert_eq!((records.len(), counted), (40, 40));
        assert_eq!(verify(&records).map(|s| s.records), Ok(40));
    }

    #[test]
    fn records_packed_into_one_message_each_verify_on_their_own() {
        let mut chain = Chain::new("c1".into());
        let mut message = Vec::new();
        for i in 0..3 {
            let entry = Entry {
                action: Some(Action::Deliver),
                subject: format!("psn:\"{i}\"\n"),
                ..Default::default()
            };
            chain.append(entry, "2026-11-27T00:00:00Z", &mut message);
        }
        let records: Vec<AuditRecord> = message
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].entry.subject, "psn:\"2\"\n");
        assert_eq!(verify(&records).map(|s| s.records), Ok(3));
    }

    #[tokio::test]
    async fn record_many_queues_every_entry_in_order_even_beyond_the_queue_capacity() {
        let (tx, mut rx) = mpsc::channel(2);
        let auditor = Auditor { tx };
        let entries: Vec<Entry> = (0..5)
            .map(|i| Entry {
                event_id: i.to_string(),
                ..Default::default()
            })
            .collect();
        let reader = tokio::spawn(async move {
            let mut ids = Vec::new();
            while let Some(entry) = rx.recv().await {
                ids.push(entry.event_id);
            }
            ids
        });
        auditor.record_many(entries).await;
        drop(auditor);
        assert_eq!(reader.await.unwrap(), ["0", "1", "2", "3", "4"]);
    }
}
