//! Notices a Kafka reader that has stopped making progress although records are waiting.
//!
//! librdkafka 2.12 can drop every broker from a client when a shutting-down broker answers
//! a metadata request with an empty broker list, and such a client never connects again
//! (RELIABILITY.md, "Broker restart stalls"). For the live reader that would stall every
//! up-to-date stream of the instance, and for the subscription store's reader every Open,
//! until the instance restarted. So both compare their position with the high watermarks,
//! fetched through another client, every [`CHECK_EVERY`]; a reader that has not moved for
//! [`STALLED_CHECKS`] checks in a row while records were waiting is replaced by a new
//! client at the same offsets.

use std::{collections::BTreeMap, time::Duration};

/// How often the live reader's progress is checked.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Consecutive checks without progress, with records waiting, that count as a stall.
const STALLED_CHECKS: u32 = 2;

/// A reader's progress between checks.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    last: BTreeMap<i32, i64>,
    stalled: u32,
}

impl Progress {
    /// Takes the reader's next offset per partition and the partitions' high watermarks;
    /// true when the reader is stalled.
    pub(crate) fn stalled(
        &mut self,
        position: &BTreeMap<i32, i64>,
        high: &BTreeMap<i32, i64>,
    ) -> bool {
        let waiting = position
            .iter()
            .any(|(p, next)| high.get(p).is_some_and(|h| h > next));
        let moved = *position != self.last;
        self.last.clone_from(position);
        self.stalled = if waiting && !moved {
            self.stalled + 1
        } else {
            0
        };
        self.stalled >= STALLED_CHECKS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn a_reader_that_does_not_move_while_records_wait_is_stalled_after_two_checks() {
        let mut p = Progress::default();
        let high = map(&[(0, 10), (1, 5)]);
        assert!(!p.stalled(&map(&[(0, 7), (1, 5)]), &high));
        assert!(!p.stalled(&map(&[(0, 7), (1, 5)]), &high));
        assert!(p.stalled(&map(&[(0, 7), (1, 5)]), &high));
    }

    #[test]
    fn an_idle_reader_at_the_end_or_one_that_moves_is_not_stalled() {
        let mut p = Progress::default();
        let at_end = map(&[(0, 10)]);
        for _ in 0..5 {
            assert!(!p.stalled(&at_end, &at_end));
        }
        let high = map(&[(0, 100)]);
        for next in [10, 20, 30, 40] {
            assert!(!p.stalled(&map(&[(0, next)]), &high));
        }
    }
}
