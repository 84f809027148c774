use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::cipher::Engine;
use super::*;
use crate::wa::binary::{self, Node};
use crate::wa::crypto::{hkdf_sha256, hmac_sha256, sha256};
use crate::wa::jid::Jid;

fn key(seed: u64) -> MediaKey {
    MediaKey::generate(&mut StdRng::seed_from_u64(seed))
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// Encrypts in chunks of `chunk` bytes.
fn encrypt(keys: &MediaKeys, plain: &[u8], chunk: usize) -> (Vec<u8>, EncryptedMedia) {
    let mut enc = Encryptor::new(keys);
    let mut body = Vec::new();
    for part in plain.chunks(chunk.max(1)) {
        enc.update(part, &mut body);
    }
    let meta = enc.finish(&mut body);
    (body, meta)
}

fn decrypt(
    keys: &MediaKeys,
    body: &[u8],
    chunk: usize,
    expected: Expected,
) -> Result<(Vec<u8>, DecryptedMedia), MediaError> {
    let mut dec = Decryptor::new(keys, expected);
    let mut plain = Vec::new();
    for part in body.chunks(chunk.max(1)) {
        dec.update(part, &mut plain)?;
    }
    let meta = dec.finish(&mut plain)?;
    Ok((plain, meta))
}

/// The format written out with one-shot primitives, to check the streaming
/// code against.
fn one_shot(keys: &MediaKeys, plain: &[u8]) -> Vec<u8> {
    use cbc::cipher::block_padding::Pkcs7;
    use cbc::cipher::{BlockEncryptMut, KeyIvInit};
    let mut body = cbc::Encryptor::<aes::Aes256>::new(keys.cipher_key().into(), keys.iv().into())
        .encrypt_padded_vec_mut::<Pkcs7>(plain);
    let mac = hmac_sha256(keys.mac_key(), &[keys.iv(), &body]);
    body.extend_from_slice(&mac[..MAC_LEN]);
    body
}

#[test]
fn keys_split_the_hkdf_output_in_order() {
    let media_key = key(1);
    let keys = media_key.keys(MediaType::Video);
    let mut okm = [0u8; 112];
    hkdf_sha256(media_key.as_bytes(), &[], b"WhatsApp Video Keys", &mut okm);
    assert_eq!(keys.iv(), &okm[..16]);
    assert_eq!(keys.cipher_key(), &okm[16..48]);
    assert_eq!(keys.mac_key(), &okm[48..80]);
    assert_eq!(keys.ref_key(), &okm[80..]);
}

#[test]
fn stickers_and_voice_notes_borrow_keys_and_paths() {
    let media_key = key(2);
    let sticker = media_key.keys(MediaType::Sticker);
    let image = media_key.keys(MediaType::Image);
    assert_eq!(sticker.cipher_key(), image.cipher_key());
    assert_eq!(MediaType::Sticker.mms_type(), "image");
    assert_eq!(MediaType::Sticker.enc_mediatype(), Some("sticker"));
    let ptt = media_key.keys(MediaType::VoiceNote);
    assert_eq!(ptt.mac_key(), media_key.keys(MediaType::Audio).mac_key());
    assert_eq!(MediaType::VoiceNote.mms_type(), "audio");
    assert_eq!(MediaType::VoiceNote.enc_mediatype(), Some("ptt"));
    assert_ne!(
        media_key.keys(MediaType::Document).cipher_key(),
        image.cipher_key()
    );
    assert_eq!(MediaType::History.mms_type(), "md-msg-hist");
    assert!(MediaType::is_mms_type("thumbnail-link"));
    assert!(!MediaType::is_mms_type("../etc"));
}

#[test]
fn secrets_stay_out_of_debug() {
    let media_key = key(3);
    let shown = format!("{media_key:?} {:?}", media_key.keys(MediaType::Image));
    assert_eq!(shown, "MediaKey(..) MediaKeys(..)");
    assert!(MediaKey::try_from(&[0u8; 31][..]).is_err());
    assert!(MediaKey::try_from(&[0u8; 32][..]).is_ok());
}

#[test]
fn streaming_matches_the_one_shot_format_for_every_size_and_chunking() {
    let keys = key(4).keys(MediaType::Document);
    for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 100, 4095, 70_001] {
        let plain = data(len, len as u64);
        let reference = one_shot(&keys, &plain);
        for chunk in [1usize, 7, 16, 26, 27, 1000, 1 << 20] {
            let (body, meta) = encrypt(&keys, &plain, chunk);
            assert_eq!(body, reference, "len {len} chunk {chunk}");
            assert_eq!(body.len() as u64, body_len(len as u64));
            assert_eq!(meta.file_length, len as u64);
            assert_eq!(meta.file_sha256, sha256(&[&plain]));
            assert_eq!(meta.file_enc_sha256, sha256(&[&body]));
            let expected = Expected {
                file_enc_sha256: Some(meta.file_enc_sha256),
                file_sha256: Some(meta.file_sha256),
                file_length: Some(len as u64),
                max_file_length: Some(len as u64),
            };
            let (back, got) = decrypt(&keys, &body, chunk, expected).expect("decrypts");
            assert_eq!(back, plain, "len {len} chunk {chunk}");
            assert_eq!(got.file_sha256, meta.file_sha256);
            assert_eq!(got.file_enc_sha256, Some(meta.file_enc_sha256));
            // Without the body hash asked for, the MAC alone verifies it.
            let mac_only = Expected {
                file_enc_sha256: None,
                ..expected_again(len as u64, meta.file_sha256)
            };
            let (back, got) = decrypt(&keys, &body, chunk, mac_only).expect("decrypts");
            assert_eq!(back, plain);
            assert_eq!(got.file_enc_sha256, None);
            assert_eq!(got.file_length, len as u64);
        }
    }
}

