//! Recognises a retried publish, so a client that timed out and sent the same event again
//! does not put it in Kafka twice.
//!
//! Events are identified by `(source, id)`, as CloudEvents defines. The first publish of a
//! pair claims it; a concurrent retry waits for that publish and shares its outcome; a later
//! retry, within the window, gets the original position back. If the first publish fails,
//! the claim is released so the retry can write. The memory is per producer instance and is
//! bounded by `capacity` and `window` (see ARCHITECTURE.md, "Deduplication").

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use crier_proto::v1::Position;
use tokio::sync::watch;

type Key = (String, String);

/// The outcome of trying to claim a `(source, id)`.
#[derive(Debug)]
pub enum Claim {
    /// Nobody has published this pair: the caller must publish, then call
    /// [`Dedup::complete`] or [`Dedup::release`].
    Mine,
    /// Already durably published at this position.
    Done(Position),
    /// Another call is publishing it now: wait on this, then claim again.
    Wait(watch::Receiver<bool>),
}

#[derive(Debug)]
enum Slot {
    Pending(watch::Sender<bool>),
    Done(Position),
}

/// The remembered `(source, id)` pairs.
#[derive(Debug)]
pub struct Dedup {
    window: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<Key, Slot>,
    /// Completed keys in completion order, for expiry.
    order: VecDeque<(Instant, Key)>,
}

impl Dedup {
    /// Remembers completed publishes for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity,
            inner: Mutex::default(),
        }
    }

    /// Claims `(source, id)` for publishing, or says why not.
    pub fn claim(&self, source: &str, id: &str) -> Claim {
        let mut inner = self.lock();
        inner.expire(Instant::now(), self.window, self.capacity);
        let key = (source.to_owned(), id.to_owned());
        match inner.slots.get(&key) {
            Some(Slot::Done(pos)) => Claim::Done(pos.clone()),
            Some(Slot::Pending(tx)) => Claim::Wait(tx.subscribe()),
            None => {
                let (tx, _) = watch::channel(false);
                inner.slots.insert(key, Slot::Pending(tx));
                Claim::Mine
            }
        }
    }

    /// Records that the claimed pair is durably at `position`.
    pub fn complete(&self, source: &str, id: &str, position: Position) {
        let mut inner = self.lock();
        let key = (source.to_owned(), id.to_owned());
        if let Some(Slot::Pending(tx)) = inner.slots.insert(key.clone(), Slot::Done(position)) {
            let _ = tx.send(true);
        }
        inner.order.push_back((Instant::now(), key));
    }

    /// Gives up a claim after a failed publish, waking any waiting retry.
    pub fn release(&self, source: &str, id: &str) {
        let mut inner = self.lock();
        if let Some(Slot::Pending(tx)) = inner.slots.remove(&(source.to_owned(), id.to_owned())) {
            let _ = tx.send(true);
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
            if let Some((_, key)) = self.order.pop_front()
                && matches!(self.slots.get(&key), Some(Slot::Done(_)))
            {
                self.slots.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: i64) -> Position {
        Position {
            topic: "t".into(),
            partition: 0,
            offset,
        }
    }

    #[test]
    fn a_completed_pair_is_reported_with_its_first_position() {
        let d = Dedup::new(Duration::from_secs(60), 10);
        assert!(matches!(d.claim("s", "1"), Claim::Mine));
        d.complete("s", "1", pos(7));
        assert!(matches!(d.claim("s", "1"), Claim::Done(p) if p.offset == 7));
        assert!(matches!(d.claim("other", "1"), Claim::Mine));
    }

    #[test]
    fn a_concurrent_retry_waits_and_a_released_claim_can_be_retaken() {
        let d = Dedup::new(Duration::from_secs(60), 10);
        assert!(matches!(d.claim("s", "1"), Claim::Mine));
        let Claim::Wait(rx) = d.claim("s", "1") else {
            panic!("expected to wait")
        };
        d.release("s", "1");
        assert!(*rx.borrow());
        assert!(matches!(d.claim("s", "1"), Claim::Mine));
    }

    #[test]
    fn pairs_beyond_capacity_are_forgotten_oldest_first() {
        let d = Dedup::new(Duration::from_secs(60), 2);
        for i in 0..3 {
            let id = i.to_string();
            assert!(matches!(d.claim("s", &id), Claim::Mine));
            d.complete("s", &id, pos(i));
        }
        assert!(matches!(d.claim("s", "0"), Claim::Mine));
        assert!(matches!(d.claim("s", "2"), Claim::Done(_)));
    }
}
