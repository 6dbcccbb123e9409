//! Unary `Publish`, the path most department systems use: one event per call.
//!
//! - [`throughput`]: 64 concurrent callers in a closed loop; accepted events per second.
//! - [`latency`]: a fixed offered rate (5,000/s), open loop, latency from each request's
//!   scheduled start to its answer, in an HDR histogram.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use crier_proto::v1::{PublishRequest, publisher_client::PublisherClient};
use hdrhistogram::Histogram;
use tonic::transport::Channel;

use crate::{
    Plan, client,
    events::Pool,
    load::{self, Outcomes, Window},
};

/// Longest a publish may take before the benchmark gives up on it (the producer's own
/// Kafka delivery timeout is 10 s).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends one event; `Ok(true)` when Crier accepted it as new.
pub(crate) async fn publish(
    client: &mut PublisherClient<Channel>,
    pool: &Pool,
    seq: u64,
    correlation_id: String,
    outcomes: &Outcomes,
) -> bool {
    let mut request = tonic::Request::new(PublishRequest {
        event: Some(pool.event(seq, correlation_id)),
    });
    request.set_timeout(CALL_TIMEOUT);
    match client.publish(request).await {
        Ok(r) if r.get_ref().duplicate => {
            outcomes.duplicates.fetch_add(1, Ordering::Relaxed);
            false
        }
        Ok(_) => true,
        Err(status) => {
            outcomes.error(1, || format!("{:?}: {}", status.code(), status.message()));
            false
        }
    }
}

/// Closed loop: `plan.callers` callers over `plan.connections` connections; returns
/// accepted events per second.
pub(crate) async fn throughput(url: &str, plan: &Plan, pool: &Pool) -> anyhow::Result<f64> {
    let channels = client::channels(url, plan.connections).await?;
    let outcomes = Arc::new(Outcomes::default());
    let window = Window::starting_now(plan.warmup, plan.throughput);
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..plan.callers {
        let mut client = PublisherClient::new(channels[caller % channels.len()].clone());
        let (pool, outcomes) = (pool.clone(), outcomes.clone());
        callers.spawn(async move {
            let mut seq = caller as u64 * 7_919;
            while !window.over() {
                if publish(&mut client, &pool, seq, String::new(), &outcomes).await {
                    outcomes.ok(&window, Instant::now(), 1);
                }
                seq += 1;
            }
        });
    }
    while let Some(joined) = callers.join_next().await {
        joined?;
    }
    eprintln!("bench: unary throughput: {}", outcomes.summary());
    Ok(window.per_second(outcomes.counted.load(Ordering::Relaxed)))
}

/// Open loop at `plan.rate` for warm-up plus `plan.latency`; returns the histogram of
/// accepted publishes started after the warm-up, the slowest of each second, and the
/// outcomes.
pub(crate) async fn latency(
    url: &str,
    plan: &Plan,
    pool: &Pool,
) -> anyhow::Result<(Histogram<u64>, Arc<load::Seconds>, Arc<Outcomes>)> {
    let channels = client::channels(url, plan.connections).await?;
    let outcomes = Arc::new(Outcomes::default());
    let histogram = Arc::new(Mutex::new(load::histogram()));
    let window = Window::starting_now(plan.warmup, plan.latency);
    let seconds = load::Seconds::new(window.measure_from, plan.latency);
    let task = {
        let (pool, outcomes, histogram, seconds) = (
            pool.clone(),
            outcomes.clone(),
            histogram.clone(),
            seconds.clone(),
        );
        move |seq: u64, scheduled: Instant| {
            let mut client = PublisherClient::new(channels[seq as usize % channels.len()].clone());
            let (pool, outcomes, histogram, seconds) = (
                pool.clone(),
                outcomes.clone(),
                histogram.clone(),
                seconds.clone(),
            );
            async move {
                if scheduled >= window.measure_from {
                    seconds.started(scheduled);
                }
                if publish(&mut client, &pool, seq, String::new(), &outcomes).await {
                    let done = Instant::now();
                    outcomes.ok(&window, done, 1);
                    if scheduled >= window.measure_from {
                        seconds.record(scheduled, done - scheduled);
                        let mut h = histogram.lock().unwrap_or_else(|p| p.into_inner());
                        load::record(&mut h, done - scheduled);
                    }
                }
            }
        }
    };
    load::open_loop(plan.rate, plan.warmup + plan.latency, task).await?;
    eprintln!("bench: unary latency: {}", outcomes.summary());
    let histogram = histogram.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok((histogram, seconds, outcomes))
}
