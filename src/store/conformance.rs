//! Behaviour every [`Store`] backend must show, written once and run against each backend
//! through [`behaviour_tests!`]. Test-only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{
    Batch, EventFilter, EventRecord, Keyring, Retention, SessionId, SessionRecord, Store,
    StoreError,
};

/// What the shared tests need from a backend beyond the [`Store`] trait.
pub(super) trait Backend {
    type S: Store + 'static;

    /// Opens the store under `keys`. With `previous`, closes it and reopens the same data.
    fn open(&mut self, keys: Keyring, previous: Option<Self::S>) -> Self::S;

    /// The sealed record of a secret as stored, bypassing the store's API.
    fn raw_secret(&self, store: &Self::S, id: &SessionId, key: &str) -> Option<Vec<u8>>;

    /// Writes a sealed record directly, bypassing encryption.
    fn set_raw_secret(&self, store: &Self::S, id: &SessionId, key: &str, record: Vec<u8>);

    /// The sealed payload of an event as stored, bypassing the store's API.
    fn raw_event(&self, store: &Self::S, cursor: u64) -> Option<Vec<u8>>;

    /// Overwrites the stored payload of an event, bypassing encryption.
    fn set_raw_event(&self, store: &Self::S, cursor: u64, record: Vec<u8>);

    /// Whether `needle` occurs anywhere the backend keeps data at rest (its files, for SQLite).
    fn at_rest_contains(&self, store: &Self::S, needle: &[u8]) -> bool;

    /// Makes the storage itself fail whenever an event of `kind` is appended.
    fn fail_event_kind(&self, store: &Self::S, kind: u8);

    /// The sealed personal part of a session row as stored, bypassing the store's API.
    fn raw_profile(&self, store: &Self::S, id: &SessionId) -> Option<Vec<u8>>;

    /// Overwrites the sealed personal part of a session row, bypassing encryption.
    fn set_raw_profile(&self, store: &Self::S, id: &SessionId, record: Vec<u8>);
}

/// Instantiates every shared behaviour test for the backend built by `$backend`.
macro_rules! behaviour_tests {
    ($backend:expr) => {
        mod behaviour {
            use super::*;
            use $crate::store::conformance as c;

            #[test]
            fn sessions_round_trip() {
                c::sessions_round_trip($backend);
            }
            #[test]
            fn secrets_and_prefixes() {
                c::secrets_and_prefixes($backend);
            }
            #[test]
            fn secret_needs_a_session_row() {
                c::secret_needs_a_session_row($backend);
            }
            #[test]
            fn commit_is_atomic() {
                c::commit_is_atomic($backend);
            }
            #[test]
            fn seqs_and_cursors_survive_reopen() {
                c::seqs_and_cursors_survive_reopen($backend);
            }
            #[test]
            fn events_after_filters_and_limits() {
                c::events_after_filters_and_limits($backend);
            }
            #[test]
            fn prune_by_age_and_count() {
                c::prune_by_age_and_count($backend);
            }
            #[test]
            fn corrupt_record_is_quarantined() {
                c::corrupt_record_is_quarantined($backend);
            }
            #[test]
            fn record_moved_to_another_row_is_quarantined() {
                c::record_moved_to_another_row_is_quarantined($backend);
            }
            #[test]
            fn rotation_reads_old_keys_and_reseals() {
                c::rotation_reads_old_keys_and_reseals($backend);
            }
            #[test]
            fn event_payloads_are_sealed_at_rest() {
                c::event_payloads_are_sealed_at_rest($backend);
            }
            #[test]
            fn tampered_event_keeps_its_place() {
                c::tampered_event_keeps_its_place($backend);
            }
            #[test]
            fn rotation_and_reseal_cover_events() {
                c::rotation_and_reseal_cover_events($backend);
            }
            #[test]
            fn redaction_blanks_payloads_in_place() {
                c::redaction_blanks_payloads_in_place($backend);
            }
            #[test]
            fn session_profiles_are_sealed_at_rest() {
                c::session_profiles_are_sealed_at_rest($backend);
            }
            #[test]
            fn tampered_profile_is_quarantined_and_the_row_stays() {
                c::tampered_profile_is_quarantined_and_the_row_stays($backend);
            }
            #[test]
            fn rotation_and_reseal_cover_session_profiles() {
                c::rotation_and_reseal_cover_session_profiles($backend);
            }
            #[test]
            fn concurrent_commits_keep_seqs_gap_free() {
                c::concurrent_commits_keep_seqs_gap_free($backend);
            }
        }
    };
}
pub(super) use behaviour_tests;

const FAULT_KIND: u8 = 0xee;

pub(super) fn keyring(spec: &[(&str, u8)]) -> Keyring {
    let value: Vec<String> = spec
        .iter()
        .map(|(id, byte)| format!("{id}:{}", hex::encode([*byte; 32])))
        .collect();
    Keyring::from_env_value(&value.join(",")).expect("test keyring")
}

fn k1() -> Keyring {
    keyring(&[("k1", 1)])
}

fn sid(s: &str) -> SessionId {
    s.parse().expect("valid session id")
}

fn record(id: &str) -> SessionRecord {
    SessionRecord::new(sid(id), 1_000)
}

