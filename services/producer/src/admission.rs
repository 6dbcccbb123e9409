//! Admission control: a bound on the events the producer is publishing at once.
//!
//! Beyond the bound a call is refused at once with UNAVAILABLE, which gRPC clients treat as
//! "retry with backoff", instead of joining a queue behind Kafka that has no end. When
//! Kafka is slow or away, every call otherwise waits up to the delivery timeout (10 s),
//! so the calls held, and their memory, grow with the offered rate; callers whose
//! deadlines pass first cancel work that was still done.
//!
//! A permit is held by the call. A call its client cancels gives its permit back at once,
//! though its write to Kafka finishes in the background, within the delivery timeout.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// The events being published now, and how many may be.
#[derive(Debug, Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: usize,
}

/// Permission to publish some events; returned when dropped.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    events: usize,
}

impl Admission {
    /// At most `limit` events in progress at once.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Admits `events` more, or refuses them all with UNAVAILABLE when that would go over the
    /// limit. Never waits.
    pub fn admit(&self, events: usize) -> Result<Admitted, Status> {
        let n = u32::try_from(events.max(1)).unwrap_or(u32::MAX);
        match Arc::clone(&self.permits).try_acquire_many_owned(n) {
            Ok(permit) => {
                metrics::gauge!("crier_publish_events_in_progress").increment(events as f64);
                Ok(Admitted {
                    _permit: permit,
                    events,
                })
            }
            Err(_) => {
                metrics::counter!("crier_overload_refusals_total").increment(events as u64);
                Err(Status::unavailable(format!(
                    "the producer is at its limit of {} events being published at once \
                     ([limits] max_events_in_progress); retry with backoff, with the same ids",
                    self.limit
                )))
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        metrics::gauge!("crier_publish_events_in_progress").decrement(self.events as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_over_the_limit_are_refused_until_permits_come_back() {
        let admission = Admission::new(10);
        let first = admission.admit(6).expect("6 of 10");
        let second = admission.admit(4).expect("10 of 10");
        let refused = admission.admit(1).expect_err("11 of 10");
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(
            refused.message().contains("limit of 10")
                && refused.message().contains("max_events_in_progress"),
            "{}",
            refused.message()
        );
        drop(first);
        assert!(admission.admit(7).is_err(), "4 + 7 is over 10");
        let third = admission.admit(6).expect("6 back, 4 + 6 fits");
        drop((second, third));
        assert!(admission.admit(10).is_ok(), "all returned");
    }
}
