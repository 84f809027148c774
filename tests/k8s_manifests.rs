//! The deployment files agree with the server: the Kubernetes probes ask the
//! health service for the names the gateway registers, every port is the
//! one the gateway listens on, the grace period covers the shutdown, and the
//! shipped Secret template cannot start a gateway by accident.

use std::net::SocketAddr;
use std::path::Path;

use wagate::app::{ServeOptions, StartError};

/// Time allowed for closing every session's websocket at shutdown, on top
/// of the drain delay and the shutdown grace.
const SESSION_CLOSE_ALLOWANCE_SECS: u64 = 10;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lines nested under the first `key:` line (a YAML mapping key),
/// searched from the start of `lines`.
fn block<'a>(lines: &[&'a str], key: &str) -> Vec<&'a str> {
    let want = format!("{key}:");
    let start = lines
        .iter()
        .position(|l| l.trim_start().trim_start_matches("- ") == want)
        .unwrap_or_else(|| panic!("no `{key}:` block"));
    let depth = indent(lines[start]);
    lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > depth)
        .copied()
        .collect()
}

/// The scalar after the first `key:` in `lines`, without quotes.
fn scalar(lines: &[&str], key: &str) -> String {
    let want = format!("{key}:");
    lines
        .iter()
        .map(|l| l.trim_start().trim_start_matches("- "))
        .find_map(|l| l.strip_prefix(want.as_str()))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("no `{key}:` value in {lines:?}"))
}

fn port_of(listen: &str) -> u16 {
    listen
        .parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{listen:?} is not a listen address: {e}"))
        .port()
}

struct Deploy {
    statefulset: String,
    configmap: String,
    dockerfile: String,
}

impl Deploy {
    fn load() -> Self {
        Self {
            statefulset: read("k8s/base/statefulset.yaml"),
            configmap: read("k8s/base/configmap.yaml"),
            dockerfile: read("Dockerfile"),
        }
    }

    fn sts(&self) -> Vec<&str> {
        self.statefulset.lines().collect()
    }

    fn config(&self, key: &str) -> String {
        let lines: Vec<&str> = self.configmap.lines().collect();
        scalar(&block(&lines, "data"), key)
    }

    fn container_port(&self) -> u16 {
        let sts = self.sts();
        let ports = block(&sts, "ports");
        assert_eq!(scalar(&ports, "name"), "grpc");
        scalar(&ports, "containerPort")
            .parse()
            .expect("numeric containerPort")
    }
}

#[test]
fn probes_ask_for_the_services_the_gateway_registers() {
    let deploy = Deploy::load();
    let sts = deploy.sts();
    let port = deploy.container_port().to_string();

    let readiness = block(&block(&sts, "readinessProbe"), "grpc");
    assert_eq!(scalar(&readiness, "service"), wagate::api::GATEWAY_SERVICE);
    assert_eq!(scalar(&readiness, "port"), port);

    // "" is the server's overall health, which is what liveness is about.
    let liveness = block(&block(&sts, "livenessProbe"), "grpc");
    assert_eq!(scalar(&liveness, "service"), "");
    assert_eq!(scalar(&liveness, "port"), port);
}

#[test]
fn every_port_is_the_listen_port() {
    let deploy = Deploy::load();
    let port = deploy.container_port();
    assert_eq!(port_of(&deploy.config("WAGATE_LISTEN")), port);

    let env_listen = deploy
        .dockerfile
        .split_whitespace()
        .find_map(|w| w.strip_prefix("WAGATE_LISTEN="))
        .expect("Dockerfile sets WAGATE_LISTEN");
    assert_eq!(port_of(env_listen), port);
    let exposed: Vec<&str> = deploy
        .dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .collect();
    assert_eq!(exposed, [port.to_string()]);
    // The address the container listens on must be reachable from outside it.
    assert!(!env_listen
        .parse::<SocketAddr>()
        .expect("address")
        .ip()
        .is_loopback());

    let services = read("k8s/base/service.yaml");
    let docs: Vec<&str> = services.split("\n---\n").collect();
    assert_eq!(docs.len(), 2, "ClusterIP and headless Services");
    for doc in docs {
        let lines: Vec<&str> = doc.lines().collect();
        let ports = block(&lines, "ports");
        assert_eq!(scalar(&ports, "port"), port.to_string());
        assert_eq!(scalar(&ports, "targetPort"), "grpc");
    }

    let policy = read("k8s/base/networkpolicy.yaml");
    let lines: Vec<&str> = policy.lines().collect();
    assert_eq!(
        scalar(&block(&lines, "ports"), "port"),
        port.to_string(),
        "the NetworkPolicy admits the gRPC port"
    );
}

