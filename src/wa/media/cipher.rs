//! Streaming encryption and decryption of media bodies. Neither side ever
//! holds the whole file: plaintext or body goes in by chunks of any size,
//! the other form comes out as soon as whole AES blocks are known, and the
//! hashes and MAC are computed along the way.

use aes::Aes256;
use cbc::cipher::consts::{U16, U32};
use cbc::cipher::inout::InOutBuf;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use subtle::ConstantTimeEq;

#[cfg(target_arch = "x86_64")]
use super::fused;
use super::hash::{HmacSha256Blocks, Sha256Blocks, BLOCK as HASH_BLOCK};
use super::{MediaKeys, BLOCK_LEN, MAC_LEN};

/// Bytes the cipher and every hash take in turn: one hash block, so the
/// AES chain and the hashes' rounds, independent of each other, are close
/// enough in the instruction stream to run side by side.
const UNIT: usize = HASH_BLOCK;

/// What the decryptor must keep back because it may be the end of the body:
/// the last ciphertext block (its padding is only checked at the end) and
/// the MAC.
const HOLD: usize = BLOCK_LEN + MAC_LEN;

/// Which implementation runs the cipher and the hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Engine {
    /// The fused x86-64 loop where the CPU has it, else the portable one.
    Best,
    /// The `aes`/`cbc` crates beside `sha2`'s compression, a block at a
    /// time: any CPU. Tests compare the two.
    #[cfg(test)]
    Portable,
}

/// AES-256-CBC in one direction, portable or fused.
enum Cbc<Portable> {
    Portable(Portable),
    /// Boxed: its 256 bytes of round keys would otherwise size every
    /// encryptor and decryptor.
    #[cfg(target_arch = "x86_64")]
    Fused(Box<fused::Cbc>),
}

impl<Portable> Cbc<Portable> {
    fn new(keys: &MediaKeys, engine: Engine, direction: Direction) -> Self
    where
        Portable: KeyIvInit<KeySize = U32, IvSize = U16>,
    {
        #[cfg(target_arch = "x86_64")]
        if engine == Engine::Best {
            let direction = match direction {
                Direction::Encrypt => fused::Direction::Encrypt,
                Direction::Decrypt => fused::Direction::Decrypt,
            };
            if let Some(cbc) = fused::Cbc::new(keys.cipher_key(), keys.iv(), direction) {
                return Cbc::Fused(Box::new(cbc));
            }
        }
        let _ = (engine, direction);
        Cbc::Portable(Portable::new(keys.cipher_key().into(), keys.iv().into()))
    }

    fn is_fused(&self) -> bool {
        match self {
            Cbc::Portable(_) => false,
            #[cfg(target_arch = "x86_64")]
            Cbc::Fused(_) => true,
        }
    }
}

impl Cbc<cbc::Encryptor<Aes256>> {
    /// Encrypts whole blocks in place, one after the other.
    fn encrypt(&mut self, blocks: &mut [u8]) {
        match self {
            Cbc::Portable(cipher) => {
                let (blocks, _) = InOutBuf::from(blocks).into_chunks();
                cipher.encrypt_blocks_inout_mut(blocks);
            }
            #[cfg(target_arch = "x86_64")]
            Cbc::Fused(cbc) => cbc.encrypt_blocks(blocks),
        }
    }
}

