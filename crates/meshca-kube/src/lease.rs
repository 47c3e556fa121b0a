//! One active manager among replicas: leader election over a `coordination.k8s.io/v1` Lease in
//! the management cluster, with client-go's rules.
//!
//! - A candidate takes the lease when it is absent, released (no holder), or unchanged for the
//!   lease's duration as timed by the candidate's own monotonic clock from when it saw the
//!   record change: never from the holder's `renewTime`, so clock skew between replicas cannot
//!   hand the lease over early. Every take and renewal is a `PUT` under the `resourceVersion`
//!   read, so two candidates cannot both win.
//! - The holder renews every retry period. It counts as leader only until the renew deadline
//!   (two thirds of the duration) has passed since the start of its last successful renewal:
//!   a holder that cannot reach the API server stops acting before anyone else may take over.
//! - [`LeaderOnly`] puts that rule in front of every write of a store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use meshca_store::{
    Expect, Secret, SecretData, SecretKey, SecretStore, SecretWrite, StoreError, Version,
};

use crate::store::describe_error;

/// Which lease, who is asking, and for how long a lease holds.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's name.
    pub name: String,
    /// Its namespace (the manager's own).
    pub namespace: String,
    /// This candidate's identity, written as the holder (the pod's name, in a cluster).
    pub identity: String,
    /// How long a lease unrenewed holds before another candidate may take it.
    pub duration: Duration,
}

impl LeaseConfig {
    /// How long after its last successful renewal a holder still acts.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// How often the lease is renewed or tried.
    pub fn retry_period(&self) -> Duration {
        (self.duration / 6).max(Duration::from_millis(100))
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs_f64().ceil() as u64)
            .unwrap_or(i32::MAX)
            .max(1)
    }

    fn shown(&self) -> String {
        format!("lease {}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Default)]
struct State {
    /// When the last successful take or renewal was started.
    renewed: Option<Instant>,
    /// The holder last seen, if any.
    holder: Option<String>,
    /// The last error talking to the API server, cleared by a success.
    error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    cfg: LeaseConfig,
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// This candidate's view of the election; cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    shared: Arc<Shared>,
    client: kube::Client,
    rt: tokio::runtime::Handle,
}

/// The lease record a candidate saw last, and when (by its own clock) it last changed.
struct Observed {
    record: Option<(Option<String>, Option<String>, Option<String>)>,
    since: Instant,
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("lease", &self.shared.cfg)
            .field("leader", &self.is_leader())
            .finish()
    }
}

impl Leadership {
    /// Starts campaigning on `rt`: takes the lease when it may and renews it while held, until
    /// [`Leadership::release`].
    pub fn start(client: kube::Client, rt: tokio::runtime::Handle, cfg: LeaseConfig) -> Self {
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
        });
        let me = Leadership {
            shared: Arc::clone(&shared),
            client: client.clone(),
            rt: rt.clone(),
        };
        let api: Api<Lease> = Api::namespaced(client, &shared.cfg.namespace);
        rt.spawn(async move {
            let mut observed = Observed {
                record: None,
                since: Instant::now(),
            };
            while !shared.stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let attempt = tokio::time::timeout(
                    shared.cfg.renew_deadline(),
                    try_acquire_or_renew(&api, &shared.cfg, &mut observed),
                )
                .await
                .unwrap_or_else(|_| Err("no answer from the API server".to_owned()));
                {
                    let mut st = shared.state();
                    match attempt {
                        Ok((true, holder)) => {
                            st.renewed = Some(started);
                            st.holder = holder;
                            st.error = None;
                        }
                        Ok((false, holder)) => {
                            st.renewed = None;
                            st.holder = holder;
                            st.error = None;
                        }
                        Err(e) => st.error = Some(e),
                    }
                }
                tokio::time::sleep(shared.cfg.retry_period()).await;
            }
        });
        me
    }

    /// The lease's settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.shared.cfg
    }

    /// Whether this candidate holds the lease and renewed it within the renew deadline.
    pub fn is_leader(&self) -> bool {
        self.shared
            .state()
            .renewed
            .is_some_and(|t| t.elapsed() < self.shared.cfg.renew_deadline())
    }

    /// The holder last seen, and the last error reaching the API server, for messages.
    pub fn observed(&self) -> (Option<String>, Option<String>) {
        let st = self.shared.state();
        (st.holder.clone(), st.error.clone())
    }

    /// Waits until this candidate leads or `stop` is set; returns whether it leads.
    pub fn wait_until_leader(&self, stop: &AtomicBool) -> bool {
        while !stop.load(Ordering::SeqCst) {
            if self.is_leader() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Stops campaigning and, if holding the lease, gives it up at once (no holder, a one
    /// second duration), so that another replica takes over without waiting out the lease.
    pub fn release(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if !self.is_leader() {
            return;
        }
        self.shared.state().renewed = None;
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.shared.cfg.namespace);
        let cfg = self.shared.cfg.clone();
        let _ = self.rt.block_on(async {
            tokio::time::timeout(cfg.renew_deadline(), async {
                let mut lease = api.get(&cfg.name).await.ok()?;
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
                    return None;
                }
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                spec.renew_time = Some(now_micro());
                api.replace(&cfg.name, &PostParams::default(), &lease)
                    .await
                    .ok()
            })
            .await
        });
    }
}

