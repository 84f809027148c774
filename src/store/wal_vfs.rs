//! SQLite VFSes over the default one ("unix"): the writer's, which gathers
//! a commit's WAL writes into one `pwrite` per 64 KiB, and the
//! checkpointer's, which pushes its writes of the database file to the disk
//! in small steps (see `paced_db`).
//!
//! SQLite appends each WAL frame with two writes, its 24-byte header and
//! then its page, one system call each: a group commit of a few hundred
//! pages made twice as many `pwrite`s before its fsync, a third of the
//! commit thread's time under a stream of Sends. Here a WAL file keeps
//! consecutive writes in memory and hands them to the file as one write
//! when anything else is asked of it — above all the sync that ends every
//! commit, and any read (SQLite reads frames back while it writes), size,
//! truncation or file control. Writes reach the file in the order they
//! were made: a write that does not continue the gathered range first
//! flushes it.
//!
//! Only for a connection whose every commit syncs the WAL
//! (`synchronous = FULL`): other connections learn of new frames from the
//! WAL index, which the writer updates after the commit's sync — after the
//! flush. A commit without a sync would publish frames still in this
//! buffer. The writer's other files (the database, the WAL index) are the
//! default VFS's own, untouched; so are every file of the checkpointer's
//! but its database file.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use rusqlite::ffi;

use super::paced_db::PacedFile;

/// The name the writer's connection opens its VFS by.
pub(super) const NAME: &CStr = c"wagate-wal";
/// The name the checkpointer's connection opens its VFS by.
pub(super) const PACED_NAME: &CStr = c"wagate-paced";

/// Gathered bytes past which they are written out at once (a commit of
/// more pages than that makes several writes). The default VFS writes at
/// most 128 KiB - 1 bytes per call (it masks the length), so one write of
/// this much is one `pwrite`.
const MAX_PENDING: usize = 64 << 10;

/// Registers both VFSes (once per process); the error says why they cannot be.
pub(super) fn register() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            // SAFETY: `sqlite3_vfs_find(NULL)` returns the default VFS,
            // which SQLite never frees; the VFSes built from it are leaked,
            // so they outlive every connection, as SQLite requires.
            unsafe {
                let base = ffi::sqlite3_vfs_find(std::ptr::null());
                if base.is_null() {
                    return Err("SQLite has no default VFS".into());
                }
                for name in [NAME, PACED_NAME] {
                    let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
                        iVersion: (*base).iVersion.min(3),
                        szOsFile: c_int::try_from(INNER_AT)
                            .ok()
                            .and_then(|at| at.checked_add((*base).szOsFile))
                            .ok_or("the default VFS's file is too large")?,
                        mxPathname: (*base).mxPathname,
                        pNext: std::ptr::null_mut(),
                        zName: name.as_ptr(),
                        pAppData: base.cast(),
                        xOpen: Some(open),
                        xDelete: Some(delete),
                        xAccess: Some(access),
                        xFullPathname: Some(full_pathname),
                        // These ignore their VFS argument in the default VFS
                        // (and are not used by the store).
                        xDlOpen: (*base).xDlOpen,
                        xDlError: (*base).xDlError,
                        xDlSym: (*base).xDlSym,
                        xDlClose: (*base).xDlClose,
                        xRandomness: Some(randomness),
                        xSleep: Some(sleep),
                        xCurrentTime: Some(current_time),
                        xGetLastError: Some(last_error),
                        xCurrentTimeInt64: Some(current_time_int64),
                        xSetSystemCall: None,
                        xGetSystemCall: None,
                        xNextSystemCall: None,
                    }));
                    match ffi::sqlite3_vfs_register(vfs, 0) {
                        ffi::SQLITE_OK => {}
                        rc => return Err(format!("SQLite refused the VFS (code {rc})")),
                    }
                }
                Ok(())
            }
        })
        .clone()
}

/// A WAL file: the default VFS's file, after the gathered writes.
#[repr(C)]
struct WalFile {
    /// What SQLite sees: the methods below.
    base: ffi::sqlite3_file,
    /// Bytes written and not yet handed to `inner`, which go at `pending_at`.
    pending: Vec<u8>,
    pending_at: i64,
    /// The default VFS's file, in the same allocation after this struct.
    inner: *mut ffi::sqlite3_file,
}

/// Where the default VFS's file starts in SQLite's allocation (after the
/// larger of our two parts).
const INNER_AT: usize = if size_of::<WalFile>() > size_of::<PacedFile>() {
    size_of::<WalFile>()
} else {
    size_of::<PacedFile>()
}
.next_multiple_of(16);

