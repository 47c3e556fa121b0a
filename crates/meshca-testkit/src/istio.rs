//! The real Istio peers for tests: `pilot-agent` (istio-agent) and `pilot-discovery` (istiod),
//! built from `istio.io/istio` by `scripts/peers` at the version pinned in `interop/istio/go.mod`,
//! into the same per-machine cache as the control plane ([`crate::kube::peers_dir`]).
//!
//! Both bind every interface by default. What keeps them on loopback:
//! - `pilot-discovery discovery`: `--httpAddr`, `--grpcAddr`, `--secureGRPCAddr`,
//!   `--monitoringAddr`, `--httpsAddr` and `--ctrlz_address`/`--ctrlz_port`
//!   ([`PILOT_DISCOVERY_LOOPBACK_FLAGS`] gives all of them for a set of ports).
//! - `pilot-agent proxy`: its xDS proxy and SDS server are Unix sockets under its working folder;
//!   DNS (off unless `ISTIO_META_DNS_CAPTURE`/`ISTIO_META_ENABLE_DNS_SERVER`) listens on
//!   `DNS_PROXY_ADDR` (default `localhost:15053`); STS is off unless `--stsPort`. Its status
//!   server (`statusPort`, 15020) always listens on `:<port>`, every interface, with no address
//!   setting; the only way to keep it off other interfaces is not to start it, which the pod
//!   annotation `status.sidecar.istio.io/port="0"` in `./etc/istio/pod/annotations` does
//!   (`statusPort: 0` in `PROXY_CONFIG` is rejected by validation). [`agent_loopback_only`]
//!   writes that file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kube::{ControlPlane, Proc, free_ports, peers_dir, required_version};

/// The `istio.io/istio` version the peers are built at, a pseudo-version like
/// `v0.0.0-20260827124520-eed52ebb66ad` (from `interop/istio/go.mod`).
pub fn istio_version() -> String {
    required_version("istio", "istio.io/istio")
}

/// The Istio commit the peers are built from: the last part of [`istio_version`], which is
/// also the `revision` their `version -o json` reports.
pub fn istio_revision() -> String {
    let v = istio_version();
    v.rsplit('-').next().unwrap_or(&v).to_owned()
}

/// The folder `scripts/peers` builds the Istio peers into.
pub fn istio_dir() -> PathBuf {
    peers_dir().join(format!("istio-{}", istio_version()))
}

/// The built `pilot-agent` (istio-agent; tags `agent,disable_pgv,grpcnotrace,retrynotrace`).
pub fn pilot_agent_bin() -> PathBuf {
    istio_dir().join("pilot-agent")
}

/// The built `pilot-discovery` (istiod; tags `vtprotobuf,disable_pgv`).
pub fn pilot_discovery_bin() -> PathBuf {
    istio_dir().join("pilot-discovery")
}

/// The `istio.io/istio` module's source folder in Go's module cache (read-only), e.g. for its CRDs
/// at `manifests/charts/base/files/crd-all.gen.yaml`.
pub fn istio_module_dir() -> PathBuf {
    let certs = crate::istio_samples();
    certs
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} has no grandparent", certs.display()))
        .to_owned()
}

/// The TCP ports `pilot-discovery discovery` listens on, each given with 127.0.0.1 by
/// [`pilot_discovery_loopback_flags`].
#[derive(Debug, Clone, Copy)]
pub struct DiscoveryPorts {
    /// `--httpAddr` (default `:8080`): debug, readiness, plain xDS over HTTP
    pub http: u16,
    /// `--grpcAddr` (default `:15010`): plaintext xDS
    pub grpc: u16,
    /// `--secureGRPCAddr` (default `:15012`): xDS and the CA (`CreateCertificate`) over TLS
    pub secure_grpc: u16,
    /// `--monitoringAddr` (default `:15014`): metrics
    pub monitoring: u16,
    /// `--httpsAddr` (default `:15017`): injection and validation webhooks
    pub https: u16,
    /// `--ctrlz_port` (default 9876, on `--ctrlz_address`, default `localhost`)
    pub ctrlz: u16,
}

