//! Arbitrary bytes as a history chunk: inflated with a small cap (fed
//! whole and in pieces), and read page by page as a `HistorySync`, both
//! the inflated bytes and the raw input. Nothing may panic, and no page may
//! exceed its bounds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wagate::wa::history::{Inflater, PageReader, MAX_PAGE_MESSAGES};

/// Small enough that bombs hit it at once.
const CAP: usize = 1 << 20;

fn read_pages(bytes: &[u8]) {
    let Ok(mut reader) = PageReader::new(bytes) else {
        return;
    };
    while let Some(page) = reader.next_page() {
        match page {
            Ok(page) => assert!(page.message_count() <= MAX_PAGE_MESSAGES),
            Err(_) => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    read_pages(data);
    let mut whole = Inflater::new(CAP);
    if whole.update(data).is_ok() {
        if let Ok(inflated) = whole.finish() {
            assert!(inflated.len() <= CAP);
            read_pages(&inflated);
        }
    }
    let mut pieces = Inflater::new(CAP);
    let _ = data.chunks(7).try_for_each(|c| pieces.update(c));
});
