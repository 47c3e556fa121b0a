//! Atomic, private writes of file sets.
//!
//! A [`Transaction`] stages every file of every folder it touches under temporary names first
//! (all the work that can fail: creating, writing, syncing), then moves them into place. A folder
//! that does not exist yet is built whole under a temporary name and renamed in one step, so it
//! appears with all its files at once. Files replaced in an existing folder are renamed over the
//! old ones after the old ones were linked aside; if any step fails, everything already moved is
//! put back, so a failed transaction leaves every folder as it was.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use meshca_pki::BundleFiles;

use crate::error::StoreError;

/// One file to write.
pub struct FileSpec {
    name: String,
    contents: Vec<u8>,
    private: bool,
}

impl FileSpec {
    /// A file readable by everyone (mode 0644): certificates.
    pub fn public(name: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        FileSpec {
            name: name.into(),
            contents: contents.into(),
            private: false,
        }
    }

    /// A file readable by its owner only (mode 0600): private keys.
    pub fn private(name: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        FileSpec {
            name: name.into(),
            contents: contents.into(),
            private: true,
        }
    }

    /// The file's name inside its folder.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print contents: they may be a private key.
        write!(
            f,
            "FileSpec({}, {} bytes, private: {})",
            self.name,
            self.contents.len(),
            self.private
        )
    }
}

/// A set of folder writes that happen all together or not at all.
#[derive(Debug, Default)]
pub struct Transaction {
    writes: Vec<(PathBuf, Vec<FileSpec>)>,
    #[cfg(test)]
    fail_after_moves: Option<usize>,
}

enum Staged {
    NewDir { tmp: PathBuf, dest: PathBuf },
    Files { moves: Vec<Move> },
}

struct Move {
    tmp: PathBuf,
    dest: PathBuf,
    backup: PathBuf,
    replaced: bool,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds files to write into `dir`. The folder's parent must exist; the folder itself is
    /// created if needed.
    pub fn write(&mut self, dir: impl Into<PathBuf>, files: Vec<FileSpec>) {
        self.writes.push((dir.into(), files));
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.writes.iter().all(|(_, f)| f.is_empty())
    }

    /// Writes everything, or nothing.
    pub fn commit(self) -> Result<(), StoreError> {
        let mut staged = Vec::new();
        for (dir, files) in &self.writes {
            match stage(dir, files) {
                Ok(s) => staged.push(s),
                Err(e) => {
                    discard(&staged);
                    return Err(e);
                }
            }
        }
        let mut moves_done = 0usize;
        for i in 0..staged.len() {
            #[cfg(test)]
            let limit = self.fail_after_moves;
            #[cfg(not(test))]
            let limit: Option<usize> = None;
            if let Err(e) = apply(&mut staged[i], &mut moves_done, limit) {
                for s in staged[..=i].iter().rev() {
                    roll_back(s);
                }
                discard(&staged);
                return Err(e);
            }
        }
        for s in &staged {
            finish(s);
        }
        Ok(())
    }
}

fn stage(dir: &Path, files: &[FileSpec]) -> Result<Staged, StoreError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(m) if m.file_type().is_symlink() && dir.is_dir() => {}
        Ok(_) => {
            return Err(StoreError::Conflict {
                path: dir.to_owned(),
                reason: "exists and is not a folder".to_owned(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            };
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = parent.join(format!(".{name}.meshca-tmp-{}", unique_suffix()));
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&tmp)
                .map_err(StoreError::io(&parent, "cannot create a folder in"))?;
            for f in files {
                if let Err(e) = write_new(&tmp.join(&f.name), f, &dir.join(&f.name)) {
                    let _ = fs::remove_dir_all(&tmp);
                    return Err(e);
                }
            }
            sync_dir(&tmp);
            return Ok(Staged::NewDir {
                tmp,
                dest: dir.to_owned(),
            });
        }
        Err(e) => return Err(StoreError::io(dir, "cannot read")(e)),
    }
    let mut moves = Vec::with_capacity(files.len());
    for f in files {
        let dest = dir.join(&f.name);
        let suffix = unique_suffix();
        let tmp = dir.join(format!(".{}.meshca-tmp-{suffix}", f.name));
        let backup = dir.join(format!(".{}.meshca-old-{suffix}", f.name));
        if let Err(e) = write_new(&tmp, f, &dest) {
            discard(&[Staged::Files { moves }]);
            return Err(e);
        }
        moves.push(Move {
            tmp,
            dest,
            backup,
            replaced: false,
        });
    }
    Ok(Staged::Files { moves })
}

