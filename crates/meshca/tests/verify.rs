//! `meshca verify`: each check shown passing, and each broken by a chain or bundle that breaks
//! exactly that check.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::fs;
use std::path::Path;

use base64::Engine;
use meshca_testkit::{Run, pem_blocks, run_in};

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");
const FAST: &[(&str, &str)] = &[
    ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
    ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
];

fn meshca(dir: &Path, args: &[&str]) -> Run {
    run_in(MESHCA, dir, args, FAST)
}

/// One root with c1, c2 and two namespaces with workloads; another root with c3 in `other/`.
fn world() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    meshca(
        t.path(),
        &[
            "certs",
            "c1-cacerts",
            "c2-cacerts",
            "foo-certs",
            "bar-certs",
        ],
    )
    .ok();
    meshca(
        t.path(),
        &["certs", "-C", "other", "c3-cacerts", "baz-certs"],
    )
    .ok();
    t
}

fn text(d: &Path, f: &str) -> String {
    fs::read_to_string(d.join(f)).unwrap()
}

fn marks(out: &str) -> Vec<bool> {
    out.lines()
        .filter(|l| l.starts_with('✔') || l.starts_with('✘'))
        .map(|l| l.starts_with('✔'))
        .collect()
}

#[test]
fn verify_chain_checks_root_ca_and_path_each_on_its_own() {
    let t = world();
    let d = t.path();
    // The good case: the workload's chain against its own bundle.
    let out = meshca(
        d,
        &[
            "verify",
            "chain",
            "--cacerts",
            "foo",
            "foo/workload-cert-chain.pem",
        ],
    )
    .ok();
    assert_eq!(marks(&out.stdout), [true, true, true], "{}", out.stdout);
    assert!(out.stdout.contains("all 3 checks passed"));

    // Only the root differs: the chain ends at another root.
    let leaf_and_ca = text(d, "foo/workload-cert.pem") + &text(d, "foo/ca-cert.pem");
    fs::write(
        d.join("other-root.pem"),
        leaf_and_ca.clone() + &text(d, "other/root-cert.pem"),
    )
    .unwrap();
    let out = meshca(
        d,
        &["verify", "chain", "--cacerts", "foo", "other-root.pem"],
    )
    .failed();
    assert_eq!(marks(&out.stdout), [false, true, true], "{}", out.stdout);

    // Only the CA differs: the chain is foo's, the bundle is c1's (same root).
    let out = meshca(
        d,
        &[
            "verify",
            "chain",
            "--cacerts",
            "c1",
            "foo/workload-cert-chain.pem",
        ],
    )
    .failed();
    assert_eq!(marks(&out.stdout), [true, false, true], "{}", out.stdout);

    // Only the path fails: c1's CA in the chain, but the leaf was signed by foo's.
    let wrong =
        text(d, "foo/workload-cert.pem") + &text(d, "c1/ca-cert.pem") + &text(d, "root-cert.pem");
    fs::write(d.join("wrong-ca.pem"), wrong).unwrap();
    let out = meshca(d, &["verify", "chain", "--cacerts", "c1", "wrong-ca.pem"]).failed();
    assert_eq!(marks(&out.stdout), [true, true, false], "{}", out.stdout);
    assert!(
        out.stdout.contains("is not signed by") || out.stdout.contains("no chain"),
        "{}",
        out.stdout
    );

    // JSON for scripts.
    let out = meshca(
        d,
        &[
            "verify",
            "chain",
            "--cacerts",
            "foo",
            "foo/workload-cert-chain.pem",
            "-o",
            "json",
        ],
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["passed"], true);
    assert_eq!(v["checks"].as_array().unwrap().len(), 3);

    // Input that is not a chain is an error, not a failed check.
    fs::write(d.join("junk.pem"), "nothing").unwrap();
    let out = meshca(d, &["verify", "chain", "--cacerts", "foo", "junk.pem"]).failed();
    assert_eq!(
        out.stderr.trim(),
        "meshca: error: junk.pem: no PEM section found (expected -----BEGIN ...-----)"
    );
}

