//! The gRPC edge: `IstioCertificateService/CreateCertificate`. Protocol types become domain
//! types here, and domain errors become status codes without internals.

use std::sync::Arc;
use std::time::Instant;

use meshca_pki::{CertificateRequest, PkiError, SpiffeId};
use tonic::{Request, Response, Status};

use crate::auth::{Authenticator, Credentials};
use crate::clock::Clock;
use crate::issuer::{CaHandle, IssuancePolicy, IssueError};
use crate::metrics::{Metrics, Refusal};
use crate::proto::istio_certificate_service_server::IstioCertificateService;
use crate::proto::{IstioCertificateRequest, IstioCertificateResponse};

/// The CA service.
pub struct CaService {
    pub(crate) ca: CaHandle,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) policy: IssuancePolicy,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl CaService {
    /// Counts and logs a refusal of an authenticated caller's request.
    fn refused(&self, reason: Refusal, identity: &SpiffeId) {
        self.metrics.refused(reason);
        tracing::info!(%reason, %identity, "request refused");
    }
}

/// The reason a refused request is counted under.
fn request_refusal(e: &RequestError) -> Refusal {
    match e {
        RequestError::BadCsr(_) => Refusal::CsrInvalid,
        RequestError::OtherIdentity { .. } | RequestError::OtherSan { .. } => {
            Refusal::CsrIdentityMismatch
        }
        RequestError::Impersonation { .. } => Refusal::Impersonation,
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let started = Instant::now();
        self.metrics.csr_count.inc();
        let now = self.clock.now();
        let peer: Option<Vec<Vec<u8>>> = request
            .peer_certs()
            .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect());
        let meta = request.metadata();
        let authorization = meta.get("authorization").and_then(|v| v.to_str().ok());
        let cluster_id = meta.get("clusterid").and_then(|v| v.to_str().ok());
        let creds = Credentials {
            peer_certs: peer.as_deref(),
            authorization,
            cluster_id,
        };
        let identity = match self.auth.authenticate(&creds, now).await {
            Ok(id) => id,
            Err(e) => {
                self.metrics.authentication_failure_count.inc();
                self.metrics.refused(e.refusal());
                tracing::info!(reason = %e.refusal(), error = %e, "authentication failed");
                return Err(Status::unauthenticated(format!(
                    "request authenticate failure: {e}"
                )));
            }
        };
        let msg = request.into_inner();
        let csr = read_request(&msg, &identity).map_err(|e| {
            self.refused(request_refusal(&e), &identity);
            match e {
                RequestError::BadCsr(_) => {
                    self.metrics.csr_parsing_err_count.inc();
                    Status::invalid_argument(e.to_string())
                }
                _ => Status::permission_denied(e.to_string()),
            }
        })?;
        let ca = self.ca.load();
        let chain = ca
            .issue(&csr, &identity, msg.validity_duration, &self.policy, now)
            .map_err(|e| match e {
                IssueError::TtlTooLong { .. } => {
                    self.refused(Refusal::TtlAboveMax, &identity);
                    Status::invalid_argument(e.to_string())
                }
                other => {
                    tracing::error!(error = %other, "issuance failed");
                    Status::internal("certificate signing failed")
                }
            })?;
        self.metrics.success_cert_issuance_count.inc();
        self.metrics.observe_issuance(started.elapsed());
        tracing::debug!(identity = %identity, "issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

/// Why a CreateCertificate request is refused before anything is issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The CSR does not parse, or its signature does not verify.
    #[error(transparent)]
    BadCsr(PkiError),
    /// The CSR asks for a URI SAN other than the caller's identity.
    #[error("CSR asks for {asked} but the caller is {caller}")]
    OtherIdentity {
        /// the URI asked for
        asked: String,
        /// the authenticated caller
        caller: String,
    },
    /// The CSR asks for a SAN that is not a URI.
    #[error("CSR asks for {asked}; only the caller's identity {caller} is issued")]
    OtherSan {
        /// the SAN asked for
        asked: String,
        /// the authenticated caller
        caller: String,
    },
    /// The metadata's `ImpersonatedIdentity` names someone else than the caller.
    #[error("{caller} may not impersonate {asked}")]
    Impersonation {
        /// the identity named
        asked: String,
        /// the authenticated caller
        caller: String,
    },
}

/// Reads a CreateCertificate request from the authenticated `caller`: its CSR, which must ask
/// for the caller's identity alone, and its metadata. Sans-IO, so that requests can be tested
/// and fuzzed without a server.
pub fn read_request(
    msg: &IstioCertificateRequest,
    caller: &SpiffeId,
) -> Result<CertificateRequest, RequestError> {
    let csr =
        CertificateRequest::from_pem(msg.csr.as_bytes(), "CSR").map_err(RequestError::BadCsr)?;
    let wanted = caller.to_string();
    if let Some(other) = csr.uris().iter().find(|u| **u != wanted) {
        return Err(RequestError::OtherIdentity {
            asked: shown(other),
            caller: wanted,
        });
    }
    if let Some(other) = csr.other_sans().first() {
        return Err(RequestError::OtherSan {
            asked: shown(other),
            caller: wanted,
        });
    }
    if let Some(imp) = msg
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get("ImpersonatedIdentity"))
        .and_then(|v| match &v.kind {
            Some(prost_types::value::Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        })
        && imp != wanted
    {
        return Err(RequestError::Impersonation {
            asked: shown(&imp),
            caller: wanted,
        });
    }
    Ok(csr)
}

/// A name from a request as messages show it: control characters escaped, so that a request
/// cannot add lines to a status message or a log.
fn shown(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
