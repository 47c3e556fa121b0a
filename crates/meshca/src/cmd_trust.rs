//! `meshca trust`: apply a root trust policy to the clusters of a store.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use meshca_trust::{FolderStore, Outcome, TrustPolicy};

use crate::Output;

/// Managed intermediate CAs for every cluster, from one RootTrustPolicy.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Reconcile once: every cluster gets a valid, fresh cacerts signed by the policy's CA.
    Apply(Common),
    /// Rotate intermediates now, fresh or not (all clusters, or --cluster).
    RotateIntermediates(Common),
    /// Per cluster: intermediate serial, expiry, next renewal, problems.
    Status(StatusArgs),
}

#[derive(clap::Args)]
pub struct Common {
    /// The RootTrustPolicy YAML (Gloo's admin.gloo.solo.io/v2 or meshca's trust.meshca/v1alpha1).
    #[arg(short = 'f', long = "filename")]
    policy: PathBuf,
    /// The store: <store>/<cluster>/<namespace>/<secret>/<key>.
    #[arg(long)]
    store: PathBuf,
    /// The management cluster's folder name.
    #[arg(long, default_value = "mgmt")]
    mgmt_cluster: String,
    /// Only these clusters (repeatable).
    #[arg(long = "cluster")]
    clusters: Vec<String>,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    common: Common,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

fn load(c: &Common) -> anyhow::Result<(TrustPolicy, FolderStore)> {
    let shown = c.policy.display().to_string();
    let text = std::fs::read_to_string(&c.policy)
        .map_err(|e| anyhow::anyhow!("{shown}: cannot read: {e}"))?;
    let policy = TrustPolicy::from_yaml(&text, &shown)?;
    let store = FolderStore::open(&c.store)?;
    Ok((policy, store))
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let now = time::OffsetDateTime::now_utc();
    let mut out = std::io::stdout().lock();
    match cmd {
        Command::Apply(c) => apply(&c, &[], now, &mut out),
        Command::RotateIntermediates(c) => {
            let force = if c.clusters.is_empty() {
                vec!["*".to_owned()]
            } else {
                c.clusters.clone()
            };
            apply(&c, &force, now, &mut out)
        }
        Command::Status(s) => {
            let (policy, store) = load(&s.common)?;
            let st = meshca_trust::status(
                &store,
                &policy,
                &s.common.mgmt_cluster,
                &s.common.clusters,
                now,
            )?;
            match s.output {
                Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&st)?)?,
                Output::Text => {
                    writeln!(
                        out,
                        "{:<16} {:<24} {:<22} {:<22} PROBLEMS",
                        "CLUSTER", "SERIAL", "NOT AFTER", "NEXT RENEWAL"
                    )?;
                    for c in &st {
                        let serial = c
                            .serial
                            .as_deref()
                            .map(|s| s.chars().take(23).collect::<String>())
                            .unwrap_or_else(|| "-".into());
                        writeln!(
                            out,
                            "{:<16} {:<24} {:<22} {:<22} {}",
                            c.cluster,
                            serial,
                            c.not_after.as_deref().unwrap_or("-"),
                            c.next_renewal.as_deref().unwrap_or("-"),
                            if c.problems.is_empty() {
                                "-".to_owned()
                            } else {
                                c.problems.join("; ")
                            }
                        )?;
                    }
                }
            }
            Ok(if st.iter().all(|c| c.problems.is_empty()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn apply(
    c: &Common,
    force: &[String],
    now: time::OffsetDateTime,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let (policy, store) = load(c)?;
    for n in &policy.notes {
        writeln!(out, "note: {n}")?;
    }
    let results =
        meshca_trust::reconcile(&store, &policy, &c.mgmt_cluster, &c.clusters, force, now)?;
    for (cluster, o) in results {
        match o {
            Outcome::Created => writeln!(out, "{cluster}: cacerts created")?,
            Outcome::Rotated(why) => writeln!(out, "{cluster}: intermediate rotated ({why})")?,
            Outcome::Fresh => writeln!(out, "{cluster}: fresh, nothing to do")?,
        }
    }
    Ok(ExitCode::SUCCESS)
}
