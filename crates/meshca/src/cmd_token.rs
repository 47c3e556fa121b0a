//! `meshca token`: mint service-account JWTs and print their JWKS, for local use and tests.

use std::path::PathBuf;
use std::process::ExitCode;

use meshca_token::{Jwks, ServiceAccountClaims, SigningKey};

/// Service-account tokens for local use: what Kubernetes would mount into a pod.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Print a signed service-account JWT.
    Issue(IssueArgs),
    /// Print the JWKS (public keys) for `meshca serve --jwt-issuer ISSUER=FILE`.
    Jwks(JwksArgs),
}

#[derive(clap::Args)]
pub struct IssueArgs {
    /// Namespace.
    #[arg(long)]
    ns: String,
    /// Service account.
    #[arg(long)]
    sa: String,
    /// Audience (repeatable).
    #[arg(long, default_value = "istio-ca")]
    audience: Vec<String>,
    /// Lifetime.
    #[arg(long, default_value = "1h", value_parser = crate::cmd_serve::parse_duration)]
    ttl: time::Duration,
    /// Issuer (`iss`).
    #[arg(long, default_value = "meshca")]
    issuer: String,
    /// Signing key (ECDSA P-256 for ES256, RSA for RS256), PEM.
    #[arg(long)]
    key: PathBuf,
}

#[derive(clap::Args)]
pub struct JwksArgs {
    /// Signing key files, PEM (repeatable).
    #[arg(long, required = true)]
    key: Vec<PathBuf>,
}

fn load(path: &PathBuf) -> anyhow::Result<SigningKey> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{shown}: cannot read: {e}"))?;
    Ok(SigningKey::from_pem(&bytes, &shown)?)
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Issue(a) => {
            let key = load(&a.key)?;
            let now = time::OffsetDateTime::now_utc();
            let claims = ServiceAccountClaims {
                issuer: a.issuer,
                audiences: a.audience,
                namespace: a.ns,
                service_account: a.sa,
                issued_at: now,
                expires_at: now + a.ttl,
            };
            println!("{}", meshca_token::mint(&claims, &key)?);
        }
        Command::Jwks(a) => {
            let keys = a.key.iter().map(load).collect::<anyhow::Result<Vec<_>>>()?;
            println!(
                "{}",
                Jwks::from_keys(keys.iter().map(SigningKey::public_jwk)).to_json()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
