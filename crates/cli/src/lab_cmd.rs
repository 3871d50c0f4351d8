//! `myelin lab ...`, `myelin apply` and `myelin delete`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use myelin_api::lab::Exposed;
use myelin_lab::Change;

/// The lab used when none is named.
pub const DEFAULT_LAB: &str = "myelin";

#[derive(Args)]
pub struct LabArgs {
    /// Which lab (several can run side by side).
    #[arg(long, env = "MYELIN_LAB", default_value = DEFAULT_LAB, global = true)]
    name: String,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Create the lab and apply the manifests in FILE or DIR (`-f` repeatable).
    Up {
        /// A manifest file, or a directory of them; repeat for more, applied in order as one.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// How many nodes: node1 ... nodeN, joined by the lab's underlay, routing each
        /// other's pod CIDRs natively (1 to 16).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=i64::from(myelin_lab::MAX_NODES)))]
        nodes: u8,
        /// How packets between nodes travel: `tunnel` (VXLAN, the sender's identity in
        /// the VNI) or `native` (routed over the underlay).
        #[arg(long, default_value = "tunnel")]
        routing: myelin_datapath::RoutingMode,
        /// How many members the lab's etcd has: 1, or 3 (or 5) to survive a member's loss.
        #[arg(long, default_value_t = 1)]
        etcd_members: u8,
    },
    /// Add or remove a node while the lab runs.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Remove the lab and everything it created.
    Down,
    /// Show nodes, pods and services.
    Status {
        /// Output format.
        #[arg(short, long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Run a command inside a pod (with its /etc/hosts and resolv.conf).
    Exec {
        /// The pod.
        pod: String,
        /// Its namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run the lab supervisor in the foreground (`lab up` starts it).
    #[command(hide = true)]
    Supervise {
        /// How many nodes it starts with.
        #[arg(long, default_value_t = 1)]
        nodes: u8,
        /// How packets between nodes travel.
        #[arg(long, default_value = "tunnel")]
        routing: myelin_datapath::RoutingMode,
        /// How many etcd members.
        #[arg(long, default_value_t = 1)]
        etcd_members: u8,
    },
    /// Run a command with a pod's view of this machine (the kubelet and `lab exec` use it
    /// inside `ip netns exec`): the labs' run directory hidden, for good.
    #[command(hide = true)]
    Sandbox {
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Add a node: its namespace, underlay link and routes (to and from every other
    /// node), its agent and proxy. It takes the lowest free node number N (pod CIDRs
    /// 10.244.N.0/24 and fd00:10:244:N::/64, underlay 10.250.0.N and fd00:10:250::N).
    Add {
        /// Its name [default: nodeN, N its number].
        #[arg(id = "node", value_name = "NAME")]
        name: Option<String>,
    },
    /// Drain a node (its pods are deleted, as a delete would) and remove it: its agent,
    /// proxy, namespace, underlay link, the other nodes' routes to it, its bpffs pins.
    /// Deployments whose pods it ran get new ones on the nodes left. The first node
    /// (node1) stays until `lab down`.
    Delete {
        /// The node.
        #[arg(id = "node", value_name = "NAME")]
        name: String,
    },
}

#[derive(Args)]
pub struct ManifestArgs {
    /// A manifest file, or a directory of them; repeat for more, taken in order as one.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Which lab.
    #[arg(long = "lab", env = "MYELIN_LAB", default_value = DEFAULT_LAB)]
    name: String,
}

impl LabArgs {
    /// Whether this runs the lab supervisor daemon.
    pub fn is_supervisor(&self) -> bool {
        matches!(self.command, LabCommand::Supervise { .. })
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Prints each change once: successes on stdout, failures on stderr.
fn print_changes(changes: &[Change]) -> ExitCode {
    for change in changes {
        if change.outcome.is_error() {
            eprintln!("Error: {change}");
        } else {
            println!("{change}");
        }
    }
    if myelin_lab::any_failed(changes) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub fn run_lab(args: LabArgs) -> anyhow::Result<ExitCode> {
    let lab = args.name;
    match args.command {
        LabCommand::Up {
            files,
            nodes,
            routing,
            etcd_members,
        } => {
            let exe = std::env::current_exe().context("locating the myelin binary")?;
            let shape = myelin_lab::LabShape {
                nodes,
                routing,
                etcd_members,
            };
            let changes = runtime()?.block_on(myelin_lab::up(&lab, &shape, &files, &exe))?;
            let code = print_changes(&changes);
            println!(
                "lab {lab:?} is up: `myelin lab status` shows it, `myelin lab down` removes it"
            );
            Ok(code)
        }
        LabCommand::Node {
            command: NodeCommand::Add { name },
        } => {
            let name = runtime()?.block_on(myelin_lab::node_add(&lab, name))?;
            println!("node/{name} added");
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Node {
            command: NodeCommand::Delete { name },
        } => {
            let (pods, replaced) = runtime()?.block_on(myelin_lab::node_delete(&lab, &name))?;
            for pod in pods {
                println!("pod/{pod} deleted (drained)");
            }
            println!("node/{name} deleted");
            for pod in replaced {
                println!("pod/{pod} created (its Deployment's replacement)");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down => {
            runtime()?.block_on(myelin_lab::down(&lab))?;
            println!("lab {lab:?} removed");
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status { output } => {
            let status = runtime()?.block_on(myelin_lab::status(&lab))?;
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
                print_access(&lab, &status);
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec {
            pod,
            namespace,
            command,
        } => {
            let exe = std::env::current_exe().context("locating the myelin binary")?;
            let mut sandboxed = vec![
                exe.display().to_string(),
                "lab".to_string(),
                "sandbox".to_string(),
                "--".to_string(),
            ];
            sandboxed.extend(command);
            Err(myelin_lab::exec(&lab, &namespace, &pod, &sandboxed))
        }
        LabCommand::Sandbox { command } => Err(crate::pod_view::exec_as_pod(&command)),
        LabCommand::Supervise {
            nodes,
            routing,
            etcd_members,
        } => {
            let exe = std::env::current_exe().context("locating the myelin binary")?;
            let shape = myelin_lab::LabShape {
                nodes,
                routing,
                etcd_members,
            };
            shape.check()?;
            runtime()?.block_on(myelin_lab::supervise(&lab, exe, &shape))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How to reach the relay's observer and service map on this machine, with the lab's
/// credentials (only root can read them, so only root sees this).
fn print_access(lab: &str, status: &myelin_lab::LabStatus) {
    let names = myelin_lab::LabNames::new(lab);
    for (what, address) in &status.exposed {
        match what {
            Exposed::Servicemap => {
                let token =
                    myelin_observe::servicemap::AccessToken::read(&names.servicemap_token());
                if let Ok(token) = token {
                    println!(
                        "\nservice map page: http://{address}/?token={}",
                        token.as_str()
                    );
                }
            }
            Exposed::Observer => {
                let tls = names.observer_tls();
                if tls.client_key.exists() {
                    println!(
                        "\nobserver over TCP (mutual TLS): hubble observe --server {address} --tls \
                         --tls-ca-cert-files {} --tls-client-cert-file {} --tls-client-key-file {}",
                        tls.ca.display(),
                        tls.client_cert.display(),
                        tls.client_key.display()
                    );
                }
            }
        }
    }
}

pub fn run_apply(args: ManifestArgs) -> anyhow::Result<ExitCode> {
    let changes = runtime()?.block_on(myelin_lab::apply(&args.name, &args.files))?;
    let code = print_changes(&changes);
    if myelin_lab::any_failed(&changes) {
        eprintln!("Error: nothing was applied: the apply is all or nothing");
    }
    Ok(code)
}

pub fn run_delete(args: ManifestArgs) -> anyhow::Result<ExitCode> {
    let changes = runtime()?.block_on(myelin_lab::delete(&args.name, &args.files))?;
    Ok(print_changes(&changes))
}

fn print_status(status: &myelin_lab::LabStatus) {
    println!("LAB {}", status.lab);
    println!(
        "\nNODE     NETNS                    POD CIDRS                          UNDERLAY                    AGENT"
    );
    for node in &status.nodes {
        let agent = match &node.agent {
            Ok(a) => format!(
                "running: {} endpoints, {} services, {} DNS names, {} events ({} lost)",
                a.endpoints.len(),
                a.services.len(),
                a.dns_names,
                a.events.seen,
                a.events.lost
            ),
            Err(e) => format!("unreachable: {e}"),
        };
        let underlay: Vec<String> = node.underlay.iter().map(ToString::to_string).collect();
        println!(
            "{:<8} {:<24} {:<34} {:<27} {agent}",
            node.name,
            node.netns,
            node.pod_cidrs.join(","),
            underlay.join(",")
        );
    }
    println!(
        "\nNAMESPACE    POD                              READY  PHASE      NODE     ADDRESSES"
    );
    for pod in &status.pods {
        let addresses: Vec<String> = pod.addresses.iter().map(ToString::to_string).collect();
        println!(
            "{:<12} {:<32} {:<6} {:<10} {:<8} {}",
            pod.namespace,
            pod.name,
            if pod.ready { "1/1" } else { "0/1" },
            pod.phase,
            pod.node,
            addresses.join(",")
        );
    }
    for (what, address) in &status.exposed {
        println!("{:<10} {}", what.to_string(), what.address_text(*address));
    }
    if !status.policies.is_empty() {
        println!("\nPOLICIES");
        for policy in &status.policies {
            println!("{policy}");
        }
    }
    println!("\nNAMESPACE    SERVICE          CLUSTER-IPS                  PORTS        AFFINITY");
    for service in &status.services {
        let ips: Vec<String> = service
            .cluster_ips
            .iter()
            .map(ToString::to_string)
            .collect();
        let affinity = service
            .affinity_timeout_s
            .map_or_else(|| "None".to_string(), |t| format!("ClientIP/{t}s"));
        println!(
            "{:<12} {:<16} {:<28} {:<12} {affinity}",
            service.namespace,
            service.name,
            ips.join(","),
            service.ports.join(",")
        );
    }
}
