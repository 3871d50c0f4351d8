//! The cluster as the agent reads it, through one interface ([`Cluster`]):
//! where identity numbers come from, where the node's own endpoints are
//! published, and the other nodes, their endpoints and the identities as a
//! stream of [`ClusterEvent`]s. A single node with the file identity store is
//! one implementation ([`SingleNode`]), etcd another ([`EtcdCluster`]); the
//! Kubernetes API (CiliumNode, CiliumEndpoint, CiliumIdentity) fits the same
//! shape.
//!
//! Events reach the task that owns the node's state over a channel, as API
//! requests do; [`RemoteState`] turns them into policy engine changes there.
//! Nothing here makes the datapath wait: publishing is queued, and when the
//! store is away the node keeps the last state it knew.

mod etcd;
mod remote;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use myelin_policy::{FileStore, Identity, IdentityStore, LabelSet};
use myelin_store::{Endpoint as StoreEndpoint, Node as StoreNode, Update};
use tokio::sync::{Notify, mpsc};

use crate::api::{EndpointSpec, Protocol};

pub use etcd::{EtcdCluster, EtcdClusterConfig, parse_store_address};
pub use myelin_store::{LAB_LEASE_TTL, StoreAddress};
pub use remote::{RemoteState, Touched};

/// A change of the cluster, as a watch delivers it.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterEvent {
    /// A node (the agent's own included) came, changed or left.
    Node(Update<String, StoreNode>),
    /// An endpoint of some node came, changed or left.
    Endpoint(Update<IpAddr, StoreEndpoint>),
    /// An identity was bound or deleted.
    Identity(Update<Identity, LabelSet>),
}

/// How the agent reads and writes the cluster.
pub trait Cluster: Send + Sync + std::fmt::Debug {
    /// Where the node's allocator gets identity numbers.
    fn identity_store(&self) -> Arc<dyn IdentityStore>;
    /// Publishes (or replaces) one of this node's endpoints; returns at once.
    fn publish_endpoint(&self, endpoint: StoreEndpoint);
    /// Withdraws one of this node's endpoints; returns at once.
    fn withdraw_endpoint(&self, ip: IpAddr);
    /// Starts delivering the cluster's changes to `events`.
    fn watch(&self, events: mpsc::Sender<ClusterEvent>);
    /// The count of the node's writes still queued for the store.
    fn queued_writes(&self) -> QueuedWrites;
}

/// How many of the node's writes are queued for the store and not yet
/// tried, so that a stopping agent lets them land first: a pod drained just
/// before its node is deleted leaves the others' maps at once, not when the
/// node's lease expires.
#[derive(Debug, Clone, Default)]
pub struct QueuedWrites {
    count: Arc<AtomicUsize>,
    changed: Arc<Notify>,
}

impl QueuedWrites {
    /// One more write queued.
    fn add(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// One queued write tried (written, or remembered for when etcd answers).
    fn done(&self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Returns once no write is queued.
    pub async fn settled(&self) {
        loop {
            let changed = self.changed.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            changed.await;
        }
    }
}

/// What the cluster is told of a local endpoint: one entry per address, with
/// its identity and named ports.
pub fn published(spec: &EndpointSpec, identity: Identity, node: &str) -> Vec<StoreEndpoint> {
    let named = |proto: Protocol| {
        spec.ports
            .iter()
            .filter(|p| p.protocol == proto)
            .filter_map(|p| Some((p.name.clone()?, p.port)))
            .collect::<BTreeMap<String, u16>>()
    };
    endpoint_ips(spec)
        .into_iter()
        .map(|ip| StoreEndpoint {
            ip,
            identity,
            node: node.to_string(),
            namespace: spec.namespace.clone(),
            pod: spec.pod.clone(),
            named_ports: named(Protocol::Tcp),
            named_udp_ports: named(Protocol::Udp),
            ready: spec.ready,
        })
        .collect()
}

/// A pod's addresses.
pub fn endpoint_ips(spec: &EndpointSpec) -> Vec<IpAddr> {
    [spec.ipv4.map(IpAddr::V4), spec.ipv6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
        .collect()
}

/// One node on its own: identities from the file store, nobody to tell
/// about endpoints, no other node to hear from.
#[derive(Debug)]
pub struct SingleNode {
    identities: Arc<FileStore>,
}

impl SingleNode {
    /// A single node allocating identities in the file at `path`.
    pub fn new(path: &std::path::Path) -> Self {
        Self {
            identities: Arc::new(FileStore::new(path)),
        }
    }
}

impl Cluster for SingleNode {
    fn identity_store(&self) -> Arc<dyn IdentityStore> {
        self.identities.clone()
    }
    fn publish_endpoint(&self, _: StoreEndpoint) {}
    fn withdraw_endpoint(&self, _: IpAddr) {}
    fn queued_writes(&self) -> QueuedWrites {
        QueuedWrites::default()
    }
    fn watch(&self, _: mpsc::Sender<ClusterEvent>) {}
}
