//! The service map: workloads as nodes, the traffic between them as edges
//! with counters and rates, built from flows.
//!
//! The agent keeps a [`SharedServiceMap`] fed from its observer
//! ([`SharedServiceMap::follow`]) and serves it with [`serve_servicemap`]: a
//! live page at `/`, the map as JSON at `/api/servicemap`, an edge's recent
//! flows at `/api/edges/<id>/flows`. `myelin servicemap` fetches the JSON
//! ([`fetch_view`]) and prints it as a table ([`render_text`]) or as
//! Graphviz DOT ([`render_dot`]); [`ServiceMapArgs`] and [`run`] are that
//! command as a library.

mod aggregate;
mod http;
mod render;
mod shared;
mod token;
mod view;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

pub use aggregate::{MapCounters, ServiceMap, ServiceMapConfig};
pub use http::{API_MAP_PATH, fetch_view, serve_servicemap};
pub use render::{render_dot, render_text};
pub use shared::SharedServiceMap;
pub use token::{AccessToken, TOKEN_COOKIE, TokenError};
pub use view::{EdgeFlows, EdgeStatus, EdgeView, FlowLine, MapView, NodeKind, NodeView};

/// Where the agent serves the map unless told otherwise (Hubble UI's port).
pub const DEFAULT_SERVER: &str = "127.0.0.1:12000";

/// What went wrong talking to a service map server.
#[derive(Debug, thiserror::Error)]
pub enum ServiceMapError {
    /// The server address cannot be used.
    #[error("service map address {server:?}: {reason}")]
    Address {
        /// The address as given.
        server: String,
        /// Why it is unusable.
        reason: String,
    },
    /// No connection could be made.
    #[error(
        "cannot reach the service map at {server} ({source}); is the agent running with its service map enabled?"
    )]
    Connect {
        /// The address as given.
        server: String,
        /// The connection error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("service map request failed: {0}")]
    Http(#[source] hyper::Error),
    /// The server answered with an error status.
    #[error("service map at {server} answered {status}: {body}")]
    Status {
        /// The address as given.
        server: String,
        /// The HTTP status.
        status: ::http::StatusCode,
        /// What the server said.
        body: String,
    },
    /// The answer was not a service map.
    #[error(
        "service map at {server} sent JSON that is not a map ({source}); is that a Myelin agent of the same version?"
    )]
    Decode {
        /// The address as given.
        server: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// Output formats of `myelin servicemap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MapFormat {
    /// An aligned table of edges.
    #[default]
    Text,
    /// Graphviz DOT (`| dot -Tsvg`).
    Dot,
    /// The JSON the page reads.
    Json,
}

/// Flags of `myelin servicemap`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceMapArgs {
    /// Service map server of the agent: host:port or http://host:port.
    #[arg(long, env = "MYELIN_SERVICEMAP_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = MapFormat::Text)]
    pub output: MapFormat,
    /// The server's access token.
    #[arg(long, env = "MYELIN_SERVICEMAP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the server's access token [default in a lab: the lab's token file].
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Print the page's URL with its token (open it in a browser) instead of the map.
    #[arg(long)]
    pub url: bool,
}

impl ServiceMapArgs {
    /// The access token: given, or read from the token file.
    pub fn access_token(&self) -> anyhow::Result<AccessToken> {
        match (&self.token, &self.token_file) {
            (Some(token), _) => Ok(AccessToken::new(token.clone())),
            (None, Some(file)) => Ok(AccessToken::read(file)?),
            (None, None) => anyhow::bail!(
                "the service map needs its access token: give --token or --token-file (the \
                 agent's token file, readable by root)"
            ),
        }
    }
}

/// The page's URL on `server`, with `token` to open it in a browser.
pub fn page_url(server: &str, token: &AccessToken) -> Result<String, ServiceMapError> {
    Ok(format!(
        "http://{}/?token={}",
        http::authority(server)?,
        token.as_str()
    ))
}

/// `myelin servicemap`: fetches the map and prints it to stdout (or, with
/// `--url`, the page's URL).
pub async fn run(args: &ServiceMapArgs) -> anyhow::Result<()> {
    let token = args.access_token()?;
    if args.url {
        println!("{}", page_url(&args.server, &token)?);
        return Ok(());
    }
    let view = fetch_view(&args.server, &token).await?;
    let out = match args.output {
        MapFormat::Text => render_text(&view),
        MapFormat::Dot => render_dot(&view),
        MapFormat::Json => {
            let mut json = serde_json::to_string_pretty(&view).context("encoding the map")?;
            json.push('\n');
            json
        }
    };
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .context("writing the map to stdout")?;
    Ok(())
}
#[cfg(test)]
mod tests;
