//! History sync end to end: the simulator's virtual phone sends a newly
//! linked gateway session its history (the texts in its inbox and a
//! seeded generated history) as encrypted, compressed chunks on the media
//! host; the gateway reports it as HISTORY events, in bounded pages, in
//! order, each message once; the full history only when asked for.

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use prost::Message as _;
use tonic::Streaming;
use wagate::proto::gateway::{event, Event, HistoryEvent};
use wagate::proto::sim::{SeedHistoryRequest, SendTextRequest};

const OWN: &str = "+15550003333";
const OWN_JID: &str = "15550003333@s.whatsapp.net";
const BOB: &str = "+15550004444";
const BOB_JID: &str = "15550004444@s.whatsapp.net";

fn history_of(event: &Event) -> Option<&HistoryEvent> {
    match &event.payload {
        Some(event::Payload::History(h)) => Some(h),
        _ => None,
    }
}

async fn seed(sim: &mut Sim, chats: u32, messages_per_chat: u32) -> u64 {
    sim.control
        .seed_history(SeedHistoryRequest {
            phone: OWN.into(),
            chats,
            messages_per_chat,
        })
        .await
        .expect("SeedHistory")
        .into_inner()
        .base_time
}

/// Collects HISTORY events until the last page of the last chunk of
/// `until` (a sync type) arrives; the pages and the last one's cursor.
async fn history_until(events: &mut Streaming<Event>, until: &str) -> (Vec<HistoryEvent>, u64) {
    let mut pages = Vec::new();
    loop {
        let (event, _) = wait_for(events, "a history page", |e| history_of(e).is_some()).await;
        let page = history_of(&event).cloned().expect("history");
        assert!(page.error.is_empty(), "chunk error: {}", page.error);
        let done = page.sync_type == until && page.last_page && page.progress == 100;
        pages.push(page);
        if done {
            return (pages, event.cursor);
        }
    }
}

/// The seeded message `n` of chat `c`: (id, text, from_me).
fn seeded(c: u32, n: u32) -> (String, String, bool) {
    (
        format!("HIST{c:05X}{n:07X}"),
        format!("history {c}/{n}"),
        n % 3 == 0,
    )
}

