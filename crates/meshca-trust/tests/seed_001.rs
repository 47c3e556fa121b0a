//! Seed 001's flow: the seed's RootTrustPolicy and a root secret in the management cluster;
//! every workload cluster gets `cacerts`; fresh bundles are left alone; forced and due rotations
//! replace them; refusals leave the store as it was.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use meshca_store::SecretKey;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshca_pki::{CacertsBundle, Certificate};
use meshca_trust::{FolderStore, Outcome, SecretStore, TrustPolicy, reconcile, status};
use time::{Duration, OffsetDateTime};

const SEED_POLICY: &str = "apiVersion: admin.gloo.solo.io/v2
kind: RootTrustPolicy
metadata:
  name: root-trust-policy
  namespace: gloo-mesh
spec:
  config:
    intermediateCertOptions:
      secretRotationGracePeriodRatio: 0.1
      ttlDays: 1
      rsaKeySizeBytes: 2048
    mgmtServerCa:
      secretRef:
        name: my-root-trust-policy.gloo-mesh
        namespace: gloo-mesh
";

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .as_bytes()
                        .to_vec(),
                );
            } else if m.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// The seed's step 1: a root from the certificate generator, copied into the four names.
fn seed_store(store_dir: &Path, ecdsa: bool) -> FolderStore {
    let work = store_dir.join("../work");
    std::fs::create_dir_all(&work).unwrap();
    let settings = meshca_certs::Settings {
        rootca_key_type: if ecdsa {
            "ecdsa-p256".into()
        } else {
            "rsa".into()
        },
        rootca_keysz: 2048,
        ..Default::default()
    };
    meshca_certs::run(
        &work,
        &settings,
        &[meshca_certs::Target::RootCa],
        false,
        OffsetDateTime::now_utc(),
        &|_| {},
    )
    .unwrap();
    let store = FolderStore::open(store_dir).unwrap();
    let root = std::fs::read(work.join("root-cert.pem")).unwrap();
    let key = std::fs::read(work.join("root-key.pem")).unwrap();
    let mut data = meshca_store::SecretData::new();
    data.insert("ca-cert.pem".to_owned(), root.clone());
    data.insert("ca-key.pem".to_owned(), key);
    data.insert("cert-chain.pem".to_owned(), root.clone());
    data.insert("root-cert.pem".to_owned(), root);
    store
        .replace(
            &SecretKey::new("mgmt", "gloo-mesh", "my-root-trust-policy.gloo-mesh"),
            &data,
        )
        .unwrap();
    for c in ["cluster1", "cluster2"] {
        std::fs::create_dir_all(store_dir.join(c)).unwrap();
    }
    store
}

fn cacerts(store: &FolderStore, cluster: &str, now: OffsetDateTime) -> CacertsBundle {
    let data = store
        .read(&SecretKey::new(cluster, "istio-system", "cacerts"))
        .unwrap()
        .unwrap();
    CacertsBundle::from_files(&data, cluster, now).unwrap()
}

