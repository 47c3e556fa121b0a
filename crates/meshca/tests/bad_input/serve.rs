//! Cases of `meshca serve`: the bundles and flags it refuses at start, and malformed requests
//! to its gRPC API (over TLS, with a valid token, so that what is refused is the request
//! itself); and of `meshca agent`, against that server.

use std::fs;
use std::path::Path;
use std::time::Duration;

use meshca_ca::proto::IstioCertificateRequest;
use meshca_ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_testkit::process::Process;
use meshca_testkit::snapshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::world::{big_csr, copy_tree, symlink_loop, truncate, world};
use crate::{Case, MESHCA, args, changes, error, full_disk, read_only, run_table, usage};

/// `meshca serve` on a loopback port of its own, for a start that must fail.
fn serve(cacerts: &str) -> Vec<&str> {
    vec![
        "serve",
        "--cacerts",
        cacerts,
        "--listen",
        "127.0.0.1:0",
        "--jwt-issuer",
        "k8s=jwks.json",
    ]
}

fn refusal(name: &'static str, cacerts: &str, expect: crate::Expect) -> Case {
    Case::new(name, &serve(cacerts), expect)
}

fn startup_cases() -> Vec<Case> {
    vec![
        refusal(
            "serve: an expired intermediate",
            "expired",
            error("until 2021-01-01T00:00:00Z", "expired/ca-cert.pem"),
        ),
        refusal(
            "serve: a not yet valid intermediate",
            "notyet",
            error("valid from 2090-01-01T00:00:00Z", "notyet/ca-cert.pem"),
        ),
        refusal(
            "serve: a SHA-1 signed intermediate",
            "sha1",
            error("signed with ecdsa-with-SHA1", "sha1/ca-cert.pem"),
        ),
        refusal(
            "serve: an intermediate restricted to clientAuth",
            "eku",
            error("excludes serverAuth", "eku/ca-cert.pem"),
        ),
        refusal(
            "serve: a leaf posing as a CA",
            "leafca",
            error("cannot sign certificates", "leafca/ca-cert.pem"),
        ),
        refusal(
            "serve: a CA below a pathlen:0 CA",
            "pathlen",
            error("pathlen", "pathlen/"),
        ),
        refusal(
            "serve: junk in the root bundle",
            "junkroot",
            error("certificate", "junkroot/root-cert.pem"),
        ),
        refusal(
            "serve: key and certificate do not match",
            "mism",
            error("does not match", "mism/ca-key.pem"),
        ),
        refusal(
            "serve: an RSA-1024 intermediate",
            "weak",
            error("RSA-1024", "weak/ca-key.pem"),
        ),
        refusal(
            "serve: a missing cacerts folder",
            "nowhere",
            error("nowhere", "nowhere"),
        ),
        refusal(
            "serve: a cacerts key that is a symlink loop",
            "c1",
            error("symbolic links", "c1/ca-key.pem"),
        )
        .setup(|d| {
            symlink_loop(d, "c1/ca-key.pem");
            None
        }),
        refusal(
            "serve: a JWKS file that is not JSON",
            "c1",
            error("JWKS", "jwks.json"),
        )
        .setup(|d| {
            truncate(d, "jwks.json");
            None
        }),
        Case::new(
            "serve: a trust domain with a space",
            &[
                "serve",
                "--cacerts",
                "c1",
                "--listen",
                "127.0.0.1:0",
                "--trust-domain",
                "bad domain",
            ],
            error(
                "only lowercase letters",
                "trust domain: invalid value \"bad domain\"",
            ),
        ),
        Case::new(
            "serve: --jwt-issuer without a file",
            &["serve", "--cacerts", "c1", "--jwt-issuer", "k8s"],
            error("ISSUER=JWKS_FILE", "--jwt-issuer"),
        ),
        Case::new(
            "serve: a listen address that is not one",
            &["serve", "--cacerts", "c1", "--listen", "localhost:http:80"],
            usage("invalid socket address", "--listen"),
        ),
        Case::new(
            "serve: a default TTL above the longest",
            &[
                "serve",
                "--cacerts",
                "c1",
                "--listen",
                "127.0.0.1:0",
                "--workload-cert-ttl",
                "100d",
            ],
            error("longer than --max-workload-cert-ttl", "--workload-cert-ttl"),
        ),
        Case::new(
            "serve: a TTL that is not a duration",
            &[
                "serve",
                "--cacerts",
                "c1",
                "--max-workload-cert-ttl",
                "a while",
            ],
            usage("invalid value", "--max-workload-cert-ttl"),
        ),
        Case::new(
            "serve: a self-signed root in a read-only folder",
            &[
                "serve",
                "--cacerts",
                "nowhere",
                "--self-signed-dir",
                "ro",
                "--listen",
                "127.0.0.1:0",
            ],
            error("Read-only file system", "ro"),
        )
        .setup(|d| {
            fs::create_dir(d.join("ro")).unwrap();
            Some(read_only(&d.join("ro")))
        }),
    ]
}

