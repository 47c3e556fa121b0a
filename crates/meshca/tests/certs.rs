//! `meshca certs` end to end: the real binary in temporary folders, every output checked by the
//! real `openssl` CLI.

use std::fs;
use std::path::Path;

use meshca_testkit::{Run, mode, openssl, pem_blocks, run_in, snapshot, x509_text};

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

/// ECDSA everywhere: the tests about logic, not key sizes, should not wait for RSA-4096.
const FAST: &[(&str, &str)] = &[
    ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
    ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
];

fn certs(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut all = vec!["certs"];
    all.extend_from_slice(args);
    run_in(MESHCA, dir, all, env)
}

fn ext_block<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text
        .find(name)
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"));
    let rest = &text[start..];
    let end = rest[1..].find("X509v3").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

fn field(text: &str, prefix: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("{prefix} missing in\n{text}"))
}

fn key_id(text: &str, ext: &str) -> String {
    ext_block(text, ext)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .trim()
        .trim_start_matches("keyid:")
        .to_owned()
}

#[test]
fn seed_flow_with_the_default_rsa_4096_passes_openssl_and_matches_the_makefile() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let out = certs(d, &["root-ca", "cluster1-cacerts", "foo-certs"], &[]).ok();
    assert!(
        out.stdout
            .contains("root-ca: generated root-cert.pem, root-key.pem (RSA-4096"),
        "{}",
        out.stdout
    );

    // The seed's checks, verbatim apart from the tool that made the files.
    let v = openssl(
        d,
        ["verify", "-CAfile", "root-cert.pem", "cluster1/ca-cert.pem"],
    )
    .ok();
    assert_eq!(v.stdout.trim(), "cluster1/ca-cert.pem: OK");
    fs::write(
        d.join("ca-and-root.pem"),
        [
            fs::read(d.join("foo/ca-cert.pem")).unwrap(),
            fs::read(d.join("foo/root-cert.pem")).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let v = openssl(
        d,
        [
            "verify",
            "-CAfile",
            "ca-and-root.pem",
            "foo/workload-cert.pem",
        ],
    )
    .ok();
    assert_eq!(v.stdout.trim(), "foo/workload-cert.pem: OK");

    // Root: as the Makefile's root-ca.conf.
    let root = x509_text(d, "root-cert.pem");
    assert_eq!(field(&root, "Subject:"), "O = Istio, CN = Root CA");
    assert_eq!(field(&root, "Issuer:"), "O = Istio, CN = Root CA");
    assert!(root.contains("Public-Key: (4096 bit)"));
    assert!(root.contains("Signature Algorithm: sha256WithRSAEncryption"));
    assert!(ext_block(&root, "X509v3 Basic Constraints: critical").contains("CA:TRUE"));
    assert!(!ext_block(&root, "X509v3 Basic Constraints: critical").contains("pathlen"));
    assert!(
        ext_block(&root, "X509v3 Key Usage: critical")
            .contains("Digital Signature, Non Repudiation, Key Encipherment, Certificate Sign")
    );
    assert!(root.contains("X509v3 Subject Key Identifier"));
    assert!(!root.contains("Authority Key Identifier"));
    assert!(!root.contains("Extended Key Usage"));
    assert!(!root.contains("Subject Alternative Name"));
    let root_ski = key_id(&root, "X509v3 Subject Key Identifier");

    // Intermediate: intermediate.conf with L=<name>.
    let ca = x509_text(d, "cluster1/ca-cert.pem");
    assert_eq!(
        field(&ca, "Subject:"),
        "O = Istio, CN = Intermediate CA, L = cluster1"
    );
    assert_eq!(field(&ca, "Issuer:"), "O = Istio, CN = Root CA");
    assert!(ca.contains("Public-Key: (4096 bit)"));
    assert!(ext_block(&ca, "X509v3 Basic Constraints: critical").contains("CA:TRUE, pathlen:0"));
    assert!(
        ext_block(&ca, "X509v3 Key Usage: critical")
            .contains("Digital Signature, Non Repudiation, Key Encipherment, Certificate Sign")
    );
    assert!(
        ext_block(&ca, "X509v3 Subject Alternative Name").contains("DNS:istiod.istio-system.svc")
    );
    assert_eq!(key_id(&ca, "X509v3 Authority Key Identifier"), root_ski);
    assert!(ca.contains("Signature Algorithm: sha256WithRSAEncryption"));

    // Workload: workload.conf.
    let wl = x509_text(d, "foo/workload-cert.pem");
    assert_eq!(field(&wl, "Subject:"), "O = Istio, CN = Workload, L = foo");
    assert!(ext_block(&wl, "X509v3 Basic Constraints: critical").contains("CA:FALSE"));
    let ku = ext_block(&wl, "X509v3 Key Usage");
    assert!(
        ku.starts_with("X509v3 Key Usage: \n") || ku.starts_with("X509v3 Key Usage:\n"),
        "not critical: {ku}"
    );
    assert!(ku.contains("Digital Signature, Key Encipherment"));
    assert!(
        ext_block(&wl, "X509v3 Extended Key Usage")
            .contains("TLS Web Server Authentication, TLS Web Client Authentication")
    );
    assert!(
        ext_block(&wl, "X509v3 Subject Alternative Name")
            .contains("URI:spiffe://cluster.local/ns/foo/sa/default")
    );
    let foo_ca = x509_text(d, "foo/ca-cert.pem");
    assert_eq!(
        key_id(&wl, "X509v3 Authority Key Identifier"),
        key_id(&foo_ca, "X509v3 Subject Key Identifier")
    );
    let days = openssl(
        d,
        [
            "x509",
            "-noout",
            "-checkend",
            "86300",
            "-in",
            "foo/workload-cert.pem",
        ],
    )
    .ok();
    assert!(days.stdout.contains("will not expire"));
    let days = openssl(
        d,
        [
            "x509",
            "-noout",
            "-checkend",
            "86500",
            "-in",
            "foo/workload-cert.pem",
        ],
    );
    assert!(days.stdout.contains("will expire"), "WORKLOAD_DAYS=1");

    // Chain files: intermediate then root; leaf, intermediate, root.
    let text = |p: &str| fs::read_to_string(d.join(p)).unwrap();
    assert_eq!(
        text("cluster1/cert-chain.pem"),
        text("cluster1/ca-cert.pem") + &text("root-cert.pem")
    );
    assert_eq!(text("cluster1/root-cert.pem"), text("root-cert.pem"));
    assert_eq!(
        pem_blocks(&text("foo/workload-cert-chain.pem")),
        [
            text("foo/workload-cert.pem"),
            text("foo/ca-cert.pem"),
            text("root-cert.pem")
        ]
    );

    // Keys are private; certificates are not.
    for key in [
        "root-key.pem",
        "cluster1/ca-key.pem",
        "foo/ca-key.pem",
        "foo/key.pem",
    ] {
        assert_eq!(mode(&d.join(key)), 0o600, "{key}");
        openssl(d, ["pkey", "-noout", "-in", key]).ok();
    }
    assert_eq!(mode(&d.join("cluster1/ca-cert.pem")), 0o644);
}

#[test]
fn every_variable_is_read_from_the_environment() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let env = [
        ("ROOTCA_DAYS", "100"),
        ("ROOTCA_KEY_TYPE", "ecdsa-p384"),
        ("ROOTCA_ORG", "Acme"),
        ("ROOTCA_CN", "Acme Root"),
        ("INTERMEDIATE_DAYS", "50"),
        ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
        ("INTERMEDIATE_ORG", "Acme Mesh"),
        ("INTERMEDIATE_CN", "Acme Intermediate"),
        ("INTERMEDIATE_SAN_DNS", "ca.acme.test"),
        ("WORKLOAD_DAYS", "2"),
        ("WORKLOAD_KEY_TYPE", "rsa"),
        ("WORKLOAD_KEYSZ", "2048"),
        ("SERVICE_ACCOUNT", "sleep"),
        ("WORKLOAD_CN", "Acme Workload"),
        ("TRUST_DOMAIN", "acme.test"),
    ];
    certs(d, &["root-ca", "bar-certs"], &env).ok();
    let root = x509_text(d, "root-cert.pem");
    assert_eq!(field(&root, "Subject:"), "O = Acme, CN = Acme Root");
    assert!(root.contains("ASN1 OID: secp384r1"));
    assert!(root.contains("Signature Algorithm: ecdsa-with-SHA384"));
    let ca = x509_text(d, "bar/ca-cert.pem");
    assert_eq!(
        field(&ca, "Subject:"),
        "O = Acme Mesh, CN = Acme Intermediate, L = bar"
    );
    assert!(ca.contains("ASN1 OID: prime256v1"));
    assert!(
        ca.contains("Signature Algorithm: ecdsa-with-SHA384"),
        "signed by the P-384 root"
    );
    assert!(ext_block(&ca, "X509v3 Subject Alternative Name").contains("DNS:ca.acme.test"));
    let wl = x509_text(d, "bar/workload-cert.pem");
    assert_eq!(
        field(&wl, "Subject:"),
        "O = Acme Mesh, CN = Acme Workload, L = bar"
    );
    assert!(wl.contains("Public-Key: (2048 bit)"));
    assert!(wl.contains("Signature Algorithm: ecdsa-with-SHA256"));
    assert!(
        ext_block(&wl, "X509v3 Subject Alternative Name")
            .contains("URI:spiffe://acme.test/ns/bar/sa/sleep")
    );

    // Lifetimes: check each end against openssl's -checkend, one hour either side.
    for (file, days) in [
        ("root-cert.pem", 100),
        ("bar/ca-cert.pem", 50),
        ("bar/workload-cert.pem", 2),
    ] {
        let secs = days * 86_400;
        let before = (secs - 3600).to_string();
        let after = (secs + 3600).to_string();
        assert!(
            openssl(d, ["x509", "-noout", "-in", file, "-checkend", &before])
                .stdout
                .contains("will not expire"),
            "{file}"
        );
        assert!(
            openssl(d, ["x509", "-noout", "-in", file, "-checkend", &after])
                .stdout
                .contains("will expire"),
            "{file}"
        );
    }
}

