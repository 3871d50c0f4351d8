//! The lab supervisor: the daemon behind `myelin lab`. It starts the lab's
//! etcd, underlay, nodes and relay, adds and drains nodes while the lab runs, serves the
//! lab's API (the control plane in [`crate::control`] answers it), restarts
//! agents and proxies that exit and marks pods whose containers exit, and
//! tears the lab down on `lab down` or SIGTERM.
//!
//! Locking: the lab's state sits behind a mutex held only for short,
//! non-blocking steps (never across a process start, an agent call or a
//! wait); writes (apply, delete, node add and delete) take their turn on a
//! second, async mutex for their whole run, so a `lab status` answers while
//! a long apply runs. The running nodes are a list behind a lock of their
//! own, read as a snapshot.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use myelin_api::ApiError;
use myelin_api::agent::Request;
use myelin_api::lab::{Exposed, LabRequest, LabResponse};
use myelin_store::server::{EtcdServer, EtcdSpec};
use tokio::sync::mpsc;

mod secrets;

use crate::names::{self, LabNames, MAX_NODES};
use crate::node::{Node, child_pid};
use crate::state::{LabState, NodeRecord, ProcessRecord, StoreRecord, record_process};
use crate::{net, teardown, underlay};
use myelin_datapath::RoutingMode;

/// The first descriptor number a child gets the listeners it is handed on
/// (after the standard streams).
const FIRST_PASSED_FD: i32 = 3;

