//! `ca-crl.pem`: the CRLs of a plugged-in CA, checked as istiod checks them before it loads the
//! bundle (`util.Verify` with `PILOT_ENABLE_CA_CRL`, on by default).
//!
//! istiod parses every PEM block of a non-empty file as a CRL, and requires, for every CA of
//! `cert-chain.pem`, one CRL whose signature verifies with that CA's key: Envoy refuses chains
//! through a CA without a CRL once any CA of the chain has one. It looks at neither the CRLs'
//! dates nor their entries, and neither does this module: it decides whether the bundle loads,
//! not whether a certificate is revoked.

use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::X509Version;

use crate::cert::Certificate;
use crate::error::PkiError;
use crate::pem;

/// What a CRL file that passed holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrlCoverage {
    /// How many CRLs the file holds (0 for an empty file, which istiod ignores).
    pub crls: usize,
    /// The subjects of the chain's CAs, each with a CRL it signed.
    pub signers: Vec<String>,
}

/// Checks the CRL file `text` (named `origin`) against the CAs of the chain file `chain`
/// (named `chain_file`), as istiod does: every PEM block is a CRL, and every CA of the chain
/// (by subject, as Go keys them) signed one of them. An empty file is no CRL and passes.
pub fn check_crls(
    text: &[u8],
    origin: &str,
    chain: &[Certificate],
    chain_file: &str,
) -> Result<CrlCoverage, PkiError> {
    if text.is_empty() {
        return Ok(CrlCoverage::default());
    }
    let sections = pem::parse_sections(text, origin).map_err(|e| match e {
        PkiError::Pem { origin, reason } => PkiError::BadCrl { origin, reason },
        other => other,
    })?;
    let many = sections.len() > 1;
    let mut crls = Vec::with_capacity(sections.len());
    for (i, section) in sections.iter().enumerate() {
        let name = if many {
            format!("{origin}[{}]", i + 1)
        } else {
            origin.to_owned()
        };
        let bad = |reason: String| PkiError::BadCrl {
            origin: name.clone(),
            reason,
        };
        let (rest, crl) =
            CertificateRevocationList::from_der(&section.der).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after the CRL".to_owned()));
        }
        crls.push(crl);
    }
    // Go keeps one certificate per subject string, the last one listed.
    let mut signers: Vec<&Certificate> = Vec::new();
    for c in chain {
        signers.retain(|s| s.subject() != c.subject());
        signers.push(c);
    }
    let missing: Vec<String> = signers
        .iter()
        .filter(|s| !crls.iter().any(|crl| signed_by(crl, s)))
        .map(|s| s.subject().to_owned())
        .collect();
    if !missing.is_empty() {
        return Err(PkiError::MissingCrl {
            origin: origin.to_owned(),
            chain_file: chain_file.to_owned(),
            missing,
        });
    }
    Ok(CrlCoverage {
        crls: crls.len(),
        signers: signers.iter().map(|s| s.subject().to_owned()).collect(),
    })
}

