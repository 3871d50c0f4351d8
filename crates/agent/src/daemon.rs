//! The agent's main loop: load the datapath, restore state, serve the API,
//! the DNS responder and the event reader.

mod agent_events;

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
    AgentStatus, EndpointMac as _, EndpointSpec, EndpointStatus, EventCounters, Request, Response,
    ServiceStatus,
};
use crate::services::{self, ServiceTable};
use crate::state::{self, StoredEndpoint, StoredState};
use crate::{flows, l7, policy, reconcile};
use myelin_observe::proto::flow::AgentEventType;
use myelin_observe::servicemap::{ServiceMapConfig, SharedServiceMap, serve_servicemap};
use myelin_observe::{Metrics, Observer, ObserverConfig, ServeConfig};
use myelin_policy::{EndpointKey, FileStore, PolicyEngine};
use myelin_proxy::control::{ControlServer, ProxyMessage};
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
    /// The identity store, shared by every agent of the cluster so that two
    /// agents never give one number to different label sets.
    pub identity_store: PathBuf,
    /// Unix socket the node's proxy connects to for its configuration.
    pub proxy_socket: Option<PathBuf>,
    /// Unix socket of the Hubble-compatible observer API.
    pub observer_socket: Option<PathBuf>,
    /// TCP address of the observer API (plaintext: keep it on loopback).
    pub observer_tcp: Option<SocketAddr>,
    /// TLS for the observer's TCP listener (the unix socket stays plaintext).
    pub observer_tls: Option<myelin_observe::ServerTls>,
    /// TCP address of the Prometheus metrics endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// TCP address of the live service map page.
    pub servicemap_addr: Option<SocketAddr>,
    /// The HTTP headers L7 flows carry.
    pub flow_headers: l7::FlowHeaders,
}

struct Node {
    name: String,
    datapath: Datapath,
    state_dir: PathBuf,
    endpoints: BTreeMap<(String, String), Endpoint>,
    services: ServiceTable,
    zone: SharedZone,
    counters: EventCounters,
    engine: PolicyEngine,
    resources: BTreeMap<myelin_model::ResourceKey, myelin_model::Document>,
    observer: Observer,
    proxy: Option<ControlServer>,
    proxy_version: u64,
    applied: reconcile::Applied,
    /// The node's own addresses (the host identity in the ipcache).
    addresses: Vec<IpAddr>,
    metrics: crate::metrics::AgentMetrics,
    /// What Hubble agent events remember between changes.
    agent_events: agent_events::AgentEvents,
    flow_headers: l7::FlowHeaders,
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
    for replaced in datapath.replaced_pins() {
        tracing::warn!("{replaced}: created anew, its content is rebuilt from the agent's state");
    }
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
    let node = Arc::new(Mutex::new(Node {
        name: config.node.clone(),
        datapath,
        state_dir: config.state_dir.clone(),
        endpoints: BTreeMap::new(),
        services: ServiceTable::new(),
        zone: zone.clone(),
        counters: EventCounters::default(),
        engine: PolicyEngine::new(
            Arc::new(FileStore::new(&config.identity_store)),
            config.node.clone(),
        ),
        resources: BTreeMap::new(),
        observer: observer.clone(),
        proxy,
        // Versions must grow across agent restarts too: the proxy keeps the
        // last one it served.
        proxy_version: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        applied: reconcile::Applied::default(),
        addresses: config.dns_listen.clone(),
        metrics: agent_metrics,
        agent_events: agent_events::AgentEvents::default(),
        flow_headers: config.flow_headers.clone(),
    }));
    node.lock().await.agent_started();
    restore(&node).await?;
    if let Some(events) = node
        .lock()
        .await
        .proxy
        .as_ref()
        .map(ControlServer::subscribe)
    {
        tokio::spawn(read_proxy_messages(events, node.clone()));
    }
    if config.observer_socket.is_some() || config.observer_tcp.is_some() {
        let serve_config = ServeConfig {
            unix_socket: config.observer_socket.clone(),
            tcp: config.observer_tcp,
        };

        let mut server = myelin_observe::bind(observer.clone(), &serve_config)
            .await
            .context("starting the observer API")?;
        if let Some(tls) = &config.observer_tls {
            server = server.with_tls(tls).context("the observer API's TLS")?;
        }

        tokio::spawn(server.run(std::future::pending()));
    }
    if let Some(address) = config.servicemap_addr {
        let map = SharedServiceMap::new(ServiceMapConfig::default());
        map.follow(&observer);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the service map page {address}"))?;
        tokio::spawn(serve_servicemap(listener, map));
    }
    if let Some(address) = config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the metrics endpoint {address}"))?;
        tokio::spawn(myelin_observe::metrics::serve_metrics(
            listener,
            Arc::new(registry),
        ));
    }

    for socket in dns_sockets(&config).await? {
        tokio::spawn(myelin_dns::serve_socket(socket, zone.clone()));
    }
    tokio::spawn(read_events(reader, node.clone()));
    tokio::spawn(collect_garbage(node.clone()));

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

