//! meshca's Kubernetes store: the secrets of many clusters, read and written through their API
//! servers with version preconditions, ownership labels and watches.
//!
//! [`clusters`] resolves the clusters (kubeconfig contexts, or Istio's remote secrets in the
//! management cluster); [`store`] is the [`meshca_store::SecretStore`] over them. It lives in a
//! crate of its own so that what does not talk to Kubernetes does not compile the client.

#![forbid(unsafe_code)]

pub mod clusters;
pub mod crd;
pub mod lease;
pub mod policies;
pub mod store;

pub use clusters::{ClusterConfig, ClusterSources};
pub use store::{KubeOptions, KubeStore};

/// Why the Kubernetes store could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// A kubeconfig, context or remote secret could not be used.
    #[error("{what}: {reason}")]
    Config {
        /// what was being read: a file, a flag, a remote secret
        what: String,
        /// what is wrong with it
        reason: String,
    },
}
