//! The simulator's state on disk, for a simulator given a data dir: one
//! snapshot file holding the server keys, every account with its virtual
//! phone (Signal keys, sessions, sender keys, inbox) and companion devices
//! (bundles, uploaded prekeys), the groups, and each device's queue of
//! unacknowledged stanzas. Written whole — temporary file, fsync, rename,
//! fsync of the directory — when the state changed (checked on a timer) and
//! at shutdown; read once at start. A crash loses at most the last interval.
//!
//! The format is protobuf (prost) after an 8-byte header (magic and format
//! version); decoding checks every key length and id and never panics.
//!
//! Secrets are stored in plain (in a file only its owner may read): the
//! virtual phones' private keys and Signal sessions are throwaway keys of a
//! test server, so the gateway's at-rest encryption does not apply here;
//! protect the data dir as a sandbox's, not as a production store.
//!
//! Not kept: live connections and fault delays, presence (availability,
//! subscriptions, read-receipt privacy), the message ids the server
//! accepted recently (a send retried across a restart is routed again),
//! phones' retry counters and statistics (key distributions, group message
//! sizes). Imports `wa` only.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Inner;
use crate::wa::crypto::KeyPair;

/// The snapshot's name inside the data dir.
pub(crate) const FILE_NAME: &str = "state.pb";
/// `wagate-sim` state, format version 1.
const HEADER: &[u8; 8] = b"WGSIM\x00\x00\x01";
/// Shortest time between two checks for changes.
const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// A check may take at most this share of the time (a large state is
/// checked less often): interval ≥ this many times the last check.
const INTERVAL_FACTOR: u32 = 20;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the simulator state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the simulator state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the simulator state {path} is unreadable ({reason}); move it away to start afresh")]
    Corrupt { path: PathBuf, reason: InvalidState },
}

/// What is wrong with a snapshot's content.
#[derive(Debug, thiserror::Error)]
pub enum InvalidState {
    #[error("not a simulator state file")]
    Header,
    #[error("format version {0}, this build reads version {v}", v = HEADER[7])]
    Version(u8),
    #[error("protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("{0}")]
    Field(String),
}

impl InvalidState {
    pub(crate) fn field(what: impl std::fmt::Display) -> Self {
        Self::Field(what.to_string())
    }
}

/// A 32-byte key from a snapshot field.
pub(crate) fn key32(bytes: &[u8], what: &str) -> Result<[u8; 32], InvalidState> {
    bytes
        .try_into()
        .map_err(|_| InvalidState::field(format_args!("{what}: {} bytes, not 32", bytes.len())))
}

/// A key pair from its saved private half.
pub(crate) fn key_pair(private: &[u8], what: &str) -> Result<KeyPair, InvalidState> {
    Ok(KeyPair::from_private(key32(private, what)?))
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Snapshot {
    #[prost(message, optional, tag = "1")]
    pub(crate) keys: Option<SavedKeys>,
    /// How many times the simulator started on this state before.
    #[prost(uint64, tag = "2")]
    pub(crate) starts: u64,
    #[prost(message, repeated, tag = "3")]
    pub(crate) accounts: Vec<SavedAccount>,
    #[prost(message, repeated, tag = "4")]
    pub(crate) groups: Vec<SavedGroup>,
    /// Invite codes replaced by a revoke, oldest first.
    #[prost(string, repeated, tag = "5")]
    pub(crate) revoked_invites: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    pub(crate) mailboxes: Vec<SavedMailbox>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedKeys {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) root_private: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) static_private: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) cert_chain: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedAccount {
    #[prost(string, tag = "1")]
    pub(crate) phone: String,
    #[prost(string, tag = "2")]
    pub(crate) push_name: String,
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) identity_private: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub(crate) raw_id: u32,
    #[prost(uint64, tag = "5")]
    pub(crate) created: u64,
    #[prost(uint32, tag = "6")]
    pub(crate) next_device: u32,
    #[prost(uint32, tag = "7")]
    pub(crate) next_key_index: u32,
    #[prost(message, repeated, tag = "8")]
    pub(crate) devices: Vec<SavedDevice>,
    #[prost(message, optional, tag = "9")]
    pub(crate) handset: Option<SavedPhone>,
    /// The account's LID user; empty in snapshots written before accounts
    /// had LIDs (the account then gets the one it would have been given).
    #[prost(string, tag = "10")]
    pub(crate) lid: String,
    /// The LID is kept from others (`HideLid`).
    #[prost(bool, tag = "11")]
    pub(crate) lid_hidden: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedDevice {
    #[prost(uint32, tag = "1")]
    pub(crate) id: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) noise_key: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub(crate) registration_id: u32,
    #[prost(bytes = "vec", tag = "4")]
    pub(crate) identity: Vec<u8>,
    /// Public key and signature (the companion keeps the private half).
    #[prost(message, optional, tag = "5")]
    pub(crate) signed_prekey: Option<SavedSignedPreKey>,
    #[prost(string, tag = "6")]
    pub(crate) platform: String,
    #[prost(uint32, tag = "7")]
    pub(crate) key_index: u32,
    #[prost(bytes = "vec", tag = "8")]
    pub(crate) signed_identity: Vec<u8>,
    /// Public one-time prekeys.
    #[prost(message, repeated, tag = "9")]
    pub(crate) prekeys: Vec<SavedPreKey>,
}

