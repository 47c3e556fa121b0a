//! The fuzz targets of meshca: one function per parser of outside input, each taking the
//! fuzzer's bytes, feeding them to the parser, and asserting what must hold of any answer.
//!
//! cargo-fuzz runs them from `fuzz/` (each target there is a call into this crate); the corpus
//! test runs every committed corpus file and every regression through them on stable, so a
//! crash once found stays fixed in the ordinary test suite.
//!
//! What every target asserts: no panic; every error is one non-empty line, as meshca shows them;
//! and where it is cheap, that what parses writes back out to what parses to the same value.

#![forbid(unsafe_code)]

pub mod input;

use meshca_ca::apiserver::ApiServer;
use meshca_ca::proto::IstioCertificateRequest;
use meshca_pki::bundle::{CA_CRL, CERT_CHAIN};
use meshca_pki::pem::{self, Kind};
use meshca_pki::{CacertsBundle, Certificate, CertificateRequest, Layout, PrivateKey, SpiffeId};
use meshca_token::{Jwks, SigningKey, Verifier};
use meshca_trust::TrustPolicy;
use meshca_verify::check::{BundleSource, CheckOptions};
use meshca_verify::{BundleCerts, ProxySecrets};
use time::OffsetDateTime;

/// A fuzz target: bytes in, a panic if something that must hold does not.
pub type Target = fn(&[u8]);

/// Every target by name; the name is also its `fuzz/fuzz_targets/<name>.rs` and its corpus
/// folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("pem", pem),
    ("key", key),
    ("cert", cert),
    ("csr", csr),
    ("cacerts", cacerts),
    ("der", der),
    ("policy", policy),
    ("jwt", jwt),
    ("grpc", grpc),
    ("envoy", envoy),
    ("cfssl", cfssl),
    ("tokenreview", tokenreview),
];

/// The time every target checks validity at (2030-01-01T00:00:00Z); the seed corpus is made
/// valid around it, so that the fuzzer gets past the date checks.
pub fn now() -> OffsetDateTime {
    // 2030-01-01T00:00:00Z is in range of OffsetDateTime.
    OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The issuer the `jwt` target trusts, and its seeds' tokens name.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The audience the `jwt` and `tokenreview` targets ask for.
pub const AUDIENCE: &str = "istio-ca";

/// The authenticated caller of the `grpc` target's requests.
pub const CALLER: &str = "spiffe://cluster.local/ns/default/sa/sleep";

/// The statuses the first byte of the `cfssl` and `tokenreview` inputs picks from.
pub const STATUSES: [u16; 8] = [200, 201, 400, 401, 403, 404, 500, 502];

/// Asserts that an error reads as meshca shows errors: one line, not empty.
pub fn assert_one_line(error: &impl std::fmt::Display) {
    let text = error.to_string();
    assert!(!text.trim().is_empty(), "an empty error message");
    assert!(!text.contains('\n'), "an error of several lines: {text:?}");
}

/// PEM sections (`pem::parse_sections`): what parses, written back out, parses to the same
/// sections.
pub fn pem(data: &[u8]) {
    let sections = match pem::parse_sections(data, "fuzz.pem") {
        Ok(s) => s,
        Err(e) => return assert_one_line(&e),
    };
    assert!(!sections.is_empty(), "parse_sections returned no section");
    let known: Vec<_> = sections
        .into_iter()
        .filter(|s| s.kind != Kind::Other)
        .collect();
    if known.is_empty() {
        return;
    }
    let text: String = known
        .iter()
        .map(|s| pem::encode(label(s.kind), &s.der))
        .collect();
    let again = pem::parse_sections(text.as_bytes(), "again.pem")
        .unwrap_or_else(|e| panic!("re-encoded PEM does not parse: {e}"));
    assert_eq!(again, known);
}

fn label(kind: Kind) -> &'static str {
    match kind {
        Kind::Certificate => "CERTIFICATE",
        Kind::CertificateRequest => "CERTIFICATE REQUEST",
        Kind::Pkcs8Key => "PRIVATE KEY",
        Kind::Pkcs1Key => "RSA PRIVATE KEY",
        Kind::Sec1Key => "EC PRIVATE KEY",
        Kind::Other => "OTHER",
    }
}

/// Private keys: the CA's (`PrivateKey::from_pem`) and the token signer's
/// (`SigningKey::from_pem`). A key that parses, written as PKCS#8, parses to the same key.
pub fn key(data: &[u8]) {
    match PrivateKey::from_pem(data, "ca-key.pem") {
        Ok(k) => {
            let again = PrivateKey::from_pem(k.to_pkcs8_pem().as_bytes(), "again.pem")
                .unwrap_or_else(|e| panic!("a key written as PKCS#8 does not parse: {e}"));
            assert_eq!(again.key_type(), k.key_type());
            assert_eq!(again.public_key_spki(), k.public_key_spki());
        }
        Err(e) => assert_one_line(&e),
    }
    match SigningKey::from_pem(data, "sa.key") {
        Ok(k) => assert!(!k.kid().is_empty(), "a signing key without a kid"),
        Err(e) => assert_one_line(&e),
    }
}

