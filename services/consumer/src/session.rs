//! One open Subscribe stream: reads events from the right place, filters them, delivers
//! them within the in-flight window, takes acknowledgements and keeps the cursor.
//!
//! Per partition the session tracks `next`, the next offset to look at. Records arrive
//! from the shared live reader and, while the session is behind, from its own catch-up
//! reader. A record is handled only when its offset equals `next`, so each offset is handled
//! once and in order whichever source brings it; a live record beyond `next` means a gap,
//! which the catch-up reader fills. A partition has *joined* the live reader once the live
//! reader brings its next offset, or the catch-up reader reaches the end of the partition
//! with nothing missed; when every partition has joined, the catch-up reader is dropped.
//!
//! The durable cursor of a partition is its lowest unacknowledged offset (or `next` when
//! nothing is outstanding), so a crash or disconnect re-delivers exactly the unacknowledged
//! events, in order.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use crier_agreements::reload::PolicyHandle;
use crier_audit::{Action, Auditor, Delivered, Entry, EventRef, positions::Runs};
use crier_identity::Identity;
use crier_kafka::KafkaConfig;
use crier_proto::{
    v1::{Filter, SubscribeRequest, subscribe_request::Request},
    wire::{At, Deliveries},
};
use futures::FutureExt;
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::{
    batch::Batch,
    live::Live,
    outgoing::{self, Outgoing},
    read_errors::ReadErrors,
    record::Record,
    route::{Ended, Feed},
    store::{StoredSubscription, SubscriptionStore},
};

/// Longest a cursor moved only by records that did not match waits to be saved.
const SKIPPED_SAVE_EVERY: Duration = Duration::from_secs(30);

/// Most bytes of deliveries put in one message, well under gRPC's usual 4 MiB limit on
/// what a client accepts.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Most items (events described, runs of positions delivered or acknowledged) one audit
/// record of a stream holds, so a record stays well under the audit writer's message size.
const MAX_PER_AUDIT_RECORD: usize = 512;

/// What a session needs from the service around it.
#[derive(Debug, Clone)]
pub struct Shared {
    pub live: Arc<Live>,
    pub store: Arc<SubscriptionStore>,
    pub policy: PolicyHandle,
    pub auditor: Auditor,
    pub registry: crier_schema::Registry,
    pub kafka: KafkaConfig,
    pub catch_up_slots: Arc<Semaphore>,
    pub cursor_flush: Duration,
    pub shutdown: CancellationToken,
    /// The running sessions, so that shutdown can wait for their last cursor saves.
    pub sessions: tokio_util::task::TaskTracker,
}

/// The state of one stream.
pub struct Session {
    shared: Shared,
    caller: Identity,
    sub: StoredSubscription,
    filter: Filter,
    window: Window,
    out: outgoing::Sender,
    /// The live batches this stream may want (see `route.rs`).
    live: Feed,
    catch_up: Option<CatchUp>,
    catch_up_errors: ReadErrors,
    next: BTreeMap<i32, i64>,
    /// Per partition, the offsets delivered and not yet acknowledged.
    unacked: BTreeMap<i32, BTreeSet<i64>>,
    in_flight: usize,
    joined: BTreeMap<i32, bool>,
    /// Highest live offset per partition that arrived before `next` reached it.
    live_skipped: BTreeMap<i32, i64>,
    dirty: bool,
    /// An acknowledgement has moved the cursor since it was last saved.
    acked: bool,
    /// When the cursor was last saved.
    saved_at: std::time::Instant,
    /// After a failed cursor save, no retry before this: a save waits up to the Kafka
    /// delivery timeout, and retrying on every tick would only add to Kafka's trouble.
    save_not_before: Option<std::time::Instant>,
    /// The cursor write under way, if any. It is awaited beside deliveries, not before
    /// them, so a slow acknowledgement from Kafka does not pause the stream.
    saving: Option<Saving>,
    /// The live batch being delivered.
    pending: Option<Pending>,
    /// Deliveries ready to go out in the next message.
    outbox: Deliveries,
    /// The Kafka timestamp of the outbox's oldest event.
    outbox_oldest_ms: Option<i64>,
    /// What this stream has sent and had acknowledged since it last audited (see
    /// [`Session::audit_pending`]).
    receipts: Receipts,
    /// Positions acknowledged since the stream last audited.
    acked_positions: Runs,
}

