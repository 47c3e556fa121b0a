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
    /// The secret changed since it was read: the write was not made.
    #[error("{key}: changed since it was read (expected {expected}, found {found}); not written")]
    VersionConflict {
        /// the secret, as `cluster/namespace/name`
        key: String,
        /// what the writer expected
        expected: String,
        /// what the store had
        found: String,
    },
    /// The secret exists but was not made by meshca: it is left alone.
    #[error("{key}: {reason}")]
    NotManaged {
        /// the secret, as `cluster/namespace/name`
        key: String,
        /// what marks it as someone else's, and how to take it over
        reason: String,
    },
    /// The backend (an API server) failed, refused or did not answer in time.
    #[error("{target}: {reason}")]
    Backend {
        /// what was being reached: a cluster, or a secret as `cluster/namespace/name`
        target: String,
        /// the HTTP status, when the backend answered
        status: Option<u16>,
        /// what happened
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

impl StoreError {
    /// Whether this is a lost race with another writer: reading again and re-planning may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::VersionConflict { .. })
    }
}
