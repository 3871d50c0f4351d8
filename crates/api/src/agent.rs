//! The agent's local API: the requests the lab, the CNI plugin (and later
//! the Kubernetes watcher) and the CLI send a node's agent, and its
//! answers.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

pub use crate::cni::{AttachmentKey, CniAdd, CniAttachment, CniReadiness, PodMetadata};
pub use myelin_model::workload::{Protocol, UnsupportedProtocol};

/// A pod on this node, as the CNI plugin (or the lab) set it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// The pod's service account (`spec.serviceAccountName`); `None` is the
    /// namespace's `default`. Absent in requests and saved state of builds
    /// before service accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Host-side veth in the node's network namespace.
    pub ifname: String,
    /// IPv4 address of the pod.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address of the pod.
    pub ipv6: Option<Ipv6Addr>,
    /// MAC address of the pod's interface (`aa:bb:cc:dd:ee:ff`). With it
    /// the datapath hands packets from other pods of the node straight into
    /// this pod; without it (older callers and stored state) they go
    /// through the node's IP stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Named container ports.
    #[serde(default)]
    pub ports: Vec<NamedPort>,
    /// Whether the pod is ready to serve; only ready pods back services.
    pub ready: bool,
}

/// A container port with a name, for services' and policies' references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    /// The name, if the manifest gave one.
    pub name: Option<String>,
    /// The port.
    pub port: u16,
    /// `TCP` or `UDP`; a request naming `SCTP` is refused.
    #[serde(deserialize_with = "supported_protocol")]
    pub protocol: Protocol,
}

/// A service with the cluster IPs allocated for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Cluster IPs, one per family.
    pub cluster_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePortSpec>,
    /// Selector of backend pods in the same namespace; none means no backends.
    pub selector: Option<BTreeMap<String, String>>,
    /// ClientIP session affinity timeout in seconds (`sessionAffinity:
    /// ClientIP`); `None`: no affinity. Absent in requests and saved state of
    /// builds before affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout_s: Option<u32>,
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortSpec {
    /// Port name.
    pub name: Option<String>,
    /// The port on the cluster IP.
    pub port: u16,
    /// The backend port: a number or the name of a container port.
    pub target_port: TargetPort,
    /// `TCP` or `UDP`; a request naming `SCTP` is refused.
    #[serde(deserialize_with = "supported_protocol")]
    pub protocol: Protocol,
}

/// Reads a port's protocol, refusing those the datapath cannot carry (SCTP),
/// so that no part of the agent ever meets one.
fn supported_protocol<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Protocol, D::Error> {
    let protocol = Protocol::deserialize(deserializer)?;
    protocol
        .supported()
        .map_err(|e| serde::de::Error::custom(e.to_string()))
}

/// A service's backend port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// The name of a container port.
    Name(String),
}

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Creates or updates an endpoint and attaches the datapath to it.
    EndpointUpsert(EndpointSpec),
    /// Removes an endpoint and detaches the datapath from it.
    EndpointDelete {
        /// Namespace.
        namespace: String,
        /// Pod name.
        pod: String,
    },
    /// Creates or updates a service.
    ServiceUpsert(ServiceSpec),
    /// Removes a service.
    ServiceDelete {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The agent's state.
    Status,
    /// Applies resources the agent resolves policy from (policies,
    /// namespaces for their labels, services for `toServices`). Each is
    /// accepted or rejected on its own: one bad policy never blocks the rest.
    ResourcesApply {
        /// Parsed documents.
        documents: Vec<myelin_model::Document>,
    },
    /// Removes resources by key.
    ResourcesDelete {
        /// What to remove.
        keys: Vec<myelin_model::ResourceKey>,
    },
    /// The resolved policy of one endpoint, or of all.
    PolicyGet {
        /// `namespace/pod`; all endpoints when absent.
        endpoint: Option<(String, String)>,
        /// JSON instead of text.
        json: bool,
    },
    /// The verdict of a flow and the rules that decide it.
    PolicyExplain(ExplainRequest),
    /// A kernel map, read back (`myelin bpf`).
    Bpf {
        /// Which map.
        table: BpfTable,
        /// `namespace/pod` whose policy to show (for the policy map).
        endpoint: Option<(String, String)>,
        /// JSON instead of text.
        json: bool,
    },
    /// CNI ADD: wires the container, registers its pod as an endpoint and
    /// answers once the endpoint's policy is in the kernel.
    CniAdd(CniAdd),
    /// CNI CHECK: whether the attachment is as ADD left it.
    CniCheck(AttachmentKey),
    /// CNI DEL: removes the attachment; one that does not exist is done.
    CniDel(AttachmentKey),
    /// CNI GC: removes every attachment but these.
    CniGc {
        /// The attachments the runtime still has.
        valid: Vec<AttachmentKey>,
    },
    /// CNI STATUS: whether ADDs can be served.
    CniStatus,
    /// The control plane's word on pods (their labels): created or updated.
    PodsUpsert {
        /// The pods.
        pods: Vec<PodMetadata>,
    },
    /// The control plane's word on pods: gone.
    PodsDelete {
        /// `(namespace, name)` of each.
        pods: Vec<(String, String)>,
    },
}

