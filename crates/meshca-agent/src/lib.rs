//! `meshca agent`: the workload side of Istio's CA API, as istio-agent does it with file-mounted
//! certificates. It makes a key and a CSR for its SPIFFE ID, asks the CA, checks the answer
//! against the root before using it, writes `cert-chain.pem`, `key.pem` and `root-cert.pem`
//! atomically, and renews when the grace ratio of the lifetime is left ([`schedule`]).
//! [`mtls`] serves and calls a small mTLS endpoint that proves who is on each side.

#![forbid(unsafe_code)]

pub mod client;
pub mod mtls;
pub mod run;
pub mod schedule;

pub use client::{
    AgentError, Credential, Issued, Request, identity_from_token, obtain, write_files,
};
