//! Where clusters' secrets live. [`SecretStore`] is what the reconciler needs of a store; the
//! folder store is the default, and [`MemoryStore`] serves the simulator and dry runs.
//!
//! The folder store: `<root>/<cluster>/<namespace>/<secret>/<key>`, the layout a Kubernetes
//! secret volume has, so `meshca serve --cacerts <root>/cluster1/istio-system/cacerts` reads what
//! the reconciler writes. A secret is replaced whole, as the kubelet does it: the keys are written
//! into a new hidden folder, a `..data` symlink is swapped to it in one rename, and each key is a
//! symlink through `..data`. A reader never sees half of an update.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use meshca_store::StoreError;

/// A secret's data: key name to bytes.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Key names whose contents are private (mode 0600).
const PRIVATE_KEYS: &[&str] = &["ca-key.pem", "tls.key", "key.pem", "root-key.pem"];

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// What the reconciler needs of a store: clusters, and secrets read and replaced whole.
pub trait SecretStore: Send + Sync {
    /// Cluster names, sorted.
    fn clusters(&self) -> Result<Vec<String>, StoreError>;
    /// Reads a secret; `None` if it does not exist.
    fn read(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SecretData>, StoreError>;
    /// Replaces a secret whole: a reader sees the old data or the new, never a mix.
    fn write(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
        data: &SecretData,
    ) -> Result<(), StoreError>;
    /// Where a secret is, for messages.
    fn describe(&self, cluster: &str, namespace: &str, name: &str) -> String {
        format!("{cluster}/{namespace}/{name}")
    }
    /// A cheap token that changes whenever the secret does: what a watching manager polls.
    fn version(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        use std::hash::{Hash, Hasher};
        Ok(self.read(cluster, namespace, name)?.map(|d| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            d.hash(&mut h);
            format!("{:016x}", h.finish())
        }))
    }
}

type SecretKey = (String, String, String);

/// Secrets in memory: the simulator's store, and the overlay of a dry run.
#[derive(Debug, Default)]
pub struct MemoryStore {
    clusters: Mutex<Vec<String>>,
    secrets: Mutex<BTreeMap<SecretKey, SecretData>>,
    writes: AtomicU64,
    crashes: Mutex<Vec<u64>>,
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

