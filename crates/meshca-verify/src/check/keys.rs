//! Checks 3, 10 and 11: the key belongs to the signing certificate, no weak signature digest
//! below the root, and every key is strong enough.

use meshca_pki::Certificate;
use meshca_pki::describe::{KeyInfo, describe_certificate};
use time::OffsetDateTime;

use super::layout::LayoutFiles;
use super::material::{KeyMaterial, RsaPublic};
use super::{CheckName, Finding, Level, counted};

/// Check 3.
pub(super) fn key_match(signing: &Certificate, key: &KeyMaterial, names: &LayoutFiles) -> Finding {
    let matches = match key {
        KeyMaterial::Usable(k) => signing.matches_key(k),
        KeyMaterial::OtherRsa(public) => {
            RsaPublic::of_certificate(signing).is_some_and(|c| &c == public)
        }
    };
    if matches {
        Finding::pass(
            CheckName::KeyMatch,
            format!("{} is the key of {}", names.key, names.signing),
        )
    } else {
        Finding::fail(
            CheckName::KeyMatch,
            format!(
                "{} is not the key of {} (\"{}\"): istiod refuses the bundle",
                names.key,
                names.signing,
                signing.subject()
            ),
        )
    }
}

/// Check 10. A root's own signature is never checked, so roots (and self-signed certificates)
/// are left out.
pub(super) fn signature_digest(certs: &[Certificate], roots: &[Certificate]) -> Finding {
    let below: Vec<&Certificate> = certs
        .iter()
        .filter(|c| !roots.contains(c) && !c.is_self_issued())
        .collect();
    let weak: Vec<String> = below
        .iter()
        .filter(|c| c.has_weak_signature())
        .map(|c| format!("{} is signed with {}", c.origin(), c.signature_algorithm()))
        .collect();
    if !weak.is_empty() {
        return Finding::fail(
            CheckName::SignatureDigest,
            format!("{}: Go verifiers (istiod) reject it", weak.join("; ")),
        );
    }
    let mut algorithms: Vec<&str> = below.iter().map(|c| c.signature_algorithm()).collect();
    algorithms.sort_unstable();
    algorithms.dedup();
    Finding::pass(
        CheckName::SignatureDigest,
        if below.is_empty() {
            "no certificate below the root".to_owned()
        } else {
            format!(
                "{} below the root, signed with {}",
                counted(below.len(), "certificate"),
                algorithms.join(", ")
            )
        },
    )
}

/// Check 11, on the public key of every certificate.
pub(super) fn key_strength(certs: &[Certificate], now: OffsetDateTime) -> Finding {
    let mut level = Level::Pass;
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for c in certs {
        let key = describe_certificate(c, 0, now).key;
        let (l, text) = judge_key(&key);
        let line = format!("{}: {text}", c.origin());
        if l == Level::Pass {
            good.push(line);
        } else {
            bad.push(line);
        }
        level = level.max(l);
    }
    let detail = if bad.is_empty() {
        good.join(", ")
    } else {
        bad.join("; ")
    };
    Finding::new(CheckName::KeyStrength, level, detail)
}

pub(super) fn judge_key(key: &KeyInfo) -> (Level, String) {
    match (key.algorithm.as_str(), key.curve.as_deref()) {
        ("RSA", _) if key.bits < 2048 => (
            Level::Fail,
            format!("RSA-{} is too weak (at least 2048 bits)", key.bits),
        ),
        ("RSA", _) => (Level::Pass, format!("RSA-{}", key.bits)),
        ("EC", Some(curve @ ("P-256" | "P-384" | "P-521"))) => {
            (Level::Pass, format!("ECDSA {curve}"))
        }
        ("EC", curve) => (
            Level::Fail,
            format!(
                "EC curve {} is not one Go verifiers support (P-256, P-384, P-521)",
                curve.unwrap_or("unnamed")
            ),
        ),
        ("Ed25519", _) => (Level::Pass, "Ed25519".to_owned()),
        (other, _) => (Level::Warn, format!("unrecognised key algorithm {other}")),
    }
}
