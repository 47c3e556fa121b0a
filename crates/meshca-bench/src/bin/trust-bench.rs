//! `meshca trust`'s reconciler on many clusters: a folder store (the Kubernetes secret-mount
//! layout, on this machine's disk) with N empty cluster folders and a generated-root policy
//! (`trust.meshca/v1alpha1`), timed from nothing (every cluster gets its first `cacerts`), as a
//! no-op (every cluster fresh) twice: in the same process, as `trust run` reconciles again with
//! the bundles it verified kept, and as a new process (`trust apply`) that verifies every bundle;
//! reading every `cacerts` without parsing it (the store's share of a no-op), and as a forced
//! rotation of every cluster. The same steps on a memory store show
//! what the crypto alone costs. Each figure is the median of several runs, with the process's
//! CPU time (user + sys, every thread) beside the wall time, so that the use of every core is
//! visible. Runs once with ECDSA P-256 keys and once with RSA-4096 (on fewer clusters: one
//! RSA-4096 key takes about a second to find). Prints a Markdown table.
//!
//! The policy's root is generated once per key type, outside the timings, and copied into each
//! run's fresh store: "from nothing" times the clusters, not the root.
//!
//! `--settle S` syncs the disk and waits S seconds before every folder run. On
//! ext4 without a journal (this machine's disk) a new inode skips, one by one, every free inode
//! of its group deleted in the last 5 s, or in the last 305 s while that part of the inode table
//! is not yet written back; so right after a run whose forced rotation deleted 5,000 files, the
//! next run's file creations each step over those 5,000 inodes first, and take seconds instead of
//! milliseconds. `--settle 310` times every run on a disk as a reconcile minutes after the last
//! one finds it. Stores are removed only at the end for the same reason (`--keep-stores` leaves
//! them, and says where). Without waiting, each run's store is a new folder in a parent marked
//! as a top of folder trees (`chattr +T`, where the file system has it): ext4 then places each
//! store, as it places top-level folders, in a group of inodes chosen afresh, which the last
//! run's deletions most likely did not touch.
//!
//! Usage: trust-bench [RUNS] [CLUSTERS] [RSA_CLUSTERS] [--only ecdsa|rsa] [--store folder|memory]
//!                    [--settle SECONDS] [--keep-stores]
//! (defaults 5, 1000, 50; both key types, both stores; no settling; stores removed at the end)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_store::SecretKey;
use std::path::Path;
use std::time::{Duration, Instant};

use meshca_bench::{median, range};
use meshca_pki::CacertsBundle;
use meshca_trust::{
    BundleCache, FolderStore, MemoryStore, Outcome, SecretStore, TrustPolicy, reconcile,
    reconcile_with,
};
use time::OffsetDateTime;

const MGMT: &str = "mgmt";
const POLICY_NAMESPACE: &str = "gloo-mesh";
const ROOT_SECRET: &str = "bench.root-ca";

/// The goals of the product issue, for the ECDSA P-256 rows.
const GOAL_FROM_NOTHING: Duration = Duration::from_secs(1);
const GOAL_NO_OP: Duration = Duration::from_millis(100);

fn policy_yaml(key: &str) -> String {
    format!(
        "apiVersion: trust.meshca/v1alpha1
kind: RootTrustPolicy
metadata:
  name: bench
  namespace: {POLICY_NAMESPACE}
spec:
  config:
    mgmtServerCa:
      generated:
        ttlDays: 3650
    intermediateCertOptions:
      ttlDays: 30
      secretRotationGracePeriodRatio: 0.1
{key}"
    )
}

struct Scenario {
    name: &'static str,
    policy: TrustPolicy,
    clusters: usize,
}

/// One timed step: wall time, and CPU time of the whole process.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    sys: Duration,
}

/// What is timed, in order, on each store.
const STEPS: [&str; 5] = [
    "from nothing",
    "no-op (`trust run`)",
    "no-op (new process)",
    "read only (1 thread)",
    "forced rotation",
];

