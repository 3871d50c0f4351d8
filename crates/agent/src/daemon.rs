//! The agent's main loop: load the datapath, restore state, serve the API,
//! the DNS responder and the event readers.
//!
//! One task owns the node's state ([`Node`]) and applies every change: API
//! requests reach it over a channel, one at a time. After each change it
//! publishes a [`View`]; the kernel and proxy event readers enrich flows
//! from the view they hold, so flows never wait for a change and changes
//! never wait for flows. The conntrack collector has a map handle of its
//! own and needs neither.

mod agent_events;
mod cni;
mod readers;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use myelin_common::EndpointInfo;
use myelin_datapath::{Datapath, OVERLAY_DEVICE, RoutingMode, TunnelRoute, links_holding, pod_mtu};
use myelin_dns::SharedZone;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};

use myelin_api::{ApiError, ErrorKind};

use crate::api::{
    AgentStatus, EndpointMac as _, EndpointSpec, EndpointStatus, Request, Response, ServiceStatus,
};
use crate::cluster::{
    Cluster, ClusterEvent, EtcdCluster, EtcdClusterConfig, RemoteState, SingleNode,
};
use crate::reconcile::{Applied, Desired, Dirty};
use crate::services::{self, ServiceTable};
use crate::state::{self, StoredEndpoint, StoredState};
use crate::view::View;
use crate::{conntrack, l7, policy, reconcile};
use myelin_observe::peer::{PeerMap, PeerNode, PeerService};
use myelin_observe::proto::flow::AgentEventType;
use myelin_observe::servicemap::{
    AccessToken, ServiceMapConfig, SharedServiceMap, serve_servicemap,
};
use myelin_observe::{Metrics, Observer, ObserverConfig, ServeConfig};
use myelin_policy::{EndpointKey, PolicyEngine};
use myelin_proxy::control::ControlServer;
use prometheus_client::registry::Registry;

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
    /// Addresses the DNS responder listens on (UDP port 53); also the node's
    /// own addresses.
    pub dns_listen: Vec<IpAddr>,
    /// Already bound DNS sockets handed over by the parent (file
    /// descriptors): they outlive the agent, so queries sent while it
    /// restarts wait in the socket and are answered, not refused. When
    /// given, the agent does not bind `dns_listen` itself.
    pub dns_fds: Vec<i32>,
    /// Unix socket the node's proxy connects to for its configuration.
    pub proxy_socket: Option<PathBuf>,
    /// Unix socket of the Hubble-compatible observer API.
    pub observer_socket: Option<PathBuf>,
    /// TCP address of the observer API (plaintext without `observer_tls`: keep it on loopback).
    pub observer_tcp: Option<SocketAddr>,
    /// TLS for the observer's TCP listener (the unix socket stays plaintext).
    pub observer_tls: Option<myelin_observe::ServerTls>,
    /// TCP address of the Prometheus metrics endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// TCP address of the live service map page.
    pub servicemap_addr: Option<SocketAddr>,
    /// File holding the token the service map page requires (created with
    /// a random token, mode 0600, when it does not exist).
    pub servicemap_token_file: PathBuf,
    /// The HTTP headers L7 flows carry.
    pub flow_headers: l7::FlowHeaders,
    /// Where the node's cluster is read from.
    pub cluster: ClusterConfig,
    /// How packets to other nodes' pods travel: through the node's VXLAN
    /// device (created or adopted at start, routed to every other node's
    /// pod CIDRs) or over the node's own routes.
    pub routing: RoutingMode,
    /// The node's pod CIDRs (one per family): the CNI plugin's pods get
    /// their addresses from them.
    pub pod_cidrs: Vec<ipnet::IpNet>,
}

/// The underlay's MTU the overlay device is sized for (the lab's underlay
/// and most networks); pods get this less the VXLAN headers.
const UNDERLAY_MTU: u32 = 1500;

/// Where an agent reads its cluster from.
#[derive(Debug, Clone)]
pub enum ClusterConfig {
    /// A node on its own (or lab nodes sharing one file): identities from
    /// the file store, shared by the agents of the host so that two never
    /// give one number to different label sets.
    SingleNode {
        /// The identity store's file.
        identity_store: PathBuf,
    },
    /// A cluster on etcd; its `observer_address` is filled in from the
    /// observer's listeners.
    Etcd(EtcdClusterConfig),
}

