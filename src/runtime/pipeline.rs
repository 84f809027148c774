//! The message pipeline: one thread runs the message engines of every
//! session whose socket delivered stanzas (or whose callers queued sends),
//! then commits everything they produced in one store transaction — one
//! fsync for all of them — and hands each session its engine back with the
//! stanzas it may now write. Sessions never wait on each other's locks, no
//! thread is parked per session, and the work of a burst is one
//! transaction however many sessions it touched.
//!
//! Each session has at most one step in the pipeline (its actor awaits the
//! answer), so the queue is bounded by the number of sessions. The pipeline
//! knows steps only as [`Job`]s; the messenger implements them.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use tracing::warn;

use crate::proto::gateway::event::Payload;
use crate::store::{Batch, EventRecord, SessionId, StoreError};

use super::events::EventLog;

/// Steps taken from the queue for one transaction.
const MAX_STEPS_PER_COMMIT: usize = 512;

/// What a session's step must commit: its batch, events and time.
pub(super) type Commit = (SessionId, Batch, Vec<Payload>, u64);

/// One session's step. The pipeline calls `prepare`, commits what it
/// returns together with the other steps of the round, then calls
/// `finish` with the outcome (`None` when there was nothing to commit).
pub(super) trait Job: Send {
    fn prepare(&mut self, log: &EventLog) -> Option<Commit>;
    fn finish(self: Box<Self>, committed: Option<Result<Vec<EventRecord>, StoreError>>);
}

/// The handle sessions submit steps through; the thread ends when the
/// last handle is dropped.
#[derive(Clone)]
pub(crate) struct Pipeline {
    jobs: mpsc::Sender<Box<dyn Job>>,
    running: bool,
}

impl Pipeline {
    /// Starts the thread. Should that fail, sessions step on the blocking
    /// pool instead (see [`Pipeline::is_running`]).
    pub(crate) fn start(log: EventLog) -> Self {
        let (jobs, queue) = mpsc::channel();
        let started = std::thread::Builder::new()
            .name("wagate-messages".into())
            .spawn(move || run(&queue, &log));
        if let Err(e) = &started {
            warn!("cannot start the message pipeline thread: {e}");
        }
        Self {
            jobs,
            running: started.is_ok(),
        }
    }

    /// Whether steps can be submitted (the thread started).
    pub(super) fn is_running(&self) -> bool {
        self.running
    }

    /// Queues a step; the job comes back if the pipeline has stopped.
    pub(super) fn submit(&self, job: Box<dyn Job>) -> Result<(), Box<dyn Job>> {
        self.jobs.send(job).map_err(|e| e.0)
    }
}

fn run(queue: &mpsc::Receiver<Box<dyn Job>>, log: &EventLog) {
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
fn round(jobs: Vec<Box<dyn Job>>, log: &EventLog) {
    let mut staged = Vec::with_capacity(jobs.len());
    let mut commits = Vec::new();
    for mut job in jobs {
        let slot = job.prepare(log).map(|commit| {
            commits.push(commit);
            commits.len() - 1
        });
        staged.push((job, slot));
    }
    let mut results: Vec<_> = log
        .commit_many_blocking(commits)
        .into_iter()
        .map(Some)
        .collect();
    for (job, slot) in staged {
        job.finish(slot.and_then(|i| results.get_mut(i).and_then(Option::take)));
    }
}
