//! `meshca quickstart`: the whole story on one machine.

use std::path::PathBuf;
use std::process::ExitCode;

/// Runs the seeds' story on this machine: root and two clusters, a CA per cluster, a workload
/// per cluster, mTLS across clusters, and the verification steps.
#[derive(clap::Args)]
pub struct Args {
    /// The folder to work in (reused across runs).
    #[arg(long, default_value = "./meshca-quickstart")]
    dir: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    // The story is the output; the servers' and agents' logs only when MESHCA_LOG asks for them.
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHCA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    std::fs::create_dir_all(&a.dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", a.dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut out = std::io::stdout();
        meshca_quickstart::run(&a.dir, &mut out).await?;
        Ok(ExitCode::SUCCESS)
    })
}
