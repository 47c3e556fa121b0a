//! The crash drill: the real `meshca trust run` SIGKILLed at seeded random moments while it
//! rotates intermediates and roots on a file clock, over a folder store or over real
//! kube-apiservers. After every kill each cluster's `cacerts` must be whole and valid (every key
//! there as a reader sees it, the key matching its certificate, the chain verifying to a root of
//! `root-cert.pem`), and the simulator's cross-cluster check ([`MeshWatch`]) must hold; a restart
//! must converge; at the end a last root rotation runs to its end untouched, and the bundles must
//! have the shape a clean run gives them.
//!
//! The clock only moves to the moment the manager says something falls due ("next check" on its
//! stdout), so every step is one the manager writes at; the kill comes at a uniform random delay
//! within the time such a step took when nothing was killed (measured first), or within the time
//! a restart took to converge. Shared by `meshca-bench`'s `crash` binary and the crash-safety
//! test.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshca_pki::{CacertsBundle, Certificate};
use meshca_store::{FolderStore, SecretData, SecretStore};
use meshca_testkit::kube::ControlPlane;
use meshca_trust::TrustPolicy;
use meshca_trust::reconcile::{cacerts_key, store_fingerprint};
use meshca_trust::simulate::MeshWatch;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The drill's policy: [`meshca_testkit::DAILY_ROTATING_ROOT_POLICY`], a root rotation every
/// five simulated days, an intermediate one about every day.
pub const POLICY: &str = meshca_testkit::DAILY_ROTATING_ROOT_POLICY;

/// The workload clusters.
pub const CLUSTERS: [&str; 2] = ["cluster1", "cluster2"];

/// The keys of a cacerts bundle as meshca writes it.
const KEYS: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
    "root-cert.pem",
];

/// How long a restarted manager may take to converge, or a step to be reconciled.
const BOUND: Duration = Duration::from_secs(60);

/// Which store the manager works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// A folder store in a temporary folder.
    Folder,
    /// Real kube-apiservers (the testkit's `ControlPlane::mesh()`).
    Kube,
}

