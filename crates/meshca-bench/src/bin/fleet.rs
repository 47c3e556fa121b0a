//! A fleet of agents renewing against two `meshca serve` replicas on the same cacerts while one
//! replica at a time is killed (SIGKILL) and started again on its address.
//!
//! Each of the N agents (one tokio task each, in this process) has its own P-256 key per
//! certificate, its own service account and token, and asks for short-lived certificates, so
//! that it renews many times during the run. An agent renews as `meshca agent` does, with
//! meshca-agent's own pieces: [`meshca_agent::obtain`] (connect, key, CSR, `CreateCertificate`,
//! the answer checked against the root), [`renew_at_received`] at the grace ratio with jitter, and
//! [`Backoff`] while no CA answers, never waiting past the current certificate's expiry. What
//! `meshca agent` does not have is a second CA address: here an agent asks its own replica
//! first (agent i: replica i mod 2) and, when that fails, the other one at once, as a client of a
//! Service with two endpoints would; only when both fail does it back off. (`Agent::run` itself
//! writes files and knows one address, so the loop around those pieces is this harness's.)
//!
//! Every second a checker looks at every agent's current certificate: an agent whose
//! certificate has expired is without a valid one from that moment until it renews. Each
//! renewal also measures exactly how long after the old certificate's expiry it came, if it did.
//!
//! Prints a Markdown report: renewals, failed attempts (and how many of them the other replica
//! then answered), renewals that had to back off, kills, and the longest time an agent was
//! without a valid certificate, which must be zero (exit 1 otherwise, or if an agent never got
//! its first certificate).
//!
//! Usage: fleet [SECONDS] [AGENTS] [TTL_SECONDS] [KILL_EVERY_SECONDS] [DOWN_SECONDS]
//! (defaults 300, 1000, 90, 30 and 10). `MESHCA_BIN=path` runs another `meshca` binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshca_agent::schedule::{Backoff, DEFAULT_GRACE_RATIO, renew_at_received};
use meshca_agent::{Credential, Request, obtain};
use meshca_bench::pki::{NAMESPACE, TRUST_DOMAIN, make_ca, service_account};
use meshca_bench::serve::{JwtIssuer, SERVER_NAME, serve_command};
use meshca_bench::server::{Guard, free_port, load_average, start_listening};
use meshca_pki::{KeyType, SpiffeId, TrustDomain};
use time::OffsetDateTime;

/// What every agent and the checker share.
struct Fleet {
    addrs: [String; 2],
    root_pem: String,
    ttl_seconds: i64,
    /// Each agent's current certificate's `notAfter`, Unix milliseconds (0: none yet).
    not_after_ms: Vec<AtomicI64>,
    renewals: AtomicU64,
    failed_attempts: AtomicU64,
    /// Failed attempts at an agent's own replica that the other replica then answered.
    failed_over: AtomicU64,
    /// Renewals where both replicas failed, so the agent backed off.
    backoffs: AtomicU64,
    /// The longest an agent renewed after its certificate had expired, ms (exact, per renewal).
    late_ms: AtomicI64,
    errors: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A number in 0..1 from an agent's number and renewal count (SplitMix64), for the renewal
/// jitter: spread like `meshca agent`'s random one, and the same from run to run.
fn jitter(agent: usize, renewal: u64) -> f64 {
    let mut z = (agent as u64) << 32 ^ renewal;
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The kind of an agent's error, without the address, so that the report can count them.
fn error_kind(e: &meshca_agent::AgentError, addrs: &[String; 2]) -> String {
    let mut s = e.to_string();
    for (a, name) in addrs.iter().zip(["replica A", "replica B"]) {
        s = s.replace(a.as_str(), name);
    }
    s.chars().take(140).collect()
}

async fn agent(n: usize, token: String, fleet: Arc<Fleet>) {
    let td = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let mut req = Request {
        ca_addr: String::new(),
        ca_root_pem: fleet.root_pem.clone(),
        server_name: SERVER_NAME.into(),
        identity: SpiffeId::workload(&td, NAMESPACE, &service_account(n)).unwrap(),
        key_type: KeyType::EcdsaP256,
        ttl_seconds: fleet.ttl_seconds,
        credential: Credential::Token(token),
        cluster_id: None,
    };
    let mut backoff = Backoff::new();
    let mut valid_until: Option<OffsetDateTime> = None;
    let mut renewal = 0u64;
    while !fleet.stop.load(Ordering::Relaxed) {
        let mut leaf = None;
        for k in 0..2 {
            req.ca_addr.clone_from(&fleet.addrs[(n + k) % 2]);
            match obtain(&req, OffsetDateTime::now_utc()).await {
                Ok(issued) => {
                    if k == 1 {
                        fleet.failed_over.fetch_add(1, Ordering::Relaxed);
                    }
                    leaf = Some(issued.leaf().clone());
                    break;
                }
                Err(e) => {
                    fleet.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    *fleet
                        .errors
                        .lock()
                        .unwrap()
                        .entry(error_kind(&e, &fleet.addrs))
                        .or_default() += 1;
                }
            }
        }
        let now = OffsetDateTime::now_utc();
        let wait = match leaf {
            Some(leaf) => {
                if let Some(v) = valid_until
                    && now > v
                {
                    fleet
                        .late_ms
                        .fetch_max(unix_ms(now) - unix_ms(v), Ordering::Relaxed);
                }
                valid_until = Some(leaf.not_after());
                fleet.not_after_ms[n].store(unix_ms(leaf.not_after()), Ordering::Relaxed);
                fleet.renewals.fetch_add(1, Ordering::Relaxed);
                backoff.succeeded();
                renewal += 1;
                let at = renew_at_received(
                    now,
                    leaf.not_before(),
                    leaf.not_after(),
                    DEFAULT_GRACE_RATIO,
                    jitter(n, renewal),
                );
                at - now
            }
            None => {
                fleet.backoffs.fetch_add(1, Ordering::Relaxed);
                backoff.failed(now, valid_until)
            }
        };
        let wait = wait.max(time::Duration::milliseconds(100));
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(wait.whole_milliseconds()).unwrap_or(0),
        ))
        .await;
    }
}

