//! The Kubernetes Secret for a bundle folder: the object `kubectl create secret generic cacerts
//! -n istio-system --from-file=...` makes from it, as YAML or JSON, ready for `kubectl apply -f -`.

use std::collections::BTreeMap;

use base64::Engine;
use meshca_pki::{CacertsBundle, Layout};
use serde::Serialize;

use crate::error::StoreError;

/// A Secret manifest.
#[derive(Serialize)]
pub struct SecretManifest {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    #[serde(rename = "type")]
    secret_type: &'static str,
    data: BTreeMap<String, String>,
}

/// The data's names, never its contents: the manifest holds the CA's private key.
impl std::fmt::Debug for SecretManifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretManifest")
            .field("metadata", &self.metadata)
            .field("type", &self.secret_type)
            .field("data", &self.data.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize)]
struct Metadata {
    name: String,
    namespace: String,
}

impl SecretManifest {
    /// The Secret holding `bundle` in `layout`: `Opaque` with Istio's file names, or
    /// `kubernetes.io/tls` with `tls.crt`, `tls.key` and `ca.crt`.
    pub fn for_bundle(bundle: &CacertsBundle, layout: Layout, name: &str, namespace: &str) -> Self {
        let engine = base64::engine::general_purpose::STANDARD;
        let data = bundle
            .to_layout(layout)
            .into_iter()
            .map(|(k, v)| (k, engine.encode(v)))
            .collect();
        SecretManifest {
            api_version: "v1",
            kind: "Secret",
            metadata: Metadata {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
            },
            secret_type: match layout {
                Layout::Istio => "Opaque",
                Layout::Tls => "kubernetes.io/tls",
            },
            data,
        }
    }

    /// The manifest as YAML.
    pub fn to_yaml(&self) -> Result<String, StoreError> {
        serde_saphyr::to_string(self).map_err(|e| StoreError::Encode {
            what: "the Secret as YAML",
            reason: e.to_string(),
        })
    }

    /// The manifest as indented JSON.
    pub fn to_json(&self) -> Result<String, StoreError> {
        serde_json::to_string_pretty(self).map_err(|e| StoreError::Encode {
            what: "the Secret as JSON",
            reason: e.to_string(),
        })
    }
}