/// Encrypts with `engine`, cutting the plaintext into the given pieces
/// (cycled), and decrypts the body cut the same way, with and without the
/// body hash; returns the body, both results and the plaintext back.
fn round_trip(
    keys: &MediaKeys,
    plain: &[u8],
    pieces: &[usize],
    engine: Engine,
) -> (Vec<u8>, EncryptedMedia, DecryptedMedia, DecryptedMedia) {
    let mut enc = Encryptor::with_engine(keys, engine);
    assert!(engine == Engine::Best || !enc.is_fused());
    let mut body = Vec::new();
    let mut rest = plain;
    for &piece in pieces.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (part, after) = rest.split_at(piece.min(rest.len()));
        enc.update(part, &mut body);
        rest = after;
    }
    let meta = enc.finish(&mut body);
    let mut opened = Vec::new();
    for with_body_hash in [true, false] {
        let expected = Expected {
            file_enc_sha256: with_body_hash.then_some(meta.file_enc_sha256),
            ..Expected::default()
        };
        let mut dec = Decryptor::with_engine(keys, expected, engine);
        let mut back = Vec::new();
        let mut rest = &body[..];
        for &piece in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (part, after) = rest.split_at(piece.min(rest.len()));
            dec.update(part, &mut back).expect("the body decrypts");
            rest = after;
        }
        opened.push(dec.finish(&mut back).expect("the body verifies"));
        assert!(back == plain, "{} bytes back", back.len());
    }
    let without = opened.pop().expect("two decryptions");
    let with = opened.pop().expect("two decryptions");
    (body, meta, with, without)
}

