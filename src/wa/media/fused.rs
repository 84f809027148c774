//! AES-256-CBC and the media hashes in one loop, on x86-64 with AES-NI and
//! the SHA extensions. Imports nothing but `core::arch` and zeroize; the
//! buffering, padding and checks stay in `cipher` and `hash`.
//!
//! Why fused: CBC encryption is one chain of dependent AES rounds, and each
//! SHA-256 is one chain of dependent SHA rounds; the two run on different
//! units of the core. Written as separate calls, each chain leaves the
//! other unit idle. Here a 64-byte unit's four AES blocks are spread over
//! the sixteen four-round steps of the hashes, so that out-of-order
//! execution always has independent work from every chain at hand.
//!
//! Per unit, encryption hashes its plaintext and encrypts it while the MAC
//! and the body hash take the previous unit's ciphertext, still in
//! registers. The MAC's input starts 16 bytes (the IV) before the body's,
//! so its block is the previous unit's last ciphertext block and the first
//! three of this one. Decryption is parallel across blocks, so a unit is
//! deciphered first and then hashed by every chain at once.
//!
//! Every `unsafe` here stands on one fact: the intrinsics are only reached
//! through a [`Cbc`], and a [`Cbc`] exists only once [`Cbc::new`] has
//! detected the features they need. The `#[target_feature]` functions are
//! `unsafe fn` (the crate's minimum Rust predates safe ones), called only
//! from each other and from [`Cbc`].

use core::arch::x86_64::{
    __m128i, _mm_add_epi32, _mm_aesdec_si128, _mm_aesdeclast_si128, _mm_aesenc_si128,
    _mm_aesenclast_si128, _mm_aesimc_si128, _mm_aeskeygenassist_si128, _mm_alignr_epi8,
    _mm_blend_epi16, _mm_loadu_si128, _mm_set_epi64x, _mm_setzero_si128, _mm_sha256msg1_epu32,
    _mm_sha256msg2_epu32, _mm_sha256rnds2_epu32, _mm_shuffle_epi32, _mm_shuffle_epi8,
    _mm_slli_si128, _mm_storeu_si128, _mm_xor_si128,
};

use zeroize::{Zeroize, ZeroizeOnDrop};

/// SHA-256's block, the unit every loop here goes by.
pub(super) const UNIT: usize = 64;

const AES_BLOCK: usize = 16;

/// AES-256 takes 14 rounds: 15 round keys.
const ROUND_KEYS: usize = 15;

/// SHA-256's round constants (FIPS 180-4, 4.2.2), a row per four-round
/// step.
#[rustfmt::skip]
static K: [u32; 64] = [
    0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5,
    0x3956_c25b, 0x59f1_11f1, 0x923f_82a4, 0xab1c_5ed5,
    0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3,
    0x72be_5d74, 0x80de_b1fe, 0x9bdc_06a7, 0xc19b_f174,
    0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc,
    0x2de9_2c6f, 0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da,
    0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7,
    0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967,
    0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc, 0x5338_0d13,
    0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85,
    0xa2bf_e8a1, 0xa81a_664b, 0xc24b_8b70, 0xc76c_51a3,
    0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070,
    0x19a4_c116, 0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5,
    0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
    0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208,
    0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7, 0xc671_78f2,
];

/// Whether this CPU has what the fused loops use.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("aes")
        && is_x86_feature_detected!("sha")
        && is_x86_feature_detected!("sse4.1")
        && is_x86_feature_detected!("ssse3")
}

/// Round keys, kept as bytes so they can be wiped.
#[derive(Zeroize, ZeroizeOnDrop)]
struct RoundKeys([[u8; AES_BLOCK]; ROUND_KEYS]);

/// AES-256-CBC state for the fused loops: the round keys of one direction
/// and the chaining value (the last ciphertext block, the IV at first).
#[derive(Zeroize, ZeroizeOnDrop)]
pub(super) struct Cbc {
    keys: RoundKeys,
    chain: [u8; AES_BLOCK],
}

