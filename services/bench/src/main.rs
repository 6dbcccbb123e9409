//! `crier-bench`: Crier's benchmark, one command against the real Kafka of `deploy/kafka.sh`.
//!
//! It starts the release binaries `crier-producer` and `crier-consumer` as child processes
//! (their own topics per run, configured through `CRIER_*` variables), runs the phases in
//! turn, stops the services with SIGTERM and prints a table; `--json` writes the same
//! figures for machines. Each phase has its own module, which says why it measures what it
//! does:
//!
//! | phase      | module        | figures |
//! | ---        | ---           | --- |
//! | (start-up) | `services`    | idle_rss_mb |
//! | baseline   | `baseline`    | baseline_eps |
//! | stream     | `stream`      | stream_publish_eps, stream_ratio |
//! | unary      | `unary`       | unary_eps |
//! | kafka-latency | `baseline` | (notes: the floors under the two latency targets) |
//! | latency    | `unary`       | unary_p50_ms, unary_p99_ms |
//! | e2e        | `e2e`         | e2e_p50/p99/p999_ms, subscriptions, read_amplification |
//! | memory     | `memory`      | streams, consumer_rss_mb |
//! | (the end)  | `services`    | producer_rss_mb |
//!
//! The baseline and stream phases take turns in rounds (`--throughput-rounds`), so that
//! their ratio compares the two under the same conditions on a host whose speed drifts.
//!
//! See PERFORMANCE.md for the method, the machine and the results.

mod baseline;
mod client;
mod e2e;
mod events;
mod load;
mod memory;
mod probe;
mod report;
mod services;
mod slim;
mod stream;
mod streams;
mod unary;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use crier_kafka::KafkaConfig;
use rdkafka::{
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
};

use crate::{
    events::Pool,
    probe::{Cpu, CpuSpan},
    report::Figures,
    services::{Kind, Service},
};

