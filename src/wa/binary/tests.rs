use std::io::Write;

use proptest::prelude::*;

use super::*;
use crate::wa::jid::Jid;

fn v3(node: &Node) -> Vec<u8> {
    encode(node)
}

/// What `decode(encode(node))` gives for a node without empty attribute
/// values: string content written as raw bytes comes back as bytes.
fn canonical(dict: TokenDict, node: &Node) -> Node {
    let content = match &node.content {
        Content::Str(s) if is_raw(dict, s) => Content::Bytes(s.as_bytes().to_vec()),
        Content::Nodes(nodes) => Content::Nodes(nodes.iter().map(|n| canonical(dict, n)).collect()),
        other => other.clone(),
    };
    Node {
        content,
        ..node.clone()
    }
}

fn is_raw(dict: TokenDict, s: &str) -> bool {
    let packable = s.len() <= 127
        && (s
            .bytes()
            .all(|b| encode::NIBBLE_VALUE[usize::from(b)] != 0xFF)
            || s.bytes().all(|b| encode::HEX_VALUE[usize::from(b)] != 0xFF));
    dict.lookup(s).is_none() && !packable
}

fn roundtrip(node: &Node) -> Node {
    decode(&encode(node)).expect("own encoding decodes")
}

#[test]
fn stream_end_round_trips() {
    let end = Node::new("xmlstreamend");
    assert_eq!(v3(&end), [0xF8, 0x01, 0x02]);
    assert_eq!(marshal(&end), [0x00, 0xF8, 0x01, 0x02]);
    assert_eq!(unmarshal(&[0x00, 0xF8, 0x01, 0x02]), Ok(end.clone()));
    assert_eq!(TokenDict::V2.unmarshal(&[0x00, 0xF8, 0x01, 0x02]), Ok(end));
}

#[test]
fn iq_to_server_is_byte_exact() {
    let iq = Node::new("iq")
        .attr("to", Jid::server_jid())
        .attr("type", "get")
        .attr("id", "1A");
    // iq=0x19 to=0x11 type=0x04 get=0x29 id=0x08, server JID as JID_PAIR
    // with LIST_EMPTY user, "1A" as HEX_8.
    let expected = [
        0xF8, 0x07, 0x19, 0x11, 0xFA, 0x00, 0x03, 0x04, 0x29, 0x08, 0xFB, 0x01, 0x1A,
    ];
    assert_eq!(v3(&iq), expected);
    assert_eq!(decode(&expected), Ok(iq));
}

#[test]
fn jid_wire_forms() {
    let cases: [(Jid, &[u8]); 7] = [
        // AD_JID domain 0, device 5, user "123" as odd NIBBLE_8.
        (
            Jid::with_device("123", 5, "s.whatsapp.net"),
            &[0xF7, 0x00, 0x05, 0xFF, 0x82, 0x12, 0x3F],
        ),
        // Device 0 on s.whatsapp.net is a plain pair.
        (
            Jid::new("987654321", "s.whatsapp.net"),
            &[0xFA, 0xFF, 0x85, 0x98, 0x76, 0x54, 0x32, 0x1F, 0x03],
        ),
        (
            Jid::with_device("98765", 1, "lid"),
            &[0xF7, 0x01, 0x01, 0xFF, 0x83, 0x98, 0x76, 0x5F],
        ),
        (
            Jid::new("98765", "hosted"),
            &[0xF7, 0x80, 0x00, 0xFF, 0x83, 0x98, 0x76, 0x5F],
        ),
        (
            Jid::with_device("98765", 3, "hosted.lid"),
            &[0xF7, 0x81, 0x03, 0xFF, 0x83, 0x98, 0x76, 0x5F],
        ),
        (
            Jid::with_device("98765", 0x0102, "msgr"),
            &[0xF6, 0xFF, 0x83, 0x98, 0x76, 0x5F, 0x01, 0x02, 0xCC],
        ),
        (
            Jid {
                integrator: 0x0304,
                ..Jid::with_device("98765", 0x0102, "interop")
            },
            &[
                0xF5, 0xFF, 0x83, 0x98, 0x76, 0x5F, 0x01, 0x02, 0x03, 0x04, 0xFC, 0x07, b'i', b'n',
                b't', b'e', b'r', b'o', b'p',
            ],
        ),
    ];
    for (jid, wire) in cases {
        let node = Node::new("x").attr("j", jid.clone());
        let bytes = v3(&node);
        // <x j=…>: list header, then tag and key as raw one-byte strings.
        let head = [0xF8, 0x03, 0xFC, 0x01, b'x', 0xFC, 0x01, b'j'];
        assert_eq!(&bytes[..head.len()], head, "{jid}");
        assert_eq!(&bytes[head.len()..], wire, "{jid}");
        assert_eq!(roundtrip(&node).attr_jid("j"), Some(jid));
    }
}