/// Which way a [`Cbc`] runs: decryption uses the inverse round keys.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Direction {
    Encrypt,
    Decrypt,
}

impl Cbc {
    /// `None` when the CPU lacks AES-NI, the SHA extensions, SSSE3 or
    /// SSE4.1.
    pub(super) fn new(key: &[u8; 32], iv: &[u8; 16], direction: Direction) -> Option<Self> {
        if !available() {
            return None;
        }
        // SAFETY: the features `expand` enables were detected just above.
        let keys = unsafe { expand(key, direction) };
        Some(Self { keys, chain: *iv })
    }

    /// CBC-encrypts whole blocks in place, one after the other (the short
    /// runs before and after the units the fused loop takes).
    pub(super) fn encrypt_blocks(&mut self, blocks: &mut [u8]) {
        debug_assert_eq!(blocks.len() % AES_BLOCK, 0);
        // SAFETY: `self` exists, so `new` detected the features; the
        // kernel reads and writes only within `blocks`.
        unsafe { encrypt_blocks(&self.keys, &mut self.chain, blocks) }
    }

    /// CBC-decrypts whole blocks in place.
    pub(super) fn decrypt_blocks(&mut self, blocks: &mut [u8]) {
        debug_assert_eq!(blocks.len() % AES_BLOCK, 0);
        // SAFETY: as in `encrypt_blocks`.
        unsafe { decrypt_blocks(&self.keys, &mut self.chain, blocks) }
    }

    /// Hashes `units` of plaintext into `plain`, encrypts them in place and
    /// hashes the ciphertext into `body` and `mac`. `units` is whole hash
    /// blocks; every hash must be at a block boundary except the MAC, whose
    /// pending 16 bytes are the chaining value (the previous ciphertext
    /// block, or the IV) and, on return, are the last ciphertext block.
    pub(super) fn seal(
        &mut self,
        units: &mut [u8],
        plain: &mut [u32; 8],
        mac: &mut [u32; 8],
        body: &mut [u32; 8],
    ) {
        debug_assert_eq!(units.len() % UNIT, 0);
        // SAFETY: as in `encrypt_blocks`.
        unsafe { seal(&self.keys, &mut self.chain, units, plain, mac, body) }
    }

    /// Hashes `units` of ciphertext into `mac` (and `body`, when given),
    /// decrypts them in place and hashes the plaintext into `plain`; the
    /// hashes stand where [`Cbc::seal`] wants them.
    pub(super) fn open(
        &mut self,
        units: &mut [u8],
        mac: &mut [u32; 8],
        body: Option<&mut [u32; 8]>,
        plain: &mut [u32; 8],
    ) {
        debug_assert_eq!(units.len() % UNIT, 0);
        // SAFETY: as in `encrypt_blocks`.
        unsafe {
            match body {
                Some(body) => open::<true>(&self.keys, &mut self.chain, units, mac, body, plain),
                None => {
                    let mut unused = [0u32; 8];
                    open::<false>(&self.keys, &mut self.chain, units, mac, &mut unused, plain)
                }
            }
        }
    }

    /// The chaining value: the last ciphertext block seen.
    pub(super) fn chain(&self) -> &[u8; AES_BLOCK] {
        &self.chain
    }
}

/// One step of the AES-256 key schedule: the next round key from the one
/// two before and the word `assist` derived from the one before.
#[inline]
#[target_feature(enable = "sse2")]
unsafe fn schedule_step(previous: __m128i, assist: __m128i) -> __m128i {
    let mut key = previous;
    key = _mm_xor_si128(key, _mm_slli_si128::<4>(key));
    key = _mm_xor_si128(key, _mm_slli_si128::<4>(key));
    key = _mm_xor_si128(key, _mm_slli_si128::<4>(key));
    _mm_xor_si128(key, assist)
}

