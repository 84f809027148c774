//! Media in both whatsapp-web.js dialects, end to end against a `wagate
//! serve --sim` gateway: `send-media` with a multipart file, a data-URL
//! `mediaBase64` and a `mediaUrl` each reaches the peer phone verified as
//! the right kind; oversized files answer 413; media the peer phone sends
//! arrives inline (base64) in the global webhook and as a `fileUrl` served
//! from `/uploads/` in the session webhook; a file over the shim's limit
//! still sends the event, with `media.error` set.

use axum::http::Method;
use base64::Engine;
use http_body_util::BodyExt;
use serde_json::json;

use crate::common::*;
use wagate_rest::proto::gateway::SessionState;
use wagate_rest::proto::sim::{MediaKind, SendMediaRequest};
use wagate_rest::Dialect;

const OWNER: &str = "+15551234567";
const PEER: &str = "+15550001111";
const PEER_DIGITS: &str = "15550001111";
/// The shim's `--max-media-bytes` in this test.
const MAX: u64 = 200_000;

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Serves `body` as `audio/mpeg` at every path, on loopback.
async fn file_server(body: Vec<u8>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind file server");
    let addr = listener.local_addr().expect("addr");
    let router = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { ([("content-type", "audio/mpeg")], body) }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// GET `url`: status and raw body.
async fn fetch(url: &str) -> (u16, Vec<u8>) {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<axum::body::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let uri: axum::http::Uri = url.parse().expect("a URL");
    let resp = tokio::time::timeout(WAIT, client.get(uri))
        .await
        .expect("answer in time")
        .expect("request succeeds");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body.to_vec())
}

