//! The shared store behaviour and Redis' own cases, each against a real `redis-server` started
//! on a loopback port in a temp dir (AOF with fsync on every write, as production must run it)
//! and killed when the test ends. Without `redis-server` installed the tests say so and pass
//! (`scripts/setup.sh` installs it where it can).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::*;
use crate::store::conformance::{self, keyring, Backend};

/// A `redis-server` for one test.
pub(crate) struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts one, or `None` (after saying why) when `redis-server` is not installed.
    pub(crate) fn start() -> Option<Server> {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, None)
    }

    fn start_in(dir: tempfile::TempDir, port: Option<u16>) -> Option<Server> {
        let port = port.unwrap_or_else(|| {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port()
        });
        let spawned = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--dir".as_ref(), dir.path().as_os_str()])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            // Uncompressed snapshots, so a scan of the files sees every stored byte.
            .args(["--rdbcompression", "no", "--save", ""])
            .args(["--logfile", "", "--loglevel", "notice"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("redis-server is not installed: skipping (scripts/setup.sh installs it)");
                return None;
            }
            Err(e) => panic!("starting redis-server: {e}"),
        };
        // Ready once it says so on its log (no polling).
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to accept connections") => break,
                Some(Ok(_)) => {}
                _ => {
                    let _ = child.kill();
                    panic!("redis-server on port {port} exited before it was ready");
                }
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Some(Server { child, port, dir })
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server without warning and starts it again on the same port and files.
    fn crash_and_restart(mut self) -> Server {
        self.child.kill().expect("kill redis-server");
        self.child.wait().expect("reap redis-server");
        let port = self.port;
        // The files stay: the same directory is handed to the new server.
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        Self::start_in(dir, Some(port)).expect("restarted")
    }

    fn command(&self, cmd: Cmd) -> Value {
        let target = Target::parse(&self.url()).expect("url");
        Pool::new(target, IO_TIMEOUT)
            .run(cmd)
            .expect("redis command")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The conformance backend: one server, stores reopened on the same data.
pub(crate) struct Redis {
    server: Server,
}

impl Redis {
    pub(crate) fn start() -> Option<Redis> {
        Server::start().map(|server| Redis { server })
    }
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    v.into_bytes().expect("redis reply")
}

impl Backend for Redis {
    type S = RedisStore;

    fn open(&mut self, keys: Keyring, previous: Option<RedisStore>) -> RedisStore {
        drop(previous);
        RedisStore::open(&RedisOptions::new(self.server.url()), keys).expect("open redis store")
    }

    fn raw_secret(&self, store: &RedisStore, id: &SessionId, key: &str) -> Option<Vec<u8>> {
        bytes(
            self.server
                .command(Cmd::new("HGET").arg(store.names.values(id)).arg(key)),
        )
    }

    fn set_raw_secret(&self, store: &RedisStore, id: &SessionId, key: &str, record: Vec<u8>) {
        self.server.command(
            Cmd::new("HSET")
                .arg(store.names.values(id))
                .arg(key)
                .arg(record),
        );
        self.server.command(
            Cmd::new("ZADD")
                .arg(store.names.index(id))
                .arg(0u64)
                .arg(key),
        );
    }

    fn raw_event(&self, store: &RedisStore, cursor: u64) -> Option<Vec<u8>> {
        bytes(
            self.server
                .command(Cmd::new("HGET").arg(store.names.payloads()).arg(cursor)),
        )
    }

    fn set_raw_event(&self, store: &RedisStore, cursor: u64, record: Vec<u8>) {
        self.server.command(
            Cmd::new("HSET")
                .arg(store.names.payloads())
                .arg(cursor)
                .arg(record),
        );
    }

    fn at_rest_contains(&self, _store: &RedisStore, needle: &[u8]) -> bool {
        // What Redis keeps on disk: its append-only files, and a fresh snapshot of memory.
        self.server.command(Cmd::new("SAVE")).ok().expect("SAVE");
        files_contain(self.server.dir(), needle)
    }

    fn fail_event_kind(&self, store: &RedisStore, kind: u8) {
        store
            .fail_commits_with_event_kind(Some(kind))
            .expect("set fault");
    }

    fn raw_profile(&self, store: &RedisStore, id: &SessionId) -> Option<Vec<u8>> {
        let row = bytes(
            self.server.command(
                Cmd::new("HGET")
                    .arg(store.names.sessions())
                    .arg(id.as_str()),
            ),
        )?;
        codec::decode_row(id, &row).expect("row").1
    }

    fn set_raw_profile(&self, store: &RedisStore, id: &SessionId, record: Vec<u8>) {
        let sessions = store.names.sessions();
        let row = bytes(
            self.server
                .command(Cmd::new("HGET").arg(&sessions).arg(id.as_str())),
        )
        .expect("row");
        let (clear, _) = codec::decode_row(id, &row).expect("row");
        let row = codec::encode_row(&clear, Some(&record));
        self.server
            .command(Cmd::new("HSET").arg(&sessions).arg(id.as_str()).arg(row));
    }
}

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    let mut stack: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                stack.push(entry.expect("entry").path());
            }
        } else if let Ok(data) = std::fs::read(&path) {
            if data.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
    }
    false
}