/// Which kernel map `myelin bpf` reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BpfTable {
    /// Endpoints (ifindex, id, identity, addresses, enforcement).
    Endpoints,
    /// The ipcache (prefix → identity).
    Ipcache,
    /// The policy of one endpoint.
    Policy,
    /// Services and backends.
    Services,
    /// Conntrack entries.
    Conntrack,
}

/// A flow to explain, as the CLI gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainRequest {
    /// Source: `pod`, `namespace/pod` or an IP address.
    pub from: String,
    /// Destination: `pod`, `namespace/pod` or an IP address.
    pub to: String,
    /// The flow's protocol.
    pub protocol: ExplainProtocol,
    /// Destination port (ICMP type for ICMP).
    pub port: u16,
    /// HTTP method, to evaluate L7 rules.
    pub http_method: Option<String>,
    /// HTTP path, to evaluate L7 rules.
    pub http_path: Option<String>,
    /// Manifests not applied yet: explain as if they were (what-if).
    pub proposed: Vec<myelin_model::Document>,
    /// JSON instead of text.
    pub json: bool,
}

/// The protocol of a flow to explain: what policy can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExplainProtocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// ICMP; the port is the ICMP type.
    #[serde(rename = "ICMP")]
    Icmp,
    /// ICMPv6; the port is the ICMPv6 type.
    #[serde(rename = "ICMPv6")]
    Icmpv6,
    /// Any protocol.
    #[serde(rename = "ANY")]
    Any,
}

/// A protocol name `myelin policy explain` does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not a protocol policy matches on.
    #[error("unknown protocol {0:?}; use TCP, UDP, ICMP, ICMPv6 or ANY")]
    Unknown(String),
    /// A protocol this kernel cannot carry.
    #[error(transparent)]
    Unsupported(#[from] UnsupportedProtocol),
}

impl std::str::FromStr for ExplainProtocol {
    type Err = ProtocolError;

    /// Reads a protocol name in any case, as the CLI accepts it.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "ICMP" => Ok(Self::Icmp),
            "ICMPV6" => Ok(Self::Icmpv6),
            "ANY" => Ok(Self::Any),
            "SCTP" => Err(UnsupportedProtocol(Protocol::Sctp).into()),
            _ => Err(ProtocolError::Unknown(text.to_string())),
        }
    }
}

/// What became of one applied resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceOutcome {
    /// The resource.
    pub key: myelin_model::ResourceKey,
    /// Why it was rejected; `None` when it is in force.
    pub error: Option<String>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// Done.
    Ok,
    /// An endpoint after an upsert.
    Endpoint(EndpointStatus),
    /// The agent's state.
    Status(AgentStatus),
    /// The outcome of each applied resource.
    Resources {
        /// One per document, in order.
        outcomes: Vec<ResourceOutcome>,
    },
    /// Rendered text (or JSON) for the CLI to print.
    Text {
        /// The text.
        text: String,
    },
    /// A container's attachment (CNI ADD, CHECK).
    CniAttachment(CniAttachment),
    /// Whether ADDs can be served (CNI STATUS).
    CniReadiness(CniReadiness),
    /// Attachments a CNI GC removed.
    CniCollected {
        /// Their keys.
        removed: Vec<AttachmentKey>,
    },
}

/// An endpoint as the agent runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// The agent's endpoint id.
    pub id: u32,
    /// Security identity.
    pub identity: u32,
    /// Whether ingress policy is enforced.
    pub ingress_enforced: bool,
    /// Whether egress policy is enforced.
    pub egress_enforced: bool,
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Host-side veth.
    pub ifname: String,
    /// Its ifindex in the node.
    pub ifindex: u32,
    /// Addresses.
    pub addresses: Vec<IpAddr>,
    /// Ready to serve.
    pub ready: bool,
    /// Packets seen leaving the pod.
    pub packets_from: u64,
    /// Packets seen entering the pod.
    pub packets_to: u64,
}

