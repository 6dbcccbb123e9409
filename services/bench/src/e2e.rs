//! Fan-out: latency from publish to delivery, and read amplification, with every local
//! authority subscribed.
//!
//! 400 area subscriptions (each its own GSS code, each on its own connection, as 400
//! councils would hold them) and 20 national subscriptions (no area filter) receive
//! `DeathRegistered` and `AddressChanged` events published at a fixed rate (open loop).
//! Every event names one area (a death) or two (a move, old and new authority), all among
//! the subscribed codes, so each event is due to 21 or 22 streams.
//!
//! The publisher sends the events scheduled within each `--e2e-batch-ms` (2 ms) as one
//! `PublishBatch`, as a department system publishing thousands a second would; at a rate
//! where that is one event, and with `--e2e-batch-ms 0`, each goes by unary `Publish`.
//!
//! Latency runs from the event's *scheduled* instant, carried in its `correlation_id` as
//! `e2e:<seq>:<nanoseconds since the phase began>`, to its arrival on each stream; one
//! sample per delivery. An event waiting for its batch's call counts that wait.
//! Subscribers acknowledge every delivery. Deliveries still missing when the drain time runs
//! out are recorded at the cut-off (a lower bound) and counted, so a stalled stream cannot
//! make the percentiles look better.
//!
//! Read amplification compares what the consumer process received from the broker with what
//! the producer process sent to it over the same interval, both from the kernel's TCP
//! counters sampled every 250 ms (see `probe.rs`): compressed record batches on both sides,
//! so like is compared with like, and independent of Crier's own counters. Crier's own
//! `crier_live_bytes_total` over the payload bytes published is reported beside it; it is
//! blind to catch-up readers. (`/proc/<pid>/io` `rchar` cannot stand in: librdkafka reads
//! with `recvmsg`, which `rchar` does not count.)

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crier_proto::v1::{Filter, publisher_client::PublisherClient};
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::{
    Plan, client,
    events::{DEATH, MOVED, Pool},
    load::{self, Outcomes, Window},
    probe,
    services::Service,
    streams::{self, Spec, StreamStats},
};

/// What the phase measured.
#[derive(Debug)]
pub(crate) struct E2e {
    pub(crate) histogram: Histogram<u64>,
    /// How the events were published, for the report.
    pub(crate) publishing: String,
    pub(crate) subscriptions: usize,
    pub(crate) published: u64,
    pub(crate) publish: Arc<Outcomes>,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) undelivered: u64,
    pub(crate) duplicates: u64,
    /// Deliveries of events whose publish the bench saw fail (a client timeout, for
    /// example) but which Kafka stored anyway: not due, and not redeliveries either.
    pub(crate) of_failed_publishes: u64,
    pub(crate) ended_early: u64,
    pub(crate) open_time: Duration,
    pub(crate) drain_time: Duration,
    /// Consumer bytes received from Kafka over producer bytes sent to Kafka (wire).
    pub(crate) read_amplification_wire: Option<f64>,
    pub(crate) wire_note: String,
    /// Where the consumer's share of the latency lies, from its lag summaries.
    pub(crate) lag_note: String,
    /// `crier_live_bytes_total` over payload bytes published.
    pub(crate) read_amplification_counter: f64,
    pub(crate) catch_up_readers: f64,
    pub(crate) lagged: f64,
    /// The consumer's audit records written and refused by Kafka during the phase.
    pub(crate) audit_written: f64,
    pub(crate) audit_failed: f64,
}

/// The subscriptions: one per area (type filter: deaths and moves), plus `national` with
/// no area filter, each on its own connection.
fn specs(areas: &[String], national: usize, run: &str) -> Vec<Spec> {
    let types = vec![DEATH.to_owned(), MOVED.to_owned()];
    let mut specs: Vec<Spec> = areas
        .iter()
        .enumerate()
        .map(|(i, code)| Spec {
            name: format!("{}.revenues.e2e-{run}", code.to_lowercase()),
            filter: Filter {
                event_types: types.clone(),
                areas: vec![code.clone()],
            },
            org: i,
        })
        .collect();
    specs.extend((0..national).map(|i| Spec {
        name: format!("national-{i:02}.analytics.e2e-{run}"),
        filter: Filter {
            event_types: types.clone(),
            areas: vec![],
        },
        org: areas.len() + i,
    }));
    specs
}

