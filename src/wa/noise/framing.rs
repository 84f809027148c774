//! Frame boundaries on the websocket stream: a 3-byte big-endian length before
//! every payload, and, from the client only, a one-time intro (optional edge
//! routing prefix + [`WA_HEADER`]) before the first frame. Frames may be split
//! across websocket messages or share one, so the decoder buffers. Must not
//! import I/O.

use super::{NoiseError, ACCEPTED_DICT_VERSIONS, MAX_FRAME, WA_HEADER};

/// Length of the frame length field.
const LEN_SIZE: usize = 3;
/// Edge routing prefix: "ED", then version 0.1.
const ROUTING_MAGIC: [u8; 4] = [b'E', b'D', 0x00, 0x01];
/// "WA" and the protocol magic 6; the fourth header byte is the dictionary
/// version.
const HEADER_MAGIC: [u8; 3] = [b'W', b'A', 0x06];

/// Appends `payload` as one frame to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
    if payload.len() > MAX_FRAME {
        return Err(NoiseError::FrameTooLarge {
            len: payload.len(),
            max: MAX_FRAME,
        });
    }
    out.reserve(LEN_SIZE + payload.len());
    out.extend_from_slice(&length_bytes(payload.len()));
    out.extend_from_slice(payload);
    Ok(())
}

/// The client's connection intro, to put in front of its first frame:
/// `"ED" 0 1 len3 routing_info` when routing info is known, then
/// [`WA_HEADER`]. Routing info too long for its 3-byte length field is left
/// out, since it is only a hint to the edge server.
pub fn client_intro(routing_info: Option<&[u8]>) -> Vec<u8> {
    let mut intro = Vec::new();
    if let Some(info) = routing_info.filter(|info| info.len() <= MAX_FRAME) {
        intro.reserve(ROUTING_MAGIC.len() + LEN_SIZE + info.len() + WA_HEADER.len());
        intro.extend_from_slice(&ROUTING_MAGIC);
        intro.extend_from_slice(&length_bytes(info.len()));
        intro.extend_from_slice(info);
    }
    intro.extend_from_slice(&WA_HEADER);
    intro
}

/// Where the decoder stands with respect to the intro.
#[derive(Debug)]
enum Intro {
    /// Client side: the server sends no intro.
    NotExpected,
    /// Server side, intro not complete yet.
    Awaiting,
    /// Server side, intro read.
    Read {
        header: [u8; 4],
        routing_info: Option<Vec<u8>>,
    },
}

/// Splits a byte stream into frame payloads.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    pos: usize,
    intro: Intro,
    max_frame: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder for the client side: frames start at the first byte.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            intro: Intro::NotExpected,
            max_frame: MAX_FRAME,
        }
    }

    /// A decoder for the server side: consumes the optional edge routing
    /// prefix and the required `WA` header before the first frame.
    pub fn server() -> Self {
        Self {
            intro: Intro::Awaiting,
            ..Self::new()
        }
    }

    /// Lowers the largest accepted frame (and routing info), e.g. to bound
    /// what an unauthenticated peer can make the server buffer.
    pub fn with_max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame.min(MAX_FRAME);
        self
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        // Reclaim consumed space before growing; each byte is moved at most
        // once per frame boundary, so this stays linear overall.
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame payload: `Ok(None)` if more bytes are needed,
    /// an error if the stream is invalid (the connection should be closed).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, NoiseError> {
        if matches!(self.intro, Intro::Awaiting) && !self.read_intro()? {
            return Ok(None);
        }
        let unread = self.buf.get(self.pos..).unwrap_or_default();
        let Some(len) = read_length(unread) else {
            return Ok(None);
        };
        if len > self.max_frame {
            return Err(NoiseError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let Some(payload) = unread.get(LEN_SIZE..LEN_SIZE + len) else {
            return Ok(None);
        };
        let payload = payload.to_vec();
        self.pos += LEN_SIZE + len;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        Ok(Some(payload))
    }

    /// The intro header the client sent (server side, once read). It is the
    /// Noise prologue; see [`ServerHandshake::respond_with_header`](super::ServerHandshake::respond_with_header).
    pub fn header(&self) -> Option<&[u8; 4]> {
        match &self.intro {
            Intro::Read { header, .. } => Some(header),
            Intro::NotExpected | Intro::Awaiting => None,
        }
    }

    /// The edge routing info the client sent (server side, once read).
    pub fn routing_info(&self) -> Option<&[u8]> {
        match &self.intro {
            Intro::Read { routing_info, .. } => routing_info.as_deref(),
            Intro::NotExpected | Intro::Awaiting => None,
        }
    }

    /// Tries to consume the intro: `Ok(true)` once read, `Ok(false)` if more
    /// bytes are needed. Rejects a wrong prefix as soon as one byte differs.
    fn read_intro(&mut self) -> Result<bool, NoiseError> {
        let unread = self.buf.get(self.pos..).unwrap_or_default();
        let (routing_info, rest) = match unread.first() {
            None => return Ok(false),
            Some(&b'E') => {
                if !prefix_matches(unread, &ROUTING_MAGIC) {
                    return Err(NoiseError::BadIntro);
                }
                let Some(len) = unread.get(ROUTING_MAGIC.len()..).and_then(read_length) else {
                    return Ok(false);
                };
                if len > self.max_frame {
                    return Err(NoiseError::FrameTooLarge {
                        len,
                        max: self.max_frame,
                    });
                }
                let start = ROUTING_MAGIC.len() + LEN_SIZE;
                let Some(info) = unread.get(start..start + len) else {
                    return Ok(false);
                };
                let rest = unread.get(start + len..).unwrap_or_default();
                (Some(info.to_vec()), rest)
            }
            Some(_) => (None, unread),
        };
        if !prefix_matches(rest, &HEADER_MAGIC) {
            return Err(NoiseError::BadIntro);
        }
        let Some(header) = rest.get(..WA_HEADER.len()) else {
            return Ok(false);
        };
        let header: [u8; 4] = header.try_into().map_err(|_| NoiseError::BadIntro)?;
        if !ACCEPTED_DICT_VERSIONS.contains(&header[3]) {
            return Err(NoiseError::BadIntro);
        }
        let consumed = unread.len() - rest.len() + WA_HEADER.len();
        self.pos += consumed;
        self.intro = Intro::Read {
            header,
            routing_info,
        };
        Ok(true)
    }
}

