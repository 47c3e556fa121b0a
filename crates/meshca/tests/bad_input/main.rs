//! Bad input through the real binary, as a table: every command (and the gRPC API of a running
//! `meshca serve`) given broken PEM, mismatched or unfit CAs, junk policies, symlink loops,
//! non-UTF-8 names, read-only folders and a full disk. Each case runs in its own copy of one
//! shared world of generated PKI (made by `meshca certs` and the `openssl` CLI) and asserts the
//! exit code, a one-line error with its class and the file or field it names, that no key
//! material reaches the output, and that every file of its folder is byte-for-byte (and
//! mode-for-mode) as it was.
//!
//! Read-only folders and the full disk are real mounts (a read-only bind mount and a 64 KiB
//! tmpfs): root ignores file modes, so these cases need the mount privilege the test container
//! gives (they panic with a clear message where it is missing).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test setup panics on failure by design

mod files;
mod serve;
mod trust;
mod world;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use meshca_testkit::snapshot;

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

/// A command that does not give up in this long (`timeout`'s duration) has hung on bad input.
const TIMEOUT: &str = "20s";

/// How a case must fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fails {
    /// exit 1 and one line on stderr, `meshca: error: ...`
    Error,
    /// exit 1 with the failed finding on stdout (`check`, `verify`): a verdict, not an error
    Finding,
    /// exit 2 and clap's usage error, whose first line names the argument
    Usage,
}

/// What a case must print and leave.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// how it fails
    pub fails: Fails,
    /// the class of the failure: a stable word or phrase of the message
    pub class: &'static str,
    /// the file, field or argument the message names
    pub names: &'static str,
}

/// An error: exit 1, one line on stderr holding `class` and naming `names`.
pub const fn error(class: &'static str, names: &'static str) -> Expect {
    Expect {
        fails: Fails::Error,
        class,
        names,
    }
}

/// A failed check: exit 1, `class` and `names` in the findings on stdout.
pub const fn finding(class: &'static str, names: &'static str) -> Expect {
    Expect {
        fails: Fails::Finding,
        class,
        names,
    }
}

/// A usage error: exit 2, clap's message naming `names`.
pub const fn usage(class: &'static str, names: &'static str) -> Expect {
    Expect {
        fails: Fails::Usage,
        class,
        names,
    }
}

/// Something a setup leaves mounted for the run; unmounted when dropped.
pub struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount(args: &[&OsStr]) {
    let out = Command::new("mount").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "mount {args:?} failed (these cases need the mount privilege): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes `dir` (with what is in it) read-only for root too: a read-only bind mount onto itself.
pub fn read_only(dir: &Path) -> Mount {
    mount(&["--bind".as_ref(), dir.as_os_str(), dir.as_os_str()]);
    let guard = Mount(dir.to_owned());
    mount(&[
        "-o".as_ref(),
        "remount,bind,ro".as_ref(),
        dir.as_os_str(),
        dir.as_os_str(),
    ]);
    guard
}

/// Makes `dir` a 64 KiB tmpfs holding copies of `keep` (files of `from`), then fills what is
/// left of it with `filler`: a disk with no room for anything new.
pub fn full_disk(dir: &Path, from: &Path, keep: &[&str]) -> Mount {
    fs::create_dir_all(dir).unwrap();
    mount(&[
        "-t".as_ref(),
        "tmpfs".as_ref(),
        "-o".as_ref(),
        "size=64k".as_ref(),
        "tmpfs".as_ref(),
        dir.as_os_str(),
    ]);
    let guard = Mount(dir.to_owned());
    for f in keep {
        let to = dir.join(f);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(from.join(f), &to).unwrap();
    }
    let mut filler = fs::File::create(dir.join("filler")).unwrap();
    let block = [0u8; 4096];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    drop(filler);
    guard
}

/// A setup's leftovers that must outlive the run.
pub type Guard = Option<Mount>;

/// One row of the table.
pub struct Case {
    /// what is wrong, as a name
    pub name: &'static str,
    /// breaks the case's copy of the world; may mount something
    pub setup: Box<dyn Fn(&Path) -> Guard + Send + Sync>,
    /// the command line, without `meshca`
    pub args: Vec<OsString>,
    /// extra environment
    pub env: Vec<(&'static str, &'static str)>,
    /// how it must fail
    pub expect: Expect,
    /// a folder meshca keeps a cache in, which the command may rewrite
    pub may_change: Option<&'static str>,
}

impl Case {
    /// A case whose folder is the world as it is.
    pub fn new(name: &'static str, args: &[&str], expect: Expect) -> Self {
        Case {
            name,
            setup: Box::new(|_| None),
            args: args.iter().map(OsString::from).collect(),
            env: Vec::new(),
            expect,
            may_change: None,
        }
    }

    /// Runs `setup` on the case's copy of the world first.
    pub fn setup(mut self, setup: impl Fn(&Path) -> Guard + Send + Sync + 'static) -> Self {
        self.setup = Box::new(setup);
        self
    }

    /// Adds environment variables.
    pub fn env(mut self, env: &[(&'static str, &'static str)]) -> Self {
        self.env.extend_from_slice(env);
        self
    }

    /// Lets the command change what is below `dir`, a cache of meshca's own.
    pub fn may_change(mut self, dir: &'static str) -> Self {
        self.may_change = Some(dir);
        self
    }

    /// Replaces argument `i` with raw bytes (a non-UTF-8 name).
    pub fn arg_bytes(mut self, i: usize, bytes: &[u8]) -> Self {
        self.args[i] = OsStr::from_bytes(bytes).to_owned();
        self
    }
}

/// The finished command.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs meshca in `dir` with output to files outside it, under `timeout`: a command that hangs
/// on bad input is killed and fails its case with exit 124.
fn run(dir: &Path, args: &[OsString], env: &[(&str, &str)]) -> Outcome {
    let out_dir = tempfile::tempdir().unwrap();
    let (o, e) = (out_dir.path().join("out"), out_dir.path().join("err"));
    let status = Command::new("timeout")
        .args(["-k", "5", TIMEOUT])
        .arg(MESHCA)
        .current_dir(dir)
        .args(args)
        .env("MESHCA_LOG", "warn")
        .envs(world::FAST.iter().copied())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&o).unwrap())
        .stderr(fs::File::create(&e).unwrap())
        .status()
        .unwrap();
    let read = |p: &Path| {
        let mut s = Vec::new();
        fs::File::open(p).unwrap().read_to_end(&mut s).unwrap();
        String::from_utf8_lossy(&s).into_owned()
    };
    Outcome {
        code: status.code().unwrap_or(-1),
        stdout: read(&o),
        stderr: read(&e),
    }
}