/// The node's state, owned by one task.
struct Node {
    name: String,
    datapath: Datapath,
    state_dir: PathBuf,
    endpoints: BTreeMap<EndpointKey, Endpoint>,
    services: ServiceTable,
    zone: SharedZone,
    tally: Arc<readers::EventTally>,
    engine: PolicyEngine,
    resources: BTreeMap<myelin_model::ResourceKey, myelin_model::Document>,
    observer: Observer,
    proxy: Option<ControlServer>,
    proxy_version: u64,
    proxy_config: l7::ProxyConfig,
    applied: Applied,
    /// What changed since the last sync.
    dirty: Dirty,
    /// The view published last, and where it is published.
    view: View,
    views: watch::Sender<Arc<View>>,
    /// The node's own addresses (the host identity in the ipcache).
    addresses: Vec<IpAddr>,
    metrics: crate::metrics::AgentMetrics,
    /// What Hubble agent events remember between changes.
    agent_events: agent_events::AgentEvents,
    flow_headers: l7::FlowHeaders,
    /// Services the datapath could not program at the last sync, by
    /// `namespace/name`, with the reason.
    service_failures: BTreeMap<String, String>,
    /// The cluster: identities, where the node's endpoints are published.
    cluster: Box<dyn Cluster>,
    /// The other nodes and their endpoints, as the cluster's events told.
    remote: RemoteState,
    /// Other nodes' pod CIDRs and the tunnel endpoint reaching each (for
    /// the overlay's `sync_tunnel_endpoints`).
    tunnel_routes: BTreeMap<ipnet::IpNet, IpAddr>,
    /// How packets to other nodes' pods travel.
    routing: RoutingMode,
    /// The overlay's last sync failed: the next change tries again.
    overlay_dirty: bool,
    /// What the cluster was told of each local endpoint.
    published: BTreeMap<EndpointKey, Vec<myelin_store::Endpoint>>,
    /// This node's observer, and where the peer service's list goes.
    own_peer: Option<PeerNode>,
    peers: Option<watch::Sender<PeerMap>>,
    /// The CNI plugin's attachments and the pods' metadata.
    cni: cni::CniNode,
}

struct Endpoint {
    id: u32,
    ifindex: u32,
    spec: EndpointSpec,
}

/// Cluster events taken into one sync at most (and the channel's depth).
const CLUSTER_EVENT_BATCH: usize = 1024;

/// How long a stopping agent waits for its queued store writes (within the
/// lab's 3 s between SIGTERM and SIGKILL).
const STORE_WRITES_ON_STOP: std::time::Duration = std::time::Duration::from_secs(2);

/// An API request and where its answer goes.
type Call = (Request, oneshot::Sender<Result<Response, ApiError>>);

