//! Media between a wagate session and an unmodified Baileys (from npm), both
//! paired on the simulator: each type wagate sends (gRPC Send) Baileys
//! downloads from the simulator's media host and decrypts to the original
//! bytes, and each type Baileys sends (its own media_conn, upload and
//! encryption) arrives as a wagate message event whose DownloadMedia
//! returns the original bytes.

mod common;
mod sim_support;

use common::{message_of, pair_with, start_gateway, wait_for};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use sim_support::{path, Harness, NodeScript};
use tonic::transport::Channel;
use wagate::proto::gateway::gateway_client::GatewayClient;
use wagate::proto::gateway::media::Source;
use wagate::proto::gateway::{DownloadMediaRequest, Media, MediaKind, SendRequest};
use wagate::proto::sim::CreateAccountRequest;

/// `WebMessageInfo.Status.DELIVERY_ACK`.
const DELIVERY_ACK: u64 = 3;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

async fn download(client: &mut GatewayClient<Channel>, session: &str, id: &str) -> Vec<u8> {
    let mut stream = client
        .download_media(DownloadMediaRequest {
            session_id: session.into(),
            message_id: id.into(),
        })
        .await
        .expect("DownloadMedia")
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await.expect("a download chunk") {
        data.extend_from_slice(&chunk.data);
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_and_wagate_exchange_every_media_type() {
    let mut harness = Harness::start().await;
    let auth = tempfile::tempdir().expect("temp dir");
    let files = tempfile::tempdir().expect("temp dir");
    let (baileys_device, _) = harness
        .pair("+1 555 031 0001", "Baileys User", auth.path())
        .await;

    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = start_gateway(common::options(dir.path(), &harness.sim)).await;
    let mut client = common::client(gateway.addr).await;
    harness
        .control
        .create_account(CreateAccountRequest {
            phone: "+15550310002".into(),
            push_name: "Wagate User".into(),
        })
        .await
        .expect("CreateAccount");
    let (_, mut events) =
        pair_with(&mut harness.control, &mut client, "media", "+15550310002").await;

    let url = harness.sim.ws_url();
    let media_url = harness.sim.media_url().to_owned();
    let mut baileys = NodeScript::spawn("baileys-media.js", &[&url, path(auth.path()), &media_url]);
    baileys.wait_for("open", |_| true).await;

    // wagate → Baileys: Baileys fetches each file from the media host,
    // checks its MAC and hashes, and reports what it decrypted.
    let outgoing = [
        (MediaKind::Image, "image/jpeg", "a photo", "", 40_001),
        (MediaKind::Video, "video/mp4", "a clip", "", 300_000),
        (MediaKind::Audio, "audio/mpeg", "", "", 5_000),
        (
            MediaKind::VoiceNote,
            "audio/ogg; codecs=opus",
            "",
            "",
            3_333,
        ),
        (
            MediaKind::Document,
            "application/pdf",
            "",
            "report.pdf",
            100_003,
        ),
        (MediaKind::Sticker, "image/webp", "", "", 999),
    ];
    for (n, (kind, mimetype, caption, file_name, len)) in outgoing.into_iter().enumerate() {
        let data = random(len, n as u64);
        let sent = client
            .send(SendRequest {
                session_id: "media".into(),
                to: "+15550310001".into(),
                media: Some(Media {
                    kind: kind as i32,
                    source: Some(Source::Data(data.clone())),
                    mimetype: mimetype.into(),
                    caption: caption.into(),
                    file_name: file_name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"))
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
        assert_eq!(got["mimetype"], mimetype, "{kind:?}");
        assert_eq!(got["from"], "15550310002@s.whatsapp.net");
        let expected_kind = match kind {
            MediaKind::Image => "imageMessage",
            MediaKind::Video => "videoMessage",
            MediaKind::Audio | MediaKind::VoiceNote => "audioMessage",
            MediaKind::Document => "documentMessage",
            _ => "stickerMessage",
        };
        assert_eq!(got["kind"], expected_kind);
        assert_eq!(got["caption"], caption, "{kind:?}");
        assert_eq!(got["ptt"], kind == MediaKind::VoiceNote, "{kind:?}");
        if kind == MediaKind::Document {
            assert_eq!(got["fileName"], file_name);
        }
    }

    // Baileys → wagate: an event with the metadata, and the bytes download.
    let incoming = [
        (
            "image",
            MediaKind::Image,
            "image/png",
            "from baileys",
            30_001,
        ),
        ("video", MediaKind::Video, "video/mp4", "a video", 250_000),
        ("audio", MediaKind::Audio, "audio/mpeg", "", 4_000),
        (
            "ptt",
            MediaKind::VoiceNote,
            "audio/ogg; codecs=opus",
            "",
            2_222,
        ),
        (
            "document",
            MediaKind::Document,
            "text/plain",
            "notes.txt",
            17,
        ),
        ("sticker", MediaKind::Sticker, "image/webp", "", 1_234),
    ];
    for (n, (word, kind, mimetype, text, len)) in incoming.into_iter().enumerate() {
        let data = random(len, 100 + n as u64);
        let file = files.path().join(format!("in-{n}"));
        std::fs::write(&file, &data).expect("write file");
        baileys.command(&format!(
            "send 15550310002@s.whatsapp.net {word} {} {} {text}",
            path(&file),
            mimetype.replace(' ', "%20")
        ));
        let id = baileys.sent_with_status(DELIVERY_ACK).await;
        let (event, _) = wait_for(&mut events, "Baileys' media message", |e| {
            message_of(e).is_some_and(|m| m.id == id)
        })
        .await;
        let message = message_of(&event).expect("message");
        assert!(message.error.is_empty(), "{kind:?}: {}", message.error);
        assert_eq!(message.chat, "15550310001@s.whatsapp.net");
        assert_eq!(message.sender, baileys_device);
        let media = message.media.as_ref().expect("media metadata");
        assert_eq!(media.kind, kind as i32, "{word}");
        assert_eq!(media.mimetype, mimetype, "{word}");
        assert_eq!(media.file_length, len as u64, "{word}");
        assert_eq!(media.file_sha256, Sha256::digest(&data).to_vec(), "{word}");
        match kind {
            MediaKind::Image | MediaKind::Video => assert_eq!(media.caption, text),
            MediaKind::Document => assert_eq!(media.file_name, text),
            _ => {}
        }
        let got = download(&mut client, "media", &id).await;
        assert!(got == data, "{word}: the downloaded bytes are the original");
    }

    baileys.command("quit");
    assert!(baileys.wait().await.success());
    gateway.shutdown().await;
    harness.stop().await;
}
