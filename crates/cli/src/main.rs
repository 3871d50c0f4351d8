//! `myelin`: the lab, the agent, the proxy and the tools, in one binary.

mod agent_client;
mod bpf_cmd;
mod inherited_fd;
mod install_cmd;
mod lab_cmd;
mod pod_view;
mod policy_cmd;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Myelin: a sidecar-free service mesh, eBPF for L3/L4 and one L7 proxy per node.
#[derive(Parser)]
#[command(name = "myelin", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A cluster on this machine, out of network namespaces.
    Lab(lab_cmd::LabArgs),
    /// Create or update resources in the running lab (all or nothing).
    Apply(lab_cmd::ManifestArgs),
    /// Delete the resources named in manifests from the running lab.
    Delete(lab_cmd::ManifestArgs),
    /// The datapath's maps: endpoints, ipcache, policy, services, conntrack.
    Bpf(bpf_cmd::BpfArgs),
    /// Validate, inspect and explain network policy.
    Policy(policy_cmd::PolicyArgs),
    /// The service map: who talks to whom, with rates, errors and drops.
    Servicemap(myelin_observe::servicemap::ServiceMapArgs),
    /// Observe flows and agent events, as `hubble observe` does.
    Observe(Box<ObserveCmd>),
    /// Run a Hubble Relay: one observer API over every node's.
    Relay(Box<myelin_observe::relay::RelayArgs>),
    /// Run a node's agent (the lab starts it; so does a DaemonSet).
    Agent(Box<AgentArgs>),
    /// Run a node's L7 proxy.
    Proxy(ProxyArgs),
    /// Print the Kubernetes manifests that install Myelin (not functional on a cluster
    /// yet: the agent has no Kubernetes mode).
    #[command(long_about = install_cmd::LONG_ABOUT)]
    Install(install_cmd::InstallArgs),
    /// Programs the lab runs for the container images it knows.
    #[command(hide = true)]
    App {
        #[command(subcommand)]
        app: App,
    },
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The node's name.
    #[arg(long)]
    node: String,
    /// Network namespace to enter first (/run/netns/NAME).
    #[arg(long)]
    netns: Option<String>,
    /// Unix socket of the agent's API.
    #[arg(long)]
    api_socket: PathBuf,
    /// bpffs directory for the node's pins.
    #[arg(long)]
    bpffs: PathBuf,
    /// Directory for the agent's state.
    #[arg(long)]
    state_dir: PathBuf,
    /// Addresses for the DNS responder, comma-separated (the node's own).
    #[arg(long, value_delimiter = ',')]
    dns_listen: Vec<IpAddr>,
    /// A bound DNS socket inherited from the parent (repeatable); then the
    /// agent does not bind `--dns-listen` itself.
    #[arg(long = "dns-fd")]
    dns_fds: Vec<i32>,
    /// The identity store shared by the node's agents (a file; not with `--cluster-store`).
    #[arg(
        long,
        required_unless_present = "cluster_store",
        conflicts_with = "cluster_store"
    )]
    identity_store: Option<PathBuf>,
    /// Unix socket the node's proxy connects to for its configuration.
    #[arg(long)]
    proxy_socket: Option<PathBuf>,
    /// Unix socket of the Hubble-compatible observer API.
    #[arg(long)]
    observer_socket: Option<PathBuf>,
    /// TCP address of the observer API (plaintext unless the TLS files are given).
    #[arg(long)]
    observer_tcp: Option<std::net::SocketAddr>,
    /// Certificate (PEM chain) for TLS on the observer's TCP address.
    #[arg(long, requires = "hubble_tls_key_file")]
    hubble_tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) for TLS on the observer's TCP address.
    #[arg(long, requires = "hubble_tls_cert_file")]
    hubble_tls_key_file: Option<PathBuf>,
    /// CA certificates clients must present certificates from (mutual TLS), comma-separated.
    #[arg(long, value_delimiter = ',')]
    hubble_tls_client_ca_files: Vec<PathBuf>,
    /// TCP address of the Prometheus metrics endpoint (keep it on loopback: pods reach the
    /// node's other addresses).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// TCP address of the live service map page.
    #[arg(long)]
    servicemap: Option<std::net::SocketAddr>,
    /// File holding the token the service map page requires; created with a random token
    /// (mode 0600) when missing [default: STATE_DIR/servicemap-token].
    #[arg(long)]
    servicemap_token_file: Option<PathBuf>,
    /// HTTP headers L7 flows carry, comma-separated, any case (each costs the proxy a copy
    /// per request; `traceparent` is always read for trace context, shown only if named).
    #[arg(
        long,
        env = "MYELIN_HUBBLE_HTTP_HEADERS",
        value_delimiter = ',',
        default_value = myelin_agent::l7::TRACEPARENT
    )]
    hubble_http_headers: Vec<String>,
    /// The cluster store (etcd) to join: `unix:///path/client.sock:PORT` or
    /// `host:port[,host:port...]`; without it the node is alone, with `--identity-store`.
    #[arg(long)]
    cluster_store: Option<String>,
    /// The cluster's name: the store's keys live under `/myelin/<name>/`.
    #[arg(long, default_value = "default", requires = "cluster_store")]
    cluster_name: String,
    /// The node's underlay addresses, comma-separated; the first is its tunnel endpoint.
    #[arg(long, value_delimiter = ',', requires = "cluster_store")]
    node_address: Vec<IpAddr>,
    /// The node's pod CIDR (one per family; repeat or comma-separate): the cluster store
    /// learns it, the CNI plugin's pods get their addresses from it.
    #[arg(long, value_delimiter = ',')]
    pod_cidr: Vec<ipnet::IpNet>,
    /// Seconds the node's store entries outlive a dead agent (its lease's TTL).
    #[arg(long, default_value_t = myelin_agent::cluster::LAB_LEASE_TTL.as_secs())]
    lease_ttl: u64,
    /// How packets to other nodes' pods travel: `tunnel` (VXLAN, the sender's identity in
    /// the VNI; the agent creates the device and routes other nodes' pod CIDRs into it) or
    /// `native` (the node's routes carry them).
    #[arg(long, default_value = "tunnel", requires = "cluster_store")]
    routing: myelin_datapath::RoutingMode,
}

