//! Load and observation for the fault suite: publishers that retry like a careful client,
//! subscribers that reconnect like one, and the checker that compares what Publish
//! acknowledged with what every subscription received.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crier_proto::v1::{
    Ack, Filter, Open, PublishRequest, SubscribeRequest, publisher_client::PublisherClient,
    subscribe_request::Request as ClientMsg, subscribe_response::Response as ServerMsg,
    subscriber_client::SubscriberClient,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

use crate::{DEATH, PKI, PUBLISHER, SUBSCRIBER, event};

/// One event that Publish acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    pub id: String,
    pub citizen: usize,
    pub seq: usize,
}

/// Counts from a publishing run.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    pub acked: Vec<Acked>,
    /// Distinct events attempted.
    pub published: usize,
    /// Attempts that failed, by gRPC code (every one was retried with the same id).
    pub failures: BTreeMap<String, usize>,
}

async fn tls_channel(url: &str, identity: &str) -> Result<Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let stem = crier_identity::dev::file_stem(identity);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(PKI.join("ca.pem")).unwrap(),
        ))
        .identity(Identity::from_pem(
            std::fs::read(PKI.join(format!("{stem}.pem"))).unwrap(),
            std::fs::read(PKI.join(format!("{stem}.key"))).unwrap(),
        ))
        .domain_name("localhost");
    Channel::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
}

/// A TLS channel to a consumer, authenticated as the test subscriber.
pub async fn subscriber_channel(url: &str) -> Channel {
    tls_channel(url, SUBSCRIBER).await.unwrap()
}

