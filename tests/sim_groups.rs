//! Groups on the simulator: virtual phones create a group, message it with
//! sender keys and change its members (notifications, fan-out that follows
//! membership, admin checks); and an unmodified Baileys (from npm) creates a
//! group, reads its metadata, sends to it and receives a phone's group text.

mod sim_support;

use std::time::Duration;

use sim_support::{path, Harness, NodeScript, STEP};
use tonic::Code;
use wagate::proto::sim::simulator_client::SimulatorClient;
use wagate::proto::sim::{
    CreateAccountRequest, CreateGroupRequest, GroupInfoRequest, GroupInviteCodeRequest,
    InboxMessage, InboxRequest, LeaveGroupRequest, ListGroupsRequest, SendGroupTextRequest,
    UpdateGroupParticipantsRequest,
};

type Control = SimulatorClient<tonic::transport::Channel>;

/// `WebMessageInfo.StubType` values Baileys gives group notifications.
const GROUP_CHANGE_SUBJECT: u64 = 21;
const GROUP_CHANGE_DESCRIPTION: u64 = 24;

async fn account(control: &mut Control, phone: &str, name: &str) -> String {
    control
        .create_account(CreateAccountRequest {
            phone: phone.into(),
            push_name: name.into(),
        })
        .await
        .expect("CreateAccount")
        .into_inner()
        .jid
}

async fn inbox(control: &mut Control, phone: &str) -> Vec<InboxMessage> {
    control
        .inbox(InboxRequest {
            phone: phone.into(),
        })
        .await
        .expect("Inbox")
        .into_inner()
        .messages
}

