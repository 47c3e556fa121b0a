//! Verifying bearer tokens: the checks the CA makes, in a fixed order, before it believes a
//! workload's claim to a service account, and the proof type that says they all passed.
//!
//! The order is: size, shape, header, algorithm, issuer, key, signature, audience, expiry,
//! not-before. Everything before the signature check reads untrusted bytes, so it is bounded by
//! the size limit and refuses early; nothing after it is believed until the signature verifies.

use meshca_pki::spiffe::check_k8s_name;
use meshca_pki::{SpiffeId, TrustDomain};
use serde::Deserialize;
use serde_json::{Map, Value};
use time::{Duration, OffsetDateTime};

use crate::base64url;
use crate::claims::{KubernetesClaim, SUBJECT_PREFIX};
use crate::error::TokenError;
use crate::jwk::Jwks;
use crate::key::Algorithm;

/// The longest token the verifier reads, in bytes. Kubernetes tokens are around 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How far clocks may disagree: a token is accepted this long after its `exp`, and its `nbf`
/// and `iat` may lie this far in the future.
pub const CLOCK_SKEW_LEEWAY: Duration = Duration::seconds(60);

/// Checks bearer tokens for one audience against the JWKS of the issuers it trusts.
#[derive(Clone, Debug)]
pub struct Verifier {
    audience: String,
    issuers: Vec<(String, Jwks)>,
}

impl Verifier {
    /// A verifier that accepts tokens whose `aud` holds `audience`, from no issuer yet.
    pub fn new(audience: &str) -> Self {
        Verifier {
            audience: audience.to_owned(),
            issuers: Vec::new(),
        }
    }

    /// Trusts tokens whose `iss` is exactly `issuer` and that one of `jwks`'s keys signed.
    /// Trusting an issuer again adds the keys to those it already has (as during a key
    /// rotation, when both the old and the new key sign).
    #[must_use]
    pub fn trust(mut self, issuer: &str, jwks: Jwks) -> Self {
        match self.issuers.iter_mut().find(|(iss, _)| iss == issuer) {
            Some((_, known)) => known.extend(jwks),
            None => self.issuers.push((issuer.to_owned(), jwks)),
        }
        self
    }

    /// The audience tokens must be for.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Verifies a compact JWS bearer token at time `now`, and says whom it identifies.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge {
                size: token.len(),
                limit: MAX_TOKEN_BYTES,
            });
        }
        let parts = Parts::split(token)?;

        let header: Header = serde_json::from_slice(&parts.header)
            .map_err(|e| malformed(format!("the header is not a JSON object: {e}")))?;
        let alg = Algorithm::from_name(&header.alg).ok_or_else(|| TokenError::UnsupportedAlg {
            alg: header.alg.clone(),
        })?;
        if header.crit.is_some() {
            return Err(malformed(
                "the header lists critical extensions (\"crit\"); none is supported".to_owned(),
            ));
        }

        let claims: Map<String, Value> = serde_json::from_slice(&parts.payload)
            .map_err(|e| malformed(format!("the payload is not a JSON object: {e}")))?;
        let issuer =
            string_claim(&claims, "iss")?.ok_or(TokenError::MissingClaim { claim: "iss" })?;
        let Some((_, jwks)) = self.issuers.iter().find(|(iss, _)| iss == issuer) else {
            return Err(TokenError::UntrustedIssuer {
                issuer: issuer.to_owned(),
            });
        };

        check_signature(jwks, issuer, alg, header.kid.as_deref(), &parts)?;

        let audiences = audience_claim(&claims)?;
        if !audiences.contains(&self.audience) {
            return Err(TokenError::WrongAudience {
                audience: self.audience.clone(),
                found: audiences,
            });
        }
        let expires_at =
            time_claim(&claims, "exp")?.ok_or(TokenError::MissingClaim { claim: "exp" })?;
        // Saturating: a signed `exp` may be the last second of year 9999.
        if now >= expires_at.saturating_add(CLOCK_SKEW_LEEWAY) {
            return Err(TokenError::Expired { expires_at, now });
        }
        for claim in ["nbf", "iat"] {
            if let Some(valid_from) = time_claim(&claims, claim)?
                && valid_from > now.saturating_add(CLOCK_SKEW_LEEWAY)
            {
                return Err(TokenError::NotYetValid {
                    claim,
                    valid_from,
                    now,
                });
            }
        }

        let (namespace, service_account) = service_account(&claims)?;
        Ok(VerifiedToken {
            issuer: issuer.to_owned(),
            namespace,
            service_account,
            audiences,
            expires_at,
        })
    }
}

