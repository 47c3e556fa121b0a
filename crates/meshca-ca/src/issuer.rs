//! The signing side: a loaded CA (bundle plus the precomputed tail of every response) and the
//! issuance rules istiod applies (default and maximum TTL, backdating, capping at the CA's end).

use std::sync::Arc;

use meshca_pki::{CacertsBundle, CertificateRequest, PkiError, SpiffeId, Subject, WorkloadProfile};
use time::{Duration, OffsetDateTime};

/// The CA in use: a checked bundle and the PEM elements every response ends with.
pub struct LoadedCa {
    bundle: CacertsBundle,
    /// The signing certificate and each intermediate, one PEM element each, then the root bundle.
    tail: Vec<String>,
    /// The bytes it was loaded from, to notice changes.
    fingerprint: Vec<u8>,
}

/// The fingerprint is the files' bytes, the CA's key among them: only its size is shown.
impl std::fmt::Debug for LoadedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCa")
            .field("bundle", &self.bundle)
            .field("tail", &self.tail)
            .field("fingerprint (bytes)", &self.fingerprint.len())
            .finish()
    }
}

impl LoadedCa {
    /// Wraps a checked bundle. `fingerprint` identifies the source content.
    pub fn new(bundle: CacertsBundle, fingerprint: Vec<u8>) -> Self {
        let signing = bundle.signer().cert();
        let mut tail = Vec::new();
        if !bundle.roots().contains(signing) {
            tail.push(signing.pem());
        }
        tail.extend(bundle.intermediates().iter().map(|c| c.pem()));
        tail.push(meshca_pki::cert::to_pem_bundle(bundle.roots()));
        LoadedCa {
            bundle,
            tail,
            fingerprint,
        }
    }

    /// The bundle.
    pub fn bundle(&self) -> &CacertsBundle {
        &self.bundle
    }

    /// What the CA was loaded from.
    pub fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }

    /// The PEM of the root bundle (the last element of every response).
    pub fn root_bundle_pem(&self) -> &str {
        self.tail.last().map(String::as_str).unwrap_or_default()
    }
}

/// How long certificates live.
#[derive(Clone, Copy, Debug)]
pub struct IssuancePolicy {
    /// Used when the request asks for 0 or less.
    pub default_ttl: Duration,
    /// Requests above this are refused, not shortened.
    pub max_ttl: Duration,
}

impl Default for IssuancePolicy {
    fn default() -> Self {
        IssuancePolicy {
            default_ttl: Duration::hours(24),
            max_ttl: Duration::days(90),
        }
    }
}

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The requested lifetime is above the maximum.
    #[error("requested TTL {requested}s is greater than the max allowed TTL {max}s")]
    TtlTooLong {
        /// seconds asked for
        requested: i64,
        /// the maximum in seconds
        max: i64,
    },
    /// The CA's certificate has already expired.
    #[error("the CA certificate expired at {}", meshca_pki::error::show_time(*.0))]
    CaExpired(OffsetDateTime),
    /// Building or signing the certificate failed.
    #[error("signing failed: {0}")]
    Signing(#[from] PkiError),
}

/// Backdating of NotBefore, as istiod does, for clocks that run slightly behind.
pub const BACKDATE: Duration = Duration::minutes(2);

impl LoadedCa {
    /// Issues a certificate for `identity` with the CSR's public key, and returns the response
    /// chain: leaf, intermediates, root bundle.
    pub fn issue(
        &self,
        request: &CertificateRequest,
        identity: &SpiffeId,
        requested_seconds: i64,
        policy: &IssuancePolicy,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, IssueError> {
        let ttl = if requested_seconds <= 0 {
            policy.default_ttl
        } else {
            let requested = Duration::seconds(requested_seconds);
            if requested > policy.max_ttl {
                return Err(IssueError::TtlTooLong {
                    requested: requested_seconds,
                    max: policy.max_ttl.whole_seconds(),
                });
            }
            requested
        };
        let signer = self.bundle.signer();
        let ca_end = signer.cert().not_after();
        if now >= ca_end {
            return Err(IssueError::CaExpired(ca_end));
        }
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let profile = WorkloadProfile {
            subject: Subject::default(),
            not_before: now - BACKDATE,
            not_after: (now + ttl).min(ca_end),
            uris: vec![identity.to_string()],
            dns_names: Vec::new(),
            ips: Vec::new(),
            key_usage_critical: true,
        };
        let leaf =
            signer.issue_workload_der(&profile, request.public_key(), "issued certificate")?;
        let mut chain = Vec::with_capacity(self.tail.len() + 1);
        chain.push(meshca_pki::pem::encode("CERTIFICATE", &leaf));
        chain.extend(self.tail.iter().cloned());
        Ok(chain)
    }
}

/// A shareable, swappable CA.
pub type CaHandle = Arc<arc_swap::ArcSwap<LoadedCa>>;
