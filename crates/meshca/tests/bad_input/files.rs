//! Cases of the commands that read and write files alone: `certs`, `secret`, `inspect`,
//! `check`, `verify`, `token`, and the folders `quickstart` and `man` write into.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::world::{cp, symlink_loop, truncate};
use crate::{Case, error, finding, full_disk, read_only, usage};

/// A folder name that is not UTF-8.
const NON_UTF8: &[u8] = b"bad-\xff\xfe";

/// `NON_UTF8` in `d`.
fn non_utf8(d: &Path) -> PathBuf {
    d.join(OsStr::from_bytes(NON_UTF8))
}

pub fn cases() -> Vec<Case> {
    let mut c = certs();
    c.extend(secret());
    c.extend(inspect());
    c.extend(check());
    c.extend(verify());
    c.extend(token());
    c.extend(others());
    c
}

/// `quickstart` and `man`, which write into a folder they are given.
fn others() -> Vec<Case> {
    let ro = |d: &Path| {
        fs::create_dir(d.join("ro")).unwrap();
        Some(read_only(&d.join("ro")))
    };
    vec![
        Case::new(
            "quickstart: a read-only folder",
            &["quickstart", "--dir", "ro/qs"],
            error("Read-only file system", "ro/qs"),
        )
        .setup(ro),
        Case::new(
            "man: a read-only folder",
            &["man", "--dir", "ro"],
            error("Read-only file system", "ro/meshca.1"),
        )
        .setup(ro),
    ]
}

