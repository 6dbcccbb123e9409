//! The rules for what Crier accepts, kept free of I/O so both services, the CLI and the
//! fuzz targets share one definition.
//!
//! - [`registry`]: which event types exist and how to decode their payloads.
//! - [`validate`]: checks an envelope (and its payload) before anything is written to Kafka.
//! - [`codes`]: GSS area codes, and spotting raw NHS and National Insurance numbers.
//! - [`filter`]: checks subscription names and filters.

pub mod codes;
pub mod filter;
pub mod registry;
pub mod validate;
mod wire;

pub use registry::Registry;

/// A rule broken by client input: which field, and what is wrong with it.
///
/// `field` is a path into the request, such as `event.areas[1]`, so that the gRPC error
/// can name it and a client can show it next to the right input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// Path of the offending field, for example `event.areas[1]`.
    pub field: String,
    /// What is wrong, in words an integrator can act on.
    pub message: String,
}

impl Invalid {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Invalid client input becomes `INVALID_ARGUMENT`, with a `google.rpc.BadRequest` detail
/// naming the field, so clients in any language can point at what to fix.
impl From<Invalid> for tonic::Status {
    fn from(e: Invalid) -> Self {
        use tonic_types::{ErrorDetails, StatusExt};
        let details = ErrorDetails::with_bad_request_violation(e.field.clone(), e.message.clone());
        tonic::Status::with_error_details(tonic::Code::InvalidArgument, e.to_string(), details)
    }
}
