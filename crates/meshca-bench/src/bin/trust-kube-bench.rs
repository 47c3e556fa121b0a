//! `meshca trust`'s reconciler with the Kubernetes store, against real kube-apiservers on
//! loopback (`meshca_testkit::kube::ControlPlane`: one etcd, one API server per cluster): a
//! management cluster holding the seed's root secret (`my-root-trust-policy.gloo-mesh`, the root
//! copied into the four names) and N workload clusters with `istio-system`, under the seed's
//! policy in meshca's schema (`trust.meshca/v1alpha1`, so the key type can be chosen).
//!
//! Each round measures, in this order:
//! 1. **from nothing**: every `cacerts` (and the policy's records in the management cluster)
//!    deleted, then one reconcile on a new store without watches, as `trust apply` runs;
//! 2. **forced rotation** of every cluster, on a new store, as `trust rotate-intermediates`;
//! 3. **no-op, direct**: a new store without watches, as `trust apply` finds every cluster fresh;
//! 4. **no-op, watched**: a store watching `istio-system` of every workload cluster and the
//!    policy's namespaces of the management cluster (what `trust run` watches), once its watches
//!    have listed: a first reconcile with an empty bundle cache, then another with the cache kept,
//!    as `trust run` reconciles again and again; then a forced rotation in that store (reads from
//!    memory, connections open: what `trust run` does when every intermediate falls due);
//! 5. **the API server's own latency** for one Secret: 50 sequential `replace` calls (PUT with a
//!    resourceVersion precondition) of a secret with a real `cacerts`' keys, sizes, labels and
//!    annotations, through a kube `Client` directly, on the first workload cluster; 50 GETs;
//!    20 first GETs of new clients (a TCP connection and a TLS handshake each, as a new store
//!    pays once per cluster); and 20 first PUTs on a client's second connection while a watch
//!    holds its first (as a watched store's first write to a cluster), with kube's client and
//!    with the same client's connections set to TCP_NODELAY;
//! 6. **the crypto alone**: from nothing and a forced rotation on a `MemoryStore` holding the same
//!    clusters, the same root and the same policy.
//!
//! Every reconcile's secret requests are counted by the API servers themselves: the sum over all
//! of them of `apiserver_request_total{resource="secrets"}` by verb, read from `/metrics` before
//! and after (watches, which are counted when they end, are left out).
//!
//! Then (7.) the real `meshca trust run` (release build, beside this harness or `MESHCA_BIN`) is
//! started against the same control plane, every `cacerts` deleted first; once it has made them
//! and found them fresh, its VmRSS and VmHWM are sampled for 10 s, and its secret requests counted
//! meanwhile (`--resync 1s`: it reconciles every second).
//!
//! The goal this measures: a forced rotation of every cluster costs at most 2× the API server's
//! own write latency per cluster, plus the crypto; printed as
//! (forced-rotation wall − crypto wall) / (N × median PUT latency). And the manager under 50 MB RSS.
//!
//! `MESHCA_BENCH_TRACE=1` prints every store call of steps 1 to 4 with its start and duration.
//!
//! Usage: trust-kube-bench [CLUSTERS] [ROUNDS] [KEY_TYPE] [--no-manager]
//! (defaults 10 workload clusters, at least 10; 5 rounds; KEY_TYPE ecdsa-p256, ecdsa-p384, rsa
//! (= rsa-4096), rsa-2048, rsa-3072 or rsa-4096; the root has the same key type)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret as KubeSecret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use meshca_bench::{median, range};
use meshca_kube::{ClusterSources, KubeOptions, KubeStore};
use meshca_store::{SecretData, SecretKey};
use meshca_testkit::kube::ControlPlane;
use meshca_trust::{
    BundleCache, MemoryStore, Outcome, Report, SecretStore, TrustPolicy, reconcile, reconcile_with,
};
use time::OffsetDateTime;

const MGMT: &str = "mgmt";
const GLOO: &str = "gloo-mesh";
const ISTIO: &str = "istio-system";
const CACERTS: &str = "cacerts";
const POLICY_NAME: &str = "root-trust-policy";
const ROOT_SECRET: &str = "my-root-trust-policy.gloo-mesh";
/// The secret the yardstick writes: a copy of a real `cacerts`, next to it.
const YARDSTICK: &str = "cacerts-yardstick";
/// Sequential calls per yardstick (PUT and GET each).
const CALLS: usize = 50;
/// How long the manager is watched once it has reconciled.
const MANAGER_WINDOW: Duration = Duration::from_secs(10);

/// A forced rotation may cost this many times N × the API server's PUT latency, plus the crypto.
const GOAL_RATIO: f64 = 2.0;
/// The manager's resident memory.
const GOAL_RSS_MB: f64 = 50.0;

/// The seed's policy (seed 001), in meshca's schema so that the key type can be set.
fn policy_yaml(key: &str) -> String {
    format!(
        "apiVersion: trust.meshca/v1alpha1
kind: RootTrustPolicy
metadata:
  name: {POLICY_NAME}
  namespace: {GLOO}
spec:
  config:
    intermediateCertOptions:
      secretRotationGracePeriodRatio: 0.1
      ttlDays: 1
{key}    mgmtServerCa:
      secretRef:
        name: {ROOT_SECRET}
        namespace: {GLOO}
"
    )
}

