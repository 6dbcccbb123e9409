//! The audit trail: every publish, delivery, acknowledgement and refusal, recorded in an
//! append-only Kafka topic so an information-governance officer can show who received what,
//! about whom, under which agreement, and when.
//!
//! Records are hash-chained: each service instance writes its own chain (`chain` id, `seq`
//! from 0), and each record carries the SHA-256 of the previous one and its own. Altering a
//! record breaks its hash; deleting one breaks the sequence and the next record's `prev`.
//! [`chain::verify`] finds the first broken link.
//!
//! - [`record`]: the record and how its hash is computed;
//! - [`chain`]: verification and the subject-access query;
//! - [`positions`]: how records name Kafka positions, singly or in runs;
//! - [`writer`]: the background writer services record through;
//! - [`reader`]: reads the whole trail back from Kafka.

pub mod chain;
pub mod positions;
pub mod reader;
pub mod record;
pub mod writer;

pub use record::{Action, AuditRecord, Delivered, Entry, EventRef};
pub use writer::Auditor;
