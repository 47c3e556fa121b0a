//! The RootTrustPolicy custom resources: Gloo's `admin.gloo.solo.io/v2` (so that a policy
//! written for Gloo applies as it is) and meshca's `trust.meshca/v1alpha1` (Gloo's fields and
//! meshca's own). Both definitions are generated from the policy's Rust types
//! ([`meshca_trust::policy::spec_schema`]) and the [`PolicyStatus`] below, never written by
//! hand; `meshca trust crds` prints them and `deploy/crds/` holds the committed copies.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresourceStatus,
    CustomResourceSubresources, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::schema::StructuralSchemaRewriter;
use kube::discovery::ApiResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The resource's kind in both groups.
pub const KIND: &str = "RootTrustPolicy";
/// Its plural, the name in URLs and `kubectl get`.
pub const PLURAL: &str = "roottrustpolicies";
/// The mark on spec fields that only meshca's version accepts.
const MESHCA_ONLY: &str = "x-meshca-only";

/// One of the two API groups a RootTrustPolicy is served in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flavor {
    /// `admin.gloo.solo.io/v2`: Gloo's documented fields.
    Gloo,
    /// `trust.meshca/v1alpha1`: Gloo's fields and meshca's.
    Meshca,
}

impl Flavor {
    /// Both, Gloo's first.
    pub const ALL: [Flavor; 2] = [Flavor::Gloo, Flavor::Meshca];

    /// The API group.
    pub fn group(self) -> &'static str {
        match self {
            Flavor::Gloo => "admin.gloo.solo.io",
            Flavor::Meshca => "trust.meshca",
        }
    }

    /// The one version served.
    pub fn version(self) -> &'static str {
        match self {
            Flavor::Gloo => "v2",
            Flavor::Meshca => "v1alpha1",
        }
    }

    /// `group/version`.
    pub fn api_version(self) -> String {
        format!("{}/{}", self.group(), self.version())
    }

    /// The definition's name, `roottrustpolicies.<group>`; also its file's name in `deploy/crds/`.
    pub fn crd_name(self) -> String {
        format!("{PLURAL}.{}", self.group())
    }

    /// What kube's dynamic client needs to read and watch these resources.
    pub fn api_resource(self) -> ApiResource {
        ApiResource {
            group: self.group().to_owned(),
            version: self.version().to_owned(),
            api_version: self.api_version(),
            kind: KIND.to_owned(),
            plural: PLURAL.to_owned(),
        }
    }
}

/// What the manager reports in a policy's `.status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Clusters whose cacerts is as the policy wants, of all it covers ("2/2").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_clusters: Option<String>,
    /// The root rotation's phase ("1/3 add-root", ...), or "idle".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_phase: Option<String>,
    /// When the next intermediate renewal or rotation step falls due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<String>,
    /// Ready, Rotating and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Each cluster the policy covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterState>,
}

