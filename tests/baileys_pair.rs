//! An unmodified Baileys client (from npm) pairs with the simulator: it shows
//! a QR code, a virtual phone scans it through the gRPC control API, Baileys
//! restarts on the server's 515 and logs in until the connection opens.

mod sim_support;

use sim_support::{path, Event, Harness, NodeScript};
use tonic::Code;
use wagate::proto::sim::ScanQrRequest;
use wagate::wa::qr::QrData;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_pairs_through_qr_scan_and_logs_in() {
    let mut harness = Harness::start().await;
    let auth = tempfile::tempdir().expect("temp dir");

    let (device_jid, closes) = harness.pair("+1 555 010 2030", "Alice", auth.path()).await;

    assert_eq!(device_jid, "15550102030:1@s.whatsapp.net");
    assert_eq!(
        closes,
        vec![Some(515)],
        "exactly one restart, after pairing"
    );
    let creds = std::fs::read_to_string(auth.path().join("creds.json")).expect("creds saved");
    assert!(
        creds.contains(&device_jid),
        "creds name the device: {creds}"
    );

    let accounts = harness.accounts().await;
    assert_eq!(accounts.len(), 1);
    let account = &accounts[0];
    assert_eq!(account.phone, "+15550102030");
    assert_eq!(account.jid, "15550102030@s.whatsapp.net");
    assert_eq!(account.push_name, "Alice");
    let jids: Vec<&str> = account.devices.iter().map(|d| d.jid.as_str()).collect();
    assert_eq!(
        jids,
        vec!["15550102030@s.whatsapp.net", device_jid.as_str()]
    );
    let device = &account.devices[1];
    assert_eq!(device.platform, "CHROME (Ubuntu)");
    // Baileys found no prekeys on the server at login and uploaded its 30.
    assert_eq!(device.prekeys, 30);

    harness.stop().await;
}

/// Scans a QR code variant and returns the gRPC error it gets.
async fn scan_error(harness: &mut Harness, qr: &QrData) -> (Code, String) {
    let status = harness
        .control
        .scan_qr(ScanQrRequest {
            phone: "+15550102031".into(),
            qr: qr.to_legacy(),
            push_name: "Mallory".into(),
        })
        .await
        .expect_err("the scan is refused");
    (status.code(), status.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_of_altered_qr_codes_are_refused() {
    let mut harness = Harness::start().await;
    let auth = tempfile::tempdir().expect("temp dir");
    let mut baileys = NodeScript::spawn(
        "baileys-pair.js",
        &[&harness.sim.ws_url(), path(auth.path())],
    );
    let Event::Qr(text) = baileys.next_event().await else {
        panic!("Baileys shows a QR code first");
    };
    let qr = QrData::parse(&text).expect("Baileys' QR code parses");

    let mut wrong_ref = qr.clone();
    wrong_ref.reference.push('x');
    let (code, message) = scan_error(&mut harness, &wrong_ref).await;
    assert_eq!(code, Code::NotFound);
    assert!(message.contains("ref was not issued"), "{message}");

    let mut wrong_noise = qr.clone();
    wrong_noise.noise_public[0] ^= 1;
    let (code, message) = scan_error(&mut harness, &wrong_noise).await;
    assert_eq!(code, Code::NotFound);
    assert!(message.contains("no companion is waiting"), "{message}");

    let mut wrong_identity = qr.clone();
    wrong_identity.identity_public[0] ^= 1;
    let (code, message) = scan_error(&mut harness, &wrong_identity).await;
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains("identity key"), "{message}");

    // Baileys checks the HMAC for real: with another ADV secret it rejects
    // the pairing and disconnects.
    let mut wrong_secret = qr.clone();
    wrong_secret.adv_secret[0] ^= 1;
    let (code, message) = scan_error(&mut harness, &wrong_secret).await;
    assert_eq!(code, Code::Unavailable);
    assert!(
        message.contains("disconnected before confirming"),
        "{message}"
    );
    assert_eq!(baileys.next_event().await, Event::Close(Some(500)));
    assert!(!baileys.wait().await.success());

    // No device was added for any of these scans.
    let accounts = harness.accounts().await;
    assert!(
        accounts.iter().all(|a| a.devices.len() == 1),
        "only phones: {accounts:?}"
    );
    harness.stop().await;
}