#[test]
fn agent_survives_on_user_server() {
    let mut jid = Jid::with_device("98765", 2, "s.whatsapp.net");
    jid.agent = 7;
    let node = Node::new("x").attr("j", jid.clone());
    assert_eq!(roundtrip(&node), node);
    assert_eq!(jid.to_string(), "98765.7:2@s.whatsapp.net");
}

#[test]
fn strings_never_become_jids() {
    let node = Node::new("ref").attr("v", "2@abc,def");
    let bytes = v3(&node);
    assert!(!bytes.contains(&0xFA) && !bytes.contains(&0xF7));
    assert_eq!(roundtrip(&node).attr_str("v"), Some("2@abc,def"));
}

#[test]
fn string_forms() {
    let s = |s: &str| v3(&Node::new("x").text(s))[5..].to_vec();
    assert_eq!(s("s.whatsapp.net"), [0x03]);
    assert_eq!(s("read-self"), [0xEC, 0x00]);
    assert_eq!(s("1961"), [0xEF, 0xFF]);
    assert_eq!(s("12-3.4"), [0xFF, 0x03, 0x12, 0xA3, 0xB4]);
    assert_eq!(s("3EB0"), [0xFB, 0x02, 0x3E, 0xB0]);
    assert_eq!(s("3eb0"), [0xFC, 0x04, b'3', b'e', b'b', b'0']);
    assert_eq!(s(""), [0xFF, 0x00]);
    let long_digits = "1".repeat(128);
    assert_eq!(s(&long_digits)[..2], [0xFC, 0x80]);
    assert_eq!(s(&"1".repeat(127))[..2], [0xFF, 0xC0]);
    for text in ["", "12-3.4", "3EB0", "1961"] {
        let node = Node::new("x").text(text);
        assert_eq!(roundtrip(&node), node);
    }
    // Raw string content is indistinguishable from binary on the wire.
    for text in ["3eb0", "héllo ✓", &long_digits] {
        let back = roundtrip(&Node::new("x").text(text));
        assert_eq!(back, Node::new("x").bytes(text.as_bytes()));
        assert_eq!(back.content_str(), Some(text));
    }
}

#[test]
fn binary_length_forms() {
    for (len, head) in [
        (0usize, vec![0xFC, 0x00]),
        (255, vec![0xFC, 0xFF]),
        (256, vec![0xFD, 0x00, 0x01, 0x00]),
        (0xF_FFFF, vec![0xFD, 0x0F, 0xFF, 0xFF]),
        (0x10_0000, vec![0xFE, 0x00, 0x10, 0x00, 0x00]),
    ] {
        let node = Node::new("x").bytes(vec![0xAB; len]);
        let bytes = v3(&node);
        assert_eq!(bytes[..5], [0xF8, 0x02, 0xFC, 0x01, b'x']);
        assert_eq!(bytes[5..5 + head.len()], head[..], "len {len}");
        assert_eq!(bytes.len(), 5 + head.len() + len);
        assert_eq!(decode(&bytes).as_ref(), Ok(&node));
    }
}

#[test]
fn content_kinds_round_trip() {
    let nodes = [
        Node::new("a"),
        Node::new("a").children(vec![]),
        Node::new("a").bytes(vec![]),
        Node::new("a").bytes(b"text-like".to_vec()),
        Node::new("a").text("msg"),
        Node {
            content: Content::Jid(Jid::new("1", "g.us")),
            ..Node::new("a")
        },
        Node::new("a").attr("k", "").children(vec![Node::new("b")]),
    ];
    for node in &nodes[..3] {
        assert_eq!(&roundtrip(node), node);
    }
    assert_eq!(roundtrip(&nodes[3]), nodes[3]);
    for node in &nodes[4..6] {
        assert_eq!(&roundtrip(node), node);
    }
    // Empty attribute values are not sent.
    assert_eq!(
        roundtrip(&nodes[6]),
        Node::new("a").children(vec![Node::new("b")])
    );
    assert_eq!(v3(&nodes[1]), [0xF8, 0x02, 0xFC, 0x01, b'a', 0x00]);
}

