//! What the shim itself must remember across restarts, in one JSON file in
//! the data dir: per-session settings the gateways document but wagate does
//! not hold (webhook URLs and filters, user ids, deletions) and the webhook
//! delivery progress (cursors). One writer task saves it atomically (temp
//! file, fsync, rename); settings changes wait until they are on disk before
//! the request is answered, delivery progress is saved as it goes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

const FILE: &str = "state.json";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("state file {0} is not readable JSON ({1}); move it away to start afresh")]
    Corrupt(PathBuf, serde_json::Error),
    #[error("state file {0} has format {1}, this version reads {FORMAT}")]
    Format(PathBuf, u32),
    #[error("the state could not be saved in time")]
    NotSaved,
}

/// Settings of one session, as the REST clients gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionSettings {
    /// Venom `userId`.
    pub user_id: Option<String>,
    /// Venom `webhookUrl`: its webhooks go here.
    pub webhook_url: Option<String>,
    /// Venom `phoneNumber`, kept as given.
    pub phone_number: Option<String>,
    /// QR Service `chatbotId`.
    pub chatbot_id: Option<String>,
    /// whatsapp-web.js production variant per-session webhook.
    pub hook: Option<SessionHook>,
    /// Deleted through a REST endpoint: hidden until created again.
    pub deleted: bool,
    /// When the session was created again after a delete (unix ms): what
    /// the gateway still reports from before (identity, creation time,
    /// disconnect reason) is not shown as this session's.
    pub recreated_ms: Option<i64>,
}

/// `POST /api/:sessionId/webhook` of the whatsapp-web.js production variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHook {
    pub url: String,
    /// `message-received`, `message-delivered`, `message-from-me`, `all`.
    pub events: Vec<String>,
}

/// Webhook delivery progress of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Progress {
    /// Cursor of the last event of this session whose webhooks are done.
    pub delivered: u64,
    /// Cursor of the last event of this session read from the gateway.
    pub seen: u64,
    /// Cursor of the last message event of this session read.
    pub last_message: u64,
    /// Time of the last event of this session (unix ms).
    pub last_activity_ms: i64,
    /// A Venom `qr_ready` connection update was sent since the last
    /// connection change (one per pairing, not one per QR rotation).
    pub qr_announced: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Persisted {
    format: u32,
    /// whatsapp-web.js `POST /webhook/config`, overriding `--webhook-url`.
    global_webhook: Option<String>,
    sessions: BTreeMap<String, SessionSettings>,
    /// Position of the shim's reader in the gateway's event log; 0 = never read.
    cursor: u64,
    progress: BTreeMap<String, Progress>,
}

/// The shim's state, shared by the handlers and the webhook dispatcher.
pub struct Store {
    path: PathBuf,
    inner: Mutex<Persisted>,
    /// Version of the in-memory state, bumped on every change.
    changed: watch::Sender<u64>,
    /// Last version written to disk.
    saved: watch::Sender<u64>,
}