#[test]
fn verify_roots_names_the_odd_one_out() {
    let t = world();
    let d = t.path();
    let out = meshca(d, &["verify", "roots", "c1", "c2", "foo"]).ok();
    assert!(
        out.stdout
            .contains("✔ all 3 bundles trust each other's chains: 3 bundles chain to root"),
        "{}",
        out.stdout
    );
    let out = meshca(d, &["verify", "roots", "c1", "c2", "other/c3"]).failed();
    assert!(
        out.stdout.contains(
            "✘ all 3 bundles trust each other's chains: other/c3 is the odd one out: \
             c1 → other/c3: other/c3 does not trust c1's root"
        ),
        "{}",
        out.stdout
    );
    // One against one: nobody is blamed, whatever the order; both directions are named.
    for args in [["c1", "other/c3"], ["other/c3", "c1"]] {
        let mut all = vec!["verify", "roots"];
        all.extend(args);
        let out = meshca(d, &all).failed();
        assert!(!out.stdout.contains("odd one"), "{}", out.stdout);
        assert!(
            out.stdout.contains("c1 → other/c3: ") && out.stdout.contains("other/c3 → c1: "),
            "{}",
            out.stdout
        );
    }

    // Mid-rotation, the rule workloads apply: c1 and c3 both trust both roots while c3 signs
    // under the other one. The root bundles differ byte for byte (which the old rule of
    // `verify roots` refused), but each chain verifies against the other's roots.
    let both = text(d, "root-cert.pem") + &text(d, "other/root-cert.pem");
    fs::write(d.join("c1/root-cert.pem"), &both).unwrap();
    fs::write(d.join("other/c3/root-cert.pem"), &both).unwrap();
    let out = meshca(d, &["verify", "roots", "c1", "other/c3"]).ok();
    assert!(
        out.stdout.contains(
            "✔ all 2 bundles trust each other's chains: 2 bundles chain to roots that every \
             one of them trusts"
        ),
        "{}",
        out.stdout
    );
    // c2 has not added the other root yet: only the direction into c2 fails.
    let out = meshca(d, &["verify", "roots", "c1", "c2", "other/c3"]).failed();
    assert!(
        out.stdout
            .contains("other/c3 → c2: c2 does not trust other/c3's root")
    );
    assert!(!out.stdout.contains("c2 → other/c3"), "{}", out.stdout);

    // An intermediate that does not chain to its own bundle's root.
    fs::copy(d.join("other/root-cert.pem"), d.join("c2/root-cert.pem")).unwrap();
    let out = meshca(d, &["verify", "roots", "c1", "c2"]).failed();
    assert!(
        out.stdout.contains("✘ c2: intermediate chains to its root"),
        "{}",
        out.stdout
    );
}

fn dump(chain_pem: &str, root_pem: &str) -> String {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    serde_json::json!({
        "dynamicActiveSecrets": [
            {"name": "default", "secret": {"name": "default", "tlsCertificate": {
                "certificateChain": {"inlineBytes": b(chain_pem)},
                "privateKey": {"inlineBytes": b("[redacted]")}}}},
            {"name": "ROOTCA", "secret": {"name": "ROOTCA", "validationContext": {
                "trustedCa": {"inlineBytes": b(root_pem)}}}}
        ]
    })
    .to_string()
}