/// Events in each publish call: those scheduled within `plan.e2e_batch`, at least one, and
/// at most [`MAX_PER_CALL`].
fn per_call(plan: &Plan) -> u64 {
    ((plan.rate * plan.e2e_batch.as_secs_f64()).round() as u64).clamp(1, MAX_PER_CALL)
}

/// The most events one publish call carries: the stream phase's batch size, well under the
/// producer's limit per `PublishBatch` (1,000).
const MAX_PER_CALL: u64 = 500;

/// Distinct areas an event names: each is one area stream due to receive it.
fn distinct(areas: &[String]) -> u32 {
    let mut areas: Vec<&String> = areas.iter().collect();
    areas.sort();
    areas.dedup();
    areas.len() as u32
}

/// Delivery bookkeeping shared by the publisher and every stream.
struct Tracker {
    started: Instant,
    measure_from: Instant,
    /// Deliveries still due, per event.
    remaining: Vec<AtomicU32>,
    /// Scheduled instant of each event, in ns since `started`.
    scheduled: Vec<AtomicU64>,
    outstanding: AtomicU64,
    duplicates: AtomicU64,
    of_failed_publishes: AtomicU64,
    payload_bytes: AtomicU64,
}

/// `remaining` of an event whose publish failed.
const FAILED: u32 = u32::MAX;

impl Tracker {
    /// Event `i`, scheduled `ns` after the start, is due to `due` streams.
    fn due(&self, i: usize, ns: u64, due: u32) {
        debug_assert!(i < self.remaining.len(), "event {i} beyond the schedule");
        if let (Some(r), Some(s)) = (self.remaining.get(i), self.scheduled.get(i)) {
            s.store(ns, Ordering::Relaxed);
            r.store(due, Ordering::Release);
            self.outstanding.fetch_add(u64::from(due), Ordering::AcqRel);
        }
    }

    /// Event `i` was not acknowledged: nothing is due for it.
    fn failed(&self, i: usize) {
        if let Some(r) = self.remaining.get(i) {
            let due = r.swap(FAILED, Ordering::AcqRel);
            self.outstanding.fetch_sub(u64::from(due), Ordering::AcqRel);
        }
    }

    fn delivered(&self, correlation_id: &str, at: Instant, h: &mut Histogram<u64>) {
        let mut parts = correlation_id.split(':');
        let (Some("e2e"), Some(seq), Some(ns)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let (Ok(seq), Ok(ns)) = (seq.parse::<usize>(), ns.parse::<u64>()) else {
            return;
        };
        let Some(remaining) = self.remaining.get(seq) else {
            return;
        };
        let was = remaining.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
            if r == FAILED { None } else { r.checked_sub(1) }
        });
        match was {
            Err(FAILED) => {
                self.of_failed_publishes.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // Delivered more often than due: a redelivery.
            Err(_) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
        }
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        let scheduled = self.started + Duration::from_nanos(ns);
        if scheduled >= self.measure_from {
            load::record(h, at.saturating_duration_since(scheduled));
        }
    }
}

