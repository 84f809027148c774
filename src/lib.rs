//! wagate: a gRPC gateway running many WhatsApp Web multi-device sessions.
//!
//! Layers (arrow = may import): `wa` ← `store` ← `runtime` ← `api` ← binary;
//! `sim` → `wa` only.

pub mod proto;
pub mod sim;
pub mod store;
pub mod wa;
