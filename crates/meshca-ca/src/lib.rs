//! `meshca serve`: an Istio-compatible CA server.
//!
//! Workloads (istio-agent, or `meshca agent`) call `IstioCertificateService/CreateCertificate`
//! with a CSR; the server authenticates them ([`auth`]), checks the CSR, and signs a certificate
//! for the authenticated identity with the plugged-in `cacerts` bundle ([`issuer`]), returning the
//! chain up to the root. [`source`] keeps the CA current; [`tls`] keeps the serving side in step.
//! Bearer tokens are checked against JWKS files that are kept current too, then handed to
//! Kubernetes for the cluster the request comes from ([`cluster`], [`kube_auth`]): verified
//! with its API server's own JWKS ([`apiserver_jwks`]) and/or sent for a TokenReview
//! ([`tokenreview`]) whose answers are remembered briefly ([`review_cache`]).

#![forbid(unsafe_code)]

pub mod apiserver;
pub mod apiserver_jwks;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod coalesce;
pub mod issuer;
mod jwks;
pub mod kube_auth;
pub mod metrics;
pub mod review_cache;
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
pub use kube_auth::{KubeAuth, OwnApiServer};
pub use server::{Running, ServeConfig, ServeError, start};
pub use source::CaSource;
