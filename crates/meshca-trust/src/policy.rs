//! The root trust policy. Gloo's `admin.gloo.solo.io/v2` `RootTrustPolicy` is accepted as it is
//! written (fields meshca has no use for are reported, not ignored silently); meshca's own
//! `apiVersion: trust.meshca/v1alpha1` adds the clusters and the key type. Unknown fields are
//! errors, and every value is checked before anything is written.

use meshca_pki::{KeyType, PkiError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// Gloo's API version.
pub const GLOO_API_VERSION: &str = "admin.gloo.solo.io/v2";
/// meshca's API version.
pub const MESHCA_API_VERSION: &str = "trust.meshca/v1alpha1";

/// The longest lifetime a policy may give, in days (100 years): every lifetime and allowance is
/// added to dates, and one that no certificate can hold would only overflow there.
pub const MAX_DAYS: i64 = 36_500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Doc {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(rename = "labels")]
    _labels: Option<IgnoredAny>,
    #[serde(rename = "annotations")]
    _annotations: Option<IgnoredAny>,
}

// What both API versions accept. Fields only meshca's version accepts carry `x-meshca-only` in
// the schema, so that Gloo's CustomResourceDefinition leaves them out. The doc comments here are
// the schema's descriptions (`kubectl explain`).
/// Which root signs the intermediate CAs of the workload clusters, and how those are made.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    /// How the root and the intermediate CAs are made.
    config: Config,
    /// Gloo's mesh selection. meshca takes the clusters from its store (or spec.clusters) and
    /// notes that this field does not apply.
    #[serde(default)]
    #[schemars(schema_with = "object_selectors")]
    apply_to_meshes: Option<IgnoredAny>,
    /// The workload clusters to give a cacerts (default: every cluster meshca knows but the
    /// management cluster).
    #[schemars(extend("x-meshca-only" = true))]
    clusters: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    /// The CA that signs the intermediates: a root meshca generates, or one given in a secret.
    mgmt_server_ca: Option<MgmtServerCa>,
    /// Gloo's external intermediate source (Vault). Not supported by meshca: refused.
    #[serde(default)]
    #[schemars(schema_with = "any_object")]
    agent_ca: Option<IgnoredAny>,
    /// The intermediate CAs: lifetime, key, organization, and when they are renewed.
    intermediate_cert_options: Option<IntermediateCertOptions>,
    /// Gloo restarts pods after a rotation; meshca does not need to (istiod reloads cacerts and
    /// workloads renew on their own schedule) and notes that this field does not apply.
    auto_restart_pods: Option<bool>,
    /// Extra roots every cluster trusts, never used to sign: secrets holding ca-cert.pem or
    /// root-cert.pem.
    passive_certificate_authorities: Option<Vec<SecretRefDoc>>,
    /// When and how the root itself is rotated (add the new root, re-issue, drop the old one).
    #[schemars(extend("x-meshca-only" = true))]
    root_rotation: Option<RootRotationDoc>,
    /// An external signer holding the root's key, in place of mgmtServerCa.
    #[schemars(extend("x-meshca-only" = true))]
    external_signer: Option<ExternalSignerDoc>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ExternalSignerDoc {
    /// A cfssl server (`cfssl serve`) whose signing profile issues CA certificates.
    cfssl: CfsslDoc,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CfsslDoc {
    /// http://host:port or https://host:port.
    url: String,
    /// The signing profile (it must issue CA certificates).
    profile: Option<String>,
    /// The signer label, for a multi-signer server.
    label: Option<String>,
    /// A secret holding the hex auth key under `auth-key`: requests then go to authsign.
    auth_key_secret_ref: Option<SecretRefDoc>,
    /// The CA file that signed an https server's certificate.
    ca_file: Option<String>,
    /// A secret holding root-cert.pem (and cert-chain.pem up from the signer) when the signer is
    /// not itself a root.
    roots_secret_ref: Option<SecretRefDoc>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RootRotationDoc {
    /// Start a root rotation when less than this share of the root's life is left (0 to 1;
    /// generated roots default to 0.2).
    grace_period_ratio: Option<f64>,
    /// The secret the operator puts the next root in (secretRef roots).
    next_secret_ref: Option<SecretRefDoc>,
    /// Minutes allowed, on top of the longest workload certificate lifetime, for a changed
    /// secret to reach every CA server (default 10).
    propagation_minutes: Option<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MgmtServerCa {
    /// A self-signed root made and kept by the manager in the management cluster.
    generated: Option<Generated>,
    /// A root (or an intermediate with its chain) given in a secret holding ca-cert.pem,
    /// ca-key.pem, cert-chain.pem and root-cert.pem.
    secret_ref: Option<SecretRefDoc>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Generated {
    /// The generated root's lifetime in days (default 3650).
    ttl_days: Option<i64>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SecretRefDoc {
    /// The secret's name.
    name: String,
    /// Its namespace in the management cluster (default gloo-mesh).
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IntermediateCertOptions {
    /// The intermediates' lifetime in days (default 365).
    ttl_days: Option<i64>,
    /// RSA key size in bits, despite the name (default 4096).
    rsa_key_size_bytes: Option<u32>,
    /// The intermediates' O= (default Istio).
    org_name: Option<String>,
    /// Renew an intermediate when less than this share of its life is left (0 to 1, default
    /// 0.1).
    secret_rotation_grace_period_ratio: Option<f64>,
    /// The intermediates' key type: rsa (default), ecdsa-p256 or ecdsa-p384.
    #[schemars(extend("x-meshca-only" = true))]
    key_type: Option<String>,
    /// The longest workload certificate lifetime, in hours (default 24): what a root rotation
    /// waits for between phases.
    #[schemars(extend("x-meshca-only" = true))]
    workload_cert_ttl_hours: Option<i64>,
}

/// Gloo's `applyToMeshes`: a list of mesh selectors.
fn object_selectors(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let text = |d: &str| serde_json::json!({"type": "string", "description": d});
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "name": text("The mesh's name."),
                "namespace": text("The mesh's namespace."),
                "cluster": text("The mesh's cluster."),
                "workspace": text("The workspace the mesh belongs to."),
                "labels": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Labels the mesh must carry."
                }
            }
        }
    })
}

/// An object whose fields are not described (kept as they are).
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// The schema of a policy's `spec`, made by `generator`. Fields only meshca's API version
/// accepts carry `"x-meshca-only": true`; whoever publishes the schema removes them or the mark.
pub fn spec_schema(generator: schemars::SchemaGenerator) -> schemars::Schema {
    generator.into_root_schema_for::<Spec>()
}

/// A secret in the management cluster.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct SecretRef {
    /// its name
    pub name: String,
    /// its namespace
    pub namespace: String,
}

