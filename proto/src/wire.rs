//! `Subscribe` responses built from events encoded once, for the consumer service.
//!
//! One event goes to many streams: every national subscriber and the streams of each area
//! it names. Building a `Delivery` struct per stream cloned the whole event (a dozen
//! strings, the payload, the areas) and prost then encoded it again for each stream; that
//! was the largest part of the consumer's cost per delivery (PERFORMANCE.md). Here the
//! consumer encodes each event once (per field set an agreement allows), and a response
//! is written from those bytes, the position and the ack id.
//!
//! [`subscriber_server`] is `crier.v1.Subscriber` generated with [`EncodedResponse`] as the
//! response type, so the stream can carry such bytes; on the wire it is exactly
//! `SubscribeResponse`, and clients use the ordinary generated types. The encoding follows
//! prost's own (fields in tag order, proto3 defaults left out), so the bytes are those
//! prost would write; the tests hold the two to that.

use bytes::{BufMut, Bytes, BytesMut};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len},
};

use crate::v1::SubscribeResponse;

include!(concat!(env!("OUT_DIR"), "/crier.v1.Subscriber.rs"));

/// An encoded `crier.v1.SubscribeResponse`, sent as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedResponse(Bytes);

impl EncodedResponse {
    /// The response's protobuf encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&SubscribeResponse> for EncodedResponse {
    fn from(response: &SubscribeResponse) -> Self {
        Self(response.encode_to_vec().into())
    }
}

impl Message for EncodedResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// Only ever sent, never received: what arrives is skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

/// Where a delivered event is held: `crier.v1.Position`, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// The events topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// The event's offset.
    pub offset: i64,
}

/// Deliveries written one by one into a single response.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// [`ROOM`] bytes for the response's own key and length, then the encoded `Delivery`
    /// messages, each with its field key and length (as the `deliveries` field of
    /// `Deliveries` holds them); empty until the first is added.
    body: BytesMut,
    count: usize,
}

/// Room kept in front of the deliveries for the response's key (one byte) and length (at
/// most five), so that the response is the same buffer rather than a copy of it.
const ROOM: usize = 6;

/// Field numbers, from `subscriber.proto` and `event.proto`.
mod tag {
    pub(super) const RESPONSE_DELIVERY: u32 = 2;
    pub(super) const RESPONSE_DELIVERIES: u32 = 3;
    pub(super) const DELIVERIES_DELIVERY: u32 = 1;
    pub(super) const DELIVERY_EVENT: u32 = 1;
    pub(super) const DELIVERY_POSITION: u32 = 2;
    pub(super) const DELIVERY_ACK_ID: u32 = 3;
    pub(super) const POSITION_TOPIC: u32 = 1;
    pub(super) const POSITION_PARTITION: u32 = 2;
    pub(super) const POSITION_OFFSET: u32 = 3;
}

impl Deliveries {
    /// Adds a delivery of `event` (an encoded `crier.v1.Event`) at `at`, acknowledged by
    /// `ack_id`.
    pub fn push(&mut self, event: &[u8], at: At<'_>, ack_id: &str) {
        let position_len = string_len(tag::POSITION_TOPIC, at.topic)
            + varint_len(tag::POSITION_PARTITION, at.partition as u64)
            + varint_len(tag::POSITION_OFFSET, at.offset as u64);
        let delivery_len = key_len(tag::DELIVERY_EVENT)
            + encoded_len_varint(event.len() as u64)
            + event.len()
            + key_len(tag::DELIVERY_POSITION)
            + encoded_len_varint(position_len as u64)
            + position_len
            + string_len(tag::DELIVERY_ACK_ID, ack_id);
        let b = &mut self.body;
        b.reserve(ROOM + key_len(tag::DELIVERIES_DELIVERY) + 5 + delivery_len);
        if b.is_empty() {
            b.put_bytes(0, ROOM);
        }
        length_delimited(tag::DELIVERIES_DELIVERY, delivery_len, b);
        length_delimited(tag::DELIVERY_EVENT, event.len(), b);
        b.put_slice(event);
        length_delimited(tag::DELIVERY_POSITION, position_len, b);
        string(tag::POSITION_TOPIC, at.topic, b);
        varint(tag::POSITION_PARTITION, at.partition as u64, b);
        varint(tag::POSITION_OFFSET, at.offset as u64, b);
        string(tag::DELIVERY_ACK_ID, ack_id, b);
        self.count += 1;
    }

    /// How many deliveries have been added.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when none has been added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The size of what has been added so far, in bytes.
    pub fn bytes(&self) -> usize {
        self.body.len().saturating_sub(ROOM)
    }

    /// The response carrying every delivery added, as `deliveries`; and this, emptied.
    pub fn take_batch(&mut self) -> EncodedResponse {
        self.count = 0;
        let mut body = self.body.split();
        if body.is_empty() {
            body.put_bytes(0, ROOM);
        }
        let len = body.len() - ROOM;
        let start = ROOM - key_len(tag::RESPONSE_DELIVERIES) - encoded_len_varint(len as u64);
        length_delimited(tag::RESPONSE_DELIVERIES, len, &mut &mut body[start..ROOM]);
        let _ = body.split_to(start);
        EncodedResponse(body.freeze())
    }

