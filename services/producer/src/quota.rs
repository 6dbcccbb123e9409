//! Per-publisher quotas: one department's bulk load must not starve the others, nor the
//! broker. Each identity gets a token bucket (`publish_rate_per_sec`, `publish_burst`);
//! an event beyond it is refused with RESOURCE_EXHAUSTED, which tells the client to slow
//! down and retry.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota, RateLimiter};
use tonic::Status;

/// The quotas of every publisher.
#[derive(Debug)]
pub struct Quotas {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    rate: u32,
}

impl Quotas {
    /// `rate` events a second per identity, with bursts of `burst`; `rate == 0` disables.
    pub fn new(rate: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(rate).map(|r| {
            let burst = NonZeroU32::new(burst.max(rate)).unwrap_or(r);
            RateLimiter::keyed(GovernorQuota::per_second(r).allow_burst(burst))
        });
        Self { limiter, rate }
    }

    /// Takes `events` from `identity`'s bucket, or refuses them all.
    pub fn take(&self, identity: &str, events: u32) -> Result<(), Status> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let n = NonZeroU32::new(events.max(1)).unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(&identity.to_owned(), n) {
            Ok(Ok(())) => Ok(()),
            _ => {
                metrics::counter!("crier_quota_refusals_total").increment(1);
                Err(Status::resource_exhausted(format!(
                    "{identity} is over its quota of {} events/s; slow down and retry with the same ids",
                    self.rate
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_over_its_burst_is_refused_and_others_are_not() {
        let q = Quotas::new(10, 20);
        assert!(q.take("a/x", 20).is_ok());
        let refused = q.take("a/x", 1).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(q.take("b/y", 5).is_ok());
        assert!(
            q.take("a/x", 1000).is_err(),
            "more than the burst is never allowed"
        );
        assert!(Quotas::new(0, 0).take("a/x", 1_000_000).is_ok());
    }
}
