//! `meshca serve`: flags in, a running CA server out, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use meshca_ca::issuer::IssuancePolicy;
use meshca_ca::kube_auth::DEFAULT_REMOTE_SECRETS_NAMESPACE;
use meshca_ca::{CaSource, KubeAuth, OwnApiServer, ServeConfig, SystemClock};
use meshca_pki::TrustDomain;

/// An Istio-compatible CA: IstioCertificateService/CreateCertificate over gRPC, signing with a
/// plugged-in cacerts bundle (or a self-signed root), reloading it when it changes.
#[derive(clap::Args)]
pub struct Args {
    /// gRPC address.
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// The cacerts folder (Istio or tls.crt layout), checked at start and on every reload as
    /// istiod checks it, extended key usage allowing serverAuth along the chain included.
    #[arg(long, default_value = "./etc/cacerts")]
    cacerts: PathBuf,
    /// Without a cacerts folder, keep a self-signed root here (made on first start, rotated at 20% life left).
    #[arg(long, value_name = "DIR")]
    self_signed_dir: Option<PathBuf>,
    /// Trust domain of workload identities.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Serve gRPC without TLS (local use only).
    #[arg(long)]
    plaintext: bool,
    /// DNS names of the serving certificate [default: istiod's three names].
    #[arg(long = "serving-dns", value_name = "NAME")]
    serving_dns: Vec<String>,
    /// Accept service-account JWTs from ISSUER, checked against the keys in JWKS_FILE. Repeatable.
    ///
    /// JWKS_FILE is looked at every --reload-interval: a new valid JWKS is used from the next
    /// request on; an unreadable or invalid one is refused, logged and counted in
    /// meshca_ca_reload_failure_count, and the last good keys stay in use.
    #[arg(long = "jwt-issuer", value_name = "ISSUER=JWKS_FILE")]
    jwt_issuers: Vec<String>,
    /// The audience bearer tokens must carry (checked locally, and asked of TokenReview).
    #[arg(long, default_value = "istio-ca")]
    audience: String,
    /// This CA's cluster. Requests without clusterid metadata are from this cluster; requests
    /// whose clusterid names a cluster that is neither this one nor a remote cluster
    /// (--remote-cluster, --remote-secrets) are refused (UNAUTHENTICATED). Without it, every
    /// request is taken to be from this cluster.
    #[arg(long)]
    cluster_id: Option<String>,
    /// Default workload certificate lifetime (e.g. 24h, 90m, 7d).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    workload_cert_ttl: time::Duration,
    /// Longest lifetime a request may ask for; longer requests are refused.
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    max_workload_cert_ttl: time::Duration,
    /// Prometheus metrics address.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Accept a new bundle whose roots do not include the root in use.
    #[arg(long)]
    allow_root_change: bool,
    /// How often the CA folder and the JWKS files are checked for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    reload_interval: time::Duration,
    /// Plaintext gRPC address serving grpc.health.v1.Health, for Kubernetes gRPC readiness
    /// probes (which cannot speak TLS). SERVING once the CA is loaded.
    #[arg(long, value_name = "ADDR")]
    health_addr: Option<SocketAddr>,
    /// The kubeconfig the own cluster's context and the --remote-cluster contexts are read from
    /// [default: in-cluster config when KUBERNETES_SERVICE_HOST is set, else $KUBECONFIG or
    /// ~/.kube/config].
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The own cluster's context in the kubeconfig [default: its current context].
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Review bearer tokens of the own cluster (requests without clusterid, or naming
    /// --cluster-id) with a Kubernetes TokenReview at its API server, for --audience.
    ///
    /// The identity is the token's spiffe://TRUST_DOMAIN/ns/NS/sa/SA. Accepted reviews are
    /// remembered for --review-cache-ttl; refusals are not. The credential used needs
    /// create on tokenreviews (ClusterRole system:auth-delegator).
    #[arg(long)]
    token_review: bool,
    /// Verify bearer tokens of the own cluster locally against its API server's JWKS
    /// (/.well-known/openid-configuration, then its jwks_uri path), before any TokenReview.
    ///
    /// Keys are fetched at start, every 5 minutes, and on an unknown key id (at most every
    /// 10 s). Local verification cannot see that a service account was deleted: its tokens
    /// stay valid until they expire; add --token-review where that matters.
    #[arg(long)]
    jwks_from_api_server: bool,
    /// A remote cluster: bearer tokens of requests whose clusterid is ID are reviewed by the
    /// API server of kubeconfig context CONTEXT. Repeatable; needs --cluster-id.
    #[arg(long = "remote-cluster", value_name = "ID=CONTEXT", value_parser = parse_remote_cluster, requires = "cluster_id")]
    remote_clusters: Vec<(String, String)>,
    /// Remote clusters from the Istio remote secrets (label istio/multiCluster=true) in
    /// namespace NS of the own cluster, read at start; each key of their data is a cluster ID
    /// and its kubeconfig. A cluster also given by --remote-cluster keeps that context.
    #[arg(
        long,
        value_name = "NS",
        num_args = 0..=1,
        default_missing_value = DEFAULT_REMOTE_SECRETS_NAMESPACE,
        requires = "cluster_id"
    )]
    remote_secrets: Option<String>,
    /// How long an accepted TokenReview is remembered (0: not at all); never past the token's
    /// own expiry.
    #[arg(long, default_value = "10s", value_parser = parse_cache_ttl)]
    review_cache_ttl: time::Duration,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

