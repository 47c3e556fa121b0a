//! Prometheus metrics of the manager (`meshca trust run`), fed from its [`Event`]s.
//!
//! Times are absolute: each root's and intermediate's notAfter and the next planned renewal
//! are seconds since the epoch, as cert-manager's `certmanager_certificate_expiration_timestamp_seconds`
//! and SPIRE's expiry gauges are, so an alert is `… - time() < 7 * 86400` and needs no rate.
//! What a cluster holds is what the store showed after the reconcile, read through the manager's
//! [`BundleCache`] (no second verification). A cluster whose store failed keeps the figures last
//! seen, so that an unreachable cluster's expiry stays on the dashboards.

use std::collections::BTreeMap;
use std::sync::Mutex;

use meshca_pki::describe::hex_colons;
use meshca_pki::rotation::renew_at;
use meshca_store::SecretStore;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::cache::BundleCache;
use crate::manager::{Event, Sourced};
use crate::policy::TrustPolicy;
use crate::reconcile::{CACERTS, ISTIO_NAMESPACE, Outcome, Report, TrustError, cacerts_key};
use crate::rotation::{self, RotationPhase};

/// The values of `meshca_trust_rotation_phase`'s `phase` label.
pub const PHASES: [&str; 4] = ["none", "add-root", "reissue", "drop-root"];

/// The values of `meshca_trust_reconcile_total`'s `outcome` label.
pub const OUTCOMES: [&str; 3] = ["ok", "degraded", "failed"];

/// Upper bounds of the reconcile duration histogram, in seconds: from a no-op reconcile of a
/// few clusters (well under a millisecond) to one that issues RSA-4096 intermediates.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// The manager's metrics, in one registry.
pub struct TrustMetrics {
    registry: Registry,
    root_expiry: IntGaugeVec,
    intermediate_expiry: IntGaugeVec,
    intermediate_renewal: IntGaugeVec,
    next_check: IntGaugeVec,
    last_reconcile: IntGaugeVec,
    rotation_phase: IntGaugeVec,
    policy_refused: IntGaugeVec,
    reconciles: IntCounterVec,
    duration: HistogramVec,
    store_errors: IntCounterVec,
    leader: IntGauge,
    /// The labels set per (policy, cluster), so that what a cluster no longer holds is removed.
    shown: Mutex<BTreeMap<(String, String), Shown>>,
}

impl std::fmt::Debug for TrustMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrustMetrics")
    }
}

/// The expiry series set for one cluster of one policy.
#[derive(Default)]
struct Shown {
    /// Each root's fingerprint and serial.
    roots: Vec<[String; 2]>,
    /// The intermediate's serial.
    intermediate: Option<String>,
}

impl Default for TrustMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn gauges(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    // The names and labels are constants, distinct and valid: neither step can fail.
    let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric");
    r.register(Box::new(v.clone())).expect("a distinct metric");
    v
}

fn counters(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
    r.register(Box::new(v.clone())).expect("a distinct metric");
    v
}