/// The fused x86-64 loop writes the same body, hashes and plaintext as the
/// portable path, for lengths around every block and hash-block boundary
/// and a file of a megabyte and some, fed in pieces that leave the hashes
/// at every alignment (regular, irregular, one byte, whole).
#[test]
fn the_fused_loop_matches_the_portable_path() {
    let keys = key(9).keys(MediaType::Video);
    let mut rng = StdRng::seed_from_u64(9);
    let irregular: Vec<usize> = (0..97)
        .map(|_| 1 + (rng.next_u32() % 300) as usize)
        .collect();
    let mut lengths: Vec<usize> = (0..=260).collect();
    lengths.extend([
        1000,
        4095,
        4096,
        4097,
        65_535,
        65_536,
        65_537,
        (1 << 20) + 13,
    ]);
    for len in lengths {
        let plain = data(len, len as u64 + 100);
        let reference = round_trip(&keys, &plain, &[len.max(1)], Engine::Portable);
        assert_eq!(reference.0, one_shot(&keys, &plain), "len {len}");
        let mut splits: Vec<Vec<usize>> = vec![
            vec![len.max(1)],
            vec![16],
            vec![17],
            vec![48, 80],
            vec![63],
            vec![64],
            vec![65],
            vec![4096 + 5],
            vec![65_536],
            irregular.clone(),
        ];
        if len <= 4096 {
            splits.extend([vec![1], vec![3, 13], vec![7]]);
        }
        for pieces in &splits {
            let fused = round_trip(&keys, &plain, pieces, Engine::Best);
            assert!(fused.0 == reference.0, "body: len {len}, pieces {pieces:?}");
            assert_eq!(fused.1, reference.1, "len {len}, pieces {pieces:?}");
            assert_eq!(fused.2, reference.2, "len {len}, pieces {pieces:?}");
            assert_eq!(fused.3, reference.3, "len {len}, pieces {pieces:?}");
        }
        assert_eq!(reference.1.file_sha256, sha256(&[&plain]));
        assert_eq!(reference.1.file_enc_sha256, sha256(&[&reference.0]));
    }
}

/// On a CPU with AES-NI and the SHA extensions the fused loop is the one
/// that runs, both ways; asking for the portable path gets it.
#[test]
fn the_fused_loop_runs_where_the_cpu_has_it() {
    let keys = key(10).keys(MediaType::Image);
    #[cfg(target_arch = "x86_64")]
    let has = is_x86_feature_detected!("aes")
        && is_x86_feature_detected!("sha")
        && is_x86_feature_detected!("sse4.1")
        && is_x86_feature_detected!("ssse3");
    #[cfg(not(target_arch = "x86_64"))]
    let has = false;
    assert_eq!(Encryptor::new(&keys).is_fused(), has);
    assert_eq!(Decryptor::new(&keys, Expected::default()).is_fused(), has);
    assert!(!Encryptor::with_engine(&keys, Engine::Portable).is_fused());
    assert!(!Decryptor::with_engine(&keys, Expected::default(), Engine::Portable).is_fused());
}

fn expected_again(len: u64, file_sha256: [u8; 32]) -> Expected {
    Expected {
        file_enc_sha256: None,
        file_sha256: Some(file_sha256),
        file_length: Some(len),
        max_file_length: Some(len),
    }
}

