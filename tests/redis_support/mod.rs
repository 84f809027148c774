//! A real `redis-server` for end-to-end tests: loopback, an ephemeral port, a temp dir, AOF with
//! fsync on every write (as production must run it), killed when dropped. `None` when
//! `redis-server` is not installed (`scripts/setup.sh` installs it where it can).

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

pub struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let spawned = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--dir".as_ref(), dir.path().as_os_str()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--logfile", ""])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("redis-server is not installed: skipping (scripts/setup.sh installs it)");
                return None;
            }
            Err(e) => panic!("starting redis-server: {e}"),
        };
        // Ready once its log says so.
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to accept connections") => break,
                Some(Ok(_)) => {}
                _ => {
                    let _ = child.kill();
                    panic!("redis-server exited before it was ready");
                }
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Some(Redis {
            child,
            port,
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
