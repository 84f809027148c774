//! The store layer's one error type and its retry classification. Must not import `runtime`,
//! `api` or `sim`.

use std::io;
use std::path::PathBuf;

use rusqlite::ErrorCode;

use super::{SessionId, SessionIdError};

/// Everything that can go wrong in the store layer.
///
/// Messages never contain secret values or key material.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A session id failed to parse.
    #[error(transparent)]
    InvalidSessionId(#[from] SessionIdError),

    /// A secret key (the name, not the value) is empty or too long.
    #[error("invalid secret key: {0}")]
    InvalidSecretKey(String),

    /// `commit` for one session was handed the row of another.
    #[error("batch for session {batch} carries the record of session {record}")]
    SessionMismatch { batch: SessionId, record: SessionId },

    /// A secret was written for a session that has no row.
    #[error("unknown session {0}: store its record before its secrets")]
    UnknownSession(SessionId),

    /// A stored secret could not be decrypted; it was moved to quarantine.
    #[error("secret {key:?} of session {session} is unreadable ({reason}); moved to quarantine")]
    Quarantined {
        session: SessionId,
        key: String,
        reason: String,
    },

    /// The configured store key is malformed.
    #[error("invalid store key: {0}")]
    InvalidKeyring(String),

    /// The key file can be read or written by group or others.
    #[error(
        "store key file {} has mode {mode:04o}: it must not be accessible by group or others \
         (chmod 600, or defaultMode 0400 for a mounted secret)",
        path.display()
    )]
    KeyFileInsecure { path: PathBuf, mode: u32 },

    /// A key in the keyring has the id of a key this database used, but other bytes: opening
    /// would quarantine every secret, so the store refuses instead.
    #[error("store key {key_id:?} does not match the key this database was written with")]
    KeyMismatch { key_id: String },

    /// The database holds secrets sealed with a key the keyring lacks: opening would
    /// quarantine them on first read, so the store refuses instead.
    #[error(
        "the database holds secrets sealed with key {key_id:?}, which the keyring lacks: keep it \
         as an older key (after the current one) until every secret is re-sealed"
    )]
    KeyMissing { key_id: String },

    /// A file operation (key file, database file) failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The database was written by a newer build.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },

    /// Stored data violates an invariant (bad id, negative counter, ...).
    #[error("store data is corrupt: {0}")]
    Corrupt(String),

    /// Sealing a secret failed (AES-GCM refuses inputs beyond its size limit).
    #[error("secret encryption failed")]
    Encryption,

    /// The backend cannot serve the request right now.
    #[error("store unavailable: {0}")]
    Unavailable(String),

    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// The session was claimed by another gateway after this one's claim: this process is a
    /// former owner and must stop serving the session; nothing of the batch was written.
    #[error("session {0} is owned by another gateway now; this one's writes are fenced off")]
    Fenced(SessionId),

    /// An error reply from Redis that will not clear by retrying (see `redis/resp.rs` for the
    /// ones that do, which are `Unavailable`).
    #[error("redis: {0}")]
    Redis(String),
}

impl StoreError {
    /// Whether the same call may succeed if tried again later (lock contention, transient
    /// backend trouble). Every variant is placed explicitly so a new one must be classified.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::DiskFull)
            ),
            StoreError::Unavailable(_) => true,
            StoreError::InvalidSessionId(_)
            | StoreError::InvalidSecretKey(_)
            | StoreError::SessionMismatch { .. }
            | StoreError::UnknownSession(_)
            | StoreError::Quarantined { .. }
            | StoreError::InvalidKeyring(_)
            | StoreError::KeyFileInsecure { .. }
            | StoreError::KeyMismatch { .. }
            | StoreError::KeyMissing { .. }
            | StoreError::Io { .. }
            | StoreError::SchemaTooNew { .. }
            | StoreError::Corrupt(_)
            | StoreError::Redis(_)
            | StoreError::Fenced(_)
            | StoreError::Encryption => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_sqlite_is_retryable_and_constraint_is_not() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(StoreError::from(busy).is_retryable());
        let constraint = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
            None,
        );
        assert!(!StoreError::from(constraint).is_retryable());
        assert!(StoreError::Unavailable("x".into()).is_retryable());
        assert!(!StoreError::Encryption.is_retryable());
    }
}
