//! The loop `meshca trust run` runs, as a library: reconcile, then wait until the next thing falls
//! due (a renewal, a rotation phase), the resync timer, a change in the store or the policy file,
//! or a stop; and again. Time comes from a [`Clock`], so tests move it by hand over real stores.
//!
//! - Policies come from a [`PolicySource`]: one file ([`PolicyFile`], read again when it
//!   changes; a broken version is refused and the last good one kept), or RootTrustPolicy
//!   resources watched in the management cluster. Two policies that select the same cluster are
//!   a conflict told on both, and neither writes that cluster.
//! - A change in the store is noticed by comparing [`store_fingerprint`]s every poll interval: a
//!   folder store looks at its `..data` links, the Kubernetes store at its watch-fed memory (no
//!   request).
//! - A reconcile in which a cluster failed is tried again after a backoff that doubles from 1 s
//!   to 60 s of clock time, and resets once every cluster is well.
//! - A clock set back to before the last reconcile wakes the manager at once: what it wrote and
//!   planned by the later time (bundles valid from then, a far next check) is wrong for now.
//! - A stop is seen between reconciles, never in the middle of one: every secret is written whole
//!   or not at all.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use meshca_store::SecretStore;
use time::{Duration, OffsetDateTime};

use crate::cache::BundleCache;
use crate::policy::TrustPolicy;
use crate::reconcile::{Report, TrustError, reconcile_with, select_clusters, store_fingerprint};

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

/// A clock read from a file holding one RFC 3339 time, so that several processes share a time
/// a drill moves by hand. A file that cannot be read or parsed keeps the last time read.
#[derive(Debug)]
pub struct FileClock {
    path: PathBuf,
    last: Mutex<OffsetDateTime>,
}

impl FileClock {
    /// The clock of `path`, which must hold a time now.
    pub fn open(path: &Path) -> Result<Self, TrustError> {
        let at = read_time(path)?;
        Ok(FileClock {
            path: path.to_owned(),
            last: Mutex::new(at),
        })
    }
}

