//! Cases of `meshca trust`: broken policies (unknown fields in YAML and JSON, wrong types and
//! values, not YAML at all) for every subcommand that reads one, and stores it cannot write.

use std::fs;
use std::path::Path;

use crate::world::symlink_loop;
use crate::{Case, error, full_disk, read_only};

/// Writes `name`: the world's `policy.yaml` (a generated root, ECDSA intermediates for c1 and
/// c2) with `from` replaced by `to`.
fn policy(d: &Path, name: &str, from: &str, to: &str) {
    let text = fs::read_to_string(d.join("policy.yaml")).unwrap();
    assert!(text.contains(from), "{from:?} not in the policy");
    fs::write(d.join(name), text.replacen(from, to, 1)).unwrap();
}

/// The world's policy with an unknown field among the intermediate options, as `bad.yaml`.
fn unknown_field(d: &Path) {
    policy(
        d,
        "bad.yaml",
        "ttlDays: 30\n",
        "ttlDays: 30\n      bogusField: 3\n",
    );
}

/// The cache of the bundles a reconcile verified: rewritten by a reconcile that verified some
/// clusters and failed to write others, which is its purpose.
const VERIFIED: &str = "store/mgmt/gloo-mesh/mesh.verified";

const UNKNOWN: &str = "unknown field `bogusField`";

/// The same policy as JSON, with an unknown field in `spec.config`.
const JSON_POLICY: &str = r#"{"apiVersion": "trust.meshca/v1alpha1", "kind": "RootTrustPolicy",
 "metadata": {"name": "mesh", "namespace": "gloo-mesh"},
 "spec": {"config": {"mgmtServerCa": {"generated": {"ttlDays": 365}},
   "intermediateCertOptions": {"ttlDays": 30, "keyType": "ecdsa-p256"},
   "rotateEverything": true}}}
"#;

/// Empties `store/c2`, so that applying the policy has a cacerts to write there.
fn c2_to_write(d: &Path) {
    fs::remove_dir_all(d.join("store/c2")).unwrap();
    fs::create_dir(d.join("store/c2")).unwrap();
}

