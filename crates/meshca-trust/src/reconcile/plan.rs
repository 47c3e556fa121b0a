//! Starting a root rotation, and planning one on a copy of the store.

use super::*;

/// Starts a root rotation: the new CA is generated (generated roots) or read from `next`
/// (secretRef roots: the secret the operator put the new root in), checked, and the state is
/// persisted in phase 1. Nothing is written to any cluster yet: the next reconcile does that.
pub fn start_root_rotation(
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
    next: Option<&SecretRef>,
    now: OffsetDateTime,
) -> Result<RotationState, TrustError> {
    if let Some(s) = rotation::load(store, policy, mgmt)? {
        return Err(TrustError::RotationInProgress {
            phase: s.phase.label(),
            started: s.started_at,
        });
    }
    let current = load_current(store, policy, mgmt, now)?;
    start_rotation_with(store, policy, mgmt, &current, next, "requested", now)
}

pub(crate) fn start_rotation_with(
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
    current: &PolicyCa,
    next: Option<&SecretRef>,
    reason: &str,
    now: OffsetDateTime,
) -> Result<RotationState, TrustError> {
    let next_ref = match (
        &policy.root,
        next.or(policy.root_rotation.next_secret.as_ref()),
    ) {
        (_, Some(r)) => r.clone(),
        (RootSource::Generated { ttl_days }, None) => {
            let r = generated_next_secret(policy);
            let where_ = store.describe(&r.key(mgmt));
            // A successor made by an earlier, interrupted start is taken up again.
            let found = store.get(&r.key(mgmt))?;
            let reusable = match &found {
                Some(s) => ca_from_data(&s.data, &where_, now)
                    .map(|ca| ca.root() != current.root())
                    .unwrap_or(false),
                None => false,
            };
            if !reusable {
                let d = generate_root(policy, *ttl_days, &where_, now)?;
                store.write(&r.key(mgmt), &d, &Expect::from_read(found.as_ref()))?;
            }
            r
        }
        (RootSource::SecretRef(_), None) => {
            return Err(TrustError::NoSuccessor);
        }
        (RootSource::External(_), _) => {
            return Err(TrustError::ExternalRoot);
        }
    };
    let next_ca = load_secret_ca(store, mgmt, &next_ref, "root rotation: the new root", now)?;
    if next_ca.root() == current.root() {
        return Err(TrustError::NotANewRoot {
            secret: next_ref.key(mgmt).to_string(),
        });
    }
    check_lifetime(policy, next_ca.signer.cert())?;
    let state = RotationState {
        phase: RotationPhase::AddRoot,
        started_at: rotation::stamp(now),
        reason: reason.to_owned(),
        old_root: fingerprint(current.root()),
        new_root: fingerprint(next_ca.root()),
        next_secret: next_ref,
        phase_since: rotation::stamp(now),
        settled_at: None,
    };
    rotation::save(store, policy, mgmt, Some(&state), None)?;
    Ok(state)
}

/// One step of a planned root rotation.
#[derive(Clone, Debug)]
pub struct PlanStep {
    /// When the manager would take it, at the earliest.
    pub at: OffsetDateTime,
    /// What it would do to each cluster (fresh clusters left out).
    pub clusters: Vec<(String, Outcome)>,
    /// What it would do to the rotation.
    pub rotation: Vec<String>,
}

/// The whole root rotation as the manager would carry it out, run on a copy of the store in
/// memory with the clock moved to each phase's earliest time: nothing is written to `store`.
/// The times assume the store settles as soon as it is written (one manager, no outside edits).
pub fn plan_root_rotation(
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
    next: Option<&SecretRef>,
    now: OffsetDateTime,
) -> Result<Vec<PlanStep>, TrustError> {
    let names = secrets_of(policy, next);
    let pairs: Vec<(&str, &str)> = names
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let copy = meshca_store::MemoryStore::copy_of(store, &pairs)?;
    let mut steps = Vec::new();
    let state = start_root_rotation(&copy, policy, mgmt, next, now)?;
    let mut at = now;
    let mut started = vec![format!(
        "root rotation started; phase {}: {}",
        state.phase.label(),
        state.phase.describe()
    )];
    for _ in 0..8 {
        let report = reconcile(&copy, policy, mgmt, &[], &[], at)?;
        let mut rotation = std::mem::take(&mut started);
        rotation.extend(report.rotation);
        steps.push(PlanStep {
            at,
            clusters: report
                .clusters
                .into_iter()
                .filter(|(_, o)| *o != Outcome::Fresh)
                .collect(),
            rotation,
        });
        if rotation::load(&copy, policy, mgmt)?.is_none() {
            return Ok(steps);
        }
        match report.rotation_due {
            Some(due) if due > at => at = due,
            _ => {
                return Err(TrustError::PlanStuck(format!(
                    "stuck in a phase at {} (a cluster does not take the new bundle)",
                    show_time(at)
                )));
            }
        }
    }
    Err(TrustError::PlanStuck(
        "did not finish in 8 steps".to_owned(),
    ))
}
