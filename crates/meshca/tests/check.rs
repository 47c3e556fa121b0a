//! `meshca check`: bundles from `meshca certs` pass every check, and each check is broken by a
//! bundle that breaks exactly that property. The broken material is made by the `openssl` CLI
//! (SHA-1, restricted extended key usage, RSA-1024, dates meshca refuses to make; the testkit's
//! `openssl_ca`), which also serves as the independent judge of the healthy bundle.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::fs;
use std::path::Path;

use meshca_testkit::openssl_ca::{GOOD_CA_EXT, P256, RSA1024, YEAR, openssl_bundle};
use meshca_testkit::{Run, openssl, run_in};
use time::{Duration, OffsetDateTime};

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");
const FAST: &[(&str, &str)] = &[
    ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
    ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
];

fn meshca(dir: &Path, args: &[&str]) -> Run {
    run_in(MESHCA, dir, args, FAST)
}

/// A root (`root-cert.pem`, `root-key.pem`) with the bundles c1 and c2 under it; another root
/// with c3 in `other/`.
fn world() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    meshca(t.path(), &["certs", "c1-cacerts", "c2-cacerts"]).ok();
    meshca(t.path(), &["certs", "-C", "other", "c3-cacerts"]).ok();
    t
}

/// The findings that did not pass, as `✘ name` / `⚠ name`.
fn not_passing(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| l.starts_with('✘') || l.starts_with('⚠'))
        .map(|l| l.split_once(": ").map_or(l, |(head, _)| head))
        .collect()
}

fn copy(d: &Path, from: &str, to: &str) {
    fs::copy(d.join(from), d.join(to)).unwrap();
}

fn openssl_ok(d: &Path, args: &[&str]) {
    openssl(d, args).ok();
}

/// `YYYYMMDDHHMMSSZ`, as `openssl ca -startdate` takes it.
fn openssl_date(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year][month][day][hour][minute][second]Z");
    t.format(&f).unwrap()
}