/// One round of client-go's `tryAcquireOrRenew`: whether this candidate holds the lease after
/// it, and the holder seen.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Observed,
) -> Result<(bool, Option<String>), String> {
    let shown = |e: &kube::Error| format!("{}: {}", cfg.shown(), describe_error(e));
    let fresh_spec = |transitions: i32| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration_seconds()),
        acquire_time: Some(now_micro()),
        renew_time: Some(now_micro()),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(mut lease) = api.get_opt(&cfg.name).await.map_err(|e| shown(&e))? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            spec: Some(fresh_spec(0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok((true, Some(cfg.identity.clone()))),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok((false, None)),
            Err(e) => Err(shown(&e)),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = Some((
        holder.clone(),
        spec.renew_time.as_ref().map(|t| t.0.to_string()),
        lease.metadata.resource_version.clone(),
    ));
    if record != observed.record {
        observed.record = record;
        observed.since = Instant::now();
    }
    let mine = holder.as_deref() == Some(cfg.identity.as_str());
    let held_for =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    if !mine && holder.is_some() && observed.since.elapsed() < held_for {
        return Ok((false, holder));
    }
    let new_spec = if mine {
        LeaseSpec {
            renew_time: Some(now_micro()),
            lease_duration_seconds: Some(cfg.duration_seconds()),
            ..spec
        }
    } else {
        fresh_spec(spec.lease_transitions.unwrap_or(0) + i32::from(holder.is_some()))
    };
    lease.spec = Some(new_spec);
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok((true, Some(cfg.identity.clone()))),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok((false, holder)),
        Err(e) => Err(shown(&e)),
    }
}

/// A store whose writes go through only while `leadership` leads: a replica that lost the
/// lease, or cannot renew it, writes nothing.
pub struct LeaderOnly<'a> {
    inner: &'a dyn SecretStore,
    leadership: Leadership,
}

impl<'a> LeaderOnly<'a> {
    /// `inner`, written only while leading.
    pub fn new(inner: &'a dyn SecretStore, leadership: Leadership) -> Self {
        LeaderOnly { inner, leadership }
    }

    fn check(&self, key: &SecretKey) -> Result<(), StoreError> {
        if self.leadership.is_leader() {
            Ok(())
        } else {
            Err(self.refusal(key))
        }
    }

    fn refusal(&self, key: &SecretKey) -> StoreError {
        let (holder, error) = self.leadership.observed();
        let cfg = self.leadership.config();
        StoreError::Backend {
            target: self.inner.describe(key),
            status: None,
            reason: format!(
                "not written: {} does not hold {} ({})",
                cfg.identity,
                cfg.shown(),
                match (holder, error) {
                    (_, Some(e)) => e,
                    (Some(h), None) => format!("held by {h}"),
                    (None, None) => "not renewed in time".to_owned(),
                }
            ),
        }
    }
}

impl SecretStore for LeaderOnly<'_> {
    fn clusters(&self) -> Result<Vec<String>, StoreError> {
        self.inner.clusters()
    }
    fn get(&self, key: &SecretKey) -> Result<Option<Secret>, StoreError> {
        self.inner.get(key)
    }
    fn write(
        &self,
        key: &SecretKey,
        data: &SecretData,
        expect: &Expect,
    ) -> Result<Version, StoreError> {
        self.check(key)?;
        self.inner.write(key, data, expect)
    }
    fn write_all(&self, writes: &[SecretWrite<'_>]) -> Vec<Result<Version, StoreError>> {
        if self.leadership.is_leader() {
            self.inner.write_all(writes)
        } else {
            writes.iter().map(|w| Err(self.refusal(w.key))).collect()
        }
    }
    fn read(&self, key: &SecretKey) -> Result<Option<SecretData>, StoreError> {
        self.inner.read(key)
    }
    fn version(&self, key: &SecretKey) -> Result<Option<Version>, StoreError> {
        self.inner.version(key)
    }
    fn describe(&self, key: &SecretKey) -> String {
        self.inner.describe(key)
    }
}
