//! Compiles every `.proto` under `proto/followup` with protox (pure Rust, no system `protoc`), writes the
//! encoded file descriptor set into `OUT_DIR` for gRPC reflection and proto3 JSON, and generates prost
//! messages plus tonic clients and servers from that same set.
//!
//! `compile_fds` ignores `file_descriptor_set_path`, so the set is written here by hand.

use std::path::{Path, PathBuf};

use prost::Message;

fn proto_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let mut files = Vec::new();
    proto_files(&root.join("followup"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=followup");

    let fds = protox::compile(&files, [&root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("followup_descriptor.bin"), fds.encode_to_vec())?;

    // `prost::Name` lets consumers find a message's descriptor (for proto3 JSON) from its Rust type.
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // An RPC a service has not implemented yet answers UNIMPLEMENTED rather than pretending.
        .generate_default_stubs(true)
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
