//! Checks a payload's protobuf encoding against its schema without decoding it into values.
//!
//! Every publish has its payload checked: that it is well-formed protobuf, that every field
//! is one the schema defines, with the wire type the schema gives it, and that every string
//! is UTF-8. Decoding into a `DynamicMessage` did this too, but built a value for every field
//! only to throw it away, and was the largest single cost of a publish (PERFORMANCE.md).
//! This walks the bytes instead. A unit test holds it to the same verdicts as decoding.

use prost::encoding::{WireType, decode_key, decode_varint};
use prost_reflect::{Cardinality, Kind, MessageDescriptor};

/// How deep messages may nest: prost's own limit.
const MAX_DEPTH: u32 = 100;

/// The highest field number a message type may have for its fields to be found by a table
/// indexed by number; types with higher numbers are searched. Crier's schemas stop at 12.
const DENSE_LIMIT: u32 = 1024;

/// Why a payload was refused, and where: `path` holds the steps innermost first, such as
/// `.name` or `[2]`.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) path: Vec<String>,
    pub(crate) reason: String,
    /// The bytes are well-formed but carry a field the schema does not define.
    pub(crate) undefined: bool,
}

impl Refusal {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            path: Vec::new(),
            reason: reason.into(),
            undefined: false,
        }
    }

    /// The field path below `root`, outermost first.
    pub(crate) fn field(&self, root: &str) -> String {
        let mut field = root.to_owned();
        for step in self.path.iter().rev() {
            field.push_str(step);
        }
        field
    }
}

/// What the walk needs of one message type, looked up once at start-up.
///
/// Asking `prost_reflect` for a field and its kind clones reference-counted handles on
/// every call; with two threads checking events that was most of the walk's cost
/// (PERFORMANCE.md, session 6). The descriptor is kept only to word refusals.
#[derive(Debug)]
struct Shape {
    desc: MessageDescriptor,
    /// By field number, ascending.
    fields: Vec<FieldShape>,
    /// By field number, one more than the field's index in `fields`, or 0 where no field
    /// has that number; empty for a type with a number above the dense limit. A binary
    /// search of `fields` for every field of every payload was three fifths of the walk's
    /// own time (PERFORMANCE.md, session 19).
    slots: Vec<u16>,
}

impl Shape {
    /// The field with `number`, if the type defines one.
    fn field(&self, number: u32) -> Option<FieldShape> {
        if self.slots.is_empty() {
            let at = self
                .fields
                .binary_search_by_key(&number, |f| f.number)
                .ok()?;
            return Some(self.fields[at]);
        }
        let slot = *self.slots.get(usize::try_from(number).ok()?)?;
        let at = usize::from(slot.checked_sub(1)?);
        Some(self.fields[at])
    }
}

#[derive(Debug, Clone, Copy)]
struct FieldShape {
    number: u32,
    kind: Wire,
    repeated: bool,
}

/// The encodings a field's kind allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Varint,
    Fixed64,
    Fixed32,
    String,
    Bytes,
    /// A message, by its index in [`Shapes`].
    Message(usize),
}

/// The shapes of a set of message types and every type they contain.
pub(crate) struct Shapes {
    shapes: Vec<Shape>,
    dense_limit: u32,
}

impl Default for Shapes {
    fn default() -> Self {
        Self {
            shapes: Vec::new(),
            dense_limit: DENSE_LIMIT,
        }
    }
}

impl std::fmt::Debug for Shapes {
    // The descriptors inside would print the whole schema wherever a Registry is logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shapes")
            .field("types", &self.shapes.len())
            .finish()
    }
}

impl Shapes {
    /// Adds `desc` and the types it contains (once each); returns its index.
    pub(crate) fn add(&mut self, desc: &MessageDescriptor) -> usize {
        if let Some(i) = self.shapes.iter().position(|s| s.desc == *desc) {
            return i;
        }
        let index = self.shapes.len();
        self.shapes.push(Shape {
            desc: desc.clone(),
            fields: Vec::new(),
            slots: Vec::new(),
        });
        let mut fields: Vec<FieldShape> = desc
            .fields()
            .map(|field| FieldShape {
                number: field.number(),
                kind: match field.kind() {
                    Kind::Message(inner) => Wire::Message(self.add(&inner)),
                    Kind::String => Wire::String,
                    Kind::Bytes => Wire::Bytes,
                    k if is_fixed64(&k) => Wire::Fixed64,
                    k if is_fixed32(&k) => Wire::Fixed32,
                    _ => Wire::Varint,
                },
                repeated: field.cardinality() == Cardinality::Repeated,
            })
            .collect();
        fields.sort_by_key(|f| f.number);
        let highest = fields.last().map_or(0, |f| f.number);
        let slots = if highest <= self.dense_limit {
            let mut slots = vec![0u16; highest as usize + 1];
            for (i, field) in fields.iter().enumerate() {
                // At most `dense_limit` + 1 fields, so the index fits.
                slots[field.number as usize] = u16::try_from(i + 1).unwrap_or(0);
            }
            slots
        } else {
            Vec::new()
        };
        self.shapes[index].fields = fields;
        self.shapes[index].slots = slots;
        index
    }

