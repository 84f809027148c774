//! The database file as the checkpointer's connection sees it: the default
//! VFS's file, whose writes are pushed to the disk in small steps as they
//! are made instead of all at once by the checkpoint's closing fsync.
//!
//! A checkpoint copies the pages of the WAL's last ~100 ms into the
//! database file (about 250 pages at 1,000 texts/s, far more after a
//! burst) and syncs it. Left to that sync, the whole copy goes to the disk
//! at once, and every commit's WAL fsync made meanwhile waits behind it at
//! the disk: texts and Sends committed during a checkpoint came 5–10 ms
//! late, enough of them to make the event delivery and Send p99s. Here,
//! every step of the file written (see below), the range is handed to the
//! disk (`sync_file_range`) and the copy goes on once it is written: a
//! commit then waits behind one such step at most. `sync_file_range`
//! makes nothing durable (no cache flush, no metadata): the checkpoint's
//! own sync still does that, and now finds little left to write.
//!
//! A step is a span of the file, not a count of bytes: the pages a
//! checkpoint copies lie scattered over the file (in ascending order), and
//! what a commit waits behind is the disk's separate writes, so a step
//! where the pages are sparse holds two or three of them, and where they
//! are dense (the tail of the event log) a run of neighbours written as
//! one.
//! Steps that small slow the copy down: under a heavy stream of commits
//! (Sends at concurrency 64, tens of MB a second of WAL) checkpoints paced
//! in 64 KiB spans no longer kept up, and the WAL grew to 55 MB where it
//! had stayed under 20; stopping the pacing past some size instead brought
//! the bursts back after a backlog (the first checkpoints after 50,000
//! texts received at once). So the span grows with what the checkpoint
//! has written: [`PUSH_SPAN`] more for every [`GROW_EVERY`], up to
//! [`MAX_PUSH_SPAN`].
//!
//! Only the checkpointer's connection opens its database file this way;
//! the writer's (which finishes a checkpoint under the write lock now and
//! then) does not, so a commit never waits for the pacing.

use std::ffi::{c_int, c_void, CStr};
use std::os::fd::AsRawFd;

use rusqlite::ffi;

use super::wal_vfs::{
    on_inner, pass_check_reserved_lock, pass_device_characteristics, pass_lock, pass_sector_size,
    pass_unlock,
};

/// The span of the file a push covers at first.
const PUSH_SPAN: i64 = 64 << 10;
/// Bytes written by a checkpoint that widen its steps by one more
/// [`PUSH_SPAN`].
const GROW_EVERY: i64 = 1 << 20;
/// The widest step.
const MAX_PUSH_SPAN: i64 = 4 << 20;

/// Our part of the database file.
#[repr(C)]
pub(super) struct PacedFile {
    /// What SQLite sees: the methods below.
    base: ffi::sqlite3_file,
    /// A descriptor of our own on the file, for `sync_file_range` (which
    /// acts on the file's pages whatever descriptor names them). Without
    /// one, writes are not pushed.
    own: Option<std::fs::File>,
    /// The range written since the last push, and its bytes written.
    from: i64,
    to: i64,
    written: i64,
    /// Bytes the checkpoint under way pushed so far.
    pushed: i64,
    /// The default VFS's file, in the same allocation after this struct.
    inner: *mut ffi::sqlite3_file,
}

/// Wraps the default VFS's `inner`, just opened as the database file
/// `name`, in `file`.
///
/// # Safety
/// `file` is SQLite's allocation for the file and `inner` the default
/// VFS's open file within it; `name` is the name SQLite opened it by.
pub(super) unsafe fn wrap(
    file: *mut ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    name: ffi::sqlite3_filename,
) {
    let own = (!name.is_null())
        .then(|| unsafe { CStr::from_ptr(name) })
        .and_then(|name| {
            use std::os::unix::ffi::OsStrExt;
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()));
            std::fs::File::open(path).ok()
        });
    if own.is_none() {
        tracing::debug!("checkpoints write the database file unpaced");
    }
    unsafe {
        file.cast::<PacedFile>().write(PacedFile {
            base: ffi::sqlite3_file {
                pMethods: &PACED_METHODS,
            },
            own,
            from: i64::MAX,
            to: 0,
            written: 0,
            pushed: 0,
            inner,
        });
    }
}

