//! Myelin's own custom resources, group `myelin.io`, version `v1alpha1`: what the
//! agents of a Kubernetes cluster keep cluster-wide, as the etcd store keeps it in the
//! lab (`myelin-store`'s key layout, one resource per key family). Being Myelin's own
//! group, they live beside Cilium's CRDs, or without them.
//!
//! | kind | scope | name | what |
//! | --- | --- | --- | --- |
//! | `MyelinNode` | cluster | the node's | underlay addresses, pod CIDRs, tunnel endpoint |
//! | `MyelinEndpoint` | namespaced | the pod's | addresses, identity, node, named ports |
//! | `MyelinIdentity` | cluster | the number | the label set the number stands for |

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of Myelin's resources.
pub const GROUP: &str = "myelin.io";

/// The version of the group this crate speaks.
pub const VERSION: &str = "v1alpha1";

/// A node of the cluster as other nodes need it (the store's `nodes/<node>`).
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "myelin.io",
    version = "v1alpha1",
    kind = "MyelinNode",
    plural = "myelinnodes",
    shortname = "mn",
    printcolumn = r#"{"name":"Tunnel endpoint","type":"string","jsonPath":".spec.tunnelEndpoint"}"#,
    printcolumn = r#"{"name":"Pod CIDRs","type":"string","jsonPath":".spec.podCIDRs"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MyelinNodeSpec {
    /// The node's underlay addresses (IPv4 or IPv6).
    pub addresses: Vec<String>,
    /// Its pod CIDRs, at most one per family (from `Node.spec.podCIDRs`).
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    /// Where other nodes send its pods' encapsulated traffic (tunnel routing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_endpoint: Option<String>,
    /// Where its Hubble observer API listens (`host:port`), for the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer_address: Option<String>,
}

/// A pod as other nodes' datapaths need it: its addresses and security identity (the
/// store's `endpoints/<ip>`, one resource per pod). Owned by its pod, so it goes with it.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "myelin.io",
    version = "v1alpha1",
    kind = "MyelinEndpoint",
    plural = "myelinendpoints",
    shortname = "mep",
    namespaced,
    printcolumn = r#"{"name":"Identity","type":"integer","jsonPath":".spec.identity"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MyelinEndpointSpec {
    /// The pod's addresses, one per family.
    pub addresses: Vec<String>,
    /// Its security identity (a `MyelinIdentity`'s number).
    #[schemars(range(min = 1, max = 65535))]
    pub identity: u32,
    /// The node it runs on.
    pub node: String,
    /// Named TCP container ports (`http` → 80), for policies that name ports.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_ports: BTreeMap<String, u16>,
    /// Named UDP container ports (`dns` → 53).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_udp_ports: BTreeMap<String, u16>,
}

/// A security identity: the resource's name is its number, the spec its label set. Agents
/// create one with create-if-absent (a name taken by another label set is a conflict the
/// loser resolves by reading the winner), as they bind numbers in etcd by transaction.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "myelin.io",
    version = "v1alpha1",
    kind = "MyelinIdentity",
    plural = "myelinidentities",
    shortname = "mid",
    printcolumn = r#"{"name":"Labels","type":"string","jsonPath":".spec.labels"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MyelinIdentitySpec {
    /// The labels, `source:key=value`, sorted by key (`k8s:app=deathstar`).
    pub labels: Vec<String>,
}

/// Every custom resource definition of Myelin's group, in the order `myelin install`
/// prints them.
pub fn definitions()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt as _;
    vec![
        MyelinNode::crd(),
        MyelinEndpoint::crd(),
        MyelinIdentity::crd(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_definition_names_its_group_version_and_scope() {
        let scopes: Vec<(String, String, String)> = definitions()
            .into_iter()
            .map(|crd| {
                let version = &crd.spec.versions[0];
                assert_eq!(crd.spec.group, GROUP);
                assert_eq!(version.name, VERSION);
                assert!(version.served && version.storage);
                assert!(
                    version.schema.is_some(),
                    "{} has no schema",
                    crd.spec.names.kind
                );
                (crd.spec.names.kind, crd.spec.names.plural, crd.spec.scope)
            })
            .collect();
        assert_eq!(
            scopes,
            [
                ("MyelinNode".into(), "myelinnodes".into(), "Cluster".into()),
                (
                    "MyelinEndpoint".into(),
                    "myelinendpoints".into(),
                    "Namespaced".into()
                ),
                (
                    "MyelinIdentity".into(),
                    "myelinidentities".into(),
                    "Cluster".into()
                ),
            ]
        );
    }

    #[test]
    fn an_endpoint_reads_as_the_api_server_writes_it() {
        let endpoint: MyelinEndpoint = serde_json::from_value(serde_json::json!({
            "apiVersion": "myelin.io/v1alpha1",
            "kind": "MyelinEndpoint",
            "metadata": {"name": "deathstar-1", "namespace": "default", "resourceVersion": "42"},
            "spec": {
                "addresses": ["10.244.1.5", "fd00:10:244:1::5"],
                "identity": 1234,
                "node": "node1",
                "namedPorts": {"http": 80}
            }
        }))
        .expect("decodes");
        assert_eq!(endpoint.spec.identity, 1234);
        assert_eq!(endpoint.spec.named_ports.get("http"), Some(&80));
        assert!(endpoint.spec.named_udp_ports.is_empty());
    }
}