/// The deliveries a stream's next audit record names: in full those a catch-up reader
/// brought, and by position, in runs, those the live reader's `Read` records describe.
#[derive(Debug, Default)]
struct Receipts {
    described: Vec<EventRef>,
    /// Grouped by the agreements they were delivered under.
    delivered: Vec<(Vec<String>, Runs)>,
}

impl Receipts {
    /// The items the record will hold: events described, and runs of positions.
    fn len(&self) -> usize {
        self.described.len()
            + self
                .delivered
                .iter()
                .map(|(_, runs)| runs.len())
                .sum::<usize>()
    }

    /// Adds the delivery of `rec` under `agreements`; `describe`: the trail does not
    /// describe it yet. The ids are copied only for a new group or a described event.
    fn add(&mut self, rec: &Record, describe: bool, agreements: &[&str]) {
        let owned = || agreements.iter().map(|a| (*a).to_owned()).collect();
        if describe && let Some(event) = &rec.event {
            self.described.push(EventRef {
                event_id: event.id.clone(),
                event_type: event.r#type.clone(),
                subject: event.subject.clone(),
                agreements: owned(),
                position: rec.ack_id.clone(),
            });
            return;
        }
        match self.delivered.last_mut() {
            Some((group, runs))
                if group
                    .iter()
                    .map(String::as_str)
                    .eq(agreements.iter().copied()) =>
            {
                runs.push(rec.partition, rec.offset)
            }
            _ => {
                let mut runs = Runs::default();
                runs.push(rec.partition, rec.offset);
                self.delivered.push((owned(), runs));
            }
        }
    }

