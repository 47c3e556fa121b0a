//! Kubernetes TokenReview, the third authenticator istiod uses: a service-account token is sent
//! to its cluster's API server (`POST authentication.k8s.io/v1 TokenReview`), which says whether
//! it is valid, for which audiences, and whose it is. The exchange goes through kube's client
//! ([`crate::apiserver`]); this module owns the request and the checks on the answer:
//! authenticated, one of our audiences confirmed, and a service account as the user.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use meshca_pki::{PkiError, SpiffeId, TrustDomain};

use crate::apiserver::{self, ApiServer, CallError, one_line, status_message};

/// The audience istiod asks the API server to check tokens against.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";

/// How long one review may take, connecting included, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read from the API server; a TokenReview is a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

const REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Why a token review did not produce an identity. Messages name the API server and its
/// cluster, and never contain a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenReviewError {
    /// The API server could not be asked, or did not answer in time.
    #[error("token review at {at}: {error}")]
    Call {
        /// the API server
        at: ApiServer,
        /// what went wrong
        error: CallError,
    },
    /// The API server answered with a status other than 200 or 201 (403: the reviewer may not
    /// create TokenReviews).
    #[error(
        "token review at {at}: answered HTTP {status}{}",
        .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
    )]
    Status {
        /// the API server
        at: ApiServer,
        /// the HTTP status
        status: u16,
        /// the `message` of a Kubernetes `Status` body, when there is one
        message: Option<String>,
    },
    /// The answer is not a TokenReview.
    #[error("token review at {at}: unreadable answer: {reason}")]
    BadResponse {
        /// the API server
        at: ApiServer,
        /// what is wrong with it
        reason: String,
    },
    /// The API server did not authenticate the token.
    #[error("token review at {at}: not authenticated: {reason}")]
    NotAuthenticated {
        /// the API server
        at: ApiServer,
        /// `status.error` of the review, or a note that there was none
        reason: String,
    },
    /// The API server did not confirm any of the audiences asked for.
    #[error("token review at {at}: the API server did not confirm the audiences {requested:?}")]
    AudiencesUnconfirmed {
        /// the API server
        at: ApiServer,
        /// the audiences asked for
        requested: Vec<String>,
    },
    /// The token is for other audiences than those asked for.
    #[error("token review at {at}: token is for audiences {found:?}, not {requested:?}")]
    WrongAudience {
        /// the API server
        at: ApiServer,
        /// the audiences asked for
        requested: Vec<String>,
        /// the audiences the API server answered with
        found: Vec<String>,
    },
    /// The token belongs to a user that is not a service account.
    #[error("token review at {at}: username {username:?} is not a service account")]
    NotServiceAccount {
        /// the API server
        at: ApiServer,
        /// the username the API server answered with
        username: String,
    },
}

impl TokenReviewError {
    /// Whether the API server gave no verdict (unreachable, too slow, an error status), as
    /// opposed to refusing the token.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Call { .. } | Self::Status { .. })
    }
}

/// The service account a token belongs to.
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

/// Asks one API server to review tokens, with one pooled kube client whose credentials are the
/// reviewer's (allowed to create TokenReviews: `system:auth-delegator`).
#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
    at: ApiServer,
    audiences: Vec<String>,
    timeout: Duration,
}

impl TokenReviewer {
    /// A reviewer calling `at` through `client`, asking for `audiences` (none: the API server's
    /// own audiences), each review bounded by `timeout`.
    pub fn new(
        client: kube::Client,
        at: ApiServer,
        audiences: Vec<String>,
        timeout: Duration,
    ) -> Self {
        TokenReviewer {
            client,
            at,
            audiences,
            timeout,
        }
    }

    /// The API server, as shown in messages.
    pub fn api_server(&self) -> &ApiServer {
        &self.at
    }

