//! Giving freed heap back to the system. glibc's allocator keeps what
//! sessions freed in its arenas: after 9,000 of 10,000 sessions
//! disconnected, resident memory stayed at its peak. The gateway asks it to
//! return free pages after a wave of disconnects (and now and then), which
//! costs a walk over the arenas on a blocking thread, a few milliseconds.

use std::time::Duration;

/// How often the online count is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// A drop of this share of the sessions online since the last release
/// triggers one.
const DROP_SHARE: f64 = 0.1;
/// At most this long between releases while anything changed.
const AT_LEAST_EVERY: Duration = Duration::from_secs(600);

/// Returns free heap pages to the system; whether any were.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own arenas, under
        // their locks; any thread may call it at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Decides when to release, from the number of sessions online.
#[derive(Debug)]
pub struct Releaser {
    /// Sessions online at the last release (or the peak since).
    high: usize,
    since_last: Duration,
}

impl Default for Releaser {
    fn default() -> Self {
        Self {
            high: 0,
            since_last: Duration::ZERO,
        }
    }
}

impl Releaser {
    /// One check, `elapsed` after the previous one, with `online` sessions:
    /// whether to release now.
    pub fn check(&mut self, online: usize, elapsed: Duration) -> bool {
        self.since_last += elapsed;
        self.high = self.high.max(online);
        let dropped = self.high.saturating_sub(online);
        let wave = dropped > 0 && dropped as f64 >= self.high as f64 * DROP_SHARE;
        let due = self.since_last >= AT_LEAST_EVERY;
        if wave || due {
            self.high = online;
            self.since_last = Duration::ZERO;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wave_of_disconnects_triggers_one_release() {
        let mut r = Releaser::default();
        let tick = CHECK_EVERY;
        assert!(!r.check(1000, tick));
        assert!(!r.check(950, tick), "5 % is no wave");
        assert!(r.check(100, tick), "90 % gone");
        assert!(!r.check(100, tick), "once");
        assert!(!r.check(95, tick));
    }

    #[test]
    fn releases_now_and_then_anyway() {
        let mut r = Releaser::default();
        assert!(!r.check(10, Duration::from_secs(599)));
        assert!(r.check(10, Duration::from_secs(1)));
    }

    #[test]
    fn release_runs() {
        let _ = release_free_memory();
    }
}
