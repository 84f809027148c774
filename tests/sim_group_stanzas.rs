//! Group stanzas on the wire, as bare WhatsApp Web clients see them: the
//! create notification, the fan-out of a group message (pairwise `<enc>`
//! before the `skmsg`, the sender's device identity only with a pkmsg, the
//! `skmsg` alone for a device the sender did not cover), the server's ack
//! with its participant hash, refusals of non-members and unknown groups,
//! a resend to one device, group receipts, and `w:g2` errors.

mod sim_client;

use sim_client::Client;
use wagate::sim::{SimConfig, Simulator};
use wagate::wa::binary::Node;
use wagate::wa::jid::Jid;

fn jid(text: &str) -> Jid {
    text.parse().expect("valid jid")
}

fn enc(kind: &'static str, bytes: &[u8]) -> Node {
    Node::new("enc")
        .attr("v", "2")
        .attr("type", kind)
        .bytes(bytes.to_vec())
}

/// `(tag, type)` of each child, to check order.
fn shape(node: &Node) -> Vec<(String, Option<String>)> {
    node.child_nodes()
        .iter()
        .map(|n| (n.tag().to_owned(), n.attr_string("type")))
        .collect()
}

fn group_message(group: &Jid, id: &str, to: &Jid, extra: Vec<Node>) -> Node {
    let mut children = vec![
        Node::new("participants").children(vec![Node::new("to")
            .attr("jid", to.clone())
            .children(vec![enc("pkmsg", b"pairwise")])]),
        enc("skmsg", b"group"),
    ];
    children.extend(extra);
    Node::new("message")
        .attr("id", id.to_owned())
        .attr("to", group.clone())
        .attr("type", "text")
        .children(children)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_stanzas_match_what_whatsapp_clients_read() {
    let sim = Simulator::start(SimConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        seed: Some(7),
        data_dir: None,
    })
    .await
    .expect("simulator starts");
    let xavier = Client::pair(&sim, "+15550600001", 1).await;
    let mut xavier = Client::login(&sim, xavier, 1).await;
    let yara = Client::pair(&sim, "+15550600002", 2).await;
    let mut yara = Client::login(&sim, yara, 2).await;
    let yara2 = Client::pair(&sim, "+15550600002", 3).await;
    let mut yara2 = Client::login(&sim, yara2, 3).await;
    let zed = Client::pair(&sim, "+15550600003", 4).await;
    let mut zed = Client::login(&sim, zed, 4).await;
    let (x1, y1, y2) = (
        jid("15550600001:1@s.whatsapp.net"),
        jid("15550600002:1@s.whatsapp.net"),
        jid("15550600002:2@s.whatsapp.net"),
    );

    let phone = "+15550600001".parse().expect("phone");
    let walt = sim
        .create_account(&"+15550600004".parse().expect("phone"), "Walt")
        .expect("account");
    let group = sim
        .create_group(
            &phone,
            "Wire",
            &[jid("15550600002@s.whatsapp.net"), walt.clone()],
        )
        .await
        .expect("group created");

    // Every member device is told, with the whole group inside.
    for client in [&mut xavier, &mut yara, &mut yara2] {
        let notice = client
            .stanza("create notification", |n| n.tag() == "notification")
            .await;
        assert_eq!(notice.attr_str("type"), Some("w:gp2"));
        assert_eq!(notice.attr_jid("from"), Some(group.clone()));
        assert_eq!(
            notice.attr_string("participant").as_deref(),
            Some("15550600001@s.whatsapp.net")
        );
        assert!(notice.attr_u64("t").is_some() && notice.attr_str("id").is_some());
        assert_eq!(
            notice.attr_str("notify"),
            Some("Client"),
            "the actor's push name"
        );
        let info = notice
            .child("create")
            .and_then(|c| c.child("group"))
            .expect("create/group");
        assert_eq!(info.attr_str("id"), Some(group.user.as_str()));
        assert_eq!(info.attr_str("subject"), Some("Wire"));
        assert_eq!(info.children_by_tag("participant").count(), 3);
        let id = notice.attr_string("id").unwrap_or_default();
        client
            .send(
                &Node::new("ack")
                    .attr("class", "notification")
                    .attr("id", id)
                    .attr("to", group.clone())
                    .attr("type", "w:gp2"),
            )
            .await;
    }

    // Xavier's device sends with a pairwise enc for Yara's first device only.
    let identity = Node::new("device-identity").bytes(vec![7; 4]);
    let message = group_message(&group, "M1", &y1, vec![identity]).attr("phash", "2:AAAAAAAA");
    xavier.send(&message).await;
    let ack = xavier
        .stanza("server ack", |n| {
            n.tag() == "ack" && n.attr_str("id") == Some("M1")
        })
        .await;
    assert_eq!(ack.attr_jid("from"), Some(group.clone()));
    assert!(ack.attr_str("error").is_none());
    let phash = ack.attr_string("phash").expect("phash in the ack");
    assert!(phash.starts_with("2:"), "{phash}");

    let got = yara.stanza("group message", |n| n.tag() == "message").await;
    assert_eq!(got.attr_jid("from"), Some(group.clone()));
    assert_eq!(got.attr_jid("participant"), Some(x1.clone()));
    assert_eq!(got.attr_str("id"), Some("M1"));
    assert_eq!(got.attr_str("type"), Some("text"));
    assert!(got.attr_u64("t").is_some() && got.attr_str("offline").is_none());
    let expect = |items: &[(&str, Option<&str>)]| -> Vec<(String, Option<String>)> {
        items
            .iter()
            .map(|(t, k)| ((*t).to_owned(), k.map(str::to_owned)))
            .collect()
    };
    assert_eq!(
        shape(&got),
        expect(&[
            ("enc", Some("pkmsg")),
            ("enc", Some("skmsg")),
            ("device-identity", None)
        ])
    );
    // The device the sender did not cover still gets the skmsg alone.
    let uncovered = yara2
        .stanza("group message", |n| n.tag() == "message")
        .await;
    assert_eq!(shape(&uncovered), expect(&[("enc", Some("skmsg"))]));
    assert_eq!(
        uncovered.child("enc").and_then(Node::content_bytes),
        Some(&b"group"[..])
    );

    // Walt's virtual phone was not sent the sender key and cannot read the
    // skmsg: like any client it asks the author's device for a retry.
    let phone_retry = xavier
        .stanza("phone's retry receipt", |n| {
            n.tag() == "receipt" && n.attr_jid("participant").as_ref() == Some(&walt)
        })
        .await;
    assert_eq!(phone_retry.attr_str("type"), Some("retry"));
    assert_eq!(phone_retry.attr_jid("from"), Some(group.clone()));
    let retry = phone_retry.child("retry").expect("retry child");
    assert_eq!(
        (retry.attr_str("count"), retry.attr_str("id")),
        (Some("1"), Some("M1"))
    );
    assert_eq!(
        phone_retry
            .child("registration")
            .and_then(Node::content_bytes)
            .map(<[u8]>::len),
        Some(4)
    );

    // Yara's device confirms; Xavier learns it as the group's receipt.
    yara.send(
        &Node::new("receipt")
            .attr("id", "M1")
            .attr("to", group.clone())
            .attr("participant", x1.clone()),
    )
    .await;
    let receipt = xavier
        .stanza("group receipt", |n| {
            n.tag() == "receipt" && n.attr_jid("participant").as_ref() == Some(&y1)
        })
        .await;
    assert!(receipt.attr_str("type").is_none(), "a delivery receipt");
    assert_eq!(receipt.attr_jid("from"), Some(group.clone()));
    assert_eq!(receipt.attr_jid("participant"), Some(y1.clone()));
    assert_eq!(receipt.attr_str("id"), Some("M1"));

    // The uncovered device asks the author's device for a retry; the
    // author gets it with the retry's details.
    yara2
        .send(
            &Node::new("receipt")
                .attr("id", "M1")
                .attr("to", group.clone())
                .attr("participant", x1.clone())
                .attr("type", "retry")
                .children(vec![
                    Node::new("retry")
                        .attr("count", "1")
                        .attr("id", "M1")
                        .attr("v", "1"),
                    Node::new("registration").bytes(vec![0, 0, 0, 9]),
                ]),
        )
        .await;
    let retry = xavier
        .stanza("retry receipt", |n| {
            n.tag() == "receipt"
                && n.attr_str("type") == Some("retry")
                && n.attr_jid("participant").as_ref() == Some(&y2)
        })
        .await;
    assert_eq!(retry.attr_jid("from"), Some(group.clone()));
    assert_eq!(retry.attr_jid("participant"), Some(y2.clone()));
    assert_eq!(
        retry.child("retry").and_then(|r| r.attr_str("count")),
        Some("1")
    );
    assert!(retry.child("registration").is_some());

    // A resend after the second device's retry reaches that device only.
    let resend = group_message(&group, "M1", &y2, Vec::new()).attr("participant", y2.clone());
    xavier.send(&resend).await;
    let again = yara2.stanza("resend", |n| n.tag() == "message").await;
    assert_eq!(again.attr_str("id"), Some("M1"));
    assert_eq!(
        shape(&again),
        expect(&[("enc", Some("pkmsg")), ("enc", Some("skmsg"))])
    );

    // A non-member and an unknown group are refused in the ack.
    let outsider = group_message(&group, "Z1", &y1, Vec::new());
    zed.send(&outsider).await;
    let refused = zed
        .stanza("refusal", |n| {
            n.tag() == "ack" && n.attr_str("id") == Some("Z1")
        })
        .await;
    assert_eq!(refused.attr_str("error"), Some("403"));
    let nowhere = group_message(&jid("120363000000000009@g.us"), "Z2", &y1, Vec::new());
    zed.send(&nowhere).await;
    let refused = zed
        .stanza("refusal", |n| {
            n.tag() == "ack" && n.attr_str("id") == Some("Z2")
        })
        .await;
    assert_eq!(refused.attr_str("error"), Some("404"));

    // w:g2: a member reads the group, a non-admin may not add, an outsider
    // may not read.
    let query = |kind: &'static str, child: Node| {
        Node::new("iq")
            .attr("xmlns", "w:g2")
            .attr("type", kind)
            .attr("to", group.clone())
            .children(vec![child])
    };
    let id = yara
        .send_iq(query(
            "get",
            Node::new("query").attr("request", "interactive"),
        ))
        .await;
    let info = yara
        .stanza("group info", |n| {
            n.tag() == "iq" && n.attr_str("id") == Some(id.as_str())
        })
        .await;
    assert_eq!(info.attr_str("type"), Some("result"));
    let node = info.child("group").expect("group");
    assert_eq!(
        node.attr_string("creator").as_deref(),
        Some("15550600001@s.whatsapp.net")
    );
    let add = Node::new("add").children(vec![
        Node::new("participant").attr("jid", jid("15550600003@s.whatsapp.net"))
    ]);
    let id = yara.send_iq(query("set", add)).await;
    let error = yara
        .stanza("add refused", |n| {
            n.tag() == "iq" && n.attr_str("id") == Some(id.as_str())
        })
        .await;
    assert_eq!(error.attr_str("type"), Some("error"));
    assert_eq!(
        error.child("error").and_then(|e| e.attr_str("code")),
        Some("403")
    );
    let id = zed
        .send_iq(query(
            "get",
            Node::new("query").attr("request", "interactive"),
        ))
        .await;
    let error = zed
        .stanza("info refused", |n| {
            n.tag() == "iq" && n.attr_str("id") == Some(id.as_str())
        })
        .await;
    assert_eq!(
        error.child("error").and_then(|e| e.attr_str("code")),
        Some("403")
    );
    sim.shutdown().await;
}
