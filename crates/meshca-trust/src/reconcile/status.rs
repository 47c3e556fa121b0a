//! What `meshca trust status` shows: each cluster's bundle and the root rotation's progress.

use super::*;

/// A cluster's state, for `meshca trust status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClusterStatus {
    /// The cluster.
    pub cluster: String,
    /// Intermediate serial, hex.
    pub serial: Option<String>,
    /// Intermediate notAfter.
    pub not_after: Option<String>,
    /// When it will be renewed.
    pub next_renewal: Option<String>,
    /// Where this cluster is in a root rotation, if one is in progress.
    pub rotation: Option<String>,
    /// SHA-256 fingerprints of the roots its bundle trusts.
    pub roots: Vec<String>,
    /// Problems found; empty when healthy.
    pub problems: Vec<String>,
}

/// The whole picture, for `meshca trust status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    /// The root rotation in progress, if any.
    pub rotation: Option<RotationStatus>,
    /// Per cluster.
    pub clusters: Vec<ClusterStatus>,
}

/// A root rotation's progress.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RotationStatus {
    /// "1/3 add-root" and so on.
    pub phase: String,
    /// What the phase does.
    pub doing: String,
    /// When the rotation started.
    pub started_at: String,
    /// When the store was seen to have finished the phase's writes.
    pub settled_at: Option<String>,
    /// SHA-256 of the root being replaced.
    pub old_root: String,
    /// SHA-256 of the new root.
    pub new_root: String,
}

/// Each cluster's state under `policy`, and the root rotation's.
pub fn status(
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
    only: &[String],
    now: OffsetDateTime,
) -> Result<Status, TrustError> {
    status_with(&BundleCache::new(), store, policy, mgmt, only, now)
}

/// [`status`], taking bundles already loaded from `cache` (a manager's, right after its
/// reconcile loaded them) and adding what it loads.
pub fn status_with(
    cache: &BundleCache,
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
    only: &[String],
    now: OffsetDateTime,
) -> Result<Status, TrustError> {
    let state = rotation::load(store, policy, mgmt)?;
    let current = match root_secret(policy) {
        Some(r) => match store.read(&r.key(mgmt))? {
            Some(d) => ca_from_data(&d, &store.describe(&r.key(mgmt)), now).ok(),
            None => None,
        },
        None => load_current(store, policy, mgmt, now).ok(),
    };
    let next = state
        .as_ref()
        .and_then(|s| load_secret_ca(store, mgmt, &s.next_secret, "the new root", now).ok());
    let passive = passive_roots(store, policy, mgmt).unwrap_or_default();
    let t = current
        .as_ref()
        .map(|c| target(c, next.as_ref(), state.as_ref().map(|s| s.phase), &passive));
    let mut out = Vec::new();
    // Each bundle is loaded once for the three questions asked of it.
    let none = Records::none();
    let known = Known {
        cache,
        records: &none,
    };
    for cluster in clusters(store, policy, mgmt, only)? {
        let mut st = ClusterStatus::of(&cluster);
        let data = store.read(&cacerts_key(&cluster))?;
        if let (Some(s), Some(t)) = (&state, &t) {
            let done = matches_target(data.as_ref(), t, &cluster, now, known);
            st.rotation = Some(format!(
                "{}: {}",
                s.phase.label(),
                if done { "done" } else { "pending" }
            ));
        }
        match data {
            None => st.problems.push("no cacerts yet".into()),
            Some(data) => match load_cacerts(cache, &cluster, &data, now) {
                Err(e) => st.problems.push(e.to_string()),
                Ok(b) => {
                    st.show(&b);
                    let c = b.signer().cert();
                    st.next_renewal = Some(show_time(renew_at(
                        c.not_before(),
                        c.not_after(),
                        policy.grace_ratio,
                    )));
                    match &t {
                        None => st.problems.push("the policy's CA cannot be loaded".into()),
                        Some(t) => match classify(Some(&data), t, policy, &cluster, now, known) {
                            Need::Fresh(_) => {}
                            Need::Roots => st
                                .problems
                                .push("root bundle differs from the policy's".into()),
                            Need::Reissue(reason) => {
                                st.problems.push(format!("due for rotation: {reason}"))
                            }
                        },
                    }
                }
            },
        }
        out.push(st);
    }
    let rotation = state.map(|s| RotationStatus {
        phase: s.phase.label().to_owned(),
        doing: s.phase.describe().to_owned(),
        started_at: s.started_at,
        settled_at: s.settled_at,
        old_root: s.old_root,
        new_root: s.new_root,
    });
    Ok(Status {
        rotation,
        clusters: out,
    })
}

