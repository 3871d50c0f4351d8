//! `myelin bpf ...`: the datapath's maps, as cilium-dbg shows them.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use myelin_api::agent::BpfTable;
use myelin_api::agent::Request;

use crate::agent_client::AgentTarget;

#[derive(Args)]
pub struct BpfArgs {
    #[command(flatten)]
    target: AgentTarget,
    /// Output format.
    #[arg(short, long, default_value = "text", value_parser = ["text", "json"], global = true)]
    output: String,
    #[command(subcommand)]
    command: BpfCommand,
}

#[derive(Subcommand)]
enum BpfCommand {
    /// Endpoints: ifindex, id, identity, addresses, policy enforcement.
    Endpoints,
    /// The ipcache: prefixes and their identities.
    Ipcache,
    /// The policy map of one pod.
    Policy {
        /// The pod.
        pod: String,
        /// Its namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Services: frontends and backends.
    Services,
    /// Conntrack entries.
    Ct,
}

pub fn run(args: BpfArgs) -> anyhow::Result<ExitCode> {
    let (table, endpoint) = match args.command {
        BpfCommand::Endpoints => (BpfTable::Endpoints, None),
        BpfCommand::Ipcache => (BpfTable::Ipcache, None),
        BpfCommand::Policy { pod, namespace } => (BpfTable::Policy, Some((namespace, pod))),
        BpfCommand::Services => (BpfTable::Services, None),
        BpfCommand::Ct => (BpfTable::Conntrack, None),
    };
    let text = args.target.ask_text(Request::Bpf {
        table,
        endpoint,
        json: args.output == "json",
    })?;
    println!("{}", text.trim_end());
    Ok(ExitCode::SUCCESS)
}
