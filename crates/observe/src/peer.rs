//! Hubble's `peer.Peer` service: which nodes' observers make up the cluster,
//! streamed as changes so that a relay follows nodes coming and going. The
//! agent serves it beside its observer API; the relay is its client
//! ([`follow`]).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::cli::TlsArgs;
use crate::proto::peer::peer_client::PeerClient;
use crate::proto::peer::peer_server::{self, PeerServer};
use crate::proto::peer::{ChangeNotification, ChangeNotificationType, NotifyRequest, Tls};

/// One node's observer API, as peers announce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    /// The node's name (`cluster/node` outside the default cluster).
    pub name: String,
    /// Where its observer API listens: `unix:///path`, `host:port` or a URL.
    pub address: String,
    /// The name its TLS certificate is verified against; `None`: plaintext.
    pub tls_server_name: Option<String>,
}

/// The cluster's nodes by name.
pub type PeerMap = BTreeMap<String, PeerNode>;

/// Responses buffered per Notify stream before the sender waits.
const NOTIFY_BUFFER: usize = 64;

fn notification(node: &PeerNode, kind: ChangeNotificationType) -> ChangeNotification {
    ChangeNotification {
        name: node.name.clone(),
        address: node.address.clone(),
        r#type: kind as i32,
        tls: node.tls_server_name.as_ref().map(|name| Tls {
            server_name: name.clone(),
        }),
    }
}

/// The notifications that turn `old` into `new`: deleted, added and updated
/// peers, by name.
pub fn changes(old: &PeerMap, new: &PeerMap) -> Vec<ChangeNotification> {
    let deleted = old
        .values()
        .filter(|node| !new.contains_key(&node.name))
        .map(|node| notification(node, ChangeNotificationType::PeerDeleted));
    let added_or_updated = new.values().filter_map(|node| match old.get(&node.name) {
        None => Some(notification(node, ChangeNotificationType::PeerAdded)),
        Some(before) if before != node => {
            Some(notification(node, ChangeNotificationType::PeerUpdated))
        }
        Some(_) => None,
    });
    deleted.chain(added_or_updated).collect()
}

/// The `peer.Peer` service over the cluster's nodes as the caller keeps them
/// (the agent: from its cluster store).
#[derive(Debug, Clone)]
pub struct PeerService {
    peers: watch::Receiver<PeerMap>,
}

impl PeerService {
    /// Serves the nodes `peers` holds, and each change made to it.
    pub fn new(peers: watch::Receiver<PeerMap>) -> Self {
        Self { peers }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> PeerServer<Self> {
        PeerServer::new(self)
    }
}

#[tonic::async_trait]
impl peer_server::Peer for PeerService {
    type NotifyStream = ReceiverStream<Result<ChangeNotification, Status>>;

