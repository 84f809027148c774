//! How the Redis backend lays out what is not a sealed record: session rows (their clear
//! columns beside the sealed profile) and quarantine entries. Length-prefixed fields, all
//! big-endian; decoding never panics. Must not import `runtime`, `api` or `sim`.

use super::super::{QuarantineEntry, SessionId, SessionRecord, StoreError};

const ROW_VERSION: u8 = 1;
const QUARANTINE_VERSION: u8 = 1;

/// Appends fields.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn bytes(&mut self, b: &[u8]) {
        // Fields are ids, keys, reasons and sealed records, all far below 4 GiB; a longer one
        // would be cut at the length the prefix can say, and fail to decode, never misparse.
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(b.get(..len as usize).unwrap_or(b));
    }

    fn opt(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                self.0.push(1);
                self.bytes(b);
            }
            None => self.0.push(0),
        }
    }
}

/// Reads fields back; `None` at the first malformed one.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
        self.take(usize::try_from(len).ok()?)
    }

    fn opt(&mut self) -> Option<Option<&'a [u8]>> {
        match self.byte()? {
            0 => Some(None),
            1 => Some(Some(self.bytes()?)),
            _ => None,
        }
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// A session row as kept: the clear columns of `record` (already stripped of its personal
/// fields) and the sealed profile, if any.
pub(super) fn encode_row(record: &SessionRecord, profile: Option<&[u8]>) -> Vec<u8> {
    let mut w = Writer::default();
    w.0.push(ROW_VERSION);
    w.0.extend_from_slice(&record.created_at_ms.to_be_bytes());
    w.0.push(u8::from(record.desired_online) | (u8::from(record.logged_out) << 1));
    w.opt(record.platform.as_deref().map(str::as_bytes));
    match record.last_connected_at_ms {
        Some(t) => {
            w.0.push(1);
            w.0.extend_from_slice(&t.to_be_bytes());
        }
        None => w.0.push(0),
    }
    w.opt(profile);
    w.0
}

/// A stored row back: the clear record and the sealed profile.
pub(super) fn decode_row(
    id: &SessionId,
    bytes: &[u8],
) -> Result<(SessionRecord, Option<Vec<u8>>), StoreError> {
    let corrupt = || StoreError::Corrupt(format!("session row of {id} does not decode"));
    let mut r = Reader(bytes);
    if r.byte() != Some(ROW_VERSION) {
        return Err(corrupt());
    }
    let created_at_ms = r.i64().ok_or_else(corrupt)?;
    let flags = r.byte().ok_or_else(corrupt)?;
    let platform = match r.opt().ok_or_else(corrupt)? {
        Some(p) => Some(String::from_utf8(p.to_vec()).map_err(|_| corrupt())?),
        None => None,
    };
    let last_connected_at_ms = match r.byte().ok_or_else(corrupt)? {
        0 => None,
        1 => Some(r.i64().ok_or_else(corrupt)?),
        _ => return Err(corrupt()),
    };
    let profile = r.opt().ok_or_else(corrupt)?.map(<[u8]>::to_vec);
    if !r.done() || flags > 3 {
        return Err(corrupt());
    }
    let mut record = SessionRecord::new(id.clone(), created_at_ms);
    record.desired_online = flags & 1 != 0;
    record.logged_out = flags & 2 != 0;
    record.platform = platform;
    record.last_connected_at_ms = last_connected_at_ms;
    Ok((record, profile))
}

/// A quarantine entry with the record set aside.
pub(super) fn encode_quarantine(entry: &QuarantineEntry, record: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.0.push(QUARANTINE_VERSION);
    w.bytes(entry.session_id.as_str().as_bytes());
    w.bytes(entry.key.as_bytes());
    w.bytes(entry.reason.as_bytes());
    w.0.extend_from_slice(&entry.quarantined_at_ms.to_be_bytes());
    w.bytes(record);
    w.0
}

/// The entry of an encoded quarantine record (the record itself stays in Redis).
pub(super) fn decode_quarantine(bytes: &[u8]) -> Result<QuarantineEntry, StoreError> {
    let corrupt = || StoreError::Corrupt("a quarantine entry does not decode".into());
    let mut r = Reader(bytes);
    if r.byte() != Some(QUARANTINE_VERSION) {
        return Err(corrupt());
    }
    let session_id = r
        .string()
        .and_then(|s| SessionId::try_from(s).ok())
        .ok_or_else(corrupt)?;
    let key = r.string().ok_or_else(corrupt)?;
    let reason = r.string().ok_or_else(corrupt)?;
    let quarantined_at_ms = r.i64().ok_or_else(corrupt)?;
    r.bytes().ok_or_else(corrupt)?;
    if !r.done() {
        return Err(corrupt());
    }
    Ok(QuarantineEntry {
        session_id,
        key,
        reason,
        quarantined_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let id: SessionId = "s-1".parse().expect("id");
        let mut record = SessionRecord::new(id.clone(), -5);
        record.desired_online = false;
        record.logged_out = true;
        record.platform = Some("android".into());
        record.last_connected_at_ms = Some(i64::MAX);
        for profile in [None, Some(&b"sealed"[..])] {
            let bytes = encode_row(&record, profile);
            let (back, p) = decode_row(&id, &bytes).expect("decodes");
            assert_eq!(back, record);
            assert_eq!(p.as_deref(), profile);
            for cut in 0..bytes.len() {
                assert!(decode_row(&id, &bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn quarantine_entries_round_trip() {
        let entry = QuarantineEntry {
            session_id: "s".parse().expect("id"),
            key: "pre/1".into(),
            reason: "authentication failed".into(),
            quarantined_at_ms: 7,
        };
        let bytes = encode_quarantine(&entry, b"record");
        assert_eq!(decode_quarantine(&bytes).expect("decodes"), entry);
        for cut in 0..bytes.len() {
            assert!(decode_quarantine(&bytes[..cut]).is_err());
        }
    }
}