#[test]
fn every_cluster_gets_cacerts_under_one_root_and_fresh_ones_are_left_alone() {
    let t = tempfile::tempdir().unwrap();
    let store_dir = t.path().join("store");
    let store = seed_store(&store_dir, false);
    let policy = TrustPolicy::from_yaml(SEED_POLICY, "policy.yaml").unwrap();
    let now = OffsetDateTime::now_utc();
    let out = reconcile(&store, &policy, "mgmt", &[], &[], now)
        .unwrap()
        .clusters;
    assert_eq!(
        out,
        [
            ("cluster1".to_owned(), Outcome::Created),
            ("cluster2".to_owned(), Outcome::Created)
        ]
    );
    let root = Certificate::one_from_pem(
        &std::fs::read(store_dir.join("mgmt/gloo-mesh/my-root-trust-policy.gloo-mesh/ca-cert.pem"))
            .unwrap(),
        "root",
    )
    .unwrap();
    for c in ["cluster1", "cluster2"] {
        let b = cacerts(&store, c, now);
        assert_eq!(
            b.roots(),
            std::slice::from_ref(&root),
            "{c} trusts the policy's root"
        );
        assert_eq!(
            b.signer().cert().not_after() - b.signer().cert().not_before(),
            Duration::days(1)
        );
        assert!(b.signer().cert().subject().contains(&format!("L={c}")));
    }
    // A second pass writes nothing.
    let before = snapshot(&store_dir);
    let out = reconcile(&store, &policy, "mgmt", &[], &[], now + Duration::hours(1))
        .unwrap()
        .clusters;
    assert!(out.iter().all(|(_, o)| *o == Outcome::Fresh), "{out:?}");
    assert_eq!(snapshot(&store_dir), before, "no churn");

    // Forced rotation of one cluster only.
    let out = reconcile(
        &store,
        &policy,
        "mgmt",
        &[],
        &["cluster1".to_owned()],
        now + Duration::hours(1),
    )
    .unwrap()
    .clusters;
    assert_eq!(out[0].1, Outcome::Rotated("rotation requested".into()));
    assert_eq!(out[1].1, Outcome::Fresh);

    // Past 90% of the day: both rotate, and the status says when the next renewal is.
    let later = now + Duration::hours(22);
    let st = status(&store, &policy, "mgmt", &[], later)
        .unwrap()
        .clusters;
    assert!(
        st[1]
            .problems
            .iter()
            .any(|p| p.contains("due for rotation")),
        "{st:?}"
    );
    let out = reconcile(&store, &policy, "mgmt", &[], &[], later)
        .unwrap()
        .clusters;
    // cluster1 was rotated an hour in, so it is not due yet; cluster2 is.
    assert_eq!(out[0].1, Outcome::Fresh, "{out:?}");
    assert!(
        matches!(&out[1].1, Outcome::Rotated(r) if r.contains("life left")),
        "{out:?}"
    );
    let st = status(&store, &policy, "mgmt", &[], later)
        .unwrap()
        .clusters;
    assert!(st.iter().all(|s| s.problems.is_empty()), "{st:?}");
}

#[test]
fn refusals_leave_the_store_exactly_as_it_was() {
    let t = tempfile::tempdir().unwrap();
    let store_dir = t.path().join("store");
    let store = seed_store(&store_dir, true);
    let now = OffsetDateTime::now_utc();
    // Intermediates that would outlive the root (the root lives 3650 days).
    let long = SEED_POLICY.replace("ttlDays: 1", "ttlDays: 4000");
    let policy = TrustPolicy::from_yaml(&long, "p").unwrap();
    let before = snapshot(&store_dir);
    let err = reconcile(&store, &policy, "mgmt", &[], &[], now)
        .unwrap_err()
        .to_string();
    assert!(err.contains("intermediateCertOptions.ttlDays"), "{err}");
    assert_eq!(snapshot(&store_dir), before);
    // A root secret whose key does not match its certificate.
    let secret = store_dir.join("mgmt/gloo-mesh/my-root-trust-policy.gloo-mesh");
    let other = tempfile::tempdir().unwrap();
    let other_store = seed_store(&other.path().join("s"), true);
    let other_key = other_store
        .read(&SecretKey::new(
            "mgmt",
            "gloo-mesh",
            "my-root-trust-policy.gloo-mesh",
        ))
        .unwrap()
        .unwrap()["ca-key.pem"]
        .clone();
    let mut data = store
        .read(&SecretKey::new(
            "mgmt",
            "gloo-mesh",
            "my-root-trust-policy.gloo-mesh",
        ))
        .unwrap()
        .unwrap();
    data.insert("ca-key.pem".into(), other_key);
    store
        .replace(
            &SecretKey::new("mgmt", "gloo-mesh", "my-root-trust-policy.gloo-mesh"),
            &data,
        )
        .unwrap();
    let before = snapshot(&store_dir);
    let policy = TrustPolicy::from_yaml(SEED_POLICY, "p").unwrap();
    let err = reconcile(&store, &policy, "mgmt", &[], &[], now)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match"), "{err}");
    assert_eq!(snapshot(&store_dir), before);
    let _ = secret;
    data.insert(
        "ca-key.pem".into(),
        std::fs::read(t.path().join("work/root-key.pem")).unwrap(),
    );
    store
        .replace(
            &SecretKey::new("mgmt", "gloo-mesh", "my-root-trust-policy.gloo-mesh"),
            &data,
        )
        .unwrap();
    let before = snapshot(&store_dir);
    // A missing secretRef, and an unknown cluster.
    let missing = SEED_POLICY.replace("name: my-root-trust-policy.gloo-mesh", "name: nope");
    let err = reconcile(
        &store,
        &TrustPolicy::from_yaml(&missing, "p").unwrap(),
        "mgmt",
        &[],
        &[],
        now,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("mgmt/gloo-mesh/nope not found"), "{err}");
    let err = reconcile(&store, &policy, "mgmt", &["cluster9".into()], &[], now)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster9"), "{err}");
    assert_eq!(snapshot(&store_dir), before);
}

