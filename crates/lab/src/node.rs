//! A node of the lab: its network namespace, its own addresses, its DNS
//! sockets, and the agent and L7 proxy it runs. A node is a value: the lab
//! holds one per node and nothing here assumes there is only one.

use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use myelin_api::agent::{Request, Response};
use myelin_api::lab::Exposed;

use crate::names::{LabNames, ObserverTlsFiles};
use crate::net;
use crate::state::NodeRecord;
use crate::{bpffs, ipam};
use myelin_datapath::RoutingMode;

/// The interface that holds a node's own addresses (the kernel here has no
/// dummy devices; loopback addresses are just as local).
const NODE_INTERFACE: &str = "lo";

/// How long a started agent may take to answer.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);

/// One node: where it lives and how to reach its agent.
pub struct Node {
    /// What the lab records of it (the agent and proxy processes are filled
    /// in by whoever starts them).
    pub record: NodeRecord,
    /// The node's directory under the lab's run directory.
    dir: PathBuf,
    /// The lab's bpffs; the node pins under `<bpffs>/<node>`.
    bpffs: PathBuf,
    /// The observer API socket of the node's agent.
    observer_socket: PathBuf,
    /// The lab's observer PKI (its TCP port requires client certificates).
    observer_tls: ObserverTlsFiles,
    /// The token the agent's service map page requires.
    servicemap_token: PathBuf,
    /// DNS sockets, bound once and handed to every agent the node runs:
    /// queries sent while an agent restarts wait in them.
    dns_sockets: Vec<std::net::UdpSocket>,
    /// Held (written) while the agent starts: requests wait for it instead
    /// of failing on a socket nobody serves yet.
    agent_starting: tokio::sync::RwLock<()>,
    /// The cluster store the agent joins, the cluster's name there, and how
    /// its packets travel to other nodes.
    cluster_store: Option<(String, String, RoutingMode)>,
}

impl Node {
    /// Node `name` with number `index` (which picks its pod CIDRs); nothing
    /// exists yet (see [`Node::create`]).
    pub fn new(names: &LabNames, name: &str, index: u8) -> Self {
        Self {
            record: NodeRecord {
                name: name.to_string(),
                index,
                netns: names.node_netns(name),
                router_v4: ipam::node_router_v4(index),
                router_v6: ipam::node_router_v6(index),
                agent: None,
                proxy: None,
            },
            dir: names.node_dir(name),
            bpffs: names.bpffs(),
            observer_socket: names.observer_socket(name),
            observer_tls: names.observer_tls(),
            servicemap_token: names.servicemap_token(),
            dns_sockets: Vec::new(),
            agent_starting: tokio::sync::RwLock::new(()),
            cluster_store: None,
        }
    }

