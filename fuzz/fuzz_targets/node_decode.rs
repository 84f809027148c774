//! Arbitrary bytes as a node under both token dictionaries: decoding must not
//! panic, and whatever decodes must survive an encode/decode round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wagate::wa::binary::TokenDict;
use wagate_fuzz::reencoded;

fuzz_target!(|data: &[u8]| {
    for dict in [TokenDict::V2, TokenDict::V3] {
        if let Ok(node) = dict.decode(data) {
            let again = dict.decode(&dict.encode(&node));
            assert_eq!(again, Ok(reencoded(node)));
        }
    }
});
