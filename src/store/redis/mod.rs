//! Redis backend, for gateways that share one store: the same [`Store`] contract as SQLite, with
//! every commit one atomic server-side script. Must not import `runtime`, `api` or `sim`.
//!
//! Layout, under a key prefix `P` (default `wagate`):
//! - `P:sessions` hash: session id → row (clear columns and sealed profile, `codec.rs`);
//! - `P:sv:<id>` hash: secret key → sealed value, and `P:sk:<id>` the same keys in a sorted set
//!   for prefix ranges;
//! - `P:seq` hash: session id → last seq (kept after deletion, so seqs are never reused);
//! - `P:cursor`: the last cursor; `P:log` a stream with one entry per event, id `<cursor>-0`,
//!   fields session, seq, kind and time; `P:pl` hash: cursor → sealed payload (absent: withheld,
//!   so redaction and quarantine blank it in place, which a stream entry cannot be);
//!   `P:ix:<id>` sorted set of a session's cursors (filters and per-session retention) and
//!   `P:evs` the set of sessions that have events;
//! - `P:q` list of quarantine entries with the records set aside; `P:keys` hash: key id →
//!   check value of every store key that sealed data here.
//!
//! Event payloads are sealed before the commit script assigns their cursor, so they are bound to
//! their session, seq, kind and time, not to the cursor (the place sealed has cursor 0). A seq is
//! never reused, so a payload moved to another event still fails to open. The script refuses a
//! batch sealed against a seq that has moved on (another writer got there first); the batch is
//! re-sealed and retried. Cursors are taken inside the script, so they are strictly increasing in
//! commit order and an event is visible exactly when its cursor is.
//!
//! Durability is Redis' own: run it with `appendonly yes` and `appendfsync always`, so a commit
//! is on disk before the reply that lets the gateway acknowledge a message to WhatsApp. With
//! `wait_replicas` set, every commit also waits (`WAIT`) until that many replicas have it.
//!
//! Ownership: `P:lease:<id>` holds `"<owner>|<token>"` with a TTL, and `P:fence:<id>` the
//! session's fencing counter, incremented by every new claim. The commit script compares the
//! counter with the token this process holds for the session (0 for a session it never
//! claimed) and writes nothing on a mismatch, so a paused or partitioned former owner can never
//! write once another gateway has claimed the session — the check is inside the same atomic
//! script as the write. A lease that lapsed without anyone claiming the session is taken again
//! by its owner's next renewal (the counter still equals its token).
//!
//! All keys of one store must live on one Redis primary (every commit touches the cursor): a
//! single primary with replicas (Sentinel or a managed service), not Redis Cluster.

mod codec;
mod resp;
mod scripts;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::crypt::{EventPlace, Keyring, Unreadable};
use super::model::check_secret_key;
use super::profile::{self, PROFILE_KEY};
use super::{
    event_key, now_ms, Batch, Claim, EventFilter, EventRecord, Member, QuarantineEntry, Retention,
    SecretOp, SessionId, SessionRecord, Store, StoreError,
};
use resp::{Cmd, Conn, Pool, Target, Value};

/// How long one request to Redis may take before the connection is given up.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at a commit whose seq moved under it before giving up (each attempt follows a
/// commit by another writer, so they only run out under a fight over one session).
const COMMIT_ATTEMPTS: usize = 64;
/// Events read from the log per request when scanning it.
const SCAN_PAGE: usize = 512;

/// Connection settings of a [`RedisStore`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `redis://[[user]:password@]host[:port][/db]`.
    pub url: String,
    /// Prefix of every key, so several deployments can share one Redis.
    pub prefix: String,
    /// Replicas that must have a commit before it counts (`WAIT`); 0 to rely on the primary's
    /// AOF alone.
    pub wait_replicas: u32,
    /// How long a commit waits for those replicas.
    pub wait_timeout: Duration,
}

impl RedisOptions {
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            prefix: "wagate".into(),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
        }
    }
}

/// A [`Store`] in Redis.
pub struct RedisStore {
    keys: Keyring,
    pool: Pool,
    names: Names,
    scripts: Scripts,
    wait: Option<(u32, Duration)>,
    /// The last seq each session's events were committed at, as this process last saw it.
    seqs: Mutex<HashMap<SessionId, u64>>,
    /// Fencing tokens of the sessions this process claimed.
    tokens: Mutex<HashMap<SessionId, u64>>,
    /// Commits refused because another gateway had claimed the session since.
    fenced: AtomicU64,
    /// Held by a commit round retrying batches whose seq moved: threads of this process then
    /// retry one at a time, so they cannot keep beating each other to the same session.
    retrying: Mutex<()>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", self.pool.target())
            .field("prefix", &self.names.prefix)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Key names under the prefix.
struct Names {
    prefix: String,
}

impl Names {
    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }
    fn sessions(&self) -> String {
        self.key("sessions")
    }
    fn values(&self, id: &SessionId) -> String {
        format!("{}:sv:{id}", self.prefix)
    }
    fn index(&self, id: &SessionId) -> String {
        format!("{}:sk:{id}", self.prefix)
    }
    fn seqs(&self) -> String {
        self.key("seq")
    }
    fn cursor(&self) -> String {
        self.key("cursor")
    }
    fn log(&self) -> String {
        self.key("log")
    }
    fn payloads(&self) -> String {
        self.key("pl")
    }
    fn events_of(&self, id: &SessionId) -> String {
        format!("{}:ix:{id}", self.prefix)
    }
    fn with_events(&self) -> String {
        self.key("evs")
    }
    fn quarantine(&self) -> String {
        self.key("q")
    }
    fn fault(&self) -> String {
        self.key("fault")
    }
    fn store_keys(&self) -> String {
        self.key("keys")
    }
    fn lease(&self, id: &SessionId) -> String {
        format!("{}:lease:{id}", self.prefix)
    }
    fn fence(&self, id: &SessionId) -> String {
        format!("{}:fence:{id}", self.prefix)
    }
    fn members(&self) -> String {
        self.key("members")
    }
}

/// A script and the digest Redis knows it by.
struct Script {
    body: &'static str,
    sha: String,
}

