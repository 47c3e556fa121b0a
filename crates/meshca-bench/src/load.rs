//! Closed-loop load on a CA server and what it yields: N clients each send a call, wait for its
//! answer and send the next, for a warm-up and then a measured time; the server's CPU time and
//! peak memory are read from `/proc` around the measured part ([`crate::server`]). [`Row`]
//! turns one run into the figures the harnesses print, and several runs into their medians.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::server::{proc_cpu, proc_hwm_kb};

/// What the calls of a run send: the CSRs with the service account each one is for, and one
/// string per CSR that the call needs beside it (a bearer token, a request body).
pub type Work = Arc<(Vec<(String, String)>, Vec<String>)>;

/// The warm-up before each measured run: connections are open and caches filled after it.
pub const WARM_UP: Duration = Duration::from_millis(500);

/// One measured run.
pub struct Outcome {
    /// Calls answered with a certificate.
    pub certs: u64,
    /// Calls that failed.
    pub errors: u64,
    /// The measured time.
    pub elapsed: Duration,
    /// The latency of each successful call.
    pub latencies: Vec<Duration>,
    /// The server's CPU time (user + system) over the measured time.
    pub server_cpu: Duration,
    /// The server's peak resident memory (`VmHWM`) at the end, in kB.
    pub rss_peak_kb: u64,
    /// The CPU time of the other processes watched ([`Beside::pids`]) over the measured time.
    pub beside_cpu: Duration,
    /// How much [`Beside::count`] grew over the measured time.
    pub counted: f64,
}

/// What is read around the measured part besides the server itself: other processes doing
/// work for it (an API server it asks), and a counter (requests that API server served).
#[derive(Default, Clone, Copy)]
pub struct Beside<'a> {
    /// Processes whose CPU time is summed into [`Outcome::beside_cpu`].
    pub pids: &'a [u32],
    /// A counter read before and after the measured part, into [`Outcome::counted`].
    pub count: Option<&'a dyn Fn() -> f64>,
}

/// An async call on a client, nameable in a trait bound.
pub trait AsyncCall<'a, C>: Send {
    /// The call's future: `true` when the call got a good answer.
    type Fut: std::future::Future<Output = bool> + Send + 'a;
    /// Starts call number `i` on client `c`.
    fn call(self, c: &'a mut C, work: &'a Work, i: usize) -> Self::Fut;
}

impl<'a, C: 'a, F, Fut> AsyncCall<'a, C> for F
where
    F: FnOnce(&'a mut C, &'a Work, usize) -> Fut + Send,
    Fut: std::future::Future<Output = bool> + Send + 'a,
{
    type Fut = Fut;
    fn call(self, c: &'a mut C, work: &'a Work, i: usize) -> Fut {
        self(c, work, i)
    }
}

/// Runs `call` from every client in a loop for `dur`; returns (ok, errors, elapsed, latencies).
/// Client `n` starts at call number `7n`, so that clients do not move in step over the work.
///
/// # Panics
/// If a client's task panics.
pub async fn load<C, F>(
    clients: Vec<C>,
    work: Work,
    dur: Duration,
    call: F,
) -> (u64, u64, Duration, Vec<Duration>)
where
    C: Send + 'static,
    F: for<'a> AsyncCall<'a, C> + Copy + Send + Sync + 'static,
{
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for (n, mut c) in clients.into_iter().enumerate() {
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut err, mut lat) = (0u64, 0u64, Vec::new());
            let mut i = n * 7;
            while Instant::now() < deadline {
                let t = Instant::now();
                if call.call(&mut c, &work, i).await {
                    ok += 1;
                    lat.push(t.elapsed());
                } else {
                    err += 1;
                }
                i += 1;
            }
            (ok, err, lat)
        }));
    }
    let (mut ok, mut err, mut lat) = (0, 0, Vec::new());
    for t in tasks {
        #[allow(clippy::expect_used)] // a panicking client is a bug of the harness
        let (o, e, l) = t.await.expect("a load client panicked");
        ok += o;
        err += e;
        lat.extend(l);
    }
    (ok, err, start.elapsed(), lat)
}

