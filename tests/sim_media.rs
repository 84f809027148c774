//! The simulator's media host: a logged-in client learns the host and an
//! upload auth from the `media_conn` iq, uploads an encrypted file with the
//! real path and query, downloads it from the direct path it was given and
//! decrypts it. Wrong auth, a wrong token, too large a body, unknown and
//! expired blobs are refused with the status codes clients act on. The HTTP
//! side is spoken by hand over a socket, so nothing of the server's HTTP
//! stack is on the client's side. Virtual phones send every media type and
//! check what they receive, and answer a media retry for an expired file
//! by uploading it again.

mod sim_client;

use std::net::SocketAddr;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sim_client::{Client, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Request;
use wagate::proto::sim::simulator_server::Simulator as _;
use wagate::proto::sim::{
    ExpireMediaRequest, InboxRequest, InfoRequest, MediaKind, SendMediaRequest,
};
use wagate::sim::{Control, MediaConfig, MediaSend, SimConfig, Simulator};
use wagate::wa::jid::PhoneNumber;
use wagate::wa::media::{
    decrypt_retry_notification, download_url, media_conn_query, media_retry_receipt,
    parse_media_conn, parse_retry_notification, parse_upload_answer, upload_token, upload_url,
    Decryptor, EncryptedMedia, Encryptor, Expected, MediaConn, MediaKey, MediaRetryOutcome,
    MediaType, RetryResult, RetryTarget, Scheme,
};

async fn start(media: MediaConfig) -> Simulator {
    Simulator::start_with_media(
        SimConfig {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            seed: Some(0x3ED1A),
            data_dir: None,
        },
        media,
    )
    .await
    .expect("simulator starts")
}

/// One HTTP/1.1 exchange on a fresh connection: status and body.
async fn http(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect media host");
        let head = format!(
            "{method} {target} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n\
             content-type: application/octet-stream\r\norigin: https://web.whatsapp.com\r\n\
             connection: close\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.expect("send head");
        // The server may answer (and close) before reading a refused body.
        let _ = tcp.write_all(body).await;
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        answer
    };
    let answer = tokio::time::timeout(STEP, exchange)
        .await
        .expect("media host answers in time");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP head");
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, answer[split + 4..].to_vec())
}

/// The path and query of a URL on the media host.
fn target(url: &str) -> &str {
    let rest = url.split_once("://").expect("absolute URL").1;
    &rest[rest.find('/').expect("a path")..]
}

fn encrypt(key: &MediaKey, ty: MediaType, plain: &[u8]) -> (Vec<u8>, EncryptedMedia) {
    let mut encryptor = Encryptor::new(&key.keys(ty));
    let mut body = Vec::new();
    for part in plain.chunks(10_000) {
        encryptor.update(part, &mut body);
    }
    let meta = encryptor.finish(&mut body);
    (body, meta)
}

/// A logged-in client asks for `media_conn`.
async fn media_conn_of_a_client(sim: &Simulator) -> MediaConn {
    let creds = Client::pair(sim, "+15550007001", 11).await;
    let mut client = Client::login(sim, creds, 11).await;
    let id = client.send_iq(media_conn_query()).await;
    let answer = client
        .stanza("the media_conn answer", |n| {
            n.tag() == "iq" && n.attr_str("id") == Some(id.as_str())
        })
        .await;
    parse_media_conn(&answer).expect("a media_conn answer")
}

