//! JSON Web Keys (RFC 7517) for the two kinds of token keys, the JWKS documents Kubernetes
//! publishes at `/openid/v1/jwks`, and RFC 7638 thumbprints, which meshca uses as key ids.
//!
//! Keys are parsed, not merely carried: a `Jwk` always holds a P-256 point or an RSA modulus of
//! 2048 to 8192 bits that the crypto library accepted, so verification never meets a key it
//! cannot use.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::base64url;
use crate::error::TokenError;
use crate::key::{Algorithm, MIN_RSA_BITS};

/// The largest RSA modulus the verifier accepts, in bits.
const MAX_RSA_BITS: usize = 8192;

/// One public key that can check token signatures.
///
/// Its `Debug` shows the algorithm and key id, never key material.
#[derive(Clone, PartialEq, Eq)]
pub struct Jwk {
    kid: Option<String>,
    material: Material,
}

#[derive(Clone, PartialEq, Eq)]
enum Material {
    /// Coordinates of a point on P-256, 32 bytes each.
    EcP256 { x: Vec<u8>, y: Vec<u8> },
    /// Big-endian modulus and exponent, without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

impl Jwk {
    /// The key of an uncompressed P-256 point (`04 || x || y`), with its thumbprint as kid.
    pub(crate) fn from_ec_point(point: &[u8]) -> Option<Self> {
        match point {
            [4, coords @ ..] if coords.len() == 64 => {
                let (x, y) = coords.split_at(32);
                Some(Self::with_thumbprint_kid(Material::EcP256 {
                    x: x.to_vec(),
                    y: y.to_vec(),
                }))
            }
            _ => None,
        }
    }

    /// The key of an RSA modulus and exponent, with its thumbprint as kid.
    pub(crate) fn from_rsa_components(n: &[u8], e: &[u8]) -> Self {
        Self::with_thumbprint_kid(Material::Rsa {
            n: strip_leading_zeros(n).to_vec(),
            e: strip_leading_zeros(e).to_vec(),
        })
    }

    fn with_thumbprint_kid(material: Material) -> Self {
        let mut jwk = Jwk {
            kid: None,
            material,
        };
        jwk.kid = Some(jwk.thumbprint());
        jwk
    }

    /// The key id, if the key has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithm this key checks.
    pub fn algorithm(&self) -> Algorithm {
        match self.material {
            Material::EcP256 { .. } => Algorithm::Es256,
            Material::Rsa { .. } => Algorithm::Rs256,
        }
    }

    /// The RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order,
    /// base64url without padding.
    pub fn thumbprint(&self) -> String {
        // Base64url text never needs JSON escaping, so the canonical form can be written out.
        let canonical = match &self.material {
            Material::EcP256 { x, y } => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                base64url::encode(x),
                base64url::encode(y)
            ),
            Material::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                base64url::encode(e),
                base64url::encode(n)
            ),
        };
        base64url::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    }

    /// Whether `signature` is this key's signature of `message` under the key's algorithm.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::EcP256 { x, y } => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, ec_point(x, y))
                    .verify(message, signature)
                    .is_ok()
            }
            Material::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
        }
    }

    fn to_wire(&self) -> WireJwk {
        let (kty, crv, x, y, n, e) = match &self.material {
            Material::EcP256 { x, y } => (
                "EC",
                Some("P-256".to_owned()),
                Some(base64url::encode(x)),
                Some(base64url::encode(y)),
                None,
                None,
            ),
            Material::Rsa { n, e } => (
                "RSA",
                None,
                None,
                None,
                Some(base64url::encode(n)),
                Some(base64url::encode(e)),
            ),
        };
        WireJwk {
            kty: kty.to_owned(),
            crv,
            x,
            y,
            n,
            e,
            kid: self.kid.clone(),
            alg: Some(self.algorithm().as_str().to_owned()),
            key_use: Some("sig".to_owned()),
        }
    }

    /// Reads one member of a JWKS's `keys`: `Ok(None)` for a key meshca has no use for (another
    /// type or curve, an encryption key, another algorithm), an error for a malformed key.
    fn from_json_value(value: &serde_json::Value) -> Result<Option<Self>, String> {
        let str_member = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
        let Some(kty) = str_member("kty") else {
            return Err("has no \"kty\"".to_owned());
        };
        let alg = match (kty, str_member("crv")) {
            ("EC", Some("P-256")) => Algorithm::Es256,
            ("RSA", _) => Algorithm::Rs256,
            _ => return Ok(None),
        };
        if str_member("use").is_some_and(|u| u != "sig")
            || str_member("alg").is_some_and(|a| a != alg.as_str())
        {
            return Ok(None);
        }
        let wire = WireJwk::deserialize(value).map_err(|e| e.to_string())?;
        let member = |name: &str, text: &Option<String>| -> Result<Vec<u8>, String> {
            let text = text
                .as_deref()
                .ok_or_else(|| format!("{kty} key has no {name:?}"))?;
            base64url::decode(text).ok_or_else(|| format!("{name:?} is not base64url"))
        };
        let material = match alg {
            Algorithm::Es256 => {
                let (x, y) = (member("x", &wire.x)?, member("y", &wire.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return Err("P-256 coordinates must be 32 bytes each".to_owned());
                }
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, ec_point(&x, &y))
                    .parse()
                    .map_err(|_| "x and y are not a point on P-256".to_owned())?;
                Material::EcP256 { x, y }
            }
            Algorithm::Rs256 => {
                let n = strip_leading_zeros(&member("n", &wire.n)?).to_vec();
                let e = strip_leading_zeros(&member("e", &wire.e)?).to_vec();
                let bits = bit_length(&n);
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                    return Err(format!(
                        "RSA modulus of {bits} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} are accepted"
                    ));
                }
                RsaPublicKeyComponents { n: &n, e: &e }
                    .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
                    .map_err(|e| format!("not a usable RSA public key ({e})"))?;
                Material::Rsa { n, e }
            }
        };
        Ok(Some(Jwk {
            kid: wire.kid,
            material,
        }))
    }
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jwk({}, kid {:?}, ...)", self.algorithm(), self.kid)
    }
}

