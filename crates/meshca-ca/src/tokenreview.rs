//! Kubernetes TokenReview, the third authenticator istiod uses: a service-account token is sent
//! to the cluster's API server, which says whether it is valid, for which audiences, and whose it
//! is. This module owns that one HTTP exchange (a new HTTP/1.1 connection per review, over TLS
//! trusting only the given CA) and the reading of the answer into a namespace and service account.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::header::{
    ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT,
};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use meshca_pki::{Certificate, PkiError, SpiffeId, TrustDomain};
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The audience istiod asks the API server to check tokens against.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";

/// How long one review may take, connecting included, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read from the API server; a TokenReview is well under a KiB.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

const REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Why a token review did not produce an identity. Messages name the API server and never
/// contain a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenReviewError {
    /// The API server URL is not usable.
    #[error("token review API server {url:?}: {reason}")]
    BadUrl {
        /// the URL as given
        url: String,
        /// what is wrong with it
        reason: String,
    },
    /// The CA to trust for the API server is missing, unreadable, or given for plain http.
    #[error("token review at {api_server}: {reason}")]
    BadCa {
        /// the API server
        api_server: String,
        /// what is wrong with the CA
        reason: String,
    },
    /// The reviewer's own token cannot be sent.
    #[error("token review at {api_server}: the reviewer token {reason}")]
    BadReviewerToken {
        /// the API server
        api_server: String,
        /// what is wrong with it
        reason: String,
    },
    /// No TCP connection could be made.
    #[error("token review at {api_server}: cannot connect: {reason}")]
    Connect {
        /// the API server
        api_server: String,
        /// the system's error
        reason: String,
    },
    /// The TLS handshake failed (an untrusted certificate, a wrong name, ...).
    #[error("token review at {api_server}: TLS handshake failed: {reason}")]
    Tls {
        /// the API server
        api_server: String,
        /// the TLS library's error
        reason: String,
    },
    /// The whole exchange took longer than the reviewer's timeout.
    #[error("token review at {api_server}: did not answer within {after:?}")]
    Timeout {
        /// the API server
        api_server: String,
        /// the timeout
        after: Duration,
    },
    /// The API server closed the connection before answering completely.
    #[error("token review at {api_server}: closed the connection")]
    Closed {
        /// the API server
        api_server: String,
    },
    /// The HTTP exchange failed otherwise (not HTTP, a broken body, ...).
    #[error("token review at {api_server}: HTTP exchange failed: {reason}")]
    Http {
        /// the API server
        api_server: String,
        /// hyper's error
        reason: String,
    },
    /// The API server answered with a status other than 200 or 201.
    #[error(
        "token review at {api_server}: answered {status}{}",
        .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
    )]
    Status {
        /// the API server
        api_server: String,
        /// the HTTP status
        status: StatusCode,
        /// the `message` of a Kubernetes `Status` body, when there is one
        message: Option<String>,
    },
    /// The answer is not a TokenReview.
    #[error("token review at {api_server}: unreadable answer: {reason}")]
    BadResponse {
        /// the API server
        api_server: String,
        /// what is wrong with it
        reason: String,
    },
    /// The API server did not authenticate the token.
    #[error("token review at {api_server}: not authenticated: {reason}")]
    NotAuthenticated {
        /// the API server
        api_server: String,
        /// `status.error` of the review, or a note that there was none
        reason: String,
    },
    /// The API server did not confirm any of the audiences asked for.
    #[error(
        "token review at {api_server}: the API server did not confirm the audiences {requested:?}"
    )]
    AudiencesUnconfirmed {
        /// the API server
        api_server: String,
        /// the audiences asked for
        requested: Vec<String>,
    },
    /// The token is for other audiences than those asked for.
    #[error("token review at {api_server}: token is for audiences {found:?}, not {requested:?}")]
    WrongAudience {
        /// the API server
        api_server: String,
        /// the audiences asked for
        requested: Vec<String>,
        /// the audiences the API server answered with
        found: Vec<String>,
    },
    /// The token belongs to a user that is not a service account.
    #[error("token review at {api_server}: username {username:?} is not a service account")]
    NotServiceAccount {
        /// the API server
        api_server: String,
        /// the username the API server answered with
        username: String,
    },
}

/// The service account a reviewed token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewedIdentity {
    /// The namespace.
    pub namespace: String,
    /// The service account name.
    pub service_account: String,
}

impl ReviewedIdentity {
    /// The identity Istio gives this service account in `td`; fails on names a SPIFFE ID
    /// cannot hold.
    pub fn spiffe_id(&self, td: &TrustDomain) -> Result<SpiffeId, PkiError> {
        SpiffeId::workload(td, &self.namespace, &self.service_account)
    }
}

/// Asks one API server to review tokens, as the server's own service account.
pub struct TokenReviewer {
    /// `scheme://authority[/prefix]`, shown in every message.
    api_server: String,
    host: String,
    port: u16,
    authority: HeaderValue,
    path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    authorization: HeaderValue,
    audiences: Vec<String>,
    timeout: Duration,
}

