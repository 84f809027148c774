//! wagate: a gRPC gateway running many WhatsApp Web multi-device sessions.
//!
//! Layers (arrow = may import): `wa` ← `store` ← `runtime` ← `api` ← `app` ←
//! binary; `sim` → `wa` only.

pub mod api;
pub mod app;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod proto;
pub mod runtime;
pub mod sim;
pub mod store;
pub mod streak;
pub mod telemetry;
pub mod wa;
