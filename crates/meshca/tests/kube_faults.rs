//! Kubernetes faults during a root rotation, through the real `meshca trust run` on a file
//! clock against real kube-apiservers (mgmt, cluster1, cluster2): etcd killed and restarted, a
//! cluster's kube-apiserver killed and restarted, a cluster's `cacerts` edited by hand, and the
//! manager's clock jumping a day forward and back, each in the middle of a phase. At every
//! observation each readable bundle is checked and the simulator's cross-cluster check
//! (`MeshWatch`, a CA keeping its last good bundle as `meshca serve` does) must hold; after the
//! fault the rotation resumes and finishes, every bundle valid under the one new root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::time::{Duration, Instant};

use meshca_bench::crash::{Drill, Manager, StoreKind};
use meshca_trust::RotationPhase;
use meshca_trust::simulate::MeshWatch;
use time::OffsetDateTime;

const MESHCA: &str = env!("CARGO_BIN_EXE_meshca");

/// A root rotation under way on the drill's control plane, observed at every step.
struct Rotation {
    d: Drill,
    m: Option<Manager>,
    watch: MeshWatch,
    steps: usize,
    /// The roots before the rotation.
    first_roots: Vec<Vec<u8>>,
    /// How far the manager's clock is ahead of the world's (behind when negative).
    skew: time::Duration,
    /// Whether every bundle must be valid at the world's time at each observation (not while
    /// the manager's clock is wrong: it then writes bundles valid at its own time, which the
    /// CA servers refuse, keeping their last good ones).
    strict: bool,
    _dir: tempfile::TempDir,
}

impl Rotation {
    /// The mesh made and settled by the manager, then stepped until the root rotation is in
    /// `phase`.
    fn until(phase: RotationPhase) -> Rotation {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Drill::new(Path::new(MESHCA), dir.path(), StoreKind::Kube).unwrap();
        let mut m = d.start().unwrap();
        d.await_settled(&mut m).unwrap();
        let mut r = Rotation {
            d,
            m: Some(m),
            watch: MeshWatch::new(&meshca_bench::crash::CLUSTERS, time::Duration::hours(1))
                .unwrap(),
            steps: 0,
            first_roots: Vec::new(),
            skew: time::Duration::ZERO,
            strict: true,
            _dir: dir,
        };
        r.observe("settled");
        r.first_roots = r.roots();
        while r.phase() != Some(phase) {
            r.step();
        }
        r
    }

    fn manager(&mut self) -> &mut Manager {
        self.m.as_mut().expect("the manager runs")
    }

    fn phase(&self) -> Option<RotationPhase> {
        self.d.phase().unwrap()
    }

    fn observe(&mut self, when: &str) {
        let problems = if self.strict {
            self.d.observe(&mut self.watch, when)
        } else {
            self.d
                .observe_cross_cluster(&mut self.watch, when)
                .into_iter()
                .collect()
        };
        assert!(problems.is_empty(), "{problems:#?}\n{}", self.tail());
    }

    /// The world's time to `to`, the manager's clock to it plus the skew.
    fn tick(&mut self, to: OffsetDateTime) {
        self.d.advance_skewed(to, to + self.skew).unwrap();
    }

