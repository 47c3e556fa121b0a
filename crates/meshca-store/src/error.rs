//! The store's error type: every variant names the path that failed.

use std::path::PathBuf;

/// What went wrong reading or writing a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file system call failed on `path`.
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        /// the path the call was about
        path: PathBuf,
        /// what was being done
        what: &'static str,
        /// the system's error
        source: std::io::Error,
    },
    /// Something is in the way or of the wrong kind.
    #[error("{}: {reason}", .path.display())]
    Conflict {
        /// the path
        path: PathBuf,
        /// what is wrong
        reason: String,
    },
    /// The bundle's contents failed a check.
    #[error(transparent)]
    Pki(#[from] meshca_pki::PkiError),
    /// The output could not be encoded.
    #[error("encoding {what}: {reason}")]
    Encode {
        /// what was being encoded
        what: &'static str,
        /// the encoder's reason
        reason: String,
    },
}

impl StoreError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        what: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io { path, what, source }
    }
}
