//! Path building and verification from a certificate up to one of a set of trusted roots.
//!
//! It checks what istiod (Go's verifier) checks on a cacerts bundle and on workload chains:
//! names chain, each signature verifies, every certificate is inside its validity window at
//! `now`, issuers are CAs allowed to sign certificates, pathlen holds, no certificate has a
//! critical extension Go does not handle, and no SHA-1 signature is trusted below a root. Unlike webpki it also accepts a CA certificate as the path's start, which
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

    /// Checks that a certificate issued by the path's start would still verify: every CA above
    /// the start must allow, by its pathlen, the CAs between it and that new certificate. Go
    /// does not count the start itself when it verifies a CA, so a root with pathlen:0 above an
    /// intermediate passes `verify_path` and then fails every workload chain.
    pub fn check_room_for_leaf(&self) -> Result<(), PkiError> {
        check_room_for_leaf(&self.certs)
    }

    /// Checks that the path ends at a root: a self-signed certificate. A root bundle that holds
    /// an intermediate instead makes Go (which trusts whatever its pool holds) accept the chain,
    /// but peers that verify up to a self-signed anchor (OpenSSL, BoringSSL) refuse it.
    pub fn check_anchor_is_root(&self) -> Result<(), PkiError> {
        let root = self.root();
        if root.is_self_issued() && root.check_signed_by(root).is_ok() {
            return Ok(());
        }
        Err(PkiError::AnchorNotARoot {
            origin: root.origin().to_owned(),
            subject: root.subject().to_owned(),
            issuer: root.issuer().to_owned(),
        })
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

/// Where a chain file that is in order ends.
#[derive(Clone, Copy, Debug)]
pub enum ChainEnd<'a> {
    /// At a root of the root bundle.
    AtRoot(&'a Certificate),
    /// At a certificate that this root of the root bundle signed.
    BelowRoot(&'a Certificate),
}

/// Checks a chain file as it is handed to workloads (`cert-chain.pem`, or `tls.crt`):
/// `listed` starts with the signing certificate, each certificate is signed by the next, and it
/// ends at a self-signed root of `roots` or at a certificate one of them signed. So no
/// certificate off the path, and no other CA's chain, goes to the peers. The one rule of
/// `meshca serve`'s refusal and of `meshca check`.
pub fn check_listed_chain<'a>(
    listed: &[Certificate],
    list_file: &str,
    signing: &Certificate,
    roots: &'a [Certificate],
    roots_file: &str,
) -> Result<ChainEnd<'a>, PkiError> {
    let fail = |reason: String| PkiError::ChainFile {
        file: list_file.to_owned(),
        reason,
    };
    let (Some(first), Some(top)) = (listed.first(), listed.last()) else {
        return Err(fail("holds no certificate".to_owned()));
    };
    if first != signing {
        return Err(fail(format!(
            "starts with \"{}\", not with the signing certificate \"{}\"",
            first.subject(),
            signing.subject()
        )));
    }
    for pair in listed.windows(2) {
        if let Err(e) = pair[0].check_signed_by(&pair[1]) {
            return Err(fail(format!("out of order or incomplete: {e}")));
        }
    }
    if let Some(root) = roots.iter().find(|r| *r == top) {
        if !(root.is_self_issued() && root.check_signed_by(root).is_ok()) {
            return Err(fail(format!(
                "ends at \"{}\", which {roots_file} holds but which is not a root (issued by \"{}\")",
                top.subject(),
                top.issuer()
            )));
        }
        return Ok(ChainEnd::AtRoot(root));
    }
    if top.is_self_issued() {
        return Err(fail(format!(
            "ends at \"{}\", a root that is not in {roots_file}",
            top.subject()
        )));
    }
    match roots.iter().find(|r| top.check_signed_by(r).is_ok()) {
        Some(root) => Ok(ChainEnd::BelowRoot(root)),
        None => Err(fail(format!(
            "ends at \"{}\" (issued by \"{}\"), which no root of {roots_file} signed",
            top.subject(),
            top.issuer()
        ))),
    }
}