    /// The record's entry, and this emptied.
    fn take(&mut self) -> Entry {
        Entry {
            action: Some(Action::Deliver),
            events: std::mem::take(&mut self.described),
            delivered: std::mem::take(&mut self.delivered)
                .into_iter()
                .map(|(agreements, mut runs)| Delivered {
                    agreements,
                    positions: runs.take(),
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// How much a stream may have outstanding and in one message.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Most deliveries unacknowledged at once.
    pub max_in_flight: usize,
    /// Most deliveries per message; 1 sends each as a `delivery`, more as `deliveries`.
    pub max_batch: usize,
}

/// A live batch being delivered: the records this stream wants from it, and how far it
/// has got, so that a full in-flight window can pause it.
struct Pending {
    batch: Arc<Batch>,
    /// Indices of the matching records, ascending.
    matches: Vec<u32>,
    /// How many of `matches` are handled.
    done: usize,
    /// Per partition the batch brings forward, the offset after its last record: `next`
    /// moves there once every match is handled, past the records that did not match.
    ends: Vec<(i32, i64)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("subscription", &self.sub.name)
            .field("next", &self.next)
            .field("in_flight", &self.in_flight)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// The agreements deliveries are judged by, and when: taken afresh whenever a stream has
/// waited, so that an expired or revoked agreement stops delivery at once.
struct PolicyNow {
    policy: Arc<crier_agreements::policy::Policy>,
    now: i64,
}

/// A cursor write under way, in a task of its own.
struct Saving {
    /// The subscription as stored once the write succeeds.
    sub: StoredSubscription,
    /// Whether acknowledgements had moved the cursor it saves.
    acked: bool,
    write: tokio::task::JoinHandle<Result<(), KafkaError>>,
}

struct CatchUp {
    consumer: StreamConsumer,
    _slot: OwnedSemaphorePermit,
}

enum Step {
    Continue,
    End(Option<Status>),
}

impl Session {
    /// A session starting at `start` (per-partition offsets), whose live receiver was taken
    /// before `high` (the high watermarks) was read.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Shared,
        caller: Identity,
        sub: StoredSubscription,
        live: Feed,
        start: BTreeMap<i32, i64>,
        high: &BTreeMap<i32, i64>,
        window: Window,
        out: outgoing::Sender,
    ) -> Self {
        let joined = start
            .iter()
            .map(|(p, o)| (*p, *o >= high.get(p).copied().unwrap_or(0)))
            .collect();
        let filter = Filter {
            event_types: sub.event_types.clone(),
            areas: sub.areas.clone(),
        };
        let catch_up_errors = ReadErrors::new("catch_up", Some(sub.name.clone()));
        Self {
            shared,
            caller,
            sub,
            filter,
            window,
            out,
            live,
            catch_up: None,
            catch_up_errors,
            unacked: start.keys().map(|p| (*p, BTreeSet::new())).collect(),
            next: start,
            in_flight: 0,
            joined,
            live_skipped: BTreeMap::new(),
            dirty: true,
            acked: false,
            saved_at: std::time::Instant::now(),
            save_not_before: None,
            saving: None,
            pending: None,
            outbox: Deliveries::default(),
            outbox_oldest_ms: None,
            receipts: Receipts::default(),
            acked_positions: Runs::default(),
        }
    }

    /// Runs the stream until the client leaves, the service shuts down or Kafka fails, then
    /// saves the cursor.
    pub async fn run(mut self, mut inbound: Streaming<SubscribeRequest>) {
        let mut flush = tokio::time::interval(self.shared.cursor_flush);
        let end = loop {
            if self.catch_up.is_none()
                && self.joined.values().any(|j| !j)
                && let Err(e) = self.start_catch_up().await
            {
                break Some(Status::unavailable(format!(
                    "cannot read Kafka: {e}; reconnect to resume"
                )));
            }
            let room = self.in_flight < self.window.max_in_flight;
            if room && self.pending.is_some() {
                if let Step::End(status) = self.drain_pending().await {
                    break status;
                }
                continue;
            }
            let step = tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => Step::End(Some(Status::unavailable(
                    "the consumer service is shutting down; reconnect to resume",
                ))),
                msg = inbound.message() => self.on_client(msg).await,
                _ = flush.tick() => {
                    self.audit_pending().await;
                    self.pass_idle();
                    self.start_save(false);
                    Step::Continue
                }
                done = saved(&mut self.saving), if self.saving.is_some() => {
                    self.on_saved(done);
                    Step::Continue
                }
                rec = self.live.recv(), if room && self.pending.is_none() => self.on_live(rec).await,
                rec = recv_catch_up(&self.catch_up), if room && self.catch_up.is_some() => {
                    self.on_catch_up(rec).await
                }
            };
            if let Step::End(status) = step {
                break status;
            }
        };
        self.audit_pending().await;
        self.pass_idle();
        self.drop_catch_up();
        self.finish_save().await;
        self.dirty = true;
        self.save_not_before = None;
        self.start_save(true);
        self.finish_save().await;
        if let Some(status) = end {
            let _ = self.out.send(Err(status)).await;
        }
    }

    async fn on_client(&mut self, msg: Result<Option<SubscribeRequest>, Status>) -> Step {
        match msg {
            Ok(Some(SubscribeRequest {
                request: Some(Request::Ack(ack)),
            })) => {
                self.ack(&ack.ack_ids).await;
                Step::Continue
            }
            Ok(Some(_)) => Step::End(Some(Status::invalid_argument(
                "request: after the first message (open), only ack messages are allowed",
            ))),
            Ok(None) => Step::End(None),
            // A message that could not be read (undecodable, too large): say so, rather than
            // ending the stream as if the client had hung up.
            Err(status) => Step::End(Some(status)),
        }
    }

    /// Settles acknowledged deliveries. Their positions are audited with the stream's
    /// other records (see [`Session::audit_pending`]); the delivery records say what each
    /// position held.
    async fn ack(&mut self, ack_ids: &[String]) {
        let mut settled = 0;
        for ack_id in ack_ids {
            let parsed = ack_id
                .split_once(':')
                .and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?)));
            let Some((p, o)) = parsed else {
                metrics::counter!("crier_unknown_acks_total").increment(1);
                continue;
            };
            if self.unacked.get_mut(&p).is_some_and(|m| m.remove(&o)) {
                self.in_flight -= 1;
                self.acked_positions.push(p, o);
                settled += 1;
            }
        }
        if settled == 0 {
            return;
        }
        self.dirty = true;
        self.acked = true;
        metrics::counter!("crier_acks_total").increment(settled as u64);
        if self.acked_positions.len() >= MAX_PER_AUDIT_RECORD {
            self.audit_pending().await;
        }
    }

