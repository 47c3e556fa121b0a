//! The reconciler: for each cluster, a valid `cacerts` whose intermediate is signed by the
//! policy's CA with the right chain and root bundle; renewed when less than the grace ratio of
//! its life is left (or when forced); left alone when fresh. During a root rotation the "right"
//! signer and root bundle are the rotation phase's (see [`crate::rotation`]). Every new bundle is
//! proven, by signing a throwaway leaf that must verify against it, before it is written, and
//! everything that can be refused is refused before the first write.
//!
//! Split by job: `ca` loads the policy's CA, `judge` judges a cluster's bundle against the target
//! of the moment, `pass` makes and writes what a pass needs, `status` reports, `plan` starts and
//! plans root rotations; this module runs a reconcile through the rotation's phases.

use meshca_pki::bundle::{BundleFiles, CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
use meshca_pki::cert::to_pem_bundle;
use meshca_pki::describe::hex_colons;
use meshca_pki::error::show_time;
use meshca_pki::rotation::renew_at;
use meshca_pki::{
    CaProfile, CaSigner, CacertsBundle, Certificate, KeyType, PkiError, PrivateKey, Subject,
    WorkloadProfile, verify_path,
};
use meshca_store::StoreError;
use time::{Duration, OffsetDateTime};

use crate::cache::{self, BundleCache};
use crate::policy::{RootSource, SecretRef, TrustPolicy};
use crate::rotation::{self, RotationPhase, RotationState, Step};
use crate::signer::{Signer, connect_external};
use crate::verified::{Against, Facts, Records};
use meshca_store::parallel::{in_parallel, try_in_parallel};
use meshca_store::{Expect, Secret, SecretData, SecretKey, SecretStore, SecretWrite};

/// Istio's namespace and secret name.
pub const ISTIO_NAMESPACE: &str = "istio-system";
/// The secret istiod reads.
pub const CACERTS: &str = "cacerts";

/// Where a cluster's `cacerts` is.
pub fn cacerts_key(cluster: &str) -> SecretKey {
    SecretKey::new(cluster, ISTIO_NAMESPACE, CACERTS)
}

pub use crate::error::TrustError;

mod ca;
mod judge;
mod pass;
mod plan;
mod status;

pub use ca::secrets_of;
pub(crate) use ca::*;
use judge::*;
use pass::*;
pub(crate) use plan::start_rotation_with;
pub use plan::{PlanStep, plan_root_rotation, start_root_rotation};
pub use status::{ClusterStatus, RotationStatus, Status, inventory, status, status_with};

/// What happened to one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A first `cacerts` was written.
    Created,
    /// The intermediate was replaced; the reason says why.
    Rotated(String),
    /// Only the root bundle changed (a root rotation adding or dropping a root); the
    /// intermediate and its key were kept.
    RootsUpdated,
    /// Fresh and correct: nothing written.
    Fresh,
    /// The cluster's store failed (unreachable, refused, a secret that is not meshca's): nothing
    /// was written to it; the message says why. The other clusters went on.
    Failed(String),
}

impl Outcome {
    /// Whether this cluster is as the policy wants it after the reconcile.
    pub fn is_ok(&self) -> bool {
        !matches!(self, Outcome::Failed(_))
    }
}

/// What one reconcile did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Each cluster in scope and what happened to it.
    pub clusters: Vec<(String, Outcome)>,
    /// What the root rotation did, in order ("started", "phase settled", "advanced", "finished").
    pub rotation: Vec<String>,
    /// When the root rotation next has something to do by time alone (a settled phase's wait ends).
    pub rotation_due: Option<OffsetDateTime>,
    /// When the next thing falls due: an intermediate's renewal, a rotation phase, the root's own
    /// rotation. A manager that sleeps until then (or its resync interval) misses nothing.
    pub next_check: Option<OffsetDateTime>,
    /// Remarks: things a person should act on that are not errors.
    pub notes: Vec<String>,
}

/// The clusters a reconcile covers: `only` if given, else the policy's list, else every
/// cluster folder but the management one.
pub(crate) fn clusters(
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
    only: &[String],
) -> Result<Vec<String>, TrustError> {
    select_clusters(&store.clusters()?, policy, mgmt, only)
}

