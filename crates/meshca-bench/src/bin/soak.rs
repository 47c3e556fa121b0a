//! Soak of `meshca serve`: the real binary on loopback, driven for a long time by N concurrent
//! clients making real `CreateCertificate` calls (closed loop, [`meshca_bench::load`]), with the
//! server's resident memory and the machine's load average read every second from `/proc`.
//!
//! At the end it prints a Markdown report: calls answered and failed, latency percentiles,
//! certificates per minute, the server's RSS (first, last, largest) and its trend: the
//! least-squares slope over the run after a warm-up minute, and the median RSS of the first
//! measured minute beside that of the last. The run fails (exit 1) when any call failed, or when
//! memory grows: a slope above [`MAX_SLOPE_KIB_PER_MIN`] together with a last-minute median more
//! than [`MAX_GROWTH_KIB`] above the first measured minute's. Both are asked so that the noise of
//! an allocator settling does not fail a run, while a leak, which does both, does.
//!
//! Usage: soak [SECONDS] [CLIENTS] [jwt|mtls] [SAMPLES_CSV]   (defaults 600, 64, jwt)
//! `jwt`: each call carries the bearer token of its CSR's service account; `mtls`: client n
//! presents a certificate of workload n and asks for workload n. `SAMPLES_CSV` receives one line
//! per second (second, RSS in KiB, 1-minute load average). `MESHCA_BIN=path` soaks another
//! `meshca` binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshca_bench::load::{Work, load, median_f};
use meshca_bench::pki::{ClientIdentity, client_identity, make_ca, make_csrs};
use meshca_bench::serve::{CaClient, JwtIssuer, connect, create_certificate, serve_command};
use meshca_bench::server::{load_average, proc_cpu, proc_rss_kb, start_listening};
use meshca_pki::KeyType;

/// Memory growth that fails the run: this slope (KiB per minute, after the warm-up) ...
const MAX_SLOPE_KIB_PER_MIN: f64 = 256.0;
/// ... together with the last minute's median this far above the first measured minute's (KiB).
const MAX_GROWTH_KIB: f64 = 2048.0;

/// How the clients authenticate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    Jwt,
    Mtls,
}

/// One reading of the server and the machine.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Seconds since the load started.
    at: f64,
    rss_kib: f64,
    load1: f64,
}

/// What the samples say about memory.
#[derive(Debug, PartialEq)]
struct Trend {
    /// Least-squares slope after the warm-up, KiB per minute.
    slope_kib_per_min: f64,
    /// Median RSS of the warm-up minute, the first minute after it and the last minute, KiB.
    warm_up_median: f64,
    first_median: f64,
    last_median: f64,
}

impl Trend {
    fn of(samples: &[Sample], warm_up: f64) -> Trend {
        let end = samples.last().map_or(0.0, |s| s.at);
        let window = |from: f64, to: f64| {
            median_f(
                &samples
                    .iter()
                    .filter(|s| s.at >= from && s.at < to)
                    .map(|s| s.rss_kib)
                    .collect::<Vec<_>>(),
            )
        };
        let measured: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.at >= warm_up)
            .map(|s| (s.at, s.rss_kib))
            .collect();
        Trend {
            slope_kib_per_min: slope(&measured) * 60.0,
            warm_up_median: window(0.0, warm_up),
            first_median: window(warm_up, warm_up + 60.0),
            last_median: window(end - 60.0, end + 1.0),
        }
    }

    fn grows(&self) -> bool {
        self.slope_kib_per_min > MAX_SLOPE_KIB_PER_MIN
            && self.last_median - self.first_median > MAX_GROWTH_KIB
    }
}

/// The least-squares slope of y over x (0 for fewer than two distinct x).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// The nearest-rank percentile `p` (0..=1) of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A client: its CA connection, its number, and whether it sends a token.
#[derive(Clone)]
struct SoakClient {
    ca: CaClient,
    n: usize,
    auth: Auth,
}