impl SecretRef {
    /// The secret this names in `cluster`.
    pub fn key(&self, cluster: &str) -> meshca_store::SecretKey {
        meshca_store::SecretKey::new(cluster, self.namespace.as_str(), self.name.as_str())
    }
}

/// Where the policy's CA comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootSource {
    /// A self-signed root made by meshca and kept in the management cluster.
    Generated {
        /// root lifetime in days
        ttl_days: i64,
    },
    /// A root, or an intermediate with its chain, given in a secret.
    SecretRef(SecretRef),
    /// A cfssl server that holds the key and signs over its HTTP API.
    External(ExternalSigner),
}

/// An external cfssl signer (`/api/v1/cfssl/info`, `sign`, `authsign`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalSigner {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// The cfssl signing profile (it must issue CA certificates).
    pub profile: Option<String>,
    /// The cfssl signer label, for a multi-signer server.
    pub label: Option<String>,
    /// A secret holding the hex auth key under `auth-key`: requests then go to `authsign`.
    pub auth_key: Option<SecretRef>,
    /// The CA file that signed an https server's certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// A secret holding `root-cert.pem` (and `cert-chain.pem` up from the signer) when the signer
    /// is not itself a root.
    pub roots: Option<SecretRef>,
}

/// How the root is rotated: automatically before it expires, or when asked
/// (`meshca trust rotate-root`), in three phases gated on what the store shows.
#[derive(Clone, Debug, PartialEq)]
pub struct RootRotation {
    /// Start automatically when less than this share of the root's life is left. Generated roots
    /// default to 0.2 (as istiod rotates its self-signed root); a secretRef root only rotates
    /// automatically when `next_secret` names where its successor is.
    pub grace_ratio: Option<f64>,
    /// The secret the operator puts the next root in (secretRef roots).
    pub next_secret: Option<SecretRef>,
    /// Allowance, on top of the longest workload lifetime, for a changed secret to reach every
    /// CA server (the kubelet's sync period, the CA's reload).
    pub propagation: time::Duration,
}

