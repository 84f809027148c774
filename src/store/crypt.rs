//! Encryption at rest for store secrets: the keyring (current key plus older keys kept for
//! reading) and the AES-256-GCM record format that binds each ciphertext to its row. Must not
//! import `runtime`, `api` or `sim`.
//!
//! Record: `version (0x01) ‖ key-id length (1 byte) ‖ key id ‖ nonce (12 random bytes) ‖
//! ciphertext ‖ tag (16 bytes)`. The associated data covers the record header, the session id and
//! the secret key, so a record copied to another row, or re-labelled with another key id, fails
//! authentication instead of decrypting. Event payloads use the same record under their own label,
//! bound to the event's session, cursor, seq, kind and time; the personal part of a session row
//! (see `profile.rs`) under a third label, bound to its session.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::{SessionId, StoreError};

/// Format version of a sealed record.
const RECORD_VERSION: u8 = 0x01;
const KEY_LEN: usize = 0x20;
const NONCE_LEN: usize = 0x0c;
const TAG_LEN: usize = 0x10;
/// Longest key id; it is stored in every record, so it stays short.
const MAX_KEY_ID_LEN: usize = 0x20;
/// Id given to a key configured without one, and to generated keys.
const DEFAULT_KEY_ID: &str = "k1";
/// Key files are a line or two; anything bigger is not a key file.
const MAX_KEY_FILE_LEN: u64 = 0x1_0000;
/// Domain separation for the associated data of secret records.
const AAD_LABEL: &[u8] = b"wagate/store/secret/v1";
/// Domain separation for the associated data of event payloads.
const EVENT_AAD_LABEL: &[u8] = b"wagate/store/event/v1";
/// Domain separation for the associated data of session-row profiles.
const ROW_AAD_LABEL: &[u8] = b"wagate/store/session-row/v1";
/// The one sealed part of a session row.
const ROW_PROFILE: &[u8] = b"profile";
/// Message MACed with a key to recognise it later without storing it.
const KEY_CHECK_LABEL: &[u8] = b"wagate/store/key-check/v1";

#[derive(Clone)]
struct StoreKey {
    id: String,
    secret: Zeroizing<[u8; KEY_LEN]>,
    cipher: Aes256Gcm,
}

