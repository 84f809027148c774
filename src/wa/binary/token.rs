//! Wire tags and the token dictionaries of the binary node format, with a
//! hash index (built at compile time) from string to token. Must not import
//! anything outside `std`.

mod v2;
mod v3;

/// Tag bytes that are not single-byte tokens.
pub(super) mod tag {
    pub(in crate::wa::binary) const LIST_EMPTY: u8 = 0x00;
    pub(in crate::wa::binary) const DICTIONARY_0: u8 = 0xEC;
    pub(in crate::wa::binary) const DICTIONARY_3: u8 = 0xEF;
    pub(in crate::wa::binary) const INTEROP_JID: u8 = 0xF5;
    pub(in crate::wa::binary) const FB_JID: u8 = 0xF6;
    pub(in crate::wa::binary) const AD_JID: u8 = 0xF7;
    pub(in crate::wa::binary) const LIST_8: u8 = 0xF8;
    pub(in crate::wa::binary) const LIST_16: u8 = 0xF9;
    pub(in crate::wa::binary) const JID_PAIR: u8 = 0xFA;
    pub(in crate::wa::binary) const HEX_8: u8 = 0xFB;
    pub(in crate::wa::binary) const BINARY_8: u8 = 0xFC;
    pub(in crate::wa::binary) const BINARY_20: u8 = 0xFD;
    pub(in crate::wa::binary) const BINARY_32: u8 = 0xFE;
    pub(in crate::wa::binary) const NIBBLE_8: u8 = 0xFF;
}

/// Longest string NIBBLE_8 / HEX_8 may carry.
pub(super) const PACKED_MAX: usize = 0x7F;

/// Which token dictionary a connection speaks. A client announces it in the
/// fourth byte of the connection intro (`WA 06 <version>`); both sides must
/// use the same one for the whole connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TokenDict {
    /// Dictionary 2: older clients, among them the Baileys 6.17 npm release.
    V2,
    /// Dictionary 3: what WhatsApp Web and current clients use.
    #[default]
    V3,
}

impl TokenDict {
    /// The dictionary new connections should announce.
    pub const CURRENT: Self = Self::V3;

    /// The dictionary for the version byte of a connection intro.
    pub fn from_version(version: u8) -> Option<Self> {
        match version {
            0x02 => Some(Self::V2),
            0x03 => Some(Self::V3),
            _ => None,
        }
    }

    /// The version byte announced in the connection intro.
    pub fn version(self) -> u8 {
        match self {
            Self::V2 => 0x02,
            Self::V3 => 0x03,
        }
    }

    fn tables(self) -> &'static Tables {
        match self {
            Self::V2 => &V2,
            Self::V3 => &V3,
        }
    }

    /// The string of single-byte token `index`, if it is one (1..=235).
    #[inline]
    pub(super) fn single(self, index: u8) -> Option<&'static str> {
        match index {
            0 => None,
            i => self.tables().single.get(usize::from(i)).copied(),
        }
    }

    /// The string of double-byte token `index` in dictionary `dict` (0..=3).
    pub(super) fn double(self, dict: u8, index: u8) -> Option<&'static str> {
        self.tables()
            .double
            .get(usize::from(dict))?
            .get(usize::from(index))
            .copied()
    }

    /// The token for `s`, if the dictionary has one.
    #[inline]
    pub(super) fn lookup(self, s: &str) -> Option<Token> {
        let t = self.tables();
        let bytes = s.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_TOKEN_LEN {
            return None;
        }
        let mut slot = slot_of(bytes);
        // The index is at most a sixth full, so an empty slot ends every probe;
        // the bound only keeps the loop visibly finite.
        for _ in 0..INDEX_LEN {
            let code = *t.index.get(slot)?;
            if code == 0 {
                return None;
            }
            if t.string_of(code)
                .is_some_and(|token| same_bytes(token.as_bytes(), bytes))
            {
                return Some(Token::from_code(code));
            }
            slot = (slot + 1) & (INDEX_LEN - 1);
        }
        None
    }
}

/// How a string is written as a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Token {
    Single(u8),
    Double { dict: u8, index: u8 },
}

impl Token {
    fn from_code(code: u16) -> Self {
        let [hi, lo] = code.to_be_bytes();
        match hi {
            0 => Self::Single(lo),
            d => Self::Double {
                dict: d - 1,
                index: lo,
            },
        }
    }
}

struct Tables {
    single: &'static [&'static str; 236],
    double: &'static [[&'static str; 256]; 4],
    /// Open-addressing hash index; 0 = empty slot, otherwise a token code:
    /// `index` for single-byte tokens, `(dict + 1) << 8 | index` for
    /// double-byte ones.
    index: [u16; INDEX_LEN],
}

impl Tables {
    fn string_of(&self, code: u16) -> Option<&'static str> {
        let [hi, lo] = code.to_be_bytes();
        match hi {
            0 => self.single.get(usize::from(lo)).copied(),
            d => self
                .double
                .get(usize::from(d) - 1)?
                .get(usize::from(lo))
                .copied(),
        }
    }
}

