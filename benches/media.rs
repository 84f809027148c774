//! Media crypto throughput: streaming encryption (AES-256-CBC, HMAC and both
//! SHA-256s) and verified decryption (MAC and plaintext SHA-256, as a
//! download checks it: the MAC already covers the body, whose own SHA-256
//! is not computed again) of a 16 MiB file fed in 64 KiB chunks,
//! as an upload or download streams it, and the two back to back. Prints
//! MB/s. `WAGATE_BENCH_MEDIA_MIB` sets another size (e.g. 1 for a quick
//! check that the benchmark runs).

use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use wagate::wa::media::{Decryptor, Encryptor, Expected, MediaKey, MediaKeys, MediaType};

/// Read/write size of a streaming transfer.
const CHUNK: usize = 64 * 1024;

fn main() {
    divan::main();
}

fn size() -> usize {
    std::env::var("WAGATE_BENCH_MEDIA_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(16)
        * 1024
        * 1024
}

fn fixture() -> (MediaKeys, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(1);
    let mut plain = vec![0u8; size()];
    rng.fill_bytes(&mut plain);
    (MediaKey::generate(&mut rng).keys(MediaType::Video), plain)
}

/// Encrypts `plain` chunk by chunk into `sink`, cleared after each chunk as
/// a streaming upload would send it; returns the whole body only if asked.
fn encrypt(keys: &MediaKeys, plain: &[u8], sink: &mut Vec<u8>, keep: bool) -> Vec<u8> {
    let mut encryptor = Encryptor::new(keys);
    let mut body = Vec::new();
    for part in plain.chunks(CHUNK) {
        encryptor.update(part, sink);
        if keep {
            body.extend_from_slice(sink);
        }
        sink.clear();
    }
    black_box(encryptor.finish(sink));
    if keep {
        body.extend_from_slice(sink);
    }
    sink.clear();
    body
}

fn decrypt(keys: &MediaKeys, body: &[u8], sink: &mut Vec<u8>) {
    let mut decryptor = Decryptor::new(keys, Expected::default());
    for part in body.chunks(CHUNK) {
        decryptor
            .update(part, sink)
            .expect("the benchmark's own body decrypts");
        sink.clear();
    }
    black_box(decryptor.finish(sink).expect("the MAC verifies"));
    sink.clear();
}

#[divan::bench(sample_count = 10)]
fn encrypt_stream(bencher: Bencher) {
    let (keys, plain) = fixture();
    let mut sink = Vec::with_capacity(CHUNK + 64);
    bencher
        .counter(BytesCount::new(plain.len()))
        .bench_local(|| encrypt(&keys, black_box(&plain), &mut sink, false));
}

#[divan::bench(sample_count = 10)]
fn decrypt_stream(bencher: Bencher) {
    let (keys, plain) = fixture();
    let mut sink = Vec::with_capacity(CHUNK + 64);
    let body = encrypt(&keys, &plain, &mut sink, true);
    bencher
        .counter(BytesCount::new(plain.len()))
        .bench_local(|| decrypt(&keys, black_box(&body), &mut sink));
}

/// One file out and back in: the figure the budget's "encrypt+decrypt
/// MB/s per core" is about.
#[divan::bench(sample_count = 10)]
fn encrypt_then_decrypt(bencher: Bencher) {
    let (keys, plain) = fixture();
    let mut sink = Vec::with_capacity(CHUNK + 64);
    let body = encrypt(&keys, &plain, &mut sink, true);
    bencher
        .counter(BytesCount::new(plain.len()))
        .bench_local(|| {
            encrypt(&keys, black_box(&plain), &mut sink, false);
            decrypt(&keys, black_box(&body), &mut sink);
        });
}
