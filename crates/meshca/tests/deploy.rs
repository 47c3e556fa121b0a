//! The `deploy/` kustomize bases: each renders with kubectl's built-in kustomize; the
//! Deployments' arguments are flags the real `meshca` parses; the bases apply server-side to
//! real API servers (their schemas and admission judge them); the RBAC they grant is exactly
//! what the manager, the CA server and the remote account need, proven with
//! `kubectl auth can-i --as=system:serviceaccount:...`; and the trust manager, run as its own
//! service accounts with only that RBAC, applies seed 001 and keeps it applied.
//!
//! No pod starts here: the control plane has no kubelet, scheduler or controller-manager.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures by design

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use meshca_testkit::kube::{ControlPlane, kubectl_bin, samples};
use meshca_testkit::{SEED_001_POLICY, run_in};
use serde_json::Value;

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

/// The CRD files `meshca trust crds` generates into `deploy/crds/`.
const CRDS: [(&str, &str, &str); 2] = [
    (
        "admin.gloo.solo.io",
        "v2",
        "roottrustpolicies.admin.gloo.solo.io.yaml",
    ),
    (
        "trust.meshca",
        "v1alpha1",
        "roottrustpolicies.trust.meshca.yaml",
    ),
];

const MANAGER: &str = "system:serviceaccount:meshca-system:meshca-trust";
const CA_SERVER: &str = "system:serviceaccount:istio-system:meshca-ca";
const REMOTE: &str = "system:serviceaccount:istio-system:meshca-trust-remote";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A copy of `deploy/` in `dir`. A CRD that `meshca trust crds` has not generated yet is stood in
/// for by a schemaless one, here only, so that the manager base still builds and applies.
fn staged_deploy(dir: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let out = dir.join("deploy");
    copy(&repo().join("deploy"), &out);
    for (group, version, file) in CRDS {
        let path = out.join("crds").join(file);
        if !path.exists() {
            std::fs::write(&path, placeholder_crd(group, version)).unwrap();
        }
    }
    out
}

fn placeholder_crd(group: &str, version: &str) -> String {
    format!(
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: roottrustpolicies.{group}
spec:
  group: {group}
  scope: Namespaced
  names:
    plural: roottrustpolicies
    singular: roottrustpolicy
    kind: RootTrustPolicy
    listKind: RootTrustPolicyList
  versions:
    - name: {version}
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
      subresources:
        status: {{}}
"
    )
}

/// kubectl with no cluster at all: a home and a kubeconfig path of its own that do not exist.
fn kubectl_offline(dir: &Path) -> Command {
    let mut cmd = Command::new(kubectl_bin());
    cmd.env("KUBECONFIG", dir.join("no-kubeconfig"))
        .env("HOME", dir.join("no-home"))
        .current_dir(dir);
    cmd
}