impl Cbc<cbc::Decryptor<Aes256>> {
    /// Decrypts whole blocks in place.
    fn decrypt(&mut self, blocks: &mut [u8]) {
        match self {
            Cbc::Portable(cipher) => {
                let (blocks, _) = InOutBuf::from(blocks).into_chunks();
                cipher.decrypt_blocks_inout_mut(blocks);
            }
            #[cfg(target_arch = "x86_64")]
            Cbc::Fused(cbc) => cbc.decrypt_blocks(blocks),
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

/// How a run of whole blocks splits for the fused loop: blocks that bring
/// the hashes to a block boundary, then whole hash blocks; the rest is
/// taken a block at a time. `pending` is what the plaintext hash holds
/// (so does the body hash; the MAC holds 16 bytes more).
fn fused_span(is_fused: bool, pending: usize, len: usize) -> (usize, usize) {
    if !is_fused {
        return (len, 0);
    }
    let head = ((HASH_BLOCK - pending) % HASH_BLOCK).min(len);
    (head, (len - head) / HASH_BLOCK * HASH_BLOCK)
}

/// Why a media body could not be turned into the file it claims to be.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MediaError {
    #[error("a media key is 32 bytes, not {0}")]
    BadMediaKey(usize),
    #[error("the media message's {0} is missing or malformed")]
    BadField(&'static str),
    #[error("the media body is truncated (shorter than a block and a MAC, or not whole blocks)")]
    Truncated,
    #[error("the media is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the media body's SHA-256 is not the one the message announced")]
    EncHashMismatch,
    #[error("the media body's MAC does not verify (wrong key, or tampered)")]
    MacMismatch,
    #[error("the decrypted media has invalid padding")]
    BadPadding,
    #[error("the decrypted media's SHA-256 is not the one the message announced")]
    HashMismatch,
    #[error("the decrypted media has {actual} bytes, the message announced {expected}")]
    LengthMismatch { expected: u64, actual: u64 },
}

impl MediaError {
    /// Whether fetching the body again (from another host) may succeed:
    /// a short or altered body is a transfer fault, the rest is a fault of
    /// the file or of the message that describes it.
    pub fn is_retryable(&self) -> bool {
        match self {
            MediaError::Truncated | MediaError::EncHashMismatch => true,
            MediaError::BadMediaKey(_)
            | MediaError::BadField(_)
            | MediaError::TooLarge { .. }
            | MediaError::MacMismatch
            | MediaError::BadPadding
            | MediaError::HashMismatch
            | MediaError::LengthMismatch { .. } => false,
        }
    }
}

/// Length of the ciphertext of `plain_len` bytes: PKCS7 always adds 1 to 16
/// bytes.
pub fn ciphertext_len(plain_len: u64) -> u64 {
    (plain_len / BLOCK_LEN as u64 + 1) * BLOCK_LEN as u64
}

/// Length of the uploaded body (ciphertext and MAC) of `plain_len` bytes,
/// known before encrypting: an upload can announce its Content-Length.
pub fn body_len(plain_len: u64) -> u64 {
    ciphertext_len(plain_len) + MAC_LEN as u64
}

/// What an encrypted file's message must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedMedia {
    /// SHA-256 of the plaintext.
    pub file_sha256: [u8; 32],
    /// SHA-256 of the uploaded body (ciphertext and MAC); also the upload
    /// token.
    pub file_enc_sha256: [u8; 32],
    /// Plaintext length.
    pub file_length: u64,
}

/// Encrypts a file chunk by chunk: each [`Encryptor::update`] appends the
/// ciphertext of the whole blocks known so far, [`Encryptor::finish`]
/// appends the last (padded) block and the MAC. Everything appended, in
/// order, is the body to upload; its length is known in advance
/// ([`body_len`]), its hash (the upload token) only at the end.
pub struct Encryptor {
    cipher: Cbc<cbc::Encryptor<Aes256>>,
    mac: HmacSha256Blocks,
    plain_hash: Sha256Blocks,
    body_hash: Sha256Blocks,
    /// Plaintext bytes that do not fill a block yet.
    partial: [u8; BLOCK_LEN],
    partial_len: usize,
    file_length: u64,
}

impl Encryptor {
    pub fn new(keys: &MediaKeys) -> Self {
        Self::with_engine(keys, Engine::Best)
    }

    pub(super) fn with_engine(keys: &MediaKeys, engine: Engine) -> Self {
        let mut mac = hmac_for(keys);
        mac.update(keys.iv());
        Self {
            cipher: Cbc::new(keys, engine, Direction::Encrypt),
            mac,
            plain_hash: Sha256Blocks::new(),
            body_hash: Sha256Blocks::new(),
            partial: [0; BLOCK_LEN],
            partial_len: 0,
            file_length: 0,
        }
    }

    /// Appends to `out` the ciphertext of `plaintext` that is complete
    /// (whole blocks); up to 15 bytes wait for the next call.
    pub fn update(&mut self, plaintext: &[u8], out: &mut Vec<u8>) {
        self.file_length += plaintext.len() as u64;
        let start = out.len();
        let mut input = plaintext;
        if self.partial_len > 0 {
            let take = (BLOCK_LEN - self.partial_len).min(input.len());
            let (head, rest) = input.split_at(take);
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(head);
            self.partial_len += take;
            input = rest;
            if self.partial_len < BLOCK_LEN {
                return;
            }
            out.extend_from_slice(&self.partial);
            self.partial_len = 0;
        }
        let whole = input.len() - input.len() % BLOCK_LEN;
        let (blocks, rest) = input.split_at(whole);
        out.extend_from_slice(blocks);
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
        self.seal(&mut out[start..]);
    }

    /// Appends the last block and the MAC, and returns the hashes and
    /// length the message must carry.
    pub fn finish(mut self, out: &mut Vec<u8>) -> EncryptedMedia {
        let start = out.len();
        let pad = (BLOCK_LEN - self.partial_len) as u8;
        // The plaintext hash covers the file, not its padding.
        self.plain_hash.update(&self.partial[..self.partial_len]);
        self.partial[self.partial_len..].fill(pad);
        out.extend_from_slice(&self.partial);
        self.cipher.encrypt(&mut out[start..]);
        self.mac.update(&out[start..]);
        self.body_hash.update(&out[start..]);
        let tag = self.mac.finish();
        let mac = &tag[..MAC_LEN];
        self.body_hash.update(mac);
        out.extend_from_slice(mac);
        EncryptedMedia {
            file_sha256: self.plain_hash.finish(),
            file_enc_sha256: self.body_hash.finish(),
            file_length: self.file_length,
        }
    }

    /// Whether the fused x86-64 loop runs this encryption.
    #[cfg(test)]
    pub(super) fn is_fused(&self) -> bool {
        self.cipher.is_fused()
    }

    /// Hashes whole plaintext blocks, encrypts them in place and feeds the
    /// ciphertext to the MAC and the body hash: whole hash blocks through
    /// the fused loop where there is one, the rest a block at a time.
    fn seal(&mut self, buf: &mut [u8]) {
        let pending = self.plain_hash.pending().len();
        let (head, units) = fused_span(self.cipher.is_fused(), pending, buf.len());
        let (head_blocks, rest) = buf.split_at_mut(head);
        self.seal_blocks(head_blocks);
        let (unit_blocks, tail_blocks) = rest.split_at_mut(units);
        self.seal_units(unit_blocks);
        self.seal_blocks(tail_blocks);
    }

    fn seal_units(&mut self, units: &mut [u8]) {
        if units.is_empty() {
            return;
        }
        match &mut self.cipher {
            Cbc::Portable(_) => self.seal_blocks(units),
            #[cfg(target_arch = "x86_64")]
            Cbc::Fused(cbc) => {
                let mac = self.mac.inner_mut();
                debug_assert_eq!(mac.pending(), cbc.chain());
                cbc.seal(
                    units,
                    self.plain_hash.state_mut(),
                    mac.state_mut(),
                    self.body_hash.state_mut(),
                );
                self.plain_hash.absorbed(units.len(), &[]);
                self.body_hash.absorbed(units.len(), &[]);
                mac.absorbed(units.len(), cbc.chain());
            }
        }
    }

    /// The portable way: the buffer goes by in hash blocks; the MAC and
    /// body hash trail the cipher by one, so their rounds run while AES
    /// chains through the next one.
    fn seal_blocks(&mut self, buf: &mut [u8]) {
        let (mut plain, mut mac, mut body) = (0, 0, 0);
        let mut start = 0;
        while start < buf.len() {
            let end = (start + UNIT).min(buf.len());
            self.plain_hash.absorb_through(buf, &mut plain, end);
            self.cipher.encrypt(&mut buf[start..end]);
            self.mac.absorb_within(buf, &mut mac, start);
            self.body_hash.absorb_within(buf, &mut body, start);
            start = end;
        }
        self.mac.update(&buf[mac..]);
        self.body_hash.update(&buf[body..]);
    }
}

/// What the decryptor checks at the end, besides the MAC (always checked).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// The message's `file_enc_sha256`: the body must hash to it. Leave it
    /// out where the MAC is enough: the MAC, keyed by the media key, already
    /// authenticates every body byte, so hashing the body again only costs
    /// a pass (Baileys does not check it either). With `file_length` given,
    /// a short body still fails as `Truncated` (worth another host).
    pub file_enc_sha256: Option<[u8; 32]>,
    /// The message's `file_sha256`: the plaintext must hash to it.
    pub file_sha256: Option<[u8; 32]>,
    /// The message's `file_length`.
    pub file_length: Option<u64>,
    /// Most plaintext bytes accepted; a longer body fails as soon as it
    /// passes the matching body length.
    pub max_file_length: Option<u64>,
}

/// What a verified download was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecryptedMedia {
    pub file_sha256: [u8; 32],
    /// Only computed when [`Expected::file_enc_sha256`] asked for the check.
    pub file_enc_sha256: Option<[u8; 32]>,
    pub file_length: u64,
}