/// A signed prekey: the public key of a companion's, the private key of a
/// phone's.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedSignedPreKey {
    #[prost(uint32, tag = "1")]
    pub(crate) id: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) signature: Vec<u8>,
}

/// A one-time prekey: public for a companion's, private for a phone's.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedPreKey {
    #[prost(uint32, tag = "1")]
    pub(crate) id: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) key: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedPhone {
    #[prost(uint32, tag = "1")]
    pub(crate) registration_id: u32,
    #[prost(message, optional, tag = "2")]
    pub(crate) signed_prekey: Option<SavedSignedPreKey>,
    #[prost(message, repeated, tag = "3")]
    pub(crate) prekeys: Vec<SavedPreKey>,
    #[prost(uint32, repeated, tag = "4")]
    pub(crate) unclaimed: Vec<u32>,
    #[prost(message, repeated, tag = "5")]
    pub(crate) sessions: Vec<SavedSession>,
    #[prost(message, repeated, tag = "6")]
    pub(crate) inbox: Vec<SavedInbox>,
    #[prost(message, repeated, tag = "7")]
    pub(crate) own_sender_keys: Vec<SavedOwnSenderKey>,
    #[prost(message, repeated, tag = "8")]
    pub(crate) received_sender_keys: Vec<SavedSenderKey>,
    #[prost(message, optional, tag = "9")]
    pub(crate) app_state_key: Option<SavedAppStateKey>,
    #[prost(message, repeated, tag = "10")]
    pub(crate) app_state: Vec<SavedCollection>,
    /// Polls it sent or received, oldest first.
    #[prost(message, repeated, tag = "11")]
    pub(crate) polls: Vec<SavedPoll>,
}

/// A poll a phone knows: its secret, creator and options.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedPoll {
    #[prost(string, tag = "1")]
    pub(crate) id: String,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) secret: Vec<u8>,
    #[prost(string, tag = "3")]
    pub(crate) creator: String,
    #[prost(string, repeated, tag = "4")]
    pub(crate) options: Vec<String>,
}

/// A location, cards or poll an inbox entry shows (its `Message`, no
/// secret), or a vote (the poll, and the options or why none).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedInboxContent {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) message: Vec<u8>,
    #[prost(string, tag = "2")]
    pub(crate) vote_poll: String,
    #[prost(string, repeated, tag = "3")]
    pub(crate) vote_options: Vec<String>,
    #[prost(string, optional, tag = "4")]
    pub(crate) vote_error: Option<String>,
}

