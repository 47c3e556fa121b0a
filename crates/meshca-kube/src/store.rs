//! [`KubeStore`]: clusters' Secrets through their API servers.
//!
//! - A read answers the secret's data and its `resourceVersion`; a write is one request that
//!   names that version (`PUT` with `metadata.resourceVersion`, or `POST` when the secret was
//!   absent), so a secret changed by someone else in between is a conflict, never overwritten.
//! - A secret is written whole: its data is exactly the keys given. It is labelled
//!   `app.kubernetes.io/managed-by=meshca` and annotated with the policy, and for a CA bundle the
//!   signing certificate's serial and notAfter.
//! - In a workload cluster, a secret meshca did not make is left alone and reported, unless the
//!   store adopts (`--adopt`). The management cluster's secrets are the policy's own.
//! - Every request has a deadline; an API server that is down, refuses or hangs is a
//!   [`StoreError::Backend`] naming the cluster, and the other clusters go on.
//! - [`KubeStore::watch`] keeps the secrets of some namespaces up to date from watches: reads of
//!   them are answered from memory, so a reconcile that changes nothing makes no request at all,
//!   and a change made by anyone shows at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret as KubeSecret};
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use meshca_store::{
    Expect, Secret, SecretData, SecretKey, SecretStore, SecretWrite, StoreError, Version,
};

use crate::KubeError;
use crate::clusters::{ClusterConfig, ClusterSources};

/// The field manager meshca's writes carry.
pub const FIELD_MANAGER: &str = "meshca";
/// The label that marks a secret as meshca's.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "meshca";
/// The policy a secret was written under.
pub const POLICY_ANNOTATION: &str = "trust.meshca/policy";
/// The manager replica that wrote a secret (its lease identity), when leader election is on.
pub const WRITER_ANNOTATION: &str = "trust.meshca/writer";
/// A CA bundle's signing certificate serial (hex).
pub const SERIAL_ANNOTATION: &str = "trust.meshca/serial";
/// A CA bundle's signing certificate notAfter (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "trust.meshca/not-after";

/// Writes of one batch in flight together: each waits on its own API server, not on the CPU.
const MAX_WRITES_IN_FLIGHT: usize = 32;

/// How the store behaves.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// The management cluster's name in the store.
    pub mgmt: String,
    /// Replace workload clusters' secrets that meshca did not make.
    pub adopt: bool,
    /// Create a missing namespace instead of reporting it.
    pub create_namespace: bool,
    /// How long one request may take.
    pub timeout: Duration,
    /// The policy written into the annotations (changed with [`KubeStore::set_owner`]).
    pub owner: Option<String>,
    /// The replica written into the annotations (its lease identity).
    pub writer: Option<String>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            mgmt: "mgmt".to_owned(),
            adopt: false,
            create_namespace: false,
            timeout: Duration::from_secs(10),
            owner: None,
            writer: None,
        }
    }
}

struct Cluster {
    client: kube::Client,
    /// `cluster NAME (URL)`, for messages.
    shown: String,
}

/// What the store knows of secrets: the last object seen of each (from reads, writes and
/// watches), and which namespaces a watch keeps complete.
#[derive(Default)]
struct Known {
    objects: HashMap<SecretKey, KubeSecret>,
    /// (cluster, namespace) → whether its watch has listed everything and is live.
    watched: HashMap<(String, String), bool>,
}

/// Secrets of many clusters, through their API servers.
pub struct KubeStore {
    /// Dropped without waiting (see `Drop`), so that a store may be dropped anywhere.
    rt: Option<tokio::runtime::Runtime>,
    clusters: BTreeMap<String, Cluster>,
    opts: KubeOptions,
    /// The policy whose writes these are: set before each policy's reconcile.
    owner: Mutex<Option<String>>,
    known: Arc<Mutex<Known>>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("clusters", &self.clusters.keys().collect::<Vec<_>>())
            .field("opts", &self.opts)
            .finish()
    }
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The store's own runtime: two threads for the clients' connections and the watches.
fn runtime() -> Result<tokio::runtime::Runtime, KubeError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("meshca-kube")
        .enable_all()
        .build()
        .map_err(|e| KubeError::Config {
            what: "the Kubernetes client's runtime".to_owned(),
            reason: e.to_string(),
        })
}