/// Samples per step, in [`STEPS`] order.
type Samples = [Vec<Sample>; 5];

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut option = |name: &str| match args.iter().position(|a| a == name) {
        Some(i) => {
            let v = args.get(i + 1).cloned().expect("a value after the option");
            args.drain(i..=i + 1);
            Some(v)
        }
        None => None,
    };
    let only = option("--only");
    let only_store = option("--store");
    let settle = Duration::from_secs(
        option("--settle")
            .map(|s| s.parse().expect("--settle SECONDS"))
            .unwrap_or(0),
    );
    let keep_stores = match args.iter().position(|a| a == "--keep-stores") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let num = |i: usize, default: usize| -> usize {
        args.get(i)
            .map(|a| a.parse().expect("a number"))
            .unwrap_or(default)
    };
    let runs = num(0, 5);
    let clusters = num(1, 1000);
    let rsa_clusters = num(2, 50);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());

    let mut scenarios = Vec::new();
    if only.as_deref() != Some("rsa") {
        scenarios.push(Scenario {
            name: "ECDSA P-256",
            policy: TrustPolicy::from_yaml(
                &policy_yaml("      keyType: ecdsa-p256\n"),
                "bench-ecdsa.yaml",
            )
            .unwrap(),
            clusters,
        });
    }
    if only.as_deref() != Some("ecdsa") {
        scenarios.push(Scenario {
            name: "RSA-4096",
            policy: TrustPolicy::from_yaml(
                &policy_yaml("      keyType: rsa\n      rsaKeySizeBytes: 4096\n"),
                "bench-rsa.yaml",
            )
            .unwrap(),
            clusters: rsa_clusters,
        });
    }

    let stores: Vec<&str> = match only_store.as_deref() {
        Some(s) => vec![if s == "memory" { "memory" } else { "folder" }],
        None => vec!["folder", "memory"],
    };
    // Every folder store is kept until the end: deleting thousands of files between runs would
    // make the next run's file creations slower on some file systems (ext4 without a journal
    // skips recently deleted inodes one by one).
    let mut keep = Vec::new();
    let base = tempfile::Builder::new()
        .prefix("meshca-trust-bench")
        .tempdir()
        .unwrap();
    let spread = std::process::Command::new("chattr")
        .arg("+T")
        .arg(base.path())
        .output()
        .is_ok_and(|o| o.status.success());
    if !spread {
        eprintln!("note: stores are not spread over inode groups (chattr +T not available here)");
    }
    let mut rows: Vec<(&Scenario, &str, Samples)> = Vec::new();
    for sc in &scenarios {
        let root = make_root(&sc.policy);
        let first = rows.len();
        for store in &stores {
            rows.push((sc, store, Samples::default()));
        }
        for run in 0..runs {
            let mut line = format!("{} run {}/{runs}:", sc.name, run + 1);
            for (_, store, samples) in &mut rows[first..] {
                let out = if *store == "folder" {
                    if !settle.is_zero() {
                        rustix::fs::sync();
                        std::thread::sleep(settle);
                    }
                    let (dir, out) = folder_run(base.path(), &sc.policy, &root, sc.clusters);
                    keep.push(dir);
                    out
                } else {
                    memory_run(&sc.policy, &root, sc.clusters)
                };
                line += &format!(" {store}");
                for (step, sample) in samples.iter_mut().zip(out) {
                    line += &format!(" {}", show(sample.wall));
                    step.push(sample);
                }
            }
            eprintln!("{line}");
        }
    }
    if keep_stores {
        for dir in keep {
            eprintln!("kept {}", dir.keep().display());
        }
        let _ = base.keep();
    } else {
        drop(keep);
        drop(base);
    }

    println!(
        "| keys | clusters | store | step | wall median [min–max] | CPU median (sys) | CPU / wall | per cluster |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (sc, store, s) in &rows {
        for (step, samples) in STEPS.iter().zip(s) {
            row(sc.name, sc.clusters, store, step, samples);
        }
    }
    println!(
        "\n{runs} runs each; {cores} cores; CPU is the process's user + sys time over all threads \
         (CPU / wall near {cores} means every core was busy)."
    );
    if let Some((sc, _, folder)) = rows.iter().find(|(sc, store, _)| {
        sc.name == "ECDSA P-256" && *store == "folder" && sc.clusters == 1000
    }) {
        let fresh = median(&walls(&folder[0]));
        let noop = median(&walls(&folder[1]));
        let cold = median(&walls(&folder[2]));
        println!(
            "\nGoals ({} clusters, ECDSA P-256, folder store): from nothing {} (goal ≤ {}, {}), \
             no-op {} in `trust run` (goal ≤ {}, {}); {} in a new process ({}).",
            sc.clusters,
            show(fresh),
            show(GOAL_FROM_NOTHING),
            met(fresh <= GOAL_FROM_NOTHING),
            show(noop),
            show(GOAL_NO_OP),
            met(noop <= GOAL_NO_OP),
            show(cold),
            met(cold <= GOAL_NO_OP),
        );
    }
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "not met" }
}

fn walls(s: &[Sample]) -> Vec<Duration> {
    s.iter().map(|s| s.wall).collect()
}

fn row(keys: &str, clusters: usize, store: &str, step: &str, samples: &[Sample]) {
    let wall = walls(samples);
    let cpu: Vec<Duration> = samples.iter().map(|s| s.cpu).collect();
    let sys: Vec<Duration> = samples.iter().map(|s| s.sys).collect();
    let (lo, hi) = range(&wall);
    let w = median(&wall);
    let c = median(&cpu);
    println!(
        "| {keys} | {clusters} | {store} | {step} | {} [{}–{}] | {} ({}) | {:.2} | {} |",
        show(w),
        show(lo),
        show(hi),
        show(c),
        show(median(&sys)),
        c.as_secs_f64() / w.as_secs_f64().max(1e-9),
        show(w / u32::try_from(clusters.max(1)).unwrap_or(u32::MAX)),
    );
}