/// The lines of every private key's body in `snap`: none may appear in any output.
fn key_lines(snap: &std::collections::BTreeMap<PathBuf, (Vec<u8>, u32)>) -> Vec<String> {
    snap.values()
        .filter_map(|(bytes, _)| std::str::from_utf8(bytes).ok())
        .filter(|t| t.contains("PRIVATE KEY-----"))
        .flat_map(|t| {
            t.lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What is wrong with how `out` failed, if anything.
fn judge(expect: &Expect, out: &Outcome) -> Vec<String> {
    let mut wrong = Vec::new();
    let (code, text) = match expect.fails {
        Fails::Error => (1, out.stderr.as_str()),
        Fails::Finding => (1, out.stdout.as_str()),
        Fails::Usage => (2, out.stderr.as_str()),
    };
    if out.code != code {
        wrong.push(format!("exit code {} instead of {code}", out.code));
    }
    if out.stderr.contains("panicked") {
        wrong.push("panicked".to_owned());
    }
    match expect.fails {
        Fails::Error => {
            let lines: Vec<&str> = out.stderr.lines().collect();
            if lines.len() != 1 {
                wrong.push(format!(
                    "{} lines on stderr instead of one error line",
                    lines.len()
                ));
            }
            if !out.stderr.starts_with("meshca: error: ") {
                wrong.push("stderr does not start with `meshca: error: `".to_owned());
            }
        }
        Fails::Finding => {
            if !out.stderr.trim().is_empty() {
                wrong.push("a finding came with text on stderr".to_owned());
            }
        }
        Fails::Usage => {
            if !out.stderr.starts_with("error: ") {
                wrong.push("not clap's usage error".to_owned());
            }
        }
    }
    if !text.contains(expect.class) {
        wrong.push(format!("class {:?} missing", expect.class));
    }
    if !text.contains(expect.names) {
        wrong.push(format!("{:?} not named", expect.names));
    }
    wrong
}

/// Runs every case in its own copy of the world, a few at a time; panics with every case that
/// went wrong.
pub fn run_table(cases: Vec<Case>) {
    let world = world::world();
    let count = cases.len();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    if let Some(f) = run_case(world, case) {
                        failures.lock().unwrap().push(f);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {count} cases went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Cases run side by side in one table: most of a case is waiting for a process or the disk.
const WORKERS: usize = 4;

/// Runs one case; what went wrong, if anything.
fn run_case(world: &Path, case: &Case) -> Option<String> {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    world::copy_tree(world, dir);
    let guard = (case.setup)(dir);
    let before = snapshot(dir);
    let out = run(dir, &case.args, &case.env);
    let mut wrong = judge(&case.expect, &out);
    let after = snapshot(dir);
    let cache = |p: &&PathBuf| case.may_change.is_none_or(|c| !p.starts_with(c));
    wrong.extend(changes(&before, &after, cache));
    for line in key_lines(&before) {
        if out.stdout.contains(&line) || out.stderr.contains(&line) {
            wrong.push("key material in the output".to_owned());
            break;
        }
    }
    drop(guard);
    (!wrong.is_empty()).then(|| {
        format!(
            "{}: {}\n  args: {:?}\n  exit {}\n  stdout: {}\n  stderr: {}",
            case.name,
            wrong.join("; "),
            case.args,
            out.code,
            out.stdout.trim_end().replace('\n', "\n          "),
            out.stderr.trim_end().replace('\n', "\n          ")
        )
    })
}

/// Every file added, removed or changed (contents or mode) between two snapshots.
pub fn changes(
    before: &std::collections::BTreeMap<PathBuf, (Vec<u8>, u32)>,
    after: &std::collections::BTreeMap<PathBuf, (Vec<u8>, u32)>,
    compared: impl Fn(&&PathBuf) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for (p, v) in before.iter().filter(|(p, _)| compared(p)) {
        match after.get(p) {
            None => out.push(format!("{} removed", p.display())),
            Some(a) if a.0 != v.0 => out.push(format!("{} changed", p.display())),
            Some(a) if a.1 != v.1 => out.push(format!("{} changed mode", p.display())),
            Some(_) => {}
        }
    }
    for p in after
        .keys()
        .filter(|p| compared(p) && !before.contains_key(*p))
    {
        out.push(format!("{} added", p.display()));
    }
    out
}

/// `&[&str]` to arguments, for cases built at run time.
pub fn args(a: &[&str]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

#[test]
fn files_certs_secret_inspect_check_verify_token() {
    run_table(files::cases());
}

#[test]
fn trust_policies_and_stores() {
    run_table(trust::cases());
}

#[test]
fn serve_refusals_grpc_requests_and_agent() {
    serve::run();
}