fn certs() -> Vec<Case> {
    vec![
        Case::new(
            "certs: an intermediate outliving its root",
            &["certs", "c9-cacerts"],
            error("would be valid until", "c9/ca-cert.pem"),
        )
        .env(&[("INTERMEDIATE_DAYS", "99999")]),
        Case::new(
            "certs: a lifetime of 0 days",
            &["certs", "c9-cacerts"],
            error("must be at least 1 day", "INTERMEDIATE_DAYS"),
        )
        .env(&[("INTERMEDIATE_DAYS", "0")]),
        Case::new(
            "certs: an unknown key type",
            &["certs", "root-ca"],
            error("unsupported key type \"dsa\"", "ROOTCA_KEY_TYPE"),
        )
        .env(&[("ROOTCA_KEY_TYPE", "dsa")]),
        Case::new(
            "certs: a truncated root certificate",
            &["certs", "c9-cacerts"],
            error("malformed PEM", "root-cert.pem"),
        )
        .setup(|d| {
            truncate(d, "root-cert.pem");
            None
        }),
        Case::new(
            "certs: a root key of another root",
            &["certs", "c9-cacerts"],
            error("does not match", "root-key.pem"),
        )
        .setup(|d| {
            cp(d, "other/root-key.pem", "root-key.pem");
            None
        }),
        Case::new(
            "certs: a certificate where the root key belongs",
            &["certs", "c9-cacerts"],
            error("no private key found", "root-key.pem"),
        )
        .setup(|d| {
            cp(d, "root-cert.pem", "root-key.pem");
            None
        }),
        Case::new(
            "certs: an expired root",
            &["certs", "c9-cacerts"],
            error("until 2021-01-01T00:00:00Z", "root-cert.pem"),
        )
        .setup(|d| {
            cp(d, "oldroot/root-cert.pem", "root-cert.pem");
            cp(d, "oldroot/root-key.pem", "root-key.pem");
            None
        }),
        Case::new(
            "certs: a leaf posing as the root",
            &["certs", "c9-cacerts"],
            error("cannot sign certificates", "root-cert.pem"),
        )
        .setup(|d| {
            cp(d, "ns1/workload-cert.pem", "root-cert.pem");
            cp(d, "ns1/key.pem", "root-key.pem");
            None
        }),
        Case::new(
            "certs: a bundle with a key of another bundle",
            &["certs", "c1-cacerts"],
            error("does not match", "c1/ca-key.pem"),
        )
        .setup(|d| {
            cp(d, "c2/ca-key.pem", "c1/ca-key.pem");
            None
        }),
        Case::new(
            "certs: a target folder that is a symlink loop",
            &["certs", "c1-cacerts"],
            error("is not a folder", "c1"),
        )
        .setup(|d| {
            symlink_loop(d, "c1");
            None
        }),
        Case::new(
            "certs: -C a symlink loop",
            &["certs", "-C", "loop", "root-ca"],
            error("symbolic links", "loop"),
        )
        .setup(|d| {
            symlink_loop(d, "loop");
            None
        }),
        Case::new(
            "certs: a target that is not UTF-8",
            &["certs", "x"],
            usage("invalid UTF-8", "TARGET"),
        )
        .arg_bytes(1, b"\xff-cacerts"),
        Case::new(
            "certs: -C a file",
            &["certs", "-C", "c1/ca-cert.pem", "root-ca"],
            error("exists and is not a folder", "c1/ca-cert.pem"),
        ),
        Case::new(
            "certs: a target with a path in its name",
            &["certs", "../evil-cacerts"],
            error("target", "../evil"),
        ),
        Case::new(
            "certs: a read-only folder",
            &["certs", "-C", "ro", "c9-cacerts"],
            error("Read-only file system", "ro"),
        )
        .setup(|d| {
            fs::create_dir(d.join("ro")).unwrap();
            cp(d, "root-cert.pem", "ro/root-cert.pem");
            cp(d, "root-key.pem", "ro/root-key.pem");
            Some(read_only(&d.join("ro")))
        }),
        Case::new(
            "certs: clean in a read-only folder",
            &["certs", "-C", "ro", "clean"],
            error("Read-only file system", "ro"),
        )
        .setup(|d| {
            fs::create_dir(d.join("ro")).unwrap();
            cp(d, "root-cert.pem", "ro/root-cert.pem");
            cp(d, "root-key.pem", "ro/root-key.pem");
            Some(read_only(&d.join("ro")))
        }),
        Case::new(
            "certs: a full disk",
            &["certs", "-C", "full", "c9-cacerts", "c8-cacerts"],
            error("No space left on device", "full"),
        )
        .setup(|d| {
            Some(full_disk(
                &d.join("full"),
                d,
                &["root-cert.pem", "root-key.pem"],
            ))
        }),
        Case::new(
            "certs: --force over a bundle on a full disk",
            &["certs", "-C", "full", "--force", "c1-cacerts"],
            error("No space left on device", "full"),
        )
        .setup(|d| {
            Some(full_disk(
                &d.join("full"),
                d,
                &[
                    "root-cert.pem",
                    "root-key.pem",
                    "c1/ca-cert.pem",
                    "c1/ca-key.pem",
                    "c1/cert-chain.pem",
                    "c1/root-cert.pem",
                ],
            ))
        }),
    ]
}

