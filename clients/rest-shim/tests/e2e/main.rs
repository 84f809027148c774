//! End-to-end tests of `wagate-rest`: a gateway with its simulator
//! in-process on loopback port 0, the shim in front of it, webhook receivers
//! on port 0, everything in temp dirs.

mod browser;
mod common;
mod console;
mod delivery;
mod errors;
mod flows;
mod groups;
mod https;
mod lifecycle;
mod limits;
mod media;
mod ops;
mod push_name;
mod redis_limit;