    async fn on_live(&mut self, batch: Result<Arc<Batch>, Ended>) -> Step {
        match batch {
            Ok(batch) => {
                self.pending = Some(self.start_batch(batch));
                self.drain_pending().await
            }
            Err(Ended::Lagged) => {
                // Fell behind the live reader: read from Kafka until caught up again, and
                // take live batches again from now on.
                metrics::counter!("crier_live_lagged_total").increment(1);
                tracing::debug!(subscription = %self.sub.name, "fell behind the live reader");
                self.live = self.live.renew();
                self.joined.values_mut().for_each(|j| *j = false);
                self.drop_catch_up();
                Step::Continue
            }
            Err(Ended::Closed) => Step::End(Some(Status::unavailable(
                "the live reader stopped; reconnect to resume",
            ))),
        }
    }

    /// Moves `next` past the records the live reader has read and not routed here, which
    /// cannot match, so that a stream whose areas are quiet still keeps a current cursor.
    /// Only when nothing is being caught up or delivered, and no batch is waiting.
    fn pass_idle(&mut self) {
        if self.pending.is_some() || self.catch_up.is_some() || self.joined.values().any(|j| !j) {
            return;
        }
        let Some(position) = self.live.position_if_drained() else {
            return;
        };
        for (p, end) in position {
            let next = self.next.get(&p).copied().unwrap_or(0);
            if end > next && self.offered_from(p, next) {
                self.next.insert(p, end);
                self.dirty = true;
            }
        }
    }

    /// Whether every record of partition `p` from `next` on that the live reader routed
    /// here has been taken: `next` is at or past where the feed started, and past every
    /// batch this stream skipped for being ahead of it (whose records the catch-up reader
    /// must still bring). Only then can a record from `next` on that did not arrive not
    /// be for this stream.
    fn offered_from(&self, p: i32, next: i64) -> bool {
        next >= self.live.from(p) && self.live_skipped.get(&p).is_none_or(|s| next > *s)
    }

    /// Decides what this stream takes from a live batch. A partition whose first record in
    /// the batch is beyond `next` has a gap: above where the feed started, only records
    /// that were not for this stream (stepped over); below it, records this stream has not
    /// seen, which the catch-up reader fills first. Any other partition the batch covers
    /// has joined the live reader.
    fn start_batch(&mut self, batch: Arc<Batch>) -> Pending {
        let mut from = BTreeMap::new();
        let mut ends = Vec::new();
        for (&p, &(first, last)) in batch.ranges() {
            let mut next = self.next.get(&p).copied().unwrap_or(0);
            if first > next && self.offered_from(p, next) {
                next = first;
                self.next.insert(p, next);
                self.dirty = true;
            }
            if first > next {
                self.live_skipped.insert(p, last);
                if self.joined.insert(p, false) == Some(true) {
                    self.drop_catch_up();
                }
            } else if last >= next {
                self.joined.insert(p, true);
                from.insert(p, next);
                ends.push((p, last + 1));
            }
        }
        let matches = batch.matching(&self.filter, |p, o| from.get(&p).is_some_and(|f| o >= *f));
        Pending {
            batch,
            matches,
            done: 0,
            ends,
        }
    }