fn read_time(path: &Path) -> Result<OffsetDateTime, TrustError> {
    let bad = |reason: String| TrustError::PolicyFile {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .map_err(|e| bad(format!("not an RFC 3339 time: {e}")))
}

impl Clock for FileClock {
    fn now(&self) -> OffsetDateTime {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(t) = read_time(&self.path) {
            *last = t;
        }
        *last
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
    /// How often to look at the store, the policies, the clock and the stop flag (real time).
    pub poll: std::time::Duration,
}

/// A policy as its source gives it.
#[derive(Clone, Debug)]
pub struct Sourced {
    /// Names the policy: a file's path, or a resource's `namespace/name`.
    pub id: String,
    /// What changes whenever the policy's text does: a hash of a file, a resource's generation.
    pub revision: String,
    /// A resource's spec generation.
    pub generation: Option<i64>,
    /// The policy to apply: `None` when the source holds no good version of it.
    pub policy: Option<TrustPolicy>,
    /// Why the latest version is refused; the last good version, if any, still applies.
    pub refused: Option<String>,
}

/// Where the manager's policies come from: one file, or resources in the management cluster.
pub trait PolicySource {
    /// The policies as they are now. Called at start and whenever [`Self::changed`] says so.
    fn load(&mut self) -> Vec<Sourced>;
    /// Whether a [`Self::load`] would answer differently. Polled every poll interval: it must
    /// be cheap.
    fn changed(&mut self) -> bool;
    /// Called before each policy's reconcile, with the policy about to be applied.
    fn reconciling(&mut self, _policy: &TrustPolicy) {}
}

/// One policy file, read again whenever its bytes change. A broken version is refused and the
/// last good one kept.
#[derive(Debug)]
pub struct PolicyFile {
    path: PathBuf,
    text: Vec<u8>,
    current: Sourced,
}

impl PolicyFile {
    /// The policy in `path`; a broken policy is an error here, since there is no last good one.
    pub fn open(path: &Path) -> Result<Self, TrustError> {
        let (policy, text) = read_policy(path)?;
        Ok(PolicyFile {
            path: path.to_owned(),
            current: Sourced {
                id: path.display().to_string(),
                revision: revision_of(&text),
                generation: None,
                policy: Some(policy),
                refused: None,
            },
            text,
        })
    }
}

impl PolicyFile {
    /// The policy in force: the last good version.
    pub fn policy(&self) -> Option<&TrustPolicy> {
        self.current.policy.as_ref()
    }
}

fn revision_of(text: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text);
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl PolicySource for PolicyFile {
    fn load(&mut self) -> Vec<Sourced> {
        let text = std::fs::read(&self.path).unwrap_or_default();
        if text != self.text {
            self.current.revision = revision_of(&text);
            self.text = text;
            match read_policy(&self.path) {
                Ok((p, _)) => {
                    self.current.policy = Some(p);
                    self.current.refused = None;
                }
                Err(e) => self.current.refused = Some(e.to_string()),
            }
        }
        vec![self.current.clone()]
    }

    fn changed(&mut self) -> bool {
        std::fs::read(&self.path).unwrap_or_default() != self.text
    }
}

/// What the manager tells its caller, as it happens.
#[derive(Debug)]
pub enum Event<'a> {
    /// A policy was reconciled at `at`; the manager next wakes at `next` (clock time) at the
    /// latest.
    Reconciled {
        /// The policy.
        policy: &'a Sourced,
        /// When it ran, by the clock.
        at: OffsetDateTime,
        /// What it did.
        report: &'a Report,
        /// When the manager wakes again at the latest.
        next: OffsetDateTime,
        /// The bundles the manager has loaded and verified, for a listener that looks at the
        /// clusters again (their status) without verifying them again.
        bundles: &'a BundleCache,
        /// How long the reconcile took (wall time).
        took: std::time::Duration,
    },
    /// A policy's reconcile stopped before writing anything.
    Failed {
        /// The policy.
        policy: &'a Sourced,
        /// When it ran.
        at: OffsetDateTime,
        /// Why.
        error: &'a TrustError,
        /// How long it ran before it stopped (wall time).
        took: std::time::Duration,
    },
    /// A policy is new or changed, and loaded. Not told for the policies found at start.
    Loaded(&'a Sourced),
    /// A policy's latest version is refused (its `refused` says why): nothing is written for
    /// it, unless an earlier good version of it applies.
    Refused(&'a Sourced),
    /// A policy is gone from its source: it is no longer applied.
    Removed(&'a Sourced),
    /// Other policies also cover some of this policy's clusters: those clusters are left
    /// alone by all of them until one policy covers each.
    Conflict {
        /// The policy.
        policy: &'a Sourced,
        /// The clusters in dispute.
        clusters: &'a [String],
        /// The other policies' ids.
        with: &'a [String],
    },
}

/// Why a wait ended.
enum Wake {
    Due,
    Changed,
    Stop,
}

/// The manager: one store, the policies of one source, one clock.
pub struct Manager<'a> {
    store: &'a dyn SecretStore,
    clock: &'a dyn Clock,
    source: Box<dyn PolicySource + 'a>,
    policies: Vec<Sourced>,
    cfg: ManagerConfig,
    cache: BundleCache,
    backoff: Duration,
    /// When the last reconcile ran, by the clock: a clock seen before it has been set back.
    last_at: OffsetDateTime,
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

/// What one pass over every policy decided for each.
struct Scope {
    /// The clusters the policy may write (`None`: its own selection, undisputed).
    clusters: Option<Vec<String>>,
    /// Clusters in dispute, and with whom.
    disputed: Vec<String>,
    rivals: Vec<String>,
}

impl<'a> Manager<'a> {
    /// A manager of the policy in `policy_file` over `store`. A broken policy file is an error
    /// here: there is no last good policy yet.
    pub fn new(
        store: &'a dyn SecretStore,
        clock: &'a dyn Clock,
        policy_file: &Path,
        cfg: ManagerConfig,
    ) -> Result<Self, TrustError> {
        let file = PolicyFile::open(policy_file)?;
        Ok(Self::with_source(store, clock, Box::new(file), cfg))
    }

    /// A manager of the policies `source` gives.
    pub fn with_source(
        store: &'a dyn SecretStore,
        clock: &'a dyn Clock,
        source: Box<dyn PolicySource + 'a>,
        cfg: ManagerConfig,
    ) -> Self {
        Manager {
            store,
            clock,
            source,
            policies: Vec::new(),
            cfg,
            cache: BundleCache::new(),
            backoff: Duration::ZERO,
            last_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    /// The policies as last loaded.
    pub fn policies(&self) -> &[Sourced] {
        &self.policies
    }

    /// Reconciles, waits, and again, until `stop` is set; tells `on_event` what happens.
    pub fn run(&mut self, stop: &AtomicBool, on_event: &mut dyn FnMut(&Event<'_>)) {
        self.policies = self.source.load();
        for p in &self.policies {
            if p.refused.is_some() {
                on_event(&Event::Refused(p));
            }
        }
        while !stop.load(Ordering::SeqCst) {
            let seen = self.fingerprint();
            let next = self.reconcile(on_event);
            match self.wait(next, &seen, stop, on_event) {
                Wake::Stop => return,
                Wake::Due | Wake::Changed => {}
            }
        }
    }

    /// What the store holds for every policy, in a form cheap to compare.
    fn fingerprint(&self) -> String {
        self.policies
            .iter()
            .filter_map(|s| s.policy.as_ref())
            .map(|p| store_fingerprint(self.store, p, &self.cfg.mgmt).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Which clusters each policy may write: its own selection, less the clusters another
    /// policy also selects.
    fn scopes(&self) -> Vec<Result<Scope, TrustError>> {
        let present = match self.store.clusters() {
            Ok(p) => p,
            Err(e) => {
                let shown = e.to_string();
                return self
                    .policies
                    .iter()
                    .map(|_| {
                        Err(TrustError::Store(meshca_store::StoreError::Backend {
                            target: "the store".to_owned(),
                            status: None,
                            reason: shown.clone(),
                        }))
                    })
                    .collect();
            }
        };
        let selected: Vec<Option<Result<Vec<String>, TrustError>>> = self
            .policies
            .iter()
            .map(|s| {
                s.policy
                    .as_ref()
                    .map(|p| select_clusters(&present, p, &self.cfg.mgmt, &self.cfg.only))
            })
            .collect();
        let mut claims: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (i, sel) in selected.iter().enumerate() {
            if let Some(Ok(clusters)) = sel {
                for c in clusters {
                    claims.entry(c.clone()).or_default().push(i);
                }
            }
        }
        selected
            .into_iter()
            .enumerate()
            .map(|(i, sel)| {
                let clusters = match sel {
                    Some(r) => r?,
                    None => {
                        return Ok(Scope {
                            clusters: Some(Vec::new()),
                            disputed: Vec::new(),
                            rivals: Vec::new(),
                        });
                    }
                };
                let mut disputed = Vec::new();
                let mut rivals = Vec::new();
                for c in &clusters {
                    let holders = claims.get(c).map_or(&[][..], Vec::as_slice);
                    if holders.len() > 1 {
                        disputed.push(c.clone());
                        for &h in holders.iter().filter(|&&h| h != i) {
                            rivals.push(self.policies[h].id.clone());
                        }
                    }
                }
                rivals.sort();
                rivals.dedup();
                let clusters = (!disputed.is_empty()).then(|| {
                    clusters
                        .into_iter()
                        .filter(|c| !disputed.contains(c) && present.contains(c))
                        .collect()
                });
                Ok(Scope {
                    clusters,
                    disputed,
                    rivals,
                })
            })
            .collect()
    }

    /// One reconcile of every policy at the clock's now; returns when to wake at the latest.
    fn reconcile(&mut self, on_event: &mut dyn FnMut(&Event<'_>)) -> OffsetDateTime {
        let at = self.clock.now();
        self.last_at = at;
        let scopes = self.scopes();
        let mut next = at + self.cfg.resync;
        let mut failed = false;
        for (sourced, scope) in self.policies.iter().zip(scopes) {
            let Some(policy) = &sourced.policy else {
                continue;
            };
            let started = std::time::Instant::now();
            let result = scope.and_then(|scope| {
                if !scope.disputed.is_empty() {
                    on_event(&Event::Conflict {
                        policy: sourced,
                        clusters: &scope.disputed,
                        with: &scope.rivals,
                    });
                }
                let only = scope.clusters.unwrap_or_else(|| self.cfg.only.clone());
                if only.is_empty() && !scope.disputed.is_empty() {
                    return Ok(Report::default());
                }
                self.source.reconciling(policy);
                reconcile_with(
                    &self.cache,
                    self.store,
                    policy,
                    &self.cfg.mgmt,
                    &only,
                    &[],
                    at,
                )
            });
            match &result {
                Ok(r) => {
                    failed |= r.clusters.iter().any(|(_, o)| !o.is_ok());
                    if let Some(due) = r.next_check {
                        next = next.min(due);
                    }
                }
                Err(_) => failed = true,
            }
            match &result {
                Ok(report) => on_event(&Event::Reconciled {
                    policy: sourced,
                    at,
                    report,
                    next,
                    bundles: &self.cache,
                    took: started.elapsed(),
                }),
                Err(error) => on_event(&Event::Failed {
                    policy: sourced,
                    at,
                    error,
                    took: started.elapsed(),
                }),
            }
        }
        self.backoff = if failed {
            Ord::clamp(self.backoff * 2_i32, MIN_BACKOFF, MAX_BACKOFF)
        } else {
            Duration::ZERO
        };
        if failed {
            next = next.min(at + self.backoff);
        }
        next
    }

    /// Loads the policies again and tells what changed.
    fn reload(&mut self, on_event: &mut dyn FnMut(&Event<'_>)) {
        let fresh = self.source.load();
        for old in &self.policies {
            if !fresh.iter().any(|f| f.id == old.id) {
                on_event(&Event::Removed(old));
            }
        }
        for f in &fresh {
            let before = self.policies.iter().find(|o| o.id == f.id);
            if before.is_some_and(|b| b.revision == f.revision) {
                continue;
            }
            if f.refused.is_some() {
                on_event(&Event::Refused(f));
            } else {
                on_event(&Event::Loaded(f));
            }
        }
        self.policies = fresh;
    }

    /// Waits until the clock reaches `until`, the store or the policies change, or a stop.
    fn wait(
        &mut self,
        until: OffsetDateTime,
        seen: &str,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(&Event<'_>),
    ) -> Wake {
        loop {
            if stop.load(Ordering::SeqCst) {
                return Wake::Stop;
            }
            let now = self.clock.now();
            // A clock set back (an NTP step, a host restored) makes what the last reconcile
            // wrote and planned wrong for now: bundles not valid yet, a next check far off.
            if now >= until || now < self.last_at {
                return Wake::Due;
            }
            if self.source.changed() {
                self.reload(on_event);
                return Wake::Changed;
            }
            if self.fingerprint() != seen {
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
    fn a_clock_set_back_wakes_the_loop_and_bundles_from_the_later_time_are_made_again() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("policy.yaml");
        std::fs::write(&file, POLICY).unwrap();
        let store = MemoryStore::with_clusters(&["mgmt", "c1"]);
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let clock = ManualClock::new(t0);
        let cfg = ManagerConfig {
            mgmt: "mgmt".into(),
            only: Vec::new(),
            resync: Duration::days(30),
            poll: std::time::Duration::from_millis(5),
        };
        let stop = AtomicBool::new(false);
        // Each reconcile: when, and its clusters' outcomes.
        type Seen = (OffsetDateTime, String);
        let events: Mutex<Vec<Seen>> = Mutex::new(Vec::new());
        let wait_for = |what: &str, f: &dyn Fn(&[Seen]) -> bool| {
            let started = std::time::Instant::now();
            while !f(&events.lock().unwrap()) {
                if started.elapsed().as_secs() > 20 {
                    // The loop must end for the scope to, and the failure to be told.
                    stop.store(true, Ordering::SeqCst);
                    panic!("{what}: {:#?}", events.lock().unwrap());
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let mut m = Manager::new(&store, &clock, &file, cfg).unwrap();
                m.run(&stop, &mut |e| {
                    if let Event::Reconciled { at, report, .. } = e {
                        events
                            .lock()
                            .unwrap()
                            .push((*at, format!("{:?}", report.clusters)));
                    }
                });
            });
            wait_for("created", &|e| e.iter().any(|(_, l)| l.contains("Created")));
            // The clock a day ahead when c1's cacerts is made again; then set right.
            clock.set(t0 + Duration::days(1));
            store.remove(&cacerts_key("c1"));
            wait_for("made a day ahead", &|e| {
                e.iter().any(|(at, l)| *at > t0 && l.contains("Created"))
            });
            clock.set(t0 + Duration::minutes(1));
            wait_for("made again at the right time", &|e| {
                e.iter()
                    .any(|(at, l)| *at == t0 + Duration::minutes(1) && l.contains("Rotated"))
            });
            stop.store(true, Ordering::SeqCst);
            h.join().unwrap();
        });
        let data = store.read(&cacerts_key("c1")).unwrap().unwrap();
        let at = t0 + Duration::minutes(1);
        assert!(meshca_pki::CacertsBundle::from_files(&data, "c1", at).is_ok());
    }

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
                        Event::Loaded(_) => "reloaded".into(),
                        Event::Refused(p) => format!("refused {:?}", p.refused),
                        other => format!("{other:?}"),
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

    /// Policies held in memory, as a resource source would give them.
    struct Fixed(Vec<Sourced>);

    impl PolicySource for Fixed {
        fn load(&mut self) -> Vec<Sourced> {
            self.0.clone()
        }
        fn changed(&mut self) -> bool {
            false
        }
    }

    fn sourced(name: &str, clusters: &str) -> Sourced {
        let text = POLICY
            .replace("name: mesh", &format!("name: {name}"))
            .replace("clusters: [c1]", &format!("clusters: [{clusters}]"));
        Sourced {
            id: format!("gloo-mesh/{name}"),
            revision: "1".into(),
            generation: Some(1),
            policy: Some(TrustPolicy::from_yaml(&text, name).unwrap()),
            refused: None,
        }
    }

    #[test]
    fn two_policies_over_one_cluster_are_a_conflict_told_on_both_and_neither_writes_it() {
        let store = MemoryStore::with_clusters(&["mgmt", "c1", "c2", "c3"]);
        let clock = ManualClock::new(OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap());
        let cfg = ManagerConfig {
            mgmt: "mgmt".into(),
            only: Vec::new(),
            resync: Duration::hours(1),
            poll: std::time::Duration::from_millis(5),
        };
        let source = Fixed(vec![sourced("a", "c1, c2"), sourced("b", "c2, c3")]);
        let stop = AtomicBool::new(false);
        let mut m = Manager::with_source(&store, &clock, Box::new(source), cfg);
        let mut lines = Vec::new();
        m.run(&stop, &mut |e| {
            match e {
                Event::Conflict {
                    policy,
                    clusters,
                    with,
                } => lines.push(format!("{} {clusters:?} {with:?}", policy.id)),
                Event::Reconciled { policy, report, .. } => {
                    lines.push(format!("{} {:?}", policy.id, report.clusters))
                }
                other => lines.push(format!("{other:?}")),
            }
            stop.store(lines.len() >= 4, Ordering::SeqCst);
        });
        assert_eq!(
            lines,
            [
                r#"gloo-mesh/a ["c2"] ["gloo-mesh/b"]"#,
                r#"gloo-mesh/a [("c1", Created)]"#,
                r#"gloo-mesh/b ["c2"] ["gloo-mesh/a"]"#,
                r#"gloo-mesh/b [("c3", Created)]"#,
            ]
        );
        assert!(store.read(&cacerts_key("c2")).unwrap().is_none());
    }
}
