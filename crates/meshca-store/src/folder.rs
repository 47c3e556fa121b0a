//! Where clusters' secrets live. [`SecretStore`] is what the reconciler needs of a store; the
//! folder store is the default, and [`MemoryStore`] serves the simulator and dry runs.
//!
//! The folder store: `<root>/<cluster>/<namespace>/<secret>/<key>`, the layout a Kubernetes
//! secret volume has, so `meshca serve --cacerts <root>/cluster1/istio-system/cacerts` reads what
//! the reconciler writes. A secret is replaced whole, as the kubelet does it: the keys are written
//! into a new hidden folder, a `..data` symlink is swapped to it in one rename, and each key is a
//! symlink through `..data`. A reader never sees half of an update.
//!
//! Many secrets written together ([`SecretStore::write_all`]) share the wait for the disk: every
//! secret's new files and folder are written first, and reach the disk before any `..data` swap
//! (the commit point); the swapped folders reach it after the swaps; old data folders are removed
//! last. A few secrets are synced file by file; a large batch is flushed with one `syncfs` per
//! file system before and one after the swaps, which costs the disk one flush instead of
//! thousands.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use meshca_store::StoreError;

/// A secret's data: key name to bytes.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Key names whose contents are private (mode 0600).
const PRIVATE_KEYS: &[&str] = &["ca-key.pem", "tls.key", "key.pem", "root-key.pem"];

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Threads that swap `..data` links and remove old data folders: metadata calls, CPU-bound in
/// the kernel.
const FS_WORKERS: usize = 4;
/// Threads that write and sync new files and sync folders: mostly waiting for the disk, which
/// handles many syncs in flight together far faster than one after another.
const SYNC_WORKERS: usize = 32;
/// From this many secrets on, a batch is flushed with `syncfs` rather than file by file.
const SYNCFS_BATCH: usize = 16;

/// One secret to replace, for [`SecretStore::write_all`].
#[derive(Clone, Copy, Debug)]
pub struct SecretWrite<'a> {
    /// The cluster.
    pub cluster: &'a str,
    /// The secret's namespace.
    pub namespace: &'a str,
    /// The secret's name.
    pub name: &'a str,
    /// What the secret is to hold.
    pub data: &'a SecretData,
}

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
    /// Replaces several secrets, each whole as [`SecretStore::write`] does. When one fails the
    /// error is returned and any of the others may or may not have been replaced. The default
    /// writes them one by one, in order.
    fn write_all(&self, writes: &[SecretWrite<'_>]) -> Result<(), StoreError> {
        for w in writes {
            self.write(w.cluster, w.namespace, w.name, w.data)?;
        }
        Ok(())
    }
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
        Ok(self
            .read(cluster, namespace, name)?
            .map(|d| content_version(&d)))
    }
}

