//! The Kubernetes store under the reconciler, against real kube-apiservers on loopback: version
//! preconditions; a writer slipping in between read and write; the manager (the loop of
//! `meshca trust run`) through intermediate and root rotations on a fake clock, with a reader that
//! finds every `cacerts` whole and valid at every moment; an API server killed in the middle of a
//! reconcile; one that refuses and one that hangs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures by design

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use meshca_kube::{ClusterSources, KubeOptions, KubeStore};
use meshca_pki::{CacertsBundle, verify_path};
use meshca_store::{Expect, Secret, SecretData, SecretKey, SecretStore, StoreError, Version};
use meshca_testkit::kube::ControlPlane;
use meshca_trust::manager::{Clock, Event, Manager, ManagerConfig, ManualClock};
use meshca_trust::reconcile::cacerts_key;
use meshca_trust::{Outcome, TrustPolicy, reconcile, start_root_rotation};
use time::{Duration, OffsetDateTime};

use meshca_testkit::GENERATED_ROOT_POLICY as POLICY;

const CLUSTERS: [&str; 2] = ["cluster1", "cluster2"];

fn start() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn control_plane() -> ControlPlane {
    let cp = ControlPlane::start(&["mgmt", "cluster1", "cluster2"]);
    cp.kubectl_ok(["--context", "mgmt", "create", "namespace", "gloo-mesh"]);
    for c in CLUSTERS {
        cp.kubectl_ok(["--context", c, "create", "namespace", "istio-system"]);
    }
    cp
}

fn store(cp: &ControlPlane) -> KubeStore {
    let sources = ClusterSources {
        kubeconfig: Some(cp.kubeconfig().to_owned()),
        mgmt_context: Some("mgmt".into()),
        clusters: CLUSTERS
            .iter()
            .map(|c| ((*c).into(), (*c).into()))
            .collect(),
        ..Default::default()
    };
    let opts = KubeOptions {
        timeout: std::time::Duration::from_secs(3),
        owner: Some("gloo-mesh/mesh".into()),
        ..Default::default()
    };
    KubeStore::connect(&sources, opts).unwrap()
}

fn policy() -> TrustPolicy {
    TrustPolicy::from_yaml(POLICY, "policy.yaml").unwrap()
}

fn bundle(store: &dyn SecretStore, cluster: &str, now: OffsetDateTime) -> CacertsBundle {
    let data = store.read(&cacerts_key(cluster)).unwrap().expect("cacerts");
    CacertsBundle::from_files(&data, cluster, now).unwrap()
}

/// Each cluster's intermediate verifies against the other's root bundle: the two meshes
/// interoperate.
fn cross_verify(store: &dyn SecretStore, now: OffsetDateTime) {
    let a = bundle(store, "cluster1", now);
    let b = bundle(store, "cluster2", now);
    for (x, y, what) in [(&a, &b, "1 → 2"), (&b, &a, "2 → 1")] {
        let chain = &x.path().certs()[1..];
        verify_path(x.signer().cert(), chain, y.roots(), now)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

#[test]
fn writes_name_the_version_they_read() {
    let cp = control_plane();
    let s = store(&cp);
    let key = SecretKey::new("cluster1", "istio-system", "probe");
    let mut d = SecretData::new();
    d.insert("a".into(), b"1".to_vec());
    let v1 = s.write(&key, &d, &Expect::Absent).unwrap();
    let e = s.write(&key, &d, &Expect::Absent).unwrap_err();
    assert!(e.is_conflict(), "{e}");
    // Someone else changes it: a write at the old version is refused and changes nothing.
    cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "istio-system",
        "annotate",
        "secret",
        "probe",
        "by=hand",
    ]);
    let mut d2 = SecretData::new();
    d2.insert("a".into(), b"2".to_vec());
    let e = s
        .write(&key, &d2, &Expect::Version(v1.clone()))
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::VersionConflict { key, .. } if key == "cluster1/istio-system/probe"),
        "{e}"
    );
    let now: Secret = s.get(&key).unwrap().unwrap();
    assert_eq!(now.data, d);
    assert_ne!(now.version, v1);
    // At the version it has now, the write goes through, whole, and keeps the hand's annotation.
    s.write(&key, &d2, &Expect::Version(now.version)).unwrap();
    assert_eq!(s.read(&key).unwrap(), Some(d2));
    let a = cp.kubectl_ok([
        "--context",
        "cluster1",
        "-n",
        "istio-system",
        "get",
        "secret",
        "probe",
        "-o",
        "jsonpath={.metadata.annotations.by} {.metadata.labels.app\\.kubernetes\\.io/managed-by}",
    ]);
    assert_eq!(a, "hand meshca");
    // A cluster the store does not know is named.
    let e = s.read(&SecretKey::new("cluster9", "ns", "x")).unwrap_err();
    assert!(
        e.to_string()
            .contains("cluster cluster9: not a configured cluster"),
        "{e}"
    );
}

