//! A simulated agent: the store's real node session (its own etcd connection, the node's
//! lease kept alive, its record and endpoints written under it, as the agent writes them)
//! and its own watch of every node's endpoints, decoded as the agent decodes them into a
//! map of address → identity. It does not list the endpoints first (it starts watching
//! from the revision the driver gives, when the cluster is populated) and keeps neither
//! the store watch's copy of every raw entry nor a policy engine: those are what the full
//! agent (`cluster-agent`) measures.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use anyhow::Context as _;
use etcd_client::{Client, EventType, WatchOptions};
use myelin_policy::Identity;
use myelin_store::{Endpoint, Keys, Node, NodeSession, Store, StoreAddress, StoreConfig};

use super::tracker::Tracker;
use crate::cluster_agent::monotonic_ns;

/// One simulated agent's writing side.
pub struct LightAgent {
    /// The node's name.
    pub name: String,
    /// Its session: lease, record, endpoints.
    pub session: NodeSession,
    /// Its endpoints as published, by slot.
    pub endpoints: Vec<Endpoint>,
    /// Addresses it used so far (a replaced endpoint gets the next).
    pub next_address: u32,
    // Keeps the store's connection (and its runtime thread) alive.
    _store: Store,
}

impl LightAgent {
    /// Connects node `name` (a blocking call: run it off the async workers), takes its
    /// lease and publishes its record.
    pub async fn start(
        address: &str,
        cluster: &str,
        name: String,
        index: u32,
    ) -> anyhow::Result<Self> {
        let config = StoreConfig::new(StoreAddress::Tcp(vec![address.to_string()]), cluster);
        let store = tokio::task::spawn_blocking(move || Store::connect(&config))
            .await
            .context("the connecting thread")??;
        let session = NodeSession::start(&store, &name, myelin_store::LAB_LEASE_TTL).await?;
        let underlay = IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(10, 99, 0, 0)) + index,
        ));
        session
            .publish_node(&Node {
                name: name.clone(),
                addresses: vec![underlay],
                pod_cidrs: Vec::new(),
                tunnel_endpoint: Some(underlay),
                observer_address: None,
            })
            .await?;
        Ok(Self {
            name,
            session,
            endpoints: Vec::new(),
            next_address: 0,
            _store: store,
        })
    }
}

/// Watches every endpoint from `revision` on its own etcd connection until the driver
/// drops the returned handle's runtime; reports sightings to `tracker`. Returns once etcd
/// has created the watch.
pub async fn watch(
    address: &str,
    keys: &Keys,
    revision: i64,
    tracker: Arc<Tracker>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut client = Client::connect([address], None)
        .await
        .context("connecting a watcher")?;
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision);
    let mut stream = client
        .watch(keys.endpoints(), Some(options))
        .await
        .context("creating a watch")?;
    let created = stream.message().await.context("creating a watch")?;
    if !created.is_some_and(|r| r.created()) {
        anyhow::bail!("etcd did not create the watch");
    }
    let keys = keys.clone();
    Ok(tokio::spawn(async move {
        // The watch lives as long as its client.
        let _client = client;
        let mut view: HashMap<IpAddr, Identity> = HashMap::new();
        while let Ok(Some(response)) = stream.message().await {
            let now = monotonic_ns();
            tracing::debug!(events = response.events().len(), "watch response");
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                let Ok(ip) = keys.parse_endpoint(&key) else {
                    continue;
                };
                match event.event_type() {
                    EventType::Put => {
                        let Ok(endpoint) = serde_json::from_slice::<Endpoint>(kv.value()) else {
                            continue;
                        };
                        view.insert(ip, endpoint.identity);
                        tracker.saw(ip, endpoint.identity, now);
                    }
                    EventType::Delete => {
                        view.remove(&ip);
                    }
                }
            }
        }
    }))
}
