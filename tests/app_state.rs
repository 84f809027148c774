//! App state end to end: the virtual phone keeps contacts and chat settings
//! before a gateway session pairs with it; after pairing the session reports
//! each as a contact or chat-settings event; a change made on the phone
//! meanwhile reaches the session live (`server_sync`); a contact's push
//! name joins its contact when a message carries it; and a restarted
//! gateway resumes from the versions it stored, reporting only what is new.
//! A first sync takes each collection's snapshot (its current entries) from
//! the media host rather than every patch since the collection began.

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use tonic::transport::Channel;
use tonic::Streaming;
use wagate::proto::gateway::{event, ChatSettingsEvent, ContactEvent, Event, SessionState};
use wagate::proto::sim::simulator_client::SimulatorClient;
use wagate::proto::sim::{SendTextRequest, SetChatSettingsRequest, SetContactRequest};

const ALICE: &str = "+15550008001";
const BOB: &str = "15550008002";
const CAROL: &str = "15550008003";
const DAVE: &str = "15550008004";
const MUTE_END_MS: i64 = 1_900_000_000_000;

/// What a chat's reported settings must satisfy.
type ChatCheck = fn(&ChatSettingsEvent) -> bool;

fn jid(phone: &str) -> String {
    format!("{phone}@s.whatsapp.net")
}

fn contact_of(event: &Event) -> Option<&ContactEvent> {
    match &event.payload {
        Some(event::Payload::Contact(c)) => Some(c),
        _ => None,
    }
}

fn chat_of(event: &Event) -> Option<&ChatSettingsEvent> {
    match &event.payload {
        Some(event::Payload::ChatSettings(c)) => Some(c),
        _ => None,
    }
}

async fn set_contact(
    control: &mut SimulatorClient<Channel>,
    contact: &str,
    full: &str,
    first: &str,
) {
    control
        .set_contact(SetContactRequest {
            phone: ALICE.into(),
            contact: contact.into(),
            full_name: full.into(),
            first_name: first.into(),
        })
        .await
        .expect("SetContact");
}

async fn set_chat(control: &mut SimulatorClient<Channel>, request: SetChatSettingsRequest) {
    control
        .set_chat_settings(SetChatSettingsRequest {
            phone: ALICE.into(),
            ..request
        })
        .await
        .expect("SetChatSettings");
}

/// Reads events until every contact in `contacts` (JID → full name) and
/// every chat in `chats` (JID → what its settings must satisfy) was
/// reported; returns every event read.
async fn until_reported(
    events: &mut Streaming<Event>,
    contacts: &[(&str, &str)],
    chats: &[(&str, ChatCheck)],
) -> Vec<Event> {
    let mut want_contacts: HashMap<String, String> = contacts
        .iter()
        .map(|(j, n)| (j.to_string(), n.to_string()))
        .collect();
    let mut want_chats: HashMap<String, ChatCheck> =
        chats.iter().map(|(j, f)| (j.to_string(), *f)).collect();
    let (last, mut seen) = wait_for(events, "contact and chat-settings events", |e| {
        if let Some(c) = contact_of(e) {
            if want_contacts.get(&c.jid) == Some(&c.full_name) {
                want_contacts.remove(&c.jid);
            }
        }
        if let Some(c) = chat_of(e) {
            if want_chats.get(&c.chat).is_some_and(|ok| ok(c)) {
                want_chats.remove(&c.chat);
            }
        }
        want_contacts.is_empty() && want_chats.is_empty()
    })
    .await;
    seen.push(last);
    seen
}

