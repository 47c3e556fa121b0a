//! `meshca trust` with the Kubernetes store, against real kube-apiservers on loopback (one etcd,
//! an API server per cluster: see `meshca_testkit::kube`). Seed 001 as written, with the seed's
//! own `kubectl` commands; foreign and missing things; `trust run` repairing what is deleted or
//! edited, making no request when there is nothing to do, and going on when an API server dies;
//! clusters from Istio remote secrets.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures by design

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshca_testkit::kube::{ControlPlane, request_count};
use meshca_testkit::{openssl, run_in};

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

use meshca_testkit::SEED_001_POLICY as SEED_POLICY;

/// Seed 001 step 1 (see [`ControlPlane::seed_root`]), and the seed's policy in files.
fn seed_root(cp: &ControlPlane, dir: &Path) {
    cp.seed_root(Path::new(MESHCA), dir);
    // ECDSA intermediates keep the test fast; the policy is the seed's otherwise.
    let policy = SEED_POLICY.replace(
        "      ttlDays: 1\n",
        "      ttlDays: 1\n      keyType: ecdsa-p256\n",
    );
    let policy = policy.replace("admin.gloo.solo.io/v2", "trust.meshca/v1alpha1");
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
    std::fs::write(dir.join("seed-policy.yaml"), SEED_POLICY).unwrap();
}

