//! The message pipeline: one thread runs the message engines of every
//! session whose socket delivered stanzas (or whose callers queued sends),
//! then commits everything they produced in one store transaction — one
//! fsync for all of them — and hands each session its engine back with the
//! stanzas it may now write. Sessions never wait on each other's locks, no
//! thread is parked per session, and the work of a burst is one
//! transaction however many sessions it touched.
//!
//! Each session has at most one step in the pipeline (its actor awaits the
//! answer), so the queue is bounded by the number of sessions.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::warn;

use crate::store::SessionId;
use crate::wa::creds::Credentials;

use super::events::EventLog;
use super::messaging::{Core, Input, Output, StepFailure};

/// Steps taken from the queue for one transaction.
const MAX_STEPS_PER_COMMIT: usize = 512;

/// A session's engine and its input, and where to answer.
pub(super) struct Job {
    pub(super) core: Box<Core>,
    pub(super) input: Input,
    pub(super) creds: Arc<Credentials>,
    pub(super) id: SessionId,
    pub(super) now_ms: u64,
    pub(super) done: oneshot::Sender<(Box<Core>, Result<Output, StepFailure>)>,
}

/// The handle sessions submit steps through; the thread ends when the
/// last handle is dropped.
#[derive(Clone)]
pub(crate) struct Pipeline {
    jobs: mpsc::Sender<Job>,
}

impl Pipeline {
    /// Starts the thread. Should that fail, every submit hands its job
    /// back and sessions step on the blocking pool instead.
    pub(crate) fn start(log: EventLog) -> Self {
        let (jobs, queue) = mpsc::channel();
        if let Err(e) = std::thread::Builder::new()
            .name("wagate-messages".into())
            .spawn(move || run(&queue, &log))
        {
            warn!("cannot start the message pipeline thread: {e}");
        }
        Self { jobs }
    }

    /// Queues a step; the job comes back if the pipeline has stopped.
    pub(super) fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        self.jobs.send(job).map_err(|e| Box::new(e.0))
    }
}

fn run(queue: &mpsc::Receiver<Job>, log: &EventLog) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_STEPS_PER_COMMIT {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A panic loses the steps of this round (their sessions see their
        // answer channel close and start over from the store); the
        // pipeline goes on.
        if std::panic::catch_unwind(AssertUnwindSafe(|| round(jobs, log))).is_err() {
            warn!("a message pipeline round failed; its sessions reconnect");
        }
    }
}

/// The engines' parts, one commit for all, then the answers.
fn round(jobs: Vec<Job>, log: &EventLog) {
    let mut staged = Vec::with_capacity(jobs.len());
    let mut commits = Vec::new();
    for job in jobs {
        let Job {
            mut core,
            input,
            creds,
            id,
            now_ms,
            done,
        } = job;
        let _span = tracing::info_span!("session", id = %id).entered();
        match core.prepare(input, &creds, log, &id, now_ms) {
            Ok(mut prepared) => {
                let slot = prepared.commit.take().map(|(batch, events)| {
                    commits.push((id.clone(), batch, events, now_ms));
                    commits.len() - 1
                });
                staged.push((core, prepared, slot, done));
            }
            Err(e) => {
                core.abandon(&e);
                let _ = done.send((core, Err(e)));
            }
        }
    }
    let mut results: Vec<_> = log
        .commit_many_blocking(commits)
        .into_iter()
        .map(Some)
        .collect();
    for (mut core, prepared, slot, done) in staged {
        let committed = slot.and_then(|i| results.get_mut(i).and_then(Option::take));
        let output = core.finish(prepared, committed);
        let _ = done.send((core, output));
    }
}