conformance::behaviour_tests!(match Redis::start() {
    Some(redis) => redis,
    None => return,
});

fn k1() -> Keyring {
    keyring(&[("k1", 1)])
}

fn open(server: &Server) -> RedisStore {
    RedisStore::open(&RedisOptions::new(server.url()), k1()).expect("open")
}

fn session(store: &RedisStore, name: &str) -> SessionId {
    let id: SessionId = name.parse().expect("id");
    store
        .put_session(&SessionRecord::new(id.clone(), 1))
        .expect("put session");
    id
}

#[test]
fn two_gateways_on_one_redis_share_one_gap_free_log() {
    let Some(server) = Server::start() else {
        return;
    };
    // Two stores, as two gateway processes would hold them, committing to one session and to
    // their own: every stale seq is caught by the script and re-sealed.
    let a = Arc::new(open(&server));
    let b = Arc::new(open(&server));
    let shared = session(&a, "shared");
    let own_a = session(&a, "a");
    let own_b = session(&b, "b");
    std::thread::scope(|scope| {
        for (store, own) in [(&a, &own_a), (&b, &own_b)] {
            let shared = shared.clone();
            scope.spawn(move || {
                for i in 0..60 {
                    store
                        .commit(&shared, Batch::new().event(1, i, vec![1]))
                        .expect("shared");
                    store
                        .commit(own, Batch::new().event(2, i, vec![2]))
                        .expect("own");
                }
            });
        }
    });
    let events = a
        .events_after(0, &EventFilter::all(), 1000)
        .expect("events");
    assert_eq!(events.len(), 240);
    for pair in events.windows(2) {
        assert!(pair[0].cursor < pair[1].cursor, "cursors increase");
    }
    for id in [&shared, &own_a, &own_b] {
        let seqs: Vec<u64> = events
            .iter()
            .filter(|e| &e.session_id == id)
            .map(|e| e.seq)
            .collect();
        let expected: Vec<u64> = (1..=u64::try_from(seqs.len()).expect("small")).collect();
        assert_eq!(seqs, expected, "{id}: gap-free, in cursor order");
    }
    // Payloads open whichever store sealed them.
    assert!(events.iter().all(|e| e.payload == [e.kind]));
}

#[test]
fn commits_survive_a_redis_crash_and_forgotten_scripts() {
    let Some(server) = Server::start() else {
        return;
    };
    let store = open(&server);
    let id = session(&store, "s");
    let first = store
        .commit(
            &id,
            Batch::new()
                .put_secret("creds", b"secret".to_vec())
                .event(1, 5, b"hello".to_vec()),
        )
        .expect("commit");
    // SIGKILL: only what reached the AOF survives, and with fsync always that is every commit
    // that was answered.
    let server = server.crash_and_restart();
    let err = store.commit(&id, Batch::new().event(1, 6, vec![])).err();
    // The pooled connection died with the server: at most that one attempt fails, retryably.
    if let Some(err) = err {
        assert!(err.is_retryable(), "{err}");
        store
            .commit(&id, Batch::new().event(1, 6, vec![]))
            .expect("after reconnect");
    }
    // The restarted server has no scripts cached: the commit above re-sent them.
    let again = open(&server);
    assert_eq!(
        again
            .secret(&id, "creds")
            .expect("read")
            .as_deref()
            .map(Vec::as_slice),
        Some(&b"secret"[..])
    );
    let events = again
        .events_after(0, &EventFilter::all(), 10)
        .expect("events");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0], first[0]);
    assert_eq!((events[1].seq, events[1].cursor), (2, first[0].cursor + 1));
}

#[test]
fn a_foreign_key_is_refused_and_the_url_is_checked() {
    let Some(server) = Server::start() else {
        return;
    };
    let store = open(&server);
    let id = session(&store, "s");
    store
        .commit(&id, Batch::new().put_secret("k", vec![1]))
        .expect("commit");
    let other = keyring(&[("k1", 9)]);
    let err = RedisStore::open(&RedisOptions::new(server.url()), other).expect_err("mismatch");
    assert!(matches!(err, StoreError::KeyMismatch { .. }), "{err}");
    let err = RedisStore::open(&RedisOptions::new("redis://127.0.0.1:notaport"), k1())
        .expect_err("bad url");
    assert!(err.to_string().contains("bad port"), "{err}");
    // Another prefix is another store on the same server.
    let mut options = RedisOptions::new(server.url());
    options.prefix = "tenant2".into();
    let other = RedisStore::open(&options, keyring(&[("k1", 9)])).expect("separate prefix");
    assert!(other.sessions().expect("sessions").is_empty());
}

