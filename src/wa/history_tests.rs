use std::io::Write as _;

use flate2::write::ZlibEncoder;
use flate2::Compression;
use prost::Message as _;

use super::*;
use crate::proto::wa::{HistorySync, MessageKey, WebMessageInfo};

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    z.write_all(bytes).expect("valid");
    z.finish().expect("valid")
}

fn text(chat: &str, id: &str, t: u64, from_me: bool, text: &str) -> HistorySyncMsg {
    HistorySyncMsg {
        message: Some(WebMessageInfo {
            key: MessageKey {
                remote_jid: Some(chat.into()),
                from_me: Some(from_me),
                id: Some(id.into()),
                participant: None,
            },
            message: Some(crate::proto::wa::Message {
                conversation: Some(text.into()),
                ..Default::default()
            }),
            message_timestamp: Some(t),
            participant: None,
            push_name: None,
        }),
        msg_order_id: None,
    }
}

fn chunk(chats: usize, per_chat: usize) -> HistorySync {
    HistorySync {
        sync_type: HistorySyncType::Full.into(),
        conversations: (0..chats)
            .map(|c| {
                let jid = format!("1555000{c:04}@s.whatsapp.net");
                Conversation {
                    messages: (0..per_chat)
                        .map(|n| {
                            text(
                                &jid,
                                &format!("ID{c}-{n}"),
                                n as u64,
                                n % 3 == 0,
                                &format!("t{c}/{n}"),
                            )
                        })
                        .collect(),
                    id: jid,
                    last_msg_timestamp: None,
                    unread_count: Some(2),
                    name: None,
                }
            })
            .collect(),
        chunk_order: Some(3),
        progress: Some(40),
        pushnames: vec![Pushname {
            id: Some("15550000001@s.whatsapp.net".into()),
            pushname: Some("Ann".into()),
        }],
    }
}

fn pages(bytes: &[u8], max_messages: usize, max_bytes: usize) -> Vec<HistoryPage> {
    let mut reader = PageReader::new(bytes)
        .expect("valid")
        .with_limits(max_messages, max_bytes);
    let mut out = Vec::new();
    while let Some(page) = reader.next_page() {
        out.push(page.expect("valid"));
    }
    out
}

#[test]
fn pages_keep_order_and_bounds() {
    let encoded = chunk(3, 10).encode_to_vec();
    let inflated = inflate(&zlib(&encoded), 1 << 20).expect("valid");
    assert_eq!(inflated, encoded);
    let pages = pages(&inflated, 4, 1 << 20);
    assert_eq!(pages.len(), 8);
    let mut ids = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        assert_eq!(page.index as usize, i);
        assert_eq!(page.last, i == pages.len() - 1);
        assert!(page.message_count() <= 4);
        assert_eq!((page.chunk_order, page.progress), (3, 40));
        assert_eq!(page.sync_type, HistorySyncType::Full);
        for chat in &page.chats {
            for m in &chat.messages {
                ids.push(m.id.clone());
                assert_eq!(m.kind, "text");
                assert_eq!(m.from_me, m.timestamp_s % 3 == 0);
            }
        }
    }
    let expected: Vec<String> = (0..3)
        .flat_map(|c| (0..10).map(move |n| format!("ID{c}-{n}")))
        .collect();
    assert_eq!(ids, expected);
    let names: Vec<_> = pages.iter().flat_map(|p| p.push_names.clone()).collect();
    assert_eq!(
        names,
        vec![("15550000001@s.whatsapp.net".to_owned(), "Ann".to_owned())]
    );
}

#[test]
fn byte_limit_splits_pages() {
    let encoded = chunk(1, 100).encode_to_vec();
    for page in pages(&encoded, 1000, 1000) {
        let size: usize = page
            .chats
            .iter()
            .flat_map(|c| &c.messages)
            .map(message_size)
            .sum();
        assert!(size <= 1000, "{size}");
    }
}

#[test]
fn an_empty_chunk_is_one_last_page() {
    let encoded = HistorySync {
        sync_type: HistorySyncType::PushName.into(),
        ..Default::default()
    }
    .encode_to_vec();
    let pages = pages(&encoded, 10, 10);
    assert_eq!(pages.len(), 1);
    assert!(pages[0].last && pages[0].chats.is_empty());
}

#[test]
fn oversized_inflate_is_refused() {
    // 64 MiB of zeros compress to ~64 KiB: a bomb for a 1 MiB limit.
    let bomb = zlib(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 1 << 20);
    assert_eq!(
        inflate(&bomb, 1 << 20),
        Err(HistoryError::TooLarge { limit: 1 << 20 })
    );
    // Fed in small pieces, too.
    let mut inflater = Inflater::new(1 << 20);
    let result = bomb.chunks(1000).try_for_each(|c| inflater.update(c));
    assert_eq!(result, Err(HistoryError::TooLarge { limit: 1 << 20 }));
    // Exactly at the limit is fine.
    let exact = zlib(&vec![7u8; 1 << 20]);
    assert_eq!(inflate(&exact, 1 << 20).expect("valid").len(), 1 << 20);
}

#[test]
fn truncated_and_trailing_streams_are_refused() {
    let full = zlib(&chunk(2, 50).encode_to_vec());
    for cut in [1, 2, full.len() / 2, full.len() - 1] {
        assert!(inflate(&full[..cut], 1 << 20).is_err(), "cut at {cut}");
    }
    let mut trailing = full.clone();
    trailing.extend_from_slice(b"junk");
    assert_eq!(inflate(&trailing, 1 << 20), Err(HistoryError::TrailingData));
    assert!(matches!(
        inflate(b"not zlib at all", 1 << 20),
        Err(HistoryError::Inflate(_))
    ));
}

#[test]
fn truncated_and_garbage_protobufs_never_panic() {
    let encoded = chunk(2, 20).encode_to_vec();
    for cut in 0..encoded.len() {
        let Ok(mut reader) = PageReader::new(&encoded[..cut]) else {
            continue;
        };
        while let Some(page) = reader.next_page() {
            if page.is_err() {
                break;
            }
        }
    }
    let mut state = 0x1234_5678u32;
    for len in 0..300 {
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (state >> 16) as u8
            })
            .collect();
        if let Ok(mut reader) = PageReader::new(&garbage) {
            while let Some(page) = reader.next_page() {
                if page.is_err() {
                    break;
                }
            }
        }
    }
    // A length that runs past the end.
    assert!(PageReader::new(&[0x08, 0x02, 0x12, 0xff, 0x01]).is_err());
}

#[test]
fn notices_round_trip_and_need_their_fields() {
    let notice = HistoryNotice {
        direct_path: "/mms/md-msg-hist/abc".into(),
        media_key: [1; 32],
        file_sha256: [2; 32],
        file_enc_sha256: Some([3; 32]),
        file_length: 99,
        sync_type: HistorySyncType::InitialBootstrap,
        chunk_order: 1,
        progress: 50,
    };
    assert_eq!(
        HistoryNotice::from_proto(&notice.to_proto()).expect("valid"),
        notice
    );
    let mut bad = notice.to_proto();
    bad.media_key = Some(vec![1; 5]);
    assert!(HistoryNotice::from_proto(&bad).is_err());
}