fn new_session(store: &dyn Store, id: &str) -> SessionId {
    store.put_session(&record(id)).expect("put_session");
    sid(id)
}

fn value(store: &dyn Store, id: &SessionId, key: &str) -> Option<Vec<u8>> {
    store
        .secret(id, key)
        .expect("secret readable")
        .map(|v| v.to_vec())
}

pub(super) fn all_events(store: &dyn Store) -> Vec<EventRecord> {
    store
        .events_after(0, &EventFilter::all(), usize::MAX)
        .expect("events_after")
}

fn one_event(store: &dyn Store, id: &SessionId, kind: u8, ts: i64) -> EventRecord {
    let mut events = store
        .commit(id, Batch::new().event(kind, ts, format!("{id}@{ts}")))
        .expect("commit");
    assert_eq!(events.len(), 1);
    events.remove(0)
}

/// Cursors strictly increase and each session's seqs run 1, 2, 3, ... in cursor order.
fn assert_log_consistent(events: &[EventRecord]) {
    for pair in events.windows(2) {
        assert!(pair[0].cursor < pair[1].cursor, "cursor order: {pair:?}");
    }
    let mut next: HashMap<&SessionId, u64> = HashMap::new();
    for e in events {
        let expected = next.entry(&e.session_id).or_insert(1);
        assert_eq!(e.seq, *expected, "seq gap in {}", e.session_id);
        *expected += 1;
    }
}

pub(super) fn sessions_round_trip(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let mut a = record("alpha");
    a.metadata = BTreeMap::from([("user".into(), "u1".into()), ("bot".into(), "b1".into())]);
    a.jid = Some("15550001111.0:3@s.whatsapp.net".into());
    a.push_name = Some("Alpha".into());
    a.platform = Some("android".into());
    a.last_connected_at_ms = Some(2_000);
    let z = record("zulu");
    store.put_session(&z).expect("put zulu");
    store.put_session(&a).expect("put alpha");
    assert_eq!(store.session(&a.id).expect("get"), Some(a.clone()));
    assert_eq!(store.sessions().expect("list"), vec![a.clone(), z.clone()]);
    assert_eq!(store.session(&sid("nobody")).expect("get"), None);

    // An update replaces every column and the whole metadata map, and keeps the secrets.
    store
        .commit(&a.id, Batch::new().put_secret("creds", b"c".to_vec()))
        .expect("commit");
    a.metadata = BTreeMap::from([("user".into(), "u2".into())]);
    a.desired_online = false;
    a.logged_out = true;
    a.jid = None;
    store.put_session(&a).expect("update");
    assert_eq!(store.session(&a.id).expect("get"), Some(a.clone()));
    assert_eq!(value(&store, &a.id, "creds"), Some(b"c".to_vec()));

    let store = b.open(k1(), Some(store));
    assert_eq!(store.sessions().expect("list"), vec![a.clone(), z.clone()]);

    // Deleting drops the row and the secrets, not the events.
    one_event(&store, &a.id, 1, 10);
    store.delete_session(&a.id).expect("delete");
    assert_eq!(store.session(&a.id).expect("get"), None);
    assert_eq!(store.sessions().expect("list"), vec![z]);
    assert_eq!(
        store
            .events_after(0, &EventFilter::all(), 10)
            .expect("events")
            .len(),
        1
    );
    store.put_session(&a).expect("recreate");
    assert_eq!(value(&store, &a.id, "creds"), None);
    // The recreated session continues its seq.
    assert_eq!(one_event(&store, &a.id, 1, 11).seq, 2);
    // Deleting an unknown session is not an error.
    store
        .delete_session(&sid("nobody"))
        .expect("delete unknown");
}

pub(super) fn secrets_and_prefixes(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let s = new_session(&store, "s");
    let keys = ["a", "a/", "a/1", "a/2", "ab", "b", "é/1"];
    let mut batch = Batch::new();
    for k in keys {
        batch = batch.put_secret(k, k.as_bytes().to_vec());
    }
    store
        .commit(&s, batch.put_secret("empty", Vec::new()))
        .expect("commit");
    assert_eq!(value(&store, &s, "a/1"), Some(b"a/1".to_vec()));
    assert_eq!(value(&store, &s, "empty"), Some(Vec::new()));
    assert_eq!(value(&store, &s, "missing"), None);
    assert_eq!(value(&store, &sid("other"), "a"), None);

    let listed = |prefix: &str| -> Vec<String> {
        let found = store.secrets_with_prefix(&s, prefix).expect("prefix");
        for (k, v) in &found {
            let expected: &[u8] = if k == "empty" { b"" } else { k.as_bytes() };
            assert_eq!(v.as_slice(), expected, "value of {k}");
        }
        found.into_iter().map(|(k, _)| k).collect()
    };
    assert_eq!(listed("a/"), ["a/", "a/1", "a/2"]);
    assert_eq!(listed("a"), ["a", "a/", "a/1", "a/2", "ab"]);
    assert_eq!(listed("é"), ["é/1"]);
    assert_eq!(
        listed(""),
        ["a", "a/", "a/1", "a/2", "ab", "b", "empty", "é/1"]
    );
    assert!(listed("c").is_empty());

    store
        .commit(
            &s,
            Batch::new()
                .put_secret("a/1", b"new".to_vec())
                .delete_secret("b")
                .delete_secret("never-existed"),
        )
        .expect("commit");
    assert_eq!(value(&store, &s, "a/1"), Some(b"new".to_vec()));
    assert_eq!(value(&store, &s, "b"), None);

    store
        .commit(&s, Batch::new().delete_secret_prefix("a/"))
        .expect("delete prefix");
    let left: Vec<String> = store
        .secrets_with_prefix(&s, "")
        .expect("prefix")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(left, ["a", "ab", "empty", "é/1"]);

    // Ops apply in order: a put after DeleteAll survives it.
    store
        .commit(
            &s,
            Batch::new()
                .delete_all_secrets()
                .put_secret("fresh", b"f".to_vec()),
        )
        .expect("delete all");
    let left: Vec<String> = store
        .secrets_with_prefix(&s, "")
        .expect("prefix")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(left, ["fresh"]);
}

