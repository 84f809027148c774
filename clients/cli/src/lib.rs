//! `wagatectl`: a command-line client for the wagate gateway. The library
//! holds what the binary and its tests share: the generated gRPC clients, the
//! terminal QR renderer, the connection set-up and the exit-code mapping.

pub mod client;
pub mod error;
pub mod output;
pub mod proto;
pub mod qr;