/// One line for a client error: the HTTP status and the API server's message, or what failed on
/// the way there.
pub(crate) fn describe_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let reason = if s.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", s.reason)
            };
            format!("HTTP {}{reason}: {}", s.code, s.message)
        }
        other => format!("cannot reach the API server: {other}"),
    }
}

fn api_status(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(s) => Some(s),
        _ => None,
    }
}

fn to_data(s: &KubeSecret) -> SecretData {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .chain(
            s.string_data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
        )
        .collect()
}

fn version_of(s: &KubeSecret) -> Version {
    Version::new(s.metadata.resource_version.clone().unwrap_or_default())
}

fn is_managed(s: &KubeSecret) -> bool {
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY)
}

/// Whether `a` is a later state than `b`. resourceVersions are etcd revisions in every API
/// server meshca talks to; where one is not a number, the newer arrival wins.
fn newer(a: &KubeSecret, b: &KubeSecret) -> bool {
    let n = |s: &KubeSecret| {
        s.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (n(a), n(b)) {
        (Some(x), Some(y)) => x >= y,
        _ => true,
    }
}

impl Known {
    fn note(&mut self, key: &SecretKey, obj: Option<KubeSecret>) {
        match obj {
            Some(o) => {
                if self.objects.get(key).is_none_or(|old| newer(&o, old)) {
                    self.objects.insert(key.clone(), o);
                }
            }
            None => {
                self.objects.remove(key);
            }
        }
    }
}

impl KubeStore {
    /// Connects to the clusters the sources name (reading the management cluster's remote
    /// secrets if asked). Nothing else is requested until the store is used.
    pub fn connect(sources: &ClusterSources, opts: KubeOptions) -> Result<Self, KubeError> {
        let rt = runtime()?;
        let configs = rt.block_on(crate::clusters::resolve(sources, &opts.mgmt, opts.timeout))?;
        Self::from_configs(rt, configs, opts)
    }

    /// A store over clusters already resolved.
    pub fn with_clusters(
        configs: Vec<ClusterConfig>,
        opts: KubeOptions,
    ) -> Result<Self, KubeError> {
        let rt = runtime()?;
        Self::from_configs(rt, configs, opts)
    }

    fn from_configs(
        rt: tokio::runtime::Runtime,
        configs: Vec<ClusterConfig>,
        opts: KubeOptions,
    ) -> Result<Self, KubeError> {
        let mut clusters = BTreeMap::new();
        for c in configs {
            let shown = format!("cluster {} ({})", c.name, c.config.cluster_url);
            // The client's connection pool lives on the store's runtime.
            let client = {
                let _in_rt = rt.enter();
                crate::clusters::client(c.config).map_err(|e| KubeError::Config {
                    what: format!("cluster {} ({})", c.name, c.origin),
                    reason: e.to_string(),
                })?
            };
            clusters.insert(c.name, Cluster { client, shown });
        }
        Ok(KubeStore {
            rt: Some(rt),
            clusters,
            owner: Mutex::new(opts.owner.clone()),
            opts,
            known: Arc::new(Mutex::new(Known::default())),
        })
    }

    /// Names the policy the next writes are made for (`namespace/name`), for their annotation.
    pub fn set_owner(&self, owner: Option<String>) {
        *self.owner.lock().unwrap_or_else(|p| p.into_inner()) = owner;
    }

    /// The client of a configured cluster: what the manager's other work (policies, leases,
    /// events) uses, sharing the store's connections.
    pub fn client(&self, cluster: &str) -> Option<kube::Client> {
        self.clusters.get(cluster).map(|c| c.client.clone())
    }

    /// The store's runtime, where that other work runs.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt().handle().clone()
    }

    /// The management cluster's name.
    pub fn mgmt(&self) -> &str {
        &self.opts.mgmt
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        // Only `Drop` takes it.
        self.rt
            .as_ref()
            .unwrap_or_else(|| unreachable!("the runtime is taken only on drop"))
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        // Every change under the lock is one insert or remove: a panic leaves nothing half done.
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cluster(&self, name: &str) -> Result<&Cluster, StoreError> {
        self.clusters.get(name).ok_or_else(|| StoreError::Backend {
            target: format!("cluster {name}"),
            status: None,
            reason: format!(
                "not a configured cluster (known: {})",
                self.clusters.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    fn api(&self, key: &SecretKey) -> Result<(Api<KubeSecret>, &Cluster), StoreError> {
        let c = self.cluster(&key.cluster)?;
        Ok((Api::namespaced(c.client.clone(), &key.namespace), c))
    }

    /// Runs one request against `shown`'s API server with the store's deadline.
    fn call<T>(
        &self,
        shown: &str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, StoreError> {
        let timeout = self.opts.timeout;
        self.rt()
            .block_on(async { tokio::time::timeout(timeout, fut).await })
            .map_err(|_| StoreError::Backend {
                target: shown.to_owned(),
                status: None,
                reason: format!("no answer within {}s", timeout.as_secs()),
            })
    }

    fn backend(shown: &str, key: &SecretKey, e: &kube::Error) -> StoreError {
        StoreError::Backend {
            target: format!("{shown}: secret {}/{}", key.namespace, key.name),
            status: api_status(e).map(|s| s.code),
            reason: describe_error(e),
        }
    }

    /// Reads a secret from its API server, whatever any watch knows.
    fn fetch(&self, key: &SecretKey) -> Result<Option<KubeSecret>, StoreError> {
        let (api, c) = self.api(key)?;
        let got = self
            .call(&c.shown, api.get_opt(&key.name))?
            .map_err(|e| Self::backend(&c.shown, key, &e))?;
        self.known().note(key, got.clone());
        Ok(got)
    }

    /// Keeps the secrets of these (cluster, namespace) pairs up to date from watches, and answers
    /// reads of them from memory once each watch has listed everything. A watch that breaks
    /// (its API server down) sends reads to the API server until it has listed again.
    pub fn watch(&self, scopes: &[(String, String)]) -> Result<(), StoreError> {
        for (cluster, namespace) in scopes {
            let c = self.cluster(cluster)?;
            {
                let mut k = self.known();
                if k.watched
                    .contains_key(&(cluster.clone(), namespace.clone()))
                {
                    continue;
                }
                k.watched
                    .insert((cluster.clone(), namespace.clone()), false);
            }
            let api: Api<KubeSecret> = Api::namespaced(c.client.clone(), namespace);
            let known = Arc::clone(&self.known);
            let (cluster, namespace, shown) = (cluster.clone(), namespace.clone(), c.shown.clone());
            self.rt().spawn(async move {
                let lock = || known.lock().unwrap_or_else(|p| p.into_inner());
                let key = |o: &KubeSecret| {
                    SecretKey::new(
                        cluster.as_str(),
                        namespace.as_str(),
                        o.metadata.name.clone().unwrap_or_default(),
                    )
                };
                let scope = (cluster.clone(), namespace.clone());
                let stream = watcher(api, watcher::Config::default()).default_backoff();
                futures::pin_mut!(stream);
                let mut listing: Vec<KubeSecret> = Vec::new();
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(watcher::Event::Init) => listing.clear(),
                        Ok(watcher::Event::InitApply(o)) => listing.push(o),
                        Ok(watcher::Event::InitDone) => {
                            let mut k = lock();
                            k.objects.retain(|key, _| {
                                key.cluster != scope.0 || key.namespace != scope.1
                            });
                            for o in listing.drain(..) {
                                k.objects.insert(key(&o), o);
                            }
                            k.watched.insert(scope.clone(), true);
                        }
                        Ok(watcher::Event::Apply(o)) => {
                            let k2 = key(&o);
                            lock().note(&k2, Some(o));
                        }
                        Ok(watcher::Event::Delete(o)) => {
                            let k2 = key(&o);
                            lock().note(&k2, None);
                        }
                        Err(e) => {
                            lock().watched.insert(scope.clone(), false);
                            tracing::warn!(
                                "{shown}: watch of secrets in {} broken, retrying: {e}",
                                scope.1
                            );
                        }
                    }
                }
            });
        }
        Ok(())
    }

    /// Whether every watch has listed its namespace and is live.
    pub fn watches_synced(&self) -> bool {
        self.known().watched.values().all(|s| *s)
    }

    /// The object the store last saw of `key` if a live watch covers it: `Some(None)` when the
    /// watch knows it absent; `None` when only the API server can tell.
    fn watched(&self, key: &SecretKey) -> Option<Option<KubeSecret>> {
        let k = self.known();
        match k.watched.get(&(key.cluster.clone(), key.namespace.clone())) {
            Some(true) => Some(k.objects.get(key).cloned()),
            _ => None,
        }
    }

    /// The secret as it stands at version `v`, from memory when the store saw it so, else from
    /// the API server; a conflict when it is at another version.
    fn at_version(&self, key: &SecretKey, v: &Version) -> Result<KubeSecret, StoreError> {
        let seen = self.known().objects.get(key).cloned();
        let current = match seen {
            Some(o) if &version_of(&o) == v => Some(o),
            _ => self.fetch(key)?,
        };
        match current {
            Some(o) if &version_of(&o) == v => Ok(o),
            other => Err(StoreError::VersionConflict {
                key: key.to_string(),
                expected: format!("version {v}"),
                found: other.map_or_else(
                    || "absent".to_owned(),
                    |o| format!("version {}", version_of(&o)),
                ),
            }),
        }
    }

    fn metadata_for(&self, obj: &mut KubeSecret, key: &SecretKey, data: &SecretData) {
        let m = &mut obj.metadata;
        m.name = Some(key.name.clone());
        m.namespace = Some(key.namespace.clone());
        m.managed_fields = None;
        m.labels
            .get_or_insert_with(Default::default)
            .insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
        let a = m.annotations.get_or_insert_with(Default::default);
        if let Some(p) = self.owner.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            a.insert(POLICY_ANNOTATION.to_owned(), p);
        }
        if let Some(w) = &self.opts.writer {
            a.insert(WRITER_ANNOTATION.to_owned(), w.clone());
        }
        match signing_cert_facts(data) {
            Some((serial, not_after)) => {
                a.insert(SERIAL_ANNOTATION.to_owned(), serial);
                a.insert(NOT_AFTER_ANNOTATION.to_owned(), not_after);
            }
            None => {
                a.remove(SERIAL_ANNOTATION);
                a.remove(NOT_AFTER_ANNOTATION);
            }
        }
    }

    fn create_namespace(&self, key: &SecretKey, shown: &str) -> Result<(), StoreError> {
        let c = self.cluster(&key.cluster)?;
        let api: Api<Namespace> = Api::all(c.client.clone());
        let mut ns = Namespace::default();
        ns.metadata.name = Some(key.namespace.clone());
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        match self.call(shown, api.create(&pp, &ns))? {
            Ok(_) => Ok(()),
            Err(e) if api_status(&e).is_some_and(|s| s.code == 409) => Ok(()),
            Err(e) => Err(StoreError::Backend {
                target: format!("{shown}: namespace {}", key.namespace),
                status: api_status(&e).map(|s| s.code),
                reason: format!("cannot create it: {}", describe_error(&e)),
            }),
        }
    }
}

/// The signing certificate's serial and notAfter of a CA bundle (either layout), for annotations.
fn signing_cert_facts(data: &SecretData) -> Option<(String, String)> {
    let pem = data.get("ca-cert.pem").or_else(|| data.get("tls.crt"))?;
    let cert = meshca_pki::Certificate::all_from_pem(pem, "annotation")
        .ok()?
        .into_iter()
        .next()?;
    let serial: String = cert
        .x509()
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let not_after = cert
        .not_after()
        .format(&time::format_description::well_known::Rfc3339)
        .ok()?;
    Some((serial, not_after))
}

impl SecretStore for KubeStore {
    /// The configured clusters, the management cluster among them: no request is made.
    fn clusters(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.clusters.keys().cloned().collect())
    }

    fn get(&self, key: &SecretKey) -> Result<Option<Secret>, StoreError> {
        let obj = match self.watched(key) {
            Some(o) => o,
            None => self.fetch(key)?,
        };
        Ok(obj.map(|o| Secret {
            data: to_data(&o),
            version: version_of(&o),
        }))
    }

    fn version(&self, key: &SecretKey) -> Result<Option<Version>, StoreError> {
        Ok(self.get(key)?.map(|s| s.version))
    }

    fn write(
        &self,
        key: &SecretKey,
        data: &SecretData,
        expect: &Expect,
    ) -> Result<Version, StoreError> {
        let (api, c) = self.api(key)?;
        let shown = c.shown.clone();
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let bytes: BTreeMap<String, ByteString> = data
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone())))
            .collect();
        let written = match expect {
            Expect::Version(v) => {
                let mut obj = self.at_version(key, v)?;
                if key.cluster != self.opts.mgmt && !is_managed(&obj) && !self.opts.adopt {
                    return Err(StoreError::NotManaged {
                        key: key.to_string(),
                        reason: format!(
                            "not made by meshca (no label {MANAGED_BY_LABEL}={MANAGED_BY}): left alone; --adopt lets meshca replace it"
                        ),
                    });
                }
                self.metadata_for(&mut obj, key, data);
                obj.data = Some(bytes);
                obj.string_data = None;
                self.call(&shown, api.replace(&key.name, &pp, &obj))?
            }
            Expect::Absent => {
                let mut obj = KubeSecret {
                    type_: Some("Opaque".to_owned()),
                    data: Some(bytes),
                    ..Default::default()
                };
                self.metadata_for(&mut obj, key, data);
                let mut r = self.call(&shown, api.create(&pp, &obj))?;
                let missing_ns = |r: &Result<KubeSecret, kube::Error>| {
                    r.as_ref().err().and_then(api_status).is_some_and(|s| {
                        s.code == 404 && s.details.as_ref().is_some_and(|d| d.kind == "namespaces")
                    })
                };
                if missing_ns(&r) {
                    if !self.opts.create_namespace {
                        return Err(StoreError::Backend {
                            target: format!("{shown}: secret {}/{}", key.namespace, key.name),
                            status: Some(404),
                            reason: format!(
                                "namespace {} does not exist (create it, or pass --create-namespace)",
                                key.namespace
                            ),
                        });
                    }
                    self.create_namespace(key, &shown)?;
                    r = self.call(&shown, api.create(&pp, &obj))?;
                }
                r
            }
        };
        match written {
            Ok(o) => {
                let v = version_of(&o);
                self.known().note(key, Some(o));
                Ok(v)
            }
            Err(e) if api_status(&e).is_some_and(|s| s.code == 409 || s.code == 404) => {
                // 409: changed or created by someone else since it was read; 404: deleted.
                Err(StoreError::VersionConflict {
                    key: key.to_string(),
                    expected: expect.to_string(),
                    found: describe_error(&e),
                })
            }
            Err(e) => Err(Self::backend(&shown, key, &e)),
        }
    }

    /// Each write goes to its own cluster's API server, all in flight together; two writes of
    /// one secret go one after the other, in order.
    fn write_all(&self, writes: &[SecretWrite<'_>]) -> Vec<Result<Version, StoreError>> {
        let mut keys: Vec<&SecretKey> = writes.iter().map(|w| w.key).collect();
        keys.sort();
        keys.dedup();
        let workers = if keys.len() == writes.len() {
            writes.len().min(MAX_WRITES_IN_FLIGHT)
        } else {
            1
        };
        meshca_store::parallel::in_parallel(
            writes.len(),
            workers,
            |_| false,
            |i| self.write(writes[i].key, writes[i].data, writes[i].expect),
        )
    }

    fn describe(&self, key: &SecretKey) -> String {
        format!(
            "cluster {}: secret {}/{}",
            key.cluster, key.namespace, key.name
        )
    }
}
