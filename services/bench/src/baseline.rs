//! The limit: a tuned raw rdkafka producer writing the same records straight to Kafka.
//!
//! Crier's publish path can only be as fast as Kafka with Crier's durability settings, so
//! this phase writes what the producer service would write, without gRPC, validation or
//! deduplication: each event is normalised (`crier_schema::validate::normalize`) and encoded
//! with the same CloudEvents binary binding (`crier_kafka::cloudevents::encode`) through a
//! producer built from the same settings (`KafkaConfig::producer()`: idempotent, acks=all,
//! lz4, linger 2 ms). It keeps many sends in flight, as a FutureProducer must to be fast.
//! It writes to a topic of its own, created like the events topic, so no consumer reads it.

use std::{sync::atomic::Ordering, time::Instant};

use crier_kafka::{KafkaConfig, cloudevents};
use futures::{StreamExt, stream::FuturesUnordered};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::{
    Plan,
    events::Pool,
    load::{Outcomes, Window},
};

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
            let mut event = pool.event(seq, String::new());
            seq += 1;
            crier_schema::validate::normalize(
                &mut event,
                prost_types::Timestamp::from(std::time::SystemTime::now()),
            );
            let record = cloudevents::encode(&event);
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
        tokio::task::spawn_blocking(move || producer.flush(std::time::Duration::from_secs(30)))
            .await?;
    flushed?;
    eprintln!("bench: baseline: {}", outcomes.summary());
    Ok(window.per_second(outcomes.counted.load(Ordering::Relaxed)))
}
