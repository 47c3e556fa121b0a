//! Path building and verification from a certificate up to one of a set of trusted roots.
//!
//! It checks what istiod (Go's verifier) checks on a cacerts bundle and on workload chains:
//! names chain, each signature verifies, every certificate is inside its validity window at
//! `now`, issuers are CAs allowed to sign certificates, pathlen holds, and no SHA-1 signature is
//! trusted below a root. Unlike webpki it also accepts a CA certificate as the path's start, which
//! is what checking an intermediate against its root needs. Work is bounded against hostile input.

use time::OffsetDateTime;

use crate::cert::Certificate;
use crate::error::PkiError;

/// Longest path tried, and the most signature checks spent on one verification.
const MAX_DEPTH: usize = 8;
const MAX_SIGNATURE_CHECKS: usize = 64;

/// A path that verified: the start certificate first, the trusted root last.
#[derive(Clone, Debug)]
pub struct VerifiedPath {
    certs: Vec<Certificate>,
}

impl VerifiedPath {
    /// The certificates from the start to the root.
    pub fn certs(&self) -> &[Certificate] {
        &self.certs
    }

    /// The trusted root the path ends at.
    pub fn root(&self) -> &Certificate {
        // A path always holds at least its start certificate, which may be the root itself.
        &self.certs[self.certs.len() - 1]
    }

    /// The earliest notAfter along the path: when the path stops verifying.
    pub fn not_after(&self) -> OffsetDateTime {
        self.certs
            .iter()
            .map(Certificate::not_after)
            .min()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// Verifies that `start` chains to one of `roots` at `now`, using `intermediates` as needed.
pub fn verify_path(
    start: &Certificate,
    intermediates: &[Certificate],
    roots: &[Certificate],
    now: OffsetDateTime,
) -> Result<VerifiedPath, PkiError> {
    if roots.is_empty() {
        return Err(PkiError::NoPathToRoot {
            cert: start.origin().to_owned(),
            reason: "no trusted root given".to_owned(),
        });
    }
    start.check_validity(now)?;
    if roots.contains(start) {
        return Ok(VerifiedPath {
            certs: vec![start.clone()],
        });
    }
    if start.has_weak_signature() {
        return Err(PkiError::WeakSignature {
            origin: start.origin().to_owned(),
            algorithm: start.signature_algorithm().to_owned(),
        });
    }
    let mut search = Search {
        intermediates,
        roots,
        now,
        budget: MAX_SIGNATURE_CHECKS,
        best_error: None,
    };
    let mut path = vec![start.clone()];
    if search.extend(&mut path) {
        return Ok(VerifiedPath { certs: path });
    }
    Err(search.best_error.unwrap_or_else(|| PkiError::NoPathToRoot {
        cert: start.origin().to_owned(),
        reason: format!(
            "no trusted root or intermediate is named \"{}\"",
            start.issuer()
        ),
    }))
}

struct Search<'a> {
    intermediates: &'a [Certificate],
    roots: &'a [Certificate],
    now: OffsetDateTime,
    budget: usize,
    best_error: Option<PkiError>,
}

impl Search<'_> {
    /// Tries to extend `path` to a root; on success `path` ends with the root.
    fn extend(&mut self, path: &mut Vec<Certificate>) -> bool {
        if path.len() > MAX_DEPTH {
            self.note(PkiError::NoPathToRoot {
                cert: path[0].origin().to_owned(),
                reason: format!("path longer than {MAX_DEPTH} certificates"),
            });
            return false;
        }
        let child = path[path.len() - 1].clone();
        let candidates = self
            .roots
            .iter()
            .map(|c| (c, true))
            .chain(self.intermediates.iter().map(|c| (c, false)));
        for (issuer, is_root) in candidates {
            if issuer.subject() != child.issuer() || path.contains(issuer) {
                continue;
            }
            if self.budget == 0 {
                self.note(PkiError::NoPathToRoot {
                    cert: path[0].origin().to_owned(),
                    reason: "too many candidate issuers".to_owned(),
                });
                return false;
            }
            self.budget -= 1;
            if let Err(e) = self.check_issuer(&child, issuer, path, is_root) {
                self.note(e);
                continue;
            }
            path.push(issuer.clone());
            if is_root || self.extend(path) {
                return true;
            }
            path.pop();
        }
        false
    }

    fn check_issuer(
        &self,
        child: &Certificate,
        issuer: &Certificate,
        path: &[Certificate],
        is_root: bool,
    ) -> Result<(), PkiError> {
        child.check_signed_by(issuer)?;
        if !issuer.is_ca() {
            return Err(PkiError::NotACa {
                origin: issuer.origin().to_owned(),
                reason: "basicConstraints does not say CA:TRUE".to_owned(),
            });
        }
        if !issuer.can_sign_certificates() {
            return Err(PkiError::NotACa {
                origin: issuer.origin().to_owned(),
                reason: "keyUsage does not include keyCertSign".to_owned(),
            });
        }
        issuer.check_validity(self.now)?;
        if !is_root && issuer.has_weak_signature() {
            return Err(PkiError::WeakSignature {
                origin: issuer.origin().to_owned(),
                algorithm: issuer.signature_algorithm().to_owned(),
            });
        }
        if let Some(limit) = issuer.path_len() {
            // Intermediates below this issuer, not counting the path's start or self-issued ones.
            let below = path[1..].iter().filter(|c| !c.is_self_issued()).count();
            if below > limit as usize {
                return Err(PkiError::NotACa {
                    origin: issuer.origin().to_owned(),
                    reason: format!(
                        "pathlen:{limit} allows {limit} intermediate(s) below it, the path has {below}"
                    ),
                });
            }
        }
        Ok(())
    }

    fn note(&mut self, e: PkiError) {
        // Keep the first failure: it is the one closest to the start of the path.
        if self.best_error.is_none() {
            self.best_error = Some(e);
        }
    }
}
