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

use crate::kube::{peers_dir, required_version};

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
