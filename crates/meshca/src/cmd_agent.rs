//! `meshca agent`: the workload side, like istio-agent with file-mounted certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use meshca_agent::mtls::Endpoint;
use meshca_agent::run::Agent;
use meshca_agent::{Credential, Request};
use meshca_pki::{KeyType, TrustDomain};

/// Gets a workload certificate from the CA, writes cert-chain.pem, key.pem and root-cert.pem,
/// and renews it at the grace ratio of its lifetime (or once, with --once).
#[derive(clap::Args)]
pub struct Args {
    /// The CA's address.
    #[arg(long, env = "CA_ADDR", default_value = "127.0.0.1:15012")]
    ca_addr: String,
    /// Root bundle to trust for the CA's serving certificate.
    #[arg(long, value_name = "FILE")]
    ca_root: PathBuf,
    /// The name on the CA's serving certificate.
    #[arg(long, default_value = "istiod.istio-system.svc")]
    ca_server_name: String,
    /// Service-account token file; without one, the current certificate in --output-dir is
    /// presented over mTLS.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Trust domain of the workload's SPIFFE ID.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Key type: ecdsa-p256 or rsa (2048 bits).
    #[arg(long, default_value = "ecdsa-p256")]
    key_type: String,
    /// Requested certificate lifetime.
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = crate::cmd_serve::parse_duration)]
    ttl: time::Duration,
    /// Renew when this share of the lifetime is left.
    #[arg(long, env = "SECRET_GRACE_PERIOD_RATIO", default_value_t = 0.5)]
    grace_ratio: f64,
    /// Where cert-chain.pem, key.pem and root-cert.pem are written.
    #[arg(long, env = "OUTPUT_CERTS", default_value = "./etc/certs")]
    output_dir: PathBuf,
    /// How long one request to the CA may take, connecting and the TLS handshake included; a CA
    /// that does not answer in time counts as unreachable, and the agent backs off.
    #[arg(long, default_value = "15s", value_parser = crate::cmd_serve::parse_duration)]
    ca_timeout: time::Duration,
    /// The cluster sent as `clusterid` metadata.
    #[arg(long, env = "ISTIO_META_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Get one certificate and exit.
    #[arg(long)]
    once: bool,
    /// Serve an mTLS endpoint with the current certificate that answers with the peer's SPIFFE ID.
    #[arg(long, value_name = "ADDR")]
    mtls_listen: Option<SocketAddr>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHCA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if !(a.grace_ratio > 0.0 && a.grace_ratio < 1.0) {
        anyhow::bail!(
            "--grace-ratio must be between 0 and 1, got {}",
            a.grace_ratio
        );
    }
    let td = TrustDomain::new(&a.trust_domain)?;
    let key_type = match a.key_type.as_str() {
        "ecdsa-p256" => KeyType::EcdsaP256,
        "rsa" | "rsa-2048" => KeyType::Rsa2048,
        other => anyhow::bail!("--key-type {other:?}: expected ecdsa-p256 or rsa"),
    };
    let ca_root_pem = std::fs::read_to_string(&a.ca_root)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", a.ca_root.display()))?;
    // Read here, so that a file without a certificate is named rather than found out by the TLS
    // handshake as an unknown issuer.
    meshca_pki::Certificate::all_from_pem(
        ca_root_pem.as_bytes(),
        &a.ca_root.display().to_string(),
    )?;
    let (identity, credential) = match &a.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", f.display()))?;
            let t = t.trim().to_owned();
            let id = meshca_agent::identity_from_token(&t, &td)
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            (id, Credential::Token(t))
        }
        None => {
            let (chain_pem, key_pem, _, _) = meshca_agent::client::current(&a.output_dir)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no --token-file and no certificate in {} to renew with",
                        a.output_dir.display()
                    )
                })?;
            let leaf =
                meshca_pki::Certificate::all_from_pem(chain_pem.as_bytes(), "cert-chain.pem")?
                    .remove(0);
            let id = leaf
                .uris()
                .iter()
                .find(|u| u.starts_with("spiffe://"))
                .ok_or_else(|| anyhow::anyhow!("the current certificate has no SPIFFE ID"))?
                .parse()?;
            (id, Credential::ClientCert { chain_pem, key_pem })
        }
    };
    std::fs::create_dir_all(&a.output_dir).map_err(|e| {
        // Of a link it cannot follow (a loop), create_dir_all says only "File exists": say why.
        let e = std::fs::metadata(&a.output_dir).err().unwrap_or(e);
        anyhow::anyhow!("{}: cannot create: {e}", a.output_dir.display())
    })?;
    let agent = Agent {
        request: Request {
            ca_addr: a.ca_addr,
            ca_root_pem,
            server_name: a.ca_server_name,
            identity,
            key_type,
            ttl_seconds: a.ttl.whole_seconds(),
            credential,
            cluster_id: a.cluster_id,
        },
        output_dir: a.output_dir.clone(),
        grace_ratio: a.grace_ratio,
        token_file: a.token_file,
        ca_root_file: Some(a.ca_root),
    };
    let timeout = std::time::Duration::from_millis(
        u64::try_from(a.ca_timeout.whole_milliseconds())
            .unwrap_or(u64::MAX)
            .max(1),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if a.once {
            let leaf = agent
                .once_within(time::OffsetDateTime::now_utc(), timeout)
                .await?;
            println!(
                "{}: wrote {} (valid until {})",
                leaf.uris().first().cloned().unwrap_or_default(),
                a.output_dir.display(),
                meshca_pki::error::show_time(leaf.not_after())
            );
            return Ok(ExitCode::SUCCESS);
        }
        let mut endpoint: Option<Endpoint> = None;
        let listen = a.mtls_listen;
        let dir = a.output_dir.clone();
        agent
            .run_within(&meshca_ca::SystemClock, timeout, |_| {
                if let Some(e) = &endpoint {
                    if let Err(err) = e.reload() {
                        tracing::warn!(error = %err, "mTLS endpoint kept its old certificate");
                    }
                } else if let Some(addr) = listen {
                    match futures_lite_block(Endpoint::start(addr, &dir)) {
                        Ok(e) => {
                            println!("mTLS endpoint on {}", e.local_addr);
                            endpoint = Some(e);
                        }
                        Err(err) => tracing::error!(error = %err, "mTLS endpoint not started"),
                    }
                }
            })
            .await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs a future to completion from inside the runtime's callback.
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
