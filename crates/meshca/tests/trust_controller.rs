//! `meshca trust run` as the in-cluster controller, against real kube-apiservers on loopback:
//! RootTrustPolicy resources applied with kubectl (seed 001's verbatim), reconciled and reported
//! in `.status` and Events; an edited policy rotating; an invalid policy and two policies over one
//! cluster reported, not fought over; two replicas electing one leader through a Lease, and the
//! survivor of a SIGKILLed leader finishing the root rotation it left, no `cacerts` ever written
//! by both.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures by design

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshca_testkit::SEED_001_POLICY;
use meshca_testkit::kube::ControlPlane;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

/// The committed definitions, applied as a user would.
fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds")
}

/// The mesh with the definitions installed and the manager's namespace.
fn controlled_mesh() -> ControlPlane {
    let cp = ControlPlane::mesh();
    let crds = crds_dir().display().to_string();
    cp.kubectl_ok(["--context", "mgmt", "apply", "--server-side", "-k", &crds]);
    for group in ["admin.gloo.solo.io", "trust.meshca"] {
        cp.kubectl_ok([
            "--context",
            "mgmt",
            "wait",
            "--for",
            "condition=established",
            "--timeout",
            "30s",
            &format!("crd/roottrustpolicies.{group}"),
        ]);
    }
    cp.kubectl_ok(["--context", "mgmt", "create", "namespace", "meshca-system"]);
    cp
}

/// A `trust run` replica over the resources, its output in `<dir>/<name>.log`.
struct Replica {
    child: Child,
    log: PathBuf,
}

