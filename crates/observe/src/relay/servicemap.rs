//! The whole cluster's service map, served by the relay as Hubble UI is
//! served beside Hubble Relay: one map fed from every node's flows.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tonic::Request;

use super::RelayArgs;
use super::pool::{CHECK_INTERVAL, PeerPool};
use super::service::RelayService;
use crate::proto::observer::GetFlowsRequest;
use crate::proto::observer::get_flows_response::ResponseTypes;
use crate::proto::observer::observer_server::Observer as _;
use crate::servicemap::{AccessToken, ServiceMapConfig, SharedServiceMap};

/// The page's listener and token when `--servicemap` or `--servicemap-fd`
/// (taken over as `inherited`) asks for it.
pub(super) async fn listener(
    args: &RelayArgs,
    inherited: Option<std::net::TcpListener>,
) -> anyhow::Result<Option<(TcpListener, AccessToken)>> {
    let listener = match (args.servicemap, inherited) {
        (None, None) => return Ok(None),
        (Some(address), _) => TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the service map page {address}"))?,
        (None, Some(listener)) => {
            listener
                .set_nonblocking(true)
                .context("--servicemap-fd: making the socket non-blocking")?;
            TcpListener::from_std(listener).context("--servicemap-fd: serving the socket")?
        }
    };
    let Some(file) = &args.servicemap_token_file else {
        bail!(
            "--servicemap needs --servicemap-token-file: the page is served to its token's holders only"
        );
    };
    Ok(Some((listener, AccessToken::load_or_create(file)?)))
}

/// A map fed from a following GetFlows on the relay itself. A follow covers
/// the nodes connected when it starts, so it is started again whenever that
/// set changes (a node joins, leaves or comes back), each time from the last
/// flow it saw (at first, one map window back), so that nothing the nodes
/// still hold is missed across a restart.
pub(super) fn follow_cluster(relay: RelayService, pool: PeerPool) -> SharedServiceMap {
    let config = ServiceMapConfig::default();
    let window = config.window;
    let map = SharedServiceMap::new(config);
    let fed = map.clone();
    tokio::spawn(async move {
        let mut last_seen: Option<SystemTime> = None;
        loop {
            let connected = connected_nodes(&pool);
            let since = match last_seen {
                Some(time) => time + Duration::from_nanos(1),
                None => SystemTime::now() - window,
            };
            let request = Request::new(GetFlowsRequest {
                follow: true,
                since: Some(since.into()),
                ..Default::default()
            });
            let mut stream = match relay.get_flows(request).await {
                Ok(stream) => stream.into_inner(),
                Err(status) => {
                    tracing::warn!(%status, "the service map could not follow the relay");
                    tokio::time::sleep(CHECK_INTERVAL).await;
                    continue;
                }
            };
            let mut check = tokio::time::interval(CHECK_INTERVAL);
            loop {
                tokio::select! {
                    next = tokio_stream::StreamExt::next(&mut stream) => match next {
                        Some(Ok(response)) => {
                            if let Some(ResponseTypes::Flow(flow)) = response.response_types {
                                let time = flow.time.and_then(|t| SystemTime::try_from(t).ok());
                                last_seen = last_seen.max(time);
                                fed.push(flow);
                            }
                        }
                        // The stream ended (every node's did): follow again.
                        Some(Err(_)) | None => {
                            tokio::time::sleep(CHECK_INTERVAL).await;
                            break;
                        }
                    },
                    _ = check.tick() => {
                        if connected_nodes(&pool) != connected {
                            break;
                        }
                    }
                }
            }
        }
    });
    map
}

/// The names of the nodes the relay holds a connection to.
fn connected_nodes(pool: &PeerPool) -> BTreeSet<String> {
    pool.list()
        .into_iter()
        .filter(|peer| peer.client.is_some())
        .map(|peer| peer.node.name)
        .collect()
}
