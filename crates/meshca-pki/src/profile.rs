//! Certificate profiles as data, and the signer that turns a profile plus a public key into a
//! certificate.
//!
//! The profiles reproduce what Istio's `tools/certs` Makefiles put in a root, an intermediate
//! and a workload certificate (subjects, basicConstraints, keyUsage, SANs, key identifiers,
//! SHA-256/384 signatures); the leaf profile also covers what istiod's CA issues.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::cert::Certificate;
use crate::error::PkiError;
use crate::key::PrivateKey;

/// The distinguished name fields meshca sets, written in the Makefile's order: O, CN, L.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// `O=`
    pub organization: Option<String>,
    /// `CN=`
    pub common_name: Option<String>,
    /// `L=`
    pub locality: Option<String>,
}

impl Subject {
    fn to_dn(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        if let Some(o) = &self.organization {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        if let Some(cn) = &self.common_name {
            dn.push(DnType::CommonName, cn.as_str());
        }
        if let Some(l) = &self.locality {
            dn.push(DnType::LocalityName, l.as_str());
        }
        dn
    }
}

/// A validity window of `days` starting at `now`, as `openssl x509 -days` makes it.
/// `field` names the setting in errors.
pub fn days_from(
    now: OffsetDateTime,
    days: i64,
    field: &str,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    if days <= 0 {
        return Err(PkiError::BadLifetime {
            field: field.to_owned(),
            days,
        });
    }
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let end = now
        .checked_add(Duration::days(days))
        .filter(|end| end.year() <= 9999)
        .ok_or_else(|| PkiError::BadLifetime {
            field: field.to_owned(),
            days,
        })?;
    Ok((now, end))
}

/// A CA certificate: a root (self-signed, no path limit) or an intermediate.
#[derive(Clone, Debug)]
pub struct CaProfile {
    /// The subject name.
    pub subject: Subject,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// `pathlen` in basicConstraints; `None` for no limit.
    pub path_len: Option<u8>,
    /// DNS SANs (the Makefile puts `istiod.istio-system.svc` on intermediates).
    pub dns_names: Vec<String>,
}

impl CaProfile {
    fn params(&self, subject_key: &[u8]) -> Result<CertificateParams, PkiError> {
        let mut p = base_params(&self.subject, self.not_before, self.not_after, subject_key);
        p.is_ca = IsCa::Ca(match self.path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::ContentCommitment,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
        ];
        for name in &self.dns_names {
            p.subject_alt_names.push(dns_san(name)?);
        }
        Ok(p)
    }

    /// Makes a self-signed root with `key`.
    pub fn self_signed(&self, key: &PrivateKey, origin: &str) -> Result<Certificate, PkiError> {
        let params = self.params(key.public_key_raw())?;
        let cert = params.self_signed(key).map_err(|e| PkiError::Crypto {
            what: format!("signing {origin}"),
            reason: e.to_string(),
        })?;
        Certificate::from_der(cert.der().to_vec(), origin)
    }
}

/// An end-entity certificate: a Makefile workload certificate or a certificate istiod's CA issues.
#[derive(Clone, Debug)]
pub struct WorkloadProfile {
    /// The subject name; empty for istiod-style leaves (the SAN extension is then critical).
    pub subject: Subject,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// URI SANs, such as a SPIFFE ID.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Whether keyUsage is marked critical (Go's CA marks it; the Makefile's openssl config does not).
    pub key_usage_critical: bool,
}

impl WorkloadProfile {
    fn params(&self, subject_key: &[u8]) -> Result<CertificateParams, PkiError> {
        let mut p = base_params(&self.subject, self.not_before, self.not_after, subject_key);
        p.is_ca = IsCa::ExplicitNoCa;
        // digitalSignature (bit 0) and keyEncipherment (bit 2): BIT STRING 05 A0.
        let mut ku =
            CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x02, 0x05, 0xa0]);
        ku.set_criticality(self.key_usage_critical);
        p.custom_extensions.push(ku);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        for uri in &self.uris {
            let v = rcgen::string::Ia5String::try_from(uri.as_str()).map_err(|_| {
                PkiError::InvalidName {
                    field: "URI SAN".to_owned(),
                    value: uri.clone(),
                    reason: "not ASCII".to_owned(),
                }
            })?;
            p.subject_alt_names.push(SanType::URI(v));
        }
        for name in &self.dns_names {
            p.subject_alt_names.push(dns_san(name)?);
        }
        for ip in &self.ips {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        Ok(p)
    }
}

