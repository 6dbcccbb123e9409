//! Removes from a payload every field the subscriber is not entitled to, before delivery,
//! so that the bytes it receives contain nothing more.

use prost::Message;
use prost_reflect::{DynamicMessage, ReflectMessage, Value};

use crate::fields::FieldTree;

/// Returns `data` (a payload of `type_name`) with only the fields in `tree`. Unknown fields
/// are always removed. A payload that does not decode yields an empty message: nothing that
/// could not be checked is passed on.
pub fn minimise(
    registry: &crier_schema::Registry,
    type_name: &str,
    data: &[u8],
    tree: &FieldTree,
) -> Vec<u8> {
    if *tree == FieldTree::All {
        // Crier validated the payload on publish: it has no unknown fields.
        return data.to_vec();
    }
    let Some(desc) = registry.event_type(type_name) else {
        return Vec::new();
    };
    match DynamicMessage::decode(desc, data) {
        Ok(mut msg) => {
            keep_only(&mut msg, tree);
            msg.encode_to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn keep_only(msg: &mut DynamicMessage, tree: &FieldTree) {
    msg.take_unknown_fields().for_each(drop);
    let fields: Vec<_> = msg.descriptor().fields().collect();
    for field in fields {
        match tree.child(field.name()) {
            None => msg.clear_field(&field),
            Some(FieldTree::All) => {}
            Some(sub) => {
                if msg.has_field(&field) {
                    match msg.get_field_mut(&field) {
                        Value::Message(inner) => keep_only(inner, sub),
                        Value::List(items) => {
                            for item in items.iter_mut() {
                                if let Value::Message(inner) = item {
                                    keep_only(inner, sub);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crier_proto::events::v1::{Address, DeathRegistered, PersonIdentifiers, PersonName};

    #[test]
    fn only_the_listed_fields_survive_and_the_rest_are_gone_from_the_bytes() {
        let registry = crier_schema::Registry::new();
        let desc = registry
            .event_type("crier.events.v1.DeathRegistered")
            .unwrap();
        let full = DeathRegistered {
            registration_id: "DE-1".into(),
            name: Some(PersonName {
                given_names: vec!["Ada".into()],
                family_name: "Lovelace".into(),
            }),
            identifiers: Some(PersonIdentifiers {
                nhs_number: "9434765919".into(),
                ..Default::default()
            }),
            usual_address: Some(Address {
                postcode: "TS1 3PA".into(),
                lines: vec!["14 Albert Terrace".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let tree = FieldTree::parse(
            &desc,
            &["registration_id".into(), "usual_address.postcode".into()],
        )
        .unwrap();
        let out = minimise(
            &registry,
            "crier.events.v1.DeathRegistered",
            &full.encode_to_vec(),
            &tree,
        );
        let got = DeathRegistered::decode(&out[..]).unwrap();
        assert_eq!(got.registration_id, "DE-1");
        assert_eq!(got.usual_address.unwrap().postcode, "TS1 3PA");
        assert!(got.name.is_none() && got.identifiers.is_none());
        let bytes = String::from_utf8_lossy(&out);
        assert!(
            !bytes.contains("9434765919")
                && !bytes.contains("Albert")
                && !bytes.contains("Lovelace")
        );
    }
}
