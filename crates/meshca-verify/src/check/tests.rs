//! The checks as a whole: bundles made by meshca and by the `openssl` CLI, each broken in
//! exactly one property, and the findings that must (and must not) follow.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use meshca_pki::{CaProfile, CaSigner, KeyType, Subject};
use time::macros::datetime;

use meshca_pki::bundle::{CA_CERT, CA_CRT, CA_KEY, CERT_CHAIN, ROOT_CERT, TLS_CRT, TLS_KEY};
use meshca_pki::{BundleFiles, Certificate, PrivateKey};
use time::{Duration, OffsetDateTime};

use super::*;

const T0: OffsetDateTime = datetime!(2030-01-01 0:00 UTC);

fn day(n: i64) -> OffsetDateTime {
    T0 + Duration::days(n)
}

fn profile(cn: &str, from: i64, to: i64, path_len: Option<u8>) -> CaProfile {
    CaProfile {
        subject: Subject {
            organization: Some("Test".to_owned()),
            common_name: Some(cn.to_owned()),
            locality: None,
        },
        not_before: day(from),
        not_after: day(to),
        path_len,
        dns_names: Vec::new(),
    }
}

fn root(key_type: KeyType, from: i64, to: i64, path_len: Option<u8>) -> CaSigner {
    let key = PrivateKey::generate(key_type).unwrap();
    let cert = profile("Root CA", from, to, path_len)
        .self_signed(&key, ROOT_CERT)
        .unwrap();
    CaSigner::new(cert, key, "root-key.pem").unwrap()
}

fn intermediate(
    root: &CaSigner,
    key_type: KeyType,
    from: i64,
    to: i64,
    path_len: Option<u8>,
) -> CaSigner {
    let key = PrivateKey::generate(key_type).unwrap();
    let cert = root
        .issue_ca(
            &profile("Intermediate CA", from, to, path_len),
            &key,
            CA_CERT,
        )
        .unwrap();
    CaSigner::new(cert, key, CA_KEY).unwrap()
}

fn istio_files(ca: &CaSigner, roots: &[&Certificate]) -> BundleFiles {
    let roots_pem: String = roots.iter().map(|r| r.pem()).collect();
    BundleFiles::from([
        (CA_CERT.to_owned(), ca.cert().pem().into_bytes()),
        (CA_KEY.to_owned(), ca.key().to_pkcs8_pem().into_bytes()),
        (
            CERT_CHAIN.to_owned(),
            (ca.cert().pem() + &roots[0].pem()).into_bytes(),
        ),
        (ROOT_CERT.to_owned(), roots_pem.into_bytes()),
    ])
}

/// A root (10 years from T0) and an intermediate (2 years), both ECDSA P-256.
fn healthy() -> (CaSigner, CaSigner) {
    let r = root(KeyType::EcdsaP256, 0, 3650, None);
    let i = intermediate(&r, KeyType::EcdsaP256, 0, 730, None);
    (r, i)
}

fn run(files: &BundleFiles, now: OffsetDateTime) -> BundleReport {
    check_bundle("c1", files, &CheckOptions::default(), now)
}

/// The findings that did not pass.
fn not_passing(r: &BundleReport) -> Vec<(CheckName, Level)> {
    r.findings
        .iter()
        .filter(|f| f.level != Level::Pass)
        .map(|f| (f.name, f.level))
        .collect()
}

fn failing(names: &[CheckName]) -> Vec<(CheckName, Level)> {
    names.iter().map(|n| (*n, Level::Fail)).collect()
}

fn detail(r: &BundleReport, name: CheckName) -> &str {
    match r.finding(name) {
        Some(f) => &f.detail,
        None => panic!("no finding {name} in {:#?}", r.findings),
    }
}

const ALL_BUNDLE_CHECKS: [CheckName; 12] = [
    CheckName::Layout,
    CheckName::Parse,
    CheckName::KeyMatch,
    CheckName::ChainOrder,
    CheckName::VerifiesToRoot,
    CheckName::Validity,
    CheckName::SigningDaysLeft,
    CheckName::RootDaysLeft,
    CheckName::OutlivesRoot,
    CheckName::FitForSigning,
    CheckName::SignatureDigest,
    CheckName::KeyStrength,
];

