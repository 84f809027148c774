//! App-state snapshots in the gateway: a collection synced from its start
//! comes as a snapshot on the media hosts, fetched here (verified against
//! the reference's hashes and MAC as any media, capped) on a task of its
//! own, one at a time per session; the bytes (or why there are none) go
//! back to the message engine, which checks and applies them in a step.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::wa::media::{Expected, MediaConn, MediaKeys, MediaType, MEDIA_KEY_LEN};
use crate::wa::messaging::{SendError, SnapshotJob};

use super::config::Shared;
use super::media::{stream_plaintext, Download};

/// Largest snapshot read (its entries are small settings; WhatsApp's run
/// to kilobytes).
const MAX_SNAPSHOT_BYTES: u64 = 16 * 1024 * 1024;

/// A fetched snapshot's job and its bytes, or why there are none.
pub(crate) type Fetched = (SnapshotJob, Result<Vec<u8>, String>);

/// The snapshots of one connection, fetched one at a time.
#[derive(Default)]
pub(crate) struct SnapshotQueue {
    waiting: Vec<SnapshotJob>,
    running: Option<JoinHandle<Fetched>>,
}

impl SnapshotQueue {
    pub(crate) fn extend(&mut self, jobs: Vec<SnapshotJob>) {
        self.waiting.extend(jobs);
    }

    /// The next snapshot to fetch, when none is being fetched.
    pub(crate) fn next_job(&mut self) -> Option<SnapshotJob> {
        if self.running.is_some() || self.waiting.is_empty() {
            return None;
        }
        Some(self.waiting.remove(0))
    }

    pub(crate) fn start(
        &mut self,
        job: SnapshotJob,
        conn: oneshot::Receiver<Result<MediaConn, SendError>>,
        shared: Arc<Shared>,
    ) {
        self.running = Some(tokio::spawn(async move {
            let blob = fetch(&job, conn, &shared).await;
            (job, blob)
        }));
    }

    /// The running fetch's outcome: the job and its bytes, or why none.
    pub(crate) async fn finished(&mut self) -> Fetched {
        let Some(task) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let result = task.await;
        self.running = None;
        match result {
            Ok(done) => done,
            // A task that panicked or was aborted leaves no job to answer:
            // the engine learns of it when the connection ends.
            Err(e) => {
                tracing::warn!("app-state snapshot task failed: {e}");
                std::future::pending().await
            }
        }
    }

    /// The connection ended: the engine forgets its fetches with it.
    pub(crate) fn stop(&mut self) {
        if let Some(task) = self.running.take() {
            task.abort();
        }
        self.waiting.clear();
    }
}

/// Downloads and decrypts a snapshot blob, verified.
async fn fetch(
    job: &SnapshotJob,
    conn: oneshot::Receiver<Result<MediaConn, SendError>>,
    shared: &Shared,
) -> Result<Vec<u8>, String> {
    let conn = conn
        .await
        .map_err(|_| "the connection closed".to_owned())?
        .map_err(|e| format!("no media hosts: {e}"))?;
    let reference = &job.reference;
    let media_key: [u8; MEDIA_KEY_LEN] = reference
        .media_key
        .as_deref()
        .and_then(|k| k.try_into().ok())
        .ok_or("the reference has no usable media key")?;
    let digest = |d: Option<&Vec<u8>>| d.and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok());
    let direct_path = reference
        .direct_path
        .as_deref()
        .ok_or("the reference has no direct path")?;
    let keys = MediaKeys::derive(&media_key, MediaType::AppState);
    let expected = Expected {
        file_enc_sha256: digest(reference.file_enc_sha256.as_ref()),
        file_sha256: digest(reference.file_sha256.as_ref()),
        file_length: reference.file_size_bytes,
        max_file_length: Some(MAX_SNAPSHOT_BYTES.min(shared.media.settings.max_bytes)),
    };
    let (file, _) = shared
        .media
        .download(&conn, direct_path, &keys, &expected)
        .await
        .map_err(|e| match e {
            Download::Gone => "the media hosts no longer have it".to_owned(),
            Download::Corrupt(e) => e.to_string(),
            Download::Failed(e) => e.to_string(),
        })?;
    let (tx, mut rx) = mpsc::channel(4);
    let reader = tokio::spawn(stream_plaintext(file, keys, expected, tx));
    let mut plain = Vec::new();
    let mut failed = None;
    while let Some(chunk) = rx.recv().await {
        match chunk {
            Ok(bytes) => plain.extend_from_slice(&bytes),
            Err(e) => {
                failed = Some(format!("reading the snapshot: {e}"));
                break;
            }
        }
    }
    drop(rx);
    let _ = reader.await;
    match failed {
        Some(e) => Err(e),
        None => Ok(plain),
    }
}