/// [`clusters`] out of the store's cluster list `present`, so that one listing serves twice.
pub(crate) fn select_clusters(
    present: &[String],
    policy: &TrustPolicy,
    mgmt: &str,
    only: &[String],
) -> Result<Vec<String>, TrustError> {
    let wanted: Vec<String> = if !only.is_empty() {
        only.to_vec()
    } else if let Some(c) = &policy.clusters {
        c.clone()
    } else {
        present.iter().filter(|c| *c != mgmt).cloned().collect()
    };
    if !only.is_empty() {
        for c in &wanted {
            if !present.contains(c) {
                return Err(TrustError::UnknownCluster(c.clone()));
            }
        }
    }
    Ok(wanted)
}

/// Threads for work bound by the CPU: one per core.
pub(crate) fn cpu_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |c| c.get())
}

/// Reconciles once. `force` names clusters to rotate even when fresh (all if it holds "*").
/// A root rotation in progress (or falling due under the policy) moves on as far as the store
/// and the clock allow. Every bundle is loaded and verified afresh: see [`reconcile_with`] for
/// a manager that reconciles again and again.
pub fn reconcile(
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
    only: &[String],
    force: &[String],
    now: OffsetDateTime,
) -> Result<Report, TrustError> {
    reconcile_with(&BundleCache::new(), store, policy, mgmt, only, force, now)
}

/// [`reconcile`], keeping the bundles it verifies (and makes) in `cache` for the next call: a
/// bundle found byte for byte as verified before is not parsed and verified again (see
/// [`crate::cache`]). The cache keeps only what this reconcile used.
pub fn reconcile_with(
    cache: &BundleCache,
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
    only: &[String],
    force: &[String],
    now: OffsetDateTime,
) -> Result<Report, TrustError> {
    cache.begin();
    let report = reconcile_pass(cache, store, policy, mgmt, only, force, now);
    // A failed reconcile may not have looked at every bundle: keep them all for the next one.
    if report.is_ok() {
        cache.sweep();
    }
    report
}

