//! Shared test harness: both services started in-process on port 0 against the real Kafka
//! broker that `deploy/test.sh` starts, each test on its own topics so tests run in parallel
//! without seeing each other's events. Every call is authenticated as a real client would:
//! mutual TLS with certificates from a development CA made once per test process, under
//! agreements written per test (or the permissive [`OPEN_AGREEMENTS`]).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

pub mod load;
pub mod process;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::LazyLock,
    time::Duration,
};

use crier_proto::{
    events::v1 as ev,
    v1::{
        Ack, Classification, Delivery, Event, Filter, Open, StartFrom, SubscribeRequest,
        SubscribeResponse, classification::Level, publisher_client::PublisherClient, start_from,
        subscribe_request::Request as ClientMsg, subscribe_response::Response as ServerMsg,
        subscriber_client::SubscriberClient,
    },
};
use prost::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming, transport::Channel};

pub const DEATH: &str = "crier.events.v1.DeathRegistered";
pub const MOVED: &str = "crier.events.v1.AddressChanged";

/// The identity tests publish as.
pub const PUBLISHER: &str = "uk.gov.test/publisher";
/// The identity tests subscribe as.
pub const SUBSCRIBER: &str = "uk.gov.local.test/subscriber";
/// Further identities with certificates, for trust tests.
pub const OTHERS: &[&str] = &[
    "uk.gov.gro/death-registration",
    "uk.gov.local.E06000002/revenues",
    "uk.gov.local.E06000003/revenues",
    "uk.gov.nobody/unknown",
];
pub const TRUST_DOMAIN: &str = "crier.test";
pub const TOKEN_ISSUER: &str = "https://sts.crier.test";
pub const TOKEN_AUDIENCE: &str = "crier";

/// Agreements under which PUBLISHER may publish, and SUBSCRIBER receive, everything.
pub const OPEN_AGREEMENTS: &str = r#"
[[agreement]]
id = "TEST-OPEN"
legal_basis = "test"
purpose = "end-to-end tests"
valid_from = "2020-01-01T00:00:00Z"
valid_until = "2100-01-01T00:00:00Z"
[[agreement.publisher]]
identity = "uk.gov.test/publisher"
event_types = ["crier.events.v1.DeathRegistered", "crier.events.v1.AddressChanged", "crier.events.v1.BirthRegistered", "crier.events.v1.BenefitAwardChanged", "crier.events.v1.SchoolEnrolment", "crier.events.v1.SafeguardingReferral"]
[[agreement.subscriber]]
identity = "uk.gov.local.test/subscriber"
areas = ["*"]
[agreement.subscriber.fields]
"crier.events.v1.DeathRegistered" = ["*"]
"crier.events.v1.AddressChanged" = ["*"]
"#;

/// The development PKI of this test process.
pub static PKI: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("crier-tests-{}", std::process::id()));
    let mut ids: Vec<String> = vec![PUBLISHER.into(), SUBSCRIBER.into()];
    ids.extend(OTHERS.iter().map(|s| s.to_string()));
    crier_identity::dev::write_pki(&dir, TRUST_DOMAIN, &ids).expect("dev PKI");
    dir
});

