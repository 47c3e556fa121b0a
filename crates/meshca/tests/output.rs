//! Every command whose output is data prints the same document with `-o json` and `-o yaml`:
//! both parse (JSON with serde_json, YAML with serde-saphyr) to equal values. `trust status`
//! also works from the store alone. Shell completions and man pages come from the clap
//! definitions.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::fs;
use std::path::Path;

use meshca_testkit::run_in;

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

const POLICY: &str = meshca_testkit::GENERATED_ROOT_POLICY;

/// Runs `meshca <args> -o json` and `-o yaml` in `d`, asserts both parse to the same value,
/// and returns it. `ok` says whether the command must succeed or fail.
fn both(d: &Path, args: &[&str], ok: bool) -> serde_json::Value {
    both_but(d, args, ok, &[])
}

/// [`both`], leaving the top-level fields `varying` out of the comparison (what depends on
/// the moment each run started).
fn both_but(d: &Path, args: &[&str], ok: bool, varying: &[&str]) -> serde_json::Value {
    let mut values = Vec::new();
    for format in ["json", "yaml"] {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", format]);
        let out = run_in(MESHCA, d, &all, &[]);
        let out = if ok { out.ok() } else { out.failed() };
        let value: serde_json::Value = match format {
            "json" => serde_json::from_str(&out.stdout)
                .unwrap_or_else(|e| panic!("meshca {all:?}: not JSON ({e}):\n{}", out.stdout)),
            _ => serde_saphyr::from_str(&out.stdout)
                .unwrap_or_else(|e| panic!("meshca {all:?}: not YAML ({e}):\n{}", out.stdout)),
        };
        values.push(value);
    }
    let mut compared = values.clone();
    for v in &mut compared {
        if let Some(o) = v.as_object_mut() {
            for k in varying {
                assert!(o.remove(*k).is_some(), "no {k} in {o:?}");
            }
        }
    }
    assert_eq!(
        compared[0], compared[1],
        "meshca {args:?}: JSON and YAML differ"
    );
    values.remove(0)
}

#[test]
fn every_data_command_prints_json_and_yaml_alike() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    run_in(
        MESHCA,
        d,
        [
            "certs",
            "root-ca",
            "cluster1-cacerts",
            "cluster2-cacerts",
            "foo-certs",
        ],
        &[
            ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
            ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
        ],
    )
    .ok();

    let v = both(d, &["check", "cluster1", "cluster2"], true);
    assert!(v.to_string().contains("cluster1"), "{v}");
    let v = both(
        d,
        &["inspect", "cluster1/ca-cert.pem", "root-cert.pem"],
        true,
    );
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    let v = both(d, &["verify", "roots", "cluster1", "cluster2"], true);
    assert_eq!(v["passed"], true, "{v}");
    let v = both(
        d,
        &[
            "verify",
            "chain",
            "--cacerts",
            "foo",
            "foo/workload-cert-chain.pem",
        ],
        true,
    );
    assert_eq!(v["passed"], true, "{v}");
    // A failing verification prints the same document and exits non-zero.
    let v = both(
        d,
        &[
            "verify",
            "chain",
            "--cacerts",
            "cluster1",
            "foo/workload-cert-chain.pem",
        ],
        false,
    );
    assert_eq!(v["passed"], false, "{v}");
    let v = both(d, &["secret", "cluster1"], true);
    assert_eq!(v["kind"], "Secret", "{v}");

    for c in ["mgmt", "cluster1", "cluster2"] {
        fs::create_dir_all(d.join("store").join(c)).unwrap();
    }
    fs::write(d.join("policy.yaml"), POLICY).unwrap();
    run_in(
        MESHCA,
        d,
        ["trust", "apply", "-f", "policy.yaml", "--store", "store"],
        &[],
    )
    .ok();
    let v = both(
        d,
        &["trust", "status", "-f", "policy.yaml", "--store", "store"],
        true,
    );
    assert_eq!(v["clusters"].as_array().unwrap().len(), 2, "{v}");
    // Its events carry the dates of the run.
    let v = both_but(
        d,
        &[
            "trust",
            "simulate",
            "--policy",
            "policy.yaml",
            "--days",
            "40",
            "--clusters",
            "2",
        ],
        true,
        &["events"],
    );
    assert_eq!(v["failure_moments"], 0, "{v}");
}