#[test]
fn verify_envoy_secrets_checks_each_proxy_and_the_shared_root() {
    let t = world();
    let d = t.path();
    let chain =
        |ns: &str| pem_blocks(&text(d, &format!("{ns}/workload-cert-chain.pem")))[..2].concat();
    fs::write(
        d.join("productpage.json"),
        dump(&chain("foo"), &text(d, "root-cert.pem")),
    )
    .unwrap();
    fs::write(
        d.join("reviews.json"),
        dump(&chain("bar"), &text(d, "root-cert.pem")),
    )
    .unwrap();
    let out = meshca(
        d,
        &[
            "verify",
            "envoy-secrets",
            "productpage.json",
            "reviews.json",
        ],
    )
    .ok();
    assert_eq!(marks(&out.stdout), [true, true, true], "{}", out.stdout);
    assert!(
        out.stdout
            .contains("spiffe://cluster.local/ns/foo/sa/default")
    );

    // A proxy from a cluster with another root: its own chain verifies, the shared root does not.
    let other_chain = pem_blocks(&text(d, "other/baz/workload-cert-chain.pem"))[..2].concat();
    fs::write(
        d.join("stranger.json"),
        dump(&other_chain, &text(d, "other/root-cert.pem")),
    )
    .unwrap();
    let out = meshca(
        d,
        &[
            "verify",
            "envoy-secrets",
            "productpage.json",
            "stranger.json",
        ],
    )
    .failed();
    assert_eq!(marks(&out.stdout), [true, true, false], "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "✘ all 2 proxies trust each other's chains: productpage.json → stranger.json"
        ),
        "{}",
        out.stdout
    );

    // A proxy whose certificate does not verify against its own ROOTCA.
    fs::write(
        d.join("mixed.json"),
        dump(&chain("foo"), &text(d, "other/root-cert.pem")),
    )
    .unwrap();
    let out = meshca(d, &["verify", "envoy-secrets", "mixed.json"]).failed();
    assert_eq!(marks(&out.stdout), [false, true], "{}", out.stdout);

    fs::write(d.join("bad.json"), r#"{"dynamicActiveSecrets": []}"#).unwrap();
    let out = meshca(d, &["verify", "envoy-secrets", "bad.json"]).failed();
    assert_eq!(
        out.stderr.trim(),
        "meshca: error: bad.json: no secret named ROOTCA"
    );
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `istioctl proxy-config secret -o yaml`: the JSON document as YAML.
fn yaml_dump(chain_pem: &str, root_pem: &str) -> String {
    format!(
        "dynamicActiveSecrets:\n\
         - name: default\n  versionInfo: \"2030-01-01T00:00:00Z\"\n  secret:\n    name: default\n    \
         tlsCertificate:\n      certificateChain:\n        inlineBytes: {}\n      privateKey:\n        \
         inlineBytes: W3JlZGFjdGVkXQ==\n\
         - name: ROOTCA\n  secret:\n    name: ROOTCA\n    validationContext:\n      trustedCa:\n        \
         inlineBytes: {}\n",
        b64(chain_pem),
        b64(root_pem)
    )
}

/// An element of Envoy's `dynamic_active_secrets` (snake_case, as Envoy's admin prints it).
fn envoy_secret(name: &str, body: serde_json::Value) -> serde_json::Value {
    let mut secret = serde_json::json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": name,
    });
    secret
        .as_object_mut()
        .unwrap()
        .extend(body.as_object().unwrap().clone());
    serde_json::json!({
        "name": name,
        "version_info": "2030-01-01T00:00:00Z",
        "last_updated": "2030-01-01T00:00:00Z",
        "secret": secret,
    })
}

fn envoy_default(chain_pem: &str) -> serde_json::Value {
    envoy_secret(
        "default",
        serde_json::json!({"tls_certificate": {
            "certificate_chain": {"inline_bytes": b64(chain_pem)},
            "private_key": {"inline_bytes": "W3JlZGFjdGVkXQ=="}}}),
    )
}

fn envoy_rootca(root_pem: &str) -> serde_json::Value {
    envoy_secret(
        "ROOTCA",
        serde_json::json!({"validation_context": {"trusted_ca": {"inline_bytes": b64(root_pem)}}}),
    )
}

/// Envoy's admin `/config_dump`: the secrets section among the other dumps.
fn config_dump(active: Vec<serde_json::Value>, warming: Vec<serde_json::Value>) -> String {
    serde_json::json!({"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": {}},
        {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
         "dynamic_active_secrets": active, "dynamic_warming_secrets": warming},
    ]})
    .to_string()
}