impl TokenReviewer {
    /// A reviewer for the API server at `api_server` (`http://` or `https://host[:port]`, with an
    /// optional path prefix), trusting only `ca_pem` for https (required there, refused for
    /// http), authenticating with `reviewer_token`, asking for `audiences` (none: no audience
    /// check), each review bounded by `timeout`.
    pub fn new(
        api_server: &str,
        ca_pem: Option<&[u8]>,
        reviewer_token: String,
        audiences: Vec<String>,
        timeout: Duration,
    ) -> Result<Self, TokenReviewError> {
        let bad = |reason: &str| TokenReviewError::BadUrl {
            url: api_server.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = api_server
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("must start with http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("must not carry user information"));
        }
        if uri.query().is_some() {
            return Err(bad("must not have a query"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let prefix = uri.path().trim_end_matches('/');
        let scheme = if https { "https" } else { "http" };
        let shown = format!("{scheme}://{authority}{prefix}");
        let host_header =
            HeaderValue::from_str(authority.as_str()).map_err(|_| bad("host is not valid"))?;

        let bad_token = |reason: &str| TokenReviewError::BadReviewerToken {
            api_server: shown.clone(),
            reason: reason.to_owned(),
        };
        if reviewer_token.trim().is_empty() {
            return Err(bad_token("is empty"));
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", reviewer_token.trim()))
            .map_err(|_| bad_token("holds characters an HTTP header cannot carry"))?;
        authorization.set_sensitive(true);

        let bad_ca = |reason: String| TokenReviewError::BadCa {
            api_server: shown.clone(),
            reason,
        };
        let tls = match (https, ca_pem) {
            (true, Some(pem)) => {
                let certs = Certificate::all_from_pem(pem, "API server CA")
                    .map_err(|e| bad_ca(e.to_string()))?;
                let mut roots = RootCertStore::empty();
                for c in &certs {
                    roots
                        .add(c.der().clone())
                        .map_err(|e| bad_ca(format!("{}: {e}", c.origin())))?;
                }
                let mut config =
                    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                        .map_err(|e| bad_ca(e.to_string()))?
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|_| bad("host is not a valid TLS server name"))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            (true, None) => {
                return Err(bad_ca(
                    "https needs a CA to trust for the API server; none was given".to_owned(),
                ));
            }
            (false, Some(_)) => {
                return Err(bad_ca(
                    "a CA was given for the API server, but the URL is plain http".to_owned(),
                ));
            }
            (false, None) => None,
        };

        Ok(TokenReviewer {
            host: host.to_owned(),
            port,
            authority: host_header,
            path: format!("{prefix}{REVIEW_PATH}"),
            api_server: shown,
            tls,
            authorization,
            audiences,
            timeout,
        })
    }

    /// The API server, as shown in messages.
    pub fn api_server(&self) -> &str {
        &self.api_server
    }

    /// Asks the API server whose `token` is: a service account, authenticated for one of the
    /// audiences asked for.
    pub async fn review(&self, token: &str) -> Result<ReviewedIdentity, TokenReviewError> {
        let request = self.request(token)?;
        let (status, body) = tokio::time::timeout(self.timeout, self.send(request))
            .await
            .map_err(|_| TokenReviewError::Timeout {
                api_server: self.api_server.clone(),
                after: self.timeout,
            })??;
        self.read_answer(status, &body)
    }

    fn request(&self, token: &str) -> Result<Request<Full<Bytes>>, TokenReviewError> {
        let body = serde_json::to_vec(&ReviewRequest {
            api_version: "authentication.k8s.io/v1",
            kind: "TokenReview",
            spec: ReviewSpec {
                token,
                audiences: &self.audiences,
            },
        })
        .map_err(|e| self.http_error(e.to_string()))?;
        Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .header(HOST, self.authority.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, "meshca")
            .header(CONNECTION, "close")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.http_error(e.to_string()))
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), TokenReviewError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| TokenReviewError::Connect {
                api_server: self.api_server.clone(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.exchange(tcp, request).await,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
                    TokenReviewError::Tls {
                        api_server: self.api_server.clone(),
                        reason: e.to_string(),
                    }
                })?;
                self.exchange(tls, request).await
            }
        }
    }

    async fn exchange<S>(
        &self,
        io: S,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), TokenReviewError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.hyper_error(&e))?;
        let response = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.hyper_error(&e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<LengthLimitError>().is_some() {
                        self.bad_response(format!("answer larger than {MAX_RESPONSE_BYTES} bytes"))
                    } else if let Some(e) = e.downcast_ref::<hyper::Error>() {
                        self.hyper_error(e)
                    } else {
                        self.http_error(e.to_string())
                    }
                })?;
            Ok((status, body.to_bytes()))
        };
        let mut response = std::pin::pin!(response);
        let mut conn = std::pin::pin!(conn);
        // The connection must be driven while the response is read; once it ends (the server
        // closed it, or the exchange is over), the response future has all it will ever get.
        tokio::select! {
            r = &mut response => r,
            _ = &mut conn => response.await,
        }
    }

    fn read_answer(
        &self,
        status: StatusCode,
        body: &[u8],
    ) -> Result<ReviewedIdentity, TokenReviewError> {
        if status != StatusCode::OK && status != StatusCode::CREATED {
            return Err(TokenReviewError::Status {
                api_server: self.api_server.clone(),
                status,
                message: status_message(body),
            });
        }
        let answer: ReviewAnswer = serde_json::from_slice(body)
            .map_err(|e| self.bad_response(format!("not a TokenReview: {e}")))?;
        if answer.kind != "TokenReview" {
            return Err(
                self.bad_response(format!("got a {:?} instead of a TokenReview", answer.kind))
            );
        }
        let status = answer.status;
        if !status.authenticated {
            let reason = if status.error.trim().is_empty() {
                "the API server gave no reason".to_owned()
            } else {
                one_line(&status.error)
            };
            return Err(TokenReviewError::NotAuthenticated {
                api_server: self.api_server.clone(),
                reason,
            });
        }
        if !self.audiences.is_empty() {
            // Kubernetes echoes the audiences it checked; none means they were not checked.
            let found = status.audiences.unwrap_or_default();
            if found.is_empty() {
                return Err(TokenReviewError::AudiencesUnconfirmed {
                    api_server: self.api_server.clone(),
                    requested: self.audiences.clone(),
                });
            }
            if !found.iter().any(|a| self.audiences.contains(a)) {
                return Err(TokenReviewError::WrongAudience {
                    api_server: self.api_server.clone(),
                    requested: self.audiences.clone(),
                    found,
                });
            }
        }
        let username = status.user.username;
        match service_account(&username) {
            Some((namespace, service_account)) => Ok(ReviewedIdentity {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
            }),
            None => Err(TokenReviewError::NotServiceAccount {
                api_server: self.api_server.clone(),
                username,
            }),
        }
    }

    fn hyper_error(&self, e: &hyper::Error) -> TokenReviewError {
        if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
            TokenReviewError::Closed {
                api_server: self.api_server.clone(),
            }
        } else {
            self.http_error(e.to_string())
        }
    }

    fn http_error(&self, reason: String) -> TokenReviewError {
        TokenReviewError::Http {
            api_server: self.api_server.clone(),
            reason,
        }
    }

    fn bad_response(&self, reason: String) -> TokenReviewError {
        TokenReviewError::BadResponse {
            api_server: self.api_server.clone(),
            reason,
        }
    }
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The reviewer token is a credential: never printed.
        f.debug_struct("TokenReviewer")
            .field("api_server", &self.api_server)
            .field("tls", &self.tls.is_some())
            .field("reviewer_token", &"...")
            .field("audiences", &self.audiences)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `system:serviceaccount:<ns>:<sa>` split into its namespace and name.
