//! The TLS side of the server: a serving certificate issued by the CA in use (swapped when the CA
//! reloads), and client certificates verified against the CA's current roots, optional as in istiod.

use std::sync::Arc;

use arc_swap::ArcSwap;
use meshca_pki::{KeyType, PrivateKey, Subject, WorkloadProfile};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use time::{Duration, OffsetDateTime};

use crate::issuer::LoadedCa;
use crate::metrics::Refusal;

/// istiod's serving names.
pub const ISTIOD_DNS_NAMES: [&str; 3] = [
    "istiod.istio-system.svc",
    "istiod-remote.istio-system.svc",
    "istio-pilot.istio-system.svc",
];

/// How long a serving certificate lives (capped at the CA's end); renewed at half.
pub const SERVING_TTL: Duration = Duration::days(30);

/// The crypto provider: aws-lc-rs, the one crypto library of the tree.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Serving certificate and client verification that can be swapped while connections run.
#[derive(Debug)]
pub struct DynamicTls {
    serving: ArcSwap<CertifiedKey>,
    serving_window: ArcSwap<(OffsetDateTime, OffsetDateTime)>,
    verifier: ArcSwap<Arc<dyn ClientCertVerifier>>,
    dns_names: Vec<String>,
}

/// Why TLS material could not be made.
#[derive(Debug, thiserror::Error)]
#[error("TLS setup: {0}")]
pub struct TlsError(String);

impl DynamicTls {
    /// Serving material for `ca`, with the given DNS names.
    pub fn new(
        ca: &LoadedCa,
        dns_names: Vec<String>,
        now: OffsetDateTime,
    ) -> Result<Arc<Self>, TlsError> {
        let (key, window) = serving_key(ca, &dns_names, now)?;
        let verifier = client_verifier(ca)?;
        Ok(Arc::new(DynamicTls {
            serving: ArcSwap::from_pointee(key),
            serving_window: ArcSwap::from_pointee(window),
            verifier: ArcSwap::from_pointee(verifier),
            dns_names,
        }))
    }

    /// Re-issues the serving certificate and client roots from `ca`.
    pub fn update(&self, ca: &LoadedCa, now: OffsetDateTime) -> Result<(), TlsError> {
        let (key, window) = serving_key(ca, &self.dns_names, now)?;
        let verifier = client_verifier(ca)?;
        self.serving.store(Arc::new(key));
        self.serving_window.store(Arc::new(window));
        self.verifier.store(Arc::new(verifier));
        Ok(())
    }

    /// When the serving certificate in use expires.
    pub fn serving_not_after(&self) -> OffsetDateTime {
        self.serving_window.load().1
    }

    /// Whether the serving certificate is past half its life.
    pub fn serving_due(&self, now: OffsetDateTime) -> bool {
        let w = self.serving_window.load();
        meshca_pki::rotation::is_due(w.0, w.1, 0.5, now)
    }

    /// A rustls server configuration using this material, speaking HTTP/2 for gRPC.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError(e.to_string()))?
            .with_client_cert_verifier(Arc::new(SwappableVerifier(self.clone())))
            .with_cert_resolver(Arc::new(SwappableCert(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

/// The reason a failed handshake is counted under; `None` when the client went away or spoke
/// no TLS, which refuses nothing. A hello of TLS 1.0 or 1.1 carries no `signature_algorithms`
/// extension (TLS 1.2 brought it, and every 1.2 and 1.3 client sends it): rustls refuses it for
/// that, with a `handshake_failure` alert, before it looks at the version, and it counts as
/// [`Refusal::TlsVersion`].
pub fn handshake_refusal(error: &std::io::Error) -> Option<Refusal> {
    use rustls::{CertificateError, PeerIncompatible};
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::PeerIncompatible(
            PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::SignatureAlgorithmsExtensionRequired,
        ) => Refusal::TlsVersion,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            Refusal::ClientCertUntrusted
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => Refusal::ClientCertExpired,
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            Refusal::ClientCertInvalid
        }
        rustls::Error::PeerIncompatible(_)
        | rustls::Error::PeerMisbehaved(_)
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InvalidMessage(_) => Refusal::TlsHandshake,
        _ => return None,
    })
}

fn serving_key(
    ca: &LoadedCa,
    dns_names: &[String],
    now: OffsetDateTime,
) -> Result<(CertifiedKey, (OffsetDateTime, OffsetDateTime)), TlsError> {
    let key = PrivateKey::generate(KeyType::EcdsaP256).map_err(|e| TlsError(e.to_string()))?;
    let signer = ca.bundle().signer();
    let not_before = now - crate::issuer::BACKDATE;
    let not_after = (now + SERVING_TTL).min(signer.cert().not_after());
    let profile = WorkloadProfile {
        subject: Subject::default(),
        not_before,
        not_after,
        uris: Vec::new(),
        dns_names: dns_names.to_vec(),
        ips: Vec::new(),
        key_usage_critical: true,
    };
    let cert = signer
        .issue_workload(&profile, &key, "serving certificate")
        .map_err(|e| TlsError(e.to_string()))?;
    let mut chain = vec![cert.der().clone()];
    if !ca.bundle().roots().contains(signer.cert()) {
        chain.push(signer.cert().der().clone());
    }
    chain.extend(ca.bundle().intermediates().iter().map(|c| c.der().clone()));
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8_der()));
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError(e.to_string()))?;
    Ok((CertifiedKey::new(chain, signing), (not_before, not_after)))
}

fn client_verifier(ca: &LoadedCa) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for r in ca.bundle().roots() {
        roots
            .add(r.der().clone())
            .map_err(|e| TlsError(format!("root {}: {e}", r.origin())))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError(e.to_string()))
}

#[derive(Debug)]
struct SwappableCert(Arc<DynamicTls>);

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.serving.load_full())
    }
}

#[derive(Debug)]
struct SwappableVerifier(Arc<DynamicTls>);

impl ClientCertVerifier for SwappableVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; the roots change at run time, so none are sent.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // A chain signed by another root of the same name as one of ours fails on its
        // signature; to the client, as to the metrics, its issuer is unknown (an `unknown_ca`
        // alert rather than `decrypt_error`).
        self.0
            .verifier
            .load()
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature) => {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                }
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .verifier
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .verifier
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.verifier.load().supported_verify_schemes()
    }
}
