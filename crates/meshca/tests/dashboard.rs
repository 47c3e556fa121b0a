//! `meshca trust dashboard` in a real browser: a three-cluster mesh in the middle of a root
//! rotation (two roots trusted at once), the page opened in Debian's Chromium driven by
//! Playwright (`playwright-core`, never a downloaded browser), with no console error, no request
//! leaving the page, every cluster and the phase on screen, and a screenshot; and the same page
//! served live by `meshca trust run --http`.
//!
//! The browser and the driver are installed when missing: Chromium with apt-get, playwright-core
//! with npm into `~/.cache/meshca/node` (outside the clone). `MESHCA_UPDATE_DOCS=1` also copies
//! the screenshot to `docs/dashboard.png`.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use meshca_testkit::{GENERATED_ROOT_POLICY, run_in};

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");
const CHROMIUM: &str = "/usr/bin/chromium";
/// The driver's version: pinned, so that every machine drives the browser the same way.
const PLAYWRIGHT_CORE: &str = "1.65.1";
const CLUSTERS: [&str; 3] = ["cluster1", "cluster2", "cluster3"];

/// A folder store with `CLUSTERS` under the generated-root policy, applied, and a root rotation
/// started: every cluster trusts the old and the new root.
fn rotating_mesh(d: &Path) {
    for c in std::iter::once("mgmt").chain(CLUSTERS) {
        fs::create_dir_all(d.join("store").join(c)).unwrap();
    }
    fs::write(d.join("policy.yaml"), GENERATED_ROOT_POLICY).unwrap();
    trust(d, &["apply"]).ok();
    trust(d, &["rotate-root"])
        .ok()
        .says("root rotation started");
}

fn trust(d: &Path, args: &[&str]) -> meshca_testkit::Run {
    let mut all = vec!["trust"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-f", "policy.yaml", "--store", "store"]);
    run_in(MESHCA, d, all, &[])
}

#[test]
fn the_dashboard_renders_in_chromium_during_a_root_rotation() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    rotating_mesh(d);
    trust(d, &["dashboard", "-o", "dashboard.html"])
        .ok()
        .says("wrote dashboard.html (3 clusters, root rotation phase 1/3 add-root)");
    let page = fs::read_to_string(d.join("dashboard.html")).unwrap();
    for c in CLUSTERS {
        assert!(page.contains(c), "{c}");
    }
    // Two roots, and every cluster trusting both.
    assert_eq!(page.matches(r#"<g class="node root">"#).count(), 2);
    assert_eq!(
        page.matches("<g class=\"chip\">").count(),
        2 * CLUSTERS.len()
    );

    let shot = d.join("dashboard.png");
    let url = format!("file://{}", d.join("dashboard.html").display());
    let report = browse(&url, &shot);
    assert_eq!(report["title"], "meshca trust · gloo-mesh/mesh");
    // A real picture: a PNG of a page taller than one screen.
    let png = fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(height > 900, "screenshot height {height}");
    if std::env::var_os("MESHCA_UPDATE_DOCS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png");
        fs::copy(&shot, docs).unwrap();
    }
}

#[test]
fn trust_run_serves_the_same_page_live() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    rotating_mesh(d);
    let mut child = Command::new(MESHCA)
        .current_dir(d)
        .args(["trust", "run", "-f", "policy.yaml", "--store", "store"])
        .args(["--poll", "100ms", "--http", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut addr = None;
    // The address comes first, then the first reconcile.
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("dashboard on http://") {
            addr = Some(a.trim_end_matches('/').to_owned());
        }
        let done = line.contains("reconciled at");
        seen.push(line);
        if done {
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no address in {seen:#?}"));
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    let answer = get("/");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: text/html; charset=utf-8")
    );
    for c in CLUSTERS {
        assert!(answer.contains(c), "{c}");
    }
    assert!(answer.contains("root rotation: phase 1/3 add-root"));
    assert_eq!(answer.matches(r#"<g class="node root">"#).count(), 2);
    assert_eq!(
        answer.matches("<g class=\"chip\">").count(),
        2 * CLUSTERS.len()
    );
    // The policy's own address serves it too; anything else is not found.
    assert!(get("/policy/gloo-mesh/mesh").starts_with("HTTP/1.1 200 OK"));
    assert!(get("/nothing").starts_with("HTTP/1.1 404"));
    // In the browser, as the file is.
    let report = browse(&format!("http://{addr}/"), &d.join("served.png"));
    assert_eq!(report["status"], 200);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Opens `url` in Chromium through check.mjs, asserts that the page is clean and shows every
/// cluster and the phase, and returns check.mjs's report; the screenshot goes to `shot`.
fn browse(url: &str, shot: &Path) -> serde_json::Value {
    let node = playwright_core();
    let mut expected: Vec<&str> = CLUSTERS.to_vec();
    expected.extend([
        "1/3 add-root",
        "Trust graph",
        "Expiry timeline",
        "meshca check",
    ]);
    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/check.mjs"))
        .arg(url)
        .arg(shot)
        .arg(serde_json::to_string(&expected).unwrap())
        .env("MESHCA_NODE_PREFIX", &node)
        .env("MESHCA_CHROMIUM", CHROMIUM)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check.mjs: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for key in [
        "consoleErrors",
        "pageErrors",
        "failedRequests",
        "outsideRequests",
        "missing",
    ] {
        assert_eq!(report[key], serde_json::json!([]), "{url}: {key}: {report}");
    }
    report
}

/// Debian's Chromium and a pinned playwright-core, installed when missing; returns the npm
/// prefix that holds playwright-core.
fn playwright_core() -> PathBuf {
    // Once per test process: the tests run on threads of one process.
    static PREFIX: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PREFIX.get_or_init(install_playwright_core).clone()
}

fn install_playwright_core() -> PathBuf {
    let mut packages = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        packages.push("chromium");
    }
    if Command::new("node").arg("--version").output().is_err() {
        packages.extend(["nodejs", "npm"]);
    }
    if !packages.is_empty() {
        apt_install(&packages);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    let prefix = Path::new(&home).join(".cache/meshca/node");
    let manifest = prefix.join("node_modules/playwright-core/package.json");
    let installed = fs::read_to_string(&manifest)
        .ok()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok())
        .is_some_and(|m| m["version"] == PLAYWRIGHT_CORE);
    if !installed {
        fs::create_dir_all(&prefix).unwrap();
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(format!("playwright-core@{PLAYWRIGHT_CORE}"))
            // playwright-core downloads no browser; this says so to any version that might.
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .status()
            .unwrap();
        assert!(status.success(), "npm install playwright-core: {status}");
    }
    prefix
}

fn apt_install(packages: &[&str]) {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let run = |args: &[&str]| {
        let mut cmd = Command::new(if root { "env" } else { "sudo" });
        if !root {
            cmd.arg("env");
        }
        let status = cmd
            .arg("DEBIAN_FRONTEND=noninteractive")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}: {status}");
    };
    run(&["apt-get", "update", "-qq"]);
    let mut install = vec!["apt-get", "install", "-y", "-qq"];
    install.extend_from_slice(packages);
    run(&install);
}