fn service_account(username: &str) -> Option<(&str, &str)> {
    let (ns, sa) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
        .split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then_some((ns, sa))
}

/// The `message` of a Kubernetes `Status` body, shortened to one line.
fn status_message(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Status {
        #[serde(default)]
        message: String,
    }
    let status: Status = serde_json::from_slice(body).ok()?;
    let message = one_line(&status.message);
    (!message.is_empty()).then_some(message)
}

fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(300).collect()
}

#[derive(Serialize)]
struct ReviewRequest<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    spec: ReviewSpec<'a>,
}

#[derive(Serialize)]
struct ReviewSpec<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    audiences: &'a [String],
}

#[derive(Deserialize)]
struct ReviewAnswer {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    status: ReviewStatus,
}

#[derive(Default, Deserialize)]
struct ReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: UserInfo,
    #[serde(default)]
    audiences: Option<Vec<String>>,
    #[serde(default)]
    error: String,
}

#[derive(Default, Deserialize)]
struct UserInfo {
    #[serde(default)]
    username: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            service_account("system:serviceaccount:foo:bar"),
            Some(("foo", "bar"))
        );
        for refused in [
            "alice",
            "system:serviceaccount:foo",
            "system:serviceaccount::bar",
            "system:serviceaccount:foo:",
            "system:serviceaccount:foo:bar:baz",
            "system:node:foo",
        ] {
            assert_eq!(service_account(refused), None, "{refused}");
        }
    }

    #[test]
    fn status_message_is_one_line() {
        let body = br#"{"kind":"Status","message":"forbidden: cannot create\nsecond line"}"#;
        assert_eq!(
            status_message(body).as_deref(),
            Some("forbidden: cannot create")
        );
        assert_eq!(status_message(b"<html>"), None);
    }

    #[test]
    fn path_prefix_and_default_port() {
        let r = TokenReviewer::new(
            "http://api.example:8080/k8s/",
            None,
            "t".into(),
            vec![],
            DEFAULT_TIMEOUT,
        );
        let Ok(r) = r else { panic!("refused") };
        assert_eq!(r.api_server(), "http://api.example:8080/k8s");
        assert_eq!(r.path, "/k8s/apis/authentication.k8s.io/v1/tokenreviews");
        assert_eq!(r.port, 8080);
        let Ok(r) = TokenReviewer::new("http://[::1]", None, "t".into(), vec![], DEFAULT_TIMEOUT)
        else {
            panic!("refused")
        };
        assert_eq!((r.host.as_str(), r.port), ("::1", 80));
    }
}