#[test]
fn a_healthy_bundle_passes_every_check_in_both_layouts() {
    let (r, i) = healthy();
    let files = istio_files(&i, &[r.cert()]);
    let report = run(&files, day(1));
    let names: Vec<CheckName> = report.findings.iter().map(|f| f.name).collect();
    assert_eq!(names, ALL_BUNDLE_CHECKS);
    assert_eq!(not_passing(&report), [], "{:#?}", report.findings);
    assert_eq!(
        detail(&report, CheckName::Layout),
        "Istio layout: ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem"
    );
    assert!(detail(&report, CheckName::Parse).contains("ca-key.pem (ECDSA P-256 key)"));
    assert!(
        detail(&report, CheckName::SigningDaysLeft).contains("has 729 days left"),
        "{}",
        detail(&report, CheckName::SigningDaysLeft)
    );

    // The same material as cert-manager writes it: tls.crt, tls.key, ca.crt.
    let tls = BundleFiles::from([
        (TLS_CRT.to_owned(), i.cert().pem().into_bytes()),
        (TLS_KEY.to_owned(), i.key().to_pkcs8_pem().into_bytes()),
        (CA_CRT.to_owned(), r.cert().pem().into_bytes()),
    ]);
    let report = run(&tls, day(1));
    assert_eq!(not_passing(&report), [], "{:#?}", report.findings);
    assert_eq!(report.findings.len(), 12);
    assert!(detail(&report, CheckName::Layout).starts_with("kubernetes.io/tls layout"));
}

#[test]
fn rsa_2048_and_p384_keys_are_strong_enough() {
    let r = root(KeyType::Rsa2048, 0, 3650, None);
    let i = intermediate(&r, KeyType::EcdsaP384, 0, 730, None);
    let report = run(&istio_files(&i, &[r.cert()]), day(1));
    assert_eq!(not_passing(&report), [], "{:#?}", report.findings);
    assert_eq!(
        detail(&report, CheckName::KeyStrength),
        "ca-cert.pem: ECDSA P-384, root-cert.pem: RSA-2048"
    );
}

#[test]
fn no_bundle_and_an_unreadable_folder_are_failing_findings() {
    let report = run(&BundleFiles::new(), day(1));
    assert_eq!(not_passing(&report), failing(&[CheckName::Layout]));
    assert_eq!(report.findings.len(), 1);
    assert!(detail(&report, CheckName::Layout).starts_with("no cacerts bundle here"));

    let sources = [BundleSource {
        dir: "nope".to_owned(),
        files: Err("nope: cannot read folder: No such file or directory".to_owned()),
    }];
    let report = check(&sources, &CheckOptions::default(), day(1));
    assert!(!report.passed());
    assert_eq!(
        not_passing(&report.bundles[0]),
        failing(&[CheckName::Folder])
    );
    assert!(report.cross.is_empty());
}

#[test]
fn mixed_and_incomplete_layouts_fail_the_layout_check_only() {
    let (r, i) = healthy();
    let mut files = istio_files(&i, &[r.cert()]);
    files.insert(TLS_KEY.to_owned(), i.key().to_pkcs8_pem().into_bytes());
    let report = run(&files, day(1));
    assert_eq!(not_passing(&report), failing(&[CheckName::Layout]));
    assert!(
        detail(&report, CheckName::Layout)
            .contains("tls.key of the kubernetes.io/tls layout is mixed in"),
        "{}",
        detail(&report, CheckName::Layout)
    );

    let mut files = istio_files(&i, &[r.cert()]);
    files.remove(CERT_CHAIN);
    let report = run(&files, day(1));
    assert_eq!(not_passing(&report), failing(&[CheckName::Layout]));
    assert!(detail(&report, CheckName::Layout).contains("missing cert-chain.pem"));
    // The check that needs the missing file is left out; the rest still ran.
    assert!(report.finding(CheckName::ChainOrder).is_none());
    assert_eq!(report.findings.len(), 11);
}