/// The policy lines of a key type argument.
fn key_lines(arg: &str) -> String {
    let (kind, bits) = match arg {
        "rsa" | "rsa-4096" => ("rsa", Some(4096)),
        "rsa-2048" => ("rsa", Some(2048)),
        "rsa-3072" => ("rsa", Some(3072)),
        other => (other, None),
    };
    let mut s = format!("      keyType: {kind}\n");
    if let Some(b) = bits {
        s += &format!("      rsaKeySizeBytes: {b}\n");
    }
    s
}

/// One timed reconcile (or call): wall time, this process's CPU time, the API servers' secret
/// requests by verb.
#[derive(Clone, Default)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    requests: BTreeMap<String, f64>,
}

/// What is measured each round, in order.
const STEPS: [&str; 13] = [
    "from nothing (new store, as `trust apply`)",
    "forced rotation (new store, as `trust rotate-intermediates`)",
    "no-op, direct (new store, as `trust apply`)",
    "no-op, watched, first reconcile (empty bundle cache)",
    "no-op, watched (as `trust run`, cache kept)",
    "forced rotation, watched store (as `trust run` when all fall due)",
    "crypto alone: from nothing (memory store)",
    "crypto alone: forced rotation (memory store)",
    "API server alone: one Secret PUT (median of 50)",
    "API server alone: one Secret GET (median of 50)",
    "API server alone: first GET of a new client (TCP + TLS; median of 20)",
    "API server alone: first PUT on a client's 2nd connection, its 1st held by a watch (median of 20)",
    "API server alone: the same, the client's connections with TCP_NODELAY (median of 20)",
];
const FROM_NOTHING: usize = 0;
const FORCED: usize = 1;
const WATCHED_AGAIN: usize = 4;
const WATCHED_FORCED: usize = 5;
const CRYPTO_FROM_NOTHING: usize = 6;
const CRYPTO_FORCED: usize = 7;
const PUT: usize = 8;
const NEW_CLIENT_GET: usize = 10;
const WATCHED_PUT: usize = 11;
const WATCHED_PUT_NODELAY: usize = 12;
/// First GETs of new clients per round.
const NEW_CLIENTS: usize = 20;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let manager = match args.iter().position(|a| a == "--no-manager") {
        Some(i) => {
            args.remove(i);
            false
        }
        None => true,
    };
    let n: usize = args
        .first()
        .map(|a| a.parse().expect("CLUSTERS is a number"))
        .unwrap_or(10);
    let rounds: usize = args
        .get(1)
        .map(|a| a.parse().expect("ROUNDS is a number"))
        .unwrap_or(5)
        .max(1);
    let key_arg = args.get(2).cloned().unwrap_or_else(|| "ecdsa-p256".into());
    assert!(
        n >= 10,
        "CLUSTERS: at least 10 workload clusters (the goal is about many clusters)"
    );
    let policy_text = policy_yaml(&key_lines(&key_arg));
    let policy =
        TrustPolicy::from_yaml(&policy_text, "policy.yaml").expect("the bench's policy is valid");
    let meshca = std::env::var_os("MESHCA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(meshca_bench::meshca_binary);
    if manager {
        assert!(
            meshca.exists(),
            "{} not found: build it first (cargo build --release -p meshca), set MESHCA_BIN, \
             or pass --no-manager",
            meshca.display()
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let names: Vec<String> = (1..=n).map(|i| format!("cluster{i:02}")).collect();

    // The root, made once outside the timings, with the intermediates' key type.
    let root = make_root(&key_lines(&key_arg));

    let mut all: Vec<&str> = vec![MGMT];
    all.extend(names.iter().map(String::as_str));
    eprintln!(
        "starting the control plane: etcd and {} API servers",
        all.len()
    );
    let cp = ControlPlane::start(&all);
    let startup = cp.startup_time();
    let memory_at_start = process_memory(&cp);
    eprintln!("control plane ready in {}", show(startup));

    let work = tempfile::Builder::new()
        .prefix("meshca-trust-kube-bench")
        .tempdir()
        .expect("a temporary folder");
    let policy_file = work.path().join("policy.yaml");
    std::fs::write(&policy_file, &policy_text).expect("the policy file is written");

    let sources = ClusterSources {
        kubeconfig: Some(cp.kubeconfig().to_owned()),
        mgmt_context: Some(MGMT.into()),
        clusters: names.iter().map(|c| (c.clone(), c.clone())).collect(),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let clients = Clients::connect(&rt, &sources);
    clients.seed(&names, &root);

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); STEPS.len()];
    let mut sync_times = Vec::new();
    for round in 1..=rounds {
        let (out, synced) = kube_round(&clients, &sources, &policy, &names);
        sync_times.push(synced);
        let crypto = memory_round(&policy, &root, &names);
        let yardstick = clients.yardstick(&names[0]);
        let mut line = format!("round {round}/{rounds}:");
        for (i, s) in out.into_iter().chain(crypto).chain(yardstick).enumerate() {
            line += &format!(" {}", show(s.wall));
            samples[i].push(s);
        }
        eprintln!("{line}");
    }
    let memory_after = process_memory(&cp);

    let run =
        manager.then(|| run_manager(&clients, &cp, &meshca, &policy_file, &names, work.path()));

    // Results.
    println!(
        "{n} workload clusters + mgmt, {key_arg} intermediates (and root), {rounds} rounds, {cores} cores\n"
    );
    println!(
        "| step | wall median [min–max] | bench CPU median | secret requests, all API servers | per cluster: wall, requests |"
    );
    println!("|---|---|---|---|---|");
    for (step, s) in STEPS.iter().zip(&samples) {
        let walls: Vec<Duration> = s.iter().map(|s| s.wall).collect();
        let cpus: Vec<Duration> = s.iter().map(|s| s.cpu).collect();
        let (lo, hi) = range(&walls);
        let w = median(&walls);
        let reqs = median_requests(s);
        let is_call = step.starts_with("API server alone");
        let per = if is_call || step.starts_with("crypto") {
            if is_call {
                "–".to_owned()
            } else {
                format!("{}, –", show(w / count(n)))
            }
        } else {
            format!("{}, {:.2}", show(w / count(n)), total(&reqs) / n as f64)
        };
        println!(
            "| {step} | {} [{}–{}] | {} | {} | {per} |",
            show(w),
            show(lo),
            show(hi),
            if is_call {
                "–".to_owned()
            } else {
                show(median(&cpus))
            },
            if is_call || step.starts_with("crypto") {
                "–".to_owned()
            } else {
                show_requests(&reqs)
            },
        );
    }

    // The ratio, per round and of the medians.
    let ratio = |forced: Duration, crypto: Duration, put: Duration| {
        (forced.as_secs_f64() - crypto.as_secs_f64()) / (n as f64 * put.as_secs_f64().max(1e-9))
    };
    // Each round's ratio from that round's own figures; their median is the headline.
    let per_round = |step: usize| -> Vec<f64> {
        (0..rounds)
            .map(|r| {
                ratio(
                    samples[step][r].wall,
                    samples[CRYPTO_FORCED][r].wall,
                    samples[PUT][r].wall,
                )
            })
            .collect()
    };
    let med = |i: usize| median(&samples[i].iter().map(|s| s.wall).collect::<Vec<_>>());
    let from_nothing_ratio = ratio(med(FROM_NOTHING), med(CRYPTO_FROM_NOTHING), med(PUT));
    // With slow keys (RSA: a prime search of random length) the crypto's spread between rounds
    // can exceed what the API servers cost in all: the difference then measures nothing.
    let crypto_walls: Vec<Duration> = samples[CRYPTO_FORCED].iter().map(|s| s.wall).collect();
    let (clo, chi) = range(&crypto_walls);
    let measurable = chi - clo < med(PUT) * count(n);
    println!();
    if !measurable {
        println!(
            "The ratios below measure nothing: the crypto alone varies by {} between rounds \
             ({}–{}), more than {n} PUTs take ({}).",
            show(chi - clo),
            show(clo),
            show(chi),
            show(med(PUT) * count(n)),
        );
    }
    for (step, what) in [
        (FORCED, "Forced rotation, new store"),
        (
            WATCHED_FORCED,
            "Forced rotation, watched store (reads from memory, watches holding a connection)",
        ),
    ] {
        let rounds_ratio = per_round(step);
        let headline = median_f64(&rounds_ratio);
        let (lo, hi) = minmax(&rounds_ratio);
        println!(
            "{what}: (wall − crypto) / ({n} × PUT) = {headline:.2} (median of the rounds' own \
             ratios, {lo:.2}–{hi:.2}; from the medians: ({} − {}) / ({n} × {}) = {:.2}); \
             goal ≤ {GOAL_RATIO:.0}: {}.",
            show(med(step)),
            show(med(CRYPTO_FORCED)),
            show(med(PUT)),
            ratio(med(step), med(CRYPTO_FORCED), med(PUT)),
            if measurable {
                met(headline <= GOAL_RATIO)
            } else {
                "not measurable"
            },
        );
    }
    println!(
        "A new store's N reads and writes, at the yardstick's latencies: {n} × ({} first GET + {} PUT) \
         = {} plus the management cluster's requests.",
        show(med(NEW_CLIENT_GET)),
        show(med(PUT)),
        show((med(NEW_CLIENT_GET) + med(PUT)) * count(n)),
    );
    println!(
        "The first PUT on a client's second connection (a watch holding the first, as in the \
         watched store): {} with kube's client, {} with TCP_NODELAY.",
        show(med(WATCHED_PUT)),
        show(med(WATCHED_PUT_NODELAY)),
    );
    println!(
        "From nothing, the same way: ({} − {} crypto) / ({n} × {} PUT) = {from_nothing_ratio:.2}.",
        show(med(FROM_NOTHING)),
        show(med(CRYPTO_FROM_NOTHING)),
        show(med(PUT)),
    );
    println!(
        "Watched no-op: {} secret requests (goal 0: {}). Watches listed {} after the store was made \
         (median of the rounds).",
        total(&median_requests(&samples[WATCHED_AGAIN])),
        met(median_requests(&samples[WATCHED_AGAIN]).is_empty()),
        show(median(&sync_times)),
    );
    println!(
        "Control plane: ready in {} (certificates, etcd and {} API servers started in parallel, \
         every /readyz ok).",
        show(startup),
        all.len()
    );
    println!(
        "Memory of the control plane, VmRSS: at start {memory_at_start}; after the rounds {memory_after}."
    );
    if let Some(m) = run {
        println!(
            "\n`meshca trust run` ({n} clusters, --resync 1s): all {n} cacerts made and found fresh \
             {} after it started; then for {} s: VmRSS {:.1} MB steady (median; {:.1}–{:.1} MB), \
             VmHWM {:.1} MB peak (goal < {GOAL_RSS_MB:.0} MB: {}); {} reconciles, {} of CPU, \
             secret requests while idle: {} ({}).",
            show(m.converged),
            MANAGER_WINDOW.as_secs(),
            median_f64(&m.rss_mb),
            minmax(&m.rss_mb).0,
            minmax(&m.rss_mb).1,
            m.hwm_mb,
            met(m.hwm_mb < GOAL_RSS_MB),
            m.reconciles,
            show(m.cpu),
            show_requests(&m.requests),
            if m.requests.is_empty() {
                "flat"
            } else {
                "not flat"
            },
        );
    }
    drop(clients);
    drop(rt);
    drop(cp);
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "not met" }
}