/// Every listen flag of `pilot-discovery discovery`, on 127.0.0.1 at `ports`.
pub fn pilot_discovery_loopback_flags(ports: DiscoveryPorts) -> Vec<String> {
    vec![
        format!("--httpAddr=127.0.0.1:{}", ports.http),
        format!("--grpcAddr=127.0.0.1:{}", ports.grpc),
        format!("--secureGRPCAddr=127.0.0.1:{}", ports.secure_grpc),
        format!("--monitoringAddr=127.0.0.1:{}", ports.monitoring),
        format!("--httpsAddr=127.0.0.1:{}", ports.https),
        "--ctrlz_address=127.0.0.1".to_owned(),
        format!("--ctrlz_port={}", ports.ctrlz),
    ]
}

/// Writes `./etc/istio/pod/annotations` under `workdir` (pilot-agent's working folder) with
/// `status.sidecar.istio.io/port="0"`, so that pilot-agent starts no status server: that server
/// binds every interface whatever is configured. Appends to annotations already written.
pub fn agent_loopback_only(workdir: &Path) {
    let dir = workdir.join("etc/istio/pod");
    fs::create_dir_all(&dir).expect("create etc/istio/pod");
    let path = dir.join("annotations");
    let mut text = fs::read_to_string(&path).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("status.sidecar.istio.io/port=\"0\"\n");
    fs::write(&path, text).expect("write pod annotations");
}

/// Gets `cluster` of `cp` ready for istiod: the `istio-system` namespace (if missing) and Istio's
/// CRDs (`manifests/charts/base/files/crd-all.gen.yaml` of the module, applied server-side).
pub fn install_istio_base(cp: &ControlPlane, cluster: &str) {
    let namespaces = cp.kubectl_ok(["--context", cluster, "get", "namespaces", "-o", "name"]);
    if !namespaces.lines().any(|l| l == "namespace/istio-system") {
        cp.kubectl_ok(["--context", cluster, "create", "namespace", "istio-system"]);
    }
    let crds = istio_module_dir().join("manifests/charts/base/files/crd-all.gen.yaml");
    cp.kubectl_ok([
        "--context".as_ref(),
        cluster.as_ref(),
        "apply".as_ref(),
        "--server-side".as_ref(),
        "-f".as_ref(),
        crds.as_os_str(),
    ]);
}

