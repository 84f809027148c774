//! An unmodified Baileys (from npm) paired on the simulator reads the
//! account's app state as the virtual phone keeps it: told by `server_sync`
//! that a collection changed, it downloads the collection's snapshot from
//! the media host (the first time) or its patches (after that), checks
//! every MAC and LTHash, and reports the contacts and chat settings.

mod sim_support;

use sim_support::{path, Harness, NodeScript};
use wagate::proto::sim::{SetChatSettingsRequest, SetContactRequest};

const PHONE: &str = "+15550400001";
const FRIEND: &str = "15550400002@s.whatsapp.net";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_reads_contacts_and_chat_settings_from_snapshots_and_patches() {
    let mut harness = Harness::start().await;
    let auth = tempfile::tempdir().expect("temp dir");
    harness.pair(PHONE, "Ana", auth.path()).await;

    let url = harness.sim.ws_url();
    let media_url = harness.sim.media_url().to_owned();
    let mut baileys = NodeScript::spawn(
        "baileys-appstate.js",
        &[&url, path(auth.path()), &media_url],
    );
    baileys.wait_for("open", |_| true).await;

    // First change of each collection: Baileys has none of it and asks for
    // a snapshot.
    let contact = |full_name: &str| SetContactRequest {
        phone: PHONE.into(),
        contact: FRIEND.into(),
        full_name: full_name.into(),
        first_name: String::new(),
    };
    harness
        .control
        .set_contact(contact("Bruno Costa"))
        .await
        .expect("SetContact");
    baileys
        .wait_for("contact", |e| {
            e["id"] == FRIEND && e["name"] == "Bruno Costa"
        })
        .await;
    harness
        .control
        .set_chat_settings(SetChatSettingsRequest {
            phone: PHONE.into(),
            chat: FRIEND.into(),
            archived: Some(true),
            ..Default::default()
        })
        .await
        .expect("SetChatSettings");
    baileys
        .wait_for("chat", |e| e["id"] == FRIEND && e["archived"] == true)
        .await;

    // Later changes come as patches after the snapshot's version.
    harness
        .control
        .set_contact(contact("Bruno C."))
        .await
        .expect("SetContact");
    baileys
        .wait_for("contact", |e| e["id"] == FRIEND && e["name"] == "Bruno C.")
        .await;
    harness
        .control
        .set_chat_settings(SetChatSettingsRequest {
            phone: PHONE.into(),
            chat: FRIEND.into(),
            muted_until_ms: Some(-1),
            ..Default::default()
        })
        .await
        .expect("SetChatSettings");
    baileys
        .wait_for("chat", |e| e["id"] == FRIEND && e["muteEndTime"] == -1)
        .await;

    baileys.command("quit");
    assert!(baileys.wait().await.success());
    harness.stop().await;
}
