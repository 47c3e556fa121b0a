//! Private keys: the kinds meshca makes, generating them, reading them from PEM in all three
//! encodings istiod accepts, and writing them as PKCS#8.

use std::fmt;

use rcgen::{KeyPair, PublicKeyData, RsaKeySize, SignatureAlgorithm};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use serde::Serialize;

use crate::error::PkiError;
use crate::pem::{self, Kind};

/// A kind of key meshca generates and signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum KeyType {
    /// RSA with a 2048-bit modulus, signing with SHA-256.
    Rsa2048,
    /// RSA with a 3072-bit modulus, signing with SHA-256.
    Rsa3072,
    /// RSA with a 4096-bit modulus, signing with SHA-256.
    Rsa4096,
    /// ECDSA on P-256, signing with SHA-256.
    EcdsaP256,
    /// ECDSA on P-384, signing with SHA-384.
    EcdsaP384,
}

impl KeyType {
    /// Reads a key type the way the `*_KEY_TYPE` and `*_KEYSZ` variables give it: `kind` is
    /// `rsa`, `ecdsa-p256` or `ecdsa-p384`; `rsa_bits` matters only for `rsa`.
    /// `field` names the variable in errors.
    pub fn from_spec(field: &str, kind: &str, rsa_bits: u32) -> Result<Self, PkiError> {
        let unsupported = |value: String, reason: &str| PkiError::UnsupportedKeyType {
            field: field.to_owned(),
            value,
            reason: reason.to_owned(),
        };
        match kind.trim().to_ascii_lowercase().as_str() {
            "rsa" => match rsa_bits {
                2048 => Ok(KeyType::Rsa2048),
                3072 => Ok(KeyType::Rsa3072),
                4096 => Ok(KeyType::Rsa4096),
                other => Err(unsupported(
                    format!("rsa {other}"),
                    "RSA key sizes are 2048, 3072 or 4096 bits",
                )),
            },
            "ecdsa-p256" | "ec-p256" | "p256" => Ok(KeyType::EcdsaP256),
            "ecdsa-p384" | "ec-p384" | "p384" => Ok(KeyType::EcdsaP384),
            _ => Err(unsupported(
                kind.to_owned(),
                "expected rsa, ecdsa-p256 or ecdsa-p384",
            )),
        }
    }

    /// The signature algorithm a key of this type signs with.
    pub fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    /// Whether generating a key of this type takes long enough to be worth a progress line.
    pub fn is_slow_to_generate(self) -> bool {
        matches!(self, KeyType::Rsa3072 | KeyType::Rsa4096)
    }

    fn from_public(alg: &SignatureAlgorithm, bits: usize) -> Option<Self> {
        if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            Some(KeyType::EcdsaP256)
        } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            Some(KeyType::EcdsaP384)
        } else if alg == &rcgen::PKCS_RSA_SHA256 {
            match bits {
                2048 => Some(KeyType::Rsa2048),
                3072 => Some(KeyType::Rsa3072),
                4096 => Some(KeyType::Rsa4096),
                _ => None,
            }
        } else {
            None
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::Rsa2048 => "RSA-2048",
            KeyType::Rsa3072 => "RSA-3072",
            KeyType::Rsa4096 => "RSA-4096",
            KeyType::EcdsaP256 => "ECDSA P-256",
            KeyType::EcdsaP384 => "ECDSA P-384",
        })
    }
}

/// A private key that can sign. Its `Debug` never shows key material.
pub struct PrivateKey {
    pair: KeyPair,
    key_type: KeyType,
}

impl PrivateKey {
    /// Generates a fresh key of the given type from the system's random source.
    pub fn generate(key_type: KeyType) -> Result<Self, PkiError> {
        let alg = key_type.signature_algorithm();
        let pair = match key_type {
            KeyType::Rsa2048 => KeyPair::generate_rsa_for(alg, RsaKeySize::_2048),
            KeyType::Rsa3072 => KeyPair::generate_rsa_for(alg, RsaKeySize::_3072),
            KeyType::Rsa4096 => KeyPair::generate_rsa_for(alg, RsaKeySize::_4096),
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => KeyPair::generate_for(alg),
        }
        .map_err(|e| PkiError::Crypto {
            what: format!("generating a {key_type} key"),
            reason: e.to_string(),
        })?;
        Ok(PrivateKey { pair, key_type })
    }

