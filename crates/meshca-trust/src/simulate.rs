//! The manager on a simulated clock, with simulated workloads, to show that nothing breaks across
//! intermediate and root rotations. The store is in memory; each cluster's CA issues workload
//! certificates from whatever `cacerts` the store holds at that moment (as `meshca serve` does
//! with hot reload), each workload renews at a share of its certificate's life and learns its
//! cluster's root bundle only then (the slowest way a workload can learn it), and after every
//! event, and just before the next, every workload checks every workload of the other clusters
//! with a real path verification. A moment at which one such check fails is a failure moment.

use std::collections::HashMap;

use meshca_pki::rotation::renew_at;
use meshca_pki::{
    CacertsBundle, Certificate, KeyType, PrivateKey, Subject, WorkloadProfile, verify_path,
};
use time::{Duration, OffsetDateTime};

use crate::cache::BundleCache;
use crate::policy::{RootSource, SecretRef, TrustPolicy};
use crate::reconcile::{self, Outcome, TrustError, cacerts_key};
use meshca_store::{CrashingStore, MemoryStore, SecretData, SecretStore};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How long.
    pub days: i64,
    /// How many workload clusters.
    pub clusters: usize,
    /// Workloads per cluster.
    pub workloads: usize,
    /// The manager's resync timer (it also wakes when something falls due).
    pub resync: Duration,
    /// Workloads renew when this share of their certificate's life is left (Istio: 0.5).
    pub renew_ratio: f64,
    /// Start a root rotation after this long, as `meshca trust rotate-root` would; `None` leaves
    /// it to the policy.
    pub rotate_root_after: Option<Duration>,
    /// Use ECDSA P-256 keys whatever the policy says: the key type changes no timing, and
    /// thousands of RSA-4096 keys would take minutes.
    pub fast_keys: bool,
    /// Kill the manager just before these store writes (numbered from 0 over the whole run);
    /// it resumes at its next wake-up.
    pub crash_at_writes: Vec<u64>,
    /// Move every cluster to a brand-new root in one go after this long, the way a hand
    /// rotation goes: what shows the checker catching a broken rotation.
    pub swap_root_after: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            days: 730,
            clusters: 3,
            workloads: 2,
            resync: Duration::hours(1),
            renew_ratio: 0.5,
            rotate_root_after: None,
            fast_keys: true,
            crash_at_writes: Vec::new(),
            swap_root_after: None,
        }
    }
}

/// What happened.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SimReport {
    /// Simulated days.
    pub days: i64,
    /// Workload clusters.
    pub clusters: usize,
    /// Workloads per cluster.
    pub workloads_per_cluster: usize,
    /// Reconciles the manager ran.
    pub reconciles: u64,
    /// Intermediates issued (first ones included).
    pub intermediates_issued: u64,
    /// Root bundles updated without a new intermediate.
    pub root_bundle_updates: u64,
    /// Root rotations started.
    pub root_rotations_started: u64,
    /// Root rotations finished.
    pub root_rotations_finished: u64,
    /// Workload certificates issued.
    pub workload_certs: u64,
    /// Moments at which every cross-cluster pair was checked.
    pub moments_checked: u64,
    /// Moments at which some workload failed to verify a workload of another cluster.
    pub failure_moments: u64,
    /// The first failure, described.
    pub first_failure: Option<String>,
    /// Reconciles that failed (each is also a problem).
    pub manager_errors: u64,
    /// The rotation events, with their simulated time.
    pub events: Vec<String>,
    /// Store writes made while a root rotation was starting or in progress, by number, with the
    /// phases the manager was in before and after the reconcile that made them (`None` after:
    /// the rotation finished in it).
    #[serde(skip)]
    pub rotation_writes: Vec<RotationWrite>,
}

/// A store write made during a root rotation.
#[derive(Clone, Copy, Debug)]
pub struct RotationWrite {
    /// Its number, as [`SimConfig::crash_at_writes`] counts.
    pub number: u64,
    /// The phase before the reconcile (or the start) that made it.
    pub before: Option<crate::rotation::RotationPhase>,
    /// The phase after it.
    pub after: Option<crate::rotation::RotationPhase>,
}

