//! The store's data model: session ids and rows, secret operations, batches, events, filters and
//! retention. Plain data with validation; no I/O. Must not import `runtime`, `api` or `sim`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use zeroize::Zeroizing;

use super::StoreError;

/// Longest session id, in characters.
pub const MAX_SESSION_ID_LEN: usize = 64;

/// Longest secret key (its name), in bytes.
pub const MAX_SECRET_KEY_LEN: usize = 512;

/// A session's name as chosen by the backend: 1–64 characters of `[A-Za-z0-9_-]`. It is the
/// lookup key of every row and stays in clear at rest, so it must not be a phone number or any
/// other personal data (metadata, which is sealed, is the place for those).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

/// Why a string is not a [`SessionId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionIdError {
    #[error("session id is empty")]
    Empty,
    #[error("session id is too long ({len} chars, max {MAX_SESSION_ID_LEN})")]
    TooLong { len: usize },
    /// `position` counts characters from 0.
    #[error(
        "session id has invalid character {ch:?} at position {position} \
         (allowed: A-Z a-z 0-9 _ -)"
    )]
    InvalidChar { ch: char, position: usize },
}

impl SessionId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn validate(s: &str) -> Result<(), SessionIdError> {
        if s.is_empty() {
            return Err(SessionIdError::Empty);
        }
        let len = s.chars().count();
        if len > MAX_SESSION_ID_LEN {
            return Err(SessionIdError::TooLong { len });
        }
        match s
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            Some((position, ch)) => Err(SessionIdError::InvalidChar { ch, position }),
            None => Ok(()),
        }
    }
}

impl FromStr for SessionId {
    type Err = SessionIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::validate(s)?;
        Ok(SessionId(s.to_owned()))
    }
}

impl TryFrom<String> for SessionId {
    type Error = SessionIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::validate(&s)?;
        Ok(SessionId(s))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A session's row. The store seals its personal fields (`jid`, `push_name`, `metadata`) at rest
/// and keeps the others in clear; `Debug` shows only their sizes, so a row logged or printed by
/// a failing test never carries a phone number.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: SessionId,
    /// Caller-supplied labels (user id, chatbot id, ...).
    pub metadata: BTreeMap<String, String>,
    pub created_at_ms: i64,
    /// True after Init, false after Disconnect: restore at boot if true.
    pub desired_online: bool,
    pub jid: Option<String>,
    pub push_name: Option<String>,
    pub platform: Option<String>,
    pub last_connected_at_ms: Option<i64>,
    pub logged_out: bool,
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// A personal value, shown by size only.
        struct Hidden(Option<usize>);
        impl fmt::Debug for Hidden {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.0 {
                    Some(len) => write!(f, "Some(<{len} bytes>)"),
                    None => f.write_str("None"),
                }
            }
        }
        f.debug_struct("SessionRecord")
            .field("id", &self.id)
            .field("metadata_entries", &self.metadata.len())
            .field("created_at_ms", &self.created_at_ms)
            .field("desired_online", &self.desired_online)
            .field("jid", &Hidden(self.jid.as_ref().map(String::len)))
            .field(
                "push_name",
                &Hidden(self.push_name.as_ref().map(String::len)),
            )
            .field("platform", &self.platform)
            .field("last_connected_at_ms", &self.last_connected_at_ms)
            .field("logged_out", &self.logged_out)
            .finish()
    }
}

impl SessionRecord {
    /// A fresh session that wants to be online, with nothing known yet.
    pub fn new(id: SessionId, created_at_ms: i64) -> Self {
        SessionRecord {
            id,
            metadata: BTreeMap::new(),
            created_at_ms,
            desired_online: true,
            jid: None,
            push_name: None,
            platform: None,
            last_connected_at_ms: None,
            logged_out: false,
        }
    }
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Global position in the log, strictly increasing across sessions.
    pub cursor: u64,
    pub session_id: SessionId,
    /// Per-session sequence number, gap-free from 1.
    pub seq: u64,
    pub timestamp_ms: i64,
    pub kind: u8,
    /// Opaque bytes (prost-encoded by the caller).
    pub payload: Vec<u8>,
}

/// An event to append; the store assigns its seq and cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub kind: u8,
    /// When the event happened; retention by age compares against it.
    pub timestamp_ms: i64,
    pub payload: Vec<u8>,
}

/// One change to a session's secrets.
#[derive(Clone)]
pub enum SecretOp {
    Put {
        key: String,
        value: Zeroizing<Vec<u8>>,
    },
    Delete {
        key: String,
    },
    /// Deletes every secret whose key starts with `prefix`.
    DeletePrefix {
        prefix: String,
    },
    /// Deletes every secret of the session (logout).
    DeleteAll,
}

// Hand-written so a value can never reach a log through `{:?}`.
impl fmt::Debug for SecretOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretOp::Put { key, value } => f
                .debug_struct("Put")
                .field("key", key)
                .field("value", &format_args!("<{} bytes redacted>", value.len()))
                .finish(),
            SecretOp::Delete { key } => f.debug_struct("Delete").field("key", key).finish(),
            SecretOp::DeletePrefix { prefix } => f
                .debug_struct("DeletePrefix")
                .field("prefix", prefix)
                .finish(),
            SecretOp::DeleteAll => f.write_str("DeleteAll"),
        }
    }
}

