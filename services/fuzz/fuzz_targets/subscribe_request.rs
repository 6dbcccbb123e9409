//! Fuzzes the two request messages that carry lists from clients: `SubscribeRequest` (the
//! consumer checks an `Open` with `filter::check_name` and `filter::check_filter`) and
//! `PublishBatchRequest` (the producer validates each event). Both decoders run on every
//! input. For any bytes:
//!
//! - decoding, checking and validating never panic;
//! - an accepted filter's canonical form is still accepted, and canonical twice is canonical
//!   once (the subscriptions topic compares stored filters by it).
#![no_main]

use std::sync::LazyLock;

use crier_proto::v1::{PublishBatchRequest, SubscribeRequest, subscribe_request::Request};
use crier_schema::{Registry, filter, validate::validate_event};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The producer's default `limits.max_event_bytes`.
const MAX_EVENT_BYTES: usize = 256 * 1024;

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fuzz_target!(|data: &[u8]| {
    if let Ok(SubscribeRequest {
        request: Some(Request::Open(open)),
    }) = SubscribeRequest::decode(data)
    {
        let _ = filter::check_name(&open.subscription);
        let wanted = open.filter.unwrap_or_default();
        if filter::check_filter(&REGISTRY, &wanted).is_ok() {
            let canonical = filter::canonical(&wanted);
            assert!(filter::check_filter(&REGISTRY, &canonical).is_ok());
            assert_eq!(filter::canonical(&canonical), canonical);
            for t in &wanted.event_types {
                assert!(filter::matches(&canonical, t, wanted.areas.iter().map(String::as_str)));
            }
        }
    }
    if let Ok(batch) = PublishBatchRequest::decode(data) {
        for event in &batch.events {
            let _ = validate_event(&REGISTRY, event, MAX_EVENT_BYTES);
        }
    }
});