fn count(n: usize) -> u32 {
    u32::try_from(n.max(1)).unwrap_or(u32::MAX)
}

fn median_f64(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        l if l % 2 == 1 => s[l / 2],
        l => (s[l / 2 - 1] + s[l / 2]) / 2.0,
    }
}

fn minmax(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// Per verb, the median over the rounds; verbs with a median of zero left out.
fn median_requests(samples: &[Sample]) -> BTreeMap<String, f64> {
    let mut verbs: Vec<&String> = samples.iter().flat_map(|s| s.requests.keys()).collect();
    verbs.sort();
    verbs.dedup();
    verbs
        .into_iter()
        .filter_map(|v| {
            let counts: Vec<f64> = samples
                .iter()
                .map(|s| s.requests.get(v).copied().unwrap_or(0.0))
                .collect();
            let m = median_f64(&counts);
            (m > 0.0).then(|| (v.clone(), m))
        })
        .collect()
}

/// Requests of every verb (0 when none: an empty sum of floats is -0).
fn total(r: &BTreeMap<String, f64>) -> f64 {
    r.values().fold(0.0, |a, b| a + b)
}

fn show_requests(r: &BTreeMap<String, f64>) -> String {
    if r.is_empty() {
        return "0".to_owned();
    }
    let total = total(r);
    let parts: Vec<String> = r.iter().map(|(v, c)| format!("{v} {c}")).collect();
    format!("{total}: {}", parts.join(", "))
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

/// The policy's root, made by a reconcile of a memory store under a generated-root policy with
/// the same key type, as seed 001 has it: the root certificate in `ca-cert.pem`,
/// `cert-chain.pem` and `root-cert.pem`, its key in `ca-key.pem`.
fn make_root(key: &str) -> SecretData {
    let maker = TrustPolicy::from_yaml(
        &format!(
            "apiVersion: trust.meshca/v1alpha1
kind: RootTrustPolicy
metadata:
  name: root-maker
  namespace: {GLOO}
spec:
  config:
    mgmtServerCa:
      generated:
        ttlDays: 3650
    intermediateCertOptions:
{key}"
        ),
        "root-maker.yaml",
    )
    .expect("the root maker's policy is valid");
    let store = MemoryStore::with_clusters(&[MGMT]);
    reconcile(&store, &maker, MGMT, &[], &[], OffsetDateTime::now_utc()).expect("the root is made");
    store
        .read(&SecretKey::new(MGMT, GLOO, "root-maker.root-ca"))
        .expect("the memory store reads")
        .expect("the reconcile made the root")
}

/// A kube client per cluster, for what the harness does beside the store: seeding, resetting,
/// reading `/metrics`, the yardstick.
struct Clients<'rt> {
    rt: &'rt tokio::runtime::Runtime,
    /// (cluster, client), mgmt first.
    all: Vec<(String, kube::Client)>,
    /// (cluster, its client's configuration), to make new clients.
    configs: Vec<(String, kube::Config)>,
}

impl<'rt> Clients<'rt> {
    fn connect(rt: &'rt tokio::runtime::Runtime, sources: &ClusterSources) -> Self {
        let configs = rt
            .block_on(meshca_kube::clusters::resolve(
                sources,
                MGMT,
                Duration::from_secs(10),
            ))
            .expect("the kubeconfig's contexts resolve");
        let _in_rt = rt.enter();
        let all = configs
            .iter()
            .map(|c| {
                let client = kube::Client::try_from(c.config.clone()).expect("a kube client");
                (c.name.clone(), client)
            })
            .collect();
        let configs = configs.into_iter().map(|c| (c.name, c.config)).collect();
        Clients { rt, all, configs }
    }

    fn client(&self, cluster: &str) -> kube::Client {
        self.all
            .iter()
            .find(|(c, _)| c == cluster)
            .map(|(_, c)| c.clone())
            .expect("a cluster of the control plane")
    }

    fn secrets(&self, cluster: &str, ns: &str) -> Api<KubeSecret> {
        Api::namespaced(self.client(cluster), ns)
    }

    /// What Gloo and Istio would have installed, and seed 001's root secret.
    fn seed(&self, names: &[String], root: &SecretData) {
        let pp = PostParams::default();
        self.rt.block_on(async {
            let mut namespaces = vec![(MGMT, GLOO)];
            namespaces.extend(names.iter().map(|c| (c.as_str(), ISTIO)));
            for (cluster, ns) in namespaces {
                let api: Api<Namespace> = Api::all(self.client(cluster));
                let mut obj = Namespace::default();
                obj.metadata.name = Some(ns.to_owned());
                api.create(&pp, &obj).await.expect("namespace created");
            }
            let mut secret = KubeSecret {
                type_: Some("Opaque".into()),
                data: Some(
                    root.iter()
                        .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.clone())))
                        .collect(),
                ),
                ..Default::default()
            };
            secret.metadata.name = Some(ROOT_SECRET.into());
            self.secrets(MGMT, GLOO)
                .create(&pp, &secret)
                .await
                .expect("the root secret is created");
        });
    }

    /// Back to nothing: no `cacerts` anywhere, and nothing of the policy's in the management
    /// cluster but its root (the records of verified bundles go too).
    fn reset(&self, names: &[String]) {
        let dp = DeleteParams::default();
        self.rt.block_on(async {
            for c in names {
                let _ = self.secrets(c, ISTIO).delete(CACERTS, &dp).await;
            }
            let mgmt = self.secrets(MGMT, GLOO);
            let list = mgmt
                .list(&ListParams::default())
                .await
                .expect("gloo-mesh's secrets listed");
            for s in list.items {
                let name = s.metadata.name.unwrap_or_default();
                if name != ROOT_SECRET {
                    mgmt.delete(&name, &dp).await.expect("deleted");
                }
            }
        });
    }

    /// `apiserver_request_total{resource="secrets"}` by verb, summed over every API server
    /// (WATCH left out: a watch is counted when it ends).
    fn secret_requests(&self) -> BTreeMap<String, f64> {
        let texts: Vec<String> = self.rt.block_on(async {
            let handles: Vec<_> = self
                .all
                .iter()
                .map(|(_, c)| {
                    let c = c.clone();
                    tokio::spawn(async move {
                        let req = http::Request::get("/metrics")
                            .body(Vec::new())
                            .expect("a request");
                        c.request_text(req).await.expect("/metrics answers")
                    })
                })
                .collect();
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.expect("the metrics task ends"));
            }
            out
        });
        let mut by_verb = BTreeMap::new();
        for t in &texts {
            for s in meshca_testkit::kube::samples(t, "apiserver_request_total") {
                let verb = s.labels.get("verb");
                if s.labels.get("resource") == "secrets" && verb != "WATCH" {
                    *by_verb.entry(verb.to_owned()).or_insert(0.0) += s.value;
                }
            }
        }
        by_verb
    }

    /// The API server's own latency for a cacerts-sized Secret on `cluster`: the median of
    /// [`CALLS`] sequential PUTs (each naming the resourceVersion the last one returned, and
    /// changing one byte of the key, as a rotation changes the data), then of as many GETs.
    fn yardstick(&self, cluster: &str) -> [Sample; 5] {
        let api = self.secrets(cluster, ISTIO);
        let pp = PostParams {
            field_manager: Some("meshca".into()),
            ..Default::default()
        };
        self.rt.block_on(async {
            let real = api.get(CACERTS).await.expect("a cacerts to copy");
            let mut obj = match api.get_opt(YARDSTICK).await.expect("a GET") {
                Some(o) => o,
                None => {
                    let mut o = KubeSecret {
                        type_: real.type_.clone(),
                        ..Default::default()
                    };
                    o.metadata.name = Some(YARDSTICK.into());
                    o.metadata.labels = real.metadata.labels.clone();
                    o.metadata.annotations = real.metadata.annotations.clone();
                    o.data = real.data.clone();
                    api.create(&pp, &o)
                        .await
                        .expect("the yardstick secret is created")
                }
            };
            // This round's cacerts, so the sizes are the real ones whatever the key type.
            obj.data = real.data.clone();
            let mut puts = Vec::with_capacity(CALLS);
            for i in 0..CALLS + 5 {
                if let Some(key) = obj
                    .data
                    .as_mut()
                    .and_then(|d| d.get_mut("ca-key.pem"))
                    .filter(|k| k.0.len() > 40)
                {
                    key.0[40] = b'A' + u8::try_from(i % 26).unwrap_or(0);
                }
                obj.metadata.managed_fields = None;
                let started = Instant::now();
                obj = api
                    .replace(YARDSTICK, &pp, &obj)
                    .await
                    .expect("the yardstick PUT");
                // The first few warm the connection and the server's caches.
                if i >= 5 {
                    puts.push(started.elapsed());
                }
            }
            let mut gets = Vec::with_capacity(CALLS);
            for i in 0..CALLS + 5 {
                let started = Instant::now();
                let got = api.get(YARDSTICK).await.expect("the yardstick GET");
                if i >= 5 {
                    gets.push(started.elapsed());
                }
                assert_eq!(got.metadata.resource_version, obj.metadata.resource_version);
            }
            let config = self
                .configs
                .iter()
                .find(|(c, _)| c == cluster)
                .map(|(_, c)| c.clone())
                .expect("a cluster of the control plane");
            // The first request of a new client: a TCP connection and a TLS handshake (client
            // certificate included), then the GET; what a new store pays once per cluster.
            let mut first_gets = Vec::new();
            for _ in 0..NEW_CLIENTS {
                let started = Instant::now();
                let client = kube::Client::try_from(config.clone()).expect("a kube client");
                let api: Api<KubeSecret> = Api::namespaced(client, ISTIO);
                api.get(YARDSTICK).await.expect("the yardstick GET");
                first_gets.push(started.elapsed());
            }
            // A store with watches: the watch holds the client's first connection, so the first
            // write opens a second one and sends a PUT on it at once. kube's client leaves
            // Nagle's algorithm on; the same client with TCP_NODELAY shows what that costs.
            let (mut watched_puts, mut watched_puts_nodelay) = (Vec::new(), Vec::new());
            for i in 0..NEW_CLIENTS {
                for nodelay in [false, true] {
                    let client = if nodelay {
                        nodelay_client(&config)
                    } else {
                        kube::Client::try_from(config.clone()).expect("a kube client")
                    };
                    let api: Api<KubeSecret> = Api::namespaced(client, ISTIO);
                    let watch = watch_listed(api.clone()).await;
                    if let Some(key) = obj
                        .data
                        .as_mut()
                        .and_then(|d| d.get_mut("ca-key.pem"))
                        .filter(|k| k.0.len() > 41)
                    {
                        key.0[41] = b'A' + u8::try_from(i % 26).unwrap_or(0) + u8::from(nodelay);
                    }
                    obj.metadata.managed_fields = None;
                    let started = Instant::now();
                    obj = api
                        .replace(YARDSTICK, &pp, &obj)
                        .await
                        .expect("the yardstick PUT");
                    let took = started.elapsed();
                    watch.abort();
                    if nodelay {
                        watched_puts_nodelay.push(took);
                    } else {
                        watched_puts.push(took);
                    }
                }
            }
            let sample = |v: &[Duration]| Sample {
                wall: median(v),
                ..Default::default()
            };
            [
                sample(&puts),
                sample(&gets),
                sample(&first_gets),
                sample(&watched_puts),
                sample(&watched_puts_nodelay),
            ]
        })
    }
}