/// Everything one `commit` applies atomically.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub secrets: Vec<SecretOp>,
    pub events: Vec<NewEvent>,
    pub session: Option<SessionRecord>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a secret write.
    #[must_use]
    pub fn put_secret(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.secrets.push(SecretOp::Put {
            key: key.into(),
            value: Zeroizing::new(value.into()),
        });
        self
    }

    /// Adds a secret deletion.
    #[must_use]
    pub fn delete_secret(mut self, key: impl Into<String>) -> Self {
        self.secrets.push(SecretOp::Delete { key: key.into() });
        self
    }

    /// Adds a deletion of every secret under `prefix`.
    #[must_use]
    pub fn delete_secret_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.secrets.push(SecretOp::DeletePrefix {
            prefix: prefix.into(),
        });
        self
    }

    /// Adds a deletion of every secret of the session.
    #[must_use]
    pub fn delete_all_secrets(mut self) -> Self {
        self.secrets.push(SecretOp::DeleteAll);
        self
    }

    /// Adds an event append.
    #[must_use]
    pub fn event(mut self, kind: u8, timestamp_ms: i64, payload: impl Into<Vec<u8>>) -> Self {
        self.events.push(NewEvent {
            kind,
            timestamp_ms,
            payload: payload.into(),
        });
        self
    }

    /// Sets the session row to upsert.
    #[must_use]
    pub fn session(mut self, record: SessionRecord) -> Self {
        self.session = Some(record);
        self
    }

    /// True when committing it would change nothing.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.events.is_empty() && self.session.is_none()
    }

    /// Checks what can be checked before touching storage: the row belongs to `id` and every
    /// secret key is well formed.
    pub(super) fn validate(&self, id: &SessionId) -> Result<(), StoreError> {
        if let Some(record) = &self.session {
            if record.id != *id {
                return Err(StoreError::SessionMismatch {
                    batch: id.clone(),
                    record: record.id.clone(),
                });
            }
        }
        for op in &self.secrets {
            match op {
                SecretOp::Put { key, .. } | SecretOp::Delete { key } => check_secret_key(key)?,
                SecretOp::DeletePrefix { .. } | SecretOp::DeleteAll => {}
            }
        }
        Ok(())
    }
}