/// Writes `text` as an agreements file for one test and returns its path.
pub fn agreements_file(test: &str, text: &str) -> PathBuf {
    let path = PKI.join(format!(
        "agreements-{test}-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn auth_config() -> crier_identity::AuthConfig {
    crier_identity::AuthConfig {
        trust_domain: TRUST_DOMAIN.into(),
        tls: Some(crier_identity::config::TlsConfig {
            cert: PKI.join("server.pem"),
            key: PKI.join("server.key"),
            client_ca: Some(PKI.join("ca.pem")),
        }),
        jwt: Some(crier_identity::config::JwtConfig {
            issuer: TOKEN_ISSUER.into(),
            audience: TOKEN_AUDIENCE.into(),
            public_key: PKI.join("token-signing.pub.pem"),
            algorithm: "ES256".into(),
        }),
    }
}

/// A token for `sub` signed by the test issuer.
pub fn token_for(sub: &str, audience: &str) -> String {
    let key = std::fs::read_to_string(PKI.join("token-signing.key")).unwrap();
    crier_identity::dev::token(&key, TOKEN_ISSUER, audience, sub, Duration::from_secs(600)).unwrap()
}

/// A TLS channel to `running`, presenting `identity`'s certificate (or none).
pub async fn channel_as(running: &Running, identity: Option<&str>) -> Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(PKI.join("ca.pem")).unwrap(),
        ))
        .domain_name("localhost");
    if let Some(id) = identity {
        let stem = crier_identity::dev::file_stem(id);
        tls = tls.identity(Identity::from_pem(
            std::fs::read(PKI.join(format!("{stem}.pem"))).unwrap(),
            std::fs::read(PKI.join(format!("{stem}.key"))).unwrap(),
        ));
    }
    Channel::from_shared(running.url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The broker the tests use: `CRIER_TEST_KAFKA`, or the deploy script's default.
pub fn bootstrap() -> String {
    std::env::var("CRIER_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Kafka settings for one test: its own topics on the shared broker.
pub fn kafka_config(test: &str) -> crier_kafka::KafkaConfig {
    let unique = format!("{test}.{}", uuid::Uuid::new_v4().simple());
    crier_kafka::KafkaConfig {
        bootstrap_servers: bootstrap(),
        events_topic: format!("test.{unique}.events"),
        subscriptions_topic: format!("test.{unique}.subscriptions"),
        audit_topic: format!("test.{unique}.audit"),
        partitions: 4,
        delivery_timeout_ms: 10_000,
        ..Default::default()
    }
}

/// A running service: its address, and how to stop it.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops the service as SIGTERM would, and waits for it to finish.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("service stops within 30 s")
            .expect("service task did not panic");
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

pub async fn start_producer(kafka: &crier_kafka::KafkaConfig) -> Running {
    start_producer_with(kafka, &agreements_file("open", OPEN_AGREEMENTS)).await
}

pub async fn start_producer_with(kafka: &crier_kafka::KafkaConfig, agreements: &Path) -> Running {
    start_producer_tuned(kafka, agreements, |_| {}).await
}

/// A producer whose test configuration `tune` may change before it starts.
pub async fn start_producer_tuned(
    kafka: &crier_kafka::KafkaConfig,
    agreements: &Path,
    tune: impl FnOnce(&mut crier_producer::Config),
) -> Running {
    let mut config = crier_producer::Config {
        kafka: kafka.clone(),
        auth: auth_config(),
        ..Default::default()
    };
    config.agreements.path = Some(agreements.to_owned());
    config.agreements.reload_secs = 1;
    config.metrics.listen = None;
    tune(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        crier_producer::serve(config, listener, token)
            .await
            .expect("producer serve");
    });
    let running = Running { addr, stop, task };
    wait_until_listening(&running).await;
    running
}

pub async fn start_consumer(kafka: &crier_kafka::KafkaConfig) -> Running {
    start_consumer_with(kafka, &agreements_file("open", OPEN_AGREEMENTS)).await
}

pub async fn start_consumer_with(kafka: &crier_kafka::KafkaConfig, agreements: &Path) -> Running {
    start_consumer_tuned(kafka, agreements, |_| {}).await
}

/// A consumer whose test configuration `tune` may change before it starts.
pub async fn start_consumer_tuned(
    kafka: &crier_kafka::KafkaConfig,
    agreements: &Path,
    tune: impl FnOnce(&mut crier_consumer::Config),
) -> Running {
    let mut config = crier_consumer::Config {
        kafka: kafka.clone(),
        auth: auth_config(),
        ..Default::default()
    };
    config.agreements.path = Some(agreements.to_owned());
    config.agreements.reload_secs = 1;
    config.metrics.listen = None;
    config.subscriptions.cursor_flush_ms = 100;
    tune(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        crier_consumer::serve(config, listener, token)
            .await
            .expect("consumer serve");
    });
    let running = Running { addr, stop, task };
    wait_until_listening(&running).await;
    running
}

/// Waits until the gRPC health service answers SERVING, as an orchestrator would.
async fn wait_until_listening(running: &Running) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let addr = running.addr;
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(PKI.join("ca.pem")).unwrap());
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("localhost");
    for _ in 0..300 {
        let endpoint = Channel::from_shared(running.url())
            .unwrap()
            .tls_config(tls.clone())
            .unwrap();
        if let Ok(channel) = endpoint.connect().await {
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if status.is_ok_and(|s| s.get_ref().status == ServingStatus::Serving as i32) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("service at {addr} did not become healthy");
}

/// A Publisher client authenticated as [`PUBLISHER`].
pub async fn publisher(running: &Running) -> PublisherClient<Channel> {
    publisher_as(running, PUBLISHER).await
}

/// A Publisher client authenticated as `identity`.
pub async fn publisher_as(running: &Running, identity: &str) -> PublisherClient<Channel> {
    PublisherClient::new(channel_as(running, Some(identity)).await)
}

/// A valid event of `type_name` about `subject` in `areas`, with a fresh id.
pub fn event(type_name: &str, subject: &str, areas: &[&str]) -> Event {
    let data = match type_name {
        DEATH => ev::DeathRegistered {
            registration_id: format!("DE-{}", uuid::Uuid::new_v4().simple()),
            registration_district: "Middlesbrough".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        MOVED => ev::AddressChanged {
            new_address: Some(ev::Address {
                uprn: 100110067342,
                postcode: "TS1 1RE".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec(),
        other => panic!("no sample for {other}"),
    };
    Event {
        id: uuid::Uuid::new_v4().to_string(),
        source: format!("urn:crier:{PUBLISHER}"),
        r#type: type_name.into(),
        subject: subject.into(),
        areas: areas.iter().map(|a| a.to_string()).collect(),
        classification: Some(Classification {
            level: Level::Official as i32,
        }),
        data,
        ..Default::default()
    }
}

/// One client-side subscription stream.
#[derive(Debug)]
pub struct Subscription {
    tx: mpsc::Sender<SubscribeRequest>,
    stream: Streaming<SubscribeResponse>,
    pub created: bool,
    /// Deliveries received and not yet taken by `next`.
    received: std::collections::VecDeque<Delivery>,
    /// The size of each delivery message received: 0 for a single `delivery`, else how
    /// many a `deliveries` message held.
    pub messages: Vec<usize>,
}

pub fn filter(types: &[&str], areas: &[&str]) -> Filter {
    Filter {
        event_types: types.iter().map(|s| s.to_string()).collect(),
        areas: areas.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn resume() -> Option<StartFrom> {
    Some(StartFrom {
        from: Some(start_from::From::Resume(start_from::Resume {})),
    })
}

pub fn beginning() -> Option<StartFrom> {
    Some(StartFrom {
        from: Some(start_from::From::Beginning(start_from::Beginning {})),
    })
}

pub fn since(time: prost_types::Timestamp) -> Option<StartFrom> {
    Some(StartFrom {
        from: Some(start_from::From::Time(time)),
    })
}

impl Subscription {
    /// Opens `name` as [`SUBSCRIBER`]; errors are the server's status.
    pub async fn open(
        consumer: &Running,
        name: &str,
        filter: Filter,
        start: Option<StartFrom>,
    ) -> Result<Self, Status> {
        Self::open_as(consumer, SUBSCRIBER, name, filter, start).await
    }

    /// Opens `name` as `identity`.
    pub async fn open_as(
        consumer: &Running,
        identity: &str,
        name: &str,
        filter: Filter,
        start: Option<StartFrom>,
    ) -> Result<Self, Status> {
        Self::open_batched(consumer, identity, name, filter, start, 0).await
    }

    /// Opens `name` as `identity`, asking for up to `max_batch` deliveries a message.
    pub async fn open_batched(
        consumer: &Running,
        identity: &str,
        name: &str,
        filter: Filter,
        start: Option<StartFrom>,
        max_batch: u32,
    ) -> Result<Self, Status> {
        let mut client = SubscriberClient::new(channel_as(consumer, Some(identity)).await);
        let (tx, rx) = mpsc::channel(1024);
        tx.send(SubscribeRequest {
            request: Some(ClientMsg::Open(Open {
                subscription: name.into(),
                filter: Some(filter),
                start,
                max_in_flight: 0,
                max_batch,
            })),
        })
        .await
        .unwrap();
        let mut stream = client
            .subscribe(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = stream.next().await.expect("a first response")?;
        let Some(ServerMsg::Opened(opened)) = first.response else {
            panic!("expected Opened, got {first:?}");
        };
        Ok(Self {
            tx,
            stream,
            created: opened.created,
            received: Default::default(),
            messages: Vec::new(),
        })
    }

    /// The next delivery, or `None` if none arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Delivery> {
        if let Some(d) = self.received.pop_front() {
            return Some(d);
        }
        match tokio::time::timeout(wait, self.stream.next()).await {
            Ok(Some(Ok(SubscribeResponse {
                response: Some(ServerMsg::Delivery(d)),
            }))) => {
                self.messages.push(0);
                Some(d)
            }
            Ok(Some(Ok(SubscribeResponse {
                response: Some(ServerMsg::Deliveries(batch)),
            }))) => {
                self.messages.push(batch.deliveries.len());
                self.received.extend(batch.deliveries);
                self.received.pop_front()
            }
            Ok(Some(Err(status))) => panic!("stream failed: {status}"),
            Ok(other) => panic!("unexpected stream item: {other:?}"),
            Err(_) => None,
        }
    }

    /// Exactly `n` deliveries, failing the test if they do not arrive within 20 s each.
    pub async fn take(&mut self, n: usize) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let d = self
                .next(Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("only {} of {n} deliveries arrived", out.len()));
            out.push(d);
        }
        out
    }

    pub async fn ack(&self, deliveries: &[Delivery]) {
        self.tx
            .send(SubscribeRequest {
                request: Some(ClientMsg::Ack(Ack {
                    ack_ids: deliveries.iter().map(|d| d.ack_id.clone()).collect(),
                })),
            })
            .await
            .unwrap();
    }

    /// Closes the stream from the client side.
    pub async fn close(self) {
        drop(self.tx);
        let mut stream = self.stream;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while stream.next().await.is_some() {}
        })
        .await;
    }
}

/// The ids of `deliveries`, in order.
pub fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| d.event.as_ref().unwrap().id.clone())
        .collect()
}

/// Total records ever written to `topic` (sum of high watermarks).
pub fn records_in(kafka: &crier_kafka::KafkaConfig, topic: &str) -> i64 {
    let consumer: BaseConsumer = kafka.reader().create().unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
}