#[test]
fn grace_period_covers_the_shutdown() {
    let deploy = Deploy::load();
    let grace: u64 = scalar(&deploy.sts(), "terminationGracePeriodSeconds")
        .parse()
        .expect("numeric grace period");
    let drain: u64 = deploy
        .config("WAGATE_DRAIN_SECONDS")
        .parse()
        .expect("numeric drain seconds");
    let shutdown = ServeOptions::local("unused".into())
        .shutdown_grace
        .as_secs();
    assert!(
        grace >= drain + shutdown + SESSION_CLOSE_ALLOWANCE_SECS,
        "terminationGracePeriodSeconds {grace} < drain {drain} + shutdown {shutdown} + {SESSION_CLOSE_ALLOWANCE_SECS}"
    );
}

#[test]
fn the_redis_cluster_rolls_with_a_surge_and_probes_like_the_base() {
    let deploy = Deploy::load();
    let cluster = read("k8s/redis/deployment.yaml");
    let lines: Vec<&str> = cluster.lines().collect();
    let port = deploy.container_port().to_string();
    // A new pod is ready before an old one stops: what moves each session once.
    let rolling = block(&lines, "rollingUpdate");
    assert_eq!(scalar(&rolling, "maxUnavailable"), "0");
    assert!(scalar(&rolling, "maxSurge").parse::<u32>().expect("number") >= 1);
    let readiness = block(&block(&lines, "readinessProbe"), "grpc");
    assert_eq!(scalar(&readiness, "service"), wagate::api::GATEWAY_SERVICE);
    assert_eq!(scalar(&readiness, "port"), port);
    let liveness = block(&block(&lines, "livenessProbe"), "grpc");
    assert_eq!(scalar(&liveness, "service"), "");
    assert_eq!(scalar(&block(&lines, "ports"), "containerPort"), port);
    assert_eq!(
        scalar(&lines, "terminationGracePeriodSeconds"),
        scalar(&deploy.sts(), "terminationGracePeriodSeconds")
    );
    // Forwarded calls reach the pod at the address it advertises.
    assert!(cluster.contains(&format!("value: \"$(POD_IP):{port}\"")));
}

#[tokio::test]
async fn the_secret_template_does_not_start_a_gateway() {
    let secret = read("k8s/base/secret.yaml");
    let lines: Vec<&str> = secret.lines().collect();
    let data = block(&lines, "stringData");
    let deploy = Deploy::load();
    let dir = tempfile::tempdir().expect("temp dir");

    // As shipped: no API key, on the ConfigMap's (public) address.
    let mut opts = ServeOptions::local(dir.path().join("a"));
    opts.listen = deploy.config("WAGATE_LISTEN").parse().expect("address");
    opts.api_keys = vec![scalar(&data, "WAGATE_API_KEYS")];
    opts.store_key = Some(scalar(&data, "WAGATE_STORE_KEY"));
    let refused = wagate::app::start(opts).await.err();
    assert!(
        matches!(refused, Some(StartError::NoKeysOnPublicAddress(_))),
        "{refused:?}"
    );

    // With a key set but the store key left as shipped: still refused.
    let mut opts = ServeOptions::local(dir.path().join("b"));
    opts.api_keys = vec!["a-real-key".into()];
    opts.store_key = Some(scalar(&data, "WAGATE_STORE_KEY"));
    let refused = wagate::app::start(opts).await.err();
    assert!(matches!(refused, Some(StartError::Store(_))), "{refused:?}");
}
