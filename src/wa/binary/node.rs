//! The node tree of WhatsApp's binary XML: [`Node`], its attribute values and
//! its content, with builders, accessors and a compact text rendering.

use std::borrow::Cow;
use std::fmt;

use crate::wa::jid::Jid;

/// An attribute value: a string, or a JID (which has its own wire forms).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttrValue {
    /// Dictionary tokens decode borrowed from the static token table, so
    /// the common values (`message`, `receipt`, `read`, …) cost nothing.
    Str(Cow<'static, str>),
    Jid(Jid),
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        Self::Str(Cow::Owned(s.to_owned()))
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        Self::Str(Cow::Owned(s))
    }
}

impl From<&String> for AttrValue {
    fn from(s: &String) -> Self {
        Self::Str(Cow::Owned(s.clone()))
    }
}

impl From<Cow<'static, str>> for AttrValue {
    fn from(s: Cow<'static, str>) -> Self {
        Self::Str(s)
    }
}

impl From<Jid> for AttrValue {
    fn from(jid: Jid) -> Self {
        Self::Jid(jid)
    }
}

impl From<&Jid> for AttrValue {
    fn from(jid: &Jid) -> Self {
        Self::Jid(jid.clone())
    }
}

/// Numbers are sent as their decimal string.
macro_rules! attr_from_number {
    ($($t:ty),*) => {$(
        impl From<$t> for AttrValue {
            fn from(n: $t) -> Self {
                Self::Str(Cow::Owned(n.to_string()))
            }
        }
    )*};
}
attr_from_number!(u8, u16, u32, u64, usize, i32, i64);

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Str(s) => f.write_str(s),
            Self::Jid(jid) => jid.fmt(f),
        }
    }
}

/// What a node holds after its attributes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Content {
    /// Nothing (the node's list size is odd on the wire).
    #[default]
    None,
    /// Child nodes (possibly an empty list, which is not the same as `None`).
    Nodes(Vec<Node>),
    /// Binary data, always written as BINARY_8/20/32.
    Bytes(Vec<u8>),
    /// A string, written as a token, packed digits/hex or raw bytes.
    Str(String),
    Jid(Jid),
}

/// One element: a tag, ordered attributes and content.
///
/// Tags and attribute keys are `Cow<'static, str>` because nearly all of them
/// are dictionary tokens or literals, so neither building nor decoding a
/// typical stanza allocates for them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub tag: Cow<'static, str>,
    pub attrs: Vec<(Cow<'static, str>, AttrValue)>,
    pub content: Content,
}

impl Node {
    /// A node with no attributes and no content.
    pub fn new(tag: impl Into<Cow<'static, str>>) -> Self {
        Self {
            tag: tag.into(),
            attrs: Vec::new(),
            content: Content::None,
        }
    }

    /// Adds (or replaces) an attribute. Empty string values are kept here;
    /// the encoder leaves them out, as WhatsApp's own clients do.
    pub fn attr(mut self, key: impl Into<Cow<'static, str>>, value: impl Into<AttrValue>) -> Self {
        self.set_attr(key, value);
        self
    }

    /// Sets the content to these children.
    pub fn children(mut self, nodes: Vec<Node>) -> Self {
        self.content = Content::Nodes(nodes);
        self
    }

    /// Sets the content to binary data.
    pub fn bytes(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.content = Content::Bytes(data.into());
        self
    }

    /// Sets the content to a string.
    pub fn text(mut self, s: impl Into<String>) -> Self {
        self.content = Content::Str(s.into());
        self
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn attr_value(&self, key: &str) -> Option<&AttrValue> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value if it is a string (not a JID).
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        match self.attr_value(key)? {
            AttrValue::Str(s) => Some(s),
            AttrValue::Jid(_) => None,
        }
    }

    /// The value as a string, JIDs in their canonical form.
    pub fn attr_string(&self, key: &str) -> Option<String> {
        self.attr_value(key).map(ToString::to_string)
    }

    /// The value if it is a JID or a string that parses as one.
    pub fn attr_jid(&self, key: &str) -> Option<Jid> {
        match self.attr_value(key)? {
            AttrValue::Jid(jid) => Some(jid.clone()),
            AttrValue::Str(s) => s.parse().ok(),
        }
    }

    /// The value if it is a decimal string.
    pub fn attr_u64(&self, key: &str) -> Option<u64> {
        let s = self.attr_str(key)?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }

    /// The first child with this tag.
    pub fn child(&self, tag: &str) -> Option<&Node> {
        self.child_nodes().iter().find(|n| n.tag == tag)
    }

