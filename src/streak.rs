//! Failures in a row of something retried on a timer (a checkpoint, a
//! save, a lease renewal): an outage that fails every round is logged when
//! it starts and when it ends, not at every attempt. Depends on nothing
//! else in the crate, so any layer may use it.

/// How many attempts in a row have failed.
#[derive(Debug, Default)]
pub struct FailureStreak {
    failures: u64,
}

impl FailureStreak {
    /// Counts a failure; true when it starts a streak (the one to log as a
    /// warning; the others are at most debug lines).
    pub fn failed(&mut self) -> bool {
        self.failures += 1;
        self.failures == 1
    }

    /// Whether the streak goes on past its first failure (its repeats
    /// are not worth more than a debug line).
    pub fn repeated(&self) -> bool {
        self.failures > 1
    }

    /// An attempt worked: the failures of the streak it ends, if there
    /// was one (to log that it works again), and the count starts over.
    pub fn recovered(&mut self) -> Option<u64> {
        Some(std::mem::take(&mut self.failures)).filter(|&n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_is_reported_when_it_starts_and_when_it_ends() {
        let mut streak = FailureStreak::default();
        assert_eq!(streak.recovered(), None);
        assert!(streak.failed());
        assert!(!streak.repeated());
        assert!(!streak.failed());
        assert!(streak.repeated());
        assert!(!streak.failed());
        assert_eq!(streak.recovered(), Some(3));
        assert!(!streak.repeated());
        assert_eq!(streak.recovered(), None);
        assert!(streak.failed());
    }
}