/// Certificates, as PEM (`Certificate::all_from_pem`, and `meshca inspect`'s `describe_pem`)
/// and as DER (`Certificate::from_der`). A certificate that parses, written as PEM, parses to
/// the same certificate.
pub fn cert(data: &[u8]) {
    match Certificate::all_from_pem(data, "cert.pem") {
        Ok(certs) => {
            assert!(!certs.is_empty(), "all_from_pem returned no certificate");
            for c in &certs {
                look_at(c);
            }
        }
        Err(e) => assert_one_line(&e),
    }
    match Certificate::from_der(data.to_vec(), "cert.der") {
        Ok(c) => look_at(&c),
        Err(e) => assert_one_line(&e),
    }
    if let Err(e) = meshca_pki::describe::describe_pem(data, "inspect.pem", now()) {
        assert_one_line(&e);
    }
}

fn look_at(c: &Certificate) {
    let again = Certificate::one_from_pem(c.pem().as_bytes(), "again.pem")
        .unwrap_or_else(|e| panic!("a certificate written as PEM does not parse: {e}"));
    assert_eq!(&again, c);
    let _ = (c.extended_key_usages(), c.allows_server_auth());
    let _ = (c.unhandled_critical_extensions(), c.is_valid_at(now()));
    if let Err(e) = c.check_validity(now()) {
        assert_one_line(&e);
    }
    if let Err(e) = c.check_signed_by(c) {
        assert_one_line(&e);
    }
}

/// Certificate signing requests, as PEM and as DER (`CertificateRequest::from_pem`, `from_der`).
pub fn csr(data: &[u8]) {
    if let Err(e) = CertificateRequest::from_pem(data, "csr.pem") {
        assert_one_line(&e);
    }
    if let Err(e) = CertificateRequest::from_der(data, "csr.der") {
        assert_one_line(&e);
    }
}

/// The cacerts loader: a bundle's files (see [`input::files`]) through
/// `CacertsBundle::from_files` (which checks `ca-crl.pem` too), `meshca check`'s `check`, and
/// `meshca verify`'s `BundleCerts::from_files`. A bundle that loads, written in the other
/// layout, loads with the same signing certificate.
pub fn cacerts(data: &[u8]) {
    let files = input::files(data);
    match CacertsBundle::from_files(&files, "cluster1", now()) {
        Ok(b) => {
            let other = match b.layout() {
                Layout::Istio => Layout::Tls,
                Layout::Tls => Layout::Istio,
            };
            let again = CacertsBundle::from_files(&b.to_layout(other), "again", now())
                .unwrap_or_else(|e| panic!("a bundle written in the other layout fails: {e}"));
            assert_eq!(again.signer().cert(), b.signer().cert());
        }
        Err(e) => assert_one_line(&e),
    }
    // The CRL check on its own, since the loader reaches it only when everything else passed.
    if let (Some(crl), Some(chain)) = (files.get(CA_CRL), files.get(CERT_CHAIN))
        && let Ok(chain) = Certificate::all_from_pem(chain, "cluster1/cert-chain.pem")
        && let Err(e) =
            meshca_pki::crl::check_crls(crl, "cluster1/ca-crl.pem", &chain, "cert-chain.pem")
    {
        assert_one_line(&e);
    }
    let source = BundleSource {
        dir: "cluster1".to_owned(),
        files: Ok(files.clone()),
    };
    let report = meshca_verify::check::check(&[source], &CheckOptions::default(), now());
    assert_eq!(report.bundles.len(), 1);
    if let Err(e) = BundleCerts::from_files("cluster1", &files) {
        assert_one_line(&e);
    }
}

/// The hand-written DER reader of `meshca check` (RSA keys meshca does not sign with): a size
/// it reads is of a modulus that fits in the input.
pub fn der(data: &[u8]) {
    for bits in meshca_verify::check::rsa_key_bits(data)
        .into_iter()
        .flatten()
    {
        assert!(
            bits > 0 && bits <= data.len() * 8,
            "{bits} bits from {} bytes",
            data.len()
        );
    }
}

/// RootTrustPolicy documents: as YAML (`TrustPolicy::from_yaml`, as `meshca trust` reads a
/// file), and as the JSON object an API server returns (`TrustPolicy::from_resource`).
pub fn policy(data: &[u8]) {
    // The policy file is read as `meshca trust` reads it.
    let text = String::from_utf8_lossy(data);
    if let Err(e) = TrustPolicy::from_yaml(&text, "policy.yaml") {
        assert_one_line(&e);
    }
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let str_at = |pointer: &str| doc.pointer(pointer).and_then(|v| v.as_str()).unwrap_or("");
    let spec = doc.get("spec").cloned().unwrap_or(serde_json::Value::Null);
    if let Err(e) = TrustPolicy::from_resource(
        str_at("/apiVersion"),
        str_at("/metadata/name"),
        str_at("/metadata/namespace"),
        &spec,
        "RootTrustPolicy gloo-mesh/mesh",
    ) {
        assert_one_line(&e);
    }
}

