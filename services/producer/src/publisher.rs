//! The Publisher gRPC service: validate, authorise, deduplicate, write to Kafka, audit,
//! answer.
//!
//! The invariant: OK is returned only after Kafka has acknowledged the record with acks=all.
//! Every other outcome is an error the client can act on (fix the input, or retry with the
//! same id).
//!
//! PublishBatch does not run the unary path once per event: per-event overhead (a task, a
//! lock, an audit send and metrics each), not Kafka, was most of what a batched event cost.
//! Its events are checked against one policy snapshot, claimed under one dedup lock, and
//! written by one task with every send in flight, which then settles the claims and audits
//! the accepted events as one record naming each. Each event still gets its own outcome and
//! metric count.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crier_agreements::{Policy, reload::PolicyHandle};
use crier_audit::{Action, Auditor, Entry, EventRef};
use crier_identity::Identity;
use crier_kafka::{Writer, cloudevents};
use crier_proto::v1::{
    Event, Position, PublishBatchRequest, PublishBatchResponse, PublishError, PublishRequest,
    PublishResponse, PublishResult, publish_result::Outcome, publisher_server::Publisher,
};
use crier_schema::{
    Invalid, Registry,
    validate::{normalize, validate_event},
};
use futures::future::join_all;
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    producer::FutureRecord,
    util::Timeout,
};
use tonic::{Code, Request, Response, Status};

use crate::{
    config::Limits,
    dedup::{Claim, Claimed, Dedup, Key},
};

/// Implements `crier.v1.Publisher` over a shared Kafka producer.
#[derive(Debug, Clone)]
pub struct PublisherService {
    inner: Arc<Inner>,
}

struct Inner {
    producer: Writer,
    policy: PolicyHandle,
    auditor: Auditor,
    topic: String,
    registry: Registry,
    limits: Limits,
    dedup: Dedup,
    delivery_timeout: Duration,
    quotas: crate::quota::Quotas,
    admission: crate::admission::Admission,
    /// `crier_kafka_write_seconds`, looked up once: the macro finds the histogram in the
    /// recorder's registry on every call, 0.7% of the producer's samples when it ran for
    /// every event (PERFORMANCE.md, session 19).
    kafka_write_seconds: metrics::Histogram,
}

impl PublisherService {
    /// A service writing to `topic` through `producer`, allowing what `policy` allows and
    /// recording to `auditor`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        producer: Writer,
        policy: PolicyHandle,
        auditor: Auditor,
        topic: String,
        limits: Limits,
        dedup: Dedup,
        delivery_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                producer,
                policy,
                auditor,
                topic,
                registry: Registry::new(),
                quotas: crate::quota::Quotas::new(
                    limits.publish_rate_per_sec,
                    limits.publish_burst,
                ),
                admission: crate::admission::Admission::new(limits.max_events_in_progress),
                limits,
                dedup,
                delivery_timeout,
                kafka_write_seconds: metrics::histogram!("crier_kafka_write_seconds"),
            }),
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// One event's answer, as unary Publish returns it.
type Published = Result<PublishResponse, Status>;

/// What is the same for every event of one request, looked up once per request.
struct Caller<'a> {
    identity: &'a Identity,
    /// The identity as audit records name it.
    actor: String,
    /// The only source the identity may publish as.
    source: String,
    policy: Arc<Policy>,
    /// Seconds since the Unix epoch, for the agreements' validity.
    now_secs: i64,
    /// The time given to events that carry none.
    now: prost_types::Timestamp,
}

impl<'a> Caller<'a> {
    fn new(identity: &'a Identity, policy: &PolicyHandle) -> Self {
        let now = std::time::SystemTime::now();
        Self {
            identity,
            actor: identity.to_string(),
            source: identity.source(),
            policy: policy.get(),
            now_secs: now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            now: prost_types::Timestamp::from(now),
        }
    }