#[test]
fn large_lists_use_list16() {
    let children: Vec<Node> = (0..300).map(|_| Node::new("item")).collect();
    let node = Node::new("x").children(children);
    let bytes = v3(&node);
    assert_eq!(bytes[..8], [0xF8, 0x02, 0xFC, 0x01, b'x', 0xF9, 0x01, 0x2C]);
    assert_eq!(roundtrip(&node), node);
    let mut many_attrs = Node::new("x");
    for i in 0..200u32 {
        many_attrs.set_attr(format!("k{i}"), i);
    }
    assert_eq!(v3(&many_attrs)[..3], [0xF9, 0x01, 0x91]);
    assert_eq!(roundtrip(&many_attrs), many_attrs);
}

#[test]
fn compressed_frames_inflate() {
    let node = Node::new("message").attr("id", "ABC").bytes(vec![7; 1000]);
    let mut z = flate2::write::ZlibEncoder::new(vec![0x02], flate2::Compression::default());
    z.write_all(&encode(&node)).expect("in-memory write");
    let frame = z.finish().expect("in-memory zlib");
    assert!(frame.len() < 200);
    assert_eq!(unmarshal(&frame), Ok(node));
    assert_eq!(unmarshal(&[]), Err(DecodeError::EmptyFrame));
    assert!(matches!(
        unmarshal(&[0x02, 1, 2, 3]),
        Err(DecodeError::Inflate(_))
    ));
}