/// How often attachments whose veth vanished are looked for.
const ATTACHMENT_RECONCILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// How often an ADD asks again for a pod the control plane has not told of.
const POD_WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs the agent until SIGINT or SIGTERM. Programs and maps stay pinned and
/// attached when it exits, so traffic flows on while it is away.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    crate::state::create_private_dir(&config.state_dir)?;
    let mut datapath = Datapath::load(&config.bpffs)?;
    for replaced in datapath.replaced_pins() {
        tracing::warn!("{replaced}: created anew, its content is rebuilt from the agent's state");
    }
    if config.routing == RoutingMode::Tunnel {
        let ipv6_underlay = match &config.cluster {
            ClusterConfig::Etcd(cluster) => cluster.addresses.first().is_some_and(IpAddr::is_ipv6),
            ClusterConfig::SingleNode { .. } => false,
        };
        let device = datapath
            .attach_overlay(OVERLAY_DEVICE, pod_mtu(UNDERLAY_MTU, ipv6_underlay))
            .context("the overlay device")?;
        tracing::info!(device = %device.name, ifindex = device.ifindex, "overlay device ready");
    }
    if config.routing == RoutingMode::Native
        && let ClusterConfig::Etcd(cluster) = &config.cluster
    {
        // Flows from other nodes' pods arrive unencapsulated on the links
        // holding the node's address: there a flow for the proxy is handed
        // to it (the pod's own hook cannot).
        for link in links_holding(&cluster.addresses).context("the underlay links")? {
            datapath
                .attach_underlay(&link)
                .with_context(|| format!("from_underlay on {link}"))?;
            tracing::info!(%link, "underlay ingress ready");
        }
    }
    datapath
        .set_routing_mode(config.routing)
        .context("setting the routing mode")?;
    let reader = datapath.event_reader()?;
    let zone: SharedZone = Arc::new(RwLock::new(myelin_dns::Zone::default()));
    let mut registry = Registry::default();
    let mut observer_config = ObserverConfig::new(config.node.clone());
    observer_config.metrics = Some(Metrics::register(&mut registry));
    let agent_metrics = crate::metrics::AgentMetrics::register(&mut registry);
    let observer = Observer::new(observer_config);
    let proxy = match &config.proxy_socket {
        Some(path) => Some(
            ControlServer::bind(path)
                .with_context(|| format!("binding the proxy control socket {}", path.display()))?,
        ),
        None => None,
    };
    let (views, view) = watch::channel(Arc::new(View::default()));
    let tally = Arc::new(readers::EventTally::default());
    // Hubble's peer service: the cluster's observers as far as this agent
    // knows them (itself, and the nodes the cluster store names).
    let own_peer = config
        .observer_socket
        .as_ref()
        .map(|path| format!("unix://{}", path.display()))
        .or(config.observer_tcp.map(|address| address.to_string()))
        .map(|address| PeerNode {
            name: config.node.clone(),
            address,
            tls_server_name: None,
        });
    let cluster: Box<dyn Cluster> = match &config.cluster {
        ClusterConfig::Etcd(cluster) => {
            let mut cluster = cluster.clone();
            cluster.observer_address = own_peer.as_ref().map(|p| p.address.clone());
            Box::new(EtcdCluster::start(&cluster).await?)
        }
        ClusterConfig::SingleNode { identity_store } => Box::new(SingleNode::new(identity_store)),
    };
    let mut node = Node {
        name: config.node.clone(),
        datapath,
        state_dir: config.state_dir.clone(),
        endpoints: BTreeMap::new(),
        services: ServiceTable::new(),
        zone: zone.clone(),
        tally: tally.clone(),
        engine: PolicyEngine::new(cluster.identity_store(), config.node.clone()),
        resources: BTreeMap::new(),
        observer: observer.clone(),
        proxy,
        // Versions must grow across agent restarts too: the proxy keeps the
        // last one it served.
        proxy_version: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        proxy_config: l7::ProxyConfig::default(),
        applied: Applied::default(),
        dirty: Dirty::default(),
        view: View::default(),
        views,
        addresses: config.dns_listen.clone(),
        metrics: agent_metrics.clone(),
        agent_events: agent_events::AgentEvents::default(),
        service_failures: BTreeMap::new(),
        flow_headers: config.flow_headers.clone(),
        cluster,
        remote: RemoteState::new(&config.node),
        tunnel_routes: BTreeMap::new(),
        routing: config.routing,
        overlay_dirty: false,
        published: BTreeMap::new(),
        own_peer: own_peer.clone(),
        peers: None,
        cni: cni::CniNode::new(
            crate::ipam::PodCidrs::new(&config.pod_cidrs),
            match config.routing {
                RoutingMode::Tunnel => pod_mtu(UNDERLAY_MTU, false),
                RoutingMode::Native => UNDERLAY_MTU,
            },
        ),
    };
    node.agent_started();
    node.restore_cni()?;
    node.restore()?;
    node.reconcile_attachments();
    if let Some(events) = node.proxy.as_ref().map(ControlServer::subscribe) {
        tokio::spawn(readers::read_proxy_messages(
            events,
            view.clone(),
            observer.clone(),
            config.flow_headers.clone(),
        ));
    }
    if config.observer_socket.is_some() || config.observer_tcp.is_some() {
        let serve_config = ServeConfig {
            unix_socket: config.observer_socket.clone(),
            tcp: config.observer_tcp,
        };

        let mut server = myelin_observe::bind(observer.clone(), &serve_config)
            .await
            .context("starting the observer API")?;
        match (&config.observer_tls, config.observer_tcp) {
            (Some(tls), _) => server = server.with_tls(tls).context("the observer API's TLS")?,
            (None, Some(address)) => tracing::warn!(
                %address,
                "the observer's TCP port is plaintext and asks no certificate: whoever reaches \
                 it reads every flow; give --hubble-tls-cert-file, --hubble-tls-key-file and \
                 --hubble-tls-client-ca-files"
            ),
            (None, None) => {}
        }

        let (peers_tx, peers_rx) = watch::channel(node.remote.peers(own_peer.as_ref()));
        node.peers = Some(peers_tx);
        let server = server.with_peers(PeerService::new(peers_rx));
        tokio::spawn(async move {
            if let Err(error) = server.run(std::future::pending()).await {
                tracing::error!(%error, "the observer API stopped");
            }
        });
    }
    if let Some(address) = config.servicemap_addr {
        let token = AccessToken::load_or_create(&config.servicemap_token_file)?;
        let map = SharedServiceMap::new(ServiceMapConfig::default());
        map.follow(&observer);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the service map page {address}"))?;
        tokio::spawn(serve_servicemap(listener, map, token));
    }
    // `/readyz` answers 200 from the moment the API serves (below).
    let readiness = myelin_observe::metrics::Readiness::new();
    if let Some(address) = config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the metrics endpoint {address}"))?;
        tokio::spawn(myelin_observe::metrics::serve_metrics(
            listener,
            Arc::new(registry),
            readiness.clone(),
        ));
    }

    for socket in dns_sockets(&config).await? {
        tokio::spawn(myelin_dns::serve_socket(socket, zone.clone()));
    }
    let suppressed = agent_metrics.drop_events_suppressed.clone();
    tokio::spawn(readers::read_events(
        reader, view, observer, tally, suppressed,
    ));
    match myelin_datapath::ConntrackCollector::open(&config.bpffs) {
        Ok(conntrack) => {
            tokio::spawn(conntrack::collect_garbage(conntrack, agent_metrics));
        }
        // Expired entries still give way to new flows (LRU); only tidiness is lost.
        Err(e) => tracing::warn!("no conntrack garbage collection: {e:#}"),
    }
    let (calls, queue) = mpsc::channel::<Call>(64);
    let (cluster_events, cluster_queue) = mpsc::channel::<ClusterEvent>(CLUSTER_EVENT_BATCH);
    node.cluster.watch(cluster_events);
    let queued_writes = node.cluster.queued_writes();
    tokio::spawn(node.own(queue, cluster_queue));

    if config.api_socket.exists() {
        std::fs::remove_file(&config.api_socket)
            .with_context(|| format!("removing stale socket {}", config.api_socket.display()))?;
    }
    let listener = UnixListener::bind(&config.api_socket)
        .with_context(|| format!("binding the API socket {}", config.api_socket.display()))?;
    tracing::info!(node = %config.node, socket = %config.api_socket.display(), "agent ready");
    readiness.set_ready();

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let calls = calls.clone();
                tokio::spawn(crate::rpc::serve_connection(stream, move |request: Request| {
                    ask_node(calls.clone(), request)
                }));
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    tracing::info!("agent stopping; programs stay attached");
    // The last requests' store writes (a drained pod's withdrawal) land
    // before the process goes; a store that does not answer gets no longer.
    if tokio::time::timeout(STORE_WRITES_ON_STOP, queued_writes.settled())
        .await
        .is_err()
    {
        tracing::warn!("stopping with store writes queued; the node's lease takes them");
    }
    Ok(())
}

