//! Just enough DER to read the RSA keys the PKI core refuses to sign with. Every read is
//! bounds-checked; anything unexpected is `None`.

use super::material::RsaPublic;

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
/// 1.2.840.113549.1.1.1, rsaEncryption.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The contents of the element at the start of `input` if its tag is `tag`, and the rest.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if t != tag || rest.len() < len {
        return None;
    }
    Some((&rest[..len], &rest[len..]))
}

/// PKCS#1 RSAPrivateKey: SEQUENCE { version, modulus, publicExponent, ... }.
pub(super) fn rsa_private_key(der: &[u8]) -> Option<RsaPublic> {
    let (seq, _) = element(der, SEQUENCE)?;
    let (_version, rest) = element(seq, INTEGER)?;
    let (n, rest) = element(rest, INTEGER)?;
    let (e, _) = element(rest, INTEGER)?;
    RsaPublic::new(n, e)
}

/// The PKCS#1 key inside a PKCS#8 PrivateKeyInfo, if its algorithm is rsaEncryption.
pub(super) fn pkcs8_rsa(der: &[u8]) -> Option<&[u8]> {
    let (seq, _) = element(der, SEQUENCE)?;
    let (_version, rest) = element(seq, INTEGER)?;
    let (alg, rest) = element(rest, SEQUENCE)?;
    let (oid, _) = element(alg, OID)?;
    if oid != RSA_ENCRYPTION {
        return None;
    }
    let (key, _) = element(rest, OCTET_STRING)?;
    Some(key)
}

/// PKCS#1 RSAPublicKey: SEQUENCE { modulus, publicExponent }.
pub(super) fn rsa_public_key(der: &[u8]) -> Option<RsaPublic> {
    let (seq, _) = element(der, SEQUENCE)?;
    let (n, rest) = element(seq, INTEGER)?;
    let (e, _) = element(rest, INTEGER)?;
    RsaPublic::new(n, e)
}

/// The modulus size in bits of the RSA key in `der`, read each of the three ways this module
/// reads keys: as a PKCS#1 private key, a PKCS#8 private key and a PKCS#1 public key. Public so
/// that the reader can be fuzzed on its own.
pub fn rsa_key_bits(der: &[u8]) -> [Option<usize>; 3] {
    [
        rsa_private_key(der).map(|k| k.bits()),
        pkcs8_rsa(der).and_then(rsa_private_key).map(|k| k.bits()),
        rsa_public_key(der).map(|k| k.bits()),
    ]
}
