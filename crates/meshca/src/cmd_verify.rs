//! `meshca verify`: the seeds' verification steps as commands, ✔/✘ per check, exit 0 only when
//! every check passes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use meshca_pki::Certificate;
use meshca_verify::{BundleCerts, ProxySecrets, Report};

use crate::Output;

/// Checks that workloads really carry certificates from the plugged-in CA.
#[derive(clap::Subcommand)]
pub enum Command {
    /// A presented chain (leaf first) against a cacerts folder: same root, same CA, verifies.
    Chain(ChainArgs),
    /// Each bundle's intermediate chains to its own root, and each bundle's chain verifies
    /// against every other's root bundle (holds mid root rotation); names the odd one out.
    Roots(RootsArgs),
    /// Connects like `openssl s_client -showcerts` and checks the presented chain against a
    /// cacerts folder.
    Endpoint(EndpointArgs),
    /// Envoy secret dumps (`istioctl proxy-config secret <pod> -o json` or `-o yaml`, or Envoy's
    /// admin `/config_dump`): each proxy's chain verifies against its ROOTCA, and against every
    /// other proxy's ROOTCA.
    EnvoySecrets(EnvoyArgs),
}

#[derive(clap::Args)]
pub struct ChainArgs {
    /// The cacerts folder the chain should come from.
    #[arg(long)]
    cacerts: PathBuf,
    /// PEM file with the chain, leaf first (e.g. from `openssl s_client -showcerts`).
    chain: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

#[derive(clap::Args)]
pub struct EndpointArgs {
    /// HOST:PORT
    addr: String,
    /// The cacerts folder the endpoint's certificate should come from.
    #[arg(long)]
    cacerts: PathBuf,
    /// A folder with cert-chain.pem and key.pem to present when the server asks for a client certificate.
    #[arg(long)]
    client_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

#[derive(clap::Args)]
pub struct RootsArgs {
    /// Cluster bundle folders.
    #[arg(required = true, num_args = 1..)]
    dirs: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

#[derive(clap::Args)]
pub struct EnvoyArgs {
    /// Dumps, one per proxy: istioctl's JSON or YAML, or Envoy's `/config_dump` (told by content).
    #[arg(required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))
}

fn bundle(dir: &Path) -> anyhow::Result<BundleCerts> {
    let mut files = BTreeMap::new();
    for name in [
        "root-cert.pem",
        "ca-cert.pem",
        "cert-chain.pem",
        "ca.crt",
        "tls.crt",
    ] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            files.insert(name.to_owned(), b);
        }
    }
    if !dir.is_dir() {
        anyhow::bail!("{}: not a folder", dir.display());
    }
    Ok(BundleCerts::from_files(&dir.display().to_string(), &files)?)
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    let now = time::OffsetDateTime::now_utc();
    let (report, output) = match c {
        Command::Chain(a) => {
            let b = bundle(&a.cacerts)?;
            let shown = a.chain.display().to_string();
            let chain = Certificate::all_from_pem(&read(&a.chain)?, &shown)?;
            (
                meshca_verify::chain_against_bundle(&b, &chain, now),
                a.output,
            )
        }
        Command::Endpoint(a) => {
            let b = bundle(&a.cacerts)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let res = rt.block_on(meshca_agent::mtls::call(
                &a.addr,
                a.client_dir.as_deref(),
                None,
            ))?;
            (
                meshca_verify::chain_against_bundle(&b, &res.server_chain, now),
                a.output,
            )
        }
        Command::Roots(a) => {
            let bundles = a
                .dirs
                .iter()
                .map(|d| bundle(d))
                .collect::<anyhow::Result<Vec<_>>>()?;
            (meshca_verify::same_roots(&bundles, now), a.output)
        }
        Command::EnvoySecrets(a) => {
            let proxies = a
                .files
                .iter()
                .map(|f| {
                    Ok(ProxySecrets::from_dump(
                        &read(f)?,
                        &f.display().to_string(),
                    )?)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            (meshca_verify::envoy_secrets(&proxies, now), a.output)
        }
    };
    print(&report, output)?;
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print(r: &Report, output: Output) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json | Output::Yaml => {
            #[derive(serde::Serialize)]
            struct J<'a> {
                passed: bool,
                checks: &'a [meshca_verify::Check],
            }
            output.write_data(
                &mut out,
                &J {
                    passed: r.passed(),
                    checks: &r.checks,
                },
            )?;
        }
        Output::Text => {
            for c in &r.checks {
                writeln!(
                    out,
                    "{} {}: {}",
                    if c.ok { "✔" } else { "✘" },
                    c.name,
                    c.detail
                )?;
            }
            let failed = r.checks.iter().filter(|c| !c.ok).count();
            if failed == 0 {
                writeln!(out, "all {} checks passed", r.checks.len())?;
            } else {
                writeln!(out, "{failed} of {} checks failed", r.checks.len())?;
            }
        }
    }
    Ok(())
}