/// An app-state collection a phone keeps: its state (a `CollectionRecord`)
/// and every patch (`SyncdPatch`), as first encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedCollection {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) state: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub(crate) patches: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedSession {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(uint32, tag = "2")]
    pub(crate) device: u32,
    /// `SessionRecord::serialize`.
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) record: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedInbox {
    #[prost(string, tag = "1")]
    pub(crate) from: String,
    #[prost(string, tag = "2")]
    pub(crate) chat: String,
    #[prost(string, tag = "3")]
    pub(crate) id: String,
    #[prost(string, tag = "4")]
    pub(crate) text: String,
    #[prost(uint64, tag = "5")]
    pub(crate) timestamp: u64,
    #[prost(message, optional, tag = "6")]
    pub(crate) media: Option<SavedInboxMedia>,
    #[prost(message, optional, tag = "7")]
    pub(crate) content: Option<SavedInboxContent>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedInboxMedia {
    /// `MediaType` by its `<enc mediatype>` name.
    #[prost(string, tag = "1")]
    pub(crate) kind: String,
    #[prost(string, tag = "2")]
    pub(crate) mimetype: String,
    #[prost(string, optional, tag = "3")]
    pub(crate) caption: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub(crate) file_name: Option<String>,
    #[prost(uint64, tag = "5")]
    pub(crate) file_length: u64,
    /// Why the media did not check out; unset when it did.
    #[prost(string, optional, tag = "6")]
    pub(crate) error: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedOwnSenderKey {
    #[prost(string, tag = "1")]
    pub(crate) group: String,
    /// `SenderKeyRecord::serialize`.
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) record: Vec<u8>,
    /// Device JIDs holding the key.
    #[prost(string, repeated, tag = "3")]
    pub(crate) shared_with: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedSenderKey {
    #[prost(string, tag = "1")]
    pub(crate) group_id: String,
    #[prost(string, tag = "2")]
    pub(crate) name: String,
    #[prost(uint32, tag = "3")]
    pub(crate) device: u32,
    #[prost(bytes = "vec", tag = "4")]
    pub(crate) record: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedAppStateKey {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) data: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub(crate) raw_id: u32,
    #[prost(int64, tag = "4")]
    pub(crate) timestamp_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedGroup {
    #[prost(string, tag = "1")]
    pub(crate) id: String,
    #[prost(string, tag = "2")]
    pub(crate) subject: String,
    #[prost(string, tag = "3")]
    pub(crate) subject_owner: String,
    #[prost(uint64, tag = "4")]
    pub(crate) subject_time: u64,
    #[prost(message, optional, tag = "5")]
    pub(crate) description: Option<SavedDescription>,
    #[prost(uint64, tag = "6")]
    pub(crate) creation: u64,
    #[prost(string, tag = "7")]
    pub(crate) creator: String,
    #[prost(message, repeated, tag = "8")]
    pub(crate) participants: Vec<SavedParticipant>,
    #[prost(string, tag = "9")]
    pub(crate) invite: String,
    /// Members named by LID (false in snapshots written before LIDs).
    #[prost(bool, tag = "10")]
    pub(crate) lid_addressed: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedDescription {
    #[prost(string, tag = "1")]
    pub(crate) id: String,
    #[prost(string, tag = "2")]
    pub(crate) body: String,
    #[prost(string, tag = "3")]
    pub(crate) setter: String,
    #[prost(uint64, tag = "4")]
    pub(crate) t: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedParticipant {
    #[prost(string, tag = "1")]
    pub(crate) user: String,
    /// 0 member, 1 admin, 2 super admin (the creator).
    #[prost(uint32, tag = "2")]
    pub(crate) role: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedMailbox {
    #[prost(string, tag = "1")]
    pub(crate) device: String,
    #[prost(message, repeated, tag = "2")]
    pub(crate) queue: Vec<SavedQueued>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SavedQueued {
    /// 0 message, 1 receipt, 2 notification.
    #[prost(uint32, tag = "1")]
    pub(crate) class: u32,
    #[prost(string, tag = "2")]
    pub(crate) id: String,
    /// The stanza, binary-node encoded.
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) node: Vec<u8>,
}

/// The header and the encoded snapshot.
pub(crate) fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER.len() + snapshot.encoded_len());
    out.extend_from_slice(HEADER);
    snapshot.encode_raw(&mut out);
    out
}

/// A snapshot from a file's bytes.
pub(crate) fn decode(bytes: &[u8]) -> Result<Snapshot, InvalidState> {
    let (header, body) = bytes
        .split_at_checked(HEADER.len())
        .ok_or(InvalidState::Header)?;
    if header[..7] != HEADER[..7] {
        return Err(InvalidState::Header);
    }
    if header[7] != HEADER[7] {
        return Err(InvalidState::Version(header[7]));
    }
    Ok(Snapshot::decode(body)?)
}

/// The snapshot in `dir`, or `None` when there is none yet.
pub(crate) fn read(dir: &Path) -> Result<Option<Snapshot>, StateError> {
    let path = dir.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|reason| StateError::Corrupt { path, reason })
}

/// Replaces the snapshot in `dir` with `bytes`: a crash leaves either the
/// old file or the new one, never a mix.
fn write_atomically(dir: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let written = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        // Readable by the owner only: it holds the phones' private keys.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    })();
    written.map_err(|source| StateError::Write { path, source })
}

/// Where the state is kept and what was last written there.
pub(crate) struct Persistence {
    dir: PathBuf,
    /// Start count written into every snapshot.
    starts: u64,
    /// SHA-256 of the last snapshot written; a save with the same content
    /// writes nothing. Also serializes writers.
    last: Mutex<Option<[u8; 32]>>,
}

impl Persistence {
    pub(crate) fn new(dir: PathBuf, starts: u64) -> Self {
        Self {
            dir,
            starts,
            last: Mutex::new(None),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Captures the state and writes it if it changed. Blocking: call from
    /// a blocking thread.
    pub(crate) fn save(&self, inner: &Inner) -> Result<(), StateError> {
        let snapshot = inner.snapshot(self.starts);
        let bytes = encode(&snapshot);
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let mut last = super::lock(&self.last);
        if *last == Some(digest) {
            return Ok(());
        }
        write_atomically(&self.dir, &bytes)?;
        *last = Some(digest);
        Ok(())
    }
}

/// Saves `inner`'s state on a blocking thread.
pub(crate) async fn save(inner: &Arc<Inner>) -> Result<(), StateError> {
    let inner = Arc::clone(inner);
    let saved = tokio::task::spawn_blocking(move || match &inner.persistence {
        Some(persistence) => persistence.save(&inner),
        None => Ok(()),
    })
    .await;
    // The closure does not panic; a cancelled runtime only means no save.
    saved.unwrap_or(Ok(()))
}

/// Saves the state whenever it changed until the simulator shuts down
/// (the final save is the shutdown's).
pub(crate) async fn keep_saved(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = MIN_INTERVAL;
    // A full disk fails every round.
    let mut streak = crate::streak::FailureStreak::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let started = Instant::now();
        match save(&inner).await {
            Ok(()) => {
                if let Some(failures) = streak.recovered() {
                    info!(failures, "simulator state saved again");
                }
            }
            Err(err) => {
                if streak.failed() {
                    warn!(%err, "simulator state not saved (repeats are not logged until a save works)");
                } else {
                    debug!(%err, "simulator state not saved");
                }
            }
        }
        interval = MIN_INTERVAL.max(started.elapsed() * INTERVAL_FACTOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let good = encode(&Snapshot {
            starts: 3,
            ..Snapshot::default()
        });
        assert_eq!(decode(&good).expect("decodes").starts, 3);
        assert!(matches!(decode(b""), Err(InvalidState::Header)));
        assert!(matches!(decode(b"WGSIM"), Err(InvalidState::Header)));
        assert!(matches!(
            decode(b"not a snapshot"),
            Err(InvalidState::Header)
        ));
        let mut newer = good.clone();
        newer[7] = 9;
        assert!(matches!(decode(&newer), Err(InvalidState::Version(9))));
        let mut truncated = encode(&Snapshot {
            accounts: vec![SavedAccount {
                phone: "15550001111".into(),
                ..SavedAccount::default()
            }],
            ..Snapshot::default()
        });
        truncated.truncate(truncated.len() - 3);
        assert!(matches!(decode(&truncated), Err(InvalidState::Decode(_))));
        assert!(key32(&[0; 31], "root").is_err());
        assert!(key32(&[0; 32], "root").is_ok());
    }

    #[test]
    fn files_are_replaced_whole_and_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(read(dir.path()).expect("no file is fine").is_none());
        let snapshot = Snapshot {
            starts: 1,
            revoked_invites: vec!["abc".into()],
            ..Snapshot::default()
        };
        write_atomically(dir.path(), &encode(&snapshot)).expect("written");
        assert_eq!(read(dir.path()).expect("read"), Some(snapshot));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(FILE_NAME))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "owner only");
        }
        assert!(!dir.path().join(format!("{FILE_NAME}.tmp")).exists());
        fs::write(dir.path().join(FILE_NAME), b"WGSIM\x00\x00\x01\xff\xff").expect("written");
        let err = read(dir.path()).expect_err("corrupt");
        assert!(matches!(err, StateError::Corrupt { .. }));
        assert!(err.to_string().contains(FILE_NAME), "{err}");
    }
}
