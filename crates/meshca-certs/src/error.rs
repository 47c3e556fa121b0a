//! The error type of `meshca certs`.

use std::path::PathBuf;

/// Why a `meshca certs` run wrote nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertsError {
    /// A target name that is not one of the Makefile's.
    #[error("target {target:?}: {reason}")]
    BadTarget {
        /// the target as given
        target: String,
        /// what is wrong
        reason: String,
    },
    /// Existing files that meshca will not overwrite without `--force`.
    #[error("{reason}; {hint}")]
    Existing {
        /// what is there and why it cannot be used
        reason: String,
        /// how to proceed
        hint: String,
    },
    /// A path that must be a folder is something else.
    #[error("{}: exists and is not a folder", .path.display())]
    NotAFolder {
        /// the path
        path: PathBuf,
    },
    /// A file could not be read or removed.
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        /// the path
        path: PathBuf,
        /// what was being done
        what: &'static str,
        /// the system's error
        source: std::io::Error,
    },
    /// A PKI check or operation failed.
    #[error(transparent)]
    Pki(#[from] meshca_pki::PkiError),
    /// Writing the files failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] meshca_store::StoreError),
}
