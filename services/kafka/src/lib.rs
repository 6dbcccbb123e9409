//! Everything Crier knows about Kafka, in one place: how clients are configured for
//! durability, which topics exist and how they are laid out, and how an [`Event`] is
//! written as a Kafka record (the CloudEvents Kafka protocol binding, binary mode), and the
//! [`Writer`] every service produces through.
//!
//! [`Event`]: crier_proto::v1::Event

pub mod cloudevents;
pub mod config;
pub mod topics;
pub mod writer;

pub use config::KafkaConfig;
pub use writer::Writer;

/// What can go wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// librdkafka reported an error.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A record on a Crier topic is not a well-formed CloudEvent.
    #[error("record is not a Crier CloudEvent: {0}")]
    Wire(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
