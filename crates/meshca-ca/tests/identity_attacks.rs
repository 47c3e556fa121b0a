//! Attacks on identity against the real server on loopback, one per row: forged, foreign and
//! stale tokens, client certificates of another trust domain or root, CSRs and metadata that ask
//! for someone else, a lifetime above the maximum, an oversized request. Each is refused with
//! its status code and a message naming what is wrong, signs nothing, and counts exactly once
//! in `meshca_ca_refused_requests_total` under its reason, scraped from the metrics endpoint.
//! Then TLS below 1.2, offered by the real `openssl s_client`, is refused with an alert and
//! counted, while TLS 1.2 and 1.3 are served.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshca_ca::issuer::IssuancePolicy;
use meshca_ca::proto::IstioCertificateRequest;
use meshca_ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_ca::{CaSource, Running, ServeConfig, SystemClock};
use meshca_pki::{KeyType, PrivateKey, Subject, TrustDomain, WorkloadProfile, make_csr_pem};
use meshca_token::base64url;
use meshca_token::{Jwks, ServiceAccountClaims, SigningKey};
use time::OffsetDateTime;
use tonic::transport::{Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};

/// The issuer this cluster's tokens carry, as Kubernetes names it.
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const AUDIENCE: &str = "istio-ca";
const CALLER: &str = "spiffe://cluster.local/ns/foo/sa/sleep";

fn signing_key() -> SigningKey {
    let pem = PrivateKey::generate(KeyType::EcdsaP256)
        .unwrap()
        .to_pkcs8_pem();
    SigningKey::from_pem(pem.as_bytes(), "token key").unwrap()
}

/// Claims of `foo/sleep`'s token for the CA, valid for an hour from `now`.
fn claims(now: OffsetDateTime) -> ServiceAccountClaims {
    ServiceAccountClaims {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        namespace: "foo".into(),
        service_account: "sleep".into(),
        issued_at: now,
        expires_at: now + time::Duration::hours(1),
    }
}

fn mint(c: &ServiceAccountClaims, key: &SigningKey) -> String {
    meshca_token::mint(c, key).unwrap()
}

/// The token's three parts, header and payload decoded.
fn split(token: &str) -> (Vec<u8>, Vec<u8>, String) {
    let mut p = token.split('.');
    let h = base64url::decode(p.next().unwrap()).unwrap();
    let b = base64url::decode(p.next().unwrap()).unwrap();
    (h, b, p.next().unwrap().to_owned())
}

fn join(header: &[u8], payload: &[u8], signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        base64url::encode(header),
        base64url::encode(payload)
    )
}

fn csr_for(id: &str) -> (PrivateKey, String) {
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = make_csr_pem(&key, &[id.to_owned()]).unwrap();
    (key, csr)
}

/// A root and cluster `c1`'s ECDSA intermediate in `dir`, as `meshca certs` makes them.
fn make_ca(dir: &Path) {
    meshca_certs::run(
        dir,
        &meshca_certs::Settings::ecdsa_p256(),
        &[meshca_certs::Target::Cacerts("c1".to_owned())],
        false,
        OffsetDateTime::now_utc(),
        &|_| {},
    )
    .unwrap();
}

/// A client certificate for `uri` from the CA in `cacerts`, valid over `window`: PEM chain
/// (leaf and signing certificate) and key.
fn client_cert(
    cacerts: &Path,
    uri: &str,
    window: (OffsetDateTime, OffsetDateTime),
) -> (String, String) {
    let ca = meshca_ca::source::load_folder(cacerts, OffsetDateTime::now_utc()).unwrap();
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let profile = WorkloadProfile {
        subject: Subject::default(),
        not_before: window.0,
        not_after: window.1,
        uris: vec![uri.to_owned()],
        dns_names: Vec::new(),
        ips: Vec::new(),
        key_usage_critical: true,
    };
    let signer = ca.bundle().signer();
    let leaf = signer.issue_workload(&profile, &key, "client").unwrap();
    let chain = format!("{}{}", leaf.pem(), signer.cert().pem());
    (chain, key.to_pkcs8_pem())
}

