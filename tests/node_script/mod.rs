//! Starting a node script from tests/interop that speaks a line protocol on
//! stdin/stdout, after installing the npm packages it needs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};

pub(crate) fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Installs tests/interop's packages if missing, starts `node <script>`, and
/// returns the child, its stdin, and its stdout as a channel of lines (read
/// on a thread so callers can wait with a timeout). Fails, never skips,
/// without node.
pub(crate) fn spawn(script: &str) -> (Child, ChildStdin, Receiver<String>) {
    let ensure = Command::new("sh")
        .arg(interop_dir().join("ensure.sh"))
        .status()
        .expect("sh runs tests/interop/ensure.sh");
    assert!(
        ensure.success(),
        "installing tests/interop/node_modules failed"
    );
    let mut child = Command::new("node")
        .arg(interop_dir().join(script))
        .current_dir(interop_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node must be installed to run the interop tests");
    let stdin = child.stdin.take().expect("stdin was piped");
    let stdout = child.stdout.take().expect("stdout was piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, stdin, lines)
}
