//! Compiles `crier/**/*.proto` with protox (pure Rust, so no system `protoc`) and keeps the
//! encoded descriptor set for gRPC reflection and for decoding payloads by type name.
use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "crier/v1/event.proto",
    "crier/v1/publisher.proto",
    "crier/v1/subscriber.proto",
    "crier/events/v1/common.proto",
    "crier/events/v1/civil_registration.proto",
    "crier/events/v1/address.proto",
    "crier/events/v1/benefits.proto",
    "crier/events/v1/education.proto",
    "crier/events/v1/social_care.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=crier");
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("crier_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Undecodable requests are the caller's fault: INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::ProtoCodec")
        .compile_fds(fds)?;
    // crier.v1.Subscriber once more, responding with bytes the consumer encoded itself
    // (src/wire.rs says why); its clients are the ones generated above.
    let subscribe = tonic_build::manual::Method::builder()
        .name("subscribe")
        .route_name("Subscribe")
        .input_type("crate::v1::SubscribeRequest")
        .output_type("crate::wire::EncodedResponse")
        .codec_path("crate::codec::ProtoCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let subscriber = tonic_build::manual::Service::builder()
        .name("Subscriber")
        .package("crier.v1")
        .comment("crier.v1.Subscriber, sending responses encoded by the consumer service.")
        .method(subscribe)
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[subscriber]);
    Ok(())
}
