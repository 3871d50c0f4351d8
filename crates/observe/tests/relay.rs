//! The relay against real node observers: three observer servers on unix
//! sockets (as a lab's nodes serve them), the peer service of one of them
//! naming the others, and the relay's own server, all over gRPC.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use myelin_observe::cli;
use myelin_observe::peer::{PeerMap, PeerNode, PeerService};
use myelin_observe::proto::flow::Flow;
use myelin_observe::proto::observer::get_flows_response::ResponseTypes;
use myelin_observe::proto::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNodesRequest, ServerStatusRequest,
};
use myelin_observe::proto::peer::peer_client::PeerClient;
use myelin_observe::proto::peer::{ChangeNotificationType, NotifyRequest};
use myelin_observe::proto::relay::NodeState;
use myelin_observe::relay::{CHECK_INTERVAL, PeerPool, RelayService};
use myelin_observe::server::bind_relay;
use myelin_observe::{Observer, ObserverConfig, ServeConfig, bind};
use prost_types::Timestamp;
use tokio::sync::{oneshot, watch};

/// Bounds every wait, so that a hang fails instead of blocking.
const WAIT: Duration = Duration::from_secs(20);

/// A node's observer serving on a unix socket until dropped.
struct NodeServer {
    observer: Observer,
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
}

impl NodeServer {
    async fn start(dir: &Path, name: &str, peers: Option<watch::Receiver<PeerMap>>) -> Self {
        let observer = Observer::new(ObserverConfig::new(name));
        let socket = dir.join(format!("{name}.sock"));
        let mut server = bind(
            observer.clone(),
            &ServeConfig {
                unix_socket: Some(socket.clone()),
                tcp: None,
            },
        )
        .await
        .expect("bind node");
        if let Some(peers) = peers {
            server = server.with_peers(PeerService::new(peers));
        }
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            observer,
            socket,
            stop: Some(stop),
        }
    }

    fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A flow of `node` at `base + offset_ms`, numbered by its proxy port.
fn flow(node: &str, base: SystemTime, offset_ms: u64, n: u32) -> Flow {
    let time = Some(Timestamp::from(base + Duration::from_millis(offset_ms)));
    Flow {
        time,
        node_name: node.into(),
        proxy_port: n,
        ..Flow::default()
    }
}

fn peer_map(nodes: &[(&str, &NodeServer)]) -> PeerMap {
    nodes
        .iter()
        .map(|(name, server)| {
            (
                (*name).to_string(),
                PeerNode {
                    name: (*name).to_string(),
                    address: server.address(),
                    tls_server_name: None,
                },
            )
        })
        .collect()
}

/// The relay's server on a socket of `dir`, over the peers `discovery` names.
async fn start_relay(dir: &Path, discovery: watch::Receiver<PeerMap>) -> String {
    let pool = PeerPool::start(discovery, cli::TlsArgs::default());
    let socket = dir.join("relay.sock");
    let server = bind_relay(
        RelayService::new(pool),
        &ServeConfig {
            unix_socket: Some(socket.clone()),
            tcp: None,
        },
    )
    .await
    .expect("bind relay");
    tokio::spawn(server.run(std::future::pending()));
    format!("unix://{}", socket.display())
}

async fn get_flows(relay: &str, request: GetFlowsRequest) -> Vec<GetFlowsResponse> {
    let mut client = cli::connect(relay).await.expect("connect relay");
    let mut stream = client
        .get_flows(request)
        .await
        .expect("GetFlows")
        .into_inner();
    let mut out = Vec::new();
    while let Some(response) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("stream within the wait")
        .expect("stream")
    {
        out.push(response);
    }
    out
}

/// (node, number) of each flow, in the order received.
fn flows_of(responses: &[GetFlowsResponse]) -> Vec<(String, u32)> {
    responses
        .iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::Flow(f)) => Some((f.node_name.clone(), f.proxy_port)),
            _ => None,
        })
        .collect()
}

/// The node status notices received, as (state, node names).
fn statuses_of(responses: &[GetFlowsResponse]) -> Vec<(i32, Vec<String>)> {
    responses
        .iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::NodeStatus(s)) => Some((s.state_change, s.node_names.clone())),
            _ => None,
        })
        .collect()
}