/// Waits until the phone's inbox holds a text with this id.
async fn received(control: &mut Control, phone: &str, id: &str) -> InboxMessage {
    let wait = async {
        loop {
            if let Some(m) = inbox(control, phone).await.into_iter().find(|m| m.id == id) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(STEP, wait)
        .await
        .unwrap_or_else(|_| panic!("{phone} did not receive {id} within {STEP:?}"))
}

async fn send(control: &mut Control, phone: &str, group: &str, text: &str) -> String {
    control
        .send_group_text(SendGroupTextRequest {
            from_phone: phone.into(),
            group_jid: group.into(),
            text: text.into(),
        })
        .await
        .expect("SendGroupText")
        .into_inner()
        .message_id
}

async fn update(
    control: &mut Control,
    phone: &str,
    group: &str,
    action: &str,
    participants: &[&str],
) -> Result<Vec<(String, u32)>, tonic::Status> {
    control
        .update_group_participants(UpdateGroupParticipantsRequest {
            phone: phone.into(),
            group_jid: group.into(),
            action: action.into(),
            participants: participants.iter().map(|p| (*p).to_owned()).collect(),
        })
        .await
        .map(|r| {
            r.into_inner()
                .results
                .into_iter()
                .map(|p| (p.jid, p.error))
                .collect()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_phones_message_a_group_that_follows_its_membership() {
    let harness = Harness::start().await;
    let mut control = harness.control.clone();
    let (a, b, c, d) = (
        "+15550400001",
        "+15550400002",
        "+15550400003",
        "+15550400004",
    );
    let a_jid = account(&mut control, a, "Ann").await;
    let b_jid = account(&mut control, b, "Ben").await;
    account(&mut control, c, "Cid").await;
    let d_jid = account(&mut control, d, "Dee").await;

    let group = control
        .create_group(CreateGroupRequest {
            phone: a.into(),
            subject: "Team".into(),
            participants: vec![b.into(), c.into(), "+15550409999".into()],
            lid_addressed: false,
        })
        .await
        .expect("CreateGroup")
        .into_inner()
        .group_jid;
    assert!(
        group.starts_with("120363") && group.ends_with("@g.us"),
        "{group}"
    );
    let info = control
        .group_info(GroupInfoRequest {
            group_jid: group.clone(),
        })
        .await
        .expect("GroupInfo")
        .into_inner();
    assert_eq!(info.subject, "Team");
    assert_eq!(info.creator, a_jid);
    let members: Vec<(&str, bool, bool)> = info
        .participants
        .iter()
        .map(|p| (p.jid.as_str(), p.admin, p.superadmin))
        .collect();
    assert_eq!(
        members,
        [
            ("15550400001@s.whatsapp.net", true, true),
            ("15550400002@s.whatsapp.net", false, false),
            ("15550400003@s.whatsapp.net", false, false),
        ],
        "a number without an account is left out"
    );

    // A sends: B and C read it with the group as chat and A as sender.
    let hello = send(&mut control, a, &group, "hello team").await;
    for phone in [b, c] {
        let got = received(&mut control, phone, &hello).await;
        assert_eq!(got.text, "hello team");
        assert_eq!(got.chat, group);
        assert_eq!(got.from, a_jid);
    }
    // B answers with its own sender key.
    let answer = send(&mut control, b, &group, "hi from ben").await;
    for phone in [a, c] {
        assert_eq!(received(&mut control, phone, &answer).await.from, b_jid);
    }
    assert!(inbox(&mut control, b).await.iter().all(|m| m.id != answer));

    // Only admins change members.
    let refused = update(&mut control, b, &group, "add", &[d]).await;
    assert_eq!(
        refused.expect_err("B is no admin").code(),
        Code::PermissionDenied
    );
    let added = update(&mut control, a, &group, "add", &[d, b])
        .await
        .expect("A adds");
    assert_eq!(
        added,
        [(d_jid.clone(), 0), (b_jid.clone(), 409)],
        "a member already in the group gets 409"
    );
    // The new member reads what follows from each sender.
    let welcome = send(&mut control, c, &group, "welcome dee").await;
    assert_eq!(
        received(&mut control, d, &welcome).await.text,
        "welcome dee"
    );
    let from_a = send(&mut control, a, &group, "from ann to four").await;
    assert_eq!(
        received(&mut control, d, &from_a).await.text,
        "from ann to four"
    );

    // C is removed: it receives nothing new and can no longer send.
    let removed = update(&mut control, a, &group, "remove", &[c])
        .await
        .expect("removed");
    assert_eq!(removed, [("15550400003@s.whatsapp.net".to_owned(), 0)]);
    let after = send(&mut control, a, &group, "after c left").await;
    for phone in [b, d] {
        assert_eq!(
            received(&mut control, phone, &after).await.text,
            "after c left"
        );
    }
    assert!(
        inbox(&mut control, c).await.iter().all(|m| m.id != after),
        "a removed member gets nothing new"
    );
    let status = control
        .send_group_text(SendGroupTextRequest {
            from_phone: c.into(),
            group_jid: group.clone(),
            text: "still here?".into(),
        })
        .await
        .expect_err("not a member");
    assert_eq!(status.code(), Code::PermissionDenied);
    let listed = |phone: &str| ListGroupsRequest {
        phone: phone.into(),
    };
    assert!(control
        .list_groups(listed(c))
        .await
        .expect("ListGroups")
        .into_inner()
        .groups
        .is_empty());
    assert_eq!(
        control
            .list_groups(listed(d))
            .await
            .expect("ListGroups")
            .into_inner()
            .groups[0]
            .jid,
        group
    );

    // D leaves; unknown groups are not found.
    control
        .leave_group(LeaveGroupRequest {
            phone: d.into(),
            group_jid: group.clone(),
        })
        .await
        .expect("LeaveGroup");
    let last = send(&mut control, b, &group, "two of us").await;
    assert_eq!(received(&mut control, a, &last).await.text, "two of us");
    assert!(inbox(&mut control, d).await.iter().all(|m| m.id != last));
    let unknown = control
        .group_info(GroupInfoRequest {
            group_jid: "120363000000000000@g.us".into(),
        })
        .await
        .expect_err("no such group");
    assert_eq!(unknown.code(), Code::NotFound);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_creates_reads_and_messages_a_group_with_virtual_phones() {
    let mut harness = Harness::start().await;
    let auth = tempfile::tempdir().expect("temp dir");
    let (device, _) = harness.pair("+1 555 050 0001", "Eve", auth.path()).await;
    assert_eq!(device, "15550500001:1@s.whatsapp.net");
    let mut control = harness.control.clone();
    let (a, b) = ("+15550500002", "+15550500003");
    let a_jid = account(&mut control, a, "Ann").await;
    let b_jid = account(&mut control, b, "Ben").await;

    let url = harness.sim.ws_url();
    let mut baileys = NodeScript::spawn("baileys-groups.js", &[&url, path(auth.path())]);
    baileys.wait_for("open", |_| true).await;

    // groupCreate: Baileys' account is the superadmin, the phones members.
    // The create notification reaches Baileys as well, before or after the
    // query's answer.
    baileys.command(&format!("create Weekend {a_jid},{b_jid}"));
    let (mut created, mut notified) = (None, None);
    while created.is_none() || notified.is_none() {
        let event = baileys.next_json().await;
        match event["event"].as_str() {
            Some("group") if event["command"] == "create" => created = Some(event),
            Some("groups.upsert") => notified = event["id"].as_str().map(str::to_owned),
            _ => {}
        }
    }
    let created = created.expect("created");
    let group = created["id"].as_str().expect("group id").to_owned();
    assert_eq!(notified.as_deref(), Some(group.as_str()));
    assert!(group.ends_with("@g.us"), "{group}");
    assert_eq!(created["subject"], "Weekend");
    assert_eq!(created["owner"], "15550500001@s.whatsapp.net");
    let participants = created["participants"].as_array().expect("participants");
    assert_eq!(participants.len(), 3, "{participants:?}");
    assert!(participants
        .iter()
        .any(|p| p["id"] == "15550500001@s.whatsapp.net" && p["admin"] == "superadmin"));

    // groupMetadata reads the same group back.
    baileys.command(&format!("meta {group}"));
    let meta = baileys.wait_for("group", |v| v["command"] == "meta").await;
    assert_eq!(meta["id"], group.as_str());
    assert_eq!(meta["participants"].as_array().map(Vec::len), Some(3));

    // Subject and description changes: answered, notified back to Baileys
    // (stub messages), and kept; a second description names the first as
    // its predecessor, as Baileys reads it from the group's metadata.
    baileys.command(&format!("subject {group} Long weekend"));
    baileys
        .wait_for("done", |v| v["command"] == "subject")
        .await;
    baileys
        .wait_for("message", |v| v["stub"] == GROUP_CHANGE_SUBJECT)
        .await;
    for text in ["Plans", "Plans v2"] {
        baileys.command(&format!("desc {group} {text}"));
        baileys.wait_for("done", |v| v["command"] == "desc").await;
        baileys
            .wait_for("message", |v| v["stub"] == GROUP_CHANGE_DESCRIPTION)
            .await;
    }
    let info = control
        .group_info(GroupInfoRequest {
            group_jid: group.clone(),
        })
        .await
        .expect("GroupInfo")
        .into_inner();
    assert_eq!(info.subject, "Long weekend");
    assert_eq!(info.description, "Plans v2");

    // Baileys → group: both phones read it (sender key, then skmsg).
    baileys.command(&format!("send {group} hello weekend"));
    let sent = baileys.wait_for("sent", |_| true).await;
    let sent_id = sent["id"].as_str().expect("sent id").to_owned();
    assert_eq!(sent["to"], group.as_str());
    for phone in [a, b] {
        let got = received(&mut control, phone, &sent_id).await;
        assert_eq!(got.text, "hello weekend");
        assert_eq!(got.chat, group);
        assert_eq!(got.from, device);
    }
    // Each phone's delivery receipt reaches Baileys as the group's receipt
    // from that member.
    let mut readers = Vec::new();
    while readers.len() < 2 {
        let receipt = baileys
            .wait_for("receipt", |v| v["id"] == sent_id.as_str())
            .await;
        assert_eq!(receipt["remoteJid"], group.as_str());
        assert_eq!(receipt["delivered"], true);
        readers.push(receipt["userJid"].as_str().unwrap_or_default().to_owned());
    }
    readers.sort();
    assert_eq!(readers, [a_jid.clone(), b_jid.clone()]);

    // Phone → group: Baileys reads it with the group as chat and the phone
    // as participant.
    let reply = send(&mut control, a, &group, "hello eve").await;
    let got = baileys
        .wait_for("message", |v| v["id"] == reply.as_str())
        .await;
    assert_eq!(got["from"], group.as_str());
    assert_eq!(got["participant"], a_jid.as_str());
    assert_eq!(got["text"], "hello eve");
    assert_eq!(got["fromMe"], false);

    // Baileys' account removes B: Baileys is told, and what it sends next
    // reaches A but not B.
    let removed = update(&mut control, "+15550500001", &group, "remove", &[b])
        .await
        .expect("the creator removes B");
    assert_eq!(removed, [(b_jid.clone(), 0)]);
    let change = baileys
        .wait_for("participants", |v| v["action"] == "remove")
        .await;
    assert_eq!(change["participants"][0], b_jid.as_str());
    baileys.command(&format!("send {group} only two now"));
    let sent = baileys.wait_for("sent", |_| true).await;
    let after = sent["id"].as_str().expect("sent id").to_owned();
    assert_eq!(received(&mut control, a, &after).await.text, "only two now");
    assert!(
        inbox(&mut control, b).await.iter().all(|m| m.id != after),
        "a removed member gets nothing new"
    );

    // A group a phone made, with Baileys' account as a plain member: the
    // create notification reaches Baileys, the server refuses its member
    // changes (403), and both groups are listed as participating.
    let second = control
        .create_group(CreateGroupRequest {
            phone: a.into(),
            subject: "Ann's".into(),
            participants: vec!["15550500001@s.whatsapp.net".into()],
            lid_addressed: false,
        })
        .await
        .expect("CreateGroup")
        .into_inner()
        .group_jid;
    baileys
        .wait_for("groups.upsert", |v| v["id"] == second.as_str())
        .await;
    baileys.command(&format!("update {second} add {b_jid}"));
    let refused = baileys.wait_for("error", |_| true).await;
    assert_eq!(refused["command"], "update");
    assert_eq!(refused["code"], 403);
    baileys.command("all");
    let all = baileys.wait_for("all", |_| true).await;
    let mut expected = vec![group.clone(), second.clone()];
    expected.sort();
    assert_eq!(all["ids"], serde_json::json!(expected));

    // Baileys leaves the second group: A's next text there does not reach it,
    // while a text in the first group still does.
    baileys.command(&format!("leave {second}"));
    baileys.wait_for("left", |_| true).await;
    let gone = send(&mut control, a, &second, "you left").await;
    let still = send(&mut control, a, &group, "still here").await;
    let next = baileys.wait_for("message", |v| v["text"].is_string()).await;
    assert_eq!(next["id"], still.as_str(), "not {gone}");

    // Back through the invite link A's phone hands out: a revoked code is
    // refused (410 gone), an unknown one too (406), the current one joins,
    // and A's next text arrives.
    let invite = |revoke: bool| GroupInviteCodeRequest {
        phone: a.into(),
        group_jid: second.clone(),
        revoke,
    };
    let old = control
        .group_invite_code(invite(false))
        .await
        .expect("GroupInviteCode")
        .into_inner()
        .code;
    let code = control
        .group_invite_code(invite(true))
        .await
        .expect("GroupInviteCode revoke")
        .into_inner()
        .code;
    assert_ne!(old, code);
    baileys.command(&format!("join {old}"));
    let refused = baileys.wait_for("error", |_| true).await;
    assert_eq!(refused["code"], 410);
    baileys.command("join AAAAAAAAAAAAAAAAAAAAAA");
    let refused = baileys.wait_for("error", |_| true).await;
    assert_eq!(refused["code"], 406);
    baileys.command(&format!("join {code}"));
    let joined = baileys.wait_for("joined", |_| true).await;
    assert_eq!(joined["id"], second.as_str());
    let welcome = send(&mut control, a, &second, "welcome back").await;
    let got = baileys
        .wait_for("message", |v| v["id"] == welcome.as_str())
        .await;
    assert_eq!(got["text"], "welcome back");

    // While Baileys is away, a text and a member change wait for it and
    // arrive from the offline queue when it is back.
    baileys.command("quit");
    assert!(baileys.wait().await.success());
    let queued = send(&mut control, a, &group, "while you were away").await;
    let added = update(&mut control, "+15550500001", &group, "add", &[b])
        .await
        .expect("the creator adds B back");
    assert_eq!(added, [(b_jid.clone(), 0)]);
    let mut baileys = NodeScript::spawn("baileys-groups.js", &[&url, path(auth.path())]);
    let (mut text, mut change) = (None, None);
    while text.is_none() || change.is_none() {
        let event = baileys.next_json().await;
        match event["event"].as_str() {
            Some("message") if event["id"] == queued.as_str() => text = Some(event),
            Some("participants") if event["action"] == "add" => change = Some(event),
            _ => {}
        }
    }
    let text = text.expect("queued text");
    assert_eq!(text["text"], "while you were away");
    assert_eq!(text["type"], "append");
    assert_eq!(change.expect("add")["participants"][0], b_jid.as_str());

    baileys.command("quit");
    assert!(baileys.wait().await.success());
    harness.stop().await;
}

/// Members of the crowd test: enough for the fan-out to every member's
/// device to matter, few enough for debug-build crypto (each phone opens a
/// session and reads a sender key) to stay quick.
const MEMBERS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_64_virtual_phones_gets_each_text_once() {
    let sim = wagate::sim::Simulator::start(wagate::sim::SimConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        seed: Some(64),
        data_dir: None,
    })
    .await
    .expect("simulator starts");
    let phones: Vec<wagate::wa::jid::PhoneNumber> = (0..MEMBERS)
        .map(|n| format!("+1555070{n:04}").parse().expect("phone"))
        .collect();
    let jids: Vec<wagate::wa::jid::Jid> = phones
        .iter()
        .map(|phone| sim.create_account(phone, "Member").expect("account"))
        .collect();
    let group = sim
        .create_group(&phones[0], "Crowd", &jids[1..])
        .await
        .expect("group");
    assert_eq!(
        sim.group_info(&group).expect("info").participants.len(),
        MEMBERS
    );
    let started = std::time::Instant::now();
    let first = sim
        .send_group_text(&phones[0], &group, "hello all")
        .await
        .expect("sent");
    let keyed = started.elapsed();
    let second = sim
        .send_group_text(&phones[0], &group, "again")
        .await
        .expect("sent");
    eprintln!(
        "{} phones: first text (sessions and sender keys) {keyed:?}, second {:?}",
        MEMBERS - 1,
        started.elapsed() - keyed
    );
    for phone in &phones[1..] {
        let inbox = sim.inbox(phone).expect("inbox");
        let ids: Vec<&str> = inbox.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, [first.as_str(), second.as_str()], "{phone:?}");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_group_texts_arrive_in_order_and_the_count_is_bounded() {
    let sim = wagate::sim::Simulator::start(wagate::sim::SimConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        seed: Some(65),
        data_dir: None,
    })
    .await
    .expect("simulator starts");
    let phones: Vec<wagate::wa::jid::PhoneNumber> = (0..3)
        .map(|n| format!("+1555071{n:04}").parse().expect("phone"))
        .collect();
    let jids: Vec<wagate::wa::jid::Jid> = phones
        .iter()
        .map(|phone| sim.create_account(phone, "Member").expect("account"))
        .collect();
    let group = sim
        .create_group(&phones[0], "Bulk", &jids[1..])
        .await
        .expect("group");
    let ids = sim
        .send_group_texts(&phones[0], &group, 5, "bulk-")
        .await
        .expect("sent");
    assert_eq!(ids.len(), 5);
    for phone in &phones[1..] {
        let inbox = sim.inbox(phone).expect("inbox");
        let got: Vec<(&str, &str)> = inbox
            .iter()
            .map(|m| (m.id.as_str(), m.text.as_str()))
            .collect();
        let want: Vec<(&str, String)> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| (id.as_str(), format!("bulk-{n}")))
            .collect();
        let want: Vec<(&str, &str)> = want.iter().map(|(id, t)| (*id, t.as_str())).collect();
        assert_eq!(got, want, "{phone:?}");
    }
    let too_many = sim
        .send_group_texts(&phones[0], &group, wagate::sim::MAX_BULK_TEXTS + 1, "x")
        .await;
    assert!(too_many.is_err(), "{too_many:?}");
    let outsider: wagate::wa::jid::PhoneNumber = "+15550719999".parse().expect("phone");
    sim.create_account(&outsider, "Outsider").expect("account");
    assert!(sim
        .send_group_texts(&outsider, &group, 1, "x")
        .await
        .is_err());
    sim.shutdown().await;
}