/// A malformed request: the CSR (PEM text) from the server's folder, the TTL asked for, and the
/// status and message part the server must answer with.
struct Request {
    name: &'static str,
    csr: fn(&Path) -> String,
    ttl: i64,
    code: tonic::Code,
    says: &'static str,
}

fn read(d: &Path, f: &str) -> String {
    fs::read_to_string(d.join(f)).unwrap()
}

fn grpc_cases() -> Vec<Request> {
    use tonic::Code::{InvalidArgument, ResourceExhausted};
    let good: fn(&Path) -> String = |d| read(d, "csr/p256.csr");
    vec![
        Request {
            name: "a CSR that is not PEM",
            csr: |_| "hello, CA".to_owned(),
            ttl: 0,
            code: InvalidArgument,
            says: "CSR",
        },
        Request {
            name: "an empty CSR",
            csr: |_| String::new(),
            ttl: 0,
            code: InvalidArgument,
            says: "CSR",
        },
        Request {
            name: "a truncated CSR",
            csr: |d| {
                let t = read(d, "csr/p256.csr");
                t[..t.len() / 2].to_owned()
            },
            ttl: 0,
            code: InvalidArgument,
            says: "CSR",
        },
        Request {
            name: "a certificate instead of a CSR",
            csr: |d| read(d, "c1/ca-cert.pem"),
            ttl: 0,
            code: InvalidArgument,
            says: "CSR",
        },
        Request {
            name: "random bytes in a PEM block",
            csr: |d| read(d, "junk.pem").replace("CERTIFICATE", "CERTIFICATE REQUEST"),
            ttl: 0,
            code: InvalidArgument,
            says: "CSR",
        },
        Request {
            name: "a CSR of over 1 MB",
            csr: |_| fs::read_to_string(big_csr()).unwrap(),
            ttl: 0,
            code: ResourceExhausted,
            says: "request too large",
        },
        Request {
            name: "an RSA-1024 CSR",
            csr: |d| read(d, "csr/rsa1024.csr"),
            ttl: 0,
            code: InvalidArgument,
            says: "RSA key of 1024 bits; 2048 to 8192 are accepted",
        },
        Request {
            name: "an Ed25519 CSR",
            csr: |d| read(d, "csr/ed25519.csr"),
            ttl: 0,
            code: InvalidArgument,
            says: "unsupported key Ed25519",
        },
        Request {
            name: "a TTL above the longest",
            csr: good,
            ttl: 100 * 86400,
            code: InvalidArgument,
            says: "8640000",
        },
        Request {
            name: "the largest TTL there is",
            csr: good,
            ttl: i64::MAX,
            code: InvalidArgument,
            says: "TTL",
        },
    ]
}

async fn client(addr: &str, root_pem: &str) -> IstioCertificateServiceClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name("istiod.istio-system.svc");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    IstioCertificateServiceClient::new(channel).max_encoding_message_size(4 << 20)
}

/// What is wrong with the server's answer to `r`, if anything.
async fn ask(
    grpc: &mut IstioCertificateServiceClient<Channel>,
    d: &Path,
    token: &str,
    r: &Request,
) -> Option<String> {
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: (r.csr)(d),
        validity_duration: r.ttl,
        metadata: None,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match grpc.create_certificate(req).await {
        Ok(_) => Some("a certificate was issued".to_owned()),
        Err(s) if s.code() != r.code || !s.message().contains(r.says) => Some(format!(
            "{:?} {:?} instead of {:?} with {:?}",
            s.code(),
            s.message(),
            r.code,
            r.says
        )),
        Err(s) if s.message().lines().count() > 1 => {
            Some(format!("a message of several lines: {:?}", s.message()))
        }
        Err(_) => None,
    }
}

