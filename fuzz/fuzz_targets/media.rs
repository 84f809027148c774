//! Arbitrary bytes as what media code reads from outside: a media host's
//! upload answer (JSON), a downloaded body fed to the decryptor in two
//! chunks, and a node read as a `media_conn` answer, a media retry receipt
//! and a `mediaretry` notification (decrypted when they parse). Nothing may
//! panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wagate::wa::binary::TokenDict;
use wagate::wa::media::{
    decrypt_retry_notification, decrypt_retry_receipt, parse_media_conn, parse_retry_notification,
    parse_retry_receipt, parse_upload_answer, Decryptor, Expected, MediaKey, MediaRetryOutcome,
    MediaType,
};

fuzz_target!(|data: &[u8]| {
    let _ = parse_upload_answer(data);

    let key = MediaKey::from_bytes([7; 32]);
    let expected = Expected {
        max_file_length: Some(1 << 16),
        ..Expected::default()
    };
    let mut decryptor = Decryptor::new(&key.keys(MediaType::Image), expected);
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (head, tail) = data.split_at(split);
    let mut out = Vec::new();
    if decryptor.update(head, &mut out).is_ok() && decryptor.update(tail, &mut out).is_ok() {
        let _ = decryptor.finish(&mut out);
    }

    if let Ok(node) = TokenDict::V3.decode(data) {
        let _ = parse_media_conn(&node);
        if let Ok(request) = parse_retry_receipt(&node) {
            let _ = decrypt_retry_receipt(&request, &key);
        }
        if let Ok(retry) = parse_retry_notification(&node) {
            if let MediaRetryOutcome::Encrypted { ciphertext, iv } = retry.outcome {
                let _ =
                    decrypt_retry_notification(&key, &retry.target.message_id, &ciphertext, &iv);
            }
        }
    }
});
