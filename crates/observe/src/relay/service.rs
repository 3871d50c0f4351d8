//! The relay's `observer.Observer`: every request answered from all the
//! nodes' observers, as Hubble Relay answers it.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::pool::{CALL_TIMEOUT, CHECK_INTERVAL, Peer, PeerPool};
use super::sort::{BUFFER_LEN, sort_into, time_key};
use crate::proto::observer::get_flows_response::ResponseTypes;
use crate::proto::observer::observer_server;
use crate::proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse,
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, Namespace, Node, ServerStatusRequest, ServerStatusResponse,
    Tls,
};
use crate::proto::relay::{NodeState, NodeStatusEvent};

/// Unavailable nodes named in a ServerStatus answer at most, as Hubble Relay.
const UNAVAILABLE_REPORTED: usize = 10;
/// Responses buffered per GetFlows stream before the relay waits for the client.
const STREAM_BUFFER: usize = 256;

/// `observer.Observer` over every node the pool knows.
#[derive(Debug, Clone)]
pub struct RelayService {
    pool: PeerPool,
    started: Instant,
}

impl RelayService {
    /// Answers from the peers of `pool`.
    pub fn new(pool: PeerPool) -> Self {
        Self {
            pool,
            started: Instant::now(),
        }
    }
}

fn node_status(state: NodeState, names: Vec<String>, message: String) -> GetFlowsResponse {
    GetFlowsResponse {
        response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
            state_change: state as i32,
            node_names: names,
            message,
        })),
        node_name: String::new(),
        time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
    }
}

/// The peers with a connection, and the names of those without.
fn split(peers: Vec<Peer>) -> (Vec<Peer>, Vec<String>) {
    let (connected, unavailable): (Vec<Peer>, Vec<Peer>) =
        peers.into_iter().partition(|p| p.client.is_some());
    (
        connected,
        unavailable.into_iter().map(|p| p.node.name).collect(),
    )
}

/// What one node answered to a GetFlows without follow.
async fn collect(
    pool: PeerPool,
    peer: Peer,
    request: GetFlowsRequest,
) -> Result<Vec<GetFlowsResponse>, (String, String)> {
    let name = peer.node.name.clone();
    let fail = |pool: &PeerPool, status: Status| {
        let message = status.message().to_string();
        pool.mark_unavailable(&name, message.clone());
        (name.clone(), message)
    };
    let Some(mut client) = peer.client else {
        return Err((name.clone(), "not connected".into()));
    };
    let mut stream = client
        .get_flows(request)
        .await
        .map_err(|s| fail(&pool, s))?
        .into_inner();
    let mut responses = Vec::new();
    while let Some(response) = stream.message().await.map_err(|s| fail(&pool, s))? {
        responses.push(response);
    }
    Ok(responses)
}

/// Streams one node's answer to a following GetFlows into `merged` until
/// either side ends; a failure becomes a NODE_ERROR notice.
async fn forward(
    pool: PeerPool,
    peer: Peer,
    request: GetFlowsRequest,
    merged: mpsc::Sender<GetFlowsResponse>,
) {
    let name = peer.node.name.clone();
    let Some(mut client) = peer.client else {
        return;
    };
    let failure = match client.get_flows(request).await {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(response)) => {
                        if merged.send(response).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => break status,
                }
            }
        }
        Err(status) => status,
    };
    let message = failure.message().to_string();
    pool.mark_unavailable(&name, message.clone());
    let _ = merged
        .send(node_status(NodeState::NodeError, vec![name], message))
        .await;
}

