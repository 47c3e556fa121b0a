//! Certificates as values: DER plus where they came from, with the few parsed facts the rest of
//! meshca decides on (names, validity, CA constraints, keys, SANs).

use std::fmt;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::error::PkiError;
use crate::key::PrivateKey;
use crate::pem::{self, Kind};

/// Netscape Server Gated Crypto, which Go's verifier accepts in place of serverAuth.
const NETSCAPE_SGC: &str = "2.16.840.1.113730.4.1";
/// Microsoft Server Gated Crypto, likewise.
const MICROSOFT_SGC: &str = "1.3.6.1.4.1.311.10.3.3";

/// The extensions Go's `crypto/x509` handles, and so may be critical on a certificate it
/// verifies (`processExtensions` in its parser): keyUsage, basicConstraints, subjectAltName,
/// nameConstraints, cRLDistributionPoints, authorityKeyIdentifier, policyConstraints,
/// extendedKeyUsage, certificatePolicies, policyMappings and inhibitAnyPolicy. Go refuses a
/// critical subjectKeyIdentifier or authorityInfoAccess outright (RFC 5280 forbids marking them
/// critical), so they are not here. subjectAltName and nameConstraints count only for the name
/// forms Go reads (see [`critical_extension_handled`]).
const GO_HANDLED_EXTENSIONS: &[&str] = &[
    "2.5.29.15",
    "2.5.29.19",
    "2.5.29.17",
    "2.5.29.30",
    "2.5.29.31",
    "2.5.29.35",
    "2.5.29.36",
    "2.5.29.37",
    "2.5.29.32",
    "2.5.29.33",
    "2.5.29.54",
];

/// A parsed-once X.509 certificate.
///
/// A value exists only if its DER parsed; the facts below are read at construction.
#[derive(Clone)]
pub struct Certificate {
    der: CertificateDer<'static>,
    origin: String,
    subject: String,
    issuer: String,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    ca: Option<Option<u32>>,
    can_sign_certs: bool,
    public_key_raw: Vec<u8>,
    uris: Vec<String>,
    dns_names: Vec<String>,
    signature_algorithm: String,
}

