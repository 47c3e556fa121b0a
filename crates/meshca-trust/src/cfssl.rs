//! The client of an external signer that speaks cfssl's HTTP API (`cfssl serve`), so that a root
//! key can stay in its own machine: `info` tells the signer's certificate, `sign` (or `authsign`,
//! authenticated with an HMAC-SHA256 of the request under the profile's auth key) signs an
//! intermediate CA for a CSR. Every answer is checked before it is handed out: a CA that may
//! sign certificates, signed by the certificate `info` reported, for the key of the CSR.
//!
//! Requests go over plain HTTP/1.1 or, for `https://` URLs, over rustls with the aws-lc-rs
//! provider and only the roots of the configured `ca_file`. No proxy is used and no redirect
//! is followed: the signer is reached directly or not at all.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use meshca_pki::{Certificate, CertificateRequest, PkiError, PrivateKey, Subject};
use rcgen::PublicKeyData;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How long to wait for the connection, and then for each part of the exchange.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The most one whole exchange with the signer may take.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(30);
/// Answers larger than this are not cfssl's: a certificate answer is a few kilobytes.
const MAX_ANSWER: u64 = 1 << 20;
/// Where cfssl serves its API under the configured URL.
const API_PATH: &str = "/api/v1/cfssl";

/// Where and how to reach a cfssl signer.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CfsslConfig {
    /// `http://host:port` or `https://host:port` of `cfssl serve`, without the API path.
    pub url: String,
    /// The profile's auth key in hex (cfssl's `auth_keys.<name>.key`). When set, requests go to
    /// `authsign`; otherwise to `sign`, which cfssl refuses for profiles that have an `auth_key`.
    pub auth_key_hex: Option<String>,
    /// The signing profile; `None` for cfssl's default profile.
    pub profile: Option<String>,
    /// The signer label of a multi-root cfssl; `None` for its only or default signer.
    pub label: Option<String>,
    /// PEM CA certificates to trust for an `https` URL (required there, refused for `http`).
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for CfsslConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CfsslConfig")
            .field("url", &self.url)
            .field("auth_key_hex", &self.auth_key_hex.as_ref().map(|_| "..."))
            .field("profile", &self.profile)
            .field("label", &self.label)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The cfssl endpoints meshca calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `info`: the signer's certificate for a label and profile.
    Info,
    /// `sign`: unauthenticated signing.
    Sign,
    /// `authsign`: signing with an HMAC token.
    AuthSign,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Info => "info",
            Endpoint::Sign => "sign",
            Endpoint::AuthSign => "authsign",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of the `errors` list of a cfssl answer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CfsslMessage {
    /// cfssl's error code (its `errorcode` table, or the HTTP status for bad requests).
    pub code: i64,
    /// cfssl's message.
    pub message: String,
}