/// `meshca secret` and the bundle checks istiod makes at load, one broken property each.
fn secret() -> Vec<Case> {
    vec![
        Case::new(
            "secret: an expired intermediate",
            &["secret", "expired"],
            error("expired", "expired/ca-cert.pem"),
        ),
        Case::new(
            "secret: a not yet valid intermediate",
            &["secret", "notyet"],
            error("valid from 2090-01-01T00:00:00Z", "notyet/ca-cert.pem"),
        ),
        Case::new(
            "secret: a SHA-1 signed intermediate",
            &["secret", "sha1"],
            error("signed with ecdsa-with-SHA1", "sha1/ca-cert.pem"),
        ),
        Case::new(
            "secret: an intermediate restricted to clientAuth",
            &["secret", "eku"],
            error("excludes serverAuth", "eku/ca-cert.pem"),
        ),
        Case::new(
            "secret: a leaf posing as a CA",
            &["secret", "leafca"],
            error("cannot sign certificates", "leafca/ca-cert.pem"),
        ),
        Case::new(
            "secret: a CA below a pathlen:0 CA",
            &["secret", "pathlen"],
            error("pathlen", "pathlen/"),
        ),
        Case::new(
            "secret: junk in the root bundle",
            &["secret", "junkroot"],
            error("certificate", "junkroot/root-cert.pem"),
        ),
        Case::new(
            "secret: key and certificate do not match",
            &["secret", "mism"],
            error("does not match", "mism/ca-key.pem"),
        ),
        Case::new(
            "secret: a certificate where the key belongs",
            &["secret", "c1"],
            error("no private key found", "c1/ca-key.pem"),
        )
        .setup(|d| {
            cp(d, "c1/ca-cert.pem", "c1/ca-key.pem");
            None
        }),
        Case::new(
            "secret: a key where the certificate belongs",
            &["secret", "c1"],
            error("no certificate found", "c1/ca-cert.pem"),
        )
        .setup(|d| {
            cp(d, "c1/ca-key.pem", "c1/ca-cert.pem");
            None
        }),
        Case::new(
            "secret: a truncated certificate chain",
            &["secret", "c1"],
            error("malformed PEM", "c1/cert-chain.pem"),
        )
        .setup(|d| {
            truncate(d, "c1/cert-chain.pem");
            None
        }),
        Case::new(
            "secret: a missing key",
            &["secret", "c1"],
            error("ca-key.pem", "c1"),
        )
        .setup(|d| {
            fs::remove_file(d.join("c1/ca-key.pem")).unwrap();
            None
        }),
        Case::new(
            "secret: a key that is a symlink loop",
            &["secret", "c1"],
            error("symbolic links", "c1/ca-key.pem"),
        )
        .setup(|d| {
            symlink_loop(d, "c1/ca-key.pem");
            None
        }),
        Case::new(
            "secret: a folder named in bytes that are not UTF-8",
            &["secret", "x"],
            error("does not match", "bad-\u{FFFD}\u{FFFD}/ca-key.pem"),
        )
        .arg_bytes(1, NON_UTF8)
        .setup(|d| {
            let to = non_utf8(d);
            crate::world::copy_tree(&d.join("mism"), &to);
            None
        }),
        Case::new(
            "secret: a format there is not",
            &["secret", "c1", "--format", "pkcs12"],
            usage("invalid value 'pkcs12'", "--format"),
        ),
        Case::new(
            "secret: an RSA-1024 intermediate",
            &["secret", "weak"],
            error("RSA-1024", "weak/ca-key.pem"),
        ),
    ]
}

fn inspect() -> Vec<Case> {
    vec![
        Case::new(
            "inspect: a truncated certificate",
            &["inspect", "c1/ca-cert.pem"],
            error("malformed PEM", "c1/ca-cert.pem"),
        )
        .setup(|d| {
            truncate(d, "c1/ca-cert.pem");
            None
        }),
        Case::new(
            "inspect: random bytes in a CERTIFICATE block",
            &["inspect", "junk.pem"],
            error("certificate", "junk.pem"),
        ),
        Case::new(
            "inspect: an empty file",
            &["inspect", "empty.pem"],
            error("file is empty", "empty.pem"),
        )
        .setup(|d| {
            fs::write(d.join("empty.pem"), "").unwrap();
            None
        }),
        Case::new(
            "inspect: a folder",
            &["inspect", "c1"],
            error("cannot read", "c1"),
        ),
        Case::new(
            "inspect: a missing file",
            &["inspect", "c1/ca-cert.pem", "nope.pem"],
            error("No such file", "nope.pem"),
        ),
        Case::new(
            "inspect: a symlink loop",
            &["inspect", "loop.pem"],
            error("symbolic links", "loop.pem"),
        )
        .setup(|d| {
            symlink_loop(d, "loop.pem");
            None
        }),
        Case::new(
            "inspect: a truncated key named in bytes that are not UTF-8",
            &["inspect", "x"],
            error("malformed PEM", "bad-\u{FFFD}\u{FFFD}"),
        )
        .arg_bytes(1, NON_UTF8)
        .setup(|d| {
            let to = non_utf8(d);
            fs::copy(d.join("c1/ca-key.pem"), &to).unwrap();
            let bytes = fs::read(&to).unwrap();
            fs::write(&to, &bytes[..bytes.len() / 2]).unwrap();
            None
        }),
        Case::new(
            "inspect: a 1 MB CSR of random bytes",
            &["inspect", "random.bin"],
            error("no PEM", "random.bin"),
        )
        .setup(|d| {
            meshca_testkit::openssl(d, ["rand", "-out", "random.bin", "1048576"]).ok();
            None
        }),
    ]
}

