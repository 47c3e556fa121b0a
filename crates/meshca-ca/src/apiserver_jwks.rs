//! Verifying a cluster's service-account tokens locally, with the keys its API server publishes:
//! the OIDC discovery document (`/.well-known/openid-configuration`) names the issuer and the
//! JWKS (`jwks_uri`, served by the API server at `/openid/v1/jwks`), the way clusters with an
//! OIDC issuer are used by outside verifiers. Both are read through the cluster's kube client:
//! only `jwks_uri`'s path is taken and asked of the API server itself, since its host is the
//! issuer's public name, which need not be reachable from here.
//!
//! Tokens are checked by [`meshca_token::Verifier`]: signature, issuer (the discovery
//! document's), audience, `exp` and `nbf` against the server's clock. The keys are fetched at
//! start, again every [`REFRESH_INTERVAL`], and on a token naming an unknown key id (a rotation
//! at the API server), at most once per [`MIN_REFETCH_INTERVAL`].
//!
//! What local verification cannot see: a token stays valid until its `exp` even once its
//! service account, or the pod it is bound to, is deleted. Only the API server knows that, and
//! tells it through TokenReview. Tokens from the TokenRequest API live at least 10 minutes
//! (istio-agent's projected token one hour), so that is how long a deleted workload can still
//! get certificates in this mode; combine it with TokenReview where that matters.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use meshca_token::{Jwks, TokenError, VerifiedToken, Verifier};
use time::OffsetDateTime;

use crate::apiserver::{self, ApiServer, CallError, status_message};
use crate::clock::Clock;

/// How often the keys are fetched again without being asked to.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// The shortest time between two fetches caused by tokens with an unknown key id, so that a
/// stream of tokens signed by strangers cannot turn into a stream of requests to the API server.
pub const MIN_REFETCH_INTERVAL: time::Duration = time::Duration::seconds(10);

/// Largest discovery document or JWKS read; a JWKS is a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Why the API server's keys could not be had, or a token was refused with them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiJwksError {
    /// The discovery document or the JWKS could not be fetched.
    #[error("JWKS of {at}: cannot get {what}: {error}")]
    Call {
        /// the API server
        at: ApiServer,
        /// `the discovery document` or `the JWKS at <path>`
        what: String,
        /// what went wrong
        error: CallError,
    },
    /// The API server answered with an error status (403: the caller may not read it).
    #[error(
        "JWKS of {at}: {what}: answered HTTP {status}{}",
        .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
    )]
    Status {
        /// the API server
        at: ApiServer,
        /// what was asked for
        what: String,
        /// the HTTP status
        status: u16,
        /// the `message` of a Kubernetes `Status` body
        message: Option<String>,
    },
    /// The discovery document or the JWKS is not usable.
    #[error("JWKS of {at}: {what}: {reason}")]
    BadDocument {
        /// the API server
        at: ApiServer,
        /// which document
        what: String,
        /// what is wrong with it
        reason: String,
    },
    /// The token was refused by the checks against the API server's keys.
    #[error("verified with the keys of {at}: {error}")]
    Refused {
        /// the API server
        at: ApiServer,
        /// the check that refused it
        error: TokenError,
    },
}

/// One API server's keys and issuer, kept current.
pub struct ApiServerJwks {
    client: kube::Client,
    at: ApiServer,
    audience: String,
    timeout: Duration,
    keys: ArcSwap<Verifier>,
    /// When keys were last fetched because of an unknown key id; held across that fetch so
    /// that concurrent requests wait for it instead of fetching too.
    last_refetch: tokio::sync::Mutex<Option<OffsetDateTime>>,
}

impl std::fmt::Debug for ApiServerJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerJwks")
            .field("at", &self.at)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl ApiServerJwks {
    /// Fetches the issuer and keys of the API server `at` through `client`, to verify tokens
    /// for `audience`; each fetch is bounded by `timeout`.
    pub async fn fetch(
        client: kube::Client,
        at: ApiServer,
        audience: &str,
        timeout: Duration,
    ) -> Result<Self, ApiJwksError> {
        let verifier = fetch_verifier(&client, &at, audience, timeout).await?;
        Ok(ApiServerJwks {
            client,
            at,
            audience: audience.to_owned(),
            timeout,
            keys: ArcSwap::from_pointee(verifier),
            last_refetch: tokio::sync::Mutex::new(None),
        })
    }

    /// The API server, as shown in messages.
    pub fn api_server(&self) -> &ApiServer {
        &self.at
    }

    /// Verifies `token` at `now`. A token naming a key id the keys in use lack makes the keys be
    /// fetched again first (at most once per [`MIN_REFETCH_INTERVAL`]).
    pub async fn verify(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<VerifiedToken, ApiJwksError> {
        let keys = self.keys.load_full();
        match keys.verify(token, now) {
            Err(TokenError::UnknownKid { .. }) => {}
            other => return other.map_err(|error| self.refused(error)),
        }
        {
            let mut last = self.last_refetch.lock().await;
            // Someone else may have fetched new keys while this request waited.
            if Arc::ptr_eq(&keys, &self.keys.load_full())
                && last.is_none_or(|at| now >= at + MIN_REFETCH_INTERVAL)
            {
                *last = Some(now);
                if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e, "fetching the API server's JWKS for an unknown key id failed; the keys in use stay");
                }
            }
        }
        self.keys
            .load()
            .verify(token, now)
            .map_err(|error| self.refused(error))
    }

    /// Fetches the issuer and keys again, and uses them from the next token on. On failure the
    /// keys in use stay.
    pub async fn refresh(&self) -> Result<(), ApiJwksError> {
        let verifier = fetch_verifier(&self.client, &self.at, &self.audience, self.timeout).await?;
        self.keys.store(Arc::new(verifier));
        Ok(())
    }

    /// Fetches the keys every `interval` of `clock`, logging failures, for as long as it runs.
    pub async fn keep_current(self: Arc<Self>, clock: Arc<dyn Clock>, interval: Duration) {
        let step = time::Duration::try_from(interval).unwrap_or(time::Duration::minutes(5));
        loop {
            clock.sleep_until(clock.now() + step).await;
            match self.refresh().await {
                Ok(()) => tracing::debug!(api_server = %self.at, "API server JWKS refreshed"),
                Err(e) => {
                    tracing::warn!(error = %e, "API server JWKS not refreshed; the keys in use stay");
                }
            }
        }
    }

    fn refused(&self, error: TokenError) -> ApiJwksError {
        ApiJwksError::Refused {
            at: self.at.clone(),
            error,
        }
    }
}