pub(crate) fn reconcile_pass(
    cache: &BundleCache,
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
    only: &[String],
    force: &[String],
    now: OffsetDateTime,
) -> Result<Report, TrustError> {
    let mut report = Report::default();
    let mut current = load_current(store, policy, mgmt, now)?;
    let records = Records::load(
        store,
        policy,
        mgmt,
        current.signer.local_key_der().as_deref(),
    )?;
    let known = Known {
        cache,
        records: &records,
    };
    let passive = passive_roots(store, policy, mgmt)?;
    let mut state = rotation::load(store, policy, mgmt)?;
    let mut present = store.clusters()?;
    present.sort();
    let mut rotation_finished = false;
    let in_scope = select_clusters(&present, policy, mgmt, only)?;
    let all = select_clusters(&present, policy, mgmt, &[])?;
    check_lifetime(policy, current.signer.cert())?;

    if state.is_none()
        && let Some(ratio) = policy.root_rotation.grace_ratio
    {
        let root = current.root();
        let due = renew_at(root.not_before(), root.not_after(), ratio);
        if now >= due {
            match start_rotation_with(store, policy, mgmt, &current, None, "the root is due", now) {
                Ok(s) => {
                    report.rotation.push(format!(
                        "root rotation started: less than {:.0}% of the root's life is left",
                        ratio * 100.0
                    ));
                    state = Some(s);
                }
                Err(e) => report
                    .notes
                    .push(format!("the root is due for rotation, but: {e}")),
            }
        } else {
            report.next_check = Some(due);
        }
    }

    let mut outcomes: Vec<(String, Outcome)> = in_scope
        .iter()
        .map(|c| (c.clone(), Outcome::Fresh))
        .collect();
    let mut force_left: Vec<String> = force.to_vec();
    // A pass per phase at most: start → add-root, drop-root → finish.
    for _ in 0..4 {
        let next = match &state {
            Some(s) => Some(load_secret_ca(
                store,
                mgmt,
                &s.next_secret,
                "root rotation: the new root",
                now,
            )?),
            None => None,
        };
        if let Some(n) = &next {
            check_lifetime(policy, n.signer.cert())?;
        }
        let t = target(
            &current,
            next.as_ref(),
            state.as_ref().map(|s| s.phase),
            &passive,
        );
        let renewals = pass(known, store, policy, &t, &force_left, &mut outcomes, now)?;
        force_left.clear();
        for due in renewals {
            report.next_check = Some(report.next_check.map_or(due, |n| n.min(due)));
        }
        let Some(s) = state.clone() else { break };
        // The gate reads the store back: the phase is done when every cluster shows it. The
        // clusters are read on every core; the first one in order that fails to read or does
        // not show the phase decides, as a loop in order would.
        let gate = in_parallel(
            all.len(),
            cpu_workers(),
            |r| !matches!(r, Ok(true)),
            |i| {
                let c = &all[i];
                store
                    .read(&cacerts_key(c))
                    .map(|data| matches_target(data.as_ref(), &t, c, now, known))
            },
        );
        // A cluster that cannot be read does not show the phase: the rotation waits for it.
        let settled = gate.iter().all(|r| matches!(r, Ok(true)));
        match rotation::step(&s, settled, policy, now)? {
            Step::Wait(at) => {
                report.rotation_due = at;
                if let Some(at) = at {
                    report.next_check = Some(report.next_check.map_or(at, |n| n.min(at)));
                }
                break;
            }
            Step::Changed(new) => {
                rotation::save(store, policy, mgmt, Some(&new), None)?;
                if new.phase != s.phase {
                    report.rotation.push(format!(
                        "phase {} started: {}",
                        new.phase.label(),
                        new.phase.describe()
                    ));
                } else if new.settled_at.is_some() {
                    let at = rotation::parse_stamp(
                        new.settled_at.as_deref().unwrap_or_default(),
                        "settledAt",
                    )? + rotation::settle_wait(policy);
                    report.rotation.push(format!(
                        "phase {} done in every cluster; the next phase starts at {}",
                        s.phase.label(),
                        show_time(at)
                    ));
                } else {
                    report.rotation.push(format!(
                        "phase {}: a cluster no longer shows it done; waiting again",
                        s.phase.label()
                    ));
                }
                state = Some(new);
            }
            Step::Finish => {
                let Some(n) = next else { break };
                let Some(r) = root_secret(policy) else { break };
                let data = store.read(&s.next_secret.key(mgmt))?.unwrap_or_default();
                let root = store.get(&r.key(mgmt))?;
                if root.as_ref().map(|s| &s.data) != Some(&data) {
                    store.write(&r.key(mgmt), &data, &Expect::from_read(root.as_ref()))?;
                }
                rotation::save(store, policy, mgmt, None, Some(&rotation::stamp(now)))?;
                report.rotation.push(format!(
                    "root rotation finished: the root {} is the policy's root",
                    n.root().subject()
                ));
                current = n;
                state = None;
                rotation_finished = true;
            }
        }
    }
    // What was verified, for the next reconcile (written only when it changed). When the root
    // rotation finished in this reconcile, the records' key (from the old CA) is no longer the
    // policy's: the next reconcile verifies every bundle once and writes them under the new one.
    if !rotation_finished {
        records.save(store, policy, mgmt, &present)?;
    }
    report.clusters = outcomes;
    Ok(report)
}

/// A token that changes whenever anything a reconcile under `policy` reads changes: the cluster
/// list, each cluster's `cacerts`, the management cluster's secrets. What `trust run` polls.
pub fn store_fingerprint(
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
) -> Result<String, TrustError> {
    let mut out = String::new();
    let clusters = store.clusters()?;
    for c in &clusters {
        out.push_str(c);
        out.push('=');
        if c == mgmt {
            for (ns, name) in secrets_of(policy, None) {
                if let Some(v) = store.version(&SecretKey::new(c.as_str(), ns, name))? {
                    out.push_str(v.as_str());
                }
                out.push(',');
            }
        } else if let Some(v) = store.version(&cacerts_key(c))? {
            out.push_str(v.as_str());
        }
        out.push(';');
    }
    Ok(out)
}
