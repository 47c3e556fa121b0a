//! `meshca check`: cacerts bundles looked over the way `linkerd check` looks over a control
//! plane. Every property istiod relies on is its own named [`Finding`] that passes, warns or
//! fails, so one broken property shows as one ✘ rather than as a cascade or a single error.
//!
//! Sans-IO like the rest of the crate: callers hand in each folder's files (or why the folder
//! could not be read) and `now`; nothing here reads a file or the clock.

mod cross;
mod der;
mod keys;
mod layout;
mod lifetime;
mod material;
mod path;
mod report;
#[cfg(test)]
mod tests;

use meshca_pki::bundle::{CA_CRL, CERT_CHAIN, Layout};
use meshca_pki::crl::check_crls;
use meshca_pki::error::show_time;
use meshca_pki::{BundleFiles, Certificate, verify_path};
use time::OffsetDateTime;

pub use der::rsa_key_bits;
pub use report::{BundleReport, CheckName, CheckReport, Finding, Level};

use cross::shared_root;
use keys::{key_match, key_strength, signature_digest};
use layout::{LayoutFiles, check_layout};
use lifetime::{days_left, validity};
use material::parse;
use path::{chain_order, fit_for_signing, outlives_root, signature_path};

/// The thresholds of the expiry checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Warn when the signing certificate or a root has fewer days left than this.
    pub warn_days: u32,
    /// Fail when the signing certificate or a root has fewer days left than this; with 0 only
    /// an expired certificate fails.
    pub fail_days: u32,
}

impl Default for CheckOptions {
    /// Linkerd's threshold: warn under 60 days; fail only once expired.
    fn default() -> Self {
        CheckOptions {
            warn_days: 60,
            fail_days: 0,
        }
    }
}

/// One bundle folder to check: its files, or why they could not be read.
#[derive(Clone, Debug)]
pub struct BundleSource {
    /// The folder, as it should be shown.
    pub dir: String,
    /// Its files by name (as `meshca_store::read_bundle_dir` reads them), or the reason the
    /// folder could not be read.
    pub files: Result<BundleFiles, String>,
}

/// Checks every bundle, and that they share a root when there is more than one.
pub fn check(sources: &[BundleSource], options: &CheckOptions, now: OffsetDateTime) -> CheckReport {
    let inspected: Vec<Inspected> = sources
        .iter()
        .map(|s| match &s.files {
            Ok(files) => inspect(&s.dir, files, options, now),
            Err(reason) => Inspected {
                report: BundleReport {
                    dir: s.dir.clone(),
                    findings: vec![Finding::fail(CheckName::Folder, reason.clone())],
                },
                trust: None,
            },
        })
        .collect();
    let cross = if inspected.len() > 1 {
        vec![shared_root(&inspected, now)]
    } else {
        Vec::new()
    };
    CheckReport {
        bundles: inspected.into_iter().map(|i| i.report).collect(),
        cross,
    }
}

/// Checks one bundle folder's files.
pub fn check_bundle(
    dir: &str,
    files: &BundleFiles,
    options: &CheckOptions,
    now: OffsetDateTime,
) -> BundleReport {
    inspect(dir, files, options, now).report
}

/// A bundle's findings, and what the cross-bundle check needs from it.
struct Inspected {
    report: BundleReport,
    trust: Option<Trust>,
}

/// What a bundle's workloads present (its signing certificate and the intermediates above it)
/// and trust (its roots): the two halves of the interop rule.
struct Trust {
    signing: Certificate,
    chain: Vec<Certificate>,
    roots: Vec<Certificate>,
}