/// The discovery document, then the JWKS it names, as a verifier for `audience`.
async fn fetch_verifier(
    client: &kube::Client,
    at: &ApiServer,
    audience: &str,
    timeout: Duration,
) -> Result<Verifier, ApiJwksError> {
    let discovery = get(
        client,
        at,
        DISCOVERY_PATH,
        "the discovery document",
        "application/json",
        timeout,
    )
    .await?;
    let (issuer, jwks_path) =
        read_discovery(&discovery).map_err(|reason| ApiJwksError::BadDocument {
            at: at.clone(),
            what: format!("the discovery document {DISCOVERY_PATH}"),
            reason,
        })?;
    let what = format!("the JWKS at {jwks_path}");
    // The API server answers 406 to a JWKS request that accepts only application/json.
    let accept = "application/jwk-set+json, application/json";
    let body = get(client, at, &jwks_path, &what, accept, timeout).await?;
    let jwks = Jwks::from_json(&body, &what).map_err(|e| ApiJwksError::BadDocument {
        at: at.clone(),
        what: what.clone(),
        reason: match e {
            TokenError::BadJwks { reason, .. } => reason,
            other => other.to_string(),
        },
    })?;
    if jwks.keys().is_empty() {
        return Err(ApiJwksError::BadDocument {
            at: at.clone(),
            what,
            reason: "holds no key".to_owned(),
        });
    }
    Ok(Verifier::new(audience).trust(&issuer, jwks))
}

async fn get(
    client: &kube::Client,
    at: &ApiServer,
    path: &str,
    what: &str,
    accept: &str,
    timeout: Duration,
) -> Result<Vec<u8>, ApiJwksError> {
    let request = http::Request::get(path)
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())
        .map_err(|e| ApiJwksError::BadDocument {
            at: at.clone(),
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    let (status, body) = apiserver::call(client, request, timeout, MAX_DOCUMENT_BYTES)
        .await
        .map_err(|error| ApiJwksError::Call {
            at: at.clone(),
            what: what.to_owned(),
            error,
        })?;
    if !status.is_success() {
        return Err(ApiJwksError::Status {
            at: at.clone(),
            what: what.to_owned(),
            status: status.as_u16(),
            message: status_message(&body),
        });
    }
    Ok(body)
}

/// The issuer and the path of `jwks_uri` of a discovery document.
fn read_discovery(body: &[u8]) -> Result<(String, String), String> {
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: Option<String>,
        jwks_uri: Option<String>,
    }
    let doc: Discovery = serde_json::from_slice(body).map_err(|e| {
        format!(
            "not a JSON object (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let issuer = doc
        .issuer
        .filter(|i| !i.is_empty())
        .ok_or("it has no \"issuer\"")?;
    let uri = doc.jwks_uri.ok_or("it has no \"jwks_uri\"")?;
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e| format!("\"jwks_uri\" {uri:?} is not a URL: {e}"))?;
    let path = parsed
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .filter(|p| p.starts_with('/') && p.len() > 1)
        .ok_or_else(|| format!("\"jwks_uri\" {uri:?} has no path"))?;
    Ok((issuer, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discovery_document_gives_the_issuer_and_the_jwks_path() {
        let doc = br#"{"issuer":"https://cluster1.meshca.test","jwks_uri":"https://cluster1.meshca.test/openid/v1/jwks","response_types_supported":["id_token"]}"#;
        assert_eq!(
            read_discovery(doc).unwrap(),
            (
                "https://cluster1.meshca.test".to_owned(),
                "/openid/v1/jwks".to_owned()
            )
        );
        for (bad, why) in [
            (
                &br#"{"jwks_uri":"https://x/openid/v1/jwks"}"#[..],
                "no \"issuer\"",
            ),
            (br#"{"issuer":"https://x"}"#, "no \"jwks_uri\""),
            (
                br#"{"issuer":"https://x","jwks_uri":"https://x"}"#,
                "has no path",
            ),
            (
                br#"{"issuer":"https://x","jwks_uri":"not a url"}"#,
                "is not a URL",
            ),
            (b"<html>", "not a JSON object"),
        ] {
            let err = read_discovery(bad).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