/// The keys that protect secrets at rest: the first is current (used to write), the others are
/// older keys still accepted for reading so keys can rotate.
#[derive(Clone)]
pub struct Keyring {
    /// Never empty; `keys[0]` is current. Ids are unique.
    keys: Vec<StoreKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Parses `WAGATE_STORE_KEY`: `ID:KEY[,ID:KEY...]` (first = current) or one bare key (id
    /// `k1`). A key is 32 bytes as base64 (standard or URL-safe, padding optional) or 64 hex
    /// digits. Ids are 1–32 characters of `[A-Za-z0-9_.-]`.
    pub fn from_env_value(s: &str) -> Result<Self, StoreError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(invalid("the value is empty"));
        }
        if !s.contains(':') && !s.contains(',') {
            let secret = decode_key(s).map_err(invalid)?;
            return Self::from_keys(vec![(DEFAULT_KEY_ID.to_owned(), secret)]);
        }
        let mut keys = Vec::new();
        for (i, entry) in s.split(',').enumerate() {
            let n = i + 1;
            let entry = entry.trim();
            let (id, key) = entry
                .split_once(':')
                .ok_or_else(|| invalid(format!("entry {n} is not ID:KEY")))?;
            let secret =
                decode_key(key.trim()).map_err(|why| invalid(format!("entry {n}: {why}")))?;
            keys.push((id.trim().to_owned(), secret));
        }
        Self::from_keys(keys)
    }

    /// Builds a keyring from `(id, key)` pairs, the first being current.
    pub fn from_keys(keys: Vec<(String, Zeroizing<[u8; KEY_LEN]>)>) -> Result<Self, StoreError> {
        if keys.is_empty() {
            return Err(invalid("no key given"));
        }
        let mut ring: Vec<StoreKey> = Vec::with_capacity(keys.len());
        for (id, secret) in keys {
            check_key_id(&id)?;
            if ring.iter().any(|k| k.id == id) {
                return Err(invalid(format!("key id {id:?} appears twice")));
            }
            let cipher = cipher_for(&secret);
            ring.push(StoreKey { id, secret, cipher });
        }
        Ok(Keyring { keys: ring })
    }

    /// A keyring with one fresh random key, id `k1`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let secret = random_key(rng);
        let cipher = cipher_for(&secret);
        Keyring {
            keys: vec![StoreKey {
                id: DEFAULT_KEY_ID.to_owned(),
                secret,
                cipher,
            }],
        }
    }

    /// This keyring with a fresh random key in front (id `k<n+1>` after the highest `k<n>`);
    /// the old keys stay for reading.
    pub fn rotate(&self, rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let highest = self
            .keys
            .iter()
            .filter_map(|k| k.id.strip_prefix('k')?.parse::<u32>().ok())
            .max()
            .unwrap_or(0);
        let mut n = highest.saturating_add(1);
        while self.keys.iter().any(|k| k.id == format!("k{n}")) {
            n = n.wrapping_add(1);
        }
        let secret = random_key(rng);
        let cipher = cipher_for(&secret);
        let mut keys = Vec::with_capacity(self.keys.len() + 1);
        keys.push(StoreKey {
            id: format!("k{n}"),
            secret,
            cipher,
        });
        keys.extend(self.keys.iter().cloned());
        Keyring { keys }
    }

    /// The keyring in the `WAGATE_STORE_KEY` format (`ID:BASE64[,ID:BASE64...]`).
    pub fn to_env_value(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(self.keys.len() * 0x50));
        for (i, key) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&key.id);
            out.push(':');
            STANDARD.encode_string(key.secret.as_slice(), &mut out);
        }
        out
    }

    /// Reads a key file (same format as the environment value), or creates one with a random
    /// key and mode 0600 when it does not exist. Returns the keyring and whether the file was
    /// created. A file that group or others can access is refused, as ssh does for private keys.
    pub fn load_or_create_file(path: &Path) -> Result<(Self, bool), StoreError> {
        match File::open(path) {
            Ok(file) => Ok((Self::read_key_file(path, file)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::create_key_file(path),
            Err(e) => Err(io_error("open key file", path, e)),
        }
    }

    /// The id of the key used to write.
    pub fn current_id(&self) -> &str {
        &self.current().id
    }

    /// All key ids, current first.
    pub fn ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.keys.iter().map(|k| k.id.as_str())
    }

    fn current(&self) -> &StoreKey {
        // `keys` is never empty: every constructor pushes at least one key.
        &self.keys[0]
    }

    fn read_key_file(path: &Path, file: File) -> Result<Self, StoreError> {
        // Metadata of the opened file, not of the path, so the checked file is the one read.
        let meta = file
            .metadata()
            .map_err(|e| io_error("inspect key file", path, e))?;
        if !meta.is_file() {
            return Err(invalid(format!(
                "key file {} is not a regular file",
                path.display()
            )));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(StoreError::KeyFileInsecure {
                path: path.to_owned(),
                mode,
            });
        }
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(invalid(format!(
                "key file {} is larger than {MAX_KEY_FILE_LEN} bytes",
                path.display()
            )));
        }
        // Reserved up front so reading never reallocates and strands a copy of the key.
        let mut buf = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN as usize + 1));
        file.take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut buf)
            .map_err(|e| io_error("read key file", path, e))?;
        let text = std::str::from_utf8(&buf)
            .map_err(|_| invalid(format!("key file {} is not UTF-8", path.display())))?;
        Self::from_env_value(text).map_err(|e| match e {
            StoreError::InvalidKeyring(why) => {
                invalid(format!("key file {}: {why}", path.display()))
            }
            other => other,
        })
    }

    fn create_key_file(path: &Path) -> Result<(Self, bool), StoreError> {
        let keys = Self::generate(&mut OsRng);
        let mut text = keys.to_env_value();
        text.push('\n');
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| invalid(format!("key file path {} has no name", path.display())))?;
        let tmp = dir.join(format!(
            ".{}.{:016x}.tmp",
            name.to_string_lossy(),
            OsRng.next_u64()
        ));
        // Written under a temporary name and published with a hard link, which fails instead
        // of replacing: a crash never leaves a half-written key, and two processes racing to
        // create the file end up sharing whichever key landed first.
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })();
        if let Err(e) = written {
            // Best effort: the temporary file may not exist at all.
            let _ = fs::remove_file(&tmp);
            return Err(io_error("write key file", &tmp, e));
        }
        let linked = fs::hard_link(&tmp, path);
        fs::remove_file(&tmp).map_err(|e| io_error("remove temporary key file", &tmp, e))?;
        match linked {
            Ok(()) => {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io_error("sync directory of key file", dir, e))?;
                Ok((keys, true))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let file = File::open(path).map_err(|e| io_error("open key file", path, e))?;
                Ok((Self::read_key_file(path, file)?, false))
            }
            Err(e) => Err(io_error("create key file", path, e)),
        }
    }

    /// Encrypts `plaintext` as the value of secret `key` of `session`, under the current key.
    pub(super) fn seal(
        &self,
        rng: &mut (impl RngCore + CryptoRng),
        session: &SessionId,
        key: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        self.seal_bound(rng, AAD_LABEL, session, key.as_bytes(), plaintext)
    }

    /// Decrypts a record written by [`Keyring::seal`] for the same session and secret key.
    pub(super) fn open(
        &self,
        session: &SessionId,
        key: &str,
        record: &[u8],
    ) -> Result<Opened, Unreadable> {
        self.open_bound(AAD_LABEL, session, key.as_bytes(), record)
    }

    /// Encrypts an event payload under the current key, bound to the event's place in the log.
    pub(super) fn seal_event(
        &self,
        rng: &mut (impl RngCore + CryptoRng),
        session: &SessionId,
        place: &EventPlace,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        self.seal_bound(rng, EVENT_AAD_LABEL, session, &place.bytes(), plaintext)
    }

    /// Decrypts an event payload written by [`Keyring::seal_event`] for the same place.
    pub(super) fn open_event(
        &self,
        session: &SessionId,
        place: &EventPlace,
        record: &[u8],
    ) -> Result<Opened, Unreadable> {
        self.open_bound(EVENT_AAD_LABEL, session, &place.bytes(), record)
    }

    /// Encrypts the personal part of `session`'s row under the current key.
    pub(super) fn seal_row(
        &self,
        rng: &mut (impl RngCore + CryptoRng),
        session: &SessionId,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        self.seal_bound(rng, ROW_AAD_LABEL, session, ROW_PROFILE, plaintext)
    }

    /// Decrypts a record written by [`Keyring::seal_row`] for the same session.
    pub(super) fn open_row(
        &self,
        session: &SessionId,
        record: &[u8],
    ) -> Result<Opened, Unreadable> {
        self.open_bound(ROW_AAD_LABEL, session, ROW_PROFILE, record)
    }

    fn seal_bound(
        &self,
        rng: &mut (impl RngCore + CryptoRng),
        label: &[u8],
        session: &SessionId,
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let current = self.current();
        let id = current.id.as_bytes();
        let id_len = u8::try_from(id.len()).map_err(|_| StoreError::Encryption)?;
        let header_len = 2 + id.len();
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        // Exact capacity: the plaintext is copied in and encrypted in place, and a reallocation
        // would leave a plaintext copy behind in freed memory.
        let mut record = Vec::with_capacity(header_len + NONCE_LEN + plaintext.len() + TAG_LEN);
        record.push(RECORD_VERSION);
        record.push(id_len);
        record.extend_from_slice(id);
        record.extend_from_slice(&nonce);
        let body_start = record.len();
        record.extend_from_slice(plaintext);
        let (head, body) = record.split_at_mut(body_start);
        let aad = associated_data(label, &head[..header_len], session, context);
        match current
            .cipher
            .encrypt_in_place_detached(&Nonce::from(nonce), &aad, body)
        {
            Ok(tag) => {
                record.extend_from_slice(&tag);
                Ok(record)
            }
            Err(_) => {
                body.zeroize();
                Err(StoreError::Encryption)
            }
        }
    }

    fn open_bound(
        &self,
        label: &[u8],
        session: &SessionId,
        context: &[u8],
        record: &[u8],
    ) -> Result<Opened, Unreadable> {
        let truncated = || Unreadable::Truncated(record.len());
        let (&version, rest) = record.split_first().ok_or_else(truncated)?;
        if version != RECORD_VERSION {
            return Err(Unreadable::UnsupportedVersion(version));
        }
        let (&id_len, rest) = rest.split_first().ok_or_else(truncated)?;
        let (id, rest) = rest
            .split_at_checked(usize::from(id_len))
            .ok_or_else(truncated)?;
        let (nonce, rest) = rest.split_at_checked(NONCE_LEN).ok_or_else(truncated)?;
        let body_len = rest.len().checked_sub(TAG_LEN).ok_or_else(truncated)?;
        let (body, tag) = rest.split_at_checked(body_len).ok_or_else(truncated)?;
        let header = record
            .get(..2 + usize::from(id_len))
            .ok_or_else(truncated)?;
        let (index, entry) = self
            .keys
            .iter()
            .enumerate()
            .find(|(_, k)| k.id.as_bytes() == id)
            .ok_or_else(|| Unreadable::UnknownKeyId(String::from_utf8_lossy(id).into_owned()))?;
        let aad = associated_data(label, header, session, context);
        let mut plaintext = Zeroizing::new(body.to_vec());
        entry
            .cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &aad,
                &mut plaintext,
                Tag::from_slice(tag),
            )
            .map_err(|_| Unreadable::AuthenticationFailed)?;
        Ok(Opened {
            plaintext,
            stale: index != 0,
        })
    }

    /// `(id, HMAC-SHA256(key, label))` for every key: lets a database remember which key bytes
    /// it was written with without storing anything that helps recover them.
    pub(super) fn key_checks(&self) -> Vec<(&str, [u8; 0x20])> {
        self.keys
            .iter()
            .map(|k| {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&*k.secret)
                    .expect("HMAC accepts keys of any length");
                mac.update(KEY_CHECK_LABEL);
                (k.id.as_str(), mac.finalize().into_bytes().into())
            })
            .collect()
    }
}

