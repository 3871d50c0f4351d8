//! The aggregation itself: flows in, workloads and edges with counters out.
//!
//! Time is passed in as a [`Duration`] since an origin the caller picks, so
//! that the same flows at the same instants always give the same map (tests
//! need no clock; the shared handle uses tokio's clock).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::flows;
use crate::printer::format_identity;
use crate::proto::flow::{DropReason, Endpoint, Flow, Verdict, layer4, layer7};

use super::view::{EdgeStatus, EdgeView, MapView, NodeKind, NodeView};

/// Shortest rate window: rates are kept per second.
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Longest rate window: every edge holds one bucket per second of it.
const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// Limits and windows of a [`ServiceMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceMapConfig {
    /// Rates are computed over this sliding window (whole seconds, from one
    /// second to an hour).
    pub window: Duration,
    /// An edge that saw no flow for this long is removed, and with it the
    /// workloads no other edge references.
    pub idle_timeout: Duration,
    /// At most this many workloads; the least recently active edges are
    /// evicted to make room.
    pub max_nodes: usize,
    /// At most this many edges; the least recently active one is evicted to
    /// make room.
    pub max_edges: usize,
    /// Recent flows kept per edge.
    pub flows_per_edge: usize,
}

impl Default for ServiceMapConfig {
    /// A minute of rates, five minutes of idle life, and bounds that keep the
    /// worst case (every edge full of recent flows) to a few tens of MB.
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            max_nodes: 1000,
            max_edges: 2000,
            flows_per_edge: 20,
        }
    }
}

/// Counters of one edge, over its life or over one second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    flows: u64,
    forwarded: u64,
    dropped: u64,
    denied: u64,
    http_requests: u64,
    http_errors: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.flows += other.flows;
        self.forwarded += other.forwarded;
        self.dropped += other.dropped;
        self.denied += other.denied;
        self.http_requests += other.http_requests;
        self.http_errors += other.http_errors;
    }

    /// What one flow contributes.
    fn of(flow: &Flow) -> Self {
        let event_type = flow.event_type.as_ref().map_or(0, |e| e.r#type);
        let http = match flow.l7.as_ref() {
            Some(l7) => match &l7.record {
                Some(layer7::Record::Http(http)) => Some((l7.r#type, http.code)),
                _ => None,
            },
            None => None,
        };
        // A policy-verdict notification accompanies the drop event of the
        // same packet; counting both would report every denied packet twice.
        let dropped = flow.verdict == Verdict::Dropped as i32
            && event_type != flows::MESSAGE_TYPE_POLICY_VERDICT;
        let policy_reason = [DropReason::PolicyDenied, DropReason::PolicyDeny]
            .iter()
            .any(|r| *r as i32 == flow.drop_reason_desc);
        // The proxy denies L7 requests; its access log says so by the verdict.
        let denied = dropped && (policy_reason || event_type == flows::MESSAGE_TYPE_ACCESS_LOG);
        // Requests are counted at their response, which carries the status
        // (as hubble_http_requests_total does).
        let response =
            http.filter(|(kind, _)| *kind == crate::proto::flow::L7FlowType::Response as i32);
        Self {
            flows: 1,
            forwarded: u64::from(flow.verdict == Verdict::Forwarded as i32),
            dropped: u64::from(dropped),
            denied: u64::from(denied),
            http_requests: u64::from(response.is_some()),
            http_errors: u64::from(response.is_some_and(|(_, code)| code >= 500)),
        }
    }
}

/// One second of counters in the sliding window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    counts: Counts,
}

/// Identity of an edge: who talks to whom, how, on which port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct EdgeKey {
    source: String,
    destination: String,
    protocol: String,
    port: u32,
}

#[derive(Debug)]
struct Edge {
    id: u64,
    key: EdgeKey,
    first_seen: Duration,
    last_seen: Duration,
    total: Counts,
    /// Ring of per-second buckets, indexed by second modulo its length.
    buckets: Vec<Bucket>,
    recent: VecDeque<Arc<Flow>>,
}

#[derive(Debug)]
struct Node {
    view: NodeView,
    /// Edges that reference this node; it goes when the last one goes.
    edges: usize,
}

/// Totals that tell the reader what the map could not show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapCounters {
    /// Flows that had no source or destination to place on the map.
    pub unplaced_flows: u64,
    /// Edges removed to stay within the bounds (not by idle expiry).
    pub evicted_edges: u64,
    /// Flows the map never saw because its reader fell behind the observer.
    pub lost_flows: u64,
}

