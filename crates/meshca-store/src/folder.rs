//! Clusters as folders: `<root>/<cluster>/<namespace>/<secret>/<key>`, the layout a Kubernetes
//! secret volume has, so `meshca serve --cacerts <root>/cluster1/istio-system/cacerts` reads what
//! the trust manager writes. A secret is replaced whole, as the kubelet does it: the keys are
//! written into a new hidden folder, a `..data` symlink is swapped to it in one rename, and each
//! key is a symlink through `..data`. A reader never sees half of an update, and the `..data`
//! target is the secret's [`Version`].
//!
//! Many secrets written together ([`SecretStore::write_all`]) share the wait for the disk: every
//! secret's new files and folder are written first, and reach the disk before any `..data` swap
//! (the commit point); the swapped folders reach it after the swaps; old data folders are removed
//! last. A few secrets are synced file by file; a large batch is flushed with one `syncfs` per
//! file system before and one after the swaps, which costs the disk one flush instead of
//! thousands.
//!
//! A write's precondition is checked against the `..data` link just before the swap. The folder
//! store serves one manager at a time (the embedded default); the check catches a change made
//! since the manager read the secret, not two writers racing inside the same instant.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::StoreError;
use crate::parallel::in_parallel;
use crate::secrets::{Expect, Secret, SecretData, SecretKey, SecretStore, SecretWrite, Version};

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

    /// The folder of the secret `key`.
    pub fn dir_of(&self, key: &SecretKey) -> PathBuf {
        self.secret_dir(&key.cluster, &key.namespace, &key.name)
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

    fn get(&self, key: &SecretKey) -> Result<Option<Secret>, StoreError> {
        let dir = self.dir_of(key);
        // A secret written by a `..data` swap is read from the data folder the link names: every
        // key from one version, even while a writer swaps it (and removes the old folder, in
        // which case the new one is read).
        for _ in 0..3 {
            let Some(target) = data_link(&dir)? else {
                break;
            };
            match read_folder(&dir.join(&target), false)? {
                Some(data) => {
                    return Ok(Some(Secret {
                        data,
                        version: Version::new(target),
                    }));
                }
                None => continue,
            }
        }
        // A folder made by hand, without the link: each key as it is. One without keys is
        // absent, as the write's precondition sees it: a first write killed before its swap
        // leaves just that (its staged folder), and the next write must not expect it.
        Ok(read_folder(&dir, true)?
            .filter(|d| !d.is_empty())
            .map(|data| Secret {
                version: Version::of_contents(&data),
                data,
            }))
    }

    /// Replaces a secret whole with `data` by a `..data` symlink swap.
    fn write(
        &self,
        key: &SecretKey,
        data: &SecretData,
        expect: &Expect,
    ) -> Result<Version, StoreError> {
        let mut out = self.write_all(&[SecretWrite { key, data, expect }]);
        out.pop().unwrap_or_else(|| {
            Err(StoreError::Conflict {
                path: self.dir_of(key),
                reason: "the write was not made".to_owned(),
            })
        })
    }

    /// Replaces secrets by `..data` swaps, syncing them together: every new file and its folder
    /// reaches the disk before any swap, and every swapped folder (and any folder made for it)
    /// after the swaps, before this returns. A crash leaves each secret old or new, never half.
    /// A secret that cannot be written, or whose precondition fails, does not stop the others.
    fn write_all(&self, writes: &[SecretWrite<'_>]) -> Vec<Result<Version, StoreError>> {
        let whole_fs = writes.len() >= SYNCFS_BATCH;
        // The file systems are opened before anything is written: `syncfs` reports the write
        // errors of its file system since its handle was opened (Linux 5.8 and later).
        let file_systems = if whole_fs {
            match self.file_systems(writes) {
                Ok(f) => f,
                Err(e) => return writes.iter().map(|_| Err(again(&e))).collect(),
            }
        } else {
            Vec::new()
        };
        let mut results: Vec<Option<Result<Version, StoreError>>> =
            writes.iter().map(|_| None).collect();
        let staged = in_parallel(
            writes.len(),
            if whole_fs { FS_WORKERS } else { SYNC_WORKERS },
            |_| false,
            |i| self.stage(&writes[i], !whole_fs),
        );
        let mut ready = Vec::with_capacity(staged.len());
        for (i, s) in staged.into_iter().enumerate() {
            match s {
                Ok(s) => ready.push((i, s)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if whole_fs && let Err(e) = sync_file_systems(&file_systems) {
            // Nothing staged is known to be on the disk: refused before any swap.
            for (i, s) in &ready {
                s.discard();
                results[*i] = Some(Err(again(&e)));
            }
            ready.clear();
        }
        // Swaps of different secrets are independent and go on several threads; two writes of
        // one secret share its `..data_tmp`, so a batch holding any goes one by one, in order.
        let mut distinct: Vec<&Path> = ready.iter().map(|(_, s)| s.dir.as_path()).collect();
        distinct.sort();
        distinct.dedup();
        let workers = if distinct.len() == ready.len() {
            FS_WORKERS
        } else {
            1
        };
        let swaps = in_parallel(
            ready.len(),
            workers,
            |_| false,
            |j| {
                let (i, s) = &ready[j];
                s.commit(writes[*i].data, writes[*i].expect)
            },
        );
        let mut committed = Vec::with_capacity(ready.len());
        for ((i, s), swap) in ready.iter().zip(swaps) {
            match swap {
                Ok((old, links)) => {
                    // Swapped: synced and cleaned up like the others, even if a key's link
                    // could not be made (that is still reported).
                    results[*i] = Some(links.map(|()| Version::new(s.stamp.clone())));
                    committed.push((*i, s, old));
                }
                Err(e) => results[*i] = Some(Err(e)),
            }
        }
        let mut dirs: Vec<&Path> = committed
            .iter()
            .flat_map(|(_, s, _)| s.dirs_after.iter().map(PathBuf::as_path))
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
        if let Err(e) = synced {
            for (i, _, _) in &committed {
                if matches!(results[*i], Some(Ok(_))) {
                    results[*i] = Some(Err(again(&e)));
                }
            }
        }
        // Old data folders go last, when nothing points at them any more.
        let olds: Vec<PathBuf> = committed
            .iter()
            .filter_map(|(_, s, old)| old.as_ref().map(|o| s.dir.join(o)))
            .collect();
        in_parallel(
            olds.len(),
            FS_WORKERS,
            |_| false,
            |i| {
                let _ = fs::remove_dir_all(&olds[i]);
            },
        );
        results
            .into_iter()
            .zip(writes)
            .map(|(r, w)| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Conflict {
                        path: self.dir_of(w.key),
                        reason: "the write was not made".to_owned(),
                    })
                })
            })
            .collect()
    }

    fn describe(&self, key: &SecretKey) -> String {
        self.dir_of(key).display().to_string()
    }

    /// The `..data` link's target: every write swaps it. Folders made by hand, without the
    /// link, fall back to hashing the contents.
    fn version(&self, key: &SecretKey) -> Result<Option<Version>, StoreError> {
        match data_link(&self.dir_of(key))? {
            Some(target) => Ok(Some(Version::new(target))),
            None => Ok(self.get(key)?.map(|s| s.version)),
        }
    }
}