async fn restore(node: &Arc<Mutex<Node>>) -> anyhow::Result<()> {
    let mut node = node.lock().await;
    let stored = state::load(&node.state_dir)?;
    for outcome in policy::apply(&mut node.engine, &stored.resources) {
        if let Some(error) = outcome.error {
            tracing::warn!("stored resource {} not restored: {error}", outcome.key);
        }
    }
    node.resources = stored
        .resources
        .into_iter()
        .map(|d| (d.resource.key(), d))
        .collect();
    for service in stored.services {
        node.services
            .insert((service.namespace.clone(), service.name.clone()), service);
    }
    // Policy, services and the ipcache go into the maps before any endpoint's programs are
    // swapped for this build's: a map created anew (another build pinned it with another
    // layout) must never meet a new program empty, which would leave its endpoint
    // unenforced for a moment.
    for StoredEndpoint { id, spec } in stored.endpoints {
        match node.engine.upsert_endpoint(policy::endpoint(&spec)) {
            Ok(_) => {
                node.endpoints.insert(
                    (spec.namespace.clone(), spec.pod.clone()),
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
    node.sync()?;
    let stored: Vec<((String, String), u32, EndpointSpec)> = node
        .endpoints
        .iter()
        .map(|(key, e)| (key.clone(), e.id, e.spec.clone()))
        .collect();
    for (key, id, spec) in stored {
        match attach(&mut node, id, &spec) {
            Ok(ifindex) => {
                if let Some(endpoint) = node.endpoints.get_mut(&key) {
                    endpoint.ifindex = ifindex;
                }
            }
            // The pod went away while the agent was down: forget it.
            Err(e) => {
                tracing::warn!(pod = %spec.pod, "endpoint not restored: {e}");
                node.endpoints.remove(&key);
                node.engine
                    .remove_endpoint(&EndpointKey::new(&spec.namespace, &spec.pod));
            }
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
    node.sync()?;
    node.persist()
}

fn attach(node: &mut Node, id: u32, spec: &EndpointSpec) -> anyhow::Result<u32> {
    node.engine
        .upsert_endpoint(policy::endpoint(spec))
        .with_context(|| format!("resolving policy for pod {}/{}", spec.namespace, spec.pod))?;
    let identity = node
        .engine
        .policy(&EndpointKey::new(&spec.namespace, &spec.pod))
        .map_or(0, |p| p.identity);
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
                resources: self.resources.values().cloned().collect(),
            },
        )
    }

    /// Brings everything derived from the node's state up to date: the
    /// datapath's policy, ipcache and services, the DNS names and the
    /// proxy's configuration.
    fn sync(&mut self) -> anyhow::Result<()> {
        self.refresh_zone();
        let mut policies = BTreeMap::new();
        for endpoint in self.endpoints.values() {
            let key = EndpointKey::new(&endpoint.spec.namespace, &endpoint.spec.pod);
            if let Some(resolved) = self.engine.policy(&key) {
                policies.insert(
                    endpoint.id,
                    reconcile::policy_table(resolved, &mut self.applied.rule_ids),
                );
            }
        }
        let specs: Vec<&EndpointSpec> = self.endpoints.values().map(|e| &e.spec).collect();
        let services = reconcile::desired_services(self.services.values(), specs.iter().copied());
        let ipcache = reconcile::desired_ipcache(self.engine.ipcache(), &self.addresses);
        let policy_changed = self.applied.policies_differ(&policies);
        let pending = agent_events::pending(&self.applied, &policies, &services, &ipcache);
        let reconciled = reconcile::reconcile(
            &mut self.datapath,
            &mut self.applied,
            &policies,
            &services,
            &ipcache,
        )
        .context("programming the datapath");
        self.reconciled(pending, reconciled.as_ref().err());
        reconciled?;
        if policy_changed {
            self.metrics.policy_revision.inc();
        }
        self.metrics.endpoints.set(self.endpoints.len() as i64);
        let identities: std::collections::BTreeSet<u32> = ipcache.values().copied().collect();
        self.metrics.identities.set(identities.len() as i64);
        self.metrics.map_entries("endpoints", self.endpoints.len());
        self.metrics.map_entries("ipcache", ipcache.len());
        self.metrics
            .map_entries("policy", policies.values().map(|t| t.rules.len()).sum());
        self.metrics.map_entries("services", services.len());
        if let Some(proxy) = &self.proxy {
            self.proxy_version += 1;
            let snapshot = l7::snapshot(
                &self.engine,
                self.endpoints.values().map(|e| &e.spec),
                &self.flow_headers,
                self.proxy_version,
            );
            proxy.push(snapshot);
        }
        Ok(())
    }

    /// The endpoint id of a pod of this node by address.
    fn local_endpoint(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.endpoints.values().find(|e| {
            e.spec.ipv4.map(IpAddr::V4) == Some(ip) || e.spec.ipv6.map(IpAddr::V6) == Some(ip)
        })
    }
}

impl flows::FlowContext for Node {
    /// What the node knows of an address: a local pod, a pod elsewhere, or
    /// a reserved identity such as world.
    fn endpoint(&self, ip: IpAddr) -> flows::EndpointMeta {
        let identity = self.engine.identity_of_ip(ip);
        let labels = self
            .engine
            .identity_labels(identity)
            .map(|l| l.to_strings())
            .unwrap_or_default();
        match self.engine.endpoint_of_ip(ip) {
            Some(key) => {
                let local = self.local_endpoint(ip);
                flows::EndpointMeta {
                    id: local.map_or(0, |e| e.id),
                    identity,
                    workload: local.and_then(|e| flows::workload_of(&e.spec.pod, &e.spec.labels)),
                    namespace: key.namespace,
                    pod: key.name,
                    labels,
                }
            }
            None => flows::EndpointMeta {
                identity,
                labels,
                ..flows::EndpointMeta::default()
            },
        }
    }

    fn local_identity(&self, identity: u32) -> Option<flows::EndpointMeta> {
        let metas: Vec<flows::EndpointMeta> = self
            .endpoints
            .values()
            .filter_map(|e| {
                let ip = e
                    .spec
                    .ipv4
                    .map(IpAddr::V4)
                    .or(e.spec.ipv6.map(IpAddr::V6))?;
                Some(flows::FlowContext::endpoint(self, ip))
            })
            .filter(|m| m.identity == identity)
            .collect();
        let first = metas.first()?.clone();
        if metas.len() == 1 {
            return Some(first);
        }
        let shared = metas
            .iter()
            .all(|m| m.workload.is_some() && m.workload == first.workload);
        shared.then(|| flows::EndpointMeta {
            id: 0,
            pod: String::new(),
            ..first
        })
    }

    fn identity_labels(&self, identity: u32) -> Vec<String> {
        self.engine
            .identity_labels(identity)
            .map(|l| l.to_strings())
            .unwrap_or_default()
    }

    fn rule(&self, id: u32) -> Option<myelin_policy::Provenance> {
        self.applied.rule_ids.rule(id).cloned()
    }

    fn service(&self, frontend: SocketAddr) -> Option<(String, String)> {
        self.services
            .values()
            .find(|s| {
                s.cluster_ips.contains(&frontend.ip())
                    && s.ports.iter().any(|p| p.port == frontend.port())
            })
            .map(|s| (s.namespace.clone(), s.name.clone()))
    }
}

impl Node {
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
                let key = (spec.namespace.clone(), spec.pod.clone());
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
                let labels = self.endpoint_labels(&namespace, &pod);
                self.engine
                    .remove_endpoint(&EndpointKey::new(&namespace, &pod));
                if let Some(endpoint) = self.endpoints.remove(&(namespace.clone(), pod.clone())) {
                    let kind = AgentEventType::EndpointDeleted;
                    self.endpoint_changed(kind, endpoint.id, &namespace, &pod, labels);
                    self.datapath
                        .detach_endpoint(&endpoint.spec.ifname, endpoint.ifindex)?;
                    self.sync()?;
                    self.persist()?;
                }
                Response::Ok
            }
            Request::ServiceUpsert(spec) => {
                self.services
                    .insert((spec.namespace.clone(), spec.name.clone()), spec);
                self.sync()?;
                self.persist()?;
                Response::Ok
            }
            Request::ServiceDelete { namespace, name } => {
                self.services.remove(&(namespace, name));
                self.sync()?;
                self.persist()?;
                Response::Ok
            }
            Request::Status => Response::Status(self.status()),
            Request::ResourcesApply { documents } => {
                let outcomes = policy::apply(&mut self.engine, &documents);
                for (document, outcome) in documents.into_iter().zip(&outcomes) {
                    if outcome.error.is_none() {
                        self.policy_changed(AgentEventType::PolicyUpdated, &document.resource);
                        self.resources.insert(outcome.key.clone(), document);
                    }
                }
                self.sync()?;
                self.persist()?;
                Response::Resources { outcomes }
            }
            Request::ResourcesDelete { keys } => {
                for key in keys {
                    if let Some(document) = self.resources.remove(&key) {
                        self.forget(&document.resource);
                        self.policy_changed(AgentEventType::PolicyDeleted, &document.resource);
                    }
                }
                self.sync()?;
                self.persist()?;
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
                            .get(&(namespace.clone(), pod.clone()))
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
        })
    }

    /// Removes a resource from the policy engine.
    fn forget(&mut self, resource: &myelin_model::Resource) {
        use myelin_model::Resource;
        match resource {
            Resource::CiliumNetworkPolicy(_)
            | Resource::CiliumClusterwideNetworkPolicy(_)
            | Resource::NetworkPolicy(_) => {
                if let Some(key) = myelin_policy::PolicyKey::of(resource) {
                    self.engine.remove_policy(&key);
                }
            }
            Resource::Service(s) => {
                let namespace = s
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or(myelin_model::manifest::DEFAULT_NAMESPACE);
                self.engine.remove_service(namespace, &s.metadata.name);
            }
            Resource::Namespace(n) => {
                let _ = self
                    .engine
                    .set_namespace_labels(&n.metadata.name, BTreeMap::new());
            }
            Resource::Pod(_) | Resource::Deployment(_) => {}
        }
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
            events: self.counters.clone(),
        }
    }
}