/// A live map of workloads and the traffic between them, built from flows.
///
/// Memory is bounded by [`ServiceMapConfig`]: edges and nodes are capped, the
/// least recently active edges make room for new ones, idle edges expire.
#[derive(Debug)]
pub struct ServiceMap {
    config: ServiceMapConfig,
    nodes: BTreeMap<String, Node>,
    edges: HashMap<u64, Edge>,
    ids: HashMap<EdgeKey, u64>,
    /// Edges by last activity, oldest first: eviction and expiry read its front.
    by_activity: BTreeSet<(Duration, u64)>,
    next_id: u64,
    counters: MapCounters,
}

impl ServiceMap {
    /// An empty map.
    pub fn new(config: ServiceMapConfig) -> Self {
        let config = ServiceMapConfig {
            window: config.window.clamp(MIN_WINDOW, MAX_WINDOW),
            max_nodes: config.max_nodes.max(2),
            max_edges: config.max_edges.max(1),
            ..config
        };
        Self {
            config,
            nodes: BTreeMap::new(),
            edges: HashMap::new(),
            ids: HashMap::new(),
            by_activity: BTreeSet::new(),
            next_id: 1,
            counters: MapCounters::default(),
        }
    }

    /// The configuration in force (with bounds raised to their minimums).
    pub fn config(&self) -> &ServiceMapConfig {
        &self.config
    }

    /// What the map dropped or could not place so far.
    pub fn counters(&self) -> MapCounters {
        self.counters
    }

    /// Notes that `count` flows never reached the map.
    pub fn record_lost(&mut self, count: u64) {
        self.counters.lost_flows += count;
    }

    /// Adds one flow seen at `now`.
    pub fn record(&mut self, flow: Arc<Flow>, now: Duration) {
        self.expire(now);
        let Some((source, destination)) = placed(&flow) else {
            self.counters.unplaced_flows += 1;
            return;
        };
        let (protocol, port) = protocol_port(&flow);
        let key = EdgeKey {
            source: source.id.clone(),
            destination: destination.id.clone(),
            protocol,
            port,
        };
        let id = match self.ids.get(&key) {
            Some(id) => *id,
            None => self.insert_edge(key, source, destination, now),
        };
        let window = self.window_seconds();
        let flows_per_edge = self.config.flows_per_edge;
        let Some(edge) = self.edges.get_mut(&id) else {
            return;
        };
        self.by_activity.remove(&(edge.last_seen, id));
        edge.last_seen = edge.last_seen.max(now);
        self.by_activity.insert((edge.last_seen, id));

        let counts = Counts::of(&flow);
        edge.total.add(&counts);
        let second = now.as_secs();
        // Window length fits in usize: it was a Vec length.
        let slot = (second % window) as usize;
        if let Some(bucket) = edge.buckets.get_mut(slot) {
            if bucket.second != second {
                *bucket = Bucket {
                    second,
                    counts: Counts::default(),
                };
            }
            bucket.counts.add(&counts);
        }
        if flows_per_edge > 0 {
            if edge.recent.len() >= flows_per_edge {
                edge.recent.pop_front();
            }
            edge.recent.push_back(flow);
        }
    }

    fn window_seconds(&self) -> u64 {
        self.config.window.as_secs().max(1)
    }