/// [`WARM_UP`], then `dur` of measured load, with the CPU time of server `pid` (and of the
/// processes `beside`) read from /proc around the measured part.
pub async fn warm_then_measure<C, F>(
    pid: u32,
    beside: Beside<'_>,
    conns: Vec<C>,
    work: Work,
    dur: Duration,
    call: F,
) -> Outcome
where
    C: Clone + Send + 'static,
    F: for<'a> AsyncCall<'a, C> + Copy + Send + Sync + 'static,
{
    let _ = load(conns.clone(), work.clone(), WARM_UP, call).await;
    let beside_cpu = || beside.pids.iter().map(|&p| proc_cpu(p)).sum::<Duration>();
    let count = || beside.count.map_or(0.0, |f| f());
    let (count0, other0) = (count(), beside_cpu());
    let cpu0 = proc_cpu(pid);
    let (certs, errors, elapsed, latencies) = load(conns, work, dur, call).await;
    let server_cpu = proc_cpu(pid).saturating_sub(cpu0);
    let beside_cpu = beside_cpu().saturating_sub(other0);
    Outcome {
        certs,
        errors,
        elapsed,
        latencies,
        server_cpu,
        rss_peak_kb: proc_hwm_kb(pid),
        beside_cpu,
        counted: count() - count0,
    }
}

/// One run's figures, or the medians of several.
#[derive(Clone, Copy, Debug, Default)]
pub struct Row {
    /// Certificates per second.
    pub rate: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Server CPU per certificate, µs.
    pub cpu_us: f64,
    /// The in-process crypto floor per certificate, µs (0 when not measured).
    pub floor_us: f64,
    /// Peak server memory, MB.
    pub rss_mb: f64,
    /// Failed calls.
    pub errors: u64,
    /// CPU of the processes beside the server per certificate, µs.
    pub beside_cpu_us: f64,
    /// [`Outcome::counted`] per certificate.
    pub counted_per_cert: f64,
}

impl Row {
    /// The figures of one run, with the crypto floor measured beside it.
    pub fn of(o: &Outcome, floor: Duration) -> Row {
        let mut l = o.latencies.clone();
        l.sort();
        let pct = |p: f64| {
            l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3
        };
        let per_cert = |x: f64| {
            if o.certs > 0 { x / o.certs as f64 } else { 0.0 }
        };
        Row {
            rate: o.certs as f64 / o.elapsed.as_secs_f64(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            cpu_us: per_cert(o.server_cpu.as_secs_f64() * 1e6),
            floor_us: floor.as_secs_f64() * 1e6,
            rss_mb: o.rss_peak_kb as f64 / 1024.0,
            errors: o.errors,
            beside_cpu_us: per_cert(o.beside_cpu.as_secs_f64() * 1e6),
            counted_per_cert: per_cert(o.counted),
        }
    }

    /// Column by column: medians, except the largest RSS and all errors.
    pub fn median(rows: &[Row]) -> Row {
        let col = |f: fn(&Row) -> f64| median_f(&rows.iter().map(f).collect::<Vec<_>>());
        Row {
            rate: col(|r| r.rate),
            p50_ms: col(|r| r.p50_ms),
            p99_ms: col(|r| r.p99_ms),
            cpu_us: col(|r| r.cpu_us),
            floor_us: col(|r| r.floor_us),
            rss_mb: rows.iter().map(|r| r.rss_mb).fold(0.0, f64::max),
            errors: rows.iter().map(|r| r.errors).sum(),
            beside_cpu_us: col(|r| r.beside_cpu_us),
            counted_per_cert: col(|r| r.counted_per_cert),
        }
    }
}

/// The median of numbers (the mean of the middle two for an even count; 0 for none).
pub fn median_f(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => s[n / 2],
        _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// A ratio as `1.23×`.
pub fn fmt_x(x: f64) -> String {
    format!("{x:.2}×")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_take_medians_the_largest_rss_and_every_error() {
        let run = |certs: u64, cpu_ms: u64, rss_kb: u64, errors: u64| Outcome {
            certs,
            errors,
            elapsed: Duration::from_secs(1),
            latencies: vec![Duration::from_millis(1); 100],
            server_cpu: Duration::from_millis(cpu_ms),
            rss_peak_kb: rss_kb,
            beside_cpu: Duration::from_millis(cpu_ms / 2),
            counted: certs as f64,
        };
        let rows = [
            Row::of(&run(1000, 200, 10_240, 0), Duration::ZERO),
            Row::of(&run(3000, 300, 20_480, 1), Duration::ZERO),
            Row::of(&run(2000, 500, 5_120, 2), Duration::ZERO),
        ];
        let m = Row::median(&rows);
        assert_eq!(m.rate, 2000.0);
        assert_eq!(m.cpu_us, 200.0); // 200, 100 and 250 µs per certificate
        assert_eq!(m.beside_cpu_us, 100.0);
        assert_eq!(m.counted_per_cert, 1.0);
        assert_eq!(m.rss_mb, 20.0);
        assert_eq!(m.errors, 3);
        assert_eq!(median_f(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
