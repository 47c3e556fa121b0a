//! The reconciler: for each cluster, a valid `cacerts` whose intermediate is signed by the
//! policy's CA with the right chain and root bundle; renewed when less than the grace ratio of
//! its life is left (or when forced); left alone when fresh. During a root rotation the "right"
//! signer and root bundle are the rotation phase's (see [`crate::rotation`]). Every new bundle is
//! proven, by signing a throwaway leaf that must verify against it, before it is written, and
//! everything that can be refused is refused before the first write.

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

/// A CA that signs intermediates, loaded from a secret of the management cluster.
pub(crate) struct PolicyCa {
    signer: Signer,
    /// The verified path from the signer to its root, both included.
    path: Vec<Certificate>,
    /// The roots of the CA's own bundle.
    roots: Vec<Certificate>,
}

impl PolicyCa {
    fn root(&self) -> &Certificate {
        // A verified path always ends at its root.
        self.path.last().unwrap_or(self.signer.cert())
    }
}

fn fingerprint(c: &Certificate) -> String {
    hex_colons(&c.sha256_fingerprint())
}

/// Where the policy's CA lives in the management cluster (an external signer keeps its own).
pub(crate) fn root_secret(policy: &TrustPolicy) -> Option<SecretRef> {
    match &policy.root {
        RootSource::SecretRef(r) => Some(r.clone()),
        RootSource::Generated { .. } => Some(SecretRef {
            namespace: policy.namespace.clone(),
            name: format!("{}.root-ca", policy.name),
        }),
        RootSource::External(_) => None,
    }
}

/// Where a generated root's successor is made.
fn generated_next_secret(policy: &TrustPolicy) -> SecretRef {
    SecretRef {
        namespace: policy.namespace.clone(),
        name: format!("{}.root-ca-next", policy.name),
    }
}

/// Every secret a reconcile under `policy` may read: what a dry run copies.
pub fn secrets_of(policy: &TrustPolicy, extra: Option<&SecretRef>) -> Vec<(String, String)> {
    let mut out = vec![
        (ISTIO_NAMESPACE.to_owned(), CACERTS.to_owned()),
        (policy.namespace.clone(), rotation::state_secret(policy)),
    ];
    if let Some(root) = root_secret(policy) {
        out.push((root.namespace, root.name));
    }
    if let RootSource::External(e) = &policy.root {
        for r in e.auth_key.iter().chain(e.roots.iter()) {
            out.push((r.namespace.clone(), r.name.clone()));
        }
    }
    let next = generated_next_secret(policy);
    out.push((next.namespace, next.name));
    for r in policy
        .passive
        .iter()
        .chain(policy.root_rotation.next_secret.iter())
        .chain(extra)
    {
        out.push((r.namespace.clone(), r.name.clone()));
    }
    out.sort();
    out.dedup();
    out
}

pub(crate) fn generate_root(
    policy: &TrustPolicy,
    ttl_days: i64,
    where_: &str,
    now: OffsetDateTime,
) -> Result<SecretData, TrustError> {
    let key = PrivateKey::generate(policy.key_type)?;
    let (nb, na) = meshca_pki::profile::days_from(now, ttl_days, "mgmtServerCa.generated.ttlDays")?;
    let cert = CaProfile {
        subject: Subject {
            organization: Some(policy.org_name.clone()),
            common_name: Some("Root CA".into()),
            locality: None,
        },
        not_before: nb,
        not_after: na,
        path_len: None,
        dns_names: Vec::new(),
    }
    .self_signed(&key, &format!("{where_}/{CA_CERT}"))?;
    let mut d = SecretData::new();
    d.insert(CA_CERT.into(), cert.pem().into_bytes());
    d.insert(CA_KEY.into(), key.to_pkcs8_pem().into_bytes());
    d.insert(CERT_CHAIN.into(), cert.pem().into_bytes());
    d.insert(ROOT_CERT.into(), cert.pem().into_bytes());
    Ok(d)
}