/// Why talking to a cfssl signer failed. `signer` reads like
/// `cfssl at http://127.0.0.1:8888 (profile intermediate)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CfsslError {
    /// The configuration cannot be used; nothing was sent.
    #[error("{origin}: {reason}")]
    Config {
        /// where the configuration came from
        origin: String,
        /// what is wrong with it
        reason: String,
    },
    /// The CSR handed to [`CfsslSigner::sign_ca`] cannot be sent; nothing was sent.
    #[error("{what}: the CSR cannot be sent to {signer}: {reason}")]
    Csr {
        /// the signer
        signer: String,
        /// the certificate being asked for
        what: String,
        /// what is wrong with the CSR
        reason: String,
    },
    /// Nothing listens at the URL.
    #[error("{signer}: {endpoint}: connection refused (is `cfssl serve` listening there?)")]
    ConnectionRefused {
        /// the signer
        signer: String,
        /// the endpoint called
        endpoint: Endpoint,
    },
    /// The peer closed or reset the connection before a whole answer.
    #[error("{signer}: {endpoint}: the server closed the connection without answering")]
    HungUp {
        /// the signer
        signer: String,
        /// the endpoint called
        endpoint: Endpoint,
    },
    /// The signer did not answer in time.
    #[error("{signer}: {endpoint}: no answer within {seconds} s ({stage})")]
    Timeout {
        /// the signer
        signer: String,
        /// the endpoint called
        endpoint: Endpoint,
        /// what was being waited for
        stage: String,
        /// the limit that ran out
        seconds: u64,
    },
    /// Another failure to connect or exchange bytes (name resolution, TLS, not HTTP).
    #[error("{signer}: {endpoint}: {reason}")]
    Transport {
        /// the signer
        signer: String,
        /// the endpoint called
        endpoint: Endpoint,
        /// what failed
        reason: String,
    },
    /// An HTTP status other than 200, without a cfssl error answer.
    #[error("{signer}: {endpoint}: HTTP status {status}: {body}")]
    HttpStatus {
        /// the signer
        signer: String,
        /// the endpoint called
        endpoint: Endpoint,
        /// the HTTP status
        status: u16,
        /// the start of the answer, on one line
        body: String,
    },
    /// cfssl answered `success: false`.
    #[error("{signer}: {endpoint} refused the request: {}", show_messages(.errors))]
    Refused {
        /// the signer
        signer: String,
        /// the endpoint called
        endpoint: Endpoint,
        /// the HTTP status
        status: u16,
        /// cfssl's `errors`
        errors: Vec<CfsslMessage>,
    },
    /// The answer is not in cfssl's JSON shape.
    #[error("{signer}: {endpoint}: the answer is not cfssl's JSON: {reason}")]
    BadAnswer {
        /// the signer
        signer: String,
        /// the endpoint called
        endpoint: Endpoint,
        /// what is wrong with it
        reason: String,
    },
    /// The certificate in an answer cannot be read.
    #[error("{signer}: {endpoint}: {error}")]
    BadCertificate {
        /// the signer
        signer: String,
        /// the endpoint called
        endpoint: Endpoint,
        /// the parser's error
        error: Box<PkiError>,
    },
    /// A certificate that cfssl returned is not one meshca can use.
    #[error("{signer}: {what} {reason}")]
    Rejected {
        /// the signer
        signer: String,
        /// which certificate
        what: String,
        /// why it is refused, with what to change
        reason: String,
    },
}