    /// Makes the node's agent join the cluster store at `address` (as
    /// `--cluster-store` takes it) as a node of cluster `cluster`: its
    /// identities, endpoints and node record are then the cluster's.
    pub fn join_cluster(&mut self, address: &str, cluster: &str, routing: RoutingMode) {
        self.cluster_store = Some((address.to_string(), cluster.to_string(), routing));
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// Creates the node's namespace with forwarding on, its own addresses,
    /// the routes the proxy needs, and binds its DNS sockets.
    pub fn create(&mut self) -> anyhow::Result<()> {
        let record = &self.record;
        let netns = record.netns.as_str();
        net::add_netns(netns)?;
        net::sysctls(
            netns,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
            ],
        )?;
        let v4 = format!("{}/32", record.router_v4);
        net::ip(&["-n", netns, "addr", "add", &v4, "dev", NODE_INTERFACE])?;
        let v6 = format!("{}/128", record.router_v6);
        net::ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &v6,
            "dev",
            NODE_INTERFACE,
            "nodad",
        ])?;
        // Connections the datapath hands to the proxy are delivered locally, as the
        // sk_assign recipe requires.
        for route in myelin_datapath::proxy_routing::proxy_delivery_routes() {
            let mut args = vec!["-n", netns];
            args.extend(route.iter().map(String::as_str));
            net::ip(&args)?;
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        bpffs::ensure_mounted(&self.bpffs)?;
        let addresses = [
            std::net::SocketAddr::from((record.router_v4, 53)),
            std::net::SocketAddr::from((record.router_v6, 53)),
        ];
        self.dns_sockets = net::in_netns(netns, move || {
            addresses
                .iter()
                .map(|a| {
                    std::net::UdpSocket::bind(a)
                        .with_context(|| format!("binding the node's DNS socket {a}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        Ok(())
    }

    /// The agent's API socket.
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// Sends one request to the node's agent; while the agent (re)starts,
    /// waits until it answers.
    pub async fn agent(&self, request: &Request) -> anyhow::Result<Response> {
        let _started = self.agent_starting.read().await;
        self.call_agent(request).await
    }

    /// Marks the agent as starting until the guard is dropped.
    pub async fn agent_starting(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.agent_starting.write().await
    }

    async fn call_agent(&self, request: &Request) -> anyhow::Result<Response> {
        myelin_api::agent::call(&self.agent_socket(), request)
            .await
            .with_context(|| format!("agent of {}", self.name()))
    }

    /// Starts the node's agent (the caller records and watches the child,
    /// then waits with [`Node::wait_agent`]).
    pub fn spawn_agent(&self, exe: &Path) -> anyhow::Result<tokio::process::Child> {
        let record = &self.record;
        // Appended: a restarted agent's log follows its predecessor's.
        let log = self.log("agent.log")?;
        let tls = &self.observer_tls;
        let mut command = tokio::process::Command::new(exe);
        command
            .args(["agent", "--node", &record.name, "--netns", &record.netns])
            .arg("--api-socket")
            .arg(self.agent_socket())
            .arg("--bpffs")
            .arg(self.bpffs.join(&record.name))
            .arg("--state-dir")
            .arg(&self.dir)
            .args(self.cluster_args()?)
            .arg("--dns-listen")
            .arg(format!("{},{}", record.router_v4, record.router_v6))
            .arg("--proxy-socket")
            .arg(self.dir.join("proxy.sock"))
            .arg("--observer-socket")
            .arg(&self.observer_socket)
            .arg("--observer-tcp")
            .arg(format!("127.0.0.1:{}", Exposed::Observer.port()))
            .arg("--hubble-tls-cert-file")
            .arg(&tls.server_cert)
            .arg("--hubble-tls-key-file")
            .arg(&tls.server_key)
            .arg("--hubble-tls-client-ca-files")
            .arg(&tls.ca)
            // The node's loopback: pods reach only the node's other addresses.
            .args(["--metrics", "127.0.0.1:9965"])
            .arg("--servicemap")
            .arg(format!("127.0.0.1:{}", Exposed::Servicemap.port()))
            .arg("--servicemap-token-file")
            .arg(&self.servicemap_token)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // The DNS sockets become descriptors 3, 4, ... of the agent. They are
        // first duplicated above that range so that no dup2 below overwrites
        // a source it still needs.
        let mut handed = Vec::new();
        for socket in &self.dns_sockets {
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
        command.spawn().context("starting the agent")
    }

    /// The agent's flags for the cluster store the node joined
    /// ([`Node::join_cluster`]): the store, the cluster, the node's underlay
    /// addresses (the first is its tunnel endpoint), its pod CIDRs and the
    /// routing mode.
    fn cluster_args(&self) -> anyhow::Result<Vec<String>> {
        let Some((address, cluster, routing)) = &self.cluster_store else {
            anyhow::bail!(
                "node {} has not joined the lab's cluster store: its agent would have no identities",
                self.record.name
            );
        };
        let index = self.record.index;
        Ok(vec![
            "--cluster-store".into(),
            address.clone(),
            "--cluster-name".into(),
            cluster.clone(),
            "--node-address".into(),
            format!(
                "{},{}",
                ipam::node_underlay_v4(index),
                ipam::node_underlay_v6(index)
            ),
            "--pod-cidr".into(),
            ipam::node_pod_cidrs(index).join(","),
            "--routing".into(),
            routing.to_string(),
        ])
    }

    /// Waits until the node's agent answers.
    pub async fn wait_agent(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + AGENT_START_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if self.call_agent(&Request::Status).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(10)..];
        bail!(
            "the agent of {} did not come up within {} s; its log ends:\n{}",
            self.name(),
            AGENT_START_TIMEOUT.as_secs(),
            tail.join("\n")
        )
    }

    /// Starts the node's L7 proxy; it connects to the agent by itself.
    pub fn spawn_proxy(&self, exe: &Path) -> anyhow::Result<tokio::process::Child> {
        let log = self.log("proxy.log")?;
        let mut command = tokio::process::Command::new(exe);
        command
            .args(["proxy", "--netns", &self.record.netns])
            .arg("--control-socket")
            .arg(self.dir.join("proxy.sock"))
            .arg("--snapshot-file")
            .arg(self.dir.join("proxy-snapshot.json"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        command.spawn().context("starting the proxy")
    }

    fn log(&self, name: &str) -> anyhow::Result<std::fs::File> {
        let path = self.dir.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }
}

/// The PID of a child that was just started.
pub fn child_pid(child: &tokio::process::Child, what: &str) -> anyhow::Result<u32> {
    child
        .id()
        .ok_or_else(|| anyhow!("the {what} exited at once"))
}