#[test]
fn flags_stand_for_the_variables_and_win_over_them() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let env = [("ROOTCA_ORG", "FromEnv"), ("ROOTCA_KEY_TYPE", "ecdsa-p256")];
    certs(
        d,
        &[
            "--rootca-org",
            "FromFlag",
            "--rootca-cn",
            "Flag Root",
            "root-ca",
        ],
        &env,
    )
    .ok();
    assert_eq!(
        field(&x509_text(d, "root-cert.pem"), "Subject:"),
        "O = FromFlag, CN = Flag Root"
    );
    let sub = d.join("sub");
    certs(
        d,
        &[
            "-C",
            "sub",
            "--rootca-key-type",
            "ecdsa-p384",
            "--intermediate-key-type",
            "ecdsa-p256",
            "c1-cacerts",
        ],
        &[],
    )
    .ok();
    assert!(x509_text(&sub, "root-cert.pem").contains("secp384r1"));
    assert!(x509_text(&sub, "c1/ca-cert.pem").contains("prime256v1"));
}

#[test]
fn rsa_key_sizes_are_honoured() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    certs(
        d,
        &["root-ca", "c1-cacerts"],
        &[("ROOTCA_KEYSZ", "2048"), ("INTERMEDIATE_KEYSZ", "3072")],
    )
    .ok();
    assert!(x509_text(d, "root-cert.pem").contains("Public-Key: (2048 bit)"));
    assert!(x509_text(d, "c1/ca-cert.pem").contains("Public-Key: (3072 bit)"));
    openssl(d, ["verify", "-CAfile", "root-cert.pem", "c1/ca-cert.pem"]).ok();
}

