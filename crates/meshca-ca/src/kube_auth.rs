//! Kubernetes authentication of bearer tokens, per cluster: where each cluster's API server is
//! (in-cluster config, kubeconfig contexts, Istio remote secrets, as [`meshca_kube::clusters`]
//! resolves them), one pooled kube client per cluster, and what vouches for its tokens: the
//! API server's JWKS checked locally ([`crate::apiserver_jwks`]), then TokenReview
//! ([`crate::tokenreview`]) through a short-lived cache ([`crate::review_cache`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshca_kube::KubeError;
use time::OffsetDateTime;

use crate::apiserver::ApiServer;
use crate::apiserver_jwks::{ApiJwksError, ApiServerJwks};
use crate::cluster::{ClusterError, Clusters};
use crate::review_cache::ReviewCache;
use crate::tokenreview::{ReviewedIdentity, TokenReviewError, TokenReviewer};

/// The namespace Istio keeps remote secrets in.
pub const DEFAULT_REMOTE_SECRETS_NAMESPACE: &str = "istio-system";

/// How the server authenticates bearer tokens with Kubernetes.
#[derive(Clone, Debug)]
pub struct KubeAuth {
    /// Where the own cluster's API server is, and with which credentials.
    pub own: OwnApiServer,
    /// The kubeconfig file the contexts are read from; `None`: `$KUBECONFIG` or
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Review the own cluster's tokens with TokenReview at its API server.
    pub token_review: bool,
    /// Verify the own cluster's tokens locally with its API server's JWKS, before any
    /// TokenReview.
    pub jwks_from_api_server: bool,
    /// Remote clusters as (cluster ID, kubeconfig context): requests naming the cluster ID have
    /// their tokens reviewed by that context's API server.
    pub remote_contexts: Vec<(String, String)>,
    /// Also take remote clusters from the Istio remote secrets (label `istio/multiCluster=true`)
    /// in this namespace of the own cluster, read once at start. A cluster also given in
    /// `remote_contexts` keeps its context.
    pub remote_secrets_namespace: Option<String>,
    /// How long an accepted TokenReview is remembered (zero: not at all); never past the
    /// token's `exp`.
    pub review_cache_ttl: Duration,
    /// How long one call to an API server may take, connecting included.
    pub timeout: Duration,
}

impl Default for KubeAuth {
    fn default() -> Self {
        KubeAuth {
            own: OwnApiServer::Context(None),
            kubeconfig: None,
            token_review: false,
            jwks_from_api_server: false,
            remote_contexts: Vec::new(),
            remote_secrets_namespace: None,
            review_cache_ttl: crate::review_cache::DEFAULT_TTL,
            timeout: crate::tokenreview::DEFAULT_TIMEOUT,
        }
    }
}

/// Where the own cluster's API server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnApiServer {
    /// The pod's own: `KUBERNETES_SERVICE_HOST`, and the service account's token (re-read as
    /// the kubelet rotates it) and CA.
    InCluster,
    /// A context of [`KubeAuth::kubeconfig`]; `None`: its current context.
    Context(Option<String>),
}

/// Why Kubernetes authentication could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeAuthError {
    /// The clusters cannot be served together.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Remote secrets were asked for by a server that does not know its own cluster's ID.
    #[error("remote clusters from remote secrets need this server's own cluster ID to be set")]
    RemoteSecretsUnnamed,
    /// A kubeconfig, context, in-cluster config or remote secret could not be used.
    #[error(transparent)]
    Config(#[from] KubeError),
    /// The in-cluster configuration could not be read.
    #[error("in-cluster Kubernetes config: {reason}")]
    InCluster {
        /// what is missing
        reason: String,
    },
    /// No client could be made for an API server.
    #[error("Kubernetes client for {at}: {reason}")]
    Client {
        /// the API server
        at: ApiServer,
        /// kube's error
        reason: String,
    },
    /// The API server's JWKS could not be had at start.
    #[error(transparent)]
    Jwks(Box<ApiJwksError>),
}

/// Why Kubernetes did not vouch for a token of a cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeRefusal {
    /// Nothing vouches for this cluster's tokens.
    #[error("no TokenReview is configured for {cluster}")]
    NotConfigured {
        /// the cluster, as `cluster "<id>"`
        cluster: String,
    },
    /// The API server's keys refused it, and there is no TokenReview.
    #[error(transparent)]
    Jwks(ApiJwksError),
    /// TokenReview refused it (after the API server's keys, if configured, did too).
    #[error("{}{review}", .jwks.as_ref().map(|j| format!("{j}; ")).unwrap_or_default())]
    Review {
        /// why the API server's keys refused it, when they were tried
        jwks: Option<ApiJwksError>,
        /// why TokenReview refused it
        review: TokenReviewError,
    },
}

/// What vouches for one cluster's tokens.
#[derive(Debug)]
pub struct KubeCluster {
    jwks: Option<Arc<ApiServerJwks>>,
    review: Option<(TokenReviewer, ReviewCache)>,
}

impl KubeCluster {
    /// A cluster whose tokens are checked with `jwks` first, then reviewed by `reviewer` with
    /// accepted reviews remembered for `cache_ttl`.
    pub fn new(
        jwks: Option<Arc<ApiServerJwks>>,
        reviewer: Option<TokenReviewer>,
        cache_ttl: Duration,
    ) -> Self {
        KubeCluster {
            jwks,
            review: reviewer.map(|r| (r, ReviewCache::new(cache_ttl))),
        }
    }

    /// The cluster's JWKS, when its tokens are verified locally.
    pub fn jwks(&self) -> Option<&Arc<ApiServerJwks>> {
        self.jwks.as_ref()
    }