fn length_bytes(len: usize) -> [u8; 3] {
    let [_, a, b, c] = (len as u32).to_be_bytes();
    [a, b, c]
}

fn read_length(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [a, b, c, ..] => Some(usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c)),
        _ => None,
    }
}

/// True if `data` could still start with `pattern`: every byte present
/// matches.
fn prefix_matches(data: &[u8], pattern: &[u8]) -> bool {
    data.iter().zip(pattern).all(|(d, p)| d == p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(decoder: &mut FrameDecoder) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame().expect("valid stream") {
            frames.push(frame);
        }
        frames
    }

    #[test]
    fn encode_frame_writes_big_endian_length() {
        let mut out = vec![0xAA];
        encode_frame(b"hi", &mut out).expect("small frame");
        encode_frame(&[], &mut out).expect("empty frame");
        assert_eq!(out, [0xAA, 0, 0, 2, b'h', b'i', 0, 0, 0]);

        let mut out = Vec::new();
        encode_frame(&vec![7; 0x01_0203], &mut out).expect("fits");
        assert_eq!(out[..3], [0x01, 0x02, 0x03]);
        assert_eq!(out.len(), 3 + 0x01_0203);
    }

    #[test]
    fn encode_frame_rejects_oversized_payload() {
        let mut out = Vec::new();
        assert!(matches!(
            encode_frame(&vec![0; MAX_FRAME + 1], &mut out),
            Err(NoiseError::FrameTooLarge { len, max: MAX_FRAME }) if len == MAX_FRAME + 1
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn client_intro_layouts() {
        assert_eq!(client_intro(None), WA_HEADER);
        assert_eq!(
            client_intro(Some(b"abc")),
            [b'E', b'D', 0, 1, 0, 0, 3, b'a', b'b', b'c', b'W', b'A', 6, 3]
        );
        assert_eq!(
            client_intro(Some(&[])),
            [b'E', b'D', 0, 1, 0, 0, 0, b'W', b'A', 6, 3]
        );
        assert_eq!(client_intro(Some(&vec![0; MAX_FRAME + 1])), WA_HEADER);
    }

    #[test]
    fn server_decoder_reads_intro_then_frames_byte_by_byte() {
        let mut wire = client_intro(Some(b"route"));
        encode_frame(b"first", &mut wire).expect("fits");
        encode_frame(b"", &mut wire).expect("fits");
        encode_frame(b"third", &mut wire).expect("fits");
        let mut decoder = FrameDecoder::server();
        let mut frames = Vec::new();
        for byte in &wire {
            assert!(decoder.routing_info().is_none() || decoder.header().is_some());
            decoder.push(std::slice::from_ref(byte));
            frames.extend(drain(&mut decoder));
        }
        assert_eq!(frames, [&b"first"[..], b"", b"third"]);
        assert_eq!(decoder.routing_info(), Some(&b"route"[..]));
        assert_eq!(decoder.header(), Some(&WA_HEADER));
    }

    #[test]
    fn server_decoder_without_routing_and_with_dict_version_2() {
        let mut wire = vec![b'W', b'A', 6, 2];
        encode_frame(b"hello", &mut wire).expect("fits");
        let mut decoder = FrameDecoder::server();
        decoder.push(&wire);
        assert_eq!(drain(&mut decoder), [b"hello"]);
        assert_eq!(decoder.header(), Some(&[b'W', b'A', 6, 2]));
        assert_eq!(decoder.routing_info(), None);
    }

    #[test]
    fn bad_intros_are_rejected_early() {
        for bad in [
            &b"X"[..],
            b"WB",
            b"WA\x05",
            b"WA\x06\x09",
            b"EX",
            b"ED\x00\x02",
            b"ED\x00\x01\x00\x00\x01rWA\x07",
            b"\x00\x00\x05hello",
        ] {
            let mut decoder = FrameDecoder::server();
            decoder.push(bad);
            assert!(
                matches!(decoder.next_frame(), Err(NoiseError::BadIntro)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        for partial in [
            &b""[..],
            b"W",
            b"WA\x06",
            b"ED\x00\x01\x00",
            b"ED\x00\x01\x00\x00\x02r",
        ] {
            let mut decoder = FrameDecoder::server();
            decoder.push(partial);
            assert!(decoder.next_frame().expect("not invalid yet").is_none());
            assert!(decoder.header().is_none());
        }
        let mut decoder = FrameDecoder::new();
        decoder.push(&[0, 0, 4, 1, 2, 3]);
        assert!(decoder.next_frame().expect("valid").is_none());
        decoder.push(&[4, 0]);
        assert_eq!(decoder.next_frame().expect("valid"), Some(vec![1, 2, 3, 4]));
        assert!(decoder.next_frame().expect("valid").is_none());
        // One byte of the next length field is already buffered.
        decoder.push(&[0]);
        assert!(decoder.next_frame().expect("valid").is_none());
        decoder.push(&[0]);
        assert_eq!(decoder.next_frame().expect("valid"), Some(vec![]));
    }

    #[test]
    fn client_decoder_expects_no_intro() {
        let mut decoder = FrameDecoder::new();
        decoder.push(b"WA\x06\x03");
        // Read as a frame of length 0x574106, not as an intro.
        assert!(decoder.next_frame().expect("valid length").is_none());
        assert!(decoder.header().is_none());
    }

    #[test]
    fn lowered_limit_rejects_big_frames_and_routing() {
        let mut decoder = FrameDecoder::new().with_max_frame(4);
        decoder.push(&[0, 0, 5]);
        assert!(matches!(
            decoder.next_frame(),
            Err(NoiseError::FrameTooLarge { len: 5, max: 4 })
        ));
        let mut decoder = FrameDecoder::server().with_max_frame(4);
        decoder.push(b"ED\x00\x01\x00\x00\x05");
        assert!(matches!(
            decoder.next_frame(),
            Err(NoiseError::FrameTooLarge { len: 5, max: 4 })
        ));
        let mut decoder = FrameDecoder::new().with_max_frame(usize::MAX);
        decoder.push(&[0xFF, 0xFF, 0xFF]);
        assert!(decoder
            .next_frame()
            .expect("MAX_FRAME is allowed")
            .is_none());
    }

    #[test]
    fn buffer_is_reclaimed_between_frames() {
        let mut decoder = FrameDecoder::new();
        for round in 0u8..100 {
            let mut wire = Vec::new();
            encode_frame(&[round; 1000], &mut wire).expect("fits");
            encode_frame(&[round], &mut wire).expect("fits");
            // Leave half of the second frame for the next push.
            decoder.push(&wire[..1003]);
            assert_eq!(
                decoder.next_frame().expect("valid"),
                Some(vec![round; 1000])
            );
            decoder.push(&wire[1003..]);
            assert_eq!(decoder.next_frame().expect("valid"), Some(vec![round]));
        }
        assert!(decoder.buf.capacity() < 8192);
    }
}