/// A store that logs every call it passes on, with its start and duration, when
/// `MESHCA_BENCH_TRACE` is set: where a reconcile's time goes.
struct Traced<S> {
    inner: S,
    started: Instant,
    calls: std::sync::Mutex<Vec<String>>,
}

impl<S> Traced<S> {
    fn new(inner: S) -> Self {
        Traced {
            inner,
            started: Instant::now(),
            calls: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn traced<T>(&self, what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
        if std::env::var_os("MESHCA_BENCH_TRACE").is_none() {
            return f();
        }
        let at = self.started.elapsed();
        let t = Instant::now();
        let out = f();
        let line = format!(
            "{:>9} +{:>9} {:?} {}",
            show(at),
            show(t.elapsed()),
            std::thread::current().id(),
            what()
        );
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line);
        out
    }

    /// Prints the calls logged since the last time, under a heading.
    fn print(&self, heading: &str) {
        let mut calls = self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !calls.is_empty() {
            eprintln!("-- {heading}:");
            for c in calls.drain(..) {
                eprintln!("   {c}");
            }
        }
    }
}

impl<S: SecretStore> SecretStore for Traced<S> {
    fn clusters(&self) -> Result<Vec<String>, meshca_store::StoreError> {
        self.inner.clusters()
    }
    fn get(
        &self,
        key: &SecretKey,
    ) -> Result<Option<meshca_store::Secret>, meshca_store::StoreError> {
        self.traced(|| format!("get {key}"), || self.inner.get(key))
    }
    fn write(
        &self,
        key: &SecretKey,
        data: &SecretData,
        expect: &meshca_store::Expect,
    ) -> Result<meshca_store::Version, meshca_store::StoreError> {
        self.traced(
            || format!("write {key}"),
            || self.inner.write(key, data, expect),
        )
    }
    fn write_all(
        &self,
        writes: &[meshca_store::SecretWrite<'_>],
    ) -> Vec<Result<meshca_store::Version, meshca_store::StoreError>> {
        self.traced(
            || format!("write_all of {}", writes.len()),
            || self.inner.write_all(writes),
        )
    }
    fn read(&self, key: &SecretKey) -> Result<Option<SecretData>, meshca_store::StoreError> {
        self.traced(|| format!("read {key}"), || self.inner.read(key))
    }
    fn version(
        &self,
        key: &SecretKey,
    ) -> Result<Option<meshca_store::Version>, meshca_store::StoreError> {
        self.traced(|| format!("version {key}"), || self.inner.version(key))
    }
    fn describe(&self, key: &SecretKey) -> String {
        self.inner.describe(key)
    }
}

/// A watch of the secrets of `api`'s namespace, on a task of its own, once it has listed them.
async fn watch_listed(api: Api<KubeSecret>) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt as _;
    let (listed, is_listed) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let stream = kube::runtime::watcher(api, kube::runtime::watcher::Config::default());
        futures::pin_mut!(stream);
        let mut listed = Some(listed);
        while let Some(event) = stream.next().await {
            if let Ok(kube::runtime::watcher::Event::InitDone) = event
                && let Some(l) = listed.take()
            {
                let _ = l.send(());
            }
        }
    });
    is_listed.await.expect("the watch lists the namespace");
    task
}

