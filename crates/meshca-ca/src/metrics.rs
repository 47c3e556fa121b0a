//! Prometheus metrics with istiod's `citadel_server_*` names, plus reload, latency and expiry
//! figures and every refusal by its [`Refusal`] reason, in one registry; [`serve`] puts them at
//! `/metrics` on the operations endpoint ([`meshca_http`]).

use std::sync::Arc;

use meshca_pki::Certificate;
use meshca_pki::describe::hex_colons;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio::net::TcpListener;

use crate::issuer::LoadedCa;

/// Upper bounds of the issuance latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Why a request, or the TLS handshake before it, was refused: the `reason` label of
/// `meshca_ca_refused_requests_total`. Every refusal counts once, under the first check that
/// failed; the set is fixed, and every reason is exported from the start at 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The TLS client offered no version above 1.1 (`tls_version`).
    TlsVersion,
    /// The TLS handshake failed otherwise: no common cipher suite or group, or a malformed
    /// message (`tls_handshake`).
    TlsHandshake,
    /// The client certificate does not chain to a root of the CA in use: another mesh's root,
    /// or a self-made one (`client_cert_untrusted`).
    ClientCertUntrusted,
    /// The client certificate has expired or is not valid yet (`client_cert_expired`).
    ClientCertExpired,
    /// The client certificate cannot be used otherwise: unreadable, not for client
    /// authentication, or without a SPIFFE ID (`client_cert_invalid`).
    ClientCertInvalid,
    /// The caller's identity is in another trust domain (`foreign_trust_domain`).
    ForeignTrustDomain,
    /// The request names a cluster this CA does not serve (`cluster_not_served`).
    ClusterNotServed,
    /// Neither a client certificate nor a bearer token (`no_credential`).
    NoCredential,
    /// The token is not a compact JWS, is too long, or the `authorization` value is not
    /// `Bearer <token>` (`token_malformed`).
    TokenMalformed,
    /// The token's algorithm is `none`: it carries no signature (`token_unsigned`).
    TokenUnsigned,
    /// The token's algorithm is neither ES256 nor RS256 (`token_algorithm`).
    TokenAlgorithm,
    /// No configured issuer or API server vouches for the token's issuer, another cluster's
    /// for one (`token_issuer`).
    TokenIssuer,
    /// The token's issuer has no key of the token's key id or algorithm (`token_unknown_key`).
    TokenUnknownKey,
    /// The signature is not the issuer's over this header and payload: a forged key id, or a
    /// payload changed after signing (`token_signature`).
    TokenSignature,
    /// The token is for another audience (`token_audience`).
    TokenAudience,
    /// The token has expired (`token_expired`).
    TokenExpired,
    /// The token is not valid yet (`token_not_yet_valid`).
    TokenNotYetValid,
    /// A claim is missing or unusable, or the token is not a service account's
    /// (`token_claims`).
    TokenClaims,
    /// Kubernetes' TokenReview did not authenticate the token (`token_review`).
    TokenReview,
    /// The API server that vouches for the token could not be asked (`kube_unavailable`).
    KubeUnavailable,
    /// The CSR does not parse or its signature does not verify (`csr_invalid`).
    CsrInvalid,
    /// The CSR asks for a name other than the caller's identity (`csr_identity_mismatch`).
    CsrIdentityMismatch,
    /// The request asks to impersonate another identity (`impersonation`).
    Impersonation,
    /// The requested lifetime is above the maximum; it is refused, not shortened
    /// (`ttl_above_max`).
    TtlAboveMax,
    /// The request is larger than [`crate::server::MAX_REQUEST_BYTES`] (`request_too_large`).
    RequestTooLarge,
}

impl Refusal {
    /// Every reason, in the order of the documentation.
    pub const ALL: [Refusal; 25] = [
        Refusal::TlsVersion,
        Refusal::TlsHandshake,
        Refusal::ClientCertUntrusted,
        Refusal::ClientCertExpired,
        Refusal::ClientCertInvalid,
        Refusal::ForeignTrustDomain,
        Refusal::ClusterNotServed,
        Refusal::NoCredential,
        Refusal::TokenMalformed,
        Refusal::TokenUnsigned,
        Refusal::TokenAlgorithm,
        Refusal::TokenIssuer,
        Refusal::TokenUnknownKey,
        Refusal::TokenSignature,
        Refusal::TokenAudience,
        Refusal::TokenExpired,
        Refusal::TokenNotYetValid,
        Refusal::TokenClaims,
        Refusal::TokenReview,
        Refusal::KubeUnavailable,
        Refusal::CsrInvalid,
        Refusal::CsrIdentityMismatch,
        Refusal::Impersonation,
        Refusal::TtlAboveMax,
        Refusal::RequestTooLarge,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::TlsVersion => "tls_version",
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::ClientCertUntrusted => "client_cert_untrusted",
            Refusal::ClientCertExpired => "client_cert_expired",
            Refusal::ClientCertInvalid => "client_cert_invalid",
            Refusal::ForeignTrustDomain => "foreign_trust_domain",
            Refusal::ClusterNotServed => "cluster_not_served",
            Refusal::NoCredential => "no_credential",
            Refusal::TokenMalformed => "token_malformed",
            Refusal::TokenUnsigned => "token_unsigned",
            Refusal::TokenAlgorithm => "token_algorithm",
            Refusal::TokenIssuer => "token_issuer",
            Refusal::TokenUnknownKey => "token_unknown_key",
            Refusal::TokenSignature => "token_signature",
            Refusal::TokenAudience => "token_audience",
            Refusal::TokenExpired => "token_expired",
            Refusal::TokenNotYetValid => "token_not_yet_valid",
            Refusal::TokenClaims => "token_claims",
            Refusal::TokenReview => "token_review",
            Refusal::KubeUnavailable => "kube_unavailable",
            Refusal::CsrInvalid => "csr_invalid",
            Refusal::CsrIdentityMismatch => "csr_identity_mismatch",
            Refusal::Impersonation => "impersonation",
            Refusal::TtlAboveMax => "ttl_above_max",
            Refusal::RequestTooLarge => "request_too_large",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

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
    refused: IntCounterVec,
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

/// The refusal counter, every reason present at 0.
fn refused(r: &Registry) -> IntCounterVec {
    let c = registered(
        r,
        IntCounterVec::new(
            Opts::new(
                "meshca_ca_refused_requests_total",
                "Requests and TLS handshakes refused, by the first check that failed.",
            ),
            &["reason"],
        )
        .expect("metric names are valid"),
    );
    for reason in Refusal::ALL {
        c.with_label_values(&[reason.label()]);
    }
    c
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
            refused: refused(&r),
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

    /// Counts one refusal.
    pub fn refused(&self, reason: Refusal) {
        self.refused.with_label_values(&[reason.label()]).inc();
    }

    /// How many refusals were counted for `reason`.
    pub fn refused_count(&self, reason: Refusal) -> u64 {
        self.refused.with_label_values(&[reason.label()]).get()
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

    #[test]
    fn every_refusal_reason_is_exported_from_the_start_and_counted_alone() {
        let m = Metrics::new();
        m.refused(Refusal::TokenUnsigned);
        let text = m.render();
        let labels: std::collections::BTreeSet<_> =
            Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len(), "labels are distinct");
        for reason in Refusal::ALL {
            let n = u64::from(reason == Refusal::TokenUnsigned);
            let line = format!("meshca_ca_refused_requests_total{{reason=\"{reason}\"}} {n}");
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
            assert_eq!(m.refused_count(reason), n);
        }
    }
}
