//! Two nodes' control planes on one real etcd: the cluster module and the
//! policy engine as the agent's state owner drives them (events applied in
//! batches as they arrive), without a datapath.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use myelin_policy::{Decision, EndpointKey, PolicyEngine, Proto};
use myelin_store::server::{EtcdServer, EtcdSpec};
use myelin_test_support::require_etcd;
use tokio::sync::mpsc;

use super::*;
use crate::testing::{allow, apply, pod};

const TTL: Duration = Duration::from_secs(3);
/// Generous: a loaded shared machine.
const WITHIN: Duration = Duration::from_secs(30);

/// A node's control plane: what the agent's state owner holds of it.
struct TestNode {
    name: String,
    cluster: EtcdCluster,
    engine: PolicyEngine,
    remote: RemoteState,
    events: mpsc::Receiver<ClusterEvent>,
}

impl TestNode {
    async fn start(name: &str, address: StoreAddress, cluster: &str, octet: u8) -> Self {
        let config = EtcdClusterConfig {
            address,
            cluster: cluster.into(),
            node: name.into(),
            addresses: vec![IpAddr::from([192, 168, 90, octet])],
            pod_cidrs: vec![format!("10.244.{octet}.0/24").parse().expect("cidr")],
            observer_address: Some(format!("192.168.90.{octet}:4244")),
            lease_ttl: TTL,
        };
        let cluster = EtcdCluster::start(&config).await.expect("joined");
        let engine = PolicyEngine::new(cluster.identity_store(), name);
        let (tx, events) = mpsc::channel(1024);
        cluster.watch(tx);
        Self {
            name: name.into(),
            cluster,
            engine,
            remote: RemoteState::new(name),
            events,
        }
    }

    /// A local pod, as the agent adds one: allocated, then published.
    fn add_pod(&mut self, spec: &EndpointSpec) -> Identity {
        self.engine
            .upsert_endpoint(crate::policy::endpoint(spec))
            .expect("pod");
        let id = self
            .engine
            .policy(&EndpointKey::new(&spec.namespace, &spec.pod))
            .expect("resolved")
            .identity;
        for endpoint in published(spec, id, &self.name) {
            self.cluster.publish_endpoint(endpoint);
        }
        id
    }

    fn delete_pod(&mut self, spec: &EndpointSpec) {
        self.engine
            .remove_endpoint(&EndpointKey::new(&spec.namespace, &spec.pod));
        for ip in endpoint_ips(spec) {
            self.cluster.withdraw_endpoint(ip);
        }
    }

    /// Applies the events that arrived until `check` holds.
    async fn until(&mut self, what: &str, check: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + WITHIN;
        while !check(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: not within {WITHIN:?}: {what}",
                self.name
            );
            if let Ok(Some(event)) = tokio::time::timeout(left, self.events.recv()).await {
                self.remote.apply(event, &mut self.engine);
            }
        }
    }

    fn ingress_of_web(&self, peer: Identity) -> Decision {
        let web = self
            .engine
            .policy(&EndpointKey::new("default", "web"))
            .expect("web");
        web.ingress.lookup(peer, Proto::Tcp, 80).0
    }
}

fn etcd(name: &str) -> Option<(EtcdServer, tempfile::TempDir)> {
    if !require_etcd(name) {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("myelin-agent-{name}-{}-", std::process::id()))
        .tempdir()
        .expect("temp dir");
    let server = EtcdServer::start(&EtcdSpec::new(dir.path(), 1)).expect("etcd");
    Some((server, dir))
}