/// Decrypts a downloaded body chunk by chunk. The plaintext it hands out
/// before [`Decryptor::finish`] returns `Ok` is unverified: callers write it
/// somewhere temporary and keep it only on success.
pub struct Decryptor {
    cipher: Cbc<cbc::Decryptor<Aes256>>,
    mac: HmacSha256Blocks,
    plain_hash: Sha256Blocks,
    /// Only when the body's hash is to be checked.
    body_hash: Option<Sha256Blocks>,
    /// Body bytes not yet decrypted: at least the last block and the MAC
    /// once the body is that long, never more than that plus 15.
    held: Vec<u8>,
    received: u64,
    body_limit: Option<u64>,
    expected: Expected,
}

impl Decryptor {
    pub fn new(keys: &MediaKeys, expected: Expected) -> Self {
        Self::with_engine(keys, expected, Engine::Best)
    }

    pub(super) fn with_engine(keys: &MediaKeys, expected: Expected, engine: Engine) -> Self {
        let mut mac = hmac_for(keys);
        mac.update(keys.iv());
        Self {
            cipher: Cbc::new(keys, engine, Direction::Decrypt),
            mac,
            plain_hash: Sha256Blocks::new(),
            body_hash: expected.file_enc_sha256.map(|_| Sha256Blocks::new()),
            held: Vec::with_capacity(HOLD + BLOCK_LEN),
            received: 0,
            body_limit: expected.max_file_length.map(body_len),
            expected,
        }
    }