/// A checked policy.
#[derive(Clone, Debug)]
pub struct TrustPolicy {
    /// The policy's name (names the generated root's secret).
    pub name: String,
    /// Its namespace in the management cluster.
    pub namespace: String,
    /// The CA that signs intermediates.
    pub root: RootSource,
    /// Intermediate lifetime in days.
    pub ttl_days: i64,
    /// Intermediate key type.
    pub key_type: KeyType,
    /// `O=` of intermediates.
    pub org_name: String,
    /// Renew when less than this share of the lifetime is left.
    pub grace_ratio: f64,
    /// Explicit clusters, if any.
    pub clusters: Option<Vec<String>>,
    /// Extra trusted roots (never used to sign), as secrets holding `ca-cert.pem` or `root-cert.pem`.
    pub passive: Vec<SecretRef>,
    /// Longest workload certificate lifetime, in hours.
    pub workload_ttl_hours: i64,
    /// Root rotation settings.
    pub root_rotation: RootRotation,
    /// Remarks for the user (fields that do not apply, risky but allowed values).
    pub notes: Vec<String>,
}

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct PolicyError {
    /// the policy file
    pub origin: String,
    /// what is wrong
    pub reason: String,
}

impl TrustPolicy {
    /// Parses and checks a policy document. `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let bad = |reason: String| PolicyError {
            origin: origin.to_owned(),
            reason,
        };
        let doc: Doc = serde_saphyr::from_str(text).map_err(|e| bad(first_line(&e.to_string())))?;
        Self::from_doc(doc, origin)
    }

    /// Checks the policy of a RootTrustPolicy resource as read from an API server: its
    /// apiVersion, name, namespace and `spec`. `origin` names it in errors.
    pub fn from_resource(
        api_version: &str,
        name: &str,
        namespace: &str,
        spec: &serde_json::Value,
        origin: &str,
    ) -> Result<Self, PolicyError> {
        let spec: Spec = serde_json::from_value(spec.clone()).map_err(|e| PolicyError {
            origin: origin.to_owned(),
            reason: format!("spec: {}", first_line(&e.to_string())),
        })?;
        let doc = Doc {
            api_version: api_version.to_owned(),
            kind: "RootTrustPolicy".to_owned(),
            metadata: Metadata {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..Metadata::default()
            },
            spec,
        };
        Self::from_doc(doc, origin)
    }

    fn from_doc(doc: Doc, origin: &str) -> Result<Self, PolicyError> {
        let bad = |reason: String| PolicyError {
            origin: origin.to_owned(),
            reason,
        };
        let meshca = match doc.api_version.as_str() {
            GLOO_API_VERSION => false,
            MESHCA_API_VERSION => true,
            other => {
                return Err(bad(format!(
                    "apiVersion {other:?}: expected {GLOO_API_VERSION} or {MESHCA_API_VERSION}"
                )));
            }
        };
        if doc.kind != "RootTrustPolicy" {
            return Err(bad(format!(
                "kind {:?}: expected RootTrustPolicy",
                doc.kind
            )));
        }
        if !meshca && doc.spec.clusters.is_some() {
            return Err(bad(format!(
                "spec.clusters is a {MESHCA_API_VERSION} field, not {GLOO_API_VERSION}"
            )));
        }
        let mut notes = Vec::new();
        let cfg = doc.spec.config;
        if cfg.auto_restart_pods.is_some() {
            notes.push("config.autoRestartPods does not apply: istiod reloads cacerts itself and workloads renew on their own schedule".to_owned());
        }
        if cfg.agent_ca.is_some() {
            return Err(bad("config.agentCa (an external intermediate source) is not supported; use mgmtServerCa".to_owned()));
        }
        if doc.spec.apply_to_meshes.is_some() {
            notes.push(
                "spec.applyToMeshes does not apply: clusters come from the store or spec.clusters"
                    .to_owned(),
            );
        }
        if cfg.root_rotation.is_some() && !meshca {
            return Err(bad(format!(
                "config.rootRotation is a {MESHCA_API_VERSION} field, not {GLOO_API_VERSION}"
            )));
        }
        let has_root_rotation = cfg.root_rotation.is_some();
        let rr = cfg.root_rotation.unwrap_or_default();
        if cfg.external_signer.is_some() && !meshca {
            return Err(bad(format!(
                "config.externalSigner is a {MESHCA_API_VERSION} field, not {GLOO_API_VERSION}"
            )));
        }
        let secret = |r: SecretRefDoc| SecretRef {
            name: r.name,
            namespace: r.namespace.unwrap_or_else(|| "gloo-mesh".to_owned()),
        };
        let root = match (cfg.external_signer, cfg.mgmt_server_ca.is_some()) {
            (Some(_), true) => {
                return Err(bad(
                    "config: give mgmtServerCa or externalSigner, not both".to_owned()
                ));
            }
            (Some(ext), false) => {
                let c = ext.cfssl;
                if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                    return Err(bad(format!(
                        "config.externalSigner.cfssl.url {:?} must start with http:// or https://",
                        c.url
                    )));
                }
                if has_root_rotation {
                    return Err(bad("config.rootRotation does not apply to an external signer: its root is rotated by pointing the policy at the new signer".to_owned()));
                }
                Some(RootSource::External(ExternalSigner {
                    url: c.url,
                    profile: c.profile,
                    label: c.label,
                    auth_key: c.auth_key_secret_ref.map(secret),
                    ca_file: c.ca_file.map(Into::into),
                    roots: c.roots_secret_ref.map(secret),
                }))
            }
            (None, _) => None,
        };
        let root = match root {
            Some(r) => r,
            None => match cfg.mgmt_server_ca {
                None => RootSource::Generated { ttl_days: 3650 },
                Some(MgmtServerCa {
                    generated: Some(_),
                    secret_ref: Some(_),
                }) => {
                    return Err(bad(
                        "config.mgmtServerCa: give generated or secretRef, not both".to_owned(),
                    ));
                }
                Some(MgmtServerCa {
                    secret_ref: Some(r),
                    ..
                }) => RootSource::SecretRef(SecretRef {
                    name: r.name,
                    namespace: r.namespace.unwrap_or_else(|| "gloo-mesh".to_owned()),
                }),
                Some(MgmtServerCa { generated, .. }) => {
                    let ttl_days = generated.and_then(|g| g.ttl_days).unwrap_or(3650);
                    if !(1..=MAX_DAYS).contains(&ttl_days) {
                        return Err(bad(format!(
                            "config.mgmtServerCa.generated.ttlDays must be 1 to {MAX_DAYS}, got {ttl_days}"
                        )));
                    }
                    RootSource::Generated { ttl_days }
                }
            },
        };
        let o = cfg.intermediate_cert_options.unwrap_or_default();
        if meshca_only(&o) && !meshca {
            return Err(bad(format!(
                "intermediateCertOptions.keyType and workloadCertTtlHours are {MESHCA_API_VERSION} fields"
            )));
        }
        let ttl_days = o.ttl_days.unwrap_or(365);
        if !(1..=MAX_DAYS).contains(&ttl_days) {
            return Err(bad(format!(
                "intermediateCertOptions.ttlDays must be 1 to {MAX_DAYS}, got {ttl_days}"
            )));
        }
        let grace_ratio = o.secret_rotation_grace_period_ratio.unwrap_or(0.1);
        if !(grace_ratio > 0.0 && grace_ratio < 1.0) {
            return Err(bad(format!(
                "intermediateCertOptions.secretRotationGracePeriodRatio must be between 0 and 1 (exclusive), got {grace_ratio}"
            )));
        }
        let bits = o.rsa_key_size_bytes.unwrap_or(4096);
        let key_type = KeyType::from_spec(
            "intermediateCertOptions.keyType/rsaKeySizeBytes",
            o.key_type.as_deref().unwrap_or("rsa"),
            bits,
        )
        .map_err(|e: PkiError| bad(e.to_string()))?;
        let workload_ttl_hours = o.workload_cert_ttl_hours.unwrap_or(24);
        if !(1..=MAX_DAYS * 24).contains(&workload_ttl_hours) {
            return Err(bad(format!(
                "intermediateCertOptions.workloadCertTtlHours must be 1 to {}, got {workload_ttl_hours}",
                MAX_DAYS * 24
            )));
        }
        let ttl_hours = ttl_days * 24;
        if ttl_hours < workload_ttl_hours {
            return Err(bad(format!(
                "intermediates of {ttl_days} day(s) are shorter than one workload certificate lifetime ({workload_ttl_hours} h): workloads would be cut short at every rotation"
            )));
        }
        if ttl_hours < 6 * workload_ttl_hours {
            notes.push(format!(
                "intermediates of {ttl_days} day(s) last less than 6 workload certificate lifetimes ({workload_ttl_hours} h); workloads will renew early near each rotation"
            ));
        }
        if let Some(r) = rr.grace_period_ratio
            && !(r > 0.0 && r < 1.0)
        {
            return Err(bad(format!(
                "config.rootRotation.gracePeriodRatio must be between 0 and 1 (exclusive), got {r}"
            )));
        }
        let propagation_minutes = rr.propagation_minutes.unwrap_or(10);
        if !(0..=MAX_DAYS * 24 * 60).contains(&propagation_minutes) {
            return Err(bad(format!(
                "config.rootRotation.propagationMinutes must be 0 to {}, got {propagation_minutes}",
                MAX_DAYS * 24 * 60
            )));
        }
        let next_secret = rr.next_secret_ref.map(|r| SecretRef {
            name: r.name,
            namespace: r.namespace.unwrap_or_else(|| "gloo-mesh".to_owned()),
        });
        if next_secret.is_some() && matches!(root, RootSource::Generated { .. }) {
            return Err(bad(
                "config.rootRotation.nextSecretRef applies to a mgmtServerCa.secretRef root; a generated root's successor is generated".to_owned(),
            ));
        }
        let grace = match (&root, rr.grace_period_ratio, &next_secret) {
            (RootSource::Generated { .. }, r, _) => Some(r.unwrap_or(0.2)),
            (RootSource::SecretRef(_), Some(r), Some(_)) => Some(r),
            (RootSource::SecretRef(_), Some(_), None) => {
                return Err(bad("config.rootRotation.gracePeriodRatio on a secretRef root needs nextSecretRef: the secret its successor will be in".to_owned()));
            }
            (RootSource::SecretRef(_), None, _) => None,
            (RootSource::External(_), _, _) => None,
        };
        let root_rotation = RootRotation {
            grace_ratio: grace,
            next_secret,
            propagation: time::Duration::minutes(propagation_minutes),
        };
        let passive = cfg
            .passive_certificate_authorities
            .unwrap_or_default()
            .into_iter()
            .map(|r| SecretRef {
                name: r.name,
                namespace: r.namespace.unwrap_or_else(|| "gloo-mesh".to_owned()),
            })
            .collect();
        Ok(TrustPolicy {
            name: doc
                .metadata
                .name
                .unwrap_or_else(|| "root-trust-policy".to_owned()),
            namespace: doc
                .metadata
                .namespace
                .unwrap_or_else(|| "gloo-mesh".to_owned()),
            root,
            ttl_days,
            key_type,
            org_name: o.org_name.unwrap_or_else(|| "Istio".to_owned()),
            grace_ratio,
            clusters: doc.spec.clusters,
            passive,
            workload_ttl_hours,
            root_rotation,
            notes,
        })
    }
}