#[test]
fn session_filters_page_through_many_other_events() {
    let Some(server) = Server::start() else {
        return;
    };
    let store = open(&server);
    let quiet = session(&store, "quiet");
    let busy = session(&store, "busy");
    let mut wanted = Vec::new();
    for i in 0..1500 {
        let id = if i % 300 == 0 { &quiet } else { &busy };
        let kind = if i % 2 == 0 { 1 } else { 2 };
        let e = store
            .commit(id, Batch::new().event(kind, i, vec![]))
            .expect("commit");
        if id == &quiet {
            wanted.extend(e);
        }
    }
    let filter = EventFilter {
        sessions: vec![quiet.clone()],
        kinds: vec![],
    };
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_after(after, &filter, 2).expect("page");
        let Some(last) = page.last() else { break };
        after = last.cursor;
        got.extend(page);
    }
    assert_eq!(got, wanted);
    // A kind filter that matches nothing in the first scan pages still finds later events.
    let late = store
        .commit(&busy, Batch::new().event(9, 0, vec![]))
        .expect("commit");
    let filter = EventFilter {
        sessions: vec![],
        kinds: vec![9],
    };
    assert_eq!(store.events_after(0, &filter, 5).expect("kind"), late);
}

#[test]
fn one_owner_per_session_and_former_owners_are_fenced() {
    let Some(server) = Server::start() else {
        return;
    };
    let a = open(&server);
    let b = open(&server);
    let id = session(&a, "s");
    let ttl = Duration::from_secs(30);
    let Claim::Granted { token: first } = a.claim(&id, "gw-a", ttl).expect("claim") else {
        panic!("nobody held it");
    };
    assert!(first >= 1);
    // Claiming again is idempotent for the holder and refused to anyone else.
    assert_eq!(
        a.claim(&id, "gw-a", ttl).expect("again"),
        Claim::Granted { token: first }
    );
    match b.claim(&id, "gw-b", ttl).expect("claim") {
        Claim::Held { owner, ttl_ms } => {
            assert_eq!(owner, "gw-a");
            assert!(ttl_ms > 0 && ttl_ms <= 30_000, "{ttl_ms}");
        }
        other => panic!("{other:?}"),
    }
    a.commit(&id, Batch::new().event(1, 1, vec![1]))
        .expect("owner writes");
    // A writer that never claimed the session is refused once someone has.
    let err = b
        .commit(&id, Batch::new().event(1, 2, vec![2]))
        .expect_err("not the owner");
    assert!(matches!(err, StoreError::Fenced(_)), "{err}");

    // `a` stalls past its lease (the lease lapses), `b` takes over with a larger token.
    server.command(Cmd::new("DEL").arg(a.names.lease(&id)));
    let Claim::Granted { token: second } = b.claim(&id, "gw-b", ttl).expect("takeover") else {
        panic!("the lease had lapsed");
    };
    assert!(second > first);
    b.commit(&id, Batch::new().event(1, 3, vec![3]))
        .expect("new owner writes");
    // The former owner wakes up: every write is refused, and counted, and its renewal says the
    // session is lost.
    for i in 0..3 {
        let err = a
            .commit(
                &id,
                Batch::new()
                    .put_secret("creds", vec![9])
                    .event(1, 10 + i, vec![9]),
            )
            .expect_err("fenced");
        assert!(matches!(err, StoreError::Fenced(_)), "{err}");
    }
    assert_eq!(a.fenced_writes(), 3);
    assert_eq!(
        a.renew(std::slice::from_ref(&id), "gw-a", ttl)
            .expect("renew"),
        [false]
    );
    let events = b.events_after(0, &EventFilter::all(), 10).expect("events");
    let payloads: Vec<Vec<u8>> = events.into_iter().map(|e| e.payload).collect();
    assert_eq!(
        payloads,
        [vec![1], vec![3]],
        "nothing of the former owner after the takeover"
    );
    assert_eq!(b.secret(&id, "creds").expect("read"), None);

    // A lease that lapsed with nobody claiming meanwhile is the owner's again on renewal.
    server.command(Cmd::new("DEL").arg(b.names.lease(&id)));
    assert_eq!(
        b.renew(std::slice::from_ref(&id), "gw-b", ttl)
            .expect("renew"),
        [true]
    );
    b.commit(&id, Batch::new().event(1, 4, vec![4]))
        .expect("still the owner");
    // Released on a clean stop: the next claimant need not wait for the TTL.
    b.release(&id, "gw-b").expect("release");
    assert!(matches!(
        a.claim(&id, "gw-a", ttl).expect("claim"),
        Claim::Granted { token } if token > second
    ));
    assert!(a.claim(&id, "bad|owner", ttl).is_err());
}

