//! Loading the policy's CA: from its secret in the management cluster (made there when the
//! policy generates it), from an external signer, and the roots it passes on.

use super::*;

/// A CA that signs intermediates, loaded from a secret of the management cluster.
pub(crate) struct PolicyCa {
    pub(crate) signer: Signer,
    /// The verified path from the signer to its root, both included.
    pub(crate) path: Vec<Certificate>,
    /// The roots of the CA's own bundle.
    pub(crate) roots: Vec<Certificate>,
}

impl PolicyCa {
    pub(crate) fn root(&self) -> &Certificate {
        // A verified path always ends at its root.
        self.path.last().unwrap_or(self.signer.cert())
    }
}

pub(crate) fn fingerprint(c: &Certificate) -> String {
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
pub(crate) fn generated_next_secret(policy: &TrustPolicy) -> SecretRef {
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

pub(crate) fn ca_from_data(
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
pub(crate) fn load_current(
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

pub(crate) fn load_secret_ca(
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

pub(crate) fn passive_roots(
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

/// Refuses intermediates that would outlive the CA that signs them even when fresh: a policy
/// mistake, not a matter of time. (Near the CA's end they are cut short to its notAfter instead.)
pub(crate) fn check_lifetime(policy: &TrustPolicy, ca: &Certificate) -> Result<(), TrustError> {
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
