//! A manager that knows bundles it verified before decides exactly as one that verifies every
//! bundle afresh. What it knows: the records in the management cluster (`<policy>.verified`),
//! which serve a new process, and the bundles `trust run` keeps in memory. A bundle changed in
//! any way behind its back (another CA's, a key that does not match, one byte of a signature), a
//! record edited by hand or made under another CA, are loaded and judged again; time is still
//! checked on what is known.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use meshca_store::SecretData;
use meshca_store::SecretKey;
use meshca_trust::{
    BundleCache, MemoryStore, Outcome, SecretStore, TrustPolicy, reconcile, reconcile_with,
};
use time::{Duration, OffsetDateTime};

use meshca_testkit::GENERATED_ROOT_POLICY as POLICY;

const CLUSTERS: [&str; 4] = ["c1", "c2", "c3", "c4"];

fn world(now: OffsetDateTime) -> (MemoryStore, TrustPolicy) {
    let store = MemoryStore::with_clusters(&["mgmt", "c1", "c2", "c3", "c4"]);
    let policy = TrustPolicy::from_yaml(POLICY, "policy.yaml").unwrap();
    reconcile(&store, &policy, "mgmt", &[], &[], now).unwrap();
    (store, policy)
}

fn cacerts(store: &MemoryStore, cluster: &str) -> SecretData {
    store
        .read(&SecretKey::new(cluster, "istio-system", "cacerts"))
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

fn records(store: &MemoryStore) -> Option<String> {
    store
        .read(&SecretKey::new("mgmt", "gloo-mesh", "mesh.verified"))
        .unwrap()
        .and_then(|d| d.get("bundles").cloned())
        .map(|b| String::from_utf8(b).unwrap())
}

fn set_records(store: &MemoryStore, text: Option<&str>) {
    let mut d = SecretData::new();
    if let Some(t) = text {
        d.insert("bundles".into(), t.as_bytes().to_vec());
    }
    store
        .replace(&SecretKey::new("mgmt", "gloo-mesh", "mesh.verified"), &d)
        .unwrap();
}

/// c1 gets another policy's bundle (another root and CA), c2 a key that is not its
/// intermediate's, c3 one byte of its intermediate's signature changed.
fn tamper(store: &MemoryStore, now: OffsetDateTime) {
    let (other, _) = world(now);
    store
        .replace(
            &SecretKey::new("c1", "istio-system", "cacerts"),
            &cacerts(&other, "c1"),
        )
        .unwrap();
    let mut c2 = cacerts(store, "c2");
    c2.insert(
        "ca-key.pem".into(),
        cacerts(store, "c4")["ca-key.pem"].clone(),
    );
    store
        .replace(&SecretKey::new("c2", "istio-system", "cacerts"), &c2)
        .unwrap();
    let mut c3 = cacerts(store, "c3");
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
    store
        .replace(&SecretKey::new("c3", "istio-system", "cacerts"), &c3)
        .unwrap();
}

fn check_tampered_are_replaced(r: &meshca_trust::Report) {
    assert_eq!(
        outcome(r, "c1"),
        Outcome::Rotated("not signed by the policy's CA".into())
    );
    for c in ["c2", "c3"] {
        match outcome(r, c) {
            Outcome::Rotated(why) => assert!(why.starts_with("invalid: "), "{c}: {why}"),
            o => panic!("{c}: {o:?}"),
        }
    }
    assert_eq!(outcome(r, "c4"), Outcome::Fresh);
}

fn all_fresh(r: &meshca_trust::Report) -> bool {
    r.clusters.len() == CLUSTERS.len() && r.clusters.iter().all(|(_, o)| *o == Outcome::Fresh)
}

#[test]
fn a_new_manager_trusts_a_record_only_for_the_same_bytes_under_the_same_ca() {
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let (store, policy) = world(now);
    let written = records(&store).expect("the first reconcile records what it made");
    assert_eq!(written.lines().count(), CLUSTERS.len(), "{written}");

    // A new process loads no bundle at all, and writes nothing.
    let writes = store.writes();
    let cache = BundleCache::new();
    let r = reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap();
    assert!(all_fresh(&r), "{r:?}");
    assert_eq!(cache.stats(), (0, 0));
    assert_eq!(store.writes(), writes, "a no-op writes nothing");

    // Bundles changed behind its back are loaded, judged and replaced; the others are not loaded.
    tamper(&store, now);
    let cache = BundleCache::new();
    let r = reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap();
    check_tampered_are_replaced(&r);
    assert_eq!(cache.stats(), (0, 3));
    // What it made was recorded when proven: the next new process loads nothing again.
    let cache = BundleCache::new();
    assert!(all_fresh(
        &reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap()
    ));
    assert_eq!(cache.stats(), (0, 0));

    // A record edited by hand (c4's renewal pushed a year out) no longer matches its MAC: c4 is
    // loaded, and its true record written back.
    let good = records(&store).unwrap();
    let edited: String = good
        .lines()
        .map(|l| {
            let mut f: Vec<String> = l.split(' ').map(str::to_owned).collect();
            if f[0] == "c4" {
                f[3] = (f[3].parse::<i64>().unwrap() + 365 * 86_400).to_string();
            }
            f.join(" ") + "\n"
        })
        .collect();
    assert_ne!(edited, good);
    set_records(&store, Some(&edited));
    let cache = BundleCache::new();
    assert!(all_fresh(
        &reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap()
    ));
    assert_eq!(cache.stats(), (0, 1));
    assert_eq!(records(&store).unwrap(), good);

    // Another policy's records (other bundles, another CA; the same cluster names) match nothing.
    let (other, _) = world(now);
    set_records(&store, records(&other).as_deref());
    let cache = BundleCache::new();
    assert!(all_fresh(
        &reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap()
    ));
    assert_eq!(cache.stats(), (0, 4));
    assert_eq!(records(&store).unwrap(), good);
}

#[test]
fn a_running_manager_keeps_what_it_loaded_when_there_are_no_records() {
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let (store, policy) = world(now);
    let cache = BundleCache::new();
    // Records lost: every bundle is loaded once...
    set_records(&store, None);
    assert!(all_fresh(
        &reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap()
    ));
    assert_eq!(cache.stats(), (0, 4));
    assert_eq!(cache.len(), 4);
    // ...and, lost again, found in memory the next time.
    set_records(&store, None);
    assert!(all_fresh(
        &reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap()
    ));
    assert_eq!(cache.stats(), (4, 4));

    // Changed bytes are not found in memory: loaded, judged, replaced.
    tamper(&store, now);
    set_records(&store, None);
    let r = reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap();
    check_tampered_are_replaced(&r);
    assert_eq!(cache.stats(), (5, 7));
    // Only what the last reconcile loaded or made is kept: c4, c1's foreign bundle (it loads, it
    // is just not the policy's), and the three new ones; the bundles that failed to load are not.
    assert_eq!(cache.len(), 5);
    set_records(&store, None);
    assert!(all_fresh(
        &reconcile_with(&cache, &store, &policy, "mgmt", &[], &[], now).unwrap()
    ));
    assert_eq!(cache.stats(), (9, 7));
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