/// A successfully decrypted secret.
pub(super) struct Opened {
    pub(super) plaintext: Zeroizing<Vec<u8>>,
    /// Sealed with an older key: worth re-sealing under the current one.
    pub(super) stale: bool,
}

/// Why a record could not be decrypted; its text is the quarantine reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unreadable {
    UnsupportedVersion(u8),
    Truncated(usize),
    UnknownKeyId(String),
    AuthenticationFailed,
    /// Authentic, but its content does not decode (written by a newer or broken build).
    Malformed(&'static str),
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::UnsupportedVersion(v) => write!(f, "unsupported record version {v:#04x}"),
            Unreadable::Truncated(len) => write!(f, "truncated record ({len} bytes)"),
            Unreadable::UnknownKeyId(id) => write!(f, "sealed with unknown key id {id:?}"),
            Unreadable::AuthenticationFailed => {
                f.write_str("authentication failed: wrong key, or the record was altered or moved")
            }
            Unreadable::Malformed(why) => write!(f, "malformed content: {why}"),
        }
    }
}

/// Where an event sits in the log: what its sealed payload is bound to, so a payload moved to
/// another event, or an event whose kind or time was altered, fails authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EventPlace {
    pub(super) cursor: u64,
    pub(super) seq: u64,
    pub(super) kind: u8,
    pub(super) timestamp_ms: i64,
}

