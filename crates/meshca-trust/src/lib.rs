//! `meshca trust`: managed intermediate CAs for every cluster from one root trust policy.
//!
//! [`policy`] reads a `RootTrustPolicy` (Gloo's `admin.gloo.solo.io/v2` document as is, or
//! meshca's own); the secrets live in any [`SecretStore`] of `meshca-store` (folders, memory,
//! or the Kubernetes store of `meshca-kube`); [`reconcile`] makes each cluster's `cacerts` exist, chain to the policy's CA, and
//! stay fresh, proving every new intermediate before it is written.
//! [`dashboard`] renders all of it, with `meshca check`'s findings, as one self-contained page.
//! [`cfssl`] has an external cfssl signer sign intermediates, so its root key never touches meshca.

#![forbid(unsafe_code)]

pub mod cache;
pub mod cfssl;
pub mod dashboard;
pub mod error;
pub mod manager;
pub mod metrics;
pub mod policy;
pub mod reconcile;
pub mod rotation;
mod signer;
pub mod simulate;
pub mod verified;

pub use cache::BundleCache;
pub use meshca_store::{FolderStore, MemoryStore, SecretStore};
pub use reconcile::{
    ClusterStatus, Outcome, Report, Status, TrustError, reconcile, reconcile_with,
    start_root_rotation, status,
};
pub use rotation::{RotationPhase, RotationState};

pub use policy::{RootSource, TrustPolicy};
