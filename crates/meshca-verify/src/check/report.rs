//! What `meshca check` reports: the [`Finding`]s with their stable names and levels, grouped
//! per bundle and across bundles, and the summary line and JSON shape scripts read.

use std::fmt;

use serde::Serialize;

/// How a finding came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The property holds.
    Pass,
    /// The property holds for now, but needs attention soon.
    Warn,
    /// The property does not hold: istiod would refuse the bundle or workloads would break.
    Fail,
}

/// What a finding is about. The names are stable: scripts read them from `-o json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum CheckName {
    /// The folder could be read at all.
    Folder,
    /// The files of one layout are all there, and no file of the other layout is mixed in.
    Layout,
    /// Every file of the layout parses.
    Parse,
    /// The private key belongs to the signing certificate.
    KeyMatch,
    /// The chain file starts with the signing certificate, each certificate is signed by the
    /// next, and it ends at (or leads to) a root of the root bundle.
    ChainOrder,
    /// The signing certificate verifies to a root at `now`, as istiod verifies it.
    VerifiesToRoot,
    /// Every certificate is inside its validity window at `now`.
    Validity,
    /// The signing certificate has more days left than the thresholds.
    SigningDaysLeft,
    /// Every root has more days left than the thresholds.
    RootDaysLeft,
    /// No certificate below the root is valid for longer than the root.
    OutlivesRoot,
    /// The signing certificate can sign workload certificates that Go verifiers accept.
    FitForSigning,
    /// No SHA-1 or MD5 signature below the root.
    SignatureDigest,
    /// Every key is strong enough.
    KeyStrength,
    /// `ca-crl.pem`, when there is one, holds a CRL from every CA of `cert-chain.pem`.
    Crl,
    /// All bundles share one root (across bundles).
    SharedRoot,
}

impl CheckName {
    /// The name as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::Folder => "bundle folder is readable",
            CheckName::Layout => "files are complete and in one layout",
            CheckName::Parse => "every file parses",
            CheckName::KeyMatch => "key matches the signing certificate",
            CheckName::ChainOrder => "chain is in order and complete",
            CheckName::VerifiesToRoot => "signing certificate verifies to a root",
            CheckName::Validity => "every certificate is within its validity period",
            CheckName::SigningDaysLeft => "signing certificate is not close to expiry",
            CheckName::RootDaysLeft => "roots are not close to expiry",
            CheckName::OutlivesRoot => "no certificate outlives its root",
            CheckName::FitForSigning => "signing certificate can sign workload certificates",
            CheckName::SignatureDigest => "no SHA-1 or MD5 signature below the root",
            CheckName::KeyStrength => "keys are strong enough",
            CheckName::Crl => "ca-crl.pem has a CRL from every CA of the chain",
            CheckName::SharedRoot => "bundles share one root",
        }
    }
}

impl fmt::Display for CheckName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CheckName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One checked property and how it came out.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// What was checked.
    pub name: CheckName,
    /// How it came out.
    pub level: Level,
    /// Why, in one line, naming the files and certificates involved.
    pub detail: String,
}

impl Finding {
    pub(super) fn new(name: CheckName, level: Level, detail: impl Into<String>) -> Self {
        Finding {
            name,
            level,
            detail: detail.into(),
        }
    }

    pub(super) fn pass(name: CheckName, detail: impl Into<String>) -> Self {
        Self::new(name, Level::Pass, detail)
    }

    pub(super) fn warn(name: CheckName, detail: impl Into<String>) -> Self {
        Self::new(name, Level::Warn, detail)
    }

    pub(super) fn fail(name: CheckName, detail: impl Into<String>) -> Self {
        Self::new(name, Level::Fail, detail)
    }
}

/// The findings of one bundle folder.
#[derive(Clone, Debug, Serialize)]
pub struct BundleReport {
    /// The folder, as the caller named it.
    pub dir: String,
    /// The findings in the order the checks ran. A check whose input is missing (a file that is
    /// absent or did not parse) is left out: the finding about that input already fails.
    pub findings: Vec<Finding>,
}

impl BundleReport {
    /// The finding of one check, if it ran.
    pub fn finding(&self, name: CheckName) -> Option<&Finding> {
        self.findings.iter().find(|f| f.name == name)
    }

    /// Whether no finding failed (warnings allowed).
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.level != Level::Fail)
    }
}

/// The findings of a whole `meshca check` run.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// One report per bundle folder, in the order given.
    pub bundles: Vec<BundleReport>,
    /// Findings across bundles (only when more than one folder was given).
    pub cross: Vec<Finding>,
}

impl CheckReport {
    /// Every finding: each bundle's, then the cross-bundle ones.
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.bundles
            .iter()
            .flat_map(|b| b.findings.iter())
            .chain(self.cross.iter())
    }

    /// How many findings came out at `level`.
    pub fn count(&self, level: Level) -> usize {
        self.findings().filter(|f| f.level == level).count()
    }

    /// Whether no finding failed (warnings allowed).
    pub fn passed(&self) -> bool {
        self.count(Level::Fail) == 0
    }

    /// One line for the end of the output: `all 12 checks passed`, or the counts.
    pub fn summary(&self) -> String {
        let total = self.findings().count();
        let (warned, failed) = (self.count(Level::Warn), self.count(Level::Fail));
        if warned == 0 && failed == 0 {
            return format!("all {total} checks passed");
        }
        format!(
            "{total} checks: {} passed, {warned} {}, {failed} failed",
            self.count(Level::Pass),
            if warned == 1 { "warning" } else { "warnings" }
        )
    }
}

impl Serialize for CheckReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shape<'a> {
            passed: bool,
            bundles: &'a [BundleReport],
            cross: &'a [Finding],
        }
        Shape {
            passed: self.passed(),
            bundles: &self.bundles,
            cross: &self.cross,
        }
        .serialize(s)
    }
}