fn multipart(boundary: &str, fields: &[(&str, &str)], file: (&str, &str, &[u8])) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    let (name, mimetype, data) = file;
    out.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"{name}\"\r\nContent-Type: {mimetype}\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(data);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wwebjs_media_goes_out_and_comes_in_both_forms() {
    // The media URL of the test is on loopback, which the gateway refuses
    // by default.
    let gw = Gateway::start_with(|o| o.media_fetch_policy.allow_private = true).await;
    let mut hooks = Receiver::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::Wwebjs;
    cfg.api_key = Some(KEY.into());
    cfg.max_media_bytes = MAX;
    let shim = start_shim(cfg).await;
    gw.create_account(PEER, "Peer").await;
    let id = "media-1";
    let mut events = gw.follow(id).await;
    let (st, body) = shim
        .post_key(
            "/webhook/config",
            json!({"webhookUrl": hooks.url("/global")}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = shim
        .post_key("/api/start-session", json!({"sessionId": id}))
        .await;
    assert_eq!(st, 200, "{body}");
    let qr = events.qr().await;
    gw.scan(OWNER, &qr).await;
    events.state(SessionState::Connected).await;
    let (st, body) = shim
        .post_key(
            &format!("/api/{id}/webhook"),
            json!({"url": hooks.url("/session-hook"), "events": ["message-received"]}),
        )
        .await;
    assert_eq!(st, 200, "{body}");

    // Out: a multipart image with a caption.
    let photo = bytes(1, 30_000);
    let boundary = "b0undary";
    let form = multipart(
        boundary,
        &[
            ("sessionId", id),
            ("number", PEER_DIGITS),
            ("caption", "foto"),
        ],
        ("a.jpg", "image/jpeg", &photo),
    );
    let ct = format!("multipart/form-data; boundary={boundary}");
    let (st, sent) = shim
        .raw(
            Method::POST,
            "/api/send-media",
            &[("x-api-key", KEY), ("content-type", &ct)],
            Some(&form),
        )
        .await;
    assert_eq!(st, 200, "{sent}");
    fields(
        &sent,
        &[
            ("success", K::Bool),
            ("messageId", K::Str),
            ("timestamp", K::Int),
        ],
    );
    let image_id = sent["messageId"].as_str().unwrap_or_default().to_owned();
    // A PDF as a data URL, named; the key in the query, as the production
    // variant takes it.
    let pdf = [b"%PDF-1.7\n".as_slice(), &bytes(2, 5_000)].concat();
    let data_url = format!(
        "data:application/pdf;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&pdf)
    );
    let (st, sent) = shim
        .post(
            &format!("/api/send-media?apiKey={KEY}"),
            json!({"sessionId": id, "number": PEER_DIGITS, "caption": "el informe",
                "filename": "informe.pdf", "mediaBase64": data_url}),
        )
        .await;
    assert_eq!(st, 200, "{sent}");
    let pdf_id = sent["messageId"].as_str().unwrap_or_default().to_owned();
    // An audio file by URL (the gateway fetches it).
    let clip = bytes(3, 12_345);
    let server = file_server(clip.clone()).await;
    let (st, sent) = shim
        .post_key(
            "/api/send-media",
            json!({"sessionId": id, "number": PEER_DIGITS,
                "mediaUrl": format!("http://{server}/audio/clip.mp3")}),
        )
        .await;
    assert_eq!(st, 200, "{sent}");
    let clip_id = sent["messageId"].as_str().unwrap_or_default().to_owned();
    for mid in [&image_id, &pdf_id, &clip_id] {
        events.delivered(mid).await;
    }
    let inbox = gw.inbox(PEER).await;
    let expected = [
        (
            &image_id,
            MediaKind::Image,
            "image/jpeg",
            "foto",
            "",
            photo.len(),
        ),
        (
            &pdf_id,
            MediaKind::Document,
            "application/pdf",
            "el informe",
            "informe.pdf",
            pdf.len(),
        ),
        (&clip_id, MediaKind::Audio, "audio/mpeg", "", "", clip.len()),
    ];
    for (mid, kind, mimetype, caption, file_name, len) in expected {
        let message = inbox
            .iter()
            .find(|m| &m.id == mid)
            .unwrap_or_else(|| panic!("{mid} not in {inbox:?}"));
        let media = message.media.as_ref().expect("a media message");
        assert!(media.verified, "{kind:?}: {}", media.error);
        assert_eq!(media.kind, kind as i32);
        assert_eq!(media.mimetype, mimetype);
        assert_eq!(media.caption, caption);
        assert_eq!(media.file_name, file_name);
        assert_eq!(media.file_length, len as u64);
    }

    // Too large: 413 in both forms, nothing sent.
    let big = bytes(4, MAX as usize + 1);
    let (st, body) = shim
        .post_key(
            "/api/send-media",
            json!({"sessionId": id, "number": PEER_DIGITS,
                "mediaBase64": base64::engine::general_purpose::STANDARD.encode(&big)}),
        )
        .await;
    assert_eq!(st, 413, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("limit"),
        "{body}"
    );
    let huge = bytes(5, 2 * MAX as usize);
    let form = multipart(
        boundary,
        &[("sessionId", id), ("number", PEER_DIGITS)],
        ("big.mp4", "video/mp4", &huge),
    );
    let (st, body) = shim
        .raw(
            Method::POST,
            "/api/send-media",
            &[("x-api-key", KEY), ("content-type", &ct)],
            Some(&form),
        )
        .await;
    assert_eq!(st, 413, "{body}");
    assert_eq!(gw.inbox(PEER).await.len(), 3, "nothing more was sent");

    // In: an image from the peer, inline in the global webhook and as a
    // served file in the session webhook.
    let incoming = bytes(6, 20_000);
    let sim = |kind: MediaKind, data: Vec<u8>, mimetype: &str, caption: &str, file_name: &str| {
        SendMediaRequest {
            from_phone: PEER.into(),
            to: OWNER.into(),
            kind: kind as i32,
            data,
            mimetype: mimetype.into(),
            caption: caption.into(),
            file_name: file_name.into(),
        }
    };
    let mid = gw
        .sim
        .clone()
        .send_media(sim(
            MediaKind::Image,
            incoming.clone(),
            "image/png",
            "mira",
            "",
        ))
        .await
        .expect("SendMedia")
        .into_inner()
        .message_id;
    let global = hooks
        .until("the inline image", |h| {
            h.path == "/global" && h.body["id"] == mid.as_str()
        })
        .await;
    assert_eq!(global.body["type"], "image");
    assert_eq!(global.body["body"], "mira");
    let media = &global.body["media"];
    assert_eq!(media["mimetype"], "image/png", "{media}");
    assert_eq!(media["filename"], serde_json::Value::Null);
    let data = base64::engine::general_purpose::STANDARD
        .decode(media["data"].as_str().unwrap_or_default())
        .expect("base64 data");
    assert!(data == incoming, "the inline bytes are the original");
    let session_hook = hooks
        .until("the image as a file", |h| {
            h.path == "/session-hook" && h.body["id"] == mid.as_str()
        })
        .await;
    let media = &session_hook.body["media"];
    fields(
        media,
        &[
            ("fileUrl", K::Str),
            ("fileName", K::Str),
            ("originalName", K::Str),
            ("mimetype", K::Str),
            ("fileSize", K::Int),
        ],
    );
    assert!(media.get("error").is_none(), "{media}");
    assert_eq!(media["fileSize"], incoming.len());
    let url = media["fileUrl"].as_str().unwrap_or_default();
    let name = media["fileName"].as_str().unwrap_or_default();
    assert_eq!(url, format!("{}/uploads/{name}", shim.base));
    assert!(name.ends_with(".png"), "{name}");
    let (st, served) = fetch(url).await;
    assert_eq!(st, 200);
    assert!(served == incoming, "the served file is the original");
    let (st, _) = fetch(&format!("{}/uploads/..%2Fshim%2Fstate.json", shim.base)).await;
    assert_eq!(st, 404);

    // A named document keeps its name.
    let notes = bytes(7, 777);
    let mid = gw
        .sim
        .clone()
        .send_media(sim(
            MediaKind::Document,
            notes.clone(),
            "text/plain",
            "",
            "notes.txt",
        ))
        .await
        .expect("SendMedia")
        .into_inner()
        .message_id;
    let global = hooks
        .until("the inline document", |h| {
            h.path == "/global" && h.body["id"] == mid.as_str()
        })
        .await;
    assert_eq!(global.body["media"]["filename"], "notes.txt");
    let session_hook = hooks
        .until("the document as a file", |h| {
            h.path == "/session-hook" && h.body["id"] == mid.as_str()
        })
        .await;
    assert_eq!(session_hook.body["media"]["originalName"], "notes.txt");
    let (_, served) = fetch(
        session_hook.body["media"]["fileUrl"]
            .as_str()
            .unwrap_or_default(),
    )
    .await;
    assert!(served == notes);

    // A file over the shim's limit: the events still go, with the reason.
    let video = bytes(8, MAX as usize + 10);
    let mid = gw
        .sim
        .clone()
        .send_media(sim(MediaKind::Video, video, "video/mp4", "", ""))
        .await
        .expect("SendMedia")
        .into_inner()
        .message_id;
    let global = hooks
        .until("the inline video", |h| {
            h.path == "/global" && h.body["id"] == mid.as_str()
        })
        .await;
    assert_eq!(global.body["media"]["data"], serde_json::Value::Null);
    assert!(global.body["media"]["error"]
        .as_str()
        .unwrap_or_default()
        .contains("limit"));
    let session_hook = hooks
        .until("the video as a file", |h| {
            h.path == "/session-hook" && h.body["id"] == mid.as_str()
        })
        .await;
    assert_eq!(
        session_hook.body["media"]["fileUrl"],
        serde_json::Value::Null
    );
    assert_eq!(session_hook.body["media"]["mimetype"], "video/mp4");
    assert!(session_hook.body["media"]["error"]
        .as_str()
        .unwrap_or_default()
        .contains("limit"));

    shim.stop().await;
    gw.stop().await;
}
