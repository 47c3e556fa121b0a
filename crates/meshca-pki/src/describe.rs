//! Plain descriptions of PEM material for `meshca inspect`: every certificate, CSR and key in a
//! file, in order. Keys are described by type and size only; their content is never read out.

use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::cert::Certificate;
use crate::error::{PkiError, show_time};
use crate::key::PrivateKey;
use crate::pem::{self, Kind};

/// One item found in a PEM file.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Item {
    /// A certificate.
    Certificate(Box<CertificateInfo>),
    /// A certificate signing request.
    CertificateRequest(CsrInfo),
    /// A private key: type and size only.
    PrivateKey(KeyInfo),
    /// A section meshca does not describe (public key, CRL, ...).
    Other {
        /// the position in the file, from 1
        index: usize,
    },
}

/// A public key's algorithm and size.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct KeyInfo {
    /// the position in the file, from 1
    pub index: usize,
    /// `RSA`, `EC` or the algorithm's OID
    pub algorithm: String,
    /// modulus bits for RSA, curve bits for EC
    pub bits: usize,
    /// the named curve for EC keys
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curve: Option<String>,
}

/// A subject alternative name.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct San {
    /// `DNS`, `URI`, `IP`, `email` or `other`
    #[serde(rename = "type")]
    pub kind: String,
    /// its value
    pub value: String,
    /// whether it is a SPIFFE ID
    pub spiffe: bool,
}

/// What `meshca inspect` shows of a certificate.
#[derive(Debug, Serialize)]
pub struct CertificateInfo {
    /// the position in the file, from 1
    pub index: usize,
    /// subject DN
    pub subject: String,
    /// issuer DN
    pub issuer: String,
    /// serial number, hex bytes separated by colons
    pub serial: String,
    /// start of validity, RFC 3339
    pub not_before: String,
    /// end of validity, RFC 3339
    pub not_after: String,
    /// seconds from `now` until notAfter (negative once expired)
    pub seconds_left: i64,
    /// the same for people: "3649 days left", "expired 2 days ago", "not yet valid"
    pub remaining: String,
    /// the public key
    pub key: KeyInfo,
    /// the signature algorithm
    pub signature_algorithm: String,
    /// basicConstraints CA flag
    pub is_ca: bool,
    /// basicConstraints pathlen
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_len: Option<u32>,
    /// keyUsage names, openssl's spelling
    pub key_usage: Vec<String>,
    /// whether keyUsage is critical
    pub key_usage_critical: bool,
    /// extendedKeyUsage names
    pub extended_key_usage: Vec<String>,
    /// subject alternative names
    pub sans: Vec<San>,
    /// the SPIFFE IDs among the SANs
    pub spiffe_ids: Vec<String>,
    /// subjectKeyIdentifier, hex with colons
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_key_id: Option<String>,
    /// authorityKeyIdentifier key id, hex with colons
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority_key_id: Option<String>,
    /// whether issuer and subject are the same name
    pub self_issued: bool,
    /// SHA-256 of the DER, hex with colons
    pub sha256_fingerprint: String,
}

/// What `meshca inspect` shows of a CSR.
#[derive(Debug, Serialize)]
pub struct CsrInfo {
    /// the position in the file, from 1
    pub index: usize,
    /// subject DN
    pub subject: String,
    /// the public key
    pub key: KeyInfo,
    /// requested subject alternative names
    pub sans: Vec<San>,
    /// whether the CSR's self-signature verifies
    pub signature_valid: bool,
    /// the signature algorithm
    pub signature_algorithm: String,
}