#[derive(clap::Args)]
struct ObserveCmd {
    /// Which node of the lab to observe when no server is named: each node's agent
    /// serves its own node's flows (`--node-name` filters flows by node instead).
    /// Default: in a lab of several nodes, its relay (every node's flows); else node1.
    #[arg(long)]
    node: Option<String>,
    #[command(flatten)]
    args: myelin_observe::ObserveArgs,
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// Network namespace to enter first (/run/netns/NAME).
    #[arg(long)]
    netns: Option<String>,
    /// The agent's proxy control socket.
    #[arg(long)]
    control_socket: PathBuf,
    /// Where the last good configuration is kept across restarts.
    #[arg(long)]
    snapshot_file: Option<PathBuf>,
    /// Runtime worker threads (default: one per CPU; 1 runs a single-threaded runtime).
    #[arg(long)]
    workers: Option<usize>,
    /// TCP address of the proxy's Prometheus metrics endpoint (GET /metrics). The default,
    /// loopback of the node's network namespace, is out of the pods' reach.
    #[arg(long, default_value_t = myelin_proxy::DEFAULT_METRICS_ADDR)]
    metrics: std::net::SocketAddr,
}

#[derive(Subcommand)]
enum App {
    /// The Star Wars deathstar HTTP service on port 80.
    Deathstar,
    /// An idle spaceship; users exec into it to run curl.
    Spaceship,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let prints = match &cli.command {
        Command::Lab(args) => !args.is_supervisor(),
        Command::Apply(_)
        | Command::Delete(_)
        | Command::Policy(_)
        | Command::Bpf(_)
        | Command::Observe(_)
        | Command::Servicemap(_)
        | Command::Install(_) => true,
        Command::Agent(_) | Command::Proxy(_) | Command::Relay(_) | Command::App { .. } => false,
    };
    if prints {
        // Commands that print end quietly when their reader goes away
        // (`myelin observe | head`), as Unix tools do. Daemons keep Rust's
        // default: a peer closing a socket must not kill them.
        // SAFETY: restoring a default disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    // Namespaces are entered before the runtime starts any thread.
    let netns = match &cli.command {
        Command::Agent(args) => args.netns.as_ref(),
        Command::Proxy(args) => args.netns.as_ref(),
        _ => None,
    };
    if let Some(netns) = netns {
        myelin_agent::enter_netns(netns)?;
    }
    match cli.command {
        Command::Lab(args) => lab_cmd::run_lab(args),
        Command::Apply(args) => lab_cmd::run_apply(args),
        Command::Delete(args) => lab_cmd::run_delete(args),
        Command::Policy(args) => policy_cmd::run(args),
        Command::Bpf(args) => bpf_cmd::run(args),
        Command::Install(args) => {
            install_cmd::run(args)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Servicemap(mut args) => {
            // Without a token named, a lab's own (readable by root only).
            if args.token.is_none() && args.token_file.is_none() {
                let lab = std::env::var("MYELIN_LAB")
                    .unwrap_or_else(|_| lab_cmd::DEFAULT_LAB.to_string());
                let file = myelin_lab::LabNames::new(&lab).servicemap_token();
                if file.exists() {
                    args.token_file = Some(file);
                }
            }
            runtime()?.block_on(myelin_observe::servicemap::run(&args))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Observe(observe) => {
            let ObserveCmd { node, mut args } = *observe;
            let is_agent_events = matches!(
                args.command,
                Some(myelin_observe::ObserveCommand::AgentEvents(_))
            );
            // Without a server named (flag or HUBBLE_SERVER), observe the lab's node.
            let (server, tls) = args.connection_mut();
            if server.is_none()
                && tls
                    .client_tls(myelin_observe::cli::DEFAULT_SERVER)
                    .is_none()
            {
                let lab = std::env::var("MYELIN_LAB")
                    .unwrap_or_else(|_| lab_cmd::DEFAULT_LAB.to_string());
                let names = myelin_lab::LabNames::new(&lab);
                // Flows of a lab of several nodes come from its relay; agent
                // events (not relayed) and a named node from that node.
                let relay = names.relay_socket();
                let several_nodes = || {
                    myelin_lab::state::LabState::load(&names.run_dir().join("state.json"))
                        .is_ok_and(|state| state.nodes.len() > 1)
                };
                let socket = match node {
                    Some(node) => names.observer_socket(&node),
                    None if !is_agent_events && relay.exists() && several_nodes() => relay,
                    None => names.observer_socket(&myelin_lab::names::node_name(1)),
                };
                if socket.exists() {
                    *server = Some(format!("unix://{}", socket.display()));
                }
            }
            runtime()?.block_on(myelin_observe::run(args))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Relay(args) => {
            let inherited = inherited_fd::relay_listeners(&args)?;
            runtime()?.block_on(myelin_observe::relay::run(*args, inherited))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Agent(args) => {
            let servicemap_token_file = args
                .servicemap_token_file
                .clone()
                .unwrap_or_else(|| args.state_dir.join("servicemap-token"));
            let cluster = match (&args.cluster_store, args.identity_store) {
                (Some(address), _) => {
                    myelin_agent::ClusterConfig::Etcd(myelin_agent::cluster::EtcdClusterConfig {
                        address: myelin_agent::cluster::parse_store_address(address)?,
                        cluster: args.cluster_name.clone(),
                        node: args.node.clone(),
                        addresses: args.node_address.clone(),
                        pod_cidrs: args.pod_cidr.clone(),
                        observer_address: None,
                        lease_ttl: std::time::Duration::from_secs(args.lease_ttl),
                    })
                }
                (None, Some(identity_store)) => {
                    myelin_agent::ClusterConfig::SingleNode { identity_store }
                }
                (None, None) => anyhow::bail!(
                    "give --identity-store (one node) or --cluster-store (a cluster on etcd)"
                ),
            };
            let config = myelin_agent::AgentConfig {
                node: args.node,
                api_socket: args.api_socket,
                bpffs: args.bpffs,
                state_dir: args.state_dir,
                dns_listen: args.dns_listen,
                dns_fds: args.dns_fds,
                proxy_socket: args.proxy_socket,
                observer_socket: args.observer_socket,
                observer_tcp: args.observer_tcp,
                observer_tls: match (args.hubble_tls_cert_file, args.hubble_tls_key_file) {
                    (Some(cert_file), Some(key_file)) => Some(myelin_observe::ServerTls {
                        cert_file,
                        key_file,
                        client_ca_files: args.hubble_tls_client_ca_files,
                    }),
                    _ => None,
                },
                metrics_addr: args.metrics,
                servicemap_addr: args.servicemap,
                servicemap_token_file,
                flow_headers: myelin_agent::l7::FlowHeaders::new(&args.hubble_http_headers)
                    .context("--hubble-http-headers")?,
                cluster,
                routing: args.routing,
                pod_cidrs: args.pod_cidr.clone(),
            };
            runtime()?.block_on(myelin_agent::run(config))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Proxy(args) => {
            let mut config = myelin_proxy::ProxyConfig::new(args.control_socket);
            config.snapshot_file = args.snapshot_file;
            config.metrics_addr = Some(args.metrics);
            if let Some(workers) = args.workers {
                config.workers = workers;
            }
            config
                .runtime()
                .context("starting the async runtime")?
                .block_on(myelin_proxy::run(config))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::App { app } => {
            runtime()?.block_on(run_app(app))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

async fn run_app(app: App) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    match app {
        App::Deathstar => {
            let socket = tokio::net::TcpSocket::new_v6()?;
            socket.set_reuseaddr(true)?;
            // One dual-stack socket serves IPv4 and IPv6 clients alike.
            socket.bind(
                (
                    std::net::Ipv6Addr::UNSPECIFIED,
                    myelin_demo_apps::deathstar::PORT,
                )
                    .into(),
            )?;
            let listener = socket.listen(1024)?;
            let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "deathstar".into());
            tokio::select! {
                served = myelin_demo_apps::deathstar::serve(listener, hostname) => served?,
                _ = terminate.recv() => {}
            }
        }
        App::Spaceship => {
            terminate.recv().await;
        }
    }
    Ok(())
}