const INDEX_BITS: u32 = 13;
const INDEX_LEN: usize = 1 << INDEX_BITS;
/// Longer than any token in either dictionary: longer strings skip the index.
const MAX_TOKEN_LEN: usize = 64;

static V2: Tables = Tables::build(&v2::SINGLE, &v2::DOUBLE);
static V3: Tables = Tables::build(&v3::SINGLE, &v3::DOUBLE);

/// Multiply-xorshift over the string's 8-byte little-endian words (the last
/// one overlapping the one before when the length is not a multiple of 8;
/// short strings read two overlapping halves) and its length. Every byte
/// counts: many dictionary-2 tokens differ in one middle character
/// (`media-gru1-2.cdn.whatsapp.net`, `media-gru2-2.cdn.whatsapp.net`).
/// Whole-word loads keep lookups at a few nanoseconds.
#[inline]
const fn slot_of(s: &[u8]) -> usize {
    const fn mix(h: u64, word: u64) -> u64 {
        let h = (h ^ word).wrapping_mul(HASH_K);
        h ^ (h >> 29)
    }
    let n = s.len();
    let mut h = n as u64;
    if n >= 8 {
        let mut i = 0;
        while i + 8 <= n {
            h = mix(h, le8(s, i));
            i += 8;
        }
        if i < n {
            h = mix(h, le8(s, n - 8));
        }
    } else if n >= 4 {
        h = mix(h, le4(s, 0) | (le4(s, n - 4) << 32));
    } else if n > 0 {
        h = mix(h, le1(s, 0) | (le1(s, n / 2) << 8) | (le1(s, n - 1) << 16));
    }
    h = h.wrapping_mul(HASH_K);
    (h >> (64 - INDEX_BITS)) as usize
}

const HASH_K: u64 = 0x9E37_79B9_7F4A_7C15;

/// The 8 bytes at `at` as a little-endian word (0 past the end).
const fn le8(s: &[u8], at: usize) -> u64 {
    match s.split_at_checked(at) {
        Some((_, rest)) => match rest.first_chunk::<8>() {
            Some(b) => u64::from_le_bytes(*b),
            None => 0,
        },
        None => 0,
    }
}

const fn le4(s: &[u8], at: usize) -> u64 {
    match s.split_at_checked(at) {
        Some((_, rest)) => match rest.first_chunk::<4>() {
            Some(b) => u32::from_le_bytes(*b) as u64,
            None => 0,
        },
        None => 0,
    }
}

const fn le1(s: &[u8], at: usize) -> u64 {
    match s.split_at_checked(at) {
        Some((_, [b, ..])) => *b as u64,
        _ => 0,
    }
}

/// Equality with whole-word loads for the short strings tokens are, so a
/// lookup needs no `memcmp` call.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        1..=3 => {
            le1(a, 0) == le1(b, 0)
                && le1(a, n / 2) == le1(b, n / 2)
                && le1(a, n - 1) == le1(b, n - 1)
        }
        4..=8 => le4(a, 0) == le4(b, 0) && le4(a, n - 4) == le4(b, n - 4),
        9..=16 => le8(a, 0) == le8(b, 0) && le8(a, n - 8) == le8(b, n - 8),
        _ => a == b,
    }
}

const fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl Tables {
    const fn build(
        single: &'static [&'static str; 236],
        double: &'static [[&'static str; 256]; 4],
    ) -> Self {
        let mut index = [0u16; INDEX_LEN];
        // Single-byte tokens go in first so they win over any double-byte
        // duplicate, as the encoders of other clients prefer them.
        let mut i = 1;
        while i < single.len() {
            insert(&mut index, single, double, single[i], i as u16);
            i += 1;
        }
        let mut d = 0;
        while d < double.len() {
            let mut k = 0;
            while k < 256 {
                insert(
                    &mut index,
                    single,
                    double,
                    double[d][k],
                    (((d + 1) as u16) << 8) | k as u16,
                );
                k += 1;
            }
            d += 1;
        }
        Self {
            single,
            double,
            index,
        }
    }
}

const fn const_string_of(
    single: &'static [&'static str; 236],
    double: &'static [[&'static str; 256]; 4],
    code: u16,
) -> &'static [u8] {
    let hi = (code >> 8) as usize;
    let lo = (code & 0xFF) as usize;
    if hi == 0 {
        single[lo].as_bytes()
    } else {
        double[hi - 1][lo].as_bytes()
    }
}

