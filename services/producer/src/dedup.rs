//! Recognises a retried publish, so a client that timed out and sent the same event again
//! does not put it in Kafka twice.
//!
//! Events are identified by `(source, id)`, as CloudEvents defines. The first publish of a
//! pair claims it; a concurrent retry waits for that publish and shares its outcome; a later
//! retry, within the window, gets the original position back. If the first publish fails,
//! the claim is released so the retry can write. The memory is per producer instance and is
//! bounded by `capacity` and `window` (see ARCHITECTURE.md, "Deduplication").
//!
//! A pair is remembered as 128 bits of its SHA-256 (a [`Key`], made once per event) and a
//! completed one as `(partition, offset)`: a 32-byte map entry and a 32-byte expiry queue
//! entry. For the default million (and the admission limit's 20,000 in progress) the map
//! has 2,097,152 buckets, about 69 MB, and the queue about 33 MB, rather than the hundreds
//! that string keys took. Two different pairs sharing 128 hash bits is not a practical
//! concern.

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    sync::Mutex,
    time::{Duration, Instant},
};

use crier_proto::v1::Position;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// What the table remembers a `(source, id)` pair by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key(u128);

impl Key {
    /// The key of the pair `(source, id)`.
    pub fn of(source: &str, id: &str) -> Self {
        let mut h = Sha256::new();
        h.update(source.as_bytes());
        h.update([0]);
        h.update(id.as_bytes());
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(u128::from_le_bytes(bytes))
    }
}

/// The outcome of trying to claim a `(source, id)`.
#[derive(Debug)]
pub enum Claim {
    /// Nobody has published this pair: the caller must publish, then call
    /// [`Dedup::complete_many`] or [`Dedup::release_many`].
    Mine,
    /// Already durably published at this position.
    Done(Position),
    /// Another call is publishing it now: wait on this, then claim again.
    Wait(watch::Receiver<bool>),
}

/// One pair's outcome in [`Dedup::claim_many`].
#[derive(Debug)]
pub enum Claimed {
    /// The pair's first appearance in the call, claimed as by [`Dedup::claim`].
    First(Claim),
    /// The same pair as at this earlier index of the call: it shares that one's outcome.
    Repeat(usize),
}

#[derive(Debug)]
enum Slot {
    /// Being published. The channel to wake waiting retries is made only when the first
    /// one arrives: a retry during the publish is rare, and making and dropping a channel
    /// for every claim was part of dedup's 14% of the producer's samples (PERFORMANCE.md,
    /// session 17).
    Pending(Option<watch::Sender<bool>>),
    /// Partition and offset; the topic is the service's one events topic.
    Done(i32, i64),
}

impl Slot {
    /// Wakes any retry waiting on this claim.
    fn settle(self) {
        if let Slot::Pending(Some(waiters)) = self {
            let _ = waiters.send(true);
        }
    }
}

/// The remembered `(source, id)` pairs.
#[derive(Debug)]
pub struct Dedup {
    topic: String,
    window: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    slots: HashMap<Key, Slot>,
    /// Completed keys in completion order, for expiry.
    order: VecDeque<(Instant, Key)>,
}

impl Dedup {
    /// Remembers completed publishes to `topic` for `window`, at most `capacity` of them,
    /// with room reserved for `in_progress` claims not yet settled (the producer's
    /// admission limit).
    ///
    /// The map and the expiry queue are allocated for both up front. Grown on demand, each
    /// doubling rehashed every pair under the lock that every publish takes: 74 ms at 917,504
    /// pairs on the 2-core machine, with every publish waiting (PERFORMANCE.md, session 9).
    /// The reservation is not a hard bound. A call that gives up returns its admission
    /// permit while its claim waits for Kafka, so under a slow Kafka more claims can be open
    /// than reserved, and removals can leave tombstones that use up the spare slots; either
    /// way the map still grows. At the defaults it is about 56% full, where a removal rarely
    /// leaves a tombstone. The reservation costs memory early: at the defaults it raised the
    /// idle producer's RSS from about 27 to 34 MiB (PERFORMANCE.md, session 9).
    pub fn new(topic: String, window: Duration, capacity: usize, in_progress: usize) -> Self {
        Self {
            topic,
            window,
            capacity,
            inner: Mutex::new(Inner {
                slots: HashMap::with_capacity(capacity + in_progress),
                // Expiry runs before each claim, so settled claims can take the queue
                // `in_progress` past `capacity` before the next expiry.
                order: VecDeque::with_capacity(capacity + in_progress),
            }),
        }
    }

    /// Claims `key`'s pair for publishing, or says why not.
    pub fn claim(&self, key: Key) -> Claim {
        let mut inner = self.lock();
        inner.expire(Instant::now(), self.window, self.capacity);
        self.claim_key(&mut inner, key)
    }