#[tokio::test]
async fn a_client_uploads_and_downloads_through_the_media_host() {
    let sim = start(MediaConfig::default()).await;
    let conn = media_conn_of_a_client(&sim).await;
    let addr = sim.media_addr();
    assert_eq!(conn.hosts.len(), 1);
    assert_eq!(conn.hosts[0].hostname, addr.to_string());
    assert!(conn.ttl_s > 0 && conn.auth_ttl_s > 0);
    let info = Control::new(sim.clone())
        .info(Request::new(InfoRequest {}))
        .await
        .expect("Info")
        .into_inner();
    assert_eq!(info.media_url, format!("http://{addr}"));

    let mut plain = vec![0u8; 300_001];
    StdRng::seed_from_u64(1).fill_bytes(&mut plain);
    let key = MediaKey::generate(&mut StdRng::seed_from_u64(2));
    let (body, meta) = encrypt(&key, MediaType::Image, &plain);
    let host = &conn.hosts[0];
    let url = upload_url(
        Scheme::Http,
        host,
        MediaType::Image,
        &conn.auth,
        &meta.file_enc_sha256,
    )
    .expect("upload URL");
    let (code, answer) = http(addr, "POST", target(&url), &body).await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
    let answer = parse_upload_answer(&answer).expect("upload answer");
    let direct_path = answer.direct_path.clone();
    assert!(answer
        .url
        .as_deref()
        .is_some_and(|u| u.ends_with(&direct_path)));

    // Download from the direct path, with the parameters WhatsApp Web
    // appends, and verify everything the message would announce.
    let url = download_url(Scheme::Http, host, &direct_path).expect("download URL");
    let with_params = format!("{}&mms-type=image&__wa-mms=", target(&url));
    let (code, downloaded) = http(addr, "GET", &with_params, b"").await;
    assert_eq!(code, 200);
    let mut decryptor = Decryptor::new(
        &key.keys(MediaType::Image),
        Expected {
            file_enc_sha256: Some(meta.file_enc_sha256),
            file_sha256: Some(meta.file_sha256),
            file_length: Some(meta.file_length),
            max_file_length: None,
        },
    );
    let mut out = Vec::new();
    for part in downloaded.chunks(4097) {
        decryptor.update(part, &mut out).expect("decrypts");
    }
    decryptor.finish(&mut out).expect("verifies");
    assert!(out == plain, "downloaded media differs");

    // Expired: 410 Gone, once; then the path stays gone.
    let expired = Control::new(sim.clone())
        .expire_media(Request::new(ExpireMediaRequest {
            direct_path: direct_path.clone(),
        }))
        .await
        .expect("ExpireMedia")
        .into_inner();
    assert!(expired.expired);
    assert_eq!(http(addr, "GET", &direct_path, b"").await.0, 410);
    assert!(!sim.expire_media(&direct_path).await);
    sim.shutdown().await;
}

#[tokio::test]
async fn uploads_with_wrong_auth_or_token_are_refused() {
    let sim = start(MediaConfig {
        max_upload: 1000,
        ..MediaConfig::default()
    })
    .await;
    let addr = sim.media_addr();
    let conn = sim.media_conn();
    let key = MediaKey::generate(&mut StdRng::seed_from_u64(3));
    let (body, meta) = encrypt(&key, MediaType::Document, b"a small document");
    let host = &conn.hosts[0];
    let upload = |auth: &str, hash: &[u8; 32]| {
        upload_url(Scheme::Http, host, MediaType::Document, auth, hash).expect("upload URL")
    };

    let wrong_auth = upload("not-the-auth", &meta.file_enc_sha256);
    assert_eq!(http(addr, "POST", target(&wrong_auth), &body).await.0, 401);
    let wrong_hash = upload(&conn.auth, &[7; 32]);
    assert_eq!(http(addr, "POST", target(&wrong_hash), &body).await.0, 400);
    // The query token must be the path's.
    let token = upload_token(&meta.file_enc_sha256);
    let mismatched = target(&upload(&conn.auth, &meta.file_enc_sha256))
        .replace(&format!("token={token}"), "token=AAAA");
    assert_eq!(http(addr, "POST", &mismatched, &body).await.0, 400);
    let unknown_type = target(&upload(&conn.auth, &meta.file_enc_sha256))
        .replace("/mms/document/", "/mms/secrets/");
    assert_eq!(http(addr, "POST", &unknown_type, &body).await.0, 404);
    // Over the limit, announced or not.
    let big = vec![1u8; 1001];
    let big_hash: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(&big).into()
    };
    assert_eq!(
        http(addr, "POST", target(&upload(&conn.auth, &big_hash)), &big)
            .await
            .0,
        413
    );
    // The right one, padded token (as whatsmeow sends it) included.
    let padded = target(&upload(&conn.auth, &meta.file_enc_sha256))
        .replace(&format!("token={token}"), &format!("token={token}%3D"));
    let (code, answer) = http(addr, "POST", &padded, &body).await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
    let direct_path = parse_upload_answer(&answer).expect("answer").direct_path;
    assert_eq!(http(addr, "GET", &direct_path, b"").await, (200, body));

    // Unknown blobs and paths.
    let unknown = direct_path.replacen(|c: char| c.is_ascii_hexdigit(), "0", 40);
    assert_eq!(http(addr, "GET", &unknown, b"").await.0, 404);
    assert_eq!(http(addr, "GET", "/etc/passwd", b"").await.0, 404);
    assert_eq!(http(addr, "DELETE", &direct_path, b"").await.0, 405);
    sim.shutdown().await;
}

