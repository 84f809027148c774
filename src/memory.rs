//! Giving freed heap back to the system. glibc's allocator keeps what
//! sessions freed in its arenas: after 9,000 of 10,000 sessions
//! disconnected, resident memory stayed at its peak. The gateway asks it to
//! return free pages after a wave of disconnects (and now and then), which
//! costs a walk over the arenas on a blocking thread, a few milliseconds.
//!
//! A page goes back only when nothing on it is in use, and glibc's
//! per-thread caches (up to seven freed chunks of each small size per
//! thread) count as in use: after a wave they hold chunks spread over the
//! pages the departed sessions used, and `malloc_trim` leaves them alone.
//! Only a tunable read at start turns them off, so `serve` starts itself
//! again with it set (measured after 900 of 1,000 sessions disconnected:
//! RssAnon 21.1 -> 15.8 MiB; idle memory and message rates unchanged within
//! the noise). An operator who sets that tunable keeps their value.

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

/// The glibc tunable of the per-thread cache's depth.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
const THREAD_CACHE_TUNABLE: &str = "glibc.malloc.tcache_count";

/// Runs this program again, in place, with glibc's per-thread caches off,
/// unless `GLIBC_TUNABLES` already names their depth. Returns only when it
/// does not (set already, another C library, or the exec failed).
pub fn restart_without_thread_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        let current = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
        let Some(tunables) = with_thread_caches_off(&current.to_string_lossy()) else {
            return;
        };
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        let error = command.args(args).env("GLIBC_TUNABLES", tunables).exec();
        eprintln!("wagate: running with glibc's thread caches ({error})");
    }
}

/// `GLIBC_TUNABLES` with the thread caches off; `None` when it sets their
/// depth already (the operator's choice, or this process after its restart).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn with_thread_caches_off(current: &str) -> Option<String> {
    if current
        .split(':')
        .any(|t| t.split('=').next() == Some(THREAD_CACHE_TUNABLE))
    {
        return None;
    }
    Some(if current.is_empty() {
        format!("{THREAD_CACHE_TUNABLE}=0")
    } else {
        format!("{current}:{THREAD_CACHE_TUNABLE}=0")
    })
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
    fn thread_caches_are_turned_off_once_and_never_over_the_operators_choice() {
        assert_eq!(
            with_thread_caches_off("").as_deref(),
            Some("glibc.malloc.tcache_count=0")
        );
        assert_eq!(
            with_thread_caches_off("glibc.malloc.arena_max=2").as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0")
        );
        assert_eq!(with_thread_caches_off("glibc.malloc.tcache_count=0"), None);
        assert_eq!(
            with_thread_caches_off("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=7"),
            None
        );
    }

    #[test]
    fn release_runs() {
        let _ = release_free_memory();
    }
}