struct Held {
    leaf: Certificate,
    chain: Vec<Certificate>,
    leaf_id: u64,
    roots_id: usize,
}

struct Workload {
    cluster: usize,
    name: String,
    key: PrivateKey,
    held: Option<Held>,
    next_renew: OffsetDateTime,
}

/// The simulated world: the store, the workloads, and caches that keep checks cheap.
pub struct Simulation {
    policy: TrustPolicy,
    cfg: SimConfig,
    store: CrashingStore<MemoryStore>,
    clusters: Vec<String>,
    workloads: Vec<Workload>,
    bundles: Vec<Option<(SecretData, CacertsBundle)>>,
    roots: Vec<Vec<Certificate>>,
    verdicts: HashMap<(u64, usize), Option<(OffsetDateTime, OffsetDateTime)>>,
    next_leaf: u64,
    report: SimReport,
    start: OffsetDateTime,
    /// The manager's verified bundles, as `trust run` keeps them; lost when it is killed.
    cache: BundleCache,
}

const MGMT: &str = "mgmt";

impl Simulation {
    /// A world of `cfg.clusters` empty clusters under `policy` at `start`. A secretRef root is
    /// put in place as the operator would.
    pub fn new(
        policy: &TrustPolicy,
        cfg: &SimConfig,
        start: OffsetDateTime,
    ) -> Result<Self, TrustError> {
        if matches!(policy.root, RootSource::External(_)) {
            return Err(TrustError::CannotSimulate(
                "a policy with an external signer cannot be simulated (the signer holds the root key)",
            ));
        }
        let mut policy = policy.clone();
        if cfg.fast_keys {
            policy.key_type = KeyType::EcdsaP256;
        }
        policy.clusters = None;
        let clusters: Vec<String> = (1..=cfg.clusters).map(|i| format!("cluster{i}")).collect();
        let mut all = clusters.clone();
        all.push(MGMT.to_owned());
        let store = CrashingStore::new(MemoryStore::with_clusters(&all));
        if let RootSource::SecretRef(r) = &policy.root {
            let d = reconcile::generate_root(&policy, 3650, "simulated operator root", start)?;
            store.inner().put(&r.key(MGMT), d);
        }
        store.crash_at_writes(cfg.crash_at_writes.iter().copied());
        // Workloads start spread over half a certificate lifetime, so that they renew at
        // different moments, as pods started at different times do.
        let total = (clusters.len() * cfg.workloads).max(1) as f64;
        let spread = Duration::hours(policy.workload_ttl_hours) / 2;
        let mut workloads = Vec::new();
        for (ci, c) in clusters.iter().enumerate() {
            for w in 0..cfg.workloads {
                let i = (ci * cfg.workloads + w) as f64;
                workloads.push(Workload {
                    cluster: ci,
                    name: format!("spiffe://cluster.local/ns/{c}/sa/workload-{w}"),
                    key: PrivateKey::generate(KeyType::EcdsaP256)?,
                    held: None,
                    next_renew: start + spread * (i / total),
                });
            }
        }
        let report = SimReport {
            days: cfg.days,
            clusters: cfg.clusters,
            workloads_per_cluster: cfg.workloads,
            ..Default::default()
        };
        Ok(Simulation {
            bundles: (0..clusters.len()).map(|_| None).collect(),
            policy,
            cfg: cfg.clone(),
            store,
            clusters,
            workloads,
            roots: Vec::new(),
            verdicts: HashMap::new(),
            next_leaf: 0,
            report,
            start,
            cache: BundleCache::new(),
        })
    }

    fn last_finished(&self) -> Option<String> {
        crate::rotation::last_finished(&self.store, &self.policy, MGMT)
            .ok()
            .flatten()
    }

    fn phase(&self) -> Option<crate::rotation::RotationPhase> {
        crate::rotation::load(&self.store, &self.policy, MGMT)
            .ok()
            .flatten()
            .map(|s| s.phase)
    }

    /// The store, for tests that look inside or tamper with it.
    pub fn store(&self) -> &CrashingStore<MemoryStore> {
        &self.store
    }

