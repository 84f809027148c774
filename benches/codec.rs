//! Binary node codec throughput on three typical stanzas: an incoming 1:1
//! `<message>` (287 bytes), an 8-device fan-out `<message>` (~1.3 KB) and an
//! `<ack>` (31 bytes). Prints nodes/s and bytes/s.

use divan::counter::{BytesCount, ItemsCount};
use divan::{black_box, Bencher};
use wagate::wa::binary::{decode, encode, encode_into, Node};
use wagate::wa::jid::Jid;

fn main() {
    for (name, node, size) in [
        ("message", message(), 287),
        ("fanout", fanout(), 0),
        ("ack", ack(), 31),
    ] {
        let len = encode(&node).len();
        eprintln!("{name}: {len} bytes");
        assert!(size == 0 || len == size, "{name} encodes to {len} bytes");
        assert_eq!(decode(&encode(&node)).as_ref(), Ok(&node), "{name}");
    }
    divan::main();
}

/// `<message from=… id=… t=… type="text" notify=…><enc v="2" type="msg">`
/// with 200 bytes of ciphertext: 287 bytes encoded.
fn message() -> Node {
    Node::new("message")
        .attr(
            "from",
            Jid::with_device("15551234567", 12, "s.whatsapp.net"),
        )
        .attr("id", "3EB0C431FD8A5E3B1C29A4")
        .attr("t", "1750000000")
        .attr("type", "text")
        .attr("notify", "Alice Example 🌻 Sales & Support")
        .children(vec![Node::new("enc")
            .attr("v", "2")
            .attr("type", "msg")
            .bytes(vec![0xA5; 200])])
}

/// An outgoing message encrypted for eight devices.
fn fanout() -> Node {
    let to = (0..8u16)
        .map(|i| {
            let (user, device) = if i < 4 {
                ("15551234567", i)
            } else {
                ("4915112345678", i - 4)
            };
            Node::new("to")
                .attr("jid", Jid::with_device(user, device, "s.whatsapp.net"))
                .children(vec![Node::new("enc")
                    .attr("v", "2")
                    .attr("type", if i % 3 == 0 { "pkmsg" } else { "msg" })
                    .bytes(vec![0x5A; 128])])
        })
        .collect();
    Node::new("message")
        .attr("id", "3EB0C431FD8A5E3B1C29A4")
        .attr("to", Jid::new("4915112345678", "s.whatsapp.net"))
        .attr("type", "text")
        .children(vec![
            Node::new("participants").children(to),
            Node::new("device-identity").bytes(vec![0x11; 24]),
        ])
}

/// `<ack class="receipt" id=… from=… type="read"/>`: 31 bytes encoded.
fn ack() -> Node {
    Node::new("ack")
        .attr("class", "receipt")
        .attr("id", "3EB0C431FD8A5E3B1C2")
        .attr("from", Jid::new("15551234567", "s.whatsapp.net"))
        .attr("type", "read")
}

fn stanza(name: &str) -> Node {
    match name {
        "message" => message(),
        "fanout" => fanout(),
        _ => ack(),
    }
}

const STANZAS: &[&str] = &["message", "fanout", "ack"];

#[divan::bench(args = STANZAS)]
fn encode_node(bencher: Bencher, name: &str) {
    let node = stanza(name);
    let len = encode(&node).len();
    let mut out = Vec::with_capacity(len);
    bencher
        .counter(ItemsCount::new(1usize))
        .counter(BytesCount::new(len))
        .bench_local(|| {
            out.clear();
            encode_into(black_box(&node), &mut out);
            black_box(out.len())
        });
}

#[divan::bench(args = STANZAS)]
fn decode_node(bencher: Bencher, name: &str) {
    let bytes = encode(&stanza(name));
    bencher
        .counter(ItemsCount::new(1usize))
        .counter(BytesCount::new(bytes.len()))
        .bench(|| decode(black_box(&bytes)));
}

#[divan::bench(args = STANZAS)]
fn encode_decode(bencher: Bencher, name: &str) {
    let node = stanza(name);
    let len = encode(&node).len();
    let mut out = Vec::with_capacity(len);
    bencher
        .counter(ItemsCount::new(1usize))
        .counter(BytesCount::new(len))
        .bench_local(|| {
            out.clear();
            encode_into(black_box(&node), &mut out);
            decode(black_box(&out))
        });
}
