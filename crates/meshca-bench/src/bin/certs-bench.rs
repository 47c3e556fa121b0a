//! `meshca certs root-ca c1-cacerts c2-cacerts c3-cacerts` against the openssl commands Istio's
//! `Makefile.selfsigned.mk` runs for the same targets (genrsa, req, x509 -req, in make's order),
//! alternating the two in one run so both see the same machine. Prints a Markdown table.
//!
//! Usage: certs-bench [RUNS]   (default 7)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use meshca_bench::{median, meshca_binary, range, secs};

const CLUSTERS: [&str; 3] = ["c1", "c2", "c3"];

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let meshca = meshca_binary();
    assert!(
        meshca.exists(),
        "build meshca first: cargo build --release -p meshca"
    );
    let mut rsa_meshca = Vec::new();
    let mut rsa_openssl = Vec::new();
    let mut ec_meshca = Vec::new();
    let mut ec_openssl = Vec::new();
    for i in 0..runs {
        rsa_openssl.push(openssl_makefile(None));
        rsa_meshca.push(meshca_certs(&meshca, &[]));
        ec_openssl.push(openssl_makefile(Some("prime256v1")));
        ec_meshca.push(meshca_certs(
            &meshca,
            &[
                ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
                ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
            ],
        ));
        eprintln!(
            "run {}/{runs}: RSA-4096 openssl {} meshca {} | P-256 openssl {} meshca {}",
            i + 1,
            secs(rsa_openssl[i]),
            secs(rsa_meshca[i]),
            ms(ec_openssl[i]),
            ms(ec_meshca[i])
        );
    }
    println!(
        "| keys | openssl (Makefile steps) median [min–max] | meshca median [min–max] | meshca / openssl |"
    );
    println!("|---|---|---|---|");
    row("RSA-4096 (default)", &rsa_openssl, &rsa_meshca, secs);
    row("ECDSA P-256", &ec_openssl, &ec_meshca, ms);
    println!("\n{runs} runs, alternating; root-ca plus three -cacerts targets each.");
}

fn row(name: &str, peer: &[Duration], ours: &[Duration], show: fn(Duration) -> String) {
    let (pmin, pmax) = range(peer);
    let (omin, omax) = range(ours);
    let ratio = median(ours).as_secs_f64() / median(peer).as_secs_f64();
    println!(
        "| {name} | {} [{}–{}] | {} [{}–{}] | {ratio:.2}× |",
        show(median(peer)),
        show(pmin),
        show(pmax),
        show(median(ours)),
        show(omin),
        show(omax)
    );
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn meshca_certs(bin: &Path, env: &[(&str, &str)]) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir.path()).arg("certs").arg("root-ca");
    for c in CLUSTERS {
        cmd.arg(format!("{c}-cacerts"));
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn genkey(dir: &Path, out: &str, curve: Option<&str>) {
    match curve {
        None => openssl(dir, &["genrsa", "-out", out, "4096"]),
        Some(c) => openssl(
            dir,
            &["ecparam", "-genkey", "-name", c, "-noout", "-out", out],
        ),
    }
}

/// The Makefile's recipe for `root-ca c1-cacerts c2-cacerts c3-cacerts`, step by step
/// (config files written as its echo lines write them).
fn openssl_makefile(curve: Option<&str>) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let start = Instant::now();
    genkey(d, "root-key.pem", curve);
    fs::write(
        d.join("root-ca.conf"),
        "[ req ]\nencrypt_key = no\nprompt = no\nutf8 = yes\ndefault_md = sha256\ndefault_bits = 4096\n\
         req_extensions = req_ext\nx509_extensions = req_ext\ndistinguished_name = req_dn\n[ req_ext ]\n\
         subjectKeyIdentifier = hash\nbasicConstraints = critical, CA:true\n\
         keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign\n\
         [ req_dn ]\nO = Istio\nCN = Root CA\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "root-key.pem",
            "-config",
            "root-ca.conf",
            "-out",
            "root-cert.csr",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-days",
            "3650",
            "-signkey",
            "root-key.pem",
            "-extensions",
            "req_ext",
            "-extfile",
            "root-ca.conf",
            "-in",
            "root-cert.csr",
            "-out",
            "root-cert.pem",
        ],
    );
    for c in CLUSTERS {
        let cd = d.join(c);
        fs::create_dir(&cd).unwrap();
        genkey(&cd, "ca-key.pem", curve);
        fs::write(
            cd.join("intermediate.conf"),
            format!(
                "[ req ]\nencrypt_key = no\nprompt = no\nutf8 = yes\ndefault_md = sha256\ndefault_bits = 4096\n\
                 req_extensions = req_ext\nx509_extensions = req_ext\ndistinguished_name = req_dn\n[ req_ext ]\n\
                 subjectKeyIdentifier = hash\nbasicConstraints = critical, CA:true, pathlen:0\n\
                 keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign\n\
                 subjectAltName=@san\n[ san ]\nDNS.1 = istiod.istio-system.svc\n\
                 [ req_dn ]\nO = Istio\nCN = Intermediate CA\nL = {c}\n"
            ),
        )
        .unwrap();
        openssl(
            &cd,
            &[
                "req",
                "-new",
                "-config",
                "intermediate.conf",
                "-key",
                "ca-key.pem",
                "-out",
                "cluster-ca.csr",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-days",
                "3650",
                "-CA",
                "root-cert.pem",
                "-CAkey",
                "root-key.pem",
                "-CAcreateserial",
                "-extensions",
                "req_ext",
                "-extfile",
                &format!("{c}/intermediate.conf"),
                "-in",
                &format!("{c}/cluster-ca.csr"),
                "-out",
                &format!("{c}/ca-cert.pem"),
            ],
        );
        let chain = [
            fs::read(cd.join("ca-cert.pem")).unwrap(),
            fs::read(d.join("root-cert.pem")).unwrap(),
        ]
        .concat();
        fs::write(cd.join("cert-chain.pem"), chain).unwrap();
        fs::copy(d.join("root-cert.pem"), cd.join("root-cert.pem")).unwrap();
    }
    start.elapsed()
}
