//! The reconciler: for each cluster, a valid `cacerts` whose intermediate is signed by the
//! policy's CA with the right chain and root; renewed when less than the grace ratio of its life
//! is left (or when forced); left alone when fresh. Every new intermediate is proven, by signing
//! a throwaway leaf that must verify against the bundle, before it is written. Everything that can
//! be refused is refused before the first write.

use meshca_pki::bundle::{BundleFiles, CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
use meshca_pki::cert::to_pem_bundle;
use meshca_pki::rotation::renew_at;
use meshca_pki::{
    CaProfile, CaSigner, CacertsBundle, Certificate, KeyType, PkiError, PrivateKey, Subject,
    WorkloadProfile, verify_path,
};
use meshca_store::StoreError;
use time::{Duration, OffsetDateTime};

use crate::policy::{RootSource, TrustPolicy};
use crate::store::{FolderStore, SecretData};

/// Istio's namespace and secret name.
pub const ISTIO_NAMESPACE: &str = "istio-system";
/// The secret istiod reads.
pub const CACERTS: &str = "cacerts";

/// Why a reconcile stopped before writing anything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The policy's CA could not be loaded.
    #[error("{0}")]
    Ca(String),
    /// A PKI check failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A named cluster is not in the store.
    #[error("cluster {0:?} is not in the store")]
    UnknownCluster(String),
}

/// What happened to one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A first `cacerts` was written.
    Created,
    /// The intermediate was replaced; the reason says why.
    Rotated(String),
    /// Fresh and correct: nothing written.
    Fresh,
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
    /// Problems found; empty when healthy.
    pub problems: Vec<String>,
}

/// The policy's signing CA, loaded from the management cluster (made there if generated).
struct PolicyCa {
    signer: CaSigner,
    /// The verified path from the signer to its root, both included.
    path: Vec<Certificate>,
    /// The root bundle every cluster trusts (signing root plus passive roots).
    roots: Vec<Certificate>,
}

