//! The simulator as a load source and as a server that takes a message once:
//! `SendTexts` sends many texts from one virtual phone, each really
//! encrypted, and they reach a paired gateway session in order (requests
//! beyond the bound are refused); a client that sends the same message
//! stanza twice gets both acks, with the first acceptance's time, and the
//! recipients get it once.

mod common;
mod sim_client;

use common::*;
use prost::Message as _;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sim_client::Client;
use wagate::proto::sim::SendTextsRequest;
use wagate::wa::binary::Node;
use wagate::wa::jid::Jid;
use wagate::wa::signal::{self, SessionRecord};

const OWN: &str = "+15550003333";
const BOB: &str = "+15550004444";

fn texts(count: u32, prefix: &str, per_second: u32) -> SendTextsRequest {
    SendTextsRequest {
        from_phone: BOB.into(),
        to: OWN.into(),
        count,
        text_prefix: prefix.into(),
        per_second,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_texts_reach_a_paired_session_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (_, mut events) = pair_with(&mut sim.control, &mut client, "load", OWN).await;
    create_account(&mut sim.control, BOB, "Bob").await;

    const COUNT: u32 = 40;
    let ids = sim
        .control
        .send_texts(texts(COUNT, "load-", 0))
        .await
        .expect("SendTexts")
        .into_inner()
        .message_ids;
    assert_eq!(ids.len(), COUNT as usize);
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "every text has its own id");

    let mut received = Vec::new();
    while received.len() < ids.len() {
        let (event, _) =
            wait_for(&mut events, "a message event", |e| message_of(e).is_some()).await;
        let message = message_of(&event).expect("message");
        received.push((message.id.clone(), message.text.clone()));
    }
    let expected: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.clone(), format!("load-{n}")))
        .collect();
    assert_eq!(received, expected, "delivered once each, in order");

    // Paced: the same path, a few texts at a bounded rate.
    let paced = sim
        .control
        .send_texts(texts(3, "paced-", 1000))
        .await
        .expect("paced SendTexts")
        .into_inner()
        .message_ids;
    for (n, id) in paced.iter().enumerate() {
        let (event, _) = wait_for(&mut events, "a paced text", |e| {
            message_of(e).is_some_and(|m| m.id == *id)
        })
        .await;
        assert_eq!(
            message_of(&event).expect("message").text,
            format!("paced-{n}")
        );
    }

    let too_many = sim
        .control
        .send_texts(texts(wagate::sim::MAX_BULK_TEXTS + 1, "x", 0))
        .await
        .expect_err("over the bound");
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
    let unknown = sim
        .control
        .send_texts(SendTextsRequest {
            from_phone: "+15550009999".into(),
            ..texts(1, "x", 0)
        })
        .await
        .expect_err("unknown sender");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    gateway.shutdown().await;
    sim.sim.shutdown().await;
}

