//! Load generator for `meshca serve` beside the real istiod's CA (`pilot-discovery discovery`,
//! built by `scripts/peers`), both against one real kube-apiserver on loopback
//! (`meshca_testkit::kube::ControlPlane`).
//!
//! Both servers sign with the same intermediate (made by `meshca certs`, plugged into istiod as
//! `ROOT_CA_DIR`), get the same CSRs from the same number of clients, and authenticate them the
//! same way, in two modes:
//! - **TokenReview**: each call carries the TokenRequest token of the CSR's service account
//!   (64 service accounts, 16 tokens each) and `clusterid` metadata, as istio-agent sends them; both
//!   servers review the token at the API server. meshca runs twice: with its review cache
//!   (`--review-cache-ttl 10s`, the default) and without it (`0`). istiod runs twice: as it
//!   ships (its Kubernetes client limited to 80 requests a second, burst 160) and with that
//!   limit lifted (`--kubernetesApiQPS`, `--kubernetesApiBurst`).
//! - **mTLS**: each client presents a workload certificate issued from the same CA to the
//!   service account of its CSR, and no token.
//!
//! Each run starts a fresh server, warms it up, and measures certificates per second, p50/p99
//! latency, the server's CPU time per certificate and its peak memory (`/proc`), the CPU time of
//! the API server and etcd per certificate, and the TokenReviews the API server counted per
//! certificate. Each figure is the median of several rounds in which the servers take turns.
//! Prints Markdown tables.
//!
//! Usage: istiod-load [SECONDS_PER_RUN] [CLIENTS] [ROUNDS] [CA_KEY]   (defaults 8, 32, 5 and
//! ecdsa-p256; CA_KEY as `meshca certs` spells it: ecdsa-p256, rsa).
//! `MESHCA_BIN=path` measures another `meshca` binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_bench::load::{Beside, Row, Work, fmt_x, median_f, warm_then_measure};
use meshca_bench::pki::{
    CACERTS, ClientIdentity, NAMESPACE, TRUST_DOMAIN, client_identity, make_ca, make_csrs,
    service_account,
};
use meshca_bench::server::{Guard, start_listening};
use meshca_ca::proto::IstioCertificateRequest;
use meshca_ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_pki::KeyType;
use meshca_testkit::istio::{
    DiscoveryPorts, install_istio_base, pilot_discovery_bin, pilot_discovery_loopback_flags,
};
use meshca_testkit::kube::ControlPlane;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// CSRs and service accounts: one each per workload.
const WORKLOADS: usize = 64;
/// Tokens per service account: every call's token is one of `WORKLOADS × TOKENS_PER_WORKLOAD`
/// distinct tokens, as many pods of each service account would hold, so that two calls in flight
/// at once rarely carry the same token (meshca shares the review of a token in flight).
const TOKENS_PER_WORKLOAD: usize = 16;
const CLUSTER: &str = "cluster1";
const AUDIENCE: &str = "istio-ca";
/// The name istiod's serving certificate carries, and meshca's by default.
const SERVER_NAME: &str = "istiod.istio-system.svc";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    TokenReview,
    ClientCert,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Meshca { review_cache: bool },
    Istiod { client_limit: bool },
}

impl Server {
    fn name(self, auth: Auth) -> &'static str {
        match (self, auth) {
            (Server::Meshca { .. }, Auth::ClientCert) => "meshca serve",
            (Server::Istiod { .. }, Auth::ClientCert) => "istiod",
            (Server::Meshca { review_cache: true }, _) => "meshca serve, review cache 10 s",
            (
                Server::Meshca {
                    review_cache: false,
                },
                _,
            ) => "meshca serve, no review cache",
            (Server::Istiod { client_limit: true }, _) => "istiod, client limit 80/s (default)",
            (
                Server::Istiod {
                    client_limit: false,
                },
                _,
            ) => "istiod, client limit lifted",
        }
    }
}

