//! The event types Crier carries, and strict decoding of their payloads by type name.
//!
//! Payloads travel as bytes (CloudEvents `data`), so Crier needs the schema at run time to
//! check that the bytes really are the declared type. It uses the descriptors compiled into
//! `crier-proto`, so the rules can never drift from the published `.proto` files.

use std::sync::Arc;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use crate::{Invalid, wire::Shapes};

/// Every event type a publisher may send, by its `Event.type`, which is the payload's full
/// protobuf message name.
pub const EVENT_TYPES: &[&str] = &[
    "crier.events.v1.DeathRegistered",
    "crier.events.v1.BirthRegistered",
    "crier.events.v1.AddressChanged",
    "crier.events.v1.BenefitAwardChanged",
    "crier.events.v1.SchoolEnrolment",
    "crier.events.v1.SafeguardingReferral",
];

/// The compiled schemas, for looking up and decoding event payloads.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: DescriptorPool,
    /// The walk's tables for every event type, and each event type's index in them (in
    /// the order of [`EVENT_TYPES`]).
    shapes: Arc<(Shapes, Vec<Option<usize>>)>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// Loads the descriptors compiled into `crier-proto`.
    pub fn new() -> Self {
        #[allow(clippy::expect_used)]
        let pool = DescriptorPool::decode(crier_proto::FILE_DESCRIPTOR_SET)
            .expect("crier-proto embeds a valid descriptor set (checked by its build)");
        let mut shapes = Shapes::default();
        let indices = EVENT_TYPES
            .iter()
            .map(|t| pool.get_message_by_name(t).map(|desc| shapes.add(&desc)))
            .collect();
        Self {
            pool,
            shapes: Arc::new((shapes, indices)),
        }
    }

    /// The descriptor of a known event type, or `None` for anything else.
    pub fn event_type(&self, type_name: &str) -> Option<MessageDescriptor> {
        if EVENT_TYPES.contains(&type_name) {
            self.pool.get_message_by_name(type_name)
        } else {
            None
        }
    }

    /// The error for an unknown type at `field`, listing the known ones.
    pub fn unknown_type(field: &str, type_name: &str) -> Invalid {
        Invalid::new(
            field,
            format!(
                "unknown event type '{type_name}'; known types are {}",
                EVENT_TYPES.join(", ")
            ),
        )
    }

    /// Checks that `data` is a well-formed `type_name` with no fields the schema does not
    /// define, without decoding it (see `wire.rs`). A refusal names `event.data`, or for an
    /// undefined field, the path to it.
    pub fn check(&self, type_name: &str, data: &[u8]) -> Result<(), Invalid> {
        let (shapes, indices) = &*self.shapes;
        let index = EVENT_TYPES
            .iter()
            .position(|t| *t == type_name)
            .and_then(|i| indices.get(i).copied().flatten())
            .ok_or_else(|| Self::unknown_type("event.type", type_name))?;
        shapes.check(index, data).map_err(|r| {
            let field = if r.undefined {
                r.field("event.data")
            } else {
                "event.data".to_owned()
            };
            Invalid::new(
                field,
                format!("payload does not decode as {type_name}: {}", r.reason),
            )
        })
    }

    /// Decodes `data` as `type_name`, after [`check`](Self::check): bytes that do not
    /// decode and fields the schema does not define are refused the same way.
    pub fn decode(&self, type_name: &str, data: &[u8]) -> Result<DynamicMessage, Invalid> {
        self.check(type_name, data)?;
        let desc = self
            .event_type(type_name)
            .ok_or_else(|| Self::unknown_type("event.type", type_name))?;
        DynamicMessage::decode(desc, data).map_err(|e| {
            Invalid::new(
                "event.data",
                format!("payload does not decode as {type_name}: {e}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crier_proto::events::v1::{DeathRegistered, PersonName};
    use prost::Message;
    use prost_reflect::ReflectMessage;

    #[test]
    fn every_listed_event_type_is_in_the_compiled_schema() {
        let registry = Registry::new();
        for t in EVENT_TYPES {
            assert!(
                registry.event_type(t).is_some(),
                "{t} missing from descriptors"
            );
        }
        assert!(registry.event_type("crier.events.v1.Date").is_none());
    }

    #[test]
    fn a_payload_of_the_declared_type_decodes() {
        let payload = DeathRegistered {
            registration_id: "DE-1".into(),
            name: Some(PersonName {
                given_names: vec!["Ada".into()],
                family_name: "Lovelace".into(),
            }),
            ..Default::default()
        };
        let msg = Registry::new()
            .decode("crier.events.v1.DeathRegistered", &payload.encode_to_vec())
            .unwrap();
        assert_eq!(msg.descriptor().name(), "DeathRegistered");
    }

    #[test]
    fn garbage_and_undefined_fields_are_refused() {
        let registry = Registry::new();
        let err = registry
            .decode("crier.events.v1.DeathRegistered", &[0x0a, 0xff, 0x01])
            .unwrap_err();
        assert_eq!(err.field, "event.data");
        // Field 99, varint 1: well-formed protobuf, but not part of DeathRegistered.
        let err = registry
            .decode("crier.events.v1.DeathRegistered", &[0x98, 0x06, 0x01])
            .unwrap_err();
        assert!(err.message.contains("field number 99"), "{err}");
    }

    #[test]
    fn an_undefined_field_deep_inside_is_named_by_its_path() {
        let registry = Registry::new();
        let desc = registry
            .event_type("crier.events.v1.DeathRegistered")
            .unwrap();
        let name_field = desc.get_field_by_name("name").unwrap().number();
        // PersonName with given_names "A" and an undefined field 99 (varint 1).
        let inner = [0x0a, 0x01, b'A', 0x98, 0x06, 0x01];
        let mut payload = Vec::new();
        prost::encoding::encode_key(
            name_field,
            prost::encoding::WireType::LengthDelimited,
            &mut payload,
        );
        payload.push(inner.len() as u8);
        payload.extend_from_slice(&inner);
        let err = registry
            .decode("crier.events.v1.DeathRegistered", &payload)
            .unwrap_err();
        assert_eq!(err.field, "event.data.name", "{err}");
        assert!(
            err.message
                .contains("field number 99 is not defined in crier.events.v1.PersonName"),
            "{err}"
        );
    }
}
