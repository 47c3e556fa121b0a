//! Istio's own bundle loader as the judge of what meshca accepts: `bundle-oracle` (built by
//! `scripts/peers` from `interop/istio/cmd/bundle-oracle`) runs the code istiod runs on a plugged-in
//! `cacerts` folder at start (`ca.NewPluggedCertIstioCAOptions`, `ca.NewIstioCA`, then its own
//! serving certificate). Over a table of bundles, every one that meshca writes (`certs` with each
//! key type, `secret --format tls`, `serve --self-signed-dir`, `trust` in both schemas, through
//! cfssl, and at every phase of a root rotation) and Istio's samples, then bundles broken one
//! property at a time by the `openssl` CLI, this test asserts that:
//! - Istio loads everything meshca writes, and meshca accepts everything it writes and Istio's
//!   samples;
//! - every bundle `meshca serve` or `meshca check` refuses, Istio refuses too, unless the row is in
//!   [`STRICTER`] with the reason;
//! - every bundle Istio refuses, meshca refuses too, unless the row is in [`LENIENT`];
//! - `docs/ISTIO.md` holds the agreement table as rendered here (`MESHCA_BLESS=1` rewrites it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures by design

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use meshca_pki::{CaProfile, KeyType, PrivateKey, Subject};
use meshca_testkit::cfssl::Cfssl;
use meshca_testkit::{Run, openssl, pem_blocks, run_in};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");
const P256: &[(&str, &str)] = &[
    ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
    ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
];

/// Rows meshca refuses (in `serve`, or with `check` failing) and Istio loads, each with why.
const STRICTER: &[(&str, &str)] = &[
    (
        "RSA-1024 signing certificate",
        "RSA below 2048 bits is refused: NIST SP 800-131A has disallowed RSA-1024 signatures \
         since 2013, and aws-lc-rs does not load such keys; Go takes RSA down to 1024 bits",
    ),
    (
        "ECDSA P-521 signing certificate",
        "a limitation, not a safety rule: meshca signs with RSA 2048 to 4096 and ECDSA P-256 or \
         P-384 only",
    ),
    (
        "Ed25519 signing certificate",
        "a limitation, not a safety rule: meshca signs with RSA 2048 to 4096 and ECDSA P-256 or \
         P-384 only",
    ),
    (
        "signing certificate's keyUsage lacks keyCertSign",
        "RFC 5280 requires keyCertSign of a certificate that signs certificates, and OpenSSL and \
         BoringSSL (Envoy) refuse workload chains through such a CA; Go's verifier does not look \
         at keyUsage",
    ),
    (
        "root with pathlen:0 above the signing certificate",
        "the root allows no CA below it, so every workload chain (leaf, signing certificate, \
         root) breaks the path length and fails verification, Go's included; Go counts no path \
         length when it verifies the CA itself",
    ),
    (
        "root-cert.pem holds the signing certificate, not a root",
        "there is no root, so peers that verify up to a self-signed anchor (OpenSSL and \
         BoringSSL without partial chains) cannot verify the workloads; Go trusts whatever is \
         in its root pool",
    ),
    (
        "cert-chain.pem in reverse order",
        "istiod hands cert-chain.pem to workloads as it is, so their peers get the chain out of \
         order; meshca holds the file to the order it needs to be in (serve sends the signing \
         certificate, the file's intermediates and root-cert.pem); Go's loader only pools the \
         file's certificates",
    ),
    (
        "cert-chain.pem ends with an unrelated certificate",
        "istiod hands cert-chain.pem to workloads as it is, so a certificate off the path goes \
         to every peer; Go's loader only pools the file's certificates",
    ),
    (
        "cert-chain.pem is another bundle's chain",
        "istiod would hand workloads another CA's chain; Go's loader only pools the \
         certificates and finds the path through root-cert.pem",
    ),
];

/// Rows Istio refuses and meshca accepts (in `serve`, or with `check` not failing), each with
/// why. Each is an open finding against meshca, kept here so that the table says so.
const LENIENT: &[(&str, &str)] = &[];

/// The table's place in `docs/ISTIO.md`.
const BEGIN: &str = "<!-- agreement table: rendered by crates/meshca/tests/istio_oracle.rs; \
                     MESHCA_BLESS=1 rewrites it -->";
const END: &str = "<!-- end of agreement table -->";

/// Where a bundle comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Origin {
    /// written by a meshca command
    Meshca,
    /// Istio's `samples/certs`
    IstioSample,
    /// broken (or varied) on purpose with the `openssl` CLI
    Crafted,
}

struct Row {
    name: String,
    origin: Origin,
    dir: PathBuf,
}

/// The rows, in table order.
#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    fn add(&mut self, name: &str, origin: Origin, dir: PathBuf) {
        assert!(
            self.0.iter().all(|r| r.name != name),
            "two rows named {name:?}"
        );
        self.0.push(Row {
            name: name.to_owned(),
            origin,
            dir,
        });
    }
}

/// `meshca check` on one folder.
#[derive(Debug)]
enum Check {
    Passes,
    Warns(Vec<String>),
    Fails(Vec<String>),
}

impl Check {
    fn fails(&self) -> bool {
        matches!(self, Check::Fails(_))
    }

    fn cell(&self) -> String {
        match self {
            Check::Passes => "passes".to_owned(),
            Check::Warns(w) => format!("warns: {}", w.join("; ")),
            Check::Fails(f) => format!("fails: {}", f.join("; ")),
        }
    }
}

/// What the oracle said of one folder.
#[derive(Debug)]
struct Istio {
    ok: bool,
    stage: String,
    error: String,
}

/// The three verdicts on a row.
struct Verdicts {
    serve: Result<(), String>,
    check: Check,
    istio: Istio,
}

