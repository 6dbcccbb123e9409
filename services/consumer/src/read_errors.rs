//! What a Kafka reader does with the errors librdkafka reports while it retries by itself.
//!
//! librdkafka hands a consumer one error event per failed attempt (a refused connection,
//! "all brokers down"), in the same queue as the records. During a broker outage they
//! arrive faster than a reader that pauses on each can take them. In the fault suite's
//! broker restart up to 415 queued up, and a 200 ms pause per error kept the live reader
//! working off stale errors for 62 s after the broker was back, with the fresh records
//! waiting behind them (RELIABILITY.md). So an error is never waited on: it is counted,
//! and logged at most every [`LOG_EVERY`].
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;

/// How often a reader logs while errors keep coming.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// One reader's errors: counted in `crier_kafka_read_errors_total{reader}`, logged sparingly.
#[derive(Debug)]
pub(crate) struct ReadErrors {
    reader: &'static str,
    subscription: Option<String>,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl ReadErrors {
    /// Errors of the reader named `reader` (`live`, `store`, `catch_up`), serving
    /// `subscription` when it serves only one.
    pub(crate) fn new(reader: &'static str, subscription: Option<String>) -> Self {
        Self {
            reader,
            subscription,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// Counts `error`, and logs it unless another was logged within [`LOG_EVERY`].
    pub(crate) fn note(&mut self, error: &KafkaError) {
        metrics::counter!("crier_kafka_read_errors_total", "reader" => self.reader).increment(1);
        if let Some(since) = self.should_log(Instant::now()) {
            tracing::warn!(reader = self.reader, subscription = self.subscription.as_deref(),
                error = %error, errors_since_last_log = since,
                "Kafka read error; librdkafka retries by itself");
        }
    }

    /// Whether an error at `now` is logged, and if so how many came since the last log
    /// (this one included).
    fn should_log(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < LOG_EVERY)
        {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_is_logged_and_a_burst_after_it_only_counted() {
        let mut errors = ReadErrors::new("live", None);
        let start = Instant::now();
        assert_eq!(errors.should_log(start), Some(1));
        for i in 1..100 {
            assert_eq!(errors.should_log(start + Duration::from_millis(i)), None);
        }
        assert_eq!(errors.should_log(start + LOG_EVERY), Some(100));
    }
}
