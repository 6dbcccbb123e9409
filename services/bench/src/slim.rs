//! What the load generator decodes of each `Subscribe` response: only the fields it uses.
//!
//! The benchmark's subscribers run on the cores they measure. Decoding every delivery into
//! a full `Event` (a dozen strings, the payload, the areas) is work a real subscriber does
//! on its own machine, and it was the largest part of the load generator's cost of
//! receiving (PERFORMANCE.md). These messages are wire-compatible subsets of
//! `crier.v1.SubscribeResponse`: prost skips the fields they leave out, so every byte
//! Crier sends is still received, decrypted, framed and parsed, only not copied out.
//! `a_slim_response_reads_what_the_full_one_holds` holds them to the real schema.

use prost::Message;

/// `crier.v1.SubscribeResponse`, with only the parts the bench reads.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Response {
    #[prost(oneof = "Kind", tags = "1, 2, 3")]
    pub(crate) response: Option<Kind>,
}

/// `crier.v1.SubscribeResponse.response`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Kind {
    /// `Opened`, of which nothing is read.
    #[prost(message, tag = "1")]
    Opened(Opened),
    #[prost(message, tag = "2")]
    Delivery(Delivery),
    #[prost(message, tag = "3")]
    Deliveries(Deliveries),
}

/// `crier.v1.Opened`: only that it came.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Opened {}

/// `crier.v1.Deliveries`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Deliveries {
    #[prost(message, repeated, tag = "1")]
    pub(crate) deliveries: Vec<Delivery>,
}

/// `crier.v1.Delivery`: the event's correlation id and the ack id.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Delivery {
    #[prost(message, optional, tag = "1")]
    pub(crate) event: Option<Event>,
    #[prost(string, tag = "3")]
    pub(crate) ack_id: String,
}

/// `crier.v1.Event`: the correlation id, which carries the bench's sequence and schedule.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Event {
    #[prost(string, tag = "12")]
    pub(crate) correlation_id: String,
}

#[cfg(test)]
mod tests {
    use crier_proto::v1 as full;
    use prost::Message as _;

    use super::*;

    #[test]
    fn a_slim_response_reads_what_the_full_one_holds() {
        let delivery = |n: i64| full::Delivery {
            event: Some(full::Event {
                id: format!("id-{n}"),
                r#type: "crier.events.v1.DeathRegistered".into(),
                data: vec![1, 2, 3],
                areas: vec!["E06000002".into()],
                correlation_id: format!("e2e:{n}:12345"),
                ..Default::default()
            }),
            position: Some(full::Position {
                topic: "t".into(),
                partition: 1,
                offset: n,
            }),
            ack_id: format!("1:{n}"),
        };
        let batch = full::SubscribeResponse {
            response: Some(full::subscribe_response::Response::Deliveries(
                full::Deliveries {
                    deliveries: vec![delivery(7), delivery(8)],
                },
            )),
        };
        let slim = Response::decode(batch.encode_to_vec().as_slice()).unwrap();
        let Some(Kind::Deliveries(d)) = slim.response else {
            panic!("not deliveries: {slim:?}");
        };
        let read: Vec<(&str, &str)> = d
            .deliveries
            .iter()
            .map(|d| {
                let e = d.event.as_ref().unwrap();
                (e.correlation_id.as_str(), d.ack_id.as_str())
            })
            .collect();
        assert_eq!(read, [("e2e:7:12345", "1:7"), ("e2e:8:12345", "1:8")]);

        let single = full::SubscribeResponse {
            response: Some(full::subscribe_response::Response::Delivery(delivery(9))),
        };
        let slim = Response::decode(single.encode_to_vec().as_slice()).unwrap();
        assert!(matches!(slim.response, Some(Kind::Delivery(d)) if d.ack_id == "1:9"));
        let opened = full::SubscribeResponse {
            response: Some(full::subscribe_response::Response::Opened(
                full::Opened::default(),
            )),
        };
        let slim = Response::decode(opened.encode_to_vec().as_slice()).unwrap();
        assert!(matches!(slim.response, Some(Kind::Opened(_))));
    }
}