fn check() -> Vec<Case> {
    vec![
        Case::new(
            "check: an expired intermediate",
            &["check", "expired"],
            finding("expired at 2021-01-01T00:00:00Z", "expired"),
        ),
        Case::new(
            "check: a leaf posing as a CA",
            &["check", "leafca"],
            finding("is not a CA", "ca-cert.pem"),
        ),
        Case::new(
            "check: junk in the root bundle",
            &["check", "junkroot"],
            finding("not a valid X.509 certificate", "root-cert.pem[2]"),
        ),
        Case::new(
            "check: a folder that is a symlink loop",
            &["check", "loop"],
            finding("symbolic links", "loop"),
        )
        .setup(|d| {
            symlink_loop(d, "loop");
            None
        }),
        Case::new(
            "check: a mismatched bundle named in bytes that are not UTF-8",
            &["check", "x"],
            finding("is not the key of", "bad-\u{FFFD}\u{FFFD}"),
        )
        .arg_bytes(1, NON_UTF8)
        .setup(|d| {
            let to = non_utf8(d);
            crate::world::copy_tree(&d.join("mism"), &to);
            None
        }),
        Case::new(
            "check: an intermediate restricted to clientAuth",
            &["check", "eku"],
            finding("without serverAuth", "ca-cert.pem"),
        ),
        Case::new(
            "check: a SHA-1 signed intermediate",
            &["check", "sha1"],
            finding("signed with ecdsa-with-SHA1", "ca-cert.pem"),
        ),
        Case::new(
            "check: a CA below a pathlen:0 CA",
            &["check", "pathlen"],
            finding("has pathlen:0", "root-cert.pem[1]"),
        ),
        Case::new(
            "check: a not yet valid intermediate",
            &["check", "notyet"],
            finding("is not valid before 2090-01-01T00:00:00Z", "ca-cert.pem"),
        ),
        Case::new(
            "check: --warn-days not a number",
            &["check", "c1", "--warn-days", "soon"],
            usage("invalid value", "--warn-days"),
        ),
    ]
}

