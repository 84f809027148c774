//! Where media goes: the `media_conn` iq (upload auth and hosts, both
//! sides), the upload URL and its JSON answer, and download URLs built from
//! a message's direct path.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::MediaType;
use crate::wa::binary::Node;
use crate::wa::jid::Jid;

/// Why a `media_conn` answer, an upload answer or a URL part is unusable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MediaConnError {
    #[error("media_conn answer has no {0}")]
    Missing(&'static str),
    #[error("media_conn attribute {0} is not a number")]
    BadNumber(&'static str),
    #[error("media host {0:?} is not a host name")]
    BadHost(String),
    #[error("direct path is not a path on the media host")]
    BadDirectPath,
    #[error("upload answer is not the expected JSON: {0}")]
    BadJson(&'static str),
}

/// One media host of a `media_conn` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaHost {
    /// `mmg.whatsapp.net`, or `127.0.0.1:PORT` for a simulator.
    pub hostname: String,
    /// Largest body the host takes, when it says.
    pub max_content_length: Option<u64>,
}

/// Upload credentials and hosts, valid for `ttl_s` seconds from when they
/// were fetched (`auth` for `auth_ttl_s`).
#[derive(Clone, PartialEq, Eq)]
pub struct MediaConn {
    /// The upload `auth` parameter (a bearer token: never logged).
    pub auth: String,
    pub ttl_s: u32,
    pub auth_ttl_s: u32,
    pub max_buckets: u32,
    /// In order of preference; downloads fall back along the list.
    pub hosts: Vec<MediaHost>,
}

impl MediaConn {
    /// Unix second after which the answer fetched at `fetched_at` must be
    /// fetched again: the earlier of the two ttls (an `auth_ttl` of 0 means
    /// none was given).
    pub fn expires_at(&self, fetched_at: u64) -> u64 {
        let ttl = match self.auth_ttl_s {
            0 => self.ttl_s,
            auth => self.ttl_s.min(auth),
        };
        fetched_at.saturating_add(u64::from(ttl))
    }
}

impl fmt::Debug for MediaConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaConn")
            .field("auth", &"..")
            .field("ttl_s", &self.ttl_s)
            .field("auth_ttl_s", &self.auth_ttl_s)
            .field("max_buckets", &self.max_buckets)
            .field("hosts", &self.hosts)
            .finish()
    }
}

/// `<iq xmlns="w:m" type="set" to="s.whatsapp.net"><media_conn/></iq>`
/// (the caller sets the id).
pub fn media_conn_query() -> Node {
    Node::new("iq")
        .attr("xmlns", "w:m")
        .attr("type", "set")
        .attr("to", Jid::server_jid())
        .children(vec![Node::new("media_conn")])
}

/// Reads a `media_conn` iq result.
pub fn parse_media_conn(result: &Node) -> Result<MediaConn, MediaConnError> {
    let conn = result
        .child("media_conn")
        .ok_or(MediaConnError::Missing("media_conn"))?;
    let auth = conn
        .attr_string("auth")
        .filter(|a| !a.is_empty())
        .ok_or(MediaConnError::Missing("auth"))?;
    let number = |key: &'static str, required: bool| -> Result<u32, MediaConnError> {
        match conn.attr_value(key) {
            None if required => Err(MediaConnError::Missing(key)),
            None => Ok(0),
            Some(_) => conn
                .attr_u64(key)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(MediaConnError::BadNumber(key)),
        }
    };
    let ttl_s = number("ttl", true)?;
    let auth_ttl_s = number("auth_ttl", false)?;
    let max_buckets = number("max_buckets", false)?;
    let mut hosts = Vec::new();
    for host in conn.children_by_tag("host") {
        let hostname = host
            .attr_string("hostname")
            .ok_or(MediaConnError::Missing("hostname"))?;
        if !is_host(&hostname) {
            return Err(MediaConnError::BadHost(hostname));
        }
        hosts.push(MediaHost {
            hostname,
            max_content_length: host.attr_u64("maxContentLengthBytes"),
        });
    }
    if hosts.is_empty() {
        return Err(MediaConnError::Missing("host"));
    }
    Ok(MediaConn {
        auth,
        ttl_s,
        auth_ttl_s,
        max_buckets,
        hosts,
    })
}