#[cfg(test)]
thread_local! {
    /// Writes of gathered bytes made by this thread.
    pub(super) static FLUSHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(wal_close),
    xRead: Some(wal_read),
    xWrite: Some(wal_write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(pass_lock),
    xUnlock: Some(pass_unlock),
    xCheckReservedLock: Some(pass_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(pass_sector_size),
    xDeviceCharacteristics: Some(pass_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// The default VFS, kept in ours.
///
/// # Safety
/// `vfs` is the VFS `register` built.
unsafe fn base(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    unsafe { (*vfs).pAppData.cast() }
}

/// Calls method `$m` of the default VFS with its own VFS pointer.
macro_rules! on_base {
    ($vfs:expr, $m:ident $(, $arg:expr)*) => {{
        let base = base($vfs);
        match (*base).$m {
            Some(f) => f(base $(, $arg)*),
            None => ffi::SQLITE_ERROR,
        }
    }};
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    unsafe {
        let paced = std::ptr::eq((*vfs).zName, PACED_NAME.as_ptr());
        let ours = if paced {
            flags & ffi::SQLITE_OPEN_MAIN_DB != 0
        } else {
            flags & ffi::SQLITE_OPEN_WAL != 0
        };
        if !ours {
            // The default VFS's file as it is (ours is larger).
            return on_base!(vfs, xOpen, name, file, flags, out_flags);
        }
        let inner = file.cast::<u8>().add(INNER_AT).cast::<ffi::sqlite3_file>();
        let rc = on_base!(vfs, xOpen, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // SQLite does not close a file whose methods are null.
            (*file).pMethods = std::ptr::null();
            return rc;
        }
        if paced {
            super::paced_db::wrap(file, inner, name);
            return ffi::SQLITE_OK;
        }
        file.cast::<WalFile>().write(WalFile {
            base: ffi::sqlite3_file {
                pMethods: &WAL_METHODS,
            },
            pending: Vec::new(),
            pending_at: 0,
            inner,
        });
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn delete(vfs: *mut ffi::sqlite3_vfs, name: *const c_char, sync: c_int) -> c_int {
    unsafe { on_base!(vfs, xDelete, name, sync) }
}

unsafe extern "C" fn access(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    unsafe { on_base!(vfs, xAccess, name, flags, out) }
}

unsafe extern "C" fn full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    unsafe { on_base!(vfs, xFullPathname, name, n, out) }
}

unsafe extern "C" fn randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    unsafe { on_base!(vfs, xRandomness, n, out) }
}

unsafe extern "C" fn sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    unsafe { on_base!(vfs, xSleep, micros) }
}

unsafe extern "C" fn current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    unsafe { on_base!(vfs, xCurrentTime, out) }
}

unsafe extern "C" fn last_error(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    unsafe { on_base!(vfs, xGetLastError, n, out) }
}

unsafe extern "C" fn current_time_int64(vfs: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    unsafe { on_base!(vfs, xCurrentTimeInt64, out) }
}

/// Our part of a WAL file.
///
/// # Safety
/// `file` was opened by `open` as a WAL and not yet closed.
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    unsafe { &mut *file.cast::<WalFile>() }
}

/// Calls method `$m` of the default VFS's file.
macro_rules! on_inner {
    ($inner:expr, $m:ident $(, $arg:expr)*) => {{
        let inner = $inner;
        match (*(*inner).pMethods).$m {
            Some(f) => f(inner $(, $arg)*),
            None => ffi::SQLITE_IOERR,
        }
    }};
}
pub(super) use on_inner;

impl WalFile {
    /// Writes the gathered bytes out; they are dropped either way (a failed
    /// write fails the commit, which SQLite then rolls back).
    ///
    /// # Safety
    /// `self.inner` is open.
    unsafe fn flush(&mut self) -> c_int {
        if self.pending.is_empty() {
            return ffi::SQLITE_OK;
        }
        #[cfg(test)]
        FLUSHES.set(FLUSHES.get() + 1);
        let rc = match c_int::try_from(self.pending.len()) {
            Ok(n) => unsafe {
                on_inner!(
                    self.inner,
                    xWrite,
                    self.pending.as_ptr().cast(),
                    n,
                    self.pending_at
                )
            },
            Err(_) => ffi::SQLITE_IOERR_WRITE,
        };
        self.pending.clear();
        rc
    }
}

/// Flushes, then calls method `$m` of the default VFS's file.
macro_rules! flushed {
    ($file:expr, $m:ident $(, $arg:expr)*) => {{
        let wal = wal($file);
        match wal.flush() {
            ffi::SQLITE_OK => on_inner!(wal.inner, $m $(, $arg)*),
            rc => rc,
        }
    }};
}

unsafe extern "C" fn wal_close(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let wal = wal(file);
        let flushed = wal.flush();
        let closed = on_inner!(wal.inner, xClose);
        std::ptr::drop_in_place(&raw mut wal.pending);
        if flushed == ffi::SQLITE_OK {
            closed
        } else {
            flushed
        }
    }
}

