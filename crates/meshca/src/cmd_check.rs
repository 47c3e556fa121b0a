//! `meshca check`: cacerts bundle folders looked over like `linkerd check` looks over a mesh,
//! ✔/⚠/✘ per finding; exit 0 unless a finding failed (warnings allowed).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use meshca_verify::check::{BundleSource, CheckOptions, CheckReport, Finding, Level};

use crate::Output;

/// Checks cacerts bundles the way istiod will load them, and that each bundle's chain verifies
/// against every other bundle's roots (the rule `meshca verify roots` applies too).
#[derive(clap::Args)]
pub struct Args {
    /// Bundle folders, in the Istio layout (ca-cert.pem, ca-key.pem, cert-chain.pem,
    /// root-cert.pem) or the kubernetes.io/tls layout (tls.crt, tls.key, ca.crt).
    #[arg(required = true, num_args = 1..)]
    dirs: Vec<PathBuf>,
    /// Warn when the signing certificate or a root has fewer days left than this.
    #[arg(long, value_name = "DAYS", default_value_t = 60)]
    warn_days: u32,
    /// Fail when the signing certificate or a root has fewer days left than this
    /// (0: fail only once expired).
    #[arg(long, value_name = "DAYS", default_value_t = 0)]
    fail_days: u32,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let now = time::OffsetDateTime::now_utc();
    check_and_print(a, now, &mut std::io::stdout().lock())
}

/// Reads every folder, checks them at `now` and writes the findings to `out`.
fn check_and_print(
    a: Args,
    now: time::OffsetDateTime,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    // A folder that cannot be read is a failing finding of its own, not the end of the run.
    let sources: Vec<BundleSource> = a
        .dirs
        .iter()
        .map(|d| BundleSource {
            dir: d.display().to_string(),
            files: meshca_store::read_bundle_dir(d).map_err(|e| e.to_string()),
        })
        .collect();
    let options = CheckOptions {
        warn_days: a.warn_days,
        fail_days: a.fail_days,
    };
    let report = meshca_verify::check::check(&sources, &options, now);
    if !a.output.write_data(out, &report)? {
        print_text(&report, out)?;
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_text(r: &CheckReport, out: &mut impl Write) -> std::io::Result<()> {
    let sections = r
        .bundles
        .iter()
        .map(|b| (b.dir.as_str(), b.findings.as_slice()))
        .chain((!r.cross.is_empty()).then_some(("across bundles", r.cross.as_slice())));
    for (title, findings) in sections {
        writeln!(out, "{title}")?;
        writeln!(out, "{}", "-".repeat(title.chars().count()))?;
        for f in findings {
            print_finding(f, out)?;
        }
        writeln!(out)?;
    }
    writeln!(out, "{}", r.summary())
}

fn print_finding(f: &Finding, out: &mut impl Write) -> std::io::Result<()> {
    let mark = match f.level {
        Level::Pass => "✔",
        Level::Warn => "⚠",
        Level::Fail => "✘",
    };
    writeln!(out, "{mark} {}: {}", f.name, f.detail)
}
