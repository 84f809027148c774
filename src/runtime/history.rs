//! History sync in the gateway: a chunk the account's phone announced is
//! downloaded from the media hosts (verified before use), inflated with a
//! cap, read a conversation at a time and committed to the event log page
//! by page, each page with the chunk's progress; the notification's
//! receipt goes out only after the last page is committed (DESIGN §8). One
//! chunk at a time per session, so at most one chunk's inflated bytes and
//! one page are held.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::SessionId;
use crate::wa::binary::Node;
use crate::wa::creds::Credentials;
use crate::wa::history::{HistoryError, Inflater, PageReader};
use crate::wa::media::{Expected, MediaConn, MediaKeys, MediaType};
use crate::wa::messaging::{DedupeKey, HistoryJob, SendError};

use super::config::Shared;
use super::events::EventLog;
use super::key_records::history_batch;
use super::media::{stream_plaintext, Download, MediaFailure};
use super::{now_ms, payloads};

/// Plaintext chunks buffered between the file reader and the inflater.
const PLAINTEXT_QUEUE: usize = 4;

/// Why a chunk's pages are not all committed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HistoryFailure {
    /// Worth another try (media hosts, store, connection): the chunk stays
    /// pending and its notification unreceipted, so the server delivers it
    /// again on the next connection and the chunk resumes.
    #[error("history chunk left for later: {0}")]
    Retry(String),
}

/// What the chunk's bytes turned out to be, when they are not a history.
enum Unreadable {
    Download(String),
    Content(HistoryError),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::Download(e) => write!(f, "cannot download the history chunk: {e}"),
            Unreadable::Content(e) => e.fmt(f),
        }
    }
}

/// The chunks of one connection: queued in the order they came, fetched
/// one at a time.
#[derive(Default)]
pub(crate) struct HistoryQueue {
    waiting: VecDeque<HistoryJob>,
    running: Option<(DedupeKey, JoinHandle<Result<Node, HistoryFailure>>)>,
}

impl HistoryQueue {
    /// Adds chunks (a chunk already queued or running is not added again).
    pub(crate) fn extend(&mut self, jobs: Vec<HistoryJob>) {
        for job in jobs {
            let running = self.running.as_ref().is_some_and(|(k, _)| *k == job.key);
            if !running && !self.waiting.iter().any(|j| j.key == job.key) {
                self.waiting.push_back(job);
            }
        }
    }

    /// The next chunk to start, when none runs.
    pub(crate) fn next_job(&mut self) -> Option<HistoryJob> {
        if self.running.is_some() {
            return None;
        }
        self.waiting.pop_front()
    }

    pub(crate) fn start(
        &mut self,
        job: HistoryJob,
        conn: oneshot::Receiver<Result<MediaConn, SendError>>,
        ctx: HistoryContext,
    ) {
        let key = job.key.clone();
        self.running = Some((key, tokio::spawn(fetch(job, conn, ctx))));
    }

    /// The running chunk's outcome: its receipt once committed.
    pub(crate) async fn finished(&mut self) -> Result<Node, HistoryFailure> {
        let Some((_, task)) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let result = task.await;
        self.running = None;
        result.unwrap_or_else(|e| Err(HistoryFailure::Retry(format!("history task failed: {e}"))))
    }

    /// The connection ended: nothing more is fetched on it (what is not
    /// committed resumes when the server delivers the notification again).
    pub(crate) fn stop(&mut self) {
        if let Some((_, task)) = self.running.take() {
            task.abort();
        }
        self.waiting.clear();
    }
}

/// What a chunk's task needs besides the chunk.
pub(crate) struct HistoryContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) log: EventLog,
    pub(crate) id: SessionId,
    pub(crate) creds: Arc<Credentials>,
}

/// Downloads, reads and commits one chunk; the receipt to send.
async fn fetch(
    job: HistoryJob,
    conn: oneshot::Receiver<Result<MediaConn, SendError>>,
    ctx: HistoryContext,
) -> Result<Node, HistoryFailure> {
    let conn = conn
        .await
        .map_err(|_| HistoryFailure::Retry("the connection closed".into()))?
        .map_err(|e| HistoryFailure::Retry(format!("no media hosts: {e}")))?;
    let mut pages = job.pages_done;
    if pages > 0 {
        tracing::info!(session = %ctx.id, chunk = job.notice.chunk_order, pages, "resuming a history chunk");
    }
    let outcome = match download_and_inflate(&job, &conn, &ctx).await? {
        Ok(inflated) => commit_pages(&job, &inflated, &ctx, &mut pages).await?,
        Err(unreadable) => Err(unreadable),
    };
    if let Err(unreadable) = outcome {
        tracing::warn!(session = %ctx.id, chunk = job.notice.chunk_order, "history chunk unreadable: {unreadable}");
        let event = payloads::history_failed(&job.notice, pages, unreadable.to_string());
        commit(&ctx, &job, vec![event], pages + 1, true).await?;
    }
    Ok(job.receipt)
}

