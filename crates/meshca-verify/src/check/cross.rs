//! Check 12, across bundles: whether the workloads of each bundle are trusted by every other.

use meshca_pki::Certificate;

use super::{CheckName, Finding, Inspected, Level, Trust, counted, short_fp};

/// Check 12: workloads of one bundle are trusted by another only if the root their signing
/// certificate chains to is in the other's root bundle, both ways.
pub(super) fn shared_root(bundles: &[Inspected]) -> Finding {
    let name = CheckName::SharedRoot;
    let mut compared: Vec<(&str, &Trust, &Certificate)> = Vec::new();
    let mut left_out: Vec<&str> = Vec::new();
    for b in bundles {
        match &b.trust {
            Some(
                t @ Trust {
                    anchor: Some(a), ..
                },
            ) => compared.push((b.report.dir.as_str(), t, a)),
            _ => left_out.push(b.report.dir.as_str()),
        }
    }
    // The root most bundles chain to (the first one given wins a tie).
    let mut majority: Option<(&Certificate, usize)> = None;
    for (_, _, a) in &compared {
        let n = compared.iter().filter(|(_, _, b)| b == a).count();
        if majority.is_none_or(|(_, m)| n > m) {
            majority = Some((a, n));
        }
    }
    let Some((majority, _)) = majority else {
        return Finding::fail(
            name,
            format!(
                "nothing to compare: no bundle has a root its signing certificate chains to ({})",
                left_out.join(", ")
            ),
        );
    };
    // A bundle is the odd one out when it chains to another root than most and either a peer
    // does not trust that root or it does not trust the majority's. Every broken pair has such
    // a bundle on one side (each bundle trusts its own root), so naming them names every break.
    let mut odd = Vec::new();
    let mut why = Vec::new();
    for (dir, trust, anchor) in &compared {
        if *anchor == majority {
            continue;
        }
        let untrusting: Vec<&str> = compared
            .iter()
            .filter(|(d, t, _)| d != dir && !t.roots.contains(anchor))
            .map(|(d, _, _)| *d)
            .collect();
        let lacks_majority = !trust.roots.contains(majority);
        if untrusting.is_empty() && !lacks_majority {
            continue;
        }
        odd.push(*dir);
        let mut parts = Vec::new();
        if !untrusting.is_empty() {
            parts.push(format!(
                "{dir} chains to root \"{}\" (SHA-256 {}), which {} {} not trust",
                anchor.subject(),
                short_fp(anchor),
                untrusting.join(", "),
                if untrusting.len() == 1 { "does" } else { "do" }
            ));
        }
        if lacks_majority && parts.is_empty() {
            parts.push(format!("{dir}'s root bundle lacks the others' root"));
        } else if lacks_majority {
            parts.push("its root bundle lacks theirs".to_owned());
        }
        why.push(parts.join(", and "));
    }
    if !odd.is_empty() {
        return Finding::fail(
            name,
            format!(
                "{} {} from the others' root \"{}\" (SHA-256 {}): {}",
                odd.join(", "),
                if odd.len() == 1 { "differs" } else { "differ" },
                majority.subject(),
                short_fp(majority),
                why.join("; ")
            ),
        );
    }
    let mut anchors: Vec<&Certificate> = Vec::new();
    for (_, _, a) in &compared {
        if !anchors.contains(a) {
            anchors.push(a);
        }
    }
    let shown: Vec<String> = anchors
        .iter()
        .map(|a| format!("\"{}\" (SHA-256 {})", a.subject(), short_fp(a)))
        .collect();
    let detail = if anchors.len() == 1 {
        let verb = if compared.len() == 1 {
            "chains"
        } else {
            "chain"
        };
        format!(
            "{} {verb} to root {}",
            counted(compared.len(), "bundle"),
            shown[0]
        )
    } else {
        format!(
            "{} chain to roots that every bundle trusts: {}",
            counted(compared.len(), "bundle"),
            shown.join(", ")
        )
    };
    if left_out.is_empty() {
        Finding::pass(name, detail)
    } else {
        Finding::new(
            name,
            Level::Warn,
            format!(
                "{detail}; not compared: {} (no root its signing certificate chains to)",
                left_out.join(", ")
            ),
        )
    }
}