/// A replica's address and process (none while it is down).
struct Replica {
    listen: String,
    process: Option<Guard>,
}

fn start_replica(bin: &Path, dir: &Path, issuer: &JwtIssuer, listen: &str) -> Guard {
    let (guard, _, addr) = start_listening(serve_command(bin, dir, issuer, listen));
    assert_eq!(addr, listen, "the replica listens where it was told");
    guard
}

/// Every second until `stop`: how many agents hold an expired certificate, and for how long the
/// longest such stretch of one agent lasted. Returns (checks, longest stretch, most expired at
/// once).
fn check_every_second(fleet: &Fleet) -> (u64, Duration, usize) {
    let n = fleet.not_after_ms.len();
    let mut expired_since: Vec<Option<Instant>> = vec![None; n];
    let (mut checks, mut longest, mut most) = (0u64, Duration::ZERO, 0usize);
    let start = Instant::now();
    while !fleet.stop.load(Ordering::Relaxed) {
        let now_ms = unix_ms(OffsetDateTime::now_utc());
        let now = Instant::now();
        let mut expired = 0;
        for (a, since) in fleet.not_after_ms.iter().zip(expired_since.iter_mut()) {
            let na = a.load(Ordering::Relaxed);
            if na != 0 && na <= now_ms {
                expired += 1;
                let s = *since.get_or_insert(now);
                longest = longest.max(now - s);
            } else {
                *since = None;
            }
        }
        most = most.max(expired);
        checks += 1;
        std::thread::sleep(
            (start + Duration::from_secs(checks)).saturating_duration_since(Instant::now()),
        );
    }
    (checks, longest, most)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let secs = arg(0, 300);
    let agents = usize::try_from(arg(1, 1000)).unwrap_or(1000);
    let ttl = i64::try_from(arg(2, 90)).unwrap_or(90);
    let kill_every = Duration::from_secs(arg(3, 30).max(1));
    let down = Duration::from_secs(arg(4, 10)).min(kill_every);
    let meshca = std::env::var_os("MESHCA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(meshca_bench::meshca_binary);
    assert!(
        meshca.exists(),
        "build meshca first: cargo build --release -p meshca"
    );

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ecdsa-p256");
    let issuer = JwtIssuer::new(d);
    let mut replicas: Vec<Replica> = (0..2)
        .map(|_| {
            let listen = format!("127.0.0.1:{}", free_port());
            let process = Some(start_replica(&meshca, d, &issuer, &listen));
            Replica { listen, process }
        })
        .collect();
    let token_life = time::Duration::seconds(i64::try_from(secs).unwrap_or(0) + 3600);
    let tokens: Vec<String> = (0..agents)
        .map(|i| issuer.token(&service_account(i), token_life))
        .collect();
    let fleet = Arc::new(Fleet {
        addrs: [replicas[0].listen.clone(), replicas[1].listen.clone()],
        root_pem: std::fs::read_to_string(d.join("root-cert.pem")).unwrap(),
        ttl_seconds: ttl,
        not_after_ms: (0..agents).map(|_| AtomicI64::new(0)).collect(),
        renewals: AtomicU64::new(0),
        failed_attempts: AtomicU64::new(0),
        failed_over: AtomicU64::new(0),
        backoffs: AtomicU64::new(0),
        late_ms: AtomicI64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        stop: AtomicBool::new(false),
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Agents start over the first 10 seconds, as pods of a fleet come up, not all in one instant.
    let enrol = Instant::now();
    let stagger = Duration::from_secs(10) / u32::try_from(agents.max(1)).unwrap_or(1);
    for (n, token) in tokens.into_iter().enumerate() {
        let fleet = fleet.clone();
        let delay = stagger * u32::try_from(n).unwrap_or(0);
        rt.spawn(async move {
            tokio::time::sleep(delay).await;
            agent(n, token, fleet).await;
        });
    }
    let enrolled = |f: &Fleet| {
        f.not_after_ms
            .iter()
            .all(|a| a.load(Ordering::Relaxed) != 0)
    };
    while !enrolled(&fleet) && enrol.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !enrolled(&fleet) {
        eprintln!("not every agent got its first certificate within 120 s");
        return ExitCode::FAILURE;
    }
    let enrol_time = enrol.elapsed();
    let renewals0 = fleet.renewals.load(Ordering::Relaxed);
    let attempts0 = fleet.failed_attempts.load(Ordering::Relaxed);

    let checker = {
        let fleet = fleet.clone();
        std::thread::spawn(move || check_every_second(&fleet))
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let (mut kills, mut loads) = (0u32, Vec::new());
    let mut next_kill = start + kill_every;
    while Instant::now() < end {
        let t = next_kill.min(end);
        while Instant::now() < t {
            std::thread::sleep(
                Duration::from_secs(1).min(t.saturating_duration_since(Instant::now())),
            );
            loads.push(load_average());
        }
        if Instant::now() >= end {
            break;
        }
        let r = &mut replicas[kills as usize % 2];
        drop(r.process.take()); // SIGKILL, then reaped
        kills += 1;
        let back = (Instant::now() + down).min(end);
        while Instant::now() < back {
            std::thread::sleep(Duration::from_millis(100));
        }
        if Instant::now() < end {
            r.process = Some(start_replica(&meshca, d, &issuer, &r.listen));
        }
        next_kill += kill_every;
    }
    fleet.stop.store(true, Ordering::Relaxed);
    let (checks, longest, most_expired) = checker.join().unwrap();
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(replicas);

    let renewals = fleet.renewals.load(Ordering::Relaxed) - renewals0;
    let failed = fleet.failed_attempts.load(Ordering::Relaxed) - attempts0;
    let late =
        Duration::from_millis(u64::try_from(fleet.late_ms.load(Ordering::Relaxed)).unwrap_or(0));
    let worst = longest.max(late);
    println!(
        "fleet of {agents} agents, certificates of {ttl} s renewed at {DEFAULT_GRACE_RATIO} of their life (jitter up to 10%), two replicas of meshca serve ({}), one killed every {} s and started again after {} s; {} s measured after {} s of enrolment\n",
        meshca.display(),
        kill_every.as_secs(),
        down.as_secs(),
        start.elapsed().as_secs(),
        enrol_time.as_secs()
    );
    println!("| figure | value |\n|---|---|");
    println!(
        "| renewals | {renewals} ({:.1}/s) |",
        renewals as f64 / secs.max(1) as f64
    );
    println!(
        "| failed attempts | {failed} (answered by the other replica next: {}; renewals where both failed and the agent backed off: {}) |",
        fleet.failed_over.load(Ordering::Relaxed),
        fleet.backoffs.load(Ordering::Relaxed)
    );
    println!("| kills (SIGKILL) | {kills} |");
    println!(
        "| checks (every second, every agent) | {checks} × {agents}; most agents with an expired certificate at once: {most_expired} |"
    );
    println!(
        "| longest time an agent was without a valid certificate | {:.1} s (checker {:.1} s, renewals {:.1} s) |",
        worst.as_secs_f64(),
        longest.as_secs_f64(),
        late.as_secs_f64()
    );
    println!(
        "| load average (1 min) min / median / max | {:.2} / {:.2} / {:.2} |",
        loads.iter().copied().fold(f64::INFINITY, f64::min),
        meshca_bench::load::median_f(&loads),
        loads.iter().copied().fold(0.0, f64::max)
    );
    let errors = fleet.errors.lock().unwrap();
    if !errors.is_empty() {
        println!("\nfailed attempts by error (whole run, enrolment included):\n");
        let mut by_count: Vec<_> = errors.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1));
        for (e, c) in by_count.iter().take(8) {
            println!("- {c} × `{e}`");
        }
    }
    let pass = worst.is_zero() && most_expired == 0;
    println!(
        "\nverdict: {}",
        if pass {
            "pass (no agent ever held an expired certificate)"
        } else {
            "FAIL (an agent held an expired certificate)"
        }
    );
    if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_over_the_unit_interval() {
        let v: Vec<f64> = (0..1000).map(|n| jitter(n, 1)).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let low = v.iter().filter(|x| **x < 0.5).count();
        assert!((400..600).contains(&low), "{low} of 1000 below 0.5");
        assert_ne!(jitter(3, 1), jitter(3, 2));
    }
}
