//! The web console in a real browser (headless Chromium): create a session,
//! see its QR, the simulated phone scans the QR read off the screenshot, the
//! page shows CONNECTED, a message typed in the page reaches a virtual
//! phone and the phone's reply appears in the page. Screenshots are kept
//! under the target dir and checked.

use std::path::PathBuf;

use crate::browser::{self, Browser};
use crate::common::*;
use wagate_rest::Dialect;

const OWNER: &str = "5215550101010";
const PEER: &str = "5215550202020";

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_pairs_a_session_and_chats_in_a_headless_browser() {
    let Some(chromium) = browser::chromium() else {
        assert!(
            !browser::is_root(),
            "chromium is not installed: run scripts/setup.sh (apt-get install -y chromium)"
        );
        eprintln!("SKIPPED: chromium is not installed and cannot be as non-root; run scripts/setup.sh as root");
        return;
    };
    let gw = Gateway::start().await;
    gw.create_account(PEER, "Peer Phone").await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::Wwebjs;
    cfg.api_key = Some(KEY.into());
    let shim = start_shim(cfg).await;
    let shots = screenshot_dir();

    let mut page = Browser::open(&chromium, &format!("{}/", shim.base)).await;
    // Without the key the page asks for it; with it, the live feed opens.
    page.wait_for(
        "the request for a key",
        "document.getElementById('notice').textContent.includes('API key')",
    )
    .await;
    page.type_into("api-key", KEY).await;
    page.click("save-key").await;
    // The list of sessions loads once the feed is open and then hides the
    // notice, which moves the form up: only then is the page still enough
    // to click where its button is.
    page.wait_for(
        "the live feed and the list of sessions",
        "document.getElementById('live').textContent === 'live' \
           && document.getElementById('notice').hidden",
    )
    .await;

    page.type_into("new-session", "console1").await;
    page.click("create").await;
    page.wait_for(
        "the QR",
        "(() => { const q = document.getElementById('qr'); \
           return !document.getElementById('qr-box').hidden && q.complete && q.naturalWidth > 100 \
             && document.getElementById('state').textContent === 'QR_READY'; })()",
    )
    .await;
    let qr_shot = page.screenshot(&shots.join("1-qr.png")).await;
    let codes = browser::qr_codes_in(&qr_shot);
    assert_eq!(codes.len(), 1, "one QR code on the screen: {codes:?}");
    let current = gw
        .grpc
        .clone()
        .qr_code(wagate_rest::proto::gateway::QrCodeRequest {
            session_id: "console1".into(),
        })
        .await
        .expect("the gateway shows a QR")
        .into_inner()
        .qr;
    assert_eq!(codes[0], current, "the page shows the session's QR");
    // The phone scans what is on the screen.
    gw.scan(OWNER, &codes[0]).await;
    page.wait_for(
        "CONNECTED",
        "document.getElementById('state').textContent === 'CONNECTED' \
         && document.getElementById('qr-box').hidden \
         && document.getElementById('account').textContent.includes('5215550101010')",
    )
    .await;
    let row_state = page
        .eval(
            "document.querySelector('#sessions tr[data-session=\"console1\"] .state').textContent",
        )
        .await;
    assert_eq!(row_state, "CONNECTED");
    let connected_shot = page.screenshot(&shots.join("2-connected.png")).await;
    assert!(
        browser::qr_codes_in(&connected_shot).is_empty(),
        "no QR once connected"
    );

    page.type_into("to", PEER).await;
    page.type_into("text", "Hola desde la consola").await;
    page.click("send").await;
    page.wait_for(
        "the sent message",
        "[...document.querySelectorAll('#messages li.out')].some(li => li.textContent.includes('Hola desde la consola'))",
    )
    .await;
    let inbox = tokio::time::timeout(WAIT, async {
        loop {
            let inbox = gw.inbox(PEER).await;
            if let Some(m) = inbox.iter().find(|m| m.text == "Hola desde la consola") {
                return m.clone();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the typed message reaches the phone");
    assert!(
        inbox.from.contains(OWNER),
        "from the linked account: {inbox:?}"
    );

    gw.send_from_phone(PEER, OWNER, "Respuesta del teléfono")
        .await;
    page.wait_for(
        "the phone's reply",
        "[...document.querySelectorAll('#messages li.in')].some(li => li.textContent.includes('Respuesta del teléfono') \
           && li.textContent.includes('5215550202020@c.us'))",
    )
    .await;
    page.wait_for(
        "the reply in the event feed",
        "document.getElementById('feed').textContent.includes('Respuesta del teléfono')",
    )
    .await;
    // The account's name (from its app-state) is in its row by now.
    page.wait_for(
        "the account's push name",
        "document.querySelector('#sessions tr[data-session=\"console1\"]').textContent.includes('Owner')",
    )
    .await;
    let chat_shot = page.screenshot(&shots.join("3-chat.png")).await;
    let (w, h, pixels) = browser::grey(&chat_shot);
    assert_eq!((w, h), (1400, 900), "the viewport's size");
    let (lo, hi) = pixels
        .iter()
        .fold((u8::MAX, 0), |(lo, hi), p| (lo.min(*p), hi.max(*p)));
    assert!(hi - lo > 100, "the screenshot shows something ({lo}..{hi})");

    eprintln!(
        "console screenshots: {}, {}, {}",
        shots.join("1-qr.png").display(),
        shots.join("2-connected.png").display(),
        shots.join("3-chat.png").display()
    );
    page.close().await;
    shim.stop().await;
    gw.stop().await;
}