fn ca_from_data(
    data: &SecretData,
    where_: &str,
    now: OffsetDateTime,
) -> Result<PolicyCa, TrustError> {
    let bundle = CacertsBundle::from_files(data, where_, now)?;
    let path = bundle.path().certs().to_vec();
    let roots = bundle.roots().to_vec();
    let key = PrivateKey::from_pem(
        data.get(bundle.layout().key_file())
            .map(Vec::as_slice)
            .unwrap_or_default(),
        &format!("{where_}/{}", bundle.layout().key_file()),
    )?;
    let signer = Signer::Local(CaSigner::new(bundle.signer().cert().clone(), key, where_)?);
    Ok(PolicyCa {
        signer,
        path,
        roots,
    })
}

/// The policy's current CA (made and kept in the management cluster if generated and missing).
fn load_current(
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
    now: OffsetDateTime,
) -> Result<PolicyCa, TrustError> {
    if let RootSource::External(ext) = &policy.root {
        let (signer, path, roots) = connect_external(store, mgmt, ext, now)?;
        return Ok(PolicyCa {
            signer,
            path,
            roots,
        });
    }
    let Some(r) = root_secret(policy) else {
        return Err(TrustError::NoCaSecret);
    };
    let where_ = store.describe(&r.key(mgmt));
    let data = match (store.read(&r.key(mgmt))?, &policy.root) {
        (Some(d), _) => d,
        (None, RootSource::SecretRef(_)) => {
            return Err(TrustError::MissingSecret {
                field: "mgmtServerCa.secretRef".to_owned(),
                secret: r.key(mgmt).to_string(),
            });
        }
        (None, RootSource::Generated { ttl_days }) => {
            let d = generate_root(policy, *ttl_days, &where_, now)?;
            store.write(&r.key(mgmt), &d, &Expect::Absent)?;
            d
        }
        (None, RootSource::External(_)) => {
            return Err(TrustError::NoCaSecret);
        }
    };
    ca_from_data(&data, &where_, now)
}

fn load_secret_ca(
    store: &dyn SecretStore,
    mgmt: &str,
    r: &SecretRef,
    what: &str,
    now: OffsetDateTime,
) -> Result<PolicyCa, TrustError> {
    let where_ = store.describe(&r.key(mgmt));
    let Some(data) = store.read(&r.key(mgmt))? else {
        return Err(TrustError::MissingSecret {
            field: what.to_owned(),
            secret: r.key(mgmt).to_string(),
        });
    };
    ca_from_data(&data, &where_, now)
}

fn passive_roots(
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
) -> Result<Vec<Certificate>, TrustError> {
    let mut roots = Vec::new();
    for p in &policy.passive {
        let Some(d) = store.read(&p.key(mgmt))? else {
            return Err(TrustError::MissingSecret {
                field: "passiveCertificateAuthorities".to_owned(),
                secret: p.key(mgmt).to_string(),
            });
        };
        let bytes = d
            .get(ROOT_CERT)
            .or_else(|| d.get(CA_CERT))
            .cloned()
            .unwrap_or_default();
        for c in Certificate::all_from_pem(&bytes, &format!("{mgmt}/{}/{}", p.namespace, p.name))? {
            if !roots.contains(&c) {
                roots.push(c);
            }
        }
    }
    Ok(roots)
}

/// What every cluster's `cacerts` must be right now: who signs the intermediate, and the root bundle.
struct Target<'a> {
    ca: &'a PolicyCa,
    roots: Vec<Certificate>,
    /// The two, as records of verified bundles are checked against them.
    against: Against,
}

