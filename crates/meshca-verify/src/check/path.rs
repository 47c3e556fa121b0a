//! Checks 4, 8 and 9: the path from the signing certificate to a root, as its file lists it
//! and as the signatures make it; no certificate on it outlives the root; and it can sign the
//! workload certificates Go verifiers accept.

use meshca_pki::Certificate;
use meshca_pki::describe::describe_certificate;
use meshca_pki::error::show_time;
use time::OffsetDateTime;

use super::{CheckName, Finding, counted};

/// Check 4. `listed` is the chain as its file gives it.
pub(super) fn chain_order(
    listed: &[Certificate],
    list_file: &str,
    signing: &Certificate,
    roots: &[Certificate],
    roots_file: &str,
) -> Finding {
    let fail = |detail: String| Finding::fail(CheckName::ChainOrder, detail);
    let (Some(first), Some(top)) = (listed.first(), listed.last()) else {
        return fail(format!("{list_file} holds no certificate"));
    };
    if first != signing {
        return fail(format!(
            "{list_file} starts with \"{}\", not with the signing certificate \"{}\"",
            first.subject(),
            signing.subject()
        ));
    }
    for pair in listed.windows(2) {
        if let Err(e) = pair[0].check_signed_by(&pair[1]) {
            return fail(format!("out of order or incomplete: {e}"));
        }
    }
    let head = format!(
        "{list_file}: {}, the signing certificate first, each signed by the next",
        counted(listed.len(), "certificate")
    );
    if roots.contains(top) {
        return Finding::pass(
            CheckName::ChainOrder,
            format!("{head}, ending at root \"{}\"", top.subject()),
        );
    }
    if top.is_self_issued() {
        return fail(format!(
            "{list_file} ends at \"{}\", a root that is not in {roots_file}",
            top.subject()
        ));
    }
    match roots.iter().find(|r| top.check_signed_by(r).is_ok()) {
        Some(root) => Finding::pass(
            CheckName::ChainOrder,
            format!(
                "{head}, leading to root \"{}\" of {roots_file}",
                root.subject()
            ),
        ),
        None => fail(format!(
            "{list_file} ends at \"{}\" (issued by \"{}\"), which no root of {roots_file} signed",
            top.subject(),
            top.issuer()
        )),
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
        Finding::fail(
            CheckName::OutlivesRoot,
            format!(
                "{}: its chain stops verifying when the root expires",
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
    // must allow the CAs between it and that leaf.
    for (i, issuer) in path.iter().enumerate().skip(1) {
        let Some(limit) = issuer.path_len() else {
            continue;
        };
        let between = path[..i].iter().filter(|c| !c.is_self_issued()).count();
        if between > limit as usize {
            problems.push(format!(
                "{} (\"{}\") has pathlen:{limit} but {between} CA(s) would sit between it and \
                 a workload certificate",
                issuer.origin(),
                issuer.subject()
            ));
        }
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
