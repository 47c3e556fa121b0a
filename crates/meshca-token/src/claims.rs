//! The claims of a Kubernetes projected service-account token, and minting tokens that carry
//! them: a compact JWS with the header and claim set the Kubernetes API server writes.

use meshca_pki::spiffe::check_k8s_name;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::base64url;
use crate::error::TokenError;
use crate::key::SigningKey;

/// What a token says about the workload that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountClaims {
    /// `iss`: the issuer, such as `https://kubernetes.default.svc.cluster.local`.
    pub issuer: String,
    /// `aud`: who the token is for, such as `istio-ca`.
    pub audiences: Vec<String>,
    /// The service account's namespace.
    pub namespace: String,
    /// The service account's name.
    pub service_account: String,
    /// `iat` and `nbf`: when the token was issued (whole seconds are kept).
    pub issued_at: OffsetDateTime,
    /// `exp`: when the token expires (whole seconds are kept).
    pub expires_at: OffsetDateTime,
}

impl ServiceAccountClaims {
    /// The `sub` Kubernetes gives the service account: `system:serviceaccount:<ns>:<name>`.
    pub fn subject(&self) -> String {
        format!(
            "{SUBJECT_PREFIX}{}:{}",
            self.namespace, self.service_account
        )
    }
}

/// How every service-account subject starts.
pub(crate) const SUBJECT_PREFIX: &str = "system:serviceaccount:";

/// The `kubernetes.io` claim, reduced to what identifies the service account.
#[derive(Serialize, Deserialize)]
pub(crate) struct KubernetesClaim {
    pub(crate) namespace: String,
    pub(crate) serviceaccount: NamedObject,
}

/// A reference to a Kubernetes object by name, as the `kubernetes.io` claim carries it.
#[derive(Serialize, Deserialize)]
pub(crate) struct NamedObject {
    pub(crate) name: String,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    kid: &'a str,
    typ: &'a str,
}

#[derive(Serialize)]
struct Payload<'a> {
    iss: &'a str,
    sub: String,
    aud: &'a [String],
    iat: i64,
    nbf: i64,
    exp: i64,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaim,
}

/// Mints a token for `claims`, signed by `key`: `header.payload.signature`, each part base64url
/// without padding. The header is `{"alg", "kid", "typ": "JWT"}`.
///
/// Refuses claims no verifier would accept: no issuer or audience, names that cannot stand in a
/// SPIFFE ID, or a token that expires before it is issued.
pub fn mint(claims: &ServiceAccountClaims, key: &SigningKey) -> Result<String, TokenError> {
    let bad = |claim: &'static str, reason: &str| TokenError::BadClaim {
        claim,
        reason: reason.to_owned(),
    };
    if claims.issuer.is_empty() {
        return Err(bad("iss", "the issuer must not be empty"));
    }
    if claims.audiences.is_empty() || claims.audiences.iter().any(String::is_empty) {
        return Err(bad("aud", "at least one audience is needed, none empty"));
    }
    check_k8s_name("namespace", &claims.namespace)?;
    check_k8s_name("service account", &claims.service_account)?;
    let (iat, exp) = (
        claims.issued_at.unix_timestamp(),
        claims.expires_at.unix_timestamp(),
    );
    if exp <= iat {
        return Err(bad("exp", "the token must expire after it is issued"));
    }

    let header = Header {
        alg: key.algorithm().as_str(),
        kid: key.kid(),
        typ: "JWT",
    };
    let payload = Payload {
        iss: &claims.issuer,
        sub: claims.subject(),
        aud: &claims.audiences,
        iat,
        nbf: iat,
        exp,
        kubernetes: KubernetesClaim {
            namespace: claims.namespace.clone(),
            serviceaccount: NamedObject {
                name: claims.service_account.clone(),
            },
        },
    };
    let mut token = format!("{}.{}", encode_json(&header)?, encode_json(&payload)?);
    let signature = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&base64url::encode(signature));
    Ok(token)
}

fn encode_json(value: &impl Serialize) -> Result<String, TokenError> {
    let json = serde_json::to_vec(value).map_err(|e| TokenError::Crypto {
        what: "encoding a token".to_owned(),
        reason: e.to_string(),
    })?;
    Ok(base64url::encode(json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshca_pki::{KeyType, PrivateKey};
    use serde_json::{Value, json};
    use time::macros::datetime;

    fn claims() -> ServiceAccountClaims {
        ServiceAccountClaims {
            issuer: "https://kubernetes.default.svc.cluster.local".into(),
            audiences: vec!["istio-ca".into()],
            namespace: "foo".into(),
            service_account: "httpbin".into(),
            issued_at: datetime!(2026-11-23 10:00 UTC),
            expires_at: datetime!(2026-11-23 11:00 UTC),
        }
    }

    fn es256_key() -> SigningKey {
        let pem = PrivateKey::generate(KeyType::EcdsaP256)
            .unwrap()
            .to_pkcs8_pem();
        SigningKey::from_pem(pem.as_bytes(), "k.pem").unwrap()
    }

    fn part(token: &str, i: usize) -> Value {
        let text = token.split('.').nth(i).unwrap();
        serde_json::from_slice(&base64url::decode(text).unwrap()).unwrap()
    }

    #[test]
    fn minted_tokens_carry_kubernetes_claims() {
        let key = es256_key();
        let token = mint(&claims(), &key).unwrap();
        assert_eq!(token.split('.').count(), 3);
        assert!(!token.contains('='), "no padding: {token}");
        assert_eq!(
            part(&token, 0),
            json!({"alg": "ES256", "kid": key.kid(), "typ": "JWT"})
        );
        assert_eq!(
            part(&token, 1),
            json!({
                "iss": "https://kubernetes.default.svc.cluster.local",
                "sub": "system:serviceaccount:foo:httpbin",
                "aud": ["istio-ca"],
                "iat": 1_795_428_000,
                "nbf": 1_795_428_000,
                "exp": 1_795_431_600,
                "kubernetes.io": {"namespace": "foo", "serviceaccount": {"name": "httpbin"}},
            })
        );
        let sig = base64url::decode(token.rsplit('.').next().unwrap()).unwrap();
        assert_eq!(sig.len(), 64);
    }

    #[test]
    fn claims_no_verifier_accepts_are_refused() {
        let key = es256_key();
        let mut c = claims();
        c.audiences.clear();
        let err = mint(&c, &key).unwrap_err().to_string();
        assert_eq!(
            err,
            "claim \"aud\" is invalid: at least one audience is needed, none empty"
        );
        let mut c = claims();
        c.expires_at = c.issued_at;
        let err = mint(&c, &key).unwrap_err().to_string();
        assert!(err.starts_with("claim \"exp\" is invalid"), "{err}");
        let mut c = claims();
        c.namespace = "Foo:bar".into();
        let err = mint(&c, &key).unwrap_err().to_string();
        assert!(
            err.starts_with("namespace: invalid value \"Foo:bar\""),
            "{err}"
        );
    }
}