    /// All children with this tag, in order.
    pub fn children_by_tag<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.child_nodes().iter().filter(move |n| n.tag == tag)
    }

    /// The children; empty unless the content is [`Content::Nodes`].
    pub fn child_nodes(&self) -> &[Node] {
        match &self.content {
            Content::Nodes(nodes) => nodes,
            _ => &[],
        }
    }

    /// Binary content, or string content as its UTF-8 bytes.
    pub fn content_bytes(&self) -> Option<&[u8]> {
        match &self.content {
            Content::Bytes(b) => Some(b),
            Content::Str(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// String content, or binary content that is valid UTF-8.
    pub fn content_str(&self) -> Option<&str> {
        match &self.content {
            Content::Str(s) => Some(s),
            Content::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Replaces the value of `key`, or appends it.
    pub fn set_attr(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<AttrValue>) {
        let key = key.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.attrs.push((key, value)),
        }
    }
}

/// `<tag a="v">…</tag>`, with binary content shown as `<N bytes>`. For logs
/// and test failures, not a faithful XML serialisation.
impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}", self.tag)?;
        for (k, v) in &self.attrs {
            write!(f, " {k}=\"")?;
            match v {
                AttrValue::Str(s) => escaped(f, s, true)?,
                AttrValue::Jid(jid) => write!(f, "{jid}")?,
            }
            f.write_str("\"")?;
        }
        match &self.content {
            Content::None => return f.write_str("/>"),
            Content::Nodes(nodes) => {
                f.write_str(">")?;
                for n in nodes {
                    n.fmt(f)?;
                }
            }
            Content::Bytes(b) => write!(f, "><{} bytes>", b.len())?,
            Content::Str(s) => {
                f.write_str(">")?;
                escaped(f, s, false)?;
            }
            Content::Jid(jid) => write!(f, ">{jid}")?,
        }
        write!(f, "</{}>", self.tag)
    }
}

fn escaped(f: &mut fmt::Formatter<'_>, s: &str, in_attr: bool) -> fmt::Result {
    for c in s.chars() {
        match c {
            '&' => f.write_str("&amp;")?,
            '<' => f.write_str("&lt;")?,
            '"' if in_attr => f.write_str("&quot;")?,
            c => write!(f, "{c}")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_and_accessors() {
        let from = Jid::with_device("123", 4, "s.whatsapp.net");
        let node = Node::new("message")
            .attr("from", from.clone())
            .attr("id", "3EB0")
            .attr("t", 1_700_000_000u64)
            .attr("empty", "")
            .attr("pn", "5@s.whatsapp.net")
            .children(vec![
                Node::new("enc").attr("v", "2").bytes(vec![1, 2, 3]),
                Node::new("enc").attr("v", "3").text("hi"),
            ]);
        assert_eq!(node.tag(), "message");
        assert_eq!(node.attr_jid("from"), Some(from.clone()));
        assert_eq!(node.attr_str("from"), None);
        assert_eq!(
            node.attr_string("from").as_deref(),
            Some("123:4@s.whatsapp.net")
        );
        assert_eq!(node.attr_str("empty"), Some(""));
        assert_eq!(node.attr_u64("t"), Some(1_700_000_000));
        assert_eq!(node.attr_u64("id"), None);
        assert_eq!(node.attr_jid("pn"), Some(Jid::new("5", "s.whatsapp.net")));
        assert_eq!(node.attr_value("missing"), None);
        let enc = node.child("enc").expect("has enc");
        assert_eq!(enc.content_bytes(), Some(&[1u8, 2, 3][..]));
        assert_eq!(node.children_by_tag("enc").count(), 2);
        assert_eq!(node.child_nodes()[1].content_str(), Some("hi"));
        assert_eq!(node.child_nodes()[1].content_bytes(), Some(&b"hi"[..]));
        assert!(enc.child_nodes().is_empty());
        assert!(node.child("nope").is_none());
    }

    #[test]
    fn set_attr_replaces_in_place() {
        let mut node = Node::new("iq").attr("id", "1").attr("type", "get");
        node.set_attr("id", "2");
        node.set_attr("xmlns", "w:p");
        let keys: Vec<&str> = node.attrs.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["id", "type", "xmlns"]);
        assert_eq!(node.attr_str("id"), Some("2"));
    }

    #[test]
    fn display_is_compact() {
        let node = Node::new("iq")
            .attr("to", Jid::server_jid())
            .attr("q", "a\"<b")
            .children(vec![
                Node::new("ping"),
                Node::new("ref").bytes(vec![0; 20]),
                Node::new("t").text("x&y"),
            ]);
        assert_eq!(
            node.to_string(),
            r#"<iq to="s.whatsapp.net" q="a&quot;&lt;b"><ping/><ref><20 bytes></ref><t>x&amp;y</t></iq>"#
        );
    }
}
