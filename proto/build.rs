//! Compiles the `.proto` files with `protox` (pure Rust, no system `protoc`).

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "streambus/v1/common.proto",
    "streambus/v1/admin.proto",
    "streambus/v1/produce.proto",
    "streambus/v1/consume.proto",
    "streambus/v1/group.proto",
    "streambus/internal/v1/controller.proto",
    "streambus/internal/v1/storage.proto",
    "streambus/internal/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("streambus_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Every service and client encodes with `crate::codec::SizedCodec`.
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::SizedCodec")
        .compile_fds(fds)?;
    Ok(())
}
