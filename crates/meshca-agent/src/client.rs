//! Getting a certificate from the CA: key, CSR, `CreateCertificate`, the answer checked against
//! the root before anything is written, and the files written atomically (key at 0600).

use std::path::Path;

use base64::Engine;
use meshca_ca::proto::IstioCertificateRequest;
use meshca_ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_pki::{
    Certificate, KeyType, PkiError, PrivateKey, SpiffeId, TrustDomain, make_csr_pem, verify_path,
};
use time::OffsetDateTime;
use tonic::transport::{Channel, ClientTlsConfig, Identity};

/// `cert-chain.pem`: the leaf, its intermediates and the root bundle, as istio-agent writes it
/// and Envoy presents it.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// `key.pem`: the private key.
pub const KEY: &str = "key.pem";
/// `root-cert.pem`: the root bundle.
pub const ROOT_CERT: &str = "root-cert.pem";

/// Why a certificate was not obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The CA could not be reached.
    #[error("CA {addr}: {reason}")]
    Connect {
        /// the CA address
        addr: String,
        /// why
        reason: String,
    },
    /// The CA did not answer in time (connecting, the TLS handshake and the call together).
    #[error("CA {addr}: no answer within {after:?}")]
    Timeout {
        /// the CA address
        addr: String,
        /// how long the agent waited
        after: std::time::Duration,
    },
    /// The CA refused.
    #[error("CA {addr} refused: {code:?}: {message}")]
    Refused {
        /// the CA address
        addr: String,
        /// the gRPC status code
        code: tonic::Code,
        /// its message
        message: String,
    },
    /// The CA's answer did not check out.
    #[error("CA {addr} answered with an unusable chain: {reason}")]
    BadAnswer {
        /// the CA address
        addr: String,
        /// what is wrong
        reason: String,
    },
    /// A credential could not be used.
    #[error("{0}")]
    Credential(String),
    /// PKI work failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Writing failed.
    #[error(transparent)]
    Store(#[from] meshca_store::StoreError),
}

/// How the agent proves who it is.
#[derive(Clone)]
pub enum Credential {
    /// A service-account JWT, sent as `authorization: Bearer`.
    Token(String),
    /// The current certificate chain and key, presented as a TLS client certificate.
    ClientCert {
        /// PEM chain, leaf first
        chain_pem: String,
        /// PEM key
        key_pem: String,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Token(_) => f.write_str("Token(...)"),
            Credential::ClientCert { .. } => f.write_str("ClientCert(...)"),
        }
    }
}

/// One certificate request.
#[derive(Clone, Debug)]
pub struct Request {
    /// CA address, `host:port`.
    pub ca_addr: String,
    /// PEM roots to trust for the CA's serving certificate.
    pub ca_root_pem: String,
    /// The name on the CA's serving certificate.
    pub server_name: String,
    /// The identity to ask for.
    pub identity: SpiffeId,
    /// The key to make.
    pub key_type: KeyType,
    /// Requested lifetime in seconds (0 for the CA's default).
    pub ttl_seconds: i64,
    /// How to authenticate.
    pub credential: Credential,
    /// The `clusterid` metadata, if any.
    pub cluster_id: Option<String>,
}

/// How long connecting to the CA, the TLS handshake and the call may take together, unless
/// told otherwise ([`obtain_within`]).
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The longest a connection (TCP and TLS) may take when the whole request may take longer.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A certificate that checked out.
#[derive(Debug)]
pub struct Issued {
    /// The new key.
    pub key: PrivateKey,
    /// Leaf first, then intermediates (the path checked against the roots).
    pub chain: Vec<Certificate>,
    /// The root bundle as the CA sent it.
    pub roots_pem: String,
    /// Every element of the answer concatenated, the root bundle last: what istio-agent keeps
    /// as the workload chain (`concatCerts` in its secret cache) and Envoy presents, so a peer
    /// running `openssl s_client -showcerts` sees the root too.
    pub chain_pem: String,
}

impl Issued {
    /// The leaf.
    pub fn leaf(&self) -> &Certificate {
        &self.chain[0]
    }
}

