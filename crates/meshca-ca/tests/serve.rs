//! The real server on loopback: gRPC over TLS, JWT and mTLS authentication, every refusal with
//! its status code, hot reloads of the CA under continuous load and of the JWKS files, and the
//! self-signed root. Kubernetes authentication against real API servers is in `tokenreview.rs`.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use meshca_ca::issuer::IssuancePolicy;
use meshca_ca::proto::IstioCertificateRequest;
use meshca_ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_ca::{CaSource, Running, ServeConfig, SystemClock};
use meshca_pki::{Certificate, KeyType, PrivateKey, TrustDomain, make_csr_pem};
use meshca_testkit::{istio_samples, openssl, x509_text};
use meshca_token::{Jwks, ServiceAccountClaims, SigningKey};
use tonic::transport::{Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};

const MESHCA_TD: &str = "cluster.local";

struct Jwt {
    key: SigningKey,
    jwks_file: PathBuf,
}

impl Jwt {
    fn new(dir: &Path) -> Self {
        let pem = PrivateKey::generate(KeyType::EcdsaP256)
            .unwrap()
            .to_pkcs8_pem();
        let key = SigningKey::from_pem(pem.as_bytes(), "jwt key").unwrap();
        let jwks_file = dir.join("jwks.json");
        std::fs::write(&jwks_file, Jwks::from_keys([key.public_jwk()]).to_json()).unwrap();
        Jwt { key, jwks_file }
    }

    fn token(&self, ns: &str, sa: &str, aud: &str) -> String {
        let now = time::OffsetDateTime::now_utc();
        meshca_token::mint(
            &ServiceAccountClaims {
                issuer: "test-issuer".into(),
                audiences: vec![aud.into()],
                namespace: ns.into(),
                service_account: sa.into(),
                issued_at: now,
                expires_at: now + time::Duration::hours(1),
            },
            &self.key,
        )
        .unwrap()
    }
}

fn config(source: CaSource, jwt: &Jwt) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        source,
        trust_domain: TrustDomain::new(MESHCA_TD).unwrap(),
        plaintext: false,
        serving_dns: meshca_ca::tls::ISTIOD_DNS_NAMES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        jwt_issuers: vec![("test-issuer".into(), jwt.jwks_file.clone())],
        audience: "istio-ca".into(),
        cluster_id: Some("cluster1".into()),
        policy: IssuancePolicy::default(),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        allow_root_change: false,
        reload_interval: Duration::from_millis(50),
        debounce: Duration::from_millis(20),
        token_review: None,
    }
}

async fn client(
    server: &Running,
    root_pem: &str,
    identity: Option<(&str, &str)>,
) -> IstioCertificateServiceClient<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(root_pem))
        .domain_name("istiod.istio-system.svc");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{}", server.local_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    IstioCertificateServiceClient::new(channel)
}

