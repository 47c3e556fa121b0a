//! The world every case starts from, made once per run: bundles from `meshca certs`, unfit CAs
//! issued by `openssl ca`, CSRs and keys from `openssl`, a JWKS and a token from `meshca token`,
//! a trust store a policy was applied to. Each case gets a copy and breaks what it tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use meshca_testkit::openssl_ca::{
    GOOD_CA_EXT, Issuer, P256, RSA1024, YEAR, openssl_bundle, openssl_bundle_under,
};
use meshca_testkit::{GENERATED_ROOT_POLICY, openssl, run_in};

use crate::MESHCA;

/// ECDSA everywhere: cases are about refusals, not key sizes.
pub const FAST: &[(&str, &str)] = &[
    ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
    ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
];

/// Dates for `openssl ca`: long past, and far ahead (so no clock ever reaches them in a test).
const EXPIRED: &[&str] = &[
    "-startdate",
    "20200101000000Z",
    "-enddate",
    "20210101000000Z",
];
const NOT_YET_VALID: &[&str] = &[
    "-startdate",
    "20900101000000Z",
    "-enddate",
    "20910101000000Z",
];

/// The identity of the token in `sleep.token` and of `csr/good.csr`.
pub const SLEEP_ID: &str = "spiffe://cluster.local/ns/foo/sa/sleep";

fn meshca_ok(d: &Path, args: &[&str]) -> String {
    run_in(MESHCA, d, args, FAST).ok().stdout
}

fn openssl_ok(d: &Path, args: &[&str]) {
    openssl(d, args).ok();
}

/// This run's folder: the world and the big CSR, named by the test process so that runs side by
/// side do not meet. Folders of runs whose process is gone are removed on the way.
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        for e in fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("bad-input-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        tmp.join(format!("bad-input-{}", std::process::id()))
    })
}

/// The world's folder, made on first use.
pub fn world() -> &'static Path {
    static WORLD: OnceLock<PathBuf> = OnceLock::new();
    WORLD.get_or_init(|| {
        let d = base().join("world");
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        build(&d);
        d
    })
}

/// A CSR of over 1 MB for `spiffe://cluster.local/ns/foo/sa/sleep`.
pub fn big_csr() -> PathBuf {
    base().join("big.csr")
}

