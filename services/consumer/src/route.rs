//! Hands each live batch to the streams it concerns, and only to them.
//!
//! A broadcast channel woke every stream for every batch: with 420 streams, 42,000 wakes a
//! second at 100 events/s, most of them finding nothing, which made the consumer's CPU grow
//! with streams × batches rather than with deliveries (PERFORMANCE.md). Here a stream with
//! an area filter is registered under its areas, and gets a batch only when the batch holds
//! a record about one of them; a stream without one gets every batch.
//!
//! A stream therefore sees gaps between the batches it gets. A gap is safe to step over
//! once the stream's position is at or past [`Feed::from`], the live reader's position when
//! the stream registered (every record from there on was offered to the stream if it could
//! match), and past every batch the stream skipped for being ahead of it (those records
//! are still to come from its catch-up reader; see `Session::offered_from`). Otherwise a
//! gap is records the stream has not seen, for the catch-up reader.
//!
//! Each stream's queue is bounded. When a batch does not fit, the stream is dropped from the
//! routes at once and its queue ends after what it holds (a lag, as a broadcast channel
//! reports one); the stream then registers again and catches up from Kafka.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::mpsc;

use crate::batch::Batch;

/// Where each stream's batches go, and how far the live reader has got.
#[derive(Debug)]
pub struct Router {
    inner: Mutex<Routes>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Routes {
    /// Per partition, the offset after the last record dispatched.
    position: BTreeMap<i32, i64>,
    by_area: HashMap<String, Vec<Route>>,
    everything: Vec<Route>,
    next_id: u64,
    /// Set once the live reader has stopped: no more batches, nor registrations.
    closed: bool,
}

#[derive(Debug, Clone)]
struct Route {
    id: u64,
    tx: mpsc::Sender<Arc<Batch>>,
    lagged: Arc<AtomicBool>,
}

/// One stream's batches.
#[derive(Debug)]
pub struct Feed {
    rx: mpsc::Receiver<Arc<Batch>>,
    lagged: Arc<AtomicBool>,
    from: BTreeMap<i32, i64>,
    id: u64,
    areas: Vec<String>,
    router: Arc<Router>,
}

/// Why a feed has no more batches.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The stream fell too far behind and was dropped from the routes: register again and
    /// catch up.
    Lagged,
    /// The live reader has stopped.
    Closed,
}

impl Router {
    /// A router starting at `position` (next offset per partition), holding up to
    /// `capacity` batches per stream.
    pub fn new(position: BTreeMap<i32, i64>, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Routes {
                position,
                ..Default::default()
            }),
            capacity: capacity.max(1),
        })
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a stream for the batches about `areas` (every batch when empty).
    pub fn register(self: &Arc<Self>, areas: &[String]) -> Feed {
        let (tx, rx) = mpsc::channel(self.capacity);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut routes = self.routes();
        let id = routes.next_id;
        routes.next_id += 1;
        if !routes.closed {
            let route = Route {
                id,
                tx,
                lagged: lagged.clone(),
            };
            if areas.is_empty() {
                routes.everything.push(route);
            } else {
                for area in areas {
                    routes
                        .by_area
                        .entry(area.clone())
                        .or_default()
                        .push(route.clone());
                }
            }
        }
        Feed {
            rx,
            lagged,
            from: routes.position.clone(),
            id,
            areas: areas.to_vec(),
            router: Arc::clone(self),
        }
    }

    /// Hands `batch` to every stream it concerns. Never waits: a stream whose queue is full
    /// is dropped from the routes and told it lagged.
    pub fn dispatch(&self, batch: Arc<Batch>) {
        let mut routes = self.routes();
        for (p, (_, last)) in batch.ranges() {
            routes.position.insert(*p, last + 1);
        }
        let mut dropped = HashSet::new();
        let mut sent = HashSet::new();
        let Routes {
            by_area,
            everything,
            ..
        } = &mut *routes;
        let targets = everything
            .iter()
            .chain(batch.areas().filter_map(|a| by_area.get(a)).flatten());
        for route in targets {
            if !sent.insert(route.id) {
                continue;
            }
            match route.tx.try_send(Arc::clone(&batch)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    route.lagged.store(true, Ordering::Release);
                    dropped.insert(route.id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    dropped.insert(route.id);
                }
            }
        }
        if !dropped.is_empty() {
            routes.remove(|id| dropped.contains(&id));
        }
    }

    /// Stops routing: every feed ends after what it holds, as [`Ended::Closed`].
    pub fn close(&self) {
        let mut routes = self.routes();
        routes.closed = true;
        routes.by_area.clear();
        routes.everything.clear();
    }
}

impl Routes {
    fn remove(&mut self, gone: impl Fn(u64) -> bool) {
        self.everything.retain(|r| !gone(r.id));
        self.by_area.retain(|_, list| {
            list.retain(|r| !gone(r.id));
            !list.is_empty()
        });
    }
}

impl Feed {
    /// The next batch for this stream, or why there are no more.
    pub async fn recv(&mut self) -> Result<Arc<Batch>, Ended> {
        match self.rx.recv().await {
            Some(batch) => Ok(batch),
            None if self.lagged.load(Ordering::Acquire) => Err(Ended::Lagged),
            None => Err(Ended::Closed),
        }
    }

