//! Kubernetes authentication against real API servers on loopback (`meshca_testkit::kube`):
//! service-account tokens minted with the TokenRequest API (audience `istio-ca`, as
//! istio-agent's projected token) or signed here with a cluster's own service-account key,
//! presented to the real gRPC server over TLS. TokenReview (reviewer: a ServiceAccount bound to
//! `system:auth-delegator`), its cache counted in the API server's own metrics, remote clusters
//! from contexts and from Istio remote secrets, the API server's JWKS, and API servers that are
//! down or hang.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures by design

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca_ca::issuer::IssuancePolicy;
use meshca_ca::metrics::Refusal;
use meshca_ca::proto::IstioCertificateRequest;
use meshca_ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_ca::{
    CaSource, Clock, FakeClock, KubeAuth, OwnApiServer, Running, ServeConfig, ServeError,
    SystemClock,
};
use meshca_pki::{Certificate, KeyType, PrivateKey, TrustDomain, make_csr_pem};
use meshca_testkit::kube::ControlPlane;
use meshca_token::SigningKey;
use time::OffsetDateTime;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Request};

const TD: &str = "cluster.local";

// ---- the clusters -------------------------------------------------------------------------

/// A token signed here with `cluster`'s own service-account key (and the key id its API server
/// publishes), valid from `iat` to `exp`: what the API server itself would mint, with any
/// lifetime, including ones TokenRequest refuses (shorter than 10 minutes, or past).
fn signed_token(
    cp: &ControlPlane,
    cluster: &str,
    ns: &str,
    sa: &str,
    iat: OffsetDateTime,
    exp: OffsetDateTime,
) -> String {
    let pem = std::fs::read(cp.sa_signing_key(cluster)).unwrap();
    let key = SigningKey::from_pem(&pem, "sa key").unwrap();
    sign_as(cp, cluster, &key, ns, sa, iat, exp)
}

/// Like [`signed_token`], with any `key` under the API server's key id.
fn sign_as(
    cp: &ControlPlane,
    cluster: &str,
    key: &SigningKey,
    ns: &str,
    sa: &str,
    iat: OffsetDateTime,
    exp: OffsetDateTime,
) -> String {
    let jwks: serde_json::Value =
        serde_json::from_str(&cp.raw_get(cluster, "/openid/v1/jwks")).unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let uid = cp
        .kubectl_ok([
            "--context",
            cluster,
            "-n",
            ns,
            "get",
            "serviceaccount",
            sa,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .trim()
        .to_owned();
    let b64 = |v: serde_json::Value| meshca_token::base64url::encode(v.to_string().as_bytes());
    let input = format!(
        "{}.{}",
        b64(serde_json::json!({"alg": "RS256", "kid": kid, "typ": "JWT"})),
        b64(serde_json::json!({
            "iss": cp.issuer(cluster),
            "aud": ["istio-ca"],
            "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "iat": iat.unix_timestamp(),
            "nbf": iat.unix_timestamp(),
            "exp": exp.unix_timestamp(),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": uid}},
        }))
    );
    let sig = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", meshca_token::base64url::encode(sig))
}

/// Writes a kubeconfig whose context `cluster` reaches `server` as user `user` holding the token
/// in `token_file` (re-read by kube as it changes).
fn token_kubeconfig(cp: &ControlPlane, file: &Path, contexts: &[(&str, String, &Path)]) {
    let ca = cp.ca_cert();
    let mut y = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (name, server, _) in contexts {
        y += &format!(
            "- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority: {}\n",
            ca.display()
        );
    }
    y += "users:\n";
    for (name, _, token_file) in contexts {
        y += &format!(
            "- name: {name}\n  user:\n    tokenFile: {}\n",
            token_file.display()
        );
    }
    y += "contexts:\n";
    for (name, _, _) in contexts {
        y += &format!("- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n");
    }
    y += &format!("current-context: {}\n", contexts[0].0);
    std::fs::write(file, y).unwrap();
}

/// A kubeconfig for cluster1 whose user is a new service account `meshca-system/<name>` with no
/// rights of its own, its token (from the TokenRequest API) in a file beside it.
fn account_kubeconfig(cp: &ControlPlane, dir: &Path, name: &str) -> PathBuf {
    cp.service_account("cluster1", "meshca-system", name);
    let token = dir.join(format!("{name}.token"));
    let t = cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "meshca-system",
        "create",
        "token",
        name,
    ]);
    std::fs::write(&token, t.trim()).unwrap();
    let kubeconfig = dir.join(format!("{name}.kubeconfig"));
    token_kubeconfig(
        cp,
        &kubeconfig,
        &[("cluster1", cp.server("cluster1"), &token)],
    );
    kubeconfig
}