/// The `<media_conn>` node a server answers with (the simulator's side).
pub fn media_conn_node(conn: &MediaConn) -> Node {
    let hosts = conn
        .hosts
        .iter()
        .map(|host| {
            let node = Node::new("host").attr("hostname", host.hostname.as_str());
            match host.max_content_length {
                Some(max) => node.attr("maxContentLengthBytes", max),
                None => node,
            }
        })
        .collect();
    Node::new("media_conn")
        .attr("auth", conn.auth.as_str())
        .attr("ttl", conn.ttl_s)
        .attr("auth_ttl", conn.auth_ttl_s)
        .attr("max_buckets", conn.max_buckets)
        .children(hosts)
}

/// A host name, optionally with a port: letters, digits, `.`, `-`, `:`.
/// Anything else (`/`, `@`, `?`, spaces) could redirect a URL built from it.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
}

/// How media hosts are reached: HTTPS for WhatsApp; plain HTTP for a
/// simulator on loopback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scheme {
    #[default]
    Https,
    Http,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

/// The upload token: unpadded base64url of the body's SHA-256.
pub fn upload_token(file_enc_sha256: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(file_enc_sha256)
}

/// `{scheme}://{host}/mms/{type}/{token}?auth={auth}&token={token}`, where
/// the body is POSTed.
pub fn upload_url(
    scheme: Scheme,
    host: &MediaHost,
    ty: MediaType,
    auth: &str,
    file_enc_sha256: &[u8; 32],
) -> Result<String, MediaConnError> {
    if !is_host(&host.hostname) {
        return Err(MediaConnError::BadHost(host.hostname.clone()));
    }
    let token = upload_token(file_enc_sha256);
    Ok(format!(
        "{}://{}/mms/{}/{token}?auth={}&token={token}",
        scheme.as_str(),
        host.hostname,
        ty.mms_type(),
        percent_encode(auth),
    ))
}

/// `{scheme}://{host}{direct_path}`. The direct path comes from a peer's
/// message, so it must be a plain absolute path: `//other.host/…` or
/// `@other.host/…` would point the download elsewhere.
pub fn download_url(
    scheme: Scheme,
    host: &MediaHost,
    direct_path: &str,
) -> Result<String, MediaConnError> {
    if !is_host(&host.hostname) {
        return Err(MediaConnError::BadHost(host.hostname.clone()));
    }
    let plain = direct_path.starts_with('/')
        && !direct_path.starts_with("//")
        && direct_path.len() <= 4096
        && direct_path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'\\' | b'#' | b'@'));
    if !plain {
        return Err(MediaConnError::BadDirectPath);
    }
    Ok(format!(
        "{}://{}{direct_path}",
        scheme.as_str(),
        host.hostname
    ))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a media host answers to an upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadAnswer {
    /// A full download URL, when the host gives one.
    pub url: Option<String>,
    /// The path to put in the message; downloads prefix it with a host.
    pub direct_path: String,
}

/// Most nesting the upload answer parser follows before giving up.
const MAX_JSON_DEPTH: usize = 16;
/// Largest upload answer read (real ones are a few hundred bytes).
const MAX_JSON_LEN: usize = 64 * 1024;

/// Reads `{"url": …, "direct_path": …, …}`; other members are skipped.
pub fn parse_upload_answer(body: &[u8]) -> Result<UploadAnswer, MediaConnError> {
    if body.len() > MAX_JSON_LEN {
        return Err(MediaConnError::BadJson("answer too long"));
    }
    let mut reader = JsonReader { text: body, pos: 0 };
    let mut url = None;
    let mut direct_path = None;
    reader.expect(b'{')?;
    if !reader.eat(b'}') {
        loop {
            let key = reader.string()?;
            reader.expect(b':')?;
            match key.as_str() {
                "url" if reader.peek() == Some(b'"') => url = Some(reader.string()?),
                "direct_path" if reader.peek() == Some(b'"') => {
                    direct_path = Some(reader.string()?)
                }
                _ => reader.skip_value(0)?,
            }
            if reader.eat(b',') {
                continue;
            }
            reader.expect(b'}')?;
            break;
        }
    }
    if reader.peek().is_some() {
        return Err(MediaConnError::BadJson("trailing data"));
    }
    let direct_path = direct_path.ok_or(MediaConnError::BadJson("no direct_path"))?;
    Ok(UploadAnswer { url, direct_path })
}

