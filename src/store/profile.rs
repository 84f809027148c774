//! The personal part of a session row — the account's JID (its phone number), its push name and
//! the caller's metadata — kept as one sealed record beside the row's clear columns. Must not
//! import `runtime`, `api` or `sim`.
//!
//! What stays in clear: the session id (the caller's own lookup key, which callers are told not
//! to fill with personal data), times, flags and the device platform, which the store or
//! operators need without a key and which say nothing about the person.
//!
//! Content: `version (0x01) ‖ jid ‖ push name ‖ metadata count (u32) ‖ (key ‖ value)*`, where an
//! optional string is a presence byte then a string, and a string is a u32 length then UTF-8
//! bytes, all big-endian.

use std::collections::BTreeMap;

use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::crypt::{Keyring, Opened, Unreadable};
use super::{SessionId, SessionRecord, StoreError};

const VERSION: u8 = 0x01;

/// The quarantine key of an unreadable profile.
pub(super) const PROFILE_KEY: &str = "session/profile";

/// Seals the personal fields of `record`; `None` when it has none (nothing to protect, and no
/// record to re-seal when keys rotate).
pub(super) fn seal(
    keys: &Keyring,
    rng: &mut (impl RngCore + CryptoRng),
    record: &SessionRecord,
) -> Result<Option<Vec<u8>>, StoreError> {
    if record.jid.is_none() && record.push_name.is_none() && record.metadata.is_empty() {
        return Ok(None);
    }
    let plaintext = encode(record);
    keys.seal_row(rng, &record.id, &plaintext).map(Some)
}

/// `record` without its personal fields: what may be kept in clear.
pub(super) fn stripped(record: &SessionRecord) -> SessionRecord {
    SessionRecord {
        metadata: BTreeMap::new(),
        jid: None,
        push_name: None,
        ..record.clone()
    }
}

/// Opens a sealed profile and puts its fields into `record`. `stale`: sealed with an older key.
pub(super) fn open_into(
    keys: &Keyring,
    record: &mut SessionRecord,
    sealed: &[u8],
) -> Result<bool, Unreadable> {
    let Opened { plaintext, stale } = keys.open_row(&record.id, sealed)?;
    decode_into(&plaintext, record).map_err(Unreadable::Malformed)?;
    Ok(stale)
}

/// Re-seals a profile under the current key if it was sealed with an older one: `Ok(None)` when
/// it is current already.
pub(super) fn reseal(
    keys: &Keyring,
    rng: &mut (impl RngCore + CryptoRng),
    id: &SessionId,
    sealed: &[u8],
) -> Result<Result<Option<Vec<u8>>, Unreadable>, StoreError> {
    let mut record = SessionRecord::new(id.clone(), 0);
    match open_into(keys, &mut record, sealed) {
        Ok(false) => Ok(Ok(None)),
        Ok(true) => Ok(Ok(seal(keys, rng, &record)?)),
        Err(why) => Ok(Err(why)),
    }
}

fn encode(record: &SessionRecord) -> Zeroizing<Vec<u8>> {
    let strings = record.jid.iter().chain(&record.push_name);
    let len = 1
        + 2
        + 4
        + strings.map(|s| 4 + s.len()).sum::<usize>()
        + record
            .metadata
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>();
    // Exact capacity: no reallocation strands a plaintext copy in freed memory.
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    out.push(VERSION);
    for field in [&record.jid, &record.push_name] {
        match field {
            Some(s) => {
                out.push(1);
                put_str(&mut out, s);
            }
            None => out.push(0),
        }
    }
    put_len(&mut out, record.metadata.len());
    for (k, v) in &record.metadata {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    out
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Lengths come from strings in memory; a value beyond u32 cannot occur on the platforms built
    // for, and saturating keeps the encoder total (the decoder then rejects it).
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn decode_into(bytes: &[u8], record: &mut SessionRecord) -> Result<(), &'static str> {
    let mut r = Reader(bytes);
    if r.byte()? != VERSION {
        return Err("unknown profile version");
    }
    let jid = r.opt_str()?;
    let push_name = r.opt_str()?;
    let count = r.len()?;
    let mut metadata = BTreeMap::new();
    for _ in 0..count {
        let k = r.str()?;
        let v = r.str()?;
        metadata.insert(k, v);
    }
    if !r.0.is_empty() {
        return Err("trailing bytes");
    }
    record.jid = jid;
    record.push_name = push_name;
    record.metadata = metadata;
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], &'static str> {
        let (head, rest) = self.0.split_at_checked(n).ok_or("truncated profile")?;
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn len(&mut self) -> Result<usize, &'static str> {
        let raw: [u8; 4] = self.take(4)?.try_into().map_err(|_| "truncated profile")?;
        usize::try_from(u32::from_be_bytes(raw)).map_err(|_| "length too large")
    }

    fn str(&mut self) -> Result<String, &'static str> {
        let len = self.len()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8")
    }

    fn opt_str(&mut self) -> Result<Option<String>, &'static str> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            _ => Err("bad presence byte"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn full() -> SessionRecord {
        let mut r = SessionRecord::new("s".parse().expect("id"), 5);
        r.jid = Some("15550001111:3@s.whatsapp.net".into());
        r.push_name = Some("Zoë".into());
        r.platform = Some("android".into());
        r.metadata = BTreeMap::from([("user".into(), "u1".into()), ("".into(), "".into())]);
        r
    }

    #[test]
    fn round_trip_and_empty_profiles_are_not_sealed() {
        let mut rng = StdRng::seed_from_u64(1);
        let keys = Keyring::generate(&mut rng);
        let record = full();
        let sealed = seal(&keys, &mut rng, &record)
            .expect("seal")
            .expect("personal");
        let mut back = stripped(&record);
        assert_eq!(back.platform.as_deref(), Some("android"), "kept in clear");
        assert!(back.jid.is_none() && back.push_name.is_none() && back.metadata.is_empty());
        assert!(!open_into(&keys, &mut back, &sealed).expect("open"));
        assert_eq!(back, record);
        assert_eq!(
            seal(&keys, &mut rng, &stripped(&record)).expect("seal"),
            None
        );
        // Bound to its session.
        let mut other = SessionRecord::new("t".parse().expect("id"), 5);
        assert_eq!(
            open_into(&keys, &mut other, &sealed),
            Err(Unreadable::AuthenticationFailed)
        );
    }

    #[test]
    fn decoding_rejects_every_truncation_without_panicking() {
        let bytes = encode(&full());
        let mut record = SessionRecord::new("s".parse().expect("id"), 5);
        decode_into(&bytes, &mut record).expect("whole");
        for len in 0..bytes.len() {
            assert!(decode_into(&bytes[..len], &mut record).is_err(), "{len}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(decode_into(&longer, &mut record), Err("trailing bytes"));
        let mut huge = vec![VERSION, 1];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_into(&huge, &mut record).is_err());
    }
}
