//! The WhatsApp Web protocol core, sans-IO: bytes, time and randomness in;
//! frames, events and state to persist out. Must not import tokio, the store,
//! the clock or `sim`.

pub mod adv;
pub mod appstate;
pub mod binary;
pub mod compose;
pub mod conn;
pub mod content;
pub mod creds;
pub mod crypto;
pub mod groups;
pub mod history;
pub mod jid;
pub mod link_code;
pub mod media;
pub mod message;
pub mod messaging;
pub mod noise;
pub mod pairing;
pub mod payload;
pub mod prekeys;
pub mod presence;
pub mod qr;
pub mod signal;
pub mod usync;