impl Store {
    /// Reads `DIR/state.json` (or starts empty) and starts its writer.
    pub fn open(dir: &Path) -> Result<Arc<Store>, StateError> {
        std::fs::create_dir_all(dir).map_err(|e| StateError::Io(dir.to_path_buf(), e))?;
        let path = dir.join(FILE);
        let persisted = match std::fs::read(&path) {
            Ok(bytes) => {
                let p: Persisted = serde_json::from_slice(&bytes)
                    .map_err(|e| StateError::Corrupt(path.clone(), e))?;
                if p.format != FORMAT {
                    return Err(StateError::Format(path, p.format));
                }
                p
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted {
                format: FORMAT,
                ..Persisted::default()
            },
            Err(e) => return Err(StateError::Io(path, e)),
        };
        let store = Arc::new(Store {
            path,
            inner: Mutex::new(persisted),
            changed: watch::channel(0).0,
            saved: watch::channel(0).0,
        });
        tokio::spawn(writer(Arc::downgrade(&store), store.changed.subscribe()));
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Persisted> {
        // Every change is a plain field update: a panic cannot leave it torn.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) -> u64 {
        let mut version = 0;
        self.changed.send_modify(|v| {
            *v += 1;
            version = *v;
        });
        version
    }

    /// Waits until version `v` is on disk.
    async fn saved(&self, v: u64) -> Result<(), StateError> {
        let mut saved = self.saved.subscribe();
        let waited =
            tokio::time::timeout(Duration::from_secs(10), saved.wait_for(|s| *s >= v)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StateError::NotSaved),
        }
    }

    /// Waits until everything changed so far is on disk.
    pub async fn flush(&self) -> Result<(), StateError> {
        let v = *self.changed.borrow();
        self.saved(v).await
    }

    pub fn settings(&self, session: &str) -> Option<SessionSettings> {
        self.lock().sessions.get(session).cloned()
    }

    pub fn is_deleted(&self, session: &str) -> bool {
        self.lock().sessions.get(session).is_some_and(|s| s.deleted)
    }

    /// Changes one session's settings and returns once they are on disk.
    pub async fn update_settings(
        &self,
        session: &str,
        change: impl FnOnce(&mut SessionSettings),
    ) -> Result<(), StateError> {
        {
            let mut inner = self.lock();
            change(inner.sessions.entry(session.to_owned()).or_default());
        }
        let v = self.bump();
        self.saved(v).await
    }

    pub fn global_webhook(&self) -> Option<String> {
        self.lock().global_webhook.clone()
    }

    pub async fn set_global_webhook(&self, url: Option<String>) -> Result<(), StateError> {
        self.lock().global_webhook = url;
        let v = self.bump();
        self.saved(v).await
    }

    /// The reader's position, `None` if it never read.
    pub fn cursor(&self) -> Option<u64> {
        Some(self.lock().cursor).filter(|c| *c > 0)
    }

    pub fn progress(&self, session: &str) -> Option<Progress> {
        self.lock().progress.get(session).copied()
    }

    pub fn all_progress(&self) -> Vec<(String, Progress)> {
        self.lock()
            .progress
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The reader read event `cursor` of `session`: `first` is true when the
    /// session is new to the shim (nothing before it is owed).
    pub fn record_seen(&self, session: &str, cursor: u64, at_ms: i64, message: bool) {
        {
            let mut inner = self.lock();
            let p = inner
                .progress
                .entry(session.to_owned())
                .or_insert(Progress {
                    delivered: cursor.saturating_sub(1),
                    ..Progress::default()
                });
            p.seen = p.seen.max(cursor);
            p.last_activity_ms = p.last_activity_ms.max(at_ms);
            if message {
                p.last_message = p.last_message.max(cursor);
            }
            inner.cursor = inner.cursor.max(cursor);
        }
        self.bump();
    }

    /// The webhooks of event `cursor` of `session` are done.
    pub fn record_delivered(&self, session: &str, cursor: u64, qr_announced: bool) {
        {
            let mut inner = self.lock();
            let p = inner.progress.entry(session.to_owned()).or_default();
            p.delivered = p.delivered.max(cursor);
            p.qr_announced = qr_announced;
        }
        self.bump();
    }

    /// Forgets the session's activity time (it was deleted and created
    /// again); delivery cursors stay, so nothing is delivered twice.
    pub fn forget_activity(&self, session: &str) {
        if let Some(p) = self.lock().progress.get_mut(session) {
            p.last_activity_ms = 0;
            p.qr_announced = false;
        }
        self.bump();
    }

    /// Forgets all delivery progress (the gateway's log was reset).
    pub fn reset_delivery(&self) {
        {
            let mut inner = self.lock();
            inner.cursor = 0;
            inner.progress.clear();
        }
        self.bump();
    }

    fn snapshot(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&*self.lock())
    }
}

/// Saves every new version; exits when the store is dropped.
async fn writer(store: std::sync::Weak<Store>, mut changed: watch::Receiver<u64>) {
    loop {
        if changed.changed().await.is_err() {
            return;
        }
        let Some(s) = store.upgrade() else { return };
        let version = *changed.borrow_and_update();
        let result = match s.snapshot() {
            Ok(bytes) => {
                let path = s.path.clone();
                tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            }
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        match result {
            Ok(()) => {
                s.saved.send_modify(|v| *v = (*v).max(version));
            }
            Err(e) => {
                tracing::error!(path = %s.path.display(), "cannot save the shim's state: {e}");
                // Try again with whatever changed meanwhile.
                drop(s);
                tokio::time::sleep(Duration::from_millis(500)).await;
                changed.mark_changed();
            }
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Makes the rename itself durable; not every platform can open a dir.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            store
                .update_settings("s1", |s| s.webhook_url = Some("http://h/x".into()))
                .await
                .expect("saved");
            store.record_seen("s1", 7, 1000, true);
            store.record_delivered("s1", 7, true);
            store.flush().await.expect("flushed");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            store.settings("s1").and_then(|s| s.webhook_url).as_deref(),
            Some("http://h/x")
        );
        assert_eq!(store.cursor(), Some(7));
        let p = store.progress("s1").expect("progress");
        assert_eq!((p.delivered, p.seen, p.last_message), (7, 7, 7));
        assert!(p.qr_announced);
    }

    #[tokio::test]
    async fn a_new_session_owes_nothing_before_its_first_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.record_seen("s", 40, 0, false);
        assert_eq!(store.progress("s").expect("p").delivered, 39);
    }

    #[tokio::test]
    async fn corrupt_state_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), b"{not json").expect("write");
        assert!(matches!(
            Store::open(dir.path()),
            Err(StateError::Corrupt(..))
        ));
    }
}
