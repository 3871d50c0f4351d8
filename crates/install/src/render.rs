//! The manifests as one YAML stream, `---` before each document, with a comment above
//! each of the ClusterRole's rules saying who needs it.

use k8s_openapi::api::rbac::v1::ClusterRole;
use serde::Serialize;

use crate::Manifest;
use crate::rbac::Grant;

/// Why a manifest could not be written as YAML.
#[derive(Debug, thiserror::Error)]
#[error("writing {what} as YAML: {source}")]
pub struct RenderError {
    what: String,
    source: serde_saphyr::SerializeError,
}

fn yaml<T: Serialize>(what: &str, value: &T) -> Result<String, RenderError> {
    serde_saphyr::to_string(value).map_err(|source| RenderError {
        what: what.to_owned(),
        source,
    })
}

/// The ClusterRole with its rules written one by one, each under its reason: the typed
/// rule cannot carry a comment, so the list is assembled here. A rule's mapping becomes
/// a list item by prefixing its first line with `- ` and the others with two spaces.
fn cluster_role(role: &ClusterRole, grants: &[Grant]) -> Result<String, RenderError> {
    let without_rules = ClusterRole {
        rules: None,
        ..role.clone()
    };
    let mut out = yaml("the ClusterRole", &without_rules)?;
    out.push_str("rules:\n");
    for grant in grants {
        out.push_str(&format!("# {}\n", grant.reason));
        let rule = yaml("a ClusterRole rule", &grant.rule)?;
        for (index, line) in rule.lines().enumerate() {
            out.push_str(if index == 0 { "- " } else { "  " });
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// `manifests` as a YAML stream under `header` (comment lines, each starting with `#`).
pub fn render(header: &str, manifests: &[Manifest]) -> Result<String, RenderError> {
    let mut out = header.to_owned();
    for manifest in manifests {
        out.push_str("---\n");
        out.push_str(&match manifest {
            Manifest::Namespace(object) => yaml("the Namespace", object)?,
            Manifest::ServiceAccount(object) => yaml("the ServiceAccount", object)?,
            Manifest::ClusterRole { role, grants } => cluster_role(role, grants)?,
            Manifest::ClusterRoleBinding(object) => yaml("the ClusterRoleBinding", object)?,
            Manifest::ConfigMap(object) => yaml("the ConfigMap", object)?,
            Manifest::DaemonSet(object) => yaml("the DaemonSet", object)?,
            Manifest::CustomResourceDefinition(object) => yaml("a CRD", object)?,
        });
    }
    Ok(out)
}
