//! The loop `meshca trust run` runs, as a library: reconcile, then wait until the next thing falls
//! due (a renewal, a rotation phase), the resync timer, a change in the store or the policy file,
//! or a stop; and again. Time comes from a [`Clock`], so tests move it by hand over real stores.
//!
//! - A policy file that changes is read again; a broken one is refused and the last good policy
//!   kept.
//! - A change in the store is noticed by comparing [`store_fingerprint`]s every poll interval: a
//!   folder store looks at its `..data` links, the Kubernetes store at its watch-fed memory (no
//!   request).
//! - A reconcile in which a cluster failed is tried again after a backoff that doubles from 1 s
//!   to 60 s of clock time, and resets once every cluster is well.
//! - A stop is seen between reconciles, never in the middle of one: every secret is written whole
//!   or not at all.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use meshca_store::SecretStore;
use time::{Duration, OffsetDateTime};

use crate::cache::BundleCache;
use crate::policy::TrustPolicy;
use crate::reconcile::{Report, TrustError, reconcile_with, store_fingerprint};

/// Where the manager gets `now` from.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> OffsetDateTime;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told: what tests drive the manager with.
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    /// A clock stopped at `at`.
    pub fn new(at: OffsetDateTime) -> Self {
        ManualClock(Mutex::new(at))
    }

    /// Moves the clock to `at`.
    pub fn set(&self, at: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Moves the clock on by `by`.
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How the manager runs.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// The management cluster's name in the store.
    pub mgmt: String,
    /// Only these clusters (empty: the policy's, else every one but the management cluster).
    pub only: Vec<String>,
    /// Reconcile at least this often, even when nothing changed and nothing falls due.
    pub resync: Duration,
    /// How often to look at the store, the policy file, the clock and the stop flag (real time).
    pub poll: std::time::Duration,
}

/// What the manager tells its caller, as it happens.
#[derive(Debug)]
pub enum Event {
    /// A reconcile ran at `at`; the manager next wakes at `next` (clock time) at the latest.
    Reconciled {
        /// When it ran, by the clock.
        at: OffsetDateTime,
        /// What it did.
        report: Report,
        /// When the manager wakes again at the latest.
        next: OffsetDateTime,
    },
    /// A reconcile stopped before writing anything.
    Failed {
        /// When it ran.
        at: OffsetDateTime,
        /// Why.
        error: TrustError,
    },
    /// The policy file changed and was loaded.
    PolicyReloaded,
    /// The policy file changed but is broken: the last good policy is kept.
    PolicyRefused(TrustError),
}

/// Why a wait ended.
enum Wake {
    Due,
    Changed,
    Stop,
}

/// The manager: one store, one policy file, one clock.
pub struct Manager<'a> {
    store: &'a dyn SecretStore,
    clock: &'a dyn Clock,
    policy_file: PathBuf,
    policy: TrustPolicy,
    policy_text: Vec<u8>,
    cfg: ManagerConfig,
    cache: BundleCache,
    backoff: Duration,
}

fn read_policy(path: &Path) -> Result<(TrustPolicy, Vec<u8>), TrustError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|e| TrustError::PolicyFile {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let policy = TrustPolicy::from_yaml(&String::from_utf8_lossy(&text), &shown)?;
    Ok((policy, text))
}

const MIN_BACKOFF: Duration = Duration::seconds(1);
const MAX_BACKOFF: Duration = Duration::seconds(60);