/// Reads `ID=CONTEXT`.
fn parse_remote_cluster(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((id, context)) if !id.trim().is_empty() && !context.trim().is_empty() => {
            Ok((id.trim().to_owned(), context.trim().to_owned()))
        }
        _ => Err(format!("{s:?}: expected ID=CONTEXT")),
    }
}

/// Reads a duration like [`parse_duration`], or `0` for none.
fn parse_cache_ttl(s: &str) -> Result<time::Duration, String> {
    if s.trim() == "0" {
        return Ok(time::Duration::ZERO);
    }
    parse_duration(s)
}

/// Reads `90s`, `15m`, `24h`, `7d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 24h or 7d"))?;
    let d = match unit {
        "" | "s" => time::Duration::seconds(n),
        "ms" => time::Duration::milliseconds(n),
        "m" => time::Duration::minutes(n),
        "h" => time::Duration::hours(n),
        "d" => time::Duration::days(n),
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    if d <= time::Duration::ZERO {
        return Err(format!("{s:?} must be more than zero"));
    }
    Ok(d)
}

/// Kubernetes authentication from the flags; `None` when no flag asks for any.
fn kube_auth(a: &Args, in_cluster: bool) -> anyhow::Result<Option<KubeAuth>> {
    let wanted = a.token_review
        || a.jwks_from_api_server
        || !a.remote_clusters.is_empty()
        || a.remote_secrets.is_some();
    if !wanted {
        return Ok(None);
    }
    let mut seen = std::collections::BTreeSet::new();
    for (id, _) in &a.remote_clusters {
        if !seen.insert(id) {
            anyhow::bail!("--remote-cluster: cluster {id:?} is given twice");
        }
    }
    let own = if a.kubeconfig.is_none() && a.context.is_none() && in_cluster {
        OwnApiServer::InCluster
    } else {
        OwnApiServer::Context(a.context.clone())
    };
    Ok(Some(KubeAuth {
        own,
        kubeconfig: a.kubeconfig.clone(),
        token_review: a.token_review,
        jwks_from_api_server: a.jwks_from_api_server,
        remote_contexts: a.remote_clusters.clone(),
        remote_secrets_namespace: a.remote_secrets.clone(),
        review_cache_ttl: Duration::from_millis(
            u64::try_from(a.review_cache_ttl.whole_milliseconds()).unwrap_or(0),
        ),
        ..KubeAuth::default()
    }))
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHCA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if a.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    if a.workload_cert_ttl > a.max_workload_cert_ttl {
        // Every request without a TTL of its own would ask for more than is allowed.
        anyhow::bail!(
            "--workload-cert-ttl {} is longer than --max-workload-cert-ttl {}",
            a.workload_cert_ttl,
            a.max_workload_cert_ttl
        );
    }
    let trust_domain = TrustDomain::new(&a.trust_domain)?;
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty());
    let token_review = kube_auth(&a, in_cluster)?;
    let health_addr = a.health_addr;
    let source = match a.self_signed_dir {
        Some(dir) if !a.cacerts.exists() => CaSource::SelfSigned {
            dir,
            trust_domain: trust_domain.clone(),
        },
        _ => CaSource::Folder(a.cacerts),
    };
    let jwt_issuers = a
        .jwt_issuers
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(i, f)| (i.to_owned(), PathBuf::from(f)))
                .ok_or_else(|| anyhow::anyhow!("--jwt-issuer {s:?}: expected ISSUER=JWKS_FILE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let serving_dns = if a.serving_dns.is_empty() {
        meshca_ca::tls::ISTIOD_DNS_NAMES
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        a.serving_dns
    };
    let config = ServeConfig {
        listen: a.listen,
        source,
        trust_domain,
        plaintext: a.plaintext,
        serving_dns,
        jwt_issuers,
        audience: a.audience,
        cluster_id: a.cluster_id,
        policy: IssuancePolicy {
            default_ttl: a.workload_cert_ttl,
            max_ttl: a.max_workload_cert_ttl,
        },
        metrics_addr: a.metrics_addr,
        allow_root_change: a.allow_root_change,
        reload_interval: Duration::from_millis(
            u64::try_from(a.reload_interval.whole_milliseconds()).unwrap_or(1000),
        ),
        debounce: Duration::from_millis(100),
        token_review,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut running = meshca_ca::start(config, Arc::new(SystemClock)).await?;
        let health = match health_addr {
            Some(addr) => Some(running.serve_health(addr).await?),
            None => None,
        };
        // Scripts read this line to learn the bound addresses.
        println!(
            "listening on {}{}{}",
            running.local_addr,
            running
                .metrics_addr
                .map(|m| format!(" (metrics on {m})"))
                .unwrap_or_default(),
            health
                .map(|h| format!(" (health on {h})"))
                .unwrap_or_default()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        running.shutdown().await?;
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: Args,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|c| c.serve)
    }

    #[test]
    fn kubernetes_flags_make_the_kube_auth() {
        let a = parse(&[]).unwrap();
        assert!(kube_auth(&a, true).unwrap().is_none());

        let a = parse(&["--token-review"]).unwrap();
        let k = kube_auth(&a, true).unwrap().unwrap();
        assert_eq!(k.own, OwnApiServer::InCluster);
        assert!(k.token_review && !k.jwks_from_api_server);
        assert_eq!(k.review_cache_ttl, Duration::from_secs(10));
        let k = kube_auth(&a, false).unwrap().unwrap();
        assert_eq!(k.own, OwnApiServer::Context(None));

        let a = parse(&[
            "--kubeconfig",
            "/kc",
            "--context",
            "c1",
            "--jwks-from-api-server",
            "--cluster-id",
            "c1",
            "--remote-cluster",
            "c2=ctx2",
            "--remote-cluster",
            "c3=ctx3",
            "--remote-secrets",
            "--review-cache-ttl",
            "0",
        ])
        .unwrap();
        let k = kube_auth(&a, true).unwrap().unwrap();
        assert_eq!(k.own, OwnApiServer::Context(Some("c1".into())));
        assert_eq!(k.kubeconfig.as_deref(), Some(std::path::Path::new("/kc")));
        assert!(!k.token_review && k.jwks_from_api_server);
        assert_eq!(
            k.remote_contexts,
            [("c2".into(), "ctx2".into()), ("c3".into(), "ctx3".into())]
        );
        assert_eq!(k.remote_secrets_namespace.as_deref(), Some("istio-system"));
        assert_eq!(k.review_cache_ttl, Duration::ZERO);

        let a = parse(&["--cluster-id", "c1", "--remote-secrets", "mesh"]).unwrap();
        let k = kube_auth(&a, false).unwrap().unwrap();
        assert_eq!(k.remote_secrets_namespace.as_deref(), Some("mesh"));
    }

    #[test]
    fn remote_clusters_need_a_cluster_id_and_are_given_once() {
        assert!(parse(&["--remote-cluster", "c2=ctx"]).is_err());
        assert!(parse(&["--remote-secrets"]).is_err());
        let a = parse(&[
            "--cluster-id",
            "c1",
            "--remote-cluster",
            "c2=a",
            "--remote-cluster",
            "c2=b",
        ])
        .unwrap();
        assert_eq!(
            kube_auth(&a, false).unwrap_err().to_string(),
            "--remote-cluster: cluster \"c2\" is given twice"
        );
        for bad in ["c2", "=ctx", "c2="] {
            let err = parse_remote_cluster(bad).unwrap_err();
            assert!(err.contains("expected ID=CONTEXT"), "{bad}: {err}");
        }
        assert!(parse(&["--review-cache-ttl", "-1s"]).is_err());
    }
}
