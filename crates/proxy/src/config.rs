//! The configuration model the agent sends to the proxy.
//!
//! It is shaped like Envoy's listeners, clusters and routes so that Kubernetes Ingress,
//! Gateway API routes and CiliumEnvoyConfig resources can later be translated into the same
//! model as L7 policy. Everything here is plain data (serde, JSON); compiling regexes and
//! checking references happens in [`crate::rules`], once per snapshot.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// One complete, versioned configuration of the proxy.
///
/// The agent sends whole snapshots, never deltas: the proxy either applies a snapshot as a
/// whole (and acknowledges its `version`) or rejects it as a whole and keeps serving the
/// previous one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Monotonic version chosen by the agent; echoed back in `Ack`/`Nack`.
    pub version: u64,
    /// Sockets the proxy listens on.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Named groups of upstream endpoints, referenced by non-transparent listeners.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// L7 policies, at most one per [`PolicyKey`].
    #[serde(default)]
    pub l7_policies: Vec<L7Policy>,
    /// What the proxy knows about the addresses it sees, for L7 events and peer matching.
    #[serde(default)]
    pub identities: Vec<IdentityEntry>,
    /// Lower-case names of the request and response headers copied into L7 events; other
    /// headers are left out so that secrets (cookies, tokens) do not reach the observer.
    /// A response's event also carries its request's `traceparent` and `x-request-id`, when
    /// listed here.
    #[serde(default)]
    pub event_headers: Vec<String>,
}

/// Which side of an endpoint a policy guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic into the endpoint: the endpoint is the connection's (original) destination.
    Ingress,
    /// Traffic out of the endpoint: the endpoint is the connection's source.
    Egress,
}

/// A socket the proxy accepts connections on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listener {
    /// Unique name, used in logs and by [`crate::Proxy::listener_addr`].
    pub name: String,
    /// Address and port to bind. Port 0 picks a free port (tests).
    pub address: SocketAddr,
    /// Where accepted connections go.
    pub upstream: ListenerUpstream,
    /// Which direction of policy applies to the connections of this listener. The datapath
    /// hands ingress and egress redirects to different listeners, as Cilium does.
    pub direction: Direction,
    /// What to do with a connection for which the snapshot has no L7 policy.
    #[serde(default)]
    pub missing_policy: MissingPolicy,
    /// Upstream connections keep the client's address as their source (as Envoy's
    /// `original_src` filter does), so the server sees who is calling. The socket then
    /// needs `IP_TRANSPARENT`, and the node must hand the server's replies back to the proxy
    /// (the datapath does for servers on this node). Off: the node's address.
    #[serde(default)]
    pub original_source: bool,
}

/// The upstream of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerUpstream {
    /// TPROXY-style: the original destination is the accepted socket's local address
    /// (`getsockname()`), as handed over by `bpf_sk_assign`. The listener socket gets
    /// `IP_TRANSPARENT` / `IPV6_TRANSPARENT`, which needs `CAP_NET_ADMIN`.
    Transparent,
    /// Plain reverse proxy: every connection goes to an endpoint of the named cluster, which
    /// then plays the role of the original destination.
    Cluster(String),
}

/// Behaviour when no [`L7Policy`] exists for a connection's [`PolicyKey`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingPolicy {
    /// Answer every request with 403: a redirected connection without policy means the
    /// proxy's view is behind the datapath's, and failing closed is the safe side.
    #[default]
    Deny,
    /// Forward every request (plain reverse proxy, visibility only).
    Allow,
}

/// A named set of upstream endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Unique name referenced by [`ListenerUpstream::Cluster`].
    pub name: String,
    /// Endpoints, chosen round-robin per connection.
    pub endpoints: Vec<SocketAddr>,
}

/// The key of an L7 policy.
///
/// `endpoint` is always the local endpoint the policy belongs to, `port` always the
/// destination port of the connection:
/// - ingress: `endpoint` = the connection's original destination IP (the server pod),
/// - egress: `endpoint` = the connection's source IP (the client pod).
///
/// So the same key shape serves both directions, and one pod's ingress and egress rules for
/// the same port never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyKey {
    /// The local endpoint's IP address.
    pub endpoint: IpAddr,
    /// The destination port of the connection.
    pub port: u16,
    /// The side of the endpoint the policy guards.
    pub direction: Direction,
}

/// The L7 rules of one endpoint, port and direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct L7Policy {
    /// Which connections the rules apply to.
    #[serde(flatten)]
    pub key: PolicyKey,
    /// HTTP rules, ORed. An empty list allows every request (visibility only), as in Cilium.
    #[serde(default)]
    pub http: Vec<HttpRule>,
}

/// One HTTP rule: every field that is set must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRule {
    /// Security identities of the remote peer this rule applies to; empty = any peer.
    /// The remote peer is the source for ingress and the destination for egress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<u32>,
    /// Regex that must match the whole method (anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Regex that must match the whole path, query included, as Envoy's `:path` (anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Regex that must match the whole host (`Host` / `:authority`, port included) (anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Headers that must be present (`"X-Foo"`) or have an exact value (`"X-Foo: bar"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Header matches with an optional action on mismatch (Cilium's `headerMatches`).
    #[serde(
        default,
        rename = "headerMatches",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub header_matches: Vec<HeaderMatch>,
}

/// A header match with an optional action on mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// Expected exact value; empty means "present with any value".
    #[serde(default)]
    pub value: String,
    /// What to do when the header is absent or has another value. Without an action the
    /// header must match for the rule to match; with one the rule still matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<MismatchAction>,
}

/// Cilium's mismatch actions; the request stays allowed for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MismatchAction {
    /// Only report the mismatch (in the L7 event and the log).
    Log,
    /// Add a header with the expected value (existing values are kept).
    Add,
    /// Remove every header of that name.
    Delete,
    /// Replace every header of that name by one with the expected value.
    Replace,
}

/// What the proxy knows about one IP address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityEntry {
    /// The address.
    pub ip: IpAddr,
    /// Numeric security identity (Cilium's numbering).
    pub identity: u32,
    /// Security-relevant labels, `source:key=value` as Hubble prints them.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Namespace of the pod, if the address is a pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the pod, if the address is a pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}
