//! `myelin policy validate|get|explain`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use myelin_api::agent::{ExplainProtocol, ExplainRequest, Request};

use crate::agent_client::AgentTarget;

#[derive(Args)]
pub struct PolicyArgs {
    /// The agent to ask (get, explain).
    #[command(flatten)]
    target: AgentTarget,
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check policy manifests offline: parsing, fields, selectors, regexes.
    Validate {
        /// A manifest file, or a directory of them; repeat for more, checked together.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// The resolved policy of a pod (or of every pod on the node).
    Get {
        /// The pod.
        pod: Option<String>,
        /// Its namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Output format.
        #[arg(short, long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Would this flow pass, and which rules decide it.
    Explain {
        /// Source: a pod (`pod` or `namespace/pod`) or an IP address.
        #[arg(long)]
        from: String,
        /// Destination: a pod or an IP address.
        #[arg(long)]
        to: String,
        /// Destination port and protocol, e.g. `80/TCP` (ICMP: the type, `8/ICMP`).
        #[arg(long)]
        port: String,
        /// HTTP method, to evaluate L7 rules.
        #[arg(long)]
        http_method: Option<String>,
        /// HTTP path, to evaluate L7 rules.
        #[arg(long)]
        http_path: Option<String>,
        /// Manifests not applied yet: explain as if they were (what-if).
        #[arg(short = 'f', long = "filename")]
        proposed: Option<PathBuf>,
        /// Output format.
        #[arg(short, long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
}

/// Splits `80/TCP` (protocol defaults to TCP).
fn port_and_protocol(text: &str) -> anyhow::Result<(u16, ExplainProtocol)> {
    let (port, protocol) = text.split_once('/').unwrap_or((text, "TCP"));
    let port: u16 = port
        .parse()
        .with_context(|| format!("--port {text:?}: expected PORT/PROTO such as 80/TCP"))?;
    let protocol = protocol
        .parse()
        .with_context(|| format!("--port {text:?}"))?;
    Ok((port, protocol))
}

pub fn run(args: PolicyArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        PolicyCommand::Validate { files } => validate(files),
        PolicyCommand::Get {
            pod,
            namespace,
            output,
        } => {
            let request = Request::PolicyGet {
                endpoint: pod.clone().map(|p| (namespace.clone(), p)),
                json: output == "json",
            };
            println!("{}", args.target.ask_text(request)?.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Explain {
            from,
            to,
            port,
            http_method,
            http_path,
            proposed,
            output,
        } => {
            let (port, protocol) = port_and_protocol(port)?;
            let proposed = match proposed {
                Some(path) => myelin_lab::read_manifests(std::slice::from_ref(path))?,
                None => Vec::new(),
            };
            let request = Request::PolicyExplain(ExplainRequest {
                from: from.clone(),
                to: to.clone(),
                protocol,
                port,
                http_method: http_method.clone(),
                http_path: http_path.clone(),
                proposed,
                json: output == "json",
            });
            println!("{}", args.target.ask_text(request)?.trim_end());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Parses and resolves the manifests with a scratch engine, so that what
/// the agent would reject is reported here, each document on its own.
fn validate(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut parsed = myelin_model::Parsed::default();
    for file in files {
        let more = myelin_model::load_path(file);
        parsed.documents.extend(more.documents);
        parsed.errors.extend(more.errors);
    }
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let store = std::sync::Arc::new(myelin_policy::FileStore::new(
        dir.path().join("identities.json"),
    ));
    let mut engine = myelin_policy::PolicyEngine::new(store, "validate");
    let mut failed = !parsed.errors.is_empty();
    for error in &parsed.errors {
        eprintln!("invalid: {error}");
    }
    for document in &parsed.documents {
        match engine.apply(&document.resource) {
            Ok(_) => println!("valid: {}", document.resource.key()),
            Err(e) => {
                failed = true;
                eprintln!(
                    "invalid: {}: document {}: {}: {e}",
                    document.source.file,
                    document.source.document,
                    document.resource.key()
                );
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_with_a_default_protocol() {
        assert_eq!(
            port_and_protocol("80/TCP").expect("ok"),
            (80, ExplainProtocol::Tcp)
        );
        assert_eq!(
            port_and_protocol("53").expect("ok"),
            (53, ExplainProtocol::Tcp)
        );
        assert_eq!(
            port_and_protocol("8/icmp").expect("ok"),
            (8, ExplainProtocol::Icmp)
        );
        assert!(port_and_protocol("http/TCP").is_err());
        let sctp = port_and_protocol("80/SCTP").expect_err("SCTP refused");
        assert!(
            format!("{sctp:#}").contains("SCTP is not supported"),
            "{sctp:#}"
        );
    }
}
