//! The one error type of the token crate. Every variant is one line that names the key file,
//! JWKS, claim, issuer or key id that failed.

use meshca_pki::PkiError;
use meshca_pki::error::show_time;
use time::OffsetDateTime;

/// What went wrong while reading keys, minting or verifying a token.
///
/// Verification errors deliberately say which check refused the token, so that the CA can log
/// why a workload was turned away; none of them carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// An error of the PKI core: damaged PEM, or a namespace or service-account name that cannot
    /// stand in a SPIFFE ID.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A private key could not be read or cannot sign ES256 or RS256.
    #[error("{origin}: not a usable token signing key: {reason}")]
    BadKey {
        /// where the key came from
        origin: String,
        /// why it was refused
        reason: String,
    },
    /// The crypto library refused to make a signature.
    #[error("{what}: {reason}")]
    Crypto {
        /// what was being done
        what: String,
        /// the library's reason
        reason: String,
    },
    /// A JWKS document is not valid JSON or holds a malformed key.
    #[error("{origin}: not a valid JWKS: {reason}")]
    BadJwks {
        /// where the document came from
        origin: String,
        /// what is wrong with it
        reason: String,
    },
    /// The token is longer than the verifier reads.
    #[error("token is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// the token's length in bytes
        size: usize,
        /// the limit
        limit: usize,
    },
    /// The token is not a compact JWS: not three base64url parts, or a part is not JSON.
    #[error("malformed token: {reason}")]
    Malformed {
        /// what is wrong with it
        reason: String,
    },
    /// The token's header names an algorithm other than ES256 or RS256.
    #[error("unsupported alg {alg:?}")]
    UnsupportedAlg {
        /// the `alg` of the header
        alg: String,
    },
    /// The token's issuer is not one the verifier trusts.
    #[error("issuer {issuer:?} is not trusted")]
    UntrustedIssuer {
        /// the token's `iss`
        issuer: String,
    },
    /// The token names a key id the issuer's JWKS does not hold.
    #[error("no key with kid {kid:?} for issuer {issuer:?}")]
    UnknownKid {
        /// the token's `kid`
        kid: String,
        /// the token's `iss`
        issuer: String,
    },
    /// The key the token names is of a type that cannot check the token's algorithm.
    #[error("key {kid:?} of issuer {issuer:?} cannot check {alg} signatures")]
    KeyAlgMismatch {
        /// the token's `kid`
        kid: String,
        /// the token's `iss`
        issuer: String,
        /// the token's `alg`
        alg: String,
    },
    /// The token names no key, and the issuer has no key for its algorithm.
    #[error("issuer {issuer:?} has no key for {alg} signatures")]
    NoKeyForAlg {
        /// the token's `iss`
        issuer: String,
        /// the token's `alg`
        alg: String,
    },
    /// The signature is not one the issuer's key made over this header and payload.
    #[error("signature does not verify")]
    BadSignature,
    /// The token is meant for other audiences.
    #[error("audience {audience:?} not among the token's audiences {found:?}")]
    WrongAudience {
        /// the audience the verifier requires
        audience: String,
        /// the token's `aud`
        found: Vec<String>,
    },
    /// The token's `exp`, plus the leeway, is not after the time of the check.
    #[error("token expired at {}", show_time(*.expires_at))]
    Expired {
        /// the token's `exp`
        expires_at: OffsetDateTime,
        /// the time of the check
        now: OffsetDateTime,
    },
    /// The token's `nbf` or `iat` lies further in the future than the leeway allows.
    #[error("token not valid before {} ({claim}), checked at {}", show_time(*.valid_from), show_time(*.now))]
    NotYetValid {
        /// `nbf` or `iat`
        claim: &'static str,
        /// the value of that claim
        valid_from: OffsetDateTime,
        /// the time of the check
        now: OffsetDateTime,
    },
    /// A claim the verifier needs is absent.
    #[error("token has no {claim:?} claim")]
    MissingClaim {
        /// the claim's name
        claim: &'static str,
    },
    /// A claim is present but not of the shape or value required.
    #[error("claim {claim:?} is invalid: {reason}")]
    BadClaim {
        /// the claim's name
        claim: &'static str,
        /// what is wrong with it
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_naming_what_failed() {
        let exp = time::macros::datetime!(2026-11-23 10:00 UTC);
        let e = TokenError::Expired {
            expires_at: exp,
            now: exp + time::Duration::hours(1),
        };
        assert_eq!(e.to_string(), "token expired at 2026-11-23T10:00:00Z");
        let e = TokenError::WrongAudience {
            audience: "istio-ca".into(),
            found: vec!["other".into()],
        };
        assert_eq!(
            e.to_string(),
            "audience \"istio-ca\" not among the token's audiences [\"other\"]"
        );
        let e = TokenError::UnknownKid {
            kid: "abc".into(),
            issuer: "x".into(),
        };
        assert_eq!(e.to_string(), "no key with kid \"abc\" for issuer \"x\"");
        let e = TokenError::UnsupportedAlg { alg: "none".into() };
        assert_eq!(e.to_string(), "unsupported alg \"none\"");
    }
}
