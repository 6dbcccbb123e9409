//! The codec of the generated Crier services and clients: tonic-prost's, except that a
//! message that does not decode is `INVALID_ARGUMENT`.
//!
//! tonic-prost answers a protobuf decode error with `INTERNAL`, which tells a client that
//! sent a truncated or mistyped request that the server is broken. The fault is the
//! caller's, and only the caller can fix it, so the status says so, and keeps prost's
//! explanation (the field path and what was wrong with it).
//!
//! The generated clients use this codec too, so a response that does not decode would also
//! be `INVALID_ARGUMENT`. tonic-prost-build takes one codec for both sides, and a Crier
//! service only ever sends what prost encoded.
use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, DecodeBuf, Decoder as _},
};
use tonic_prost::{ProstCodec, ProstEncoder};

/// prost's encoding, with undecodable messages refused as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U> {
    prost: ProstCodec<T, U>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self {
            prost: ProstCodec::new(),
        }
    }
}

impl<T, U> tonic::codec::Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.prost.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder {
            _message: PhantomData,
            buffer_settings: self.prost.decoder().buffer_settings(),
        }
    }
}

/// Decodes `U` with prost; a decode error is `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ProtoDecoder<U> {
    _message: PhantomData<U>,
    buffer_settings: BufferSettings,
}

impl<U: Message + Default> tonic::codec::Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(undecodable)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.buffer_settings
    }
}

/// The status for a message that is not valid protobuf for its type. prost's text names the
/// field path (`PublishRequest.event: Event.id: ...`), which is what the caller needs.
fn undecodable(error: prost::DecodeError) -> Status {
    Status::invalid_argument(format!("the request could not be decoded: {error}"))
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::v1::PublishRequest;

    #[test]
    fn an_undecodable_request_is_invalid_argument_naming_the_field() {
        // PublishRequest.event (field 1) holding Event.id (field 1) as invalid UTF-8.
        let error = PublishRequest::decode(&b"\x0a\x04\x0a\x02\xff\xfe"[..])
            .expect_err("invalid UTF-8 does not decode");
        let status = undecodable(error);
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().contains("could not be decoded"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("Event.id"),
            "{}",
            status.message()
        );
    }
}