#[test]
fn a_file_that_does_not_parse_is_named() {
    let (r, i) = healthy();
    let mut files = istio_files(&i, &[r.cert()]);
    files.insert(ROOT_CERT.to_owned(), b"not a certificate".to_vec());
    let report = run(&files, day(1));
    assert!(not_passing(&report).contains(&(CheckName::Parse, Level::Fail)));
    assert!(
        detail(&report, CheckName::Parse).starts_with("root-cert.pem: "),
        "{}",
        detail(&report, CheckName::Parse)
    );
    assert_eq!(
        report.finding(CheckName::KeyMatch).unwrap().level,
        Level::Pass
    );

    let mut files = istio_files(&i, &[r.cert()]);
    files.insert(CA_KEY.to_owned(), r.cert().pem().into_bytes());
    let report = run(&files, day(1));
    assert_eq!(not_passing(&report), failing(&[CheckName::Parse]));
    assert!(detail(&report, CheckName::Parse).starts_with("ca-key.pem: "));
    assert!(report.finding(CheckName::KeyMatch).is_none());
}

#[test]
fn a_key_of_another_certificate_fails_the_key_check_only() {
    let (r, i) = healthy();
    let other = intermediate(&r, KeyType::EcdsaP256, 0, 730, None);
    let mut files = istio_files(&i, &[r.cert()]);
    files.insert(CA_KEY.to_owned(), other.key().to_pkcs8_pem().into_bytes());
    let report = run(&files, day(1));
    assert_eq!(not_passing(&report), failing(&[CheckName::KeyMatch]));
    assert!(detail(&report, CheckName::KeyMatch).contains("is not the key of ca-cert.pem"));
}

#[test]
fn chain_order_and_completeness() {
    let (r, i) = healthy();
    // Root first: the certificates are all there, so istiod still verifies, but the
    // order is wrong.
    let mut files = istio_files(&i, &[r.cert()]);
    files.insert(
        CERT_CHAIN.to_owned(),
        (r.cert().pem() + &i.cert().pem()).into_bytes(),
    );
    let report = run(&files, day(1));
    assert_eq!(not_passing(&report), failing(&[CheckName::ChainOrder]));
    assert!(detail(&report, CheckName::ChainOrder).contains("starts with \"O=Test, CN=Root CA\""));

    // Another CA's certificate in the chain file.
    let other = intermediate(&r, KeyType::EcdsaP256, 0, 730, None);
    files.insert(
        CERT_CHAIN.to_owned(),
        (other.cert().pem() + &r.cert().pem()).into_bytes(),
    );
    let report = run(&files, day(1));
    assert_eq!(not_passing(&report), failing(&[CheckName::ChainOrder]));

    // Without the root, the chain still leads to a root of root-cert.pem: fine.
    files.insert(CERT_CHAIN.to_owned(), i.cert().pem().into_bytes());
    let report = run(&files, day(1));
    assert_eq!(not_passing(&report), []);
    assert!(detail(&report, CheckName::ChainOrder).contains("leading to root"));

    // A chain that leads nowhere in root-cert.pem: the wrong root bundle.
    let stranger = root(KeyType::EcdsaP256, 0, 3650, None);
    files.insert(ROOT_CERT.to_owned(), stranger.cert().pem().into_bytes());
    let report = run(&files, day(1));
    assert_eq!(
        not_passing(&report),
        failing(&[CheckName::ChainOrder, CheckName::VerifiesToRoot])
    );
    assert!(report.finding(CheckName::OutlivesRoot).is_none());
}

#[test]
fn expired_and_not_yet_valid_certificates_fail_validity() {
    let (r, i) = healthy();
    let files = istio_files(&i, &[r.cert()]);
    let report = run(&files, day(731));
    assert_eq!(
        not_passing(&report),
        failing(&[
            CheckName::VerifiesToRoot,
            CheckName::Validity,
            CheckName::SigningDaysLeft
        ])
    );
    assert!(detail(&report, CheckName::Validity).starts_with(
        "ca-cert.pem (\"O=Test, CN=Intermediate CA\") expired at 2032-01-01T00:00:00Z"
    ));

    let late = intermediate(&r, KeyType::EcdsaP256, 10, 730, None);
    let report = run(&istio_files(&late, &[r.cert()]), day(1));
    assert_eq!(
        not_passing(&report),
        failing(&[CheckName::VerifiesToRoot, CheckName::Validity])
    );
    assert!(detail(&report, CheckName::Validity).contains("is not valid before"));
}

