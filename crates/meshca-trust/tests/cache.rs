//! A manager that keeps the bundles it verified (`trust run`) decides exactly as one that
//! verifies every bundle afresh: a bundle changed in any way behind its back (another CA's, a
//! key that does not match, one byte of a certificate) is loaded and judged again, and time is
//! still checked on the kept ones.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use meshca_trust::store::SecretData;
use meshca_trust::{
    BundleCache, MemoryStore, Outcome, SecretStore, TrustPolicy, reconcile, reconcile_with,
};
use time::{Duration, OffsetDateTime};

const POLICY: &str = "apiVersion: trust.meshca/v1alpha1
kind: RootTrustPolicy
metadata:
  name: mesh
  namespace: gloo-mesh
spec:
  config:
    mgmtServerCa:
      generated:
        ttlDays: 365
    intermediateCertOptions:
      ttlDays: 30
      secretRotationGracePeriodRatio: 0.1
      keyType: ecdsa-p256
";

const CLUSTERS: [&str; 4] = ["c1", "c2", "c3", "c4"];

fn world(now: OffsetDateTime) -> (MemoryStore, TrustPolicy) {
    let store = MemoryStore::with_clusters(&["mgmt", "c1", "c2", "c3", "c4"]);
    let policy = TrustPolicy::from_yaml(POLICY, "policy.yaml").unwrap();
    reconcile(&store, &policy, "mgmt", &[], &[], now).unwrap();
    (store, policy)
}

fn cacerts(store: &MemoryStore, cluster: &str) -> SecretData {
    store
        .read(cluster, "istio-system", "cacerts")
        .unwrap()
        .unwrap()
}

fn outcome(report: &meshca_trust::Report, cluster: &str) -> Outcome {
    report
        .clusters
        .iter()
        .find(|(c, _)| c == cluster)
        .map(|(_, o)| o.clone())
        .unwrap()
}

#[test]
fn kept_bundles_are_used_only_while_their_bytes_are_unchanged() {
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let (store, policy) = world(now);
    let cache = BundleCache::new();

    // The first reconcile verifies every bundle; the second finds each unchanged.
    let r = reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap();
    assert!(r.clusters.iter().all(|(_, o)| *o == Outcome::Fresh));
    assert_eq!(cache.stats(), (0, 4));
    let r = reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap();
    assert!(r.clusters.iter().all(|(_, o)| *o == Outcome::Fresh));
    assert_eq!(cache.stats(), (4, 4));
    assert_eq!(cache.len(), 4);

    // Behind the manager's back: c1 gets another policy's bundle (another root and CA), c2 a key
    // that is not its intermediate's, c3 one byte of its intermediate's signature changed.
    let (other, _) = world(now);
    store
        .write("c1", "istio-system", "cacerts", &cacerts(&other, "c1"))
        .unwrap();
    let mut c2 = cacerts(&store, "c2");
    c2.insert(
        "ca-key.pem".into(),
        cacerts(&store, "c4")["ca-key.pem"].clone(),
    );
    store.write("c2", "istio-system", "cacerts", &c2).unwrap();
    let mut c3 = cacerts(&store, "c3");
    let pem = String::from_utf8(c3["ca-cert.pem"].clone()).unwrap();
    let end = pem.find("-----END").unwrap();
    // The base64 characters just before the footer (and any padding) are the signature's.
    let at = pem[..end]
        .char_indices()
        .rev()
        .filter(|(_, ch)| ch.is_ascii_alphanumeric())
        .nth(10)
        .unwrap()
        .0;
    let mut bytes = pem.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    c3.insert("ca-cert.pem".into(), bytes);
    store.write("c3", "istio-system", "cacerts", &c3).unwrap();

    let r = reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap();
    assert_eq!(
        outcome(&r, "c1"),
        Outcome::Rotated("not signed by the policy's CA".into())
    );
    for c in ["c2", "c3"] {
        match outcome(&r, c) {
            Outcome::Rotated(why) => assert!(why.starts_with("invalid: "), "{c}: {why}"),
            o => panic!("{c}: {o:?}"),
        }
    }
    assert_eq!(outcome(&r, "c4"), Outcome::Fresh);
    // A manager with nothing kept decides the same: every bundle is now fresh for both.
    let fresh = reconcile(&store, &policy, "mgmt", &[], &[], now).unwrap();
    assert!(fresh.clusters.iter().all(|(_, o)| *o == Outcome::Fresh));
    let before = cache.stats();
    let r = reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap();
    assert!(r.clusters.iter().all(|(_, o)| *o == Outcome::Fresh));
    // The three bundles just made were kept when they were proven: all four are hits.
    assert_eq!(cache.stats(), (before.0 + 4, before.1));
    // Only what the last reconcile used is kept.
    assert_eq!(cache.len(), CLUSTERS.len());
}

#[test]
fn kept_bundles_still_fall_due_and_expire() {
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let (store, policy) = world(now);
    let cache = BundleCache::new();
    reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap();
    // 27.5 days into 30: less than 10% left, every cluster renews.
    let due = now + Duration::hours(27 * 24 + 12);
    let r = reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], due).unwrap();
    for c in CLUSTERS {
        assert_eq!(
            outcome(&r, c),
            Outcome::Rotated("less than 10% of its life left".into()),
            "{c}"
        );
    }
    // A manager whose clock jumps past the new bundles' end: they are loaded again, found
    // expired, and replaced.
    let expired = due + Duration::days(31);
    let r = reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], expired).unwrap();
    for c in CLUSTERS {
        match outcome(&r, c) {
            Outcome::Rotated(why) => assert!(why.contains("invalid: "), "{c}: {why}"),
            o => panic!("{c}: {o:?}"),
        }
    }
}