fn show_messages(errors: &[CfsslMessage]) -> String {
    if errors.is_empty() {
        return "no reason given".to_owned();
    }
    errors
        .iter()
        .map(|e| {
            // The server's words, on the message's one line.
            let message = meshca_pki::error::show_text(&e.message);
            format!("{message} (cfssl error {})", e.code)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A cfssl signer that answered `info`, with the certificate it signs with.
pub struct CfsslSigner {
    client: Client,
    auth_key: Option<Vec<u8>>,
    profile: Option<String>,
    label: Option<String>,
    cert: Certificate,
}

impl fmt::Debug for CfsslSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CfsslSigner")
            .field("signer", &self.client.signer)
            .field("auth_key", &self.auth_key.as_ref().map(|_| "..."))
            .field("cert", &self.cert)
            .finish()
    }
}

impl CfsslSigner {
    /// Checks `config` (`origin` names it in errors), calls `info` with its label and profile,
    /// and keeps the certificate the signer reports, which must be a CA.
    pub fn connect(config: CfsslConfig, origin: &str) -> Result<Self, CfsslError> {
        let bad = |reason: String| CfsslError::Config {
            origin: origin.to_owned(),
            reason,
        };
        let url = config.url.trim();
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad(format!(
                "cfssl url {:?} must start with http:// or https://",
                config.url
            )));
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.starts_with('/') {
            return Err(bad(format!("cfssl url {:?} names no host", config.url)));
        }
        let base = format!("{}://{rest}", if tls { "https" } else { "http" });
        let auth_key = match config.auth_key_hex.as_deref().map(str::trim) {
            None => None,
            Some(hex) => Some(decode_hex(hex).filter(|k| !k.is_empty()).ok_or_else(|| {
                bad(
                    "cfssl auth key must be a non-empty, even number of hex digits (the \
                     auth_keys.<name>.key of cfssl's config)"
                        .to_owned(),
                )
            })?),
        };
        let roots = match (tls, &config.ca_file) {
            (true, Some(path)) => {
                let shown = path.display().to_string();
                let text =
                    std::fs::read(path).map_err(|e| bad(format!("cfssl ca_file {shown}: {e}")))?;
                let certs = Certificate::all_from_pem(&text, &shown)
                    .map_err(|e| bad(format!("cfssl ca_file: {e}")))?;
                certs
                    .iter()
                    .map(|c| ureq::tls::Certificate::from_der(c.der()).to_owned())
                    .collect()
            }
            (true, None) => {
                return Err(bad(format!(
                    "cfssl url {base} is https but no ca_file says which CA signed its TLS \
                     certificate"
                )));
            }
            (false, Some(path)) => {
                return Err(bad(format!(
                    "cfssl ca_file {} is set but the url {base} is plain http; use https://",
                    path.display()
                )));
            }
            (false, None) => Vec::new(),
        };
        let profile = config.profile.filter(|p| !p.is_empty());
        let label = config.label.filter(|l| !l.is_empty());
        let signer = describe(&base, profile.as_deref(), label.as_deref());
        let client = Client {
            agent: agent(roots),
            base,
            signer,
        };

        let cert = client
            .call(
                Endpoint::Info,
                &to_json(&InfoRequest {
                    label: label.as_deref(),
                    profile: profile.as_deref(),
                }),
                "signer certificate",
            )?
            .with_origin(&format!("{} signer certificate", client.signer));
        if !cert.can_sign_certificates() {
            return Err(CfsslError::Rejected {
                signer: client.signer.clone(),
                what: format!("the signer's certificate ({})", cert.subject()),
                reason: "is not a CA that may sign certificates".to_owned(),
            });
        }
        Ok(CfsslSigner {
            client,
            auth_key,
            profile,
            label,
            cert,
        })
    }

    /// The certificate the signer signs with, as `info` reported it.
    pub fn cert(&self) -> &Certificate {
        &self.cert
    }

    /// How the signer is named in messages: `cfssl at URL (profile P)`.
    pub fn name(&self) -> &str {
        &self.client.signer
    }

    /// Has the signer sign `csr_pem` (a CSR for `expected_key`, made for example with
    /// [`intermediate_csr_pem`]) with the configured profile, through `authsign` when an auth
    /// key is set and `sign` otherwise. The certificate is returned only if it is a CA that may
    /// sign certificates, has a subject, is signed by [`Self::cert`], and is for `expected_key`.
    /// `what` names the certificate in errors and becomes its origin.
    pub fn sign_ca(
        &self,
        csr_pem: &str,
        expected_key: &impl PublicKeyData,
        what: &str,
    ) -> Result<Certificate, CfsslError> {
        let signer = &self.client.signer;
        let csr_error = |reason: String| CfsslError::Csr {
            signer: signer.clone(),
            what: what.to_owned(),
            reason,
        };
        let csr = CertificateRequest::from_pem(csr_pem.as_bytes(), what)
            .map_err(|e| csr_error(e.to_string()))?;
        if csr.public_key().der_bytes() != expected_key.der_bytes() {
            return Err(csr_error("it is not for the expected key".to_owned()));
        }
        let request = to_json(&SignRequest {
            certificate_request: csr_pem,
            profile: self.profile.as_deref(),
            label: self.label.as_deref(),
        });
        let (endpoint, body) = match &self.auth_key {
            None => (Endpoint::Sign, request),
            Some(key) => (Endpoint::AuthSign, authenticated_request(key, &request)),
        };
        let cert = self.client.call(endpoint, &body, what)?;

        let reject = |reason: String| CfsslError::Rejected {
            signer: signer.clone(),
            what: format!("the certificate signed for {what}"),
            reason,
        };
        if !cert.is_ca() {
            return Err(reject(
                "is not a CA; the profile needs ca_constraint.is_ca".to_owned(),
            ));
        }
        if !cert.can_sign_certificates() {
            return Err(reject(
                "may not sign certificates (keyUsage without keyCertSign); the profile's usages \
                 need \"cert sign\""
                    .to_owned(),
            ));
        }
        cert.check_signed_by(&self.cert).map_err(|e| {
            reject(format!(
                "does not chain to the certificate info reported: {e}"
            ))
        })?;
        if cert.x509().public_key().subject_public_key.data.as_ref() != expected_key.der_bytes() {
            return Err(reject(
                "is for another public key than the CSR's".to_owned(),
            ));
        }
        if cert.x509().subject().iter().next().is_none() {
            return Err(reject(
                "has an empty subject, which no certificate it signs could name as issuer; put \
                 the subject in the CSR"
                    .to_owned(),
            ));
        }
        Ok(cert)
    }
}

