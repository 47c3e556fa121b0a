//! The one error type of the PKI core. Every variant names the file, field or identity that failed.

use time::OffsetDateTime;

/// Formats a time the way every message of meshca shows it: RFC 3339, UTC, whole seconds.
pub fn show_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&fmt).unwrap_or_else(|_| t.to_string())
}

/// Text from outside (a name in a certificate) as messages show it: control characters escaped,
/// so that it cannot add lines to a message or a log.
pub fn show_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// What went wrong in the PKI core.
///
/// `origin` fields name where the material came from (usually a file path) so that the message
/// can be shown to a user as one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The text is not well-formed PEM, or holds nothing of the kind expected.
    #[error("{origin}: {reason}")]
    Pem {
        /// where the text came from
        origin: String,
        /// what is wrong with it
        reason: String,
    },
    /// A certificate could not be parsed.
    #[error("{origin}: not a valid X.509 certificate: {reason}")]
    BadCertificate {
        /// where the certificate came from
        origin: String,
        /// the parser's reason
        reason: String,
    },
    /// A certificate signing request could not be parsed or its signature does not verify.
    #[error("{origin}: not a valid certificate signing request: {reason}")]
    BadCsr {
        /// where the CSR came from
        origin: String,
        /// why it was refused
        reason: String,
    },
    /// A private key could not be parsed or is of an unsupported kind.
    #[error("{origin}: not a usable private key: {reason}")]
    BadKey {
        /// where the key came from
        origin: String,
        /// why it was refused
        reason: String,
    },
    /// A private key does not belong to the certificate it is paired with.
    #[error("{key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// where the key came from
        key: String,
        /// where the certificate came from
        cert: String,
    },
    /// A certificate that must sign others is not a CA or may not sign certificates.
    #[error("{origin}: cannot sign certificates: {reason}")]
    NotACa {
        /// the certificate that was expected to be a CA
        origin: String,
        /// why it cannot sign
        reason: String,
    },
    /// A certificate is not (correctly) signed by the issuer it is said to have.
    #[error("{cert} is not signed by {issuer}: {reason}")]
    NotSignedBy {
        /// the child certificate
        cert: String,
        /// the expected issuer
        issuer: String,
        /// why the check failed
        reason: String,
    },
    /// No path could be built from a certificate to any trusted root.
    #[error("{cert}: no chain to a trusted root: {reason}")]
    NoPathToRoot {
        /// the certificate whose chain failed
        cert: String,
        /// why the path failed
        reason: String,
    },
    /// A certificate is outside its validity window at the time of the check.
    #[error("{origin}: not valid at {}: valid from {} until {}", show_time(*.now), show_time(*.not_before), show_time(*.not_after))]
    OutsideValidity {
        /// the certificate
        origin: String,
        /// the time of the check
        now: OffsetDateTime,
        /// its notBefore
        not_before: OffsetDateTime,
        /// its notAfter
        not_after: OffsetDateTime,
    },
    /// A certificate is signed with a digest no verifier accepts any more.
    #[error("{origin}: signed with {algorithm}, which Istio's verifier rejects")]
    WeakSignature {
        /// the certificate
        origin: String,
        /// the signature algorithm it uses
        algorithm: String,
    },
    /// A certificate on a CA's path lists extended key usages without serverAuth. Go's verifier
    /// checks the usages nest along the chain, and istiod verifies its `cacerts` for serverAuth.
    #[error(
        "{origin}: extended key usage ({}) excludes serverAuth; istiod refuses such a CA (Go verifies the chain for serverAuth)",
        .usages.join(", ")
    )]
    ServerAuthExcluded {
        /// the certificate
        origin: String,
        /// the usages it lists
        usages: Vec<String>,
    },
    /// A certificate carries a critical extension that Go's verifier does not handle, so Go,
    /// BoringSSL (Envoy) and OpenSSL refuse every chain through it (RFC 5280, section 4.2).
    #[error(
        "{origin} (\"{subject}\"): critical extension {oid} is not one that Go's verifier (istiod) or Envoy handles; they refuse the certificate (RFC 5280, section 4.2)"
    )]
    UnhandledCriticalExtension {
        /// the certificate
        origin: String,
        /// its subject
        subject: String,
        /// the extension's OID, dotted
        oid: String,
    },
    /// A chain file (`cert-chain.pem`, `tls.crt`) is not the signing certificate's path in
    /// order: it is out of order, incomplete, padded with another certificate or another CA's.
    #[error("{file}: {reason}")]
    ChainFile {
        /// the chain file
        file: String,
        /// what is wrong with it
        reason: String,
    },
    /// A CRL file could not be read as CRLs.
    #[error("{origin}: not a valid CRL: {reason}")]
    BadCrl {
        /// the CRL file (and the CRL's place in it)
        origin: String,
        /// why it was refused
        reason: String,
    },
    /// A CRL file lacks a CRL from some CA of the chain.
    #[error(
        "{origin}: no CRL signed by {} of {chain_file}; istiod (PILOT_ENABLE_CA_CRL) and Envoy need one from every CA of the chain",
        .missing.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
    )]
    MissingCrl {
        /// the CRL file
        origin: String,
        /// the chain file whose CAs need CRLs
        chain_file: String,
        /// the subjects of the CAs without a CRL
        missing: Vec<String>,
    },
    /// A CA's pathlen leaves no room for the certificates the signing certificate issues.
    #[error(
        "{origin} (\"{subject}\") has pathlen:{limit}, but {between} CA(s) would sit between it and every certificate the signing certificate issues, so no such chain verifies"
    )]
    NoRoomForLeaf {
        /// the CA whose pathlen is too small
        origin: String,
        /// its subject
        subject: String,
        /// its pathlen
        limit: u32,
        /// the CAs between it and an issued certificate
        between: usize,
    },
    /// A path ends at a certificate of the root bundle that is not self-signed.
    #[error(
        "{origin} (\"{subject}\", issued by \"{issuer}\") is not a root (not self-signed): peers that verify up to a self-signed root (OpenSSL, BoringSSL in Envoy) cannot verify the chains"
    )]
    AnchorNotARoot {
        /// the certificate
        origin: String,
        /// its subject
        subject: String,
        /// its issuer
        issuer: String,
    },
    /// A lifetime that is zero or negative.
    #[error("{field} must be at least 1 day, got {days}")]
    BadLifetime {
        /// the variable or flag that carries it
        field: String,
        /// the value given
        days: i64,
    },
    /// A certificate would be valid for longer than the certificate that signs it.
    #[error(
        "{child} would be valid until {} but its issuer {issuer} expires at {}; shorten {field}",
        show_time(*.child_not_after),
        show_time(*.issuer_not_after)
    )]
    OutlivesIssuer {
        /// the certificate being made
        child: String,
        /// the issuer
        issuer: String,
        /// the variable or flag that sets the child's lifetime
        field: String,
        /// when the child would expire
        child_not_after: OffsetDateTime,
        /// when the issuer expires
        issuer_not_after: OffsetDateTime,
    },
    /// A key type or size that meshca does not make or accept.
    #[error("{field}: unsupported key type {value:?} ({reason})")]
    UnsupportedKeyType {
        /// the variable or flag
        field: String,
        /// the value given
        value: String,
        /// what is accepted
        reason: String,
    },
    /// A name (trust domain, namespace, service account, DNS name) that is not well formed.
    #[error("{field}: invalid value {value:?}: {reason}")]
    InvalidName {
        /// the variable, flag or field
        field: String,
        /// the value given
        value: String,
        /// what is wrong with it
        reason: String,
    },
    /// The crypto library refused to generate a key or make a signature.
    #[error("{what}: {reason}")]
    Crypto {
        /// what was being done
        what: String,
        /// the library's reason
        reason: String,
    },
}
