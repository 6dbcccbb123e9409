//! One event as read from the events topic, shared (behind an `Arc`) by every stream that
//! delivers it, so the live reader decodes each record once per instance, and each field
//! set an agreement allows is encoded once per record, not once per stream.

use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use crier_agreements::{fields::FieldTree, minimise::minimise};
use crier_proto::v1::Event;
use crier_schema::Registry;
use prost::Message as _;
use rdkafka::message::Message;

/// An event and where Kafka holds it.
#[derive(Debug)]
pub struct Record {
    /// Partition of the events topic.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// `<partition>:<offset>`: what a subscriber acknowledges it by. Made once here rather
    /// than for each of the streams that deliver the record.
    pub ack_id: String,
    /// The decoded event; `None` for a record that is not a Crier CloudEvent, which is
    /// stepped over (and counted) rather than stalling every subscription behind it.
    pub event: Option<Event>,
    /// The record's Kafka timestamp (the producer service's send time), in Unix
    /// milliseconds: what delivery lag is measured from.
    pub written_ms: Option<i64>,
    /// The whole event, encoded: what a subscriber entitled to every field receives.
    whole: OnceLock<Bytes>,
    /// The event encoded with its payload minimised to each field set delivered so far.
    minimised: Mutex<Vec<(FieldTree, Bytes)>>,
}

impl Record {
    /// A record holding `event`.
    pub fn new(partition: i32, offset: i64, event: Option<Event>) -> Self {
        Self {
            partition,
            offset,
            ack_id: format!("{partition}:{offset}"),
            event,
            written_ms: None,
            whole: OnceLock::new(),
            minimised: Mutex::new(Vec::new()),
        }
    }

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
            written_ms: msg.timestamp().to_millis(),
            ..Self::new(msg.partition(), msg.offset(), event)
        }
    }

    /// The event's protobuf encoding with only `fields` of its payload (see
    /// `crier_agreements::minimise`); `None` for a record without an event. Made on first
    /// use and shared after: every stream entitled to the same fields gets the same bytes.
    pub fn encoded(&self, registry: &Registry, fields: &FieldTree) -> Option<Bytes> {
        let event = self.event.as_ref()?;
        if *fields == FieldTree::All {
            return Some(
                self.whole
                    .get_or_init(|| event.encode_to_vec().into())
                    .clone(),
            );
        }
        let mut made = self.minimised.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, bytes)) = made.iter().find(|(f, _)| f == fields) {
            return Some(bytes.clone());
        }
        let mut minimised = event.clone();
        minimised.data = minimise(registry, &event.r#type, &event.data, fields);
        let bytes = Bytes::from(minimised.encode_to_vec());
        made.push((fields.clone(), bytes.clone()));
        Some(bytes)
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Seconds from `written_ms` to `now_ms`; never negative (the clocks of the producer and
/// the consumer may differ a little).
pub fn seconds_since(written_ms: i64, now_ms: i64) -> f64 {
    (now_ms - written_ms).max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crier_proto::events::v1::{DeathRegistered, PersonIdentifiers, PersonName};

    use super::*;

    #[test]
    fn lag_is_in_seconds_and_never_negative() {
        assert_eq!(seconds_since(1_000, 1_250), 0.25);
        assert_eq!(seconds_since(2_000, 1_990), 0.0);
    }

    fn death() -> Event {
        let payload = DeathRegistered {
            registration_id: "R-1".into(),
            name: Some(PersonName {
                given_names: vec!["Ada".into()],
                family_name: "Lovelace".into(),
            }),
            identifiers: Some(PersonIdentifiers {
                nhs_number: "9434765919".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Event {
            id: "e-1".into(),
            r#type: "crier.events.v1.DeathRegistered".into(),
            data: payload.encode_to_vec(),
            ..Default::default()
        }
    }

    fn only(field: &str) -> FieldTree {
        FieldTree::Some(BTreeMap::from([(field.to_owned(), FieldTree::All)]))
    }

    #[test]
    fn each_field_set_is_encoded_once_and_holds_only_its_fields() {
        let registry = Registry::new();
        let record = Record::new(0, 7, Some(death()));
        let whole = record.encoded(&registry, &FieldTree::All).unwrap();
        assert_eq!(Event::decode(whole.clone()).unwrap(), death());
        // The same bytes, not a copy, for the next stream entitled to everything.
        let again = record.encoded(&registry, &FieldTree::All).unwrap();
        assert_eq!(whole.as_ptr(), again.as_ptr());

        let narrow = record.encoded(&registry, &only("registration_id")).unwrap();
        let event = Event::decode(narrow.clone()).unwrap();
        let payload = DeathRegistered::decode(event.data.as_slice()).unwrap();
        assert_eq!(payload.registration_id, "R-1");
        assert_eq!((payload.name, payload.identifiers), (None, None));
        assert_eq!(event.id, "e-1");
        let again = record.encoded(&registry, &only("registration_id")).unwrap();
        assert_eq!(narrow.as_ptr(), again.as_ptr());
        assert_eq!(record.minimised.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_record_without_an_event_has_no_encoding() {
        let record = Record::new(0, 1, None);
        assert!(record.encoded(&Registry::new(), &FieldTree::All).is_none());
    }
}
