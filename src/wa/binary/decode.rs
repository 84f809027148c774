//! Bytes → node. Never panics: every read is bounds-checked, nesting is
//! capped at [`MAX_DEPTH`], and no list or buffer is sized from a length
//! field before the input is known to be long enough to fill it.

use std::borrow::Cow;

use super::encode::{DOMAIN_HOSTED, DOMAIN_HOSTED_LID, DOMAIN_LID};
use super::node::{AttrValue, Content, Node};
use super::token::{tag, TokenDict};
use super::DecodeError;
use crate::wa::jid::{
    Jid, DEFAULT_USER_SERVER, HOSTED_LID_SERVER, HOSTED_SERVER, INTEROP_SERVER, LID_SERVER,
    MESSENGER_SERVER,
};

/// Deepest nesting accepted; real stanzas stay under 10 levels.
pub const MAX_DEPTH: usize = 64;

/// Smallest encoded node (`F8 01 <token>`), to bound child counts.
const MIN_NODE_LEN: usize = 3;
/// Smallest encoded attribute (two single-byte tokens).
const MIN_ATTR_LEN: usize = 2;
/// Most list entries reserved up front. Counts are checked against the
/// remaining input, but nested lists could each claim most of it before any
/// entry is read; past this, vectors grow as entries actually decode.
const PREALLOC_MAX: usize = 64;

pub(super) fn decode_node(dict: TokenDict, data: &[u8]) -> Result<Node, DecodeError> {
    let mut d = Decoder { dict, data, pos: 0 };
    let node = d.node(0)?;
    match data.len() - d.pos {
        0 => Ok(node),
        count => Err(DecodeError::TrailingBytes { count }),
    }
}

struct Decoder<'a> {
    dict: TokenDict,
    data: &'a [u8],
    pos: usize,
}