/// Makes the PEM CSR of an intermediate CA for `key`, carrying `subject` (for `meshca trust`,
/// `O=<org>, L=<cluster>, CN=Intermediate CA`): cfssl copies the CSR's subject into the
/// certificate, and [`meshca_pki::make_csr_pem`] makes CSRs with an empty subject, for leaves.
pub fn intermediate_csr_pem(key: &PrivateKey, subject: &Subject) -> Result<String, PkiError> {
    let mut dn = rcgen::DistinguishedName::new();
    // meshca's subject order (O, CN, L), as the Makefile writes it.
    let fields = [
        (rcgen::DnType::OrganizationName, &subject.organization),
        (rcgen::DnType::CommonName, &subject.common_name),
        (rcgen::DnType::LocalityName, &subject.locality),
    ];
    let mut empty = true;
    for (kind, value) in fields {
        if let Some(v) = value {
            dn.push(kind, v.as_str());
            empty = false;
        }
    }
    if empty {
        return Err(PkiError::InvalidName {
            field: "intermediate CSR subject".to_owned(),
            value: String::new(),
            reason: "an intermediate CA needs a subject".to_owned(),
        });
    }
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = dn;
    let crypto = |what: &str, e: rcgen::Error| PkiError::Crypto {
        what: what.to_owned(),
        reason: e.to_string(),
    };
    params
        .serialize_request(key)
        .map_err(|e| crypto("making an intermediate CSR", e))?
        .pem()
        .map_err(|e| crypto("encoding an intermediate CSR", e))
}

/// The HTTP side: one agent, the base URL, and the signer's name for messages.
struct Client {
    agent: ureq::Agent,
    base: String,
    signer: String,
}

impl Client {
    fn call(&self, endpoint: Endpoint, body: &[u8], what: &str) -> Result<Certificate, CfsslError> {
        let url = format!("{}{API_PATH}/{endpoint}", self.base);
        let mut response = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| transport_error(&self.signer, endpoint, e))?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| transport_error(&self.signer, endpoint, e))?;
        parse_certificate_answer(&self.signer, endpoint, status, &bytes, what)
    }
}

/// Reads cfssl's answer to `info`, `sign` or `authsign` (its HTTP `status` and `body`): the one
/// PEM certificate of its result, named `what`. Sans-IO, so that answers can be tested and fuzzed
/// without a server.
pub fn parse_certificate_answer(
    signer: &str,
    endpoint: Endpoint,
    status: u16,
    body: &[u8],
    what: &str,
) -> Result<Certificate, CfsslError> {
    let answer: CertificateResult = read_answer(signer, endpoint, status, body)?;
    Certificate::one_from_pem(answer.certificate.as_bytes(), what).map_err(|error| {
        CfsslError::BadCertificate {
            signer: signer.to_owned(),
            endpoint,
            error: Box::new(error),
        }
    })
}

