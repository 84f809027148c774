//! Bounded concurrency: `workers` tasks take job numbers from one counter
//! until `jobs` are done; the first error stops the others.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::error::LoadError;

/// Runs `job(0..jobs)` on `workers` concurrent tasks and returns every
/// result (in completion order, not job order).
pub(crate) async fn run<T, F, Fut>(jobs: usize, workers: usize, job: F) -> Result<Vec<T>, LoadError>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<T, LoadError>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..workers.clamp(1, jobs.max(1)) {
        let next = next.clone();
        let job = job.clone();
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return Ok::<_, LoadError>(out);
                }
                out.push(job(i).await?);
            }
        });
    }
    let mut all = Vec::with_capacity(jobs);
    while let Some(done) = set.join_next().await {
        // Dropping the set on `?` aborts the workers still running.
        all.extend(done??);
    }
    Ok(all)
}

/// The `p`-th percentile (0 < p ≤ 100) by nearest rank; `None` when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[tokio::test]
    async fn every_job_runs_once_and_errors_stop_the_run() {
        let mut done = run(50, 4, |i| async move { Ok(i) }).await.expect("run");
        done.sort_unstable();
        assert_eq!(done, (0..50).collect::<Vec<_>>());
        let failed = run(50, 4, |i| async move {
            if i == 7 {
                Err(LoadError::Setup("job 7".into()))
            } else {
                Ok(i)
            }
        })
        .await;
        assert!(matches!(failed, Err(LoadError::Setup(m)) if m == "job 7"));
    }
}
