//! The agent's main loop: load the datapath, restore state, serve the API,
//! the DNS responder and the event reader.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use myelin_common::{EndpointInfo, EventKind, ObservationPoint};
use myelin_datapath::{Datapath, EventReader};
use myelin_dns::SharedZone;
use tokio::net::UnixListener;
use tokio::sync::Mutex;

use crate::api::{
    AgentStatus, EndpointSpec, EndpointStatus, EventCounters, Request, Response, ServiceStatus,
};
use crate::services::{self, ServiceTable};
use crate::state::{self, StoredEndpoint, StoredState};

/// How an agent is started.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node's name, as flows and status report it.
    pub node: String,
    /// Unix socket of the local API.
    pub api_socket: PathBuf,
    /// bpffs directory for this node's pins (maps and links).
    pub bpffs: PathBuf,
    /// Directory for the agent's state file.
    pub state_dir: PathBuf,
    /// Addresses the DNS responder listens on (UDP port 53).
    pub dns_listen: Vec<IpAddr>,
}

struct Node {
    name: String,
    datapath: Datapath,
    state_dir: PathBuf,
    endpoints: BTreeMap<(String, String), Endpoint>,
    services: ServiceTable,
    zone: SharedZone,
    counters: EventCounters,
}

struct Endpoint {
    id: u32,
    ifindex: u32,
    spec: EndpointSpec,
}

/// Runs the agent until SIGINT or SIGTERM. Programs and maps stay pinned and
/// attached when it exits, so traffic flows on while it is away.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state directory {}", config.state_dir.display()))?;
    let mut datapath = Datapath::load(&config.bpffs)?;
    let reader = datapath.event_reader()?;
    let zone: SharedZone = Arc::new(RwLock::new(myelin_dns::Zone::default()));
    let node = Arc::new(Mutex::new(Node {
        name: config.node.clone(),
        datapath,
        state_dir: config.state_dir.clone(),
        endpoints: BTreeMap::new(),
        services: ServiceTable::new(),
        zone: zone.clone(),
        counters: EventCounters::default(),
    }));
    restore(&node).await?;

    for ip in &config.dns_listen {
        let address = SocketAddr::new(*ip, 53);
        let socket = tokio::net::UdpSocket::bind(address)
            .await
            .with_context(|| format!("binding the DNS responder to {address}"))?;
        tokio::spawn(myelin_dns::serve_socket(socket, zone.clone()));
    }
    tokio::spawn(read_events(reader, node.clone()));

    if config.api_socket.exists() {
        std::fs::remove_file(&config.api_socket)
            .with_context(|| format!("removing stale socket {}", config.api_socket.display()))?;
    }
    let listener = UnixListener::bind(&config.api_socket)
        .with_context(|| format!("binding the API socket {}", config.api_socket.display()))?;
    tracing::info!(node = %config.node, socket = %config.api_socket.display(), "agent ready");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let node = node.clone();
                tokio::spawn(crate::rpc::serve_connection(stream, move |request: Request| {
                    let node = node.clone();
                    async move { node.lock().await.handle(request).map_err(|e| format!("{e:#}")) }
                }));
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    tracing::info!("agent stopping; programs stay attached");
    Ok(())
}

async fn restore(node: &Arc<Mutex<Node>>) -> anyhow::Result<()> {
    let mut node = node.lock().await;
    let stored = state::load(&node.state_dir)?;
    for service in stored.services {
        node.services
            .insert((service.namespace.clone(), service.name.clone()), service);
    }
    for StoredEndpoint { id, spec } in stored.endpoints {
        match attach(&mut node, id, &spec) {
            Ok(ifindex) => {
                node.endpoints.insert(
                    (spec.namespace.clone(), spec.pod.clone()),
                    Endpoint { id, ifindex, spec },
                );
            }
            // The pod went away while the agent was down: forget it.
            Err(e) => tracing::warn!(pod = %spec.pod, "endpoint not restored: {e}"),
        }
    }
    let pinned = node.datapath.pinned_interfaces();
    let known: Vec<String> = node
        .endpoints
        .values()
        .map(|e| e.spec.ifname.clone())
        .collect();
    for ifname in pinned.into_iter().filter(|i| !known.contains(i)) {
        tracing::info!(%ifname, "detaching programs of an endpoint that no longer exists");
        node.datapath.detach_endpoint(&ifname, 0)?;
    }
    node.refresh_zone();
    node.persist()
}

fn attach(node: &mut Node, id: u32, spec: &EndpointSpec) -> anyhow::Result<u32> {
    let mut info = EndpointInfo {
        endpoint_id: id,
        ..EndpointInfo::default()
    };
    if let Some(v4) = spec.ipv4 {
        info.ipv4 = v4.octets();
    }
    if let Some(v6) = spec.ipv6 {
        info.ipv6 = v6.octets();
    }
    let attachment = node.datapath.attach_endpoint(&spec.ifname, &info)?;
    Ok(attachment.ifindex)
}