#[target_feature(enable = "aes,sse2")]
unsafe fn expand(key: &[u8; 32], direction: Direction) -> RoundKeys {
    let mut round = [_mm_setzero_si128(); ROUND_KEYS];
    // SAFETY: `key` is 32 readable bytes; unaligned loads.
    unsafe {
        round[0] = _mm_loadu_si128(key.as_ptr().cast());
        round[1] = _mm_loadu_si128(key.as_ptr().add(AES_BLOCK).cast());
    }
    // Even keys: RotWord, SubWord and the round constant applied to the
    // last word of the key before; odd keys: SubWord only (FIPS 197, 5.2).
    macro_rules! even {
        ($i:literal, $rcon:literal) => {
            let assist = _mm_aeskeygenassist_si128::<$rcon>(round[$i - 1]);
            round[$i] = schedule_step(round[$i - 2], _mm_shuffle_epi32::<0xff>(assist));
        };
    }
    macro_rules! odd {
        ($i:literal) => {
            let assist = _mm_aeskeygenassist_si128::<0>(round[$i - 1]);
            round[$i] = schedule_step(round[$i - 2], _mm_shuffle_epi32::<0xaa>(assist));
        };
    }
    even!(2, 0x01);
    odd!(3);
    even!(4, 0x02);
    odd!(5);
    even!(6, 0x04);
    odd!(7);
    even!(8, 0x08);
    odd!(9);
    even!(10, 0x10);
    odd!(11);
    even!(12, 0x20);
    odd!(13);
    even!(14, 0x40);
    if direction == Direction::Decrypt {
        // The equivalent inverse cipher: keys in reverse order, the inner
        // ones through InvMixColumns (FIPS 197, 5.3.5).
        let forward = round;
        for (i, key) in round.iter_mut().enumerate() {
            let source = forward[ROUND_KEYS - 1 - i];
            *key = if i == 0 || i == ROUND_KEYS - 1 {
                source
            } else {
                _mm_aesimc_si128(source)
            };
        }
    }
    let mut keys = RoundKeys([[0; AES_BLOCK]; ROUND_KEYS]);
    for (bytes, key) in keys.0.iter_mut().zip(round) {
        // SAFETY: `bytes` is 16 writable bytes; unaligned store.
        unsafe { _mm_storeu_si128(bytes.as_mut_ptr().cast(), key) };
    }
    for key in &mut round {
        // SAFETY: a write to a live local, volatile so that wiping the
        // key material is not dropped as a dead store.
        unsafe { core::ptr::write_volatile(key, _mm_setzero_si128()) };
    }
    keys
}

#[inline]
#[target_feature(enable = "sse2")]
unsafe fn load_keys(keys: &RoundKeys) -> [__m128i; ROUND_KEYS] {
    let mut round = [_mm_setzero_si128(); ROUND_KEYS];
    for (key, bytes) in round.iter_mut().zip(&keys.0) {
        // SAFETY: 16 readable bytes.
        *key = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
    }
    round
}

#[inline]
#[target_feature(enable = "sse2")]
unsafe fn load(from: *const u8) -> __m128i {
    // SAFETY: the caller passes 16 readable bytes.
    unsafe { _mm_loadu_si128(from.cast()) }
}

#[inline]
#[target_feature(enable = "sse2")]
unsafe fn store(to: *mut u8, value: __m128i) {
    // SAFETY: the caller passes 16 writable bytes.
    unsafe { _mm_storeu_si128(to.cast(), value) }
}

#[inline]
#[target_feature(enable = "aes,sse2")]
unsafe fn encrypt_block(round: &[__m128i; ROUND_KEYS], block: __m128i) -> __m128i {
    let mut x = _mm_xor_si128(block, round[0]);
    for key in &round[1..ROUND_KEYS - 1] {
        x = _mm_aesenc_si128(x, *key);
    }
    _mm_aesenclast_si128(x, round[ROUND_KEYS - 1])
}

