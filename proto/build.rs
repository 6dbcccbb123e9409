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
    Ok(())
}