/// A least-privileged reviewer in `cluster`: ServiceAccount `meshca-system/meshca` bound to
/// `system:auth-delegator` (create TokenReviews and SubjectAccessReviews, nothing else), its
/// token (for the API server's own audience) written to a file in `dir`.
fn reviewer_token(cp: &ControlPlane, cluster: &str, dir: &Path) -> PathBuf {
    cp.service_account(cluster, "meshca-system", "meshca");
    cp.kubectl_ok([
        "--context",
        cluster,
        "create",
        "clusterrolebinding",
        "meshca-token-review",
        "--clusterrole=system:auth-delegator",
        "--serviceaccount=meshca-system:meshca",
    ]);
    let t = cp.kubectl_ok([
        "--context",
        cluster,
        "-n",
        "meshca-system",
        "create",
        "token",
        "meshca",
        "--duration=1h",
    ]);
    let file = dir.join(format!("{cluster}-reviewer.token"));
    std::fs::write(&file, t.trim()).unwrap();
    file
}

// ---- the CA server ------------------------------------------------------------------------

struct Ca {
    _t: tempfile::TempDir,
    dir: PathBuf,
    cacerts: PathBuf,
    root: String,
}

fn ca() -> Ca {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_owned();
    meshca_certs::run(
        &dir,
        &meshca_certs::Settings::ecdsa_p256(),
        &[meshca_certs::Target::Cacerts("cluster1".into())],
        false,
        OffsetDateTime::now_utc(),
        &|_| {},
    )
    .unwrap();
    let cacerts = dir.join("cluster1");
    let root = std::fs::read_to_string(cacerts.join("root-cert.pem")).unwrap();
    Ca {
        _t: t,
        dir,
        cacerts,
        root,
    }
}

fn config(ca: &Ca, kube: KubeAuth) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        source: CaSource::Folder(ca.cacerts.clone()),
        trust_domain: TrustDomain::new(TD).unwrap(),
        plaintext: false,
        serving_dns: vec!["istiod.istio-system.svc".into()],
        jwt_issuers: Vec::new(),
        audience: "istio-ca".into(),
        cluster_id: Some("cluster1".into()),
        policy: IssuancePolicy::default(),
        metrics_addr: None,
        allow_root_change: false,
        reload_interval: Duration::from_secs(1),
        debounce: Duration::from_millis(50),
        token_review: Some(kube),
    }
}

/// Own cluster `cluster1` through the control plane's kubeconfig (admin).
fn kube(cp: &ControlPlane) -> KubeAuth {
    KubeAuth {
        own: OwnApiServer::Context(Some("cluster1".into())),
        kubeconfig: Some(cp.kubeconfig().to_owned()),
        token_review: true,
        timeout: Duration::from_secs(3),
        ..KubeAuth::default()
    }
}

async fn start(ca: &Ca, kube: KubeAuth, clock: Arc<dyn Clock>) -> Running {
    meshca_ca::start(config(ca, kube), clock).await.unwrap()
}

