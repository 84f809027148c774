//! Node → bytes. Total: every [`Node`] encodes; see [`super::encode`] for the
//! rules and for what happens beyond the wire's size limits.

use super::node::{AttrValue, Content, Node};
use super::token::{tag, Token, TokenDict, PACKED_MAX};
use crate::wa::jid::{
    Jid, DEFAULT_USER_SERVER, HOSTED_LID_SERVER, HOSTED_SERVER, INTEROP_SERVER, LID_SERVER,
    MESSENGER_SERVER,
};

/// AD_JID domain bytes.
pub(super) const DOMAIN_LID: u8 = 0x01;
pub(super) const DOMAIN_HOSTED: u8 = 0x80;
pub(super) const DOMAIN_HOSTED_LID: u8 = 0x81;

pub(super) fn encode_node(dict: TokenDict, node: &Node, out: &mut Vec<u8>) {
    Encoder { dict, out }.node(node);
}

struct Encoder<'a> {
    dict: TokenDict,
    out: &'a mut Vec<u8>,
}

/// The attributes that go on the wire: empty strings are left out, like
/// WhatsApp's clients do, so "absent" and "empty" read the same.
fn sent(value: &AttrValue) -> bool {
    !matches!(value, AttrValue::Str(s) if s.is_empty())
}

/// A list header holds at most 0xFFFF entries; a node's entries are its tag,
/// two per attribute and one for content, so at most 0x7FFF attributes fit.
const MAX_ATTRS: usize = 0x7FFE;
const MAX_LIST: usize = 0xFFFF;

impl Encoder<'_> {
    fn node(&mut self, node: &Node) {
        let attrs = node.attrs.iter().filter(|(_, v)| sent(v)).take(MAX_ATTRS);
        let count = attrs.clone().count();
        let has_content = usize::from(!matches!(node.content, Content::None));
        self.list_start(1 + 2 * count + has_content);
        self.string(&node.tag);
        for (k, v) in attrs {
            self.string(k);
            match v {
                AttrValue::Str(s) => self.string(s),
                AttrValue::Jid(jid) => self.jid(jid),
            }
        }
        match &node.content {
            Content::None => {}
            Content::Nodes(children) => {
                let children = &children[..children.len().min(MAX_LIST)];
                self.list_start(children.len());
                for child in children {
                    self.node(child);
                }
            }
            Content::Bytes(b) => self.binary(b),
            Content::Str(s) => self.string(s),
            Content::Jid(jid) => self.jid(jid),
        }
    }

    fn list_start(&mut self, size: usize) {
        match size {
            0 => self.out.push(tag::LIST_EMPTY),
            1..=0xFF => self.out.extend_from_slice(&[tag::LIST_8, size as u8]),
            _ => {
                let size = u16::try_from(size).unwrap_or(u16::MAX);
                self.out.push(tag::LIST_16);
                self.out.extend_from_slice(&size.to_be_bytes());
            }
        }
    }

    /// Token, then packed nibbles, then packed hex, then raw bytes. Strings
    /// are never parsed as JIDs: a JID is sent only when it is typed as one.
    fn string(&mut self, s: &str) {
        match self.dict.lookup(s) {
            Some(Token::Single(i)) => self.out.push(i),
            Some(Token::Double { dict, index }) => self
                .out
                .extend_from_slice(&[tag::DICTIONARY_0 + dict, index]),
            None => {
                let bytes = s.as_bytes();
                if bytes.len() <= PACKED_MAX {
                    if bytes.iter().all(|&b| nibble(b).is_some()) {
                        return self.packed(tag::NIBBLE_8, bytes, nibble);
                    }
                    if bytes.iter().all(|&b| hex(b).is_some()) {
                        return self.packed(tag::HEX_8, bytes, hex);
                    }
                }
                self.binary(bytes);
            }
        }
    }

    fn packed(&mut self, kind: u8, s: &[u8], pack: fn(u8) -> Option<u8>) {
        // Callers checked that every byte packs; 0xF is the filler nibble of
        // an odd-length string.
        let value = |b: u8| pack(b).unwrap_or(0x0F);
        let odd = s.len() % 2;
        let header = (s.len().div_ceil(2) as u8) | ((odd as u8) << 7);
        self.out.reserve(2 + s.len().div_ceil(2));
        self.out.push(kind);
        self.out.push(header);
        let mut pairs = s.chunks_exact(2);
        for pair in &mut pairs {
            if let [a, b] = pair {
                self.out.push((value(*a) << 4) | value(*b));
            }
        }
        if let [last] = pairs.remainder() {
            self.out.push((value(*last) << 4) | 0x0F);
        }
    }

    fn binary(&mut self, b: &[u8]) {
        // BINARY_32 carries at most u32::MAX bytes; frames are capped at
        // 16 MiB long before that, so a longer value is cut rather than
        // written with a wrapped length.
        let b = &b[..b.len().min(u32::MAX as usize)];
        let len = b.len();
        if len < 0x100 {
            self.out.extend_from_slice(&[tag::BINARY_8, len as u8]);
        } else if len < 0x10_0000 {
            self.out.extend_from_slice(&[
                tag::BINARY_20,
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
            ]);
        } else {
            self.out.push(tag::BINARY_32);
            self.out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        self.out.extend_from_slice(b);
    }

    fn jid(&mut self, jid: &Jid) {
        let server = jid.server.as_str();
        let ad_domain = match server {
            // The domain byte doubles as the agent for s.whatsapp.net; an agent
            // equal to another server's domain cannot be told apart from it,
            // so it is dropped.
            DEFAULT_USER_SERVER if jid.device > 0 || jid.agent != 0 => match jid.agent {
                DOMAIN_LID | DOMAIN_HOSTED | DOMAIN_HOSTED_LID => Some(0),
                agent => Some(agent),
            },
            LID_SERVER if jid.device > 0 || jid.agent != 0 => Some(DOMAIN_LID),
            HOSTED_SERVER => Some(DOMAIN_HOSTED),
            HOSTED_LID_SERVER => Some(DOMAIN_HOSTED_LID),
            _ => None,
        };
        if let Some(domain) = ad_domain {
            // AD_JID has one byte for the device; WhatsApp device ids are
            // small (companions count up from 1), so a larger one is clamped.
            let device = u8::try_from(jid.device).unwrap_or(u8::MAX);
            self.out.extend_from_slice(&[tag::AD_JID, domain, device]);
            self.string(&jid.user);
        } else if server == MESSENGER_SERVER {
            self.out.push(tag::FB_JID);
            self.string(&jid.user);
            self.out.extend_from_slice(&jid.device.to_be_bytes());
            self.string(server);
        } else if server == INTEROP_SERVER {
            self.out.push(tag::INTEROP_JID);
            self.string(&jid.user);
            self.out.extend_from_slice(&jid.device.to_be_bytes());
            self.out.extend_from_slice(&jid.integrator.to_be_bytes());
            self.string(server);
        } else {
            self.out.push(tag::JID_PAIR);
            if jid.user.is_empty() {
                self.out.push(tag::LIST_EMPTY);
            } else {
                self.string(&jid.user);
            }
            self.string(server);
        }
    }
}

/// Nibble alphabet: digits, '-' = 0xA, '.' = 0xB.
pub(super) fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'-' => Some(0x0A),
        b'.' => Some(0x0B),
        _ => None,
    }
}

/// Hex alphabet: digits and upper-case A-F only (lower case would not come
/// back the same).
pub(super) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 0x0A),
        _ => None,
    }
}
