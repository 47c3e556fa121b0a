//! The one rule for whether clusters (or proxies) can talk to each other: two of them
//! interoperate when each one's chain verifies against the other's root bundle. That is what
//! their workloads do at every mTLS handshake, so it holds in the middle of a root rotation (both
//! bundles hold the old and the new root, one cluster already signs under the new one) where a
//! byte-for-byte comparison of root bundles says no. `meshca verify roots`, `meshca verify
//! envoy-secrets` and `meshca check` all judge by [`interop`].

use meshca_pki::describe::hex_colons;
use meshca_pki::{Certificate, PkiError, VerifiedPath, verify_path};
use time::OffsetDateTime;

/// What one cluster presents to its peers, and what it trusts from them.
#[derive(Clone, Copy, Debug)]
pub struct ClusterTrust<'a> {
    /// How the cluster is shown: its bundle folder, or the file of a proxy's dump.
    pub name: &'a str,
    /// The first certificate its workloads present above nothing they get from a peer: the
    /// signing CA of a bundle (standing in for every leaf it signs), or a proxy's own leaf.
    pub start: &'a Certificate,
    /// The further certificates its workloads send (intermediates). It may hold the signing
    /// certificate again and may end with the root, as istio-agent's `cert-chain.pem` does: a
    /// root sent by a peer is never trusted for being sent.
    pub chain: &'a [Certificate],
    /// Its root bundle: what its workloads verify peers' chains against.
    pub roots: &'a [Certificate],
}

/// Why one cluster's workloads are not trusted by another's.
#[derive(Debug)]
#[non_exhaustive]
pub enum Refusal {
    /// The peer's root bundle lacks the root the chain leads to in its own bundle.
    UntrustedRoot {
        /// The root the chain leads to.
        root: Certificate,
    },
    /// The chain does not verify against the peer's roots for another reason (or leads to no
    /// root of its own bundle, so there is no root to name).
    DoesNotVerify(PkiError),
}

/// One direction of a pair: whether `to`'s workloads accept `from`'s.
#[derive(Debug)]
pub struct Direction {
    /// Whose chain is presented.
    pub from: String,
    /// Whose root bundle judges it.
    pub to: String,
    /// The verified path (ending at a root of `to`), or why there is none.
    pub verdict: Result<VerifiedPath, Refusal>,
}

impl Direction {
    /// Whether `from`'s chain verifies against `to`'s roots.
    pub fn ok(&self) -> bool {
        self.verdict.is_ok()
    }

    /// One line: `c1 → c2: ...`.
    pub fn describe(&self) -> String {
        let (from, to) = (&self.from, &self.to);
        match &self.verdict {
            Ok(path) => format!("{from} → {to}: verifies to root {}", shown(path.root())),
            Err(Refusal::UntrustedRoot { root }) => {
                format!(
                    "{from} → {to}: {to} does not trust {from}'s root {}",
                    shown(root)
                )
            }
            Err(Refusal::DoesNotVerify(e)) => {
                format!("{from} → {to}: {from}'s chain does not verify against {to}'s roots: {e}")
            }
        }
    }
}

/// Both directions of a pair.
#[derive(Debug)]
pub struct Interop {
    /// `a`'s chain against `b`'s roots.
    pub there: Direction,
    /// `b`'s chain against `a`'s roots.
    pub back: Direction,
}

impl Interop {
    /// Whether workloads of both clusters accept each other.
    pub fn ok(&self) -> bool {
        self.there.ok() && self.back.ok()
    }

    /// The directions that fail.
    pub fn failures(&self) -> impl Iterator<Item = &Direction> {
        [&self.there, &self.back].into_iter().filter(|d| !d.ok())
    }
}

