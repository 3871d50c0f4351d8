//! `myelin relay`: Hubble Relay for Myelin. One observer API over every
//! node's: flows merged in time order, the cluster's status and nodes. It
//! finds the nodes through Hubble's peer service (`--peer-service`) or a
//! fixed list (`--peer`), and follows them as they come and go.

mod pool;
mod service;
mod servicemap;
mod sort;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use tokio::sync::watch;

pub use pool::{CHECK_INTERVAL, Peer, PeerPool};
pub use service::RelayService;
pub use sort::{BUFFER_LEN, DRAIN_AFTER};

use crate::cli::TlsArgs;
use crate::peer::{PeerMap, PeerNode};
use crate::server::ServeConfig;
use crate::tls::ServerTls;

/// `myelin relay`'s command line.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// A node's observer: NAME=ADDRESS (unix:///path, host:port, tls://host:port); repeatable.
    #[arg(long = "peer", value_name = "NAME=ADDRESS")]
    pub peers: Vec<String>,
    /// Hubble's peer service to learn the nodes from (any node's observer
    /// address), instead of or beside --peer.
    #[arg(long)]
    pub peer_service: Option<String>,
    /// Unix socket to serve the relay's observer API on.
    #[arg(long)]
    pub listen_socket: Option<PathBuf>,
    /// TCP address to serve the relay's observer API on (plaintext unless the TLS files
    /// are given; keep it on loopback then).
    #[arg(long, conflicts_with = "listen_fd")]
    pub listen_address: Option<SocketAddr>,
    /// A listening TCP socket inherited as this file descriptor, served as
    /// --listen-address would be (a supervisor keeps the port across restarts).
    #[arg(long, value_name = "FD")]
    pub listen_fd: Option<i32>,
    /// Certificate (PEM chain) for TLS on --listen-address (Hubble Relay's flag).
    #[arg(long, requires = "tls_relay_server_key_file")]
    pub tls_relay_server_cert_file: Option<PathBuf>,
    /// Private key (PEM) for TLS on --listen-address.
    #[arg(long, requires = "tls_relay_server_cert_file")]
    pub tls_relay_server_key_file: Option<PathBuf>,
    /// CA certificates the relay's clients must present certificates from (mutual TLS),
    /// comma-separated.
    #[arg(long, value_delimiter = ',', requires = "tls_relay_server_cert_file")]
    pub tls_relay_client_ca_files: Vec<PathBuf>,
    /// TCP address to serve the whole cluster's service map page on (Hubble UI's
    /// role), built from the merged flows.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "servicemap_fd")]
    pub servicemap: Option<SocketAddr>,
    /// A listening TCP socket inherited as this file descriptor for the service map page.
    #[arg(long, value_name = "FD")]
    pub servicemap_fd: Option<i32>,
    /// The service map page's access token file (created, mode 0600, when missing).
    #[arg(long, value_name = "FILE")]
    pub servicemap_token_file: Option<PathBuf>,
    /// Client certificate (PEM) the relay presents to TLS peers (mutual TLS).
    #[arg(long, requires = "tls_hubble_client_key_file")]
    pub tls_hubble_client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --tls-hubble-client-cert-file.
    #[arg(long, requires = "tls_hubble_client_cert_file")]
    pub tls_hubble_client_key_file: Option<PathBuf>,
    /// CA certificates to verify TLS peers with, comma-separated; default: the system's roots.
    #[arg(long, value_delimiter = ',')]
    pub tls_hubble_server_ca_files: Vec<PathBuf>,
}

impl RelayArgs {
    /// How the relay reaches TCP peers: TLS for `tls://` addresses, peers
    /// announced with a server name, or when a client certificate is given.
    fn peer_tls(&self) -> TlsArgs {
        TlsArgs {
            tls: false,
            tls_ca_cert_files: self.tls_hubble_server_ca_files.clone(),
            tls_client_cert_file: self.tls_hubble_client_cert_file.clone(),
            tls_client_key_file: self.tls_hubble_client_key_file.clone(),
            tls_server_name: None,
        }
    }
}