    /// The policy as simulated (fast keys applied).
    pub fn policy(&self) -> &TrustPolicy {
        &self.policy
    }

    fn event(&mut self, at: OffsetDateTime, what: String) {
        let day = (at - self.start).as_seconds_f64() / 86_400.0;
        self.report.events.push(format!("day {day:7.2}: {what}"));
    }

    /// Runs the manager once at `at`, as `meshca trust run` would on waking.
    pub fn reconcile(&mut self, at: OffsetDateTime) -> Option<OffsetDateTime> {
        self.report.reconciles += 1;
        let before = self.store.writes();
        let phase = self.phase();
        let finished = self.last_finished();
        self.store.revive();
        let result =
            reconcile::reconcile_with(&self.cache, &self.store, &self.policy, MGMT, &[], &[], at);
        let result = match result {
            // Killed in the middle: whatever the reconcile went on to report, the process died.
            Ok(_) if self.store.is_dead() => Err(TrustError::Killed),
            r => r,
        };
        if result.is_err() {
            // A manager that fails (or is killed) comes back as a new process, with nothing kept.
            self.cache = BundleCache::new();
        }
        let after = self.phase();
        // A rotation is finished when the store says so, whether or not the reconcile that
        // finished it got to report it (a manager killed right after is no less finished).
        if self.last_finished() != finished {
            self.report.root_rotations_finished += 1;
        }
        if phase.is_some() || after.is_some() {
            for number in before..self.store.writes() {
                self.report.rotation_writes.push(RotationWrite {
                    number,
                    before: phase,
                    after,
                });
            }
        }
        match result {
            Ok(r) => {
                for (_, o) in &r.clusters {
                    match o {
                        Outcome::Created | Outcome::Rotated(_) => {
                            self.report.intermediates_issued += 1
                        }
                        Outcome::RootsUpdated => self.report.root_bundle_updates += 1,
                        Outcome::Fresh | Outcome::Failed(_) => {}
                    }
                }
                for e in r.rotation {
                    if e.starts_with("root rotation started") {
                        self.report.root_rotations_started += 1;
                    }
                    self.event(at, e);
                }
                r.next_check
            }
            Err(e) => {
                self.report.manager_errors += 1;
                self.event(at, format!("reconcile failed: {e}"));
                None
            }
        }
    }

    /// Starts a root rotation at `at` the way an operator would with `meshca trust rotate-root`
    /// (for a secretRef root, after putting the new root in a secret of its own).
    pub fn rotate_root(&mut self, at: OffsetDateTime) -> Result<(), TrustError> {
        let next = match &self.policy.root {
            RootSource::Generated { .. } | RootSource::External(_) => None,
            RootSource::SecretRef(r) => {
                let n = SecretRef {
                    namespace: r.namespace.clone(),
                    name: format!("{}.next-{}", r.name, self.report.root_rotations_started + 1),
                };
                let d =
                    reconcile::generate_root(&self.policy, 3650, "simulated operator root", at)?;
                self.store.inner().put(&n.key(MGMT), d);
                Some(n)
            }
        };
        let before = self.store.writes();
        self.store.revive();
        let started =
            reconcile::start_root_rotation(&self.store, &self.policy, MGMT, next.as_ref(), at);
        for number in before..self.store.writes() {
            self.report.rotation_writes.push(RotationWrite {
                number,
                before: None,
                after: Some(crate::rotation::RotationPhase::AddRoot),
            });
        }
        started?;
        self.report.root_rotations_started += 1;
        self.event(at, "root rotation started (rotate-root)".to_owned());
        Ok(())
    }

    /// Replaces the policy's root secret with a brand-new root, the way a root is rotated by
    /// hand: the manager then re-issues every intermediate under the new root alone, at once.
    /// What the phased rotation exists to avoid.
    fn swap_root_at_once(&mut self, at: OffsetDateTime) -> Result<(), TrustError> {
        let Some(r) = reconcile::root_secret(&self.policy) else {
            return Err(TrustError::ExternalRoot);
        };
        let root = reconcile::generate_root(&self.policy, 3650, "swapped root", at)?;
        self.store.inner().put(&r.key(MGMT), root);
        Ok(())
    }

