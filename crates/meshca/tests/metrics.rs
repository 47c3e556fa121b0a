#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design
//! The metrics endpoints of `meshca serve` and `meshca trust run`, scraped over HTTP and parsed by
//! Prometheus' own Python client (`prometheus_client.parser`), with every expiry checked against
//! what `openssl x509` reads from the certificates; and the endpoint under descriptor
//! exhaustion (an `accept` that fails must not spin a core) and beside silent clients.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshca_testkit::process::Process;
use meshca_testkit::{GENERATED_ROOT_POLICY, openssl, run_in};

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

/// The Python client's version, pinned: its parser is the judge of the format.
const PROMETHEUS_CLIENT: &str = "prometheus-client==0.26.0";

/// The longest a process may take to come up, or to show a change.
const BOUND: Duration = Duration::from_secs(30);

/// `meshca <args>` kept running in `dir`, its stderr in `<name>.log`.
fn meshca(dir: &Path, name: &str, args: &[&str]) -> Process {
    Process::run(dir, name, MESHCA, args, &[])
}

/// A Python with `prometheus_client`: `$MESHCA_PYTHON`, else a venv in `~/.cache/meshca/venv`
/// made here when it is missing (scripts/test makes it beforehand).
fn python() -> PathBuf {
    static READY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    READY
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("MESHCA_PYTHON") {
                return PathBuf::from(p);
            }
            let home = std::env::var_os("HOME").unwrap();
            let venv = Path::new(&home).join(".cache/meshca/venv");
            let py = venv.join("bin/python");
            let has = |py: &Path| {
                Command::new(py)
                    .args(["-c", "import prometheus_client"])
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !has(&py) {
                let ok = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "python3 -m venv {} failed", venv.display());
                let ok = Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", PROMETHEUS_CLIENT])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "pip install {PROMETHEUS_CLIENT} failed");
            }
            assert!(has(&py), "{} cannot import prometheus_client", py.display());
            py
        })
        .clone()
}

/// One sample as the Python parser read it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Sample {
    family: String,
    #[serde(rename = "type")]
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed by `prometheus_client.parser.text_string_to_metric_families`.
struct Scrape(Vec<Sample>);

const PARSE: &str = "import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        out.append({'family': f.name, 'type': f.type, 'name': s.name, 'labels': s.labels, 'value': s.value})
print(json.dumps(out))
";

impl Scrape {
    fn of(addr: &str) -> Self {
        let text = http_get(addr, "/metrics");
        let mut child = Command::new(python())
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the parser refused the exposition: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        Scrape(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// The samples named `name` whose labels include `labels`.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The one sample `name` with `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(name, labels);
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:#?}");
        found[0].value
    }

    fn kind(&self, family: &str) -> &str {
        &self
            .0
            .iter()
            .find(|s| s.family == family)
            .unwrap_or_else(|| panic!("no family {family}"))
            .kind
    }
}

/// `GET path` on a new connection; the body of a 200 answer.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    body.to_owned()
}

/// What openssl reads from a certificate: notAfter (Unix time), SHA-256 fingerprint, serial.
struct Cert {
    not_after: f64,
    not_before: f64,
    fingerprint: String,
    serial: String,
}

fn openssl_cert(dir: &Path, file: &str) -> Cert {
    let out = openssl(
        dir,
        [
            "x509",
            "-in",
            file,
            "-noout",
            "-startdate",
            "-enddate",
            "-dateopt",
            "iso_8601",
            "-fingerprint",
            "-sha256",
            "-serial",
        ],
    )
    .ok();
    let field = |key: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in {}", out.stdout))
            .trim()
            .to_owned()
    };
    let time = |s: String| {
        let fmt =
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
        time::PrimitiveDateTime::parse(&s, &fmt)
            .unwrap()
            .assume_utc()
            .unix_timestamp() as f64
    };
    Cert {
        not_after: time(field("notAfter=")),
        not_before: time(field("notBefore=")),
        fingerprint: field("sha256 Fingerprint="),
        serial: field("serial="),
    }
}

