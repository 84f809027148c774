//! Arbitrary bytes through the websocket frame decoder (intro, 3-byte lengths,
//! split and coalesced frames): it must say "need more", yield frames, or
//! refuse — never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wagate::wa::noise::fuzzing::fuzz_frame_decoder(data);
});
