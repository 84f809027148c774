//! LID addressing in the engine: a peer's LID learned from the wire, both
//! addresses in its events and in the answer to a send, and one Signal
//! session per peer device whichever address the server uses — a session
//! made under the phone number serves the LID once the mapping is known.

use super::*;

const BOB_LID: &str = "207800000000002";

/// Whether `device` asked anyone for a resend.
fn asked_for_retry(device: &Device) -> bool {
    device
        .wrote
        .iter()
        .any(|n| n.tag() == "receipt" && n.attr_str("type") == Some("retry"))
}

fn message_with_text(device: &Device, text: &str) -> ReceivedMessage {
    device
        .events
        .iter()
        .find_map(|e| match e {
            Event::Message(m) if m.text.as_deref() == Some(text) => Some(m.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no message {text:?}"))
}

#[test]
fn a_peer_that_moves_to_its_lid_keeps_its_session() {
    let mut server = Server::new();
    // Sessions both ways under phone numbers: Bob's next text is a `msg`,
    // readable only with the session Alice already has.
    server.send(ALICE, BOB, "one", None, 1);
    server.run();
    server.send(BOB, ALICE, "two", None, 1);
    server.run();
    let two = message_with_text(&server.devices[ALICE], "two");
    assert_eq!(two.sender_phone.as_deref(), Some("15550000002"));
    assert_eq!(two.sender_lid, None);

    // The server now addresses Bob by his LID, naming his number in
    // `sender_pn`.
    server.lid_senders.insert(BOB, BOB_LID.to_owned());
    server.send(BOB, ALICE, "three", None, 2);
    server.run();
    assert_eq!(server.devices[ALICE].texts(), vec!["two", "three"]);
    assert!(
        !asked_for_retry(&server.devices[ALICE]),
        "the LID's message must decrypt with the phone number's session"
    );
    let three = message_with_text(&server.devices[ALICE], "three");
    let lid: Jid = format!("{BOB_LID}@lid").parse().expect("lid");
    assert_eq!(three.sender.to_non_ad(), lid);
    assert_eq!(three.sender_phone.as_deref(), Some("15550000002"));
    assert_eq!(three.sender_lid.as_ref(), Some(&lid));
    assert_eq!(three.chat, lid);
    assert_eq!(three.chat_phone.as_deref(), Some("15550000002"));
    assert_eq!(three.chat_lid.as_ref(), Some(&lid));
    // The session moved: it is stored under the LID's address now.
    let keys = &server.devices[ALICE].keys;
    assert!(keys
        .sessions
        .contains_key(&ProtocolAddress::new(format!("{BOB_LID}_1"), 0)));
    assert_eq!(
        keys.phone_lids.get("15550000002").map(String::as_str),
        Some(BOB_LID)
    );

    // Alice answers Bob's phone number: the same (moved) session encrypts,
    // and Bob, who has one session with Alice, reads it.
    server.send(ALICE, BOB, "four", None, 3);
    server.run();
    assert_eq!(server.devices[BOB].texts(), vec!["one", "four"]);
    assert!(!asked_for_retry(&server.devices[BOB]));
    let sent = server
        .reply(ALICE, 3)
        .expect("answered")
        .as_ref()
        .expect("sent")
        .clone();
    assert_eq!(sent.recipient_phone.as_deref(), Some("15550000002"));
    assert_eq!(sent.recipient_lid.as_ref(), Some(&lid));
    // And Bob's next text from the LID still decrypts.
    server.send(BOB, ALICE, "five", None, 4);
    server.run();
    assert_eq!(server.devices[ALICE].texts(), vec!["two", "three", "five"]);
    assert!(!asked_for_retry(&server.devices[ALICE]));
}

#[test]
fn a_session_under_the_phone_number_is_read_and_then_written_under_the_lid() {
    let mut keys = MemKeys::default();
    let pn = ProtocolAddress::new("15550000009", 3);
    let lid = ProtocolAddress::new("99887766_1", 3);
    let record = {
        // Any real record: Alice's session with Bob after one text.
        let mut server = Server::new();
        server.send(ALICE, BOB, "x", None, 1);
        server.run();
        server.devices[ALICE]
            .keys
            .sessions
            .values()
            .next()
            .cloned()
            .expect("a session")
    };
    keys.sessions.insert(pn.clone(), record.clone());

    let mut txn = Txn::new(&mut keys);
    // Unknown mapping: each address is its own.
    assert!(txn.session(&lid).expect("read").is_none());
    txn.put_lid("99887766".into(), "15550000009".into());
    // Known: the LID's address reads the phone number's session, and the
    // phone number's address is the LID's.
    let read = txn.session(&lid).expect("read").expect("migrated");
    assert_eq!(read.serialize(), record.serialize());
    txn.put_session(pn.clone(), read);
    let changes = txn.into_changes();
    let written: Vec<&ProtocolAddress> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Session(address, _) => Some(address),
            _ => None,
        })
        .collect();
    assert_eq!(written, vec![&lid]);
    assert!(changes.iter().any(|c| matches!(
        c,
        Change::Lid { lid_user, phone } if lid_user == "99887766" && phone == "15550000009"
    )));
}
