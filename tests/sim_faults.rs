//! Faults injected through the control API reach an unmodified Baileys
//! session as WhatsApp's server would deliver them: stream errors, silent
//! drops, delays, replacement, device removal and logout.

mod sim_support;

use std::time::{Duration, Instant};

use sim_support::{path, Event, Harness, NodeScript};
use wagate::proto::sim::{KickRequest, RemoveDeviceRequest, SetDelayRequest};

const PHONE: &str = "+15550109999";

async fn expect_open(session: &mut NodeScript, jid: &str) {
    assert_eq!(session.next_event().await, Event::Open(jid.to_owned()));
}

async fn expect_close(session: &mut NodeScript, code: u64) {
    assert_eq!(session.next_event().await, Event::Close(Some(code)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_reach_a_baileys_session() {
    let mut harness = Harness::start().await;
    let auth = tempfile::tempdir().expect("temp dir");
    let (jid, _) = harness.pair(PHONE, "Bob", auth.path()).await;
    let ws_url = harness.sim.ws_url();

    let mut session = NodeScript::spawn("baileys-session.js", &[&ws_url, path(auth.path())]);
    expect_open(&mut session, &jid).await;
    let device = harness.accounts().await[0].devices[1].clone();
    assert!(device.connected, "the session is live");
    assert_eq!(
        device.prekeys, 30,
        "no second upload: the server kept 30 keys"
    );

    let kick = |jid: &str, code: u32| KickRequest {
        jid: jid.to_owned(),
        code,
    };
    // A stream error with a code: Baileys reports it and reconnects.
    let ended = harness
        .control
        .kick(kick(&jid, 503))
        .await
        .expect("Kick")
        .into_inner();
    assert_eq!(ended.connections, 1);
    expect_close(&mut session, 503).await;
    expect_open(&mut session, &jid).await;

    // Code 0 drops the socket without a word (Baileys: 428 connection closed);
    // a phone number targets every device of the account.
    let ended = harness
        .control
        .kick(kick(PHONE, 0))
        .await
        .expect("Kick")
        .into_inner();
    assert_eq!(ended.connections, 1);
    expect_close(&mut session, 428).await;
    expect_open(&mut session, &jid).await;

    // A delay holds back every frame to the device, the stream error included.
    let delay = Duration::from_millis(400);
    harness
        .control
        .set_delay(SetDelayRequest {
            jid: jid.clone(),
            delay_ms: 400,
        })
        .await
        .expect("SetDelay");
    let kicked_at = Instant::now();
    harness.control.kick(kick(&jid, 515)).await.expect("Kick");
    expect_close(&mut session, 515).await;
    assert!(kicked_at.elapsed() >= delay, "the stream error was delayed");
    harness
        .control
        .set_delay(SetDelayRequest {
            jid: jid.clone(),
            delay_ms: 0,
        })
        .await
        .expect("SetDelay");
    expect_open(&mut session, &jid).await;

    // Another connection took over: 440.
    let ended = harness
        .control
        .replace(kick(&jid, 0))
        .await
        .expect("Replace")
        .into_inner();
    assert_eq!(ended.connections, 1);
    expect_close(&mut session, 440).await;
    expect_open(&mut session, &jid).await;

    // The phone unlinks the device: 401, and later logins are refused.
    harness
        .control
        .remove_device(RemoveDeviceRequest { jid: jid.clone() })
        .await
        .expect("RemoveDevice");
    expect_close(&mut session, 401).await;
    assert!(session.wait().await.success());
    let mut refused = NodeScript::spawn("baileys-session.js", &[&ws_url, path(auth.path())]);
    expect_close(&mut refused, 401).await;
    assert!(refused.wait().await.success());
    let devices = harness.accounts().await[0].devices.len();
    assert_eq!(devices, 1, "only the phone is left");

    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_unlinks_the_device() {
    let mut harness = Harness::start().await;
    let first = tempfile::tempdir().expect("temp dir");
    let second = tempfile::tempdir().expect("temp dir");
    let (first_jid, _) = harness.pair(PHONE, "Carol", first.path()).await;
    let (second_jid, _) = harness.pair(PHONE, "ignored", second.path()).await;
    assert_eq!(first_jid, "15550109999:1@s.whatsapp.net");
    assert_eq!(second_jid, "15550109999:2@s.whatsapp.net");
    let accounts = harness.accounts().await;
    assert_eq!(accounts.len(), 1, "both devices belong to one account");
    assert_eq!(accounts[0].push_name, "Carol");
    assert_eq!(accounts[0].devices.len(), 3);

    let ws_url = harness.sim.ws_url();
    let mut session = NodeScript::spawn("baileys-session.js", &[&ws_url, path(second.path())]);
    expect_open(&mut session, &second_jid).await;
    session.command("logout");
    expect_close(&mut session, 401).await;
    assert!(session.wait().await.success());

    // The server processed the logout before this new process connects.
    let mut refused = NodeScript::spawn("baileys-session.js", &[&ws_url, path(second.path())]);
    expect_close(&mut refused, 401).await;
    assert!(refused.wait().await.success());
    let jids: Vec<String> = harness.accounts().await[0]
        .devices
        .iter()
        .map(|d| d.jid.clone())
        .collect();
    assert_eq!(
        jids,
        vec!["15550109999@s.whatsapp.net".to_owned(), first_jid]
    );

    harness.stop().await;
}
