//! Media through the gateway against the simulator, over gRPC on loopback:
//! every media type sent by a session (inline, through UploadMedia, by URL
//! from a loopback HTTP server) arrives verified in a virtual phone's
//! inbox; every type a phone sends arrives as a message event with its
//! metadata and DownloadMedia returns the original bytes; a retried media
//! Send delivers once; expired media comes back through a media retry;
//! bad input, oversized files and URLs to private addresses fail with
//! clear codes and leave no temporary file behind.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::Code;
use wagate::proto::gateway::gateway_client::GatewayClient;
use wagate::proto::gateway::media::Source;
use wagate::proto::gateway::{
    DownloadMediaRequest, Event, Media, MediaKind, ReceiptType, SendRequest, UploadMediaChunk,
};
use wagate::proto::sim::{
    ExpireMediaRequest, InboxMessage, InboxRequest, MediaKind as SimKind, SendMediaRequest,
};

const OWN: &str = "+15550081111";
const BOB: &str = "+15550082222";
const BOB_JID: &str = "15550082222@s.whatsapp.net";

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// The kinds with a mimetype, caption and file name that suit them.
const KINDS: [(MediaKind, &str, &str, &str); 6] = [
    (MediaKind::Image, "image/jpeg", "a photo", ""),
    (MediaKind::Video, "video/mp4", "a clip", ""),
    (MediaKind::Audio, "audio/mpeg", "", ""),
    (MediaKind::VoiceNote, "audio/ogg; codecs=opus", "", ""),
    (
        MediaKind::Document,
        "application/pdf",
        "the report",
        "report.pdf",
    ),
    (MediaKind::Sticker, "image/webp", "", ""),
];

