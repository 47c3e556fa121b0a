//! Check 2: reading a bundle's files into certificates and a key, including RSA keys of sizes
//! the PKI core will not sign with (istiod still loads them, so the check must read them).

use meshca_pki::bundle::Layout;
use meshca_pki::pem::{self, Kind};
use meshca_pki::{BundleFiles, Certificate, PkiError, PrivateKey};

use super::layout::LayoutFiles;
use super::{CheckName, Finding, counted, der};

/// What the files of a bundle hold, as far as they parsed.
pub(super) struct Material {
    /// The first certificate of `ca-cert.pem` / `tls.crt`.
    pub(super) signing: Option<Certificate>,
    /// The further certificates of `ca-cert.pem` / `tls.crt`.
    pub(super) signing_rest: Vec<Certificate>,
    /// `cert-chain.pem` (Istio layout only).
    pub(super) chain_file: Option<Vec<Certificate>>,
    /// `root-cert.pem` / `ca.crt`.
    pub(super) roots: Option<Vec<Certificate>>,
    pub(super) key: Option<KeyMaterial>,
}

impl Material {
    /// Candidates between the signing certificate and a root, as istiod uses them.
    pub(super) fn intermediates(&self) -> Vec<Certificate> {
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
    pub(super) fn unique_certs(&self) -> Vec<Certificate> {
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
pub(super) enum KeyMaterial {
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
pub(super) fn parse(layout: Layout, files: &BundleFiles, out: &mut Vec<Finding>) -> Material {
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

pub(super) fn read_key(bytes: &[u8], origin: &str) -> Result<KeyMaterial, PkiError> {
    match PrivateKey::from_pem(bytes, origin) {
        Ok(k) => Ok(KeyMaterial::Usable(k)),
        Err(e) => other_rsa_key(bytes, origin)
            .map(KeyMaterial::OtherRsa)
            .ok_or(e),
    }
}

/// The public half of an RSA private key whose size meshca does not sign with. `None` for any
/// other key, and for RSA keys of meshca's sizes (those failed for another reason).
pub(super) fn other_rsa_key(bytes: &[u8], origin: &str) -> Option<RsaPublic> {
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
pub(super) struct RsaPublic {
    modulus: Vec<u8>,
    exponent: Vec<u8>,
}

impl RsaPublic {
    pub(super) fn new(modulus: &[u8], exponent: &[u8]) -> Option<Self> {
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

    pub(super) fn bits(&self) -> usize {
        // `new` refuses an empty modulus, and stripping left a non-zero first byte.
        self.modulus.len() * 8 - self.modulus[0].leading_zeros() as usize
    }

    pub(super) fn of_certificate(cert: &Certificate) -> Option<Self> {
        let x = cert.x509();
        let spki = x.public_key();
        if spki.algorithm.algorithm.to_id_string() != "1.2.840.113549.1.1.1" {
            return None;
        }
        der::rsa_public_key(&spki.subject_public_key.data)
    }
}
