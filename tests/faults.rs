//! The fault suite: the service binaries run as child processes, faults are real (`kill -9`,
//! the broker stopped by `deploy/kafka.sh`), and after each one the checker compares what
//! Publish acknowledged with what the subscription received. Sizes come from
//! `CRIER_FAULTS_CITIZENS` × `CRIER_FAULTS_PER_CITIZEN` (CI uses the small defaults).
//! Run with `cargo build --bins && cargo test --test faults -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crier_tests::{
    OPEN_AGREEMENTS, agreements_file, kafka_config,
    load::{Collector, Seen, check, publish_load, size},
    process::{Broker, Kind, ServiceProcess},
};

/// Unacknowledged deliveries allowed per stream in these tests: the bound on what one
/// disconnect can deliver twice.
const WINDOW: u32 = 32;
/// How far back a consumer crash can rewind a subscription: its cursor is saved every
/// 200 ms (`CURSOR_FLUSH_MS` in `process.rs`) once something was acked, after the
/// stream's audit records are queued, and the save is a Kafka write; the rest is slack
/// for a debug build on a busy machine. A save that fails backs off for 5 s, which fails
/// the check: on a healthy broker it should.
const REWIND_LIMIT: Duration = Duration::from_secs(1);
const GIVE_UP: Duration = Duration::from_secs(60);

fn logs() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("crier-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn services(kafka: &crier_kafka::KafkaConfig) -> (ServiceProcess, ServiceProcess) {
    let policy = agreements_file("faults", OPEN_AGREEMENTS);
    (
        ServiceProcess::start(Kind::Producer, kafka, &policy, &logs()),
        ServiceProcess::start(Kind::Consumer, kafka, &policy, &logs()),
    )
}