struct Mesh {
    _dir: tempfile::TempDir,
    server: Running,
    root: String,
    key: SigningKey,
    cacerts: std::path::PathBuf,
    /// Another mesh's CA: its own root, the same trust domain.
    stranger_cacerts: std::path::PathBuf,
}

async fn mesh() -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d);
    make_ca(&d.join("stranger"));
    let key = signing_key();
    let jwks = d.join("jwks.json");
    std::fs::write(&jwks, Jwks::from_keys([key.public_jwk()]).to_json()).unwrap();
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        source: CaSource::Folder(d.join("c1")),
        trust_domain: TrustDomain::new("cluster.local").unwrap(),
        plaintext: false,
        serving_dns: vec!["istiod.istio-system.svc".to_owned()],
        jwt_issuers: vec![(ISSUER.into(), jwks)],
        audience: AUDIENCE.into(),
        cluster_id: Some("cluster1".into()),
        policy: IssuancePolicy::default(),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        allow_root_change: false,
        reload_interval: Duration::from_secs(3600),
        debounce: Duration::from_millis(20),
        token_review: None,
    };
    let server = meshca_ca::start(config, Arc::new(SystemClock))
        .await
        .unwrap();
    Mesh {
        root: std::fs::read_to_string(d.join("root-cert.pem")).unwrap(),
        cacerts: d.join("c1"),
        stranger_cacerts: d.join("stranger/c1"),
        _dir: dir,
        server,
        key,
    }
}

async fn client(
    m: &Mesh,
    identity: Option<&(String, String)>,
) -> IstioCertificateServiceClient<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&m.root))
        .domain_name("istiod.istio-system.svc");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{}", m.server.local_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    IstioCertificateServiceClient::new(channel)
}

