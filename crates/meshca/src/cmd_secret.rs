//! `meshca secret`: a bundle folder in, a Secret manifest out.

use std::path::PathBuf;
use std::process::ExitCode;

use meshca_pki::{CacertsBundle, Layout};
use meshca_store::secret::SecretManifest;

/// Prints the Secret that `kubectl create secret generic cacerts -n istio-system --from-file=...`
/// would create from a bundle folder, after checking the bundle as istiod would.
#[derive(clap::Args)]
pub struct Args {
    /// The bundle folder (e.g. cluster1/).
    dir: PathBuf,
    /// The Secret's name.
    #[arg(long, default_value = "cacerts")]
    name: String,
    /// The Secret's namespace.
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// Istio's file names, or cert-manager's tls.crt, tls.key, ca.crt.
    #[arg(long, value_enum, default_value = "istio")]
    format: Format,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    output: Manifest,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Istio,
    Tls,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Manifest {
    Yaml,
    Json,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let files = meshca_store::read_bundle_dir(&a.dir)?;
    let label = a.dir.display().to_string();
    let bundle = CacertsBundle::from_files(&files, &label, time::OffsetDateTime::now_utc())?;
    // istiod verifies its cacerts for serverAuth at load, as `meshca serve` does.
    bundle.path().check_server_auth_usage()?;
    let layout = match a.format {
        Format::Istio => Layout::Istio,
        Format::Tls => Layout::Tls,
    };
    let manifest = SecretManifest::for_bundle(&bundle, layout, &a.name, &a.namespace);
    let text = match a.output {
        Manifest::Yaml => manifest.to_yaml()?,
        Manifest::Json => manifest.to_json()? + "\n",
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
