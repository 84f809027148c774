//! Who gets our sender key, counted by the simulator: every member device
//! once, then nobody again — not after a gateway restart in the middle of
//! the conversation — only a new member after an add, and every remaining
//! device (a new key) after a removal, while the removed member reads
//! nothing new. The group holds virtual phones and a companion device
//! (a second session of the same gateway, linked to a phone's account).

mod common;

use std::collections::HashMap;

use common::*;
use tonic::transport::Channel;
use tonic::Streaming;
use wagate::proto::gateway::gateway_client::GatewayClient;
use wagate::proto::gateway::{Event, SendRequest, SessionState};
use wagate::proto::sim::simulator_client::SimulatorClient;
use wagate::proto::sim::{
    AddVirtualDeviceRequest, CreateGroupRequest, GroupInfoRequest, ListAccountsRequest,
    UpdateGroupParticipantsRequest,
};

const OWN: &str = "+15550007001";
const ANN: &str = "+15550007002";
const BEN: &str = "+15550007003";
const CAT: &str = "+15550007004";

/// Group key distributions the simulator counted, by device JID.
async fn distributions(control: &mut SimulatorClient<Channel>) -> HashMap<String, u32> {
    control
        .list_accounts(ListAccountsRequest::default())
        .await
        .expect("ListAccounts")
        .into_inner()
        .accounts
        .into_iter()
        .flat_map(|a| a.devices)
        .map(|d| (d.jid, d.group_key_distributions))
        .collect()
}

/// Size of the last message stanza sent to `group`, as the server got it.
async fn stanza_bytes(control: &mut SimulatorClient<Channel>, group: &str) -> u64 {
    control
        .group_info(GroupInfoRequest {
            group_jid: group.to_owned(),
        })
        .await
        .expect("GroupInfo")
        .into_inner()
        .last_message_bytes
}

/// What changed between two counts, devices without change left out.
fn grown(before: &HashMap<String, u32>, after: &HashMap<String, u32>) -> HashMap<String, u32> {
    after
        .iter()
        .filter_map(|(jid, n)| {
            let delta = n - before.get(jid).copied().unwrap_or(0);
            (delta > 0).then(|| (jid.clone(), delta))
        })
        .collect()
}

fn once(devices: &[&str]) -> HashMap<String, u32> {
    devices.iter().map(|d| ((*d).to_owned(), 1)).collect()
}

async fn send(client: &mut GatewayClient<Channel>, group: &str, text: &str) -> String {
    client
        .send(SendRequest {
            session_id: "own".into(),
            to: group.into(),
            text: text.into(),
            idempotency_key: format!("key-{text}"),
            ..Default::default()
        })
        .await
        .expect("Send to the group")
        .into_inner()
        .message_id
}

/// The group texts a session's stream shows until `last` arrives.
async fn texts_until(events: &mut Streaming<Event>, group: &str, last: &str) -> Vec<String> {
    let (event, seen) = wait_for(events, last, |e| {
        message_of(e).is_some_and(|m| m.chat == group && m.text == last)
    })
    .await;
    let mut texts = group_texts(&seen, group);
    texts.extend(group_texts(&[event], group));
    texts
}