pub(super) fn secret_needs_a_session_row(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let ghost = sid("ghost");
    let err = store
        .commit(
            &ghost,
            Batch::new()
                .put_secret("creds", b"c".to_vec())
                .event(1, 1, vec![]),
        )
        .expect_err("no session row");
    assert!(
        matches!(err, StoreError::UnknownSession(ref id) if *id == ghost),
        "{err}"
    );
    assert!(all_events(&store).is_empty());
    assert_eq!(store.last_cursor().expect("cursor"), 0);

    // The row may travel in the same batch.
    store
        .commit(
            &ghost,
            Batch::new()
                .session(record("ghost"))
                .put_secret("creds", b"c".to_vec()),
        )
        .expect("row in batch");
    assert_eq!(value(&store, &ghost, "creds"), Some(b"c".to_vec()));

    // Events alone do not need a row (e.g. after the session was deleted).
    let orphan = sid("orphan");
    assert_eq!(one_event(&store, &orphan, 1, 5).seq, 1);

    let err = store
        .commit(&ghost, Batch::new().session(record("other")))
        .expect_err("mismatch");
    assert!(matches!(err, StoreError::SessionMismatch { .. }), "{err}");
}

pub(super) fn commit_is_atomic(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let s = new_session(&store, "s");
    store
        .commit(
            &s,
            Batch::new()
                .put_secret("creds", b"v1".to_vec())
                .put_secret("old", b"x".to_vec())
                .event(1, 10, vec![1])
                .event(1, 11, vec![2]),
        )
        .expect("setup");
    let before_events = all_events(&store);
    let before_cursor = store.last_cursor().expect("cursor");
    let before_row = store.session(&s).expect("row");

    b.fail_event_kind(&store, FAULT_KIND);
    let mut changed = record("s");
    changed.push_name = Some("changed".into());
    let err = store
        .commit(
            &s,
            Batch::new()
                .session(changed)
                .put_secret("creds", b"v2".to_vec())
                .put_secret("new", b"n".to_vec())
                .delete_secret("old")
                .delete_secret_prefix("")
                .event(1, 12, vec![3])
                .event(FAULT_KIND, 13, vec![4]),
        )
        .expect_err("injected fault");
    assert!(!matches!(err, StoreError::Quarantined { .. }), "{err}");

    assert_eq!(value(&store, &s, "creds"), Some(b"v1".to_vec()));
    assert_eq!(value(&store, &s, "old"), Some(b"x".to_vec()));
    assert_eq!(value(&store, &s, "new"), None);
    assert_eq!(store.session(&s).expect("row"), before_row);
    assert_eq!(all_events(&store), before_events);
    assert_eq!(store.last_cursor().expect("cursor"), before_cursor);

    // A new session created by a failing batch does not appear either.
    let t = sid("t");
    store
        .commit(
            &t,
            Batch::new()
                .session(record("t"))
                .put_secret("creds", b"t".to_vec())
                .event(FAULT_KIND, 1, vec![]),
        )
        .expect_err("injected fault");
    assert_eq!(store.session(&t).expect("row"), None);
    assert_eq!(value(&store, &t, "creds"), None);

    // The next good commit continues without a gap.
    let next = one_event(&store, &s, 2, 14);
    assert_eq!(next.seq, 3);
    assert_eq!(next.cursor, before_cursor + 1);
    assert_eq!(one_event(&store, &t, 2, 15).seq, 1);
    assert_log_consistent(&all_events(&store));
}