/// A string as it sits on the wire, converted only once its use is known.
enum Text<'a> {
    Token(&'static str),
    Packed(String),
    Raw(&'a [u8]),
}

/// A string or JID: what may stand as an attribute value or as content.
enum Value<'a> {
    Text(Text<'a>),
    Jid(Jid),
}

impl<'a> Decoder<'a> {
    fn truncated(&self) -> DecodeError {
        DecodeError::Truncated { at: self.pos }
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.data.get(self.pos).ok_or_else(|| self.truncated())?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| self.truncated())?;
        let s = self
            .data
            .get(self.pos..end)
            .ok_or_else(|| self.truncated())?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        s.try_into().map_err(|_| self.truncated())
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn list_size(&mut self, tag: u8) -> Result<usize, DecodeError> {
        match tag {
            tag::LIST_EMPTY => Ok(0),
            tag::LIST_8 => Ok(usize::from(self.byte()?)),
            tag::LIST_16 => Ok(usize::from(u16::from_be_bytes(self.array()?))),
            other => Err(DecodeError::UnexpectedTag {
                tag: other,
                at: self.pos - 1,
                expected: "a list",
            }),
        }
    }

    fn binary_len(&mut self, tag: u8) -> Result<Option<usize>, DecodeError> {
        Ok(Some(match tag {
            tag::BINARY_8 => usize::from(self.byte()?),
            tag::BINARY_20 => {
                let [a, b, c] = self.array()?;
                (usize::from(a & 0x0F) << 16) | (usize::from(b) << 8) | usize::from(c)
            }
            tag::BINARY_32 => {
                let n = u32::from_be_bytes(self.array()?);
                usize::try_from(n).map_err(|_| self.truncated())?
            }
            _ => return Ok(None),
        }))
    }

    fn node(&mut self, depth: usize) -> Result<Node, DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep { limit: MAX_DEPTH });
        }
        let start = self.pos;
        let list_tag = self.byte()?;
        let size = self.list_size(list_tag)?;
        if size == 0 {
            return Err(DecodeError::EmptyNode { at: start });
        }
        let node_tag = self.key()?;
        if node_tag.is_empty() {
            return Err(DecodeError::EmptyTag { at: start });
        }
        let nattrs = (size - 1) / 2;
        if nattrs > self.remaining() / MIN_ATTR_LEN {
            return Err(self.truncated());
        }
        let mut attrs = Vec::with_capacity(nattrs.min(PREALLOC_MAX));
        for _ in 0..nattrs {
            let key = self.key()?;
            let value = self.attr_value()?;
            attrs.push((key, value));
        }
        let content = if size % 2 == 0 {
            self.content(depth)?
        } else {
            Content::None
        };
        Ok(Node {
            tag: node_tag,
            attrs,
            content,
        })
    }

    fn content(&mut self, depth: usize) -> Result<Content, DecodeError> {
        let t = self.byte()?;
        match t {
            tag::LIST_EMPTY | tag::LIST_8 | tag::LIST_16 => {
                let n = self.list_size(t)?;
                if n > self.remaining() / MIN_NODE_LEN {
                    return Err(self.truncated());
                }
                let mut children = Vec::with_capacity(n.min(PREALLOC_MAX));
                for _ in 0..n {
                    children.push(self.node(depth + 1)?);
                }
                Ok(Content::Nodes(children))
            }
            _ => {
                if let Some(len) = self.binary_len(t)? {
                    return Ok(Content::Bytes(self.take(len)?.to_vec()));
                }
                match self.value_after(t)? {
                    Value::Text(text) => Ok(Content::Str(self.owned(text)?)),
                    Value::Jid(jid) => Ok(Content::Jid(jid)),
                }
            }
        }
    }

    /// A string or JID after tag byte `t`.
    fn value_after(&mut self, t: u8) -> Result<Value<'a>, DecodeError> {
        let at = self.pos - 1;
        Ok(match t {
            tag::JID_PAIR => {
                let user = self.jid_part()?;
                let server = self.jid_server()?;
                if server.is_empty() {
                    return Err(DecodeError::EmptyServer { at });
                }
                Value::Jid(Jid::new(user, server))
            }
            tag::AD_JID => {
                let [domain, device] = self.array()?;
                let user = self.jid_part()?;
                let (server, agent) = match domain {
                    DOMAIN_LID => (LID_SERVER, 0),
                    DOMAIN_HOSTED => (HOSTED_SERVER, 0),
                    DOMAIN_HOSTED_LID => (HOSTED_LID_SERVER, 0),
                    agent => (DEFAULT_USER_SERVER, agent),
                };
                let mut jid = Jid::with_device(user, u16::from(device), server);
                jid.agent = agent;
                Value::Jid(jid)
            }
            tag::FB_JID => {
                let user = self.jid_part()?;
                let device = u16::from_be_bytes(self.array()?);
                self.expect_server(MESSENGER_SERVER, at)?;
                Value::Jid(Jid::with_device(user, device, MESSENGER_SERVER))
            }
            tag::INTEROP_JID => {
                let user = self.jid_part()?;
                let device = u16::from_be_bytes(self.array()?);
                let integrator = u16::from_be_bytes(self.array()?);
                self.expect_server(INTEROP_SERVER, at)?;
                let mut jid = Jid::with_device(user, device, INTEROP_SERVER);
                jid.integrator = integrator;
                Value::Jid(jid)
            }
            _ => Value::Text(self.text_after(t)?),
        })
    }

    /// A plain string after tag byte `t`. JID and list tags are refused
    /// before anything after them is read: JID parts are strings, so JIDs
    /// never nest and this recursion stays one level deep.
    fn text_after(&mut self, t: u8) -> Result<Text<'a>, DecodeError> {
        let at = self.pos - 1;
        Ok(match t {
            tag::LIST_EMPTY => Text::Token(""),
            tag::DICTIONARY_0..=tag::DICTIONARY_3 => {
                let index = self.byte()?;
                let token = self
                    .dict
                    .double(t - tag::DICTIONARY_0, index)
                    .ok_or(DecodeError::UnknownToken { tag: t, at })?;
                Text::Token(token)
            }
            tag::BINARY_8 | tag::BINARY_20 | tag::BINARY_32 => {
                let len = self.binary_len(t)?.unwrap_or(0);
                Text::Raw(self.take(len)?)
            }
            tag::NIBBLE_8 => Text::Packed(self.packed(t, &NIBBLE_PAIRS)?),
            tag::HEX_8 => Text::Packed(self.packed(t, &HEX_PAIRS)?),
            tag::LIST_8
            | tag::LIST_16
            | tag::JID_PAIR
            | tag::AD_JID
            | tag::FB_JID
            | tag::INTEROP_JID => return Err(DecodeError::NotAString { at }),
            single => Text::Token(
                self.dict
                    .single(single)
                    .ok_or(DecodeError::UnknownToken { tag: single, at })?,
            ),
        })
    }

    fn packed(&mut self, t: u8, pairs_of: &[[u8; 2]; 256]) -> Result<String, DecodeError> {
        let at = self.pos - 1;
        let header = self.byte()?;
        let bytes = self.take(usize::from(header & 0x7F))?;
        let odd = header & 0x80 != 0;
        let bad = || DecodeError::BadPacked { tag: t, at };
        let Some((&last, body)) = bytes.split_last() else {
            return if odd { Err(bad()) } else { Ok(String::new()) };
        };
        let mut text = Vec::with_capacity(2 * bytes.len());
        let mut valid = true;
        for &b in body {
            let pair = pairs_of[usize::from(b)];
            valid &= (pair[0] != 0) & (pair[1] != 0);
            text.extend_from_slice(&pair);
        }
        let pair = pairs_of[usize::from(last)];
        // The low nibble of an odd-length string's last byte is filler.
        valid &= pair[0] != 0 && (odd || pair[1] != 0);
        text.extend_from_slice(if odd { &pair[..1] } else { &pair });
        if !valid {
            return Err(bad());
        }
        // Both alphabets are ASCII, so this cannot fail.
        String::from_utf8(text).map_err(|_| bad())
    }

    /// A string that must not be a JID or list: tags, keys.
    fn key(&mut self) -> Result<Cow<'static, str>, DecodeError> {
        let t = self.byte()?;
        // Nearly every tag and key is a single-byte token.
        if let Some(s) = self.dict.single(t) {
            return Ok(Cow::Borrowed(s));
        }
        match self.text_after(t)? {
            Text::Token(s) => Ok(Cow::Borrowed(s)),
            text => self.owned(text).map(Cow::Owned),
        }
    }

    fn jid_part(&mut self) -> Result<String, DecodeError> {
        let t = self.byte()?;
        let text = self.text_after(t)?;
        self.owned(text)
    }

    /// A JID's server: nearly always a token, kept borrowed.
    fn jid_server(&mut self) -> Result<Cow<'static, str>, DecodeError> {
        let t = self.byte()?;
        match self.text_after(t)? {
            Text::Token(s) => Ok(Cow::Borrowed(s)),
            text => self.owned(text).map(Cow::Owned),
        }
    }

    fn expect_server(&mut self, expected: &'static str, at: usize) -> Result<(), DecodeError> {
        let server = self.jid_part()?;
        if server == expected {
            Ok(())
        } else {
            Err(DecodeError::WrongServer {
                expected,
                found: server,
                at,
            })
        }
    }

    fn attr_value(&mut self) -> Result<AttrValue, DecodeError> {
        let t = self.byte()?;
        if let Some(s) = self.dict.single(t) {
            return Ok(AttrValue::Str(Cow::Borrowed(s)));
        }
        match self.value_after(t)? {
            Value::Text(Text::Token(s)) => Ok(AttrValue::Str(Cow::Borrowed(s))),
            Value::Text(text) => self.owned(text).map(|s| AttrValue::Str(Cow::Owned(s))),
            Value::Jid(jid) => Ok(AttrValue::Jid(jid)),
        }
    }

    fn owned(&self, text: Text<'_>) -> Result<String, DecodeError> {
        match text {
            Text::Token(s) => Ok(s.to_owned()),
            Text::Packed(s) => Ok(s),
            Text::Raw(b) => {
                std::str::from_utf8(b)
                    .map(str::to_owned)
                    .map_err(|_| DecodeError::InvalidUtf8 {
                        at: self.pos - b.len(),
                    })
            }
        }
    }
}

/// Packed byte → its two characters; 0 marks a nibble that is not a
/// character (nibble values 0xC..=0xF).
static NIBBLE_PAIRS: [[u8; 2]; 256] = pairs(b"0123456789-.\0\0\0\0");
static HEX_PAIRS: [[u8; 2]; 256] = pairs(b"0123456789ABCDEF");

const fn pairs(alphabet: &[u8; 16]) -> [[u8; 2]; 256] {
    let mut t = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [alphabet[b >> 4], alphabet[b & 0x0F]];
        b += 1;
    }
    t
}