    /// Whose `token` is, at `now`.
    pub async fn identify(
        &self,
        token: &str,
        now: OffsetDateTime,
        cluster: &str,
    ) -> Result<ReviewedIdentity, KubeRefusal> {
        let jwks = match &self.jwks {
            Some(keys) => match keys.verify(token, now).await {
                Ok(v) => {
                    return Ok(ReviewedIdentity {
                        namespace: v.namespace().to_owned(),
                        service_account: v.service_account().to_owned(),
                    });
                }
                Err(e) => Some(e),
            },
            None => None,
        };
        match (&self.review, jwks) {
            (Some((reviewer, cache)), jwks) => cache
                .get_or_review(token, now, || reviewer.review(token))
                .await
                .map_err(|review| KubeRefusal::Review { jwks, review }),
            (None, Some(jwks)) => Err(KubeRefusal::Jwks(jwks)),
            (None, None) => Err(KubeRefusal::NotConfigured {
                cluster: cluster.to_owned(),
            }),
        }
    }
}

/// The clusters served and what vouches for each one's tokens, connected: kubeconfigs read,
/// remote secrets listed, clients made, the own API server's JWKS fetched.
pub async fn connect(
    auth: Option<&KubeAuth>,
    cluster_id: Option<&str>,
    audience: &str,
) -> Result<Clusters<KubeCluster>, KubeAuthError> {
    let Some(auth) = auth else {
        return Ok(Clusters::new(cluster_id.map(str::to_owned), None));
    };
    // Settings that cannot work are refused before anything is read or asked.
    for (id, _) in &auth.remote_contexts {
        Clusters::<KubeCluster>::check_remote(cluster_id, id)?;
    }
    if auth.remote_secrets_namespace.is_some() && cluster_id.is_none() {
        return Err(KubeAuthError::RemoteSecretsUnnamed);
    }
    let own_name = cluster_id.map(str::to_owned);
    let shown_own = cluster_id.unwrap_or("own");
    let needs_own =
        auth.token_review || auth.jwks_from_api_server || auth.remote_secrets_namespace.is_some();
    let own_config = if needs_own {
        Some(own_config(auth).await?)
    } else {
        None
    };

    let mut own = None;
    if let Some(config) = &own_config
        && (auth.token_review || auth.jwks_from_api_server)
    {
        let at = ApiServer {
            cluster: own_name.clone(),
            url: shown_url(config),
        };
        let client = client(config.clone(), &at)?;
        let jwks = if auth.jwks_from_api_server {
            let keys = ApiServerJwks::fetch(client.clone(), at.clone(), audience, auth.timeout)
                .await
                .map_err(|e| KubeAuthError::Jwks(Box::new(e)))?;
            Some(Arc::new(keys))
        } else {
            None
        };
        let reviewer = auth
            .token_review
            .then(|| TokenReviewer::new(client, at, vec![audience.to_owned()], auth.timeout));
        own = Some(KubeCluster::new(jwks, reviewer, auth.review_cache_ttl));
    }

    let mut remotes: Vec<(String, kube::Config)> = Vec::new();
    for (id, context) in &auth.remote_contexts {
        let what = format!("--remote-cluster {id}={context}");
        let config =
            meshca_kube::clusters::context_config(auth.kubeconfig.as_deref(), Some(context), &what)
                .await?;
        remotes.push((id.clone(), config));
    }
    if let (Some(ns), Some(config)) = (&auth.remote_secrets_namespace, own_config) {
        let found =
            meshca_kube::clusters::remote_secrets(config, shown_own, ns, auth.timeout).await?;
        for c in found {
            if Some(c.name.as_str()) == cluster_id || remotes.iter().any(|(id, _)| *id == c.name) {
                continue;
            }
            tracing::info!(cluster = %c.name, origin = %c.origin, server = %c.config.cluster_url, "remote cluster from a remote secret");
            remotes.push((c.name, c.config));
        }
    }

    let mut clusters = Clusters::new(own_name, own);
    for (id, config) in remotes {
        let at = ApiServer {
            cluster: Some(id.clone()),
            url: shown_url(&config),
        };
        let reviewer = TokenReviewer::new(
            client(config, &at)?,
            at,
            vec![audience.to_owned()],
            auth.timeout,
        );
        let remote = KubeCluster::new(None, Some(reviewer), auth.review_cache_ttl);
        clusters = clusters.with_remote(id, remote)?;
    }
    Ok(clusters)
}

async fn own_config(auth: &KubeAuth) -> Result<kube::Config, KubeAuthError> {
    match &auth.own {
        OwnApiServer::InCluster => {
            let mut config = kube::Config::incluster().map_err(|e| KubeAuthError::InCluster {
                reason: e.to_string(),
            })?;
            config.connect_timeout = Some(auth.timeout);
            Ok(config)
        }
        OwnApiServer::Context(context) => {
            let what = match context {
                Some(c) => format!("--context {c}"),
                None => "the kubeconfig's current context".to_owned(),
            };
            Ok(meshca_kube::clusters::context_config(
                auth.kubeconfig.as_deref(),
                context.as_deref(),
                &what,
            )
            .await?)
        }
    }
}

/// The API server's URL as messages show it, without the trailing `/` of an empty path.
fn shown_url(config: &kube::Config) -> String {
    config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned()
}

fn client(config: kube::Config, at: &ApiServer) -> Result<kube::Client, KubeAuthError> {
    meshca_kube::clusters::client(config).map_err(|e| KubeAuthError::Client {
        at: at.clone(),
        reason: e.to_string(),
    })
}
