//! The workload story through the real binary: `meshca serve` (and the CA it refuses),
//! `meshca token`, `meshca agent` (once, and serving its mTLS endpoint, root included as Envoy
//! presents it), `meshca verify endpoint`, and `meshca quickstart`.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use meshca_testkit::run_in;

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");
const FAST: &[(&str, &str)] = &[
    ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
    ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
];

struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a long-running meshca command and returns it with the first line it prints that
/// contains `marker`.
fn start(dir: &Path, args: &[&str], marker: &str) -> (Bg, String) {
    let mut child = Command::new(MESHCA)
        .current_dir(dir)
        .args(args)
        .env("MESHCA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains(marker))
        .unwrap_or_default();
    (Bg(child), line)
}

fn addr_of(line: &str, prefix: &str) -> String {
    line.strip_prefix(prefix)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn agent_serve_and_verify_endpoint_from_the_command_line() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    run_in(
        MESHCA,
        d,
        ["certs", "cluster1-cacerts", "cluster2-cacerts"],
        FAST,
    )
    .ok();
    run_in(
        "openssl",
        d,
        [
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            "jwt-key.pem",
        ],
        &[],
    )
    .ok();
    let jwks = run_in(MESHCA, d, ["token", "jwks", "--key", "jwt-key.pem"], &[])
        .ok()
        .stdout;
    std::fs::write(d.join("jwks.json"), jwks).unwrap();
    let (_ca1, l1) = start(
        d,
        &[
            "serve",
            "--cacerts",
            "cluster1",
            "--listen",
            "127.0.0.1:0",
            "--jwt-issuer",
            "k8s=jwks.json",
        ],
        "listening on",
    );
    let (_ca2, l2) = start(
        d,
        &[
            "serve",
            "--cacerts",
            "cluster2",
            "--listen",
            "127.0.0.1:0",
            "--jwt-issuer",
            "k8s=jwks.json",
        ],
        "listening on",
    );
    let ca1 = addr_of(&l1, "listening on ");
    let ca2 = addr_of(&l2, "listening on ");
    for (ns, sa, ca) in [("foo", "httpbin", &ca1), ("foo", "sleep", &ca2)] {
        let token = run_in(
            MESHCA,
            d,
            [
                "token",
                "issue",
                "--ns",
                ns,
                "--sa",
                sa,
                "--issuer",
                "k8s",
                "--key",
                "jwt-key.pem",
            ],
            &[],
        )
        .ok()
        .stdout;
        std::fs::write(d.join(format!("{sa}.token")), token).unwrap();
        let out = run_in(
            MESHCA,
            d,
            [
                "agent",
                "--once",
                "--ca-addr",
                ca,
                "--ca-root",
                "root-cert.pem",
                "--token-file",
                &format!("{sa}.token"),
                "--output-dir",
                sa,
            ],
            &[],
        )
        .ok();
        assert!(
            out.stdout.starts_with(&format!(
                "spiffe://cluster.local/ns/{ns}/sa/{sa}: wrote {sa}"
            )),
            "{}",
            out.stdout
        );
    }
    // httpbin renews over mTLS (no token) and serves its endpoint.
    let (_httpbin, l3) = start(
        d,
        &[
            "agent",
            "--ca-addr",
            &ca1,
            "--ca-root",
            "root-cert.pem",
            "--output-dir",
            "httpbin",
            "--mtls-listen",
            "127.0.0.1:0",
        ],
        "mTLS endpoint on",
    );
    let endpoint = addr_of(&l3, "mTLS endpoint on ");
    let out = run_in(
        MESHCA,
        d,
        [
            "verify",
            "endpoint",
            &endpoint,
            "--cacerts",
            "cluster1",
            "--client-dir",
            "sleep",
        ],
        &[],
    )
    .ok();
    assert!(out.stdout.contains("all 3 checks passed"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("not presented"),
        "the endpoint presents the root: {}",
        out.stdout
    );
    let out = run_in(
        MESHCA,
        d,
        [
            "verify",
            "endpoint",
            &endpoint,
            "--cacerts",
            "cluster2",
            "--client-dir",
            "sleep",
        ],
        &[],
    )
    .failed();
    assert!(
        out.stdout
            .contains("✘ CA certificate is identical to cluster2/ca-cert.pem"),
        "{}",
        out.stdout
    );

    // Bad input: a token file that is not a JWT.
    std::fs::write(d.join("junk.token"), "junk").unwrap();
    let out = run_in(
        MESHCA,
        d,
        [
            "agent",
            "--once",
            "--ca-addr",
            &ca1,
            "--ca-root",
            "root-cert.pem",
            "--token-file",
            "junk.token",
        ],
        &[],
    )
    .failed();
    assert_eq!(
        out.stderr.trim(),
        "meshca: error: junk.token: token: not a JWT"
    );
}

/// A signing certificate whose extended key usage excludes serverAuth: istiod refuses it, and so
/// does `meshca serve`, with one line and a non-zero exit.
#[test]
fn serve_refuses_a_ca_whose_extended_key_usage_excludes_server_auth() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    run_in(MESHCA, d, ["certs", "cluster1-cacerts"], FAST).ok();
    std::fs::write(
        d.join("client-only.ext"),
        "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
         extendedKeyUsage = clientAuth\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| run_in("openssl", d, args, &[]).ok();
    openssl(&[
        "req",
        "-new",
        "-key",
        "cluster1/ca-key.pem",
        "-subj",
        "/O=meshca/CN=client-only",
        "-out",
        "ca.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "ca.csr",
        "-CA",
        "root-cert.pem",
        "-CAkey",
        "root-key.pem",
        "-set_serial",
        "4242",
        "-days",
        "30",
        "-extfile",
        "client-only.ext",
        "-out",
        "cluster1/ca-cert.pem",
    ]);
    let chain = [
        std::fs::read(d.join("cluster1/ca-cert.pem")).unwrap(),
        std::fs::read(d.join("root-cert.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(d.join("cluster1/cert-chain.pem"), chain).unwrap();
    let out = run_in(
        MESHCA,
        d,
        [
            "serve",
            "--cacerts",
            "cluster1",
            "--listen",
            "127.0.0.1:0",
            "--plaintext",
        ],
        &[("MESHCA_LOG", "off")],
    )
    .failed();
    assert_eq!(
        out.stderr.trim(),
        "meshca: error: cluster1/ca-cert.pem: extended key usage (clientAuth) excludes \
         serverAuth; istiod refuses such a CA (Go verifies the chain for serverAuth)"
    );
}

#[test]
fn quickstart_runs_green_twice_in_a_row() {
    let t = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = run_in(MESHCA, t.path(), ["quickstart", "--dir", "qs"], &[]).ok();
        assert!(
            out.stdout
                .contains("httpbin saw spiffe://cluster.local/ns/foo/sa/sleep"),
            "{}",
            out.stdout
        );
        for needle in [
            "two clusters, one root",
            "they trust 2 root(s)",
            "during all of it: 0 failed",
            "== OK: plugged-in CAs verified",
        ] {
            assert!(out.stdout.contains(needle), "{needle:?} in\n{}", out.stdout);
        }
        assert!(t.path().join("qs/managed/meshca-dashboard.html").is_file());
        assert!(!out.stdout.contains('✘'));
    }
}
