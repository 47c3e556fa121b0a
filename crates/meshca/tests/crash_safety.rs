//! Crash safety through the real binary. `meshca trust run` SIGKILLed at seeded random moments of
//! intermediate and root rotations on a file clock, over a folder store and over real
//! kube-apiservers: after every kill each cluster's bundle is whole and valid and the simulator's
//! cross-cluster check holds; every restart converges (the drill is `meshca_bench::crash`, whose
//! `crash` binary runs it 200 times over). And `meshca agent` SIGKILLed while it renews every few
//! hundred milliseconds from a real `meshca serve`: `cert-chain.pem` and `key.pem` are never of
//! two different renewals.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures by design

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshca_bench::crash::{CrashConfig, CrashReport, StoreKind, run};
use meshca_pki::{Certificate, PrivateKey};
use meshca_testkit::run_in;

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

fn drill(store: StoreKind, kills: usize, seed: u64) -> CrashReport {
    let cfg = CrashConfig {
        meshca: PathBuf::from(MESHCA),
        store,
        kills,
        seed,
        converge_every: 5,
    };
    let report = run(&cfg, &mut |line| eprintln!("{line}")).unwrap();
    eprintln!("{report:?}");
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert_eq!(report.kills, kills);
    assert!(report.root_rotations >= 1, "{report:?}");
    assert!(report.intermediate_rotations >= 1, "{report:?}");
    report
}

#[test]
fn trust_run_killed_at_random_moments_over_a_folder_store_keeps_every_bundle_whole() {
    let r = drill(StoreKind::Folder, 20, 20_261_130);
    assert!(r.mid_write >= 1, "no kill landed among the writes: {r:?}");
}

#[test]
fn trust_run_killed_at_random_moments_over_kubernetes_keeps_every_bundle_whole() {
    drill(StoreKind::Kube, 10, 20_261_130);
}

/// A long-running process whose stdout is read line by line.
struct Bg {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Bg {
    fn start(dir: &Path, args: &[&str]) -> Bg {
        let mut child = Command::new(MESHCA)
            .current_dir(dir)
            .args(args)
            .env("MESHCA_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Bg { child, lines }
    }

    /// The first word after `marker` on the first line holding it.
    fn after(&mut self, marker: &str) -> String {
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            if let Some((_, rest)) = line.split_once(marker) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("no line with {marker:?}");
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's output as a reader finds it: nothing yet, or a chain and the key of its leaf.
fn pair_problem(out: &Path) -> Option<String> {
    let chain = std::fs::read(out.join("cert-chain.pem"));
    let key = std::fs::read(out.join("key.pem"));
    let (chain, key) = match (chain, key) {
        (Err(_), Err(_)) => return None,
        (Ok(c), Ok(k)) => (c, k),
        (c, k) => {
            return Some(format!(
                "one file without the other: cert-chain.pem {}, key.pem {}",
                c.map_or("missing", |_| "present"),
                k.map_or("missing", |_| "present")
            ));
        }
    };
    let chain = match Certificate::all_from_pem(&chain, "cert-chain.pem") {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => return Some("cert-chain.pem holds no certificate".to_owned()),
        Err(e) => return Some(e.to_string()),
    };
    let key = match PrivateKey::from_pem(&key, "key.pem") {
        Ok(k) => k,
        Err(e) => return Some(e.to_string()),
    };
    (!chain[0].matches_key(&key)).then(|| "key.pem is not the key of the leaf".to_owned())
}

#[test]
fn an_agent_killed_while_it_renews_never_leaves_a_certificate_and_a_key_of_two_renewals() {
    const KILLS: usize = 50;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let fast = [
        ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
        ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
    ];
    run_in(MESHCA, d, ["certs", "cluster1-cacerts"], &fast).ok();
    run_in(
        "openssl",
        d,
        [
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            "jwt-key.pem",
        ],
        &[],
    )
    .ok();
    let jwks = run_in(MESHCA, d, ["token", "jwks", "--key", "jwt-key.pem"], &[])
        .ok()
        .stdout;
    std::fs::write(d.join("jwks.json"), jwks).unwrap();
    let token = run_in(
        MESHCA,
        d,
        [
            "token",
            "issue",
            "--ns",
            "foo",
            "--sa",
            "httpbin",
            "--issuer",
            "k8s",
            "--key",
            "jwt-key.pem",
        ],
        &[],
    )
    .ok()
    .stdout;
    std::fs::write(d.join("httpbin.token"), token).unwrap();
    let mut ca = Bg::start(
        d,
        &[
            "serve",
            "--cacerts",
            "cluster1",
            "--listen",
            "127.0.0.1:0",
            "--jwt-issuer",
            "k8s=jwks.json",
        ],
    );
    let addr = ca.after("listening on ");
    let out = d.join("out");
    // Certificates of 2 s renewed with 90% of their life left: a renewal every 200 ms.
    let agent_args = [
        "agent",
        "--ca-addr",
        &addr,
        "--ca-root",
        "root-cert.pem",
        "--token-file",
        "httpbin.token",
        "--output-dir",
        "out",
        "--ttl",
        "2s",
        "--grace-ratio",
        "0.9",
    ];
    // The kill moments: seeded, spread over the first 1.5 s of each run (start and renewals).
    let mut seed: u64 = 20_261_130;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let began = Instant::now();
    let mut renewals_seen = 0;
    let mut last_leaf = Vec::new();
    for kill in 1..=KILLS {
        let agent = Bg::start(d, &agent_args);
        std::thread::sleep(Duration::from_millis(next() % 1500));
        agent.kill();
        if let Some(p) = pair_problem(&out) {
            panic!("after kill {kill}: {}: {p}", out.display());
        }
        if let Ok(c) = std::fs::read(out.join("cert-chain.pem"))
            && c != last_leaf
        {
            renewals_seen += 1;
            last_leaf = c;
        }
    }
    // The agent did renew between kills, and the files are the last renewal's, whole.
    assert!(renewals_seen > KILLS / 2, "{renewals_seen} renewals seen");
    assert!(began.elapsed() < Duration::from_secs(120));
    ca.kill();
}