#[test]
fn days_left_warn_and_fail_against_the_thresholds() {
    let r = root(KeyType::EcdsaP256, 0, 100, None);
    let i = intermediate(&r, KeyType::EcdsaP256, 0, 100, None);
    let files = istio_files(&i, &[r.cert()]);
    let report = run(&files, day(50));
    assert_eq!(
        not_passing(&report),
        [
            (CheckName::SigningDaysLeft, Level::Warn),
            (CheckName::RootDaysLeft, Level::Warn)
        ]
    );
    assert!(report.passed(), "warnings do not fail the check");
    assert!(detail(&report, CheckName::RootDaysLeft).contains("has 50 days left"));

    let quiet = CheckOptions {
        warn_days: 30,
        fail_days: 0,
    };
    assert_eq!(
        not_passing(&check_bundle("c1", &files, &quiet, day(50))),
        []
    );

    let strict = CheckOptions {
        warn_days: 90,
        fail_days: 60,
    };
    let report = check_bundle("c1", &files, &strict, day(50));
    assert_eq!(
        not_passing(&report),
        failing(&[CheckName::SigningDaysLeft, CheckName::RootDaysLeft])
    );
    assert!(detail(&report, CheckName::SigningDaysLeft).contains("fewer than the 60 required"));
}

#[test]
fn an_intermediate_outliving_its_root_warns() {
    // The chain verifies until the root's end, and meshca's writers never make such a
    // certificate: a planning problem (Istio's own -alt sample has one), not a broken bundle.
    let r = root(KeyType::EcdsaP256, 0, 365, None);
    let i = intermediate(&r, KeyType::EcdsaP256, 0, 730, None);
    let report = run(&istio_files(&i, &[r.cert()]), day(1));
    assert_eq!(
        not_passing(&report),
        [(CheckName::OutlivesRoot, Level::Warn)]
    );
    assert!(report.passed());
    assert!(
        detail(&report, CheckName::OutlivesRoot)
            .starts_with("ca-cert.pem is valid until 2032-01-01")
    );
}

#[test]
fn pathlen_0_on_the_signing_certificate_is_fine_but_not_on_the_root() {
    let r = root(KeyType::EcdsaP256, 0, 3650, None);
    let i = intermediate(&r, KeyType::EcdsaP256, 0, 730, Some(0));
    let report = run(&istio_files(&i, &[r.cert()]), day(1));
    assert_eq!(not_passing(&report), []);
    assert!(detail(&report, CheckName::FitForSigning).contains("pathlen:0"));

    // The root allows no CA below it: the intermediate verifies, its leaves would not.
    let r = root(KeyType::EcdsaP256, 0, 3650, Some(0));
    let i = intermediate(&r, KeyType::EcdsaP256, 0, 730, None);
    let report = run(&istio_files(&i, &[r.cert()]), day(1));
    assert_eq!(not_passing(&report), failing(&[CheckName::FitForSigning]));
    assert!(
        detail(&report, CheckName::FitForSigning)
            .contains("has pathlen:0, but 1 CA(s) would sit between it and every certificate"),
        "{}",
        detail(&report, CheckName::FitForSigning)
    );
}

#[test]
fn report_counts_summary_and_json_shape() {
    let (r, i) = healthy();
    let sources = [
        BundleSource {
            dir: "c1".to_owned(),
            files: Ok(istio_files(&i, &[r.cert()])),
        },
        BundleSource {
            dir: "nope".to_owned(),
            files: Err("nope: cannot read folder".to_owned()),
        },
    ];
    let report = check(&sources, &CheckOptions::default(), day(1));
    assert!(!report.passed());
    assert_eq!(
        report.summary(),
        "14 checks: 12 passed, 1 warning, 1 failed"
    );
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["passed"], false);
    assert_eq!(v["bundles"][0]["dir"], "c1");
    assert_eq!(
        v["bundles"][0]["findings"][0]["name"],
        "files are complete and in one layout"
    );
    assert_eq!(v["bundles"][0]["findings"][0]["level"], "pass");
    assert_eq!(v["bundles"][1]["findings"][0]["level"], "fail");
    assert_eq!(v["cross"][0]["name"], "bundles share one root");
    assert_eq!(v["cross"][0]["level"], "warn");

    let one = check(&sources[..1], &CheckOptions::default(), day(1));
    assert_eq!(one.summary(), "all 12 checks passed");
    assert!(one.cross.is_empty());
}