fn show(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.001 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

/// The policy's root, made by a reconcile of a store without clusters.
fn make_root(policy: &TrustPolicy) -> meshca_store::SecretData {
    let store = MemoryStore::with_clusters(&[MGMT]);
    reconcile(&store, policy, MGMT, &[], &[], OffsetDateTime::now_utc()).unwrap();
    store
        .read(&SecretKey::new(MGMT, POLICY_NAMESPACE, ROOT_SECRET))
        .unwrap()
        .expect("the reconcile made the root")
}

fn cluster_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("cluster{i:04}")).collect()
}

/// The timed steps on a fresh folder store in a temporary folder.
fn folder_run(
    base: &Path,
    policy: &TrustPolicy,
    root: &meshca_store::SecretData,
    n: usize,
) -> (tempfile::TempDir, [Sample; 5]) {
    let dir = tempfile::tempdir_in(base).unwrap();
    let store = FolderStore::open(dir.path()).unwrap();
    store
        .replace(&SecretKey::new(MGMT, POLICY_NAMESPACE, ROOT_SECRET), root)
        .unwrap();
    for c in cluster_names(n) {
        std::fs::create_dir(dir.path().join(c)).unwrap();
    }
    let (out, at) = steps(&store, policy, n);
    check_one(&store, dir.path(), at);
    (dir, out)
}

fn memory_run(policy: &TrustPolicy, root: &meshca_store::SecretData, n: usize) -> [Sample; 5] {
    let mut names = cluster_names(n);
    names.push(MGMT.to_owned());
    let store = MemoryStore::with_clusters(&names);
    store
        .replace(&SecretKey::new(MGMT, POLICY_NAMESPACE, ROOT_SECRET), root)
        .unwrap();
    steps(&store, policy, n).0
}

/// The timed steps, and the time the last one ran at. The reconciles share one cache, as those
/// of `trust run` do, except the new process's no-op, which starts with none, as `trust apply` does.
fn steps(store: &dyn SecretStore, policy: &TrustPolicy, n: usize) -> ([Sample; 5], OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    let cache = BundleCache::new();
    let first = timed(|| reconcile_with(&cache, store, policy, MGMT, &[], &[], now).unwrap());
    expect(&first.1, n, |o| *o == Outcome::Created, "from nothing");
    let later = now + time::Duration::minutes(1);
    let noop = timed(|| reconcile_with(&cache, store, policy, MGMT, &[], &[], later).unwrap());
    expect(&noop.1, n, |o| *o == Outcome::Fresh, "no-op");
    let cold = timed(|| reconcile(store, policy, MGMT, &[], &[], later).unwrap());
    expect(
        &cold.1,
        n,
        |o| *o == Outcome::Fresh,
        "no-op in a new process",
    );
    // The store's share of a no-op: every cluster's cacerts read, nothing parsed.
    let names = cluster_names(n);
    let read = timed(|| {
        for c in &names {
            assert!(
                store
                    .read(&SecretKey::new(c, "istio-system", "cacerts"))
                    .unwrap()
                    .is_some()
            );
        }
    });
    let all = ["*".to_owned()];
    let forced = timed(|| reconcile_with(&cache, store, policy, MGMT, &[], &all, later).unwrap());
    expect(
        &forced.1,
        n,
        |o| matches!(o, Outcome::Rotated(_)),
        "forced rotation",
    );
    ([first.0, noop.0, cold.0, read.0, forced.0], later)
}

fn expect(report: &meshca_trust::Report, n: usize, ok: impl Fn(&Outcome) -> bool, step: &str) {
    assert_eq!(report.clusters.len(), n, "{step}: every cluster reported");
    if let Some((c, o)) = report.clusters.iter().find(|(_, o)| !ok(o)) {
        panic!("{step}: {c} came out {o:?}");
    }
}

/// What the reconciler wrote loads as istiod would load it (outside the timings).
fn check_one(store: &FolderStore, dir: &Path, at: OffsetDateTime) {
    let data = store
        .read(&SecretKey::new("cluster0000", "istio-system", "cacerts"))
        .unwrap()
        .expect("cacerts written");
    CacertsBundle::from_files(&data, &dir.display().to_string(), at).unwrap();
}

fn timed<T>(f: impl FnOnce() -> T) -> (Sample, T) {
    let (cpu0, sys0) = (process_cpu(), process_sys());
    let start = Instant::now();
    let out = f();
    let wall = start.elapsed();
    let sample = Sample {
        wall,
        cpu: process_cpu().saturating_sub(cpu0),
        sys: process_sys().saturating_sub(sys0),
    };
    (sample, out)
}

/// User + sys time of every thread of this process, finished ones included.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Sys time of this process from `/proc/self/stat` (clock-tick resolution).
fn process_sys() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    // stime is field 15 of the line, the 13th after the name.
    let ticks: u64 = after
        .split_whitespace()
        .nth(12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}
