//! Istio as the judge: the real istio-agent (`pilot-agent`, without Envoy) gets and renews its
//! workload certificate from `meshca serve` with a real service-account token; the real istiod
//! loads every kind of bundle meshca writes and issues from it to a real pilot-agent, on which
//! the seeds' verification steps print `identical`, `identical`, `OK`; and two clusters, one
//! served by `meshca serve` and one by istiod, each with a renewing pilot-agent, stay mutually
//! verifiable through every phase of `meshca trust rotate-root` on a fake clock.
//!
//! Everything runs on loopback against real kube-apiservers (`meshca_testkit::kube`) and the
//! Istio peers `scripts/peers` builds (`meshca_testkit::istio`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures by design

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use meshca_pki::Certificate;
use meshca_testkit::cfssl::Cfssl;
use meshca_testkit::istio::{AgentConfig, Istiod, PilotAgent, install_istio_base, listeners_of};
use meshca_testkit::kube::ControlPlane;
use meshca_testkit::process::Process;
use meshca_testkit::{pem_blocks, run_in};

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

/// How long one certificate may take to arrive (a pilot-agent retries with backoff).
const CERT_WAIT: Duration = Duration::from_secs(60);

/// `meshca serve` for `cluster` of `cp` on a free loopback port, signing with `cacerts`,
/// reviewing bearer tokens with that cluster's API server (TokenReview), reloading every 100 ms.
/// Returns it and `localhost:<port>` for `CA_ADDR`.
fn meshca_serve(cp: &ControlPlane, cluster: &str, dir: &Path, cacerts: &Path) -> (Process, String) {
    let mut cmd = Command::new(MESHCA);
    cmd.arg("serve")
        .arg("--cacerts")
        .arg(cacerts)
        .args(["--listen", "127.0.0.1:0", "--token-review", "--kubeconfig"])
        .arg(cp.kubeconfig())
        .args(["--context", cluster, "--cluster-id", cluster])
        .args(["--reload-interval", "100ms"])
        .env("MESHCA_LOG", "info")
        .env_remove("KUBECONFIG");
    let p = Process::start(dir, &format!("serve-{cluster}"), cmd);
    let addr = p.word_after("listening on ", Duration::from_secs(30));
    let port = addr.rsplit(':').next().unwrap().to_owned();
    (p, format!("localhost:{port}"))
}

/// `meshca certs -C dir` with `env` (the Makefile's variables).
fn certs(dir: &Path, targets: &[&str], env: &[(&str, &str)]) {
    fs::create_dir_all(dir).unwrap();
    let mut args = vec!["certs", "-C", dir.to_str().unwrap()];
    args.extend_from_slice(targets);
    run_in(MESHCA, dir, args, env).ok();
}

/// The agent for `foo/<sa>` of `cluster`, with a TokenRequest token for audience `istio-ca`.
fn agent_config(
    cp: &ControlPlane,
    cluster: &str,
    sa: &str,
    ca_addr: &str,
    ca_root_pem: String,
    secret_ttl: Option<&str>,
) -> AgentConfig {
    AgentConfig {
        ca_addr: ca_addr.to_owned(),
        ca_root_pem,
        token: cp.token(cluster, "foo", sa, "istio-ca"),
        namespace: "foo".to_owned(),
        service_account: sa.to_owned(),
        cluster_id: cluster.to_owned(),
        trust_domain: "cluster.local".to_owned(),
        secret_ttl: secret_ttl.map(str::to_owned),
        status_port: None,
    }
}

fn certificates(pem: &str) -> Vec<Certificate> {
    Certificate::all_from_pem(pem.as_bytes(), "test").unwrap()
}