/// Parses `--peer NAME=ADDRESS` values.
pub fn parse_peers(values: &[String]) -> anyhow::Result<PeerMap> {
    let mut peers = PeerMap::new();
    for value in values {
        let Some((name, address)) = value.split_once('=') else {
            bail!(
                "--peer {value:?}: expected NAME=ADDRESS, e.g. node1=unix:///run/node1/observer.sock"
            );
        };
        if name.is_empty() || address.is_empty() {
            bail!("--peer {value:?}: the name and the address must not be empty");
        }
        let node = PeerNode {
            name: name.to_string(),
            address: address.to_string(),
            tls_server_name: None,
        };
        if peers.insert(name.to_string(), node).is_some() {
            bail!("--peer {value:?}: the node {name} is named twice");
        }
    }
    Ok(peers)
}

/// Listening sockets the relay's parent handed it (`--listen-fd`,
/// `--servicemap-fd`), already taken over by the binary: this library holds
/// no unsafe code.
#[derive(Debug, Default)]
pub struct InheritedListeners {
    /// The observer API's TCP listener.
    pub observer: Option<std::net::TcpListener>,
    /// The service map page's listener.
    pub servicemap: Option<std::net::TcpListener>,
}

/// Runs the relay until the process is stopped.
pub async fn run(args: RelayArgs, inherited: InheritedListeners) -> anyhow::Result<()> {
    if args.listen_socket.is_none() && args.listen_address.is_none() && args.listen_fd.is_none() {
        bail!(
            "give --listen-socket, --listen-address or --listen-fd: the relay must serve somewhere"
        );
    }
    let servicemap = servicemap::listener(&args, inherited.servicemap).await?;
    let fixed = parse_peers(&args.peers)?;
    if fixed.is_empty() && args.peer_service.is_none() {
        bail!(
            "give --peer NAME=ADDRESS (repeatable) or --peer-service ADDRESS: the relay needs nodes"
        );
    }
    let (discovery_tx, discovery) = watch::channel(fixed.clone());
    if let Some(address) = args.peer_service.clone() {
        // The fixed peers stay; the service's are added to them.
        let (announced_tx, mut announced) = watch::channel(PeerMap::new());
        tokio::spawn(crate::peer::follow(address, args.peer_tls(), announced_tx));
        tokio::spawn(async move {
            while announced.changed().await.is_ok() {
                let mut all = fixed.clone();
                all.extend(announced.borrow_and_update().clone());
                if discovery_tx.send(all).is_err() {
                    return;
                }
            }
        });
    }
    let pool = PeerPool::start(discovery, args.peer_tls());
    let relay = RelayService::new(pool.clone());
    if let Some((listener, token)) = servicemap {
        let map = servicemap::follow_cluster(relay.clone(), pool.clone());
        tokio::spawn(crate::servicemap::serve_servicemap(listener, map, token));
    }
    let config = ServeConfig {
        unix_socket: args.listen_socket.clone(),
        tcp: args.listen_address,
    };
    let mut server = crate::server::bind_relay(relay, &config)
        .await
        .context("starting the relay's observer API")?;
    if let Some(listener) = inherited.observer {
        server = server
            .with_tcp_listener(listener)
            .context("serving on --listen-fd")?;
    }
    if let (Some(cert_file), Some(key_file)) = (
        args.tls_relay_server_cert_file,
        args.tls_relay_server_key_file,
    ) {
        server = server
            .with_tls(&ServerTls {
                cert_file,
                key_file,
                client_ca_files: args.tls_relay_client_ca_files,
            })
            .context("the relay's TLS")?;
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    server
        .run(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_name_equals_address() {
        let peers = parse_peers(&["node1=unix:///a.sock".into(), "node2=10.0.0.2:4244".into()])
            .expect("parse");
        assert_eq!(peers["node2"].address, "10.0.0.2:4244");
        for bad in ["node1", "=x", "n=", "node1=a"] {
            let values = vec!["node1=unix:///a.sock".to_string(), bad.to_string()];
            assert!(parse_peers(&values).is_err(), "{bad}");
        }
    }
}
