//! The `cacerts` bundle istiod reads, in both layouts, parsed and checked as a whole.
//!
//! A [`CacertsBundle`] exists only if every check passed: the files of one layout are all there,
//! the key matches the signing certificate, the signing certificate is a CA allowed to sign,
//! and it verifies up to a root of the root bundle at `now` with no SHA-1 and no critical
//! extension Go does not handle on the way. Beyond what istiod's loader checks, the chain
//! handed to workloads must be the signing certificate's path in order, it must end at a
//! self-signed root, every pathlen on it must leave room for the certificates the CA issues,
//! and a `ca-crl.pem` must hold a CRL from every CA of `cert-chain.pem` (as istiod requires).

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::cert::Certificate;
use crate::chain::{VerifiedPath, check_listed_chain, verify_path};
use crate::crl::check_crls;
use crate::error::PkiError;
use crate::key::PrivateKey;
use crate::profile::CaSigner;

/// Files of a bundle by name, as a secret mount or a Secret's `data` holds them.
pub type BundleFiles = BTreeMap<String, Vec<u8>>;

/// Which file names a bundle uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`, `root-cert.pem` (and optional `ca-crl.pem`).
    Istio,
    /// `tls.crt` (signing certificate and its intermediates), `tls.key`, `ca.crt` (roots),
    /// as cert-manager writes a `kubernetes.io/tls` secret.
    Tls,
}

impl Layout {
    /// The files a complete bundle of this layout has.
    pub fn required_files(self) -> &'static [&'static str] {
        match self {
            Layout::Istio => &[CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT],
            Layout::Tls => &[TLS_CRT, TLS_KEY, CA_CRT],
        }
    }

    /// The name of the private key file.
    pub fn key_file(self) -> &'static str {
        match self {
            Layout::Istio => CA_KEY,
            Layout::Tls => TLS_KEY,
        }
    }
}

/// `ca-cert.pem`: the signing (intermediate) certificate.
pub const CA_CERT: &str = "ca-cert.pem";
/// `ca-key.pem`: its private key.
pub const CA_KEY: &str = "ca-key.pem";
/// `cert-chain.pem`: the signing certificate's chain, intermediate first, root last.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// `root-cert.pem`: the root bundle, one or several roots.
pub const ROOT_CERT: &str = "root-cert.pem";
/// `ca-crl.pem`: optional CRLs, one from every CA of `cert-chain.pem` (Istio layout only).
pub const CA_CRL: &str = "ca-crl.pem";
/// `tls.crt` in the cert-manager layout.
pub const TLS_CRT: &str = "tls.crt";
/// `tls.key` in the cert-manager layout.
pub const TLS_KEY: &str = "tls.key";
/// `ca.crt` in the cert-manager layout.
pub const CA_CRT: &str = "ca.crt";

/// A checked `cacerts` bundle.
pub struct CacertsBundle {
    layout: Layout,
    signer: CaSigner,
    intermediates: Vec<Certificate>,
    roots: Vec<Certificate>,
    path: VerifiedPath,
    files: BundleFiles,
}

/// The files by name and size, never their bytes: one is the CA's private key.
impl std::fmt::Debug for CacertsBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: BTreeMap<&str, usize> = self
            .files
            .iter()
            .map(|(k, v)| (k.as_str(), v.len()))
            .collect();
        f.debug_struct("CacertsBundle")
            .field("layout", &self.layout)
            .field("signer", &self.signer)
            .field("intermediates", &self.intermediates)
            .field("roots", &self.roots)
            .field("path", &self.path)
            .field("files (bytes)", &sizes)
            .finish()
    }
}