    /// Brings the cluster's CA up to date with the store, as a CA server's reload does.
    fn refresh_bundle(&mut self, ci: usize, at: OffsetDateTime) {
        let Some(data) = self
            .store
            .read(&cacerts_key(&self.clusters[ci]))
            .ok()
            .flatten()
        else {
            self.bundles[ci] = None;
            return;
        };
        let changed = match &self.bundles[ci] {
            Some((d, _)) => *d != data,
            None => true,
        };
        if changed {
            // An invalid new bundle is refused and the last good one kept, as meshca serve does.
            if let Ok(b) = CacertsBundle::from_files(&data, &self.clusters[ci], at) {
                self.bundles[ci] = Some((data, b));
            }
        }
    }

    fn intern_roots(&mut self, roots: &[Certificate]) -> usize {
        if let Some(i) = self.roots.iter().position(|r| r.as_slice() == roots) {
            return i;
        }
        self.roots.push(roots.to_vec());
        self.roots.len() - 1
    }

    /// Workloads whose renewal time has come get a certificate from their cluster's CA.
    fn renew_due(&mut self, at: OffsetDateTime) {
        let ttl = Duration::hours(self.policy.workload_ttl_hours);
        for wi in 0..self.workloads.len() {
            if self.workloads[wi].next_renew > at {
                continue;
            }
            let ci = self.workloads[wi].cluster;
            self.refresh_bundle(ci, at);
            let issued = self.bundles[ci].as_ref().and_then(|(_, b)| {
                let signer = b.signer();
                let not_after = (at + ttl).min(signer.cert().not_after());
                let w = &self.workloads[wi];
                let leaf = signer
                    .issue_workload(
                        &WorkloadProfile {
                            subject: Subject::default(),
                            not_before: at - Duration::minutes(2),
                            not_after,
                            uris: vec![w.name.clone()],
                            dns_names: Vec::new(),
                            ips: Vec::new(),
                            key_usage_critical: true,
                        },
                        &w.key,
                        "simulated workload",
                    )
                    .ok()?;
                let mut chain = vec![signer.cert().clone()];
                chain.extend(b.intermediates().iter().cloned());
                Some((leaf, chain, b.roots().to_vec()))
            });
            match issued {
                Some((leaf, chain, roots)) => {
                    let roots_id = self.intern_roots(&roots);
                    self.next_leaf += 1;
                    self.report.workload_certs += 1;
                    let w = &mut self.workloads[wi];
                    w.next_renew =
                        renew_at(leaf.not_before(), leaf.not_after(), self.cfg.renew_ratio)
                            .max(at + Duration::seconds(1));
                    w.held = Some(Held {
                        leaf,
                        chain,
                        leaf_id: self.next_leaf,
                        roots_id,
                    });
                }
                // No usable CA yet: try again shortly, as istio-agent backs off.
                None => self.workloads[wi].next_renew = at + Duration::minutes(5),
            }
        }
    }

    /// The first cross-cluster failure at `at`, if any.
    fn failure_at(&mut self, at: OffsetDateTime) -> Option<String> {
        self.report.moments_checked += 1;
        for a in 0..self.workloads.len() {
            for b in 0..self.workloads.len() {
                let (wa, wb) = (&self.workloads[a], &self.workloads[b]);
                if wa.cluster == wb.cluster {
                    continue;
                }
                let (Some(ha), Some(hb)) = (&wa.held, &wb.held) else {
                    continue;
                };
                let key = (ha.leaf_id, hb.roots_id);
                let window = match self.verdicts.get(&key) {
                    Some(v) => *v,
                    None => {
                        let v = verdict(ha, &self.roots[hb.roots_id]);
                        self.verdicts.insert(key, v);
                        v
                    }
                };
                let ok = window.is_some_and(|(nb, na)| nb <= at && at <= na);
                if !ok {
                    return Some(format!(
                        "{} cannot verify {} at {}",
                        wb.name,
                        wa.name,
                        meshca_pki::error::show_time(at)
                    ));
                }
            }
        }
        None
    }

