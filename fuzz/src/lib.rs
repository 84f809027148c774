//! Oracles shared by the fuzz targets.

use wagate::wa::binary::{AttrValue, Content, Node};

/// What `decode(encode(node))` gives for a node that came out of the
/// decoder: the encoder leaves out empty attribute values, everything else
/// encodes back to itself.
pub fn without_empty_attrs(mut node: Node) -> Node {
    node.attrs
        .retain(|(_, v)| !matches!(v, AttrValue::Str(s) if s.is_empty()));
    if let Content::Nodes(children) = node.content {
        node.content = Content::Nodes(children.into_iter().map(without_empty_attrs).collect());
    }
    node
}
