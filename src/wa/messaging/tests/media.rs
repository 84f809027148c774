//! Media in the engine: the media hosts cached until their ttl, media
//! messages marked as such on the wire, a received file's metadata in
//! its event with the download record committed alongside, and the
//! idempotency record consulted before any upload.

use super::*;
use crate::wa::media::{media_conn_node, MediaHost, MediaInfo, MediaKey, MediaType};

fn conn(ttl_s: u32) -> MediaConn {
    MediaConn {
        auth: "secret-auth".into(),
        ttl_s,
        auth_ttl_s: 0,
        max_buckets: 12,
        hosts: vec![MediaHost {
            hostname: "mmg.whatsapp.net".into(),
            max_content_length: None,
        }],
    }
}

fn answer(iq: &Node, conn: &MediaConn) -> Node {
    Node::new("iq")
        .attr("id", iq.attr_string("id").expect("an id"))
        .attr("type", "result")
        .attr("from", Jid::server_jid())
        .children(vec![media_conn_node(conn)])
}

#[test]
fn media_hosts_are_asked_once_and_cached_until_their_ttl() {
    let mut server = Server::new();
    let device = &mut server.devices[ALICE];
    let now = 1_700_000_000_000;
    let first = device.engine.handle_media_conn(false, 1, now);
    assert_eq!(first.transmit.len(), 1);
    let iq = first.transmit[0].clone();
    assert_eq!(iq.attr_str("xmlns"), Some("w:m"));
    assert!(iq.child("media_conn").is_some());
    // A second caller before the answer waits on the same iq.
    let second = device.engine.handle_media_conn(false, 2, now);
    assert!(second.transmit.is_empty() && second.media_conns.is_empty());
    // Unanswered for too long: asked again, for both.
    let late = now + SEND_TIMEOUT_MS;
    let again = device.engine.handle_media_conn(false, 9, late);
    assert_eq!(again.transmit.len(), 1);
    let iq_again = again.transmit[0].clone();
    let step = device
        .engine
        .handle_stanzas(
            vec![answer(&iq, &conn(300))],
            &mut device.keys,
            &device.creds,
            late,
        )
        .expect("step");
    assert!(
        step.media_conns.is_empty(),
        "the old iq's answer is ignored"
    );
    let step = device
        .engine
        .handle_stanzas(
            vec![answer(&iq_again, &conn(300))],
            &mut device.keys,
            &device.creds,
            now,
        )
        .expect("step");
    let answered: Vec<ReplyTo> = step.media_conns.iter().map(|(r, _)| *r).collect();
    assert_eq!(answered, vec![1, 2, 9]);
    let first = device.engine.handle_media_conn(true, 1, now);
    let iq = first.transmit[0].clone();
    let _ = device.engine.handle_media_conn(false, 2, now);

    let step = device
        .engine
        .handle_stanzas(
            vec![answer(&iq, &conn(300))],
            &mut device.keys,
            &device.creds,
            now,
        )
        .expect("step");
    let answered: Vec<ReplyTo> = step.media_conns.iter().map(|(r, _)| *r).collect();
    assert_eq!(answered, vec![1, 2]);
    assert!(step
        .media_conns
        .iter()
        .all(|(_, c)| c.as_ref().ok() == Some(&conn(300))));

    // Cached until the ttl; then, or on request, asked again.
    let cached = device.engine.handle_media_conn(false, 3, now + 299_000);
    assert!(cached.transmit.is_empty());
    assert_eq!(cached.media_conns.len(), 1);
    let stale = device.engine.handle_media_conn(false, 4, now + 300_000);
    assert_eq!(stale.transmit.len(), 1);
    // The connection drops before the answer: the waiter hears it.
    let dropped = device.engine.handle_disconnected("gone");
    assert!(matches!(
        dropped.media_conns.as_slice(),
        [(4, Err(SendError::ConnectionLost(_)))]
    ));
    let refreshed = device.engine.handle_media_conn(true, 5, now);
    assert_eq!(refreshed.transmit.len(), 1, "refresh ignores the cache");
}

