//! The end-to-end exchange, through a real Kafka broker: publish over gRPC, receive over
//! gRPC, with acknowledgement, redelivery, resume, replay, ordering, deduplication and the
//! bad-input table. Run with `cargo test --test e2e` while `deploy/kafka.sh` is up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crier_proto::v1::{Event, PublishBatchRequest, PublishRequest, publish_result::Outcome};
use crier_tests::*;
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

const QUIET: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_published_event_reaches_a_matching_subscription_and_nothing_else_does() {
    let kafka = kafka_config("publish-receive");
    let producer = start_producer(&kafka).await;
    let consumer = start_consumer(&kafka).await;
    let mut sub = Subscription::open(
        &consumer,
        "e06000002.revenues",
        filter(&[DEATH], &["E06000002"]),
        resume(),
    )
    .await
    .unwrap();
    assert!(sub.created);

    let mut client = publisher(&producer).await;
    let wanted = event(DEATH, "psn:a", &["E10000023", "E06000002"]);
    let other_area = event(DEATH, "psn:b", &["E09000033"]);
    let other_type = event(MOVED, "psn:c", &["E06000002"]);
    for e in [&other_area, &wanted, &other_type] {
        client
            .publish(PublishRequest {
                event: Some(e.clone()),
            })
            .await
            .unwrap();
    }

    let got = sub.take(1).await;
    let delivered = got[0].event.clone().unwrap();
    assert_eq!(delivered.id, wanted.id);
    assert_eq!(delivered.data, wanted.data, "payload arrives byte for byte");
    assert_eq!(delivered.areas, wanted.areas);
    assert!(delivered.time.is_some(), "Crier fills in the time");
    assert_eq!(
        delivered.partition_key, "psn:a",
        "partition key defaults to the subject"
    );
    assert!(
        sub.next(QUIET).await.is_none(),
        "events outside the filter are never delivered"
    );
}

#[tokio::test]
async fn unacked_events_are_redelivered_after_a_consumer_service_restart() {
    let kafka = kafka_config("redeliver");
    let producer = start_producer(&kafka).await;
    let consumer = start_consumer(&kafka).await;
    let f = || filter(&[DEATH], &[]);
    let mut sub = Subscription::open(&consumer, "la.redeliver", f(), resume())
        .await
        .unwrap();
    let mut client = publisher(&producer).await;
    let published: Vec<Event> = (0..6)
        .map(|_| event(DEATH, "psn:same-citizen", &["E06000002"]))
        .collect();
    for e in &published {
        client
            .publish(PublishRequest {
                event: Some(e.clone()),
            })
            .await
            .unwrap();
    }
    let got = sub.take(6).await;
    sub.ack(&got[..2]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    consumer.stop().await;
    let consumer = start_consumer(&kafka).await;
    let mut sub = Subscription::open(&consumer, "la.redeliver", f(), resume())
        .await
        .unwrap();
    assert!(!sub.created);
    let again = sub.take(4).await;
    let expected: Vec<String> = published[2..].iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        ids(&again),
        expected,
        "exactly the unacked events, in order"
    );
    assert!(sub.next(QUIET).await.is_none());
}