    /// Asks the API server whose `token` is: a service account, authenticated for one of the
    /// audiences asked for.
    pub async fn review(&self, token: &str) -> Result<ReviewedIdentity, TokenReviewError> {
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let bad = |reason: String| TokenReviewError::BadResponse {
            at: self.at.clone(),
            reason,
        };
        let body = serde_json::to_vec(&request).map_err(|e| bad(e.to_string()))?;
        let request = http::Request::post(REVIEW_PATH)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .map_err(|e| bad(e.to_string()))?;
        let answer = apiserver::call(&self.client, request, self.timeout, MAX_RESPONSE_BYTES).await;
        let (status, body) = answer.map_err(|error| {
            let error = TokenReviewError::Call {
                at: self.at.clone(),
                error,
            };
            tracing::warn!(%error, "TokenReview failed; the request is refused");
            error
        })?;
        read_answer(&self.at, &self.audiences, status.as_u16(), &body).inspect_err(|e| {
            if e.is_unavailable() {
                tracing::warn!(error = %e, "TokenReview failed; the request is refused");
            }
        })
    }
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the reviewer's credentials: only where it points is shown.
        f.debug_struct("TokenReviewer")
            .field("at", &self.at)
            .field("audiences", &self.audiences)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The checks on the API server's answer (its HTTP `status` and `body`) to a review asking for
/// `audiences`. The answer echoes the token in its `spec`: only its `status` is read, and nothing
/// of the body is ever shown. Sans-IO, so that answers can be tested and fuzzed without a server.
pub fn read_answer(
    at: &ApiServer,
    audiences: &[String],
    status: u16,
    body: &[u8],
) -> Result<ReviewedIdentity, TokenReviewError> {
    if status != 200 && status != 201 {
        return Err(TokenReviewError::Status {
            at: at.clone(),
            status,
            message: status_message(body),
        });
    }
    let answer: TokenReview =
        serde_json::from_slice(body).map_err(|e| TokenReviewError::BadResponse {
            at: at.clone(),
            // Only where it failed: serde's message can quote the content, and the content
            // holds the token.
            reason: format!(
                "not a TokenReview (line {}, column {})",
                e.line(),
                e.column()
            ),
        })?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let reason = match status.error.as_deref().map(one_line) {
            Some(e) if !e.is_empty() => e,
            _ => "the API server gave no reason".to_owned(),
        };
        return Err(TokenReviewError::NotAuthenticated {
            at: at.clone(),
            reason,
        });
    }
    if !audiences.is_empty() {
        // Kubernetes echoes the audiences it checked; none means they were not checked.
        let found = status.audiences.unwrap_or_default();
        if found.is_empty() {
            return Err(TokenReviewError::AudiencesUnconfirmed {
                at: at.clone(),
                requested: audiences.to_vec(),
            });
        }
        if !found.iter().any(|a| audiences.contains(a)) {
            return Err(TokenReviewError::WrongAudience {
                at: at.clone(),
                requested: audiences.to_vec(),
                found,
            });
        }
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    match service_account(&username) {
        Some((namespace, service_account)) => Ok(ReviewedIdentity {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }),
        None => Err(TokenReviewError::NotServiceAccount {
            at: at.clone(),
            username,
        }),
    }
}

/// `system:serviceaccount:<ns>:<sa>` split into its namespace and name.
fn service_account(username: &str) -> Option<(&str, &str)> {
    let (ns, sa) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
        .split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then_some((ns, sa))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> ApiServer {
        ApiServer {
            cluster: Some("c1".into()),
            url: "https://10.0.0.1:6443".into(),
        }
    }

    fn ours() -> Vec<String> {
        vec!["istio-ca".into()]
    }

    fn answer(status: serde_json::Value) -> Vec<u8> {
        serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": "workload-token-d41d8cd9", "audiences": ["istio-ca"]},
            "status": status,
        })
        .to_string()
        .into_bytes()
    }

    fn read(status: u16, body: &[u8]) -> Result<ReviewedIdentity, TokenReviewError> {
        let r = read_answer(&at(), &ours(), status, body);
        if let Err(e) = &r {
            let msg = e.to_string();
            assert!(
                msg.starts_with("token review at https://10.0.0.1:6443 (cluster \"c1\"): "),
                "{msg}"
            );
            assert!(!msg.contains("workload-token"), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        r
    }

    #[test]
    fn an_authenticated_service_account_for_our_audience_is_accepted() {
        let body = answer(serde_json::json!({
            "authenticated": true,
            "audiences": ["istio-ca"],
            "user": {"username": "system:serviceaccount:foo:bar", "uid": "u"},
        }));
        let who = read(201, &body).unwrap();
        let td = TrustDomain::new("cluster.local").unwrap();
        assert_eq!(
            who.spiffe_id(&td).unwrap().to_string(),
            "spiffe://cluster.local/ns/foo/sa/bar"
        );
    }

    #[test]
    fn every_other_answer_is_refused_with_its_reason() {
        let cases = [
            (
                201,
                answer(serde_json::json!({
                    "authenticated": false,
                    "error": "[invalid bearer token, token has been invalidated]\nmore",
                })),
                "not authenticated: [invalid bearer token, token has been invalidated]",
            ),
            (
                201,
                answer(serde_json::json!({})),
                "not authenticated: the API server gave no reason",
            ),
            (
                201,
                answer(serde_json::json!({
                    "authenticated": true,
                    "user": {"username": "system:serviceaccount:foo:bar"},
                })),
                "did not confirm the audiences [\"istio-ca\"]",
            ),
            (
                201,
                answer(serde_json::json!({
                    "authenticated": true,
                    "audiences": ["https://kubernetes.default.svc"],
                    "user": {"username": "system:serviceaccount:foo:bar"},
                })),
                "token is for audiences [\"https://kubernetes.default.svc\"], not [\"istio-ca\"]",
            ),
            (
                201,
                answer(serde_json::json!({
                    "authenticated": true,
                    "audiences": ["istio-ca"],
                    "user": {"username": "alice"},
                })),
                "username \"alice\" is not a service account",
            ),
            (
                403,
                br#"{"kind":"Status","message":"tokenreviews.authentication.k8s.io is forbidden: User \"x\" cannot create"}"#.to_vec(),
                "answered HTTP 403: tokenreviews.authentication.k8s.io is forbidden",
            ),
            (500, b"<html>".to_vec(), "answered HTTP 500"),
            (201, b"<html>".to_vec(), "unreadable answer: not a TokenReview"),
        ];
        for (status, body, why) in cases {
            let err = read(status, &body).unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }

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
}
