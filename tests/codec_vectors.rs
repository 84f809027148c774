//! The binary node codec against Baileys, both ways: Baileys' encodings
//! (tests/vectors/codec/baileys.json, made by tests/interop/codec-gen-vectors.js)
//! must decode to the trees Baileys reads from them, our encodings of those
//! trees must match Baileys' bytes except where WhatsApp's rules differ from
//! Baileys', and Baileys must read our encodings back as the same trees.
//!
//! The installed Baileys (6.17 on npm) speaks token dictionary 2. Needs node;
//! installs tests/interop/node_modules on first use and fails without node.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};
use wagate::wa::binary::{AttrValue, Content, Node, TokenDict};
use wagate::wa::jid::Jid;

const DICT: TokenDict = TokenDict::V2;

/// Vectors whose bytes we do not reproduce, and why.
const BYTE_DIFFERENCES: &[(&str, &str)] = &[
    (
        "ad-jid-device-0",
        "Baileys writes any `:device` JID as AD_JID, even device 0; WhatsApp's \
         clients write device 0 as a JID_PAIR",
    ),
    (
        "empty-attr",
        "Baileys sends an empty attribute value (as LIST_EMPTY); the encoder \
         leaves empty attributes out",
    ),
];

/// Vectors whose tree Baileys reads differently from our encoding.
const TREE_DIFFERENCES: &[&str] = &["empty-attr"];