impl EventPlace {
    fn bytes(&self) -> [u8; 25] {
        let mut out = [0u8; 25];
        out[..8].copy_from_slice(&self.cursor.to_be_bytes());
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
        out[16] = self.kind;
        out[17..].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out
    }
}

fn associated_data(label: &[u8], header: &[u8], session: &SessionId, key: &[u8]) -> Vec<u8> {
    let session = session.as_str().as_bytes();
    let mut aad = Vec::with_capacity(label.len() + header.len() + 8 + session.len() + key.len());
    aad.extend_from_slice(label);
    aad.extend_from_slice(header);
    // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    for part in [session, key] {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        aad.extend_from_slice(&len.to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

fn cipher_for(secret: &[u8; KEY_LEN]) -> Aes256Gcm {
    // By reference: no stray copy of the key bytes on the stack.
    Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(secret))
}

fn random_key(rng: &mut (impl RngCore + CryptoRng)) -> Zeroizing<[u8; KEY_LEN]> {
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(&mut *secret);
    secret
}

/// Decodes 32 key bytes from 64 hex digits or base64. Errors never echo the input.
fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, String> {
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode_to_slice(text, &mut *secret).map_err(|_| "invalid hex key".to_owned())?;
        return Ok(secret);
    }
    let mut buf = Zeroizing::new([0u8; 2 * KEY_LEN]);
    let decoded = [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode_slice(text, &mut *buf).ok());
    match decoded {
        Some(KEY_LEN) => {
            secret.copy_from_slice(buf.get(..KEY_LEN).ok_or("key buffer too short")?);
            Ok(secret)
        }
        Some(n) => Err(format!("the key decodes to {n} bytes, expected {KEY_LEN}")),
        None => Err(format!(
            "the key is neither base64 nor {} hex digits",
            2 * KEY_LEN
        )),
    }
}

