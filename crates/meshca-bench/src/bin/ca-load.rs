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

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_bench::load::{Beside, Outcome, Row, Work, fmt_x, median_f, warm_then_measure};
use meshca_bench::pki::{NAMESPACE, make_ca, make_csrs};
use meshca_bench::server::{Guard, free_port, start_listening, which};
use meshca_ca::proto::IstioCertificateRequest;
use meshca_ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_pki::{CertificateRequest, KeyType, PrivateKey, SpiffeId, TrustDomain};
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
        let csrs = make_csrs(sc.csr_key, CSR_COUNT);
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
            let floor = crypto_floor(d, &csrs);
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

/// Parse and verify a CSR, build and sign its certificate: the work no CA can skip.
fn crypto_floor(dir: &Path, csrs: &[(String, String)]) -> Duration {
    let ca = meshca_bench::pki::load_ca(dir);
    let td = TrustDomain::new(meshca_bench::pki::TRUST_DOMAIN).unwrap();
    let policy = meshca_ca::issuer::IssuancePolicy::default();
    let now = time::OffsetDateTime::now_utc();
    let run = |n: usize| {
        let start = Instant::now();
        for i in 0..n {
            let (csr, sa) = &csrs[i % csrs.len()];
            let req = CertificateRequest::from_pem(csr.as_bytes(), "csr").unwrap();
            let id = SpiffeId::workload(&td, NAMESPACE, sa).unwrap();
            let _ = ca.issue(&req, &id, 0, &policy, now).unwrap();
        }
        start.elapsed() / u32::try_from(n).unwrap_or(1)
    };
    run(50);
    let mut samples: Vec<Duration> = (0..5).map(|_| run(400)).collect();
    samples.sort();
    samples[2]
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
                    namespace: NAMESPACE.into(),
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
        return warm_then_measure(pid, Beside::default(), conns, work, dur, health_call).await;
    }
    let conns = channels
        .into_iter()
        .map(IstioCertificateServiceClient::new)
        .collect();
    warm_then_measure(pid, Beside::default(), conns, work, dur, grpc_call).await
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
    warm_then_measure(pid, Beside::default(), conns, work, dur, cfssl_call).await
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
    warm_then_measure(pid, Beside::default(), conns, work, dur, echo_call).await
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
