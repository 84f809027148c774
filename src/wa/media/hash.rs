//! SHA-256 and HMAC-SHA256 fed a block at a time, for the media cipher.
//!
//! Encrypting a file takes three hashes over the same bytes (the
//! plaintext's SHA-256, the MAC over the ciphertext, the body's SHA-256)
//! besides AES-CBC. Run as separate passes, each is one long chain of
//! dependent rounds and the CPU's SHA and AES units wait on each other. Fed
//! 64 bytes at a time in one loop, the chains are independent neighbours in
//! the instruction stream and their rounds overlap. The compression function
//! is `sha2`'s (with its SHA-NI path); only the buffering and padding are
//! here. Where the fused x86-64 loop runs (`fused`), it takes the chaining
//! state, compresses whole blocks itself and hands it back.

use sha2::compress256;
use sha2::digest::generic_array::GenericArray;

/// SHA-256's block.
pub(super) const BLOCK: usize = 64;

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

const IPAD: u8 = 0x36;
const OPAD: u8 = 0x5c;

/// A streaming SHA-256.
#[derive(Clone)]
pub(super) struct Sha256Blocks {
    state: [u32; 8],
    pending: [u8; BLOCK],
    pending_len: usize,
    total: u64,
}

impl Sha256Blocks {
    pub(super) fn new() -> Self {
        Self {
            state: H0,
            pending: [0; BLOCK],
            pending_len: 0,
            total: 0,
        }
    }

    /// Absorbs `data`; whole blocks are compressed at once, the rest waits.
    #[inline]
    pub(super) fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.pending_len > 0 {
            let take = (BLOCK - self.pending_len).min(data.len());
            let (head, rest) = data.split_at(take);
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(head);
            self.pending_len += take;
            data = rest;
            if self.pending_len < BLOCK {
                return;
            }
            compress(&mut self.state, &self.pending);
            self.pending_len = 0;
        }
        let mut blocks = data.chunks_exact(BLOCK);
        for block in &mut blocks {
            compress(&mut self.state, block);
        }
        let rest = blocks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// Absorbs `buf[*at..]` up to at least `until` (or the end of `buf`),
    /// whole blocks at a time where it can.
    #[inline]
    pub(super) fn absorb_through(&mut self, buf: &[u8], at: &mut usize, until: usize) {
        while *at < until {
            let end = (*at + BLOCK - self.pending_len).min(buf.len());
            self.update(&buf[*at..end]);
            *at = end;
        }
    }

    /// Absorbs the blocks of `buf[*at..ready]` this hash can complete;
    /// `*at` stops at the first byte it could not use yet.
    #[inline]
    pub(super) fn absorb_within(&mut self, buf: &[u8], at: &mut usize, ready: usize) {
        loop {
            let end = *at + BLOCK - self.pending_len;
            if end > ready {
                return;
            }
            self.update(&buf[*at..end]);
            *at = end;
        }
    }

    /// Bytes waiting for the next block.
    pub(super) fn pending(&self) -> &[u8] {
        &self.pending[..self.pending_len]
    }

    /// The chaining state, for a kernel that compresses whole blocks
    /// itself; [`Sha256Blocks::absorbed`] then accounts for them.
    pub(super) fn state_mut(&mut self) -> &mut [u32; 8] {
        &mut self.state
    }

    /// Records that `len` bytes went through [`Sha256Blocks::state_mut`]
    /// in whole blocks, leaving `pending` (as many bytes as waited before)
    /// for the next block.
    pub(super) fn absorbed(&mut self, len: usize, pending: &[u8]) {
        debug_assert_eq!(pending.len(), self.pending_len);
        debug_assert_eq!(len % BLOCK, 0);
        self.total += len as u64;
        self.pending[..pending.len()].copy_from_slice(pending);
    }

