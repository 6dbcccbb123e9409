//! Data-sharing agreements as code.
//!
//! Public bodies may share personal data only under a lawful basis, for a stated purpose,
//! and no more than that purpose needs. Crier enforces this in the broker, so an integrator
//! cannot get it wrong. An agreement names who may publish which event types, and who may
//! receive which event types, for which areas, and which payload fields.
//!
//! - [`file`]: the TOML policy file, checked at load with errors that name the line;
//! - [`policy`]: the questions the services ask: may this identity publish this type,
//!   open this subscription, receive this event (and which fields of it)?
//! - [`minimise`]: removes every payload field an entitlement does not cover;
//! - [`reload`]: picks up a changed file without a restart.

pub mod fields;
pub mod file;
pub mod minimise;
pub mod policy;
pub mod reload;

pub use policy::{Denied, Entitlement, Policy};

/// The policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid: the message starts with `path:line:`.
    #[error("{0}")]
    Invalid(String),
}