    /// Delivers the current live batch's matches until they are done or the window is
    /// full; the rest waits, so the in-flight window is never exceeded. Matches go out
    /// together, up to the stream's `max_batch` a message.
    async fn drain_pending(&mut self) -> Step {
        let mut policy = self.policy_now();
        let batch = self.pending.as_ref().map(|p| Arc::clone(&p.batch));
        while let (Some(pending), Some(batch)) = (&mut self.pending, &batch) {
            let Some(&i) = pending.matches.get(pending.done) else {
                for (p, end) in &pending.ends {
                    let next = self.next.entry(*p).or_insert(0);
                    if *next < *end {
                        *next = *end;
                        self.dirty = true;
                    }
                }
                self.pending = None;
                break;
            };
            if self.in_flight >= self.window.max_in_flight {
                return self.send().await;
            }
            pending.done += 1;
            let rec = &batch.records()[i as usize];
            // The records between `next` and this one are in the batch and do not match.
            let next = self.next.entry(rec.partition).or_insert(0);
            if *next < rec.offset {
                *next = rec.offset;
            }
            self.handle(rec, true, &policy);
            if self.outbox_full() {
                if let Step::End(status) = self.send().await {
                    return Step::End(status);
                }
                // The send may have waited for the subscriber: judge afresh.
                policy = self.policy_now();
            }
        }
        if let Step::End(status) = self.send().await {
            return Step::End(status);
        }
        if self.joined.values().all(|j| *j) {
            self.drop_catch_up();
        }
        Step::Continue
    }

    /// Takes a record from the catch-up reader, and any more it already holds, up to a
    /// message's worth.
    async fn on_catch_up(&mut self, mut msg: Result<Record, KafkaError>) -> Step {
        let policy = self.policy_now();
        loop {
            self.take_catch_up(msg, &policy);
            if self.outbox_full() || self.in_flight >= self.window.max_in_flight {
                break;
            }
            match recv_catch_up(&self.catch_up).now_or_never() {
                Some(more) => msg = more,
                None => break,
            }
        }
        self.send().await
    }

    fn take_catch_up(&mut self, msg: Result<Record, KafkaError>, policy: &PolicyNow) {
        match msg {
            Ok(rec) => {
                let next = self.next.get(&rec.partition).copied().unwrap_or(0);
                if rec.offset > next {
                    // Retention deleted records this subscription had not yet seen.
                    tracing::warn!(subscription = %self.sub.name, partition = rec.partition,
                        from = next, to = rec.offset, "records expired before delivery");
                    self.next.insert(rec.partition, rec.offset);
                }
                // A catch-up reader's records have no `Read` record: the delivery
                // describes them.
                self.handle(&rec, false, policy);
            }
            Err(KafkaError::PartitionEOF(p)) => {
                let next = self.next.get(&p).copied().unwrap_or(0);
                if self.live_skipped.get(&p).is_none_or(|s| next > *s) {
                    self.joined.insert(p, true);
                }
                if self.joined.values().all(|j| *j) {
                    self.drop_catch_up();
                }
            }
            // Not waited on: see `read_errors` for why.
            Err(e) => self.catch_up_errors.note(&e),
        }
    }