/// The JSON a media host answers an upload with (the simulator's side).
pub fn upload_answer_json(answer: &UploadAnswer) -> String {
    let mut out = String::from("{");
    if let Some(url) = &answer.url {
        out.push_str("\"url\":");
        json_string(&mut out, url);
        out.push(',');
    }
    out.push_str("\"direct_path\":");
    json_string(&mut out, &answer.direct_path);
    out.push('}');
    out
}

fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Just enough JSON to read one flat answer: strings in full, every other
/// value skipped with bounded nesting.
struct JsonReader<'a> {
    text: &'a [u8],
    pos: usize,
}

impl JsonReader<'_> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.text.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), MediaConnError> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(MediaConnError::BadJson("unexpected character"))
        }
    }

    fn next_byte(&mut self) -> Result<u8, MediaConnError> {
        let b = *self
            .text
            .get(self.pos)
            .ok_or(MediaConnError::BadJson("unexpected end"))?;
        self.pos += 1;
        Ok(b)
    }

    fn hex4(&mut self) -> Result<u32, MediaConnError> {
        let mut n = 0;
        for _ in 0..4 {
            let digit = char::from(self.next_byte()?)
                .to_digit(16)
                .ok_or(MediaConnError::BadJson("bad \\u escape"))?;
            n = n * 16 + digit;
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, MediaConnError> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.next_byte()? {
                b'"' => break,
                b'\\' => match self.next_byte()? {
                    b'"' => out.push(b'"'),
                    b'\\' => out.push(b'\\'),
                    b'/' => out.push(b'/'),
                    b'b' => out.push(0x08),
                    b'f' => out.push(0x0c),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'u' => {
                        let mut code = self.hex4()?;
                        if (0xd800..0xdc00).contains(&code) {
                            if self.next_byte()? != b'\\' || self.next_byte()? != b'u' {
                                return Err(MediaConnError::BadJson("lone surrogate"));
                            }
                            let low = self.hex4()?;
                            if !(0xdc00..0xe000).contains(&low) {
                                return Err(MediaConnError::BadJson("lone surrogate"));
                            }
                            code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
                        }
                        let c = char::from_u32(code)
                            .ok_or(MediaConnError::BadJson("bad \\u escape"))?;
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => return Err(MediaConnError::BadJson("bad escape")),
                },
                b if b < 0x20 => return Err(MediaConnError::BadJson("control character")),
                b => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| MediaConnError::BadJson("invalid UTF-8"))
    }

    fn skip_value(&mut self, depth: usize) -> Result<(), MediaConnError> {
        if depth > MAX_JSON_DEPTH {
            return Err(MediaConnError::BadJson("nested too deeply"));
        }
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(open @ (b'{' | b'[')) => {
                self.pos += 1;
                let close = if open == b'{' { b'}' } else { b']' };
                if self.eat(close) {
                    return Ok(());
                }
                loop {
                    if open == b'{' {
                        self.string()?;
                        self.expect(b':')?;
                    }
                    self.skip_value(depth + 1)?;
                    if self.eat(b',') {
                        continue;
                    }
                    return self.expect(close);
                }
            }
            Some(b) if b == b'-' || b.is_ascii_alphanumeric() => {
                // Numbers, true, false, null: a run of literal characters.
                while let Some(b) = self.text.get(self.pos) {
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.') {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                Ok(())
            }
            _ => Err(MediaConnError::BadJson("expected a value")),
        }
    }
}
