//! What every CA server under load is given, so that the servers compared sign with the same
//! keys for the same requests: an intermediate CA made by `meshca certs`, CSRs of workloads in
//! namespace [`NAMESPACE`], and workload certificates for clients that authenticate with one.

use std::path::Path;

use meshca_pki::{CacertsBundle, CertificateRequest, KeyType, PrivateKey, SpiffeId, TrustDomain};

/// The namespace of the workloads whose CSRs are sent.
pub const NAMESPACE: &str = "load";

/// The trust domain (istiod's default).
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The folder under the CA's folder holding the intermediate in Istio's layout (`ca-cert.pem`,
/// `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`).
pub const CACERTS: &str = "c1";

/// The service account of workload `i`.
pub fn service_account(i: usize) -> String {
    format!("sa{i}")
}

/// Makes a root and one intermediate (`<dir>/c1`) with `meshca certs`, both with keys of `key`
/// (its `*_KEY_TYPE` spelling: `ecdsa-p256`, `rsa`).
///
/// # Panics
/// If `meshca certs` fails.
pub fn make_ca(dir: &Path, key: &str) {
    let settings = meshca_certs::Settings {
        rootca_key_type: key.into(),
        intermediate_key_type: key.into(),
        ..Default::default()
    };
    meshca_certs::run(
        dir,
        &settings,
        &[meshca_certs::Target::Cacerts(CACERTS.into())],
        false,
        time::OffsetDateTime::now_utc(),
        &|_| {},
    )
    .unwrap_or_else(|e| panic!("meshca certs in {}: {e}", dir.display()));
}

/// `count` CSRs with keys of `kt`, CSR `i` for [`service_account`]`(i)` of [`NAMESPACE`]:
/// (PEM, service account).
///
/// # Panics
/// If a key or a CSR cannot be made.
pub fn make_csrs(kt: KeyType, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let (key, csr) = key_and_csr(kt, i);
            drop(key);
            (csr, service_account(i))
        })
        .collect()
}

fn key_and_csr(kt: KeyType, i: usize) -> (PrivateKey, String) {
    let key = PrivateKey::generate(kt).unwrap_or_else(|e| panic!("{kt} key: {e}"));
    let id = format!(
        "spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{}",
        service_account(i)
    );
    let csr = meshca_pki::make_csr_pem(&key, std::slice::from_ref(&id))
        .unwrap_or_else(|e| panic!("CSR for {id}: {e}"));
    (key, csr)
}

/// The CA of `<dir>/c1`, loaded as `meshca serve` loads it.
///
/// # Panics
/// If the folder does not hold a valid bundle.
pub fn load_ca(dir: &Path) -> meshca_ca::issuer::LoadedCa {
    let folder = dir.join(CACERTS);
    let files = meshca_store::read_bundle_dir(&folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
    let bundle = CacertsBundle::from_files(&files, CACERTS, time::OffsetDateTime::now_utc())
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
    meshca_ca::issuer::LoadedCa::new(bundle, Vec::new())
}

/// A workload's TLS client credentials: its certificate chain (leaf first, up to the root) and
/// its PKCS#8 key, both PEM.
pub struct ClientIdentity {
    /// The certificate chain, PEM.
    pub chain_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// A P-256 key and a 24-hour certificate for [`service_account`]`(i)` of [`NAMESPACE`], issued
/// in-process by the CA of `<dir>/c1` as `meshca serve` issues a workload's.
///
/// # Panics
/// If issuing fails.
pub fn client_identity(dir: &Path, i: usize) -> ClientIdentity {
    let ca = load_ca(dir);
    let (key, csr) = key_and_csr(KeyType::EcdsaP256, i);
    let request = CertificateRequest::from_pem(csr.as_bytes(), "client CSR")
        .unwrap_or_else(|e| panic!("client CSR {i}: {e}"));
    let td = TrustDomain::new(TRUST_DOMAIN).unwrap_or_else(|e| panic!("{TRUST_DOMAIN}: {e}"));
    let id = SpiffeId::workload(&td, NAMESPACE, &service_account(i))
        .unwrap_or_else(|e| panic!("identity {i}: {e}"));
    let chain = ca
        .issue(
            &request,
            &id,
            0,
            &meshca_ca::issuer::IssuancePolicy::default(),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap_or_else(|e| panic!("client certificate for {id}: {e}"));
    ClientIdentity {
        chain_pem: chain.concat(),
        key_pem: key.to_pkcs8_pem(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_identities_chain_to_the_root_and_name_their_workload() {
        let dir = tempfile::tempdir().unwrap();
        make_ca(dir.path(), "ecdsa-p256");
        let id = client_identity(dir.path(), 3);
        let certs =
            meshca_pki::Certificate::all_from_pem(id.chain_pem.as_bytes(), "chain").unwrap();
        assert_eq!(certs.len(), 3, "leaf, intermediate and root");
        assert_eq!(
            certs[0].uris(),
            ["spiffe://cluster.local/ns/load/sa/sa3".to_owned()]
        );
        certs[0].check_signed_by(&certs[1]).unwrap();
        certs[1].check_signed_by(&certs[2]).unwrap();
        let key = PrivateKey::from_pem(id.key_pem.as_bytes(), "key").unwrap();
        assert!(certs[0].matches_key(&key));
        let csrs = make_csrs(KeyType::EcdsaP256, 2);
        assert_eq!(csrs[1].1, "sa1");
    }
}