/// Checks that a certificate issued by `path[0]` would still verify against the pathlen of every
/// CA on `path` (from the start certificate up to its root): the one rule of `meshca serve`'s
/// refusal and of `meshca check`.
pub fn check_room_for_leaf(path: &[Certificate]) -> Result<(), PkiError> {
    for (i, issuer) in path.iter().enumerate().skip(1) {
        let Some(limit) = issuer.path_len() else {
            continue;
        };
        // The new certificate is the leaf; the CAs between it and `issuer` are path[..i] less
        // the self-issued ones, which RFC 5280 does not count.
        let between = path[..i].iter().filter(|c| !c.is_self_issued()).count();
        if between > limit as usize {
            return Err(PkiError::NoRoomForLeaf {
                origin: issuer.origin().to_owned(),
                subject: issuer.subject().to_owned(),
                limit,
                between,
            });
        }
    }
    Ok(())
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
    start.check_critical_extensions()?;
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
        issuer.check_critical_extensions()?;
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
        BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        NameConstraints,
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

    /// A root made from `root_params`, and an intermediate made from `ca_params` below it.
    fn pair(root_params: &CertificateParams, ca: &CertificateParams) -> (Certificate, Certificate) {
        let root_key = KeyPair::generate().unwrap();
        let root = root_params.self_signed(&root_key).unwrap();
        let ca = ca
            .signed_by(
                &KeyPair::generate().unwrap(),
                &Issuer::from_params(root_params, &root_key),
            )
            .unwrap();
        (
            Certificate::from_der(root.der().to_vec(), "root-cert.pem").unwrap(),
            Certificate::from_der(ca.der().to_vec(), "ca-cert.pem").unwrap(),
        )
    }

    fn critical(oid: &[u64], content: Vec<u8>) -> CustomExtension {
        let mut e = CustomExtension::from_oid_content(oid, content);
        e.set_criticality(true);
        e
    }

    #[test]
    fn a_critical_extension_go_does_not_handle_is_refused_anywhere_on_the_path() {
        let now = OffsetDateTime::now_utc();
        let unknown = || critical(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![0x05, 0x00]);
        let mut ca = ca_params("ca", &[]);
        ca.custom_extensions.push(unknown());
        let (root, ca) = pair(&ca_params("root", &[]), &ca);
        assert_eq!(ca.unhandled_critical_extensions(), ["1.3.6.1.4.1.55555.1"]);
        let err = verify_path(&ca, &[], &[root], now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ca-cert.pem (\"CN=ca\"): critical extension 1.3.6.1.4.1.55555.1 is not one that \
             Go's verifier (istiod) or Envoy handles; they refuse the certificate (RFC 5280, \
             section 4.2)"
        );
        // On the root as well: Go checks every certificate it puts on a chain.
        let mut root = ca_params("root", &[]);
        root.custom_extensions.push(unknown());
        let (root, ca) = pair(&root, &ca_params("ca", &[]));
        let err = verify_path(&ca, &[], std::slice::from_ref(&root), now).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("root-cert.pem (\"CN=root\"): critical extension")
        );
        // The root alone, as the signing certificate, too.
        assert!(verify_path(&root, &[], std::slice::from_ref(&root), now).is_err());
    }

    #[test]
    fn critical_extensions_go_handles_are_accepted() {
        // Critical nameConstraints on DNS names and a critical certificatePolicies (anyPolicy)
        // on the intermediate: Go reads both, so they must not be refused.
        let mut ca = ca_params("ca", &[]);
        ca.name_constraints = Some(NameConstraints {
            permitted_subtrees: Vec::new(),
            excluded_subtrees: vec![GeneralSubtree::DnsName("example.com".to_owned())],
        });
        ca.custom_extensions.push(critical(
            &[2, 5, 29, 32],
            vec![0x30, 0x06, 0x30, 0x04, 0x06, 0x02, 0x55, 0x1d],
        ));
        let (root, ca) = pair(&ca_params("root", &[]), &ca);
        assert!(ca.unhandled_critical_extensions().is_empty());
        verify_path(&ca, &[], &[root], OffsetDateTime::now_utc()).unwrap();
        // A name form Go does not read (a directoryName) leaves nameConstraints unhandled.
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Test");
        let mut ca = ca_params("ca", &[]);
        ca.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DirectoryName(dn)],
            excluded_subtrees: Vec::new(),
        });
        let (_, ca) = pair(&ca_params("root", &[]), &ca);
        assert_eq!(ca.unhandled_critical_extensions(), ["2.5.29.30"]);
    }

    #[test]
    fn a_root_whose_pathlen_leaves_no_room_for_workloads_is_refused() {
        let mut root = ca_params("root", &[]);
        root.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let (root, ca) = pair(&root, &ca_params("ca", &[]));
        // Go, and verify_path, accept the intermediate itself...
        let path = verify_path(&ca, &[], &[root], OffsetDateTime::now_utc()).unwrap();
        // ...but not a certificate it issues.
        let err = path.check_room_for_leaf().unwrap_err();
        assert_eq!(
            err.to_string(),
            "root-cert.pem (\"CN=root\") has pathlen:0, but 1 CA(s) would sit between it and \
             every certificate the signing certificate issues, so no such chain verifies"
        );
        path.check_anchor_is_root().unwrap();
    }

    #[test]
    fn a_chain_file_must_be_the_path_in_order() {
        let (root, ca) = pair(&ca_params("root", &[]), &ca_params("ca", &[]));
        let roots = std::slice::from_ref(&root);
        let check = |listed: &[Certificate]| {
            check_listed_chain(listed, "cert-chain.pem", &ca, roots, "root-cert.pem")
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        check(&[ca.clone(), root.clone()]).unwrap();
        check(std::slice::from_ref(&ca)).unwrap();
        let reversed = check(&[root.clone(), ca.clone()]).unwrap_err();
        assert_eq!(
            reversed,
            "cert-chain.pem: starts with \"CN=root\", not with the signing certificate \"CN=ca\""
        );
        let (other_root, other_ca) = pair(&ca_params("root", &[]), &ca_params("other", &[]));
        let padded = check(&[ca.clone(), root.clone(), other_ca.clone()]).unwrap_err();
        assert!(
            padded.starts_with("cert-chain.pem: out of order or incomplete: "),
            "{padded}"
        );
        // The same names under another root: its signature gives it away.
        let foreign = check(&[ca.clone(), other_root]).unwrap_err();
        assert!(
            foreign.starts_with("cert-chain.pem: out of order or incomplete: "),
            "{foreign}"
        );
        // A root bundle holding the signing certificate rather than a root.
        let err = check_listed_chain(
            std::slice::from_ref(&ca),
            "cert-chain.pem",
            &ca,
            std::slice::from_ref(&ca),
            "root-cert.pem",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cert-chain.pem: ends at \"CN=ca\", which root-cert.pem holds but which is not a root \
             (issued by \"CN=root\")"
        );
        let path = verify_path(
            &ca,
            &[],
            std::slice::from_ref(&ca),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert!(path.check_anchor_is_root().is_err());
    }
}
