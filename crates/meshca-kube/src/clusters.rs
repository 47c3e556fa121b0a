//! Which clusters the Kubernetes store talks to, and how: kubeconfig contexts named on the command
//! line, or the remote secrets that `istioctl create-remote-secret` leaves in the management
//! cluster (label `istio/multiCluster=true`, one kubeconfig per cluster in their data), so that a
//! mesh already set up for multi-cluster Istio needs nothing more.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::KubeError;

/// The label Istio puts on remote secrets.
pub const REMOTE_SECRET_LABEL: &str = "istio/multiCluster=true";

/// Where the clusters come from.
#[derive(Clone, Debug, Default)]
pub struct ClusterSources {
    /// The kubeconfig file; `None` reads `$KUBECONFIG` or `~/.kube/config`, or, in a pod with
    /// neither, the pod's own service account.
    pub kubeconfig: Option<PathBuf>,
    /// The management cluster's context; `None` is the kubeconfig's current context.
    pub mgmt_context: Option<String>,
    /// Workload clusters as (name, context).
    pub clusters: Vec<(String, String)>,
    /// Also take workload clusters from Istio remote secrets in the management cluster, in this
    /// namespace.
    pub remote_secrets_namespace: Option<String>,
}

/// One cluster, resolved: its name in the store, the client configuration, and where it is.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The name meshca uses for it (and its `cacerts`).
    pub name: String,
    /// How to reach it.
    pub config: kube::Config,
    /// Where it came from, for messages: `context NAME` or `remote secret NS/NAME`.
    pub origin: String,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration may hold credentials: only where it points is shown.
        f.debug_struct("ClusterConfig")
            .field("name", &self.name)
            .field("server", &self.config.cluster_url.to_string())
            .field("origin", &self.origin)
            .finish()
    }
}

/// How long a connection may take to open.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn read_kubeconfig(sources: &ClusterSources) -> Result<Kubeconfig, KubeError> {
    match &sources.kubeconfig {
        Some(p) => Kubeconfig::read_from(p).map_err(|e| KubeError::Config {
            what: p.display().to_string(),
            reason: e.to_string(),
        }),
        None => Kubeconfig::read().map_err(|e| KubeError::Config {
            what: "the default kubeconfig ($KUBECONFIG or ~/.kube/config)".to_owned(),
            reason: e.to_string(),
        }),
    }
}

