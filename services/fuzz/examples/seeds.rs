//! Writes the seed corpus: a few valid inputs per target, so the fuzzer starts from
//! messages that pass validation instead of having to discover protobuf from nothing.
//! Run from `services/fuzz`: `cargo run --example seeds`. Seeds are named `seed-*`; the
//! files libFuzzer adds beside them are ignored by git.

use std::{fs, path::Path};

use crier_proto::{
    events::v1 as ev,
    v1::{
        Ack, Classification, Event, Filter, Open, PublishBatchRequest, StartFrom,
        SubscribeRequest, classification::Level, start_from, subscribe_request::Request,
    },
};
use prost::Message;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed file");
}

fn death() -> ev::DeathRegistered {
    ev::DeathRegistered {
        registration_id: "DE-2026-0042317".into(),
        name: Some(ev::PersonName {
            given_names: vec!["Ada".into(), "May".into()],
            family_name: "Hughes".into(),
        }),
        identifiers: Some(ev::PersonIdentifiers {
            nhs_number: "9434765919".into(),
            national_insurance_number: "QQ123456C".into(),
        }),
        date_of_death: Some(ev::Date {
            year: 2026,
            month: 11,
            day: 27,
        }),
        usual_address: Some(address()),
        registration_district: "Middlesbrough".into(),
        coroner_involved: true,
        ..Default::default()
    }
}

fn address() -> ev::Address {
    ev::Address {
        uprn: 100110067342,
        lines: vec!["14 Albert Terrace".into()],
        town: "Middlesbrough".into(),
        postcode: "TS1 3PA".into(),
        local_authority: "E06000002".into(),
    }
}

fn event(type_name: &str, data: Vec<u8>) -> Event {
    Event {
        id: "7d3c9a1e-0000-4000-8000-000000000001".into(),
        source: "urn:crier:uk.gov.gro/death-registration".into(),
        r#type: type_name.into(),
        subject: "psn:7f3a91c2".into(),
        areas: vec!["E06000002".into(), "E10000023".into()],
        classification: Some(Classification {
            level: Level::OfficialSensitive as i32,
        }),
        data,
        ..Default::default()
    }
}

fn main() {
    let death_event = event("crier.events.v1.DeathRegistered", death().encode_to_vec());
    let moved = ev::AddressChanged {
        previous_address: Some(address()),
        new_address: Some(ev::Address {
            postcode: "TS1 1RE".into(),
            ..address()
        }),
        effective_date: Some(ev::Date {
            year: 2026,
            month: 12,
            day: 1,
        }),
        reported_via: "DVLA".into(),
        ..Default::default()
    };
    let moved_event = Event {
        time: Some(prost_types::Timestamp {
            seconds: 1_780_000_000,
            nanos: 5_000,
        }),
        data_content_type: "application/protobuf".into(),
        data_schema: "urn:crier:schema:crier.events.v1.AddressChanged".into(),
        partition_key: "psn:7f3a91c2".into(),
        correlation_id: "corr-1".into(),
        ..event("crier.events.v1.AddressChanged", moved.encode_to_vec())
    };

    write("validate_event", "death", &death_event.encode_to_vec());
    write("validate_event", "moved", &moved_event.encode_to_vec());

    let birth = ev::BirthRegistered {
        registration_id: "BI-1".into(),
        parent_names: vec![
            ev::PersonName {
                given_names: vec!["Ann".into()],
                family_name: "Hughes".into(),
            },
            ev::PersonName {
                given_names: vec!["Bo".into()],
                family_name: "Ng".into(),
            },
        ],
        usual_address: Some(address()),
        sex: 1,
        ..Default::default()
    };
    let referral = ev::SafeguardingReferral {
        referral_id: "SR-1".into(),
        concerns: vec!["neglect".into(), "housing".into()],
        urgency: 2,
        address: Some(address()),
        ..Default::default()
    };
    // The first byte picks the type (byte % 6, in EVENT_TYPES order) and the field tree.
    for (name, choice, payload) in [
        ("death", 0u8, death().encode_to_vec()),
        ("birth", 1, birth.encode_to_vec()),
        ("moved", 2, moved.encode_to_vec()),
        ("referral", 5, referral.encode_to_vec()),
        ("death-everything", 12, death().encode_to_vec()),
    ] {
        let mut bytes = vec![choice];
        bytes.extend(payload);
        write("payload_decode", name, &bytes);
    }

    let open = SubscribeRequest {
        request: Some(Request::Open(Open {
            subscription: "e06000002.revenues.deaths".into(),
            filter: Some(Filter {
                event_types: vec![
                    "crier.events.v1.DeathRegistered".into(),
                    "crier.events.v1.AddressChanged".into(),
                ],
                areas: vec!["E06000002".into(), "E06000003".into()],
            }),
            start: Some(StartFrom {
                from: Some(start_from::From::Beginning(start_from::Beginning {})),
            }),
            max_in_flight: 16,
        })),
    };
    let ack = SubscribeRequest {
        request: Some(Request::Ack(Ack {
            ack_ids: vec!["1:0".into(), "4:17".into()],
        })),
    };
    let batch = PublishBatchRequest {
        events: vec![death_event, moved_event],
    };
    write("subscribe_request", "open", &open.encode_to_vec());
    write("subscribe_request", "ack", &ack.encode_to_vec());
    write("subscribe_request", "batch", &batch.encode_to_vec());

    write(
        "agreements_file",
        "deploy",
        include_bytes!("../../../deploy/agreements.toml"),
    );
    write(
        "agreements_file",
        "small",
        br#"[[agreement]]
id = "A"
legal_basis = "x"
purpose = "y"
valid_from = "2026-01-01T00:00:00Z"
valid_until = "2027-01-01T00:00:00Z"
[[agreement.publisher]]
identity = "uk.gov.gro/deaths"
event_types = ["crier.events.v1.DeathRegistered"]
[[agreement.subscriber]]
identity = "uk.gov.local.E06000002/revenues"
areas = ["E06000002"]
[agreement.subscriber.fields]
"crier.events.v1.DeathRegistered" = ["registration_id", "usual_address.postcode"]
"#,
    );
}