/// The runs of one round, in order: the servers take turns.
const RUNS: [(Auth, Server); 6] = [
    (Auth::TokenReview, Server::Meshca { review_cache: true }),
    (
        Auth::TokenReview,
        Server::Istiod {
            client_limit: false,
        },
    ),
    (
        Auth::TokenReview,
        Server::Meshca {
            review_cache: false,
        },
    ),
    (Auth::TokenReview, Server::Istiod { client_limit: true }),
    (Auth::ClientCert, Server::Meshca { review_cache: true }),
    (Auth::ClientCert, Server::Istiod { client_limit: true }),
];

/// Everything a run needs, made once.
struct Bench {
    cp: ControlPlane,
    dir: tempfile::TempDir,
    meshca: PathBuf,
    root_pem: String,
    csrs: Vec<(String, String)>,
    tokens: Vec<String>,
    identities: Vec<ClientIdentity>,
    clients: usize,
    dur: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let secs = arg(0, 8);
    let clients = usize::try_from(arg(1, 32))
        .unwrap_or(32)
        .clamp(1, WORKLOADS);
    let rounds = usize::try_from(arg(2, 5)).unwrap_or(5).max(1);
    let ca_key = args.get(3).cloned().unwrap_or_else(|| "ecdsa-p256".into());
    let meshca = std::env::var_os("MESHCA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(meshca_bench::meshca_binary);
    assert!(
        meshca.exists(),
        "build meshca first: cargo build --release -p meshca"
    );
    assert!(
        pilot_discovery_bin().exists(),
        "build the Istio peers first: scripts/peers"
    );

    let began = Instant::now();
    let bench = setup(meshca, &ca_key, clients, Duration::from_secs(secs));
    eprintln!("setup took {:.1} s", began.elapsed().as_secs_f64());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for (auth, server) in RUNS {
        rt.block_on(sanity_check(&bench, auth, server));
    }
    let mut rows: Vec<Vec<Row>> = vec![Vec::new(); RUNS.len()];
    for round in 0..rounds {
        for (n, (auth, server)) in RUNS.into_iter().enumerate() {
            let row = rt.block_on(run(&bench, auth, server));
            eprintln!(
                "round {} {}: {:.0}/s, {:.0} µs CPU, {} errors",
                round + 1,
                server.name(auth),
                row.rate,
                row.cpu_us,
                row.errors
            );
            rows[n].push(row);
        }
    }
    report(&bench, &ca_key, rounds, secs, &rows);
}

/// The control plane with Istio's CRDs and the workloads' service accounts, their tokens, the
/// CA, the CSRs and the client certificates.
fn setup(meshca: PathBuf, ca_key: &str, clients: usize, dur: Duration) -> Bench {
    let cp = ControlPlane::start(&[CLUSTER]);
    install_istio_base(&cp, CLUSTER);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n");
    for i in 0..WORKLOADS {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {}\n  namespace: {NAMESPACE}\n",
            service_account(i)
        ));
    }
    let manifest = d.join("workloads.yaml");
    fs::write(&manifest, yaml).unwrap();
    cp.kubectl_ok([
        "--context".as_ref(),
        CLUSTER.as_ref(),
        "apply".as_ref(),
        "-f".as_ref(),
        manifest.as_os_str(),
    ]);
    let tokens = request_tokens(&cp);
    make_ca(d, ca_key);
    let root_pem = fs::read_to_string(d.join(CACERTS).join("root-cert.pem")).unwrap();
    let csrs = make_csrs(KeyType::EcdsaP256, WORKLOADS);
    let identities = (0..clients).map(|i| client_identity(d, i)).collect();
    Bench {
        cp,
        dir,
        meshca,
        root_pem,
        csrs,
        tokens,
        identities,
        clients,
        dur,
    }
}

