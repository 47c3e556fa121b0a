//! Secrets in memory: the simulator's store, and the overlay of a dry run. Versions count writes,
//! so preconditions behave as they do against a real API server.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::StoreError;
use crate::secrets::{Expect, Secret, SecretData, SecretKey, SecretStore, Version};

/// Secrets in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    clusters: Mutex<Vec<String>>,
    secrets: Mutex<BTreeMap<SecretKey, Secret>>,
    writes: AtomicU64,
}

impl MemoryStore {
    /// An empty store with these (empty) clusters.
    pub fn with_clusters<S: AsRef<str>>(clusters: &[S]) -> Self {
        let mut names: Vec<String> = clusters.iter().map(|c| c.as_ref().to_owned()).collect();
        names.sort();
        names.dedup();
        MemoryStore {
            clusters: Mutex::new(names),
            ..Default::default()
        }
    }

    /// A copy of the secrets `namespaces` (namespace, name) of every cluster of `other`: the
    /// starting point of a dry run.
    pub fn copy_of(
        other: &dyn SecretStore,
        namespaces: &[(&str, &str)],
    ) -> Result<Self, StoreError> {
        let clusters = other.clusters()?;
        let me = MemoryStore::with_clusters(&clusters);
        for c in &clusters {
            for (ns, name) in namespaces {
                let key = SecretKey::new(c.as_str(), *ns, *name);
                if let Some(d) = other.read(&key)? {
                    me.put(&key, d);
                }
            }
        }
        me.writes.store(0, Ordering::Relaxed);
        Ok(me)
    }

    /// How many writes this store has taken.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Sets a secret whatever it holds, as a person with `kubectl apply` would: what tests and
    /// the simulator use to change the world behind the manager's back.
    pub fn put(&self, key: &SecretKey, data: SecretData) -> Version {
        self.note_cluster(&key.cluster);
        let n = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
        let version = Version::new(n.to_string());
        self.lock_secrets().insert(
            key.clone(),
            Secret {
                data,
                version: version.clone(),
            },
        );
        version
    }

    /// Removes a secret, as `kubectl delete secret` would.
    pub fn remove(&self, key: &SecretKey) {
        self.lock_secrets().remove(key);
    }

    fn note_cluster(&self, cluster: &str) {
        let mut cs = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        if !cs.iter().any(|c| c == cluster) {
            cs.push(cluster.to_owned());
            cs.sort();
        }
    }

    fn lock_secrets(&self) -> std::sync::MutexGuard<'_, BTreeMap<SecretKey, Secret>> {
        // A panic while holding the lock cannot leave a half-written map: every write is one insert.
        self.secrets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SecretStore for MemoryStore {
    fn clusters(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    fn get(&self, key: &SecretKey) -> Result<Option<Secret>, StoreError> {
        Ok(self.lock_secrets().get(key).cloned())
    }

    fn write(
        &self,
        key: &SecretKey,
        data: &SecretData,
        expect: &Expect,
    ) -> Result<Version, StoreError> {
        let mut secrets = self.lock_secrets();
        let found = secrets.get(key).map(|s| &s.version);
        if !expect.is_met_by(found) {
            return Err(StoreError::VersionConflict {
                key: key.to_string(),
                expected: expect.to_string(),
                found: found.map_or_else(|| "absent".to_owned(), |v| format!("version {v}")),
            });
        }
        let n = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
        let version = Version::new(n.to_string());
        secrets.insert(
            key.clone(),
            Secret {
                data: data.clone(),
                version: version.clone(),
            },
        );
        drop(secrets);
        self.note_cluster(&key.cluster);
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_over_a_changed_secret_is_a_conflict_and_changes_nothing() {
        let s = MemoryStore::with_clusters(&["c1"]);
        let key = SecretKey::new("c1", "istio-system", "cacerts");
        let mut d = SecretData::new();
        d.insert("a".into(), b"1".to_vec());
        let v1 = s.write(&key, &d, &Expect::Absent).unwrap();
        assert!(
            s.write(&key, &d, &Expect::Absent)
                .unwrap_err()
                .is_conflict()
        );
        let mut by_hand = SecretData::new();
        by_hand.insert("a".into(), b"hand".to_vec());
        s.put(&key, by_hand.clone());
        let e = s.write(&key, &d, &Expect::Version(v1)).unwrap_err();
        assert!(e.is_conflict(), "{e}");
        assert!(
            e.to_string()
                .starts_with("c1/istio-system/cacerts: changed since it was read")
        );
        assert_eq!(s.read(&key).unwrap(), Some(by_hand));
    }
}
