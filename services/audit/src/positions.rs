//! How records name Kafka positions: `<partition>:<offset>` for one, and
//! `<partition>:<first>-<last>` for a run of consecutive offsets, both ends included.
//!
//! A national stream receives every event, so what it is sent and acknowledges is mostly
//! one unbroken run of offsets. Naming each position was about ten bytes per delivery and
//! per acknowledgement, 100,000 of each a second at full fan-out, which the consumer
//! serialised, hashed and compressed and Kafka stored (PERFORMANCE.md, session 12). A run
//! names them all in one item, and says exactly the same.

use std::fmt;

/// Consecutive offsets `first..=last` of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

impl Run {
    /// The run of the one offset `offset`.
    pub fn one(partition: i32, offset: i64) -> Self {
        Self {
            partition,
            first: offset,
            last: offset,
        }
    }

    /// Reads `<p>:<o>` or `<p>:<first>-<last>`; `None` for anything else, or a run whose
    /// last offset comes before its first.
    pub fn parse(text: &str) -> Option<Self> {
        let (p, offsets) = text.split_once(':')?;
        let partition = p.parse().ok()?;
        let (first, last) = match offsets.split_once('-') {
            Some((first, last)) => (first.parse().ok()?, last.parse().ok()?),
            None => {
                let o = offsets.parse().ok()?;
                (o, o)
            }
        };
        (first <= last).then_some(Self {
            partition,
            first,
            last,
        })
    }

    /// How many offsets the run names.
    pub fn len(&self) -> usize {
        (self.last - self.first + 1) as usize
    }

    /// Never true: a run names at least one offset.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Each position of the run, as `(partition, offset)`.
    pub fn positions(self) -> impl Iterator<Item = (i32, i64)> {
        (self.first..=self.last).map(move |o| (self.partition, o))
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}:{}", self.partition, self.first)
        } else {
            write!(f, "{}:{}-{}", self.partition, self.first, self.last)
        }
    }
}

/// Positions gathered in the order they happened, as runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runs(Vec<Run>);

impl Runs {
    /// Adds a position: it extends the last run when it is the next offset of the same
    /// partition, and starts a run otherwise.
    pub fn push(&mut self, partition: i32, offset: i64) {
        match self.0.last_mut() {
            Some(run) if run.partition == partition && run.last + 1 == offset => run.last = offset,
            _ => self.0.push(Run::one(partition, offset)),
        }
    }

    /// How many runs (the items a record will hold).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing has been added.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The runs as a record writes them, emptying this.
    pub fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.0)
            .iter()
            .map(Run::to_string)
            .collect()
    }
}

/// Every position that `items` (single positions or runs) name, in order; items that are
/// neither are left out.
pub fn expand<'a>(items: impl IntoIterator<Item = &'a str>) -> impl Iterator<Item = (i32, i64)> {
    items
        .into_iter()
        .filter_map(Run::parse)
        .flat_map(Run::positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_offsets_of_a_partition_become_one_run_and_anything_else_starts_another() {
        let mut runs = Runs::default();
        for (p, o) in [(0, 5), (0, 6), (0, 7), (1, 8), (0, 8), (0, 10), (0, 9)] {
            runs.push(p, o);
        }
        assert_eq!(runs.len(), 5);
        let written = runs.take();
        assert_eq!(written, ["0:5-7", "1:8", "0:8", "0:10", "0:9"]);
        assert!(runs.is_empty());
        let back: Vec<_> = expand(written.iter().map(String::as_str)).collect();
        assert_eq!(
            back,
            [(0, 5), (0, 6), (0, 7), (1, 8), (0, 8), (0, 10), (0, 9)]
        );
    }

    #[test]
    fn single_positions_as_older_records_wrote_them_still_read() {
        assert_eq!(Run::parse("3:42"), Some(Run::one(3, 42)));
        assert_eq!(Run::parse("3:40-42").map(|r| r.len()), Some(3));
    }

    #[test]
    fn what_is_not_a_position_or_a_run_is_refused() {
        for text in ["", "3", "3:", ":4", "a:4", "3:x", "3:5-4", "3:4-", "3:-4"] {
            assert_eq!(Run::parse(text), None, "{text:?}");
        }
    }
}