impl Node {
    fn persist(&self) -> anyhow::Result<()> {
        state::save(
            &self.state_dir,
            &StoredState {
                endpoints: self
                    .endpoints
                    .values()
                    .map(|e| StoredEndpoint {
                        id: e.id,
                        spec: e.spec.clone(),
                    })
                    .collect(),
                services: self.services.values().cloned().collect(),
            },
        )
    }

    fn refresh_zone(&self) {
        let zone = services::zone(
            self.services.values(),
            self.endpoints.values().map(|e| &e.spec),
        );
        match self.zone.write() {
            Ok(mut z) => *z = zone,
            Err(poisoned) => *poisoned.into_inner() = zone,
        }
    }

    fn next_id(&self) -> u32 {
        let used: std::collections::BTreeSet<u32> = self.endpoints.values().map(|e| e.id).collect();
        (1..).find(|id| !used.contains(id)).unwrap_or(u32::MAX)
    }

    fn endpoint_status(&self, endpoint: &Endpoint) -> EndpointStatus {
        let (from, to) = self.datapath.stats(endpoint.ifindex).unwrap_or_default();
        let addresses = [
            endpoint.spec.ipv4.map(IpAddr::V4),
            endpoint.spec.ipv6.map(IpAddr::V6),
        ];
        EndpointStatus {
            id: endpoint.id,
            namespace: endpoint.spec.namespace.clone(),
            pod: endpoint.spec.pod.clone(),
            ifname: endpoint.spec.ifname.clone(),
            ifindex: endpoint.ifindex,
            addresses: addresses.into_iter().flatten().collect(),
            ready: endpoint.spec.ready,
            packets_from: from.packets,
            packets_to: to.packets,
        }
    }

    fn handle(&mut self, request: Request) -> anyhow::Result<Response> {
        Ok(match request {
            Request::EndpointUpsert(spec) => {
                let key = (spec.namespace.clone(), spec.pod.clone());
                let id = self
                    .endpoints
                    .get(&key)
                    .map_or_else(|| self.next_id(), |e| e.id);
                let ifindex = attach(self, id, &spec).with_context(|| {
                    format!(
                        "attaching the datapath to pod {}/{}",
                        spec.namespace, spec.pod
                    )
                })?;
                self.endpoints
                    .insert(key.clone(), Endpoint { id, ifindex, spec });
                self.refresh_zone();
                self.persist()?;
                let endpoint = &self.endpoints[&key];
                Response::Endpoint(self.endpoint_status(endpoint))
            }
            Request::EndpointDelete { namespace, pod } => {
                if let Some(endpoint) = self.endpoints.remove(&(namespace, pod)) {
                    self.datapath
                        .detach_endpoint(&endpoint.spec.ifname, endpoint.ifindex)?;
                    self.refresh_zone();
                    self.persist()?;
                }
                Response::Ok
            }
            Request::ServiceUpsert(spec) => {
                self.services
                    .insert((spec.namespace.clone(), spec.name.clone()), spec);
                self.refresh_zone();
                self.persist()?;
                Response::Ok
            }
            Request::ServiceDelete { namespace, name } => {
                self.services.remove(&(namespace, name));
                self.refresh_zone();
                self.persist()?;
                Response::Ok
            }
            Request::Status => Response::Status(self.status()),
        })
    }

    fn status(&self) -> AgentStatus {
        let endpoint_specs: Vec<&EndpointSpec> = self.endpoints.values().map(|e| &e.spec).collect();
        AgentStatus {
            node: self.name.clone(),
            endpoints: self
                .endpoints
                .values()
                .map(|e| self.endpoint_status(e))
                .collect(),
            services: self
                .services
                .values()
                .map(|s| ServiceStatus {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    cluster_ips: s.cluster_ips.clone(),
                    ports: s
                        .ports
                        .iter()
                        .map(|p| format!("{}/{}", p.port, p.protocol))
                        .collect(),
                    backends: services::backends(s, endpoint_specs.iter().copied())
                        .iter()
                        .map(|b| b.address.to_string())
                        .collect(),
                })
                .collect(),
            dns_names: self.zone.read().map(|z| z.len()).unwrap_or(0),
            events: self.counters.clone(),
        }
    }
}

async fn read_events(mut reader: EventReader, node: Arc<Mutex<Node>>) {
    let mut batch = Vec::new();
    loop {
        batch.clear();
        if let Err(e) = reader.read(&mut batch).await {
            tracing::error!("event ring: {e}");
            return;
        }
        let mut node = node.lock().await;
        let counters = &mut node.counters;
        counters.lost = reader.lost();
        for event in &batch {
            counters.seen += 1;
            match (
                EventKind::from_u8(event.kind),
                ObservationPoint::from_u8(event.observation_point),
            ) {
                (Some(EventKind::Drop), _) => counters.drops += 1,
                (Some(EventKind::Trace), Some(ObservationPoint::ToStack)) => counters.to_stack += 1,
                (Some(EventKind::Trace), Some(ObservationPoint::ToEndpoint)) => {
                    counters.to_endpoint += 1
                }
                _ => {}
            }
        }
    }
}
