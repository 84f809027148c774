//! An unmodified Baileys client (from npm) pairs with the simulator: it shows
//! a QR code, a virtual phone scans it through the gRPC control API, Baileys
//! restarts on the server's 515 and logs in until the connection opens.

mod sim_support;

use sim_support::Harness;

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