#[test]
fn event_heads_wait_for_what_others_commit() {
    let Some(server) = Server::start() else {
        return;
    };
    let a = open(&server);
    let b = Arc::new(open(&server));
    let id = session(&a, "s");
    let first = a
        .commit(&id, Batch::new().event(4, 7, b"secret text".to_vec()))
        .expect("commit");
    let heads = b
        .event_heads(0, 10, Duration::from_millis(1))
        .expect("heads");
    assert_eq!(heads.len(), 1);
    assert_eq!(
        (
            heads[0].cursor,
            heads[0].seq,
            heads[0].kind,
            heads[0].timestamp_ms
        ),
        (first[0].cursor, 1, 4, 7)
    );
    assert!(heads[0].payload.is_empty(), "heads carry no payload");
    // A reader caught up blocks until another process commits.
    let waiting = {
        let b = Arc::clone(&b);
        let after = first[0].cursor;
        std::thread::spawn(move || b.event_heads(after, 10, Duration::from_secs(20)))
    };
    let second = a
        .commit(&id, Batch::new().event(5, 8, vec![]))
        .expect("commit");
    let heads = waiting.join().expect("thread").expect("heads");
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0].cursor, second[0].cursor);
    assert_eq!(heads[0].session_id, id);
}

#[test]
fn unserved_sessions_are_the_wanted_ones_without_a_lease() {
    let Some(server) = Server::start() else {
        return;
    };
    let store = open(&server);
    let wanted = session(&store, "wanted");
    let held = session(&store, "held");
    let mut offline = SessionRecord::new("offline".parse().expect("id"), 1);
    offline.desired_online = false;
    store.put_session(&offline).expect("put");
    let mut gone = SessionRecord::new("gone".parse().expect("id"), 1);
    gone.logged_out = true;
    store.put_session(&gone).expect("put");
    store
        .claim(&held, "gw", Duration::from_secs(30))
        .expect("claim");
    assert_eq!(store.unserved().expect("unserved"), [wanted]);
}

#[test]
fn gateways_announce_themselves_and_leases_name_their_owners() {
    let Some(server) = Server::start() else {
        return;
    };
    let store = open(&server);
    let a = Member {
        owner: "10.0.0.1:50051#aa".into(),
        started_ms: 100,
        serving: 3,
    };
    let b = Member {
        owner: "10.0.0.2:50051#bb".into(),
        started_ms: 200,
        serving: 0,
    };
    assert_eq!(
        store.announce(&a, Duration::from_secs(30)).expect("a"),
        std::slice::from_ref(&a)
    );
    let mut both = store.announce(&b, Duration::from_millis(300)).expect("b");
    both.sort_by(|x, y| x.owner.cmp(&y.owner));
    assert_eq!(both, [a.clone(), b.clone()]);
    // A new announcement replaces the old one.
    let a2 = Member {
        serving: 7,
        ..a.clone()
    };
    let mut again = store
        .announce(&a2, Duration::from_secs(30))
        .expect("a again");
    again.sort_by(|x, y| x.owner.cmp(&y.owner));
    assert_eq!(again, [a2.clone(), b.clone()]);
    // A withdrawn one is gone at once; a lapsed one at the next announcement.
    store.withdraw(&a.owner).expect("withdraw");
    let seen = store.announce(&b, Duration::from_millis(1)).expect("b");
    assert_eq!(seen, std::slice::from_ref(&b), "withdrawn");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alone = store.announce(&a2, Duration::from_secs(30)).expect("a");
        if alone == [a2.clone()] {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "b never lapsed: {alone:?}"
        );
        std::thread::yield_now();
    }
    // An owner id with the lease separator is refused.
    let bad = Member {
        owner: "x|1".into(),
        ..a.clone()
    };
    assert!(store.announce(&bad, Duration::from_secs(1)).is_err());

    let served = session(&store, "served");
    let free = session(&store, "free");
    store
        .claim(&served, &a.owner, Duration::from_secs(30))
        .expect("claim");
    assert_eq!(
        store
            .lease_owners(&[served.clone(), free.clone()])
            .expect("owners"),
        [Some(a.owner.clone()), None]
    );
    store.release(&served, &a.owner).expect("release");
    assert_eq!(
        store.lease_owners(&[served, free]).expect("owners"),
        [None, None]
    );
}
