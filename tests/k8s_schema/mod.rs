//! Kubernetes schema validation for the tests, offline: a document is deserialized
//! into its k8s-openapi type (which checks apiVersion, kind and every field's type)
//! and serialized back; the result must equal the input. A field the schema does
//! not know is dropped by the round trip and shows up as a difference, with its
//! JSON pointer. Custom resources (cert-manager, Prometheus Operator, SPIRE) have
//! no k8s-openapi type: their apiVersion, kind and metadata.name are checked.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

/// How a document was checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Round-tripped through its k8s-openapi type.
    Schema(String),
    /// A custom resource: only its envelope was checked.
    CustomResource(String),
}

fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if back != *doc {
        let patch = json_patch::diff(doc, &back);
        // k8s-openapi writes apiVersion/kind into embedded resources (e.g. a
        // StatefulSet's volumeClaimTemplates); the API server accepts both forms.
        let patch: Vec<_> = patch
            .0
            .into_iter()
            .filter(|op| match op {
                json_patch::PatchOperation::Add(a) => {
                    let p = a.path.to_string();
                    !(p.matches('/').count() > 1
                        && (p.ends_with("/apiVersion") || p.ends_with("/kind")))
                }
                _ => true,
            })
            .collect();
        if patch.is_empty() {
            return Ok(());
        }
        return Err(format!(
            "fields not in the schema or of the wrong form: {}",
            serde_json::to_string(&patch).unwrap()
        ));
    }
    Ok(())
}

/// Validates one document.
pub fn validate(doc: &Value) -> Result<Checked, String> {
    let kind = doc["kind"].as_str().ok_or("no kind")?.to_owned();
    let api = doc["apiVersion"]
        .as_str()
        .ok_or("no apiVersion")?
        .to_owned();
    let r = match (api.as_str(), kind.as_str()) {
        ("v1", "Pod") => round_trip::<Pod>(doc),
        ("v1", "Service") => round_trip::<Service>(doc),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(doc),
        ("v1", "Secret") => round_trip::<Secret>(doc),
        ("v1", "Namespace") => round_trip::<Namespace>(doc),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(doc),
        ("v1", "List") => {
            for (i, item) in doc["items"]
                .as_array()
                .ok_or("List without items")?
                .iter()
                .enumerate()
            {
                validate(item).map_err(|e| format!("items[{i}]: {e}"))?;
            }
            Ok(())
        }
        ("apps/v1", "Deployment") => round_trip::<Deployment>(doc),
        ("apps/v1", "StatefulSet") => round_trip::<StatefulSet>(doc),
        ("apps/v1", "DaemonSet") => round_trip::<DaemonSet>(doc),
        ("apps/v1", "ReplicaSet") => round_trip::<ReplicaSet>(doc),
        ("batch/v1", "Job") => round_trip::<Job>(doc),
        ("batch/v1", "CronJob") => round_trip::<CronJob>(doc),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>(doc),
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(doc),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(doc)
        }
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            round_trip::<MutatingWebhookConfiguration>(doc)
        }
        (
            "cert-manager.io/v1" | "monitoring.coreos.com/v1" | "spire.spiffe.io/v1alpha1",
            "Certificate" | "Issuer" | "ClusterIssuer" | "PodMonitor" | "ClusterSPIFFEID",
        ) => {
            doc["metadata"]["name"].as_str().ok_or("no metadata.name")?;
            doc["spec"].as_object().ok_or("no spec")?;
            return Ok(Checked::CustomResource(format!("{api} {kind}")));
        }
        _ => return Err(format!("no schema known for {api} {kind}")),
    };
    r.map(|()| Checked::Schema(format!("{api} {kind}")))
}

/// Parses a multi-document YAML text into JSON values (empty documents dropped).
pub fn docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}
