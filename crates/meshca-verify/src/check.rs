//! `meshca check`: cacerts bundles looked over the way `linkerd check` looks over a control
//! plane. Every property istiod relies on is its own named [`Finding`] that passes, warns or
//! fails, so one broken property shows as one ✘ rather than as a cascade or a single error.
//!
//! Sans-IO like the rest of the crate: callers hand in each folder's files (or why the folder
//! could not be read) and `now`; nothing here reads a file or the clock.

use std::fmt;

use meshca_pki::bundle::{
    CA_CERT, CA_CRT, CA_KEY, CERT_CHAIN, Layout, ROOT_CERT, TLS_CRT, TLS_KEY,
};
use meshca_pki::describe::{KeyInfo, describe_certificate, hex_colons};
use meshca_pki::error::show_time;
use meshca_pki::pem::{self, Kind};
use meshca_pki::{BundleFiles, Certificate, PkiError, PrivateKey, verify_path};
use serde::Serialize;
use time::{Duration, OffsetDateTime};

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
    fn new(name: CheckName, level: Level, detail: impl Into<String>) -> Self {
        Finding {
            name,
            level,
            detail: detail.into(),
        }
    }

    fn pass(name: CheckName, detail: impl Into<String>) -> Self {
        Self::new(name, Level::Pass, detail)
    }

    fn fail(name: CheckName, detail: impl Into<String>) -> Self {
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
        vec![shared_root(&inspected)]
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

/// The roots a bundle trusts, and the one its signing certificate chains to (if any).
struct Trust {
    roots: Vec<Certificate>,
    anchor: Option<Certificate>,
}

/// The file names of a layout, by role.
struct LayoutFiles {
    signing: &'static str,
    key: &'static str,
    chain: Option<&'static str>,
    roots: &'static str,
}

impl LayoutFiles {
    fn of(layout: Layout) -> Self {
        match layout {
            Layout::Istio => LayoutFiles {
                signing: CA_CERT,
                key: CA_KEY,
                chain: Some(CERT_CHAIN),
                roots: ROOT_CERT,
            },
            Layout::Tls => LayoutFiles {
                signing: TLS_CRT,
                key: TLS_KEY,
                chain: None,
                roots: CA_CRT,
            },
        }
    }
}

fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Istio => "Istio",
        Layout::Tls => "kubernetes.io/tls",
    }
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
        out.push(match verify_path(signing, &pool, roots, now) {
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
    Inspected {
        report: report(out),
        trust: m.roots.map(|roots| Trust { roots, anchor }),
    }
}

/// Check 1. Returns the layout istiod would read (the tls.crt layout when `tls.crt` exists),
/// or `None` when there is no bundle at all.
fn check_layout(files: &BundleFiles, out: &mut Vec<Finding>) -> Option<Layout> {
    let present = |l: Layout| -> Vec<&'static str> {
        l.required_files()
            .iter()
            .copied()
            .filter(|f| files.contains_key(*f))
            .collect()
    };
    let (istio, tls) = (present(Layout::Istio), present(Layout::Tls));
    if istio.is_empty() && tls.is_empty() {
        out.push(Finding::fail(
            CheckName::Layout,
            "no cacerts bundle here: expected ca-cert.pem, ca-key.pem, cert-chain.pem, \
             root-cert.pem (Istio) or tls.crt, tls.key, ca.crt (kubernetes.io/tls)",
        ));
        return None;
    }
    let layout = if files.contains_key(TLS_CRT) || istio.is_empty() {
        Layout::Tls
    } else {
        Layout::Istio
    };
    let (own, other, other_layout) = match layout {
        Layout::Istio => (istio, tls, Layout::Tls),
        Layout::Tls => (tls, istio, Layout::Istio),
    };
    let missing: Vec<&str> = layout
        .required_files()
        .iter()
        .copied()
        .filter(|f| !own.contains(f))
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "incomplete {} layout: missing {} (istiod refuses an incomplete bundle)",
            layout_name(layout),
            missing.join(", ")
        ));
    }
    if !other.is_empty() {
        problems.push(format!(
            "{} of the {} layout {} mixed in; istiod would read only the {} layout's files",
            other.join(", "),
            layout_name(other_layout),
            if other.len() == 1 { "is" } else { "are" },
            layout_name(layout)
        ));
    }
    out.push(if problems.is_empty() {
        Finding::pass(
            CheckName::Layout,
            format!("{} layout: {}", layout_name(layout), own.join(", ")),
        )
    } else {
        Finding::fail(CheckName::Layout, problems.join("; "))
    });
    Some(layout)
}

/// What the files of a bundle hold, as far as they parsed.
struct Material {
    /// The first certificate of `ca-cert.pem` / `tls.crt`.
    signing: Option<Certificate>,
    /// The further certificates of `ca-cert.pem` / `tls.crt`.
    signing_rest: Vec<Certificate>,
    /// `cert-chain.pem` (Istio layout only).
    chain_file: Option<Vec<Certificate>>,
    /// `root-cert.pem` / `ca.crt`.
    roots: Option<Vec<Certificate>>,
    key: Option<KeyMaterial>,
}

