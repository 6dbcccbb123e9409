//! Crier's public contract, generated from the `.proto` files beside this crate.
//!
//! `crier.v1` holds the envelope and the Publisher and Subscriber services; `crier.events.v1`
//! holds the payload of each event type. Other languages generate from the same files.
#![allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]

pub mod codec;
pub mod wire;

/// The envelope, positions and the two gRPC services.
pub mod v1 {
    tonic::include_proto!("crier.v1");
}

/// The payload messages, one per event type.
pub mod events {
    pub mod v1 {
        tonic::include_proto!("crier.events.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Crier proto (and the well-known types they use),
/// for gRPC server reflection and for decoding payloads by their type name.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/crier_descriptor.bin"));
