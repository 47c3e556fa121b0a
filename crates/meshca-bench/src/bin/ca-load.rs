//! Load generator for `meshca serve`, side by side with Debian's `cfssl serve`.
//!
//! For each scenario (CA key type × CSR key type) it starts the real `meshca serve` (TLS, JWT
//! auth) and the real `cfssl serve` on loopback with the same intermediate, drives each with the
//! same CSRs from N concurrent clients for a fixed time, and reports certificates per second,
//! p50/p99 latency, server CPU time per certificate (from /proc, since client and server share the
//! cores), and peak server memory. It also measures the crypto floor in-process: parse and verify
//! a CSR, build and sign the certificate. With the first scenario it also times the bare
//! transport: a server that only reads a request's bytes and writes a response's bytes back over
//! loopback TCP, which is the least any gRPC server must spend per call here. Each figure is the
//! median of several rounds, the servers taking turns. Prints a Markdown table.
//!
//! Usage: ca-load [SECONDS_PER_RUN] [CLIENTS] [ROUNDS]   (defaults 8, 32 and 3)
//! `MESHCA_BIN=path` measures another `meshca` binary (to compare two builds).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_ca::proto::IstioCertificateRequest;
use meshca_ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_pki::{CacertsBundle, CertificateRequest, KeyType, PrivateKey, SpiffeId, TrustDomain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const CSR_COUNT: usize = 64;

/// Bytes of one `CreateCertificate` call on the wire with a P-256 CSR and a bearer token: the
/// request's TLS record, and the response's (the chain, HTTP/2 headers and trailers).
const ECHO_REQUEST: usize = 948;
const ECHO_RESPONSE: usize = 2100;

struct Scenario {
    ca_key: &'static str,
    csr_key: KeyType,
}

struct Outcome {
    certs: u64,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    server_cpu: Duration,
    rss_peak_kb: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--echo-server") {
        echo_server();
        return;
    }
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let secs = arg(0, 8);
    let clients = usize::try_from(arg(1, 32)).unwrap_or(32);
    let rounds = usize::try_from(arg(2, 3)).unwrap_or(3).max(1);
    let meshca = std::env::var_os("MESHCA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(meshca_bench::meshca_binary);
    assert!(
        meshca.exists(),
        "build meshca first: cargo build --release -p meshca"
    );
    assert!(
        which("cfssl"),
        "install cfssl: apt-get install golang-cfssl"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let scenarios = [
        Scenario {
            ca_key: "ecdsa-p256",
            csr_key: KeyType::EcdsaP256,
        },
        Scenario {
            ca_key: "ecdsa-p256",
            csr_key: KeyType::Rsa2048,
        },
        Scenario {
            ca_key: "rsa",
            csr_key: KeyType::EcdsaP256,
        },
    ];
    let dur = Duration::from_secs(secs);
    println!(
        "| CA key | CSR key | server | certs/s | p50 | p99 | server CPU per cert | crypto floor | CPU / floor | peak RSS | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    for (n, sc) in scenarios.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_ca(d, sc.ca_key);
        let ca_dir = d.join("c1");
        let csrs = make_csrs(sc.csr_key);
        let ca_name = if sc.ca_key == "rsa" {
            "RSA-4096"
        } else {
            "P-256"
        };
        let csr_name = sc.csr_key.to_string();
        // The first scenario also times the bare transport: the same bytes each way over
        // loopback TCP, with no TLS, HTTP/2 or crypto, as a floor under any gRPC server.
        let with_echo = n == 0;
        let (mut m, mut c, mut h, mut e) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let floor = crypto_floor(&ca_dir, &csrs);
            m.push(Row::of(
                &rt.block_on(drive_meshca(&meshca, d, &csrs, clients, false, dur)),
                floor,
            ));
            c.push(Row::of(
                &rt.block_on(drive_cfssl(d, &csrs, clients, dur)),
                floor,
            ));
            if with_echo {
                h.push(Row::of(
                    &rt.block_on(drive_meshca(&meshca, d, &csrs, clients, true, dur)),
                    floor,
                ));
                e.push(Row::of(&rt.block_on(drive_echo(clients, dur)), floor));
            }
        }
        let rate_ratios: Vec<f64> = m.iter().zip(&c).map(|(m, c)| m.rate / c.rate).collect();
        print_row(ca_name, &csr_name, "meshca serve", &Row::median(&m));
        print_row(ca_name, &csr_name, "cfssl serve", &Row::median(&c));
        if with_echo {
            print_row(
                ca_name,
                &csr_name,
                "meshca serve, health check only",
                &Row::median(&h),
            );
            print_row(
                ca_name,
                &csr_name,
                &format!("TCP exchange only ({ECHO_REQUEST} B in, {ECHO_RESPONSE} B out)"),
                &Row::median(&e),
            );
            for (what, rows) in [
                ("a bare gRPC health check", &h),
                ("a bare TCP exchange", &e),
            ] {
                let sum: Vec<f64> = rows
                    .iter()
                    .map(|r| (r.cpu_us + r.floor_us) / r.floor_us)
                    .collect();
                notes.push(format!(
                    "{ca_name} CA, {csr_name} CSRs: the crypto floor plus the server CPU of {what} = {} the crypto floor (per round: {})",
                    fmt_x(median_f(&sum)),
                    sum.iter().map(|x| fmt_x(*x)).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        notes.push(format!(
            "{ca_name} CA, {csr_name} CSRs: meshca/cfssl throughput {} (per round: {})",
            fmt_x(median_f(&rate_ratios)),
            rate_ratios
                .iter()
                .map(|x| fmt_x(*x))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    println!(
        "\nMedians of {rounds} rounds; {clients} concurrent clients, {secs} s per run, {CSR_COUNT} distinct CSRs reused; client and server share the machine's 2 cores.\n"
    );
    for n in notes {
        println!("- {n}");
    }
}

fn fmt_x(x: f64) -> String {
    format!("{x:.2}×")
}

fn median_f(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => s[n / 2],
        _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// One run's figures, or the medians of several.
#[derive(Clone, Copy)]
struct Row {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us: f64,
    floor_us: f64,
    rss_mb: f64,
    errors: u64,
}

impl Row {
    fn of(o: &Outcome, floor: Duration) -> Row {
        let mut l = o.latencies.clone();
        l.sort();
        let pct = |p: f64| {
            l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3
        };
        let cpu_us = if o.certs > 0 {
            o.server_cpu.as_secs_f64() * 1e6 / o.certs as f64
        } else {
            0.0
        };
        Row {
            rate: o.certs as f64 / o.elapsed.as_secs_f64(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            cpu_us,
            floor_us: floor.as_secs_f64() * 1e6,
            rss_mb: o.rss_peak_kb as f64 / 1024.0,
            errors: o.errors,
        }
    }

    /// Column by column: medians, except the largest RSS and all errors.
    fn median(rows: &[Row]) -> Row {
        let col = |f: fn(&Row) -> f64| median_f(&rows.iter().map(f).collect::<Vec<_>>());
        Row {
            rate: col(|r| r.rate),
            p50_ms: col(|r| r.p50_ms),
            p99_ms: col(|r| r.p99_ms),
            cpu_us: col(|r| r.cpu_us),
            floor_us: col(|r| r.floor_us),
            rss_mb: rows.iter().map(|r| r.rss_mb).fold(0.0, f64::max),
            errors: rows.iter().map(|r| r.errors).sum(),
        }
    }
}

fn print_row(ca: &str, csr: &str, server: &str, r: &Row) {
    println!(
        "| {ca} | {csr} | {server} | {:.0} | {:.2} ms | {:.2} ms | {:.0} µs | {:.0} µs | {:.2}× | {:.1} MB | {} |",
        r.rate,
        r.p50_ms,
        r.p99_ms,
        r.cpu_us,
        r.floor_us,
        r.cpu_us / r.floor_us,
        r.rss_mb,
        r.errors
    );
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn make_ca(dir: &Path, key: &str) {
    let settings = meshca_certs::Settings {
        rootca_key_type: key.into(),
        intermediate_key_type: key.into(),
        ..Default::default()
    };
    meshca_certs::run(
        dir,
        &settings,
        &[meshca_certs::Target::Cacerts("c1".into())],
        false,
        time::OffsetDateTime::now_utc(),
        &|_| {},
    )
    .unwrap();
}

fn make_csrs(kt: KeyType) -> Vec<(String, String)> {
    (0..CSR_COUNT)
        .map(|i| {
            let key = PrivateKey::generate(kt).unwrap();
            let id = format!("spiffe://cluster.local/ns/load/sa/sa{i}");
            (
                meshca_pki::make_csr_pem(&key, std::slice::from_ref(&id)).unwrap(),
                format!("sa{i}"),
            )
        })
        .collect()
}

/// Parse and verify a CSR, build and sign its certificate: the work no CA can skip.
fn crypto_floor(ca_dir: &Path, csrs: &[(String, String)]) -> Duration {
    let files = meshca_store::read_bundle_dir(ca_dir).unwrap();
    let bundle = CacertsBundle::from_files(&files, "c1", time::OffsetDateTime::now_utc()).unwrap();
    let ca = meshca_ca::issuer::LoadedCa::new(bundle, Vec::new());
    let td = TrustDomain::new("cluster.local").unwrap();
    let policy = meshca_ca::issuer::IssuancePolicy::default();
    let now = time::OffsetDateTime::now_utc();
    let run = |n: usize| {
        let start = Instant::now();
        for i in 0..n {
            let (csr, sa) = &csrs[i % csrs.len()];
            let req = CertificateRequest::from_pem(csr.as_bytes(), "csr").unwrap();
            let id = SpiffeId::workload(&td, "load", sa).unwrap();
            let _ = ca.issue(&req, &id, 0, &policy, now).unwrap();
        }
        start.elapsed() / u32::try_from(n).unwrap_or(1)
    };
    run(50);
    let mut samples: Vec<Duration> = (0..5).map(|_| run(400)).collect();
    samples.sort();
    samples[2]
}

fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// utime + stime of a process, from /proc.
fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clk_tck() as f64)
}

/// Peak resident memory of a process in kB.
fn proc_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Guard(Child);

/// Starts a server that prints `listening on ADDR` first; returns it (killed on drop), its pid and
/// the address.
fn start_listening(mut cmd: Command) -> (Guard, u32, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let pid = child.id();
    (Guard(child), pid, addr)
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn drive_meshca(
    bin: &Path,
    d: &Path,
    csrs: &[(String, String)],
    clients: usize,
    health_only: bool,
    dur: Duration,
) -> Outcome {
    let jwt_pem = PrivateKey::generate(KeyType::EcdsaP256)
        .unwrap()
        .to_pkcs8_pem();
    let key = meshca_token::SigningKey::from_pem(jwt_pem.as_bytes(), "jwt").unwrap();
    std::fs::write(
        d.join("jwks.json"),
        meshca_token::Jwks::from_keys([key.public_jwk()]).to_json(),
    )
    .unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--cacerts"])
        .arg(d.join("c1"))
        .arg("--jwt-issuer")
        .arg(format!("bench={}", d.join("jwks.json").display()))
        .env("MESHCA_LOG", "warn");
    let (_guard, pid, addr) = start_listening(cmd);
    let root = std::fs::read_to_string(d.join("root-cert.pem")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let tokens: Vec<String> = csrs
        .iter()
        .map(|(_, sa)| {
            meshca_token::mint(
                &meshca_token::ServiceAccountClaims {
                    issuer: "bench".into(),
                    audiences: vec!["istio-ca".into()],
                    namespace: "load".into(),
                    service_account: sa.clone(),
                    issued_at: now,
                    expires_at: now + time::Duration::hours(1),
                },
                &key,
            )
            .unwrap()
        })
        .collect();
    let mut channels = Vec::new();
    for _ in 0..clients {
        let tls = ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&root))
            .domain_name("istiod.istio-system.svc");
        let ch = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        channels.push(ch);
    }
    let work = Arc::new((csrs.to_vec(), tokens));
    if health_only {
        let conns = channels.into_iter().map(HealthClient::new).collect();
        return warm_then_measure(pid, conns, work, dur, health_call).await;
    }
    let conns = channels
        .into_iter()
        .map(IstioCertificateServiceClient::new)
        .collect();
    warm_then_measure(pid, conns, work, dur, grpc_call).await
}

/// The standard health check: a call through the same TLS, HTTP/2 and gRPC layers with no CA
/// work behind it.
async fn health_call(c: &mut HealthClient<Channel>, _: &Work, _: usize) -> bool {
    c.check(HealthCheckRequest {
        service: String::new(),
    })
    .await
    .is_ok()
}

type Work = Arc<(Vec<(String, String)>, Vec<String>)>;

async fn grpc_call(c: &mut IstioCertificateServiceClient<Channel>, work: &Work, i: usize) -> bool {
    let (csr, _) = &work.0[i % work.0.len()];
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.clone(),
        validity_duration: 0,
        metadata: None,
    });
    let token = &work.1[i % work.1.len()];
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    c.create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain.len() >= 2)
        .unwrap_or(false)
}

/// Runs `call` from every client in a loop for `dur`; returns (ok, errors, elapsed, latencies).
async fn load<C, F>(
    clients: Vec<C>,
    work: Work,
    dur: Duration,
    call: F,
) -> (u64, u64, Duration, Vec<Duration>)
where
    C: Send + 'static,
    F: for<'a> AsyncCall<'a, C> + Copy + Send + Sync + 'static,
{
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for (n, mut c) in clients.into_iter().enumerate() {
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut err, mut lat) = (0u64, 0u64, Vec::new());
            let mut i = n * 7;
            while Instant::now() < deadline {
                let t = Instant::now();
                if call.call(&mut c, &work, i).await {
                    ok += 1;
                    lat.push(t.elapsed());
                } else {
                    err += 1;
                }
                i += 1;
            }
            (ok, err, lat)
        }));
    }
    let (mut ok, mut err, mut lat) = (0, 0, Vec::new());
    for t in tasks {
        let (o, e, l) = t.await.unwrap();
        ok += o;
        err += e;
        lat.extend(l);
    }
    (ok, err, start.elapsed(), lat)
}

/// Half a second of warm-up, then `dur` of measured load, with the server's CPU time read from
/// /proc around the measured part.
async fn warm_then_measure<C, F>(
    pid: u32,
    conns: Vec<C>,
    work: Work,
    dur: Duration,
    call: F,
) -> Outcome
where
    C: Clone + Send + 'static,
    F: for<'a> AsyncCall<'a, C> + Copy + Send + Sync + 'static,
{
    let _ = load(
        conns.clone(),
        work.clone(),
        Duration::from_millis(500),
        call,
    )
    .await;
    let cpu0 = proc_cpu(pid);
    let (certs, errors, elapsed, latencies) = load(conns, work, dur, call).await;
    let server_cpu = proc_cpu(pid).saturating_sub(cpu0);
    Outcome {
        certs,
        errors,
        elapsed,
        latencies,
        server_cpu,
        rss_peak_kb: proc_hwm_kb(pid),
    }
}

/// An async call on a client, nameable in a trait bound.
trait AsyncCall<'a, C>: Send {
    type Fut: std::future::Future<Output = bool> + Send + 'a;
    fn call(self, c: &'a mut C, work: &'a Work, i: usize) -> Self::Fut;
}

impl<'a, C: 'a, F, Fut> AsyncCall<'a, C> for F
where
    F: FnOnce(&'a mut C, &'a Work, usize) -> Fut + Send,
    Fut: std::future::Future<Output = bool> + Send + 'a,
{
    type Fut = Fut;
    fn call(self, c: &'a mut C, work: &'a Work, i: usize) -> Fut {
        self(c, work, i)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn drive_cfssl(
    d: &Path,
    csrs: &[(String, String)],
    clients: usize,
    dur: Duration,
) -> Outcome {
    let config = r#"{"signing":{"default":{"expiry":"24h","usages":["digital signature","key encipherment","server auth","client auth"]}}}"#;
    std::fs::write(d.join("cfssl.json"), config).unwrap();
    let port = free_port();
    let child = Command::new("cfssl")
        .args([
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            "-ca",
        ])
        .arg(d.join("c1/ca-cert.pem"))
        .arg("-ca-key")
        .arg(d.join("c1/ca-key.pem"))
        .arg("-config")
        .arg(d.join("cfssl.json"))
        .arg("-loglevel")
        .arg("5")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _guard = Guard(child);
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if TcpStream::connect(&addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bodies: Vec<String> = csrs
        .iter()
        .map(|(csr, _)| serde_json::json!({ "certificate_request": csr }).to_string())
        .collect();
    let work: Work = Arc::new((csrs.to_vec(), bodies));
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(HttpConn {
            addr: addr.clone(),
            stream: None,
        });
    }
    warm_then_measure(pid, conns, work, dur, cfssl_call).await
}

/// A keep-alive HTTP/1.1 connection to cfssl, reopened when the server closes it.
struct HttpConn {
    addr: String,
    stream: Option<TcpStream>,
}

impl Clone for HttpConn {
    fn clone(&self) -> Self {
        HttpConn {
            addr: self.addr.clone(),
            stream: None,
        }
    }
}

impl HttpConn {
    /// The open connection, opened (without Nagle's delay) if there is none.
    async fn stream(&mut self) -> Option<&mut TcpStream> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr).await.ok()?;
            let _ = s.set_nodelay(true);
            self.stream = Some(s);
        }
        self.stream.as_mut()
    }
}

