//! The map as data: what `GET /api/servicemap` returns, what the page draws
//! and what the terminal renderings read. Serializable both ways so that the
//! CLI renders exactly what the agent serves.

use serde::{Deserialize, Serialize};

/// What a node stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A workload (Deployment, ...), from `Endpoint.workloads[0]`.
    Workload,
    /// A pod without a known workload.
    Pod,
    /// A reserved identity: world, host, remote-node, ...
    Reserved,
    /// A security identity without pod or reserved name (e.g. a CIDR identity).
    Identity,
    /// Only an address is known.
    Address,
}

/// One node of the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Unique key: `namespace/name`, `reserved:world`, `identity:N` or `ip:ADDR`.
    pub id: String,
    /// What to print: `namespace/name` for workloads and pods, else the name.
    pub label: String,
    /// Namespace, empty for nodes outside any.
    pub namespace: String,
    /// Workload, pod, reserved identity name or address.
    pub name: String,
    /// What the node stands for.
    pub kind: NodeKind,
    /// Security identity of the first endpoint seen for it.
    pub identity: u32,
}

/// How policy treated an edge's traffic so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeStatus {
    /// No policy denial.
    Forwarded,
    /// Only denials, nothing forwarded: drawn red.
    Denied,
    /// Some traffic denied, some forwarded: drawn orange.
    Mixed,
}

/// One edge: client workload to server workload, by protocol and server port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeView {
    /// Number of the edge for `/api/edges/<id>/flows`; stable while it lives.
    pub id: u64,
    /// Client node id.
    pub source: String,
    /// Server node id.
    pub destination: String,
    /// `HTTP`, `DNS`, `Kafka` for L7 flows; `TCP`, `UDP`, `ICMPv4`, ... else.
    pub protocol: String,
    /// Server port (0 for ICMP).
    pub port: u32,
    /// How policy treated it.
    pub status: EdgeStatus,
    /// Flows since the edge appeared.
    pub flows: u64,
    /// Of which forwarded.
    pub forwarded: u64,
    /// Of which dropped (drop events and L7 denials; policy-verdict
    /// notifications are not counted again).
    pub dropped: u64,
    /// Of the drops, those policy denied.
    pub denied: u64,
    /// HTTP requests answered (counted at the response).
    pub http_requests: u64,
    /// Of which answered with a 5xx status.
    pub http_errors: u64,
    /// Flows per second over the window.
    pub flow_rate: f64,
    /// HTTP requests per second over the window.
    pub request_rate: f64,
    /// Drops per second over the window.
    pub drop_rate: f64,
    /// 5xx responses / responses over the window; absent without responses.
    pub error_ratio: Option<f64>,
    /// Seconds since its last flow.
    pub idle_seconds: u64,
}

/// The whole map at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapView {
    /// Length of the rate window in seconds.
    pub window_seconds: u64,
    /// Nodes, sorted by id.
    pub nodes: Vec<NodeView>,
    /// Edges, sorted by source, destination, protocol and port.
    pub edges: Vec<EdgeView>,
    /// Flows without a source or destination to place.
    pub unplaced_flows: u64,
    /// Edges removed to stay within the bounds.
    pub evicted_edges: u64,
    /// Flows the map missed because it fell behind the observer.
    pub lost_flows: u64,
}

impl MapView {
    /// The label of node `id`, or the id itself if the node is unknown.
    pub fn label<'a>(&'a self, id: &'a str) -> &'a str {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map_or(id, |n| n.label.as_str())
    }
}

/// One recent flow of an edge, as `GET /api/edges/<id>/flows` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowLine {
    /// The flow as `hubble observe` prints it (compact).
    pub line: String,
    /// Verdict name (`FORWARDED`, `DROPPED`, ...), for colouring.
    pub verdict: String,
}

/// Answer of `GET /api/edges/<id>/flows`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeFlows {
    /// The edge.
    pub id: u64,
    /// Its recent flows, oldest first.
    pub flows: Vec<FlowLine>,
}