unsafe extern "C" fn wal_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    unsafe { flushed!(file, xRead, buf, amount, offset) }
}

unsafe extern "C" fn wal_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    unsafe {
        let wal = wal(file);
        let Ok(len) = usize::try_from(amount) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let continues = !wal.pending.is_empty()
            && i64::try_from(wal.pending.len()).is_ok_and(|n| wal.pending_at + n == offset);
        if !continues || wal.pending.len() + len > MAX_PENDING {
            let rc = wal.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if len > MAX_PENDING {
            return on_inner!(wal.inner, xWrite, buf, amount, offset);
        }
        if wal.pending.is_empty() {
            wal.pending_at = offset;
        }
        wal.pending
            .extend_from_slice(std::slice::from_raw_parts(buf.cast::<u8>(), len));
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn wal_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    unsafe { flushed!(file, xTruncate, size) }
}

unsafe extern "C" fn wal_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    unsafe { flushed!(file, xSync, flags) }
}

unsafe extern "C" fn wal_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    unsafe { flushed!(file, xFileSize, size) }
}

unsafe extern "C" fn wal_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    unsafe { flushed!(file, xFileControl, op, arg) }
}

/// The default VFS's file within SQLite's allocation for one of ours
/// (a WAL or a paced database file: both keep it at [`INNER_AT`]).
///
/// # Safety
/// `file` was opened by `open` as one of ours and not yet closed.
unsafe fn inner_of(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    unsafe { file.cast::<u8>().add(INNER_AT).cast() }
}

// The methods both kinds of file hand to the default VFS's file as they are.

pub(super) unsafe extern "C" fn pass_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe { on_inner!(inner_of(file), xLock, level) }
}

pub(super) unsafe extern "C" fn pass_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe { on_inner!(inner_of(file), xUnlock, level) }
}

pub(super) unsafe extern "C" fn pass_check_reserved_lock(
    file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    unsafe { on_inner!(inner_of(file), xCheckReservedLock, out) }
}

pub(super) unsafe extern "C" fn pass_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let inner = inner_of(file);
        (*(*inner).pMethods).xSectorSize.map_or(0, |f| f(inner))
    }
}