/// A kube client as kube makes one, but with TCP_NODELAY on its connections.
fn nodelay_client(config: &kube::Config) -> kube::Client {
    use kube::client::ConfigExt as _;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config
        .rustls_https_connector_with_connector(http)
        .expect("a TLS connector");
    // The control plane's kubeconfig authenticates by client certificate, in the TLS config.
    assert!(
        config
            .auth_layer()
            .expect("the kubeconfig's credentials")
            .is_none(),
        "a kubeconfig with client certificates only"
    );
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .service(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https),
        );
    kube::Client::new(service, config.default_namespace.clone())
}

fn connect(sources: &ClusterSources) -> KubeStore {
    KubeStore::connect(
        sources,
        KubeOptions {
            mgmt: MGMT.into(),
            owner: Some(format!("{GLOO}/{POLICY_NAME}")),
            ..Default::default()
        },
    )
    .expect("the store connects")
}

/// A pause before reading `/metrics`: an API server counts a request after it has answered it.
const SETTLE: Duration = Duration::from_millis(200);

/// A reconcile timed, with the secret requests every API server counted meanwhile.
fn measured(clients: &Clients<'_>, f: impl FnOnce() -> Report) -> (Sample, Report) {
    std::thread::sleep(SETTLE);
    let before = clients.secret_requests();
    let cpu0 = process_cpu();
    let started = Instant::now();
    let report = f();
    let wall = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu0);
    std::thread::sleep(SETTLE);
    let after = clients.secret_requests();
    let requests = after
        .iter()
        .filter_map(|(v, a)| {
            let d = a - before.get(v).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (v.clone(), d))
        })
        .collect();
    (
        Sample {
            wall,
            cpu,
            requests,
        },
        report,
    )
}