impl Verdicts {
    /// meshca refuses and Istio loads.
    fn stricter(&self) -> bool {
        self.istio.ok && (self.serve.is_err() || self.check.fails())
    }

    /// Istio refuses and meshca accepts somewhere.
    fn lenient(&self) -> bool {
        !self.istio.ok && (self.serve.is_ok() || !self.check.fails())
    }
}

fn meshca(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    run_in(MESHCA, dir, args, env)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        // Through symlinks: the folder store writes Kubernetes' `..data` layout.
        if fs::metadata(e.path()).unwrap().is_file() {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write(path: &Path, text: impl AsRef<[u8]>) {
    fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

// ---- what meshca writes ----

/// Environment variables for a meshca command.
type Env = &'static [(&'static str, &'static str)];

/// `meshca certs` with each key type, the tls layout of `meshca secret`, and the self-signed root
/// of `meshca serve --self-signed-dir`.
fn meshca_certs_rows(t: &Path, table: &mut Table) {
    let certs = t.join("certs");
    fs::create_dir_all(&certs).unwrap();
    let kinds: &[(&str, &str, Env)] = &[
        (
            "rsa4096",
            "certs: RSA-4096 root and intermediate (the Makefile's defaults)",
            &[],
        ),
        (
            "rsa2048",
            "certs: RSA-2048 root and intermediate",
            &[("ROOTCA_KEYSZ", "2048"), ("INTERMEDIATE_KEYSZ", "2048")],
        ),
        ("p256", "certs: ECDSA P-256 root and intermediate", P256),
        (
            "p384",
            "certs: ECDSA P-384 root and intermediate",
            &[
                ("ROOTCA_KEY_TYPE", "ecdsa-p384"),
                ("INTERMEDIATE_KEY_TYPE", "ecdsa-p384"),
            ],
        ),
        (
            "mixed",
            "certs: RSA-2048 root, ECDSA P-256 intermediate",
            &[
                ("ROOTCA_KEYSZ", "2048"),
                ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
            ],
        ),
    ];
    for (slug, name, env) in kinds {
        meshca(&certs, &["certs", "-C", slug, "c1-cacerts"], env).ok();
        table.add(name, Origin::Meshca, certs.join(slug).join("c1"));
    }
    meshca(&certs, &["certs", "-C", "p256", "foo-certs"], P256).ok();
    table.add(
        "certs: `<ns>-certs` folder (workload files beside the CA's)",
        Origin::Meshca,
        certs.join("p256/foo"),
    );

    let out = meshca(
        &certs,
        &["secret", "p256/c1", "--format", "tls", "-o", "json"],
        &[],
    )
    .ok();
    let secret: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let tls = certs.join("tls");
    fs::create_dir_all(&tls).unwrap();
    for (key, value) in secret["data"].as_object().unwrap() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap();
        write(&tls.join(key), bytes);
    }
    table.add(
        "secret --format tls: the kubernetes.io/tls layout",
        Origin::Meshca,
        tls,
    );

    let self_signed = certs.join("self-signed");
    let mut serve = Command::new(MESHCA);
    serve
        .current_dir(&certs)
        .args(["serve", "--cacerts", "no-such-folder", "--self-signed-dir"])
        .arg(&self_signed)
        .args(["--listen", "127.0.0.1:0", "--plaintext"]);
    serve_starts(serve).unwrap_or_else(|e| panic!("serve --self-signed-dir: {e}"));
    table.add(
        "serve --self-signed-dir: istiod's self-signed root",
        Origin::Meshca,
        self_signed,
    );
}

/// A folder store with `mgmt` and `cluster1`, and `policy` as `policy.yaml`.
fn trust_store(d: &Path, policy: &str) {
    for c in ["mgmt", "cluster1"] {
        fs::create_dir_all(d.join("store").join(c)).unwrap();
    }
    write(&d.join("policy.yaml"), policy);
}

fn trust(d: &Path, args: &[&str]) -> Run {
    let mut all = vec!["trust"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-f", "policy.yaml", "--store", "store"]);
    meshca(d, &all, &[])
}

fn cluster1_cacerts(d: &Path) -> PathBuf {
    d.join("store/cluster1/istio-system/cacerts")
}

/// `meshca trust` intermediates: a generated root, seed 001's secretRef root (Gloo's schema,
/// RSA-4096 intermediates), and an intermediate signed by a real `cfssl serve`.
fn meshca_trust_rows(t: &Path, table: &mut Table) {
    let d = t.join("trust-generated");
    trust_store(&d, meshca_testkit::GENERATED_ROOT_POLICY);
    trust(&d, &["apply"]).ok();
    table.add(
        "trust: generated root, ECDSA P-256 intermediate",
        Origin::Meshca,
        cluster1_cacerts(&d),
    );

    let d = t.join("trust-seed");
    trust_store(&d, meshca_testkit::SEED_001_POLICY);
    meshca(&d, &["certs", "root-ca"], P256).ok();
    let secret = d.join("store/mgmt/gloo-mesh/my-root-trust-policy.gloo-mesh");
    fs::create_dir_all(&secret).unwrap();
    for (from, to) in [
        ("root-cert.pem", "ca-cert.pem"),
        ("root-key.pem", "ca-key.pem"),
        ("root-cert.pem", "cert-chain.pem"),
        ("root-cert.pem", "root-cert.pem"),
    ] {
        fs::copy(d.join(from), secret.join(to)).unwrap();
    }
    trust(&d, &["apply"]).ok();
    table.add(
        "trust: seed 001 (Gloo schema, secretRef root, RSA-4096 intermediate)",
        Origin::Meshca,
        cluster1_cacerts(&d),
    );
    table.add(
        "the seed's root secret plugged in as is (root as signing CA)",
        Origin::Crafted,
        secret,
    );

    match cfssl_row(t) {
        Ok(dir) => table.add(
            "trust: intermediate signed by cfssl serve (external signer)",
            Origin::Meshca,
            dir,
        ),
        Err(why) => println!("skipped the cfssl row: {why}"),
    }
}

/// A child process killed on drop.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `meshca trust apply` with the policy's CA behind `cfssl serve`; `Err` when cfssl is missing.
fn cfssl_row(t: &Path) -> Result<PathBuf, String> {
    if !Cfssl::available() {
        return Err("`cfssl` is not on PATH (scripts/test installs golang-cfssl)".to_owned());
    }
    let d = t.join("trust-cfssl");
    fs::create_dir_all(&d).unwrap();
    meshca(&d, &["certs", "root-ca"], P256).ok();
    let cfssl = Cfssl::start(&d, Path::new("root-cert.pem"), Path::new("root-key.pem"));
    trust_store(&d, &cfssl.policy(30));
    trust(&d, &["apply"]).ok();
    drop(cfssl);
    Ok(cluster1_cacerts(&d))
}

/// cluster1's bundle at each phase of a root rotation, from `meshca trust run` on a clock file
/// that starts far enough in the past for every certificate to be valid now.
fn rotation_rows(t: &Path, table: &mut Table) {
    let d = t.join("trust-rotation");
    trust_store(&d, meshca_testkit::ROTATING_ROOT_POLICY);
    let clock = d.join("now");
    let set_clock = |at: OffsetDateTime| {
        write(&d.join("now.tmp"), at.format(&Rfc3339).unwrap());
        fs::rename(d.join("now.tmp"), &clock).unwrap();
    };
    let mut at = OffsetDateTime::now_utc() - time::Duration::days(5) - time::Duration::hours(6);
    set_clock(at);
    let log = fs::File::create(d.join("run.log")).unwrap();
    let child = Command::new(MESHCA)
        .current_dir(&d)
        .args(["trust", "run", "-f", "policy.yaml", "--store", "store"])
        .args(["--poll", "100ms", "--clock-file"])
        .arg(&clock)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _run = Bg(child);
    let cacerts = cluster1_cacerts(&d);
    let roots =
        || pem_blocks(&fs::read_to_string(cacerts.join("root-cert.pem")).unwrap_or_default());
    let chain_end = || {
        pem_blocks(&fs::read_to_string(cacerts.join("cert-chain.pem")).unwrap_or_default())
            .pop()
            .unwrap_or_default()
    };
    let phase = || {
        let out = trust(&d, &["status", "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .ok()
            .map(|v| v["rotation"]["phase"].as_str().unwrap_or("idle").to_owned())
            .unwrap_or_default()
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "no {what}:\n{}",
                fs::read_to_string(d.join("run.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("first bundle", &|| {
        cacerts.join("ca-key.pem").exists() && roots().len() == 1 && phase() == "idle"
    });
    let old_root = roots().remove(0);
    let snapshot = |slug: &str, name: &str, table: &mut Table| {
        let to = t.join("rotation").join(slug);
        copy_dir(&cacerts, &to);
        table.add(name, Origin::Meshca, to);
    };
    snapshot("before", "trust rotate-root: before (old root)", table);
    at += time::Duration::days(5) + time::Duration::hours(1);
    set_clock(at);
    wait("phase 1/3 with both roots", &|| {
        phase() == "1/3 add-root" && roots().len() == 2
    });
    snapshot(
        "add-root",
        "trust rotate-root: phase 1/3 add-root (both roots, old intermediate)",
        table,
    );
    at += time::Duration::hours(2);
    set_clock(at);
    wait("phase 2/3 with a re-issued intermediate", &|| {
        phase() == "2/3 reissue" && roots().len() == 2 && chain_end() != old_root
    });
    snapshot(
        "reissue",
        "trust rotate-root: phase 2/3 reissue (both roots, new intermediate)",
        table,
    );
    at += time::Duration::hours(2);
    set_clock(at);
    wait("the end of the rotation", &|| {
        phase() == "idle" && roots().len() == 1 && roots()[0] != old_root
    });
    snapshot("after", "trust rotate-root: after (new root only)", table);
}

/// Istio's `samples/certs`: the plug-in CA set and its `-alt` sets, in the file names istiod reads.
fn istio_sample_rows(t: &Path, table: &mut Table) {
    let samples = meshca_testkit::istio_samples();
    let sets: &[(&str, &str, [&str; 4])] = &[
        (
            "samples",
            "Istio samples/certs (cert-chain.pem without the root)",
            [
                "ca-cert.pem",
                "ca-key.pem",
                "cert-chain.pem",
                "root-cert.pem",
            ],
        ),
        (
            "samples-alt",
            "Istio samples/certs, the -alt set",
            [
                "ca-cert-alt.pem",
                "ca-key-alt.pem",
                "cert-chain-alt.pem",
                "root-cert-alt.pem",
            ],
        ),
        (
            "samples-alt-2",
            "Istio samples/certs, the -alt-2 set (its key is not its certificate's)",
            [
                "ca-cert-alt-2.pem",
                "ca-key-alt-2.pem",
                "cert-chain-alt-2.pem",
                "root-cert-combined.pem",
            ],
        ),
    ];
    for (slug, name, files) in sets {
        // At this version ca-key-alt-2.pem is not the key of ca-cert-alt-2.pem: kept as a row
        // both refuse, not as a sample that must load.
        let origin = if *slug == "samples-alt-2" {
            Origin::Crafted
        } else {
            Origin::IstioSample
        };
        let dir = t.join(slug);
        fs::create_dir_all(&dir).unwrap();
        for (from, to) in files.iter().zip([
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ]) {
            fs::copy(samples.join(from), dir.join(to)).unwrap();
        }
        table.add(name, origin, dir);
    }
}

// ---- bundles made by openssl ----

const GOOD_CA_EXT: &str = "basicConstraints = critical, CA:TRUE\n\
    keyUsage = critical, keyCertSign, cRLSign, digitalSignature\n\
    subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n";
const YEAR: &[&str] = &["-days", "365"];
const EC_P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// A root made by the `openssl` CLI in its own folder, and intermediates issued under it with
/// `openssl ca` as Istio-layout bundles.
struct OpensslCa {
    dir: PathBuf,
}

impl OpensslCa {
    /// An RSA-2048 root (so that a SHA-1 signature by it still verifies), with `extra` `-addext`
    /// extensions.
    fn new(dir: PathBuf, extra: &[&str]) -> Self {
        fs::create_dir_all(&dir).unwrap();
        let mut args = vec![
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
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        if !extra.iter().any(|e| e.starts_with("basicConstraints")) {
            args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        }
        for e in extra {
            args.extend(["-addext", e]);
        }
        openssl(&dir, &args).ok();
        Self::with_root(dir)
    }

    /// A CA over the `root-cert.pem` and `root-key.pem` already in `dir`.
    fn with_root(dir: PathBuf) -> Self {
        write(
            &dir.join("ca.cnf"),
            "[ca]\ndefault_ca = test_ca\n[test_ca]\ndatabase = index.txt\nnew_certs_dir = .\n\
             serial = serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
             preserve = yes\ncopy_extensions = none\ndefault_crl_days = 30\n\
             crl_extensions = crl_ext\n[crl_ext]\nauthorityKeyIdentifier = keyid:always\n\
             [any]\norganizationName = optional\ncommonName = supplied\n",
        );
        write(&dir.join("index.txt"), "");
        write(&dir.join("serial"), "1000\n");
        OpensslCa { dir }
    }

    /// `name/` with a key made by `genpkey` `algorithm`, a certificate with extensions `ext`
    /// issued by `openssl ca` with `ca_args`, the chain (it, then the root) and the root.
    fn bundle(&self, name: &str, algorithm: &[&str], ext: &str, ca_args: &[&str]) -> PathBuf {
        let d = &self.dir;
        fs::create_dir_all(d.join(name)).unwrap();
        let at = |f: &str| format!("{name}/{f}");
        let mut genpkey = vec!["genpkey".to_owned(), "-out".to_owned(), at("ca-key.pem")];
        genpkey.extend(algorithm.iter().map(|s| (*s).to_owned()));
        openssl(d, &genpkey).ok();
        let subject = format!("/O=Test/CN={name}");
        openssl(
            d,
            [
                "req",
                "-new",
                "-key",
                &at("ca-key.pem"),
                "-subj",
                &subject,
                "-out",
                &at("ca.csr"),
            ],
        )
        .ok();
        write(&d.join(at("ca.ext")), ext);
        let (csr, cert, ext_file) = (at("ca.csr"), at("ca-cert.pem"), at("ca.ext"));
        let mut args = vec![
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-notext",
            "-cert",
            "root-cert.pem",
            "-keyfile",
            "root-key.pem",
            "-in",
            &csr,
            "-out",
            &cert,
            "-extfile",
            &ext_file,
        ];
        args.extend_from_slice(ca_args);
        openssl(d, &args).ok();
        for f in ["ca.csr", "ca.ext"] {
            fs::remove_file(d.join(at(f))).unwrap();
        }
        let dir = d.join(name);
        write(
            &dir.join("cert-chain.pem"),
            read(&dir.join("ca-cert.pem")) + &read(&d.join("root-cert.pem")),
        );
        fs::copy(d.join("root-cert.pem"), dir.join("root-cert.pem")).unwrap();
        dir
    }

    /// A copy of bundle `base` as `name/`, for a variation of one file.
    fn variant(&self, base: &Path, name: &str) -> PathBuf {
        let dir = self.dir.join(name);
        copy_dir(base, &dir);
        dir
    }
}

/// `YYYYMMDDHHMMSSZ`, as `openssl ca -startdate` takes it.
fn openssl_date(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year][month][day][hour][minute][second]Z");
    t.format(&f).unwrap()
}

/// Runs `openssl` on `input` into `output` (both in `dir`), through a temporary file so that
/// the two may be the same.
fn openssl_convert(dir: &Path, args: &[&str], input: &str, output: &str) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-in", input, "-out", "convert.tmp"]);
    openssl(dir, &all).ok();
    fs::rename(dir.join("convert.tmp"), dir.join(output)).unwrap();
}

/// Bundles that vary or break one property each, made by the `openssl` CLI.
fn crafted_rows(t: &Path, table: &mut Table, other_mesh: &Path) {
    let ca = OpensslCa::new(t.join("openssl"), &[]);
    let now = OffsetDateTime::now_utc();
    let good = ca.bundle("good", EC_P256, GOOD_CA_EXT, YEAR);
    table.add(
        "openssl: ECDSA P-256 intermediate (the base of the rows below)",
        Origin::Crafted,
        good.clone(),
    );

    // Keys.
    let rsa = ca.bundle(
        "rsa-pkcs1",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        GOOD_CA_EXT,
        YEAR,
    );
    openssl_convert(&rsa, &["rsa", "-traditional"], "ca-key.pem", "ca-key.pem");
    table.add(
        "RSA key in PKCS#1 (`RSA PRIVATE KEY`)",
        Origin::Crafted,
        rsa.clone(),
    );
    let sec1 = ca.variant(&good, "sec1");
    openssl_convert(&sec1, &["ec"], "ca-key.pem", "ca-key.pem");
    table.add("EC key in SEC1 (`EC PRIVATE KEY`)", Origin::Crafted, sec1);
    let relabelled = ca.variant(&rsa, "relabelled");
    openssl_convert(&relabelled, &["pkey"], "ca-key.pem", "ca-key.pem");
    let text = read(&relabelled.join("ca-key.pem")).replace("PRIVATE KEY", "RSA PRIVATE KEY");
    write(&relabelled.join("ca-key.pem"), text);
    table.add(
        "PKCS#8 key labelled `RSA PRIVATE KEY`",
        Origin::Crafted,
        relabelled,
    );
    let encrypted = ca.variant(&good, "encrypted");
    openssl_convert(
        &encrypted,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:secret",
        ],
        "ca-key.pem",
        "ca-key.pem",
    );
    table.add(
        "encrypted key (`ENCRYPTED PRIVATE KEY`)",
        Origin::Crafted,
        encrypted,
    );
    let other_key = ca.variant(&good, "other-key");
    openssl(
        &other_key,
        [&["genpkey", "-out", "ca-key.pem"][..], EC_P256].concat(),
    )
    .ok();
    table.add(
        "ca-key.pem is another P-256 key",
        Origin::Crafted,
        other_key,
    );
    let rsa_for_ec = ca.variant(&good, "rsa-for-ec");
    fs::copy(rsa.join("ca-key.pem"), rsa_for_ec.join("ca-key.pem")).unwrap();
    table.add(
        "ca-key.pem holds an RSA key for an ECDSA certificate",
        Origin::Crafted,
        rsa_for_ec,
    );
    let rsa1024 = ca.bundle(
        "rsa1024",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        GOOD_CA_EXT,
        YEAR,
    );
    table.add("RSA-1024 signing certificate", Origin::Crafted, rsa1024);
    let p521 = ca.bundle(
        "p521",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
        GOOD_CA_EXT,
        YEAR,
    );
    table.add("ECDSA P-521 signing certificate", Origin::Crafted, p521);
    let ed25519 = ca.bundle("ed25519", &["-algorithm", "ED25519"], GOOD_CA_EXT, YEAR);
    table.add("Ed25519 signing certificate", Origin::Crafted, ed25519);

    // Validity.
    let expired = ca.bundle(
        "expired",
        EC_P256,
        GOOD_CA_EXT,
        &[
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20210101000000Z",
        ],
    );
    table.add("expired signing certificate", Origin::Crafted, expired);
    let (soon, later) = (
        openssl_date(now + time::Duration::days(2)),
        openssl_date(now + time::Duration::days(365)),
    );
    let early = ca.bundle(
        "early",
        EC_P256,
        GOOD_CA_EXT,
        &["-startdate", &soon, "-enddate", &later],
    );
    table.add(
        "signing certificate not yet valid (starts in 2 days)",
        Origin::Crafted,
        early,
    );
    let short = ca.bundle("short", EC_P256, GOOD_CA_EXT, &["-days", "20"]);
    table.add(
        "signing certificate with 20 days left",
        Origin::Crafted,
        short,
    );
    let outliving = ca.bundle("outliving", EC_P256, GOOD_CA_EXT, &["-days", "7300"]);
    table.add(
        "signing certificate outlives its root",
        Origin::Crafted,
        outliving,
    );
    let expired_root = expired_root_ca(&t.join("openssl-expired-root"));
    let under_expired = expired_root.bundle(
        "under-expired-root",
        EC_P256,
        GOOD_CA_EXT,
        &[
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20201231000000Z",
        ],
    );
    table.add(
        "expired root (and signing certificate)",
        Origin::Crafted,
        under_expired,
    );

    // Extensions.
    let eku = ca.bundle(
        "client-auth",
        EC_P256,
        &format!("{GOOD_CA_EXT}extendedKeyUsage = clientAuth\n"),
        YEAR,
    );
    table.add(
        "signing certificate's extendedKeyUsage is clientAuth only",
        Origin::Crafted,
        eku,
    );
    let eku_both = ca.bundle(
        "server-client-auth",
        EC_P256,
        &format!("{GOOD_CA_EXT}extendedKeyUsage = serverAuth, clientAuth\n"),
        YEAR,
    );
    table.add(
        "signing certificate's extendedKeyUsage is serverAuth, clientAuth",
        Origin::Crafted,
        eku_both,
    );
    let client_root = OpensslCa::new(
        t.join("openssl-client-root"),
        &["extendedKeyUsage=clientAuth"],
    );
    let under_client_root = client_root.bundle("under-client-root", EC_P256, GOOD_CA_EXT, YEAR);
    table.add(
        "root's extendedKeyUsage is clientAuth only",
        Origin::Crafted,
        under_client_root,
    );
    let leaf = ca.bundle(
        "leaf",
        EC_P256,
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth, clientAuth\n",
        YEAR,
    );
    table.add(
        "CA:FALSE certificate as the signing certificate (a leaf posing as a CA)",
        Origin::Crafted,
        leaf,
    );
    let no_bc = ca.bundle(
        "no-basic-constraints",
        EC_P256,
        "keyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n",
        YEAR,
    );
    table.add(
        "signing certificate without basicConstraints",
        Origin::Crafted,
        no_bc,
    );
    let no_cert_sign = ca.bundle(
        "no-cert-sign",
        EC_P256,
        "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, digitalSignature, cRLSign\n",
        YEAR,
    );
    table.add(
        "signing certificate's keyUsage lacks keyCertSign",
        Origin::Crafted,
        no_cert_sign,
    );
    let pathlen0 = ca.bundle(
        "pathlen0",
        EC_P256,
        &GOOD_CA_EXT.replace("CA:TRUE", "CA:TRUE, pathlen:0"),
        YEAR,
    );
    table.add(
        "signing certificate with pathlen:0",
        Origin::Crafted,
        pathlen0,
    );
    let pathlen_root = OpensslCa::new(
        t.join("openssl-pathlen-root"),
        &["basicConstraints=critical,CA:TRUE,pathlen:0"],
    );
    let under_pathlen_root = pathlen_root.bundle("under-pathlen-root", EC_P256, GOOD_CA_EXT, YEAR);
    table.add(
        "root with pathlen:0 above the signing certificate",
        Origin::Crafted,
        under_pathlen_root,
    );
    let critical = ca.bundle(
        "unknown-critical",
        EC_P256,
        &format!("{GOOD_CA_EXT}1.3.6.1.4.1.55555.1 = critical, ASN1:NULL\n"),
        YEAR,
    );
    table.add(
        "unknown critical extension on the signing certificate",
        Origin::Crafted,
        critical,
    );
    let critical_root = OpensslCa::new(
        t.join("openssl-critical-root"),
        &["1.3.6.1.4.1.55555.1=critical,ASN1:NULL"],
    );
    let under_critical_root =
        critical_root.bundle("under-critical-root", EC_P256, GOOD_CA_EXT, YEAR);
    table.add(
        "unknown critical extension on the root",
        Origin::Crafted,
        under_critical_root,
    );
    let critical_known = ca.bundle(
        "critical-known",
        EC_P256,
        &format!(
            "{GOOD_CA_EXT}nameConstraints = critical, excluded;DNS:example.com\n\
             certificatePolicies = critical, 2.5.29.32.0\n"
        ),
        YEAR,
    );
    table.add(
        "critical nameConstraints and certificatePolicies on the signing certificate",
        Origin::Crafted,
        critical_known,
    );
    let sha1 = ca.bundle(
        "sha1",
        EC_P256,
        GOOD_CA_EXT,
        &["-days", "365", "-md", "sha1"],
    );
    table.add("SHA-1 signed signing certificate", Origin::Crafted, sha1);

    // Roots and chains.
    let foreign_root = ca.variant(&good, "foreign-root");
    fs::copy(
        other_mesh.join("root-cert.pem"),
        foreign_root.join("root-cert.pem"),
    )
    .unwrap();
    table.add(
        "root-cert.pem is another mesh's root",
        Origin::Crafted,
        foreign_root,
    );
    let two_roots = ca.variant(&good, "two-roots");
    write(
        &two_roots.join("root-cert.pem"),
        read(&good.join("root-cert.pem")) + &read(&other_mesh.join("root-cert.pem")),
    );
    table.add(
        "root-cert.pem adds an unrelated second root",
        Origin::Crafted,
        two_roots,
    );
    let self_root = ca.variant(&good, "self-root");
    fs::copy(good.join("ca-cert.pem"), self_root.join("root-cert.pem")).unwrap();
    table.add(
        "root-cert.pem holds the signing certificate, not a root",
        Origin::Crafted,
        self_root,
    );
    let reversed = ca.variant(&good, "reversed");
    write(
        &reversed.join("cert-chain.pem"),
        read(&good.join("root-cert.pem")) + &read(&good.join("ca-cert.pem")),
    );
    table.add("cert-chain.pem in reverse order", Origin::Crafted, reversed);
    let no_root_in_chain = ca.variant(&good, "chain-without-root");
    fs::copy(
        good.join("ca-cert.pem"),
        no_root_in_chain.join("cert-chain.pem"),
    )
    .unwrap();
    table.add(
        "cert-chain.pem without the root",
        Origin::Crafted,
        no_root_in_chain,
    );
    let extra_in_chain = ca.variant(&good, "chain-with-extra");
    write(
        &extra_in_chain.join("cert-chain.pem"),
        read(&good.join("cert-chain.pem")) + &read(&other_mesh.join("root-cert.pem")),
    );
    table.add(
        "cert-chain.pem ends with an unrelated certificate",
        Origin::Crafted,
        extra_in_chain,
    );
    let chain_other = ca.variant(&good, "chain-other-ca");
    fs::copy(
        other_mesh.join("c1/cert-chain.pem"),
        chain_other.join("cert-chain.pem"),
    )
    .unwrap();
    table.add(
        "cert-chain.pem is another bundle's chain",
        Origin::Crafted,
        chain_other,
    );

    // Files.
    for (slug, name, file) in [
        ("no-chain", "cert-chain.pem missing", "cert-chain.pem"),
        ("no-key", "ca-key.pem missing", "ca-key.pem"),
        ("no-root", "root-cert.pem missing", "root-cert.pem"),
    ] {
        let dir = ca.variant(&good, slug);
        fs::remove_file(dir.join(file)).unwrap();
        table.add(name, Origin::Crafted, dir);
    }
    let empty = ca.dir.join("empty");
    fs::create_dir_all(&empty).unwrap();
    table.add("empty folder", Origin::Crafted, empty);
    let mixed = ca.variant(&good, "mixed-layout");
    fs::copy(good.join("ca-cert.pem"), mixed.join("tls.crt")).unwrap();
    table.add(
        "tls.crt added to a complete Istio-layout folder",
        Origin::Crafted,
        mixed,
    );
    for (slug, name, file, text) in [
        (
            "junk-root",
            "root-cert.pem is not PEM",
            "root-cert.pem",
            "not a certificate\n",
        ),
        (
            "junk-key",
            "ca-key.pem is not PEM",
            "ca-key.pem",
            "not a key\n",
        ),
        ("empty-cert", "ca-cert.pem is empty", "ca-cert.pem", ""),
    ] {
        let dir = ca.variant(&good, slug);
        write(&dir.join(file), text);
        table.add(name, Origin::Crafted, dir);
    }
    let truncated = ca.variant(&good, "truncated");
    let cert = read(&good.join("ca-cert.pem"));
    write(&truncated.join("ca-cert.pem"), &cert[..cert.len() / 2]);
    table.add("ca-cert.pem truncated halfway", Origin::Crafted, truncated);
    let der = ca.variant(&good, "der");
    openssl_convert(
        &der,
        &["x509", "-outform", "DER"],
        "ca-cert.pem",
        "ca-cert.pem",
    );
    table.add("ca-cert.pem in DER, not PEM", Origin::Crafted, der);
    let bags = ca.variant(&good, "bag-attributes");
    for f in ["ca-cert.pem", "cert-chain.pem", "root-cert.pem"] {
        let text = format!(
            "Bag Attributes\n    localKeyID: 01 00 00 00\nsubject=O = Test\n{}",
            read(&good.join(f))
        );
        write(&bags.join(f), text);
    }
    table.add(
        "text before the PEM blocks (openssl's Bag Attributes)",
        Origin::Crafted,
        bags,
    );
    let crlf = ca.variant(&good, "crlf");
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ] {
        write(&crlf.join(f), read(&good.join(f)).replace('\n', "\r\n"));
    }
    table.add("CRLF line endings", Origin::Crafted, crlf);

    // CRLs (istiod reads ca-crl.pem when it exists).
    let crl_both = ca.variant(&good, "crl-every-ca");
    openssl(
        &ca.dir,
        [
            "ca",
            "-gencrl",
            "-config",
            "ca.cnf",
            "-cert",
            "root-cert.pem",
            "-keyfile",
            "root-key.pem",
            "-out",
            "root.crl",
        ],
    )
    .ok();
    openssl(
        &ca.dir,
        [
            "ca",
            "-gencrl",
            "-config",
            "ca.cnf",
            "-cert",
            "good/ca-cert.pem",
            "-keyfile",
            "good/ca-key.pem",
            "-out",
            "good.crl",
        ],
    )
    .ok();
    write(
        &crl_both.join("ca-crl.pem"),
        read(&ca.dir.join("good.crl")) + &read(&ca.dir.join("root.crl")),
    );
    table.add(
        "ca-crl.pem with a CRL from every CA of the chain",
        Origin::Crafted,
        crl_both,
    );
    let crl_one = ca.variant(&good, "crl-signing-ca-only");
    fs::copy(ca.dir.join("good.crl"), crl_one.join("ca-crl.pem")).unwrap();
    table.add(
        "ca-crl.pem with a CRL from the signing certificate only",
        Origin::Crafted,
        crl_one,
    );
    let crl_junk = ca.variant(&good, "crl-junk");
    write(&crl_junk.join("ca-crl.pem"), "not a CRL\n");
    table.add("ca-crl.pem is not a CRL", Origin::Crafted, crl_junk);
    let crl_empty = ca.variant(&good, "crl-empty");
    write(&crl_empty.join("ca-crl.pem"), "");
    table.add("ca-crl.pem is empty", Origin::Crafted, crl_empty);
}

/// An openssl CA whose P-256 root (made by meshca-pki, as openssl cannot backdate a
/// self-signed certificate) expired at the end of 2021.
fn expired_root_ca(dir: &Path) -> OpensslCa {
    fs::create_dir_all(dir).unwrap();
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let root = CaProfile {
        subject: Subject {
            organization: Some("Test".to_owned()),
            common_name: Some("Expired Root CA".to_owned()),
            locality: None,
        },
        not_before: time::macros::datetime!(2020-01-01 0:00 UTC),
        not_after: time::macros::datetime!(2021-12-31 0:00 UTC),
        path_len: None,
        dns_names: Vec::new(),
    }
    .self_signed(&key, "root-cert.pem")
    .unwrap();
    write(&dir.join("root-cert.pem"), root.pem());
    write(&dir.join("root-key.pem"), key.to_pkcs8_pem());
    OpensslCa::with_root(dir.to_owned())
}

// ---- the three judges ----

/// Starts `meshca serve` as `cmd` describes and stops it once it listens: `Err` with its one
/// line of error when it exits first.
fn serve_starts(mut cmd: Command) -> Result<(), String> {
    let mut child = cmd
        .env("MESHCA_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let line = BufReader::new(stdout).lines().next();
        let _ = tx.send(line.and_then(Result::ok).unwrap_or_default());
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        panic!("meshca serve neither listened nor exited within 60 s");
    };
    if line.starts_with("listening on") {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(());
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "serve exited 0 without listening");
    Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

fn serve_verdict(dir: &Path) -> Result<(), String> {
    let mut cmd = Command::new(MESHCA);
    cmd.arg("serve")
        .arg("--cacerts")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--plaintext"]);
    serve_starts(cmd)
}

fn check_verdict(dir: &Path) -> Check {
    let out = Command::new(MESHCA)
        .args(["check", "-o", "json"])
        .arg(dir)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "meshca check {}: {e}\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let named = |level: &str| -> Vec<String> {
        v["bundles"][0]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["level"] == level)
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (fails, warns) = (named("fail"), named("warn"));
    assert_eq!(
        out.status.success(),
        fails.is_empty(),
        "check's exit code and findings disagree on {}",
        dir.display()
    );
    match (fails.is_empty(), warns.is_empty()) {
        (false, _) => Check::Fails(fails),
        (true, false) => Check::Warns(warns),
        (true, true) => Check::Passes,
    }
}

/// The oracle's verdict on every folder, in one run.
fn istio_verdicts(dirs: &[&Path]) -> BTreeMap<PathBuf, Istio> {
    let oracle = meshca_testkit::istio::istio_dir().join("bundle-oracle");
    let out = Command::new(&oracle).args(dirs).output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        oracle.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: BTreeMap<PathBuf, Istio> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (
                PathBuf::from(text("dir")),
                Istio {
                    ok: v["ok"] == true,
                    stage: text("stage"),
                    error: text("error"),
                },
            )
        })
        .collect();
    assert_eq!(verdicts.len(), dirs.len(), "one verdict per folder");
    verdicts
}

// ---- the table ----

fn render(rows: &[(&Row, Verdicts)]) -> String {
    let note = |name: &str| {
        STRICTER
            .iter()
            .chain(LENIENT)
            .find(|(row, _)| *row == name)
            .map(|(_, why)| (*why).to_owned())
            .unwrap_or_default()
    };
    let mut out = String::from(
        "| bundle | meshca serve | meshca check | Istio's loader | note |\n|---|---|---|---|---|\n",
    );
    for (row, v) in rows {
        let from = match row.origin {
            Origin::Meshca => "written by meshca. ",
            Origin::IstioSample => "Istio's own. ",
            Origin::Crafted => "",
        };
        let istio = if v.istio.ok {
            "loads".to_owned()
        } else {
            format!("refuses ({})", v.istio.stage)
        };
        out.push_str(&format!(
            "| {} | {} | {} | {istio} | {} |\n",
            row.name,
            if v.serve.is_ok() { "starts" } else { "refuses" },
            v.check.cell(),
            format!("{from}{}", note(&row.name)).trim()
        ));
    }
    out
}

fn docs_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/ISTIO.md")
}