fn verify() -> Vec<Case> {
    vec![
        Case::new(
            "verify chain: random bytes as the chain",
            &["verify", "chain", "--cacerts", "c1", "junk.pem"],
            error("certificate", "junk.pem"),
        ),
        Case::new(
            "verify chain: a key as the chain",
            &["verify", "chain", "--cacerts", "c1", "ns1/key.pem"],
            error("no certificate found", "ns1/key.pem"),
        ),
        Case::new(
            "verify chain: a chain of another mesh",
            &[
                "verify",
                "chain",
                "--cacerts",
                "c1",
                "other/c3/cert-chain.pem",
            ],
            finding("✘", "root"),
        ),
        Case::new(
            "verify chain: a truncated cacerts bundle",
            &[
                "verify",
                "chain",
                "--cacerts",
                "c1",
                "ns1/workload-cert-chain.pem",
            ],
            error("malformed PEM", "c1/root-cert.pem"),
        )
        .setup(|d| {
            truncate(d, "c1/root-cert.pem");
            None
        }),
        Case::new(
            "verify roots: junk in a root bundle",
            &["verify", "roots", "c1", "junkroot"],
            error("certificate", "junkroot/root-cert.pem"),
        ),
        Case::new(
            "verify roots: a missing folder",
            &["verify", "roots", "c1", "nope"],
            error("not a folder", "nope"),
        ),
        Case::new(
            "verify roots: roots of another mesh",
            &["verify", "roots", "c1", "other/c3"],
            finding("✘", "other/c3"),
        ),
        Case::new(
            "verify endpoint: nothing listening",
            &["verify", "endpoint", "127.0.0.1:9", "--cacerts", "c1"],
            error("127.0.0.1:9", "Connection refused"),
        ),
        Case::new(
            "verify envoy-secrets: not JSON",
            &["verify", "envoy-secrets", "c1/ca-cert.pem"],
            error("neither istioctl's dynamicActiveSecrets", "c1/ca-cert.pem"),
        ),
        Case::new(
            "verify envoy-secrets: JSON of another shape",
            &["verify", "envoy-secrets", "secrets.json"],
            error("neither istioctl's dynamicActiveSecrets", "secrets.json"),
        )
        .setup(|d| {
            fs::write(d.join("secrets.json"), "{\"configs\": [1, 2]}\n").unwrap();
            None
        }),
        Case::new(
            "verify envoy-secrets: a missing file",
            &["verify", "envoy-secrets", "nope.json"],
            error("No such file", "nope.json"),
        ),
    ]
}

fn token() -> Vec<Case> {
    vec![
        Case::new(
            "token issue: a certificate as the key",
            &[
                "token",
                "issue",
                "--ns",
                "foo",
                "--sa",
                "sleep",
                "--key",
                "c1/ca-cert.pem",
            ],
            error("private key", "c1/ca-cert.pem"),
        ),
        Case::new(
            "token issue: a truncated key",
            &[
                "token",
                "issue",
                "--ns",
                "foo",
                "--sa",
                "sleep",
                "--key",
                "jwt-key.pem",
            ],
            error("malformed PEM", "jwt-key.pem"),
        )
        .setup(|d| {
            truncate(d, "jwt-key.pem");
            None
        }),
        Case::new(
            "token issue: an Ed25519 key",
            &[
                "token",
                "issue",
                "--ns",
                "foo",
                "--sa",
                "sleep",
                "--key",
                "csr/ed25519.key",
            ],
            error(
                "Ed25519, which meshca does not sign tokens with",
                "csr/ed25519.key",
            ),
        ),
        Case::new(
            "token issue: an RSA-1024 key",
            &[
                "token",
                "issue",
                "--ns",
                "foo",
                "--sa",
                "sleep",
                "--key",
                "csr/rsa1024.key",
            ],
            error(
                "RSA-1024, which meshca does not sign tokens with",
                "csr/rsa1024.key",
            ),
        ),
        Case::new(
            "token issue: a namespace with a path in it",
            &[
                "token",
                "issue",
                "--ns",
                "../x",
                "--sa",
                "sleep",
                "--key",
                "jwt-key.pem",
            ],
            error(
                "only lowercase letters",
                "namespace: invalid value \"../x\"",
            ),
        ),
        Case::new(
            "token issue: a TTL that is not a duration",
            &[
                "token",
                "issue",
                "--ns",
                "foo",
                "--sa",
                "sleep",
                "--key",
                "jwt-key.pem",
                "--ttl",
                "forever",
            ],
            usage("invalid value", "--ttl"),
        ),
        Case::new(
            "token jwks: random bytes as a key",
            &[
                "token",
                "jwks",
                "--key",
                "jwt-key.pem",
                "--key",
                "random.bin",
            ],
            error("PEM", "random.bin"),
        )
        .setup(|d| {
            meshca_testkit::openssl(d, ["rand", "-out", "random.bin", "512"]).ok();
            None
        }),
    ]
}
