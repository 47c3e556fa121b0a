#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design
//! The cfssl client against Debian's real `cfssl serve` on loopback: a root made here with
//! meshca-pki, a config with CA-issuing profiles (one behind an auth key) and a leaf profile.
//! What cfssl returns is also checked with the `openssl` CLI. The failure cases (refusals,
//! a non-CA answer, nothing listening, a peer that hangs up or says nothing) must each give a
//! one-line error naming the signer, and none may hang.

use meshca_store::SecretKey;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use meshca_pki::{
    CaProfile, CaSigner, Certificate, KeyType, PrivateKey, Subject, WorkloadProfile, make_csr_pem,
};
use meshca_trust::cfssl::{CfsslConfig, CfsslError, CfsslSigner, intermediate_csr_pem};
use time::OffsetDateTime;

/// The hex auth key of the `intermediate` profile.
const AUTH_KEY: &str = "8f3a1c5e7b9d2f4061a3c5e7092b4d6f8e1a3c5e7b9d0f2a4c6e8a1b3d5f7091";

/// cfssl's signing config: `intermediate` (CA, pathlen 0, authenticated), `intermediate-open`
/// (the same without authentication, for `sign`), `ca-without-cert-sign` (CA:TRUE but a keyUsage
/// without keyCertSign, which cfssl makes as asked) and `leaf` (no CA constraint).
const CONFIG: &str = r#"{
  "auth_keys": {
    "meshca": { "type": "standard", "key": "AUTH_KEY" }
  },
  "signing": {
    "default": { "expiry": "24h", "usages": ["digital signature"] },
    "profiles": {
      "intermediate": {
        "expiry": "720h",
        "usages": ["digital signature", "cert sign", "crl sign"],
        "ca_constraint": { "is_ca": true, "max_path_len": 0, "max_path_len_zero": true },
        "auth_key": "meshca"
      },
      "intermediate-open": {
        "expiry": "720h",
        "usages": ["digital signature", "cert sign", "crl sign"],
        "ca_constraint": { "is_ca": true, "max_path_len": 0, "max_path_len_zero": true }
      },
      "ca-without-cert-sign": {
        "expiry": "720h",
        "usages": ["digital signature"],
        "ca_constraint": { "is_ca": true, "max_path_len": 0, "max_path_len_zero": true }
      },
      "leaf": {
        "expiry": "24h",
        "usages": ["digital signature", "key encipherment", "server auth"]
      }
    }
  }
}"#;

fn require_cfssl() {
    match Command::new("cfssl").arg("version").output() {
        Ok(out) if out.status.success() => {}
        _ => panic!("`cfssl` is not on PATH: install golang-cfssl (scripts/test does)"),
    }
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?} failed: {text}");
    text
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A port nothing listens on (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A self-signed P-256 CA, written as `<name>.pem` and `<name>-key.pem` (PKCS#8, as meshca
/// writes keys; `cfssl serve -ca-key` reads it as is).
fn make_root(dir: &Path, name: &str, cn: &str) -> (Certificate, PrivateKey) {
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let now = OffsetDateTime::now_utc();
    let profile = CaProfile {
        subject: Subject {
            organization: Some("meshca test".to_owned()),
            common_name: Some(cn.to_owned()),
            locality: None,
        },
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(90),
        path_len: None,
        dns_names: Vec::new(),
    };
    let cert = profile.self_signed(&key, &format!("{name}.pem")).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), key.to_pkcs8_pem()).unwrap();
    (cert, key)
}

/// A running `cfssl serve`, killed on drop.
struct CfsslServe {
    child: Child,
    url: String,
    root: Certificate,
    dir: tempfile::TempDir,
}

impl CfsslServe {
    fn start() -> Self {
        Self::start_with(false)
    }

