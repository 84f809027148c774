//! Oracles shared by the fuzz targets.

use wagate::wa::binary::{AttrValue, Content, Node};

/// Longest string the encoder packs (NIBBLE_8 / HEX_8).
const PACKED_MAX: usize = 0x7F;

/// What `decode(encode(node))` gives for a node that came out of the
/// decoder: the encoder leaves out empty attribute values, and writes packed
/// string content longer than it would pack itself (the wire allows 254
/// characters) as raw bytes, which decode as binary. Everything else encodes
/// back to itself.
pub fn reencoded(mut node: Node) -> Node {
    node.attrs
        .retain(|(_, v)| !matches!(v, AttrValue::Str(s) if s.is_empty()));
    node.content = match node.content {
        Content::Nodes(children) => Content::Nodes(children.into_iter().map(reencoded).collect()),
        Content::Str(s) if s.len() > PACKED_MAX => Content::Bytes(s.into_bytes()),
        other => other,
    };
    node
}
