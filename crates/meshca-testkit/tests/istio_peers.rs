//! The Istio peers `scripts/peers` builds: `pilot-agent` and `pilot-discovery` report the
//! version they were built from, and `pilot-agent` with `DISABLE_ENVOY=true` runs with every
//! listener on loopback (and, as a check of that claim's premise, binds every interface when its
//! status server is left on).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures by design

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshca_testkit::istio::{
    Listener, agent_loopback_only, istio_revision, istio_version, listeners_of, pilot_agent_bin,
    pilot_discovery_bin,
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

/// A pilot-agent killed on drop.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("pilot-agent exited ({status}):\n{}", self.log());
        }
    }
}

/// Starts `pilot-agent proxy sidecar` with Envoy disabled in `dir`, its CA and discovery address
/// both at `upstream` (a listener that never answers), with a dummy token and Istio's sample root.
fn start_agent(dir: &Path, upstream: &str, proxy_config: &str) -> Agent {
    let secrets = dir.join("var/run/secrets");
    std::fs::create_dir_all(secrets.join("tokens")).unwrap();
    std::fs::create_dir_all(secrets.join("istio")).unwrap();
    // Read only when a certificate is requested; the upstream never gets that far.
    std::fs::write(secrets.join("tokens/istio-token"), "not.a.token").unwrap();
    std::fs::copy(
        meshca_testkit::istio_samples().join("root-cert.pem"),
        secrets.join("istio/root-cert.pem"),
    )
    .unwrap();
    let log = dir.join("pilot-agent.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(pilot_agent_bin())
        .args(["proxy", "sidecar"])
        .current_dir(dir)
        .env("DISABLE_ENVOY", "true")
        .env("CA_ADDR", upstream)
        .env("PROXY_CONFIG", proxy_config)
        .env("JWT_POLICY", "third-party-jwt")
        .env("OUTPUT_CERTS", dir.join("out"))
        .env("POD_NAME", "agent-0")
        .env("POD_NAMESPACE", "default")
        .env("SERVICE_ACCOUNT", "default")
        .env("INSTANCE_IP", "127.0.0.1")
        .env("ISTIO_META_CLUSTER_ID", "Kubernetes")
        .env("TRUST_DOMAIN", "cluster.local")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("pilot-agent starts");
    Agent { child, log }
}

/// Waits until `cond` holds, or panics with the agent's log after `timeout`.
fn wait_for(agent: &mut Agent, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        agent.assert_running();
        assert!(
            start.elapsed() < timeout,
            "no {what} after {timeout:?}; pilot-agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
    agent_loopback_only(dir);
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    upstream.set_nonblocking(true).unwrap();
    let upstream_addr = upstream.local_addr().unwrap().to_string();
    let mut agent = start_agent(
        dir,
        &upstream_addr,
        &format!("{{\"discoveryAddress\": \"{upstream_addr}\"}}"),
    );
    let pid = agent.child.id();

    // Its xDS proxy's Unix socket is up once it has started everything it starts. (Without Envoy
    // there is no SDS socket: it writes the certificates to OUTPUT_CERTS instead.)
    let xds = dir.join("etc/istio/proxy/XDS");
    wait_for(&mut agent, "XDS socket", Duration::from_secs(60), || {
        xds.exists()
    });
    // And it dials its upstream (the CA or the discovery address).
    wait_for(
        &mut agent,
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
    let mut agent = start_agent(
        dir,
        &upstream_addr,
        &format!("{{\"discoveryAddress\": \"{upstream_addr}\", \"statusPort\": {status_port}}}"),
    );
    let pid = agent.child.id();
    let mut listeners = Vec::new();
    wait_for(
        &mut agent,
        "status server listener",
        Duration::from_secs(60),
        || {
            listeners = listeners_of(pid);
            listeners.iter().any(|l| l.port == status_port)
        },
    );
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
    use meshca_testkit::istio::{DiscoveryPorts, istio_module_dir, pilot_discovery_loopback_flags};
    use meshca_testkit::kube::ControlPlane;

    let cp = ControlPlane::start(&["cluster1"]);
    cp.kubectl_ok(["create", "namespace", "istio-system"]);
    let crds = istio_module_dir().join("manifests/charts/base/files/crd-all.gen.yaml");
    cp.kubectl_ok([
        "apply".as_ref(),
        "--server-side".as_ref(),
        "-f".as_ref(),
        crds.as_os_str(),
    ]);

    let scratch = Scratch::new("istiod");
    let dir = &scratch.0;
    let ports = DiscoveryPorts {
        http: free_port(),
        grpc: free_port(),
        secure_grpc: free_port(),
        monitoring: free_port(),
        https: free_port(),
        ctrlz: free_port(),
    };
    let log = dir.join("pilot-discovery.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(pilot_discovery_bin())
        .arg("discovery")
        .arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .args(pilot_discovery_loopback_flags(ports))
        .current_dir(dir)
        .env("POD_NAMESPACE", "istio-system")
        .env("POD_NAME", "istiod-0")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("pilot-discovery starts");
    let mut istiod = Agent { child, log };
    let pid = istiod.child.id();

    // Its readiness endpoint, as its pod's probe asks it.
    let ready = || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", ports.http)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"GET /ready HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
    };
    wait_for(&mut istiod, "ready istiod", Duration::from_secs(120), ready);
    let mut listeners = Vec::new();
    wait_for(
        &mut istiod,
        "secure gRPC listener",
        Duration::from_secs(30),
        || {
            listeners = listeners_of(pid);
            listeners.iter().any(|l| l.port == ports.secure_grpc)
        },
    );
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