fn union(parts: &[&[Certificate]]) -> Vec<Certificate> {
    let mut out: Vec<Certificate> = Vec::new();
    for part in parts {
        for c in *part {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
    }
    out
}

fn target<'a>(
    current: &'a PolicyCa,
    next: Option<&'a PolicyCa>,
    phase: Option<RotationPhase>,
    passive: &[Certificate],
) -> Target<'a> {
    let (ca, roots) = match (phase, next) {
        (Some(RotationPhase::AddRoot), Some(n)) => {
            (current, union(&[&current.roots, &n.roots, passive]))
        }
        (Some(RotationPhase::Reissue), Some(n)) => (n, union(&[&current.roots, &n.roots, passive])),
        (Some(RotationPhase::DropRoot), Some(n)) => (n, union(&[&n.roots, passive])),
        _ => (current, union(&[&current.roots, passive])),
    };
    Target {
        against: Against::new(ca.signer.cert(), &roots),
        ca,
        roots,
    }
}

/// The clusters a reconcile covers: `only` if given, else the policy's list, else every
/// cluster folder but the management one.
fn clusters(
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    mgmt: &str,
    only: &[String],
) -> Result<Vec<String>, TrustError> {
    select_clusters(&store.clusters()?, policy, mgmt, only)
}

/// [`clusters`] out of the store's cluster list `present`, so that one listing serves twice.
fn select_clusters(
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
fn cpu_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |c| c.get())
}

/// What a cluster's current `cacerts` needs.
#[derive(Debug)]
enum Need {
    /// Nothing; renew at the given time.
    Fresh(OffsetDateTime),
    /// Only the root bundle is not the target's.
    Roots,
    /// A new intermediate, for the reason given.
    Reissue(String),
}

/// What a cluster that is not fresh gets in a pass.
enum Change {
    /// Its bundle with the target's roots.
    Roots,
    /// A new intermediate, for the reason given.
    Reissue(String),
}

/// Whether a cluster's `cacerts` matches the target (signer and root bundle), ignoring when it
/// falls due: what a rotation phase's gate asks.
fn matches_target(
    data: Option<&SecretData>,
    t: &Target<'_>,
    cluster: &str,
    now: OffsetDateTime,
    known: Known<'_>,
) -> bool {
    let Some(data) = data else { return false };
    judge(data, t, cluster, now, known).is_ok_and(|j| j.signed && j.roots_match)
}

/// What the reconciler keeps of bundles it verified: in this process, and in the store.
#[derive(Clone, Copy)]
struct Known<'a> {
    cache: &'a BundleCache,
    records: &'a Records,
}

/// What a reconcile knows of a cluster's bundle against a target.
struct Judged {
    digest: cache::Digest,
    facts: Facts,
    /// The target's CA signed its signing certificate.
    signed: bool,
    /// Its root bundle is the target's.
    roots_match: bool,
}

/// Judges a bundle against a target: from the same bytes loaded before in this process, else
/// from a record of the same bytes verified against the target, else by loading it as istiod
/// does.
fn judge(
    data: &SecretData,
    t: &Target<'_>,
    cluster: &str,
    now: OffsetDateTime,
    known: Known<'_>,
) -> Result<Judged, PkiError> {
    let where_ = format!("{cluster}/{ISTIO_NAMESPACE}/{CACERTS}");
    let digest = cache::digest(data, &where_);
    let bundle = match known.cache.get(&digest, now) {
        Some(b) => b,
        None => {
            if let Some(facts) = known.records.lookup(cluster, &digest, t.against)
                && facts.valid_at(now)
            {
                return Ok(Judged {
                    digest,
                    facts,
                    signed: true,
                    roots_match: true,
                });
            }
            known.cache.load_digested(digest, data, &where_, now)?
        }
    };
    Ok(Judged {
        digest,
        facts: Facts::of(&bundle),
        signed: signed_by(&bundle, t.ca.signer.cert()),
        roots_match: bundle.roots() == t.roots.as_slice(),
    })
}