#[test]
fn decryption_errors_are_told_apart() {
    let keys = key(5).keys(MediaType::Image);
    let plain = data(1000, 5);
    let (body, meta) = encrypt(&keys, &plain, 64);
    let all = Expected {
        file_enc_sha256: Some(meta.file_enc_sha256),
        file_sha256: Some(meta.file_sha256),
        file_length: Some(1000),
        max_file_length: None,
    };
    let fail = |body: &[u8], keys: &MediaKeys, expected: Expected| {
        decrypt(keys, body, 100, expected).expect_err("must fail")
    };

    // A flipped ciphertext bit: the body hash catches it, or without it the MAC.
    let mut flipped = body.clone();
    flipped[10] ^= 1;
    assert_eq!(
        fail(&flipped, &keys, all.clone()),
        MediaError::EncHashMismatch
    );
    assert_eq!(
        fail(&flipped, &keys, Expected::default()),
        MediaError::MacMismatch
    );
    // The wrong type's keys.
    assert_eq!(
        fail(&body, &key(5).keys(MediaType::Video), Expected::default()),
        MediaError::MacMismatch
    );
    // Cut short: not whole blocks, or shorter than a block and a MAC.
    assert_eq!(
        fail(&body[..body.len() - 1], &keys, Expected::default()),
        MediaError::Truncated
    );
    assert_eq!(
        fail(&body[..25], &keys, Expected::default()),
        MediaError::Truncated
    );
    assert_eq!(fail(&[], &keys, Expected::default()), MediaError::Truncated);
    // Cut a block short but still whole blocks and a MAC's length: the MAC
    // fails, unless the announced length shows the body is short.
    let short = &body[..body.len() - 16];
    assert_eq!(
        fail(short, &keys, Expected::default()),
        MediaError::MacMismatch
    );
    let announced = Expected {
        file_length: Some(1000),
        ..Expected::default()
    };
    assert_eq!(fail(short, &keys, announced), MediaError::Truncated);
    // Cut at a block boundary, MAC recomputed: the padding is wrong.
    let cut = &body[..body.len() - MAC_LEN - 16];
    let mut forged = cut.to_vec();
    forged.extend_from_slice(&hmac_sha256(keys.mac_key(), &[keys.iv(), cut])[..MAC_LEN]);
    assert_eq!(
        fail(&forged, &keys, Expected::default()),
        MediaError::BadPadding
    );
    // A different file of the same length.
    let other = Expected {
        file_sha256: Some([7; 32]),
        ..Expected::default()
    };
    assert_eq!(fail(&body, &keys, other), MediaError::HashMismatch);
    let length = Expected {
        file_length: Some(999),
        ..Expected::default()
    };
    assert_eq!(
        fail(&body, &keys, length),
        MediaError::LengthMismatch {
            expected: 999,
            actual: 1000
        }
    );
    // Over the limit: fails while streaming, before the end.
    let mut dec = Decryptor::new(
        &keys,
        Expected {
            max_file_length: Some(500),
            ..Expected::default()
        },
    );
    let mut out = Vec::new();
    let err = body
        .chunks(100)
        .map(|part| dec.update(part, &mut out))
        .find_map(Result::err);
    assert_eq!(err, Some(MediaError::TooLarge { limit: 500 }));
    assert!(out.len() < 1000);
    assert!(MediaError::EncHashMismatch.is_retryable());
    assert!(!MediaError::MacMismatch.is_retryable());
}

#[test]
fn media_conn_round_trips_through_the_codec() {
    let query = media_conn_query().attr("id", "1");
    assert_eq!(query.attr_str("xmlns"), Some("w:m"));
    assert_eq!(query.attr_str("type"), Some("set"));
    assert_eq!(query.child_nodes()[0].tag(), "media_conn");

    let conn = MediaConn {
        auth: "AbC+/=tok".into(),
        ttl_s: 300,
        auth_ttl_s: 21600,
        max_buckets: 12,
        hosts: vec![
            MediaHost {
                hostname: "127.0.0.1:4567".into(),
                max_content_length: Some(100 << 20),
            },
            MediaHost {
                hostname: "mmg.whatsapp.net".into(),
                max_content_length: None,
            },
        ],
    };
    let answer = Node::new("iq")
        .attr("type", "result")
        .children(vec![media_conn_node(&conn)]);
    let wire = binary::encode(&answer);
    let decoded = binary::decode(&wire).expect("decodes");
    assert_eq!(parse_media_conn(&decoded), Ok(conn.clone()));
    assert_eq!(conn.expires_at(1000), 1300);
    assert!(!format!("{conn:?}").contains("AbC"));

    let no_hosts = Node::new("iq").children(vec![Node::new("media_conn")
        .attr("auth", "a")
        .attr("ttl", "1")]);
    assert_eq!(
        parse_media_conn(&no_hosts),
        Err(MediaConnError::Missing("host"))
    );
    let bad_host = Node::new("iq").children(vec![Node::new("media_conn")
        .attr("auth", "a")
        .attr("ttl", "1")
        .children(vec![Node::new("host").attr("hostname", "evil.com/x?")])]);
    assert!(matches!(
        parse_media_conn(&bad_host),
        Err(MediaConnError::BadHost(_))
    ));
    let bad_ttl = Node::new("iq").children(vec![Node::new("media_conn")
        .attr("auth", "a")
        .attr("ttl", "soon")]);
    assert_eq!(
        parse_media_conn(&bad_ttl),
        Err(MediaConnError::BadNumber("ttl"))
    );
}