/// `WORKLOADS × TOKENS_PER_WORKLOAD` TokenRequest tokens for `AUDIENCE`, token `i` for
/// [`service_account`]`(i % WORKLOADS)`, so that call `i` sends CSR `i % WORKLOADS` with token
/// `i % tokens` of the same service account.
fn request_tokens(cp: &ControlPlane) -> Vec<String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = meshca_kube::clusters::context_config(
            Some(cp.kubeconfig()),
            Some(CLUSTER),
            "the bench's tokens",
        )
        .await
        .unwrap();
        let client = meshca_kube::clusters::client(config).unwrap();
        let api: kube::Api<ServiceAccount> = kube::Api::namespaced(client, NAMESPACE);
        let mut tokens = Vec::new();
        for i in 0..WORKLOADS * TOKENS_PER_WORKLOAD {
            let request = TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: Some(vec![AUDIENCE.to_owned()]),
                    expiration_seconds: Some(3600),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let answer = api
                .create_token_request(
                    &service_account(i % WORKLOADS),
                    &kube::api::PostParams::default(),
                    &request,
                )
                .await
                .unwrap();
            tokens.push(answer.status.and_then(|s| s.token).unwrap());
        }
        tokens
    })
}

/// A server being measured: killed when dropped.
struct Running {
    _guard: Guard,
    pid: u32,
    addr: String,
}

fn start(bench: &Bench, server: Server, run_dir: &Path) -> Running {
    match server {
        Server::Meshca { review_cache } => start_meshca(bench, review_cache),
        Server::Istiod { client_limit } => {
            let lifted = ["--kubernetesApiQPS=1000000", "--kubernetesApiBurst=1000000"];
            start_istiod(
                &bench.cp,
                run_dir,
                &bench.dir.path().join(CACERTS),
                if client_limit { &[] } else { &lifted },
            )
        }
    }
}

fn start_meshca(bench: &Bench, review_cache: bool) -> Running {
    let mut cmd = Command::new(&bench.meshca);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--cacerts"])
        .arg(bench.dir.path().join(CACERTS))
        .arg("--token-review")
        .arg("--kubeconfig")
        .arg(bench.cp.kubeconfig())
        .args(["--context", CLUSTER, "--cluster-id", CLUSTER])
        .args(["--audience", AUDIENCE])
        .args(["--review-cache-ttl", if review_cache { "10s" } else { "0" }])
        .env("MESHCA_LOG", "warn");
    let (guard, pid, addr) = start_listening(cmd);
    Running {
        _guard: guard,
        pid,
        addr,
    }
}

/// istiod as `meshca_testkit::istio::Istiod::start` starts it (a kubeconfig of the one
/// context, cluster ID, `ROOT_CA_DIR`, every listener on 127.0.0.1), with `extra` flags, which
/// that function does not take; ready once `/ready` answers and the CA's port accepts.
fn start_istiod(cp: &ControlPlane, dir: &Path, cacerts: &Path, extra: &[&str]) -> Running {
    fs::create_dir_all(dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let minified = cp.kubectl_ok([
        "config",
        "view",
        "--minify",
        "--flatten",
        "--context",
        CLUSTER,
    ]);
    fs::write(&kubeconfig, minified).unwrap();
    let held: Vec<std::net::TcpListener> = (0..6)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let p: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    drop(held);
    let ports = DiscoveryPorts {
        http: p[0],
        grpc: p[1],
        secure_grpc: p[2],
        monitoring: p[3],
        https: p[4],
        ctrlz: p[5],
    };
    let log_path = dir.join("pilot-discovery.log");
    let log = fs::File::create(&log_path).unwrap();
    let child = Command::new(pilot_discovery_bin())
        .arg("discovery")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(pilot_discovery_loopback_flags(ports))
        .args(extra)
        .current_dir(dir)
        .env_remove("KUBECONFIG")
        .env("POD_NAMESPACE", "istio-system")
        .env("POD_NAME", "istiod-0")
        .env("CLUSTER_ID", CLUSTER)
        .env("ROOT_CA_DIR", cacerts)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut guard = Guard(child);
    let started = Instant::now();
    let ready = || {
        http_ok(ports.http, "/ready")
            && std::net::TcpStream::connect(("127.0.0.1", ports.secure_grpc)).is_ok()
    };
    while !ready() {
        let log = || fs::read_to_string(&log_path).unwrap_or_default();
        if let Ok(Some(status)) = guard.0.try_wait() {
            panic!("istiod exited ({status}):\n{}", log());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "istiod not ready after 120 s:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Running {
        _guard: guard,
        pid,
        addr: format!("127.0.0.1:{}", ports.secure_grpc),
    }
}

/// Whether `GET path` on 127.0.0.1:`port` answers 200.
fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reply = String::new();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .is_ok()
        && s.read_to_string(&mut reply).is_ok()
        && (reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"))
}

async fn connect(bench: &Bench, addr: &str, identity: Option<&ClientIdentity>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&bench.root_pem))
        .domain_name(SERVER_NAME);
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.chain_pem, &id.key_pem));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e:?}"))
}

