//! The Subscriber gRPC service: checks an Open, settles where the subscription starts, and
//! hands the stream to a [`Session`].

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use crier_audit::{Action, Entry};
use crier_proto::{
    v1::{
        Filter, Open, Opened, SubscribeRequest, SubscribeResponse, start_from::From as StartAt,
        subscribe_request::Request as ClientMsg, subscribe_response::Response as ServerMsg,
    },
    wire::{EncodedResponse, subscriber_server::Subscriber},
};
use crier_schema::{Invalid, Registry, filter};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    config::SubscriptionsConfig,
    outgoing::{Outgoing, Responses},
    session::{Session, Shared, Window},
    store::StoredSubscription,
};

/// How long a client has to send its Open message.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Most deliveries a client may ask for in one message (`Open.max_batch`).
const MAX_BATCH_LIMIT: u32 = 500;

/// Implements `crier.v1.Subscriber`.
#[derive(Debug, Clone)]
pub struct SubscriberService {
    shared: Shared,
    limits: SubscriptionsConfig,
    registry: Registry,
    active: Arc<Mutex<HashSet<String>>>,
    streams: Arc<Semaphore>,
}

impl SubscriberService {
    /// A service delivering through `shared`.
    pub fn new(shared: Shared, limits: SubscriptionsConfig) -> Self {
        let streams = Arc::new(Semaphore::new(limits.max_streams));
        Self {
            shared,
            limits,
            registry: Registry::new(),
            active: Arc::default(),
            streams,
        }
    }

    fn check_open(&self, open: &Open) -> Result<(Filter, Window), Invalid> {
        filter::check_name(&open.subscription)?;
        let wanted = open.filter.clone().unwrap_or_default();
        filter::check_filter(&self.registry, &wanted)?;
        let max_in_flight = match open.max_in_flight {
            0 => self.limits.default_max_in_flight,
            n if n > self.limits.max_in_flight_limit => {
                return Err(Invalid::new(
                    "open.max_in_flight",
                    format!(
                        "{n} is over the limit of {}",
                        self.limits.max_in_flight_limit
                    ),
                ));
            }
            n => n,
        };
        if open.max_batch > MAX_BATCH_LIMIT {
            return Err(Invalid::new(
                "open.max_batch",
                format!("{} is over the limit of {MAX_BATCH_LIMIT}", open.max_batch),
            ));
        }
        let window = Window {
            max_in_flight: max_in_flight as usize,
            // A batch can hold no more than the window lets out at once.
            max_batch: open.max_batch.clamp(1, max_in_flight) as usize,
        };
        Ok((filter::canonical(&wanted), window))
    }

    /// Where the stream starts, per partition.
    async fn start_offsets(
        &self,
        open: &Open,
        stored: Option<&StoredSubscription>,
        marks: &BTreeMap<i32, (i64, i64)>,
    ) -> Result<BTreeMap<i32, i64>, Status> {
        let low = |p: &i32| marks.get(p).map_or(0, |m| m.0);
        let high = |p: &i32| marks.get(p).map_or(0, |m| m.1);
        let clamp = |p: &i32, o: i64| o.clamp(low(p), high(p));
        let from = open.start.as_ref().and_then(|s| s.from);
        Ok(match from {
            Some(StartAt::Beginning(_)) => marks.keys().map(|p| (*p, low(p))).collect(),
            Some(StartAt::Time(ts)) => {
                let millis = ts.seconds.saturating_mul(1000) + i64::from(ts.nanos / 1_000_000);
                let found = self
                    .shared
                    .live
                    .offsets_for_time(millis)
                    .await
                    .map_err(unavailable)?;
                marks
                    .keys()
                    .map(|p| {
                        (
                            *p,
                            clamp(p, found.get(p).copied().unwrap_or_else(|| high(p))),
                        )
                    })
                    .collect()
            }
            Some(StartAt::Resume(_)) | None => match stored {
                // A partition unknown to the cursor was added later: it starts at its beginning.
                Some(sub) => marks
                    .keys()
                    .map(|p| {
                        (
                            *p,
                            clamp(p, sub.cursor.get(p).copied().unwrap_or_else(|| low(p))),
                        )
                    })
                    .collect(),
                None => marks.keys().map(|p| (*p, high(p))).collect(),
            },
        })
    }
}

