//! Who signs the clusters' intermediates: a CA whose key meshca holds (generated, or given in a
//! secret), or an external cfssl signer that holds the key itself, so the root key never touches
//! meshca. Either way the reconciler sees one signing certificate and one `issue_intermediate`.

use meshca_pki::bundle::{CERT_CHAIN, ROOT_CERT};
use meshca_pki::{CaProfile, CaSigner, Certificate, PrivateKey, verify_path};
use time::OffsetDateTime;

use crate::cfssl::{CfsslConfig, CfsslSigner, intermediate_csr_pem};
use crate::policy::ExternalSigner;
use crate::reconcile::TrustError;
use meshca_store::SecretStore;

/// The key holder behind the policy's CA.
pub(crate) enum Signer {
    /// meshca holds the key.
    Local(CaSigner),
    /// A cfssl server holds it.
    Cfssl(CfsslSigner),
}

impl Signer {
    /// The signing key as PKCS#8 DER, when meshca holds it.
    pub(crate) fn local_key_der(&self) -> Option<Vec<u8>> {
        match self {
            Signer::Local(s) => Some(s.key().to_pkcs8_der()),
            Signer::Cfssl(_) => None,
        }
    }

    /// The signing certificate.
    pub(crate) fn cert(&self) -> &Certificate {
        match self {
            Signer::Local(s) => s.cert(),
            Signer::Cfssl(s) => s.cert(),
        }
    }

    /// Issues an intermediate for `key` with `profile`. An external signer applies its own
    /// profile's lifetime and usages; the answer is checked (CA, certSign, signed by the signer,
    /// the key asked for) before it is returned, and proven by the reconciler before use.
    pub(crate) fn issue_intermediate(
        &self,
        profile: &CaProfile,
        key: &PrivateKey,
        origin: &str,
    ) -> Result<Certificate, TrustError> {
        match self {
            Signer::Local(s) => Ok(s.issue_ca(profile, key, origin)?),
            Signer::Cfssl(s) => {
                let csr = intermediate_csr_pem(key, &profile.subject)?;
                Ok(s.sign_ca(&csr, key, origin)?)
            }
        }
    }
}

/// Connects to the external signer and works out its path to the root: the signer's own
/// certificate when it is self-signed, else the chain and roots in `rootsSecretRef`.
pub(crate) fn connect_external(
    store: &dyn SecretStore,
    mgmt: &str,
    ext: &ExternalSigner,
    now: OffsetDateTime,
) -> Result<(Signer, Vec<Certificate>, Vec<Certificate>), TrustError> {
    let auth_key_hex = match &ext.auth_key {
        None => None,
        Some(r) => {
            let where_ = store.describe(&r.key(mgmt));
            let data = store
                .read(&r.key(mgmt))?
                .ok_or_else(|| TrustError::MissingSecret {
                    field: "externalSigner.cfssl.authKeySecretRef".to_owned(),
                    secret: r.key(mgmt).to_string(),
                })?;
            let key = data.get(AUTH_KEY).ok_or_else(|| TrustError::MissingKey {
                secret: where_.clone(),
                key: AUTH_KEY,
                what: "the hex auth key",
            })?;
            Some(String::from_utf8_lossy(key).trim().to_owned())
        }
    };
    let signer = CfsslSigner::connect(
        CfsslConfig {
            url: ext.url.clone(),
            auth_key_hex,
            profile: ext.profile.clone(),
            label: ext.label.clone(),
            ca_file: ext.ca_file.clone(),
        },
        "externalSigner.cfssl",
    )?;
    let cert = signer.cert().clone();
    let (chain, roots) = match &ext.roots {
        None => {
            if cert.check_signed_by(&cert).is_err() {
                return Err(TrustError::SignerNotRoot {
                    signer: signer.name().to_owned(),
                    subject: cert.subject().to_owned(),
                });
            }
            (Vec::new(), vec![cert.clone()])
        }
        Some(r) => {
            let where_ = store.describe(&r.key(mgmt));
            let data = store
                .read(&r.key(mgmt))?
                .ok_or_else(|| TrustError::MissingSecret {
                    field: "externalSigner.cfssl.rootsSecretRef".to_owned(),
                    secret: r.key(mgmt).to_string(),
                })?;
            let roots = Certificate::all_from_pem(
                data.get(ROOT_CERT).map(Vec::as_slice).unwrap_or_default(),
                &format!("{where_}/{ROOT_CERT}"),
            )?;
            let chain = match data.get(CERT_CHAIN) {
                Some(b) => Certificate::all_from_pem(b, &format!("{where_}/{CERT_CHAIN}"))?,
                None => Vec::new(),
            };
            (chain, roots)
        }
    };
    let path = verify_path(&cert, &chain, &roots, now)?;
    let path = path.certs().to_vec();
    Ok((Signer::Cfssl(signer), path, roots))
}

/// The key of the auth-key secret that holds cfssl's hex auth key.
pub const AUTH_KEY: &str = "auth-key";