    /// With `tls`, cfssl serves https with a certificate for 127.0.0.1 from a separate CA,
    /// written as `tls-ca.pem`.
    fn start_with(tls: bool) -> Self {
        require_cfssl();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (root, _) = make_root(d, "root", "Root CA");
        std::fs::write(d.join("config.json"), CONFIG.replace("AUTH_KEY", AUTH_KEY)).unwrap();
        let port = free_port();
        let port_arg = port.to_string();
        let mut args = vec![
            "serve".to_owned(),
            "-address".to_owned(),
            "127.0.0.1".to_owned(),
            "-port".to_owned(),
            port_arg,
            "-ca".to_owned(),
            path_str(&d.join("root.pem")).to_owned(),
            "-ca-key".to_owned(),
            path_str(&d.join("root-key.pem")).to_owned(),
            "-config".to_owned(),
            path_str(&d.join("config.json")).to_owned(),
        ];
        let scheme = if tls {
            let (tls_ca, tls_ca_key) = make_root(d, "tls-ca", "TLS CA");
            let issuer = CaSigner::new(tls_ca, tls_ca_key, "tls-ca-key.pem").unwrap();
            let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
            let now = OffsetDateTime::now_utc();
            let server = issuer
                .issue_workload(
                    &WorkloadProfile {
                        subject: Subject {
                            common_name: Some("cfssl".to_owned()),
                            ..Subject::default()
                        },
                        not_before: now - time::Duration::hours(1),
                        not_after: now + time::Duration::days(1),
                        uris: Vec::new(),
                        dns_names: vec!["localhost".to_owned()],
                        ips: vec!["127.0.0.1".parse().unwrap()],
                        key_usage_critical: true,
                    },
                    &key,
                    "server.pem",
                )
                .unwrap();
            std::fs::write(d.join("server.pem"), server.pem()).unwrap();
            std::fs::write(d.join("server-key.pem"), key.to_pkcs8_pem()).unwrap();
            args.extend([
                "-tls-cert".to_owned(),
                path_str(&d.join("server.pem")).to_owned(),
                "-tls-key".to_owned(),
                path_str(&d.join("server-key.pem")).to_owned(),
            ]);
            "https"
        } else {
            "http"
        };
        let log = std::fs::File::create(d.join("serve.log")).unwrap();
        let child = Command::new("cfssl")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut serve = CfsslServe {
            child,
            url: format!("{scheme}://127.0.0.1:{port}"),
            root,
            dir,
        };
        serve.wait_for_port(port);
        serve
    }

    /// Polls until the port accepts, for at most 15 s; fails at once if cfssl exits.
    fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("cfssl serve exited ({status}):\n{}", self.log());
            }
            let addr = ([127, 0, 0, 1], port).into();
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cfssl serve did not listen on port {port} within 15 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, profile: &str, auth_key: Option<&str>) -> CfsslConfig {
        CfsslConfig {
            url: self.url.clone(),
            auth_key_hex: auth_key.map(str::to_owned),
            profile: Some(profile.to_owned()),
            ..CfsslConfig::default()
        }
    }
}

impl Drop for CfsslServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn intermediate_subject(cluster: &str) -> Subject {
    Subject {
        organization: Some("meshca test".to_owned()),
        common_name: Some("Intermediate CA".to_owned()),
        locality: Some(cluster.to_owned()),
    }
}

/// Has `signer` sign a fresh P-256 intermediate for `cluster`.
fn sign_intermediate(
    signer: &CfsslSigner,
    cluster: &str,
) -> (Result<Certificate, CfsslError>, PrivateKey) {
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = intermediate_csr_pem(&key, &intermediate_subject(cluster)).unwrap();
    let what = format!("cluster {cluster}'s intermediate");
    (signer.sign_ca(&csr, &key, &what), key)
}

