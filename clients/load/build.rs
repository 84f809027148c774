//! Generates the gRPC clients from the shared `.proto` contract in the
//! repository's `proto/` directory; the tool talks to separate `wagate`
//! processes and shares no Rust code with them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(
            &[
                "../../proto/wagate/v1/gateway.proto",
                "../../proto/wagate/sim/v1/simulator.proto",
            ],
            &["../../proto"],
        )?;
    println!("cargo:rerun-if-changed=../../proto/wagate");
    Ok(())
}
