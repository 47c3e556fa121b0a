//! Prometheus metrics with istiod's `citadel_server_*` names, plus reload and latency figures,
//! and a small HTTP endpoint that serves them at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds of the issuance latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The server's counters and gauges. All updates are lock-free.
#[derive(Debug, Default)]
pub struct Metrics {
    /// CSRs received.
    pub csr_count: AtomicU64,
    /// Certificates issued.
    pub success_cert_issuance_count: AtomicU64,
    /// Requests refused for authentication.
    pub authentication_failure_count: AtomicU64,
    /// CSRs that did not parse or verify.
    pub csr_parsing_err_count: AtomicU64,
    /// Unix time the root expires.
    pub root_cert_expiry_timestamp: AtomicI64,
    /// Unix time the signing chain expires.
    pub cert_chain_expiry_timestamp: AtomicI64,
    /// CA bundles and JWKS files loaded after start.
    pub reload_success_count: AtomicU64,
    /// CA bundles and JWKS files refused after start (the last good one stays in use).
    pub reload_failure_count: AtomicU64,
    /// 1 when the CA in use is what the source holds, 0 when a refused bundle is being ignored.
    pub last_known_good: AtomicI64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_nanos: AtomicU64,
}

impl Metrics {
    /// Records one issuance's duration.
    pub fn observe_issuance(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut one = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let g = |a: &AtomicI64| a.load(Ordering::Relaxed).to_string();
        one(
            "citadel_server_csr_count",
            "counter",
            "CSRs received.",
            c(&self.csr_count),
        );
        one(
            "citadel_server_success_cert_issuance_count",
            "counter",
            "Certificates issued.",
            c(&self.success_cert_issuance_count),
        );
        one(
            "citadel_server_authentication_failure_count",
            "counter",
            "Requests that failed authentication.",
            c(&self.authentication_failure_count),
        );
        one(
            "citadel_server_csr_parsing_err_count",
            "counter",
            "CSRs that failed to parse or verify.",
            c(&self.csr_parsing_err_count),
        );
        one(
            "citadel_server_root_cert_expiry_timestamp",
            "gauge",
            "Unix time the root certificate expires.",
            g(&self.root_cert_expiry_timestamp),
        );
        one(
            "citadel_server_cert_chain_expiry_timestamp",
            "gauge",
            "Unix time the signing chain expires.",
            g(&self.cert_chain_expiry_timestamp),
        );
        one(
            "meshca_ca_reload_success_count",
            "counter",
            "CA bundles and JWKS files loaded after start.",
            c(&self.reload_success_count),
        );
        one(
            "meshca_ca_reload_failure_count",
            "counter",
            "CA bundles and JWKS files refused after start; the last good one stays in use.",
            c(&self.reload_failure_count),
        );
        one(
            "meshca_ca_last_known_good",
            "gauge",
            "1 if the CA in use is the source's current bundle, 0 if a refused bundle is being ignored.",
            g(&self.last_known_good),
        );
        let _ = writeln!(
            s,
            "# HELP meshca_ca_issuance_duration_seconds Time to issue one certificate."
        );
        let _ = writeln!(s, "# TYPE meshca_ca_issuance_duration_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "meshca_ca_issuance_duration_seconds_bucket{{le=\"{b}\"}} {}",
                c(&self.latency_buckets[i])
            );
        }
        let count = c(&self.latency_count);
        let _ = writeln!(
            s,
            "meshca_ca_issuance_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(s, "meshca_ca_issuance_duration_seconds_sum {sum}");
        let _ = writeln!(s, "meshca_ca_issuance_duration_seconds_count {count}");
        s
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if req.starts_with("GET ") && (path == "/metrics" || path == "/") {
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "not found\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
