//! Recognises a retried publish, so a client that timed out and sent the same event again
//! does not put it in Kafka twice.
//!
//! Events are identified by `(source, id)`, as CloudEvents defines. The first publish of a
//! pair claims it; a concurrent retry waits for that publish and shares its outcome; a later
//! retry, within the window, gets the original position back. If the first publish fails,
//! the claim is released so the retry can write. The memory is per producer instance and is
//! bounded by `capacity` and `window` (see ARCHITECTURE.md, "Deduplication").
//!
//! Completed pairs are kept in two generations. New ones go into the current generation;
//! when it holds `capacity` pairs or is `window` old, the previous one is forgotten whole and
//! the current one takes its place. So a pair is remembered, as before, while it is younger
//! than `window` and among the newest `capacity`; after that it is forgotten within about as
//! long again. Forgetting one pair at a time from an expiry queue cost a probe of the table,
//! usually a cache miss, for every event, and the queue entry with it (PERFORMANCE.md,
//! session 18).
//!
//! A pair is remembered as 128 bits of its SHA-256 (a [`Key`], made once per event) and a
//! completed one as its partition and offset packed into 64 bits: a 24-byte entry. For the
//! default million, each generation has 2,097,152 buckets, about 52 MB; two different pairs
//! sharing 128 hash bits is not a practical concern.

use std::{
    collections::hash_map::Entry,
    sync::Mutex,
    time::{Duration, Instant},
};

use crier_proto::v1::Position;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// The tables' map. A key is already SHA-256 output, so it needs a fast hasher rather than
/// std's SipHash, which was about 1.5% of the producer's samples (PERFORMANCE.md, session
/// 18). foldhash is seeded at random per table, so nobody can aim keys at one bucket.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What the table remembers a `(source, id)` pair by. Two words rather than a `u128`, whose
/// 16-byte alignment would pad every entry to 32 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key([u64; 2]);

