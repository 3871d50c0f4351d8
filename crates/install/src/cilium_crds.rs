//! Cilium's two policy CRDs (`cilium.io/v2`), for clusters without Cilium where Myelin is
//! to enforce CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy.
//!
//! The schemas are structural but shallow: `spec`, `specs` and `status` keep unknown
//! fields (`x-kubernetes-preserve-unknown-fields`), so the API server stores any policy
//! and `myelin policy validate` (and the agent) judge its contents. Cilium's own CRDs
//! carry the full schema; where Cilium is installed, use those.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceSubresourceStatus;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceSubresources, CustomResourceValidation,
    JSONSchemaProps, JSONSchemaPropsOrArray,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::labels;

/// An object whose fields the API server keeps as they come.
fn open_object() -> JSONSchemaProps {
    JSONSchemaProps {
        type_: Some("object".to_owned()),
        x_kubernetes_preserve_unknown_fields: Some(true),
        ..JSONSchemaProps::default()
    }
}

fn policy_schema() -> JSONSchemaProps {
    let properties = BTreeMap::from([
        ("spec".to_owned(), open_object()),
        (
            "specs".to_owned(),
            JSONSchemaProps {
                type_: Some("array".to_owned()),
                items: Some(JSONSchemaPropsOrArray::Schema(Box::new(open_object()))),
                ..JSONSchemaProps::default()
            },
        ),
        ("status".to_owned(), open_object()),
    ]);
    JSONSchemaProps {
        type_: Some("object".to_owned()),
        properties: Some(properties),
        ..JSONSchemaProps::default()
    }
}

fn definition(
    kind: &str,
    plural: &str,
    scope: &str,
    short_names: &[&str],
) -> CustomResourceDefinition {
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{plural}.cilium.io")),
            labels: Some(labels::common()),
            ..ObjectMeta::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: "cilium.io".to_owned(),
            names: CustomResourceDefinitionNames {
                kind: kind.to_owned(),
                list_kind: Some(format!("{kind}List")),
                plural: plural.to_owned(),
                singular: Some(kind.to_lowercase()),
                short_names: Some(short_names.iter().map(|s| (*s).to_owned()).collect()),
                categories: Some(vec!["cilium".to_owned(), "ciliumpolicy".to_owned()]),
            },
            scope: scope.to_owned(),
            versions: vec![CustomResourceDefinitionVersion {
                name: "v2".to_owned(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(policy_schema()),
                }),
                subresources: Some(CustomResourceSubresources {
                    status: Some(CustomResourceSubresourceStatus(serde_json::json!({}))),
                    ..CustomResourceSubresources::default()
                }),
                ..CustomResourceDefinitionVersion::default()
            }],
            ..CustomResourceDefinitionSpec::default()
        },
        ..CustomResourceDefinition::default()
    }
}

/// CiliumNetworkPolicy (namespaced) and CiliumClusterwideNetworkPolicy (cluster).
pub fn definitions() -> Vec<CustomResourceDefinition> {
    vec![
        definition(
            "CiliumNetworkPolicy",
            "ciliumnetworkpolicies",
            "Namespaced",
            &["cnp", "ciliumnp"],
        ),
        definition(
            "CiliumClusterwideNetworkPolicy",
            "ciliumclusterwidenetworkpolicies",
            "Cluster",
            &["ccnp"],
        ),
    ]
}