/// In a child between fork and exec: makes `fds` its descriptors
/// [`FIRST_PASSED_FD`], +1, ..., open across exec. Each is first copied
/// (into `copies`, as long as `fds`) above every target, so that moving one
/// never closes another. Allocates nothing.
fn pass_descriptors(
    fds: &[std::os::fd::RawFd],
    copies: &mut [std::os::fd::RawFd],
) -> std::io::Result<()> {
    let above = FIRST_PASSED_FD.saturating_add_unsigned(fds.len() as u32);
    for (copy, &fd) in copies.iter_mut().zip(fds) {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor this process holds.
        *copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
        if *copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (&copy, target) in copies.iter().zip(FIRST_PASSED_FD..) {
        // SAFETY: dup2 between descriptors of this process; the target is
        // made without close-on-exec.
        if unsafe { libc::dup2(copy, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How long an agent or proxy that exited is left down before it is
/// started again (no tight loop for one that fails at once).
const RESTART_DELAY: Duration = Duration::from_millis(200);

/// How often the supervisor looks for etcd members that exited.
const ETCD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The namespaces every lab starts with.
const BUILTIN_NAMESPACES: [&str; 2] = ["default", "kube-system"];

/// Whose process exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The agent of the node with this name.
    Agent(String),
    /// The proxy of the node with this name.
    Proxy(String),
    /// A container of the pod with this `namespace/name` key.
    Pod(String),
    /// The lab's relay.
    Relay,
}

/// A child process exited.
struct Exit {
    owner: Owner,
    pid: u32,
    code: Option<i32>,
}

/// One running lab: its nodes, its state and the locks around them.
pub struct Lab {
    /// Names of everything the lab creates.
    pub names: LabNames,
    /// The myelin binary, for agents, proxies and the demo apps.
    pub exe: PathBuf,
    /// The nodes that run, in the order they were added (`lab node add`
    /// and `delete` change them, holding [`Lab::writes`]).
    nodes: RwLock<Vec<Arc<Node>>>,
    /// The relay's services on the host's loopback: the listeners this
    /// supervisor holds (across relay restarts) and hands to the relay.
    exposed: Vec<(Exposed, std::net::TcpListener)>,
    /// What the lab holds, saved to disk after every change.
    state: Mutex<LabState>,
    /// One write (apply, delete, node add or delete) at a time.
    pub writes: tokio::sync::Mutex<()>,
    exits: mpsc::UnboundedSender<Exit>,
    /// Set once teardown begins: exits are expected then, not restarted.
    stopping: AtomicBool,
    /// A client of the cluster store, where the lab keeps its resources
    /// (`None` only in the control plane's unit tests, which run no etcd).
    store: Option<myelin_store::Store>,
    /// One write of the resources to the store at a time, each of the
    /// state as it is then.
    store_writes: tokio::sync::Mutex<()>,
    /// Set when the last write of the resources to the store failed: the
    /// supervisor's etcd check tries again.
    resources_stale: AtomicBool,
    /// The cluster store (etcd) the agents share, while the lab runs.
    etcd: Mutex<Option<EtcdServer>>,
}

impl Lab {
    /// Reads the state (briefly: never across an await).
    pub fn read<T>(&self, read: impl FnOnce(&LabState) -> T) -> T {
        read(&self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Changes the state and saves it (briefly: never across an await).
    pub fn write<T>(&self, change: impl FnOnce(&mut LabState) -> T) -> anyhow::Result<T> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let value = change(&mut state);
        state.save(&self.names.run_dir().join("state.json"))?;
        Ok(value)
    }

    /// The nodes running now.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> anyhow::Result<Arc<Node>> {
        self.nodes()
            .into_iter()
            .find(|n| n.name() == name)
            .ok_or_else(|| anyhow!("node {name} does not exist"))
    }

    /// Sends `request` to every node's agent.
    pub async fn tell_agents(&self, request: &Request) -> anyhow::Result<()> {
        for node in self.nodes() {
            node.agent(request).await?;
        }
        Ok(())
    }

    /// Reaps a child and reports its exit to the supervisor loop.
    pub fn watch(&self, mut child: tokio::process::Child, owner: Owner, pid: u32) {
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let code = child.wait().await.ok().and_then(|s| s.code());
            let _ = exits.send(Exit { owner, pid, code });
        });
    }

    /// Changes the record of node `name` (gone: nothing to change).
    fn write_node(&self, name: &str, change: impl FnOnce(&mut NodeRecord)) -> anyhow::Result<()> {
        self.write(|s| {
            if let Some(record) = s.nodes.iter_mut().find(|n| n.name == name) {
                change(record);
            }
        })
    }

    /// Starts `node`'s agent after `delay`, records it, and waits until it
    /// answers; requests to the agent wait meanwhile.
    async fn start_agent(&self, node: &Node, delay: Duration) -> anyhow::Result<()> {
        let _starting = node.agent_starting().await;
        tokio::time::sleep(delay).await;
        if self.node(node.name()).is_err() {
            // Deleted meanwhile: nothing to start.
            return Ok(());
        }
        let child = node.spawn_agent(&self.exe)?;
        let pid = child_pid(&child, "agent")?;
        self.watch(child, Owner::Agent(node.name().to_string()), pid);
        let record = record_process(pid, format!("agent of {}", node.name()));
        self.write_node(node.name(), |n| n.agent = Some(record))?;
        node.wait_agent().await
    }

    /// The relay's services this machine reaches, with their addresses.
    pub fn exposed(&self) -> Vec<(Exposed, std::net::SocketAddr)> {
        self.exposed
            .iter()
            .filter_map(|(what, listener)| Some((*what, listener.local_addr().ok()?)))
            .collect()
    }

    /// Starts again the etcd members that exited by themselves, and records
    /// their new processes (teardown stops them by these records).
    fn revive_etcd(&self) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let revived = {
            let mut etcd = self.etcd.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(etcd) = etcd.as_mut() else { return };
            match etcd.revive_exited() {
                Ok(revived) if revived.is_empty() => return,
                Ok(revived) => (revived, member_records(etcd)),
                Err(e) => {
                    tracing::error!("an etcd member could not be started again: {e}");
                    return;
                }
            }
        };
        let (names, records) = revived;
        tracing::warn!(members = ?names, "etcd members exited; started again on their data");
        if let Err(e) = self.write(|s| {
            if let Some(store) = s.store.as_mut() {
                store.members = records;
            }
        }) {
            tracing::error!("recording the restarted etcd members: {e:#}");
        }
    }

    /// Starts the lab's Hubble Relay and records it. It learns the nodes
    /// from the peer service of the first node's agent (which names every
    /// node of the cluster store) and serves the lab's relay socket.
    fn start_relay(&self) -> anyhow::Result<()> {
        let first = self
            .nodes()
            .first()
            .map(|node| node.name().to_string())
            .ok_or_else(|| anyhow!("a lab needs at least one node"))?;
        let run_dir = self.names.run_dir();
        let log_path = run_dir.join("relay.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .arg("relay")
            .arg("--peer-service")
            .arg(format!(
                "unix://{}",
                self.names.observer_socket(&first).display()
            ))
            .arg("--listen-socket")
            .arg(self.names.relay_socket());
        // The held listeners become the child's descriptors 3, 4, ...
        let mut passed = Vec::new();
        for ((what, listener), fd) in self.exposed.iter().zip(FIRST_PASSED_FD..) {
            let tls = self.names.observer_tls();
            match what {
                Exposed::Observer => command
                    .arg("--listen-fd")
                    .arg(fd.to_string())
                    .arg("--tls-relay-server-cert-file")
                    .arg(tls.server_cert)
                    .arg("--tls-relay-server-key-file")
                    .arg(tls.server_key)
                    .arg("--tls-relay-client-ca-files")
                    .arg(tls.ca),
                Exposed::Servicemap => command
                    .arg("--servicemap-fd")
                    .arg(fd.to_string())
                    .arg("--servicemap-token-file")
                    .arg(self.names.servicemap_token()),
            };
            passed.push(listener.as_raw_fd());
        }
        let mut copies = vec![0; passed.len()];
        // SAFETY: between fork and exec the closure only calls fcntl and
        // dup2, which are async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(move || pass_descriptors(&passed, &mut copies));
        }
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting the relay")?;
        let pid = child_pid(&child, "relay")?;
        self.watch(child, Owner::Relay, pid);
        self.write(|s| s.relay = Some(record_process(pid, "relay")))
    }

    /// Starts `node`'s proxy and records it.
    fn start_proxy(&self, node: &Node) -> anyhow::Result<()> {
        if self.node(node.name()).is_err() {
            return Ok(());
        }
        let child = node.spawn_proxy(&self.exe)?;
        let pid = child_pid(&child, "proxy")?;
        self.watch(child, Owner::Proxy(node.name().to_string()), pid);
        let record = record_process(pid, format!("proxy of {}", node.name()));
        self.write_node(node.name(), |n| n.proxy = Some(record))
    }

    /// Starts the agent and the proxy of `node`, which is wired already,
    /// and adds it to the running nodes.
    async fn start_node(&self, node: Node) -> anyhow::Result<()> {
        let node = Arc::new(node);
        self.nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(node.clone());
        self.start_agent(&node, Duration::ZERO)
            .await
            .with_context(|| format!("starting the agent of {}", node.name()))?;
        self.start_proxy(&node)
            .with_context(|| format!("starting the proxy of {}", node.name()))
    }

    /// `lab node add`: a node named `name` (default: `node<N>`, N its
    /// number), with the lowest free number, wired to the underlay, routed
    /// to and from every other node, running its agent and proxy. All or
    /// nothing: a node that cannot come up is removed again.
    pub async fn add_node(&self, name: Option<String>) -> anyhow::Result<String> {
        let _turn = self.writes.lock().await;
        let record = self.write(|state| {
            if state.nodes.len() >= usize::from(MAX_NODES) {
                bail!(
                    "the lab runs {} nodes, the most it can; delete one first",
                    state.nodes.len()
                );
            }
            let index = (1..=MAX_NODES)
                .find(|i| state.nodes.iter().all(|n| n.index != *i))
                .ok_or_else(|| anyhow!("no free node number"))?;
            let name = name.unwrap_or_else(|| names::node_name(index));
            names::validate_node_name(&name).map_err(|e| anyhow!(e))?;
            if state.nodes.iter().any(|n| n.name == name) {
                bail!("node {name} exists already");
            }
            let record = Node::new(&self.names, &name, index).record;
            // Recorded before anything exists, so a crash leaves nothing unnamed.
            state.nodes.push(record.clone());
            Ok(record)
        })??;
        let name = record.name.clone();
        let added = async {
            let peers: Vec<NodeRecord> =
                self.read(|s| s.nodes.iter().filter(|n| n.name != name).cloned().collect());
            let names = self.names.clone();
            let routing = self.read(|s| s.routing);
            let node = tokio::task::spawn_blocking(move || {
                let mut node = Node::new(&names, &record.name, record.index);
                wire_node(&names, &mut node, &peers, routing)?;
                anyhow::Ok(node)
            })
            .await
            .map_err(|e| anyhow!("wiring the node: {e}"))??;
            let mut node = node;
            self.join_cluster(&mut node);
            self.start_node(node).await?;
            let node = self.node(&name)?;
            crate::control::catch_up(self, &node).await
        }
        .await;
        if let Err(e) = added {
            tracing::warn!(node = name, "the node could not be added: {e:#}");
            if let Err(undo) = self.remove_node(&name).await {
                tracing::error!(node = name, "removing the half-added node: {undo:#}");
            }
            return Err(e.context(format!("adding node {name} (nothing of it is left)")));
        }
        tracing::info!(node = name, "node added");
        Ok(name)
    }

    /// `lab node delete`: drains node `name` (deletes its pods, telling
    /// its agent as a delete does), stops its agent and proxy, removes its
    /// namespace, underlay link, the other nodes' routes to it and its
    /// bpffs directory; then the Deployments whose pods it ran get new
    /// ones on the nodes left. The first node stays: this machine's
    /// forwarded ports and the CLI's defaults lead to it. Returns the pods
    /// deleted and the pods made in their place.
    pub async fn delete_node(&self, name: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let _turn = self.writes.lock().await;
        let (known, first) = self.read(|s| {
            (
                s.nodes.iter().any(|n| n.name == name),
                s.nodes.first().map(|n| n.name.clone()),
            )
        });
        if !known {
            let nodes = self.read(|s| s.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>());
            bail!(
                "node {name} does not exist; the lab's nodes: {}",
                nodes.join(", ")
            );
        }
        if first.as_deref() == Some(name) {
            bail!(
                "node {name} is the lab's first node (this machine's observer and service map \
                 ports, and the CLI's default node, lead to it); it goes with `myelin lab down`"
            );
        }
        let (pods, owners): (Vec<String>, BTreeSet<String>) = self.read(|s| {
            let on_node = s.pods.iter().filter(|(_, p)| p.node == name);
            (
                on_node.clone().map(|(k, _)| k.clone()).collect(),
                on_node.filter_map(|(_, p)| p.owner.clone()).collect(),
            )
        });
        for key in &pods {
            crate::control::delete_pod(self, key)
                .await
                .with_context(|| format!("draining node {name}: pod {key}"))?;
        }
        self.remove_node(name).await?;
        tracing::info!(node = name, ?pods, "node deleted");
        let replaced = crate::control::replace_drained(self, &owners)
            .await
            .with_context(|| {
                format!(
                    "node {name} was deleted with its pods, but the Deployments that owned \
                     some could not get new ones; apply them again"
                )
            })?;
        Ok((pods, replaced))
    }

    /// Removes node `name` and all of it (but not its pods: the caller
    /// drained them), then forgets it. Safe on a half-made node.
    async fn remove_node(&self, name: &str) -> anyhow::Result<()> {
        // Out of the running nodes first: its processes' exits are not restarts.
        let running = self.node(name).ok();
        self.nodes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|n| n.name() != name);
        // An agent (re)start under way ends first, so the record names the last agent.
        let _starting = match &running {
            Some(node) => Some(node.agent_starting().await),
            None => None,
        };
        let Some(record) = self.read(|s| s.nodes.iter().find(|n| n.name == name).cloned()) else {
            return Ok(());
        };
        let peers: Vec<NodeRecord> =
            self.read(|s| s.nodes.iter().filter(|n| n.name != name).cloned().collect());
        let names = self.names.clone();
        tokio::task::spawn_blocking(move || {
            let processes: Vec<ProcessRecord> = [record.proxy.clone(), record.agent.clone()]
                .into_iter()
                .flatten()
                .collect();
            teardown::stop_processes(&processes);
            for peer in &peers {
                underlay::unroute(peer, &record)?;
            }
            underlay::leave(&names, record.index)?;
            net::delete_netns(&record.netns)?;
            let pins = names.bpffs().join(&record.name);
            if pins.exists() {
                std::fs::remove_dir_all(&pins)
                    .with_context(|| format!("removing {}", pins.display()))?;
            }
            let dir = names.node_dir(&record.name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
            anyhow::Ok(())
        })
        .await
        .map_err(|e| anyhow!("removing node {name}: {e}"))??;
        self.write(|s| s.nodes.retain(|n| n.name != name))
    }

    /// A child exited: a node's agent or proxy is started again (as a
    /// DaemonSet would), a pod's container marks the pod failed.
    async fn process_exited(&self, exit: Exit) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Exit { owner, pid, code } = exit;
        let is_current = |p: &Option<ProcessRecord>| p.as_ref().is_some_and(|p| p.pid == pid);
        match owner {
            Owner::Agent(ref name) | Owner::Proxy(ref name) => {
                let is_agent = matches!(owner, Owner::Agent(_));
                let name = name.clone();
                let which = if is_agent { "agent" } else { "proxy" };
                // A deleted node's processes are not started again.
                let Ok(node) = self.node(&name) else {
                    return;
                };
                let current = self.read(|s| {
                    s.nodes
                        .iter()
                        .find(|n| n.name == name)
                        .is_some_and(|n| is_current(if is_agent { &n.agent } else { &n.proxy }))
                });
                if !current {
                    return;
                }
                tracing::warn!(node = name, ?code, "the {which} exited; starting it again");
                let restarted = if is_agent {
                    self.start_agent(&node, RESTART_DELAY).await
                } else {
                    tokio::time::sleep(RESTART_DELAY).await;
                    self.start_proxy(&node)
                };
                if let Err(e) = restarted {
                    tracing::error!(node = name, "the {which} could not be started again: {e:#}");
                }
            }
            Owner::Relay => {
                if !self.read(|s| is_current(&s.relay)) {
                    return;
                }
                tracing::warn!(?code, "the relay exited; starting it again");
                tokio::time::sleep(RESTART_DELAY).await;
                if let Err(e) = self.start_relay() {
                    tracing::error!("the relay could not be started again: {e:#}");
                }
            }
            Owner::Pod(key) => {
                let marked = self.write(|s| {
                    let record = s.pods.get_mut(&key)?;
                    if !record.processes.iter().any(|p| p.pid == pid)
                        || record.phase == crate::state::TERMINATING
                    {
                        return None;
                    }
                    record.phase = match code {
                        Some(0) => "Succeeded".to_string(),
                        Some(code) => format!("Failed (exit code {code})"),
                        None => "Failed (killed by a signal)".to_string(),
                    };
                    record.ready = false;
                    Some((
                        record.node.clone(),
                        crate::agent_specs::endpoint_spec(record),
                    ))
                });
                let Ok(Some((node, spec))) = marked else {
                    return;
                };
                tracing::warn!(pod = key, ?code, "container exited");
                let told = match self.node(&node) {
                    Ok(node) => node.agent(&Request::EndpointUpsert(spec)).await.map(drop),
                    Err(e) => Err(e),
                };
                if let Err(e) = told {
                    tracing::warn!(pod = key, "could not mark the pod unready: {e:#}");
                }
            }
        }
    }

    /// Writes the lab's resources, as the state holds them now, to the
    /// cluster store (the difference, in one transaction).
    pub async fn store_resources(&self) -> anyhow::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let _turn = self.store_writes.lock().await;
        let wanted = self.read(crate::stored_resources::of_state)?;
        let written = crate::stored_resources::write(store, &wanted).await;
        self.resources_stale
            .store(written.is_err(), Ordering::SeqCst);
        written
    }

    /// [`Lab::store_resources`]; a failure is logged and left to the
    /// supervisor's next etcd check (the apply itself stands: the agents
    /// enforce it).
    async fn store_resources_or_later(&self) {
        if let Err(e) = self.store_resources().await {
            tracing::warn!("the cluster store does not hold the lab's resources yet: {e:#}");
        }
    }

    /// The cluster store's client, to read what the lab keeps there.
    pub fn store(&self) -> Option<&myelin_store::Store> {
        self.store.as_ref()
    }

    /// Answers one request.
    async fn handle(&self, request: LabRequest) -> Result<LabResponse, ApiError> {
        match request {
            LabRequest::Apply { documents } => {
                let changes = crate::control::apply(self, documents).await;
                self.store_resources_or_later().await;
                Ok(LabResponse::Changes { changes })
            }
            LabRequest::Delete { keys } => {
                let changes = crate::control::delete(self, keys).await;
                self.store_resources_or_later().await;
                Ok(LabResponse::Changes { changes })
            }
            LabRequest::Status => Ok(LabResponse::Status(crate::control::status(self).await)),
            LabRequest::NodeAdd { name } => match self.add_node(name).await {
                Ok(name) => Ok(LabResponse::NodeAdded { name }),
                Err(e) => Err(ApiError::from(format!("{e:#}"))),
            },
            LabRequest::NodeDelete { name } => match self.delete_node(&name).await {
                Ok((pods, replaced)) => {
                    self.store_resources_or_later().await;
                    Ok(LabResponse::NodeDeleted {
                        name,
                        pods,
                        replaced,
                    })
                }
                Err(e) => Err(ApiError::from(format!("{e:#}"))),
            },
            LabRequest::Down => {
                self.tear_down();
                Ok(LabResponse::Ok)
            }
        }
    }

    /// A lab of `nodes` holding `state`, whose processes nobody starts (for
    /// the control plane's tests, with agents of their own).
    #[cfg(test)]
    pub fn for_tests(names: LabNames, nodes: Vec<Node>, state: LabState) -> Self {
        Self {
            names,
            exe: PathBuf::from("/nonexistent"),
            nodes: RwLock::new(nodes.into_iter().map(Arc::new).collect()),
            exposed: Vec::new(),
            state: Mutex::new(state),
            writes: tokio::sync::Mutex::new(()),
            exits: mpsc::unbounded_channel().0,
            stopping: AtomicBool::new(false),
            store: None,
            store_writes: tokio::sync::Mutex::new(()),
            resources_stale: AtomicBool::new(false),
            etcd: Mutex::new(None),
        }
    }

    fn tear_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.read(|state| teardown::teardown(&self.names, Some(state)));
        if let Some(mut etcd) = self
            .etcd
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            etcd.stop();
        }
    }

    /// Makes `node`'s agent a member of the lab's cluster store.
    fn join_cluster(&self, node: &mut Node) {
        let (store, routing) = self.read(|s| {
            (
                s.store.as_ref().map(|store| store.address.clone()),
                s.routing,
            )
        });
        if let Some(address) = store {
            node.join_cluster(&address, &self.names.lab, routing);
        }
    }
}