/// Polls `cond` every 100 ms until it holds; after `timeout`, or as soon as `exited` reports the
/// process gone, panics naming `what` with `log`'s tail.
fn wait_until(what: &str, timeout: Duration, proc: &mut Proc, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if let Some(status) = proc.exited() {
            panic!(
                "waiting for {what}: the process exited ({status})\n{}",
                proc.log_tail()
            );
        }
        assert!(
            start.elapsed() < timeout,
            "no {what} after {timeout:?}\n{}",
            proc.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A real istiod (`pilot-discovery discovery`) for one cluster of a [`ControlPlane`], every
/// listener on 127.0.0.1, its CA signing with a plugged-in cacerts folder or its own
/// self-signed root. Killed on drop (and by a watchdog if the test process dies first).
pub struct Istiod {
    proc: Option<Proc>,
    ports: DiscoveryPorts,
    log: PathBuf,
}

impl Istiod {
    /// Starts istiod in `dir` against `cluster` of `cp` (a kubeconfig of that context alone, so
    /// TokenReviews go to that cluster's API server), with cluster ID `cluster`, `ROOT_CA_DIR`
    /// at `cacerts` when given, and `env` on top; waits until `/ready` answers 200 and the CA's
    /// port (`--secureGRPCAddr`) listens. [`install_istio_base`] must have run for `cluster`.
    pub fn start(
        cp: &ControlPlane,
        cluster: &str,
        dir: &Path,
        cacerts: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Istiod {
        fs::create_dir_all(dir).expect("create istiod folder");
        let kubeconfig = dir.join("kubeconfig");
        let minified = cp.kubectl_ok([
            "config",
            "view",
            "--minify",
            "--flatten",
            "--context",
            cluster,
        ]);
        fs::write(&kubeconfig, minified).expect("write istiod kubeconfig");
        let p = free_ports(6);
        let ports = DiscoveryPorts {
            http: p[0],
            grpc: p[1],
            secure_grpc: p[2],
            monitoring: p[3],
            https: p[4],
            ctrlz: p[5],
        };
        let mut cmd = Command::new(pilot_discovery_bin());
        cmd.arg("discovery")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(pilot_discovery_loopback_flags(ports))
            .current_dir(dir)
            .env_remove("KUBECONFIG")
            .env("POD_NAMESPACE", "istio-system")
            .env("POD_NAME", "istiod-0")
            .env("CLUSTER_ID", cluster);
        if let Some(cacerts) = cacerts {
            cmd.env("ROOT_CA_DIR", cacerts);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = dir.join("pilot-discovery.log");
        let mut proc = Proc::start(cmd, &log);
        let http = ports.http;
        wait_until(
            "a ready istiod",
            Duration::from_secs(120),
            &mut proc,
            || http_get_ok(http, "/ready"),
        );
        let pid = proc.pid();
        wait_until(
            "istiod's CA port listening",
            Duration::from_secs(60),
            &mut proc,
            || {
                listeners_of(pid)
                    .iter()
                    .any(|l| l.port == ports.secure_grpc)
            },
        );
        Istiod {
            proc: Some(proc),
            ports,
            log,
        }
    }

    /// Where pilot-agent's `CA_ADDR` should point: `localhost:<secure gRPC port>`. A host with
    /// "localhost" in it makes pilot-agent check istiod's serving certificate for
    /// `istiod.istio-system.svc`, the name istiod's own certificate carries.
    pub fn ca_addr(&self) -> String {
        format!("localhost:{}", self.ports.secure_grpc)
    }

    /// The ports it listens on.
    pub fn ports(&self) -> DiscoveryPorts {
        self.ports
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its metrics (`--monitoringAddr`, `/metrics`) in Prometheus text format.
    pub fn metrics(&self) -> String {
        http_get(self.ports.monitoring, "/metrics").unwrap_or_default()
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }
}

/// `GET path` on 127.0.0.1:`port` over HTTP/1.0: the body when the status is 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")).then(|| body.to_owned())
}

fn http_get_ok(port: u16, path: &str) -> bool {
    http_get(port, path).is_some()
}

/// What a [`PilotAgent`] is told: its CA, its identity and credentials.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `CA_ADDR` (and the discovery address): see [`Istiod::ca_addr`]
    pub ca_addr: String,
    /// The PEM root bundle it checks the CA's serving certificate with
    /// (`./var/run/secrets/istio/root-cert.pem`, as the `istio-ca-root-cert` ConfigMap mounts it)
    pub ca_root_pem: String,
    /// Its service-account token (`./var/run/secrets/tokens/istio-token`); with
    /// `JWT_POLICY=third-party-jwt` it is read again for every request
    pub token: String,
    /// `POD_NAMESPACE`
    pub namespace: String,
    /// `SERVICE_ACCOUNT`
    pub service_account: String,
    /// `ISTIO_META_CLUSTER_ID`, sent to the CA as the request's `ClusterID` metadata
    pub cluster_id: String,
    /// `TRUST_DOMAIN`
    pub trust_domain: String,
    /// `SECRET_TTL`: the lifetime it asks for (it renews at half of it)
    pub secret_ttl: Option<String>,
    /// Start its status server on this port (`statusPort`), which binds every interface; by
    /// default it is off ([`agent_loopback_only`])
    pub status_port: Option<u16>,
}

/// A real istio-agent (`pilot-agent proxy sidecar`) without Envoy (`DISABLE_ENVOY=true`), in a
/// folder laid out like a pod's: it asks its CA for a workload certificate, writes
/// `cert-chain.pem`, `key.pem` and `root-cert.pem` to [`PilotAgent::out_dir`] (`OUTPUT_CERTS`),
/// and renews them. No status server unless [`AgentConfig::status_port`] asks for one.
/// Killed on drop.
pub struct PilotAgent {
    proc: Option<Proc>,
    dir: PathBuf,
    log: PathBuf,
}

impl PilotAgent {
    /// Starts it in `dir` (created), as configured.
    pub fn start(dir: &Path, cfg: &AgentConfig) -> PilotAgent {
        let secrets = dir.join("var/run/secrets");
        fs::create_dir_all(secrets.join("tokens")).expect("create token folder");
        fs::create_dir_all(secrets.join("istio")).expect("create root folder");
        fs::write(secrets.join("istio/root-cert.pem"), &cfg.ca_root_pem).expect("write root");
        let mut agent = PilotAgent {
            proc: None,
            dir: dir.to_owned(),
            log: dir.join("pilot-agent.log"),
        };
        agent.set_token(&cfg.token);
        fs::create_dir_all(agent.out_dir()).expect("create OUTPUT_CERTS folder");
        let proxy_config = match cfg.status_port {
            None => {
                agent_loopback_only(dir);
                format!("{{\"discoveryAddress\": \"{}\"}}", cfg.ca_addr)
            }
            Some(port) => format!(
                "{{\"discoveryAddress\": \"{}\", \"statusPort\": {port}}}",
                cfg.ca_addr
            ),
        };
        let mut cmd = Command::new(pilot_agent_bin());
        cmd.args(["proxy", "sidecar"])
            .current_dir(dir)
            .env("DISABLE_ENVOY", "true")
            .env("CA_ADDR", &cfg.ca_addr)
            .env("PROXY_CONFIG", proxy_config)
            .env("JWT_POLICY", "third-party-jwt")
            .env("OUTPUT_CERTS", agent.out_dir())
            .env("POD_NAME", format!("{}-0", cfg.service_account))
            .env("POD_NAMESPACE", &cfg.namespace)
            .env("SERVICE_ACCOUNT", &cfg.service_account)
            .env("INSTANCE_IP", "127.0.0.1")
            .env("ISTIO_META_CLUSTER_ID", &cfg.cluster_id)
            .env("TRUST_DOMAIN", &cfg.trust_domain);
        if let Some(ttl) = &cfg.secret_ttl {
            cmd.env("SECRET_TTL", ttl);
        }
        agent.proc = Some(Proc::start(cmd, &agent.log));
        agent
    }

    /// Replaces its token file (as the kubelet refreshes a projected token).
    pub fn set_token(&self, token: &str) {
        let path = self.dir.join("var/run/secrets/tokens/istio-token");
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, token).expect("write token");
        fs::rename(&tmp, &path).expect("replace token");
    }

    /// Replaces the root bundle it checks its CA's serving certificate with (as the kubelet
    /// updates the mounted `istio-ca-root-cert` ConfigMap when the mesh's roots change).
    pub fn set_ca_root(&self, pem: &str) {
        let path = self.dir.join("var/run/secrets/istio/root-cert.pem");
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, pem).expect("write CA root");
        fs::rename(&tmp, &path).expect("replace CA root");
    }

    /// Where it writes `cert-chain.pem`, `key.pem` and `root-cert.pem`.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// Its working folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with its log if it has exited.
    pub fn assert_running(&mut self) {
        let proc = self.proc.as_mut().expect("a started agent");
        if let Some(status) = proc.exited() {
            panic!("pilot-agent exited ({status})\n{}", proc.log_tail());
        }
    }

    /// Waits until `cond` holds, panicking with its log after `timeout` or if it exits.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
        let proc = self.proc.as_mut().expect("a started agent");
        wait_until(what, timeout, proc, cond);
    }

    /// Waits until `cert-chain.pem` and `root-cert.pem` exist and the chain differs from
    /// `previous` (pass `None` for the first one); returns the new `cert-chain.pem`.
    pub fn wait_for_chain(&mut self, previous: Option<&str>, timeout: Duration) -> String {
        let out = self.out_dir();
        let mut chain = String::new();
        self.wait_for("a new cert-chain.pem", timeout, || {
            match (
                fs::read_to_string(out.join("cert-chain.pem")),
                out.join("root-cert.pem").exists(),
            ) {
                (Ok(c), true) if c.contains("-----END CERTIFICATE-----") => {
                    let new = Some(c.as_str()) != previous;
                    chain = c;
                    new
                }
                _ => false,
            }
        });
        chain
    }
}

