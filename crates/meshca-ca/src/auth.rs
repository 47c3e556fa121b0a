//! Who is asking: istiod's authenticators, tried in its order. First the TLS client certificate
//! (already verified against the CA's roots during the handshake; its SPIFFE URI SAN is the
//! identity), then a bearer JWT checked locally against the configured issuers' JWKS files, then
//! Kubernetes for the cluster the request comes from ([`crate::cluster`],
//! [`crate::kube_auth`]): the JWKS of its API server when so configured, then TokenReview. The
//! JWT keys can be replaced while serving, when an issuer rotates them.

use std::collections::HashMap;
use std::sync::Mutex;

use arc_swap::ArcSwapOption;
use meshca_pki::{Certificate, SpiffeId, TrustDomain};
use meshca_token::{TokenError, Verifier};
use time::OffsetDateTime;

use crate::apiserver_jwks::ApiJwksError;
use crate::cluster::{Clusters, RequestCluster};
use crate::kube_auth::{KubeCluster, KubeRefusal};
use crate::metrics::Refusal;
use crate::tokenreview::TokenReviewError;

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
    /// Local JWT verification refused the bearer token, and Kubernetes did not vouch for it
    /// as a token of the request's cluster.
    #[error("bearer token: {}{kube}", .jwt.as_ref().map(|j| format!("{j}; ")).unwrap_or_default())]
    TokenRefused {
        /// why JWT verification refused it; `None` when no JWKS file is configured
        jwt: Option<TokenError>,
        /// why Kubernetes did not vouch for it
        kube: Box<KubeRefusal>,
    },
    /// The identity belongs to another trust domain.
    #[error("identity {id} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// the identity presented
        id: String,
        /// this server's trust domain
        trust_domain: String,
    },
    /// The request names a cluster this server does not answer for.
    #[error("request is for cluster {asked:?}, this CA serves {served:?}")]
    WrongCluster {
        /// the cluster the request names
        asked: String,
        /// the clusters this server answers for, its own first
        served: Vec<String>,
    },
}

impl AuthError {
    /// The reason the refusal is counted under.
    pub fn refusal(&self) -> Refusal {
        match self {
            AuthError::NoCredential => Refusal::NoCredential,
            AuthError::BadClientCert(_) => Refusal::ClientCertInvalid,
            AuthError::BadToken(_) => Refusal::TokenMalformed,
            AuthError::TokenRefused { jwt, kube } => token_refusal(jwt.as_ref(), kube),
            AuthError::ForeignTrustDomain { .. } => Refusal::ForeignTrustDomain,
            AuthError::WrongCluster { .. } => Refusal::ClusterNotServed,
        }
    }
}

/// The reason of a token every authenticator refused: the verdict of the first that knew the
/// token's issuer (the JWKS files, then the API server's keys), else TokenReview's.
fn token_refusal(jwt: Option<&TokenError>, kube: &KubeRefusal) -> Refusal {
    let knew_issuer = |e: &&TokenError| !matches!(e, TokenError::UntrustedIssuer { .. });
    if let Some(e) = jwt.filter(knew_issuer) {
        return token_error_refusal(e);
    }
    match kube {
        KubeRefusal::NotConfigured { .. } => jwt.map_or(Refusal::TokenIssuer, token_error_refusal),
        KubeRefusal::Jwks(j) => api_keys(j).map_or_else(|r| r, token_error_refusal),
        KubeRefusal::Review { jwks, review } => {
            match jwks.as_ref().map(api_keys) {
                Some(Ok(e)) if knew_issuer(&e) => return token_error_refusal(e),
                _ => {}
            }
            review_refusal(review)
        }
    }
}

/// What the API server's keys found wrong with a token; `Err`: they could not be had.
fn api_keys(j: &ApiJwksError) -> Result<&TokenError, Refusal> {
    match j {
        ApiJwksError::Refused { error, .. } => Ok(error),
        _ => Err(Refusal::KubeUnavailable),
    }
}

/// The reason of a token the verifier refused.
fn token_error_refusal(e: &TokenError) -> Refusal {
    match e {
        TokenError::UnsupportedAlg { alg } if alg.eq_ignore_ascii_case("none") => {
            Refusal::TokenUnsigned
        }
        TokenError::UnsupportedAlg { .. } => Refusal::TokenAlgorithm,
        TokenError::UntrustedIssuer { .. } => Refusal::TokenIssuer,
        TokenError::UnknownKid { .. }
        | TokenError::KeyAlgMismatch { .. }
        | TokenError::NoKeyForAlg { .. } => Refusal::TokenUnknownKey,
        TokenError::BadSignature => Refusal::TokenSignature,
        TokenError::WrongAudience { .. } => Refusal::TokenAudience,
        TokenError::Expired { .. } => Refusal::TokenExpired,
        TokenError::NotYetValid { .. } => Refusal::TokenNotYetValid,
        TokenError::MissingClaim { .. } | TokenError::BadClaim { .. } | TokenError::Pki(_) => {
            Refusal::TokenClaims
        }
        _ => Refusal::TokenMalformed,
    }
}