/// The chunk's inflated bytes; `Ok(Err(_))` when the bytes are not a
/// usable chunk (reported, never retried).
async fn download_and_inflate(
    job: &HistoryJob,
    conn: &MediaConn,
    ctx: &HistoryContext,
) -> Result<Result<Vec<u8>, Unreadable>, HistoryFailure> {
    let media = &ctx.shared.media;
    let notice = &job.notice;
    let keys = MediaKeys::derive(&notice.media_key, MediaType::History);
    let expected = Expected {
        file_enc_sha256: None,
        file_sha256: Some(notice.file_sha256),
        file_length: Some(notice.file_length),
        max_file_length: Some(media.settings.max_bytes),
    };
    let (file, _) = match media
        .download(conn, &notice.direct_path, &keys, &expected)
        .await
    {
        Ok(done) => done,
        Err(Download::Gone) => {
            return Ok(Err(Unreadable::Download(
                "the media hosts no longer have it".into(),
            )))
        }
        Err(Download::Corrupt(e)) => return Ok(Err(Unreadable::Download(e.to_string()))),
        Err(Download::Failed(e @ (MediaFailure::TooLarge { .. } | MediaFailure::DataLoss(_)))) => {
            return Ok(Err(Unreadable::Download(e.to_string())))
        }
        Err(Download::Failed(e)) => return Err(HistoryFailure::Retry(e.to_string())),
    };
    let (tx, mut rx) = mpsc::channel(PLAINTEXT_QUEUE);
    let reader = tokio::spawn(stream_plaintext(file, keys, expected, tx));
    let mut inflater = Inflater::new(ctx.shared.config.history.max_inflated_bytes);
    let mut failed = None;
    while let Some(chunk) = rx.recv().await {
        match chunk {
            Ok(plain) => {
                if let Err(e) = inflater.update(&plain) {
                    failed = Some(Ok(Err(Unreadable::Content(e))));
                    break;
                }
            }
            Err(e) => {
                failed = Some(Err(HistoryFailure::Retry(format!(
                    "reading the downloaded chunk: {e}"
                ))));
                break;
            }
        }
    }
    // Dropping the receiver ends the reader at its next chunk.
    drop(rx);
    let _ = reader.await;
    if let Some(failed) = failed {
        return failed;
    }
    Ok(inflater.finish().map_err(Unreadable::Content))
}

/// Commits the chunk's pages after the `pages` already committed;
/// `Ok(Err(_))` when the chunk's content breaks off (the pages before
/// stay, the error is reported after them).
async fn commit_pages(
    job: &HistoryJob,
    inflated: &[u8],
    ctx: &HistoryContext,
    pages: &mut u32,
) -> Result<Result<(), Unreadable>, HistoryFailure> {
    let mut reader = match PageReader::new(inflated) {
        Ok(reader) => reader,
        Err(e) => return Ok(Err(Unreadable::Content(e))),
    };
    while let Some(page) = reader.next_page() {
        let page = match page {
            Ok(page) => page,
            Err(e) => return Ok(Err(Unreadable::Content(e))),
        };
        if page.index < *pages {
            continue;
        }
        let last = page.last;
        let index = page.index;
        commit(
            ctx,
            job,
            vec![payloads::history_page(page)],
            index + 1,
            last,
        )
        .await?;
        *pages = index + 1;
    }
    Ok(Ok(()))
}

/// Commits `events` with the chunk's progress: `pages` committed, or
/// (`complete`) nothing left.
async fn commit(
    ctx: &HistoryContext,
    job: &HistoryJob,
    events: Vec<crate::proto::gateway::event::Payload>,
    pages: u32,
    complete: bool,
) -> Result<(), HistoryFailure> {
    let batch = history_batch(&ctx.creds, &job.progress(pages, complete));
    ctx.log
        .commit(&ctx.id, batch, events, now_ms())
        .await
        .map(drop)
        .map_err(|e| HistoryFailure::Retry(format!("cannot commit a history page: {e}")))
}