    fn tail(&self) -> String {
        let lines = self.m.as_ref().map(Manager::lines).unwrap_or_default();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The clock to the manager's next due moment; the manager settles there.
    fn step(&mut self) {
        self.steps += 1;
        assert!(self.steps < 60, "no end after 60 steps\n{}", self.tail());
        let next = self.d.next_step(self.m.as_ref().unwrap());
        self.tick(next - self.skew);
        self.wait_settled(next, Duration::from_secs(30));
        self.observe(&format!("step {}", self.steps));
    }

    /// After a fault: the clock moves on a second at a time (the manager's retries wait on it)
    /// until the manager settles again, at most `within` of wall time.
    fn recover(&mut self, mark: usize, within: Duration) {
        let began = Instant::now();
        loop {
            let at = self.d.now() + time::Duration::SECOND;
            self.tick(at);
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                if self.settled_since(mark) {
                    self.observe("recovered");
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                began.elapsed() < within,
                "the manager did not settle within {within:?} of the fault\n{}",
                self.tail()
            );
        }
    }

    /// Asserts the manager printed a line starting with `start` after `mark`.
    fn said_since(&self, mark: usize, start: &str) {
        let lines = self.m.as_ref().map(Manager::lines).unwrap_or_default();
        assert!(
            lines[mark.min(lines.len())..]
                .iter()
                .any(|l| l.starts_with(start)),
            "no line {start:?}\n{}",
            self.tail()
        );
    }

    /// How many lines the manager has printed: a mark to look for its reaction after.
    fn mark(&self) -> usize {
        self.m.as_ref().map_or(0, |m| m.lines().len())
    }

    /// Whether the manager's last reconcile after `mark` found every cluster fresh.
    fn settled_since(&self, mark: usize) -> bool {
        let lines = self.m.as_ref().map(Manager::lines).unwrap_or_default();
        lines
            .get(mark..)
            .unwrap_or_default()
            .iter()
            .rev()
            .find(|l| l.starts_with("reconciled at "))
            .is_some_and(|l| {
                l.contains(&format!(
                    ": {} cluster(s) fresh; next check",
                    meshca_bench::crash::CLUSTERS.len()
                ))
            })
    }

    /// Waits until the manager has settled at `manager_at` on its clock.
    fn wait_settled(&mut self, manager_at: OffsetDateTime, within: Duration) {
        let began = Instant::now();
        while !self.manager().settled_at(manager_at) {
            assert!(
                began.elapsed() < within,
                "the manager did not settle at {manager_at} within {within:?}\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Steps until the rotation has finished; every bundle then holds the one new root.
    fn finish(&mut self) {
        while self.phase().is_some() {
            self.step();
        }
        let new = self.roots();
        assert_eq!(new.len(), 1, "one root after the rotation");
        assert!(!self.first_roots.contains(&new[0]), "the root is a new one");
    }

    /// The distinct roots of every cluster's bundle.
    fn roots(&self) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        for b in self.d.bundles() {
            let b = b.unwrap();
            for c in
                meshca_pki::Certificate::all_from_pem(&b["root-cert.pem"], "root-cert.pem").unwrap()
            {
                all.push(c.der().to_vec());
            }
        }
        all.sort();
        all.dedup();
        all
    }

    fn kubectl(&mut self, args: &[&str]) -> String {
        self.d.control_plane().unwrap().kubectl_ok(args)
    }
}

impl Drop for Rotation {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the manager's last lines:\n{}", self.tail());
        }
        if let Some(m) = self.m.take() {
            m.kill();
        }
    }
}

/// Moves the clock to the end of the phase's wait and waits for the manager to start its
/// writes (or for `max` to pass), so the fault lands mid-phase.
fn into_the_phase_writes(r: &mut Rotation, max: Duration) {
    let next = r.d.next_step(r.m.as_ref().unwrap());
    r.d.advance(next).unwrap();
    let began = Instant::now();
    while !r.manager().reconciled_at(next) && began.elapsed() < max {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn etcd_killed_and_restarted_in_the_middle_of_a_phase() {
    let mut r = Rotation::until(RotationPhase::AddRoot);
    let mark = r.mark();
    into_the_phase_writes(&mut r, Duration::from_millis(30));
    r.d.control_plane().unwrap().kill_etcd();
    std::thread::sleep(Duration::from_secs(2));
    r.d.control_plane().unwrap().restart_etcd();
    r.recover(mark, Duration::from_secs(60));
    r.finish();
}

#[test]
fn a_kube_apiserver_killed_and_restarted_in_the_middle_of_a_phase() {
    let mut r = Rotation::until(RotationPhase::Reissue);
    let mark = r.mark();
    into_the_phase_writes(&mut r, Duration::from_millis(30));
    r.d.control_plane().unwrap().kill("cluster2");
    std::thread::sleep(Duration::from_secs(2));
    r.d.control_plane().unwrap().restart("cluster2");
    r.recover(mark, Duration::from_secs(60));
    r.finish();
}

fn patch_cacerts(r: &mut Rotation, cluster: &str, op: &str) {
    r.kubectl(&[
        "--context",
        cluster,
        "-n",
        "istio-system",
        "patch",
        "secret",
        "cacerts",
        "--type=json",
        "-p",
        op,
    ]);
}

#[test]
fn a_cacerts_edited_by_hand_in_the_middle_of_a_phase_is_repaired() {
    let mut r = Rotation::until(RotationPhase::AddRoot);
    // cluster1's CA certificate replaced with cluster2's: it no longer matches its key.
    let other = r.kubectl(&[
        "--context",
        "cluster2",
        "-n",
        "istio-system",
        "get",
        "secret",
        "cacerts",
        "-o",
        "jsonpath={.data.ca-cert\\.pem}",
    ]);
    let mark = r.mark();
    patch_cacerts(
        &mut r,
        "cluster1",
        &format!(r#"[{{"op":"replace","path":"/data/ca-cert.pem","value":"{other}"}}]"#),
    );
    // Meanwhile cluster1's CA keeps its last good bundle: verification holds.
    r.strict = false;
    r.observe("cluster1 edited");
    r.recover(mark, Duration::from_secs(30));
    r.strict = true;
    r.observe("cluster1 repaired");
    r.said_since(mark, "cluster1: intermediate rotated (invalid: ");
    r.step();
    // Then, in the next phase, a key taken out of cluster2's.
    while r.phase() != Some(RotationPhase::Reissue) {
        r.step();
    }
    let mark = r.mark();
    patch_cacerts(
        &mut r,
        "cluster2",
        r#"[{"op":"remove","path":"/data/root-cert.pem"}]"#,
    );
    r.strict = false;
    r.observe("cluster2 edited");
    r.recover(mark, Duration::from_secs(30));
    r.strict = true;
    r.observe("cluster2 repaired");
    r.said_since(mark, "cluster2: intermediate rotated (invalid: ");
    r.finish();
}

#[test]
fn the_managers_clock_jumping_a_day_forward_and_back_in_the_middle_of_a_phase() {
    let mut r = Rotation::until(RotationPhase::AddRoot);
    // The manager's clock alone jumps a day ahead: it writes bundles valid from its own time,
    // which the CA servers refuse until then, keeping their last good ones.
    r.strict = false;
    r.skew = time::Duration::DAY;
    let mark = r.mark();
    r.recover(mark, Duration::from_secs(30));
    // And back: the manager finds bundles not valid yet and makes them good again.
    r.skew = time::Duration::ZERO;
    let mark = r.mark();
    r.recover(mark, Duration::from_secs(30));
    r.strict = true;
    r.observe("clock right again");
    r.finish();
}