    /// Feeds the next bytes of the body and appends to `out` the plaintext
    /// of every block that cannot be the last one.
    pub fn update(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<(), MediaError> {
        self.received += body.len() as u64;
        if let (Some(limit), Some(max)) = (self.body_limit, self.expected.max_file_length) {
            if self.received > limit {
                return Err(MediaError::TooLarge { limit: max });
            }
        }
        let available = self.held.len() + body.len();
        if available <= HOLD {
            self.held.extend_from_slice(body);
            return Ok(());
        }
        let ready = (available - HOLD) / BLOCK_LEN * BLOCK_LEN;
        let from_held = ready.min(self.held.len());
        let from_body = ready - from_held;
        let start = out.len();
        out.extend_from_slice(&self.held[..from_held]);
        out.extend_from_slice(&body[..from_body]);
        self.held.drain(..from_held);
        self.held.extend_from_slice(&body[from_body..]);
        self.open(&mut out[start..]);
        Ok(())
    }

    /// Checks the end of the body and appends the last plaintext bytes.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<DecryptedMedia, MediaError> {
        let held = std::mem::take(&mut self.held);
        if held.len() < HOLD || (held.len() - MAC_LEN) % BLOCK_LEN != 0 {
            return Err(MediaError::Truncated);
        }
        // A body shorter than the announced file's is cut short in
        // transfer: told apart from a wrong MAC, it is worth another host.
        if let Some(length) = self.expected.file_length {
            if self.received < body_len(length) {
                return Err(MediaError::Truncated);
            }
        }
        let (last, mac) = held.split_at(held.len() - MAC_LEN);
        self.mac.update(last);
        let file_enc_sha256 = self.body_hash.take().map(|mut hash| {
            hash.update(last);
            hash.update(mac);
            hash.finish()
        });
        if let (Some(want), Some(got)) = (self.expected.file_enc_sha256, file_enc_sha256) {
            if !bool::from(want.ct_eq(&got)) {
                return Err(MediaError::EncHashMismatch);
            }
        }
        let tag = self.mac.finish();
        if !bool::from(tag[..MAC_LEN].ct_eq(mac)) {
            return Err(MediaError::MacMismatch);
        }
        // `held` is at most HOLD + 15 bytes, so whole blocks before the MAC
        // are exactly one block.
        let mut block = [0u8; BLOCK_LEN];
        block.copy_from_slice(last);
        self.cipher.decrypt(&mut block);
        let pad = block[BLOCK_LEN - 1];
        if pad == 0
            || pad as usize > BLOCK_LEN
            || block[BLOCK_LEN - pad as usize..].iter().any(|&b| b != pad)
        {
            return Err(MediaError::BadPadding);
        }
        let tail = &block[..BLOCK_LEN - pad as usize];
        self.plain_hash.update(tail);
        out.extend_from_slice(tail);
        let file_length = self.received - (MAC_LEN + pad as usize) as u64;
        let file_sha256 = self.plain_hash.finish();
        if let Some(want) = self.expected.file_sha256 {
            if !bool::from(want.ct_eq(&file_sha256)) {
                return Err(MediaError::HashMismatch);
            }
        }
        if let Some(expected) = self.expected.file_length {
            if expected != file_length {
                return Err(MediaError::LengthMismatch {
                    expected,
                    actual: file_length,
                });
            }
        }
        Ok(DecryptedMedia {
            file_sha256,
            file_enc_sha256,
            file_length,
        })
    }

