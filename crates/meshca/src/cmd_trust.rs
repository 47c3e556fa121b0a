//! `meshca trust`: apply a root trust policy to the clusters of a store, keep it applied, rotate
//! the root, and simulate years of it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration as StdDuration;

use meshca_store::SecretStore;
use meshca_trust::policy::SecretRef;
use meshca_trust::reconcile::{PlanStep, plan_root_rotation};
use meshca_trust::simulate::{SimConfig, simulate};
use meshca_trust::{FolderStore, Outcome, Report, TrustPolicy};
use time::OffsetDateTime;

use crate::Output;
use crate::cmd_serve::parse_duration;

/// Managed intermediate CAs for every cluster, from one RootTrustPolicy.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Reconcile once: every cluster gets a valid, fresh cacerts signed by the policy's CA.
    Apply(Common),
    /// Keep reconciling, on a timer and whenever the store or the policy changes, until stopped.
    Run(RunArgs),
    /// Rotate intermediates now, fresh or not (all clusters, or --cluster).
    RotateIntermediates(Common),
    /// Start a root rotation: add the new root everywhere, re-issue, drop the old root.
    RotateRoot(RotateRootArgs),
    /// Per cluster: intermediate serial, expiry, next renewal, rotation phase, problems.
    Status(StatusArgs),
    /// Write the trust dashboard: one self-contained HTML file of the trust graph, the expiry
    /// timeline, the rotation phase and the check findings.
    Dashboard(DashboardArgs),
    /// Run the manager on a simulated clock with simulated workloads and count broken moments.
    Simulate(SimulateArgs),
    /// Print the RootTrustPolicy CustomResourceDefinitions (Gloo's and meshca's API groups).
    Crds(CrdsArgs),
}

#[derive(clap::Args)]
pub struct CrdsArgs {
    /// Write one file per definition into DIR (`roottrustpolicies.<group>.yaml`) instead of
    /// printing them.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct Common {
    /// The RootTrustPolicy YAML (Gloo's admin.gloo.solo.io/v2 or meshca's trust.meshca/v1alpha1).
    #[arg(short = 'f', long = "filename")]
    policy: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

/// Where the clusters' secrets are: a folder (the default), or Kubernetes.
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// The store: a folder DIR (<DIR>/<cluster>/<namespace>/<secret>/<key>), or `kube` for the
    /// clusters' API servers.
    #[arg(long, required_unless_present = "kubeconfig")]
    store: Option<String>,
    /// The management cluster's name (its folder, or its name beside the workload clusters).
    #[arg(long, default_value = "mgmt")]
    mgmt_cluster: String,
    /// `NAME`: only this cluster (repeatable). `NAME=CONTEXT` (Kubernetes store): a workload
    /// cluster reached through this kubeconfig context.
    #[arg(long = "cluster")]
    clusters: Vec<String>,
    /// Kubernetes store: the kubeconfig (default $KUBECONFIG or ~/.kube/config). Implies --store kube.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes store: the management cluster's context (default: the current context).
    #[arg(long)]
    mgmt_context: Option<String>,
    /// Kubernetes store: also take workload clusters from Istio's remote secrets (label
    /// istio/multiCluster=true) in this namespace of the management cluster.
    #[arg(long, num_args = 0..=1, default_missing_value = "istio-system")]
    remote_secrets: Option<String>,
    /// Kubernetes store: replace a workload cluster's secret that meshca did not make.
    #[arg(long)]
    adopt: bool,
    /// Kubernetes store: create a missing istio-system namespace instead of reporting it.
    #[arg(long)]
    create_namespace: bool,
    /// Kubernetes store: how long one request to an API server may take.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    request_timeout: time::Duration,
}

impl StoreArgs {
    /// The clusters named without a context: the reconcile's scope.
    fn only(&self) -> Vec<String> {
        self.clusters
            .iter()
            .filter(|c| !c.contains('='))
            .cloned()
            .collect()
    }

    fn is_kube(&self) -> bool {
        self.kubeconfig.is_some() || self.store.as_deref() == Some("kube")
    }

    fn open(&self, policy: &TrustPolicy) -> anyhow::Result<Store> {
        self.open_for(Some(format!("{}/{}", policy.namespace, policy.name)), None)
    }

