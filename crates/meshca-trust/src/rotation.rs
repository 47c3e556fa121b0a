//! Root rotation as a small persisted state machine. A rotation moves through three phases,
//! each gated on what the store shows and then on time:
//!
//! 1. [`RotationPhase::AddRoot`]: every cluster's `root-cert.pem` gains the new root; the
//!    intermediates stay as they are. Settled when every cluster's bundle holds it; then the
//!    longest workload certificate lifetime (plus a propagation allowance) must pass, so that
//!    every workload has renewed and trusts both roots.
//! 2. [`RotationPhase::Reissue`]: every intermediate is re-issued from the new root, both roots
//!    still trusted. Settled when every cluster's intermediate is the new root's; then the same
//!    wait, so that no workload still holds a certificate under the old root.
//! 3. [`RotationPhase::DropRoot`]: the old root leaves every bundle. Settled when none holds it;
//!    the new root then becomes the policy's root and the rotation ends.
//!
//! The state lives in the management cluster, in the secret `<policy>.root-rotation`, and is
//! written before anything it implies: a manager killed at any point reads it back and carries
//! on from where it was.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::policy::{SecretRef, TrustPolicy};
use crate::reconcile::TrustError;
use meshca_store::{Expect, SecretData, SecretKey, SecretStore};

/// The key of the state secret that holds the state.
pub const STATE_KEY: &str = "state.json";

/// Where a rotation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RotationPhase {
    /// Phase 1: every bundle gains the new root.
    AddRoot,
    /// Phase 2: every intermediate is re-issued from the new root.
    Reissue,
    /// Phase 3: the old root leaves every bundle.
    DropRoot,
}

impl RotationPhase {
    /// "1/3 add-root" and so on.
    pub fn label(self) -> &'static str {
        match self {
            RotationPhase::AddRoot => "1/3 add-root",
            RotationPhase::Reissue => "2/3 reissue",
            RotationPhase::DropRoot => "3/3 drop-root",
        }
    }

    /// What the phase does, for people.
    pub fn describe(self) -> &'static str {
        match self {
            RotationPhase::AddRoot => "add the new root to every cluster's root bundle",
            RotationPhase::Reissue => "re-issue every intermediate from the new root",
            RotationPhase::DropRoot => "drop the old root from every cluster's root bundle",
        }
    }

    /// The next phase, or `None` after the last.
    pub fn next(self) -> Option<RotationPhase> {
        match self {
            RotationPhase::AddRoot => Some(RotationPhase::Reissue),
            RotationPhase::Reissue => Some(RotationPhase::DropRoot),
            RotationPhase::DropRoot => None,
        }
    }
}

/// A rotation in progress, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RotationState {
    /// The current phase.
    pub phase: RotationPhase,
    /// When the rotation started (RFC 3339).
    pub started_at: String,
    /// Why it started.
    pub reason: String,
    /// SHA-256 of the root being replaced.
    pub old_root: String,
    /// SHA-256 of the new root.
    pub new_root: String,
    /// The secret (in the management cluster) holding the new CA.
    pub next_secret: SecretRef,
    /// When the current phase began (RFC 3339).
    pub phase_since: String,
    /// When the store was first seen to have finished the phase's writes (RFC 3339).
    pub settled_at: Option<String>,
}

/// The state secret's name.
pub fn state_secret(policy: &TrustPolicy) -> String {
    format!("{}.root-rotation", policy.name)
}

/// Where the rotation state lives.
fn state_key(policy: &TrustPolicy, mgmt: &str) -> SecretKey {
    SecretKey::new(mgmt, policy.namespace.as_str(), state_secret(policy))
}

/// Reads the persisted rotation, if one is in progress.
pub fn load(
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
) -> Result<Option<RotationState>, TrustError> {
    let key = state_key(policy, mgmt);
    let Some(data) = store.read(&key)? else {
        return Ok(None);
    };
    let Some(bytes) = data.get(STATE_KEY) else {
        return Ok(None);
    };
    let where_ = store.describe(&key);
    let state: PersistedState =
        serde_json::from_slice(bytes).map_err(|e| TrustError::BadRotationState {
            secret: format!("{where_}/{STATE_KEY}"),
            reason: e.to_string(),
        })?;
    Ok(state.rotation)
}

/// Writes the rotation state (`None`: no rotation in progress), recording the last finished one.
pub fn save(
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
    state: Option<&RotationState>,
    finished: Option<&str>,
) -> Result<(), TrustError> {
    let key = state_key(policy, mgmt);
    let previous = store.get(&key)?;
    let expect = Expect::from_read(previous.as_ref());
    let previous_finish = previous
        .and_then(|d| d.data.get(STATE_KEY).cloned())
        .and_then(|b| serde_json::from_slice::<PersistedState>(&b).ok())
        .and_then(|s| s.last_finished);
    let persisted = PersistedState {
        rotation: state.cloned(),
        last_finished: finished.map(str::to_owned).or(previous_finish),
    };
    let json = serde_json::to_vec_pretty(&persisted)
        .map_err(|e| TrustError::EncodeRotationState(e.to_string()))?;
    let mut data = SecretData::new();
    data.insert(STATE_KEY.to_owned(), json);
    store.write(&key, &data, &expect)?;
    Ok(())
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PersistedState {
    rotation: Option<RotationState>,
    /// When the last rotation finished (RFC 3339).
    last_finished: Option<String>,
}

/// When the last rotation finished, if one has.
pub fn last_finished(
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
) -> Result<Option<String>, TrustError> {
    Ok(store
        .read(&state_key(policy, mgmt))?
        .and_then(|d| d.get(STATE_KEY).cloned())
        .and_then(|b| serde_json::from_slice::<PersistedState>(&b).ok())
        .and_then(|s| s.last_finished))
}

/// RFC 3339 for the state file.
pub fn stamp(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Reads an RFC 3339 stamp back.
pub fn parse_stamp(s: &str, field: &str) -> Result<OffsetDateTime, TrustError> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| TrustError::BadStamp {
        field: field.to_owned(),
        value: s.to_owned(),
        reason: e.to_string(),
    })
}

