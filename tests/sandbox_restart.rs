//! The sandbox (`serve --sim`) keeps its simulated accounts in the data dir:
//! after a restart every paired session comes back CONNECTED and chats on
//! (one-to-one both ways, and in a group), and a text queued for a device
//! that was offline across the restart is delivered once it connects.

mod common;

use common::*;
use tonic::transport::Channel;
use tonic::Streaming;
use wagate::app::Running;
use wagate::proto::gateway::gateway_client::GatewayClient;
use wagate::proto::gateway::{
    DisconnectRequest, Event, InitRequest, ReceiptType, SendRequest, SessionState,
};
use wagate::proto::sim::simulator_client::SimulatorClient;
use wagate::proto::sim::{
    CreateGroupRequest, ListAccountsRequest, SendGroupTextRequest, SendTextRequest,
};

const ALICE: &str = "+15550005555";
const CAROL: &str = "+15550006666";
const BOB: &str = "+15550007777";
const BOB_JID: &str = "15550007777@s.whatsapp.net";

struct Sandbox {
    running: Running,
    client: GatewayClient<Channel>,
    control: SimulatorClient<Channel>,
}

async fn start(dir: &std::path::Path) -> Sandbox {
    let running = start_gateway(sandbox_options(dir)).await;
    let client = client(running.addr).await;
    let control = SimulatorClient::connect(format!("http://{}", running.addr))
        .await
        .expect("control connects");
    Sandbox {
        running,
        client,
        control,
    }
}

async fn phone_sends(control: &mut SimulatorClient<Channel>, to: &str, text: &str) -> String {
    control
        .send_text(SendTextRequest {
            from_phone: BOB.into(),
            to: to.into(),
            text: text.into(),
            from_lid: false,
        })
        .await
        .expect("SendText")
        .into_inner()
        .message_id
}

async fn group_text(control: &mut SimulatorClient<Channel>, group: &str, text: &str) -> String {
    control
        .send_group_text(SendGroupTextRequest {
            from_phone: BOB.into(),
            group_jid: group.into(),
            text: text.into(),
        })
        .await
        .expect("SendGroupText")
        .into_inner()
        .message_id
}

/// Waits for the message event with `id`; returns it.
async fn message(events: &mut Streaming<Event>, id: &str) -> Event {
    wait_for(events, "a message event", |e| {
        message_of(e).is_some_and(|m| m.id == id)
    })
    .await
    .0
}

/// Sends a text to Bob and waits for his phone's delivery receipt.
async fn send_to_bob(
    client: &mut GatewayClient<Channel>,
    events: &mut Streaming<Event>,
    session: &str,
    text: &str,
) {
    let sent = client
        .send(SendRequest {
            session_id: session.into(),
            to: BOB.into(),
            text: text.into(),
            ..Default::default()
        })
        .await
        .expect("Send")
        .into_inner();
    wait_for(events, "Bob's delivery receipt", |e| {
        receipt_of(e).is_some_and(|r| {
            r.message_ids.contains(&sent.message_id) && r.r#type == ReceiptType::Delivered as i32
        })
    })
    .await;
}

