//! Asking a node's agent: which agent (a lab's, or a socket named outright)
//! and the one call the inspection commands make.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use myelin_api::agent::{Request, Response};

/// Which agent to ask.
#[derive(Args)]
pub struct AgentTarget {
    /// Which lab's agent to ask.
    #[arg(long = "lab", env = "MYELIN_LAB", default_value = crate::lab_cmd::DEFAULT_LAB, global = true)]
    lab: String,
    /// Which node's agent to ask (`myelin lab status` lists them); each agent knows its
    /// own node's pods.
    #[arg(long, default_value = "node1", global = true)]
    node: String,
    /// Ask the agent at this socket instead of the lab's.
    #[arg(long, global = true, conflicts_with = "node")]
    agent_socket: Option<PathBuf>,
}

impl AgentTarget {
    fn socket(&self) -> PathBuf {
        self.agent_socket.clone().unwrap_or_else(|| {
            myelin_lab::LabNames::new(&self.lab)
                .node_dir(&self.node)
                .join("agent.sock")
        })
    }

    /// Sends `request` and returns the text the agent rendered.
    pub fn ask_text(&self, request: Request) -> anyhow::Result<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        match runtime.block_on(myelin_api::agent::call(&self.socket(), &request))? {
            Response::Text { text } => Ok(text),
            other => bail!("unexpected answer from the agent: {other:?}"),
        }
    }
}
