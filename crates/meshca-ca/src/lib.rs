//! `meshca serve`: an Istio-compatible CA server.
//!
//! Workloads (istio-agent, or `meshca agent`) call `IstioCertificateService/CreateCertificate`
//! with a CSR; the server authenticates them ([`auth`]), checks the CSR, and signs a certificate
//! for the authenticated identity with the plugged-in `cacerts` bundle ([`issuer`]), returning the
//! chain up to the root. [`source`] keeps the CA current; [`tls`] keeps the serving side in step.
//! Bearer tokens are checked against JWKS files that are kept current too, then sent for a
//! TokenReview to the API server of the cluster the request comes from ([`cluster`]).

#![forbid(unsafe_code)]

pub mod auth;
pub mod clock;
pub mod cluster;
pub mod coalesce;
pub mod issuer;
mod jwks;
pub mod metrics;
pub mod server;
pub mod service;
pub mod source;
pub mod tls;
pub mod tokenreview;
mod watch;

pub mod proto {
    //! Types generated from `proto/istio/v1/auth/ca.proto`.
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("istio.v1.auth");
}

pub use clock::{Clock, FakeClock, SystemClock};
pub use server::{Running, ServeConfig, ServeError, TokenReviewClusters, TokenReviewConfig, start};
pub use source::CaSource;
