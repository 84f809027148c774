//! grpcurl, with no proto files, lists the services through reflection and
//! calls Init and Status on a sandbox gateway.

use std::net::SocketAddr;
use std::process::Command;

fn grpcurl() -> String {
    let out = Command::new("sh")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/ensure-grpcurl.sh"
        ))
        .output()
        .expect("run ensure-grpcurl.sh");
    assert!(
        out.status.success(),
        "grpcurl unavailable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

fn call(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().expect("run grpcurl");
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_services_and_calls_work() {
    let bin = grpcurl();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = wagate::app::ServeOptions::local(dir.path().to_path_buf());
    opts.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    opts.sim = true;
    opts.store_key = Some("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into());
    let gateway = wagate::app::start(opts).await.expect("gateway starts");
    let addr = gateway.addr.to_string();

    // grpcurl blocks: run it off the async runtime the gateway is serving on.
    let run = |args: Vec<String>| {
        let bin = bin.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            call(&bin, &args)
        })
    };
    let listed = run(vec!["-plaintext".into(), addr.clone(), "list".into()])
        .await
        .expect("join");
    for service in [
        "wagate.v1.Gateway",
        "wagate.sim.v1.Simulator",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.lines().any(|l| l.trim() == service),
            "{service} in {listed}"
        );
    }
    let rpc = |method: &str| {
        run(vec![
            "-plaintext".into(),
            "-d".into(),
            r#"{"session_id":"demo"}"#.into(),
            addr.clone(),
            format!("wagate.v1.Gateway/{method}"),
        ])
    };
    let init = rpc("Init").await.expect("join");
    assert!(init.contains(r#""sessionId": "demo""#), "{init}");
    let status = rpc("Status").await.expect("join");
    assert!(status.contains(r#""sessionId": "demo""#), "{status}");
    assert!(
        status.contains("CONNECTING") || status.contains("QR_READY"),
        "{status}"
    );
    gateway.shutdown().await;
}
