//! Store throughput: one commit = one event + one secret in a transaction (the shape of a
//! decrypted message: ratchet state plus its event), and reading the event log in pages.
//! divan prints the rate as items/s next to the timings.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

use divan::counter::ItemsCount;
use divan::Bencher;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tempfile::TempDir;
use wagate::store::{
    Batch, EventFilter, Keyring, MemoryStore, SessionId, SessionRecord, SqliteStore, Store,
};

fn main() {
    divan::main();
}

const PAGE: usize = 1_000;
const LOG_LEN: u64 = 20_000;

fn session() -> SessionId {
    "bench".parse().expect("valid session id")
}

fn keys() -> Keyring {
    Keyring::generate(&mut StdRng::seed_from_u64(1))
}

fn sqlite() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("bench.db"), keys()).expect("open");
    store
        .put_session(&SessionRecord::new(session(), 0))
        .expect("put session");
    (dir, store)
}

fn memory() -> MemoryStore {
    let store = MemoryStore::with_keyring(keys());
    store
        .put_session(&SessionRecord::new(session(), 0))
        .expect("put session");
    store
}

/// A commit the size of an incoming text message: ~1.5 KiB of Signal session state and a
/// ~300-byte event.
fn commit_one(bencher: Bencher, store: &dyn Store) {
    let id = session();
    let n = Cell::new(0u32);
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let i = n.get();
        n.set(i.wrapping_add(1));
        let batch = Batch::new()
            .put_secret(format!("session/{}", i % 64), vec![0x5a; 1_500])
            .event(1, i64::from(i), vec![0xa5; 300]);
        store.commit(&id, batch).expect("commit")
    });
}

#[divan::bench(sample_count = 50, sample_size = 4)]
fn commit_event_and_secret_sqlite(bencher: Bencher) {
    let (_dir, store) = sqlite();
    commit_one(bencher, &store);
}

/// The same commit from several threads (sessions) at once: group commit shares the fsync.
#[divan::bench(threads = [4, 16], sample_count = 50, sample_size = 4)]
fn commit_event_and_secret_sqlite_concurrent(bencher: Bencher) {
    let (_dir, store) = sqlite();
    let ids: Vec<SessionId> = (0..16)
        .map(|i| {
            let id: SessionId = format!("s{i}").parse().expect("valid session id");
            store
                .put_session(&SessionRecord::new(id.clone(), 0))
                .expect("put session");
            id
        })
        .collect();
    let n = AtomicU32::new(0);
    bencher.counter(ItemsCount::new(1usize)).bench(|| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        let id = &ids[i as usize % ids.len()];
        let batch = Batch::new()
            .put_secret(format!("session/{}", i % 64), vec![0x5a; 1_500])
            .event(1, i64::from(i), vec![0xa5; 300]);
        store.commit(id, batch).expect("commit")
    });
}

#[divan::bench]
fn commit_event_and_secret_memory(bencher: Bencher) {
    let store = memory();
    commit_one(bencher, &store);
}

/// Fills the log through a few large commits (fast) so the read benchmark has data.
fn fill(store: &dyn Store) {
    let id = session();
    let mut written = 0;
    while written < LOG_LEN {
        let mut batch = Batch::new();
        for _ in 0..1_000 {
            batch = batch.event(1, 0, vec![0xa5; 300]);
        }
        written += store.commit(&id, batch).expect("fill").len() as u64;
    }
}

fn read_pages(bencher: Bencher, store: &dyn Store) {
    let filter = EventFilter::all();
    let after = Cell::new(0u64);
    bencher.counter(ItemsCount::new(PAGE)).bench_local(|| {
        let page = store
            .events_after(after.get(), &filter, PAGE)
            .expect("page");
        // Wrap around at the end of the log so every iteration reads a full page.
        let last = page.last().map_or(0, |e| e.cursor);
        after.set(if last + PAGE as u64 > LOG_LEN {
            0
        } else {
            last
        });
        page
    });
}

#[divan::bench(sample_count = 50)]
fn events_after_sqlite(bencher: Bencher) {
    let (_dir, store) = sqlite();
    fill(&store);
    read_pages(bencher, &store);
}

#[divan::bench(sample_count = 50)]
fn events_after_memory(bencher: Bencher) {
    let store = memory();
    fill(&store);
    read_pages(bencher, &store);
}
