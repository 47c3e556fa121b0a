//! Check 12, across bundles: the workloads of every bundle accept every other bundle's, judged
//! by the crate's one interop rule ([`crate::interop`]), the same rule `meshca verify roots`
//! applies.

use time::OffsetDateTime;

use super::{CheckName, Finding, Inspected, Level};
use crate::interop::{ClusterTrust, mesh_interop};

/// Check 12. Fails when some bundle's chain does not verify against another's root bundle;
/// warns when a bundle could not be compared (its own findings say why).
pub(super) fn shared_root(bundles: &[Inspected], now: OffsetDateTime) -> Finding {
    let mut sides = Vec::new();
    let mut unread = Vec::new();
    for b in bundles {
        match &b.trust {
            Some(t) => sides.push(ClusterTrust {
                name: &b.report.dir,
                start: &t.signing,
                chain: &t.chain,
                roots: &t.roots,
            }),
            None => unread.push(b.report.dir.as_str()),
        }
    }
    let mesh = mesh_interop(&sides, now);
    let mut detail = mesh.describe(("bundle", "bundles"));
    if !unread.is_empty() {
        detail.push_str(&format!(
            "; not compared: {} (no signing certificate and root bundle that parse)",
            unread.join(", ")
        ));
    }
    let level = if mesh.failed() {
        Level::Fail
    } else if mesh.left_out.is_empty() && unread.is_empty() {
        Level::Pass
    } else {
        Level::Warn
    };
    Finding::new(CheckName::SharedRoot, level, detail)
}