/// The objects a base renders to, as JSON: `kubectl kustomize`, then kubectl's own YAML reader
/// (`label --local` parses offline and prints JSON; the label it adds is ignored).
fn render(dir: &Path, base: &Path) -> Vec<Value> {
    let out = kubectl_offline(dir)
        .arg("kustomize")
        .arg(base)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        base.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = dir.join("rendered.yaml");
    std::fs::write(&yaml, &out.stdout).unwrap();
    let out = kubectl_offline(dir)
        .args(["label", "--local", "-o", "json", "-f"])
        .arg(&yaml)
        .arg("meshca.test/rendered=true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl could not read what {} renders:\n{}",
        base.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the rendered objects"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// The only container of a Deployment.
fn container(deployment: &Value) -> &Value {
    let cs = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(cs.len(), 1, "one container");
    &cs[0]
}

/// Hardened as the restricted Pod Security Standard asks, and then some.
fn assert_hardened(deployment: &Value) {
    let name = &deployment["metadata"]["name"];
    let pod = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod["runAsNonRoot"], true, "{name}: runAsNonRoot");
    assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault", "{name}");
    let c = &container(deployment)["securityContext"];
    assert_eq!(c["readOnlyRootFilesystem"], true, "{name}");
    assert_eq!(c["allowPrivilegeEscalation"], false, "{name}");
    assert_eq!(strings(&c["capabilities"]["drop"]), ["ALL"], "{name}");
    assert_eq!(deployment["spec"]["replicas"], 2, "{name}: two replicas");
}

#[test]
fn every_base_renders_with_what_it_promises() {
    let t = tempfile::tempdir().unwrap();
    let deploy = staged_deploy(t.path());

    let manager = render(t.path(), &deploy.join("manager"));
    for (group, _, _) in CRDS {
        find(
            &manager,
            "CustomResourceDefinition",
            &format!("roottrustpolicies.{group}"),
        );
    }
    let d = find(&manager, "Deployment", "meshca-trust");
    assert_eq!(d["metadata"]["namespace"], "meshca-system");
    assert_hardened(d);
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "meshca-trust");
    let c = container(d);
    assert_eq!(c["image"], "meshca:0.1.0");
    assert_eq!(
        strings(&c["args"]),
        [
            "trust",
            "run",
            "--store",
            "kube",
            "--remote-secrets",
            "istio-system",
            "--leader-elect",
            "--lease-namespace",
            "$(POD_NAMESPACE)"
        ]
    );
    let env = c["env"].as_array().unwrap();
    let pod_ns = env.iter().find(|e| e["name"] == "POD_NAMESPACE").unwrap();
    assert_eq!(
        pod_ns["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    find(&manager, "ServiceAccount", "meshca-trust");
    find(&manager, "Namespace", "meshca-system");
    // Secrets are granted by namespaced Roles only: no ClusterRole of the base names them.
    for role in manager.iter().filter(|o| o["kind"] == "ClusterRole") {
        for rule in role["rules"].as_array().unwrap() {
            assert!(
                !strings(&rule["resources"]).iter().any(|r| r == "secrets"),
                "ClusterRole {} grants secrets",
                role["metadata"]["name"]
            );
        }
    }

    let ca = render(t.path(), &deploy.join("ca"));
    let d = find(&ca, "Deployment", "meshca-ca");
    assert_eq!(d["metadata"]["namespace"], "istio-system");
    assert_hardened(d);
    let c = container(d);
    let args = strings(&c["args"]);
    for (flag, value) in [
        ("--listen", "0.0.0.0:15012"),
        ("--cacerts", "/etc/cacerts"),
        ("--cluster-id", "$(CLUSTER_ID)"),
        ("--metrics-addr", "0.0.0.0:15014"),
        ("--health-addr", "0.0.0.0:15021"),
    ] {
        let at = args.iter().position(|a| a == flag).unwrap_or_else(|| {
            panic!("{flag} missing from {args:?}");
        });
        assert_eq!(args[at + 1], value, "{flag}");
    }
    assert!(args.iter().any(|a| a == "--token-review"));
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["grpc"]["port"], 15021, "{probe}: gRPC health");
    }
    let mount = &c["volumeMounts"].as_array().unwrap()[0];
    assert_eq!(mount["mountPath"], "/etc/cacerts");
    assert_eq!(mount["readOnly"], true);
    let volume = &d["spec"]["template"]["spec"]["volumes"].as_array().unwrap()[0];
    assert_eq!(volume["secret"]["secretName"], "cacerts");
    // CLUSTER_ID comes from the generated ConfigMap, whose hashed name kustomize wrote into the
    // reference.
    let cm = ca.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    assert_eq!(cm["data"]["CLUSTER_ID"], "Kubernetes");
    let cluster_id = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "CLUSTER_ID")
        .unwrap();
    assert_eq!(
        cluster_id["valueFrom"]["configMapKeyRef"]["name"],
        cm["metadata"]["name"]
    );
    let svc = find(&ca, "Service", "meshca-ca");
    let ports: Vec<(i64, String)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap(),
                p["appProtocol"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(ports, [(15012, "grpc".into()), (15014, "http".into())]);
    assert_eq!(
        find(&ca, "PodDisruptionBudget", "meshca-ca")["spec"]["minAvailable"],
        1
    );
    let crb = find(&ca, "ClusterRoleBinding", "meshca-ca-token-review");
    assert_eq!(crb["roleRef"]["name"], "system:auth-delegator");

    let remote = render(t.path(), &deploy.join("remote"));
    let token = find(&remote, "Secret", "meshca-trust-remote-token");
    assert_eq!(token["type"], "kubernetes.io/service-account-token");
    assert_eq!(
        token["metadata"]["annotations"]["kubernetes.io/service-account.name"],
        "meshca-trust-remote"
    );
}

