//! Envoy secret dumps in the three forms people have: `istioctl proxy-config secret <pod>
//! -o json` and `-o yaml` (camelCase fields, `dynamicActiveSecrets` at the top), and Envoy's own
//! admin `/config_dump` (snake_case fields, a `SecretsConfigDump` inside `configs`, or with
//! `?resource=dynamic_active_secrets` one `DynamicSecret` per element of `configs`). The form is
//! told by content, not by file name. Only the two secrets that matter are kept: `ROOTCA` (the
//! trusted roots) and `default` (the workload chain); warming secrets are noted, never used.

use base64::Engine;
use meshca_pki::Certificate;
use serde_json::Value;

use crate::VerifyError;

/// The two secrets of an Envoy dump that matter.
#[derive(Clone, Debug)]
pub struct ProxySecrets {
    /// Where the dump came from.
    pub origin: String,
    /// `ROOTCA`'s trusted CA certificates.
    pub roots: Vec<Certificate>,
    /// `default`'s certificate chain, leaf first (it may end with the root).
    pub chain: Vec<Certificate>,
    /// Names of the secrets Envoy is still warming (not yet in use).
    pub warming: Vec<String>,
}

impl ProxySecrets {
    /// Reads a dump in any of the three forms (JSON or YAML; istioctl's or Envoy's).
    pub fn from_dump(bytes: &[u8], origin: &str) -> Result<Self, VerifyError> {
        let bad = |reason: String| VerifyError::BadDump {
            origin: origin.to_owned(),
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".to_owned()))?;
        let doc: Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                let e = e.to_string();
                bad(format!(
                    "not YAML: {}",
                    e.lines().next().unwrap_or_default()
                ))
            })?
        };
        let (active, warming) = secret_lists(&doc).ok_or_else(|| {
            bad(
                "neither istioctl's dynamicActiveSecrets nor a SecretsConfigDump in Envoy's \
                 configs"
                    .to_owned(),
            )
        })?;
        let warming_names: Vec<String> = warming
            .iter()
            .filter_map(|s| s.get("name").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        let find = |name: &str| -> Result<&Value, VerifyError> {
            active
                .iter()
                .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|s| s.get("secret"))
                .ok_or_else(|| {
                    bad(if warming_names.iter().any(|w| w == name) {
                        format!("no active secret named {name} (it is only warming)")
                    } else {
                        format!("no secret named {name}")
                    })
                })
        };
        let decode = |secret: &Value, path: [(&str, &str); 3], what: &str| {
            let mut v = Some(secret);
            for (camel, snake) in path {
                v = v.and_then(|x| field(x, camel, snake));
            }
            let text = v
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{what}: inline bytes missing")))?;
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| bad(format!("{what}: inline bytes are not base64")))
        };
        let root_pem = decode(
            find("ROOTCA")?,
            [
                ("validationContext", "validation_context"),
                ("trustedCa", "trusted_ca"),
                ("inlineBytes", "inline_bytes"),
            ],
            "ROOTCA trusted CA",
        )?;
        let chain_pem = decode(
            find("default")?,
            [
                ("tlsCertificate", "tls_certificate"),
                ("certificateChain", "certificate_chain"),
                ("inlineBytes", "inline_bytes"),
            ],
            "default certificate chain",
        )?;
        Ok(ProxySecrets {
            origin: origin.to_owned(),
            roots: Certificate::all_from_pem(&root_pem, &format!("{origin} ROOTCA"))?,
            chain: Certificate::all_from_pem(&chain_pem, &format!("{origin} default"))?,
            warming: warming_names,
        })
    }
}

/// A field by its camelCase (istioctl) or snake_case (Envoy) name.
fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

/// The active and warming secrets of any of the forms, or `None` if it is none of them.
fn secret_lists(doc: &Value) -> Option<(Vec<&Value>, Vec<&Value>)> {
    let Some(configs) = doc.get("configs").and_then(Value::as_array) else {
        let is_dump = field(doc, "dynamicActiveSecrets", "dynamic_active_secrets").is_some()
            || field(doc, "dynamicWarmingSecrets", "dynamic_warming_secrets").is_some();
        return is_dump.then(|| lists(doc));
    };
    let (mut active, mut warming) = (Vec::new(), Vec::new());
    let mut found = false;
    for c in configs {
        let kind = c.get("@type").and_then(Value::as_str).unwrap_or_default();
        if kind.ends_with(".SecretsConfigDump") {
            let (a, w) = lists(c);
            active.extend(a);
            warming.extend(w);
            found = true;
        } else if kind.ends_with(".SecretsConfigDump.DynamicSecret") {
            // `?resource=dynamic_active_secrets` lists the active secrets one per element.
            active.push(c);
            found = true;
        }
    }
    found.then_some((active, warming))
}

/// The active and warming secrets of one dump object.
fn lists(v: &Value) -> (Vec<&Value>, Vec<&Value>) {
    (
        list(v, "dynamicActiveSecrets", "dynamic_active_secrets"),
        list(v, "dynamicWarmingSecrets", "dynamic_warming_secrets"),
    )
}

fn list<'a>(v: &'a Value, camel: &str, snake: &str) -> Vec<&'a Value> {
    field(v, camel, snake)
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}
