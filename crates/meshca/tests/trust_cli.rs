//! Seed 001 through the binary: the seed's policy and root secret, `meshca trust apply`, then
//! `meshca verify roots` across the clusters' cacerts and `meshca trust status`.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::fs;

use meshca_testkit::run_in;

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

use meshca_testkit::SEED_001_POLICY as SEED_POLICY;

#[test]
fn seed_001_with_meshca_trust() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Step 1 of the seed: a root, copied into the four names of the secret.
    run_in(
        MESHCA,
        d,
        ["certs", "root-ca"],
        &[("ROOTCA_KEY_TYPE", "ecdsa-p256")],
    )
    .ok();
    let secret = d.join("store/mgmt/gloo-mesh/my-root-trust-policy.gloo-mesh");
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
    // Step 2: the policy. RSA-4096 intermediates by default, as Gloo's.
    let out = run_in(
        MESHCA,
        d,
        ["trust", "apply", "-f", "policy.yaml", "--store", "store"],
        &[],
    )
    .ok();
    assert!(
        out.stdout.contains("cluster1: cacerts created"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("cluster2: cacerts created"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("note: intermediates of 1 day(s) last less than 6 workload"),
        "{}",
        out.stdout
    );
    // The seed's check: each cluster's root-cert is the root of the secret.
    let out = run_in(
        MESHCA,
        d,
        [
            "verify",
            "roots",
            "store/cluster1/istio-system/cacerts",
            "store/cluster2/istio-system/cacerts",
        ],
        &[],
    )
    .ok();
    assert!(
        out.stdout
            .contains("✔ all 2 bundles trust each other's chains"),
        "{}",
        out.stdout
    );
    assert_eq!(
        fs::read(d.join("store/cluster1/istio-system/cacerts/root-cert.pem")).unwrap(),
        fs::read(secret.join("ca-cert.pem")).unwrap()
    );
    // Fresh bundles are left alone; status is healthy.
    let out = run_in(
        MESHCA,
        d,
        ["trust", "apply", "-f", "policy.yaml", "--store", "store"],
        &[],
    )
    .ok();
    assert_eq!(
        out.stdout.matches("fresh, nothing to do").count(),
        2,
        "{}",
        out.stdout
    );
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
    assert_eq!(v["clusters"].as_array().unwrap().len(), 2);
    assert!(v["clusters"][0]["problems"].as_array().unwrap().is_empty());
    assert!(v["rotation"].is_null());
    // Forcing one cluster.
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
            "cluster2",
        ],
        &[],
    )
    .ok();
    assert!(
        out.stdout
            .contains("cluster2: intermediate rotated (rotation requested)"),
        "{}",
        out.stdout
    );
    // A broken policy is one line and changes nothing.
    fs::write(d.join("bad.yaml"), SEED_POLICY.replace("0.1", "2")).unwrap();
    let out = run_in(
        MESHCA,
        d,
        ["trust", "apply", "-f", "bad.yaml", "--store", "store"],
        &[],
    )
    .failed();
    assert_eq!(out.stderr.lines().count(), 1);
    assert!(
        out.stderr
            .contains("bad.yaml: intermediateCertOptions.secretRotationGracePeriodRatio"),
        "{}",
        out.stderr
    );
}

const GENERATED_POLICY: &str = "apiVersion: trust.meshca/v1alpha1
kind: RootTrustPolicy
metadata:
  name: mesh
  namespace: gloo-mesh
spec:
  config:
    mgmtServerCa:
      generated:
        ttlDays: 365
    intermediateCertOptions:
      ttlDays: 30
      keyType: ecdsa-p256
";

fn generated_store(d: &std::path::Path) {
    for c in ["mgmt", "cluster1", "cluster2"] {
        fs::create_dir_all(d.join("store").join(c)).unwrap();
    }
    fs::write(d.join("policy.yaml"), GENERATED_POLICY).unwrap();
}