/// A token of a secret's contents, for stores that keep no version of their own.
fn content_version(data: &SecretData) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    format!("{:016x}", h.finish())
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
            if name.starts_with('.') {
                continue;
            }
            // The entry's own type spares a `stat` per cluster; a symlink is followed.
            let is_dir = match e.file_type() {
                Ok(t) if t.is_dir() => true,
                Ok(t) if !t.is_symlink() => false,
                _ => e.path().is_dir(),
            };
            if is_dir {
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
        // A secret written by a `..data` swap is read from the data folder the link names: every
        // key from one version, even while a writer swaps it (and removes the old folder, in
        // which case the new one is read).
        for _ in 0..3 {
            let target = match fs::read_link(dir.join("..data")) {
                Ok(t) => t,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::InvalidInput
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(io(&dir.join("..data"), "cannot read")(e)),
            };
            let folder = dir.join(target);
            match read_folder(&folder, false) {
                Ok(Some(data)) => return Ok(Some(data)),
                Ok(None) => continue,
                Err(e) => return Err(e),
            }
        }
        // A folder made by hand, without the link: each key as it is.
        read_folder(&dir, true)
    }

    /// Replaces a secret whole with `data` by a `..data` symlink swap.
    fn write(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
        data: &SecretData,
    ) -> Result<(), StoreError> {
        self.write_all(&[SecretWrite {
            cluster,
            namespace,
            name,
            data,
        }])
    }

    /// Replaces secrets by `..data` swaps, syncing them together: every new file and its folder
    /// reaches the disk before any swap, and every swapped folder (and any folder made for it)
    /// after the swaps, before this returns. A crash leaves each secret old or new, never half.
    fn write_all(&self, writes: &[SecretWrite<'_>]) -> Result<(), StoreError> {
        let whole_fs = writes.len() >= SYNCFS_BATCH;
        // The file systems are opened before anything is written: `syncfs` reports the write
        // errors of its file system since its handle was opened (Linux 5.8 and later).
        let file_systems = if whole_fs {
            self.file_systems(writes)?
        } else {
            Vec::new()
        };
        let staged = in_parallel(
            writes.len(),
            if whole_fs { FS_WORKERS } else { SYNC_WORKERS },
            |_| false,
            |i| self.stage(&writes[i], !whole_fs),
        );
        let mut ready = Vec::with_capacity(staged.len());
        let mut first_error = None;
        for s in staged {
            match s {
                Ok(s) => ready.push(s),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if first_error.is_none() && whole_fs {
            first_error = sync_file_systems(&file_systems).err();
        }
        if let Some(e) = first_error {
            // Refused before any swap: nothing changes.
            ready.iter().for_each(Staged::discard);
            return Err(e);
        }
        // Swaps of different secrets are independent and go on several threads; two writes of
        // one secret share its `..data_tmp`, so a batch holding any goes one by one, in order.
        // After a failing swap no new one starts.
        let mut distinct: Vec<&Path> = ready.iter().map(|s| s.dir.as_path()).collect();
        distinct.sort();
        distinct.dedup();
        let workers = if distinct.len() == ready.len() {
            FS_WORKERS
        } else {
            1
        };
        let mut swaps = in_parallel(
            ready.len(),
            workers,
            |r| !matches!(r, Ok((_, Ok(())))),
            |i| ready[i].commit(writes[i].data),
        )
        .into_iter();
        let mut committed = Vec::with_capacity(ready.len());
        let mut failed = None;
        for s in &ready {
            match swaps.next() {
                Some(Ok((old, links))) => {
                    // Swapped: synced and cleaned up like the others, even if a key's link
                    // could not be made (that is still reported).
                    committed.push((s, old));
                    if let Err(e) = links {
                        failed.get_or_insert(e);
                    }
                }
                Some(Err(e)) => {
                    failed.get_or_insert(e);
                }
                None => s.discard(),
            }
        }
        let mut dirs: Vec<&Path> = committed
            .iter()
            .flat_map(|(s, _)| s.dirs_after.iter().map(PathBuf::as_path))
            .collect();
        dirs.sort();
        dirs.dedup();
        let synced = if whole_fs {
            sync_file_systems(&file_systems)
        } else {
            in_parallel(dirs.len(), SYNC_WORKERS, Result::is_err, |i| {
                sync_path(dirs[i])
            })
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
        };
        // Old data folders go last, when nothing points at them any more.
        let olds: Vec<PathBuf> = committed
            .iter()
            .filter_map(|(s, old)| old.as_ref().map(|o| s.dir.join(o)))
            .collect();
        in_parallel(
            olds.len(),
            FS_WORKERS,
            |_| false,
            |i| {
                let _ = fs::remove_dir_all(&olds[i]);
            },
        );
        match failed {
            Some(e) => Err(e),
            None => synced,
        }
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
            Err(_) => Ok(self
                .read(cluster, namespace, name)?
                .map(|d| content_version(&d))),
        }
    }
}

impl FolderStore {
    /// A handle on each file system the writes go to, found from the nearest existing folder of
    /// each secret (folders made for a write are on their parent's file system).
    fn file_systems(
        &self,
        writes: &[SecretWrite<'_>],
    ) -> Result<Vec<(PathBuf, fs::File)>, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let mut out: Vec<(PathBuf, fs::File)> = Vec::new();
        let mut seen = Vec::new();
        for w in writes {
            let secret = self.secret_dir(w.cluster, w.namespace, w.name);
            let mut cur = secret.as_path();
            let dev = loop {
                match fs::metadata(cur) {
                    Ok(m) => break m.dev(),
                    Err(e) if e.kind() == ErrorKind::NotFound && cur != self.root => {
                        cur = cur.parent().unwrap_or(&self.root);
                    }
                    Err(e) => return Err(io(cur, "cannot sync")(e)),
                }
            };
            if !seen.contains(&dev) {
                seen.push(dev);
                let f = fs::File::open(cur).map_err(io(cur, "cannot sync"))?;
                out.push((cur.to_owned(), f));
            }
        }
        Ok(out)
    }

    /// Writes a secret's files into a new hidden folder beside its `..data`, and with `sync`
    /// syncs each, then the folder (else the batch's `syncfs` does): nothing points at them yet.
    fn stage(&self, w: &SecretWrite<'_>, sync: bool) -> Result<Staged, StoreError> {
        let dir = self.secret_dir(w.cluster, w.namespace, w.name);
        let mut made = Vec::new();
        let mut dirs_after = Vec::new();
        if !dir.is_dir() {
            // Each folder made here is a new entry in its parent: those parents are synced too.
            let mut cur = dir.as_path();
            while !cur.exists() {
                let Some(parent) = cur.parent() else { break };
                made.push(cur.to_owned());
                dirs_after.push(parent.to_owned());
                cur = parent;
            }
            if let Err(e) = fs::create_dir_all(&dir) {
                remove_empty(&made);
                return Err(io(&dir, "cannot create")(e));
            }
        }
        dirs_after.push(dir.clone());
        let stamp = format!(
            "..{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let new_dir = dir.join(&stamp);
        if let Err(e) = fs::DirBuilder::new().mode(0o755).create(&new_dir) {
            remove_empty(&made);
            return Err(io(&new_dir, "cannot create")(e));
        }
        let staged = Staged {
            dir,
            stamp,
            made,
            dirs_after,
        };
        let written = (|| {
            for (key, bytes) in w.data {
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
                if sync {
                    f.sync_all().map_err(io(&path, "cannot write"))?;
                }
            }
            if sync { sync_path(&new_dir) } else { Ok(()) }
        })();
        match written {
            Ok(()) => Ok(staged),
            Err(e) => {
                staged.discard();
                Err(e)
            }
        }
    }
}

/// A swapped secret: its old data folder's name, and whether its key links were all made.
type Swapped = (Option<PathBuf>, Result<(), StoreError>);

/// A secret's new data folder, written and synced, not yet swapped in.
struct Staged {
    /// The secret's folder.
    dir: PathBuf,
    /// The new data folder's name in it.
    stamp: String,
    /// Folders made for the secret, deepest first: removed again if it is not swapped in.
    made: Vec<PathBuf>,
    /// Folders whose entries the swap changes or that were made for it, to sync after it.
    dirs_after: Vec<PathBuf>,
}

impl Staged {
    /// Swaps `..data` to the new folder and links any new key; returns the old data folder's name.
    /// After the swap the secret is committed whatever happens to its key links, whose failure
    /// comes second.
    fn commit(&self, data: &SecretData) -> Result<Swapped, StoreError> {
        let dir = &self.dir;
        let tmp_link = dir.join("..data_tmp");
        let _ = fs::remove_file(&tmp_link);
        if let Err(e) = symlink(&self.stamp, &tmp_link) {
            self.discard();
            return Err(io(&tmp_link, "cannot link")(e));
        }
        let data_link = dir.join("..data");
        let old = fs::read_link(&data_link).ok();
        if let Err(e) = fs::rename(&tmp_link, &data_link) {
            let _ = fs::remove_file(&tmp_link);
            self.discard();
            return Err(io(&data_link, "cannot swap")(e));
        }
        let old = old.filter(|o| o != Path::new(&self.stamp));
        let links = (|| {
            for key in data.keys() {
                let link = dir.join(key);
                if fs::symlink_metadata(&link).is_err() {
                    symlink(format!("..data/{key}"), &link).map_err(io(&link, "cannot link"))?;
                }
            }
            // Keys the new data no longer has.
            for e in fs::read_dir(dir).map_err(io(dir, "cannot list"))?.flatten() {
                let key = e.file_name().to_string_lossy().into_owned();
                if !key.starts_with('.') && !data.contains_key(&key) {
                    let _ = fs::remove_file(e.path());
                }
            }
            Ok(())
        })();
        Ok((old, links))
    }

    /// Removes what staging made for a secret that will not be swapped in.
    fn discard(&self) {
        let _ = fs::remove_dir_all(self.dir.join(&self.stamp));
        remove_empty(&self.made);
    }
}

/// Removes folders, deepest first, as long as they are empty (or already gone).
fn remove_empty(dirs: &[PathBuf]) {
    for d in dirs {
        match fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return,
        }
    }
}

/// The keys in `folder` (names starting with `.` are not keys); `None` if it is not there.
/// With `lenient`, a key that vanishes or is not a file is skipped (a dangling link in a folder
/// made by hand); otherwise a key that vanishes means the folder is being removed: `None`.
fn read_folder(folder: &Path, lenient: bool) -> Result<Option<SecretData>, StoreError> {
    let entries = match fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return Ok(None);
        }
        Err(e) => return Err(io(folder, "cannot list")(e)),
    };
    let mut data = SecretData::new();
    for e in entries {
        let e = e.map_err(io(folder, "cannot list"))?;
        let key = e.file_name().to_string_lossy().into_owned();
        if key.starts_with('.') {
            continue;
        }
        let path = e.path();
        match read_key(&path).map_err(io(&path, "cannot read"))? {
            Some(bytes) => {
                data.insert(key, bytes);
            }
            None if lenient => {}
            None => return Ok(None),
        }
    }
    Ok(Some(data))
}

