//! The trust dashboard: one self-contained HTML page (inline CSS and SVG, no outside assets) of
//! what `meshca trust status` and `meshca check` say about a policy's clusters: the trust graph
//! (roots, intermediates, clusters), an expiry timeline with each renewal point and today's
//! line, the root rotation's phase and the times it went through, and every check finding.
//!
//! [`gather`] reads what the page shows from any [`SecretStore`]; [`render`] is a pure function
//! of that data and `now`, so the file `meshca trust dashboard` writes and the page
//! `meshca trust run --http` serves are the same.

mod live;
mod page;
mod svg;

use meshca_pki::Certificate;
use meshca_pki::describe::hex_colons;
use meshca_pki::rotation::renew_at;
use meshca_store::SecretStore;
use meshca_verify::check::{BundleSource, CheckOptions, CheckReport};
use time::OffsetDateTime;

use crate::cache::BundleCache;
use crate::policy::TrustPolicy;
use crate::reconcile::{
    ClusterStatus, TrustError, ca_from_data, cacerts_key, fingerprint, load_secret_ca,
    passive_roots, root_secret, status_with,
};
use crate::rotation::{self, RotationPhase};

pub use live::LiveDashboards;
pub use page::render;

/// Everything the dashboard shows about one policy.
#[derive(Clone, Debug)]
pub struct DashboardData {
    /// The policy, `namespace/name`.
    pub policy: String,
    /// The management cluster's name.
    pub mgmt: String,
    /// Every root a cluster trusts or the policy signs under, each once.
    pub roots: Vec<RootView>,
    /// The policy's clusters, in the order `meshca trust status` lists them.
    pub clusters: Vec<ClusterView>,
    /// The root rotation in progress, if any.
    pub rotation: Option<RotationView>,
    /// When the last root rotation finished (RFC 3339), if one has.
    pub last_rotation_finished: Option<String>,
    /// `meshca check` over every cluster's `cacerts`.
    pub checks: CheckReport,
    /// The thresholds the checks ran with.
    pub check_options: CheckOptions,
}

/// A root certificate and the part it plays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootView {
    /// SHA-256 fingerprint, hex with colons (as `trust status` prints it).
    pub fingerprint: String,
    /// Its subject.
    pub subject: String,
    /// Its validity window.
    pub not_before: OffsetDateTime,
    /// Its validity window.
    pub not_after: OffsetDateTime,
    /// The part it plays.
    pub role: RootRole,
}

/// The part a root plays in the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootRole {
    /// The policy's root, no rotation in progress.
    Current,
    /// The root a rotation in progress replaces.
    Old,
    /// The root a rotation in progress brings in.
    New,
    /// A passive root: trusted, never signing.
    Passive,
    /// Trusted by some cluster, but none of the above.
    Unknown,
}

impl RootRole {
    /// The word shown beside the root.
    pub fn label(self) -> &'static str {
        match self {
            RootRole::Current => "current",
            RootRole::Old => "old",
            RootRole::New => "new",
            RootRole::Passive => "passive",
            RootRole::Unknown => "unknown",
        }
    }
}

/// One cluster: its status line, and its intermediate when its bundle loads.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// What `meshca trust status` shows for it.
    pub status: ClusterStatus,
    /// Its `cacerts` signing certificate, if the bundle loads.
    pub intermediate: Option<IntermediateView>,
}

/// A cluster's intermediate CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntermediateView {
    /// Its subject.
    pub subject: String,
    /// Its serial, hex with colons.
    pub serial: String,
    /// Its validity window.
    pub not_before: OffsetDateTime,
    /// Its validity window.
    pub not_after: OffsetDateTime,
    /// When the policy renews it.
    pub renew_at: OffsetDateTime,
    /// The fingerprint of the root its verified path ends at.
    pub root: String,
}

/// A root rotation in progress, with the times its state records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationView {
    /// The current phase.
    pub phase: RotationPhase,
    /// Why it started.
    pub reason: String,
    /// When it started (phase 1 began).
    pub started_at: OffsetDateTime,
    /// When the current phase began.
    pub phase_since: OffsetDateTime,
    /// When every cluster was first seen to show the current phase.
    pub settled_at: Option<OffsetDateTime>,
    /// The earliest time the next phase (or the end) can come: the settle time plus the wait.
    pub next_at: Option<OffsetDateTime>,
    /// Fingerprint of the root being replaced.
    pub old_root: String,
    /// Fingerprint of the new root.
    pub new_root: String,
}

