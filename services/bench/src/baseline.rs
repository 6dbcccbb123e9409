//! The limit: a tuned raw rdkafka producer writing the same records straight to Kafka.
//!
//! Crier's publish path can only be as fast as Kafka with Crier's durability settings, so
//! this phase writes what the producer service would write, without gRPC, validation or
//! deduplication: each event is normalised (`crier_schema::validate::normalize`) and encoded
//! with the same CloudEvents binary binding (`crier_kafka::cloudevents::encode`) through a
//! producer built from the same settings (`KafkaConfig::producer()`: idempotent, acks=all,
//! lz4, linger 2 ms). It keeps many sends in flight, as a FutureProducer must to be fast.
//! It writes to a topic of its own, created like the events topic, so no consumer reads it.
//!
//! [`latency`] uses the same producer for the floors under the latency targets: the
//! `kafka-latency` phase, whose figures are in the notes.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use crier_kafka::{KafkaConfig, cloudevents};
use futures::{StreamExt, stream::FuturesUnordered};
use hdrhistogram::Histogram;
use rdkafka::{
    ClientContext, Message, Offset, Statistics, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    message::{Header, Headers},
    producer::{FutureProducer, FutureRecord, Producer},
    statistics::Window as RdWindow,
};

use crate::{
    Plan,
    events::Pool,
    load::{self, Outcomes, Window},
};

/// Event `seq` of the pool as the producer service would write it: normalised, then
/// encoded with the CloudEvents binary binding.
fn raw_record(pool: &Pool, seq: u64) -> cloudevents::Record {
    let mut event = pool.event(seq, String::new());
    crier_schema::validate::normalize(
        &mut event,
        prost_types::Timestamp::from(std::time::SystemTime::now()),
    );
    cloudevents::encode(&event)
}

/// Most records queued in librdkafka at once (its own limit is 100,000 messages).
const MAX_IN_FLIGHT: usize = 50_000;

/// Runs the baseline against `kafka` (whose `events_topic` is the baseline's own topic) and
/// returns acknowledged records per second.
pub(crate) async fn run(kafka: &KafkaConfig, plan: &Plan, pool: &Pool) -> anyhow::Result<f64> {
    crier_kafka::topics::ensure_topics(kafka).await?;
    let producer: FutureProducer = kafka.producer().create()?;
    let outcomes = Outcomes::default();
    let window = Window::starting_now(plan.warmup, plan.throughput);
    let mut in_flight = FuturesUnordered::new();
    let mut seq = 0u64;
    let settle = |r, outcomes: &Outcomes| match r {
        Ok(Ok(_)) => outcomes.ok(&window, Instant::now(), 1),
        Ok(Err((e, _))) => outcomes.error(1, || format!("{e}")),
        Err(_) => outcomes.error(1, || "delivery future cancelled".into()),
    };
    while !window.over() {
        // Enqueue a slice, then take whatever has been acknowledged, so neither side starves.
        for _ in 0..256 {
            if in_flight.len() >= MAX_IN_FLIGHT {
                break;
            }
            let record = raw_record(pool, seq);
            seq += 1;
            let future_record = FutureRecord::to(&kafka.events_topic)
                .key(&record.key)
                .payload(&record.value)
                .headers(record.headers);
            match producer.send_result(future_record) {
                Ok(delivery) => in_flight.push(delivery),
                // librdkafka's queue is full: wait for acknowledgements below.
                Err(_) => break,
            }
        }
        if in_flight.len() >= MAX_IN_FLIGHT / 2
            && let Some(r) = in_flight.next().await
        {
            settle(r, &outcomes);
        }
        while let Some(Some(r)) = futures::FutureExt::now_or_never(in_flight.next()) {
            settle(r, &outcomes);
        }
        tokio::task::yield_now().await;
    }
    while let Some(r) = in_flight.next().await {
        settle(r, &outcomes);
    }
    let flushed =
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30))).await?;
    flushed?;
    eprintln!("bench: baseline: {}", outcomes.summary());
    Ok(window.per_second(outcomes.counted.load(Ordering::Relaxed)))
}

/// What the raw latency phase measured.
pub(crate) struct RawLatency {
    /// Schedule to Kafka's acknowledgement (the limit for unary publish latency).
    pub(crate) acked: Histogram<u64>,
    /// Schedule to receipt by one raw reader (the limit for end-to-end latency, without
    /// fan-out), and the records it had not received by the end of the drain; `None`
    /// when run without the reader.
    pub(crate) read: Option<(Histogram<u64>, u64)>,
    pub(crate) outcomes: Arc<Outcomes>,
    /// librdkafka's own account of where the producer's time went, second by second.
    pub(crate) client: ClientSeconds,
}

