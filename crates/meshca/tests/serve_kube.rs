//! `meshca serve` with Kubernetes authentication, through the built binary, against real API
//! servers on loopback: `--kubeconfig`, `--context`, `--token-review`, `--remote-cluster`,
//! `--review-cache-ttl` and `--health-addr`. Workloads are `meshca agent --once` with tokens from
//! the TokenRequest API; each issued leaf is read back with the openssl CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures by design

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshca_testkit::kube::ControlPlane;
use meshca_testkit::{openssl, run_in};

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");
const FAST: &[(&str, &str)] = &[
    ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
    ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
];

/// A running `meshca serve`, killed on drop; its log goes to a file.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start(dir: &Path, args: &[&str]) -> (Serve, String) {
        let log = dir.join("serve.log");
        let mut child = Command::new(MESHCA)
            .current_dir(dir)
            .arg("serve")
            .args(args)
            .env("MESHCA_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let line = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("listening on "))
            .unwrap_or_else(|| {
                panic!(
                    "meshca serve did not start:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        (Serve { child, log }, line)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

/// The address after `label` in the "listening on" line, e.g. `health on `.
fn addr_after(line: &str, label: &str) -> String {
    let rest = &line[line.find(label).unwrap() + label.len()..];
    rest.split([' ', ')']).next().unwrap().to_owned()
}

fn kubectl(cp: &ControlPlane, cluster: &str, args: &[&str]) -> String {
    let mut all = vec!["--context", cluster];
    all.extend_from_slice(args);
    cp.kubectl_ok(all)
}

/// A service account `ns/sa` in `cluster` and a token for it from the TokenRequest API for
/// audience `istio-ca`, as istio-agent's projected token.
fn service_account_token(cp: &ControlPlane, cluster: &str, ns: &str, sa: &str) -> String {
    cp.service_account(cluster, ns, sa);
    cp.token(cluster, ns, sa, "istio-ca")
}

/// Runs `meshca agent --once` with `token` (and `cluster` as its cluster ID); the URI SAN of the
/// leaf it wrote, as openssl reads it, or its stderr when it failed.
fn agent(
    d: &Path,
    ca: &str,
    token: &str,
    cluster: Option<&str>,
    out: &str,
) -> Result<String, String> {
    let token_file = d.join(format!("{out}.token"));
    std::fs::write(&token_file, token).unwrap();
    let mut args = vec![
        "agent".to_owned(),
        "--once".into(),
        "--ca-addr".into(),
        ca.into(),
        "--ca-root".into(),
        "cluster1/root-cert.pem".into(),
        "--token-file".into(),
        token_file.display().to_string(),
        "--output-dir".into(),
        out.into(),
    ];
    if let Some(c) = cluster {
        args.extend(["--cluster-id".into(), c.into()]);
    }
    let run = run_in(MESHCA, d, &args, &[]);
    if run.code != 0 {
        return Err(run.stderr);
    }
    let text = openssl(
        d,
        [
            "x509",
            "-in",
            &format!("{out}/cert-chain.pem"),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    )
    .ok()
    .stdout;
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("URI:"))
        .unwrap_or_default()
        .to_owned())
}

/// `grpc.health.v1.Health/Check` for the server as a whole, spoken by hand over plaintext
/// HTTP/2 (what a kubelet's gRPC probe does): the status number the server answers.
fn health_check(addr: &str) -> u8 {
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    // HPACK literal header fields without indexing, names and values as plain strings.
    let mut headers = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/grpc.health.v1.Health/Check"),
        (":authority", addr),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        headers.push(0u8);
        headers.push(u8::try_from(name.len()).unwrap());
        headers.extend_from_slice(name.as_bytes());
        headers.push(u8::try_from(value.len()).unwrap());
        headers.extend_from_slice(value.as_bytes());
    }
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(frame(0x1, 0x4, 1, &headers)); // HEADERS, END_HEADERS
    // An empty HealthCheckRequest (service ""): uncompressed, length 0. END_STREAM.
    out.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]));
    s.write_all(&out).unwrap();
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).unwrap();
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        match head[3] {
            0x4 if head[4] & 0x1 == 0 => s.write_all(&frame(0x4, 0x1, 0, &[])).unwrap(),
            // DATA on our stream: a gRPC message holding HealthCheckResponse { status = 1 }.
            0x0 if payload.len() >= 7 => {
                assert_eq!(&payload[..5], &[0, 0, 0, 0, 2], "{payload:?}");
                assert_eq!(payload[5], 0x08, "{payload:?}");
                return payload[6];
            }
            0x7 => panic!("GOAWAY: {payload:?}"),
            _ => {}
        }
    }
}

