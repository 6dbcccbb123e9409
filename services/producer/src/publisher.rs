//! The Publisher gRPC service: validate, authorise, deduplicate, write to Kafka, audit,
//! answer.
//!
//! The invariant: OK is returned only after Kafka has acknowledged the record with acks=all.
//! Every other outcome is an error the client can act on (fix the input, or retry with the
//! same id).

use std::{sync::Arc, time::Duration};

use crier_agreements::reload::PolicyHandle;
use crier_audit::{Action, Auditor, Entry};
use crier_identity::Identity;
use crier_kafka::cloudevents;
use crier_proto::v1::{
    Event, Position, PublishBatchRequest, PublishBatchResponse, PublishError, PublishRequest,
    PublishResponse, PublishResult, publish_result::Outcome, publisher_server::Publisher,
};
use crier_schema::{
    Invalid, Registry,
    validate::{normalize, validate_event},
};
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use tonic::{Code, Request, Response, Status};

use crate::{
    config::Limits,
    dedup::{Claim, Dedup},
};

/// Implements `crier.v1.Publisher` over a shared Kafka producer.
#[derive(Debug, Clone)]
pub struct PublisherService {
    inner: Arc<Inner>,
}

struct Inner {
    producer: FutureProducer,
    policy: PolicyHandle,
    auditor: Auditor,
    topic: String,
    registry: Registry,
    limits: Limits,
    dedup: Dedup,
    delivery_timeout: Duration,
    quotas: crate::quota::Quotas,
}

impl PublisherService {
    /// A service writing to `topic` through `producer`, allowing what `policy` allows and
    /// recording to `auditor`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        producer: FutureProducer,
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
                limits,
                dedup,
                delivery_timeout,
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

impl Inner {
    /// Publishes one event end to end. Never returns Ok before Kafka has acknowledged.
    async fn publish(
        self: &Arc<Self>,
        caller: &Identity,
        event: Option<Event>,
    ) -> Result<PublishResponse, Status> {
        let started = std::time::Instant::now();
        let result = self.publish_inner(caller, event).await;
        let outcome = match &result {
            Ok(r) if r.duplicate => "duplicate",
            Ok(_) => "ok",
            Err(s) => code_label(s.code()),
        };
        metrics::counter!("crier_publish_total", "outcome" => outcome).increment(1);
        metrics::histogram!("crier_publish_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn publish_inner(
        self: &Arc<Self>,
        caller: &Identity,
        event: Option<Event>,
    ) -> Result<PublishResponse, Status> {
        let mut event = event.ok_or_else(|| Invalid::new("event", "required"))?;
        validate_event(&self.registry, &event, self.limits.max_event_bytes)?;
        let agreements = match self.authorise(caller, &event) {
            Ok(agreements) => agreements,
            Err(reason) => {
                self.auditor
                    .record(Entry {
                        action: Some(Action::Deny),
                        actor: caller.to_string(),
                        event_id: event.id.clone(),
                        event_type: event.r#type.clone(),
                        subject: event.subject.clone(),
                        detail: reason.clone(),
                        ..Default::default()
                    })
                    .await;
                return Err(Status::permission_denied(reason));
            }
        };
        normalize(&mut event, now());
        loop {
            match self.dedup.claim(&event.source, &event.id) {
                Claim::Done(position) => {
                    return Ok(PublishResponse {
                        position: Some(position),
                        duplicate: true,
                    });
                }
                Claim::Wait(mut rx) => {
                    let _ = rx.wait_for(|done| *done).await;
                }
                Claim::Mine => break,
            }
        }
        // From here the claim must end in complete or release even if the caller goes away
        // (a cancelled gRPC call drops this future): the write runs in its own task.
        let inner = Arc::clone(self);
        let caller = caller.clone();
        tokio::spawn(async move { inner.commit(&caller, event, agreements).await })
            .await
            .unwrap_or_else(|e| Err(Status::internal(format!("publish task failed: {e}"))))
    }

    /// Writes a claimed event, settles its claim and audits it.
    async fn commit(
        &self,
        caller: &Identity,
        event: Event,
        agreements: Vec<String>,
    ) -> Result<PublishResponse, Status> {
        match self.write(&event).await {
            Ok(position) => {
                self.dedup
                    .complete(&event.source, &event.id, position.clone());
                self.auditor
                    .record(Entry {
                        action: Some(Action::Publish),
                        actor: caller.to_string(),
                        event_id: event.id.clone(),
                        event_type: event.r#type.clone(),
                        subject: event.subject.clone(),
                        agreements,
                        detail: format!(
                            "{}[{}]@{}",
                            position.topic, position.partition, position.offset
                        ),
                        ..Default::default()
                    })
                    .await;
                Ok(PublishResponse {
                    position: Some(position),
                    duplicate: false,
                })
            }
            Err(status) => {
                self.dedup.release(&event.source, &event.id);
                Err(status)
            }
        }
    }

    /// The agreements under which `caller` may publish `event`, or why not. The source
    /// must be the caller's own, so no publisher can speak for another.
    fn authorise(&self, caller: &Identity, event: &Event) -> Result<Vec<String>, String> {
        let own = caller.source();
        if event.source != own {
            return Err(format!(
                "event.source: '{}' is not yours; you are authenticated as {caller}, so the source must be '{own}'",
                event.source
            ));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.policy
            .get()
            .may_publish(caller.as_str(), &event.r#type, now)
            .map_err(|d| d.0)
    }

    async fn write(&self, event: &Event) -> Result<Position, Status> {
        let record = cloudevents::encode(event);
        let future_record = FutureRecord::to(&self.topic)
            .key(&record.key)
            .payload(&record.value)
            .headers(record.headers);
        match self
            .producer
            .send(future_record, Timeout::After(self.delivery_timeout))
            .await
        {
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

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let caller = crier_identity::caller(&request)?;
        self.inner.quotas.take(caller.as_str(), 1)?;
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
        // All writes are in flight together; results come back in request order.
        self.inner.quotas.take(
            caller.as_str(),
            u32::try_from(events.len()).unwrap_or(u32::MAX),
        )?;
        let results = futures::future::join_all(events.into_iter().enumerate().map(|(i, e)| {
            let (inner, caller) = (&self.inner, &caller);
            async move {
                let id = e.id.clone();
                let outcome = match inner.publish(caller, Some(e)).await {
                    Ok(accepted) => Outcome::Accepted(accepted),
                    Err(status) => Outcome::Error(batch_error(i, &status)),
                };
                PublishResult {
                    id,
                    outcome: Some(outcome),
                }
            }
        }))
        .await;
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
