//! A real Kubernetes control plane on loopback for tests: one etcd and one kube-apiserver per
//! named cluster, built from source by `scripts/peers` at the versions pinned in `interop/`, with
//! a kubeconfig that has one context per cluster, and the built kubectl to drive them.
//!
//! What it is: the genuine API servers with RBAC, admission, service-account token signing (a
//! key pair of its own per cluster, so a token of one cluster is not valid in another), TLS
//! serving certificates and client-certificate authentication from a test CA. Clusters share the
//! etcd but not its keys: each apiserver stores under `/registry-<cluster>`.
//!
//! What it is not: there is no kubelet, controller-manager or scheduler. Nothing runs pods,
//! nothing creates the `default` ServiceAccount of a namespace, nothing garbage-collects or
//! signs CSRs. A test that needs a ServiceAccount creates it; the TokenRequest API works, as it
//! is served by the apiserver itself.
//!
//! Every listener is bound to 127.0.0.1 explicitly. Processes and the temp dir go away on drop,
//! which also runs when a test panics; watchdog shells kill the processes and remove the dir if
//! the test process itself is killed before it can drop. `MESHCA_KEEP_CONTROL_PLANE=1` keeps the
//! dir (logs, certificates) after a normal drop.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a server may take to become ready. Generous because several apiservers start at
/// once on a 2-core machine next to a compiling workspace.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a port that was free when picked can turn out taken before start-up gives up.
const PORT_ATTEMPTS: usize = 3;

/// The repository root: the testkit lives at `<repo>/crates/meshca-testkit`.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory `scripts/peers` builds etcd, kube-apiserver and kubectl into, after running it
/// once per process so they exist. Panics with the script's output if it fails.
pub fn peers_dir() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = repo_root().join("scripts/peers");
        let build = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !build.status.success() {
            return Err(format!(
                "{} failed ({}):\n{}{}",
                script.display(),
                build.status,
                String::from_utf8_lossy(&build.stdout),
                String::from_utf8_lossy(&build.stderr)
            ));
        }
        let print = Command::new("bash")
            .arg(&script)
            .arg("--print-dir")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let dir = String::from_utf8_lossy(&print.stdout).trim().to_owned();
        if !print.status.success() || dir.is_empty() {
            return Err(format!(
                "{} --print-dir failed: {}",
                script.display(),
                String::from_utf8_lossy(&print.stderr)
            ));
        }
        Ok(PathBuf::from(dir))
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The version a wrapper go.mod in `interop/` requires for `module`; the go.mod files are the one
/// place the peers' versions are written.
pub(crate) fn required_version(wrapper: &str, module: &str) -> String {
    let path = repo_root().join("interop").join(wrapper).join("go.mod");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter_map(|line| {
            let line = line.trim().strip_prefix("require ").unwrap_or(line.trim());
            let mut words = line.split_whitespace();
            (words.next() == Some(module))
                .then(|| words.next())
                .flatten()
                .filter(|v| v.starts_with('v'))
        })
        .next()
        .unwrap_or_else(|| panic!("{} does not require {module}", path.display()))
        .to_owned()
}

/// The Kubernetes version the peers are built at, e.g. `v1.37.2` (from `interop/kube/go.mod`).
pub fn kube_version() -> String {
    required_version("kube", "k8s.io/kubernetes")
}

/// The etcd version the peers are built at, e.g. `v3.7.3` (from `interop/etcd/go.mod`).
pub fn etcd_version() -> String {
    required_version("etcd", "go.etcd.io/etcd/server/v3")
}

/// The built `kube-apiserver`.
pub fn kube_apiserver_bin() -> PathBuf {
    peers_dir()
        .join(format!("kubernetes-{}", kube_version()))
        .join("kube-apiserver")
}

/// The built `kubectl`.
pub fn kubectl_bin() -> PathBuf {
    peers_dir()
        .join(format!("kubernetes-{}", kube_version()))
        .join("kubectl")
}

/// The built `etcd`.
pub fn etcd_bin() -> PathBuf {
    peers_dir()
        .join(format!("etcd-{}", etcd_version()))
        .join("etcd")
}

/// A shell that runs a clean-up command once the test process is gone without having dropped
/// what it guards (SIGKILL, a harness timeout): its `read` returns only at end of input, which
/// comes when the last holder of the pipe's write end, the test process, has gone away.
pub(crate) struct Watchdog {
    child: Child,
    // Held only so that its closing wakes the shell.
    _stdin: ChildStdin,
}

