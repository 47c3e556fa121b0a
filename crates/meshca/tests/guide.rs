//! `docs/GUIDE.md` as a test: every ```sh block of the guide, in order, pasted into one
//! `bash -euo pipefail` in one scratch folder with the seeds' environment, against real
//! kube-apiservers (`mgmt`, `cluster1`, `cluster2`). A block marked `<!-- not run: reason -->`
//! is skipped (`istioctl`, pods); no such block may hold a meshca command. A ```text block
//! after a sh block is the output the guide promises: each of its lines (but `...`) must appear
//! in that block's output, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures by design

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meshca_testkit::kube::{ControlPlane, kubectl_bin};

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

/// The whole guide may take this long before every process it started is killed.
const GUIDE_TIMEOUT: Duration = Duration::from_secs(180);

/// What marks a block that the test must skip, with the reason after it.
const NOT_RUN: &str = "<!-- not run:";

/// One ```sh block of the guide.
#[derive(Debug)]
struct Block {
    /// The `## ` heading it is under ("" before the first).
    section: String,
    /// Its line in the guide (1-based), for messages.
    line: usize,
    script: String,
    /// Why it is not run, when it is marked so.
    not_run: Option<String>,
    /// The ```text block that follows it: lines its output must contain, in order.
    expected: Vec<String>,
}

fn guide_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/GUIDE.md")
}

/// The guide's sh blocks with what each one promises.
fn parse(text: &str) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut section = String::new();
    let mut last_prose = String::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.trim().to_owned();
        }
        let fence = line.trim_end();
        if fence == "```sh" || fence == "```text" {
            let mut body = String::new();
            for (_, l) in lines.by_ref() {
                if l.trim_end() == "```" {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            if fence == "```sh" {
                let not_run = last_prose
                    .strip_prefix(NOT_RUN)
                    .map(|r| r.trim_end_matches("-->").trim().to_owned());
                blocks.push(Block {
                    section: section.clone(),
                    line: i + 1,
                    script: body,
                    not_run,
                    expected: Vec::new(),
                });
            } else {
                let block = blocks.last_mut().unwrap_or_else(|| {
                    panic!("GUIDE.md:{}: a text block before any sh block", i + 1)
                });
                block.expected.extend(
                    body.lines()
                        .map(|l| l.trim().to_owned())
                        .filter(|l| !l.is_empty() && l != "..."),
                );
            }
            last_prose.clear();
        } else if !line.trim().is_empty() {
            last_prose = line.trim().to_owned();
        }
    }
    blocks
}

fn marker(n: usize) -> String {
    format!("@@guide-block-{n}@@")
}

/// The blocks to run as one script: each after a marker line, the output in one stream.
fn script(blocks: &[&Block]) -> String {
    let mut s = String::from("exec 2>&1\n");
    for (n, b) in blocks.iter().enumerate() {
        writeln!(s, "printf '\\n%s\\n' '{}'", marker(n)).unwrap();
        s.push_str(&b.script);
    }
    writeln!(s, "printf '\\n%s\\n' '{}'", marker(blocks.len())).unwrap();
    s
}

/// Kills the process group the guide's shell leads (its background jobs too) when dropped.
struct Group {
    file: PathBuf,
}

impl Drop for Group {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.file) else {
            return;
        };
        if let Some(pid) = text
            .trim()
            .parse::<i32>()
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            // Gone already is fine: the guide stops what it starts.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Each line of `expected` in `output`, in order: the index of the first that is not.
fn missing(output: &str, expected: &[String]) -> Option<usize> {
    let mut lines = output.lines();
    for (i, want) in expected.iter().enumerate() {
        if !lines.by_ref().any(|l| l.contains(want.as_str())) {
            return Some(i);
        }
    }
    None
}

