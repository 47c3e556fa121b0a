//! Seed 001 through the binary: the seed's policy and root secret, `meshca trust apply`, then
//! `meshca verify roots` across the clusters' cacerts and `meshca trust status`.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::fs;

use meshca_testkit::run_in;

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

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
    mgmtServerCa:
      secretRef:
        name: my-root-trust-policy.gloo-mesh
        namespace: gloo-mesh
";

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
        out.stdout.contains("✔ all 2 bundles share one root"),
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
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(v[0]["problems"].as_array().unwrap().is_empty());
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