#[test]
fn urls_are_built_and_direct_paths_checked() {
    let host = MediaHost {
        hostname: "mmg.whatsapp.net".into(),
        max_content_length: None,
    };
    let hash = [0xfbu8; 32];
    let token = upload_token(&hash);
    assert!(!token.contains('=') && !token.contains('+') && !token.contains('/'));
    assert_eq!(
        upload_url(Scheme::Https, &host, MediaType::Sticker, "a+b/c=", &hash),
        Ok(format!(
            "https://mmg.whatsapp.net/mms/image/{token}?auth=a%2Bb%2Fc%3D&token={token}"
        ))
    );
    assert_eq!(
        download_url(Scheme::Http, &host, "/v/t62/abc.enc?ccb=11-4&oh=x"),
        Ok("http://mmg.whatsapp.net/v/t62/abc.enc?ccb=11-4&oh=x".to_owned())
    );
    for bad in [
        "",
        "v/x",
        "//evil.com/x",
        "/x@evil",
        "/a b",
        "/a#b",
        "/a\\b",
    ] {
        assert_eq!(
            download_url(Scheme::Https, &host, bad),
            Err(MediaConnError::BadDirectPath),
            "{bad:?}"
        );
    }
}

#[test]
fn upload_answers_parse_and_round_trip() {
    let answer = UploadAnswer {
        url: Some("http://127.0.0.1:1/v/x.enc?a=1&b=\"2\"".into()),
        direct_path: "/v/x.enc?a=1".into(),
    };
    assert_eq!(
        parse_upload_answer(upload_answer_json(&answer).as_bytes()),
        Ok(answer)
    );
    let real = br#" {"url":"https:\/\/mmg.whatsapp.net\/v\/t62.7118-24\/1.enc?ccb=11-4","direct_path":"\/v\/t62.7118-24\/1.enc?ccb=11-4","handle":null,"object_id":"\u00e9\ud83d\ude00","ts":1700000000,"meta":{"a":[1,2,{"b":true}]}} "#;
    let parsed = parse_upload_answer(real).expect("parses");
    assert_eq!(parsed.direct_path, "/v/t62.7118-24/1.enc?ccb=11-4");
    assert_eq!(
        parsed.url.as_deref(),
        Some("https://mmg.whatsapp.net/v/t62.7118-24/1.enc?ccb=11-4")
    );
    for bad in [
        &b""[..],
        b"{",
        b"{}",
        b"{\"url\":\"x\"}",
        b"{\"direct_path\":\"/x\"} x",
        b"{\"direct_path\":\"\\ud800\"}",
        b"[1]",
    ] {
        assert!(parse_upload_answer(bad).is_err(), "{bad:?}");
    }
    let deep = format!("{{\"x\":{}{}}}", "[".repeat(100), "]".repeat(100));
    assert_eq!(
        parse_upload_answer(deep.as_bytes()),
        Err(MediaConnError::BadJson("nested too deeply"))
    );
}

