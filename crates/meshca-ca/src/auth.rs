//! Who is asking: istiod's authenticators, tried in its order. First the TLS client certificate
//! (already verified against the CA's roots during the handshake; its SPIFFE URI SAN is the
//! identity), then a bearer JWT checked locally against the configured issuers' JWKS.
//! Kubernetes TokenReview is not built yet: a server without JWT issuers accepts only mTLS.

use std::collections::HashMap;
use std::sync::Mutex;

use meshca_pki::{Certificate, SpiffeId, TrustDomain};
use meshca_token::Verifier;
use time::OffsetDateTime;

/// Why a caller was not authenticated. The gRPC edge answers `UNAUTHENTICATED`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Neither a client certificate nor a bearer token was presented.
    #[error("no client certificate and no bearer token")]
    NoCredential,
    /// The client certificate carries no usable SPIFFE ID.
    #[error("client certificate: {0}")]
    BadClientCert(String),
    /// The bearer token was refused.
    #[error("bearer token: {0}")]
    BadToken(String),
    /// The identity belongs to another trust domain.
    #[error("identity {id} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// the identity presented
        id: String,
        /// this server's trust domain
        trust_domain: String,
    },
    /// The request names another cluster.
    #[error("request is for cluster {asked:?}, this CA serves {ours:?}")]
    WrongCluster {
        /// the cluster the request names
        asked: String,
        /// this server's cluster
        ours: String,
    },
}

/// How many verified tokens are remembered. Workloads present the same token on every request
/// until it is rotated, so a verified token is kept (by its SHA-256) until it expires, sparing
/// one signature verification per request; the table is emptied when full.
const TOKEN_CACHE_SIZE: usize = 16_384;

/// The authentication settings of a server.
pub struct Authenticator {
    trust_domain: TrustDomain,
    jwt: Option<Verifier>,
    cluster_id: Option<String>,
    verified: Mutex<HashMap<[u8; 32], (SpiffeId, OffsetDateTime)>>,
}

/// What a request carries that authentication looks at.
pub struct Credentials<'a> {
    /// DER client certificates from the TLS handshake, leaf first.
    pub peer_certs: Option<&'a [Vec<u8>]>,
    /// The `authorization` metadata value.
    pub authorization: Option<&'a str>,
    /// The `clusterid` metadata value.
    pub cluster_id: Option<&'a str>,
}

impl Authenticator {
    /// A server in `trust_domain`, accepting JWTs when `jwt` is given, for cluster `cluster_id`.
    pub fn new(
        trust_domain: TrustDomain,
        jwt: Option<Verifier>,
        cluster_id: Option<String>,
    ) -> Self {
        Authenticator {
            trust_domain,
            jwt,
            cluster_id,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// The trust domain identities must belong to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Finds the caller's identity.
    pub fn authenticate(
        &self,
        creds: &Credentials<'_>,
        now: OffsetDateTime,
    ) -> Result<SpiffeId, AuthError> {
        if let (Some(ours), Some(asked)) = (&self.cluster_id, creds.cluster_id)
            && !asked.is_empty()
            && asked != ours
        {
            return Err(AuthError::WrongCluster {
                asked: asked.to_owned(),
                ours: ours.clone(),
            });
        }
        let id = if let Some(leaf) = creds.peer_certs.and_then(|c| c.first()) {
            from_client_cert(leaf)?
        } else if let Some(auth) = creds.authorization {
            let token = auth
                .strip_prefix("Bearer ")
                .or_else(|| auth.strip_prefix("bearer "))
                .ok_or_else(|| {
                    AuthError::BadToken("authorization is not \"Bearer <token>\"".to_owned())
                })?;
            self.identity_from_token(token.trim(), now)?
        } else {
            return Err(AuthError::NoCredential);
        };
        if id.trust_domain() != &self.trust_domain {
            return Err(AuthError::ForeignTrustDomain {
                id: id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            });
        }
        Ok(id)
    }
}

impl Authenticator {
    fn identity_from_token(&self, token: &str, now: OffsetDateTime) -> Result<SpiffeId, AuthError> {
        let verifier = self.jwt.as_ref().ok_or_else(|| {
            AuthError::BadToken("this server has no JWT issuer configured".to_owned())
        })?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref(),
        );
        if let Ok(cache) = self.verified.lock()
            && let Some((id, exp)) = cache.get(&digest)
            && now < *exp
        {
            return Ok(id.clone());
        }
        let verified = verifier
            .verify(token, now)
            .map_err(|e| AuthError::BadToken(e.to_string()))?;
        let id = verified
            .spiffe_id(&self.trust_domain)
            .map_err(|e| AuthError::BadToken(e.to_string()))?;
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= TOKEN_CACHE_SIZE {
                cache.clear();
            }
            cache.insert(digest, (id.clone(), verified.expires_at()));
        }
        Ok(id)
    }
}

