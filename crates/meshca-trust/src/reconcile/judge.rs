//! Judging a cluster's bundle against the target of the moment (who signs, which roots): from
//! the bundles this process verified, from the records of verified bundles, or by loading it.

use super::*;

/// What every cluster's `cacerts` must be right now: who signs the intermediate, and the root bundle.
pub(crate) struct Target<'a> {
    pub(crate) ca: &'a PolicyCa,
    pub(crate) roots: Vec<Certificate>,
    /// The two, as records of verified bundles are checked against them.
    pub(crate) against: Against,
}

pub(crate) fn union(parts: &[&[Certificate]]) -> Vec<Certificate> {
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

pub(crate) fn target<'a>(
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

/// What a cluster's current `cacerts` needs.
#[derive(Debug)]
pub(crate) enum Need {
    /// Nothing; renew at the given time.
    Fresh(OffsetDateTime),
    /// Only the root bundle is not the target's.
    Roots,
    /// A new intermediate, for the reason given.
    Reissue(String),
}

/// What a cluster that is not fresh gets in a pass.
pub(crate) enum Change {
    /// Its bundle with the target's roots.
    Roots,
    /// A new intermediate, for the reason given.
    Reissue(String),
}

/// Whether a cluster's `cacerts` matches the target (signer and root bundle), ignoring when it
/// falls due: what a rotation phase's gate asks.
pub(crate) fn matches_target(
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
pub(crate) struct Known<'a> {
    pub(crate) cache: &'a BundleCache,
    pub(crate) records: &'a Records,
}

/// What a reconcile knows of a cluster's bundle against a target.
pub(crate) struct Judged {
    pub(crate) digest: cache::Digest,
    pub(crate) facts: Facts,
    /// The target's CA signed its signing certificate.
    pub(crate) signed: bool,
    /// Its root bundle is the target's.
    pub(crate) roots_match: bool,
}

/// Judges a bundle against a target: from the same bytes loaded before in this process, else
/// from a record of the same bytes verified against the target, else by loading it as istiod
/// does.
pub(crate) fn judge(
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
pub(crate) fn signed_by(bundle: &CacertsBundle, ca: &Certificate) -> bool {
    bundle.path().certs().get(1) == Some(ca) || bundle.signer().cert().check_signed_by(ca).is_ok()
}

/// What a cluster's bundle needs against the target; a fresh one is noted in the records.
/// Why an intermediate made for another `ttlDays` is re-issued: the policy was edited. One cut
/// short to the CA's own end is as the policy wants; an external signer's profile sets its own
/// lifetimes.
fn other_lifetime(facts: &Facts, t: &Target<'_>, policy: &TrustPolicy) -> Option<String> {
    if matches!(policy.root, RootSource::External(_)) {
        return None;
    }
    let life = facts.signer_not_after - facts.signer_not_before;
    let wanted = Duration::days(policy.ttl_days);
    let slack = Duration::minutes(1);
    let cut_short = facts.signer_not_after >= t.ca.signer.cert().not_after() - slack;
    let differs = life > wanted + slack || (life < wanted - slack && !cut_short);
    differs.then(|| {
        format!(
            "issued for {:.1} day(s); the policy asks for {}",
            life.as_seconds_f64() / 86_400.0,
            policy.ttl_days
        )
    })
}

pub(crate) fn classify(
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
    if let Some(reason) = other_lifetime(&j.facts, t, policy) {
        return Need::Reissue(reason);
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
