//! Peers that misbehave, through the real binaries. `meshca agent`, holding a valid certificate,
//! is pointed at a CA address that accepts and never answers, resets the connection, answers
//! garbage or an HTTP/1 response, or serves TLS under another root: it must say so in one line
//! naming the address, retry spaced by its backoff (connections are counted at the address),
//! leave its cert-chain.pem, key.pem and root-cert.pem byte for byte as they were, and renew
//! once a real `meshca serve` takes the address. `meshca trust` with a cfssl signer that is
//! down, or that signs a certificate for another key than the CSR's, must fail with the signer
//! named, write nothing to the store, and (`trust run`) retry spaced by its backoff.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshca_bench::pki::{make_ca, service_account};
use meshca_bench::serve::{JwtIssuer, serve_command};
use meshca_bench::server::free_port;
use meshca_testkit::cfssl::Cfssl;
use meshca_testkit::process::Process;
use meshca_testkit::{openssl, run_in, snapshot};

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

/// How long a misbehaving CA is watched: with the agent's backoff of 1 s, 2 s, 4 s, ... about
/// three attempts fall in it.
const WINDOW: Duration = Duration::from_secs(5);

/// The agent's `--ca-timeout` against the CA that never answers, so that it costs a second.
const HANG_TIMEOUT: &str = "1s";

/// The agent's `--ca-timeout` otherwise: ample for a real CA on a busy machine, and never
/// reached by a peer that answers at once.
const CA_TIMEOUT: &str = "10s";

/// The longest a process may take to come up, or an agent to renew once a real CA is back.
const BOUND: Duration = Duration::from_secs(30);

/// What a misbehaving CA address does with each connection.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Accepts and never answers, holding the connection open.
    Hang,
    /// Accepts, waits for the client's first bytes and closes without reading them: with unread
    /// data in its receive buffer the socket is closed with a TCP RST, not a FIN (RFC 1122
    /// 4.2.2.13; Linux does so), as SO_LINGER 0 would, without an unsafe setsockopt.
    Reset,
    /// Reads the client's first bytes and answers bytes that are no protocol at all.
    Garbage,
    /// Reads the client's first bytes and answers an HTTP/1.1 error, as a web server would.
    Http1,
    /// Passes the connection on to another server (a CA under another root).
    Forward(SocketAddr),
}

/// A loopback listener that misbehaves, and when each connection came.
struct Peer {
    port: u16,
    accepted: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Peer {
    fn start(how: Misbehaviour) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut held = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            accepted.lock().unwrap().push(Instant::now());
                            s.set_nonblocking(false).unwrap();
                            misbehave(s, how, &mut held);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                // The listener and every held connection close here.
            })
        };
        Peer {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the listener (the port is free again) and returns when each connection came.
    fn stop(mut self) -> Vec<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.accepted.lock().unwrap().clone()
    }
}

