//! Crier's bulk path: `PublishBatch`, with several batches in flight, end to end.
//!
//! This is the figure to hold against the baseline (`stream_ratio`): the same events, now
//! through gRPC, validation, deduplication and the producer service's Kafka client. Only
//! events Crier answered `accepted` (and not `duplicate`) count.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use crier_proto::v1::{
    PublishBatchRequest, PublishResult, publish_result::Outcome, publisher_client::PublisherClient,
};
use tonic::transport::Channel;

use crate::{
    Plan, client,
    events::Pool,
    load::{Outcomes, Window},
};

/// Publishes batches of `plan.batch_size` from `plan.batches_in_flight` callers, each on its
/// own connection, and returns accepted events per second.
pub(crate) async fn run(url: &str, plan: &Plan, pool: &Pool) -> anyhow::Result<f64> {
    let channels = client::channels(url, plan.batches_in_flight).await?;
    let outcomes = Arc::new(Outcomes::default());
    let window = Window::starting_now(plan.warmup, plan.throughput);
    let mut callers = tokio::task::JoinSet::new();
    for (caller, channel) in channels.into_iter().enumerate() {
        let (pool, outcomes, batch) = (pool.clone(), outcomes.clone(), plan.batch_size);
        callers.spawn(async move {
            let mut client = PublisherClient::new(channel).max_decoding_message_size(64 << 20);
            // Callers draw from different parts of the pool, as different loads would.
            let mut seq = caller as u64 * 1_000_003;
            while !window.over() {
                let events = (0..batch)
                    .map(|i| pool.event(seq + i as u64, String::new()))
                    .collect();
                seq += batch as u64;
                match client.publish_batch(PublishBatchRequest { events }).await {
                    Ok(response) => {
                        let now = Instant::now();
                        let results = response.into_inner().results;
                        let accepted = results
                            .into_iter()
                            .filter(|r| accepted_as_new(r, &outcomes))
                            .count();
                        outcomes.ok(&window, now, accepted as u64);
                    }
                    Err(status) => outcomes.error(batch as u64, || {
                        format!("{:?}: {}", status.code(), status.message())
                    }),
                }
            }
        });
    }
    while let Some(joined) = callers.join_next().await {
        joined?;
    }
    eprintln!("bench: stream publish: {}", outcomes.summary());
    Ok(window.per_second(outcomes.counted.load(Ordering::Relaxed)))
}

/// True when Crier accepted the event as new; a duplicate or an error is counted in
/// `outcomes` instead.
fn accepted_as_new(result: &PublishResult, outcomes: &Outcomes) -> bool {
    match &result.outcome {
        Some(Outcome::Accepted(a)) if a.duplicate => {
            outcomes.duplicates.fetch_add(1, Ordering::Relaxed);
            false
        }
        Some(Outcome::Accepted(_)) => true,
        Some(Outcome::Error(e)) => {
            outcomes.error(1, || format!("{}: {}", e.code, e.message));
            false
        }
        None => {
            outcomes.error(1, || "result without outcome".into());
            false
        }
    }
}

/// Sends one `PublishBatch` of `events` (sequence number and correlation id each); returns,
/// in order, whether Crier accepted each as new. Errors are counted in `outcomes`.
pub(crate) async fn publish_batch(
    client: &mut PublisherClient<Channel>,
    pool: &Pool,
    events: impl Iterator<Item = (u64, String)>,
    outcomes: &Outcomes,
) -> Vec<bool> {
    let events: Vec<_> = events.map(|(seq, id)| pool.event(seq, id)).collect();
    let n = events.len();
    let mut request = tonic::Request::new(PublishBatchRequest { events });
    request.set_timeout(crate::unary::CALL_TIMEOUT);
    match client.publish_batch(request).await {
        Ok(response) => {
            let results = response.into_inner().results;
            if results.len() != n {
                outcomes.error(n.saturating_sub(results.len()).max(1) as u64, || {
                    format!("result count: {} results for {n} events", results.len())
                });
            }
            results
                .iter()
                .map(|result| accepted_as_new(result, outcomes))
                .chain(std::iter::repeat(false))
                .take(n)
                .collect()
        }
        Err(status) => {
            outcomes.error(n as u64, || {
                format!("{:?}: {}", status.code(), status.message())
            });
            vec![false; n]
        }
    }
}