/// Waits until the relay's status says `connected` nodes answer.
async fn wait_connected(
    relay: &str,
    connected: u32,
) -> myelin_observe::proto::observer::ServerStatusResponse {
    let mut client = cli::connect(relay).await.expect("connect relay");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = client
            .server_status(ServerStatusRequest {})
            .await
            .expect("ServerStatus")
            .into_inner();
        if status.num_connected_nodes == Some(connected) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never saw {connected} connected nodes: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_relay_merges_the_nodes_flows_in_time_order_and_reports_the_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (peers_tx, peers_rx) = watch::channel(PeerMap::new());
    // node1 serves the peer service, as every agent does.
    let node1 = NodeServer::start(dir.path(), "node1", Some(peers_rx)).await;
    let node2 = NodeServer::start(dir.path(), "node2", None).await;
    let mut node3 = NodeServer::start(dir.path(), "node3", None).await;
    peers_tx.send_replace(peer_map(&[
        ("node1", &node1),
        ("node2", &node2),
        ("node3", &node3),
    ]));

    // Interleaved in time across the nodes: node n has flows n, n+3, n+6, ...
    let base = SystemTime::now() - Duration::from_secs(60);
    for n in 1..=12u32 {
        let (name, server) = match n % 3 {
            1 => ("node1", &node1),
            2 => ("node2", &node2),
            _ => ("node3", &node3),
        };
        server.observer.push(flow(name, base, u64::from(n) * 10, n));
    }

    // The relay learns the nodes from node1's peer service, as Hubble Relay does.
    let (discovery_tx, discovery_rx) = watch::channel(PeerMap::new());
    tokio::spawn(myelin_observe::peer::follow(
        node1.address(),
        cli::TlsArgs::default(),
        discovery_tx,
    ));
    let relay = start_relay(dir.path(), discovery_rx).await;
    let status = wait_connected(&relay, 3).await;
    assert_eq!(status.num_flows, 12, "summed over the nodes");
    assert_eq!(status.num_unavailable_nodes, Some(0));

    // The last 5 flows of the cluster, oldest first, from all three nodes.
    let responses = get_flows(
        &relay,
        GetFlowsRequest {
            number: 5,
            ..Default::default()
        },
    )
    .await;
    let numbers: Vec<u32> = flows_of(&responses).into_iter().map(|(_, n)| n).collect();
    assert_eq!(numbers, [8, 9, 10, 11, 12]);
    assert_eq!(
        statuses_of(&responses),
        [(
            NodeState::NodeConnected as i32,
            vec!["node1".to_string(), "node2".into(), "node3".into()]
        )],
        "the answer says first which nodes it comes from"
    );
    // The first 4, with `first`.
    let first: Vec<u32> = flows_of(
        &get_flows(
            &relay,
            GetFlowsRequest {
                number: 4,
                first: true,
                ..Default::default()
            },
        )
        .await,
    )
    .into_iter()
    .map(|(_, n)| n)
    .collect();
    assert_eq!(first, [1, 2, 3, 4]);

    // Following: new flows of every node arrive, merged in time order.
    let mut client = cli::connect(&relay).await.expect("connect relay");
    let mut stream = client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .expect("follow")
        .into_inner();
    // Let the relay open its streams to the nodes before the flows exist.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = SystemTime::now();
    node2.observer.push(flow("node2", now, 20, 102));
    node1.observer.push(flow("node1", now, 10, 101));
    node3.observer.push(flow("node3", now, 30, 103));
    let mut live = Vec::new();
    while live.len() < 3 {
        let response = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("followed flows within the wait")
            .expect("stream")
            .expect("open stream");
        live.extend(flows_of(&[response]).into_iter().map(|(_, n)| n));
    }
    assert_eq!(live, [101, 102, 103], "in time order, not in arrival order");

    // A node goes away: the relay reports it unavailable, the others still answer.
    node3.stop();
    let status = wait_connected(&relay, 2).await;
    assert_eq!(status.num_unavailable_nodes, Some(1));
    assert_eq!(status.unavailable_nodes, ["node3"]);
    let nodes = cli::connect(&relay)
        .await
        .expect("connect")
        .get_nodes(GetNodesRequest {})
        .await
        .expect("GetNodes")
        .into_inner()
        .nodes;
    let states: BTreeMap<String, i32> = nodes.iter().map(|n| (n.name.clone(), n.state)).collect();
    assert_eq!(states["node1"], NodeState::NodeConnected as i32);
    assert_eq!(states["node2"], NodeState::NodeConnected as i32);
    assert_ne!(states["node3"], NodeState::NodeConnected as i32);
    assert!(
        nodes
            .iter()
            .all(|n| n.name == "node3" || n.version.starts_with("myelin"))
    );
    let responses = get_flows(&relay, GetFlowsRequest::default()).await;
    assert!(
        statuses_of(&responses)
            .contains(&(NodeState::NodeUnavailable as i32, vec!["node3".to_string()])),
        "{:?}",
        statuses_of(&responses)
    );
    assert_eq!(
        flows_of(&responses).len(),
        10,
        "node1's and node2's flows (4 + 4 + the followed 2), none lost: {:?}",
        flows_of(&responses)
    );

    // A node joins: the peer service announces it and the relay connects.
    let node4 = NodeServer::start(dir.path(), "node4", None).await;
    node4.observer.push(flow("node4", base, 1000, 400));
    peers_tx.send_modify(|map| {
        map.insert(
            "node4".into(),
            PeerNode {
                name: "node4".into(),
                address: node4.address(),
                tls_server_name: None,
            },
        );
        map.remove("node3");
    });
    let status = wait_connected(&relay, 3).await;
    assert_eq!(
        status.num_unavailable_nodes,
        Some(0),
        "node3 was deleted, not lost"
    );
    let nodes: Vec<(String, u32)> = flows_of(&get_flows(&relay, GetFlowsRequest::default()).await);
    assert!(nodes.contains(&("node4".to_string(), 400)), "{nodes:?}");
    // The check interval bounds how soon a change is seen; keep the test honest about it.
    assert!(CHECK_INTERVAL <= Duration::from_secs(5));
}