fn inspect(dir: &str, files: &BundleFiles, o: &CheckOptions, now: OffsetDateTime) -> Inspected {
    let mut out = Vec::new();
    let report = |findings| BundleReport {
        dir: dir.to_owned(),
        findings,
    };
    let Some(layout) = check_layout(files, &mut out) else {
        return Inspected {
            report: report(out),
            trust: None,
        };
    };
    let names = LayoutFiles::of(layout);
    let m = parse(layout, files, &mut out);
    let roots = m.roots.as_deref();
    let pool = m.intermediates();

    if let (Some(signing), Some(key)) = (&m.signing, &m.key) {
        out.push(key_match(signing, key, &names));
    }
    let mut verified = None;
    if let (Some(signing), Some(roots)) = (&m.signing, roots) {
        let listed = match layout {
            Layout::Istio => m.chain_file.clone(),
            Layout::Tls => Some(
                std::iter::once(signing.clone())
                    .chain(m.signing_rest.iter().cloned())
                    .collect(),
            ),
        };
        if let Some(listed) = listed {
            let list_file = names.chain.unwrap_or(names.signing);
            out.push(chain_order(&listed, list_file, signing, roots, names.roots));
        }
        // The anchor must be a root, as `meshca serve` requires (meshca-pki's rule).
        let verification = verify_path(signing, &pool, roots, now)
            .and_then(|path| path.check_anchor_is_root().map(|()| path));
        out.push(match verification {
            Ok(path) => {
                let detail = format!(
                    "\"{}\" chains to root \"{}\" ({}), all valid until {}",
                    signing.subject(),
                    path.root().subject(),
                    counted(path.certs().len(), "certificate"),
                    show_time(path.not_after())
                );
                verified = Some(path.certs().to_vec());
                Finding::pass(CheckName::VerifiesToRoot, detail)
            }
            Err(e) => Finding::fail(CheckName::VerifiesToRoot, e.to_string()),
        });
    }
    let all = m.unique_certs();
    if !all.is_empty() {
        out.push(validity(&all, now));
    }
    if let Some(signing) = &m.signing {
        out.push(days_left(CheckName::SigningDaysLeft, &[signing], o, now));
    }
    if let Some(roots) = roots {
        let roots: Vec<&Certificate> = roots.iter().collect();
        out.push(days_left(CheckName::RootDaysLeft, &roots, o, now));
    }
    // Without a verified path (the verification finding says why), the later checks look at
    // the path the signatures alone make, so that one broken property does not hide the others.
    let path = verified.or_else(|| {
        m.signing
            .as_ref()
            .map(|s| signature_path(s, &pool, roots.unwrap_or_default()))
    });
    let anchor = path
        .as_ref()
        .and_then(|p| p.last())
        .filter(|c| roots.is_some_and(|r| r.contains(c)))
        .cloned();
    if let (Some(path), Some(anchor)) = (&path, &anchor) {
        out.push(outlives_root(path, anchor));
    }
    if let (Some(signing), Some(path)) = (&m.signing, &path) {
        out.push(fit_for_signing(signing, path, now));
    }
    if !all.is_empty() {
        out.push(signature_digest(&all, roots.unwrap_or_default()));
        out.push(key_strength(&all, now));
    }
    if let (Layout::Istio, Some(crl), Some(chain)) = (layout, files.get(CA_CRL), &m.chain_file) {
        out.push(crl_coverage(crl, chain));
    }
    Inspected {
        report: report(out),
        trust: m.signing.zip(m.roots).map(|(signing, roots)| Trust {
            signing,
            chain: pool,
            roots,
        }),
    }
}

/// Check 13, in the Istio layout when `ca-crl.pem` is there (istiod reads it only then): the
/// rule is meshca-pki's, the one `meshca serve` refuses a bundle by.
fn crl_coverage(crl: &[u8], chain: &[Certificate]) -> Finding {
    match check_crls(crl, CA_CRL, chain, CERT_CHAIN) {
        Ok(c) if c.crls == 0 => Finding::pass(
            CheckName::Crl,
            format!("{CA_CRL} is empty: istiod ignores it"),
        ),
        Ok(c) => Finding::pass(
            CheckName::Crl,
            format!(
                "{CA_CRL}: {}, covering {}",
                counted(c.crls, "CRL"),
                c.signers
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(e) => Finding::fail(CheckName::Crl, e.to_string()),
    }
}

/// `1 bundle`, `2 bundles`.
fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}
