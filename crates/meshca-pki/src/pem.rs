//! PEM text: reading every section of a file, and writing DER back out as PEM.
//!
//! Parsing is done by `rustls-pki-types`; this module turns its errors into one line that names
//! the file, and keeps the section kinds meshca cares about.

use base64::Engine;
use rustls_pki_types::pem::{self, PemObject, SectionKind};

use crate::error::PkiError;

/// One decoded PEM section.
#[derive(Clone, PartialEq, Eq)]
pub struct Section {
    /// What the section's label says it is.
    pub kind: Kind,
    /// The DER bytes inside it.
    pub der: Vec<u8>,
}

impl std::fmt::Debug for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A section may hold a private key: never print its bytes.
        write!(f, "Section({:?}, {} bytes)", self.kind, self.der.len())
    }
}

/// The PEM labels meshca reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `CERTIFICATE`
    Certificate,
    /// `CERTIFICATE REQUEST`
    CertificateRequest,
    /// `PRIVATE KEY` (PKCS#8)
    Pkcs8Key,
    /// `RSA PRIVATE KEY` (PKCS#1)
    Pkcs1Key,
    /// `EC PRIVATE KEY` (SEC1)
    Sec1Key,
    /// any other label (public keys, CRLs, ...), kept so callers can say what they found
    Other,
}

impl Kind {
    /// Whether the section holds private key material.
    pub fn is_private_key(self) -> bool {
        matches!(self, Kind::Pkcs8Key | Kind::Pkcs1Key | Kind::Sec1Key)
    }
}

/// Decodes every PEM section of `text`. `origin` names the text in errors.
///
/// Text outside sections is ignored, as openssl does; a damaged section is an error, and so is
/// text with no section at all.
pub fn parse_sections(text: &[u8], origin: &str) -> Result<Vec<Section>, PkiError> {
    let mut out = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(text) {
        let (kind, der) = item.map_err(|e| PkiError::Pem {
            origin: origin.to_owned(),
            reason: describe_pem_error(&e),
        })?;
        let kind = match kind {
            SectionKind::Certificate => Kind::Certificate,
            SectionKind::Csr => Kind::CertificateRequest,
            SectionKind::PrivateKey => Kind::Pkcs8Key,
            SectionKind::RsaPrivateKey => Kind::Pkcs1Key,
            SectionKind::EcPrivateKey => Kind::Sec1Key,
            _ => Kind::Other,
        };
        out.push(Section { kind, der });
    }
    if out.is_empty() {
        return Err(PkiError::Pem {
            origin: origin.to_owned(),
            reason: if text.iter().all(u8::is_ascii_whitespace) {
                "file is empty".to_owned()
            } else {
                "no PEM section found (expected -----BEGIN ...-----)".to_owned()
            },
        });
    }
    Ok(out)
}

fn describe_pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "malformed PEM: missing end line {:?}",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed PEM: bad begin line {:?}",
            String::from_utf8_lossy(line)
        ),
        pem::Error::Base64Decode(_) => "malformed PEM: the base64 body does not decode".to_owned(),
        pem::Error::SectionTooLarge => "malformed PEM: section too large".to_owned(),
        other => format!("malformed PEM: {other}"),
    }
}

/// Encodes DER bytes as a PEM section with the given label, lines of 64 characters.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_origin_on_damage() {
        let pem = encode("CERTIFICATE", b"\x30\x03\x02\x01\x05");
        let sections = parse_sections(pem.as_bytes(), "x.pem").expect("parses");
        assert_eq!(sections.len(), 1);
        assert_eq!(sections[0].kind, Kind::Certificate);
        assert_eq!(sections[0].der, b"\x30\x03\x02\x01\x05");

        let cut = &pem[..pem.len() - 10];
        let err = parse_sections(cut.as_bytes(), "dir/x.pem")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("dir/x.pem: malformed PEM"), "{err}");

        let err = parse_sections(b"hello", "y.pem").unwrap_err().to_string();
        assert_eq!(
            err,
            "y.pem: no PEM section found (expected -----BEGIN ...-----)"
        );
        let err = parse_sections(b"\n", "y.pem").unwrap_err().to_string();
        assert_eq!(err, "y.pem: file is empty");
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let s = Section {
            kind: Kind::Pkcs8Key,
            der: vec![0x42; 8],
        };
        assert_eq!(format!("{s:?}"), "Section(Pkcs8Key, 8 bytes)");
    }
}