/// Runs a refused command and checks: non-zero exit, one line naming `needles`, nothing changed.
fn refused(dir: &Path, args: &[&str], env: &[(&str, &str)], needles: &[&str]) -> String {
    let before = snapshot(dir);
    let out = certs(dir, args, env).failed();
    let msg = out.stderr.trim().to_owned();
    assert_eq!(msg.lines().count(), 1, "one line: {msg}");
    assert!(msg.starts_with("meshca: error: "), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "{msg:?} lacks {n:?}");
    }
    assert_eq!(snapshot(dir), before, "a refused run changed files: {msg}");
    msg
}

#[test]
fn refusals_name_what_is_wrong_and_write_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let fast: Vec<(&str, &str)> = FAST.to_vec();
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        fast.iter().chain(extra).copied().collect()
    };

    // Intermediate outliving its root: both dates named.
    let msg = refused(
        d,
        &["root-ca", "c1-cacerts"],
        &with(&[("ROOTCA_DAYS", "10"), ("INTERMEDIATE_DAYS", "20")]),
        &["c1/ca-cert.pem", "root-cert.pem", "INTERMEDIATE_DAYS"],
    );
    assert!(
        msg.contains("would be valid until 20") && msg.contains("expires at 20"),
        "both dates: {msg}"
    );
    // Workload outliving its intermediate.
    refused(
        d,
        &["ns1-certs"],
        &with(&[("INTERMEDIATE_DAYS", "5"), ("WORKLOAD_DAYS", "6")]),
        &["ns1/workload-cert.pem", "WORKLOAD_DAYS"],
    );
    // Days of zero or less.
    refused(
        d,
        &["root-ca"],
        &with(&[("ROOTCA_DAYS", "0")]),
        &["ROOTCA_DAYS must be at least 1 day, got 0"],
    );
    refused(
        d,
        &["c1-cacerts"],
        &with(&[("INTERMEDIATE_DAYS", "-3")]),
        &["INTERMEDIATE_DAYS must be at least 1 day, got -3"],
    );
    // Key types and sizes.
    refused(
        d,
        &["root-ca"],
        &[("ROOTCA_KEYSZ", "1024")],
        &["ROOTCA_KEY_TYPE/ROOTCA_KEYSZ", "1024"],
    );
    refused(d, &["root-ca"], &[("ROOTCA_KEY_TYPE", "dsa")], &["\"dsa\""]);
    // Names.
    refused(d, &["Bad_NS-certs"], &fast, &["Bad_NS-certs"]);
    refused(
        d,
        &["frobnicate"],
        &fast,
        &["frobnicate", "expected root-ca"],
    );
    refused(d, &["x-cacerts", "x-certs"], &fast, &["x/"]);
    refused(
        d,
        &["root-ca"],
        &with(&[("TRUST_DOMAIN", "Not Valid")]),
        &["TRUST_DOMAIN"],
    );
    assert!(snapshot(d).is_empty(), "nothing was ever written");

    // Now with real files on disk.
    certs(d, &["root-ca", "c1-cacerts"], &fast).ok();
    let good_root = fs::read(d.join("root-cert.pem")).unwrap();

    // A corrupt root certificate.
    fs::write(d.join("root-cert.pem"), &good_root[..good_root.len() / 2]).unwrap();
    refused(
        d,
        &["c2-cacerts"],
        &fast,
        &["root-cert.pem", "malformed PEM", "--force root-ca"],
    );
    fs::write(d.join("root-cert.pem"), b"not pem at all").unwrap();
    refused(
        d,
        &["c2-cacerts"],
        &fast,
        &["root-cert.pem: no PEM section found"],
    );
    fs::write(d.join("root-cert.pem"), &good_root).unwrap();

    // A root key that belongs to another certificate.
    let other = tempfile::tempdir().unwrap();
    certs(other.path(), &["root-ca"], &fast).ok();
    let good_key = fs::read(d.join("root-key.pem")).unwrap();
    fs::write(
        d.join("root-key.pem"),
        fs::read(other.path().join("root-key.pem")).unwrap(),
    )
    .unwrap();
    refused(
        d,
        &["c2-cacerts"],
        &fast,
        &["root-key.pem does not match the certificate in root-cert.pem"],
    );
    fs::write(d.join("root-key.pem"), &good_key).unwrap();

    // A root with its key missing.
    fs::remove_file(d.join("root-key.pem")).unwrap();
    refused(
        d,
        &["c2-cacerts"],
        &fast,
        &["root-cert.pem exists but root-key.pem is missing"],
    );
    fs::write(d.join("root-key.pem"), &good_key).unwrap();

    // An incomplete cluster folder.
    let c1_key = fs::read(d.join("c1/ca-key.pem")).unwrap();
    fs::remove_file(d.join("c1/ca-key.pem")).unwrap();
    refused(
        d,
        &["c1-cacerts"],
        &fast,
        &["c1/ is incomplete: ca-key.pem missing", "--force"],
    );
    fs::write(d.join("c1/ca-key.pem"), &c1_key).unwrap();

    // A cluster folder from another root.
    fs::write(
        d.join("c1/ca-cert.pem"),
        fs::read(d.join("c1/ca-cert.pem")).unwrap(),
    )
    .unwrap();
    let other_c = tempfile::tempdir().unwrap();
    certs(other_c.path(), &["c9-cacerts"], &fast).ok();
    fs::create_dir(d.join("c9")).unwrap();
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ] {
        fs::copy(other_c.path().join("c9").join(f), d.join("c9").join(f)).unwrap();
    }
    refused(d, &["c9-cacerts"], &fast, &["different root"]);

    // A cluster folder whose root is gone: a new root would not be its issuer.
    fs::rename(d.join("root-cert.pem"), d.join("saved-root-cert.pem")).unwrap();
    fs::rename(d.join("root-key.pem"), d.join("saved-root-key.pem")).unwrap();
    refused(
        d,
        &["c1-cacerts"],
        &fast,
        &["c1/ holds certificates from a root that is missing or being replaced"],
    );
    fs::rename(d.join("saved-root-cert.pem"), d.join("root-cert.pem")).unwrap();
    fs::rename(d.join("saved-root-key.pem"), d.join("root-key.pem")).unwrap();

    // A file where a folder must go: nothing at all is written, not even the other targets.
    let fresh = tempfile::tempdir().unwrap();
    fs::write(fresh.path().join("c2"), "in the way").unwrap();
    refused(
        fresh.path(),
        &["root-ca", "c1-cacerts", "c2-cacerts"],
        &fast,
        &["c2"],
    );
    assert!(!fresh.path().join("root-cert.pem").exists());
}

