//! Generated protobuf code: the public API, the simulator control API and the
//! WhatsApp wire messages. Never edited by hand; `build.rs` regenerates it.

#![allow(missing_docs, unreachable_pub, unused_qualifications, clippy::all)]

/// WhatsApp wire messages (`proto/wa`).
pub mod wa {
    include!(concat!(env!("OUT_DIR"), "/wa.rs"));
}

/// Public gateway API (`proto/wagate/v1`).
pub mod gateway {
    include!(concat!(env!("OUT_DIR"), "/wagate.v1.rs"));
}

/// Simulator control API (`proto/wagate/sim/v1`).
pub mod sim {
    include!(concat!(env!("OUT_DIR"), "/wagate.sim.v1.rs"));
}

/// Encoded file descriptors of the public and simulator APIs, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/wagate_descriptor.bin"));