fn agent_cases(addr: &'static str) -> Vec<Case> {
    let agent = |out: &str| -> Vec<std::ffi::OsString> {
        args(&[
            "agent",
            "--once",
            "--ca-addr",
            addr,
            "--ca-root",
            "root-cert.pem",
            "--token-file",
            "sleep.token",
            "--output-dir",
            out,
        ])
    };
    let with = |name, a: Vec<std::ffi::OsString>, expect| {
        let mut c = Case::new(name, &[], expect);
        c.args = a;
        c
    };
    vec![
        with(
            "agent: junk as the CA's root",
            {
                let mut a = agent("ns1");
                a[5] = "junk.pem".into();
                a
            },
            error("not a valid X.509 certificate", "junk.pem"),
        ),
        with(
            "agent: a missing CA root",
            {
                let mut a = agent("ns1");
                a[5] = "nope.pem".into();
                a
            },
            error("No such file", "nope.pem"),
        ),
        with(
            "agent: a token that is not a JWT",
            {
                let mut a = agent("ns1");
                a[7] = "c1/ca-cert.pem".into();
                a
            },
            error("not a JWT", "c1/ca-cert.pem: token"),
        ),
        with(
            "agent: nothing listening at the CA's address",
            {
                let mut a = agent("ns1");
                a[3] = "127.0.0.1:9".into();
                a
            },
            error("Connection refused", "CA 127.0.0.1:9"),
        ),
        with(
            "agent: a read-only output folder",
            agent("ro"),
            error("Read-only file system", "ro"),
        )
        .setup(|d| {
            fs::create_dir(d.join("ro")).unwrap();
            Some(read_only(&d.join("ro")))
        }),
        with(
            "agent: a full disk",
            agent("full"),
            error("No space left on device", "full"),
        )
        .setup(|d| {
            Some(full_disk(
                &d.join("full"),
                d,
                &["ns1/key.pem", "ns1/workload-cert-chain.pem"],
            ))
        }),
        with(
            "agent: an output folder that is a symlink loop",
            agent("loop"),
            error("Too many levels of symbolic links", "loop"),
        )
        .setup(|d| {
            symlink_loop(d, "loop");
            None
        }),
        with(
            "agent: a grace ratio of 2",
            {
                let mut a = agent("ns1");
                a.extend(args(&["--grace-ratio", "2"]));
                a
            },
            error("between 0 and 1", "--grace-ratio"),
        ),
        with(
            "serve: an address another server holds",
            args(&["serve", "--cacerts", "c1", "--listen", addr]),
            error("in use", addr),
        ),
    ]
}

/// The refusals at start, then a server of `c1` for the gRPC requests and the agent cases;
/// the server's folder must be as it was after all of them.
pub fn run() {
    run_table(startup_cases());

    let t = tempfile::tempdir().unwrap();
    let d = &t.path().join("world");
    copy_tree(world(), d);
    let at = |f: &str| d.join(f).display().to_string();
    let jwt = format!("k8s={}", at("jwks.json"));
    let mut args = serve("");
    args[6] = &jwt;
    let c1 = at("c1");
    args[2] = &c1;
    // Its log goes beside the world's copy, not into it.
    let mut server = Process::run(t.path(), "serve", MESHCA, &args, &[("MESHCA_LOG", "warn")]);
    let addr = server.word_after("listening on ", Duration::from_secs(20));
    let before = snapshot(d);

    let token = read(d, "sleep.token").trim().to_owned();
    let root = read(d, "root-cert.pem");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut failures = Vec::new();
    let requests = grpc_cases();
    rt.block_on(async {
        let mut grpc = client(&addr, &root).await;
        for r in &requests {
            if let Some(wrong) = ask(&mut grpc, d, &token, r).await {
                failures.push(format!("gRPC, {}: {wrong}", r.name));
            }
            if server.exited().is_some() {
                failures.push(format!("gRPC, {}: the server ended", r.name));
                break;
            }
        }
    });
    let leaked = changes(&before, &snapshot(d), |_| true);
    assert!(
        failures.is_empty() && leaked.is_empty(),
        "{} of {} requests went wrong:\n{}\n{}",
        failures.len(),
        requests.len(),
        failures.join("\n"),
        leaked.join("\n")
    );

    // Named by the cases' expectations, which live as long as the table.
    run_table(agent_cases(addr.leak()));
    assert!(
        server.exited().is_none(),
        "the server ended:\n{}",
        server.log()
    );
}
