//! Myelin's L7 proxy in the benchmark's roles, and a stand-in for the agent's side of it.
//!
//! The node-proxy role is the proxy configured by the agent over the control socket (the
//! agent stand-in pushes a snapshot and consumes every L7 event, as the agent does), with a
//! transparent listener the datapath hands connections to (`bpf_sk_assign`), or a
//! fixed-upstream cluster listener the client connects to directly (diagnostics).
//! The sidecar role is the same proxy without an agent: it applies its snapshot itself and
//! drops its L7 events (a one-slot queue), which spares the sidecar model the cost of
//! visibility.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use myelin_proxy::config::{
    Cluster, Direction, HttpRule, L7Policy, Listener, ListenerUpstream, MissingPolicy, PolicyKey,
    Snapshot,
};
use myelin_proxy::control::{ControlServer, ProxyMessage};
use myelin_proxy::{Proxy, ProxyConfig};
use tokio::sync::broadcast::error::RecvError;

/// The listener's name in the benchmark's snapshots.
const LISTENER: &str = "bench";
/// The cluster's name in the benchmark's snapshots.
const CLUSTER: &str = "upstream";
/// How long the proxy waits for its first snapshot from the agent.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// One listener forwarding to one upstream, optionally with an L7 policy.
#[derive(clap::Args, Debug, Clone)]
pub struct Route {
    /// Address the listener binds.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The upstream every connection goes to; with `--transparent`, the server whose
    /// connections the datapath redirects here (the key of the L7 policy).
    #[arg(long)]
    upstream: Option<SocketAddr>,
    /// A transparent listener (TPROXY semantics, `IP_TRANSPARENT`): connections arrive from
    /// the datapath's redirect and go to their original destination.
    #[arg(long)]
    transparent: bool,
    /// Put an ingress L7 policy on the upstream (allow `GET` and `POST` on any path, deny
    /// the rest), so every request is evaluated as with a CiliumNetworkPolicy `rules.http`
    /// entry.
    #[arg(long)]
    l7_policy: bool,
    /// More ports of the upstream's address that get the same L7 policy (a transparent
    /// listener serves every port the datapath redirects).
    #[arg(long = "l7-port", requires = "l7_policy")]
    l7_ports: Vec<u16>,
}

impl Route {
    /// The snapshot serving this route.
    fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let listen = self.listen.context("--listen is required here")?;
        let upstream = self.upstream.context("--upstream is required here")?;
        let l7_policies = if self.l7_policy {
            std::iter::once(upstream.port())
                .chain(self.l7_ports.iter().copied())
                .map(|port| L7Policy {
                    key: PolicyKey {
                        endpoint: upstream.ip(),
                        port,
                        direction: Direction::Ingress,
                    },
                    http: vec![HttpRule {
                        method: Some("GET|POST".into()),
                        path: Some("/.*".into()),
                        ..HttpRule::default()
                    }],
                })
                .collect()
        } else {
            Vec::new()
        };
        let (listener_upstream, clusters) = if self.transparent {
            (ListenerUpstream::Transparent, Vec::new())
        } else {
            (
                ListenerUpstream::Cluster(CLUSTER.into()),
                vec![Cluster {
                    name: CLUSTER.into(),
                    endpoints: vec![upstream],
                }],
            )
        };
        Ok(Snapshot {
            version: 1,
            listeners: vec![Listener {
                name: LISTENER.into(),
                address: listen,
                upstream: listener_upstream,
                direction: Direction::Ingress,
                missing_policy: if self.l7_policy {
                    MissingPolicy::Deny
                } else {
                    MissingPolicy::Allow
                },
                // As the agent configures ingress listeners.
                original_source: self.transparent,
            }],
            clusters,
            l7_policies,
            ..Snapshot::default()
        })
    }
}

/// Arguments of `myelin-bench proxy`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Runtime worker threads (nginx and HAProxy run with one worker in the comparison).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Take the configuration from the agent on this control socket (node-proxy role);
    /// without it the proxy applies the route below itself (sidecar role).
    #[arg(long, conflicts_with_all = ["listen", "upstream", "l7_policy", "l7_ports", "transparent"])]
    control_socket: Option<PathBuf>,
    #[command(flatten)]
    route: Route,
}