fn misbehave(mut s: TcpStream, how: Misbehaviour, held: &mut Vec<TcpStream>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    match how {
        Misbehaviour::Hang => held.push(s),
        Misbehaviour::Reset => {
            std::thread::spawn(move || {
                let _ = s.peek(&mut [0u8; 1]);
                drop(s);
            });
        }
        Misbehaviour::Garbage | Misbehaviour::Http1 => {
            std::thread::spawn(move || {
                let _ = s.read(&mut [0u8; 16 * 1024]);
                let answer: &[u8] = match how {
                    Misbehaviour::Http1 => {
                        b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 12\r\nconnection: close\r\n\r\nbad request\n"
                    }
                    _ => b"\x00\xff\x13\x37 this is no protocol at all \xde\xad\xbe\xef\r\n\r\n",
                };
                let _ = s.write_all(answer);
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = s.read(&mut [0u8; 1024]);
            });
        }
        Misbehaviour::Forward(to) => {
            std::thread::spawn(move || {
                let Ok(back) = TcpStream::connect(to) else {
                    return;
                };
                let (mut a, mut b) = (s.try_clone().unwrap(), back.try_clone().unwrap());
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Write);
                });
                let (mut s, mut back) = (s, back);
                let _ = std::io::copy(&mut back, &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    }
}

/// A CA folder, its JWT issuer and the agents' tokens, all in `d`.
struct Mesh {
    dir: PathBuf,
    issuer: JwtIssuer,
}

impl Mesh {
    fn new(d: &Path) -> Mesh {
        make_ca(d, "ecdsa-p256");
        Mesh {
            dir: d.to_owned(),
            issuer: JwtIssuer::new(d),
        }
    }

    /// `meshca serve` on `listen` (`127.0.0.1:0` for any port); returns it and its address.
    fn serve(&self, name: &str, listen: &str) -> (Process, String) {
        let p = Process::start(
            &self.dir,
            name,
            serve_command(Path::new(MESHCA), &self.dir, &self.issuer, listen),
        );
        let addr = p.word_after("listening on ", BOUND);
        (p, addr)
    }

    /// Writes workload `n`'s token file and returns its path.
    fn token_file(&self, n: usize) -> PathBuf {
        let f = self.dir.join(format!("token-{n}"));
        std::fs::write(
            &f,
            self.issuer
                .token(&service_account(n), time::Duration::hours(1)),
        )
        .unwrap();
        f
    }

    /// The `meshca agent` arguments for workload `n` against `ca`, writing to `out`, each
    /// request to the CA taking at most `timeout`.
    fn agent_args(&self, n: usize, ca: &str, out: &Path, timeout: &str) -> Vec<String> {
        [
            "agent",
            "--ca-addr",
            ca,
            "--ca-root",
            self.dir.join("root-cert.pem").to_str().unwrap(),
            "--token-file",
            self.token_file(n).to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--ca-timeout",
            timeout,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

/// One case: workload `n` holds a certificate in `out`, then its agent runs against a CA address
/// that misbehaves as `how`, then against a real CA on that address.
struct Case {
    n: usize,
    how: Misbehaviour,
    /// What every error line says besides the address.
    says: String,
}

fn run_case(mesh: &Mesh, case: &Case) {
    let out = mesh.dir.join(format!("out-{}", case.n));
    let before = snapshot(&out);
    let peer = Peer::start(case.how);
    let ca = format!("127.0.0.1:{}", peer.port);
    let timeout = match case.how {
        Misbehaviour::Hang => HANG_TIMEOUT,
        _ => CA_TIMEOUT,
    };
    let args = mesh.agent_args(case.n, &ca, &out, timeout);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Process::run(
        &mesh.dir,
        &format!("agent-{}", case.n),
        MESHCA,
        &args,
        &[("MESHCA_LOG", "info")],
    );
    std::thread::sleep(WINDOW);
    let running = agent.exited().is_none();
    let accepted = peer.stop();
    let log = agent.log();
    let what = format!("{:?}: agent log:\n{log}", case.how);
    assert!(running, "{what}");

    // Spaced attempts, not a spin: two to four connections in five seconds, a second apart at
    // least (the backoff's first step).
    assert!(
        (2..=4).contains(&accepted.len()),
        "{} connections in {WINDOW:?}; {what}",
        accepted.len()
    );
    for w in accepted.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(900),
            "attempts {:?} apart; {what}",
            w[1] - w[0]
        );
    }
    // One line per failed attempt, naming the address and what went wrong.
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("certificate not renewed"))
        .collect();
    assert!(failures.len() >= 2, "{what}");
    for l in &failures {
        assert!(
            l.contains(&format!("CA {ca}")) && l.contains(&case.says),
            "expected `CA {ca}` and {:?} in {l:?}",
            case.says
        );
    }
    // Nothing written while the CA misbehaved.
    assert_eq!(snapshot(&out), before, "{what}");

    // A real CA on the same address: the agent renews at its next attempt.
    let (_ca, addr) = mesh.serve(&format!("serve-{}", case.n), &ca);
    assert_eq!(addr, ca);
    let deadline = Instant::now() + BOUND;
    while snapshot(&out) == before {
        assert!(
            Instant::now() < deadline,
            "{:?}: no renewal from the real CA; agent log:\n{}",
            case.how,
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pair = meshca_agent::client::read_pair(&out).unwrap();
    let leaf = &pair.chain[0];
    assert!(leaf.not_after() > time::OffsetDateTime::now_utc());
    assert_eq!(
        leaf.uris(),
        [format!(
            "spiffe://cluster.local/ns/load/sa/{}",
            service_account(case.n)
        )]
    );
}

#[test]
fn agent_backs_off_from_a_misbehaving_ca_keeps_its_certificate_and_recovers() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mesh = Mesh::new(d);
    // A CA under another root, behind the last case's address.
    let other = d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let other_mesh = Mesh::new(&other);
    let (_other_ca, other_addr) = other_mesh.serve("serve-other-root", "127.0.0.1:0");
    let cases = [
        Case {
            n: 0,
            how: Misbehaviour::Hang,
            says: format!("no answer within {HANG_TIMEOUT}"),
        },
        Case {
            n: 1,
            how: Misbehaviour::Reset,
            says: "reset".into(),
        },
        Case {
            n: 2,
            how: Misbehaviour::Garbage,
            says: "InvalidContentType".into(),
        },
        Case {
            n: 3,
            how: Misbehaviour::Http1,
            says: "InvalidContentType".into(),
        },
        Case {
            n: 4,
            how: Misbehaviour::Forward(other_addr.parse().unwrap()),
            says: "invalid peer certificate".into(),
        },
    ];
    // Every workload first holds a certificate from the real CA.
    {
        let (_ca, addr) = mesh.serve("serve-first", "127.0.0.1:0");
        for c in &cases {
            let out = d.join(format!("out-{}", c.n));
            let mut args = mesh.agent_args(c.n, &addr, &out, CA_TIMEOUT);
            args.push("--once".into());
            run_in(MESHCA, d, &args, &[]).ok();
        }
    }
    std::thread::scope(|s| {
        for c in &cases {
            let mesh = &mesh;
            s.spawn(move || run_case(mesh, c));
        }
    });
}

/// A root made by `meshca certs root-ca` in `<d>/root`, Debian's `cfssl serve` signing with it,
/// and a folder store with `mgmt` and `cluster1`, cluster1's cacerts issued through cfssl.
fn cfssl_store(d: &Path) -> Cfssl {
    assert!(
        Cfssl::available(),
        "install cfssl: apt-get install golang-cfssl"
    );
    std::fs::create_dir_all(d.join("root")).unwrap();
    run_in(
        MESHCA,
        &d.join("root"),
        ["certs", "root-ca"],
        &[("ROOTCA_KEY_TYPE", "ecdsa-p256")],
    )
    .ok();
    let cfssl = Cfssl::start(
        d,
        Path::new("root/root-cert.pem"),
        Path::new("root/root-key.pem"),
    );
    for c in ["mgmt", "cluster1"] {
        std::fs::create_dir_all(d.join("store").join(c)).unwrap();
    }
    std::fs::write(d.join("good.yaml"), cfssl.policy(20)).unwrap();
    trust(d, &["apply", "-f", "good.yaml"]).ok();
    assert!(
        d.join("store/cluster1/istio-system/cacerts/ca-cert.pem")
            .exists()
    );
    cfssl
}

/// `meshca trust <args> --store store` in `d`.
fn trust(d: &Path, args: &[&str]) -> meshca_testkit::Run {
    let mut all = vec!["trust"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--store", "store"]);
    run_in(MESHCA, d, all, &[])
}

#[test]
fn trust_with_its_cfssl_signer_down_writes_nothing_and_retries_spaced() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let cfssl = cfssl_store(d);
    let down = format!("http://127.0.0.1:{}", free_port());
    let good = cfssl.policy(20);
    std::fs::write(d.join("down.yaml"), good.replace(&cfssl.url(), &down)).unwrap();

    // Once: a clear error naming the signer, and the store as it was.
    let before = snapshot(&d.join("store"));
    let run = trust(d, &["rotate-intermediates", "-f", "down.yaml"]).failed();
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains(&down) && said.contains("onnection refused"),
        "{said}"
    );
    assert_eq!(snapshot(&d.join("store")), before);

    // Kept running, with a cluster that needs its first cacerts: each failed reconcile is
    // reported, and the next comes after the backoff (1 s, then 2 s), not at once.
    std::fs::create_dir_all(d.join("store/cluster2")).unwrap();
    std::fs::write(d.join("policy.yaml"), good.replace(&cfssl.url(), &down)).unwrap();
    let before = snapshot(&d.join("store"));
    let run = Process::run(
        d,
        "trust-run",
        MESHCA,
        &[
            "trust",
            "run",
            "-f",
            "policy.yaml",
            "--store",
            "store",
            "--poll",
            "100ms",
        ],
        &[],
    );
    let mut failed_at = Vec::new();
    for _ in 0..3 {
        let line = run.line_with("error", BOUND);
        assert!(line.contains(&down), "{line}");
        failed_at.push(Instant::now());
    }
    assert!(failed_at[1] - failed_at[0] >= Duration::from_millis(900));
    assert!(failed_at[2] - failed_at[1] >= Duration::from_millis(1900));
    assert_eq!(snapshot(&d.join("store")), before, "{}", run.log());

    // The signer back (the policy pointed at it again): cluster2 gets its cacerts.
    std::fs::write(d.join("policy.yaml"), &good).unwrap();
    let deadline = Instant::now() + BOUND;
    while !d
        .join("store/cluster2/istio-system/cacerts/ca-cert.pem")
        .exists()
    {
        assert!(Instant::now() < deadline, "{}", run.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP proxy in front of cfssl that, once `swap` is set, replaces the CSR of every `sign`
/// request with `other_csr` (the same subject, another key) before cfssl sees it: cfssl then
/// signs, with the right CA and profile, a certificate for a key the requester did not ask for.
struct SwappingProxy {
    addr: SocketAddr,
    swap: Arc<AtomicBool>,
    swapped: Arc<AtomicU32>,
}

impl SwappingProxy {
    fn start(cfssl: SocketAddr, other_csr: String) -> SwappingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let swap = Arc::new(AtomicBool::new(false));
        let swapped = Arc::new(AtomicU32::new(0));
        let (sw, count) = (swap.clone(), swapped.clone());
        std::thread::spawn(move || {
            for s in listener.incoming().map_while(Result::ok) {
                let (sw, count, csr) = (sw.clone(), count.clone(), other_csr.clone());
                std::thread::spawn(move || proxy_one(s, cfssl, &sw, &count, &csr));
            }
        });
        SwappingProxy {
            addr,
            swap,
            swapped,
        }
    }
}

/// One HTTP/1.1 request (headers, then a body of `content-length`), passed on with
/// `connection: close`; the answer is copied back until cfssl closes.
fn proxy_one(mut s: TcpStream, cfssl: SocketAddr, swap: &AtomicBool, count: &AtomicU32, csr: &str) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let Ok(n) = s.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let Ok(n) = s.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut body = buf[head_end..head_end + len].to_vec();
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    if swap.load(Ordering::Relaxed) && request_line.contains("/api/v1/cfssl/sign") {
        let mut json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        json["certificate_request"] = serde_json::Value::String(csr.to_owned());
        body = serde_json::to_vec(&json).unwrap();
        count.fetch_add(1, Ordering::Relaxed);
    }
    let headers: String = head
        .lines()
        .skip(1)
        .filter(|l| {
            let k = l.split(':').next().unwrap_or_default().to_ascii_lowercase();
            !l.is_empty() && k != "content-length" && k != "connection"
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    let Ok(mut back) = TcpStream::connect(cfssl) else {
        return;
    };
    let request = format!(
        "{request_line}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if back.write_all(request.as_bytes()).is_err() || back.write_all(&body).is_err() {
        return;
    }
    let _ = std::io::copy(&mut back, &mut s);
}

#[test]
fn trust_refuses_a_certificate_cfssl_signed_for_another_key() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let cfssl = cfssl_store(d);
    // Another key's CSR with an intermediate's subject, made by openssl.
    openssl(
        d,
        [
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "other-key.pem",
            "-subj",
            "/O=other/CN=Intermediate CA",
            "-out",
            "other.csr",
        ],
    )
    .ok();
    let other_csr = std::fs::read_to_string(d.join("other.csr")).unwrap();
    let cfssl_addr: SocketAddr = cfssl.url().trim_start_matches("http://").parse().unwrap();
    let proxy = SwappingProxy::start(cfssl_addr, other_csr);
    let url = format!("http://{}", proxy.addr);
    std::fs::write(
        d.join("proxy.yaml"),
        cfssl.policy(20).replace(&cfssl.url(), &url),
    )
    .unwrap();
    // Through the proxy, untouched, a rotation works.
    trust(d, &["rotate-intermediates", "-f", "proxy.yaml"]).ok();
    assert_eq!(proxy.swapped.load(Ordering::Relaxed), 0);

    proxy.swap.store(true, Ordering::Relaxed);
    let before = snapshot(&d.join("store"));
    let run = trust(d, &["rotate-intermediates", "-f", "proxy.yaml"]).failed();
    assert!(proxy.swapped.load(Ordering::Relaxed) >= 1);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains(&url) && said.contains("another public key than the CSR's"),
        "{said}"
    );
    assert_eq!(snapshot(&d.join("store")), before);
}
