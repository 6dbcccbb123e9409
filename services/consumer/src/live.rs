//! The one live reader per consumer-service instance, and Kafka metadata look-ups.
//!
//! Every stream that is up to date takes its events from this reader, so an instance reads
//! each record from Kafka once however many subscriptions it serves (read amplification 1).
//! Records go out in indexed batches (see `batch.rs`): what arrives within
//! `[subscriptions] live_batch_ms` of the first record, up to [`MAX_BATCH`]; the router (`route.rs`) hands each batch only to
//! the streams it has records for. A stream that is behind (replaying, resuming after an
//! outage, or too slow for its queue) reads on its own through a catch-up reader until it
//! has caught up, then rejoins; see `session.rs`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use crier_audit::{Action, Auditor, Entry, EventRef};
use crier_kafka::KafkaConfig;
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    error::KafkaError,
};
use tokio_util::sync::CancellationToken;

use crate::{
    batch::Batch,
    read_errors::ReadErrors,
    record::Record,
    route::{Feed, Router},
    stall,
};

const META_TIMEOUT: Duration = Duration::from_secs(10);

/// Most records in one live batch.
pub const MAX_BATCH: usize = 256;

/// Low and high watermark of one partition: the first offset still held, and the next
/// offset to be written.
pub type Watermarks = BTreeMap<i32, (i64, i64)>;

/// The shared live reader.
pub struct Live {
    router: Arc<Router>,
    meta: Arc<BaseConsumer>,
    topic: String,
    partitions: Vec<i32>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Live {
    /// Starts reading the events topic at its current end and routing each record,
    /// until `shutdown`.
    pub async fn start(
        config: &KafkaConfig,
        buffer: usize,
        coalesce: Duration,
        auditor: Auditor,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, KafkaError> {
        let meta: Arc<BaseConsumer> = Arc::new(config.reader().create()?);
        let topic = config.events_topic.clone();
        let partitions = {
            let (meta, topic) = (meta.clone(), topic.clone());
            tokio::task::spawn_blocking(move || partitions_of(&meta, &topic))
                .await
                .map_err(|_| KafkaError::Canceled)??
        };
        // Start exactly at the high watermarks, so any stream opened from here on can tell
        // which records the live reader will carry.
        let start = watermarks_of(meta.clone(), topic.clone(), partitions.clone()).await?;
        let mut position: BTreeMap<i32, i64> = start.iter().map(|(p, (_, h))| (*p, *h)).collect();
        // `buffer` counts records; a stream's queue holds batches, mostly far from full.
        let router = Router::new(position.clone(), (buffer / 16).max(64));
        let live = Arc::new(Self {
            router: router.clone(),
            meta,
            topic,
            partitions,
        });
        let mut reader = live.reader_at(config, &position)?;
        let (config, watched) = (config.clone(), Arc::clone(&live));
        tokio::spawn(async move {
            let mut errors = ReadErrors::new("live", None);
            let mut check = tokio::time::interval(stall::CHECK_EVERY);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut progress = stall::Progress::default();
            // From each record's Kafka timestamp to its batch reaching the streams.
            let read_lag = metrics::histogram!("crier_live_read_lag_seconds");
            loop {
                let first = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = check.tick() => None,
                    msg = reader.recv() => Some(msg),
                };
                let Some(first) = first else {
                    // The high watermarks come through another client, so a reader that
                    // has lost its brokers cannot hide its own stall.
                    let Ok(marks) = watched.watermarks().await else {
                        continue;
                    };
                    let high = marks.iter().map(|(p, (_, h))| (*p, *h)).collect();
                    if progress.stalled(&position, &high) {
                        tracing::warn!(
                            ?position,
                            ?high,
                            "live reader stalled; replacing its Kafka client"
                        );
                        metrics::counter!("crier_live_reader_restarts_total").increment(1);
                        match watched.reader_at(&config, &position) {
                            Ok(fresh) => {
                                let stale = std::mem::replace(&mut reader, fresh);
                                tokio::task::spawn_blocking(move || drop(stale));
                            }
                            Err(e) => tracing::error!(error = %e, "cannot replace the live reader"),
                        }
                    }
                    continue;
                };
                let mut batch = Vec::new();
                let close_at = tokio::time::Instant::now() + coalesce;
                let mut next = Some(first);
                while let Some(msg) = next.take() {
                    match msg {
                        Ok(msg) => {
                            metrics::counter!("crier_live_bytes_total").increment(
                                rdkafka::Message::payload(&msg).map_or(0, <[u8]>::len) as u64,
                            );
                            let record = Record::read(&msg);
                            note_skipped(&position, &record);
                            position.insert(record.partition, record.offset + 1);
                            batch.push(record);
                        }
                        Err(KafkaError::PartitionEOF(_)) => {}
                        Err(e) => {
                            // Not waited on: see `read_errors` for why.
                            errors.note(&e);
                            break;
                        }
                    }
                    if batch.len() < MAX_BATCH {
                        next = tokio::time::timeout_at(close_at, reader.recv()).await.ok();
                    }
                }
                if !batch.is_empty() {
                    metrics::counter!("crier_live_records_total").increment(batch.len() as u64);
                    metrics::counter!("crier_live_batches_total").increment(1);
                    // Queued before any stream can deliver from the batch, so the chain
                    // describes each event before a delivery names it by position.
                    if let Some(read) = read_record(&watched.topic, &batch) {
                        auditor.record(read).await;
                    }
                    let now = crate::record::now_ms();
                    for written in batch.iter().filter_map(|r| r.written_ms) {
                        read_lag.record(crate::record::seconds_since(written, now));
                    }
                    router.dispatch(Arc::new(Batch::new(batch)));
                }
            }
            router.close();
            tokio::task::spawn_blocking(move || drop(reader));
        });
        Ok(live)
    }

    /// A new Kafka client reading the events topic from `position` (next offset per
    /// partition).
    fn reader_at(
        &self,
        config: &KafkaConfig,
        position: &BTreeMap<i32, i64>,
    ) -> Result<StreamConsumer, KafkaError> {
        let reader: StreamConsumer = config.reader().create()?;
        let mut tpl = TopicPartitionList::new();
        for (p, next) in position {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*next))?;
        }
        reader.assign(&tpl)?;
        Ok(reader)
    }

    /// The batches, from now on, that have records about `areas` (every batch when empty).
    pub fn subscribe(&self, areas: &[String]) -> Feed {
        self.router.register(areas)
    }

    /// The events topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partitions of the events topic, as found at start-up.
    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// Current watermarks of every partition.
    pub async fn watermarks(&self) -> Result<Watermarks, KafkaError> {
        watermarks_of(
            self.meta.clone(),
            self.topic.clone(),
            self.partitions.clone(),
        )
        .await
    }

    /// For each partition, the first offset whose timestamp is at or after `millis`, or the
    /// high watermark when there is none.
    pub async fn offsets_for_time(&self, millis: i64) -> Result<BTreeMap<i32, i64>, KafkaError> {
        let marks = self.watermarks().await?;
        let (meta, topic, partitions) = (
            self.meta.clone(),
            self.topic.clone(),
            self.partitions.clone(),
        );
        let found = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(millis))?;
            }
            meta.offsets_for_times(tpl, META_TIMEOUT)
        })
        .await
        .map_err(|_| KafkaError::Canceled)??;
        Ok(found
            .elements()
            .iter()
            .map(|e| {
                let high = marks.get(&e.partition()).map_or(0, |m| m.1);
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => high,
                };
                (e.partition(), offset)
            })
            .collect())
    }
}