/// Runs the phase against a consumer started for it (so its live reader begins now).
pub(crate) async fn run(
    producer: &Service,
    consumer: &Service,
    plan: &Plan,
    pool: &Pool,
    areas: &[String],
    run_id: &str,
    kafka_port: u16,
) -> anyhow::Result<E2e> {
    let specs = specs(areas, plan.national, run_id);
    let national = plan.national as u32;
    eprintln!("bench: e2e: opening {} subscriptions", specs.len());
    let (opened, open_time) = streams::open_all(&consumer.url(), &specs, plan, 32).await?;

    let per_call = per_call(plan);
    let calls = load::scheduled(plan.rate / per_call as f64, plan.warmup + plan.e2e);
    let events = (calls * per_call) as usize;
    let started = Instant::now();
    let tracker = Arc::new(Tracker {
        started,
        measure_from: started + plan.warmup,
        remaining: (0..events).map(|_| AtomicU32::new(0)).collect(),
        scheduled: (0..events).map(|_| AtomicU64::new(0)).collect(),
        outstanding: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        of_failed_publishes: AtomicU64::new(0),
        payload_bytes: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    let stats = Arc::new(StreamStats::default());
    let merged = Arc::new(Mutex::new(load::histogram()));
    let mut receivers = tokio::task::JoinSet::new();
    for stream in opened {
        let (stop, stats, tracker, merged) =
            (stop.clone(), stats.clone(), tracker.clone(), merged.clone());
        receivers.spawn(async move {
            let mut h = load::histogram();
            stream
                .consume(stop, stats, |d, at| {
                    if let Some(e) = &d.event {
                        tracker.delivered(&e.correlation_id, at, &mut h);
                    }
                })
                .await;
            let _ = merged.lock().unwrap_or_else(|p| p.into_inner()).add(&h);
        });
    }

    let metrics_before = probe::scrape(consumer.metrics_addr())
        .await
        .unwrap_or_default();
    let sampling = CancellationToken::new();
    let owners = probe::Owners::new(vec![producer.pid(), consumer.pid()]);
    let sampler = tokio::spawn(sample_wire(kafka_port, owners, sampling.clone()));
    let channels = client::channels(&producer.url(), plan.connections).await?;
    let publish = Arc::new(Outcomes::default());
    let window = Window::starting_now(plan.warmup, plan.e2e);
    let task = {
        let (pool, publish, tracker) = (pool.clone(), publish.clone(), tracker.clone());
        let gap_ns = 1e9 / plan.rate;
        move |call: u64, scheduled: Instant| {
            let mut client = PublisherClient::new(channels[call as usize % channels.len()].clone());
            let (pool, publish, tracker) = (pool.clone(), publish.clone(), tracker.clone());
            async move {
                // The call carries the events scheduled since the previous one: event j of
                // n was due (n - 1 - j) gaps before the call, and its latency counts from
                // then, so the time it waited to be batched is in the figure.
                let call_ns = scheduled
                    .saturating_duration_since(tracker.started)
                    .as_nanos() as u64;
                let seqs: Vec<(u64, u64)> = (0..per_call)
                    .map(|j| {
                        let early = ((per_call - 1 - j) as f64 * gap_ns) as u64;
                        (call * per_call + j, call_ns.saturating_sub(early))
                    })
                    .collect();
                for &(seq, ns) in &seqs {
                    let template = &pool.template(seq).event;
                    tracker.due(seq as usize, ns, national + distinct(&template.areas));
                }
                let accepted = if per_call == 1 {
                    let (seq, ns) = seqs[0];
                    let ok = crate::unary::publish(
                        &mut client,
                        &pool,
                        seq,
                        format!("e2e:{seq}:{ns}"),
                        &publish,
                    )
                    .await;
                    vec![ok]
                } else {
                    let events = seqs
                        .iter()
                        .map(|&(seq, ns)| (seq, format!("e2e:{seq}:{ns}")));
                    crate::stream::publish_batch(&mut client, &pool, events, &publish).await
                };
                let now = Instant::now();
                for (&(seq, _), ok) in seqs.iter().zip(accepted) {
                    if ok {
                        publish.ok(&window, now, 1);
                        let payload = pool.template(seq).event.data.len() as u64;
                        tracker.payload_bytes.fetch_add(payload, Ordering::Relaxed);
                    } else {
                        // Not acknowledged: nothing is due for it, though Kafka may have it.
                        tracker.failed(seq as usize);
                    }
                }
            }
        }
    };
    eprintln!(
        "bench: e2e: publishing {events} events at {}/s to {} streams",
        plan.rate,
        specs.len()
    );
    let started_calls =
        load::open_loop(plan.rate / per_call as f64, plan.warmup + plan.e2e, task).await?;
    let published = started_calls * per_call;

    // Drain: wait for the deliveries still due, up to the limit.
    let drain_started = Instant::now();
    while tracker.outstanding.load(Ordering::Acquire) > 0
        && drain_started.elapsed() < plan.e2e_drain
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cutoff = Instant::now();
    let drain_time = drain_started.elapsed();
    sampling.cancel();
    let wire = sampler.await?;
    let metrics_after = probe::scrape(consumer.metrics_addr())
        .await
        .unwrap_or_default();
    stop.cancel();
    while let Some(joined) = receivers.join_next().await {
        joined?;
    }

    let mut histogram = merged.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut undelivered = 0u64;
    for (r, s) in tracker.remaining.iter().zip(&tracker.scheduled) {
        let missing = r.load(Ordering::Acquire);
        if missing == 0 || missing == FAILED {
            continue;
        }
        undelivered += u64::from(missing);
        let scheduled = started + Duration::from_nanos(s.load(Ordering::Relaxed));
        if scheduled >= tracker.measure_from {
            let us = (cutoff - scheduled).as_micros() as u64;
            let _ = histogram.record_n(us.max(1), u64::from(missing));
        }
    }
    let payload = tracker.payload_bytes.load(Ordering::Relaxed) as f64;
    let counter =
        |name: &str| probe::counter(&metrics_after, name) - probe::counter(&metrics_before, name);
    let (read_amplification_wire, wire_note) = match wire {
        Ok(tracker) => {
            let (p, c) = (
                tracker.traffic(producer.pid()),
                tracker.traffic(consumer.pid()),
            );
            (
                (p.sent > 0).then(|| c.received as f64 / p.sent as f64),
                format!(
                    "consumer received {} B from Kafka, producer sent {} B to Kafka, payload \
                     published {} B; consumer connections to Kafka opened {} and closed {} \
                     during the phase",
                    c.received, p.sent, payload as u64, c.opened, c.closed
                ),
            )
        }
        Err(e) => (None, format!("wire bytes not measured: {e:#}")),
    };
    let lag = |name: &str| {
        let q = |q| {
            probe::quantile_ms(&metrics_after, name, q).map_or("n/a".into(), |v| format!("{v:.1}"))
        };
        format!("p50 {} / p99 {} / max {} ms", q("0.5"), q("0.99"), q("1"))
    };
    let lag_note = format!(
        "consumer lag from each event's Kafka timestamp (its summaries, which cover a \
         rolling minute, warm-up included, scraped at the cut-off): handed to the streams \
         by the live reader {}; a message's oldest event, taken by gRPC for writing {}",
        lag("crier_live_read_lag_seconds"),
        lag("crier_delivery_lag_seconds")
    );
    let delivered = stats.deliveries.load(Ordering::Relaxed);
    let duplicates = tracker.duplicates.load(Ordering::Relaxed);
    let of_failed_publishes = tracker.of_failed_publishes.load(Ordering::Relaxed);
    Ok(E2e {
        histogram,
        publishing: if per_call == 1 {
            "each event published with unary Publish".to_owned()
        } else {
            format!(
                "published as one PublishBatch of {per_call} events every {:.1} ms",
                per_call as f64 * 1000.0 / plan.rate
            )
        },
        subscriptions: specs.len(),
        published,
        expected: delivered - duplicates - of_failed_publishes + undelivered,
        delivered,
        undelivered,
        duplicates,
        of_failed_publishes,
        ended_early: stats.ended_early.load(Ordering::Relaxed),
        publish,
        open_time,
        drain_time,
        read_amplification_wire,
        wire_note,
        lag_note,
        read_amplification_counter: if payload > 0.0 {
            counter("crier_live_bytes_total") / payload
        } else {
            0.0
        },
        catch_up_readers: counter("crier_catch_up_readers_total"),
        lagged: counter("crier_live_lagged_total"),
        audit_written: counter("crier_audit_records_total"),
        audit_failed: counter("crier_audit_failures_total"),
    })
}

/// Samples every connection to the broker every 250 ms until `stop`.
async fn sample_wire(
    kafka_port: u16,
    mut owners: probe::Owners,
    stop: CancellationToken,
) -> anyhow::Result<probe::WireTracker> {
    let mut tracker = probe::WireTracker::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tracker.add(&probe::kafka_bytes(kafka_port, &mut owners).await?);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
    }
    // One last sample, at the cut-off.
    tracker.add(&probe::kafka_bytes(kafka_port, &mut owners).await?);
    Ok(tracker)
}
