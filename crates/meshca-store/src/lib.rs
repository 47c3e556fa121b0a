//! Where meshca's bundles live.
//!
//! [`secrets`] is the vocabulary every secret store shares ([`SecretStore`], [`SecretKey`],
//! [`Version`], [`Expect`]); [`folder`] keeps clusters as folders in the secret-mount layout (the
//! embedded default), [`memory`] in memory (the simulator, dry runs), [`faults`] wraps a store
//! with planned crashes for tests.
//! [`files`] writes sets of files so that readers see all of them or none, with private keys at
//! mode 0600; [`secret`] turns a bundle folder into the Kubernetes Secret that
//! `kubectl create secret generic --from-file` would make.

#![forbid(unsafe_code)]

pub mod error;
pub mod faults;
pub mod files;
pub mod folder;
pub mod memory;
pub mod parallel;
pub mod secret;
pub mod secrets;

pub use error::StoreError;
pub use faults::CrashingStore;
pub use files::{FileSpec, Transaction, read_bundle_dir};
pub use folder::FolderStore;
pub use memory::MemoryStore;
pub use secrets::{Expect, Secret, SecretData, SecretKey, SecretStore, SecretWrite, Version};
