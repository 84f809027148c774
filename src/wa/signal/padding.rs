//! WhatsApp's plaintext padding around the `Message` protobuf before Signal
//! encryption: n bytes of value n appended, n in 1..=16. Must not import I/O.

use rand::{CryptoRng, RngCore};

use super::SignalError;

/// Appends 1..=16 bytes, each equal to their count (Baileys' choice of n).
pub fn pad(rng: &mut (impl RngCore + CryptoRng), message: &[u8]) -> Vec<u8> {
    let n = (rng.next_u32() & 0x0F) as u8 + 1;
    let mut out = Vec::with_capacity(message.len() + usize::from(n));
    out.extend_from_slice(message);
    out.resize(message.len() + usize::from(n), n);
    out
}

/// Strips the padding, checking that there is at least one padding byte and
/// that every padding byte equals the count (as whatsmeow does).
pub fn unpad(padded: &[u8]) -> Result<&[u8], SignalError> {
    let (&n, _) = padded.split_last().ok_or(SignalError::BadPadding)?;
    let body_len = padded
        .len()
        .checked_sub(usize::from(n))
        .filter(|_| n != 0)
        .ok_or(SignalError::BadPadding)?;
    let (body, padding) = padded.split_at(body_len);
    if padding.iter().any(|&b| b != n) {
        return Err(SignalError::BadPadding);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn pad_uses_every_length_from_1_to_16() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut seen = [false; 17];
        for _ in 0..1000 {
            let padded = pad(&mut rng, b"hi");
            let n = padded.len() - 2;
            assert!((1..=16).contains(&n));
            assert!(padded[2..].iter().all(|&b| usize::from(b) == n));
            seen[n] = true;
        }
        assert!(seen[1..].iter().all(|&s| s));
    }

    #[test]
    fn unpad_checks_count_and_bytes() {
        assert_eq!(unpad(b"abc\x01").ok(), Some(&b"abc"[..]));
        assert_eq!(unpad(b"abc\x03\x03\x03").ok(), Some(&b"abc"[..]));
        assert_eq!(unpad(b"\x02\x02").ok(), Some(&b""[..]));
        assert!(unpad(b"").is_err());
        assert!(unpad(b"abc\x00").is_err());
        assert!(unpad(b"abc\x02\x03\x03").is_err());
        assert!(unpad(b"\x05\x05").is_err());
        assert!(unpad(b"abc\x01\x03\x03").is_err());
    }

    proptest! {
        #[test]
        fn pad_then_unpad_is_identity(message in proptest::collection::vec(any::<u8>(), 0..300), seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let padded = pad(&mut rng, &message);
            prop_assert_eq!(unpad(&padded).ok(), Some(&message[..]));
        }

        #[test]
        fn unpad_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(body) = unpad(&data) {
                prop_assert!(body.len() < data.len());
            }
        }
    }
}