/// The rule: `a` and `b` interoperate at `now` when `a`'s chain verifies against `b`'s root
/// bundle and `b`'s against `a`'s.
pub fn interop(a: &ClusterTrust<'_>, b: &ClusterTrust<'_>, now: OffsetDateTime) -> Interop {
    Interop {
        there: direction(a, b, now),
        back: direction(b, a, now),
    }
}

fn direction(from: &ClusterTrust<'_>, to: &ClusterTrust<'_>, now: OffsetDateTime) -> Direction {
    let verdict =
        verify_path(from.start, from.chain, to.roots, now).map_err(|e| {
            match verify_path(from.start, from.chain, from.roots, now) {
                Ok(own) if !to.roots.contains(own.root()) => Refusal::UntrustedRoot {
                    root: own.root().clone(),
                },
                _ => Refusal::DoesNotVerify(e),
            }
        });
    Direction {
        from: from.name.to_owned(),
        to: to.name.to_owned(),
        verdict,
    }
}

/// The rule applied to every pair of a set of clusters.
#[derive(Debug)]
pub struct MeshInterop {
    /// Every pair of the clusters compared, in the order given.
    pub pairs: Vec<Interop>,
    /// The clusters compared, and the root of its own bundle each one's chain leads to.
    pub compared: Vec<(String, Certificate)>,
    /// The clusters left out: their chain does not verify against their own root bundle (a
    /// failure of its own, reported where that cluster is checked).
    pub left_out: Vec<(String, PkiError)>,
}

/// Applies [`interop`] to every pair of `clusters` whose chain verifies against its own roots.
pub fn mesh_interop(clusters: &[ClusterTrust<'_>], now: OffsetDateTime) -> MeshInterop {
    let mut compared = Vec::new();
    let mut sides = Vec::new();
    let mut left_out = Vec::new();
    for c in clusters {
        match verify_path(c.start, c.chain, c.roots, now) {
            Ok(path) => {
                compared.push((c.name.to_owned(), path.root().clone()));
                sides.push(c);
            }
            Err(e) => left_out.push((c.name.to_owned(), e)),
        }
    }
    let mut pairs = Vec::new();
    for (i, a) in sides.iter().enumerate() {
        for b in &sides[i + 1..] {
            pairs.push(interop(a, b, now));
        }
    }
    MeshInterop {
        pairs,
        compared,
        left_out,
    }
}

impl MeshInterop {
    /// Whether some direction between compared clusters fails.
    pub fn refused(&self) -> bool {
        self.pairs.iter().any(|p| !p.ok())
    }

    /// Whether some direction fails, or nothing could be compared at all.
    pub fn failed(&self) -> bool {
        self.compared.is_empty() || self.refused()
    }

    /// The clusters in the most failing pairs, unless that is every compared cluster (one
    /// against one, nobody is to blame).
    pub fn odd_ones_out(&self) -> Vec<&str> {
        let count = |name: &str| {
            self.pairs
                .iter()
                .filter(|p| !p.ok() && (p.there.from == name || p.there.to == name))
                .count()
        };
        let most = self
            .compared
            .iter()
            .map(|(n, _)| count(n))
            .max()
            .unwrap_or(0);
        let odd: Vec<&str> = self
            .compared
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| most > 0 && count(n) == most)
            .collect();
        if odd.len() == self.compared.len() {
            Vec::new()
        } else {
            odd
        }
    }

    /// One line: the roots every cluster trusts, or the failing directions and whom they
    /// involve; then the clusters left out. `noun` counts the clusters (`bundle`, `proxy`).
    pub fn describe(&self, noun: (&str, &str)) -> String {
        let counted = |n: usize| format!("{n} {}", if n == 1 { noun.0 } else { noun.1 });
        let mut text = if self.compared.is_empty() {
            format!("nothing to compare: no {} leads to its own root", noun.0)
        } else if self.refused() {
            let failures: Vec<String> = self
                .pairs
                .iter()
                .flat_map(Interop::failures)
                .map(Direction::describe)
                .collect();
            match self.odd_ones_out().as_slice() {
                [] => failures.join("; "),
                [one] => format!("{one} is the odd one out: {}", failures.join("; ")),
                many => format!(
                    "{} are the odd ones out: {}",
                    many.join(", "),
                    failures.join("; ")
                ),
            }
        } else {
            let mut anchors: Vec<&Certificate> = Vec::new();
            for (_, a) in &self.compared {
                if !anchors.contains(&a) {
                    anchors.push(a);
                }
            }
            let roots: Vec<String> = anchors.iter().map(|a| shown(a)).collect();
            match roots.as_slice() {
                [one] => {
                    let n = self.compared.len();
                    let verb = if n == 1 { "chains" } else { "chain" };
                    format!("{} {verb} to root {one}", counted(n))
                }
                _ => format!(
                    "{} chain to roots that every one of them trusts: {}",
                    counted(self.compared.len()),
                    roots.join(", ")
                ),
            }
        };
        if !self.left_out.is_empty() {
            let names: Vec<&str> = self.left_out.iter().map(|(n, _)| n.as_str()).collect();
            text.push_str(&format!(
                "; not compared: {} (chain does not verify against its own roots)",
                names.join(", ")
            ));
        }
        text
    }
}