fn source(dir: &str, files: BundleFiles) -> BundleSource {
    BundleSource {
        dir: dir.to_owned(),
        files: Ok(files),
    }
}

#[test]
fn bundles_must_accept_each_others_chains_and_the_odd_one_is_named() {
    let (a, a1) = healthy();
    let a2 = intermediate(&a, KeyType::EcdsaP256, 0, 730, None);
    let (b, b1) = healthy();
    let o = CheckOptions::default();
    let same = [
        source("c1", istio_files(&a1, &[a.cert()])),
        source("c2", istio_files(&a2, &[a.cert()])),
    ];
    let report = check(&same, &o, day(1));
    assert!(report.passed());
    assert_eq!(report.cross[0].level, Level::Pass);
    assert!(
        report.cross[0]
            .detail
            .starts_with("2 bundles chain to root \"O=Test, CN=Root CA\""),
        "{}",
        report.cross[0].detail
    );

    let odd = [
        source("c1", istio_files(&a1, &[a.cert()])),
        source("other/c3", istio_files(&b1, &[b.cert()])),
        source("c2", istio_files(&a2, &[a.cert()])),
    ];
    let report = check(&odd, &o, day(1));
    assert!(report.bundles.iter().all(BundleReport::passed));
    assert_eq!(report.cross[0].level, Level::Fail);
    let detail = &report.cross[0].detail;
    assert!(
        detail.starts_with(
            "other/c3 is the odd one out: c1 → other/c3: other/c3 does not trust c1's root"
        ),
        "{detail}"
    );
    assert!(
        detail.contains("other/c3 → c2: c2 does not trust other/c3's root"),
        "{detail}"
    );

    // Mid-rotation: c1 already signs under b, both c1 and c2 trust both roots: fine. A
    // cluster that trusts only a cannot accept c1's chain; c1 and c3 are in the one broken
    // pair, c2 is in none.
    let b2 = intermediate(&b, KeyType::EcdsaP256, 0, 730, None);
    let rotating = [
        source("c1", istio_files(&b2, &[b.cert(), a.cert()])),
        source("c2", istio_files(&a2, &[a.cert(), b.cert()])),
    ];
    let cross = &check(&rotating, &o, day(1)).cross[0];
    assert_eq!(cross.level, Level::Pass, "{}", cross.detail);
    assert!(
        cross
            .detail
            .starts_with("2 bundles chain to roots that every one of them trusts"),
        "{}",
        cross.detail
    );
    let lagging = [
        source("c1", istio_files(&b2, &[b.cert(), a.cert()])),
        source("c2", istio_files(&a2, &[a.cert(), b.cert()])),
        source("c3", istio_files(&a1, &[a.cert()])),
    ];
    let cross = &check(&lagging, &o, day(1)).cross[0];
    assert_eq!(cross.level, Level::Fail);
    assert!(
        cross
            .detail
            .starts_with("c1, c3 are the odd ones out: c1 → c3: c3 does not trust c1's root"),
        "{}",
        cross.detail
    );
    assert!(!cross.detail.contains("c3 → c1"), "{}", cross.detail);

    // A cluster that already signs under b but dropped a: its peers trust b, it no longer
    // accepts their chains.
    let dropped = [
        source("c1", istio_files(&a1, &[a.cert(), b.cert()])),
        source("c2", istio_files(&a2, &[a.cert(), b.cert()])),
        source("c3", istio_files(&b2, &[b.cert()])),
    ];
    let cross = &check(&dropped, &o, day(1)).cross[0];
    assert_eq!(cross.level, Level::Fail);
    assert!(
        cross
            .detail
            .starts_with("c3 is the odd one out: c1 → c3: c3 does not trust c1's root"),
        "{}",
        cross.detail
    );
    assert!(cross.detail.contains("c2 → c3"), "{}", cross.detail);

    // A bundle whose own chain is broken is left out (its own findings fail) with a warning.
    let expired = intermediate(&a, KeyType::EcdsaP256, 0, 10, None);
    let broken = [
        source("c1", istio_files(&a1, &[a.cert()])),
        source("c2", istio_files(&a2, &[a.cert()])),
        source("c3", istio_files(&expired, &[a.cert()])),
    ];
    let cross = &check(&broken, &o, day(20)).cross[0];
    assert_eq!(cross.level, Level::Warn);
    assert!(
        cross
            .detail
            .ends_with("not compared: c3 (chain does not verify against its own roots)"),
        "{}",
        cross.detail
    );
}