fn agent(roots: Vec<ureq::tls::Certificate<'static>>) -> ureq::Agent {
    // Roots are always given explicitly: ureq's built-in default would be a root list meshca
    // does not ship. For http URLs the list is empty and unused.
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent("meshca")
        .timeout_connect(Some(TIMEOUT))
        .timeout_send_request(Some(TIMEOUT))
        .timeout_send_body(Some(TIMEOUT))
        .timeout_recv_response(Some(TIMEOUT))
        .timeout_recv_body(Some(TIMEOUT))
        .timeout_global(Some(EXCHANGE_LIMIT))
        .tls_config(tls)
        .build()
        .new_agent()
}

fn transport_error(signer: &str, endpoint: Endpoint, error: ureq::Error) -> CfsslError {
    use std::io::ErrorKind;
    let signer = signer.to_owned();
    let other = |reason: String| CfsslError::Transport {
        signer: signer.clone(),
        endpoint,
        reason,
    };
    let timeout = |stage: &str, limit: Duration| CfsslError::Timeout {
        signer: signer.clone(),
        endpoint,
        stage: stage.to_owned(),
        seconds: limit.as_secs(),
    };
    match error {
        ureq::Error::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
            other(format!("TLS: {e}"))
        }
        ureq::Error::Io(e) => match e.kind() {
            ErrorKind::ConnectionRefused => CfsslError::ConnectionRefused {
                signer: signer.clone(),
                endpoint,
            },
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => CfsslError::HungUp {
                signer: signer.clone(),
                endpoint,
            },
            ErrorKind::TimedOut | ErrorKind::WouldBlock => timeout("reading or writing", TIMEOUT),
            _ => other(e.to_string()),
        },
        ureq::Error::Timeout(t) => match t {
            ureq::Timeout::Resolve => timeout("resolving the host name", TIMEOUT),
            ureq::Timeout::Connect => timeout("connecting", TIMEOUT),
            ureq::Timeout::SendRequest | ureq::Timeout::SendBody => {
                timeout("sending the request", TIMEOUT)
            }
            ureq::Timeout::RecvResponse => timeout("waiting for the answer", TIMEOUT),
            ureq::Timeout::RecvBody => timeout("reading the answer", TIMEOUT),
            ureq::Timeout::Global => timeout("the whole exchange", EXCHANGE_LIMIT),
            other_timeout => timeout(&other_timeout.to_string(), TIMEOUT),
        },
        ureq::Error::HostNotFound => other("host name not found".to_owned()),
        ureq::Error::ConnectionFailed => other("could not connect".to_owned()),
        ureq::Error::Protocol(e) => other(format!("the answer is not HTTP/1.1: {e}")),
        ureq::Error::Rustls(e) => other(format!("TLS: {e}")),
        ureq::Error::BodyExceedsLimit(_) => CfsslError::BadAnswer {
            signer: signer.clone(),
            endpoint,
            reason: format!("larger than {MAX_ANSWER} bytes"),
        },
        ureq::Error::BadUri(u) => other(format!("bad URL: {u}")),
        e => other(e.to_string()),
    }
}

/// Reads a cfssl answer: `{"success", "result", "errors", "messages"}`. A refusal is reported
/// with cfssl's errors whatever the HTTP status; anything else than 200 with a result is an
/// error.
fn read_answer<T: DeserializeOwned>(
    signer: &str,
    endpoint: Endpoint,
    status: u16,
    body: &[u8],
) -> Result<T, CfsslError> {
    let bad = |reason: String| CfsslError::BadAnswer {
        signer: signer.to_owned(),
        endpoint,
        reason,
    };
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(_) if status != 200 => {
            return Err(CfsslError::HttpStatus {
                signer: signer.to_owned(),
                endpoint,
                status,
                body: one_line(body),
            });
        }
        Err(e) => return Err(bad(format!("{e}; it starts with {:?}", one_line(body)))),
    };
    if !answer.success {
        return Err(CfsslError::Refused {
            signer: signer.to_owned(),
            endpoint,
            status,
            errors: answer.errors,
        });
    }
    if status != 200 {
        return Err(CfsslError::HttpStatus {
            signer: signer.to_owned(),
            endpoint,
            status,
            body: one_line(body),
        });
    }
    serde_json::from_value(answer.result).map_err(|e| bad(format!("result: {e}")))
}