/// The identity a Kubernetes service-account token names (read, not verified: the CA verifies it).
pub fn identity_from_token(
    token: &str,
    trust_domain: &TrustDomain,
) -> Result<SpiffeId, AgentError> {
    let bad = |r: &str| AgentError::Credential(format!("token: {r}"));
    let payload = token.split('.').nth(1).ok_or_else(|| bad("not a JWT"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| bad("payload is not base64url"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| bad("payload is not JSON"))?;
    let (ns, sa) = match (
        v.pointer("/kubernetes.io/namespace")
            .and_then(|x| x.as_str()),
        v.pointer("/kubernetes.io/serviceaccount/name")
            .and_then(|x| x.as_str()),
    ) {
        (Some(ns), Some(sa)) => (ns.to_owned(), sa.to_owned()),
        _ => {
            let sub = v
                .get("sub")
                .and_then(|s| s.as_str())
                .ok_or_else(|| bad("no service account claims"))?;
            let rest = sub
                .strip_prefix("system:serviceaccount:")
                .ok_or_else(|| bad("subject is not a service account"))?;
            let (ns, sa) = rest
                .split_once(':')
                .ok_or_else(|| bad("subject is not a service account"))?;
            (ns.to_owned(), sa.to_owned())
        }
    };
    Ok(SpiffeId::workload(trust_domain, &ns, &sa)?)
}

/// Asks the CA for a certificate and checks the answer: at least a leaf and a root, the leaf
/// for our key and our identity, verifying to a root of the bundle sent; within
/// [`DEFAULT_TIMEOUT`].
pub async fn obtain(req: &Request, now: OffsetDateTime) -> Result<Issued, AgentError> {
    obtain_within(req, now, DEFAULT_TIMEOUT).await
}

/// [`obtain`], connecting, the TLS handshake and the call taking at most `timeout` together: a
/// CA that accepts the connection and then says nothing costs `timeout`, never more.
pub async fn obtain_within(
    req: &Request,
    now: OffsetDateTime,
    timeout: std::time::Duration,
) -> Result<Issued, AgentError> {
    tokio::time::timeout(timeout, exchange(req, now, timeout))
        .await
        .map_err(|_| AgentError::Timeout {
            addr: req.ca_addr.clone(),
            after: timeout,
        })?
}

async fn exchange(
    req: &Request,
    now: OffsetDateTime,
    timeout: std::time::Duration,
) -> Result<Issued, AgentError> {
    let connect_err = |reason: String| AgentError::Connect {
        addr: req.ca_addr.clone(),
        reason,
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&req.ca_root_pem))
        .domain_name(req.server_name.clone());
    if let Credential::ClientCert { chain_pem, key_pem } = &req.credential {
        tls = tls.identity(Identity::from_pem(chain_pem, key_pem));
    }
    let mut endpoint = Channel::from_shared(format!("https://{}", req.ca_addr))
        .map_err(|e| connect_err(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| connect_err(e.to_string()))?;
    // The whole exchange is bounded by `timeout` in `obtain_within`; a shorter bound on
    // connecting applies only when it is shorter, so that one timeout names what happened.
    if CONNECT_TIMEOUT < timeout {
        endpoint = endpoint.connect_timeout(CONNECT_TIMEOUT);
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| connect_err(format!("{e}{}", source_chain(&e))))?;
    let key = PrivateKey::generate(req.key_type)?;
    let csr = make_csr_pem(&key, &[req.identity.to_string()])?;
    let mut grpc = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: req.ttl_seconds,
        metadata: None,
    });
    if let Credential::Token(t) = &req.credential {
        let v = format!("Bearer {t}").parse().map_err(|_| {
            AgentError::Credential("token holds characters a header cannot carry".to_owned())
        })?;
        grpc.metadata_mut().insert("authorization", v);
    }
    if let Some(c) = &req.cluster_id
        && let Ok(v) = c.parse()
    {
        grpc.metadata_mut().insert("clusterid", v);
    }
    let answer = IstioCertificateServiceClient::new(channel)
        .create_certificate(grpc)
        .await
        .map_err(|s| AgentError::Refused {
            addr: req.ca_addr.clone(),
            code: s.code(),
            message: s.message().to_owned(),
        })?
        .into_inner()
        .cert_chain;
    check_answer(req, key, answer, now)
}

/// The causes of `e`, each as `: cause`, leaving out a cause whose text was already said (the
/// layers under tonic repeat their source's message), so the error stays one short line.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut said = e.to_string();
    let mut s = String::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !said.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
            said.push_str(&text);
        }
        cur = c.source();
    }
    s
}

fn check_answer(
    req: &Request,
    key: PrivateKey,
    answer: Vec<String>,
    now: OffsetDateTime,
) -> Result<Issued, AgentError> {
    let bad = |reason: String| AgentError::BadAnswer {
        addr: req.ca_addr.clone(),
        reason,
    };
    if answer.len() < 2 {
        return Err(bad(format!(
            "{} element(s); a leaf and a root bundle are needed",
            answer.len()
        )));
    }
    let roots_pem = answer[answer.len() - 1].clone();
    let roots = Certificate::all_from_pem(roots_pem.as_bytes(), "root bundle")
        .map_err(|e| bad(e.to_string()))?;
    let mut chain = Vec::new();
    for (i, pem) in answer[..answer.len() - 1].iter().enumerate() {
        chain.extend(
            Certificate::all_from_pem(pem.as_bytes(), &format!("element {}", i + 1))
                .map_err(|e| bad(e.to_string()))?,
        );
    }
    let leaf = &chain[0];
    if !leaf.matches_key(&key) {
        return Err(bad("the leaf is not for the key this agent made".to_owned()));
    }
    let id = req.identity.to_string();
    if !leaf.uris().contains(&id) {
        return Err(bad(format!("the leaf is for {:?}, not {id}", leaf.uris())));
    }
    verify_path(leaf, &chain[1..], &roots, now).map_err(|e| bad(e.to_string()))?;
    Ok(Issued {
        key,
        chain,
        roots_pem,
        chain_pem: concat_elements(&answer),
    })
}