#[tonic::async_trait]
impl observer_server::Observer for RelayService {
    type GetFlowsStream = ReceiverStream<Result<GetFlowsResponse, Status>>;
    type GetAgentEventsStream = ReceiverStream<Result<GetAgentEventsResponse, Status>>;
    type GetDebugEventsStream = ReceiverStream<Result<GetDebugEventsResponse, Status>>;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let req = request.into_inner();
        // Checked here once, as every node would: a bad request is refused,
        // not answered with each node's error.
        crate::server::Selection::from_request(&req)?;
        let (connected, unavailable) = split(self.pool.list());
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            // First, which nodes the answer comes from, as Hubble Relay does.
            let names: Vec<String> = connected.iter().map(|p| p.node.name.clone()).collect();
            for (state, names) in [
                (NodeState::NodeConnected, names),
                (NodeState::NodeUnavailable, unavailable),
            ] {
                if !names.is_empty()
                    && tx
                        .send(Ok(node_status(state, names, String::new())))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            if req.follow {
                follow(pool, connected, req, tx).await;
            } else {
                history(pool, connected, req, tx).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_agent_events(
        &self,
        _request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented(
            "the relay does not merge agent events; ask a node's observer for them",
        ))
    }

    async fn get_debug_events(
        &self,
        _request: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented(
            "the relay does not merge debug events; ask a node's observer for them",
        ))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let nodes = self.pool.list().into_iter().map(|peer| {
            let pool = self.pool.clone();
            async move {
                let mut node = Node {
                    name: peer.node.name.clone(),
                    version: String::new(),
                    address: peer.node.address.clone(),
                    state: NodeState::NodeUnavailable as i32,
                    tls: Some(Tls {
                        enabled: peer.node.tls_server_name.is_some(),
                        server_name: peer.node.tls_server_name.clone().unwrap_or_default(),
                    }),
                    uptime_ns: 0,
                    num_flows: 0,
                    max_flows: 0,
                    seen_flows: 0,
                };
                let Some(mut client) = peer.client else {
                    return node;
                };
                match tokio::time::timeout(
                    CALL_TIMEOUT,
                    client.server_status(ServerStatusRequest {}),
                )
                .await
                {
                    Ok(Ok(status)) => {
                        let status = status.into_inner();
                        node.state = NodeState::NodeConnected as i32;
                        node.version = status.version;
                        node.uptime_ns = status.uptime_ns;
                        node.num_flows = status.num_flows;
                        node.max_flows = status.max_flows;
                        node.seen_flows = status.seen_flows;
                    }
                    Ok(Err(status)) => {
                        node.state = NodeState::NodeError as i32;
                        pool.mark_unavailable(&peer.node.name, status.message().to_string());
                    }
                    Err(_) => {
                        node.state = NodeState::NodeError as i32;
                        pool.mark_unavailable(&peer.node.name, "ServerStatus timed out".into());
                    }
                }
                node
            }
        });
        let nodes = futures::future::join_all(nodes).await;
        Ok(Response::new(GetNodesResponse { nodes }))
    }