/// Checks an intermediate the way meshca and, independently, openssl see it.
fn check_intermediate(serve: &CfsslServe, inter: &Certificate, key: PrivateKey, name: &str) {
    assert!(inter.matches_key(&key));
    assert!(inter.is_ca() && inter.can_sign_certificates());
    assert_eq!(inter.path_len(), Some(0));
    assert!(
        inter.subject().contains("CN=Intermediate CA"),
        "{}",
        inter.subject()
    );
    assert!(inter.subject().contains("L=east-1"), "{}", inter.subject());
    inter.check_signed_by(&serve.root).unwrap();

    let pem = serve.path(&format!("{name}.pem"));
    let key_pem = serve.path(&format!("{name}-key.pem"));
    std::fs::write(&pem, inter.pem()).unwrap();
    std::fs::write(&key_pem, key.to_pkcs8_pem()).unwrap();
    let verified = openssl(&[
        "verify",
        "-CAfile",
        path_str(&serve.path("root.pem")),
        path_str(&pem),
    ]);
    assert!(verified.trim_end().ends_with(": OK"), "{verified}");
    let text = openssl(&["x509", "-in", path_str(&pem), "-noout", "-text"]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign"), "{text}");
    let cert_pub = openssl(&["x509", "-in", path_str(&pem), "-noout", "-pubkey"]);
    let key_pub = openssl(&["pkey", "-in", path_str(&key_pem), "-pubout"]);
    assert_eq!(cert_pub, key_pub);
    // meshca can sign with the intermediate and its key.
    CaSigner::new(inter.clone(), key, "inter-key.pem").unwrap();
}

#[test]
fn sign_and_authsign_return_intermediates_that_openssl_verifies() {
    let serve = CfsslServe::start();

    // No auth key: `sign`, with the unauthenticated CA profile.
    let open = CfsslSigner::connect(serve.config("intermediate-open", None), "test").unwrap();
    assert_eq!(open.cert(), &serve.root);
    assert_eq!(
        open.name(),
        format!("cfssl at {} (profile intermediate-open)", serve.url)
    );
    let (inter, key) = sign_intermediate(&open, "east-1");
    check_intermediate(&serve, &inter.unwrap(), key, "inter-sign");

    // With the auth key: `authsign`. The profile has an auth_key, so cfssl's `sign` would refuse.
    let authed =
        CfsslSigner::connect(serve.config("intermediate", Some(AUTH_KEY)), "test").unwrap();
    assert_eq!(authed.cert(), &serve.root);
    let (inter, key) = sign_intermediate(&authed, "east-1");
    check_intermediate(&serve, &inter.unwrap(), key, "inter-authsign");
}

#[test]
fn cfssl_refusals_come_back_with_cfssls_message() {
    let serve = CfsslServe::start();
    let prefix = format!("cfssl at {} (profile intermediate)", serve.url);

    let wrong_key = "00".repeat(32);
    let signer =
        CfsslSigner::connect(serve.config("intermediate", Some(&wrong_key)), "test").unwrap();
    let err = sign_intermediate(&signer, "east-1").0.unwrap_err();
    assert!(
        matches!(&err, CfsslError::Refused { status: 400, errors, .. } if errors[0].message == "invalid token"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("{prefix}: authsign refused the request: invalid token (cfssl error 400)")
    );

    // The authenticated profile without a key: meshca calls `sign`, which cfssl refuses.
    let signer = CfsslSigner::connect(serve.config("intermediate", None), "test").unwrap();
    let err = sign_intermediate(&signer, "east-1")
        .0
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("{prefix}: sign refused the request: authentication required (cfssl error 400)")
    );
}

#[test]
fn meshca_refuses_what_it_cannot_use_as_an_intermediate() {
    let serve = CfsslServe::start();

    // cfssl signs happily with a profile that makes leaves; meshca's own check refuses.
    let leaf = CfsslSigner::connect(serve.config("leaf", None), "test").unwrap();
    let err = sign_intermediate(&leaf, "east-1").0.unwrap_err();
    assert!(matches!(err, CfsslError::Rejected { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "cfssl at {} (profile leaf): the certificate signed for cluster east-1's \
             intermediate is not a CA; the profile needs ca_constraint.is_ca",
            serve.url
        )
    );

    // CA:TRUE is not enough: the keyUsage must allow signing certificates.
    let no_cert_sign =
        CfsslSigner::connect(serve.config("ca-without-cert-sign", None), "test").unwrap();
    let err = sign_intermediate(&no_cert_sign, "east-1")
        .0
        .unwrap_err()
        .to_string();
    assert!(err.contains("may not sign certificates"), "{err}");
    assert!(err.contains("\"cert sign\""), "{err}");

    // A CSR with an empty subject (a leaf's CSR) makes a CA nothing could name as issuer.
    let open = CfsslSigner::connect(serve.config("intermediate-open", None), "test").unwrap();
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = make_csr_pem(&key, &[]).unwrap();
    let err = open.sign_ca(&csr, &key, "x").unwrap_err().to_string();
    assert!(err.contains("has an empty subject"), "{err}");

    // A CSR for another key than the one the caller holds is not sent.
    let other = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = intermediate_csr_pem(&other, &intermediate_subject("east-1")).unwrap();
    let err = open
        .sign_ca(&csr, &key, "cluster east-1's intermediate")
        .unwrap_err();
    assert!(matches!(err, CfsslError::Csr { .. }), "{err:?}");
    assert!(
        err.to_string().contains("not for the expected key"),
        "{err}"
    );
}

/// A scripted stand-in for cfssl on loopback: answers `info` with `info_cert` and any other
/// call with `signed`, whatever the request. It plays a signer that is misconfigured or lies.
fn scripted_cfssl(info_cert: String, signed: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let path = read_request_path(&mut stream);
            let cert = if path.ends_with("/info") {
                &info_cert
            } else {
                &signed
            };
            let body = serde_json::json!({
                "success": true,
                "result": { "certificate": cert },
                "errors": [],
                "messages": []
            })
            .to_string();
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).unwrap();
        }
    });
    url
}

/// Reads one HTTP/1.1 request with a Content-Length body; returns its path.
fn read_request_path(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the client closed before a whole request");
        data.extend_from_slice(&buf[..n]);
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the client closed before the whole body");
        data.extend_from_slice(&buf[..n]);
    }
    head.split_whitespace().nth(1).unwrap().to_owned()
}