impl Replica {
    fn start(cp: &ControlPlane, dir: &Path, name: &str, extra: &[&str]) -> Replica {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let kubeconfig = cp.kubeconfig().display().to_string();
        let mut args = vec![
            "trust",
            "run",
            "--store",
            "kube",
            "--kubeconfig",
            &kubeconfig,
            "--mgmt-context",
            "mgmt",
            "--cluster",
            "cluster1=cluster1",
            "--cluster",
            "cluster2=cluster2",
            "--poll",
            "100ms",
            "--leader-elect",
            "--lease-namespace",
            "meshca-system",
            "--lease-identity",
            name,
        ];
        args.extend_from_slice(extra);
        let child = Command::new(MESHCA)
            .args(&args)
            .current_dir(dir)
            .env("MESHCA_LOG", "warn")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Replica { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&self, text: &str) {
        wait_until(&format!("{text:?} in {}", self.log.display()), 60, || {
            self.output().contains(text)
        });
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {}:\n{}", self.log.display(), self.output());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A field of a resource by JSONPath, "" when it or the resource is absent.
fn field(cp: &ControlPlane, context: &str, what: &[&str], path: &str) -> String {
    let out = cp
        .kubectl()
        .args(["--context", context, "get"])
        .args(what)
        .args(["-o", &format!("jsonpath={path}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn policy_field(cp: &ControlPlane, resource: &str, name: &str, path: &str) -> String {
    field(cp, "mgmt", &[resource, "-n", "gloo-mesh", name], path)
}

fn condition(cp: &ControlPlane, resource: &str, name: &str, type_: &str, what: &str) -> String {
    policy_field(
        cp,
        resource,
        name,
        &format!("{{.status.conditions[?(@.type==\"{type_}\")].{what}}}"),
    )
}

fn serial(cp: &ControlPlane, cluster: &str) -> String {
    field(
        cp,
        cluster,
        &["secret", "cacerts", "-n", "istio-system"],
        "{.metadata.annotations.trust\\.meshca/serial}",
    )
}

fn apply(cp: &ControlPlane, yaml: &str) {
    let mut child = cp
        .kubectl()
        .args(["--context", "mgmt", "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const GLOO: &str = "roottrustpolicies.admin.gloo.solo.io";
const MESHCA_RTP: &str = "roottrustpolicies.trust.meshca";

#[test]
fn the_seeds_policy_applied_with_kubectl_is_reconciled_reported_and_kept() {
    let cp = controlled_mesh();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    cp.seed_root(Path::new(MESHCA), dir);
    let manager = Replica::start(&cp, dir, "manager-0", &[]);
    manager.wait_for("leading: lease meshca-system/meshca-trust held by manager-0");

    // Seed 001, step 2, exactly as written.
    cp.seed_shell(
        dir,
        &format!("kubectl apply --context $MGMT_CONTEXT -f- << EOF\n{SEED_001_POLICY}EOF"),
    )
    .ok();
    let rtp = "root-trust-policy";
    wait_until("Ready", 90, || {
        condition(&cp, GLOO, rtp, "Ready", "status") == "True"
    });
    assert_eq!(
        policy_field(&cp, GLOO, rtp, "{.status.observedGeneration}"),
        "1"
    );
    assert_eq!(
        policy_field(&cp, GLOO, rtp, "{.status.readyClusters}"),
        "2/2"
    );
    assert_eq!(
        policy_field(&cp, GLOO, rtp, "{.status.rotationPhase}"),
        "idle"
    );
    assert_eq!(condition(&cp, GLOO, rtp, "Degraded", "status"), "False");
    assert_eq!(condition(&cp, GLOO, rtp, "Rotating", "status"), "False");
    let root_fp = policy_field(&cp, GLOO, rtp, "{.status.clusters[0].rootFingerprints[0]}");
    assert_eq!(root_fp.len(), 95, "{root_fp:?}");
    let first: Vec<String> = ["cluster1", "cluster2"].map(|c| serial(&cp, c)).into();
    assert!(first.iter().all(|s| !s.is_empty()), "{first:?}");
    for (i, c) in ["cluster1", "cluster2"].iter().enumerate() {
        assert_eq!(
            policy_field(&cp, GLOO, rtp, &format!("{{.status.clusters[{i}].name}}")),
            *c
        );
        let reported = policy_field(&cp, GLOO, rtp, &format!("{{.status.clusters[{i}].serial}}"));
        assert_eq!(reported.replace(':', "").to_lowercase(), first[i]);
    }
    // What an operator sees.
    let table = cp.kubectl_ok(["--context", "mgmt", "get", GLOO, "-n", "gloo-mesh"]);
    for col in ["READY", "PHASE", "NEXT ROTATION", "AGE", "2/2", "idle"] {
        assert!(table.contains(col), "{col} not in\n{table}");
    }
    // The next rotation is a time to come, shown as the time itself.
    let next = policy_field(&cp, GLOO, rtp, "{.status.nextRotation}");
    assert!(
        !next.is_empty() && table.contains(&next) && !table.contains("<invalid>"),
        "{next:?} in\n{table}"
    );
    let events = cp.kubectl_ok([
        "--context",
        "mgmt",
        "get",
        "events",
        "-n",
        "gloo-mesh",
        "-o",
        "jsonpath={range .items[*]}{.reason} {.message}{\"\\n\"}{end}",
    ]);
    for c in ["cluster1", "cluster2"] {
        assert!(
            events.contains(&format!(
                "Issued cluster {c}: issued a first intermediate CA"
            )),
            "{events}\n{}",
            cp.kubectl_ok(["--context", "mgmt", "get", "events", "-A", "-o", "yaml"])
        );
    }

    // Editing the policy rotates within seconds.
    let edited = Instant::now();
    cp.kubectl_ok([
        "--context",
        "mgmt",
        "-n",
        "gloo-mesh",
        "patch",
        GLOO,
        rtp,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"config":{"intermediateCertOptions":{"ttlDays":2}}}}"#,
    ]);
    wait_until("both clusters rotated", 60, || {
        ["cluster1", "cluster2"]
            .iter()
            .zip(&first)
            .all(|(c, s)| !serial(&cp, c).is_empty() && &serial(&cp, c) != s)
            && policy_field(&cp, GLOO, rtp, "{.status.observedGeneration}") == "2"
            && condition(&cp, GLOO, rtp, "Ready", "status") == "True"
    });
    let took = edited.elapsed();
    assert!(took < Duration::from_secs(30), "rotation took {took:?}");
    let rotated: Vec<String> = ["cluster1", "cluster2"].map(|c| serial(&cp, c)).into();

    // An invalid policy: a condition saying what is wrong, and nothing written for it.
    apply(
        &cp,
        "apiVersion: trust.meshca/v1alpha1
kind: RootTrustPolicy
metadata:
  name: broken
  namespace: gloo-mesh
spec:
  clusters: [cluster1]
  config:
    mgmtServerCa:
      generated: {}
    intermediateCertOptions:
      secretRotationGracePeriodRatio: 1.5
",
    );
    wait_until("the invalid policy's condition", 30, || {
        condition(&cp, MESHCA_RTP, "broken", "Ready", "reason") == "InvalidPolicy"
    });
    let message = condition(&cp, MESHCA_RTP, "broken", "Degraded", "message");
    assert!(
        message.contains("RootTrustPolicy gloo-mesh/broken")
            && message.contains("secretRotationGracePeriodRatio must be between 0 and 1"),
        "{message}"
    );
    assert_eq!(
        field(
            &cp,
            "mgmt",
            &["secret", "-n", "gloo-mesh", "broken.root-ca"],
            "{.metadata.name}"
        ),
        ""
    );

    // A second policy over cluster2: a conflict told on both, cluster2 left as it is.
    let cluster2_version = field(
        &cp,
        "cluster2",
        &["secret", "cacerts", "-n", "istio-system"],
        "{.metadata.resourceVersion}",
    );
    apply(
        &cp,
        "apiVersion: trust.meshca/v1alpha1
kind: RootTrustPolicy
metadata:
  name: second
  namespace: gloo-mesh
spec:
  clusters: [cluster2]
  config:
    mgmtServerCa:
      generated: {}
    intermediateCertOptions:
      keyType: ecdsa-p256
",
    );
    wait_until("the conflict on both", 30, || {
        condition(&cp, MESHCA_RTP, "second", "Degraded", "reason") == "Conflict"
            && condition(&cp, GLOO, rtp, "Degraded", "reason") == "Conflict"
    });
    let message = condition(&cp, GLOO, rtp, "Degraded", "message");
    assert!(
        message.contains("cluster(s) cluster2 also covered by gloo-mesh/second"),
        "{message}"
    );
    assert_eq!(condition(&cp, GLOO, rtp, "Ready", "status"), "False");
    assert_eq!(
        field(
            &cp,
            "cluster2",
            &["secret", "cacerts", "-n", "istio-system"],
            "{.metadata.resourceVersion}",
        ),
        cluster2_version
    );
    cp.kubectl_ok([
        "--context",
        "mgmt",
        "-n",
        "gloo-mesh",
        "delete",
        MESHCA_RTP,
        "second",
    ]);
    wait_until("Ready again", 30, || {
        condition(&cp, GLOO, rtp, "Ready", "status") == "True"
    });
    assert_eq!(
        ["cluster1", "cluster2"].map(|c| serial(&cp, c)).to_vec(),
        rotated,
        "nothing rotated by the conflict"
    );
    // A replica stopped by SIGTERM gives the lease up at once, for the next to take.
    let mut manager = manager;
    let term = Command::new("kill")
        .args(["-TERM", &manager.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = manager.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", manager.output());
    assert_eq!(
        field(
            &cp,
            "mgmt",
            &["lease", "-n", "meshca-system", "meshca-trust"],
            "{.spec.holderIdentity}",
        ),
        "",
        "released"
    );
    let out = manager.output();
    assert!(out.ends_with("stopped\n"), "{out}");
}

/// Each line a watch printed: `<resourceVersion> <writer>`.
fn writers(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().nth(1).unwrap_or("-").to_owned())
        .collect()
}

#[test]
fn a_killed_leader_is_replaced_and_the_root_rotation_it_left_is_finished_by_one_writer() {
    let cp = controlled_mesh();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let clock = dir.join("now");
    let t0 = OffsetDateTime::now_utc();
    let set_clock = |at: OffsetDateTime| {
        let tmp = dir.join("now.tmp");
        std::fs::write(&tmp, at.format(&Rfc3339).unwrap()).unwrap();
        std::fs::rename(&tmp, &clock).unwrap();
    };
    set_clock(t0);
    // Every write to each cacerts, with the replica that made it.
    let mut watches = Vec::new();
    for c in ["cluster1", "cluster2"] {
        let file = dir.join(format!("{c}.writes"));
        let child = cp
            .kubectl()
            .args([
                "--context",
                c,
                "get",
                "secrets",
                "-n",
                "istio-system",
                "--field-selector",
                "metadata.name=cacerts",
                "--watch",
                "-o",
                "jsonpath={.metadata.resourceVersion} {.metadata.annotations.trust\\.meshca/writer}{\"\\n\"}",
            ])
            .stdout(std::fs::File::create(&file).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        watches.push((file, child));
    }
    // A root of ten days rotated at half its life; intermediates of a day; one-hour workloads.
    apply(&cp, meshca_testkit::DAILY_ROTATING_ROOT_POLICY);
    let clock_arg = clock.display().to_string();
    let extra = ["--clock-file", clock_arg.as_str(), "--lease-duration", "3s"];
    let mut a = Replica::start(&cp, dir, "replica-a", &extra);
    a.wait_for("leading: lease meshca-system/meshca-trust held by replica-a");
    let b = Replica::start(&cp, dir, "replica-b", &extra);
    b.wait_for("waiting for lease meshca-system/meshca-trust as replica-b");
    wait_until("Ready", 60, || {
        condition(&cp, MESHCA_RTP, "mesh", "Ready", "status") == "True"
    });
    let holder = || {
        field(
            &cp,
            "mgmt",
            &["lease", "-n", "meshca-system", "meshca-trust"],
            "{.spec.holderIdentity}",
        )
    };
    assert_eq!(holder(), "replica-a");
    assert!(!b.output().contains("leading"), "{}", b.output());

    // Past half the root's life: the rotation starts; its first phase settles.
    set_clock(t0 + time::Duration::days(5) + time::Duration::hours(1));
    wait_until("phase 1 settled", 60, || {
        policy_field(&cp, MESHCA_RTP, "mesh", "{.status.rotationPhase}") == "1/3 add-root"
            && condition(&cp, MESHCA_RTP, "mesh", "Ready", "status") == "True"
            && policy_field(
                &cp,
                MESHCA_RTP,
                "mesh",
                "{.status.clusters[*].rootFingerprints[1]}",
            )
            .split_whitespace()
            .count()
                == 2
    });
    // The leader dies in the middle of the phase's wait.
    let killed = Instant::now();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    wait_until("replica-b leading", 30, || {
        b.output()
            .contains("leading: lease meshca-system/meshca-trust held by replica-b")
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(3 + 3), "takeover took {took:?}");
    assert_eq!(holder(), "replica-b");

    // replica-b carries the rotation on from the state in the API server, phase by phase (the
    // last, dropping the old root, settles and finishes in one pass: nothing waits after it).
    let mut at = t0 + time::Duration::days(5) + time::Duration::hours(1);
    for phase in ["2/3 reissue", "idle"] {
        at += time::Duration::hours(2);
        set_clock(at);
        wait_until(phase, 60, || {
            policy_field(&cp, MESHCA_RTP, "mesh", "{.status.rotationPhase}") == phase
                && condition(&cp, MESHCA_RTP, "mesh", "Ready", "status") == "True"
        });
    }
    let roots = policy_field(
        &cp,
        MESHCA_RTP,
        "mesh",
        "{.status.clusters[*].rootFingerprints}",
    );
    assert_eq!(roots.matches(':').count(), 2 * 31, "one root each: {roots}");

    // No cacerts was ever written by both: replica-a's writes, then replica-b's, never again a.
    std::thread::sleep(Duration::from_millis(500));
    for (file, mut child) in watches {
        let _ = child.kill();
        let _ = child.wait();
        let w = writers(&file);
        assert!(!w.is_empty(), "{}", file.display());
        assert!(
            w.iter().all(|x| x == "replica-a" || x == "replica-b"),
            "every write names its replica: {w:?}"
        );
        let first_b = w.iter().position(|x| x == "replica-b").expect("b wrote");
        assert!(
            w[first_b..].iter().all(|x| x == "replica-b"),
            "{}: {w:?}",
            file.display()
        );
        assert!(w[..first_b].iter().any(|x| x == "replica-a"), "{w:?}");
    }
}