/// `"O=Test, CN=Root CA" (SHA-256 12:34:...)`.
fn shown(c: &Certificate) -> String {
    format!(
        "\"{}\" (SHA-256 {})",
        c.subject(),
        hex_colons(&c.sha256_fingerprint()[..8])
    )
}

#[cfg(test)]
mod tests {
    use meshca_pki::{CaProfile, CaSigner, KeyType, PrivateKey, Subject};
    use time::Duration;
    use time::macros::datetime;

    use super::*;

    const T0: OffsetDateTime = datetime!(2030-01-01 0:00 UTC);

    fn profile(cn: &str) -> CaProfile {
        CaProfile {
            subject: Subject {
                organization: Some("Test".to_owned()),
                common_name: Some(cn.to_owned()),
                locality: None,
            },
            not_before: T0,
            not_after: T0 + Duration::days(365),
            path_len: None,
            dns_names: Vec::new(),
        }
    }

    fn root(cn: &str) -> CaSigner {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let cert = profile(cn).self_signed(&key, "root-cert.pem").unwrap();
        CaSigner::new(cert, key, "root-key.pem").unwrap()
    }

    fn intermediate(root: &CaSigner) -> Certificate {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        root.issue_ca(&profile("Intermediate CA"), &key, "ca-cert.pem")
            .unwrap()
    }

    /// A cluster signing with `ca`, whose chain ends with the root it was issued under (as
    /// istio-agent's `cert-chain.pem` does), trusting `roots`.
    struct Cluster {
        name: &'static str,
        ca: Certificate,
        chain: Vec<Certificate>,
        roots: Vec<Certificate>,
    }

    impl Cluster {
        fn new(name: &'static str, issuer: &CaSigner, roots: &[&CaSigner]) -> Self {
            let ca = intermediate(issuer);
            Cluster {
                name,
                chain: vec![ca.clone(), issuer.cert().clone()],
                ca,
                roots: roots.iter().map(|r| r.cert().clone()).collect(),
            }
        }