/// Crier's benchmark: publish throughput against a raw Kafka producer, unary publish
/// latency, end-to-end fan-out latency to 420 subscriptions, memory with 2,000 streams and
/// read amplification, against a real Kafka broker.
///
/// The services run as child processes from the release binaries in --bin-dir (build them
/// with `cargo build --release -p crier-bench -p crier-producer -p crier-consumer`), on
/// topics of their own (bench.<run>.*), and are stopped with SIGTERM at the end. Events are
/// realistic DeathRegistered and AddressChanged payloads (300-800 bytes). Every publish is
/// idempotent with acks=all, the baseline's included.
///
/// `deploy/bench.sh [ARGS]` starts Kafka if needed, builds, and runs this with ARGS.
/// Targets (reported, never asserted): stream_ratio >= 0.8, unary_p99_ms <= 10,
/// e2e_p99_ms <= 50, consumer_rss_mb <= 512 with 2,000 streams, idle_rss_mb <= 50,
/// read_amplification <= 1.0.
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_override_self = true)]
struct Args {
    /// Short phases, for the CI smoke test: the run takes under 2 minutes after compiling.
    /// Figures are less stable; nothing is asserted in either mode.
    #[arg(long)]
    quick: bool,
    /// Also write the figures as JSON (the keys; null for a phase not run).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, value_name = "BOOTSTRAP", default_value = "127.0.0.1:9092")]
    kafka: String,
    /// Directory holding the release binaries crier-producer and crier-consumer.
    #[arg(long, value_name = "DIR", default_value = "target/release")]
    bin_dir: PathBuf,
    /// Run only these phases (comma-separated), for example to profile one. The services
    /// always start, so idle_rss_mb and producer_rss_mb are always measured.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PHASES")]
    only: Vec<Phase>,
    /// Seconds each throughput and latency phase measures (after its warm-up), instead of
    /// the mode's default (20 s full, 5 s quick).
    #[arg(long, value_name = "SECS")]
    phase_secs: Option<u64>,
    /// Rounds the baseline and stream phases take turns in, each measuring its share of
    /// the phase's seconds after its own warm-up (default 4 when both run, 1 with --quick
    /// or when only one of them runs). On this shared host the same binaries' stream
    /// throughput moved by up to 28% between consecutive runs, so one long phase each
    /// divided a figure from one minute by one from another.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=20))]
    throughput_rounds: Option<u32>,
    /// Offered rate of the latency and fan-out phases, events/s (the targets are set at
    /// the default, 5,000); a lower rate shows where the fan-out still keeps up.
    #[arg(long, value_name = "EVENTS_PER_SEC", default_value_t = 5000.0)]
    rate: f64,
    /// Deliveries per message that each subscription asks for (`Open.max_batch`), as a busy
    /// subscriber would; 1 takes every delivery in its own message.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_batch: u32,
    /// Unacknowledged deliveries each subscription asks to be allowed (`Open.max_in_flight`;
    /// the server's default is 256 and its limit 10,000). A national stream receives every
    /// event, 5,000 a second: 256 in flight is 51 ms of them, so with the default window the
    /// acknowledgement round trip, not Crier, would set the pace.
    #[arg(long, value_name = "N", default_value_t = 8192)]
    max_in_flight: u32,
    /// How long each subscriber may hold acknowledgements before sending them in one Ack,
    /// as a subscriber that commits in batches would; 0 acknowledges whatever has arrived
    /// as soon as it is read. Latency is measured on arrival either way.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    ack_every_ms: u64,
    /// PublishBatch calls of 500 events the stream phase keeps in flight, each on its own
    /// connection, as a department back-filling from several workers would.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    batches_in_flight: u32,
    /// Partitions of every events topic of the run, the baseline's included. 1, as for
    /// the one broker deploy/kafka.sh starts (deploy/local): Crier's consumer reads all
    /// partitions with one reader per instance, so partitions only spread leaders over
    /// brokers, and on one broker each is more produce requests (PERFORMANCE.md, session
    /// 8). The services' own default, for a cluster, is 6.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=64))]
    partitions: i32,
    /// How long the fan-out phase's publisher gathers events into one PublishBatch, as a
    /// department system publishing thousands a second would (2 ms: 10 events at
    /// 5,000/s); each event's latency still counts from its own scheduled instant, so the
    /// wait is in the figure. 0 publishes each event with unary Publish.
    #[arg(long, value_name = "MS", default_value_t = 2)]
    e2e_batch_ms: u64,
    /// First local port to try for the services' gRPC and metrics listeners.
    #[arg(long, value_name = "PORT", default_value_t = 21050)]
    port_base: u16,
    /// Directory for the services' logs (one sub-directory per run).
    #[arg(long, value_name = "DIR", default_value = ".cache/bench")]
    work_dir: PathBuf,
    /// Keep the run's Kafka topics instead of deleting them at the end.
    #[arg(long)]
    keep_topics: bool,
    /// A setting for the producer service, as `CRIER_<SECTION>__<KEY>=VALUE` (repeatable),
    /// for comparing settings; the figures are then not the defaults'. The services inherit
    /// no other `CRIER_*` variable. `TOKIO_WORKER_THREADS`, `MALLOC_CONF` (jemalloc) and
    /// `RUST_LOG` may be set too.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_setting)]
    producer_env: Vec<(String, String)>,
    /// A setting for the consumer service, like `--producer-env`.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_setting)]
    consumer_env: Vec<(String, String)>,
    /// Write a request file for ghz (the unary cross-check: a real DeathRegistered payload,
    /// with `{{newUUID}}` as the id so every call is a new event) and exit.
    #[arg(long, value_name = "PATH")]
    ghz_request: Option<PathBuf>,
}

/// A part of the run that can be selected with --only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Raw rdkafka producer (baseline_eps).
    Baseline,
    /// PublishBatch, several batches in flight (stream_publish_eps).
    Stream,
    /// Unary Publish, 64 concurrent callers (unary_eps).
    Unary,
    /// Raw rdkafka producer and reader at the same fixed rate: the limits for unary and
    /// end-to-end latency (in the notes).
    KafkaLatency,
    /// Unary Publish at a fixed 5,000/s (unary_p50_ms, unary_p99_ms).
    Latency,
    /// Fan-out to 420 subscriptions at 5,000/s (e2e_*, read_amplification).
    E2e,
    /// 2,000 open streams (consumer_rss_mb).
    Memory,
}

