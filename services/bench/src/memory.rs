//! Memory of the consumer service with 2,000 subscription streams open under traffic.
//!
//! Each of 400 local authorities holds five subscriptions (revenues, housing, electoral
//! services, adult social care, council tax), all on that council's one connection: 2,000
//! streams. A fresh consumer process is started for the phase so the figure is this load
//! alone. Once every stream is open, events are published at a steady rate (open loop)
//! while the streams acknowledge, and the consumer's `VmRSS` is sampled every 250 ms; the
//! figure is the highest sample.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use crier_proto::v1::{Filter, publisher_client::PublisherClient};
use tokio_util::sync::CancellationToken;

use crate::{
    Plan, client,
    events::{DEATH, MOVED, Pool},
    load::{self, Outcomes, Window},
    services::Service,
    streams::{self, Spec, StreamStats},
};

/// What the phase measured.
#[derive(Debug)]
pub(crate) struct Memory {
    pub(crate) streams: usize,
    pub(crate) open_time: Duration,
    /// RSS once every stream is open, before traffic.
    pub(crate) rss_open_mb: f64,
    /// Highest RSS seen under traffic.
    pub(crate) rss_peak_mb: f64,
    pub(crate) deliveries: u64,
    pub(crate) ended_early: u64,
    pub(crate) first_end: Option<String>,
    pub(crate) publish: Arc<Outcomes>,
    /// Catch-up readers the consumer started under traffic (`crier_catch_up_readers_total`).
    pub(crate) catch_up_readers: f64,
    /// Times a stream fell behind the live buffer (`crier_live_lagged_total`).
    pub(crate) lagged: f64,
}

const PURPOSES: [(&str, &[&str]); 5] = [
    ("revenues.deaths", &[DEATH]),
    ("housing.moves", &[MOVED]),
    ("electoral.moves", &[MOVED]),
    ("adult-social-care.deaths", &[DEATH]),
    ("council-tax.changes", &[DEATH, MOVED]),
];

fn specs(areas: &[String], streams: usize, run: &str) -> Vec<Spec> {
    (0..streams)
        .map(|i| {
            let (council, purpose) = (i / PURPOSES.len() % areas.len(), i % PURPOSES.len());
            let round = i / (PURPOSES.len() * areas.len());
            let (what, types) = PURPOSES[purpose];
            let code = &areas[council];
            Spec {
                name: format!("{}.{what}.mem{round}-{run}", code.to_lowercase()),
                filter: Filter {
                    event_types: types.iter().map(|t| (*t).to_owned()).collect(),
                    areas: vec![code.clone()],
                },
                org: i / PURPOSES.len(),
            }
        })
        .collect()
}

/// Runs the phase against a consumer started for it.
pub(crate) async fn run(
    producer: &Service,
    consumer: &Service,
    plan: &Plan,
    pool: &Pool,
    areas: &[String],
    run_id: &str,
) -> anyhow::Result<Memory> {
    let specs = specs(areas, plan.streams, run_id);
    eprintln!("bench: memory: opening {} streams", specs.len());
    let (opened, open_time) = streams::open_all(&consumer.url(), &specs, plan, 32).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_open_mb = consumer.rss_mb()?;
    eprintln!(
        "bench: memory: {} streams open in {:.1}s; consumer RSS {rss_open_mb:.1} MiB",
        specs.len(),
        open_time.as_secs_f64()
    );

    let metrics_before = crate::probe::scrape(consumer.metrics_addr())
        .await
        .unwrap_or_default();
    let stop = CancellationToken::new();
    let stats = Arc::new(StreamStats::default());
    let mut receivers = tokio::task::JoinSet::new();
    for stream in opened {
        let (stop, stats) = (stop.clone(), stats.clone());
        receivers.spawn(stream.consume(stop, stats, |_, _| {}));
    }

    let sampling = CancellationToken::new();
    let sampler = {
        let (pid, sampling) = (consumer.pid(), sampling.clone());
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !sampling.is_cancelled() {
                tick.tick().await;
                if let Ok(rss) = crate::probe::rss_mb(pid) {
                    peak = peak.max(rss);
                }
            }
            peak
        })
    };

    let channels = client::channels(&producer.url(), plan.connections).await?;
    let publish = Arc::new(Outcomes::default());
    let window = Window::starting_now(Duration::ZERO, plan.memory_hold);
    let task = {
        let (pool, publish) = (pool.clone(), publish.clone());
        move |seq: u64, _scheduled: Instant| {
            let mut client = PublisherClient::new(channels[seq as usize % channels.len()].clone());
            let (pool, publish) = (pool.clone(), publish.clone());
            async move {
                if crate::unary::publish(&mut client, &pool, seq, String::new(), &publish).await {
                    publish.ok(&window, Instant::now(), 1);
                }
            }
        }
    };
    load::open_loop(plan.memory_rate, plan.memory_hold, task).await?;
    // Let the last deliveries arrive and be acknowledged before the last samples.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sampling.cancel();
    let rss_peak_mb = sampler.await?.max(consumer.rss_mb()?);
    let metrics_after = crate::probe::scrape(consumer.metrics_addr())
        .await
        .unwrap_or_default();
    let counter = |name: &str| {
        crate::probe::counter(&metrics_after, name) - crate::probe::counter(&metrics_before, name)
    };
    stop.cancel();
    while let Some(joined) = receivers.join_next().await {
        joined?;
    }
    let first_end = stats
        .first_end
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Memory {
        streams: specs.len(),
        open_time,
        rss_open_mb,
        rss_peak_mb,
        deliveries: stats.deliveries.load(Ordering::Relaxed),
        ended_early: stats.ended_early.load(Ordering::Relaxed),
        first_end,
        publish,
        catch_up_readers: counter("crier_catch_up_readers_total"),
        lagged: counter("crier_live_lagged_total"),
    })
}