pub(super) fn seqs_and_cursors_survive_reopen(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let (a, bb, c) = (sid("a"), sid("b"), sid("c"));
    let mut got = Vec::new();
    got.extend(
        store
            .commit(&a, Batch::new().event(1, 1, vec![]))
            .expect("a"),
    );
    got.extend(
        store
            .commit(&bb, Batch::new().event(1, 2, vec![]).event(2, 3, vec![]))
            .expect("b"),
    );
    got.extend(
        store
            .commit(
                &a,
                Batch::new()
                    .event(1, 4, vec![])
                    .event(1, 5, vec![])
                    .event(1, 6, vec![]),
            )
            .expect("a"),
    );
    // A commit without events assigns nothing.
    new_session(&store, "c");
    assert!(store
        .commit(&c, Batch::new().put_secret("k", b"v".to_vec()))
        .expect("c")
        .is_empty());
    got.extend(
        store
            .commit(&bb, Batch::new().event(3, 7, vec![]))
            .expect("b"),
    );

    let seqs: Vec<(String, u64)> = got
        .iter()
        .map(|e| (e.session_id.to_string(), e.seq))
        .collect();
    let expected = [
        ("a", 1),
        ("b", 1),
        ("b", 2),
        ("a", 2),
        ("a", 3),
        ("a", 4),
        ("b", 3),
    ];
    assert_eq!(seqs, expected.map(|(s, n)| (s.to_owned(), n)).to_vec());
    assert_eq!(
        got.iter().map(|e| e.cursor).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert_eq!(store.last_cursor().expect("cursor"), 7);
    assert_eq!(all_events(&store), got);

    let store = b.open(k1(), Some(store));
    assert_eq!(store.last_cursor().expect("cursor"), 7);
    assert_eq!(all_events(&store), got);
    let next = one_event(&store, &a, 1, 8);
    assert_eq!((next.seq, next.cursor), (5, 8));
    let next = one_event(&store, &c, 1, 9);
    assert_eq!((next.seq, next.cursor), (1, 9));
    assert_log_consistent(&all_events(&store));
}

pub(super) fn events_after_filters_and_limits(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let (a, bb, c) = (sid("a"), sid("b"), sid("c"));
    let plan = [(&a, 1), (&bb, 2), (&a, 2), (&c, 1), (&bb, 3), (&a, 1)];
    let mut all = Vec::new();
    for (i, (id, kind)) in plan.iter().enumerate() {
        let ts = 100 + i64::try_from(i).expect("small");
        all.push(one_event(&store, id, *kind, ts));
    }
    assert_eq!(all[0].payload, b"a@100");
    assert_eq!(all[0].timestamp_ms, 100);
    let every = EventFilter::all();
    assert_eq!(store.events_after(0, &every, 100).expect("all"), all);

    // Paging with the last cursor of each page visits everything once.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_after(after, &every, 4).expect("page");
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        after = last.cursor;
        paged.extend(page);
    }
    assert_eq!(paged, all);

    let select = |sessions: &[&SessionId], kinds: &[u8], after: u64, limit: usize| {
        let filter = EventFilter {
            sessions: sessions.iter().map(|s| (*s).clone()).collect(),
            kinds: kinds.to_vec(),
        };
        let got = store.events_after(after, &filter, limit).expect("filtered");
        let expected: Vec<EventRecord> = all
            .iter()
            .filter(|e| e.cursor > after && filter.matches(e))
            .take(limit)
            .cloned()
            .collect();
        assert_eq!(got, expected, "sessions {sessions:?} kinds {kinds:?}");
        got.len()
    };
    assert_eq!(select(&[&a], &[], 0, 100), 3);
    assert_eq!(select(&[&a, &c], &[], 0, 100), 4);
    assert_eq!(select(&[], &[1], 0, 100), 3);
    assert_eq!(select(&[], &[2, 3], 0, 100), 3);
    assert_eq!(select(&[&bb], &[2], 0, 100), 1);
    assert_eq!(select(&[&a], &[1], 0, 1), 1);
    assert_eq!(select(&[&a], &[1], all[0].cursor, 100), 1);
    assert_eq!(select(&[&sid("nobody")], &[], 0, 100), 0);
    assert_eq!(select(&[], &[9], 0, 100), 0);
    assert_eq!(select(&[], &[], 0, 0), 0);
    assert_eq!(select(&[], &[], all[5].cursor, 100), 0);
    assert!(store
        .events_after(u64::MAX, &every, 10)
        .expect("beyond")
        .is_empty());

    // Pages bounded in bytes: payloads are 5 bytes ("a@100"), so a 12-byte page ends with the
    // event that crosses the bound, and a 1-byte page still holds one event.
    let page = store.events_page(0, &every, 100, 12).expect("page");
    assert_eq!(page, all[..3]);
    let page = store.events_page(0, &every, 2, 1_000).expect("page");
    assert_eq!(page, all[..2]);
    let page = store
        .events_page(all[4].cursor, &every, 100, 1)
        .expect("page");
    assert_eq!(page, all[5..]);
}

