#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design
//! Seed 001 end to end through the real binary and real processes: a root made by
//! `meshca certs root-ca` is put in the management cluster's secret, the seed's RootTrustPolicy is
//! applied with `meshca trust apply`, `meshca verify roots` agrees the clusters share that root (and
//! names a cluster under another root), each cluster runs `meshca serve` on its `cacerts` and a
//! `meshca agent` per cluster gets a workload certificate from it, and the two workloads talk mTLS
//! across clusters. Then `meshca trust rotate-intermediates` replaces cluster1's intermediate
//! under the running server: it hot-reloads, new workload certificates come from the new
//! intermediate, and they still talk to cluster2's workload holding its old certificate.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use meshca_agent::mtls::{CallResult, call};
use meshca_pki::Certificate;
use meshca_testkit::process::Process;
use meshca_testkit::{openssl, run_in};

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

/// Seed 001's policy as the seed gives it, with 2048-bit intermediates to keep the test fast.
const SEED_POLICY: &str = "apiVersion: admin.gloo.solo.io/v2
kind: RootTrustPolicy
metadata:
  name: root-trust-policy
  namespace: gloo-mesh
spec:
  config:
    intermediateCertOptions:
      secretRotationGracePeriodRatio: 0.1
      ttlDays: 1
      rsaKeySizeBytes: 2048
    mgmtServerCa:
      secretRef:
        name: my-root-trust-policy.gloo-mesh
        namespace: gloo-mesh
";

const ROOT_SECRET: &str = "store/mgmt/gloo-mesh/my-root-trust-policy.gloo-mesh";
const CACERTS1: &str = "store/cluster1/istio-system/cacerts";
const CACERTS2: &str = "store/cluster2/istio-system/cacerts";
const HTTPBIN: &str = "spiffe://cluster.local/ns/foo/sa/httpbin";
const SLEEP: &str = "spiffe://cluster.local/ns/foo/sa/sleep";

/// The longest a process may take to come up, or a server to pick up a new intermediate.
const BOUND: Duration = Duration::from_secs(20);

/// `meshca <args>` kept running in `d`, its stderr in `<name>.log`.
fn meshca(d: &Path, name: &str, args: &[&str]) -> Process {
    Process::run(
        d,
        name,
        MESHCA,
        args,
        &[("MESHCA_LOG", "info"), ("NO_COLOR", "1")],
    )
}

/// `meshca serve` on a cacerts folder, on a free loopback port, accepting the test's JWTs and
/// looking for a new bundle every 100 ms.
fn serve(d: &Path, cluster: &str, cacerts: &str) -> (Process, String) {
    let p = meshca(
        d,
        &format!("serve-{cluster}"),
        &[
            "serve",
            "--cacerts",
            cacerts,
            "--listen",
            "127.0.0.1:0",
            "--jwt-issuer",
            "k8s=jwks.json",
            "--cluster-id",
            cluster,
            "--reload-interval",
            "100ms",
        ],
    );
    let addr = p.word_after("listening on ", BOUND);
    (p, addr)
}

/// A service-account token for `foo/<sa>` from `meshca token issue`, written to `<sa>.token`.
fn token(d: &Path, sa: &str) -> String {
    let jwt = run_in(
        MESHCA,
        d,
        [
            "token",
            "issue",
            "--ns",
            "foo",
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
    let file = format!("{sa}.token");
    fs::write(d.join(&file), jwt).unwrap();
    file
}

/// Where a workload's CA is and how it proves who it is.
struct Workload<'a> {
    ca_addr: &'a str,
    cluster: &'a str,
    ca_root: &'a str,
    token_file: &'a str,
}

impl Workload<'_> {
    fn args<'b>(&'b self, out: &'b str) -> Vec<&'b str> {
        vec![
            "agent",
            "--ca-addr",
            self.ca_addr,
            "--ca-root",
            self.ca_root,
            "--token-file",
            self.token_file,
            "--cluster-id",
            self.cluster,
            "--output-dir",
            out,
        ]
    }

    /// `meshca agent --once` into `out`; returns the chain it wrote, leaf first.
    fn once(&self, d: &Path, out: &str) -> Vec<Certificate> {
        let mut args = self.args(out);
        args.push("--once");
        run_in(MESHCA, d, args, &[]).ok();
        chain(&d.join(out).join("cert-chain.pem"))
    }

    /// `meshca agent` kept running, serving its mTLS endpoint; returns it and the endpoint.
    fn run(&self, d: &Path, out: &str) -> (Process, String) {
        let mut args = self.args(out);
        args.extend(["--mtls-listen", "127.0.0.1:0"]);
        let p = meshca(d, &format!("agent-{out}"), &args);
        let addr = p.word_after("mTLS endpoint on ", BOUND);
        (p, addr)
    }
}