/// How long and how hard each phase runs.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Not counted at the start of each phase.
    pub(crate) warmup: Duration,
    /// Measured part of each throughput phase.
    pub(crate) throughput: Duration,
    /// Turns the baseline and stream phases take, alternating, within `throughput`.
    pub(crate) throughput_rounds: u32,
    /// Measured part of the unary latency phase.
    pub(crate) latency: Duration,
    /// Measured part of the fan-out phase.
    pub(crate) e2e: Duration,
    /// Longest wait for outstanding deliveries after the last e2e publish.
    pub(crate) e2e_drain: Duration,
    /// How long the memory phase holds traffic on 2,000 streams.
    pub(crate) memory_hold: Duration,
    /// Offered rate of the latency and fan-out phases, events/s.
    pub(crate) rate: f64,
    /// Offered rate during the memory phase, events/s.
    pub(crate) memory_rate: f64,
    /// Concurrent unary callers.
    pub(crate) callers: usize,
    /// Connections the unary callers share (as a few department systems would hold).
    pub(crate) connections: usize,
    /// Events per PublishBatch.
    pub(crate) batch_size: usize,
    /// PublishBatch calls in flight (one connection each).
    pub(crate) batches_in_flight: usize,
    /// Area subscriptions in the fan-out phase (one GSS code each).
    pub(crate) areas: usize,
    /// National subscriptions (no area filter) in the fan-out phase.
    pub(crate) national: usize,
    /// Streams in the memory phase.
    pub(crate) streams: usize,
    /// Deliveries per message each subscription asks for.
    pub(crate) max_batch: u32,
    /// Unacknowledged deliveries each subscription asks to be allowed.
    pub(crate) max_in_flight: u32,
    /// Longest a subscriber holds an acknowledgement; zero sends each as soon as it can.
    pub(crate) ack_every: Duration,
    /// How long the fan-out phase's publisher gathers scheduled events into one
    /// `PublishBatch`; zero publishes each with unary `Publish`.
    pub(crate) e2e_batch: Duration,
}

impl Plan {
    fn new(quick: bool, phase_secs: Option<u64>) -> Self {
        let secs = |full: u64, quick_secs: u64| {
            Duration::from_secs(phase_secs.unwrap_or(if quick { quick_secs } else { full }))
        };
        Self {
            warmup: Duration::from_secs(if quick { 1 } else { 3 }),
            throughput: secs(20, 5),
            throughput_rounds: if quick { 1 } else { 4 },
            latency: secs(20, 5),
            e2e: secs(30, 6),
            e2e_drain: Duration::from_secs(if quick { 10 } else { 30 }),
            memory_hold: Duration::from_secs(if quick { 4 } else { 15 }),
            rate: 5000.0,
            memory_rate: 1000.0,
            callers: 64,
            connections: 4,
            batch_size: 500,
            batches_in_flight: 4,
            areas: 400,
            national: 20,
            streams: 2000,
            max_batch: 256,
            max_in_flight: 8192,
            ack_every: Duration::ZERO,
            e2e_batch: Duration::from_millis(2),
        }
    }
}

