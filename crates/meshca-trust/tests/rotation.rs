//! Root rotation end to end on a simulated clock: two years of a policy through intermediate
//! and root rotations with zero moments at which a workload of one cluster cannot verify one of
//! another; the same checker catching a root swapped by hand; the manager killed before every
//! single write of a root rotation and resuming without a broken moment; the dry-run plan.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use meshca_trust::rotation::RotationPhase;
use meshca_trust::simulate::{SimConfig, simulate};
use meshca_trust::{MemoryStore, TrustPolicy};
use time::{Duration, OffsetDateTime};

fn start() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

/// A generated root that lives a year and rotates itself at 20% left; 30-day intermediates.
const GENERATED: &str = "apiVersion: trust.meshca/v1alpha1
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
    rootRotation:
      gracePeriodRatio: 0.2
";

use meshca_testkit::SEED_001_POLICY as SEED_001;

#[test]
fn two_years_of_a_self_rotating_root_break_no_moment() {
    let policy = TrustPolicy::from_yaml(GENERATED, "p").unwrap();
    // The manager's timer every 6 hours keeps the test quick; it also wakes when things fall due.
    let cfg = SimConfig {
        resync: Duration::hours(6),
        ..SimConfig::default()
    };
    let r = simulate(&policy, &cfg, start()).unwrap();
    assert_eq!(
        r.failure_moments, 0,
        "{:?}\n{:#?}",
        r.first_failure, r.events
    );
    assert_eq!(r.manager_errors, 0, "{:#?}", r.events);
    // Day 292 and day 584 or so: two rotations started by the policy itself, both finished.
    assert_eq!(r.root_rotations_started, 2, "{:#?}", r.events);
    assert_eq!(r.root_rotations_finished, 2, "{:#?}", r.events);
    // 30-day intermediates renewed at 90% over 730 days, in three clusters, plus the re-issue
    // of each rotation.
    assert!(r.intermediates_issued >= 3 * 27, "{r:?}");
    assert!(
        r.root_bundle_updates >= 2 * 2 * 3,
        "add and drop, per cluster: {r:?}"
    );
    assert!(r.moments_checked > 1000, "{r:?}");
}

#[test]
fn the_seed_policy_through_a_rotate_root_breaks_no_moment() {
    let policy = TrustPolicy::from_yaml(SEED_001, "p").unwrap();
    let cfg = SimConfig {
        days: 30,
        ..SimConfig::default()
    };
    let r = simulate(&policy, &cfg, start()).unwrap();
    assert_eq!(
        r.failure_moments, 0,
        "{:?}\n{:#?}",
        r.first_failure, r.events
    );
    assert_eq!(r.manager_errors, 0, "{:#?}", r.events);
    assert_eq!(
        (r.root_rotations_started, r.root_rotations_finished),
        (1, 1)
    );
    // One-day intermediates renewed every 21.6 hours.
    assert!(r.intermediates_issued >= 3 * 30, "{r:?}");
}

#[test]
fn the_checker_sees_a_root_swapped_by_hand() {
    let policy = TrustPolicy::from_yaml(GENERATED, "p").unwrap();
    // What operators do by hand: the root secret replaced by a new root, so every cluster moves
    // to it at once.
    let cfg = SimConfig {
        days: 3,
        swap_root_after: Some(Duration::hours(30)),
        rotate_root_after: Some(Duration::days(1000)),
        ..SimConfig::default()
    };
    let r = simulate(&policy, &cfg, start()).unwrap();
    assert!(r.failure_moments > 0, "{r:?}");
    assert!(
        r.first_failure
            .as_deref()
            .unwrap()
            .contains("cannot verify"),
        "{r:?}"
    );
}

#[test]
fn a_manager_killed_before_any_write_of_a_root_rotation_resumes_without_a_broken_moment() {
    let policy = TrustPolicy::from_yaml(GENERATED, "p").unwrap();
    let base = SimConfig {
        days: 5,
        clusters: 3,
        workloads: 1,
        rotate_root_after: Some(Duration::hours(12)),
        ..SimConfig::default()
    };
    let clean = simulate(&policy, &base, start()).unwrap();
    assert_eq!(clean.root_rotations_finished, 1, "{:#?}", clean.events);
    let during = &clean.rotation_writes;
    // The writes cover the start, phase 1, phase 2, and the reconcile that drops the old root
    // and finishes.
    let seen = |before: Option<RotationPhase>, after: Option<RotationPhase>| {
        during
            .iter()
            .any(|w| w.before == before && w.after == after)
    };
    assert!(seen(None, Some(RotationPhase::AddRoot)), "{during:?}");
    assert!(
        seen(Some(RotationPhase::AddRoot), Some(RotationPhase::AddRoot)),
        "{during:?}"
    );
    assert!(
        seen(Some(RotationPhase::AddRoot), Some(RotationPhase::Reissue)),
        "{during:?}"
    );
    assert!(seen(Some(RotationPhase::Reissue), None), "{during:?}");
    let numbers: Vec<u64> = during.iter().map(|w| w.number).collect();
    assert_eq!(
        numbers,
        (numbers[0]..=*numbers.last().unwrap()).collect::<Vec<_>>(),
        "every write from the start to the end of the rotation"
    );
    for w in during {
        let (n, phase) = (&w.number, (w.before, w.after));
        let r = simulate(
            &policy,
            &SimConfig {
                crash_at_writes: vec![*n],
                ..base.clone()
            },
            start(),
        )
        .unwrap();
        assert_eq!(
            r.failure_moments, 0,
            "killed before write {n} ({phase:?}): {:?}\n{:#?}",
            r.first_failure, r.events
        );
        assert_eq!(
            r.manager_errors, 1,
            "killed once before write {n}: {:#?}",
            r.events
        );
        assert_eq!(
            r.root_rotations_finished, 1,
            "killed before write {n} ({phase:?}), the rotation still finishes: {:#?}",
            r.events
        );
    }
}