impl<'a> Manager<'a> {
    /// A manager of the policy in `policy_file` over `store`. A broken policy file is an error
    /// here: there is no last good policy yet.
    pub fn new(
        store: &'a dyn SecretStore,
        clock: &'a dyn Clock,
        policy_file: &Path,
        cfg: ManagerConfig,
    ) -> Result<Self, TrustError> {
        let (policy, policy_text) = read_policy(policy_file)?;
        Ok(Manager {
            store,
            clock,
            policy_file: policy_file.to_owned(),
            policy,
            policy_text,
            cfg,
            cache: BundleCache::new(),
            backoff: Duration::ZERO,
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> &TrustPolicy {
        &self.policy
    }

    /// Reconciles, waits, and again, until `stop` is set; tells `on_event` what happens.
    pub fn run(&mut self, stop: &AtomicBool, on_event: &mut dyn FnMut(&Event)) {
        while !stop.load(Ordering::SeqCst) {
            let seen =
                store_fingerprint(self.store, &self.policy, &self.cfg.mgmt).unwrap_or_default();
            let next = self.reconcile(on_event);
            match self.wait(next, &seen, stop, on_event) {
                Wake::Stop => return,
                Wake::Due | Wake::Changed => {}
            }
        }
    }

    /// One reconcile at the clock's now; returns when to wake at the latest.
    fn reconcile(&mut self, on_event: &mut dyn FnMut(&Event)) -> OffsetDateTime {
        let at = self.clock.now();
        let result = reconcile_with(
            &self.cache,
            self.store,
            &self.policy,
            &self.cfg.mgmt,
            &self.cfg.only,
            &[],
            at,
        );
        let failed = match &result {
            Ok(r) => r.clusters.iter().any(|(_, o)| !o.is_ok()),
            Err(_) => true,
        };
        self.backoff = if failed {
            Ord::clamp(self.backoff * 2_i32, MIN_BACKOFF, MAX_BACKOFF)
        } else {
            Duration::ZERO
        };
        let mut next = at + self.cfg.resync;
        if let Ok(r) = &result
            && let Some(due) = r.next_check
        {
            next = next.min(due);
        }
        if failed {
            next = next.min(at + self.backoff);
        }
        match result {
            Ok(report) => on_event(&Event::Reconciled { at, report, next }),
            Err(error) => on_event(&Event::Failed { at, error }),
        }
        next
    }

    /// Waits until the clock reaches `until`, the store or the policy changes, or a stop.
    fn wait(
        &mut self,
        until: OffsetDateTime,
        seen: &str,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(&Event),
    ) -> Wake {
        loop {
            if stop.load(Ordering::SeqCst) {
                return Wake::Stop;
            }
            if self.clock.now() >= until {
                return Wake::Due;
            }
            let text = std::fs::read(&self.policy_file).unwrap_or_default();
            if text != self.policy_text {
                self.policy_text = text;
                match read_policy(&self.policy_file) {
                    Ok((p, _)) => {
                        self.policy = p;
                        on_event(&Event::PolicyReloaded);
                        return Wake::Changed;
                    }
                    Err(e) => on_event(&Event::PolicyRefused(e)),
                }
            }
            if store_fingerprint(self.store, &self.policy, &self.cfg.mgmt).unwrap_or_default()
                != seen
            {
                return Wake::Changed;
            }
            std::thread::sleep(self.cfg.poll);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::cacerts_key;
    use meshca_store::MemoryStore;

    const POLICY: &str = "apiVersion: trust.meshca/v1alpha1
kind: RootTrustPolicy
metadata:
  name: mesh
  namespace: gloo-mesh
spec:
  clusters: [c1]
  config:
    mgmtServerCa:
      generated:
        ttlDays: 365
    intermediateCertOptions:
      ttlDays: 30
      keyType: ecdsa-p256
";

    #[test]
    fn the_loop_wakes_on_due_times_changes_and_policy_edits_and_stops() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("policy.yaml");
        std::fs::write(&file, POLICY).unwrap();
        let store = MemoryStore::with_clusters(&["mgmt", "c1", "c2"]);
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let clock = ManualClock::new(t0);
        let cfg = ManagerConfig {
            mgmt: "mgmt".into(),
            only: Vec::new(),
            resync: Duration::hours(1),
            poll: std::time::Duration::from_millis(5),
        };
        let stop = AtomicBool::new(false);
        let events: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let said = || events.lock().unwrap().clone();
        let wait_for = |what: &str, f: &dyn Fn(&[String]) -> bool| {
            let started = std::time::Instant::now();
            while !f(&said()) {
                assert!(started.elapsed().as_secs() < 20, "{what}: {:#?}", said());
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let mut m = Manager::new(&store, &clock, &file, cfg).unwrap();
                m.run(&stop, &mut |e| {
                    let line = match e {
                        Event::Reconciled { at, report, .. } => {
                            format!("{} {:?}", (*at - t0).whole_hours(), report.clusters)
                        }
                        Event::Failed { error, .. } => format!("failed {error}"),
                        Event::PolicyReloaded => "reloaded".into(),
                        Event::PolicyRefused(e) => format!("refused {e}"),
                    };
                    events.lock().unwrap().push(line);
                });
            });
            wait_for("created", &|e| {
                e.iter()
                    .any(|l| l.starts_with("0 ") && l.contains("Created"))
            });
            // Nothing moves: no reconcile. The resync hour passes: one, fresh.
            std::thread::sleep(std::time::Duration::from_millis(50));
            let n = said().len();
            assert!(n <= 2, "{:#?}", said());
            clock.advance(Duration::hours(1));
            wait_for("resync", &|e| {
                e.iter().any(|l| l.starts_with("1 ") && l.contains("Fresh"))
            });
            // Someone deletes c1's cacerts: put back at once, without the clock moving.
            store.remove(&cacerts_key("c1"));
            wait_for("repaired", &|e| {
                e.iter()
                    .filter(|l| l.starts_with("1 ") && l.contains("Created"))
                    .count()
                    == 1
            });
            // A broken policy is refused and the last good one kept; a good one is loaded.
            std::fs::write(&file, "kind: nonsense\n").unwrap();
            wait_for("refused", &|e| e.iter().any(|l| l.starts_with("refused ")));
            std::fs::write(
                &file,
                POLICY.replace("clusters: [c1]", "clusters: [c1, c2]"),
            )
            .unwrap();
            wait_for("reloaded", &|e| e.iter().any(|l| l == "reloaded"));
            wait_for("c2 too", &|e| {
                e.iter().any(|l| l.contains("(\"c2\", Created)"))
            });
            stop.store(true, Ordering::SeqCst);
            h.join().unwrap();
        });
        assert!(store.read(&cacerts_key("c2")).unwrap().is_some());
    }
}
