//! Fuzzes the data-sharing agreements file (`crier_agreements::file::parse`): TOML written
//! by information-governance officers, loaded at start-up and reloaded live. A bad file must
//! be refused with an error naming the line, never crash the service. For any UTF-8 text:
//!
//! - parsing never panics, and an error starts with `<name>:<line>:`;
//! - a file that parses gives a `Policy` whose questions (`may_publish`, `may_subscribe`,
//!   `entitlement`) never panic either.
#![no_main]

use crier_agreements::{Policy, file::parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse("f", text) {
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("f:"), "error without a line: {message}");
        }
        Ok(agreements) => {
            let policy = Policy::new(agreements);
            let now = 1_780_000_000;
            for a in policy.agreements() {
                for p in &a.publishers {
                    for t in &p.event_types {
                        let _ = policy.may_publish(&p.identity, t, now);
                    }
                }
                for s in &a.subscribers {
                    let types: Vec<String> = s.fields.keys().cloned().collect();
                    let _ = policy.may_subscribe(&s.identity, &types, &["E06000002".into()], now);
                    let _ = policy.may_subscribe(&s.identity, &types, &[], now);
                    for t in &types {
                        let _ = policy.entitlement(&s.identity, t, ["E06000002"].into_iter(), now);
                    }
                }
            }
        }
    }
});