    /// A copy of every secret of `other`'s clusters: the starting point of a dry run.
    pub fn copy_of(
        other: &dyn SecretStore,
        namespaces: &[(&str, &str)],
    ) -> Result<Self, StoreError> {
        let clusters = other.clusters()?;
        let me = MemoryStore::with_clusters(&clusters);
        for c in &clusters {
            for (ns, name) in namespaces {
                if let Some(d) = other.read(c, ns, name)? {
                    me.write(c, ns, name, &d)?;
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

    /// Makes the writes with these numbers (counting from 0, as [`MemoryStore::writes`] counts)
    /// fail as if the manager had been killed just before them: what kill-and-resume tests use.
    /// Each fails once; the write counter does not move for a failed write.
    pub fn crash_at_writes(&self, numbers: impl IntoIterator<Item = u64>) {
        self.crashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(numbers);
    }

    fn lock_secrets(&self) -> std::sync::MutexGuard<'_, BTreeMap<SecretKey, SecretData>> {
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

    fn read(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SecretData>, StoreError> {
        Ok(self
            .lock_secrets()
            .get(&(cluster.to_owned(), namespace.to_owned(), name.to_owned()))
            .cloned())
    }

    fn write(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
        data: &SecretData,
    ) -> Result<(), StoreError> {
        {
            let n = self.writes.load(Ordering::Relaxed);
            let mut crashes = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = crashes.iter().position(|c| *c == n) {
                crashes.swap_remove(i);
                return Err(StoreError::Conflict {
                    path: PathBuf::from(format!("{cluster}/{namespace}/{name}")),
                    reason: format!("simulated crash before write {n}"),
                });
            }
        }
        {
            let mut cs = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
            if !cs.iter().any(|c| c == cluster) {
                cs.push(cluster.to_owned());
                cs.sort();
            }
        }
        self.lock_secrets().insert(
            (cluster.to_owned(), namespace.to_owned(), name.to_owned()),
            data.clone(),
        );
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Clusters as folders under one root.
#[derive(Clone, Debug)]
pub struct FolderStore {
    root: PathBuf,
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { path, what, source }
}

impl FolderStore {
    /// A store rooted at `root` (made if missing).
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(root).map_err(io(root, "cannot create store folder"))?;
        Ok(FolderStore {
            root: root.to_owned(),
        })
    }

    /// The folder of a secret.
    pub fn secret_dir(&self, cluster: &str, namespace: &str, name: &str) -> PathBuf {
        self.root.join(cluster).join(namespace).join(name)
    }
}

impl SecretStore for FolderStore {
    /// Cluster names: the folders directly under the root, sorted.
    fn clusters(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root).map_err(io(&self.root, "cannot list"))? {
            let e = e.map_err(io(&self.root, "cannot list"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() && !name.starts_with('.') {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn read(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SecretData>, StoreError> {
        let dir = self.secret_dir(cluster, namespace, name);
        if !dir.is_dir() {
            return Ok(None);
        }
        let mut data = SecretData::new();
        for e in fs::read_dir(&dir).map_err(io(&dir, "cannot list"))? {
            let e = e.map_err(io(&dir, "cannot list"))?;
            let key = e.file_name().to_string_lossy().into_owned();
            if key.starts_with('.') || !e.path().is_file() {
                continue;
            }
            data.insert(
                key,
                fs::read(e.path()).map_err(io(&e.path(), "cannot read"))?,
            );
        }
        Ok(Some(data))
    }

    /// Replaces a secret whole with `data` by a `..data` symlink swap.
    fn write(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
        data: &SecretData,
    ) -> Result<(), StoreError> {
        let dir = self.secret_dir(cluster, namespace, name);
        fs::create_dir_all(&dir).map_err(io(&dir, "cannot create"))?;
        let stamp = format!(
            "..{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let new_dir = dir.join(&stamp);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&new_dir)
            .map_err(io(&new_dir, "cannot create"))?;
        let staged = (|| {
            for (key, bytes) in data {
                let path = new_dir.join(key);
                let mode = if PRIVATE_KEYS.contains(&key.as_str()) {
                    0o600
                } else {
                    0o644
                };
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(io(&path, "cannot write"))?;
                std::io::Write::write_all(&mut f, bytes).map_err(io(&path, "cannot write"))?;
                f.sync_all().map_err(io(&path, "cannot write"))?;
            }
            let tmp_link = dir.join("..data_tmp");
            let _ = fs::remove_file(&tmp_link);
            symlink(&stamp, &tmp_link).map_err(io(&tmp_link, "cannot link"))?;
            Ok::<_, StoreError>(tmp_link)
        })();
        let tmp_link = match staged {
            Ok(l) => l,
            Err(e) => {
                let _ = fs::remove_dir_all(&new_dir);
                return Err(e);
            }
        };
        let data_link = dir.join("..data");
        let old = fs::read_link(&data_link).ok();
        fs::rename(&tmp_link, &data_link).map_err(io(&data_link, "cannot swap"))?;
        for key in data.keys() {
            let link = dir.join(key);
            if fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{key}"), &link).map_err(io(&link, "cannot link"))?;
            }
        }
        // Keys the new data no longer has.
        for e in fs::read_dir(&dir)
            .map_err(io(&dir, "cannot list"))?
            .flatten()
        {
            let key = e.file_name().to_string_lossy().into_owned();
            if !key.starts_with('.') && !data.contains_key(&key) {
                let _ = fs::remove_file(e.path());
            }
        }
        if let Some(old) = old
            && old != Path::new(&stamp)
        {
            let _ = fs::remove_dir_all(dir.join(old));
        }
        Ok(())
    }

    fn describe(&self, cluster: &str, namespace: &str, name: &str) -> String {
        self.secret_dir(cluster, namespace, name)
            .display()
            .to_string()
    }

    /// The `..data` link's target: every write swaps it. Folders made by hand, without the
    /// link, fall back to hashing the contents.
    fn version(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        let dir = self.secret_dir(cluster, namespace, name);
        match fs::read_link(dir.join("..data")) {
            Ok(target) => Ok(Some(target.to_string_lossy().into_owned())),
            Err(_) => {
                use std::hash::{Hash, Hasher};
                Ok(self.read(cluster, namespace, name)?.map(|d| {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    d.hash(&mut h);
                    format!("{:016x}", h.finish())
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_swapped_whole_through_data() {
        let t = tempfile::tempdir().unwrap();
        let s = FolderStore::open(t.path()).unwrap();
        assert!(s.read("c1", "istio-system", "cacerts").unwrap().is_none());
        let mut v1 = SecretData::new();
        v1.insert("ca-cert.pem".into(), b"one".to_vec());
        v1.insert("ca-key.pem".into(), b"k1".to_vec());
        s.write("c1", "istio-system", "cacerts", &v1).unwrap();
        assert_eq!(
            s.read("c1", "istio-system", "cacerts").unwrap().unwrap(),
            v1
        );
        let dir = s.secret_dir("c1", "istio-system", "cacerts");
        assert!(
            fs::symlink_metadata(dir.join("ca-cert.pem"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(dir.join("ca-key.pem"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );

        let mut v2 = SecretData::new();
        v2.insert("ca-cert.pem".into(), b"two".to_vec());
        v2.insert("root-cert.pem".into(), b"r".to_vec());
        s.write("c1", "istio-system", "cacerts", &v2).unwrap();
        assert_eq!(
            s.read("c1", "istio-system", "cacerts").unwrap().unwrap(),
            v2
        );
        let hidden: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != "..data")
            .collect();
        assert_eq!(hidden.len(), 1, "old data folders are removed: {hidden:?}");
        assert_eq!(s.clusters().unwrap(), ["c1"]);
    }
}