#[test]
fn a_media_message_is_marked_recorded_and_deduplicated_by_fingerprint() {
    let mut server = Server::new();
    let info = MediaInfo {
        ty: MediaType::Image,
        mimetype: "image/jpeg".into(),
        caption: Some("look".into()),
        file_name: None,
        url: None,
        direct_path: "/v/t62.7118-24/abc".into(),
        media_key: MediaKey::from_bytes([3; 32]),
        media_key_timestamp: Some(1_700_000_000),
        file_sha256: [4; 32],
        file_enc_sha256: [5; 32],
        file_length: 1234,
        width: Some(640),
        height: Some(480),
        seconds: None,
        thumbnail: None,
    };
    let to = server.devices[BOB].jid().to_non_ad();
    let request = |media_key: u8| SendRequest {
        to: to.clone(),
        message: MediaInfo {
            media_key: MediaKey::from_bytes([media_key; 32]),
            ..info.clone()
        }
        .to_message(),
        idempotency_key: Some("m1".into()),
        fingerprint: Some(b"what the caller asked".to_vec()),
    };
    let now = server.clock;
    let device = &mut server.devices[ALICE];
    let step = device
        .engine
        .handle_sends(vec![(request(3), 1)], &mut device.keys, &device.creds, now)
        .expect("step");
    let out = device.apply(step);
    server.receive(ALICE, out);
    server.run();
    let sent = match server.reply(ALICE, 1) {
        Some(Ok(sent)) => sent.clone(),
        other => panic!("not sent: {other:?}"),
    };
    let stanza = server.devices[ALICE]
        .wrote
        .iter()
        .find(|n| n.tag() == "message")
        .expect("the message stanza")
        .clone();
    assert_eq!(stanza.attr_str("type"), Some("media"));
    let encs: Vec<&Node> = stanza
        .child("participants")
        .map(|p| {
            p.child_nodes()
                .iter()
                .filter_map(|to| to.child("enc"))
                .collect()
        })
        .unwrap_or_default();
    assert!(!encs.is_empty());
    assert!(encs
        .iter()
        .all(|e| e.attr_str("mediatype") == Some("image")));

    // Bob's event carries the metadata; the download record is committed.
    let bob = &server.devices[BOB];
    let event = bob
        .events
        .iter()
        .find_map(|e| match e {
            Event::Message(m) if m.id == sent.message_id => Some(m.clone()),
            _ => None,
        })
        .expect("Bob's event");
    assert_eq!(event.kind, "imageMessage");
    assert_eq!(event.text.as_deref(), Some("look"));
    let media = event.media.expect("media metadata");
    assert_eq!(media.ty, MediaType::Image);
    assert_eq!(
        (media.width, media.height, media.file_length),
        (Some(640), Some(480), 1234)
    );
    let record = bob
        .keys
        .media
        .get(&sent.message_id)
        .expect("a media record");
    assert_eq!(record.direct_path, info.direct_path);
    assert_eq!(record.media_key, vec![3; 32]);
    assert_eq!(record.media_type, "image");
    assert_eq!(
        record.chat,
        server.devices[ALICE].jid().to_non_ad().to_string()
    );
    assert!(
        !format!("{record:?}").contains("3, 3, 3"),
        "no key in Debug"
    );

    // Before uploading again, the record answers: same request (another
    // media key, same fingerprint) is the first send; another is refused.
    let bob = server.devices[BOB].jid();
    let device = &mut server.devices[ALICE];
    let fingerprint = b"what the caller asked".to_vec();
    let state = device
        .engine
        .idempotency_of("m1", &fingerprint, &bob, &mut device.keys)
        .expect("read");
    assert_eq!(state.ok(), Some(IdempotencyState::Sent(sent.clone())));
    let other = device
        .engine
        .idempotency_of("m1", b"something else", &bob, &mut device.keys)
        .expect("read");
    assert!(matches!(other, Err(SendError::IdempotencyConflict(_))));
    let unused = device
        .engine
        .idempotency_of("m2", &fingerprint, &bob, &mut device.keys)
        .expect("read");
    assert_eq!(unused.ok(), Some(IdempotencyState::Unused));
    let now = server.clock;
    let device = &mut server.devices[ALICE];
    let step = device
        .engine
        .handle_sends(vec![(request(8), 2)], &mut device.keys, &device.creds, now)
        .expect("step");
    assert!(step.transmit.is_empty(), "answered from the record");
    assert!(matches!(step.replies.as_slice(), [(2, Ok(s))] if *s == sent));
}