    /// The response carrying the one delivery added, as `delivery`; and this, emptied.
    /// `None` unless exactly one was added.
    pub fn take_single(&mut self) -> Option<EncodedResponse> {
        if self.count != 1 {
            return None;
        }
        self.count = 0;
        // After the room, the body is the Delivery with the key of `Deliveries.deliveries`
        // (1) in front; as `SubscribeResponse.delivery` it takes key 2, of the same size,
        // and the same length.
        let mut body = self.body.split();
        const _: () = assert!(key_len(tag::DELIVERIES_DELIVERY) == key_len(tag::RESPONSE_DELIVERY));
        encode_key(
            tag::RESPONSE_DELIVERY,
            WireType::LengthDelimited,
            &mut &mut body[ROOM..],
        );
        let _ = body.split_to(ROOM);
        Some(EncodedResponse(body.freeze()))
    }
}

fn length_delimited(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// A string field as prost writes it: nothing when empty.
fn string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        length_delimited(tag, value.len(), buf);
        buf.put_slice(value.as_bytes());
    }
}

fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
    }
}

/// An integer field as prost writes it (negative `int32` and `int64` as ten bytes):
/// nothing when zero.
fn varint(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::v1::{self, subscribe_response::Response};

    fn event(id: &str, data: Vec<u8>) -> v1::Event {
        v1::Event {
            id: id.into(),
            source: "urn:crier:uk.gov.gro/deaths".into(),
            r#type: "crier.events.v1.DeathRegistered".into(),
            data,
            areas: vec!["E06000002".into()],
            ..Default::default()
        }
    }

    fn expected(
        e: &v1::Event,
        topic: &str,
        partition: i32,
        offset: i64,
        ack: &str,
    ) -> v1::Delivery {
        v1::Delivery {
            event: Some(e.clone()),
            position: Some(v1::Position {
                topic: topic.into(),
                partition,
                offset,
            }),
            ack_id: ack.into(),
        }
    }

    proptest! {
        #[test]
        fn a_batch_is_the_bytes_prost_writes_for_the_same_deliveries(
            items in prop::collection::vec(
                ("[a-z0-9-]{0,40}", prop::collection::vec(any::<u8>(), 0..300),
                 "[a-z.]{0,30}", any::<i32>(), any::<i64>(), "[0-9:]{0,20}"),
                1..20,
            )
        ) {
            let mut built = Deliveries::default();
            let mut want = Vec::new();
            for (id, data, topic, partition, offset, ack) in &items {
                let e = event(id, data.clone());
                built.push(&e.encode_to_vec(), At { topic, partition: *partition, offset: *offset }, ack);
                want.push(expected(&e, topic, *partition, *offset, ack));
            }
            prop_assert_eq!(built.len(), items.len());
            let response = built.take_batch();
            let prost = SubscribeResponse {
                response: Some(Response::Deliveries(v1::Deliveries { deliveries: want })),
            }
            .encode_to_vec();
            prop_assert_eq!(response.as_bytes(), prost.as_slice());
            prop_assert!(built.is_empty());
            prop_assert_eq!(built.bytes(), 0);
        }

        #[test]
        fn a_single_delivery_is_the_bytes_prost_writes_for_it(
            id in "[a-z0-9-]{0,40}",
            data in prop::collection::vec(any::<u8>(), 0..300),
            partition in any::<i32>(),
            offset in any::<i64>(),
        ) {
            let e = event(&id, data);
            let mut built = Deliveries::default();
            built.push(&e.encode_to_vec(), At { topic: "crier.events.v1", partition, offset }, "3:17");
            let response = built.take_single().expect("one delivery");
            let prost = SubscribeResponse {
                response: Some(Response::Delivery(expected(&e, "crier.events.v1", partition, offset, "3:17"))),
            }
            .encode_to_vec();
            prop_assert_eq!(response.as_bytes(), prost.as_slice());
        }
    }

    #[test]
    fn a_single_response_needs_exactly_one_delivery() {
        let mut none = Deliveries::default();
        assert!(none.take_single().is_none());
        let mut two = Deliveries::default();
        let at = At {
            topic: "t",
            partition: 0,
            offset: 1,
        };
        two.push(b"", at, "0:1");
        two.push(b"", at, "0:2");
        assert!(two.take_single().is_none());
        assert_eq!(two.len(), 2);
    }

    #[test]
    fn an_encoded_response_decodes_as_the_response_it_was_made_from() {
        let opened = SubscribeResponse {
            response: Some(Response::Opened(v1::Opened {
                subscription: "s".into(),
                created: true,
                ..Default::default()
            })),
        };
        let encoded = EncodedResponse::from(&opened);
        assert_eq!(encoded.encoded_len(), encoded.as_bytes().len());
        let sent = encoded.encode_to_vec();
        assert_eq!(SubscribeResponse::decode(sent.as_slice()).unwrap(), opened);
    }
}