/// Frees a subscription name when its stream ends.
struct ActiveGuard {
    name: String,
    active: Arc<Mutex<HashSet<String>>>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

/// Seconds since the Unix epoch, the clock agreements are judged by.
pub(crate) fn unix_now() -> i64 {
    crate::record::now_ms() / 1000
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("Kafka is unavailable ({e}); reconnect to retry"))
}

#[tonic::async_trait]
impl Subscriber for SubscriberService {
    type SubscribeStream = Responses;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = crier_identity::caller(&request)?;
        if self.shared.shutdown.is_cancelled() {
            return Err(Status::unavailable("the consumer service is shutting down"));
        }
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this instance already serves {} streams; try another or later",
                self.limits.max_streams
            ))
        })?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(OPEN_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::invalid_argument("open: no Open message within 30 s"))??;
        let Some(SubscribeRequest {
            request: Some(ClientMsg::Open(open)),
        }) = first
        else {
            return Err(
                Invalid::new("open", "the first message on the stream must be open").into(),
            );
        };
        let (wanted, window) = self.check_open(&open)?;
        let name = open.subscription.clone();
        let now = unix_now();
        if let Err(denied) = self.shared.policy.get().may_subscribe(
            caller.as_str(),
            &wanted.event_types,
            &wanted.areas,
            now,
        ) {
            self.shared
                .auditor
                .record(Entry {
                    action: Some(Action::Deny),
                    actor: caller.to_string(),
                    subscription: name.clone(),
                    detail: denied.0.clone(),
                    ..Default::default()
                })
                .await;
            return Err(Status::permission_denied(denied.0));
        }

        if !self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone())
        {
            return Err(Status::failed_precondition(format!(
                "subscription '{name}' already has an open stream on this instance; close it first"
            )));
        }
        let guard = ActiveGuard {
            name: name.clone(),
            active: self.active.clone(),
        };

        // Order matters: take the live receiver before reading the watermarks, so every
        // record at or beyond them reaches this stream through one source or the other.
        let live = self.shared.live.subscribe(&wanted.areas);
        let marks = self.shared.live.watermarks().await.map_err(unavailable)?;
        let stored = self.shared.store.get(&name).await.map_err(unavailable)?;
        if let Some(existing) = stored
            .as_ref()
            .filter(|s| !s.owner.is_empty() && s.owner != caller.as_str())
        {
            return Err(Status::permission_denied(format!(
                "subscription '{name}' belongs to {}; choose another name",
                existing.owner
            )));
        }
        if let Some(existing) = &stored
            && (existing.event_types != wanted.event_types || existing.areas != wanted.areas)
        {
            return Err(Status::already_exists(format!(
                "subscription '{name}' already exists with event_types [{}] and areas [{}]; \
                     open it with the same filter or choose another name",
                existing.event_types.join(", "),
                existing.areas.join(", ")
            )));
        }
        let start = self.start_offsets(&open, stored.as_ref(), &marks).await?;
        let created = stored.is_none();
        let sub = StoredSubscription {
            name: name.clone(),
            owner: caller.to_string(),
            event_types: wanted.event_types.clone(),
            areas: wanted.areas.clone(),
            cursor: start.clone(),
            updated_at: String::new(),
        };
        self.shared
            .store
            .put(sub.clone())
            .await
            .map_err(unavailable)?;
        tracing::info!(subscription = %name, created, ?start, "stream opened");

        let (tx, rx) = Responses::channel(window.max_in_flight + 8);
        let opened = SubscribeResponse {
            response: Some(ServerMsg::Opened(Opened {
                subscription: name,
                filter: Some(wanted),
                created,
            })),
        };
        tx.send(Ok(Outgoing::from(EncodedResponse::from(&opened))))
            .await
            .map_err(|_| Status::cancelled("client left"))?;
        let high = marks.iter().map(|(p, m)| (*p, m.1)).collect();
        let session = Session::new(
            self.shared.clone(),
            caller,
            sub,
            live,
            start,
            &high,
            window,
            tx,
        );
        metrics::gauge!("crier_open_streams").increment(1.0);
        self.shared.sessions.spawn(async move {
            session.run(inbound).await;
            metrics::gauge!("crier_open_streams").decrement(1.0);
            drop((guard, permit));
        });
        Ok(Response::new(rx))
    }
}
