//! Token signing keys: reading ECDSA P-256 and RSA private keys from PEM, signing JWS input with
//! ES256 or RS256, and naming each key by the RFC 7638 thumbprint of its public half.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use meshca_pki::pem::{self, Kind};

use crate::error::TokenError;
use crate::jwk::Jwk;

/// The smallest RSA modulus meshca signs or verifies tokens with, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// A JWS algorithm meshca signs and verifies tokens with: the two Kubernetes uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256; the signature is the 64-byte `r || s`.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
}

impl Algorithm {
    /// The algorithm's name in a JWS header's `alg` and a JWK's `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Rs256 => "RS256",
        }
    }

    /// The algorithm a JWS header's `alg` names, if it is one meshca accepts. Names are
    /// case-sensitive, as RFC 7515 says.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ES256" => Some(Algorithm::Es256),
            "RS256" => Some(Algorithm::Rs256),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A private key that signs tokens, with its public JWK (whose `kid` is the key's thumbprint).
///
/// Its `Debug` shows the algorithm and key id, never key material.
pub struct SigningKey {
    pair: Pair,
    public: Jwk,
}

enum Pair {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl SigningKey {
    /// Reads the first private key in PEM text. ECDSA P-256 keys (PKCS#8 `PRIVATE KEY` or SEC1
    /// `EC PRIVATE KEY`) sign ES256; RSA keys of 2048 bits or more (PKCS#8 or PKCS#1
    /// `RSA PRIVATE KEY`) sign RS256. `origin` names the text in errors.
    pub fn from_pem(text: &[u8], origin: &str) -> Result<Self, TokenError> {
        let bad = |reason: String| TokenError::BadKey {
            origin: origin.to_owned(),
            reason,
        };
        let sections = pem::parse_sections(text, origin)?;
        let Some(section) = sections.into_iter().find(|s| s.kind.is_private_key()) else {
            return Err(bad(
                "no private key found (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                    .to_owned(),
            ));
        };
        let ec_alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pair = match section.kind {
            Kind::Sec1Key => EcdsaKeyPair::from_private_key_der(ec_alg, &section.der)
                .map(Pair::Ecdsa)
                .map_err(|e| bad(format!("not an ECDSA P-256 key ({e})")))?,
            Kind::Pkcs1Key => RsaKeyPair::from_der(&section.der)
                .map(Pair::Rsa)
                .map_err(|e| bad(format!("not a usable RSA key ({e})")))?,
            // PKCS#8 says what it holds inside; try the two kinds meshca signs with.
            _ => match EcdsaKeyPair::from_private_key_der(ec_alg, &section.der) {
                Ok(pair) => Pair::Ecdsa(pair),
                Err(ec_err) => RsaKeyPair::from_pkcs8(&section.der)
                    .map(Pair::Rsa)
                    .map_err(|rsa_err| {
                        // Named from its DER (Ed25519, ECDSA P-384, RSA-1024, ...) when it says,
                        // rather than by what the crypto library's parsers say of it.
                        bad(match meshca_pki::key::key_kind(section.kind, &section.der) {
                            Some(kind) if kind != "ECDSA P-256" => format!(
                                "{kind}, which meshca does not sign tokens with (ECDSA P-256 \
                                 for ES256, RSA of 2048 bits or more for RS256)"
                            ),
                            _ => format!(
                                "neither an ECDSA P-256 key ({ec_err}) nor an RSA key ({rsa_err})"
                            ),
                        })
                    })?,
            },
        };
        let public = match &pair {
            Pair::Ecdsa(pair) => Jwk::from_ec_point(pair.public_key().as_ref())
                .ok_or_else(|| bad("the public point is not an uncompressed P-256 point".into()))?,
            Pair::Rsa(pair) => {
                let bits = pair.public_modulus_len() * 8;
                if bits < MIN_RSA_BITS {
                    return Err(bad(format!(
                        "RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"
                    )));
                }
                let public = pair.public_key();
                Jwk::from_rsa_components(
                    public.modulus().big_endian_without_leading_zero(),
                    public.exponent().big_endian_without_leading_zero(),
                )
            }
        };
        Ok(SigningKey { pair, public })
    }

    /// The algorithm the key signs with.
    pub fn algorithm(&self) -> Algorithm {
        match self.pair {
            Pair::Ecdsa(_) => Algorithm::Es256,
            Pair::Rsa(_) => Algorithm::Rs256,
        }
    }

    /// The key id: the RFC 7638 thumbprint (SHA-256, base64url) of the public key.
    pub fn kid(&self) -> &str {
        // `from_pem` always sets the kid of the public JWK.
        self.public.kid().unwrap_or_default()
    }

    /// The public half as a JWK, with `kid`, `alg` and `use` set, ready for a JWKS.
    pub fn public_jwk(&self) -> Jwk {
        self.public.clone()
    }

    /// Signs a JWS signing input (`base64url(header) "." base64url(payload)`) and returns the
    /// raw signature: 64 bytes `r || s` for ES256, the modulus length for RS256.
    pub fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, TokenError> {
        let rng = SystemRandom::new();
        let failed = |reason: String| TokenError::Crypto {
            what: format!(
                "signing a token with {} key {}",
                self.algorithm(),
                self.kid()
            ),
            reason,
        };
        match &self.pair {
            Pair::Ecdsa(pair) => pair
                .sign(&rng, signing_input)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|e| failed(e.to_string())),
            Pair::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, signing_input, &mut sig)
                    .map_err(|e| failed(e.to_string()))?;
                Ok(sig)
            }
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningKey({}, kid {:?}, ...)",
            self.algorithm(),
            self.kid()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base64url;
    use aws_lc_rs::digest;
    use meshca_pki::{KeyType, PrivateKey};

    fn pem_of(kt: KeyType) -> String {
        PrivateKey::generate(kt).expect("generate").to_pkcs8_pem()
    }

    #[test]
    fn pkcs8_keys_pick_their_algorithm() {
        let ec = SigningKey::from_pem(pem_of(KeyType::EcdsaP256).as_bytes(), "ec.pem").unwrap();
        assert_eq!(ec.algorithm(), Algorithm::Es256);
        assert_eq!(ec.sign(b"x").unwrap().len(), 64);
        let rsa = SigningKey::from_pem(pem_of(KeyType::Rsa2048).as_bytes(), "rsa.pem").unwrap();
        assert_eq!(rsa.algorithm(), Algorithm::Rs256);
        assert_eq!(rsa.sign(b"x").unwrap().len(), 256);
    }

    #[test]
    fn kid_is_the_thumbprint_of_the_public_point() {
        let private = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let key = SigningKey::from_pem(private.to_pkcs8_pem().as_bytes(), "k.pem").unwrap();
        // Computed here from rcgen's view of the public key, not from the crate's JWK.
        let point = private.public_key_raw();
        assert_eq!(point.len(), 65);
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            base64url::encode(&point[1..33]),
            base64url::encode(&point[33..])
        );
        let expected = base64url::encode(digest::digest(&digest::SHA256, canonical.as_bytes()));
        assert_eq!(key.kid(), expected);
        assert_eq!(key.public_jwk().kid(), Some(expected.as_str()));
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = SigningKey::from_pem(pem_of(KeyType::EcdsaP256).as_bytes(), "k.pem").unwrap();
        assert_eq!(
            format!("{key:?}"),
            format!("SigningKey(ES256, kid {:?}, ...)", key.kid())
        );
    }

    #[test]
    fn other_keys_are_refused_naming_the_file() {
        let err = SigningKey::from_pem(pem_of(KeyType::EcdsaP384).as_bytes(), "p384.pem")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "p384.pem: not a usable token signing key: ECDSA P-384, which meshca does not \
                 sign tokens with (ECDSA P-256 for ES256, RSA of 2048 bits or more for RS256)"
            ),
            "{err}"
        );
        let err = SigningKey::from_pem(b"hello", "x.pem")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "x.pem: no PEM section found (expected -----BEGIN ...-----)"
        );
        let cert = meshca_pki::pem::encode("CERTIFICATE", b"\x30\x00");
        let err = SigningKey::from_pem(cert.as_bytes(), "c.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.pem: not a usable token signing key: no private key found"));
    }
}