#[test]
fn the_guides_commands_run_and_print_what_the_guide_says() {
    let text = std::fs::read_to_string(guide_path()).unwrap();
    let blocks = parse(&text);
    let sections: Vec<&str> = blocks
        .iter()
        .map(|b| b.section.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    for scenario in ["Plug in", "Managed intermediates", "Root rotation"] {
        assert!(
            sections.iter().any(|s| s.starts_with(scenario)),
            "no section {scenario:?} with commands in the guide: {sections:?}"
        );
    }
    for b in blocks.iter().filter(|b| b.not_run.is_some()) {
        assert!(
            !b.not_run.as_deref().unwrap_or_default().is_empty(),
            "GUIDE.md:{}: say why a block is not run",
            b.line
        );
        assert!(
            !b.script
                .lines()
                .any(|l| l.trim_start().starts_with("meshca ") || l.contains("| meshca ")),
            "GUIDE.md:{}: every meshca command must run:\n{}",
            b.line,
            b.script
        );
        assert!(
            b.expected.is_empty(),
            "GUIDE.md:{}: a block that is not run promises output",
            b.line
        );
    }
    let run: Vec<&Block> = blocks.iter().filter(|b| b.not_run.is_none()).collect();
    let skipped = blocks.len() - run.len();
    assert!(
        skipped <= 5,
        "{skipped} blocks not run: keep that for istioctl and pods"
    );

    let started = Instant::now();
    let cp = ControlPlane::mesh();
    let up = started.elapsed();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("work");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(MESHCA, bin.join("meshca")).unwrap();
    std::os::unix::fs::symlink(kubectl_bin(), bin.join("kubectl")).unwrap();
    let script_file = t.path().join("guide.sh");
    std::fs::write(&script_file, script(&run)).unwrap();
    let group = Group {
        file: t.path().join("guide.pgid"),
    };
    // `timeout` leads a process group of its own, which the guide's background jobs join; its
    // pid is this shell's, as it execs.
    let out = cp.seed_shell(
        &dir,
        &format!(
            "echo $$ > '{}'; exec timeout -k 5 {} bash -euo pipefail '{}'",
            group.file.display(),
            GUIDE_TIMEOUT.as_secs(),
            script_file.display()
        ),
    );
    let took = started.elapsed() - up;
    drop(group);
    let output = out.stdout.replace('\r', "");

    // Split the output at the markers: parts[n] is block n's.
    let mut parts: Vec<&str> = Vec::new();
    let mut rest = output.as_str();
    for n in 0..=run.len() {
        match rest.find(&marker(n)) {
            Some(at) => {
                if n > 0 {
                    parts.push(&rest[..at]);
                }
                rest = &rest[at + marker(n).len()..];
            }
            None => {
                if n > 0 {
                    parts.push(rest);
                }
                break;
            }
        }
    }
    let reached = parts.len();
    let failed = (out.code != 0).then(|| reached.saturating_sub(1));
    if let Some(n) = failed {
        let b = run[n];
        panic!(
            "GUIDE.md:{} ({}): the block exited {} after {took:?}:\n{}\n--- its output:\n{}\n--- stderr:\n{}",
            b.line,
            b.section,
            out.code,
            b.script,
            parts.get(n).copied().unwrap_or(""),
            out.stderr
        );
    }
    assert_eq!(reached, run.len(), "every block ran:\n{output}");
    for (b, part) in run.iter().zip(&parts) {
        if let Some(i) = missing(part, &b.expected) {
            panic!(
                "GUIDE.md:{} ({}): the guide says the output holds {:?}, in order; it was:\n{part}",
                b.line, b.section, b.expected[i]
            );
        }
    }
    // Where the guide leaves the clusters, read past its own commands: both hold a cacerts made by
    // meshca under the root the rotation brought in, and nothing else.
    let next_root = std::fs::read_to_string(dir.join("managed/next/root-cert.pem")).unwrap();
    for c in ["cluster1", "cluster2"] {
        let secret = |path: &str| {
            cp.kubectl_ok([
                "--context",
                c,
                "-n",
                "istio-system",
                "get",
                "secret",
                "cacerts",
                "-o",
                &format!("jsonpath={path}"),
            ])
        };
        let root = secret("{.data.root-cert\\.pem}");
        let root = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, root.trim())
            .unwrap();
        assert_eq!(
            String::from_utf8(root).unwrap(),
            next_root,
            "{c}'s root bundle"
        );
        assert_eq!(
            secret("{.metadata.labels.app\\.kubernetes\\.io/managed-by}"),
            "meshca",
            "{c}"
        );
    }
    eprintln!(
        "guide: {} blocks run, {skipped} not run; control plane up in {up:?}, guide ran in {took:?}",
        run.len()
    );
    assert!(
        took < GUIDE_TIMEOUT,
        "the guide took {took:?}; its waits are meant to be bounded"
    );
}
