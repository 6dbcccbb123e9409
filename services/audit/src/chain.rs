//! Checking the trail, and answering "who received events about this subject".

use std::collections::HashMap;

use crate::record::{Action, AuditRecord, EventRef, GENESIS};

/// The first broken link found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain {chain}, record {seq} (trail position {index}): {reason}")]
pub struct Broken {
    /// The chain.
    pub chain: String,
    /// The sequence number at which it broke.
    pub seq: u64,
    /// Position in the trail as read.
    pub index: usize,
    /// What is wrong.
    pub reason: String,
}

/// What a verified trail holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Records checked.
    pub records: usize,
    /// Chains found.
    pub chains: usize,
}

/// Verifies every chain in `records` (in trail order).
pub fn verify(records: &[AuditRecord]) -> Result<Summary, Broken> {
    let mut last: HashMap<&str, (u64, &str)> = HashMap::new();
    for (index, r) in records.iter().enumerate() {
        let broken = |reason: String| Broken {
            chain: r.chain.clone(),
            seq: r.seq,
            index,
            reason,
        };
        if r.compute_hash() != r.hash {
            return Err(broken(
                "its hash does not match its contents: the record was altered".into(),
            ));
        }
        match last.get(r.chain.as_str()) {
            None if r.seq != 0 || r.prev != GENESIS => {
                return Err(broken(format!(
                    "the chain starts at record {}, not 0: earlier records are missing",
                    r.seq
                )));
            }
            Some((seq, _)) if r.seq != seq + 1 => {
                return Err(broken(format!(
                    "follows record {seq}: {} record(s) missing",
                    r.seq.saturating_sub(seq + 1)
                )));
            }
            Some((_, hash)) if r.prev != *hash => {
                return Err(broken(
                    "its prev does not match the previous record's hash".into(),
                ));
            }
            _ => {}
        }
        last.insert(&r.chain, (r.seq, &r.hash));
    }
    Ok(Summary {
        records: records.len(),
        chains: last.len(),
    })
}

/// One event about a subject that reached a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt<'a> {
    /// The delivery record naming it (actor, subscription, time).
    pub record: &'a AuditRecord,
    /// The event's id.
    pub event_id: &'a str,
    /// The event's type.
    pub event_type: &'a str,
    /// The agreements it was delivered under.
    pub agreements: &'a [String],
}

/// What each chain says it read or delivered in full, by position: the `events` of its
/// `Read` records and of its delivery records.
fn descriptions(records: &[AuditRecord]) -> impl Iterator<Item = (&str, &EventRef)> {
    records
        .iter()
        .filter(|r| matches!(r.entry.action, Some(Action::Read | Action::Deliver)))
        .flat_map(|r| r.entry.events.iter().map(move |d| (r.chain.as_str(), d)))
}

/// Every delivery of an event about `subject`: which organisation's system received it,
/// when, and under which agreements, in trail order. Reads every record form: one event per
/// record (the entry's own fields), several described (its `events`), and several named by
/// position (its `delivered`), which are looked up among the events the same chain
/// described. A delivery whose position the chain never described is not found here; see
/// [`unattributed`].
pub fn deliveries_about<'a>(records: &'a [AuditRecord], subject: &str) -> Vec<Receipt<'a>> {
    let described: HashMap<(&str, (i32, i64)), &EventRef> = descriptions(records)
        .filter(|(_, d)| d.subject == subject)
        .filter_map(|(chain, d)| Some(((chain, at(&d.position)?), d)))
        .collect();
    let described = &described;
    let mut found = Vec::new();
    for record in records
        .iter()
        .filter(|r| r.entry.action == Some(Action::Deliver))
    {
        let e = &record.entry;
        if e.subject == subject {
            found.push(Receipt {
                record,
                event_id: &e.event_id,
                event_type: &e.event_type,
                agreements: &e.agreements,
            });
        }
        let by_position = e.delivered.iter().flat_map(|group| {
            group.each().filter_map(move |p| {
                let d = described.get(&(record.chain.as_str(), p))?;
                Some((*d, group.agreements.as_slice()))
            })
        });
        let in_full = e.events.iter().filter(|d| d.subject == subject);
        found.extend(
            in_full
                .map(|d| (d, d.agreements.as_slice()))
                .chain(by_position)
                .map(|(d, agreements)| Receipt {
                    record,
                    event_id: &d.event_id,
                    event_type: &d.event_type,
                    agreements,
                }),
        );
    }
    found
}

/// How many deliveries the trail names by a position its chain never described, so that
/// [`deliveries_about`] cannot say whom they were about. Zero in an intact, complete trail:
/// an instance writes the `Read` record of a batch before any stream can deliver from it.
/// Above zero, a `Read` record is missing (its chain then fails [`verify`] too) or the
/// trail was read only in part.
pub fn unattributed(records: &[AuditRecord]) -> usize {
    let described: std::collections::HashSet<(&str, (i32, i64))> = descriptions(records)
        .filter_map(|(chain, d)| Some((chain, at(&d.position)?)))
        .collect();
    records
        .iter()
        .filter(|r| r.entry.action == Some(Action::Deliver))
        .flat_map(|r| {
            r.entry
                .delivered
                .iter()
                .flat_map(|g| g.each())
                .map(move |p| (r.chain.as_str(), p))
        })
        .filter(|key| !described.contains(key))
        .count()
}

