//! Crier's producer service: department systems publish citizen events over gRPC, and this
//! service validates them and writes them durably to Kafka.
//!
//! [`serve`] is the whole service as a library function, so tests start it in-process on a
//! port-0 listener and the binary in `main.rs` only parses flags and wires signals.

pub mod admission;
pub mod config;
pub mod dedup;
pub mod publisher;
pub mod quota;

use std::time::Duration;

use crier_proto::v1::publisher_server::PublisherServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use dedup::Dedup;
use publisher::PublisherService;

/// Why the producer service stopped.
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

/// Runs the producer service on `listener` until `shutdown` is cancelled, then stops taking
/// requests, waits for in-flight publishes to be answered and flushes the Kafka producer.
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
    let stop_watching = CancellationToken::new();
    let _stop_watching = stop_watching.clone().drop_guard();
    let policy = crier_agreements::reload::load_and_watch(&config.agreements, stop_watching)
        .map_err(Error::Config)?;
    let producer =
        crier_kafka::Writer::start(config.kafka.producer()).map_err(crier_kafka::Error::from)?;
    let (auditor, audit_task) =
        crier_audit::Auditor::start(producer.clone(), config.kafka.audit_topic.clone());
    let service = PublisherService::new(
        producer.clone(),
        policy,
        auditor,
        config.kafka.events_topic.clone(),
        config.limits.clone(),
        Dedup::new(
            config.kafka.events_topic.clone(),
            config.dedup.window(),
            config.dedup.capacity,
            config.limits.max_events_in_progress,
        ),
        Duration::from_millis(config.kafka.delivery_timeout_ms),
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<PublisherServer<PublisherService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crier_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| {
            tracing::warn!(error = %e, "reflection disabled");
            e
        })
        .ok();

    // A batch may carry up to max_batch_events events of max_event_bytes, within a hard cap.
    let max_message = (config.limits.max_event_bytes * config.limits.max_batch_events.max(1))
        .clamp(4 * 1024 * 1024, 64 * 1024 * 1024);
    let publisher = PublisherServer::new(service).max_decoding_message_size(max_message);
    let publisher = tonic::service::interceptor::InterceptedService::new(publisher, authenticator);
    tracing::info!(listen = ?listener.local_addr().ok(), topic = %config.kafka.events_topic, "producer serving");

    let draining = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        async move {
            shutdown.cancelled().await;
            health
                .set_not_serving::<PublisherServer<PublisherService>>()
                .await;
        }
    };
    crier_runtime::grpc::server(tls)?
        .layer(crier_runtime::grpc::metadata_limit())
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_service(publisher)
        .serve_with_incoming_shutdown(crier_runtime::grpc::incoming(listener), draining)
        .await?;

    // The server (and with it every Auditor clone) is gone: the audit writer drains.
    if tokio::time::timeout(Duration::from_secs(15), audit_task)
        .await
        .is_err()
    {
        tracing::error!("audit writer did not drain within 15 s");
    }
    let timeout = Duration::from_secs(config.shutdown.flush_timeout_secs);
    let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("producer flushed; stopped"),
        Ok(Err(e)) => tracing::error!(error = %e, "flush on shutdown incomplete"),
        Err(e) => tracing::error!(error = %e, "flush task failed"),
    }
    Ok(())
}