/// Per-second windows from librdkafka's statistics (`statistics.interval.ms`): they say
/// whether an acknowledgement's tail was spent in the broker's round trip or in the client
/// before the request went out. Each entry is one second's (p99, max), in microseconds.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClientSeconds {
    /// From sending a produce request to its response (`rtt`): the broker and the network.
    rtt: Vec<(i64, i64)>,
    /// From `send` to the record being put in a request (`int_latency`): linger and queueing.
    queued: Vec<(i64, i64)>,
    /// From a request being built to its being written to the socket (`outbuf_latency`).
    outbuf: Vec<(i64, i64)>,
}

impl ClientSeconds {
    fn add(&mut self, stats: &Statistics) {
        let take = |list: &mut Vec<(i64, i64)>, w: &Option<RdWindow>| {
            if let Some(w) = w.as_ref().filter(|w| w.cnt > 0) {
                list.push((w.p99, w.max));
            }
        };
        // Bootstrap entries have node id -1 and carry no produce traffic.
        for broker in stats.brokers.values().filter(|b| b.nodeid >= 0) {
            take(&mut self.rtt, &broker.rtt);
            take(&mut self.queued, &broker.int_latency);
            take(&mut self.outbuf, &broker.outbuf_latency);
        }
    }

    /// "broker round trip p99 median 2.1 / worst 40.2 ms, max 61.0 ms; ..." over the seconds
    /// seen; the count of seconds is the round trip's, the window every produce request fills.
    pub(crate) fn summary(&self) -> String {
        let one = |name: &str, list: &[(i64, i64)]| {
            let mut p99: Vec<i64> = list.iter().map(|w| w.0).collect();
            p99.sort_unstable();
            let max = list.iter().map(|w| w.1).max();
            match (p99.get(p99.len() / 2), p99.last(), max) {
                (Some(median), Some(worst), Some(max)) => format!(
                    "{name} p99 median {:.1} / worst {:.1} ms, max {:.1} ms",
                    *median as f64 / 1e3,
                    *worst as f64 / 1e3,
                    max as f64 / 1e3
                ),
                _ => format!("{name} not reported"),
            }
        };
        format!(
            "librdkafka's per-second windows ({} seconds, warm-up included): {}; {}; {}",
            self.rtt.len(),
            one("broker round trip", &self.rtt),
            one("queued in the client before a request", &self.queued),
            one("request waiting for the socket", &self.outbuf),
        )
    }
}

/// Collects [`ClientSeconds`] from the producer's statistics callback.
#[derive(Debug, Default, Clone)]
struct StatsContext(Arc<Mutex<ClientSeconds>>);

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(&statistics);
    }
}

/// Header carrying each record's scheduled instant, in ns after the phase's base instant.
const SCHEDULED_HEADER: &str = "bench-scheduled-ns";

