//! Compiles proto/oip/v1/*.proto with protox (pure Rust; no system protoc) and
//! writes the descriptor set used by gRPC server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/oip/v1/records.proto",
        "proto/oip/v1/platform.proto",
        "proto/oip/v1/backend.proto",
        "proto/oip/v1/admin.proto",
        "proto/oip/v1/pull.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    // `sqlx::migrate!` embeds the migrations: a new one must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("oip_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Malformed requests are INVALID_ARGUMENT, not prost's INTERNAL.
        .codec_path("crate::codec::Codec")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