    fn insert_edge(
        &mut self,
        key: EdgeKey,
        source: NodeView,
        destination: NodeView,
        now: Duration,
    ) -> u64 {
        while self.edges.len() >= self.config.max_edges && self.evict_oldest() {}
        // Recounted after every eviction: an eviction may remove a node this
        // edge was about to reuse.
        let missing = |map: &Self| {
            [&source.id, &destination.id]
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|id| !map.nodes.contains_key(*id))
                .count()
        };
        while self.nodes.len() + missing(self) > self.config.max_nodes && self.evict_oldest() {}
        let id = self.next_id;
        self.next_id += 1;
        for node in [source, destination] {
            self.nodes
                .entry(node.id.clone())
                .or_insert(Node {
                    view: node,
                    edges: 0,
                })
                .edges += 1;
        }
        // At most MAX_WINDOW seconds: fits any usize.
        let window = usize::try_from(self.window_seconds()).unwrap_or(1);
        self.ids.insert(key.clone(), id);
        self.by_activity.insert((now, id));
        self.edges.insert(
            id,
            Edge {
                id,
                key,
                first_seen: now,
                last_seen: now,
                total: Counts::default(),
                buckets: vec![Bucket::default(); window],
                recent: VecDeque::new(),
            },
        );
        id
    }

    /// Evicts the least recently active edge; false if there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some(&(_, id)) = self.by_activity.first() else {
            return false;
        };
        self.remove_edge(id);
        self.counters.evicted_edges += 1;
        true
    }

    fn remove_edge(&mut self, id: u64) {
        let Some(edge) = self.edges.remove(&id) else {
            return;
        };
        self.by_activity.remove(&(edge.last_seen, id));
        self.ids.remove(&edge.key);
        for node_id in [&edge.key.source, &edge.key.destination] {
            if let Some(node) = self.nodes.get_mut(node_id) {
                node.edges = node.edges.saturating_sub(1);
                if node.edges == 0 {
                    self.nodes.remove(node_id);
                }
            }
        }
    }

    /// Removes edges idle for longer than the idle timeout at `now`.
    pub fn expire(&mut self, now: Duration) {
        while let Some(&(last_seen, id)) = self.by_activity.first() {
            if now.saturating_sub(last_seen) <= self.config.idle_timeout {
                break;
            }
            self.remove_edge(id);
        }
    }

    /// The map as the page and the terminal show it, at `now`: nodes sorted by
    /// id, edges by source, destination, protocol and port.
    pub fn view(&self, now: Duration) -> MapView {
        let window = self.window_seconds();
        let mut edges: Vec<&Edge> = self
            .edges
            .values()
            .filter(|e| now.saturating_sub(e.last_seen) <= self.config.idle_timeout)
            .collect();
        edges.sort_by(|a, b| a.key.cmp(&b.key));
        let edges: Vec<EdgeView> = edges
            .into_iter()
            .map(|e| edge_view(e, now, window))
            .collect();
        let referenced: BTreeSet<&str> = edges
            .iter()
            .flat_map(|e| [e.source.as_str(), e.destination.as_str()])
            .collect();
        let nodes = self
            .nodes
            .values()
            .filter(|n| referenced.contains(n.view.id.as_str()))
            .map(|n| n.view.clone())
            .collect();
        MapView {
            window_seconds: window,
            nodes,
            edges,
            unplaced_flows: self.counters.unplaced_flows,
            evicted_edges: self.counters.evicted_edges,
            lost_flows: self.counters.lost_flows,
        }
    }

    /// The recent flows of edge `id`, oldest first; `None` if there is no such edge.
    pub fn edge_flows(&self, id: u64) -> Option<Vec<Arc<Flow>>> {
        self.edges
            .get(&id)
            .map(|e| e.recent.iter().cloned().collect())
    }
}

fn edge_view(edge: &Edge, now: Duration, window: u64) -> EdgeView {
    let now_second = now.as_secs();
    let oldest = now_second.saturating_sub(window - 1);
    let mut recent = Counts::default();
    for bucket in &edge.buckets {
        if bucket.second >= oldest && bucket.second <= now_second {
            recent.add(&bucket.counts);
        }
    }
    // A young edge is measured over its life, not the whole window, so that
    // its first seconds do not read as a fraction of their real rate.
    let age = now_second.saturating_sub(edge.first_seen.as_secs()) + 1;
    // Counts and windows are far below 2^53: the conversions are exact.
    #[allow(clippy::cast_precision_loss)]
    let seconds = age.min(window) as f64;
    #[allow(clippy::cast_precision_loss)]
    let rate = |n: u64| n as f64 / seconds;
    #[allow(clippy::cast_precision_loss)]
    let error_ratio =
        (recent.http_requests > 0).then(|| recent.http_errors as f64 / recent.http_requests as f64);
    let status = if edge.total.denied == 0 {
        EdgeStatus::Forwarded
    } else if edge.total.forwarded == 0 {
        EdgeStatus::Denied
    } else {
        EdgeStatus::Mixed
    };
    EdgeView {
        id: edge.id,
        source: edge.key.source.clone(),
        destination: edge.key.destination.clone(),
        protocol: edge.key.protocol.clone(),
        port: edge.key.port,
        status,
        flows: edge.total.flows,
        forwarded: edge.total.forwarded,
        dropped: edge.total.dropped,
        denied: edge.total.denied,
        http_requests: edge.total.http_requests,
        http_errors: edge.total.http_errors,
        flow_rate: rate(recent.flows),
        request_rate: rate(recent.http_requests),
        drop_rate: rate(recent.dropped),
        error_ratio,
        idle_seconds: now.saturating_sub(edge.last_seen).as_secs(),
    }
}

