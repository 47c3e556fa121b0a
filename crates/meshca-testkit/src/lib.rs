//! Test support shared by meshca's integration tests: running the real `openssl` CLI as an
//! independent checker, snapshots of folders to prove that a failed run changed nothing, Istio's
//! sample certificates from its Go module, bundles issued by `openssl ca` ([`openssl_ca`]), and
//! ([`kube`]) a real Kubernetes control plane on loopback.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cfssl;
pub mod istio;
pub mod kube;
pub mod openssl_ca;
pub mod process;
pub mod s_client;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Seed 001's RootTrustPolicy as the seed writes it: a secretRef root
/// (`my-root-trust-policy.gloo-mesh` in `gloo-mesh`), one-day intermediates renewed at 10% left.
pub const SEED_001_POLICY: &str = "apiVersion: admin.gloo.solo.io/v2
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

/// A generated root of ten days, rotated by itself at half its life, with no propagation
/// allowance; intermediates of eight days and one-hour workload certificates: a root rotation
/// whose phases a fake clock walks through in hours, each certificate it makes valid for days.
pub const ROTATING_ROOT_POLICY: &str = "apiVersion: trust.meshca/v1alpha1
kind: RootTrustPolicy
metadata:
  name: mesh
  namespace: gloo-mesh
spec:
  config:
    mgmtServerCa:
      generated:
        ttlDays: 10
    rootRotation:
      gracePeriodRatio: 0.5
      propagationMinutes: 0
    intermediateCertOptions:
      ttlDays: 8
      keyType: ecdsa-p256
      workloadCertTtlHours: 1
";

/// [`ROTATING_ROOT_POLICY`] with intermediates of one day: a root rotation every five simulated
/// days and an intermediate one about every day, for drills that walk many of both.
pub const DAILY_ROTATING_ROOT_POLICY: &str = "apiVersion: trust.meshca/v1alpha1
kind: RootTrustPolicy
metadata:
  name: mesh
  namespace: gloo-mesh
spec:
  config:
    mgmtServerCa:
      generated:
        ttlDays: 10
    rootRotation:
      gracePeriodRatio: 0.5
      propagationMinutes: 0
    intermediateCertOptions:
      ttlDays: 1
      keyType: ecdsa-p256
      workloadCertTtlHours: 1
";

/// A policy with a root meshca generates and keeps in the management cluster (a year), and
/// 30-day ECDSA intermediates renewed at 10% left: quick to issue, far from any edge.
pub const GENERATED_ROOT_POLICY: &str = "apiVersion: trust.meshca/v1alpha1
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
      secretRotationGracePeriodRatio: 0.1
      keyType: ecdsa-p256
";

/// The output of a finished command, with text helpers.
#[derive(Debug)]
pub struct Run {
    /// exit code (-1 if killed by a signal)
    pub code: i32,
    /// standard output
    pub stdout: String,
    /// standard error
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with standard output unless it holds `text`.
    pub fn says(&self, text: &str) -> &Self {
        assert!(
            self.stdout.contains(text),
            "expected {text:?} in the output:\n{}{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics with both streams unless the command succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Panics unless the command failed; returns itself for checks on the message.
    pub fn failed(self) -> Self {
        assert_ne!(
            self.code, 0,
            "command succeeded but should not have\nstdout:\n{}",
            self.stdout
        );
        self
    }
}

/// Runs a program with arguments in `dir`, with extra environment variables.
pub fn run_in<I, S>(program: impl AsRef<OsStr>, dir: &Path, args: I, env: &[(&str, &str)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run::from(cmd.output().expect("command starts"))
}

/// Runs the `openssl` CLI in `dir`.
pub fn openssl<I, S>(dir: &Path, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_in("openssl", dir, args, &[])
}

/// `openssl x509 -noout -text` of a certificate file.
pub fn x509_text(dir: &Path, file: &str) -> String {
    openssl(dir, ["x509", "-noout", "-text", "-in", file])
        .ok()
        .stdout
}

/// Every file below `dir` with its contents and mode, for before/after comparisons.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (Vec<u8>, u32)>) {
    for e in std::fs::read_dir(dir).expect("readable folder").flatten() {
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p).expect("metadata");
        let rel = p.strip_prefix(root).expect("below root").to_owned();
        if meta.is_dir() {
            out.insert(rel, (Vec::new(), meta.permissions().mode()));
            walk(root, &p, out);
        } else {
            out.insert(
                rel,
                (
                    std::fs::read(&p).unwrap_or_default(),
                    meta.permissions().mode(),
                ),
            );
        }
    }
}

/// The mode bits of a file.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// The `istio.io/istio` module the tests take Istio's own files from (the same version the
/// Istio peers are built from).
pub const ISTIO_MODULE: &str = "istio.io/istio@v0.0.0-20260827124520-eed52ebb66ad";

/// Istio's sample plug-in CA certificates (`samples/certs/` of [`ISTIO_MODULE`]: `ca-cert.pem`,
/// `ca-key.pem`, `cert-chain.pem`, `root-cert.pem` and their `-alt` set), from Go's module cache,
/// downloaded through the Go module proxy the first time on a machine. Read-only.
pub fn istio_samples() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        // Outside any module, so that no go.mod around decides what is downloaded.
        let scratch = std::env::temp_dir();
        let out = Command::new("go")
            .args(["mod", "download", "-json", ISTIO_MODULE])
            .current_dir(&scratch)
            .env("GOFLAGS", "-mod=mod")
            .output()
            .expect("go runs (Go is needed to fetch Istio's sample certificates)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "go mod download {ISTIO_MODULE} failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("\"Dir\": \""))
            .and_then(|l| l.strip_suffix("\","))
            .unwrap_or_else(|| panic!("no Dir in go mod download's answer:\n{text}"));
        let certs = Path::new(dir).join("samples/certs");
        assert!(certs.join("ca-cert.pem").is_file(), "{}", certs.display());
        certs
    })
    .clone()
}

/// The PEM blocks of a file, each as text.
pub fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END") {
            out.push(cur.clone());
        }
    }
    out
}