/// Hands `request` to the node's task. A CNI ADD for a pod the control
/// plane has not told of yet is asked again until the plugin's wait is over
/// (the node's task never waits: other requests go on meanwhile).
async fn ask_node(calls: mpsc::Sender<Call>, request: Request) -> Result<Response, ApiError> {
    let wait = match &request {
        Request::CniAdd(add) => std::time::Duration::from_millis(add.wait_for_pod_ms),
        _ => std::time::Duration::ZERO,
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (answer, answered) = oneshot::channel();
        let gone = || {
            ApiError::new(
                ErrorKind::Unavailable,
                "the agent is stopping; try again once it is back",
            )
        };
        calls
            .send((request.clone(), answer))
            .await
            .map_err(|_| gone())?;
        match answered.await.map_err(|_| gone())? {
            Err(error)
                if error.kind == ErrorKind::Unavailable
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(POD_WAIT_STEP).await;
            }
            Err(mut error) if error.kind == ErrorKind::Unavailable && !wait.is_zero() => {
                error.message = format!("{}; waited {} ms", error.message, wait.as_millis());
                return Err(error);
            }
            other => return other,
        }
    }
}

/// An error answer: the kind a handler chose ([`ApiError`] in the chain),
/// [`ErrorKind::Failed`] otherwise; the message with its whole context.
fn api_error(error: &anyhow::Error) -> ApiError {
    let kind = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<ApiError>())
        .map_or(ErrorKind::Failed, |e| e.kind);
    ApiError::new(kind, format!("{error:#}"))
}

/// The DNS sockets: inherited from the parent when it passed them, bound
/// here otherwise.
async fn dns_sockets(config: &AgentConfig) -> anyhow::Result<Vec<tokio::net::UdpSocket>> {
    use std::os::fd::FromRawFd as _;
    let mut sockets = Vec::new();
    if config.dns_fds.is_empty() {
        for ip in &config.dns_listen {
            let address = SocketAddr::new(*ip, 53);
            let socket = tokio::net::UdpSocket::bind(address)
                .await
                .with_context(|| format!("binding the DNS responder to {address}"))?;
            sockets.push(socket);
        }
        return Ok(sockets);
    }
    for fd in &config.dns_fds {
        // SAFETY: the parent handed this descriptor over for the agent's
        // sole use (--dns-fd); nothing else in this process refers to it.
        let socket = unsafe { std::net::UdpSocket::from_raw_fd(*fd) };
        socket
            .set_nonblocking(true)
            .with_context(|| format!("DNS socket fd {fd} was not handed over"))?;
        sockets.push(tokio::net::UdpSocket::from_std(socket)?);
    }
    Ok(sockets)
}

fn attach(node: &mut Node, id: u32, spec: &EndpointSpec) -> anyhow::Result<u32> {
    let changes = node
        .engine
        .upsert_endpoint(policy::endpoint(spec))
        .with_context(|| format!("resolving policy for pod {}/{}", spec.namespace, spec.pod))?;
    node.dirty.record(&changes);
    let key = EndpointKey::new(&spec.namespace, &spec.pod);
    node.dirty.endpoints.insert(key.clone());
    node.dirty.specs = true;
    let identity = node.engine.policy(&key).map_or(0, |p| p.identity);
    let mut info = EndpointInfo {
        endpoint_id: id,
        identity,
        ..EndpointInfo::default()
    };
    if let Some(v4) = spec.ipv4 {
        info.ipv4 = v4.octets();
    }
    if let Some(v6) = spec.ipv6 {
        info.ipv6 = v6.octets();
    }
    match (spec.mac_address(), &spec.mac) {
        (Some(mac), _) => info.mac = mac,
        // Still served, through the node's stack.
        (None, Some(mac)) => {
            tracing::warn!(pod = %spec.pod, %mac, "ignoring a malformed MAC address")
        }
        (None, None) => {}
    }
    let attachment = node.datapath.attach_endpoint(&spec.ifname, &info)?;
    Ok(attachment.ifindex)
}

