//! Where the CA comes from and how it is kept current: a `cacerts` folder watched for changes
//! (including Kubernetes' `..data` symlink swap, since files are read through their paths), or a
//! self-signed root made and persisted as istiod does when no `cacerts` is plugged in.

use std::path::{Path, PathBuf};

use meshca_pki::bundle::{BundleFiles, CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
use meshca_pki::{
    CaProfile, CacertsBundle, Certificate, KeyType, PkiError, PrivateKey, Subject, TrustDomain,
};
use meshca_store::{FileSpec, StoreError, Transaction};
use time::{Duration, OffsetDateTime};

use crate::issuer::LoadedCa;

/// istiod's self-signed root lifetime: 10 years.
pub const SELF_SIGNED_LIFETIME: Duration = Duration::days(3650);
/// istiod rotates its self-signed root when less than this share of its life is left.
pub const SELF_SIGNED_ROTATION_RATIO: f64 = 0.2;

/// Why a CA could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The bundle failed a check.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Reading or writing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A new bundle's roots do not include the root in use.
    #[error(
        "{dir}: the new root bundle does not contain the root in use ({old}); refused (allow with --allow-root-change)"
    )]
    RootChange {
        /// the folder
        dir: String,
        /// the subject of the root in use
        old: String,
    },
}

/// Where the CA's bundle is.
#[derive(Clone, Debug)]
pub enum CaSource {
    /// A plugged-in `cacerts` folder.
    Folder(PathBuf),
    /// A self-signed root kept in this folder, made on first start.
    SelfSigned {
        /// where the root and key are persisted
        dir: PathBuf,
        /// `O=` of the root
        trust_domain: TrustDomain,
    },
}

/// Files as read from a folder, plus a fingerprint of them.
pub fn read_folder(dir: &Path) -> Result<(BundleFiles, Vec<u8>), CaError> {
    let files = meshca_store::read_bundle_dir(dir)?;
    let mut fp = Vec::new();
    for (name, bytes) in &files {
        fp.extend_from_slice(name.as_bytes());
        fp.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        fp.extend_from_slice(bytes);
    }
    Ok((files, fp))
}

/// Loads and checks a `cacerts` folder.
pub fn load_folder(dir: &Path, now: OffsetDateTime) -> Result<LoadedCa, CaError> {
    let (files, fp) = read_folder(dir)?;
    load_files(&files, &dir.display().to_string(), fp, now)
}

/// Checks a bundle's files as serve takes them into use, at start and on every reload: the
/// bundle's own checks, then what istiod's Go verifier adds, extended key usage allowing
/// serverAuth on every certificate of the path (istiod refuses a CA whose chain excludes it).
/// `dir` prefixes file names in errors; `fingerprint` identifies the content.
pub fn load_files(
    files: &BundleFiles,
    dir: &str,
    fingerprint: Vec<u8>,
    now: OffsetDateTime,
) -> Result<LoadedCa, CaError> {
    let bundle = CacertsBundle::from_files(files, dir, now)?;
    bundle.path().check_server_auth_usage()?;
    Ok(LoadedCa::new(bundle, fingerprint))
}

/// Checks that `new` may replace `old`: its root bundle must still hold the root in use,
/// unless a root change is allowed.
pub fn check_root_change(
    old: &LoadedCa,
    new: &LoadedCa,
    dir: &str,
    allow: bool,
) -> Result<(), CaError> {
    let old_root = old.bundle().path().root();
    if allow || new.bundle().roots().contains(old_root) {
        return Ok(());
    }
    Err(CaError::RootChange {
        dir: dir.to_owned(),
        old: old_root.subject().to_owned(),
    })
}

/// Loads the self-signed root from `dir`, making it first if the folder holds none.
pub fn load_or_make_self_signed(
    dir: &Path,
    trust_domain: &TrustDomain,
    now: OffsetDateTime,
) -> Result<LoadedCa, CaError> {
    if dir.join(CA_CERT).exists() || dir.join(CA_KEY).exists() {
        return load_folder(dir, now);
    }
    let key = PrivateKey::generate(KeyType::Rsa2048)?;
    let cert = self_signed_root(&key, trust_domain, now)?;
    write_self_signed(dir, &cert, &key)?;
    load_folder(dir, now)
}

/// Rotates the self-signed root when under 20% of its life is left, keeping its key (so
/// certificates signed by the old root still verify against the new one, as in istiod).
pub fn rotate_self_signed_if_due(
    dir: &Path,
    current: &LoadedCa,
    trust_domain: &TrustDomain,
    now: OffsetDateTime,
) -> Result<Option<LoadedCa>, CaError> {
    let cert = current.bundle().signer().cert();
    if !meshca_pki::rotation::is_due(
        cert.not_before(),
        cert.not_after(),
        SELF_SIGNED_ROTATION_RATIO,
        now,
    ) {
        return Ok(None);
    }
    let key_pem = std::fs::read(dir.join(CA_KEY)).map_err(|source| StoreError::Io {
        path: dir.join(CA_KEY),
        what: "cannot read",
        source,
    })?;
    let key = PrivateKey::from_pem(&key_pem, &dir.join(CA_KEY).display().to_string())?;
    let cert = self_signed_root(&key, trust_domain, now)?;
    write_self_signed(dir, &cert, &key)?;
    load_folder(dir, now).map(Some)
}

fn self_signed_root(
    key: &PrivateKey,
    trust_domain: &TrustDomain,
    now: OffsetDateTime,
) -> Result<Certificate, PkiError> {
    let now = now.replace_nanosecond(0).unwrap_or(now);
    CaProfile {
        subject: Subject {
            organization: Some(trust_domain.to_string()),
            common_name: None,
            locality: None,
        },
        not_before: now - crate::issuer::BACKDATE,
        not_after: now + SELF_SIGNED_LIFETIME,
        path_len: None,
        dns_names: Vec::new(),
    }
    .self_signed(key, CA_CERT)
}

fn write_self_signed(dir: &Path, cert: &Certificate, key: &PrivateKey) -> Result<(), StoreError> {
    let pem = cert.pem();
    let mut tx = Transaction::new();
    tx.write(
        dir,
        vec![
            FileSpec::public(CA_CERT, pem.clone()),
            FileSpec::private(CA_KEY, key.to_pkcs8_pem()),
            FileSpec::public(CERT_CHAIN, pem.clone()),
            FileSpec::public(ROOT_CERT, pem),
        ],
    );
    tx.commit()
}