impl Drop for PilotAgent {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }
}

/// A TCP or UDP socket in the LISTEN state (TCP) or bound (UDP) held by a process, from
/// `/proc/<pid>/fd` and `/proc/net/{tcp,tcp6,udp,udp6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// `tcp`, `tcp6`, `udp` or `udp6`
    pub proto: &'static str,
    /// the local address as the kernel shows it, decoded (`127.0.0.1`, `0.0.0.0`, `::`, ...)
    pub addr: std::net::IpAddr,
    /// the local port
    pub port: u16,
}

impl Listener {
    /// Whether the socket is bound to a loopback address only.
    pub fn is_loopback(&self) -> bool {
        match self.addr {
            std::net::IpAddr::V4(v4) => v4.is_loopback(),
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        }
    }
}

/// The listening TCP sockets and bound UDP sockets that process `pid` holds.
pub fn listeners_of(pid: u32) -> Vec<Listener> {
    let mut inodes = std::collections::BTreeSet::new();
    if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(inode.to_owned());
                }
            }
        }
    }
    let mut out = Vec::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        // The process's own network namespace.
        let Ok(table) = fs::read_to_string(format!("/proc/{pid}/net/{proto}")) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || !inodes.contains(cols[9]) {
                continue;
            }
            // TCP LISTEN is 0A; an unconnected UDP socket is 07 (CLOSE).
            let listening = if proto.starts_with("tcp") {
                cols[3] == "0A"
            } else {
                cols[3] == "07"
            };
            if !listening {
                continue;
            }
            if let Some((addr, port)) = decode_proc_addr(cols[1]) {
                out.push(Listener { proto, addr, port });
            }
        }
    }
    out
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6), as `/proc/net/tcp*` writes them:
/// each 32-bit word in host (little-endian) byte order.
fn decode_proc_addr(text: &str) -> Option<(std::net::IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let ip = match words.as_slice() {
        [w] => std::net::IpAddr::from(w.to_le_bytes()),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].into_iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            std::net::IpAddr::from(bytes)
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses_decode() {
        assert_eq!(
            decode_proc_addr("0100007F:1F90"),
            Some(("127.0.0.1".parse().unwrap(), 8080))
        );
        assert_eq!(
            decode_proc_addr("00000000:3AAC"),
            Some(("0.0.0.0".parse().unwrap(), 15020))
        );
        assert_eq!(
            decode_proc_addr("00000000000000000000000001000000:3AAC"),
            Some(("::1".parse().unwrap(), 15020))
        );
        assert_eq!(
            decode_proc_addr("00000000000000000000000000000000:0050"),
            Some(("::".parse().unwrap(), 80))
        );
        let mapped = Listener {
            proto: "tcp6",
            addr: decode_proc_addr("0000000000000000FFFF00000100007F:0050")
                .unwrap()
                .0,
            port: 80,
        };
        assert_eq!(
            mapped.addr,
            "::ffff:127.0.0.1".parse::<std::net::IpAddr>().unwrap()
        );
        assert!(mapped.is_loopback());
    }
}