        fn trust(&self) -> ClusterTrust<'_> {
            ClusterTrust {
                name: self.name,
                start: &self.ca,
                chain: &self.chain,
                roots: &self.roots,
            }
        }
    }

    fn now() -> OffsetDateTime {
        T0 + Duration::days(1)
    }

    #[test]
    fn identical_roots_interoperate() {
        let r = root("Root CA");
        let (a, b) = (Cluster::new("a", &r, &[&r]), Cluster::new("b", &r, &[&r]));
        let i = interop(&a.trust(), &b.trust(), now());
        assert!(i.ok(), "{} / {}", i.there.describe(), i.back.describe());
        assert!(
            i.there
                .describe()
                .starts_with("a → b: verifies to root \"O=Test, CN=Root CA\"")
        );
    }

    #[test]
    fn mid_rotation_bundles_interoperate_both_ways() {
        let (old, new) = (root("Old Root"), root("New Root"));
        // a still signs under the old root, b already under the new one; both trust both.
        let a = Cluster::new("a", &old, &[&old, &new]);
        let b = Cluster::new("b", &new, &[&new, &old]);
        let i = interop(&a.trust(), &b.trust(), now());
        assert!(i.ok(), "{} / {}", i.there.describe(), i.back.describe());
        let root_of = |d: &Direction| d.verdict.as_ref().unwrap().root().subject().to_owned();
        assert_eq!(root_of(&i.there), "O=Test, CN=Old Root");
        assert_eq!(root_of(&i.back), "O=Test, CN=New Root");

        // The root bundles differ byte for byte, and still the mesh is whole.
        let mesh = mesh_interop(&[a.trust(), b.trust()], now());
        assert!(!mesh.failed());
        assert!(
            mesh.describe(("bundle", "bundles"))
                .starts_with("2 bundles chain to roots that every one of them trusts"),
        );
    }

    #[test]
    fn a_cluster_that_has_not_added_the_new_root_fails_one_way() {
        let (old, new) = (root("Old Root"), root("New Root"));
        let a = Cluster::new("a", &old, &[&old]);
        let b = Cluster::new("b", &new, &[&new, &old]);
        let i = interop(&a.trust(), &b.trust(), now());
        assert!(i.there.ok());
        assert!(!i.back.ok());
        assert!(matches!(
            &i.back.verdict,
            Err(Refusal::UntrustedRoot { root }) if root.subject() == "O=Test, CN=New Root"
        ));
        let failing: Vec<String> = i.failures().map(Direction::describe).collect();
        assert_eq!(failing.len(), 1);
        assert!(
            failing[0].starts_with("b → a: a does not trust b's root \"O=Test, CN=New Root\""),
            "{}",
            failing[0]
        );
    }

    #[test]
    fn disjoint_roots_fail_both_ways_and_the_odd_one_is_named() {
        let (r, other) = (root("Root CA"), root("Other Root"));
        let a = Cluster::new("a", &r, &[&r]);
        let b = Cluster::new("b", &r, &[&r]);
        let c = Cluster::new("c", &other, &[&other]);
        let i = interop(&a.trust(), &c.trust(), now());
        assert!(!i.there.ok() && !i.back.ok());

        // One against one: nobody is to blame.
        let pair = mesh_interop(&[a.trust(), c.trust()], now());
        assert!(pair.failed());
        assert!(pair.odd_ones_out().is_empty());
        assert!(
            pair.describe(("bundle", "bundles"))
                .starts_with("a → c: c does not trust a's root")
        );

        let mesh = mesh_interop(&[a.trust(), c.trust(), b.trust()], now());
        assert_eq!(mesh.odd_ones_out(), ["c"]);
        let text = mesh.describe(("bundle", "bundles"));
        assert!(text.starts_with("c is the odd one out: "), "{text}");
        assert!(!text.contains("a → b") && !text.contains("b → a"), "{text}");
    }

    #[test]
    fn a_chain_that_does_not_verify_against_its_own_roots_is_left_out() {
        let (r, other) = (root("Root CA"), root("Other Root"));
        let a = Cluster::new("a", &r, &[&r]);
        // b's intermediate comes from r, but b trusts only another root.
        let b = Cluster::new("b", &r, &[&other]);
        let mesh = mesh_interop(&[a.trust(), b.trust()], now());
        assert_eq!(mesh.left_out.len(), 1);
        assert!(!mesh.refused());
        assert!(
            mesh.describe(("bundle", "bundles"))
                .ends_with("not compared: b (chain does not verify against its own roots)")
        );
    }
}