    /// The store, its writes annotated with `owner` (a policy) and `writer` (a replica).
    fn open_for(&self, owner: Option<String>, writer: Option<String>) -> anyhow::Result<Store> {
        if !self.is_kube() {
            if let Some(c) = self.clusters.iter().find(|c| c.contains('=')) {
                anyhow::bail!(
                    "--cluster {c}: NAME=CONTEXT is for the Kubernetes store (--store kube)"
                );
            }
            let dir = std::path::Path::new(self.store.as_deref().unwrap_or_default());
            // A mistyped --store would otherwise be a new, empty store: a root and no cluster.
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => anyhow::bail!("--store {}: not a folder", dir.display()),
                Err(e) => anyhow::bail!("--store {}: cannot open the store: {e}", dir.display()),
            }
            return Ok(Store::Folder(FolderStore::open(dir)?));
        }
        let mut sources = meshca_kube::ClusterSources {
            kubeconfig: self.kubeconfig.clone(),
            mgmt_context: self.mgmt_context.clone(),
            remote_secrets_namespace: self.remote_secrets.clone(),
            ..Default::default()
        };
        for c in &self.clusters {
            if let Some((name, context)) = c.split_once('=') {
                if name.is_empty() || context.is_empty() {
                    anyhow::bail!("--cluster {c}: expected NAME or NAME=CONTEXT");
                }
                sources.clusters.push((name.to_owned(), context.to_owned()));
            }
        }
        let opts = meshca_kube::KubeOptions {
            mgmt: self.mgmt_cluster.clone(),
            adopt: self.adopt,
            create_namespace: self.create_namespace,
            timeout: to_std(self.request_timeout).max(StdDuration::from_millis(100)),
            owner,
            writer,
        };
        Ok(Store::Kube(Box::new(meshca_kube::KubeStore::connect(
            &sources, opts,
        )?)))
    }
}

/// The store a command works on.
enum Store {
    Folder(FolderStore),
    Kube(Box<meshca_kube::KubeStore>),
}