/// istio-agent's `concatCerts`: the elements in order, a newline added between two only where
/// the first does not already end with one.
fn concat_elements(elements: &[String]) -> String {
    let mut out = String::new();
    for (i, e) in elements.iter().enumerate() {
        out.push_str(e);
        if i + 1 < elements.len() && !e.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Writes `cert-chain.pem` (leaf, intermediates, root bundle), `key.pem` (0600) and
/// `root-cert.pem` into `dir`, all or none, swapped in together as a secret volume is (each a
/// link through `..data`): an agent killed at any moment leaves a certificate and its own key.
pub fn write_files(dir: &Path, issued: &Issued) -> Result<(), AgentError> {
    let files = meshca_store::SecretData::from([
        (CERT_CHAIN.to_owned(), issued.chain_pem.clone().into_bytes()),
        (KEY.to_owned(), issued.key.to_pkcs8_pem().into_bytes()),
        (ROOT_CERT.to_owned(), issued.roots_pem.clone().into_bytes()),
    ]);
    meshca_store::folder::replace_folder(dir, &files)?;
    Ok(())
}

/// How often [`read_pair`] reads the files again when it finds a certificate and a key of two
/// different renewals, and how long it waits between tries.
const PAIR_TRIES: u32 = 20;
const PAIR_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// A workload's files as one renewal wrote them.
pub struct Pair {
    /// `cert-chain.pem`, leaf first.
    pub chain: Vec<Certificate>,
    /// `cert-chain.pem` as written.
    pub chain_pem: String,
    /// `key.pem`: the private key of the chain's leaf.
    pub key: PrivateKey,
    /// `key.pem` as written.
    pub key_pem: String,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("chain", &self.chain)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Reads `cert-chain.pem` and `key.pem` of `dir` as one pair. meshca swaps both in at once, but a
/// reader that opens one before a swap and the other after it (or reads files another tool
/// replaces one after the other) sees a certificate of one renewal and the key of another: the
/// pair is then read again, a few times over about 100 ms, before the mismatch is an error.
pub fn read_pair(dir: &Path) -> Result<Pair, AgentError> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).map_err(|e| {
            AgentError::Credential(format!("{}: cannot read: {e}", dir.join(f).display()))
        })
    };
    let mut tries = 0;
    loop {
        let chain_pem = read(CERT_CHAIN)?;
        let key_pem = read(KEY)?;
        let chain = Certificate::all_from_pem(
            chain_pem.as_bytes(),
            &dir.join(CERT_CHAIN).display().to_string(),
        )?;
        let key = PrivateKey::from_pem(key_pem.as_bytes(), &dir.join(KEY).display().to_string())?;
        let Some(leaf) = chain.first() else {
            return Err(AgentError::Credential(format!(
                "{}: no certificate",
                dir.join(CERT_CHAIN).display()
            )));
        };
        if leaf.matches_key(&key) {
            return Ok(Pair {
                chain,
                chain_pem,
                key,
                key_pem,
            });
        }
        tries += 1;
        if tries >= PAIR_TRIES {
            return Err(AgentError::Credential(format!(
                "{}: key.pem is not the key of cert-chain.pem's certificate",
                dir.display()
            )));
        }
        std::thread::sleep(PAIR_PAUSE);
    }
}

/// The certificate currently in `dir`, if any: its chain (leaf first) and key as PEM, and the
/// leaf's validity window.
pub fn current(dir: &Path) -> Option<(String, String, OffsetDateTime, OffsetDateTime)> {
    let pair = read_pair(dir).ok()?;
    let leaf = pair.chain.first()?;
    let (nb, na) = (leaf.not_before(), leaf.not_after());
    Some((pair.chain_pem, pair.key_pem, nb, na))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_said_once() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let refused = || Some(Box::new(E("Connection refused (os error 111)", None)));
        let e = E(
            "transport error",
            Some(Box::new(E(
                "tcp connect error",
                Some(Box::new(E("tcp connect error", refused()))),
            ))),
        );
        assert_eq!(
            source_chain(&e),
            ": tcp connect error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn elements_are_joined_as_istio_agent_joins_them() {
        let e = |s: &str| s.to_owned();
        assert_eq!(
            concat_elements(&[e("leaf\n"), e("ca"), e("root\n")]),
            "leaf\nca\nroot\n"
        );
        assert_eq!(concat_elements(&[e("leaf"), e("root")]), "leaf\nroot");
        assert_eq!(concat_elements(&[]), "");
    }
}
