//! The lab supervisor: a daemon that plays the Kubernetes control plane and
//! kubelet for the lab. It creates the nodes and their agents, turns applied
//! manifests into pods (network namespaces, veths, processes), allocates
//! cluster IPs, tells each node's agent about its endpoints and services, and
//! tears everything down on `lab down`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use myelin_agent::api::{
    self as agent_api, EndpointSpec, NamedPort, ServicePortSpec, ServiceSpec, TargetPort,
};
use myelin_demo_apps::program_for_image;
use myelin_model::workload::{Deployment, IntOrString, Pod, Protocol, Service};
use myelin_model::{Document, Metadata, Resource, ResourceKey};
use tokio::sync::{Mutex, mpsc};

use crate::api::{LabRequest, LabResponse, LabStatus, NodeStatus, PodStatus, ServiceSummary};
use crate::names::{LabNames, host_veth};
use crate::net;
use crate::state::{self, LabState, NodeRecord, PodRecord, ServiceRecord, record_process};
use crate::teardown;
use crate::{forward, ipam};

/// The namespaces every lab starts with.
const BUILTIN_NAMESPACES: [&str; 2] = ["default", "kube-system"];

/// The interface that holds a node's own addresses (the kernel here has no
/// dummy devices; loopback addresses are just as local).
const NODE_INTERFACE: &str = "lo";

/// How long a pod may take to serve on its port before the apply fails.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

struct Supervisor {
    names: LabNames,
    exe: PathBuf,
    state: LabState,
    exits: mpsc::UnboundedSender<(String, u32, Option<i32>)>,
    /// Set once teardown begins: exits are expected then, not restarted.
    stopping: bool,
    /// Node services forwarded to the host's loopback.
    exposed: Vec<(String, std::net::SocketAddr)>,
    /// Each node's DNS sockets, bound once and handed to every agent the
    /// node runs: queries sent while an agent restarts wait in them.
    dns_sockets: BTreeMap<String, Vec<std::net::UdpSocket>>,
}

/// Runs the supervisor of lab `lab` in the foreground until `lab down` (or
/// SIGTERM), which tear the lab down. `exe` is the myelin binary, used to
/// start agents and the demo apps.
pub async fn supervise(lab: &str, exe: PathBuf) -> anyhow::Result<()> {
    let names = LabNames::new(lab);
    let run_dir = names.run_dir();
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let (exits, mut exit_events) = mpsc::unbounded_channel();
    let mut supervisor = Supervisor {
        names: names.clone(),
        exe,
        state: LabState {
            lab: lab.to_string(),
            supervisor: Some(record_process(std::process::id(), "lab supervisor")),
            namespaces: BUILTIN_NAMESPACES.iter().map(|n| n.to_string()).collect(),
            ..LabState::default()
        },
        exits,
        stopping: false,
        exposed: Vec::new(),
        dns_sockets: BTreeMap::new(),
    };
    supervisor.save()?;
    // On failure `lab up` reads this process's log, then tears the lab down.
    supervisor
        .start_node("node1", 1)
        .await
        .context("starting the lab's node")?;
    for (what, port) in ["observer", "servicemap"]
        .into_iter()
        .zip(forward::EXPOSED_PORTS)
    {
        match forward::expose(names.node_netns("node1"), port).await {
            Some(address) => supervisor.exposed.push((what.to_string(), address)),
            None => tracing::info!(port, "port taken on this machine; {what} not exposed"),
        }
    }
    let supervisor = Arc::new(Mutex::new(supervisor));

    let socket = names.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    let (down_tx, mut down_rx) = mpsc::channel::<()>(1);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tracing::info!(lab, "lab ready");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let supervisor = supervisor.clone();
                let down_tx = down_tx.clone();
                tokio::spawn(myelin_agent::rpc::serve_connection(stream, move |request: LabRequest| {
                    let supervisor = supervisor.clone();
                    let down_tx = down_tx.clone();
                    async move {
                        let is_down = matches!(request, LabRequest::Down);
                        let answer = supervisor.lock().await.handle(request).await.map_err(|e| format!("{e:#}"));
                        if is_down {
                            let _ = down_tx.try_send(());
                        }
                        answer
                    }
                }));
            }
            Some((pod, pid, code)) = exit_events.recv() => {
                supervisor.lock().await.process_exited(&pod, pid, code).await;
            }
            _ = down_rx.recv() => break,
            _ = terminate.recv() => {
                let mut supervisor = supervisor.lock().await;
                supervisor.stopping = true;
                teardown::teardown(&names, Some(&supervisor.state));
                break;
            }
        }
    }
    Ok(())
}

impl Supervisor {
    fn save(&self) -> anyhow::Result<()> {
        self.state.save(&self.names.run_dir().join("state.json"))
    }