/// Picks the issuer's keys the token may name and checks the signature with them.
fn check_signature(
    jwks: &Jwks,
    issuer: &str,
    alg: Algorithm,
    kid: Option<&str>,
    parts: &Parts<'_>,
) -> Result<(), TokenError> {
    let candidates: Vec<_> = match kid {
        Some(kid) => {
            let named: Vec<_> = jwks
                .keys()
                .iter()
                .filter(|k| k.kid() == Some(kid))
                .collect();
            if named.is_empty() {
                return Err(TokenError::UnknownKid {
                    kid: kid.to_owned(),
                    issuer: issuer.to_owned(),
                });
            }
            let usable: Vec<_> = named.into_iter().filter(|k| k.algorithm() == alg).collect();
            if usable.is_empty() {
                return Err(TokenError::KeyAlgMismatch {
                    kid: kid.to_owned(),
                    issuer: issuer.to_owned(),
                    alg: alg.to_string(),
                });
            }
            usable
        }
        None => {
            let usable: Vec<_> = jwks
                .keys()
                .iter()
                .filter(|k| k.algorithm() == alg)
                .collect();
            if usable.is_empty() {
                return Err(TokenError::NoKeyForAlg {
                    issuer: issuer.to_owned(),
                    alg: alg.to_string(),
                });
            }
            usable
        }
    };
    if candidates
        .iter()
        .any(|k| k.verifies(parts.signing_input.as_bytes(), &parts.signature))
    {
        Ok(())
    } else {
        Err(TokenError::BadSignature)
    }
}

/// A token that passed every check: who it identifies, for whom, and until when.
///
/// Only [`Verifier::verify`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    issuer: String,
    namespace: String,
    service_account: String,
    audiences: Vec<String>,
    expires_at: OffsetDateTime,
}

impl VerifiedToken {
    /// The issuer that signed the token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The service account's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account's name.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// Every audience the token names (the verifier's among them).
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// When the token expires (its `exp`, without leeway).
    pub fn expires_at(&self) -> OffsetDateTime {
        self.expires_at
    }

    /// The SPIFFE ID Istio gives the token's service account in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &TrustDomain) -> Result<SpiffeId, TokenError> {
        Ok(SpiffeId::workload(
            trust_domain,
            &self.namespace,
            &self.service_account,
        )?)
    }
}

/// A token cut at its dots, each part decoded.
struct Parts<'a> {
    /// `header "." payload`, the bytes the signature covers.
    signing_input: &'a str,
    header: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> Parts<'a> {
    fn split(token: &'a str) -> Result<Self, TokenError> {
        let pieces: Vec<&str> = token.split('.').collect();
        let [header, payload, signature] = pieces[..] else {
            return Err(malformed(format!(
                "expected 3 dot-separated parts, found {}",
                pieces.len()
            )));
        };
        let decode = |text: &str, name: &str| {
            base64url::decode(text).ok_or_else(|| malformed(format!("the {name} is not base64url")))
        };
        Ok(Parts {
            signing_input: &token[..header.len() + 1 + payload.len()],
            header: decode(header, "header")?,
            payload: decode(payload, "payload")?,
            signature: decode(signature, "signature")?,
        })
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

fn malformed(reason: String) -> TokenError {
    TokenError::Malformed { reason }
}

fn bad_claim(claim: &'static str, reason: impl Into<String>) -> TokenError {
    TokenError::BadClaim {
        claim,
        reason: reason.into(),
    }
}

fn string_claim<'c>(
    claims: &'c Map<String, Value>,
    claim: &'static str,
) -> Result<Option<&'c str>, TokenError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad_claim(claim, "expected a string")),
    }
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
fn audience_claim(claims: &Map<String, Value>) -> Result<Vec<String>, TokenError> {
    match claims.get("aud") {
        None => Err(TokenError::MissingClaim { claim: "aud" }),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad_claim("aud", "expected a string or an array of strings")),
        Some(_) => Err(bad_claim("aud", "expected a string or an array of strings")),
    }
}