const fn insert(
    index: &mut [u16; INDEX_LEN],
    single: &'static [&'static str; 236],
    double: &'static [[&'static str; 256]; 4],
    s: &str,
    code: u16,
) {
    let bytes = s.as_bytes();
    assert!(
        bytes.len() <= MAX_TOKEN_LEN,
        "token longer than MAX_TOKEN_LEN"
    );
    assert!(!bytes.is_empty(), "empty token in a dictionary");
    let mut slot = slot_of(bytes);
    loop {
        let existing = index[slot];
        if existing == 0 {
            index[slot] = code;
            return;
        }
        if bytes_eq(const_string_of(single, double, existing), bytes) {
            return;
        }
        slot = (slot + 1) & (INDEX_LEN - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_is_found_at_its_own_position() {
        for dict in [TokenDict::V2, TokenDict::V3] {
            let t = dict.tables();
            for (i, s) in t.single.iter().enumerate().skip(1) {
                let index = u8::try_from(i).expect("236 entries fit in u8");
                assert_eq!(dict.lookup(s), Some(Token::Single(index)), "{s}");
                assert_eq!(dict.single(index), Some(*s));
            }
            for (d, list) in t.double.iter().enumerate() {
                for (i, s) in list.iter().enumerate() {
                    let (d, i) = (d as u8, i as u8);
                    assert_eq!(
                        dict.lookup(s),
                        Some(Token::Double { dict: d, index: i }),
                        "{s}"
                    );
                    assert_eq!(dict.double(d, i), Some(*s));
                }
            }
        }
    }

    #[test]
    fn non_tokens_are_not_found() {
        for s in [
            "",
            "xmlstreamen",
            "s.whatsapp.ne",
            "3EB0C0FFEE",
            "hello world",
            "Type",
        ] {
            assert_eq!(TokenDict::V3.lookup(s), None, "{s}");
        }
        assert_eq!(TokenDict::V3.single(0), None);
        assert_eq!(TokenDict::V3.single(236), None);
        assert_eq!(TokenDict::V3.double(4, 0), None);
    }

    #[test]
    fn dictionaries_match_the_published_layout() {
        // Fixed points of dictionary 3 (whatsmeow binary/token, Baileys 6.7+).
        let v3 = TokenDict::V3;
        assert_eq!(v3.single(1), Some("xmlstreamstart"));
        assert_eq!(v3.single(2), Some("xmlstreamend"));
        assert_eq!(v3.single(3), Some("s.whatsapp.net"));
        assert_eq!(v3.single(8), Some("id"));
        assert_eq!(v3.single(235), Some("screen_height"));
        assert_eq!(v3.double(0, 0), Some("read-self"));
        assert_eq!(v3.double(3, 255), Some("1961"));
        assert_eq!(
            v3.lookup("pair-device"),
            Some(Token::Double {
                dict: 1,
                index: 0xEE
            })
        );
        // Dictionary 2 (Baileys before 6.7.19).
        let v2 = TokenDict::V2;
        assert_eq!(v2.single(3), Some("s.whatsapp.net"));
        assert_eq!(v2.single(9), Some("broadcast"));
        assert_eq!(v2.double(0, 0), Some("media-for1-1.cdn.whatsapp.net"));
        assert_eq!(TokenDict::from_version(0x02), Some(v2));
        assert_eq!(TokenDict::from_version(0x03), Some(v3));
        assert_eq!(TokenDict::from_version(0x04), None);
        assert_eq!(TokenDict::CURRENT.version(), 0x03);
    }

    #[test]
    fn short_equality_matches_slice_equality() {
        let words = [
            "", "a", "b", "ab", "ba", "abc", "acc", "abcd", "abce", "abcdefgh", "abcdefgi",
        ];
        let longer = [
            "abcdefghij",
            "abcdefghik",
            "xbcdefghij",
            "abcdefghijklmnop",
            "abcdefghijklmnoq",
        ];
        let all: Vec<&str> = words.iter().chain(&longer).copied().collect();
        for a in &all {
            for b in &all {
                assert_eq!(same_bytes(a.as_bytes(), b.as_bytes()), a == b, "{a} {b}");
            }
        }
        let long = "x".repeat(40);
        assert!(same_bytes(long.as_bytes(), long.clone().as_bytes()));
        assert!(!same_bytes(long.as_bytes(), "y".repeat(40).as_bytes()));
    }

    #[test]
    fn probes_stay_short() {
        // A weak hash would not break lookups, only slow them down; keep the
        // longest probe sequence small so encoding stays fast.
        for dict in [TokenDict::V2, TokenDict::V3] {
            let t = dict.tables();
            let strings = t.single.iter().skip(1).chain(t.double.iter().flatten());
            let mut worst = 0;
            let mut total = 0;
            let mut n = 0;
            for s in strings {
                let mut slot = slot_of(s.as_bytes());
                let mut probes = 1;
                while t.string_of(t.index[slot]) != Some(s) {
                    slot = (slot + 1) & (INDEX_LEN - 1);
                    probes += 1;
                }
                worst = worst.max(probes);
                total += probes;
                n += 1;
            }
            assert!(worst <= 8, "{dict:?}: worst probe {worst}");
            assert!(
                total * 10 < n * 16,
                "{dict:?}: mean probe {}",
                total as f64 / n as f64
            );
        }
    }
}