/// Serves the agent's `cert-chain.pem` and `key.pem` with `openssl s_server` (what Envoy would
/// present from them) and runs the seeds' verification steps against it, verbatim but for the
/// address and with their `/tmp` files kept in `work`; `bundle` is the cacerts folder the CA
/// signed with, reached as `certs/cluster1` as the seed has it. Asserts the seeds' output.
fn seeds_verification(work: &Path, bundle: &Path, agent_out: &Path) -> String {
    fs::create_dir_all(work.join("certs")).unwrap();
    let link = work.join("certs/cluster1");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(bundle, &link).unwrap();
    let chain = fs::read_to_string(agent_out.join("cert-chain.pem")).unwrap();
    let blocks = pem_blocks(&chain);
    fs::write(work.join("served-leaf.pem"), &blocks[0]).unwrap();
    fs::write(work.join("served-rest.pem"), blocks[1..].concat()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl");
    server
        .args(["s_server", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", "served-leaf.pem", "-cert_chain", "served-rest.pem"])
        .arg("-key")
        .arg(agent_out.join("key.pem"));
    let server = Process::start(work, "s_server", server);
    let pid = server.pid();
    let start = Instant::now();
    while !listeners_of(pid).iter().any(|l| l.port == port) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "openssl s_server does not listen: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let script = format!(
        r#"set -e
openssl s_client -showcerts -connect 127.0.0.1:{port} </dev/null > httpbin-proxy-cert.txt 2>/dev/null || true
sed -n '/-----BEGIN CERTIFICATE-----/{{:start /-----END CERTIFICATE-----/!{{N;b start}};/.*/p}}' httpbin-proxy-cert.txt > certs.pem
awk 'BEGIN {{counter=0;}} /BEGIN CERT/{{counter++}} {{ print > "proxy-cert-" counter ".pem"}}' < certs.pem
openssl x509 -in certs/cluster1/root-cert.pem -text -noout > root-cert.crt.txt
openssl x509 -in ./proxy-cert-3.pem -text -noout > pod-root-cert.crt.txt
diff -s root-cert.crt.txt pod-root-cert.crt.txt
openssl x509 -in certs/cluster1/ca-cert.pem -text -noout > ca-cert.crt.txt
openssl x509 -in ./proxy-cert-2.pem -text -noout > pod-cert-chain-ca.crt.txt
diff -s ca-cert.crt.txt pod-cert-chain-ca.crt.txt
openssl verify -CAfile <(cat certs/cluster1/ca-cert.pem certs/cluster1/root-cert.pem) ./proxy-cert-1.pem
"#
    );
    let out = run_in("bash", work, ["-c", &script], &[]).ok();
    drop(server);
    assert_eq!(
        out.stdout.matches("are identical").count(),
        2,
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("./proxy-cert-1.pem: OK"),
        "{}",
        out.stdout
    );
    out.stdout
}

/// A scratch folder, kept when `MESHCA_KEEP_ISTIO_DIR` is set.
fn scratch() -> tempfile::TempDir {
    let mut t = tempfile::Builder::new()
        .prefix("meshca-istio-")
        .tempdir()
        .unwrap();
    if std::env::var_os("MESHCA_KEEP_ISTIO_DIR").is_some() {
        eprintln!("keeping {}", t.path().display());
        t.disable_cleanup(true);
    }
    t
}

#[test]
fn pilot_agent_gets_and_renews_its_certificate_from_meshca_serve() {
    let t = scratch();
    let d = t.path();
    let cp = ControlPlane::start(&["cluster1"]);
    cp.service_account("cluster1", "foo", "httpbin");
    certs(
        &d.join("certs"),
        &["root-ca", "cluster1-cacerts"],
        &[
            ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
            ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
        ],
    );
    let bundle = d.join("certs/cluster1");
    let (serve, ca_addr) = meshca_serve(&cp, "cluster1", d, &bundle);
    let root = fs::read_to_string(bundle.join("root-cert.pem")).unwrap();
    let reviews_before = cp.token_reviews("cluster1");
    let mut agent = PilotAgent::start(
        &d.join("httpbin"),
        &agent_config(
            &cp,
            "cluster1",
            "httpbin",
            &ca_addr,
            root.clone(),
            Some("20s"),
        ),
    );

    let first = agent.wait_for_chain(None, CERT_WAIT);
    let out = agent.out_dir();
    let chain = certificates(&first);
    assert_eq!(chain.len(), 3, "leaf, intermediate, root:\n{first}");
    assert_eq!(
        chain[0].uris(),
        ["spiffe://cluster.local/ns/foo/sa/httpbin"],
        "the identity of the token"
    );
    assert_eq!(
        chain[1].der(),
        certificates(&fs::read_to_string(bundle.join("ca-cert.pem")).unwrap())[0].der()
    );
    let lifetime = chain[0].not_after() - chain[0].not_before();
    assert!(
        lifetime <= time::Duration::seconds(20) + time::Duration::minutes(5),
        "the SECRET_TTL asked for, not the 24h default: {lifetime}"
    );
    // pilot-agent writes the PEM it got with surrounding whitespace trimmed.
    assert_eq!(
        fs::read_to_string(out.join("root-cert.pem")).unwrap(),
        root.trim()
    );
    assert_eq!(
        chain[2].der(),
        certificates(&root)[0].der(),
        "root last, as istiod answers"
    );
    let key = meshca_pki::PrivateKey::from_pem(&fs::read(out.join("key.pem")).unwrap(), "key.pem")
        .unwrap();
    assert!(
        chain[0].matches_key(&key),
        "key.pem belongs to the certificate"
    );
    assert!(
        cp.token_reviews("cluster1") > reviews_before,
        "the token was reviewed by the API server"
    );

    // SECRET_TTL=20s: it renews at half the lifetime.
    let started = Instant::now();
    let second = agent.wait_for_chain(Some(&first), Duration::from_secs(40));
    let renewed = certificates(&second);
    assert_ne!(
        renewed[0].sha256_fingerprint(),
        chain[0].sha256_fingerprint()
    );
    assert_eq!(renewed[0].uris(), chain[0].uris());
    println!("renewed after {:?}", started.elapsed());
    let seeds = seeds_verification(&d.join("seed"), &bundle, &out);
    println!("{seeds}");
    drop(agent);
    drop(serve);
}

/// A RootTrustPolicy in Gloo's schema with a generated root: the kind `meshca trust` manages.
const GLOO_POLICY: &str = "apiVersion: admin.gloo.solo.io/v2
kind: RootTrustPolicy
metadata:
  name: root-trust-policy
  namespace: gloo-mesh
spec:
  config:
    mgmtServerCa:
      generated:
        ttlDays: 365
    intermediateCertOptions:
      ttlDays: 30
      rsaKeySizeBytes: 2048
";

/// `meshca trust apply` of `policy` over a folder store holding `mgmt` and `cluster1`; returns
/// cluster1's cacerts folder.
fn trust_bundle(d: &Path, policy: &str) -> PathBuf {
    for c in ["mgmt", "cluster1"] {
        fs::create_dir_all(d.join("store").join(c)).unwrap();
    }
    fs::write(d.join("policy.yaml"), policy).unwrap();
    run_in(
        MESHCA,
        d,
        ["trust", "apply", "-f", "policy.yaml", "--store", "store"],
        &[],
    )
    .ok();
    d.join("store/cluster1/istio-system/cacerts")
}

/// A cluster1 intermediate signed by Debian's real `cfssl serve` (the root's key stays in cfssl)
/// through `meshca trust`'s external signer; returns cluster1's cacerts folder and the signer.
fn cfssl_bundle(d: &Path) -> (PathBuf, Cfssl) {
    certs(
        &d.join("root"),
        &["root-ca"],
        &[("ROOTCA_KEY_TYPE", "ecdsa-p256")],
    );
    let cfssl = Cfssl::start(
        d,
        Path::new("root/root-cert.pem"),
        Path::new("root/root-key.pem"),
    );
    (trust_bundle(d, &cfssl.policy(20)), cfssl)
}

#[test]
fn istiod_loads_every_kind_of_bundle_meshca_writes_and_issues_from_it() {
    let t = scratch();
    let d = t.path();
    let cp = ControlPlane::start(&["cluster1"]);
    install_istio_base(&cp, "cluster1");
    cp.service_account("cluster1", "foo", "httpbin");

    let mut bundles: Vec<(&str, PathBuf)> = Vec::new();
    for (name, root_key, int_key) in [
        ("meshca certs, RSA-4096 (the defaults)", "rsa", "rsa"),
        ("meshca certs, ECDSA P-256", "ecdsa-p256", "ecdsa-p256"),
        ("meshca certs, ECDSA P-384", "ecdsa-p384", "ecdsa-p384"),
        (
            "meshca certs, RSA root, P-256 intermediate",
            "rsa",
            "ecdsa-p256",
        ),
    ] {
        let dir = d.join(format!("certs-{root_key}-{int_key}"));
        certs(
            &dir,
            &["root-ca", "cluster1-cacerts"],
            &[
                ("ROOTCA_KEY_TYPE", root_key),
                ("INTERMEDIATE_KEY_TYPE", int_key),
            ],
        );
        bundles.push((name, dir.join("cluster1")));
    }
    bundles.push((
        "meshca trust, Gloo's schema, RSA-2048 intermediate",
        trust_bundle(&d.join("trust-gloo"), GLOO_POLICY),
    ));
    bundles.push((
        "meshca trust, ECDSA P-256 intermediate",
        trust_bundle(
            &d.join("trust-meshca"),
            meshca_testkit::GENERATED_ROOT_POLICY,
        ),
    ));
    let (cfssl_bundle, _cfssl) = cfssl_bundle(&d.join("trust-cfssl"));
    bundles.push(("meshca trust, cfssl external signer", cfssl_bundle));

    for (i, (name, bundle)) in bundles.iter().enumerate() {
        let started = Instant::now();
        let istiod = Istiod::start(
            &cp,
            "cluster1",
            &d.join(format!("istiod-{i}")),
            Some(bundle),
            &[],
        );
        let ready = started.elapsed();
        let root = fs::read_to_string(bundle.join("root-cert.pem")).unwrap();
        let mut agent = PilotAgent::start(
            &d.join(format!("agent-{i}")),
            &agent_config(&cp, "cluster1", "httpbin", &istiod.ca_addr(), root, None),
        );
        let pem = agent.wait_for_chain(None, CERT_WAIT);
        let chain = certificates(&pem);
        assert_eq!(
            chain[0].uris(),
            ["spiffe://cluster.local/ns/foo/sa/httpbin"],
            "{name}"
        );
        let ca_cert = certificates(&fs::read_to_string(bundle.join("ca-cert.pem")).unwrap());
        assert_eq!(
            chain[0].issuer(),
            ca_cert[0].subject(),
            "{name}: istiod signed with the plugged-in CA, not a root of its own\n{}",
            istiod.log()
        );
        let out = seeds_verification(&d.join(format!("seed-{i}")), bundle, &agent.out_dir());
        println!(
            "{name}: istiod ready in {ready:?}, agent certificate in {:?}\n{out}",
            started.elapsed()
        );
    }
}

/// The DER of each certificate in a PEM file, in order.
fn ders(path: &Path) -> Vec<Vec<u8>> {
    certificates(&fs::read_to_string(path).unwrap_or_default())
        .iter()
        .map(|c| c.der().to_vec())
        .collect()
}

/// Whether an agent's files are from the cluster's bundle as it is now: the chain's CA is
/// `ca-cert.pem` and its root bundle is `root-cert.pem`.
fn agent_has(out: &Path, cacerts: &Path) -> bool {
    let chain = ders(&out.join("cert-chain.pem"));
    let ca = ders(&cacerts.join("ca-cert.pem"));
    // The roots as a set: their order in a bundle means nothing to a peer.
    let roots = |p: &Path| {
        let mut r = ders(p);
        r.sort();
        r
    };
    chain.len() >= 2
        && ca.len() == 1
        && chain[1] == ca[0]
        && roots(&out.join("root-cert.pem")) == roots(&cacerts.join("root-cert.pem"))
}

/// `openssl verify` of `from`'s leaf, with its intermediate as untrusted, against `to`'s
/// `root-cert.pem`: what `to`'s Envoy does with `from`'s certificate.
fn cross_verify(work: &Path, from: &Path, to: &Path) -> String {
    let blocks = pem_blocks(&fs::read_to_string(from.join("cert-chain.pem")).unwrap());
    let leaf = work.join("leaf.pem");
    let untrusted = work.join("untrusted.pem");
    fs::write(&leaf, &blocks[0]).unwrap();
    fs::write(&untrusted, &blocks[1]).unwrap();
    let root = to.join("root-cert.pem");
    let out = meshca_testkit::openssl(
        work,
        [
            "verify".as_ref(),
            "-CAfile".as_ref(),
            root.as_os_str(),
            "-untrusted".as_ref(),
            untrusted.as_os_str(),
            leaf.as_os_str(),
        ],
    )
    .ok();
    assert!(out.stdout.trim_end().ends_with(": OK"), "{}", out.stdout);
    out.stdout
}

#[test]
fn real_agents_on_meshca_serve_and_istiod_trust_each_other_through_a_root_rotation() {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    let t = scratch();
    let d = t.path();
    let cp = ControlPlane::start(&["cluster1", "cluster2"]);
    install_istio_base(&cp, "cluster2");
    cp.service_account("cluster1", "foo", "httpbin");
    cp.service_account("cluster2", "foo", "sleep");
    for c in ["mgmt", "cluster1", "cluster2"] {
        fs::create_dir_all(d.join("store").join(c)).unwrap();
    }
    fs::write(d.join("policy.yaml"), meshca_testkit::ROTATING_ROOT_POLICY).unwrap();

    // The manager's clock starts in the past, so that every phase's time is still behind the
    // real clock the CA servers check validity with.
    let clock = d.join("now");
    let set_clock = |at: OffsetDateTime| {
        let tmp = d.join("now.tmp");
        fs::write(&tmp, at.format(&Rfc3339).unwrap()).unwrap();
        fs::rename(&tmp, &clock).unwrap();
    };
    let t0 = OffsetDateTime::now_utc() - time::Duration::days(5) - time::Duration::hours(6);
    set_clock(t0);
    let mut run = Command::new(MESHCA);
    run.args(["trust", "run", "-f", "policy.yaml", "--store", "store"])
        .args(["--poll", "100ms", "--clock-file"])
        .arg(&clock)
        .env("MESHCA_LOG", "info");
    let manager = Process::start(d, "trust-run", run);
    let cacerts = |c: &str| d.join("store").join(c).join("istio-system/cacerts");
    let start = Instant::now();
    while !(cacerts("cluster1").join("ca-key.pem").exists()
        && cacerts("cluster2").join("ca-key.pem").exists())
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no cacerts: {}",
            manager.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let phase = || {
        let out = run_in(
            MESHCA,
            d,
            [
                "trust",
                "status",
                "-f",
                "policy.yaml",
                "--store",
                "store",
                "-o",
                "json",
            ],
            &[],
        )
        .ok();
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v["rotation"]["phase"].as_str().unwrap_or("idle").to_owned()
    };

    // cluster1's CA is meshca serve, cluster2's is istiod; both sign with what the manager writes.
    let (serve, serve_addr) = meshca_serve(&cp, "cluster1", d, &cacerts("cluster1"));
    // Without ISTIO_MULTIROOT_MESH istiod refuses every cacerts whose root-cert.pem differs from
    // the one it started with ("Multi root is disabled, updating new ROOT-CA not supported") and
    // goes on signing with the old bundle; with it, it takes a root bundle that adds to or
    // drops from the one in use, as each phase does.
    let istiod = Istiod::start(
        &cp,
        "cluster2",
        &d.join("istiod"),
        Some(&cacerts("cluster2")),
        &[("ISTIO_MULTIROOT_MESH", "true")],
    );
    let root_of = |c: &str| fs::read_to_string(cacerts(c).join("root-cert.pem")).unwrap();
    let mut httpbin = PilotAgent::start(
        &d.join("httpbin"),
        &agent_config(
            &cp,
            "cluster1",
            "httpbin",
            &serve_addr,
            root_of("cluster1"),
            Some("8s"),
        ),
    );
    let mut sleep = PilotAgent::start(
        &d.join("sleep"),
        &agent_config(
            &cp,
            "cluster2",
            "sleep",
            &istiod.ca_addr(),
            root_of("cluster2"),
            Some("8s"),
        ),
    );

    let work = d.join("verify");
    fs::create_dir_all(&work).unwrap();
    let mut at = t0;
    let mut seen = Vec::new();
    for (step, want) in [
        (time::Duration::ZERO, "idle"),
        (
            time::Duration::days(5) + time::Duration::hours(1),
            "1/3 add-root",
        ),
        (time::Duration::hours(2), "2/3 reissue"),
        (time::Duration::hours(2), "idle"),
    ] {
        at += step;
        set_clock(at);
        let start = Instant::now();
        while phase() != want {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no phase {want}: {}",
                manager.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The store has settled for this phase once a reconcile changes nothing more.
        std::thread::sleep(Duration::from_millis(500));
        // The kubelet's part: the mounted root bundle follows the cluster's roots.
        httpbin.set_ca_root(&root_of("cluster1"));
        sleep.set_ca_root(&root_of("cluster2"));
        let (h_out, s_out) = (httpbin.out_dir(), sleep.out_dir());
        httpbin.wait_for(
            &format!("httpbin's certificate from cluster1's bundle at {want}"),
            CERT_WAIT,
            || agent_has(&h_out, &cacerts("cluster1")),
        );
        sleep.wait_for(
            &format!("sleep's certificate from cluster2's bundle at {want}"),
            CERT_WAIT,
            || agent_has(&s_out, &cacerts("cluster2")),
        );
        let roots = (
            ders(&h_out.join("root-cert.pem")).len(),
            ders(&s_out.join("root-cert.pem")).len(),
        );
        let a = cross_verify(&work, &h_out, &s_out);
        let b = cross_verify(&work, &s_out, &h_out);
        println!(
            "phase {want} (after {:?}): roots held {roots:?}; httpbin -> sleep's roots: {}; sleep -> httpbin's roots: {}",
            start.elapsed(),
            a.trim(),
            b.trim()
        );
        seen.push((want, roots, ders(&h_out.join("root-cert.pem"))));
    }
    // Both roots were trusted in the middle phases, one before and after.
    assert_eq!(
        seen.iter().map(|(_, r, _)| *r).collect::<Vec<_>>(),
        [(1, 1), (2, 2), (2, 2), (1, 1)],
        "roots held at each phase"
    );
    let (old_root, new_root) = (&seen[0].2[0], &seen[3].2[0]);
    assert_ne!(old_root, new_root, "the root was replaced");
    assert!(
        seen[1].2.contains(old_root) && seen[1].2.contains(new_root),
        "both roots during the rotation"
    );
    drop((httpbin, sleep, serve, istiod, manager));
}