fn dns_san(name: &str) -> Result<SanType, PkiError> {
    let v = rcgen::string::Ia5String::try_from(name).map_err(|_| PkiError::InvalidName {
        field: "DNS SAN".to_owned(),
        value: name.to_owned(),
        reason: "not ASCII".to_owned(),
    })?;
    Ok(SanType::DnsName(v))
}

fn base_params(
    subject: &Subject,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    subject_key: &[u8],
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject.to_dn();
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(random_serial());
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(subject_key));
    p
}

/// RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits, as openssl's
/// `subjectKeyIdentifier = hash` computes it.
pub fn key_identifier(public_key_raw: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, public_key_raw)
        .as_ref()
        .to_vec()
}

/// A positive random serial below 2^128, as istiod makes them.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // The system RNG failing is not something a CA can continue from.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        panic!("the system random number generator failed");
    }
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// A CA certificate with its private key, checked to belong together and to be able to sign.
pub struct CaSigner {
    cert: Certificate,
    // The issuer name and key identifier are read from the certificate once, here, so that
    // issuing does not parse the CA certificate again.
    issuer: Issuer<'static, PrivateKey>,
}

impl CaSigner {
    /// Pairs a CA certificate with its key. Fails if the key is not the certificate's, or the
    /// certificate may not sign certificates (not a CA, or keyUsage without keyCertSign).
    pub fn new(cert: Certificate, key: PrivateKey, key_origin: &str) -> Result<Self, PkiError> {
        if !cert.matches_key(&key) {
            return Err(PkiError::KeyMismatch {
                key: key_origin.to_owned(),
                cert: cert.origin().to_owned(),
            });
        }
        if !cert.is_ca() {
            return Err(PkiError::NotACa {
                origin: cert.origin().to_owned(),
                reason: "basicConstraints does not say CA:TRUE".to_owned(),
            });
        }
        if !cert.can_sign_certificates() {
            return Err(PkiError::NotACa {
                origin: cert.origin().to_owned(),
                reason: "keyUsage does not include keyCertSign".to_owned(),
            });
        }
        // The issuer name must equal the signing certificate's subject byte for byte (string
        // types included), so it is taken from the certificate rather than rebuilt.
        let issuer =
            Issuer::from_ca_cert_der(cert.der(), key).map_err(|e| PkiError::BadCertificate {
                origin: cert.origin().to_owned(),
                reason: e.to_string(),
            })?;
        Ok(CaSigner { cert, issuer })
    }

    /// The signing certificate.
    pub fn cert(&self) -> &Certificate {
        &self.cert
    }

    /// The signing key.
    pub fn key(&self) -> &PrivateKey {
        self.issuer.key()
    }

    /// Signs an intermediate CA certificate for `subject_key`.
    pub fn issue_ca(
        &self,
        profile: &CaProfile,
        subject_key: &impl PublicKeyData,
        origin: &str,
    ) -> Result<Certificate, PkiError> {
        let mut params = profile.params(subject_key.der_bytes())?;
        params.use_authority_key_identifier_extension = true;
        self.sign(params, subject_key, origin)
    }

    /// Signs an end-entity certificate for `subject_key`.
    pub fn issue_workload(
        &self,
        profile: &WorkloadProfile,
        subject_key: &impl PublicKeyData,
        origin: &str,
    ) -> Result<Certificate, PkiError> {
        let der = self.issue_workload_der(profile, subject_key, origin)?;
        Certificate::from_der(der, origin)
    }

    /// Signs an end-entity certificate and returns its DER without parsing it back: the CA's
    /// request path, where the certificate only goes out as PEM.
    pub fn issue_workload_der(
        &self,
        profile: &WorkloadProfile,
        subject_key: &impl PublicKeyData,
        origin: &str,
    ) -> Result<Vec<u8>, PkiError> {
        let mut params = profile.params(subject_key.der_bytes())?;
        params.use_authority_key_identifier_extension = true;
        self.sign_der(params, subject_key, origin)
    }

    fn sign(
        &self,
        params: CertificateParams,
        subject_key: &impl PublicKeyData,
        origin: &str,
    ) -> Result<Certificate, PkiError> {
        Certificate::from_der(self.sign_der(params, subject_key, origin)?, origin)
    }

    fn sign_der(
        &self,
        params: CertificateParams,
        subject_key: &impl PublicKeyData,
        origin: &str,
    ) -> Result<Vec<u8>, PkiError> {
        let cert = params
            .signed_by(subject_key, &self.issuer)
            .map_err(|e| PkiError::Crypto {
                what: format!("signing {origin}"),
                reason: e.to_string(),
            })?;
        Ok(cert.der().to_vec())
    }
}

impl std::fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSigner")
            .field("cert", &self.cert)
            .field("key", self.key())
            .finish()
    }
}