/// The one position an event description names.
fn at(position: &str) -> Option<(i32, i64)> {
    crate::positions::Run::parse(position)
        .filter(|run| run.len() == 1)
        .map(|run| (run.partition, run.first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, writer::Chain};

    fn trail(n: usize) -> Vec<AuditRecord> {
        let mut chain = Chain::new("c1".into());
        (0..n)
            .map(|i| {
                chain.next(Entry {
                    action: Some(Action::Deliver),
                    actor: "uk.gov.local.E06000002/revenues".into(),
                    subject: format!("psn:{}", i % 2),
                    event_id: i.to_string(),
                    ..Default::default()
                })
            })
            .collect()
    }

    #[test]
    fn an_intact_trail_verifies() {
        assert_eq!(
            verify(&trail(5)),
            Ok(Summary {
                records: 5,
                chains: 1
            })
        );
    }

    #[test]
    fn an_altered_record_is_found() {
        let mut t = trail(5);
        t[2].entry.actor = "uk.gov.someone/else".into();
        let broken = verify(&t).unwrap_err();
        assert_eq!((broken.seq, broken.index), (2, 2));
        assert!(broken.reason.contains("altered"));
    }

    #[test]
    fn an_altered_record_with_a_recomputed_hash_breaks_the_next_link() {
        let mut t = trail(5);
        t[2].entry.subject = "psn:other".into();
        t[2].hash = t[2].compute_hash();
        let broken = verify(&t).unwrap_err();
        assert_eq!(broken.seq, 3);
        assert!(broken.reason.contains("prev"));
    }

    #[test]
    fn a_deleted_record_is_found() {
        let mut t = trail(5);
        t.remove(1);
        let broken = verify(&t).unwrap_err();
        assert_eq!(broken.seq, 2);
        assert!(broken.reason.contains("1 record(s) missing"));
        let mut t = trail(3);
        t.remove(0);
        assert!(
            verify(&t)
                .unwrap_err()
                .reason
                .contains("starts at record 1")
        );
    }

    #[test]
    fn the_subject_query_finds_only_that_subjects_deliveries() {
        let t = trail(5);
        let found = deliveries_about(&t, "psn:1");
        assert_eq!(
            found.iter().map(|r| r.event_id).collect::<Vec<_>>(),
            ["1", "3"]
        );
    }

    #[test]
    fn the_subject_query_looks_inside_records_of_several_deliveries() {
        let mut chain = Chain::new("c1".into());
        let event = |id: &str, subject: &str| crate::EventRef {
            event_id: id.into(),
            subject: subject.into(),
            agreements: vec![format!("dsa-{id}")],
            ..Default::default()
        };
        let t = vec![
            chain.next(Entry {
                action: Some(Action::Deliver),
                events: vec![
                    event("a", "psn:1"),
                    event("b", "psn:2"),
                    event("c", "psn:1"),
                ],
                ..Default::default()
            }),
            chain.next(Entry {
                action: Some(Action::Ack),
                events: vec![event("d", "psn:1")],
                ..Default::default()
            }),
        ];
        assert_eq!(verify(&t).map(|s| s.records), Ok(2));
        let found = deliveries_about(&t, "psn:1");
        assert_eq!(
            found
                .iter()
                .map(|r| (r.event_id, r.agreements[0].as_str()))
                .collect::<Vec<_>>(),
            [("a", "dsa-a"), ("c", "dsa-c")]
        );
    }

    #[test]
    fn the_subject_query_finds_deliveries_named_by_position_in_the_same_chain_only() {
        let event = |id: &str, subject: &str, position: &str| crate::EventRef {
            event_id: id.into(),
            event_type: "t".into(),
            subject: subject.into(),
            position: position.into(),
            ..Default::default()
        };
        let by_position = |agreement: &str, positions: &[&str]| crate::Delivered {
            agreements: vec![agreement.into()],
            positions: positions.iter().map(|p| p.to_string()).collect(),
        };
        let entry = |action, actor: &str, events, delivered| Entry {
            action: Some(action),
            actor: actor.into(),
            events,
            delivered,
            ..Default::default()
        };
        let (mut c1, mut c2) = (Chain::new("c1".into()), Chain::new("c2".into()));
        let read = vec![
            event("a", "psn:1", "0:7"),
            event("b", "psn:2", "0:8"),
            event("c", "psn:1", "0:9"),
        ];
        let t = vec![
            c1.next(entry(Action::Read, "", read, vec![])),
            c1.next(entry(
                Action::Deliver,
                "one",
                vec![],
                vec![by_position("dsa-1", &["0:7"])],
            )),
            c1.next(entry(
                Action::Deliver,
                "two",
                vec![],
                vec![by_position("dsa-2", &["0:8-9", "0:7"])],
            )),
            // Another instance's chain: the same position is not its event, and it never
            // described it.
            c2.next(entry(
                Action::Deliver,
                "elsewhere",
                vec![],
                vec![by_position("dsa-x", &["0:7"])],
            )),
        ];
        assert_eq!(verify(&t).map(|s| s.records), Ok(4));
        // A run names each of its positions.
        assert_eq!(t[2].entry.named(), 3);
        let found = deliveries_about(&t, "psn:1");
        assert_eq!(
            found
                .iter()
                .map(|r| (
                    r.record.entry.actor.as_str(),
                    r.event_id,
                    r.agreements[0].as_str()
                ))
                .collect::<Vec<_>>(),
            [
                ("one", "a", "dsa-1"),
                ("two", "c", "dsa-2"),
                ("two", "a", "dsa-2")
            ]
        );
        assert_eq!(
            unattributed(&t),
            1,
            "c2's delivery names a position c2 never read"
        );
        assert_eq!(unattributed(&t[..3]), 0);
    }
}