/// Steps 1 to 4 on the API servers (six samples, in [`STEPS`] order); and how long the watched store's watches took to list.
fn kube_round(
    clients: &Clients<'_>,
    sources: &ClusterSources,
    policy: &TrustPolicy,
    names: &[String],
) -> (Vec<Sample>, Duration) {
    let n = names.len();
    let all = ["*".to_owned()];
    clients.reset(names);
    let mut out = Vec::new();

    let store = Traced::new(connect(sources));
    let (s, r) = measured(clients, || {
        reconcile(&store, policy, MGMT, &[], &[], OffsetDateTime::now_utc()).expect("reconciled")
    });
    expect(&r, n, |o| *o == Outcome::Created, "from nothing");
    store.print("from nothing");
    out.push(s);
    drop(store);

    let store = Traced::new(connect(sources));
    let (s, r) = measured(clients, || {
        reconcile(&store, policy, MGMT, &[], &all, OffsetDateTime::now_utc()).expect("reconciled")
    });
    expect(
        &r,
        n,
        |o| matches!(o, Outcome::Rotated(_)),
        "forced rotation",
    );
    store.print("forced rotation");
    out.push(s);
    drop(store);

    let store = Traced::new(connect(sources));
    let (s, r) = measured(clients, || {
        reconcile(&store, policy, MGMT, &[], &[], OffsetDateTime::now_utc()).expect("reconciled")
    });
    expect(&r, n, |o| *o == Outcome::Fresh, "no-op, direct");
    store.print("no-op, direct");
    out.push(s);
    drop(store);

    // What `trust run` watches: istio-system of every workload cluster, and the namespaces of
    // the management cluster a reconcile under the policy reads.
    let store = Traced::new(connect(sources));
    let mut scopes: Vec<(String, String)> = names
        .iter()
        .map(|c| {
            (
                c.clone(),
                meshca_trust::reconcile::ISTIO_NAMESPACE.to_owned(),
            )
        })
        .collect();
    for (ns, _) in meshca_trust::reconcile::secrets_of(policy, None) {
        scopes.push((MGMT.to_owned(), ns));
    }
    scopes.sort();
    scopes.dedup();
    let started = Instant::now();
    store.inner.watch(&scopes).expect("watches start");
    while !store.inner.watches_synced() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "watches not listed within 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let synced = started.elapsed();
    let cache = BundleCache::new();
    for step in ["no-op, watched, first", "no-op, watched, again"] {
        let (s, r) = measured(clients, || {
            reconcile_with(
                &cache,
                &store,
                policy,
                MGMT,
                &[],
                &[],
                OffsetDateTime::now_utc(),
            )
            .expect("reconciled")
        });
        expect(&r, n, |o| *o == Outcome::Fresh, step);
        store.print(step);
        out.push(s);
    }
    let (s, r) = measured(clients, || {
        reconcile_with(
            &cache,
            &store,
            policy,
            MGMT,
            &[],
            &all,
            OffsetDateTime::now_utc(),
        )
        .expect("reconciled")
    });
    expect(
        &r,
        n,
        |o| matches!(o, Outcome::Rotated(_)),
        "forced rotation, watched",
    );
    store.print("forced rotation, watched");
    out.push(s);
    drop(store);
    (out, synced)
}

