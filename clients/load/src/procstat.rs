//! What the kernel knows about a process: resident memory and thread count
//! from `/proc/<pid>/status`, CPU time from `/proc/<pid>/stat`, bytes
//! written to storage from `/proc/<pid>/io`; and the open-file limit this
//! tool raises for itself and its children.

use std::time::Instant;

use crate::error::LoadError;

/// Resident memory and threads of one process, at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    /// `VmRSS`: everything resident, mapped files (the binary) included.
    pub(crate) rss_kib: u64,
    /// `RssAnon`: heap and stacks only, what sessions actually cost.
    pub(crate) anon_kib: u64,
    pub(crate) threads: u64,
}

/// One file of `/proc/<pid>/`, read whole.
struct ProcFile {
    path: String,
    text: String,
}

impl ProcFile {
    fn read(pid: u32, name: &str) -> Result<Self, LoadError> {
        let path = format!("/proc/{pid}/{name}");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(ProcFile { path, text }),
            Err(source) => Err(LoadError::Proc { path, source }),
        }
    }

    /// The number on the line `name` (e.g. `VmRSS:`), without its unit.
    fn number(&self, name: &str) -> Result<u64, LoadError> {
        self.text
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| self.error(format!("no {name} line")))
    }

    fn error(&self, what: String) -> LoadError {
        LoadError::Proc {
            path: self.path.clone(),
            source: std::io::Error::other(what),
        }
    }
}

/// Reads `VmRSS`, `RssAnon` and `Threads` of `pid`.
pub(crate) fn memory(pid: u32) -> Result<Memory, LoadError> {
    let status = ProcFile::read(pid, "status")?;
    Ok(Memory {
        rss_kib: status.number("VmRSS:")?,
        anon_kib: status.number("RssAnon:")?,
        threads: status.number("Threads:")?,
    })
}

/// User plus system CPU time of `pid` so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64, LoadError> {
    let stat = ProcFile::read(pid, "stat")?;
    // The command name (field 2) is in parentheses and may hold spaces, so
    // count fields from the last ')': state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(utime), Some(stime)) => Ok((utime + stime) as f64 / clock_ticks_per_second()),
        _ => Err(stat.error("unexpected format".to_owned())),
    }
}

/// Bytes `pid` has caused to be written to storage so far: the kernel's
/// `write_bytes` (counted when the process dirties page-cache pages, so in
/// whole pages, whatever later writes them out) less `cancelled_write_bytes`
/// (dirty pages of files truncated before they reached the disk).
pub(crate) fn disk_written(pid: u32) -> Result<u64, LoadError> {
    let io = ProcFile::read(pid, "io")?;
    Ok(io
        .number("write_bytes:")?
        .saturating_sub(io.number("cancelled_write_bytes:")?))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // USER_HZ is 100 on every Linux build; sysconf fails only off Linux.
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU use of one process over a window, as a share of one core.
pub(crate) struct CpuMeter {
    pid: u32,
    cpu: f64,
    at: Instant,
}

impl CpuMeter {
    pub(crate) fn start(pid: u32) -> Result<Self, LoadError> {
        Ok(Self {
            pid,
            cpu: cpu_seconds(pid)?,
            at: Instant::now(),
        })
    }

    /// Percent of one core used since `start`.
    pub(crate) fn percent(&self) -> Result<f64, LoadError> {
        let used = cpu_seconds(self.pid)? - self.cpu;
        let wall = self.at.elapsed().as_secs_f64();
        Ok(if wall > 0.0 { 100.0 * used / wall } else { 0.0 })
    }
}

/// Storage writes of one process over a window (see [`disk_written`]).
pub(crate) struct DiskMeter {
    pid: u32,
    written: u64,
}

impl DiskMeter {
    pub(crate) fn start(pid: u32) -> Result<Self, LoadError> {
        Ok(Self {
            pid,
            written: disk_written(pid)?,
        })
    }

    /// Bytes written since `start`.
    pub(crate) fn bytes(&self) -> Result<u64, LoadError> {
        Ok(disk_written(self.pid)?.saturating_sub(self.written))
    }
}

/// Raises the soft open-file limit to the hard one; children inherit it.
/// Each session holds a socket in the gateway and one in the simulator, so
/// the usual soft limit of 1,024 stops a run near 1,000 sessions.
pub(crate) fn raise_open_files() -> Result<u64, LoadError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(LoadError::Setup(format!(
                "getrlimit: {}",
                std::io::Error::last_os_error()
            )));
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(LoadError::Setup(format!(
                "setrlimit: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_cpu() {
        let me = std::process::id();
        let mem = memory(me).expect("own status");
        assert!(mem.rss_kib >= mem.anon_kib && mem.anon_kib > 0);
        assert!(mem.threads >= 1);
        // Busy until the kernel has charged a clock tick, or give up.
        let spin = Instant::now();
        while cpu_seconds(me).expect("own stat") <= 0.0 {
            assert!(spin.elapsed().as_secs() < 10, "no CPU time seen");
        }
        assert!(cpu_seconds(me).expect("own stat") < 3600.0);
    }

    #[test]
    fn counts_own_writes_to_storage() {
        let me = std::process::id();
        let before = disk_written(me).expect("own io");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("written");
        std::fs::write(&path, vec![7u8; 1 << 20]).expect("write");
        let after = disk_written(me).expect("own io");
        // Counted when the pages are dirtied, before any writeback; a
        // temporary directory in memory (tmpfs) has no storage to count.
        if on_storage(dir.path()) {
            assert!(after >= before + (1 << 20), "{before} → {after}");
        } else {
            assert!(after >= before);
        }
        assert!(disk_written(u32::MAX).is_err());
    }

    /// Whether `dir` is on a file system with a backing store (not tmpfs).
    fn on_storage(dir: &std::path::Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        const TMPFS_MAGIC: libc::c_long = 0x0102_1994;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: `statfs` is a plain C struct, for which all zeroes is a value.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: the path is NUL-terminated; statfs writes only the struct passed in.
        let rc = unsafe { libc::statfs(path.as_ptr(), &mut fs) };
        assert_eq!(rc, 0, "statfs: {}", std::io::Error::last_os_error());
        fs.f_type as libc::c_long != TMPFS_MAGIC
    }
}
