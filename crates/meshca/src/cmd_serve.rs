//! `meshca serve`: flags in, a running CA server out, until Ctrl-C or SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use meshca_ca::issuer::IssuancePolicy;
use meshca_ca::{CaSource, ServeConfig, SystemClock, TokenReviewClusters, TokenReviewConfig};
use meshca_pki::TrustDomain;

/// An Istio-compatible CA: IstioCertificateService/CreateCertificate over gRPC, signing with a
/// plugged-in cacerts bundle (or a self-signed root), reloading it when it changes.
#[derive(clap::Args)]
pub struct Args {
    /// gRPC address.
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// The cacerts folder (Istio or tls.crt layout).
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
    /// The audience JWTs must carry.
    #[arg(long, default_value = "istio-ca")]
    audience: String,
    /// This CA's cluster. Requests without clusterid metadata are from this cluster; requests
    /// whose clusterid names a cluster that is neither this one nor a --token-review-cluster
    /// are refused (UNAUTHENTICATED). Without it, every request is taken to be from this cluster.
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
    /// Kubernetes API server of this CA's own cluster, for TokenReview of bearer tokens that no
    /// --jwt-issuer accepts (requests without clusterid, or naming --cluster-id).
    #[arg(long, value_name = "URL")]
    k8s_api_server: Option<String>,
    /// CA file of the API server's certificate.
    #[arg(long, value_name = "FILE", requires = "k8s_api_server")]
    k8s_ca: Option<PathBuf>,
    /// File holding the token meshca uses to call the API server.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    k8s_token_file: PathBuf,
    /// TokenReview for the remote cluster ID: bearer tokens of requests whose clusterid is ID
    /// (and that no --jwt-issuer accepts) are reviewed by that cluster's API server. Repeatable.
    ///
    /// token=FILE (required) holds a token valid in that cluster that may create TokenReviews;
    /// ca=FILE is the CA of its API server's certificate, required for https and refused for
    /// http. The identity is the token's namespace and service account in --trust-domain.
    /// Requests naming a remote cluster given here are served; this needs --cluster-id, and ID
    /// must differ from it.
    ///
    /// Example: --token-review-cluster
    /// cluster2=https://10.0.0.2:6443,ca=/etc/c2/ca.crt,token=/etc/c2/token
    #[arg(
        long = "token-review-cluster",
        value_name = "ID=URL,token=FILE[,ca=FILE]",
        value_parser = parse_remote_cluster,
        requires = "cluster_id"
    )]
    token_review_clusters: Vec<RemoteCluster>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

/// One `--token-review-cluster`: a remote cluster and where its tokens are reviewed.
#[derive(Clone, Debug)]
pub struct RemoteCluster {
    id: String,
    api: TokenReviewConfig,
}

/// Reads `ID=URL,token=FILE[,ca=FILE]`.
fn parse_remote_cluster(s: &str) -> Result<RemoteCluster, String> {
    let bad = |why: &str| format!("{s:?}: {why} (expected ID=URL,token=FILE[,ca=FILE])");
    let mut parts = s.split(',');
    let (id, url) = parts
        .next()
        .and_then(|p| p.split_once('='))
        .ok_or_else(|| bad("no ID=URL"))?;
    let (id, url) = (id.trim(), url.trim());
    if id.is_empty() || url.is_empty() {
        return Err(bad("the cluster ID and the URL must not be empty"));
    }
    let (mut ca, mut token) = (None, None);
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| bad(&format!("{part:?} is not key=value")))?;
        let slot = match key.trim() {
            "ca" => &mut ca,
            "token" => &mut token,
            other => return Err(bad(&format!("unknown key {other:?}"))),
        };
        if value.trim().is_empty() || slot.is_some() {
            return Err(bad(&format!(
                "{} must be given once, with a file",
                key.trim()
            )));
        }
        *slot = Some(PathBuf::from(value.trim()));
    }
    Ok(RemoteCluster {
        id: id.to_owned(),
        api: TokenReviewConfig {
            api_server: url.to_owned(),
            ca_file: ca,
            token_file: token.ok_or_else(|| bad("token=FILE is required"))?,
        },
    })
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

/// The own cluster's API server and the remote ones, each remote cluster once.
fn token_review(
    own: Option<TokenReviewConfig>,
    remotes: Vec<RemoteCluster>,
) -> anyhow::Result<TokenReviewClusters> {
    let mut remote = BTreeMap::new();
    for r in remotes {
        if remote.insert(r.id.clone(), r.api).is_some() {
            anyhow::bail!("--token-review-cluster: cluster {:?} is given twice", r.id);
        }
    }
    Ok(TokenReviewClusters { own, remote })
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
    let trust_domain = TrustDomain::new(&a.trust_domain)?;
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
        token_review: Some(token_review(
            a.k8s_api_server.map(|api_server| TokenReviewConfig {
                api_server,
                ca_file: a.k8s_ca,
                token_file: a.k8s_token_file,
            }),
            a.token_review_clusters,
        )?),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let running = meshca_ca::start(config, Arc::new(SystemClock)).await?;
        // Scripts read this line to learn the bound addresses.
        println!(
            "listening on {}{}",
            running.local_addr,
            running
                .metrics_addr
                .map(|m| format!(" (metrics on {m})"))
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
    use std::path::Path;

    #[test]
    fn remote_clusters_are_read_in_any_order_and_need_a_token() {
        let r =
            parse_remote_cluster("c2=https://10.0.0.2:6443,ca=/c2/ca.crt,token=/c2/token").unwrap();
        assert_eq!(r.id, "c2");
        assert_eq!(r.api.api_server, "https://10.0.0.2:6443");
        assert_eq!(r.api.ca_file.as_deref(), Some(Path::new("/c2/ca.crt")));
        assert_eq!(r.api.token_file, Path::new("/c2/token"));
        let r = parse_remote_cluster("c3=http://127.0.0.1:8080,token=t").unwrap();
        assert_eq!((r.id.as_str(), r.api.ca_file), ("c3", None));

        for (bad, why) in [
            ("c2", "no ID=URL"),
            ("=http://x", "must not be empty"),
            ("c2=", "must not be empty"),
            ("c2=http://x", "token=FILE is required"),
            ("c2=http://x,token=a,token=b", "token must be given once"),
            ("c2=http://x,token=", "token must be given once"),
            ("c2=http://x,token=a,cert=b", "unknown key \"cert\""),
            ("c2=http://x,token", "is not key=value"),
        ] {
            let err = parse_remote_cluster(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.starts_with(&format!("{bad:?}: ")), "{err}");
        }
    }

    #[test]
    fn a_remote_cluster_given_twice_is_refused() {
        let one = || parse_remote_cluster("c2=http://x,token=t").unwrap();
        let err = token_review(None, vec![one(), one()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--token-review-cluster: cluster \"c2\" is given twice"
        );
        let ok = token_review(None, vec![one()]).unwrap();
        assert!(ok.own.is_none());
        assert_eq!(ok.remote.keys().collect::<Vec<_>>(), ["c2"]);
    }
}