#[inline]
#[target_feature(enable = "aes,sse2")]
unsafe fn decrypt_block(round: &[__m128i; ROUND_KEYS], block: __m128i) -> __m128i {
    let mut x = _mm_xor_si128(block, round[0]);
    for key in &round[1..ROUND_KEYS - 1] {
        x = _mm_aesdec_si128(x, *key);
    }
    _mm_aesdeclast_si128(x, round[ROUND_KEYS - 1])
}

#[target_feature(enable = "aes,sse2")]
unsafe fn encrypt_blocks(keys: &RoundKeys, chain: &mut [u8; AES_BLOCK], blocks: &mut [u8]) {
    let round = load_keys(keys);
    // SAFETY: `chain` is 16 bytes; every block below is 16 bytes of
    // `blocks`.
    unsafe {
        let mut previous = load(chain.as_ptr());
        for block in blocks.chunks_exact_mut(AES_BLOCK) {
            previous = encrypt_block(&round, _mm_xor_si128(load(block.as_ptr()), previous));
            store(block.as_mut_ptr(), previous);
        }
        store(chain.as_mut_ptr(), previous);
    }
}

#[target_feature(enable = "aes,sse2")]
unsafe fn decrypt_blocks(keys: &RoundKeys, chain: &mut [u8; AES_BLOCK], blocks: &mut [u8]) {
    let round = load_keys(keys);
    // SAFETY: as in `encrypt_blocks`.
    unsafe {
        let mut previous = load(chain.as_ptr());
        for block in blocks.chunks_exact_mut(AES_BLOCK) {
            let cipher = load(block.as_ptr());
            store(
                block.as_mut_ptr(),
                _mm_xor_si128(decrypt_block(&round, cipher), previous),
            );
            previous = cipher;
        }
        store(chain.as_mut_ptr(), previous);
    }
}

/// A SHA-256 state as the SHA instructions hold it: A, B, E, F in one
/// register and C, D, G, H in the other (highest lane first).
#[derive(Clone, Copy)]
struct Lane {
    abef: __m128i,
    cdgh: __m128i,
}

impl Lane {
    #[inline]
    #[target_feature(enable = "sse2,ssse3,sse4.1")]
    unsafe fn load(state: &[u32; 8]) -> Self {
        // SAFETY: `state` is 32 readable bytes.
        let (abcd, efgh) = unsafe {
            (
                _mm_loadu_si128(state.as_ptr().cast()),
                _mm_loadu_si128(state.as_ptr().add(4).cast()),
            )
        };
        let badc = _mm_shuffle_epi32::<0xb1>(abcd);
        let hgfe = _mm_shuffle_epi32::<0x1b>(efgh);
        Self {
            abef: _mm_alignr_epi8::<8>(badc, hgfe),
            cdgh: _mm_blend_epi16::<0xf0>(hgfe, badc),
        }
    }

    #[inline]
    #[target_feature(enable = "sse2,ssse3,sse4.1")]
    unsafe fn store(self, state: &mut [u32; 8]) {
        let abef_reversed = _mm_shuffle_epi32::<0x1b>(self.abef);
        let cdgh_swapped = _mm_shuffle_epi32::<0xb1>(self.cdgh);
        let abcd = _mm_blend_epi16::<0xf0>(abef_reversed, cdgh_swapped);
        let efgh = _mm_alignr_epi8::<8>(cdgh_swapped, abef_reversed);
        // SAFETY: `state` is 32 writable bytes.
        unsafe {
            _mm_storeu_si128(state.as_mut_ptr().cast(), abcd);
            _mm_storeu_si128(state.as_mut_ptr().add(4).cast(), efgh);
        }
    }
}

/// Big-endian words of a message block, as the SHA instructions take them.
#[inline]
#[target_feature(enable = "sse2,ssse3")]
unsafe fn words(bytes: __m128i) -> __m128i {
    let mask = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
    _mm_shuffle_epi8(bytes, mask)
}