/// The first 200 characters of an answer, on one line, for messages.
fn one_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if text.chars().count() > 200 {
        line.push_str("...");
    }
    line.trim().to_owned()
}

fn describe(url: &str, profile: Option<&str>, label: Option<&str>) -> String {
    match (profile, label) {
        (Some(p), Some(l)) => format!("cfssl at {url} (profile {p}, label {l})"),
        (Some(p), None) => format!("cfssl at {url} (profile {p})"),
        (None, Some(l)) => format!("cfssl at {url} (default profile, label {l})"),
        (None, None) => format!("cfssl at {url} (default profile)"),
    }
}

/// cfssl's `authsign` envelope: the request JSON and its HMAC-SHA256 under the auth key, both
/// base64 (Go's encoding of byte slices in JSON).
fn authenticated_request(key: &[u8], request: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let token = aws_lc_rs::hmac::sign(&key, request);
    to_json(&AuthenticatedRequest {
        token: BASE64.encode(token.as_ref()),
        request: BASE64.encode(request),
    })
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    // The request types hold only strings, which always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16);
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

#[derive(Serialize)]
struct InfoRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a str>,
}

#[derive(Serialize)]
struct SignRequest<'a> {
    certificate_request: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
}

#[derive(Serialize)]
struct AuthenticatedRequest {
    token: String,
    request: String,
}

#[derive(Deserialize)]
struct Answer {
    success: bool,
    #[serde(default)]
    result: serde_json::Value,
    #[serde(default)]
    errors: Vec<CfsslMessage>,
}

/// The result of `info`, `sign` and `authsign` alike.
#[derive(Debug, Deserialize)]
struct CertificateResult {
    certificate: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SIGNER: &str = "cfssl at http://127.0.0.1:8888 (profile intermediate)";

    fn answer(status: u16, body: &str) -> Result<CertificateResult, CfsslError> {
        read_answer(SIGNER, Endpoint::Sign, status, body.as_bytes())
    }

    #[test]
    fn answers_are_read_in_cfssls_shape() {
        let ok = answer(
            200,
            r#"{"success":true,"result":{"certificate":"PEM"},"errors":[],"messages":[]}"#,
        )
        .unwrap();
        assert_eq!(ok.certificate, "PEM");

        let refused = answer(
            400,
            r#"{"success":false,"result":null,"errors":[{"code":400,"message":"invalid token"}],"messages":[]}"#,
        )
        .unwrap_err();
        assert!(matches!(refused, CfsslError::Refused { status: 400, .. }));
        assert_eq!(
            refused.to_string(),
            format!("{SIGNER}: sign refused the request: invalid token (cfssl error 400)")
        );

        let two_lines = answer(
            400,
            r#"{"success":false,"errors":[{"code":400,"message":"invalid\ntoken"}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            two_lines.to_string(),
            format!("{SIGNER}: sign refused the request: invalid\\ntoken (cfssl error 400)")
        );

        let html = answer(502, "<html>\nBad Gateway\n</html>").unwrap_err();
        assert_eq!(
            html.to_string(),
            format!("{SIGNER}: sign: HTTP status 502: <html> Bad Gateway </html>")
        );

        let not_json = answer(200, "hello").unwrap_err().to_string();
        assert!(not_json.contains("not cfssl's JSON"), "{not_json}");
        assert!(not_json.contains("\"hello\""), "{not_json}");

        let no_success = answer(200, r#"{"result":{"certificate":"x"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            no_success.contains("missing field `success`"),
            "{no_success}"
        );

        let no_cert = answer(200, r#"{"success":true,"result":{"cert":"x"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            no_cert.contains("result: missing field `certificate`"),
            "{no_cert}"
        );

        let odd = answer(500, r#"{"success":true,"result":{"certificate":"x"}}"#).unwrap_err();
        assert!(matches!(odd, CfsslError::HttpStatus { status: 500, .. }));
    }

    #[test]
    fn the_authsign_token_is_hmac_sha256_of_the_request_bytes() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = decode_hex("4a656665").unwrap();
        let request = b"what do ya want for nothing?";
        let envelope: serde_json::Value =
            serde_json::from_slice(&authenticated_request(&key, request)).unwrap();
        let token = BASE64.decode(envelope["token"].as_str().unwrap()).unwrap();
        assert_eq!(
            token,
            decode_hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843").unwrap()
        );
        let carried = BASE64
            .decode(envelope["request"].as_str().unwrap())
            .unwrap();
        assert_eq!(carried, request);
    }

