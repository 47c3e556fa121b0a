//! Certificate signing requests from workloads: parsed, their self-signature checked, and their
//! public key accepted only if meshca would sign for it (RSA 2048 to 8192 bits, ECDSA P-256/P-384).

use rcgen::{PublicKeyData, SignatureAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::error::PkiError;
use crate::pem::{self, Kind};

/// A CSR whose signature verified. Only its public key and requested SANs are kept: the issued
/// certificate is for the authenticated identity, whatever the CSR's subject says.
#[derive(Clone, Debug)]
pub struct CertificateRequest {
    public_key: rcgen::SubjectPublicKeyInfo,
    uris: Vec<String>,
    other_sans: Vec<String>,
}

impl CertificateRequest {
    /// Reads the first `CERTIFICATE REQUEST` in PEM text. `origin` names it in errors.
    pub fn from_pem(text: &[u8], origin: &str) -> Result<Self, PkiError> {
        let sections = pem::parse_sections(text, origin)?;
        let der = sections
            .into_iter()
            .find(|s| s.kind == Kind::CertificateRequest)
            .ok_or_else(|| PkiError::BadCsr {
                origin: origin.to_owned(),
                reason: "no CERTIFICATE REQUEST section".to_owned(),
            })?
            .der;
        Self::from_der(&der, origin)
    }

    /// Reads a DER CSR.
    pub fn from_der(der: &[u8], origin: &str) -> Result<Self, PkiError> {
        let bad = |reason: String| PkiError::BadCsr {
            origin: origin.to_owned(),
            reason,
        };
        let (rest, csr) =
            X509CertificationRequest::from_der(der).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after the request".to_owned()));
        }
        // The key first: a key meshca refuses (RSA-1024, which the verifier will not check a
        // signature of, included) is named as such, not as a signature that does not verify.
        let spki = &csr.certification_request_info.subject_pki;
        let bits = spki.parsed().map(|k| k.key_size()).unwrap_or(0);
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
            .map_err(|_| bad("unsupported public key type".to_owned()))?;
        let alg = public_key.algorithm();
        let rsa = alg == &rcgen::PKCS_RSA_SHA256;
        let ec = alg == &rcgen::PKCS_ECDSA_P256_SHA256 || alg == &rcgen::PKCS_ECDSA_P384_SHA384;
        if rsa && !(2048..=8192).contains(&bits) {
            return Err(bad(format!(
                "RSA key of {bits} bits; 2048 to 8192 are accepted"
            )));
        }
        if !rsa && !ec {
            return Err(bad(format!(
                "unsupported key {}; RSA or ECDSA P-256/P-384 are accepted",
                describe(alg)
            )));
        }
        csr.verify_signature()
            .map_err(|e| bad(format!("its signature does not verify ({e})")))?;
        let mut uris = Vec::new();
        let mut other_sans = Vec::new();
        if let Some(exts) = csr.requested_extensions() {
            for ext in exts {
                if let ParsedExtension::SubjectAlternativeName(san) = ext {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(u) => uris.push((*u).to_owned()),
                            other => other_sans.push(other.to_string()),
                        }
                    }
                }
            }
        }
        Ok(CertificateRequest {
            public_key,
            uris,
            other_sans,
        })
    }

    /// The requested public key.
    pub fn public_key(&self) -> &rcgen::SubjectPublicKeyInfo {
        &self.public_key
    }

    /// URI SANs the CSR asks for.
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// SANs of other kinds (DNS, IP, email) the CSR asks for.
    pub fn other_sans(&self) -> &[String] {
        &self.other_sans
    }
}

fn describe(alg: &SignatureAlgorithm) -> String {
    if alg == &rcgen::PKCS_ED25519 {
        "Ed25519".to_owned()
    } else {
        format!("{alg:?}")
    }
}

/// Makes a PEM CSR for `key` asking for the given URI SANs (a workload's SPIFFE ID), with an
/// empty subject, as istio-agent does.
pub fn make_csr_pem(key: &crate::key::PrivateKey, uris: &[String]) -> Result<String, PkiError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    for u in uris {
        let v =
            rcgen::string::Ia5String::try_from(u.as_str()).map_err(|_| PkiError::InvalidName {
                field: "URI SAN".to_owned(),
                value: u.clone(),
                reason: "not ASCII".to_owned(),
            })?;
        params.subject_alt_names.push(rcgen::SanType::URI(v));
    }
    let csr = params
        .serialize_request(key)
        .map_err(|e| PkiError::Crypto {
            what: "making a CSR".to_owned(),
            reason: e.to_string(),
        })?;
    csr.pem().map_err(|e| PkiError::Crypto {
        what: "encoding a CSR".to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyType, PrivateKey};

    #[test]
    fn csrs_round_trip_and_tampering_is_caught() {
        for kt in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
            let key = PrivateKey::generate(kt).unwrap();
            let pem = make_csr_pem(&key, &["spiffe://td/ns/a/sa/b".to_owned()]).unwrap();
            let req = CertificateRequest::from_pem(pem.as_bytes(), "csr").unwrap();
            assert_eq!(req.uris(), ["spiffe://td/ns/a/sa/b"]);
            assert_eq!(req.public_key().der_bytes(), key.public_key_raw());
        }
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let pem = make_csr_pem(&key, &["spiffe://td/ns/a/sa/b".to_owned()]).unwrap();
        let mut der = crate::pem::parse_sections(pem.as_bytes(), "x")
            .unwrap()
            .remove(0)
            .der;
        // Flip a byte inside the requested SAN: the signature no longer covers what is there.
        let pos = der.windows(4).position(|w| w == b"ns/a").unwrap();
        der[pos + 3] = b'z';
        let err = CertificateRequest::from_der(&der, "csr")
            .unwrap_err()
            .to_string();
        assert!(err.contains("signature does not verify"), "{err}");
        assert!(CertificateRequest::from_pem(b"garbage", "csr").is_err());
    }
}
