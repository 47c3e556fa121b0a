//! `meshca trust`: managed intermediate CAs for every cluster from one root trust policy.
//!
//! [`policy`] reads a `RootTrustPolicy` (Gloo's `admin.gloo.solo.io/v2` document as is, or
//! meshca's own); [`store`] keeps secrets in the Kubernetes secret-mount layout with atomic
//! `..data` swaps; [`reconcile`] makes each cluster's `cacerts` exist, chain to the policy's CA, and
//! stay fresh, proving every new intermediate before it is written.
//! [`cfssl`] has an external cfssl signer sign intermediates, so its root key never touches meshca.

#![forbid(unsafe_code)]

pub mod cache;
pub mod cfssl;
pub mod policy;
pub mod reconcile;
pub mod rotation;
mod signer;
pub mod simulate;
pub mod store;
pub mod verified;

pub use cache::BundleCache;
pub use reconcile::{
    ClusterStatus, Outcome, Report, Status, TrustError, reconcile, reconcile_with,
    start_root_rotation, status,
};
pub use rotation::{RotationPhase, RotationState};
pub use store::{FolderStore, MemoryStore, SecretStore};

pub use policy::{RootSource, TrustPolicy};
