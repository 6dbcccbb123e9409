//! A batch of records from the live reader, indexed so that each stream finds the records
//! it wants without looking at the others.
//!
//! With 400 area subscriptions on one instance, each matching a few records in a hundred,
//! testing every record against every filter was the consumer's largest cost. The live
//! reader indexes each batch once by area; a stream then visits only the records of its own
//! areas (or every record, for a stream with no area filter).

use std::collections::{BTreeMap, HashMap};

use crier_proto::v1::Filter;

use crate::record::Record;

/// Records read together by the live reader, in the order read (offset order within each
/// partition), with their index.
#[derive(Debug, Default)]
pub struct Batch {
    records: Vec<Record>,
    /// Per partition, the first and last offsets in the batch.
    ranges: BTreeMap<i32, (i64, i64)>,
    /// Per area code, the indices of the records about it, ascending.
    by_area: HashMap<String, Vec<u32>>,
}

impl Batch {
    /// Indexes `records`, which must be in the order read.
    pub fn new(records: Vec<Record>) -> Self {
        let mut ranges = BTreeMap::new();
        let mut by_area: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, rec) in records.iter().enumerate() {
            ranges
                .entry(rec.partition)
                .and_modify(|r: &mut (i64, i64)| r.1 = rec.offset)
                .or_insert((rec.offset, rec.offset));
            for area in rec.event.iter().flat_map(|e| &e.areas) {
                let list = by_area.entry(area.clone()).or_default();
                // An event naming the same area twice is listed once.
                if list.last() != Some(&(i as u32)) {
                    list.push(i as u32);
                }
            }
        }
        Self {
            records,
            ranges,
            by_area,
        }
    }

    /// The records, in the order read.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Per partition, the first and last offsets in the batch.
    pub fn ranges(&self) -> &BTreeMap<i32, (i64, i64)> {
        &self.ranges
    }

    /// The areas the batch has records about, each once.
    pub fn areas(&self) -> impl Iterator<Item = &str> {
        self.by_area.keys().map(String::as_str)
    }

    /// Indices of the records that match `filter`, ascending, among the records for which
    /// `wanted(partition, offset)` holds.
    pub fn matching(&self, filter: &Filter, wanted: impl Fn(i32, i64) -> bool) -> Vec<u32> {
        let keep = |i: &u32| {
            let rec = &self.records[*i as usize];
            wanted(rec.partition, rec.offset)
                && rec
                    .event
                    .as_ref()
                    .is_some_and(|e| filter.event_types.contains(&e.r#type))
        };
        if filter.areas.is_empty() {
            return (0..self.records.len() as u32).filter(keep).collect();
        }
        let mut found: Vec<u32> = filter
            .areas
            .iter()
            .filter_map(|a| self.by_area.get(a))
            .flatten()
            .copied()
            .filter(keep)
            .collect();
        if filter.areas.len() > 1 {
            found.sort_unstable();
            found.dedup();
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crier_proto::v1::Event;

    fn rec(partition: i32, offset: i64, event_type: &str, areas: &[&str]) -> Record {
        Record::new(
            partition,
            offset,
            Some(Event {
                r#type: event_type.into(),
                areas: areas.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            }),
        )
    }

    fn filter(types: &[&str], areas: &[&str]) -> Filter {
        Filter {
            event_types: types.iter().map(|s| s.to_string()).collect(),
            areas: areas.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn batch() -> Batch {
        Batch::new(vec![
            rec(0, 10, "D", &["E06000002"]),
            rec(1, 4, "A", &["E06000003", "E06000002"]),
            rec(0, 11, "A", &["E09000033"]),
            rec(0, 12, "D", &["E06000002", "E06000002"]),
            Record::new(1, 5, None),
        ])
    }

    #[test]
    fn an_area_filter_finds_only_the_records_about_its_areas_in_read_order() {
        let b = batch();
        assert_eq!(
            b.matching(&filter(&["D", "A"], &["E06000002"]), |_, _| true),
            [0, 1, 3]
        );
        assert_eq!(
            b.matching(&filter(&["D", "A"], &["E09000033", "E06000003"]), |_, _| {
                true
            }),
            [1, 2]
        );
        assert_eq!(
            b.matching(&filter(&["D"], &["E06000003"]), |_, _| true),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn a_filter_without_areas_matches_every_record_of_its_types() {
        let b = batch();
        assert_eq!(b.matching(&filter(&["A"], &[]), |_, _| true), [1, 2]);
    }

    #[test]
    fn records_not_wanted_are_left_out_and_ranges_cover_each_partition() {
        let b = batch();
        assert_eq!(
            b.matching(&filter(&["D", "A"], &["E06000002"]), |p, o| p != 0
                || o > 10),
            [1, 3]
        );
        assert_eq!(b.ranges()[&0], (10, 12));
        assert_eq!(b.ranges()[&1], (4, 5));
    }
}