#[test]
fn an_intermediate_secret_ref_passes_its_chain_on() {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let settings = meshca_certs::Settings::ecdsa_p256();
    // The operator's PKI: a root, and an intermediate for the management server.
    meshca_certs::run(
        &work,
        &settings,
        &[meshca_certs::Target::Cacerts("mgmt-ca".into())],
        false,
        OffsetDateTime::now_utc(),
        &|_| {},
    )
    .unwrap();
    // Its pathlen:0 forbids another level below it, so the intermediate the operator hands over
    // must allow one: make it with pathlen 1 through meshca_pki.
    let root = meshca_pki::CaSigner::new(
        Certificate::one_from_pem(&std::fs::read(work.join("root-cert.pem")).unwrap(), "root")
            .unwrap(),
        meshca_pki::PrivateKey::from_pem(
            &std::fs::read(work.join("root-key.pem")).unwrap(),
            "root key",
        )
        .unwrap(),
        "root key",
    )
    .unwrap();
    let now = OffsetDateTime::now_utc();
    let ikey = meshca_pki::PrivateKey::generate(meshca_pki::KeyType::EcdsaP256).unwrap();
    let inter = root
        .issue_ca(
            &meshca_pki::CaProfile {
                subject: meshca_pki::Subject {
                    organization: Some("Acme".into()),
                    common_name: Some("Mesh CA".into()),
                    locality: None,
                },
                not_before: now,
                not_after: now + Duration::days(1000),
                path_len: Some(1),
                dns_names: Vec::new(),
            },
            &ikey,
            "mesh ca",
        )
        .unwrap();
    let store = FolderStore::open(&t.path().join("store")).unwrap();
    let root_pem = std::fs::read(work.join("root-cert.pem")).unwrap();
    let mut data = meshca_store::SecretData::new();
    data.insert("ca-cert.pem".to_owned(), inter.pem().into_bytes());
    data.insert("ca-key.pem".to_owned(), ikey.to_pkcs8_pem().into_bytes());
    data.insert(
        "cert-chain.pem".to_owned(),
        [inter.pem().into_bytes(), root_pem.clone()].concat(),
    );
    data.insert("root-cert.pem".to_owned(), root_pem);
    store
        .replace(
            &SecretKey::new("mgmt", "gloo-mesh", "my-root-trust-policy.gloo-mesh"),
            &data,
        )
        .unwrap();
    std::fs::create_dir_all(t.path().join("store/cluster1")).unwrap();
    let policy = TrustPolicy::from_yaml(
        &SEED_POLICY.replace(
            "rsaKeySizeBytes: 2048",
            "rsaKeySizeBytes: 2048\n      orgName: Acme",
        ),
        "p",
    )
    .unwrap();
    reconcile(&store, &policy, "mgmt", &[], &[], now).unwrap();
    let b = cacerts(&store, "cluster1", now);
    let chain = Certificate::all_from_pem(
        &store
            .read(&SecretKey::new("cluster1", "istio-system", "cacerts"))
            .unwrap()
            .unwrap()["cert-chain.pem"],
        "chain",
    )
    .unwrap();
    assert_eq!(
        chain.len(),
        3,
        "cluster intermediate, the operator's intermediate, the root"
    );
    assert_eq!(chain[1], inter);
    assert_eq!(b.path().certs().len(), 3);
}