struct Scripts {
    commit: Script,
    swap: Script,
    prefix: Script,
    page: Script,
    sessions_page: Script,
    claim: Script,
    renew: Script,
    release: Script,
    announce: Script,
}

impl Script {
    fn load(conn: &mut Conn, body: &'static str) -> Result<Self, StoreError> {
        let sha = conn
            .run(&Cmd::new("SCRIPT").arg("LOAD").arg(body))?
            .into_bytes()?
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| StoreError::Corrupt("redis: SCRIPT LOAD gave no digest".into()))?;
        Ok(Script { body, sha })
    }

    fn call(&self, keys: &[String], args: Vec<Vec<u8>>) -> (Cmd, Cmd) {
        let build = |name: &str, first: &str| {
            let mut cmd = Cmd::new(name).arg(first).arg(keys.len());
            for key in keys {
                cmd.push(key);
            }
            for arg in &args {
                cmd.push(arg);
            }
            cmd
        };
        (build("EVALSHA", &self.sha), build("EVAL", self.body))
    }
}

/// Runs scripts, falling back to sending a script's body when the server has forgotten it
/// (after a restart or `SCRIPT FLUSH`); a refused `EVALSHA` did nothing, so resending is safe.
fn eval_all(conn: &mut Conn, calls: Vec<(Cmd, Cmd)>) -> Result<Vec<Value>, StoreError> {
    let (by_sha, bodies): (Vec<Cmd>, Vec<Cmd>) = calls.into_iter().unzip();
    let mut replies = conn.pipeline(&by_sha)?;
    let forgotten: Vec<usize> = replies
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Value::Error(e) if e.starts_with("NOSCRIPT")))
        .map(|(i, _)| i)
        .collect();
    if !forgotten.is_empty() {
        let mut bodies: Vec<Option<Cmd>> = bodies.into_iter().map(Some).collect();
        let resend: Vec<Cmd> = forgotten
            .iter()
            .filter_map(|&i| bodies.get_mut(i).and_then(Option::take))
            .collect();
        for (i, reply) in forgotten.into_iter().zip(conn.pipeline(&resend)?) {
            if let Some(slot) = replies.get_mut(i) {
                *slot = reply;
            }
        }
    }
    Ok(replies)
}

fn eval(conn: &mut Conn, call: (Cmd, Cmd)) -> Result<Value, StoreError> {
    eval_all(conn, vec![call])?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("redis: no reply".into()))
}

/// The place a Redis-stored payload is sealed to (see the module doc: no cursor).
fn place(seq: u64, kind: u8, timestamp_ms: i64) -> EventPlace {
    EventPlace {
        cursor: 0,
        seq,
        kind,
        timestamp_ms,
    }
}

fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Bulk(b) => Some(b),
        Value::Status(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn number<T: std::str::FromStr>(v: Option<&Value>) -> Option<T> {
    match v? {
        Value::Int(i) => i.to_string().parse().ok(),
        other => std::str::from_utf8(text(other)?).ok()?.parse().ok(),
    }
}

/// An event as a page script returns it, payload still sealed ('' = withheld).
struct StoredEvent {
    record: EventRecord,
}

fn parse_event(v: Value) -> Result<StoredEvent, StoreError> {
    let corrupt = || StoreError::Corrupt("an event in the redis log does not decode".into());
    let fields = v.into_array()?;
    let cursor = number(fields.first()).ok_or_else(corrupt)?;
    let session_id = fields
        .get(1)
        .and_then(text)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(corrupt)?;
    let seq = number(fields.get(2)).ok_or_else(corrupt)?;
    let kind = number(fields.get(3)).ok_or_else(corrupt)?;
    let timestamp_ms = number(fields.get(4)).ok_or_else(corrupt)?;
    let payload = fields.get(5).and_then(text).ok_or_else(corrupt)?.to_vec();
    Ok(StoredEvent {
        record: EventRecord {
            cursor,
            session_id,
            seq,
            timestamp_ms,
            kind,
            payload,
        },
    })
}

impl RedisStore {
    /// Connects, loads the scripts and checks that `keys` agree with the keys the data was
    /// written with.
    pub fn open(options: &RedisOptions, keys: Keyring) -> Result<Self, StoreError> {
        let target = Target::parse(&options.url)
            .map_err(|why| StoreError::Unavailable(format!("redis URL: {why}")))?;
        if options.prefix.is_empty() || options.prefix.contains(char::is_whitespace) {
            return Err(StoreError::Unavailable(
                "the redis key prefix must be non-empty and without spaces".into(),
            ));
        }
        let pool = Pool::new(target, IO_TIMEOUT);
        let scripts = pool.with(|conn| {
            Ok(Scripts {
                commit: Script::load(conn, scripts::COMMIT)?,
                swap: Script::load(conn, scripts::SWAP)?,
                prefix: Script::load(conn, scripts::PREFIX)?,
                page: Script::load(conn, scripts::PAGE)?,
                sessions_page: Script::load(conn, scripts::SESSIONS_PAGE)?,
                claim: Script::load(conn, scripts::CLAIM)?,
                renew: Script::load(conn, scripts::RENEW)?,
                release: Script::load(conn, scripts::RELEASE)?,
                announce: Script::load(conn, scripts::ANNOUNCE)?,
            })
        })?;
        let store = RedisStore {
            keys,
            pool,
            names: Names {
                prefix: options.prefix.clone(),
            },
            scripts,
            wait: (options.wait_replicas > 0)
                .then_some((options.wait_replicas, options.wait_timeout)),
            seqs: Mutex::default(),
            tokens: Mutex::default(),
            fenced: AtomicU64::new(0),
            retrying: Mutex::new(()),
        };
        store.check_keys()?;
        Ok(store)
    }

    /// Refuses a keyring that cannot read what is stored (see the SQLite backend), then lists
    /// the current key as one that sealed data here.
    fn check_keys(&self) -> Result<(), StoreError> {
        let known = self
            .pool
            .run(Cmd::new("HGETALL").arg(self.names.store_keys()))?
            .into_array()?;
        let ours = self.keys.key_checks();
        for pair in known.chunks(2) {
            let (Some(id), Some(check)) = (pair.first().and_then(text), pair.get(1).and_then(text))
            else {
                continue;
            };
            let key_id = String::from_utf8_lossy(id).into_owned();
            match ours.iter().find(|(id, _)| *id == key_id) {
                Some((_, ours)) if ours.as_slice() == check => {}
                Some(_) => return Err(StoreError::KeyMismatch { key_id }),
                None => return Err(StoreError::KeyMissing { key_id }),
            }
        }
        if let Some((key_id, check)) = ours.first() {
            self.pool
                .run(
                    Cmd::new("HSETNX")
                        .arg(self.names.store_keys())
                        .arg(*key_id)
                        .arg(&check[..]),
                )?
                .ok()?;
        }
        Ok(())
    }

    /// Test hook: while set, a commit appending an event of `kind` fails before writing.
    #[cfg(test)]
    fn fail_commits_with_event_kind(&self, kind: Option<u8>) -> Result<(), StoreError> {
        let cmd = match kind {
            Some(k) => Cmd::new("SET").arg(self.names.fault()).arg(k.to_string()),
            None => Cmd::new("DEL").arg(self.names.fault()),
        };
        self.pool.run(cmd)?.ok().map(drop)
    }

    fn seq_cache(&self) -> MutexGuard<'_, HashMap<SessionId, u64>> {
        self.seqs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn token_map(&self) -> MutexGuard<'_, HashMap<SessionId, u64>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits refused so far because the session had been claimed by another gateway.
    pub fn fenced_writes(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    /// The last seq of `id` as this process knows it, asking Redis the first time.
    fn known_seq(&self, conn: &mut Conn, id: &SessionId) -> Result<u64, StoreError> {
        if let Some(seq) = self.seq_cache().get(id) {
            return Ok(*seq);
        }
        let seq = conn
            .run(&Cmd::new("HGET").arg(self.names.seqs()).arg(id.as_str()))?
            .into_int()?;
        let seq = u64::try_from(seq).map_err(|_| StoreError::Corrupt("negative seq".into()))?;
        self.seq_cache().insert(id.clone(), seq);
        Ok(seq)
    }

    /// The commit script call for `batch`, sealed against `seq`.
    fn commit_call(
        &self,
        id: &SessionId,
        batch: &Batch,
        seq: u64,
    ) -> Result<(Cmd, Cmd), StoreError> {
        let n = &self.names;
        let keys = [
            n.sessions(),
            n.values(id),
            n.index(id),
            n.seqs(),
            n.cursor(),
            n.log(),
            n.payloads(),
            n.events_of(id),
            n.with_events(),
            n.fault(),
            n.fence(id),
        ];
        let mut args: Vec<Vec<u8>> =
            Vec::with_capacity(5 + 3 * (batch.secrets.len() + batch.events.len()));
        args.push(id.as_str().into());
        args.push(seq.to_string().into_bytes());
        args.push(match &batch.session {
            Some(record) => self.encode_row(record)?,
            None => Vec::new(),
        });
        args.push(batch.secrets.len().to_string().into_bytes());
        for op in &batch.secrets {
            let (code, key, value): (&str, &str, Vec<u8>) = match op {
                SecretOp::Put { key, value } => (
                    "put",
                    key,
                    self.keys.seal(&mut rand::thread_rng(), id, key, value)?,
                ),
                SecretOp::Delete { key } => ("del", key, Vec::new()),
                SecretOp::DeletePrefix { prefix } => ("prefix", prefix, Vec::new()),
                SecretOp::DeleteAll => ("all", "", Vec::new()),
            };
            args.push(code.into());
            args.push(key.into());
            args.push(value);
        }
        args.push(batch.events.len().to_string().into_bytes());
        let mut next = seq;
        for event in &batch.events {
            next = next
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt(format!("seq of {id} overflows")))?;
            let at = place(next, event.kind, event.timestamp_ms);
            args.push(event.kind.to_string().into_bytes());
            args.push(event.timestamp_ms.to_string().into_bytes());
            args.push(
                self.keys
                    .seal_event(&mut rand::thread_rng(), id, &at, &event.payload)?,
            );
        }
        let token = self.token_map().get(id).copied().unwrap_or(0);
        args.push(token.to_string().into_bytes());
        Ok(self.scripts.commit.call(&keys, args))
    }

    /// Reads a commit script's reply: `Ok(Ok(events))`, or `Ok(Err(seq))` when the batch must
    /// be re-sealed against `seq`.
    fn commit_outcome(
        &self,
        id: &SessionId,
        batch: &Batch,
        seq: u64,
        reply: Value,
    ) -> Result<Result<Vec<EventRecord>, u64>, StoreError> {
        let reply = reply.into_array()?;
        let status = reply.first().and_then(text).unwrap_or_default();
        match status {
            b"ok" => {
                let first: u64 = number(reply.get(1))
                    .ok_or_else(|| StoreError::Corrupt("commit reply without cursor".into()))?;
                let events = batch
                    .events
                    .iter()
                    .zip(0u64..)
                    .map(|(e, i)| EventRecord {
                        cursor: first + i,
                        session_id: id.clone(),
                        seq: seq + 1 + i,
                        timestamp_ms: e.timestamp_ms,
                        kind: e.kind,
                        payload: e.payload.clone(),
                    })
                    .collect::<Vec<_>>();
                let last = seq + batch.events.len() as u64;
                self.seq_cache().insert(id.clone(), last);
                Ok(Ok(events))
            }
            b"seq" => {
                let now: u64 = number(reply.get(1))
                    .ok_or_else(|| StoreError::Corrupt("commit reply without seq".into()))?;
                self.seq_cache().insert(id.clone(), now);
                Ok(Err(now))
            }
            b"norow" => Err(StoreError::UnknownSession(id.clone())),
            b"fenced" => {
                self.fenced.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Fenced(id.clone()))
            }
            b"fault" => Err(StoreError::Unavailable(format!(
                "injected fault on event kind {}",
                number::<u8>(reply.get(1)).unwrap_or_default()
            ))),
            _ => Err(StoreError::Corrupt("unexpected commit reply".into())),
        }
    }

    /// Commits every batch, in one round trip while no seq has moved. A batch whose seq moved
    /// is re-sealed and sent again with the others still pending.
    fn commit_all(
        &self,
        batches: &[(SessionId, Batch)],
    ) -> Vec<Result<Vec<EventRecord>, StoreError>> {
        let mut results: Vec<Option<Result<Vec<EventRecord>, StoreError>>> =
            batches.iter().map(|_| None).collect();
        for (slot, (id, batch)) in results.iter_mut().zip(batches) {
            if let Err(e) = batch.validate(id) {
                *slot = Some(Err(e));
            }
        }
        let sent_all = self.pool.with(|conn| {
            // Held from the first retry to the end of the round.
            let mut _retry_guard = None;
            for attempt in 0..COMMIT_ATTEMPTS {
                let pending: Vec<usize> = (0..batches.len())
                    .filter(|&i| results[i].is_none())
                    .collect();
                if pending.is_empty() {
                    break;
                }
                if attempt == 1 {
                    _retry_guard =
                        Some(self.retrying.lock().unwrap_or_else(PoisonError::into_inner));
                }
                let mut calls = Vec::with_capacity(pending.len());
                let mut sent = Vec::with_capacity(pending.len());
                for &i in &pending {
                    let (id, batch) = &batches[i];
                    let call = self
                        .known_seq(conn, id)
                        .and_then(|seq| Ok((seq, self.commit_call(id, batch, seq)?)));
                    match call {
                        Ok((seq, call)) => {
                            calls.push(call);
                            sent.push((i, seq));
                        }
                        Err(e) if e.is_retryable() => return Err(e),
                        Err(e) => results[i] = Some(Err(e)),
                    }
                }
                let replies = eval_all(conn, calls)?;
                for ((i, seq), reply) in sent.into_iter().zip(replies) {
                    let (id, batch) = &batches[i];
                    match self.commit_outcome(id, batch, seq, reply) {
                        Ok(Ok(events)) => results[i] = Some(Ok(events)),
                        // Re-sealed against the new seq in the next round.
                        Ok(Err(_moved)) => {}
                        Err(e) => results[i] = Some(Err(e)),
                    }
                }
            }
            // WAIT counts the writes of this connection, so it runs on it.
            let landed = results.iter().any(|r| matches!(r, Some(Ok(_))));
            Ok(match self.wait {
                Some((replicas, timeout)) if landed => {
                    Self::wait_for_replicas(conn, replicas, timeout)
                }
                _ => Ok(()),
            })
        });
        let (sent_all, replicated) = match sent_all {
            Ok(replicated) => (Ok(()), replicated),
            Err(e) => (Err(e), Ok(())),
        };
        if let Err(e) = &sent_all {
            // The fate of what was in flight is unknown: forget the seqs so the next attempt
            // learns them from Redis (callers' batches carry their own dedupe keys, so a
            // retried batch that did land is recognised).
            let mut cache = self.seq_cache();
            for ((id, _), result) in batches.iter().zip(&results) {
                if result.is_none() {
                    cache.remove(id);
                }
            }
            drop(cache);
            tracing::warn!(error = %e, "redis commit failed");
        }
        results
            .into_iter()
            .zip(batches)
            .map(|(result, (id, _))| match (result, &sent_all, &replicated) {
                // On the primary but not confirmed by the replicas it must reach: not
                // committed as far as the caller may rely on.
                (Some(Ok(_)), _, Err(e)) => Err(redo(e, id)),
                (Some(result), _, _) => result,
                (None, Err(e), _) => Err(redo(e, id)),
                (None, Ok(()), _) => Err(StoreError::Unavailable(format!(
                    "commit for {id} kept losing to other writers of the session"
                ))),
            })
            .collect()
    }

    /// Waits until `replicas` replicas have every write of this process so far.
    fn wait_for_replicas(
        conn: &mut Conn,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let acked = conn
            .run(&Cmd::new("WAIT").arg(u64::from(replicas)).arg(millis))?
            .into_int()?;
        if acked < i64::from(replicas) {
            return Err(StoreError::Unavailable(format!(
                "only {acked} of {replicas} redis replicas confirmed the commit"
            )));
        }
        Ok(())
    }

    fn encode_row(&self, record: &SessionRecord) -> Result<Vec<u8>, StoreError> {
        let sealed = profile::seal(&self.keys, &mut OsRng, record)?;
        Ok(codec::encode_row(
            &profile::stripped(record),
            sealed.as_deref(),
        ))
    }

    /// The row of `id` with its profile opened; an unreadable profile is quarantined and the
    /// row returned without it.
    fn open_row(&self, id: &SessionId, stored: &[u8]) -> Result<SessionRecord, StoreError> {
        let (mut record, sealed) = codec::decode_row(id, stored)?;
        let Some(sealed) = sealed else {
            return Ok(record);
        };
        let clear = record.clone();
        match profile::open_into(&self.keys, &mut record, &sealed) {
            Ok(_) => Ok(record),
            Err(why) => {
                let entry = self.entry(id, PROFILE_KEY, &why);
                let without = codec::encode_row(&clear, None);
                self.swap(
                    &self.names.sessions(),
                    None,
                    id.as_str(),
                    stored,
                    &without,
                    Some(codec::encode_quarantine(&entry, &sealed)),
                )?;
                Ok(clear)
            }
        }
    }

    fn entry(&self, id: &SessionId, key: &str, why: &Unreadable) -> QuarantineEntry {
        QuarantineEntry {
            session_id: id.clone(),
            key: key.to_owned(),
            reason: why.to_string(),
            quarantined_at_ms: now_ms(),
        }
    }

    /// Compare-and-set of `hash[field]` from `expected` to `replacement` (empty: delete, and
    /// drop the field from `index`), pushing `quarantine` when given. Whether it applied.
    fn swap(
        &self,
        hash: &str,
        index: Option<&str>,
        field: &str,
        expected: &[u8],
        replacement: &[u8],
        quarantine: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let mut keys = vec![hash.to_owned(), self.names.quarantine()];
        keys.extend(index.map(str::to_owned));
        let call = self.scripts.swap.call(
            &keys,
            vec![
                field.as_bytes().to_vec(),
                expected.to_vec(),
                replacement.to_vec(),
                quarantine.unwrap_or_default(),
            ],
        );
        Ok(self.pool.with(|conn| eval(conn, call))?.into_int()? == 1)
    }

    /// Quarantines an unreadable secret (if it still holds `record`).
    fn quarantine_secret(
        &self,
        id: &SessionId,
        key: &str,
        record: &[u8],
        why: &Unreadable,
    ) -> Result<StoreError, StoreError> {
        let entry = self.entry(id, key, why);
        self.swap(
            &self.names.values(id),
            Some(&self.names.index(id)),
            key,
            record,
            b"",
            Some(codec::encode_quarantine(&entry, record)),
        )?;
        Ok(StoreError::Quarantined {
            session: id.clone(),
            key: key.to_owned(),
            reason: entry.reason,
        })
    }

    /// Re-seals a secret read under an older key (if it still holds `record`).
    fn refresh_secret(
        &self,
        id: &SessionId,
        key: &str,
        record: &[u8],
        plaintext: &[u8],
    ) -> Result<bool, StoreError> {
        let fresh = self.keys.seal(&mut OsRng, id, key, plaintext)?;
        self.swap(&self.names.values(id), None, key, record, &fresh, None)
    }

    /// Opens a stored event's payload: withheld ones read empty, unreadable ones are
    /// quarantined and read empty, stale ones are re-sealed when `reseal`. Whether it was
    /// re-sealed.
    fn open_event(&self, event: &mut EventRecord, reseal: bool) -> Result<bool, StoreError> {
        if event.payload.is_empty() {
            return Ok(false);
        }
        let at = place(event.seq, event.kind, event.timestamp_ms);
        let field = event.cursor.to_string();
        match self.keys.open_event(&event.session_id, &at, &event.payload) {
            Ok(opened) => {
                let mut resealed = false;
                if reseal && opened.stale {
                    let fresh = self.keys.seal_event(
                        &mut OsRng,
                        &event.session_id,
                        &at,
                        &opened.plaintext,
                    )?;
                    resealed = self.swap(
                        &self.names.payloads(),
                        None,
                        &field,
                        &event.payload,
                        &fresh,
                        None,
                    )?;
                }
                event.payload = opened.plaintext.to_vec();
                Ok(resealed)
            }
            Err(why) => {
                let entry = self.entry(&event.session_id, &event_key(event.cursor), &why);
                let record = std::mem::take(&mut event.payload);
                self.swap(
                    &self.names.payloads(),
                    None,
                    &field,
                    &record,
                    b"",
                    Some(codec::encode_quarantine(&entry, &record)),
                )?;
                Ok(false)
            }
        }
    }

    /// Up to `count` events after `after` in cursor order, payloads sealed, through the log or
    /// through the indexes of `sessions`.
    fn scan(
        &self,
        after: u64,
        sessions: &[SessionId],
        count: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let call = if sessions.is_empty() {
            let first = after.saturating_add(1);
            self.scripts.page.call(
                &[self.names.log(), self.names.payloads()],
                vec![
                    format!("{first}-0").into_bytes(),
                    count.to_string().into_bytes(),
                ],
            )
        } else {
            let mut keys = vec![self.names.log(), self.names.payloads()];
            keys.extend(sessions.iter().map(|s| self.names.events_of(s)));
            self.scripts.sessions_page.call(
                &keys,
                vec![
                    after.to_string().into_bytes(),
                    count.to_string().into_bytes(),
                ],
            )
        };
        self.pool
            .with(|conn| eval(conn, call))?
            .into_array()?
            .into_iter()
            .map(parse_event)
            .collect()
    }

    /// Every stored event, payloads sealed, in pages; `visit` sees each page.
    fn each_page(
        &self,
        mut visit: impl FnMut(Vec<StoredEvent>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut after = 0;
        loop {
            let page = self.scan(after, &[], SCAN_PAGE)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.record.cursor;
            let full = page.len() == SCAN_PAGE;
            visit(page)?;
            if !full {
                return Ok(());
            }
        }
    }

    /// Removes events from the log, their payloads and their index entries, atomically.
    fn delete_events(&self, doomed: &[(u64, SessionId)]) -> Result<u64, StoreError> {
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut xdel = Cmd::new("XDEL").arg(self.names.log());
        let mut hdel = Cmd::new("HDEL").arg(self.names.payloads());
        let mut per_session: BTreeMap<&SessionId, Cmd> = BTreeMap::new();
        for (cursor, id) in doomed {
            xdel.push(format!("{cursor}-0"));
            hdel.push(*cursor);
            per_session
                .entry(id)
                .or_insert_with(|| Cmd::new("ZREM").arg(self.names.events_of(id)))
                .push(*cursor);
        }
        let mut cmds = vec![Cmd::new("MULTI"), xdel, hdel];
        cmds.extend(per_session.into_values());
        cmds.push(Cmd::new("EXEC"));
        let replies = self.pool.with(|conn| conn.pipeline(&cmds))?;
        let exec = replies
            .into_iter()
            .last()
            .ok_or_else(|| StoreError::Corrupt("redis: no EXEC reply".into()))?
            .into_array()?;
        let deleted = exec
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt("redis: empty EXEC reply".into()))?
            .into_int()?;
        Ok(u64::try_from(deleted).unwrap_or(0))
    }

    /// Every session row as stored (clear columns and sealed profile), ordered by id.
    fn stored_rows(&self) -> Result<BTreeMap<SessionId, Vec<u8>>, StoreError> {
        let all = self
            .pool
            .run(Cmd::new("HGETALL").arg(self.names.sessions()))?
            .into_array()?;
        let mut rows = BTreeMap::new();
        for pair in all.chunks(2) {
            let (Some(id), Some(row)) = (pair.first().and_then(text), pair.get(1).and_then(text))
            else {
                return Err(StoreError::Corrupt("redis: odd HGETALL reply".into()));
            };
            let id: SessionId = String::from_utf8_lossy(id).parse()?;
            rows.insert(id, row.to_vec());
        }
        Ok(rows)
    }

    fn secret_read(
        &self,
        id: &SessionId,
        key: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let Some(record) = self
            .pool
            .run(Cmd::new("HGET").arg(self.names.values(id)).arg(key))?
            .into_bytes()?
        else {
            return Ok(None);
        };
        match self.keys.open(id, key, &record) {
            Ok(opened) => {
                if opened.stale {
                    self.refresh_secret(id, key, &record, &opened.plaintext)?;
                }
                Ok(Some(opened.plaintext))
            }
            Err(why) => Err(self.quarantine_secret(id, key, &record, &why)?),
        }
    }
}