#[tokio::test]
async fn events_unacked_when_a_stream_breaks_are_delivered_on_reconnect() {
    let kafka = kafka_config("reconnect");
    let producer = start_producer(&kafka).await;
    let consumer = start_consumer(&kafka).await;
    let f = || filter(&[DEATH], &[]);
    let mut sub = Subscription::open(&consumer, "la.reconnect", f(), resume())
        .await
        .unwrap();
    let mut client = publisher(&producer).await;
    for _ in 0..3 {
        client
            .publish(PublishRequest {
                event: Some(event(DEATH, "psn:x", &["E06000002"])),
            })
            .await
            .unwrap();
    }
    let got = sub.take(3).await;
    sub.ack(&got[..1]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sub.close().await;

    let mut sub = Subscription::open(&consumer, "la.reconnect", f(), resume())
        .await
        .unwrap();
    assert_eq!(ids(&sub.take(2).await), ids(&got[1..]));
}

#[tokio::test]
async fn a_subscription_resumes_after_its_last_ack_and_can_replay_from_the_beginning() {
    let kafka = kafka_config("resume-replay");
    let producer = start_producer(&kafka).await;
    let consumer = start_consumer(&kafka).await;
    let mut client = publisher(&producer).await;
    let before: Vec<Event> = (0..3)
        .map(|i| event(DEATH, &format!("psn:{i}"), &["E06000002"]))
        .collect();
    for e in &before {
        client
            .publish(PublishRequest {
                event: Some(e.clone()),
            })
            .await
            .unwrap();
    }
    // A new subscription starts at "now" by default ...
    let f = || filter(&[DEATH], &[]);
    let mut sub = Subscription::open(&consumer, "la.resume", f(), resume())
        .await
        .unwrap();
    assert!(
        sub.next(QUIET).await.is_none(),
        "a new subscription does not see the past"
    );
    let during = event(DEATH, "psn:9", &["E06000002"]);
    client
        .publish(PublishRequest {
            event: Some(during.clone()),
        })
        .await
        .unwrap();
    let got = sub.take(1).await;
    assert_eq!(ids(&got), vec![during.id.clone()]);
    sub.ack(&got).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sub.close().await;

    // ... resuming sees only what came after the ack ...
    let after = event(DEATH, "psn:10", &["E06000002"]);
    client
        .publish(PublishRequest {
            event: Some(after.clone()),
        })
        .await
        .unwrap();
    let mut sub = Subscription::open(&consumer, "la.resume", f(), resume())
        .await
        .unwrap();
    let got = sub.take(1).await;
    assert_eq!(ids(&got), vec![after.id.clone()]);
    sub.ack(&got).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sub.close().await;

    // ... and replay from the beginning brings back everything Kafka holds.
    let mut sub = Subscription::open(&consumer, "la.resume", f(), beginning())
        .await
        .unwrap();
    let mut replayed = ids(&sub.take(5).await);
    replayed.sort();
    let mut all: Vec<String> = before
        .iter()
        .chain([&during, &after])
        .map(|e| e.id.clone())
        .collect();
    all.sort();
    assert_eq!(replayed, all);
}

#[tokio::test]
async fn a_subscription_taking_batches_gets_several_events_a_message_each_acked_on_its_own() {
    let kafka = kafka_config("batched");
    let producer = start_producer(&kafka).await;
    let consumer = start_consumer(&kafka).await;
    let client = publisher(&producer).await;
    let publish = |events: Vec<Event>| {
        let mut client = client.clone();
        async move {
            let answer = client
                .publish_batch(PublishBatchRequest { events })
                .await
                .unwrap()
                .into_inner();
            assert!(
                answer
                    .results
                    .iter()
                    .all(|r| matches!(r.outcome, Some(Outcome::Accepted(_))))
            );
        }
    };
    // One citizen, so one partition and one order.
    let citizen = |n: usize| -> Vec<Event> {
        (0..n)
            .map(|_| event(DEATH, "psn:batched", &["E06000002"]))
            .collect()
    };
    let before = citizen(40);
    publish(before.clone()).await;

    // Replayed from Kafka (the catch-up path): in order, at most 16 a message, and in
    // fewer messages than events.
    let name = "la.batched";
    let f = || filter(&[DEATH], &[]);
    let mut sub = Subscription::open_batched(&consumer, SUBSCRIBER, name, f(), beginning(), 16)
        .await
        .unwrap();
    let got = sub.take(40).await;
    assert_eq!(ids(&got), ids_of(&before));
    assert!(
        sub.messages.iter().all(|n| (1..=16).contains(n)),
        "{:?}",
        sub.messages
    );
    assert!(sub.messages.len() < 40, "{:?}", sub.messages);

    // Acknowledged one by one: the 10 not acknowledged come back, and only they.
    sub.ack(&got[..30]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sub.close().await;
    let mut sub = Subscription::open_batched(&consumer, SUBSCRIBER, name, f(), resume(), 16)
        .await
        .unwrap();
    let again = sub.take(10).await;
    assert_eq!(ids(&again), ids_of(&before[30..]));
    sub.ack(&again).await;

    // Published while the stream is open (the live path): batched the same way.
    let live = citizen(50);
    let seen = sub.messages.len();
    publish(live.clone()).await;
    let got = sub.take(50).await;
    assert_eq!(ids(&got), ids_of(&live));
    let sizes = &sub.messages[seen..];
    assert!(sizes.iter().all(|n| (1..=16).contains(n)), "{sizes:?}");
    assert!(sub.next(QUIET).await.is_none(), "nothing else arrives");
}

fn ids_of(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

#[tokio::test]
async fn a_subscription_can_start_from_a_point_in_time() {
    let kafka = kafka_config("since");
    let producer = start_producer(&kafka).await;
    let consumer = start_consumer(&kafka).await;
    let mut client = publisher(&producer).await;
    client
        .publish(PublishRequest {
            event: Some(event(DEATH, "psn:old", &["E06000002"])),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cut = prost_types::Timestamp::from(std::time::SystemTime::now());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let newer = event(DEATH, "psn:new", &["E06000002"]);
    client
        .publish(PublishRequest {
            event: Some(newer.clone()),
        })
        .await
        .unwrap();

    let mut sub = Subscription::open(&consumer, "la.since", filter(&[DEATH], &[]), since(cut))
        .await
        .unwrap();
    assert_eq!(ids(&sub.take(1).await), vec![newer.id]);
    assert!(sub.next(QUIET).await.is_none());
}

#[tokio::test]
async fn events_about_one_citizen_arrive_in_publish_order() {
    let kafka = kafka_config("order");
    let producer = start_producer(&kafka).await;
    let consumer = start_consumer(&kafka).await;
    let mut sub = Subscription::open(
        &consumer,
        "la.order",
        filter(&[DEATH, MOVED], &[]),
        resume(),
    )
    .await
    .unwrap();

    // Ten citizens publish concurrently; each citizen's events are sent one after another.
    let mut tasks = Vec::new();
    for c in 0..10 {
        let mut client = publisher(&producer).await;
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..20 {
                let t = if i % 2 == 0 { MOVED } else { DEATH };
                let e = event(t, &format!("psn:citizen-{c}"), &["E06000002"]);
                client
                    .publish(PublishRequest {
                        event: Some(e.clone()),
                    })
                    .await
                    .unwrap();
                sent.push(e.id);
            }
            (format!("psn:citizen-{c}"), sent)
        }));
    }
    // One citizen's events also go in a single batch, which keeps their order.
    let batch: Vec<Event> = (0..20)
        .map(|_| event(DEATH, "psn:batch", &["E06000002"]))
        .collect();
    let mut client = publisher(&producer).await;
    client
        .publish_batch(PublishBatchRequest {
            events: batch.clone(),
        })
        .await
        .unwrap();

    let mut expected = vec![(
        "psn:batch".to_string(),
        batch.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
    )];
    for t in tasks {
        expected.push(t.await.unwrap());
    }
    let got = sub.take(220).await;
    sub.ack(&got).await;
    for (citizen, sent) in expected {
        let received: Vec<String> = got
            .iter()
            .filter(|d| d.event.as_ref().unwrap().subject == citizen)
            .map(|d| d.event.as_ref().unwrap().id.clone())
            .collect();
        assert_eq!(received, sent, "order for {citizen}");
    }
}

#[tokio::test]
async fn a_retried_publish_with_the_same_id_is_delivered_once() {
    let kafka = kafka_config("dedup");
    let producer = start_producer(&kafka).await;
    let consumer = start_consumer(&kafka).await;
    let mut sub = Subscription::open(&consumer, "la.dedup", filter(&[DEATH], &[]), resume())
        .await
        .unwrap();
    let mut client = publisher(&producer).await;
    let e = event(DEATH, "psn:retry", &["E06000002"]);
    let first = client
        .publish(PublishRequest {
            event: Some(e.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    // Two retries at once, as a client with a short deadline might send.
    let (mut c2, mut c3) = (client.clone(), client.clone());
    let (r2, r3) = tokio::join!(
        c2.publish(PublishRequest {
            event: Some(e.clone())
        }),
        c3.publish(PublishRequest {
            event: Some(e.clone())
        })
    );
    for r in [r2.unwrap().into_inner(), r3.unwrap().into_inner()] {
        assert!(r.duplicate);
        assert_eq!(
            r.position, first.position,
            "a retry is told the original position"
        );
    }
    assert!(!first.duplicate);
    assert_eq!(ids(&sub.take(1).await), vec![e.id]);
    assert!(
        sub.next(QUIET).await.is_none(),
        "the retry is not delivered again"
    );
    assert_eq!(
        records_in(&kafka, &kafka.events_topic),
        1,
        "Kafka holds the event once"
    );
}

#[tokio::test]
async fn copies_of_a_new_event_sent_at_once_are_written_once_and_all_get_its_position() {
    let kafka = kafka_config("dedup-race");
    let producer = start_producer(&kafka).await;
    let client = publisher(&producer).await;
    let e = event(DEATH, "psn:race", &["E06000002"]);
    // Sent together, the copies after the first arrive while Kafka has not yet answered
    // it, so they wait on its claim rather than find it done.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (mut client, e) = (client.clone(), e.clone());
        calls.spawn(async move { client.publish(PublishRequest { event: Some(e) }).await });
    }
    // A retry left waiting for good would hang here: fail instead.
    let answers: Vec<_> = tokio::time::timeout(Duration::from_secs(30), calls.join_all())
        .await
        .expect("every copy is answered")
        .into_iter()
        .map(|r| r.unwrap().into_inner())
        .collect();
    let written: Vec<_> = answers.iter().filter(|a| !a.duplicate).collect();
    assert_eq!(written.len(), 1, "exactly one copy is written: {answers:?}");
    for a in &answers {
        assert_eq!(
            a.position, written[0].position,
            "every copy is told the same position"
        );
    }
    assert_eq!(
        records_in(&kafka, &kafka.events_topic),
        1,
        "Kafka holds the event once"
    );
}

#[tokio::test]
async fn bad_events_get_invalid_argument_naming_the_field_and_nothing_is_written() {
    let kafka = kafka_config("bad-input");
    let producer = start_producer(&kafka).await;
    let mut client = publisher(&producer).await;
    let valid = || event(DEATH, "psn:bad", &["E06000002"]);
    let cases: Vec<(&str, Event)> = vec![
        (
            "event.type",
            Event {
                r#type: "crier.events.v1.Nonsense".into(),
                ..valid()
            },
        ),
        (
            "event.data",
            Event {
                data: vec![0x0a, 0xff, 0xff, 0xff],
                ..valid()
            },
        ),
        (
            // Another type's payload: the first field that does not fit is named.
            "event.data.date_of_birth",
            Event {
                data: crier_proto::events::v1::SchoolEnrolment {
                    school_urn: "1".into(),
                    ..Default::default()
                }
                .encode_to_vec()[..]
                    .to_vec()
                    .into_iter()
                    .chain([0xf8, 0x06, 0x01])
                    .collect(),
                ..valid()
            },
        ),
        (
            "event.id",
            Event {
                id: String::new(),
                ..valid()
            },
        ),
        (
            "event.source",
            Event {
                source: String::new(),
                ..valid()
            },
        ),
        (
            "event.areas[0]",
            Event {
                areas: vec!["E6000002".into()],
                ..valid()
            },
        ),
        (
            "event.areas[1]",
            Event {
                areas: vec!["E06000002".into(), "Z99000001".into()],
                ..valid()
            },
        ),
        (
            "event.subject",
            Event {
                subject: "943 476 5919".into(),
                ..valid()
            },
        ),
        (
            "event",
            Event {
                data: vec![0; 300 * 1024],
                ..valid()
            },
        ),
    ];
    for (field, bad) in cases {
        let status = client
            .publish(PublishRequest { event: Some(bad) })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{field}: {}",
            status.message()
        );
        let violations = status
            .get_details_bad_request()
            .expect("a BadRequest detail")
            .field_violations;
        assert_eq!(violations[0].field, field);
    }
    let status = client
        .publish_batch(PublishBatchRequest { events: vec![] })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("events: "),
        "{}",
        status.message()
    );

    // In a batch, the bad event is reported by index and the good one is still written.
    let mut bad = valid();
    bad.areas = vec!["nowhere".into()];
    let results = client
        .publish_batch(PublishBatchRequest {
            events: vec![valid(), bad],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(matches!(results[0].outcome, Some(Outcome::Accepted(_))));
    let Some(Outcome::Error(err)) = &results[1].outcome else {
        panic!("expected an error")
    };
    assert_eq!(
        (err.code, err.field.as_str()),
        (Code::InvalidArgument as i32, "events[1].areas[0]")
    );
    assert_eq!(
        records_in(&kafka, &kafka.events_topic),
        1,
        "only the valid event reached Kafka"
    );
}

#[tokio::test]
async fn a_subscription_name_reused_with_another_filter_is_refused() {
    let kafka = kafka_config("dup-sub");
    let consumer = start_consumer(&kafka).await;
    let sub = Subscription::open(
        &consumer,
        "la.dup",
        filter(&[DEATH], &["E06000002"]),
        resume(),
    )
    .await
    .unwrap();
    sub.close().await;
    let err = Subscription::open(
        &consumer,
        "la.dup",
        filter(&[MOVED], &["E06000002"]),
        resume(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("la.dup"), "{}", err.message());
    // The same filter in another order is the same subscription.
    let again = Subscription::open(
        &consumer,
        "la.dup",
        filter(&[DEATH], &["E06000002", "E06000002"]),
        resume(),
    )
    .await;
    assert!(again.is_ok());
}

#[tokio::test]
async fn malformed_subscriptions_are_refused_naming_the_field() {
    let kafka = kafka_config("bad-sub");
    let consumer = start_consumer(&kafka).await;
    let cases = [
        ("open.subscription", "bad name!", filter(&[DEATH], &[])),
        ("open.filter.event_types", "la.x", filter(&[], &[])),
        ("open.filter.event_types[0]", "la.x", filter(&["Nope"], &[])),
        (
            "open.filter.areas[0]",
            "la.x",
            filter(&[DEATH], &["E0600000"]),
        ),
    ];
    for (field, name, f) in cases {
        let err = Subscription::open(&consumer, name, f, resume())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "{}",
            err.message()
        );
    }
    let err = Subscription::open_batched(
        &consumer,
        SUBSCRIBER,
        "la.x",
        filter(&[DEATH], &[]),
        resume(),
        501,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "open.max_batch: 501 is over the limit of 500"
    );
}

#[tokio::test]
async fn a_publish_that_kafka_cannot_acknowledge_fails_with_unavailable_or_deadline_exceeded() {
    let mut kafka = kafka_config("no-kafka");
    kafka.bootstrap_servers = "127.0.0.1:1".into();
    kafka.create_topics = false;
    kafka.delivery_timeout_ms = 1500;
    let producer = start_producer(&kafka).await;
    let mut client = publisher(&producer).await;
    let status = client
        .publish(PublishRequest {
            event: Some(event(DEATH, "psn:z", &["E06000002"])),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert!(
        status.message().contains("retry with the same id"),
        "{}",
        status.message()
    );
}

/// Event ids per subject, in order: Kafka orders events per partition, and a subject's
/// events share one, so this is the order a subscriber can rely on.
fn per_subject<'a>(
    events: impl IntoIterator<Item = &'a Event>,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::<String, Vec<String>>::new();
    for e in events {
        out.entry(e.subject.clone()).or_default().push(e.id.clone());
    }
    out
}

fn delivered_events(deliveries: &[crier_proto::v1::Delivery]) -> Vec<Event> {
    deliveries
        .iter()
        .map(|d| d.event.clone().unwrap())
        .collect()
}

async fn publish_each(
    client: &mut crier_proto::v1::publisher_client::PublisherClient<tonic::transport::Channel>,
    events: &[Event],
) {
    for e in events {
        client
            .publish(PublishRequest {
                event: Some(e.clone()),
            })
            .await
            .unwrap();
    }
}

/// The live reader hands a batch only to the streams it has records for, so an area stream
/// sees gaps between its batches. It must still get exactly its events, in order, and after
/// a reconnect exactly those after the acknowledged ones, including while it catches up
/// (a window of one delivery keeps it behind while new batches arrive).
#[tokio::test]
async fn an_area_stream_gets_exactly_its_events_in_order_across_a_reconnect() {
    let kafka = kafka_config("routes");
    let producer = start_producer(&kafka).await;
    let agreements = agreements_file("open", OPEN_AGREEMENTS);
    let consumer = start_consumer_tuned(&kafka, &agreements, |c| {
        c.subscriptions.default_max_in_flight = 1;
    })
    .await;
    let areas = ["E06000002", "E09000033", "E08000025"];
    let f = || filter(&[DEATH], &[areas[0]]);
    let mut client = publisher(&producer).await;
    let events = |tag: &str| -> Vec<Event> {
        (0..60)
            .map(|i| event(DEATH, &format!("psn:{tag}-{}", i % 4), &[areas[i % 3]]))
            .collect()
    };
    let mine = |events: &[Event]| -> Vec<Event> {
        events
            .iter()
            .filter(|e| e.areas[0] == areas[0])
            .cloned()
            .collect()
    };
    /// Takes `n` deliveries one at a time, acknowledging each after `pause`.
    async fn take_acking(sub: &mut Subscription, n: usize, pause: Duration) -> Vec<Event> {
        let mut got = Vec::new();
        for _ in 0..n {
            let one = sub.take(1).await;
            tokio::time::sleep(pause).await;
            sub.ack(&one).await;
            got.extend(delivered_events(&one));
        }
        got
    }

    let mut sub = Subscription::open(&consumer, "route.a", f(), resume())
        .await
        .unwrap();
    let first = events("one");
    publish_each(&mut client, &first).await;
    let acked = take_acking(&mut sub, 10, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sub.close().await;

    let second = events("two");
    publish_each(&mut client, &second).await;
    let mut sub = Subscription::open(&consumer, "route.a", f(), resume())
        .await
        .unwrap();
    // Published while the stream catches up, a few milliseconds apart, so live batches
    // arrive both below where its feed started (records it has not seen) and above it
    // while it is still behind batches it had to skip.
    let third = events("three");
    let publishing = {
        let (mut client, third) = (client.clone(), third.clone());
        tokio::spawn(async move {
            for e in third {
                publish_each(&mut client, std::slice::from_ref(&e)).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let again = take_acking(&mut sub, 50, Duration::from_millis(4)).await;
    publishing.await.unwrap();
    let acked: std::collections::HashSet<String> = acked.into_iter().map(|e| e.id).collect();
    let expected: Vec<Event> = mine(&first)
        .into_iter()
        .filter(|e| !acked.contains(&e.id))
        .chain(mine(&second))
        .chain(mine(&third))
        .collect();
    assert_eq!(
        per_subject(&again),
        per_subject(&expected),
        "every event after the acknowledged ones, once each, in order"
    );
    assert!(sub.next(QUIET).await.is_none(), "nothing about other areas");
}

/// A stream that stops taking deliveries falls behind the live reader: its queue of batches
/// (64 here) overflows, it is dropped from the live routes, and it catches up from Kafka
/// once it takes deliveries again, with nothing lost, repeated or reordered.
#[tokio::test]
async fn a_stream_that_falls_behind_the_live_reader_catches_up_with_nothing_lost() {
    const EVENTS: usize = 300;
    let kafka = kafka_config("lagging");
    let producer = start_producer(&kafka).await;
    let agreements = agreements_file("open", OPEN_AGREEMENTS);
    let consumer = start_consumer_tuned(&kafka, &agreements, |c| {
        c.subscriptions.live_buffer = 16;
        c.subscriptions.default_max_in_flight = 1;
    })
    .await;
    let mut sub = Subscription::open(
        &consumer,
        "route.slow",
        filter(&[DEATH], &["E06000002"]),
        resume(),
    )
    .await
    .unwrap();
    let mut client = publisher(&producer).await;
    let published: Vec<Event> = (0..EVENTS)
        .map(|i| event(DEATH, &format!("psn:slow-{}", i % 3), &["E06000002"]))
        .collect();
    // One call at a time: far more live batches than the stream's queue holds, while its
    // window of one delivery stays full.
    publish_each(&mut client, &published).await;

    let mut got = Vec::with_capacity(EVENTS);
    for _ in 0..EVENTS {
        let one = sub.take(1).await;
        sub.ack(&one).await;
        got.extend(one);
    }
    assert_eq!(
        per_subject(&delivered_events(&got)),
        per_subject(&published)
    );
    assert!(sub.next(QUIET).await.is_none(), "nothing repeated");
}