#[test]
fn a_rerun_changes_nothing_and_force_regenerates() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    certs(d, &["root-ca", "c1-cacerts", "ns1-certs"], FAST).ok();
    let before = snapshot(d);
    let out = certs(d, &["root-ca", "c1-cacerts", "ns1-certs"], FAST).ok();
    assert_eq!(
        out.stdout.matches("up to date").count(),
        3,
        "{}",
        out.stdout
    );
    assert_eq!(snapshot(d), before);

    let out = certs(d, &["--force", "c1-cacerts"], FAST).ok();
    assert!(
        out.stdout.contains("c1-cacerts: generated"),
        "{}",
        out.stdout
    );
    let after = snapshot(d);
    assert_ne!(
        after[Path::new("c1/ca-key.pem")],
        before[Path::new("c1/ca-key.pem")]
    );
    assert_eq!(
        after[Path::new("root-key.pem")],
        before[Path::new("root-key.pem")]
    );
    assert_eq!(
        after[Path::new("ns1/key.pem")],
        before[Path::new("ns1/key.pem")]
    );
    assert_eq!(mode(&d.join("c1/ca-key.pem")), 0o600);
    openssl(d, ["verify", "-CAfile", "root-cert.pem", "c1/ca-cert.pem"]).ok();
    let leftovers: Vec<_> = after
        .keys()
        .filter(|p| p.to_string_lossy().contains("meshca-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A missing root is made before a cluster target, like make's dependency.
    let t2 = tempfile::tempdir().unwrap();
    let out = certs(t2.path(), &["c1-cacerts"], FAST).ok();
    assert!(out.stdout.contains("root-ca: generated"), "{}", out.stdout);
    openssl(
        t2.path(),
        ["verify", "-CAfile", "root-cert.pem", "c1/ca-cert.pem"],
    )
    .ok();
}

#[test]
fn the_default_intermediate_lifetime_stops_at_the_roots_end() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    certs(d, &["root-ca"], &[FAST[0], FAST[1], ("ROOTCA_DAYS", "30")]).ok();
    let out = certs(d, &["c1-cacerts"], FAST).ok();
    assert!(out.stdout.contains("note: valid until"), "{}", out.stdout);
    let end = |f: &str| {
        openssl(d, ["x509", "-noout", "-enddate", "-in", f])
            .ok()
            .stdout
    };
    assert_eq!(end("c1/ca-cert.pem"), end("root-cert.pem"));
}

#[test]
fn clean_removes_the_root_files_only() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    certs(d, &["c1-cacerts"], FAST).ok();
    fs::write(d.join("root-ca.conf"), "by-product").unwrap();
    let out = certs(d, &["clean"], &[]).ok();
    assert_eq!(
        out.stdout.trim(),
        "clean: removed root-cert.pem, root-key.pem, root-ca.conf"
    );
    assert!(d.join("c1/ca-cert.pem").exists());
    assert!(!d.join("root-cert.pem").exists());
    // make-style ordering: clean first, then a new root.
    let out = certs(d, &["clean", "root-ca"], FAST).ok();
    assert!(out.stdout.contains("clean: nothing to remove"));
    assert!(d.join("root-cert.pem").exists());
}