/// An owner id is free text but for the separator of the lease value.
fn check_owner(owner: &str) -> Result<(), StoreError> {
    if owner.is_empty() || owner.contains('|') {
        return Err(StoreError::Redis(format!(
            "invalid owner id {owner:?}: non-empty, without '|'"
        )));
    }
    Ok(())
}

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// The error a batch reports when the commit round failed as a whole.
fn redo(e: &StoreError, id: &SessionId) -> StoreError {
    StoreError::Unavailable(format!("commit for {id}: {e}"))
}

impl Store for RedisStore {
    fn put_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let row = self.encode_row(record)?;
        self.pool
            .run(
                Cmd::new("HSET")
                    .arg(self.names.sessions())
                    .arg(record.id.as_str())
                    .arg(row),
            )?
            .ok()
            .map(drop)
    }

    fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let stored = self
            .pool
            .run(Cmd::new("HGET").arg(self.names.sessions()).arg(id.as_str()))?
            .into_bytes()?;
        stored.map(|row| self.open_row(id, &row)).transpose()
    }

    fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.stored_rows()?
            .iter()
            .map(|(id, row)| self.open_row(id, row))
            .collect()
    }

    fn delete_session(&self, id: &SessionId) -> Result<(), StoreError> {
        let cmds = [
            Cmd::new("MULTI"),
            Cmd::new("HDEL").arg(self.names.sessions()).arg(id.as_str()),
            Cmd::new("DEL")
                .arg(self.names.values(id))
                .arg(self.names.index(id)),
            Cmd::new("EXEC"),
        ];
        for reply in self.pool.with(|conn| conn.pipeline(&cmds))? {
            reply.ok()?;
        }
        Ok(())
    }

    fn secret(&self, id: &SessionId, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        check_secret_key(key)?;
        self.secret_read(id, key)
    }

    fn secrets_with_prefix(
        &self,
        id: &SessionId,
        prefix: &str,
    ) -> Result<Vec<(String, Zeroizing<Vec<u8>>)>, StoreError> {
        let call = self.scripts.prefix.call(
            &[self.names.index(id), self.names.values(id)],
            vec![prefix.as_bytes().to_vec()],
        );
        let reply = self.pool.with(|conn| eval(conn, call))?.into_array()?;
        let mut found = Vec::with_capacity(reply.len() / 2);
        let mut first_error = None;
        for pair in reply.chunks(2) {
            let (Some(key), Some(record)) =
                (pair.first().and_then(text), pair.get(1).and_then(text))
            else {
                return Err(StoreError::Corrupt("redis: odd prefix reply".into()));
            };
            let key = String::from_utf8_lossy(key).into_owned();
            match self.keys.open(id, &key, record) {
                Ok(opened) => {
                    if opened.stale {
                        self.refresh_secret(id, &key, record, &opened.plaintext)?;
                    }
                    found.push((key, opened.plaintext));
                }
                Err(why) => {
                    let err = self.quarantine_secret(id, &key, record, &why)?;
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(found),
        }
    }

    fn commit(&self, id: &SessionId, batch: Batch) -> Result<Vec<EventRecord>, StoreError> {
        self.commit_all(&[(id.clone(), batch)])
            .pop()
            .unwrap_or_else(|| Err(StoreError::Corrupt("no commit result".into())))
    }

    fn commit_many(
        &self,
        batches: Vec<(SessionId, Batch)>,
    ) -> Vec<Result<Vec<EventRecord>, StoreError>> {
        self.commit_all(&batches)
    }

    fn events_page(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let mut page = Vec::new();
        let mut bytes = 0usize;
        let mut position = after;
        let chunk = limit.clamp(1, SCAN_PAGE);
        while page.len() < limit && bytes < max_bytes {
            let scanned = self.scan(position, &filter.sessions, chunk)?;
            let exhausted = scanned.len() < chunk;
            for StoredEvent { mut record } in scanned {
                position = record.cursor;
                if !filter.matches(&record) {
                    continue;
                }
                if page.len() >= limit || bytes >= max_bytes {
                    return Ok(page);
                }
                self.open_event(&mut record, false)?;
                bytes = bytes.saturating_add(record.payload.len());
                page.push(record);
            }
            if exhausted {
                break;
            }
        }
        Ok(page)
    }

    fn last_cursor(&self) -> Result<u64, StoreError> {
        let last = self
            .pool
            .run(Cmd::new("GET").arg(self.names.cursor()))?
            .into_int()?;
        u64::try_from(last).map_err(|_| StoreError::Corrupt("negative cursor".into()))
    }

    fn prune_events(&self, retention: &Retention, now_ms: i64) -> Result<u64, StoreError> {
        let mut deleted = 0u64;
        if let Some(cutoff) = retention.cutoff_ms(now_ms) {
            // Page by page: the scan resumes after the page's last cursor, so deleting what it
            // read does not disturb it.
            self.each_page(|page| {
                let doomed: Vec<(u64, SessionId)> = page
                    .into_iter()
                    .filter(|e| e.record.timestamp_ms < cutoff)
                    .map(|e| (e.record.cursor, e.record.session_id))
                    .collect();
                deleted += self.delete_events(&doomed)?;
                Ok(())
            })?;
        }
        if let Some(max) = retention.max_per_session {
            let ids = self
                .pool
                .run(Cmd::new("SMEMBERS").arg(self.names.with_events()))?
                .into_array()?;
            for raw in ids {
                let Some(id) = raw
                    .into_bytes()?
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.parse::<SessionId>().ok())
                else {
                    continue;
                };
                let index = self.names.events_of(&id);
                let held = self.pool.run(Cmd::new("ZCARD").arg(&index))?.into_int()?;
                let held = u64::try_from(held).unwrap_or(0);
                if held == 0 {
                    self.pool
                        .run(
                            Cmd::new("SREM")
                                .arg(self.names.with_events())
                                .arg(id.as_str()),
                        )?
                        .ok()?;
                    continue;
                }
                let excess = held.saturating_sub(max);
                if excess == 0 {
                    continue;
                }
                let cursors = self
                    .pool
                    .run(Cmd::new("ZRANGE").arg(&index).arg(0u64).arg(excess - 1))?
                    .into_array()?;
                let doomed: Vec<(u64, SessionId)> = cursors
                    .iter()
                    .filter_map(|c| number(Some(c)))
                    .map(|c| (c, id.clone()))
                    .collect();
                for chunk in doomed.chunks(SCAN_PAGE) {
                    deleted += self.delete_events(chunk)?;
                }
            }
        }
        Ok(deleted)
    }

    fn redact_events(&self, kind: u8, before_ms: i64) -> Result<u64, StoreError> {
        let mut doomed = Vec::new();
        self.each_page(|page| {
            doomed.extend(
                page.into_iter()
                    .filter(|e| {
                        e.record.kind == kind
                            && e.record.timestamp_ms < before_ms
                            && !e.record.payload.is_empty()
                    })
                    .map(|e| e.record.cursor),
            );
            Ok(())
        })?;
        let mut redacted = 0u64;
        for chunk in doomed.chunks(SCAN_PAGE) {
            let mut hdel = Cmd::new("HDEL").arg(self.names.payloads());
            for cursor in chunk {
                hdel.push(*cursor);
            }
            let n = self.pool.run(hdel)?.into_int()?;
            redacted += u64::try_from(n).unwrap_or(0);
        }
        Ok(redacted)
    }

    fn reseal_all(&self) -> Result<u64, StoreError> {
        let mut resealed = 0u64;
        let ids: Vec<SessionId> = self.sessions()?.into_iter().map(|r| r.id).collect();
        for id in &ids {
            let all = self
                .pool
                .run(Cmd::new("HGETALL").arg(self.names.values(id)))?
                .into_array()?;
            for pair in all.chunks(2) {
                let (Some(key), Some(record)) =
                    (pair.first().and_then(text), pair.get(1).and_then(text))
                else {
                    continue;
                };
                let key = String::from_utf8_lossy(key).into_owned();
                match self.keys.open(id, &key, record) {
                    Ok(opened) if opened.stale => {
                        if self.refresh_secret(id, &key, record, &opened.plaintext)? {
                            resealed += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(why) => {
                        self.quarantine_secret(id, &key, record, &why)?;
                    }
                }
            }
        }
        self.each_page(|page| {
            for mut event in page {
                if self.open_event(&mut event.record, true)? {
                    resealed += 1;
                }
            }
            Ok(())
        })?;
        for (id, row) in self.stored_rows()? {
            let row = row.as_slice();
            let (clear, sealed) = codec::decode_row(&id, row)?;
            let Some(sealed) = sealed else { continue };
            match profile::reseal(&self.keys, &mut OsRng, &id, &sealed)? {
                Ok(None) => {}
                Ok(Some(fresh)) => {
                    let replacement = codec::encode_row(&clear, Some(&fresh));
                    if self.swap(
                        &self.names.sessions(),
                        None,
                        id.as_str(),
                        row,
                        &replacement,
                        None,
                    )? {
                        resealed += 1;
                    }
                }
                // Reading the row quarantines the profile, as the other backends do.
                Err(_) => {
                    self.open_row(&id, row)?;
                }
            }
        }
        let current = self.keys.current_id();
        let known = self
            .pool
            .run(Cmd::new("HKEYS").arg(self.names.store_keys()))?
            .into_array()?;
        for key_id in known {
            if let Some(key_id) = key_id.into_bytes()? {
                if key_id != current.as_bytes() {
                    self.pool
                        .run(Cmd::new("HDEL").arg(self.names.store_keys()).arg(key_id))?
                        .ok()?;
                }
            }
        }
        Ok(resealed)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn claim(&self, id: &SessionId, owner: &str, ttl: Duration) -> Result<Claim, StoreError> {
        check_owner(owner)?;
        let call = self.scripts.claim.call(
            &[self.names.lease(id), self.names.fence(id)],
            vec![owner.as_bytes().to_vec(), millis(ttl).into_bytes()],
        );
        let reply = self.pool.with(|conn| eval(conn, call))?.into_array()?;
        let corrupt = || StoreError::Corrupt("unexpected claim reply".into());
        match reply.first().and_then(text) {
            Some(b"ok") => {
                let token: u64 = number(reply.get(1)).ok_or_else(corrupt)?;
                self.token_map().insert(id.clone(), token);
                Ok(Claim::Granted { token })
            }
            Some(b"held") => {
                let owner = reply
                    .get(1)
                    .and_then(text)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .ok_or_else(corrupt)?;
                let ttl_ms = number::<i64>(reply.get(2)).ok_or_else(corrupt)?;
                Ok(Claim::Held {
                    owner,
                    ttl_ms: u64::try_from(ttl_ms).unwrap_or(0),
                })
            }
            _ => Err(corrupt()),
        }
    }

    fn renew(
        &self,
        ids: &[SessionId],
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        check_owner(owner)?;
        let held: Vec<(SessionId, u64)> = {
            let tokens = self.token_map();
            ids.iter()
                .map(|id| (id.clone(), tokens.get(id).copied().unwrap_or(0)))
                .collect()
        };
        let mut out = Vec::with_capacity(ids.len());
        // Bounded script calls, so one renewal of many leases never holds Redis for long.
        for chunk in held.chunks(SCAN_PAGE) {
            let keys: Vec<String> = chunk
                .iter()
                .flat_map(|(id, _)| [self.names.lease(id), self.names.fence(id)])
                .collect();
            let mut args = vec![owner.as_bytes().to_vec(), millis(ttl).into_bytes()];
            args.extend(chunk.iter().map(|(_, t)| t.to_string().into_bytes()));
            let call = self.scripts.renew.call(&keys, args);
            let reply = self.pool.with(|conn| eval(conn, call))?.into_array()?;
            if reply.len() != chunk.len() {
                return Err(StoreError::Corrupt("unexpected renew reply".into()));
            }
            let mut tokens = self.token_map();
            for ((id, token), held) in chunk.iter().zip(reply) {
                // A session never claimed (token 0) is not held.
                let held = *token != 0 && held.into_int()? == 1;
                if !held {
                    tokens.remove(id);
                }
                out.push(held);
            }
        }
        Ok(out)
    }

    fn event_heads(
        &self,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let cmd = Cmd::new("XREAD")
            .arg("COUNT")
            .arg(limit.max(1))
            .arg("BLOCK")
            .arg(millis(wait))
            .arg("STREAMS")
            .arg(self.names.log())
            .arg(format!("{after}-0"));
        // [[log, [[id, [field, value, ...]], ...]]] or nil on timeout.
        let streams = self.pool.run(cmd)?.into_array()?;
        let mut out = Vec::new();
        for stream in streams {
            let mut parts = stream.into_array()?.into_iter();
            let entries = parts.nth(1).map(Value::into_array).transpose()?;
            for entry in entries.unwrap_or_default() {
                let mut entry = entry.into_array()?.into_iter();
                let (Some(id), Some(fields)) = (entry.next(), entry.next()) else {
                    return Err(StoreError::Corrupt("redis: malformed stream entry".into()));
                };
                let id = id.into_bytes()?.unwrap_or_default();
                let cursor = std::str::from_utf8(&id)
                    .ok()
                    .and_then(|s| s.split('-').next())
                    .map(|c| Value::Bulk(c.as_bytes().to_vec()));
                let mut fields = fields.into_array()?;
                // field, value pairs: s, q, k, t — then an empty payload.
                let values: Vec<Value> = fields.drain(..).skip(1).step_by(2).collect();
                let mut row = Vec::with_capacity(6);
                row.extend(cursor);
                row.extend(values);
                row.push(Value::Bulk(Vec::new()));
                out.push(parse_event(Value::Array(row))?.record);
            }
        }
        Ok(out)
    }

    fn unserved(&self) -> Result<Vec<SessionId>, StoreError> {
        let mut wanted = Vec::new();
        for (id, row) in self.stored_rows()? {
            let (record, _) = codec::decode_row(&id, &row)?;
            if record.desired_online && !record.logged_out {
                wanted.push(id);
            }
        }
        let mut free = Vec::new();
        for chunk in wanted.chunks(SCAN_PAGE) {
            let cmds: Vec<Cmd> = chunk
                .iter()
                .map(|id| Cmd::new("EXISTS").arg(self.names.lease(id)))
                .collect();
            let replies = self.pool.with(|conn| conn.pipeline(&cmds))?;
            for (id, reply) in chunk.iter().zip(replies) {
                if reply.into_int()? == 0 {
                    free.push(id.clone());
                }
            }
        }
        Ok(free)
    }

    fn release(&self, id: &SessionId, owner: &str) -> Result<(), StoreError> {
        check_owner(owner)?;
        let Some(token) = self.token_map().remove(id) else {
            return Ok(());
        };
        let call = self.scripts.release.call(
            &[self.names.lease(id)],
            vec![format!("{owner}|{token}").into_bytes()],
        );
        self.pool.with(|conn| eval(conn, call))?.ok().map(drop)
    }

    fn lease_owners(&self, ids: &[SessionId]) -> Result<Vec<Option<String>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(SCAN_PAGE) {
            let mut get = Cmd::new("MGET");
            for id in chunk {
                get = get.arg(self.names.lease(id));
            }
            let replies = self.pool.run(get)?.into_array()?;
            if replies.len() != chunk.len() {
                return Err(StoreError::Corrupt("unexpected MGET reply".into()));
            }
            for reply in replies {
                out.push(reply.into_bytes()?.map(|lease| {
                    let lease = String::from_utf8_lossy(&lease);
                    // `"<owner>|<token>"`; owners never contain '|'.
                    lease
                        .rsplit_once('|')
                        .map_or(lease.as_ref(), |(owner, _)| owner)
                        .to_owned()
                }));
            }
        }
        Ok(out)
    }

    fn announce(&self, me: &Member, ttl: Duration) -> Result<Vec<Member>, StoreError> {
        check_owner(&me.owner)?;
        let call = self.scripts.announce.call(
            &[self.names.members()],
            vec![
                me.owner.as_bytes().to_vec(),
                me.started_ms.to_string().into_bytes(),
                me.serving.to_string().into_bytes(),
                millis(ttl).into_bytes(),
            ],
        );
        let corrupt = || StoreError::Corrupt("unexpected announce reply".into());
        self.pool
            .with(|conn| eval(conn, call))?
            .into_array()?
            .into_iter()
            .map(|entry| {
                let entry = entry.into_array()?;
                let owner = entry
                    .first()
                    .and_then(text)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .ok_or_else(corrupt)?;
                Ok(Member {
                    owner,
                    started_ms: number(entry.get(1)).ok_or_else(corrupt)?,
                    serving: number(entry.get(2)).ok_or_else(corrupt)?,
                })
            })
            .collect()
    }

    fn withdraw(&self, owner: &str) -> Result<(), StoreError> {
        self.pool
            .run(Cmd::new("HDEL").arg(self.names.members()).arg(owner))
            .map(drop)
    }

    fn quarantined(&self) -> Result<Vec<QuarantineEntry>, StoreError> {
        self.pool
            .run(
                Cmd::new("LRANGE")
                    .arg(self.names.quarantine())
                    .arg(0i64)
                    .arg(-1i64),
            )?
            .into_array()?
            .into_iter()
            .map(|v| {
                let bytes = v
                    .into_bytes()?
                    .ok_or_else(|| StoreError::Corrupt("empty quarantine entry".into()))?;
                codec::decode_quarantine(&bytes)
            })
            .collect()
    }
}
