//! WhatsApp's binary XML ("binary node") codec: the plaintext of every frame
//! after the Noise handshake. Sans-IO; must not import tokio, the store or
//! the clock.
//!
//! Encoding follows WhatsApp's own clients (whatsmeow's rules):
//! - strings (attribute values, string content, tags, keys) are written as a
//!   single-byte token, a double-byte token, NIBBLE_8 (`0-9 - .`, at most 127
//!   chars), HEX_8 (`0-9 A-F`, at most 127 chars), else raw BINARY_8/20/32.
//!   A string is never parsed as a JID; only [`AttrValue::Jid`] and
//!   [`Content::Jid`] are sent as JIDs.
//! - JIDs are JID_PAIR (empty user as LIST_EMPTY), or AD_JID for a device
//!   (`device > 0` or `agent != 0`) of `s.whatsapp.net` / `lid` and always
//!   for `hosted` / `hosted.lid`, FB_JID for `msgr`, INTEROP_JID for
//!   `interop`.
//! - [`Content::Bytes`] is always BINARY_8/20/32.
//! - attributes whose value is an empty string are left out.
//!
//! Decoding turns tokens, packed strings and raw strings in attributes into
//! [`AttrValue::Str`], every JID form into a [`Jid`](crate::wa::jid::Jid), BINARY content into
//! [`Content::Bytes`] and an empty child list into `Content::Nodes(vec![])`.
//!
//! `decode(encode(n)) == n` holds for every node with a non-empty tag, except
//! for these canonicalisations: string content that is neither a token nor
//! packable comes back as [`Content::Bytes`] (raw strings and binary data
//! share BINARY_x on the wire; [`Node::content_str`] reads either), which
//! includes decoded packed strings of 128 to 254 characters (valid on the
//! wire, never produced by WhatsApp's encoders, which pack at most 127);
//! empty attribute values disappear; a JID's `agent` survives only on
//! `s.whatsapp.net` (and not when it equals a domain byte, 0x01/0x80/0x81),
//! its `device` only up to 255 in AD_JID form and only where the server has
//! a device form; `integrator` only on `interop`; and absurd sizes (over
//! 0xFFFF children, 0x7FFE attributes, 4 GiB of data) are cut to the wire's
//! limits.

mod decode;
mod encode;
mod node;
mod token;

use std::io::Read;

pub use decode::MAX_DEPTH;
pub use node::{AttrValue, Content, Node};
pub use token::TokenDict;

/// Largest inflated frame accepted: the size of the largest frame.
pub const MAX_INFLATED_LEN: usize = 16 << 20;

/// Frame flag bit: the rest of the frame is zlib-compressed.
const FLAG_COMPRESSED: u8 = 0x02;

/// Why bytes are not a node. Positions are byte offsets into the (inflated)
/// node data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("input ends early (at byte {at})")]
    Truncated { at: usize },
    #[error("{count} bytes left over after the node")]
    TrailingBytes { count: usize },
    #[error("tag 0x{tag:02x} at byte {at} where {expected} was expected")]
    UnexpectedTag {
        tag: u8,
        at: usize,
        expected: &'static str,
    },
    #[error("unknown token 0x{tag:02x} at byte {at}")]
    UnknownToken { tag: u8, at: usize },
    #[error("node at byte {at} has an empty list header")]
    EmptyNode { at: usize },
    #[error("node at byte {at} has an empty tag")]
    EmptyTag { at: usize },
    #[error("a JID or list at byte {at} where a string was expected")]
    NotAString { at: usize },
    #[error("JID at byte {at} has an empty server")]
    EmptyServer { at: usize },
    #[error("JID at byte {at}: server {found:?}, expected {expected:?}")]
    WrongServer {
        expected: &'static str,
        found: String,
        at: usize,
    },
    #[error("bad packed string (tag 0x{tag:02x}) at byte {at}")]
    BadPacked { tag: u8, at: usize },
    #[error("string ending at byte {at} is not UTF-8")]
    InvalidUtf8 { at: usize },
    #[error("nodes nested deeper than {limit}")]
    TooDeep { limit: usize },
    #[error("empty frame")]
    EmptyFrame,
    #[error("compressed frame does not inflate: {0}")]
    Inflate(String),
    #[error("compressed frame inflates past {limit} bytes")]
    InflatedTooLarge { limit: usize },
}

impl TokenDict {
    /// The node alone, without the frame flag byte.
    pub fn encode(self, node: &Node) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(node, &mut out);
        out
    }

    /// Appends the encoded node to `out`.
    pub fn encode_into(self, node: &Node, out: &mut Vec<u8>) {
        encode::encode_node(self, node, out);
    }

    /// One node filling all of `data`; trailing bytes are an error.
    pub fn decode(self, data: &[u8]) -> Result<Node, DecodeError> {
        decode::decode_node(self, data)
    }

    /// Frame plaintext: flag byte 0x00 (uncompressed), then the node.
    pub fn marshal(self, node: &Node) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(0x00);
        self.encode_into(node, &mut out);
        out
    }

    /// Frame plaintext → node: inflates when the flag has bit 0x02 (at most
    /// [`MAX_INFLATED_LEN`] bytes), then decodes.
    pub fn unmarshal(self, frame: &[u8]) -> Result<Node, DecodeError> {
        let (&flag, body) = frame.split_first().ok_or(DecodeError::EmptyFrame)?;
        if flag & FLAG_COMPRESSED == 0 {
            return self.decode(body);
        }
        let mut inflated = Vec::new();
        flate2::read::ZlibDecoder::new(body)
            .take(MAX_INFLATED_LEN as u64 + 1)
            .read_to_end(&mut inflated)
            .map_err(|e| DecodeError::Inflate(e.to_string()))?;
        if inflated.len() > MAX_INFLATED_LEN {
            return Err(DecodeError::InflatedTooLarge {
                limit: MAX_INFLATED_LEN,
            });
        }
        self.decode(&inflated)
    }
}

/// [`TokenDict::encode`] with the current dictionary.
pub fn encode(node: &Node) -> Vec<u8> {
    TokenDict::CURRENT.encode(node)
}

/// [`TokenDict::encode_into`] with the current dictionary.
pub fn encode_into(node: &Node, out: &mut Vec<u8>) {
    TokenDict::CURRENT.encode_into(node, out);
}

/// [`TokenDict::decode`] with the current dictionary.
pub fn decode(data: &[u8]) -> Result<Node, DecodeError> {
    TokenDict::CURRENT.decode(data)
}

/// [`TokenDict::marshal`] with the current dictionary.
pub fn marshal(node: &Node) -> Vec<u8> {
    TokenDict::CURRENT.marshal(node)
}

/// [`TokenDict::unmarshal`] with the current dictionary.
pub fn unmarshal(frame: &[u8]) -> Result<Node, DecodeError> {
    TokenDict::CURRENT.unmarshal(frame)
}

#[cfg(test)]
mod tests;