type CaClient = IstioCertificateServiceClient<Channel>;

/// The request for CSR `i` (of `WORKLOADS`), with the metadata istio-agent sends
/// (`clusterid`), and with token `i` (of the service account of CSR `i`) when asked.
fn request(work: &Work, i: usize, token: bool) -> tonic::Request<IstioCertificateRequest> {
    let (csr, _) = &work.0[i % work.0.len()];
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.clone(),
        validity_duration: 0,
        metadata: None,
    });
    let meta = req.metadata_mut();
    meta.insert("clusterid", CLUSTER.parse().unwrap());
    if token {
        let token = &work.1[i % work.1.len()];
        meta.insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    req
}

/// A client in TokenReview mode: client `n` of `clients` sends, on its `k`-th call, token
/// `n + clients × k` (wrapping) and the CSR of that token's service account. No two clients
/// ever send the same token: two calls in flight with one token would share one review at
/// meshca, and, once they had, the two clients would stay in step.
#[derive(Clone)]
struct TokenClient {
    ca: CaClient,
    n: usize,
    clients: usize,
    k: usize,
}

async fn token_call(c: &mut TokenClient, work: &Work, _: usize) -> bool {
    let per_client = (work.1.len() / c.clients).max(1);
    let t = c.n + c.clients * (c.k % per_client);
    c.k += 1;
    c.ca.create_certificate(request(work, t, true))
        .await
        .map(|r| r.into_inner().cert_chain.len() >= 2)
        .unwrap_or(false)
}

/// mTLS mode: a client always sends the CSR of the workload whose certificate it presents.
async fn cert_call(c: &mut (CaClient, usize), work: &Work, _: usize) -> bool {
    c.0.create_certificate(request(work, c.1, false))
        .await
        .map(|r| r.into_inner().cert_chain.len() >= 2)
        .unwrap_or(false)
}

/// One call each way before any measuring: the server issues workload 5's identity to a
/// caller holding its token or its certificate, chained to the shared root.
async fn sanity_check(bench: &Bench, auth: Auth, server: Server) {
    let run_dir = bench.dir.path().join("sanity");
    let running = start(bench, server, &run_dir);
    let work: Work = Arc::new((bench.csrs.clone(), bench.tokens.clone()));
    let identity = (auth == Auth::ClientCert).then(|| &bench.identities[5]);
    let mut client = CaClient::new(connect(bench, &running.addr, identity).await);
    let chain = client
        .create_certificate(request(&work, 5, auth == Auth::TokenReview))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", server.name(auth)))
        .into_inner()
        .cert_chain;
    let leaf = meshca_pki::Certificate::one_from_pem(chain[0].as_bytes(), "leaf").unwrap();
    let want = format!(
        "spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{}",
        service_account(5)
    );
    assert_eq!(leaf.uris(), [want], "{}", server.name(auth));
    assert_eq!(
        chain.last().map(|r| r.trim()),
        Some(bench.root_pem.trim()),
        "{}: the root comes last",
        server.name(auth)
    );
    let _ = fs::remove_dir_all(run_dir);
}

