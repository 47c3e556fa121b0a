//! Debian's real `cfssl serve` as the external signer of `meshca trust`: a CA-issuing profile
//! over a root made by the test, on a free loopback port, killed on drop.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kube::{Proc, free_ports};

/// cfssl's signing config: one CA-issuing profile, `intermediate`, without an auth key.
pub const CONFIG: &str = r#"{
  "signing": {
    "default": { "expiry": "24h", "usages": ["digital signature"] },
    "profiles": {
      "intermediate": {
        "expiry": "720h",
        "usages": ["digital signature", "cert sign", "crl sign"],
        "ca_constraint": { "is_ca": true, "max_path_len": 0, "max_path_len_zero": true }
      }
    }
  }
}"#;

/// A running `cfssl serve`.
pub struct Cfssl {
    proc: Option<Proc>,
    port: u16,
}

impl Cfssl {
    /// Whether `cfssl` is on the PATH (`scripts/test` installs Debian's golang-cfssl).
    pub fn available() -> bool {
        Command::new("cfssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Starts `cfssl serve` in `dir` with the CA `ca_cert`/`ca_key` (paths relative to `dir`
    /// or absolute) and [`CONFIG`] (written to `dir/cfssl.json`), on 127.0.0.1; waits until it
    /// listens. Its log is `dir/cfssl.log`.
    pub fn start(dir: &Path, ca_cert: &Path, ca_key: &Path) -> Cfssl {
        fs::write(dir.join("cfssl.json"), CONFIG).expect("write cfssl.json");
        let port = free_ports(1)[0];
        let mut cmd = Command::new("cfssl");
        cmd.current_dir(dir)
            .args(["serve", "-address", "127.0.0.1", "-port"])
            .arg(port.to_string())
            .arg("-ca")
            .arg(ca_cert)
            .arg("-ca-key")
            .arg(ca_key)
            .args(["-config", "cfssl.json"]);
        let mut proc = Proc::start(cmd, &dir.join("cfssl.log"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = proc.exited() {
                panic!("cfssl serve exited ({status})\n{}", proc.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "cfssl serve does not listen\n{}",
                proc.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Cfssl {
            proc: Some(proc),
            port,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A meshca RootTrustPolicy (`mesh` in `gloo-mesh`) whose intermediates this cfssl signs
    /// with its `intermediate` profile: ECDSA P-256, `ttl_days` days.
    pub fn policy(&self, ttl_days: u32) -> String {
        format!(
            "apiVersion: trust.meshca/v1alpha1
kind: RootTrustPolicy
metadata:
  name: mesh
  namespace: gloo-mesh
spec:
  config:
    externalSigner:
      cfssl:
        url: {}
        profile: intermediate
    intermediateCertOptions:
      ttlDays: {ttl_days}
      keyType: ecdsa-p256
",
            self.url()
        )
    }
}

impl Drop for Cfssl {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }
}
