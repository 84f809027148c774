//! An unmodified Baileys (from npm) paired on the simulator exchanges media
//! with a virtual phone through the simulator's media host: what Baileys
//! uploads (its own media_conn, upload URL and encryption) lands verified in
//! the phone's inbox, and what the phone sends Baileys downloads and
//! decrypts to the original bytes.

mod sim_support;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use sim_support::{path, Harness, NodeScript};
use wagate::proto::sim::{CreateAccountRequest, InboxRequest, MediaKind, SendMediaRequest};

/// `WebMessageInfo.Status.DELIVERY_ACK`.
const DELIVERY_ACK: u64 = 3;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_and_a_virtual_phone_exchange_media() {
    let mut harness = Harness::start().await;
    let auth = tempfile::tempdir().expect("temp dir");
    let files = tempfile::tempdir().expect("temp dir");
    let (device, _) = harness.pair("+1 555 030 0001", "Bob", auth.path()).await;
    let phone_jid = harness
        .control
        .create_account(CreateAccountRequest {
            phone: "+1 555 030 0002".into(),
            push_name: "Alice".into(),
        })
        .await
        .expect("CreateAccount")
        .into_inner()
        .jid;

    let url = harness.sim.ws_url();
    let media_url = harness.sim.media_url().to_owned();
    let mut baileys = NodeScript::spawn("baileys-media.js", &[&url, path(auth.path()), &media_url]);
    baileys.wait_for("open", |_| true).await;

    // Baileys → phone: uploaded by Baileys, checked by the phone.
    let sends = [
        ("image", "image/jpeg", "holiday photo", 40_000),
        ("document", "application/pdf", "report.pdf", 100_003),
        ("audio", "audio/mpeg", "", 5_000),
        ("sticker", "image/webp", "", 999),
    ];
    let mut sent_ids = Vec::new();
    for (n, (kind, mimetype, text, len)) in sends.iter().enumerate() {
        let file = files.path().join(format!("out-{n}"));
        std::fs::write(&file, random(*len, n as u64)).expect("write file");
        baileys.command(&format!(
            "send {phone_jid} {kind} {} {mimetype} {text}",
            path(&file)
        ));
        sent_ids.push(baileys.sent_with_status(DELIVERY_ACK).await);
    }
    let inbox = harness
        .control
        .inbox(InboxRequest {
            phone: "+15550300002".into(),
        })
        .await
        .expect("Inbox")
        .into_inner()
        .messages;
    assert_eq!(inbox.len(), sends.len(), "{inbox:?}");
    let kinds = [
        MediaKind::Image,
        MediaKind::Document,
        MediaKind::Audio,
        MediaKind::Sticker,
    ];
    for (((message, id), (_, mimetype, text, len)), kind) in
        inbox.iter().zip(&sent_ids).zip(&sends).zip(kinds)
    {
        assert_eq!(&message.id, id);
        assert_eq!(message.from, device);
        let media = message.media.as_ref().expect("a media message");
        assert!(media.verified, "{kind:?}: {}", media.error);
        assert_eq!(media.kind, kind as i32);
        assert_eq!(media.mimetype, *mimetype);
        assert_eq!(media.file_length, *len as u64);
        match kind {
            MediaKind::Image => assert_eq!(media.caption, *text),
            MediaKind::Document => assert_eq!(media.file_name, *text),
            _ => {}
        }
    }

    // Phone → Baileys: Baileys downloads from the media host and decrypts.
    let receives = [
        (MediaKind::Image, "image/png", "from the phone", 30_001),
        (MediaKind::Video, "video/mp4", "", 250_000),
        (MediaKind::VoiceNote, "audio/ogg; codecs=opus", "", 3_333),
        (MediaKind::Document, "text/plain", "", 17),
    ];
    for (n, (kind, mimetype, caption, len)) in receives.into_iter().enumerate() {
        let data = random(len, 100 + n as u64);
        let sent = harness
            .control
            .send_media(SendMediaRequest {
                from_phone: "+15550300002".into(),
                to: "+15550300001".into(),
                kind: kind as i32,
                data: data.clone(),
                mimetype: mimetype.into(),
                caption: caption.into(),
                file_name: if kind == MediaKind::Document {
                    "notes.txt".into()
                } else {
                    String::new()
                },
            })
            .await
            .expect("SendMedia")
            .into_inner();
        let got = baileys
            .wait_for("media", |v| v["id"] == sent.message_id.as_str())
            .await;
        assert_eq!(got["error"], serde_json::Value::Null, "{kind:?}: {got}");
        assert_eq!(got["length"], len, "{kind:?}");
        assert_eq!(
            got["sha256"],
            hex::encode(Sha256::digest(&data)),
            "{kind:?}"
        );
        assert_eq!(got["mimetype"], mimetype);
        assert_eq!(got["from"], phone_jid.as_str());
        match kind {
            MediaKind::Image => assert_eq!(got["caption"], caption),
            MediaKind::VoiceNote => assert_eq!(got["ptt"], true),
            MediaKind::Document => assert_eq!(got["fileName"], "notes.txt"),
            _ => {}
        }
    }

    baileys.command("quit");
    assert!(baileys.wait().await.success());
    harness.stop().await;
}