impl Certificate {
    /// Parses DER. `origin` names the certificate in errors and messages.
    pub fn from_der(der: Vec<u8>, origin: &str) -> Result<Self, PkiError> {
        let bad = |reason: String| PkiError::BadCertificate {
            origin: origin.to_owned(),
            reason,
        };
        let (rest, x509) = X509Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after the certificate".to_owned()));
        }
        let mut ca = None;
        let mut key_usage_cert_sign = None;
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        for ext in x509.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) if bc.ca => ca = Some(bc.path_len_constraint),
                ParsedExtension::KeyUsage(ku) => key_usage_cert_sign = Some(ku.key_cert_sign()),
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(u) => uris.push((*u).to_owned()),
                            GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                            _ => {}
                        }
                    }
                }
                ParsedExtension::ParseError { error } => {
                    return Err(bad(format!("extension {}: {error}", ext.oid)));
                }
                _ => {}
            }
        }
        let signature_algorithm =
            crate::describe::signature_algorithm_name(&x509.signature_algorithm.algorithm);
        let cert = Certificate {
            // Names are shown in messages and logs, one line each.
            subject: crate::error::show_text(&x509.subject().to_string()),
            issuer: crate::error::show_text(&x509.issuer().to_string()),
            subject_raw: x509.subject().as_raw().to_vec(),
            issuer_raw: x509.issuer().as_raw().to_vec(),
            not_before: x509.validity().not_before.to_datetime(),
            not_after: x509.validity().not_after.to_datetime(),
            can_sign_certs: ca.is_some() && key_usage_cert_sign.unwrap_or(true),
            ca,
            public_key_raw: x509.public_key().subject_public_key.data.to_vec(),
            uris,
            dns_names,
            signature_algorithm,
            origin: origin.to_owned(),
            der: CertificateDer::from(Vec::new()),
        };
        Ok(Certificate {
            der: CertificateDer::from(der),
            ..cert
        })
    }

    /// Every certificate in PEM text, in order. Other sections (keys, CSRs) are skipped;
    /// text without any certificate is an error. Certificates are named `origin[i]` when there
    /// are several.
    pub fn all_from_pem(text: &[u8], origin: &str) -> Result<Vec<Self>, PkiError> {
        let sections = pem::parse_sections(text, origin)?;
        let ders: Vec<Vec<u8>> = sections
            .into_iter()
            .filter(|s| s.kind == Kind::Certificate)
            .map(|s| s.der)
            .collect();
        if ders.is_empty() {
            return Err(PkiError::Pem {
                origin: origin.to_owned(),
                reason: "no certificate found".to_owned(),
            });
        }
        let many = ders.len() > 1;
        ders.into_iter()
            .enumerate()
            .map(|(i, der)| {
                let name = if many {
                    format!("{origin}[{}]", i + 1)
                } else {
                    origin.to_owned()
                };
                Certificate::from_der(der, &name)
            })
            .collect()
    }

    /// Exactly one certificate from PEM text: more than one is an error.
    pub fn one_from_pem(text: &[u8], origin: &str) -> Result<Self, PkiError> {
        let mut all = Self::all_from_pem(text, origin)?;
        if all.len() != 1 {
            return Err(PkiError::Pem {
                origin: origin.to_owned(),
                reason: format!("expected one certificate, found {}", all.len()),
            });
        }
        Ok(all.remove(0))
    }

    /// Gives the certificate another name for messages.
    pub fn with_origin(mut self, origin: &str) -> Self {
        origin.clone_into(&mut self.origin);
        self
    }

    /// Where the certificate came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The DER encoding.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The certificate as one PEM section.
    pub fn pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.der)
    }

    /// The parsed certificate, for callers that need more than the facts kept here.
    pub fn x509(&self) -> X509Certificate<'_> {
        // The DER parsed when this value was made and never changes, so parsing again succeeds.
        match X509Certificate::from_der(&self.der) {
            Ok((_, x)) => x,
            Err(e) => unreachable!("certificate DER parsed at construction: {e}"),
        }
    }

    /// The subject, RFC 4514 style, control characters escaped.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The issuer, RFC 4514 style, control characters escaped.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The start of the validity window.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// The end of the validity window.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Whether basicConstraints says CA:TRUE.
    pub fn is_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// The pathlen constraint of a CA (`None` for no limit or not a CA).
    pub fn path_len(&self) -> Option<u32> {
        self.ca.flatten()
    }

    /// A CA whose keyUsage (if present) allows keyCertSign.
    pub fn can_sign_certificates(&self) -> bool {
        self.can_sign_certs
    }

    /// Whether subject and issuer are the same name.
    pub fn is_self_issued(&self) -> bool {
        self.subject_raw == self.issuer_raw
    }

    /// The URI SANs (SPIFFE IDs among them).
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// The DNS SANs.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// The name of the signature algorithm, as openssl prints it.
    pub fn signature_algorithm(&self) -> &str {
        &self.signature_algorithm
    }

    /// Whether the signature uses SHA-1 (or MD5), which Go's verifier, and so Istio, rejects.
    pub fn has_weak_signature(&self) -> bool {
        let s = self.signature_algorithm.to_ascii_lowercase();
        s.contains("sha1") || s.contains("md5")
    }

    /// The extended key usages the certificate lists, by their short names (`serverAuth`,
    /// `clientAuth`, `anyExtendedKeyUsage`, ...; others as dotted OIDs), or `None` when it has no
    /// extendedKeyUsage extension.
    pub fn extended_key_usages(&self) -> Option<Vec<String>> {
        // The DER parsed when this value was made, extensions included, so only a duplicated
        // extension (which x509-parser reports as an error here) can fail: treat it as listed.
        let x509 = self.x509();
        let eku = match x509.extended_key_usage() {
            Ok(Some(e)) => e.value,
            Ok(None) => return None,
            Err(_) => return Some(vec!["(duplicated extendedKeyUsage extension)".to_owned()]),
        };
        let mut names: Vec<String> = [
            (eku.any, "anyExtendedKeyUsage"),
            (eku.server_auth, "serverAuth"),
            (eku.client_auth, "clientAuth"),
            (eku.code_signing, "codeSigning"),
            (eku.email_protection, "emailProtection"),
            (eku.time_stamping, "timeStamping"),
            (eku.ocsp_signing, "OCSPSigning"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| (*n).to_owned())
        .collect();
        names.extend(eku.other.iter().map(|o| o.to_id_string()));
        Some(names)
    }

    /// Whether a Go verifier asking for serverAuth (istiod verifying its `cacerts`, and any Go
    /// TLS client) accepts this certificate on a chain: it has no extendedKeyUsage (or an empty
    /// one), or it lists serverAuth, anyExtendedKeyUsage, or one of the two Server Gated
    /// Crypto usages Go counts as serverAuth.
    pub fn allows_server_auth(&self) -> bool {
        match self.extended_key_usages() {
            None => true,
            Some(names) => {
                names.is_empty()
                    || names.iter().any(|n| {
                        matches!(
                            n.as_str(),
                            "serverAuth" | "anyExtendedKeyUsage" | NETSCAPE_SGC | MICROSOFT_SGC
                        )
                    })
            }
        }
    }

    /// The OIDs of the critical extensions that Go's verifier (and so istiod, and every Go peer
    /// of a workload) does not handle, in the certificate's order.
    pub fn unhandled_critical_extensions(&self) -> Vec<String> {
        self.x509()
            .extensions()
            .iter()
            .filter(|e| e.critical && !critical_extension_handled(e))
            .map(|e| e.oid.to_id_string())
            .collect()
    }

    /// Refuses a certificate with a critical extension that Go's verifier does not handle: RFC
    /// 5280 (section 4.2) says a verifier must then reject the certificate, and Go, BoringSSL
    /// (Envoy) and OpenSSL all do, on every certificate of a chain, the root included.
    pub fn check_critical_extensions(&self) -> Result<(), PkiError> {
        match self.unhandled_critical_extensions().into_iter().next() {
            None => Ok(()),
            Some(oid) => Err(PkiError::UnhandledCriticalExtension {
                origin: self.origin.clone(),
                subject: self.subject.clone(),
                oid,
            }),
        }
    }

    /// Whether `key` is the private half of this certificate's public key.
    pub fn matches_key(&self, key: &PrivateKey) -> bool {
        self.public_key_raw == key.public_key_raw()
    }

    /// Whether the certificate's window contains `now`.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// Checks that `now` is inside the validity window.
    pub fn check_validity(&self, now: OffsetDateTime) -> Result<(), PkiError> {
        if self.is_valid_at(now) {
            Ok(())
        } else {
            Err(PkiError::OutsideValidity {
                origin: self.origin.clone(),
                now,
                not_before: self.not_before,
                not_after: self.not_after,
            })
        }
    }

    /// Checks that `issuer` names and signed this certificate.
    pub fn check_signed_by(&self, issuer: &Certificate) -> Result<(), PkiError> {
        let fail = |reason: String| PkiError::NotSignedBy {
            cert: self.origin.clone(),
            issuer: issuer.origin.clone(),
            reason,
        };
        if self.issuer_raw != issuer.subject_raw {
            return Err(fail(format!(
                "its issuer is \"{}\" but that certificate's subject is \"{}\"",
                self.issuer, issuer.subject
            )));
        }
        let issuer_x509 = issuer.x509();
        self.x509()
            .verify_signature(Some(issuer_x509.public_key()))
            .map_err(|e| fail(format!("signature does not verify ({e})")))
    }

    /// SHA-256 of the DER, the fingerprint openssl prints with `-fingerprint -sha256`.
    pub fn sha256_fingerprint(&self) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for Certificate {}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("origin", &self.origin)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Whether Go's verifier handles a (critical) extension: it is one of
/// [`GO_HANDLED_EXTENSIONS`], and a subjectAltName holds a name Go reads (DNS, email, IP or URI),
/// and a nameConstraints constrains only those forms.
fn critical_extension_handled(ext: &x509_parser::extensions::X509Extension<'_>) -> bool {
    let go_reads = |n: &GeneralName<'_>| {
        matches!(
            n,
            GeneralName::DNSName(_)
                | GeneralName::RFC822Name(_)
                | GeneralName::IPAddress(_)
                | GeneralName::URI(_)
        )
    };
    if !GO_HANDLED_EXTENSIONS.contains(&ext.oid.to_id_string().as_str()) {
        return false;
    }
    match ext.parsed_extension() {
        ParsedExtension::SubjectAlternativeName(san) => san.general_names.iter().any(go_reads),
        ParsedExtension::NameConstraints(nc) => nc
            .permitted_subtrees
            .iter()
            .chain(nc.excluded_subtrees.iter())
            .flatten()
            .all(|t| go_reads(&t.base)),
        _ => true,
    }
}

/// Joins certificates into one PEM text, in order.
pub fn to_pem_bundle<'a>(certs: impl IntoIterator<Item = &'a Certificate>) -> String {
    certs.into_iter().map(Certificate::pem).collect()
}
