//! Two clusters with one root, a CA server each, an agent per cluster: mTLS across clusters works
//! and each side sees the other's SPIFFE ID; a workload under another root is refused. The
//! endpoint also passes the seed's own openssl s_client / sed / awk / diff / verify steps, its
//! chain ending with the root as Envoy's does.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshca_agent::mtls::{Endpoint, call};
use meshca_agent::run::Agent;
use meshca_agent::{Credential, Request};
use meshca_ca::issuer::IssuancePolicy;
use meshca_ca::{CaSource, Clock, FakeClock, Running, ServeConfig, SystemClock};
use meshca_pki::{Certificate, KeyType, PrivateKey, SpiffeId, TrustDomain};
use meshca_testkit::run_in;
use meshca_token::{Jwks, ServiceAccountClaims, SigningKey};

fn make(dir: &Path, names: &[&str]) {
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

struct Mesh {
    key: SigningKey,
    jwks: std::path::PathBuf,
}

impl Mesh {
    fn new(dir: &Path) -> Self {
        let pem = PrivateKey::generate(KeyType::EcdsaP256)
            .unwrap()
            .to_pkcs8_pem();
        let key = SigningKey::from_pem(pem.as_bytes(), "k").unwrap();
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, Jwks::from_keys([key.public_jwk()]).to_json()).unwrap();
        Mesh { key, jwks }
    }

    async fn ca(&self, bundle: &Path) -> Running {
        self.ca_on(bundle, Arc::new(SystemClock)).await
    }

    async fn ca_on(&self, bundle: &Path, clock: Arc<dyn Clock>) -> Running {
        meshca_ca::start(
            ServeConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                source: CaSource::Folder(bundle.to_owned()),
                trust_domain: TrustDomain::new("cluster.local").unwrap(),
                plaintext: false,
                serving_dns: vec!["istiod.istio-system.svc".into()],
                jwt_issuers: vec![("k8s".into(), self.jwks.clone())],
                audience: "istio-ca".into(),
                cluster_id: None,
                policy: IssuancePolicy::default(),
                metrics_addr: None,
                allow_root_change: false,
                reload_interval: Duration::from_secs(1),
                debounce: Duration::from_millis(50),
                token_review: None,
            },
            clock,
        )
        .await
        .unwrap()
    }

    fn agent(&self, ca: &Running, root_pem: &str, ns: &str, sa: &str, out: &Path) -> Agent {
        self.agent_for(ca, root_pem, ns, sa, out, time::Duration::hours(1))
    }

    fn agent_for(
        &self,
        ca: &Running,
        root_pem: &str,
        ns: &str,
        sa: &str,
        out: &Path,
        token_life: time::Duration,
    ) -> Agent {
        let now = time::OffsetDateTime::now_utc();
        let token = meshca_token::mint(
            &ServiceAccountClaims {
                issuer: "k8s".into(),
                audiences: vec!["istio-ca".into()],
                namespace: ns.into(),
                service_account: sa.into(),
                issued_at: now,
                expires_at: now + token_life,
            },
            &self.key,
        )
        .unwrap();
        Agent {
            request: Request {
                ca_addr: ca.local_addr.to_string(),
                ca_root_pem: root_pem.to_owned(),
                server_name: "istiod.istio-system.svc".into(),
                identity: SpiffeId::workload(&TrustDomain::new("cluster.local").unwrap(), ns, sa)
                    .unwrap(),
                key_type: KeyType::EcdsaP256,
                ttl_seconds: 0,
                credential: Credential::Token(token),
                cluster_id: None,
            },
            output_dir: out.to_owned(),
            grace_ratio: 0.5,
            token_file: None,
            ca_root_file: None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_in_two_clusters_trust_each_other_and_a_third_root_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make(d, &["cluster1", "cluster2"]);
    make(&d.join("elsewhere"), &["cluster3"]);
    let mesh = Mesh::new(d);
    let ca1 = mesh.ca(&d.join("cluster1")).await;
    let ca2 = mesh.ca(&d.join("cluster2")).await;
    let ca3 = mesh.ca(&d.join("elsewhere/cluster3")).await;
    let root = std::fs::read_to_string(d.join("root-cert.pem")).unwrap();
    let root3 = std::fs::read_to_string(d.join("elsewhere/root-cert.pem")).unwrap();

    let httpbin = mesh.agent(&ca1, &root, "foo", "httpbin", &d.join("httpbin"));
    let sleep = mesh.agent(&ca2, &root, "foo", "sleep", &d.join("sleep"));
    let stranger = mesh.agent(&ca3, &root3, "foo", "stranger", &d.join("stranger"));
    let now = time::OffsetDateTime::now_utc();
    httpbin.once(now).await.unwrap();
    sleep.once(now).await.unwrap();
    stranger.once(now).await.unwrap();
    assert_eq!(meshca_testkit::mode(&d.join("httpbin/key.pem")), 0o600);

    let server = Endpoint::start("127.0.0.1:0".parse().unwrap(), &d.join("httpbin"))
        .await
        .unwrap();
    let addr = server.local_addr.to_string();
    let roots = Certificate::all_from_pem(root.as_bytes(), "root").unwrap();
    let res = call(&addr, Some(&d.join("sleep")), Some(roots.clone()))
        .await
        .unwrap();
    assert_eq!(
        res.reply.trim(),
        "hello spiffe://cluster.local/ns/foo/sa/sleep",
        "httpbin saw sleep"
    );
    assert_eq!(
        res.server_chain[0].uris(),
        ["spiffe://cluster.local/ns/foo/sa/httpbin"],
        "sleep saw httpbin"
    );
    let cluster1_ca = Certificate::one_from_pem(
        &std::fs::read(d.join("cluster1/ca-cert.pem")).unwrap(),
        "ca",
    )
    .unwrap();
    assert_eq!(res.server_chain[1], cluster1_ca);
    // The root comes last, as Envoy presents istio-agent's chain.
    assert_eq!(res.server_chain.len(), 3);
    assert_eq!(res.server_chain[2], roots[0]);

    // A workload under another root: the server refuses its certificate...
    let refused = call(&addr, Some(&d.join("stranger")), Some(roots)).await;
    let got = refused.map(|r| r.reply).unwrap_or_default();
    assert!(!got.contains("hello"), "stranger was answered: {got}");
    // ...and it does not accept the server's either.
    let roots3 = Certificate::all_from_pem(root3.as_bytes(), "root3").unwrap();
    let err = call(&addr, Some(&d.join("stranger")), Some(roots3))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("TLS handshake failed"), "{err}");

    // A bad token and no certificate yet: the CA refuses and nothing is written.
    let mut fresh = mesh.agent(&ca1, &root, "foo", "other", &d.join("other"));
    fresh.request.credential = Credential::Token("not-a-valid-token".into());
    let err = fresh.once(now).await.unwrap_err().to_string();
    assert!(err.contains("Unauthenticated"), "{err}");
    assert!(!d.join("other").exists());

    // Renewal with only a bad token at hand: the agent presents its current certificate over
    // mTLS instead, and the endpoint picks the renewed certificate up.
    let mut renew = mesh.agent(&ca1, &root, "foo", "httpbin", &d.join("httpbin"));
    renew.request.credential = Credential::Token("not-a-valid-token".into());
    let before = std::fs::read(d.join("httpbin/cert-chain.pem")).unwrap();
    let leaf = renew.once(now).await.unwrap();
    assert_eq!(leaf.uris(), ["spiffe://cluster.local/ns/foo/sa/httpbin"]);
    assert_ne!(
        std::fs::read(d.join("httpbin/cert-chain.pem")).unwrap(),
        before
    );
    server.reload().unwrap();
    let res = call(&addr, Some(&d.join("sleep")), None).await.unwrap();
    assert_eq!(
        res.server_chain[0], leaf,
        "the endpoint serves the renewed certificate"
    );

    for ca in [ca1, ca2, ca3] {
        ca.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_openssl_steps_pass_against_the_endpoint() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make(d, &["cluster1", "cluster2"]);
    let mesh = Mesh::new(d);
    let ca1 = mesh.ca(&d.join("cluster1")).await;
    let ca2 = mesh.ca(&d.join("cluster2")).await;
    let root = std::fs::read_to_string(d.join("root-cert.pem")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    mesh.agent(&ca1, &root, "foo", "httpbin", &d.join("httpbin"))
        .once(now)
        .await
        .unwrap();
    mesh.agent(&ca2, &root, "foo", "sleep", &d.join("sleep"))
        .once(now)
        .await
        .unwrap();
    let server = Endpoint::start("127.0.0.1:0".parse().unwrap(), &d.join("httpbin"))
        .await
        .unwrap();
    let port = server.local_addr.port();
    // As istio-agent writes it: every element of the CA's answer, the root bundle last, written
    // byte for byte as root-cert.pem is.
    let chain = std::fs::read_to_string(d.join("httpbin/cert-chain.pem")).unwrap();
    let root_file = std::fs::read_to_string(d.join("httpbin/root-cert.pem")).unwrap();
    assert_eq!(meshca_testkit::pem_blocks(&chain).len(), 3, "{chain}");
    assert!(chain.ends_with(&root_file), "{chain}");
    // The seed's steps verbatim: Istio's proxies send the root too, and so does the endpoint, so
    // proxy-cert-3.pem is the root, identical to the workload's root-cert.pem byte for byte.
    let script = format!(
        r#"set -e
openssl s_client -showcerts -connect 127.0.0.1:{port} -cert sleep/cert-chain.pem -key sleep/key.pem </dev/null > httpbin-proxy-cert.txt 2>/dev/null || true
sed -n '/-----BEGIN CERTIFICATE-----/{{:start /-----END CERTIFICATE-----/!{{N;b start}};/.*/p}}' httpbin-proxy-cert.txt > certs.pem
awk 'BEGIN {{counter=0;}} /BEGIN CERT/{{counter++}} {{ print > "proxy-cert-" counter ".pem"}}' < certs.pem
openssl x509 -in cluster1/root-cert.pem -text -noout > root-cert.crt.txt
openssl x509 -in ./proxy-cert-3.pem -text -noout > pod-root-cert.crt.txt
diff -s root-cert.crt.txt pod-root-cert.crt.txt
openssl x509 -in cluster1/ca-cert.pem -text -noout > ca-cert.crt.txt
openssl x509 -in ./proxy-cert-2.pem -text -noout > pod-cert-chain-ca.crt.txt
diff -s ca-cert.crt.txt pod-cert-chain-ca.crt.txt
openssl verify -CAfile <(cat cluster1/ca-cert.pem cluster1/root-cert.pem) ./proxy-cert-1.pem
echo "certificates sent: $(grep -c 'BEGIN CERTIFICATE' certs.pem)"
test ! -e proxy-cert-4.pem
cmp proxy-cert-3.pem httpbin/root-cert.pem && echo "root is byte-equal to root-cert.pem"
"#
    );
    let d2 = d.to_owned();
    let out = tokio::task::spawn_blocking(move || run_in("bash", &d2, ["-c", &script], &[]))
        .await
        .unwrap()
        .ok();
    assert_eq!(
        out.stdout.matches("are identical").count(),
        2,
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("./proxy-cert-1.pem: OK"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("certificates sent: 3"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("root is byte-equal to root-cert.pem"),
        "{}",
        out.stdout
    );
    drop(server);
    ca1.shutdown().await.unwrap();
    ca2.shutdown().await.unwrap();
}

/// The agent's loop decides and waits on the clock it is given: with the CA server and the agent
/// on one fake clock, the agent sleeps through 9 hours of a 24-hour certificate and renews within
/// the next 3 (at half its life, less up to 10% jitter), by that clock alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renews_by_the_clock_it_is_given() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make(d, &["cluster1"]);
    let mesh = Mesh::new(d);
    let start = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let clock = Arc::new(FakeClock::new(start));
    let ca = mesh.ca_on(&d.join("cluster1"), clock.clone()).await;
    let root = std::fs::read_to_string(d.join("root-cert.pem")).unwrap();
    let agent = mesh.agent_for(
        &ca,
        &root,
        "foo",
        "httpbin",
        &d.join("httpbin"),
        time::Duration::days(2),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let c = clock.clone();
    let task = tokio::spawn(async move {
        agent
            .run(&*c, |leaf| {
                let _ = tx.send(leaf.not_before());
            })
            .await;
    });
    // Issued by the server's (fake) clock, backdated 2 minutes.
    assert_eq!(next(&mut rx).await, start - time::Duration::minutes(2));

    clock.advance(time::Duration::hours(9));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "nothing renewed 9 h into 24");

    clock.advance(time::Duration::hours(3));
    let renewed = next(&mut rx).await;
    assert_eq!(
        renewed,
        start + time::Duration::hours(12) - time::Duration::minutes(2)
    );
    task.abort();
}

async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<time::OffsetDateTime>,
) -> time::OffsetDateTime {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a certificate in time")
        .unwrap()
}