impl Node {
    /// Applies API requests, one at a time, until every sender is gone; and
    /// collects unused identities now and then.
    async fn own(
        mut self,
        mut calls: mpsc::Receiver<Call>,
        mut cluster: mpsc::Receiver<ClusterEvent>,
    ) {
        let mut identities = tokio::time::interval(std::time::Duration::from_secs(30));
        let mut attachments = tokio::time::interval(ATTACHMENT_RECONCILE_INTERVAL);
        loop {
            tokio::select! {
                call = calls.recv() => {
                    let Some((request, answer)) = call else { return };
                    let _ = answer.send(self.handle(request).map_err(|e| api_error(&e)));
                }
                _ = attachments.tick() => self.reconcile_attachments(),
                Some(event) = cluster.recv() => {
                    // What arrived meanwhile goes in the same sync: a resync
                    // of thousands of endpoints is one datapath update.
                    let mut events = vec![event];
                    while events.len() < CLUSTER_EVENT_BATCH
                        && let Ok(more) = cluster.try_recv()
                    {
                        events.push(more);
                    }
                    self.cluster_changed(events);
                }
                _ = identities.tick() => self.collect_identities(),
            }
        }
    }

    /// Applies the cluster's changes to the engine and the node's routes
    /// and peers, then brings the datapath up to date (a failed sync leaves
    /// them dirty for the next change).
    fn cluster_changed(&mut self, events: Vec<ClusterEvent>) {
        let mut nodes = false;
        let mut addresses = Vec::new();
        for event in events {
            let touched = self.remote.apply(event, &mut self.engine);
            self.dirty.record(&touched.changes);
            nodes |= touched.nodes;
            if touched.endpoints {
                // Services' backends include other nodes' pods.
                self.dirty.specs = true;
            }
            addresses.extend(touched.addresses);
        }
        // The proxy knows other nodes' pods by identity.
        self.proxy_config.update_remote(&self.engine, addresses);
        if nodes || self.overlay_dirty {
            self.tunnel_routes = self.remote.tunnel_routes();
            tracing::info!(routes = ?self.tunnel_routes, "cluster: the other nodes changed");
            if let Err(error) = self.sync_overlay() {
                self.overlay_dirty = true;
                tracing::warn!("the overlay's routes: {error:#}; the next change retries");
            }
            if let Some(peers) = &self.peers {
                peers.send_replace(self.remote.peers(self.own_peer.as_ref()));
            }
        }
        if let Err(error) = self.sync() {
            tracing::warn!("applying the cluster's changes: {error:#}; the next change retries");
        }
    }

    /// Points the overlay at the other nodes: the datapath's tunnel
    /// endpoints (pod CIDR → the owning node's underlay address) and the
    /// node's routes into the device. Nothing to do under native routing,
    /// where the node's routes are its network's.
    fn sync_overlay(&mut self) -> anyhow::Result<()> {
        if self.routing != RoutingMode::Tunnel {
            return Ok(());
        }
        let routes: Vec<TunnelRoute> = self
            .tunnel_routes
            .iter()
            .map(|(cidr, endpoint)| TunnelRoute {
                pod_cidr: cidr.network(),
                prefix_len: cidr.prefix_len(),
                endpoint: *endpoint,
            })
            .collect();
        self.datapath.sync_tunnel_endpoints(&routes)?;
        self.datapath.route_into_overlay(OVERLAY_DEVICE, &routes)?;
        self.overlay_dirty = false;
        Ok(())
    }

    /// Tells the cluster what it does not know yet of a local endpoint: its
    /// addresses with its identity, and the addresses it no longer has (all
    /// of them when it is gone). After a restart nothing is known published:
    /// every endpoint goes out again, under this run's lease.
    fn publish(&mut self, key: &EndpointKey) {
        let now = match (self.endpoints.get(key), self.engine.policy(key)) {
            (Some(endpoint), Some(policy)) => {
                crate::cluster::published(&endpoint.spec, policy.identity, &self.name)
            }
            _ => Vec::new(),
        };
        let before = self.published.remove(key).unwrap_or_default();
        if before == now {
            if !now.is_empty() {
                self.published.insert(key.clone(), now);
            }
            return;
        }
        for gone in &before {
            if !now.iter().any(|e| e.ip == gone.ip) {
                self.cluster.withdraw_endpoint(gone.ip);
            }
        }
        for endpoint in &now {
            if !before.contains(endpoint) {
                self.cluster.publish_endpoint(endpoint.clone());
            }
        }
        if !now.is_empty() {
            self.published.insert(key.clone(), now);
        }
    }

    /// Identities no agent has used for the retention's grace are deleted,
    /// so label churn cannot exhaust the cluster range.
    fn collect_identities(&mut self) {
        match self.engine.collect_identities(
            myelin_policy::unix_now(),
            myelin_policy::Retention::default(),
        ) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(
                    ?removed,
                    "identities nobody used for the grace period deleted"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("identity garbage collection: {e}"),
        }
    }

