//! A Kafka producer that replaces its librdkafka client when the client stops delivering
//! while the cluster can be reached.
//!
//! librdkafka 2.12 can drop every broker from a client when a shutting-down broker answers
//! a metadata request with an empty broker list, and such a client never connects again
//! (confluentinc/librdkafka#5301; RELIABILITY.md, "Broker restart stalls"). The consumer's
//! readers have a watchdog for it; a CI run saw the same failure in the producer service's
//! client, which then timed out every publish for nine minutes. Each service writes events,
//! cursors and audit records through one [`Writer`], so this is the watchdog for all of it.
//!
//! Every [`CHECK_EVERY`] the writer looks at what its client did since the last check.
//! When records waited (some were in flight, or timed out) and none was acknowledged, for
//! [`STALLED_CHECKS`] checks in a row, a fresh client made from the same settings asks the
//! cluster for its brokers. Only if that answer names a broker is the stuck client
//! replaced: during a real outage nothing is replaced, and a client that recovers by
//! itself is left alone. Records still queued in the old client are left to it until they
//! settle: delivered if it recovers after all, otherwise failed with a timeout, as they
//! would have been anyway (their callers were never told OK, so they retry with the same
//! id). Every send from then on goes through the new client.

use std::{
    sync::{
        Arc, RwLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
    message::ToBytes,
    producer::{
        BaseProducer, FutureProducer, FutureRecord, Producer, future_producer::OwnedDeliveryResult,
    },
    util::Timeout,
};

/// How often the writer checks that its client is delivering.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Consecutive checks with records waiting and none acknowledged that count as a stall.
pub const STALLED_CHECKS: u32 = 2;

/// How long the probe waits for the cluster's metadata.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a replaced client may take to settle its queued records before it is dropped.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// A shared Kafka producer, cheap to clone, whose client is replaced when it stalls.
#[derive(Clone)]
pub struct Writer {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<FutureProducer>,
    settings: ClientConfig,
    acked: AtomicU64,
    timed_out: AtomicU64,
    replaced: AtomicU64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("acked", &self.inner.acked.load(Ordering::Relaxed))
            .field("replaced", &self.inner.replaced.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// A writer whose client is made from `settings` (normally `KafkaConfig::producer`),
    /// checked every [`CHECK_EVERY`]. Must be called within a tokio runtime; the watchdog
    /// ends when the last clone of the writer is dropped.
    pub fn start(settings: ClientConfig) -> Result<Self, KafkaError> {
        let client = settings.create()?;
        Ok(Self::adopt(client, settings, CHECK_EVERY))
    }

    /// A writer that sends through `client` until it stalls, and makes replacements from
    /// `settings`; checked every `every`. [`Writer::start`] is this with a client made
    /// from `settings`; tests use it to begin with a client that cannot deliver.
    pub fn adopt(client: FutureProducer, settings: ClientConfig, every: Duration) -> Self {
        let inner = Arc::new(Inner {
            current: RwLock::new(client),
            settings,
            acked: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            replaced: AtomicU64::new(0),
        });
        tokio::spawn(watch(Arc::downgrade(&inner), every));
        Self { inner }
    }

    /// The client sends go through now. Clones share it.
    pub fn client(&self) -> FutureProducer {
        self.inner.current()
    }

    /// Sends `record` as [`FutureProducer::send`] does, counting the outcome for the
    /// watchdog.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: impl Into<Timeout>,
    ) -> OwnedDeliveryResult
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let result = self.client().send(record, queue_timeout).await;
        match &result {
            Ok(_) => self.inner.acked.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) if is_timeout(e) => self.inner.timed_out.fetch_add(1, Ordering::Relaxed),
            Err(_) => 0,
        };
        result
    }

    /// Waits up to `timeout` for every queued record to be settled (call off the async
    /// runtime: it blocks).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.client().flush(timeout)
    }

    /// How many times the client has been replaced.
    pub fn replacements(&self) -> u64 {
        self.inner.replaced.load(Ordering::Relaxed)
    }
}

fn is_timeout(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut)
    )
}