/// The limits for unary and end-to-end latency: the same raw producer sending one record at
/// each scheduled instant of an open loop at `plan.rate`, timed from the schedule to Kafka's
/// acknowledgement (as [`crate::unary::latency`] times a Crier publish), and to its receipt
/// by a raw reader with the live reader's settings (`KafkaConfig::reader()`), as the e2e
/// phase times a delivery. Nothing Crier adds (gRPC, TLS, checks, fan-out, audit) is in
/// either, so Crier's figures cannot be lower on the same machine and broker.
///
/// The reader runs only when `read_back` is set: its fetches, one per few records, take
/// Kafka from about 40% of a core to 75%, which the unary latency phase (no consumer
/// running) does not pay, so the floor for unary is measured without it.
pub(crate) async fn latency(
    kafka: &KafkaConfig,
    plan: &Plan,
    pool: &Pool,
    read_back: bool,
) -> anyhow::Result<RawLatency> {
    crier_kafka::topics::ensure_topics(kafka).await?;
    let context = StatsContext::default();
    let producer: FutureProducer<StatsContext> = kafka
        .producer()
        .set("statistics.interval.ms", "1000")
        .create_with_context(context.clone())?;
    let outcomes = Arc::new(Outcomes::default());
    let histogram = Arc::new(Mutex::new(load::histogram()));
    let window = Window::starting_now(plan.warmup, plan.latency);
    let base = Instant::now();
    let total = (plan.rate * (plan.warmup + plan.latency).as_secs_f64()).round() as u64;
    let reader = read_back.then(|| {
        tokio::spawn(read_all(
            kafka.clone(),
            base,
            window,
            total,
            window.until + DRAIN,
        ))
    });
    let task = {
        let (producer, topic) = (producer.clone(), kafka.events_topic.clone());
        let (pool, outcomes, histogram) = (pool.clone(), outcomes.clone(), histogram.clone());
        move |seq: u64, scheduled: Instant| {
            let record = raw_record(&pool, seq);
            let at = (scheduled - base).as_nanos().to_string();
            let headers = record.headers.insert(Header {
                key: SCHEDULED_HEADER,
                value: Some(at.as_bytes()),
            });
            let sent = producer
                .send_result(
                    FutureRecord::to(&topic)
                        .key(&record.key)
                        .payload(&record.value)
                        .headers(headers),
                )
                .map_err(|(e, _)| e.to_string());
            let (outcomes, histogram) = (outcomes.clone(), histogram.clone());
            async move {
                let acked = match sent {
                    Ok(delivery) => delivery.await,
                    Err(e) => return outcomes.error(1, || e),
                };
                match acked {
                    Ok(Ok(_)) => {
                        let done = Instant::now();
                        outcomes.ok(&window, done, 1);
                        if scheduled >= window.measure_from {
                            let mut h = histogram.lock().unwrap_or_else(|p| p.into_inner());
                            load::record(&mut h, done - scheduled);
                        }
                    }
                    Ok(Err((e, _))) => outcomes.error(1, || format!("{e}")),
                    Err(_) => outcomes.error(1, || "delivery future cancelled".into()),
                }
            }
        }
    };
    load::open_loop(plan.rate, plan.warmup + plan.latency, task).await?;
    let flushed =
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30))).await?;
    flushed?;
    let read = match reader {
        Some(reader) => {
            let (read, received) = reader.await??;
            Some((read, total.saturating_sub(received)))
        }
        None => None,
    };
    eprintln!("bench: raw Kafka latency: {}", outcomes.summary());
    let acked = histogram.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let client = context.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(RawLatency {
        acked,
        read,
        outcomes,
        client,
    })
}

/// Longest the raw reader waits for the last records after the schedule ends.
const DRAIN: Duration = Duration::from_secs(10);

/// Reads `kafka.events_topic` from the beginning until `total` records have arrived or
/// `deadline` passes; returns the schedule-to-receipt histogram of the records scheduled in
/// `window`, and how many records arrived.
async fn read_all(
    kafka: KafkaConfig,
    base: Instant,
    window: Window,
    total: u64,
    deadline: Instant,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let reader: StreamConsumer = kafka.reader().create()?;
    let mut tpl = TopicPartitionList::new();
    for partition in 0..kafka.partitions {
        tpl.add_partition_offset(&kafka.events_topic, partition, Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    let mut histogram = load::histogram();
    let mut received = 0u64;
    while received < total {
        let wait = deadline.saturating_duration_since(Instant::now());
        let Ok(message) = tokio::time::timeout(wait, reader.recv()).await else {
            break;
        };
        let message = message?;
        let now = Instant::now();
        received += 1;
        let scheduled = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == SCHEDULED_HEADER))
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<u64>().ok())
            .map(|ns| base + Duration::from_nanos(ns));
        if let Some(scheduled) = scheduled
            && scheduled >= window.measure_from
        {
            load::record(&mut histogram, now - scheduled);
        }
    }
    Ok((histogram, received))
}

#[cfg(test)]
mod tests {
    use super::ClientSeconds;

    #[test]
    fn client_summary_gives_the_median_and_worst_second_and_says_what_was_not_reported() {
        let seconds = ClientSeconds {
            rtt: vec![(9_000, 12_000), (1_000, 1_500), (2_000, 3_000)],
            queued: vec![(500, 700)],
            outbuf: vec![],
        };
        let summary = seconds.summary();
        assert!(summary.contains("(3 seconds"), "{summary}");
        assert!(
            summary.contains("broker round trip p99 median 2.0 / worst 9.0 ms, max 12.0 ms"),
            "{summary}"
        );
        assert!(
            summary.contains("before a request p99 median 0.5 / worst 0.5 ms, max 0.7 ms"),
            "{summary}"
        );
        assert!(
            summary.contains("request waiting for the socket not reported"),
            "{summary}"
        );
    }
}
