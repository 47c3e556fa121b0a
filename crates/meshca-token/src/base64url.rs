//! Base64url, the alphabet of every JWS part and JWK member: written without padding, as
//! RFC 7515 requires, and read with or without it, since some producers pad.

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};

/// Reads padded and unpadded input alike; everything else is as strict as the standard engine.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encodes bytes as base64url without padding.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url, with or without `=` padding. `None` if the text is not base64url.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    LENIENT.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_without_padding_and_reads_both() {
        assert_eq!(encode(b"\xfb\xff"), "-_8");
        assert_eq!(decode("-_8"), Some(b"\xfb\xff".to_vec()));
        assert_eq!(decode("-_8="), Some(b"\xfb\xff".to_vec()));
        // The standard alphabet's '+' and '/' are not base64url.
        assert_eq!(decode("+/8"), None);
        assert_eq!(decode("a.b"), None);
    }
}