pub(super) fn prune_by_age_and_count(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let (a, bb) = (sid("a"), sid("b"));
    for (id, ts) in [
        (&a, 100),
        (&bb, 150),
        (&a, 200),
        (&a, 300),
        (&bb, 350),
        (&a, 400),
    ] {
        one_event(&store, id, 1, ts);
    }
    let timestamps = |store: &dyn Store| -> Vec<(String, i64)> {
        all_events(store)
            .into_iter()
            .map(|e| (e.session_id.to_string(), e.timestamp_ms))
            .collect()
    };
    assert_eq!(
        store
            .prune_events(&Retention::default(), 1_000)
            .expect("none"),
        0
    );

    let by_age = Retention {
        max_age_ms: Some(200),
        max_per_session: None,
    };
    // Cutoff 300: strictly older events go, the one at exactly 300 stays.
    assert_eq!(store.prune_events(&by_age, 500).expect("age"), 3);
    assert_eq!(
        timestamps(&store),
        [("a".into(), 300), ("b".into(), 350), ("a".into(), 400)]
    );

    let by_count = Retention {
        max_age_ms: None,
        max_per_session: Some(1),
    };
    assert_eq!(store.prune_events(&by_count, 500).expect("count"), 1);
    assert_eq!(timestamps(&store), [("b".into(), 350), ("a".into(), 400)]);
    assert_eq!(store.prune_events(&by_count, 500).expect("again"), 0);
    assert_eq!(store.last_cursor().expect("cursor"), 6);

    let store = b.open(k1(), Some(store));
    assert_eq!(store.last_cursor().expect("cursor"), 6);
    let next = one_event(&store, &a, 1, 600);
    assert_eq!((next.seq, next.cursor), (5, 7));

    // Both bounds at once, and a zero count empties the log; cursors still never go back.
    for ts in [610, 620, 630] {
        one_event(&store, &bb, 1, ts);
    }
    let both = Retention {
        max_age_ms: Some(100),
        max_per_session: Some(2),
    };
    // Age (cutoff 540) drops b@350 and a@400; count then drops b@610.
    assert_eq!(store.prune_events(&both, 640).expect("both"), 3);
    assert_eq!(
        timestamps(&store),
        [("a".into(), 600), ("b".into(), 620), ("b".into(), 630)]
    );
    let zero = Retention {
        max_age_ms: None,
        max_per_session: Some(0),
    };
    assert_eq!(store.prune_events(&zero, 0).expect("zero"), 3);
    assert!(all_events(&store).is_empty());
    assert_eq!(store.last_cursor().expect("cursor"), 10);
    let store = b.open(k1(), Some(store));
    assert_eq!(store.last_cursor().expect("cursor"), 10);
    let next = one_event(&store, &bb, 1, 700);
    assert_eq!((next.seq, next.cursor), (6, 11));
}

pub(super) fn corrupt_record_is_quarantined(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let s = new_session(&store, "s");
    store
        .commit(
            &s,
            Batch::new()
                .put_secret("creds", vec![0x42; 64])
                .put_secret("other", b"w".to_vec())
                .put_secret("pre/1", b"p1".to_vec())
                .put_secret("pre/2", b"p2".to_vec()),
        )
        .expect("commit");

    let mut raw = b.raw_secret(&store, &s, "creds").expect("stored");
    let mid = raw.len() / 2;
    raw[mid] ^= 0x01;
    b.set_raw_secret(&store, &s, "creds", raw);

    match store.secret(&s, "creds") {
        Err(StoreError::Quarantined {
            session,
            key,
            reason,
        }) => {
            assert_eq!(session, s);
            assert_eq!(key, "creds");
            assert!(reason.contains("authentication failed"), "{reason}");
        }
        other => panic!("expected quarantine, got {other:?}"),
    }
    assert_eq!(
        b.raw_secret(&store, &s, "creds"),
        None,
        "moved out of secrets"
    );
    let listed = store.quarantined().expect("quarantined");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].session_id.as_str(), listed[0].key.as_str()),
        ("s", "creds")
    );
    assert!(listed[0].reason.contains("authentication failed"));
    assert!(listed[0].quarantined_at_ms > 0);

    // Later reads see nothing (never the corrupt data); the quarantine entry stays.
    assert_eq!(value(&store, &s, "creds"), None);
    assert_eq!(store.quarantined().expect("quarantined"), listed);
    assert_eq!(value(&store, &s, "other"), Some(b"w".to_vec()));

    // In a prefix read: reported, quarantined, then the rest reads normally.
    let raw = b.raw_secret(&store, &s, "pre/2").expect("stored");
    b.set_raw_secret(&store, &s, "pre/2", raw[..5].to_vec());
    match store.secrets_with_prefix(&s, "pre/") {
        Err(StoreError::Quarantined { key, reason, .. }) => {
            assert_eq!(key, "pre/2");
            assert!(reason.contains("truncated"), "{reason}");
        }
        other => panic!("expected quarantine, got {:?}", other.map(|v| v.len())),
    }
    let rest = store.secrets_with_prefix(&s, "pre/").expect("rest");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0, "pre/1");

    // Writing the key again works and does not touch the quarantine.
    store
        .commit(&s, Batch::new().put_secret("creds", b"re-paired".to_vec()))
        .expect("rewrite");
    assert_eq!(value(&store, &s, "creds"), Some(b"re-paired".to_vec()));

    let store = b.open(k1(), Some(store));
    let keys: Vec<String> = store
        .quarantined()
        .expect("quarantined")
        .into_iter()
        .map(|q| q.key)
        .collect();
    assert_eq!(keys, ["creds", "pre/2"]);
    // Deleting the session keeps the quarantine for operators.
    store.delete_session(&s).expect("delete");
    assert_eq!(store.quarantined().expect("quarantined").len(), 2);
}

pub(super) fn record_moved_to_another_row_is_quarantined(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let s = new_session(&store, "s");
    let t = new_session(&store, "t");
    store
        .commit(&s, Batch::new().put_secret("identity", b"private".to_vec()))
        .expect("commit");
    let raw = b.raw_secret(&store, &s, "identity").expect("stored");

    b.set_raw_secret(&store, &s, "copied", raw.clone());
    assert!(matches!(
        store.secret(&s, "copied"),
        Err(StoreError::Quarantined { .. })
    ));
    b.set_raw_secret(&store, &t, "identity", raw);
    assert!(matches!(
        store.secret(&t, "identity"),
        Err(StoreError::Quarantined { .. })
    ));
    assert_eq!(value(&store, &s, "identity"), Some(b"private".to_vec()));
    assert_eq!(store.quarantined().expect("quarantined").len(), 2);
}

