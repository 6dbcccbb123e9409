//! Hostile input over gRPC, against both services on a real Kafka broker: truncated
//! protobuf, wrong wire types, invalid UTF-8, huge repeated fields, deep nesting, oversized
//! metadata and messages, and streams that break the Subscribe protocol. One case starts the
//! producer binary with settings that cannot work, the operator's hostile input.
//!
//! The bytes are sent as they are, through a codec that does no protobuf of its own, so
//! each case reaches the server exactly as an attacker or a broken client would send it.
//! Every case must get a clear status (asserted: its code and words from its message), and
//! the service must then go on serving well-formed requests: on the same connection when
//! it survives, and on a new one. Run with `cargo test --test hostile` while
//! `deploy/kafka.sh` is up (`CRIER_TEST_KAFKA` names another broker). Each case prints the
//! status it got, so `-- --nocapture` shows what a client sees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crier_proto::v1::{
    Ack, Event, Open, PublishBatchRequest, PublishRequest, SubscribeRequest, SubscribeResponse,
    subscribe_request::Request as ClientMsg, subscribe_response::Response as ServerMsg,
    subscriber_client::SubscriberClient,
};
use crier_tests::*;
use prost::{
    Message,
    bytes::{Buf, BufMut, Bytes},
    encoding::{WireType, encode_key, encode_varint},
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{
    Code, Request, Status,
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    metadata::MetadataValue,
    transport::Channel,
};
use tonic_types::StatusExt;

const PUBLISH: &str = "/crier.v1.Publisher/Publish";
const PUBLISH_BATCH: &str = "/crier.v1.Publisher/PublishBatch";
const SUBSCRIBE: &str = "/crier.v1.Subscriber/Subscribe";

/// Longest a hostile request may take to be answered: a hang is a failure too.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// A codec that sends its bytes verbatim as one gRPC message and hands back the response
/// message undecoded, so tests choose every byte the server parses.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Self::Encoder {
        Raw
    }

    fn decoder(&mut self) -> Self::Decoder {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Sends `request` (raw message bytes) to the unary method at `path`.
async fn call(
    channel: &Channel,
    path: &'static str,
    request: Request<Bytes>,
) -> Result<Bytes, Status> {
    let mut grpc = Grpc::new(channel.clone());
    tokio::time::timeout(ANSWER_WITHIN, async {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
        grpc.unary(request, PathAndQuery::from_static(path), Raw)
            .await
            .map(tonic::Response::into_inner)
    })
    .await
    .unwrap_or_else(|_| panic!("{path} did not answer within {ANSWER_WITHIN:?}"))
}

/// Sends raw bytes to `Publisher.Publish`.
async fn publish_raw(channel: &Channel, body: Vec<u8>) -> Result<Bytes, Status> {
    call(channel, PUBLISH, Request::new(Bytes::from(body))).await
}

/// Asserts that `result` is a refusal with `code` whose message contains every one of
/// `words`, prints what the client saw, and returns the status.
fn refused(case: &str, result: Result<Bytes, Status>, code: Code, words: &[&str]) -> Status {
    let status = match result {
        Ok(body) => panic!(
            "{case}: accepted ({} response bytes), expected {code:?}",
            body.len()
        ),
        Err(status) => status,
    };
    let message = status.message();
    println!("{case}: {:?}: {message}", status.code());
    assert_eq!(status.code(), code, "{case}: {message}");
    for word in words {
        assert!(
            message.contains(word),
            "{case}: '{message}' does not mention '{word}'"
        );
    }
    status
}

/// A protobuf field header.
fn key(field: u32, wire_type: WireType, out: &mut Vec<u8>) {
    encode_key(field, wire_type, out);
}

/// A length-delimited field: header, length, bytes.
fn delimited(field: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    key(field, WireType::LengthDelimited, &mut out);
    encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// A `PublishRequest` whose `event` field holds `event_bytes`, whatever they are.
fn publish_request_around(event_bytes: &[u8]) -> Vec<u8> {
    delimited(1, event_bytes)
}

/// `depth` groups of field `field`, each opened inside the last, then all closed.
fn nested_groups(field: u32, depth: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(depth * 4);
    for _ in 0..depth {
        key(field, WireType::StartGroup, &mut out);
    }
    for _ in 0..depth {
        key(field, WireType::EndGroup, &mut out);
    }
    out
}

/// `depth` length-delimited fields of number `field`, each inside the last.
fn nested_messages(field: u32, depth: usize) -> Vec<u8> {
    let mut inner = Vec::new();
    for _ in 0..depth {
        inner = delimited(field, &inner);
    }
    inner
}

/// A valid event as [`PUBLISHER`] sends it.
fn valid_event() -> Event {
    event(DEATH, "psn:hostile", &["E06000002"])
}

/// After a hostile request: a well-formed publish succeeds on the same channel (when it
/// still works, tonic reconnects when it does not) and on a new connection.
async fn producer_still_serves(producer: &Running, channel: &Channel) {
    let request = PublishRequest {
        event: Some(valid_event()),
    };
    let same = publish_raw(channel, request.encode_to_vec()).await;
    assert!(
        same.is_ok(),
        "publish on the same channel after the hostile request: {same:?}"
    );
    let mut client = publisher(producer).await;
    let fresh = client
        .publish(PublishRequest {
            event: Some(valid_event()),
        })
        .await;
    assert!(
        fresh.is_ok(),
        "publish on a new connection after the hostile request: {fresh:?}"
    );
}

/// Starts a producer on its own topics, with a raw channel authenticated as [`PUBLISHER`].
async fn producer(test: &str) -> (Running, Channel) {
    let producer = start_producer(&kafka_config(test)).await;
    let channel = channel_as(&producer, Some(PUBLISHER)).await;
    (producer, channel)
}

#[tokio::test]
async fn a_truncated_event_is_refused_as_undecodable_and_the_producer_keeps_serving() {
    let (producer, channel) = producer("hostile-truncated").await;
    let whole = valid_event().encode_to_vec();
    let cut = &whole[..whole.len() / 2];

    // The event's own length says it is cut: the outer PublishRequest is consistent.
    let inner = publish_raw(&channel, publish_request_around(cut)).await;
    refused(
        "truncated event",
        inner,
        Code::InvalidArgument,
        &["could not be decoded", "failed to decode", "Event"],
    );
    // The request itself is cut: its length prefix promises more than arrives.
    let outer = PublishRequest {
        event: Some(valid_event()),
    }
    .encode_to_vec();
    let outer = publish_raw(&channel, outer[..outer.len() - 7].to_vec()).await;
    refused(
        "truncated request",
        outer,
        Code::InvalidArgument,
        &["could not be decoded", "failed to decode"],
    );

    producer_still_serves(&producer, &channel).await;
    producer.stop().await;
}

#[tokio::test]
async fn a_wrong_wire_type_for_the_event_id_is_refused_and_the_producer_keeps_serving() {
    let (producer, channel) = producer("hostile-wire-type").await;
    // Field 1 (`id`, a string) sent as a varint, ahead of an otherwise valid event.
    let mut bytes = Vec::new();
    key(1, WireType::Varint, &mut bytes);
    encode_varint(7, &mut bytes);
    let mut rest = valid_event();
    rest.id.clear();
    bytes.extend(rest.encode_to_vec());
    let result = publish_raw(&channel, publish_request_around(&bytes)).await;
    refused(
        "wrong wire type for Event.id",
        result,
        Code::InvalidArgument,
        &["could not be decoded", "wire type", "Event.id"],
    );

    // And at the top level: field 1 of PublishRequest (the event) as a fixed64.
    let mut top = Vec::new();
    key(1, WireType::SixtyFourBit, &mut top);
    top.extend_from_slice(&[0; 8]);
    let result = publish_raw(&channel, top).await;
    refused(
        "wrong wire type for PublishRequest.event",
        result,
        Code::InvalidArgument,
        &["could not be decoded", "wire type"],
    );

    producer_still_serves(&producer, &channel).await;
    producer.stop().await;
}

#[tokio::test]
async fn invalid_utf8_in_the_event_id_is_refused_and_the_producer_keeps_serving() {
    let (producer, channel) = producer("hostile-utf8").await;
    let mut bytes = delimited(1, &[0x66, 0xff, 0xfe, 0x80]);
    let mut rest = valid_event();
    rest.id.clear();
    bytes.extend(rest.encode_to_vec());
    let result = publish_raw(&channel, publish_request_around(&bytes)).await;
    refused(
        "invalid UTF-8 in Event.id",
        result,
        Code::InvalidArgument,
        &["could not be decoded", "UTF-8", "Event.id"],
    );

    producer_still_serves(&producer, &channel).await;
    producer.stop().await;
}

#[tokio::test]
async fn a_batch_of_a_hundred_thousand_tiny_events_is_refused_over_the_batch_limit() {
    let (producer, channel) = producer("hostile-huge-batch").await;
    let tiny = Event {
        id: "x".into(),
        ..Default::default()
    };
    let batch = PublishBatchRequest {
        events: vec![tiny; 100_000],
    };
    let result = call(
        &channel,
        PUBLISH_BATCH,
        Request::new(batch.encode_to_vec().into()),
    )
    .await;
    let status = refused(
        "100,000 tiny events in one batch",
        result,
        Code::InvalidArgument,
        &["events", "100000", "at most"],
    );
    let details = status.get_error_details();
    let violation = &details
        .bad_request()
        .expect("a BadRequest detail")
        .field_violations[0];
    assert_eq!(violation.field, "events");

    producer_still_serves(&producer, &channel).await;
    producer.stop().await;
}

#[tokio::test]
async fn ten_thousand_nested_groups_in_an_event_are_refused_at_the_recursion_limit() {
    let (producer, channel) = producer("hostile-deep-groups").await;
    // An undefined field (99) holding 10,000 groups, each inside the last, after a valid event.
    let mut bytes = valid_event().encode_to_vec();
    bytes.extend(nested_groups(99, 10_000));
    let result = publish_raw(&channel, publish_request_around(&bytes)).await;
    refused(
        "10,000 nested groups in Event",
        result,
        Code::InvalidArgument,
        &["could not be decoded", "recursion limit"],
    );

    producer_still_serves(&producer, &channel).await;
    producer.stop().await;
}

#[tokio::test]
async fn ten_thousand_nested_messages_in_an_undefined_event_field_are_dropped_unread() {
    let (producer, channel) = producer("hostile-deep-messages").await;
    // Length-delimited, so the decoder skips field 99 by its length without descending into
    // it: protobuf drops undefined fields of the envelope, and the event itself is valid.
    let mut bytes = valid_event().encode_to_vec();
    bytes.extend(nested_messages(99, 10_000));
    let result = publish_raw(&channel, publish_request_around(&bytes)).await;
    let response = result.expect("a valid event with an undefined nested field is accepted");
    let response = crier_proto::v1::PublishResponse::decode(response).unwrap();
    println!("10,000 nested messages in an undefined Event field: OK, {response:?}");

    // With nothing valid around it, the same nesting is refused by validation, not decoding.
    let result = publish_raw(
        &channel,
        publish_request_around(&nested_messages(99, 10_000)),
    )
    .await;
    refused(
        "10,000 nested messages and nothing else",
        result,
        Code::InvalidArgument,
        &["event.id", "required"],
    );

    producer_still_serves(&producer, &channel).await;
    producer.stop().await;
}

#[tokio::test]
async fn a_deeply_nested_payload_is_refused_naming_event_data() {
    let (producer, channel) = producer("hostile-deep-data").await;
    let mut groups = valid_event();
    groups.data = nested_groups(99, 10_000);
    let result = publish_raw(
        &channel,
        PublishRequest {
            event: Some(groups),
        }
        .encode_to_vec(),
    )
    .await;
    let status = refused(
        "10,000 nested groups as the payload",
        result,
        Code::InvalidArgument,
        &["event.data", "does not decode", "DeathRegistered"],
    );
    let details = status.get_error_details();
    assert_eq!(
        details.bad_request().unwrap().field_violations[0].field,
        "event.data"
    );

    let mut messages = valid_event();
    messages.data = nested_messages(99, 10_000);
    let result = publish_raw(
        &channel,
        PublishRequest {
            event: Some(messages),
        }
        .encode_to_vec(),
    )
    .await;
    refused(
        "10,000 nested messages as the payload",
        result,
        Code::InvalidArgument,
        &["event.data", "field number 99"],
    );

    // Field 2 (`name`) inside itself 10,000 times: the schema nests only two deep, so below
    // that the bytes land in a string field and stop making sense.
    let mut defined = valid_event();
    let mut data = Vec::new();
    for _ in 0..10_000 {
        data = delimited(2, &data);
    }
    defined.data = data;
    let result = publish_raw(
        &channel,
        PublishRequest {
            event: Some(defined),
        }
        .encode_to_vec(),
    )
    .await;
    refused(
        "10,000 nested name fields as the payload",
        result,
        Code::InvalidArgument,
        &["event.data"],
    );

    producer_still_serves(&producer, &channel).await;
    producer.stop().await;
}

/// A valid publish carrying `bytes` of padding in one metadata entry.
fn publish_with_metadata(bytes: usize) -> Request<Bytes> {
    let mut request = Request::new(Bytes::from(
        PublishRequest {
            event: Some(valid_event()),
        }
        .encode_to_vec(),
    ));
    let padding = MetadataValue::try_from("a".repeat(bytes)).unwrap();
    request.metadata_mut().insert("x-padding", padding);
    request
}

#[tokio::test]
async fn sixty_four_kib_of_metadata_is_refused_as_resource_exhausted_naming_the_limit() {
    let (producer, channel) = producer("hostile-metadata").await;
    let result = call(&channel, PUBLISH, publish_with_metadata(64 * 1024)).await;
    // The HTTP/2 layer takes up to 256 KiB of headers, so the services' own check answers,
    // naming its limit (crier_runtime::grpc::MAX_METADATA_BYTES).
    refused(
        "64 KiB of metadata",
        result,
        Code::ResourceExhausted,
        &["metadata", "at most 16384 bytes"],
    );

    producer_still_serves(&producer, &channel).await;
    producer.stop().await;
}

#[tokio::test]
async fn metadata_over_the_http2_bound_is_refused_and_the_producer_keeps_serving() {
    let (producer, channel) = producer("hostile-metadata-huge").await;
    // Past 256 KiB, h2 refuses the headers before any service sees them: up to four times
    // the bound with HTTP 431 and no gRPC status (tonic reports UNKNOWN), beyond that by
    // closing the connection with GOAWAY (tonic: RESOURCE_EXHAUSTED "h2 protocol error").
    // Neither names the limit, but the bound keeps memory small, and the channel recovers.
    let result = call(&channel, PUBLISH, publish_with_metadata(300 * 1024)).await;
    refused("300 KiB of metadata", result, Code::Unknown, &["431"]);
    let result = call(&channel, PUBLISH, publish_with_metadata(1100 * 1024)).await;
    refused(
        "1100 KiB of metadata",
        result,
        Code::ResourceExhausted,
        &["h2 protocol error"],
    );

    producer_still_serves(&producer, &channel).await;
    producer.stop().await;
}

#[tokio::test]
async fn a_message_over_the_decoding_limit_is_refused_as_out_of_range() {
    let (producer, channel) = producer("hostile-oversized").await;
    // 64 MiB is the producer's hard cap on a request message, whatever its limits say.
    // tonic checks the length prefix before reading the body, and answers OUT_OF_RANGE.
    let limit = 64 * 1024 * 1024;
    let body = vec![0u8; limit + 1];
    let result = publish_raw(&channel, body).await;
    refused(
        "a message of 64 MiB + 1 byte",
        result,
        Code::OutOfRange,
        &["too large", &(limit + 1).to_string()],
    );

    producer_still_serves(&producer, &channel).await;
    producer.stop().await;
}

/// Opens `Subscribe` with raw messages from `rx`; the status of a refusal, from the
/// response headers or from the first item of the stream.
async fn subscribe_raw(
    channel: &Channel,
    rx: mpsc::Receiver<Bytes>,
) -> Result<tonic::Streaming<Bytes>, Status> {
    let mut grpc = Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    tokio::time::timeout(
        ANSWER_WITHIN,
        grpc.streaming(
            Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(SUBSCRIBE),
            Raw,
        ),
    )
    .await
    .expect("Subscribe answers")
    .map(tonic::Response::into_inner)
}

/// The first thing a raw Subscribe stream yields, within [`ANSWER_WITHIN`].
async fn first_answer(stream: Result<tonic::Streaming<Bytes>, Status>) -> Result<Bytes, Status> {
    let mut stream = stream?;
    match tokio::time::timeout(ANSWER_WITHIN, stream.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => Err(Status::ok("the stream ended without a message or an error")),
        Err(_) => panic!("Subscribe did not answer within {ANSWER_WITHIN:?}"),
    }
}

/// A valid Open for `name`, encoded.
fn open(name: &str) -> Bytes {
    SubscribeRequest {
        request: Some(ClientMsg::Open(Open {
            subscription: name.into(),
            filter: Some(filter(&[DEATH], &[])),
            start: None,
            max_in_flight: 0,
            max_batch: 0,
        })),
    }
    .encode_to_vec()
    .into()
}

/// After a hostile stream: a well-formed Open succeeds on a new connection.
async fn consumer_still_serves(consumer: &Running, name: &str) {
    let sub = Subscription::open(consumer, name, filter(&[DEATH], &[]), resume()).await;
    assert!(
        sub.is_ok(),
        "a well-formed Open after the hostile stream: {sub:?}"
    );
    sub.unwrap().close().await;
}

#[tokio::test]
async fn a_subscribe_stream_that_does_not_start_with_open_is_refused() {
    let consumer = start_consumer(&kafka_config("hostile-no-open")).await;
    let channel = channel_as(&consumer, Some(SUBSCRIBER)).await;
    let (tx, rx) = mpsc::channel(4);
    let ack = SubscribeRequest {
        request: Some(ClientMsg::Ack(Ack {
            ack_ids: vec!["0:0".into()],
        })),
    };
    tx.send(ack.encode_to_vec().into()).await.unwrap();
    let result = first_answer(subscribe_raw(&channel, rx).await).await;
    let status = refused(
        "an ack before open",
        result,
        Code::InvalidArgument,
        &["open", "first message"],
    );
    assert_eq!(
        status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations[0]
            .field,
        "open"
    );

    // An empty message: no oneof at all.
    let (tx, rx) = mpsc::channel(4);
    tx.send(Bytes::new()).await.unwrap();
    let result = first_answer(subscribe_raw(&channel, rx).await).await;
    refused(
        "an empty first message",
        result,
        Code::InvalidArgument,
        &["first message"],
    );

    consumer_still_serves(&consumer, "hostile.after-no-open").await;
    consumer.stop().await;
}

#[tokio::test]
async fn garbage_as_the_first_subscribe_message_is_refused() {
    let consumer = start_consumer(&kafka_config("hostile-garbage-first")).await;
    let channel = channel_as(&consumer, Some(SUBSCRIBER)).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(Bytes::from_static(
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01garbage",
    ))
    .await
    .unwrap();
    let result = first_answer(subscribe_raw(&channel, rx).await).await;
    refused(
        "garbage as the first message",
        result,
        Code::InvalidArgument,
        &["could not be decoded", "failed to decode"],
    );

    consumer_still_serves(&consumer, "hostile.after-garbage").await;
    consumer.stop().await;
}

/// How a stream that was open ended after the client sent `hostile`: the error status, or
/// OK when it ended without one. Fails if it neither ends nor answers within
/// [`ANSWER_WITHIN`], or if the consumer then refuses a well-formed Open.
async fn stream_end_after(test: &str, hostile: Bytes) -> Status {
    let consumer = start_consumer(&kafka_config(test)).await;
    let channel = channel_as(&consumer, Some(SUBSCRIBER)).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(open(&format!("{test}.stream"))).await.unwrap();
    let mut stream = subscribe_raw(&channel, rx)
        .await
        .expect("the Open is accepted");
    let opened = tokio::time::timeout(ANSWER_WITHIN, stream.next())
        .await
        .unwrap();
    let opened = SubscribeResponse::decode(opened.unwrap().unwrap()).unwrap();
    assert!(
        matches!(opened.response, Some(ServerMsg::Opened(_))),
        "{opened:?}"
    );

    tx.send(hostile).await.unwrap();
    let end = tokio::time::timeout(ANSWER_WITHIN, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{test}: the stream neither ended nor answered"));
    let status = match end {
        Some(Ok(response)) => panic!("{test}: a response instead of an end: {response:?}"),
        Some(Err(status)) => status,
        None => Status::ok("the stream ended with OK and no error"),
    };
    println!("{test}: {:?}: {}", status.code(), status.message());
    drop(tx);
    consumer_still_serves(&consumer, &format!("{test}.after")).await;
    consumer.stop().await;
    status
}

/// A message that does not decode: field 1 (`open`) with a length far past the end.
const GARBAGE: &[u8] = b"\x0a\xff\xff\xff\xff\x0fgarbage";

#[tokio::test]
async fn garbage_after_open_ends_the_stream_and_the_consumer_keeps_serving() {
    stream_end_after("hostile-garbage-later", Bytes::from_static(GARBAGE)).await;
}

/// Finding: the session treats a message that fails to decode like the client hanging up
/// (`Session::on_client`: `Err(_) => Step::End(None)`), so the stream ends with OK and the
/// client is never told its message was refused.
#[tokio::test]
async fn garbage_after_open_is_answered_with_an_error() {
    let status = stream_end_after("hostile-garbage-status", Bytes::from_static(GARBAGE)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("could not be decoded"),
        "{}",
        status.message()
    );
}

/// Opens a typed stream as [`SUBSCRIBER`]: its sender, and the responses after `Opened`.
async fn open_typed(
    consumer: &Running,
    name: &str,
) -> (
    mpsc::Sender<SubscribeRequest>,
    tonic::Streaming<SubscribeResponse>,
) {
    let mut client = SubscriberClient::new(channel_as(consumer, Some(SUBSCRIBER)).await);
    let (tx, rx) = mpsc::channel(8);
    tx.send(SubscribeRequest::decode(open(name)).unwrap())
        .await
        .unwrap();
    let mut stream = client
        .subscribe(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        matches!(first.response, Some(ServerMsg::Opened(_))),
        "{first:?}"
    );
    (tx, stream)
}

fn bogus_acks(n: usize, id: impl Fn(usize) -> String) -> SubscribeRequest {
    SubscribeRequest {
        request: Some(ClientMsg::Ack(Ack {
            ack_ids: (0..n).map(id).collect(),
        })),
    }
}

#[tokio::test]
async fn an_ack_of_a_million_bogus_ids_is_ignored_and_the_stream_keeps_delivering() {
    let kafka = kafka_config("hostile-million-acks");
    let producer = start_producer(&kafka).await;
    let consumer = start_consumer(&kafka).await;
    let (tx, mut stream) = open_typed(&consumer, "hostile.million-acks").await;

    // Short ids, so the message stays under the consumer's 4 MiB decoding limit and the
    // session has to read every one: unparseable ones, and partition:offset pairs that were
    // never delivered.
    let acks = bogus_acks(1_000_000, |i| {
        if i % 4 == 0 {
            format!("{}:{}", i % 7, i % 10)
        } else {
            "x".into()
        }
    });
    println!("1,000,000 bogus ack ids: {} bytes", acks.encoded_len());
    assert!(acks.encoded_len() < 4 * 1024 * 1024);
    tx.send(acks).await.unwrap();

    let published = valid_event();
    publisher(&producer)
        .await
        .publish(PublishRequest {
            event: Some(published.clone()),
        })
        .await
        .unwrap();
    let next = tokio::time::timeout(ANSWER_WITHIN, stream.next())
        .await
        .expect("a delivery after the bogus acks")
        .expect("the stream is still open")
        .expect("no error on the stream");
    let Some(ServerMsg::Delivery(delivery)) = next.response else {
        panic!("expected a delivery, got {next:?}");
    };
    assert_eq!(delivery.event.unwrap().id, published.id);
    println!("1,000,000 bogus ack ids: ignored; the next event was delivered");

    drop(tx);
    consumer_still_serves(&consumer, "hostile.after-million-acks").await;
    consumer.stop().await;
    producer.stop().await;
}

/// A million realistic ids ("partition:offset"): over the consumer's 4 MiB default.
fn oversized_ack() -> Bytes {
    let acks = bogus_acks(1_000_000, |i| format!("{}:{}", i % 7, 1_000_000 + i));
    assert!(acks.encoded_len() > 4 * 1024 * 1024);
    acks.encode_to_vec().into()
}

#[tokio::test]
async fn an_ack_over_the_message_size_limit_ends_the_stream_and_the_consumer_keeps_serving() {
    stream_end_after("hostile-huge-ack", oversized_ack()).await;
}

/// Finding: as for garbage after Open, tonic's OUT_OF_RANGE ("decoded message length too
/// large") reaches the session as an error from `inbound.message()`, which ends the
/// stream with OK instead of passing the status on.
#[tokio::test]
async fn an_ack_over_the_message_size_limit_is_answered_with_out_of_range() {
    let status = stream_end_after("hostile-huge-ack-status", oversized_ack()).await;
    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );
}

/// A flood of batches beyond the producer's bound on events in progress: the calls over
/// it are refused at once with UNAVAILABLE naming the limit, and nothing is half-written.
/// Retrying the refused batches with the same ids publishes every event exactly once.
#[tokio::test]
async fn a_flood_over_the_producers_limit_is_refused_with_unavailable_and_retries_lose_nothing() {
    const BATCHES: usize = 100;
    const EVENTS: usize = 10;
    let kafka = kafka_config("hostile-flood");
    let agreements = agreements_file("open", OPEN_AGREEMENTS);
    let producer = start_producer_tuned(&kafka, &agreements, |c| {
        c.limits.max_events_in_progress = EVENTS;
        c.limits.max_batch_events = EVENTS;
        c.limits.publish_rate_per_sec = 0;
    })
    .await;
    let client = publisher(&producer).await;
    let batch = |b: usize| PublishBatchRequest {
        events: (0..EVENTS)
            .map(|i| event(DEATH, &format!("psn:flood-{b}-{i}"), &["E06000002"]))
            .collect(),
    };

    let mut calls = tokio::task::JoinSet::new();
    for b in 0..BATCHES {
        let mut client = client.clone();
        let request = batch(b);
        calls.spawn(async move { (b, request.clone(), client.publish_batch(request).await) });
    }
    let mut refused = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let (b, request, answer) = joined.unwrap();
        match answer {
            Ok(response) => assert!(
                response.get_ref().results.iter().all(|r| matches!(
                    r.outcome,
                    Some(crier_proto::v1::publish_result::Outcome::Accepted(_))
                )),
                "batch {b}: {response:?}"
            ),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
                assert!(
                    status.message().contains("limit of 10") && status.message().contains("retry"),
                    "{}",
                    status.message()
                );
                refused.push(request);
            }
        }
    }
    println!(
        "{} of {BATCHES} concurrent batches refused with UNAVAILABLE",
        refused.len()
    );
    assert!(
        !refused.is_empty() && refused.len() < BATCHES,
        "{BATCHES} batches of {EVENTS} at once against a limit of {EVENTS}: some, not all, must be refused"
    );

    let mut client = client.clone();
    for request in refused {
        let mut tries = 0;
        while let Err(status) = client.publish_batch(request.clone()).await {
            assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
            tries += 1;
            assert!(tries < 100, "a lone retry kept being refused");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        records_in(&kafka, &kafka.events_topic),
        (BATCHES * EVENTS) as i64,
        "every event written exactly once"
    );
    producer.stop().await;
}

/// A producer started with settings that load but cannot work exits at once, naming the
/// setting, rather than serving and failing calls: a limit on events in progress below the
/// largest batch would refuse every full batch for ever, and a dedup window of 0 would
/// remember nothing. Needs no Kafka: the check comes before any connection.
#[test]
fn a_producer_with_a_setting_that_cannot_work_refuses_to_start_and_names_it() {
    use std::process::{Command, Stdio};
    let cases = [
        (
            "CRIER_LIMITS__MAX_EVENTS_IN_PROGRESS",
            "999",
            "max_events_in_progress (999)",
        ),
        ("CRIER_DEDUP__WINDOW_SECS", "0", "[dedup] window_secs"),
    ];
    for (key, value, words) in cases {
        let mut child = Command::new(crier_tests::process::bin_dir().join("crier-producer"))
            .arg("--config")
            .arg(crier_tests::process::repo_root().join("deploy/local/producer.toml"))
            .env(key, value)
            .env("CRIER_GRPC__LISTEN", "127.0.0.1:0")
            .env("CRIER_METRICS__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("crier-producer runs (cargo build --bins first)");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{key}={value}: the producer started instead of refusing");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        println!("{key}={value}: {status}, {}", stderr.trim());
        assert!(!status.success(), "{key}={value}: {status}");
        assert!(stderr.contains(words), "{key}={value}: {stderr}");
    }
}