    fn check(&mut self, at: OffsetDateTime) -> bool {
        match self.failure_at(at) {
            Some(f) => {
                if self.report.first_failure.is_none() {
                    self.report.first_failure = Some(f);
                }
                false
            }
            None => true,
        }
    }

    /// Runs the whole simulation.
    pub fn run(mut self) -> Result<SimReport, TrustError> {
        let end = self.start + Duration::days(self.cfg.days);
        let mut t = self.start;
        let mut manager_at = self.start;
        let mut rotate_at = self.cfg.rotate_root_after.map(|d| self.start + d);
        let mut swap_at = self.cfg.swap_root_after.map(|d| self.start + d);
        loop {
            if let Some(sa) = swap_at
                && t >= sa
            {
                self.swap_root_at_once(t)?;
                self.event(
                    t,
                    "every cluster moved to a new root at once (by hand)".to_owned(),
                );
                swap_at = None;
            }
            if let Some(ra) = rotate_at
                && t >= ra
            {
                match self.rotate_root(t) {
                    Ok(()) => rotate_at = None,
                    // As an operator would, try again a little later.
                    Err(e) => {
                        self.report.manager_errors += 1;
                        self.event(t, format!("rotate-root failed: {e}"));
                        rotate_at = Some(t + Duration::minutes(5));
                    }
                }
                manager_at = t;
            }
            if t >= manager_at {
                let next = self.reconcile(t);
                let resync = t + self.cfg.resync;
                manager_at = next
                    .map_or(resync, |n| n.min(resync))
                    .max(t + Duration::seconds(1));
            }
            self.renew_due(t);
            let mut failed = !self.check(t);
            let mut next = manager_at.min(end);
            for at in [rotate_at, swap_at].into_iter().flatten() {
                next = next.min(at);
            }
            for w in &self.workloads {
                next = next.min(w.next_renew);
            }
            if next > t + Duration::seconds(1) && !failed {
                failed = !self.check(next - Duration::seconds(1));
            }
            if failed {
                self.report.failure_moments += 1;
            }
            if t >= end {
                break;
            }
            t = next.max(t + Duration::seconds(1));
        }
        Ok(self.report)
    }
}

/// The simulator's cross-cluster check over bundles observed from outside, in a real store that a
/// real manager writes (the crash and fault drills). Each cluster has two workloads: one that
/// renewed from the bundle seen at the previous observation, just before this one (the store held
/// it until then), and one that renews from the bundle seen now. At each observation every
/// workload must verify every workload of every other cluster, chain and roots as each holds them,
/// with the path verification the simulator uses. As `meshca serve` does, a cluster's CA keeps its
/// last good bundle when the store holds an invalid one.
pub struct MeshWatch {
    workload_ttl: Duration,
    key: PrivateKey,
    clusters: Vec<String>,
    /// Per cluster: the last good bundle seen before this observation, and the one now.
    seen: Vec<[Option<SecretData>; 2]>,
    observations: u64,
}

impl MeshWatch {
    /// A watch over `clusters`, whose workloads get certificates of `workload_ttl`.
    pub fn new(clusters: &[&str], workload_ttl: Duration) -> Result<Self, TrustError> {
        Ok(MeshWatch {
            workload_ttl,
            key: PrivateKey::generate(KeyType::EcdsaP256)?,
            clusters: clusters.iter().map(|c| (*c).to_owned()).collect(),
            seen: clusters.iter().map(|_| [None, None]).collect(),
            observations: 0,
        })
    }

    /// How many observations were checked.
    pub fn observations(&self) -> u64 {
        self.observations
    }