#[inline]
#[target_feature(enable = "sse2")]
unsafe fn round_constants(step: usize) -> __m128i {
    // SAFETY: `step` < 16, so K[4 * step..4 * step + 4] is in bounds.
    unsafe { _mm_loadu_si128(K.as_ptr().add(4 * step).cast()) }
}

/// Four rounds of one SHA-256 chain on the message group in `w[a]`; with
/// `more`, then the message schedule's group four on into that slot (`w[b]`,
/// `w[c]`, `w[d]` are the three groups after `w[a]`). `$step` is a literal,
/// so the indices fold away.
macro_rules! four_rounds {
    ($lane:ident, $w:ident, $step:literal, $a:literal, $b:literal, $c:literal, $d:literal, more) => {
        four_rounds!($lane, $w, $step, $a, $b, $c, $d, last);
        let seventh = _mm_alignr_epi8::<4>($w[$d], $w[$c]);
        let sum = _mm_add_epi32(_mm_sha256msg1_epu32($w[$a], $w[$b]), seventh);
        $w[$a] = _mm_sha256msg2_epu32(sum, $w[$d]);
    };
    ($lane:ident, $w:ident, $step:literal, $a:literal, $b:literal, $c:literal, $d:literal, last) => {
        let message = _mm_add_epi32($w[$a], round_constants($step));
        $lane.cdgh = _mm_sha256rnds2_epu32($lane.cdgh, $lane.abef, message);
        $lane.abef =
            _mm_sha256rnds2_epu32($lane.abef, $lane.cdgh, _mm_shuffle_epi32::<0x0e>(message));
    };
}

/// Expands `$step!(i, a, b, c, d, more|last)` for the sixteen four-round
/// steps of a block, with the message slots in turn; the last four need
/// no more message words.
macro_rules! sixteen_steps {
    ($step:ident) => {
        $step!(0, 0, 1, 2, 3, more);
        $step!(1, 1, 2, 3, 0, more);
        $step!(2, 2, 3, 0, 1, more);
        $step!(3, 3, 0, 1, 2, more);
        $step!(4, 0, 1, 2, 3, more);
        $step!(5, 1, 2, 3, 0, more);
        $step!(6, 2, 3, 0, 1, more);
        $step!(7, 3, 0, 1, 2, more);
        $step!(8, 0, 1, 2, 3, more);
        $step!(9, 1, 2, 3, 0, more);
        $step!(10, 2, 3, 0, 1, more);
        $step!(11, 3, 0, 1, 2, more);
        $step!(12, 0, 1, 2, 3, last);
        $step!(13, 1, 2, 3, 0, last);
        $step!(14, 2, 3, 0, 1, last);
        $step!(15, 3, 0, 1, 2, last);
    };
}

/// One SHA-256 compression of a block given as message words.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
unsafe fn compress(lane: &mut Lane, mut w: [__m128i; 4]) {
    let start = *lane;
    macro_rules! step {
        ($i:literal, $a:literal, $b:literal, $c:literal, $d:literal, $more:ident) => {
            four_rounds!(lane, w, $i, $a, $b, $c, $d, $more);
        };
    }
    sixteen_steps!(step);
    lane.abef = _mm_add_epi32(lane.abef, start.abef);
    lane.cdgh = _mm_add_epi32(lane.cdgh, start.cdgh);
}