/// A condition, as Kubernetes' own (`metav1.Condition`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, Rotating or Degraded.
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    /// A CamelCase word for machines.
    pub reason: String,
    /// One line for people.
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The spec generation the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One cluster under a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterState {
    /// The cluster's name.
    pub name: String,
    /// Whether its cacerts is as the policy wants.
    pub done: bool,
    /// The intermediate's serial (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The intermediate's notAfter (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// SHA-256 fingerprints of the roots in its root-cert.pem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub root_fingerprints: Vec<String>,
    /// What is wrong, when it is not done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The generator kube's own derive uses: OpenAPI v3, every subschema inline, rewritten to
/// Kubernetes' structural rules.
fn generator() -> schemars::SchemaGenerator {
    schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(StructuralSchemaRewriter)
        .into_generator()
}

/// Removes what a published schema must not carry: titles, and the meshca-only mark (with the
/// fields it marks, for Gloo's flavor).
fn publish(schema: &mut Value, flavor: Flavor) {
    let Value::Object(map) = schema else { return };
    map.remove("title");
    map.remove(MESHCA_ONLY);
    // The API server warns about formats it does not know (schemars' `uint32`, ...).
    const KNOWN_FORMATS: [&str; 8] = [
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "date",
        "date-time",
        "password",
    ];
    if map
        .get("format")
        .and_then(Value::as_str)
        .is_some_and(|f| !KNOWN_FORMATS.contains(&f))
    {
        map.remove("format");
    }
    if let Some(Value::Object(props)) = map.get_mut("properties") {
        if flavor == Flavor::Gloo {
            props.retain(|_, p| p.get(MESHCA_ONLY) != Some(&Value::Bool(true)));
        }
        for p in props.values_mut() {
            publish(p, flavor);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = map.get_mut(key) {
            publish(sub, flavor);
        }
    }
}

fn schema_value(schema: schemars::Schema, flavor: Flavor) -> Value {
    let mut v = schema.to_value();
    publish(&mut v, flavor);
    v
}

fn column(
    name: &str,
    type_: &str,
    path: &str,
    description: &str,
) -> CustomResourceColumnDefinition {
    CustomResourceColumnDefinition {
        name: name.to_owned(),
        type_: type_.to_owned(),
        json_path: path.to_owned(),
        description: Some(description.to_owned()),
        ..Default::default()
    }
}

/// The CustomResourceDefinition of one flavor.
pub fn definition(flavor: Flavor) -> CustomResourceDefinition {
    let spec = schema_value(meshca_trust::policy::spec_schema(generator()), flavor);
    let status = schema_value(generator().into_root_schema_for::<PolicyStatus>(), flavor);
    let description = match flavor {
        Flavor::Gloo => {
            "Gloo's RootTrustPolicy, served by meshca: one root for every workload cluster, and an intermediate CA in each cluster's istio-system/cacerts, issued and renewed by the manager."
        }
        Flavor::Meshca => {
            "meshca's RootTrustPolicy: Gloo's fields, and the clusters, key types, external signers and root rotation meshca adds."
        }
    };
    let schema = json!({
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        }
    });
    let schema: JSONSchemaProps = serde_json::from_value(schema)
        .unwrap_or_else(|e| unreachable!("the generated schema is a JSONSchemaProps: {e}"));
    let mut labels = BTreeMap::new();
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "meshca".to_owned(),
    );
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(flavor.crd_name()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: flavor.group().to_owned(),
            names: CustomResourceDefinitionNames {
                kind: KIND.to_owned(),
                list_kind: Some(format!("{KIND}List")),
                plural: PLURAL.to_owned(),
                singular: Some("roottrustpolicy".to_owned()),
                categories: Some(vec!["meshca".to_owned()]),
                short_names: None,
            },
            scope: "Namespaced".to_owned(),
            versions: vec![CustomResourceDefinitionVersion {
                name: flavor.version().to_owned(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(schema),
                }),
                subresources: Some(CustomResourceSubresources {
                    status: Some(CustomResourceSubresourceStatus(json!({}))),
                    scale: None,
                }),
                additional_printer_columns: Some(vec![
                    column(
                        "Ready",
                        "string",
                        ".status.readyClusters",
                        "Clusters whose cacerts is as the policy wants, of all it covers",
                    ),
                    column(
                        "Phase",
                        "string",
                        ".status.rotationPhase",
                        "The root rotation's phase, or idle",
                    ),
                    // A string, not a date: kubectl shows a date column as an age, and a time
                    // to come (this one always is) as <invalid>.
                    column(
                        "Next Rotation",
                        "string",
                        ".status.nextRotation",
                        "When the next renewal or rotation step falls due (RFC 3339)",
                    ),
                    column(
                        "Age",
                        "date",
                        ".metadata.creationTimestamp",
                        "Since the policy was created",
                    ),
                ]),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    }
}

/// One flavor's definition as a YAML document, with a header saying where it comes from.
pub fn definition_yaml(flavor: Flavor) -> String {
    let yaml = serde_saphyr::to_string(&definition(flavor))
        .unwrap_or_else(|e| unreachable!("a CustomResourceDefinition serializes: {e}"));
    format!(
        "# Generated by `meshca trust crds` from meshca's Rust types: do not edit.\n{}",
        yaml
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_props(d: &CustomResourceDefinition) -> Value {
        let v = serde_json::to_value(d).unwrap();
        v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
    }

    #[test]
    fn the_gloo_schema_leaves_out_meshcas_fields_and_meshcas_keeps_them() {
        let gloo = spec_props(&definition(Flavor::Gloo));
        let meshca = spec_props(&definition(Flavor::Meshca));
        let config = |s: &Value| s["properties"]["config"]["properties"].clone();
        assert!(gloo["properties"].get("clusters").is_none());
        assert!(meshca["properties"].get("clusters").is_some());
        assert!(config(&gloo).get("rootRotation").is_none());
        assert!(config(&meshca).get("externalSigner").is_some());
        let options = |s: &Value| config(s)["intermediateCertOptions"]["properties"].clone();
        assert!(options(&gloo).get("keyType").is_none());
        assert!(options(&gloo).get("ttlDays").is_some());
        assert!(options(&meshca).get("keyType").is_some());
        let text = serde_json::to_string(&definition(Flavor::Meshca)).unwrap();
        assert!(!text.contains(MESHCA_ONLY), "the mark is never published");
        assert!(!text.contains("\"title\""), "{text}");
        assert!(
            !text.contains("$ref"),
            "structural schemas hold no references"
        );
    }

    #[test]
    fn the_committed_definitions_are_the_generated_ones() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
        for flavor in Flavor::ALL {
            let path = dir.join(format!("{}.yaml", flavor.crd_name()));
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == definition_yaml(flavor),
                "{} is stale: run `cargo run -p meshca -- trust crds --dir deploy/crds`",
                path.display()
            );
        }
    }
}