    #[test]
    fn hex_keys_are_decoded_strictly() {
        assert_eq!(decode_hex("00ffA0"), Some(vec![0, 255, 160]));
        assert_eq!(decode_hex(""), Some(vec![]));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
    }

    #[test]
    fn unusable_configs_are_refused_before_anything_is_sent() {
        let refuse = |config: CfsslConfig| {
            CfsslSigner::connect(config, "policy.yaml")
                .unwrap_err()
                .to_string()
        };
        let base = CfsslConfig {
            url: "http://127.0.0.1:9".to_owned(),
            ..CfsslConfig::default()
        };
        let e = refuse(CfsslConfig {
            url: "127.0.0.1:8888".to_owned(),
            ..base.clone()
        });
        assert!(e.starts_with("policy.yaml: cfssl url"), "{e}");
        assert!(e.contains("http:// or https://"), "{e}");
        let e = refuse(CfsslConfig {
            url: "http://".to_owned(),
            ..base.clone()
        });
        assert!(e.contains("names no host"), "{e}");
        let e = refuse(CfsslConfig {
            auth_key_hex: Some("not hex".to_owned()),
            ..base.clone()
        });
        assert!(e.contains("hex digits"), "{e}");
        let e = refuse(CfsslConfig {
            url: "https://127.0.0.1:9".to_owned(),
            ..base.clone()
        });
        assert!(e.contains("no ca_file"), "{e}");
        let e = refuse(CfsslConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..base.clone()
        });
        assert!(e.contains("plain http"), "{e}");
        let e = refuse(CfsslConfig {
            url: "https://127.0.0.1:9".to_owned(),
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..base
        });
        assert!(
            e.starts_with("policy.yaml: cfssl ca_file /nonexistent/ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn the_auth_key_never_shows_in_debug() {
        let config = CfsslConfig {
            url: "http://127.0.0.1:8888".to_owned(),
            auth_key_hex: Some("00112233".to_owned()),
            ..CfsslConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("00112233"), "{shown}");
        assert!(shown.contains("\"...\""), "{shown}");
    }

    #[test]
    fn intermediate_csrs_carry_the_subject_and_the_key() {
        let key = PrivateKey::generate(meshca_pki::KeyType::EcdsaP256).unwrap();
        let subject = Subject {
            organization: Some("Acme".to_owned()),
            common_name: Some("Intermediate CA".to_owned()),
            locality: Some("east-1".to_owned()),
        };
        let pem = intermediate_csr_pem(&key, &subject).unwrap();
        let csr = CertificateRequest::from_pem(pem.as_bytes(), "csr").unwrap();
        assert_eq!(csr.public_key().der_bytes(), key.public_key_raw());
        let der = meshca_pki::pem::parse_sections(pem.as_bytes(), "csr")
            .unwrap()
            .remove(0)
            .der;
        for part in [&b"Acme"[..], b"Intermediate CA", b"east-1"] {
            assert!(der.windows(part.len()).any(|w| w == part));
        }
        let none = intermediate_csr_pem(&key, &Subject::default())
            .unwrap_err()
            .to_string();
        assert!(none.contains("needs a subject"), "{none}");
    }
}