/// Describes every section of PEM text; `now` is used for the time left.
pub fn describe_pem(text: &[u8], origin: &str, now: OffsetDateTime) -> Result<Vec<Item>, PkiError> {
    let sections = pem::parse_sections(text, origin)?;
    let mut out = Vec::with_capacity(sections.len());
    for (i, section) in sections.iter().enumerate() {
        let index = i + 1;
        let at = format!("{origin} (item {index})");
        let item = match section.kind {
            Kind::Certificate => {
                let cert = Certificate::from_der(section.der.clone(), &at)?;
                Item::Certificate(Box::new(describe_certificate(&cert, index, now)))
            }
            Kind::CertificateRequest => {
                Item::CertificateRequest(describe_csr(&section.der, index, &at)?)
            }
            k if k.is_private_key() => {
                let single = pem::encode(
                    match k {
                        Kind::Pkcs1Key => "RSA PRIVATE KEY",
                        Kind::Sec1Key => "EC PRIVATE KEY",
                        _ => "PRIVATE KEY",
                    },
                    &section.der,
                );
                let key = PrivateKey::from_pem(single.as_bytes(), &at)?;
                let mut info = key_info(&key.public_key_spki(), index);
                info.index = index;
                Item::PrivateKey(info)
            }
            _ => Item::Other { index },
        };
        out.push(item);
    }
    Ok(out)
}

/// Describes one certificate.
pub fn describe_certificate(
    cert: &Certificate,
    index: usize,
    now: OffsetDateTime,
) -> CertificateInfo {
    let x = cert.x509();
    let mut info = CertificateInfo {
        index,
        subject: cert.subject().to_owned(),
        issuer: cert.issuer().to_owned(),
        serial: hex_colons(x.raw_serial()),
        not_before: show_time(cert.not_before()),
        not_after: show_time(cert.not_after()),
        seconds_left: (cert.not_after() - now).whole_seconds(),
        remaining: remaining(cert.not_before(), cert.not_after(), now),
        key: key_info(x.public_key().raw, index),
        signature_algorithm: cert.signature_algorithm().to_owned(),
        is_ca: cert.is_ca(),
        path_len: cert.path_len(),
        key_usage: Vec::new(),
        key_usage_critical: false,
        extended_key_usage: Vec::new(),
        sans: Vec::new(),
        spiffe_ids: Vec::new(),
        subject_key_id: None,
        authority_key_id: None,
        self_issued: cert.is_self_issued(),
        sha256_fingerprint: hex_colons(&cert.sha256_fingerprint()),
    };
    for ext in x.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::KeyUsage(ku) => {
                info.key_usage_critical = ext.critical;
                let names = [
                    (ku.digital_signature(), "Digital Signature"),
                    (ku.non_repudiation(), "Non Repudiation"),
                    (ku.key_encipherment(), "Key Encipherment"),
                    (ku.data_encipherment(), "Data Encipherment"),
                    (ku.key_agreement(), "Key Agreement"),
                    (ku.key_cert_sign(), "Certificate Sign"),
                    (ku.crl_sign(), "CRL Sign"),
                    (ku.encipher_only(), "Encipher Only"),
                    (ku.decipher_only(), "Decipher Only"),
                ];
                info.key_usage = names
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| (*n).to_owned())
                    .collect();
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let mut names = Vec::new();
                if eku.any {
                    names.push("Any Extended Key Usage".to_owned());
                }
                if eku.server_auth {
                    names.push("TLS Web Server Authentication".to_owned());
                }
                if eku.client_auth {
                    names.push("TLS Web Client Authentication".to_owned());
                }
                if eku.code_signing {
                    names.push("Code Signing".to_owned());
                }
                if eku.email_protection {
                    names.push("E-mail Protection".to_owned());
                }
                if eku.time_stamping {
                    names.push("Time Stamping".to_owned());
                }
                if eku.ocsp_signing {
                    names.push("OCSP Signing".to_owned());
                }
                names.extend(eku.other.iter().map(|o| o.to_id_string()));
                info.extended_key_usage = names;
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                info.sans = san.general_names.iter().map(describe_name).collect();
            }
            ParsedExtension::SubjectKeyIdentifier(k) => info.subject_key_id = Some(hex_colons(k.0)),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                info.authority_key_id = a.key_identifier.as_ref().map(|k| hex_colons(k.0));
            }
            _ => {}
        }
    }
    info.spiffe_ids = info
        .sans
        .iter()
        .filter(|s| s.spiffe)
        .map(|s| s.value.clone())
        .collect();
    info
}

