//! `meshca secret` and `meshca inspect` on bundles made by `meshca certs` and on Istio's own
//! sample certificates.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use base64::Engine;
use meshca_testkit::{istio_samples, openssl, run_in};

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");
const FAST: &[(&str, &str)] = &[
    ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
    ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
];

fn meshca(dir: &Path, args: &[&str]) -> meshca_testkit::Run {
    run_in(MESHCA, dir, args, FAST)
}

fn decoded_data(json: &str) -> BTreeMap<String, Vec<u8>> {
    let v: serde_json::Value = serde_json::from_str(json).expect("JSON");
    v["data"]
        .as_object()
        .expect("data")
        .iter()
        .map(|(k, v)| {
            let b = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().expect("string"))
                .expect("base64");
            (k.clone(), b)
        })
        .collect()
}

#[test]
fn the_secret_holds_the_folders_files_byte_for_byte() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    meshca(d, &["certs", "cluster1-cacerts"]).ok();
    let out = meshca(d, &["secret", "cluster1", "-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["kind"], "Secret");
    assert_eq!(v["metadata"]["name"], "cacerts");
    assert_eq!(v["metadata"]["namespace"], "istio-system");
    assert_eq!(v["type"], "Opaque");
    let data = decoded_data(&out.stdout);
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem"
        ]
    );
    for (k, bytes) in &data {
        assert_eq!(bytes, &fs::read(d.join("cluster1").join(k)).unwrap(), "{k}");
    }

    // YAML carries the same object.
    let yaml = meshca(
        d,
        &[
            "secret",
            "cluster1",
            "--name",
            "x",
            "--namespace",
            "mesh-system",
        ],
    )
    .ok()
    .stdout;
    assert!(
        yaml.starts_with(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: x\n  namespace: mesh-system\n"
        ),
        "{yaml}"
    );
    for k in data.keys() {
        assert!(yaml.contains(&format!("  {k}: ")), "{k} in {yaml}");
    }

    // cert-manager's layout: tls.crt + ca.crt is the chain, tls.key the key.
    let out = meshca(d, &["secret", "cluster1", "--format", "tls", "-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["type"], "kubernetes.io/tls");
    let tls = decoded_data(&out.stdout);
    assert_eq!(
        tls["tls.crt"],
        fs::read(d.join("cluster1/ca-cert.pem")).unwrap()
    );
    assert_eq!(
        tls["tls.key"],
        fs::read(d.join("cluster1/ca-key.pem")).unwrap()
    );
    assert_eq!(tls["ca.crt"], fs::read(d.join("root-cert.pem")).unwrap());

    // That tls layout, written out as a folder, is itself a bundle meshca reads back.
    let tls_dir = d.join("tls");
    fs::create_dir(&tls_dir).unwrap();
    for (k, b) in &tls {
        fs::write(tls_dir.join(k), b).unwrap();
    }
    let back = meshca(d, &["secret", "tls", "-o", "json"]).ok();
    let back = decoded_data(&back.stdout);
    assert_eq!(back["ca-cert.pem"], data["ca-cert.pem"]);
    assert_eq!(back["cert-chain.pem"], data["cert-chain.pem"]);
}

#[test]
fn istios_sample_certificates_make_a_valid_secret() {
    let samples = istio_samples();
    let t = tempfile::tempdir().unwrap();
    // Set one (PKCS#1 key, chain without the root) as it is.
    let out = meshca(
        t.path(),
        &["secret", samples.to_str().unwrap(), "-o", "json"],
    )
    .ok();
    let data = decoded_data(&out.stdout);
    assert_eq!(
        data["ca-key.pem"],
        fs::read(samples.join("ca-key.pem")).unwrap()
    );
    // Set two (the -alt files, PKCS#8 key) under the standard names.
    let alt = t.path().join("alt");
    fs::create_dir(&alt).unwrap();
    for f in ["ca-cert", "ca-key", "cert-chain", "root-cert"] {
        fs::copy(
            samples.join(format!("{f}-alt.pem")),
            alt.join(format!("{f}.pem")),
        )
        .unwrap();
    }
    meshca(t.path(), &["secret", "alt"]).ok();
    // Mixing them: the key of one with the certificate of the other.
    fs::copy(samples.join("ca-key.pem"), alt.join("ca-key.pem")).unwrap();
    let err = meshca(t.path(), &["secret", "alt"]).failed().stderr;
    assert_eq!(
        err.trim(),
        "meshca: error: alt/ca-key.pem does not match the certificate in alt/ca-cert.pem"
    );
    // A root bundle that is not the intermediate's root.
    fs::copy(samples.join("ca-key-alt.pem"), alt.join("ca-key.pem")).unwrap();
    fs::copy(samples.join("root-cert.pem"), alt.join("root-cert.pem")).unwrap();
    let err = meshca(t.path(), &["secret", "alt"]).failed().stderr;
    assert!(
        err.contains("alt/ca-cert.pem: no chain to a trusted root"),
        "{err}"
    );
    // An incomplete bundle.
    fs::remove_file(alt.join("cert-chain.pem")).unwrap();
    let err = meshca(t.path(), &["secret", "alt"]).failed().stderr;
    assert!(
        err.contains("incomplete cacerts bundle (Istio layout): missing cert-chain.pem"),
        "{err}"
    );
}

#[test]
fn inspect_describes_certificates_and_keys_without_showing_key_material() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    meshca(d, &["certs", "foo-certs"]).ok();
    let out = meshca(
        d,
        &["inspect", "foo/workload-cert-chain.pem", "foo/key.pem"],
    )
    .ok()
    .stdout;
    assert_eq!(out.matches(" certificate\n").count(), 3, "{out}");
    assert!(
        out.contains("SPIFFE ID:      spiffe://cluster.local/ns/foo/sa/default"),
        "{out}"
    );
    assert!(out.contains("CA:             yes, pathlen 0"));
    assert!(
        out.contains("foo/key.pem [1] private key\n  key:            EC P-256"),
        "{out}"
    );
    let key_pem = fs::read_to_string(d.join("foo/key.pem")).unwrap();
    let body_line = key_pem.lines().nth(1).unwrap();
    assert!(!out.contains(body_line), "key material printed");

    // Fingerprints agree with openssl's.
    let fp = openssl(
        d,
        [
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            "foo/workload-cert.pem",
        ],
    )
    .ok()
    .stdout;
    let fp = fp.trim().split('=').nth(1).unwrap().to_owned();
    assert!(out.contains(&fp), "{fp} not in\n{out}");

    let json = meshca(
        d,
        &["inspect", "-o", "json", "foo/ca-cert.pem", "foo/key.pem"],
    )
    .ok()
    .stdout;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["items"][0]["kind"], "certificate");
    assert_eq!(v[0]["items"][0]["is_ca"], true);
    assert_eq!(v[0]["items"][0]["path_len"], 0);
    assert_eq!(
        v[0]["items"][0]["sans"][0]["value"],
        "istiod.istio-system.svc"
    );
    assert_eq!(v[1]["items"][0]["kind"], "private_key");
    assert_eq!(v[1]["items"][0]["curve"], "P-256");
    assert!(!json.contains(body_line));

    // A CSR made by openssl.
    openssl(
        d,
        [
            "req",
            "-new",
            "-key",
            "foo/key.pem",
            "-subj",
            "/CN=x",
            "-addext",
            "subjectAltName=URI:spiffe://cluster.local/ns/a/sa/b",
            "-out",
            "req.csr",
        ],
    )
    .ok();
    let out = meshca(d, &["inspect", "req.csr"]).ok().stdout;
    assert!(out.contains("certificate request"), "{out}");
    assert!(out.contains("URI:spiffe://cluster.local/ns/a/sa/b"));
    assert!(out.contains("(valid)"));

    // Garbage is one clear line.
    fs::write(
        d.join("junk.pem"),
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = meshca(d, &["inspect", "junk.pem"]).failed().stderr;
    assert_eq!(err.lines().count(), 1);
    assert!(
        err.starts_with("meshca: error: junk.pem: malformed PEM"),
        "{err}"
    );
}