    fn restore(&mut self) -> anyhow::Result<()> {
        let stored = state::load(&self.state_dir)?;
        for outcome in policy::apply(&mut self.engine, &stored.resources, &mut self.dirty) {
            if let Some(error) = outcome.error {
                tracing::warn!("stored resource {} not restored: {error}", outcome.key);
            }
        }
        self.resources = stored
            .resources
            .into_iter()
            .map(|d| (d.resource.key(), d))
            .collect();
        for service in stored.services {
            self.services
                .insert((service.namespace.clone(), service.name.clone()), service);
        }
        // Policy, services and the ipcache go into the maps before any endpoint's programs
        // are swapped for this build's: a map created anew (another build pinned it with
        // another layout) must never meet a new program empty, which would leave its
        // endpoint unenforced for a moment. Until each endpoint's table is written whole,
        // the one pinned by the agent before stays in force.
        for StoredEndpoint { id, spec } in stored.endpoints {
            match self.engine.upsert_endpoint(policy::endpoint(&spec)) {
                Ok(changes) => {
                    self.dirty.record(&changes);
                    self.endpoints.insert(
                        EndpointKey::new(&spec.namespace, &spec.pod),
                        Endpoint {
                            id,
                            ifindex: 0,
                            spec,
                        },
                    );
                }
                Err(e) => tracing::warn!(pod = %spec.pod, "endpoint not restored: {e}"),
            }
        }
        // Nothing is known applied yet: compare everything.
        self.dirty.all = true;
        self.proxy_config.mark_unsent();
        self.sync()?;
        let stored: Vec<(EndpointKey, u32, EndpointSpec)> = self
            .endpoints
            .iter()
            .map(|(key, e)| (key.clone(), e.id, e.spec.clone()))
            .collect();
        for (key, id, spec) in stored {
            match attach(self, id, &spec) {
                Ok(ifindex) => {
                    if let Some(endpoint) = self.endpoints.get_mut(&key) {
                        endpoint.ifindex = ifindex;
                    }
                }
                // The pod went away while the agent was down: forget it.
                Err(e) => {
                    tracing::warn!(pod = %spec.pod, "endpoint not restored: {e}");
                    self.endpoints.remove(&key);
                    let changes = self.engine.remove_endpoint(&key);
                    self.dirty.record(&changes);
                    self.dirty.removed.insert(id);
                }
            }
        }
        let pinned = self.datapath.pinned_interfaces();
        let known: std::collections::BTreeSet<&str> = self
            .endpoints
            .values()
            .map(|e| e.spec.ifname.as_str())
            .collect();
        let gone: Vec<String> = pinned
            .into_iter()
            .filter(|i| !known.contains(i.as_str()))
            .collect();
        for ifname in gone {
            tracing::info!(%ifname, "detaching programs of an endpoint that no longer exists");
            self.datapath.detach_endpoint(&ifname, 0)?;
        }
        self.sync()?;
        self.persist()
    }