pub(super) fn rotation_reads_old_keys_and_reseals(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let s = new_session(&store, "s");
    store
        .commit(
            &s,
            Batch::new()
                .put_secret("one", b"1".to_vec())
                .put_secret("two", b"2".to_vec())
                .put_secret("p/three", b"3".to_vec()),
        )
        .expect("commit");
    let key_id = |b: &dyn Fn(&str) -> Option<Vec<u8>>, key: &str| -> Vec<u8> {
        let raw = b(key).expect("stored");
        raw[2..2 + usize::from(raw[1])].to_vec()
    };

    let rotated = keyring(&[("k2", 2), ("k1", 1)]);
    let store = b.open(rotated, Some(store));
    assert_eq!(value(&store, &s, "one"), Some(b"1".to_vec()));
    let p: Vec<_> = store.secrets_with_prefix(&s, "p/").expect("prefix");
    assert_eq!(p[0].1.as_slice(), b"3");
    {
        let raw = |key: &str| b.raw_secret(&store, &s, key);
        assert_eq!(key_id(&raw, "one"), b"k2", "re-sealed on read");
        assert_eq!(key_id(&raw, "p/three"), b"k2", "re-sealed on prefix read");
        assert_eq!(key_id(&raw, "two"), b"k1", "untouched until read");
    }
    // New writes use the current key.
    store
        .commit(&s, Batch::new().put_secret("four", b"4".to_vec()))
        .expect("commit");

    assert_eq!(value(&store, &s, "four"), Some(b"4".to_vec()));
    assert_eq!(
        key_id(&|key: &str| b.raw_secret(&store, &s, key), "four"),
        b"k2"
    );

    // A record labelled with a key id the keyring does not hold is quarantined, not dropped.
    let mut raw = b.raw_secret(&store, &s, "two").expect("stored");
    raw[3] = b'9';
    b.set_raw_secret(&store, &s, "two", raw);
    match store.secret(&s, "two") {
        Err(StoreError::Quarantined { reason, .. }) => {
            assert!(reason.contains("unknown key id \"k9\""), "{reason}");
        }
        other => panic!("expected quarantine, got {other:?}"),
    }
    assert_eq!(store.quarantined().expect("quarantined").len(), 1);
}

pub(super) fn concurrent_commits_keep_seqs_gap_free(mut b: impl Backend) {
    const PER_THREAD: usize = 40;
    let store = Arc::new(b.open(k1(), None));
    let own: Vec<SessionId> = (0..4)
        .map(|i| new_session(&*store, &format!("own{i}")))
        .collect();
    let shared = new_session(&*store, "shared");
    // The store is shared the way the runtime shares it.
    let dynamic: Arc<dyn Store> = store.clone();
    std::thread::scope(|scope| {
        for id in &own {
            let store = Arc::clone(&dynamic);
            let shared = shared.clone();
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    let ts = i64::try_from(i).expect("small");
                    let appended = store
                        .commit(
                            id,
                            Batch::new()
                                .put_secret(format!("k{}", i % 5), vec![0u8; 32])
                                .event(1, ts, vec![]),
                        )
                        .expect("own commit");
                    assert_eq!(appended[0].seq, u64::try_from(i + 1).expect("small"));
                    store
                        .commit(&shared, Batch::new().event(2, ts, vec![]))
                        .expect("shared commit");
                }
            });
        }
    });
    let events = all_events(&*store);
    assert_eq!(events.len(), 8 * PER_THREAD);
    assert_log_consistent(&events);
    let last = events.last().expect("events").cursor;
    assert_eq!(store.last_cursor().expect("cursor"), last);
    let shared_count = events.iter().filter(|e| e.session_id == shared).count();
    assert_eq!(shared_count, 4 * PER_THREAD);
    for id in &own {
        let mine: Vec<u64> = events
            .iter()
            .filter(|e| e.session_id == *id)
            .map(|e| e.seq)
            .collect();
        let expected: Vec<u64> = (1..=u64::try_from(PER_THREAD).expect("small")).collect();
        assert_eq!(mine, expected);
    }
}

/// The sealed key id of a stored record.
fn key_id_of(record: &[u8]) -> Vec<u8> {
    record[2..2 + usize::from(record[1])].to_vec()
}

pub(super) fn event_payloads_are_sealed_at_rest(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let s = new_session(&store, "sealed-session");
    let text = b"personal text: meet at 5, call +15550009999";
    let qr = b"2@qr-ref,adv-secret-AAAABBBBCCCC,identity";
    let mut appended = Vec::new();
    for round in 0..5 {
        appended.extend(
            store
                .commit(
                    &s,
                    Batch::new()
                        .event(3, round, text.to_vec())
                        .event(1, round, qr.to_vec()),
                )
                .expect("commit"),
        );
    }
    // Committers and readers get the plaintext.
    assert_eq!(appended[0].payload, text);
    let read = all_events(&store);
    assert_eq!(read, appended);
    // At rest it is nowhere, while plaintext columns are (the scan works).
    assert!(b.at_rest_contains(&store, b"sealed-session"));
    assert!(!b.at_rest_contains(&store, text), "message text at rest");
    assert!(!b.at_rest_contains(&store, qr), "QR payload at rest");
    assert!(
        !b.at_rest_contains(&store, b"adv-secret"),
        "ADV secret at rest"
    );
    let raw = b.raw_event(&store, appended[0].cursor).expect("stored");
    assert_eq!(key_id_of(&raw), b"k1");
    let store = b.open(k1(), Some(store));
    assert_eq!(all_events(&store), appended);
    assert!(!b.at_rest_contains(&store, text), "message text at rest");
}