    /// Observes each cluster's `cacerts` as the store holds it at `at` (in the order of the
    /// clusters given to [`MeshWatch::new`]; `None` when absent) and returns the first
    /// cross-cluster failure, described.
    pub fn observe(
        &mut self,
        bundles: &[Option<SecretData>],
        at: OffsetDateTime,
    ) -> Option<String> {
        self.observations += 1;
        for (ci, data) in bundles.iter().enumerate().take(self.seen.len()) {
            let valid = data
                .as_ref()
                .filter(|d| CacertsBundle::from_files(d, &self.clusters[ci], at).is_ok());
            let [prev, now] = &mut self.seen[ci];
            match valid {
                Some(d) => *prev = now.replace(d.clone()).or_else(|| Some(d.clone())),
                // Refused: the CA goes on with its last good bundle, before and now alike.
                None => *prev = now.clone(),
            }
        }
        let mut held = Vec::new();
        for (ci, pair) in self.seen.iter().enumerate() {
            let cluster = &self.clusters[ci];
            for (when, data) in ["before", "now"].into_iter().zip(pair) {
                let Some(data) = data else { continue };
                let id = format!("spiffe://cluster.local/ns/{cluster}/sa/renewed-{when}");
                let issued = CacertsBundle::from_files(data, cluster, at)
                    .and_then(|b| issue(&b, &self.key, &id, at, self.workload_ttl).map(|h| (h, b)));
                match issued {
                    Ok((h, b)) => held.push((ci, id, h, b.roots().to_vec())),
                    Err(e) => return Some(format!("{id}: no certificate at {}: {e}", show(at))),
                }
            }
        }
        for (ca, ida, ha, _) in &held {
            for (cb, idb, _, roots) in &held {
                if ca == cb {
                    continue;
                }
                let ok = verdict(ha, roots).is_some_and(|(from, to)| from <= at && at <= to);
                if !ok {
                    return Some(format!("{idb} cannot verify {ida} at {}", show(at)));
                }
            }
        }
        None
    }
}

fn show(t: OffsetDateTime) -> String {
    meshca_pki::error::show_time(t)
}

/// A workload certificate from `bundle`'s CA at `at`, as a CA server issues it.
fn issue(
    bundle: &CacertsBundle,
    key: &PrivateKey,
    id: &str,
    at: OffsetDateTime,
    ttl: Duration,
) -> Result<Held, meshca_pki::PkiError> {
    let signer = bundle.signer();
    let leaf = signer.issue_workload(
        &WorkloadProfile {
            subject: Subject::default(),
            not_before: at - Duration::minutes(2),
            not_after: (at + ttl).min(signer.cert().not_after()),
            uris: vec![id.to_owned()],
            dns_names: Vec::new(),
            ips: Vec::new(),
            key_usage_critical: true,
        },
        key,
        id,
    )?;
    let mut chain = vec![signer.cert().clone()];
    chain.extend(bundle.intermediates().iter().cloned());
    Ok(Held {
        leaf,
        chain,
        leaf_id: 0,
        roots_id: 0,
    })
}

/// Whether `held`'s chain verifies against `roots`, and if so the window in which it does.
fn verdict(held: &Held, roots: &[Certificate]) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let mut nb = held.leaf.not_before();
    let mut na = held.leaf.not_after();
    for c in &held.chain {
        nb = nb.max(c.not_before());
        na = na.min(c.not_after());
    }
    if nb > na {
        return None;
    }
    let path = verify_path(&held.leaf, &held.chain, roots, nb).ok()?;
    for c in path.certs() {
        nb = nb.max(c.not_before());
        na = na.min(c.not_after());
    }
    (nb <= na).then_some((nb, na))
}

/// Simulates `cfg.days` of `policy` and reports. If the policy would not rotate its root in that
/// time, a rotation is started a third of the way in, so that every run covers one.
pub fn simulate(
    policy: &TrustPolicy,
    cfg: &SimConfig,
    start: OffsetDateTime,
) -> Result<SimReport, TrustError> {
    let mut cfg = cfg.clone();
    if cfg.rotate_root_after.is_none() && !policy_rotates_within(policy, cfg.days) {
        cfg.rotate_root_after = Some(Duration::days(cfg.days) / 3);
    }
    Simulation::new(policy, &cfg, start)?.run()
}

fn policy_rotates_within(policy: &TrustPolicy, days: i64) -> bool {
    match (&policy.root, policy.root_rotation.grace_ratio) {
        (RootSource::Generated { ttl_days }, Some(r)) => {
            (*ttl_days as f64) * (1.0 - r) < days as f64 * 0.9
        }
        _ => false,
    }
}