    /// Handles the record at `next` of its partition: if it matches, puts it in the outbox
    /// (counted as in flight from now). `described_in_trail`: the instance's audit chain
    /// already describes the record (a live batch's `Read` record).
    fn handle(&mut self, rec: &Record, described_in_trail: bool, policy: &PolicyNow) {
        let p = rec.partition;
        if rec.offset != self.next.get(&p).copied().unwrap_or(0) {
            return;
        }
        self.next.insert(p, rec.offset + 1);
        self.dirty = true;
        let Some(event) = &rec.event else {
            return;
        };
        let areas = event.areas.iter().map(String::as_str);
        if !crier_schema::filter::matches(&self.filter, &event.r#type, areas.clone()) {
            return;
        }
        let Some(entitled) =
            policy
                .policy
                .entitlement(self.caller.as_str(), &event.r#type, areas, policy.now)
        else {
            metrics::counter!("crier_withheld_total").increment(1);
            return;
        };
        // Encoded once per record and field set, whichever stream asks first.
        let Some(encoded) = rec.encoded(&self.shared.registry, &entitled.fields) else {
            return;
        };
        let at = At {
            topic: self.shared.live.topic(),
            partition: p,
            offset: rec.offset,
        };
        self.outbox.push(&encoded, at, &rec.ack_id);
        self.outbox_oldest_ms = self
            .outbox_oldest_ms
            .into_iter()
            .chain(rec.written_ms)
            .min();
        self.receipts
            .add(rec, !described_in_trail, &entitled.agreements);
        self.unacked.entry(p).or_default().insert(rec.offset);
        self.in_flight += 1;
    }

    /// The agreements in force, and the time to judge them at, for the deliveries made
    /// before the stream next waits. Taken for every delivery, it was a shared lock and two
    /// atomic counts on one cache line each time, 100,000 times a second across both cores.
    fn policy_now(&self) -> PolicyNow {
        PolicyNow {
            policy: self.shared.policy.get(),
            now: crate::subscriber::unix_now(),
        }
    }

    fn outbox_full(&self) -> bool {
        self.outbox.len() >= self.window.max_batch || self.outbox.bytes() >= MAX_MESSAGE_BYTES
    }

    /// Sends the outbox as one message; its events are audited with the stream's next
    /// records (see [`Session::audit_pending`]).
    async fn send(&mut self) -> Step {
        if self.outbox.is_empty() {
            return Step::Continue;
        }
        let n = self.outbox.len();
        if self.receipts.len() >= MAX_PER_AUDIT_RECORD {
            self.audit_pending().await;
        }
        metrics::counter!("crier_deliveries_total").increment(n as u64);
        // A stream that asked for one delivery a message gets `delivery`, as the first
        // version of the contract sent; `outbox_full` keeps its outbox to one.
        let single = if self.window.max_batch == 1 {
            self.outbox.take_single()
        } else {
            None
        };
        let message = Outgoing {
            response: single.unwrap_or_else(|| self.outbox.take_batch()),
            oldest_ms: self.outbox_oldest_ms.take(),
        };
        if self.out.send(Ok(message)).await.is_err() {
            return Step::End(None);
        }
        Step::Continue
    }

    /// Audits what this stream sent, then what was acknowledged, since it last did: one
    /// Deliver record naming each event sent, and one Ack record naming each position
    /// acknowledged, both in runs of consecutive offsets (`crier_audit::positions`). Done
    /// at every cursor flush, at the end of the stream, and whenever
    /// [`MAX_PER_AUDIT_RECORD`] items have gathered. A record per message sent and per Ack
    /// received was two hashed JSON records per message, tens of thousands a second at
    /// full fan-out, and most of the audit trail's cost (PERFORMANCE.md); the trail says
    /// the same, to the cursor flush interval.
    async fn audit_pending(&mut self) {
        if self.receipts.len() > 0 {
            let receipts = self.receipts.take();
            self.audit(receipts).await;
        }
        if !self.acked_positions.is_empty() {
            let detail = self.acked_positions.take().join(" ");
            self.audit(Entry {
                action: Some(Action::Ack),
                detail,
                ..Default::default()
            })
            .await;
        }
    }

    /// Records `entry` as done by this stream's caller on this subscription.
    async fn audit(&self, entry: Entry) {
        self.shared
            .auditor
            .record(Entry {
                actor: self.caller.to_string(),
                subscription: self.sub.name.clone(),
                ..entry
            })
            .await;
    }

    /// The cursor to store: per partition, the first unacknowledged offset.
    fn cursor(&self) -> BTreeMap<i32, i64> {
        self.next
            .iter()
            .map(|(p, next)| {
                let first_unacked = self.unacked.get(p).and_then(|m| m.first().copied());
                (*p, first_unacked.unwrap_or(*next))
            })
            .collect()
    }

    /// Starts saving the cursor if it moved and no save is under way: at once after
    /// acknowledgements (or when `now`), but only every [`SKIPPED_SAVE_EVERY`] when only
    /// records that did not match moved it. With thousands of streams, saving those on
    /// every flush was thousands of Kafka writes a second, read back by every instance;
    /// after a crash they are only read again.
    fn start_save(&mut self, now: bool) {
        if self.saving.is_some() || !self.dirty {
            return;
        }
        if !now && !self.acked && self.saved_at.elapsed() < SKIPPED_SAVE_EVERY {
            return;
        }
        let cursor = self.cursor();
        if cursor == self.sub.cursor {
            self.dirty = false;
            return;
        }
        if self
            .save_not_before
            .is_some_and(|t| std::time::Instant::now() < t)
        {
            return;
        }
        let mut sub = self.sub.clone();
        sub.cursor = cursor;
        // What moves the cursor from here on is for the next save.
        let acked = std::mem::take(&mut self.acked);
        self.dirty = false;
        let store = Arc::clone(&self.shared.store);
        let write = tokio::spawn({
            let sub = sub.clone();
            async move { store.put(sub).await }
        });
        self.saving = Some(Saving { sub, acked, write });
    }

    /// Takes the outcome of a cursor save; a failed one is tried again after a pause.
    fn on_saved(&mut self, result: Result<(), KafkaError>) {
        let Some(Saving { sub, acked, .. }) = self.saving.take() else {
            return;
        };
        match result {
            Ok(()) => {
                self.sub = sub;
                self.saved_at = std::time::Instant::now();
                self.save_not_before = None;
            }
            Err(e) => {
                tracing::warn!(subscription = %self.sub.name, error = %e, "cursor not saved; will retry");
                self.dirty = true;
                self.acked |= acked;
                self.save_not_before = Some(std::time::Instant::now() + Duration::from_secs(5));
            }
        }
    }

    /// Waits for the cursor save under way, if any.
    async fn finish_save(&mut self) {
        if self.saving.is_some() {
            let done = saved(&mut self.saving).await;
            self.on_saved(done);
        }
    }

    async fn start_catch_up(&mut self) -> Result<(), KafkaError> {
        let slot = self
            .shared
            .catch_up_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| KafkaError::Canceled)?;
        let consumer: StreamConsumer = self.shared.kafka.catch_up_reader().create()?;
        let mut tpl = TopicPartitionList::new();
        for (p, joined) in &self.joined {
            if !joined {
                let next = self.next.get(p).copied().unwrap_or(0);
                tpl.add_partition_offset(self.shared.live.topic(), *p, Offset::Offset(next))?;
            }
        }
        consumer.assign(&tpl)?;
        metrics::counter!("crier_catch_up_readers_total").increment(1);
        self.catch_up = Some(CatchUp {
            consumer,
            _slot: slot,
        });
        Ok(())
    }