    fn node(&self, name: &str) -> anyhow::Result<&NodeRecord> {
        self.state
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("node {name} does not exist"))
    }

    fn node_names(&self) -> Vec<String> {
        self.state.nodes.iter().map(|n| n.name.clone()).collect()
    }

    fn agent_socket(&self, node: &str) -> PathBuf {
        self.names.run_dir().join(node).join("agent.sock")
    }

    async fn agent(
        &self,
        node: &str,
        request: &agent_api::Request,
    ) -> anyhow::Result<agent_api::Response> {
        agent_api::call(&self.agent_socket(node), request)
            .await
            .with_context(|| format!("agent of {node}"))
    }

    /// Creates node `name`: its namespace, forwarding, its own addresses, and
    /// its agent.
    async fn start_node(&mut self, name: &str, index: u8) -> anyhow::Result<()> {
        let netns = self.names.node_netns(name);
        let record = NodeRecord {
            name: name.to_string(),
            index,
            netns: netns.clone(),
            router_v4: ipam::node_router_v4(index),
            router_v6: ipam::node_router_v6(index),
            agent: None,
            proxy: None,
        };
        self.state.nodes.push(record.clone());
        self.save()?;
        net::add_netns(&netns)?;
        net::sysctls(
            &netns,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
            ],
        )?;
        net::ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{}/32", record.router_v4),
            "dev",
            NODE_INTERFACE,
        ])?;
        net::ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{}/128", record.router_v6),
            "dev",
            NODE_INTERFACE,
            "nodad",
        ])?;

        // Connections the datapath hands to the proxy are delivered locally, as the
        // sk_assign recipe requires.
        for route in myelin_datapath::proxy_routing::proxy_delivery_routes() {
            let mut args = vec!["-n", netns.as_str()];
            args.extend(route.iter().map(String::as_str));
            net::ip(&args)?;
        }

        std::fs::create_dir_all(self.names.node_dir(name))?;
        crate::bpffs::ensure_mounted(&self.names.bpffs())?;
        let addresses = [
            std::net::SocketAddr::from((record.router_v4, 53)),
            std::net::SocketAddr::from((record.router_v6, 53)),
        ];
        let sockets = net::in_netns(&netns, move || {
            addresses
                .iter()
                .map(|a| {
                    std::net::UdpSocket::bind(a)
                        .with_context(|| format!("binding the node's DNS socket {a}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        self.dns_sockets.insert(name.to_string(), sockets);
        self.spawn_agent(name).await?;
        self.start_proxy(name)
    }

    /// Starts (or restarts) a node's agent and waits until it answers.
    async fn spawn_agent(&mut self, name: &str) -> anyhow::Result<()> {
        let record = self.node(name)?.clone();
        let node_dir = self.names.node_dir(name);
        // Appended: a restarted agent's log follows its predecessor's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node_dir.join("agent.log"))?;
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .args(["agent", "--node", name, "--netns", &record.netns])
            .arg("--api-socket")
            .arg(self.agent_socket(name))
            .arg("--bpffs")
            .arg(self.names.bpffs().join(name))
            .arg("--state-dir")
            .arg(&node_dir)
            .arg("--identity-store")
            .arg(self.names.run_dir().join("identities.json"))
            .arg("--dns-listen")
            .arg(format!("{},{}", record.router_v4, record.router_v6))
            .arg("--proxy-socket")
            .arg(node_dir.join("proxy.sock"))
            .arg("--observer-socket")
            .arg(self.names.observer_socket(name))
            .args([
                "--observer-tcp",
                "127.0.0.1:4245",
                "--metrics",
                "0.0.0.0:9965",
                "--servicemap",
                "127.0.0.1:12000",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // The DNS sockets become descriptors 3, 4, ... of the agent. They are
        // first duplicated above that range so that no dup2 below overwrites
        // a source it still needs.
        let mut handed = Vec::new();
        for socket in self.dns_sockets.get(name).into_iter().flatten() {
            let fd = nix::fcntl::fcntl(socket, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(64))?;
            // SAFETY: fcntl just returned this new descriptor; it is owned here only.
            handed.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        }
        let sources: Vec<i32> = handed.iter().map(|fd| fd.as_raw_fd()).collect();
        for target in 3..3 + sources.len() as i32 {
            command.arg("--dns-fd").arg(target.to_string());
        }
        // SAFETY: between fork and exec only dup2 runs, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                for (i, source) in sources.iter().enumerate() {
                    if libc::dup2(*source, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().context("starting the agent")?;
        drop(handed);
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the agent exited at once"))?;
        self.watch(child, format!("agent/{name}"), pid);
        if let Some(node) = self.state.nodes.iter_mut().find(|n| n.name == name) {
            node.agent = Some(record_process(pid, format!("agent of {name}")));
        }
        self.save()?;
        let socket = self.agent_socket(name);
        for _ in 0..100 {
            if agent_api::call(&socket, &agent_api::Request::Status)
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(node_dir.join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!(
            "the agent of {name} did not come up within 10 s; its log ends:\n{}",
            tail.join("\n")
        )
    }

    /// Starts the node's L7 proxy; it connects to the agent by itself.
    fn start_proxy(&mut self, name: &str) -> anyhow::Result<()> {
        let netns = self.node(name)?.netns.clone();
        let node_dir = self.names.node_dir(name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node_dir.join("proxy.log"))?;
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .args(["proxy", "--netns", &netns])
            .arg("--control-socket")
            .arg(node_dir.join("proxy.sock"))
            .arg("--snapshot-file")
            .arg(node_dir.join("proxy-snapshot.json"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = command.spawn().context("starting the proxy")?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the proxy exited at once"))?;
        self.watch(child, format!("proxy/{name}"), pid);
        if let Some(node) = self.state.nodes.iter_mut().find(|n| n.name == name) {
            node.proxy = Some(record_process(pid, format!("proxy of {name}")));
        }
        self.save()
    }

    /// Reaps a child and reports its exit to the supervisor loop.
    fn watch(&self, mut child: tokio::process::Child, owner: String, pid: u32) {
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let code = child.wait().await.ok().and_then(|s| s.code());
            let _ = exits.send((owner, pid, code));
        });
    }

    /// A child exited: a node's agent or proxy is started again (as a
    /// DaemonSet would), a pod's container marks the pod failed.
    async fn process_exited(&mut self, owner: &str, pid: u32, code: Option<i32>) {
        if self.stopping {
            return;
        }
        if let Some((which, node)) = owner.split_once('/')
            && matches!(which, "agent" | "proxy")
        {
            let record = self.node(node).ok();
            let current = match which {
                "agent" => record.and_then(|n| n.agent.as_ref()),
                _ => record.and_then(|n| n.proxy.as_ref()),
            };
            if current.is_some_and(|p| p.pid == pid) {
                tracing::warn!(node, ?code, "the {which} exited; starting it again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                let restarted = match which {
                    "agent" => self.spawn_agent(node).await,
                    _ => self.start_proxy(node),
                };
                if let Err(e) = restarted {
                    tracing::error!(node, "the {which} could not be started again: {e:#}");
                }
            }
            return;
        }
        let Some(record) = self.state.pods.get_mut(owner) else {
            return;
        };
        if !record.processes.iter().any(|p| p.pid == pid) {
            return;
        }
        tracing::warn!(pod = owner, ?code, "container exited");
        record.phase = match code {
            Some(0) => "Succeeded".to_string(),
            Some(code) => format!("Failed (exit code {code})"),
            None => "Failed (killed by a signal)".to_string(),
        };
        record.ready = false;
        let spec = endpoint_spec(record);
        let node = record.node.clone();
        let _ = self.save();
        if let Err(e) = self
            .agent(&node, &agent_api::Request::EndpointUpsert(spec))
            .await
        {
            tracing::warn!(pod = owner, "could not mark the pod unready: {e:#}");
        }
    }

    async fn handle(&mut self, request: LabRequest) -> anyhow::Result<LabResponse> {
        match request {
            LabRequest::Apply { documents } => self
                .apply(documents)
                .await
                .map(|lines| LabResponse::Changes { lines }),
            LabRequest::Delete { keys } => self
                .delete(keys)
                .await
                .map(|lines| LabResponse::Changes { lines }),
            LabRequest::Status => Ok(LabResponse::Status(self.status().await)),
            LabRequest::Down => {
                self.stopping = true;
                teardown::teardown(&self.names, Some(&self.state));
                Ok(LabResponse::Ok)
            }
        }
    }

    /// Checks a whole batch against the lab before changing anything.
    fn check(&self, documents: &[Document]) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut namespaces = self.state.namespaces.clone();
        for d in documents {
            if let Resource::Namespace(n) = &d.resource {
                namespaces.insert(n.metadata.name.clone());
            }
        }
        for d in documents {
            let at = format!("{}: document {}", d.source.file, d.source.document);
            let key = d.resource.key();
            if !key.namespace.is_empty() && !namespaces.contains(&key.namespace) {
                problems.push(format!(
                    "{at}: {key}: namespace {:?} does not exist; create it first (kind: Namespace)",
                    key.namespace
                ));
            }
            let pod_spec = match &d.resource {
                Resource::Pod(p) => Some(&p.spec),
                Resource::Deployment(dep) => Some(&dep.spec.template.spec),
                _ => None,
            };
            for (i, c) in pod_spec
                .map(|s| s.containers.as_slice())
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                if c.command.is_none() && program_for_image(&c.image).is_none() {
                    problems.push(format!(
                        "{at}: {key}: containers[{i}] ({}): the lab does not know image {:?} and the container has no command; \
                         give it a `command` (run from this machine's filesystem) or use an image the lab knows \
                         (quay.io/cilium/starwars, quay.io/cilium/json-mock)",
                        c.name, c.image
                    ));
                }
            }
            if let Resource::Pod(p) = &d.resource
                && let Some(existing) = self.state.pods.get(&state::key(&key.namespace, &key.name))
                && existing.pod.spec != p.spec
            {
                problems.push(format!(
                    "{at}: {key}: a pod's spec cannot change; delete the pod and apply it again"
                ));
            }
            if let Resource::Service(s) = &d.resource
                && let Some(ip) = s
                    .spec
                    .cluster_ip
                    .as_deref()
                    .filter(|ip| *ip != "None" && !ip.is_empty())
            {
                match ip.parse::<IpAddr>() {
                    Ok(ip) if !ipam::in_service_cidr(ip) => problems.push(format!(
                        "{at}: {key}: spec.clusterIP {ip} is outside the service CIDRs {}",
                        ipam::SERVICE_CIDRS.join(", ")
                    )),
                    Ok(ip) => {
                        let taken = self.state.services.iter().any(|(k, r)| {
                            *k != state::key(&key.namespace, &key.name)
                                && r.cluster_ips.contains(&ip)
                        });
                        if taken {
                            problems.push(format!(
                                "{at}: {key}: spec.clusterIP {ip} is already allocated"
                            ));
                        }
                    }
                    Err(_) => {}
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    async fn apply(&mut self, documents: Vec<Document>) -> anyhow::Result<Vec<String>> {
        if let Err(problems) = self.check(&documents) {
            bail!("nothing was applied:\n{}", problems.join("\n"));
        }
        let mut lines = Vec::new();
        let mut created_pods = Vec::new();
        let result = self
            .apply_checked(documents, &mut lines, &mut created_pods)
            .await;
        if let Err(e) = result {
            // Nothing half-created: remove the pods this apply made.
            for pod in created_pods {
                let _ = self.delete_pod(&pod).await;
            }
            let _ = self.save();
            return Err(e);
        }
        self.save()?;
        Ok(lines)
    }

    async fn apply_checked(
        &mut self,
        documents: Vec<Document>,
        lines: &mut Vec<String>,
        created_pods: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let rank = |r: &Resource| match r {
            Resource::Namespace(_) => 0,
            Resource::Service(_) => 1,
            Resource::Deployment(_) => 2,
            Resource::Pod(_) => 3,
            _ => 4,
        };
        let mut documents = documents;
        documents.sort_by_key(|d| rank(&d.resource));
        // Policy first, so that pods start under it; namespaces and services
        // too, for namespace selectors and toServices.
        let for_policy: Vec<Document> = documents
            .iter()
            .filter(|d| !matches!(d.resource, Resource::Pod(_) | Resource::Deployment(_)))
            .cloned()
            .collect();
        if !for_policy.is_empty() {
            for node in self.node_names() {
                let request = agent_api::Request::ResourcesApply {
                    documents: for_policy.clone(),
                };
                if let agent_api::Response::Resources { outcomes } =
                    self.agent(&node, &request).await?
                {
                    for outcome in outcomes {
                        if let Some(error) = outcome.error {
                            lines.push(format!(
                                "Error: {} rejected by the agent of {node}: {error}",
                                outcome.key
                            ));
                        }
                    }
                }
            }
        }
        for d in documents {
            match d.resource {
                Resource::Namespace(n) => {
                    let fresh = self.state.namespaces.insert(n.metadata.name.clone());
                    lines.push(format!(
                        "namespace/{} {}",
                        n.metadata.name,
                        if fresh { "created" } else { "unchanged" }
                    ));
                }
                Resource::Service(s) => lines.push(self.apply_service(s).await?),
                Resource::Deployment(dep) => {
                    lines.push(self.apply_deployment(dep, created_pods).await?)
                }
                Resource::Pod(p) => {
                    let key = state::key(&namespace_of(&p.metadata), &p.metadata.name);
                    match self.state.pods.get(&key) {
                        Some(existing) if existing.pod.metadata.labels == p.metadata.labels => {
                            lines.push(format!("pod/{} unchanged", p.metadata.name));
                        }
                        Some(_) => {
                            let node = {
                                let record = self
                                    .state
                                    .pods
                                    .get_mut(&key)
                                    .ok_or_else(|| anyhow!("pod {key} vanished"))?;
                                record.pod.metadata.labels = p.metadata.labels.clone();
                                record.node.clone()
                            };
                            let spec = endpoint_spec(&self.state.pods[&key]);
                            self.agent(&node, &agent_api::Request::EndpointUpsert(spec))
                                .await?;
                            lines.push(format!("pod/{} configured", p.metadata.name));
                        }
                        None => {
                            self.create_pod(p, None).await?;
                            created_pods.push(key);
                            lines.push(format!(
                                "pod/{} created",
                                lines_name(&self.state.pods, created_pods)
                            ));
                        }
                    }
                }
                policy => {
                    let key = policy.key();
                    let id = key.to_string();
                    let line = match self.state.policies.get(&id) {
                        None => "created",
                        Some(existing) if existing.resource == policy => "unchanged",
                        Some(_) => "configured",
                    };
                    lines.push(format!(
                        "{}/{} {line}",
                        resource_kind_name(&key.kind),
                        key.name
                    ));
                    self.state.policies.insert(
                        id,
                        Document {
                            source: d.source.clone(),
                            resource: policy,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    async fn apply_service(&mut self, service: Service) -> anyhow::Result<String> {
        let namespace = namespace_of(&service.metadata);
        let key = state::key(&namespace, &service.metadata.name);
        let existing = self.state.services.get(&key).cloned();
        let cluster_ips = match (&existing, service.spec.cluster_ip.as_deref()) {
            (Some(record), _) => record.cluster_ips.clone(),
            (None, Some("None")) => Vec::new(),
            (None, Some(ip)) if !ip.is_empty() => {
                let ip: IpAddr = ip.parse().context("spec.clusterIP")?;
                vec![ip]
            }
            _ => {
                let used: BTreeSet<IpAddr> = self
                    .state
                    .services
                    .values()
                    .flat_map(|r| r.cluster_ips.clone())
                    .collect();
                let (v4, v6) = ipam::next_service_addresses(&used)
                    .ok_or_else(|| anyhow!("the service CIDRs are full"))?;
                vec![IpAddr::V4(v4), IpAddr::V6(v6)]
            }
        };
        let line = match &existing {
            None => "created",
            Some(r) if r.service == service => "unchanged",
            Some(_) => "configured",
        };
        let record = ServiceRecord {
            service,
            cluster_ips,
        };
        self.state.services.insert(key, record.clone());
        self.save()?;
        for node in self
            .state
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect::<Vec<_>>()
        {
            self.agent(
                &node,
                &agent_api::Request::ServiceUpsert(service_spec(&record)),
            )
            .await?;
        }
        Ok(format!("service/{} {line}", record.service.metadata.name))
    }

    async fn apply_deployment(
        &mut self,
        deployment: Deployment,
        created: &mut Vec<String>,
    ) -> anyhow::Result<String> {
        let namespace = namespace_of(&deployment.metadata);
        let key = state::key(&namespace, &deployment.metadata.name);
        let line = match self.state.deployments.get(&key) {
            None => "created",
            Some(d) if *d == deployment => "unchanged",
            Some(_) => "configured",
        };
        self.state
            .deployments
            .insert(key.clone(), deployment.clone());
        self.save()?;
        let hash = template_hash(&deployment);
        let owned: Vec<String> = self
            .state
            .pods
            .iter()
            .filter(|(_, p)| p.owner.as_deref() == Some(key.as_str()))
            .map(|(k, _)| k.clone())
            .collect();
        // Pods of an older template go (the Recreate strategy); then scale to replicas.
        let (current, stale): (Vec<String>, Vec<String>) = owned.into_iter().partition(|k| {
            self.state.pods[k]
                .pod
                .metadata
                .labels
                .get("pod-template-hash")
                == Some(&hash)
        });
        for pod in stale {
            self.delete_pod(&pod).await?;
        }
        let replicas = deployment.spec.replicas as usize;
        for pod in current.iter().skip(replicas) {
            self.delete_pod(pod).await?;
        }
        for _ in current.len()..replicas {
            let mut labels = deployment.spec.template.metadata.labels.clone();
            labels.insert("pod-template-hash".into(), hash.clone());
            let name = loop {
                let candidate = format!("{}-{hash}-{}", deployment.metadata.name, random_suffix());
                if !self
                    .state
                    .pods
                    .contains_key(&state::key(&namespace, &candidate))
                {
                    break candidate;
                }
            };
            let pod = Pod::from_template(
                Metadata::named(name.clone(), Some(namespace.clone()), labels),
                deployment.spec.template.spec.clone(),
            );
            self.create_pod(pod, Some(key.clone())).await?;
            created.push(state::key(&namespace, &name));
        }
        Ok(format!(
            "deployment.apps/{} {line}",
            deployment.metadata.name
        ))
    }

    /// Creates a pod on node1: namespace, veth, addresses, routes, hosts and
    /// resolv.conf, the endpoint in the agent, then its processes; waits
    /// until it is ready.
    async fn create_pod(&mut self, pod: Pod, owner: Option<String>) -> anyhow::Result<()> {
        let namespace = namespace_of(&pod.metadata);
        let key = state::key(&namespace, &pod.metadata.name);
        let node = self.node("node1")?.clone();
        let used: BTreeSet<IpAddr> = self
            .state
            .pods
            .values()
            .flat_map(|p| [IpAddr::V4(p.ipv4), IpAddr::V6(p.ipv6)])
            .collect();
        let (ipv4, ipv6) = ipam::next_pod_addresses(node.index, &used)
            .ok_or_else(|| anyhow!("node {} has no free pod address", node.name))?;
        let record = PodRecord {
            pod: pod.clone(),
            owner,
            node: node.name.clone(),
            netns: self.names.pod_netns(&namespace, &pod.metadata.name),
            host_veth: host_veth(&namespace, &pod.metadata.name),
            ipv4,
            ipv6,
            mac: Some(ipam::pod_mac(ipv4)),
            processes: Vec::new(),
            phase: "Pending".into(),
            ready: false,
        };
        // Recorded before anything exists, so a crash leaves nothing unnamed.
        self.state.pods.insert(key.clone(), record.clone());
        self.save()?;
        wire_pod(&record, &node)?;
        write_pod_files(&record, &node)?;
        self.agent(
            &node.name,
            &agent_api::Request::EndpointUpsert(endpoint_spec(&record)),
        )
        .await?;

        let mut serving_ports = Vec::new();
        let mut processes = Vec::new();
        for container in &pod.spec.containers {
            let (program, args): (PathBuf, Vec<String>) = match &container.command {
                Some(command) if !command.is_empty() => {
                    let mut args: Vec<String> = command[1..].to_vec();
                    args.extend(container.args.clone().unwrap_or_default());
                    (PathBuf::from(&command[0]), args)
                }
                _ => {
                    let known = program_for_image(&container.image)
                        .ok_or_else(|| anyhow!("pod {key}: unknown image {:?}", container.image))?;
                    serving_ports.extend(known.serving_port());
                    (
                        self.exe.clone(),
                        known.app_args().iter().map(|s| s.to_string()).collect(),
                    )
                }
            };
            let log_dir = self.names.run_dir().join("pods");
            std::fs::create_dir_all(&log_dir)?;
            let log = std::fs::File::create(log_dir.join(format!(
                "{namespace}_{}_{}.log",
                pod.metadata.name, container.name
            )))?;
            let mut command = tokio::process::Command::new("ip");
            command
                .args(["netns", "exec", &record.netns])
                .arg(&program)
                .args(&args)
                .env("HOSTNAME", &pod.metadata.name)
                .envs(
                    container
                        .env
                        .iter()
                        .map(|e| (e.name.clone(), e.value.clone())),
                )
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0);
            let child = command
                .spawn()
                .with_context(|| format!("pod {key}: starting container {}", container.name))?;
            let pid = child
                .id()
                .ok_or_else(|| anyhow!("pod {key}: container {} exited at once", container.name))?;
            processes.push(record_process(
                pid,
                format!("{key} container {}", container.name),
            ));
            self.watch(child, key.clone(), pid);
        }
        if let Some(r) = self.state.pods.get_mut(&key) {
            r.processes = processes;
            r.phase = "Running".into();
        }
        self.save()?;
        wait_serving(&record.netns, &serving_ports)
            .await
            .with_context(|| format!("pod {key} did not become ready"))?;
        let spec = {
            let r = self
                .state
                .pods
                .get_mut(&key)
                .ok_or_else(|| anyhow!("pod {key} vanished"))?;
            r.ready = true;
            endpoint_spec(r)
        };
        self.agent(&node.name, &agent_api::Request::EndpointUpsert(spec))
            .await?;
        self.save()
    }

    async fn delete_pod(&mut self, key: &str) -> anyhow::Result<()> {
        let Some(record) = self.state.pods.get(key).cloned() else {
            return Ok(());
        };
        let request = agent_api::Request::EndpointDelete {
            namespace: namespace_of(&record.pod.metadata),
            pod: record.pod.metadata.name.clone(),
        };
        if let Err(e) = self.agent(&record.node, &request).await {
            tracing::warn!(pod = key, "agent did not forget the endpoint: {e:#}");
        }
        teardown::stop_processes(&record.processes);
        net::delete_netns(&record.netns)?;
        teardown::remove_netns_files(&record.netns);
        self.state.pods.remove(key);
        self.save()
    }

    /// Forgets a service and tells every node's agent.
    async fn delete_service(&mut self, namespace: &str, name: &str) -> anyhow::Result<()> {
        self.state.services.remove(&state::key(namespace, name));
        let request = agent_api::Request::ServiceDelete {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        for node in self.node_names() {
            self.agent(&node, &request).await?;
        }
        Ok(())
    }

    async fn delete(&mut self, mut keys: Vec<ResourceKey>) -> anyhow::Result<Vec<String>> {
        // The reverse of creation order, so that a namespace goes after what is in it.
        let rank = |kind: &str| match kind {
            "Pod" => 0,
            "Deployment" => 1,
            "Service" => 2,
            "Namespace" => 4,
            _ => 3,
        };
        keys.sort_by_key(|k| rank(&k.kind));
        let mut lines = Vec::new();
        let mut missing = Vec::new();
        for key in keys.clone() {
            let k = state::key(&key.namespace, &key.name);
            match key.kind.as_str() {
                "Pod" if self.state.pods.contains_key(&k) => {
                    self.delete_pod(&k).await?;
                    lines.push(format!("pod \"{}\" deleted", key.name));
                }
                "Deployment" if self.state.deployments.contains_key(&k) => {
                    self.state.deployments.remove(&k);
                    let owned: Vec<String> = self
                        .state
                        .pods
                        .iter()
                        .filter(|(_, p)| p.owner.as_deref() == Some(k.as_str()))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for pod in owned {
                        self.delete_pod(&pod).await?;
                    }
                    lines.push(format!("deployment.apps \"{}\" deleted", key.name));
                }
                "Service" if self.state.services.contains_key(&k) => {
                    self.delete_service(&key.namespace, &key.name).await?;
                    lines.push(format!("service \"{}\" deleted", key.name));
                }
                "Namespace" if self.state.namespaces.contains(&key.name) => {
                    let inside = |k: &String| k.starts_with(&format!("{}/", key.name));
                    let pods: Vec<String> = self
                        .state
                        .pods
                        .keys()
                        .filter(|k| inside(k))
                        .cloned()
                        .collect();
                    for pod in pods {
                        self.delete_pod(&pod).await?;
                    }
                    self.state.deployments.retain(|k, _| !inside(k));
                    let services: Vec<String> = self
                        .state
                        .services
                        .keys()
                        .filter(|k| inside(k))
                        .cloned()
                        .collect();
                    for service in services {
                        if let Some((namespace, name)) = service.split_once('/') {
                            self.delete_service(namespace, name).await?;
                        }
                    }
                    self.state.namespaces.remove(&key.name);
                    lines.push(format!("namespace \"{}\" deleted", key.name));
                }
                kind if self.state.policies.contains_key(&key.to_string()) => {
                    self.state.policies.remove(&key.to_string());
                    let request = agent_api::Request::ResourcesDelete {
                        keys: vec![key.clone()],
                    };
                    for node in self.node_names() {
                        self.agent(&node, &request).await?;
                    }
                    lines.push(format!(
                        "{} \"{}\" deleted",
                        resource_kind_name(kind),
                        key.name
                    ));
                }
                _ => missing.push(format!("{key} not found")),
            }
        }
        // The agents resolve policy from namespaces and services too.
        let engine_keys: Vec<ResourceKey> = keys
            .iter()
            .filter(|k| matches!(k.kind.as_str(), "Namespace" | "Service"))
            .cloned()
            .collect();
        if !engine_keys.is_empty() {
            for node in self.node_names() {
                let request = agent_api::Request::ResourcesDelete {
                    keys: engine_keys.clone(),
                };
                self.agent(&node, &request).await?;
            }
        }
        self.save()?;
        if !missing.is_empty() {
            lines.extend(missing.into_iter().map(|m| format!("Error: {m}")));
        }
        Ok(lines)
    }

    async fn status(&self) -> LabStatus {
        let mut nodes = Vec::new();
        for node in &self.state.nodes {
            let agent = match self.agent(&node.name, &agent_api::Request::Status).await {
                Ok(agent_api::Response::Status(status)) => Ok(status),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(format!("{e:#}")),
            };
            nodes.push(NodeStatus {
                name: node.name.clone(),
                netns: node.netns.clone(),
                pod_cidrs: ipam::node_pod_cidrs(node.index).to_vec(),
                agent,
            });
        }
        LabStatus {
            lab: self.state.lab.clone(),
            nodes,
            pods: self
                .state
                .pods
                .values()
                .map(|p| PodStatus {
                    namespace: namespace_of(&p.pod.metadata),
                    name: p.pod.metadata.name.clone(),
                    node: p.node.clone(),
                    addresses: vec![IpAddr::V4(p.ipv4), IpAddr::V6(p.ipv6)],
                    phase: p.phase.clone(),
                    ready: p.ready,
                    netns: p.netns.clone(),
                })
                .collect(),
            services: self
                .state
                .services
                .values()
                .map(|s| ServiceSummary {
                    namespace: namespace_of(&s.service.metadata),
                    name: s.service.metadata.name.clone(),
                    cluster_ips: s.cluster_ips.clone(),
                    ports: s
                        .service
                        .spec
                        .ports
                        .iter()
                        .map(|p| format!("{}/{}", p.port, protocol_name(p.protocol)))
                        .collect(),
                    affinity_timeout_s: s.service.spec.client_ip_affinity_timeout(),
                })
                .collect(),
            exposed: self.exposed.clone(),
            policies: self.state.policies.keys().cloned().collect(),
        }
    }
}

fn lines_name(pods: &BTreeMap<String, PodRecord>, created: &[String]) -> String {
    created
        .last()
        .and_then(|k| pods.get(k))
        .map(|p| p.pod.metadata.name.clone())
        .unwrap_or_default()
}

/// How kubectl names a kind in its output lines.
fn resource_kind_name(kind: &str) -> &'static str {
    match kind {
        "CiliumNetworkPolicy" => "ciliumnetworkpolicy.cilium.io",
        "CiliumClusterwideNetworkPolicy" => "ciliumclusterwidenetworkpolicy.cilium.io",
        "NetworkPolicy" => "networkpolicy.networking.k8s.io",
        _ => "resource",
    }
}

fn namespace_of(metadata: &Metadata) -> String {
    metadata
        .namespace
        .clone()
        .unwrap_or_else(|| myelin_model::manifest::DEFAULT_NAMESPACE.to_string())
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// The agent's view of a pod.
fn endpoint_spec(record: &PodRecord) -> EndpointSpec {
    EndpointSpec {
        namespace: namespace_of(&record.pod.metadata),
        pod: record.pod.metadata.name.clone(),
        labels: record.pod.metadata.labels.clone(),
        ifname: record.host_veth.clone(),
        ipv4: Some(record.ipv4),
        ipv6: Some(record.ipv6),
        mac: record.mac.clone(),
        ports: record
            .pod
            .spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .map(|p| NamedPort {
                name: p.name.clone(),
                port: p.container_port,
                protocol: protocol_name(p.protocol).to_string(),
            })
            .collect(),
        ready: record.ready,
    }
}

/// The agent's view of a service.
fn service_spec(record: &ServiceRecord) -> ServiceSpec {
    ServiceSpec {
        namespace: namespace_of(&record.service.metadata),
        name: record.service.metadata.name.clone(),
        cluster_ips: record.cluster_ips.clone(),
        ports: record
            .service
            .spec
            .ports
            .iter()
            .map(|p| ServicePortSpec {
                name: p.name.clone(),
                port: p.port,
                target_port: match &p.target_port {
                    None => TargetPort::Number(p.port),
                    Some(IntOrString::Int(n)) => {
                        TargetPort::Number(u16::try_from(*n).unwrap_or(p.port))
                    }
                    Some(IntOrString::String(s)) => match s.parse::<u16>() {
                        Ok(n) => TargetPort::Number(n),
                        Err(_) => TargetPort::Name(s.clone()),
                    },
                },
                protocol: protocol_name(p.protocol).to_string(),
            })
            .collect(),
        selector: record.service.spec.selector.clone(),
        affinity_timeout_s: record.service.spec.client_ip_affinity_timeout(),
    }
}

/// The pod's namespace, its veth to the node, addresses and routes.
fn wire_pod(pod: &PodRecord, node: &NodeRecord) -> anyhow::Result<()> {
    let (ns, node_ns, veth) = (
        pod.netns.as_str(),
        node.netns.as_str(),
        pod.host_veth.as_str(),
    );
    net::add_netns(ns)?;
    net::sysctls(
        ns,
        &[
            ("net/ipv6/conf/all/accept_dad", "0"),
            ("net/ipv6/conf/default/accept_dad", "0"),
        ],
    )?;
    let mut link = vec![
        "-n", node_ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
    ];
    if let Some(mac) = pod.mac.as_deref() {
        link.extend(["address", mac]);
    }
    link.extend(["netns", ns]);
    net::ip(&link)?;
    net::ip(&["-n", node_ns, "link", "set", veth, "up"])?;
    // The pod's IPv6 gateway is fe80::1 on its own link.
    net::ip(&[
        "-n",
        node_ns,
        "addr",
        "add",
        "fe80::1/64",
        "dev",
        veth,
        "nodad",
    ])?;
    net::ip(&[
        "-n",
        node_ns,
        "route",
        "add",
        &format!("{}/32", pod.ipv4),
        "dev",
        veth,
    ])?;
    net::ip(&[
        "-n",
        node_ns,
        "-6",
        "route",
        "add",
        &format!("{}/128", pod.ipv6),
        "dev",
        veth,
    ])?;
    net::ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    net::ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{}/32", pod.ipv4),
        "dev",
        "eth0",
    ])?;
    net::ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{}/128", pod.ipv6),
        "dev",
        "eth0",
        "nodad",
    ])?;
    let router = node.router_v4.to_string();
    net::ip(&[
        "-n", ns, "route", "add", &router, "dev", "eth0", "scope", "link",
    ])?;
    net::ip(&[
        "-n", ns, "route", "add", "default", "via", &router, "dev", "eth0",
    ])?;
    net::ip(&[
        "-n", ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
    ])?;
    Ok(())
}

/// `/etc/netns/<ns>/hosts` and `resolv.conf`, which `ip netns exec` mounts
/// over the pod's `/etc`.
fn write_pod_files(pod: &PodRecord, node: &NodeRecord) -> anyhow::Result<()> {
    let dir = Path::new("/etc/netns").join(&pod.netns);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = &pod.pod.metadata.name;
    let hosts = format!(
        "# Written by the myelin lab for pod {name}\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{name}\n{}\t{name}\n",
        pod.ipv4, pod.ipv6
    );
    std::fs::write(dir.join("hosts"), hosts)?;
    let namespace = namespace_of(&pod.pod.metadata);
    let resolv = format!(
        "# Written by the myelin lab: the node's DNS responder\nnameserver {}\nnameserver {}\nsearch {namespace}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:1 attempts:2\n",
        node.router_v4, node.router_v6
    );
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    Ok(())
}

/// Waits until every port accepts connections inside the pod's namespace.
async fn wait_serving(netns: &str, ports: &[u16]) -> anyhow::Result<()> {
    if ports.is_empty() {
        return Ok(());
    }
    let netns = netns.to_string();
    let ports = ports.to_vec();
    tokio::task::spawn_blocking(move || {
        net::in_netns(&netns, move || {
            let deadline = std::time::Instant::now() + READY_TIMEOUT;
            for port in ports {
                let address = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                loop {
                    if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200))
                        .is_ok()
                    {
                        break;
                    }
                    if std::time::Instant::now() > deadline {
                        bail!(
                            "nothing serves on port {port} after {} s; see the pod's log",
                            READY_TIMEOUT.as_secs()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Ok(())
        })
    })
    .await
    .map_err(|e| anyhow!("readiness check: {e}"))?
}

/// A template hash as Kubernetes prints it: 10 characters from a safe alphabet.
fn template_hash(deployment: &Deployment) -> String {
    let text = serde_json::to_string(&deployment.spec.template).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    encode_safe(hash, 10)
}

fn random_suffix() -> String {
    encode_safe(rand::random::<u64>(), 5)
}

/// Kubernetes' alphabet for generated names: no vowels, no look-alikes.
fn encode_safe(mut value: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| {
            let c = ALPHABET[(value % ALPHABET.len() as u64) as usize] as char;
            value /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_use_the_safe_alphabet() {
        let s = encode_safe(123_456_789, 10);
        assert_eq!(s.len(), 10);
        assert!(
            s.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
        assert_eq!(encode_safe(0, 3), "bbb");
    }

    #[test]
    fn a_client_ip_service_reaches_the_agent_with_its_timeout() {
        let parsed = myelin_model::parse_str(
            "s.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}], \
             sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}}\n",
        );
        let Some(Resource::Service(service)) =
            parsed.documents.into_iter().next().map(|d| d.resource)
        else {
            panic!("a Service: {:?}", parsed.errors);
        };
        let record = ServiceRecord {
            service,
            cluster_ips: vec![],
        };
        assert_eq!(service_spec(&record).affinity_timeout_s, Some(600));
    }
}