/// A secret key (the name) must be non-empty and at most [`MAX_SECRET_KEY_LEN`] bytes.
pub(super) fn check_secret_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidSecretKey("empty".into()));
    }
    if key.len() > MAX_SECRET_KEY_LEN {
        return Err(StoreError::InvalidSecretKey(format!(
            "{} bytes long, max {MAX_SECRET_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

/// Which events a reader wants. Empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub sessions: Vec<SessionId>,
    pub kinds: Vec<u8>,
}

impl EventFilter {
    /// Matches every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Whether `event` passes the filter (the same rule the backends apply in storage, for
    /// callers that follow live events).
    pub fn matches(&self, event: &EventRecord) -> bool {
        (self.sessions.is_empty() || self.sessions.contains(&event.session_id))
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
    }
}

/// How long events are kept. `None` disables a bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_age_ms: Option<i64>,
    pub max_per_session: Option<u64>,
}

impl Retention {
    /// The timestamp below which events are too old, if age is bounded.
    pub(super) fn cutoff_ms(&self, now_ms: i64) -> Option<i64> {
        self.max_age_ms.map(|age| now_ms.saturating_sub(age))
    }
}

/// A secret that could not be read and was set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineEntry {
    pub session_id: SessionId,
    pub key: String,
    pub reason: String,
    pub quarantined_at_ms: i64,
}

/// The smallest string greater than every string that starts with `prefix`, if one exists; lets
/// an ordered index answer a prefix query with a range. `None` means "no upper bound".
pub(super) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // The next scalar value after `last`, skipping the surrogate gap.
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_record_debug_hides_personal_fields() {
        let mut r = SessionRecord::new("s-1".parse().expect("id"), 1);
        r.jid = Some("15550001111:3@s.whatsapp.net".into());
        r.push_name = Some("Alice".into());
        r.platform = Some("android".into());
        r.metadata = BTreeMap::from([("user_id".into(), "u-42".into())]);
        let shown = format!("{r:?}");
        for hidden in ["15550001111", "Alice", "user_id", "u-42"] {
            assert!(!shown.contains(hidden), "{hidden} in {shown}");
        }
        for kept in ["s-1", "android", "Some(<28 bytes>)", "metadata_entries: 1"] {
            assert!(shown.contains(kept), "{kept} not in {shown}");
        }
    }

    #[test]
    fn session_id_accepts_the_allowed_alphabet() {
        for good in [
            "a",
            "A-z_09",
            "user-42_bot",
            &"x".repeat(MAX_SESSION_ID_LEN),
        ] {
            let id: SessionId = good.parse().expect("valid id");
            assert_eq!(id.as_str(), good);
            assert_eq!(id.to_string(), good);
            assert_eq!(SessionId::try_from(good.to_owned()).expect("valid id"), id);
        }
    }

    #[test]
    fn session_id_rejects_empty() {
        let err = "".parse::<SessionId>().expect_err("empty");
        assert_eq!(err, SessionIdError::Empty);
        assert_eq!(err.to_string(), "session id is empty");
    }

    #[test]
    fn session_id_rejects_too_long_counting_chars() {
        let err = "x".repeat(65).parse::<SessionId>().expect_err("too long");
        assert_eq!(err, SessionIdError::TooLong { len: 65 });
        assert_eq!(err.to_string(), "session id is too long (65 chars, max 64)");
        // Counted in characters, not bytes.
        let err = "é".repeat(70).parse::<SessionId>().expect_err("too long");
        assert_eq!(err, SessionIdError::TooLong { len: 70 });
    }

    #[test]
    fn session_id_names_the_first_bad_character_and_its_position() {
        let err = "ab c".parse::<SessionId>().expect_err("space");
        assert_eq!(
            err,
            SessionIdError::InvalidChar {
                ch: ' ',
                position: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "session id has invalid character ' ' at position 2 (allowed: A-Z a-z 0-9 _ -)"
        );
        let err = "héllo/x".parse::<SessionId>().expect_err("accent");
        assert_eq!(
            err,
            SessionIdError::InvalidChar {
                ch: 'é',
                position: 1
            }
        );
        let err = "a\nb".parse::<SessionId>().expect_err("newline");
        assert!(err.to_string().contains(r"'\n' at position 1"), "{err}");
        for bad in ["a.b", "a/b", "a:b", "../x", "a\0"] {
            assert!(matches!(
                bad.parse::<SessionId>(),
                Err(SessionIdError::InvalidChar { .. })
            ));
        }
        // The typed error converts into the layer's error with the same message.
        let store_err = StoreError::from(err);
        assert_eq!(
            store_err.to_string(),
            r"session id has invalid character '\n' at position 1 (allowed: A-Z a-z 0-9 _ -)"
        );
    }

    #[test]
    fn secret_op_debug_hides_values() {
        let batch = Batch::new().put_secret("creds", b"very-secret-bytes".to_vec());
        let shown = format!("{batch:?}");
        assert!(shown.contains("creds"));
        assert!(shown.contains("<17 bytes redacted>"));
        assert!(!shown.contains("118, 101, 114, 121"), "{shown}");
    }

    #[test]
    fn batch_validation() {
        let a: SessionId = "a".parse().expect("valid id");
        let b: SessionId = "b".parse().expect("valid id");
        assert!(Batch::new().is_empty());
        let mismatch = Batch::new().session(SessionRecord::new(b, 0));
        assert!(matches!(
            mismatch.validate(&a),
            Err(StoreError::SessionMismatch { .. })
        ));
        assert!(matches!(
            Batch::new().put_secret("", vec![1]).validate(&a),
            Err(StoreError::InvalidSecretKey(_))
        ));
        assert!(matches!(
            Batch::new()
                .delete_secret("k".repeat(MAX_SECRET_KEY_LEN + 1))
                .validate(&a),
            Err(StoreError::InvalidSecretKey(_))
        ));
        assert!(Batch::new()
            .put_secret("k".repeat(MAX_SECRET_KEY_LEN), vec![])
            .delete_secret_prefix("")
            .delete_all_secrets()
            .event(1, 2, vec![3])
            .validate(&a)
            .is_ok());
    }

    #[test]
    fn filter_matching() {
        let a: SessionId = "a".parse().expect("valid id");
        let ev = EventRecord {
            cursor: 1,
            session_id: a.clone(),
            seq: 1,
            timestamp_ms: 0,
            kind: 3,
            payload: vec![],
        };
        assert!(EventFilter::all().matches(&ev));
        let only_b = EventFilter {
            sessions: vec!["b".parse().expect("valid id")],
            kinds: vec![],
        };
        assert!(!only_b.matches(&ev));
        let a_kind3 = EventFilter {
            sessions: vec![a.clone()],
            kinds: vec![3],
        };
        assert!(a_kind3.matches(&ev));
        let a_kind4 = EventFilter {
            sessions: vec![a],
            kinds: vec![4],
        };
        assert!(!a_kind4.matches(&ev));
    }

    #[test]
    fn prefix_upper_bound_brackets_exactly_the_prefixed_strings() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        assert_eq!(prefix_upper_bound("\u{D7FF}").as_deref(), Some("\u{E000}"));
        let upper = prefix_upper_bound("pre/").expect("bounded");
        for inside in ["pre/", "pre/x", "pre/\u{10FFFF}\u{10FFFF}"] {
            assert!(inside >= "pre/" && inside < upper.as_str(), "{inside}");
        }
        for outside in ["pre", "pre0", "prf", "q"] {
            assert!(
                !(outside >= "pre/" && outside < upper.as_str()),
                "{outside}"
            );
        }
    }
}
