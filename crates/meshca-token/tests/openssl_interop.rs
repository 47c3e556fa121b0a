//! Cross-checks with an independent implementation: keys made by the `openssl` CLI are read,
//! signatures made by `openssl dgst` verify, tokens this crate mints verify under
//! `openssl dgst -verify`, and key ids equal thumbprints computed from openssl's view of the key.

use std::path::Path;
use std::process::Command;

use aws_lc_rs::digest;
use meshca_pki::TrustDomain;
use meshca_token::{Jwks, ServiceAccountClaims, SigningKey, TokenError, Verifier, base64url, mint};
use time::OffsetDateTime;
use time::macros::datetime;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const ISSUED: OffsetDateTime = datetime!(2026-11-23 10:00 UTC);
const EXPIRES: OffsetDateTime = datetime!(2026-11-23 11:00 UTC);
const NOW: OffsetDateTime = datetime!(2026-11-23 10:30 UTC);

/// Runs openssl in `dir` and returns its stdout; fails the test if openssl fails.
fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI runs");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn read_key(dir: &Path, file: &str) -> SigningKey {
    let text = std::fs::read(dir.join(file)).expect("key file");
    SigningKey::from_pem(&text, file).expect("the crate reads openssl's key")
}

fn verifier(key: &SigningKey) -> Verifier {
    Verifier::new("istio-ca").trust(ISSUER, Jwks::from_keys([key.public_jwk()]))
}

fn claims() -> ServiceAccountClaims {
    ServiceAccountClaims {
        issuer: ISSUER.into(),
        audiences: vec!["istio-ca".into()],
        namespace: "foo".into(),
        service_account: "httpbin".into(),
        issued_at: ISSUED,
        expires_at: EXPIRES,
    }
}

/// A signing input written by hand, as another token issuer would.
fn signing_input(alg: &str, kid: &str, service_account: &str) -> String {
    let header = format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#);
    let payload = format!(
        r#"{{"aud":["istio-ca"],"exp":{},"iat":{},"iss":"{ISSUER}","kubernetes.io":{{"namespace":"foo","serviceaccount":{{"name":"{service_account}","uid":"7e1c"}}}},"nbf":{},"sub":"system:serviceaccount:foo:{service_account}"}}"#,
        EXPIRES.unix_timestamp(),
        ISSUED.unix_timestamp(),
        ISSUED.unix_timestamp()
    );
    format!(
        "{}.{}",
        base64url::encode(header),
        base64url::encode(payload)
    )
}

fn thumbprint(canonical: &str) -> String {
    base64url::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `SEQUENCE { INTEGER r, INTEGER s }` (what openssl writes) to JWS's 64-byte `r || s`.
fn der_to_fixed(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30, "a DER SEQUENCE");
    let mut rest = &der[2..];
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(rest[0], 0x02, "a DER INTEGER");
        let len = rest[1] as usize;
        let int = &rest[2..2 + len];
        let int = &int[int.iter().position(|&b| b != 0).unwrap_or(int.len())..];
        out.extend(std::iter::repeat_n(0, 32 - int.len()));
        out.extend_from_slice(int);
        rest = &rest[2 + len..];
    }
    out
}

/// JWS's `r || s` to DER, for `openssl dgst -verify`.
fn fixed_to_der(fixed: &[u8]) -> Vec<u8> {
    assert_eq!(fixed.len(), 64);
    let mut body = Vec::new();
    for half in fixed.chunks(32) {
        let mut int = half[half.iter().position(|&b| b != 0).unwrap_or(31)..].to_vec();
        if int[0] & 0x80 != 0 {
            int.insert(0, 0);
        }
        body.extend([0x02, int.len() as u8]);
        body.extend(int);
    }
    let mut der = vec![0x30, body.len() as u8];
    der.extend(body);
    der
}

