//! A small mTLS endpoint for proving cross-cluster trust: the server requires a client
//! certificate that verifies against its root bundle and answers with both SPIFFE IDs; the
//! client presents its own certificate, verifies the server's chain against its roots (by chain,
//! not host name, as Istio does), and keeps the chain the server presented. Both sides present
//! `cert-chain.pem` as it is, root included, as Envoy presents istio-agent's chain: peers
//! verify up to their own roots and ignore the extra certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use meshca_pki::{Certificate, verify_path};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{AgentError, ROOT_CERT};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn cred_err(e: impl std::fmt::Display) -> AgentError {
    AgentError::Credential(e.to_string())
}

fn read_dir_creds(
    dir: &Path,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        Vec<Certificate>,
    ),
    AgentError,
> {
    let pair = crate::client::read_pair(dir)?;
    let roots_pem = std::fs::read(dir.join(ROOT_CERT)).map_err(|e| {
        cred_err(format!(
            "{}: cannot read: {e}",
            dir.join(ROOT_CERT).display()
        ))
    })?;
    let roots = Certificate::all_from_pem(&roots_pem, &dir.join(ROOT_CERT).display().to_string())?;
    let ders = pair.chain.iter().map(|c| c.der().clone()).collect();
    let key = PrivateKeyDer::Pkcs8(pair.key.to_pkcs8_der().into());
    Ok((ders, key, roots))
}

fn server_config(dir: &Path) -> Result<Arc<rustls::ServerConfig>, AgentError> {
    let (chain, key, roots) = read_dir_creds(dir)?;
    let mut store = RootCertStore::empty();
    for r in &roots {
        store.add(r.der().clone()).map_err(cred_err)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(cred_err)?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(cred_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(cred_err)?;
    Ok(Arc::new(cfg))
}

/// A running mTLS endpoint serving the certificate in a folder.
pub struct Endpoint {
    /// Where it listens.
    pub local_addr: SocketAddr,
    config: Arc<ArcSwap<rustls::ServerConfig>>,
    dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Starts serving `dir`'s `cert-chain.pem` (leaf, intermediates, root bundle) and `key.pem`,
    /// and trusting its `root-cert.pem`.
    pub async fn start(addr: SocketAddr, dir: &Path) -> Result<Self, AgentError> {
        let config = Arc::new(ArcSwap::new(server_config(dir)?));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| cred_err(format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr().map_err(cred_err)?;
        let cfg = config.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg.load_full());
                tokio::spawn(async move {
                    let Ok(Ok(mut tls)) = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(sock),
                    )
                    .await
                    else {
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    let peer = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| spiffe_of(c))
                        .unwrap_or_default();
                    let reply = format!("hello {peer}\n");
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Ok(Endpoint {
            local_addr,
            config,
            dir: dir.to_owned(),
            task,
        })
    }

    /// Picks up a renewed certificate or root bundle from the folder.
    pub fn reload(&self) -> Result<(), AgentError> {
        self.config.store(server_config(&self.dir)?);
        Ok(())
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn spiffe_of(der: &CertificateDer<'_>) -> String {
    Certificate::from_der(der.to_vec(), "peer")
        .ok()
        .and_then(|c| {
            c.uris()
                .iter()
                .find(|u| u.starts_with("spiffe://"))
                .cloned()
        })
        .unwrap_or_else(|| "(no SPIFFE ID)".to_owned())
}

/// What a call saw.
#[derive(Debug)]
pub struct CallResult {
    /// The chain the server presented, leaf first.
    pub server_chain: Vec<Certificate>,
    /// The server's answer.
    pub reply: String,
}

#[derive(Debug)]
struct Capture {
    roots: Option<Vec<Certificate>>,
    seen: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let all: Vec<CertificateDer<'static>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        if let Ok(mut s) = self.seen.lock() {
            s.clone_from(&all);
        }
        if let Some(roots) = &self.roots {
            let parsed: Vec<Certificate> = all
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    Certificate::from_der(c.to_vec(), &format!("server certificate {}", i + 1))
                })
                .collect::<Result<_, _>>()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            let when = time::OffsetDateTime::from_unix_timestamp(
                i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            )
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            verify_path(&parsed[0], &parsed[1..], roots, when)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects to `addr` like `openssl s_client -showcerts`: presents the certificate in
/// `client_dir` if given, verifies the server's chain against `roots` if given (otherwise only
/// records it), and reads the server's answer.
pub async fn call(
    addr: &str,
    client_dir: Option<&Path>,
    roots: Option<Vec<Certificate>>,
) -> Result<CallResult, AgentError> {
    let provider = provider();
    let capture = Arc::new(Capture {
        roots,
        seen: Mutex::new(Vec::new()),
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(cred_err)?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone());
    let cfg = match client_dir {
        Some(dir) => {
            let (chain, key, _) = read_dir_creds(dir)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(cred_err)?
        }
        None => builder.with_no_client_auth(),
    };
    let err = |reason: String| AgentError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let sock = tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| err("connection timed out".to_owned()))?
        .map_err(|e| err(e.to_string()))?;
    let name = ServerName::try_from("workload.invalid").map_err(|e| err(e.to_string()))?;
    let mut tls = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, sock),
    )
    .await
    .map_err(|_| err("TLS handshake timed out".to_owned()))?
    .map_err(|e| err(format!("TLS handshake failed: {e}")))?;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tls.read_to_end(&mut reply),
    )
    .await;
    let seen = capture.seen.lock().map(|s| s.clone()).unwrap_or_default();
    let server_chain = seen
        .into_iter()
        .enumerate()
        .map(|(i, d)| Certificate::from_der(d.to_vec(), &format!("server certificate {}", i + 1)))
        .collect::<Result<_, _>>()?;
    Ok(CallResult {
        server_chain,
        reply: String::from_utf8_lossy(&reply).into_owned(),
    })
}