/// Arguments of `myelin-bench agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// The control socket to serve.
    #[arg(long)]
    control_socket: PathBuf,
    #[command(flatten)]
    route: Route,
}

/// Runs the proxy until SIGTERM/SIGINT.
pub fn run_proxy(args: &ProxyArgs) -> anyhow::Result<()> {
    // The proxy's own runtime choice: one worker is a current-thread runtime.
    let mut runtime_config = ProxyConfig::new("");
    runtime_config.workers = args.workers.max(1);
    let runtime = runtime_config.runtime().context("starting the runtime")?;
    runtime.block_on(async {
        let proxy = match &args.control_socket {
            Some(socket) => {
                let proxy = Proxy::new(ProxyConfig::new(socket));
                proxy.start()?;
                tokio::time::timeout(SNAPSHOT_WAIT, proxy.wait_for_version(1))
                    .await
                    .with_context(|| {
                        format!(
                            "no snapshot from the agent on {} within {SNAPSHOT_WAIT:?}",
                            socket.display()
                        )
                    })?;
                proxy
            }
            None => {
                let snapshot = args.route.snapshot()?;
                // Never connected: `start()` is not called, so the socket path is unused.
                let mut config = ProxyConfig::new("/nonexistent/myelin-bench-sidecar.sock");
                config.event_queue = 1;
                let proxy = Proxy::new(config);
                proxy
                    .apply(snapshot)
                    .map_err(|e| anyhow::anyhow!("the proxy rejected the snapshot: {e}"))?;
                proxy
            }
        };
        let address = proxy
            .listener_addr(LISTENER)
            .context("the listener is not bound")?;
        println!("proxy listening on {address}");
        crate::wait_for_stop().await?;
        proxy.shutdown();
        Ok(())
    })
}

/// Serves the control socket until SIGTERM/SIGINT: pushes the route's snapshot and consumes
/// the proxy's messages, counting L7 events.
pub fn run_agent(args: &AgentArgs) -> anyhow::Result<()> {
    let snapshot = args.route.snapshot()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let server = ControlServer::bind(&args.control_socket)
            .with_context(|| format!("binding {}", args.control_socket.display()))?;
        let mut messages = server.subscribe();
        server.push(snapshot);
        println!("agent serving {}", args.control_socket.display());
        let (mut events, mut lagged) = (0_u64, 0_u64);
        let stop = crate::wait_for_stop();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                stopped = &mut stop => {
                    stopped?;
                    break;
                }
                message = messages.recv() => match message {
                    Ok(ProxyMessage::Event(_)) => events += 1,
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => lagged += n,
                    Err(RecvError::Closed) => break,
                },
            }
        }
        eprintln!("agent: {events} L7 events consumed, {lagged} lost to lag");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(transparent: bool, l7_policy: bool) -> Route {
        Route {
            listen: Some("0.0.0.0:15001".parse().expect("addr")),
            upstream: Some("10.250.2.2:80".parse().expect("addr")),
            transparent,
            l7_policy,
            l7_ports: vec![50051],
        }
    }

    #[test]
    fn fixed_upstream_snapshot_compiles() {
        let snapshot = route(false, false).snapshot().expect("snapshot");
        assert_eq!(snapshot.clusters.len(), 1);
        assert_eq!(snapshot.listeners[0].missing_policy, MissingPolicy::Allow);
        myelin_proxy::rules::CompiledSnapshot::compile(snapshot).expect("compiles");
    }

    #[test]
    fn transparent_snapshot_with_policy_compiles() {
        let snapshot = route(true, true).snapshot().expect("snapshot");
        assert!(snapshot.clusters.is_empty());
        assert_eq!(
            snapshot.listeners[0].upstream,
            ListenerUpstream::Transparent
        );
        assert_eq!(snapshot.l7_policies[0].key.port, 80);
        assert_eq!(snapshot.l7_policies[1].key.port, 50051);
        myelin_proxy::rules::CompiledSnapshot::compile(snapshot).expect("compiles");
    }

    #[test]
    fn a_route_needs_both_addresses() {
        let mut r = route(false, false);
        r.upstream = None;
        assert!(r.snapshot().is_err());
    }
}