/// Whether `ca` signed the bundle's signing certificate. Loading the bundle verified its path, so
/// when the path's next certificate is `ca` itself that very signature has been checked already.
fn signed_by(bundle: &CacertsBundle, ca: &Certificate) -> bool {
    bundle.path().certs().get(1) == Some(ca) || bundle.signer().cert().check_signed_by(ca).is_ok()
}

/// What a cluster's bundle needs against the target; a fresh one is noted in the records.
fn classify(
    data: Option<&SecretData>,
    t: &Target<'_>,
    policy: &TrustPolicy,
    cluster: &str,
    now: OffsetDateTime,
    known: Known<'_>,
) -> Need {
    let Some(data) = data else {
        return Need::Reissue("no cacerts".to_owned());
    };
    let j = match judge(data, t, cluster, now, known) {
        Ok(j) => j,
        Err(e) => return Need::Reissue(format!("invalid: {e}")),
    };
    if !j.signed {
        return Need::Reissue("not signed by the policy's CA".to_owned());
    }
    let due = renew_at(
        j.facts.signer_not_before,
        j.facts.signer_not_after,
        policy.grace_ratio,
    );
    if now >= due {
        return Need::Reissue(format!(
            "less than {:.0}% of its life left",
            policy.grace_ratio * 100.0
        ));
    }
    if !j.roots_match {
        return Need::Roots;
    }
    known.records.note(cluster, &j.digest, &j.facts, t.against);
    Need::Fresh(due)
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

fn reconcile_pass(
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

/// Refuses intermediates that would outlive the CA that signs them even when fresh: a policy
/// mistake, not a matter of time. (Near the CA's end they are cut short to its notAfter instead.)
fn check_lifetime(policy: &TrustPolicy, ca: &Certificate) -> Result<(), TrustError> {
    let life = ca.not_after() - ca.not_before();
    if Duration::days(policy.ttl_days) > life {
        return Err(PkiError::OutlivesIssuer {
            child: "the clusters' intermediates".to_owned(),
            issuer: format!("the policy's CA {}", ca.subject()),
            field: "intermediateCertOptions.ttlDays".to_owned(),
            child_not_after: ca.not_before() + Duration::days(policy.ttl_days),
            issuer_not_after: ca.not_after(),
        }
        .into());
    }
    Ok(())
}

/// How many times a pass reads again and re-plans a cluster whose `cacerts` another writer
/// changed between the read and the write.
const CONFLICT_RETRIES: usize = 3;

/// One pass over the clusters against one target: plan (reading every cluster first, so that
/// refusals come before any write), make and prove the new bundles, then write them, each under
/// the version it was read at. Returns the renewal times of every cluster left fresh or newly
/// written. The clusters are those of `outcomes`, in its order.
///
/// A cluster whose store fails (an API server down, a secret that is not meshca's) is marked
/// [`Outcome::Failed`] and the others go on; a cluster whose `cacerts` changed since it was read
/// is read again and re-planned. Reading and classifying, and making and proving, run on every
/// core: each cluster's work is independent, and the first failure in cluster order of making a
/// bundle (a CA problem, common to all) is the one returned, as in a plain loop.
fn pass(
    known: Known<'_>,
    store: &dyn SecretStore,
    policy: &TrustPolicy,
    t: &Target<'_>,
    force: &[String],
    outcomes: &mut [(String, Outcome)],
    now: OffsetDateTime,
) -> Result<Vec<OffsetDateTime>, TrustError> {
    let workers = cpu_workers();
    let mut renewals = Vec::new();
    let mut todo: Vec<usize> = (0..outcomes.len())
        .filter(|i| !matches!(outcomes[*i].1, Outcome::Failed(_)))
        .collect();
    for attempt in 0..=CONFLICT_RETRIES {
        let names: Vec<String> = todo.iter().map(|i| outcomes[*i].0.clone()).collect();
        let classified = in_parallel(
            names.len(),
            workers,
            |_| false,
            |j| {
                let cluster = &names[j];
                let current = store.get(&cacerts_key(cluster))?;
                let forced = force.iter().any(|f| f == cluster || f == "*");
                let data = current.as_ref().map(|s| &s.data);
                let need = match classify(data, t, policy, cluster, now, known) {
                    Need::Fresh(_) | Need::Roots if forced => {
                        Need::Reissue("rotation requested".to_owned())
                    }
                    n => n,
                };
                Ok::<_, StoreError>((current, need))
            },
        );
        let mut plan: Vec<(usize, Option<Secret>, Change)> = Vec::new();
        for (j, c) in classified.into_iter().enumerate() {
            let i = todo[j];
            match c {
                Err(e) => outcomes[i].1 = Outcome::Failed(e.to_string()),
                Ok((_, Need::Fresh(due))) => renewals.push(due),
                Ok((current, Need::Roots)) => plan.push((i, current, Change::Roots)),
                Ok((current, Need::Reissue(why))) => {
                    plan.push((i, current, Change::Reissue(why)));
                }
            }
        }
        // Each new bundle's key is made by the thread that issues it, so that slow keys (RSA's
        // prime search varies a lot) spread over the cores as they come.
        let made = try_in_parallel(plan.len(), workers, |j| {
            let (i, current, change) = &plan[j];
            let cluster = &outcomes[*i].0;
            let (data, outcome) = match change {
                Change::Roots => {
                    let mut data = current.as_ref().map(|s| s.data.clone()).unwrap_or_default();
                    data.insert(ROOT_CERT.into(), to_pem_bundle(&t.roots).into_bytes());
                    (data, Outcome::RootsUpdated)
                }
                Change::Reissue(reason) => {
                    let key = PrivateKey::generate(policy.key_type)?;
                    let outcome = if current.is_none() {
                        Outcome::Created
                    } else {
                        Outcome::Rotated(reason.clone())
                    };
                    (issue(t, policy, cluster, key, now)?, outcome)
                }
            };
            let bundle = prove(&data, cluster, now)?;
            let c = bundle.signer().cert();
            let due = renew_at(c.not_before(), c.not_after(), policy.grace_ratio);
            let digest = cache::digest(&data, &format!("{cluster}/{ISTIO_NAMESPACE}/{CACERTS}"));
            if signed_by(&bundle, t.ca.signer.cert()) && bundle.roots() == t.roots.as_slice() {
                known
                    .records
                    .note(cluster, &digest, &Facts::of(&bundle), t.against);
            }
            known.cache.keep(digest, bundle);
            Ok::<_, TrustError>((data, outcome, due))
        })?;
        let keys: Vec<SecretKey> = plan
            .iter()
            .map(|(i, _, _)| cacerts_key(&outcomes[*i].0))
            .collect();
        let expects: Vec<Expect> = plan
            .iter()
            .map(|(_, current, _)| Expect::from_read(current.as_ref()))
            .collect();
        let writes: Vec<SecretWrite<'_>> = keys
            .iter()
            .zip(&expects)
            .zip(&made)
            .map(|((key, expect), (data, _, _))| SecretWrite { key, data, expect })
            .collect();
        let written = store.write_all(&writes);
        let mut conflicted = Vec::new();
        for (((i, _, _), (_, outcome, due)), result) in plan.iter().zip(made).zip(written) {
            match result {
                Ok(_) => {
                    renewals.push(due);
                    outcomes[*i].1 = match (&outcomes[*i].1, outcome) {
                        // A later pass of the same reconcile keeps the first, more telling,
                        // outcome.
                        (Outcome::Created, _) => Outcome::Created,
                        (_, o) => o,
                    };
                }
                Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => conflicted.push(*i),
                Err(e) => outcomes[*i].1 = Outcome::Failed(e.to_string()),
            }
        }
        if conflicted.is_empty() {
            break;
        }
        todo = conflicted;
    }
    Ok(renewals)
}

fn issue(
    t: &Target<'_>,
    policy: &TrustPolicy,
    cluster: &str,
    key: PrivateKey,
    now: OffsetDateTime,
) -> Result<SecretData, TrustError> {
    let where_ = format!("{cluster}/{ISTIO_NAMESPACE}/{CACERTS}");
    let (nb, na) =
        meshca_pki::profile::days_from(now, policy.ttl_days, "intermediateCertOptions.ttlDays")?;
    // Near the end of the CA's life an intermediate is cut short to it, as istiod cuts leaves.
    let na = na.min(t.ca.signer.cert().not_after());
    let cert = t.ca.signer.issue_intermediate(
        &CaProfile {
            subject: Subject {
                organization: Some(policy.org_name.clone()),
                common_name: Some("Intermediate CA".into()),
                locality: Some(cluster.to_owned()),
            },
            not_before: nb,
            not_after: na,
            path_len: Some(0),
            dns_names: vec!["istiod.istio-system.svc".into()],
        },
        &key,
        &format!("{where_}/{CA_CERT}"),
    )?;
    // Intermediate first, then the signer's path up to and including its root, so that a
    // secretRef holding an intermediate ("multi-intermediate") keeps its chain.
    let chain = cert.pem() + &to_pem_bundle(&t.ca.path);
    let mut data = BundleFiles::new();
    data.insert(CA_CERT.into(), cert.pem().into_bytes());
    data.insert(CA_KEY.into(), key.to_pkcs8_pem().into_bytes());
    data.insert(CERT_CHAIN.into(), chain.into_bytes());
    data.insert(ROOT_CERT.into(), to_pem_bundle(&t.roots).into_bytes());
    Ok(data)
}

/// Proves a bundle before use: it loads as istiod loads it, and a throwaway leaf it signs
/// verifies against its root bundle.
fn prove(
    data: &SecretData,
    cluster: &str,
    now: OffsetDateTime,
) -> Result<CacertsBundle, TrustError> {
    let where_ = format!("{cluster}/{ISTIO_NAMESPACE}/{CACERTS}");
    let bundle = CacertsBundle::from_files(data, &where_, now)?;
    let probe_key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let probe = bundle.signer().issue_workload(
        &WorkloadProfile {
            subject: Subject::default(),
            not_before: now - Duration::minutes(1),
            not_after: (now + Duration::minutes(5)).min(bundle.signer().cert().not_after()),
            uris: vec![format!(
                "spiffe://cluster.local/ns/meshca-probe/sa/{cluster}"
            )],
            dns_names: Vec::new(),
            ips: Vec::new(),
            key_usage_critical: true,
        },
        &probe_key,
        "probe leaf",
    )?;
    let mut inter = vec![bundle.signer().cert().clone()];
    inter.extend(bundle.intermediates().iter().cloned());
    verify_path(&probe, &inter, bundle.roots(), now)?;
    Ok(bundle)
}

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

fn start_rotation_with(
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

/// Each cluster's state under `policy`, and the root rotation's.
pub fn status(
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
    let cache = BundleCache::new();
    let none = Records::none();
    let known = Known {
        cache: &cache,
        records: &none,
    };
    for cluster in clusters(store, policy, mgmt, only)? {
        let mut st = ClusterStatus {
            cluster: cluster.clone(),
            serial: None,
            not_after: None,
            next_renewal: None,
            rotation: None,
            problems: Vec::new(),
        };
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
            Some(data) => match cache.load(
                &data,
                &format!("{cluster}/{ISTIO_NAMESPACE}/{CACERTS}"),
                now,
            ) {
                Err(e) => st.problems.push(e.to_string()),
                Ok(b) => {
                    let c = b.signer().cert();
                    st.serial = Some(hex_colons(c.x509().raw_serial()));
                    st.not_after = Some(show_time(c.not_after()));
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