/// The `Read` audit record of a live batch: what each event is, whom it is about, and
/// where Kafka holds it, once per instance however many streams then receive it.
/// `None` when no record of the batch is a Crier event.
fn read_record(topic: &str, batch: &[Record]) -> Option<Entry> {
    let events: Vec<EventRef> = batch
        .iter()
        .filter_map(|rec| {
            let event = rec.event.as_ref()?;
            Some(EventRef {
                event_id: event.id.clone(),
                event_type: event.r#type.clone(),
                subject: event.subject.clone(),
                agreements: Vec::new(),
                position: format!("{}:{}", rec.partition, rec.offset),
            })
        })
        .collect();
    (!events.is_empty()).then(|| Entry {
        action: Some(Action::Read),
        detail: topic.to_owned(),
        events,
        ..Default::default()
    })
}

/// Says so when the live reader moves past offsets it never read (retention deleted them
/// during a long stall, or the client reset its position). Streams step over such a gap
/// like any other above where their feed started, so this log is the only trace of it.
fn note_skipped(position: &BTreeMap<i32, i64>, record: &Record) {
    if let Some(&expected) = position.get(&record.partition)
        && record.offset > expected
    {
        metrics::counter!("crier_live_skipped_offsets_total")
            .increment((record.offset - expected) as u64);
        tracing::warn!(
            partition = record.partition,
            from = expected,
            to = record.offset,
            "the live reader skipped offsets it never read; any events there were not delivered"
        );
    }
}

async fn watermarks_of(
    meta: Arc<BaseConsumer>,
    topic: String,
    partitions: Vec<i32>,
) -> Result<Watermarks, KafkaError> {
    tokio::task::spawn_blocking(move || {
        partitions
            .iter()
            .map(|p| Ok((*p, meta.fetch_watermarks(&topic, *p, META_TIMEOUT)?)))
            .collect()
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}

fn partitions_of(meta: &BaseConsumer, topic: &str) -> Result<Vec<i32>, KafkaError> {
    let md = meta.fetch_metadata(Some(topic), META_TIMEOUT)?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    Ok(partitions)
}