pub(super) fn tampered_event_keeps_its_place(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let s = new_session(&store, "s");
    let first = one_event(&store, &s, 3, 10);
    let victim = one_event(&store, &s, 3, 11);
    let last = one_event(&store, &s, 3, 12);
    let mut raw = b.raw_event(&store, victim.cursor).expect("stored");
    let mid = raw.len() / 2;
    raw[mid] ^= 0x01;
    b.set_raw_event(&store, victim.cursor, raw);
    // Moving a payload to another event is tampering too.
    let moved = b.raw_event(&store, first.cursor).expect("stored");
    b.set_raw_event(&store, last.cursor, moved);

    // The reader still sees both events at their place, with no payload, and the next one.
    let read = all_events(&store);
    assert_eq!(read.len(), 3);
    assert_eq!(read[0], first);
    for (got, was) in [(&read[1], &victim), (&read[2], &last)] {
        assert_eq!(
            (got.cursor, got.seq, got.kind),
            (was.cursor, was.seq, was.kind)
        );
        assert!(got.payload.is_empty(), "withheld, never the altered bytes");
    }
    let listed = store.quarantined().expect("quarantined");
    let keys: Vec<&str> = listed.iter().map(|q| q.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("event/{}", victim.cursor),
            format!("event/{}", last.cursor)
        ]
    );
    assert!(listed[0].reason.contains("authentication failed"));
    assert_eq!(listed[0].session_id, s);
    // Reported once: later reads see the same place, and quarantine does not grow.
    assert_eq!(all_events(&store), read);
    assert_eq!(store.quarantined().expect("quarantined").len(), 2);
    let store = b.open(k1(), Some(store));
    assert_eq!(all_events(&store), read);
    assert_eq!(one_event(&store, &s, 3, 13).seq, 4);
}

pub(super) fn rotation_and_reseal_cover_events(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let s = new_session(&store, "s");
    store
        .commit(&s, Batch::new().put_secret("creds", b"c".to_vec()))
        .expect("commit");
    let old: Vec<EventRecord> = (0..3).map(|ts| one_event(&store, &s, 3, ts)).collect();

    let store = b.open(keyring(&[("k2", 2), ("k1", 1)]), Some(store));
    // Old payloads still read; new ones are sealed with the current key.
    assert_eq!(all_events(&store), old);
    let new = one_event(&store, &s, 3, 10);
    assert_eq!(
        key_id_of(&b.raw_event(&store, new.cursor).expect("stored")),
        b"k2"
    );
    assert_eq!(
        key_id_of(&b.raw_event(&store, old[0].cursor).expect("stored")),
        b"k1"
    );
    // One secret and three events were sealed with k1.
    assert_eq!(store.reseal_all().expect("reseal"), 4);
    assert_eq!(store.reseal_all().expect("again"), 0);
    for e in &old {
        assert_eq!(
            key_id_of(&b.raw_event(&store, e.cursor).expect("stored")),
            b"k2"
        );
    }

    // The old key can go.
    let store = b.open(keyring(&[("k2", 2)]), Some(store));
    let mut expected = old;
    expected.push(new);
    assert_eq!(all_events(&store), expected);
    assert_eq!(value(&store, &s, "creds"), Some(b"c".to_vec()));
    assert!(store.quarantined().expect("quarantined").is_empty());
}

pub(super) fn redaction_blanks_payloads_in_place(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let (s, t) = (sid("s"), sid("t"));
    let qr_old = one_event(&store, &s, 1, 100);
    let msg_old = one_event(&store, &s, 3, 100);
    let qr_other = one_event(&store, &t, 1, 150);
    let qr_new = one_event(&store, &s, 1, 200);

    assert_eq!(store.redact_events(1, 200).expect("redact"), 2);
    assert_eq!(store.redact_events(1, 200).expect("again"), 0);
    let read = all_events(&store);
    let blank = |e: &EventRecord| EventRecord {
        payload: Vec::new(),
        ..e.clone()
    };
    assert_eq!(read, [blank(&qr_old), msg_old, blank(&qr_other), qr_new]);
    assert!(
        !b.at_rest_contains(&store, format!("{s}@100").as_bytes()),
        "nothing of the payload left"
    );
    assert!(store.quarantined().expect("quarantined").is_empty());
    let store = b.open(k1(), Some(store));
    assert_eq!(all_events(&store), read);
    // The seq goes on; retention still prunes redacted events.
    assert_eq!(one_event(&store, &s, 1, 300).seq, 4);
    let age = Retention {
        max_age_ms: Some(0),
        max_per_session: None,
    };
    assert_eq!(store.prune_events(&age, 201).expect("prune"), 4);
    assert_eq!(all_events(&store).len(), 1);
}