/// How long to wait once a phase has settled: the longest workload certificate lifetime, so
/// that every workload has renewed since, plus the propagation allowance.
pub fn settle_wait(policy: &TrustPolicy) -> time::Duration {
    time::Duration::hours(policy.workload_ttl_hours) + policy.root_rotation.propagation
}

/// The phase's decision, given whether the store shows it settled.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Unchanged; check again at the given time (if any).
    Wait(Option<OffsetDateTime>),
    /// The state changed (settled, unsettled or advanced): persist it.
    Changed(RotationState),
    /// The last phase settled: promote the new root and end the rotation.
    Finish,
}

/// Decides the next step of `state` at `now`, `settled` being what the store shows.
pub fn step(
    state: &RotationState,
    settled: bool,
    policy: &TrustPolicy,
    now: OffsetDateTime,
) -> Result<Step, TrustError> {
    match (settled, &state.settled_at) {
        (false, None) => Ok(Step::Wait(None)),
        (false, Some(_)) => Ok(Step::Changed(RotationState {
            settled_at: None,
            ..state.clone()
        })),
        (true, None) if state.phase == RotationPhase::DropRoot => Ok(Step::Finish),
        (true, None) => Ok(Step::Changed(RotationState {
            settled_at: Some(stamp(now)),
            ..state.clone()
        })),
        (true, Some(at)) => {
            if state.phase == RotationPhase::DropRoot {
                return Ok(Step::Finish);
            }
            let ready = parse_stamp(at, "settledAt")? + settle_wait(policy);
            if now < ready {
                return Ok(Step::Wait(Some(ready)));
            }
            match state.phase.next() {
                Some(next) => Ok(Step::Changed(RotationState {
                    phase: next,
                    phase_since: stamp(now),
                    settled_at: None,
                    ..state.clone()
                })),
                None => Ok(Step::Finish),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> TrustPolicy {
        TrustPolicy::from_yaml(
            "apiVersion: trust.meshca/v1alpha1\nkind: RootTrustPolicy\nspec:\n  config:\n    mgmtServerCa:\n      generated: {}\n    intermediateCertOptions:\n      ttlDays: 30\n      workloadCertTtlHours: 24\n    rootRotation:\n      propagationMinutes: 30\n",
            "p",
        )
        .unwrap()
    }

    fn state(phase: RotationPhase, settled: Option<OffsetDateTime>) -> RotationState {
        RotationState {
            phase,
            started_at: stamp(OffsetDateTime::UNIX_EPOCH),
            reason: "test".into(),
            old_root: "a".into(),
            new_root: "b".into(),
            next_secret: SecretRef {
                name: "n".into(),
                namespace: "gloo-mesh".into(),
            },
            phase_since: stamp(OffsetDateTime::UNIX_EPOCH),
            settled_at: settled.map(stamp),
        }
    }

    #[test]
    fn a_phase_advances_only_after_it_settled_and_the_wait_passed() {
        let p = policy();
        let t0 = OffsetDateTime::UNIX_EPOCH + time::Duration::days(10);
        let wait = time::Duration::hours(24) + time::Duration::minutes(30);
        assert_eq!(settle_wait(&p), wait);
        // Not settled: nothing moves however long it waits.
        let s = state(RotationPhase::AddRoot, None);
        assert_eq!(
            step(&s, false, &p, t0 + time::Duration::days(400)).unwrap(),
            Step::Wait(None)
        );
        // Settling is recorded, then time must pass.
        let Step::Changed(settled) = step(&s, true, &p, t0).unwrap() else {
            panic!("settling is a change")
        };
        assert_eq!(settled.settled_at, Some(stamp(t0)));
        assert_eq!(
            step(&settled, true, &p, t0 + wait - time::Duration::seconds(1)).unwrap(),
            Step::Wait(Some(t0 + wait))
        );
        let Step::Changed(next) = step(&settled, true, &p, t0 + wait).unwrap() else {
            panic!("advance")
        };
        assert_eq!(next.phase, RotationPhase::Reissue);
        assert_eq!(next.settled_at, None);
        // A store that stops showing the phase done resets the wait.
        let Step::Changed(reset) = step(&settled, false, &p, t0 + wait).unwrap() else {
            panic!("reset")
        };
        assert_eq!(reset.settled_at, None);
        assert_eq!(reset.phase, RotationPhase::AddRoot);
        // The last phase finishes as soon as the store shows it.
        assert_eq!(
            step(&state(RotationPhase::DropRoot, None), true, &p, t0).unwrap(),
            Step::Finish
        );
    }
}