#[cfg(test)]
thread_local! {
    /// Pushes made by this thread.
    pub(super) static PUSHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl PacedFile {
    /// Notes a write of `len` bytes at `offset`; pushes what was written
    /// since the last push once it spans a step.
    fn wrote(&mut self, offset: i64, len: i64) {
        self.from = self.from.min(offset);
        self.to = self.to.max(offset.saturating_add(len));
        self.written = self.written.saturating_add(len);
        let step = PUSH_SPAN
            .saturating_mul(1 + self.pushed / GROW_EVERY)
            .min(MAX_PUSH_SPAN);
        if self.to - self.from < step {
            return;
        }
        self.push();
        self.pushed = self.pushed.saturating_add(self.written);
        self.from = i64::MAX;
        self.to = 0;
        self.written = 0;
    }

    /// Hands the range written since the last push to the disk and waits
    /// until it is written. A failure only ends the pacing of this range:
    /// the checkpoint's sync writes (and reports) what is left.
    fn push(&mut self) {
        let Some(own) = &self.own else {
            return;
        };
        #[cfg(test)]
        PUSHES.set(PUSHES.get() + 1);
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: a plain system call on a descriptor we own.
        let rc = unsafe {
            libc::sync_file_range(own.as_raw_fd(), self.from, self.to - self.from, flags)
        };
        if rc != 0 {
            tracing::debug!(
                "pushing checkpointed pages: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// The checkpoint syncs the file: the next one starts afresh.
    fn synced(&mut self) {
        self.from = i64::MAX;
        self.to = 0;
        self.written = 0;
        self.pushed = 0;
    }
}

static PACED_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(pass_lock),
    xUnlock: Some(pass_unlock),
    xCheckReservedLock: Some(pass_check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(pass_sector_size),
    xDeviceCharacteristics: Some(pass_device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

/// Our part of the file.
///
/// # Safety
/// `file` was wrapped by [`wrap`] and not yet closed.
unsafe fn paced<'a>(file: *mut ffi::sqlite3_file) -> &'a mut PacedFile {
    unsafe { &mut *file.cast::<PacedFile>() }
}

/// Calls method `$m` of the default VFS's file (an error if it has none).
macro_rules! inner {
    ($file:expr, $m:ident $(, $arg:expr)*) => {
        on_inner!(paced($file).inner, $m $(, $arg)*)
    };
}

/// Like `inner!` for the methods of version 2 and 3 (shared memory,
/// mapping), which an older file's methods do not even have.
macro_rules! inner_v {
    ($version:expr, $file:expr, $m:ident $(, $arg:expr)*) => {{
        let inner = paced($file).inner;
        if (*(*inner).pMethods).iVersion < $version {
            ffi::SQLITE_IOERR
        } else {
            inner!($file, $m $(, $arg)*)
        }
    }};
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let rc = inner!(file, xClose);
        std::ptr::drop_in_place(&raw mut paced(file).own);
        rc
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    unsafe { inner!(file, xRead, buf, amount, offset) }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    unsafe {
        let rc = inner!(file, xWrite, buf, amount, offset);
        if rc == ffi::SQLITE_OK {
            paced(file).wrote(offset, i64::from(amount));
        }
        rc
    }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    unsafe { inner!(file, xTruncate, size) }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    unsafe {
        // What is left goes out with the sync itself.
        paced(file).synced();
        inner!(file, xSync, flags)
    }
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    unsafe { inner!(file, xFileSize, size) }
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    unsafe { inner!(file, xFileControl, op, arg) }
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    unsafe { inner_v!(2, file, xShmMap, region, size, extend, out) }
}

unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    unsafe { inner_v!(2, file, xShmLock, offset, n, flags) }
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    unsafe {
        let inner = paced(file).inner;
        if (*(*inner).pMethods).iVersion < 2 {
            return;
        }
        if let Some(f) = (*(*inner).pMethods).xShmBarrier {
            f(inner);
        }
    }
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    unsafe { inner_v!(2, file, xShmUnmap, delete) }
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    unsafe {
        let inner = paced(file).inner;
        if (*(*inner).pMethods).iVersion < 3 {
            // No mapping: SQLite reads instead.
            *out = std::ptr::null_mut();
            return ffi::SQLITE_OK;
        }
        inner!(file, xFetch, offset, amount, out)
    }
}

unsafe extern "C" fn unfetch(file: *mut ffi::sqlite3_file, offset: i64, p: *mut c_void) -> c_int {
    unsafe {
        let inner = paced(file).inner;
        if (*(*inner).pMethods).iVersion < 3 {
            return ffi::SQLITE_OK;
        }
        inner!(file, xUnfetch, offset, p)
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::ffi;

    use super::{PacedFile, PUSHES};

    fn file() -> PacedFile {
        PacedFile {
            base: ffi::sqlite3_file {
                pMethods: std::ptr::null(),
            },
            own: Some(tempfile::tempfile().expect("file")),
            from: i64::MAX,
            to: 0,
            written: 0,
            pushed: 0,
            inner: std::ptr::null_mut(),
        }
    }

    /// Writes every `every`th of `pages` pages of 2 KiB in ascending
    /// order, then syncs.
    fn checkpoint(file: &mut PacedFile, pages: i64, every: i64) -> u64 {
        let before = PUSHES.get();
        for page in 0..pages {
            file.wrote(page * every * 2048, 2048);
        }
        file.synced();
        PUSHES.get() - before
    }

    #[test]
    fn a_checkpoint_is_pushed_in_spans_that_grow_with_it() {
        let mut file = file();
        // Neighbours: 32 pages a step.
        assert_eq!(
            checkpoint(&mut file, 100, 1),
            3,
            "200 KiB in spans of 64 KiB"
        );
        // Scattered: two or three pages a step.
        assert_eq!(
            checkpoint(&mut file, 100, 40),
            50,
            "every page 80 KiB apart"
        );
        assert_eq!(
            checkpoint(&mut file, 100, 20),
            33,
            "every page 40 KiB apart"
        );
        // 40 MB: spans growing to 4 MiB (10 of those alone would do).
        let pushes = checkpoint(&mut file, 20_000, 1);
        assert!((20..100).contains(&pushes), "{pushes} pushes for 40 MB");
        assert_eq!(checkpoint(&mut file, 100, 1), 3, "small again after a sync");
    }
}