fn blob_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("media dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn blobs_live_on_disk_when_there_is_a_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let media_dir = dir.path().join("media");
    let config = MediaConfig {
        dir: Some(media_dir.clone()),
        ..MediaConfig::default()
    };
    let sim = start(config.clone()).await;
    let addr = sim.media_addr();
    let conn = sim.media_conn();
    let key = MediaKey::generate(&mut StdRng::seed_from_u64(4));
    let mut plain = vec![0u8; 200_000];
    StdRng::seed_from_u64(5).fill_bytes(&mut plain);
    let (body, meta) = encrypt(&key, MediaType::Video, &plain);
    let url = upload_url(
        Scheme::Http,
        &conn.hosts[0],
        MediaType::Video,
        &conn.auth,
        &meta.file_enc_sha256,
    )
    .expect("upload URL");
    // A refused upload leaves nothing behind.
    let (code, _) = http(addr, "POST", target(&url), &body[..body.len() - 1]).await;
    assert_eq!(code, 400);
    assert!(blob_files(&media_dir).is_empty());

    let (code, answer) = http(addr, "POST", target(&url), &body).await;
    assert_eq!(code, 200);
    let direct_path = parse_upload_answer(&answer).expect("answer").direct_path;
    let files = blob_files(&media_dir);
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with(".enc"));
    assert_eq!(
        std::fs::read(media_dir.join(&files[0])).expect("blob"),
        body
    );
    sim.shutdown().await;

    // A restarted simulator serves what the directory holds; expiring
    // removes the file.
    let sim = start(config).await;
    let addr = sim.media_addr();
    assert_eq!(http(addr, "GET", &direct_path, b"").await, (200, body));
    assert!(sim.expire_media(&direct_path).await);
    assert!(blob_files(&media_dir).is_empty());
    assert_eq!(http(addr, "GET", &direct_path, b"").await.0, 410);
    sim.shutdown().await;
}

fn phone(number: &str) -> PhoneNumber {
    number.parse().expect("valid phone number")
}