/// A scratch folder where the `openssl` CLI makes the material meshca cannot make on
/// purpose: SHA-1 signatures, restricted extended key usage, missing keyCertSign, RSA-1024.
struct Openssl {
    dir: PathBuf,
}

const GOOD_CA_EXT: &str = "basicConstraints = critical, CA:TRUE\n\
    keyUsage = critical, keyCertSign, cRLSign, digitalSignature\n\
    subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n";
const YEAR: &[&str] = &["-days", "365"];
const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
const RSA2048: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
const RSA1024: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"];

impl Openssl {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "meshca-check-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let o = Openssl { dir };
        o.write(
            "ca.cnf",
            "[ca]\ndefault_ca = test_ca\n[test_ca]\ndatabase = index.txt\n\
             new_certs_dir = .\nserial = serial\ndefault_md = sha256\npolicy = any\n\
             unique_subject = no\npreserve = yes\ncopy_extensions = none\n\
             [any]\norganizationName = optional\ncommonName = supplied\n",
        );
        o.write("index.txt", "");
        o.write("serial", "1000\n");
        o
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).unwrap();
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap()
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(self.path())
            .args(args)
            .output()
            .expect("the openssl CLI runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn key(&self, name: &str, algorithm: &[&str]) {
        let file = format!("{name}-key.pem");
        let mut args = vec!["genpkey", "-out", &file];
        args.extend_from_slice(algorithm);
        self.run(&args);
    }

    /// `root-cert.pem` and `root-key.pem`.
    fn root(&self, algorithm: &[&str]) {
        self.key("root", algorithm);
        self.run(&[
            "req",
            "-x509",
            "-new",
            "-key",
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
        ]);
    }

    /// `{name}-cert.pem` and `{name}-key.pem`, signed by `{issuer}-cert.pem` with `ext` as
    /// its extensions and `ca_args` passed to `openssl ca`.
    fn ca(&self, name: &str, issuer: &str, algorithm: &[&str], ext: &str, ca_args: &[&str]) {
        self.key(name, algorithm);
        let (key, csr, cert, ext_file) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}-cert.pem"),
            format!("{name}.ext"),
        );
        let subject = format!("/O=Test/CN={name}");
        self.run(&["req", "-new", "-key", &key, "-subj", &subject, "-out", &csr]);
        self.write(&ext_file, ext);
        let (issuer_cert, issuer_key) = (format!("{issuer}-cert.pem"), format!("{issuer}-key.pem"));
        let mut args = vec![
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-notext",
            "-cert",
            &issuer_cert,
            "-keyfile",
            &issuer_key,
            "-in",
            &csr,
            "-out",
            &cert,
            "-extfile",
            &ext_file,
        ];
        args.extend_from_slice(ca_args);
        self.run(&args);
    }

    /// An Istio-layout bundle whose signing certificate is `{signing}-cert.pem`, with
    /// `mids` between it and the root.
    fn bundle(&self, signing: &str, mids: &[&str]) -> BundleFiles {
        let cert = self.read(&format!("{signing}-cert.pem"));
        let mut chain = cert.clone();
        for m in mids {
            chain.extend(self.read(&format!("{m}-cert.pem")));
        }
        chain.extend(self.read("root-cert.pem"));
        BundleFiles::from([
            (CA_CERT.to_owned(), cert),
            (CA_KEY.to_owned(), self.read(&format!("{signing}-key.pem"))),
            (CERT_CHAIN.to_owned(), chain),
            (ROOT_CERT.to_owned(), self.read("root-cert.pem")),
        ])
    }
}