#[test]
fn inflation_is_capped() {
    let mut z = flate2::write::ZlibEncoder::new(vec![0x02], flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..17 {
        z.write_all(&zeros).expect("in-memory write");
    }
    let bomb = z.finish().expect("in-memory zlib");
    assert!(bomb.len() < 64 * 1024);
    assert_eq!(
        unmarshal(&bomb),
        Err(DecodeError::InflatedTooLarge {
            limit: MAX_INFLATED_LEN
        })
    );
}

fn nested(depth: usize) -> Node {
    let mut node = Node::new("n");
    for _ in 1..depth {
        node = Node::new("n").children(vec![node]);
    }
    node
}

#[test]
fn nesting_is_bounded() {
    let ok = nested(MAX_DEPTH);
    assert_eq!(decode(&encode(&ok)), Ok(ok));
    assert_eq!(
        decode(&encode(&nested(MAX_DEPTH + 1))),
        Err(DecodeError::TooDeep { limit: MAX_DEPTH })
    );
}

#[test]
fn malformed_input_is_rejected() {
    let cases: [(&[u8], DecodeError); 12] = [
        // A list where an attribute value belongs.
        (
            &[0xF8, 0x03, 0x19, 0x11, 0xF8, 0x01, 0x19],
            DecodeError::NotAString { at: 4 },
        ),
        (&[], DecodeError::Truncated { at: 0 }),
        (&[0x00], DecodeError::EmptyNode { at: 0 }),
        (&[0xF8, 0x00], DecodeError::EmptyNode { at: 0 }),
        (&[0xF8, 0x01, 0x00], DecodeError::EmptyTag { at: 0 }),
        (
            &[0xF8, 0x01, 0x02, 0x02],
            DecodeError::TrailingBytes { count: 1 },
        ),
        (
            &[0x19, 0x01],
            DecodeError::UnexpectedTag {
                tag: 0x19,
                at: 0,
                expected: "a list",
            },
        ),
        (
            &[0xF8, 0x01, 0xF0],
            DecodeError::UnknownToken { tag: 0xF0, at: 2 },
        ),
        (
            &[0xF8, 0x01, 0xFA, 0x00, 0x03],
            DecodeError::NotAString { at: 2 },
        ),
        (
            &[0xF8, 0x01, 0xFC, 0x02, 0xC3, 0x28],
            DecodeError::InvalidUtf8 { at: 4 },
        ),
        (
            &[0xF8, 0x01, 0xFF, 0x80],
            DecodeError::BadPacked { tag: 0xFF, at: 2 },
        ),
        (
            &[0xF8, 0x03, 0x19, 0x11, 0xFA, 0x00, 0x00],
            DecodeError::EmptyServer { at: 4 },
        ),
    ];
    for (input, err) in cases {
        assert_eq!(decode(input), Err(err), "{}", hex::encode(input));
    }
    // A list length larger than the input is refused before allocating.
    assert_eq!(
        decode(&[0xF8, 0x02, 0x19, 0xF9, 0xFF, 0xFF]),
        Err(DecodeError::Truncated { at: 6 })
    );
    assert!(matches!(
        decode(&[0xF8, 0x02, 0x19, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF]),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        decode(&[0xF8, 0x02, 0x19, 0xF6, 0xFF, 0x83, 0x98, 0x76, 0x5F, 0x00, 0x01, 0x03]),
        Err(DecodeError::WrongServer {
            expected: "msgr",
            ..
        })
    ));
    // Filler nibble in the middle of a nibble string.
    assert!(matches!(
        decode(&[0xF8, 0x02, 0x19, 0xFF, 0x02, 0xF1, 0x23]),
        Err(DecodeError::BadPacked { .. })
    ));
}

#[test]
fn jids_inside_jids_are_refused_without_recursing() {
    // A JID part must be a plain string; checking that before reading on
    // keeps a long run of JID tags from recursing once per byte.
    for jid_tag in [0xFA, 0xF7, 0xF6, 0xF5] {
        let mut attr = vec![0xF8, 0x03, 0x19, 0x11];
        let mut content = vec![0xF8, 0x02, 0x19];
        for input in [&mut attr, &mut content] {
            input.push(0xFA);
            input.resize(1 << 20, jid_tag);
            assert!(
                matches!(
                    decode(input),
                    Err(DecodeError::NotAString { .. } | DecodeError::Truncated { .. })
                ),
                "tag {jid_tag:#x}"
            );
        }
    }
}

#[test]
fn every_prefix_of_a_stanza_is_rejected() {
    let node = sample_message();
    let bytes = encode(&node);
    for cut in 0..bytes.len() {
        assert!(decode(&bytes[..cut]).is_err(), "prefix {cut} decoded");
    }
    assert_eq!(decode(&bytes), Ok(node));
}

#[test]
fn dictionaries_differ_but_both_round_trip() {
    let node = sample_message();
    let v2 = TokenDict::V2.encode(&node);
    let v3 = TokenDict::V3.encode(&node);
    assert_ne!(v2, v3);
    assert_eq!(TokenDict::V2.decode(&v2), Ok(node.clone()));
    assert_eq!(TokenDict::V3.decode(&v3), Ok(node.clone()));
    assert_eq!(
        TokenDict::V2.unmarshal(&TokenDict::V2.marshal(&node)),
        Ok(node)
    );
}

fn sample_message() -> Node {
    Node::new("message")
        .attr("from", Jid::with_device("15551234567", 3, "s.whatsapp.net"))
        .attr("id", "3EB0A1B2C3D4E5F6")
        .attr("t", 1_750_000_000u64)
        .attr("type", "text")
        .attr("notify", "Zoë")
        .children(vec![
            Node::new("enc")
                .attr("v", "2")
                .attr("type", "pkmsg")
                .bytes(vec![0x33; 200]),
            Node::new("participants").children(vec![Node::new("to")
                .attr("jid", Jid::with_device("7", 1, "lid"))
                .children(vec![])]),
        ])
}

// ---- properties ----

/// Whatever the decoder accepts encodes back to itself, less the empty
/// attribute values the encoder leaves out and with long packed content
/// turned into bytes (see [`reencoded`]).
fn stable_if_decodes(dict: TokenDict, data: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(node) = dict.decode(data) {
        prop_assert_eq!(dict.decode(&dict.encode(&node)), Ok(reencoded(node)));
    }
    Ok(())
}

/// `decode(encode(n))` for a decoded `n`: empty attribute values are left
/// out, and packed string content longer than the encoder packs (the wire
/// allows 254 characters, the encoder packs 127) is written raw, so it comes
/// back as bytes.
fn reencoded(mut node: Node) -> Node {
    node.attrs
        .retain(|(_, v)| !matches!(v, AttrValue::Str(s) if s.is_empty()));
    node.content = match node.content {
        Content::Nodes(children) => Content::Nodes(children.into_iter().map(reencoded).collect()),
        Content::Str(s) if s.len() > token::PACKED_MAX => Content::Bytes(s.into_bytes()),
        other => other,
    };
    node
}

#[test]
fn long_packed_content_is_reencoded_raw() {
    // HEX_8 with 0x7F bytes: 254 characters, more than any encoder packs.
    let mut wire = vec![0xF8, 0x02, 0xFC, 0x01, b'x', 0xFB, 0x7F];
    wire.extend_from_slice(&[0xAB; 0x7F]);
    let node = decode(&wire).expect("valid packed content");
    assert_eq!(node.content_str().map(str::len), Some(254));
    assert_eq!(decode(&encode(&node)), Ok(reencoded(node.clone())));
    assert!(matches!(reencoded(node).content, Content::Bytes(_)));
}

/// Strings that exercise every string form: tokens, packed digits and hex,
/// lower-case hex (raw), unicode, long strings, empty.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("s.whatsapp.net".to_owned()),
        Just("read-self".to_owned()),
        Just("1961".to_owned()),
        Just("media-for1-1.cdn.whatsapp.net".to_owned()),
        "[0-9.-]{0,130}",
        "[0-9A-F]{0,130}",
        "[0-9a-f]{1,40}",
        "\\PC{0,40}",
        "[a-z_:]{1,12}",
        Just(String::new()),
    ]
}