impl Store {
    fn as_dyn(&self) -> &dyn SecretStore {
        match self {
            Store::Folder(s) => s,
            Store::Kube(s) => s.as_ref(),
        }
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The RootTrustPolicy YAML. Without it (Kubernetes store), every RootTrustPolicy resource
    /// of the management cluster is applied, watched, and reported on in its .status.
    #[arg(short = 'f', long = "filename")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    /// Reconcile at least this often, even when nothing changed and nothing falls due.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    resync: time::Duration,
    /// How often to look at the store and the policies for changes (default 2s for a folder;
    /// 200ms for Kubernetes, whose secrets and policies are watched and looked at in memory).
    #[arg(long, value_parser = parse_duration)]
    poll: Option<time::Duration>,
    /// Kubernetes store: one of several replicas; act only while holding a
    /// coordination.k8s.io/v1 Lease in the management cluster.
    #[arg(long)]
    leader_elect: bool,
    /// The Lease's name.
    #[arg(long, default_value = "meshca-trust")]
    lease_name: String,
    /// The Lease's namespace (the manager's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "meshca-system")]
    lease_namespace: String,
    /// How long an unrenewed Lease holds before another replica takes over; the holder stops
    /// acting after two thirds of it without a renewal.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: time::Duration,
    /// This replica's name in the Lease [default: $POD_NAME, else HOST-PID].
    #[arg(long, env = "POD_NAME")]
    lease_identity: Option<String>,
    /// Read the current time from FILE (one RFC 3339 line) instead of the system clock, so that
    /// a drill can move time through a rotation's phases.
    #[arg(long, value_name = "FILE")]
    clock_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (expiry of every root and intermediate,
    /// the rotation phase, reconcile outcomes and durations, store errors).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Serve the trust dashboard at http://ADDR/, rendered at each request from the latest
    /// reconcile (`/policy/<namespace>/<name>` for each policy when there are several).
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
}

#[derive(clap::Args)]
pub struct RotateRootArgs {
    #[command(flatten)]
    common: Common,
    /// For a secretRef root: the secret in the management cluster holding the new root
    /// (NAME or NAMESPACE/NAME; the namespace defaults to gloo-mesh).
    #[arg(long)]
    to_secret: Option<String>,
    /// Print the plan, phase by phase with its earliest times, and write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The RootTrustPolicy YAML. Without it, what the store holds: each cluster's bundle, and
    /// whether each pair of clusters trusts each other's chain.
    #[arg(short = 'f', long = "filename")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

#[derive(clap::Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    common: Common,
    /// The HTML file to write.
    #[arg(short = 'o', long = "output", default_value = "meshca-dashboard.html")]
    output: PathBuf,
}

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// The RootTrustPolicy YAML.
    #[arg(long)]
    policy: PathBuf,
    /// Simulated days.
    #[arg(long, default_value_t = 730)]
    days: i64,
    /// Workload clusters.
    #[arg(long, default_value_t = 3)]
    clusters: usize,
    /// Workloads per cluster.
    #[arg(long, default_value_t = 2)]
    workloads: usize,
    /// The manager's resync timer.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    resync: time::Duration,
    /// Start a root rotation after this long (default: when the policy rotates it, else a third in).
    #[arg(long, value_parser = parse_duration)]
    rotate_root_after: Option<time::Duration>,
    /// Keep the policy's key type (RSA keys make a long run slow; timing does not depend on it).
    #[arg(long)]
    policy_keys: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

fn read_policy(path: &std::path::Path) -> anyhow::Result<TrustPolicy> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{shown}: cannot read: {e}"))?;
    Ok(TrustPolicy::from_yaml(&text, &shown)?)
}

fn load(c: &Common) -> anyhow::Result<(TrustPolicy, Store)> {
    let policy = read_policy(&c.policy)?;
    let store = c.store.open(&policy)?;
    Ok((policy, store))
}

fn parse_secret(s: &str) -> anyhow::Result<SecretRef> {
    let (namespace, name) = match s.split_once('/') {
        Some((ns, n)) => (ns.to_owned(), n.to_owned()),
        None => ("gloo-mesh".to_owned(), s.to_owned()),
    };
    if name.is_empty() || namespace.is_empty() || name.contains('/') {
        anyhow::bail!("--to-secret {s:?}: expected NAME or NAMESPACE/NAME");
    }
    Ok(SecretRef { name, namespace })
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let now = OffsetDateTime::now_utc();
    let mut out = std::io::stdout().lock();
    match cmd {
        Command::Apply(c) => apply(&c, &[], now, &mut out),
        Command::RotateIntermediates(c) => {
            let only = c.store.only();
            let force = if only.is_empty() {
                vec!["*".to_owned()]
            } else {
                only
            };
            apply(&c, &force, now, &mut out)
        }
        Command::RotateRoot(a) => rotate_root(&a, now, &mut out),
        Command::Status(s) => status(&s, now, &mut out),
        Command::Dashboard(d) => dashboard(&d, now, &mut out),
        Command::Simulate(s) => simulate_cmd(&s, now, &mut out),
        Command::Crds(c) => crds(&c, &mut out),
        Command::Run(r) => {
            drop(out);
            run_loop(&r)
        }
    }
}

fn print_report(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    for n in &r.notes {
        writeln!(out, "note: {n}")?;
    }
    for (cluster, o) in &r.clusters {
        match o {
            Outcome::Created => writeln!(out, "{cluster}: cacerts created")?,
            Outcome::Rotated(why) => writeln!(out, "{cluster}: intermediate rotated ({why})")?,
            Outcome::RootsUpdated => writeln!(out, "{cluster}: root bundle updated")?,
            Outcome::Fresh => writeln!(out, "{cluster}: fresh, nothing to do")?,
            Outcome::Failed(why) => writeln!(out, "{cluster}: FAILED: {why}")?,
        }
    }
    for e in &r.rotation {
        writeln!(out, "rotation: {e}")?;
    }
    Ok(())
}

fn apply(
    c: &Common,
    force: &[String],
    now: OffsetDateTime,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let (policy, store) = load(c)?;
    for n in &policy.notes {
        writeln!(out, "note: {n}")?;
    }
    let report = meshca_trust::reconcile(
        store.as_dyn(),
        &policy,
        &c.store.mgmt_cluster,
        &c.store.only(),
        force,
        now,
    )?;
    print_report(out, &report)?;
    Ok(exit_for(&report))
}

/// Non-zero when a cluster failed: the others were done all the same.
fn exit_for(report: &Report) -> ExitCode {
    let failed: Vec<String> = report
        .clusters
        .iter()
        .filter_map(|(cluster, o)| match o {
            Outcome::Failed(why) => Some(format!("{cluster}: {why}")),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        // One line naming each failed cluster and why, so a script's log says what broke.
        eprintln!(
            "meshca: error: {} cluster(s) failed ({}); the others were reconciled",
            failed.len(),
            failed.join("; ")
        );
        ExitCode::FAILURE
    }
}

fn rotate_root(
    a: &RotateRootArgs,
    now: OffsetDateTime,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let (policy, store) = load(&a.common)?;
    let next = a.to_secret.as_deref().map(parse_secret).transpose()?;
    let mgmt = &a.common.store.mgmt_cluster;
    let only = a.common.store.only();
    let store = store.as_dyn();
    if a.dry_run {
        let steps = plan_root_rotation(store, &policy, mgmt, next.as_ref(), now)?;
        writeln!(out, "root rotation plan (dry run: nothing written)")?;
        print_plan(out, &steps, now)?;
        return Ok(ExitCode::SUCCESS);
    }
    let state = meshca_trust::start_root_rotation(store, &policy, mgmt, next.as_ref(), now)?;
    writeln!(
        out,
        "root rotation started: new root {} (secret {}/{}), phase {}",
        state.new_root,
        state.next_secret.namespace,
        state.next_secret.name,
        state.phase.label()
    )?;
    let report = match meshca_trust::reconcile(store, &policy, mgmt, &only, &[], now) {
        Ok(r) => r,
        // A running manager saw the rotation start and wrote first: it carries the phase on.
        Err(meshca_trust::TrustError::Store(e)) if e.is_conflict() => {
            writeln!(
                out,
                "another writer (a running meshca trust run) is carrying the rotation on: {e}"
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    print_report(out, &report)?;
    if let Some(at) = report.rotation_due {
        writeln!(
            out,
            "the next phase can start at {} (meshca trust run carries it on; or run meshca trust apply then)",
            meshca_pki::error::show_time(at)
        )?;
    }
    Ok(exit_for(&report))
}

fn print_plan(
    out: &mut impl Write,
    steps: &[PlanStep],
    now: OffsetDateTime,
) -> std::io::Result<()> {
    for s in steps {
        let after = s.at - now;
        let when = if after.is_zero() {
            "now".to_owned()
        } else {
            format!(
                "+{}h{:02}m",
                after.whole_hours(),
                after.whole_minutes() % 60
            )
        };
        writeln!(out, "{when:>10}  ({})", meshca_pki::error::show_time(s.at))?;
        for e in &s.rotation {
            writeln!(out, "            {e}")?;
        }
        let mut by_kind: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
        for (c, o) in &s.clusters {
            let k = match o {
                Outcome::Created => "cacerts created".to_owned(),
                Outcome::Rotated(_) => "intermediate re-issued".to_owned(),
                Outcome::RootsUpdated => "root bundle updated".to_owned(),
                Outcome::Fresh => continue,
                Outcome::Failed(_) => "failed".to_owned(),
            };
            by_kind.entry(k).or_default().push(c);
        }
        for (k, cs) in by_kind {
            writeln!(out, "            {k}: {}", cs.join(", "))?;
        }
    }
    Ok(())
}

fn status(s: &StatusArgs, now: OffsetDateTime, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let st = match &s.policy {
        Some(path) => {
            let policy = read_policy(path)?;
            let store = s.store.open(&policy)?;
            meshca_trust::status(
                store.as_dyn(),
                &policy,
                &s.store.mgmt_cluster,
                &s.store.only(),
                now,
            )?
        }
        None => {
            let store = s.store.open_for(None, None)?;
            meshca_trust::reconcile::inventory(
                &meshca_trust::BundleCache::new(),
                store.as_dyn(),
                &s.store.mgmt_cluster,
                &s.store.only(),
                now,
            )?
        }
    };
    match s.output {
        Output::Json | Output::Yaml => {
            s.output.write_data(out, &st)?;
        }
        Output::Text => {
            if let Some(r) = &st.rotation {
                writeln!(
                    out,
                    "root rotation in progress: phase {} ({}), started {}{}",
                    r.phase,
                    r.doing,
                    r.started_at,
                    r.settled_at
                        .as_deref()
                        .map(|s| format!(", phase done everywhere since {s}"))
                        .unwrap_or_default()
                )?;
            }
            writeln!(
                out,
                "{:<16} {:<24} {:<22} {:<22} {:<20} PROBLEMS",
                "CLUSTER", "SERIAL", "NOT AFTER", "NEXT RENEWAL", "ROTATION"
            )?;
            for c in &st.clusters {
                let serial = c
                    .serial
                    .as_deref()
                    .map(|s| s.chars().take(23).collect::<String>())
                    .unwrap_or_else(|| "-".into());
                writeln!(
                    out,
                    "{:<16} {:<24} {:<22} {:<22} {:<20} {}",
                    c.cluster,
                    serial,
                    c.not_after.as_deref().unwrap_or("-"),
                    c.next_renewal.as_deref().unwrap_or("-"),
                    c.rotation.as_deref().unwrap_or("-"),
                    if c.problems.is_empty() {
                        "-".to_owned()
                    } else {
                        c.problems.join("; ")
                    }
                )?;
            }
        }
    }
    Ok(if st.clusters.iter().all(|c| c.problems.is_empty()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `trust dashboard`: what `status` and `meshca check` say, written as one HTML file.
fn dashboard(
    d: &DashboardArgs,
    now: OffsetDateTime,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let (policy, store) = load(&d.common)?;
    let data = meshca_trust::dashboard::gather(
        &meshca_trust::BundleCache::new(),
        store.as_dyn(),
        &policy,
        &d.common.store.mgmt_cluster,
        &d.common.store.only(),
        now,
    )?;
    let page = meshca_trust::dashboard::render(&data, now);
    std::fs::write(&d.output, page)
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", d.output.display()))?;
    writeln!(
        out,
        "wrote {} ({} clusters, {})",
        d.output.display(),
        data.clusters.len(),
        data.rotation.as_ref().map_or_else(
            || "no root rotation in progress".to_owned(),
            |r| format!("root rotation phase {}", r.phase.label())
        )
    )?;
    Ok(ExitCode::SUCCESS)
}

fn simulate_cmd(
    s: &SimulateArgs,
    now: OffsetDateTime,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let policy = read_policy(&s.policy)?;
    if s.days < 1 || s.clusters < 2 || s.workloads < 1 {
        anyhow::bail!(
            "simulate: --days must be at least 1, --clusters at least 2, --workloads at least 1"
        );
    }
    let cfg = SimConfig {
        days: s.days,
        clusters: s.clusters,
        workloads: s.workloads,
        resync: s.resync,
        renew_ratio: 0.5,
        rotate_root_after: s.rotate_root_after,
        fast_keys: !s.policy_keys,
        ..SimConfig::default()
    };
    let started = std::time::Instant::now();
    let r = simulate(&policy, &cfg, now)?;
    match s.output {
        Output::Json | Output::Yaml => {
            s.output.write_data(out, &r)?;
        }
        Output::Text => {
            for e in &r.events {
                writeln!(out, "{e}")?;
            }
            writeln!(
                out,
                "simulated {} days, {} clusters x {} workloads in {:.1}s: {} reconciles, {} intermediates issued, {} root bundle updates, {} root rotation(s) started and {} finished, {} workload certificates",
                r.days,
                r.clusters,
                r.workloads_per_cluster,
                started.elapsed().as_secs_f64(),
                r.reconciles,
                r.intermediates_issued,
                r.root_bundle_updates,
                r.root_rotations_started,
                r.root_rotations_finished,
                r.workload_certs
            )?;
            writeln!(
                out,
                "moments at which a workload could not verify a workload of another cluster: {} (of {} checked){}",
                r.failure_moments,
                r.moments_checked,
                r.first_failure
                    .as_deref()
                    .map(|f| format!("; first: {f}"))
                    .unwrap_or_default()
            )?;
        }
    }
    Ok(if r.failure_moments == 0 && r.manager_errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `trust run`: the library's manager ([`meshca_trust::manager`]) printing what it does, until
/// SIGINT or SIGTERM (seen between reconciles: a reconcile in progress is never cut off). Its
/// policies are one file, or every RootTrustPolicy resource of the management cluster (whose
/// status it then writes); with `--leader-elect` it acts only while holding the Lease.
fn run_loop(r: &RunArgs) -> anyhow::Result<ExitCode> {
    use meshca_kube::lease::{LeaderOnly, Leadership, LeaseConfig};
    use meshca_trust::manager::{
        Clock, Event, FileClock, Manager, ManagerConfig, PolicyFile, PolicySource, SystemClock,
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    // What is not a reconcile's outcome (a status not written, a watch refused) is logged.
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHCA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let args = &r.store;
    let mgmt = args.mgmt_cluster.clone();
    if r.policy.is_none() && !args.is_kube() {
        anyhow::bail!(
            "trust run: give the policy with -f FILE, or use --store kube to apply the RootTrustPolicy resources of the management cluster"
        );
    }
    if r.leader_elect && !args.is_kube() {
        anyhow::bail!(
            "--leader-elect needs the Kubernetes store (--store kube): the Lease lives in the management cluster"
        );
    }
    let file = r.policy.as_deref().map(PolicyFile::open).transpose()?;
    let metrics = r.metrics_addr.map(serve_metrics).transpose()?;
    let identity = r.lease_identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "meshca".to_owned());
        format!("{host}-{}", std::process::id())
    });
    let owner = file
        .as_ref()
        .and_then(|f| f.policy().map(|p| format!("{}/{}", p.namespace, p.name)));
    let store = args.open_for(owner, r.leader_elect.then(|| identity.clone()))?;
    let poll = match (r.poll, &store) {
        (Some(p), _) => to_std(p),
        (None, Store::Kube(_)) => StdDuration::from_millis(200),
        (None, Store::Folder(_)) => StdDuration::from_secs(2),
    }
    .max(StdDuration::from_millis(50));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    stop_on_signals(&stop)?;
    let clock: std::sync::Arc<dyn Clock> = match &r.clock_file {
        Some(f) => std::sync::Arc::new(FileClock::open(f)?),
        None => std::sync::Arc::new(SystemClock),
    };
    let dashboards = r
        .http
        .map(|addr| serve_dashboard(addr, std::sync::Arc::clone(&clock)))
        .transpose()?;
    let leadership = match (&store, r.leader_elect) {
        (Store::Kube(k), true) => {
            let client = k.client(&mgmt).ok_or_else(|| {
                anyhow::anyhow!("the management cluster {mgmt:?} is not configured")
            })?;
            let cfg = LeaseConfig {
                name: r.lease_name.clone(),
                namespace: r.lease_namespace.clone(),
                identity: identity.clone(),
                duration: to_std(r.lease_duration).max(StdDuration::from_secs(1)),
            };
            let l = Leadership::start(client, k.handle(), cfg);
            println!(
                "waiting for lease {}/{} as {identity}",
                r.lease_namespace, r.lease_name
            );
            stdout_flush();
            if !l.wait_until_leader(&stop) {
                l.release();
                return stopped();
            }
            println!(
                "leading: lease {}/{} held by {identity}",
                r.lease_namespace, r.lease_name
            );
            stdout_flush();
            Some(l)
        }
        _ => None,
    };
    if let Some(m) = &metrics {
        m.set_leader(true);
    }
    // A leader that cannot renew in time stops: its store refuses writes from that moment, and
    // the process ends so that it campaigns afresh (as client-go's leaders do).
    let lost = std::sync::Arc::new(AtomicBool::new(false));
    if let Some(l) = &leadership {
        let (l, stop, lost) = (
            l.clone(),
            std::sync::Arc::clone(&stop),
            std::sync::Arc::clone(&lost),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // A stop asked for meanwhile is no loss: the release after it ends the lead.
                if !l.is_leader() && !stop.load(Ordering::SeqCst) {
                    lost.store(true, Ordering::SeqCst);
                    stop.store(true, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(StdDuration::from_millis(50));
            }
        });
    }
    let guarded = leadership
        .as_ref()
        .map(|l| LeaderOnly::new(store.as_dyn(), l.clone()));
    let target: &dyn SecretStore = match &guarded {
        Some(g) => g,
        None => store.as_dyn(),
    };
    let (source, mut status): (Box<dyn PolicySource + '_>, _) = match (file, &store) {
        (Some(f), _) => (Box::new(f), None),
        (None, Store::Kube(k)) => {
            let (source, writer) = meshca_kube::policies::watch_policies(k, identity.clone())
                .map_err(|e| anyhow::anyhow!(e))?;
            (Box::new(source), Some(writer))
        }
        (None, Store::Folder(_)) => {
            unreachable!("checked above: resources need the Kubernetes store")
        }
    };
    let from_file = status.is_none();
    let cfg = ManagerConfig {
        mgmt: mgmt.clone(),
        only: args.only(),
        resync: r.resync.max(time::Duration::SECOND),
        poll,
    };
    let mut manager = Manager::with_source(target, clock.as_ref(), source, cfg);
    let mut failure: Option<anyhow::Error> = None;
    let mut watched = std::collections::BTreeSet::new();
    manager.run(&stop, &mut |e| {
        // Metrics and the live page first: once a reconcile's line is printed, both show it.
        if let Some(m) = &metrics {
            m.record(e, target, &mgmt);
        }
        if let Some(d) = &dashboards {
            d.record(e, target, &mgmt, &args.only());
        }
        let printed = print_event(e, from_file);
        if let Store::Kube(k) = &store {
            if let Event::Reconciled { policy, .. } | Event::Loaded(policy) = e
                && let Some(p) = &policy.policy
                && watched.insert((p.namespace.clone(), p.name.clone()))
                && let Err(err) = watch_policy_secrets(k, p, &mgmt)
            {
                // Reads still work without the watch, one request each.
                println!("meshca: warning: {err}");
            }
            if let Some(w) = status.as_mut() {
                w.record(e, target, &mgmt, clock.now());
            }
        }
        if let Err(e) = printed {
            // stdout is gone: nobody is listening; stop.
            failure.get_or_insert(e.into());
            stop.store(true, Ordering::SeqCst);
        }
        stdout_flush();
    });
    if let Some(l) = &leadership {
        l.release();
    }
    if lost.load(Ordering::SeqCst) {
        let (holder, error) = leadership.map(|l| l.observed()).unwrap_or_default();
        anyhow::bail!(
            "lost lease {}/{} ({}): stopped acting",
            r.lease_namespace,
            r.lease_name,
            error.unwrap_or_else(
                || holder.map_or("not renewed in time".to_owned(), |h| format!(
                    "now held by {h}"
                ))
            )
        );
    }
    match failure {
        Some(e) => Err(e),
        None => stopped(),
    }
}

/// Serves the manager's metrics at `addr` (`/metrics`) from a thread of their own, and says
/// where on stdout.
fn serve_metrics(
    addr: std::net::SocketAddr,
) -> anyhow::Result<std::sync::Arc<meshca_trust::metrics::TrustMetrics>> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: cannot listen: {e}"))?;
    let bound = listener.local_addr()?;
    let metrics = std::sync::Arc::new(meshca_trust::metrics::TrustMetrics::new());
    let m = std::sync::Arc::clone(&metrics);
    let site = move |path: &str| match path {
        "/metrics" => Some(meshca_http::Page::metrics(m.render())),
        _ => None,
    };
    meshca_http::spawn(listener, std::sync::Arc::new(site), Default::default())?;
    println!("metrics on {bound}");
    stdout_flush();
    Ok(metrics)
}

/// Serves the trust dashboard at `addr` from a thread of its own, each page rendered at its
/// request by `clock`'s time, and says where on stdout.
fn serve_dashboard(
    addr: std::net::SocketAddr,
    clock: std::sync::Arc<dyn meshca_trust::manager::Clock>,
) -> anyhow::Result<std::sync::Arc<meshca_trust::dashboard::LiveDashboards>> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("--http {addr}: cannot listen: {e}"))?;
    let bound = listener.local_addr()?;
    let live = std::sync::Arc::new(meshca_trust::dashboard::LiveDashboards::new());
    let l = std::sync::Arc::clone(&live);
    let site = move |path: &str| {
        l.page(path, clock.now())
            .map(|html| meshca_http::Page::new("text/html; charset=utf-8", html))
    };
    meshca_http::spawn(listener, std::sync::Arc::new(site), Default::default())?;
    println!("dashboard on http://{bound}/");
    stdout_flush();
    Ok(live)
}

/// Sets `stop` on SIGINT or SIGTERM.
fn stop_on_signals(stop: &std::sync::Arc<std::sync::atomic::AtomicBool>) -> anyhow::Result<()> {
    let stop = std::sync::Arc::clone(stop);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut term) => tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                },
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        });
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    Ok(())
}

fn print_event(e: &meshca_trust::manager::Event<'_>, from_file: bool) -> std::io::Result<()> {
    use meshca_trust::manager::Event;
    let mut stdout = std::io::stdout().lock();
    let prefix = |id: &str| {
        if from_file {
            String::new()
        } else {
            format!("policy {id}: ")
        }
    };
    match e {
        Event::Reconciled {
            policy,
            at,
            report,
            next,
            ..
        } => {
            let changed: Vec<_> = report
                .clusters
                .iter()
                .filter(|(_, o)| *o != Outcome::Fresh)
                .cloned()
                .collect();
            print_report(
                &mut stdout,
                &Report {
                    clusters: changed,
                    ..(*report).clone()
                },
            )?;
            let fresh = report
                .clusters
                .iter()
                .filter(|(_, o)| *o == Outcome::Fresh)
                .count();
            let failed = report.clusters.iter().filter(|(_, o)| !o.is_ok()).count();
            writeln!(
                stdout,
                "{}reconciled at {}: {} cluster(s) fresh{}; next check {}",
                prefix(&policy.id),
                meshca_pki::error::show_time(*at),
                fresh,
                if failed > 0 {
                    format!(", {failed} failed")
                } else {
                    String::new()
                },
                meshca_pki::error::show_time(*next)
            )
        }
        Event::Failed { policy, error, .. } => {
            writeln!(stdout, "meshca: error: {}{error}", prefix(&policy.id))
        }
        Event::Loaded(p) if from_file => {
            let _ = p;
            writeln!(stdout, "policy changed: reloaded")
        }
        Event::Loaded(p) => writeln!(
            stdout,
            "policy {} loaded (generation {})",
            p.id,
            p.generation.unwrap_or_default()
        ),
        Event::Refused(p) if from_file => writeln!(
            stdout,
            "meshca: error: policy not reloaded, keeping the last good one: {}",
            p.refused.as_deref().unwrap_or_default()
        ),
        Event::Refused(p) => writeln!(
            stdout,
            "meshca: error: {} (nothing is written for it)",
            p.refused.as_deref().unwrap_or_default()
        ),
        Event::Removed(p) => writeln!(stdout, "policy {} removed: no longer applied", p.id),
        Event::Conflict {
            policy,
            clusters,
            with,
        } => writeln!(
            stdout,
            "meshca: error: policy {}: cluster(s) {} also covered by {}: left alone until one policy covers each",
            policy.id,
            clusters.join(", "),
            with.join(", ")
        ),
    }
}

/// Watches what a reconcile under `policy` reads: `istio-system` in every workload cluster and
/// the policy's namespaces in the management cluster, so that reads come from memory.
fn watch_policy_secrets(
    store: &meshca_kube::KubeStore,
    policy: &TrustPolicy,
    mgmt: &str,
) -> anyhow::Result<()> {
    let mut scopes: Vec<(String, String)> = store
        .clusters()?
        .into_iter()
        .filter(|c| c != mgmt)
        .map(|c| (c, meshca_trust::reconcile::ISTIO_NAMESPACE.to_owned()))
        .collect();
    for (ns, _) in meshca_trust::reconcile::secrets_of(policy, None) {
        scopes.push((mgmt.to_owned(), ns));
    }
    scopes.sort();
    scopes.dedup();
    store.watch(&scopes)?;
    Ok(())
}

/// `trust crds`: the definitions, printed as one YAML stream or written one file each.
fn crds(c: &CrdsArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    use meshca_kube::crd::{Flavor, definition_yaml};
    for (i, flavor) in Flavor::ALL.into_iter().enumerate() {
        let yaml = definition_yaml(flavor);
        match &c.dir {
            Some(dir) => {
                let path = dir.join(format!("{}.yaml", flavor.crd_name()));
                std::fs::write(&path, &yaml)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                writeln!(out, "wrote {}", path.display())?;
            }
            None => {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                write!(out, "{yaml}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stopped() -> anyhow::Result<ExitCode> {
    println!("stopped");
    stdout_flush();
    Ok(ExitCode::SUCCESS)
}

fn stdout_flush() {
    let _ = std::io::stdout().flush();
}

fn to_std(d: time::Duration) -> StdDuration {
    StdDuration::try_from(d).unwrap_or(StdDuration::ZERO)
}