/// One key's bytes, if it is a regular file (through links). It is opened without blocking and
/// without becoming a terminal, so that a FIFO or a device left in a secret folder is skipped
/// rather than waited on.
fn read_key(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use rustix::fs::OFlags;
    let flags = (OFlags::NONBLOCK | OFlags::NOCTTY).bits();
    let mut f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(i32::try_from(flags).unwrap_or(0))
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    if !m.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(m.len()).unwrap_or(0));
    std::io::Read::read_to_end(&mut f, &mut bytes)?;
    Ok(Some(bytes))
}

/// Flushes, with one `syncfs` each, every file system that holds one of `dirs`.
fn sync_file_systems(file_systems: &[(PathBuf, fs::File)]) -> Result<(), StoreError> {
    for (path, f) in file_systems {
        rustix::fs::syncfs(f).map_err(|e| io(path, "cannot sync")(e.into()))?;
    }
    Ok(())
}

/// Flushes a file or folder to the disk.
fn sync_path(path: &Path) -> Result<(), StoreError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path, "cannot sync"))
}

/// Runs `job(i)` for every `i` in `0..n` on up to `workers` threads, the calling one among them,
/// each thread taking the next index when it finishes one (so that a slow job, an RSA key say,
/// holds up no fixed share). Once a result satisfies `stop`, no new index is taken. Returns the
/// results of indices `0..m` in order, `m <= n`: every index below a stopping one has run, so the
/// first stopping result in order is the one a plain loop would have stopped at.
pub(crate) fn in_parallel<R: Send>(
    n: usize,
    workers: usize,
    stop: impl Fn(&R) -> bool + Sync,
    job: impl Fn(usize) -> R + Sync,
) -> Vec<R> {
    let workers = workers.min(n);
    if workers <= 1 {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let r = job(i);
            let done = stop(&r);
            out.push(r);
            if done {
                break;
            }
        }
        return out;
    }
    let next = AtomicUsize::new(0);
    let stopped = AtomicBool::new(false);
    let work = || {
        let mut out = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            let r = job(i);
            if stop(&r) {
                stopped.store(true, Ordering::Relaxed);
            }
            out.push((i, r));
        }
        out
    };
    let mut all = std::thread::scope(|s| {
        let others: Vec<_> = (1..workers).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for h in others {
            match h.join() {
                Ok(part) => all.extend(part),
                // A job panicked: carry on unwinding, as a plain loop would have.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// [`in_parallel`] for jobs that can fail: every result in order, or the first failure in order.
pub(crate) fn try_in_parallel<T: Send, E: Send>(
    n: usize,
    workers: usize,
    job: impl Fn(usize) -> Result<T, E> + Sync,
) -> Result<Vec<T>, E> {
    in_parallel(n, workers, Result::is_err, job)
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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

    fn hidden(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".."))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_batch_replaces_each_secret_whole_and_a_refused_batch_changes_nothing() {
        // A few secrets are synced file by file; a large batch by `syncfs`: both behave alike.
        for pad in [0, SYNCFS_BATCH] {
            batch_case(pad);
        }
    }

    fn batch_case(pad: usize) {
        let t = tempfile::tempdir().unwrap();
        let s = FolderStore::open(t.path()).unwrap();
        let data = |v: &str| {
            let mut d = SecretData::new();
            d.insert("ca-cert.pem".into(), v.as_bytes().to_vec());
            d.insert("ca-key.pem".into(), format!("key {v}").into_bytes());
            d
        };
        let (a1, b1, a2) = (data("a1"), data("b1"), data("a2"));
        let w = |cluster, data| SecretWrite {
            cluster,
            namespace: "istio-system",
            name: "cacerts",
            data,
        };
        let pads: Vec<String> = (0..pad).map(|i| format!("p{i:02}")).collect();
        let (p1, p2) = (data("p1"), data("p2"));
        // Two writes of one secret in a batch land in order.
        let mut batch = vec![w("a", &a1), w("b", &b1), w("a", &a2)];
        batch.extend(pads.iter().map(|c| w(c, &p1)));
        s.write_all(&batch).unwrap();
        let holds = |cluster: &str, data: &SecretData| {
            assert_eq!(
                s.read(cluster, "istio-system", "cacerts").unwrap().as_ref(),
                Some(data),
                "{cluster}"
            );
        };
        holds("a", &a2);
        holds("b", &b1);
        pads.iter().for_each(|c| holds(c, &p1));
        let dir_a = s.secret_dir("a", "istio-system", "cacerts");
        assert_eq!(hidden(&dir_a).len(), 2, "..data and one data folder");
        let key = dir_a.join("ca-key.pem");
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());

        // A key that cannot be written refuses the whole batch before any swap.
        let mut bad = data("b2");
        bad.insert("no/such/folder".into(), b"x".to_vec());
        let b2 = data("b2");
        let before = hidden(&dir_a);
        let mut batch = vec![w("b", &b2), w("c", &b2)];
        batch.extend(pads.iter().map(|c| w(c, &p2)));
        batch.push(w("a", &bad));
        assert!(s.write_all(&batch).is_err());
        holds("b", &b1);
        pads.iter().for_each(|c| holds(c, &p1));
        assert_eq!(hidden(&dir_a), before, "the staged folder is removed");
        assert!(s.read("c", "istio-system", "cacerts").unwrap().is_none());
        assert!(
            !t.path().join("c").exists(),
            "folders made for it are removed"
        );
    }

    #[test]
    fn a_fifo_or_folder_among_the_keys_is_skipped_not_waited_on() {
        let t = tempfile::tempdir().unwrap();
        let s = FolderStore::open(t.path()).unwrap();
        let mut d = SecretData::new();
        d.insert("ca-cert.pem".into(), b"cert".to_vec());
        s.write("c", "istio-system", "cacerts", &d).unwrap();
        let dir = s.secret_dir("c", "istio-system", "cacerts");
        let data = fs::read_link(dir.join("..data")).unwrap();
        // One in the secret's folder, one in its data folder, and a folder made by hand.
        let hand = t.path().join("h/istio-system/cacerts");
        fs::create_dir_all(hand.join("sub")).unwrap();
        fs::write(hand.join("ca-cert.pem"), b"by hand").unwrap();
        for fifo in [
            dir.join("pipe"),
            dir.join(&data).join("pipe"),
            hand.join("pipe"),
        ] {
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap();
            assert!(made.success(), "{}", fifo.display());
        }
        assert_eq!(s.read("c", "istio-system", "cacerts").unwrap(), Some(d));
        let mut by_hand = SecretData::new();
        by_hand.insert("ca-cert.pem".into(), b"by hand".to_vec());
        assert_eq!(
            s.read("h", "istio-system", "cacerts").unwrap(),
            Some(by_hand)
        );
    }

    #[test]
    fn parallel_runs_keep_order_and_stop_at_the_first_failure_in_order() {
        let all = try_in_parallel(1000, 4, |i| Ok::<_, usize>(i * 2)).unwrap();
        assert_eq!(all, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
        for workers in [1, 2, 8] {
            let err = try_in_parallel(1000, workers, |i| {
                if i == 700 || i == 300 { Err(i) } else { Ok(i) }
            });
            assert_eq!(err, Err(300), "{workers} workers");
        }
        assert!(try_in_parallel(0, 4, Ok::<_, ()>).unwrap().is_empty());
    }
}
