//! Crier's consumer service: local authorities and other bodies hold durable gRPC
//! subscriptions, and this service delivers them the events they are entitled to, at least
//! once and in per-citizen order.
//!
//! - [`live`]: one shared reader per instance feeds every up-to-date stream;
//! - [`route`]: hands each batch of the live reader only to the streams it concerns;
//! - [`store`]: subscription filters and cursors, in a compacted Kafka topic;
//! - [`session`]: one open stream's delivery, acknowledgement and catch-up logic;
//! - `read_errors`: what the Kafka readers do with the errors librdkafka retries itself;
//! - [`subscriber`]: the gRPC front: checks an Open and starts a session.
//!
//! [`serve`] is the whole service as a library function, so tests run it in-process.

pub mod batch;
pub mod config;
pub mod live;
pub mod outgoing;
mod read_errors;
pub mod record;
pub mod route;
pub mod session;
mod stall;
pub mod store;
pub mod subscriber;

use std::{sync::Arc, time::Duration};

use crier_proto::wire::subscriber_server::SubscriberServer;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

pub use config::Config;
use session::Shared;
use subscriber::SubscriberService;

/// Why the consumer service stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kafka could not be set up.
    #[error(transparent)]
    Kafka(#[from] crier_kafka::Error),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The configuration cannot work (authentication, agreements).
    #[error("{0}")]
    Config(String),
}

impl From<rdkafka::error::KafkaError> for Error {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(e.into())
    }
}

/// The longest each of shutdown's three waits may take: for connections to close, for
/// the streams to save their cursors, and for the audit writer to drain. Together they
/// stay inside Kubernetes' 30 s grace period.
const DRAIN: Duration = Duration::from_secs(8);

/// Runs the consumer service on `listener` until `shutdown` is cancelled. Open streams are
/// then ended with UNAVAILABLE (so clients reconnect), after saving their cursors.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    if config.kafka.create_topics {
        crier_kafka::topics::ensure_topics_within(&config.kafka, Duration::from_secs(60)).await?;
    }
    let authenticator = crier_identity::Authenticator::new(&config.auth).map_err(Error::Config)?;
    let tls = crier_identity::tls::server_from(&config.auth).map_err(Error::Config)?;
    // The readers stop after the server, so that closing streams can still save cursors.
    let readers = CancellationToken::new();
    let sessions = tokio_util::task::TaskTracker::new();
    let _stop_readers = readers.clone().drop_guard();
    let policy = crier_agreements::reload::load_and_watch(&config.agreements, readers.clone())
        .map_err(Error::Config)?;
    // One Kafka producer for the instance's writes: cursors and audit records.
    let producer = crier_kafka::Writer::start(config.kafka.background_producer())?;
    let (auditor, audit_task) =
        crier_audit::Auditor::start(producer.clone(), config.kafka.audit_topic.clone());
    // Partition leaders may still be being elected just after the topics were created.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let live = loop {
        let started = live::Live::start(
            &config.kafka,
            config.subscriptions.live_buffer,
            Duration::from_millis(config.subscriptions.live_batch_ms),
            auditor.clone(),
            readers.clone(),
        );
        match started.await {
            Ok(live) => break live,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "events topic not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let store = Arc::new(store::SubscriptionStore::start(
        &config.kafka,
        producer,
        readers.clone(),
    )?);
    let shared = Shared {
        live,
        store,
        policy,
        auditor,
        registry: crier_schema::Registry::new(),
        kafka: config.kafka.clone(),
        catch_up_slots: Arc::new(Semaphore::new(
            config.subscriptions.max_catch_up_readers.max(1),
        )),
        cursor_flush: Duration::from_millis(config.subscriptions.cursor_flush_ms.max(10)),
        shutdown: shutdown.clone(),
        sessions: sessions.clone(),
    };
    let service = SubscriberService::new(shared, config.subscriptions.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SubscriberServer<SubscriberService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crier_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .inspect_err(|e| tracing::warn!(error = %e, "reflection disabled"))
        .ok();
    tracing::info!(listen = ?listener.local_addr().ok(), topic = %config.kafka.events_topic, "consumer serving");

    let draining = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            health
                .set_not_serving::<SubscriberServer<SubscriberService>>()
                .await;
        }
    };
    let subscriber = tonic::service::interceptor::InterceptedService::new(
        SubscriberServer::new(service),
        authenticator,
    );
    let serving = crier_runtime::grpc::server(tls)?
        .layer(crier_runtime::grpc::metadata_limit())
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_service(subscriber)
        .serve_with_incoming_shutdown(crier_runtime::grpc::incoming(listener), draining);
    // Graceful shutdown waits for every connection to close, and one whose client has
    // stopped reading its socket may never close: stop waiting after DRAIN.
    let overdue = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN).await;
    };
    tokio::select! {
        served = serving => served?,
        () = overdue => tracing::warn!("connections still open {DRAIN:?} after shutdown began; closing them"),
    }
    // Sessions are spawned tasks: wait (bounded) for them to save their cursors. Then
    // stop the readers, whose live reader holds an Auditor clone; the audit writer
    // drains once the last clone is dropped.
    sessions.close();
    if tokio::time::timeout(DRAIN, sessions.wait()).await.is_err() {
        tracing::error!(
            streams = sessions.len(),
            "streams did not close within {DRAIN:?}"
        );
    }
    readers.cancel();
    if tokio::time::timeout(DRAIN, audit_task).await.is_err() {
        tracing::error!("audit writer did not drain within {DRAIN:?}");
    }
    tracing::info!("consumer stopped");
    Ok(())
}