fn client_pod(name: &str, node: u8, last: u8) -> EndpointSpec {
    let mut spec = pod(name, "client", None, last);
    spec.ipv4 = Some(std::net::Ipv4Addr::new(10, 244, node, last));
    spec.ipv6 = None;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_on_one_node_is_a_peer_by_identity_on_another() {
    let Some((server, _dir)) = etcd("cluster_peer") else {
        return;
    };
    let mut a = TestNode::start("node-a", server.address(), "peer", 1).await;
    let mut b = TestNode::start("node-b", server.address(), "peer", 2).await;
    let mut web = pod("web", "web", None, 10);
    web.ipv4 = Some(std::net::Ipv4Addr::new(10, 244, 2, 10));
    web.ipv6 = None;
    b.add_pod(&web);
    apply(&mut b.engine, &allow("web", "client", "web", 80, None));

    // A's pod gets a cluster identity; B sees it with the same number and labels.
    let client = client_pod("client", 1, 5);
    let ip: IpAddr = IpAddr::V4(client.ipv4.expect("v4"));
    let id = a.add_pod(&client);
    b.until("A's pod as a remote endpoint", |b| {
        b.engine.remote_endpoint(ip).is_some()
    })
    .await;
    let remote = b.engine.remote_endpoint(ip).expect("remote");
    assert_eq!(remote.identity, id);
    assert_eq!(&*remote.node, "node-a");
    assert_eq!(
        b.engine.identity_labels(id).map(ToString::to_string),
        a.engine.identity_labels(id).map(ToString::to_string)
    );
    assert_eq!(b.engine.ipcache().get(&ipnet::IpNet::from(ip)), Some(&id));
    // B's policy selecting A's pod's labels lets exactly that identity in.
    assert_eq!(b.ingress_of_web(id), Decision::Allow);
    let other = a.add_pod(&pod("other", "other", None, 6));
    assert_ne!(other, id);
    b.until("A's second pod", |b| {
        b.engine.identity_labels(other).is_some()
    })
    .await;
    assert_eq!(b.ingress_of_web(other), Decision::DefaultDeny);
    // One identity per label set across the cluster.
    assert_eq!(b.add_pod(&client_pod("client-b", 2, 7)), id);
    // A's node: remote-node addresses, a route to its pods, a peer.
    b.until("node A", |b| !b.remote.tunnel_routes().is_empty())
        .await;
    assert_eq!(
        b.remote
            .tunnel_routes()
            .get(&"10.244.1.0/24".parse().expect("cidr")),
        Some(&IpAddr::from([192, 168, 90, 1]))
    );
    assert!(b.remote.peers(None).contains_key("node-a"));
    assert_eq!(
        b.engine.identity_of_ip(IpAddr::from([192, 168, 90, 1])),
        myelin_policy::identity::REMOTE_NODE
    );

    // Deleted on A: gone from B's engine and ipcache.
    a.delete_pod(&client);
    b.until("the deleted pod leaves", |b| {
        b.engine.remote_endpoint(ip).is_none()
    })
    .await;
    assert!(b.engine.ipcache().get(&ipnet::IpNet::from(ip)).is_none());
    // B's own pod keeps the identity admitted.
    assert_eq!(b.ingress_of_web(id), Decision::Allow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_leaves_within_its_ttl_and_an_outage_changes_nothing() {
    let Some((mut server, _dir)) = etcd("cluster_failures") else {
        return;
    };
    let mut a = TestNode::start("node-a", server.address(), "failures", 1).await;
    let mut b = TestNode::start("node-b", server.address(), "failures", 2).await;
    let first = client_pod("first", 1, 5);
    let first_ip = IpAddr::V4(first.ipv4.expect("v4"));
    let id = a.add_pod(&first);
    b.until("A's pod", |b| b.engine.remote_endpoint(first_ip).is_some())
        .await;

    // etcd away: B keeps what it knew; A's pod added meanwhile arrives
    // once etcd is back (A's session writes it again), nothing else moves.
    server.stop_member(0).expect("etcd stopped");
    let second = client_pod("second", 1, 6);
    let second_ip = IpAddr::V4(second.ipv4.expect("v4"));
    a.cluster
        .publish_endpoint(published(&second, id, "node-a").remove(0));
    tokio::time::sleep(TTL * 2).await;
    while let Ok(event) = b.events.try_recv() {
        b.remote.apply(event, &mut b.engine);
    }
    assert_eq!(
        b.engine.identity_of_ip(first_ip),
        id,
        "kept while etcd is away"
    );
    server.restart(0).expect("etcd back");
    b.until("the pod added during the outage", |b| {
        b.engine.remote_endpoint(second_ip).is_some()
    })
    .await;
    assert_eq!(b.engine.identity_of_ip(first_ip), id);

    // A restarted (its old session dropped without closing): the same
    // number for the same labels, its pods published again under a new lease.
    let old_lease = a.cluster.session().lease().await;
    drop(a);
    let mut a = TestNode::start("node-a", server.address(), "failures", 1).await;
    assert_eq!(a.add_pod(&first), id, "re-adopted with the same number");
    assert_ne!(a.cluster.session().lease().await, old_lease);
    // The old lease ends within the TTL: the pod A did not publish again
    // leaves B; the re-published one stays.
    b.until("the pod nobody published again leaves", |b| {
        b.engine.remote_endpoint(second_ip).is_none()
    })
    .await;
    tokio::time::sleep(TTL).await;
    while let Ok(event) = b.events.try_recv() {
        b.remote.apply(event, &mut b.engine);
    }
    assert_eq!(b.engine.identity_of_ip(first_ip), id);

    // A dead for good: its endpoints and its node leave within the TTL.
    drop(a);
    b.until("the dead node's pods and record leave", |b| {
        b.engine.remote_endpoint(first_ip).is_none() && b.remote.tunnel_routes().is_empty()
    })
    .await;
    assert_eq!(
        b.engine.identity_of_ip(IpAddr::from([192, 168, 90, 1])),
        myelin_policy::identity::WORLD
    );
}

#[tokio::test]
async fn a_stopping_agent_waits_only_while_writes_are_queued() {
    let queued = QueuedWrites::default();
    queued.settled().await;
    queued.add();
    queued.add();
    queued.done();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), queued.settled())
            .await
            .is_err(),
        "one write is still queued"
    );
    let waiting = tokio::spawn({
        let queued = queued.clone();
        async move { queued.settled().await }
    });
    queued.done();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("settled once the last write was tried")
        .expect("task");
}
