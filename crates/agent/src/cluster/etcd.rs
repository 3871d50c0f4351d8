//! The cluster on etcd (`myelin-store`): the node's lease, its record and
//! endpoints under it, identities allocated with etcd transactions, and
//! watches of nodes, endpoints and identities.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ipnet::IpNet;
use myelin_policy::IdentityStore;
use myelin_store::watch::Kind;
use myelin_store::{
    Endpoint as StoreEndpoint, EtcdIdentityStore, Node as StoreNode, NodeSession, Store,
    StoreAddress, StoreConfig, Update, Watch,
};
use tokio::sync::mpsc;

use super::{Cluster, ClusterEvent, QueuedWrites};

/// Reads `--cluster-store`: one or more comma-separated `unix://PATH` (the
/// members' unix sockets; with etcd 3.4 a file name ends in `:PORT`, e.g.
/// `unix:///run/myelin/etcd0/client.sock:2379`), or one or more
/// comma-separated `host:port` / `http://host:port` of the members.
pub fn parse_store_address(text: &str) -> anyhow::Result<StoreAddress> {
    let text = text.trim();
    if text.starts_with("unix://") {
        let mut sockets = Vec::new();
        for member in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let path = member
                .strip_prefix("unix://")
                .filter(|p| p.starts_with('/'));
            let Some(path) = path else {
                anyhow::bail!(
                    "--cluster-store member {member:?}: give every member as a unix socket with \
                     an absolute path (unix:///path/to/client.sock:2379), or every one as host:port"
                );
            };
            sockets.push(path.into());
        }
        return Ok(StoreAddress::Unix(sockets));
    }
    let members: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect();
    anyhow::ensure!(
        !members.is_empty(),
        "--cluster-store is empty: give unix:///path/to/socket or host:port[,host:port...]"
    );
    for member in &members {
        let bare = member
            .strip_prefix("http://")
            .or_else(|| member.strip_prefix("https://"))
            .unwrap_or(member);
        anyhow::ensure!(
            bare.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
            "--cluster-store member {member:?} is not host:port (e.g. 127.0.0.1:2379)"
        );
    }
    Ok(StoreAddress::Tcp(members))
}

/// How the agent joins a cluster on etcd.
#[derive(Debug, Clone)]
pub struct EtcdClusterConfig {
    /// Where etcd listens.
    pub address: StoreAddress,
    /// The cluster's name (every key lives under `/myelin/<cluster>/`).
    pub cluster: String,
    /// This node's name.
    pub node: String,
    /// The node's underlay addresses; the first is its tunnel endpoint.
    pub addresses: Vec<IpAddr>,
    /// The node's pod CIDRs, at most one per family.
    pub pod_cidrs: Vec<IpNet>,
    /// Where the node's observer API listens, for the other nodes' peer service.
    pub observer_address: Option<String>,
    /// The lease's TTL: how long the node's entries outlive a dead agent.
    pub lease_ttl: Duration,
}

impl EtcdClusterConfig {
    /// The node's record as the store holds it.
    pub fn node_record(&self) -> StoreNode {
        StoreNode {
            name: self.node.clone(),
            addresses: self.addresses.clone(),
            pod_cidrs: self.pod_cidrs.clone(),
            tunnel_endpoint: self.addresses.first().copied(),
            observer_address: self.observer_address.clone(),
        }
    }
}

/// A write of the node's own entries, queued in order.
#[derive(Debug)]
enum Write {
    Node(StoreNode),
    Endpoint(StoreEndpoint),
    Withdraw(IpAddr),
}

/// A node of a cluster on etcd.
#[derive(Debug)]
pub struct EtcdCluster {
    store: Store,
    session: NodeSession,
    identities: Arc<EtcdIdentityStore>,
    writes: mpsc::UnboundedSender<Write>,
    queued: QueuedWrites,
}

