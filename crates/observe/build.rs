//! Generates the Rust types and the tonic service for the Hubble-compatible
//! protos under `proto/`. Needs `protoc` (Debian: protobuf-compiler); set
//! `PROTOC` to use one that is not on PATH.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/flow/flow.proto",
        "proto/relay/relay.proto",
        "proto/observer/observer.proto",
        "proto/peer/peer.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // The server refuses request fields it does not know (see
        // src/wire_check.rs), which needs the descriptors at run time.
        .file_descriptor_set_path(out_dir.join("hubble_descriptor.bin"))
        .codec_path("crate::wire_check::CheckedCodec")
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