#[tokio::test]
async fn contacts_and_chat_settings_reach_the_gateway_and_survive_a_restart() {
    let mut sim = start_sim().await;
    let control = &mut sim.control;
    create_account(control, ALICE, "Alice").await;
    create_account(control, BOB, "Bob").await;
    create_account(control, CAROL, "Carol").await;

    // The phone's state before any companion exists.
    set_contact(control, BOB, "Bob Builder", "Bob").await;
    set_contact(control, &jid(CAROL), "Carol Chen", "Carol").await;
    set_chat(
        control,
        SetChatSettingsRequest {
            chat: BOB.into(),
            archived: Some(true),
            muted_until_ms: Some(-1),
            ..Default::default()
        },
    )
    .await;
    set_chat(
        control,
        SetChatSettingsRequest {
            chat: CAROL.into(),
            pinned: Some(true),
            ..Default::default()
        },
    )
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut gw = client(gateway.addr).await;
    let (_, mut events) = pair_with(&mut sim.control, &mut gw, "alice", ALICE).await;
    let control = &mut sim.control;

    let seen = until_reported(
        &mut events,
        &[(&jid(BOB), "Bob Builder"), (&jid(CAROL), "Carol Chen")],
        &[
            (&jid(BOB), |c| {
                c.archived && c.muted && c.muted_until.is_none() && !c.pinned
            }),
            (&jid(CAROL), |c| c.pinned && !c.archived && !c.muted),
        ],
    )
    .await;
    let bob = seen
        .iter()
        .filter_map(contact_of)
        .find(|c| c.jid == jid(BOB))
        .expect("Bob's contact");
    assert_eq!((bob.first_name.as_str(), bob.phone.as_str()), ("Bob", BOB));

    // A change on the phone while the session is connected.
    set_chat(
        control,
        SetChatSettingsRequest {
            chat: CAROL.into(),
            archived: Some(true),
            muted_until_ms: Some(MUTE_END_MS),
            ..Default::default()
        },
    )
    .await;
    until_reported(
        &mut events,
        &[],
        &[(&jid(CAROL), |c| {
            c.pinned
                && c.archived
                && c.muted
                && c.muted_until.as_ref().map(|t| t.seconds) == Some(MUTE_END_MS / 1000)
        })],
    )
    .await;

    // A message from Bob names him: his push name joins his contact, once.
    for text in ["hi", "again"] {
        control
            .send_text(SendTextRequest {
                from_phone: BOB.into(),
                to: ALICE.into(),
                text: text.into(),
                from_lid: false,
            })
            .await
            .expect("SendText");
    }
    let (named, _) = wait_for(&mut events, "Bob's push name", |e| {
        contact_of(e).is_some_and(|c| c.jid == jid(BOB) && c.push_name == "Bob")
    })
    .await;
    assert_eq!(
        contact_of(&named).expect("contact").full_name,
        "Bob Builder"
    );
    let (_, between) = wait_for(&mut events, "the second text", |e| {
        message_of(e).is_some_and(|m| m.text == "again")
    })
    .await;
    assert!(
        between.iter().all(|e| contact_of(e).is_none()),
        "the same push name is reported once: {between:#?}"
    );

    // Restart: the stored versions hold, so only what changes after it is
    // reported.
    let before_restart = gateway.manager.events().last_cursor();
    gateway.shutdown().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut gw = client(gateway.addr).await;
    let mut events = events_after(&mut gw, "alice", before_restart).await;
    wait_for(&mut events, "a post-restart CONNECTED", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    let control = &mut sim.control;
    set_contact(control, DAVE, "Dave Diaz", "Dave").await;
    set_chat(
        control,
        SetChatSettingsRequest {
            chat: DAVE.into(),
            pinned: Some(true),
            unread: Some(true),
            ..Default::default()
        },
    )
    .await;
    let after = until_reported(
        &mut events,
        &[(&jid(DAVE), "Dave Diaz")],
        &[(&jid(DAVE), |c| c.pinned && c.unread)],
    )
    .await;
    let reported: HashSet<&str> = after
        .iter()
        .filter_map(|e| {
            contact_of(e)
                .map(|c| c.jid.as_str())
                .or_else(|| chat_of(e).map(|c| c.chat.as_str()))
        })
        .collect();
    assert_eq!(
        reported,
        HashSet::from([jid(DAVE).as_str()]),
        "nothing reported twice: {after:#?}"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_first_sync_takes_the_snapshot_not_the_history_of_patches() {
    let mut sim = start_sim().await;
    let control = &mut sim.control;
    create_account(control, ALICE, "Alice").await;
    create_account(control, DAVE, "Dave").await;
    // Renamed twice before any companion exists: the patches hold every
    // name, the snapshot only the last.
    set_contact(control, DAVE, "Dave First", "Dave").await;
    set_contact(control, DAVE, "Dave Second", "Dave").await;
    set_contact(control, DAVE, "Dave Third", "Dave").await;
    set_chat(
        control,
        SetChatSettingsRequest {
            chat: DAVE.into(),
            pinned: Some(true),
            ..Default::default()
        },
    )
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut gw = client(gateway.addr).await;
    let (_, mut events) = pair_with(&mut sim.control, &mut gw, "alice", ALICE).await;
    let seen = until_reported(
        &mut events,
        &[(&jid(DAVE), "Dave Third")],
        &[(&jid(DAVE), |c: &ChatSettingsEvent| c.pinned)],
    )
    .await;
    let names: Vec<&str> = seen
        .iter()
        .filter_map(contact_of)
        .map(|c| c.full_name.as_str())
        .collect();
    assert_eq!(names, ["Dave Third"], "only the snapshot's entry");
    gateway.shutdown().await;
}
