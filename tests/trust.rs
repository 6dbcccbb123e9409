//! Trust, through a real Kafka broker: who may call, what they may publish and receive,
//! which fields reach them, and whether the audit trail shows it truthfully.
//! Run with `cargo test --test trust` while `deploy/kafka.sh` is up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crier_proto::{
    events::v1 as ev,
    v1::{
        Event, PublishBatchRequest, PublishRequest, publish_result::Outcome,
        publisher_client::PublisherClient,
    },
};
use crier_tests::*;
use prost::Message;
use tonic::{Code, Request};

const QUIET: Duration = Duration::from_secs(2);
const GRO: &str = "uk.gov.gro/death-registration";
const MIDDLESBROUGH: &str = "uk.gov.local.E06000002/revenues";
const REDCAR: &str = "uk.gov.local.E06000003/revenues";
const NOBODY: &str = "uk.gov.nobody/unknown";

fn iso(offset_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    prost_types::Timestamp {
        seconds: now + offset_secs,
        nanos: 0,
    }
    .to_string()
}

/// GRO publishes deaths; Middlesbrough receives deaths in E06000002 with `fields`, under an
/// agreement valid until `until`; Redcar receives deaths in E06000003 with every field.
fn agreements(fields: &str, until: &str) -> String {
    format!(
        r#"
[[agreement]]
id = "DSA-PUB"
legal_basis = "Digital Economy Act 2017 s.35"
purpose = "publish deaths"
valid_from = "2020-01-01T00:00:00Z"
valid_until = "2100-01-01T00:00:00Z"
[[agreement.publisher]]
identity = "{GRO}"
event_types = ["crier.events.v1.DeathRegistered"]
[[agreement.subscriber]]
identity = "{REDCAR}"
areas = ["E06000003"]
[agreement.subscriber.fields]
"crier.events.v1.DeathRegistered" = ["*"]

[[agreement]]
id = "DSA-MBRO"
legal_basis = "Tell Us Once consent"
purpose = "stop council services after a death"
valid_from = "2020-01-01T00:00:00Z"
valid_until = "{until}"
[[agreement.subscriber]]
identity = "{MIDDLESBROUGH}"
areas = ["E06000002"]
[agreement.subscriber.fields]
"crier.events.v1.DeathRegistered" = {fields}
"#
    )
}

