//! Where meshca's bundles live.
//!
//! [`files`] writes sets of files so that readers see all of them or none, with private keys at
//! mode 0600; [`secret`] turns a bundle folder into the Kubernetes Secret that
//! `kubectl create secret generic --from-file` would make.

#![forbid(unsafe_code)]

pub mod error;
pub mod files;
pub mod secret;

pub use error::StoreError;
pub use files::{FileSpec, Transaction, read_bundle_dir};