fn jid() -> impl Strategy<Value = Jid> {
    let user = "[0-9]{0,15}|[a-z0-9-]{1,20}";
    prop_oneof![
        // s.whatsapp.net: agent and device both survive (agent not a domain byte).
        (user, any::<u8>(), 0u16..=255).prop_map(|(u, agent, device)| {
            let agent = if matches!(agent, 0x01 | 0x80 | 0x81) {
                0
            } else {
                agent
            };
            Jid {
                agent,
                ..Jid::with_device(u, device, "s.whatsapp.net")
            }
        }),
        (
            user,
            0u16..=255,
            prop_oneof![Just("lid"), Just("hosted"), Just("hosted.lid")]
        )
            .prop_map(|(u, d, s)| Jid::with_device(u, d, s)),
        (user, any::<u16>()).prop_map(|(u, d)| Jid::with_device(u, d, "msgr")),
        (user, any::<u16>(), any::<u16>()).prop_map(|(u, d, i)| Jid {
            integrator: i,
            ..Jid::with_device(u, d, "interop")
        }),
        (
            user,
            prop_oneof![
                Just("g.us"),
                Just("broadcast"),
                Just("newsletter"),
                Just("bot"),
                Just("c.us"),
                Just("x.example")
            ]
        )
            .prop_map(|(u, s)| Jid::new(u, s)),
    ]
}

fn attr_value() -> impl Strategy<Value = AttrValue> {
    prop_oneof![
        3 => text().prop_filter_map("empty values are not sent", |s| {
            (!s.is_empty()).then_some(AttrValue::Str(s.into()))
        }),
        1 => jid().prop_map(AttrValue::Jid),
    ]
}

fn leaf() -> impl Strategy<Value = Node> {
    let tag = text().prop_filter("tags are non-empty", |s| !s.is_empty());
    let content = prop_oneof![
        Just(Content::None),
        Just(Content::Nodes(Vec::new())),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Content::Bytes),
        text().prop_map(Content::Str),
        jid().prop_map(Content::Jid),
    ];
    (
        tag,
        proptest::collection::vec((text(), attr_value()), 0..5),
        content,
    )
        .prop_map(|(tag, attrs, content)| Node {
            tag: tag.into(),
            attrs: attrs.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            content,
        })
}

fn tree() -> impl Strategy<Value = Node> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        (leaf(), proptest::collection::vec(inner, 0..6))
            .prop_map(|(node, children)| node.children(children))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn encode_decode_round_trips(node in tree()) {
        for dict in [TokenDict::V2, TokenDict::V3] {
            let expected = canonical(dict, &node);
            let bytes = dict.encode(&node);
            prop_assert_eq!(dict.decode(&bytes), Ok(expected.clone()));
            prop_assert_eq!(dict.unmarshal(&dict.marshal(&node)), Ok(expected.clone()));
            // The canonical form is a fixed point.
            prop_assert_eq!(dict.encode(&expected), bytes);
        }
    }

    #[test]
    fn jid_strings_round_trip(jid in jid()) {
        // The string form carries no integrator.
        let jid = Jid { integrator: 0, ..jid };
        let parsed: Jid = jid.to_string().parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(parsed, jid);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        for dict in [TokenDict::V2, TokenDict::V3] {
            stable_if_decodes(dict, &data)?;
            let _ = dict.unmarshal(&data);
        }
    }

    #[test]
    fn mutated_stanzas_never_panic(
        node in tree(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode(&node);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        stable_if_decodes(TokenDict::V3, &bytes)?;
        let end = cut.index(bytes.len() + 1);
        stable_if_decodes(TokenDict::V3, &bytes[..end])?;
        let mut frame = vec![0x02];
        frame.extend_from_slice(&bytes);
        let _ = unmarshal(&frame);
    }
}
