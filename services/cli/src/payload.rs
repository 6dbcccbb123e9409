//! Converts event payloads between protobuf bytes and their proto3 JSON form, so people can
//! type and read payloads without writing protobuf by hand.

use anyhow::{Context, anyhow};
use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};

/// Encodes a proto3 JSON payload as the protobuf bytes of `type_name`.
pub(crate) fn from_json(type_name: &str, json: &str) -> anyhow::Result<Vec<u8>> {
    let desc = crier_schema::Registry::new()
        .event_type(type_name)
        .ok_or_else(|| anyhow!("unknown event type '{type_name}'; run `crier types`"))?;
    let mut de = serde_json::Deserializer::from_str(json);
    let msg = DynamicMessage::deserialize(desc, &mut de)
        .with_context(|| format!("--data is not a valid {type_name} in proto3 JSON"))?;
    Ok(msg.encode_to_vec())
}

/// Decodes protobuf bytes of `type_name` into proto3 JSON (camelCase field names).
pub(crate) fn to_json(type_name: &str, data: &[u8]) -> serde_json::Value {
    match crier_schema::Registry::new().decode(type_name, data) {
        Ok(msg) => msg
            .serialize_with_options(
                serde_json::value::Serializer,
                &SerializeOptions::new().skip_default_fields(true),
            )
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() })),
        Err(e) => serde_json::json!({ "undecodable": e.to_string() }),
    }
}
