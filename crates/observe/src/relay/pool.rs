//! The relay's connections to the nodes' observers: one per peer the
//! discovery names, connected in the background, checked every
//! [`CHECK_INTERVAL`] and marked unavailable as soon as a call fails.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::Channel;

use crate::cli::TlsArgs;
use crate::peer::{PeerMap, PeerNode};
use crate::proto::observer::ServerStatusRequest;
use crate::proto::observer::observer_client::ObserverClient;

/// How often every peer is checked (and unavailable ones retried).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Longest a connection attempt or a check may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// One peer as the relay sees it now.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The node and its address.
    pub node: PeerNode,
    /// The connection, while the peer is available.
    pub client: Option<ObserverClient<Channel>>,
    /// Why the peer is unavailable, when it is.
    pub error: Option<String>,
}

/// The relay's peers and their connections; clones share them.
#[derive(Debug, Clone)]
pub struct PeerPool {
    peers: Arc<Mutex<BTreeMap<String, Peer>>>,
}

impl PeerPool {
    /// Follows the peers `discovery` names, connecting to each with `tls`
    /// (its server name from the peer's announcement), until the discovery
    /// ends.
    pub fn start(discovery: watch::Receiver<PeerMap>, tls: TlsArgs) -> Self {
        let pool = Self {
            peers: Arc::default(),
        };
        tokio::spawn(pool.clone().maintain(discovery, tls));
        pool
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Peer>> {
        // A panic elsewhere cannot leave the map half-changed: every change
        // is one insert, remove or field write.
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every peer, by name.
    pub fn list(&self) -> Vec<Peer> {
        self.lock().values().cloned().collect()
    }

    /// Marks `name` unavailable after a failed call; the next check
    /// reconnects.
    pub fn mark_unavailable(&self, name: &str, error: String) {
        if let Some(peer) = self.lock().get_mut(name) {
            peer.client = None;
            peer.error = Some(error);
        }
    }

    async fn maintain(self, mut discovery: watch::Receiver<PeerMap>, tls: TlsArgs) {
        loop {
            let wanted = discovery.borrow_and_update().clone();
            self.sync(&wanted);
            self.check_all(&tls).await;
            tokio::select! {
                changed = discovery.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
        }
    }

    /// Adds the peers the discovery names, drops the others, and forgets the
    /// connection of a peer whose address changed.
    fn sync(&self, wanted: &PeerMap) {
        let mut peers = self.lock();
        peers.retain(|name, _| wanted.contains_key(name));
        for (name, node) in wanted {
            match peers.get_mut(name) {
                Some(peer) if peer.node == *node => {}
                Some(peer) => {
                    *peer = Peer {
                        node: node.clone(),
                        client: None,
                        error: Some("not connected yet".into()),
                    }
                }
                None => {
                    peers.insert(
                        name.clone(),
                        Peer {
                            node: node.clone(),
                            client: None,
                            error: Some("not connected yet".into()),
                        },
                    );
                }
            }
        }
    }

    /// Connects the unavailable peers and checks the available ones, all at
    /// once.
    async fn check_all(&self, tls: &TlsArgs) {
        let checks = self.list().into_iter().map(|peer| async move {
            let outcome = tokio::time::timeout(CALL_TIMEOUT, check(&peer, tls))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")));
            (peer.node, outcome)
        });
        for (node, outcome) in futures::future::join_all(checks).await {
            let mut peers = self.lock();
            // Only if the peer is still the one checked.
            let Some(peer) = peers.get_mut(&node.name).filter(|p| p.node == node) else {
                continue;
            };
            match outcome {
                Ok(client) => {
                    if peer.client.is_none() {
                        tracing::info!(node = %node.name, address = %node.address, "relay connected to peer");
                    }
                    peer.client = Some(client);
                    peer.error = None;
                }
                Err(error) => {
                    if peer.client.is_some() {
                        tracing::warn!(node = %node.name, %error, "relay lost peer");
                    }
                    peer.client = None;
                    peer.error = Some(error);
                }
            }
        }
    }
}

/// A working connection to `peer`: its current one if it still answers,
/// else a new one.
async fn check(peer: &Peer, tls: &TlsArgs) -> Result<ObserverClient<Channel>, String> {
    let mut client = match &peer.client {
        Some(client) => client.clone(),
        None => connect(&peer.node, tls).await?,
    };
    client
        .server_status(ServerStatusRequest {})
        .await
        .map_err(|status| status.message().to_string())?;
    Ok(client)
}

async fn connect(node: &PeerNode, tls: &TlsArgs) -> Result<ObserverClient<Channel>, String> {
    // A unix socket is plaintext whatever the TCP peers need.
    let mut tls = if node.address.starts_with("unix://") {
        TlsArgs::default()
    } else {
        tls.clone()
    };
    if let Some(name) = &node.tls_server_name {
        tls.tls = true;
        tls.tls_server_name = Some(name.clone());
    }
    crate::cli::connect_with(&node.address, &tls)
        .await
        .map_err(|error| format!("{error:#}"))
}
