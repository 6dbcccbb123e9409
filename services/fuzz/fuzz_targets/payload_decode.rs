//! Fuzzes the payload path: `Event.data` is client bytes that the producer decodes by type
//! name (`Registry::decode`, strict: no undefined fields) and the consumer cuts down to the
//! fields an agreement shares (`crier_agreements::minimise::minimise`).
//!
//! The first byte picks the event type and the field tree (a fixed allow-list with nested
//! paths, nothing, or everything); the rest is the payload. For any bytes:
//!
//! - decoding and minimising never panic;
//! - the minimised bytes always decode strictly as the type (no unknown fields), carry only
//!   fields the tree allows, and minimising them again changes nothing.
#![no_main]

use std::sync::LazyLock;

use crier_agreements::{fields::FieldTree, minimise::minimise};
use crier_schema::{Registry, registry::EVENT_TYPES};
use libfuzzer_sys::fuzz_target;
use prost_reflect::{DynamicMessage, Value};

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// Per event type (in `EVENT_TYPES` order): an allow-list mixing whole fields, repeated
/// messages and nested paths, as agreements write them.
const ALLOWED: [&[&str]; 6] = [
    &["registration_id", "name", "usual_address.postcode", "date_of_death.year"],
    &["registration_id", "parent_names.family_name", "usual_address.postcode"],
    &["new_address.postcode", "new_address.lines", "effective_date"],
    &["benefit", "change", "address.postcode", "name.given_names"],
    &["school_urn", "child_name", "home_address.local_authority"],
    &["referral_id", "concerns", "urgency", "address.postcode"],
];

/// The trees for each type: the allow-list, nothing, everything.
static TREES: LazyLock<Vec<[FieldTree; 3]>> = LazyLock::new(|| {
    EVENT_TYPES
        .iter()
        .zip(ALLOWED)
        .map(|(t, paths)| {
            let desc = REGISTRY.event_type(t).expect("a known type");
            let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
            let some = FieldTree::parse(&desc, &paths).expect("paths exist in the schema");
            [some, FieldTree::none(), FieldTree::All]
        })
        .collect()
});

/// True when every field set in `msg` is allowed by `tree`, at every depth.
fn only_allowed(msg: &DynamicMessage, tree: &FieldTree) -> bool {
    msg.fields().all(|(field, value)| match tree.child(field.name()) {
        None => false,
        Some(FieldTree::All) => true,
        Some(sub) => match value {
            Value::Message(inner) => only_allowed(inner, sub),
            Value::List(items) => items.iter().all(|item| match item {
                Value::Message(inner) => only_allowed(inner, sub),
                _ => true,
            }),
            _ => true,
        },
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, payload)) = data.split_first() else {
        return;
    };
    let type_index = usize::from(choice) % EVENT_TYPES.len();
    let type_name = EVENT_TYPES[type_index];
    let tree = &TREES[type_index][usize::from(choice / 6) % 3];

    let decoded = REGISTRY.decode(type_name, payload);
    if *tree == FieldTree::All && decoded.is_err() {
        // `All` passes bytes through untouched: the consumer relies on the producer having
        // validated them, so only validated payloads are in scope.
        return;
    }
    let out = minimise(&REGISTRY, type_name, payload, tree);
    let msg = REGISTRY.decode(type_name, &out).unwrap_or_else(|e| {
        panic!("minimised {type_name} does not decode strictly: {e}")
    });
    assert!(
        only_allowed(&msg, tree),
        "minimised {type_name} carries a field the tree does not allow: {msg:?}"
    );
    assert_eq!(
        minimise(&REGISTRY, type_name, &out, tree),
        out,
        "minimising twice changed {type_name}"
    );
});