#[test]
fn media_retry_round_trips_both_directions() {
    let media_key = key(6);
    let target = RetryTarget {
        message_id: "3EB0AABBCCDDEEFF001122".into(),
        chat: "15550001111@s.whatsapp.net".parse().expect("jid"),
        from_me: false,
        participant: None,
    };
    let own: Jid = "15550002222:3@s.whatsapp.net".parse().expect("jid");
    let receipt = media_retry_receipt(&target, &own, &media_key, [9; 12]);
    let receipt = binary::decode(&binary::encode(&receipt)).expect("codec");
    assert_eq!(receipt.attr_str("type"), Some("server-error"));
    let request = parse_retry_receipt(&receipt).expect("parses");
    assert_eq!(request.target, target);
    assert_eq!(request.to, Some(own.to_non_ad()));
    assert_eq!(decrypt_retry_receipt(&request, &media_key), Ok(()));
    assert_eq!(
        decrypt_retry_receipt(&request, &key(7)),
        Err(RetryError::Decrypt)
    );

    let result = RetryResult::Success {
        direct_path: "/v/new.enc?x=1".into(),
    };
    let sealed = encrypt_retry_notification(&media_key, &target.message_id, &result, &[3; 12]);
    let phone: Jid = "15550002222@s.whatsapp.net".parse().expect("jid");
    let note = retry_notification(&target, &phone, 1_700_000_000, sealed, &[3; 12]);
    let note = binary::decode(&binary::encode(&note)).expect("codec");
    let parsed = parse_retry_notification(&note).expect("parses");
    assert_eq!(parsed.target, target);
    assert_eq!(parsed.timestamp, Some(1_700_000_000));
    let MediaRetryOutcome::Encrypted { ciphertext, iv } = parsed.outcome else {
        panic!("expected an encrypted answer");
    };
    assert_eq!(
        decrypt_retry_notification(&media_key, &target.message_id, &ciphertext, &iv),
        Ok(result)
    );
    // Bound to the message id.
    assert_eq!(
        decrypt_retry_notification(&media_key, "3EB0OTHER", &ciphertext, &iv),
        Err(RetryError::Decrypt)
    );

    let error = retry_error_notification(&target, &phone, 5, 2);
    assert_eq!(
        parse_retry_notification(&error).map(|m| m.outcome),
        Ok(MediaRetryOutcome::Error { code: 2 })
    );
    assert_eq!(
        parse_retry_notification(&Node::new("notification").attr("id", "x")),
        Err(RetryError::Missing("rmr"))
    );
}

#[test]
fn media_messages_round_trip_for_every_message_type() {
    for ty in [
        MediaType::Image,
        MediaType::Video,
        MediaType::Audio,
        MediaType::VoiceNote,
        MediaType::Document,
        MediaType::Sticker,
    ] {
        let info = MediaInfo {
            ty,
            mimetype: "application/x-test".into(),
            caption: matches!(
                ty,
                MediaType::Image | MediaType::Video | MediaType::Document
            )
            .then(|| "a caption".to_owned()),
            file_name: (ty == MediaType::Document).then(|| "report.pdf".to_owned()),
            url: Some("https://mmg.whatsapp.net/v/x.enc".into()),
            direct_path: "/v/x.enc?ccb=11-4".into(),
            media_key: key(8),
            media_key_timestamp: Some(1_700_000_000),
            file_sha256: [1; 32],
            file_enc_sha256: [2; 32],
            file_length: 12345,
            width: matches!(ty, MediaType::Image | MediaType::Video | MediaType::Sticker)
                .then_some(640),
            height: matches!(ty, MediaType::Image | MediaType::Video | MediaType::Sticker)
                .then_some(480),
            seconds: matches!(
                ty,
                MediaType::Video | MediaType::Audio | MediaType::VoiceNote
            )
            .then_some(7),
            thumbnail: (!matches!(ty, MediaType::Audio | MediaType::VoiceNote))
                .then(|| vec![0xff, 0xd8]),
        };
        let message = info.to_message();
        let bytes = prost::Message::encode_to_vec(&message);
        let decoded = <crate::proto::wa::Message as prost::Message>::decode(bytes.as_slice())
            .expect("decodes");
        assert_eq!(
            MediaInfo::from_message(&decoded),
            Some(Ok(info.clone())),
            "{ty:?}"
        );
        assert_eq!(info.expected(None).file_length, Some(12345));
        assert!(ty.enc_mediatype().is_some());
        assert_eq!(MediaInfo::type_of(&decoded), Some(ty));
    }
    let text = crate::proto::wa::Message {
        conversation: Some("hi".into()),
        ..Default::default()
    };
    assert_eq!(MediaInfo::from_message(&text), None);
    let broken = crate::proto::wa::Message {
        image_message: Some(Default::default()),
        ..Default::default()
    };
    assert_eq!(
        MediaInfo::from_message(&broken),
        Some(Err(MediaError::BadMediaKey(0)))
    );
}