/// Service-account tokens: the issuer's JWKS (`Jwks::from_json`) and a bearer token checked
/// against it (`Verifier::verify`), the two parts of the input (see [`input::split`]). A JWKS
/// that parses, written out, parses to the same keys; a token that verifies is for the
/// audience and not expired.
pub fn jwt(data: &[u8]) {
    let [jwks, token] = input::split(data);
    let jwks = match Jwks::from_json(jwks, "jwks.json") {
        Ok(j) => {
            let again = Jwks::from_json(j.to_json().as_bytes(), "again.json")
                .unwrap_or_else(|e| panic!("a JWKS written out does not parse: {e}"));
            assert_eq!(again, j);
            j
        }
        Err(e) => {
            assert_one_line(&e);
            Jwks::default()
        }
    };
    let verifier = Verifier::new(AUDIENCE).trust(ISSUER, jwks);
    match verifier.verify(&String::from_utf8_lossy(token), now()) {
        Ok(t) => {
            assert!(t.audiences().iter().any(|a| a == AUDIENCE));
            assert!(
                t.expires_at()
                    .saturating_add(meshca_token::CLOCK_SKEW_LEEWAY)
                    > now()
            );
            if let Ok(td) = meshca_pki::TrustDomain::new("cluster.local")
                && let Err(e) = t.spiffe_id(&td)
            {
                assert_one_line(&e);
            }
        }
        Err(e) => assert_one_line(&e),
    }
}

/// Istio's CreateCertificate request: the protobuf decoded as the gRPC server decodes it, then
/// read for an authenticated caller (`meshca_ca::service::read_request`). A request that is
/// accepted asks for the caller alone.
pub fn grpc(data: &[u8]) {
    use prost::Message;
    let Ok(request) = IstioCertificateRequest::decode(data) else {
        return;
    };
    let Ok(caller) = CALLER.parse::<SpiffeId>() else {
        return;
    };
    match meshca_ca::service::read_request(&request, &caller) {
        Ok(csr) => {
            assert!(csr.uris().iter().all(|u| u == CALLER));
            assert!(csr.other_sans().is_empty());
        }
        Err(e) => assert_one_line(&e),
    }
}

/// Envoy and istioctl secret dumps (`ProxySecrets::from_dump`), and the `verify envoy-secrets`
/// report on what they hold.
pub fn envoy(data: &[u8]) {
    match ProxySecrets::from_dump(data, "sleep.json") {
        Ok(p) => {
            assert!(!p.roots.is_empty() && !p.chain.is_empty());
            let report = meshca_verify::envoy_secrets(std::slice::from_ref(&p), now());
            assert!(!report.checks.is_empty());
        }
        Err(e) => assert_one_line(&e),
    }
}

/// cfssl's answers to `info` and `sign` (`meshca_trust::cfssl::parse_certificate_answer`): the
/// first byte picks the HTTP status from [`STATUSES`], the rest is the body.
pub fn cfssl(data: &[u8]) {
    use meshca_trust::cfssl::{Endpoint, parse_certificate_answer};
    let (status, body) = status_and_body(data);
    let signer = "cfssl at http://127.0.0.1:8888 (profile intermediate)";
    for endpoint in [Endpoint::Info, Endpoint::Sign] {
        match parse_certificate_answer(signer, endpoint, status, body, "the intermediate") {
            Ok(c) => assert_eq!(c.origin(), "the intermediate"),
            Err(e) => assert_one_line(&e),
        }
    }
}

/// The API server's TokenReview answers (`meshca_ca::tokenreview::read_answer`): the first
/// byte picks the HTTP status from [`STATUSES`] (its bit 3: whether an audience was asked
/// for), the rest is the body. An accepted answer names a service account.
pub fn tokenreview(data: &[u8]) {
    let (status, body) = status_and_body(data);
    let audiences = if data.first().is_some_and(|b| b & 8 != 0) {
        Vec::new()
    } else {
        vec![AUDIENCE.to_owned()]
    };
    let at = ApiServer {
        cluster: Some("cluster1".to_owned()),
        url: "https://127.0.0.1:6443".to_owned(),
    };
    match meshca_ca::tokenreview::read_answer(&at, &audiences, status, body) {
        Ok(id) => {
            assert!(!id.namespace.is_empty() && !id.service_account.is_empty());
        }
        Err(e) => assert_one_line(&e),
    }
}

/// The HTTP status picked by the first byte, and the rest as the body.
fn status_and_body(data: &[u8]) -> (u16, &[u8]) {
    match data.split_first() {
        Some((first, rest)) => (STATUSES[usize::from(*first) % STATUSES.len()], rest),
        None => (STATUSES[0], data),
    }
}