/// The `..data` link's target in a secret's folder; `None` if there is no link.
fn data_link(dir: &Path) -> Result<Option<String>, StoreError> {
    match fs::read_link(dir.join("..data")) {
        Ok(t) => Ok(Some(t.to_string_lossy().into_owned())),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::InvalidInput
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(io(&dir.join("..data"), "cannot read")(e)),
    }
}

/// The same failure again, for each write of a batch that one failure stopped.
fn again(e: &StoreError) -> StoreError {
    match e {
        StoreError::Io { path, what, source } => StoreError::Io {
            path: path.clone(),
            what,
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => StoreError::Conflict {
            path: PathBuf::new(),
            reason: other.to_string(),
        },
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
            let secret = self.dir_of(w.key);
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
        stage_dir(self.dir_of(w.key), w.data, sync)
    }
}

/// Writes a folder's keys into a new hidden folder beside its `..data`, and with `sync` syncs
/// each, then the folder: nothing points at them yet.
fn stage_dir(dir: PathBuf, data: &SecretData, sync: bool) -> Result<Staged, StoreError> {
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
    // The stamp is the secret's next version: the time makes it unique across processes
    // (a pid can come back), the counter within one.
    let stamp = new_stamp();
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
    fn commit(&self, data: &SecretData, expect: &Expect) -> Result<Swapped, StoreError> {
        let dir = &self.dir;
        let found = match found_version(dir) {
            Ok(f) => f,
            Err(e) => {
                self.discard();
                return Err(e);
            }
        };
        if !expect.is_met_by(found.as_ref()) {
            self.discard();
            return Err(StoreError::VersionConflict {
                key: dir.display().to_string(),
                expected: expect.to_string(),
                found: found.map_or_else(|| "absent".to_owned(), |v| format!("version {v}")),
            });
        }
        if let Err(e) = adopt_plain_keys(dir) {
            self.discard();
            return Err(e);
        }
        // Every key's link exists before the swap (dangling until then for a new key), so that
        // a writer killed right after the swap leaves no key missing for readers of the folder.
        for key in data.keys() {
            let link = dir.join(key);
            if fs::symlink_metadata(&link).is_err()
                && let Err(e) = symlink(format!("..data/{key}"), &link)
            {
                self.discard();
                return Err(io(&link, "cannot link")(e));
            }
        }
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
            for e in fs::read_dir(dir).map_err(io(dir, "cannot list"))?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && !data.contains_key(&name) {
                    // A key the new data no longer has.
                    let _ = fs::remove_file(e.path());
                } else if name != self.stamp
                    && stamp_age(&name).is_some_and(|age| age > ABANDONED_AFTER)
                {
                    // The staged folder of a write killed before its swap: no writer still
                    // working could have staged it that long ago.
                    let _ = fs::remove_dir_all(e.path());
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

/// How old a data folder that `..data` does not name must be to count as abandoned by a writer
/// killed before its swap. A write stages and swaps within seconds.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// How long ago the data folder `name` (from [`new_stamp`]) was made; `None` for any other name.
fn stamp_age(name: &str) -> Option<std::time::Duration> {
    let (nanos, rest) = name.strip_prefix("..")?.split_once('_')?;
    let (pid, n) = rest.split_once('_')?;
    if !pid.bytes().all(|b| b.is_ascii_digit()) || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let made = std::time::UNIX_EPOCH
        + std::time::Duration::from_nanos(
            u64::try_from(u128::from_str_radix(nanos, 16).ok()?).ok()?,
        );
    std::time::SystemTime::now().duration_since(made).ok()
}

/// A new data folder's name, unique across processes (the time: a pid can come back) and
/// within one (the counter).
fn new_stamp() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "..{nanos:x}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The version a folder holds: its `..data` target, or for a folder made by hand the digest of
/// its keys; `None` without keys.
fn found_version(dir: &Path) -> Result<Option<Version>, StoreError> {
    match data_link(dir)? {
        Some(t) => Ok(Some(Version::new(t))),
        None => Ok(read_folder(dir, true)?
            .filter(|d| !d.is_empty())
            .map(|d| Version::of_contents(&d))),
    }
}

/// Turns keys held as plain files (a folder made by hand, or by a writer that replaced files one
/// by one) into links through a `..data` holding the same bytes, before a swap: every step shows
/// one version of every key, and the swap then changes them all at once. A plain key whose bytes
/// differ from `..data`'s is left as it is.
fn adopt_plain_keys(dir: &Path) -> Result<(), StoreError> {
    let mut plain = Vec::new();
    for e in fs::read_dir(dir).map_err(io(dir, "cannot list"))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && e.file_type().is_ok_and(|t| t.is_file()) {
            plain.push(name);
        }
    }
    if plain.is_empty() {
        return Ok(());
    }
    let data = match data_link(dir)? {
        Some(t) => dir.join(t),
        None => {
            let mut copy = SecretData::new();
            for name in &plain {
                let path = dir.join(name);
                copy.insert(
                    name.clone(),
                    fs::read(&path).map_err(io(&path, "cannot read"))?,
                );
            }
            let staged = stage_dir(dir.to_owned(), &copy, true)?;
            let tmp_link = dir.join("..data_tmp");
            let _ = fs::remove_file(&tmp_link);
            symlink(&staged.stamp, &tmp_link).map_err(io(&tmp_link, "cannot link"))?;
            fs::rename(&tmp_link, dir.join("..data")).map_err(io(dir, "cannot swap"))?;
            dir.join(&staged.stamp)
        }
    };
    for name in plain {
        let path = dir.join(&name);
        if fs::read(data.join(&name)).ok() != fs::read(&path).ok() {
            continue;
        }
        let tmp = dir.join(format!(".{name}.meshca-link"));
        let _ = fs::remove_file(&tmp);
        symlink(format!("..data/{name}"), &tmp).map_err(io(&tmp, "cannot link"))?;
        fs::rename(&tmp, &path).map_err(io(&path, "cannot replace"))?;
    }
    sync_path(dir)
}

/// Replaces the keys of one folder whole, outside any store, the way a secret volume is
/// updated: the new files are written and synced into a hidden folder, then a `..data` link is
/// swapped to it in one rename, each key a link through `..data`. A reader, or a writer killed
/// at any moment, sees the old set or the new one, never a key of one and a key of the other.
/// Keys held as plain files are first turned into links holding the same bytes.
pub fn replace_folder(dir: &Path, data: &SecretData) -> Result<(), StoreError> {
    let expect = match found_version(dir)? {
        Some(v) => Expect::Version(v),
        None => Expect::Absent,
    };
    let staged = stage_dir(dir.to_owned(), data, true)?;
    let (old, links) = staged.commit(data, &expect)?;
    for d in &staged.dirs_after {
        sync_path(d)?;
    }
    if let Some(o) = old {
        let _ = fs::remove_dir_all(dir.join(o));
    }
    links
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key(cluster: &str) -> SecretKey {
        SecretKey::new(cluster, "istio-system", "cacerts")
    }

    /// What a writer that has just read the secret expects.
    fn current(s: &FolderStore, cluster: &str) -> Expect {
        Expect::from_read(s.get(&key(cluster)).unwrap().as_ref())
    }

    #[test]
    fn secrets_are_swapped_whole_through_data() {
        let t = tempfile::tempdir().unwrap();
        let s = FolderStore::open(t.path()).unwrap();
        assert!(s.read(&key("c1")).unwrap().is_none());
        let mut v1 = SecretData::new();
        v1.insert("ca-cert.pem".into(), b"one".to_vec());
        v1.insert("ca-key.pem".into(), b"k1".to_vec());
        s.write(&key("c1"), &v1, &current(&s, "c1")).unwrap();
        assert_eq!(s.read(&key("c1")).unwrap().unwrap(), v1);
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
        s.write(&key("c1"), &v2, &current(&s, "c1")).unwrap();
        assert_eq!(s.read(&key("c1")).unwrap().unwrap(), v2);
        let hidden: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != "..data")
            .collect();
        assert_eq!(hidden.len(), 1, "old data folders are removed: {hidden:?}");
        assert_eq!(s.clusters().unwrap(), ["c1"]);
    }

    #[test]
    fn a_write_removes_data_folders_abandoned_by_killed_writers_and_keeps_recent_ones() {
        let t = tempfile::tempdir().unwrap();
        let s = FolderStore::open(t.path()).unwrap();
        let dir = s.secret_dir("c1", "istio-system", "cacerts");
        let mut v = SecretData::new();
        v.insert("ca-cert.pem".into(), b"one".to_vec());
        s.write(&key("c1"), &v, &current(&s, "c1")).unwrap();
        // Two writers killed before their swaps: one two hours ago, one a moment ago (it may
        // still be working); and a folder of another name, not meshca's to remove.
        let stamp = |ago: std::time::Duration| {
            let t = std::time::SystemTime::now() - ago;
            let nanos = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            format!("..{nanos:x}_4242_0")
        };
        let (old, recent) = (
            stamp(std::time::Duration::from_secs(7200)),
            stamp(std::time::Duration::from_secs(5)),
        );
        for d in [old.as_str(), recent.as_str(), "..not-a-stamp"] {
            fs::create_dir_all(dir.join(d)).unwrap();
            fs::write(dir.join(d).join("ca-cert.pem"), b"staged").unwrap();
        }
        v.insert("ca-cert.pem".into(), b"two".to_vec());
        s.write(&key("c1"), &v, &current(&s, "c1")).unwrap();
        assert_eq!(s.read(&key("c1")).unwrap().unwrap(), v);
        assert!(
            !dir.join(&old).exists(),
            "an abandoned data folder is removed"
        );
        assert!(
            dir.join(&recent).exists(),
            "a recent one may be a writer's at work"
        );
        assert!(dir.join("..not-a-stamp").exists());
        assert_eq!(stamp_age("..data"), None);
        assert_eq!(stamp_age("..zz_1_0"), None);
    }

    #[test]
    fn a_first_write_killed_before_its_swap_leaves_the_secret_absent_and_writable() {
        let t = tempfile::tempdir().unwrap();
        let s = FolderStore::open(t.path()).unwrap();
        // What a writer killed between staging and swapping leaves: a data folder, no `..data`.
        let dir = s.secret_dir("c1", "istio-system", "cacerts");
        fs::create_dir_all(dir.join("..18f0_1_0")).unwrap();
        fs::write(dir.join("..18f0_1_0/ca-cert.pem"), b"staged").unwrap();
        assert!(s.get(&key("c1")).unwrap().is_none());
        let mut v = SecretData::new();
        v.insert("ca-cert.pem".into(), b"one".to_vec());
        s.write(&key("c1"), &v, &current(&s, "c1")).unwrap();
        assert_eq!(s.read(&key("c1")).unwrap().unwrap(), v);
        assert_eq!(fs::read(dir.join("ca-cert.pem")).unwrap(), b"one");
    }

    #[test]
    fn a_folder_of_plain_files_is_replaced_whole_through_data() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("certs");
        fs::create_dir(&dir).unwrap();
        // As a writer that renamed files one by one left them.
        fs::write(dir.join("cert-chain.pem"), b"old chain").unwrap();
        fs::write(dir.join("key.pem"), b"old key").unwrap();
        let mut v = SecretData::new();
        v.insert("cert-chain.pem".into(), b"new chain".to_vec());
        v.insert("key.pem".into(), b"new key".to_vec());
        v.insert("root-cert.pem".into(), b"roots".to_vec());
        replace_folder(&dir, &v).unwrap();
        for (k, bytes) in &v {
            let link = fs::symlink_metadata(dir.join(k)).unwrap();
            assert!(link.file_type().is_symlink(), "{k}");
            assert_eq!(&fs::read(dir.join(k)).unwrap(), bytes, "{k}");
        }
        assert_eq!(
            fs::metadata(dir.join("key.pem"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // Only `..data` and the folder it names: the adopted copy is gone.
        assert_eq!(hidden(&dir).len(), 2, "{:?}", hidden(&dir));
        let mut w = v.clone();
        w.insert("cert-chain.pem".into(), b"newer chain".to_vec());
        replace_folder(&dir, &w).unwrap();
        assert_eq!(
            fs::read(dir.join("cert-chain.pem")).unwrap(),
            b"newer chain"
        );
        assert_eq!(hidden(&dir).len(), 2, "{:?}", hidden(&dir));
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
        let keys: Vec<SecretKey> = ["a", "b", "c"].into_iter().map(key).collect();
        let pads: Vec<SecretKey> = (0..pad).map(|i| key(&format!("p{i:02}"))).collect();
        let (a1, b1, p1) = (data("a1"), data("b1"), data("p1"));
        let absent = Expect::Absent;
        let w = |key, data, expect| SecretWrite { key, data, expect };
        let mut batch = vec![w(&keys[0], &a1, &absent), w(&keys[1], &b1, &absent)];
        batch.extend(pads.iter().map(|k| w(k, &p1, &absent)));
        let versions: Vec<Version> = s
            .write_all(&batch)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        let holds = |k: &SecretKey, data: &SecretData| {
            assert_eq!(s.read(k).unwrap().as_ref(), Some(data), "{k}");
        };
        holds(&keys[0], &a1);
        holds(&keys[1], &b1);
        pads.iter().for_each(|k| holds(k, &p1));
        assert_eq!(s.version(&keys[0]).unwrap().as_ref(), Some(&versions[0]));
        let dir_a = s.dir_of(&keys[0]);
        assert_eq!(hidden(&dir_a).len(), 2, "..data and one data folder");
        let key_file = dir_a.join("ca-key.pem");
        let mode = fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key_file.display());

        // Two writes of one secret read at one version: the first lands, the second is a
        // conflict, in batch order.
        let (a2, a3) = (data("a2"), data("a3"));
        let read_a = Expect::Version(versions[0].clone());
        let r = s.write_all(&[w(&keys[0], &a2, &read_a), w(&keys[0], &a3, &read_a)]);
        assert!(r[0].is_ok(), "{:?}", r[0]);
        assert!(r[1].as_ref().unwrap_err().is_conflict(), "{:?}", r[1]);
        holds(&keys[0], &a2);

        // A stale precondition and an unwritable key fail alone; the other writes land.
        let mut bad = data("a4");
        bad.insert("no/such/folder".into(), b"x".to_vec());
        let (b2, c1, p2) = (data("b2"), data("c1"), data("p2"));
        let before = hidden(&dir_a);
        let now_a = current(&s, "a");
        let expects: Vec<Expect> = versions[2..].iter().cloned().map(Expect::Version).collect();
        let mut batch = vec![
            w(&keys[1], &b2, &absent),
            w(&keys[2], &c1, &absent),
            w(&keys[0], &bad, &now_a),
        ];
        batch.extend(pads.iter().zip(&expects).map(|(k, e)| w(k, &p2, e)));
        let r = s.write_all(&batch);
        assert!(r[0].as_ref().unwrap_err().is_conflict(), "{:?}", r[0]);
        assert!(r[1].is_ok() && r[3..].iter().all(Result::is_ok), "{r:?}");
        assert!(matches!(r[2], Err(StoreError::Io { .. })), "{:?}", r[2]);
        holds(&keys[0], &a2);
        holds(&keys[1], &b1);
        holds(&keys[2], &c1);
        pads.iter().for_each(|k| holds(k, &p2));
        assert_eq!(
            hidden(&dir_a),
            before,
            "the refused staged folder is removed"
        );
        let dir_b = s.dir_of(&keys[1]);
        assert_eq!(
            hidden(&dir_b).len(),
            2,
            "the refused one's staged folder is removed"
        );
    }

    #[test]
    fn a_fifo_or_folder_among_the_keys_is_skipped_not_waited_on() {
        let t = tempfile::tempdir().unwrap();
        let s = FolderStore::open(t.path()).unwrap();
        let mut d = SecretData::new();
        d.insert("ca-cert.pem".into(), b"cert".to_vec());
        s.write(&key("c"), &d, &current(&s, "c")).unwrap();
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
        assert_eq!(s.read(&key("c")).unwrap(), Some(d));
        let mut by_hand = SecretData::new();
        by_hand.insert("ca-cert.pem".into(), b"by hand".to_vec());
        assert_eq!(s.read(&key("h")).unwrap(), Some(by_hand));
    }
}
