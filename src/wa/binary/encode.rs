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
                    // One pass decides both alphabets.
                    let mut class = NIBBLE | HEX;
                    for &b in bytes {
                        class &= CLASS[usize::from(b)];
                        if class == 0 {
                            break;
                        }
                    }
                    if class & NIBBLE != 0 {
                        return self.packed(tag::NIBBLE_8, bytes, &NIBBLE_VALUE);
                    }
                    if class & HEX != 0 {
                        return self.packed(tag::HEX_8, bytes, &HEX_VALUE);
                    }
                }
                self.binary(bytes);
            }
        }
    }

    /// `s` is at most [`PACKED_MAX`] bytes, all in `values`' alphabet.
    fn packed(&mut self, kind: u8, s: &[u8], values: &[u8; 256]) {
        let value = |b: u8| values[usize::from(b)];
        let odd = s.len() % 2;
        let mut buf = [0u8; 2 + PACKED_MAX.div_ceil(2)];
        let len = 2 + s.len().div_ceil(2);
        let (head, body) = buf.split_at_mut(2);
        head.copy_from_slice(&[kind, (s.len().div_ceil(2) as u8) | ((odd as u8) << 7)]);
        let mut pairs = s.chunks_exact(2);
        let mut out = body.iter_mut();
        // `pairs` first: zip stops on it without taking a slot from `out`.
        for (pair, slot) in (&mut pairs).zip(&mut out) {
            if let [a, b] = pair {
                *slot = (value(*a) << 4) | value(*b);
            }
        }
        // 0xF is the filler nibble of an odd-length string.
        if let ([last], Some(slot)) = (pairs.remainder(), out.next()) {
            *slot = (value(*last) << 4) | 0x0F;
        }
        self.out.extend_from_slice(buf.get(..len).unwrap_or(&buf));
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
        let server: &str = &jid.server;
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

const INVALID: u8 = 0xFF;
const NIBBLE: u8 = 0x01;
const HEX: u8 = 0x02;

/// Which packed alphabets each byte belongs to.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        if NIBBLE_VALUE[b] != INVALID {
            t[b] |= NIBBLE;
        }
        if HEX_VALUE[b] != INVALID {
            t[b] |= HEX;
        }
        b += 1;
    }
    t
};

/// Nibble alphabet: digits, '-' = 0xA, '.' = 0xB; [`INVALID`] elsewhere.
pub(super) static NIBBLE_VALUE: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut d = 0;
    while d < 10 {
        t[b'0' as usize + d] = d as u8;
        d += 1;
    }
    t[b'-' as usize] = 0x0A;
    t[b'.' as usize] = 0x0B;
    t
};

/// Hex alphabet: digits and upper-case A-F only (lower case would not come
/// back the same); [`INVALID`] elsewhere.
pub(super) static HEX_VALUE: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut d = 0;
    while d < 16 {
        let c = if d < 10 {
            b'0' + d as u8
        } else {
            b'A' + d as u8 - 10
        };
        t[c as usize] = d as u8;
        d += 1;
    }
    t
};
