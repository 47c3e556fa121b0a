//! Why the trust manager stopped before writing anything: one variant per failure, each naming
//! the secret, field or phase that failed. A cluster whose store fails is not an error of the
//! whole reconcile: it is reported as that cluster's [`crate::Outcome::Failed`].

use meshca_pki::PkiError;
use meshca_store::StoreError;

use crate::policy::PolicyError;

/// Why a reconcile (or a rotation, a plan, a simulation) stopped before writing anything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// A secret the policy names is not in the management cluster.
    #[error("{field}: secret {secret} not found in the store")]
    MissingSecret {
        /// the policy field that names it
        field: String,
        /// the secret, as `cluster/namespace/name`
        secret: String,
    },
    /// A secret lacks a key it must hold.
    #[error("{secret}: no {key} key ({what})")]
    MissingKey {
        /// where the secret is
        secret: String,
        /// the key
        key: &'static str,
        /// what the key holds
        what: &'static str,
    },
    /// The policy's CA is an external signer, which keeps no secret in the store.
    #[error("the policy's CA is an external signer: it has no secret in the store")]
    NoCaSecret,
    /// The rotation state secret holds something else.
    #[error("{secret}: not a rotation state: {reason}")]
    BadRotationState {
        /// where it is, with its key
        secret: String,
        /// the decoder's reason
        reason: String,
    },
    /// The rotation state could not be encoded.
    #[error("encoding the rotation state: {0}")]
    EncodeRotationState(String),
    /// A time in the rotation state is not RFC 3339.
    #[error("rotation state {field} {value:?}: {reason}")]
    BadStamp {
        /// the state's field
        field: String,
        /// what it holds
        value: String,
        /// the parser's reason
        reason: String,
    },
    /// An external signer that is not a root was given no roots.
    #[error(
        "{signer}: its certificate {subject} is not a root; name the roots it chains to in externalSigner.cfssl.rootsSecretRef"
    )]
    SignerNotRoot {
        /// the signer
        signer: String,
        /// its certificate's subject
        subject: String,
    },
    /// A root rotation was asked for while one is in progress.
    #[error("a root rotation is already in progress (phase {phase}, started {started})")]
    RotationInProgress {
        /// the phase it is in
        phase: &'static str,
        /// when it started
        started: String,
    },
    /// A secretRef root cannot be rotated without its successor.
    #[error(
        "root rotation: a mgmtServerCa.secretRef root needs the secret of its successor (--to-secret, or config.rootRotation.nextSecretRef)"
    )]
    NoSuccessor,
    /// An external signer's root is not meshca's to rotate.
    #[error(
        "root rotation: the policy's CA is an external signer; its root is rotated by the signer's owner"
    )]
    ExternalRoot,
    /// The successor named holds the current root.
    #[error("root rotation: secret {secret} holds the current root, not a new one")]
    NotANewRoot {
        /// the successor's secret, as `cluster/namespace/name`
        secret: String,
    },
    /// A dry-run plan of a root rotation did not finish.
    #[error("root rotation plan: {0}")]
    PlanStuck(String),
    /// The simulator cannot simulate this.
    #[error("simulate: {0}")]
    CannotSimulate(&'static str),
    /// A simulated manager was killed in the middle of a reconcile.
    #[error("the manager was killed in the middle of a reconcile")]
    Killed,
    /// The policy file could not be read.
    #[error("{path}: cannot read: {reason}")]
    PolicyFile {
        /// the file
        path: String,
        /// the system's reason
        reason: String,
    },
    /// The policy is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A PKI check failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A named cluster is not in the store.
    #[error("cluster {0:?} is not in the store")]
    UnknownCluster(String),
    /// The external signer failed or gave an unusable answer.
    #[error(transparent)]
    Cfssl(#[from] crate::cfssl::CfsslError),
}
