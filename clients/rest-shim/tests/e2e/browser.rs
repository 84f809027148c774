//! A headless Chromium driven over the Chrome DevTools protocol: the few
//! commands the console test needs (open a page, run a script, type,
//! capture a screenshot), over the browser's websocket.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one browser command may take.
const COMMAND_WAIT: Duration = Duration::from_secs(30);

/// Where Debian's `chromium` is, if installed.
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .flat_map(|name| {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(move |dir| dir.join(name))
        })
        .find(|p| p.is_file())
}

/// Whether this process runs as root (setup.sh can install chromium then).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A headless browser with one page attached.
pub struct Browser {
    child: Child,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    page: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts the browser (its profile in a temp dir) and opens `url`.
    pub async fn open(binary: &Path, url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(binary)
            .args([
                "--headless=new",
                // Root in CI: Chromium's sandbox cannot run as root.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1400,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        // The browser prints its DevTools websocket address once it listens.
        let stderr = child.stderr.take().expect("stderr piped");
        let mut lines = BufReader::new(stderr).lines();
        let ws_url = tokio::time::timeout(COMMAND_WAIT, async {
            while let Some(line) = lines.next_line().await.expect("chromium stderr") {
                if let Some(at) = line.find("ws://") {
                    return line[at..].trim().to_owned();
                }
            }
            panic!("chromium exited without a DevTools address");
        })
        .await
        .expect("chromium announces its DevTools address in time");
        // Keep draining its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("DevTools websocket");
        let mut browser = Browser {
            child,
            ws,
            page: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser
            .command(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["targetId"].as_str().expect("target id").to_owned();
        let attached = browser
            .command(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        browser.page = attached["sessionId"]
            .as_str()
            .expect("page session")
            .to_owned();
        browser.page_command("Page.enable", json!({})).await;
        browser.page_command("Runtime.enable", json!({})).await;
        browser
            .page_command(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
            )
            .await;
        browser.navigate(url).await;
        browser
    }

    /// Sends a command and reads until its answer (events in between are
    /// not needed: the test waits on page conditions instead).
    async fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("DevTools send");
        let answer = tokio::time::timeout(COMMAND_WAIT, async {
            while let Some(frame) = self.ws.next().await {
                let Message::Text(text) = frame.expect("DevTools frame") else {
                    continue;
                };
                let value: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
                if value["id"] == json!(id) {
                    return value;
                }
            }
            panic!("DevTools connection closed during {method}");
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method}"));
        if let Some(err) = answer.get("error") {
            panic!("{method} failed: {err}");
        }
        answer["result"].clone()
    }

    async fn page_command(&mut self, method: &str, params: Value) -> Value {
        let page = self.page.clone();
        self.command(Some(&page), method, params).await
    }

    /// Loads `url` and waits until its document and scripts are loaded.
    pub async fn navigate(&mut self, url: &str) {
        self.page_command("Page.navigate", json!({ "url": url }))
            .await;
        self.wait_for(
            "the page to load",
            "document.readyState === 'complete' && !!document.getElementById('sessions')",
        )
        .await;
    }

    /// Runs `expression` in the page (promises awaited) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .page_command(
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        if let Some(ex) = result.get("exceptionDetails") {
            panic!("script failed: {expression}\n{ex}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `condition` (a JS expression) is truthy in the page,
    /// checking it in the page itself as the DOM changes; its value.
    pub async fn wait_for(&mut self, what: &str, condition: &str) -> Value {
        let script = format!(
            "new Promise((resolve) => {{
                const limit = Date.now() + {ms};
                const check = () => {{
                    let v = null;
                    try {{ v = ({condition}); }} catch (_) {{}}
                    if (v) return resolve(v);
                    if (Date.now() > limit) return resolve(null);
                    setTimeout(check, 25);
                }};
                check();
            }})",
            ms = 20_000,
        );
        let value = self.eval(&script).await;
        if value.is_null() {
            let body = self.eval("document.body.innerText").await;
            panic!("the page never showed {what}; it shows:\n{body}");
        }
        value
    }

    /// Focuses the element with `id` and types `text` into it as keyboard
    /// input.
    pub async fn type_into(&mut self, id: &str, text: &str) {
        self.eval(&format!(
            "(() => {{ const el = document.getElementById({id:?}); el.value = ''; el.focus(); return true; }})()"
        ))
        .await;
        self.page_command("Input.insertText", json!({ "text": text }))
            .await;
    }

    /// Clicks the element with `id` with the mouse, at its centre.
    pub async fn click(&mut self, id: &str) {
        let at = self
            .eval(&format!(
                "(() => {{ const el = document.getElementById({id:?}); el.scrollIntoView({{block: 'center'}});
                   const r = el.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        let (x, y) = (at[0].as_f64().expect("x"), at[1].as_f64().expect("y"));
        for kind in ["mousePressed", "mouseReleased"] {
            self.page_command(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// A PNG screenshot of the viewport, written to `path`; its bytes.
    pub async fn screenshot(&mut self, path: &Path) -> Vec<u8> {
        let shot = self
            .page_command("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        std::fs::write(path, &png).expect("screenshot written");
        println!("screenshot: {}", path.display());
        png
    }

    pub async fn close(mut self) {
        let _ = self.command(None, "Browser.close", json!({})).await;
        let _ = tokio::time::timeout(COMMAND_WAIT, self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// A PNG (RGB or RGBA, 8 bits) as grey levels: `(width, height, pixels)`.
pub fn grey(png_bytes: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let pixels = buf[..w * h * channels]
        .chunks(channels)
        .map(|p| match p {
            [r, g, b, ..] => ((*r as u32 * 299 + *g as u32 * 587 + *b as u32 * 114) / 1000) as u8,
            [l, ..] => *l,
            [] => 0,
        })
        .collect();
    (w, h, pixels)
}

/// The texts of the QR codes visible in a screenshot.
pub fn qr_codes_in(png_bytes: &[u8]) -> Vec<String> {
    let (w, h, pixels) = grey(png_bytes);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| pixels[y * w + x]);
    img.detect_grids()
        .iter()
        .filter_map(|g| g.decode().ok().map(|(_, text)| text))
        .collect()
}