fn media_send(
    session: &str,
    kind: MediaKind,
    source: Source,
    mimetype: &str,
    key: &str,
) -> SendRequest {
    SendRequest {
        session_id: session.into(),
        to: BOB.into(),
        idempotency_key: key.into(),
        media: Some(Media {
            kind: kind as i32,
            source: Some(source),
            mimetype: mimetype.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn upload(
    client: &mut GatewayClient<Channel>,
    session: &str,
    kind: MediaKind,
    mimetype: &str,
    file_name: &str,
    data: &[u8],
) -> Result<String, tonic::Status> {
    let mut chunks: Vec<UploadMediaChunk> = data
        .chunks(40_000)
        .map(|c| UploadMediaChunk {
            data: c.to_vec(),
            ..Default::default()
        })
        .collect();
    chunks[0].session_id = session.into();
    chunks[0].kind = kind as i32;
    chunks[0].mimetype = mimetype.into();
    chunks[0].file_name = file_name.into();
    let handle = client
        .upload_media(tokio_stream::iter(chunks))
        .await?
        .into_inner();
    assert_eq!(handle.file_length, data.len() as u64);
    Ok(handle.handle)
}

async fn download(
    client: &mut GatewayClient<Channel>,
    session: &str,
    message_id: &str,
) -> Result<(Vec<u8>, String, u64), tonic::Status> {
    let mut stream = client
        .download_media(DownloadMediaRequest {
            session_id: session.into(),
            message_id: message_id.into(),
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    let mut head = None;
    while let Some(chunk) = stream.message().await? {
        head.get_or_insert((chunk.mimetype.clone(), chunk.file_length));
        data.extend_from_slice(&chunk.data);
    }
    let (mimetype, length) = head.unwrap_or_default();
    Ok((data, mimetype, length))
}

/// Serves `body` at every path but `/redirect`, which points to `/file`,
/// until the test ends.
async fn file_server(body: Vec<u8>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = if head.starts_with(b"GET /redirect ") {
                    b"HTTP/1.1 302 Found\r\nlocation: /file\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
                } else {
                    let mut a = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    a.extend_from_slice(&body);
                    a
                };
                let _ = tcp.write_all(&answer).await;
            });
        }
    });
    addr
}

async fn delivered(events: &mut tonic::Streaming<Event>, id: &str) {
    wait_for(events, "a delivery receipt", |e| {
        receipt_of(e).is_some_and(|r| {
            r.message_ids.iter().any(|m| m == id) && r.r#type == ReceiptType::Delivered as i32
        })
    })
    .await;
}

async fn inbox(sim: &mut Sim, phone: &str) -> Vec<InboxMessage> {
    sim.control
        .inbox(InboxRequest {
            phone: phone.into(),
        })
        .await
        .expect("Inbox")
        .into_inner()
        .messages
}

/// Temporary media files left in the data dir.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("media-tmp"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_media_type_goes_out_and_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    // The test's file server is on loopback, which media URLs may not
    // reach by default.
    opts.media_fetch_policy.allow_private = true;
    let gateway = start_gateway(opts).await;
    let mut client = client(gateway.addr).await;
    let (_, mut events) = pair_with(&mut sim.control, &mut client, "media", OWN).await;
    create_account(&mut sim.control, BOB, "Bob").await;

    // Out, inline: each type, with its caption and file name.
    let mut sent = Vec::new();
    for (n, (kind, mimetype, caption, file_name)) in KINDS.iter().enumerate() {
        let data = bytes(n as u64, 1000 * n + 17);
        let mut request = media_send("media", *kind, Source::Data(data.clone()), mimetype, "");
        if let Some(media) = request.media.as_mut() {
            media.caption = (*caption).into();
            media.file_name = (*file_name).into();
        }
        let id = client
            .send(request)
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"))
            .into_inner()
            .message_id;
        sent.push((id, data.len() as u64, *kind, *mimetype, *caption));
    }
    // Through UploadMedia (a file larger than one gRPC message chunk).
    let video = bytes(77, 300_001);
    let handle = upload(
        &mut client,
        "media",
        MediaKind::Video,
        "video/mp4",
        "",
        &video,
    )
    .await
    .expect("UploadMedia");
    let id = client
        .send(media_send(
            "media",
            MediaKind::Video,
            Source::Handle(handle),
            "",
            "",
        ))
        .await
        .expect("Send with a handle")
        .into_inner()
        .message_id;
    sent.push((id, video.len() as u64, MediaKind::Video, "video/mp4", ""));
    // By URL, through a redirect.
    let photo = bytes(78, 20_000);
    let server = file_server(photo.clone()).await;
    let url = format!("http://{server}/redirect");
    let id = client
        .send(media_send(
            "media",
            MediaKind::Image,
            Source::Url(url),
            "image/jpeg",
            "",
        ))
        .await
        .expect("Send by URL")
        .into_inner()
        .message_id;
    sent.push((id, photo.len() as u64, MediaKind::Image, "image/jpeg", ""));

    for (id, ..) in &sent {
        delivered(&mut events, id).await;
    }
    let received = inbox(&mut sim, BOB).await;
    assert_eq!(received.len(), sent.len());
    for (message, (id, length, kind, mimetype, caption)) in received.iter().zip(&sent) {
        assert_eq!(&message.id, id);
        let media = message.media.as_ref().expect("a media message");
        assert!(media.verified, "{kind:?}: {}", media.error);
        assert_eq!(media.kind, *kind as i32);
        assert_eq!(media.mimetype, *mimetype);
        assert_eq!(media.caption, *caption);
        assert_eq!(media.file_length, *length);
    }
    // Only the live upload handle's body is on disk.
    assert_eq!(
        temp_files(dir.path()).len(),
        1,
        "{:?}",
        temp_files(dir.path())
    );

    // In: each type a phone sends is an event with its metadata, and its
    // bytes download.
    for (n, (kind, mimetype, caption, file_name)) in KINDS.iter().enumerate() {
        let data = bytes(100 + n as u64, 5000 * n + 3);
        let id = sim
            .control
            .send_media(SendMediaRequest {
                from_phone: BOB.into(),
                to: OWN.into(),
                kind: *kind as i32,
                data: data.clone(),
                mimetype: (*mimetype).into(),
                caption: (*caption).into(),
                file_name: (*file_name).into(),
            })
            .await
            .expect("SendMedia")
            .into_inner()
            .message_id;
        let (event, _) = wait_for(&mut events, "the media message", |e| {
            message_of(e).is_some_and(|m| m.id == id)
        })
        .await;
        let message = message_of(&event).expect("message");
        assert_eq!(message.chat, BOB_JID);
        assert!(message.error.is_empty(), "{}", message.error);
        let media = message.media.as_ref().expect("media metadata");
        assert_eq!(media.kind, *kind as i32);
        assert_eq!(media.mimetype, *mimetype);
        assert_eq!(media.caption, *caption);
        assert_eq!(message.text, *caption);
        assert_eq!(media.file_name, *file_name);
        assert_eq!(media.file_length, data.len() as u64);
        assert_eq!(media.file_sha256.len(), 32);
        let (got, got_mimetype, got_length) = download(&mut client, "media", &id)
            .await
            .expect("DownloadMedia");
        assert!(
            got == data,
            "{kind:?}: the downloaded bytes are the original"
        );
        assert_eq!(got_mimetype, *mimetype);
        assert_eq!(got_length, data.len() as u64);
    }
    assert_eq!(temp_files(dir.path()).len(), 1, "downloads leave nothing");
    gateway.shutdown().await;
    sim.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_deliver_once_and_bad_media_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    opts.max_media_bytes = 64 * 1024;
    // Only this loopback address is open to media URLs, not loopback as a
    // whole.
    opts.media_fetch_policy.allow_hosts = vec!["127.0.0.1".into()];
    let gateway = start_gateway(opts).await;
    let mut client = client(gateway.addr).await;
    let (_, mut events) = pair_with(&mut sim.control, &mut client, "limits", OWN).await;
    create_account(&mut sim.control, BOB, "Bob").await;

    // A retried media Send answers from the first: one message.
    let photo = bytes(1, 10_000);
    let request = media_send(
        "limits",
        MediaKind::Image,
        Source::Data(photo.clone()),
        "image/png",
        "k1",
    );
    let first = client
        .send(request.clone())
        .await
        .expect("Send")
        .into_inner();
    let again = client
        .send(request.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first.message_id, again.message_id);
    assert_eq!(first.timestamp, again.timestamp);
    // The same key for other content is refused.
    let mut other = request.clone();
    if let Some(m) = other.media.as_mut() {
        m.caption = "different".into();
    }
    let e = client.send(other).await.expect_err("conflict");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    delivered(&mut events, &first.message_id).await;
    let received = inbox(&mut sim, BOB).await;
    assert_eq!(received.len(), 1, "delivered once");

    // Bad input.
    let cases = [
        (
            media_send(
                "limits",
                MediaKind::Unspecified,
                Source::Data(photo.clone()),
                "image/png",
                "",
            ),
            Code::InvalidArgument,
            "media.kind",
        ),
        (
            media_send(
                "limits",
                MediaKind::Video,
                Source::Data(photo.clone()),
                "image/png",
                "",
            ),
            Code::InvalidArgument,
            "media.mimetype",
        ),
        (
            media_send(
                "limits",
                MediaKind::Image,
                Source::Data(photo.clone()),
                "not a type",
                "",
            ),
            Code::InvalidArgument,
            "media.mimetype",
        ),
        (
            SendRequest {
                text: "a caption in the wrong place".into(),
                ..media_send(
                    "limits",
                    MediaKind::Image,
                    Source::Data(photo.clone()),
                    "image/png",
                    "",
                )
            },
            Code::InvalidArgument,
            "text",
        ),
        (
            media_send(
                "limits",
                MediaKind::Image,
                Source::Data(bytes(2, 70_000)),
                "image/png",
                "",
            ),
            Code::ResourceExhausted,
            "limit",
        ),
        (
            media_send(
                "limits",
                MediaKind::Image,
                Source::Handle("0123abcd".into()),
                "",
                "",
            ),
            Code::NotFound,
            "handle",
        ),
        (
            media_send(
                "limits",
                MediaKind::Image,
                Source::Url("ftp://example.com/a.png".into()),
                "image/png",
                "",
            ),
            Code::InvalidArgument,
            "media.url",
        ),
    ];
    for (request, code, says) in cases {
        let e = client.send(request).await.expect_err(says);
        assert_eq!(e.code(), code, "{says}: {e}");
        assert!(e.message().contains(says), "{says}: {e}");
    }
    // An oversized upload fails and leaves nothing.
    let e = upload(
        &mut client,
        "limits",
        MediaKind::Video,
        "video/mp4",
        "",
        &bytes(3, 100_000),
    )
    .await
    .expect_err("too large");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    // A URL whose file is too large, and one that is not there.
    let server = file_server(bytes(4, 80_000)).await;
    let e = client
        .send(media_send(
            "limits",
            MediaKind::Image,
            Source::Url(format!("http://{server}/big")),
            "image/jpeg",
            "",
        ))
        .await
        .expect_err("too large");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    // A loopback target by another name is refused before any connection.
    let e = client
        .send(media_send(
            "limits",
            MediaKind::Image,
            Source::Url(format!("http://localhost:{}/big", server.port())),
            "image/jpeg",
            "",
        ))
        .await
        .expect_err("loopback refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("media.url"), "{e}");
    assert!(e.message().contains("--media-url-allow"), "{e}");
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let gone = closed.local_addr().expect("addr");
    drop(closed);
    let e = client
        .send(media_send(
            "limits",
            MediaKind::Image,
            Source::Url(format!("http://{gone}/a.jpg")),
            "image/jpeg",
            "",
        ))
        .await
        .expect_err("unreachable");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(
        temp_files(dir.path()).is_empty(),
        "{:?}",
        temp_files(dir.path())
    );

    // Downloads: an unknown message; a file the host expired comes back
    // through a media retry (the sender's phone uploads it again).
    let e = download(&mut client, "limits", "3EB0FFFFFFFFFFFF")
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let document = bytes(5, 3000);
    let sent = sim
        .control
        .send_media(SendMediaRequest {
            from_phone: BOB.into(),
            to: OWN.into(),
            kind: SimKind::Document as i32,
            data: document.clone(),
            mimetype: "application/pdf".into(),
            caption: String::new(),
            file_name: "a.pdf".into(),
        })
        .await
        .expect("SendMedia")
        .into_inner();
    wait_for(&mut events, "the document", |e| {
        message_of(e).is_some_and(|m| m.id == sent.message_id)
    })
    .await;
    let expired = sim
        .control
        .expire_media(ExpireMediaRequest {
            direct_path: sent.direct_path.clone(),
        })
        .await
        .expect("ExpireMedia")
        .into_inner();
    assert!(expired.expired);
    let (got, _, _) = download(&mut client, "limits", &sent.message_id)
        .await
        .expect("downloaded after a media retry");
    assert!(got == document, "the re-uploaded file is the original");
    // The new path was remembered: a second download needs no retry.
    let (again, _, _) = download(&mut client, "limits", &sent.message_id)
        .await
        .expect("downloaded again");
    assert!(again == document);
    assert!(
        temp_files(dir.path()).is_empty(),
        "{:?}",
        temp_files(dir.path())
    );
    gateway.shutdown().await;
    sim.sim.shutdown().await;
}