#[tokio::test]
async fn phones_send_every_media_type_and_check_what_they_receive() {
    let sim = start(MediaConfig::default()).await;
    let alice = phone("+15550007101");
    let bob = phone("+15550007102");
    sim.create_account(&alice, "Alice").expect("alice");
    sim.create_account(&bob, "Bob").expect("bob");
    let kinds = [
        (MediaType::Image, "image/jpeg", Some("a photo"), None),
        (MediaType::Video, "video/mp4", Some("a clip"), None),
        (MediaType::Audio, "audio/mpeg", None, None),
        (MediaType::VoiceNote, "audio/ogg; codecs=opus", None, None),
        (
            MediaType::Document,
            "application/pdf",
            Some("the report"),
            Some("report.pdf"),
        ),
        (MediaType::Sticker, "image/webp", None, None),
    ];
    for (n, (kind, mimetype, caption, file_name)) in kinds.iter().enumerate() {
        let mut data = vec![0u8; 1000 * n + 17];
        StdRng::seed_from_u64(n as u64).fill_bytes(&mut data);
        sim.send_media(
            &alice,
            &bob.to_jid(),
            MediaSend {
                kind: *kind,
                data,
                mimetype: (*mimetype).to_owned(),
                caption: caption.map(str::to_owned),
                file_name: file_name.map(str::to_owned),
            },
        )
        .await
        .expect("the phone sends media");
    }
    // Through the control API too.
    let control = Control::new(sim.clone());
    let sent = control
        .send_media(Request::new(SendMediaRequest {
            from_phone: alice.as_str().to_owned(),
            to: bob.as_str().to_owned(),
            kind: MediaKind::Image as i32,
            data: b"tiny".to_vec(),
            mimetype: "image/png".into(),
            caption: String::new(),
            file_name: String::new(),
        }))
        .await
        .expect("SendMedia")
        .into_inner();
    assert!(sent.direct_path.starts_with("/v/"));
    let unspecified = control
        .send_media(Request::new(SendMediaRequest {
            from_phone: alice.as_str().to_owned(),
            to: bob.as_str().to_owned(),
            ..Default::default()
        }))
        .await
        .expect_err("a kind is required");
    assert_eq!(unspecified.code(), tonic::Code::InvalidArgument);

    let inbox = control
        .inbox(Request::new(InboxRequest {
            phone: bob.as_str().to_owned(),
        }))
        .await
        .expect("Inbox")
        .into_inner()
        .messages;
    assert_eq!(inbox.len(), kinds.len() + 1);
    for (n, (message, (_, mimetype, caption, file_name))) in
        inbox.iter().zip(kinds.iter()).enumerate()
    {
        let media = message.media.as_ref().expect("a media message");
        assert!(media.verified, "{n}: {}", media.error);
        assert_eq!(media.kind, n as i32 + 1, "kinds in send order");
        assert_eq!(media.mimetype, *mimetype);
        assert_eq!(media.caption, caption.unwrap_or_default());
        assert_eq!(message.text, caption.unwrap_or_default());
        assert_eq!(media.file_name, file_name.unwrap_or_default());
        assert_eq!(media.file_length, 1000 * n as u64 + 17);
    }
    let last = inbox.last().and_then(|m| m.media.as_ref()).expect("media");
    assert!(last.verified && last.file_length == 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_media_is_uploaded_again_when_a_device_asks() {
    let sim = start(MediaConfig::default()).await;
    let alice = phone("+15550007201");
    sim.create_account(&alice, "Alice").expect("alice");
    let bob = "+15550007202";
    let creds = Client::pair(&sim, bob, 21).await;
    let mut client = Client::login(&sim, creds, 21).await;
    let bob = phone(bob);

    let mut data = vec![0u8; 70_001];
    StdRng::seed_from_u64(9).fill_bytes(&mut data);
    let (id, info) = sim
        .send_media(
            &alice,
            &bob.to_jid(),
            MediaSend {
                kind: MediaType::Video,
                data: data.clone(),
                mimetype: "video/mp4".into(),
                caption: None,
                file_name: None,
            },
        )
        .await
        .expect("sent");
    let message = client
        .stanza("the media message", |n| n.tag() == "message")
        .await;
    assert_eq!(message.attr_str("id"), Some(id.as_str()));
    assert_eq!(message.attr_str("type"), Some("media"));
    let enc = message.child("enc").expect("an enc");
    assert_eq!(enc.attr_str("mediatype"), Some("video"));

    let addr = sim.media_addr();
    assert!(sim.expire_media(&info.direct_path).await);
    assert_eq!(http(addr, "GET", &info.direct_path, b"").await.0, 410);

    // The device asks for it again, with the message's media key.
    let target = RetryTarget {
        message_id: id.clone(),
        chat: alice.to_jid(),
        from_me: false,
        participant: None,
    };
    let own = client
        .credentials()
        .account
        .as_ref()
        .expect("paired")
        .jid
        .clone();
    client
        .send(&media_retry_receipt(
            &target,
            &own,
            &info.media_key,
            [4; 12],
        ))
        .await;
    let notification = client
        .stanza("the mediaretry notification", |n| {
            n.tag() == "notification" && n.attr_str("type") == Some("mediaretry")
        })
        .await;
    let retry = parse_retry_notification(&notification).expect("a mediaretry notification");
    assert_eq!(retry.target, target);
    let MediaRetryOutcome::Encrypted { ciphertext, iv } = retry.outcome else {
        panic!("the phone had the media: {:?}", retry.outcome);
    };
    let RetryResult::Success { direct_path } =
        decrypt_retry_notification(&info.media_key, &id, &ciphertext, &iv).expect("decrypts")
    else {
        panic!("the phone uploaded it again");
    };
    assert_ne!(direct_path, info.direct_path);
    let (code, body) = http(addr, "GET", &direct_path, b"").await;
    assert_eq!(code, 200);
    let mut decryptor = Decryptor::new(&info.media_key.keys(MediaType::Video), info.expected(None));
    let mut plain = Vec::new();
    decryptor.update(&body, &mut plain).expect("decrypts");
    decryptor.finish(&mut plain).expect("verifies");
    assert!(plain == data, "the re-uploaded media is the original");

    // A message the phone never sent: error 2.
    let unknown = RetryTarget {
        message_id: "3EB0000000000000000000".into(),
        ..target
    };
    client
        .send(&media_retry_receipt(
            &unknown,
            &own,
            &info.media_key,
            [5; 12],
        ))
        .await;
    let notification = client
        .stanza("the error notification", |n| {
            n.tag() == "notification" && n.attr_str("id") == Some(unknown.message_id.as_str())
        })
        .await;
    assert_eq!(
        parse_retry_notification(&notification).map(|r| r.outcome),
        Ok(MediaRetryOutcome::Error { code: 2 })
    );
    sim.shutdown().await;
}
