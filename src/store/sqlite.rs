//! SQLite backend, the embedded default: one database file in WAL mode with full fsync on every
//! commit, secrets sealed before they reach SQLite, schema migrations keyed on
//! `PRAGMA user_version`. Must not import `runtime`, `api` or `sim`.
//!
//! Event payloads are sealed like secrets (bound to their place in the log, under the lock since
//! the cursor is assigned there); session ids, kinds and times stay in clear for filtering and
//! retention. An empty payload is a withheld one (redacted or quarantined). The personal part of
//! a session row (JID, push name, metadata) is one sealed `profile` record (see `profile.rs`).
//!
//! One connection behind a mutex serves every caller (SQLite allows one writer at a time anyway,
//! and it keeps seq/cursor assignment trivially race-free). Commits are grouped: batches that
//! arrive while a transaction is being written are committed together in the next one, each in
//! its own savepoint, so concurrent sessions share one fsync instead of queueing for one each.
//! The AES work happens before the lock is taken.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use rand::rngs::OsRng;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use zeroize::Zeroizing;

use super::crypt::{EventPlace, Keyring, Unreadable};
use super::model::prefix_upper_bound;
use super::profile::{self, PROFILE_KEY};
use super::{
    event_key, now_ms, Batch, EventFilter, EventRecord, NewEvent, QuarantineEntry, Retention,
    SecretOp, SessionId, SessionRecord, Store, StoreError,
};

/// Schema version this build writes; `MIGRATIONS[v]` upgrades version `v` to `v + 1`.
const SCHEMA_VERSION: i64 = 3;
const MIGRATIONS: [&str; 3] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

const SCHEMA_V1: &str = "
CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    created_at_ms INTEGER NOT NULL,
    desired_online INTEGER NOT NULL,
    jid TEXT,
    push_name TEXT,
    platform TEXT,
    last_connected_at_ms INTEGER,
    logged_out INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE session_metadata (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (session_id, key)
) STRICT, WITHOUT ROWID;

-- Values are sealed records (see crypt.rs); plaintext never reaches this file.
CREATE TABLE secrets (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (session_id, key)
) STRICT;

-- No foreign key: quarantined records outlive their session for operators to inspect.
CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    key TEXT NOT NULL,
    reason TEXT NOT NULL,
    quarantined_at_ms INTEGER NOT NULL,
    record BLOB NOT NULL
) STRICT;

-- No foreign key either: events stay after their session is deleted, until retention.
CREATE TABLE events (
    cursor INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    payload BLOB NOT NULL
) STRICT;
CREATE INDEX events_by_session ON events (session_id, cursor);
CREATE INDEX events_by_time ON events (timestamp_ms);