/// Serials compared as numbers: openssl prints no colons and drops a leading zero byte.
fn same_serial(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.replace(':', "")
            .trim_start_matches('0')
            .to_ascii_uppercase()
    };
    norm(a) == norm(b)
}

/// The PEM certificates of a file, each written to `<file>.<i>.pem`.
fn split_pem(dir: &Path, file: &str) -> Vec<String> {
    let text = fs::read_to_string(dir.join(file)).unwrap();
    meshca_testkit::pem_blocks(&text)
        .into_iter()
        .enumerate()
        .map(|(i, block)| {
            let name = format!("{file}.{i}.pem");
            fs::write(dir.join(&name), block).unwrap();
            name
        })
        .collect()
}

/// A folder store (mgmt, cluster1, cluster2) and the generated-root policy, in `d`.
fn store(d: &Path) {
    for c in ["mgmt", "cluster1", "cluster2"] {
        fs::create_dir_all(d.join("store").join(c)).unwrap();
    }
    fs::write(d.join("policy.yaml"), GENERATED_ROOT_POLICY).unwrap();
}

const POLICY: &str = "gloo-mesh/mesh";

/// Checks a trust run scrape against each cluster's bundle as openssl reads it: one root series
/// per root of `root-cert.pem`, the intermediate's expiry and its planned renewal.
fn check_clusters(s: &Scrape, d: &Path, clusters: &[&str]) {
    for c in clusters {
        let dir = d.join(format!("store/{c}/istio-system/cacerts"));
        let roots = split_pem(&dir, "root-cert.pem");
        let series = s.find(
            "meshca_trust_root_expiry_timestamp_seconds",
            &[("policy", POLICY), ("cluster", c)],
        );
        assert_eq!(series.len(), roots.len(), "{c}: {series:#?}");
        for r in &roots {
            let root = openssl_cert(&dir, r);
            let v = s.value(
                "meshca_trust_root_expiry_timestamp_seconds",
                &[
                    ("policy", POLICY),
                    ("cluster", c),
                    ("fingerprint", &root.fingerprint),
                ],
            );
            assert_eq!(v, root.not_after, "{c}: root {}", root.fingerprint);
            let serial = &s.find(
                "meshca_trust_root_expiry_timestamp_seconds",
                &[("cluster", c), ("fingerprint", &root.fingerprint)],
            )[0]
            .labels["serial"];
            assert!(
                same_serial(serial, &root.serial),
                "{serial} {}",
                root.serial
            );
        }
        let ca = openssl_cert(&dir, "ca-cert.pem");
        let series = s.find(
            "meshca_trust_intermediate_expiry_timestamp_seconds",
            &[("policy", POLICY), ("cluster", c)],
        );
        assert_eq!(series.len(), 1, "{c}: {series:#?}");
        assert_eq!(series[0].value, ca.not_after, "{c}: intermediate");
        assert!(same_serial(&series[0].labels["serial"], &ca.serial));
        // The policy renews at 10% of the life left.
        let renew = ca.not_after - ((ca.not_after - ca.not_before) * 0.1);
        let planned = s.value(
            "meshca_trust_intermediate_renewal_timestamp_seconds",
            &[("policy", POLICY), ("cluster", c)],
        );
        assert!((planned - renew).abs() <= 1.0, "{c}: {planned} vs {renew}");
    }
}

fn phase(s: &Scrape) -> String {
    let on: Vec<_> = s
        .find("meshca_trust_rotation_phase", &[("policy", POLICY)])
        .into_iter()
        .filter(|x| x.value == 1.0)
        .map(|x| x.labels["phase"].clone())
        .collect();
    assert_eq!(on.len(), 1, "one phase at a time: {on:?}");
    on[0].clone()
}