    /// Reads the first private key in PEM text: PKCS#8 (`PRIVATE KEY`), PKCS#1
    /// (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`). `origin` names the text in errors.
    pub fn from_pem(text: &[u8], origin: &str) -> Result<Self, PkiError> {
        let sections = pem::parse_sections(text, origin)?;
        let Some(section) = sections.into_iter().find(|s| s.kind.is_private_key()) else {
            return Err(PkiError::Pem {
                origin: origin.to_owned(),
                reason:
                    "no private key found (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                        .to_owned(),
            });
        };
        let der: PrivateKeyDer<'_> = match section.kind {
            Kind::Pkcs1Key => PrivatePkcs1KeyDer::from(section.der).into(),
            Kind::Sec1Key => PrivateSec1KeyDer::from(section.der).into(),
            _ => PrivatePkcs8KeyDer::from(section.der).into(),
        };
        let bad = |reason: String| PkiError::BadKey {
            origin: origin.to_owned(),
            reason,
        };
        let pair = KeyPair::try_from(&der).map_err(|e| bad(e.to_string()))?;
        let bits = public_key_bits(&pair.subject_public_key_info());
        let key_type = KeyType::from_public(pair.algorithm(), bits).ok_or_else(|| {
            bad(format!(
                "unsupported key ({} bits); meshca signs with RSA 2048/3072/4096 or ECDSA P-256/P-384",
                bits
            ))
        })?;
        Ok(PrivateKey { pair, key_type })
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The key as PKCS#8 PEM, the encoding `openssl genrsa` writes. Handle with care.
    pub fn to_pkcs8_pem(&self) -> String {
        pem::encode("PRIVATE KEY", self.pair.serialized_der())
    }

    /// The key as PKCS#8 DER. Handle with care.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.pair.serialized_der().to_vec()
    }

    /// The DER SubjectPublicKeyInfo of the key's public half.
    pub fn public_key_spki(&self) -> Vec<u8> {
        self.pair.subject_public_key_info()
    }

    /// The raw public key bits (the content of the SPKI bit string).
    pub fn public_key_raw(&self) -> &[u8] {
        self.pair.der_bytes()
    }

    /// Signs `message` with the key's signature algorithm (DER for ECDSA, PKCS#1 v1.5 for RSA).
    pub fn sign_message(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        rcgen::SigningKey::sign(&self.pair, message).map_err(|e| PkiError::Crypto {
            what: "signing".to_owned(),
            reason: e.to_string(),
        })
    }
}

impl PublicKeyData for PrivateKey {
    fn der_bytes(&self) -> &[u8] {
        self.pair.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.pair.algorithm()
    }
}

impl rcgen::SigningKey for PrivateKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.pair.sign(msg)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, ...)", self.key_type)
    }
}

/// The size in bits of the public key in a DER SubjectPublicKeyInfo (modulus bits for RSA,
/// field bits for EC), or 0 if it cannot be read.
pub(crate) fn public_key_bits(spki_der: &[u8]) -> usize {
    use x509_parser::prelude::FromDer;
    x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .ok()
        .and_then(|(_, spki)| spki.parsed().ok().map(|k| k.key_size()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_parse_like_the_variables() {
        assert_eq!(
            KeyType::from_spec("K", "rsa", 2048).ok(),
            Some(KeyType::Rsa2048)
        );
        assert_eq!(
            KeyType::from_spec("K", "RSA", 4096).ok(),
            Some(KeyType::Rsa4096)
        );
        assert_eq!(
            KeyType::from_spec("K", "ecdsa-p256", 0).ok(),
            Some(KeyType::EcdsaP256)
        );
        assert_eq!(
            KeyType::from_spec("K", "ecdsa-p384", 4096).ok(),
            Some(KeyType::EcdsaP384)
        );
        let err = KeyType::from_spec("ROOTCA_KEYSZ", "rsa", 1024)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("ROOTCA_KEYSZ: unsupported key type \"rsa 1024\""),
            "{err}"
        );
        assert!(KeyType::from_spec("K", "ed25519", 0).is_err());
    }

    #[test]
    fn generated_keys_round_trip_through_pem() {
        for kt in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
            let key = PrivateKey::generate(kt).expect("generate");
            let pem = key.to_pkcs8_pem();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let back = PrivateKey::from_pem(pem.as_bytes(), "k.pem").expect("reads back");
            assert_eq!(back.key_type(), kt);
            assert_eq!(back.public_key_raw(), key.public_key_raw());
            assert_eq!(format!("{back:?}"), format!("PrivateKey({kt}, ...)"));
        }
    }

    #[test]
    fn garbage_keys_name_the_file() {
        let err = PrivateKey::from_pem(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "a/ca-key.pem",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("a/ca-key.pem: not a usable private key"),
            "{err}"
        );
        let cert_only = crate::pem::encode("CERTIFICATE", b"\x30\x00");
        let err = PrivateKey::from_pem(cert_only.as_bytes(), "b.pem")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("b.pem: no private key found"), "{err}");
    }
}