-- Kept apart from events so seqs and the cursor never go back when events are pruned.
CREATE TABLE event_seqs (
    session_id TEXT PRIMARY KEY NOT NULL,
    last_seq INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE counters (
    name TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO counters (name, value) VALUES ('last_cursor', 0);

-- Which key bytes wrote this database, as HMAC check values (see Keyring::key_checks).
CREATE TABLE store_keys (
    key_id TEXT PRIMARY KEY NOT NULL,
    key_check BLOB NOT NULL,
    first_used_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
";

/// Version 2 seals event payloads, which version 1 stored in clear; the data step is
/// `seal_clear_events`, run in the same transaction.
const SCHEMA_V2: &str = "";

/// Version 3 seals the personal columns of session rows (JID, push name, metadata), which
/// versions 1 and 2 stored in clear, into one `profile` record; the data step is
/// `seal_clear_profiles`, which then drops the clear columns and the metadata table.
const SCHEMA_V3: &str = "ALTER TABLE sessions ADD COLUMN profile BLOB;";

/// Run by `seal_clear_profiles` once the clear values are sealed.
const DROP_CLEAR_PROFILES: &str = "
ALTER TABLE sessions DROP COLUMN jid;
ALTER TABLE sessions DROP COLUMN push_name;
DROP TABLE session_metadata;
";

const SELECT_SESSIONS: &str = "SELECT id, created_at_ms, desired_online, platform, \
                               last_connected_at_ms, logged_out, profile FROM sessions";

/// Records re-sealed per transaction by `reseal_all`.
const CHUNK: i64 = 500;

/// Rows deleted per transaction when pruning, so a large prune never holds the lock for long.
const PRUNE_CHUNK: i64 = 5_000;
/// Sessions that may hold more than `?1` events, found without counting the log: a session's
/// seqs are consecutive and only pruning removes events, so it holds at most its last seq
/// minus its oldest remaining event's seq, plus one. One index lookup per session instead
/// of a scan of every event under the writer at each retention run; the delete that
/// follows counts exactly.
const OVER_COUNT_CANDIDATES: &str = "SELECT s.session_id FROM event_seqs AS s \
     WHERE s.last_seq + 1 - coalesce((SELECT e.seq FROM events AS e \
     WHERE e.session_id = s.session_id ORDER BY e.cursor LIMIT 1), s.last_seq + 1) > ?1";
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const STATEMENT_CACHE: usize = 64;
/// Read-only connections beside the writer.
const READERS: usize = 2;
/// The writer reads pages of the database file through a shared mapping,
/// not a `pread` copy each (7 % of the commit thread's CPU under load); they
/// are the kernel's page cache, shared and reclaimable, not the process's
/// heap. WAL frames are still read with `pread`, and readers use `pread`
/// (see `open`).
const MMAP_SIZE: i64 = 1 << 30;
/// Page size of a new database. Every record is small (secrets and events
/// are under 1 KiB, most under 256 bytes), and a commit writes each page it
/// touched whole, to the WAL and again at the next checkpoint: a text
/// received touches eight to ten. Pages of 2 KiB halve those bytes against
/// SQLite's default 4 KiB, and the checkpoints, whose writes the commits'
/// fsyncs queue behind, are shorter: event delivery p99 at 1,000 texts/s
/// 3.3–3.8 ms against 4.2–5.1 ms (alternating runs, those without a stall
/// of the disk), inbound and Send throughput unchanged.
/// A database keeps the page size it was created with.
const PAGE_SIZE: i64 = 2048;

/// How often the background checkpointer copies the WAL into the database
/// (often enough that the WAL stays a few MB at thousands of messages/s).
/// Small copies often rather than large ones seldom: each ends with an
/// fsync of the database file, and the commits' own fsyncs queue behind a
/// large one (event delivery p99 at 1,000 texts/s: 5.2–7.5 ms every
/// 500 ms, 3.8–4.6 ms every 100 ms, same throughput). With paced
/// checkpoints, every 400 ms copies fewer pages twice and gave 5–10 % more
/// Sends at concurrency 64 (gateway alone on a core: 5,101–5,185/s against
/// 4,684–4,904/s), but event delivery p99 2.86–2.94 ms against 1.94–2.32
/// and inbound texts 5–12 % fewer per second (alternating runs).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// WAL frames (pages) past which the checkpointer, once it has copied the
/// WAL without holding up commits, briefly holds the writer to copy the
/// last few frames, so the next commit starts the WAL over (8 MiB of 2 KiB
/// pages; 16 MiB in a database created with 4 KiB pages).
const WAL_RESTART_FRAMES: i64 = 4_096;
/// Most frames left to copy for the checkpointer to finish under the
/// writer (512 KiB of 2 KiB pages: a few milliseconds, fsync included).
const WAL_HOLD_MAX_FRAMES: i64 = 256;

const SELECT_EVENTS: &str = "SELECT cursor, session_id, seq, timestamp_ms, kind, payload \
                             FROM events WHERE cursor > ?1";

/// A [`Store`] in one SQLite file.
pub struct SqliteStore {
    /// The writer; shared with the checkpointer, which holds it for the
    /// short final copy that lets the WAL start over.
    conn: Arc<Mutex<Connection>>,
    /// Read-only connections: WAL lets them read while a commit (and its
    /// fsync) holds the writer, so event streams and key reads never wait
    /// for a commit.
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    /// Checkpoints the WAL in the background (see [`Checkpointer`]).
    _checkpointer: Checkpointer,
    keys: Keyring,
    path: PathBuf,
    /// Whether `store_keys` already lists the current key (recorded with the first write).
    key_recorded: AtomicBool,
    /// Batches waiting for the next group commit; see `commit`.
    group: Mutex<GroupState>,
    /// Signalled whenever a group commit ends.
    group_done: Condvar,
    /// What the writer knows without reading it back (see [`Tallies`]).
    tallies: Mutex<Tallies>,
    /// Transactions run by `commit_group`, to observe grouping in tests.
    #[cfg(test)]
    groups: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it with mode 0600 if needed) the database at `path`, migrates its schema
    /// and checks that `keys` agree with the keys it was written with.
    pub fn open(path: &Path, keys: Keyring) -> Result<Self, StoreError> {
        Self::open_with(path, keys, Checkpointing::default())
    }

    fn open_with(
        path: &Path,
        keys: Keyring,
        checkpointing: Checkpointing,
    ) -> Result<Self, StoreError> {
        // Created by us first so the mode is 0600; SQLite gives the -wal and -shm files the
        // mode of the database file.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| StoreError::Io {
                action: "create database",
                path: path.to_owned(),
                source,
            })?;
        let mut conn = open_writer(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Only a database without tables yet takes it (before WAL mode).
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "database refused WAL mode (journal_mode is {mode})"
            )));
        }
        // FULL: a commit is on disk (WAL fsynced) before commit() returns — the durability
        // rules ack to WhatsApp only after that. The writer's VFS needs it too (`wal_vfs`).
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "secure_delete", "FAST")?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Truncate the WAL after checkpoints instead of letting it keep its peak size.
        conn.pragma_update(None, "journal_size_limit", 0x400_0000)?;
        conn.pragma_update(None, "trusted_schema", false)?;
        conn.pragma_update(None, "mmap_size", MMAP_SIZE)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        if migrate(&mut conn, &keys)? {
            // The upgrade sealed values the database held in clear: rebuild the file and empty
            // the WAL so no copy of them stays in freed pages or old frames.
            tracing::info!(
                path = %path.display(),
                "compacting the database after sealing clear data"
            );
            // Not fatal: the data is sealed either way, and a failed open would not retry the
            // compaction (the migration is committed). The operator is told what to run.
            if let Err(e) = conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);") {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "could not compact the database; copies of values formerly in clear may \
                     remain in free pages until `sqlite3 <db> VACUUM` is run"
                );
            }
        }
        check_keys(&conn, &keys)?;
        // Commits never checkpoint: a checkpoint's copy and fsync of the
        // database file would stall the commit that triggered it (and
        // every session waiting behind it). The checkpointer does it.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open(path)?;
            reader.busy_timeout(BUSY_TIMEOUT)?;
            reader.pragma_update(None, "query_only", true)?;
            reader.pragma_update(None, "trusted_schema", false)?;
            // No mapping for readers: a read transaction that starts after
            // any commit unmaps the whole file and faults its pages back in
            // (SQLite resets a reader's view when the WAL changed), which
            // under a stream of Sends was every read; `pread` of the few
            // pages a lookup needs costs less.
            reader.pragma_update(None, "mmap_size", 0)?;
            reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            readers.push(Mutex::new(reader));
        }
        let conn = Arc::new(Mutex::new(conn));
        let checkpointer = Checkpointer::start(path, Arc::downgrade(&conn), checkpointing)?;
        Ok(SqliteStore {
            conn,
            readers,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            _checkpointer: checkpointer,
            keys,
            path: path.to_owned(),
            key_recorded: AtomicBool::new(false),
            group: Mutex::default(),
            group_done: Condvar::new(),
            tallies: Mutex::default(),
            #[cfg(test)]
            groups: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Re-seals every secret not sealed with the current key (quarantining unreadable ones).
    /// Works in chunks; other calls proceed in between.
    fn reseal_secrets(&self) -> Result<u64, StoreError> {
        let mut resealed: u64 = 0;
        let mut after: i64 = 0;
        loop {
            let mut conn = self.lock();
            let rows: Vec<(i64, String, String, Vec<u8>)> = {
                let mut stmt = conn.prepare_cached(
                    "SELECT rowid, session_id, key, record FROM secrets \
                     WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                )?;
                let mapped = stmt.query_map(params![after, CHUNK], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?;
                mapped.collect::<Result<_, _>>()?
            };
            let Some((last, ..)) = rows.last() else {
                break;
            };
            after = *last;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            self.record_current_key(&tx)?;
            for (rowid, session, key, record) in rows {
                let id = parse_session_id(session)?;
                match self.keys.open(&id, &key, &record) {
                    Ok(opened) if opened.stale => {
                        let fresh = self.keys.seal(&mut OsRng, &id, &key, &opened.plaintext)?;
                        tx.prepare_cached("UPDATE secrets SET record = ?2 WHERE rowid = ?1")?
                            .execute(params![rowid, fresh])?;
                        resealed += 1;
                    }
                    Ok(_) => {}
                    Err(why) => move_to_quarantine(&tx, &id, &key, &why.to_string(), now_ms())?,
                }
            }
            tx.commit()?;
            self.key_recorded.store(true, Ordering::Relaxed);
        }
        Ok(resealed)
    }

    /// Re-seals every event payload not sealed with the current key (quarantining unreadable
    /// ones), in chunks.
    fn reseal_events(&self) -> Result<u64, StoreError> {
        let mut resealed: u64 = 0;
        let mut after: i64 = 0;
        loop {
            let mut conn = self.lock();
            let rows: Vec<StoredEvent> = {
                let mut stmt = conn.prepare_cached(
                    "SELECT cursor, session_id, seq, timestamp_ms, kind, payload FROM events \
                     WHERE cursor > ?1 ORDER BY cursor LIMIT ?2",
                )?;
                let mapped = stmt.query_map(params![after, CHUNK], stored_event_from_row)?;
                mapped.collect::<Result<_, _>>()?
            };
            let Some(last) = rows.last() else {
                break;
            };
            after = last.cursor;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            self.record_current_key(&tx)?;
            let at = now_ms();
            for row in rows {
                let (id, place) = row.place()?;
                match open_event(&self.keys, &id, &place, &row.payload) {
                    Ok(opened) if opened.stale => {
                        let fresh =
                            self.keys
                                .seal_event(&mut OsRng, &id, &place, &opened.plaintext)?;
                        tx.prepare_cached("UPDATE events SET payload = ?2 WHERE cursor = ?1")?
                            .execute(params![row.cursor, fresh])?;
                        resealed += 1;
                    }
                    Ok(_) => {}
                    Err(why) => quarantine_event(&tx, &id, row.cursor, &why.to_string(), at)?,
                }
            }
            tx.commit()?;
            self.key_recorded.store(true, Ordering::Relaxed);
        }
        Ok(resealed)
    }

    /// Re-seals every session profile not sealed with the current key (quarantining unreadable
    /// ones). Rows are few (one per session), so one pass under the lock.
    fn reseal_profiles(&self) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let rows: Vec<(String, Vec<u8>)> = {
            let mut stmt = conn.prepare_cached(
                "SELECT id, profile FROM sessions WHERE profile IS NOT NULL ORDER BY id",
            )?;
            let mapped = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            mapped.collect::<Result<_, _>>()?
        };
        if rows.is_empty() {
            // Nothing to seal: the current key must not be listed as having written anything.
            return Ok(0);
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        self.record_current_key(&tx)?;
        let mut resealed: u64 = 0;
        let at = now_ms();
        for (session, sealed) in rows {
            let id = parse_session_id(session)?;
            match profile::reseal(&self.keys, &mut OsRng, &id, &sealed)? {
                Ok(Some(fresh)) => {
                    tx.prepare_cached("UPDATE sessions SET profile = ?2 WHERE id = ?1")?
                        .execute(params![id.as_str(), fresh])?;
                    resealed += 1;
                }
                Ok(None) => {}
                Err(why) => quarantine_profile(&tx, &id, &why.to_string(), at)?,
            }
        }
        tx.commit()?;
        self.key_recorded.store(true, Ordering::Relaxed);
        Ok(resealed)
    }

    /// Writes the session row with its personal part sealed (listing the sealing key in
    /// `store_keys` within the same write); returns whether anything was sealed.
    fn upsert_session(
        &self,
        conn: &Connection,
        record: &SessionRecord,
    ) -> Result<bool, StoreError> {
        let sealed = profile::seal(&self.keys, &mut OsRng, record)?;
        let any = sealed.is_some();
        if any {
            self.record_current_key(conn)?;
        }
        upsert_session(conn, record, sealed)?;
        Ok(any)
    }

    /// Session rows as stored, their profiles opened; unreadable profiles are quarantined and
    /// the rows returned without them.
    fn read_sessions(
        &self,
        conn: &mut Connection,
        rows: Vec<StoredSession>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut records = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for StoredSession {
            mut record,
            profile,
        } in rows
        {
            if let Some(sealed) = profile {
                if let Err(why) = profile::open_into(&self.keys, &mut record, &sealed) {
                    unreadable.push((record.id.clone(), why.to_string()));
                }
            }
            records.push(record);
        }
        if !unreadable.is_empty() {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let at = now_ms();
            for (id, reason) in &unreadable {
                quarantine_profile(&tx, id, reason, at)?;
            }
            tx.commit()?;
        }
        Ok(records)
    }

    /// Lists the current key in `store_keys` within the caller's write, once per process.
    fn record_current_key(&self, conn: &Connection) -> Result<(), StoreError> {
        if self.key_recorded.load(Ordering::Relaxed) {
            return Ok(());
        }
        if let Some((key_id, check)) = self.keys.key_checks().into_iter().next() {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO store_keys (key_id, key_check, first_used_at_ms) \
                 VALUES (?1, ?2, ?3)",
            )?
            .execute(params![key_id, check, now_ms()])?;
        }
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn group(&self) -> MutexGuard<'_, GroupState> {
        // Only pushes, drains and flag flips happen under this lock: never half-done.
        self.group.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits `group` in one transaction. Batches rarely fail, so a group is
    /// first written plainly; only when a batch fails is the group written
    /// again with each batch inside its own savepoint, so the failing batch
    /// rolls back alone. (A savepoint per batch on every commit cost about
    /// 4 % of the gateway's CPU under load: a statement journal in memory for
    /// each.) Every batch's outcome is set before the connection is released.
    fn commit_group(&self, conn: &mut Connection, group: Vec<Pending>) {
        #[cfg(test)]
        self.groups.fetch_add(1, Ordering::Relaxed);
        if group.len() > 1 {
            if let Ok(results) = self.commit_plainly(conn, &group) {
                for (Pending { outcome, .. }, result) in group.into_iter().zip(results) {
                    outcome.set(Ok(result));
                }
                return;
            }
        }
        self.commit_apart(conn, group);
    }

    /// The whole group in one transaction, no savepoints: all or nothing.
    fn commit_plainly(
        &self,
        conn: &mut Connection,
        group: &[Pending],
    ) -> Result<Vec<Vec<EventRecord>>, StoreError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut tallies = self.take_tallies();
        let mut results = Vec::with_capacity(group.len());
        let mut any_sealed = false;
        for pending in group {
            any_sealed |= pending.work.has_put || !pending.work.events.is_empty();
            // An error drops `tx`, which rolls the whole group back (and
            // the tallies with it).
            results.push(self.apply_batch(&tx, &pending.work, Some(&mut tallies))?);
        }
        tallies.save_cursor(&tx)?;
        tx.commit()?;
        self.put_tallies(tallies);
        if any_sealed {
            self.key_recorded.store(true, Ordering::Relaxed);
        }
        Ok(results)
    }

    /// The group in one transaction, each batch inside its own savepoint.
    fn commit_apart(&self, conn: &mut Connection, group: Vec<Pending>) {
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                for pending in group {
                    pending.outcome.set(Err(replicate(&e)));
                }
                return;
            }
        };
        let mut results = Vec::with_capacity(group.len());
        let mut any_sealed = false;
        // A batch alone needs no savepoint: if it fails, so does the whole
        // transaction, which holds nothing else. Batches in savepoints
        // read and write the rows themselves, since one may roll back
        // alone; the tallies are forgotten.
        let alone = group.len() == 1;
        let mut tallies = self.take_tallies();
        for Pending { work, outcome } in group {
            let sealed = work.has_put || !work.events.is_empty();
            let result = if alone {
                self.apply_batch(&tx, &work, Some(&mut tallies))
                    .and_then(|events| tallies.save_cursor(&tx).map(|()| events))
            } else {
                tx.savepoint().map_err(StoreError::from).and_then(|sp| {
                    // An error drops `sp`, which rolls back this batch alone.
                    let events = self.apply_batch(&sp, &work, None)?;
                    sp.commit()?;
                    Ok(events)
                })
            };
            any_sealed |= sealed && result.is_ok();
            results.push((outcome, result));
        }
        let failed_alone = alone && results.iter().any(|(_, r)| r.is_err());
        let committed = if failed_alone {
            tx.rollback()
        } else {
            tx.commit()
        };
        match committed {
            Ok(()) => {
                if alone && !failed_alone {
                    self.put_tallies(tallies);
                }
                if any_sealed {
                    self.key_recorded.store(true, Ordering::Relaxed);
                }
                for (outcome, result) in results {
                    outcome.set(result);
                }
            }
            Err(e) => {
                for (outcome, result) in results {
                    outcome.set(result.and_then(|_| Err(replicate(&e))));
                }
            }
        }
    }

    /// One batch, in the order the trait documents: row, secret ops, events.
    /// With `tallies`, the counter and seqs come from them and the cursor
    /// is left for [`Tallies::save_cursor`]; without, from and to the rows.
    fn apply_batch(
        &self,
        conn: &Connection,
        work: &Work,
        mut tallies: Option<&mut Tallies>,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let id = &work.id;
        if let Some(record) = &work.session {
            // A sealed profile lists the key within this transaction, but only secret and
            // event writes set `key_recorded` after a group: a batch carrying just the row may
            // repeat the (harmless) INSERT OR IGNORE in a later write.
            self.upsert_session(conn, record)?;
        }
        let known = tallies.as_ref().is_some_and(|t| t.sessions.contains(id));
        if work.has_put && !known {
            let exists = conn
                .prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")?
                .exists([id.as_str()])?;
            if !exists {
                return Err(StoreError::UnknownSession(id.clone()));
            }
            if let Some(t) = tallies.as_deref_mut() {
                t.sessions.insert(id.clone());
            }
        }
        if work.has_put || !work.events.is_empty() {
            self.record_current_key(conn)?;
        }
        for op in &work.ops {
            apply_secret_op(conn, id, op)?;
        }
        append_events(conn, &self.keys, id, &work.events, tallies)
    }

    /// The tallies, for a transaction to use and put back when it commits.
    fn take_tallies(&self) -> Tallies {
        std::mem::take(&mut *self.tallies.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn put_tallies(&self, tallies: Tallies) {
        *self.tallies.lock().unwrap_or_else(PoisonError::into_inner) = tallies;
    }

    /// Validates and seals `batch` and queues it for the next group commit.
    fn enqueue(&self, id: &SessionId, batch: Batch) -> Result<Arc<Outcome>, StoreError> {
        batch.validate(id)?;
        // Seal before taking the lock: the AES work needs no database state.
        let mut has_put = false;
        let ops = batch
            .secrets
            .into_iter()
            .map(|op| {
                Ok(match op {
                    SecretOp::Put { key, value } => {
                        has_put = true;
                        // Nonces from the thread's CSPRNG (seeded from the OS): a
                        // `getrandom` call per record was 1 % of the CPU of a Send.
                        let record = self.keys.seal(&mut rand::thread_rng(), id, &key, &value)?;
                        SealedOp::Put { key, record }
                    }
                    SecretOp::Delete { key } => SealedOp::Delete { key },
                    SecretOp::DeletePrefix { prefix } => SealedOp::DeletePrefix { prefix },
                    SecretOp::DeleteAll => SealedOp::DeleteAll,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let outcome: Arc<Outcome> = Arc::default();
        self.group().queue.push(Pending {
            work: Work {
                id: id.clone(),
                session: batch.session,
                ops,
                has_put,
                events: batch.events,
            },
            outcome: Arc::clone(&outcome),
        });
        Ok(outcome)
    }

    /// Waits for a queued batch's outcome. Group commit: when no group is
    /// being written, the caller becomes the writer and commits every queued
    /// batch in one transaction (one fsync); otherwise it waits for the
    /// current group to end and then either finds its outcome or writes the
    /// next group.
    fn settle(&self, outcome: &Outcome) -> Result<Vec<EventRecord>, StoreError> {
        let mut state = self.group();
        loop {
            if let Some(result) = outcome.take() {
                return result;
            }
            if !state.writing {
                state.writing = true;
                let group = std::mem::take(&mut state.queue);
                drop(state);
                {
                    // Clears `writing` and wakes the waiters even if the commit panics.
                    let _end = GroupEnd(self);
                    let mut conn = self.lock();
                    self.commit_group(&mut conn, group);
                }
                // Our batch was queued before we took over, so this group decided it.
                return outcome.take().unwrap_or_else(|| {
                    Err(StoreError::Unavailable(
                        "the commit was lost by a writer that panicked".into(),
                    ))
                });
            }
            state = self
                .group_done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A read-only connection: a free one if there is, else the next in turn.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        for reader in &self.readers {
            if let Ok(guard) = reader.try_lock() {
                return guard;
            }
        }
        let n = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len().max(1);
        match self.readers.get(n) {
            Some(reader) => reader.lock().unwrap_or_else(PoisonError::into_inner),
            None => self.lock(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock drops any open `Transaction`, which rolls back, so
        // the connection behind a poisoned lock is still in a clean state.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves unreadable records to quarantine in one transaction; returns the error for the
    /// first one.
    fn quarantine(
        &self,
        conn: &mut Connection,
        id: &SessionId,
        bad: Vec<(String, String)>,
    ) -> Result<StoreError, StoreError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let at = now_ms();
        for (key, reason) in &bad {
            move_to_quarantine(&tx, id, key, reason, at)?;
        }
        tx.commit()?;
        let (key, reason) = bad.into_iter().next().unwrap_or_default();
        Ok(StoreError::Quarantined {
            session: id.clone(),
            key,
            reason,
        })
    }

    /// Re-seals records read with an older key under the current one. Best effort: a failure
    /// leaves the old (still readable) record in place.
    fn reseal(&self, conn: &Connection, id: &SessionId, stale: &[(&str, &[u8], &[u8])]) {
        for (key, old, plaintext) in stale {
            let result = self
                .record_current_key(conn)
                .and_then(|()| self.keys.seal(&mut OsRng, id, key, plaintext))
                .and_then(|fresh| {
                    conn.prepare_cached(
                        "UPDATE secrets SET record = ?4 \
                         WHERE session_id = ?1 AND key = ?2 AND record = ?3",
                    )?
                    .execute(params![id.as_str(), key, old, fresh])?;
                    Ok(())
                });
            match result {
                Ok(()) => self.key_recorded.store(true, Ordering::Relaxed),
                Err(e) => tracing::warn!(
                    session = %id,
                    error = %e,
                    "could not re-seal a secret under the current key"
                ),
            }
        }
    }
}

/// Rows only the writer changes, as the last commit left them, so a
/// group commit need not read them back for every batch: the last cursor,
/// the last seq of sessions that appended events, and sessions known to
/// exist. Before this, a Send's three batches each read the counter, their
/// session's seq and row, and wrote the counter: 8 of its ~18 statements.
///
/// Used only with the writer's connection locked. A transaction takes the
/// tallies and puts them back when it commits; one that fails drops them,
/// and the next reads the rows again.
#[derive(Default)]
struct Tallies {
    cursor: Option<u64>,
    /// Whether `cursor` is ahead of the `counters` row in this transaction.
    cursor_unsaved: bool,
    seqs: HashMap<SessionId, u64>,
    sessions: HashSet<SessionId>,
}

impl Tallies {
    /// Sessions remembered at most (a few MB); past it they start over.
    const MAX_SESSIONS: usize = 100_000;

    /// Writes the cursor to its row if events moved it.
    fn save_cursor(&mut self, tx: &Connection) -> Result<(), StoreError> {
        if let (true, Some(cursor)) = (self.cursor_unsaved, self.cursor) {
            write_counter(tx, cursor)?;
        }
        self.cursor_unsaved = false;
        if self.seqs.len() > Self::MAX_SESSIONS {
            self.seqs.clear();
        }
        if self.sessions.len() > Self::MAX_SESSIONS {
            self.sessions.clear();
        }
        Ok(())
    }
}

/// Batches waiting for a writer, and whether a group is being written right now.
#[derive(Default)]
struct GroupState {
    queue: Vec<Pending>,
    writing: bool,
}

/// Ends a group commit on drop: clears the flag and wakes every waiting caller.
struct GroupEnd<'a>(&'a SqliteStore);

impl Drop for GroupEnd<'_> {
    fn drop(&mut self) {
        self.0.group().writing = false;
        self.0.group_done.notify_all();
    }
}

/// A batch waiting for the next group commit.
struct Pending {
    work: Work,
    outcome: Arc<Outcome>,
}

/// A validated batch with its secrets sealed.
struct Work {
    id: SessionId,
    session: Option<SessionRecord>,
    ops: Vec<SealedOp>,
    has_put: bool,
    events: Vec<NewEvent>,
}

/// Where the writer that commits a batch leaves its result for the caller.
#[derive(Default)]
struct Outcome(Mutex<Option<Result<Vec<EventRecord>, StoreError>>>);

impl Outcome {
    fn set(&self, result: Result<Vec<EventRecord>, StoreError>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
    }

    fn take(&self) -> Option<Result<Vec<EventRecord>, StoreError>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// A secret op with its value already sealed, ready for SQL.
enum SealedOp {
    Put { key: String, record: Vec<u8> },
    Delete { key: String },
    DeletePrefix { prefix: String },
    DeleteAll,
}

/// A thread with its own connection that checkpoints the WAL in the
/// background, so commits only append.
///
/// A PASSIVE checkpoint never blocks the writer, but under a steady stream
/// of commits it never catches up either: SQLite starts the WAL over only
/// when a commit begins with every frame copied, and new frames arrive
/// while the checkpoint runs. The WAL then grows without bound (tens of MB
/// a second at thousands of Sends), every append extends the file (the
/// kernel zero-fills each new block) and reads search an ever larger WAL
/// index. So once the WAL is past [`WAL_RESTART_FRAMES`] frames, the copy that
/// has just caught up (almost) is finished while holding the writer: only
/// the frames of the last few commits remain to copy, and the next commit
/// starts the WAL from its beginning, overwriting blocks already there.
/// Stops and is joined when the store is dropped.
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// When the checkpointer runs and when it holds the writer.
#[derive(Debug, Clone, Copy)]
struct Checkpointing {
    every: Duration,
    restart_frames: i64,
}

impl Default for Checkpointing {
    fn default() -> Self {
        Self {
            every: CHECKPOINT_EVERY,
            restart_frames: WAL_RESTART_FRAMES,
        }
    }
}

impl Checkpointer {
    fn start(
        path: &Path,
        writer: Weak<Mutex<Connection>>,
        tuning: Checkpointing,
    ) -> Result<Self, StoreError> {
        let conn = open_checkpointer(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wagate-checkpoint".into())
            .spawn(move || {
                // A full disk fails every round, ten a second.
                let mut streak = crate::streak::FailureStreak::default();
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(tuning.every)
                {
                    let outcome = passive_checkpoint(&conn).and_then(|wal| {
                        // Only a copy that (almost) caught up is finished
                        // under the writer: what is left is a few commits'
                        // frames, not a backlog that would stall commits.
                        if wal.frames > tuning.restart_frames
                            && wal.frames - wal.copied <= WAL_HOLD_MAX_FRAMES
                        {
                            if let Some(writer) = writer.upgrade() {
                                let writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
                                passive_checkpoint(&writer)?;
                            }
                        }
                        Ok(())
                    });
                    match outcome {
                        Ok(()) => {
                            if let Some(failures) = streak.recovered() {
                                tracing::info!(failures, "WAL checkpoints work again");
                            }
                        }
                        Err(e) => {
                            if streak.failed() {
                                tracing::warn!("WAL checkpoint failed (repeats are not logged until it works again): {e}");
                            } else {
                                tracing::debug!("WAL checkpoint failed: {e}");
                            }
                        }
                    }
                    if writer.strong_count() == 0 {
                        break;
                    }
                }
                // A last full checkpoint leaves a short WAL behind.
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            })
            .map_err(|source| StoreError::Io {
                action: "start the checkpoint thread for",
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// The writer's connection: through the VFS that writes a commit's WAL
/// frames with one `pwrite` per 64 KiB (see `wal_vfs`; it relies on every
/// commit syncing, `synchronous = FULL`).
fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    open_through(
        path,
        super::wal_vfs::NAME,
        "WAL frames are written one by one",
    )
}

/// The checkpointer's connection: through the VFS that pushes its writes of
/// the database file to the disk in small steps (see `paced_db`).
fn open_checkpointer(path: &Path) -> rusqlite::Result<Connection> {
    open_through(
        path,
        super::wal_vfs::PACED_NAME,
        "checkpoints write the database file unpaced",
    )
}

/// A connection through our VFS `vfs`, or SQLite's own should ours not
/// register (`without` says what is then lost).
fn open_through(path: &Path, vfs: &std::ffi::CStr, without: &str) -> rusqlite::Result<Connection> {
    match super::wal_vfs::register() {
        Ok(()) => Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs),
        Err(e) => {
            tracing::warn!("{without}: {e}");
            Connection::open(path)
        }
    }
}

/// Frames in the WAL after a checkpoint, and how many of them are in the
/// database file.
struct WalFrames {
    frames: i64,
    copied: i64,
}

/// Copies what it can of the WAL into the database without blocking
/// anyone.
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<WalFrames> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(WalFrames {
            frames: row.get(1)?,
            copied: row.get(2)?,
        })
    })
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Store for SqliteStore {
    fn put_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let sealed = self.upsert_session(&tx, record)?;
        tx.commit()?;
        if sealed {
            self.key_recorded.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let mut conn = self.lock();
        let row = conn
            .prepare_cached(&format!("{SELECT_SESSIONS} WHERE id = ?1"))?
            .query_row([id.as_str()], session_from_row)
            .optional()?;
        let Some(row) = row else {
            return Ok(None);
        };
        let records = self.read_sessions(&mut conn, vec![row?])?;
        Ok(records.into_iter().next())
    }

    fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let mut conn = self.lock();
        let rows = {
            let mut stmt = conn.prepare_cached(&format!("{SELECT_SESSIONS} ORDER BY id"))?;
            let mapped = stmt.query_map([], session_from_row)?;
            mapped
                .map(|row| row?)
                .collect::<Result<Vec<_>, StoreError>>()?
        };
        self.read_sessions(&mut conn, rows)
    }

    fn delete_session(&self, id: &SessionId) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Explicit rather than relying on the cascade alone: secrets must go even if a
        // connection was opened without foreign keys.
        tx.prepare_cached("DELETE FROM secrets WHERE session_id = ?1")?
            .execute([id.as_str()])?;
        tx.prepare_cached("DELETE FROM sessions WHERE id = ?1")?
            .execute([id.as_str()])?;
        // Under the writer's lock, so no group commit is between taking
        // and putting back the tallies.
        self.tallies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sessions
            .remove(id);
        tx.commit()?;
        Ok(())
    }

    fn secret(&self, id: &SessionId, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let record: Option<Vec<u8>> = self
            .reader()
            .prepare_cached("SELECT record FROM secrets WHERE session_id = ?1 AND key = ?2")?
            .query_row(params![id.as_str(), key], |r| r.get(0))
            .optional()?;
        let Some(record) = record else {
            return Ok(None);
        };
        match self.keys.open(id, key, &record) {
            Ok(opened) => {
                if opened.stale {
                    self.reseal(&self.lock(), id, &[(key, &record, &opened.plaintext)]);
                }
                Ok(Some(opened.plaintext))
            }
            Err(why) => Err(self.quarantine(
                &mut self.lock(),
                id,
                vec![(key.to_owned(), why.to_string())],
            )?),
        }
    }

    fn secrets_with_prefix(
        &self,
        id: &SessionId,
        prefix: &str,
    ) -> Result<Vec<(String, Zeroizing<Vec<u8>>)>, StoreError> {
        let mut conn = self.lock();
        let rows: Vec<(String, Vec<u8>)> = {
            let upper = prefix_upper_bound(prefix);
            let mut stmt = match upper {
                Some(_) => conn.prepare_cached(
                    "SELECT key, record FROM secrets \
                     WHERE session_id = ?1 AND key >= ?2 AND key < ?3 ORDER BY key",
                )?,
                None => conn.prepare_cached(
                    "SELECT key, record FROM secrets \
                     WHERE session_id = ?1 AND key >= ?2 AND ?3 IS NULL ORDER BY key",
                )?,
            };
            let mapped = stmt.query_map(params![id.as_str(), prefix, upper], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            mapped.collect::<Result<_, _>>()?
        };
        let mut found = Vec::with_capacity(rows.len());
        let mut stale = Vec::new();
        let mut unreadable = Vec::new();
        for (key, record) in &rows {
            match self.keys.open(id, key, record) {
                Ok(opened) => {
                    if opened.stale {
                        stale.push(found.len());
                    }
                    found.push((key.clone(), opened.plaintext));
                }
                Err(why) => unreadable.push((key.clone(), why.to_string())),
            }
        }
        if !unreadable.is_empty() {
            return Err(self.quarantine(&mut conn, id, unreadable)?);
        }
        if !stale.is_empty() {
            let stale: Vec<(&str, &[u8], &[u8])> = stale
                .into_iter()
                .filter_map(|i| {
                    let (key, value) = found.get(i)?;
                    let (_, record) = rows.get(i)?;
                    Some((key.as_str(), record.as_slice(), value.as_slice()))
                })
                .collect();
            self.reseal(&conn, id, &stale);
        }
        Ok(found)
    }

    fn commit(&self, id: &SessionId, batch: Batch) -> Result<Vec<EventRecord>, StoreError> {
        let outcome = self.enqueue(id, batch)?;
        self.settle(&outcome)
    }

    fn commit_many(
        &self,
        batches: Vec<(SessionId, Batch)>,
    ) -> Vec<Result<Vec<EventRecord>, StoreError>> {
        // Queued together, so the first to settle writes them all in one
        // group (one transaction, one fsync).
        let outcomes: Vec<_> = batches
            .into_iter()
            .map(|(id, batch)| self.enqueue(&id, batch))
            .collect();
        outcomes
            .into_iter()
            .map(|outcome| outcome.and_then(|o| self.settle(&o)))
            .collect()
    }

    fn events_page(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // `after` beyond i64 cannot precede any stored cursor.
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Lists travel as one JSON parameter so the SQL text (and its cached statement) does not
        // depend on their length. Session ids are [A-Za-z0-9_-] and kinds are numbers, so
        // plain quoting is exact JSON.
        let (session_clause, sessions) = match filter.sessions.as_slice() {
            [] => ("?2 IS NULL", None),
            // One session: its index range is already in cursor order.
            [one] => ("session_id = ?2", Some(one.as_str().to_owned())),
            // Several: walk the log in cursor order and test membership (the unary `+` keeps
            // the planner off the session index, whose per-session ranges would need a sort
            // of every remaining match on each page).
            many => {
                let quoted: Vec<String> =
                    many.iter().map(|s| format!("\"{}\"", s.as_str())).collect();
                (
                    "+session_id IN (SELECT value FROM json_each(?2))",
                    Some(format!("[{}]", quoted.join(","))),
                )
            }
        };
        let (kind_clause, kinds) = if filter.kinds.is_empty() {
            ("?3 IS NULL", None)
        } else {
            let list: Vec<String> = filter.kinds.iter().map(u8::to_string).collect();
            (
                "kind IN (SELECT value FROM json_each(?3))",
                Some(format!("[{}]", list.join(","))),
            )
        };
        let sql = format!(
            "{SELECT_EVENTS} AND {session_clause} AND {kind_clause} ORDER BY cursor LIMIT ?4"
        );
        let mut events = Vec::new();
        let mut unreadable = Vec::new();
        {
            let conn = self.reader();
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![after, sessions, kinds, limit],
                stored_event_from_row,
            )?;
            let mut bytes = 0usize;
            // Rows are stepped lazily: stopping here reads no further.
            for row in rows {
                if bytes >= max_bytes {
                    break;
                }
                let row = row?;
                let (id, place) = row.place()?;
                let payload = match open_event(&self.keys, &id, &place, &row.payload) {
                    Ok(opened) => opened.plaintext.to_vec(),
                    Err(why) => {
                        unreadable.push((id.clone(), row.cursor, why.to_string()));
                        Vec::new()
                    }
                };
                bytes = bytes.saturating_add(payload.len());
                events.push(EventRecord {
                    cursor: place.cursor,
                    session_id: id,
                    seq: place.seq,
                    timestamp_ms: place.timestamp_ms,
                    kind: place.kind,
                    payload,
                });
            }
        }
        if !unreadable.is_empty() {
            let mut conn = self.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let at = now_ms();
            for (id, cursor, reason) in &unreadable {
                quarantine_event(&tx, id, *cursor, reason, at)?;
            }
            tx.commit()?;
        }
        Ok(events)
    }

    fn last_cursor(&self) -> Result<u64, StoreError> {
        let conn = self.lock();
        read_counter(&conn)
    }

    fn prune_events(&self, retention: &Retention, now_ms: i64) -> Result<u64, StoreError> {
        let mut total: u64 = 0;
        if let Some(cutoff) = retention.cutoff_ms(now_ms) {
            loop {
                // Lock per chunk so sessions can commit between chunks.
                let conn = self.lock();
                let n = conn
                    .prepare_cached(
                        "DELETE FROM events WHERE cursor IN \
                         (SELECT cursor FROM events WHERE timestamp_ms < ?1 LIMIT ?2)",
                    )?
                    .execute(params![cutoff, PRUNE_CHUNK])?;
                total = total.saturating_add(count(n));
                if count(n) < PRUNE_CHUNK.unsigned_abs() {
                    break;
                }
            }
        }
        if let Some(max) = retention.max_per_session {
            let max = i64::try_from(max).unwrap_or(i64::MAX);
            let over: Vec<String> = {
                let conn = self.lock();
                let mut stmt = conn.prepare_cached(OVER_COUNT_CANDIDATES)?;
                let rows = stmt.query_map([max], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for session in over {
                let conn = self.lock();
                // The (max+1)-th newest cursor and everything before it go.
                let n = conn
                    .prepare_cached(
                        "DELETE FROM events WHERE session_id = ?1 AND cursor <= \
                         (SELECT cursor FROM events WHERE session_id = ?1 \
                          ORDER BY cursor DESC LIMIT 1 OFFSET ?2)",
                    )?
                    .execute(params![session, max])?;
                total = total.saturating_add(count(n));
            }
        }
        Ok(total)
    }

    fn redact_events(&self, kind: u8, before_ms: i64) -> Result<u64, StoreError> {
        let conn = self.lock();
        // Found through an index of only the events of `kind` that still have a payload (a
        // handful: QR codes live a minute), not among every event older than `before_ms`:
        // that read the whole log under the writer at each run, stalling every commit for as
        // long (58 ms at 60,000 events, and it grows with the log). The kind is in the SQL
        // text, not a parameter, so that SQLite can tell the partial index covers the
        // statement. The index is made on first use, with one read of the log.
        conn.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS events_unredacted_{kind} ON events (timestamp_ms) \
             WHERE kind = {kind} AND length(payload) > 0"
        ))?;
        // secure_delete (set at open) overwrites the freed bytes in the database file.
        let n = conn
            .prepare_cached(&redact_sql(kind))?
            .execute([before_ms])?;
        Ok(count(n))
    }

    /// Also forgets the older keys in `store_keys`, so they can be dropped from the keyring.
    fn reseal_all(&self) -> Result<u64, StoreError> {
        let resealed = self
            .reseal_secrets()?
            .saturating_add(self.reseal_events()?)
            .saturating_add(self.reseal_profiles()?);
        let conn = self.lock();
        conn.execute(
            "DELETE FROM store_keys WHERE key_id != ?1",
            [self.keys.current_id()],
        )?;
        Ok(resealed)
    }

    fn quarantined(&self) -> Result<Vec<QuarantineEntry>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT session_id, key, reason, quarantined_at_ms FROM quarantine ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut entries = Vec::new();
        for row in rows {
            let (session, key, reason, at) = row?;
            entries.push(QuarantineEntry {
                session_id: parse_session_id(session)?,
                key,
                reason,
                quarantined_at_ms: at,
            });
        }
        Ok(entries)
    }

    fn release_memory(&self) {
        // Each connection's page cache keeps the pages it read (up to SQLite's default 2 MB)
        // for good; those of sessions that left are not read again soon. The pages are the
        // database's and come back on demand.
        for conn in std::iter::once(&*self.conn).chain(&self.readers) {
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = conn.execute_batch("PRAGMA shrink_memory") {
                tracing::debug!(error = %e, "could not shrink a connection's page cache");
            }
        }
    }
}

/// Brings the schema to [`SCHEMA_VERSION`]; returns whether values held in clear were sealed (the
/// caller then compacts the file).
fn migrate(conn: &mut Connection, keys: &Keyring) -> Result<bool, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read inside the write transaction: another process may have migrated meanwhile.
    let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(StoreError::Corrupt(format!(
            "negative schema version {found}"
        )));
    }
    if found >= 1 {
        // Refused here too, before anything is sealed with a key the database does not know.
        check_keys(&tx, keys)?;
    }
    let from = usize::try_from(found).unwrap_or(usize::MAX);
    let mut sealed = false;
    for (version, step) in MIGRATIONS.iter().enumerate().skip(from) {
        tx.execute_batch(step)?;
        // The data step of the upgrade to `version + 1`; a new database has no data.
        sealed |= match version {
            1 if found > 0 => seal_clear_events(&tx, keys)?,
            2 => seal_clear_profiles(&tx, keys, found > 0)?,
            _ => false,
        };
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(sealed)
}

/// Seals the JID, push name and metadata that versions 1 and 2 kept in clear columns into each
/// row's `profile` with the current key (listing it in `store_keys`), then drops those columns.
/// Returns whether anything was sealed.
fn seal_clear_profiles(
    tx: &Connection,
    keys: &Keyring,
    has_data: bool,
) -> Result<bool, StoreError> {
    let mut sealed_any = false;
    if has_data {
        let mut records: BTreeMap<String, SessionRecord> = BTreeMap::new();
        {
            let mut stmt = tx.prepare("SELECT id, jid, push_name FROM sessions ORDER BY id")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })?;
            for row in rows {
                let (id, jid, push_name) = row?;
                let mut record = SessionRecord::new(parse_session_id(id.clone())?, 0);
                record.jid = jid;
                record.push_name = push_name;
                records.insert(id, record);
            }
            let mut stmt = tx.prepare("SELECT session_id, key, value FROM session_metadata")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))?;
            for row in rows {
                let (session, k, v) = row?;
                if let Some(record) = records.get_mut(&session) {
                    record.metadata.insert(k, v);
                }
            }
        }
        let mut update = tx.prepare("UPDATE sessions SET profile = ?2 WHERE id = ?1")?;
        for record in records.values() {
            if let Some(sealed) = profile::seal(keys, &mut OsRng, record)? {
                if !sealed_any {
                    record_key(tx, keys)?;
                    sealed_any = true;
                }
                update.execute(params![record.id.as_str(), sealed])?;
            }
        }
    }
    tx.execute_batch(DROP_CLEAR_PROFILES)?;
    Ok(sealed_any)
}

/// Lists the current key in `store_keys`.
fn record_key(tx: &Connection, keys: &Keyring) -> Result<(), StoreError> {
    if let Some((key_id, check)) = keys.key_checks().into_iter().next() {
        tx.execute(
            "INSERT OR IGNORE INTO store_keys (key_id, key_check, first_used_at_ms) \
             VALUES (?1, ?2, ?3)",
            params![key_id, check, now_ms()],
        )?;
    }
    Ok(())
}

/// Seals the event payloads a version 1 database stored in clear, with the current key, and
/// lists that key in `store_keys`. Returns whether there were any.
fn seal_clear_events(tx: &Connection, keys: &Keyring) -> Result<bool, StoreError> {
    let rows: Vec<StoredEvent> = {
        let mut stmt = tx.prepare(
            "SELECT cursor, session_id, seq, timestamp_ms, kind, payload FROM events \
             ORDER BY cursor",
        )?;
        let mapped = stmt.query_map([], stored_event_from_row)?;
        mapped.collect::<Result<_, _>>()?
    };
    if rows.is_empty() {
        return Ok(false);
    }
    record_key(tx, keys)?;
    let mut update = tx.prepare("UPDATE events SET payload = ?2 WHERE cursor = ?1")?;
    for row in rows {
        let (id, place) = row.place()?;
        let sealed = keys.seal_event(&mut OsRng, &id, &place, &row.payload)?;
        update.execute(params![row.cursor, sealed])?;
    }
    Ok(true)
}

/// Refuses a keyring that cannot read what this database holds: a key id it knows with other
/// bytes (a lost or regenerated key), or a missing key id (a rotation that dropped the old key
/// too early). Either would otherwise quarantine secrets on first read.
fn check_keys(conn: &Connection, keys: &Keyring) -> Result<(), StoreError> {
    let known: Vec<(String, Vec<u8>)> = {
        let mut stmt = conn.prepare("SELECT key_id, key_check FROM store_keys ORDER BY key_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let ours = keys.key_checks();
    for (key_id, stored) in known {
        match ours.iter().find(|(id, _)| *id == key_id) {
            Some((_, check)) if check.as_slice() == stored.as_slice() => {}
            Some(_) => return Err(StoreError::KeyMismatch { key_id }),
            None => return Err(StoreError::KeyMissing { key_id }),
        }
    }
    Ok(())
}

/// Copies a secret row into quarantine with its reason, then deletes it.
fn move_to_quarantine(
    tx: &Connection,
    id: &SessionId,
    key: &str,
    reason: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO quarantine (session_id, key, reason, quarantined_at_ms, record) \
         SELECT session_id, key, ?3, ?4, record FROM secrets \
         WHERE session_id = ?1 AND key = ?2",
    )?
    .execute(params![id.as_str(), key, reason, at_ms])?;
    tx.prepare_cached("DELETE FROM secrets WHERE session_id = ?1 AND key = ?2")?
        .execute(params![id.as_str(), key])?;
    Ok(())
}

/// Copies an event's unreadable payload into quarantine with its reason and empties it in the
/// log, where the event keeps its place.
fn quarantine_event(
    tx: &Connection,
    id: &SessionId,
    cursor: i64,
    reason: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    let key = event_key(to_u64(cursor, "cursor")?);
    tx.prepare_cached(
        "INSERT INTO quarantine (session_id, key, reason, quarantined_at_ms, record) \
         SELECT ?1, ?2, ?3, ?4, payload FROM events WHERE cursor = ?5",
    )?
    .execute(params![id.as_str(), key, reason, at_ms, cursor])?;
    tx.prepare_cached("UPDATE events SET payload = X'' WHERE cursor = ?1")?
        .execute([cursor])?;
    Ok(())
}

/// The plaintext of a stored event payload: an empty one is withheld (redacted or quarantined).
fn open_event(
    keys: &Keyring,
    id: &SessionId,
    place: &EventPlace,
    payload: &[u8],
) -> Result<super::crypt::Opened, Unreadable> {
    if payload.is_empty() {
        return Ok(super::crypt::Opened {
            plaintext: Zeroizing::new(Vec::new()),
            stale: false,
        });
    }
    keys.open_event(id, place, payload)
}

/// Writes a session row whose personal part is `profile`, sealed (see [`profile::seal`]).
fn upsert_session(
    tx: &Connection,
    record: &SessionRecord,
    profile: Option<Vec<u8>>,
) -> Result<(), StoreError> {
    // An upsert, never INSERT OR REPLACE: replacing deletes the row and would cascade to the
    // session's secrets.
    tx.prepare_cached(
        "INSERT INTO sessions (id, created_at_ms, desired_online, platform, \
         last_connected_at_ms, logged_out, profile) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (id) DO UPDATE SET created_at_ms = excluded.created_at_ms, \
         desired_online = excluded.desired_online, platform = excluded.platform, \
         last_connected_at_ms = excluded.last_connected_at_ms, \
         logged_out = excluded.logged_out, profile = excluded.profile",
    )?
    .execute(params![
        record.id.as_str(),
        record.created_at_ms,
        record.desired_online,
        record.platform,
        record.last_connected_at_ms,
        record.logged_out,
        profile,
    ])?;
    Ok(())
}

/// Copies a session's unreadable profile into quarantine with its reason and clears it in the
/// row, which stays usable without it.
fn quarantine_profile(
    tx: &Connection,
    id: &SessionId,
    reason: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO quarantine (session_id, key, reason, quarantined_at_ms, record) \
         SELECT id, ?2, ?3, ?4, profile FROM sessions WHERE id = ?1 AND profile IS NOT NULL",
    )?
    .execute(params![id.as_str(), PROFILE_KEY, reason, at_ms])?;
    tx.prepare_cached("UPDATE sessions SET profile = NULL WHERE id = ?1")?
        .execute([id.as_str()])?;
    Ok(())
}

fn apply_secret_op(tx: &Connection, id: &SessionId, op: &SealedOp) -> Result<(), StoreError> {
    let session = id.as_str();
    match op {
        SealedOp::Put { key, record } => {
            tx.prepare_cached(
                "INSERT INTO secrets (session_id, key, record) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (session_id, key) DO UPDATE SET record = excluded.record",
            )?
            .execute(params![session, key, record])?;
        }
        SealedOp::Delete { key } => {
            tx.prepare_cached("DELETE FROM secrets WHERE session_id = ?1 AND key = ?2")?
                .execute(params![session, key])?;
        }
        SealedOp::DeletePrefix { prefix } => match prefix_upper_bound(prefix) {
            Some(upper) => {
                tx.prepare_cached(
                    "DELETE FROM secrets WHERE session_id = ?1 AND key >= ?2 AND key < ?3",
                )?
                .execute(params![session, prefix, upper])?;
            }
            None => {
                tx.prepare_cached("DELETE FROM secrets WHERE session_id = ?1 AND key >= ?2")?
                    .execute(params![session, prefix])?;
            }
        },
        SealedOp::DeleteAll => {
            tx.prepare_cached("DELETE FROM secrets WHERE session_id = ?1")?
                .execute([session])?;
        }
    }
    Ok(())
}

/// Appends `events` to the log of `id`; with `tallies`, its seq and the
/// cursor come from them and the cursor is written by the caller.
fn append_events(
    tx: &Connection,
    keys: &Keyring,
    id: &SessionId,
    events: &[NewEvent],
    tallies: Option<&mut Tallies>,
) -> Result<Vec<EventRecord>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut seq = match tallies.as_ref().and_then(|t| t.seqs.get(id)) {
        Some(seq) => *seq,
        None => {
            let last_seq: i64 = tx
                .prepare_cached("SELECT last_seq FROM event_seqs WHERE session_id = ?1")?
                .query_row([id.as_str()], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            to_u64(last_seq, "seq")?
        }
    };
    let mut cursor = match tallies.as_ref().and_then(|t| t.cursor) {
        Some(cursor) => cursor,
        None => read_counter(tx)?,
    };
    let mut appended = Vec::with_capacity(events.len());
    let mut insert = tx.prepare_cached(
        "INSERT INTO events (cursor, session_id, seq, timestamp_ms, kind, payload) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for event in events {
        seq = seq
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt(format!("seq of {id} overflows")))?;
        cursor = cursor
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("cursor overflows".into()))?;
        let place = EventPlace {
            cursor,
            seq,
            kind: event.kind,
            timestamp_ms: event.timestamp_ms,
        };
        let sealed = keys.seal_event(&mut rand::thread_rng(), id, &place, &event.payload)?;
        insert.execute(params![
            to_i64(cursor)?,
            id.as_str(),
            to_i64(seq)?,
            event.timestamp_ms,
            event.kind,
            sealed,
        ])?;
        appended.push(EventRecord {
            cursor,
            session_id: id.clone(),
            seq,
            timestamp_ms: event.timestamp_ms,
            kind: event.kind,
            payload: event.payload.clone(),
        });
    }
    tx.prepare_cached(
        "INSERT INTO event_seqs (session_id, last_seq) VALUES (?1, ?2) \
         ON CONFLICT (session_id) DO UPDATE SET last_seq = excluded.last_seq",
    )?
    .execute(params![id.as_str(), to_i64(seq)?])?;
    match tallies {
        Some(t) => {
            t.cursor = Some(cursor);
            t.cursor_unsaved = true;
            t.seqs.insert(id.clone(), seq);
        }
        None => write_counter(tx, cursor)?,
    }
    Ok(appended)
}