async fn from_context(
    kubeconfig: &Kubeconfig,
    context: Option<&str>,
    what: &str,
) -> Result<kube::Config, KubeError> {
    if let Some(c) = context
        && !kubeconfig.contexts.iter().any(|n| n.name == c)
    {
        return Err(KubeError::Config {
            what: what.to_owned(),
            reason: format!("no context {c:?} in the kubeconfig"),
        });
    }
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
        .await
        .map_err(|e| KubeError::Config {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    Ok(config)
}

/// Whether the management cluster is the one this process runs in: in a pod
/// (`KUBERNETES_SERVICE_HOST` set), with no kubeconfig named or found and no context asked for.
fn in_cluster(sources: &ClusterSources) -> bool {
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty());
    let named = sources.kubeconfig.is_some()
        || sources.mgmt_context.is_some()
        || std::env::var_os("KUBECONFIG").is_some_and(|k| !k.is_empty());
    let home = std::env::var_os("HOME")
        .map(|h| std::path::Path::new(&h).join(".kube/config"))
        .is_some_and(|p| p.exists());
    in_pod && !named && !home
}

/// In a pod: the management cluster through the pod's service account (its projected token is
/// read again as the kubelet renews it), and workload clusters from Istio remote secrets only,
/// since there is no kubeconfig to hold their contexts.
async fn resolve_in_cluster(
    sources: &ClusterSources,
    mgmt_name: &str,
    timeout: Duration,
) -> Result<Vec<ClusterConfig>, KubeError> {
    if let Some((name, context)) = sources.clusters.first() {
        return Err(KubeError::Config {
            what: format!("--cluster {name}={context}"),
            reason: "running in a pod without a kubeconfig: give --kubeconfig, or take the workload clusters from Istio remote secrets (--remote-secrets)".to_owned(),
        });
    }
    let mut mgmt = kube::Config::incluster().map_err(|e| KubeError::Config {
        what: "the pod's in-cluster configuration".to_owned(),
        reason: e.to_string(),
    })?;
    mgmt.connect_timeout = Some(CONNECT_TIMEOUT);
    let mut out = vec![ClusterConfig {
        name: mgmt_name.to_owned(),
        origin: "the pod's service account".to_owned(),
        config: mgmt.clone(),
    }];
    if let Some(ns) = &sources.remote_secrets_namespace {
        out.extend(remote_secret_clusters(mgmt, mgmt_name, ns, timeout).await?);
    }
    Ok(out)
}

/// The management cluster and every workload cluster the sources name. Remote secrets are read
/// from the management cluster (one request); a cluster named both ways keeps its context.
pub async fn resolve(
    sources: &ClusterSources,
    mgmt_name: &str,
    timeout: Duration,
) -> Result<Vec<ClusterConfig>, KubeError> {
    if in_cluster(sources) {
        return resolve_in_cluster(sources, mgmt_name, timeout).await;
    }
    let kubeconfig = read_kubeconfig(sources)?;
    let mgmt_what = match &sources.mgmt_context {
        Some(c) => format!("--mgmt-context {c}"),
        None => "the kubeconfig's current context".to_owned(),
    };
    let mgmt = from_context(&kubeconfig, sources.mgmt_context.as_deref(), &mgmt_what).await?;
    let mut out = vec![ClusterConfig {
        name: mgmt_name.to_owned(),
        origin: sources.mgmt_context.as_deref().map_or_else(
            || "the current context".to_owned(),
            |c| format!("context {c}"),
        ),
        config: mgmt.clone(),
    }];
    for (name, context) in &sources.clusters {
        if out.iter().any(|c| &c.name == name) {
            return Err(KubeError::Config {
                what: format!("--cluster {name}={context}"),
                reason: format!("the cluster name {name:?} is given twice"),
            });
        }
        let config = from_context(
            &kubeconfig,
            Some(context),
            &format!("--cluster {name}={context}"),
        )
        .await?;
        out.push(ClusterConfig {
            name: name.clone(),
            config,
            origin: format!("context {context}"),
        });
    }
    if let Some(ns) = &sources.remote_secrets_namespace {
        for c in remote_secret_clusters(mgmt, mgmt_name, ns, timeout).await? {
            if !out.iter().any(|o| o.name == c.name) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// The clusters of the Istio remote secrets in `namespace` of the management cluster.
async fn remote_secret_clusters(
    mgmt: kube::Config,
    mgmt_name: &str,
    namespace: &str,
    timeout: Duration,
) -> Result<Vec<ClusterConfig>, KubeError> {
    let target = format!("cluster {mgmt_name} (remote secrets in {namespace})");
    let client = kube::Client::try_from(mgmt).map_err(|e| KubeError::Config {
        what: target.clone(),
        reason: e.to_string(),
    })?;
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let list = tokio::time::timeout(
        timeout,
        api.list(&ListParams::default().labels(REMOTE_SECRET_LABEL)),
    )
    .await
    .map_err(|_| KubeError::Config {
        what: target.clone(),
        reason: format!("no answer within {}s", timeout.as_secs()),
    })?
    .map_err(|e| KubeError::Config {
        what: target.clone(),
        reason: crate::store::describe_error(&e),
    })?;
    let mut out = Vec::new();
    for s in list.items {
        let secret = format!(
            "{namespace}/{}",
            s.metadata.name.as_deref().unwrap_or_default()
        );
        for (cluster, bytes) in s.data.unwrap_or_default() {
            let what = format!("remote secret {secret}, key {cluster}");
            let text = std::str::from_utf8(&bytes.0).map_err(|_| KubeError::Config {
                what: what.clone(),
                reason: "not a UTF-8 kubeconfig".to_owned(),
            })?;
            let kc = Kubeconfig::from_yaml(text).map_err(|e| KubeError::Config {
                what: what.clone(),
                reason: e.to_string(),
            })?;
            let config = from_context(&kc, None, &what).await?;
            out.push(ClusterConfig {
                name: cluster,
                config,
                origin: format!("remote secret {secret}"),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A client for one API server: kube's TLS, credentials (token files and exec plugins re-read as
/// kube does) and headers over a connector with `TCP_NODELAY`, with a pool of connections shared
/// by its clones. kube's own connector leaves Nagle's algorithm on, which holds a request sent on
/// a fresh connection behind the server's delayed ACK: about 40 ms a request (docs/BENCHMARKS.md).
pub fn client(config: kube::Config) -> Result<kube::Client, kube::Error> {
    use kube::client::ConfigExt as _;
    // kube's rustls configuration takes the process's default provider: aws-lc-rs, the one
    // provider in the binary.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    let https = config.rustls_https_connector_with_connector(http)?;
    let hyper: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}

/// The client configuration of one context of a kubeconfig file (`None`: `$KUBECONFIG` or
/// `~/.kube/config`; context `None`: its current context), with the connect timeout the store
/// uses. `what` names the context in errors, e.g. the flag that gave it.
pub async fn context_config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    what: &str,
) -> Result<kube::Config, KubeError> {
    let sources = ClusterSources {
        kubeconfig: kubeconfig.map(Path::to_owned),
        ..Default::default()
    };
    from_context(&read_kubeconfig(&sources)?, context, what).await
}

/// The clusters of the Istio remote secrets (label [`REMOTE_SECRET_LABEL`]) in `namespace` of the
/// cluster `own` reaches, one per key of their data, sorted by name. `own_name` names that
/// cluster in errors.
pub async fn remote_secrets(
    own: kube::Config,
    own_name: &str,
    namespace: &str,
    timeout: Duration,
) -> Result<Vec<ClusterConfig>, KubeError> {
    remote_secret_clusters(own, own_name, namespace, timeout).await
}