/// Waits for a subscription to be open before load starts (a new subscription starts at
/// "now"), by letting the collector connect.
/// Waits until each collector's subscription is open (a fixed pause was not enough when the
/// consumer took several seconds to find its new topic: events published before the
/// subscription existed were never due to it), then a little longer for the services.
async fn settle(collectors: &[&Collector]) {
    for c in collectors {
        assert!(
            c.wait_open(Duration::from_secs(60)).await,
            "the subscription did not open within 60 s"
        );
    }
    let pause = if collectors.is_empty() { 3 } else { 1 };
    tokio::time::sleep(Duration::from_secs(pause)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_producer_under_load_loses_nothing_it_acknowledged() {
    let kafka = kafka_config("kill-producer");
    let (mut producer, consumer) = services(&kafka);
    let sub = Collector::start(
        vec![consumer.url()],
        "faults.kill-producer",
        WINDOW,
        true,
        Duration::ZERO,
    );
    settle(&[&sub]).await;
    let (citizens, per) = size();
    let load = tokio::spawn(publish_load(vec![producer.url()], citizens, per, GIVE_UP));
    mid_load(&sub, citizens * per).await;
    producer.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    producer.restart();
    let outcome = load.await.unwrap();
    assert!(
        sub.wait_for(outcome.acked.len(), Duration::from_secs(60))
            .await
    );
    let report = check("kill -9 producer", &outcome, &sub.stop().await);
    assert_eq!(report.lost, 0);
    assert_eq!(report.order_violations, 0);
    // A publish in flight at the kill may have been written before its answer was lost;
    // its retry reaches a restarted producer, which has forgotten it: at most one per publisher.
    assert!(report.duplicated <= citizens, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_consumer_mid_stream_redelivers_and_loses_nothing() {
    let kafka = kafka_config("kill-consumer");
    let (producer, mut consumer) = services(&kafka);
    let (citizens, per) = size();
    // Paced so that the two thirds of the load before the kill take three REWIND_LIMITs.
    let pace =
        (3 * REWIND_LIMIT / (citizens * per * 2 / 3).max(1) as u32).max(Duration::from_millis(5));
    let sub = Collector::start(
        vec![consumer.url()],
        "faults.kill-consumer",
        WINDOW,
        true,
        pace,
    );
    settle(&[&sub]).await;
    let load = tokio::spawn(publish_load(vec![producer.url()], citizens, per, GIVE_UP));
    // Later than mid_load, so that there is a long stream to rewind into.
    assert!(
        sub.wait_for(citizens * per * 2 / 3, Duration::from_secs(60))
            .await
    );
    let killed_at = Instant::now();
    consumer.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.restart();
    let outcome = load.await.unwrap();
    assert!(
        sub.wait_for(outcome.acked.len(), Duration::from_secs(60))
            .await
    );
    let seen = sub.stop().await;
    let report = check("kill -9 consumer", &outcome, &seen);
    assert_eq!(report.lost, 0);
    assert_eq!(report.order_violations, 0);
    assert!(
        report.duplicated > 0,
        "the kill landed after the last delivery"
    );
    // Redelivery starts at the last saved cursor, so everything delivered twice was
    // first received at most REWIND_LIMIT before the kill. A cursor that was never
    // saved would rewind to the subscription's first event.
    let (first, oldest_again) = rewind(&seen, killed_at);
    assert!(
        killed_at - first >= 2 * REWIND_LIMIT,
        "the stream was too short to tell"
    );
    assert!(
        killed_at - oldest_again <= REWIND_LIMIT,
        "redelivery rewound {:?} (limit {REWIND_LIMIT:?}): {report:?}",
        killed_at - oldest_again
    );
}

/// Waits until a third of the load has been delivered, so that the fault lands while
/// events are still flowing. A fixed sleep does not: on a fast machine it can land after
/// the last delivery, and the test then checks nothing.
async fn mid_load(sub: &Collector, total: usize) {
    assert!(sub.wait_for(total / 3, Duration::from_secs(60)).await);
}

/// When the subscription's first event arrived, and when the earliest of those that
/// arrived again after `killed_at` had first arrived.
fn rewind(seen: &[Seen], killed_at: Instant) -> (Instant, Instant) {
    let mut first_at: HashMap<&str, Instant> = HashMap::new();
    let mut oldest_again = killed_at;
    for s in seen {
        match first_at.get(s.id.as_str()) {
            None => {
                first_at.insert(&s.id, s.at);
            }
            Some(&t) if s.at > killed_at => oldest_again = oldest_again.min(t),
            Some(_) => {}
        }
    }
    let first = seen.first().map_or(killed_at, |s| s.at);
    (first, oldest_again)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_fails_publishes_cleanly_and_everything_acknowledged_arrives_after() {
    let broker = Broker::start("outage");
    let mut kafka = kafka_config("broker-outage");
    kafka.bootstrap_servers = broker.bootstrap();
    kafka.delivery_timeout_ms = 3000;
    let (producer, consumer) = services(&kafka);
    let sub = Collector::start(
        vec![consumer.url()],
        "faults.broker",
        WINDOW,
        true,
        Duration::ZERO,
    );
    settle(&[&sub]).await;
    let (citizens, per) = size();
    let load = tokio::spawn(publish_load(vec![producer.url()], citizens, per, GIVE_UP));
    mid_load(&sub, citizens * per).await;
    broker.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.restart();
    let outcome = load.await.unwrap();
    assert!(
        sub.wait_for(outcome.acked.len(), Duration::from_secs(90))
            .await
    );
    let report = check("broker stopped 5 s", &outcome, &sub.stop().await);
    assert_eq!(report.lost, 0);
    assert_eq!(report.order_violations, 0);
    assert_eq!(
        report.acknowledged, report.published,
        "every publish succeeded once the broker was back"
    );
    assert!(report.duplicated <= citizens, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_vanishes_without_acking_gets_everything_on_return() {
    let kafka = kafka_config("vanish");
    let (producer, consumer) = services(&kafka);
    let (citizens, per) = size();
    // First connection: reads but never acks, then disappears.
    let ghost = Collector::start(
        vec![consumer.url()],
        "faults.vanish",
        WINDOW,
        false,
        Duration::ZERO,
    );
    settle(&[&ghost]).await;
    let outcome = publish_load(vec![producer.url()], citizens, per, GIVE_UP).await;
    assert!(
        ghost
            .wait_for(WINDOW as usize, Duration::from_secs(30))
            .await
    );
    let unacked = ghost.stop().await;
    assert!(unacked.len() >= WINDOW as usize);
    // It comes back: everything arrives, from the first event.
    let sub = Collector::start(
        vec![consumer.url()],
        "faults.vanish",
        WINDOW,
        true,
        Duration::ZERO,
    );
    assert!(
        sub.wait_for(outcome.acked.len(), Duration::from_secs(60))
            .await
    );
    let report = check(
        "subscriber vanished without acking",
        &outcome,
        &sub.stop().await,
    );
    assert_eq!(
        (report.lost, report.order_violations, report.duplicated),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_very_slow_subscriber_does_not_hold_back_the_others() {
    let kafka = kafka_config("slow");
    let (producer, consumer) = services(&kafka);
    let slow = Collector::start(
        vec![consumer.url()],
        "faults.slow",
        4,
        true,
        Duration::from_millis(500),
    );
    let fast = Collector::start(
        vec![consumer.url()],
        "faults.fast",
        WINDOW,
        true,
        Duration::ZERO,
    );
    settle(&[&slow, &fast]).await;
    let (citizens, per) = size();
    let started = std::time::Instant::now();
    let outcome = publish_load(vec![producer.url()], citizens, per, GIVE_UP).await;
    assert!(
        fast.wait_for(outcome.acked.len(), Duration::from_secs(30))
            .await,
        "the fast subscriber kept its pace"
    );
    let fast_done = started.elapsed();
    let slow_seen = slow.stop().await;
    let report = check(
        "fast subscriber beside a slow one",
        &outcome,
        &fast.stop().await,
    );
    println!(
        "checker: slow subscriber received {} in the time the fast one received all {} ({fast_done:?})",
        slow_seen.len(),
        report.delivered
    );
    assert_eq!((report.lost, report.order_violations), (0, 0));
    assert!(
        slow_seen.len() < outcome.acked.len(),
        "the slow subscriber really was slow"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_of_two_consumer_replicas_dies_its_subscriptions_continue_on_the_other() {
    let kafka = kafka_config("replicas");
    let (producer, mut a) = services(&kafka);
    let policy = agreements_file("faults", OPEN_AGREEMENTS);
    let mut b = ServiceProcess::start(Kind::Consumer, &kafka, &policy, &logs());
    // The client knows both replicas; connection n goes to the (n mod 2)th.
    let sub = Collector::start(
        vec![b.url(), a.url()],
        "faults.replicas",
        WINDOW,
        true,
        Duration::from_millis(2),
    );
    settle(&[&sub]).await;
    let (citizens, per) = size();
    let load = tokio::spawn(publish_load(vec![producer.url()], citizens, per, GIVE_UP));
    mid_load(&sub, citizens * per).await;
    // Kill whichever replica serves the stream: the first connection can miss a replica
    // that is still starting and land on the other one.
    let serving = sub.seen.lock().unwrap().last().unwrap().connection;
    if serving % 2 == 1 {
        a.kill9()
    } else {
        b.kill9()
    }
    let outcome = load.await.unwrap();
    assert!(
        sub.wait_for(outcome.acked.len(), Duration::from_secs(60))
            .await
    );
    let seen = sub.stop().await;
    let report = check("one of two consumer replicas killed", &outcome, &seen);
    assert_eq!((report.lost, report.order_violations), (0, 0));
    // How far redelivery rewinds is checked by the kill -9 test above, whose stream runs
    // long enough before the kill to tell.
    assert!(
        seen.iter().any(|s| s.connection > serving),
        "the stream did not move to the other replica: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_producer_answers_in_flight_publishes_and_exits_promptly() {
    let kafka = kafka_config("sigterm-producer");
    let (mut producer, consumer) = services(&kafka);
    let sub = Collector::start(
        vec![consumer.url()],
        "faults.sigterm-producer",
        WINDOW,
        true,
        Duration::ZERO,
    );
    settle(&[&sub]).await;
    let (citizens, per) = size();
    let load = tokio::spawn(publish_load(vec![producer.url()], citizens, per, GIVE_UP));
    mid_load(&sub, citizens * per).await;
    let took = producer
        .terminate(Duration::from_secs(30))
        .expect("the producer exits on SIGTERM");
    println!("checker: producer exited {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(20));
    producer.restart();
    let outcome = load.await.unwrap();
    assert!(
        sub.wait_for(outcome.acked.len(), Duration::from_secs(60))
            .await
    );
    let report = check("SIGTERM producer", &outcome, &sub.stop().await);
    assert_eq!((report.lost, report.order_violations), (0, 0));
    assert!(report.duplicated <= citizens, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_consumer_saves_cursors_and_tells_streams_to_reconnect() {
    let kafka = kafka_config("sigterm-consumer");
    let (producer, mut consumer) = services(&kafka);
    let sub = Collector::start(
        vec![consumer.url()],
        "faults.sigterm-consumer",
        WINDOW,
        true,
        Duration::from_millis(2),
    );
    settle(&[&sub]).await;
    let (citizens, per) = size();
    let load = tokio::spawn(publish_load(vec![producer.url()], citizens, per, GIVE_UP));
    mid_load(&sub, citizens * per).await;
    let took = consumer
        .terminate(Duration::from_secs(30))
        .expect("the consumer exits on SIGTERM");
    println!("checker: consumer exited {took:?} after SIGTERM");
    // Saving cursors and draining the audit trail take well under a second; a wait on a
    // task that never ends runs into the service's 8 s bound on each shutdown wait.
    assert!(took < Duration::from_secs(5), "{took:?}");
    consumer.restart();
    let outcome = load.await.unwrap();
    assert!(
        sub.wait_for(outcome.acked.len(), Duration::from_secs(60))
            .await
    );
    let ends = sub.ends.lock().unwrap().clone();
    let seen = sub.stop().await;
    let report = check("SIGTERM consumer", &outcome, &seen);
    assert_eq!((report.lost, report.order_violations), (0, 0));
    assert!(
        ends.iter().any(|e| e == "Unavailable"),
        "the stream ended with UNAVAILABLE: {ends:?}"
    );
    // The cursor was saved on the way out: only deliveries unacked at that moment repeat.
    assert!(report.duplicated <= WINDOW as usize, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_when_many_streams_never_read() {
    use crier_proto::v1::{
        Filter, Open, SubscribeRequest, subscribe_request::Request as ClientMsg,
        subscriber_client::SubscriberClient,
    };
    let kafka = kafka_config("never-read");
    let (producer, mut consumer) = services(&kafka);
    settle(&[]).await;
    let idle = consumer.rss_mib().unwrap();
    // Many clients open a stream, then never read a byte of it.
    let streams: usize = std::env::var("CRIER_FAULTS_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let channels: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(crier_tests::load::subscriber_channel(&consumer.url()).await);
        }
        v
    };
    let mut held = Vec::new();
    for i in 0..streams {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(SubscribeRequest {
            request: Some(ClientMsg::Open(Open {
                subscription: format!("faults.never-read-{i}"),
                filter: Some(Filter {
                    event_types: vec![crier_tests::DEATH.into()],
                    areas: vec![],
                }),
                start: None,
                max_in_flight: 0,
                max_batch: 0,
            })),
        })
        .await
        .unwrap();
        let mut client = SubscriberClient::new(channels[i % channels.len()].clone());
        let response = client
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap();
        held.push((tx, response));
    }
    let opened = consumer.rss_mib().unwrap();
    let (citizens, per) = size();
    let outcome = publish_load(vec![producer.url()], citizens, per * 2, GIVE_UP).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let loaded = consumer.rss_mib().unwrap();
    println!(
        "checker: {streams} streams that never read, {} events published: consumer RSS idle {idle:.0} MiB, streams open {opened:.0} MiB, after load {loaded:.0} MiB",
        outcome.acked.len()
    );
    // Each stream holds at most its in-flight window (256) of deliveries; the bound here is
    // generous for the window times the streams, and far below what unbounded buffering of
    // every event for every stream would take.
    assert!(loaded < 768.0, "consumer RSS {loaded:.0} MiB");
    // And the service still serves: a new, reading subscriber gets new events.
    let fresh = Collector::start(
        vec![consumer.url()],
        "faults.after-never-read",
        WINDOW,
        true,
        Duration::ZERO,
    );
    settle(&[&fresh]).await;
    let more = publish_load(vec![producer.url()], 2, 10, GIVE_UP).await;
    assert!(
        fresh
            .wait_for(more.acked.len(), Duration::from_secs(60))
            .await
    );
    fresh.stop().await;
    // SIGTERM while those clients still hold their streams unread: graceful shutdown must
    // not wait for streams that cannot finish, or Kubernetes kills the pod at 30 s with
    // its audit records unwritten.
    let took = consumer
        .terminate(Duration::from_secs(40))
        .expect("the consumer exits on SIGTERM");
    println!("checker: consumer exited {took:?} after SIGTERM with {streams} streams unread");
    assert!(took < Duration::from_secs(25), "{took:?}");
    drop(held);
}