/// A NumericDate: seconds since the epoch, possibly fractional (RFC 7519 §2).
fn time_claim(
    claims: &Map<String, Value>,
    claim: &'static str,
) -> Result<Option<OffsetDateTime>, TokenError> {
    let Some(value) = claims.get(claim) else {
        return Ok(None);
    };
    let not_a_date = || bad_claim(claim, format!("expected seconds since 1970, got {value}"));
    let Value::Number(number) = value else {
        return Err(not_a_date());
    };
    let seconds = match number.as_i64() {
        Some(s) => s,
        None => match number.as_f64() {
            // Beyond a float's exact integers the year is far out of range anyway.
            Some(f) if f.is_finite() && f.abs() < 9.0e15 => f.floor() as i64,
            _ => return Err(not_a_date()),
        },
    };
    OffsetDateTime::from_unix_timestamp(seconds)
        .map(Some)
        .map_err(|_| not_a_date())
}

/// The namespace and name of the service account: from the `kubernetes.io` claim when there is
/// one (and then `sub` must agree), else from `sub`.
fn service_account(claims: &Map<String, Value>) -> Result<(String, String), TokenError> {
    let from_sub = match string_claim(claims, "sub")? {
        None => None,
        Some(sub) => Some(parse_subject(sub).ok_or_else(|| {
            bad_claim(
                "sub",
                format!("expected system:serviceaccount:<namespace>:<name>, got {sub:?}"),
            )
        })?),
    };
    let (claim, namespace, name) = match claims.get("kubernetes.io") {
        Some(value) => {
            let k8s = KubernetesClaim::deserialize(value).map_err(|e| {
                bad_claim(
                    "kubernetes.io",
                    format!("expected a namespace and serviceaccount.name: {e}"),
                )
            })?;
            if let Some((ns, sa)) = from_sub
                && (ns, sa) != (k8s.namespace.as_str(), k8s.serviceaccount.name.as_str())
            {
                return Err(bad_claim(
                    "sub",
                    format!(
                        "names {ns}/{sa} but kubernetes.io names {}/{}",
                        k8s.namespace, k8s.serviceaccount.name
                    ),
                ));
            }
            ("kubernetes.io", k8s.namespace, k8s.serviceaccount.name)
        }
        None => match from_sub {
            Some((ns, sa)) => ("sub", ns.to_owned(), sa.to_owned()),
            None => return Err(TokenError::MissingClaim { claim: "sub" }),
        },
    };
    for (field, value) in [("namespace", &namespace), ("service account", &name)] {
        check_k8s_name(field, value).map_err(|e| bad_claim(claim, e.to_string()))?;
    }
    Ok((namespace, name))
}