    async fn get_namespaces(
        &self,
        request: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let request = request.into_inner();
        let (connected, _) = split(self.pool.list());
        let answers =
            connected.into_iter().filter_map(|peer| {
                let mut client = peer.client?;
                Some(async move {
                    tokio::time::timeout(CALL_TIMEOUT, client.get_namespaces(request)).await
                })
            });
        // Partial answers beat none: a node that fails is left out.
        let mut namespaces = BTreeSet::new();
        for answer in futures::future::join_all(answers).await {
            if let Ok(Ok(answer)) = answer {
                namespaces.extend(
                    answer
                        .into_inner()
                        .namespaces
                        .into_iter()
                        .map(|ns| (ns.cluster, ns.namespace)),
                );
            }
        }
        Ok(Response::new(GetNamespacesResponse {
            namespaces: namespaces
                .into_iter()
                .map(|(cluster, namespace)| Namespace { cluster, namespace })
                .collect(),
        }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let (connected, mut unavailable) = split(self.pool.list());
        let answers = connected.into_iter().map(|peer| {
            let pool = self.pool.clone();
            async move {
                let name = peer.node.name.clone();
                let mut client = peer.client?;
                match tokio::time::timeout(
                    CALL_TIMEOUT,
                    client.server_status(ServerStatusRequest {}),
                )
                .await
                {
                    Ok(Ok(status)) => Some(Ok(status.into_inner())),
                    Ok(Err(status)) => {
                        pool.mark_unavailable(&name, status.message().to_string());
                        Some(Err(name))
                    }
                    Err(_) => {
                        pool.mark_unavailable(&name, "ServerStatus timed out".into());
                        Some(Err(name))
                    }
                }
            }
        });
        let mut total = ServerStatusResponse {
            version: concat!("myelin-relay ", env!("CARGO_PKG_VERSION")).to_string(),
            ..ServerStatusResponse::default()
        };
        let mut connected_count = 0u32;
        for answer in futures::future::join_all(answers)
            .await
            .into_iter()
            .flatten()
        {
            match answer {
                Ok(status) => {
                    connected_count += 1;
                    total.num_flows += status.num_flows;
                    total.max_flows += status.max_flows;
                    total.seen_flows += status.seen_flows;
                    total.flows_rate += status.flows_rate;
                    // The oldest node's uptime: adding them up means nothing.
                    total.uptime_ns = total.uptime_ns.max(status.uptime_ns);
                }
                Err(name) => unavailable.push(name),
            }
        }
        if connected_count == 0 {
            // With no node, the relay's own uptime.
            total.uptime_ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        }
        total.num_connected_nodes = Some(connected_count);
        total.num_unavailable_nodes = Some(u32::try_from(unavailable.len()).unwrap_or(u32::MAX));
        unavailable.truncate(UNAVAILABLE_REPORTED);
        total.unavailable_nodes = unavailable;
        Ok(Response::new(total))
    }
}

/// A GetFlows without follow: every node's answer, merged in time order,
/// then the request's number of flows taken from the merged whole (the
/// last ones, or the first with `first`), so `--last 20` means 20 flows of
/// the cluster, not 20 of each node.
async fn history(
    pool: PeerPool,
    connected: Vec<Peer>,
    req: GetFlowsRequest,
    tx: mpsc::Sender<Result<GetFlowsResponse, Status>>,
) {
    let answers = connected
        .into_iter()
        .map(|peer| collect(pool.clone(), peer, req.clone()));
    let mut merged = Vec::new();
    for answer in futures::future::join_all(answers).await {
        match answer {
            Ok(responses) => merged.extend(responses),
            Err((name, message)) => {
                if tx
                    .send(Ok(node_status(NodeState::NodeError, vec![name], message)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    // Stable: one node's responses of the same instant keep their order.
    merged.sort_by_key(time_key);
    let picked = crate::server::pick(merged.into_iter(), req.number, req.first, false, |r| {
        matches!(r.response_types, Some(ResponseTypes::Flow(_)))
    });
    for response in picked {
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
    }
}

/// A following GetFlows: every node's stream through one sort buffer, and
/// nodes that become available later joined with their new flows only.
async fn follow(
    pool: PeerPool,
    connected: Vec<Peer>,
    req: GetFlowsRequest,
    tx: mpsc::Sender<Result<GetFlowsResponse, Status>>,
) {
    let (merged_tx, merged_rx) = mpsc::channel(STREAM_BUFFER);
    let capacity = match usize::try_from(req.number) {
        Ok(n) if n > 0 => n.saturating_mul(connected.len().max(1)).min(BUFFER_LEN),
        _ => BUFFER_LEN,
    };
    // One forwarding task per node; a node whose stream ended (it failed or
    // went away) is streamed again, new flows only, once it is back.
    let mut streams: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    for peer in connected {
        let name = peer.node.name.clone();
        let task = tokio::spawn(forward(pool.clone(), peer, req.clone(), merged_tx.clone()));
        streams.insert(name, task);
    }
    let sorter = tokio::spawn(sort_into(merged_rx, tx.clone(), capacity));
    let later = GetFlowsRequest {
        number: 0,
        first: false,
        since: None,
        ..req
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
            () = tx.closed() => break,
        }
        let peers = pool.list();
        streams.retain(|name, task| {
            let known = peers.iter().any(|p| p.node.name == *name);
            if !known {
                task.abort();
            }
            known && !task.is_finished()
        });
        for peer in peers {
            if peer.client.is_some() && !streams.contains_key(&peer.node.name) {
                let name = peer.node.name.clone();
                let task = tokio::spawn(forward(
                    pool.clone(),
                    peer,
                    later.clone(),
                    merged_tx.clone(),
                ));
                streams.insert(name, task);
            }
        }
    }
    for task in streams.values() {
        task.abort();
    }
    drop(merged_tx);
    sorter.abort();
}
