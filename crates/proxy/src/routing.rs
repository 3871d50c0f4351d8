//! The routing layer: where a client connection goes. Today a transparent listener's
//! connection goes to its original destination and a cluster listener's to the cluster's
//! next endpoint; routes and balancing (ingress, traffic management) plug in here.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::config::{Listener, ListenerUpstream};
use crate::rules::CompiledSnapshot;
use crate::socket::original_destination;

/// Why a connection has nowhere to go.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteError {
    #[error("no original destination: {0}")]
    OriginalDestination(std::io::Error),
    #[error("cluster {0:?} has no endpoint")]
    NoEndpoint(String),
}

/// The upstream address of a connection `listener` accepted.
pub(crate) fn route(
    snapshot: &CompiledSnapshot,
    listener: &Listener,
    stream: &TcpStream,
) -> Result<SocketAddr, RouteError> {
    match &listener.upstream {
        ListenerUpstream::Transparent => {
            original_destination(stream).map_err(RouteError::OriginalDestination)
        }
        ListenerUpstream::Cluster(cluster) => snapshot
            .pick_endpoint(cluster)
            .ok_or_else(|| RouteError::NoEndpoint(cluster.clone())),
    }
}