    /// The digest: padding with the message length in bits (FIPS 180-4,
    /// 5.1.1).
    pub(super) fn finish(mut self) -> [u8; 32] {
        let bits = self.total.wrapping_mul(8);
        let mut tail = [0u8; 2 * BLOCK];
        let len = self.pending_len;
        tail[..len].copy_from_slice(&self.pending[..len]);
        tail[len] = 0x80;
        let end = if len < BLOCK - 8 { BLOCK } else { 2 * BLOCK };
        tail[end - 8..end].copy_from_slice(&bits.to_be_bytes());
        for block in tail[..end].chunks_exact(BLOCK) {
            compress(&mut self.state, block);
        }
        let mut digest = [0u8; 32];
        for (out, word) in digest.chunks_exact_mut(4).zip(self.state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        digest
    }
}

fn compress(state: &mut [u32; 8], block: &[u8]) {
    compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

/// HMAC-SHA256 (RFC 2104) with a key of at most one block — media MAC
/// keys are 32 bytes.
#[derive(Clone)]
pub(super) struct HmacSha256Blocks {
    inner: Sha256Blocks,
    outer_key: [u8; BLOCK],
}

impl HmacSha256Blocks {
    /// `None` for a key longer than a block (it would have to be hashed
    /// first; no media key is).
    pub(super) fn new(key: &[u8]) -> Option<Self> {
        if key.len() > BLOCK {
            return None;
        }
        let mut inner_key = [IPAD; BLOCK];
        let mut outer_key = [OPAD; BLOCK];
        for (i, byte) in key.iter().enumerate() {
            inner_key[i] ^= byte;
            outer_key[i] ^= byte;
        }
        let mut inner = Sha256Blocks::new();
        inner.update(&inner_key);
        Some(Self { inner, outer_key })
    }

    #[inline]
    pub(super) fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    #[inline]
    pub(super) fn absorb_through(&mut self, buf: &[u8], at: &mut usize, until: usize) {
        self.inner.absorb_through(buf, at, until);
    }

    #[inline]
    pub(super) fn absorb_within(&mut self, buf: &[u8], at: &mut usize, ready: usize) {
        self.inner.absorb_within(buf, at, ready);
    }

    /// The inner hash, where the message goes.
    pub(super) fn inner_mut(&mut self) -> &mut Sha256Blocks {
        &mut self.inner
    }

    pub(super) fn finish(self) -> [u8; 32] {
        let inner = self.inner.finish();
        let mut outer = Sha256Blocks::new();
        outer.update(&self.outer_key);
        outer.update(&inner);
        outer.finish()
    }
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, Mac};
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn known_digests() {
        // FIPS 180-2 appendix B: "abc" and the two-block message.
        let abc = Sha256Blocks::new();
        let mut abc = abc;
        abc.update(b"abc");
        assert_eq!(
            hex::encode(abc.finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut two = Sha256Blocks::new();
        two.update(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq");
        assert_eq!(
            hex::encode(two.finish()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            hex::encode(Sha256Blocks::new().finish()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// Hashes walking one buffer at their own pace end where `update`
    /// would: `absorb_within` never reads past `ready`, `absorb_through`
    /// always reaches `until`.
    #[test]
    fn absorbing_by_position_is_updating() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for offset in [0, 1, 16, 63] {
            let mut want = Sha256Blocks::new();
            want.update(&data[..offset]);
            let mut through = want.clone();
            let mut within = want.clone();
            want.update(&data[offset..]);
            let want = want.finish();
            let buf = &data[offset..];
            let (mut a, mut b) = (0, 0);
            for end in (0..=buf.len()).step_by(37) {
                through.absorb_through(buf, &mut a, end);
                assert!(a >= end);
                within.absorb_within(buf, &mut b, end);
                assert!(b <= end);
            }
            through.absorb_through(buf, &mut a, buf.len());
            within.update(&buf[b..]);
            assert_eq!(through.finish(), want, "offset {offset}");
            assert_eq!(within.finish(), want, "offset {offset}");
        }
    }

    #[test]
    fn hmac_rfc4231_case_2() {
        let mut mac = HmacSha256Blocks::new(b"Jefe").expect("short key");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finish()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(HmacSha256Blocks::new(&[0; BLOCK + 1]).is_none());
    }

    /// Every length around the block and padding boundaries, fed in
    /// pieces of every size, matches `sha2` and `hmac`.
    #[test]
    fn matches_the_reference_for_any_split() {
        let mut rng = StdRng::seed_from_u64(7);
        let key: [u8; 32] = rng.gen();
        for len in (0..=3 * BLOCK + 1).chain([1000, 4096, 65_537]) {
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            let piece = rng.gen_range(1..=97);
            let mut ours = Sha256Blocks::new();
            let mut ours_mac = HmacSha256Blocks::new(&key).expect("short key");
            for part in data.chunks(piece) {
                ours.update(part);
                ours_mac.update(part);
            }
            let want: [u8; 32] = Sha256::digest(&data).into();
            assert_eq!(ours.finish(), want, "length {len}, pieces of {piece}");
            let mut reference = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("any key");
            reference.update(&data);
            let want: [u8; 32] = reference.finalize().into_bytes().into();
            assert_eq!(ours_mac.finish(), want, "length {len}, pieces of {piece}");
        }
    }
}