/// A copy of a SQLite error for every batch of a failed group (rusqlite errors are not Clone);
/// keeps the error code, so retry classification is unchanged.
fn replicate(e: &rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(*code, message.clone()))
        }
        other => StoreError::Unavailable(format!("group commit failed: {other}")),
    }
}

/// Blanks the payloads of events of `kind` older than `?1` (see `redact_events`).
fn redact_sql(kind: u8) -> String {
    format!(
        "UPDATE events SET payload = X'' \
         WHERE kind = {kind} AND length(payload) > 0 AND timestamp_ms < ?1"
    )
}

fn read_counter(conn: &Connection) -> Result<u64, StoreError> {
    let value: i64 = conn
        .prepare_cached("SELECT value FROM counters WHERE name = 'last_cursor'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::Corrupt("the last_cursor counter is missing".into()))?;
    to_u64(value, "cursor")
}

fn write_counter(conn: &Connection, cursor: u64) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE counters SET value = ?1 WHERE name = 'last_cursor'")?
        .execute([to_i64(cursor)?])?;
    Ok(())
}

/// A session row as stored: the clear columns, and the personal part still sealed.
struct StoredSession {
    record: SessionRecord,
    profile: Option<Vec<u8>>,
}

/// A row of [`SELECT_SESSIONS`].
fn session_from_row(r: &Row<'_>) -> rusqlite::Result<Result<StoredSession, StoreError>> {
    let id: String = r.get(0)?;
    let created_at_ms = r.get(1)?;
    let desired_online = r.get(2)?;
    let platform = r.get(3)?;
    let last_connected_at_ms = r.get(4)?;
    let logged_out = r.get(5)?;
    let profile = r.get(6)?;
    Ok(parse_session_id(id).map(|id| StoredSession {
        record: SessionRecord {
            id,
            metadata: BTreeMap::new(),
            created_at_ms,
            desired_online,
            jid: None,
            push_name: None,
            platform,
            last_connected_at_ms,
            logged_out,
        },
        profile,
    }))
}

