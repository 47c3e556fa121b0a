//! The Istio peers `scripts/peers` builds: `pilot-agent` and `pilot-discovery` report the
//! version they were built from, and `pilot-agent` with `DISABLE_ENVOY=true` runs with every
//! listener on loopback (and, as a check of that claim's premise, binds every interface when its
//! status server is left on).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures by design

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshca_testkit::istio::{
    AgentConfig, Listener, PilotAgent, istio_revision, istio_version, listeners_of,
    pilot_agent_bin, pilot_discovery_bin,
};

/// One `"key": "value"` of a flat JSON object as Istio's `version -o json` indents it.
fn json_field(json: &str, key: &str) -> String {
    let needle = format!("\"{key}\": \"");
    let start = json
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + needle.len();
    json[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn peers_report_the_version_they_were_built_from() {
    assert_eq!(
        meshca_testkit::ISTIO_MODULE,
        format!("istio.io/istio@{}", istio_version()),
        "ISTIO_MODULE and interop/istio/go.mod name different Istio versions"
    );
    for bin in [pilot_agent_bin(), pilot_discovery_bin()] {
        let out = meshca_testkit::run_in(&bin, Path::new("/"), ["version", "-o", "json"], &[]).ok();
        println!("{}: {}", bin.display(), out.stdout.trim());
        let version = json_field(&out.stdout, "version");
        assert!(
            version.starts_with(|c: char| c.is_ascii_digit()) && version.contains('.'),
            "{} reports version {version:?}",
            bin.display()
        );
        assert_eq!(json_field(&out.stdout, "revision"), istio_revision());
        assert_eq!(json_field(&out.stdout, "tag"), istio_version());
        assert_eq!(json_field(&out.stdout, "status"), "Clean");
        let short = meshca_testkit::run_in(&bin, Path::new("/"), ["version", "--short"], &[]).ok();
        assert_eq!(short.stdout.trim(), format!("client version: {version}"));
    }
}

/// A scratch folder removed on drop (`MESHCA_KEEP_ISTIO_DIR=1` keeps it).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "meshca-istio-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("MESHCA_KEEP_ISTIO_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("kept {}", self.0.display());
        }
    }
}

/// Starts pilot-agent with Envoy disabled in `dir`, its CA and discovery address both at
/// `upstream` (a listener that never answers), with a dummy token (read only when a certificate
/// is requested, which never gets that far) and Istio's sample root.
fn start_agent(dir: &Path, upstream: &str, status_port: Option<u16>) -> PilotAgent {
    let root =
        std::fs::read_to_string(meshca_testkit::istio_samples().join("root-cert.pem")).unwrap();
    PilotAgent::start(
        dir,
        &AgentConfig {
            ca_addr: upstream.to_owned(),
            ca_root_pem: root,
            token: "not.a.token".to_owned(),
            namespace: "default".to_owned(),
            service_account: "default".to_owned(),
            cluster_id: "Kubernetes".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            secret_ttl: None,
            status_port,
        },
    )
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn pilot_agent_without_envoy_listens_on_loopback_only() {
    let scratch = Scratch::new("agent");
    let dir = &scratch.0;
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    upstream.set_nonblocking(true).unwrap();
    let upstream_addr = upstream.local_addr().unwrap().to_string();
    let mut agent = start_agent(dir, &upstream_addr, None);
    let pid = agent.pid();

    // Its xDS proxy's Unix socket is up once it has started everything it starts. (Without Envoy
    // there is no SDS socket: it writes the certificates to OUTPUT_CERTS instead.)
    let xds = dir.join("etc/istio/proxy/XDS");
    agent.wait_for("XDS socket", Duration::from_secs(60), || xds.exists());
    // And it dials its upstream (the CA or the discovery address).
    agent.wait_for(
        "connection to CA_ADDR/discoveryAddress",
        Duration::from_secs(60),
        || upstream.accept().is_ok(),
    );
    // Anything it would listen on has had time to come up.
    std::thread::sleep(Duration::from_secs(2));
    agent.assert_running();

    let listeners = listeners_of(pid);
    println!("pilot-agent {pid} listeners: {listeners:?}");
    let open: Vec<&Listener> = listeners.iter().filter(|l| !l.is_loopback()).collect();
    assert!(
        open.is_empty(),
        "pilot-agent listens beyond loopback: {open:?}\n{}",
        agent.log()
    );
    assert!(agent.log().contains("Effective config"), "{}", agent.log());
}

/// The premise of `agent_loopback_only`: left on, the status server binds every interface even
/// though nothing else does. If this ever fails, Istio has made its address configurable.
#[test]
fn pilot_agent_status_server_binds_every_interface() {
    let scratch = Scratch::new("status");
    let dir = &scratch.0;
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap().to_string();
    let status_port = free_port();
    let mut agent = start_agent(dir, &upstream_addr, Some(status_port));
    let pid = agent.pid();
    let mut listeners = Vec::new();
    agent.wait_for("status server listener", Duration::from_secs(60), || {
        listeners = listeners_of(pid);
        listeners.iter().any(|l| l.port == status_port)
    });
    println!("pilot-agent {pid} listeners: {listeners:?}");
    let status = listeners.iter().find(|l| l.port == status_port).unwrap();
    assert!(
        status.addr.is_unspecified(),
        "status server on {status:?}, expected every interface"
    );
}

/// istiod against a real kube-apiserver with Istio's CRDs, every listen flag on 127.0.0.1: it
/// becomes ready and holds no socket beyond loopback.
#[test]
fn pilot_discovery_with_loopback_flags_listens_on_loopback_only() {
    use meshca_testkit::istio::{Istiod, install_istio_base};
    use meshca_testkit::kube::ControlPlane;

    let cp = ControlPlane::start(&["cluster1"]);
    install_istio_base(&cp, "cluster1");
    let scratch = Scratch::new("istiod");
    // Ready (/ready answers 200) and its CA port listening.
    let istiod = Istiod::start(&cp, "cluster1", &scratch.0, None, &[]);
    let ports = istiod.ports();
    let pid = istiod.pid();
    let listeners = listeners_of(pid);
    println!("pilot-discovery {pid} listeners: {listeners:?}");
    for port in [
        ports.http,
        ports.grpc,
        ports.secure_grpc,
        ports.monitoring,
        ports.ctrlz,
    ] {
        assert!(
            listeners.iter().any(|l| l.port == port),
            "nothing on {port}: {listeners:?}"
        );
    }
    let open: Vec<&Listener> = listeners.iter().filter(|l| !l.is_loopback()).collect();
    assert!(
        open.is_empty(),
        "pilot-discovery listens beyond loopback: {open:?}\n{}",
        istiod.log()
    );
}