fn request(csr: String, token: Option<&str>, ttl: i64) -> Request<IstioCertificateRequest> {
    let mut r = Request::new(IstioCertificateRequest {
        csr,
        validity_duration: ttl,
        metadata: None,
    });
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn csr_for(id: &str) -> (PrivateKey, String) {
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = make_csr_pem(&key, &[id.to_owned()]).unwrap();
    (key, csr)
}

/// A root and one ECDSA intermediate per name, as `meshca certs root-ca <name>-cacerts...` makes them.
fn make_clusters(dir: &Path, names: &[&str]) {
    let settings = meshca_certs::Settings::ecdsa_p256();
    let targets: Vec<_> = names
        .iter()
        .map(|n| meshca_certs::Target::Cacerts((*n).to_owned()))
        .collect();
    meshca_certs::run(
        dir,
        &settings,
        &targets,
        false,
        time::OffsetDateTime::now_utc(),
        &|_| {},
    )
    .unwrap();
}

/// Istio's sample cacerts (set two when `alt`) in a fresh folder, with a JWT issuer.
struct Samples {
    t: tempfile::TempDir,
    cacerts: PathBuf,
    jwt: Jwt,
    root: String,
}

fn samples(alt: bool) -> Samples {
    let t = tempfile::tempdir().unwrap();
    let cacerts = t.path().join("cacerts");
    copy_samples(&cacerts, alt);
    let jwt = Jwt::new(t.path());
    let root = std::fs::read_to_string(cacerts.join("root-cert.pem")).unwrap();
    Samples {
        t,
        cacerts,
        jwt,
        root,
    }
}

/// Starts a server on `cacerts` with the test configuration, adjusted by `edit`.
async fn start_on(cacerts: &Path, jwt: &Jwt, edit: impl FnOnce(&mut ServeConfig)) -> Running {
    let mut cfg = config(CaSource::Folder(cacerts.to_owned()), jwt);
    edit(&mut cfg);
    meshca_ca::start(cfg, Arc::new(SystemClock)).await.unwrap()
}

fn copy_samples(dir: &Path, alt: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let s = istio_samples();
    for f in ["ca-cert", "ca-key", "cert-chain", "root-cert"] {
        let from = if alt {
            format!("{f}-alt.pem")
        } else {
            format!("{f}.pem")
        };
        std::fs::copy(s.join(from), dir.join(format!("{f}.pem"))).unwrap();
    }
}

async fn metrics_text(server: &Running) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.metrics_addr.unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_flow_with_istios_sample_cacerts() {
    let Samples {
        t,
        cacerts,
        jwt,
        root,
    } = samples(false);
    let server = start_on(&cacerts, &jwt, |_| {}).await;
    let mut c = client(&server, &root, None).await;
    let id = "spiffe://cluster.local/ns/foo/sa/httpbin";
    let (_key, csr) = csr_for(id);
    let token = jwt.token("foo", "httpbin", "istio-ca");
    let before = time::OffsetDateTime::now_utc();
    let chain = c
        .create_certificate(request(csr, Some(&token), 0))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;

    // Leaf, the signing certificate, and the root bundle last: no duplicate root.
    assert_eq!(chain.len(), 3, "{chain:#?}");
    assert_eq!(
        chain[1],
        std::fs::read_to_string(cacerts.join("ca-cert.pem")).unwrap()
    );
    assert_eq!(chain[2].trim(), root.trim());

    // The seed's openssl check.
    let d = t.path();
    std::fs::write(d.join("proxy-cert-1.pem"), &chain[0]).unwrap();
    let ca_and_root = [
        std::fs::read(cacerts.join("ca-cert.pem")).unwrap(),
        root.clone().into_bytes(),
    ]
    .concat();
    std::fs::write(d.join("ca-and-root.pem"), ca_and_root).unwrap();
    let v = openssl(
        d,
        ["verify", "-CAfile", "ca-and-root.pem", "proxy-cert-1.pem"],
    )
    .ok();
    assert_eq!(v.stdout.trim(), "proxy-cert-1.pem: OK");

    // The leaf's contents, as istiod issues them.
    let text = x509_text(d, "proxy-cert-1.pem");
    assert!(
        text.contains("Subject: \n") || text.contains("Subject:\n"),
        "empty subject:\n{text}"
    );
    assert!(text.contains("X509v3 Subject Alternative Name: critical\n                URI:spiffe://cluster.local/ns/foo/sa/httpbin"), "{text}");
    assert!(text.contains(
        "X509v3 Key Usage: critical\n                Digital Signature, Key Encipherment"
    ));
    assert!(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"));
    assert!(text.contains("CA:FALSE"));
    let leaf = Certificate::one_from_pem(chain[0].as_bytes(), "leaf").unwrap();
    let nb = leaf.not_before();
    assert!(
        nb <= before - time::Duration::seconds(119) && nb >= before - time::Duration::seconds(125),
        "backdated 2 min"
    );
    let life = leaf.not_after() - nb;
    assert!(
        (life - time::Duration::hours(24) - time::Duration::minutes(2)).abs()
            < time::Duration::seconds(5),
        "{life}"
    );

    // Health service.
    let channel = Channel::from_shared(format!("https://{}", server.local_addr))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&root))
                .domain_name("istiod.istio-system.svc"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, 1, "SERVING");

    let m = metrics_text(&server).await;
    assert_eq!(metric(&m, "citadel_server_csr_count"), 1.0);
    assert_eq!(
        metric(&m, "citadel_server_success_cert_issuance_count"),
        1.0
    );
    assert_eq!(metric(&m, "meshca_ca_issuance_duration_seconds_count"), 1.0);
    let root_end = Certificate::one_from_pem(root.as_bytes(), "root")
        .unwrap()
        .not_after();
    assert_eq!(
        metric(&m, "citadel_server_root_cert_expiry_timestamp"),
        root_end.unix_timestamp() as f64
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_code_and_signs_nothing() {
    let Samples {
        t,
        cacerts,
        jwt,
        root,
    } = samples(true);
    let server = start_on(&cacerts, &jwt, |_| {}).await;
    let mut c = client(&server, &root, None).await;
    let id = "spiffe://cluster.local/ns/foo/sa/sleep";
    let token = jwt.token("foo", "sleep", "istio-ca");
    let (_k, csr) = csr_for(id);

    let code = |r: Result<tonic::Response<_>, tonic::Status>| match r {
        Ok(_) => panic!("accepted"),
        Err(s) => (s.code(), s.message().to_owned()),
    };
    // No credential, a token from an unknown key, a token for another audience.
    let (c1, m1) = code(c.create_certificate(request(csr.clone(), None, 0)).await);
    assert_eq!(c1, Code::Unauthenticated, "{m1}");
    assert!(m1.starts_with("request authenticate failure"), "{m1}");
    let stranger = Jwt::new(&t.path().join(".."));
    let (c2, _) = code(
        c.create_certificate(request(
            csr.clone(),
            Some(&stranger.token("foo", "sleep", "istio-ca")),
            0,
        ))
        .await,
    );
    assert_eq!(c2, Code::Unauthenticated);
    let (c3, m3) = code(
        c.create_certificate(request(
            csr.clone(),
            Some(&jwt.token("foo", "sleep", "other")),
            0,
        ))
        .await,
    );
    assert_eq!(c3, Code::Unauthenticated);
    assert!(m3.contains("audience"), "{m3}");
    // Another cluster.
    let mut r = request(csr.clone(), Some(&token), 0);
    r.metadata_mut()
        .insert("clusterid", "cluster2".parse().unwrap());
    let (c4, m4) = code(c.create_certificate(r).await);
    assert_eq!(c4, Code::Unauthenticated, "{m4}");
    // A malformed CSR, and one whose signature does not verify.
    let (c5, m5) = code(
        c.create_certificate(request("not a csr".into(), Some(&token), 0))
            .await,
    );
    assert_eq!(c5, Code::InvalidArgument, "{m5}");
    let mut der = meshca_pki::pem::parse_sections(csr.as_bytes(), "csr")
        .unwrap()
        .remove(0)
        .der;
    let pos = der.windows(5).position(|w| w == b"sleep").unwrap();
    der[pos] = b'S';
    let tampered = meshca_pki::pem::encode("CERTIFICATE REQUEST", &der);
    let (c6, m6) = code(
        c.create_certificate(request(tampered, Some(&token), 0))
            .await,
    );
    assert_eq!(c6, Code::InvalidArgument);
    assert!(m6.contains("signature does not verify"), "{m6}");
    // A CSR for someone else's identity.
    let (_k2, other) = csr_for("spiffe://cluster.local/ns/kube-system/sa/admin");
    let (c7, m7) = code(c.create_certificate(request(other, Some(&token), 0)).await);
    assert_eq!(c7, Code::PermissionDenied);
    assert!(m7.contains("kube-system"), "{m7}");
    // A lifetime above the maximum is refused, not shortened.
    let (c8, m8) = code(
        c.create_certificate(request(csr.clone(), Some(&token), 91 * 86_400))
            .await,
    );
    assert_eq!(c8, Code::InvalidArgument);
    assert!(m8.contains("max allowed TTL"), "{m8}");
    // An oversized message.
    let big = "A".repeat(200 * 1024);
    let (c9, _) = code(c.create_certificate(request(big, Some(&token), 0)).await);
    assert!(
        matches!(c9, Code::ResourceExhausted | Code::OutOfRange),
        "{c9:?}"
    );

    let m = metrics_text(&server).await;
    assert_eq!(
        metric(&m, "citadel_server_success_cert_issuance_count"),
        0.0
    );
    assert_eq!(
        metric(&m, "citadel_server_authentication_failure_count"),
        4.0
    );
    assert_eq!(metric(&m, "citadel_server_csr_parsing_err_count"), 2.0);

    // And the same request, done right, passes: the refusals were about what they say.
    let ok = c
        .create_certificate(request(csr, Some(&token), 3600))
        .await
        .unwrap()
        .into_inner();
    let leaf = Certificate::one_from_pem(ok.cert_chain[0].as_bytes(), "leaf").unwrap();
    assert_eq!(leaf.uris(), [id]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_the_ca_authenticates_without_a_token() {
    let Samples {
        t: _dir,
        cacerts,
        jwt,
        root,
    } = samples(true);
    let server = start_on(&cacerts, &jwt, |_| {}).await;
    let id = "spiffe://cluster.local/ns/foo/sa/httpbin";
    let (key, csr) = csr_for(id);
    let mut c = client(&server, &root, None).await;
    let first = c
        .create_certificate(request(
            csr,
            Some(&jwt.token("foo", "httpbin", "istio-ca")),
            0,
        ))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    // Renewal over mTLS with the certificate just issued (leaf and intermediate), no token.
    let chain_pem = first[..first.len() - 1].concat();
    let key_pem = key.to_pkcs8_pem();
    let mut m = client(&server, &root, Some((&chain_pem, &key_pem))).await;
    let (_k2, csr2) = csr_for(id);
    let second = m
        .create_certificate(request(csr2, None, 0))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(
        Certificate::one_from_pem(second[0].as_bytes(), "l")
            .unwrap()
            .uris(),
        [id]
    );
    // Over mTLS a CSR for another identity is still refused.
    let (_k3, csr3) = csr_for("spiffe://cluster.local/ns/foo/sa/other");
    let err = m
        .create_certificate(request(csr3, None, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    server.shutdown().await.unwrap();
}

/// Writes a bundle into a Kubernetes-style secret mount: files are symlinks through `..data`,
/// which points at a timestamped folder and is replaced in one rename.
fn mount_bundle(mount: &Path, from: &Path, generation: u32) {
    std::fs::create_dir_all(mount).unwrap();
    let ts = format!("..2026_11_23_{generation:04}");
    let data_dir = mount.join(&ts);
    std::fs::create_dir(&data_dir).unwrap();
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ] {
        std::fs::copy(from.join(f), data_dir.join(f)).unwrap();
        let link = mount.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
    let tmp = mount.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&ts, &tmp).unwrap();
    std::fs::rename(&tmp, mount.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_loses_no_request_and_keeps_the_last_good_ca() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make_clusters(d, &["c1", "c2"]);
    let mount = d.join("mount");
    mount_bundle(&mount, &d.join("c1"), 1);
    let jwt = Jwt::new(d);
    let server = Arc::new(
        meshca_ca::start(
            config(CaSource::Folder(mount.clone()), &jwt),
            Arc::new(SystemClock),
        )
        .await
        .unwrap(),
    );
    let root = std::fs::read_to_string(d.join("root-cert.pem")).unwrap();
    let c1_ca = std::fs::read_to_string(d.join("c1/ca-cert.pem")).unwrap();
    let c2_ca = std::fs::read_to_string(d.join("c2/ca-cert.pem")).unwrap();
    let token = jwt.token("foo", "sleep", "istio-ca");
    let (_k, csr) = csr_for("spiffe://cluster.local/ns/foo/sa/sleep");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let seen_c2 = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let mut c = client(&server, &root, None).await;
        let (stop, failures, done, seen_c2) = (
            stop.clone(),
            failures.clone(),
            done.clone(),
            seen_c2.clone(),
        );
        let (csr, token, c2_ca) = (csr.clone(), token.clone(), c2_ca.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c
                    .create_certificate(request(csr.clone(), Some(&token), 0))
                    .await
                {
                    Ok(r) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        if r.into_inner().cert_chain[1] == c2_ca {
                            seen_c2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Rotate to the second intermediate (same root), as a Secret update does.
    mount_bundle(&mount, &d.join("c2"), 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.ca.load().bundle().signer().cert().pem() != c2_ca {
        assert!(tokio::time::Instant::now() < deadline, "reload not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(seen_c2.load(Ordering::Relaxed) > 0);

    // A broken bundle (c1's key with c2's certificate) is refused; c2 keeps signing.
    let broken = d.join("broken");
    std::fs::create_dir(&broken).unwrap();
    for f in ["ca-cert.pem", "cert-chain.pem", "root-cert.pem"] {
        std::fs::copy(d.join("c2").join(f), broken.join(f)).unwrap();
    }
    std::fs::copy(d.join("c1/ca-key.pem"), broken.join("ca-key.pem")).unwrap();
    mount_bundle(&mount, &broken, 3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics_text(&server).await;
        if metric(&m, "meshca_ca_reload_failure_count") >= 1.0 {
            assert_eq!(metric(&m, "meshca_ca_last_known_good"), 0.0);
            assert_eq!(metric(&m, "meshca_ca_reload_success_count"), 1.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broken bundle not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        done.load(Ordering::Relaxed) > before,
        "still serving after the broken bundle"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert_eq!(server.ca.load().bundle().signer().cert().pem(), c2_ca);
    assert_ne!(c1_ca, c2_ca);
    match Arc::try_unwrap(server) {
        Ok(s) => s.shutdown().await.unwrap(),
        Err(_) => panic!("server still shared"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_root_is_refused_unless_allowed() {
    for allow in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let mount = t.path().join("mount");
        let set1 = t.path().join("set1");
        let set2 = t.path().join("set2");
        copy_samples(&set1, false);
        copy_samples(&set2, true);
        mount_bundle(&mount, &set1, 1);
        let jwt = Jwt::new(t.path());
        let mut cfg = config(CaSource::Folder(mount.clone()), &jwt);
        cfg.allow_root_change = allow;
        let server = meshca_ca::start(cfg, Arc::new(SystemClock)).await.unwrap();
        mount_bundle(&mount, &set2, 2);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = metrics_text(&server).await;
            let key = if allow {
                "meshca_ca_reload_success_count"
            } else {
                "meshca_ca_reload_failure_count"
            };
            if metric(&m, key) >= 1.0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no reload outcome (allow={allow})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let root_now = server.ca.load().bundle().roots()[0].pem();
        let set2_root = std::fs::read_to_string(set2.join("root-cert.pem")).unwrap();
        assert_eq!(root_now.trim() == set2_root.trim(), allow);
        server.shutdown().await.unwrap();
    }
}

/// A copy of the bundle `d/<from>` in `d/<to>` whose ca-cert.pem the `openssl` CLI re-issued
/// (same key, same root) with `extendedKeyUsage = <eku>`.
fn reissue_with_eku(d: &Path, from: &str, to: &str, eku: &str) -> PathBuf {
    let out = d.join(to);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        d.join(format!("{to}.ext")),
        format!(
            "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
             extendedKeyUsage = {eku}\n"
        ),
    )
    .unwrap();
    let key = format!("{from}/ca-key.pem");
    let csr = format!("{to}/ca.csr");
    let cert = format!("{to}/ca-cert.pem");
    let ext = format!("{to}.ext");
    openssl(
        d,
        [
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            "/O=meshca/CN=restricted",
            "-out",
            &csr,
        ],
    )
    .ok();
    openssl(
        d,
        [
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "root-cert.pem",
            "-CAkey",
            "root-key.pem",
            "-set_serial",
            "4242",
            "-days",
            "30",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    )
    .ok();
    std::fs::copy(d.join(&key), out.join("ca-key.pem")).unwrap();
    std::fs::copy(d.join("root-cert.pem"), out.join("root-cert.pem")).unwrap();
    let chain = [
        std::fs::read(out.join("ca-cert.pem")).unwrap(),
        std::fs::read(d.join("root-cert.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(out.join("cert-chain.pem"), chain).unwrap();
    std::fs::remove_file(out.join("ca.csr")).unwrap();
    out
}

/// istiod verifies its CA for serverAuth (Go's verifier): a signing certificate whose extended
/// key usage excludes it is refused at start with one line naming the file, and a reload to
/// one is refused, logged and counted while the last good CA keeps issuing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_whose_extended_key_usage_excludes_server_auth_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make_clusters(d, &["c1"]);
    let jwt = Jwt::new(d);
    let bad = reissue_with_eku(d, "c1", "client-only", "clientAuth");
    assert!(
        x509_text(&bad, "ca-cert.pem").contains(
            "X509v3 Extended Key Usage: \n                TLS Web Client Authentication\n"
        )
    );
    let err = meshca_ca::start(
        config(CaSource::Folder(bad.clone()), &jwt),
        Arc::new(SystemClock),
    )
    .await
    .err()
    .expect("refused at start")
    .to_string();
    assert_eq!(
        err,
        format!(
            "{}/ca-cert.pem: extended key usage (clientAuth) excludes serverAuth; istiod refuses \
             such a CA (Go verifies the chain for serverAuth)",
            bad.display()
        )
    );
    // serverAuth among the usages, or "any", is what Go asks for.
    for eku in ["serverAuth, clientAuth", "anyExtendedKeyUsage"] {
        let ok = reissue_with_eku(d, "c1", "fine", eku);
        let server = start_on(&ok, &jwt, |_| {}).await;
        server.shutdown().await.unwrap();
    }

    let mount = d.join("mount");
    mount_bundle(&mount, &d.join("c1"), 1);
    let server = start_on(&mount, &jwt, |_| {}).await;
    let c1_ca = std::fs::read_to_string(d.join("c1/ca-cert.pem")).unwrap();
    mount_bundle(&mount, &bad, 2);
    eventually("the reload refused", || async {
        reload_failures(&server).await >= 1.0
    })
    .await;
    let m = metrics_text(&server).await;
    assert_eq!(metric(&m, "meshca_ca_last_known_good"), 0.0);
    assert_eq!(metric(&m, "meshca_ca_reload_success_count"), 0.0);
    let root = std::fs::read_to_string(d.join("root-cert.pem")).unwrap();
    let (_k, csr) = csr_for("spiffe://cluster.local/ns/foo/sa/sleep");
    let token = jwt.token("foo", "sleep", "istio-ca");
    let chain = client(&server, &root, None)
        .await
        .create_certificate(request(csr, Some(&token), 0))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(chain[1], c1_ca, "the last good CA still issues");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_signed_root_survives_a_restart_and_rotates_keeping_its_key() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("self-signed");
    let jwt = Jwt::new(t.path());
    let td = TrustDomain::new("example.org").unwrap();
    let source = CaSource::SelfSigned {
        dir: dir.clone(),
        trust_domain: td.clone(),
    };
    let mut cfg = config(source.clone(), &jwt);
    cfg.trust_domain = td.clone();
    let first = meshca_ca::start(cfg.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let root1 = first.ca.load().bundle().roots()[0].clone();
    first.shutdown().await.unwrap();
    let text = x509_text(&dir, "ca-cert.pem");
    assert!(text.contains("Subject: O = example.org"), "{text}");
    assert!(text.contains("Public-Key: (2048 bit)"));
    assert_eq!(meshca_testkit::mode(&dir.join("ca-key.pem")), 0o600);

    let second = meshca_ca::start(cfg, Arc::new(SystemClock)).await.unwrap();
    assert_eq!(
        second.ca.load().bundle().roots()[0],
        root1,
        "same root after restart"
    );
    let current = second.ca.load_full();
    second.shutdown().await.unwrap();

    // Rotation: nothing to do early in life; past 80% of its life, a new root with the same key.
    let now = time::OffsetDateTime::now_utc();
    assert!(
        meshca_ca::source::rotate_self_signed_if_due(&dir, &current, &td, now)
            .unwrap()
            .is_none()
    );
    let late = now + time::Duration::days(365 * 8 + 30);
    let rotated = meshca_ca::source::rotate_self_signed_if_due(&dir, &current, &td, late)
        .unwrap()
        .unwrap();
    let new_root = rotated.bundle().roots()[0].clone();
    assert_ne!(new_root, root1);
    assert!(new_root.not_after() > late + time::Duration::days(3000));
    let old_key =
        PrivateKey::from_pem(&std::fs::read(dir.join("ca-key.pem")).unwrap(), "k").unwrap();
    assert!(
        root1.matches_key(&old_key) && new_root.matches_key(&old_key),
        "same key"
    );
}

/// Replaces `path` in one rename, as a Secret or ConfigMap update does.
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `check` every 20 ms until it holds, for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not seen within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn reload_failures(server: &Running) -> f64 {
    metric(
        &metrics_text(server).await,
        "meshca_ca_reload_failure_count",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_jwt_keys_are_picked_up_and_a_broken_jwks_keeps_the_last_good_keys() {
    let Samples {
        t,
        cacerts,
        jwt: old,
        root,
    } = samples(true);
    let new_dir = t.path().join("new");
    std::fs::create_dir(&new_dir).unwrap();
    let new = Jwt::new(&new_dir);
    let server = start_on(&cacerts, &old, |_| {}).await;
    let c = client(&server, &root, None).await;
    // Each call asks for a fresh identity with a freshly minted token, so that no answer comes
    // from the memory of tokens already verified.
    let serial = AtomicU64::new(0);
    let issue = |key: &Jwt| {
        let sa = format!("sa-{}", serial.fetch_add(1, Ordering::Relaxed));
        let token = key.token("foo", &sa, "istio-ca");
        let (_k, csr) = csr_for(&format!("spiffe://cluster.local/ns/foo/sa/{sa}"));
        let mut c = c.clone();
        async move {
            c.create_certificate(request(csr, Some(&token), 0))
                .await
                .map(|_| ())
        }
    };
    let refused = |r: Result<(), Status>| match r {
        Ok(()) => panic!("accepted"),
        Err(s) => {
            assert_eq!(s.code(), Code::Unauthenticated, "{}", s.message());
            s.message().to_owned()
        }
    };

    // A token signed by the issuer's new key is refused while the file holds only the old key.
    let msg = refused(issue(&new).await);
    assert!(msg.contains("no key with kid"), "{msg}");

    // The issuer publishes both keys: the new key's tokens are accepted, the old still are.
    let both = Jwks::from_keys([old.key.public_jwk(), new.key.public_jwk()]).to_json();
    replace_file(&old.jwks_file, &both);
    eventually("the rotated JWKS", || async { issue(&new).await.is_ok() }).await;
    issue(&old).await.unwrap();
    let m = metrics_text(&server).await;
    assert_eq!(metric(&m, "meshca_ca_reload_success_count"), 1.0);
    assert_eq!(metric(&m, "meshca_ca_reload_failure_count"), 0.0);
    // A token verified (and remembered) now, to check later that withdrawn keys are not
    // believed from memory.
    let remembered = old.token("foo", "remembered", "istio-ca");
    let (_k, remembered_csr) = csr_for("spiffe://cluster.local/ns/foo/sa/remembered");
    let mut rc = c.clone();
    rc.create_certificate(request(remembered_csr.clone(), Some(&remembered), 0))
        .await
        .unwrap();

    // A broken JWKS is refused and counted once; both keys keep working.
    replace_file(&old.jwks_file, "{\"keys\": [");
    eventually("the broken JWKS refused", || async {
        reload_failures(&server).await >= 1.0
    })
    .await;
    issue(&new).await.unwrap();
    issue(&old).await.unwrap();
    // A file that cannot be read is refused the same way.
    std::fs::remove_file(&old.jwks_file).unwrap();
    eventually("the missing JWKS refused", || async {
        reload_failures(&server).await >= 2.0
    })
    .await;
    issue(&new).await.unwrap();
    issue(&old).await.unwrap();
    let m = metrics_text(&server).await;
    assert_eq!(
        metric(&m, "meshca_ca_reload_failure_count"),
        2.0,
        "each refused once"
    );
    assert_eq!(metric(&m, "meshca_ca_reload_success_count"), 1.0);
    assert_eq!(
        metric(&m, "meshca_ca_last_known_good"),
        1.0,
        "the CA is untouched"
    );

    // The old key is withdrawn: its tokens are refused, even one verified before.
    replace_file(
        &old.jwks_file,
        &Jwks::from_keys([new.key.public_jwk()]).to_json(),
    );
    eventually("the old key withdrawn", || async {
        issue(&old).await.is_err()
    })
    .await;
    let msg = refused(
        rc.create_certificate(request(remembered_csr, Some(&remembered), 0))
            .await
            .map(|_| ()),
    );
    assert!(msg.contains("no key with kid"), "{msg}");
    issue(&new).await.unwrap();
    server.shutdown().await.unwrap();
}