fn check_key_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty() {
        return Err(invalid("a key id is empty"));
    }
    if id.len() > MAX_KEY_ID_LEN {
        return Err(invalid(format!(
            "key id {id:?} is longer than {MAX_KEY_ID_LEN} characters"
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(invalid(format!(
            "key id {id:?} contains {c:?} (allowed: A-Z a-z 0-9 _ - .)"
        )));
    }
    Ok(())
}

fn invalid(why: impl Into<String>) -> StoreError {
    StoreError::InvalidKeyring(why.into())
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::os::unix::fs::PermissionsExt;

    fn sid(s: &str) -> SessionId {
        s.parse().expect("valid session id")
    }

    const K1_B64: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const K2_HEX: &str = "0202020202020202020202020202020202020202020202020202020202020202";

    #[test]
    fn env_value_forms() {
        let bare = Keyring::from_env_value(K1_B64).expect("bare base64");
        assert_eq!(bare.ids().collect::<Vec<_>>(), ["k1"]);
        let bare_hex = Keyring::from_env_value(&format!("  {K2_HEX}\n")).expect("bare hex");
        assert_eq!(bare_hex.current_id(), "k1");
        let no_pad = Keyring::from_env_value(K1_B64.trim_end_matches('=')).expect("no padding");
        assert_eq!(no_pad.key_checks()[0].1, bare.key_checks()[0].1);

        let ring = Keyring::from_env_value(&format!("k2:{K2_HEX}, k1:{K1_B64}")).expect("list");
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["k2", "k1"]);
        assert_eq!(ring.current_id(), "k2");
        // Same bytes, same check value, whatever the encoding.
        assert_eq!(ring.key_checks()[1].1, bare.key_checks()[0].1);
        assert_eq!(ring.key_checks()[0].1, bare_hex.key_checks()[0].1);

        let round = Keyring::from_env_value(&ring.to_env_value()).expect("round trip");
        assert_eq!(round.key_checks(), ring.key_checks());
    }

    #[test]
    fn env_value_errors_say_what_is_wrong_without_echoing_keys() {
        let short = "AQEBAQEBAQEBAQEBAQEBAQ==";
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "the value is empty"),
            (short.into(), "decodes to 16 bytes, expected 32"),
            (
                "not base64 at all!".into(),
                "neither base64 nor 64 hex digits",
            ),
            (format!("k1:{K1_B64},{K2_HEX}"), "entry 2 is not ID:KEY"),
            (format!("k1:{K1_B64},k1:{K2_HEX}"), "\"k1\" appears twice"),
            (format!(":{K1_B64}"), "a key id is empty"),
            (format!("a b:{K1_B64}"), "contains ' '"),
            (format!("{}:{K1_B64}", "k".repeat(33)), "longer than 32"),
            (
                format!("k1:{short}"),
                "entry 1: the key decodes to 16 bytes",
            ),
        ];
        for (value, expected) in cases {
            let err = Keyring::from_env_value(&value)
                .expect_err(&value)
                .to_string();
            assert!(err.contains(expected), "{value:?}: {err}");
            assert!(!err.contains(short) && !err.contains(K1_B64) && !err.contains(K2_HEX));
        }
    }

    #[test]
    fn debug_shows_ids_only() {
        let ring = Keyring::from_env_value(&format!("k2:{K2_HEX},k1:{K1_B64}")).expect("list");
        let shown = format!("{ring:?}");
        assert!(
            shown.contains("\"k2\"") && shown.contains("\"k1\""),
            "{shown}"
        );
        assert!(
            !shown.contains("2, 2, 2") && !shown.contains(K2_HEX),
            "{shown}"
        );
    }

    #[test]
    fn seal_open_round_trip_and_row_binding() {
        let mut rng = StdRng::seed_from_u64(7);
        let ring = Keyring::generate(&mut rng);
        let (a, b) = (sid("a"), sid("b"));
        let record = ring.seal(&mut rng, &a, "creds", b"secret").expect("seal");
        assert_eq!(record.len(), 2 + 2 + NONCE_LEN + 6 + TAG_LEN);
        assert_eq!(record[0], RECORD_VERSION);
        assert_eq!(&record[1..4], b"\x02k1");
        let opened = ring.open(&a, "creds", &record).expect("open");
        assert_eq!(&*opened.plaintext, b"secret");
        assert!(!opened.stale);
        // Fresh nonce per record.
        let again = ring.seal(&mut rng, &a, "creds", b"secret").expect("seal");
        assert_ne!(again, record);
        // Moved to another key or session: rejected.
        assert_eq!(
            ring.open(&a, "creds2", &record).err(),
            Some(Unreadable::AuthenticationFailed)
        );
        assert_eq!(
            ring.open(&b, "creds", &record).err(),
            Some(Unreadable::AuthenticationFailed)
        );
        // Empty plaintext works.
        let empty = ring.seal(&mut rng, &a, "e", b"").expect("seal");
        assert!(ring
            .open(&a, "e", &empty)
            .expect("open")
            .plaintext
            .is_empty());
    }

    #[test]
    fn event_payloads_are_bound_to_their_place_and_apart_from_secrets() {
        let mut rng = StdRng::seed_from_u64(10);
        let ring = Keyring::generate(&mut rng);
        let a = sid("a");
        let place = EventPlace {
            cursor: 7,
            seq: 3,
            kind: 1,
            timestamp_ms: 1_000,
        };
        let record = ring
            .seal_event(&mut rng, &a, &place, b"payload")
            .expect("seal");
        let opened = ring.open_event(&a, &place, &record).expect("open");
        assert_eq!(&*opened.plaintext, b"payload");
        let moved = [
            EventPlace { cursor: 8, ..place },
            EventPlace { seq: 4, ..place },
            EventPlace { kind: 3, ..place },
            EventPlace {
                timestamp_ms: 999,
                ..place
            },
        ];
        for other in moved {
            assert_eq!(
                ring.open_event(&a, &other, &record).err(),
                Some(Unreadable::AuthenticationFailed),
                "{other:?}"
            );
        }
        assert!(ring.open_event(&sid("b"), &place, &record).is_err());
        // A secret record never opens as an event, nor the reverse.
        let key = String::from_utf8(place.bytes().to_vec()).unwrap_or_default();
        let secret = ring.seal(&mut rng, &a, &key, b"payload").expect("seal");
        assert!(ring.open_event(&a, &place, &secret).is_err());
        assert!(ring.open(&a, &key, &record).is_err());
    }

    #[test]
    fn every_tampered_byte_is_rejected_and_nothing_panics() {
        let mut rng = StdRng::seed_from_u64(8);
        let ring = Keyring::generate(&mut rng);
        let a = sid("a");
        let record = ring.seal(&mut rng, &a, "k", b"0123456789").expect("seal");
        for i in 0..record.len() {
            let mut bad = record.clone();
            bad[i] ^= 0x01;
            assert!(ring.open(&a, "k", &bad).is_err(), "byte {i}");
        }
        for len in 0..record.len() {
            assert!(ring.open(&a, "k", &record[..len]).is_err(), "len {len}");
        }
        let mut v2 = record.clone();
        v2[0] = 0x02;
        assert_eq!(
            ring.open(&a, "k", &v2).err(),
            Some(Unreadable::UnsupportedVersion(2))
        );
        assert_eq!(
            ring.open(&a, "k", &[]).err(),
            Some(Unreadable::Truncated(0))
        );
        let mut relabelled = record.clone();
        relabelled[3] = b'9';
        assert_eq!(
            ring.open(&a, "k", &relabelled).err(),
            Some(Unreadable::UnknownKeyId("k9".into()))
        );
        assert_eq!(
            Unreadable::UnknownKeyId("k9".into()).to_string(),
            "sealed with unknown key id \"k9\""
        );
    }

    #[test]
    fn rotation_reads_old_records_and_flags_them_stale() {
        let mut rng = StdRng::seed_from_u64(9);
        let old = Keyring::generate(&mut rng);
        let a = sid("a");
        let record = old.seal(&mut rng, &a, "k", b"v").expect("seal");
        let new = old.rotate(&mut rng);
        assert_eq!(new.ids().collect::<Vec<_>>(), ["k2", "k1"]);
        let opened = new.open(&a, "k", &record).expect("old key still reads");
        assert!(opened.stale);
        let resealed = new
            .seal(&mut rng, &a, "k", &opened.plaintext)
            .expect("seal");
        assert_eq!(&resealed[1..4], b"\x02k2");
        assert!(!new.open(&a, "k", &resealed).expect("open").stale);
        // A keyring without k1 cannot read the old record.
        let only_new = Keyring::from_env_value(
            &new.to_env_value()
                .split(',')
                .next()
                .map(str::to_owned)
                .expect("first entry"),
        )
        .expect("parse");
        assert_eq!(
            only_new.open(&a, "k", &record).err(),
            Some(Unreadable::UnknownKeyId("k1".into()))
        );
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.key");
        let (created, was_created) = Keyring::load_or_create_file(&path).expect("create");
        assert!(was_created);
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (loaded, was_created) = Keyring::load_or_create_file(&path).expect("load");
        assert!(!was_created);
        assert_eq!(loaded.key_checks(), created.key_checks());
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("store.key")]);
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.key");
        fs::write(&path, K1_B64).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Keyring::load_or_create_file(&path).expect_err("insecure");
        assert!(
            matches!(err, StoreError::KeyFileInsecure { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("mode 0644"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).expect("chmod");
        let (ring, created) = Keyring::load_or_create_file(&path).expect("private file");
        assert!(!created);
        assert_eq!(ring.current_id(), "k1");
    }

    #[test]
    fn bad_key_file_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.key");
        fs::write(&path, "k1:tooshort").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = Keyring::load_or_create_file(&path)
            .expect_err("bad")
            .to_string();
        assert!(err.contains("bad.key") && err.contains("entry 1"), "{err}");
    }
}