#[tokio::test]
async fn the_peer_service_announces_every_node_then_each_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = |name: &str| PeerNode {
        name: name.into(),
        address: format!("unix:///run/{name}.sock"),
        tls_server_name: None,
    };
    let (peers_tx, peers_rx) = watch::channel(
        [("a".to_string(), peer("a")), ("b".to_string(), peer("b"))]
            .into_iter()
            .collect(),
    );
    let node = NodeServer::start(dir.path(), "a", Some(peers_rx)).await;
    let channel = cli::channel(&node.address(), &cli::TlsArgs::default())
        .await
        .expect("channel");
    let mut stream = PeerClient::new(channel)
        .notify(NotifyRequest {})
        .await
        .expect("Notify")
        .into_inner();
    let mut next = async || {
        let change = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("within the wait")
            .expect("stream")
            .expect("open");
        (change.name, change.r#type)
    };
    let added = ChangeNotificationType::PeerAdded as i32;
    assert_eq!(next().await, ("a".to_string(), added));
    assert_eq!(next().await, ("b".to_string(), added));
    peers_tx.send_modify(|map| {
        map.remove("a");
    });
    assert_eq!(
        next().await,
        ("a".to_string(), ChangeNotificationType::PeerDeleted as i32)
    );
    peers_tx.send_modify(|map| {
        map.insert("c".into(), peer("c"));
    });
    assert_eq!(next().await, ("c".to_string(), added));
}

#[tokio::test]
async fn a_bad_filter_is_refused_once_by_the_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeServer::start(dir.path(), "node1", None).await;
    let (_tx, rx) = watch::channel(peer_map(&[("node1", &node)]));
    let relay = start_relay(dir.path(), rx).await;
    wait_connected(&relay, 1).await;
    let mut client = cli::connect(&relay).await.expect("connect");
    let status = client
        .get_flows(GetFlowsRequest {
            first: true,
            follow: true,
            ..Default::default()
        })
        .await
        .expect_err("first with follow");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // Checked by the relay as a node would, not forwarded to fail on each node.
    let status = client
        .get_flows(GetFlowsRequest {
            field_mask: Some(prost_types::FieldMask {
                paths: vec!["no_such_field".into()],
            }),
            ..Default::default()
        })
        .await
        .expect_err("a mask path no Flow has");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("no_such_field"),
        "{}",
        status.message()
    );
    let status = client
        .get_agent_events(myelin_observe::proto::observer::GetAgentEventsRequest::default())
        .await
        .expect_err("not relayed");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}
