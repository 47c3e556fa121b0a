//! The managed half of the quickstart (seed 001): a RootTrustPolicy in Gloo's schema gives both
//! clusters intermediates from a generated root, kept in a folder store laid out like the
//! clusters' secrets. A CA server per cluster signs with what the manager writes and reloads it;
//! a workload per cluster renews every few seconds, by mTLS with its current certificate, as
//! istio-agent does; and cluster2's workload calls cluster1's over mTLS without a pause while the
//! manager re-issues both intermediates and then replaces the root in three phases.
//!
//! The manager's clock is compressed: it starts three days back and jumps over each phase's
//! wait (a workload certificate lifetime and the propagation allowance), so every certificate it
//! makes is already valid on the real clock the CA servers, the workloads and TLS go by. The
//! story ends with the count of failed calls: anything but zero is an error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshca_agent::mtls::{Endpoint, call};
use meshca_agent::run::Agent;
use meshca_agent::{Credential, Request};
use meshca_ca::issuer::IssuancePolicy;
use meshca_ca::{CaSource, ServeConfig, SystemClock};
use meshca_pki::{Certificate, KeyType, SpiffeId, TrustDomain};
use meshca_trust::reconcile::Outcome;
use meshca_trust::{FolderStore, Report, TrustPolicy};
use time::OffsetDateTime;

/// Seed 001's RootTrustPolicy with a generated root in place of its openssl-made secret, and
/// 2048-bit intermediates to keep the story quick.
pub const POLICY: &str = "apiVersion: admin.gloo.solo.io/v2
kind: RootTrustPolicy
metadata:
  name: root-trust-policy
  namespace: gloo-mesh
spec:
  config:
    mgmtServerCa:
      generated:
        ttlDays: 3650
    intermediateCertOptions:
      ttlDays: 30
      rsaKeySizeBytes: 2048
";

/// The lifetime the workloads ask for: they renew at half of it.
const WORKLOAD_TTL_SECONDS: i64 = 4;

/// How long a workload may take to pick up its cluster's new bundle (a few renewals).
const PICKUP: Duration = Duration::from_secs(30);

/// How long the traffic runs in each state once both workloads are in it.
const SETTLE: Duration = Duration::from_millis(500);

/// What the managed story proved.
#[derive(Debug)]
pub struct Managed {
    /// mTLS calls made while the manager worked.
    pub calls: u64,
    /// Of which failed (the story fails unless zero).
    pub failed: u64,
    /// Intermediates the manager issued, first ones included.
    pub intermediates_issued: usize,
    /// The policy file, for the reader to look at.
    pub policy: PathBuf,
    /// The store folder (`<cluster>/<namespace>/<secret>/<key>`).
    pub store: PathBuf,
    /// The trust dashboard written at the end (one self-contained HTML file).
    pub dashboard: PathBuf,
}

/// The workload's current files are from `cacerts` as it is now: its chain's CA certificate is
/// `ca-cert.pem` and its root bundle is `root-cert.pem`.
fn holds(workload: &Path, cacerts: &Path) -> bool {
    let certs = |p: &Path| -> Vec<Vec<u8>> {
        std::fs::read(p)
            .ok()
            .and_then(|b| Certificate::all_from_pem(&b, "bundle").ok())
            .unwrap_or_default()
            .iter()
            .map(|c| c.der().to_vec())
            .collect()
    };
    let chain = certs(&workload.join("cert-chain.pem"));
    let ca = certs(&cacerts.join("ca-cert.pem"));
    chain.len() >= 2
        && ca.len() == 1
        && chain[1] == ca[0]
        && certs(&workload.join("root-cert.pem")) == certs(&cacerts.join("root-cert.pem"))
}

fn print_report(out: &mut impl Write, r: &Report, issued: &mut usize) -> anyhow::Result<()> {
    for (cluster, o) in &r.clusters {
        match o {
            Outcome::Created => {
                *issued += 1;
                writeln!(out, "   {cluster}: cacerts created")?;
            }
            Outcome::Rotated(why) => {
                *issued += 1;
                writeln!(out, "   {cluster}: intermediate re-issued ({why})")?;
            }
            Outcome::RootsUpdated => writeln!(out, "   {cluster}: root bundle updated")?,
            Outcome::Fresh => {}
            Outcome::Failed(why) => bail!("{cluster}: {why}"),
        }
    }
    for e in &r.rotation {
        writeln!(out, "   rotation: {e}")?;
    }
    Ok(())
}

