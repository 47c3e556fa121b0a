//! The verification steps operators run by hand, as code: a workload's chain against the
//! `cacerts` bundle it should come from (`openssl x509 | diff` and `openssl verify`), one root
//! across clusters, and the secrets of Envoy dumps (`istioctl proxy-config secret`, `/config_dump`).
//!
//! Sans-IO: callers hand in file contents and `now`; results are [`Report`]s of named checks.

#![forbid(unsafe_code)]

pub mod check;
mod envoy;
pub mod interop;

pub use envoy::ProxySecrets;

use std::collections::BTreeMap;

use interop::ClusterTrust;
use meshca_pki::{Certificate, PkiError, verify_path};
use serde::Serialize;
use time::OffsetDateTime;

/// One check and its outcome.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// Why, in one line.
    pub detail: String,
}

/// The checks of one verification.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The checks in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, name: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        });
    }

    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// Why a verification could not run at all (as opposed to a check that failed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A file did not parse.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A bundle lacks the file a check needs.
    #[error("{dir}: neither {a} nor {b} found")]
    MissingFile {
        /// the bundle folder
        dir: String,
        /// the Istio layout's file
        a: &'static str,
        /// the tls.crt layout's file
        b: &'static str,
    },
    /// An Envoy secret dump is not what `istioctl proxy-config secret -o json` prints.
    #[error("{origin}: {reason}")]
    BadDump {
        /// the file
        origin: String,
        /// what is wrong
        reason: String,
    },
}

/// The root and signing certificates of a bundle folder, in either layout.
#[derive(Clone, Debug)]
pub struct BundleCerts {
    /// Where the bundle is.
    pub dir: String,
    /// The roots of `root-cert.pem` (or `ca.crt`).
    pub roots: Vec<Certificate>,
    /// The signing certificate, `ca-cert.pem` (or the first of `tls.crt`).
    pub ca: Certificate,
    /// Further certificates of `cert-chain.pem` (or `tls.crt`), usable as intermediates.
    pub chain: Vec<Certificate>,
}

impl BundleCerts {
    /// Reads the certificates of a bundle from its files (name → contents).
    pub fn from_files(dir: &str, files: &BTreeMap<String, Vec<u8>>) -> Result<Self, VerifyError> {
        let pick =
            |a: &'static str, b: &'static str| -> Result<(&'static str, &Vec<u8>), VerifyError> {
                files
                    .get(a)
                    .map(|v| (a, v))
                    .or_else(|| files.get(b).map(|v| (b, v)))
                    .ok_or_else(|| VerifyError::MissingFile {
                        dir: dir.to_owned(),
                        a,
                        b,
                    })
            };
        let at = |name: &str| format!("{}/{name}", dir.trim_end_matches('/'));
        let (rname, rbytes) = pick("root-cert.pem", "ca.crt")?;
        let (cname, cbytes) = pick("ca-cert.pem", "tls.crt")?;
        let roots = Certificate::all_from_pem(rbytes, &at(rname))?;
        let mut cas = Certificate::all_from_pem(cbytes, &at(cname))?;
        let ca = cas.remove(0).with_origin(&at(cname));
        let mut chain = cas;
        if let Some(bytes) = files.get("cert-chain.pem") {
            chain.extend(Certificate::all_from_pem(bytes, &at("cert-chain.pem"))?);
        }
        Ok(BundleCerts {
            dir: dir.to_owned(),
            roots,
            ca,
            chain,
        })
    }
}

