//! `meshca certs`: flags and environment variables in, a line per target out.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use meshca_certs::{Progress, Settings, Status, Target};
use meshca_pki::error::show_time;

/// Targets as in `make -f Makefile.selfsigned.mk`: root-ca, <name>-cacerts, <namespace>-certs, clean.
/// Each variable of the Makefile is read from the environment or given as a flag.
#[derive(clap::Args)]
pub struct Args {
    /// Run in this folder instead of the current one.
    #[arg(
        short = 'C',
        long = "directory",
        value_name = "DIR",
        default_value = "."
    )]
    dir: PathBuf,
    /// Regenerate outputs that exist and are valid (their keys are replaced).
    #[arg(long)]
    force: bool,
    /// root-ca, <name>-cacerts, <namespace>-certs or clean.
    #[arg(value_name = "TARGET", required = true)]
    targets: Vec<String>,

    /// Root lifetime in days.
    #[arg(
        long,
        env = "ROOTCA_DAYS",
        default_value_t = 3650,
        help_heading = "Root CA"
    )]
    rootca_days: i64,
    /// Root key type: rsa, ecdsa-p256 or ecdsa-p384.
    #[arg(
        long,
        env = "ROOTCA_KEY_TYPE",
        default_value = "rsa",
        help_heading = "Root CA"
    )]
    rootca_key_type: String,
    /// Root RSA key size: 2048, 3072 or 4096.
    #[arg(
        long,
        env = "ROOTCA_KEYSZ",
        default_value_t = 4096,
        help_heading = "Root CA"
    )]
    rootca_keysz: u32,
    /// Root O=.
    #[arg(
        long,
        env = "ROOTCA_ORG",
        default_value = "Istio",
        help_heading = "Root CA"
    )]
    rootca_org: String,
    /// Root CN=.
    #[arg(
        long,
        env = "ROOTCA_CN",
        default_value = "Root CA",
        help_heading = "Root CA"
    )]
    rootca_cn: String,

    /// Intermediate lifetime in days [default: 3650, shortened to the root's end].
    #[arg(long, env = "INTERMEDIATE_DAYS", help_heading = "Intermediate CA")]
    intermediate_days: Option<i64>,
    /// Intermediate key type: rsa, ecdsa-p256 or ecdsa-p384.
    #[arg(
        long,
        env = "INTERMEDIATE_KEY_TYPE",
        default_value = "rsa",
        help_heading = "Intermediate CA"
    )]
    intermediate_key_type: String,
    /// Intermediate RSA key size: 2048, 3072 or 4096.
    #[arg(
        long,
        env = "INTERMEDIATE_KEYSZ",
        default_value_t = 4096,
        help_heading = "Intermediate CA"
    )]
    intermediate_keysz: u32,
    /// Intermediate and workload O=.
    #[arg(
        long,
        env = "INTERMEDIATE_ORG",
        default_value = "Istio",
        help_heading = "Intermediate CA"
    )]
    intermediate_org: String,
    /// Intermediate CN=.
    #[arg(
        long,
        env = "INTERMEDIATE_CN",
        default_value = "Intermediate CA",
        help_heading = "Intermediate CA"
    )]
    intermediate_cn: String,
    /// Intermediate DNS SAN (empty for none).
    #[arg(
        long,
        env = "INTERMEDIATE_SAN_DNS",
        default_value = "istiod.istio-system.svc",
        help_heading = "Intermediate CA"
    )]
    intermediate_san_dns: String,

    /// Workload lifetime in days [default: 1].
    #[arg(
        long,
        env = "WORKLOAD_DAYS",
        help_heading = "Workload (<namespace>-certs)"
    )]
    workload_days: Option<i64>,
    /// Workload key type [default: the intermediate's].
    #[arg(
        long,
        env = "WORKLOAD_KEY_TYPE",
        help_heading = "Workload (<namespace>-certs)"
    )]
    workload_key_type: Option<String>,
    /// Workload RSA key size [default: the intermediate's].
    #[arg(
        long,
        env = "WORKLOAD_KEYSZ",
        help_heading = "Workload (<namespace>-certs)"
    )]
    workload_keysz: Option<u32>,
    /// Service account in the workload SPIFFE ID.
    #[arg(
        long,
        env = "SERVICE_ACCOUNT",
        default_value = "default",
        help_heading = "Workload (<namespace>-certs)"
    )]
    service_account: String,
    /// Workload CN=.
    #[arg(
        long,
        env = "WORKLOAD_CN",
        default_value = "Workload",
        help_heading = "Workload (<namespace>-certs)"
    )]
    workload_cn: String,
    /// Trust domain of the workload SPIFFE ID.
    #[arg(
        long,
        env = "TRUST_DOMAIN",
        default_value = "cluster.local",
        help_heading = "Workload (<namespace>-certs)"
    )]
    trust_domain: String,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let targets = a
        .targets
        .iter()
        .map(|t| Target::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let settings = Settings {
        rootca_days: a.rootca_days,
        rootca_key_type: a.rootca_key_type,
        rootca_keysz: a.rootca_keysz,
        rootca_org: a.rootca_org,
        rootca_cn: a.rootca_cn,
        intermediate_days: a.intermediate_days,
        intermediate_key_type: a.intermediate_key_type,
        intermediate_keysz: a.intermediate_keysz,
        intermediate_org: a.intermediate_org,
        intermediate_cn: a.intermediate_cn,
        intermediate_san_dns: a.intermediate_san_dns,
        workload_days: a.workload_days,
        workload_key_type: a.workload_key_type,
        workload_keysz: a.workload_keysz,
        service_account: a.service_account,
        workload_cn: a.workload_cn,
        trust_domain: a.trust_domain,
    };
    let tty = std::io::stderr().is_terminal();
    let progress = |p: Progress| {
        if !tty || p.slow == 0 {
            return;
        }
        let mut err = std::io::stderr().lock();
        if p.done < p.total {
            let _ = write!(
                err,
                "\r\x1b[2Kgenerating keys: {}/{} done ({} RSA key(s) take a few seconds)",
                p.done, p.total, p.slow
            );
        } else {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = err.flush();
    };
    let now = time::OffsetDateTime::now_utc();
    let outcomes = meshca_certs::run(&a.dir, &settings, &targets, a.force, now, &progress)?;
    let mut out = std::io::stdout().lock();
    for o in outcomes {
        match o.status {
            Status::Generated {
                files,
                key_type,
                not_after,
                notes,
            } => {
                writeln!(
                    out,
                    "{}: generated {} ({key_type}, valid until {})",
                    o.target,
                    files.join(", "),
                    show_time(not_after)
                )?;
                for n in notes {
                    writeln!(out, "  note: {n}")?;
                }
            }
            Status::UpToDate { not_after } => {
                writeln!(
                    out,
                    "{}: up to date (valid until {}); --force regenerates it",
                    o.target,
                    show_time(not_after)
                )?;
            }
            Status::Removed { files } if files.is_empty() => {
                writeln!(out, "clean: nothing to remove")?
            }
            Status::Removed { files } => writeln!(out, "clean: removed {}", files.join(", "))?,
        }
    }
    Ok(ExitCode::SUCCESS)
}