#[test]
fn rotate_root_plans_starts_and_refuses_a_second_start() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    generated_store(d);
    let trust = |args: &[&str]| {
        let mut all = vec!["trust"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-f", "policy.yaml", "--store", "store"]);
        run_in(MESHCA, d, all, &[])
    };
    trust(&["apply"]).ok();
    let before = meshca_testkit::snapshot(&d.join("store"));
    let out = trust(&["rotate-root", "--dry-run"]).ok();
    assert!(
        out.stdout.contains("dry run: nothing written"),
        "{}",
        out.stdout
    );
    for needle in [
        "phase 1/3 add-root",
        "root bundle updated: cluster1, cluster2",
        "+24h10m",
        "phase 2/3 reissue started",
        "intermediate re-issued: cluster1, cluster2",
        "+48h20m",
        "root rotation finished",
    ] {
        assert!(out.stdout.contains(needle), "{needle:?} in\n{}", out.stdout);
    }
    assert_eq!(meshca_testkit::snapshot(&d.join("store")), before);

    let out = trust(&["rotate-root"]).ok();
    assert!(
        out.stdout.contains("root rotation started"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("cluster1: root bundle updated"),
        "{}",
        out.stdout
    );
    let roots =
        fs::read_to_string(d.join("store/cluster1/istio-system/cacerts/root-cert.pem")).unwrap();
    assert_eq!(
        meshca_testkit::pem_blocks(&roots).len(),
        2,
        "both roots trusted"
    );
    let out = trust(&["status", "-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["rotation"]["phase"], "1/3 add-root");
    assert_eq!(v["clusters"][0]["rotation"], "1/3 add-root: done");
    let out = trust(&["rotate-root"]).failed();
    assert!(out.stderr.contains("already in progress"), "{}", out.stderr);
    // A secretRef root cannot invent its successor.
    fs::write(d.join("seed.yaml"), SEED_POLICY).unwrap();
    let out = run_in(
        MESHCA,
        d,
        [
            "trust",
            "rotate-root",
            "-f",
            "seed.yaml",
            "--store",
            "store",
            "--dry-run",
        ],
        &[],
    )
    .failed();
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

#[test]
fn simulate_reports_zero_broken_moments_through_a_root_rotation() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    generated_store(d);
    let out = run_in(
        MESHCA,
        d,
        [
            "trust",
            "simulate",
            "--policy",
            "policy.yaml",
            "--days",
            "90",
            "--clusters",
            "2",
            "-o",
            "json",
        ],
        &[],
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["failure_moments"], 0, "{}", out.stdout);
    assert_eq!(v["root_rotations_finished"], 1, "{}", out.stdout);
    assert!(
        v["intermediates_issued"].as_u64().unwrap() >= 2 * 4,
        "{}",
        out.stdout
    );
}

#[test]
fn run_keeps_the_store_reconciled_and_stops_cleanly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    generated_store(d);
    let mut child = Command::new(MESHCA)
        .current_dir(d)
        .args([
            "trust",
            "run",
            "-f",
            "policy.yaml",
            "--store",
            "store",
            "--poll",
            "100ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
                if l.contains(needle) {
                    return;
                }
                seen.push(l);
            }
        }
        panic!("no {needle:?} in {seen:#?}");
    };
    wait_for("cluster2: cacerts created");
    // A new cluster appears: the change wakes the manager long before its resync timer.
    fs::create_dir_all(d.join("store/cluster3")).unwrap();
    wait_for("cluster3: cacerts created");
    assert!(
        d.join("store/cluster3/istio-system/cacerts/ca-cert.pem")
            .is_file()
    );
    // A broken policy is refused and the last good one kept.
    fs::write(d.join("policy.yaml"), "not: [a policy").unwrap();
    wait_for("policy not reloaded");
    // SIGTERM: a clean stop.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    wait_for("stopped");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