async fn run(bench: &Bench, auth: Auth, server: Server) -> Row {
    let run_dir = bench.dir.path().join("run");
    let running = start(bench, server, &run_dir);
    let work: Work = Arc::new((bench.csrs.clone(), bench.tokens.clone()));
    let procs: Vec<u32> = bench.cp.processes().into_iter().map(|(_, p)| p).collect();
    let reviews = || bench.cp.token_reviews(CLUSTER);
    let beside = Beside {
        pids: &procs,
        count: Some(&reviews),
    };
    let outcome = match auth {
        Auth::TokenReview => {
            let mut conns = Vec::new();
            for n in 0..bench.clients {
                conns.push(TokenClient {
                    ca: CaClient::new(connect(bench, &running.addr, None).await),
                    n,
                    clients: bench.clients,
                    k: 0,
                });
            }
            warm_then_measure(running.pid, beside, conns, work, bench.dur, token_call).await
        }
        Auth::ClientCert => {
            let mut conns = Vec::new();
            for (n, id) in bench.identities.iter().enumerate() {
                let ch = connect(bench, &running.addr, Some(id)).await;
                conns.push((CaClient::new(ch), n));
            }
            warm_then_measure(running.pid, beside, conns, work, bench.dur, cert_call).await
        }
    };
    drop(running);
    let _ = fs::remove_dir_all(run_dir);
    Row::of(&outcome, Duration::ZERO)
}

fn report(bench: &Bench, ca_key: &str, rounds: usize, secs: u64, rows: &[Vec<Row>]) {
    let ca = if ca_key == "rsa" { "RSA-4096" } else { "P-256" };
    println!(
        "| authentication | server | certs/s | p50 | p99 | server CPU per cert | API server + etcd CPU per cert | TokenReviews per cert | peak RSS | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (n, (auth, server)) in RUNS.into_iter().enumerate() {
        let r = Row::median(&rows[n]);
        let auth_name = match auth {
            Auth::TokenReview => "TokenReview",
            Auth::ClientCert => "mTLS client cert",
        };
        println!(
            "| {auth_name} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.0} µs | {:.0} µs | {:.3} | {:.1} MB | {} |",
            server.name(auth),
            r.rate,
            r.p50_ms,
            r.p99_ms,
            r.cpu_us,
            r.beside_cpu_us,
            r.counted_per_cert,
            r.rss_mb,
            r.errors
        );
    }
    println!(
        "\n{ca} CA, P-256 CSRs. Medians of {rounds} rounds; {} concurrent clients, {secs} s per run after a {} ms warm-up, {WORKLOADS} CSRs and service accounts, {} tokens; servers, API server, etcd and clients share the machine's cores.\n",
        bench.clients,
        meshca_bench::load::WARM_UP.as_millis(),
        bench.tokens.len()
    );
    let at = |auth: Auth, server: Server| {
        RUNS.iter()
            .position(|r| *r == (auth, server))
            .map(|n| &rows[n])
            .unwrap()
    };
    let istiod = Server::Istiod {
        client_limit: false,
    };
    let pairs = [
        (
            "TokenReview, meshca with its review cache against istiod with its client limit lifted",
            at(Auth::TokenReview, Server::Meshca { review_cache: true }),
            at(Auth::TokenReview, istiod),
        ),
        (
            "TokenReview, meshca without its review cache against istiod with its client limit lifted",
            at(
                Auth::TokenReview,
                Server::Meshca {
                    review_cache: false,
                },
            ),
            at(Auth::TokenReview, istiod),
        ),
        (
            "TokenReview, meshca with its review cache against istiod as it ships",
            at(Auth::TokenReview, Server::Meshca { review_cache: true }),
            at(Auth::TokenReview, Server::Istiod { client_limit: true }),
        ),
        (
            "mTLS",
            at(Auth::ClientCert, Server::Meshca { review_cache: true }),
            at(Auth::ClientCert, Server::Istiod { client_limit: true }),
        ),
    ];
    for (what, m, i) in pairs {
        let ratio = |f: fn(&Row) -> f64| -> Vec<f64> {
            m.iter().zip(i).map(|(m, i)| f(m) / f(i)).collect()
        };
        let shown = |v: &[f64]| {
            format!(
                "{} (rounds: {})",
                fmt_x(median_f(v)),
                v.iter().map(|x| fmt_x(*x)).collect::<Vec<_>>().join(", ")
            )
        };
        println!(
            "- {what}: certs/s {}; server CPU per cert {}; peak RSS {}",
            shown(&ratio(|r| r.rate)),
            shown(&ratio(|r| r.cpu_us)),
            shown(&ratio(|r| r.rss_mb)),
        );
    }
}