#[test]
fn healthy_bundles_pass_every_check_and_openssl_agrees() {
    let t = world();
    let d = t.path();
    let out = meshca(d, &["check", "c1", "c2"]).ok();
    assert_eq!(
        not_passing(&out.stdout),
        Vec::<&str>::new(),
        "{}",
        out.stdout
    );
    let passed = out.stdout.lines().filter(|l| l.starts_with('✔')).count();
    assert_eq!(passed, 2 * 12 + 1, "{}", out.stdout);
    assert!(
        out.stdout
            .starts_with("c1\n--\n✔ files are complete and in one layout: Istio layout")
    );
    assert!(out.stdout.contains("\nacross bundles\n"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("✔ bundles share one root: 2 bundles chain to root")
    );
    assert!(out.stdout.trim_end().ends_with("all 25 checks passed"));
    openssl(d, ["verify", "-CAfile", "root-cert.pem", "c1/ca-cert.pem"]).ok();

    let out = meshca(d, &["check", "c1", "c2", "-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["passed"], true);
    assert_eq!(v["bundles"].as_array().unwrap().len(), 2);
    assert_eq!(v["bundles"][0]["dir"], "c1");
    let findings = v["bundles"][0]["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 12);
    assert!(findings.iter().all(|f| f["level"] == "pass"));
    assert_eq!(v["cross"][0]["name"], "bundles share one root");
    assert_eq!(v["cross"][0]["level"], "pass");

    // One bundle: no cross-bundle finding.
    let out = meshca(d, &["check", "c1"]).ok();
    assert!(!out.stdout.contains("across bundles"));
    assert!(out.stdout.trim_end().ends_with("all 12 checks passed"));
}

#[test]
fn missing_and_empty_folders_are_failing_findings_not_errors() {
    let t = world();
    let d = t.path();
    fs::create_dir(d.join("empty")).unwrap();
    let out = meshca(d, &["check", "c1", "nope", "empty"]).failed();
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr, "");
    assert!(
        out.stdout
            .contains("✘ bundle folder is readable: nope: cannot read folder"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("✘ files are complete and in one layout: no cacerts bundle here"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("not compared: nope, empty"),
        "{}",
        out.stdout
    );
}

#[test]
fn mixed_and_incomplete_layouts_fail_the_layout_check() {
    let t = world();
    let d = t.path();
    copy(d, "c1/ca-key.pem", "c1/tls.key");
    let out = meshca(d, &["check", "c1"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        ["✘ files are complete and in one layout"],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("tls.key of the kubernetes.io/tls layout is mixed in")
    );

    fs::remove_file(d.join("c1/tls.key")).unwrap();
    fs::remove_file(d.join("c1/cert-chain.pem")).unwrap();
    let out = meshca(d, &["check", "c1"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        ["✘ files are complete and in one layout"]
    );
    assert!(
        out.stdout.contains("missing cert-chain.pem"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_file_that_does_not_parse_is_named() {
    let t = world();
    let d = t.path();
    fs::write(d.join("c1/root-cert.pem"), "not a certificate").unwrap();
    let out = meshca(d, &["check", "c1"]).failed();
    assert!(
        out.stdout.contains("✘ every file parses: root-cert.pem: "),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("✔ key matches the signing certificate"));
}

#[test]
fn a_key_of_another_bundle_fails_the_key_check_only() {
    let t = world();
    let d = t.path();
    copy(d, "c2/ca-key.pem", "c1/ca-key.pem");
    let out = meshca(d, &["check", "c1"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        ["✘ key matches the signing certificate"],
        "{}",
        out.stdout
    );
}

#[test]
fn a_chain_out_of_order_fails_the_chain_check_only() {
    let t = world();
    let d = t.path();
    let reversed = [
        fs::read(d.join("root-cert.pem")).unwrap(),
        fs::read(d.join("c1/ca-cert.pem")).unwrap(),
    ]
    .concat();
    fs::write(d.join("c1/cert-chain.pem"), reversed).unwrap();
    let out = meshca(d, &["check", "c1"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        ["✘ chain is in order and complete"],
        "{}",
        out.stdout
    );
}

#[test]
fn a_root_bundle_of_another_mesh_fails_verification() {
    let t = world();
    let d = t.path();
    copy(d, "other/root-cert.pem", "c1/root-cert.pem");
    let out = meshca(d, &["check", "c1"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        [
            "✘ chain is in order and complete",
            "✘ signing certificate verifies to a root"
        ],
        "{}",
        out.stdout
    );
}

#[test]
fn not_yet_valid_and_expired_intermediates_fail_validity() {
    let t = world();
    let d = t.path();
    let soon = openssl_date(OffsetDateTime::now_utc() + Duration::days(2));
    let later = openssl_date(OffsetDateTime::now_utc() + Duration::days(365));
    openssl_bundle(
        d,
        "early",
        P256,
        GOOD_CA_EXT,
        &["-startdate", &soon, "-enddate", &later],
    );
    let out = meshca(d, &["check", "early"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        [
            "✘ signing certificate verifies to a root",
            "✘ every certificate is within its validity period"
        ],
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("is not valid before"));

    openssl_bundle(
        d,
        "old",
        P256,
        GOOD_CA_EXT,
        &[
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20210101000000Z",
        ],
    );
    let out = meshca(d, &["check", "old"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        [
            "✘ signing certificate verifies to a root",
            "✘ every certificate is within its validity period",
            "✘ signing certificate is not close to expiry"
        ],
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("expired at 2021-01-01T00:00:00Z"));
}

#[test]
fn a_short_lived_root_warns_then_fails_against_the_thresholds() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mut env = FAST.to_vec();
    env.push(("ROOTCA_DAYS", "30"));
    run_in(MESHCA, d, ["certs", "c1-cacerts"], &env).ok();
    // Warnings do not fail the run.
    let out = meshca(d, &["check", "c1"]).ok();
    assert_eq!(
        not_passing(&out.stdout),
        [
            "⚠ signing certificate is not close to expiry",
            "⚠ roots are not close to expiry"
        ],
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("fewer than 60: rotate it soon"));
    assert!(
        out.stdout
            .trim_end()
            .ends_with("12 checks: 10 passed, 2 warnings, 0 failed")
    );

    let out = meshca(d, &["check", "c1", "--warn-days", "20"]).ok();
    assert_eq!(not_passing(&out.stdout), Vec::<&str>::new());

    let out = meshca(d, &["check", "c1", "--fail-days", "40"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        [
            "✘ signing certificate is not close to expiry",
            "✘ roots are not close to expiry"
        ],
        "{}",
        out.stdout
    );
}

#[test]
fn an_intermediate_outliving_its_root_warns() {
    let t = world();
    let d = t.path();
    // meshca's root lives 3650 days; openssl does not stop an intermediate from outliving it.
    // The chain still verifies until the root's end: a warning, and check exits 0.
    openssl_bundle(d, "long", P256, GOOD_CA_EXT, &["-days", "7300"]);
    let out = meshca(d, &["check", "long"]).ok();
    assert_eq!(
        not_passing(&out.stdout),
        ["⚠ no certificate outlives its root"],
        "{}",
        out.stdout
    );
}

#[test]
fn an_unknown_critical_extension_fails_as_openssl_refuses_it() {
    let t = world();
    let d = t.path();
    let ext = format!("{GOOD_CA_EXT}1.3.6.1.4.1.55555.1 = critical, ASN1:NULL\n");
    openssl_bundle(d, "critical", P256, &ext, YEAR);
    let out = meshca(d, &["check", "critical"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        ["✘ signing certificate verifies to a root"],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("critical extension 1.3.6.1.4.1.55555.1 is not one that Go's verifier"),
        "{}",
        out.stdout
    );
    // The independent verdict: OpenSSL refuses the certificate too.
    let openssl_out = openssl(
        &d.join("critical"),
        ["verify", "-CAfile", "root-cert.pem", "ca-cert.pem"],
    )
    .failed();
    assert!(
        format!("{}{}", openssl_out.stdout, openssl_out.stderr)
            .contains("unhandled critical extension"),
        "{openssl_out:?}"
    );
}

#[test]
fn intermediates_unfit_for_signing_workloads_fail() {
    let t = world();
    let d = t.path();
    // The helper's own output is healthy, so what fails below is the extension under test.
    openssl_bundle(d, "good", P256, GOOD_CA_EXT, YEAR);
    let out = meshca(d, &["check", "good"]).ok();
    assert_eq!(
        not_passing(&out.stdout),
        Vec::<&str>::new(),
        "{}",
        out.stdout
    );

    let client_only = format!("{GOOD_CA_EXT}extendedKeyUsage = clientAuth\n");
    openssl_bundle(d, "eku", P256, &client_only, YEAR);
    let out = meshca(d, &["check", "eku"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        ["✘ signing certificate can sign workload certificates"],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("without serverAuth, which Go verifiers (istiod) reject"),
        "{}",
        out.stdout
    );

    let no_cert_sign = "basicConstraints = critical, CA:TRUE\n\
        keyUsage = critical, digitalSignature, cRLSign\n";
    openssl_bundle(d, "nosign", P256, no_cert_sign, YEAR);
    let out = meshca(d, &["check", "nosign"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        ["✘ signing certificate can sign workload certificates"],
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("lacks keyCertSign"));

    let pathlen_0 = "basicConstraints = critical, CA:TRUE, pathlen:0\n\
        keyUsage = critical, keyCertSign, cRLSign\n";
    openssl_bundle(d, "pathlen0", P256, pathlen_0, YEAR);
    let out = meshca(d, &["check", "pathlen0"]).ok();
    assert!(
        out.stdout
            .contains("✔ signing certificate can sign workload certificates: CA:TRUE, pathlen:0")
    );
}

#[test]
fn a_sha1_signed_intermediate_fails_the_digest_check() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // An RSA root made by openssl, so that the SHA-1 signature itself still verifies.
    openssl_ok(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "root-key.pem",
            "-out",
            "root-cert.pem",
            "-subj",
            "/O=Test/CN=Root CA",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl_bundle(
        d,
        "sha1",
        P256,
        GOOD_CA_EXT,
        &["-days", "365", "-md", "sha1"],
    );
    let out = meshca(d, &["check", "sha1"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        [
            "✘ signing certificate verifies to a root",
            "✘ no SHA-1 or MD5 signature below the root"
        ],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("ca-cert.pem is signed with sha1WithRSAEncryption")
    );
    assert!(
        out.stdout.contains(
            "✔ keys are strong enough: ca-cert.pem: ECDSA P-256, root-cert.pem: RSA-2048"
        )
    );
}

#[test]
fn an_rsa_1024_intermediate_fails_key_strength_only() {
    let t = world();
    let d = t.path();
    openssl_bundle(d, "weak", RSA1024, GOOD_CA_EXT, YEAR);
    let out = meshca(d, &["check", "weak"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        ["✘ keys are strong enough"],
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("ca-key.pem (RSA-1024 key)"));
    assert!(out.stdout.contains("RSA-1024 is too weak"));
}

#[test]
fn bundles_of_another_root_are_named() {
    let t = world();
    let d = t.path();
    let out = meshca(d, &["check", "c1", "other/c3", "c2"]).failed();
    assert_eq!(
        not_passing(&out.stdout),
        ["✘ bundles share one root"],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("✘ bundles share one root: other/c3 is the odd one out: c1 → other/c3: "),
        "{}",
        out.stdout
    );
    let out = meshca(d, &["check", "c1", "other/c3", "-o", "json"]).failed();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["passed"], false);
    assert_eq!(v["cross"][0]["level"], "fail");
}
