//! A minimal Redis client: RESP2 over TCP, enough for the shared rate
//! limit (`AUTH`, `SELECT`, `PING`, `EVAL`). A handful of commands do not
//! justify a client crate and its connection manager; idle connections are
//! kept in a small pool and a connection that failed is dropped.
//!
//! Replies are read with bounded sizes and nesting, and a malformed reply
//! is an error, never a panic.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// Longest bulk string accepted in a reply (ours are a few bytes).
const MAX_BULK: usize = 1 << 20;
/// Most elements in one reply array.
const MAX_ARRAY: usize = 1024;
/// Deepest nesting of reply arrays.
const MAX_DEPTH: usize = 4;
/// Longest status or error line.
const MAX_LINE: usize = 4096;
/// Idle connections kept for later commands.
const POOL: usize = 16;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisError {
    #[error("invalid Redis URL: {0}")]
    Url(&'static str),
    #[error("cannot reach Redis: {0}")]
    Io(#[from] std::io::Error),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis refused the command: {0}")]
    Server(String),
    #[error("malformed Redis reply: {0}")]
    Protocol(&'static str),
}

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Where Redis is: `redis://[[user]:password@]host[:port][/db]`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Target {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
    db: u32,
}

impl fmt::Debug for Target {
    // The password never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis://{}:{}/{}", self.host, self.port, self.db)?;
        if self.password.is_some() {
            write!(f, " (with password)")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Target {
    type Err = RedisError;

    fn from_str(url: &str) -> Result<Self, RedisError> {
        if url.starts_with("rediss://") {
            return Err(RedisError::Url(
                "rediss:// (TLS) is not supported; reach Redis over a private network or a local TLS proxy",
            ));
        }
        let rest = url
            .strip_prefix("redis://")
            .ok_or(RedisError::Url("it must start with redis://"))?;
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (
                    Some(percent_decode(u)?).filter(|u| !u.is_empty()),
                    Some(percent_decode(p)?),
                ),
                None => (Some(percent_decode(info)?).filter(|u| !u.is_empty()), None),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or(RedisError::Url("unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(RedisError::Url("no host"));
        }
        let port = match port {
            None | Some("") => 6379,
            Some(p) => p.parse().map_err(|_| RedisError::Url("bad port"))?,
        };
        let db = match path.split('?').next().unwrap_or_default() {
            "" => 0,
            d => d
                .parse()
                .map_err(|_| RedisError::Url("the path must be a database number"))?,
        };
        Ok(Target {
            host: host.to_owned(),
            port,
            user,
            password,
            db,
        })
    }
}

fn percent_decode(s: &str) -> Result<String, RedisError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(RedisError::Url("bad %-escape in the user or password"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| RedisError::Url("user or password is not UTF-8"))
}

/// Connections to one Redis, opened on demand and reused.
pub(crate) struct Client {
    target: Target,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl Client {
    pub(crate) fn new(target: Target, timeout: Duration) -> Self {
        Client {
            target,
            timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Runs one command (each argument one bulk string), within the
    /// timeout, on an idle connection or a new one.
    pub(crate) async fn command(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let run = async {
            // An idle connection may have been closed by Redis (a restart,
            // its idle timeout): then once more on a new one.
            if let Some(mut conn) = pooled {
                if let Ok(reply) = conn.command(args).await {
                    return Ok::<_, RedisError>((conn, reply));
                }
            }
            let mut conn = Connection::open(&self.target).await?;
            let reply = conn.command(args).await?;
            Ok((conn, reply))
        };
        let (conn, reply) = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| RedisError::Timeout(self.timeout))??;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL {
            idle.push(conn);
        }
        drop(idle);
        match reply {
            Err(message) => Err(RedisError::Server(message)),
            Ok(reply) => Ok(reply),
        }
    }
}

struct Connection {
    stream: BufStream<TcpStream>,
}

impl Connection {
    async fn open(target: &Target) -> Result<Connection, RedisError> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        tcp.set_nodelay(true)?;
        let mut conn = Connection {
            stream: BufStream::new(tcp),
        };
        if let Some(password) = &target.password {
            let reply = match &target.user {
                Some(user) => {
                    conn.command(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                        .await?
                }
                None => conn.command(&[b"AUTH", password.as_bytes()]).await?,
            };
            reply.map_err(RedisError::Server)?;
        }
        if target.db != 0 {
            let db = target.db.to_string();
            conn.command(&[b"SELECT", db.as_bytes()])
                .await?
                .map_err(RedisError::Server)?;
        }
        Ok(conn)
    }

    /// Sends a command; the outer error is the connection's (it is then
    /// unusable), the inner one an error reply (it stays usable).
    async fn command(&mut self, args: &[&[u8]]) -> Result<Answer, RedisError> {
        let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        read_reply(&mut self.stream, 0).await
    }
}

/// A reply, or the error reply Redis sent (the connection stays usable).
type Answer = Result<Reply, String>;
type AnswerFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Answer, RedisError>> + Send + 'a>>;

/// Reads one reply. Boxed for the recursion into arrays.
fn read_reply<R: AsyncBufReadExt + Unpin + Send>(r: &mut R, depth: usize) -> AnswerFuture<'_> {
    Box::pin(async move {
        let line = read_line(r).await?;
        let (kind, rest) = line
            .split_first()
            .ok_or(RedisError::Protocol("empty line"))?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        let number = || -> Result<i64, RedisError> {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(RedisError::Protocol("bad number"))
        };
        match kind {
            b'+' => Ok(Ok(Reply::Status(text()))),
            b'-' => Ok(Err(text())),
            b':' => Ok(Ok(Reply::Int(number()?))),
            b'$' => {
                let len = number()?;
                if len < 0 {
                    return Ok(Ok(Reply::Bulk(None)));
                }
                let len = usize::try_from(len).map_err(|_| RedisError::Protocol("bad length"))?;
                if len > MAX_BULK {
                    return Err(RedisError::Protocol("bulk string too long"));
                }
                let mut buf = vec![0; len + 2];
                r.read_exact(&mut buf).await?;
                if buf.get(len..) != Some(b"\r\n".as_slice()) {
                    return Err(RedisError::Protocol("bulk string not ended by CRLF"));
                }
                buf.truncate(len);
                Ok(Ok(Reply::Bulk(Some(buf))))
            }
            b'*' => {
                let len = number()?;
                if len < 0 {
                    return Ok(Ok(Reply::Array(None)));
                }
                let len = usize::try_from(len).map_err(|_| RedisError::Protocol("bad length"))?;
                if len > MAX_ARRAY {
                    return Err(RedisError::Protocol("array too long"));
                }
                if depth >= MAX_DEPTH {
                    return Err(RedisError::Protocol("arrays nested too deep"));
                }
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    match read_reply(r, depth + 1).await? {
                        Ok(item) => items.push(item),
                        // An error inside an array (a script's error
                        // table) fails the whole reply.
                        Err(e) => return Ok(Err(e)),
                    }
                }
                Ok(Ok(Reply::Array(Some(items))))
            }
            _ => Err(RedisError::Protocol("unknown reply type")),
        }
    })
}

/// One CRLF-terminated line, without the CRLF, at most `MAX_LINE` bytes.
async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<Vec<u8>, RedisError> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(RedisError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let (taken, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(buf.get(..taken).unwrap_or_default());
        r.consume(taken);
        if line.len() > MAX_LINE + 2 {
            return Err(RedisError::Protocol("line too long"));
        }
        if done {
            break;
        }
    }
    if !line.ends_with(b"\r\n") {
        return Err(RedisError::Protocol("line not ended by CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Answer, RedisError> {
        let mut r = tokio::io::BufReader::new(bytes);
        read_reply(&mut r, 0).await
    }

    #[tokio::test]
    async fn replies_are_read_and_bad_ones_refused() {
        assert_eq!(
            parse(b"+OK\r\n").await.expect("ok"),
            Ok(Reply::Status("OK".into()))
        );
        assert_eq!(parse(b":-42\r\n").await.expect("ok"), Ok(Reply::Int(-42)));
        assert_eq!(
            parse(b"$3\r\nabc\r\n").await.expect("ok"),
            Ok(Reply::Bulk(Some(b"abc".to_vec())))
        );
        assert_eq!(parse(b"$-1\r\n").await.expect("ok"), Ok(Reply::Bulk(None)));
        assert_eq!(
            parse(b"*2\r\n:1\r\n$-1\r\n").await.expect("ok"),
            Ok(Reply::Array(Some(vec![Reply::Int(1), Reply::Bulk(None)])))
        );
        assert_eq!(
            parse(b"-ERR wrong\r\n").await.expect("ok"),
            Err("ERR wrong".into())
        );
        for bad in [
            &b"$5\r\nabc\r\n"[..],
            b"$3\r\nabcd\r\n",
            b"?\r\n",
            b":x\r\n",
            b"+OK\n",
            b"$99999999999\r\n",
            b"*99999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b"",
            b"\r\n",
        ] {
            assert!(
                parse(bad).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn urls_name_host_port_credentials_and_database() {
        let t: Target = "redis://127.0.0.1:6380/2".parse().expect("url");
        assert_eq!(
            (t.host.as_str(), t.port, t.db, &t.password),
            ("127.0.0.1", 6380, 2, &None)
        );
        let t: Target = "redis://:p%40ss@redis".parse().expect("url");
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.user.as_deref(),
                t.password.as_deref()
            ),
            ("redis", 6379, None, Some("p@ss"))
        );
        let t: Target = "redis://app:secret@[::1]:7000".parse().expect("url");
        assert_eq!(
            (t.host.as_str(), t.port, t.user.as_deref()),
            ("::1", 7000, Some("app"))
        );
        assert!(!format!("{t:?}").contains("secret"), "no password in Debug");
        for bad in [
            "http://x",
            "rediss://x",
            "redis://",
            "redis://h:port",
            "redis://h/db",
            "redis://:%zz@h",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }
}