/// A service with its current backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Cluster IPs.
    pub cluster_ips: Vec<IpAddr>,
    /// `port/PROTO` entries.
    pub ports: Vec<String>,
    /// `ip:port` of ready backends.
    pub backends: Vec<String>,
}

/// Counters of the kernel's event ring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounters {
    /// Events read.
    pub seen: u64,
    /// Events the kernel could not write (ring full).
    pub lost: u64,
    /// Trace events at to-stack (leaving pods).
    pub to_stack: u64,
    /// Trace events at to-endpoint (entering pods).
    pub to_endpoint: u64,
    /// Drop events.
    pub drops: u64,
}

/// The agent's state, as `Status` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The node's name.
    pub node: String,
    /// Endpoints on the node.
    pub endpoints: Vec<EndpointStatus>,
    /// Services.
    pub services: Vec<ServiceStatus>,
    /// Names the DNS responder answers.
    pub dns_names: usize,
    /// Policies in force.
    pub policies: Vec<String>,
    /// Kernel events.
    pub events: EventCounters,
}

/// Sends one request to the agent at `socket`.
pub async fn call(socket: &Path, request: &Request) -> Result<Response, crate::ClientError> {
    crate::call(socket, request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT: &str = r#"{"namespace":"default","pod":"web","labels":{},"ifname":"veth1",
        "ipv4":"10.244.1.2","ipv6":null,"ports":[{"name":"http","port":80,"protocol":"TCP"},
        {"name":"dns","port":53,"protocol":"UDP"}],"ready":true}"#;

    #[test]
    fn protocols_keep_the_json_kubernetes_spells() {
        let spec: EndpointSpec = serde_json::from_str(ENDPOINT).expect("an endpoint");
        let protocols: Vec<Protocol> = spec.ports.iter().map(|p| p.protocol).collect();
        assert_eq!(protocols, [Protocol::Tcp, Protocol::Udp]);
        let json = serde_json::to_string(&spec).expect("json");
        assert!(json.contains(r#""protocol":"UDP""#), "{json}");
        let back: EndpointSpec = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, spec);
    }

    #[test]
    fn an_endpoint_saved_before_service_accounts_loads_without_one() {
        let spec: EndpointSpec = serde_json::from_str(ENDPOINT).expect("an endpoint");
        assert_eq!(spec.service_account, None);
        let with = EndpointSpec {
            service_account: Some("empire".into()),
            ..spec
        };
        let json = serde_json::to_string(&with).expect("json");
        let back: EndpointSpec = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back.service_account.as_deref(), Some("empire"));
    }

    #[test]
    fn a_port_of_sctp_is_refused_with_the_reason() {
        let sctp = ENDPOINT.replace(r#""protocol":"UDP""#, r#""protocol":"SCTP""#);
        let error = serde_json::from_str::<EndpointSpec>(&sctp).expect_err("SCTP refused");
        assert!(
            error
                .to_string()
                .contains("SCTP is not supported (this kernel has no SCTP)"),
            "{error}"
        );
        let service = r#"{"namespace":"default","name":"s","cluster_ips":[],"selector":null,
            "ports":[{"name":null,"port":80,"target_port":{"number":80},"protocol":"SCTP"}]}"#;
        let error = serde_json::from_str::<ServiceSpec>(service).expect_err("SCTP refused");
        assert!(error.to_string().contains("use TCP or UDP"), "{error}");
    }

    #[test]
    fn explain_protocols_parse_in_any_case_and_refuse_the_rest() {
        assert_eq!("tcp".parse(), Ok(ExplainProtocol::Tcp));
        assert_eq!("ICMPv6".parse(), Ok(ExplainProtocol::Icmpv6));
        assert_eq!("any".parse(), Ok(ExplainProtocol::Any));
        assert_eq!(
            "sctp".parse::<ExplainProtocol>(),
            Err(ProtocolError::Unsupported(UnsupportedProtocol(
                Protocol::Sctp
            )))
        );
        let unknown = "gre".parse::<ExplainProtocol>().expect_err("unknown");
        assert_eq!(
            unknown.to_string(),
            r#"unknown protocol "gre"; use TCP, UDP, ICMP, ICMPv6 or ANY"#
        );
        let json = serde_json::to_string(&ExplainProtocol::Icmpv6).expect("json");
        assert_eq!(json, r#""ICMPv6""#);
    }
}
