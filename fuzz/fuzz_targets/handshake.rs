//! Arbitrary bytes as Noise handshake messages (ClientHello and ClientFinish on
//! the server side, ServerHello on the client side, certificate chains): every
//! parser must refuse garbage without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wagate::wa::noise::fuzzing::fuzz_handshake(data);
});
