//! Arbitrary bytes as a decrypted frame (flag byte, maybe zlib, then a
//! node): must never panic or inflate past the cap, and a frame that
//! decodes must survive a marshal/unmarshal round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wagate::wa::binary::TokenDict;
use wagate_fuzz::reencoded;

fuzz_target!(|data: &[u8]| {
    for dict in [TokenDict::V2, TokenDict::V3] {
        if let Ok(node) = dict.unmarshal(data) {
            let again = dict.unmarshal(&dict.marshal(&node));
            assert_eq!(again, Ok(reencoded(node)));
        }
    }
});