async fn read_events(mut reader: EventReader, node: Arc<Mutex<Node>>) {
    let clock = flows::KernelClock::now();
    let mut batch = Vec::new();
    loop {
        batch.clear();
        if let Err(e) = reader.read(&mut batch).await {
            tracing::error!("event ring: {e}");
            return;
        }
        let mut node = node.lock().await;
        for event in &batch {
            if let Some(flow) = flows::kernel_flow(event, &clock, &*node) {
                node.observer.push(flow);
            }
        }
        let lost = reader.lost();
        if lost > node.counters.lost {
            node.observer.record_lost(
                myelin_observe::proto::flow::LostEventSource::PerfEventRingBuffer,
                lost - node.counters.lost,
            );
        }
        let counters = &mut node.counters;
        counters.lost = lost;
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

async fn read_proxy_messages(
    mut messages: tokio::sync::broadcast::Receiver<ProxyMessage>,
    node: Arc<Mutex<Node>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match messages.recv().await {
            Ok(ProxyMessage::Event(event)) => {
                let node = node.lock().await;
                let flow = flows::l7_flow(&event, &*node, &node.flow_headers);
                node.observer.push(flow);
            }
            Ok(ProxyMessage::Nack { version, error }) => {
                tracing::error!(version, "the proxy rejected its configuration: {error}");
            }
            Ok(ProxyMessage::Ack { version }) => tracing::debug!(version, "proxy configured"),
            Ok(ProxyMessage::Hello { version }) => tracing::info!(?version, "proxy connected"),
            Err(RecvError::Lagged(missed)) => {
                let node = node.lock().await;
                node.observer.record_lost(
                    myelin_observe::proto::flow::LostEventSource::ObserverEventsQueue,
                    missed,
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Removes expired conntrack entries now and then (a full table also degrades by LRU
/// eviction, so this only keeps it tidy), and collects identities no agent has used for the
/// retention's grace, so label churn cannot exhaust the cluster range.
async fn collect_garbage(node: Arc<Mutex<Node>>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        every.tick().await;
        let mut node = node.lock().await;
        if let Ok(entries) = node.datapath.conntrack() {
            node.metrics.map_entries("conntrack", entries.len());
        }
        match node.datapath.conntrack_gc() {
            Ok(removed) if removed > 0 => tracing::debug!(removed, "conntrack entries expired"),
            Ok(_) => {}
            Err(e) => tracing::warn!("conntrack garbage collection: {e}"),
        }
        match node.engine.collect_identities(
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
}