impl CacertsBundle {
    /// Parses and checks a bundle from its files. `dir` prefixes file names in errors
    /// (`cluster1/ca-key.pem: ...`); `now` is the time of the validity checks.
    pub fn from_files(
        files: &BundleFiles,
        dir: &str,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        let at = |name: &str| {
            if dir.is_empty() {
                name.to_owned()
            } else {
                format!("{}/{name}", dir.trim_end_matches('/'))
            }
        };
        let layout = detect_layout(files, dir)?;
        let missing: Vec<&str> = layout
            .required_files()
            .iter()
            .copied()
            .filter(|f| !files.contains_key(*f))
            .collect();
        if !missing.is_empty() {
            return Err(PkiError::Pem {
                origin: if dir.is_empty() {
                    ".".to_owned()
                } else {
                    dir.to_owned()
                },
                reason: format!(
                    "incomplete cacerts bundle ({} layout): missing {}",
                    match layout {
                        Layout::Istio => "Istio",
                        Layout::Tls => "tls.crt",
                    },
                    missing.join(", ")
                ),
            });
        }
        let file = |name: &str| files.get(name).map(Vec::as_slice).unwrap_or_default();
        // `listed` is the chain as it is handed to workloads: cert-chain.pem, or tls.crt.
        let (signing, listed, intermediates, list_name, roots_name) = match layout {
            Layout::Istio => {
                let mut signing = Certificate::all_from_pem(file(CA_CERT), &at(CA_CERT))?;
                let first = signing.remove(0).with_origin(&at(CA_CERT));
                let chain = Certificate::all_from_pem(file(CERT_CHAIN), &at(CERT_CHAIN))?;
                let mut inter: Vec<Certificate> = signing;
                inter.extend(chain.iter().cloned());
                (first, chain, inter, CERT_CHAIN, ROOT_CERT)
            }
            Layout::Tls => {
                let mut tls = Certificate::all_from_pem(file(TLS_CRT), &at(TLS_CRT))?;
                let first = tls.remove(0).with_origin(&at(TLS_CRT));
                let listed = std::iter::once(first.clone())
                    .chain(tls.iter().cloned())
                    .collect();
                (first, listed, tls, TLS_CRT, CA_CRT)
            }
        };
        let roots = Certificate::all_from_pem(file(roots_name), &at(roots_name))?;
        let key_name = layout.key_file();
        let key = PrivateKey::from_pem(file(key_name), &at(key_name))?;
        let intermediates: Vec<Certificate> = intermediates
            .into_iter()
            .filter(|c| c != &signing && !roots.contains(c))
            .collect();
        if signing.has_weak_signature() {
            return Err(PkiError::WeakSignature {
                origin: signing.origin().to_owned(),
                algorithm: signing.signature_algorithm().to_owned(),
            });
        }
        let path = verify_path(&signing, &intermediates, &roots, now)?;
        let signer = CaSigner::new(signing, key, &at(key_name))?;
        // What istiod's Go loader does not check, and the chains handed to workloads need.
        check_listed_chain(
            &listed,
            &at(list_name),
            signer.cert(),
            &roots,
            &at(roots_name),
        )?;
        path.check_anchor_is_root()?;
        path.check_room_for_leaf()?;
        if let (Layout::Istio, Some(crl)) = (layout, files.get(CA_CRL)) {
            check_crls(crl, &at(CA_CRL), &listed, &at(CERT_CHAIN))?;
        }
        Ok(CacertsBundle {
            layout,
            signer,
            intermediates,
            roots,
            path,
            files: files.clone(),
        })
    }

    /// The layout the files were in.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The signing certificate and key.
    pub fn signer(&self) -> &CaSigner {
        &self.signer
    }

    /// The intermediates between the signing certificate and the root (not counting either).
    pub fn intermediates(&self) -> &[Certificate] {
        &self.intermediates
    }

    /// Every root of the root bundle.
    pub fn roots(&self) -> &[Certificate] {
        &self.roots
    }

    /// The verified path from the signing certificate to its root.
    pub fn path(&self) -> &VerifiedPath {
        &self.path
    }

    /// The raw files the bundle was read from.
    pub fn files(&self) -> &BundleFiles {
        &self.files
    }

    /// The bundle's files in `layout`. The layout it was read in comes back byte for byte;
    /// the other is rebuilt: `tls.crt` = signing certificate and intermediates, `ca.crt` = roots;
    /// or `cert-chain.pem` = signing certificate, intermediates and the path's root.
    pub fn to_layout(&self, layout: Layout) -> BundleFiles {
        let mut out = BundleFiles::new();
        if layout == self.layout {
            for name in layout
                .required_files()
                .iter()
                .chain(std::iter::once(&CA_CRL))
            {
                if let Some(bytes) = self.files.get(*name) {
                    out.insert((*name).to_owned(), bytes.clone());
                }
            }
            return out;
        }
        let key = self
            .files
            .get(self.layout.key_file())
            .cloned()
            .unwrap_or_default();
        let roots_pem = crate::cert::to_pem_bundle(&self.roots).into_bytes();
        let chain_without_root: String = std::iter::once(self.signer.cert())
            .chain(self.intermediates.iter())
            .map(Certificate::pem)
            .collect();
        match layout {
            Layout::Tls => {
                out.insert(TLS_CRT.to_owned(), chain_without_root.into_bytes());
                out.insert(TLS_KEY.to_owned(), key);
                out.insert(CA_CRT.to_owned(), roots_pem);
            }
            Layout::Istio => {
                out.insert(CA_CERT.to_owned(), self.signer.cert().pem().into_bytes());
                out.insert(CA_KEY.to_owned(), key);
                let chain = chain_without_root + &self.path.root().pem();
                out.insert(CERT_CHAIN.to_owned(), chain.into_bytes());
                out.insert(ROOT_CERT.to_owned(), roots_pem);
            }
        }
        out
    }
}

fn detect_layout(files: &BundleFiles, dir: &str) -> Result<Layout, PkiError> {
    if files.contains_key(TLS_CRT) {
        return Ok(Layout::Tls);
    }
    if Layout::Istio
        .required_files()
        .iter()
        .any(|f| files.contains_key(*f))
    {
        return Ok(Layout::Istio);
    }
    if files.contains_key(TLS_KEY) || files.contains_key(CA_CRT) {
        return Ok(Layout::Tls);
    }
    Err(PkiError::Pem {
        origin: if dir.is_empty() { ".".to_owned() } else { dir.to_owned() },
        reason: "no cacerts bundle here (expected ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem, or tls.crt, tls.key, ca.crt)".to_owned(),
    })
}