impl Drop for Openssl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now() -> OffsetDateTime {
    // openssl stamps its certificates with the real clock, so these tests check at it.
    OffsetDateTime::now_utc()
}

#[test]
fn openssl_made_bundle_passes_and_openssl_agrees() {
    let o = Openssl::new();
    o.root(P256);
    o.ca("ca", "root", P256, GOOD_CA_EXT, YEAR);
    let report = run(&o.bundle("ca", &[]), now());
    assert_eq!(not_passing(&report), [], "{:#?}", report.findings);
    o.run(&["verify", "-CAfile", "root-cert.pem", "ca-cert.pem"]);
}

#[test]
fn a_sha1_signed_intermediate_fails_the_digest_check() {
    let o = Openssl::new();
    // An RSA root, so that the SHA-1 signature itself still verifies.
    o.root(RSA2048);
    o.ca(
        "ca",
        "root",
        P256,
        GOOD_CA_EXT,
        &["-days", "365", "-md", "sha1"],
    );
    let report = run(&o.bundle("ca", &[]), now());
    // istiod's own verification refuses SHA-1 too; the order, key and everything else hold.
    assert_eq!(
        not_passing(&report),
        failing(&[CheckName::VerifiesToRoot, CheckName::SignatureDigest]),
        "{:#?}",
        report.findings
    );
    assert_eq!(
        detail(&report, CheckName::SignatureDigest),
        "ca-cert.pem is signed with sha1WithRSAEncryption: Go verifiers (istiod) reject it"
    );
    assert!(detail(&report, CheckName::KeyStrength).contains("root-cert.pem: RSA-2048"));
}

#[test]
fn an_intermediate_without_server_auth_is_refused_as_go_does() {
    let o = Openssl::new();
    o.root(P256);
    let ext = format!("{GOOD_CA_EXT}extendedKeyUsage = clientAuth\n");
    o.ca("ca", "root", P256, &ext, YEAR);
    let report = run(&o.bundle("ca", &[]), now());
    assert_eq!(not_passing(&report), failing(&[CheckName::FitForSigning]));
    assert!(
        detail(&report, CheckName::FitForSigning).contains(
            "ca-cert.pem restricts extendedKeyUsage to TLS Web Client Authentication \
             without serverAuth, which Go verifiers (istiod) reject"
        ),
        "{}",
        detail(&report, CheckName::FitForSigning)
    );

    // serverAuth among them is what Go asks for.
    let o = Openssl::new();
    o.root(P256);
    let ext = format!("{GOOD_CA_EXT}extendedKeyUsage = serverAuth, clientAuth\n");
    o.ca("ca", "root", P256, &ext, YEAR);
    assert_eq!(not_passing(&run(&o.bundle("ca", &[]), now())), []);
}

#[test]
fn a_ca_without_key_cert_sign_or_ca_flag_cannot_sign_workloads() {
    let o = Openssl::new();
    o.root(P256);
    o.ca(
        "ca",
        "root",
        P256,
        "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, digitalSignature, cRLSign\n",
        YEAR,
    );
    let report = run(&o.bundle("ca", &[]), now());
    assert_eq!(not_passing(&report), failing(&[CheckName::FitForSigning]));
    assert!(detail(&report, CheckName::FitForSigning).contains("lacks keyCertSign"));

    o.ca(
        "leafish",
        "root",
        P256,
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n",
        YEAR,
    );
    let report = run(&o.bundle("leafish", &[]), now());
    assert_eq!(not_passing(&report), failing(&[CheckName::FitForSigning]));
    assert!(detail(&report, CheckName::FitForSigning).contains("is not a CA"));
}

#[test]
fn a_non_ca_in_the_middle_fails_verification_only() {
    let o = Openssl::new();
    o.root(P256);
    o.ca(
        "mid",
        "root",
        P256,
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, keyCertSign\n",
        YEAR,
    );
    o.ca("ca", "mid", P256, GOOD_CA_EXT, YEAR);
    let report = run(&o.bundle("ca", &["mid"]), now());
    assert_eq!(not_passing(&report), failing(&[CheckName::VerifiesToRoot]));
    assert!(
        detail(&report, CheckName::VerifiesToRoot).contains("CA:TRUE"),
        "{}",
        detail(&report, CheckName::VerifiesToRoot)
    );
}