fn write_new(path: &Path, f: &FileSpec, shown_as: &Path) -> Result<(), StoreError> {
    let mode = if f.private { 0o600 } else { 0o644 };
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(StoreError::io(shown_as, "cannot write"))?;
    let written = file.write_all(&f.contents).and_then(|()| file.sync_all());
    if written.is_err() {
        // A full disk fails here, after the file was made: leave no half-written file behind.
        let _ = fs::remove_file(path);
    }
    written.map_err(StoreError::io(shown_as, "cannot write"))
}

fn apply(
    s: &mut Staged,
    moves_done: &mut usize,
    fail_after: Option<usize>,
) -> Result<(), StoreError> {
    let step = |moves_done: &mut usize| -> Result<(), StoreError> {
        if fail_after.is_some_and(|n| *moves_done >= n) {
            return Err(StoreError::Conflict {
                path: PathBuf::from("<test>"),
                reason: "injected failure".to_owned(),
            });
        }
        *moves_done += 1;
        Ok(())
    };
    match s {
        Staged::NewDir { tmp, dest } => {
            step(moves_done)?;
            if fs::symlink_metadata(&*dest).is_ok() {
                return Err(StoreError::Conflict {
                    path: dest.clone(),
                    reason: "appeared while writing; nothing was changed".to_owned(),
                });
            }
            fs::rename(&*tmp, &*dest).map_err(StoreError::io(dest.clone(), "cannot create"))?;
            if let Some(parent) = dest.parent() {
                sync_dir(parent);
            }
        }
        Staged::Files { moves } => {
            for m in moves.iter_mut() {
                step(moves_done)?;
                match fs::hard_link(&m.dest, &m.backup) {
                    Ok(()) => m.replaced = true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StoreError::io(m.dest.clone(), "cannot keep a copy of")(e));
                    }
                }
                if let Err(e) = fs::rename(&m.tmp, &m.dest) {
                    if m.replaced {
                        let _ = fs::remove_file(&m.backup);
                        m.replaced = false;
                    }
                    return Err(StoreError::io(m.dest.clone(), "cannot replace")(e));
                }
                // Marks the move as done for roll_back: tmp no longer exists.
                m.tmp = PathBuf::new();
            }
            if let Some(parent) = moves.first().and_then(|m| m.dest.parent()) {
                sync_dir(parent);
            }
        }
    }
    Ok(())
}

fn roll_back(s: &Staged) {
    match s {
        Staged::NewDir { tmp, dest } => {
            if !tmp.exists() && dest.exists() {
                let _ = fs::rename(dest, tmp);
            }
        }
        Staged::Files { moves } => {
            for m in moves.iter().rev().filter(|m| m.tmp.as_os_str().is_empty()) {
                if m.replaced {
                    let _ = fs::rename(&m.backup, &m.dest);
                } else {
                    let _ = fs::remove_file(&m.dest);
                }
            }
        }
    }
}

fn discard(staged: &[Staged]) {
    for s in staged {
        match s {
            Staged::NewDir { tmp, .. } => {
                let _ = fs::remove_dir_all(tmp);
            }
            Staged::Files { moves } => {
                for m in moves {
                    if !m.tmp.as_os_str().is_empty() {
                        let _ = fs::remove_file(&m.tmp);
                    }
                    if m.replaced {
                        let _ = fs::remove_file(&m.backup);
                    }
                }
            }
        }
    }
}

fn finish(s: &Staged) {
    if let Staged::Files { moves } = s {
        for m in moves.iter().filter(|m| m.replaced) {
            let _ = fs::remove_file(&m.backup);
        }
    }
}