impl Watchdog {
    /// Arms `script`, which gets `arg` as `$1` so no path or pid needs shell quoting.
    pub(crate) fn arm(script: &str, arg: &std::ffi::OsStr) -> Watchdog {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _ignored; {script}"))
            .arg("sh")
            .arg(arg)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("watchdog shell starts");
        let stdin = child.stdin.take().expect("watchdog stdin is piped");
        Watchdog {
            child,
            _stdin: stdin,
        }
    }

    /// Ends the watchdog without running its command.
    pub(crate) fn disarm(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server process with its log file and the watchdog that kills it if the test process dies
/// without dropping it.
pub(crate) struct Proc {
    child: Child,
    watchdog: Watchdog,
    log: PathBuf,
}

impl Proc {
    /// Starts `program` with its stdout and stderr appended to `log`.
    fn spawn(program: &Path, args: &[OsString], cwd: &Path, log: &Path) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(cwd);
        Proc::start(cmd, log)
    }

    /// Starts `cmd` (its program, arguments, folder and environment as set) with stdin closed
    /// and its stdout and stderr appended to `log`.
    pub(crate) fn start(mut cmd: Command, log: &Path) -> Proc {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file opens");
        let err = out.try_clone().expect("log file handle clones");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        let watchdog = Watchdog::arm(
            r#"kill -9 "$1" 2>/dev/null"#,
            child.id().to_string().as_ref(),
        );
        Proc {
            child,
            watchdog,
            log: log.to_owned(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited, and how.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("process status can be read")
    }

    /// SIGKILLs the process and reaps it, after the watchdog, so the watchdog can never act on a
    /// reused pid.
    pub(crate) fn kill(mut self) {
        self.watchdog.disarm();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

/// The last lines of a log, for failure messages.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!(
        "--- last lines of {} ---\n{}",
        log.display(),
        lines[from..].join("\n")
    )
}

/// Ports that were free on 127.0.0.1 a moment ago. The listeners are held until all are
/// picked so that one call never hands out the same port twice.
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound address").port())
        .collect()
}

/// One kube-apiserver and what it needs to be started again the same way.
struct Cluster {
    name: String,
    port: u16,
    issuer: String,
    sa_signing_key: PathBuf,
    sa_public_key: PathBuf,
    proc: Option<Proc>,
}

/// A running etcd plus one kube-apiserver per cluster, on loopback. See the module docs.
pub struct ControlPlane {
    dir: PathBuf,
    dir_watchdog: Option<Watchdog>,
    kubeconfig: PathBuf,
    etcd: Option<Proc>,
    etcd_client_port: u16,
    /// etcd's flags as first started, for a restart on the same ports and data.
    etcd_args: Vec<OsString>,
    clusters: Vec<Cluster>,
    startup: Duration,
}

impl ControlPlane {
    /// Starts one etcd and one kube-apiserver per cluster (started in parallel), and waits until
    /// every apiserver's `/readyz` answers `ok`. Panics with the tail of the failing server's log
    /// if one does not come up.
    pub fn start(clusters: &[&str]) -> ControlPlane {
        let began = Instant::now();
        assert!(!clusters.is_empty(), "a control plane needs a cluster");
        for c in clusters {
            assert!(
                !c.is_empty()
                    && c.chars()
                        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-'),
                "cluster name {c:?}: use lowercase letters, digits and '-' (it is a DNS label)"
            );
        }
        let (etcd_bin, apiserver_bin) = (etcd_bin(), kube_apiserver_bin());
        let dir = make_temp_dir();
        // The pause lets the process watchdogs kill etcd before its data goes.
        let dir_watchdog = Watchdog::arm(r#"sleep 1; rm -rf -- "$1""#, dir.as_os_str());
        let mut cp = ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            dir_watchdog: Some(dir_watchdog),
            dir,
            etcd: None,
            etcd_client_port: 0,
            etcd_args: Vec::new(),
            clusters: Vec::new(),
            startup: Duration::ZERO,
        };
        cp.write_pki(clusters);
        cp.start_etcd(&etcd_bin);
        for c in &mut cp.clusters {
            c.port = free_ports(1)[0];
        }
        cp.write_kubeconfig();
        for i in 0..cp.clusters.len() {
            cp.spawn_apiserver(&apiserver_bin, i);
        }
        for i in 0..cp.clusters.len() {
            cp.await_apiserver(&apiserver_bin, i, true);
        }
        cp.startup = began.elapsed();
        cp
    }

    /// Three clusters as Gloo and Istio leave them: `mgmt` with the `gloo-mesh` namespace,
    /// `cluster1` and `cluster2` with `istio-system`.
    pub fn mesh() -> ControlPlane {
        let cp = ControlPlane::start(&["mgmt", "cluster1", "cluster2"]);
        cp.kubectl_ok(["--context", "mgmt", "create", "namespace", "gloo-mesh"]);
        for c in ["cluster1", "cluster2"] {
            cp.kubectl_ok(["--context", c, "create", "namespace", "istio-system"]);
        }
        cp
    }

    /// Runs `sh -ec script` in `dir` with the seeds' environment: `KUBECONFIG`, the contexts
    /// `$MGMT_CONTEXT`, `$REMOTE_CONTEXT1`, `$REMOTE_CONTEXT2`, and the built kubectl first on the
    /// `PATH`.
    pub fn seed_shell(&self, dir: &Path, script: &str) -> crate::Run {
        let bin = dir.join("bin");
        if !bin.exists() {
            fs::create_dir_all(&bin).expect("a bin folder for kubectl");
            std::os::unix::fs::symlink(kubectl_bin(), bin.join("kubectl"))
                .expect("kubectl linked into the bin folder");
        }
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let kubeconfig = self.kubeconfig.display().to_string();
        let home = dir.join("home").display().to_string();
        crate::run_in(
            "sh",
            dir,
            ["-ec", script],
            &[
                ("PATH", &path),
                ("KUBECONFIG", &kubeconfig),
                ("HOME", &home),
                ("MGMT_CONTEXT", "mgmt"),
                ("REMOTE_CONTEXT1", "cluster1"),
                ("REMOTE_CONTEXT2", "cluster2"),
            ],
        )
    }

    /// Seed 001 step 1, as written: a root made by `meshca certs root-ca` (the Makefile's
    /// stand-in, ECDSA to keep tests fast) in `dir`, copied into the four names and stored in
    /// `gloo-mesh/my-root-trust-policy.gloo-mesh` with the seed's own kubectl command.
    pub fn seed_root(&self, meshca: &Path, dir: &Path) {
        crate::run_in(
            meshca,
            dir,
            ["certs", "root-ca"],
            &[
                ("ROOTCA_CN", "Solo Root CA"),
                ("ROOTCA_ORG", "Istio"),
                ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
            ],
        )
        .ok();
        self.seed_shell(
            dir,
            "cp root-cert.pem ca-cert.pem
cp root-key.pem ca-key.pem
cp root-cert.pem cert-chain.pem
kubectl --context $MGMT_CONTEXT -n gloo-mesh create secret generic my-root-trust-policy.gloo-mesh \\
--from-file=./ca-cert.pem \\
--from-file=./ca-key.pem \\
--from-file=./cert-chain.pem \\
--from-file=./root-cert.pem",
        )
        .ok();
    }

    /// Creates namespace `ns` (if missing) and service account `sa` in `cluster`. (No
    /// controller-manager runs: nothing else makes service accounts.)
    pub fn service_account(&self, cluster: &str, ns: &str, sa: &str) {
        let namespaces = self.kubectl_ok(["--context", cluster, "get", "namespaces", "-o", "name"]);
        if !namespaces.lines().any(|l| l == format!("namespace/{ns}")) {
            self.kubectl_ok(["--context", cluster, "create", "namespace", ns]);
        }
        self.kubectl_ok([
            "--context",
            cluster,
            "-n",
            ns,
            "create",
            "serviceaccount",
            sa,
        ]);
    }

    /// A token for service account `ns/sa` of `cluster` from the TokenRequest API, for
    /// `audience` (istio-agent's projected token asks for `istio-ca`).
    pub fn token(&self, cluster: &str, ns: &str, sa: &str, audience: &str) -> String {
        self.kubectl_ok([
            "--context",
            cluster,
            "-n",
            ns,
            "create",
            "token",
            sa,
            "--audience",
            audience,
        ])
        .trim()
        .to_owned()
    }

    /// The TokenReview `POST`s `cluster`'s API server has counted.
    pub fn token_reviews(&self, cluster: &str) -> f64 {
        request_count(&self.raw_get(cluster, "/metrics"), |l| {
            l.get("resource") == "tokenreviews" && l.get("verb") == "POST"
        })
    }

    /// How long [`ControlPlane::start`] took, certificates to every `/readyz`.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The kubeconfig: one context per cluster, each named like the cluster and using user
    /// `admin` (a client certificate in group `system:masters`), the server's CA embedded.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver URL of a cluster, `https://127.0.0.1:<port>`.
    pub fn server(&self, cluster: &str) -> String {
        format!("https://127.0.0.1:{}", self.cluster(cluster).port)
    }

    /// The built kubectl with our kubeconfig, and a home of its own so that it reads and writes
    /// nothing of the user's (`~/.kube/cache`, `kuberc`). Pass `--context <cluster>`.
    pub fn kubectl(&self) -> Command {
        let home = self.dir.join("kubectl-home");
        let mut cmd = Command::new(kubectl_bin());
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", home)
            .current_dir(&self.dir);
        cmd
    }

    /// Runs kubectl with `args`, panicking with its output unless it succeeds; returns stdout.
    pub fn kubectl_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.kubectl().args(&args).output().expect("kubectl starts");
        assert!(
            out.status.success(),
            "kubectl {:?} failed ({}):\n{}{}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get --raw <path>` against a cluster, e.g. `/metrics` or `/version`.
    pub fn raw_get(&self, cluster: &str, path: &str) -> String {
        self.kubectl_ok(["--context", cluster, "get", "--raw", path])
    }

    /// SIGKILLs a cluster's kube-apiserver and waits until it is gone. Its port is not held
    /// meanwhile: should another process take it, [`ControlPlane::restart`] panics saying so.
    pub fn kill(&mut self, cluster: &str) {
        let i = self.index(cluster);
        if let Some(p) = self.clusters[i].proc.take() {
            p.kill();
        }
    }

    /// Starts a killed cluster's kube-apiserver again with the same flags and port, and waits for
    /// its `/readyz`. Panics if it was still running.
    pub fn restart(&mut self, cluster: &str) {
        let i = self.index(cluster);
        assert!(
            self.clusters[i].proc.is_none(),
            "{cluster}'s apiserver is still running; kill it first"
        );
        let bin = kube_apiserver_bin();
        self.spawn_apiserver(&bin, i);
        self.await_apiserver(&bin, i, false);
    }

    /// SIGKILLs etcd, the store of every cluster, and waits until it is gone. The API servers
    /// keep running and fail what needs etcd until [`ControlPlane::restart_etcd`].
    pub fn kill_etcd(&mut self) {
        if let Some(p) = self.etcd.take() {
            p.kill();
        }
    }

    /// Starts a killed etcd again with the same flags, ports and data folder, and waits until
    /// it is healthy and every running API server answers `/readyz` again. Panics if etcd was
    /// still running or does not come back.
    pub fn restart_etcd(&mut self) {
        assert!(self.etcd.is_none(), "etcd is still running; kill it first");
        let log = self.dir.join("etcd.log");
        let mut proc = Proc::spawn(&etcd_bin(), &self.etcd_args, &self.dir, &log);
        let deadline = Instant::now() + READY_TIMEOUT;
        while !etcd_healthy(self.etcd_client_port) {
            if let Some(status) = proc.exited() {
                let tail = proc.log_tail();
                proc.kill();
                panic!("etcd exited ({status}) when restarted\n{tail}");
            }
            if Instant::now() > deadline {
                let tail = proc.log_tail();
                proc.kill();
                panic!("restarted etcd not healthy after {READY_TIMEOUT:?}\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.etcd = Some(proc);
        for i in 0..self.clusters.len() {
            if self.clusters[i].proc.is_some()
                && let Err(tail) = self.wait_ready(i)
            {
                panic!(
                    "kube-apiserver of {} not ready after etcd's restart\n{tail}",
                    self.clusters[i].name
                );
            }
        }
    }

    /// Whether etcd is running (not killed).
    pub fn etcd_is_running(&self) -> bool {
        self.etcd.is_some()
    }

    /// Whether a cluster's kube-apiserver is running (not killed).
    pub fn is_running(&self, cluster: &str) -> bool {
        self.cluster(cluster).proc.is_some()
    }

    /// The temp dir holding certificates, keys, the kubeconfig, etcd's data and the logs
    /// (`etcd.log`, `kube-apiserver-<cluster>.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log file of a cluster's kube-apiserver.
    pub fn apiserver_log(&self, cluster: &str) -> PathBuf {
        self.dir.join(format!("kube-apiserver-{cluster}.log"))
    }

    /// The test CA (PEM) that issued the apiservers' serving certificates and the admin client
    /// certificate, and that the apiservers trust for client certificates.
    pub fn ca_pem(&self) -> String {
        fs::read_to_string(self.ca_cert()).expect("CA certificate reads")
    }

    /// Path of the test CA certificate (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// Path of the test CA's private key (PEM), to issue more client certificates.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("pki/ca.key")
    }

    /// Path of the admin client certificate (CN `admin`, O `system:masters`).
    pub fn admin_cert(&self) -> PathBuf {
        self.dir.join("pki/admin.crt")
    }

    /// Path of the admin client key.
    pub fn admin_key(&self) -> PathBuf {
        self.dir.join("pki/admin.key")
    }

    /// The service-account token issuer of a cluster, `https://<cluster>.meshca.test`; also its
    /// API audience.
    pub fn issuer(&self, cluster: &str) -> &str {
        &self.cluster(cluster).issuer
    }

    /// Path of the RSA key a cluster signs service-account tokens with.
    pub fn sa_signing_key(&self, cluster: &str) -> &Path {
        &self.cluster(cluster).sa_signing_key
    }

    /// Path of the public key that verifies a cluster's service-account tokens.
    pub fn sa_public_key(&self, cluster: &str) -> &Path {
        &self.cluster(cluster).sa_public_key
    }

    /// Every running process with a name (`etcd`, `kube-apiserver/<cluster>`) and its pid.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        if let Some(p) = &self.etcd {
            out.push(("etcd".to_owned(), p.pid()));
        }
        for c in &self.clusters {
            if let Some(p) = &c.proc {
                out.push((format!("kube-apiserver/{}", c.name), p.pid()));
            }
        }
        out
    }

    /// The etcd client URL, `http://127.0.0.1:<port>`.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_client_port)
    }

    fn index(&self, cluster: &str) -> usize {
        self.clusters
            .iter()
            .position(|c| c.name == cluster)
            .unwrap_or_else(|| panic!("no cluster {cluster:?} in this control plane"))
    }

    fn cluster(&self, cluster: &str) -> &Cluster {
        &self.clusters[self.index(cluster)]
    }

    /// The test CA, the serving certificate, the admin client certificate, and a service-account
    /// key pair per cluster, all made with the openssl CLI.
    fn write_pki(&mut self, clusters: &[&str]) {
        let pki = self.dir.join("pki");
        fs::create_dir(&pki).expect("pki dir");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            &pki,
            &[
                &[
                    "req", "-x509", "-noenc", "-days", "7", "-keyout", "ca.key", "-out", "ca.crt",
                ],
                &ec[..],
                &["-subj", "/CN=meshca-testkit kube CA"],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ],
        );
        // One serving certificate fits every apiserver: they all answer as 127.0.0.1.
        openssl(
            &pki,
            &[
                &[
                    "req", "-x509", "-CA", "ca.crt", "-CAkey", "ca.key", "-noenc", "-days", "7",
                ],
                &["-keyout", "serving.key", "-out", "serving.crt"],
                &ec[..],
                &["-subj", "/CN=kube-apiserver"],
                &["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                &["-addext", "basicConstraints=critical,CA:FALSE"],
                &["-addext", "keyUsage=critical,digitalSignature"],
                &["-addext", "extendedKeyUsage=serverAuth"],
            ],
        );
        openssl(
            &pki,
            &[
                &[
                    "req", "-x509", "-CA", "ca.crt", "-CAkey", "ca.key", "-noenc", "-days", "7",
                ],
                &["-keyout", "admin.key", "-out", "admin.crt"],
                &ec[..],
                &["-subj", "/O=system:masters/CN=admin"],
                &["-addext", "basicConstraints=critical,CA:FALSE"],
                &["-addext", "keyUsage=critical,digitalSignature"],
                &["-addext", "extendedKeyUsage=clientAuth"],
            ],
        );
        for name in clusters {
            let key = format!("sa-{name}.key");
            let public = format!("sa-{name}.pub");
            // RSA because it is what clusters sign tokens with by default (RS256).
            openssl(
                &pki,
                &[&[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                    &key,
                ]],
            );
            openssl(&pki, &[&["pkey", "-in", &key, "-pubout", "-out", &public]]);
            self.clusters.push(Cluster {
                name: (*name).to_owned(),
                port: 0,
                issuer: format!("https://{name}.meshca.test"),
                sa_signing_key: pki.join(key),
                sa_public_key: pki.join(public),
                proc: None,
            });
        }
    }

    fn start_etcd(&mut self, bin: &Path) {
        let log = self.dir.join("etcd.log");
        for attempt in 1..=PORT_ATTEMPTS {
            let ports = free_ports(2);
            let (client, peer) = (
                format!("http://127.0.0.1:{}", ports[0]),
                format!("http://127.0.0.1:{}", ports[1]),
            );
            let data = self.dir.join("etcd-data");
            let _ = fs::remove_dir_all(&data);
            let args: Vec<OsString> = vec![
                "--name=default".into(),
                arg("--data-dir=", &data),
                format!("--listen-client-urls={client}").into(),
                format!("--advertise-client-urls={client}").into(),
                format!("--listen-peer-urls={peer}").into(),
                format!("--initial-advertise-peer-urls={peer}").into(),
                format!("--initial-cluster=default={peer}").into(),
                "--initial-cluster-state=new".into(),
                // Metrics and health are served on the client URL; an empty list adds no listener.
                "--listen-metrics-urls=".into(),
                // The data lives as long as one test; skipping fsync saves seconds per test on
                // slow disks and loses nothing that outlives a crash anyway.
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ];
            let mut proc = Proc::spawn(bin, &args, &self.dir, &log);
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if etcd_healthy(ports[0]) {
                    self.etcd = Some(proc);
                    self.etcd_client_port = ports[0];
                    self.etcd_args = args;
                    return;
                }
                if let Some(status) = proc.exited() {
                    let tail = proc.log_tail();
                    proc.kill();
                    if attempt < PORT_ATTEMPTS && tail.contains("address already in use") {
                        break;
                    }
                    panic!("etcd exited ({status}) before it was healthy\n{tail}");
                }
                if Instant::now() > deadline {
                    let tail = proc.log_tail();
                    proc.kill();
                    panic!("etcd not healthy after {READY_TIMEOUT:?}\n{tail}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn apiserver_args(&self, i: usize) -> Vec<OsString> {
        let c = &self.clusters[i];
        let pki = self.dir.join("pki");
        let cert_dir = self.dir.join(format!("apiserver-{}", c.name));
        vec![
            format!("--etcd-servers={}", self.etcd_url()).into(),
            format!("--etcd-prefix=/registry-{}", c.name).into(),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // The endpoint reconciler refuses a loopback advertise address; it only publishes
            // the `kubernetes` Service's endpoints for pods, and there are no pods here.
            "--endpoint-reconciler-type=none".into(),
            format!("--secure-port={}", c.port).into(),
            // Its default, /var/run/kubernetes, is outside the test's dir.
            arg("--cert-dir=", &cert_dir),
            arg("--tls-cert-file=", &pki.join("serving.crt")),
            arg("--tls-private-key-file=", &pki.join("serving.key")),
            arg("--client-ca-file=", &pki.join("ca.crt")),
            "--authorization-mode=Node,RBAC".into(),
            format!("--service-account-issuer={}", c.issuer).into(),
            format!("--api-audiences={}", c.issuer).into(),
            arg("--service-account-signing-key-file=", &c.sa_signing_key),
            arg("--service-account-key-file=", &c.sa_public_key),
            // Only allocated from, never routed: no address of it is ever contacted.
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            // Flow control keeps a config of its own in etcd and rebalances it continually;
            // nothing here needs fairness between tenants, and start-up is faster without it.
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
        ]
    }

    fn spawn_apiserver(&mut self, bin: &Path, i: usize) {
        let args = self.apiserver_args(i);
        let cert_dir = self
            .dir
            .join(format!("apiserver-{}", self.clusters[i].name));
        fs::create_dir_all(&cert_dir).expect("apiserver cert dir");
        let log = self.apiserver_log(&self.clusters[i].name);
        self.clusters[i].proc = Some(Proc::spawn(bin, &args, &self.dir, &log));
    }

    /// Waits for a cluster's `/readyz`. At first start a port taken in the meantime is replaced
    /// by another (and the kubeconfig rewritten); at restart the port must stay the same.
    fn await_apiserver(&mut self, bin: &Path, i: usize, may_move: bool) {
        let mut attempt = 1;
        loop {
            match self.wait_ready(i) {
                Ok(()) => return,
                Err(tail) => {
                    let name = self.clusters[i].name.clone();
                    if let Some(p) = self.clusters[i].proc.take() {
                        p.kill();
                    }
                    if may_move
                        && attempt < PORT_ATTEMPTS
                        && tail.contains("address already in use")
                    {
                        attempt += 1;
                        self.clusters[i].port = free_ports(1)[0];
                        self.write_kubeconfig();
                        self.spawn_apiserver(bin, i);
                        continue;
                    }
                    panic!("kube-apiserver of {name} did not become ready\n{tail}");
                }
            }
        }
    }

    /// Polls `/readyz` until it says `ok`; on exit or timeout returns the log tail.
    fn wait_ready(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let (name, port) = (self.clusters[i].name.clone(), self.clusters[i].port);
        let mut last = String::new();
        loop {
            let proc = self.clusters[i].proc.as_mut().expect("apiserver spawned");
            if let Some(status) = proc.exited() {
                return Err(format!("exited with {status}\n{}", proc.log_tail()));
            }
            // A kubectl run costs far more than a connect, so it waits for the listener.
            if TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                let out = self
                    .kubectl()
                    .args(["--context", &name, "--request-timeout=5s"])
                    .args(["get", "--raw", "/readyz"])
                    .output()
                    .expect("kubectl starts");
                if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                    return Ok(());
                }
                last = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if Instant::now() > deadline {
                let proc = self.clusters[i].proc.as_ref().expect("apiserver spawned");
                return Err(format!(
                    "not ready after {READY_TIMEOUT:?}; last /readyz: {last}\n{}",
                    proc.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn write_kubeconfig(&self) {
        let pki = self.dir.join("pki");
        let read = |f: &str| fs::read(pki.join(f)).expect("pki file reads");
        let (ca, cert, key) = (
            base64(&read("ca.crt")),
            base64(&read("admin.crt")),
            base64(&read("admin.key")),
        );
        let mut y = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
        for c in &self.clusters {
            y += &format!(
                "- name: {n}\n  cluster:\n    server: https://127.0.0.1:{p}\n    certificate-authority-data: {ca}\n",
                n = c.name,
                p = c.port
            );
        }
        y += "users:\n- name: admin\n  user:\n";
        y += &format!("    client-certificate-data: {cert}\n    client-key-data: {key}\n");
        y += "contexts:\n";
        for c in &self.clusters {
            y += &format!(
                "- name: {n}\n  context:\n    cluster: {n}\n    user: admin\n",
                n = c.name
            );
        }
        y += &format!("current-context: {}\n", self.clusters[0].name);
        // Written whole then renamed, so a kubectl started meanwhile never reads half a file.
        let tmp = self.dir.join("kubeconfig.tmp");
        let mut f = File::create(&tmp).expect("kubeconfig creates");
        f.write_all(y.as_bytes()).expect("kubeconfig writes");
        drop(f);
        fs::rename(&tmp, &self.kubeconfig).expect("kubeconfig renames");
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Apiservers first: killed after etcd they would log a burst of retries.
        for c in &mut self.clusters {
            if let Some(p) = c.proc.take() {
                p.kill();
            }
        }
        if let Some(p) = self.etcd.take() {
            p.kill();
        }
        if let Some(w) = self.dir_watchdog.take() {
            w.disarm();
        }
        if std::env::var_os("MESHCA_KEEP_CONTROL_PLANE").is_some() {
            eprintln!("kept control plane dir {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `--flag=<path>` without a lossy conversion of the path.
fn arg(flag: &str, path: &Path) -> OsString {
    let mut s = OsString::from(flag);
    s.push(path);
    s
}

/// Runs openssl in `dir` with the concatenated argument groups; panics with its stderr on
/// failure.
fn openssl(dir: &Path, groups: &[&[&str]]) {
    let args: Vec<&str> = groups.iter().flat_map(|g| g.iter().copied()).collect();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh dir under the system temp dir, unique across processes and within one.
fn make_temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    loop {
        let dir = std::env::temp_dir().join(format!(
            "meshca-kube-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
}

/// etcd's `/health` over plain HTTP/1.0, which std can speak without a client library.
fn etcd_healthy(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    (body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"))
        && body.contains("\"health\":\"true\"")
}

/// Standard base64 with padding, for the kubeconfig's embedded PEM data.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The labels of one Prometheus sample. A label that is absent reads as `""`, as in PromQL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Labels(pub BTreeMap<String, String>);

impl Labels {
    /// The value of a label, `""` when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map(String::as_str).unwrap_or("")
    }
}

/// One sample of the Prometheus text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// metric name, e.g. `apiserver_request_total`
    pub name: String,
    /// its labels
    pub labels: Labels,
    /// its value
    pub value: f64,
}

/// Every sample of the metric `name` in a Prometheus text exposition. Panics on a line it
/// cannot parse, so a change of format fails loudly instead of counting zero.
pub fn samples(metrics_text: &str, name: &str) -> Vec<Sample> {
    metrics_text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| parse_sample(l).unwrap_or_else(|e| panic!("metrics line {l:?}: {e}")))
        .filter(|s| s.name == name)
        .collect()
}

/// The sum of `apiserver_request_total` over the samples whose labels pass `filter`, e.g.
/// `|l| l.get("resource") == "secrets" && l.get("verb") == "GET"`.
pub fn request_count(metrics_text: &str, filter: impl Fn(&Labels) -> bool) -> f64 {
    samples(metrics_text, "apiserver_request_total")
        .iter()
        .filter(|s| filter(&s.labels))
        .map(|s| s.value)
        .sum()
}

/// Parses `name{label="value",...} value [timestamp]`, with the format's escapes in label
/// values (`\\`, `\"`, `\n`).
fn parse_sample(line: &str) -> Result<Sample, String> {
    let line = line.trim();
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end = loop {
            while chars
                .next_if(|(_, c)| c.is_whitespace() || *c == ',')
                .is_some()
            {}
            let Some(&(start, c)) = chars.peek() else {
                return Err("unterminated labels".into());
            };
            if c == '}' {
                break start + 1;
            }
            let mut key = String::new();
            while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
                key.push(c);
            }
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            if chars.next().map(|(_, c)| c) != Some('=') {
                return Err(format!("label {key}: no '='"));
            }
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key}: value not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    None => return Err(format!("label {key}: unterminated value")),
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(c @ ('\\' | '"')) => value.push(c),
                        other => return Err(format!("label {key}: bad escape {other:?}")),
                    },
                    Some(c) => value.push(c),
                }
            }
            if key.is_empty() {
                return Err("empty label name".into());
            }
            labels.insert(key, value);
        };
        rest = &after[end..];
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels: Labels(labels),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn samples_parse_labels_with_escapes_commas_and_braces() {
        let text = r#"# HELP apiserver_request_total Counter
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",resource="secrets",verb="POST"} 2
apiserver_request_total{code="200",resource="secrets",verb="GET",note="a,b} verb=\"POST\"\\\n"} 3 1700000000000
apiserver_request_total{code="200",resource="namespaces",verb="GET",} 1e1
apiserver_request_total_other{resource="secrets",verb="POST"} 100
apiserver_request_total 7
"#;
        let all = samples(text, "apiserver_request_total");
        assert_eq!(all.len(), 4);
        assert_eq!(all[1].labels.get("note"), "a,b} verb=\"POST\"\\\n");
        assert_eq!(
            request_count(text, |l| l.get("verb") == "POST"),
            2.0,
            "a label value that merely contains verb=\"POST\" must not count"
        );
        assert_eq!(request_count(text, |l| l.get("resource") == "secrets"), 5.0);
        assert_eq!(request_count(text, |l| l.get("resource").is_empty()), 7.0);
        assert_eq!(request_count(text, |_| true), 22.0);
    }

    #[test]
    fn a_malformed_line_is_an_error() {
        assert!(parse_sample(r#"m{a="x} 1"#).is_err());
        assert!(parse_sample(r#"m{a=x} 1"#).is_err());
        assert!(parse_sample("m{a=\"x\"}").is_err());
        assert!(parse_sample("m notanumber").is_err());
    }
}