/// The watchdog: ends when the writer is gone.
async fn watch(inner: Weak<Inner>, every: Duration) {
    let mut check = tokio::time::interval(every);
    check.tick().await;
    let mut progress = Progress::default();
    loop {
        check.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let in_flight = inner.current().in_flight_count();
        let seen = Seen {
            acked: inner.acked.load(Ordering::Relaxed),
            timed_out: inner.timed_out.load(Ordering::Relaxed),
            in_flight: in_flight > 0,
        };
        if !progress.stalled(seen) {
            continue;
        }
        let settings = inner.settings.clone();
        let reachable = tokio::task::spawn_blocking(move || brokers_answering(&settings))
            .await
            .unwrap_or(0);
        if reachable == 0 {
            tracing::warn!(
                in_flight,
                "Kafka producer has delivered nothing while records wait, and no broker answers a new client either; waiting"
            );
            continue;
        }
        match inner.settings.create::<FutureProducer>() {
            Ok(fresh) => {
                let old = std::mem::replace(
                    &mut *inner.current.write().unwrap_or_else(|p| p.into_inner()),
                    fresh,
                );
                let n = inner.replaced.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::counter!("crier_kafka_producer_restarts_total").increment(1);
                tracing::error!(
                    in_flight,
                    brokers = reachable,
                    replacements = n,
                    "Kafka producer stalled while a new client reaches the cluster; replaced its client"
                );
                progress = Progress::default();
                // Its queued records settle within message.timeout.ms (delivered or timed
                // out); flushing waits for that, so no send is left without an answer.
                tokio::task::spawn_blocking(move || {
                    let _ = old.flush(RETIRE_TIMEOUT);
                });
            }
            Err(e) => tracing::error!(error = %e, "could not make a new Kafka producer client"),
        }
    }
}

impl Inner {
    fn current(&self) -> FutureProducer {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The number of brokers a new client made from `settings` is told of; 0 when none answers.
fn brokers_answering(settings: &ClientConfig) -> usize {
    let Ok(probe) = settings.create::<BaseProducer>() else {
        return 0;
    };
    probe
        .client()
        .fetch_metadata(None, Timeout::After(PROBE_TIMEOUT))
        .map_or(0, |m| m.brokers().len())
}

/// What the client had done by one check: totals since it started, and whether records
/// were in flight at the check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Seen {
    acked: u64,
    timed_out: u64,
    in_flight: bool,
}

/// Whether the client has gone [`STALLED_CHECKS`] checks in a row with records waiting
/// and none acknowledged.
#[derive(Debug, Default)]
struct Progress {
    last: Seen,
    quiet: u32,
}

impl Progress {
    fn stalled(&mut self, now: Seen) -> bool {
        let waiting = now.in_flight || now.timed_out > self.last.timed_out;
        let moved = now.acked > self.last.acked;
        self.last = now;
        self.quiet = if waiting && !moved { self.quiet + 1 } else { 0 };
        self.quiet >= STALLED_CHECKS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(acked: u64, timed_out: u64, in_flight: bool) -> Seen {
        Seen {
            acked,
            timed_out,
            in_flight,
        }
    }

    #[test]
    fn records_waiting_with_nothing_acknowledged_for_two_checks_is_a_stall() {
        let mut p = Progress::default();
        assert!(!p.stalled(seen(10, 0, true)));
        assert!(!p.stalled(seen(10, 0, true)));
        assert!(p.stalled(seen(10, 0, true)));
    }

    #[test]
    fn timeouts_between_checks_count_as_waiting_even_with_nothing_in_flight_at_the_check() {
        let mut p = Progress::default();
        assert!(!p.stalled(seen(5, 0, false)));
        assert!(!p.stalled(seen(5, 3, false)));
        assert!(p.stalled(seen(5, 9, false)));
    }

    #[test]
    fn an_idle_client_or_one_that_acknowledges_anything_is_not_stalled() {
        let mut p = Progress::default();
        for _ in 0..5 {
            assert!(!p.stalled(seen(0, 0, false)));
        }
        for acked in 1..6 {
            assert!(!p.stalled(seen(acked, acked, true)));
        }
    }
}