impl Material {
    /// Candidates between the signing certificate and a root, as istiod uses them.
    fn intermediates(&self) -> Vec<Certificate> {
        let roots = self.roots.as_deref().unwrap_or_default();
        let mut out: Vec<Certificate> = Vec::new();
        let listed = self
            .signing_rest
            .iter()
            .chain(self.chain_file.iter().flatten());
        for c in listed {
            if Some(c) != self.signing.as_ref() && !roots.contains(c) && !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }

    /// Every distinct certificate: the signing one, intermediates, then roots (named by the
    /// root file rather than by their copy in the chain file).
    fn unique_certs(&self) -> Vec<Certificate> {
        let mut out: Vec<Certificate> = self.signing.iter().cloned().collect();
        for c in self.intermediates() {
            out.push(c);
        }
        for c in self.roots.iter().flatten() {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }
}

/// A private key as far as the check needs it.
enum KeyMaterial {
    /// A key meshca can sign with.
    Usable(PrivateKey),
    /// An RSA key of a size meshca does not sign with (such as RSA-1024), which istiod still
    /// loads: read far enough to match it with the certificate and report its size.
    OtherRsa(RsaPublic),
}

impl KeyMaterial {
    fn describe(&self) -> String {
        match self {
            KeyMaterial::Usable(k) => format!("{} key", k.key_type()),
            KeyMaterial::OtherRsa(r) => format!("RSA-{} key", r.bits()),
        }
    }
}

/// Check 2: parses every file of the layout that is present.
fn parse(layout: Layout, files: &BundleFiles, out: &mut Vec<Finding>) -> Material {
    let names = LayoutFiles::of(layout);
    let mut m = Material {
        signing: None,
        signing_rest: Vec::new(),
        chain_file: None,
        roots: None,
        key: None,
    };
    let mut read = Vec::new();
    let mut errors = Vec::new();
    let certs_read = |name: &str, n: usize| format!("{name} ({})", counted(n, "certificate"));
    if let Some(bytes) = files.get(names.signing) {
        match Certificate::all_from_pem(bytes, names.signing) {
            Ok(mut certs) => {
                read.push(certs_read(names.signing, certs.len()));
                m.signing = Some(certs.remove(0).with_origin(names.signing));
                m.signing_rest = certs;
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if let Some(bytes) = files.get(names.key) {
        match read_key(bytes, names.key) {
            Ok(k) => {
                read.push(format!("{} ({})", names.key, k.describe()));
                m.key = Some(k);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    for (name, slot) in [
        (names.chain, &mut m.chain_file),
        (Some(names.roots), &mut m.roots),
    ] {
        let Some((name, bytes)) = name.and_then(|n| files.get(n).map(|b| (n, b))) else {
            continue;
        };
        match Certificate::all_from_pem(bytes, name) {
            Ok(certs) => {
                read.push(certs_read(name, certs.len()));
                *slot = Some(certs);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    out.push(if errors.is_empty() {
        Finding::pass(CheckName::Parse, read.join(", "))
    } else {
        Finding::fail(CheckName::Parse, errors.join("; "))
    });
    m
}

fn read_key(bytes: &[u8], origin: &str) -> Result<KeyMaterial, PkiError> {
    match PrivateKey::from_pem(bytes, origin) {
        Ok(k) => Ok(KeyMaterial::Usable(k)),
        Err(e) => other_rsa_key(bytes, origin)
            .map(KeyMaterial::OtherRsa)
            .ok_or(e),
    }
}

/// The public half of an RSA private key whose size meshca does not sign with. `None` for any
/// other key, and for RSA keys of meshca's sizes (those failed for another reason).
fn other_rsa_key(bytes: &[u8], origin: &str) -> Option<RsaPublic> {
    let section = pem::parse_sections(bytes, origin)
        .ok()?
        .into_iter()
        .find(|s| s.kind.is_private_key())?;
    let rsa = match section.kind {
        Kind::Pkcs1Key => der::rsa_private_key(&section.der)?,
        Kind::Pkcs8Key => der::rsa_private_key(der::pkcs8_rsa(&section.der)?)?,
        _ => return None,
    };
    (![2048, 3072, 4096].contains(&rsa.bits())).then_some(rsa)
}

/// An RSA public key: modulus and exponent, big-endian without leading zeros.
#[derive(PartialEq, Eq)]
struct RsaPublic {
    modulus: Vec<u8>,
    exponent: Vec<u8>,
}

impl RsaPublic {
    fn new(modulus: &[u8], exponent: &[u8]) -> Option<Self> {
        let strip = |b: &[u8]| -> Vec<u8> {
            let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
            b[start..].to_vec()
        };
        let modulus = strip(modulus);
        if modulus.is_empty() {
            return None;
        }
        Some(RsaPublic {
            modulus,
            exponent: strip(exponent),
        })
    }

    fn bits(&self) -> usize {
        // `new` refuses an empty modulus, and stripping left a non-zero first byte.
        self.modulus.len() * 8 - self.modulus[0].leading_zeros() as usize
    }

    fn of_certificate(cert: &Certificate) -> Option<Self> {
        let x = cert.x509();
        let spki = x.public_key();
        if spki.algorithm.algorithm.to_id_string() != "1.2.840.113549.1.1.1" {
            return None;
        }
        der::rsa_public_key(&spki.subject_public_key.data)
    }
}

/// Just enough DER to read the RSA keys the PKI core refuses to sign with. Every read is
/// bounds-checked; anything unexpected is `None`.
mod der {
    use super::RsaPublic;

    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const OCTET_STRING: u8 = 0x04;
    const OID: u8 = 0x06;
    /// 1.2.840.113549.1.1.1, rsaEncryption.
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

    /// The contents of the element at the start of `input` if its tag is `tag`, and the rest.
    fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&t, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        if t != tag || rest.len() < len {
            return None;
        }
        Some((&rest[..len], &rest[len..]))
    }

    /// PKCS#1 RSAPrivateKey: SEQUENCE { version, modulus, publicExponent, ... }.
    pub(super) fn rsa_private_key(der: &[u8]) -> Option<RsaPublic> {
        let (seq, _) = element(der, SEQUENCE)?;
        let (_version, rest) = element(seq, INTEGER)?;
        let (n, rest) = element(rest, INTEGER)?;
        let (e, _) = element(rest, INTEGER)?;
        RsaPublic::new(n, e)
    }

    /// The PKCS#1 key inside a PKCS#8 PrivateKeyInfo, if its algorithm is rsaEncryption.
    pub(super) fn pkcs8_rsa(der: &[u8]) -> Option<&[u8]> {
        let (seq, _) = element(der, SEQUENCE)?;
        let (_version, rest) = element(seq, INTEGER)?;
        let (alg, rest) = element(rest, SEQUENCE)?;
        let (oid, _) = element(alg, OID)?;
        if oid != RSA_ENCRYPTION {
            return None;
        }
        let (key, _) = element(rest, OCTET_STRING)?;
        Some(key)
    }

    /// PKCS#1 RSAPublicKey: SEQUENCE { modulus, publicExponent }.
    pub(super) fn rsa_public_key(der: &[u8]) -> Option<RsaPublic> {
        let (seq, _) = element(der, SEQUENCE)?;
        let (n, rest) = element(seq, INTEGER)?;
        let (e, _) = element(rest, INTEGER)?;
        RsaPublic::new(n, e)
    }
}

/// Check 3.
fn key_match(signing: &Certificate, key: &KeyMaterial, names: &LayoutFiles) -> Finding {
    let matches = match key {
        KeyMaterial::Usable(k) => signing.matches_key(k),
        KeyMaterial::OtherRsa(public) => {
            RsaPublic::of_certificate(signing).is_some_and(|c| &c == public)
        }
    };
    if matches {
        Finding::pass(
            CheckName::KeyMatch,
            format!("{} is the key of {}", names.key, names.signing),
        )
    } else {
        Finding::fail(
            CheckName::KeyMatch,
            format!(
                "{} is not the key of {} (\"{}\"): istiod refuses the bundle",
                names.key,
                names.signing,
                signing.subject()
            ),
        )
    }
}

/// Check 4. `listed` is the chain as its file gives it.
fn chain_order(
    listed: &[Certificate],
    list_file: &str,
    signing: &Certificate,
    roots: &[Certificate],
    roots_file: &str,
) -> Finding {
    let fail = |detail: String| Finding::fail(CheckName::ChainOrder, detail);
    let (Some(first), Some(top)) = (listed.first(), listed.last()) else {
        return fail(format!("{list_file} holds no certificate"));
    };
    if first != signing {
        return fail(format!(
            "{list_file} starts with \"{}\", not with the signing certificate \"{}\"",
            first.subject(),
            signing.subject()
        ));
    }
    for pair in listed.windows(2) {
        if let Err(e) = pair[0].check_signed_by(&pair[1]) {
            return fail(format!("out of order or incomplete: {e}"));
        }
    }
    let head = format!(
        "{list_file}: {}, the signing certificate first, each signed by the next",
        counted(listed.len(), "certificate")
    );
    if roots.contains(top) {
        return Finding::pass(
            CheckName::ChainOrder,
            format!("{head}, ending at root \"{}\"", top.subject()),
        );
    }
    if top.is_self_issued() {
        return fail(format!(
            "{list_file} ends at \"{}\", a root that is not in {roots_file}",
            top.subject()
        ));
    }
    match roots.iter().find(|r| top.check_signed_by(r).is_ok()) {
        Some(root) => Finding::pass(
            CheckName::ChainOrder,
            format!(
                "{head}, leading to root \"{}\" of {roots_file}",
                root.subject()
            ),
        ),
        None => fail(format!(
            "{list_file} ends at \"{}\" (issued by \"{}\"), which no root of {roots_file} signed",
            top.subject(),
            top.issuer()
        )),
    }
}

/// The path the signatures alone make from `start` towards a root, ignoring validity and
/// constraints: what the later checks look at when verification failed.
fn signature_path(
    start: &Certificate,
    intermediates: &[Certificate],
    roots: &[Certificate],
) -> Vec<Certificate> {
    // As long as the path verify_path tries; also bounds the work on hostile input.
    const MAX_DEPTH: usize = 8;
    let mut path = vec![start.clone()];
    while path.len() <= MAX_DEPTH {
        let child = &path[path.len() - 1];
        if roots.contains(child) {
            break;
        }
        let issuer = roots
            .iter()
            .chain(intermediates)
            .find(|c| !path.contains(c) && child.check_signed_by(c).is_ok());
        match issuer {
            Some(c) => path.push(c.clone()),
            None => break,
        }
    }
    path
}

/// Check 6.
fn validity(certs: &[Certificate], now: OffsetDateTime) -> Finding {
    let bad: Vec<String> = certs
        .iter()
        .filter(|c| !c.is_valid_at(now))
        .map(|c| {
            if now < c.not_before() {
                format!(
                    "{} (\"{}\") is not valid before {}",
                    c.origin(),
                    c.subject(),
                    show_time(c.not_before())
                )
            } else {
                format!(
                    "{} (\"{}\") expired at {}",
                    c.origin(),
                    c.subject(),
                    show_time(c.not_after())
                )
            }
        })
        .collect();
    if !bad.is_empty() {
        return Finding::fail(CheckName::Validity, bad.join("; "));
    }
    let first = certs.iter().min_by_key(|c| c.not_after());
    Finding::pass(
        CheckName::Validity,
        match first {
            Some(c) => format!(
                "{} valid at {}; the first to expire is {} at {}",
                counted(certs.len(), "certificate"),
                show_time(now),
                c.origin(),
                show_time(c.not_after())
            ),
            None => "no certificate".to_owned(),
        },
    )
}

/// Check 7, for the signing certificate or for the roots (the one that ends first decides).
fn days_left(
    name: CheckName,
    certs: &[&Certificate],
    o: &CheckOptions,
    now: OffsetDateTime,
) -> Finding {
    let Some(c) = certs.iter().min_by_key(|c| c.not_after()) else {
        return Finding::fail(name, "no certificate");
    };
    let left = c.not_after() - now;
    let what = format!("{} (\"{}\")", c.origin(), c.subject());
    let until = show_time(c.not_after());
    if left < Duration::ZERO {
        return Finding::fail(name, format!("{what} expired at {until}"));
    }
    let days = left.whole_days();
    if left < Duration::days(i64::from(o.fail_days)) {
        Finding::fail(
            name,
            format!(
                "{what} has {days} days left (until {until}), fewer than the {} required",
                o.fail_days
            ),
        )
    } else if left < Duration::days(i64::from(o.warn_days)) {
        Finding::new(
            name,
            Level::Warn,
            format!(
                "{what} has {days} days left (until {until}), fewer than {}: rotate it soon",
                o.warn_days
            ),
        )
    } else {
        Finding::pass(name, format!("{what} has {days} days left (until {until})"))
    }
}

/// Check 8.
fn outlives_root(path: &[Certificate], root: &Certificate) -> Finding {
    let over: Vec<String> = path
        .iter()
        .filter(|c| *c != root && c.not_after() > root.not_after())
        .map(|c| {
            format!(
                "{} is valid until {}, after its root \"{}\" expires at {}",
                c.origin(),
                show_time(c.not_after()),
                root.subject(),
                show_time(root.not_after())
            )
        })
        .collect();
    if over.is_empty() {
        Finding::pass(
            CheckName::OutlivesRoot,
            format!(
                "every certificate below root \"{}\" ends by {}",
                root.subject(),
                show_time(root.not_after())
            ),
        )
    } else {
        Finding::fail(
            CheckName::OutlivesRoot,
            format!(
                "{}: its chain stops verifying when the root expires",
                over.join("; ")
            ),
        )
    }
}

/// Check 9: what a Go verifier (istiod at load, and every workload checking a peer) demands
/// of the CA that signs workload certificates, and of the path above it.
fn fit_for_signing(signing: &Certificate, path: &[Certificate], now: OffsetDateTime) -> Finding {
    let mut problems = Vec::new();
    let info = describe_certificate(signing, 0, now);
    if !signing.is_ca() {
        problems.push(format!(
            "{} is not a CA (basicConstraints lacks CA:TRUE)",
            signing.origin()
        ));
    } else if !signing.can_sign_certificates() {
        problems.push(format!(
            "{}'s keyUsage ({}) lacks keyCertSign",
            signing.origin(),
            info.key_usage.join(", ")
        ));
    }
    for c in path {
        let restricted = c
            .x509()
            .extended_key_usage()
            .ok()
            .flatten()
            .is_some_and(|eku| !eku.value.server_auth && !eku.value.any);
        if restricted {
            problems.push(format!(
                "{} restricts extendedKeyUsage to {} without serverAuth, which Go verifiers \
                 (istiod) reject",
                c.origin(),
                describe_certificate(c, 0, now)
                    .extended_key_usage
                    .join(", ")
            ));
        }
    }
    // A workload certificate adds one level below the signing certificate: every CA above it
    // must allow the CAs between it and that leaf.
    for (i, issuer) in path.iter().enumerate().skip(1) {
        let Some(limit) = issuer.path_len() else {
            continue;
        };
        let between = path[..i].iter().filter(|c| !c.is_self_issued()).count();
        if between > limit as usize {
            problems.push(format!(
                "{} (\"{}\") has pathlen:{limit} but {between} CA(s) would sit between it and \
                 a workload certificate",
                issuer.origin(),
                issuer.subject()
            ));
        }
    }
    if !problems.is_empty() {
        return Finding::fail(CheckName::FitForSigning, problems.join("; "));
    }
    let pathlen = signing
        .path_len()
        .map_or_else(|| "no pathlen".to_owned(), |n| format!("pathlen:{n}"));
    let ku = if info.key_usage.is_empty() {
        "no keyUsage".to_owned()
    } else {
        "keyUsage includes keyCertSign".to_owned()
    };
    let eku = if info.extended_key_usage.is_empty() {
        "no extendedKeyUsage"
    } else {
        "extendedKeyUsage allows serverAuth"
    };
    Finding::pass(
        CheckName::FitForSigning,
        format!("CA:TRUE, {pathlen}, {ku}, {eku}"),
    )
}

/// Check 10. A root's own signature is never checked, so roots (and self-signed certificates)
/// are left out.
fn signature_digest(certs: &[Certificate], roots: &[Certificate]) -> Finding {
    let below: Vec<&Certificate> = certs
        .iter()
        .filter(|c| !roots.contains(c) && !c.is_self_issued())
        .collect();
    let weak: Vec<String> = below
        .iter()
        .filter(|c| c.has_weak_signature())
        .map(|c| format!("{} is signed with {}", c.origin(), c.signature_algorithm()))
        .collect();
    if !weak.is_empty() {
        return Finding::fail(
            CheckName::SignatureDigest,
            format!("{}: Go verifiers (istiod) reject it", weak.join("; ")),
        );
    }
    let mut algorithms: Vec<&str> = below.iter().map(|c| c.signature_algorithm()).collect();
    algorithms.sort_unstable();
    algorithms.dedup();
    Finding::pass(
        CheckName::SignatureDigest,
        if below.is_empty() {
            "no certificate below the root".to_owned()
        } else {
            format!(
                "{} below the root, signed with {}",
                counted(below.len(), "certificate"),
                algorithms.join(", ")
            )
        },
    )
}

/// Check 11, on the public key of every certificate.
fn key_strength(certs: &[Certificate], now: OffsetDateTime) -> Finding {
    let mut level = Level::Pass;
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for c in certs {
        let key = describe_certificate(c, 0, now).key;
        let (l, text) = judge_key(&key);
        let line = format!("{}: {text}", c.origin());
        if l == Level::Pass {
            good.push(line);
        } else {
            bad.push(line);
        }
        level = level.max(l);
    }
    let detail = if bad.is_empty() {
        good.join(", ")
    } else {
        bad.join("; ")
    };
    Finding::new(CheckName::KeyStrength, level, detail)
}

fn judge_key(key: &KeyInfo) -> (Level, String) {
    match (key.algorithm.as_str(), key.curve.as_deref()) {
        ("RSA", _) if key.bits < 2048 => (
            Level::Fail,
            format!("RSA-{} is too weak (at least 2048 bits)", key.bits),
        ),
        ("RSA", _) => (Level::Pass, format!("RSA-{}", key.bits)),
        ("EC", Some(curve @ ("P-256" | "P-384" | "P-521"))) => {
            (Level::Pass, format!("ECDSA {curve}"))
        }
        ("EC", curve) => (
            Level::Fail,
            format!(
                "EC curve {} is not one Go verifiers support (P-256, P-384, P-521)",
                curve.unwrap_or("unnamed")
            ),
        ),
        ("Ed25519", _) => (Level::Pass, "Ed25519".to_owned()),
        (other, _) => (Level::Warn, format!("unrecognised key algorithm {other}")),
    }
}

/// `1 bundle`, `2 bundles`.
fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn short_fp(c: &Certificate) -> String {
    hex_colons(&c.sha256_fingerprint()[..8])
}

/// Check 12: workloads of one bundle are trusted by another only if the root their signing
/// certificate chains to is in the other's root bundle, both ways.
fn shared_root(bundles: &[Inspected]) -> Finding {
    let name = CheckName::SharedRoot;
    let mut compared: Vec<(&str, &Trust, &Certificate)> = Vec::new();
    let mut left_out: Vec<&str> = Vec::new();
    for b in bundles {
        match &b.trust {
            Some(
                t @ Trust {
                    anchor: Some(a), ..
                },
            ) => compared.push((b.report.dir.as_str(), t, a)),
            _ => left_out.push(b.report.dir.as_str()),
        }
    }
    // The root most bundles chain to (the first one given wins a tie).
    let mut majority: Option<(&Certificate, usize)> = None;
    for (_, _, a) in &compared {
        let n = compared.iter().filter(|(_, _, b)| b == a).count();
        if majority.is_none_or(|(_, m)| n > m) {
            majority = Some((a, n));
        }
    }
    let Some((majority, _)) = majority else {
        return Finding::fail(
            name,
            format!(
                "nothing to compare: no bundle has a root its signing certificate chains to ({})",
                left_out.join(", ")
            ),
        );
    };
    // A bundle is the odd one out when it chains to another root than most and either a peer
    // does not trust that root or it does not trust the majority's. Every broken pair has such
    // a bundle on one side (each bundle trusts its own root), so naming them names every break.
    let mut odd = Vec::new();
    let mut why = Vec::new();
    for (dir, trust, anchor) in &compared {
        if *anchor == majority {
            continue;
        }
        let untrusting: Vec<&str> = compared
            .iter()
            .filter(|(d, t, _)| d != dir && !t.roots.contains(anchor))
            .map(|(d, _, _)| *d)
            .collect();
        let lacks_majority = !trust.roots.contains(majority);
        if untrusting.is_empty() && !lacks_majority {
            continue;
        }
        odd.push(*dir);
        let mut parts = Vec::new();
        if !untrusting.is_empty() {
            parts.push(format!(
                "{dir} chains to root \"{}\" (SHA-256 {}), which {} {} not trust",
                anchor.subject(),
                short_fp(anchor),
                untrusting.join(", "),
                if untrusting.len() == 1 { "does" } else { "do" }
            ));
        }
        if lacks_majority && parts.is_empty() {
            parts.push(format!("{dir}'s root bundle lacks the others' root"));
        } else if lacks_majority {
            parts.push("its root bundle lacks theirs".to_owned());
        }
        why.push(parts.join(", and "));
    }
    if !odd.is_empty() {
        return Finding::fail(
            name,
            format!(
                "{} {} from the others' root \"{}\" (SHA-256 {}): {}",
                odd.join(", "),
                if odd.len() == 1 { "differs" } else { "differ" },
                majority.subject(),
                short_fp(majority),
                why.join("; ")
            ),
        );
    }
    let mut anchors: Vec<&Certificate> = Vec::new();
    for (_, _, a) in &compared {
        if !anchors.contains(a) {
            anchors.push(a);
        }
    }
    let shown: Vec<String> = anchors
        .iter()
        .map(|a| format!("\"{}\" (SHA-256 {})", a.subject(), short_fp(a)))
        .collect();
    let detail = if anchors.len() == 1 {
        let verb = if compared.len() == 1 {
            "chains"
        } else {
            "chain"
        };
        format!(
            "{} {verb} to root {}",
            counted(compared.len(), "bundle"),
            shown[0]
        )
    } else {
        format!(
            "{} chain to roots that every bundle trusts: {}",
            counted(compared.len(), "bundle"),
            shown.join(", ")
        )
    };
    if left_out.is_empty() {
        Finding::pass(name, detail)
    } else {
        Finding::new(
            name,
            Level::Warn,
            format!(
                "{detail}; not compared: {} (no root its signing certificate chains to)",
                left_out.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use meshca_pki::{CaProfile, CaSigner, KeyType, Subject};
    use time::macros::datetime;

    use super::*;

    const T0: OffsetDateTime = datetime!(2030-01-01 0:00 UTC);

    fn day(n: i64) -> OffsetDateTime {
        T0 + Duration::days(n)
    }

    fn profile(cn: &str, from: i64, to: i64, path_len: Option<u8>) -> CaProfile {
        CaProfile {
            subject: Subject {
                organization: Some("Test".to_owned()),
                common_name: Some(cn.to_owned()),
                locality: None,
            },
            not_before: day(from),
            not_after: day(to),
            path_len,
            dns_names: Vec::new(),
        }
    }

    fn root(key_type: KeyType, from: i64, to: i64, path_len: Option<u8>) -> CaSigner {
        let key = PrivateKey::generate(key_type).unwrap();
        let cert = profile("Root CA", from, to, path_len)
            .self_signed(&key, ROOT_CERT)
            .unwrap();
        CaSigner::new(cert, key, "root-key.pem").unwrap()
    }

    fn intermediate(
        root: &CaSigner,
        key_type: KeyType,
        from: i64,
        to: i64,
        path_len: Option<u8>,
    ) -> CaSigner {
        let key = PrivateKey::generate(key_type).unwrap();
        let cert = root
            .issue_ca(
                &profile("Intermediate CA", from, to, path_len),
                &key,
                CA_CERT,
            )
            .unwrap();
        CaSigner::new(cert, key, CA_KEY).unwrap()
    }

    fn istio_files(ca: &CaSigner, roots: &[&Certificate]) -> BundleFiles {
        let roots_pem: String = roots.iter().map(|r| r.pem()).collect();
        BundleFiles::from([
            (CA_CERT.to_owned(), ca.cert().pem().into_bytes()),
            (CA_KEY.to_owned(), ca.key().to_pkcs8_pem().into_bytes()),
            (
                CERT_CHAIN.to_owned(),
                (ca.cert().pem() + &roots[0].pem()).into_bytes(),
            ),
            (ROOT_CERT.to_owned(), roots_pem.into_bytes()),
        ])
    }

    /// A root (10 years from T0) and an intermediate (2 years), both ECDSA P-256.
    fn healthy() -> (CaSigner, CaSigner) {
        let r = root(KeyType::EcdsaP256, 0, 3650, None);
        let i = intermediate(&r, KeyType::EcdsaP256, 0, 730, None);
        (r, i)
    }

    fn run(files: &BundleFiles, now: OffsetDateTime) -> BundleReport {
        check_bundle("c1", files, &CheckOptions::default(), now)
    }

    /// The findings that did not pass.
    fn not_passing(r: &BundleReport) -> Vec<(CheckName, Level)> {
        r.findings
            .iter()
            .filter(|f| f.level != Level::Pass)
            .map(|f| (f.name, f.level))
            .collect()
    }

    fn failing(names: &[CheckName]) -> Vec<(CheckName, Level)> {
        names.iter().map(|n| (*n, Level::Fail)).collect()
    }

    fn detail(r: &BundleReport, name: CheckName) -> &str {
        match r.finding(name) {
            Some(f) => &f.detail,
            None => panic!("no finding {name} in {:#?}", r.findings),
        }
    }

    const ALL_BUNDLE_CHECKS: [CheckName; 12] = [
        CheckName::Layout,
        CheckName::Parse,
        CheckName::KeyMatch,
        CheckName::ChainOrder,
        CheckName::VerifiesToRoot,
        CheckName::Validity,
        CheckName::SigningDaysLeft,
        CheckName::RootDaysLeft,
        CheckName::OutlivesRoot,
        CheckName::FitForSigning,
        CheckName::SignatureDigest,
        CheckName::KeyStrength,
    ];

    #[test]
    fn a_healthy_bundle_passes_every_check_in_both_layouts() {
        let (r, i) = healthy();
        let files = istio_files(&i, &[r.cert()]);
        let report = run(&files, day(1));
        let names: Vec<CheckName> = report.findings.iter().map(|f| f.name).collect();
        assert_eq!(names, ALL_BUNDLE_CHECKS);
        assert_eq!(not_passing(&report), [], "{:#?}", report.findings);
        assert_eq!(
            detail(&report, CheckName::Layout),
            "Istio layout: ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem"
        );
        assert!(detail(&report, CheckName::Parse).contains("ca-key.pem (ECDSA P-256 key)"));
        assert!(
            detail(&report, CheckName::SigningDaysLeft).contains("has 729 days left"),
            "{}",
            detail(&report, CheckName::SigningDaysLeft)
        );

        // The same material as cert-manager writes it: tls.crt, tls.key, ca.crt.
        let tls = BundleFiles::from([
            (TLS_CRT.to_owned(), i.cert().pem().into_bytes()),
            (TLS_KEY.to_owned(), i.key().to_pkcs8_pem().into_bytes()),
            (CA_CRT.to_owned(), r.cert().pem().into_bytes()),
        ]);
        let report = run(&tls, day(1));
        assert_eq!(not_passing(&report), [], "{:#?}", report.findings);
        assert_eq!(report.findings.len(), 12);
        assert!(detail(&report, CheckName::Layout).starts_with("kubernetes.io/tls layout"));
    }

    #[test]
    fn rsa_2048_and_p384_keys_are_strong_enough() {
        let r = root(KeyType::Rsa2048, 0, 3650, None);
        let i = intermediate(&r, KeyType::EcdsaP384, 0, 730, None);
        let report = run(&istio_files(&i, &[r.cert()]), day(1));
        assert_eq!(not_passing(&report), [], "{:#?}", report.findings);
        assert_eq!(
            detail(&report, CheckName::KeyStrength),
            "ca-cert.pem: ECDSA P-384, root-cert.pem: RSA-2048"
        );
    }

    #[test]
    fn no_bundle_and_an_unreadable_folder_are_failing_findings() {
        let report = run(&BundleFiles::new(), day(1));
        assert_eq!(not_passing(&report), failing(&[CheckName::Layout]));
        assert_eq!(report.findings.len(), 1);
        assert!(detail(&report, CheckName::Layout).starts_with("no cacerts bundle here"));

        let sources = [BundleSource {
            dir: "nope".to_owned(),
            files: Err("nope: cannot read folder: No such file or directory".to_owned()),
        }];
        let report = check(&sources, &CheckOptions::default(), day(1));
        assert!(!report.passed());
        assert_eq!(
            not_passing(&report.bundles[0]),
            failing(&[CheckName::Folder])
        );
        assert!(report.cross.is_empty());
    }

    #[test]
    fn mixed_and_incomplete_layouts_fail_the_layout_check_only() {
        let (r, i) = healthy();
        let mut files = istio_files(&i, &[r.cert()]);
        files.insert(TLS_KEY.to_owned(), i.key().to_pkcs8_pem().into_bytes());
        let report = run(&files, day(1));
        assert_eq!(not_passing(&report), failing(&[CheckName::Layout]));
        assert!(
            detail(&report, CheckName::Layout)
                .contains("tls.key of the kubernetes.io/tls layout is mixed in"),
            "{}",
            detail(&report, CheckName::Layout)
        );

        let mut files = istio_files(&i, &[r.cert()]);
        files.remove(CERT_CHAIN);
        let report = run(&files, day(1));
        assert_eq!(not_passing(&report), failing(&[CheckName::Layout]));
        assert!(detail(&report, CheckName::Layout).contains("missing cert-chain.pem"));
        // The check that needs the missing file is left out; the rest still ran.
        assert!(report.finding(CheckName::ChainOrder).is_none());
        assert_eq!(report.findings.len(), 11);
    }

    #[test]
    fn a_file_that_does_not_parse_is_named() {
        let (r, i) = healthy();
        let mut files = istio_files(&i, &[r.cert()]);
        files.insert(ROOT_CERT.to_owned(), b"not a certificate".to_vec());
        let report = run(&files, day(1));
        assert!(not_passing(&report).contains(&(CheckName::Parse, Level::Fail)));
        assert!(
            detail(&report, CheckName::Parse).starts_with("root-cert.pem: "),
            "{}",
            detail(&report, CheckName::Parse)
        );
        assert_eq!(
            report.finding(CheckName::KeyMatch).unwrap().level,
            Level::Pass
        );

        let mut files = istio_files(&i, &[r.cert()]);
        files.insert(CA_KEY.to_owned(), r.cert().pem().into_bytes());
        let report = run(&files, day(1));
        assert_eq!(not_passing(&report), failing(&[CheckName::Parse]));
        assert!(detail(&report, CheckName::Parse).starts_with("ca-key.pem: "));
        assert!(report.finding(CheckName::KeyMatch).is_none());
    }

    #[test]
    fn a_key_of_another_certificate_fails_the_key_check_only() {
        let (r, i) = healthy();
        let other = intermediate(&r, KeyType::EcdsaP256, 0, 730, None);
        let mut files = istio_files(&i, &[r.cert()]);
        files.insert(CA_KEY.to_owned(), other.key().to_pkcs8_pem().into_bytes());
        let report = run(&files, day(1));
        assert_eq!(not_passing(&report), failing(&[CheckName::KeyMatch]));
        assert!(detail(&report, CheckName::KeyMatch).contains("is not the key of ca-cert.pem"));
    }

    #[test]
    fn chain_order_and_completeness() {
        let (r, i) = healthy();
        // Root first: the certificates are all there, so istiod still verifies, but the
        // order is wrong.
        let mut files = istio_files(&i, &[r.cert()]);
        files.insert(
            CERT_CHAIN.to_owned(),
            (r.cert().pem() + &i.cert().pem()).into_bytes(),
        );
        let report = run(&files, day(1));
        assert_eq!(not_passing(&report), failing(&[CheckName::ChainOrder]));
        assert!(
            detail(&report, CheckName::ChainOrder).contains("starts with \"O=Test, CN=Root CA\"")
        );

        // Another CA's certificate in the chain file.
        let other = intermediate(&r, KeyType::EcdsaP256, 0, 730, None);
        files.insert(
            CERT_CHAIN.to_owned(),
            (other.cert().pem() + &r.cert().pem()).into_bytes(),
        );
        let report = run(&files, day(1));
        assert_eq!(not_passing(&report), failing(&[CheckName::ChainOrder]));

        // Without the root, the chain still leads to a root of root-cert.pem: fine.
        files.insert(CERT_CHAIN.to_owned(), i.cert().pem().into_bytes());
        let report = run(&files, day(1));
        assert_eq!(not_passing(&report), []);
        assert!(detail(&report, CheckName::ChainOrder).contains("leading to root"));

        // A chain that leads nowhere in root-cert.pem: the wrong root bundle.
        let stranger = root(KeyType::EcdsaP256, 0, 3650, None);
        files.insert(ROOT_CERT.to_owned(), stranger.cert().pem().into_bytes());
        let report = run(&files, day(1));
        assert_eq!(
            not_passing(&report),
            failing(&[CheckName::ChainOrder, CheckName::VerifiesToRoot])
        );
        assert!(report.finding(CheckName::OutlivesRoot).is_none());
    }

    #[test]
    fn expired_and_not_yet_valid_certificates_fail_validity() {
        let (r, i) = healthy();
        let files = istio_files(&i, &[r.cert()]);
        let report = run(&files, day(731));
        assert_eq!(
            not_passing(&report),
            failing(&[
                CheckName::VerifiesToRoot,
                CheckName::Validity,
                CheckName::SigningDaysLeft
            ])
        );
        assert!(detail(&report, CheckName::Validity).starts_with(
            "ca-cert.pem (\"O=Test, CN=Intermediate CA\") expired at 2032-01-01T00:00:00Z"
        ));

        let late = intermediate(&r, KeyType::EcdsaP256, 10, 730, None);
        let report = run(&istio_files(&late, &[r.cert()]), day(1));
        assert_eq!(
            not_passing(&report),
            failing(&[CheckName::VerifiesToRoot, CheckName::Validity])
        );
        assert!(detail(&report, CheckName::Validity).contains("is not valid before"));
    }

    #[test]
    fn days_left_warn_and_fail_against_the_thresholds() {
        let r = root(KeyType::EcdsaP256, 0, 100, None);
        let i = intermediate(&r, KeyType::EcdsaP256, 0, 100, None);
        let files = istio_files(&i, &[r.cert()]);
        let report = run(&files, day(50));
        assert_eq!(
            not_passing(&report),
            [
                (CheckName::SigningDaysLeft, Level::Warn),
                (CheckName::RootDaysLeft, Level::Warn)
            ]
        );
        assert!(report.passed(), "warnings do not fail the check");
        assert!(detail(&report, CheckName::RootDaysLeft).contains("has 50 days left"));

        let quiet = CheckOptions {
            warn_days: 30,
            fail_days: 0,
        };
        assert_eq!(
            not_passing(&check_bundle("c1", &files, &quiet, day(50))),
            []
        );

        let strict = CheckOptions {
            warn_days: 90,
            fail_days: 60,
        };
        let report = check_bundle("c1", &files, &strict, day(50));
        assert_eq!(
            not_passing(&report),
            failing(&[CheckName::SigningDaysLeft, CheckName::RootDaysLeft])
        );
        assert!(detail(&report, CheckName::SigningDaysLeft).contains("fewer than the 60 required"));
    }

    #[test]
    fn an_intermediate_outliving_its_root_fails() {
        let r = root(KeyType::EcdsaP256, 0, 365, None);
        let i = intermediate(&r, KeyType::EcdsaP256, 0, 730, None);
        let report = run(&istio_files(&i, &[r.cert()]), day(1));
        assert_eq!(not_passing(&report), failing(&[CheckName::OutlivesRoot]));
        assert!(
            detail(&report, CheckName::OutlivesRoot)
                .starts_with("ca-cert.pem is valid until 2032-01-01")
        );
    }

    #[test]
    fn pathlen_0_on_the_signing_certificate_is_fine_but_not_on_the_root() {
        let r = root(KeyType::EcdsaP256, 0, 3650, None);
        let i = intermediate(&r, KeyType::EcdsaP256, 0, 730, Some(0));
        let report = run(&istio_files(&i, &[r.cert()]), day(1));
        assert_eq!(not_passing(&report), []);
        assert!(detail(&report, CheckName::FitForSigning).contains("pathlen:0"));

        // The root allows no CA below it: the intermediate verifies, its leaves would not.
        let r = root(KeyType::EcdsaP256, 0, 3650, Some(0));
        let i = intermediate(&r, KeyType::EcdsaP256, 0, 730, None);
        let report = run(&istio_files(&i, &[r.cert()]), day(1));
        assert_eq!(not_passing(&report), failing(&[CheckName::FitForSigning]));
        assert!(
            detail(&report, CheckName::FitForSigning).contains("has pathlen:0 but 1 CA(s)"),
            "{}",
            detail(&report, CheckName::FitForSigning)
        );
    }

    #[test]
    fn report_counts_summary_and_json_shape() {
        let (r, i) = healthy();
        let sources = [
            BundleSource {
                dir: "c1".to_owned(),
                files: Ok(istio_files(&i, &[r.cert()])),
            },
            BundleSource {
                dir: "nope".to_owned(),
                files: Err("nope: cannot read folder".to_owned()),
            },
        ];
        let report = check(&sources, &CheckOptions::default(), day(1));
        assert!(!report.passed());
        assert_eq!(
            report.summary(),
            "14 checks: 12 passed, 1 warning, 1 failed"
        );
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["passed"], false);
        assert_eq!(v["bundles"][0]["dir"], "c1");
        assert_eq!(
            v["bundles"][0]["findings"][0]["name"],
            "files are complete and in one layout"
        );
        assert_eq!(v["bundles"][0]["findings"][0]["level"], "pass");
        assert_eq!(v["bundles"][1]["findings"][0]["level"], "fail");
        assert_eq!(v["cross"][0]["name"], "bundles share one root");
        assert_eq!(v["cross"][0]["level"], "warn");

        let one = check(&sources[..1], &CheckOptions::default(), day(1));
        assert_eq!(one.summary(), "all 12 checks passed");
        assert!(one.cross.is_empty());
    }

    fn source(dir: &str, files: BundleFiles) -> BundleSource {
        BundleSource {
            dir: dir.to_owned(),
            files: Ok(files),
        }
    }

    #[test]
    fn bundles_must_share_a_root_and_the_odd_one_is_named() {
        let (a, a1) = healthy();
        let a2 = intermediate(&a, KeyType::EcdsaP256, 0, 730, None);
        let (b, b1) = healthy();
        let o = CheckOptions::default();
        let same = [
            source("c1", istio_files(&a1, &[a.cert()])),
            source("c2", istio_files(&a2, &[a.cert()])),
        ];
        let report = check(&same, &o, day(1));
        assert!(report.passed());
        assert_eq!(report.cross[0].level, Level::Pass);
        assert!(
            report.cross[0]
                .detail
                .starts_with("2 bundles chain to root \"O=Test, CN=Root CA\"")
        );

        let odd = [
            source("c1", istio_files(&a1, &[a.cert()])),
            source("other/c3", istio_files(&b1, &[b.cert()])),
            source("c2", istio_files(&a2, &[a.cert()])),
        ];
        let report = check(&odd, &o, day(1));
        assert!(report.bundles.iter().all(BundleReport::passed));
        assert_eq!(report.cross[0].level, Level::Fail);
        assert!(
            report.cross[0]
                .detail
                .starts_with("other/c3 differs from the others' root"),
            "{}",
            report.cross[0].detail
        );

        // Mid-rotation: c1 already signs under b, both c1 and c2 trust both roots: fine. A
        // cluster that trusts only a is the one its peers cannot reach.
        let b2 = intermediate(&b, KeyType::EcdsaP256, 0, 730, None);
        let rotating = [
            source("c1", istio_files(&b2, &[b.cert(), a.cert()])),
            source("c2", istio_files(&a2, &[a.cert(), b.cert()])),
        ];
        assert_eq!(check(&rotating, &o, day(1)).cross[0].level, Level::Pass);
        let lagging = [
            source("c1", istio_files(&b2, &[b.cert(), a.cert()])),
            source("c2", istio_files(&a2, &[a.cert(), b.cert()])),
            source("c3", istio_files(&a1, &[a.cert()])),
        ];
        let cross = &check(&lagging, &o, day(1)).cross[0];
        assert_eq!(cross.level, Level::Fail);
        assert!(
            cross.detail.starts_with("c1 differs from the others' root")
                && cross.detail.contains("which c3 does not trust"),
            "{}",
            cross.detail
        );

        // A cluster that already signs under b but dropped a: its peers trust b, it no longer
        // trusts theirs.
        let dropped = [
            source("c1", istio_files(&a1, &[a.cert(), b.cert()])),
            source("c2", istio_files(&a2, &[a.cert(), b.cert()])),
            source("c3", istio_files(&b2, &[b.cert()])),
        ];
        let cross = &check(&dropped, &o, day(1)).cross[0];
        assert_eq!(cross.level, Level::Fail);
        assert!(
            cross
                .detail
                .ends_with("c3's root bundle lacks the others' root"),
            "{}",
            cross.detail
        );
    }

    /// A scratch folder where the `openssl` CLI makes the material meshca cannot make on
    /// purpose: SHA-1 signatures, restricted extended key usage, missing keyCertSign, RSA-1024.
    struct Openssl {
        dir: PathBuf,
    }

    const GOOD_CA_EXT: &str = "basicConstraints = critical, CA:TRUE\n\
        keyUsage = critical, keyCertSign, cRLSign, digitalSignature\n\
        subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n";
    const YEAR: &[&str] = &["-days", "365"];
    const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    const RSA2048: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
    const RSA1024: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"];

    impl Openssl {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "meshca-check-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let o = Openssl { dir };
            o.write(
                "ca.cnf",
                "[ca]\ndefault_ca = test_ca\n[test_ca]\ndatabase = index.txt\n\
                 new_certs_dir = .\nserial = serial\ndefault_md = sha256\npolicy = any\n\
                 unique_subject = no\npreserve = yes\ncopy_extensions = none\n\
                 [any]\norganizationName = optional\ncommonName = supplied\n",
            );
            o.write("index.txt", "");
            o.write("serial", "1000\n");
            o
        }

        fn path(&self) -> &Path {
            &self.dir
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.dir.join(name), text).unwrap();
        }

        fn read(&self, name: &str) -> Vec<u8> {
            std::fs::read(self.dir.join(name)).unwrap()
        }

        fn run(&self, args: &[&str]) {
            let out = Command::new("openssl")
                .current_dir(self.path())
                .args(args)
                .output()
                .expect("the openssl CLI runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        fn key(&self, name: &str, algorithm: &[&str]) {
            let file = format!("{name}-key.pem");
            let mut args = vec!["genpkey", "-out", &file];
            args.extend_from_slice(algorithm);
            self.run(&args);
        }

        /// `root-cert.pem` and `root-key.pem`.
        fn root(&self, algorithm: &[&str]) {
            self.key("root", algorithm);
            self.run(&[
                "req",
                "-x509",
                "-new",
                "-key",
                "root-key.pem",
                "-out",
                "root-cert.pem",
                "-subj",
                "/O=Test/CN=Root CA",
                "-days",
                "3650",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }

        /// `{name}-cert.pem` and `{name}-key.pem`, signed by `{issuer}-cert.pem` with `ext` as
        /// its extensions and `ca_args` passed to `openssl ca`.
        fn ca(&self, name: &str, issuer: &str, algorithm: &[&str], ext: &str, ca_args: &[&str]) {
            self.key(name, algorithm);
            let (key, csr, cert, ext_file) = (
                format!("{name}-key.pem"),
                format!("{name}.csr"),
                format!("{name}-cert.pem"),
                format!("{name}.ext"),
            );
            let subject = format!("/O=Test/CN={name}");
            self.run(&["req", "-new", "-key", &key, "-subj", &subject, "-out", &csr]);
            self.write(&ext_file, ext);
            let (issuer_cert, issuer_key) =
                (format!("{issuer}-cert.pem"), format!("{issuer}-key.pem"));
            let mut args = vec![
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-notext",
                "-cert",
                &issuer_cert,
                "-keyfile",
                &issuer_key,
                "-in",
                &csr,
                "-out",
                &cert,
                "-extfile",
                &ext_file,
            ];
            args.extend_from_slice(ca_args);
            self.run(&args);
        }

        /// An Istio-layout bundle whose signing certificate is `{signing}-cert.pem`, with
        /// `mids` between it and the root.
        fn bundle(&self, signing: &str, mids: &[&str]) -> BundleFiles {
            let cert = self.read(&format!("{signing}-cert.pem"));
            let mut chain = cert.clone();
            for m in mids {
                chain.extend(self.read(&format!("{m}-cert.pem")));
            }
            chain.extend(self.read("root-cert.pem"));
            BundleFiles::from([
                (CA_CERT.to_owned(), cert),
                (CA_KEY.to_owned(), self.read(&format!("{signing}-key.pem"))),
                (CERT_CHAIN.to_owned(), chain),
                (ROOT_CERT.to_owned(), self.read("root-cert.pem")),
            ])
        }
    }

    impl Drop for Openssl {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn now() -> OffsetDateTime {
        // openssl stamps its certificates with the real clock, so these tests check at it.
        OffsetDateTime::now_utc()
    }

    #[test]
    fn openssl_made_bundle_passes_and_openssl_agrees() {
        let o = Openssl::new();
        o.root(P256);
        o.ca("ca", "root", P256, GOOD_CA_EXT, YEAR);
        let report = run(&o.bundle("ca", &[]), now());
        assert_eq!(not_passing(&report), [], "{:#?}", report.findings);
        o.run(&["verify", "-CAfile", "root-cert.pem", "ca-cert.pem"]);
    }

    #[test]
    fn a_sha1_signed_intermediate_fails_the_digest_check() {
        let o = Openssl::new();
        // An RSA root, so that the SHA-1 signature itself still verifies.
        o.root(RSA2048);
        o.ca(
            "ca",
            "root",
            P256,
            GOOD_CA_EXT,
            &["-days", "365", "-md", "sha1"],
        );
        let report = run(&o.bundle("ca", &[]), now());
        // istiod's own verification refuses SHA-1 too; the order, key and everything else hold.
        assert_eq!(
            not_passing(&report),
            failing(&[CheckName::VerifiesToRoot, CheckName::SignatureDigest]),
            "{:#?}",
            report.findings
        );
        assert_eq!(
            detail(&report, CheckName::SignatureDigest),
            "ca-cert.pem is signed with sha1WithRSAEncryption: Go verifiers (istiod) reject it"
        );
        assert!(detail(&report, CheckName::KeyStrength).contains("root-cert.pem: RSA-2048"));
    }

    #[test]
    fn an_intermediate_without_server_auth_is_refused_as_go_does() {
        let o = Openssl::new();
        o.root(P256);
        let ext = format!("{GOOD_CA_EXT}extendedKeyUsage = clientAuth\n");
        o.ca("ca", "root", P256, &ext, YEAR);
        let report = run(&o.bundle("ca", &[]), now());
        assert_eq!(not_passing(&report), failing(&[CheckName::FitForSigning]));
        assert!(
            detail(&report, CheckName::FitForSigning).contains(
                "ca-cert.pem restricts extendedKeyUsage to TLS Web Client Authentication \
                 without serverAuth, which Go verifiers (istiod) reject"
            ),
            "{}",
            detail(&report, CheckName::FitForSigning)
        );

        // serverAuth among them is what Go asks for.
        let o = Openssl::new();
        o.root(P256);
        let ext = format!("{GOOD_CA_EXT}extendedKeyUsage = serverAuth, clientAuth\n");
        o.ca("ca", "root", P256, &ext, YEAR);
        assert_eq!(not_passing(&run(&o.bundle("ca", &[]), now())), []);
    }

    #[test]
    fn a_ca_without_key_cert_sign_or_ca_flag_cannot_sign_workloads() {
        let o = Openssl::new();
        o.root(P256);
        o.ca(
            "ca",
            "root",
            P256,
            "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, digitalSignature, cRLSign\n",
            YEAR,
        );
        let report = run(&o.bundle("ca", &[]), now());
        assert_eq!(not_passing(&report), failing(&[CheckName::FitForSigning]));
        assert!(detail(&report, CheckName::FitForSigning).contains("lacks keyCertSign"));

        o.ca(
            "leafish",
            "root",
            P256,
            "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n",
            YEAR,
        );
        let report = run(&o.bundle("leafish", &[]), now());
        assert_eq!(not_passing(&report), failing(&[CheckName::FitForSigning]));
        assert!(detail(&report, CheckName::FitForSigning).contains("is not a CA"));
    }

    #[test]
    fn a_non_ca_in_the_middle_fails_verification_only() {
        let o = Openssl::new();
        o.root(P256);
        o.ca(
            "mid",
            "root",
            P256,
            "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, keyCertSign\n",
            YEAR,
        );
        o.ca("ca", "mid", P256, GOOD_CA_EXT, YEAR);
        let report = run(&o.bundle("ca", &["mid"]), now());
        assert_eq!(not_passing(&report), failing(&[CheckName::VerifiesToRoot]));
        assert!(
            detail(&report, CheckName::VerifiesToRoot).contains("CA:TRUE"),
            "{}",
            detail(&report, CheckName::VerifiesToRoot)
        );
    }

    #[test]
    fn rsa_1024_fails_key_strength_but_still_parses_and_matches() {
        let o = Openssl::new();
        o.root(P256);
        o.ca("ca", "root", RSA1024, GOOD_CA_EXT, YEAR);
        let files = o.bundle("ca", &[]);
        let report = run(&files, now());
        assert_eq!(not_passing(&report), failing(&[CheckName::KeyStrength]));
        assert!(detail(&report, CheckName::Parse).contains("ca-key.pem (RSA-1024 key)"));
        assert_eq!(
            detail(&report, CheckName::KeyStrength),
            "ca-cert.pem: RSA-1024 is too weak (at least 2048 bits)"
        );

        // The same key as PKCS#1 (`RSA PRIVATE KEY`) is read too.
        o.run(&[
            "rsa",
            "-in",
            "ca-key.pem",
            "-traditional",
            "-out",
            "pkcs1.pem",
        ]);
        let pkcs1 = o.read("pkcs1.pem");
        assert!(pkcs1.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"));
        let mut files = files;
        files.insert(CA_KEY.to_owned(), pkcs1);
        let report = run(&files, now());
        assert_eq!(not_passing(&report), failing(&[CheckName::KeyStrength]));

        // And a weak key of another certificate is still told apart.
        o.key("stranger", RSA1024);
        files.insert(CA_KEY.to_owned(), o.read("stranger-key.pem"));
        let report = run(&files, now());
        assert_eq!(
            not_passing(&report),
            failing(&[CheckName::KeyMatch, CheckName::KeyStrength])
        );
    }
}
