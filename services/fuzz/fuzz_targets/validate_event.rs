//! Fuzzes what the producer does with a published event: the envelope arrives as protobuf
//! bytes (`crier.v1.Event`), is checked by `crier_schema::validate::validate_event` with the
//! producer's default size limit, normalised, and written to Kafka through the CloudEvents
//! binary binding. So, for any bytes:
//!
//! - decoding and validation never panic;
//! - an event that passes validation survives `cloudevents::encode` and `decode` (through an
//!   rdkafka `OwnedMessage`, as the consumer reads it) unchanged: what a publisher was told
//!   is stored is what subscribers are given.
#![no_main]

use std::sync::LazyLock;

use crier_proto::v1::Event;
use crier_schema::{
    Registry,
    validate::{normalize, validate_event},
};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use rdkafka::{Timestamp, message::OwnedMessage};

/// The producer's default `limits.max_event_bytes`.
const MAX_EVENT_BYTES: usize = 256 * 1024;

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fuzz_target!(|data: &[u8]| {
    let Ok(mut event) = Event::decode(data) else {
        return;
    };
    if validate_event(&REGISTRY, &event, MAX_EVENT_BYTES).is_err() {
        return;
    }
    // As the producer does after validation; a fixed clock keeps runs reproducible.
    normalize(
        &mut event,
        prost_types::Timestamp {
            seconds: 1_780_000_000,
            nanos: 0,
        },
    );
    let record = crier_kafka::cloudevents::encode(&event);
    assert_eq!(record.key, event.partition_key.as_bytes());
    let msg = OwnedMessage::new(
        Some(record.value),
        Some(record.key),
        "crier.events.v1".into(),
        Timestamp::NotAvailable,
        0,
        0,
        Some(record.headers),
    );
    let back = crier_kafka::cloudevents::decode(&msg).unwrap_or_else(|e| {
        panic!("a valid event does not decode from its Kafka record: {e}\nevent: {event:?}")
    });
    assert_eq!(back, event, "the Kafka record changed a valid event");
});