/// Waits until the session is CONNECTED; fails at once if it was logged out.
async fn connected(events: &mut Streaming<Event>, session: &str) {
    let (event, _) = wait_for(events, "CONNECTED after the restart", |e| {
        is_state(e, SessionState::Connected) || is_state(e, SessionState::LoggedOut)
    })
    .await;
    assert!(
        is_state(&event, SessionState::Connected),
        "{session} came back as {event:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_sessions_survive_a_restart_and_chat_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sandbox = start(dir.path()).await;
    let (alice_device, mut alice) =
        pair_with(&mut sandbox.control, &mut sandbox.client, "alice", ALICE).await;
    let (_, mut carol) = pair_with(&mut sandbox.control, &mut sandbox.client, "carol", CAROL).await;
    create_account(&mut sandbox.control, BOB, "Bob").await;

    // Chats before the restart: Signal sessions and a group sender key exist.
    let id = phone_sends(&mut sandbox.control, ALICE, "hi alice").await;
    message(&mut alice, &id).await;
    let id = phone_sends(&mut sandbox.control, CAROL, "hi carol").await;
    message(&mut carol, &id).await;
    send_to_bob(&mut sandbox.client, &mut alice, "alice", "hi bob").await;
    let group = sandbox
        .control
        .create_group(CreateGroupRequest {
            phone: BOB.into(),
            subject: "Restarts".into(),
            participants: vec![ALICE.into(), CAROL.into()],
            lid_addressed: false,
        })
        .await
        .expect("CreateGroup")
        .into_inner()
        .group_jid;
    let id = group_text(&mut sandbox.control, &group, "before").await;
    let alice_cursor = message(&mut alice, &id).await.cursor;

    // Carol goes offline; a text for her waits in the server's queue.
    sandbox
        .client
        .disconnect(DisconnectRequest {
            session_id: "carol".into(),
            logout: false,
        })
        .await
        .expect("Disconnect");
    let carol_cursor = wait_for(&mut carol, "carol DISCONNECTED", |e| {
        is_state(e, SessionState::Disconnected)
    })
    .await
    .0
    .cursor;
    let waiting = phone_sends(&mut sandbox.control, CAROL, "while you were away").await;
    let accounts_before = sandbox
        .control
        .list_accounts(ListAccountsRequest::default())
        .await
        .expect("ListAccounts")
        .into_inner()
        .accounts;

    // Restart the whole sandbox on the same data dir.
    drop((alice, carol));
    let Sandbox { running, .. } = sandbox;
    running.shutdown().await;
    let mut sandbox = start(dir.path()).await;

    let accounts_after = sandbox
        .control
        .list_accounts(ListAccountsRequest::default())
        .await
        .expect("ListAccounts")
        .into_inner()
        .accounts;
    let devices = |accounts: &[wagate::proto::sim::Account]| -> Vec<(String, Vec<String>)> {
        accounts
            .iter()
            .map(|a| {
                (
                    a.phone.clone(),
                    a.devices.iter().map(|d| d.jid.clone()).collect(),
                )
            })
            .collect()
    };
    assert_eq!(devices(&accounts_after), devices(&accounts_before));

    let mut alice = events_after(&mut sandbox.client, "alice", alice_cursor).await;
    connected(&mut alice, "alice").await;
    let status = sandbox
        .client
        .status(wagate::proto::gateway::StatusRequest {
            session_id: "alice".into(),
        })
        .await
        .expect("Status")
        .into_inner();
    assert_eq!(status.state, SessionState::Connected as i32);
    assert_eq!(status.jid, alice_device);

    // One-to-one both ways, and the group, with the kept Signal state.
    let id = phone_sends(&mut sandbox.control, ALICE, "after the restart").await;
    let event = message(&mut alice, &id).await;
    assert_eq!(
        message_of(&event).expect("message").text,
        "after the restart"
    );
    send_to_bob(&mut sandbox.client, &mut alice, "alice", "still here").await;
    let bob_inbox = inbox(&mut sandbox.control, BOB).await;
    let texts: Vec<&str> = bob_inbox.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        ["hi bob", "still here"],
        "Bob's phone kept its inbox"
    );
    let id = group_text(&mut sandbox.control, &group, "after").await;
    let event = message(&mut alice, &id).await;
    let m = message_of(&event).expect("message");
    assert_eq!(
        (m.chat.as_str(), m.text.as_str()),
        (group.as_str(), "after")
    );
    assert_eq!(m.sender_phone, BOB_JID.trim_end_matches("@s.whatsapp.net"));

    // Carol comes back: the queued text is delivered, once.
    let mut carol = events_after(&mut sandbox.client, "carol", carol_cursor).await;
    sandbox
        .client
        .init(InitRequest {
            session_id: "carol".into(),
            ..Default::default()
        })
        .await
        .expect("Init");
    let (event, before) = wait_for(&mut carol, "the queued text", |e| {
        message_of(e).is_some_and(|m| m.id == waiting)
    })
    .await;
    let m = message_of(&event).expect("message");
    assert_eq!(m.text, "while you were away");
    assert!(m.offline, "delivered from the offline queue");
    assert!(
        !before.iter().any(|e| is_state(e, SessionState::LoggedOut)),
        "carol was logged out: {before:?}"
    );
    if !before.iter().any(|e| is_state(e, SessionState::Connected)) {
        connected(&mut carol, "carol").await;
    }
    send_to_bob(&mut sandbox.client, &mut carol, "carol", "back").await;
    let marker = phone_sends(&mut sandbox.control, CAROL, "marker").await;
    let (_, before) = wait_for(&mut carol, "the marker", |e| {
        message_of(e).is_some_and(|m| m.id == marker)
    })
    .await;
    assert!(
        !before
            .iter()
            .any(|e| message_of(e).is_some_and(|m| m.id == waiting)),
        "the queued text arrived twice"
    );

    sandbox.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_simulator_keeps_its_devices_and_their_queues() {
    let gateway_dir = tempfile::tempdir().expect("tempdir");
    let sim_dir = tempfile::tempdir().expect("tempdir");
    let config = |listen| wagate::sim::SimConfig {
        listen,
        seed: Some(9),
        data_dir: Some(sim_dir.path().to_path_buf()),
    };
    let mut sim = start_sim_with(config("127.0.0.1:0".parse().expect("address"))).await;
    let listen = sim.sim.local_addr();
    let gateway = start_gateway(options(gateway_dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (_, mut alice) = pair_with(&mut sim.control, &mut client, "alice", ALICE).await;
    let (_, mut carol) = pair_with(&mut sim.control, &mut client, "carol", CAROL).await;
    create_account(&mut sim.control, BOB, "Bob").await;
    let id = phone_sends(&mut sim.control, ALICE, "hi alice").await;
    message(&mut alice, &id).await;

    // Carol is offline when the text for her is queued; the simulator then
    // restarts on the same address and data dir, under the running gateway.
    client
        .disconnect(DisconnectRequest {
            session_id: "carol".into(),
            logout: false,
        })
        .await
        .expect("Disconnect");
    wait_for(&mut carol, "carol DISCONNECTED", |e| {
        is_state(e, SessionState::Disconnected)
    })
    .await;
    let waiting = phone_sends(&mut sim.control, CAROL, "queued across the restart").await;
    let root = sim.sim.root_public_key();
    sim.sim.shutdown().await;
    let mut sim = start_sim_with(config(listen)).await;
    assert_eq!(sim.sim.root_public_key(), root, "the same server keys");

    // Alice's session reconnects by itself and chats on.
    connected(&mut alice, "alice").await;
    let id = phone_sends(&mut sim.control, ALICE, "after the restart").await;
    message(&mut alice, &id).await;
    send_to_bob(&mut client, &mut alice, "alice", "still here").await;

    // Carol connects again and gets what was queued for her.
    client
        .init(InitRequest {
            session_id: "carol".into(),
            ..Default::default()
        })
        .await
        .expect("Init");
    let event = message(&mut carol, &waiting).await;
    let m = message_of(&event).expect("message");
    assert_eq!(m.text, "queued across the restart");
    assert!(m.offline, "delivered from the offline queue");

    gateway.shutdown().await;
    sim.sim.shutdown().await;
}

#[tokio::test]
async fn an_unreadable_state_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("sim")).expect("sim dir");
    std::fs::write(
        dir.path().join("sim/state.pb"),
        b"WGSIM\x00\x00\x01\x0a\xff",
    )
    .expect("write");
    let Err(err) = wagate::app::start(sandbox_options(dir.path())).await else {
        panic!("a sandbox started on a corrupt state file");
    };
    let message = err.to_string();
    assert!(message.contains("state.pb"), "{message}");
    assert!(message.contains("unreadable"), "{message}");
}
