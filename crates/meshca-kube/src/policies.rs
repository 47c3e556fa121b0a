//! RootTrustPolicy resources as the manager's policies: every policy of both API groups in the
//! management cluster, watched ([`PolicyResources`], a [`PolicySource`]), and what the manager
//! did reported back on each ([`StatusWriter`]): `.status` with its conditions, and Kubernetes
//! Events for every issuance, rotation step, refusal and conflict.
//!
//! Only a spec change (a new `generation`) counts as a change of policy: the status the manager
//! writes itself changes each resource's version, and must not wake it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use meshca_store::SecretStore;
use meshca_trust::manager::{Event, PolicySource, Sourced};
use meshca_trust::{Outcome, TrustPolicy};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::KubeStore;
use crate::crd::{ClusterState, Condition, Flavor, KIND, PolicyStatus};
use crate::store::describe_error;

/// Whether an event is news or a problem.
#[derive(Clone, Copy, Debug)]
enum EventType {
    Normal,
    Warning,
}

/// The field manager of status writes, and the reporting controller of events.
const MANAGER: &str = "meshca";
/// How long the first listing may take before the manager starts with what it has (a group
/// whose definition is not installed never lists; it is picked up once installed).
const FIRST_SYNC: Duration = Duration::from_secs(5);

/// Where one policy came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Origin {
    flavor: Flavor,
    namespace: String,
    name: String,
}

/// The policies' reflections, shared by the source and the status writer.
struct Reflected {
    stores: Vec<(Flavor, Store<DynamicObject>)>,
}

impl Reflected {
    /// Every policy now, with its id, sorted by id.
    fn all(&self) -> Vec<(String, Origin, Arc<DynamicObject>)> {
        let mut out: Vec<(Origin, Arc<DynamicObject>)> = Vec::new();
        for (flavor, store) in &self.stores {
            for o in store.state() {
                let (Some(ns), Some(name)) =
                    (o.metadata.namespace.clone(), o.metadata.name.clone())
                else {
                    continue;
                };
                out.push((
                    Origin {
                        flavor: *flavor,
                        namespace: ns,
                        name,
                    },
                    o,
                ));
            }
        }
        let mut named: Vec<(String, Origin, Arc<DynamicObject>)> = out
            .iter()
            .map(|(origin, o)| {
                let twin = out.iter().any(|(other, _)| {
                    other.flavor != origin.flavor
                        && other.namespace == origin.namespace
                        && other.name == origin.name
                });
                let mut id = format!("{}/{}", origin.namespace, origin.name);
                if twin {
                    id = format!("{id} ({})", origin.flavor.group());
                }
                (id, origin.clone(), Arc::clone(o))
            })
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    fn find(&self, id: &str) -> Option<(Origin, Arc<DynamicObject>)> {
        self.all()
            .into_iter()
            .find(|(i, _, _)| i == id)
            .map(|(_, o, obj)| (o, obj))
    }

    /// What a policy change is: the set of (id, uid, generation).
    fn fingerprint(&self) -> Vec<(String, Option<String>, Option<i64>)> {
        self.all()
            .into_iter()
            .map(|(id, _, o)| (id, o.metadata.uid.clone(), o.metadata.generation))
            .collect()
    }
}

/// Every RootTrustPolicy in the management cluster, watched; a [`PolicySource`].
pub struct PolicyResources<'a> {
    store: &'a KubeStore,
    reflected: Arc<Reflected>,
    loaded: Vec<(String, Option<String>, Option<i64>)>,
}