fn issue_intermediate(issuer: &CaSigner, key: &PrivateKey) -> Certificate {
    let now = OffsetDateTime::now_utc();
    let profile = CaProfile {
        subject: intermediate_subject("east-1"),
        not_before: now,
        not_after: now + time::Duration::days(1),
        path_len: Some(0),
        dns_names: Vec::new(),
    };
    issuer.issue_ca(&profile, key, "intermediate").unwrap()
}

#[test]
fn a_signer_that_answers_with_the_wrong_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (root, root_key) = make_root(dir.path(), "root", "Root CA");
    let (other_root, other_root_key) = make_root(dir.path(), "other", "Root CA");
    let root = CaSigner::new(root, root_key, "root-key.pem").unwrap();
    let other_root = CaSigner::new(other_root, other_root_key, "other-key.pem").unwrap();
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = intermediate_csr_pem(&key, &intermediate_subject("east-1")).unwrap();
    let what = "cluster east-1's intermediate";
    let connect = |signed: &Certificate| {
        let url = scripted_cfssl(root.cert().pem(), signed.pem());
        let config = CfsslConfig {
            url,
            ..CfsslConfig::default()
        };
        CfsslSigner::connect(config, "test").unwrap()
    };

    // The scripted signer answers correctly: accepted (the stand-in itself is sound).
    let good = issue_intermediate(&root, &key);
    assert_eq!(connect(&good).sign_ca(&csr, &key, what).unwrap(), good);

    // Signed by an impostor with the same name as the CA info reported: the signature decides.
    let signer = connect(&issue_intermediate(&other_root, &key));
    let err = signer.sign_ca(&csr, &key, what).unwrap_err().to_string();
    assert!(
        err.contains("does not chain to the certificate info reported"),
        "{err}"
    );
    assert!(err.contains("signature does not verify"), "{err}");

    // Signed by the right CA, but for another key than the CSR's.
    let stranger = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let signer = connect(&issue_intermediate(&root, &stranger));
    let err = signer.sign_ca(&csr, &key, what).unwrap_err().to_string();
    assert!(
        err.contains("is for another public key than the CSR's"),
        "{err}"
    );

    // Not a certificate at all.
    let url = scripted_cfssl(root.cert().pem(), "not a certificate".to_owned());
    let signer = CfsslSigner::connect(
        CfsslConfig {
            url,
            ..CfsslConfig::default()
        },
        "test",
    )
    .unwrap();
    let err = signer.sign_ca(&csr, &key, what).unwrap_err();
    assert!(matches!(err, CfsslError::BadCertificate { .. }), "{err:?}");
}

#[test]
fn https_is_verified_against_the_ca_file() {
    let serve = CfsslServe::start_with(true);
    assert!(serve.url.starts_with("https://"));
    let config = CfsslConfig {
        ca_file: Some(serve.path("tls-ca.pem")),
        ..serve.config("intermediate", Some(AUTH_KEY))
    };
    let signer = CfsslSigner::connect(config.clone(), "test").unwrap();
    let (inter, key) = sign_intermediate(&signer, "east-1");
    check_intermediate(&serve, &inter.unwrap(), key, "inter-https");

    // Trusting another CA than the one that signed cfssl's TLS certificate: refused.
    let wrong = CfsslConfig {
        ca_file: Some(serve.path("root.pem")),
        ..config
    };
    let err = CfsslSigner::connect(wrong, "test").unwrap_err();
    assert!(matches!(err, CfsslError::Transport { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("info: TLS: invalid peer certificate"),
        "{err}"
    );
}

#[test]
fn nothing_listening_is_connection_refused_naming_the_url() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let config = CfsslConfig {
        url: url.clone(),
        profile: Some("intermediate".to_owned()),
        ..CfsslConfig::default()
    };
    let err = CfsslSigner::connect(config, "test").unwrap_err();
    assert!(
        matches!(err, CfsslError::ConnectionRefused { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "cfssl at {url} (profile intermediate): info: connection refused (is `cfssl serve` \
             listening there?)"
        )
    );
}

#[test]
fn a_server_that_hangs_up_gives_an_error_not_a_hang() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Accepts and closes at once, for as long as the test process lives.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let started = Instant::now();
    let err = CfsslSigner::connect(
        CfsslConfig {
            url: url.clone(),
            ..CfsslConfig::default()
        },
        "test",
    )
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, CfsslError::HungUp { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "cfssl at {url} (default profile): info: the server closed the connection without \
             answering"
        )
    );
}