/// Go's `RevocationList.CheckSignatureFrom`: the issuer is a CA (or a v1/v2 certificate,
/// which cannot say), its keyUsage, if any, allows cRLSign, and the signature verifies.
fn signed_by(crl: &CertificateRevocationList<'_>, issuer: &Certificate) -> bool {
    let x = issuer.x509();
    if x.version() == X509Version::V3 && !issuer.is_ca() {
        return false;
    }
    if let Ok(Some(ku)) = x.key_usage()
        && ku.value.flags != 0
        && !ku.value.crl_sign()
    {
        return false;
    }
    crl.verify_signature(x.public_key()).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on setup failures by design

    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
        DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
    };
    use time::{Duration, OffsetDateTime};

    use super::*;

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        cert: Certificate,
    }

    fn ca(cn: &str, usages: &[KeyUsagePurpose], parent: Option<&Ca>) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = usages.to_vec();
        params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(30);
        let key = KeyPair::generate().unwrap();
        let der = match parent {
            None => params.self_signed(&key).unwrap().der().to_vec(),
            Some(p) => params
                .signed_by(&key, &Issuer::from_params(&p.params, &p.key))
                .unwrap()
                .der()
                .to_vec(),
        };
        let cert = Certificate::from_der(der, &format!("{cn}.pem")).unwrap();
        Ca { params, key, cert }
    }

    fn crl_pem(by: &Ca) -> String {
        let params = CertificateRevocationListParams {
            this_update: OffsetDateTime::now_utc(),
            next_update: OffsetDateTime::now_utc() + Duration::days(30),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&Issuer::from_params(&by.params, &by.key))
            .unwrap()
            .pem()
            .unwrap()
    }

    const CA_USAGES: &[KeyUsagePurpose] = &[KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];

    #[test]
    fn every_ca_of_the_chain_needs_a_crl_it_signed() {
        let root = ca("Root", CA_USAGES, None);
        let inter = ca("Intermediate", CA_USAGES, Some(&root));
        let chain = [inter.cert.clone(), root.cert.clone()];
        let both = crl_pem(&inter) + &crl_pem(&root);
        let ok = check_crls(both.as_bytes(), "ca-crl.pem", &chain, "cert-chain.pem").unwrap();
        assert_eq!(ok.crls, 2);
        assert_eq!(ok.signers, ["CN=Intermediate", "CN=Root"]);
        // The chain without its root needs no CRL from the root.
        check_crls(
            crl_pem(&inter).as_bytes(),
            "ca-crl.pem",
            &chain[..1],
            "cert-chain.pem",
        )
        .unwrap();

        let err = check_crls(
            crl_pem(&inter).as_bytes(),
            "d/ca-crl.pem",
            &chain,
            "cert-chain.pem",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "d/ca-crl.pem: no CRL signed by \"CN=Root\" of cert-chain.pem; istiod \
             (PILOT_ENABLE_CA_CRL) and Envoy need one from every CA of the chain"
        );
        // A CRL with the right issuer name but another key counts for nothing.
        let impostor = ca("Root", CA_USAGES, None);
        let err = check_crls(
            (crl_pem(&inter) + &crl_pem(&impostor)).as_bytes(),
            "ca-crl.pem",
            &chain,
            "cert-chain.pem",
        )
        .unwrap_err();
        assert!(matches!(err, PkiError::MissingCrl { .. }), "{err}");
    }

    #[test]
    fn a_ca_whose_key_usage_lacks_crl_sign_signs_no_crl() {
        // The same name and key, once allowed to sign CRLs (rcgen signs no CRL otherwise) and
        // once not: only the second is in the chain.
        let root = ca("Root", CA_USAGES, None);
        let mut params = root.params.clone();
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let no_crl_sign = params.self_signed(&root.key).unwrap();
        let no_crl_sign = Certificate::from_der(no_crl_sign.der().to_vec(), "root.pem").unwrap();
        // With cRLSign, the CRL counts; without, it does not.
        check_crls(
            crl_pem(&root).as_bytes(),
            "ca-crl.pem",
            std::slice::from_ref(&root.cert),
            "cert-chain.pem",
        )
        .unwrap();
        let err = check_crls(
            crl_pem(&root).as_bytes(),
            "ca-crl.pem",
            std::slice::from_ref(&no_crl_sign),
            "cert-chain.pem",
        )
        .unwrap_err();
        assert!(matches!(err, PkiError::MissingCrl { .. }), "{err}");
    }

    #[test]
    fn junk_is_refused_and_an_empty_file_is_no_crl() {
        let root = ca("Root", CA_USAGES, None);
        let chain = std::slice::from_ref(&root.cert);
        let err = check_crls(b"not a CRL\n", "ca-crl.pem", chain, "cert-chain.pem").unwrap_err();
        assert_eq!(
            err.to_string(),
            "ca-crl.pem: not a valid CRL: no PEM section found (expected -----BEGIN ...-----)"
        );
        // A certificate where a CRL should be: istiod parses every block as a CRL.
        let text = crl_pem(&root) + &root.cert.pem();
        let err = check_crls(text.as_bytes(), "ca-crl.pem", chain, "cert-chain.pem").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("ca-crl.pem[2]: not a valid CRL: "),
            "{err}"
        );
        assert_eq!(
            check_crls(b"", "ca-crl.pem", chain, "cert-chain.pem").unwrap(),
            CrlCoverage::default()
        );
    }
}