/// The mTLS caller: cluster2's workload calls cluster1's over and over until told to stop.
struct Traffic {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first_error: Arc<std::sync::Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(endpoint: Arc<Endpoint>, sleep: PathBuf) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(std::sync::Mutex::new(None));
        let (s, c, f, e) = (
            stop.clone(),
            calls.clone(),
            failed.clone(),
            first_error.clone(),
        );
        let task = tokio::spawn(async move {
            let addr = endpoint.local_addr.to_string();
            while !s.load(Ordering::Relaxed) {
                // The server side serves what its workload holds now (Envoy gets it by SDS).
                let result = match endpoint.reload() {
                    Err(err) => Err(format!("httpbin reload: {err}")),
                    Ok(()) => {
                        let roots = std::fs::read(sleep.join("root-cert.pem"))
                            .map_err(|err| err.to_string())
                            .and_then(|b| {
                                Certificate::all_from_pem(&b, "sleep root-cert.pem")
                                    .map_err(|err| err.to_string())
                            });
                        match roots {
                            Err(err) => Err(err),
                            Ok(roots) => call(&addr, Some(&sleep), Some(roots))
                                .await
                                .map(|_| ())
                                .map_err(|err| err.to_string()),
                        }
                    }
                };
                c.fetch_add(1, Ordering::Relaxed);
                if let Err(err) = result {
                    f.fetch_add(1, Ordering::Relaxed);
                    let mut first = e.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert(err);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Traffic {
            stop,
            calls,
            failed,
            first_error,
            task,
        }
    }

    async fn finish(self) -> (u64, u64, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let first = self
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        (
            self.calls.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            first,
        )
    }
}

/// Waits (real time) until each workload holds its cluster's bundle as it is now, then lets the
/// traffic run on a moment in that state.
async fn picked_up(pairs: &[(PathBuf, PathBuf)]) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !pairs.iter().all(|(w, c)| holds(w, c)) {
        if start.elapsed() > PICKUP {
            bail!("the workloads did not pick up their clusters' new bundles within {PICKUP:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = start.elapsed();
    tokio::time::sleep(SETTLE).await;
    Ok(took)
}

/// Runs the managed story in `dir/managed`, narrating to `out`; `step` numbers its first
/// heading.
pub async fn run(dir: &Path, step: usize, out: &mut impl Write) -> anyhow::Result<Managed> {
    let base = dir.join("managed");
    // Each run starts over: the story is about what happens from a first apply on.
    if base.exists() {
        std::fs::remove_dir_all(&base).with_context(|| format!("{}", base.display()))?;
    }
    let store_dir = base.join("store");
    for c in ["mgmt", "cluster1", "cluster2"] {
        std::fs::create_dir_all(store_dir.join(c))?;
    }
    let policy_path = base.join("root-trust-policy.yaml");
    std::fs::write(&policy_path, POLICY)?;
    let policy = TrustPolicy::from_yaml(POLICY, &policy_path.display().to_string())?;
    let store = FolderStore::open(&store_dir)?;
    let cacerts = |c: &str| store_dir.join(c).join("istio-system/cacerts");
    let mut issued = 0;

    writeln!(
        out,
        "== {step}. Managed intermediates: a RootTrustPolicy (Gloo's schema) over a folder store (meshca trust)"
    )?;
    writeln!(out, "   policy {}", policy_path.display())?;
    let real = OffsetDateTime::now_utc();
    let mut now = real - time::Duration::days(3);
    let report = meshca_trust::reconcile(&store, &policy, "mgmt", &[], &[], now)?;
    print_report(out, &report, &mut issued)?;

    writeln!(
        out,
        "== {}. CA servers on the managed bundles, a workload per cluster renewing every {}s, mTLS from sleep to httpbin without a pause",
        step + 1,
        WORKLOAD_TTL_SECONDS / 2
    )?;
    let td = TrustDomain::new("cluster.local")?;
    let mut cas = Vec::new();
    for cluster in ["cluster1", "cluster2"] {
        let cfg = ServeConfig {
            listen: "127.0.0.1:0".parse()?,
            source: CaSource::Folder(cacerts(cluster)),
            trust_domain: td.clone(),
            plaintext: false,
            serving_dns: meshca_ca::tls::ISTIOD_DNS_NAMES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            jwt_issuers: vec![(crate::ISSUER.into(), dir.join("jwks.json"))],
            audience: "istio-ca".into(),
            cluster_id: Some(cluster.into()),
            policy: IssuancePolicy::default(),
            metrics_addr: None,
            allow_root_change: false,
            reload_interval: Duration::from_millis(100),
            debounce: Duration::from_millis(50),
            token_review: None,
        };
        cas.push(
            meshca_ca::start(cfg, Arc::new(SystemClock))
                .await
                .with_context(|| format!("starting the managed CA of {cluster}"))?,
        );
    }
    let key = meshca_token::SigningKey::from_pem(
        &std::fs::read(dir.join("jwt-key.pem"))?,
        "jwt-key.pem",
    )?;
    let workloads_dir = base.join("workloads");
    let mut agents = Vec::new();
    let mut pairs = Vec::new();
    for ((cluster, sa), ca) in [("cluster1", "httpbin"), ("cluster2", "sleep")]
        .into_iter()
        .zip(&cas)
    {
        let out_dir = workloads_dir.join(cluster).join("foo").join(sa);
        std::fs::create_dir_all(&out_dir)?;
        let token = crate::token(&key, sa, real)?;
        let agent = Agent {
            request: Request {
                ca_addr: ca.local_addr.to_string(),
                ca_root_pem: std::fs::read_to_string(cacerts(cluster).join("root-cert.pem"))?,
                server_name: "istiod.istio-system.svc".into(),
                identity: SpiffeId::workload(&td, "foo", sa)?,
                key_type: KeyType::EcdsaP256,
                ttl_seconds: WORKLOAD_TTL_SECONDS,
                credential: Credential::Token(token),
                cluster_id: Some(cluster.into()),
            },
            output_dir: out_dir.clone(),
            grace_ratio: 0.5,
            token_file: None,
            ca_root_file: None,
        };
        // The first certificate by token; every renewal by mTLS with the current one.
        agent
            .once(OffsetDateTime::now_utc())
            .await
            .with_context(|| format!("{cluster}/foo/{sa}"))?;
        agents.push(tokio::spawn(async move {
            agent.run(&SystemClock, |_| {}).await;
        }));
        pairs.push((out_dir, cacerts(cluster)));
    }
    let httpbin_dir = pairs[0].0.clone();
    let sleep_dir = pairs[1].0.clone();
    let endpoint = Arc::new(Endpoint::start("127.0.0.1:0".parse()?, &httpbin_dir).await?);
    let traffic = Traffic::start(endpoint.clone(), sleep_dir);
    let took = picked_up(&pairs).await?;
    writeln!(
        out,
        "   both workloads hold certificates from their managed intermediates ({} ms)",
        took.as_millis()
    )?;

    writeln!(
        out,
        "== {}. The manager re-issues both intermediates; the CA servers reload them",
        step + 2
    )?;
    now += time::Duration::minutes(1);
    let report = meshca_trust::reconcile(&store, &policy, "mgmt", &[], &["*".to_owned()], now)?;
    print_report(out, &report, &mut issued)?;
    let took = picked_up(&pairs).await?;
    writeln!(
        out,
        "   both workloads renewed under the new intermediates ({} ms)",
        took.as_millis()
    )?;

    writeln!(
        out,
        "== {}. Root rotation in three phases, the manager's clock jumping over each phase's wait",
        step + 3
    )?;
    now += time::Duration::minutes(1);
    let state = meshca_trust::start_root_rotation(&store, &policy, "mgmt", None, now)?;
    writeln!(
        out,
        "   new root {}... made; phase {}: {}",
        hex_prefix(&state.new_root),
        state.phase.label(),
        state.phase.describe()
    )?;
    let mut passes = 0;
    loop {
        passes += 1;
        if passes > 20 {
            bail!("the root rotation did not finish in 20 passes");
        }
        let report = meshca_trust::reconcile(&store, &policy, "mgmt", &[], &[], now)?;
        print_report(out, &report, &mut issued)?;
        let took = picked_up(&pairs).await?;
        let roots = Certificate::all_from_pem(
            &std::fs::read(pairs[1].0.join("root-cert.pem"))?,
            "root-cert.pem",
        )?
        .len();
        writeln!(
            out,
            "   [{}] workloads renewed ({} ms); they trust {roots} root(s)",
            meshca_pki::error::show_time(now),
            took.as_millis()
        )?;
        if meshca_trust::rotation::load(&store, &policy, "mgmt")?.is_none() {
            break;
        }
        match report.rotation_due {
            Some(due) if due > now => now = due,
            _ => now += time::Duration::minutes(1),
        }
    }

    let (calls, failed, first_error) = traffic.finish().await;
    let dashboard = base.join("meshca-dashboard.html");
    let data = meshca_trust::dashboard::gather(
        &meshca_trust::BundleCache::new(),
        &store,
        &policy,
        "mgmt",
        &[],
        now,
    )?;
    std::fs::write(&dashboard, meshca_trust::dashboard::render(&data, now))
        .with_context(|| format!("{}: cannot write", dashboard.display()))?;
    for a in agents {
        a.abort();
    }
    drop(endpoint);
    for ca in cas {
        ca.shutdown().await?;
    }
    writeln!(
        out,
        "   {calls} mTLS calls from cluster2's sleep to cluster1's httpbin during all of it: {failed} failed"
    )?;
    if failed > 0 {
        bail!(
            "{failed} of {calls} mTLS calls failed during the rotations; the first: {}",
            first_error.unwrap_or_default()
        );
    }
    writeln!(
        out,
        "   the trust dashboard (roots, intermediates, expiry timeline, checks): {}",
        dashboard.display()
    )?;
    Ok(Managed {
        calls,
        failed,
        intermediates_issued: issued,
        policy: policy_path,
        store: store_dir,
        dashboard,
    })
}

/// The first bytes of a fingerprint, enough to tell roots apart.
fn hex_prefix(fp: &str) -> &str {
    fp.get(..16).unwrap_or(fp)
}