    /// The agreements under which the caller may publish `event`, or why not. The source
    /// must be the caller's own, so no publisher can speak for another.
    fn authorise(&self, event: &Event) -> Result<Vec<String>, String> {
        if event.source != self.source {
            return Err(format!(
                "event.source: '{}' is not yours; you are authenticated as {}, so the source must be '{}'",
                event.source, self.identity, self.source
            ));
        }
        self.policy
            .may_publish(self.identity.as_str(), &event.r#type, self.now_secs)
            .map_err(|d| d.0)
    }
}

/// A valid, authorised and normalised event: ready to claim and write.
struct Checked {
    event: Event,
    agreements: Vec<String>,
    /// The event's `(source, id)` in the dedup table, made once for its claim and its
    /// settling.
    key: Key,
}

impl Inner {
    /// Publishes one event end to end. Never returns Ok before Kafka has acknowledged.
    async fn publish(self: &Arc<Self>, identity: &Identity, event: Option<Event>) -> Published {
        let started = Instant::now();
        let result = async {
            let event = event.ok_or_else(|| Invalid::new("event", "required"))?;
            let caller = Caller::new(identity, &self.policy);
            let mut denials = Vec::new();
            let checked = self.check(&caller, event, &mut denials);
            self.auditor.record_many(denials).await;
            self.publish_checked(&caller.actor, checked?).await
        }
        .await;
        count(std::slice::from_ref(&result), started);
        result
    }

    /// Publishes `events` together, each with the outcome [`Self::publish`] would give it,
    /// in request order. The checks use one policy snapshot; the claims take one lock; one
    /// task writes every claimed event with all sends in flight, then settles and audits
    /// them in bulk. An event repeated within the batch shares its first copy's outcome,
    /// as a duplicate.
    async fn publish_many(
        self: &Arc<Self>,
        identity: &Identity,
        events: Vec<Event>,
    ) -> Vec<Published> {
        let started = Instant::now();
        let caller = Caller::new(identity, &self.policy);
        let mut results: Vec<Option<Published>> = vec![None; events.len()];
        let mut checked = Vec::with_capacity(events.len());
        let mut denials = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            match self.check(&caller, event, &mut denials) {
                Ok(c) => checked.push((i, c)),
                Err(status) => results[i] = Some(Err(status)),
            }
        }
        self.auditor.record_many(denials).await;