/// Checks what every page must satisfy and returns the messages by id:
/// (chat, text, from_me, timestamp, sync type).
fn check_pages(pages: &[HistoryEvent]) -> HashMap<String, (String, String, bool, i64, String)> {
    let mut by_id = HashMap::new();
    let mut next_page: HashMap<(String, u32), u32> = HashMap::new();
    for page in pages {
        let messages: usize = page.chats.iter().map(|c| c.messages.len()).sum();
        assert!(messages <= 256, "page of {messages} messages");
        assert!(
            page.encoded_len() <= 300 * 1024,
            "page of {} bytes",
            page.encoded_len()
        );
        // Pages of a chunk come in order, from 0.
        let expected = next_page
            .entry((page.sync_type.clone(), page.chunk_order))
            .or_insert(0);
        assert_eq!(page.page, *expected, "page order in {}", page.sync_type);
        *expected += 1;
        for chat in &page.chats {
            let mut last = i64::MIN;
            for m in &chat.messages {
                let t = m.timestamp.as_ref().map_or(0, |t| t.seconds);
                assert!(t >= last, "messages of a chat page are oldest first");
                last = t;
                let previous = by_id.insert(
                    m.id.clone(),
                    (
                        chat.chat.clone(),
                        m.text.clone(),
                        m.from_me,
                        t,
                        page.sync_type.clone(),
                    ),
                );
                assert!(previous.is_none(), "message {} reported twice", m.id);
            }
        }
    }
    by_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recent_history_reaches_the_backend_in_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    create_account(&mut sim.control, OWN, "Own").await;
    create_account(&mut sim.control, BOB, "Bob").await;
    // A conversation the phone really has: Bob's texts in its inbox.
    let mut bob_ids = Vec::new();
    for text in ["hi", "are you there?", "history!"] {
        let id = sim
            .control
            .send_text(SendTextRequest {
                from_phone: BOB.into(),
                to: OWN.into(),
                text: text.into(),
                from_lid: false,
            })
            .await
            .expect("SendText")
            .into_inner()
            .message_id;
        bob_ids.push((id, text.to_owned()));
    }
    let base_time = seed(&mut sim, 3, 150).await;

    let (_, mut events) = pair_with(&mut sim.control, &mut client, "hist", OWN).await;
    let (pages, last_cursor) = history_until(&mut events, "RECENT").await;
    let by_id = check_pages(&pages);

    // Without the full-history option: the newest 100 of each chat, the
    // newest 20 in INITIAL_BOOTSTRAP, the rest in RECENT; no FULL.
    assert_eq!(by_id.len(), 3 * 100 + bob_ids.len());
    for c in 0..3 {
        for n in 0..150 {
            let (id, text, from_me) = seeded(c, n);
            let Some((chat, got_text, got_from_me, t, ty)) = by_id.get(&id) else {
                assert!(n < 50, "message {c}/{n} missing");
                continue;
            };
            assert!(n >= 50, "message {c}/{n} is older than the recent window");
            assert_eq!(chat, &format!("1555900{c:05}@s.whatsapp.net"));
            assert_eq!((got_text, *got_from_me), (&text, from_me));
            assert_eq!(*t as u64, base_time - u64::from(150 - n) * 60);
            let expected_type = if n >= 130 {
                "INITIAL_BOOTSTRAP"
            } else {
                "RECENT"
            };
            assert_eq!(ty, expected_type, "{c}/{n}");
        }
    }
    for (id, text) in &bob_ids {
        let (chat, got_text, from_me, _, ty) = by_id.get(id).expect("inbox text in history");
        assert_eq!((chat.as_str(), got_text, *from_me), (BOB_JID, text, false));
        assert_eq!(ty, "INITIAL_BOOTSTRAP");
    }
    // Push names of the phone's contacts.
    let names: HashMap<String, String> = pages
        .iter()
        .flat_map(|p| p.push_names.iter())
        .map(|p| (p.jid.clone(), p.push_name.clone()))
        .collect();
    assert_eq!(names.get(BOB_JID).map(String::as_str), Some("Bob"));
    assert_eq!(
        names.get("155590000002@s.whatsapp.net").map(String::as_str),
        Some("Contact 2")
    );
    assert!(pages.iter().all(|p| p.sync_type != "FULL"));
    // Our own messages carry our account as sender.
    let own_sent = pages
        .iter()
        .flat_map(|p| p.chats.iter())
        .flat_map(|c| c.messages.iter())
        .filter(|m| m.from_me)
        .all(|m| m.sender == OWN_JID);
    assert!(own_sent);

    // Every chunk is done: a restart of the gateway (whether the last
    // receipt went out before it or not) brings no history again.
    gateway.shutdown().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = common::client(gateway.addr).await;
    let mut events = events_after(&mut client, "hist", last_cursor).await;
    let id = sim
        .control
        .send_text(SendTextRequest {
            from_phone: BOB.into(),
            to: OWN.into(),
            text: "after the restart".into(),
            from_lid: false,
        })
        .await
        .expect("SendText")
        .into_inner()
        .message_id;
    let (_, before) = wait_for(&mut events, "the new text", |e| {
        message_of(e).is_some_and(|m| m.id == id)
    })
    .await;
    assert!(
        before.iter().all(|e| history_of(e).is_none()),
        "history was delivered again"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_history_of_10000_messages_streams_in_bounded_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    opts.full_history = true;
    let gateway = start_gateway(opts).await;
    let mut client = client(gateway.addr).await;
    create_account(&mut sim.control, OWN, "Own").await;
    seed(&mut sim, 20, 500).await;

    let rss_before = rss_bytes();
    let (_, mut events) = pair_with(&mut sim.control, &mut client, "hist", OWN).await;
    let (pages, _) = history_until(&mut events, "FULL").await;
    let rss_after = rss_bytes();
    let by_id = check_pages(&pages);
    assert_eq!(by_id.len(), 10_000);
    let expected: HashSet<String> = (0..20)
        .flat_map(|c| (0..500).map(move |n| seeded(c, n).0))
        .collect();
    assert_eq!(by_id.keys().cloned().collect::<HashSet<_>>(), expected);
    // 2,000 messages a chunk: FULL has 20 × 400 = 8,000, in four chunks
    // whose progress rises to 100.
    let full: Vec<(u32, u32)> = pages
        .iter()
        .filter(|p| p.sync_type == "FULL" && p.last_page)
        .map(|p| (p.chunk_order, p.progress))
        .collect();
    assert_eq!(full, vec![(0, 25), (1, 50), (2, 75), (3, 100)]);
    let growth = rss_after.saturating_sub(rss_before);
    println!(
        "history of 10,000 messages: {} pages; process RSS (gateway, simulator and test client) {} -> {} KiB (+{} KiB)",
        pages.len(),
        rss_before / 1024,
        rss_after / 1024,
        growth / 1024
    );
    gateway.shutdown().await;
}

/// Resident set size of this process (Linux), 0 where unknown.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_in_the_middle_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    opts.full_history = true;
    let gateway = start_gateway(opts.clone()).await;
    let mut client = client(gateway.addr).await;
    create_account(&mut sim.control, OWN, "Own").await;
    seed(&mut sim, 10, 600).await;

    let (_, mut events) = pair_with(&mut sim.control, &mut client, "hist", OWN).await;
    // Stop as soon as the first page of a chunk of several pages is in:
    // the rest of that chunk, and the chunks not started, are still to come.
    let (first, before) = wait_for(&mut events, "a first page", |e| {
        history_of(e).is_some_and(|h| h.page == 0 && !h.last_page)
    })
    .await;
    gateway.shutdown().await;
    let mut pages: Vec<HistoryEvent> = before.iter().filter_map(history_of).cloned().collect();
    pages.push(history_of(&first).cloned().expect("history"));

    let gateway = start_gateway(opts).await;
    let mut client = common::client(gateway.addr).await;
    let mut events = events_after(&mut client, "hist", first.cursor).await;
    let (rest, _) = history_until(&mut events, "FULL").await;
    pages.extend(rest);
    let by_id = check_pages(&pages);
    assert_eq!(by_id.len(), 6_000);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_over_the_size_cap_is_reported_and_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    // The bootstrap and recent chunks of 3 chats inflate to several KiB;
    // the push names fit.
    opts.max_history_chunk_bytes = 2048;
    let gateway = start_gateway(opts.clone()).await;
    let mut client = client(gateway.addr).await;
    create_account(&mut sim.control, OWN, "Own").await;
    seed(&mut sim, 3, 150).await;

    let (_, mut events) = pair_with(&mut sim.control, &mut client, "hist", OWN).await;
    let mut pages = Vec::new();
    let last_cursor = loop {
        let (event, _) = wait_for(&mut events, "a history page", |e| history_of(e).is_some()).await;
        let page = history_of(&event).cloned().expect("history");
        let done = page.sync_type == "RECENT" && page.last_page;
        pages.push(page);
        if done {
            break event.cursor;
        }
    };
    let summary: Vec<(&str, bool, bool)> = pages
        .iter()
        .map(|p| (p.sync_type.as_str(), p.last_page, p.error.is_empty()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("INITIAL_BOOTSTRAP", true, false),
            ("PUSH_NAME", true, true),
            ("RECENT", true, false)
        ]
    );
    for page in pages.iter().filter(|p| !p.error.is_empty()) {
        assert!(
            page.error.contains("more than 2048 bytes"),
            "{}",
            page.error
        );
        assert!(page.chats.is_empty());
    }
    assert_eq!(pages[1].push_names.len(), 3);

    // Given up for good: the notifications were acknowledged, and a
    // restarted gateway reports nothing of them again.
    gateway.shutdown().await;
    let gateway = start_gateway(opts).await;
    let mut client = common::client(gateway.addr).await;
    let mut events = events_after(&mut client, "hist", last_cursor).await;
    create_account(&mut sim.control, BOB, "Bob").await;
    let id = sim
        .control
        .send_text(SendTextRequest {
            from_phone: BOB.into(),
            to: OWN.into(),
            text: "still here".into(),
            from_lid: false,
        })
        .await
        .expect("SendText")
        .into_inner()
        .message_id;
    let (_, before) = wait_for(&mut events, "the new text", |e| {
        message_of(e).is_some_and(|m| m.id == id)
    })
    .await;
    assert!(before.iter().all(|e| history_of(e).is_none()));
    gateway.shutdown().await;
}