/// Reads what the dashboard shows for `policy` at `now`, taking bundles already verified from
/// `cache` (a manager's) and checking every cluster's `cacerts` as `meshca check` does.
pub fn gather(
    cache: &BundleCache,
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
    only: &[String],
    now: OffsetDateTime,
) -> Result<DashboardData, TrustError> {
    let status = status_with(cache, store, policy, mgmt, only, now)?;
    let state = rotation::load(store, policy, mgmt)?;
    let rotation = match &state {
        None => None,
        Some(s) => {
            let started_at = rotation::parse_stamp(&s.started_at, "startedAt")?;
            let phase_since = rotation::parse_stamp(&s.phase_since, "phaseSince")?;
            let settled_at = s
                .settled_at
                .as_deref()
                .map(|t| rotation::parse_stamp(t, "settledAt"))
                .transpose()?;
            Some(RotationView {
                phase: s.phase,
                reason: s.reason.clone(),
                started_at,
                phase_since,
                settled_at,
                // The last phase ends as soon as it settles; the others wait.
                next_at: settled_at.map(|t| match s.phase.next() {
                    Some(_) => t + rotation::settle_wait(policy),
                    None => t,
                }),
                old_root: s.old_root.clone(),
                new_root: s.new_root.clone(),
            })
        }
    };
    let passive: Vec<String> = passive_roots(store, policy, mgmt)
        .unwrap_or_default()
        .iter()
        .map(fingerprint)
        .collect();
    let role = |fp: &str| match &rotation {
        Some(r) if r.old_root == fp => RootRole::Old,
        Some(r) if r.new_root == fp => RootRole::New,
        _ if passive.iter().any(|p| p == fp) => RootRole::Passive,
        None => RootRole::Current,
        Some(_) => RootRole::Unknown,
    };
    let mut roots: Vec<RootView> = Vec::new();
    let mut add_root = |c: &Certificate| {
        let fp = fingerprint(c);
        if !roots.iter().any(|r| r.fingerprint == fp) {
            roots.push(RootView {
                role: role(&fp),
                fingerprint: fp,
                subject: c.subject().to_owned(),
                not_before: c.not_before(),
                not_after: c.not_after(),
            });
        }
    };
    // The policy's own roots first, so that they are drawn first; a CA that cannot be read
    // shows as a problem in the status, not as a missing page.
    if let Some(r) = root_secret(policy)
        && let Ok(Some(d)) = store.read(&r.key(mgmt))
        && let Ok(ca) = ca_from_data(&d, &store.describe(&r.key(mgmt)), now)
        && let Some(root) = ca.path.last()
    {
        add_root(root);
    }
    if let Some(s) = &state
        && let Ok(ca) = load_secret_ca(store, mgmt, &s.next_secret, "the new root", now)
        && let Some(root) = ca.path.last()
    {
        add_root(root);
    }
    let mut clusters = Vec::new();
    let mut sources = Vec::new();
    for st in status.clusters {
        let key = cacerts_key(&st.cluster);
        let data = store.read(&key)?;
        let shown = format!("{}/{}/{}", key.cluster, key.namespace, key.name);
        let intermediate = data
            .as_ref()
            .and_then(|d| cache.load(d, &shown, now).ok())
            .map(|b| {
                b.roots().iter().for_each(&mut add_root);
                let c = b.signer().cert();
                IntermediateView {
                    subject: c.subject().to_owned(),
                    serial: hex_colons(c.x509().raw_serial()),
                    not_before: c.not_before(),
                    not_after: c.not_after(),
                    renew_at: renew_at(c.not_before(), c.not_after(), policy.grace_ratio),
                    root: fingerprint(b.path().root()),
                }
            });
        sources.push(BundleSource {
            dir: shown,
            files: data
                .map(meshca_store::SecretData::into_inner)
                .ok_or_else(|| "no cacerts yet".to_owned()),
        });
        clusters.push(ClusterView {
            status: st,
            intermediate,
        });
    }
    // A bundle that does not load (expired, broken) still names the roots it lists.
    for s in &sources {
        if let Ok(files) = &s.files
            && let Some(pem) = files
                .get(meshca_pki::bundle::ROOT_CERT)
                .or_else(|| files.get("ca.crt"))
            && let Ok(certs) = Certificate::all_from_pem(pem, &s.dir)
        {
            certs.iter().for_each(&mut add_root);
        }
    }
    let check_options = check_options(policy);
    let checks = meshca_verify::check::check(&sources, &check_options, now);
    Ok(DashboardData {
        policy: format!("{}/{}", policy.namespace, policy.name),
        mgmt: mgmt.to_owned(),
        roots,
        clusters,
        rotation,
        last_rotation_finished: rotation::last_finished(store, policy, mgmt)?,
        checks,
        check_options,
    })
}

/// `meshca check`'s thresholds for the bundles a policy keeps: warn once an intermediate has
/// fewer days left than the policy's renewal window (the manager should have renewed it by
/// then), at most `meshca check`'s own 60 days; fail once expired. The default 60 days would
/// warn about every healthy 30-day intermediate.
pub fn check_options(policy: &TrustPolicy) -> CheckOptions {
    let defaults = CheckOptions::default();
    let window = (policy.ttl_days as f64 * policy.grace_ratio).floor();
    CheckOptions {
        warn_days: (window.max(0.0) as u32).min(defaults.warn_days),
        fail_days: defaults.fail_days,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_warn_from_the_policys_renewal_window() {
        let p = |yaml: &str| TrustPolicy::from_yaml(yaml, "p").unwrap();
        // 30-day intermediates renewed at 10% left: warn under 3 days, not under 60.
        let generated = p(meshca_testkit::GENERATED_ROOT_POLICY);
        assert_eq!(check_options(&generated).warn_days, 3);
        assert_eq!(check_options(&generated).fail_days, 0);
        // Gloo's default year at 10%: 36 days; one day at 10%: only an expired one fails.
        let seed = p(meshca_testkit::SEED_001_POLICY);
        assert_eq!(check_options(&seed).warn_days, 0);
    }
}