#[test]
fn rsa_1024_fails_key_strength_but_still_parses_and_matches() {
    let o = Openssl::new();
    o.root(P256);
    o.ca("ca", "root", RSA1024, GOOD_CA_EXT, YEAR);
    let files = o.bundle("ca", &[]);
    let report = run(&files, now());
    assert_eq!(not_passing(&report), failing(&[CheckName::KeyStrength]));
    assert!(detail(&report, CheckName::Parse).contains("ca-key.pem (RSA-1024 key)"));
    assert_eq!(
        detail(&report, CheckName::KeyStrength),
        "ca-cert.pem: RSA-1024 is too weak (at least 2048 bits)"
    );

    // The same key as PKCS#1 (`RSA PRIVATE KEY`) is read too.
    o.run(&[
        "rsa",
        "-in",
        "ca-key.pem",
        "-traditional",
        "-out",
        "pkcs1.pem",
    ]);
    let pkcs1 = o.read("pkcs1.pem");
    assert!(pkcs1.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"));
    let mut files = files;
    files.insert(CA_KEY.to_owned(), pkcs1);
    let report = run(&files, now());
    assert_eq!(not_passing(&report), failing(&[CheckName::KeyStrength]));

    // And a weak key of another certificate is still told apart.
    o.key("stranger", RSA1024);
    files.insert(CA_KEY.to_owned(), o.read("stranger-key.pem"));
    let report = run(&files, now());
    assert_eq!(
        not_passing(&report),
        failing(&[CheckName::KeyMatch, CheckName::KeyStrength])
    );
}

#[test]
fn ca_crl_pem_is_checked_as_istiod_checks_it_when_present() {
    let r = root(KeyType::EcdsaP256, 0, 3650, None);
    let i = intermediate(&r, KeyType::EcdsaP256, 0, 730, None);
    let mut files = istio_files(&i, &[r.cert()]);
    // No file, no finding: istiod reads ca-crl.pem only when it exists.
    assert!(run(&files, day(1)).finding(CheckName::Crl).is_none());
    files.insert("ca-crl.pem".to_owned(), Vec::new());
    let report = run(&files, day(1));
    assert_eq!(not_passing(&report), []);
    assert_eq!(
        detail(&report, CheckName::Crl),
        "ca-crl.pem is empty: istiod ignores it"
    );
    files.insert("ca-crl.pem".to_owned(), b"not a CRL\n".to_vec());
    let report = run(&files, day(1));
    assert_eq!(not_passing(&report), failing(&[CheckName::Crl]));
    assert_eq!(
        detail(&report, CheckName::Crl),
        "ca-crl.pem: not a valid CRL: no PEM section found (expected -----BEGIN ...-----)"
    );
    // A CRL file of certificates: every block must be a CRL.
    files.insert("ca-crl.pem".to_owned(), r.cert().pem().into_bytes());
    let report = run(&files, day(1));
    assert!(
        detail(&report, CheckName::Crl).starts_with("ca-crl.pem: not a valid CRL: "),
        "{}",
        detail(&report, CheckName::Crl)
    );
}

#[test]
fn a_root_bundle_holding_the_signing_certificate_is_no_root() {
    let r = root(KeyType::EcdsaP256, 0, 3650, None);
    let i = intermediate(&r, KeyType::EcdsaP256, 0, 730, None);
    let mut files = istio_files(&i, &[r.cert()]);
    files.insert(CERT_CHAIN.to_owned(), i.cert().pem().into_bytes());
    files.insert(ROOT_CERT.to_owned(), i.cert().pem().into_bytes());
    let report = run(&files, day(1));
    assert_eq!(
        not_passing(&report),
        failing(&[CheckName::ChainOrder, CheckName::VerifiesToRoot])
    );
    assert!(
        detail(&report, CheckName::VerifiesToRoot).contains("is not a root (not self-signed)"),
        "{}",
        detail(&report, CheckName::VerifiesToRoot)
    );
}