fn meshca_only(o: &IntermediateCertOptions) -> bool {
    o.key_type.is_some() || o.workload_cert_ttl_hours.is_some()
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    // serde-saphyr starts its messages with "error: ", which after the file's name reads twice.
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    use meshca_testkit::SEED_001_POLICY as SEED_001;

    #[test]
    fn the_seed_policy_is_accepted_as_written() {
        let p = TrustPolicy::from_yaml(SEED_001, "policy.yaml").unwrap();
        assert_eq!(
            p.root,
            RootSource::SecretRef(SecretRef {
                name: "my-root-trust-policy.gloo-mesh".into(),
                namespace: "gloo-mesh".into()
            })
        );
        assert_eq!(p.ttl_days, 1);
        assert!((p.grace_ratio - 0.1).abs() < 1e-9);
        assert_eq!(p.key_type, KeyType::Rsa4096);
        assert!(
            p.notes.iter().any(|n| n.contains("less than 6 workload")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn broken_policies_are_refused_with_the_field_named() {
        let cases = [
            (
                SEED_001.replace("0.1", "1.5"),
                "secretRotationGracePeriodRatio must be between 0 and 1",
            ),
            (
                SEED_001.replace("0.1", "0"),
                "secretRotationGracePeriodRatio",
            ),
            (
                SEED_001.replace("ttlDays: 1", "ttlDays: 0"),
                "ttlDays must be 1 to 36500, got 0",
            ),
            (
                SEED_001.replace("ttlDays: 1", "ttlDays: 9223372036854775807"),
                "ttlDays must be 1 to 36500, got 9223372036854775807",
            ),
            (
                SEED_001.replace("ttlDays: 1", "ttlDays: 1\n      ttlDayz: 2"),
                "ttlDayz",
            ),
            (
                SEED_001.replace("kind: RootTrustPolicy", "kind: Other"),
                "kind \"Other\"",
            ),
            (
                SEED_001.replace("admin.gloo.solo.io/v2", "v9"),
                "apiVersion \"v9\"",
            ),
            (
                SEED_001.replace("ttlDays: 1", "ttlDays: 1\n      rsaKeySizeBytes: 1024"),
                "1024",
            ),
            (
                SEED_001.replace("ttlDays: 1", "ttlDays: 1\n      keyType: ecdsa-p256"),
                "trust.meshca/v1alpha1 fields",
            ),
            ("not: [valid".to_owned(), "policy.yaml"),
        ];
        for (doc, needle) in cases {
            let err = TrustPolicy::from_yaml(&doc, "policy.yaml")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("policy.yaml: "), "{err}");
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        let short = SEED_001
            .replace("admin.gloo.solo.io/v2", MESHCA_API_VERSION)
            .replace("ttlDays: 1", "ttlDays: 1\n      workloadCertTtlHours: 48");
        let err = TrustPolicy::from_yaml(&short, "p").unwrap_err().to_string();
        assert!(
            err.contains("shorter than one workload certificate lifetime"),
            "{err}"
        );
    }

    #[test]
    fn meshcas_own_version_adds_clusters_and_key_types() {
        let doc = format!(
            "apiVersion: {MESHCA_API_VERSION}\nkind: RootTrustPolicy\nspec:\n  clusters: [c1, c2]\n  config:\n    mgmtServerCa:\n      generated: {{}}\n    intermediateCertOptions:\n      keyType: ecdsa-p256\n      ttlDays: 30\n    autoRestartPods: true\n"
        );
        let p = TrustPolicy::from_yaml(&doc, "p").unwrap();
        assert_eq!(p.clusters, Some(vec!["c1".to_owned(), "c2".to_owned()]));
        assert_eq!(p.key_type, KeyType::EcdsaP256);
        assert_eq!(p.root, RootSource::Generated { ttl_days: 3650 });
        assert!(p.notes.iter().any(|n| n.contains("autoRestartPods")));
    }

    #[test]
    fn an_external_signer_stands_alone() {
        let ext = "    externalSigner:\n      cfssl:\n        url: http://127.0.0.1:8888\n        profile: intermediate\n";
        let doc = |api: &str, extra: &str| {
            format!("apiVersion: {api}\nkind: RootTrustPolicy\nspec:\n  config:\n{ext}{extra}")
        };
        let p = TrustPolicy::from_yaml(&doc(MESHCA_API_VERSION, ""), "p").unwrap();
        assert!(
            matches!(&p.root, RootSource::External(e) if e.profile.as_deref() == Some("intermediate"))
        );
        assert_eq!(p.root_rotation.grace_ratio, None);
        for (d, needle) in [
            (
                doc(GLOO_API_VERSION, ""),
                "externalSigner is a trust.meshca/v1alpha1 field",
            ),
            (
                doc(
                    MESHCA_API_VERSION,
                    "    mgmtServerCa:\n      generated: {}\n",
                ),
                "not both",
            ),
            (
                doc(
                    MESHCA_API_VERSION,
                    "    rootRotation:\n      gracePeriodRatio: 0.2\n",
                ),
                "does not apply to an external signer",
            ),
            (
                doc(MESHCA_API_VERSION, "").replace("http://127", "ftp://127"),
                "must start with http://",
            ),
        ] {
            let err = TrustPolicy::from_yaml(&d, "p").unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
    }
}