pub(super) unsafe extern "C" fn pass_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let inner = inner_of(file);
        (*(*inner).pMethods)
            .xDeviceCharacteristics
            .map_or(0, |f| f(inner))
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, OpenFlags};

    use super::{register, FLUSHES, MAX_PENDING, NAME, PACED_NAME};
    use crate::store::paced_db::PUSHES;

    /// A connection through the VFS, in WAL mode with a sync per commit.
    fn writer(path: &std::path::Path, page_size: u32) -> Connection {
        register().expect("register");
        let conn =
            Connection::open_with_flags_and_vfs(path, OpenFlags::default(), NAME).expect("open");
        conn.pragma_update(None, "page_size", page_size)
            .expect("page size");
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .expect("wal");
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "synchronous", "FULL")
            .expect("synchronous");
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .expect("no checkpoints");
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .expect("table");
        conn
    }

    fn insert(conn: &Connection, keys: std::ops::Range<i64>, len: usize) {
        let mut insert = conn
            .prepare("INSERT OR REPLACE INTO t (k, v) VALUES (?1, ?2)")
            .expect("prepare");
        for k in keys {
            let fill = u8::try_from(k % 251).expect("small");
            insert.execute((k, vec![fill; len])).expect("insert");
        }
    }

    /// Every row is there with its content, read by a connection of
    /// SQLite's own VFS, and the file is sound.
    fn check(path: &std::path::Path, keys: std::ops::Range<i64>, len: usize) {
        let reader = Connection::open(path).expect("reader");
        let n: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, keys.end - keys.start);
        let mut select = reader
            .prepare("SELECT v FROM t WHERE k = ?1")
            .expect("prepare");
        for k in keys {
            let v: Vec<u8> = select.query_row([k], |r| r.get(0)).expect("row");
            let fill = u8::try_from(k % 251).expect("small");
            assert_eq!(v, vec![fill; len], "row {k}");
        }
        let ok: String = reader
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity");
        assert_eq!(ok, "ok");
    }

    #[test]
    fn a_commit_writes_its_frames_at_once_and_others_read_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let conn = writer(&path, 2048);
        // 40 rows of 1 KiB: about 20 pages, 40 frame writes, under 64 KiB.
        let before = FLUSHES.get();
        conn.execute_batch("BEGIN").expect("begin");
        insert(&conn, 0..40, 1000);
        conn.execute_batch("COMMIT").expect("commit");
        let flushes = FLUSHES.get() - before;
        assert_eq!(flushes, 1, "one write for the commit's frames");
        check(&path, 0..40, 1000);

        // 400 rows of 1 KiB: about 200 pages, 400 KiB, written in pieces
        // of at most 64 KiB.
        let before = FLUSHES.get();
        conn.execute_batch("BEGIN").expect("begin");
        insert(&conn, 40..440, 1000);
        conn.execute_batch("COMMIT").expect("commit");
        let flushes = FLUSHES.get() - before;
        assert!(
            (6..=12).contains(&flushes),
            "{flushes} writes for about 400 KiB"
        );
        check(&path, 0..440, 1000);
    }

    #[test]
    fn spilled_rolled_back_and_restarted_wals_stay_sound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let conn = writer(&path, 2048);
        insert(&conn, 0..100, 300);
        // A transaction larger than the page cache spills frames to the
        // WAL before its commit (SQLite reads some back and rewrites them),
        // then rolls back: none of it may show.
        conn.pragma_update(None, "cache_size", 10).expect("cache");
        conn.execute_batch("BEGIN").expect("begin");
        insert(&conn, 100..2000, 700);
        insert(&conn, 0..100, 900);
        conn.execute_batch("ROLLBACK").expect("rollback");
        check(&path, 0..100, 300);
        // The same, committed.
        conn.execute_batch("BEGIN").expect("begin");
        insert(&conn, 100..2000, 700);
        insert(&conn, 100..1000, 700);
        conn.execute("DELETE FROM t WHERE k < 100", [])
            .expect("delete");
        conn.execute_batch("COMMIT").expect("commit");
        check(&path, 100..2000, 700);
        // A checkpoint that empties the WAL; the next commits start it over.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
        insert(&conn, 2000..2100, 700);
        check(&path, 100..2100, 700);
        drop(conn);
        // Reopened through the VFS, as after a restart.
        register().expect("register");
        let again =
            Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), NAME).expect("open");
        insert(&again, 2100..2200, 700);
        drop(again);
        check(&path, 100..2200, 700);
    }

    #[test]
    fn frames_larger_than_the_gathering_limit_are_written_as_they_come() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        // 64 KiB pages: every frame is larger than the limit.
        let conn = writer(&path, 65536);
        const { assert!(65536 + 24 > MAX_PENDING) };
        conn.execute_batch("BEGIN").expect("begin");
        insert(&conn, 0..50, 20_000);
        conn.execute_batch("COMMIT").expect("commit");
        insert(&conn, 50..60, 20_000);
        check(&path, 0..60, 20_000);
    }

    #[test]
    fn a_paced_checkpoint_pushes_its_copy_in_steps_and_leaves_the_database_sound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let conn = writer(&path, 2048);
        // About 400 KiB of pages in the WAL.
        conn.execute_batch("BEGIN").expect("begin");
        insert(&conn, 0..400, 1000);
        conn.execute_batch("COMMIT").expect("commit");
        let checkpointer =
            Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), PACED_NAME)
                .expect("open");
        let before = PUSHES.get();
        let (busy, frames, copied): (i64, i64, i64) = checkpointer
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("checkpoint");
        assert_eq!((busy, copied), (0, frames), "everything copied");
        assert!(frames > 200, "{frames} frames");
        let pushes = PUSHES.get() - before;
        assert!(
            (4..=12).contains(&pushes),
            "{pushes} pushes for about 400 KiB"
        );
        check(&path, 0..400, 1000);
        // The writer goes on, the WAL starts over, and a checkpoint that
        // truncates it leaves every row in the database file.
        insert(&conn, 400..500, 1000);
        let busy: i64 = checkpointer
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .expect("truncate");
        assert_eq!(busy, 0, "nothing held the checkpoint up");
        let wal = std::fs::metadata(dir.path().join("t.db-wal")).expect("wal");
        assert_eq!(wal.len(), 0, "the WAL was emptied");
        drop(conn);
        drop(checkpointer);
        check(&path, 0..500, 1000);
    }
}
