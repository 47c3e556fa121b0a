//! Check 1: which of the two cacerts layouts a folder holds, and the file names of each role in
//! it.

use meshca_pki::BundleFiles;
use meshca_pki::bundle::{
    CA_CERT, CA_CRT, CA_KEY, CERT_CHAIN, Layout, ROOT_CERT, TLS_CRT, TLS_KEY,
};

use super::{CheckName, Finding};

/// The file names of a layout, by role.
pub(super) struct LayoutFiles {
    pub(super) signing: &'static str,
    pub(super) key: &'static str,
    pub(super) chain: Option<&'static str>,
    pub(super) roots: &'static str,
}

impl LayoutFiles {
    pub(super) fn of(layout: Layout) -> Self {
        match layout {
            Layout::Istio => LayoutFiles {
                signing: CA_CERT,
                key: CA_KEY,
                chain: Some(CERT_CHAIN),
                roots: ROOT_CERT,
            },
            Layout::Tls => LayoutFiles {
                signing: TLS_CRT,
                key: TLS_KEY,
                chain: None,
                roots: CA_CRT,
            },
        }
    }
}

pub(super) fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Istio => "Istio",
        Layout::Tls => "kubernetes.io/tls",
    }
}

/// Check 1. Returns the layout istiod would read (the tls.crt layout when `tls.crt` exists),
/// or `None` when there is no bundle at all.
pub(super) fn check_layout(files: &BundleFiles, out: &mut Vec<Finding>) -> Option<Layout> {
    let present = |l: Layout| -> Vec<&'static str> {
        l.required_files()
            .iter()
            .copied()
            .filter(|f| files.contains_key(*f))
            .collect()
    };
    let (istio, tls) = (present(Layout::Istio), present(Layout::Tls));
    if istio.is_empty() && tls.is_empty() {
        out.push(Finding::fail(
            CheckName::Layout,
            "no cacerts bundle here: expected ca-cert.pem, ca-key.pem, cert-chain.pem, \
             root-cert.pem (Istio) or tls.crt, tls.key, ca.crt (kubernetes.io/tls)",
        ));
        return None;
    }
    let layout = if files.contains_key(TLS_CRT) || istio.is_empty() {
        Layout::Tls
    } else {
        Layout::Istio
    };
    let (own, other, other_layout) = match layout {
        Layout::Istio => (istio, tls, Layout::Tls),
        Layout::Tls => (tls, istio, Layout::Istio),
    };
    let missing: Vec<&str> = layout
        .required_files()
        .iter()
        .copied()
        .filter(|f| !own.contains(f))
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "incomplete {} layout: missing {} (istiod refuses an incomplete bundle)",
            layout_name(layout),
            missing.join(", ")
        ));
    }
    if !other.is_empty() {
        problems.push(format!(
            "{} of the {} layout {} mixed in; istiod would read only the {} layout's files",
            other.join(", "),
            layout_name(other_layout),
            if other.len() == 1 { "is" } else { "are" },
            layout_name(layout)
        ));
    }
    out.push(if problems.is_empty() {
        Finding::pass(
            CheckName::Layout,
            format!("{} layout: {}", layout_name(layout), own.join(", ")),
        )
    } else {
        Finding::fail(CheckName::Layout, problems.join("; "))
    });
    Some(layout)
}
