//! Generates the Rust types and the tonic service for the Hubble-compatible
//! protos under `proto/`. Needs `protoc` (Debian: protobuf-compiler); set
//! `PROTOC` to use one that is not on PATH.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/flow/flow.proto",
        "proto/relay/relay.proto",
        "proto/observer/observer.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