impl std::str::FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "folder" => Ok(StoreKind::Folder),
            "kube" => Ok(StoreKind::Kube),
            _ => Err(format!("store {s:?}: expected folder or kube")),
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct CrashConfig {
    /// The `meshca` binary.
    pub meshca: PathBuf,
    /// The store.
    pub store: StoreKind,
    /// How many SIGKILLs.
    pub kills: usize,
    /// The seed of the kill moments.
    pub seed: u64,
    /// Check convergence (a clean reconcile, clusters agreeing on their roots) every so many kills.
    pub converge_every: usize,
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct CrashReport {
    /// SIGKILLs sent.
    pub kills: usize,
    /// Of which while a restarted manager was starting and catching up.
    pub kills_in_startup: usize,
    /// Kills after which the store had changed but the manager had not reported the reconcile:
    /// it died in the middle of its writes.
    pub mid_write: usize,
    /// Kills that left a staged folder or link behind in the folder store (a write cut between
    /// its files and its swap, or between the swap and the clean-up).
    pub torn_leftovers: usize,
    /// Root rotations finished.
    pub root_rotations: usize,
    /// Intermediates re-issued under an unchanged root (seen between observations).
    pub intermediate_rotations: usize,
    /// Observations checked by the cross-cluster watch.
    pub observations: u64,
    /// Every failure, described (the drill passes when there are none).
    pub failures: Vec<String>,
    /// The simulated time covered.
    pub simulated: time::Duration,
    /// Wall time.
    pub elapsed: Duration,
    /// The kill window of a step and of a restart, as measured.
    pub windows: (Duration, Duration),
}

/// SplitMix64: a few lines of well-known PRNG, so a seed gives the same kills everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, bound)`.
    fn below(&mut self, bound: Duration) -> Duration {
        let nanos = bound.as_nanos().max(1) as u64;
        Duration::from_nanos(self.next() % nanos)
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
}

/// A running `meshca trust run`, its stdout lines collected by a thread.
pub struct Manager {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Manager {
    /// Its stdout so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether it reported a reconcile at `at` in which every cluster was fresh and nothing is
    /// due at once.
    pub fn settled_at(&self, at: OffsetDateTime) -> bool {
        let at = meshca_pki::error::show_time(at);
        self.lines().iter().any(|l| {
            l.strip_prefix("reconciled at ")
                .and_then(|r| r.strip_prefix(at.as_str()))
                .and_then(|r| r.strip_prefix(": "))
                .is_some_and(|r| {
                    r.starts_with(&format!("{} cluster(s) fresh;", CLUSTERS.len()))
                        && next_check(r).is_some_and(|n| n > meshca_pki_time(&at))
                })
        })
    }

    /// Whether it reported any reconcile at `at`.
    pub fn reconciled_at(&self, at: OffsetDateTime) -> bool {
        let at = format!("reconciled at {}:", meshca_pki::error::show_time(at));
        self.lines().iter().any(|l| l.starts_with(&at))
    }

    /// The latest "next check" it reported.
    pub fn next_check(&self) -> Option<OffsetDateTime> {
        self.lines().iter().rev().find_map(|l| next_check(l))
    }

    /// SIGKILLs it and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn next_check(line: &str) -> Option<OffsetDateTime> {
    let (_, t) = line.rsplit_once("next check ")?;
    Some(meshca_pki_time(t.trim()))
}

/// Parses the manager's shown time (`2026-01-02T03:04:05Z`).
fn meshca_pki_time(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Where the drill runs: the folder or control plane, the clock file, the policy.
pub struct Drill {
    meshca: PathBuf,
    dir: PathBuf,
    kind: StoreKind,
    /// Kept running for the kube store.
    control_plane: Option<ControlPlane>,
    reader: Box<dyn SecretStore>,
    policy: TrustPolicy,
    clock: PathBuf,
    now: OffsetDateTime,
    runs: usize,
}

impl Drill {
    /// The drill's store (a new control plane for Kubernetes) in `dir`, the clock at now.
    pub fn new(meshca: &Path, dir: &Path, kind: StoreKind) -> Result<Drill, String> {
        let policy_file = dir.join("policy.yaml");
        std::fs::write(&policy_file, POLICY).map_err(|e| e.to_string())?;
        let policy = TrustPolicy::from_yaml(POLICY, "policy.yaml").map_err(|e| e.to_string())?;
        let (control_plane, reader): (_, Box<dyn SecretStore>) = match kind {
            StoreKind::Folder => {
                let root = dir.join("store");
                for c in ["mgmt", CLUSTERS[0], CLUSTERS[1]] {
                    std::fs::create_dir_all(root.join(c)).map_err(|e| e.to_string())?;
                }
                let store = FolderStore::open(&root).map_err(|e| e.to_string())?;
                (None, Box::new(store))
            }
            StoreKind::Kube => {
                let cp = ControlPlane::mesh();
                let store = kube_store(&cp)?;
                (Some(cp), Box::new(store))
            }
        };
        // A whole second, so the manager's shown times match the clock's exactly.
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let drill = Drill {
            meshca: meshca.to_owned(),
            dir: dir.to_owned(),
            kind,
            control_plane,
            reader,
            policy,
            clock: dir.join("now"),
            now,
            runs: 0,
        };
        drill.set_clock(now)?;
        Ok(drill)
    }

    fn set_clock(&self, at: OffsetDateTime) -> Result<(), String> {
        let tmp = self.dir.join("now.tmp");
        let text = at.format(&Rfc3339).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &self.clock).map_err(|e| e.to_string())
    }

    /// Moves the drill's time, and the manager's clock with it, to `to`.
    pub fn advance(&mut self, to: OffsetDateTime) -> Result<(), String> {
        self.advance_skewed(to, to)
    }

    /// Moves the drill's time to `to` and sets the manager's clock to `manager`: a manager
    /// whose clock is wrong.
    pub fn advance_skewed(
        &mut self,
        to: OffsetDateTime,
        manager: OffsetDateTime,
    ) -> Result<(), String> {
        self.now = to;
        self.set_clock(manager)
    }

    /// The cross-cluster check alone at the drill's time, each CA keeping its last good bundle
    /// when the store holds one that is not valid then; the failure, prefixed with `when`.
    pub fn observe_cross_cluster(&self, watch: &mut MeshWatch, when: &str) -> Option<String> {
        let bundles: Vec<Option<SecretData>> = self.bundles().into_iter().map(Result::ok).collect();
        watch
            .observe(&bundles, self.now)
            .map(|f| format!("{when}: cross-cluster: {f}"))
    }

    /// Starts `meshca trust run` on the drill's store and clock, polling every 50 ms.
    pub fn start(&mut self) -> Result<Manager, String> {
        self.runs += 1;
        let clock = self.clock.display().to_string();
        let mut args: Vec<String> = ["trust", "run", "-f", "policy.yaml", "--clock-file", &clock]
            .map(str::to_owned)
            .to_vec();
        args.extend(["--resync", "1000d", "--poll", "50ms"].map(str::to_owned));
        match (&self.control_plane, self.kind) {
            (Some(cp), StoreKind::Kube) => {
                args.extend(
                    ["--store", "kube", "--kubeconfig"]
                        .map(str::to_owned)
                        .into_iter()
                        .chain([cp.kubeconfig().display().to_string()])
                        .chain(["--mgmt-context", "mgmt"].map(str::to_owned)),
                );
                for c in CLUSTERS {
                    args.extend(["--cluster".to_owned(), format!("{c}={c}")]);
                }
            }
            _ => args.extend(["--store", "store"].map(str::to_owned)),
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("manager.log"))
            .map_err(|e| e.to_string())?;
        let mut child = Command::new(&self.meshca)
            .args(&args)
            .current_dir(&self.dir)
            .env("MESHCA_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: cannot start: {e}", self.meshca.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let copy = self.dir.join(format!("manager-{}.out", self.runs % 4));
        std::thread::spawn(move || {
            let mut out = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                out.push_str(&line);
                out.push('\n');
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
            let _ = std::fs::write(copy, out);
        });
        Ok(Manager { child, lines })
    }

    /// Waits until `m` has settled at the drill's time (a reconcile at it found every cluster
    /// fresh); how long it took.
    pub fn await_settled(&self, m: &mut Manager) -> Result<Duration, String> {
        let began = Instant::now();
        while !m.settled_at(self.now) {
            if let Ok(Some(status)) = m.child.try_wait() {
                return Err(format!(
                    "the manager exited ({status}) before settling at {}: {}",
                    meshca_pki::error::show_time(self.now),
                    m.lines().join(" | ")
                ));
            }
            if began.elapsed() > BOUND {
                return Err(format!(
                    "the manager did not settle at {} within {BOUND:?}; its last lines: {}",
                    meshca_pki::error::show_time(self.now),
                    tail(&m.lines())
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(began.elapsed())
    }

    /// Every cluster's cacerts as a reader sees it: through the secret folder's key links for
    /// the folder store (as `meshca serve --cacerts` reads it), the Secret for Kubernetes.
    pub fn bundles(&self) -> Vec<Result<SecretData, String>> {
        CLUSTERS
            .iter()
            .map(|c| match self.kind {
                StoreKind::Folder => {
                    let dir = self.dir.join("store").join(c).join("istio-system/cacerts");
                    let mut data = SecretData::new();
                    for k in KEYS {
                        let bytes =
                            std::fs::read(dir.join(k)).map_err(|e| format!("{c}: {k}: {e}"))?;
                        data.insert(k.to_owned(), bytes);
                    }
                    Ok(data)
                }
                StoreKind::Kube => match self.reader.read(&cacerts_key(c)) {
                    Ok(Some(d)) => Ok(d),
                    Ok(None) => Err(format!("{c}: cacerts is missing")),
                    Err(e) => Err(format!("{c}: cannot read cacerts: {e}")),
                },
            })
            .collect()
    }

    /// The drill's time.
    pub fn now(&self) -> OffsetDateTime {
        self.now
    }

    /// The control plane, for the Kubernetes store.
    pub fn control_plane(&mut self) -> Option<&mut ControlPlane> {
        self.control_plane.as_mut()
    }

    /// The store as the drill reads it.
    pub fn store(&self) -> &dyn SecretStore {
        self.reader.as_ref()
    }

    /// The clock time to step to next: the manager's next due moment, at least a second on
    /// and at most a day.
    pub fn next_step(&self, m: &Manager) -> OffsetDateTime {
        step_to(self, m)
    }

    /// Checks every cluster's bundle at the drill's time and the cross-cluster verification
    /// with `watch`; returns the problems, each prefixed with `when`.
    pub fn observe(&self, watch: &mut MeshWatch, when: &str) -> Vec<String> {
        let (valid, problems) = check_bundles(&self.bundles(), self.now);
        let mut found: Vec<String> = problems
            .into_iter()
            .map(|p| format!("{when}: {p}"))
            .collect();
        if let Some(f) = watch.observe(&valid, self.now) {
            found.push(format!("{when}: cross-cluster: {f}"));
        }
        found
    }

    fn fingerprint(&self) -> String {
        store_fingerprint(self.reader.as_ref(), &self.policy, "mgmt").unwrap_or_default()
    }

    /// Staged folders and temporary links the folder store left beside `..data`.
    fn leftovers(&self) -> usize {
        if self.kind != StoreKind::Folder {
            return 0;
        }
        let mut n = 0;
        for c in CLUSTERS {
            let dir = self.dir.join("store").join(c).join("istio-system/cacerts");
            let current = std::fs::read_link(dir.join("..data")).ok();
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("..")
                    && name != "..data"
                    && current.as_deref() != Some(Path::new(&name))
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// The root rotation's phase, `None` when none is in progress.
    pub fn phase(&self) -> Result<Option<meshca_trust::RotationPhase>, String> {
        meshca_trust::rotation::load(self.reader.as_ref(), &self.policy, "mgmt")
            .map(|s| s.map(|s| s.phase))
            .map_err(|e| e.to_string())
    }
}

fn kube_store(cp: &ControlPlane) -> Result<meshca_kube::KubeStore, String> {
    let sources = meshca_kube::ClusterSources {
        kubeconfig: Some(cp.kubeconfig().to_owned()),
        mgmt_context: Some("mgmt".to_owned()),
        clusters: CLUSTERS
            .iter()
            .map(|c| ((*c).to_owned(), (*c).to_owned()))
            .collect(),
        remote_secrets_namespace: None,
    };
    meshca_kube::KubeStore::connect(&sources, meshca_kube::KubeOptions::default())
        .map_err(|e| e.to_string())
}

fn tail(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

/// Each cluster's bundle checked at `at`; returns the valid ones' data, and the problems.
fn check_bundles(
    bundles: &[Result<SecretData, String>],
    at: OffsetDateTime,
) -> (Vec<Option<SecretData>>, Vec<String>) {
    let mut problems = Vec::new();
    let mut valid = Vec::new();
    for (c, b) in CLUSTERS.iter().zip(bundles) {
        match b {
            Err(e) => {
                problems.push(e.clone());
                valid.push(None);
            }
            Ok(data) => match CacertsBundle::from_files(data, c, at) {
                Ok(_) => valid.push(Some(data.clone())),
                Err(e) => {
                    problems.push(format!("{c}: {e}"));
                    valid.push(None);
                }
            },
        }
    }
    (valid, problems)
}

/// The shape of a bundle: its keys, with how many certificates each holds.
fn shape(data: &SecretData) -> BTreeMap<String, usize> {
    data.iter()
        .map(|(k, v)| {
            let n = if k.ends_with("key.pem") {
                0
            } else {
                Certificate::all_from_pem(v, k).map_or(0, |c| c.len())
            };
            (k.clone(), n)
        })
        .collect()
}

fn roots_of(data: &SecretData) -> Vec<Vec<u8>> {
    let mut r: Vec<Vec<u8>> = data
        .get("root-cert.pem")
        .and_then(|b| Certificate::all_from_pem(b, "root-cert.pem").ok())
        .unwrap_or_default()
        .iter()
        .map(|c| c.der().to_vec())
        .collect();
    r.sort();
    r
}

/// Runs the drill. `progress` gets a line now and then.
pub fn run(cfg: &CrashConfig, progress: &mut dyn FnMut(&str)) -> Result<CrashReport, String> {
    let began = Instant::now();
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut d = Drill::new(&cfg.meshca, tmp.path(), cfg.store)?;
    let start = d.now;
    let mut rng = Rng(cfg.seed);
    let mut report = CrashReport::default();
    let mut watch =
        MeshWatch::new(&CLUSTERS, time::Duration::hours(1)).map_err(|e| e.to_string())?;

    // A clean start, then a few clean steps to measure how long a step and a restart take.
    let mut m = d.start()?;
    let mut restart_window = d.await_settled(&mut m)?;
    let clean = d.bundles();
    let (valid, problems) = check_bundles(&clean, d.now);
    if !problems.is_empty() {
        return Err(format!("the clean start left bad bundles: {problems:?}"));
    }
    let clean_shape: Vec<_> = valid.iter().flatten().map(shape).collect();
    let mut step_window = Duration::ZERO;
    let mut last_roots = None;
    let mut last_cas: Vec<Vec<u8>> = Vec::new();
    let mut count_rotations = |report: &mut CrashReport, d: &Drill| {
        let bundles: Vec<SecretData> = d.bundles().into_iter().flatten().collect();
        let roots: Vec<_> = bundles.iter().map(roots_of).collect();
        let cas: Vec<Vec<u8>> = bundles
            .iter()
            .map(|b| b.get("ca-cert.pem").cloned().unwrap_or_default())
            .collect();
        if last_roots.as_ref() == Some(&roots) {
            report.intermediate_rotations +=
                cas.iter().zip(&last_cas).filter(|(a, b)| a != b).count();
        }
        last_roots = Some(roots);
        last_cas = cas;
    };
    count_rotations(&mut report, &d);
    let observe = |watch: &mut MeshWatch, report: &mut CrashReport, d: &Drill, when: &str| {
        let found = d.observe(watch, when);
        report.observations = watch.observations();
        found
    };
    for p in observe(&mut watch, &mut report, &d, "clean start") {
        fail(&mut report, progress, p);
    }
    for _ in 0..3 {
        let next = step_to(&d, &m);
        let t = Instant::now();
        d.advance(next)?;
        d.await_settled(&mut m)?;
        step_window = step_window.max(t.elapsed());
        for p in observe(&mut watch, &mut report, &d, "clean step") {
            fail(&mut report, progress, p);
        }
        count_rotations(&mut report, &d);
    }
    m.kill();
    let t = Instant::now();
    let mut m = d.start()?;
    d.await_settled(&mut m)?;
    restart_window = restart_window.max(t.elapsed());
    report.windows = (step_window, restart_window);
    progress(&format!(
        "kill windows: {} ms after a clock step, {} ms after a start",
        step_window.as_millis(),
        restart_window.as_millis()
    ));

    let mut finished = last_finished(&d);
    let mut leftovers = d.leftovers();
    let mut next_converge = cfg.converge_every;
    while report.kills < cfg.kills {
        // A step: the clock moves to the manager's next due moment, the kill comes inside the
        // window that step takes.
        let before = d.fingerprint();
        let next = step_to(&d, &m);
        d.advance(next)?;
        std::thread::sleep(rng.below(step_window));
        let reported = m.reconciled_at(d.now);
        m.kill();
        report.kills += 1;
        if !reported && d.fingerprint() != before {
            report.mid_write += 1;
        }
        let label = format!(
            "kill {} at {}",
            report.kills,
            meshca_pki::error::show_time(d.now)
        );
        for p in observe(&mut watch, &mut report, &d, &label) {
            fail(&mut report, progress, p);
        }
        // Now and then the restart is killed too, before it has caught up.
        while report.kills < cfg.kills && rng.one_in(4) {
            let before = d.fingerprint();
            let m2 = d.start()?;
            std::thread::sleep(rng.below(restart_window));
            let reported = m2.settled_at(d.now);
            m2.kill();
            report.kills += 1;
            report.kills_in_startup += 1;
            if !reported && d.fingerprint() != before {
                report.mid_write += 1;
            }
            let label = format!("kill {} (in a restart)", report.kills);
            for p in observe(&mut watch, &mut report, &d, &label) {
                fail(&mut report, progress, p);
            }
        }
        let now_left = d.leftovers();
        if now_left > leftovers {
            report.torn_leftovers += 1;
        }
        leftovers = now_left;
        m = d.start()?;
        if let Err(e) = d.await_settled(&mut m) {
            let kills = report.kills;
            fail(
                &mut report,
                progress,
                format!("restart after kill {kills}: {e}"),
            );
            break;
        }
        for p in observe(&mut watch, &mut report, &d, "restarted") {
            fail(&mut report, progress, p);
        }
        count_rotations(&mut report, &d);
        let f = last_finished(&d);
        if f != finished {
            report.root_rotations += 1;
            finished = f;
        }
        if cfg.converge_every > 0 && report.kills >= next_converge {
            next_converge = report.kills + cfg.converge_every;
            let kills = report.kills;
            for p in converged(&d) {
                fail(&mut report, progress, format!("after {kills} kills: {p}"));
            }
            progress(&format!(
                "{} kills ({} mid-write), {} root rotations, {} failures, {:.0?}",
                report.kills,
                report.mid_write,
                report.root_rotations,
                report.failures.len(),
                began.elapsed()
            ));
        }
    }

    // The end: no more kills; the manager finishes the rotation in progress and one more
    // whole one, and the bundles look as a clean run's do.
    let target = report.root_rotations + 1 + usize::from(d.phase()?.is_some());
    let mut steps = 0;
    while report.root_rotations < target || d.phase()?.is_some() {
        steps += 1;
        if steps > 40 {
            fail(
                &mut report,
                progress,
                "the last root rotation did not finish in 40 steps".to_owned(),
            );
            break;
        }
        let next = step_to(&d, &m);
        d.advance(next)?;
        if let Err(e) = d.await_settled(&mut m) {
            fail(&mut report, progress, format!("at the end: {e}"));
            break;
        }
        for p in observe(&mut watch, &mut report, &d, "final rotation") {
            fail(&mut report, progress, p);
        }
        let f = last_finished(&d);
        if f != finished {
            report.root_rotations += 1;
            finished = f;
        }
    }
    m.kill();
    for p in converged(&d) {
        fail(&mut report, progress, format!("at the end: {p}"));
    }
    let (valid, _) = check_bundles(&d.bundles(), d.now);
    let end_shape: Vec<_> = valid.iter().flatten().map(shape).collect();
    if end_shape != clean_shape {
        fail(
            &mut report,
            progress,
            format!(
                "at the end the bundles are shaped {end_shape:?}, a clean run's {clean_shape:?}"
            ),
        );
    }
    report.simulated = d.now - start;
    report.elapsed = began.elapsed();
    if !report.failures.is_empty() {
        let _ = std::fs::copy(
            d.dir.join("manager.log"),
            std::env::temp_dir().join("meshca-crash-manager.log"),
        );
    }
    Ok(report)
}

fn fail(report: &mut CrashReport, progress: &mut dyn FnMut(&str), what: String) {
    progress(&format!("FAILURE: {what}"));
    report.failures.push(what);
}

/// The next clock time: the manager's next due moment, at least a second on and at most a day.
fn step_to(d: &Drill, m: &Manager) -> OffsetDateTime {
    let floor = d.now + time::Duration::SECOND;
    let ceiling = d.now + time::Duration::DAY;
    m.next_check().map_or(ceiling, |n| n.clamp(floor, ceiling))
}

fn last_finished(d: &Drill) -> Option<String> {
    meshca_trust::rotation::last_finished(d.reader.as_ref(), &d.policy, "mgmt")
        .ok()
        .flatten()
}

/// Problems with a settled store: every bundle valid, the clusters agreeing on their roots, as
/// many roots as the rotation phase calls for.
fn converged(d: &Drill) -> Vec<String> {
    let (valid, mut problems) = check_bundles(&d.bundles(), d.now);
    let roots: Vec<_> = valid.iter().flatten().map(roots_of).collect();
    if roots.windows(2).any(|w| w[0] != w[1]) {
        problems.push("the clusters' root bundles differ".to_owned());
    }
    let expected = match d.phase() {
        Ok(Some(meshca_trust::RotationPhase::DropRoot)) => None,
        Ok(Some(_)) => Some(2),
        Ok(None) => Some(1),
        Err(e) => {
            problems.push(e);
            None
        }
    };
    if let (Some(n), Some(r)) = (expected, roots.first())
        && r.len() != n
    {
        problems.push(format!(
            "{} root(s) in the bundles, {n} expected in phase {:?}",
            r.len(),
            d.phase().ok().flatten()
        ));
    }
    problems
}