struct Vector {
    name: String,
    wire: Vec<u8>,
    tree: Value,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn vectors_file() -> PathBuf {
    root().join("tests/vectors/codec/baileys.json")
}

fn load(path: &Path) -> Vec<Vector> {
    let text = std::fs::read_to_string(path).expect("vector file readable");
    let list: Value = serde_json::from_str(&text).expect("vector file is JSON");
    list.as_array()
        .expect("a list of vectors")
        .iter()
        .map(|v| Vector {
            name: v["name"].as_str().expect("name").to_owned(),
            wire: hex::decode(v["hex"].as_str().expect("hex")).expect("valid hex"),
            tree: v["tree"].clone(),
        })
        .collect()
}

/// A JID as Baileys prints it: `user[:device]@server`, `@server` when the
/// user is empty.
fn baileys_jid(jid: &Jid) -> String {
    match jid.device {
        0 => format!("{}@{}", jid.user, jid.server),
        d => format!("{}:{}@{}", jid.user, d, jid.server),
    }
}

fn tree_of(node: &Node) -> Value {
    let attrs: Vec<Value> = node
        .attrs
        .iter()
        .map(|(k, v)| {
            let v = match v {
                AttrValue::Str(s) => s.to_string(),
                AttrValue::Jid(jid) => baileys_jid(jid),
            };
            json!([k, v])
        })
        .collect();
    let content = match &node.content {
        Content::None => Value::Null,
        Content::Nodes(nodes) => Value::Array(nodes.iter().map(tree_of).collect()),
        Content::Bytes(b) => json!({ "bytes": hex::encode(b) }),
        Content::Str(s) => json!({ "str": s }),
        Content::Jid(jid) => json!({ "str": baileys_jid(jid) }),
    };
    json!({ "tag": node.tag(), "attrs": attrs, "content": content })
}

/// Baileys treats every string with an '@' as a JID; so does this reading
/// of its trees, so that both encoders are given the same node.
fn jid_like(s: &str) -> Option<Jid> {
    s.contains('@').then(|| s.parse().ok()).flatten()
}

fn node_of(tree: &Value) -> Node {
    let mut node = Node::new(tree["tag"].as_str().expect("tag").to_owned());
    for pair in tree["attrs"].as_array().expect("attrs") {
        let key = pair[0].as_str().expect("key").to_owned();
        let value = pair[1].as_str().expect("value");
        let value = match jid_like(value) {
            Some(jid) => AttrValue::Jid(jid),
            None => AttrValue::Str(value.to_owned().into()),
        };
        node.attrs.push((key.into(), value));
    }
    node.content = match &tree["content"] {
        Value::Null => Content::None,
        Value::Array(children) => Content::Nodes(children.iter().map(node_of).collect()),
        Value::Object(o) if o.contains_key("bytes") => {
            Content::Bytes(hex::decode(o["bytes"].as_str().expect("bytes")).expect("hex"))
        }
        Value::Object(o) => {
            let s = o["str"].as_str().expect("str");
            match jid_like(s) {
                Some(jid) => Content::Jid(jid),
                None => Content::Str(s.to_owned()),
            }
        }
        other => panic!("bad content {other}"),
    };
    node
}

fn interop_dir() -> PathBuf {
    root().join("tests/interop")
}

/// Runs tests/interop/ensure.sh once per test process (the script itself
/// serialises concurrent installs across processes).
fn ensure_node_modules() {
    static ENSURED: OnceLock<()> = OnceLock::new();
    ENSURED.get_or_init(|| {
        let status = Command::new("sh")
            .arg(interop_dir().join("ensure.sh"))
            .status()
            .expect("sh runs");
        assert!(
            status.success(),
            "tests/interop/ensure.sh failed (is node installed?)"
        );
    });
}

fn node_script(script: &str, arg: &Path) -> Vec<u8> {
    ensure_node_modules();
    let out = Command::new("node")
        .arg(interop_dir().join(script))
        .arg(arg)
        .output()
        .expect("node runs (install Node.js 20)");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn baileys_encodings_decode_to_baileys_trees() {
    let vectors = load(&vectors_file());
    assert!(vectors.len() >= 20, "vector file looks truncated");
    for v in &vectors {
        let node = DICT
            .decode(&v.wire)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(tree_of(&node), v.tree, "{}", v.name);
        // The same bytes as a frame.
        let mut frame = vec![0x00];
        frame.extend_from_slice(&v.wire);
        assert_eq!(DICT.unmarshal(&frame).as_ref(), Ok(&node), "{}", v.name);
    }
}

#[test]
fn our_encodings_match_baileys_bytes() {
    let mut differing = Vec::new();
    for v in load(&vectors_file()) {
        let ours = DICT.encode(&node_of(&v.tree));
        if ours != v.wire {
            differing.push(v.name.clone());
        }
    }
    let expected: Vec<String> = BYTE_DIFFERENCES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(
        differing, expected,
        "vectors whose bytes differ from Baileys'"
    );
}

#[test]
fn baileys_decodes_our_encodings_to_the_same_trees() {
    let vectors = load(&vectors_file());
    let input: Vec<Value> = vectors
        .iter()
        .map(|v| json!({ "name": v.name, "hex": hex::encode(DICT.encode(&node_of(&v.tree))) }))
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ours.json");
    std::fs::write(&path, serde_json::to_vec(&input).expect("JSON")).expect("write temp file");
    let output: Value = serde_json::from_slice(&node_script("codec-decode.js", &path))
        .expect("decoder prints JSON");
    let output = output.as_array().expect("a list");
    assert_eq!(output.len(), vectors.len());
    let mut differing = Vec::new();
    for (v, got) in vectors.iter().zip(output) {
        assert_eq!(got["name"], v.name.as_str());
        assert!(
            got.get("error").is_none(),
            "{}: Baileys failed: {}",
            v.name,
            got["error"]
        );
        if got["tree"] != v.tree {
            differing.push(v.name.as_str());
        }
    }
    assert_eq!(
        differing, TREE_DIFFERENCES,
        "trees Baileys reads differently"
    );
    // The one known difference is exactly the dropped empty attribute.
    let (v, got) = vectors
        .iter()
        .zip(output)
        .find(|(v, _)| v.name == "empty-attr")
        .expect("empty-attr vector");
    let mut without_empty = v.tree.clone();
    without_empty["attrs"]
        .as_array_mut()
        .expect("attrs")
        .retain(|pair| pair[1] != "");
    assert_eq!(got["tree"], without_empty);
}

#[test]
fn vectors_are_what_baileys_produces() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("baileys.json");
    node_script("codec-gen-vectors.js", &path);
    let fresh = std::fs::read(&path).expect("generated vectors");
    let committed = std::fs::read(vectors_file()).expect("committed vectors");
    assert!(
        fresh == committed,
        "tests/vectors/codec/baileys.json is stale: run node tests/interop/codec-gen-vectors.js"
    );
}