#[test]
fn trust_status_reads_the_store_alone() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for c in ["mgmt", "cluster1", "cluster2", "cluster3"] {
        fs::create_dir_all(d.join("store").join(c)).unwrap();
    }
    fs::write(d.join("policy.yaml"), POLICY).unwrap();
    run_in(
        MESHCA,
        d,
        [
            "trust",
            "apply",
            "-f",
            "policy.yaml",
            "--store",
            "store",
            "--cluster",
            "cluster1",
            "--cluster",
            "cluster2",
        ],
        &[],
    )
    .ok();
    // No policy: each cluster's bundle as it is, and whether the clusters trust each other.
    let v = both(d, &["trust", "status", "--store", "store"], false);
    let clusters = v["clusters"].as_array().unwrap();
    let names: Vec<&str> = clusters
        .iter()
        .map(|c| c["cluster"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cluster1", "cluster2", "cluster3"], "{v}");
    assert_eq!(clusters[0]["problems"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(clusters[0]["roots"], clusters[1]["roots"], "{v}");
    assert!(clusters[0]["serial"].is_string(), "{v}");
    assert_eq!(clusters[2]["problems"][0], "no cacerts", "{v}");
    let text = run_in(MESHCA, d, ["trust", "status", "--store", "store"], &[]).failed();
    assert!(text.stdout.contains("CLUSTER"), "{}", text.stdout);

    // A bundle of another mesh: the others do not trust it, and it does not trust them.
    run_in(
        MESHCA,
        d,
        ["certs", "-C", "other", "root-ca", "cluster3-cacerts"],
        &[
            ("ROOTCA_KEY_TYPE", "ecdsa-p256"),
            ("INTERMEDIATE_KEY_TYPE", "ecdsa-p256"),
        ],
    )
    .ok();
    let dst = d.join("store/cluster3/istio-system/cacerts");
    fs::create_dir_all(&dst).unwrap();
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ] {
        fs::copy(d.join("other/cluster3").join(f), dst.join(f)).unwrap();
    }
    let v = both(d, &["trust", "status", "--store", "store"], false);
    let problems = v["clusters"][0]["problems"].to_string();
    assert!(
        problems.contains("cluster3") && problems.contains("does not"),
        "{v}"
    );
    assert!(
        v["clusters"][2]["problems"]
            .to_string()
            .contains("cluster1"),
        "{v}"
    );
}

#[test]
fn completions_and_man_pages_come_from_the_cli() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let bash = run_in(MESHCA, d, ["completions", "bash"], &[]).ok();
    fs::write(d.join("meshca.bash"), &bash.stdout).unwrap();
    // bash reads it, and it completes the subcommands.
    let out = run_in(
        "bash",
        d,
        [
            "-c",
            "source ./meshca.bash && COMP_WORDS=(meshca tr) COMP_CWORD=1 && _meshca meshca tr meshca && printf '%s\\n' \"${COMPREPLY[@]}\"",
        ],
        &[],
    )
    .ok();
    assert!(out.stdout.lines().any(|l| l == "trust"), "{}", out.stdout);
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = run_in(MESHCA, d, ["completions", shell], &[]).ok();
        assert!(out.stdout.contains("meshca"), "{shell}");
    }
    let out = run_in(MESHCA, d, ["man", "--dir", "man"], &[]).ok();
    assert!(out.stdout.starts_with("wrote "), "{}", out.stdout);
    let page = fs::read_to_string(d.join("man/meshca-trust-run.1")).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(page.contains("leader\\-elect"), "{page}");
    for p in ["meshca.1", "meshca-serve.1", "meshca-verify-roots.1"] {
        assert!(d.join("man").join(p).is_file(), "{p}");
    }
}
