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

    /// Checks extended key usage along the path as Go's `x509.Verify` does when asked for
    /// serverAuth (which is how istiod verifies its `cacerts`): every certificate that lists
    /// usages, the root included, must allow serverAuth. Certificates without the extension
    /// allow everything.
    pub fn check_server_auth_usage(&self) -> Result<(), PkiError> {
        match self.certs.iter().find(|c| !c.allows_server_auth()) {
            None => Ok(()),
            Some(c) => Err(PkiError::ServerAuthExcluded {
                origin: c.origin().to_owned(),
                usages: c.extended_key_usages().unwrap_or_default(),
            }),
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on setup failures by design

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    use time::Duration;

    use super::*;

    fn ca_params(cn: &str, eku: &[ExtendedKeyUsagePurpose]) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.extended_key_usages = eku.to_vec();
        p.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        p.not_after = OffsetDateTime::now_utc() + Duration::days(30);
        p
    }

    /// A root with `root_eku`, and an intermediate with `ca_eku` below it; the path verified.
    fn path(
        root_eku: &[ExtendedKeyUsagePurpose],
        ca_eku: &[ExtendedKeyUsagePurpose],
    ) -> VerifiedPath {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("root", root_eku);
        let root = root_params.self_signed(&root_key).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params("ca", ca_eku)
            .signed_by(&ca_key, &Issuer::from_params(&root_params, &root_key))
            .unwrap();
        let root = Certificate::from_der(root.der().to_vec(), "root-cert.pem").unwrap();
        let ca = Certificate::from_der(ca.der().to_vec(), "ca-cert.pem").unwrap();
        verify_path(&ca, &[], &[root], OffsetDateTime::now_utc()).unwrap()
    }

    #[test]
    fn extended_key_usage_is_checked_along_the_path_as_go_does_for_server_auth() {
        use ExtendedKeyUsagePurpose::{Any, ClientAuth, CodeSigning, ServerAuth};
        // No extension anywhere, serverAuth among others, or "any": allowed.
        for (root, ca) in [
            (&[][..], &[][..]),
            (&[][..], &[ClientAuth, ServerAuth][..]),
            (&[ServerAuth][..], &[Any][..]),
        ] {
            path(root, ca).check_server_auth_usage().unwrap();
        }
        let err = path(&[], &[ClientAuth])
            .check_server_auth_usage()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "ca-cert.pem: extended key usage (clientAuth) excludes serverAuth; istiod refuses \
             such a CA (Go verifies the chain for serverAuth)"
        );
        // The root counts too: Go checks every certificate of the chain.
        let err = path(&[ClientAuth, CodeSigning], &[ServerAuth])
            .check_server_auth_usage()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("root-cert.pem: extended key usage (clientAuth, codeSigning)"),
            "{err}"
        );
    }
}
