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
    /// Run the manager on a simulated clock with simulated workloads and count broken moments.
    Simulate(SimulateArgs),
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
        if !self.is_kube() {
            if let Some(c) = self.clusters.iter().find(|c| c.contains('=')) {
                anyhow::bail!(
                    "--cluster {c}: NAME=CONTEXT is for the Kubernetes store (--store kube)"
                );
            }
            let dir = self.store.as_deref().unwrap_or_default();
            return Ok(Store::Folder(FolderStore::open(std::path::Path::new(dir))?));
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
            owner: Some(format!("{}/{}", policy.namespace, policy.name)),
        };
        Ok(Store::Kube(meshca_kube::KubeStore::connect(
            &sources, opts,
        )?))
    }
}

/// The store a command works on.
enum Store {
    Folder(FolderStore),
    Kube(meshca_kube::KubeStore),
}

impl Store {
    fn as_dyn(&self) -> &dyn SecretStore {
        match self {
            Store::Folder(s) => s,
            Store::Kube(s) => s,
        }
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Reconcile at least this often, even when nothing changed and nothing falls due.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    resync: time::Duration,
    /// How often to look at the store and the policy file for changes (default 2s for a folder;
    /// 200ms for Kubernetes, whose secrets are watched and looked at in memory).
    #[arg(long, value_parser = parse_duration)]
    poll: Option<time::Duration>,
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
    #[command(flatten)]
    common: Common,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
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
        Command::Simulate(s) => simulate_cmd(&s, now, &mut out),
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
    let failed = report.clusters.iter().filter(|(_, o)| !o.is_ok()).count();
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("meshca: error: {failed} cluster(s) failed; the others were reconciled");
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
    let report = meshca_trust::reconcile(store, &policy, mgmt, &only, &[], now)?;
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
    let (policy, store) = load(&s.common)?;
    let st = meshca_trust::status(
        store.as_dyn(),
        &policy,
        &s.common.store.mgmt_cluster,
        &s.common.store.only(),
        now,
    )?;
    match s.output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&st)?)?,
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
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?,
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

/// `trust run`: the library's manager ([`meshca_trust::manager`]) on the system clock, printing
/// what it does, until SIGINT or SIGTERM (seen between reconciles: a reconcile in progress is
/// never cut off).
fn run_loop(r: &RunArgs) -> anyhow::Result<ExitCode> {
    use meshca_trust::manager::{Event, Manager, ManagerConfig, SystemClock};
    use std::sync::atomic::{AtomicBool, Ordering};
    let (policy, store) = load(&r.common)?;
    let args = &r.common.store;
    let mgmt = args.mgmt_cluster.clone();
    let poll = match (r.poll, &store) {
        (Some(p), _) => to_std(p),
        (None, Store::Kube(_)) => StdDuration::from_millis(200),
        (None, Store::Folder(_)) => StdDuration::from_secs(2),
    }
    .max(StdDuration::from_millis(50));
    if let Store::Kube(k) = &store {
        watch_policy_secrets(k, &policy, &mgmt)?;
    }
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    {
        let stop = std::sync::Arc::clone(&stop);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            rt.block_on(async {
                let term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
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
            stop.store(true, Ordering::SeqCst);
        });
    }
    let cfg = ManagerConfig {
        mgmt: mgmt.clone(),
        only: args.only(),
        resync: r.resync.max(time::Duration::SECOND),
        poll,
    };
    let mut manager = Manager::new(store.as_dyn(), &SystemClock, &r.common.policy, cfg)?;
    let mut failure: Option<anyhow::Error> = None;
    manager.run(&stop, &mut |e| {
        let printed = print_event(e);
        if let (Event::PolicyReloaded, Store::Kube(k)) = (e, &store) {
            // The new policy may name secrets in other namespaces: watch them too.
            let watched =
                read_policy(&r.common.policy).and_then(|p| watch_policy_secrets(k, &p, &mgmt));
            if let Err(e) = watched {
                println!("meshca: error: {e}");
            }
        }
        if let Err(e) = printed {
            // stdout is gone: nobody is listening; stop.
            failure.get_or_insert(e.into());
            stop.store(true, Ordering::SeqCst);
        }
        stdout_flush();
    });
    match failure {
        Some(e) => Err(e),
        None => stopped(),
    }
}

fn print_event(e: &meshca_trust::manager::Event) -> std::io::Result<()> {
    use meshca_trust::manager::Event;
    let mut stdout = std::io::stdout().lock();
    match e {
        Event::Reconciled { at, report, next } => {
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
                    ..report.clone()
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
                "reconciled at {}: {} cluster(s) fresh{}; next check {}",
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
        Event::Failed { error, .. } => writeln!(stdout, "meshca: error: {error}"),
        Event::PolicyReloaded => writeln!(stdout, "policy changed: reloaded"),
        Event::PolicyRefused(e) => writeln!(
            stdout,
            "meshca: error: policy not reloaded, keeping the last good one: {e}"
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