#[test]
fn serve_reviews_tokens_of_its_own_and_remote_clusters_with_their_api_servers() {
    let mut cp = ControlPlane::start(&["cluster1", "cluster2"]);
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    run_in(MESHCA, d, ["certs", "cluster1-cacerts"], FAST).ok();

    // Least-privileged reviewers: a ServiceAccount bound to system:auth-delegator per cluster,
    // its token in a file the kubeconfig names.
    let mut kc = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    let mut users = String::from("users:\n");
    let mut contexts = String::from("contexts:\n");
    for c in ["cluster1", "cluster2"] {
        cp.service_account(c, "meshca-system", "meshca");
        kubectl(
            &cp,
            c,
            &[
                "create",
                "clusterrolebinding",
                "meshca-token-review",
                "--clusterrole=system:auth-delegator",
                "--serviceaccount=meshca-system:meshca",
            ],
        );
        // For the API server's own audience.
        let own = kubectl(
            &cp,
            c,
            &[
                "-n",
                "meshca-system",
                "create",
                "token",
                "meshca",
                "--duration=1h",
            ],
        );
        let file = d.join(format!("{c}-reviewer.token"));
        std::fs::write(&file, own.trim()).unwrap();
        kc += &format!(
            "- name: {c}\n  cluster:\n    server: {}\n    certificate-authority: {}\n",
            cp.server(c),
            cp.ca_cert().display()
        );
        users += &format!("- name: {c}\n  user:\n    tokenFile: {}\n", file.display());
        contexts += &format!("- name: {c}\n  context:\n    cluster: {c}\n    user: {c}\n");
    }
    let kubeconfig = d.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("{kc}{users}{contexts}current-context: cluster2\n"),
    )
    .unwrap();

    let (serve, line) = Serve::start(
        d,
        &[
            "--cacerts",
            "cluster1",
            "--listen",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--context",
            "cluster1",
            "--token-review",
            "--cluster-id",
            "cluster1",
            "--remote-cluster",
            "cluster2=cluster2",
            "--review-cache-ttl",
            "30s",
        ],
    );
    let ca = addr_after(&line, "listening on ");
    assert_eq!(health_check(&addr_after(&line, "health on ")), 1, "SERVING");

    let own = service_account_token(&cp, "cluster1", "foo", "bar");
    let remote = service_account_token(&cp, "cluster2", "remote-ns", "remote-sa");
    let r1 = cp.token_reviews("cluster1");
    for i in 0..3 {
        assert_eq!(
            agent(d, &ca, &own, None, &format!("own{i}")).unwrap(),
            "URI:spiffe://cluster.local/ns/foo/sa/bar"
        );
    }
    assert_eq!(
        cp.token_reviews("cluster1") - r1,
        1.0,
        "one review, then the cache"
    );
    assert_eq!(
        agent(d, &ca, &remote, Some("cluster2"), "remote").unwrap(),
        "URI:spiffe://cluster.local/ns/remote-ns/sa/remote-sa"
    );
    // Cluster2's token presented as cluster1's.
    let err = agent(d, &ca, &remote, None, "confused").unwrap_err();
    assert!(err.contains("request authenticate failure"), "{err}");
    assert!(!err.contains(&remote), "{err}");

    // Cluster2's API server killed: its workloads are refused within the review timeout, with
    // a log line naming it; cluster1's go on.
    // (A token never presented before, so that no remembered review answers for it.)
    let fresh = kubectl(
        &cp,
        "cluster2",
        &[
            "-n",
            "remote-ns",
            "create",
            "token",
            "remote-sa",
            "--audience",
            "istio-ca",
        ],
    );
    let fresh = fresh.trim();
    cp.kill("cluster2");
    let began = Instant::now();
    let err = agent(d, &ca, fresh, Some("cluster2"), "down").unwrap_err();
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "{:?}",
        began.elapsed()
    );
    assert!(err.contains("request authenticate failure"), "{err}");
    let log = serve.log();
    let failed = log
        .lines()
        .find(|l| l.contains("TokenReview failed"))
        .unwrap_or_else(|| panic!("no log line for the failed review:\n{log}"));
    assert!(
        failed.contains(&format!(
            "token review at {} (cluster \"cluster2\")",
            cp.server("cluster2")
        )),
        "{failed}"
    );
    assert!(
        !log.contains(fresh) && !log.contains(&own),
        "a token is in the log"
    );
    let own2 = kubectl(
        &cp,
        "cluster1",
        &[
            "-n",
            "foo",
            "create",
            "token",
            "bar",
            "--audience",
            "istio-ca",
        ],
    );
    assert_eq!(
        agent(d, &ca, own2.trim(), None, "own-after").unwrap(),
        "URI:spiffe://cluster.local/ns/foo/sa/bar"
    );
    assert_eq!(health_check(&addr_after(&line, "health on ")), 1);
}

#[test]
fn serve_refuses_remote_clusters_without_its_own_cluster_id() {
    let t = tempfile::tempdir().unwrap();
    let out = run_in(
        MESHCA,
        t.path(),
        ["serve", "--remote-cluster", "cluster2=cluster2"],
        &[],
    )
    .failed();
    assert!(out.stderr.contains("--cluster-id"), "{}", out.stderr);
    let out = run_in(
        MESHCA,
        t.path(),
        ["serve", "--k8s-api-server", "https://127.0.0.1:6443"],
        &[],
    )
    .failed();
    assert!(
        out.stderr
            .contains("unexpected argument '--k8s-api-server'"),
        "{}",
        out.stderr
    );
}