/// Step 6: the same reconciles on a memory store, the crypto alone.
fn memory_round(policy: &TrustPolicy, root: &SecretData, names: &[String]) -> Vec<Sample> {
    let n = names.len();
    let mut all = names.to_vec();
    all.push(MGMT.to_owned());
    let store = MemoryStore::with_clusters(&all);
    store
        .replace(&SecretKey::new(MGMT, GLOO, ROOT_SECRET), root)
        .expect("the memory store takes the root");
    let timed = |force: &[String]| {
        let cpu0 = process_cpu();
        let started = Instant::now();
        let r = reconcile(&store, policy, MGMT, &[], force, OffsetDateTime::now_utc())
            .expect("reconciled");
        let s = Sample {
            wall: started.elapsed(),
            cpu: process_cpu().saturating_sub(cpu0),
            ..Default::default()
        };
        (s, r)
    };
    let (first, r) = timed(&[]);
    expect(&r, n, |o| *o == Outcome::Created, "memory: from nothing");
    let (forced, r) = timed(&["*".to_owned()]);
    expect(
        &r,
        n,
        |o| matches!(o, Outcome::Rotated(_)),
        "memory: forced rotation",
    );
    vec![first, forced]
}

fn expect(report: &Report, n: usize, ok: impl Fn(&Outcome) -> bool, step: &str) {
    assert_eq!(report.clusters.len(), n, "{step}: every cluster reported");
    if let Some((c, o)) = report.clusters.iter().find(|(_, o)| !ok(o)) {
        panic!("{step}: {c} came out {o:?}");
    }
}