    async fn notify(
        &self,
        _request: Request<NotifyRequest>,
    ) -> Result<Response<Self::NotifyStream>, Status> {
        let mut peers = self.peers.clone();
        let (tx, rx) = mpsc::channel(NOTIFY_BUFFER);
        tokio::spawn(async move {
            let mut sent = PeerMap::new();
            loop {
                let now = peers.borrow_and_update().clone();
                for change in changes(&sent, &now) {
                    if tx.send(Ok(change)).await.is_err() {
                        return;
                    }
                }
                sent = now;
                // The sender gone means the agent is stopping: end the stream.
                if peers.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Longest wait between two attempts to reach the peer service.
const MAX_RETRY: Duration = Duration::from_secs(10);
/// After a reconnection, how long the service has to announce every peer
/// again; peers it did not announce by then are gone.
const REANNOUNCE_GRACE: Duration = Duration::from_secs(1);

/// Follows the peer service at `address` (reached with `tls`) and keeps
/// `peers` equal to what it announces, reconnecting with backoff when the
/// stream breaks. Runs until `peers` has no receiver left.
pub async fn follow(address: String, tls: TlsArgs, peers: watch::Sender<PeerMap>) {
    let mut retry = Duration::from_millis(200);
    loop {
        match crate::cli::channel(&address, &tls).await {
            Ok(channel) => match PeerClient::new(channel).notify(NotifyRequest {}).await {
                Ok(stream) => {
                    retry = Duration::from_millis(200);
                    apply_stream(stream.into_inner(), &peers).await;
                    tracing::warn!(%address, "the peer service's stream ended; reconnecting");
                }
                Err(status) => tracing::warn!(%address, %status, "peer service refused Notify"),
            },
            Err(error) => {
                tracing::warn!(%address, error = %format!("{error:#}"), "peer service unreachable")
            }
        }
        if peers.is_closed() {
            return;
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Applies one Notify stream to `peers` until it ends. The service announces
/// every peer again on a new stream: peers it has not announced within
/// [`REANNOUNCE_GRACE`] are dropped then, not at once, so that a reconnection
/// does not make every node flap.
async fn apply_stream(
    mut stream: tonic::Streaming<ChangeNotification>,
    peers: &watch::Sender<PeerMap>,
) {
    let mut unconfirmed: Vec<String> = peers.borrow().keys().cloned().collect();
    let grace = tokio::time::sleep(REANNOUNCE_GRACE);
    tokio::pin!(grace);
    let mut grace_over = false;
    loop {
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(change)) => {
                    unconfirmed.retain(|name| *name != change.name);
                    peers.send_modify(|map| apply(map, change));
                }
                Ok(None) => return,
                Err(status) => {
                    tracing::warn!(%status, "peer service stream failed");
                    return;
                }
            },
            () = &mut grace, if !grace_over => {
                grace_over = true;
                let gone = std::mem::take(&mut unconfirmed);
                if !gone.is_empty() {
                    peers.send_modify(|map| map.retain(|name, _| !gone.contains(name)));
                }
            }
        }
    }
}

/// One notification applied to the peer map.
pub fn apply(map: &mut PeerMap, change: ChangeNotification) {
    match ChangeNotificationType::try_from(change.r#type) {
        Ok(ChangeNotificationType::PeerAdded | ChangeNotificationType::PeerUpdated) => {
            let node = PeerNode {
                name: change.name.clone(),
                address: change.address,
                tls_server_name: change.tls.map(|tls| tls.server_name),
            };
            map.insert(change.name, node);
        }
        Ok(ChangeNotificationType::PeerDeleted) => {
            map.remove(&change.name);
        }
        // Unknown kinds carry nothing to act on.
        Ok(ChangeNotificationType::Unknown) | Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, address: &str) -> PeerNode {
        PeerNode {
            name: name.into(),
            address: address.into(),
            tls_server_name: None,
        }
    }

    fn map(nodes: &[PeerNode]) -> PeerMap {
        nodes.iter().map(|n| (n.name.clone(), n.clone())).collect()
    }

    #[test]
    fn changes_name_what_was_deleted_added_and_updated() {
        let old = map(&[node("a", "unix:///a"), node("b", "unix:///b")]);
        let new = map(&[node("b", "unix:///b2"), node("c", "unix:///c")]);
        let kinds: Vec<(String, i32)> = changes(&old, &new)
            .into_iter()
            .map(|c| (c.name, c.r#type))
            .collect();
        assert_eq!(
            kinds,
            [
                ("a".into(), ChangeNotificationType::PeerDeleted as i32),
                ("b".into(), ChangeNotificationType::PeerUpdated as i32),
                ("c".into(), ChangeNotificationType::PeerAdded as i32),
            ]
        );
        assert!(changes(&new, &new).is_empty());
    }

    #[test]
    fn applying_the_changes_rebuilds_the_new_map() {
        let old = map(&[node("a", "unix:///a"), node("b", "unix:///b")]);
        let mut new = map(&[node("b", "unix:///b2"), node("c", "unix:///c")]);
        new.get_mut("c").expect("c").tls_server_name = Some("c.hubble".into());
        let mut rebuilt = old.clone();
        for change in changes(&old, &new) {
            apply(&mut rebuilt, change);
        }
        assert_eq!(rebuilt, new);
    }
}