impl EtcdCluster {
    /// Connects, takes the node's lease and publishes its record (on the
    /// caller's runtime). Fails when etcd does not answer at all: the agent
    /// needs a lease to own anything.
    pub async fn start(config: &EtcdClusterConfig) -> anyhow::Result<Self> {
        let store = Store::connect(&StoreConfig::new(config.address.clone(), &config.cluster))
            .with_context(|| format!("connecting to the cluster store {:?}", config.address))?;
        let session = NodeSession::start(&store, &config.node, config.lease_ttl)
            .await
            .with_context(|| {
                format!(
                    "taking node {}'s lease in the cluster store {:?} (is etcd running?)",
                    config.node, config.address
                )
            })?;
        let identities = Arc::new(EtcdIdentityStore::new(session.clone()));
        let (writes, queue) = mpsc::unbounded_channel();
        let queued = QueuedWrites::default();
        tokio::spawn(write_in_order(session.clone(), queue, queued.clone()));
        let cluster = Self {
            store,
            session,
            identities,
            writes,
            queued,
        };
        cluster.write(Write::Node(config.node_record()));
        Ok(cluster)
    }

    fn write(&self, write: Write) {
        self.queued.add();
        // The writer lives as long as the cluster's sender.
        if self.writes.send(write).is_err() {
            self.queued.done();
        }
    }

    /// The node's session (its lease), for tools and tests.
    pub fn session(&self) -> &NodeSession {
        &self.session
    }
}

/// Writes the node's entries one after the other, so that a withdraw never
/// overtakes the publish before it. A write etcd missed is remembered by the
/// session and written again when etcd answers.
async fn write_in_order(
    session: NodeSession,
    mut queue: mpsc::UnboundedReceiver<Write>,
    queued: QueuedWrites,
) {
    while let Some(write) = queue.recv().await {
        let (what, result) = match &write {
            Write::Node(node) => ("the node's record", session.publish_node(node).await),
            Write::Endpoint(e) => ("an endpoint", session.publish_endpoint(e).await),
            Write::Withdraw(ip) => (
                "an endpoint's withdrawal",
                session.withdraw_endpoint(*ip).await,
            ),
        };
        if let Err(error) = result {
            tracing::warn!(%error, ?write, "cluster store: {what} not written yet; written again when etcd answers");
        }
        queued.done();
    }
}

/// Forwards a watch's updates as cluster events until the agent stops.
async fn forward<K: Kind>(
    mut watch: Watch<K>,
    events: mpsc::Sender<ClusterEvent>,
    event: fn(Update<K::Key, K::Value>) -> ClusterEvent,
) {
    while let Some(update) = watch.next().await {
        if events.send(event(update)).await.is_err() {
            return;
        }
    }
}

impl Cluster for EtcdCluster {
    fn identity_store(&self) -> Arc<dyn IdentityStore> {
        self.identities.clone()
    }

    fn publish_endpoint(&self, endpoint: StoreEndpoint) {
        self.write(Write::Endpoint(endpoint));
    }

    fn withdraw_endpoint(&self, ip: IpAddr) {
        self.write(Write::Withdraw(ip));
    }

    fn queued_writes(&self) -> QueuedWrites {
        self.queued.clone()
    }

    fn watch(&self, events: mpsc::Sender<ClusterEvent>) {
        tokio::spawn(forward(
            self.store.watch_identities(),
            events.clone(),
            ClusterEvent::Identity,
        ));
        tokio::spawn(forward(
            self.store.watch_nodes(),
            events.clone(),
            ClusterEvent::Node,
        ));
        tokio::spawn(forward(
            self.store.watch_endpoints(),
            events,
            ClusterEvent::Endpoint,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_addresses_read_as_documented() {
        assert_eq!(
            parse_store_address("unix:///run/lab/etcd0/client.sock:2379").expect("unix"),
            StoreAddress::Unix(vec!["/run/lab/etcd0/client.sock:2379".into()])
        );
        assert_eq!(
            parse_store_address("unix:///a/client.sock:1,unix:///b/client.sock:2")
                .expect("members"),
            StoreAddress::Unix(vec!["/a/client.sock:1".into(), "/b/client.sock:2".into()])
        );
        assert_eq!(
            parse_store_address("http://127.0.0.1:2379, 127.0.0.1:2380").expect("tcp"),
            StoreAddress::Tcp(vec![
                "http://127.0.0.1:2379".into(),
                "127.0.0.1:2380".into()
            ])
        );
        for bad in [
            "",
            "unix://relative.sock",
            "unix:///a.sock,127.0.0.1:2379",
            "127.0.0.1",
            "http://:2379",
            "host:port",
        ] {
            assert!(parse_store_address(bad).is_err(), "{bad}");
        }
    }
}