    /// Saves the endpoints and services (resources are saved one by one as
    /// they come and go).
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
                resources: Vec::new(),
            },
        )
    }

    /// Brings everything derived from the node's state up to date with what
    /// changed since the last sync: the datapath's policy, ipcache and
    /// services, the DNS names, the proxy's configuration and the published
    /// view. After an error the changes stay dirty, for the next sync.
    fn sync(&mut self) -> anyhow::Result<()> {
        if self.dirty.all {
            let keys: Vec<EndpointKey> = self.endpoints.keys().cloned().collect();
            self.dirty.endpoints.extend(keys);
            self.dirty.specs = true;
        }
        let specs_changed = self.dirty.specs;
        // Other nodes' pods as backends, built once for the zone and the services.
        let remote = if specs_changed {
            let remote = self.remote.service_backends();
            self.refresh_zone(&remote);
            remote
        } else {
            Vec::new()
        };
        let services = specs_changed.then(|| {
            reconcile::desired_services(
                self.services.values(),
                self.endpoints
                    .values()
                    .map(|e| &e.spec)
                    .chain(remote.iter()),
            )
        });
        let endpoints = &self.endpoints;
        let desired = Desired {
            engine: &self.engine,
            endpoint_id: &|key: &EndpointKey| endpoints.get(key).map(|e| e.id),
            services,
            node_addresses: &self.addresses,
        };
        let mut plan = self.applied.plan(&self.dirty, &desired);
        let written = reconcile::apply(&mut self.datapath, &mut self.applied, &plan)
            .context("programming the datapath");
        if let (Some(groups), Ok(failures)) = (&plan.service_groups, &written) {
            // A refused Service's frontends were not written: no event says
            // they were.
            let refused: std::collections::BTreeSet<reconcile::Frontend> = groups
                .iter()
                .filter(|g| failures.iter().any(|f| f.name == g.name))
                .flat_map(|g| g.frontends.iter().map(|s| (s.frontend, s.protocol)))
                .collect();
            plan.services_upserted
                .retain(|s| !refused.contains(&(s.frontend, s.protocol)));
        }
        if plan.service_groups.is_some()
            && let Ok(failures) = &written
        {
            let failures: BTreeMap<String, String> = failures
                .iter()
                .map(|f| (f.name.clone(), f.error.clone()))
                .collect();
            for (name, error) in &failures {
                if self.service_failures.get(name) != Some(error) {
                    tracing::warn!(service = %name, %error, "the datapath refused a service; the others are in force");
                }
            }
            self.service_failures = failures;
        }
        self.publish_view();
        let view = self.view.clone();
        self.reconciled(&plan, &view, written.as_ref().err());
        written?;
        let dirty = std::mem::take(&mut self.dirty);
        for key in &dirty.endpoints {
            let spec = self.endpoints.get(key).map(|e| &e.spec);
            self.proxy_config.update(&self.engine, key, spec);
            self.publish(key);
        }
        if !plan.policies.is_empty() || !plan.policies_removed.is_empty() {
            self.metrics.policy_revision.inc();
        }
        self.metrics.endpoints.set(self.endpoints.len() as i64);
        self.metrics
            .identities
            .set(self.applied.identity_count() as i64);
        self.metrics.map_entries("endpoints", self.endpoints.len());
        self.metrics
            .map_entries("ipcache", self.applied.ipcache_len());
        self.metrics
            .map_entries("policy", self.applied.policy_rules());
        self.metrics
            .map_entries("services", self.applied.services_len());
        if let Some(proxy) = &self.proxy
            && let Some(snapshot) = self.proxy_config.take_snapshot(
                &self.engine,
                &self.flow_headers,
                self.proxy_version + 1,
            )
        {
            self.proxy_version += 1;
            proxy.push(snapshot);
        }
        Ok(())
    }

    /// Publishes a view with the parts the dirty changes touched built anew.
    fn publish_view(&mut self) {
        let dirty = &self.dirty;
        let mut view = self.view.clone();
        let mut changed = false;
        // Addresses and identities change with endpoints (specs) and the
        // ipcache (an endpoint's new identity moves its prefixes); a change
        // of policy alone leaves them be.
        if dirty.all || dirty.specs || !dirty.prefixes.is_empty() {
            let local = self.endpoints.values().map(|e| (e.id, &e.spec));
            view = view.with_addresses(&self.engine, local);
            changed = true;
        }
        if dirty.all || dirty.specs {
            view = view.with_services(&self.services);
            changed = true;
        }
        let rules = self.applied.rule_ids.rules();
        if rules.len() != view.rule_count() {
            view = view.with_rules(rules);
            changed = true;
        }
        if changed {
            self.views.send_replace(Arc::new(view.clone()));
            self.view = view;
        }
    }

    /// The DNS zone of the Services, with `remote`, the other nodes' pods.
    fn refresh_zone(&self, remote: &[EndpointSpec]) {
        let zone = services::zone(
            self.services.values(),
            self.endpoints
                .values()
                .map(|e| &e.spec)
                .chain(remote.iter()),
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
        let resolved = self.engine.policy(&EndpointKey::new(
            &endpoint.spec.namespace,
            &endpoint.spec.pod,
        ));
        EndpointStatus {
            id: endpoint.id,
            identity: resolved.map_or(0, |p| p.identity),
            ingress_enforced: resolved.is_some_and(|p| p.ingress.enforced),
            egress_enforced: resolved.is_some_and(|p| p.egress.enforced),
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
                let key = EndpointKey::new(&spec.namespace, &spec.pod);
                let created = !self.endpoints.contains_key(&key);
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
                if created {
                    let labels = self.endpoint_labels(&spec.namespace, &spec.pod);
                    let kind = AgentEventType::EndpointCreated;
                    self.endpoint_changed(kind, id, &spec.namespace, &spec.pod, labels);
                }
                self.endpoints
                    .insert(key.clone(), Endpoint { id, ifindex, spec });
                self.sync()?;
                self.persist()?;
                let endpoint = &self.endpoints[&key];
                Response::Endpoint(self.endpoint_status(endpoint))
            }
            Request::EndpointDelete { namespace, pod } => {
                let key = EndpointKey::new(&namespace, &pod);
                let labels = self.endpoint_labels(&namespace, &pod);
                let changes = self.engine.remove_endpoint(&key);
                self.dirty.record(&changes);
                if let Some(endpoint) = self.endpoints.remove(&key) {
                    let kind = AgentEventType::EndpointDeleted;
                    self.endpoint_changed(kind, endpoint.id, &namespace, &pod, labels);
                    self.dirty.endpoints.insert(key);
                    self.dirty.removed.insert(endpoint.id);
                    self.dirty.specs = true;
                    self.datapath
                        .detach_endpoint(&endpoint.spec.ifname, endpoint.ifindex)?;
                    self.sync()?;
                    self.persist()?;
                }
                Response::Ok
            }
            Request::ServiceUpsert(spec) => {
                let key = (spec.namespace.clone(), spec.name.clone());
                let previous = self.services.insert(key.clone(), spec);
                self.dirty.specs = true;
                self.sync()?;
                let name = format!("{}/{}", key.0, key.1);
                if let Some(error) = self.service_failures.get(&name).cloned() {
                    // All or nothing: the Service stays as it was before
                    // this request, in the kernel and in the agent's state.
                    match previous {
                        Some(previous) => self.services.insert(key, previous),
                        None => self.services.remove(&key),
                    };
                    self.dirty.specs = true;
                    self.sync()?;
                    anyhow::bail!("service {name} not programmed: {error}");
                }
                self.persist()?;
                Response::Ok
            }
            Request::ServiceDelete { namespace, name } => {
                self.services.remove(&(namespace, name));
                self.dirty.specs = true;
                self.sync()?;
                self.persist()?;
                Response::Ok
            }
            Request::Status => Response::Status(self.status()),
            Request::ResourcesApply { documents } => {
                let outcomes = policy::apply(&mut self.engine, &documents, &mut self.dirty);
                // As Cilium reports it: the policy update, then the
                // regenerations it causes (the sync's events).
                let accepted: Vec<&myelin_model::Document> = documents
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, outcome)| outcome.error.is_none())
                    .map(|(document, _)| document)
                    .collect();
                for document in &accepted {
                    self.policy_changed(AgentEventType::PolicyUpdated, &document.resource);
                }
                if let Err(error) = self.sync() {
                    // All or nothing: the engine goes back to the resources
                    // in force before this request, and the kernel with it;
                    // the events say so.
                    policy::revert(
                        &mut self.engine,
                        &documents,
                        &outcomes,
                        &self.resources,
                        &mut self.dirty,
                    );
                    for document in &accepted {
                        match self.resources.get(&document.resource.key()) {
                            Some(before) => {
                                let before = before.resource.clone();
                                self.policy_changed(AgentEventType::PolicyUpdated, &before);
                            }
                            None => self
                                .policy_changed(AgentEventType::PolicyDeleted, &document.resource),
                        }
                    }
                    if let Err(again) = self.sync() {
                        tracing::warn!(
                            "restoring the resources in force before a failed apply: {again:#}; the next change retries"
                        );
                    }
                    return Err(error.context("resources not applied; those in force before stay"));
                }
                for (document, outcome) in documents.into_iter().zip(&outcomes) {
                    if outcome.error.is_none() {
                        state::save_resource(&self.state_dir, &document)?;
                        self.resources.insert(outcome.key.clone(), document);
                    }
                }
                Response::Resources { outcomes }
            }
            Request::ResourcesDelete { keys } => {
                for key in keys {
                    if let Some(document) = self.resources.remove(&key) {
                        self.forget(&document.resource);
                        self.policy_changed(AgentEventType::PolicyDeleted, &document.resource);
                        state::remove_resource(&self.state_dir, &key)?;
                    }
                }
                self.sync()?;
                Response::Ok
            }
            Request::PolicyGet { endpoint, json } => Response::Text {
                text: policy::get(&self.engine, endpoint.as_ref(), json)
                    .map_err(anyhow::Error::msg)?,
            },
            Request::Bpf {
                table,
                endpoint,
                json,
            } => {
                let id = match &endpoint {
                    Some((namespace, pod)) => Some(
                        self.endpoints
                            .get(&EndpointKey::new(namespace, pod))
                            .map(|e| e.id)
                            .ok_or_else(|| {
                                anyhow::anyhow!("no endpoint {namespace}/{pod} on this node")
                            })?,
                    ),
                    None => None,
                };
                Response::Text {
                    text: crate::inspect::render(&self.datapath, table, id, json)
                        .map_err(anyhow::Error::msg)?,
                }
            }
            Request::PolicyExplain(request) => Response::Text {
                text: policy::explain(&self.engine, &request).map_err(anyhow::Error::msg)?,
            },
            Request::CniAdd(add) => Response::CniAttachment(self.cni_add(&add)?),
            Request::CniCheck(key) => Response::CniAttachment(self.cni_check(&key)?),
            Request::CniDel(key) => {
                self.cni_del(&key)?;
                Response::Ok
            }
            Request::CniGc { valid } => Response::CniCollected {
                removed: self.cni_gc(&valid)?,
            },
            Request::CniStatus => Response::CniReadiness(self.cni_readiness()),
            Request::PodsUpsert { pods } => {
                self.pods_upsert(&pods)?;
                Response::Ok
            }
            Request::PodsDelete { pods } => {
                self.pods_delete(&pods)?;
                Response::Ok
            }
        })
    }

    /// Removes a resource from the policy engine.
    fn forget(&mut self, resource: &myelin_model::Resource) {
        policy::remove(&mut self.engine, resource, &mut self.dirty);
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
            policies: self.engine.policy_keys().map(ToString::to_string).collect(),
            events: self.tally.counters(),
        }
    }
}