fn chain(path: &Path) -> Vec<Certificate> {
    Certificate::all_from_pem(&fs::read(path).unwrap(), &path.display().to_string()).unwrap()
}

fn cert(path: &Path) -> Certificate {
    Certificate::one_from_pem(&fs::read(path).unwrap(), &path.display().to_string()).unwrap()
}

fn serial(c: &Certificate) -> String {
    c.x509().raw_serial_as_string()
}

/// One mTLS exchange: the client presents `client_dir`'s certificate and checks the server's
/// chain against `roots`.
fn mtls(addr: &str, client_dir: &Path, roots: &[Certificate]) -> Result<CallResult, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(call(addr, Some(client_dir), Some(roots.to_vec())))
        .map_err(|e| e.to_string())
}

/// mTLS works and each side sees the other's SPIFFE ID; returns the server's chain.
fn mutual(
    addr: &str,
    server_id: &str,
    client_dir: &Path,
    client_id: &str,
    roots: &[Certificate],
) -> Vec<Certificate> {
    let res = mtls(addr, client_dir, roots)
        .unwrap_or_else(|e| panic!("{} → {server_id} at {addr}: {e}", client_dir.display()));
    assert_eq!(
        res.reply.trim(),
        format!("hello {client_id}"),
        "{server_id} saw the client"
    );
    assert_eq!(
        res.server_chain[0].uris(),
        [server_id],
        "{client_id} saw the server"
    );
    res.server_chain
}