/// What the manager measured.
struct Manager {
    /// From its start to the log line saying every cluster is fresh.
    converged: Duration,
    rss_mb: Vec<f64>,
    hwm_mb: f64,
    reconciles: usize,
    cpu: Duration,
    requests: BTreeMap<String, f64>,
}

/// A child process killed and reaped when dropped, however the harness ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Step 7: the real `meshca trust run` on the same control plane, from nothing.
fn run_manager(
    clients: &Clients<'_>,
    cp: &ControlPlane,
    meshca: &Path,
    policy_file: &Path,
    names: &[String],
    dir: &Path,
) -> Manager {
    clients.reset(names);
    let mut args: Vec<String> = [
        "trust",
        "run",
        "--store",
        "kube",
        "--kubeconfig",
        &cp.kubeconfig().display().to_string(),
        "--mgmt-context",
        MGMT,
        "-f",
        &policy_file.display().to_string(),
        "--resync",
        "1s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for c in names {
        args.push("--cluster".into());
        args.push(format!("{c}={c}"));
    }
    let log = dir.join("trust-run.log");
    let started = Instant::now();
    let child = Running(
        Command::new(meshca)
            .args(&args)
            .current_dir(dir)
            .env("MESHCA_LOG", "warn")
            .stdout(std::fs::File::create(&log).expect("the log file"))
            .stderr(std::fs::File::create(dir.join("trust-run.err")).expect("the log file"))
            .spawn()
            .expect("meshca trust run starts"),
    );
    let pid = child.0.id();
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let fresh = format!("{} cluster(s) fresh", names.len());
    while !logged().contains(&fresh) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "trust run did not converge within 120 s:\n{}",
            logged()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let converged = started.elapsed();
    std::thread::sleep(SETTLE);
    let before = clients.secret_requests();
    let reconciles0 = logged().matches("reconciled at").count();
    let cpu0 = proc_cpu(pid);
    let mut rss_mb = Vec::new();
    let mut hwm_mb: f64 = 0.0;
    let window = Instant::now();
    while window.elapsed() < MANAGER_WINDOW {
        let (rss, hwm) = proc_memory(pid);
        rss_mb.push(rss);
        hwm_mb = hwm_mb.max(hwm);
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu = proc_cpu(pid).saturating_sub(cpu0);
    let reconciles = logged().matches("reconciled at").count() - reconciles0;
    let after = clients.secret_requests();
    drop(child);
    let requests = after
        .iter()
        .filter_map(|(v, a)| {
            let d = a - before.get(v).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (v.clone(), d))
        })
        .collect();
    Manager {
        converged,
        rss_mb,
        hwm_mb,
        reconciles,
        cpu,
        requests,
    }
}

/// A field of `/proc/<pid>/status` in MB (10^6 bytes).
fn status_mb(status: &str, field: &str) -> f64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb * 1024.0 / 1e6)
}

/// VmRSS and VmHWM of a process, MB.
fn proc_memory(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (status_mb(&s, "VmRSS:"), status_mb(&s, "VmHWM:"))
}

/// The control plane's processes' VmRSS: etcd's, and the API servers' median and range.
fn process_memory(cp: &ControlPlane) -> String {
    let mut etcd = 0.0;
    let mut apiservers = Vec::new();
    for (name, pid) in cp.processes() {
        let (rss, _) = proc_memory(pid);
        if name == "etcd" {
            etcd = rss;
        } else {
            apiservers.push(rss);
        }
    }
    let (lo, hi) = minmax(&apiservers);
    format!(
        "etcd {etcd:.0} MB, each API server {:.0} MB median ({lo:.0}–{hi:.0} MB), {:.2} GB in all",
        median_f64(&apiservers),
        (etcd + apiservers.iter().sum::<f64>()) / 1e3
    )
}

/// User + sys time of another process, from `/proc/<pid>/stat`.
fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let mut fields = after.split_whitespace();
    // utime and stime are fields 14 and 15 of the line, the 12th and 13th after the name.
    let utime: u64 = fields.nth(11).and_then(|s| s.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_nanos((utime + stime) * 1_000_000_000 / hz)
}

/// User + sys time of every thread of this process, finished ones included.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}