/// What the store holds, with no policy to judge it by: each cluster's bundle (every cluster of
/// the store but `mgmt`, or `only`), and whether each pair of clusters trusts each other's chain
/// (the rule of [`meshca_verify::interop`]). Policy-specific fields (next renewal, rotation) are
/// left empty; a cluster that another does not trust gets that as a problem.
pub fn inventory(
    cache: &BundleCache,
    store: &dyn SecretStore,
    mgmt: &str,
    only: &[String],
    now: OffsetDateTime,
) -> Result<Status, TrustError> {
    let mut out = Vec::new();
    let mut loaded = Vec::new();
    for cluster in store.clusters()? {
        if cluster == mgmt || (!only.is_empty() && !only.contains(&cluster)) {
            continue;
        }
        let mut st = ClusterStatus::of(&cluster);
        match store.read(&cacerts_key(&cluster))? {
            None => st.problems.push("no cacerts".into()),
            Some(data) => match load_cacerts(cache, &cluster, &data, now) {
                Err(e) => st.problems.push(e.to_string()),
                Ok(b) => {
                    st.show(&b);
                    loaded.push((out.len(), b));
                }
            },
        }
        out.push(st);
    }
    for (i, (ia, a)) in loaded.iter().enumerate() {
        for (ib, b) in &loaded[i + 1..] {
            let verdict = meshca_verify::interop::interop(
                &trust_of(&out[*ia].cluster, a),
                &trust_of(&out[*ib].cluster, b),
                now,
            );
            let problems: Vec<(String, String)> = verdict
                .failures()
                .map(|d| (d.to.clone(), d.describe()))
                .collect();
            for (to, problem) in problems {
                if let Some(st) = out.iter_mut().find(|s| s.cluster == to) {
                    st.problems.push(problem);
                }
            }
        }
    }
    Ok(Status {
        rotation: None,
        clusters: out,
    })
}

/// What a cluster's workloads present and trust, from its verified bundle.
fn trust_of<'a>(name: &'a str, b: &'a CacertsBundle) -> meshca_verify::interop::ClusterTrust<'a> {
    meshca_verify::interop::ClusterTrust {
        name,
        start: b.signer().cert(),
        chain: b.path().certs(),
        roots: b.roots(),
    }
}

impl ClusterStatus {
    /// `cluster` with nothing known yet.
    fn of(cluster: &str) -> Self {
        ClusterStatus {
            cluster: cluster.to_owned(),
            serial: None,
            not_after: None,
            next_renewal: None,
            rotation: None,
            roots: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// What the cluster's verified bundle says: its roots, its signing certificate's serial and
    /// end.
    fn show(&mut self, b: &CacertsBundle) {
        let c = b.signer().cert();
        self.roots = b.roots().iter().map(fingerprint).collect();
        self.serial = Some(hex_colons(c.x509().raw_serial()));
        self.not_after = Some(show_time(c.not_after()));
    }
}

/// A cluster's `cacerts` data, verified (or taken verified from `cache`).
fn load_cacerts(
    cache: &BundleCache,
    cluster: &str,
    data: &SecretData,
    now: OffsetDateTime,
) -> Result<std::sync::Arc<CacertsBundle>, PkiError> {
    cache.load(data, &format!("{cluster}/{ISTIO_NAMESPACE}/{CACERTS}"), now)
}
