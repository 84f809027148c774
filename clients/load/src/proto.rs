//! Generated gRPC clients for the gateway and simulator contracts in
//! `proto/`. Never edited by hand; `build.rs` regenerates them.

#![allow(missing_docs, unreachable_pub, unused_qualifications, clippy::all)]

/// Public gateway API (`proto/wagate/v1`).
pub(crate) mod gateway {
    include!(concat!(env!("OUT_DIR"), "/wagate.v1.rs"));
}

/// Simulator control API (`proto/wagate/sim/v1`).
pub(crate) mod sim {
    include!(concat!(env!("OUT_DIR"), "/wagate.sim.v1.rs"));
}