async fn client(server: &Running, ca: &Ca) -> IstioCertificateServiceClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca.root))
        .domain_name("istiod.istio-system.svc");
    let channel = Channel::from_shared(format!("https://{}", server.local_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    IstioCertificateServiceClient::new(channel)
}

/// Asks for a certificate for `token` (with `cluster` as `clusterid` when given): the URI SANs
/// of the issued leaf, or the refusal.
async fn ask(
    c: &mut IstioCertificateServiceClient<Channel>,
    token: &str,
    cluster: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    // No SAN: the identity is whatever authentication finds, as istiod does.
    let csr = make_csr_pem(&key, &[]).unwrap();
    let mut r = Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 0,
        metadata: None,
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(c) = cluster {
        r.metadata_mut().insert("clusterid", c.parse().unwrap());
    }
    let chain = c.create_certificate(r).await?.into_inner().cert_chain;
    Ok(Certificate::one_from_pem(chain[0].as_bytes(), "leaf")
        .unwrap()
        .uris()
        .to_vec())
}

/// The refusal of `result`, checked to be UNAUTHENTICATED, on one line, without `token`.
fn refused(result: Result<Vec<String>, tonic::Status>, token: &str) -> String {
    let status = result.expect_err("a certificate was issued");
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    let msg = status.message().to_owned();
    assert!(!msg.contains(token), "the token is in the message: {msg}");
    assert!(!msg.contains('\n'), "{msg}");
    msg
}

/// How many refusals `server` counted for `reason`.
fn counted(server: &Running, reason: Refusal) -> u64 {
    server.metrics.refused_count(reason)
}

fn spiffe(ns: &str, sa: &str) -> Vec<String> {
    vec![format!("spiffe://{TD}/ns/{ns}/sa/{sa}")]
}

// ---- the tests ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_by_a_least_privileged_reviewer_accepts_exactly_the_tokens_it_should() {
    let cp = ControlPlane::start(&["cluster1", "cluster2"]);
    let ca = ca();
    for c in ["cluster1", "cluster2"] {
        cp.service_account(c, "foo", "bar");
    }
    cp.service_account("cluster1", "foo", "gone");
    let reviewer = reviewer_token(&cp, "cluster1", &ca.dir);
    let kubeconfig = ca.dir.join("reviewer.kubeconfig");
    token_kubeconfig(
        &cp,
        &kubeconfig,
        &[("cluster1", cp.server("cluster1"), &reviewer)],
    );
    let clock = Arc::new(FakeClock::new(OffsetDateTime::now_utc()));
    let server = start(
        &ca,
        KubeAuth {
            own: OwnApiServer::Context(None),
            kubeconfig: Some(kubeconfig),
            // Long, so that the token's own expiry is what ends a remembered review.
            review_cache_ttl: Duration::from_secs(600),
            ..kube(&cp)
        },
        clock.clone(),
    )
    .await;
    let mut c = client(&server, &ca).await;

    // The projected-token audience: a certificate for exactly that service account.
    let good = cp.token("cluster1", "foo", "bar", "istio-ca");
    let before = cp.token_reviews("cluster1");
    assert_eq!(
        ask(&mut c, &good, None).await.unwrap(),
        spiffe("foo", "bar")
    );
    assert_eq!(cp.token_reviews("cluster1") - before, 1.0);

    // Another audience: the API server says so.
    let other = cp.token("cluster1", "foo", "bar", "vault");
    let msg = refused(ask(&mut c, &other, None).await, &other);
    assert!(msg.contains("token review at https://127.0.0.1:"), "{msg}");
    assert!(
        msg.contains("(cluster \"cluster1\"): not authenticated"),
        "{msg}"
    );

    // Expired two minutes ago, signed with the cluster's own key: past the API server's leeway.
    let now = OffsetDateTime::now_utc();
    let expired = signed_token(
        &cp,
        "cluster1",
        "foo",
        "bar",
        now - time::Duration::hours(1),
        now - time::Duration::minutes(2),
    );
    let msg = refused(ask(&mut c, &expired, None).await, &expired);
    assert!(msg.contains("not authenticated"), "{msg}");
    // The same claims, still valid: accepted, so the refusal above was the expiry.
    let fresh = signed_token(
        &cp,
        "cluster1",
        "foo",
        "bar",
        now,
        now + time::Duration::minutes(20),
    );
    assert_eq!(
        ask(&mut c, &fresh, None).await.unwrap(),
        spiffe("foo", "bar")
    );

    // Cluster2's token for the same namespace and service account, presented as cluster1's.
    let foreign = cp.token("cluster2", "foo", "bar", "istio-ca");
    let reviewed = counted(&server, Refusal::TokenReview);
    for cluster in [None, Some("cluster1")] {
        let msg = refused(ask(&mut c, &foreign, cluster).await, &foreign);
        assert!(msg.contains("not authenticated"), "{msg}");
    }
    assert_eq!(counted(&server, Refusal::TokenReview) - reviewed, 2);
    // ... and a cluster this server does not serve is refused before any review.
    let before = cp.token_reviews("cluster1");
    let msg = refused(ask(&mut c, &foreign, Some("cluster2")).await, &foreign);
    assert!(msg.contains("this CA serves [\"cluster1\"]"), "{msg}");
    assert_eq!(cp.token_reviews("cluster1"), before);
    assert_eq!(counted(&server, Refusal::ClusterNotServed), 1);

    // A burst with one token: one review for all of them, at the same time and afterwards.
    let burst = cp.token("cluster1", "foo", "bar", "istio-ca");
    let before = cp.token_reviews("cluster1");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (mut c, burst) = (c.clone(), burst.clone());
        tasks.push(tokio::spawn(async move { ask(&mut c, &burst, None).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), spiffe("foo", "bar"));
    }
    for _ in 0..4 {
        ask(&mut c, &burst, None).await.unwrap();
    }
    assert_eq!(cp.token_reviews("cluster1") - before, 1.0);

    // A token that expires within the TTL is remembered until its exp, not after.
    let now = clock.now();
    let short = signed_token(
        &cp,
        "cluster1",
        "foo",
        "bar",
        now,
        now + time::Duration::seconds(60),
    );
    let before = cp.token_reviews("cluster1");
    ask(&mut c, &short, None).await.unwrap();
    clock.advance(time::Duration::seconds(59));
    ask(&mut c, &short, None).await.unwrap();
    assert_eq!(cp.token_reviews("cluster1") - before, 1.0, "remembered");
    clock.advance(time::Duration::seconds(2));
    // The API server's clock has not moved (and allows a minute of skew): it accepts again,
    // but only after being asked.
    ask(&mut c, &short, None).await.unwrap();
    assert_eq!(
        cp.token_reviews("cluster1") - before,
        2.0,
        "asked again after exp"
    );

    // A deleted service account: remembered for our TTL at most, then refused. The API server
    // itself remembers successful authentications for 10 s, so it may say yes a little longer:
    // each attempt moves our clock past our TTL, so that every attempt asks it.
    let doomed = cp.token("cluster1", "foo", "gone", "istio-ca");
    assert_eq!(
        ask(&mut c, &doomed, None).await.unwrap(),
        spiffe("foo", "gone")
    );
    cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "foo",
        "delete",
        "serviceaccount",
        "gone",
    ]);
    clock.advance(time::Duration::seconds(300));
    let before = cp.token_reviews("cluster1");
    assert!(
        ask(&mut c, &doomed, None).await.is_ok(),
        "remembered within the TTL"
    );
    assert_eq!(cp.token_reviews("cluster1"), before);
    let deadline = Instant::now() + Duration::from_secs(30);
    let msg = loop {
        clock.advance(time::Duration::seconds(601));
        match ask(&mut c, &doomed, None).await {
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            result => break refused(result, &doomed),
        }
    };
    assert!(msg.contains("not authenticated"), "{msg}");

    // A reviewer that may not create TokenReviews: the API server's 403, named.
    let forbidden = account_kubeconfig(&cp, &ca.dir, "nobody");
    let weak = start(
        &ca,
        KubeAuth {
            own: OwnApiServer::Context(None),
            kubeconfig: Some(forbidden),
            ..kube(&cp)
        },
        Arc::new(SystemClock),
    )
    .await;
    let mut w = client(&weak, &ca).await;
    let msg = refused(ask(&mut w, &good, None).await, &good);
    assert!(
        msg.contains("(cluster \"cluster1\"): answered HTTP 403: tokenreviews.authentication.k8s.io is forbidden"),
        "{msg}"
    );
    weak.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_clusters_tokens_are_reviewed_by_their_own_api_servers() {
    let cp = ControlPlane::start(&["cluster1", "cluster2"]);
    let ca = ca();
    cp.service_account("cluster1", "foo", "bar");
    cp.service_account("cluster2", "remote-ns", "remote-sa");
    let own = cp.token("cluster1", "foo", "bar", "istio-ca");
    let remote = cp.token("cluster2", "remote-ns", "remote-sa", "istio-ca");

    // Remote cluster from a kubeconfig context.
    let server = start(
        &ca,
        KubeAuth {
            remote_contexts: vec![("cluster2".into(), "cluster2".into())],
            ..kube(&cp)
        },
        Arc::new(SystemClock),
    )
    .await;
    let mut c = client(&server, &ca).await;
    let (r1, r2) = (cp.token_reviews("cluster1"), cp.token_reviews("cluster2"));
    assert_eq!(
        ask(&mut c, &remote, Some("cluster2")).await.unwrap(),
        spiffe("remote-ns", "remote-sa")
    );
    assert_eq!(ask(&mut c, &own, None).await.unwrap(), spiffe("foo", "bar"));
    assert_eq!(
        ask(&mut c, &own, Some("cluster1")).await.unwrap(),
        spiffe("foo", "bar")
    );
    assert_eq!(
        (
            cp.token_reviews("cluster1") - r1,
            cp.token_reviews("cluster2") - r2
        ),
        (1.0, 1.0),
        "each cluster's API server reviewed its own token once"
    );
    // Each token is valid only as its own cluster's.
    let msg = refused(ask(&mut c, &remote, None).await, &remote);
    assert!(msg.contains("(cluster \"cluster1\")"), "{msg}");
    let msg = refused(ask(&mut c, &own, Some("cluster2")).await, &own);
    assert!(
        msg.contains("(cluster \"cluster2\"): not authenticated"),
        "{msg}"
    );
    server.shutdown().await.unwrap();

    // Remote cluster from an Istio remote secret in the own cluster, with a least-privileged
    // reviewer of cluster2 in its kubeconfig, as `istioctl create-remote-secret` leaves it.
    let reviewer = reviewer_token(&cp, "cluster2", &ca.dir);
    let kc = ca.dir.join("remote.kubeconfig");
    token_kubeconfig(&cp, &kc, &[("cluster2", cp.server("cluster2"), &reviewer)]);
    // Inline the CA and token: a remote secret carries everything in itself.
    let inline = std::fs::read_to_string(&kc)
        .unwrap()
        .replace(
            &format!("certificate-authority: {}", cp.ca_cert().display()),
            &format!(
                "certificate-authority-data: {}",
                base64(cp.ca_pem().as_bytes())
            ),
        )
        .replace(
            &format!("tokenFile: {}", reviewer.display()),
            &format!("token: {}", std::fs::read_to_string(&reviewer).unwrap()),
        );
    let secret_file = ca.dir.join("remote-secret.yaml");
    std::fs::write(&secret_file, inline).unwrap();
    cp.kubectl_ok([
        "--context",
        "cluster1",
        "create",
        "namespace",
        "istio-system",
    ]);
    cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "istio-system",
        "create",
        "secret",
        "generic",
        "istio-remote-secret-cluster2",
        &format!("--from-file=cluster2={}", secret_file.display()),
    ]);
    cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "istio-system",
        "label",
        "secret",
        "istio-remote-secret-cluster2",
        "istio/multiCluster=true",
    ]);
    let server = start(
        &ca,
        KubeAuth {
            remote_secrets_namespace: Some("istio-system".into()),
            ..kube(&cp)
        },
        Arc::new(SystemClock),
    )
    .await;
    let mut c = client(&server, &ca).await;
    let r2 = cp.token_reviews("cluster2");
    let fresh_remote = cp.token("cluster2", "remote-ns", "remote-sa", "istio-ca");
    assert_eq!(
        ask(&mut c, &fresh_remote, Some("cluster2")).await.unwrap(),
        spiffe("remote-ns", "remote-sa")
    );
    assert_eq!(cp.token_reviews("cluster2") - r2, 1.0);
    let msg = refused(ask(&mut c, &own, Some("cluster3")).await, &own);
    assert!(
        msg.contains("this CA serves [\"cluster1\", \"cluster2\"]"),
        "{msg}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_servers_jwks_verifies_tokens_locally_without_a_token_review() {
    let cp = ControlPlane::start(&["cluster1", "cluster2"]);
    let ca = ca();
    for c in ["cluster1", "cluster2"] {
        cp.service_account(c, "foo", "bar");
    }
    // A reviewer of no special rights reads the keys (system:service-account-issuer-discovery
    // is granted to every service account).
    let kubeconfig = account_kubeconfig(&cp, &ca.dir, "plain");
    let server = start(
        &ca,
        KubeAuth {
            own: OwnApiServer::Context(None),
            kubeconfig: Some(kubeconfig),
            token_review: false,
            jwks_from_api_server: true,
            ..kube(&cp)
        },
        Arc::new(SystemClock),
    )
    .await;
    let mut c = client(&server, &ca).await;
    let before = cp.token_reviews("cluster1");

    let good = cp.token("cluster1", "foo", "bar", "istio-ca");
    assert_eq!(
        ask(&mut c, &good, None).await.unwrap(),
        spiffe("foo", "bar")
    );

    let other = cp.token("cluster1", "foo", "bar", "vault");
    let msg = refused(ask(&mut c, &other, None).await, &other);
    assert!(
        msg.contains("verified with the keys of https://127.0.0.1:"),
        "{msg}"
    );
    assert!(msg.contains("audience"), "{msg}");
    assert_eq!(counted(&server, Refusal::TokenAudience), 1);

    // Signed by another key, under the API server's key id, and under a key id of its own.
    let stranger_pem = PrivateKey::generate(KeyType::Rsa2048)
        .unwrap()
        .to_pkcs8_pem();
    let stranger = SigningKey::from_pem(stranger_pem.as_bytes(), "stranger").unwrap();
    let now = OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let forged = sign_as(&cp, "cluster1", &stranger, "foo", "bar", now, now + hour);
    let msg = refused(ask(&mut c, &forged, None).await, &forged);
    assert!(msg.contains("signature"), "{msg}");
    assert_eq!(counted(&server, Refusal::TokenSignature), 1);
    let own_kid = meshca_token::mint(
        &meshca_token::ServiceAccountClaims {
            issuer: cp.issuer("cluster1").to_owned(),
            audiences: vec!["istio-ca".into()],
            namespace: "foo".into(),
            service_account: "bar".into(),
            issued_at: now,
            expires_at: now + hour,
        },
        &stranger,
    )
    .unwrap();
    let msg = refused(ask(&mut c, &own_kid, None).await, &own_kid);
    assert!(msg.contains("no key with kid"), "{msg}");
    assert_eq!(counted(&server, Refusal::TokenUnknownKey), 1);

    // Cluster2's token: another issuer.
    let foreign = cp.token("cluster2", "foo", "bar", "istio-ca");
    let msg = refused(ask(&mut c, &foreign, None).await, &foreign);
    assert!(msg.contains("https://cluster2.meshca.test"), "{msg}");
    assert_eq!(counted(&server, Refusal::TokenIssuer), 1);

    // Expired, with the cluster's own key: refused by the clock here.
    let expired = signed_token(
        &cp,
        "cluster1",
        "foo",
        "bar",
        now - hour,
        now - time::Duration::minutes(2),
    );
    let msg = refused(ask(&mut c, &expired, None).await, &expired);
    assert!(msg.contains("expired"), "{msg}");
    assert_eq!(counted(&server, Refusal::TokenExpired), 1);

    // What local verification cannot see: the service account is gone, its token still works
    // until it expires. (TokenReview is what sees this.)
    cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "foo",
        "delete",
        "serviceaccount",
        "bar",
    ]);
    assert_eq!(
        ask(&mut c, &good, None).await.unwrap(),
        spiffe("foo", "bar")
    );

    assert_eq!(
        cp.token_reviews("cluster1"),
        before,
        "no TokenReview was sent"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_is_down_or_hangs_is_a_refusal_within_the_timeout() {
    let mut cp = ControlPlane::start(&["cluster1", "cluster2"]);
    let ca = ca();
    cp.service_account("cluster1", "foo", "bar");
    cp.service_account("cluster2", "foo", "bar");
    // A listener that takes connections and never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_url = format!("https://{}", hung.local_addr().unwrap());
    let reviewer = ca.dir.join("any.token");
    std::fs::write(&reviewer, "not-a-real-token").unwrap();
    let kc = ca.dir.join("faults.kubeconfig");
    std::fs::copy(cp.kubeconfig(), &kc).unwrap();
    let mut y = std::fs::read_to_string(&kc).unwrap();
    y = y.replace(
        "clusters:\n",
        &format!(
            "clusters:\n- name: hung\n  cluster:\n    server: {hung_url}\n    certificate-authority: {}\n",
            cp.ca_cert().display()
        ),
    );
    y = y.replace(
        "contexts:\n",
        "contexts:\n- name: hung\n  context:\n    cluster: hung\n    user: admin\n",
    );
    std::fs::write(&kc, y).unwrap();
    let timeout = Duration::from_secs(1);
    let server = start(
        &ca,
        KubeAuth {
            kubeconfig: Some(kc),
            remote_contexts: vec![
                ("cluster2".into(), "cluster2".into()),
                ("hung".into(), "hung".into()),
            ],
            timeout,
            ..kube(&cp)
        },
        Arc::new(SystemClock),
    )
    .await;
    let mut c = client(&server, &ca).await;
    let own = cp.token("cluster1", "foo", "bar", "istio-ca");
    let remote = cp.token("cluster2", "foo", "bar", "istio-ca");
    assert_eq!(
        ask(&mut c, &remote, Some("cluster2")).await.unwrap(),
        spiffe("foo", "bar")
    );

    // Hung: refused once the timeout is up, naming the API server.
    let began = Instant::now();
    let msg = refused(ask(&mut c, &remote, Some("hung")).await, &remote);
    let took = began.elapsed();
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "{took:?}"
    );
    assert!(
        msg.contains(&format!(
            "token review at {hung_url} (cluster \"hung\"): no answer within 1s"
        )),
        "{msg}"
    );

    // Killed: refused at once; the other clusters go on.
    cp.kill("cluster2");
    let fresh = cp.token("cluster1", "foo", "bar", "istio-ca");
    let began = Instant::now();
    let unavailable = counted(&server, Refusal::KubeUnavailable);
    let msg = refused(ask(&mut c, &fresh, Some("cluster2")).await, &fresh);
    assert_eq!(counted(&server, Refusal::KubeUnavailable) - unavailable, 1);
    assert!(began.elapsed() < timeout + Duration::from_secs(2));
    assert!(msg.contains("(cluster \"cluster2\")"), "{msg}");
    assert!(
        msg.contains("cannot reach the API server") || msg.contains("no answer"),
        "{msg}"
    );
    assert_eq!(ask(&mut c, &own, None).await.unwrap(), spiffe("foo", "bar"));

    // Back: the same token works (refusals are not remembered), over the same client.
    cp.restart("cluster2");
    let remote2 = cp.token("cluster2", "foo", "bar", "istio-ca");
    assert_eq!(
        ask(&mut c, &remote2, Some("cluster2")).await.unwrap(),
        spiffe("foo", "bar")
    );
    drop(hung);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_listener_is_plaintext_grpc_and_goes_not_serving_at_shutdown() {
    let ca = ca();
    let mut cfg = config(&ca, KubeAuth::default());
    cfg.token_review = None;
    let mut server = meshca_ca::start(cfg, Arc::new(SystemClock)).await.unwrap();
    let addr = server
        .serve_health("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "istio.v1.auth.IstioCertificateService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.status, 1, "{service:?} SERVING");
    }
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, 1);
    // The health listener is no CA: no CreateCertificate there.
    let mut not_ca = IstioCertificateServiceClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let err = not_ca
        .create_certificate(IstioCertificateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    server.shutdown().await.unwrap();
    match watch.message().await {
        Ok(Some(m)) => assert_eq!(m.status, 2, "NOT_SERVING"),
        other => panic!("no NOT_SERVING before the stream ended: {other:?}"),
    }
}

