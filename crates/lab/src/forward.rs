//! Forwarding a port of the host's loopback to the same port on a node's
//! loopback, so that a browser or the `hubble` CLI on this machine reaches a
//! node's service map and observer. The node's side of each connection is a
//! socket created inside the node's network namespace; nothing else of the
//! lab becomes reachable from the host.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::{TcpListener, TcpStream};

/// Listens on 127.0.0.1:`port` of the host and forwards each connection to
/// 127.0.0.1:`port` inside `netns`. `None` when the host port is taken (by
/// another lab, say): the lab then runs without it.
pub async fn expose(netns: String, port: u16) -> Option<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await.ok()?;
    let address = listener.local_addr().ok()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let netns = netns.clone();
            tokio::spawn(async move {
                match connect_inside(netns, port).await {
                    Ok(mut upstream) => {
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    Err(e) => tracing::debug!(port, "forwarding into the node failed: {e:#}"),
                }
            });
        }
    });
    Some(address)
}

async fn connect_inside(netns: String, port: u16) -> anyhow::Result<TcpStream> {
    let stream = tokio::task::spawn_blocking(move || {
        crate::net::in_netns(&netns, move || {
            let stream = std::net::TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                std::time::Duration::from_secs(2),
            )?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        })
    })
    .await??;
    Ok(TcpStream::from_std(stream)?)
}