    fn drop_catch_up(&mut self) {
        if let Some(catch_up) = self.catch_up.take() {
            // Closing a consumer can block while the broker is away: keep it off the runtime.
            tokio::task::spawn_blocking(move || drop(catch_up));
        }
    }
}

/// The outcome of the cursor save under way; never, when there is none.
async fn saved(saving: &mut Option<Saving>) -> Result<(), KafkaError> {
    match saving {
        // The task ends only by finishing, unless the runtime is going away.
        Some(saving) => (&mut saving.write)
            .await
            .unwrap_or(Err(KafkaError::Canceled)),
        None => std::future::pending().await,
    }
}

async fn recv_catch_up(catch_up: &Option<CatchUp>) -> Result<Record, KafkaError> {
    match catch_up {
        Some(c) => c.consumer.recv().await.map(|m| Record::read(&m)),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64) -> Record {
        Record::new(
            0,
            offset,
            Some(crier_proto::v1::Event {
                id: format!("e-{offset}"),
                ..Default::default()
            }),
        )
    }

    #[test]
    fn receipts_name_consecutive_deliveries_as_one_run_per_agreement_set() {
        let mut receipts = Receipts::default();
        let dsa: &[&str] = &["dsa-1"];
        for offset in 10..14 {
            receipts.add(&record(offset), false, dsa);
        }
        receipts.add(&record(15), false, dsa);
        receipts.add(&record(16), false, &["dsa-2"]);
        receipts.add(&record(17), true, dsa);
        assert_eq!(receipts.len(), 4);
        let entry = receipts.take();
        assert_eq!(entry.named(), 7);
        assert_eq!(entry.delivered[0].positions, ["0:10-13", "0:15"]);
        assert_eq!(entry.delivered[0].agreements, ["dsa-1"]);
        assert_eq!(entry.delivered[1].positions, ["0:16"]);
        assert_eq!(entry.delivered[1].agreements, ["dsa-2"]);
        assert_eq!(entry.events[0].position, "0:17");
        assert_eq!(entry.events[0].agreements, ["dsa-1"]);
        assert_eq!(receipts.len(), 0);
    }
}
