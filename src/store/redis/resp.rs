//! The little of Redis' wire protocol (RESP2) the store needs: commands as arrays of bulk
//! strings, replies parsed with bounded allocation and nesting, pipelines, and a pool of blocking
//! connections. Must not import `runtime`, `api` or `sim`.
//!
//! The reply parser never trusts a length: bulk bodies are read in chunks as they arrive, arrays
//! reserve at most a few entries ahead, and nesting is capped, so a broken or hostile peer yields
//! an error, never a panic or an allocation it chose.

use std::fmt;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::super::StoreError;

/// Longest status or error line accepted.
const MAX_LINE: usize = 0x1_0000;
/// Largest bulk string accepted (Redis' own limit).
const MAX_BULK: usize = 512 << 20;
/// Deepest reply nesting accepted (the store's scripts return two levels).
const MAX_DEPTH: usize = 8;
/// Entries reserved ahead when an array announces its length.
const RESERVE_AHEAD: usize = 64;
/// Idle connections kept for reuse.
const POOL_SIZE: usize = 16;

/// One reply.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Status(String),
    Array(Vec<Value>),
    /// An error reply: the command failed, the connection is fine.
    Error(String),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Int(i) => write!(f, "{i}"),
            // Values may be sealed secrets or ids: only their size is shown.
            Value::Bulk(b) => write!(f, "<{} bytes>", b.len()),
            Value::Status(s) => write!(f, "+{s}"),
            Value::Array(items) => f.debug_list().entries(items).finish(),
            Value::Error(e) => write!(f, "-{e}"),
        }
    }
}

impl Value {
    /// The reply as a store result: an error reply becomes a [`StoreError`].
    pub(crate) fn ok(self) -> Result<Value, StoreError> {
        match self {
            Value::Error(e) => Err(server_error(&e)),
            v => Ok(v),
        }
    }

    pub(crate) fn into_bytes(self) -> Result<Option<Vec<u8>>, StoreError> {
        match self.ok()? {
            Value::Nil => Ok(None),
            Value::Bulk(b) => Ok(Some(b)),
            Value::Status(s) => Ok(Some(s.into_bytes())),
            other => Err(unexpected("a string", &other)),
        }
    }

    pub(crate) fn into_int(self) -> Result<i64, StoreError> {
        match self.ok()? {
            Value::Int(i) => Ok(i),
            Value::Nil => Ok(0),
            Value::Bulk(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::Corrupt("redis: a number was expected".into())),
            other => Err(unexpected("an integer", &other)),
        }
    }

    pub(crate) fn into_array(self) -> Result<Vec<Value>, StoreError> {
        match self.ok()? {
            Value::Array(items) => Ok(items),
            Value::Nil => Ok(Vec::new()),
            other => Err(unexpected("an array", &other)),
        }
    }
}

fn unexpected(wanted: &str, got: &Value) -> StoreError {
    StoreError::Corrupt(format!("redis replied {got:?} where {wanted} was expected"))
}

/// An error reply as a store error: the ones that clear by themselves (a replica being
/// promoted, a dataset loading, a busy script) are retryable.
pub(crate) fn server_error(message: &str) -> StoreError {
    let code = message.split_whitespace().next().unwrap_or("");
    match code {
        "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN" => {
            StoreError::Unavailable(format!("redis: {message}"))
        }
        _ => StoreError::Redis(message.to_owned()),
    }
}

fn io_error(e: &io::Error) -> StoreError {
    StoreError::Unavailable(format!("redis connection: {e}"))
}

/// A command under construction: its name and arguments, all sent as bulk strings.
#[derive(Default)]
pub(crate) struct Cmd {
    args: Vec<Vec<u8>>,
}

impl Cmd {
    pub(crate) fn new(name: &str) -> Self {
        Cmd {
            args: vec![name.as_bytes().to_vec()],
        }
    }

    #[must_use]
    pub(crate) fn arg(mut self, arg: impl Arg) -> Self {
        self.args.push(arg.bytes());
        self
    }

    pub(crate) fn push(&mut self, arg: impl Arg) {
        self.args.push(arg.bytes());
    }

    fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        write!(out, "*{}\r\n", self.args.len())?;
        for arg in &self.args {
            write!(out, "${}\r\n", arg.len())?;
            out.write_all(arg)?;
            out.write_all(b"\r\n")?;
        }
        Ok(())
    }
}

/// What a command argument can be made of.
pub(crate) trait Arg {
    fn bytes(self) -> Vec<u8>;
}

