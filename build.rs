//! Generates Rust code for the protobuf contracts in `proto/`: the public API,
//! the simulator control API, and the WhatsApp wire messages.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_protos(
            &[
                "proto/wa/wa.proto",
                "proto/wa/message.proto",
                "proto/wa/appstate.proto",
            ],
            &["proto"],
        )?;

    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("wagate_descriptor.bin"))
        .compile_protos(
            &[
                "proto/wagate/v1/gateway.proto",
                "proto/wagate/sim/v1/simulator.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
