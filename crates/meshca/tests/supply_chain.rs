//! One crypto library in the build: every package the workspace compiles for this host (normal,
//! build and dev dependencies, as `cargo tree` resolves them from `Cargo.lock`) is read, and
//! aws-lc-rs must be the only cryptographic provider among them, with no crate switching on
//! another provider's feature (`ring`, OpenSSL, BoringSSL, RustCrypto's backends).

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::process::Command;

/// Crates that implement cryptographic primitives themselves (or bind a C library that does).
/// Any of them beside aws-lc-rs would be a second provider, with its own bugs and constant-time
/// properties to trust.
const PROVIDERS: &[&str] = &[
    "aws-lc-rs",
    "aws-lc-sys",
    "aws-lc-fips-sys",
    "ring",
    "openssl",
    "openssl-sys",
    "boring",
    "boring-sys",
    "native-tls",
    "rustls-openssl",
    "rustls-rustcrypto",
    "rustls-graviola",
    "graviola",
    "symcrypt",
    "rustls-symcrypt",
    "mbedtls",
    "wolfssl",
    "p256",
    "p384",
    "p521",
    "rsa",
    "ecdsa",
    "ed25519-dalek",
    "x25519-dalek",
    "curve25519-dalek",
    "sha1",
    "sha2",
    "aes-gcm",
    "chacha20poly1305",
];

/// The packages aws-lc-rs brings: allowed, as they are the one provider.
const ALLOWED: &[&str] = &["aws-lc-rs", "aws-lc-sys"];

/// Features that would switch a crate in the tree over to another provider.
const PROVIDER_FEATURES: &[&str] = &[
    "ring",
    "openssl",
    "boring",
    "native-tls",
    "rustcrypto",
    "fips",
];

/// Runs `cargo tree` at the workspace root with `args` and returns its lines, deduplicated.
fn cargo_tree(args: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .args(["tree", "--locked", "--workspace", "--prefix", "none"])
        .args(["-e", "normal,build,dev"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_end_matches(" (*)").to_string())
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

#[test]
fn aws_lc_rs_is_the_only_crypto_provider() {
    let packages: Vec<String> = cargo_tree(&["--format", "{p}"])
        .into_iter()
        .filter_map(|l| l.split(' ').next().map(str::to_string))
        .collect();
    assert!(
        packages.len() > 100,
        "cargo tree listed only {} packages: {packages:?}",
        packages.len()
    );
    let providers: Vec<&String> = packages
        .iter()
        .filter(|p| PROVIDERS.contains(&p.as_str()))
        .collect();
    let others: Vec<&&String> = providers
        .iter()
        .filter(|p| !ALLOWED.contains(&p.as_str()))
        .collect();
    assert!(
        others.is_empty(),
        "crypto providers besides aws-lc-rs in the tree: {others:?}"
    );
    assert!(
        providers.iter().any(|p| *p == "aws-lc-rs"),
        "aws-lc-rs is not in the tree: {packages:?}"
    );
}

#[test]
fn no_crate_turns_on_another_provider() {
    // `cargo tree -e features` prints each activated feature as `crate feature "name"`.
    let lines = cargo_tree(&["-e", "features"]);
    let features: Vec<&String> = lines.iter().filter(|l| l.contains(" feature \"")).collect();
    assert!(
        features
            .iter()
            .any(|l| l.starts_with("rustls feature \"aws_lc_rs\"")),
        "rustls is not built on aws-lc-rs: {features:?}"
    );
    let other: Vec<&&String> = features
        .iter()
        .filter(|l| {
            // aws-lc-rs's own `ring-io` and `ring-sig-verify` are its ring-compatible APIs,
            // implemented by aws-lc itself.
            let (krate, feature) = l.split_once(" feature ").unwrap();
            let feature = feature.trim_matches('"');
            krate != "aws-lc-rs"
                && PROVIDER_FEATURES
                    .iter()
                    .any(|f| feature == *f || feature.starts_with(&format!("{f}-")))
        })
        .collect();
    assert!(
        other.is_empty(),
        "features that pull in another crypto provider: {other:?}"
    );
}
