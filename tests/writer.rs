//! The Kafka writer's watchdog against a real broker: a client that cannot deliver while
//! the cluster answers is replaced, and one that cannot deliver because nothing answers is
//! kept. The librdkafka failure it exists for (a client that has dropped every broker)
//! cannot be caused on demand, so the stuck client here is one pointed at a closed port:
//! from outside it looks the same, records wait and none is acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crier_kafka::{KafkaConfig, Writer};
use crier_tests::{kafka_config, records_in};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Settings for a producer that never reaches a broker: nothing listens on port 1.
fn unreachable(kafka: &KafkaConfig) -> KafkaConfig {
    KafkaConfig {
        bootstrap_servers: "127.0.0.1:1".into(),
        delivery_timeout_ms: 1_500,
        ..kafka.clone()
    }
}

#[tokio::test]
async fn a_writer_whose_client_delivers_nothing_while_kafka_answers_gets_a_new_client() {
    let kafka = kafka_config("writer-replace");
    crier_kafka::topics::ensure_topics_within(&kafka, Duration::from_secs(60))
        .await
        .unwrap();
    let stuck: FutureProducer = unreachable(&kafka).producer().create().unwrap();
    let writer = Writer::adopt(stuck, kafka.producer(), Duration::from_millis(300));

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failed = 0;
    loop {
        let record = FutureRecord::to(&kafka.events_topic)
            .key("citizen-1")
            .payload("hello");
        match writer.send(record, Duration::from_secs(1)).await {
            Ok(_) => break,
            Err((e, _)) => {
                failed += 1;
                assert!(Instant::now() < deadline, "never delivered: last error {e}");
            }
        }
    }
    assert!(failed >= 1, "the stuck client should have failed first");
    assert!(writer.replacements() >= 1);
    assert_eq!(records_in(&kafka, &kafka.events_topic), 1);
}

#[tokio::test]
async fn a_writer_keeps_its_client_while_no_broker_answers_a_new_one_either() {
    let kafka = unreachable(&kafka_config("writer-outage"));
    let stuck: FutureProducer = kafka.producer().create().unwrap();
    let writer = Writer::adopt(stuck, kafka.producer(), Duration::from_millis(300));

    let record = FutureRecord::to(&kafka.events_topic)
        .key("citizen-1")
        .payload("hello");
    assert!(writer.send(record, Duration::from_secs(1)).await.is_err());
    // Long enough for two quiet checks and the probe's 5 s wait for an answer.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(writer.replacements(), 0);
}