fn build(d: &Path) {
    // Healthy bundles under one root, a workload, and a bundle of another root.
    meshca_ok(d, &["certs", "c1-cacerts", "c2-cacerts", "ns1-certs"]);
    meshca_ok(d, &["certs", "-C", "other", "c3-cacerts"]);

    // Unfit CAs under the root, issued by openssl.
    openssl_bundle(d, "expired", P256, GOOD_CA_EXT, EXPIRED);
    openssl_bundle(d, "notyet", P256, GOOD_CA_EXT, NOT_YET_VALID);
    openssl_bundle(
        d,
        "sha1",
        P256,
        GOOD_CA_EXT,
        &["-days", "365", "-md", "sha1"],
    );
    let client_only = format!("{GOOD_CA_EXT}extendedKeyUsage = clientAuth\n");
    openssl_bundle(d, "eku", P256, &client_only, YEAR);
    openssl_bundle(d, "weak", RSA1024, GOOD_CA_EXT, YEAR);
    // c1 is CA:TRUE, pathlen:0: a CA below it breaks the constraint.
    openssl_bundle_under(
        d,
        "pathlen",
        Issuer {
            cert: "c1/ca-cert.pem",
            key: "c1/ca-key.pem",
            chain: &["c1/cert-chain.pem"],
        },
        P256,
        GOOD_CA_EXT,
        YEAR,
    );
    // The workload's leaf and key, posing as a CA.
    fs::create_dir_all(d.join("leafca")).unwrap();
    for (from, to) in [
        ("ns1/workload-cert.pem", "ca-cert.pem"),
        ("ns1/key.pem", "ca-key.pem"),
        ("ns1/workload-cert-chain.pem", "cert-chain.pem"),
        ("root-cert.pem", "root-cert.pem"),
    ] {
        fs::copy(d.join(from), d.join("leafca").join(to)).unwrap();
    }
    // c1 with c2's key.
    copy_tree(&d.join("c1"), &d.join("mism"));
    fs::copy(d.join("c2/ca-key.pem"), d.join("mism/ca-key.pem")).unwrap();
    // c1 whose root bundle ends in a CERTIFICATE block of random bytes.
    copy_tree(&d.join("c1"), &d.join("junkroot"));
    let junk = openssl(d, ["rand", "-base64", "300"]).ok().stdout;
    let mut roots = fs::read_to_string(d.join("root-cert.pem")).unwrap();
    roots.push_str(&format!(
        "-----BEGIN CERTIFICATE-----\n{junk}-----END CERTIFICATE-----\n"
    ));
    fs::write(d.join("junkroot/root-cert.pem"), roots).unwrap();
    fs::write(
        d.join("junk.pem"),
        format!("-----BEGIN CERTIFICATE-----\n{junk}-----END CERTIFICATE-----\n"),
    )
    .unwrap();

    // An expired root (root-cert.pem, root-key.pem in oldroot/), self-signed by openssl ca.
    fs::create_dir_all(d.join("oldroot")).unwrap();
    openssl_ok(
        d,
        &[
            "genpkey",
            "-out",
            "oldroot/root-key.pem",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
    );
    openssl_ok(
        d,
        &[
            "req",
            "-new",
            "-key",
            "oldroot/root-key.pem",
            "-subj",
            "/O=Test/CN=Old Root",
            "-out",
            "oldroot/root.csr",
        ],
    );
    fs::write(
        d.join("oldroot/root.ext"),
        "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .unwrap();
    let mut args = vec![
        "ca",
        "-batch",
        "-selfsign",
        "-config",
        "ca.cnf",
        "-notext",
        "-keyfile",
        "oldroot/root-key.pem",
        "-in",
        "oldroot/root.csr",
        "-out",
        "oldroot/root-cert.pem",
        "-extfile",
        "oldroot/root.ext",
    ];
    args.extend_from_slice(EXPIRED);
    openssl_ok(d, &args);

    // Keys and CSRs from openssl.
    fs::create_dir_all(d.join("csr")).unwrap();
    let san = format!("subjectAltName = critical, URI:{SLEEP_ID}");
    for (name, alg) in [
        ("p256", P256),
        ("rsa1024", RSA1024),
        ("ed25519", &["-algorithm", "ED25519"][..]),
    ] {
        let key = format!("csr/{name}.key");
        let mut genpkey = vec!["genpkey", "-out", &key];
        genpkey.extend_from_slice(alg);
        openssl_ok(d, &genpkey);
        openssl_ok(
            d,
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                "/",
                "-addext",
                &san,
                "-out",
                &format!("csr/{name}.csr"),
            ],
        );
    }
    // A CSR of over 1 MB: a real one, its size in an extension of random bytes.
    let hex = openssl(d, ["rand", "-hex", "800000"]).ok().stdout;
    fs::write(
        d.join("csr/big.cnf"),
        format!(
            "[req]\ndistinguished_name = dn\nreq_extensions = ext\nprompt = no\n[dn]\nO = Test\n\
             [ext]\nsubjectAltName = critical, URI:{SLEEP_ID}\n\
             1.3.6.1.4.1.55555.9 = ASN1:FORMAT:HEX,OCTETSTRING:{}\n",
            hex.trim()
        ),
    )
    .unwrap();
    openssl_ok(
        d,
        &[
            "req",
            "-new",
            "-key",
            "csr/p256.key",
            "-config",
            "csr/big.cnf",
            "-out",
            "csr/big.csr",
        ],
    );
    assert!(fs::metadata(d.join("csr/big.csr")).unwrap().len() > 1 << 20);
    fs::remove_file(d.join("csr/big.cnf")).unwrap();
    // Beside the world rather than in it: every case copies the world.
    fs::rename(d.join("csr/big.csr"), big_csr()).unwrap();

    // A JWT signing key, its JWKS and a token for foo/sleep.
    openssl_ok(
        d,
        &[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            "jwt-key.pem",
        ],
    );
    let jwks = meshca_ok(d, &["token", "jwks", "--key", "jwt-key.pem"]);
    fs::write(d.join("jwks.json"), jwks).unwrap();
    let token = meshca_ok(
        d,
        &[
            "token",
            "issue",
            "--ns",
            "foo",
            "--sa",
            "sleep",
            "--issuer",
            "k8s",
            "--key",
            "jwt-key.pem",
        ],
    );
    fs::write(d.join("sleep.token"), token).unwrap();

    // A trust store a policy was applied to: a generated root, intermediates in c1 and c2.
    for c in ["c1", "c2"] {
        fs::create_dir_all(d.join("store").join(c)).unwrap();
    }
    fs::write(d.join("policy.yaml"), GENERATED_ROOT_POLICY).unwrap();
    meshca_ok(
        d,
        &["trust", "apply", "-f", "policy.yaml", "--store", "store"],
    );

    for f in [
        "ca.cnf",
        "index.txt",
        "index.txt.attr",
        "index.txt.old",
        "serial",
        "serial.old",
    ] {
        let _ = fs::remove_file(d.join(f));
    }
}

/// Copies `from` into `to` as `cp -a` does (modes kept).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from.join("."))
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// Cuts `file` to half its length, in the middle of a PEM block.
pub fn truncate(d: &Path, file: &str) {
    let bytes = fs::read(d.join(file)).unwrap();
    fs::write(d.join(file), &bytes[..bytes.len() / 2]).unwrap();
}

/// Replaces `to` with a copy of `from`.
pub fn cp(d: &Path, from: &str, to: &str) {
    fs::copy(d.join(from), d.join(to)).unwrap();
}

/// Makes `name` a symbolic link to itself (replacing what was there).
pub fn symlink_loop(d: &Path, name: &str) {
    let p = d.join(name);
    if p.is_dir() {
        fs::remove_dir_all(&p).unwrap();
    } else {
        let _ = fs::remove_file(&p);
    }
    std::os::unix::fs::symlink(name.rsplit('/').next().unwrap(), &p).unwrap();
}