pub fn cases() -> Vec<Case> {
    let apply = &["trust", "apply", "-f", "bad.yaml", "--store", "store"];
    vec![
        Case::new(
            "trust apply: an unknown field in YAML",
            apply,
            error(UNKNOWN, "bad.yaml"),
        )
        .setup(|d| {
            unknown_field(d);
            None
        }),
        Case::new(
            "trust apply: an unknown field in JSON",
            &["trust", "apply", "-f", "bad.json", "--store", "store"],
            error("unknown field `rotateEverything`", "bad.json"),
        )
        .setup(|d| {
            fs::write(d.join("bad.json"), JSON_POLICY).unwrap();
            None
        }),
        Case::new(
            "trust apply: a field given twice",
            apply,
            error("duplicate", "bad.yaml"),
        )
        .setup(|d| {
            policy(
                d,
                "bad.yaml",
                "ttlDays: 30\n",
                "ttlDays: 30\n      ttlDays: 3\n",
            );
            None
        }),
        Case::new(
            "trust apply: a number that is a word",
            apply,
            error("line 12 column 16: invalid i64", "bad.yaml"),
        )
        .setup(|d| {
            policy(d, "bad.yaml", "ttlDays: 30", "ttlDays: thirty");
            None
        }),
        Case::new(
            "trust apply: negative days",
            apply,
            error("ttlDays", "bad.yaml"),
        )
        .setup(|d| {
            policy(d, "bad.yaml", "ttlDays: 30", "ttlDays: -30");
            None
        }),
        Case::new(
            "trust apply: a grace ratio above 1",
            apply,
            error("secretRotationGracePeriodRatio", "bad.yaml"),
        )
        .setup(|d| {
            policy(
                d,
                "bad.yaml",
                "secretRotationGracePeriodRatio: 0.1",
                "secretRotationGracePeriodRatio: 1.5",
            );
            None
        }),
        Case::new(
            "trust apply: an unknown key type",
            apply,
            error("dsa", "bad.yaml"),
        )
        .setup(|d| {
            policy(d, "bad.yaml", "keyType: ecdsa-p256", "keyType: dsa");
            None
        }),
        Case::new(
            "trust apply: another kind",
            apply,
            error("RootTrustPolicy", "bad.yaml"),
        )
        .setup(|d| {
            policy(d, "bad.yaml", "kind: RootTrustPolicy", "kind: Secret");
            None
        }),
        Case::new("trust apply: not YAML", apply, error("line 1", "bad.yaml")).setup(|d| {
            fs::write(d.join("bad.yaml"), "spec: [config\n").unwrap();
            None
        }),
        Case::new(
            "trust apply: a policy that is not UTF-8",
            apply,
            error("UTF-8", "bad.yaml"),
        )
        .setup(|d| {
            meshca_testkit::openssl(d, ["rand", "-out", "bad.yaml", "256"]).ok();
            None
        }),
        Case::new(
            "trust apply: a policy that is a symlink loop",
            apply,
            error("symbolic links", "bad.yaml"),
        )
        .setup(|d| {
            symlink_loop(d, "bad.yaml");
            None
        }),
        Case::new(
            "trust apply: a policy named in bytes that are not UTF-8",
            &["trust", "apply", "-f", "x", "--store", "store"],
            error(UNKNOWN, "bad-\u{FFFD}.yaml"),
        )
        .arg_bytes(3, b"bad-\xff.yaml")
        .setup(|d| {
            unknown_field(d);
            let name = std::os::unix::ffi::OsStrExt::from_bytes(b"bad-\xff.yaml");
            fs::rename(d.join("bad.yaml"), d.join::<&std::ffi::OsStr>(name)).unwrap();
            None
        }),
        Case::new(
            "trust apply: a store that is not there",
            &["trust", "apply", "-f", "policy.yaml", "--store", "nowhere"],
            error("No such file or directory", "--store nowhere"),
        ),
        Case::new(
            "trust status: a store that is a file",
            &["trust", "status", "--store", "policy.yaml"],
            error("not a folder", "--store policy.yaml"),
        ),
        Case::new(
            "trust apply: junk as the root's secret",
            &["trust", "apply", "-f", "seed.yaml", "--store", "seed"],
            error("certificate", "ca-cert.pem"),
        )
        .setup(|d| {
            let secret = d.join("seed/mgmt/gloo-mesh/my-root-trust-policy.gloo-mesh");
            fs::create_dir_all(&secret).unwrap();
            for f in ["ca-cert.pem", "cert-chain.pem", "root-cert.pem"] {
                fs::copy(d.join("junk.pem"), secret.join(f)).unwrap();
            }
            fs::copy(d.join("root-key.pem"), secret.join("ca-key.pem")).unwrap();
            fs::create_dir_all(d.join("seed/c1")).unwrap();
            fs::write(d.join("seed.yaml"), meshca_testkit::SEED_001_POLICY).unwrap();
            None
        }),
        Case::new(
            "trust apply: a read-only cluster folder",
            &["trust", "apply", "-f", "policy.yaml", "--store", "store"],
            error("Read-only file system", "c2: store/c2"),
        )
        .may_change(VERIFIED)
        .setup(|d| {
            c2_to_write(d);
            Some(read_only(&d.join("store/c2")))
        }),
        Case::new(
            "trust apply: a full disk",
            &["trust", "apply", "-f", "policy.yaml", "--store", "store"],
            error("No space left on device", "c2: store/c2"),
        )
        .may_change(VERIFIED)
        .setup(|d| {
            c2_to_write(d);
            Some(full_disk(&d.join("store/c2"), d, &[]))
        }),
        Case::new(
            "trust rotate-intermediates: a read-only store",
            &[
                "trust",
                "rotate-intermediates",
                "-f",
                "policy.yaml",
                "--store",
                "store",
            ],
            error(
                "Read-only file system",
                "store/mgmt/gloo-mesh/mesh.verified",
            ),
        )
        .setup(|d| Some(read_only(&d.join("store")))),
        Case::new(
            "trust rotate-intermediates: an unknown field",
            &[
                "trust",
                "rotate-intermediates",
                "-f",
                "bad.yaml",
                "--store",
                "store",
            ],
            error(UNKNOWN, "bad.yaml"),
        )
        .setup(|d| {
            unknown_field(d);
            None
        }),
        Case::new(
            "trust rotate-root: an unknown field in JSON",
            &["trust", "rotate-root", "-f", "bad.json", "--store", "store"],
            error("unknown field `rotateEverything`", "bad.json"),
        )
        .setup(|d| {
            fs::write(d.join("bad.json"), JSON_POLICY).unwrap();
            None
        }),
        Case::new(
            "trust rotate-root: a secret name with two slashes",
            &[
                "trust",
                "rotate-root",
                "-f",
                "policy.yaml",
                "--store",
                "store",
                "--to-secret",
                "a/b/c",
            ],
            error("expected NAME or NAMESPACE/NAME", "--to-secret \"a/b/c\""),
        ),
        Case::new(
            "trust simulate: no clusters",
            &[
                "trust",
                "simulate",
                "--policy",
                "policy.yaml",
                "--clusters",
                "0",
            ],
            error("--clusters at least 2", "simulate"),
        ),
        Case::new(
            "trust status: an unknown field",
            &["trust", "status", "-f", "bad.yaml", "--store", "store"],
            error(UNKNOWN, "bad.yaml"),
        )
        .setup(|d| {
            unknown_field(d);
            None
        }),
        Case::new(
            "trust simulate: an unknown field",
            &["trust", "simulate", "--policy", "bad.yaml"],
            error(UNKNOWN, "bad.yaml"),
        )
        .setup(|d| {
            unknown_field(d);
            None
        }),
        Case::new(
            "trust run: an unknown field stops it at start",
            &["trust", "run", "-f", "bad.yaml", "--store", "store"],
            error(UNKNOWN, "bad.yaml"),
        )
        .setup(|d| {
            unknown_field(d);
            None
        }),
        Case::new(
            "trust dashboard: a read-only folder",
            &[
                "trust",
                "dashboard",
                "-f",
                "policy.yaml",
                "--store",
                "store",
                "-o",
                "ro/d.html",
            ],
            error("Read-only file system", "ro/d.html"),
        )
        .setup(|d| {
            fs::create_dir(d.join("ro")).unwrap();
            Some(read_only(&d.join("ro")))
        }),
    ]
}
