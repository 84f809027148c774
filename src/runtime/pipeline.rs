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
//!
//! A lane is two threads: one runs the engines of a round, the other
//! commits and answers. While a round waits for its fsync, the next round's
//! engines already run: they belong to other sessions (a session's next step
//! comes only after its answer), so nothing they read is being written.
//! Rounds that queue up behind a commit go into the next transaction
//! together.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use tracing::warn;

use crate::proto::gateway::event::Payload;
use crate::store::{Batch, EventRecord, SessionId, StoreError};

use super::events::{Counts, EventLog};

/// Steps taken from the queue for one transaction.
const MAX_STEPS_PER_COMMIT: usize = 512;

/// What a session's step must commit: its batch, events, time and the
/// messages it records.
pub(super) type Commit = (SessionId, Batch, Vec<Payload>, u64, Counts);

/// One session's step. The pipeline calls `prepare`, commits what it
/// returns together with the other steps of the round, then calls
/// `finish` with the outcome (`None` when there was nothing to commit).
pub(super) trait Job: Send {
    fn prepare(&mut self, log: &EventLog) -> Option<Commit>;
    fn finish(self: Box<Self>, committed: Option<Result<Vec<EventRecord>, StoreError>>);
}

/// The pipeline's lanes: each a thread of its own, a session always on the
/// same one. Lanes run engines in parallel; their commits still join the
/// store's group commit, so a busy moment stays one transaction per lane
/// round.
pub(crate) struct Pipeline {
    lanes: Vec<Lane>,
}

/// The handle a session submits its steps through; a lane's thread ends
/// when its last handle is dropped.
#[derive(Clone)]
pub(crate) struct Lane {
    jobs: mpsc::Sender<Box<dyn Job>>,
    running: bool,
}

impl Pipeline {
    /// Starts one lane per two cores (at most four). A lane whose thread cannot
    /// start makes its sessions step on the blocking pool instead (see
    /// [`Lane::is_running`]).
    pub(crate) fn start(log: &EventLog) -> Self {
        // Half the cores: the other half serve sockets, gRPC and streams
        // (measured on 2 cores: one lane gave more messages per core than two).
        let count = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).clamp(1, 4));
        let lanes = (0..count)
            .map(|n| {
                let (jobs, queue) = mpsc::channel();
                let log = log.clone();
                let name = format!("wagate-messages-{n}");
                let started = std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || run(&queue, &log, &name));
                if let Err(e) = &started {
                    warn!("cannot start a message pipeline thread: {e}");
                }
                Lane {
                    jobs,
                    running: started.is_ok(),
                }
            })
            .collect();
        Self { lanes }
    }

    /// The lane of session `id`.
    pub(crate) fn lane(&self, id: &SessionId) -> Lane {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        let n = usize::try_from(hasher.finish() % self.lanes.len().max(1) as u64).unwrap_or(0);
        match self.lanes.get(n) {
            Some(lane) => lane.clone(),
            None => {
                // No lanes at all: a closed one, so sessions use the pool.
                let (jobs, _) = mpsc::channel();
                Lane {
                    jobs,
                    running: false,
                }
            }
        }
    }
}

impl Lane {
    /// Whether steps can be submitted (the thread started).
    pub(super) fn is_running(&self) -> bool {
        self.running
    }

    /// Queues a step; the job comes back if the lane has stopped.
    pub(super) fn submit(&self, job: Box<dyn Job>) -> Result<(), Box<dyn Job>> {
        self.jobs.send(job).map_err(|e| e.0)
    }
}

/// A round whose engines have run: the steps and what they commit.
struct Prepared {
    staged: Vec<(Box<dyn Job>, Option<usize>)>,
    commits: Vec<Commit>,
}

fn run(queue: &mpsc::Receiver<Box<dyn Job>>, log: &EventLog, name: &str) {
    let (prepared, to_commit) = mpsc::channel::<Prepared>();
    let committer = {
        let log = log.clone();
        std::thread::Builder::new()
            .name(format!("{name}-commit"))
            .spawn(move || commit_rounds(&to_commit, &log))
    };
    if let Err(e) = &committer {
        warn!("cannot start a commit thread; rounds commit on the engine thread: {e}");
    }
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
        let Ok(round) = std::panic::catch_unwind(AssertUnwindSafe(|| prepare(jobs, log))) else {
            warn!("a message pipeline round failed; its sessions reconnect");
            continue;
        };
        if committer.is_ok() {
            if let Err(mpsc::SendError(round)) = prepared.send(round) {
                commit(vec![round], log);
            }
        } else {
            commit(vec![round], log);
        }
    }
    drop(prepared);
    if let Ok(committer) = committer {
        let _ = committer.join();
    }
}

/// The engines' parts of a round.
fn prepare(jobs: Vec<Box<dyn Job>>, log: &EventLog) -> Prepared {
    let mut staged = Vec::with_capacity(jobs.len());
    let mut commits = Vec::new();
    for mut job in jobs {
        let slot = job.prepare(log).map(|commit| {
            commits.push(commit);
            commits.len() - 1
        });
        staged.push((job, slot));
    }
    Prepared { staged, commits }
}

/// The commit thread of a lane: every round waiting, in one transaction.
fn commit_rounds(queue: &mpsc::Receiver<Prepared>, log: &EventLog) {
    while let Ok(first) = queue.recv() {
        let mut steps = first.staged.len();
        let mut rounds = vec![first];
        while steps < MAX_STEPS_PER_COMMIT {
            match queue.try_recv() {
                Ok(round) => {
                    steps += round.staged.len();
                    rounds.push(round);
                }
                Err(_) => break,
            }
        }
        if std::panic::catch_unwind(AssertUnwindSafe(|| commit(rounds, log))).is_err() {
            warn!("a message pipeline commit failed; its sessions reconnect");
        }
    }
}

/// One commit for the rounds, then the answers.
fn commit(rounds: Vec<Prepared>, log: &EventLog) {
    let mut commits = Vec::new();
    let mut staged = Vec::new();
    for round in rounds {
        let offset = commits.len();
        commits.extend(round.commits);
        staged.extend(
            round
                .staged
                .into_iter()
                .map(|(job, slot)| (job, slot.map(|i| i + offset))),
        );
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