/// Starts watching both groups' policies in the management cluster and waits (a few seconds at
/// most) for the first listing. Returns the source for the manager and the writer of statuses.
pub fn watch_policies(
    store: &KubeStore,
    instance: String,
) -> Result<(PolicyResources<'_>, StatusWriter), String> {
    let mgmt = store.mgmt().to_owned();
    let client = store
        .client(&mgmt)
        .ok_or_else(|| format!("the management cluster {mgmt:?} is not configured"))?;
    let handle = store.handle();
    let mut stores = Vec::new();
    let mut ready = Vec::new();
    for flavor in Flavor::ALL {
        let ar = flavor.api_resource();
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let writer = reflector::store::Writer::new(ar.clone());
        let reader = writer.as_reader();
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .applied_objects();
        let crd = flavor.crd_name();
        handle.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    tracing::debug!(definition = %crd, error = %e, "policy watch");
                }
            }
        });
        ready.push(reader.clone());
        stores.push((flavor, reader));
    }
    handle.block_on(async {
        let all = futures::future::join_all(ready.iter().map(|r| r.wait_until_ready()));
        let _ = tokio::time::timeout(FIRST_SYNC, all).await;
    });
    let reflected = Arc::new(Reflected { stores });
    Ok((
        PolicyResources {
            store,
            reflected: Arc::clone(&reflected),
            loaded: Vec::new(),
        },
        StatusWriter {
            client,
            handle,
            instance,
            reflected,
            pending: HashMap::new(),
        },
    ))
}