impl Arg for &str {
    fn bytes(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}
impl Arg for &String {
    fn bytes(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}
impl Arg for String {
    fn bytes(self) -> Vec<u8> {
        self.into_bytes()
    }
}
impl Arg for &[u8] {
    fn bytes(self) -> Vec<u8> {
        self.to_vec()
    }
}
impl Arg for Vec<u8> {
    fn bytes(self) -> Vec<u8> {
        self
    }
}
impl Arg for &Vec<u8> {
    fn bytes(self) -> Vec<u8> {
        self.clone()
    }
}
impl Arg for u64 {
    fn bytes(self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}
impl Arg for i64 {
    fn bytes(self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}
impl Arg for usize {
    fn bytes(self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

/// Parses one reply from `input`.
pub(crate) fn read_value(input: &mut impl BufRead) -> io::Result<Value> {
    read_nested(input, 0)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("redis protocol: {what}"),
    )
}

fn read_nested(input: &mut impl BufRead, depth: usize) -> io::Result<Value> {
    if depth > MAX_DEPTH {
        return Err(bad("reply nested too deeply"));
    }
    let line = read_line(input)?;
    let (&kind, rest) = line.split_first().ok_or_else(|| bad("empty line"))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    match kind {
        b'+' => Ok(Value::Status(text())),
        b'-' => Ok(Value::Error(text())),
        b':' => Ok(Value::Int(parse_int(rest)?)),
        b'$' => {
            let len = parse_int(rest)?;
            if len < 0 {
                return Ok(Value::Nil);
            }
            let len = usize::try_from(len).map_err(|_| bad("bulk length"))?;
            if len > MAX_BULK {
                return Err(bad("bulk string too large"));
            }
            let mut body = Vec::with_capacity(len.min(0x1_0000));
            let read = input.by_ref().take(len as u64).read_to_end(&mut body)?;
            if read != len {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            let mut crlf = [0u8; 2];
            input.read_exact(&mut crlf)?;
            if crlf != *b"\r\n" {
                return Err(bad("bulk string not followed by CRLF"));
            }
            Ok(Value::Bulk(body))
        }
        b'*' => {
            let len = parse_int(rest)?;
            if len < 0 {
                return Ok(Value::Nil);
            }
            let len = usize::try_from(len).map_err(|_| bad("array length"))?;
            let mut items = Vec::with_capacity(len.min(RESERVE_AHEAD));
            for _ in 0..len {
                items.push(read_nested(input, depth + 1)?);
            }
            Ok(Value::Array(items))
        }
        _ => Err(bad("unknown reply type")),
    }
}

/// One CRLF-terminated line, without the CRLF.
fn read_line(input: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let read = input
        .by_ref()
        .take(MAX_LINE as u64 + 2)
        .read_until(b'\n', &mut line)?;
    if read == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    if !line.ends_with(b"\r\n") {
        return Err(if line.len() > MAX_LINE {
            bad("line too long")
        } else {
            io::Error::from(io::ErrorKind::UnexpectedEof)
        });
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_int(digits: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("malformed integer"))
}

/// Where and how to reach Redis, from a `redis://[[user]:password@]host[:port][/db]` URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) db: u32,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        write!(f, "redis://{}:{}/{}", self.host, self.port, self.db)
    }
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or("a redis URL starts with redis:// (TLS, rediss://, is not supported)")?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, hostport) = match authority.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, authority),
        };
        let (user, password) = match credentials {
            None => (None, None),
            Some(c) => match c.split_once(':') {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| percent_decode(u)).transpose()?,
                    Some(percent_decode(p)?),
                ),
                None => (Some(percent_decode(c)?), None),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
            let port = after.strip_prefix(':');
            (host.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err("the redis URL has no host".into());
        }
        let port = match port {
            None | Some("") => 6379,
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
        };
        let db = match path.split('?').next().unwrap_or("") {
            "" => 0,
            d => d
                .parse()
                .map_err(|_| format!("bad database number {d:?}"))?,
        };
        Ok(Target {
            host,
            port,
            user,
            password,
            db,
        })
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: Vec<u8> = bytes.by_ref().take(2).collect();
            let decoded = std::str::from_utf8(&hex)
                .ok()
                .filter(|h| h.len() == 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad %-escape in the redis URL")?;
            out.push(decoded);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| "the redis URL's credentials are not UTF-8".into())
}

/// One blocking connection.
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Conn {
    fn open(target: &Target, timeout: Duration) -> Result<Self, StoreError> {
        let addrs = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| io_error(&e))?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => return Self::start(stream, target, timeout),
                Err(e) => last = e,
            }
        }
        Err(io_error(&last))
    }

    fn start(stream: TcpStream, target: &Target, timeout: Duration) -> Result<Self, StoreError> {
        stream.set_nodelay(true).map_err(|e| io_error(&e))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| io_error(&e))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| io_error(&e))?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| io_error(&e))?);
        let mut conn = Conn {
            reader,
            writer: BufWriter::new(stream),
        };
        if let Some(password) = &target.password {
            let mut auth = Cmd::new("AUTH");
            if let Some(user) = &target.user {
                auth.push(user);
            }
            auth.push(password);
            conn.run(&auth)?.ok()?;
        }
        if target.db != 0 {
            conn.run(&Cmd::new("SELECT").arg(u64::from(target.db)))?
                .ok()?;
        }
        Ok(conn)
    }

    /// Sends one command and reads its reply (which may be an error reply).
    pub(crate) fn run(&mut self, cmd: &Cmd) -> Result<Value, StoreError> {
        let mut replies = self.pipeline(std::slice::from_ref(cmd))?;
        replies
            .pop()
            .ok_or_else(|| StoreError::Corrupt("redis: no reply".into()))
    }

    /// Sends every command, then reads one reply per command: one round trip.
    pub(crate) fn pipeline(&mut self, cmds: &[Cmd]) -> Result<Vec<Value>, StoreError> {
        for cmd in cmds {
            cmd.write_to(&mut self.writer).map_err(|e| io_error(&e))?;
        }
        self.writer.flush().map_err(|e| io_error(&e))?;
        cmds.iter()
            .map(|_| read_value(&mut self.reader).map_err(|e| io_error(&e)))
            .collect()
    }
}

