//! The lab supervisor: the daemon behind `myelin lab`. It starts the lab's
//! nodes, serves the lab's API (the control plane in [`crate::control`]
//! answers it), restarts agents and proxies that exit and marks pods whose
//! containers exit, and tears the lab down on `lab down` or SIGTERM.
//!
//! Locking: the lab's state sits behind a mutex held only for short,
//! non-blocking steps (never across a process start, an agent call or a
//! wait); writes (apply, delete) take their turn on a second, async mutex
//! for their whole run, so a `lab status` answers while a long apply runs.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use myelin_api::ApiError;
use myelin_api::agent::Request;
use myelin_api::lab::{Exposed, LabRequest, LabResponse};
use tokio::sync::mpsc;

mod secrets;

use crate::forward;
use crate::names::LabNames;
use crate::node::{Node, child_pid};
use crate::state::{LabState, ProcessRecord, record_process};
use crate::teardown;

/// How long an agent or proxy that exited is left down before it is
/// started again (no tight loop for one that fails at once).
const RESTART_DELAY: Duration = Duration::from_millis(200);

/// The namespaces every lab starts with.
const BUILTIN_NAMESPACES: [&str; 2] = ["default", "kube-system"];

/// Whose process exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The agent of a node (by index into the lab's nodes).
    Agent(usize),
    /// The proxy of a node (by index into the lab's nodes).
    Proxy(usize),
    /// A container of the pod with this `namespace/name` key.
    Pod(String),
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
    /// The nodes.
    pub nodes: Vec<Node>,
    /// Node services forwarded to the host's loopback.
    pub exposed: Vec<(Exposed, std::net::SocketAddr)>,
    /// What the lab holds, saved to disk after every change.
    state: Mutex<LabState>,
    /// One write (apply, delete) at a time.
    pub writes: tokio::sync::Mutex<()>,
    exits: mpsc::UnboundedSender<Exit>,
    /// Set once teardown begins: exits are expected then, not restarted.
    stopping: AtomicBool,
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

    /// The node named `name`.
    pub fn node(&self, name: &str) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .ok_or_else(|| anyhow!("node {name} does not exist"))
    }

    /// The node a new pod goes to: the one running the fewest pods.
    pub fn schedule(&self) -> anyhow::Result<&Node> {
        self.read(|state| {
            self.nodes.iter().min_by_key(|node| {
                state
                    .pods
                    .values()
                    .filter(|p| p.node == node.name())
                    .count()
            })
        })
        .ok_or_else(|| anyhow!("the lab has no node"))
    }

    /// Sends `request` to every node's agent.
    pub async fn tell_agents(&self, request: &Request) -> anyhow::Result<()> {
        for node in &self.nodes {
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

    /// Starts node `index`'s agent after `delay`, records it, and waits
    /// until it answers; requests to the agent wait meanwhile.
    async fn start_agent(&self, index: usize, delay: Duration) -> anyhow::Result<()> {
        let node = &self.nodes[index];
        let _starting = node.agent_starting().await;
        tokio::time::sleep(delay).await;
        let child = node.spawn_agent(&self.exe)?;
        let pid = child_pid(&child, "agent")?;
        self.watch(child, Owner::Agent(index), pid);
        let record = record_process(pid, format!("agent of {}", node.name()));
        self.write(|s| s.nodes[index].agent = Some(record))?;
        node.wait_agent().await
    }

    /// Starts node `index`'s proxy and records it.
    fn start_proxy(&self, index: usize) -> anyhow::Result<()> {
        let node = &self.nodes[index];
        let child = node.spawn_proxy(&self.exe)?;
        let pid = child_pid(&child, "proxy")?;
        self.watch(child, Owner::Proxy(index), pid);
        let record = record_process(pid, format!("proxy of {}", node.name()));
        self.write(|s| s.nodes[index].proxy = Some(record))
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
            Owner::Agent(index) | Owner::Proxy(index) => {
                let which = if matches!(owner, Owner::Agent(_)) {
                    "agent"
                } else {
                    "proxy"
                };
                let current = self.read(|s| {
                    let node = &s.nodes[index];
                    is_current(if which == "agent" {
                        &node.agent
                    } else {
                        &node.proxy
                    })
                });
                if !current {
                    return;
                }
                let node = self.nodes[index].name().to_string();
                tracing::warn!(node, ?code, "the {which} exited; starting it again");
                let restarted = match owner {
                    Owner::Agent(_) => self.start_agent(index, RESTART_DELAY).await,
                    _ => {
                        tokio::time::sleep(RESTART_DELAY).await;
                        self.start_proxy(index)
                    }
                };
                if let Err(e) = restarted {
                    tracing::error!(node, "the {which} could not be started again: {e:#}");
                }
            }
            Owner::Pod(key) => {
                let marked = self.write(|s| {
                    let record = s.pods.get_mut(&key)?;
                    if !record.processes.iter().any(|p| p.pid == pid) {
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

    /// Answers one request.
    async fn handle(&self, request: LabRequest) -> Result<LabResponse, ApiError> {
        match request {
            LabRequest::Apply { documents } => Ok(LabResponse::Changes {
                changes: crate::control::apply(self, documents).await,
            }),
            LabRequest::Delete { keys } => Ok(LabResponse::Changes {
                changes: crate::control::delete(self, keys).await,
            }),
            LabRequest::Status => Ok(LabResponse::Status(crate::control::status(self).await)),
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
            nodes,
            exposed: Vec::new(),
            state: Mutex::new(state),
            writes: tokio::sync::Mutex::new(()),
            exits: mpsc::unbounded_channel().0,
            stopping: AtomicBool::new(false),
        }
    }

    fn tear_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.read(|state| teardown::teardown(&self.names, Some(state)));
    }
}

/// Runs the supervisor of lab `name` in the foreground until `lab down` (or
/// SIGTERM), which tear the lab down. `exe` is the myelin binary, used to
/// start agents and the demo apps.
pub async fn supervise(name: &str, exe: PathBuf) -> anyhow::Result<()> {
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
    let mut node = Node::new(&names, "node1", 1);
    let state = LabState {
        lab: name.to_string(),
        supervisor: Some(record_process(std::process::id(), "lab supervisor")),
        namespaces: BUILTIN_NAMESPACES.iter().map(|n| n.to_string()).collect(),
        // Recorded before anything exists, so a crash leaves nothing unnamed.
        nodes: vec![node.record.clone()],
        ..LabState::default()
    };
    state.save(&run_dir.join("state.json"))?;
    // On failure `lab up` reads this process's log, then tears the lab down.
    node.create().context("creating the lab's node")?;
    let mut exposed = Vec::new();
    for what in Exposed::ALL {
        match forward::expose(node.record.netns.clone(), what.port()).await {
            Some(address) => exposed.push((what, address)),
            None => tracing::info!(
                port = what.port(),
                "port taken on this machine; {what} not exposed"
            ),
        }
    }
    let lab = Arc::new(Lab {
        names: names.clone(),
        exe,
        nodes: vec![node],
        exposed,
        state: Mutex::new(state),
        writes: tokio::sync::Mutex::new(()),
        exits,
        stopping: AtomicBool::new(false),
    });
    for index in 0..lab.nodes.len() {
        lab.start_agent(index, Duration::ZERO)
            .await
            .context("starting the node's agent")?;
        lab.start_proxy(index)
            .context("starting the node's proxy")?;
    }

    let socket = names.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    let (down_tx, mut down_rx) = mpsc::channel::<()>(1);
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
            _ = down_rx.recv() => break,
            _ = terminate.recv() => {
                lab.tear_down();
                break;
            }
        }
    }
    Ok(())
}
