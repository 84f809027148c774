//! `wagate-rest`: serves the REST endpoints and webhooks of the Node WhatsApp
//! gateways that wagate replaces (Venom multi-tenant, whatsapp-web.js
//! multi-session and its production variant, the Baileys "WhatsApp QR
//! Service", Baileys-WS multi-session) on top of a wagate gateway, which it
//! reaches only over gRPC.
//!
//! Layout: `config` (flags and env), `gateway` (the gRPC client), `routes`
//! (one module per gateway family, assembled by `server`), `webhook` (delivery
//! of the `Events` stream as each family's webhooks), `state` (what the shim
//! itself must remember: per-session settings and delivery cursors).

pub mod config;
pub mod error;
pub mod gateway;
pub mod proto;
pub mod server;
pub mod state;

mod auth;
mod body;
mod console;
mod cors;
mod limit;
mod media;
mod memory;
mod openapi;
mod qr;
mod redis;
mod routes;
mod time;
mod webhook;

pub use config::{Config, Dialect, Family};
pub use server::{start, Running, StartError};
