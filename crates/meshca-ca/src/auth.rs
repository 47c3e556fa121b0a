//! Who is asking: istiod's authenticators, tried in its order. First the TLS client certificate
//! (already verified against the CA's roots during the handshake; its SPIFFE URI SAN is the
//! identity), then a bearer JWT checked locally against the configured issuers' JWKS.
//! Kubernetes TokenReview is not built yet: a server without JWT issuers accepts only mTLS.

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

/// The authentication settings of a server.
pub struct Authenticator {
    trust_domain: TrustDomain,
    jwt: Option<Verifier>,
    cluster_id: Option<String>,
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
            let verifier = self.jwt.as_ref().ok_or_else(|| {
                AuthError::BadToken("this server has no JWT issuer configured".to_owned())
            })?;
            let verified = verifier
                .verify(token.trim(), now)
                .map_err(|e| AuthError::BadToken(e.to_string()))?;
            verified
                .spiffe_id(&self.trust_domain)
                .map_err(|e| AuthError::BadToken(e.to_string()))?
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