#[tokio::test]
async fn settings_that_cannot_work_stop_the_start() {
    let ca = ca();
    let start = |cluster_id: Option<&str>, kube: KubeAuth| {
        let mut cfg = config(&ca, kube);
        cfg.cluster_id = cluster_id.map(str::to_owned);
        meshca_ca::start(cfg, Arc::new(SystemClock))
    };
    let remote = KubeAuth {
        remote_contexts: vec![("cluster2".into(), "cluster2".into())],
        ..KubeAuth::default()
    };
    let Err(err) = start(None, remote.clone()).await else {
        panic!("started without its own cluster ID")
    };
    assert_eq!(
        err.to_string(),
        "Kubernetes authentication: remote cluster \"cluster2\" needs this server's own cluster ID to be set"
    );
    let Err(err) = start(Some("cluster2"), remote).await else {
        panic!("started with itself as remote")
    };
    assert!(matches!(err, ServeError::Kube(_)), "{err}");

    let missing = ca.dir.join("missing.kubeconfig");
    let Err(err) = start(
        Some("cluster1"),
        KubeAuth {
            kubeconfig: Some(missing.clone()),
            token_review: true,
            ..KubeAuth::default()
        },
    )
    .await
    else {
        panic!("started without a kubeconfig")
    };
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "Kubernetes authentication: {}: ",
            missing.display()
        )),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");

    let kc = ca.dir.join("one.kubeconfig");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: a\n  context:\n    cluster: a\n    user: a\nusers:\n- name: a\n  user:\n    token: t\ncurrent-context: a\n",
    )
    .unwrap();
    let Err(err) = start(
        Some("cluster1"),
        KubeAuth {
            kubeconfig: Some(kc),
            remote_contexts: vec![("cluster2".into(), "nope".into())],
            ..KubeAuth::default()
        },
    )
    .await
    else {
        panic!("started with an unknown context")
    };
    assert_eq!(
        err.to_string(),
        "Kubernetes authentication: --remote-cluster cluster2=nope: no context \"nope\" in the kubeconfig"
    );
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