/// A TLS 1.3 handshake with the client certificate and key `identity`, then a read: the error
/// the server's alert gives. (A TLS 1.3 client finishes its side of the handshake before the
/// server has judged its certificate; gRPC over it then sees a closed connection or the alert,
/// whichever comes first.)
async fn handshake(m: &Mesh, identity: &(String, String)) -> String {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(m.root.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_slice_iter(identity.0.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(identity.1.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(meshca_ca::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(m.server.local_addr)
        .await
        .unwrap();
    let name = ServerName::try_from("istiod.istio-system.svc").unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = match connector.connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    let mut buf = [0u8; 64];
    match tls.read(&mut buf).await {
        Ok(n) => panic!("the server answered {n} bytes after the handshake"),
        Err(e) => e.to_string(),
    }
}

/// Every sample of the metrics endpoint, by its name and labels as written.
async fn scrape(server: &Running) -> BTreeMap<String, f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.metrics_addr.unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (_, body) = out.split_once("\r\n\r\n").unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A scrape once `done` holds of it: a refused handshake is counted just after the server has
/// sent its alert, so the client may read the alert first. Bounded by 10 s.
async fn scrape_when(
    server: &Running,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = scrape(server).await;
        if done(&now) || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The refusal counters that changed from `before` to `after`, by how much.
fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    after
        .iter()
        .filter(|(k, _)| k.starts_with("meshca_ca_refused_requests_total"))
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

fn refused(reason: &str) -> String {
    format!("meshca_ca_refused_requests_total{{reason=\"{reason}\"}}")
}

/// What an attack sends.
enum Send {
    /// A bearer token (none: no credential) with this CSR, TTL and metadata.
    Token {
        token: Option<String>,
        csr: String,
        ttl: i64,
        cluster: Option<&'static str>,
        impersonate: Option<&'static str>,
    },
    /// A client certificate and key, and a CSR for the caller.
    ClientCert((String, String)),
    /// A TLS handshake with a client certificate and key.
    Handshake((String, String)),
}

struct Attack {
    name: &'static str,
    send: Send,
    /// The status code; `None`: refused in the TLS handshake, before any gRPC.
    code: Option<Code>,
    says: &'static str,
    reason: &'static str,
}

fn bearer(token: String, csr: &str) -> Send {
    Send::Token {
        token: Some(token),
        csr: csr.to_owned(),
        ttl: 0,
        cluster: None,
        impersonate: None,
    }
}

fn attacks(m: &Mesh) -> Vec<Attack> {
    let now = OffsetDateTime::now_utc();
    let good = mint(&claims(now), &m.key);
    let (_, csr) = csr_for(CALLER);
    let fresh = signing_key();
    let (good_header, good_payload, good_sig) = split(&good);

    let mut other_aud = claims(now);
    other_aud.audiences = vec!["kubernetes".into()];
    let mut expired = claims(now);
    expired.issued_at = now - time::Duration::hours(2);
    expired.expires_at = now - time::Duration::hours(1);
    let mut other_cluster = claims(now);
    other_cluster.issuer = "https://kubernetes.default.svc.cluster2".into();

    // Signed by an unknown key that claims the trusted key's id: the header of a good token on
    // the payload and signature of the forger's.
    let (_, forged_payload, forged_sig) = split(&mint(&claims(now), &fresh));
    let forged_kid = join(&good_header, &forged_payload, &forged_sig);
    // A good token whose payload is changed after signing, to another service account.
    let altered = String::from_utf8(good_payload.clone())
        .unwrap()
        .replace("\"sleep\"", "\"admin\"")
        .replace(":sleep\"", ":admin\"");
    assert_ne!(altered.as_bytes(), good_payload, "the payload names sleep");
    let altered = join(&good_header, altered.as_bytes(), &good_sig);
    let (_, admin_csr) = csr_for("spiffe://cluster.local/ns/foo/sa/admin");
    let unsigned = join(br#"{"alg":"none","typ":"JWT"}"#, &good_payload, "");
    let hmac = join(br#"{"alg":"HS256","typ":"JWT"}"#, &good_payload, &good_sig);
    let mut not_yet = claims(now);
    not_yet.issued_at = now + time::Duration::hours(1);
    not_yet.expires_at = now + time::Duration::hours(2);

    let year = (
        now - time::Duration::minutes(5),
        now + time::Duration::days(1),
    );
    let foreign_td = client_cert(&m.cacerts, "spiffe://evil.example/ns/foo/sa/sleep", year);
    let foreign_root = client_cert(&m.stranger_cacerts, CALLER, year);
    let stale = client_cert(
        &m.cacerts,
        CALLER,
        (now - time::Duration::days(2), now - time::Duration::days(1)),
    );

    let (_, httpbin_csr) = csr_for("spiffe://cluster.local/ns/foo/sa/httpbin");
    vec![
        Attack {
            name: "a CSR for another service account",
            send: bearer(good.clone(), &httpbin_csr),
            code: Some(Code::PermissionDenied),
            says: "CSR asks for spiffe://cluster.local/ns/foo/sa/httpbin but the caller is spiffe://cluster.local/ns/foo/sa/sleep",
            reason: "csr_identity_mismatch",
        },
        Attack {
            name: "a token for another audience",
            send: bearer(mint(&other_aud, &m.key), &csr),
            code: Some(Code::Unauthenticated),
            says: "audience \"istio-ca\" not among the token's audiences [\"kubernetes\"]",
            reason: "token_audience",
        },
        Attack {
            name: "an expired token",
            send: bearer(mint(&expired, &m.key), &csr),
            code: Some(Code::Unauthenticated),
            says: "token expired at",
            reason: "token_expired",
        },
        Attack {
            name: "a token not valid yet",
            send: bearer(mint(&not_yet, &m.key), &csr),
            code: Some(Code::Unauthenticated),
            says: "token not valid before",
            reason: "token_not_yet_valid",
        },
        Attack {
            name: "a token signed by an unknown key",
            send: bearer(mint(&claims(now), &fresh), &csr),
            code: Some(Code::Unauthenticated),
            says: "no key with kid",
            reason: "token_unknown_key",
        },
        Attack {
            name: "a token signed by an unknown key under the trusted key's id",
            send: bearer(forged_kid, &csr),
            code: Some(Code::Unauthenticated),
            says: "signature does not verify",
            reason: "token_signature",
        },
        Attack {
            name: "a token whose payload was altered after signing",
            send: bearer(altered, &admin_csr),
            code: Some(Code::Unauthenticated),
            says: "signature does not verify",
            reason: "token_signature",
        },
        Attack {
            name: "a token with alg none",
            send: bearer(unsigned, &csr),
            code: Some(Code::Unauthenticated),
            says: "unsupported alg \"none\"",
            reason: "token_unsigned",
        },
        Attack {
            name: "a token with alg HS256 (the public key as an HMAC secret)",
            send: bearer(hmac, &csr),
            code: Some(Code::Unauthenticated),
            says: "unsupported alg \"HS256\"",
            reason: "token_algorithm",
        },
        Attack {
            name: "a token from another cluster's issuer",
            send: bearer(mint(&other_cluster, &signing_key()), &csr),
            code: Some(Code::Unauthenticated),
            says: "issuer \"https://kubernetes.default.svc.cluster2\" is not trusted",
            reason: "token_issuer",
        },
        Attack {
            name: "a good token for a cluster this CA does not serve",
            send: Send::Token {
                token: Some(good.clone()),
                csr: csr.clone(),
                ttl: 0,
                cluster: Some("cluster2"),
                impersonate: None,
            },
            code: Some(Code::Unauthenticated),
            says: "request is for cluster \"cluster2\", this CA serves [\"cluster1\"]",
            reason: "cluster_not_served",
        },
        Attack {
            name: "no credential",
            send: Send::Token {
                token: None,
                csr: csr.clone(),
                ttl: 0,
                cluster: None,
                impersonate: None,
            },
            code: Some(Code::Unauthenticated),
            says: "no client certificate and no bearer token",
            reason: "no_credential",
        },
        Attack {
            name: "impersonation of another identity",
            send: Send::Token {
                token: Some(good.clone()),
                csr: csr.clone(),
                ttl: 0,
                cluster: None,
                impersonate: Some("spiffe://cluster.local/ns/istio-system/sa/istiod"),
            },
            code: Some(Code::PermissionDenied),
            says: "spiffe://cluster.local/ns/foo/sa/sleep may not impersonate spiffe://cluster.local/ns/istio-system/sa/istiod",
            reason: "impersonation",
        },
        Attack {
            name: "a TTL above the maximum",
            send: Send::Token {
                token: Some(good.clone()),
                csr: csr.clone(),
                ttl: 91 * 86_400,
                cluster: None,
                impersonate: None,
            },
            code: Some(Code::InvalidArgument),
            says: "requested TTL 7862400s is greater than the max allowed TTL 7776000s",
            reason: "ttl_above_max",
        },
        Attack {
            name: "a request over the size limit",
            send: bearer(good.clone(), &format!("{csr}{}", "#".repeat(70 * 1024))),
            code: Some(Code::ResourceExhausted),
            says: "more than the limit of 65536 bytes",
            reason: "request_too_large",
        },
        Attack {
            name: "a client certificate of another trust domain, from the CA's own root",
            send: Send::ClientCert(foreign_td),
            code: Some(Code::Unauthenticated),
            says: "identity spiffe://evil.example/ns/foo/sa/sleep is not in trust domain cluster.local",
            reason: "foreign_trust_domain",
        },
        Attack {
            name: "a client certificate from another root",
            send: Send::Handshake(foreign_root),
            code: None,
            says: "received fatal alert: UnknownCA",
            reason: "client_cert_untrusted",
        },
        Attack {
            name: "an expired client certificate",
            send: Send::Handshake(stale),
            code: None,
            says: "received fatal alert: CertificateExpired",
            reason: "client_cert_expired",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_on_identity_is_refused_signs_nothing_and_counts_once_under_its_reason() {
    let m = mesh().await;
    let mut tokens = client(&m, None).await;
    let start = scrape(&m.server).await;
    for reason in [
        "csr_identity_mismatch",
        "token_unsigned",
        "client_cert_untrusted",
        "request_too_large",
        "tls_version",
    ] {
        assert_eq!(
            start.get(&refused(reason)),
            Some(&0.0),
            "{reason} exported at 0"
        );
    }
    for a in attacks(&m) {
        let before = scrape(&m.server).await;
        let answer = match a.send {
            Send::Token {
                token,
                csr,
                ttl,
                cluster,
                impersonate,
            } => {
                let mut r = Request::new(IstioCertificateRequest {
                    csr,
                    validity_duration: ttl,
                    metadata: impersonate.map(|id| prost_types::Struct {
                        fields: [(
                            "ImpersonatedIdentity".to_owned(),
                            prost_types::Value {
                                kind: Some(prost_types::value::Kind::StringValue(id.to_owned())),
                            },
                        )]
                        .into(),
                    }),
                });
                if let Some(t) = token {
                    r.metadata_mut()
                        .insert("authorization", format!("Bearer {t}").parse().unwrap());
                }
                if let Some(c) = cluster {
                    r.metadata_mut().insert("clusterid", c.parse().unwrap());
                }
                Ok(tokens.create_certificate(r).await)
            }
            Send::ClientCert(identity) => {
                let (_, csr) = csr_for(CALLER);
                let mut c = client(&m, Some(&identity)).await;
                Ok(c.create_certificate(Request::new(IstioCertificateRequest {
                    csr,
                    validity_duration: 0,
                    metadata: None,
                }))
                .await)
            }
            Send::Handshake(identity) => Err(handshake(&m, &identity).await),
        };
        let (code, said) = match answer {
            Ok(Ok(r)) => panic!(
                "{}: accepted, issued {:?}",
                a.name,
                r.into_inner().cert_chain
            ),
            Ok(Err(status)) => (Some(status.code()), status.message().to_owned()),
            Err(alert) => (None, alert),
        };
        assert_eq!(code, a.code, "{}: {said}", a.name);
        assert!(
            said.contains(a.says),
            "{}: {said:?} does not say {:?}",
            a.name,
            a.says
        );
        let after = scrape_when(&m.server, |after| moved(&before, after).len() == 1).await;
        assert_eq!(
            moved(&before, &after),
            [(refused(a.reason), 1.0)],
            "{}",
            a.name
        );
        assert_eq!(
            after["citadel_server_success_cert_issuance_count"], 0.0,
            "{}: nothing is signed",
            a.name
        );
    }

    // istiod's counters count as before: every refusal at authentication, and only those.
    let end = scrape(&m.server).await;
    assert_eq!(end["citadel_server_authentication_failure_count"], 12.0);
    // The oversized request and the refused handshakes never reached the service.
    assert_eq!(end["citadel_server_csr_count"], 15.0);

    // The same caller, asking rightly, is served: the refusals were about what they say.
    let (_, csr) = csr_for(CALLER);
    let mut r = Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: None,
    });
    let token = mint(&claims(OffsetDateTime::now_utc()), &m.key);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let chain = tokens
        .create_certificate(r)
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert!(chain[0].contains("BEGIN CERTIFICATE"));
    m.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_below_1_2_is_refused_and_counted_and_1_2_and_1_3_are_served() {
    let m = mesh().await;
    let dir = tempfile::tempdir().unwrap();
    let before = scrape(&m.server).await;
    meshca_testkit::s_client::assert_only_tls_1_2_and_up(dir.path(), m.server.local_addr, &[]);
    let key = refused("tls_version");
    let after = scrape_when(&m.server, |after| after[&key] - before[&key] >= 2.0).await;
    assert_eq!(after[&key] - before[&key], 2.0);
    let handshake = refused("tls_handshake");
    assert_eq!(after[&handshake], before[&handshake]);
    m.server.shutdown().await.unwrap();
}
