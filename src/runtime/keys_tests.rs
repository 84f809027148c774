//! Tests of the store-backed keys (`keys.rs`).
use super::*;
use crate::store::MemoryStore;

fn session() -> SessionId {
    "s1".parse().expect("id")
}

fn keys(store: &Arc<dyn Store>) -> StoreKeys {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    let creds = Credentials::generate(&mut rng);
    StoreKeys::new(session(), store.clone(), &creds)
}

fn store_with_session() -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store
        .put_session(&crate::store::SessionRecord::new(session(), 0))
        .expect("row");
    store
}

#[test]
fn names_hide_identifiers_and_differ_by_kind() {
    let store = store_with_session();
    let k = keys(&store);
    let a = k.names.of(LID, "15551234567");
    assert!(!a.contains("1555"));
    assert_ne!(a, k.names.of(IDEMPOTENCY, "15551234567"));
}

#[test]
fn legacy_records_move_to_hashed_names() {
    let store = store_with_session();
    let batch = Batch::default()
        .put_secret("lid/999", b"15551234567".to_vec())
        .put_secret(
            "seen/a@s.whatsapp.net/b@s.whatsapp.net/ID1",
            5_000u64.to_be_bytes().to_vec(),
        );
    store.commit(&session(), batch).expect("commit");
    let mut k = keys(&store);
    k.load(10_000).expect("load");
    assert!(store
        .secrets_with_prefix(&session(), "lid/")
        .expect("read")
        .is_empty());
    assert_eq!(
        k.phone_of_lid("999").expect("lid").as_deref(),
        Some("15551234567")
    );
    let dedupe = DedupeKey("a@s.whatsapp.net/b@s.whatsapp.net/ID1".into());
    assert!(k.seen(&dedupe, 5).expect("seen"));
    assert!(!k.seen(&DedupeKey("other".into()), 5).expect("seen"));
    // Moved once: the marker says so, and a later load scans nothing.
    assert!(store
        .secret(&session(), NAMES_HASHED)
        .expect("read")
        .is_some());
    store
        .commit(
            &session(),
            Batch::default().put_secret("lid/777", b"15550000000".to_vec()),
        )
        .expect("commit");
    let mut again = keys(&store);
    again.load(20_000).expect("load");
    assert_eq!(
        store
            .secrets_with_prefix(&session(), "lid/")
            .expect("read")
            .len(),
        1
    );
}

#[test]
fn seen_window_answers_recent_keys_from_memory_and_old_ones_from_the_store() {
    let store = store_with_session();
    let mut k = keys(&store);
    let now_ms = 100 * 24 * 3_600_000;
    k.load(now_ms).expect("load");
    let old = DedupeKey("old".into());
    let old_t = now_ms / 1000 - 2 * SEEN_WINDOW_S;
    // Written by an earlier process: not in memory, found in the store.
    let batch = k.batch(&[Change::Seen {
        key: old.clone(),
        t_s: old_t,
        at_ms: now_ms,
    }]);
    store.commit(&session(), batch).expect("commit");
    assert!(k.seen(&old, old_t).expect("seen"));
    let recent = DedupeKey("recent".into());
    let t = now_ms / 1000;
    assert!(!k.seen(&recent, t).expect("seen"));
    let changes = vec![Change::Seen {
        key: recent.clone(),
        t_s: t,
        at_ms: now_ms,
    }];
    store.commit(&session(), k.batch(&changes)).expect("commit");
    k.apply(changes);
    assert!(k.seen(&recent, t).expect("seen"));
}

#[test]
fn the_window_stays_bounded() {
    let mut window = SeenWindow {
        since_s: 0,
        keys: HashMap::new(),
        newest_s: 0,
        loaded: true,
    };
    for n in 0..(MAX_SEEN_IN_MEMORY as u64 * 3) {
        window.insert(format!("k{n}"), n);
    }
    assert!(window.keys.len() <= MAX_SEEN_IN_MEMORY);
    // Everything at or after the start is still there.
    let since = window.since_s;
    let expected = (MAX_SEEN_IN_MEMORY as u64 * 3).saturating_sub(since);
    assert_eq!(window.keys.len() as u64, expected);
}