fn parse_subject(sub: &str) -> Option<(&str, &str)> {
    let (ns, sa) = sub.strip_prefix(SUBJECT_PREFIX)?.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then_some((ns, sa))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{ServiceAccountClaims, mint};
    use crate::key::SigningKey;
    use meshca_pki::{KeyType, PrivateKey};
    use serde_json::json;
    use time::macros::datetime;

    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
    const ISSUED: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);
    const EXPIRES: OffsetDateTime = datetime!(2026-11-23 11:00 UTC);
    const NOW: OffsetDateTime = datetime!(2026-11-23 10:30 UTC);

    fn key(kt: KeyType) -> SigningKey {
        let pem = PrivateKey::generate(kt).unwrap().to_pkcs8_pem();
        SigningKey::from_pem(pem.as_bytes(), "k.pem").unwrap()
    }

    fn claims() -> ServiceAccountClaims {
        ServiceAccountClaims {
            issuer: ISSUER.into(),
            audiences: vec!["istio-ca".into()],
            namespace: "foo".into(),
            service_account: "httpbin".into(),
            issued_at: ISSUED,
            expires_at: EXPIRES,
        }
    }

    fn verifier(keys: &[&SigningKey]) -> Verifier {
        Verifier::new("istio-ca")
            .trust(ISSUER, Jwks::from_keys(keys.iter().map(|k| k.public_jwk())))
    }

    fn payload() -> Value {
        json!({
            "iss": ISSUER,
            "sub": "system:serviceaccount:foo:httpbin",
            "aud": ["istio-ca"],
            "iat": ISSUED.unix_timestamp(),
            "nbf": ISSUED.unix_timestamp(),
            "exp": EXPIRES.unix_timestamp(),
            "kubernetes.io": {"namespace": "foo", "serviceaccount": {"name": "httpbin", "uid": "1"}},
        })
    }

    fn header(key: &SigningKey) -> Value {
        json!({"alg": key.algorithm().as_str(), "kid": key.kid(), "typ": "JWT"})
    }

    /// Signs any header and payload, to make tokens `mint` would refuse to.
    fn forge(key: &SigningKey, header: &Value, payload: &Value) -> String {
        let input = format!(
            "{}.{}",
            base64url::encode(header.to_string()),
            base64url::encode(payload.to_string())
        );
        let sig = key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", base64url::encode(sig))
    }

    fn with(mut payload: Value, claim: &str, value: Value) -> Value {
        payload[claim] = value;
        payload
    }

    fn without(mut payload: Value, claim: &str) -> Value {
        payload.as_object_mut().unwrap().remove(claim);
        payload
    }

    fn round_trip(kt: KeyType) {
        let key = key(kt);
        let token = mint(&claims(), &key).unwrap();
        let verified = verifier(&[&key]).verify(&token, NOW).unwrap();
        assert_eq!(verified.issuer(), ISSUER);
        assert_eq!(verified.namespace(), "foo");
        assert_eq!(verified.service_account(), "httpbin");
        assert_eq!(verified.audiences(), ["istio-ca"]);
        assert_eq!(verified.expires_at(), EXPIRES);
        let td = TrustDomain::new("cluster.local").unwrap();
        assert_eq!(
            verified.spiffe_id(&td).unwrap().to_string(),
            "spiffe://cluster.local/ns/foo/sa/httpbin"
        );
    }

    #[test]
    fn verifier_and_keys_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Verifier>();
        shareable::<SigningKey>();
        shareable::<VerifiedToken>();
    }

    #[test]
    fn es256_tokens_round_trip() {
        round_trip(KeyType::EcdsaP256);
    }

    #[test]
    fn rs256_tokens_round_trip() {
        round_trip(KeyType::Rsa2048);
    }

    #[test]
    fn tampered_tokens_do_not_verify() {
        let key = key(KeyType::EcdsaP256);
        let v = verifier(&[&key]);
        let token = mint(&claims(), &key).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let admin = with(
            payload(),
            "kubernetes.io",
            json!({"namespace": "foo", "serviceaccount": {"name": "admin"}}),
        );
        let admin = with(admin, "sub", json!("system:serviceaccount:foo:admin"));
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            base64url::encode(admin.to_string()),
            parts[2]
        );
        assert!(matches!(
            v.verify(&tampered, NOW),
            Err(TokenError::BadSignature)
        ));

        let mut sig = base64url::decode(parts[2]).unwrap();
        sig[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], base64url::encode(sig));
        let err = v.verify(&flipped, NOW).unwrap_err();
        assert_eq!(err.to_string(), "signature does not verify");
    }

    #[test]
    fn other_audiences_are_refused() {
        let key = key(KeyType::EcdsaP256);
        let token = forge(
            &key,
            &header(&key),
            &with(payload(), "aud", json!(["other"])),
        );
        let err = verifier(&[&key]).verify(&token, NOW).unwrap_err();
        assert!(matches!(&err, TokenError::WrongAudience { found, .. } if found == &["other"]));
        assert_eq!(
            err.to_string(),
            "audience \"istio-ca\" not among the token's audiences [\"other\"]"
        );
        // A single string is an audience too.
        let token = forge(
            &key,
            &header(&key),
            &with(payload(), "aud", json!("istio-ca")),
        );
        assert!(verifier(&[&key]).verify(&token, NOW).is_ok());
        let token = forge(&key, &header(&key), &without(payload(), "aud"));
        assert!(matches!(
            verifier(&[&key]).verify(&token, NOW),
            Err(TokenError::MissingClaim { claim: "aud" })
        ));
    }

    #[test]
    fn expired_tokens_are_refused_after_the_leeway() {
        let key = key(KeyType::EcdsaP256);
        let v = verifier(&[&key]);
        let token = mint(&claims(), &key).unwrap();
        assert!(v.verify(&token, EXPIRES + Duration::seconds(59)).is_ok());
        let err = v
            .verify(&token, EXPIRES + Duration::seconds(60))
            .unwrap_err();
        assert!(matches!(err, TokenError::Expired { expires_at, .. } if expires_at == EXPIRES));
        assert_eq!(err.to_string(), "token expired at 2026-11-23T11:00:00Z");
        let token = forge(&key, &header(&key), &without(payload(), "exp"));
        assert!(matches!(
            v.verify(&token, NOW),
            Err(TokenError::MissingClaim { claim: "exp" })
        ));
    }

    #[test]
    fn an_exp_at_the_end_of_year_9999_is_read_without_overflow() {
        let key = key(KeyType::EcdsaP256);
        let last = OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap();
        let token = forge(
            &key,
            &header(&key),
            &with(payload(), "exp", last.unix_timestamp().into()),
        );
        assert_eq!(
            verifier(&[&key]).verify(&token, NOW).unwrap().expires_at(),
            last
        );
    }

    #[test]
    fn tokens_from_the_future_are_refused() {
        let key = key(KeyType::EcdsaP256);
        let v = verifier(&[&key]);
        let token = mint(&claims(), &key).unwrap();
        assert!(v.verify(&token, ISSUED - Duration::seconds(60)).is_ok());
        let err = v
            .verify(&token, ISSUED - Duration::seconds(61))
            .unwrap_err();
        assert!(
            matches!(err, TokenError::NotYetValid { claim: "nbf", valid_from, .. } if valid_from == ISSUED),
            "{err}"
        );
        let only_iat = forge(&key, &header(&key), &without(payload(), "nbf"));
        let err = v
            .verify(&only_iat, ISSUED - Duration::hours(1))
            .unwrap_err();
        assert!(
            matches!(err, TokenError::NotYetValid { claim: "iat", .. }),
            "{err}"
        );
    }

    #[test]
    fn unknown_issuers_are_refused() {
        let key = key(KeyType::EcdsaP256);
        let token = forge(&key, &header(&key), &with(payload(), "iss", json!("x")));
        let err = verifier(&[&key]).verify(&token, NOW).unwrap_err();
        assert!(matches!(&err, TokenError::UntrustedIssuer { issuer } if issuer == "x"));
        assert_eq!(err.to_string(), "issuer \"x\" is not trusted");
        let token = forge(&key, &header(&key), &without(payload(), "iss"));
        assert!(matches!(
            verifier(&[&key]).verify(&token, NOW),
            Err(TokenError::MissingClaim { claim: "iss" })
        ));
    }

    #[test]
    fn unknown_key_ids_are_refused() {
        let (trusted, stranger) = (key(KeyType::EcdsaP256), key(KeyType::EcdsaP256));
        let token = mint(&claims(), &stranger).unwrap();
        let err = verifier(&[&trusted]).verify(&token, NOW).unwrap_err();
        assert!(
            matches!(&err, TokenError::UnknownKid { kid, issuer } if kid == stranger.kid() && issuer == ISSUER)
        );
        // Without a kid, every key of the algorithm is tried, and none verifies.
        let no_kid = forge(&stranger, &json!({"alg": "ES256"}), &payload());
        assert!(matches!(
            verifier(&[&trusted]).verify(&no_kid, NOW),
            Err(TokenError::BadSignature)
        ));
    }

    #[test]
    fn tokens_without_kid_try_each_key_of_their_algorithm() {
        let (ec1, ec2, rsa) = (
            key(KeyType::EcdsaP256),
            key(KeyType::EcdsaP256),
            key(KeyType::Rsa2048),
        );
        let token = forge(&ec2, &json!({"alg": "ES256", "typ": "JWT"}), &payload());
        let v = verifier(&[&ec1, &rsa, &ec2]);
        assert_eq!(v.verify(&token, NOW).unwrap().service_account(), "httpbin");
        let rs = forge(&rsa, &json!({"alg": "RS256"}), &payload());
        assert!(matches!(
            verifier(&[&ec1, &ec2]).verify(&rs, NOW),
            Err(TokenError::NoKeyForAlg { .. })
        ));
        // A kid naming a key of the other type is refused before any signature check.
        let confused = forge(&rsa, &json!({"alg": "RS256", "kid": ec1.kid()}), &payload());
        assert!(matches!(
            v.verify(&confused, NOW),
            Err(TokenError::KeyAlgMismatch { .. })
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        let token = format!(
            "{}.{}.",
            base64url::encode(r#"{"alg":"none","typ":"JWT"}"#),
            base64url::encode(with(payload(), "iss", json!("nobody")).to_string())
        );
        let key = key(KeyType::EcdsaP256);
        // The algorithm is checked before the issuer: an unsigned token learns nothing more.
        let err = verifier(&[&key]).verify(&token, NOW).unwrap_err();
        assert!(matches!(&err, TokenError::UnsupportedAlg { alg } if alg == "none"));
        assert_eq!(err.to_string(), "unsupported alg \"none\"");
    }

    #[test]
    fn hs256_is_refused_even_keyed_with_the_public_jwks() {
        use aws_lc_rs::hmac;
        let key = key(KeyType::Rsa2048);
        let jwks = Jwks::from_keys([key.public_jwk()]);
        // The classic confusion attack: an HMAC keyed with the verifier's public key.
        let input = format!(
            "{}.{}",
            base64url::encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, key.kid())),
            base64url::encode(payload().to_string())
        );
        let mac = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, jwks.to_json().as_bytes()),
            input.as_bytes(),
        );
        let token = format!("{input}.{}", base64url::encode(mac));
        let err = Verifier::new("istio-ca")
            .trust(ISSUER, jwks)
            .verify(&token, NOW)
            .unwrap_err();
        assert!(matches!(&err, TokenError::UnsupportedAlg { alg } if alg == "HS256"));
    }

    #[test]
    fn oversized_tokens_are_refused_before_parsing() {
        let key = key(KeyType::EcdsaP256);
        let v = verifier(&[&key]);
        let padded = |len: usize| {
            forge(
                &key,
                &header(&key),
                &with(payload(), "pad", json!("x".repeat(len))),
            )
        };
        let fits = padded(11_500);
        assert!(fits.len() <= MAX_TOKEN_BYTES, "{}", fits.len());
        assert!(v.verify(&fits, NOW).is_ok());
        let big = padded(12_500);
        assert!(big.len() > MAX_TOKEN_BYTES);
        let err = v.verify(&big, NOW).unwrap_err();
        assert!(matches!(
            err,
            TokenError::TooLarge {
                limit: MAX_TOKEN_BYTES,
                ..
            }
        ));
        let err = v.verify(&"a".repeat(16_385), NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "token is 16385 bytes, more than the limit of 16384"
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let key = key(KeyType::EcdsaP256);
        let v = verifier(&[&key]);
        let json_part = |text: &str| base64url::encode(text);
        let cases = [
            ("", "expected 3 dot-separated parts, found 1"),
            ("garbage", "expected 3 dot-separated parts, found 1"),
            ("a.b", "expected 3 dot-separated parts, found 2"),
            ("a.b.c.d", "expected 3 dot-separated parts, found 4"),
            ("!!.e30.AA", "the header is not base64url"),
            ("e30.*.AA", "the payload is not base64url"),
            ("e30.e30.+/", "the signature is not base64url"),
        ];
        for (token, reason) in cases {
            let err = v.verify(token, NOW).unwrap_err().to_string();
            assert_eq!(err, format!("malformed token: {reason}"), "{token:?}");
        }
        let not_json = format!("{}.e30.AA", json_part("hello"));
        let no_alg = format!("{}.e30.AA", json_part(r#"{"typ":"JWT"}"#));
        let bad_payload = format!(
            "{}.{}.AA",
            json_part(r#"{"alg":"ES256"}"#),
            json_part("[1]")
        );
        let crit = format!(
            "{}.e30.AA",
            json_part(r#"{"alg":"ES256","crit":["exp"],"exp":1}"#)
        );
        for token in [not_json, no_alg, bad_payload, crit] {
            let err = v.verify(&token, NOW).unwrap_err();
            assert!(
                matches!(err, TokenError::Malformed { .. }),
                "{token}: {err}"
            );
        }
    }

    #[test]
    fn padded_base64_is_tolerated() {
        let key = key(KeyType::EcdsaP256);
        let token = mint(&claims(), &key).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let pad = |s: &str| format!("{s}{}", "=".repeat((4 - s.len() % 4) % 4));
        // Only the signature may be re-padded: the other parts are what is signed.
        let padded = format!("{}.{}.{}", parts[0], parts[1], pad(parts[2]));
        assert_ne!(padded, token);
        assert!(verifier(&[&key]).verify(&padded, NOW).is_ok());
    }

    #[test]
    fn identity_comes_from_kubernetes_claim_or_subject() {
        let key = key(KeyType::EcdsaP256);
        let v = verifier(&[&key]);
        let sub_only = forge(
            &key,
            &header(&key),
            &with(
                without(payload(), "kubernetes.io"),
                "sub",
                json!("system:serviceaccount:bar:sleep"),
            ),
        );
        let verified = v.verify(&sub_only, NOW).unwrap();
        assert_eq!(
            (verified.namespace(), verified.service_account()),
            ("bar", "sleep")
        );

        let node = forge(
            &key,
            &header(&key),
            &with(
                without(payload(), "kubernetes.io"),
                "sub",
                json!("system:node:n1"),
            ),
        );
        let err = v.verify(&node, NOW).unwrap_err();
        assert!(
            matches!(err, TokenError::BadClaim { claim: "sub", .. }),
            "{err}"
        );

        let disagree = forge(
            &key,
            &header(&key),
            &with(payload(), "sub", json!("system:serviceaccount:foo:admin")),
        );
        let err = v.verify(&disagree, NOW).unwrap_err();
        assert!(
            matches!(err, TokenError::BadClaim { claim: "sub", .. }),
            "{err}"
        );

        let neither = forge(
            &key,
            &header(&key),
            &without(without(payload(), "kubernetes.io"), "sub"),
        );
        assert!(matches!(
            v.verify(&neither, NOW),
            Err(TokenError::MissingClaim { claim: "sub" })
        ));

        let bad_name = forge(
            &key,
            &header(&key),
            &with(
                without(payload(), "sub"),
                "kubernetes.io",
                json!({"namespace": "Foo", "serviceaccount": {"name": "x"}}),
            ),
        );
        let err = v.verify(&bad_name, NOW).unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::BadClaim {
                    claim: "kubernetes.io",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn several_issuers_each_with_their_own_keys() {
        let (a, b, b_next) = (
            key(KeyType::EcdsaP256),
            key(KeyType::Rsa2048),
            key(KeyType::EcdsaP256),
        );
        let v = Verifier::new("istio-ca")
            .trust("https://a", Jwks::from_keys([a.public_jwk()]))
            .trust("https://b", Jwks::from_keys([b.public_jwk()]))
            .trust("https://b", Jwks::from_keys([b_next.public_jwk()]));
        for (iss, key) in [("https://a", &a), ("https://b", &b), ("https://b", &b_next)] {
            let token = forge(key, &header(key), &with(payload(), "iss", json!(iss)));
            assert_eq!(v.verify(&token, NOW).unwrap().issuer(), iss);
        }
        // Issuer a's key does not speak for issuer b.
        let token = forge(&a, &header(&a), &with(payload(), "iss", json!("https://b")));
        assert!(matches!(
            v.verify(&token, NOW),
            Err(TokenError::UnknownKid { .. })
        ));
    }
}