fn from_client_cert(der: &[u8]) -> Result<SpiffeId, AuthError> {
    let cert = Certificate::from_der(der.to_vec(), "client certificate")
        .map_err(|e| AuthError::BadClientCert(e.to_string()))?;
    let uri = cert
        .uris()
        .iter()
        .find(|u| u.starts_with("spiffe://"))
        .ok_or_else(|| AuthError::BadClientCert("no spiffe:// URI SAN".to_owned()))?;
    uri.parse()
        .map_err(|e: meshca_pki::PkiError| AuthError::BadClientCert(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshca_pki::{KeyType, PrivateKey};
    use meshca_token::{Jwks, ServiceAccountClaims, SigningKey};

    fn setup() -> (Authenticator, SigningKey) {
        let pem = PrivateKey::generate(KeyType::EcdsaP256)
            .unwrap()
            .to_pkcs8_pem();
        let key = SigningKey::from_pem(pem.as_bytes(), "k").unwrap();
        let v = Verifier::new("istio-ca").trust("iss", Jwks::from_keys([key.public_jwk()]));
        let td = TrustDomain::new("cluster.local").unwrap();
        (Authenticator::new(td, Some(v), Some("c1".into())), key)
    }

    fn token(key: &SigningKey, now: OffsetDateTime, life: time::Duration) -> String {
        meshca_token::mint(
            &ServiceAccountClaims {
                issuer: "iss".into(),
                audiences: vec!["istio-ca".into()],
                namespace: "foo".into(),
                service_account: "bar".into(),
                issued_at: now,
                expires_at: now + life,
            },
            key,
        )
        .unwrap()
    }

    #[test]
    fn a_remembered_token_stops_working_when_it_expires() {
        let (auth, key) = setup();
        let now = OffsetDateTime::now_utc();
        let t = format!("Bearer {}", token(&key, now, time::Duration::minutes(10)));
        let creds = Credentials {
            peer_certs: None,
            authorization: Some(&t),
            cluster_id: Some("c1"),
        };
        let id = auth.authenticate(&creds, now).unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/foo/sa/bar");
        // Served from the cache the second time, still valid.
        assert_eq!(
            auth.authenticate(&creds, now + time::Duration::minutes(9))
                .unwrap(),
            id
        );
        let err = auth
            .authenticate(&creds, now + time::Duration::minutes(12))
            .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn credentials_are_checked_in_istiods_order_and_clusters_must_match() {
        let (auth, key) = setup();
        let now = OffsetDateTime::now_utc();
        let none = Credentials {
            peer_certs: None,
            authorization: None,
            cluster_id: None,
        };
        assert!(matches!(
            auth.authenticate(&none, now),
            Err(AuthError::NoCredential)
        ));
        let t = format!("Bearer {}", token(&key, now, time::Duration::minutes(10)));
        let other = Credentials {
            peer_certs: None,
            authorization: Some(&t),
            cluster_id: Some("c2"),
        };
        assert!(matches!(
            auth.authenticate(&other, now),
            Err(AuthError::WrongCluster { .. })
        ));
        let basic = Credentials {
            peer_certs: None,
            authorization: Some("Basic abc"),
            cluster_id: None,
        };
        assert!(matches!(
            auth.authenticate(&basic, now),
            Err(AuthError::BadToken(_))
        ));
        let junk = vec![vec![1u8, 2, 3]];
        let cert = Credentials {
            peer_certs: Some(&junk),
            authorization: Some(&t),
            cluster_id: None,
        };
        assert!(
            matches!(
                auth.authenticate(&cert, now),
                Err(AuthError::BadClientCert(_))
            ),
            "a client certificate is tried first"
        );
    }
}
