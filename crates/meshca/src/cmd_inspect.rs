//! `meshca inspect`: what is in PEM files, for people or as JSON.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use meshca_pki::describe::{CertificateInfo, Item, KeyInfo, San, describe_pem};
use serde::Serialize;

use crate::Output;

/// Describes every certificate, CSR and key in the files. Keys: type and size only.
#[derive(clap::Args)]
pub struct Args {
    /// PEM files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

#[derive(Serialize)]
struct FileReport {
    file: String,
    items: Vec<Item>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let now = time::OffsetDateTime::now_utc();
    let mut reports = Vec::new();
    for path in &a.files {
        let name = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("{name}: cannot read: {e}"))?;
        let items = describe_pem(&text, &name, now)?;
        reports.push(FileReport { file: name, items });
    }
    let mut out = std::io::stdout().lock();
    match a.output {
        Output::Json | Output::Yaml => {
            a.output.write_data(&mut out, &reports)?;
        }
        Output::Text => {
            for r in &reports {
                for item in &r.items {
                    print_item(&mut out, &r.file, item)?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn key_text(k: &KeyInfo) -> String {
    match &k.curve {
        Some(c) => format!("{} {c}", k.algorithm),
        None => format!("{} {} bits", k.algorithm, k.bits),
    }
}

fn sans_text(sans: &[San]) -> String {
    if sans.is_empty() {
        return "-".to_owned();
    }
    sans.iter()
        .map(|s| format!("{}:{}", s.kind, s.value))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_item(out: &mut impl Write, file: &str, item: &Item) -> std::io::Result<()> {
    match item {
        Item::Certificate(c) => print_cert(out, file, c),
        Item::CertificateRequest(r) => {
            writeln!(out, "{file} [{}] certificate request", r.index)?;
            writeln!(out, "  subject:        {}", or_dash(&r.subject))?;
            writeln!(out, "  key:            {}", key_text(&r.key))?;
            writeln!(out, "  SANs:           {}", sans_text(&r.sans))?;
            writeln!(
                out,
                "  signature:      {} ({})",
                r.signature_algorithm,
                if r.signature_valid {
                    "valid"
                } else {
                    "INVALID"
                }
            )?;
            writeln!(out)
        }
        Item::PrivateKey(k) => {
            writeln!(out, "{file} [{}] private key", k.index)?;
            writeln!(out, "  key:            {}", key_text(k))?;
            writeln!(out)
        }
        Item::Other { index } => {
            writeln!(out, "{file} [{index}] other PEM section (not described)")?;
            writeln!(out)
        }
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn print_cert(out: &mut impl Write, file: &str, c: &CertificateInfo) -> std::io::Result<()> {
    writeln!(out, "{file} [{}] certificate", c.index)?;
    writeln!(out, "  subject:        {}", or_dash(&c.subject))?;
    writeln!(
        out,
        "  issuer:         {}{}",
        or_dash(&c.issuer),
        if c.self_issued { " (self-issued)" } else { "" }
    )?;
    writeln!(out, "  serial:         {}", c.serial)?;
    writeln!(
        out,
        "  valid:          {} to {} ({})",
        c.not_before, c.not_after, c.remaining
    )?;
    writeln!(out, "  key:            {}", key_text(&c.key))?;
    writeln!(out, "  signature:      {}", c.signature_algorithm)?;
    let ca = match (c.is_ca, c.path_len) {
        (true, Some(n)) => format!("yes, pathlen {n}"),
        (true, None) => "yes".to_owned(),
        (false, _) => "no".to_owned(),
    };
    writeln!(out, "  CA:             {ca}")?;
    let ku = if c.key_usage.is_empty() {
        "-".to_owned()
    } else {
        format!(
            "{}{}",
            if c.key_usage_critical {
                "critical: "
            } else {
                ""
            },
            c.key_usage.join(", ")
        )
    };
    writeln!(out, "  key usage:      {ku}")?;
    let eku = if c.extended_key_usage.is_empty() {
        "-".to_owned()
    } else {
        c.extended_key_usage.join(", ")
    };
    writeln!(out, "  ext key usage:  {eku}")?;
    writeln!(out, "  SANs:           {}", sans_text(&c.sans))?;
    for id in &c.spiffe_ids {
        writeln!(out, "  SPIFFE ID:      {id}")?;
    }
    writeln!(
        out,
        "  subject key id: {}",
        c.subject_key_id.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "  authority key:  {}",
        c.authority_key_id.as_deref().unwrap_or("-")
    )?;
    writeln!(out, "  SHA-256:        {}", c.sha256_fingerprint)?;
    writeln!(out)
}