    /// Checks `buf` as an encoded message of the type at `index` (from [`Shapes::add`]).
    pub(crate) fn check(&self, index: usize, buf: &[u8]) -> Result<(), Refusal> {
        self.check_message(index, buf, 0)
    }

    fn check_message(&self, index: usize, mut buf: &[u8], depth: u32) -> Result<(), Refusal> {
        if depth > MAX_DEPTH {
            return Err(Refusal::new("nested too deeply"));
        }
        let shape = &self.shapes[index];
        // Repeated message fields seen so far, to name the element in a refusal.
        let mut counts: Vec<(u32, usize)> = Vec::new();
        while !buf.is_empty() {
            let (number, wire_type) =
                decode_key(&mut buf).map_err(|e| Refusal::new(e.to_string()))?;
            let Some(field) = shape.field(number) else {
                return Err(Refusal {
                    undefined: true,
                    ..Refusal::new(format!(
                        "field number {number} is not defined in {}; was the payload encoded with the right type?",
                        shape.desc.full_name()
                    ))
                });
            };
            // Only a refusal needs the field's name, so only a refusal looks it up.
            let located = |mut r: Refusal, index: Option<usize>| {
                if let Some(i) = index {
                    r.path.push(format!("[{i}]"));
                }
                let name = shape.desc.get_field(number);
                r.path
                    .push(format!(".{}", name.as_ref().map_or("?", |f| f.name())));
                r
            };
            let wrong = || {
                let name = shape.desc.get_field(number);
                Refusal::new(match name {
                    Some(f) => format!(
                        "wire type {wire_type:?} does not fit field {} ({:?})",
                        f.name(),
                        f.kind()
                    ),
                    None => format!("wire type {wire_type:?} does not fit field {number}"),
                })
            };
            match wire_type {
                WireType::Varint => {
                    if field.kind != Wire::Varint {
                        return Err(located(wrong(), None));
                    }
                    decode_varint(&mut buf)
                        .map_err(|e| located(Refusal::new(e.to_string()), None))?;
                }
                WireType::SixtyFourBit => {
                    if field.kind != Wire::Fixed64 {
                        return Err(located(wrong(), None));
                    }
                    take(&mut buf, 8).map_err(|r| located(r, None))?;
                }
                WireType::ThirtyTwoBit => {
                    if field.kind != Wire::Fixed32 {
                        return Err(located(wrong(), None));
                    }
                    take(&mut buf, 4).map_err(|r| located(r, None))?;
                }
                WireType::LengthDelimited => {
                    let len = decode_varint(&mut buf)
                        .map_err(|e| located(Refusal::new(e.to_string()), None))?;
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    let bytes = take(&mut buf, len).map_err(|r| located(r, None))?;
                    match field.kind {
                        Wire::String => {
                            std::str::from_utf8(bytes).map_err(|_| {
                                located(Refusal::new("string is not valid UTF-8"), None)
                            })?;
                        }
                        Wire::Bytes => {}
                        Wire::Message(inner) => {
                            let index = field.repeated.then(|| next_index(&mut counts, number));
                            self.check_message(inner, bytes, depth + 1)
                                .map_err(|r| located(r, index))?;
                        }
                        packed if field.repeated => {
                            packed_values(packed, bytes).map_err(|r| located(r, None))?
                        }
                        _ => return Err(located(wrong(), None)),
                    }
                }
                WireType::StartGroup | WireType::EndGroup => {
                    return Err(located(
                        Refusal::new("groups are not used by Crier's schemas"),
                        None,
                    ));
                }
            }
        }
        Ok(())
    }
}

fn next_index(counts: &mut Vec<(u32, usize)>, number: u32) -> usize {
    match counts.iter_mut().find(|(n, _)| *n == number) {
        Some((_, count)) => {
            *count += 1;
            *count - 1
        }
        None => {
            counts.push((number, 1));
            0
        }
    }
}

