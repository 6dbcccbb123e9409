//! Checks an event envelope before it is written to Kafka, and fills in the attributes Crier
//! owns. Everything here is pure, so the producer, the CLI and the fuzz targets agree.

use crier_proto::v1::{Event, classification::Level};
use prost::Message;

use crate::{
    Invalid, Registry,
    codes::{check_gss, looks_like_nhs_number, looks_like_nino},
};

/// The only `data_content_type` Crier accepts: payloads are protobuf messages.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/protobuf";
/// Most areas one event may name.
pub const MAX_AREAS: usize = 64;
const MAX_ID_LEN: usize = 256;
const MAX_URI_LEN: usize = 1024;

/// Checks `event` against every rule, stopping at the first broken one, so that nothing
/// malformed reaches Kafka. `max_bytes` bounds the encoded envelope.
pub fn validate_event(registry: &Registry, event: &Event, max_bytes: usize) -> Result<(), Invalid> {
    let size = event.encoded_len();
    if size > max_bytes {
        return Err(Invalid::new(
            "event",
            format!("event is {size} bytes, over the limit of {max_bytes} bytes"),
        ));
    }
    required_text("event.id", &event.id, MAX_ID_LEN)?;
    required_text("event.source", &event.source, MAX_URI_LEN)?;
    if event.r#type.is_empty() {
        return Err(Invalid::new(
            "event.type",
            "required, for example crier.events.v1.DeathRegistered",
        ));
    }
    if registry.event_type(&event.r#type).is_none() {
        return Err(Registry::unknown_type("event.type", &event.r#type));
    }
    required_text("event.subject", &event.subject, MAX_ID_LEN)?;
    pseudonymous("event.subject", &event.subject)?;
    if !event.partition_key.is_empty() {
        optional_text("event.partition_key", &event.partition_key, MAX_ID_LEN)?;
        pseudonymous("event.partition_key", &event.partition_key)?;
    }
    optional_text("event.correlation_id", &event.correlation_id, MAX_ID_LEN)?;
    optional_text("event.data_schema", &event.data_schema, MAX_URI_LEN)?;
    if !event.data_content_type.is_empty() && event.data_content_type != PROTOBUF_CONTENT_TYPE {
        return Err(Invalid::new(
            "event.data_content_type",
            format!(
                "'{}' is not supported; leave it empty or use {PROTOBUF_CONTENT_TYPE}",
                event.data_content_type
            ),
        ));
    }
    if let Some(time) = &event.time {
        check_time(time)?;
    }
    check_areas(&event.areas)?;
    match event.classification.map(|c| c.level()) {
        Some(Level::Official | Level::OfficialSensitive) => {}
        _ => {
            return Err(Invalid::new(
                "event.classification",
                "required: OFFICIAL or OFFICIAL_SENSITIVE",
            ));
        }
    }
    if event.data.is_empty() {
        return Err(Invalid::new(
            "event.data",
            format!("required: the encoded {} payload", event.r#type),
        ));
    }
    registry.check(&event.r#type, &event.data)
}

/// Fills in what Crier owns once an event is valid: the publish time when the publisher gave
/// none, the content type, the schema URI and the partition key.
pub fn normalize(event: &mut Event, now: prost_types::Timestamp) {
    if event.time.is_none() {
        event.time = Some(now);
    }
    if event.data_content_type.is_empty() {
        event.data_content_type = PROTOBUF_CONTENT_TYPE.to_owned();
    }
    if event.data_schema.is_empty() {
        event.data_schema = format!("urn:crier:schema:{}", event.r#type);
    }
    if event.partition_key.is_empty() {
        event.partition_key = event.subject.clone();
    }
}

/// RFC 3339 (and so `ce_time`) covers years 1 to 9999, with nanoseconds 0 to 999,999,999;
/// outside that, the time could not reach subscribers as it was sent.
fn check_time(time: &prost_types::Timestamp) -> Result<(), Invalid> {
    const MIN: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(0..=999_999_999).contains(&time.nanos) {
        return Err(Invalid::new(
            "event.time",
            format!("nanos {} is outside 0 to 999999999", time.nanos),
        ));
    }
    if !(MIN..=MAX).contains(&time.seconds) {
        return Err(Invalid::new(
            "event.time",
            "outside the years 1 to 9999 that RFC 3339 can express",
        ));
    }
    Ok(())
}

fn check_areas(areas: &[String]) -> Result<(), Invalid> {
    if areas.is_empty() {
        return Err(Invalid::new(
            "event.areas",
            "at least one GSS local-authority code is required, for example E06000002",
        ));
    }
    if areas.len() > MAX_AREAS {
        return Err(Invalid::new(
            "event.areas",
            format!("{} areas given; at most {MAX_AREAS}", areas.len()),
        ));
    }
    for (i, area) in areas.iter().enumerate() {
        check_gss(area).map_err(|m| Invalid::new(format!("event.areas[{i}]"), m))?;
    }
    Ok(())
}

fn required_text(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        return Err(Invalid::new(field, "required"));
    }
    optional_text(field, value, max)
}

fn optional_text(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.len() > max {
        return Err(Invalid::new(
            field,
            format!("{} bytes long; at most {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// Keys and headers are readable by anyone with access to the topic, so they must not carry
/// the identifiers that the payload protects.
fn pseudonymous(field: &str, value: &str) -> Result<(), Invalid> {
    if looks_like_nhs_number(value) || looks_like_nino(value) {
        return Err(Invalid::new(
            field,
            "looks like a raw NHS or National Insurance number; use a pseudonymous reference",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crier_proto::{events::v1::DeathRegistered, v1::Classification};

    fn valid() -> Event {
        Event {
            id: "7d3c".into(),
            source: "urn:crier:uk.gov.gro/deaths".into(),
            r#type: "crier.events.v1.DeathRegistered".into(),
            subject: "psn:abc123".into(),
            areas: vec!["E06000002".into()],
            classification: Some(Classification {
                level: Level::OfficialSensitive as i32,
            }),
            data: DeathRegistered {
                registration_id: "DE-1".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            ..Default::default()
        }
    }

    fn field_of(event: &Event) -> String {
        validate_event(&Registry::new(), event, 64 * 1024)
            .unwrap_err()
            .field
    }

    #[test]
    fn a_complete_event_is_valid() {
        assert_eq!(
            validate_event(&Registry::new(), &valid(), 64 * 1024),
            Ok(())
        );
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        type Breaker = Box<dyn Fn(&mut Event)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("event.id", Box::new(|e| e.id.clear())),
            ("event.source", Box::new(|e| e.source = "  ".into())),
            ("event.type", Box::new(|e| e.r#type = "Nope".into())),
            (
                "event.subject",
                Box::new(|e| e.subject = "9434765919".into()),
            ),
            (
                "event.partition_key",
                Box::new(|e| e.partition_key = "QQ123456C".into()),
            ),
            ("event.areas", Box::new(|e| e.areas.clear())),
            ("event.areas[1]", Box::new(|e| e.areas.push("X99".into()))),
            (
                "event.classification",
                Box::new(|e| e.classification = None),
            ),
            ("event.data", Box::new(|e| e.data = vec![0xff])),
            (
                "event.time",
                Box::new(|e| {
                    e.time = Some(prost_types::Timestamp {
                        seconds: 1,
                        nanos: -1,
                    })
                }),
            ),
            (
                "event.time",
                Box::new(|e| {
                    e.time = Some(prost_types::Timestamp {
                        seconds: i64::MAX,
                        nanos: 0,
                    })
                }),
            ),
            (
                "event.data_content_type",
                Box::new(|e| e.data_content_type = "text/plain".into()),
            ),
        ];
        for (field, breakit) in cases {
            let mut event = valid();
            breakit(&mut event);
            assert_eq!(field_of(&event), field);
        }
    }

    #[test]
    fn an_oversized_event_is_refused_before_decoding() {
        let mut event = valid();
        event.data = vec![0; 70 * 1024];
        let err = validate_event(&Registry::new(), &event, 64 * 1024).unwrap_err();
        assert_eq!(err.field, "event");
        assert!(err.message.contains("over the limit"));
    }

    #[test]
    fn normalize_fills_what_the_publisher_left_empty() {
        let mut event = valid();
        normalize(
            &mut event,
            prost_types::Timestamp {
                seconds: 5,
                nanos: 0,
            },
        );
        assert_eq!(event.partition_key, "psn:abc123");
        assert_eq!(event.data_content_type, PROTOBUF_CONTENT_TYPE);
        assert_eq!(event.time.unwrap().seconds, 5);
    }
}