/// The subcommand words of a container's args (before the first flag), and its flags' names.
fn split_args(args: &[String]) -> (Vec<String>, Vec<String>) {
    let sub: Vec<String> = args
        .iter()
        .take_while(|a| !a.starts_with('-'))
        .cloned()
        .collect();
    let flags = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap().to_owned())
        .collect();
    (sub, flags)
}

/// Whether `help` lists `flag` itself, not merely a longer flag it begins
/// (`--token-review` in `--token-review-cluster`).
fn names_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        !help[at + flag.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// Each Deployment's arguments are a command line the real `meshca` accepts: every flag is in
/// its subcommand's `--help`, and the whole line, `$(VAR)`s filled in, parses (clap reads and
/// checks each argument before the final `--help` that stops it).
#[test]
fn deployment_args_parse_with_the_real_cli() {
    let t = tempfile::tempdir().unwrap();
    let deploy = staged_deploy(t.path());
    let mut missing = Vec::new();
    for (base, name, vars) in [
        (
            "manager",
            "meshca-trust",
            [("POD_NAMESPACE", "meshca-system")],
        ),
        ("ca", "meshca-ca", [("CLUSTER_ID", "cluster1")]),
    ] {
        let objects = render(t.path(), &deploy.join(base));
        let args = strings(&container(find(&objects, "Deployment", name))["args"]);
        let (sub, flags) = split_args(&args);
        let help = run_in(
            MESHCA,
            t.path(),
            sub.iter().chain(["--help".into()].iter()),
            &[],
        )
        .ok()
        .stdout;
        for f in &flags {
            if !names_flag(&help, f) {
                missing.push(format!("meshca {}: {f}", sub.join(" ")));
            }
        }
        let filled: Vec<String> = args
            .iter()
            .map(|a| {
                vars.iter()
                    .fold(a.clone(), |a, (k, v)| a.replace(&format!("$({k})"), v))
            })
            .collect();
        let parsed = run_in(
            MESHCA,
            t.path(),
            filled.iter().chain(["--help".into()].iter()),
            &[],
        );
        if missing.is_empty() {
            assert_eq!(
                parsed.code,
                0,
                "meshca {} --help refused the line:\n{}",
                filled.join(" "),
                parsed.stderr
            );
        }
    }
    assert!(
        missing.is_empty(),
        "flags the deploy/ manifests pass that meshca does not have yet: {missing:?}"
    );
}

/// `kubectl auth can-i` as `who`: whether the API server's authorizer allows it.
fn can(cp: &ControlPlane, cluster: &str, who: &str, question: &[&str]) -> bool {
    let out = cp
        .kubectl()
        .args(["--context", cluster, "auth", "can-i", "--as", who])
        .args(question)
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "kubectl auth can-i {question:?} as {who} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Asserts each line of a matrix: (cluster, who, question, allowed).
fn assert_matrix(cp: &ControlPlane, rows: &[(&str, &str, &[&str], bool)]) {
    let wrong: Vec<String> = rows
        .iter()
        .filter(|(cluster, who, q, allowed)| can(cp, cluster, who, q) != *allowed)
        .map(|(cluster, who, q, allowed)| {
            format!(
                "{cluster}: {who} {} should be {}",
                q.join(" "),
                if *allowed { "allowed" } else { "refused" }
            )
        })
        .collect();
    assert!(wrong.is_empty(), "RBAC differs:\n{}", wrong.join("\n"));
}

fn apply(cp: &ControlPlane, cluster: &str, base: &Path) {
    cp.kubectl_ok([
        "--context",
        cluster,
        "apply",
        "--server-side",
        "--field-manager",
        "meshca-deploy-test",
        "-k",
        base.to_str().unwrap(),
    ]);
}

/// A token for a service account, from the TokenRequest API (no token controller runs here).
fn token(cp: &ControlPlane, cluster: &str, namespace: &str, sa: &str) -> String {
    cp.kubectl_ok([
        "--context",
        cluster,
        "-n",
        namespace,
        "create",
        "token",
        sa,
        "--duration",
        "1h",
    ])
    .trim()
    .to_owned()
}

/// The kubeconfig the manager's pod reads (deploy/manager/kubeconfig.yaml), pointed at the
/// test's management API server, its CA and a file holding the manager's token, as the kubelet
/// would provide them in the pod.
fn manager_kubeconfig(cp: &ControlPlane, dir: &Path, manager: &[Value]) -> PathBuf {
    let cm = find(manager, "ConfigMap", "meshca-trust-kubeconfig");
    let mut text = cm["data"]["kubeconfig"].as_str().unwrap().to_owned();
    let token_file = dir.join("manager-token");
    std::fs::write(
        &token_file,
        token(cp, "mgmt", "meshca-system", "meshca-trust"),
    )
    .unwrap();
    for (in_pod, here) in [
        ("https://kubernetes.default.svc", cp.server("mgmt")),
        (
            "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            cp.ca_cert().display().to_string(),
        ),
        (
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            token_file.display().to_string(),
        ),
    ] {
        assert!(text.contains(in_pod), "the pod's kubeconfig names {in_pod}");
        text = text.replace(in_pod, &here);
    }
    let path = dir.join("manager.kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

/// What `istioctl create-remote-secret --name <cluster> --service-account meshca-trust-remote
/// --secret-name meshca-trust-remote-token` leaves in the management cluster: a kubeconfig with
/// the remote account's token. The token comes from the TokenRequest API, as the token controller
/// that would fill meshca-trust-remote-token does not run here.
fn remote_secret(cp: &ControlPlane, dir: &Path, cluster: &str) {
    let ca = base64::engine::general_purpose::STANDARD.encode(cp.ca_pem());
    let kubeconfig = format!(
        "apiVersion: v1
kind: Config
clusters:
  - name: {cluster}
    cluster:
      server: {server}
      certificate-authority-data: {ca}
users:
  - name: {cluster}
    user:
      token: {token}
contexts:
  - name: {cluster}
    context:
      cluster: {cluster}
      user: {cluster}
current-context: {cluster}
",
        server = cp.server(cluster),
        token = token(cp, cluster, "istio-system", "meshca-trust-remote"),
    );
    let file = dir.join(format!("{cluster}.remote.kubeconfig"));
    std::fs::write(&file, kubeconfig).unwrap();
    let name = format!("istio-remote-secret-{cluster}");
    let ns = ["--context", "mgmt", "-n", "istio-system"];
    cp.kubectl_ok(ns.iter().copied().chain([
        "create",
        "secret",
        "generic",
        &name,
        &format!("--from-file={cluster}={}", file.display()),
    ]));
    cp.kubectl_ok(
        ns.iter()
            .copied()
            .chain(["label", "secret", &name, "istio/multiCluster=true"]),
    );
}

/// Seed 001's root, made by meshca and stored with the seed's kubectl command (as the admin),
/// and the seed's policy in `policy.yaml`.
fn seed_root(cp: &ControlPlane, dir: &Path) {
    cp.seed_root(Path::new(MESHCA), dir);
    std::fs::write(dir.join("policy.yaml"), SEED_001_POLICY).unwrap();
}

/// A `meshca trust run` whose stdout lines arrive on a channel; killed on drop.
struct Manager {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Manager {
    fn start(dir: &Path, args: &[&str]) -> Manager {
        let stderr = dir.join("manager.stderr");
        let mut child = Command::new(MESHCA)
            .args(args)
            .current_dir(dir)
            .env("HOME", dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        Manager {
            child,
            lines,
            stderr,
        }
    }

    /// Waits for a stdout line holding `text`, panicking with both streams after `within`.
    fn await_line(&self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(text) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!(
            "no line with {text:?} within {within:?}\nstdout:\n{}\nstderr:\n{}",
            seen.join("\n"),
            self.stderr()
        );
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Watches of one namespace's secrets the API server holds open. The API server's own
/// informers watch secrets cluster-wide, so these are the manager's.
fn secret_watches(cp: &ControlPlane, cluster: &str) -> f64 {
    samples(
        &cp.raw_get(cluster, "/metrics"),
        "apiserver_longrunning_requests",
    )
    .iter()
    .filter(|s| {
        let l = &s.labels;
        l.get("resource") == "secrets" && l.get("verb") == "WATCH" && l.get("scope") == "namespace"
    })
    .map(|s| s.value)
    .sum()
}

fn secret_exists(cp: &ControlPlane, cluster: &str, ns: &str, name: &str) -> bool {
    cp.kubectl()
        .args(["--context", cluster, "-n", ns, "get", "secret", name])
        .output()
        .unwrap()
        .status
        .success()
}

/// One control plane for the whole story (an API server costs ~10 s and ~300 MB here): the bases
/// applied server-side, the RBAC matrix, then the manager at work with nothing but that RBAC.
#[test]
fn bases_apply_to_real_api_servers_and_grant_exactly_what_is_used() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let deploy = staged_deploy(d);
    let cp = ControlPlane::start(&["mgmt", "cluster1", "cluster2"]);
    // What Gloo and Istio would have made: the policies' namespace, istio-system everywhere.
    for ns in ["gloo-mesh", "istio-system"] {
        cp.kubectl_ok(["--context", "mgmt", "create", "namespace", ns]);
    }
    for c in ["cluster1", "cluster2"] {
        cp.kubectl_ok(["--context", c, "create", "namespace", "istio-system"]);
    }

    apply(&cp, "mgmt", &deploy.join("manager"));
    for c in ["cluster1", "cluster2"] {
        apply(&cp, c, &deploy.join("remote"));
    }
    // The CA base through the overlay docs/DEPLOY.md shows, naming the cluster.
    let overlay = d.join("cluster1-ca");
    std::fs::create_dir_all(&overlay).unwrap();
    // Beside the staged deploy/, as docs/DEPLOY.md has it (kustomize takes relative roots only).
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../deploy/ca
configMapGenerator:
  - name: meshca-ca
    namespace: istio-system
    behavior: merge
    literals: [CLUSTER_ID=cluster1]
images:
  - name: meshca
    newName: registry.example.com/meshca
",
    )
    .unwrap();
    apply(&cp, "cluster1", &overlay);

    // Stored as written: the server's view of what was applied.
    let get = |cluster: &str, what: &[&str]| -> Value {
        let mut args = vec!["--context", cluster, "get", "-o", "json"];
        args.extend_from_slice(what);
        serde_json::from_str(&cp.kubectl_ok(args)).unwrap()
    };
    let ca = get(
        "cluster1",
        &["-n", "istio-system", "deployment", "meshca-ca"],
    );
    assert_eq!(container(&ca)["image"], "registry.example.com/meshca:0.1.0");
    let cm_name = container(&ca)["env"][0]["valueFrom"]["configMapKeyRef"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let cm = get("cluster1", &["-n", "istio-system", "configmap", &cm_name]);
    assert_eq!(cm["data"]["CLUSTER_ID"], "cluster1");
    get("cluster1", &["-n", "istio-system", "service", "meshca-ca"]);
    get("cluster1", &["-n", "istio-system", "pdb", "meshca-ca"]);
    get(
        "mgmt",
        &["-n", "meshca-system", "deployment", "meshca-trust"],
    );
    for (group, _, _) in CRDS {
        get("mgmt", &["crd", &format!("roottrustpolicies.{group}")]);
    }
    // A second apply changes nothing and conflicts with nothing.
    apply(&cp, "mgmt", &deploy.join("manager"));

    let yes = true;
    let no = false;
    #[rustfmt::skip]
    let matrix: &[(&str, &str, &[&str], bool)] = &[
        // The manager, in the management cluster.
        ("mgmt", MANAGER, &["get", "secrets", "-n", "gloo-mesh"], yes),
        ("mgmt", MANAGER, &["list", "secrets", "-n", "gloo-mesh"], yes),
        ("mgmt", MANAGER, &["watch", "secrets", "-n", "gloo-mesh"], yes),
        ("mgmt", MANAGER, &["create", "secrets", "-n", "gloo-mesh"], yes),
        ("mgmt", MANAGER, &["update", "secrets/root-trust-policy.root-rotation", "-n", "gloo-mesh"], yes),
        ("mgmt", MANAGER, &["list", "secrets", "-n", "istio-system"], yes),
        ("mgmt", MANAGER, &["watch", "secrets", "-n", "istio-system"], yes),
        ("mgmt", MANAGER, &["list", "roottrustpolicies.admin.gloo.solo.io", "-n", "gloo-mesh"], yes),
        ("mgmt", MANAGER, &["watch", "roottrustpolicies.trust.meshca", "-n", "gloo-mesh"], yes),
        ("mgmt", MANAGER, &["list", "roottrustpolicies.admin.gloo.solo.io", "--all-namespaces"], yes),
        ("mgmt", MANAGER, &["update", "roottrustpolicies.admin.gloo.solo.io", "--subresource", "status", "-n", "gloo-mesh"], yes),
        ("mgmt", MANAGER, &["patch", "roottrustpolicies.trust.meshca", "--subresource", "status", "-n", "gloo-mesh"], yes),
        ("mgmt", MANAGER, &["create", "events", "-n", "gloo-mesh"], yes),
        ("mgmt", MANAGER, &["patch", "events", "-n", "gloo-mesh"], yes),
        ("mgmt", MANAGER, &["create", "events.events.k8s.io", "-n", "gloo-mesh"], yes),
        ("mgmt", MANAGER, &["patch", "events.events.k8s.io", "-n", "gloo-mesh"], yes),
        ("mgmt", MANAGER, &["create", "leases.coordination.k8s.io", "-n", "meshca-system"], yes),
        ("mgmt", MANAGER, &["get", "leases.coordination.k8s.io/meshca-trust", "-n", "meshca-system"], yes),
        ("mgmt", MANAGER, &["update", "leases.coordination.k8s.io/meshca-trust", "-n", "meshca-system"], yes),
        ("mgmt", MANAGER, &["delete", "secrets", "-n", "gloo-mesh"], no),
        ("mgmt", MANAGER, &["patch", "secrets", "-n", "gloo-mesh"], no),
        ("mgmt", MANAGER, &["get", "secrets", "-n", "default"], no),
        ("mgmt", MANAGER, &["get", "secrets", "-n", "kube-system"], no),
        ("mgmt", MANAGER, &["get", "secrets", "-n", "meshca-system"], no),
        ("mgmt", MANAGER, &["list", "secrets", "--all-namespaces"], no),
        ("mgmt", MANAGER, &["create", "secrets", "-n", "istio-system"], no),
        ("mgmt", MANAGER, &["update", "secrets/cacerts", "-n", "istio-system"], no),
        ("mgmt", MANAGER, &["update", "roottrustpolicies.admin.gloo.solo.io", "-n", "gloo-mesh"], no),
        ("mgmt", MANAGER, &["delete", "roottrustpolicies.trust.meshca", "-n", "gloo-mesh"], no),
        ("mgmt", MANAGER, &["update", "roottrustpolicies.trust.meshca", "--subresource", "status", "-n", "default"], no),
        ("mgmt", MANAGER, &["create", "events", "-n", "default"], no),
        ("mgmt", MANAGER, &["get", "leases.coordination.k8s.io/kube-controller-manager", "-n", "meshca-system"], no),
        ("mgmt", MANAGER, &["update", "leases.coordination.k8s.io", "-n", "kube-system"], no),
        ("mgmt", MANAGER, &["delete", "leases.coordination.k8s.io/meshca-trust", "-n", "meshca-system"], no),
        ("mgmt", MANAGER, &["create", "namespaces"], no),
        ("mgmt", MANAGER, &["create", "customresourcedefinitions.apiextensions.k8s.io"], no),
        ("mgmt", MANAGER, &["list", "pods", "-n", "meshca-system"], no),
        // The remote account, in a workload cluster.
        ("cluster1", REMOTE, &["get", "secrets/cacerts", "-n", "istio-system"], yes),
        ("cluster1", REMOTE, &["list", "secrets", "-n", "istio-system"], yes),
        ("cluster1", REMOTE, &["watch", "secrets", "-n", "istio-system"], yes),
        ("cluster1", REMOTE, &["create", "secrets", "-n", "istio-system"], yes),
        ("cluster1", REMOTE, &["update", "secrets/cacerts", "-n", "istio-system"], yes),
        ("cluster1", REMOTE, &["update", "secrets/istio-ca-secret", "-n", "istio-system"], no),
        ("cluster1", REMOTE, &["patch", "secrets/cacerts", "-n", "istio-system"], no),
        ("cluster1", REMOTE, &["delete", "secrets/cacerts", "-n", "istio-system"], no),
        ("cluster1", REMOTE, &["get", "secrets", "-n", "default"], no),
        ("cluster1", REMOTE, &["get", "secrets", "-n", "kube-system"], no),
        ("cluster1", REMOTE, &["list", "secrets", "--all-namespaces"], no),
        ("cluster1", REMOTE, &["create", "namespaces"], no),
        ("cluster1", REMOTE, &["list", "pods", "-n", "istio-system"], no),
        // The CA server, in a workload cluster.
        ("cluster1", CA_SERVER, &["create", "tokenreviews.authentication.k8s.io"], yes),
        ("cluster1", CA_SERVER, &["create", "subjectaccessreviews.authorization.k8s.io"], yes),
        ("cluster1", CA_SERVER, &["get", "secrets/cacerts", "-n", "istio-system"], no),
        ("cluster1", CA_SERVER, &["list", "secrets", "-n", "istio-system"], no),
        ("cluster1", CA_SERVER, &["list", "secrets", "--all-namespaces"], no),
        ("cluster1", CA_SERVER, &["create", "serviceaccounts", "--subresource", "token", "-n", "istio-system"], no),
        ("cluster1", CA_SERVER, &["list", "pods", "-n", "istio-system"], no),
    ];
    assert_matrix(&cp, matrix);

    // The manager at work with only this RBAC: its pod's kubeconfig and token in the management
    // cluster, the remote account's token in an Istio remote secret for cluster1.
    let manager = render(d, &deploy.join("manager"));
    let kubeconfig = manager_kubeconfig(&cp, d, &manager);
    let kubeconfig = kubeconfig.to_str().unwrap();
    remote_secret(&cp, d, "cluster1");
    remote_secret(&cp, d, "cluster2");
    seed_root(&cp, d);
    // The seed's policy is a RootTrustPolicy the API server takes.
    cp.kubectl_ok([
        "--context",
        "mgmt",
        "apply",
        "--server-side",
        "-f",
        d.join("policy.yaml").to_str().unwrap(),
    ]);
    assert!(
        cp.kubectl_ok([
            "--context",
            "mgmt",
            "-n",
            "gloo-mesh",
            "get",
            "roottrustpolicies.admin.gloo.solo.io"
        ])
        .contains("root-trust-policy")
    );

    let kube = [
        "-f",
        "policy.yaml",
        "--store",
        "kube",
        "--kubeconfig",
        kubeconfig,
        "--remote-secrets",
        "istio-system",
    ];
    let apply = run_in(
        MESHCA,
        d,
        ["trust", "apply"].iter().chain(kube.iter()),
        &[("HOME", d.to_str().unwrap())],
    )
    .ok();
    apply.says("cluster1: cacerts created");
    assert!(secret_exists(&cp, "cluster1", "istio-system", "cacerts"));

    // `trust run` as the Deployment runs it: the policy resources, one leader, status written.
    // It watches istio-system and gloo-mesh in the management cluster and istio-system in each
    // workload cluster; a refused watch only falls back to reads, so the test counts the
    // watches each API server holds open.
    assert_eq!(secret_watches(&cp, "mgmt"), 0.0);
    let mut args = vec!["trust", "run"];
    args.extend_from_slice(&kube[2..]);
    args.extend_from_slice(&["--leader-elect", "--lease-namespace", "meshca-system"]);
    let run = Manager::start(d, &args);
    run.await_line("reconciled at", Duration::from_secs(60));
    let ready = || {
        cp.kubectl()
            .args(["--context", "mgmt", "-n", "gloo-mesh", "get"])
            .args(["roottrustpolicies.admin.gloo.solo.io", "root-trust-policy", "-o"])
            .arg("jsonpath={.status.readyClusters} {.status.conditions[?(@.type==\"Ready\")].status}")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready() != "2/2 True" {
        assert!(
            Instant::now() < deadline,
            "status {:?}\n{}",
            ready(),
            run.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(secret_exists(&cp, "cluster2", "istio-system", "cacerts"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while (secret_watches(&cp, "mgmt"), secret_watches(&cp, "cluster1")) != (2.0, 1.0) {
        assert!(
            Instant::now() < deadline,
            "the manager's secret watches: mgmt {} (want 2), cluster1 {} (want 1)\n{}",
            secret_watches(&cp, "mgmt"),
            secret_watches(&cp, "cluster1"),
            run.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let holder = cp.kubectl_ok([
        "--context",
        "mgmt",
        "-n",
        "meshca-system",
        "get",
        "lease",
        "meshca-trust",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert!(!holder.is_empty(), "the lease has a holder");
    // A cacerts deleted in cluster1 is put back: seen through the remote account's watch,
    // created with its rights.
    cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "istio-system",
        "delete",
        "secret",
        "cacerts",
    ]);
    run.await_line("cacerts created", Duration::from_secs(30));
    assert!(secret_exists(&cp, "cluster1", "istio-system", "cacerts"));
}
