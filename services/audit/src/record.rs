//! One audit record, and its hash.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::positions;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// An event was accepted from a publisher.
    Publish,
    /// An event was sent to a subscriber.
    Deliver,
    /// A subscriber acknowledged a delivery.
    Ack,
    /// A request was refused by the agreements.
    Deny,
    /// A consumer instance read these events from Kafka for its streams. Its delivery
    /// records name them by position (`Entry::delivered`); this record says what each is.
    Read,
}

/// What a service reports; the writer adds the chain fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// What happened.
    pub action: Option<Action>,
    /// Who did it: `<organisation>/<system>`.
    pub actor: String,
    /// The subscription, for deliveries and acknowledgements.
    pub subscription: String,
    /// The event's id (CloudEvents `id`).
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The pseudonymous subject reference the event is about.
    pub subject: String,
    /// The agreements the action was taken under.
    pub agreements: Vec<String>,
    /// Anything else: the reason for a refusal, the Kafka position of an event. For an
    /// acknowledgement, the positions acknowledged, separated by spaces, each a position or
    /// a run of them (see [`crate::positions`]; [`Entry::acknowledged`] reads them).
    pub detail: String,
    /// For a publish or a delivery: each event the record covers, in order. One record per
    /// publish request or per message sent rather than per event, so that batches cost one
    /// record a batch. (Records written before this field named their one event above.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventRef>,
    /// For a delivery: events sent, named by position only and grouped by the agreements
    /// they were sent under. What each is and whom it is about is in a `Read` record the
    /// same chain wrote before it: a consumer instance describes each event its live reader
    /// reads once, rather than once per stream that receives it. At full fan-out an event
    /// reaches about 21 streams, and its description repeated was most of the trail's bytes
    /// and of the consumer's and Kafka's cost of it (PERFORMANCE.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivered: Vec<Delivered>,
}

impl Entry {
    /// How many events the record names: described in `events` or by position in
    /// `delivered`.
    pub fn named(&self) -> usize {
        self.events.len()
            + self
                .delivered
                .iter()
                .map(|d| d.each().count())
                .sum::<usize>()
    }

    /// For an acknowledgement: each position acknowledged, as `(partition, offset)`.
    pub fn acknowledged(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        let detail = (self.action == Some(Action::Ack)).then_some(self.detail.as_str());
        positions::expand(detail.into_iter().flat_map(|d| d.split(' ')))
    }
}

/// Events delivered under the same agreements, by position in the events topic:
/// `<partition>:<offset>`, or a run of consecutive offsets `<partition>:<first>-<last>`
/// (see [`crate::positions`]). What each one is and whom it is about is in the `events`
/// of an earlier `Read` record of the same chain with the same position; a chain reads one
/// topic for its whole life, so the position is unambiguous within it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// The agreements they were delivered under.
    pub agreements: Vec<String>,
    /// Where Kafka holds them: positions, as a subscriber's `ack_id`, or runs of them.
    pub positions: Vec<String>,
}

impl Delivered {
    /// Each position delivered, as `(partition, offset)`.
    pub fn each(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        positions::expand(self.positions.iter().map(String::as_str))
    }
}

/// One event published or delivered: what it was, whom it was about, and why it was
/// allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRef {
    /// The event's id (CloudEvents `id`).
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The pseudonymous subject reference the event is about.
    pub subject: String,
    /// The agreements it was published or delivered under.
    pub agreements: Vec<String>,
    /// Where Kafka holds it, as a subscriber's `ack_id`: `<partition>:<offset>`.
    pub position: String,
}

/// A record as stored: the entry, its place in its chain, and the hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The writing instance's chain id.
    pub chain: String,
    /// Position in the chain, from 0.
    pub seq: u64,
    /// Hash of the previous record in the chain (64 zeros for the first).
    pub prev: String,
    /// When it was recorded (RFC 3339).
    pub time: String,
    /// What was recorded.
    #[serde(flatten)]
    pub entry: Entry,
    /// SHA-256 over every other field.
    pub hash: String,
}

/// The `prev` of a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl AuditRecord {
    /// The hash this record should carry: SHA-256 of its JSON with `hash` empty.
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let bytes = serde_json::to_vec(&unhashed).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }
}
