//! The loopback control plane of `meshca_testkit::kube` against itself: real apiservers at the
//! pinned version, clusters isolated from each other, an apiserver that comes back after a
//! SIGKILL, and metrics that parse. Prints start-up time and memory for the docs.

use meshca_testkit::kube::{ControlPlane, kube_version, request_count};

/// Resident memory of a process in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS line")
}

#[test]
fn clusters_are_real_isolated_and_survive_a_kill() {
    let mut cp = ControlPlane::start(&["mgmt", "cluster1", "cluster2"]);
    println!("control plane started in {:.1?}", cp.startup_time());

    for cluster in ["mgmt", "cluster1", "cluster2"] {
        let version = cp.raw_get(cluster, "/version");
        assert!(
            version.contains(&format!("\"gitVersion\": \"{}\"", kube_version())),
            "{cluster} /version: {version}"
        );
        assert!(cp.server(cluster).starts_with("https://127.0.0.1:"));
    }
    let client = cp.kubectl_ok(["version", "--client", "-o", "json"]);
    assert!(client.contains(&kube_version()), "{client}");

    let namespace_posts = |cp: &ControlPlane| {
        request_count(&cp.raw_get("cluster1", "/metrics"), |l| {
            l.get("resource") == "namespaces" && l.get("verb") == "POST" && l.get("code") == "201"
        })
    };
    // The apiserver creates its own namespaces (default, kube-system, ...) as it starts.
    let posts_before = namespace_posts(&cp);
    assert!(posts_before >= 4.0, "system namespaces: {posts_before}");
    cp.kubectl_ok([
        "--context",
        "cluster1",
        "create",
        "namespace",
        "istio-system",
    ]);
    assert_eq!(namespace_posts(&cp) - posts_before, 1.0);
    cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "istio-system",
        "create",
        "secret",
        "generic",
        "cacerts",
        "--from-literal=ca-cert.pem=not-a-cert",
    ]);
    let got = cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "istio-system",
        "get",
        "secret",
        "cacerts",
        "-o",
        "jsonpath={.data.ca-cert\\.pem}",
    ]);
    assert_eq!(got, "bm90LWEtY2VydA==");

    // Same etcd, other prefix: cluster2 must not see cluster1's objects.
    let out = cp
        .kubectl()
        .args(["--context", "cluster2", "get", "namespace", "istio-system"])
        .output()
        .expect("kubectl starts");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No controller-manager: nothing makes a namespace's default ServiceAccount.
    let sas = cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "istio-system",
        "get",
        "serviceaccounts",
        "-o",
        "name",
    ]);
    assert_eq!(sas.trim(), "");

    for (name, pid) in cp.processes() {
        println!("{name}: pid {pid}, VmRSS {} MiB", rss_kib(pid) / 1024);
    }

    let killed = std::time::Instant::now();
    cp.kill("cluster2");
    assert!(!cp.is_running("cluster2"));
    let down = cp
        .kubectl()
        .args([
            "--context",
            "cluster2",
            "--request-timeout=2s",
            "get",
            "--raw",
            "/readyz",
        ])
        .output()
        .expect("kubectl starts");
    assert!(!down.status.success(), "a killed apiserver still answers");
    cp.restart("cluster2");
    println!("cluster2 apiserver restarted in {:.1?}", killed.elapsed());
    assert_eq!(cp.raw_get("cluster2", "/readyz").trim(), "ok");

    let metrics = cp.raw_get("cluster1", "/metrics");
    let secret_gets = request_count(&metrics, |l| {
        l.get("resource") == "secrets" && l.get("verb") == "GET"
    });
    assert!(secret_gets >= 1.0, "secret GETs: {secret_gets}");
    let total = request_count(&metrics, |_| true);
    assert!(total > 0.0);
    println!("cluster1 apiserver_request_total: {total}");
}
