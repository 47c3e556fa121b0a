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
        // What the key is, read from its DER, so that a key meshca does not sign with is named
        // rather than reported as whatever the crypto library's parser says of it.
        let kind = key_kind(section.kind, &section.der);
        // A PKCS#8 key under another label (a common hand-made mistake): say so.
        let relabelled = (section.kind != Kind::Pkcs8Key)
            .then(|| key_kind(Kind::Pkcs8Key, &section.der))
            .flatten();
        let der: PrivateKeyDer<'_> = match section.kind {
            Kind::Pkcs1Key => PrivatePkcs1KeyDer::from(section.der).into(),
            Kind::Sec1Key => PrivateSec1KeyDer::from(section.der).into(),
            _ => PrivatePkcs8KeyDer::from(section.der).into(),
        };
        let bad = |reason: String| PkiError::BadKey {
            origin: origin.to_owned(),
            reason,
        };
        let unsupported = |kind: &str| {
            bad(format!(
                "{kind}, which meshca does not sign with ({SUPPORTED})"
            ))
        };
        let pair = match KeyPair::try_from(&der) {
            Ok(pair) => pair,
            Err(e) => {
                return Err(match (kind, relabelled) {
                    (Some(k), _) if !is_supported_kind(&k) => unsupported(&k),
                    (_, Some(_)) => bad(
                        "a PKCS#8 key under a PKCS#1 or SEC1 label; label it PRIVATE KEY (istiod \
                         and meshca read a key by its label)"
                            .to_owned(),
                    ),
                    _ => bad(e.to_string()),
                });
            }
        };
        let bits = public_key_bits(&pair.subject_public_key_info());
        let key_type = KeyType::from_public(pair.algorithm(), bits).ok_or_else(|| {
            unsupported(&kind.unwrap_or_else(|| format!("a {bits}-bit key of another kind")))
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

/// The key types meshca signs with, as messages list them.
const SUPPORTED: &str = "it signs with RSA-2048, RSA-3072, RSA-4096, ECDSA P-256 or ECDSA P-384";

/// Whether a [`key_kind`] is one of [`KeyType`]'s.
fn is_supported_kind(kind: &str) -> bool {
    matches!(
        kind,
        "RSA-2048" | "RSA-3072" | "RSA-4096" | "ECDSA P-256" | "ECDSA P-384"
    )
}

/// What a private key is (`RSA-1024`, `ECDSA P-521`, `Ed25519`, ...), read from its DER in
/// PKCS#8, PKCS#1 or SEC1; `None` when the DER does not say.
pub fn key_kind(kind: Kind, der: &[u8]) -> Option<String> {
    use x509_parser::der_parser::ber::BerObject;
    use x509_parser::der_parser::der::parse_der;

    fn rsa(private_key: &[u8]) -> Option<String> {
        let (_, key) = parse_der(private_key).ok()?;
        let modulus = key.as_sequence().ok()?.get(1)?.as_slice().ok()?;
        let start = modulus.iter().position(|b| *b != 0)?;
        let bits = (modulus.len() - start) * 8 - modulus[start].leading_zeros() as usize;
        Some(format!("RSA-{bits}"))
    }
    fn curve(oid: &str) -> String {
        match oid {
            "1.2.840.10045.3.1.7" => "ECDSA P-256".to_owned(),
            "1.3.132.0.34" => "ECDSA P-384".to_owned(),
            "1.3.132.0.35" => "ECDSA P-521".to_owned(),
            "1.3.132.0.10" => "ECDSA secp256k1".to_owned(),
            other => format!("an EC key on curve {other}"),
        }
    }
    fn sec1(items: &[BerObject<'_>]) -> Option<String> {
        // ECPrivateKey: version, the private key (as long as the curve's order), [0] curve.
        let private = items.get(1)?.as_slice().ok()?;
        Some(match private.len() {
            32 => "ECDSA P-256".to_owned(),
            48 => "ECDSA P-384".to_owned(),
            66 => "ECDSA P-521".to_owned(),
            n => format!("an EC key of {} bits", n * 8),
        })
    }

    let (_, top) = parse_der(der).ok()?;
    let items = top.as_sequence().ok()?;
    match kind {
        Kind::Pkcs1Key => rsa(der),
        Kind::Sec1Key => sec1(items),
        _ => {
            // PrivateKeyInfo: version, AlgorithmIdentifier, the key as an OCTET STRING.
            let algorithm = items.get(1)?.as_sequence().ok()?;
            let oid = algorithm.first()?.as_oid().ok()?.to_id_string();
            match oid.as_str() {
                "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => {
                    rsa(items.get(2)?.as_slice().ok()?)
                }
                "1.2.840.10045.2.1" => {
                    Some(curve(&algorithm.get(1)?.as_oid().ok()?.to_id_string()))
                }
                "1.3.101.112" => Some("Ed25519".to_owned()),
                "1.3.101.113" => Some("Ed448".to_owned()),
                "1.2.840.10040.4.1" => Some("DSA".to_owned()),
                other => Some(format!("a key of algorithm {other}")),
            }
        }
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
    fn keys_meshca_does_not_sign_with_are_named() {
        let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let pem = ed25519.serialize_pem();
        let err = PrivateKey::from_pem(pem.as_bytes(), "d/ca-key.pem")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "d/ca-key.pem: not a usable private key: Ed25519, which meshca does not sign with \
             (it signs with RSA-2048, RSA-3072, RSA-4096, ECDSA P-256 or ECDSA P-384)"
        );
        // An RSA-1024 key, which aws-lc-rs does not load: the PKCS#1 RSAPrivateKey below has
        // a 1024-bit modulus and dummy values for the rest.
        let mut modulus = vec![0x00, 0xc0];
        modulus.extend(std::iter::repeat_n(0x11, 127));
        let der = der_sequence(&[
            der_integer(&[0]),
            der_integer(&modulus),
            der_integer(&[1, 0, 1]),
            der_integer(&[3]),
            der_integer(&[5]),
            der_integer(&[7]),
            der_integer(&[9]),
            der_integer(&[11]),
            der_integer(&[13]),
        ]);
        let pem = crate::pem::encode("RSA PRIVATE KEY", &der);
        let err = PrivateKey::from_pem(pem.as_bytes(), "ca-key.pem")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("ca-key.pem: not a usable private key: RSA-1024, which meshca"),
            "{err}"
        );
    }

    fn der_integer(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![0x02];
        out.extend(der_length(bytes.len()));
        out.extend_from_slice(bytes);
        out
    }

    fn der_sequence(items: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = items.concat();
        let mut out = vec![0x30];
        out.extend(der_length(body.len()));
        out.extend(body);
        out
    }

    fn der_length(n: usize) -> Vec<u8> {
        match n {
            0..=0x7f => vec![n as u8],
            0x80..=0xff => vec![0x81, n as u8],
            _ => vec![0x82, (n >> 8) as u8, n as u8],
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
