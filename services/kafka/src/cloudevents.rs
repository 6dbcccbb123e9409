//! The CloudEvents Kafka protocol binding, binary content mode, for Crier events.
//!
//! Attributes travel as `ce_*` headers, the payload as the record value, and the partition
//! key as the record key, so any Kafka tool can read Crier's topics and route on headers
//! without knowing protobuf. Crier's extension attributes follow the CloudEvents naming rule
//! (lower-case letters and digits only): `ce_areas` (comma-separated GSS codes),
//! `ce_classification`, `ce_correlationid` and `ce_partitionkey`.

use crier_proto::v1::{Classification, Event, classification::Level};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::{Error, Result};

/// The `ce_specversion` Crier writes.
pub const SPEC_VERSION: &str = "1.0";

/// A Kafka record ready to produce.
#[derive(Debug)]
pub struct Record {
    /// The partition key.
    pub key: Vec<u8>,
    /// The `ce_*` headers and `content-type`.
    pub headers: OwnedHeaders,
    /// The payload bytes.
    pub value: Vec<u8>,
}

/// Writes a (validated, normalised) event as a binary-mode record.
pub fn encode(event: &Event) -> Record {
    let time = event.time.as_ref().map(ToString::to_string);
    let areas = event.areas.join(",");
    let attributes = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", &event.id),
        ("ce_source", &event.source),
        ("ce_type", &event.r#type),
        ("ce_time", time.as_deref().unwrap_or_default()),
        ("ce_subject", &event.subject),
        ("content-type", &event.data_content_type),
        ("ce_dataschema", &event.data_schema),
        ("ce_areas", &areas),
        (
            "ce_classification",
            classification_name(event.classification),
        ),
        ("ce_correlationid", &event.correlation_id),
        ("ce_partitionkey", &event.partition_key),
    ];
    // `insert` takes the list and gives it back. Taking it out of a `&mut` with
    // `mem::take` made and freed an empty librdkafka header list for every header, 4% of
    // the producer's samples (PERFORMANCE.md, session 18).
    let headers = attributes
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .fold(
            OwnedHeaders::new_with_capacity(attributes.len()),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            },
        );
    Record {
        key: event.partition_key.as_bytes().to_vec(),
        headers,
        value: event.data.clone(),
    }
}

/// Reads a binary-mode record back into an event.
pub fn decode<M: Message>(msg: &M) -> Result<Event> {
    let mut event = Event {
        data: msg.payload().unwrap_or_default().to_vec(),
        ..Default::default()
    };
    let mut spec = None;
    if let Some(headers) = msg.headers() {
        for h in headers.iter() {
            let value = std::str::from_utf8(h.value.unwrap_or_default())
                .map_err(|_| Error::Wire(format!("header {} is not UTF-8", h.key)))?;
            match h.key {
                "ce_specversion" => spec = Some(value.to_owned()),
                "ce_id" => event.id = value.to_owned(),
                "ce_source" => event.source = value.to_owned(),
                "ce_type" => event.r#type = value.to_owned(),
                "ce_time" => {
                    event.time = Some(value.parse().map_err(|e| {
                        Error::Wire(format!("ce_time '{value}' is not RFC 3339: {e}"))
                    })?);
                }
                "ce_subject" => event.subject = value.to_owned(),
                "content-type" => event.data_content_type = value.to_owned(),
                "ce_dataschema" => event.data_schema = value.to_owned(),
                "ce_areas" => {
                    event.areas = value
                        .split(',')
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "ce_classification" => event.classification = parse_classification(value),
                "ce_correlationid" => event.correlation_id = value.to_owned(),
                "ce_partitionkey" => event.partition_key = value.to_owned(),
                _ => {}
            }
        }
    }
    if spec.as_deref() != Some(SPEC_VERSION) {
        return Err(Error::Wire(format!(
            "ce_specversion is {spec:?}, expected {SPEC_VERSION}"
        )));
    }
    if event.id.is_empty() || event.r#type.is_empty() {
        return Err(Error::Wire("ce_id or ce_type missing".into()));
    }
    Ok(event)
}

fn classification_name(c: Option<Classification>) -> &'static str {
    match c.map(|c| c.level()) {
        Some(Level::Official) => "OFFICIAL",
        Some(Level::OfficialSensitive) => "OFFICIAL-SENSITIVE",
        _ => "",
    }
}

fn parse_classification(s: &str) -> Option<Classification> {
    let level = match s {
        "OFFICIAL" => Level::Official,
        "OFFICIAL-SENSITIVE" => Level::OfficialSensitive,
        _ => return None,
    };
    Some(Classification {
        level: level as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::{Timestamp, message::OwnedMessage};

    #[test]
    fn an_event_survives_the_round_trip_through_a_record() {
        let event = Event {
            id: "id-1".into(),
            source: "urn:crier:test".into(),
            r#type: "crier.events.v1.DeathRegistered".into(),
            time: Some("2026-11-27T10:00:00Z".parse().unwrap()),
            subject: "psn:1".into(),
            data_content_type: "application/protobuf".into(),
            data_schema: "urn:crier:schema:crier.events.v1.DeathRegistered".into(),
            data: vec![1, 2, 3],
            areas: vec!["E06000002".into(), "E10000023".into()],
            classification: Some(Classification {
                level: Level::OfficialSensitive as i32,
            }),
            partition_key: "psn:1".into(),
            correlation_id: "corr".into(),
        };
        let record = encode(&event);
        assert_eq!(record.key, b"psn:1");
        let msg = OwnedMessage::new(
            Some(record.value),
            Some(record.key),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(record.headers),
        );
        assert_eq!(decode(&msg).unwrap(), event);
    }

    #[test]
    fn headers_come_in_a_fixed_order_and_empty_attributes_are_left_out() {
        let event = Event {
            id: "id-1".into(),
            source: "urn:crier:test".into(),
            r#type: "crier.events.v1.DeathRegistered".into(),
            time: Some("2026-11-27T10:00:00.5Z".parse().unwrap()),
            data_content_type: "application/protobuf".into(),
            areas: vec!["E06000002".into()],
            partition_key: "psn:1".into(),
            ..Default::default()
        };
        let headers = encode(&event).headers;
        let got: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|h| (h.key, h.value.unwrap_or_default()))
            .collect();
        let want: Vec<(&str, &[u8])> = vec![
            ("ce_specversion", b"1.0"),
            ("ce_id", b"id-1"),
            ("ce_source", b"urn:crier:test"),
            ("ce_type", b"crier.events.v1.DeathRegistered"),
            ("ce_time", b"2026-11-27T10:00:00.500Z"),
            ("content-type", b"application/protobuf"),
            ("ce_areas", b"E06000002"),
            ("ce_partitionkey", b"psn:1"),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_record_without_cloudevents_headers_is_refused() {
        let msg = OwnedMessage::new(
            Some(vec![1]),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        );
        assert!(matches!(decode(&msg), Err(Error::Wire(_))));
    }
}