/// Client and server of a flow: a reply travels from server to client, so
/// it is turned around to land on the edge of its request.
fn placed(flow: &Flow) -> Option<(NodeView, NodeView)> {
    let ip = flow.ip.as_ref();
    let source = node_of(
        flow.source.as_ref(),
        flow.source_service.as_ref(),
        ip.map(|i| i.source.as_str()),
    )?;
    let destination = node_of(
        flow.destination.as_ref(),
        flow.destination_service.as_ref(),
        ip.map(|i| i.destination.as_str()),
    )?;
    Some(if flow.is_reply == Some(true) {
        (destination, source)
    } else {
        (source, destination)
    })
}

/// The edge's protocol (the L7 one if any, else L4) and server port.
fn protocol_port(flow: &Flow) -> (String, u32) {
    let reply = flow.is_reply == Some(true);
    let (l4, port) = match flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(t)) => (
            "TCP",
            if reply {
                t.source_port
            } else {
                t.destination_port
            },
        ),
        Some(layer4::Protocol::Udp(u)) => (
            "UDP",
            if reply {
                u.source_port
            } else {
                u.destination_port
            },
        ),
        Some(layer4::Protocol::Sctp(s)) => (
            "SCTP",
            if reply {
                s.source_port
            } else {
                s.destination_port
            },
        ),
        Some(layer4::Protocol::IcmPv4(_)) => ("ICMPv4", 0),
        Some(layer4::Protocol::IcmPv6(_)) => ("ICMPv6", 0),
        None => ("IP", 0),
    };
    let protocol = match flow.l7.as_ref().and_then(|l| l.record.as_ref()) {
        Some(layer7::Record::Http(_)) => "HTTP",
        Some(layer7::Record::Dns(_)) => "DNS",
        Some(layer7::Record::Kafka(_)) => "Kafka",
        None => l4,
    };
    (protocol.to_string(), port)
}

/// Cilium's name of a reserved identity ("world", "host", ...), if it is one.
fn reserved_name(endpoint: &Endpoint) -> Option<String> {
    if let Some(name) = endpoint
        .labels
        .iter()
        .find_map(|l| l.strip_prefix("reserved:"))
    {
        return Some(name.split('=').next().unwrap_or(name).to_string());
    }
    let text = format_identity(endpoint.identity);
    let name = text.strip_prefix('(')?.strip_suffix(')')?;
    (!name.starts_with("ID:")).then(|| name.to_string())
}

/// The node an endpoint belongs to: its workload, else its pod, else the
/// service whose cluster IP it was reached at (drawn as the workload of the
/// same name, which is what the service fronts), else its reserved identity,
/// else its identity, else its address.
fn node_of(
    endpoint: Option<&Endpoint>,
    service: Option<&crate::proto::flow::Service>,
    ip: Option<&str>,
) -> Option<NodeView> {
    let namespaced = |ns: &str, name: &str, kind: NodeKind, identity: u32| {
        let label = if ns.is_empty() {
            name.to_string()
        } else {
            format!("{ns}/{name}")
        };
        NodeView {
            id: label.clone(),
            label,
            namespace: ns.to_string(),
            name: name.to_string(),
            kind,
            identity,
        }
    };
    let other = |id: String, name: String, kind: NodeKind, identity: u32| NodeView {
        id,
        label: name.clone(),
        namespace: String::new(),
        name,
        kind,
        identity,
    };
    if let Some(ep) = endpoint {
        if let Some(workload) = ep.workloads.first().filter(|w| !w.name.is_empty()) {
            return Some(namespaced(
                &ep.namespace,
                &workload.name,
                NodeKind::Workload,
                ep.identity,
            ));
        }
        if !ep.pod_name.is_empty() {
            return Some(namespaced(
                &ep.namespace,
                &ep.pod_name,
                NodeKind::Pod,
                ep.identity,
            ));
        }
        if let Some(service) = service.filter(|s| !s.name.is_empty()) {
            return Some(namespaced(
                &service.namespace,
                &service.name,
                NodeKind::Workload,
                ep.identity,
            ));
        }
        if let Some(name) = reserved_name(ep) {
            return Some(other(
                format!("reserved:{name}"),
                name,
                NodeKind::Reserved,
                ep.identity,
            ));
        }
        if ep.identity != 0 {
            return Some(other(
                format!("identity:{}", ep.identity),
                format!("identity {}", ep.identity),
                NodeKind::Identity,
                ep.identity,
            ));
        }
    }
    let ip = ip.filter(|ip| !ip.is_empty())?;
    Some(other(
        format!("ip:{ip}"),
        ip.to_string(),
        NodeKind::Address,
        0,
    ))
}