#[test]
fn idempotency_keys_are_forgotten_after_their_retention() {
    let store = store_with_session();
    let k = keys(&store);
    let now_ms = 100 * 24 * 3_600_000;
    let record = |acked_at_s: u64, created_at_ms: u64| IdempotencyRecord {
        message_id: "ID".into(),
        acked_at_s,
        fingerprint: vec![1],
        stanza: if acked_at_s == 0 { vec![2] } else { Vec::new() },
        created_at_ms,
        // Older versions kept no key.
        key: if created_at_ms > 0 {
            "k".into()
        } else {
            String::new()
        },
    };
    let expired = now_ms - IDEMPOTENCY_RETENTION_MS - 1;
    let kept = now_ms - IDEMPOTENCY_RETENTION_MS + 1_000;
    let changes = vec![
        Change::Idempotency("acked-long-ago".into(), record(expired / 1000, 0)),
        Change::Idempotency("written-long-ago".into(), record(0, expired)),
        Change::Idempotency("acked-lately".into(), record(kept / 1000, 0)),
        Change::Idempotency("written-lately".into(), record(0, kept)),
        // An older version's record, never acknowledged: no date to go by.
        Change::Idempotency("undated".into(), record(0, 0)),
    ];
    store.commit(&session(), k.batch(&changes)).expect("commit");
    let mut k = keys(&store);
    let unacked = k.load(now_ms).expect("load");
    // Of the kept ones, only the dated, unacknowledged one is written again.
    assert_eq!(unacked, vec![record(0, kept)]);
    let found = |k: &mut StoreKeys, key: &str| k.idempotency(key).expect("read").is_some();
    assert!(!found(&mut k, "acked-long-ago"));
    assert!(!found(&mut k, "written-long-ago"));
    assert!(found(&mut k, "acked-lately"));
    assert!(found(&mut k, "written-lately"));
    assert!(found(&mut k, "undated"));
    assert_eq!(
        store
            .secrets_with_prefix(&session(), &prefix_of(IDEMPOTENCY))
            .expect("read")
            .len(),
        3
    );
}

#[test]
fn new_idempotency_keys_are_answered_from_memory_after_load() {
    let store = store_with_session();
    let mut k = keys(&store);
    let record = IdempotencyRecord {
        message_id: "ID1".into(),
        fingerprint: vec![1],
        stanza: vec![2],
        created_at_ms: 1_000,
        ..Default::default()
    };
    let before = vec![Change::Idempotency("before-load".into(), record.clone())];
    store.commit(&session(), k.batch(&before)).expect("commit");
    k.load(2_000).expect("load");
    assert!(k.idempotency("before-load").expect("read").is_some());
    // Committed through the engine's step: indexed as it is applied.
    let after = vec![Change::Idempotency("after-load".into(), record.clone())];
    store.commit(&session(), k.batch(&after)).expect("commit");
    k.apply(after);
    assert!(k.idempotency("after-load").expect("read").is_some());
    // A write behind the index's back is not seen: the index answered
    // for the key without reading the store...
    let behind = vec![Change::Idempotency("behind".into(), record)];
    store.commit(&session(), k.batch(&behind)).expect("commit");
    assert!(k.idempotency("behind").expect("read").is_none());
    // ...until a failed commit makes it ask the store again.
    k.forget();
    assert!(k.idempotency("behind").expect("read").is_some());
}

#[test]
fn a_session_online_for_weeks_prunes_without_logging_in_again() {
    let store = store_with_session();
    let mut k = keys(&store);
    let day = 24 * 3_600_000;
    let start = 100 * day;
    k.load(start).expect("load");
    // Written as the connection goes on, through the engine's steps.
    let changes = vec![
        Change::Seen {
            key: DedupeKey("a message".into()),
            t_s: start / 1000,
            at_ms: start,
        },
        Change::Sent(
            "ID1".into(),
            SentRecord {
                chat: "15551234567@s.whatsapp.net".into(),
                message: vec![1],
                sent_at_ms: start,
            },
        ),
        Change::Idempotency(
            "key".into(),
            IdempotencyRecord {
                message_id: "ID1".into(),
                acked_at_s: start / 1000,
                fingerprint: vec![1],
                ..Default::default()
            },
        ),
    ];
    store.commit(&session(), k.batch(&changes)).expect("commit");
    k.apply(changes);
    let count = |prefix: &str| {
        store
            .secrets_with_prefix(&session(), prefix)
            .expect("read")
            .len()
    };
    let (seen, sent, idem) = (prefix_of(SEEN), SENT.to_owned(), prefix_of(IDEMPOTENCY));
    // Within every retention: all kept.
    k.prune(start + day).expect("prune");
    assert_eq!((count(&seen), count(&sent), count(&idem)), (1, 1, 1));
    assert!(k.idempotency("key").expect("read").is_some());
    // Past the sent messages' and the keys' week: those go, from the
    // store and from the index of keys; the deduplication key stays.
    k.prune(start + 8 * day).expect("prune");
    assert_eq!((count(&seen), count(&sent), count(&idem)), (1, 0, 0));
    assert!(k.idempotency("key").expect("read").is_none());
    // Past the month of deduplication keys: that goes too.
    k.prune(start + 31 * day).expect("prune");
    assert_eq!(count(&seen), 0);
}