/// Creates `node`'s namespace and joins it to the underlay; under native
/// routing, routes between it and each of `peers` (both ways). Through the
/// tunnel, the agents route the pod CIDRs into their overlay device.
fn wire_node(
    names: &LabNames,
    node: &mut Node,
    peers: &[NodeRecord],
    routing: RoutingMode,
) -> anyhow::Result<()> {
    node.create()
        .with_context(|| format!("creating node {}", node.name()))?;
    underlay::join(names, &node.record)?;
    if routing == RoutingMode::Tunnel {
        return Ok(());
    }
    for peer in peers {
        underlay::route_to(&node.record, peer)?;
        underlay::route_to(peer, &node.record)?;
    }
    Ok(())
}

/// Starts the lab's cluster store, one etcd member under the run directory,
/// and records it in `state` (saved): its agents reach it over its unix
/// socket, from every node's network namespace, with no route to it.
async fn start_store(
    names: &LabNames,
    mut state: LabState,
    members: u8,
) -> anyhow::Result<(EtcdServer, LabState)> {
    let dir = names.etcd_dir();
    let spec = EtcdSpec::new(dir, usize::from(members));
    let etcd = tokio::task::spawn_blocking(move || EtcdServer::start(&spec))
        .await
        .map_err(|e| anyhow!("starting etcd: {e}"))?
        .context("starting the lab's etcd")?;
    let sockets = etcd
        .members()
        .iter()
        .map(|member| {
            member
                .unix_socket()
                .map(|socket| format!("unix://{}", socket.display()))
                .ok_or_else(|| {
                    anyhow!(
                        "the lab's etcd member {} serves no unix socket",
                        member.name()
                    )
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    state.store = Some(StoreRecord {
        address: sockets.join(","),
        members: member_records(&etcd),
    });
    state.save(&names.run_dir().join("state.json"))?;
    Ok((etcd, state))
}

/// The records of `etcd`'s running members, for the lab's state.
fn member_records(etcd: &EtcdServer) -> Vec<ProcessRecord> {
    etcd.members()
        .iter()
        .filter_map(|m| m.pid())
        .map(|pid| record_process(pid, "etcd"))
        .collect()
}

/// Runs the supervisor of lab `name` in `shape` in the foreground until
/// `lab down` (or SIGTERM), which tear the lab down. `exe` is the myelin
/// binary, used to start agents and the demo apps.
pub async fn supervise(name: &str, exe: PathBuf, shape: &crate::LabShape) -> anyhow::Result<()> {
    let (node_count, routing) = (shape.nodes, shape.routing);
    let names = LabNames::new(name);
    let run_dir = names.run_dir();
    // Everything the lab, its agents and proxies write (state, sockets, logs,
    // identities) names the cluster's pods and carries its flows: root only.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    // `lab up` created the directory and this process's log before it ran.
    let restrict = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    };
    restrict(&run_dir, 0o700).with_context(|| format!("making {} root's", run_dir.display()))?;
    let log = run_dir.join("supervisor.log");
    if let Err(e) = restrict(&log, 0o600)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("making {} root's: {e}", log.display());
    }
    secrets::create_pki(&names)?;
    let (exits, mut exit_events) = mpsc::unbounded_channel();
    let mut nodes: Vec<Node> = (1..=node_count)
        .map(|index| Node::new(&names, &names::node_name(index), index))
        .collect();
    let state = LabState {
        lab: name.to_string(),
        supervisor: Some(record_process(std::process::id(), "lab supervisor")),
        namespaces: BUILTIN_NAMESPACES.iter().map(|n| n.to_string()).collect(),
        // Recorded before anything exists, so a crash leaves nothing unnamed.
        nodes: nodes.iter().map(|n| n.record.clone()).collect(),
        pod_mtu: crate::state::pod_mtu(routing),
        routing,
        ..LabState::default()
    };
    state.save(&run_dir.join("state.json"))?;
    // On failure `lab up` reads this process's log, then tears the lab down.
    let (etcd, state) = start_store(&names, state, shape.etcd_members).await?;
    underlay::create(&names).context("creating the lab's underlay")?;
    for i in 0..nodes.len() {
        let (wired, rest) = nodes.split_at_mut(i);
        let peers: Vec<NodeRecord> = wired.iter().map(|n| n.record.clone()).collect();
        wire_node(&names, &mut rest[0], &peers, routing)?;
    }
    let sockets = etcd
        .members()
        .iter()
        .filter_map(|m| m.unix_socket().map(std::path::Path::to_path_buf))
        .collect();
    let store = myelin_store::Store::connect(&myelin_store::StoreConfig::new(
        myelin_store::StoreAddress::Unix(sockets),
        name,
    ))
    .context("connecting to the lab's etcd")?;
    let mut exposed = Vec::new();
    for what in Exposed::ALL {
        match std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, what.port())) {
            Ok(listener) => exposed.push((what, listener)),
            Err(e) => tracing::info!(
                port = what.port(),
                "{what} not exposed on this machine ({e}): another lab holds the port"
            ),
        }
    }
    let lab = Arc::new(Lab {
        names: names.clone(),
        exe,
        nodes: RwLock::new(Vec::new()),
        exposed,
        state: Mutex::new(state),
        writes: tokio::sync::Mutex::new(()),
        exits,
        stopping: AtomicBool::new(false),
        store: Some(store),
        store_writes: tokio::sync::Mutex::new(()),
        resources_stale: AtomicBool::new(false),
        etcd: Mutex::new(Some(etcd)),
    });
    for mut node in nodes {
        lab.join_cluster(&mut node);
        lab.start_node(node).await?;
    }
    lab.start_relay()?;

    let socket = names.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    let (down_tx, mut down_rx) = mpsc::channel::<()>(1);
    let mut etcd_check = tokio::time::interval(ETCD_CHECK_INTERVAL);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tracing::info!(lab = name, "lab ready");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let lab = lab.clone();
                let down_tx = down_tx.clone();
                tokio::spawn(myelin_api::serve_connection(stream, move |request: LabRequest| {
                    let lab = lab.clone();
                    let down_tx = down_tx.clone();
                    async move {
                        let is_down = matches!(request, LabRequest::Down);
                        let answer = lab.handle(request).await;
                        if is_down {
                            let _ = down_tx.try_send(());
                        }
                        answer
                    }
                }));
            }
            Some(exit) = exit_events.recv() => {
                // Restarting an agent waits for it: off the loop, so the API answers meanwhile.
                let lab = lab.clone();
                tokio::spawn(async move { lab.process_exited(exit).await });
            }
            _ = etcd_check.tick() => {
                let revive = lab.clone();
                tokio::task::spawn_blocking(move || revive.revive_etcd());
                if lab.resources_stale.load(Ordering::SeqCst) {
                    let lab = lab.clone();
                    tokio::spawn(async move { lab.store_resources_or_later().await });
                }
            }
            _ = down_rx.recv() => break,
            _ = terminate.recv() => {
                lab.tear_down();
                break;
            }
        }
    }
    Ok(())
}