/// Seed steps 3 to 5 for one presented chain (leaf first): its root is identical to the
/// bundle's root, its CA certificate identical to the bundle's, and it verifies leaf to root.
pub fn chain_against_bundle(
    bundle: &BundleCerts,
    chain: &[Certificate],
    now: OffsetDateTime,
) -> Report {
    let mut r = Report::default();
    let Some(leaf) = chain.first() else {
        r.push("chain is not empty", false, "no certificate presented");
        return r;
    };
    let root_name = format!("root is identical to {}", bundle.roots[0].origin());
    match chain
        .iter()
        .skip(1)
        .rev()
        .find(|c| c.is_ca() && c.is_self_issued())
    {
        Some(root) if bundle.roots.contains(root) => r.push(
            root_name,
            true,
            format!("{} (SHA-256 {})", root.subject(), short_fp(root)),
        ),
        Some(root) => r.push(
            root_name,
            false,
            format!(
                "the chain ends at \"{}\" (SHA-256 {}), which is not in the bundle",
                root.subject(),
                short_fp(root)
            ),
        ),
        None => {
            // Istio's proxies send the root; other endpoints may stop at the intermediate. Then
            // the root is the one the chain leads to.
            let inter: Vec<Certificate> = chain[1..].to_vec();
            match verify_path(leaf, &inter, &bundle.roots, now) {
                Ok(path) => r.push(
                    root_name,
                    true,
                    format!(
                        "{} (not presented; the chain leads to it)",
                        path.root().subject()
                    ),
                ),
                Err(_) => r.push(
                    root_name,
                    false,
                    "the chain does not include a root, nor leads to the bundle's",
                ),
            }
        }
    }
    let ca_name = format!("CA certificate is identical to {}", bundle.ca.origin());
    match chain.get(1) {
        Some(c) if c == &bundle.ca => r.push(ca_name, true, c.subject().to_owned()),
        Some(c) => r.push(
            ca_name,
            false,
            format!(
                "the chain's CA is \"{}\" (SHA-256 {})",
                c.subject(),
                short_fp(c)
            ),
        ),
        None => r.push(ca_name, false, "the chain holds only the leaf"),
    }
    let intermediates: Vec<Certificate> = chain[1..]
        .iter()
        .filter(|c| !bundle.roots.contains(c))
        .cloned()
        .collect();
    match verify_path(leaf, &intermediates, &bundle.roots, now) {
        Ok(path) => r.push(
            "chain verifies from leaf to root",
            true,
            format!(
                "{} certificates, valid until {}",
                path.certs().len(),
                meshca_pki::error::show_time(path.not_after())
            ),
        ),
        Err(e) => r.push("chain verifies from leaf to root", false, e.to_string()),
    }
    r
}

/// Seed 001, step 2: each cluster bundle's intermediate chains to its own root, and the
/// bundles interoperate: each one's chain verifies against every other's root bundle (the
/// [`interop`] rule, which `meshca check` applies too). Identical root bundles pass; so do
/// bundles in the middle of a root rotation; the clusters in most failing pairs are named.
pub fn same_roots(bundles: &[BundleCerts], now: OffsetDateTime) -> Report {
    let mut r = Report::default();
    for b in bundles {
        let name = format!("{}: intermediate chains to its root", b.dir);
        match verify_path(&b.ca, &b.chain, &b.roots, now) {
            Ok(_) => r.push(name, true, b.ca.subject().to_owned()),
            Err(e) => r.push(name, false, e.to_string()),
        }
    }
    let sides: Vec<ClusterTrust<'_>> = bundles
        .iter()
        .map(|b| ClusterTrust {
            name: &b.dir,
            start: &b.ca,
            chain: &b.chain,
            roots: &b.roots,
        })
        .collect();
    let mesh = interop::mesh_interop(&sides, now);
    r.push(
        format!("all {} bundles trust each other's chains", bundles.len()),
        !mesh.refused(),
        mesh.describe(("bundle", "bundles")),
    );
    r
}

/// Seed 001, step 3: each proxy's certificate verifies against its own ROOTCA, and the proxies
/// interoperate by the [`interop`] rule (each chain verifies against every other ROOTCA).
pub fn envoy_secrets(proxies: &[ProxySecrets], now: OffsetDateTime) -> Report {
    let mut r = Report::default();
    for p in proxies {
        let name = format!("{}: certificate verifies against its ROOTCA", p.origin);
        match p.chain.first() {
            None => r.push(name, false, "no certificate in the default secret"),
            Some(leaf) => match verify_path(leaf, &p.chain[1..], &p.roots, now) {
                Ok(path) => {
                    let mut detail = leaf
                        .uris()
                        .first()
                        .cloned()
                        .unwrap_or_else(|| path.root().subject().to_owned());
                    if !p.warming.is_empty() {
                        // Envoy serves the active secrets until the warming ones are ready.
                        detail.push_str(&format!(
                            " (still warming, not used: {})",
                            p.warming.join(", ")
                        ));
                    }
                    r.push(name, true, detail)
                }
                Err(e) => r.push(name, false, e.to_string()),
            },
        }
    }
    let sides: Vec<ClusterTrust<'_>> = proxies
        .iter()
        .filter_map(|p| {
            let (leaf, chain) = p.chain.split_first()?;
            Some(ClusterTrust {
                name: &p.origin,
                start: leaf,
                chain,
                roots: &p.roots,
            })
        })
        .collect();
    let mesh = interop::mesh_interop(&sides, now);
    r.push(
        format!("all {} proxies trust each other's chains", proxies.len()),
        !mesh.refused(),
        mesh.describe(("proxy", "proxies")),
    );
    r
}

fn short_fp(c: &Certificate) -> String {
    meshca_pki::describe::hex_colons(&c.sha256_fingerprint()[..8])
}
