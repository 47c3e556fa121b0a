//! `meshca serve` as the long-running harnesses (`soak`, `fleet`) drive it: started on loopback
//! on a CA folder made by [`crate::pki::make_ca`], accepting service-account JWTs of a local
//! issuer ([`JwtIssuer`]), reached over TLS by channels that present a workload certificate or
//! not, and asked for certificates with the call istio-agent makes.

use std::path::{Path, PathBuf};
use std::process::Command;

use meshca_ca::proto::IstioCertificateRequest;
use meshca_ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_pki::{KeyType, PrivateKey};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::pki::{CACERTS, ClientIdentity, NAMESPACE};

/// The name on the serving certificate that clients check (istiod's).
pub const SERVER_NAME: &str = "istiod.istio-system.svc";

/// The issuer name tokens carry and `--jwt-issuer` names.
pub const ISSUER: &str = "bench";

/// A client of the CA.
pub type CaClient = IstioCertificateServiceClient<Channel>;

/// A local token issuer: a P-256 key whose public half `meshca serve` is given as a JWKS file.
pub struct JwtIssuer {
    key: meshca_token::SigningKey,
    jwks: PathBuf,
}

impl JwtIssuer {
    /// Makes a key and writes its JWKS to `<dir>/jwks.json`.
    ///
    /// # Panics
    /// If the key cannot be made or the file written.
    pub fn new(dir: &Path) -> JwtIssuer {
        let pem = PrivateKey::generate(KeyType::EcdsaP256)
            .unwrap_or_else(|e| panic!("JWT key: {e}"))
            .to_pkcs8_pem();
        let key = meshca_token::SigningKey::from_pem(pem.as_bytes(), "JWT key")
            .unwrap_or_else(|e| panic!("JWT key: {e}"));
        let jwks = dir.join("jwks.json");
        std::fs::write(
            &jwks,
            meshca_token::Jwks::from_keys([key.public_jwk()]).to_json(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", jwks.display()));
        JwtIssuer { key, jwks }
    }

    /// A token for service account `sa` of [`NAMESPACE`], audience `istio-ca`, valid for
    /// `lifetime` from now.
    ///
    /// # Panics
    /// If the claims cannot be signed.
    pub fn token(&self, sa: &str, lifetime: time::Duration) -> String {
        let now = time::OffsetDateTime::now_utc();
        meshca_token::mint(
            &meshca_token::ServiceAccountClaims {
                issuer: ISSUER.into(),
                audiences: vec!["istio-ca".into()],
                namespace: NAMESPACE.into(),
                service_account: sa.into(),
                issued_at: now,
                expires_at: now + lifetime,
            },
            &self.key,
        )
        .unwrap_or_else(|e| panic!("token for {sa}: {e}"))
    }
}

/// `meshca serve` on `listen` with the CA of `<dir>/c1` and the tokens of `issuer`, logging
/// warnings only; `extra` flags are added. Start it with [`crate::server::start_listening`].
pub fn serve_command(bin: &Path, dir: &Path, issuer: &JwtIssuer, listen: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", listen, "--cacerts"])
        .arg(dir.join(CACERTS))
        .arg("--jwt-issuer")
        .arg(format!("{ISSUER}={}", issuer.jwks.display()))
        .env("MESHCA_LOG", "warn");
    cmd
}

/// A TLS channel to the CA at `addr` that trusts `root_pem` and presents `identity` if given.
///
/// # Errors
/// If the connection or the handshake fails.
///
/// # Panics
/// If `addr` does not make a URI.
pub async fn connect(
    addr: &str,
    root_pem: &str,
    identity: Option<&ClientIdentity>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name(SERVER_NAME);
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.chain_pem, &id.key_pem));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap_or_else(|e| panic!("https://{addr}: {e}"))
        .tls_config(tls)?
        .connect()
        .await
}

/// `CreateCertificate` for `csr` with the CA's default lifetime, with `token` as the bearer if
/// given; `true` when the answer holds at least a leaf and a root.
pub async fn create_certificate(c: &mut CaClient, csr: &str, token: Option<&str>) -> bool {
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: 0,
        metadata: None,
    });
    if let Some(t) = token {
        match format!("Bearer {t}").parse() {
            Ok(v) => {
                req.metadata_mut().insert("authorization", v);
            }
            Err(_) => return false,
        }
    }
    c.create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain.len() >= 2)
        .unwrap_or(false)
}