/// The real store, with something done just before each write (another writer slipping in, an
/// API server killed) and what each write answered recorded.
struct BeforeWrite<'a> {
    inner: &'a KubeStore,
    hook: Box<dyn Fn(&SecretKey) + Send + Sync + 'a>,
    answers: Mutex<Vec<(SecretKey, Result<Version, String>)>>,
}

impl<'a> BeforeWrite<'a> {
    fn new(inner: &'a KubeStore, hook: impl Fn(&SecretKey) + Send + Sync + 'a) -> Self {
        BeforeWrite {
            inner,
            hook: Box::new(hook),
            answers: Mutex::new(Vec::new()),
        }
    }

    fn answers_for(&self, key: &SecretKey) -> Vec<Result<Version, String>> {
        let a = self.answers.lock().unwrap();
        a.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

impl SecretStore for BeforeWrite<'_> {
    fn clusters(&self) -> Result<Vec<String>, StoreError> {
        self.inner.clusters()
    }
    fn get(&self, key: &SecretKey) -> Result<Option<Secret>, StoreError> {
        self.inner.get(key)
    }
    fn write(
        &self,
        key: &SecretKey,
        data: &SecretData,
        expect: &Expect,
    ) -> Result<Version, StoreError> {
        (self.hook)(key);
        let r = self.inner.write(key, data, expect);
        let answer = r.as_ref().map(Clone::clone).map_err(ToString::to_string);
        self.answers.lock().unwrap().push((key.clone(), answer));
        r
    }
}

#[test]
fn a_writer_between_read_and_write_is_detected_and_the_cluster_replanned() {
    let cp = control_plane();
    let s = store(&cp);
    let p = policy();
    let now = start();
    let r = reconcile(&s, &p, "mgmt", &[], &[], now).unwrap();
    assert!(
        r.clusters.iter().all(|(_, o)| *o == Outcome::Created),
        "{r:?}"
    );
    // Another writer edits cluster1's cacerts just before meshca's first write to it.
    let target = cacerts_key("cluster1");
    let meddled = AtomicBool::new(false);
    let m = BeforeWrite::new(&s, |key| {
        if key == &target && !meddled.swap(true, Ordering::SeqCst) {
            cp.kubectl_ok([
                "--context",
                &key.cluster,
                "-n",
                &key.namespace,
                "patch",
                "secret",
                &key.name,
                "-p",
                r#"{"data":{"root-cert.pem":"am9uaw=="}}"#,
            ]);
        }
    });
    let r = reconcile(&m, &p, "mgmt", &[], &["*".into()], now).unwrap();
    assert!(
        r.clusters
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Rotated(_))),
        "{r:?}"
    );
    let answers = m.answers_for(&target);
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(
        answers[0]
            .as_ref()
            .unwrap_err()
            .contains("changed since it was read"),
        "{answers:?}"
    );
    assert!(answers[1].is_ok(), "{answers:?}");
    // Nothing of the other writer's edit survived the re-plan, and the mesh holds together.
    cross_verify(&s, now);
}