#[test]
fn the_dry_run_plan_writes_nothing_and_shows_three_phases() {
    let policy = TrustPolicy::from_yaml(GENERATED, "p").unwrap();
    let store = MemoryStore::with_clusters(&["mgmt", "c1", "c2"]);
    meshca_trust::reconcile(&store, &policy, "mgmt", &[], &[], start()).unwrap();
    let writes = store.writes();
    let plan = meshca_trust::reconcile::plan_root_rotation(&store, &policy, "mgmt", None, start())
        .unwrap();
    assert_eq!(store.writes(), writes, "a dry run writes nothing");
    assert!(
        meshca_trust::rotation::load(&store, &policy, "mgmt")
            .unwrap()
            .is_none()
    );
    let text: Vec<String> = plan.iter().flat_map(|s| s.rotation.clone()).collect();
    assert!(text.iter().any(|l| l.contains("2/3")), "{text:#?}");
    assert!(text.iter().any(|l| l.contains("3/3")), "{text:#?}");
    assert!(text.last().unwrap().contains("finished"), "{text:#?}");
    // Each wait is the workload lifetime plus the propagation allowance (24 h + 10 min).
    let wait = Duration::hours(24) + Duration::minutes(10);
    assert_eq!(plan.len(), 3, "{plan:#?}");
    assert_eq!(plan[1].at - plan[0].at, wait);
    assert_eq!(plan[2].at - plan[1].at, wait);
    assert!(
        plan[0]
            .clusters
            .iter()
            .all(|(_, o)| *o == meshca_trust::Outcome::RootsUpdated)
    );
    assert!(
        plan[1]
            .clusters
            .iter()
            .all(|(_, o)| matches!(o, meshca_trust::Outcome::Rotated(_)))
    );
    assert_eq!(plan[1].clusters.len(), 2);
}

/// The simulator's check over bundles observed from outside: a phased rotation keeps every
/// pair verifying; a root replaced by hand in one cluster is caught at once, and a bundle that
/// is not valid is refused, the cluster's last good one kept.
#[test]
fn the_mesh_watch_holds_through_a_phased_rotation_and_catches_a_root_replaced_by_hand() {
    use meshca_trust::reconcile::cacerts_key;
    use meshca_trust::simulate::MeshWatch;
    use meshca_trust::{SecretStore, reconcile, start_root_rotation};

    let policy = TrustPolicy::from_yaml(GENERATED, "p").unwrap();
    let clusters = ["c1", "c2"];
    let store = MemoryStore::with_clusters(&["mgmt", "c1", "c2"]);
    let bundles = |s: &MemoryStore| -> Vec<_> {
        clusters
            .iter()
            .map(|c| s.read(&cacerts_key(c)).unwrap())
            .collect()
    };
    let mut watch = MeshWatch::new(&clusters, Duration::hours(24)).unwrap();
    let mut now = start();
    reconcile(&store, &policy, "mgmt", &[], &[], now).unwrap();
    assert_eq!(watch.observe(&bundles(&store), now), None);
    start_root_rotation(&store, &policy, "mgmt", None, now).unwrap();
    while meshca_trust::rotation::load(&store, &policy, "mgmt")
        .unwrap()
        .is_some()
    {
        let r = reconcile(&store, &policy, "mgmt", &[], &[], now).unwrap();
        assert_eq!(watch.observe(&bundles(&store), now), None, "{r:?}");
        now = r
            .rotation_due
            .filter(|d| *d > now)
            .unwrap_or(now + Duration::hours(1));
    }
    assert_eq!(watch.observe(&bundles(&store), now), None);

    // A broken bundle is refused: the cluster's CA goes on with its last good one.
    let mut broken = bundles(&store)[0].clone().unwrap();
    broken.remove("ca-key.pem");
    let mut seen = bundles(&store);
    seen[0] = Some(broken);
    assert_eq!(watch.observe(&seen, now), None);

    // c2 moved to a brand-new root alone, as by hand: c1's workloads cannot verify it.
    let other = MemoryStore::with_clusters(&["mgmt", "c2"]);
    reconcile(&other, &policy, "mgmt", &[], &[], now).unwrap();
    let mut seen = bundles(&store);
    seen[1] = other.read(&cacerts_key("c2")).unwrap();
    let failure = watch.observe(&seen, now).expect("a failure");
    assert!(failure.contains("cannot verify"), "{failure}");
}