fn kube_args(cp: &ControlPlane) -> Vec<String> {
    [
        "--store",
        "kube",
        "--kubeconfig",
        &cp.kubeconfig().display().to_string(),
        "--mgmt-context",
        "mgmt",
        "--cluster",
        "cluster1=cluster1",
        "--cluster",
        "cluster2=cluster2",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn meshca(dir: &Path, args: &[&str], extra: &[String]) -> meshca_testkit::Run {
    let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    all.extend(extra.iter().cloned());
    run_in(MESHCA, dir, &all, &[("MESHCA_LOG", "warn")])
}

/// The secret's field as the seed reads it: `kubectl get secret ... -o jsonpath=... | base64 --decode`.
fn secret_field(
    cp: &ControlPlane,
    dir: &Path,
    context: &str,
    ns: &str,
    name: &str,
    key: &str,
) -> String {
    let key = key.replace('.', "\\.");
    cp.seed_shell(
        dir,
        &format!(
            "kubectl get secret {name} -n {ns} -o jsonpath='{{.data.{key}}}' --context {context} | base64 --decode"
        ),
    )
    .ok()
    .stdout
}

fn resource_version(cp: &ControlPlane, context: &str) -> String {
    cp.kubectl_ok([
        "--context",
        context,
        "-n",
        "istio-system",
        "get",
        "secret",
        "cacerts",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ])
}

/// Requests for secrets, other than watches, that the API server of `cluster` has answered.
fn secret_requests(cp: &ControlPlane, cluster: &str) -> f64 {
    let metrics = cp.raw_get(cluster, "/metrics");
    request_count(&metrics, |l| {
        l.get("resource") == "secrets" && l.get("verb") != "WATCH"
    })
}

fn secret_writes(cp: &ControlPlane, cluster: &str) -> f64 {
    let metrics = cp.raw_get(cluster, "/metrics");
    request_count(&metrics, |l| {
        l.get("resource") == "secrets"
            && // The verb label is the HTTP method (POST, PUT), or LIST, WATCH, APPLY.
            matches!(l.get("verb"), "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE")
    })
}

/// Checks a cluster's cacerts as the seed does and more: it exists, its root is the policy's
/// root byte for byte, its intermediate verifies to that root with openssl, and it is labelled
/// and annotated as meshca's.
fn check_cacerts(cp: &ControlPlane, dir: &Path, cluster: &str) {
    let out = cp
        .seed_shell(
            dir,
            &format!("kubectl get secret cacerts -n istio-system --context {cluster}"),
        )
        .ok();
    out.says("cacerts");
    let root = secret_field(
        cp,
        dir,
        "mgmt",
        "gloo-mesh",
        "my-root-trust-policy.gloo-mesh",
        "ca-cert.pem",
    );
    let theirs = secret_field(cp, dir, cluster, "istio-system", "cacerts", "root-cert.pem");
    assert_eq!(
        root, theirs,
        "{cluster}: the root in cacerts is the policy's root"
    );
    let ca = secret_field(cp, dir, cluster, "istio-system", "cacerts", "ca-cert.pem");
    std::fs::write(dir.join(format!("{cluster}-ca-cert.pem")), &ca).unwrap();
    std::fs::write(dir.join(format!("{cluster}-root.pem")), &theirs).unwrap();
    let v = openssl(
        dir,
        [
            "verify",
            "-CAfile",
            &format!("{cluster}-root.pem"),
            &format!("{cluster}-ca-cert.pem"),
        ],
    )
    .ok();
    assert!(v.stdout.contains(": OK"), "{}", v.stdout);
    let labels = cp.kubectl_ok([
        "--context",
        cluster,
        "-n",
        "istio-system",
        "get",
        "secret",
        "cacerts",
        "-o",
        "jsonpath={.metadata.labels.app\\.kubernetes\\.io/managed-by} {.metadata.annotations.trust\\.meshca/policy} {.metadata.annotations.trust\\.meshca/not-after}",
    ]);
    assert!(
        labels.starts_with("meshca gloo-mesh/root-trust-policy 20"),
        "{cluster}: {labels}"
    );
    let keys = cp.kubectl_ok([
        "--context",
        cluster,
        "-n",
        "istio-system",
        "get",
        "secret",
        "cacerts",
        "-o",
        "go-template={{range $k, $v := .data}}{{$k}} {{end}}",
    ]);
    assert_eq!(
        keys.trim(),
        "ca-cert.pem ca-key.pem cert-chain.pem root-cert.pem",
        "exactly the bundle's keys"
    );
}

#[test]
fn seed_001_as_written_on_real_api_servers() {
    let cp = ControlPlane::mesh();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    seed_root(&cp, d);
    let before: Vec<f64> = ["cluster1", "cluster2"]
        .iter()
        .map(|c| secret_writes(&cp, c))
        .collect();
    // The seed's own policy, Gloo's schema as written (RSA-4096 intermediates by default).
    let out = meshca(
        d,
        &["trust", "apply", "-f", "seed-policy.yaml"],
        &kube_args(&cp),
    )
    .ok();
    out.says("cluster1: cacerts created");
    out.says("cluster2: cacerts created");
    for c in ["cluster1", "cluster2"] {
        check_cacerts(&cp, d, c);
    }
    // One write per changed cluster, counted by the API servers themselves.
    for (c, b) in ["cluster1", "cluster2"].iter().zip(&before) {
        assert_eq!(secret_writes(&cp, c) - b, 1.0, "{c}: one write");
    }
    // Again: nothing to do, nothing written.
    let rv: Vec<String> = ["cluster1", "cluster2"]
        .iter()
        .map(|c| resource_version(&cp, c))
        .collect();
    let writes: Vec<f64> = ["cluster1", "cluster2"]
        .iter()
        .map(|c| secret_writes(&cp, c))
        .collect();
    let out = meshca(
        d,
        &["trust", "apply", "-f", "seed-policy.yaml"],
        &kube_args(&cp),
    )
    .ok();
    out.says("cluster1: fresh, nothing to do");
    for (i, c) in ["cluster1", "cluster2"].iter().enumerate() {
        assert_eq!(resource_version(&cp, c), rv[i]);
        assert_eq!(
            secret_writes(&cp, c),
            writes[i],
            "{c}: a no-op writes nothing"
        );
    }
    // Status reads the same store.
    let st = meshca(
        d,
        &["trust", "status", "-f", "seed-policy.yaml", "-o", "json"],
        &kube_args(&cp),
    )
    .ok();
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(st["clusters"].as_array().unwrap().len(), 2, "{st}");
    // A forced rotation: one write per cluster, a new serial.
    let out = meshca(
        d,
        &["trust", "rotate-intermediates", "-f", "seed-policy.yaml"],
        &kube_args(&cp),
    )
    .ok();
    out.says("cluster2: intermediate rotated");
    for (i, c) in ["cluster1", "cluster2"].iter().enumerate() {
        assert_eq!(secret_writes(&cp, c) - writes[i], 1.0, "{c}: one write");
        check_cacerts(&cp, d, c);
    }
}

#[test]
fn foreign_secrets_missing_namespaces_and_unreachable_clusters_are_reported() {
    let cp = ControlPlane::start(&["mgmt", "cluster1", "cluster2"]);
    cp.kubectl_ok(["--context", "mgmt", "create", "namespace", "gloo-mesh"]);
    cp.kubectl_ok([
        "--context",
        "cluster1",
        "create",
        "namespace",
        "istio-system",
    ]);
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    seed_root(&cp, d);
    // cluster2 has no istio-system: reported, cluster1 done all the same.
    let out = meshca(d, &["trust", "apply", "-f", "policy.yaml"], &kube_args(&cp)).failed();
    out.says("cluster1: cacerts created");
    out.says("cluster2: FAILED: cluster cluster2 (https://127.0.0.1:")
        .says("namespace istio-system does not exist (create it, or pass --create-namespace)");
    assert!(out.stderr.contains("1 cluster(s) failed"), "{}", out.stderr);
    let mut args = kube_args(&cp);
    args.push("--create-namespace".into());
    let out = meshca(d, &["trust", "apply", "-f", "policy.yaml"], &args).ok();
    out.says("cluster2: cacerts created");

    // A cacerts made by hand (plugged-in certs, the seed 002 way) is left alone and reported.
    cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "istio-system",
        "delete",
        "secret",
        "cacerts",
    ]);
    // Plugged in from a root of its own.
    let other = d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    run_in(
        MESHCA,
        &other,
        ["certs", "handmade-cacerts"],
        &[
            ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
            ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
        ],
    )
    .ok();
    cp.seed_shell(
        &other.join("handmade"),
        "kubectl create secret generic cacerts -n istio-system --context $REMOTE_CONTEXT1 \\
--from-file=ca-cert.pem --from-file=ca-key.pem --from-file=root-cert.pem --from-file=cert-chain.pem",
    )
    .ok();
    let rv = resource_version(&cp, "cluster1");
    let out = meshca(d, &["trust", "apply", "-f", "policy.yaml"], &kube_args(&cp)).failed();
    out.says("cluster1: FAILED: cluster1/istio-system/cacerts: not made by meshca (no label app.kubernetes.io/managed-by=meshca): left alone; --adopt lets meshca replace it");
    out.says("cluster2: fresh");
    assert_eq!(resource_version(&cp, "cluster1"), rv, "untouched");
    let mut args = kube_args(&cp);
    args.push("--adopt".into());
    let out = meshca(d, &["trust", "apply", "-f", "policy.yaml"], &args).ok();
    assert!(
        out.stdout
            .contains("cluster1: intermediate rotated (not signed by the policy's CA)"),
        "{}",
        out.stdout
    );
    check_cacerts(&cp, d, "cluster1");

    // An API server that is down: named, the other cluster done, non-zero exit.
    let mut cp = cp;
    cp.kill("cluster2");
    let mut args = kube_args(&cp);
    args.extend(["--request-timeout".to_owned(), "3s".to_owned()]);
    let started = Instant::now();
    let out = meshca(
        d,
        &["trust", "rotate-intermediates", "-f", "policy.yaml"],
        &args,
    )
    .failed();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    out.says("cluster1: intermediate rotated");
    assert!(
        out.stdout
            .contains("cluster2: FAILED: cluster cluster2 (https://127.0.0.1:"),
        "{}",
        out.stdout
    );
    check_cacerts(&cp, d, "cluster1");
    cp.restart("cluster2");
    let out = meshca(d, &["trust", "apply", "-f", "policy.yaml"], &kube_args(&cp)).ok();
    out.says("cluster2: fresh");
    check_cacerts(&cp, d, "cluster2");

    // A kubeconfig context that does not exist: one clear line, before anything is done.
    let mut args = kube_args(&cp);
    args.extend(["--cluster".to_owned(), "cluster3=nowhere".to_owned()]);
    let out = meshca(d, &["trust", "apply", "-f", "policy.yaml"], &args).failed();
    assert!(
        out.stderr
            .contains("--cluster cluster3=nowhere: no context \"nowhere\" in the kubeconfig"),
        "{}",
        out.stderr
    );
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    wait_for_logged(what, limit, &mut ok, &String::new)
}