#[test]
fn rs256_signature_made_by_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "key.pem",
        ],
    );
    let key = read_key(d, "key.pem");
    let input = signing_input("RS256", key.kid(), "httpbin");
    std::fs::write(d.join("input"), &input).unwrap();
    openssl(
        d,
        &[
            "dgst", "-sha256", "-sign", "key.pem", "-out", "sig.bin", "input",
        ],
    );
    let sig = std::fs::read(d.join("sig.bin")).unwrap();
    let token = format!("{input}.{}", base64url::encode(&sig));

    let verified = verifier(&key).verify(&token, NOW).unwrap();
    assert_eq!(verified.namespace(), "foo");
    assert_eq!(verified.service_account(), "httpbin");
    let td = TrustDomain::new("cluster.local").unwrap();
    assert_eq!(
        verified.spiffe_id(&td).unwrap().to_string(),
        "spiffe://cluster.local/ns/foo/sa/httpbin"
    );

    // The same signature over another service account's claims does not verify.
    let other = signing_input("RS256", key.kid(), "admin");
    let forged = format!("{other}.{}", base64url::encode(&sig));
    assert!(matches!(
        verifier(&key).verify(&forged, NOW),
        Err(TokenError::BadSignature)
    ));
}

#[test]
fn rsa_kid_is_the_thumbprint_of_openssls_modulus() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "key.pem",
        ],
    );
    let key = read_key(d, "key.pem");
    let text =
        String::from_utf8(openssl(d, &["rsa", "-in", "key.pem", "-noout", "-text"])).unwrap();
    assert!(text.contains("publicExponent: 65537 (0x10001)"), "{text}");
    let modulus =
        String::from_utf8(openssl(d, &["rsa", "-in", "key.pem", "-noout", "-modulus"])).unwrap();
    let hex = modulus
        .trim()
        .strip_prefix("Modulus=")
        .expect("Modulus=HEX");
    let n = hex_decode(hex);
    let canonical = format!(
        r#"{{"e":"AQAB","kty":"RSA","n":"{}"}}"#,
        base64url::encode(&n)
    );
    assert_eq!(key.kid(), thumbprint(&canonical));
}

#[test]
fn pkcs1_key_from_openssl_mints_tokens_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(d, &["genrsa", "-traditional", "-out", "rsa.pem", "2048"]);
    let pem = std::fs::read_to_string(d.join("rsa.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "PKCS#1");
    let key = read_key(d, "rsa.pem");

    let token = mint(&claims(), &key).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    std::fs::write(d.join("input"), input).unwrap();
    std::fs::write(d.join("sig.bin"), base64url::decode(sig).unwrap()).unwrap();
    openssl(d, &["pkey", "-in", "rsa.pem", "-pubout", "-out", "pub.pem"]);
    let out = openssl(
        d,
        &[
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "sig.bin",
            "input",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out).trim(), "Verified OK");
    assert!(verifier(&key).verify(&token, NOW).is_ok());
}

#[test]
fn sec1_ec_key_from_openssl_signs_and_verifies_es256_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.pem",
        ],
    );
    let pem = std::fs::read_to_string(d.join("ec.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN EC PRIVATE KEY-----"), "SEC1");
    let key = read_key(d, "ec.pem");

    // The kid, from openssl's encoding of the public point.
    let spki = openssl(d, &["ec", "-in", "ec.pem", "-pubout", "-outform", "DER"]);
    let point = &spki[spki.len() - 65..];
    assert_eq!(point[0], 4);
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        base64url::encode(&point[1..33]),
        base64url::encode(&point[33..])
    );
    assert_eq!(key.kid(), thumbprint(&canonical));

    // openssl signs, the crate verifies.
    let input = signing_input("ES256", key.kid(), "httpbin");
    std::fs::write(d.join("input"), &input).unwrap();
    openssl(
        d,
        &[
            "dgst", "-sha256", "-sign", "ec.pem", "-out", "sig.der", "input",
        ],
    );
    let der = std::fs::read(d.join("sig.der")).unwrap();
    let token = format!("{input}.{}", base64url::encode(der_to_fixed(&der)));
    assert_eq!(
        verifier(&key)
            .verify(&token, NOW)
            .unwrap()
            .service_account(),
        "httpbin"
    );
    // A DER signature is not the JWS form and is refused.
    let der_token = format!("{input}.{}", base64url::encode(&der));
    assert!(matches!(
        verifier(&key).verify(&der_token, NOW),
        Err(TokenError::BadSignature)
    ));

    // The crate signs, openssl verifies.
    let token = mint(&claims(), &key).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    std::fs::write(d.join("minted"), input).unwrap();
    std::fs::write(
        d.join("minted.der"),
        fixed_to_der(&base64url::decode(sig).unwrap()),
    )
    .unwrap();
    openssl(d, &["ec", "-in", "ec.pem", "-pubout", "-out", "pub.pem"]);
    let out = openssl(
        d,
        &[
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "minted.der",
            "minted",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out).trim(), "Verified OK");
}