#[test]
fn verify_envoy_secrets_reads_istioctl_yaml_and_envoy_config_dumps() {
    let t = world();
    let d = t.path();
    let root = text(d, "root-cert.pem");
    // The full chain, ending with the root, as istio-agent hands it to Envoy.
    let full = |ns: &str| text(d, &format!("{ns}/workload-cert-chain.pem"));
    assert!(pem_blocks(&full("foo")).len() >= 3);

    // istioctl -o yaml, in a file whose name says nothing.
    fs::write(d.join("productpage.dump"), yaml_dump(&full("foo"), &root)).unwrap();
    // Envoy's /config_dump, snake_case.
    let envoy = config_dump(
        vec![envoy_default(&full("bar")), envoy_rootca(&root)],
        vec![],
    );
    fs::write(d.join("reviews-config_dump.json"), envoy).unwrap();
    // /config_dump?resource=dynamic_active_secrets: one DynamicSecret per element.
    let mut one = envoy_default(&full("foo"));
    one["@type"] = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump.DynamicSecret".into();
    let mut two = envoy_rootca(&root);
    two["@type"] = one["@type"].clone();
    fs::write(
        d.join("ratings.json"),
        serde_json::json!({"configs": [one, two]}).to_string(),
    )
    .unwrap();
    // The JSON form too, with the root at the end of the chain.
    fs::write(d.join("details.json"), dump(&full("bar"), &root)).unwrap();
    let out = meshca(
        d,
        &[
            "verify",
            "envoy-secrets",
            "productpage.dump",
            "reviews-config_dump.json",
            "ratings.json",
            "details.json",
        ],
    )
    .ok();
    assert_eq!(marks(&out.stdout), [true; 5], "{}", out.stdout);
    assert!(out.stdout.contains(
        "✔ productpage.dump: certificate verifies against its ROOTCA: spiffe://cluster.local/ns/foo/sa/default"
    ));
    assert!(out.stdout.contains(
        "✔ reviews-config_dump.json: certificate verifies against its ROOTCA: spiffe://cluster.local/ns/bar/sa/default"
    ));

    // Warming secrets are reported, and only the active ones used.
    let other_root = text(d, "other/root-cert.pem");
    let warming = config_dump(
        vec![envoy_default(&full("foo")), envoy_rootca(&root)],
        vec![envoy_rootca(&other_root)],
    );
    fs::write(d.join("warming.json"), warming).unwrap();
    let out = meshca(d, &["verify", "envoy-secrets", "warming.json"]).ok();
    assert!(
        out.stdout.contains("(still warming, not used: ROOTCA)"),
        "{}",
        out.stdout
    );

    // Malformed dumps: one line naming the file and what is missing.
    let cases = [
        (
            "no-rootca.yaml",
            yaml_dump(&full("foo"), &root).replace("name: ROOTCA", "name: SOMETHING"),
            "no-rootca.yaml: no secret named ROOTCA",
        ),
        (
            "bad-base64.json",
            config_dump(
                vec![
                    envoy_default(&full("foo")),
                    envoy_secret(
                        "ROOTCA",
                        serde_json::json!({"validation_context": {"trusted_ca": {"inline_bytes": "%%% not base64"}}}),
                    ),
                ],
                vec![],
            ),
            "bad-base64.json: ROOTCA trusted CA: inline bytes are not base64",
        ),
        (
            "warming-only.json",
            config_dump(
                vec![],
                vec![envoy_default(&full("foo")), envoy_rootca(&root)],
            ),
            "warming-only.json: no active secret named ROOTCA (it is only warming)",
        ),
        (
            "clusters.json",
            serde_json::json!({"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"}]}).to_string(),
            "clusters.json: neither istioctl's dynamicActiveSecrets nor a SecretsConfigDump in Envoy's configs",
        ),
    ];
    for (file, content, error) in cases {
        fs::write(d.join(file), content).unwrap();
        let out = meshca(d, &["verify", "envoy-secrets", file]).failed();
        assert_eq!(out.stderr.trim(), format!("meshca: error: {error}"));
        assert_eq!(out.stderr.trim().lines().count(), 1);
    }
}