#[test]
fn an_unacknowledged_media_send_is_written_again_without_its_message() {
    let mut server = Server::new();
    server.drop_acks_to = Some(ALICE);
    let to = server.devices[BOB].jid().to_non_ad();
    let info = MediaInfo {
        ty: MediaType::Document,
        mimetype: "application/pdf".into(),
        caption: None,
        file_name: Some("a.pdf".into()),
        url: None,
        direct_path: "/v/t62.7119-24/doc".into(),
        media_key: MediaKey::from_bytes([6; 32]),
        media_key_timestamp: None,
        file_sha256: [1; 32],
        file_enc_sha256: [2; 32],
        file_length: 99,
        width: None,
        height: None,
        seconds: None,
        thumbnail: None,
    };
    let fingerprint = b"doc for bob".to_vec();
    let bob = server.devices[BOB].jid();
    let send = |message: Message| SendRequest {
        to: to.clone(),
        message,
        idempotency_key: Some("d1".into()),
        fingerprint: Some(fingerprint.clone()),
    };
    let now = server.clock;
    let device = &mut server.devices[ALICE];
    let step = device
        .engine
        .handle_sends(
            vec![(send(info.to_message()), 1)],
            &mut device.keys,
            &device.creds,
            now,
        )
        .expect("step");
    let out = device.apply(step);
    server.receive(ALICE, out);
    server.run();
    let late = server.clock + SEND_TIMEOUT_MS;
    let step = server.devices[ALICE].engine.handle_timeout(late);
    server.devices[ALICE].apply(step);

    // Stored, not acknowledged: the owner need not upload again.
    server.drop_acks_to = None;
    let device = &mut server.devices[ALICE];
    let state = device
        .engine
        .idempotency_of("d1", &fingerprint, &bob, &mut device.keys)
        .expect("read");
    assert_eq!(state.ok(), Some(IdempotencyState::Pending));
    let step = device
        .engine
        .handle_sends(
            vec![(send(Message::default()), 2)],
            &mut device.keys,
            &device.creds,
            late,
        )
        .expect("step");
    let out = device.apply(step);
    let written: Vec<Vec<u8>> = device
        .wrote
        .iter()
        .filter(|n| n.tag() == "message")
        .map(binary::encode)
        .collect();
    assert_eq!(written.len(), 2);
    assert_eq!(written[0], written[1], "the same bytes again");
    server.receive(ALICE, out);
    server.run();
    assert!(matches!(server.reply(ALICE, 2), Some(Ok(_))));
    // The own event reports the media first sent.
    let own = server.devices[ALICE]
        .events
        .iter()
        .find_map(|e| match e {
            Event::Message(m) if m.from_me => Some(m.clone()),
            _ => None,
        })
        .expect("own event");
    assert_eq!(own.kind, "documentMessage");
    let media = own.media.expect("media");
    assert_eq!(media.file_name.as_deref(), Some("a.pdf"));

    // An empty message never goes out as a new one.
    let device = &mut server.devices[ALICE];
    let step = device
        .engine
        .handle_sends(
            vec![(
                SendRequest {
                    idempotency_key: Some("d2".into()),
                    ..send(Message::default())
                },
                3,
            )],
            &mut device.keys,
            &device.creds,
            late,
        )
        .expect("step");
    assert!(step.transmit.is_empty());
    assert!(matches!(
        step.replies.as_slice(),
        [(3, Err(SendError::Unsupported(_)))]
    ));
}