// The load generator shares the two cores with what it measures; glibc's malloc was a
// fifth of its CPU receiving deliveries (PERFORMANCE.md), CPU the services then lacked. It
// also holds the baseline, which must be the limit: with librdkafka's records allocated by
// glibc, whose frees on the delivery thread contended with the sending thread, the raw
// producer wrote about 40% fewer records a second (PERFORMANCE.md, session 17).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let areas = events::area_codes(400);
    let pool = Pool::new(&areas);
    if let Some(path) = &args.ghz_request {
        return write_ghz_request(&pool, path);
    }
    let mut plan = Plan::new(args.quick, args.phase_secs);
    plan.rate = args.rate;
    plan.max_batch = args.max_batch;
    plan.max_in_flight = args.max_in_flight;
    plan.ack_every = Duration::from_millis(args.ack_every_ms);
    plan.batches_in_flight = args.batches_in_flight as usize;
    plan.e2e_batch = Duration::from_millis(args.e2e_batch_ms);
    let wanted = |p: Phase| args.only.is_empty() || args.only.contains(&p);
    // Taking turns only helps a ratio; one phase alone measures as one stretch.
    plan.throughput_rounds = match args.throughput_rounds {
        Some(rounds) => rounds,
        None if !(wanted(Phase::Baseline) && wanted(Phase::Stream)) => 1,
        None => plan.throughput_rounds,
    };
    let started = Instant::now();
    let run_id = format!(
        "{}-{:04x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        rand::random::<u16>()
    );
    let kafka_port: u16 = args
        .kafka
        .split(',')
        .next()
        .and_then(|first| first.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .context("--kafka must be host:port[,host:port...]")?;
    if args
        .producer_env
        .iter()
        .chain(&args.consumer_env)
        .any(|(k, _)| k == "CRIER_KAFKA__PARTITIONS")
    {
        anyhow::bail!("set partitions with --partitions, so that the baseline's topics match");
    }
    let env = services::Env {
        bin_dir: args.bin_dir.clone(),
        log_dir: args.work_dir.join(&run_id),
        bootstrap: args.kafka.clone(),
        events_topic: format!("bench.{run_id}.events"),
        subscriptions_topic: format!("bench.{run_id}.subscriptions"),
        partitions: args.partitions,
        producer_settings: args.producer_env.clone(),
        consumer_settings: args.consumer_env.clone(),
    };
    client::init(&env.log_dir)?;
    let sizes = pool.sizes();
    let mode = if args.quick { "quick" } else { "full" };
    eprintln!(
        "bench: run {run_id} ({mode}), Kafka {}, topics bench.{run_id}.*, logs {}",
        args.kafka,
        env.log_dir.display()
    );
    let mut figures = Figures::default();
    let mut notes = vec![format!(
        "events: payload {}-{} B (mean {:.0}), whole event {}-{} B (mean {:.0}); \
         DeathRegistered and AddressChanged, {} areas",
        sizes.payload_min,
        sizes.payload_max,
        sizes.payload_avg,
        sizes.event_min,
        sizes.event_max,
        sizes.event_avg,
        areas.len()
    )];
    for (service, settings) in [
        ("producer", &env.producer_settings),
        ("consumer", &env.consumer_settings),
    ] {
        if !settings.is_empty() {
            let set: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
            notes.push(format!(
                "NOT THE DEFAULTS: {service} run with {}",
                set.join(" ")
            ));
        }
    }

    // Start-up: both services, idle.
    let producer = start(Kind::Producer, &env, args.port_base, 1).await?;
    let consumer = start(Kind::Consumer, &env, args.port_base, 1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (p_idle, c_idle) = (producer.rss_mb()?, consumer.rss_mb()?);
    figures.idle_rss_mb = Some(p_idle.max(c_idle));
    notes.push(format!(
        "idle RSS right after start: producer {p_idle:.1} MiB, consumer {c_idle:.1} MiB"
    ));
    // The consumer is stopped while the publish phases run, so it takes no CPU from them;
    // the phases that need it start a fresh one.
    consumer.stop(Duration::from_secs(30)).await?;

    let bench_pid = std::process::id();
    // The broker's CPU is shown apart, so that what is left is load from outside the run.
    let kafka_pid = probe::listener_pid(kafka_port).await.unwrap_or(0);
    if let Some(warning) = probe::autogroup_warning(kafka_pid) {
        eprintln!("bench: {warning}");
        notes.push(warning);
    }
    let publish_procs = [
        ("producer", producer.pid()),
        ("bench", bench_pid),
        ("kafka", kafka_pid),
    ];
    let mut baseline_topics = Vec::new();
    // The two throughput phases take turns, so that the ratio divides rates measured in
    // the same minutes; each figure is the mean rate of its rounds.
    let rounds = plan.throughput_rounds.max(1);
    let slice = Plan {
        throughput: plan.throughput / rounds,
        ..plan.clone()
    };
    let baseline_kafka = wanted(Phase::Baseline)
        .then(|| raw_kafka(&args, &run_id, "baseline", &mut baseline_topics));
    let (mut baseline_rates, mut stream_rates) = (Vec::new(), Vec::new());
    let (mut baseline_cpu, mut stream_cpu) = (CpuSpan::default(), CpuSpan::default());
    for round in 1..=rounds {
        let turn = |name: &str| {
            eprintln!(
                "bench: phase {name} starting (round {round} of {rounds}, {:.1}s measured)",
                slice.throughput.as_secs_f64()
            )
        };
        if let Some(kafka) = &baseline_kafka {
            turn("baseline");
            let before = Cpu::sample(&publish_procs);
            baseline_rates.push(baseline::run(kafka, &slice, &pool).await?);
            baseline_cpu.add(&before, &Cpu::sample(&publish_procs));
        }
        if wanted(Phase::Stream) {
            turn("stream");
            let before = Cpu::sample(&publish_procs);
            stream_rates.push(stream::run(&producer.url(), &slice, &pool).await?);
            stream_cpu.add(&before, &Cpu::sample(&publish_procs));
        }
    }
    let mean =
        |rates: &[f64]| (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64);
    figures.baseline_eps = mean(&baseline_rates);
    figures.stream_publish_eps = mean(&stream_rates);
    if !baseline_rates.is_empty() {
        notes.push(format!("baseline: {}", baseline_cpu.note()));
    }
    if !stream_rates.is_empty() {
        notes.push(format!(
            "stream ({} events per batch, {} in flight): {}",
            plan.batch_size,
            plan.batches_in_flight,
            stream_cpu.note()
        ));
    }
    if rounds > 1 {
        notes.push(rounds_note(
            slice.throughput,
            &baseline_rates,
            &stream_rates,
        ));
    }
    if wanted(Phase::Unary) {
        phase("unary", &plan.throughput);
        let cpu = Cpu::sample(&publish_procs);
        figures.unary_eps = Some(unary::throughput(&producer.url(), &plan, &pool).await?);
        notes.push(format!(
            "unary ({} callers on {} connections): {}",
            plan.callers,
            plan.connections,
            cpu.note(&Cpu::sample(&publish_procs))
        ));
    }
    if wanted(Phase::KafkaLatency) {
        phase("kafka-latency", &plan.latency);
        let pcts = |h: &hdrhistogram::Histogram<u64>| {
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
                load::percentile_ms(h, 50.0).unwrap_or(f64::NAN),
                load::percentile_ms(h, 99.0).unwrap_or(f64::NAN),
                load::percentile_ms(h, 99.9).unwrap_or(f64::NAN),
                h.max() as f64 / 1000.0
            )
        };
        // First with no reader (the unary phase runs no consumer), then with one.
        for (topic, read_back) in [("baseline-latency", false), ("baseline-read", true)] {
            let kafka = raw_kafka(&args, &run_id, topic, &mut baseline_topics);
            let cpu = Cpu::sample(&publish_procs);
            let raw = baseline::latency(&kafka, &plan, &pool, read_back).await?;
            let cpu = cpu.note(&Cpu::sample(&publish_procs));
            let read = match &raw.read {
                Some((h, unread)) => format!(
                    "; schedule to receipt by one raw reader (for e2e, without fan-out) {}, \
                     {unread} unread after the drain",
                    pcts(h)
                ),
                None => " (no reader: the floor for unary_p99_ms)".into(),
            };
            notes.push(format!(
                "raw Kafka at {}/s, same client settings, no Crier: schedule to \
                 acknowledgement {}{read}; {}; {}; {cpu}",
                plan.rate,
                pcts(&raw.acked),
                raw.client.summary(),
                raw.outcomes.summary(),
            ));
        }
    }
    if wanted(Phase::Latency) {
        phase("latency", &plan.latency);
        let cpu = Cpu::sample(&publish_procs);
        let (h, seconds, outcomes) = unary::latency(&producer.url(), &plan, &pool).await?;
        let cpu = cpu.note(&Cpu::sample(&publish_procs));
        let inside = producer_view(&producer).await;
        figures.unary_p50_ms = load::percentile_ms(&h, 50.0);
        figures.unary_p99_ms = load::percentile_ms(&h, 99.0);
        notes.push(format!(
            "unary latency at {}/s: {} samples, p99.9 {:.2} ms, max {:.2} ms; {}; {inside}; \
             {}; {cpu}",
            plan.rate,
            h.len(),
            load::percentile_ms(&h, 99.9).unwrap_or(f64::NAN),
            h.max() as f64 / 1000.0,
            seconds.summary(),
            outcomes.summary()
        ));
    }
    if wanted(Phase::E2e) {
        phase("e2e", &plan.e2e);
        let consumer = start(Kind::Consumer, &env, args.port_base, 2).await?;
        let subs = &areas[..plan.areas.min(areas.len())];
        let procs = [
            ("producer", producer.pid()),
            ("consumer", consumer.pid()),
            ("bench", bench_pid),
            ("kafka", kafka_pid),
        ];
        let cpu = Cpu::sample(&procs);
        let r = e2e::run(
            &producer, &consumer, &plan, &pool, subs, &run_id, kafka_port,
        )
        .await?;
        let cpu = cpu.note(&Cpu::sample(&procs));
        consumer.stop(Duration::from_secs(30)).await?;
        figures.e2e_p50_ms = load::percentile_ms(&r.histogram, 50.0);
        figures.e2e_p99_ms = load::percentile_ms(&r.histogram, 99.0);
        figures.e2e_p999_ms = load::percentile_ms(&r.histogram, 99.9);
        figures.subscriptions = Some(r.subscriptions as f64);
        figures.read_amplification = r.read_amplification_wire.or_else(|| {
            notes.push("read_amplification falls back to Crier's own counter".into());
            Some(r.read_amplification_counter)
        });
        notes.push(format!(
            "e2e: {}; streams opened with max_batch {} and max_in_flight {}; acknowledgements {}",
            r.publishing,
            plan.max_batch,
            plan.max_in_flight,
            if plan.ack_every.is_zero() {
                "sent as deliveries are read".to_owned()
            } else {
                format!("held up to {:?}", plan.ack_every)
            }
        ));
        notes.push(format!(
            "e2e: {} subscriptions opened in {:.1}s; {} events published ({}); {} deliveries \
             of {} due, {} undelivered after a {:.1}s drain (recorded at the cut-off), {} \
             redelivered, {} of events whose publish failed, {} streams ended early; max {:.1} ms",
            r.subscriptions,
            r.open_time.as_secs_f64(),
            r.published,
            r.publish.summary(),
            r.delivered,
            r.expected,
            r.undelivered,
            r.drain_time.as_secs_f64(),
            r.duplicates,
            r.of_failed_publishes,
            r.ended_early,
            r.histogram.max() as f64 / 1000.0
        ));
        notes.push(format!("e2e: {}", r.lag_note));
        notes.push(format!(
            "read amplification (wire, kernel TCP counters): {}; {}",
            r.read_amplification_wire
                .map_or("n/a".into(), |v| format!("{v:.3}")),
            r.wire_note
        ));
        notes.push(format!(
            "read amplification (Crier's crier_live_bytes_total / payload published): {:.3}; \
             catch-up readers started {}, live lag events {}",
            r.read_amplification_counter, r.catch_up_readers, r.lagged
        ));
        notes.push(format!(
            "audit (consumer): {} records written, {} refused by Kafka",
            r.audit_written, r.audit_failed
        ));
        notes.push(format!("e2e: {cpu}"));
    }
    if wanted(Phase::Memory) {
        phase("memory", &plan.memory_hold);
        let consumer = start(Kind::Consumer, &env, args.port_base, 3).await?;
        let subs = &areas[..plan.areas.min(areas.len())];
        let procs = [
            ("producer", producer.pid()),
            ("consumer", consumer.pid()),
            ("bench", bench_pid),
            ("kafka", kafka_pid),
        ];
        let cpu = Cpu::sample(&procs);
        let m = memory::run(&producer, &consumer, &plan, &pool, subs, &run_id).await?;
        notes.push(format!("memory: {}", cpu.note(&Cpu::sample(&procs))));
        consumer.stop(Duration::from_secs(30)).await?;
        figures.streams = Some(m.streams as f64);
        figures.consumer_rss_mb = Some(m.rss_peak_mb);
        notes.push(format!(
            "memory: {} streams opened in {:.1}s; consumer RSS {:.1} MiB once open, peak {:.1} \
             MiB under {}/s for {:.0}s; {} deliveries, {} streams ended early{}; catch-up \
             readers started {}, live lag events {}; publishes: {}",
            m.streams,
            m.open_time.as_secs_f64(),
            m.rss_open_mb,
            m.rss_peak_mb,
            plan.memory_rate,
            plan.memory_hold.as_secs_f64(),
            m.deliveries,
            m.ended_early,
            m.first_end
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            m.catch_up_readers,
            m.lagged,
            m.publish.summary()
        ));
    }

    figures.producer_rss_mb = Some(producer.rss_mb()?);
    producer.stop(Duration::from_secs(30)).await?;
    if !args.keep_topics {
        let mut topics = vec![
            env.events_topic.clone(),
            env.subscriptions_topic.clone(),
            env.audit_topic(),
        ];
        topics.extend(baseline_topics);
        topics.sort();
        topics.dedup();
        delete_topics(&args.kafka, &topics).await;
    }

    let title = format!(
        "Crier benchmark: {mode} mode, run {run_id}, {} CPUs, Kafka {} (events topics of {} \
         partition{}), {:.0}s",
        std::thread::available_parallelism().map_or(0, usize::from),
        args.kafka,
        args.partitions,
        if args.partitions == 1 { "" } else { "s" },
        started.elapsed().as_secs_f64()
    );
    print!("{}", figures.table(&title, &notes));
    if let Some(path) = &args.json {
        figures
            .write_json(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("bench: figures written to {}", path.display());
    }
    Ok(())
}

fn phase(name: &str, measured: &Duration) {
    eprintln!(
        "bench: phase {name} starting ({}s measured)",
        measured.as_secs()
    );
}

async fn start(
    kind: Kind,
    env: &services::Env,
    port_base: u16,
    generation: u32,
) -> anyhow::Result<Service> {
    let ports = services::free_ports(port_base, 2)?;
    Service::start(kind, env, ports[0], ports[1], generation).await
}

/// Deletes the run's topics; a failure only leaves them behind, so it is reported, not fatal.
async fn delete_topics(bootstrap: &str, topics: &[String]) {
    let kafka = KafkaConfig {
        bootstrap_servers: bootstrap.to_owned(),
        ..Default::default()
    };
    let result = async {
        let admin: AdminClient<DefaultClientContext> = kafka.admin().create()?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        anyhow::Ok(admin.delete_topics(&names, &opts).await?)
    }
    .await;
    if let Err(e) = result {
        eprintln!("bench: could not delete topics {topics:?}: {e:#}");
    }
}

/// The ghz request: one event in proto3 JSON, with templated id and subject.
fn write_ghz_request(pool: &Pool, path: &std::path::Path) -> anyhow::Result<()> {
    use base64::Engine;
    let event = &pool.template(0).event;
    let request = serde_json::json!({
        "event": {
            "id": "{{newUUID}}",
            "source": event.source,
            "type": event.r#type,
            "subject": "psn:{{randomString 12}}",
            "areas": event.areas,
            "classification": { "level": "OFFICIAL_SENSITIVE" },
            "data": base64::engine::general_purpose::STANDARD.encode(&event.data),
        }
    });
    std::fs::write(path, serde_json::to_string_pretty(&request)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "bench: wrote a {} request ({} payload bytes) to {}",
        event.r#type,
        event.data.len(),
        path.display()
    );
    Ok(())
}

/// Settings for a raw-client phase writing to `bench.<run_id>.<name>`; the topics that
/// creating it makes are added to `created`, for deleting at the end.
/// "throughput in N alternating rounds ...": each round's rate, and each round's ratio when
/// both phases ran.
fn rounds_note(measured: Duration, baseline: &[f64], stream: &[f64]) -> String {
    let list = |values: Vec<String>| values.join(", ");
    let rates = |rates: &[f64]| list(rates.iter().map(|r| format!("{r:.0}")).collect());
    let mut note = format!(
        "throughput in {} alternating rounds of {:.1}s measured: baseline {}/s; stream {}/s",
        baseline.len().max(stream.len()),
        measured.as_secs_f64(),
        rates(baseline),
        rates(stream)
    );
    if baseline.len() == stream.len() && !stream.is_empty() {
        let ratios = stream
            .iter()
            .zip(baseline)
            .map(|(s, b)| format!("{:.3}", s / b));
        note.push_str(&format!("; ratio by round {}", list(ratios.collect())));
    }
    note
}

fn raw_kafka(args: &Args, run_id: &str, name: &str, created: &mut Vec<String>) -> KafkaConfig {
    let kafka = KafkaConfig {
        bootstrap_servers: args.kafka.clone(),
        partitions: args.partitions,
        events_topic: format!("bench.{run_id}.{name}"),
        subscriptions_topic: format!("bench.{run_id}.baseline-unused"),
        ..Default::default()
    };
    created.extend([
        kafka.events_topic.clone(),
        kafka.subscriptions_topic.clone(),
    ]);
    kafka
}

/// What `--producer-env` and `--consumer-env` may set: the services' own settings, and the
/// runtime's and allocator's knobs (`TOKIO_WORKER_THREADS`, jemalloc's `MALLOC_CONF`) and
/// `RUST_LOG`.
const SETTING_PREFIXES: [&str; 4] = ["CRIER_", "TOKIO_", "MALLOC_CONF", "RUST_LOG"];

/// `KEY=VALUE`, where KEY starts with one of [`SETTING_PREFIXES`].
fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if SETTING_PREFIXES.iter().any(|p| k.starts_with(p)) => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(format!(
            "'{s}' is not KEY=VALUE with KEY starting {}",
            SETTING_PREFIXES.join(", ")
        )),
    }
}

