//! One event as read from the events topic, shared (behind an `Arc`) by every stream that
//! delivers it, so the live reader decodes each record once per instance.

use crier_proto::v1::Event;
use rdkafka::message::Message;

/// An event and where Kafka holds it.
#[derive(Debug)]
pub struct Record {
    /// Partition of the events topic.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// The decoded event; `None` for a record that is not a Crier CloudEvent, which is
    /// stepped over (and counted) rather than stalling every subscription behind it.
    pub event: Option<Event>,
}

impl Record {
    /// Decodes a Kafka message from the events topic.
    pub fn read<M: Message>(msg: &M) -> Self {
        let event = match crier_kafka::cloudevents::decode(msg) {
            Ok(event) => Some(event),
            Err(e) => {
                metrics::counter!("crier_undecodable_records_total").increment(1);
                tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "skipping record");
                None
            }
        };
        Self {
            partition: msg.partition(),
            offset: msg.offset(),
            event,
        }
    }
}