impl TrustMetrics {
    /// No series yet but `meshca_trust_leader` (0).
    pub fn new() -> Self {
        let r = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "meshca_trust_reconcile_duration_seconds",
                "Wall time of one policy's reconcile.",
            )
            .buckets(BUCKETS.to_vec()),
            &["policy"],
        )
        .expect("a valid metric");
        r.register(Box::new(duration.clone()))
            .expect("a distinct metric");
        let leader = IntGauge::new(
            "meshca_trust_leader",
            "1 while this replica acts: it holds the lease, or runs without leader election.",
        )
        .expect("a valid metric");
        r.register(Box::new(leader.clone()))
            .expect("a distinct metric");
        TrustMetrics {
            root_expiry: gauges(
                &r,
                "meshca_trust_root_expiry_timestamp_seconds",
                "Unix time each root of a cluster's root bundle expires.",
                &["policy", "cluster", "fingerprint", "serial"],
            ),
            intermediate_expiry: gauges(
                &r,
                "meshca_trust_intermediate_expiry_timestamp_seconds",
                "Unix time each cluster's intermediate CA expires.",
                &["policy", "cluster", "serial"],
            ),
            intermediate_renewal: gauges(
                &r,
                "meshca_trust_intermediate_renewal_timestamp_seconds",
                "Unix time each cluster's intermediate CA is planned to be renewed.",
                &["policy", "cluster"],
            ),
            next_check: gauges(
                &r,
                "meshca_trust_next_reconcile_timestamp_seconds",
                "Unix time the manager next reconciles at the latest (a renewal, a rotation phase, the resync).",
                &["policy"],
            ),
            last_reconcile: gauges(
                &r,
                "meshca_trust_last_reconcile_timestamp_seconds",
                "Unix time of the last reconcile that ran (by the manager's clock).",
                &["policy"],
            ),
            rotation_phase: gauges(
                &r,
                "meshca_trust_rotation_phase",
                "1 for the root rotation phase the policy is in (none, add-root, reissue, drop-root), 0 for the others.",
                &["policy", "phase"],
            ),
            policy_refused: gauges(
                &r,
                "meshca_trust_policy_refused",
                "1 while the policy's latest version is refused (the last good one, if any, applies).",
                &["policy"],
            ),
            reconciles: counters(
                &r,
                "meshca_trust_reconcile_total",
                "Reconciles by outcome: ok (every cluster as wanted), degraded (some clusters failed), failed (nothing written).",
                &["policy", "outcome"],
            ),
            store_errors: counters(
                &r,
                "meshca_trust_store_errors_total",
                "Reconciles in which a cluster's store (its API server, or the folder) failed.",
                &["cluster"],
            ),
            duration,
            leader,
            registry: r,
            shown: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether this replica acts.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Takes in one of the manager's events. `store` and `mgmt` are what the manager reconciles,
    /// read again for what a reconcile left in each cluster and the rotation's phase.
    pub fn record(&self, event: &Event<'_>, store: &dyn SecretStore, mgmt: &str) {
        match event {
            Event::Reconciled {
                policy,
                at,
                report,
                next,
                bundles,
                took,
            } => {
                let id = label(policy);
                let failed = report.clusters.iter().any(|(_, o)| !o.is_ok());
                self.count(&id, if failed { "degraded" } else { "ok" }, *took);
                for (cluster, outcome) in &report.clusters {
                    if let Outcome::Failed(_) = outcome {
                        self.store_errors.with_label_values(&[cluster]).inc();
                    }
                }
                self.next_check
                    .with_label_values(&[&id])
                    .set(next.unix_timestamp());
                self.last_reconcile
                    .with_label_values(&[&id])
                    .set(at.unix_timestamp());
                self.refused(policy);
                if let Some(p) = &policy.policy {
                    self.phase(
                        &id,
                        rotation::load(store, p, mgmt)
                            .ok()
                            .flatten()
                            .map(|s| s.phase),
                    );
                    self.clusters(&id, p, report, bundles, store, *at);
                }
            }
            Event::Failed {
                policy,
                error,
                took,
                ..
            } => {
                let id = label(policy);
                self.count(&id, "failed", *took);
                if let TrustError::Store(_) = error {
                    // Reads of the management cluster (the root, the rotation state) come first.
                    self.store_errors.with_label_values(&[mgmt]).inc();
                }
            }
            Event::Loaded(policy) | Event::Refused(policy) => self.refused(policy),
            Event::Removed(policy) => self.forget(&label(policy)),
            Event::Conflict { .. } => {}
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        // Encoding into a String fails only on a write error, which a String never has.
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }

    fn count(&self, id: &str, outcome: &str, took: std::time::Duration) {
        self.reconciles.with_label_values(&[id, outcome]).inc();
        self.duration
            .with_label_values(&[id])
            .observe(took.as_secs_f64());
    }

    fn refused(&self, policy: &Sourced) {
        self.policy_refused
            .with_label_values(&[&label(policy)])
            .set(i64::from(policy.refused.is_some()));
    }

    fn phase(&self, id: &str, phase: Option<RotationPhase>) {
        let current = match phase {
            None => "none",
            Some(RotationPhase::AddRoot) => "add-root",
            Some(RotationPhase::Reissue) => "reissue",
            Some(RotationPhase::DropRoot) => "drop-root",
        };
        for p in PHASES {
            self.rotation_phase
                .with_label_values(&[id, p])
                .set(i64::from(p == current));
        }
    }

    /// Each cluster's root and intermediate expiry and planned renewal, as the store shows them.
    fn clusters(
        &self,
        id: &str,
        policy: &TrustPolicy,
        report: &Report,
        bundles: &BundleCache,
        store: &dyn SecretStore,
        now: time::OffsetDateTime,
    ) {
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        for (cluster, outcome) in &report.clusters {
            if !outcome.is_ok() {
                continue;
            }
            let key = (id.to_owned(), cluster.clone());
            if let Some(old) = shown.remove(&key) {
                self.unset(id, cluster, &old);
            }
            let Ok(Some(data)) = store.read(&cacerts_key(cluster)) else {
                continue;
            };
            let where_ = format!("{cluster}/{ISTIO_NAMESPACE}/{CACERTS}");
            let Ok(bundle) = bundles.load(&data, &where_, now) else {
                continue;
            };
            let mut now_shown = Shown::default();
            for root in bundle.roots() {
                let labels = [
                    hex_colons(&root.sha256_fingerprint()),
                    hex_colons(root.x509().raw_serial()),
                ];
                self.root_expiry
                    .with_label_values(&[id, cluster, &labels[0], &labels[1]])
                    .set(root.not_after().unix_timestamp());
                now_shown.roots.push(labels);
            }
            let ca = bundle.signer().cert();
            let serial = hex_colons(ca.x509().raw_serial());
            self.intermediate_expiry
                .with_label_values(&[id, cluster, &serial])
                .set(ca.not_after().unix_timestamp());
            self.intermediate_renewal
                .with_label_values(&[id, cluster])
                .set(
                    renew_at(ca.not_before(), ca.not_after(), policy.grace_ratio).unix_timestamp(),
                );
            now_shown.intermediate = Some(serial);
            shown.insert(key, now_shown);
        }
    }

    /// Removes one cluster's expiry series.
    fn unset(&self, id: &str, cluster: &str, old: &Shown) {
        // A series already gone is what removal wants: its error is no concern.
        for [fp, serial] in &old.roots {
            let _ = self
                .root_expiry
                .remove_label_values(&[id, cluster, fp, serial]);
        }
        if let Some(serial) = &old.intermediate {
            let _ = self
                .intermediate_expiry
                .remove_label_values(&[id, cluster, serial]);
        }
        let _ = self
            .intermediate_renewal
            .remove_label_values(&[id, cluster]);
    }

    /// Removes every series of a policy that is no longer applied; its counters stay.
    fn forget(&self, id: &str) {
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<_> = shown.keys().filter(|(p, _)| p == id).cloned().collect();
        for key in keys {
            if let Some(old) = shown.remove(&key) {
                self.unset(id, &key.1, &old);
            }
        }
        for p in PHASES {
            let _ = self.rotation_phase.remove_label_values(&[id, p]);
        }
        let _ = self.next_check.remove_label_values(&[id]);
        let _ = self.last_reconcile.remove_label_values(&[id]);
        let _ = self.policy_refused.remove_label_values(&[id]);
    }
}

/// A policy's `policy` label: `namespace/name`, whether it came from a file or a resource.
fn label(s: &Sourced) -> String {
    match &s.policy {
        Some(p) => format!("{}/{}", p.namespace, p.name),
        None => s.id.clone(),
    }
}