impl PolicySource for PolicyResources<'_> {
    fn load(&mut self) -> Vec<Sourced> {
        self.loaded = self.reflected.fingerprint();
        self.reflected
            .all()
            .into_iter()
            .map(|(id, origin, o)| {
                let generation = o.metadata.generation;
                let spec = o
                    .data
                    .get("spec")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                let shown = format!("{KIND} {id}");
                let parsed = TrustPolicy::from_resource(
                    &origin.flavor.api_version(),
                    &origin.name,
                    &origin.namespace,
                    &spec,
                    &shown,
                );
                let (policy, refused) = match parsed {
                    Ok(p) => (Some(p), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                Sourced {
                    id,
                    revision: format!(
                        "{}/{}",
                        o.metadata.uid.as_deref().unwrap_or_default(),
                        generation.unwrap_or_default()
                    ),
                    generation,
                    policy,
                    refused,
                }
            })
            .collect()
    }

    fn changed(&mut self) -> bool {
        self.reflected.fingerprint() != self.loaded
    }

    fn reconciling(&mut self, policy: &TrustPolicy) {
        self.store
            .set_owner(Some(format!("{}/{}", policy.namespace, policy.name)));
    }
}

/// Writes what the manager did into each policy's `.status` and Events.
pub struct StatusWriter {
    client: kube::Client,
    handle: tokio::runtime::Handle,
    /// This replica's name in the events it records.
    instance: String,
    reflected: Arc<Reflected>,
    /// Conflicts told before a policy's reconcile, reported with it.
    pending: HashMap<String, String>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn condition(type_: &str, on: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if on { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: String::new(),
        observed_generation: None,
    }
}

impl StatusWriter {
    /// Reports one of the manager's events. `store` is what the manager reconciles (for each
    /// cluster's state); failures to report are logged, never fatal.
    pub fn record(
        &mut self,
        event: &Event<'_>,
        store: &dyn SecretStore,
        mgmt: &str,
        now: OffsetDateTime,
    ) {
        match event {
            Event::Conflict {
                policy,
                clusters,
                with,
            } => {
                let message = format!(
                    "cluster(s) {} also covered by {}: left alone until one policy covers each",
                    clusters.join(", "),
                    with.join(", ")
                );
                self.event(policy, EventType::Warning, "Conflict", &message);
                self.pending.insert(policy.id.clone(), message);
            }
            Event::Refused(policy) => {
                let message = policy.refused.clone().unwrap_or_default();
                self.event(policy, EventType::Warning, "InvalidPolicy", &message);
                let status = PolicyStatus {
                    observed_generation: policy.generation,
                    conditions: vec![
                        condition("Ready", false, "InvalidPolicy", message.clone()),
                        condition(
                            "Rotating",
                            false,
                            "InvalidPolicy",
                            "nothing is done for an invalid policy".to_owned(),
                        ),
                        condition("Degraded", true, "InvalidPolicy", message),
                    ],
                    ..Default::default()
                };
                self.write_status(policy, status, now);
            }
            Event::Failed { policy, error, .. } => {
                let message = error.to_string();
                self.event(policy, EventType::Warning, "ReconcileFailed", &message);
                let conflict = self.pending.remove(&policy.id);
                let status = PolicyStatus {
                    observed_generation: policy.generation,
                    conditions: vec![
                        condition("Ready", false, "ReconcileFailed", message.clone()),
                        condition("Rotating", false, "ReconcileFailed", message.clone()),
                        condition(
                            "Degraded",
                            true,
                            "ReconcileFailed",
                            conflict.map_or(message, |c| c),
                        ),
                    ],
                    ..Default::default()
                };
                self.write_status(policy, status, now);
            }
            Event::Reconciled {
                policy,
                report,
                next,
                bundles,
                ..
            } => {
                for (cluster, outcome) in &report.clusters {
                    let (kind, reason, text) = match outcome {
                        Outcome::Fresh => continue,
                        Outcome::Created => (
                            EventType::Normal,
                            "Issued",
                            "issued a first intermediate CA".to_owned(),
                        ),
                        Outcome::Rotated(why) => (
                            EventType::Normal,
                            "Rotated",
                            format!("rotated the intermediate CA: {why}"),
                        ),
                        Outcome::RootsUpdated => (
                            EventType::Normal,
                            "RootsUpdated",
                            "updated the root bundle".to_owned(),
                        ),
                        Outcome::Failed(e) => (EventType::Warning, "ClusterFailed", e.clone()),
                    };
                    self.event(policy, kind, reason, &format!("cluster {cluster}: {text}"));
                }
                for step in &report.rotation {
                    self.event(policy, EventType::Normal, "RootRotation", step);
                }
                let conflict = self.pending.remove(&policy.id);
                // Each cluster as it now is, from the bundles the reconcile just verified.
                let only: Vec<String> = report.clusters.iter().map(|(c, _)| c.clone()).collect();
                let seen = match &policy.policy {
                    Some(p) if !only.is_empty() => {
                        meshca_trust::reconcile::status_with(bundles, store, p, mgmt, &only, now)
                            .ok()
                    }
                    _ => None,
                };
                let status = Self::reconciled_status(policy, report, *next, conflict, seen);
                self.write_status(policy, status, now);
            }
            Event::Loaded(_) | Event::Removed(_) => {}
        }
    }

    /// The status after a reconcile: its report, and `seen`, each cluster as it now is.
    fn reconciled_status(
        policy: &Sourced,
        report: &meshca_trust::Report,
        next: OffsetDateTime,
        conflict: Option<String>,
        seen: Option<meshca_trust::reconcile::Status>,
    ) -> PolicyStatus {
        let mut clusters = Vec::new();
        for (name, outcome) in &report.clusters {
            let st = seen
                .as_ref()
                .and_then(|s| s.clusters.iter().find(|c| &c.cluster == name));
            let mut message = match outcome {
                Outcome::Failed(e) => Some(e.clone()),
                _ => None,
            };
            if message.is_none() {
                message = st.and_then(|s| (!s.problems.is_empty()).then(|| s.problems.join("; ")));
            }
            clusters.push(ClusterState {
                name: name.clone(),
                done: message.is_none(),
                serial: st.and_then(|s| s.serial.clone()),
                not_after: st.and_then(|s| s.not_after.clone()),
                root_fingerprints: st.map(|s| s.roots.clone()).unwrap_or_default(),
                message,
            });
        }
        let ready = clusters.iter().filter(|c| c.done).count();
        let failed: Vec<String> = clusters
            .iter()
            .filter_map(|c| {
                c.message
                    .as_ref()
                    .map(|m| format!("cluster {}: {m}", c.name))
            })
            .collect();
        let phase = seen
            .as_ref()
            .and_then(|s| s.rotation.as_ref().map(|r| r.phase.clone()));
        let all_ready = ready == clusters.len() && conflict.is_none();
        let mut conditions = vec![if all_ready {
            condition(
                "Ready",
                true,
                "CacertsIssued",
                format!(
                    "every cluster's cacerts is as the policy wants ({ready}/{})",
                    clusters.len()
                ),
            )
        } else if let Some(c) = &conflict {
            condition("Ready", false, "Conflict", c.clone())
        } else {
            condition(
                "Ready",
                false,
                "ClustersNotReady",
                format!("{ready} of {} clusters ready", clusters.len()),
            )
        }];
        conditions.push(
            match (&phase, seen.as_ref().and_then(|s| s.rotation.as_ref())) {
                (Some(p), Some(r)) => condition(
                    "Rotating",
                    true,
                    "RootRotation",
                    format!("{p}: {}", r.doing),
                ),
                _ => condition(
                    "Rotating",
                    false,
                    "Idle",
                    "no root rotation in progress".to_owned(),
                ),
            },
        );
        conditions.push(match (&conflict, failed.first()) {
            (Some(c), _) => condition("Degraded", true, "Conflict", c.clone()),
            (None, Some(first)) => condition("Degraded", true, "ClusterFailed", first.clone()),
            (None, None) => condition(
                "Degraded",
                false,
                "AsExpected",
                "nothing is failing".to_owned(),
            ),
        });
        PolicyStatus {
            observed_generation: policy.generation,
            ready_clusters: Some(format!("{ready}/{}", clusters.len())),
            rotation_phase: Some(phase.unwrap_or_else(|| "idle".to_owned())),
            next_rotation: Some(rfc3339(next)),
            conditions,
            clusters,
        }
    }

    /// Applies `status` to the policy's status subresource, keeping each condition's
    /// transition time when its status did not change; nothing is sent when nothing changed.
    fn write_status(&self, policy: &Sourced, mut status: PolicyStatus, now: OffsetDateTime) {
        let Some((origin, obj)) = self.reflected.find(&policy.id) else {
            return;
        };
        let before: PolicyStatus = obj
            .data
            .get("status")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default();
        for c in &mut status.conditions {
            c.observed_generation = policy.generation;
            c.last_transition_time = before
                .conditions
                .iter()
                .find(|b| b.type_ == c.type_ && b.status == c.status)
                .map_or_else(|| rfc3339(now), |b| b.last_transition_time.clone());
        }
        if status == before {
            return;
        }
        let ar = origin.flavor.api_resource();
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &origin.namespace, &ar);
        let patch = json!({
            "apiVersion": origin.flavor.api_version(),
            "kind": KIND,
            "status": status,
        });
        let params = PatchParams::apply(MANAGER).force();
        let sent = self.handle.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                api.patch_status(&origin.name, &params, &Patch::Apply(&patch)),
            )
            .await
        });
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(policy = %policy.id, error = %describe_error(&e), "status not written")
            }
            Err(_) => {
                tracing::warn!(policy = %policy.id, "status not written: no answer within 10s")
            }
        }
    }

    /// Records an `events.k8s.io/v1` Event on the policy. Each is its own object: kube's
    /// recorder folds events of one reason into a series that keeps the first note, and each
    /// cluster's issuance has a note of its own.
    fn event(&self, policy: &Sourced, type_: EventType, reason: &str, note: &str) {
        let Some((origin, obj)) = self.reflected.find(&policy.id) else {
            return;
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        let regarding = kube::Resource::object_ref(&*obj, &origin.flavor.api_resource());
        let ev = KubeEvent {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", origin.name, now.as_nanosecond())),
                namespace: Some(origin.namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(match type_ {
                EventType::Normal => "Normal".to_owned(),
                EventType::Warning => "Warning".to_owned(),
            }),
            reason: Some(reason.to_owned()),
            note: Some(note.chars().take(1000).collect()),
            action: Some("Reconcile".to_owned()),
            regarding: Some(regarding),
            reporting_controller: Some(MANAGER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), &origin.namespace);
        let sent = self.handle.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                api.create(&PostParams::default(), &ev),
            )
            .await
        });
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(policy = %policy.id, reason, error = %describe_error(&e), "event not recorded")
            }
            Err(_) => {
                tracing::warn!(policy = %policy.id, reason, "event not recorded: no answer within 10s")
            }
        }
    }
}