    /// The live reader's position when this feed registered (next offset per partition):
    /// from there on, a record this feed did not get cannot match its stream. A partition
    /// the router did not know is never taken as offered.
    pub fn from(&self, partition: i32) -> i64 {
        self.from.get(&partition).copied().unwrap_or(i64::MAX)
    }

    /// A new feed for the same areas, after this one lagged.
    pub fn renew(&self) -> Feed {
        self.router.register(&self.areas)
    }

    /// The live reader's position, when every batch routed to this feed has been taken
    /// from it (checked under the dispatch lock, so none can be on its way): records up to
    /// there that the feed did not get cannot match its stream.
    pub fn position_if_drained(&self) -> Option<BTreeMap<i32, i64>> {
        let routes = self.router.routes();
        let routed = !routes.closed && !self.lagged.load(Ordering::Acquire);
        (routed && self.rx.is_empty()).then(|| routes.position.clone())
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let id = self.id;
        self.router.routes().remove(|r| r == id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;
    use crier_proto::v1::Event;

    fn batch(records: &[(i32, i64, &str)]) -> Arc<Batch> {
        Arc::new(Batch::new(
            records
                .iter()
                .map(|(partition, offset, area)| {
                    Record::new(
                        *partition,
                        *offset,
                        Some(Event {
                            areas: vec![area.to_string()],
                            ..Default::default()
                        }),
                    )
                })
                .collect(),
        ))
    }

    fn areas(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    #[tokio::test]
    async fn a_batch_goes_only_to_the_streams_of_its_areas_and_to_those_without_areas() {
        let router = Router::new(BTreeMap::from([(0, 10)]), 8);
        let mut a = router.register(&areas(&["A"]));
        let mut b = router.register(&areas(&["B"]));
        let mut ab = router.register(&areas(&["A", "B"]));
        let mut all = router.register(&[]);
        assert_eq!(a.from(0), 10);

        router.dispatch(batch(&[(0, 10, "A"), (0, 11, "A")]));
        router.dispatch(batch(&[(0, 12, "C")]));
        router.dispatch(batch(&[(0, 13, "A"), (0, 14, "B")]));

        let first = |b: Arc<Batch>| b.records()[0].offset;
        assert_eq!(first(a.recv().await.unwrap()), 10);
        assert_eq!(first(a.recv().await.unwrap()), 13);
        assert_eq!(first(b.recv().await.unwrap()), 13);
        assert_eq!(first(ab.recv().await.unwrap()), 10);
        assert_eq!(
            first(ab.recv().await.unwrap()),
            13,
            "once, though about both"
        );
        for expected in [10, 12, 13] {
            assert_eq!(first(all.recv().await.unwrap()), expected);
        }
        for feed in [&a, &b, &ab, &all] {
            assert_eq!(
                feed.position_if_drained(),
                Some(BTreeMap::from([(0, 15)])),
                "drained, so the records not routed to it cannot match"
            );
        }
        router.dispatch(batch(&[(0, 15, "A")]));
        assert_eq!(a.position_if_drained(), None, "a batch is waiting");
        assert_eq!(b.position_if_drained(), Some(BTreeMap::from([(0, 16)])));
    }

    #[tokio::test]
    async fn a_stream_whose_queue_overflows_is_dropped_and_ends_as_lagged_after_what_it_holds() {
        let router = Router::new(BTreeMap::new(), 2);
        let mut slow = router.register(&areas(&["A"]));
        let mut other = router.register(&areas(&["A"]));
        for offset in 0..3 {
            router.dispatch(batch(&[(0, offset, "A")]));
            if let Ok(b) = other.recv().await {
                assert_eq!(b.records()[0].offset, offset);
            }
        }
        router.dispatch(batch(&[(0, 3, "A")]));
        assert_eq!(slow.recv().await.unwrap().records()[0].offset, 0);
        assert_eq!(slow.recv().await.unwrap().records()[0].offset, 1);
        assert_eq!(slow.recv().await.unwrap_err(), Ended::Lagged);
        assert_eq!(slow.position_if_drained(), None);
        assert_eq!(other.recv().await.unwrap().records()[0].offset, 3);

        let mut renewed = slow.renew();
        assert_eq!(
            renewed.from(0),
            4,
            "registered at the live reader's position"
        );
        router.dispatch(batch(&[(0, 4, "A")]));
        assert_eq!(renewed.recv().await.unwrap().records()[0].offset, 4);
    }

    #[tokio::test]
    async fn feeds_end_as_closed_when_the_router_closes_and_dropped_feeds_leave_no_route() {
        let router = Router::new(BTreeMap::new(), 4);
        let gone = router.register(&areas(&["A"]));
        drop(gone);
        assert!(router.routes().by_area.is_empty());
        let mut feed = router.register(&[]);
        router.dispatch(batch(&[(0, 0, "A")]));
        router.close();
        assert!(feed.recv().await.is_ok(), "what it holds comes first");
        assert_eq!(feed.recv().await.unwrap_err(), Ended::Closed);
    }
}