fn describe_csr(der: &[u8], index: usize, origin: &str) -> Result<CsrInfo, PkiError> {
    let (_, csr) = X509CertificationRequest::from_der(der).map_err(|e| PkiError::BadCsr {
        origin: origin.to_owned(),
        reason: e.to_string(),
    })?;
    let info = &csr.certification_request_info;
    let mut sans = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                sans.extend(san.general_names.iter().map(describe_name));
            }
        }
    }
    Ok(CsrInfo {
        index,
        subject: info.subject.to_string(),
        key: key_info(info.subject_pki.raw, index),
        sans,
        signature_valid: csr.verify_signature().is_ok(),
        signature_algorithm: signature_algorithm_name(&csr.signature_algorithm.algorithm),
    })
}

fn describe_name(name: &GeneralName<'_>) -> San {
    let (kind, value) = match name {
        GeneralName::DNSName(d) => ("DNS", (*d).to_owned()),
        GeneralName::URI(u) => ("URI", (*u).to_owned()),
        GeneralName::RFC822Name(e) => ("email", (*e).to_owned()),
        GeneralName::IPAddress(b) => ("IP", ip_text(b)),
        other => ("other", other.to_string()),
    };
    San {
        spiffe: kind == "URI" && value.starts_with("spiffe://"),
        kind: kind.to_owned(),
        value,
    }
}

fn ip_text(b: &[u8]) -> String {
    match b.len() {
        4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => hex_colons(b),
    }
}

fn key_info(spki_der: &[u8], index: usize) -> KeyInfo {
    let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(spki_der) else {
        return KeyInfo {
            index,
            algorithm: "unreadable".to_owned(),
            bits: 0,
            curve: None,
        };
    };
    let oid = spki.algorithm.algorithm.to_id_string();
    let bits = spki.parsed().map(|k| k.key_size()).unwrap_or(0);
    match oid.as_str() {
        "1.2.840.113549.1.1.1" => KeyInfo {
            index,
            algorithm: "RSA".to_owned(),
            bits,
            curve: None,
        },
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|c| match c.to_id_string().as_str() {
                    "1.2.840.10045.3.1.7" => "P-256".to_owned(),
                    "1.3.132.0.34" => "P-384".to_owned(),
                    "1.3.132.0.35" => "P-521".to_owned(),
                    other => other.to_owned(),
                });
            KeyInfo {
                index,
                algorithm: "EC".to_owned(),
                bits,
                curve,
            }
        }
        "1.3.101.112" => KeyInfo {
            index,
            algorithm: "Ed25519".to_owned(),
            bits: 256,
            curve: None,
        },
        _ => KeyInfo {
            index,
            algorithm: oid,
            bits,
            curve: None,
        },
    }
}

/// openssl's name for a signature algorithm OID.
pub fn signature_algorithm_name(oid: &Oid<'_>) -> String {
    match oid.to_id_string().as_str() {
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        "1.2.840.113549.1.1.5" => "sha1WithRSAEncryption",
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "rsassaPss",
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1",
        "1.3.101.112" => "ED25519",
        other => return other.to_owned(),
    }
    .to_owned()
}

fn remaining(not_before: OffsetDateTime, not_after: OffsetDateTime, now: OffsetDateTime) -> String {
    if now < not_before {
        return format!("not yet valid (starts in {})", span(not_before - now));
    }
    if now > not_after {
        return format!("expired {} ago", span(now - not_after));
    }
    format!("{} left", span(not_after - now))
}

fn span(d: time::Duration) -> String {
    let days = d.whole_days();
    if days >= 2 {
        format!("{days} days")
    } else if d.whole_hours() >= 2 {
        format!("{} hours", d.whole_hours())
    } else {
        format!("{} minutes", d.whole_minutes())
    }
}

/// Hex bytes joined by colons, openssl style (`AB:CD:...`).
pub fn hex_colons(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}