impl Serialize for Jwk {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_wire().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Jwk {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Jwk::from_json_value(&value)
            .and_then(|jwk| jwk.ok_or_else(|| "not an ES256 or RS256 signing key".to_owned()))
            .map_err(serde::de::Error::custom)
    }
}

/// A JWK as JSON spells it, in the member order Kubernetes writes.
#[derive(Serialize, Deserialize)]
struct WireJwk {
    kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    key_use: Option<String>,
}

/// A JSON Web Key Set: the public keys of one token issuer.
///
/// Reading one keeps the ES256 (EC P-256) and RS256 (RSA) signing keys and skips every other
/// kind; a document with none of those is refused, since it could verify nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireJwks")]
pub struct Jwks {
    keys: Vec<Jwk>,
}

impl Jwks {
    /// A set of the given keys, in order.
    pub fn from_keys(keys: impl IntoIterator<Item = Jwk>) -> Self {
        Jwks {
            keys: keys.into_iter().collect(),
        }
    }

    /// Reads a JWKS document. `origin` (a file path or URL) names it in errors.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self, TokenError> {
        serde_json::from_slice(bytes).map_err(|e| TokenError::BadJwks {
            origin: origin.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The set as a JSON document, `{"keys":[...]}`.
    pub fn to_json(&self) -> String {
        // A struct of strings always serializes; the fallback is never taken.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The keys, in document order.
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// Adds a key at the end.
    pub fn push(&mut self, key: Jwk) {
        self.keys.push(key);
    }

    /// Adds the keys of another set at the end.
    pub fn extend(&mut self, other: Jwks) {
        self.keys.extend(other.keys);
    }
}

#[derive(Deserialize)]
struct WireJwks {
    keys: Vec<serde_json::Value>,
}

impl TryFrom<WireJwks> for Jwks {
    type Error = String;

    fn try_from(wire: WireJwks) -> Result<Self, String> {
        let total = wire.keys.len();
        let mut keys = Vec::new();
        for (i, value) in wire.keys.iter().enumerate() {
            if let Some(jwk) = Jwk::from_json_value(value).map_err(|e| format!("key {i}: {e}"))? {
                keys.push(jwk);
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "no ES256 (EC P-256) or RS256 (RSA) signing key among its {total} keys"
            ));
        }
        Ok(Jwks { keys })
    }
}

fn ec_point(x: &[u8], y: &[u8]) -> Vec<u8> {
    let mut point = Vec::with_capacity(1 + x.len() + y.len());
    point.push(4);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    point
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// The bit length of a big-endian integer without leading zero bytes.
fn bit_length(n: &[u8]) -> usize {
    match n.first() {
        Some(&top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::SigningKey;
    use meshca_pki::{KeyType, PrivateKey};

    /// The RSA key of RFC 7638 §3.1, with the members the RFC gives.
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    fn key(kt: KeyType) -> SigningKey {
        let pem = PrivateKey::generate(kt).unwrap().to_pkcs8_pem();
        SigningKey::from_pem(pem.as_bytes(), "k.pem").unwrap()
    }

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        let doc = format!(
            r#"{{"keys":[{{"kty":"RSA","n":"{RFC7638_N}","e":"AQAB","alg":"RS256","kid":"2011-04-29"}}]}}"#
        );
        let jwks = Jwks::from_json(doc.as_bytes(), "rfc7638").unwrap();
        let jwk = &jwks.keys()[0];
        assert_eq!(jwk.kid(), Some("2011-04-29"));
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        // Built from the raw components, the kid is the thumbprint.
        let n = base64url::decode(RFC7638_N).unwrap();
        let built = Jwk::from_rsa_components(&n, &[1, 0, 1]);
        assert_eq!(
            built.kid(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }

    #[test]
    fn jwks_round_trips_through_json_in_kubernetes_shape() {
        let (ec, rsa) = (key(KeyType::EcdsaP256), key(KeyType::Rsa2048));
        let jwks = Jwks::from_keys([ec.public_jwk(), rsa.public_jwk()]);
        let text = jwks.to_json();
        let back = Jwks::from_json(text.as_bytes(), "jwks.json").unwrap();
        assert_eq!(back, jwks);

        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let first = &doc["keys"][0];
        let mut members: Vec<&str> = first
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        members.sort_unstable();
        assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        assert_eq!(first["kty"], "EC");
        assert_eq!(first["crv"], "P-256");
        assert_eq!(first["alg"], "ES256");
        assert_eq!(first["use"], "sig");
        assert_eq!(first["kid"], ec.kid());
        let second = &doc["keys"][1];
        assert_eq!(second["kty"], "RSA");
        assert_eq!(second["e"], "AQAB");
        assert_eq!(second["alg"], "RS256");
        assert_eq!(second["kid"], rsa.kid());
        assert!(second.get("x").is_none());
    }

    #[test]
    fn unknown_key_kinds_are_skipped() {
        let ec = key(KeyType::EcdsaP256).public_jwk();
        let ec_json = serde_json::to_string(&ec).unwrap();
        let doc = format!(
            r#"{{"keys":[
                {{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}},
                {{"kty":"oct","k":"c2VjcmV0"}},
                {{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}},
                {{"kty":"RSA","use":"enc","n":"AA","e":"AQAB"}},
                {{"kty":"RSA","alg":"PS256","n":"AA","e":"AQAB"}},
                {ec_json}
            ]}}"#
        );
        let jwks = Jwks::from_json(doc.as_bytes(), "mixed.json").unwrap();
        assert_eq!(jwks.keys(), [ec]);
    }

    #[test]
    fn malformed_jwks_names_its_origin() {
        let err = Jwks::from_json(b"{\"keys\": [", "/etc/meshca/jwks/cluster-a.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/meshca/jwks/cluster-a.json: not a valid JWKS: "),
            "{err}"
        );
        let err = Jwks::from_json(b"{\"keys\": []}", "empty.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("empty.json: not a valid JWKS: no ES256 (EC P-256) or RS256"),
            "{err}"
        );
        let bad_point = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{0}","y":"{0}"}}]}}"#,
            base64url::encode([7u8; 32])
        );
        let err = Jwks::from_json(bad_point.as_bytes(), "p.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("p.json: not a valid JWKS: key 0: x and y are not a point on P-256"),
            "{err}"
        );
        let small = format!(
            r#"{{"keys":[{{"kty":"RSA","n":"{}","e":"AQAB"}}]}}"#,
            base64url::encode([0xc5u8; 128])
        );
        let err = Jwks::from_json(small.as_bytes(), "s.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("s.json: not a valid JWKS: key 0: RSA modulus of 1024 bits"),
            "{err}"
        );
        let err = Jwks::from_json(br#"{"keys":[{"kty":"RSA","e":"AQAB"}]}"#, "n.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("key 0: RSA key has no \"n\""), "{err}");
    }

    #[test]
    fn debug_never_shows_key_material() {
        let jwk = key(KeyType::EcdsaP256).public_jwk();
        assert_eq!(
            format!("{jwk:?}"),
            format!("Jwk(ES256, kid {:?}, ...)", jwk.kid())
        );
    }
}
