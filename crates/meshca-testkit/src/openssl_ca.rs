//! Bundles whose signing certificate the real `openssl ca` issued: the material meshca refuses
//! to make itself (SHA-1, restricted extended key usage, RSA-1024, dates in the past or far
//! future, a sub-CA below a `pathlen:0` CA), made by an independent implementation instead of
//! hand-edited PEM.

use std::fs;
use std::path::Path;

use crate::openssl;

/// Extensions of a healthy intermediate: what the helper makes unless a test asks otherwise.
pub const GOOD_CA_EXT: &str = "basicConstraints = critical, CA:TRUE\n\
    keyUsage = critical, keyCertSign, cRLSign, digitalSignature\n\
    subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n";
/// `openssl ca` arguments for a year from now.
pub const YEAR: &[&str] = &["-days", "365"];
/// `openssl genpkey` arguments for an ECDSA P-256 key.
pub const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
/// `openssl genpkey` arguments for an RSA-1024 key.
pub const RSA1024: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"];

/// The CA that signs a bundle's certificate: its certificate and key files, and the files
/// whose concatenation follows the new certificate in `cert-chain.pem` (its own chain up to
/// and including the root), all relative to the working folder.
#[derive(Clone, Copy, Debug)]
pub struct Issuer<'a> {
    /// the issuer's certificate
    pub cert: &'a str,
    /// the issuer's key
    pub key: &'a str,
    /// the issuer's chain, itself first and the root last
    pub chain: &'a [&'a str],
}

/// The root of `meshca certs` in the working folder.
pub const ROOT: Issuer<'static> = Issuer {
    cert: "root-cert.pem",
    key: "root-key.pem",
    chain: &["root-cert.pem"],
};

fn openssl_ok(d: &Path, args: &[&str]) {
    openssl(d, args).ok();
}

/// Makes `name/` an Istio-layout bundle whose signing certificate the `openssl` CLI issued under
/// the root in `d` (`root-cert.pem`, `root-key.pem`): a key made with `genpkey` `algorithm`,
/// `ext` as its extensions, `ca_args` for `openssl ca` (lifetime, digest).
pub fn openssl_bundle(d: &Path, name: &str, algorithm: &[&str], ext: &str, ca_args: &[&str]) {
    openssl_bundle_under(d, name, ROOT, algorithm, ext, ca_args);
}

/// [`openssl_bundle`] signed by `issuer` instead of the root; `root-cert.pem` of the bundle is
/// the last file of the issuer's chain.
pub fn openssl_bundle_under(
    d: &Path,
    name: &str,
    issuer: Issuer<'_>,
    algorithm: &[&str],
    ext: &str,
    ca_args: &[&str],
) {
    if !d.join("ca.cnf").exists() {
        fs::write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca = test_ca\n[test_ca]\ndatabase = index.txt\nnew_certs_dir = .\n\
             serial = serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
             preserve = yes\ncopy_extensions = none\n[any]\norganizationName = optional\ncommonName = supplied\n",
        )
        .unwrap();
        fs::write(d.join("index.txt"), "").unwrap();
        fs::write(d.join("serial"), "1000\n").unwrap();
    }
    fs::create_dir_all(d.join(name)).unwrap();
    let at = |f: &str| format!("{name}/{f}");
    let mut genpkey = vec!["genpkey".to_owned(), "-out".to_owned(), at("ca-key.pem")];
    genpkey.extend(algorithm.iter().map(|s| (*s).to_owned()));
    let genpkey: Vec<&str> = genpkey.iter().map(String::as_str).collect();
    openssl_ok(d, &genpkey);
    let subject = format!("/O=Test/CN={name}");
    openssl_ok(
        d,
        &[
            "req",
            "-new",
            "-key",
            &at("ca-key.pem"),
            "-subj",
            &subject,
            "-out",
            &at("ca.csr"),
        ],
    );
    fs::write(d.join(at("ca.ext")), ext).unwrap();
    let (csr, cert, ext_file) = (at("ca.csr"), at("ca-cert.pem"), at("ca.ext"));
    let mut args = vec![
        "ca",
        "-batch",
        "-config",
        "ca.cnf",
        "-notext",
        "-cert",
        issuer.cert,
        "-keyfile",
        issuer.key,
        "-in",
        &csr,
        "-out",
        &cert,
        "-extfile",
        &ext_file,
    ];
    args.extend_from_slice(ca_args);
    openssl_ok(d, &args);
    let mut chain = fs::read(d.join(at("ca-cert.pem"))).unwrap();
    for f in issuer.chain {
        chain.extend(fs::read(d.join(f)).unwrap());
    }
    fs::write(d.join(at("cert-chain.pem")), chain).unwrap();
    let root = issuer.chain.last().expect("an issuer chain ends at a root");
    fs::copy(d.join(root), d.join(at("root-cert.pem"))).unwrap();
}