/// The reason of a token TokenReview refused.
fn review_refusal(e: &TokenReviewError) -> Refusal {
    match e {
        TokenReviewError::WrongAudience { .. } => Refusal::TokenAudience,
        TokenReviewError::NotServiceAccount { .. } => Refusal::TokenClaims,
        TokenReviewError::NotAuthenticated { .. }
        | TokenReviewError::AudiencesUnconfirmed { .. } => Refusal::TokenReview,
        _ => Refusal::KubeUnavailable,
    }
}

/// How many verified tokens are remembered. Workloads present the same token on every request
/// until it is rotated, so a verified token is kept (by its SHA-256) until it expires, sparing
/// one signature verification per request; the table is emptied when full.
const TOKEN_CACHE_SIZE: usize = 16_384;

/// The authentication settings of a server.
pub struct Authenticator {
    trust_domain: TrustDomain,
    jwt: ArcSwapOption<JwtKeys>,
    clusters: Clusters<KubeCluster>,
    /// The SPIFFE ID read from each client certificate, by the SHA-256 of its DER. The TLS
    /// handshake has verified the certificate already; a client renewing over one connection
    /// sends the same one with every request, and reading the identity from the digest spares
    /// parsing it each time.
    client_ids: Mutex<HashMap<[u8; 32], SpiffeId>>,
}

/// The JWT verifier in use and the tokens it verified. They are replaced together, so that a
/// token verified with a key since withdrawn is not believed from memory.
struct JwtKeys {
    verifier: Verifier,
    verified: Mutex<HashMap<[u8; 32], (SpiffeId, OffsetDateTime)>>,
}

impl JwtKeys {
    fn new(verifier: Verifier) -> Self {
        JwtKeys {
            verifier,
            verified: Mutex::new(HashMap::new()),
        }
    }
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
    /// A server in `trust_domain`, accepting JWTs when `jwt` is given, answering for `clusters`
    /// and asking their API servers about the other tokens.
    pub fn new(
        trust_domain: TrustDomain,
        jwt: Option<Verifier>,
        clusters: Clusters<KubeCluster>,
    ) -> Self {
        Authenticator {
            trust_domain,
            jwt: ArcSwapOption::from_pointee(jwt.map(JwtKeys::new)),
            clusters,
            client_ids: Mutex::new(HashMap::new()),
        }
    }

    /// The trust domain identities must belong to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Verifies JWTs with `verifier` from the next request on (new keys of the issuers).
    /// Tokens remembered as verified with the keys before are forgotten.
    pub fn replace_verifier(&self, verifier: Verifier) {
        self.jwt
            .store(Some(std::sync::Arc::new(JwtKeys::new(verifier))));
    }