/// A session row with every personal field set.
fn personal(id: &str, phone: &str) -> SessionRecord {
    let mut r = record(id);
    r.jid = Some(format!("{phone}:3@s.whatsapp.net"));
    r.push_name = Some(format!("Name of {phone}"));
    r.platform = Some("android".into());
    r.metadata = BTreeMap::from([("user_id".into(), format!("user-of-{phone}"))]);
    r
}

pub(super) fn session_profiles_are_sealed_at_rest(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let put = personal("row-by-put", "15550007001");
    let committed = personal("row-by-commit", "15550007002");
    store.put_session(&put).expect("put");
    store
        .commit(
            &committed.id,
            Batch::new()
                .session(committed.clone())
                .put_secret("creds", b"c".to_vec()),
        )
        .expect("commit");
    // An update writes a new sealed record (not a clear column beside the old one).
    let mut updated = put.clone();
    updated.push_name = Some("Renamed 15550007001".into());
    store.put_session(&updated).expect("update");
    assert_eq!(store.session(&put.id).expect("get"), Some(updated.clone()));
    assert_eq!(
        store.sessions().expect("list"),
        vec![committed.clone(), updated.clone()]
    );
    // The ids and the platform are in clear (the scan works), the personal fields are not.
    assert!(b.at_rest_contains(&store, b"row-by-put"));
    assert!(b.at_rest_contains(&store, b"row-by-commit"));
    assert!(b.at_rest_contains(&store, b"android"));
    for needle in [
        "15550007001",
        "15550007002",
        "Name of",
        "Renamed",
        "user-of-",
        "user_id",
    ] {
        assert!(
            !b.at_rest_contains(&store, needle.as_bytes()),
            "{needle} at rest"
        );
    }
    assert_eq!(
        key_id_of(&b.raw_profile(&store, &put.id).expect("sealed")),
        b"k1"
    );
    // A row without personal fields has nothing sealed.
    let plain = new_session(&store, "row-plain");
    assert_eq!(b.raw_profile(&store, &plain), None);
    let store = b.open(k1(), Some(store));
    assert_eq!(store.session(&put.id).expect("get"), Some(updated));
    assert_eq!(store.session(&committed.id).expect("get"), Some(committed));
    assert!(store.quarantined().expect("quarantined").is_empty());
    // Nor after a close (for SQLite: WAL checkpointed into the database file).
    assert!(b.at_rest_contains(&store, b"row-by-put"));
    for needle in ["15550007001", "15550007002", "Name of", "user-of-"] {
        assert!(
            !b.at_rest_contains(&store, needle.as_bytes()),
            "{needle} at rest after reopening"
        );
    }
}

pub(super) fn tampered_profile_is_quarantined_and_the_row_stays(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let victim = personal("victim", "15550007003");
    let other = personal("other", "15550007004");
    for r in [&victim, &other] {
        store
            .commit(
                &r.id,
                Batch::new()
                    .session(r.clone())
                    .put_secret("creds", b"c".to_vec()),
            )
            .expect("commit");
    }
    // Another row's profile moved here fails too: it is bound to its session.
    let moved = b.raw_profile(&store, &other.id).expect("sealed");
    b.set_raw_profile(&store, &victim.id, moved);

    let bare = SessionRecord {
        jid: None,
        push_name: None,
        metadata: BTreeMap::new(),
        ..victim.clone()
    };
    assert_eq!(
        store.sessions().expect("list"),
        vec![other.clone(), bare.clone()]
    );
    let listed = store.quarantined().expect("quarantined");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].session_id, victim.id);
    assert_eq!(listed[0].key, "session/profile");
    assert!(
        listed[0].reason.contains("authentication failed"),
        "{listed:?}"
    );
    // Reported once; the session keeps its secrets and can be written again.
    assert_eq!(store.session(&victim.id).expect("get"), Some(bare));
    assert_eq!(store.quarantined().expect("quarantined").len(), 1);
    assert_eq!(value(&store, &victim.id, "creds"), Some(b"c".to_vec()));
    store.put_session(&victim).expect("rewrite");
    let store = b.open(k1(), Some(store));
    assert_eq!(store.session(&victim.id).expect("get"), Some(victim));
}

pub(super) fn rotation_and_reseal_cover_session_profiles(mut b: impl Backend) {
    let store = b.open(k1(), None);
    let r = personal("s", "15550007005");
    store.put_session(&r).expect("put");
    let store = b.open(keyring(&[("k2", 2), ("k1", 1)]), Some(store));
    assert_eq!(store.session(&r.id).expect("get"), Some(r.clone()));
    assert_eq!(
        key_id_of(&b.raw_profile(&store, &r.id).expect("sealed")),
        b"k1"
    );
    assert_eq!(store.reseal_all().expect("reseal"), 1);
    assert_eq!(store.reseal_all().expect("again"), 0);
    assert_eq!(
        key_id_of(&b.raw_profile(&store, &r.id).expect("sealed")),
        b"k2"
    );
    let store = b.open(keyring(&[("k2", 2)]), Some(store));
    assert_eq!(store.sessions().expect("list"), vec![r]);
    assert!(store.quarantined().expect("quarantined").is_empty());
}