#[target_feature(enable = "aes,sha,sse2,ssse3,sse4.1")]
unsafe fn seal(
    keys: &RoundKeys,
    chain: &mut [u8; AES_BLOCK],
    units: &mut [u8],
    plain_state: &mut [u32; 8],
    mac_state: &mut [u32; 8],
    body_state: &mut [u32; 8],
) {
    let count = units.len() / UNIT;
    if count == 0 {
        return;
    }
    let round = load_keys(keys);
    let base = units.as_mut_ptr();
    // SAFETY: every pointer below is `base` plus at most `units.len()` -
    // 16, for 16-byte loads and stores within `units`; `chain` and the
    // states are whole arrays.
    unsafe {
        let mut plain = Lane::load(plain_state);
        let mut mac = Lane::load(mac_state);
        let mut body = Lane::load(body_state);
        let mut previous = load(chain.as_ptr());

        // The first unit: cipher and plaintext hash only.
        let mut ciphertext = [_mm_setzero_si128(); 4];
        let mut w = [_mm_setzero_si128(); 4];
        for (j, (c, w)) in ciphertext.iter_mut().zip(&mut w).enumerate() {
            let p = load(base.add(j * AES_BLOCK));
            *w = words(p);
            previous = encrypt_block(&round, _mm_xor_si128(p, previous));
            *c = previous;
            store(base.add(j * AES_BLOCK), previous);
        }
        compress(&mut plain, w);
        // The 16 bytes the MAC holds before this call: the chaining value.
        let mut carry = words(load(chain.as_ptr()));

        for unit in 1..count {
            let at = base.add(unit * UNIT);
            let p = [
                load(at),
                load(at.add(AES_BLOCK)),
                load(at.add(2 * AES_BLOCK)),
                load(at.add(3 * AES_BLOCK)),
            ];
            let mut wp = [words(p[0]), words(p[1]), words(p[2]), words(p[3])];
            let mut wb = [
                words(ciphertext[0]),
                words(ciphertext[1]),
                words(ciphertext[2]),
                words(ciphertext[3]),
            ];
            let mut wm = [carry, wb[0], wb[1], wb[2]];
            carry = wb[3];
            let mut x = _mm_setzero_si128();
            let (plain_start, mac_start, body_start) = (plain, mac, body);
            // Block j of the unit is encrypted in steps 4j to 4j + 3:
            // three or four AES rounds per step, between the hashes'.
            macro_rules! step {
                ($i:literal, $a:literal, $b:literal, $c:literal, $d:literal, $more:ident) => {
                    match $i % 4 {
                        0 => {
                            x = _mm_xor_si128(_mm_xor_si128(p[$i / 4], previous), round[0]);
                            x = _mm_aesenc_si128(x, round[1]);
                            x = _mm_aesenc_si128(x, round[2]);
                            x = _mm_aesenc_si128(x, round[3]);
                        }
                        1 => {
                            x = _mm_aesenc_si128(x, round[4]);
                            x = _mm_aesenc_si128(x, round[5]);
                            x = _mm_aesenc_si128(x, round[6]);
                            x = _mm_aesenc_si128(x, round[7]);
                        }
                        2 => {
                            x = _mm_aesenc_si128(x, round[8]);
                            x = _mm_aesenc_si128(x, round[9]);
                            x = _mm_aesenc_si128(x, round[10]);
                            x = _mm_aesenc_si128(x, round[11]);
                        }
                        _ => {
                            x = _mm_aesenc_si128(x, round[12]);
                            x = _mm_aesenc_si128(x, round[13]);
                            previous = _mm_aesenclast_si128(x, round[14]);
                            ciphertext[$i / 4] = previous;
                            store(at.add($i / 4 * AES_BLOCK), previous);
                        }
                    }
                    four_rounds!(plain, wp, $i, $a, $b, $c, $d, $more);
                    four_rounds!(mac, wm, $i, $a, $b, $c, $d, $more);
                    four_rounds!(body, wb, $i, $a, $b, $c, $d, $more);
                };
            }
            sixteen_steps!(step);
            plain.abef = _mm_add_epi32(plain.abef, plain_start.abef);
            plain.cdgh = _mm_add_epi32(plain.cdgh, plain_start.cdgh);
            mac.abef = _mm_add_epi32(mac.abef, mac_start.abef);
            mac.cdgh = _mm_add_epi32(mac.cdgh, mac_start.cdgh);
            body.abef = _mm_add_epi32(body.abef, body_start.abef);
            body.cdgh = _mm_add_epi32(body.cdgh, body_start.cdgh);
        }

        // The last unit's ciphertext.
        let wb = [
            words(ciphertext[0]),
            words(ciphertext[1]),
            words(ciphertext[2]),
            words(ciphertext[3]),
        ];
        compress(&mut mac, [carry, wb[0], wb[1], wb[2]]);
        compress(&mut body, wb);

        plain.store(plain_state);
        mac.store(mac_state);
        body.store(body_state);
        store(chain.as_mut_ptr(), previous);
    }
}