/// JWT: call `i` sends CSR `i` with its service account's token. mTLS: client n always asks for
/// workload n, whose certificate it presents.
async fn soak_call(c: &mut SoakClient, work: &Work, i: usize) -> bool {
    let csrs = &work.0;
    match c.auth {
        Auth::Jwt => {
            let k = i % csrs.len();
            create_certificate(&mut c.ca, &csrs[k].0, Some(&work.1[k])).await
        }
        Auth::Mtls => create_certificate(&mut c.ca, &csrs[c.n % csrs.len()].0, None).await,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(600);
    let clients: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let auth = match args.get(2).map(String::as_str) {
        None | Some("jwt") => Auth::Jwt,
        Some("mtls") => Auth::Mtls,
        Some(other) => {
            eprintln!("auth {other:?}: expected jwt or mtls");
            return ExitCode::from(2);
        }
    };
    let samples_csv = args.get(3).map(PathBuf::from);
    let meshca = std::env::var_os("MESHCA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(meshca_bench::meshca_binary);
    assert!(
        meshca.exists(),
        "build meshca first: cargo build --release -p meshca"
    );
    let dur = Duration::from_secs(secs.max(1));
    let warm_up = if secs >= 180 { 60.0 } else { secs as f64 / 3.0 };

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ecdsa-p256");
    let issuer = JwtIssuer::new(d);
    let (_server, pid, addr) = start_listening(serve_command(&meshca, d, &issuer, "127.0.0.1:0"));
    let root = std::fs::read_to_string(d.join("root-cert.pem")).unwrap();
    let csrs = make_csrs(KeyType::EcdsaP256, clients);
    let token_life = time::Duration::seconds(i64::try_from(secs).unwrap_or(0) + 3600);
    let tokens: Vec<String> = match auth {
        Auth::Jwt => csrs
            .iter()
            .map(|(_, sa)| issuer.token(sa, token_life))
            .collect(),
        Auth::Mtls => Vec::new(),
    };
    let identities: Vec<Option<ClientIdentity>> = (0..clients)
        .map(|n| (auth == Auth::Mtls).then(|| client_identity(d, n)))
        .collect();
    let work: Work = Arc::new((csrs, tokens));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let conns: Vec<SoakClient> = rt.block_on(async {
        let mut conns = Vec::new();
        for (n, id) in identities.iter().enumerate() {
            let ch = connect(&addr, &root, id.as_ref())
                .await
                .unwrap_or_else(|e| panic!("connect to {addr}: {e:?}"));
            conns.push(SoakClient {
                ca: CaClient::new(ch),
                n,
                auth,
            });
        }
        conns
    });

    // Readings every second on a thread of their own, so that a busy runtime does not delay them.
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let sampler = {
        let (samples, stop) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut k = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let s = Sample {
                    at: start.elapsed().as_secs_f64(),
                    rss_kib: proc_rss_kb(pid) as f64,
                    load1: load_average(),
                };
                samples.lock().unwrap().push(s);
                k += 1;
                let next = start + Duration::from_secs(u64::from(k));
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    let cpu0 = proc_cpu(pid);
    // The load runs minute by minute, so each minute's certificates are counted.
    let (mut ok, mut errors, mut latencies, mut per_minute) = (0, 0, Vec::new(), Vec::new());
    rt.block_on(async {
        let mut left = dur;
        while !left.is_zero() {
            let part = left.min(Duration::from_secs(60));
            let (o, e, elapsed, l) = load(conns.clone(), work.clone(), part, soak_call).await;
            ok += o;
            errors += e;
            latencies.extend(l);
            per_minute.push(o as f64 * 60.0 / elapsed.as_secs_f64());
            left -= part;
        }
    });
    let wall = start.elapsed();
    let server_cpu = proc_cpu(pid).saturating_sub(cpu0);
    let rss_end = proc_rss_kb(pid) as f64;
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let samples = samples.lock().unwrap().clone();

    latencies.sort();
    let trend = Trend::of(&samples, warm_up);
    let rss: Vec<f64> = samples.iter().map(|s| s.rss_kib).collect();
    let loads: Vec<f64> = samples.iter().map(|s| s.load1).collect();
    let mib = |k: f64| format!("{:.1} MiB", k / 1024.0);
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let auth_name = match auth {
        Auth::Jwt => "JWT bearer",
        Auth::Mtls => "mTLS client certificate",
    };
    println!(
        "soak of meshca serve ({}): {clients} clients, {auth_name}, {:.0} s\n",
        meshca.display(),
        wall.as_secs_f64()
    );
    println!("| figure | value |\n|---|---|");
    println!("| certificates issued | {ok} |");
    println!("| failed calls | {errors} |");
    println!(
        "| latency p50 / p90 / p99 / max | {} / {} / {} / {} |",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    println!(
        "| certificates per minute (each minute) | {} |",
        per_minute
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| server CPU | {:.0} s ({:.0} µs per certificate) |",
        server_cpu.as_secs_f64(),
        server_cpu.as_secs_f64() * 1e6 / ok.max(1) as f64
    );
    println!(
        "| server RSS first / last / largest | {} / {} / {} ({} samples) |",
        mib(rss.first().copied().unwrap_or(0.0)),
        mib(rss_end),
        mib(rss.iter().copied().fold(0.0, f64::max)),
        rss.len()
    );
    println!(
        "| RSS trend after {warm_up:.0} s of warm-up | {:+.1} KiB/min (fails above {MAX_SLOPE_KIB_PER_MIN} KiB/min with the last minute more than {} above the first) |",
        trend.slope_kib_per_min,
        mib(MAX_GROWTH_KIB)
    );
    println!(
        "| RSS median: warm-up / first measured minute / last minute | {} / {} / {} |",
        mib(trend.warm_up_median),
        mib(trend.first_median),
        mib(trend.last_median)
    );
    println!(
        "| load average (1 min) min / median / max | {:.2} / {:.2} / {:.2} |",
        loads.iter().copied().fold(f64::INFINITY, f64::min),
        median_f(&loads),
        loads.iter().copied().fold(0.0, f64::max)
    );
    if let Some(path) = samples_csv {
        let mut csv = String::from("second,rss_kib,load1\n");
        for s in &samples {
            csv.push_str(&format!("{:.1},{:.0},{:.2}\n", s.at, s.rss_kib, s.load1));
        }
        std::fs::write(&path, csv).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let grows = trend.grows();
    println!(
        "\nverdict: {}",
        match (errors, grows) {
            (0, false) => "pass (no failed call, memory flat)".to_owned(),
            (e, g) => format!(
                "FAIL ({e} failed call(s){})",
                if g { ", memory grows" } else { "" }
            ),
        }
    );
    if errors > 0 || grows {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(f: impl Fn(f64) -> f64, secs: u32) -> Vec<Sample> {
        (0..secs)
            .map(|t| Sample {
                at: f64::from(t),
                rss_kib: f(f64::from(t)),
                load1: 1.0,
            })
            .collect()
    }

    #[test]
    fn slope_is_the_least_squares_fit() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), 2.0);
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)]), 0.5);
        assert_eq!(slope(&[(3.0, 1.0)]), 0.0);
        assert_eq!(slope(&[(3.0, 1.0), (3.0, 7.0)]), 0.0);
    }

    #[test]
    fn a_leak_fails_and_warm_up_or_noise_does_not() {
        // 1 KiB more every second after the warm-up: 60 KiB/min, 540 KiB over 9 minutes.
        let slow = Trend::of(&series(|t| 20_000.0 + t, 600), 60.0);
        assert!((slow.slope_kib_per_min - 60.0).abs() < 1e-6);
        assert!(!slow.grows());
        // A leak of 10 KiB a second.
        let leak = Trend::of(&series(|t| 20_000.0 + 10.0 * t, 600), 60.0);
        assert!((leak.slope_kib_per_min - 600.0).abs() < 1e-6);
        assert!(leak.last_median - leak.first_median > MAX_GROWTH_KIB);
        assert!(leak.grows());
        // Growth during the warm-up minute only, then flat with a sawtooth: no trend.
        let settle = Trend::of(
            &series(
                |t| {
                    if t < 60.0 {
                        10_000.0 + 200.0 * t
                    } else {
                        22_000.0 + f64::from((t as u32 % 7) * 100)
                    }
                },
                600,
            ),
            60.0,
        );
        assert!(settle.slope_kib_per_min.abs() < 10.0);
        assert!(settle.warm_up_median < settle.first_median);
        assert!(!settle.grows());
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&d, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&d[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
