//! Prometheus metrics with istiod's `citadel_server_*` names, plus reload, latency and expiry
//! figures, in one registry; [`serve`] puts them at `/metrics` on the operations endpoint
//! ([`meshca_http`]).

use std::sync::Arc;

use meshca_pki::Certificate;
use meshca_pki::describe::hex_colons;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::issuer::LoadedCa;

/// Upper bounds of the issuance latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The server's counters and gauges. Updates are atomic; none takes a lock but the roots'.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// CSRs received.
    pub csr_count: IntCounter,
    /// Certificates issued.
    pub success_cert_issuance_count: IntCounter,
    /// Requests refused for authentication.
    pub authentication_failure_count: IntCounter,
    /// CSRs that did not parse or verify.
    pub csr_parsing_err_count: IntCounter,
    /// Unix time the root of the signing path expires.
    pub root_cert_expiry_timestamp: IntGauge,
    /// Unix time the signing chain expires (its first certificate to expire).
    pub cert_chain_expiry_timestamp: IntGauge,
    /// CA bundles and JWKS files loaded after start.
    pub reload_success_count: IntCounter,
    /// CA bundles and JWKS files refused after start (the last good one stays in use).
    pub reload_failure_count: IntCounter,
    /// 1 when the CA in use is what the source holds, 0 when a refused bundle is being ignored.
    pub last_known_good: IntGauge,
    /// Unix time the TLS serving certificate expires.
    pub serving_cert_expiry_timestamp: IntGauge,
    signing_cert_expiry: IntGauge,
    root_expiry: IntGaugeVec,
    issuance_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `c` in `r` and hands it back.
fn registered<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // Every name below is distinct and valid: registration cannot fail.
    r.register(Box::new(c.clone()))
        .expect("metric names are distinct and valid");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    registered(
        r,
        IntCounter::new(name, help).expect("metric names are valid"),
    )
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    registered(
        r,
        IntGauge::new(name, help).expect("metric names are valid"),
    )
}

impl Metrics {
    /// Every metric at zero.
    pub fn new() -> Self {
        let r = Registry::new();
        Metrics {
            csr_count: counter(&r, "citadel_server_csr_count", "CSRs received."),
            success_cert_issuance_count: counter(
                &r,
                "citadel_server_success_cert_issuance_count",
                "Certificates issued.",
            ),
            authentication_failure_count: counter(
                &r,
                "citadel_server_authentication_failure_count",
                "Requests that failed authentication.",
            ),
            csr_parsing_err_count: counter(
                &r,
                "citadel_server_csr_parsing_err_count",
                "CSRs that failed to parse or verify.",
            ),
            root_cert_expiry_timestamp: gauge(
                &r,
                "citadel_server_root_cert_expiry_timestamp",
                "Unix time the root certificate expires.",
            ),
            cert_chain_expiry_timestamp: gauge(
                &r,
                "citadel_server_cert_chain_expiry_timestamp",
                "Unix time the signing chain expires.",
            ),
            reload_success_count: counter(
                &r,
                "meshca_ca_reload_success_count",
                "CA bundles and JWKS files loaded after start.",
            ),
            reload_failure_count: counter(
                &r,
                "meshca_ca_reload_failure_count",
                "CA bundles and JWKS files refused after start; the last good one stays in use.",
            ),
            last_known_good: gauge(
                &r,
                "meshca_ca_last_known_good",
                "1 if the CA in use is the source's current bundle, 0 if a refused bundle is being ignored.",
            ),
            serving_cert_expiry_timestamp: gauge(
                &r,
                "meshca_ca_serving_cert_expiry_timestamp_seconds",
                "Unix time the TLS serving certificate expires (it is renewed at half its life).",
            ),
            signing_cert_expiry: gauge(
                &r,
                "meshca_ca_signing_cert_expiry_timestamp_seconds",
                "Unix time the CA certificate that signs workload certificates expires.",
            ),
            root_expiry: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "meshca_ca_root_cert_expiry_timestamp_seconds",
                        "Unix time each root of the root bundle expires.",
                    ),
                    &["fingerprint", "serial"],
                )
                .expect("metric names are valid"),
            ),
            issuance_duration: registered(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "meshca_ca_issuance_duration_seconds",
                        "Time to issue one certificate.",
                    )
                    .buckets(BUCKETS.to_vec()),
                )
                .expect("the buckets increase"),
            ),
            registry: r,
        }
    }

    /// Records one issuance's duration.
    pub fn observe_issuance(&self, d: std::time::Duration) {
        self.issuance_duration.observe(d.as_secs_f64());
    }

    /// Records the expiry of everything in `ca`: its signing certificate and path, and each root
    /// of its root bundle (roots no longer in it are dropped).
    pub fn record_ca(&self, ca: &LoadedCa) {
        let bundle = ca.bundle();
        let path = bundle.path();
        self.root_cert_expiry_timestamp
            .set(path.root().not_after().unix_timestamp());
        self.cert_chain_expiry_timestamp
            .set(path.not_after().unix_timestamp());
        self.signing_cert_expiry
            .set(bundle.signer().cert().not_after().unix_timestamp());
        self.root_expiry.reset();
        for root in bundle.roots() {
            let (fingerprint, serial) = root_labels(root);
            self.root_expiry
                .with_label_values(&[fingerprint.as_str(), serial.as_str()])
                .set(root.not_after().unix_timestamp());
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        // Encoding into a String fails only on a write error, which a String never has.
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// A root's labels: its SHA-256 fingerprint and serial, in hex with colons.
fn root_labels(c: &Certificate) -> (String, String) {
    (
        hex_colons(&c.sha256_fingerprint()),
        hex_colons(c.x509().raw_serial()),
    )
}

/// Serves `GET /metrics` (and `/`, as before) on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let site = move |path: &str| match path {
        "/metrics" | "/" => Some(meshca_http::Page::metrics(metrics.render())),
        _ => None,
    };
    meshca_http::serve(listener, Arc::new(site), meshca_http::Limits::default()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istiods_names_and_a_histogram_in_the_text_format() {
        let m = Metrics::new();
        m.csr_count.inc();
        m.last_known_good.set(1);
        m.observe_issuance(std::time::Duration::from_micros(300));
        let text = m.render();
        for line in [
            "# TYPE citadel_server_csr_count counter",
            "citadel_server_csr_count 1",
            "citadel_server_success_cert_issuance_count 0",
            "meshca_ca_last_known_good 1",
            "meshca_ca_issuance_duration_seconds_bucket{le=\"0.00025\"} 0",
            "meshca_ca_issuance_duration_seconds_bucket{le=\"0.0005\"} 1",
            "meshca_ca_issuance_duration_seconds_bucket{le=\"+Inf\"} 1",
            "meshca_ca_issuance_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
    }
}
