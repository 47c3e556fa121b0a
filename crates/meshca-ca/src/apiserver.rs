//! One call to a Kubernetes API server through kube's client, as TokenReview and the API
//! server's JWKS need it: bounded in time and in size, failures named by the API server and its
//! cluster. kube's client brings the pooled connections and the credentials, which it re-reads
//! (token files once a minute, exec plugins before they expire).

use std::fmt;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};

/// An API server as messages name it: its URL and the cluster whose it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiServer {
    /// The cluster's ID; `None` for the own cluster of a server that has none.
    pub cluster: Option<String>,
    /// Where it is, e.g. `https://10.0.0.1:6443`.
    pub url: String,
}

impl fmt::Display for ApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cluster {
            Some(c) => write!(f, "{} (cluster {c:?})", self.url),
            None => write!(f, "{} (this server's own cluster)", self.url),
        }
    }
}

/// Why a call got no complete answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No connection, no TLS, a credential kube could not get, or a connection that broke.
    #[error("cannot reach the API server: {reason}")]
    Unreachable {
        /// what failed, as kube and the system say it
        reason: String,
    },
    /// The whole call, connecting included, took longer than allowed.
    #[error("no answer within {after:?}")]
    Timeout {
        /// the limit
        after: Duration,
    },
    /// The answer is larger than anything the call expects.
    #[error("answer larger than {limit} bytes")]
    TooLarge {
        /// the limit
        limit: usize,
    },
}

/// Sends `request` with `client` and reads the whole answer, at most `limit` bytes, all within
/// `timeout`. Any HTTP status is an answer; the caller reads it.
pub(crate) async fn call(
    client: &kube::Client,
    request: http::Request<Vec<u8>>,
    timeout: Duration,
    limit: usize,
) -> Result<(http::StatusCode, Vec<u8>), CallError> {
    let exchange = async {
        let response = client
            .send(request.map(kube::client::Body::from))
            .await
            .map_err(|e| CallError::Unreachable {
                reason: describe(&e),
            })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    CallError::TooLarge { limit }
                } else {
                    CallError::Unreachable {
                        reason: chain(e.as_ref()),
                    }
                }
            })?;
        Ok((status, body.to_bytes().to_vec()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| CallError::Timeout { after: timeout })?
}

/// The `message` of a Kubernetes `Status` body, on one line, when there is one.
pub(crate) fn status_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Status {
        #[serde(default)]
        message: String,
    }
    let status: Status = serde_json::from_slice(body).ok()?;
    let message = one_line(&status.message);
    (!message.is_empty()).then_some(message)
}

/// The first line of `text`, trimmed and at most 300 characters.
pub(crate) fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(300).collect()
}

/// A kube error with its causes, on one line: kube's own messages ("ServiceError: client
/// error (Connect)") say little without them.
fn describe(e: &kube::Error) -> String {
    chain(e)
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    one_line(&out.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_servers_are_named_with_their_cluster() {
        let at = |cluster: Option<&str>| ApiServer {
            cluster: cluster.map(str::to_owned),
            url: "https://10.0.0.1:6443".into(),
        };
        assert_eq!(
            at(Some("c2")).to_string(),
            "https://10.0.0.1:6443 (cluster \"c2\")"
        );
        assert_eq!(
            at(None).to_string(),
            "https://10.0.0.1:6443 (this server's own cluster)"
        );
    }

    #[test]
    fn status_messages_are_one_line() {
        let body = br#"{"kind":"Status","message":"forbidden: cannot create\nsecond line"}"#;
        assert_eq!(
            status_message(body).as_deref(),
            Some("forbidden: cannot create")
        );
        assert_eq!(status_message(b"<html>"), None);
        assert_eq!(status_message(br#"{"kind":"Status"}"#), None);
    }

    #[test]
    fn causes_are_joined_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused\n(os error 111)",
        ));
        assert_eq!(
            chain(&e),
            "client error (Connect): Connection refused (os error 111)"
        );
    }
}