        // Nothing awaits from here until the commit task has started, so a cancelled call
        // cannot leave a claim pending.
        let claims = self.dedup.claim_many(checked.iter().map(|(_, c)| c.key));
        let index: Vec<usize> = checked.iter().map(|(i, _)| *i).collect();
        let (mut mine, mut waiting, mut repeats) = (Vec::new(), Vec::new(), Vec::new());
        for ((i, c), claim) in checked.into_iter().zip(claims) {
            match claim {
                Claimed::First(Claim::Mine) => mine.push((i, c)),
                Claimed::First(Claim::Done(position)) => results[i] = Some(Ok(duplicate(position))),
                Claimed::First(Claim::Wait(rx)) => waiting.push((i, c, rx)),
                Claimed::Repeat(first) => repeats.push((i, index[first])),
            }
        }
        let (mine_at, mine): (Vec<usize>, Vec<Checked>) = mine.into_iter().unzip();
        let committed = self.commit_detached(&caller.actor, mine);
        // Events another call is publishing now: wait for it, then take the unary path.
        let waited = join_all(waiting.into_iter().map(|(i, c, mut rx)| {
            let actor = &caller.actor;
            async move {
                let _ = rx.wait_for(|done| *done).await;
                (i, self.publish_checked(actor, c).await)
            }
        }));
        let (committed, waited) = tokio::join!(committed, waited);
        for (i, result) in mine_at.into_iter().zip(committed).chain(waited) {
            results[i] = Some(result);
        }
        // A repeat shares its first copy's outcome, a failed write included: it is the same
        // event, so writing it again in the same request would be the retry the client makes.
        for (i, first) in repeats {
            results[i] = results[first].clone().map(|r| {
                r.map(|p| PublishResponse {
                    duplicate: true,
                    ..p
                })
            });
        }
        let results: Vec<Published> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Status::internal("event left without an outcome"))))
            .collect();
        count(&results, started);
        results
    }

    /// Validates, authorises and normalises one event: what must hold before it is
    /// claimed. A refusal by the agreements is added to `denials` for the audit trail.
    fn check(
        &self,
        caller: &Caller<'_>,
        mut event: Event,
        denials: &mut Vec<Entry>,
    ) -> Result<Checked, Status> {
        validate_event(&self.registry, &event, self.limits.max_event_bytes)?;
        let agreements = caller.authorise(&event).map_err(|reason| {
            denials.push(Entry {
                action: Some(Action::Deny),
                actor: caller.actor.clone(),
                event_id: event.id.clone(),
                event_type: event.r#type.clone(),
                subject: event.subject.clone(),
                detail: reason.clone(),
                ..Default::default()
            });
            Status::permission_denied(reason)
        })?;
        normalize(&mut event, caller.now);
        let key = Key::of(&event.source, &event.id);
        Ok(Checked {
            event,
            agreements,
            key,
        })
    }

    /// Claims and writes one checked event, first waiting out any concurrent publish of it.
    async fn publish_checked(self: &Arc<Self>, actor: &str, checked: Checked) -> Published {
        loop {
            match self.dedup.claim(checked.key) {
                Claim::Done(position) => return Ok(duplicate(position)),
                Claim::Wait(mut rx) => {
                    let _ = rx.wait_for(|done| *done).await;
                }
                Claim::Mine => break,
            }
        }
        let mut results = self.commit_detached(actor, vec![checked]).await;
        results
            .pop()
            .unwrap_or_else(|| Err(Status::internal("publish task gave no outcome")))
    }

    /// Starts [`Self::commit`] in a task of its own, at once: from the claim on, it must end
    /// in complete or release even if the caller goes away (a cancelled gRPC call drops the
    /// future awaiting this).
    fn commit_detached(
        self: &Arc<Self>,
        actor: &str,
        events: Vec<Checked>,
    ) -> impl Future<Output = Vec<Published>> + use<> {
        let n = events.len();
        let (inner, actor) = (Arc::clone(self), actor.to_owned());
        let task = tokio::spawn(async move { inner.commit(&actor, events).await });
        async move {
            task.await.unwrap_or_else(|e| {
                vec![Err(Status::internal(format!("publish task failed: {e}"))); n]
            })
        }
    }

    /// Writes claimed events with every send in flight, in order, then settles their claims
    /// and audits the accepted ones. Results in the order of `events`.
    async fn commit(&self, actor: &str, events: Vec<Checked>) -> Vec<Published> {
        let written = join_all(events.iter().map(|c| self.write(&c.event))).await;
        let outcomes = || events.iter().map(|c| c.key).zip(&written);
        self.dedup
            .complete_many(outcomes().filter_map(|(key, w)| Some((key, w.as_ref().ok()?))));
        self.dedup
            .release_many(outcomes().filter(|(_, w)| w.is_err()).map(|(key, _)| key));
        // One record for everything this request published, naming each event.
        let accepted: Vec<EventRef> = events
            .into_iter()
            .zip(&written)
            .filter_map(|(c, w)| {
                let position = w.as_ref().ok()?;
                Some(EventRef {
                    event_id: c.event.id,
                    event_type: c.event.r#type,
                    subject: c.event.subject,
                    agreements: c.agreements,
                    position: format!("{}:{}", position.partition, position.offset),
                })
            })
            .collect();
        if !accepted.is_empty() {
            self.auditor
                .record(Entry {
                    action: Some(Action::Publish),
                    actor: actor.to_owned(),
                    detail: self.topic.clone(),
                    events: accepted,
                    ..Default::default()
                })
                .await;
        }
        written
            .into_iter()
            .map(|w| {
                w.map(|position| PublishResponse {
                    position: Some(position),
                    duplicate: false,
                })
            })
            .collect()
    }

    async fn write(&self, event: &Event) -> Result<Position, Status> {
        let record = cloudevents::encode(event);
        let future_record = FutureRecord::to(&self.topic)
            .key(&record.key)
            .payload(&record.value)
            .headers(record.headers);
        let sent = Instant::now();
        let acknowledged = self
            .producer
            .send(future_record, Timeout::After(self.delivery_timeout))
            .await;
        // Kafka's part of crier_publish_seconds: from handing the record to librdkafka until
        // this task runs again with the acknowledgement (or failure), so librdkafka's
        // threads and this runtime's scheduling count in it too.
        self.kafka_write_seconds
            .record(sent.elapsed().as_secs_f64());
        match acknowledged {
            Ok(delivery) => Ok(Position {
                topic: self.topic.clone(),
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((err, _)) => {
                tracing::warn!(id = %event.id, source = %event.source, error = %err, "publish not acknowledged by Kafka");
                Err(kafka_status(&err))
            }
        }
    }
}

fn duplicate(position: Position) -> PublishResponse {
    PublishResponse {
        position: Some(position),
        duplicate: true,
    }
}

/// Counts outcomes in `crier_publish_total`, one increment per outcome rather than per
/// event, and records the request's latency once per event in `crier_publish_seconds`.
fn count(results: &[Published], started: Instant) {
    let mut counts: Vec<(&'static str, u64)> = Vec::new();
    for result in results {
        let outcome = match result {
            Ok(r) if r.duplicate => "duplicate",
            Ok(_) => "ok",
            Err(s) => code_label(s.code()),
        };
        match counts.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, n)) => *n += 1,
            None => counts.push((outcome, 1)),
        }
    }
    for (outcome, n) in counts {
        metrics::counter!("crier_publish_total", "outcome" => outcome).increment(n);
    }
    metrics::histogram!("crier_publish_seconds")
        .record_many(started.elapsed().as_secs_f64(), results.len());
}