    /// Finds the caller's identity.
    pub async fn authenticate(
        &self,
        creds: &Credentials<'_>,
        now: OffsetDateTime,
    ) -> Result<SpiffeId, AuthError> {
        let cluster = self.clusters.resolve(creds.cluster_id)?;
        let id = if let Some(leaf) = creds.peer_certs.and_then(|c| c.first()) {
            self.identity_from_client_cert(leaf)?
        } else if let Some(auth) = creds.authorization {
            let token = auth
                .strip_prefix("Bearer ")
                .or_else(|| auth.strip_prefix("bearer "))
                .ok_or_else(|| {
                    AuthError::BadToken("authorization is not \"Bearer <token>\"".to_owned())
                })?
                .trim();
            match self.identity_from_jwt(token, now) {
                Ok(id) => id,
                Err(jwt) => self.identity_from_kube(token, cluster, jwt, now).await?,
            }
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
    /// The first authenticator: the SPIFFE ID of the (TLS-verified) client certificate.
    fn identity_from_client_cert(&self, der: &[u8]) -> Result<SpiffeId, AuthError> {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref());
        if let Ok(cache) = self.client_ids.lock()
            && let Some(id) = cache.get(&digest)
        {
            return Ok(id.clone());
        }
        let id = from_client_cert(der)?;
        if let Ok(mut cache) = self.client_ids.lock() {
            if cache.len() >= TOKEN_CACHE_SIZE {
                cache.clear();
            }
            cache.insert(digest, id.clone());
        }
        Ok(id)
    }

    /// The second authenticator; the error is the reason (none: no JWT issuer is configured),
    /// for the message of the third.
    fn identity_from_jwt(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<SpiffeId, Option<TokenError>> {
        let keys = self.jwt.load();
        let keys = keys.as_ref().ok_or(None)?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref(),
        );
        if let Ok(cache) = keys.verified.lock()
            && let Some((id, exp)) = cache.get(&digest)
            && now < *exp
        {
            return Ok(id.clone());
        }
        let verified = keys.verifier.verify(token, now).map_err(Some)?;
        let id = verified.spiffe_id(&self.trust_domain).map_err(Some)?;
        if let Ok(mut cache) = keys.verified.lock() {
            if cache.len() >= TOKEN_CACHE_SIZE {
                cache.clear();
            }
            cache.insert(digest, (id.clone(), verified.expires_at()));
        }
        Ok(id)
    }

    /// The third authenticator: Kubernetes, for the request's cluster (its API server's keys,
    /// then TokenReview); the identity is the token's service account in this server's trust
    /// domain.
    async fn identity_from_kube(
        &self,
        token: &str,
        cluster: RequestCluster<'_, KubeCluster>,
        jwt: Option<TokenError>,
        now: OffsetDateTime,
    ) -> Result<SpiffeId, AuthError> {
        let shown = cluster.to_string();
        let Some(kube) = cluster.auth() else {
            return Err(AuthError::TokenRefused {
                jwt,
                kube: Box::new(KubeRefusal::NotConfigured { cluster: shown }),
            });
        };
        let who =
            kube.identify(token, now, &shown)
                .await
                .map_err(|kube| AuthError::TokenRefused {
                    jwt,
                    kube: Box::new(kube),
                })?;
        who.spiffe_id(&self.trust_domain)
            .map_err(|e| AuthError::BadToken(format!("{shown}: {e}")))
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

    fn signing_key() -> SigningKey {
        let pem = PrivateKey::generate(KeyType::EcdsaP256)
            .unwrap()
            .to_pkcs8_pem();
        SigningKey::from_pem(pem.as_bytes(), "k").unwrap()
    }

    fn verifier(key: &SigningKey) -> Verifier {
        Verifier::new("istio-ca").trust("iss", Jwks::from_keys([key.public_jwk()]))
    }

    fn setup() -> (Authenticator, SigningKey) {
        let key = signing_key();
        let td = TrustDomain::new("cluster.local").unwrap();
        let clusters = Clusters::new(Some("c1".into()), None);
        (Authenticator::new(td, Some(verifier(&key)), clusters), key)
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

    fn bearer(token: &str) -> Credentials<'_> {
        Credentials {
            peer_certs: None,
            authorization: Some(token),
            cluster_id: Some("c1"),
        }
    }

    #[tokio::test]
    async fn a_remembered_token_stops_working_when_it_expires() {
        let (auth, key) = setup();
        let now = OffsetDateTime::now_utc();
        let t = format!("Bearer {}", token(&key, now, time::Duration::minutes(10)));
        let id = auth.authenticate(&bearer(&t), now).await.unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/foo/sa/bar");
        // Served from the cache the second time, still valid.
        let later = now + time::Duration::minutes(9);
        assert_eq!(auth.authenticate(&bearer(&t), later).await.unwrap(), id);
        let err = auth
            .authenticate(&bearer(&t), now + time::Duration::minutes(12))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        assert_eq!(err.refusal(), Refusal::TokenExpired);
    }

    #[tokio::test]
    async fn new_keys_are_used_and_tokens_of_withdrawn_keys_are_forgotten() {
        let (auth, old) = setup();
        let new = signing_key();
        let now = OffsetDateTime::now_utc();
        let by_old = format!("Bearer {}", token(&old, now, time::Duration::minutes(10)));
        let by_new = format!("Bearer {}", token(&new, now, time::Duration::minutes(10)));
        auth.authenticate(&bearer(&by_old), now).await.unwrap();
        let err = auth.authenticate(&bearer(&by_new), now).await.unwrap_err();
        assert!(err.to_string().contains("no key with kid"), "{err}");
        assert_eq!(err.refusal(), Refusal::TokenUnknownKey);

        auth.replace_verifier(verifier(&new));
        auth.authenticate(&bearer(&by_new), now).await.unwrap();
        // Verified (and remembered) under the old keys, refused once they are gone.
        let err = auth.authenticate(&bearer(&by_old), now).await.unwrap_err();
        assert!(err.to_string().contains("no key with kid"), "{err}");
    }

    #[tokio::test]
    async fn a_token_no_jwt_key_accepts_names_the_cluster_without_token_review() {
        let (auth, _) = setup();
        let now = OffsetDateTime::now_utc();
        let err = auth
            .authenticate(&bearer("Bearer opaque"), now)
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                AuthError::TokenRefused { kube, .. }
                    if matches!(**kube, KubeRefusal::NotConfigured { .. })
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with("; no TokenReview is configured for cluster \"c1\""),
            "{err}"
        );
        assert!(!err.to_string().contains("opaque"), "{err}");
        assert_eq!(err.refusal(), Refusal::TokenMalformed);
    }

    #[test]
    fn a_token_counts_under_the_verdict_of_the_first_authenticator_that_knew_its_issuer() {
        let at = crate::apiserver::ApiServer {
            cluster: Some("c1".into()),
            url: "https://127.0.0.1:6443".into(),
        };
        let foreign = || TokenError::UntrustedIssuer {
            issuer: "other".into(),
        };
        let refused = |review| KubeRefusal::Review { jwks: None, review };
        let not_authenticated = || TokenReviewError::NotAuthenticated {
            at: at.clone(),
            reason: "invalid bearer token".into(),
        };
        let expired = || TokenError::Expired {
            expires_at: OffsetDateTime::UNIX_EPOCH,
            now: OffsetDateTime::UNIX_EPOCH,
        };
        let not_configured = || KubeRefusal::NotConfigured {
            cluster: "cluster \"c1\"".into(),
        };
        for (jwt, kube, reason) in [
            // The JWKS files knew the issuer: their verdict.
            (
                Some(TokenError::BadSignature),
                refused(not_authenticated()),
                Refusal::TokenSignature,
            ),
            // They did not: TokenReview's.
            (
                Some(foreign()),
                refused(not_authenticated()),
                Refusal::TokenReview,
            ),
            (None, refused(not_authenticated()), Refusal::TokenReview),
            // The API server's keys knew it, TokenReview refused too: the keys' verdict.
            (
                Some(foreign()),
                KubeRefusal::Review {
                    jwks: Some(ApiJwksError::Refused {
                        at: at.clone(),
                        error: expired(),
                    }),
                    review: not_authenticated(),
                },
                Refusal::TokenExpired,
            ),
            (
                None,
                KubeRefusal::Jwks(ApiJwksError::Refused {
                    at: at.clone(),
                    error: TokenError::UnsupportedAlg { alg: "none".into() },
                }),
                Refusal::TokenUnsigned,
            ),
            (
                None,
                refused(TokenReviewError::Status {
                    at: at.clone(),
                    status: 503,
                    message: None,
                }),
                Refusal::KubeUnavailable,
            ),
            (Some(foreign()), not_configured(), Refusal::TokenIssuer),
            (None, not_configured(), Refusal::TokenIssuer),
        ] {
            let err = AuthError::TokenRefused {
                jwt,
                kube: Box::new(kube),
            };
            assert_eq!(err.refusal(), reason, "{err}");
        }
    }

    #[tokio::test]
    async fn credentials_are_checked_in_istiods_order_and_clusters_must_match() {
        let (auth, key) = setup();
        let now = OffsetDateTime::now_utc();
        let none = Credentials {
            peer_certs: None,
            authorization: None,
            cluster_id: None,
        };
        let err = auth.authenticate(&none, now).await.unwrap_err();
        assert!(matches!(err, AuthError::NoCredential));
        assert_eq!(err.refusal(), Refusal::NoCredential);
        let t = format!("Bearer {}", token(&key, now, time::Duration::minutes(10)));
        let other = Credentials {
            peer_certs: None,
            authorization: Some(&t),
            cluster_id: Some("c2"),
        };
        let err = auth.authenticate(&other, now).await.unwrap_err();
        assert!(matches!(err, AuthError::WrongCluster { .. }));
        assert_eq!(err.refusal(), Refusal::ClusterNotServed);
        let basic = Credentials {
            peer_certs: None,
            authorization: Some("Basic abc"),
            cluster_id: None,
        };
        assert!(matches!(
            auth.authenticate(&basic, now).await,
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
                auth.authenticate(&cert, now).await,
                Err(AuthError::BadClientCert(_))
            ),
            "a client certificate is tried first"
        );
    }
}