#[target_feature(enable = "aes,sha,sse2,ssse3,sse4.1")]
unsafe fn open<const BODY: bool>(
    keys: &RoundKeys,
    chain: &mut [u8; AES_BLOCK],
    units: &mut [u8],
    mac_state: &mut [u32; 8],
    body_state: &mut [u32; 8],
    plain_state: &mut [u32; 8],
) {
    let round = load_keys(keys);
    let base = units.as_mut_ptr();
    // SAFETY: as in `seal`.
    unsafe {
        let mut mac = Lane::load(mac_state);
        let mut body = Lane::load(body_state);
        let mut plain = Lane::load(plain_state);
        let mut previous = load(chain.as_ptr());
        let mut carry = words(previous);
        for unit in 0..units.len() / UNIT {
            let at = base.add(unit * UNIT);
            let c = [
                load(at),
                load(at.add(AES_BLOCK)),
                load(at.add(2 * AES_BLOCK)),
                load(at.add(3 * AES_BLOCK)),
            ];
            // Four independent blocks: their rounds interleave.
            let mut x = [
                _mm_xor_si128(c[0], round[0]),
                _mm_xor_si128(c[1], round[0]),
                _mm_xor_si128(c[2], round[0]),
                _mm_xor_si128(c[3], round[0]),
            ];
            for key in &round[1..ROUND_KEYS - 1] {
                for x in &mut x {
                    *x = _mm_aesdec_si128(*x, *key);
                }
            }
            let before = [previous, c[0], c[1], c[2]];
            let mut wp = [_mm_setzero_si128(); 4];
            for (j, ((w, x), before)) in wp.iter_mut().zip(x).zip(before).enumerate() {
                let p = _mm_xor_si128(_mm_aesdeclast_si128(x, round[ROUND_KEYS - 1]), before);
                store(at.add(j * AES_BLOCK), p);
                *w = words(p);
            }
            previous = c[3];
            let mut wb = [words(c[0]), words(c[1]), words(c[2]), words(c[3])];
            let mut wm = [carry, wb[0], wb[1], wb[2]];
            carry = wb[3];
            let (plain_start, mac_start, body_start) = (plain, mac, body);
            macro_rules! step {
                ($i:literal, $a:literal, $b:literal, $c:literal, $d:literal, $more:ident) => {
                    four_rounds!(mac, wm, $i, $a, $b, $c, $d, $more);
                    four_rounds!(plain, wp, $i, $a, $b, $c, $d, $more);
                    if BODY {
                        four_rounds!(body, wb, $i, $a, $b, $c, $d, $more);
                    }
                };
            }
            sixteen_steps!(step);
            plain.abef = _mm_add_epi32(plain.abef, plain_start.abef);
            plain.cdgh = _mm_add_epi32(plain.cdgh, plain_start.cdgh);
            mac.abef = _mm_add_epi32(mac.abef, mac_start.abef);
            mac.cdgh = _mm_add_epi32(mac.cdgh, mac_start.cdgh);
            if BODY {
                body.abef = _mm_add_epi32(body.abef, body_start.abef);
                body.cdgh = _mm_add_epi32(body.cdgh, body_start.cdgh);
            }
        }
        mac.store(mac_state);
        if BODY {
            body.store(body_state);
        }
        plain.store(plain_state);
        store(chain.as_mut_ptr(), previous);
    }
}