fn sync_dir(dir: &Path) {
    // Durability of the rename itself; failing to sync a folder is not worth failing a write for.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Reads the bundle files present in `dir` (both layouts' names and `ca-crl.pem`). Missing
/// files are simply absent from the map; the bundle check says what is missing.
pub fn read_bundle_dir(dir: &Path) -> Result<BundleFiles, StoreError> {
    use meshca_pki::bundle::{CA_CRL, Layout};
    let meta = fs::metadata(dir).map_err(StoreError::io(dir, "cannot read folder"))?;
    if !meta.is_dir() {
        return Err(StoreError::Conflict {
            path: dir.to_owned(),
            reason: "is not a folder".to_owned(),
        });
    }
    let mut files = BundleFiles::new();
    let names = Layout::Istio
        .required_files()
        .iter()
        .chain(Layout::Tls.required_files())
        .chain(std::iter::once(&CA_CRL));
    for name in names {
        let path = dir.join(name);
        match fs::read(&path) {
            Ok(bytes) => {
                files.insert((*name).to_owned(), bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(path, "cannot read")(e)),
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for e in walk(dir) {
            let rel = e
                .strip_prefix(dir)
                .unwrap_or(&e)
                .to_string_lossy()
                .into_owned();
            out.push((rel, fs::read(&e).unwrap_or_default()));
        }
        out.sort();
        out
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).expect("readable").flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push(p.clone());
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn new_folder_appears_whole_with_private_keys_0600() {
        let t = tempfile::tempdir().expect("tempdir");
        let mut tx = Transaction::new();
        tx.write(
            t.path().join("c1"),
            vec![
                FileSpec::public("cert.pem", "C"),
                FileSpec::private("key.pem", "K"),
            ],
        );
        tx.commit().expect("commit");
        assert_eq!(fs::read(t.path().join("c1/cert.pem")).expect("read"), b"C");
        let mode = |p: &str| {
            fs::metadata(t.path().join(p))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("c1/key.pem"), 0o600);
        assert_eq!(mode("c1/cert.pem"), 0o644);
        assert_eq!(walk(t.path()).len(), 3, "no temporary files left behind");
    }

    #[test]
    fn replacing_files_keeps_other_files_and_leaves_no_temporaries() {
        let t = tempfile::tempdir().expect("tempdir");
        fs::write(t.path().join("key.pem"), "old").expect("write");
        fs::write(t.path().join("notes.txt"), "mine").expect("write");
        let mut tx = Transaction::new();
        tx.write(
            t.path(),
            vec![
                FileSpec::private("key.pem", "new"),
                FileSpec::public("cert.pem", "c"),
            ],
        );
        tx.commit().expect("commit");
        assert_eq!(
            snapshot(t.path()),
            vec![
                ("cert.pem".to_owned(), b"c".to_vec()),
                ("key.pem".to_owned(), b"new".to_vec()),
                ("notes.txt".to_owned(), b"mine".to_vec()),
            ]
        );
    }

    #[test]
    fn a_failure_at_any_move_leaves_everything_as_it_was() {
        // Four moves in all: two files replaced in place, then two new folders.
        for fail_after in 0..4 {
            let t = tempfile::tempdir().expect("tempdir");
            fs::write(t.path().join("root-key.pem"), "old key").expect("write");
            fs::write(t.path().join("root-cert.pem"), "old cert").expect("write");
            let before = snapshot(t.path());
            let mut tx = Transaction::new();
            tx.write(
                t.path(),
                vec![
                    FileSpec::private("root-key.pem", "k"),
                    FileSpec::public("root-cert.pem", "c"),
                ],
            );
            tx.write(
                t.path().join("cluster1"),
                vec![FileSpec::private("ca-key.pem", "k1")],
            );
            tx.write(
                t.path().join("cluster2"),
                vec![FileSpec::private("ca-key.pem", "k2")],
            );
            tx.fail_after_moves = Some(fail_after);
            let err = tx.commit().expect_err("injected failure");
            assert!(err.to_string().contains("injected failure"));
            assert_eq!(snapshot(t.path()), before, "fail_after={fail_after}");
        }
    }

    #[test]
    fn a_file_in_the_way_of_a_folder_is_refused_before_anything_is_written() {
        let t = tempfile::tempdir().expect("tempdir");
        fs::write(t.path().join("cluster2"), "not a folder").expect("write");
        let before = snapshot(t.path());
        let mut tx = Transaction::new();
        tx.write(
            t.path().join("cluster1"),
            vec![FileSpec::private("ca-key.pem", "k1")],
        );
        tx.write(
            t.path().join("cluster2"),
            vec![FileSpec::private("ca-key.pem", "k2")],
        );
        let err = tx.commit().expect_err("conflict").to_string();
        assert!(
            err.ends_with("cluster2: exists and is not a folder"),
            "{err}"
        );
        assert_eq!(snapshot(t.path()), before);
    }

    #[test]
    fn a_missing_parent_is_an_error_naming_it() {
        let t = tempfile::tempdir().expect("tempdir");
        let mut tx = Transaction::new();
        tx.write(t.path().join("nope/c1"), vec![FileSpec::public("a", "b")]);
        let err = tx.commit().expect_err("no parent").to_string();
        assert!(err.contains("nope: cannot create a folder in"), "{err}");
    }

    #[test]
    fn debug_hides_contents() {
        let f = FileSpec::private("ca-key.pem", "SECRET");
        assert_eq!(
            format!("{f:?}"),
            "FileSpec(ca-key.pem, 6 bytes, private: true)"
        );
    }
}