/// Maps a failed Kafka write to the status that tells the client what to do: retry later
/// (UNAVAILABLE, DEADLINE_EXCEEDED) or give up (INVALID_ARGUMENT for a record Kafka refuses).
fn kafka_status(err: &KafkaError) -> Status {
    let code = match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut) => {
            Code::DeadlineExceeded
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            Code::InvalidArgument
        }
        _ => Code::Unavailable,
    };
    Status::new(
        code,
        format!(
            "Kafka did not acknowledge the event ({err}); it may not be stored: retry with the same id"
        ),
    )
}

fn code_label(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid_argument",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::PermissionDenied => "permission_denied",
        _ => "error",
    }
}

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let caller = crier_identity::caller(&request)?;
        self.inner.quotas.take(caller.as_str(), 1)?;
        let _admitted = self.inner.admission.admit(1)?;
        let event = request.into_inner().event;
        self.inner.publish(&caller, event).await.map(Response::new)
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let caller = crier_identity::caller(&request)?;
        let events = request.into_inner().events;
        if events.is_empty() {
            return Err(Invalid::new("events", "at least one event is required").into());
        }
        let max = self.inner.limits.max_batch_events;
        if events.len() > max {
            return Err(Invalid::new(
                "events",
                format!("{} events in one batch; at most {max}", events.len()),
            )
            .into());
        }
        self.inner.quotas.take(
            caller.as_str(),
            u32::try_from(events.len()).unwrap_or(u32::MAX),
        )?;
        let _admitted = self.inner.admission.admit(events.len())?;
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let results = self.inner.publish_many(&caller, events).await;
        let results = ids
            .into_iter()
            .zip(results)
            .enumerate()
            .map(|(i, (id, result))| PublishResult {
                id,
                outcome: Some(match result {
                    Ok(accepted) => Outcome::Accepted(accepted),
                    Err(status) => Outcome::Error(batch_error(i, &status)),
                }),
            })
            .collect();
        Ok(Response::new(PublishBatchResponse { results }))
    }
}

/// The per-event error in a batch result, with the field path prefixed by the event's index.
fn batch_error(index: usize, status: &Status) -> PublishError {
    let message = status.message();
    let (field, message) = match message.split_once(": ") {
        Some((field, rest)) if status.code() == Code::InvalidArgument => {
            let field = field.replacen("event", &format!("events[{index}]"), 1);
            (field.clone(), format!("{field}: {rest}"))
        }
        _ => (String::new(), message.to_owned()),
    };
    PublishError {
        code: status.code() as i32,
        message,
        field,
    }
}