async fn cfssl_call(c: &mut HttpConn, work: &Work, i: usize) -> bool {
    let body = &work.1[i % work.1.len()];
    let req = format!(
        "POST /api/v1/cfssl/sign HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        c.addr,
        body.len()
    );
    for _attempt in 0..2 {
        let Some(s) = c.stream().await else {
            return false;
        };
        if s.write_all(req.as_bytes()).await.is_err() {
            c.stream = None;
            continue;
        }
        match read_response(s).await {
            Some(text) => return text.contains("\"success\":true"),
            None => c.stream = None,
        }
    }
    false
}

async fn read_response(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())?;
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The bare-transport server: for each connection, read [`ECHO_REQUEST`] bytes and write
/// [`ECHO_RESPONSE`] bytes, on a tokio runtime like the real server's.
fn echo_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut req = vec![0u8; ECHO_REQUEST];
                let resp = vec![1u8; ECHO_RESPONSE];
                while s.read_exact(&mut req).await.is_ok() {
                    if s.write_all(&resp).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Drives the bare-transport server (this binary with `--echo-server`) like the others.
async fn drive_echo(clients: usize, dur: Duration) -> Outcome {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("--echo-server");
    let (_guard, pid, addr) = start_listening(cmd);
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(HttpConn {
            addr: addr.clone(),
            stream: None,
        });
    }
    let work: Work = Arc::new((Vec::new(), Vec::new()));
    warm_then_measure(pid, conns, work, dur, echo_call).await
}

async fn echo_call(c: &mut HttpConn, _: &Work, _: usize) -> bool {
    let Some(s) = c.stream().await else {
        return false;
    };
    let req = [2u8; ECHO_REQUEST];
    let mut resp = [0u8; ECHO_RESPONSE];
    let ok = s.write_all(&req).await.is_ok() && s.read_exact(&mut resp).await.is_ok();
    if !ok {
        c.stream = None;
    }
    ok
}