/// Texts others sent to `group` among `events`.
fn group_texts(events: &[Event], group: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(message_of)
        .filter(|m| m.chat == group && !m.from_me)
        .map(|m| m.text.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_keys_reach_each_device_once_across_restart_add_and_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (own_device, mut events) = pair_with(&mut sim.control, &mut client, "own", OWN).await;
    create_account(&mut sim.control, ANN, "Ann").await;
    create_account(&mut sim.control, BEN, "Ben").await;
    create_account(&mut sim.control, CAT, "Cat").await;
    let (ann_web, mut ann_events) = pair_with(&mut sim.control, &mut client, "ann", ANN).await;
    // Ben has a second device that is never online: it gets the key too.
    let ben_second = sim
        .control
        .add_virtual_device(AddVirtualDeviceRequest { phone: BEN.into() })
        .await
        .expect("AddVirtualDevice")
        .into_inner()
        .device_jid;

    let group = sim
        .control
        .create_group(CreateGroupRequest {
            phone: ANN.into(),
            subject: "Keys".into(),
            participants: vec![OWN.into(), BEN.into()],
            lid_addressed: false,
        })
        .await
        .expect("CreateGroup")
        .into_inner()
        .group_jid;
    wait_for(&mut events, "the group's creation", |e| {
        group_of(e).is_some_and(|g| g.group == group)
    })
    .await;

    // First message: our key goes once to every other device of the group,
    // our own phone included.
    let ann_phone = "15550007002@s.whatsapp.net";
    let ben_phone = "15550007003@s.whatsapp.net";
    let cat_phone = "15550007004@s.whatsapp.net";
    let own_phone = "15550007001@s.whatsapp.net";
    let start = distributions(&mut sim.control).await;
    let id = send(&mut client, &group, "one").await;
    let after_one = distributions(&mut sim.control).await;
    assert_eq!(
        grown(&start, &after_one),
        once(&[ann_phone, &ann_web, ben_phone, &ben_second, own_phone]),
        "we are {own_device}"
    );
    delivered_to(&mut events, &id, &["15550007002", "15550007003"]).await;
    let first_size = stanza_bytes(&mut sim.control, &group).await;

    // Second message: nobody gets the key again, and the stanza is the
    // skmsg alone.
    send(&mut client, &group, "two").await;
    let after_two = distributions(&mut sim.control).await;
    assert_eq!(grown(&after_one, &after_two), HashMap::new());
    let second_size = stanza_bytes(&mut sim.control, &group).await;
    assert!(
        0 < second_size && second_size + 5 * 100 < first_size,
        "five pairwise keys make the first stanza larger: {first_size} vs {second_size}"
    );
    assert_eq!(
        texts_until(&mut ann_events, &group, "two").await,
        ["one", "two"]
    );

    // The gateway restarts (same data dir) mid-conversation: the next
    // message carries no key either, and everybody reads it, once.
    gateway.shutdown().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = common::client(gateway.addr).await;
    let mut events = events_after(&mut client, "own", 0).await;
    let mut ann_events = events_after(&mut client, "ann", 0).await;
    // Each stream replays the first CONNECTED; the restart adds another.
    // Ann's companion replays the texts it read before, once each.
    let mut replayed = Vec::new();
    for (stream, who) in [(&mut events, "own"), (&mut ann_events, "ann")] {
        for _ in 0..2 {
            let (_, seen) = wait_for(stream, who, |e| is_state(e, SessionState::Connected)).await;
            replayed.extend(group_texts(&seen, &group));
        }
    }
    let id = send(&mut client, &group, "three").await;
    let after_three = distributions(&mut sim.control).await;
    assert_eq!(grown(&after_two, &after_three), HashMap::new());
    delivered_to(&mut events, &id, &["15550007002", "15550007003"]).await;
    replayed.extend(texts_until(&mut ann_events, &group, "three").await);
    assert_eq!(
        replayed,
        ["one", "two", "three"],
        "the companion decrypts with the key it already had"
    );
    for phone in [ANN, BEN] {
        assert_eq!(
            chat_texts(&mut sim.control, phone, &group).await,
            ["one", "two", "three"],
            "{phone}"
        );
    }

    // Cat joins: only Cat's device is handed the key.
    sim.control
        .update_group_participants(UpdateGroupParticipantsRequest {
            phone: ANN.into(),
            group_jid: group.clone(),
            action: "add".into(),
            participants: vec![CAT.into()],
        })
        .await
        .expect("add Cat");
    wait_for(&mut events, "Cat's arrival", |e| {
        group_of(e).is_some_and(|g| g.participants.iter().any(|p| p.starts_with("15550007004")))
    })
    .await;
    let id = send(&mut client, &group, "four").await;
    let after_four = distributions(&mut sim.control).await;
    assert_eq!(grown(&after_three, &after_four), once(&[cat_phone]));
    delivered_to(
        &mut events,
        &id,
        &["15550007002", "15550007003", "15550007004"],
    )
    .await;
    assert_eq!(chat_texts(&mut sim.control, CAT, &group).await, ["four"]);

    // Ben is removed: a new key for every remaining device, none for Ben,
    // and Ben reads nothing new.
    sim.control
        .update_group_participants(UpdateGroupParticipantsRequest {
            phone: ANN.into(),
            group_jid: group.clone(),
            action: "remove".into(),
            participants: vec![BEN.into()],
        })
        .await
        .expect("remove Ben");
    wait_for(&mut events, "Ben's removal", |e| {
        group_of(e).is_some_and(|g| {
            g.change == wagate::proto::gateway::GroupChange::GroupParticipantsRemoved as i32
        })
    })
    .await;
    let id = send(&mut client, &group, "five").await;
    let after_five = distributions(&mut sim.control).await;
    assert_eq!(
        grown(&after_four, &after_five),
        once(&[ann_phone, &ann_web, cat_phone, own_phone])
    );
    delivered_to(&mut events, &id, &["15550007002", "15550007004"]).await;
    assert_eq!(
        texts_until(&mut ann_events, &group, "five").await,
        ["four", "five"],
        "the companion reads the new key's messages"
    );
    assert_eq!(
        chat_texts(&mut sim.control, BEN, &group).await,
        ["one", "two", "three", "four"]
    );
    assert_eq!(
        chat_texts(&mut sim.control, CAT, &group).await,
        ["four", "five"]
    );
    gateway.shutdown().await;
}

/// A group larger than the gateway's old device-list cache (256 users):
/// the first message still carries our key for every device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_group_gets_the_key_on_every_device() {
    const MEMBERS: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (_, mut events) = pair_with(&mut sim.control, &mut client, "own", OWN).await;
    let phones: Vec<String> = (0..MEMBERS).map(|n| format!("+1555008{n:04}")).collect();
    for phone in &phones {
        create_account(&mut sim.control, phone, "Member").await;
    }
    let group = sim
        .control
        .create_group(CreateGroupRequest {
            phone: phones[0].clone(),
            subject: "Many".into(),
            participants: phones[1..]
                .iter()
                .cloned()
                .chain([OWN.to_owned()])
                .collect(),
            lid_addressed: false,
        })
        .await
        .expect("CreateGroup")
        .into_inner()
        .group_jid;
    wait_for(&mut events, "the group's creation", |e| {
        group_of(e).is_some_and(|g| g.group == group)
    })
    .await;
    let start = distributions(&mut sim.control).await;
    send(&mut client, &group, "to everyone").await;
    let keyed = grown(&start, &distributions(&mut sim.control).await);
    // Every member's phone and our own phone.
    assert_eq!(keyed.len(), MEMBERS + 1, "devices given our key");
    assert!(keyed.values().all(|n| *n == 1), "{keyed:?}");
    let last = phones.last().expect("members");
    let deadline = tokio::time::Instant::now() + WAIT;
    while chat_texts(&mut sim.control, last, &group).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the last member never read it"
        );
        // The next look at the inbox, not a wait for it to be filled.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    gateway.shutdown().await;
}
