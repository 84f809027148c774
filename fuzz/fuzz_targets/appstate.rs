//! Arbitrary bytes as app-state input: as the bytes of one patch in a
//! `w:sync:app:state` answer, as a whole answer node, and as a snapshot
//! blob; every patch and snapshot read is decoded against a known key with
//! every MAC checked, and every mutation read as an action. Nothing may
//! panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wagate::wa::appstate::{
    decode_patch, decode_snapshot, parse_snapshot, parse_sync, CollectionState, MutationKeys,
    CRITICAL_BLOCK,
};
use wagate::wa::binary::{Node, TokenDict};

fn decode_all(node: &Node, keys: &MutationKeys) {
    if let Ok(collections) = parse_sync(node) {
        let mut state = CollectionState::default();
        for c in &collections {
            for patch in &c.patches {
                if let Ok(mutations) = decode_patch(&c.name, &mut state, patch, |_| Some(keys)) {
                    for m in &mutations {
                        let _ = m.action();
                    }
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = MutationKeys::expand(&[3; 32]);
    let answer = Node::new("iq").children(vec![Node::new("sync").children(vec![Node::new(
        "collection",
    )
    .attr("name", CRITICAL_BLOCK)
    .attr("version", "0")
    .children(vec![
        Node::new("patches").children(vec![Node::new("patch").bytes(data.to_vec())])
    ])])]);
    decode_all(&answer, &keys);
    if let Ok(node) = TokenDict::V3.decode(data) {
        decode_all(&node, &keys);
    }
    if let Ok(snapshot) = parse_snapshot(data) {
        if let Ok((_, mutations)) = decode_snapshot(CRITICAL_BLOCK, &snapshot, |_| Some(&keys)) {
            for m in &mutations {
                let _ = m.action();
            }
        }
    }
});