/// An event row as stored: payload sealed, columns unchecked.
struct StoredEvent {
    cursor: i64,
    session: String,
    seq: i64,
    timestamp_ms: i64,
    kind: u8,
    payload: Vec<u8>,
}

impl StoredEvent {
    /// The session and the place the payload is bound to, checked.
    fn place(&self) -> Result<(SessionId, EventPlace), StoreError> {
        Ok((
            parse_session_id(self.session.clone())?,
            EventPlace {
                cursor: to_u64(self.cursor, "cursor")?,
                seq: to_u64(self.seq, "seq")?,
                kind: self.kind,
                timestamp_ms: self.timestamp_ms,
            },
        ))
    }
}

fn stored_event_from_row(r: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        cursor: r.get(0)?,
        session: r.get(1)?,
        seq: r.get(2)?,
        timestamp_ms: r.get(3)?,
        kind: r.get(4)?,
        payload: r.get(5)?,
    })
}

fn parse_session_id(s: String) -> Result<SessionId, StoreError> {
    SessionId::try_from(s).map_err(|e| StoreError::Corrupt(format!("stored {e}")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what} {v}")))
}

fn count(rows: usize) -> u64 {
    u64::try_from(rows).unwrap_or(u64::MAX)
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("counter {v} exceeds i64")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, keyring, Backend};
    use base64::Engine;
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use tempfile::TempDir;

    struct Sqlite {
        dir: TempDir,
    }

    /// Commits that never pause must not grow the WAL without bound: the
    /// checkpointer has to let it start over now and then.
    #[test]
    fn wal_starts_over_under_continuous_commits() {
        let b = Sqlite::new();
        let tuning = Checkpointing {
            every: Duration::from_millis(300),
            restart_frames: 256,
        };
        let store = Arc::new(
            SqliteStore::open_with(&b.path(), keyring(&[("k1", 1)]), tuning).expect("open"),
        );
        let wal = b.dir.path().join("wagate.db-wal");
        // Two writers back to back, as sessions are under load: some commit
        // is always about to begin, so a checkpoint that does not hold the
        // writer never finds the WAL fully copied at a commit's start.
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let id = sid(&format!("wal{w}"));
                    store
                        .put_session(&SessionRecord::new(id.clone(), 0))
                        .expect("session");
                    let mut rng = StdRng::seed_from_u64(w);
                    let mut value = vec![0u8; 32 * 1024];
                    for n in 0..300 {
                        rng.fill_bytes(&mut value);
                        let batch = Batch::new().put_secret(format!("v{}", n % 8), value.clone());
                        store.commit(&id, batch).expect("commit");
                    }
                })
            })
            .collect();
        // And readers, as event streams and key reads are.
        let mut largest = 0;
        while writers.iter().any(|w| !w.is_finished()) {
            largest = largest.max(fs::metadata(&wal).map_or(0, |m| m.len()));
            let _ = store.secret(&sid("wal0"), "v1").expect("read");
        }
        for writer in writers {
            writer.join().expect("writer");
        }
        // ~20 MB committed (600 × 32 KiB of fresh data, as WAL pages). The
        // WAL file keeps its size when it starts over (it is rewritten from
        // its beginning), so "started over" shows as a file much smaller
        // than what went through it.
        let written = 600 * 32 * 1024;
        assert!(
            largest < written / 4,
            "WAL grew to {largest} bytes for {written} bytes committed"
        );
    }

    impl Sqlite {
        fn new() -> Self {
            Sqlite {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("wagate.db")
        }

        /// A second, plain connection to the same file, as an operator's sqlite3 would be.
        fn raw(&self) -> Connection {
            let conn = Connection::open(self.path()).expect("raw connection");
            conn.busy_timeout(BUSY_TIMEOUT).expect("busy timeout");
            conn
        }
    }

    impl Backend for Sqlite {
        type S = SqliteStore;

        fn open(&mut self, keys: Keyring, previous: Option<SqliteStore>) -> SqliteStore {
            drop(previous);
            SqliteStore::open(&self.path(), keys).expect("open")
        }

        fn raw_secret(&self, _: &SqliteStore, id: &SessionId, key: &str) -> Option<Vec<u8>> {
            self.raw()
                .query_row(
                    "SELECT record FROM secrets WHERE session_id = ?1 AND key = ?2",
                    params![id.as_str(), key],
                    |r| r.get(0),
                )
                .optional()
                .expect("select")
        }

        fn set_raw_secret(&self, _: &SqliteStore, id: &SessionId, key: &str, record: Vec<u8>) {
            self.raw()
                .execute(
                    "INSERT INTO secrets (session_id, key, record) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (session_id, key) DO UPDATE SET record = excluded.record",
                    params![id.as_str(), key, record],
                )
                .expect("raw write");
        }

        fn raw_event(&self, _: &SqliteStore, cursor: u64) -> Option<Vec<u8>> {
            self.raw()
                .query_row(
                    "SELECT payload FROM events WHERE cursor = ?1",
                    [i64::try_from(cursor).expect("small cursor")],
                    |r| r.get(0),
                )
                .optional()
                .expect("select")
        }

        fn set_raw_event(&self, _: &SqliteStore, cursor: u64, record: Vec<u8>) {
            self.raw()
                .execute(
                    "UPDATE events SET payload = ?2 WHERE cursor = ?1",
                    params![i64::try_from(cursor).expect("small cursor"), record],
                )
                .expect("raw write");
        }

        fn at_rest_contains(&self, _: &SqliteStore, needle: &[u8]) -> bool {
            !files_containing(self.dir.path(), needle).is_empty()
        }

        fn raw_profile(&self, _: &SqliteStore, id: &SessionId) -> Option<Vec<u8>> {
            self.raw()
                .query_row(
                    "SELECT profile FROM sessions WHERE id = ?1",
                    [id.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .expect("select")
                .flatten()
        }

        fn set_raw_profile(&self, _: &SqliteStore, id: &SessionId, record: Vec<u8>) {
            self.raw()
                .execute(
                    "UPDATE sessions SET profile = ?2 WHERE id = ?1",
                    params![id.as_str(), record],
                )
                .expect("raw write");
        }

        fn fail_event_kind(&self, _: &SqliteStore, kind: u8) {
            // A real storage-level failure in the middle of the transaction.
            self.raw()
                .execute_batch(&format!(
                    "CREATE TRIGGER inject_fault BEFORE INSERT ON events WHEN NEW.kind = {kind} \
                     BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
                ))
                .expect("create trigger");
        }
    }

    conformance::behaviour_tests!(Sqlite::new());

    fn sid(s: &str) -> SessionId {
        s.parse().expect("valid session id")
    }

    fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
        let mut hits = Vec::new();
        for entry in fs::read_dir(dir).expect("list dir") {
            let path = entry.expect("entry").path();
            let bytes = fs::read(&path).expect("read file");
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(
                    path.file_name()
                        .expect("name")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        hits.sort();
        hits
    }

    #[test]
    fn secrets_never_reach_the_disk_in_plaintext() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wagate.db");
        let keys = Keyring::generate(&mut rng);
        let store_key = keys.to_env_value();
        let mut private_key = [0u8; 32];
        rng.fill_bytes(&mut private_key);
        let s = sid("victim");
        let store = SqliteStore::open(&path, keys.clone()).expect("open");
        store
            .put_session(&SessionRecord::new(s.clone(), 1))
            .expect("put");
        // Several transactions so the WAL holds many frames, including overwritten values.
        let mut creds = b"{\"noise\":".to_vec();
        creds.extend_from_slice(&private_key);
        for round in 0..10u8 {
            store
                .commit(
                    &s,
                    Batch::new()
                        .put_secret("identity", private_key.to_vec())
                        .put_secret(format!("prekey/{round}"), private_key.to_vec())
                        .put_secret("creds", creds.clone())
                        .event(1, 1, b"plain-event-marker".to_vec()),
                )
                .expect("commit");
        }
        let store_key_bytes = {
            let text = store_key.split_once(':').expect("id:key").1.to_owned();
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .expect("base64")
        };

        let scan = |when: &str| {
            let names: Vec<String> = fs::read_dir(dir.path())
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            // The scanner works: non-secret data is found in plaintext.
            assert!(
                !files_containing(dir.path(), b"victim").is_empty(),
                "{when}: session id not found in {names:?}"
            );
            assert_eq!(
                files_containing(dir.path(), b"plain-event-marker"),
                Vec::<String>::new(),
                "{when}: event payload found on disk"
            );
            assert_eq!(
                files_containing(dir.path(), &private_key),
                Vec::<String>::new(),
                "{when}: private key found on disk"
            );
            assert_eq!(
                files_containing(dir.path(), &store_key_bytes),
                Vec::<String>::new(),
                "{when}: store key found on disk"
            );
            names
        };
        let open_names = scan("while open");
        // Still readable through the store.
        assert_eq!(
            store
                .secret(&s, "identity")
                .expect("read")
                .as_deref()
                .map(Vec::as_slice),
            Some(private_key.as_slice())
        );
        assert!(
            open_names.iter().any(|n| n.ends_with("-wal")),
            "WAL present while open: {open_names:?}"
        );
        drop(store);
        scan("after close");
    }

    /// A database as the build of schema `version` left it, with one session row whose
    /// personal columns are in clear.
    fn old_database(b: &Sqlite, version: usize) -> Connection {
        let raw = b.raw();
        raw.pragma_update(None, "journal_mode", "WAL").expect("wal");
        for step in &MIGRATIONS[..version] {
            raw.execute_batch(step).expect("old schema");
        }
        raw.pragma_update(None, "user_version", i64::try_from(version).expect("small"))
            .expect("version");
        raw.execute(
            "INSERT INTO sessions (id, created_at_ms, desired_online, jid, push_name, platform, \
             last_connected_at_ms, logged_out) \
             VALUES ('old', 5, 1, '15550008888:2@s.whatsapp.net', 'Oldname Clearly', 'ios', 6, 0)",
            [],
        )
        .expect("old row");
        raw.execute(
            "INSERT INTO session_metadata (session_id, key, value) \
             VALUES ('old', 'user_id', 'old-user-label')",
            [],
        )
        .expect("old metadata");
        raw.execute(
            "INSERT INTO sessions (id, created_at_ms, desired_online, logged_out) \
             VALUES ('bare', 7, 0, 1)",
            [],
        )
        .expect("bare row");
        raw
    }

    fn old_row() -> SessionRecord {
        let mut r = SessionRecord::new(sid("old"), 5);
        r.jid = Some("15550008888:2@s.whatsapp.net".into());
        r.push_name = Some("Oldname Clearly".into());
        r.platform = Some("ios".into());
        r.last_connected_at_ms = Some(6);
        r.metadata = BTreeMap::from([("user_id".into(), "old-user-label".into())]);
        r
    }

    fn bare_row() -> SessionRecord {
        SessionRecord {
            desired_online: false,
            logged_out: true,
            ..SessionRecord::new(sid("bare"), 7)
        }
    }

    #[test]
    fn version_1_event_payloads_and_rows_are_sealed_on_upgrade() {
        let b = Sqlite::new();
        let raw = old_database(&b, 1);
        raw.execute(
            "INSERT INTO events (cursor, session_id, seq, timestamp_ms, kind, payload) \
             VALUES (1, 'old', 1, 1, 3, CAST('clear-text-of-v1' AS BLOB)), \
                    (2, 'old', 2, 2, 1, X'')",
            [],
        )
        .expect("clear events");
        raw.execute_batch(
            "INSERT INTO event_seqs (session_id, last_seq) VALUES ('old', 2); \
             UPDATE counters SET value = 2 WHERE name = 'last_cursor';",
        )
        .expect("counters");
        drop(raw);
        for needle in [&b"clear-text-of-v1"[..], b"15550008888", b"old-user-label"] {
            assert!(!files_containing(b.dir.path(), needle).is_empty());
        }

        let store = SqliteStore::open(&b.path(), keyring(&[("k1", 1)])).expect("upgrade");
        let events = store
            .events_after(0, &EventFilter::all(), 10)
            .expect("read");
        let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
        assert_eq!(payloads, [&b"clear-text-of-v1"[..], b""]);
        assert_eq!(events[1].seq, 2);
        // The log goes on after the counters it kept, also once its events are gone.
        assert_eq!(store.last_cursor().expect("cursor"), 2);
        let every = Retention {
            max_age_ms: None,
            max_per_session: Some(0),
        };
        assert_eq!(store.prune_events(&every, 0).expect("prune"), 2);
        let next = store
            .commit(&sid("old"), Batch::new().event(3, 9, b"next".to_vec()))
            .expect("append");
        assert_eq!((next[0].seq, next[0].cursor), (3, 3));
        assert_eq!(store.sessions().expect("list"), [bare_row(), old_row()]);
        assert!(store.quarantined().expect("quarantined").is_empty());
        drop(store);
        let raw = b.raw();
        let version: i64 = raw
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        // A database keeps the page size it was created with.
        let page_size: i64 = raw
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .expect("page size");
        assert_eq!(page_size, 4096);
        drop(raw);
        // The upgrade compacted the file: no copy left in freed pages or the WAL.
        for needle in [
            &b"clear-text-of-v1"[..],
            b"15550008888",
            b"Oldname",
            b"old-user-label",
        ] {
            assert_eq!(
                files_containing(b.dir.path(), needle),
                Vec::<String>::new(),
                "{}",
                String::from_utf8_lossy(needle)
            );
        }
        assert!(!files_containing(b.dir.path(), b"bare").is_empty());
        // The key that sealed them is now recorded: another key is refused.
        let err = SqliteStore::open(&b.path(), keyring(&[("k1", 9)])).expect_err("mismatch");
        assert!(matches!(err, StoreError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn version_2_rows_are_sealed_on_upgrade_with_a_known_key_only() {
        let b = Sqlite::new();
        let raw = old_database(&b, 2);
        // Version 2 already sealed with k1: a k1 with other bytes is refused before anything
        // is sealed with it.
        let k1 = keyring(&[("k1", 1)]);
        let (id, check) = k1.key_checks()[0];
        raw.execute(
            "INSERT INTO store_keys (key_id, key_check, first_used_at_ms) VALUES (?1, ?2, 1)",
            params![id, check],
        )
        .expect("known key");
        drop(raw);
        let err = SqliteStore::open(&b.path(), keyring(&[("k1", 9)])).expect_err("mismatch");
        assert!(matches!(err, StoreError::KeyMismatch { .. }), "{err}");
        assert!(!files_containing(b.dir.path(), b"Oldname").is_empty());

        // A rotated keyring seals with its current key and keeps knowing both.
        let store =
            SqliteStore::open(&b.path(), keyring(&[("k2", 2), ("k1", 1)])).expect("upgrade");
        assert_eq!(store.session(&sid("old")).expect("get"), Some(old_row()));
        assert_eq!(store.session(&sid("bare")).expect("get"), Some(bare_row()));
        drop(store);
        let raw = b.raw();
        let (profile, bare): (Vec<u8>, Option<Vec<u8>>) = raw
            .query_row(
                "SELECT (SELECT profile FROM sessions WHERE id = 'old'), \
                        (SELECT profile FROM sessions WHERE id = 'bare')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("profiles");
        assert_eq!(&profile[1..4], b"\x02k2");
        assert_eq!(bare, None, "nothing personal, nothing sealed");
        let columns: Vec<String> = raw
            .prepare("SELECT name FROM pragma_table_info('sessions')")
            .expect("columns")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("names");
        assert!(
            !columns.iter().any(|c| c == "jid" || c == "push_name"),
            "{columns:?}"
        );
        drop(raw);
        for needle in ["15550008888", "Oldname", "old-user-label"] {
            assert_eq!(
                files_containing(b.dir.path(), needle.as_bytes()),
                Vec::<String>::new(),
                "{needle}"
            );
        }
        let store = SqliteStore::open(&b.path(), keyring(&[("k2", 2), ("k1", 1)])).expect("reopen");
        assert_eq!(store.sessions().expect("list"), [bare_row(), old_row()]);
    }

    /// A store in `b` with session `s`, holding secret `k` = `v`.
    fn one_session(b: &Sqlite) -> (SqliteStore, SessionId) {
        let store = SqliteStore::open(&b.path(), keyring(&[("k1", 1)])).expect("open");
        let s = sid("s");
        store
            .commit(
                &s,
                Batch::new()
                    .session(SessionRecord::new(s.clone(), 1))
                    .put_secret("k", b"v".to_vec()),
            )
            .expect("commit");
        (store, s)
    }

    #[test]
    fn files_are_private_and_pragmas_are_set() {
        let b = Sqlite::new();
        let (store, _) = one_session(&b);
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", b.path().display()));
            let mode = fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
        let conn = store.lock();
        let pragma = |name: &str| -> String {
            conn.pragma_query_value(None, name, |r| {
                r.get::<_, rusqlite::types::Value>(0).map(|v| match v {
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    other => format!("{other:?}"),
                })
            })
            .expect("pragma")
        };
        assert_eq!(pragma("journal_mode"), "wal");
        assert_eq!(pragma("synchronous"), "2", "FULL");
        assert_eq!(pragma("foreign_keys"), "1");
        assert_eq!(pragma("user_version"), SCHEMA_VERSION.to_string());
        assert_eq!(pragma("page_size"), PAGE_SIZE.to_string());
        assert!(pragma("busy_timeout").parse::<u64>().expect("number") >= 1000);
    }

    /// Retention runs every minute under the writer: neither of its lookups may read the
    /// whole event log.
    #[test]
    fn retention_reads_only_what_it_changes() {
        let b = Sqlite::new();
        let (store, s) = one_session(&b);
        store
            .commit(&s, Batch::new().event(7, 1, b"code".to_vec()))
            .expect("event");
        assert_eq!(store.redact_events(7, 2).expect("redact"), 1);
        assert_eq!(store.redact_events(7, 2).expect("again"), 0);
        let conn = store.lock();
        let plan = |sql: &str| -> String {
            let mut stmt = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("plan");
            // Each statement takes one parameter, unbound here.
            let rows = stmt
                .query_map([rusqlite::types::Null], |r| r.get::<_, String>(3))
                .expect("rows");
            rows.map(|r| r.expect("row")).collect::<Vec<_>>().join("\n")
        };
        let redact = plan(&redact_sql(7));
        assert!(
            redact.contains("USING INDEX events_unredacted_7"),
            "{redact}"
        );
        let over = plan(OVER_COUNT_CANDIDATES);
        assert!(!over.lines().any(|l| l.starts_with("SCAN e")), "{over}");
        assert!(
            over.contains("SEARCH e USING INDEX events_by_session"),
            "{over}"
        );
    }

    #[test]
    fn released_caches_are_read_again() {
        let b = Sqlite::new();
        let (store, s) = one_session(&b);
        let before = store.sessions().expect("list");
        store.release_memory();
        assert_eq!(store.sessions().expect("list again"), before);
        assert_eq!(
            store
                .secret(&s, "k")
                .expect("read")
                .as_deref()
                .map(Vec::as_slice),
            Some(&b"v"[..])
        );
    }

    #[test]
    fn refuses_a_database_from_a_newer_build() {
        let b = Sqlite::new();
        drop(SqliteStore::open(&b.path(), keyring(&[("k1", 1)])).expect("open"));
        b.raw()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump");
        let err = SqliteStore::open(&b.path(), keyring(&[("k1", 1)])).expect_err("too new");
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_replaced_or_missing_key_instead_of_quarantining_everything() {
        let b = Sqlite::new();
        let s = sid("s");
        let store = SqliteStore::open(&b.path(), keyring(&[("k1", 1)])).expect("open");
        // Opening alone records nothing: a key that never sealed anything may be replaced.
        drop(store);
        let store = SqliteStore::open(&b.path(), keyring(&[("k1", 9)])).expect("unused key");
        drop(store);

        let store = SqliteStore::open(&b.path(), keyring(&[("k1", 1)])).expect("open");
        store
            .commit(
                &s,
                Batch::new()
                    .session(SessionRecord::new(s.clone(), 1))
                    .put_secret("creds", b"c".to_vec()),
            )
            .expect("commit");
        drop(store);

        // Same id, other bytes: a regenerated key.
        let err = SqliteStore::open(&b.path(), keyring(&[("k1", 9)])).expect_err("mismatch");
        assert!(
            matches!(err, StoreError::KeyMismatch { ref key_id } if key_id == "k1"),
            "{err}"
        );
        // New key without the old one.
        let err = SqliteStore::open(&b.path(), keyring(&[("k2", 2)])).expect_err("missing");
        assert!(
            matches!(err, StoreError::KeyMissing { ref key_id } if key_id == "k1"),
            "{err}"
        );
        // Nothing was quarantined by the refused opens.
        let store = SqliteStore::open(&b.path(), keyring(&[("k1", 1)])).expect("open");
        assert!(store.quarantined().expect("quarantined").is_empty());
        assert_eq!(
            store
                .secret(&s, "creds")
                .expect("read")
                .as_deref()
                .map(Vec::as_slice),
            Some(b"c".as_slice())
        );
    }

    #[test]
    fn reseal_all_completes_a_rotation() {
        let b = Sqlite::new();
        let store = SqliteStore::open(&b.path(), keyring(&[("k1", 1)])).expect("open");
        let (s, t) = (sid("s"), sid("t"));
        for id in [&s, &t] {
            let mut batch = Batch::new().session(SessionRecord::new(id.clone(), 1));
            for i in 0..600 {
                batch = batch.put_secret(format!("prekey/{i:04}"), format!("{id}{i}").into_bytes());
            }
            store.commit(id, batch).expect("commit");
        }
        drop(store);

        let store =
            SqliteStore::open(&b.path(), keyring(&[("k2", 2), ("k1", 1)])).expect("rotated");
        // One read re-seals on the fly; reseal_all does the rest.
        assert!(store.secret(&s, "prekey/0000").expect("read").is_some());
        assert_eq!(store.reseal_all().expect("reseal"), 1199);
        assert_eq!(store.reseal_all().expect("again"), 0);
        drop(store);

        let store = SqliteStore::open(&b.path(), keyring(&[("k2", 2)])).expect("old key retired");
        for id in [&s, &t] {
            let all = store.secrets_with_prefix(id, "prekey/").expect("read");
            assert_eq!(all.len(), 600);
            assert_eq!(all[599].1.as_slice(), format!("{id}599").as_bytes());
        }
        assert!(store.quarantined().expect("quarantined").is_empty());
    }

    #[test]
    fn waiting_batches_share_one_transaction_and_fail_alone() {
        let mut b = Sqlite::new();
        let store = b.open(keyring(&[("k1", 1)]), None);
        b.fail_event_kind(&store, 0xee);
        let ids: Vec<SessionId> = ["a", "b", "c", "d"].map(sid).to_vec();
        for id in &ids {
            store
                .put_session(&SessionRecord::new(id.clone(), 1))
                .expect("put");
        }
        let before = store.groups.load(Ordering::Relaxed);
        let results = std::thread::scope(|scope| {
            // Pretend a group is being written so every commit queues up behind it.
            store.group().writing = true;
            let mut handles = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let store = &store;
                handles.push(scope.spawn(move || {
                    store.commit(
                        id,
                        Batch::new()
                            .put_secret("k", vec![1; 8])
                            .event(1, 1, vec![])
                            .event(if i == 1 { 0xee } else { 2 }, 2, vec![]),
                    )
                }));
            }
            while store.group().queue.len() < ids.len() {
                std::thread::yield_now();
            }
            drop(GroupEnd(&store));
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect::<Vec<_>>()
        });
        assert_eq!(
            store.groups.load(Ordering::Relaxed) - before,
            1,
            "one transaction"
        );
        for (i, result) in results.iter().enumerate() {
            if i == 1 {
                assert!(result.is_err(), "the faulty batch fails");
            } else {
                let events = result.as_ref().expect("the others commit");
                assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
            }
        }
        // The failed batch left nothing behind, the others are durable.
        assert_eq!(store.secret(&ids[1], "k").expect("read"), None);
        let store = b.open(keyring(&[("k1", 1)]), Some(store));
        assert_eq!(store.last_cursor().expect("cursor"), 6);
        for (i, id) in ids.iter().enumerate() {
            let found = store.secret(id, "k").expect("read").is_some();
            assert_eq!(found, i != 1, "{id}");
        }
    }

    #[test]
    fn tallies_follow_failed_groups_and_deleted_sessions() {
        let mut b = Sqlite::new();
        let store = b.open(keyring(&[("k1", 1)]), None);
        b.fail_event_kind(&store, 0xee);
        let ids: Vec<SessionId> = ["a", "b"].map(sid).to_vec();
        for id in &ids {
            store
                .put_session(&SessionRecord::new(id.clone(), 1))
                .expect("put");
        }
        let commit = |id: &SessionId, kind: u8| {
            store.commit(
                id,
                Batch::new()
                    .put_secret("k", vec![1; 8])
                    .event(2, 1, vec![])
                    .event(kind, 2, vec![]),
            )
        };
        let seqs = |events: Vec<EventRecord>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        // A batch alone, then one that fails alone: its seqs and cursors
        // are taken again by the next.
        assert_eq!(seqs(commit(&ids[0], 2).expect("commit")), [1, 2]);
        assert!(commit(&ids[0], 0xee).is_err());
        assert_eq!(seqs(commit(&ids[0], 2).expect("commit")), [3, 4]);
        // A group where one batch fails: the other's seqs count on.
        let results = std::thread::scope(|scope| {
            store.group().writing = true;
            let handles = [(0, 2), (1, 0xee)].map(|(i, kind)| {
                let commit = &commit;
                let id = &ids[i];
                scope.spawn(move || commit(id, kind))
            });
            while store.group().queue.len() < 2 {
                std::thread::yield_now();
            }
            drop(GroupEnd(&store));
            handles.map(|h| h.join().expect("thread"))
        });
        let [first, failed] = results;
        assert_eq!(seqs(first.expect("commit")), [5, 6]);
        assert!(failed.is_err());
        assert_eq!(seqs(commit(&ids[1], 2).expect("commit")), [1, 2]);
        assert_eq!(seqs(commit(&ids[0], 2).expect("commit")), [7, 8]);
        let cursors: Vec<u64> = conformance::all_events(&store)
            .iter()
            .map(|e| e.cursor)
            .collect();
        assert_eq!(cursors, (1..=10).collect::<Vec<_>>());
        assert_eq!(store.last_cursor().expect("cursor"), 10);
        // A deleted session is no longer known to exist.
        store.delete_session(&ids[1]).expect("delete");
        assert!(matches!(
            commit(&ids[1], 2),
            Err(StoreError::UnknownSession(ref id)) if *id == ids[1]
        ));
        let store = b.open(keyring(&[("k1", 1)]), Some(store));
        assert_eq!(store.last_cursor().expect("cursor"), 10);
        let again = store
            .commit(&ids[0], Batch::new().event(2, 1, vec![]))
            .expect("commit");
        assert_eq!((again[0].seq, again[0].cursor), (9, 11));
    }

    #[test]
    fn object_safe_and_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SqliteStore>();
        assert_send_sync::<crate::store::MemoryStore>();
        let b = Sqlite::new();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&b.path(), keyring(&[("k1", 1)])).expect("open"));
        assert_eq!(store.last_cursor().expect("cursor"), 0);
    }
}