/// Encrypts a text for each device (opening sessions from the bundles the
/// first time) and builds the fan-out stanza a WhatsApp Web client sends.
fn text_stanza(
    sender: &Client,
    sessions: &mut [(Jid, SessionRecord)],
    chat: &Jid,
    id: &str,
    text: &str,
    rng: &mut StdRng,
) -> Node {
    let creds = sender.credentials();
    let account = creds.account.as_ref().expect("paired");
    let plaintext = wagate::wa::message::text_message(text).encode_to_vec();
    let devices: Vec<(Jid, signal::CiphertextMessage)> = sessions
        .iter_mut()
        .map(|(jid, record)| {
            let padded = signal::pad(rng, &plaintext);
            let ciphertext =
                signal::encrypt(record, &creds.identity_key, &padded).expect("encrypts");
            (jid.clone(), ciphertext)
        })
        .collect();
    wagate::wa::message::fanout_stanza(id, chat, &devices, &account.signed_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_message_is_acked_twice_and_delivered_once() {
    let sim = start_sim().await.sim;
    let alice = Client::pair(&sim, "+15550005555", 1).await;
    let mut alice = Client::login(&sim, alice, 1).await;
    let bob = Client::pair(&sim, "+15550006666", 2).await;
    let mut bob = Client::login(&sim, bob, 2).await;
    let bob_phone: Jid = "15550006666@s.whatsapp.net".parse().expect("jid");
    let bob_companion: Jid = "15550006666:1@s.whatsapp.net".parse().expect("jid");

    // Sessions with both of Bob's devices, from the bundles the server hands out.
    let query = wagate::wa::prekeys::bundle_query(&[bob_phone.clone(), bob_companion.clone()]);
    let iq_id = alice.send_iq(query).await;
    let answer = alice
        .stanza("the bundles", |n| {
            n.tag() == "iq" && n.attr_str("id") == Some(iq_id.as_str())
        })
        .await;
    let bundles = wagate::wa::prekeys::parse_bundles(&answer).expect("bundles");
    let mut rng = StdRng::seed_from_u64(3);
    let creds = alice.credentials().clone();
    let mut sessions: Vec<(Jid, SessionRecord)> = [&bob_phone, &bob_companion]
        .into_iter()
        .map(|device| {
            let bundle = bundles
                .iter()
                .find(|b| b.device.user == device.user && b.device.device == device.device)
                .and_then(|b| b.bundle.clone().ok())
                .unwrap_or_else(|| panic!("a bundle for {device}"));
            let record = signal::process_bundle(
                &bundle,
                &creds.identity_key,
                creds.registration_id,
                None,
                &mut rng,
            )
            .expect("session opens");
            (device.clone(), record)
        })
        .collect();
    let chat = bob_phone.clone();

    let first = text_stanza(
        &alice,
        &mut sessions,
        &chat,
        "3EB0REPEATED",
        "once",
        &mut rng,
    );
    // The same stanza twice, as a sender does when unsure the first arrived.
    alice.send(&first).await;
    alice.send(&first).await;
    let mut acks = Vec::new();
    while acks.len() < 2 {
        let ack = alice
            .stanza("an ack of the repeated message", |n| {
                n.tag() == "ack"
                    && n.attr_str("class") == Some("message")
                    && n.attr_str("id") == Some("3EB0REPEATED")
            })
            .await;
        acks.push(ack.attr_string("t").expect("ack time"));
    }
    assert_eq!(acks[0], acks[1], "the repeat is acked with the first time");

    // A later message: routing from one device is in order, so by the time
    // it arrives any second copy of the first would have arrived too.
    let marker = text_stanza(
        &alice,
        &mut sessions,
        &chat,
        "3EB0MARKER",
        "after",
        &mut rng,
    );
    alice.send(&marker).await;
    let mut copies = 0;
    loop {
        // Not the key share and history notice Bob's own phone sent when
        // it linked this companion (`category="peer"`).
        let message = bob
            .stanza("a message", |n| {
                n.tag() == "message" && n.attr_str("category") != Some("peer")
            })
            .await;
        match message.attr_str("id") {
            Some("3EB0REPEATED") => copies += 1,
            Some("3EB0MARKER") => break,
            other => panic!("unexpected message {other:?}"),
        }
    }
    assert_eq!(copies, 1, "the companion got the message once");

    let phone: wagate::wa::jid::PhoneNumber = "+15550006666".parse().expect("phone");
    let inbox = tokio::time::timeout(WAIT, async {
        loop {
            let inbox = sim.inbox(&phone).expect("inbox");
            if inbox.iter().any(|m| m.id == "3EB0MARKER") {
                return inbox;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the phone decrypted the marker");
    let texts: Vec<(&str, &str)> = inbox
        .iter()
        .map(|m| (m.id.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(texts, [("3EB0REPEATED", "once"), ("3EB0MARKER", "after")]);
    sim.shutdown().await;
}
