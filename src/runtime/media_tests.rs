//! The media legs against a loopback HTTP host: encryption into a
//! temporary body within the size limit, host fallback, and downloads that
//! are truncated or altered failing as data loss with nothing left on disk.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::wa::media::MediaHost;

/// Answers every request with `status` and `body`.
async fn host(status: u16, body: Vec<u8>) -> SocketAddr {
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
                let mut answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                answer.extend_from_slice(&body);
                let _ = tcp.write_all(&answer).await;
            });
        }
    });
    addr
}

fn media(dir: &Path, max_bytes: u64) -> Media {
    Media::new(MediaSettings {
        max_bytes,
        dir: dir.to_path_buf(),
        scheme: Scheme::Http,
        ..MediaSettings::default()
    })
}

fn conn(hosts: &[SocketAddr]) -> MediaConn {
    MediaConn {
        auth: "auth".into(),
        ttl_s: 60,
        auth_ttl_s: 0,
        max_buckets: 0,
        hosts: hosts
            .iter()
            .map(|a| MediaHost {
                hostname: a.to_string(),
                max_content_length: None,
            })
            .collect(),
    }
}

fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// An encrypted body of `plain` and what a message would announce.
async fn encrypted(dir: &Path, plain: &[u8]) -> (Vec<u8>, MediaKey, Expected) {
    let mut writer = BodyWriter::new(dir, MediaType::Document, u64::MAX)
        .await
        .expect("writer");
    writer.write(plain).await.expect("write");
    let body = writer.finish().await.expect("finish");
    let bytes = std::fs::read(body.file.path()).expect("body");
    let expected = Expected {
        file_enc_sha256: Some(body.sums.file_enc_sha256),
        file_sha256: Some(body.sums.file_sha256),
        file_length: Some(body.sums.file_length),
        max_file_length: None,
    };
    (bytes, body.key.clone(), expected)
}

#[tokio::test]
async fn bodies_respect_the_limit_and_leave_nothing_on_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = BodyWriter::new(dir.path(), MediaType::Image, 1000)
        .await
        .expect("writer");
    writer.write(&[1; 600]).await.expect("within the limit");
    let e = writer.write(&[1; 600]).await.expect_err("over the limit");
    assert!(matches!(e, MediaFailure::TooLarge { limit: 1000 }), "{e}");
    drop(writer);
    assert_eq!(files(dir.path()), 0, "the partial body is removed");

    let empty = BodyWriter::new(dir.path(), MediaType::Image, 1000)
        .await
        .expect("writer");
    assert!(matches!(
        empty.finish().await,
        Err(MediaFailure::Invalid(_))
    ));
    assert_eq!(files(dir.path()), 0);
}

#[tokio::test]
async fn downloads_fall_back_verify_and_stream_the_original() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (body, key, expected) = encrypted(dir.path(), &plain).await;
    let media = media(&dir.path().join("tmp"), 1 << 20);
    let broken = host(500, Vec::new()).await;
    let good = host(200, body.clone()).await;
    let keys = key.keys(MediaType::Document);
    let (file, verified) = media
        .download(&conn(&[broken, good]), "/v/t62/x", &keys, &expected)
        .await
        .expect("the second host has it");
    assert_eq!(verified.file_length, plain.len() as u64);
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(stream_plaintext(file, keys, expected.clone(), tx));
    let mut got = Vec::new();
    while let Some(chunk) = rx.recv().await {
        got.extend_from_slice(&chunk.expect("verified"));
    }
    assert!(got == plain, "the streamed bytes are the original");
    assert_eq!(files(&dir.path().join("tmp")), 0, "nothing left on disk");

    let gone = host(410, Vec::new()).await;
    let keys = key.keys(MediaType::Document);
    let answer = media
        .download(&conn(&[gone]), "/v/t62/x", &keys, &expected)
        .await;
    assert!(matches!(answer, Err(Download::Gone)), "{answer:?}");
}

#[tokio::test]
async fn altered_or_truncated_downloads_are_data_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = vec![7u8; 50_000];
    let (body, key, expected) = encrypted(dir.path(), &plain).await;
    let media = media(&dir.path().join("tmp"), 1 << 20);
    let keys = key.keys(MediaType::Document);

    let mut altered = body.clone();
    altered[100] ^= 1;
    let truncated = body[..body.len() - 5].to_vec();
    let other_key = MediaKey::from_bytes([9; 32]).keys(MediaType::Document);
    let cases = [
        (altered, &keys, "altered"),
        (truncated, &keys, "truncated"),
        (body.clone(), &other_key, "wrong key"),
    ];
    for (served, keys, what) in cases {
        let addr = host(200, served).await;
        let answer = media
            .download(&conn(&[addr]), "/v/t62/x", keys, &expected)
            .await;
        let failure = match answer {
            Err(Download::Failed(f)) => f,
            other => panic!("{what}: {other:?}"),
        };
        assert!(
            matches!(failure, MediaFailure::DataLoss(_)),
            "{what}: {failure}"
        );
        assert_eq!(files(&dir.path().join("tmp")), 0, "{what}: nothing left");
    }
    // Larger than the limit: refused as such.
    let small = Media::new(MediaSettings {
        max_bytes: 1000,
        dir: dir.path().join("tmp"),
        scheme: Scheme::Http,
        ..MediaSettings::default()
    });
    let addr = host(200, body).await;
    let limited = Expected {
        max_file_length: Some(1000),
        ..expected
    };
    let answer = small
        .download(&conn(&[addr]), "/v/t62/x", &keys, &limited)
        .await;
    assert!(
        matches!(answer, Err(Download::Failed(MediaFailure::TooLarge { .. }))),
        "{answer:?}"
    );
}