#[test]
fn seed_001_root_trust_policy_serves_a_two_cluster_mesh_and_survives_an_intermediate_rotation() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();

    // 1. The seed's step 1: a root (RSA like the seed's, 2048 bits for speed), copied into the
    //    four names of the secret; empty workload clusters; the seed's policy; `trust apply`.
    run_in(MESHCA, d, ["certs", "root-ca"], &[("ROOTCA_KEYSZ", "2048")]).ok();
    let secret = d.join(ROOT_SECRET);
    fs::create_dir_all(&secret).unwrap();
    for (from, to) in [
        ("root-cert.pem", "ca-cert.pem"),
        ("root-key.pem", "ca-key.pem"),
        ("root-cert.pem", "cert-chain.pem"),
        ("root-cert.pem", "root-cert.pem"),
    ] {
        fs::copy(d.join(from), secret.join(to)).unwrap();
    }
    for c in ["cluster1", "cluster2"] {
        fs::create_dir_all(d.join("store").join(c)).unwrap();
    }
    fs::write(d.join("policy.yaml"), SEED_POLICY).unwrap();
    let out = run_in(
        MESHCA,
        d,
        ["trust", "apply", "-f", "policy.yaml", "--store", "store"],
        &[],
    )
    .ok();
    for c in ["cluster1", "cluster2"] {
        assert!(
            out.stdout.contains(&format!("{c}: cacerts created")),
            "{}",
            out.stdout
        );
    }
    let root = cert(&secret.join("ca-cert.pem"));
    let roots = [root.clone()];
    let (c1, c2) = (d.join(CACERTS1), d.join(CACERTS2));
    for dir in [&c1, &c2] {
        assert_eq!(cert(&dir.join("root-cert.pem")), root, "the seed's check");
    }
    let old_ca1 = cert(&c1.join("ca-cert.pem"));
    let ca2_files = meshca_testkit::snapshot(&c2);
    assert_ne!(
        old_ca1,
        cert(&c2.join("ca-cert.pem")),
        "one intermediate each"
    );

    // 2. `verify roots`: the two clusters share the root; a cluster under another root is named.
    let out = run_in(MESHCA, d, ["verify", "roots", CACERTS1, CACERTS2], &[]).ok();
    assert!(
        out.stdout
            .contains("✔ all 2 bundles trust each other's chains"),
        "{}",
        out.stdout
    );
    fs::create_dir_all(d.join("elsewhere")).unwrap();
    run_in(
        MESHCA,
        &d.join("elsewhere"),
        ["certs", "cluster3-cacerts"],
        &[
            ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
            ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
        ],
    )
    .ok();
    let out = run_in(
        MESHCA,
        d,
        ["verify", "roots", CACERTS1, CACERTS2, "elsewhere/cluster3"],
        &[],
    )
    .failed();
    assert!(
        out.stdout.contains(
            "✘ all 3 bundles trust each other's chains: elsewhere/cluster3 is the odd one out"
        ),
        "{}",
        out.stdout
    );

    // 3. A CA server per cluster on its cacerts, an agent per cluster, mTLS across clusters.
    openssl(
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
    )
    .ok();
    let jwks = run_in(MESHCA, d, ["token", "jwks", "--key", "jwt-key.pem"], &[])
        .ok()
        .stdout;
    fs::write(d.join("jwks.json"), jwks).unwrap();
    let (ca1, ca1_addr) = serve(d, "cluster1", CACERTS1);
    let (_ca2, ca2_addr) = serve(d, "cluster2", CACERTS2);
    let (_ca3, ca3_addr) = serve(d, "cluster3", "elsewhere/cluster3");
    let (httpbin_token, sleep_token) = (token(d, "httpbin"), token(d, "sleep"));
    let root1 = format!("{CACERTS1}/root-cert.pem");
    let root2 = format!("{CACERTS2}/root-cert.pem");
    let httpbin = Workload {
        ca_addr: &ca1_addr,
        cluster: "cluster1",
        ca_root: &root1,
        token_file: &httpbin_token,
    };
    let sleep = Workload {
        ca_addr: &ca2_addr,
        cluster: "cluster2",
        ca_root: &root2,
        token_file: &sleep_token,
    };
    let (_httpbin_agent, httpbin_ep) = httpbin.run(d, "httpbin");
    let (_sleep_agent, sleep_ep) = sleep.run(d, "sleep");
    let old_httpbin = chain(&d.join("httpbin/cert-chain.pem"));
    assert_eq!(
        old_httpbin[1], old_ca1,
        "httpbin's certificate is cluster1's"
    );

    let seen = mutual(&httpbin_ep, HTTPBIN, &d.join("sleep"), SLEEP, &roots);
    assert_eq!(seen[1], old_ca1);
    let seen = mutual(&sleep_ep, SLEEP, &d.join("httpbin"), HTTPBIN, &roots);
    assert_eq!(seen[1], cert(&c2.join("ca-cert.pem")));
    let out = run_in(
        MESHCA,
        d,
        [
            "verify",
            "endpoint",
            &httpbin_ep,
            "--cacerts",
            CACERTS1,
            "--client-dir",
            "sleep",
        ],
        &[],
    )
    .ok();
    assert!(out.stdout.contains("all 3 checks passed"), "{}", out.stdout);

    // A workload under the foreign root is refused by httpbin.
    let stranger_token = token(d, "stranger");
    Workload {
        ca_addr: &ca3_addr,
        cluster: "cluster3",
        ca_root: "elsewhere/root-cert.pem",
        token_file: &stranger_token,
    }
    .once(d, "stranger");
    let refused = mtls(&httpbin_ep, &d.join("stranger"), &roots)
        .map(|r| r.reply)
        .unwrap_or_default();
    assert!(
        !refused.contains("hello"),
        "stranger was answered: {refused}"
    );

    // 4. Rotate cluster1's intermediate under its running server.
    let out = run_in(
        MESHCA,
        d,
        [
            "trust",
            "rotate-intermediates",
            "-f",
            "policy.yaml",
            "--store",
            "store",
            "--cluster",
            "cluster1",
        ],
        &[],
    )
    .ok();
    assert!(
        out.stdout
            .contains("cluster1: intermediate rotated (rotation requested)"),
        "{}",
        out.stdout
    );
    let new_ca1 = cert(&c1.join("ca-cert.pem"));
    assert_ne!(serial(&new_ca1), serial(&old_ca1), "a new intermediate");
    assert_eq!(cert(&c1.join("root-cert.pem")), root, "under the same root");
    assert_eq!(
        meshca_testkit::snapshot(&c2),
        ca2_files,
        "cluster2 is untouched"
    );

    // The server picks the new intermediate up by itself: ask it until it signs with it.
    let deadline = Instant::now() + BOUND;
    let mut probes = 0;
    loop {
        probes += 1;
        let got = httpbin.once(d, "probe");
        if got[1] == new_ca1 {
            break;
        }
        assert_eq!(
            got[1], old_ca1,
            "an intermediate that is neither old nor new"
        );
        assert!(
            Instant::now() < deadline,
            "cluster1's CA still signs with the old intermediate after {probes} requests; its log:\n{}",
            ca1.log()
        );
    }

    // A fresh workload certificate in cluster1 comes from the new intermediate...
    let (_httpbin2_agent, httpbin2_ep) = httpbin.run(d, "httpbin2");
    let fresh = chain(&d.join("httpbin2/cert-chain.pem"));
    assert_eq!(fresh[1], new_ca1);
    assert_ne!(serial(&fresh[1]), serial(&old_httpbin[1]));
    assert_ne!(serial(&fresh[0]), serial(&old_httpbin[0]));
    fs::write(d.join("old-ca1.pem"), old_ca1.pem()).unwrap();
    let independent = |intermediate: &str| {
        openssl(
            d,
            [
                "verify",
                "-CAfile",
                "root-cert.pem",
                "-untrusted",
                intermediate,
                "httpbin2/cert-chain.pem",
            ],
        )
    };
    independent(&format!("{CACERTS1}/ca-cert.pem")).ok();
    independent("old-ca1.pem").failed();
    let out = run_in(
        MESHCA,
        d,
        [
            "verify",
            "chain",
            "--cacerts",
            CACERTS1,
            "httpbin2/cert-chain.pem",
        ],
        &[],
    )
    .ok();
    assert!(out.stdout.contains("checks passed"), "{}", out.stdout);
    let out = run_in(
        MESHCA,
        d,
        [
            "verify",
            "chain",
            "--cacerts",
            CACERTS1,
            "httpbin/cert-chain.pem",
        ],
        &[],
    )
    .failed();
    assert!(
        out.stdout.contains("✘ CA certificate is identical to"),
        "the old certificate is from the retired intermediate: {}",
        out.stdout
    );

    // ...and it still talks to cluster2's workload, which keeps its old certificate.
    assert_eq!(
        chain(&d.join("sleep/cert-chain.pem"))[1],
        cert(&c2.join("ca-cert.pem"))
    );
    let seen = mutual(&httpbin2_ep, HTTPBIN, &d.join("sleep"), SLEEP, &roots);
    assert_eq!(seen[1], new_ca1, "httpbin2 serves the new intermediate");
    mutual(&sleep_ep, SLEEP, &d.join("httpbin2"), HTTPBIN, &roots);
}