/// A packed repeated scalar: a run of varints or fixed-width values.
fn packed_values(kind: Wire, mut bytes: &[u8]) -> Result<(), Refusal> {
    let width = match kind {
        Wire::Fixed64 => 8,
        Wire::Fixed32 => 4,
        Wire::Varint => {
            while !bytes.is_empty() {
                decode_varint(&mut bytes).map_err(|e| Refusal::new(e.to_string()))?;
            }
            return Ok(());
        }
        _ => return Err(Refusal::new("not a packable field")),
    };
    if bytes.len().is_multiple_of(width) {
        Ok(())
    } else {
        Err(Refusal::new("packed values are truncated"))
    }
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], Refusal> {
    if buf.len() < n {
        return Err(Refusal::new("buffer underflow: the payload is truncated"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn is_fixed64(kind: &Kind) -> bool {
    matches!(kind, Kind::Fixed64 | Kind::Sfixed64 | Kind::Double)
}

fn is_fixed32(kind: &Kind) -> bool {
    matches!(kind, Kind::Fixed32 | Kind::Sfixed32 | Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::Shapes;
    use crate::{Registry, registry::EVENT_TYPES};
    use crier_proto::events::v1::{Address, DeathRegistered, PersonIdentifiers, PersonName};
    use proptest::prelude::*;
    use prost::Message;
    use prost_reflect::{DynamicMessage, Value};

    fn death() -> Vec<u8> {
        DeathRegistered {
            registration_id: "DE-2026-1".into(),
            name: Some(PersonName {
                given_names: vec!["Ada".into(), "Augusta".into()],
                family_name: "Lovelace".into(),
            }),
            identifiers: Some(PersonIdentifiers {
                nhs_number: "9434765919".into(),
                ..Default::default()
            }),
            usual_address: Some(Address {
                lines: vec!["14 Albert Terrace".into()],
                postcode: "TS1 3PA".into(),
                uprn: 100_110_692_233,
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// The verdict this module replaces: decoding into a `DynamicMessage`, then finding no
    /// field the schema does not define, at any depth.
    fn decodes(registry: &Registry, type_name: &str, data: &[u8]) -> bool {
        fn defined_only(msg: &DynamicMessage) -> bool {
            msg.unknown_fields().next().is_none()
                && msg.fields().all(|(_, value)| match value {
                    Value::Message(inner) => defined_only(inner),
                    Value::List(items) => items.iter().all(|item| match item {
                        Value::Message(inner) => defined_only(inner),
                        _ => true,
                    }),
                    _ => true,
                })
        }
        let desc = registry.event_type(type_name).unwrap();
        DynamicMessage::decode(desc, data).is_ok_and(|msg| defined_only(&msg))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Over valid payloads with bytes changed, cut or inserted, and over random bytes,
        /// walking the wire format accepts exactly what decoding accepts.
        #[test]
        fn walking_agrees_with_decoding(
            edits in proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 0..4),
            noise in proptest::collection::vec(any::<u8>(), 0..40),
            which in 0usize..EVENT_TYPES.len(),
            random in any::<bool>(),
        ) {
            let registry = Registry::new();
            let mut data = if random { noise } else { death() };
            for (at, byte, op) in edits {
                if data.is_empty() { break; }
                let at = usize::from(at) % data.len();
                match op {
                    0 => data[at] = byte,
                    1 => data.truncate(at),
                    _ => data.insert(at, byte),
                }
            }
            let type_name = if random { EVENT_TYPES[which] } else { "crier.events.v1.DeathRegistered" };
            prop_assert_eq!(
                registry.check(type_name, &data).is_ok(),
                decodes(&registry, type_name, &data),
                "{:?}", registry.check(type_name, &data)
            );
        }
    }

    #[test]
    fn a_type_searched_by_field_number_gets_the_same_verdicts_as_one_indexed() {
        let desc = Registry::new()
            .event_type("crier.events.v1.DeathRegistered")
            .unwrap();
        let (mut indexed, mut searched) = (
            Shapes::default(),
            Shapes {
                dense_limit: 0,
                ..Shapes::default()
            },
        );
        let (i, j) = (indexed.add(&desc), searched.add(&desc));
        assert!(!indexed.shapes[i].slots.is_empty() && searched.shapes[j].slots.is_empty());
        let mut truncated = death();
        truncated.truncate(20);
        let payloads: [&[u8]; 6] = [
            &death(),
            &truncated,
            &[0x08, 0x01],             // field 1, a string, as a varint
            &[0x98, 0x06, 0x01],       // field 99, not defined
            &[0xf8, 0xff, 0xff, 0x07], // field 2^21 - 1, far past the table
            &[],
        ];
        for payload in payloads {
            let verdict = |shapes: &Shapes, at| match shapes.check(at, payload) {
                Ok(()) => "ok".to_owned(),
                Err(r) => format!("{} at {:?}, undefined {}", r.reason, r.path, r.undefined),
            };
            assert_eq!(verdict(&indexed, i), verdict(&searched, j), "{payload:?}");
        }
        assert!(indexed.check(i, &death()).is_ok());
        assert!(indexed.check(i, &[0x98, 0x06, 0x01]).unwrap_err().undefined);
    }

    #[test]
    fn a_valid_payload_passes_and_a_wrong_wire_type_is_refused() {
        let registry = Registry::new();
        assert!(
            registry
                .check("crier.events.v1.DeathRegistered", &death())
                .is_ok()
        );
        // registration_id (field 1, a string) sent as a varint.
        let err = registry
            .check("crier.events.v1.DeathRegistered", &[0x08, 0x01])
            .unwrap_err();
        assert_eq!(err.field, "event.data");
        assert!(err.message.contains("does not decode"), "{err}");
        // The same string field as a 32-bit and as a 64-bit value.
        for bytes in [&[0x0d, 1, 2, 3, 4][..], &[0x09, 1, 2, 3, 4, 5, 6, 7, 8][..]] {
            let err = registry
                .check("crier.events.v1.DeathRegistered", bytes)
                .unwrap_err();
            assert!(
                err.message.contains("does not fit field registration_id"),
                "{err}"
            );
        }
    }
}