fn death(subject: &str, areas: &[&str]) -> Event {
    let payload = ev::DeathRegistered {
        registration_id: format!("DE-{}", uuid::Uuid::new_v4().simple()),
        name: Some(ev::PersonName {
            given_names: vec!["Margaret".into()],
            family_name: "Hughes".into(),
        }),
        identifiers: Some(ev::PersonIdentifiers {
            nhs_number: "9434765919".into(),
            national_insurance_number: "QQ123456C".into(),
        }),
        usual_address: Some(ev::Address {
            postcode: "TS1 3PA".into(),
            lines: vec!["14 Albert Terrace".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    Event {
        source: format!("urn:crier:{GRO}"),
        data: payload.encode_to_vec(),
        ..event(DEATH, subject, areas)
    }
}

async fn publish_as(producer: &Running, who: &str, e: &Event) -> Result<(), tonic::Status> {
    publisher_as(producer, who)
        .await
        .publish(PublishRequest {
            event: Some(e.clone()),
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn callers_without_valid_credentials_are_unauthenticated() {
    let kafka = kafka_config("unauthenticated");
    let producer = start_producer(&kafka).await;
    let consumer = start_consumer(&kafka).await;
    let e = event(DEATH, "psn:a", &["E06000002"]);

    // TLS, but no client certificate and no token.
    let mut anonymous = PublisherClient::new(channel_as(&producer, None).await);
    let status = anonymous
        .publish(PublishRequest {
            event: Some(e.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let mut client = crier_proto::v1::subscriber_client::SubscriberClient::new(
        channel_as(&consumer, None).await,
    );
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let status = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A token for the wrong audience, and a forged one.
    for token in [
        token_for(PUBLISHER, "someone-else"),
        format!("{}x", token_for(PUBLISHER, TOKEN_AUDIENCE)),
    ] {
        let mut request = Request::new(PublishRequest {
            event: Some(e.clone()),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let status = anonymous.publish(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("invalid bearer token"),
            "{}",
            status.message()
        );
    }

    // A valid token is accepted instead of a certificate.
    let mut request = Request::new(PublishRequest {
        event: Some(e.clone()),
    });
    let token = token_for(PUBLISHER, TOKEN_AUDIENCE);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    anonymous
        .publish(request)
        .await
        .expect("a valid bearer token is accepted");
    assert_eq!(records_in(&kafka, &kafka.events_topic), 1);
}

#[tokio::test]
async fn organisations_without_an_agreement_are_refused_with_what_is_not_covered() {
    let kafka = kafka_config("wrong-org");
    let policy = agreements_file("wrong-org", &agreements(r#"["*"]"#, "2100-01-01T00:00:00Z"));
    let producer = start_producer_with(&kafka, &policy).await;
    let consumer = start_consumer_with(&kafka, &policy).await;

    let mut e = death("psn:a", &["E06000002"]);
    e.source = format!("urn:crier:{NOBODY}");
    let status = publish_as(&producer, NOBODY, &e).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("no agreement in force lets uk.gov.nobody/unknown publish crier.events.v1.DeathRegistered"), "{}", status.message());

    let denied = Subscription::open_as(
        &consumer,
        NOBODY,
        "nobody.deaths",
        filter(&[DEATH], &["E06000002"]),
        resume(),
    )
    .await
    .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Redcar may not ask for Middlesbrough's area, nor for every area.
    let denied = Subscription::open_as(
        &consumer,
        REDCAR,
        "redcar.deaths",
        filter(&[DEATH], &["E06000002"]),
        resume(),
    )
    .await
    .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("receive crier.events.v1.DeathRegistered in E06000002"),
        "{}",
        denied.message()
    );
    assert!(
        Subscription::open_as(
            &consumer,
            REDCAR,
            "redcar.all",
            filter(&[DEATH], &[]),
            resume()
        )
        .await
        .is_err()
    );
    // A subscription belongs to the identity that created it.
    let mine = Subscription::open_as(
        &consumer,
        MIDDLESBROUGH,
        "mbro.deaths",
        filter(&[DEATH], &["E06000002"]),
        resume(),
    )
    .await
    .unwrap();
    mine.close().await;
    let taken = Subscription::open_as(
        &consumer,
        REDCAR,
        "mbro.deaths",
        filter(&[DEATH], &["E06000002"]),
        resume(),
    )
    .await
    .unwrap_err();
    assert_eq!(taken.code(), Code::PermissionDenied);
    assert_eq!(records_in(&kafka, &kafka.events_topic), 0);
}

#[tokio::test]
async fn a_publisher_cannot_impersonate_another_source() {
    let kafka = kafka_config("impersonate");
    let producer = start_producer(&kafka).await;
    let mut e = event(DEATH, "psn:a", &["E06000002"]);
    e.source = format!("urn:crier:{GRO}");
    let status = publish_as(&producer, PUBLISHER, &e).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().starts_with("event.source: "),
        "{}",
        status.message()
    );
    assert!(status.message().contains(PUBLISHER), "{}", status.message());
    assert_eq!(
        records_in(&kafka, &kafka.events_topic),
        0,
        "nothing reaches Kafka"
    );
}

#[tokio::test]
async fn fields_outside_the_agreement_never_reach_the_subscriber() {
    let kafka = kafka_config("minimise");
    let policy = agreements_file(
        "minimise",
        &agreements(
            r#"["registration_id", "usual_address.postcode"]"#,
            "2100-01-01T00:00:00Z",
        ),
    );
    let producer = start_producer_with(&kafka, &policy).await;
    let consumer = start_consumer_with(&kafka, &policy).await;
    let mut mbro = Subscription::open_as(
        &consumer,
        MIDDLESBROUGH,
        "mbro",
        filter(&[DEATH], &["E06000002"]),
        resume(),
    )
    .await
    .unwrap();
    let mut redcar = Subscription::open_as(
        &consumer,
        REDCAR,
        "redcar",
        filter(&[DEATH], &["E06000003"]),
        resume(),
    )
    .await
    .unwrap();

    let both = death("psn:both", &["E06000002", "E06000003"]);
    let only_redcar = death("psn:redcar", &["E06000003"]);
    publish_as(&producer, GRO, &both).await.unwrap();
    publish_as(&producer, GRO, &only_redcar).await.unwrap();

    let got = mbro.take(1).await;
    let data = &got[0].event.as_ref().unwrap().data;
    let payload = ev::DeathRegistered::decode(&data[..]).unwrap();
    assert!(payload.registration_id.starts_with("DE-"));
    assert_eq!(payload.usual_address.as_ref().unwrap().postcode, "TS1 3PA");
    assert!(payload.usual_address.unwrap().lines.is_empty());
    assert!(payload.name.is_none() && payload.identifiers.is_none());
    let raw = String::from_utf8_lossy(data);
    assert!(
        !raw.contains("9434765919") && !raw.contains("Hughes") && !raw.contains("Albert"),
        "not even as bytes"
    );
    assert!(
        mbro.next(QUIET).await.is_none(),
        "an event outside its area is not delivered"
    );

    let got = redcar.take(2).await;
    assert_eq!(
        got[0].event.as_ref().unwrap().data,
        both.data,
        "Redcar's agreement shares every field"
    );
    assert_eq!(ids(&got), vec![both.id, only_redcar.id]);
}

#[tokio::test]
async fn delivery_stops_when_an_agreement_expires() {
    let kafka = kafka_config("expiry");
    let policy = agreements_file("expiry", &agreements(r#"["*"]"#, &iso(6)));
    let producer = start_producer_with(&kafka, &policy).await;
    let consumer = start_consumer_with(&kafka, &policy).await;
    let mut sub = Subscription::open_as(
        &consumer,
        MIDDLESBROUGH,
        "mbro",
        filter(&[DEATH], &["E06000002"]),
        resume(),
    )
    .await
    .unwrap();
    let before = death("psn:1", &["E06000002"]);
    publish_as(&producer, GRO, &before).await.unwrap();
    assert_eq!(ids(&sub.take(1).await), vec![before.id]);

    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = death("psn:2", &["E06000002"]);
    publish_as(&producer, GRO, &after).await.unwrap();
    assert!(
        sub.next(QUIET).await.is_none(),
        "nothing is delivered under an expired agreement"
    );
    let refused = Subscription::open_as(
        &consumer,
        MIDDLESBROUGH,
        "mbro.new",
        filter(&[DEATH], &["E06000002"]),
        resume(),
    )
    .await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_policy_change_takes_effect_on_open_streams_without_a_restart() {
    let kafka = kafka_config("reload");
    let policy = agreements_file(
        "reload",
        &agreements(r#"["registration_id"]"#, "2100-01-01T00:00:00Z"),
    );
    let producer = start_producer_with(&kafka, &policy).await;
    let consumer = start_consumer_with(&kafka, &policy).await;
    let mut sub = Subscription::open_as(
        &consumer,
        MIDDLESBROUGH,
        "mbro",
        filter(&[DEATH], &["E06000002"]),
        resume(),
    )
    .await
    .unwrap();
    publish_as(&producer, GRO, &death("psn:1", &["E06000002"]))
        .await
        .unwrap();
    let first = ev::DeathRegistered::decode(&sub.take(1).await[0].event.as_ref().unwrap().data[..])
        .unwrap();
    assert!(first.name.is_none());

    // The agreement is amended to share names too: the same stream sees it.
    std::fs::write(
        &policy,
        agreements(r#"["registration_id", "name"]"#, "2100-01-01T00:00:00Z"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    publish_as(&producer, GRO, &death("psn:2", &["E06000002"]))
        .await
        .unwrap();
    let second =
        ev::DeathRegistered::decode(&sub.take(1).await[0].event.as_ref().unwrap().data[..])
            .unwrap();
    assert_eq!(second.name.unwrap().family_name, "Hughes");

    // A broken file is refused and the amended agreement stays in force.
    std::fs::write(&policy, "[[agreement]]\nid = 3\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    publish_as(&producer, GRO, &death("psn:3", &["E06000002"]))
        .await
        .unwrap();
    let third = ev::DeathRegistered::decode(&sub.take(1).await[0].event.as_ref().unwrap().data[..])
        .unwrap();
    assert!(third.name.is_some());
}

/// Reads the audit trail until it has at least `n` records (the writer is asynchronous).
async fn audit_trail(kafka: &crier_kafka::KafkaConfig, n: usize) -> Vec<crier_audit::AuditRecord> {
    for _ in 0..50 {
        let (config, topic) = (kafka.clone(), kafka.audit_topic.clone());
        let records =
            tokio::task::spawn_blocking(move || crier_audit::reader::read_all(&config, &topic))
                .await
                .unwrap()
                .unwrap();
        if records.len() >= n {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("audit trail did not reach {n} records");
}

/// The audit trail once `done` holds for it (read again every 200 ms, for up to 10 s).
async fn audit_trail_until(
    kafka: &crier_kafka::KafkaConfig,
    done: impl Fn(&[crier_audit::AuditRecord]) -> bool,
) -> Vec<crier_audit::AuditRecord> {
    let mut records = Vec::new();
    for _ in 0..50 {
        let (config, topic) = (kafka.clone(), kafka.audit_topic.clone());
        records =
            tokio::task::spawn_blocking(move || crier_audit::reader::read_all(&config, &topic))
                .await
                .unwrap()
                .unwrap();
        if done(&records) {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("audit trail never held what was expected: {records:#?}");
}

#[tokio::test]
async fn a_batch_answers_each_event_in_order_and_audits_each_accepted_or_refused_one() {
    let kafka = kafka_config("batch-audit");
    let producer = start_producer(&kafka).await;
    let mut client = publisher(&producer).await;
    let earlier = event(DEATH, "psn:earlier", &["E06000002"]);
    let first = client
        .publish(PublishRequest {
            event: Some(earlier.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let new = event(DEATH, "psn:new", &["E06000002"]);
    let second = event(DEATH, "psn:second", &["E06000003"]);
    let mut foreign = event(DEATH, "psn:foreign", &["E06000002"]);
    foreign.source = format!("urn:crier:{GRO}");
    let mut invalid = event(DEATH, "psn:invalid", &["E06000002"]);
    invalid.areas = vec!["nowhere".into()];
    // The same new event twice in one batch, and one published before it.
    let batch = vec![
        new.clone(),
        earlier.clone(),
        new.clone(),
        foreign.clone(),
        invalid.clone(),
        second.clone(),
    ];
    let results = client
        .publish_batch(PublishBatchRequest { events: batch })
        .await
        .unwrap()
        .into_inner()
        .results;

    let ids: Vec<&str> = results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            &new.id,
            &earlier.id,
            &new.id,
            &foreign.id,
            &invalid.id,
            &second.id
        ]
    );
    let accepted = |i: usize| match &results[i].outcome {
        Some(Outcome::Accepted(a)) => (a.duplicate, a.position.clone()),
        other => panic!("event {i}: {other:?}"),
    };
    let refused = |i: usize| match &results[i].outcome {
        Some(Outcome::Error(e)) => (e.code, e.field.clone()),
        other => panic!("event {i}: {other:?}"),
    };
    let (duplicate, position) = accepted(0);
    assert!(!duplicate && position.is_some());
    assert_eq!(
        accepted(1),
        (true, first.position),
        "a repeat of an earlier publish"
    );
    assert_eq!(accepted(2), (true, position), "a repeat within the batch");
    assert_eq!(refused(3), (Code::PermissionDenied as i32, String::new()));
    assert_eq!(
        refused(4),
        (Code::InvalidArgument as i32, "events[4].areas[0]".into())
    );
    assert!(!accepted(5).0);
    assert_eq!(
        records_in(&kafka, &kafka.events_topic),
        3,
        "each accepted event is in Kafka once"
    );

    let trail = audit_trail(&kafka, 3).await;
    assert_eq!(crier_audit::chain::verify(&trail).map(|s| s.records), Ok(3));
    // A record names its one event, or (for what one request published) each of them.
    let audited: Vec<(Option<crier_audit::Action>, &str)> = trail
        .iter()
        .flat_map(|r| {
            let ids: Vec<&str> = if r.entry.events.is_empty() {
                vec![r.entry.event_id.as_str()]
            } else {
                r.entry.events.iter().map(|e| e.event_id.as_str()).collect()
            };
            ids.into_iter().map(|id| (r.entry.action, id))
        })
        .collect();
    assert_eq!(
        audited,
        [
            (Some(crier_audit::Action::Publish), earlier.id.as_str()),
            (Some(crier_audit::Action::Deny), foreign.id.as_str()),
            (Some(crier_audit::Action::Publish), new.id.as_str()),
            (Some(crier_audit::Action::Publish), second.id.as_str()),
        ]
    );
    assert_eq!(
        trail[2].entry.events.len(),
        2,
        "what one request published is one record"
    );
}

#[tokio::test]
async fn the_subject_query_returns_exactly_the_deliveries_made_and_tampering_is_detected() {
    let kafka = kafka_config("audit");
    let policy = agreements_file("audit", &agreements(r#"["*"]"#, "2100-01-01T00:00:00Z"));
    let producer = start_producer_with(&kafka, &policy).await;
    let consumer = start_consumer_with(&kafka, &policy).await;
    let mut mbro = Subscription::open_as(
        &consumer,
        MIDDLESBROUGH,
        "mbro",
        filter(&[DEATH], &["E06000002"]),
        resume(),
    )
    .await
    .unwrap();
    let mut redcar = Subscription::open_as(
        &consumer,
        REDCAR,
        "redcar",
        filter(&[DEATH], &["E06000003"]),
        resume(),
    )
    .await
    .unwrap();

    let a_both = death("psn:A", &["E06000002", "E06000003"]);
    let a_redcar = death("psn:A", &["E06000003"]);
    let b_mbro = death("psn:B", &["E06000002"]);
    for e in [&a_both, &a_redcar, &b_mbro] {
        publish_as(&producer, GRO, e).await.unwrap();
    }
    let m = mbro.take(2).await;
    let r = redcar.take(2).await;
    mbro.ack(&m).await;
    redcar.ack(&r).await;
    // A refused publish is audited too.
    let _ = publish_as(&producer, NOBODY, &death("psn:A", &["E06000002"])).await;

    // 3 publishes and 1 denial, then what each stream sent and had acknowledged, gathered
    // per stream until its next cursor flush: 4 deliveries and 4 acknowledged positions.
    let trail = audit_trail_until(&kafka, |trail| {
        let named = |action| -> usize {
            trail
                .iter()
                .filter(|r| r.entry.action == Some(action))
                .map(|r| match action {
                    crier_audit::Action::Ack => r.entry.acknowledged().count(),
                    _ => r.entry.named(),
                })
                .sum()
        };
        // The denial is written by the producer's chain, on its own schedule.
        let denied = trail
            .iter()
            .any(|r| r.entry.action == Some(crier_audit::Action::Deny));
        (
            named(crier_audit::Action::Deliver),
            named(crier_audit::Action::Ack),
            denied,
        ) == (4, 4, true)
    })
    .await;
    let summary = crier_audit::chain::verify(&trail).expect("an untouched trail verifies");
    assert_eq!(summary.records, trail.len());
    let mut acked: Vec<(&str, (i32, i64))> = trail
        .iter()
        .flat_map(|r| r.entry.acknowledged().map(|p| (r.entry.actor.as_str(), p)))
        .collect();
    acked.sort();
    acked.dedup();
    assert_eq!(
        acked.len(),
        4,
        "each stream's two positions, once each: {acked:?}"
    );

    // The consumer's chain describes each event it read once, in a Read record written
    // before any delivery of it; deliveries name it by position, so every one of them can
    // be tied to its subject.
    let read_once: Vec<&str> = trail
        .iter()
        .filter(|r| r.entry.action == Some(crier_audit::Action::Read))
        .flat_map(|r| &r.entry.events)
        .map(|e| e.event_id.as_str())
        .collect();
    assert!(read_once.contains(&a_both.id.as_str()), "{read_once:?}");
    assert_eq!(crier_audit::chain::unattributed(&trail), 0);
    let mut about_a: Vec<(String, String)> = crier_audit::chain::deliveries_about(&trail, "psn:A")
        .iter()
        .map(|r| (r.record.entry.actor.clone(), r.event_id.to_owned()))
        .collect();
    about_a.sort();
    let mut expected = vec![
        (MIDDLESBROUGH.to_string(), a_both.id.clone()),
        (REDCAR.to_string(), a_both.id.clone()),
        (REDCAR.to_string(), a_redcar.id.clone()),
    ];
    expected.sort();
    assert_eq!(about_a, expected);
    let denial = trail
        .iter()
        .find(|r| r.entry.action == Some(crier_audit::Action::Deny))
        .unwrap();
    assert_eq!(denial.entry.actor, NOBODY);

    // Someone with write access to Kafka copies the trail, changing one record and dropping
    // another: verification finds both.
    let mut altered = trail.clone();
    altered[4].entry.actor = "uk.gov.someone/else".into();
    let broken = verify_via_kafka(&kafka, "altered", &altered)
        .await
        .unwrap_err();
    assert_eq!(broken.index, 4);
    assert!(broken.reason.contains("altered"), "{broken}");
    let mut deleted = trail.clone();
    // A record in the middle of its chain, so that a later one shows the gap.
    let middle = (0..trail.len())
        .rev()
        .find(|&i| trail[i + 1..].iter().any(|r| r.chain == trail[i].chain) && i > 0)
        .expect("a chain with two records");
    let gone = deleted.remove(middle);
    let broken = verify_via_kafka(&kafka, "deleted", &deleted)
        .await
        .unwrap_err();
    assert_eq!(
        (broken.chain.as_str(), broken.seq),
        (gone.chain.as_str(), gone.seq + 1)
    );
}

/// Writes `records` to a fresh topic and verifies what is read back from it.
async fn verify_via_kafka(
    kafka: &crier_kafka::KafkaConfig,
    name: &str,
    records: &[crier_audit::AuditRecord],
) -> Result<crier_audit::chain::Summary, crier_audit::chain::Broken> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let topic = format!("{}.{name}", kafka.audit_topic);
    let copy_config = crier_kafka::KafkaConfig {
        audit_topic: topic.clone(),
        ..kafka.clone()
    };
    crier_kafka::topics::ensure_topics(&copy_config)
        .await
        .unwrap();
    let producer: FutureProducer = kafka.producer().create().unwrap();
    for r in records {
        let value = serde_json::to_vec(r).unwrap();
        producer
            .send(
                FutureRecord::to(&topic).key(&r.chain).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let copy = audit_trail(&copy_config, records.len()).await;
    assert_eq!(copy.len(), records.len());
    crier_audit::chain::verify(&copy)
}

mod property {
    //! Over random agreements and random events, no subscriber is ever entitled to an event,
    //! or receives a field, that no agreement in force gives it. The oracle here is written
    //! independently of crier-agreements: it reads the agreements as data and checks each
    //! delivered field path against them.
    use super::*;
    use crier_agreements::{Policy, minimise::minimise};
    use proptest::prelude::*;
    use prost_reflect::{DynamicMessage, ReflectMessage, Value};

    const IDS: &[&str] = &["uk.gov.a/x", "uk.gov.b/y", "uk.gov.c/z"];
    const AREAS: &[&str] = &["E06000001", "E06000002", "E07000001", "W06000001"];
    const TYPES: &[&str] = &[DEATH, MOVED];
    const DEATH_FIELDS: &[&str] = &[
        "registration_id",
        "name",
        "name.family_name",
        "identifiers",
        "identifiers.nhs_number",
        "usual_address",
        "usual_address.postcode",
        "date_of_death",
    ];
    const MOVED_FIELDS: &[&str] = &[
        "name",
        "name.given_names",
        "new_address",
        "new_address.uprn",
        "previous_address.postcode",
        "reported_via",
    ];

    #[derive(Debug, Clone)]
    struct Grant {
        identity: usize,
        areas: Option<Vec<usize>>,
        fields: Vec<(usize, Vec<String>)>,
    }

    #[derive(Debug, Clone)]
    struct Agreement {
        in_force: bool,
        grants: Vec<Grant>,
    }

    fn fields_for(t: usize) -> &'static [&'static str] {
        if t == 0 { DEATH_FIELDS } else { MOVED_FIELDS }
    }

    fn grant() -> impl Strategy<Value = Grant> {
        (
            0..IDS.len(),
            prop::option::weighted(0.8, prop::collection::vec(0..AREAS.len(), 1..3)),
            prop::collection::vec(
                (
                    0..2usize,
                    prop::collection::vec(0..6usize, 0..4),
                    any::<bool>(),
                ),
                1..3,
            ),
        )
            .prop_map(|(identity, areas, fields)| Grant {
                identity,
                areas,
                fields: fields
                    .into_iter()
                    .map(|(t, picks, all)| {
                        let names = fields_for(t);
                        let list = if all {
                            vec!["*".to_string()]
                        } else {
                            picks
                                .iter()
                                .map(|i| names[i % names.len()].to_string())
                                .collect()
                        };
                        (t, list)
                    })
                    .collect(),
            })
    }

    fn agreement() -> impl Strategy<Value = Agreement> {
        (any::<bool>(), prop::collection::vec(grant(), 1..3))
            .prop_map(|(in_force, grants)| Agreement { in_force, grants })
    }

    fn toml(agreements: &[Agreement]) -> String {
        let mut out = String::new();
        for (i, a) in agreements.iter().enumerate() {
            let until = if a.in_force {
                "2100-01-01T00:00:00Z"
            } else {
                "2021-01-01T00:00:00Z"
            };
            out += &format!(
                "[[agreement]]\nid = \"A{i}\"\nlegal_basis = \"l\"\npurpose = \"p\"\nvalid_from = \"2020-01-01T00:00:00Z\"\nvalid_until = \"{until}\"\n"
            );
            for g in &a.grants {
                let areas = match &g.areas {
                    None => "\"*\"".to_string(),
                    Some(v) => v
                        .iter()
                        .map(|i| format!("\"{}\"", AREAS[*i]))
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                out += &format!(
                    "[[agreement.subscriber]]\nidentity = \"{}\"\nareas = [{areas}]\n[agreement.subscriber.fields]\n",
                    IDS[g.identity]
                );
                let mut seen = std::collections::BTreeSet::new();
                for (t, list) in &g.fields {
                    if seen.insert(*t) {
                        let list: Vec<String> = list.iter().map(|f| format!("\"{f}\"")).collect();
                        out += &format!("\"{}\" = [{}]\n", TYPES[*t], list.join(", "));
                    }
                }
            }
        }
        out
    }

    /// The grants (first list per type, as the TOML keeps) that apply to this delivery.
    fn applicable<'a>(
        agreements: &'a [Agreement],
        id: usize,
        t: usize,
        areas: &[usize],
    ) -> Vec<&'a Vec<String>> {
        agreements
            .iter()
            .filter(|a| a.in_force)
            .flat_map(|a| &a.grants)
            .filter(|g| g.identity == id)
            .filter(|g| {
                g.areas
                    .as_ref()
                    .is_none_or(|ga| areas.iter().any(|x| ga.contains(x)))
            })
            .filter_map(|g| g.fields.iter().find(|(ft, _)| *ft == t).map(|(_, l)| l))
            .collect()
    }

    fn leaf_paths(msg: &DynamicMessage, prefix: &str, out: &mut Vec<String>) {
        for (field, value) in msg.fields() {
            let path = if prefix.is_empty() {
                field.name().to_string()
            } else {
                format!("{prefix}.{}", field.name())
            };
            match value {
                Value::Message(inner) if inner.fields().next().is_some() => {
                    leaf_paths(inner, &path, out)
                }
                _ => out.push(path),
            }
        }
    }

    fn full_payload(t: usize) -> Vec<u8> {
        let name = Some(ev::PersonName {
            given_names: vec!["A".into()],
            family_name: "B".into(),
        });
        let address = Some(ev::Address {
            uprn: 1,
            postcode: "TS1 1AA".into(),
            lines: vec!["1 Road".into()],
            ..Default::default()
        });
        if t == 0 {
            ev::DeathRegistered {
                registration_id: "R".into(),
                name,
                identifiers: Some(ev::PersonIdentifiers {
                    nhs_number: "9434765919".into(),
                    national_insurance_number: "QQ123456C".into(),
                }),
                usual_address: address,
                date_of_death: Some(ev::Date {
                    year: 2026,
                    month: 1,
                    day: 1,
                }),
                registration_district: "D".into(),
                ..Default::default()
            }
            .encode_to_vec()
        } else {
            ev::AddressChanged {
                name,
                new_address: address.clone(),
                previous_address: address,
                reported_via: "DVLA".into(),
                ..Default::default()
            }
            .encode_to_vec()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn no_subscriber_receives_an_event_or_field_outside_its_agreements(
            agreements in prop::collection::vec(agreement(), 1..4),
            id in 0..IDS.len(),
            t in 0..TYPES.len(),
            areas in prop::collection::vec(0..AREAS.len(), 1..3),
        ) {
            let text = toml(&agreements);
            let policy = Policy::new(crier_agreements::file::parse("p", &text).unwrap());
            let now = 1_800_000_000;
            let area_names: Vec<&str> = areas.iter().map(|i| AREAS[*i]).collect();
            let grants = applicable(&agreements, id, t, &areas);
            let entitlement = policy.entitlement(IDS[id], TYPES[t], area_names.iter().copied(), now);
            prop_assert_eq!(entitlement.is_some(), !grants.is_empty(), "event entitlement");
            let Some(entitlement) = entitlement else { return Ok(()) };

            let registry = crier_schema::Registry::new();
            let out = minimise(&registry, TYPES[t], &full_payload(t), &entitlement.fields);
            let msg = DynamicMessage::decode(registry.event_type(TYPES[t]).unwrap(), &out[..]).unwrap();
            prop_assert!(msg.unknown_fields().next().is_none());
            let mut paths = Vec::new();
            leaf_paths(&msg, "", &mut paths);
            for path in paths {
                let allowed = grants.iter().any(|list| list.iter().any(|f| {
                    f == "*" || path == *f || path.starts_with(&format!("{f}."))
                }));
                prop_assert!(allowed, "field {} delivered but no agreement shares it\n{}", path, text);
            }
            let _ = msg.descriptor();
        }
    }
}
