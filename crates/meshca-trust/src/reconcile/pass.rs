//! One pass over the clusters: read and classify each, make and prove the new bundles, write each
//! under the version it was read at, re-plan what lost a race.

use super::*;

/// How many times a pass reads again and re-plans a cluster whose `cacerts` another writer
/// changed between the read and the write.
pub(crate) const CONFLICT_RETRIES: usize = 3;

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
pub(crate) fn pass(
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

pub(crate) fn issue(
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
    Ok(data.into())
}

/// Proves a bundle before use: it loads as istiod loads it, and a throwaway leaf it signs
/// verifies against its root bundle.
pub(crate) fn prove(
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