impl Key {
    /// The key of the pair `(source, id)`.
    pub fn of(source: &str, id: &str) -> Self {
        let mut h = Sha256::new();
        h.update(source.as_bytes());
        h.update([0]);
        h.update(id.as_bytes());
        let digest = h.finalize();
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&digest[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        Self([word(0), word(8)])
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

/// A completed pair's partition (16 bits) and offset (48 bits). At 100,000 events a second
/// into one partition, 48 bits of offset last 89 years; a position that does not fit is not
/// remembered, so its retry is written again, as after a restart.
#[derive(Clone, Copy, Debug)]
struct Done(u64);

impl Done {
    const OFFSET_BITS: u32 = 48;

    fn new(position: &Position) -> Option<Self> {
        let partition = u64::from(u16::try_from(position.partition).ok()?);
        let offset = u64::try_from(position.offset)
            .ok()
            .filter(|o| o >> Self::OFFSET_BITS == 0)?;
        Some(Self(partition << Self::OFFSET_BITS | offset))
    }

    fn position(self, topic: &str) -> Position {
        let partition = u16::try_from(self.0 >> Self::OFFSET_BITS).unwrap_or(u16::MAX);
        let offset = self.0 & ((1 << Self::OFFSET_BITS) - 1);
        Position {
            topic: topic.to_owned(),
            partition: i32::from(partition),
            offset: i64::try_from(offset).unwrap_or(i64::MAX),
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
    /// Claims being published. The channel to wake waiting retries is made only when the
    /// first one arrives: a retry during the publish is rare, and making and dropping a
    /// channel for every claim was part of dedup's 14% of the producer's samples
    /// (PERFORMANCE.md, session 17).
    pending: HashMap<Key, Option<watch::Sender<bool>>>,
    /// Completed pairs, newest generation.
    current: HashMap<Key, Done>,
    /// Completed pairs, the generation before.
    previous: HashMap<Key, Done>,
    /// When `current` began.
    since: Instant,
}

impl Dedup {
    /// Remembers completed publishes to `topic` for `window`, at least `capacity` of them,
    /// with room reserved for `in_progress` claims not yet settled (the producer's
    /// admission limit).
    ///
    /// Both generations are allocated for `capacity` up front, and a generation is turned
    /// over before it would grow. Grown on demand, each doubling rehashed every pair under
    /// the lock that every publish takes: 74 ms at 917,504 pairs on the 2-core machine, with
    /// every publish waiting (PERFORMANCE.md, session 9). The claims in progress can
    /// outnumber `in_progress`, because a call that gives up returns its admission permit
    /// while its claim waits for Kafka; their map then grows, but it is small.
    pub fn new(topic: String, window: Duration, capacity: usize, in_progress: usize) -> Self {
        Self {
            topic,
            window,
            capacity,
            inner: Mutex::new(Inner {
                pending: HashMap::with_capacity_and_hasher(in_progress, Default::default()),
                current: HashMap::with_capacity_and_hasher(capacity, Default::default()),
                previous: HashMap::with_capacity_and_hasher(capacity, Default::default()),
                since: Instant::now(),
            }),
        }
    }

    /// Claims `key`'s pair for publishing, or says why not.
    pub fn claim(&self, key: Key) -> Claim {
        let mut inner = self.lock();
        self.turn_if_due(&mut inner, Instant::now());
        self.claim_key(&mut inner, key)
    }

    /// Claims each pair as [`Dedup::claim`] would, in order, under one lock. A pair that
    /// appears again within `keys` is a [`Claimed::Repeat`] of its first index: claiming it
    /// again would make the caller wait on its own claim.
    pub fn claim_many(&self, keys: impl IntoIterator<Item = Key>) -> Vec<Claimed> {
        let keys = keys.into_iter();
        let mut first = HashMap::with_capacity_and_hasher(keys.size_hint().0, Default::default());
        let mut inner = self.lock();
        self.turn_if_due(&mut inner, Instant::now());
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
        if let Some(done) = inner.current.get(&key).or_else(|| inner.previous.get(&key)) {
            return Claim::Done(done.position(&self.topic));
        }
        match inner.pending.entry(key) {
            Entry::Occupied(mut slot) => Claim::Wait(
                slot.get_mut()
                    .get_or_insert_with(|| watch::channel(false).0)
                    .subscribe(),
            ),
            Entry::Vacant(slot) => {
                slot.insert(None);
                Claim::Mine
            }
        }
    }

    /// Records that each claimed pair is durably at its position, under one lock, and wakes
    /// the retries waiting on them.
    pub fn complete_many<'a>(&self, done: impl IntoIterator<Item = (Key, &'a Position)>) {
        let mut inner = self.lock();
        self.turn_if_due(&mut inner, Instant::now());
        for (key, position) in done {
            settle(inner.pending.remove(&key));
            if let Some(done) = Done::new(position) {
                if inner.current.len() >= self.capacity {
                    inner.turn(Instant::now());
                }
                inner.current.insert(key, done);
            }
        }
    }

    /// Gives up each claim after failed publishes, under one lock, waking any waiting
    /// retries so one of them can publish.
    pub fn release_many(&self, keys: impl IntoIterator<Item = Key>) {
        let mut inner = self.lock();
        for key in keys {
            settle(inner.pending.remove(&key));
        }
    }

    /// Turns the generations over once the current one is `window` old or full.
    fn turn_if_due(&self, inner: &mut Inner, now: Instant) {
        let age = now.duration_since(inner.since);
        if age >= self.window || inner.current.len() >= self.capacity {
            inner.turn(now);
            // Every pair is inserted right after a check, so after two quiet windows the
            // pairs just moved to the previous generation are a window old too: forget
            // them now, or a producer idle for a week would still answer for them.
            if age.saturating_sub(self.window) >= self.window {
                inner.turn(now);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves only a cache behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Forgets the previous generation and starts a new current one. Clearing keeps the
    /// allocation, and with entries that need no drop it only resets the control bytes.
    fn turn(&mut self, now: Instant) {
        self.previous.clear();
        std::mem::swap(&mut self.current, &mut self.previous);
        self.since = now;
    }
}

/// Wakes any retry waiting on a claim that has just been settled.
fn settle(claim: Option<Option<watch::Sender<bool>>>) {
    if let Some(Some(waiters)) = claim {
        let _ = waiters.send(true);
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
    fn the_newest_capacity_pairs_are_remembered_and_older_ones_forgotten_within_twice_that() {
        let capacity = 3;
        let d = Dedup::new("t".into(), Duration::from_secs(60), capacity, 4);
        let key = |i: usize| k("s", &i.to_string());
        for i in 0..20 {
            assert!(matches!(d.claim(key(i)), Claim::Mine));
            d.complete_many([(key(i), &pos(i as i64))]);
            // The newest `capacity` pairs, this one included.
            for earlier in (i + 1).saturating_sub(capacity)..=i {
                assert!(
                    matches!(d.claim(key(earlier)), Claim::Done(p) if p.offset == earlier as i64),
                    "pair {earlier} forgotten after pair {i}"
                );
            }
            if let Some(old) = i.checked_sub(2 * capacity) {
                assert!(
                    matches!(d.claim(key(old)), Claim::Mine),
                    "pair {old} kept after pair {i}"
                );
                d.release_many([key(old)]);
            }
        }
    }

    #[test]
    fn a_pair_is_remembered_for_the_window_and_forgotten_two_turns_later() {
        let window = Duration::from_secs(60);
        let d = Dedup::new("t".into(), window, 10, 4);
        assert!(matches!(d.claim(k("s", "1")), Claim::Mine));
        d.complete_many([(k("s", "1"), &pos(1))]);
        let start = d.lock().since;
        let at = |after: Duration| {
            let mut inner = d.lock();
            d.turn_if_due(&mut inner, start + after);
            d.claim_key(&mut inner, k("s", "1"))
        };
        assert!(matches!(at(window / 2), Claim::Done(_)));
        // Turned once: the pair is in the previous generation, still remembered.
        assert!(matches!(at(window), Claim::Done(_)));
        assert!(matches!(at(window * 3 / 2), Claim::Done(_)));
        // Turned again: forgotten.
        assert!(matches!(at(window * 2), Claim::Mine));
    }

    #[test]
    fn a_pair_is_forgotten_after_two_quiet_windows_and_kept_just_before() {
        let window = Duration::from_secs(60);
        for (quiet, remembered) in [
            (window * 2 - Duration::from_secs(1), true),
            (window * 2, false),
        ] {
            let d = Dedup::new("t".into(), window, 10, 4);
            assert!(matches!(d.claim(k("s", "1")), Claim::Mine));
            d.complete_many([(k("s", "1"), &pos(1))]);
            let mut inner = d.lock();
            let now = inner.since + quiet;
            d.turn_if_due(&mut inner, now);
            let claim = d.claim_key(&mut inner, k("s", "1"));
            assert_eq!(
                matches!(claim, Claim::Done(_)),
                remembered,
                "after {quiet:?}"
            );
        }
    }

    #[test]
    fn a_position_too_large_to_pack_is_not_remembered_and_others_come_back_exact() {
        let d = Dedup::new("t".into(), Duration::from_secs(60), 10, 4);
        let at = |partition, offset| Position {
            topic: "t".into(),
            partition,
            offset,
        };
        let cases = [
            ("small", at(0, 0), true),
            ("largest", at(65_535, (1 << 48) - 1), true),
            ("offset too large", at(1, 1 << 48), false),
            ("partition too large", at(65_536, 1), false),
            ("negative", at(-1, 1), false),
        ];
        for (id, position, kept) in &cases {
            assert!(matches!(d.claim(k("s", id)), Claim::Mine));
            d.complete_many([(k("s", id), position)]);
            match d.claim(k("s", id)) {
                Claim::Done(p) => assert!(*kept && p == *position, "{id}: {p:?}"),
                Claim::Mine => assert!(!kept, "{id} forgotten"),
                Claim::Wait(_) => panic!("{id} left pending"),
            }
        }
    }

    #[test]
    fn publishing_past_capacity_never_regrows_either_generation() {
        // 57,344 is exactly what a table of 65,536 buckets holds.
        let d = Dedup::new("t".into(), Duration::from_secs(60), 57_344, 500);
        let capacities = |d: &Dedup| {
            let inner = d.lock();
            (inner.current.capacity(), inner.previous.capacity())
        };
        let before = capacities(&d);
        // In batches of 500 claimed together and then settled, as PublishBatch does: more
        // than two generations' worth.
        for batch in 0..250 {
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
        assert!(inner.pending.is_empty());
        assert_eq!(inner.current.len() + inner.previous.len(), 125_000 - 57_344);
        drop(inner);
        assert_eq!(capacities(&d), before);
    }
}