    /// Whether the fused x86-64 loop runs this decryption.
    #[cfg(test)]
    pub(super) fn is_fused(&self) -> bool {
        self.cipher.is_fused()
    }

    /// Feeds whole ciphertext blocks to the MAC (and the body hash, when
    /// checked), decrypts them in place and hashes the plaintext: whole
    /// hash blocks through the fused loop where there is one, the rest a
    /// block at a time.
    fn open(&mut self, buf: &mut [u8]) {
        let pending = self.plain_hash.pending().len();
        let (head, units) = fused_span(self.cipher.is_fused(), pending, buf.len());
        let (head_blocks, rest) = buf.split_at_mut(head);
        self.open_blocks(head_blocks);
        let (unit_blocks, tail_blocks) = rest.split_at_mut(units);
        self.open_units(unit_blocks);
        self.open_blocks(tail_blocks);
    }

    fn open_units(&mut self, units: &mut [u8]) {
        if units.is_empty() {
            return;
        }
        match &mut self.cipher {
            Cbc::Portable(_) => self.open_blocks(units),
            #[cfg(target_arch = "x86_64")]
            Cbc::Fused(cbc) => {
                let mac = self.mac.inner_mut();
                debug_assert_eq!(mac.pending(), cbc.chain());
                cbc.open(
                    units,
                    mac.state_mut(),
                    self.body_hash.as_mut().map(Sha256Blocks::state_mut),
                    self.plain_hash.state_mut(),
                );
                mac.absorbed(units.len(), cbc.chain());
                if let Some(body) = self.body_hash.as_mut() {
                    body.absorbed(units.len(), &[]);
                }
                self.plain_hash.absorbed(units.len(), &[]);
            }
        }
    }

    /// The portable way: a hash block at a time, the plaintext hash
    /// trailing the cipher by one.
    fn open_blocks(&mut self, buf: &mut [u8]) {
        let (mut mac, mut body, mut plain) = (0, 0, 0);
        let mut start = 0;
        while start < buf.len() {
            let end = (start + UNIT).min(buf.len());
            self.mac.absorb_through(buf, &mut mac, end);
            if let Some(hash) = self.body_hash.as_mut() {
                hash.absorb_through(buf, &mut body, end);
            }
            self.cipher.decrypt(&mut buf[start..end]);
            self.plain_hash.absorb_within(buf, &mut plain, start);
            start = end;
        }
        self.plain_hash.update(&buf[plain..]);
    }
}

/// The MAC keyed with the media's MAC key (32 bytes, within one block).
fn hmac_for(keys: &MediaKeys) -> HmacSha256Blocks {
    HmacSha256Blocks::new(keys.mac_key()).expect("media MAC keys are 32 bytes")
}
