//! Faults on purpose: a wrapper store whose chosen writes fail as if the writer had been killed
//! just before them: that write and every later one fail until the writer is revived (a new
//! process). The simulator and the kill-and-resume tests use it; no production store
//! carries fault injection of its own.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::StoreError;
use crate::secrets::{Expect, Secret, SecretData, SecretKey, SecretStore, Version};

/// `S`, with writes that fail on cue.
#[derive(Debug, Default)]
pub struct CrashingStore<S> {
    inner: S,
    writes: AtomicU64,
    crashes: Mutex<Vec<u64>>,
    dead: AtomicBool,
}

impl<S: SecretStore> CrashingStore<S> {
    /// `inner`, with no crash planned yet.
    pub fn new(inner: S) -> Self {
        CrashingStore {
            inner,
            writes: AtomicU64::new(0),
            crashes: Mutex::new(Vec::new()),
            dead: AtomicBool::new(false),
        }
    }

    /// Whether a planned crash has happened since the last [`CrashingStore::revive`].
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// The writer starts again, as a new process: writes go through until the next crash.
    pub fn revive(&self) {
        self.dead.store(false, Ordering::Relaxed);
    }

    /// Makes the writes with these numbers (counting from 0, as [`CrashingStore::writes`]
    /// counts) fail as if the writer had been killed just before them. Each fails once; a failed
    /// write does not move the count.
    pub fn crash_at_writes(&self, numbers: impl IntoIterator<Item = u64>) {
        self.crashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(numbers);
    }

    /// How many writes went through.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: SecretStore> SecretStore for CrashingStore<S> {
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
        let n = self.writes.load(Ordering::Relaxed);
        if self.is_dead() {
            return Err(StoreError::Backend {
                target: key.to_string(),
                status: None,
                reason: format!("the writer was killed before write {n}"),
            });
        }
        {
            let mut crashes = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = crashes.iter().position(|c| *c == n) {
                crashes.swap_remove(i);
                self.dead.store(true, Ordering::Relaxed);
                return Err(StoreError::Backend {
                    target: key.to_string(),
                    status: None,
                    reason: format!("simulated crash before write {n}"),
                });
            }
        }
        let v = self.inner.write(key, data, expect)?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(v)
    }

    fn version(&self, key: &SecretKey) -> Result<Option<Version>, StoreError> {
        self.inner.version(key)
    }

    fn describe(&self, key: &SecretKey) -> String {
        self.inner.describe(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn a_planned_crash_fails_once_and_writes_nothing() {
        let s = CrashingStore::new(MemoryStore::with_clusters(&["c"]));
        let k = SecretKey::new("c", "ns", "s");
        let d = SecretData::new();
        s.crash_at_writes([1]);
        let v = s.write(&k, &d, &Expect::Absent).unwrap();
        let e = s.write(&k, &d, &Expect::Version(v.clone())).unwrap_err();
        assert!(
            e.to_string().contains("simulated crash before write 1"),
            "{e}"
        );
        assert_eq!(s.version(&k).unwrap(), Some(v.clone()));
        assert_eq!(s.writes(), 1);
        assert!(s.is_dead());
        assert!(
            s.write(&k, &d, &Expect::Version(v.clone())).is_err(),
            "dead until revived"
        );
        s.revive();
        s.write(&k, &d, &Expect::Version(v)).unwrap();
        assert_eq!(s.writes(), 2);
    }
}
