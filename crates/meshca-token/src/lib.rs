//! Kubernetes service-account tokens for meshca's CA server.
//!
//! Minting them (for local use and tests), publishing the public keys as a JWKS, and verifying
//! bearer tokens against trusted issuers' JWKS. Everything is sans-IO: bytes and values in,
//! values out. Nothing here opens a file, a socket or reads the clock: every function whose
//! answer depends on time takes `now`.
//!
//! Only the two algorithms Kubernetes signs service-account tokens with are accepted: ES256
//! (ECDSA P-256 with SHA-256) and RS256 (RSA PKCS#1 v1.5 with SHA-256, 2048 bits or more).

#![forbid(unsafe_code)]

pub mod base64url;
pub mod claims;
pub mod error;
pub mod jwk;
pub mod key;
pub mod verify;

pub use claims::{ServiceAccountClaims, mint};
pub use error::TokenError;
pub use jwk::{Jwk, Jwks};
pub use key::{Algorithm, SigningKey};
pub use verify::{CLOCK_SKEW_LEEWAY, MAX_TOKEN_BYTES, VerifiedToken, Verifier};