/// The producer's own timing of the calls just made, from its summaries: how much of a
/// unary publish is Kafka's acknowledgement, and so how much the client's figure adds on
/// the way in and out (gRPC, TLS and scheduling on both sides).
async fn producer_view(producer: &Service) -> String {
    match probe::scrape(producer.metrics_addr()).await {
        Ok(m) => {
            let q = |name: &str| {
                let q =
                    |q| probe::quantile_ms(&m, name, q).map_or("n/a".into(), |v| format!("{v:.1}"));
                format!(
                    "p50 {} / p99 {} / p99.9 {} ms",
                    q("0.5"),
                    q("0.99"),
                    q("0.999")
                )
            };
            format!(
                "inside the producer (its summaries cover a rolling minute: this phase's warm-up \
                 too, and a producer phase that ended less than a minute before): the call {}, \
                 of which Kafka's acknowledgement {}",
                q("crier_publish_seconds"),
                q("crier_kafka_write_seconds")
            )
        }
        Err(e) => format!("the producer's own timing not scraped: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_setting;

    #[test]
    fn settings_reach_the_services_only_under_known_prefixes() {
        assert_eq!(
            parse_setting("CRIER_KAFKA__PARTITIONS=2"),
            Ok(("CRIER_KAFKA__PARTITIONS".into(), "2".into()))
        );
        assert_eq!(
            parse_setting("TOKIO_WORKER_THREADS=1"),
            Ok(("TOKIO_WORKER_THREADS".into(), "1".into()))
        );
        assert!(parse_setting("PATH=/tmp").is_err(), "not a service setting");
        assert!(
            parse_setting("CRIER_KAFKA__PARTITIONS").is_err(),
            "no value"
        );
    }
}