/// Scrapes until `done` holds, for at most `BOUND`.
fn scrape_until(addr: &str, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + BOUND;
    loop {
        let s = Scrape::of(addr);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {:#?}", s.0);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn reconciles(s: &Scrape, outcome: &str) -> f64 {
    s.find(
        "meshca_trust_reconcile_total",
        &[("policy", POLICY), ("outcome", outcome)],
    )
    .first()
    .map_or(0.0, |x| x.value)
}

#[test]
fn trust_run_metrics_follow_the_store_through_a_root_rotation_and_a_failing_cluster() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    store(d);
    let run = meshca(
        d,
        "trust-run",
        &[
            "trust",
            "run",
            "-f",
            "policy.yaml",
            "--store",
            "store",
            "--poll",
            "100ms",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let addr = run.word_after("metrics on ", BOUND);
    run.word_after("reconciled at", BOUND);

    // After the first reconcile: every expiry, no rotation, one good reconcile, this replica acts.
    let s = scrape_until(&addr, "first reconcile", |s| reconciles(s, "ok") >= 1.0);
    assert_eq!(
        s.kind("meshca_trust_root_expiry_timestamp_seconds"),
        "gauge"
    );
    assert_eq!(s.kind("meshca_trust_reconcile"), "counter");
    assert_eq!(
        s.kind("meshca_trust_reconcile_duration_seconds"),
        "histogram"
    );
    check_clusters(&s, d, &["cluster1", "cluster2"]);
    assert_eq!(phase(&s), "none");
    assert_eq!(s.value("meshca_trust_leader", &[]), 1.0);
    assert_eq!(
        s.value("meshca_trust_policy_refused", &[("policy", POLICY)]),
        0.0
    );
    let durations = s.value(
        "meshca_trust_reconcile_duration_seconds_count",
        &[("policy", POLICY)],
    );
    assert!(durations >= 1.0);
    let ok_before = reconciles(&s, "ok");

    // A silent client does not hold up a scrape.
    let _silent = TcpStream::connect(&addr).unwrap();
    let started = Instant::now();
    Scrape::of(&addr);
    assert!(started.elapsed() < Duration::from_secs(3));

    // A root rotation, started beside the running manager: phase 1 adds the new root.
    let out = run_in(
        MESHCA,
        d,
        [
            "trust",
            "rotate-root",
            "-f",
            "policy.yaml",
            "--store",
            "store",
        ],
        &[],
    )
    .ok();
    assert!(
        out.stdout.contains("root rotation started"),
        "{}",
        out.stdout
    );
    let s = scrape_until(&addr, "phase add-root", |s| {
        phase(s) == "add-root"
            && s.find(
                "meshca_trust_root_expiry_timestamp_seconds",
                &[("cluster", "cluster2")],
            )
            .len()
                == 2
    });
    check_clusters(&s, d, &["cluster1", "cluster2"]);
    assert!(reconciles(&s, "ok") > ok_before, "the count moves");

    // cluster2's store breaks (its namespace is a file): its errors are counted, the reconcile
    // is degraded, and its expiry series stay as last seen.
    let ns = d.join("store/cluster2/istio-system");
    fs::rename(&ns, d.join("cluster2-istio-system")).unwrap();
    fs::write(&ns, "not a folder").unwrap();
    let s = scrape_until(&addr, "a store error", |s| {
        s.find(
            "meshca_trust_store_errors_total",
            &[("cluster", "cluster2")],
        )
        .first()
        .is_some_and(|x| x.value >= 1.0)
    });
    assert!(reconciles(&s, "degraded") >= 1.0);
    assert_eq!(
        s.find(
            "meshca_trust_intermediate_expiry_timestamp_seconds",
            &[("cluster", "cluster2")]
        )
        .len(),
        1
    );
    assert!(
        s.find(
            "meshca_trust_store_errors_total",
            &[("cluster", "cluster1")]
        )
        .is_empty()
    );
}

/// A CA folder made by `meshca certs` with ECDSA keys (quick), in `d/cluster1`.
fn cacerts(d: &Path) {
    run_in(
        MESHCA,
        d,
        ["certs", "root-ca", "cluster1-cacerts"],
        &[
            ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
            ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
        ],
    )
    .ok();
}

#[test]
fn serve_metrics_give_istiods_names_and_every_expiry() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    cacerts(d);
    let p = meshca(
        d,
        "serve",
        &[
            "serve",
            "--cacerts",
            "cluster1",
            "--listen",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let (listen, addr) = listening(&p);
    let s = Scrape::of(&addr);
    let dir = d.join("cluster1");
    let root = openssl_cert(&dir, "root-cert.pem");
    let ca = openssl_cert(&dir, "ca-cert.pem");
    assert_eq!(
        s.value("citadel_server_root_cert_expiry_timestamp", &[]),
        root.not_after
    );
    assert_eq!(
        s.value("citadel_server_cert_chain_expiry_timestamp", &[]),
        ca.not_after.min(root.not_after)
    );
    assert_eq!(
        s.value("meshca_ca_signing_cert_expiry_timestamp_seconds", &[]),
        ca.not_after
    );
    assert_eq!(
        s.value(
            "meshca_ca_root_cert_expiry_timestamp_seconds",
            &[("fingerprint", &root.fingerprint)]
        ),
        root.not_after
    );
    assert_eq!(s.value("citadel_server_csr_count_total", &[]), 0.0);
    assert_eq!(s.kind("citadel_server_csr_count"), "counter");
    assert_eq!(s.kind("meshca_ca_issuance_duration_seconds"), "histogram");
    assert_eq!(s.value("meshca_ca_last_known_good", &[]), 1.0);
    // The serving certificate, as a TLS client is shown it.
    let shown = Command::new("sh")
        .current_dir(d)
        .args([
            "-c",
            &format!(
                "openssl s_client -connect {listen} </dev/null 2>/dev/null | openssl x509 -out serving.pem"
            ),
        ])
        .status()
        .unwrap();
    assert!(shown.success());
    let serving = openssl_cert(d, "serving.pem");
    assert_eq!(
        s.value("meshca_ca_serving_cert_expiry_timestamp_seconds", &[]),
        serving.not_after
    );
}

/// The listen and metrics addresses from `meshca serve`'s "listening on A (metrics on M)".
fn listening(p: &Process) -> (String, String) {
    let line = p.line_with("listening on ", BOUND);
    let (_, rest) = line.split_once("listening on ").unwrap();
    let listen = rest.split_whitespace().next().unwrap().to_owned();
    let (_, m) = rest.split_once("(metrics on ").unwrap();
    let metrics = m.split(')').next().unwrap().to_owned();
    (listen, metrics)
}

/// Clock ticks of CPU (user and system) `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces: the fields start after its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn with_descriptors_exhausted_the_endpoint_waits_instead_of_spinning_and_serves_again_after() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    cacerts(d);
    let p = meshca(
        d,
        "serve",
        &[
            "serve",
            "--cacerts",
            "cluster1",
            "--listen",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let (_, addr) = listening(&p);
    http_get(&addr, "/metrics");
    let pid = p.pid();
    // Room for a few more descriptors only.
    let limit = open_fds(pid) as u64 + 4;
    rustix::process::prlimit(
        rustix::process::Pid::from_raw(pid as i32),
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        },
    )
    .unwrap();
    // More silent clients than it has descriptors: the first few are accepted (and held until
    // the header timeout, 5 s), the rest wait in the backlog with `accept` failing on EMFILE.
    let clients: Vec<TcpStream> = (0..12)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let deadline = Instant::now() + BOUND;
    while (open_fds(pid) as u64) < limit {
        assert!(Instant::now() < deadline, "the server never ran out");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ticks, started) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_millis(1500));
    let used = (cpu_ticks(pid) - ticks) as f64 / 100.0;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        used < 0.2 * elapsed,
        "the server used {used:.2}s of CPU in {elapsed:.2}s with its descriptors exhausted"
    );
    // Descriptors come back as the clients leave: a scrape is answered again.
    drop(clients);
    let started = Instant::now();
    assert!(http_get(&addr, "/metrics").contains("citadel_server_csr_count"));
    assert!(started.elapsed() < Duration::from_secs(5));
}