/// `citizens` concurrent publishers, each sending `per_citizen` events about its own citizen
/// one after another; a failed publish is retried with the same id until `give_up`.
pub async fn publish_load(
    urls: Vec<String>,
    citizens: usize,
    per_citizen: usize,
    give_up: Duration,
) -> PublishOutcome {
    let outcome = Arc::new(Mutex::new(PublishOutcome::default()));
    let mut tasks = Vec::new();
    for c in 0..citizens {
        let (urls, outcome) = (urls.clone(), outcome.clone());
        tasks.push(tokio::spawn(async move {
            let mut client: Option<PublisherClient<Channel>> = None;
            for seq in 0..per_citizen {
                let mut e = event(DEATH, &format!("psn:citizen-{c}"), &["E06000002"]);
                e.correlation_id = format!("{c}:{seq}");
                outcome.lock().unwrap().published += 1;
                let deadline = Instant::now() + give_up;
                let mut attempt = 0usize;
                loop {
                    if client.is_none() {
                        client = tls_channel(&urls[attempt % urls.len()], PUBLISHER)
                            .await
                            .ok()
                            .map(PublisherClient::new);
                    }
                    let result = match client.as_mut() {
                        Some(cl) => cl
                            .publish(PublishRequest {
                                event: Some(e.clone()),
                            })
                            .await
                            .map(|_| ()),
                        None => Err(tonic::Status::unavailable("connect failed")),
                    };
                    match result {
                        Ok(()) => {
                            outcome.lock().unwrap().acked.push(Acked {
                                id: e.id.clone(),
                                citizen: c,
                                seq,
                            });
                            break;
                        }
                        Err(status) => {
                            *outcome
                                .lock()
                                .unwrap()
                                .failures
                                .entry(format!("{:?}", status.code()))
                                .or_default() += 1;
                            assert!(
                                retryable(&status),
                                "a fault must fail cleanly, not with {status:?}"
                            );
                            client = None;
                            attempt += 1;
                            if Instant::now() > deadline {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(outcome).unwrap().into_inner().unwrap()
}

/// A failure a client should retry with the same id. Besides the statuses Crier sends,
/// this includes the transport failing under the client: tonic reports a connection that
/// went away (a restart's GOAWAY, a reset) as UNKNOWN, CANCELLED or INTERNAL "h2 protocol
/// error", and the request was not answered.
fn retryable(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => true,
        Code::Internal => status.message().starts_with("h2 protocol error"),
        _ => false,
    }
}

/// One delivery as a subscriber saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub citizen: usize,
    pub seq: usize,
    /// Which connection (stream) brought it: counts up on every reconnect.
    pub connection: usize,
    /// When the subscriber received it.
    pub at: std::time::Instant,
}

/// A subscriber that keeps a named subscription open, reconnecting (round-robin over
/// `urls`) whenever the stream breaks, and acks what it receives unless told not to.
#[derive(Debug)]
pub struct Collector {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Streams the service has accepted (Open answered), over all connections.
    opened: Arc<std::sync::atomic::AtomicUsize>,
    /// How each stream ended: the gRPC code, or "Ok" for a clean end.
    pub ends: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub fn start(
        urls: Vec<String>,
        name: &str,
        max_in_flight: u32,
        ack: bool,
        pause_per_event: Duration,
    ) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ends = Arc::new(Mutex::new(Vec::new()));
        let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (seen2, ends2, stop2, name, opened2) = (
            seen.clone(),
            ends.clone(),
            stop.clone(),
            name.to_owned(),
            opened.clone(),
        );
        let task = tokio::spawn(async move {
            let mut connection = 0usize;
            while !stop2.is_cancelled() {
                connection += 1;
                let url = &urls[connection % urls.len()];
                let end = run_stream(
                    url,
                    &name,
                    max_in_flight,
                    ack,
                    pause_per_event,
                    connection,
                    &seen2,
                    &opened2,
                    &stop2,
                )
                .await;
                ends2.lock().unwrap().push(match end {
                    Ok(()) => "Ok".to_string(),
                    Err(status) => format!("{:?}", status.code()),
                });
                tokio::select! {
                    _ = stop2.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
        Self {
            seen,
            opened,
            ends,
            stop,
            task,
        }
    }

    /// Waits until the service has accepted a stream, so the subscription exists and will
    /// get every event published from now on; false after `timeout`.
    pub async fn wait_open(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.opened.load(std::sync::atomic::Ordering::Acquire) > 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Waits until `n` distinct ids have been seen, or `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let distinct: std::collections::HashSet<String> = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .map(|s| s.id.clone())
                .collect();
            if distinct.len() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub async fn stop(self) -> Vec<Seen> {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.seen.lock().unwrap().clone()
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_stream(
    url: &str,
    name: &str,
    max_in_flight: u32,
    ack: bool,
    pause: Duration,
    connection: usize,
    seen: &Mutex<Vec<Seen>>,
    opened: &std::sync::atomic::AtomicUsize,
    stop: &CancellationToken,
) -> Result<(), tonic::Status> {
    let channel = tls_channel(url, SUBSCRIBER)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (tx, rx) = mpsc::channel(1024);
    tx.send(SubscribeRequest {
        request: Some(ClientMsg::Open(Open {
            subscription: name.into(),
            filter: Some(Filter {
                event_types: vec![DEATH.into()],
                areas: vec![],
            }),
            start: None,
            max_in_flight,
            max_batch: 0,
        })),
    })
    .await
    .unwrap();
    let mut stream = SubscriberClient::new(channel)
        .subscribe(ReceiverStream::new(rx))
        .await?
        .into_inner();
    opened.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            msg = stream.next() => msg,
        };
        let Some(msg) = msg else { return Ok(()) };
        if let Some(ServerMsg::Delivery(d)) = msg?.response {
            let e = d.event.unwrap_or_default();
            let (c, s) = e.correlation_id.split_once(':').unwrap_or(("0", "0"));
            seen.lock().unwrap().push(Seen {
                id: e.id,
                citizen: c.parse().unwrap_or(0),
                seq: s.parse().unwrap_or(0),
                connection,
                at: std::time::Instant::now(),
            });
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if ack {
                let _ = tx
                    .send(SubscribeRequest {
                        request: Some(ClientMsg::Ack(Ack {
                            ack_ids: vec![d.ack_id],
                        })),
                    })
                    .await;
            }
        }
    }
}

/// What the checker found.
#[derive(Debug)]
pub struct Report {
    pub published: usize,
    pub acknowledged: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub order_violations: usize,
}

/// Compares what Publish acknowledged with what a subscription received, prints the counts,
/// and returns them.
pub fn check(scenario: &str, outcome: &PublishOutcome, seen: &[Seen]) -> Report {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in seen {
        *counts.entry(&s.id).or_default() += 1;
    }
    let lost = outcome
        .acked
        .iter()
        .filter(|a| !counts.contains_key(a.id.as_str()))
        .count();
    let duplicated = counts.values().map(|n| n - 1).sum();
    // Per citizen: within one connection, sequence numbers only go up; and the first time
    // each event is seen, it is in publish order.
    let mut order_violations = 0;
    let mut last: HashMap<(usize, usize), usize> = HashMap::new();
    let mut first_seen: HashMap<usize, usize> = HashMap::new();
    let mut firsts = std::collections::HashSet::new();
    for s in seen {
        // An equal seq is the same event again (a duplicate), not a reordering.
        if last
            .insert((s.connection, s.citizen), s.seq)
            .is_some_and(|prev| s.seq < prev)
        {
            order_violations += 1;
        }
        if firsts.insert(s.id.clone())
            && first_seen
                .insert(s.citizen, s.seq)
                .is_some_and(|prev| s.seq <= prev)
        {
            order_violations += 1;
        }
    }
    let report = Report {
        published: outcome.published,
        acknowledged: outcome.acked.len(),
        delivered: counts.len(),
        lost,
        duplicated,
        order_violations,
    };
    println!(
        "checker: {scenario}: published={} acknowledged={} delivered={} lost={} duplicated={} order_violations={} publish_failures={:?}",
        report.published,
        report.acknowledged,
        report.delivered,
        report.lost,
        report.duplicated,
        report.order_violations,
        outcome.failures
    );
    report
}

/// The run size: `CRIER_FAULTS_CITIZENS` × `CRIER_FAULTS_PER_CITIZEN` (defaults for CI).
pub fn size() -> (usize, usize) {
    let get = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    (
        get("CRIER_FAULTS_CITIZENS", 8),
        get("CRIER_FAULTS_PER_CITIZEN", 40),
    )
}
