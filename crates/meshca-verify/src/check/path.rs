//! Checks 4, 8 and 9: the path from the signing certificate to a root, as its file lists it
//! and as the signatures make it; no certificate on it outlives the root; and it can sign the
//! workload certificates Go verifiers accept.

use meshca_pki::describe::describe_certificate;
use meshca_pki::error::show_time;
use meshca_pki::{Certificate, ChainEnd, check_listed_chain, check_room_for_leaf};
use time::OffsetDateTime;

use super::{CheckName, Finding, counted};

/// Check 4. `listed` is the chain as its file gives it. The rule is meshca-pki's, the one
/// `meshca serve` refuses a bundle by.
pub(super) fn chain_order(
    listed: &[Certificate],
    list_file: &str,
    signing: &Certificate,
    roots: &[Certificate],
    roots_file: &str,
) -> Finding {
    let head = format!(
        "{list_file}: {}, the signing certificate first, each signed by the next",
        counted(listed.len(), "certificate")
    );
    match check_listed_chain(listed, list_file, signing, roots, roots_file) {
        Ok(ChainEnd::AtRoot(root)) => Finding::pass(
            CheckName::ChainOrder,
            format!("{head}, ending at root \"{}\"", root.subject()),
        ),
        Ok(ChainEnd::BelowRoot(root)) => Finding::pass(
            CheckName::ChainOrder,
            format!(
                "{head}, leading to root \"{}\" of {roots_file}",
                root.subject()
            ),
        ),
        Err(e) => Finding::fail(CheckName::ChainOrder, e.to_string()),
    }
}

/// The path the signatures alone make from `start` towards a root, ignoring validity and
/// constraints: what the later checks look at when verification failed.
pub(super) fn signature_path(
    start: &Certificate,
    intermediates: &[Certificate],
    roots: &[Certificate],
) -> Vec<Certificate> {
    // As long as the path verify_path tries; also bounds the work on hostile input.
    const MAX_DEPTH: usize = 8;
    let mut path = vec![start.clone()];
    while path.len() <= MAX_DEPTH {
        let child = &path[path.len() - 1];
        if roots.contains(child) {
            break;
        }
        let issuer = roots
            .iter()
            .chain(intermediates)
            .find(|c| !path.contains(c) && child.check_signed_by(c).is_ok());
        match issuer {
            Some(c) => path.push(c.clone()),
            None => break,
        }
    }
    path
}

/// Check 8.
pub(super) fn outlives_root(path: &[Certificate], root: &Certificate) -> Finding {
    let over: Vec<String> = path
        .iter()
        .filter(|c| *c != root && c.not_after() > root.not_after())
        .map(|c| {
            format!(
                "{} is valid until {}, after its root \"{}\" expires at {}",
                c.origin(),
                show_time(c.not_after()),
                root.subject(),
                show_time(root.not_after())
            )
        })
        .collect();
    if over.is_empty() {
        Finding::pass(
            CheckName::OutlivesRoot,
            format!(
                "every certificate below root \"{}\" ends by {}",
                root.subject(),
                show_time(root.not_after())
            ),
        )
    } else {
        // A warning, not a failure: the chain verifies until the root's end, so this is a
        // planning problem (the certificate's own notAfter overstates its life), and meshca's
        // own writers shorten or refuse such a certificate rather than make one.
        Finding::warn(
            CheckName::OutlivesRoot,
            format!(
                "{}: its chain stops verifying when the root expires, whatever its own dates say",
                over.join("; ")
            ),
        )
    }
}

/// Check 9: what a Go verifier (istiod at load, and every workload checking a peer) demands
/// of the CA that signs workload certificates, and of the path above it.
pub(super) fn fit_for_signing(
    signing: &Certificate,
    path: &[Certificate],
    now: OffsetDateTime,
) -> Finding {
    let mut problems = Vec::new();
    let info = describe_certificate(signing, 0, now);
    if !signing.is_ca() {
        problems.push(format!(
            "{} is not a CA (basicConstraints lacks CA:TRUE)",
            signing.origin()
        ));
    } else if !signing.can_sign_certificates() {
        problems.push(format!(
            "{}'s keyUsage ({}) lacks keyCertSign",
            signing.origin(),
            info.key_usage.join(", ")
        ));
    }
    for c in path {
        // The one rule, shared with `meshca serve`'s refusal (meshca-pki).
        if !c.allows_server_auth() {
            problems.push(format!(
                "{} restricts extendedKeyUsage to {} without serverAuth, which Go verifiers \
                 (istiod) reject",
                c.origin(),
                describe_certificate(c, 0, now)
                    .extended_key_usage
                    .join(", ")
            ));
        }
    }
    // A workload certificate adds one level below the signing certificate: every CA above it
    // must allow the CAs between it and that leaf (the rule `meshca serve` refuses by).
    if let Err(e) = check_room_for_leaf(path) {
        problems.push(e.to_string());
    }
    if !problems.is_empty() {
        return Finding::fail(CheckName::FitForSigning, problems.join("; "));
    }
    let pathlen = signing
        .path_len()
        .map_or_else(|| "no pathlen".to_owned(), |n| format!("pathlen:{n}"));
    let ku = if info.key_usage.is_empty() {
        "no keyUsage".to_owned()
    } else {
        "keyUsage includes keyCertSign".to_owned()
    };
    let eku = if info.extended_key_usage.is_empty() {
        "no extendedKeyUsage"
    } else {
        "extendedKeyUsage allows serverAuth"
    };
    Finding::pass(
        CheckName::FitForSigning,
        format!("CA:TRUE, {pathlen}, {ku}, {eku}"),
    )
}