fn load_ca(
    store: &FolderStore,
    policy: &TrustPolicy,
    mgmt: &str,
    now: OffsetDateTime,
) -> Result<PolicyCa, TrustError> {
    let (ns, name) = match &policy.root {
        RootSource::SecretRef(r) => (r.namespace.clone(), r.name.clone()),
        RootSource::Generated { .. } => {
            (policy.namespace.clone(), format!("{}.root-ca", policy.name))
        }
    };
    let where_ = format!("{mgmt}/{ns}/{name}");
    let data = store.read(mgmt, &ns, &name)?;
    let data = match (data, &policy.root) {
        (Some(d), _) => d,
        (None, RootSource::SecretRef(_)) => {
            return Err(TrustError::Ca(format!(
                "mgmtServerCa.secretRef: secret {where_} not found in the store"
            )));
        }
        (None, RootSource::Generated { ttl_days }) => {
            let key = PrivateKey::generate(policy.key_type)?;
            let (nb, na) =
                meshca_pki::profile::days_from(now, *ttl_days, "mgmtServerCa.generated.ttlDays")?;
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
            store.write(mgmt, &ns, &name, &d)?;
            d
        }
    };
    let bundle = CacertsBundle::from_files(&data, &where_, now)?;
    let path = bundle.path().certs().to_vec();
    let mut roots = bundle.roots().to_vec();
    for p in &policy.passive {
        let Some(d) = store.read(mgmt, &p.namespace, &p.name)? else {
            return Err(TrustError::Ca(format!(
                "passiveCertificateAuthorities: secret {mgmt}/{}/{} not found",
                p.namespace, p.name
            )));
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
    let signer_cert = bundle.signer().cert().clone();
    let key = PrivateKey::from_pem(
        data.get(bundle.layout().key_file())
            .map(Vec::as_slice)
            .unwrap_or_default(),
        &format!("{where_}/{}", bundle.layout().key_file()),
    )?;
    let signer = CaSigner::new(signer_cert, key, &where_)?;
    Ok(PolicyCa {
        signer,
        path,
        roots,
    })
}

/// The clusters a reconcile covers: `only` if given, else the policy's list, else every
/// cluster folder but the management one.
fn clusters(
    store: &FolderStore,
    policy: &TrustPolicy,
    mgmt: &str,
    only: &[String],
) -> Result<Vec<String>, TrustError> {
    let present = store.clusters()?;
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

/// Why a cluster's current `cacerts` needs replacing, or `None` when it is fresh and correct.
fn needs_rotation(
    current: Option<&SecretData>,
    ca: &PolicyCa,
    policy: &TrustPolicy,
    cluster: &str,
    now: OffsetDateTime,
) -> Option<String> {
    let data = current?;
    let where_ = format!("{cluster}/{ISTIO_NAMESPACE}/{CACERTS}");
    let bundle = match CacertsBundle::from_files(data, &where_, now) {
        Ok(b) => b,
        Err(e) => return Some(format!("invalid: {e}")),
    };
    let cert = bundle.signer().cert();
    if cert.check_signed_by(ca.signer.cert()).is_err() {
        return Some("not signed by the policy's CA".to_owned());
    }
    if bundle.roots() != ca.roots.as_slice() {
        return Some("root bundle differs from the policy's".to_owned());
    }
    if now >= renew_at(cert.not_before(), cert.not_after(), policy.grace_ratio) {
        return Some(format!(
            "less than {:.0}% of its life left",
            policy.grace_ratio * 100.0
        ));
    }
    None
}

/// Reconciles once. `force` names clusters to rotate even when fresh (all if it holds "*").
pub fn reconcile(
    store: &FolderStore,
    policy: &TrustPolicy,
    mgmt: &str,
    only: &[String],
    force: &[String],
    now: OffsetDateTime,
) -> Result<Vec<(String, Outcome)>, TrustError> {
    let ca = load_ca(store, policy, mgmt, now)?;
    let targets = clusters(store, policy, mgmt, only)?;
    // Plan first: read every cluster and decide, so that refusals come before any write.
    let (nb, na) =
        meshca_pki::profile::days_from(now, policy.ttl_days, "intermediateCertOptions.ttlDays")?;
    let ca_end = ca.signer.cert().not_after();
    if na > ca_end {
        return Err(PkiError::OutlivesIssuer {
            child: "the clusters' intermediates".to_owned(),
            issuer: "the policy's CA".to_owned(),
            field: "intermediateCertOptions.ttlDays".to_owned(),
            child_not_after: na,
            issuer_not_after: ca_end,
        }
        .into());
    }
    let mut plan = Vec::new();
    for cluster in &targets {
        let current = store.read(cluster, ISTIO_NAMESPACE, CACERTS)?;
        let forced = force.iter().any(|f| f == cluster || f == "*");
        let outcome = match (
            &current,
            needs_rotation(current.as_ref(), &ca, policy, cluster, now),
        ) {
            (None, _) => Outcome::Created,
            (Some(_), Some(reason)) => Outcome::Rotated(reason),
            (Some(_), None) if forced => Outcome::Rotated("rotation requested".to_owned()),
            (Some(_), None) => Outcome::Fresh,
        };
        plan.push((cluster.clone(), outcome));
    }
    let to_make: Vec<usize> = plan
        .iter()
        .enumerate()
        .filter(|(_, (_, o))| *o != Outcome::Fresh)
        .map(|(i, _)| i)
        .collect();
    let keys = generate_keys(policy.key_type, to_make.len())?;
    let mut writes = Vec::new();
    for (i, key) in to_make.iter().zip(keys) {
        let cluster = &plan[*i].0;
        let data = issue(&ca, policy, cluster, key, nb, na, now)?;
        writes.push((cluster.clone(), data));
    }
    for (cluster, data) in &writes {
        store.write(cluster, ISTIO_NAMESPACE, CACERTS, data)?;
    }
    Ok(plan)
}

fn generate_keys(kt: KeyType, n: usize) -> Result<Vec<PrivateKey>, PkiError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let workers = std::thread::available_parallelism()
        .map_or(1, |c| c.get())
        .min(n);
    let per = n.div_ceil(workers);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let count = per.min(n.saturating_sub(w * per));
                s.spawn(move || {
                    (0..count)
                        .map(|_| PrivateKey::generate(kt))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for h in handles {
            match h.join() {
                Ok(r) => out.extend(r?),
                Err(_) => {
                    return Err(PkiError::Crypto {
                        what: "key generation".into(),
                        reason: "a worker stopped".into(),
                    });
                }
            }
        }
        Ok(out)
    })
}

fn issue(
    ca: &PolicyCa,
    policy: &TrustPolicy,
    cluster: &str,
    key: PrivateKey,
    nb: OffsetDateTime,
    na: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<SecretData, TrustError> {
    let where_ = format!("{cluster}/{ISTIO_NAMESPACE}/{CACERTS}");
    let cert = ca.signer.issue_ca(
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
    let roots_pem = to_pem_bundle(&ca.roots);
    // Intermediate first, then the signer's path up to and including its root, so that a
    // secretRef holding an intermediate ("multi-intermediate") keeps its chain.
    let chain = cert.pem() + &to_pem_bundle(&ca.path);
    let mut data = BundleFiles::new();
    data.insert(CA_CERT.into(), cert.pem().into_bytes());
    data.insert(CA_KEY.into(), key.to_pkcs8_pem().into_bytes());
    data.insert(CERT_CHAIN.into(), chain.into_bytes());
    data.insert(ROOT_CERT.into(), roots_pem.into_bytes());
    // Prove before use: the bundle loads as istiod loads it, and a throwaway leaf it signs
    // verifies against the root bundle.
    let bundle = CacertsBundle::from_files(&data, &where_, now)?;
    let probe_key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let probe = bundle.signer().issue_workload(
        &WorkloadProfile {
            subject: Subject::default(),
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::minutes(5),
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
    Ok(data)
}

/// Each cluster's state under `policy`.
pub fn status(
    store: &FolderStore,
    policy: &TrustPolicy,
    mgmt: &str,
    only: &[String],
    now: OffsetDateTime,
) -> Result<Vec<ClusterStatus>, TrustError> {
    let ca = load_ca(store, policy, mgmt, now).ok();
    let mut out = Vec::new();
    for cluster in clusters(store, policy, mgmt, only)? {
        let mut st = ClusterStatus {
            cluster: cluster.clone(),
            serial: None,
            not_after: None,
            next_renewal: None,
            problems: Vec::new(),
        };
        match store.read(&cluster, ISTIO_NAMESPACE, CACERTS)? {
            None => st.problems.push("no cacerts yet".into()),
            Some(data) => match CacertsBundle::from_files(
                &data,
                &format!("{cluster}/{ISTIO_NAMESPACE}/{CACERTS}"),
                now,
            ) {
                Err(e) => st.problems.push(e.to_string()),
                Ok(b) => {
                    let c = b.signer().cert();
                    st.serial = Some(meshca_pki::describe::hex_colons(c.x509().raw_serial()));
                    st.not_after = Some(meshca_pki::error::show_time(c.not_after()));
                    st.next_renewal = Some(meshca_pki::error::show_time(renew_at(
                        c.not_before(),
                        c.not_after(),
                        policy.grace_ratio,
                    )));
                    match &ca {
                        None => st.problems.push("the policy's CA cannot be loaded".into()),
                        Some(ca) => {
                            if let Some(reason) =
                                needs_rotation(Some(&data), ca, policy, &cluster, now)
                            {
                                st.problems.push(format!("due for rotation: {reason}"));
                            }
                        }
                    }
                }
            },
        }
        out.push(st);
    }
    Ok(out)
}