/// [`wait_for`], showing `log()` when time runs out.
fn wait_for_logged(
    what: &str,
    limit: Duration,
    mut ok: impl FnMut() -> bool,
    log: &dyn Fn() -> String,
) -> Duration {
    let started = Instant::now();
    while !ok() {
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

fn cacerts_exists(cp: &ControlPlane, cluster: &str) -> bool {
    cp.kubectl()
        .args([
            "--context",
            cluster,
            "-n",
            "istio-system",
            "get",
            "secret",
            "cacerts",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn trust_run_watches_repairs_and_is_silent_when_idle() {
    let mut cp = ControlPlane::mesh();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    seed_root(&cp, d);
    let mut args: Vec<String> = ["trust", "run", "-f", "policy.yaml", "--resync", "1s"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.extend(kube_args(&cp));
    args.extend(["--request-timeout".to_owned(), "2s".to_owned()]);
    let log = d.join("run.log");
    let run = Running(
        Command::new(MESHCA)
            .args(&args)
            .current_dir(d)
            .env("MESHCA_LOG", "warn")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("both cacerts", Duration::from_secs(60), || {
        cacerts_exists(&cp, "cluster1") && cacerts_exists(&cp, "cluster2")
    });
    wait_for("a quiet reconcile", Duration::from_secs(30), || {
        logged().contains("2 cluster(s) fresh")
    });
    check_cacerts(&cp, d, "cluster1");

    // Idle: it reconciles every second (--resync 1s) and asks the API servers nothing.
    let reconciles = |s: &str| s.matches("reconciled at").count();
    let before: Vec<f64> = ["mgmt", "cluster1", "cluster2"]
        .iter()
        .map(|c| secret_requests(&cp, c))
        .collect();
    let n0 = reconciles(&logged());
    std::thread::sleep(Duration::from_secs(4));
    let after: Vec<f64> = ["mgmt", "cluster1", "cluster2"]
        .iter()
        .map(|c| secret_requests(&cp, c))
        .collect();
    assert!(
        reconciles(&logged()) >= n0 + 2,
        "it reconciled meanwhile:\n{}",
        logged()
    );
    assert_eq!(before, after, "no-op reconciles make no request");

    // Deleted: back within 2 s.
    cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "istio-system",
        "delete",
        "secret",
        "cacerts",
    ]);
    let took = wait_for("cacerts back", Duration::from_secs(2), || {
        cacerts_exists(&cp, "cluster1")
    });
    eprintln!("deleted cacerts recreated in {took:?}");
    check_cacerts(&cp, d, "cluster1");
    // Edited by hand (its root replaced by junk): repaired within 2 s.
    let rv = resource_version(&cp, "cluster2");
    // The version comes from the patch's own answer: the repair may beat a second look.
    let edited = cp.kubectl_ok([
        "--context",
        "cluster2",
        "-n",
        "istio-system",
        "patch",
        "secret",
        "cacerts",
        "-p",
        r#"{"data":{"root-cert.pem":"am9uaw=="}}"#,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    assert_ne!(rv, edited);
    wait_for_logged(
        "cacerts repaired",
        Duration::from_secs(2),
        || resource_version(&cp, "cluster2") != edited,
        &logged,
    );
    check_cacerts(&cp, d, "cluster2");

    // cluster2's API server dies: cluster1 is still looked after; cluster2 comes back.
    cp.kill("cluster2");
    cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "istio-system",
        "delete",
        "secret",
        "cacerts",
    ]);
    wait_for(
        "cluster1 repaired while cluster2 is down",
        Duration::from_secs(10),
        || cacerts_exists(&cp, "cluster1"),
    );
    wait_for("cluster2 reported", Duration::from_secs(20), || {
        logged().contains("cluster2: FAILED")
    });
    cp.restart("cluster2");
    let restored_at = logged().len();
    wait_for(
        "convergence after the restart",
        Duration::from_secs(90),
        || logged()[restored_at..].contains("2 cluster(s) fresh"),
    );
    check_cacerts(&cp, d, "cluster2");
    drop(run);
}

#[test]
fn clusters_from_istio_remote_secrets() {
    let cp = ControlPlane::mesh();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    seed_root(&cp, d);
    cp.kubectl_ok(["--context", "mgmt", "create", "namespace", "istio-system"]);
    // What `istioctl create-remote-secret` leaves in the primary: a kubeconfig per cluster.
    for c in ["cluster1", "cluster2"] {
        let kc = cp.kubectl_ok(["config", "view", "--minify", "--flatten", "--context", c]);
        let file: PathBuf = d.join(format!("{c}.kubeconfig"));
        std::fs::write(&file, kc).unwrap();
        let name = format!("istio-remote-secret-{c}");
        cp.kubectl_ok([
            "--context",
            "mgmt",
            "-n",
            "istio-system",
            "create",
            "secret",
            "generic",
            &name,
            &format!("--from-file={c}={}", file.display()),
        ]);
        cp.kubectl_ok([
            "--context",
            "mgmt",
            "-n",
            "istio-system",
            "label",
            "secret",
            &name,
            "istio/multiCluster=true",
        ]);
    }
    let kubeconfig = cp.kubeconfig().display().to_string();
    let out = meshca(
        d,
        &[
            "trust",
            "apply",
            "-f",
            "policy.yaml",
            "--kubeconfig",
            &kubeconfig,
            "--mgmt-context",
            "mgmt",
            "--remote-secrets",
        ],
        &[],
    )
    .ok();
    out.says("cluster1: cacerts created");
    out.says("cluster2: cacerts created");
    for c in ["cluster1", "cluster2"] {
        check_cacerts(&cp, d, c);
    }
    // The same clusters by context: the same secrets, found fresh.
    let out = meshca(d, &["trust", "apply", "-f", "policy.yaml"], &kube_args(&cp)).ok();
    out.says("cluster1: fresh");
}
