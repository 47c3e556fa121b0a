//! The sans-IO PKI core of meshca.
//!
//! Bytes and values in, bytes and values out: key generation, certificate profiles, issuing,
//! signature and chain checks, SPIFFE identities and certificate descriptions. Nothing here opens
//! a file, a socket or reads the clock: every function that depends on time takes `now`.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod cert;
pub mod chain;
pub mod crl;
pub mod csr;
pub mod describe;
pub mod error;
pub mod key;
pub mod pem;
pub mod profile;
pub mod rotation;
pub mod spiffe;

pub use bundle::{BundleFiles, CacertsBundle, Layout};
pub use cert::Certificate;
pub use chain::{ChainEnd, VerifiedPath, check_listed_chain, check_room_for_leaf, verify_path};
pub use csr::{CertificateRequest, make_csr_pem};
pub use error::PkiError;
pub use key::{KeyType, PrivateKey};
pub use profile::{CaProfile, CaSigner, Subject, WorkloadProfile};
pub use spiffe::{SpiffeId, TrustDomain};