/// Connections to one Redis, opened on demand and kept for reuse. A connection that failed is
/// dropped rather than returned (its stream may be mid-reply).
pub(crate) struct Pool {
    target: Target,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    pub(crate) fn new(target: Target, timeout: Duration) -> Self {
        Pool {
            target,
            timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Runs `work` on a pooled connection.
    pub(crate) fn with<T>(
        &self,
        work: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => Conn::open(&self.target, self.timeout)?,
        };
        let result = work(&mut conn);
        // Transport failures are `Unavailable`; any other outcome leaves the stream at a reply
        // boundary, so the connection can serve again.
        if !matches!(result, Err(StoreError::Unavailable(_))) {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < POOL_SIZE {
                idle.push(conn);
            }
        }
        result
    }

    pub(crate) fn run(&self, cmd: Cmd) -> Result<Value, StoreError> {
        self.with(|conn| conn.run(&cmd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<Value> {
        read_value(&mut &bytes[..])
    }

    #[test]
    fn replies_parse() {
        assert_eq!(
            parse(b"+OK\r\n").expect("status"),
            Value::Status("OK".into())
        );
        assert_eq!(parse(b":-42\r\n").expect("int"), Value::Int(-42));
        assert_eq!(parse(b"$-1\r\n").expect("nil"), Value::Nil);
        assert_eq!(
            parse(b"$5\r\na\r\nbc\r\n").expect("bulk"),
            Value::Bulk(b"a\r\nbc".to_vec())
        );
        assert_eq!(
            parse(b"*2\r\n$1\r\nx\r\n*1\r\n:1\r\n").expect("array"),
            Value::Array(vec![
                Value::Bulk(b"x".to_vec()),
                Value::Array(vec![Value::Int(1)])
            ])
        );
        assert_eq!(
            parse(b"-ERR no\r\n").expect("error"),
            Value::Error("ERR no".into())
        );
    }

    #[test]
    fn hostile_replies_are_errors() {
        for bytes in [
            &b""[..],
            b"+OK",
            b"?x\r\n",
            b":12a\r\n",
            b"$5\r\nab\r\n",
            b"$2\r\nabXY",
            b"$999999999999\r\n",
            b"*3\r\n:1\r\n",
            b"*99999999999\r\n",
            b"\r\n",
        ] {
            assert!(
                parse(bytes).is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
        let long = format!("+{}\r\n", "x".repeat(MAX_LINE + 10));
        assert!(parse(long.as_bytes()).is_err());
    }

    #[test]
    fn commands_encode_as_bulk_arrays() {
        let mut out = Vec::new();
        Cmd::new("SET")
            .arg("k")
            .arg(&b"v\r\n"[..])
            .arg(7u64)
            .write_to(&mut out)
            .expect("write");
        assert_eq!(
            out,
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$1\r\n7\r\n"
        );
    }

    #[test]
    fn urls_parse() {
        let t = Target::parse("redis://127.0.0.1:6380/2").expect("url");
        assert_eq!(
            (t.host.as_str(), t.port, t.db, t.user, t.password),
            ("127.0.0.1", 6380, 2, None, None)
        );
        let t = Target::parse("redis://app:p%40ss@redis.ns.svc").expect("url");
        assert_eq!((t.host.as_str(), t.port, t.db), ("redis.ns.svc", 6379, 0));
        assert_eq!(t.user.as_deref(), Some("app"));
        assert_eq!(t.password.as_deref(), Some("p@ss"));
        assert!(!format!("{t:?}").contains("p@ss"));
        let t = Target::parse("redis://:secret@[::1]:7000").expect("url");
        assert_eq!((t.host.as_str(), t.port), ("::1", 7000));
        assert_eq!((t.user, t.password.as_deref()), (None, Some("secret")));
        for bad in [
            "http://x",
            "rediss://x",
            "redis://",
            "redis://h:port",
            "redis://h/x",
            "redis://u:%zz@h",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_that_clear_are_retryable() {
        assert!(server_error("LOADING Redis is loading").is_retryable());
        assert!(
            server_error("READONLY You can't write against a read only replica.").is_retryable()
        );
        assert!(!server_error("WRONGTYPE Operation against a key").is_retryable());
    }
}