#[test]
fn the_manager_on_a_fake_clock_rotates_over_real_api_servers_and_no_bundle_is_ever_torn() {
    let cp = control_plane();
    let s = store(&cp);
    // As `trust run` does: the secrets it reads are watched, and read from memory.
    let scopes: Vec<(String, String)> = [
        ("mgmt", "gloo-mesh"),
        ("cluster1", "istio-system"),
        ("cluster2", "istio-system"),
    ]
    .iter()
    .map(|(c, n)| ((*c).to_owned(), (*n).to_owned()))
    .collect();
    s.watch(&scopes).unwrap();
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("policy.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let p = policy();
    let t0 = start();
    let clock = ManualClock::new(t0);
    let cfg = ManagerConfig {
        mgmt: "mgmt".into(),
        only: Vec::new(),
        resync: Duration::hours(1),
        poll: std::time::Duration::from_millis(20),
    };
    let stop = AtomicBool::new(false);
    // (clock time of the reconcile, its outcomes, what the rotation did)
    type Seen = (OffsetDateTime, Vec<(String, Outcome)>, Vec<String>);
    let seen: Mutex<Vec<Seen>> = Mutex::new(Vec::new());
    let reads = AtomicUsize::new(0);
    let wait_for = |what: &str, f: &dyn Fn(&[Seen]) -> bool| {
        let started = std::time::Instant::now();
        while !f(&seen.lock().unwrap()) {
            assert!(
                started.elapsed().as_secs() < 60,
                "{what}: {:#?}",
                seen.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let reconciled_at = |at: OffsetDateTime| move |v: &[Seen]| v.iter().any(|(t, _, _)| *t == at);
    std::thread::scope(|sc| {
        let manager = sc.spawn(|| {
            let mut m = Manager::new(&s, &clock, &file, cfg).unwrap();
            m.run(&stop, &mut |e| match e {
                Event::Reconciled { at, report, .. } => {
                    seen.lock().unwrap().push((
                        *at,
                        report.clusters.clone(),
                        report.rotation.clone(),
                    ));
                }
                other => panic!("{other:?}"),
            });
        });
        wait_for("created", &|v| {
            v.iter()
                .any(|(_, c, _)| c.iter().all(|(_, o)| *o == Outcome::Created))
        });
        cross_verify(&s, t0);
        let old_root = bundle(&s, "cluster1", t0).roots()[0].clone();
        // A reader of its own reads both clusters' cacerts from the API servers all along.
        let reader = sc.spawn(|| {
            let r = store(&cp);
            while !stop.load(Ordering::SeqCst) {
                for c in CLUSTERS {
                    let now = clock.now();
                    let data = r
                        .read(&cacerts_key(c))
                        .unwrap()
                        .expect("cacerts is never absent");
                    // Loaded as istiod loads it, at the moment it was read.
                    CacertsBundle::from_files(&data, c, now).unwrap_or_else(|e| panic!("{c}: {e}"));
                    reads.fetch_add(1, Ordering::SeqCst);
                }
            }
        });

        // Intermediates fall due at 90% of their 30 days: not at day 26, rotated at day 28.
        let t1 = t0 + Duration::days(26);
        clock.set(t1);
        wait_for("day 26", &reconciled_at(t1));
        let t2 = t0 + Duration::days(28);
        clock.set(t2);
        wait_for("day 28", &reconciled_at(t2));
        {
            let v = seen.lock().unwrap();
            let at = |t| {
                v.iter()
                    .filter(|(a, _, _)| *a == t)
                    .flat_map(|(_, c, _)| c.clone())
                    .collect::<Vec<_>>()
            };
            assert!(at(t1).iter().all(|(_, o)| *o == Outcome::Fresh), "{v:#?}");
            assert!(
                at(t2)
                    .iter()
                    .filter(|(_, o)| matches!(o, Outcome::Rotated(_)))
                    .count()
                    == 2,
                "{v:#?}"
            );
        }
        cross_verify(&s, t2);

        // A root rotation, started as `meshca trust rotate-root` starts it; the manager sees the
        // state change and carries it through its phases as the clock moves.
        let mut now = t2 + Duration::hours(1);
        clock.set(now);
        start_root_rotation(&s, &p, "mgmt", None, now).unwrap();
        let finished = |v: &[Seen]| {
            v.iter()
                .any(|(_, _, r)| r.iter().any(|l| l.starts_with("root rotation finished")))
        };
        let mut steps = 0;
        while !finished(&seen.lock().unwrap()) {
            wait_for("a reconcile at the new time", &reconciled_at(now));
            cross_verify(&s, now);
            steps += 1;
            assert!(steps < 20, "the rotation ends: {:#?}", seen.lock().unwrap());
            now += Duration::hours(25);
            clock.set(now);
        }
        let said: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, _, r)| r.clone())
            .collect();
        for phase in ["phase 2/3 reissue started", "phase 3/3 drop-root started"] {
            assert!(
                said.iter().any(|l| l.starts_with(phase)),
                "{phase}: {said:#?}"
            );
        }
        assert!(steps >= 2, "each phase waited for its time: {said:#?}");
        for c in CLUSTERS {
            let b = bundle(&s, c, now);
            assert_eq!(b.roots().len(), 1, "{c}");
            assert_ne!(b.roots()[0], old_root, "{c}");
        }
        stop.store(true, Ordering::SeqCst);
        manager.join().unwrap();
        reader
            .join()
            .expect("the reader found every bundle whole and valid");
    });
    assert!(
        reads.load(Ordering::SeqCst) > 20,
        "{} reads",
        reads.load(Ordering::SeqCst)
    );
    assert!(s.watches_synced());
}

#[test]
fn an_api_server_killed_mid_reconcile_is_reported_and_converges_after_restart() {
    let cp = Mutex::new(control_plane());
    let s = store(&cp.lock().unwrap());
    let p = policy();
    let now = start();
    reconcile(&s, &p, "mgmt", &[], &[], now).unwrap();
    let before = s.get(&cacerts_key("cluster2")).unwrap().unwrap();
    // cluster2's API server is SIGKILLed just before meshca writes to it.
    let k = BeforeWrite::new(&s, |key| {
        let mut cp = cp.lock().unwrap();
        if key.cluster == "cluster2" && cp.is_running("cluster2") {
            cp.kill("cluster2");
        }
    });
    let started = std::time::Instant::now();
    let r = reconcile(&k, &p, "mgmt", &[], &["*".into()], now).unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let outcome = |c: &str| r.clusters.iter().find(|(n, _)| n == c).unwrap().1.clone();
    assert!(matches!(outcome("cluster1"), Outcome::Rotated(_)), "{r:?}");
    match outcome("cluster2") {
        Outcome::Failed(why) => assert!(
            why.starts_with("cluster cluster2 (https://127.0.0.1:"),
            "{why}"
        ),
        o => panic!("cluster2: {o:?}"),
    }
    cp.lock().unwrap().restart("cluster2");
    // Nothing torn: cluster2 holds exactly what it held, and it still interoperates.
    let after = s.get(&cacerts_key("cluster2")).unwrap().unwrap();
    assert_eq!(after, before);
    cross_verify(&s, now);
    // The next reconcile converges.
    let r = reconcile(&s, &p, "mgmt", &[], &["cluster2".into()], now).unwrap();
    assert!(
        matches!(
            r.clusters.iter().find(|(n, _)| n == "cluster2").unwrap().1,
            Outcome::Rotated(_)
        ),
        "{r:?}"
    );
    cross_verify(&s, now);
}

#[test]
fn a_refusing_and_a_hanging_api_server_are_named_and_the_others_go_on() {
    let cp = control_plane();
    // A listener that takes connections and never answers: a hung API server.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for s in hung.incoming().take(8) {
            open.push(s);
        }
        open
    });
    // A service account without rights: the real API server answers 403 Forbidden.
    cp.kubectl_ok([
        "--context",
        "cluster2",
        "-n",
        "default",
        "create",
        "serviceaccount",
        "nobody",
    ]);
    let token = cp.kubectl_ok([
        "--context",
        "cluster2",
        "-n",
        "default",
        "create",
        "token",
        "nobody",
    ]);
    let kubeconfig = cp.dir().join("kubeconfig-faults");
    std::fs::copy(cp.kubeconfig(), &kubeconfig).unwrap();
    let config = |args: &[&str]| {
        let out = cp
            .kubectl()
            .env("KUBECONFIG", &kubeconfig)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ca = cp.ca_cert().display().to_string();
    config(&[
        "config",
        "set-cluster",
        "hung",
        &format!("--server=https://127.0.0.1:{hung_port}"),
        &format!("--certificate-authority={ca}"),
    ]);
    config(&[
        "config",
        "set-credentials",
        "nobody",
        &format!("--token={}", token.trim()),
    ]);
    config(&[
        "config",
        "set-context",
        "hung",
        "--cluster=hung",
        "--user=nobody",
    ]);
    config(&[
        "config",
        "set-context",
        "forbidden",
        "--cluster=cluster2",
        "--user=nobody",
    ]);
    let sources = ClusterSources {
        kubeconfig: Some(kubeconfig),
        mgmt_context: Some("mgmt".into()),
        clusters: vec![
            ("cluster1".into(), "cluster1".into()),
            ("hung".into(), "hung".into()),
            ("forbidden".into(), "forbidden".into()),
        ],
        ..Default::default()
    };
    let opts = KubeOptions {
        timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let s = KubeStore::connect(&sources, opts).unwrap();
    let started = std::time::Instant::now();
    let r = reconcile(&s, &policy(), "mgmt", &[], &[], start()).unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let outcome = |c: &str| r.clusters.iter().find(|(n, _)| n == c).unwrap().1.clone();
    assert_eq!(outcome("cluster1"), Outcome::Created, "{r:?}");
    match outcome("hung") {
        Outcome::Failed(why) => assert_eq!(
            why,
            format!("cluster hung (https://127.0.0.1:{hung_port}/): no answer within 2s"),
        ),
        o => panic!("hung: {o:?}"),
    }
    match outcome("forbidden") {
        Outcome::Failed(why) => assert!(
            why.contains("secret istio-system/cacerts: HTTP 403 Forbidden: secrets \"cacerts\" is forbidden: User \"system:serviceaccount:default:nobody\" cannot get resource \"secrets\""),
            "{why}"
        ),
        o => panic!("forbidden: {o:?}"),
    }
    drop(s);
    drop(cp);
    drop(held);
}
