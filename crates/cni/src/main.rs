//! `myelin-cni`: Myelin's CNI plugin (spec 1.0.0 and 1.1.0). The runtime
//! executes it once per command; it reads its configuration on stdin and
//! the `CNI_*` variables, asks the node's Myelin agent over its unix socket
//! (the agent owns addresses, wiring and policy) and prints the result or
//! the error on stdout as the spec shapes them.
//!
//! Kept small: it starts once per pod, so it holds no state and asks the
//! agent for everything but one thing, removing a container's veth when
//! the agent is down (DEL must succeed then).

#![forbid(unsafe_code)]

mod commands;
mod config;
mod error;
mod result;

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use config::Environment;
use error::{CniError, Code};

fn main() -> ExitCode {
    let env = Environment::read(|name| std::env::var(name).ok());
    let mut stdin = Vec::new();
    let outcome = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| {
            CniError::new(
                Code::Io,
                "reading the configuration from stdin failed",
                e.to_string(),
            )
        })
        .and_then(|_| commands::run(&env, &stdin));
    let mut stdout = std::io::stdout();
    match outcome {
        Ok(output) => {
            if let Some(output) = output {
                let _ = writeln!(stdout, "{output}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            let version = serde_json::from_slice::<serde_json::Value>(&stdin)
                .ok()
                .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
                .unwrap_or_else(|| config::SUPPORTED_VERSIONS[0].to_string());
            let _ = writeln!(stdout, "{}", error.to_json(&version));
            eprintln!("myelin-cni: {error}");
            ExitCode::FAILURE
        }
    }
}
