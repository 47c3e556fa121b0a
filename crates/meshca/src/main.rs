//! The `meshca` command: argument parsing and printing. Every decision lives in a library crate.

#![forbid(unsafe_code)]

mod cmd_agent;
mod cmd_certs;
mod cmd_check;
mod cmd_inspect;
mod cmd_quickstart;
mod cmd_secret;
mod cmd_serve;
mod cmd_token;
mod cmd_trust;
mod cmd_verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Certificate authority and trust manager for Istio service meshes.
#[derive(Parser)]
#[command(name = "meshca", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a root CA and per-cluster intermediate CAs, like Istio's tools/certs Makefile.
    Certs(Box<cmd_certs::Args>),
    /// Print the Kubernetes Secret (cacerts) for a cluster bundle folder.
    Secret(cmd_secret::Args),
    /// Describe the certificates, CSRs and keys in PEM files.
    Inspect(cmd_inspect::Args),
    /// Run an Istio-compatible CA server (IstioCertificateService).
    Serve(Box<cmd_serve::Args>),
    /// Mint service-account JWTs and print their JWKS.
    #[command(subcommand)]
    Token(cmd_token::Command),
    /// The workload side: key, CSR, certificate files, renewal, an mTLS test endpoint.
    Agent(Box<cmd_agent::Args>),
    /// The whole story on one machine: root, two clusters, CAs, workloads, mTLS, verification.
    Quickstart(cmd_quickstart::Args),
    /// Health checks of cacerts bundles, like `linkerd check`.
    Check(cmd_check::Args),
    /// Managed, rotated intermediate CAs for every cluster from a RootTrustPolicy.
    #[command(subcommand)]
    Trust(Box<cmd_trust::Command>),
    /// Check that workloads carry certificates from the plugged-in CA and share one root.
    #[command(subcommand)]
    Verify(cmd_verify::Command),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages: meshca.1 and one per subcommand (meshca-trust-run.1, ...).
    Man {
        /// The folder to write them to.
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
    },
}

/// Writes `meshca.1` and a page for every subcommand, nested ones included, into `dir`.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = Vec::new();
    write_man_page(&cmd, dir, "meshca", &mut written)?;
    println!("wrote {} man pages to {}", written.len(), dir.display());
    Ok(ExitCode::SUCCESS)
}

fn write_man_page(
    cmd: &clap::Command,
    dir: &std::path::Path,
    name: &str,
    written: &mut Vec<String>,
) -> anyhow::Result<()> {
    let page = cmd.clone().name(name.to_owned());
    let mut text = Vec::new();
    clap_mangen::Man::new(page).render(&mut text)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, text)
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
    written.push(name.to_owned());
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_man_page(sub, dir, &format!("{name}-{}", sub.get_name()), written)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Certs(a) => cmd_certs::run(*a),
        Command::Secret(a) => cmd_secret::run(a),
        Command::Inspect(a) => cmd_inspect::run(a),
        Command::Serve(a) => cmd_serve::run(*a),
        Command::Token(c) => cmd_token::run(c),
        Command::Verify(c) => cmd_verify::run(c),
        Command::Trust(c) => cmd_trust::run(*c),
        Command::Check(a) => cmd_check::run(a),
        Command::Agent(a) => cmd_agent::run(*a),
        Command::Quickstart(a) => cmd_quickstart::run(a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            // Into memory first: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "meshca", &mut script);
            std::io::stdout()
                .write_all(&script)
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| anyhow::anyhow!("writing the completion script: {e}"))
        }
        Command::Man { dir } => write_man_pages(&dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Every library error already carries its cause in its message: print it once.
            eprintln!("meshca: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `-o` for commands that print for people or for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// for people
    Text,
    /// for scripts: one JSON document
    Json,
    /// for scripts: one YAML document, the same fields as JSON
    Yaml,
}

impl Output {
    /// Writes `value` as JSON or YAML and says so, or writes nothing and returns false for
    /// text, which each command prints in its own way.
    fn write_data<T: serde::Serialize>(
        self,
        out: &mut impl std::io::Write,
        value: &T,
    ) -> anyhow::Result<bool> {
        match self {
            Output::Text => return Ok(false),
            Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
            Output::Yaml => write!(out, "{}", serde_saphyr::to_string(value)?)?,
        }
        Ok(true)
    }
}