#[test]
fn a_server_that_says_nothing_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (done, finished) = mpsc::channel::<()>();
    // Accepts, reads the request, and answers nothing until the test is over.
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf);
        let _ = finished.recv();
    });
    let started = Instant::now();
    let err = CfsslSigner::connect(
        CfsslConfig {
            url: url.clone(),
            ..CfsslConfig::default()
        },
        "test",
    )
    .unwrap_err();
    let waited = started.elapsed();
    drop(done);
    server.join().unwrap();
    assert!(matches!(err, CfsslError::Timeout { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "cfssl at {url} (default profile): info: no answer within 10 s"
        )),
        "{err}"
    );
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
}

/// `meshca trust` with the policy's CA behind cfssl: every cluster gets a proven `cacerts` whose
/// intermediate cfssl signed, the root key stays with cfssl, a second pass writes nothing, and a
/// wrong auth key is refused with the store left as it was.
#[test]
fn trust_reconciles_clusters_through_the_external_signer() {
    use meshca_trust::{FolderStore, Outcome, SecretStore, TrustPolicy, reconcile};
    let serve = CfsslServe::start();
    let t = tempfile::tempdir().unwrap();
    let store = FolderStore::open(&t.path().join("store")).unwrap();
    for c in ["mgmt", "east", "west"] {
        std::fs::create_dir_all(t.path().join("store").join(c)).unwrap();
    }
    let mut auth = meshca_store::SecretData::new();
    auth.insert("auth-key".to_owned(), AUTH_KEY.as_bytes().to_vec());
    store
        .replace(&SecretKey::new("mgmt", "gloo-mesh", "cfssl-auth"), &auth)
        .unwrap();
    let policy_doc = format!(
        "apiVersion: trust.meshca/v1alpha1
kind: RootTrustPolicy
spec:
  config:
    externalSigner:
      cfssl:
        url: {}
        profile: intermediate
        authKeySecretRef:
          name: cfssl-auth
    intermediateCertOptions:
      ttlDays: 30
      keyType: ecdsa-p256
",
        serve.url
    );
    let policy = TrustPolicy::from_yaml(&policy_doc, "policy.yaml").unwrap();
    let now = OffsetDateTime::now_utc();
    let out = reconcile(&store, &policy, "mgmt", &[], &[], now).unwrap();
    assert_eq!(
        out.clusters,
        [
            ("east".to_owned(), Outcome::Created),
            ("west".to_owned(), Outcome::Created)
        ]
    );
    let root_key = std::fs::read(serve.dir.path().join("root-key.pem")).unwrap();
    for c in ["east", "west"] {
        let dir = t.path().join("store").join(c).join("istio-system/cacerts");
        assert_eq!(
            std::fs::read_to_string(dir.join("root-cert.pem")).unwrap(),
            serve.root.pem(),
            "{c} trusts cfssl's root"
        );
        for f in [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ] {
            assert_ne!(std::fs::read(dir.join(f)).unwrap(), root_key);
        }
        let verified = openssl(&[
            "verify",
            "-CAfile",
            path_str(&dir.join("root-cert.pem")),
            path_str(&dir.join("ca-cert.pem")),
        ]);
        assert!(verified.contains(": OK"), "{verified}");
        let text = openssl(&[
            "x509",
            "-noout",
            "-subject",
            "-in",
            path_str(&dir.join("ca-cert.pem")),
        ]);
        assert!(
            text.contains(&format!("L = {c}")) || text.contains(&format!("L={c}")),
            "{text}"
        );
    }
    let out = reconcile(&store, &policy, "mgmt", &[], &[], now).unwrap();
    assert!(
        out.clusters.iter().all(|(_, o)| *o == Outcome::Fresh),
        "{out:?}"
    );

    // A wrong auth key: cfssl refuses, nothing is written.
    auth.insert(
        "auth-key".to_owned(),
        AUTH_KEY.replace('8', "9").into_bytes(),
    );
    store
        .replace(&SecretKey::new("mgmt", "gloo-mesh", "cfssl-auth"), &auth)
        .unwrap();
    let before =
        std::fs::read(t.path().join("store/east/istio-system/cacerts/ca-cert.pem")).unwrap();
    let err = reconcile(&store, &policy, "mgmt", &[], &["*".to_owned()], now)
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid token"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        std::fs::read(t.path().join("store/east/istio-system/cacerts/ca-cert.pem")).unwrap(),
        before
    );
    // Root rotation is the signer owner's business.
    let err = meshca_trust::start_root_rotation(&store, &policy, "mgmt", None, now)
        .unwrap_err()
        .to_string();
    assert!(err.contains("external signer"), "{err}");
}