    /// Claims each pair as [`Dedup::claim`] would, in order, under one lock. A pair that
    /// appears again within `keys` is a [`Claimed::Repeat`] of its first index: claiming it
    /// again would make the caller wait on its own claim.
    pub fn claim_many(&self, keys: impl IntoIterator<Item = Key>) -> Vec<Claimed> {
        let keys = keys.into_iter();
        let mut first = HashMap::with_capacity(keys.size_hint().0);
        let mut inner = self.lock();
        inner.expire(Instant::now(), self.window, self.capacity);
        keys.enumerate()
            .map(|(i, key)| match first.entry(key) {
                Entry::Occupied(at) => Claimed::Repeat(*at.get()),
                Entry::Vacant(slot) => {
                    slot.insert(i);
                    Claimed::First(self.claim_key(&mut inner, key))
                }
            })
            .collect()
    }

    fn claim_key(&self, inner: &mut Inner, key: Key) -> Claim {
        match inner.slots.entry(key) {
            Entry::Occupied(mut slot) => match slot.get_mut() {
                Slot::Done(partition, offset) => Claim::Done(Position {
                    topic: self.topic.clone(),
                    partition: *partition,
                    offset: *offset,
                }),
                Slot::Pending(waiters) => Claim::Wait(
                    waiters
                        .get_or_insert_with(|| watch::channel(false).0)
                        .subscribe(),
                ),
            },
            Entry::Vacant(slot) => {
                slot.insert(Slot::Pending(None));
                Claim::Mine
            }
        }
    }