/// The text between the markers of `docs/ISTIO.md`, and the file.
fn docs_table() -> (String, String) {
    let text = read(&docs_path());
    let start = text
        .find(BEGIN)
        .unwrap_or_else(|| panic!("no {BEGIN:?} in docs/ISTIO.md"))
        + BEGIN.len();
    let end = text[start..]
        .find(END)
        .unwrap_or_else(|| panic!("no {END:?} in docs/ISTIO.md"))
        + start;
    (text[start..end].trim().to_owned(), text)
}

#[test]
fn istio_loads_what_meshca_writes_and_refuses_what_meshca_refuses() {
    let t = tempfile::tempdir().unwrap();
    let t = t.path();
    let mut table = Table::default();
    meshca_certs_rows(t, &mut table);
    meshca_trust_rows(t, &mut table);
    rotation_rows(t, &mut table);
    istio_sample_rows(t, &mut table);
    crafted_rows(t, &mut table, &t.join("certs/p256"));

    let dirs: Vec<&Path> = table.0.iter().map(|r| r.dir.as_path()).collect();
    let mut istio = istio_verdicts(&dirs);
    let rows: Vec<(&Row, Verdicts)> = table
        .0
        .iter()
        .map(|row| {
            let v = Verdicts {
                serve: serve_verdict(&row.dir),
                check: check_verdict(&row.dir),
                istio: istio.remove(&row.dir).unwrap(),
            };
            println!(
                "{}\n  serve: {:?}\n  check: {}\n  istio: {} {}",
                row.name,
                v.serve,
                v.check.cell(),
                v.istio.stage,
                v.istio.error
            );
            (row, v)
        })
        .collect();
    let rendered = render(&rows);
    println!("{rendered}");

    let mut problems = Vec::new();
    for (row, v) in &rows {
        let name = row.name.as_str();
        if row.origin == Origin::Meshca && (!v.istio.ok || v.serve.is_err() || v.check.fails()) {
            problems.push(format!(
                "{name}: meshca wrote it, and not all three accept it"
            ));
        }
        if row.origin == Origin::IstioSample && !v.istio.ok {
            problems.push(format!("{name}: Istio's own sample, and Istio refuses it"));
        }
        let listed_stricter = STRICTER.iter().any(|(r, _)| *r == name);
        let listed_lenient = LENIENT.iter().any(|(r, _)| *r == name);
        if v.stricter() != listed_stricter {
            problems.push(format!(
                "{name}: meshca {} stricter than Istio, and STRICTER {} it",
                if v.stricter() { "is" } else { "is not" },
                if listed_stricter {
                    "lists"
                } else {
                    "does not list"
                }
            ));
        }
        if v.lenient() != listed_lenient {
            problems.push(format!(
                "{name}: meshca {} what Istio refuses, and LENIENT {} it",
                if v.lenient() {
                    "accepts"
                } else {
                    "does not accept"
                },
                if listed_lenient {
                    "lists"
                } else {
                    "does not list"
                }
            ));
        }
    }
    for (name, _) in STRICTER.iter().chain(LENIENT) {
        if table.0.iter().all(|r| r.name != *name) {
            problems.push(format!("{name}: listed, but no such row"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let (documented, text) = docs_table();
    if documented != rendered.trim() {
        if std::env::var_os("MESHCA_BLESS").is_some() {
            let start = text.find(BEGIN).unwrap() + BEGIN.len();
            let end = text[start..].find(END).unwrap() + start;
            let new = format!("{}\n{}\n{}", &text[..start], rendered.trim(), &text[end..]);
            write(&docs_path(), new);
            println!("rewrote the table in {}", docs_path().display());
        } else {
            panic!(
                "docs/ISTIO.md's agreement table is stale; run with MESHCA_BLESS=1 to rewrite it. \
                 The table now:\n{rendered}"
            );
        }
    }
}