    /// Records that each claimed pair is durably at its position, under one lock, and wakes
    /// the retries waiting on them.
    pub fn complete_many<'a>(&self, done: impl IntoIterator<Item = (Key, &'a Position)>) {
        let mut inner = self.lock();
        let now = Instant::now();
        for (key, position) in done {
            if let Some(was) = inner
                .slots
                .insert(key, Slot::Done(position.partition, position.offset))
            {
                was.settle();
            }
            inner.order.push_back((now, key));
        }
    }

    /// Gives up each claim after failed publishes, under one lock, waking any waiting
    /// retries so one of them can publish.
    pub fn release_many(&self, keys: impl IntoIterator<Item = Key>) {
        let mut inner = self.lock();
        for key in keys {
            if let Entry::Occupied(slot) = inner.slots.entry(key)
                && matches!(slot.get(), Slot::Pending(_))
            {
                slot.remove().settle();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves only a cache behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn expire(&mut self, now: Instant, window: Duration, capacity: usize) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) <= window && self.order.len() <= capacity {
                break;
            }
            // Only a settled pair is forgotten here; a pending claim stays until its
            // publish settles it.
            if let Some((_, key)) = self.order.pop_front()
                && let Entry::Occupied(slot) = self.slots.entry(key)
                && matches!(slot.get(), Slot::Done(..))
            {
                slot.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(source: &str, id: &str) -> Key {
        Key::of(source, id)
    }

    fn pos(offset: i64) -> Position {
        Position {
            topic: "t".into(),
            partition: 0,
            offset,
        }
    }

    #[test]
    fn a_completed_pair_is_reported_with_its_first_position() {
        let d = Dedup::new("t".into(), Duration::from_secs(60), 10, 4);
        assert!(matches!(d.claim(k("s", "1")), Claim::Mine));
        d.complete_many([(k("s", "1"), &pos(7))]);
        assert!(matches!(d.claim(k("s", "1")), Claim::Done(p) if p.offset == 7));
        assert!(matches!(d.claim(k("other", "1")), Claim::Mine));
    }

    #[test]
    fn a_concurrent_retry_waits_and_a_released_claim_can_be_retaken() {
        let d = Dedup::new("t".into(), Duration::from_secs(60), 10, 4);
        assert!(matches!(d.claim(k("s", "1")), Claim::Mine));
        let Claim::Wait(rx) = d.claim(k("s", "1")) else {
            panic!("expected to wait")
        };
        d.release_many([k("s", "1")]);
        assert!(*rx.borrow());
        assert!(matches!(d.claim(k("s", "1")), Claim::Mine));
    }

    #[test]
    fn a_pair_repeated_in_one_claim_many_is_a_repeat_of_its_first_appearance() {
        let d = Dedup::new("t".into(), Duration::from_secs(60), 10, 4);
        let claims = d.claim_many([k("s", "1"), k("s", "2"), k("s", "1"), k("other", "1")]);
        assert!(matches!(
            claims[..],
            [
                Claimed::First(Claim::Mine),
                Claimed::First(Claim::Mine),
                Claimed::Repeat(0),
                Claimed::First(Claim::Mine)
            ]
        ));
    }

    #[test]
    fn claim_many_sees_pairs_completed_or_in_flight_elsewhere() {
        let d = Dedup::new("t".into(), Duration::from_secs(60), 10, 4);
        assert!(matches!(d.claim(k("s", "done")), Claim::Mine));
        d.complete_many([(k("s", "done"), &pos(3))]);
        assert!(matches!(d.claim(k("s", "pending")), Claim::Mine));
        let claims = d.claim_many([k("s", "done"), k("s", "pending"), k("s", "new")]);
        assert!(matches!(
            claims[..],
            [
                Claimed::First(Claim::Done(ref p)),
                Claimed::First(Claim::Wait(_)),
                Claimed::First(Claim::Mine)
            ] if p.offset == 3
        ));
    }

    #[test]
    fn complete_many_and_release_many_settle_each_claim_and_wake_its_waiters() {
        let d = Dedup::new("t".into(), Duration::from_secs(60), 10, 4);
        d.claim_many([k("s", "1"), k("s", "2"), k("s", "3")]);
        let (Claim::Wait(rx1), Claim::Wait(rx2)) = (d.claim(k("s", "1")), d.claim(k("s", "2")))
        else {
            panic!("expected to wait")
        };
        d.complete_many([(k("s", "1"), &pos(5))]);
        d.release_many([k("s", "2"), k("s", "3")]);
        assert!(*rx1.borrow() && *rx2.borrow());
        assert!(matches!(d.claim(k("s", "1")), Claim::Done(p) if p.offset == 5));
        assert!(matches!(d.claim(k("s", "2")), Claim::Mine));
        assert!(matches!(d.claim(k("s", "3")), Claim::Mine));
    }

    #[test]
    fn retries_waiting_on_one_claim_share_its_channel_and_all_wake() {
        let d = Dedup::new("t".into(), Duration::from_secs(60), 10, 4);
        assert!(matches!(d.claim(k("s", "1")), Claim::Mine));
        let waiting: Vec<_> = (0..3)
            .map(|_| match d.claim(k("s", "1")) {
                Claim::Wait(rx) => rx,
                other => panic!("expected to wait, got {other:?}"),
            })
            .collect();
        assert!(waiting.iter().all(|rx| !*rx.borrow()));
        d.complete_many([(k("s", "1"), &pos(9))]);
        assert!(waiting.iter().all(|rx| *rx.borrow()));
        assert!(matches!(d.claim(k("s", "1")), Claim::Done(p) if p.offset == 9));
    }

    #[test]
    fn releasing_a_pair_that_is_not_pending_leaves_its_position() {
        let d = Dedup::new("t".into(), Duration::from_secs(60), 10, 4);
        assert!(matches!(d.claim(k("s", "1")), Claim::Mine));
        d.complete_many([(k("s", "1"), &pos(4))]);
        d.release_many([k("s", "1"), k("s", "never claimed")]);
        assert!(matches!(d.claim(k("s", "1")), Claim::Done(p) if p.offset == 4));
        assert!(matches!(d.claim(k("s", "never claimed")), Claim::Mine));
    }

    #[test]
    fn pairs_beyond_capacity_are_forgotten_oldest_first() {
        let d = Dedup::new("t".into(), Duration::from_secs(60), 2, 4);
        for i in 0..3 {
            let id = i.to_string();
            assert!(matches!(d.claim(k("s", &id)), Claim::Mine));
            d.complete_many([(k("s", &id), &pos(i))]);
        }
        assert!(matches!(d.claim(k("s", "0")), Claim::Mine));
        assert!(matches!(d.claim(k("s", "2")), Claim::Done(_)));
    }

    #[test]
    fn filling_to_capacity_never_regrows_the_map_or_the_expiry_queue() {
        // 57,344 is exactly what a table of 65,536 buckets holds, so a map sized for the
        // capacity alone would have to grow for the 500 in progress.
        let d = Dedup::new("t".into(), Duration::from_secs(60), 57_344, 500);
        let (slots, order) = {
            let inner = d.lock();
            (inner.slots.capacity(), inner.order.capacity())
        };
        // In batches of 500 claimed together and then settled, as PublishBatch does.
        for batch in 0..130 {
            let ids: Vec<String> = (0..500).map(|i| format!("{batch}-{i}")).collect();
            let claims = d.claim_many(ids.iter().map(|id| k("s", id)));
            assert!(
                claims
                    .iter()
                    .all(|c| matches!(c, Claimed::First(Claim::Mine)))
            );
            let p = pos(batch);
            d.complete_many(ids.iter().map(|id| (k("s", id), &p)));
        }
        let inner = d.lock();
        assert_eq!(inner.order.len(), 57_844);
        // A map's capacity shrinks as removals leave tombstones and comes back when it
        // rehashes in place; only growing would raise it.
        assert!(
            inner.slots.capacity() <= slots,
            "{} > {slots}",
            inner.slots.capacity()
        );
        assert_eq!(inner.order.capacity(), order);
    }
}
